"""Experiment trackers, read back with the real clients (TensorBoard, MLflow file store, W&B offline); no network."""

from __future__ import annotations

import logging
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest
import yaml

from framework.config import conf_dir, register
from framework.errors import ConfigError
from framework.tracking import REDACTED, MultiTracker, flatten_config, make_trackers, wandb_mode
from framework.tracking_config import TrackingConfig, WandbConfig, tracking_problems

RESOLVED = {
    "run_name": "demo",
    "optim": {"lr": 0.001, "betas": [0.9, 0.999]},
    "lora": {"r": 8, "target_modules": ["q_proj", "v_proj"]},
    "model": {"name": "tiny_llama", "pretrained": None, "tokenizer": "tok"},
    "storage": {"hf_token": "hf_SECRET", "secret_access_key": "AWS_SECRET"},
    "long": "x" * 7000,
}
TRAIN: list[dict[str, Any]] = [
    {"step": s, "loss": 4.0 - 0.5 * s, "lr": 1e-3, "tokens_per_s": 1000.0 + s, "split": "train"}
    for s in range(1, 5)
]
EVAL: dict[str, Any] = {"step": 4, "eval_loss": 2.5, "perplexity": 12.18}


def _wandb_env(mp: pytest.MonkeyPatch, base: Path) -> None:
    for var in ("WANDB_API_KEY", "WANDB_MODE", "MLFLOW_TRACKING_URI"):
        mp.delenv(var, raising=False)
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        mp.setenv(var, str(base / var.lower()))
    mp.setenv("WANDB_SILENT", "true")


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[str], list[str]]]:
    """One run logged to all three trackers (the slow imports and W&B's service are paid once)."""
    base = tmp_path_factory.mktemp("tracked")
    run_dir = base / "run"
    (run_dir / "adapter").mkdir(parents=True)
    (run_dir / "adapter" / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    (run_dir / "adapter" / "adapter_config.json").write_text("{}")
    warnings: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("framework.tracking").addHandler(handler)
    with pytest.MonkeyPatch.context() as mp:
        _wandb_env(mp, base)
        cfg = TrackingConfig(backends=["tensorboard", "mlflow", "wandb"])
        tracker = make_trackers(cfg, str(run_dir), "demo", RESOLVED, is_rank0=True)
        started = tracker.backends
        for line in TRAIN:
            tracker.log_metrics(line, line["step"])
        tracker.log_metrics(EVAL, EVAL["step"])
        tracker.log_artifact(str(run_dir / "adapter"), "adapter")
        tracker.close()
        logging.getLogger("framework.tracking").removeHandler(handler)
        assert tracker.backends == started  # none failed on the way, close included
        yield run_dir, started, warnings


def test_all_backends_start(tracked_run: tuple[Path, list[str], list[str]]) -> None:
    _, started, warnings = tracked_run
    expected = ["tensorboard", "mlflow"] + (["wandb"] if _has("wandb") else [])
    assert started == expected
    assert len(warnings) == (0 if _has("wandb") else 1), warnings  # only a missing wandb may warn


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def test_tensorboard_event_files(tracked_run: tuple[Path, list[str], list[str]]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _, _ = tracked_run
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()
    assert {"loss", "lr", "tokens_per_s", "eval_loss", "perplexity"} <= set(tags["scalars"])
    assert "split" not in tags["scalars"] and "step" not in tags["scalars"]
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(s["step"], s["loss"]) for s in TRAIN]
    assert [(e.step, round(e.value, 4)) for e in acc.Scalars("eval_loss")] == [(4, 2.5)]
    assert "config/text_summary" in tags["tensors"]
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| optim.lr | 0.001 |" in text and "hf_SECRET" not in text


def test_mlflow_sqlite_store(tracked_run: tuple[Path, list[str], list[str]]) -> None:
    from mlflow.tracking import MlflowClient

    run_dir, _, _ = tracked_run
    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("framework")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "demo" and run.info.status == "FINISHED"
    params = run.data.params
    assert params["optim.lr"] == "0.001"
    assert params["lora.target_modules"] == '["q_proj", "v_proj"]'
    assert params["model.pretrained"] == "None"
    assert params["storage.hf_token"] == REDACTED and params["storage.secret_access_key"] == REDACTED
    assert len(params["long"]) == 6000  # truncated to MLflow's limit
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(s["step"], s["loss"]) for s in TRAIN]
    assert run.data.metrics["eval_loss"] == 2.5 and "split" not in run.data.metrics
    files = [f.path for f in client.list_artifacts(run.info.run_id, "adapter")]
    assert sorted(files) == ["adapter/adapter_config.json", "adapter/adapter_model.safetensors"]


def test_wandb_offline_run_dir(tracked_run: tuple[Path, list[str], list[str]]) -> None:
    pytest.importorskip("wandb", reason="wandb is not installed")
    run_dir, _, _ = tracked_run
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    (records,) = offline.glob("run-*.wandb")
    data = records.read_bytes()
    # The run log is protobuf records: keys, config and artifact file names appear verbatim.
    for needle in (b"loss", b"eval_loss", b"tokens_per_s", b"optim.lr", b"adapter_model.safetensors"):
        assert needle in data, needle
    assert b"hf_SECRET" not in data and b"AWS_SECRET" not in data


