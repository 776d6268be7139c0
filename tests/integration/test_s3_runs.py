"""Runs whose data, tokenizer and run directory live on S3 (a moto server on 127.0.0.1): round trips,
SIGTERM at random steps and SIGKILL mid-checkpoint with exact resume, the endpoint going away, torchrun + ZeRO."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT, read_metrics, run_cli, shell_env

pytestmark = pytest.mark.integration

SAMPLE = ROOT / "framework" / "data" / "sample"
ARGS = ["train.max_steps=24", "train.eval_interval=6", "train.checkpoint_interval=4", "train.progress=false"]


def s3_metrics(client: Any, bucket: str, key: str) -> list[dict[str, Any]]:
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    return [json.loads(line) for line in body.splitlines() if line]


def keys(client: Any, bucket: str, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The uninterrupted run, on local disk: S3 must not change a single number."""
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    res = run_cli([*ARGS, f"hydra.run.dir={run_dir}"], cwd=run_dir.parent)
    assert res.returncode == 0, res.stderr[-3000:]
    return read_metrics(run_dir)


@pytest.fixture
def s3_inputs(s3_server: str, s3_client: Any, s3_bucket: str) -> str:
    bucket = s3_bucket.removeprefix("s3://")
    s3_client.upload_file(str(SAMPLE / "train.jsonl"), bucket, "data/train.jsonl")
    for f in (SAMPLE / "tokenizer").iterdir():
        s3_client.upload_file(str(f), bucket, f"tok/{f.name}")
    return s3_bucket


def s3_args(bucket: str) -> list[str]:
    return [
        *ARGS,
        "storage=s3",
        f"storage.output_uri={bucket}/runs/r1",
        "dataset=jsonl",
        f"dataset.path={bucket}/data/train.jsonl",
        f"dataset.tokenizer={bucket}/tok",
        "dataset.max_seq_len=256",
        "dataset.val_fraction=0.1",
    ]


def assert_same(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    assert [m["step"] for m in a] == [m["step"] for m in b]
    for x, y in zip(a, b, strict=True):
        for key in ("loss", "eval_loss", "lr"):
            if key in y:
                assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-6), (x, y)


