"""The rendered pods, run for real: a 2-node x 2-process CPU job trains to completion as one world of 4 ranks.

No cluster: each pod's container command runs as a local process with the env kubelet would give it (see
tests/k8s/pods.py); the pods' DNS names resolve to 127.0.0.1. Slow (DeepSpeed, 4 processes): marked integration.

    python -m pytest -m integration tests/integration/test_k8s_pods.py
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from hydra_plugins.kubernetes_launcher._render import job_name, main_object, render

from tests.k8s.compose import compose
from tests.k8s.pods import expand, free_port, pods_of, resolve_env, start

pytestmark = pytest.mark.integration

TINY = (
    "hardware=cpu",
    "hardware.nodes=2",
    "hardware.nproc_per_node=2",
    "train.max_steps=4",
    "train.eval_interval=2",
    "train.checkpoint_interval=2",
    "train.micro_batch_size=2",
    "train.eval_max_batches=2",
    "train.progress=false",
    "dataset.max_seq_len=128",
    "launcher.run_dir_pvc=runs",  # a shared run dir, as a ReadWriteMany PVC would be
)
# Host env the pods may keep: offline hub (no network here), and DeepSpeed's compiled CPU op cache (~30 s a build).
KEEP = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TORCH_EXTENSIONS_DIR")


@pytest.mark.parametrize("backend", ["indexed_job", "jobset", "pytorchjob", "trainjob"])
def test_pods_train_in_one_world(backend: str, tmp_path: Path) -> None:
    cfg = compose(*TINY, f"launcher.backend={backend}")
    name = job_name(str(cfg.run_name), sweep_id="s0test", job_index=0, backend=backend, nodes=2)
    objs = render(cfg, job_name=name, sweep_id="s0test", job_index=0, git_commit=None)
    pods = pods_of(objs)
    assert [p.node_rank for p in pods] == [0, 1]
    # The node rank each pod's torchrun gets, after Kubernetes' expansion (PyTorchJob: from the operator's RANK).
    for pod in pods:
        env = resolve_env(pod)
        assert env["NNODES"] == "2" and env["NPROC_PER_NODE"] == "2"
        rank_arg = next(a for a in pod.spec["containers"][0]["args"] if a.startswith("--node-rank="))
        assert expand(rank_arg, env) == f"--node-rank={pod.node_rank}"

    port = free_port()
    keep = {k: os.environ[k] for k in KEEP if k in os.environ}
    started = [start(p, objs, tmp_path, master_port=port, keep_env=keep) for p in pods]
    deadline = time.monotonic() + 900
    try:
        while any(s.proc.poll() is None for s in started) and time.monotonic() < deadline:
            time.sleep(1)
    finally:
        for s in started:
            if s.proc.poll() is None:
                s.proc.kill()
                s.proc.wait()
    logs = {s.pod.hostname: s.log.read_text(errors="replace") for s in started}
    for s in started:
        assert s.proc.returncode == 0, (
            f"{s.pod.hostname} exited {s.proc.returncode}:\n{logs[s.pod.hostname][-4000:]}"
        )

    rank0 = logs[pods[0].hostname]
    assert re.search(r"World: 4 process", rank0), rank0[-3000:]
    run_dir = tmp_path / "pvc" / "runs" / name
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    steps = [r["step"] for r in rows if "loss" in r]
    evals = [r for r in rows if "eval_loss" in r]
    assert steps and max(steps) == 4
    assert [r["step"] for r in evals][-1] == 4 and all(r["eval_loss"] > 0 for r in evals)
    assert (run_dir / "checkpoints" / "latest").exists()
    assert (run_dir / "adapter").is_dir()


# --------------------------------------------------------------------------------------- failure matrix
# Real processes for one incident per backend kind of controller, applying tests/k8s/controllers.py's rules
# (the unit matrix in tests/unit/test_k8s_failure_matrix.py covers every backend x scenario x 2/4 nodes on the
# exit codes these runs show). Lean for CI: 2 pods x 1 process, 8 steps, one shared uninterrupted reference.
SMALL = (
    "hardware=cpu",
    "hardware.nodes=2",
    "hardware.nproc_per_node=1",
    "train.max_steps=8",
    "train.eval_interval=0",
    "train.checkpoint_interval=2",
    "train.micro_batch_size=2",
    "train.eval_max_batches=1",
    "train.progress=false",
    "dataset.max_seq_len=64",
    "launcher.run_dir_pvc=runs",
)


def _objs(backend: str, *extra: str) -> tuple[str, list[dict[str, Any]]]:
    cfg = compose(*SMALL, f"launcher.backend={backend}", *extra)
    name = job_name(str(cfg.run_name), sweep_id="s0fail", job_index=0, backend=backend, nodes=2)
    return name, render(cfg, job_name=name, sweep_id="s0fail", job_index=0, git_commit=None)


def _attempt(
    objs: list[dict[str, Any]], root: Path, ranks: list[int], port: int, hit: Any = None
) -> dict[int, int]:
    """Start the pods of ``ranks``; ``hit(started)`` strikes once; each pod's exit code (as kubelet reports)."""
    keep = {k: os.environ[k] for k in KEEP if k in os.environ}
    pods = {p.node_rank: p for p in pods_of(objs)}
    started = {}
    for r in ranks:
        log = open(root / f"{pods[r].hostname}.log", "ab")  # noqa: SIM115 - closed below
        started[r] = start(pods[r], objs, root, master_port=port, keep_env=keep, log=log)
    deadline = time.monotonic() + 600
    try:
        if hit is not None:
            hit(started)
        while any(s.proc.poll() is None for s in started.values()) and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        for s in started.values():
            if s.proc.poll() is None:
                s.proc.kill()
            s.proc.wait()
    return {
        r: (s.proc.returncode if s.proc.returncode >= 0 else 128 - s.proc.returncode)
        for r, s in started.items()
    }