def test_non_rank0_is_a_noop(tmp_path: Path) -> None:
    tracker = make_trackers(
        TrackingConfig(backends=["tensorboard", "mlflow"]), str(tmp_path), "r", RESOLVED, False
    )
    assert not tracker and tracker.backends == []
    tracker.log_metrics({"loss": 1.0}, 1)
    tracker.log_artifact(str(tmp_path), "adapter")
    tracker.close()
    assert list(tmp_path.iterdir()) == []


def test_no_backends_is_a_noop(tmp_path: Path) -> None:
    assert not make_trackers(None, str(tmp_path), "r", RESOLVED, True)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_mlflow_warns_and_continues(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    cfg = TrackingConfig(backends=["mlflow", "tensorboard"])
    cfg.mlflow.tracking_uri = f"http://user:pw@127.0.0.1:{_closed_port()}"
    with caplog.at_level(logging.WARNING, logger="framework.tracking"):
        tracker = make_trackers(cfg, str(tmp_path), "r", RESOLVED, True)
        tracker.log_metrics({"loss": 1.0}, 1)
        tracker.close()
    assert tracker.backends == ["tensorboard"]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "mlflow cannot start" in warning and "Fix:" in warning and "tracking_uri" in warning
    assert ":pw@" not in warning and "//***@127.0.0.1" in warning  # credentials never logged


def test_missing_client_warns_with_install_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with caplog.at_level(logging.WARNING, logger="framework.tracking"):
        tracker = make_trackers(TrackingConfig(backends=["wandb"]), str(tmp_path), "r", RESOLVED, True)
    assert tracker.backends == []
    assert any(
        "wandb is not installed" in r.getMessage() and "pip install" in r.getMessage() for r in caplog.records
    )


class _Flaky:
    """Fails on its second log_metrics call."""

    name = "flaky"
    fix = "fix the flake"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def log_params(self, flat: dict[str, Any]) -> None:
        self.calls.append("params")

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        self.calls.append(f"metrics:{step}")
        if step == 2:
            raise ConnectionError("server went away")

    def log_artifact(self, path: str, name: str) -> None:
        self.calls.append("artifact")

    def close(self, status: str = "FINISHED") -> None:
        self.calls.append(f"close:{status}")


def test_midrun_failure_warns_once_and_disables(caplog: pytest.LogCaptureFixture) -> None:
    flaky = _Flaky()
    with caplog.at_level(logging.WARNING, logger="framework.tracking"), MultiTracker([flaky]) as tracker:
        tracker.log_params({"a": 1})
        for step in range(1, 6):
            tracker.log_metrics({"loss": 1.0}, step)
        tracker.log_artifact("/nowhere", "adapter")
    assert flaky.calls == ["params", "metrics:1", "metrics:2"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "flaky failed in log_metrics" in warnings[0] and "server went away" in warnings[0]
    assert "fix the flake" in warnings[0]
    assert tracker.backends == []


def test_exception_in_block_closes_failed() -> None:
    flaky = _Flaky()
    with pytest.raises(RuntimeError), MultiTracker([flaky]):
        raise RuntimeError("boom")
    assert flaky.calls == ["close:FAILED"]


def test_slow_backend_never_blocks_the_caller(caplog: pytest.LogCaptureFixture) -> None:
    release = threading.Event()

    class Stuck(_Flaky):
        name = "stuck"

        def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
            release.wait(10)
            self.calls.append(f"metrics:{step}")

    stuck = Stuck()
    tracker = MultiTracker([stuck], queue_size=2)
    with caplog.at_level(logging.WARNING, logger="framework.tracking"):
        for step in range(1, 20):  # returns at once although the backend is stuck
            tracker.log_metrics({"loss": 1.0}, step)
        release.set()
        tracker.close()
    assert stuck.calls[0] == "metrics:1" and stuck.calls[-1] == "close:FINISHED"
    assert len(stuck.calls) <= 5  # the rest were dropped
    messages = [r.getMessage() for r in caplog.records]
    assert sum("falling behind" in m for m in messages) == 1


def test_mlflow_resumes_the_run_of_the_same_run_dir(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    cfg = TrackingConfig(backends=["mlflow"])
    cfg.flush_interval_s = 0.2
    first = make_trackers(cfg, str(tmp_path), "r", {"optim": {"lr": 0.1}}, True)
    first.log_metrics({"loss": 3.0}, 1)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("framework")
    assert experiment is not None
    experiment_id = experiment.experiment_id
    deadline = time.monotonic() + 5
    while not client.search_runs([experiment_id])[0].data.metrics and time.monotonic() < deadline:
        time.sleep(0.1)  # sent with the worker's next batch, before close
    assert client.search_runs([experiment_id])[0].data.metrics == {"loss": 3.0}
    first.close("KILLED")
    second = make_trackers(cfg, str(tmp_path), "r", {"optim": {"lr": 0.2}, "extra": 1}, True)
    second.log_metrics({"loss": 2.0}, 2)
    second.close()
    (run,) = client.search_runs([experiment_id])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2]
    assert run.data.params == {"optim.lr": "0.1", "extra": "1"}  # the first value is kept
    assert run.info.status == "FINISHED"


def test_tensorboard_resume_drops_the_steps_it_re_logs(tmp_path: Path) -> None:
    """Preempted at step 10 with the last checkpoint at 5: the resumed run logs 6.. again, and TensorBoard
    shows each step once, with the resumed run's values."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = TrackingConfig(backends=["tensorboard"])
    first = make_trackers(cfg, str(tmp_path), "r", RESOLVED, True)
    for step in range(1, 11):
        first.log_metrics({"loss": float(step)}, step)
    first.close("KILLED")
    time.sleep(1.1)  # event files are named by the second they are opened; TensorBoard reads them in order
    second = make_trackers(cfg, str(tmp_path), "r", RESOLVED, True, start_step=5)
    for step in range(6, 9):
        second.log_metrics({"loss": 100.0 + step}, step)
    second.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    got = [(e.step, e.value) for e in acc.Scalars("loss")]
    assert got == [(s, float(s)) for s in range(1, 6)] + [(s, 100.0 + s) for s in range(6, 9)]


def test_remote_run_dir_is_staged_and_uploaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    run_dir = "memory://bucket/runs/remote-demo"
    tracker = make_trackers(TrackingConfig(backends=["tensorboard"]), run_dir, "r", RESOLVED, True)
    tracker.log_metrics({"loss": 1.0}, 1)
    tracker.close()
    fs = fsspec.filesystem("memory")
    events = fs.glob("/bucket/runs/remote-demo/tensorboard/events.out.tfevents.*")
    assert len(events) == 1 and fs.size(events[0]) > 0
    fs.rm("/bucket", recursive=True)


def test_flatten_config_and_redaction() -> None:
    flat = flatten_config({"a": {"b": 1, "c": {"d": [1, 2]}, "empty": {}}, "api_key": "k", "hf_token": None})
    assert flat == {"a.b": 1, "a.c.d": [1, 2], "a.empty": {}, "api_key": REDACTED, "hf_token": None}
    kept = flatten_config({"model": {"tokenizer": "t", "max_tokens": 3, "pad_token": "<pad>"}})
    assert kept == {"model.tokenizer": "t", "model.max_tokens": 3, "model.pad_token": "<pad>"}


def test_wandb_mode_follows_the_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert wandb_mode(WandbConfig()) == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode(WandbConfig()) == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode(WandbConfig()) == "disabled"
    assert wandb_mode(WandbConfig(mode="offline")) == "offline"


def test_invalid_tracking_config_is_a_config_error(tmp_path: Path) -> None:
    cfg = TrackingConfig(backends=["tensorbored"])
    cfg.wandb.mode = "sometimes"
    assert len(tracking_problems(cfg)) == 2
    for rank0 in (True, False):
        with pytest.raises(ConfigError, match="tensorbored"):
            make_trackers(cfg, str(tmp_path), "r", {}, rank0)


# ---------------------------------------------------------------------------------------- config group


def _compose(*overrides: str) -> Any:
    from hydra import compose, initialize_config_dir

    register()
    defaults = yaml.safe_load((conf_dir() / "config.yaml").read_text())["defaults"]
    in_defaults = any(isinstance(d, dict) and "tracking" in d for d in defaults)
    fixed = [o if in_defaults or not o.startswith("tracking=") else "+" + o for o in overrides]
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="config", overrides=fixed)


def _active(cfg: Any) -> list[str]:
    from framework.tracking import _as_tracking_config

    return _as_tracking_config(cfg.tracking).active_backends()


def test_conf_group_options() -> None:
    assert sorted(p.stem for p in (conf_dir() / "tracking").glob("*.yaml")) == [
        "mlflow",
        "none",
        "tensorboard",
        "wandb",
    ]
    assert _active(_compose()) == []
    assert _active(_compose("tracking=none")) == []
    assert _active(_compose("tracking=tensorboard")) == ["tensorboard"]
    assert _active(_compose("tracking=[tensorboard,mlflow]")) == ["tensorboard", "mlflow"]
    assert _active(_compose("tracking=wandb", "tracking.backends=[mlflow]")) == ["mlflow", "wandb"]
    assert _active(_compose("tracking.backends=[wandb,tensorboard]")) == ["tensorboard", "wandb"]
    cfg = _compose("tracking=mlflow", "tracking.prometheus.enabled=true")
    assert cfg.tracking.prometheus.port == 9400 and cfg.tracking.mlflow.tracking_uri is None


def test_conf_rejects_unknown_keys() -> None:
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        _compose("tracking.wandb.api_key=abc")