def popen(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    env = shell_env(PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "framework", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def wait_for_log(proc: subprocess.Popen[str], needle: str, timeout: float = 300) -> list[str]:
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.time() + timeout
    for line in proc.stdout:
        seen.append(line)
        if needle in line or time.time() > deadline:
            break
    return seen


def test_round_trip_and_sigterm_at_random_steps(
    s3_inputs: str, s3_client: Any, reference, tmp_path: Path
) -> None:
    bucket = s3_inputs.removeprefix("s3://")
    args = s3_args(s3_inputs)
    rng = random.Random(1234)
    # Two preemptions at seeded random steps; the first lands while a checkpoint upload is in flight.
    for needle in ("Checkpoint step_8 saved", f"step {rng.choice([12, 18])}:"):
        proc = popen(args, tmp_path)
        wait_for_log(proc, needle)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode == 143, out[-3000:]
        latest = s3_client.get_object(Bucket=bucket, Key="runs/r1/checkpoints/latest")["Body"].read().decode()
        manifest = json.loads(
            s3_client.get_object(Bucket=bucket, Key=f"runs/r1/checkpoints/{latest}/manifest.json")[
                "Body"
            ].read()
        )
        for name, entry in manifest["files"].items():
            head = s3_client.head_object(Bucket=bucket, Key=f"runs/r1/checkpoints/{latest}/{name}")
            assert head["ContentLength"] == entry["size"]
            assert "xxh3_128" in entry or not name.startswith("mp_rank_00"), (
                entry
            )  # rank 0's files: checksums
    res = run_cli(args, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Resumed from s3://" in res.stdout + res.stderr
    assert_same(s3_metrics(s3_client, bucket, "runs/r1/metrics.jsonl"), reference)
    stored = keys(s3_client, bucket, "runs/r1/")
    for key in ("runs/r1/config.yaml", "runs/r1/adapter/adapter_config.json", "runs/r1/checkpoints/latest"):
        assert key in stored


def test_sigkill_during_checkpoint_keeps_previous(
    s3_inputs: str, s3_client: Any, reference, tmp_path: Path
) -> None:
    bucket = s3_inputs.removeprefix("s3://")
    args = s3_args(s3_inputs)
    proc = popen(args, tmp_path)
    wait_for_log(proc, "Checkpoint step_4 committed")
    wait_for_log(proc, "Checkpoint step_8 saved")  # the step_8 upload is now in flight
    proc.kill()
    proc.wait(timeout=60)
    latest = s3_client.get_object(Bucket=bucket, Key="runs/r1/checkpoints/latest")["Body"].read().decode()
    assert latest in ("step_4", "step_8")  # never a half-written marker
    res = run_cli(args, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert_same(s3_metrics(s3_client, bucket, "runs/r1/metrics.jsonl"), reference)


def test_resume_a_chosen_step_and_another_runs_checkpoint(
    s3_inputs: str, s3_client: Any, reference, tmp_path: Path
) -> None:
    bucket = s3_inputs.removeprefix("s3://")
    args = [*s3_args(s3_inputs), "train.keep_last=10"]
    assert run_cli(args, cwd=tmp_path).returncode == 0
    # the same run, back to step 8: the steps after it are recomputed identically
    res = run_cli([*args, "resume=8"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"Resumed from {s3_inputs}/runs/r1/checkpoints/step_8 at step 8" in res.stdout + res.stderr
    assert_same(s3_metrics(s3_client, bucket, "runs/r1/metrics.jsonl"), reference)
    # a new run directory that starts from r1's step 12
    args2 = [a.replace("runs/r1", "runs/r2") for a in args]
    source = f"{s3_inputs}/runs/r1/checkpoints/step_12"
    res = run_cli([*args2, f"resume={source}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"Resumed from {source} at step 12" in res.stdout + res.stderr
    later = [m for m in reference if m["step"] > 12]
    assert_same(s3_metrics(s3_client, bucket, "runs/r2/metrics.jsonl"), later)
    assert not any(".resume" in k for k in keys(s3_client, bucket, "runs/r2/"))
    # a step that was never saved: exit 2, naming the checkpoint
    res = run_cli([*args2, "resume=5"], cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-3000:]
    assert f"{s3_inputs}/runs/r2/checkpoints/step_5 has no manifest.json" in res.stderr


def test_endpoint_down_fails_clearly_then_resumes(s3_inputs: str, s3_client: Any, tmp_path: Path) -> None:
    from tests.s3_fixtures import shared_server

    args = [*s3_args(s3_inputs), "storage.retries=2", "storage.retry_backoff_s=0.2"]
    proc = popen(args, tmp_path)
    wait_for_log(proc, "Checkpoint step_4 committed")
    server = shared_server()
    server.stop()
    try:
        out, _ = proc.communicate(timeout=180)
    finally:
        server.start()
    assert proc.returncode == 1, out[-3000:]
    final = [line for line in out.splitlines() if line.startswith("error: ")]
    assert final, out[-3000:]
    assert "s3://" in final[-1] and "AWS_ENDPOINT_URL" in final[-1]
    assert "Traceback" not in out[out.index(final[-1]) :]
    res = run_cli(args, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Resumed from s3://" in res.stdout + res.stderr


@pytest.mark.parametrize("stage", [2, 3])
def test_torchrun_zero_checkpoints_on_s3(stage: int, s3_inputs: str, s3_client: Any, tmp_path: Path) -> None:
    bucket = s3_inputs.removeprefix("s3://")
    args = [
        *s3_args(s3_inputs), "hardware.nproc_per_node=2", f"hardware.zero_stage={stage}", "train.max_steps=4",
        "train.checkpoint_interval=2", "train.micro_batch_size=4",
    ]  # fmt: skip
    res = run_cli(args, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-4000:]
    stored = keys(s3_client, bucket, "runs/r1/checkpoints/step_4/")
    assert any("zero_pp_rank_1" in k for k in stored), stored  # rank 1's shard landed before the commit
    res = run_cli([*args, "train.max_steps=6"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "Resumed from s3://" in res.stdout + res.stderr
    assert [m["step"] for m in s3_metrics(s3_client, bucket, "runs/r1/metrics.jsonl") if "loss" in m] == list(
        range(1, 7)
    )


def test_keep_best_on_s3_names_a_committed_checkpoint(s3_inputs: str, s3_client: Any, tmp_path: Path) -> None:
    """train.keep_best with an s3:// run dir: the store's best (written after that checkpoint's commit, as latest)
    names the lowest-eval checkpoint, whole (manifest) and kept beside the last one; eval.samples go up too."""
    bucket = s3_inputs.removeprefix("s3://")
    args = [
        *s3_args(s3_inputs), "train.max_steps=8", "train.eval_interval=2", "train.checkpoint_interval=2",
        "train.keep_last=1", "train.keep_best=true", "eval.samples=1", "eval.samples_max_new_tokens=2",
    ]  # fmt: skip
    res = run_cli(args, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = s3_metrics(s3_client, bucket, "runs/r1/metrics.jsonl")
    evals = {m["step"]: m["eval_loss"] for m in metrics if "eval_loss" in m and m["step"] > 0}
    best = min((loss, step) for step, loss in evals.items())[1]
    body = s3_client.get_object(Bucket=bucket, Key="runs/r1/checkpoints/best")["Body"].read().decode()
    assert body.strip() == f"step_{best}"
    stored = keys(s3_client, bucket, "runs/r1/checkpoints/")
    assert f"runs/r1/checkpoints/step_{best}/manifest.json" in stored
    assert "runs/r1/checkpoints/step_8/manifest.json" in stored
    assert [r["step"] for r in s3_metrics(s3_client, bucket, "runs/r1/samples.jsonl")] == [0, 2, 4, 6, 8]