def _losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert len(steps) == len(set(steps)), f"steps repeated: {steps}"  # truncated on every resume
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _wait_for_checkpoint(run_dir: Path, step: int, started: dict[int, Any], last: int = 8) -> None:
    """Until a checkpoint at ``step`` or later, but before the last step, is committed (on an idle machine
    two steps can pass between polls, so a later mid-run checkpoint counts too)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        latest = run_dir / "checkpoints" / "latest"
        tag = latest.read_text().strip() if latest.is_file() else ""
        if tag.startswith("step_") and step <= int(tag[5:]) < last:
            return
        if any(s.proc.poll() is not None for s in started.values()):
            raise AssertionError(f"a pod ended before a mid-run checkpoint (latest: {tag or 'none'})")
        time.sleep(0.02)
    raise AssertionError("no checkpoint")


def _sigkill_one_worker(run_dir: Path) -> Any:
    def hit(started: dict[int, Any]) -> None:
        import psutil

        _wait_for_checkpoint(run_dir, 2, started)
        worker = psutil.Process(started[1].proc.pid).children(recursive=True)[0]
        worker.kill()  # as the OOM killer would: one training process, SIGKILL

    return hit


def _sigterm_every_process(run_dir: Path) -> Any:
    def hit(started: dict[int, Any]) -> None:
        import psutil

        _wait_for_checkpoint(run_dir, 2, started)
        agent = psutil.Process(started[1].proc.pid)
        for p in [agent, *agent.children(recursive=True)]:  # node shutdown: the whole cgroup at once
            p.send_signal(signal.SIGTERM)

    return hit


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[int, float]:
    root = tmp_path_factory.mktemp("reference")
    name, objs = _objs("jobset")
    codes = _attempt(objs, root, [0, 1], free_port())
    assert codes == {0: 0, 1: 0}, (root / f"{name}-node-0-0.log").read_text()[-3000:]
    return _losses(root / "pvc" / "runs" / name)


@pytest.mark.parametrize(
    ("backend", "scenario", "expected"),
    [
        # a worker SIGKILLed (OOM-style): 137 on its pod, the peer's collective breaks (1; PyTorchJob: 200)
        ("jobset", "sigkill_worker", {0: 1, 1: 137}),
        # SIGTERM to every process of one pod (each worker gets it twice): all checkpoint and exit 143
        ("pytorchjob", "sigterm_all", {0: 143, 1: 143}),
    ],
)
def test_incident_restarts_and_resumes_to_the_uninterrupted_metrics(
    backend: str, scenario: str, expected: dict[int, int], reference: dict[int, float], tmp_path: Path
) -> None:
    from tests.k8s.controllers import model_for

    t0 = time.monotonic()
    name, objs = _objs(backend)
    run_dir = tmp_path / "pvc" / "runs" / name
    model = model_for(main_object(objs))
    hit = {"sigkill_worker": _sigkill_one_worker, "sigterm_all": _sigterm_every_process}[scenario](run_dir)
    codes = _attempt(objs, tmp_path, [0, 1], free_port(), hit)
    assert codes == expected, {h.name: h.read_text()[-2000:] for h in tmp_path.glob("*.log")}
    out = model.pods_ended(codes)
    assert out.phase == "Running" and sorted(out.replaced) == [0, 1], out  # the whole gang comes back
    codes = _attempt(objs, tmp_path, out.replaced, free_port())
    assert codes == {0: 0, 1: 0}, {h.name: h.read_text()[-2000:] for h in tmp_path.glob("*.log")}
    losses = _losses(run_dir)
    assert sorted(losses) == sorted(reference)
    assert losses == pytest.approx(reference, rel=1e-5)
    print(f"{backend}/{scenario}: {time.monotonic() - t0:.0f} s")
