"""The run directory module: location, the one metrics reader, truncation on resume, the one result shape."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from framework import rundir, storage
from framework.rundir import METRICS, SAMPLES, JobResult, MetricsLog, RunDir, read_metrics
from framework.sweep import JobSummary, format_summary


def write_lines(path: Path, *records: dict[str, Any], tail: str = "") -> None:
    log = MetricsLog(path, True, [])
    for r in records:
        log.write(r)
    log.close()
    if tail:
        with path.open("a") as f:
            f.write(tail)


ROWS = [
    {"step": 1, "loss": 3.0, "lr": 1e-3, "tokens_per_s": 100.0},
    {"step": 2, "loss": 2.5, "lr": 1e-3, "tokens_per_s": 300.0},
    {"step": 2, "eval_loss": 2.4, "perplexity": 11.0},
]


def test_reader_drops_a_torn_last_line(tmp_path: Path) -> None:
    write_lines(tmp_path / METRICS, *ROWS, tail='{"step": 3, "lo')
    rows = read_metrics(tmp_path)
    assert list(rows) == ROWS and rows.dropped == [4] and rows.torn_only
    assert list(read_metrics(tmp_path / METRICS)) == ROWS  # the file itself works too
    assert (
        read_metrics(tmp_path / "nothing-yet") == [] and read_metrics(tmp_path / "nothing-yet").dropped == []
    )


def test_truncate_keeps_steps_up_to_the_checkpoint(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_lines(tmp_path / METRICS, *ROWS, {"step": 3, "loss": 2.0}, tail='{"step": 4')
    RunDir.at(tmp_path).truncate_metrics(2)
    assert (tmp_path / METRICS).read_text() == "".join(json.dumps(r) + "\n" for r in ROWS)
    assert "dropped unreadable" not in caplog.text  # a torn last line is no news
    with (tmp_path / METRICS).open("a") as f:
        f.write("garbage\n" + json.dumps({"step": 2, "loss": 2.0}) + "\n")
    RunDir.at(tmp_path).truncate_metrics(2)
    assert "dropped unreadable line(s) [4]" in caplog.text


def test_truncate_trims_samples_as_metrics(tmp_path: Path) -> None:
    """A resume from step 2 drops the samples the lost attempt generated after it, exactly as its metrics."""
    samples = [
        {"step": s, "prompt": "Übersetze:", "generation": f"gen {s} ✓", "reference": "ref"} for s in (0, 2, 4)
    ]
    write_lines(tmp_path / METRICS, *ROWS, {"step": 3, "loss": 2.0}, {"step": 4, "eval_loss": 2.2})
    write_lines(tmp_path / SAMPLES, *samples, tail='{"step": 6, "pro')  # killed mid-write
    RunDir.at(tmp_path).truncate_metrics(2)
    assert [json.loads(x) for x in (tmp_path / SAMPLES).read_text("utf-8").splitlines()] == samples[:2]
    assert "gen 2 ✓" in (tmp_path / SAMPLES).read_text("utf-8")  # written as the samples writer writes them
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 2]
    RunDir.at(tmp_path).truncate_metrics(-1)  # a fresh start keeps nothing of an attempt without checkpoint
    assert (tmp_path / SAMPLES).read_text() == "" and (tmp_path / METRICS).read_text() == ""


def test_remote_resume_fetches_samples_too(s3_env: str, s3_bucket: str) -> None:
    uri = f"{s3_bucket}/runs/demo"
    storage.write_text_atomic(storage.join(uri, METRICS), json.dumps({"step": 5, "loss": 1.0}) + "\n")
    storage.write_text_atomic(storage.join(uri, SAMPLES), json.dumps({"step": 5, "generation": "x"}) + "\n")
    run = RunDir.at(uri)
    run.fetch_metrics()
    run.truncate_metrics(4)
    assert (run.path / METRICS).read_text() == "" and (run.path / SAMPLES).read_text() == ""


def test_location(tmp_path: Path) -> None:
    cfg = OmegaConf.create({"storage": {"output_uri": None}, "run_name": "demo"})
    assert rundir.run_dir_for(cfg) == str(Path("outputs") / "demo")
    cfg.storage.output_uri = "s3://bucket/runs/demo"
    run = RunDir.for_config(cfg)
    assert run.remote and run.uri == "s3://bucket/runs/demo" and run.path == storage.staging_dir(run.uri)
    assert run.remote_checkpoints == "s3://bucket/runs/demo/checkpoints"
    local = RunDir.at(f"file://{tmp_path}")
    assert not local.remote and local.path == tmp_path and local.metrics == tmp_path / METRICS


def test_result_from_metrics_feeds_the_sweep_summary() -> None:
    result = JobResult.from_metrics("COMPLETED", "/runs/0", ROWS, wall_s=12.5)
    assert (result.steps, result.loss, result.eval_loss, result.perplexity) == (2, 2.5, 2.4, 11.0)
    assert result.tokens_per_s == pytest.approx(200.0)
    row = JobSummary.from_return(["optim.lr=1e-3"], "COMPLETED", result.as_dict())
    assert (row.eval_loss, row.tokens_per_s, row.wall_s) == (2.4, 200.0, 12.5)
    assert "200" in format_summary([row]) and "12.5" in format_summary([row])


def test_torchrun_job_reports_tokens_and_wall_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A local torchrun job returns the same result shape as an in-process one (the sweep table had '-')."""
    from framework import __main__ as cli

    def fake_torchrun(cmd: list[str], env: dict[str, str]) -> int:
        write_lines(tmp_path / METRICS, *ROWS)
        return 0

    monkeypatch.setattr(cli.subprocess, "call", fake_torchrun)
    cfg = OmegaConf.create({"hardware": {"nproc_per_node": 2}, "run_name": "x"})
    monkeypatch.setattr(cli, "resolved_yaml", lambda c: "run_name: x\n")
    value = cli.spawn_torchrun(cfg, str(tmp_path))
    assert set(value) == set(JobResult("COMPLETED").as_dict())
    assert value["tokens_per_s"] == pytest.approx(200.0) and value["wall_s"] is not None
    assert value["eval_loss"] == 2.4 and value["run_dir"] == str(tmp_path)
