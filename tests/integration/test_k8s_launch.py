"""`python -m framework launcher=kubernetes ...` against the in-process fake API server: outcomes, exit codes,
sweeps with max_parallel and the summary, Ctrl-C, fire-and-forget, the operator backends.

    python -m pytest -m integration tests/integration/test_k8s_launch.py
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT, run_cli, shell_env
from tests.k8s.fake_apiserver import FakeKube, Obj, simulate

pytestmark = pytest.mark.integration
# Launcher behaviour, on the backend the fake plays simplest (the operator backends: test_operator_backends).
FAST = ["launcher=kubernetes", "launcher.poll_interval_s=0.2", "launcher.backend=indexed_job"]


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    with FakeKube() as k:
        yield k


def launch(kube: FakeKube, cwd: Path, *args: str, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    env = {"KUBECONFIG": str(kube.write_kubeconfig(cwd / "kubeconfig"))}
    return run_cli(list(args), cwd, env=env, timeout=timeout)


def test_failed_job_exits_1_with_one_line(kube: FakeKube, tmp_path: Path) -> None:
    kube.on_create.append(simulate("fail"))
    proc = launch(kube, tmp_path, *FAST)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert "failed: BackoffLimitExceeded" in line and "default/lora-llama-tiny-llama-" in line


def test_bad_config_in_the_pods_exits_2(kube: FakeKube, tmp_path: Path) -> None:
    kube.on_create.append(simulate("fail_permanent"))
    proc = launch(kube, tmp_path, *FAST)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "PodFailurePolicy" in proc.stderr


def test_sweep_respects_max_parallel_and_prints_a_summary(kube: FakeKube, tmp_path: Path) -> None:
    running: list[int] = []
    lock = threading.Lock()
    active: set[str] = set()

    def track(k: FakeKube, obj: Obj) -> None:
        if obj["kind"] == "Job":
            with lock:
                active.add(obj["metadata"]["name"])
                running.append(len(active))

    def done(name: str) -> None:
        with lock:
            active.discard(name)

    kube.on_create.append(track)
    hook = simulate("succeed", step_s=0.1)

    def play(k: FakeKube, obj: Obj) -> None:
        hook(k, obj)
        if obj["kind"] == "Job":  # forget it once its condition is set

            def wait_done() -> None:
                while not ((k.get("jobs", "default", obj["metadata"]["name"]) or {}).get("status") or {}).get(
                    "conditions"
                ):
                    time.sleep(0.05)
                done(obj["metadata"]["name"])

            threading.Thread(target=wait_done, daemon=True).start()

    kube.on_create.append(play)
    proc = launch(kube, tmp_path, "-m", *FAST, "launcher.max_parallel=2", "optim.lr=1e-4,3e-4,1e-3")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(kube.names("jobs")) == 3
    assert max(running) <= 2
    summary = proc.stdout[proc.stdout.index("Sweep summary") :]
    assert summary.count("COMPLETED") == 3 and "optim.lr=0.001" in summary
    # Several jobs at once: each log line names its job.
    assert re.search(r"^\[lora-llama-tiny-llama-s\w+-[0-2]\] done$", proc.stdout, re.M), proc.stdout


def test_sweep_with_a_failed_job_still_reports_every_job(kube: FakeKube, tmp_path: Path) -> None:
    outcomes = iter(["succeed", "fail"])
    hooks: dict[str, Any] = {}

    def play(k: FakeKube, obj: Obj) -> None:
        if obj["kind"] == "Job":
            hooks.setdefault(obj["metadata"]["name"], simulate(next(outcomes)))(k, obj)

    kube.on_create.append(play)
    proc = launch(kube, tmp_path, "-m", *FAST, "launcher.max_parallel=1", "optim.lr=1e-4,3e-4")
    assert proc.returncode == 1
    summary = proc.stdout[proc.stdout.index("Sweep summary") :]
    assert "COMPLETED" in summary and "FAILED" in summary


def test_no_follow_submits_and_returns(kube: FakeKube, tmp_path: Path) -> None:
    proc = launch(kube, tmp_path, *FAST, "launcher.follow=false")
    assert proc.returncode == 0, proc.stderr
    (name,) = kube.names("jobs")
    assert f"framework-jobs logs {name} -n default --follow" in proc.stdout


@pytest.mark.parametrize(("policy", "deleted"), [("yes", True), ("no", False), ("ask", False)])
def test_ctrl_c(kube: FakeKube, tmp_path: Path, policy: str, deleted: bool) -> None:
    hold = threading.Event()
    kube.on_create.append(simulate("succeed", hold=hold))
    env = {
        **shell_env(),
        "KUBECONFIG": str(kube.write_kubeconfig(tmp_path / "kubeconfig")),
        "PYTHONPATH": str(ROOT),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "framework", *FAST, f"launcher.cancel_on_interrupt={policy}"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,  # not a terminal: 'ask' leaves the job running
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not any(kube.logs.values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        hold.set()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out + err
    assert (kube.names("jobs") == []) is deleted
    if deleted:
        assert "Deleted default/" in err and kube.names("configmaps") == [] and kube.names("services") == []
    else:
        assert "framework-jobs cancel" in err


@pytest.mark.parametrize(("backend", "plural"), [("jobset", "jobsets"), ("pytorchjob", "pytorchjobs")])
def test_operator_backends(kube: FakeKube, tmp_path: Path, backend: str, plural: str) -> None:
    kube.on_create.append(simulate("succeed"))
    proc = launch(kube, tmp_path, *FAST, f"launcher.backend={backend}", "hardware.nodes=2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(kube.names(plural)) == 1 and "step 2 loss 1.5" in proc.stdout


def test_missing_operator_is_one_line(tmp_path: Path) -> None:
    with FakeKube(crds=set()) as kube:
        proc = launch(kube, tmp_path, *FAST, "launcher.backend=jobset")
    assert proc.returncode == 1
    assert "JobSet API (jobsets.jobset.x-k8s.io/v1alpha2) is not installed" in proc.stderr
    assert "Traceback" not in proc.stderr
