"""A real CPU training run reports its progress to a local TrainJobStatus endpoint (as under Kubeflow Trainer v2
with KUBEFLOW_TRAINER_SERVER_URL set): CRD-valid payloads, at most one per 5 s, the last one 100%."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from framework import trainer_status
from tests.fixtures.trainer_endpoint import Endpoint, check_payload

pytestmark = pytest.mark.integration


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    e = Endpoint()
    yield e
    e.stop()


def test_a_cpu_run_reports_to_a_local_endpoint(endpoint: Endpoint, tmp_path: Path) -> None:
    from tests.helpers import run_cli

    token = tmp_path / "token"
    token.write_text("projected-token")
    env = {
        trainer_status.ENV_URL: endpoint.url,
        trainer_status.ENV_TOKEN: str(token),
        "OMP_NUM_THREADS": "1",
        **{k: os.environ[k] for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if k in os.environ},
    }
    t0 = time.monotonic()
    result = run_cli(
        ["train.max_steps=15", "train.eval_interval=10", "train.checkpoint_interval=0", "train.progress=false",
         f"hydra.run.dir={tmp_path / 'run'}"],
        tmp_path, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    statuses = [check_payload(body) for *_, body in endpoint.posts]
    times = [t - t0 for t, *_ in endpoint.posts]
    assert statuses, "no status posted"
    assert statuses[-1]["progressPercentage"] == 100
    metrics = {m["name"]: m["value"] for m in statuses[-1]["metrics"]}
    assert metrics["step"] == "15" and "loss" in metrics and "eval_loss" in metrics
    gaps = [b - a for a, b in zip(times, times[1:-1], strict=False)]
    assert all(g >= trainer_status.MIN_INTERVAL_S - 0.05 for g in gaps), gaps
    assert {h["Authorization"] for _, _, h, _ in endpoint.posts} == {"Bearer projected-token"}
