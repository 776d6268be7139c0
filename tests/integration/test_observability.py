"""A real (tiny, CPU) training run with trackers and Prometheus on: /metrics scraped live over HTTP, MLflow and
TensorBoard read back with their own clients."""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path

import pytest

from framework.distributed import free_port
from tests.helpers import read_metrics
from tests.integration.test_train import _popen

pytestmark = pytest.mark.integration


def scrape(port: int) -> dict[str, float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    out = {}
    for line in body.splitlines():
        m = re.match(r"^(framework_[a-z_]+)(?:\{[^}]*\})? ([-+.\deE]+|NaN)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def test_live_metrics_and_trackers(tmp_path: Path) -> None:
    port = free_port()
    run_dir = tmp_path / "run"
    proc = _popen(
        [
            "train.max_steps=150", "train.eval_interval=50", "train.checkpoint_interval=75", "train.progress=false",
            "tracking=[tensorboard,mlflow]", "tracking.prometheus.enabled=true",
            f"tracking.prometheus.port={port}", "tracking.prometheus.host=127.0.0.1", f"hydra.run.dir={run_dir}",
        ],
        tmp_path,
    )  # fmt: skip
    scrapes: list[dict[str, float]] = []
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and len(scrapes) < 2:
        try:
            s = scrape(port)
        except OSError:
            s = {}
        if s.get("framework_step") and (not scrapes or s["framework_step"] > scrapes[-1]["framework_step"]):
            scrapes.append(s)
        time.sleep(0.3)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert len(scrapes) == 2, f"could not scrape two different steps: {scrapes}"
    assert scrapes[1]["framework_step"] > scrapes[0]["framework_step"]
    for name in ("framework_loss", "framework_learning_rate", "framework_tokens_per_second",
                 "framework_step_time_seconds", "framework_slowest_rank_step_time_seconds"):  # fmt: skip
        assert name in scrapes[1], name

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow' / 'mlflow.db'}")
    (exp,) = [e for e in client.search_experiments() if e.name == "framework"]
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.params["train.max_steps"] == "150"
    history = client.get_metric_history(run.info.run_id, "loss")
    train_lines = [m for m in read_metrics(run_dir) if "loss" in m]
    assert len(history) == len(train_lines) == 150
    assert history[-1].value == pytest.approx(train_lines[-1]["loss"])
    assert "adapter" in [a.path for a in client.list_artifacts(run.info.run_id)]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    assert len(acc.Scalars("eval_loss")) == 4  # steps 0 (train.eval_at_start), 50, 100, 150
