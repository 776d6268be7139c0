"""Progress reports to Kubeflow Trainer's TrainJobStatus endpoint: payload valid against the TrainJob CRD's
status.trainerStatus, at most one POST per interval (latest state wins), the bearer token re-read per request,
a dead endpoint never raises. (A real CPU run: tests/integration/test_trainer_status_run.py.)"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from framework import trainer_status
from framework.distributed import free_port
from tests.fixtures.trainer_endpoint import Endpoint, check_payload


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    e = Endpoint()
    yield e
    e.stop()


def test_payloads_rate_and_token(endpoint: Endpoint, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("tok-1\n")
    r = trainer_status.TrainerStatusReporter(endpoint.url, 100, 0, token_file=str(token), min_interval_s=0.3)
    t0 = time.monotonic()
    for step in range(1, 51):  # 50 steps in ~1 s: far more reports than the rate allows
        r.report({"step": step, "loss": 3.0 - step / 50, "lr": 1e-4, "tokens_per_s": 1234.5})
        if step == 25:
            token.write_text("tok-2\n")  # the kubelet rotated it
            r.report({"step": step, "eval_loss": 2.5, "perplexity": 12.2})
        time.sleep(0.02)
    r.close(finished=True)
    elapsed = time.monotonic() - t0
    times = [t for t, *_ in endpoint.posts]
    assert 2 <= len(times) <= elapsed / 0.3 + 2
    gaps = [b - a for a, b in zip(times, times[1:-1], strict=False)]  # the last (final) post is forced
    assert all(g >= 0.25 for g in gaps), gaps  # client-side 0.3 s; receipt times jitter a little
    statuses = [check_payload(body) for *_, body in endpoint.posts]
    assert [s["progressPercentage"] for s in statuses] == sorted(s["progressPercentage"] for s in statuses)
    assert all(s["progressPercentage"] <= 99 for s in statuses[:-1])
    final = statuses[-1]
    assert final["progressPercentage"] == 100 and final["estimatedRemainingSeconds"] == 0
    metrics = {m["name"]: m["value"] for m in final["metrics"]}
    assert metrics["step"] == "100" and metrics["total_steps"] == "100"
    assert float(metrics["loss"]) == pytest.approx(2.0) and metrics["eval_loss"] == "2.5"
    assert {h["Authorization"] for _, _, h, _ in endpoint.posts} == {"Bearer tok-1", "Bearer tok-2"}
    assert all(p.endswith("/trainjobs/job/status") for _, p, _, _ in endpoint.posts)
    assert "estimatedRemainingSeconds" in statuses[0]


def test_a_failing_endpoint_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    e = Endpoint(status=503)
    try:
        r = trainer_status.TrainerStatusReporter(e.url, 10, 0, min_interval_s=0.05)
        for step in range(1, 11):
            r.report({"step": step, "loss": 1.0})
            time.sleep(0.02)
        r.close(finished=False)
        assert e.posts and r.sent == 0
    finally:
        e.stop()
    dead = trainer_status.TrainerStatusReporter(f"http://127.0.0.1:{free_port()}/x", 10, min_interval_s=0.05)
    dead.report({"step": 1, "loss": 1.0})
    dead.close(finished=True)
    assert dead.sent == 0
    assert (
        sum("could not report progress" in r.message for r in caplog.records if r.levelname == "WARNING") == 2
    )


def test_only_rank0_and_only_with_the_env() -> None:
    env = {trainer_status.ENV_URL: "http://127.0.0.1:1/x"}
    assert isinstance(trainer_status.maybe_reporter(10, 0, True, {}), trainer_status.NullReporter)
    assert isinstance(trainer_status.maybe_reporter(10, 0, False, env), trainer_status.NullReporter)
    r = trainer_status.maybe_reporter(10, 0, True, env)
    assert isinstance(r, trainer_status.TrainerStatusReporter)
    r.close(finished=False)


def test_eta_from_the_pace_since_resume(endpoint: Endpoint) -> None:
    r = trainer_status.TrainerStatusReporter(endpoint.url, 100, 40, min_interval_s=10)
    time.sleep(0.2)
    status = r.payload()["trainerStatus"]
    assert status["progressPercentage"] == 40 and "estimatedRemainingSeconds" not in status
    r.report({"step": 50, "loss": 1.0})
    eta = r.payload()["trainerStatus"]["estimatedRemainingSeconds"]
    assert 0 <= eta <= 50 * 0.2 / 10 * 2 + 1  # ~0.2 s for 10 steps -> ~1 s for the 50 left
    r.close(finished=False)
