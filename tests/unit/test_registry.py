"""The default MLflow store (SQLite in the run dir) and the model registry, read back by a plain MLflow client in
another process with a clean environment (no MLFLOW_* variables, nothing the framework set)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from framework.tracking import make_trackers
from framework.tracking_config import TrackingConfig

pytest.importorskip("mlflow", reason="mlflow is not installed")

READER = textwrap.dedent(
    """
    import json, sys
    from mlflow import MlflowClient
    client = MlflowClient(tracking_uri=sys.argv[1])
    exp = client.get_experiment_by_name("framework")
    (run,) = client.search_runs([exp.experiment_id])
    versions = client.search_model_versions("name = 'tiny-demo'")
    print(json.dumps({
        "status": run.info.status,
        "metrics": run.data.metrics,
        "artifacts": sorted(a.path for a in client.list_artifacts(run.info.run_id, "adapter")),
        "samples": sorted(a.path for a in client.list_artifacts(run.info.run_id, "samples")),
        "versions": [
            {"version": v.version, "run_id": v.run_id, "tags": v.tags, "source": v.source}
            for v in sorted(versions, key=lambda v: int(v.version))
        ],
        "run_id": run.info.run_id,
    }))
    """
)


def test_registry_holds_versions_with_the_run_metrics(tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    cfg = TrackingConfig(backends=["mlflow"])
    cfg.mlflow.register_as = "tiny-demo"
    cfg.flush_interval_s = 0.1
    for eval_loss in (2.5, 1.5):  # two runs of the same run dir: one run, two versions
        tracker = make_trackers(cfg, str(tmp_path), "demo", {"optim": {"lr": 0.1}}, True)
        tracker.log_metrics({"step": 1, "loss": 3.0}, 1)
        tracker.log_metrics({"step": 2, "eval_loss": eval_loss, "perplexity": 2.0**eval_loss}, 2)
        tracker.log_samples([{"prompt": "p", "generation": "g", "reference": "r"}], 2)
        tracker.log_artifact(str(adapter), "adapter")
        tracker.register_model("adapter")
        tracker.close()
    db = tmp_path / "mlflow" / "mlflow.db"
    assert db.is_file() and not (tmp_path / "mlruns").exists()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    res = subprocess.run(
        [sys.executable, "-c", READER, f"sqlite:///{db}"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["status"] == "FINISHED"
    assert got["metrics"]["eval_loss"] == 1.5
    assert got["artifacts"] == ["adapter/adapter_config.json", "adapter/adapter_model.safetensors"]
    assert got["samples"] == ["samples/step_000002.json"]
    v1, v2 = got["versions"]
    assert (str(v1["version"]), str(v2["version"])) == ("1", "2")
    assert v1["run_id"] == v2["run_id"] == got["run_id"]
    assert float(v1["tags"]["metric.eval_loss"]) == 2.5 and float(v2["tags"]["metric.eval_loss"]) == 1.5
    assert v2["tags"]["framework.artifact"] == "adapter" and v2["source"].endswith("/adapter")
    assert (tmp_path / "mlflow" / "artifacts").is_dir()  # artifacts live in the run dir too
