"""During training: the step-0 eval, eval.samples=N at every eval (samples.jsonl, TensorBoard text, MLflow
tables), train.keep_best keeping the best checkpoint beside the last one (which export --best exports), and the
final adapter registered in MLflow's registry with the run's metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import read_metrics, run_cli

pytestmark = pytest.mark.integration


def test_samples_at_every_eval_and_best_checkpoint_kept(tmp_path: Path) -> None:
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from framework.export import Run, select

    run = tmp_path / "run"
    res = run_cli(
        ["train.max_steps=12", "train.eval_interval=3", "train.checkpoint_interval=6", "train.keep_last=1",
         "train.keep_best=true", "eval.samples=2", "eval.samples_max_new_tokens=6",
         "tracking=[tensorboard,mlflow]", "tracking.mlflow.register_as=tiny", "train.progress=false",
         f"hydra.run.dir={run}"],
        cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    evals = {m["step"]: m["eval_loss"] for m in read_metrics(run) if "eval_loss" in m}
    assert sorted(evals) == [0, 3, 6, 9, 12]  # step 0: the baseline before the first update

    rows = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [s for s in (0, 3, 6, 9, 12) for _ in range(2)]
    assert len({r["prompt"] for r in rows}) == 2  # the same fixed prompts at every eval
    assert all(r["prompt"].startswith("### Instruction:\n") and r["reference"] for r in rows)

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    text = acc.Tensors("samples/text_summary")
    assert [t.step for t in text] == [0, 3, 6, 9, 12]
    assert rows[-1]["reference"] in text[-1].tensor_proto.string_val[0].decode()
    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow' / 'mlflow.db'}")
    (mrun,) = client.search_runs([client.get_experiment_by_name("framework").experiment_id])
    tables = sorted(a.path for a in client.list_artifacts(mrun.info.run_id, "samples"))
    assert tables == [f"samples/step_{s:06d}.json" for s in (0, 3, 6, 9, 12)]
    (version,) = client.search_model_versions("name = 'tiny'")  # the final adapter, with the run's metrics
    assert version.run_id == mrun.info.run_id and version.tags["framework.artifact"] == "adapter"
    assert float(version.tags["metric.eval_loss"]) == pytest.approx(evals[12])

    best_step = min((loss, s) for s, loss in evals.items() if s > 0)[1]
    ckpts = run / "checkpoints"
    assert (ckpts / "best").read_text() == f"step_{best_step}"
    kept = sorted(p.name for p in ckpts.iterdir() if p.is_dir())
    assert kept == sorted({"step_12", f"step_{best_step}"})  # keep_last=1 plus the best
    assert select(Run.open(str(run)), best=True).step == best_step


def test_resume_drops_the_lost_attempts_samples(tmp_path: Path) -> None:
    """Resumed from step 3, the samples the lost attempt generated after it (steps 4 and 6) are dropped, as its
    metrics are: every eval's samples appear once."""
    import shutil

    run = tmp_path / "run"
    args = [
        "train.max_steps=6", "train.eval_interval=2", "train.checkpoint_interval=3", "train.keep_last=2",
        "eval.samples=1", "eval.samples_max_new_tokens=2", "train.progress=false", f"hydra.run.dir={run}",
    ]  # fmt: skip
    res = run_cli(args, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    # The attempt is lost after step 3: its last checkpoint is step_3, its logs go on to step 6.
    shutil.rmtree(run / "checkpoints" / "step_6")
    (run / "checkpoints" / "latest").write_text("step_3")
    res = run_cli(args, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Resumed from" in res.stderr + res.stdout
    steps = [json.loads(x)["step"] for x in (run / "samples.jsonl").read_text().splitlines()]
    assert steps == [0, 2, 4, 6]
    assert [m["step"] for m in read_metrics(run) if "eval_loss" in m] == [0, 2, 4, 6]
