"""The rendered pods, run for real: a 2-node x 2-process CPU job trains to completion as one world of 4 ranks.

No cluster: each pod's container command runs as a local process with the env kubelet would give it (see
tests/k8s/pods.py); the pods' DNS names resolve to 127.0.0.1. Slow (DeepSpeed, 4 processes): marked integration.

    python -m pytest -m integration tests/integration/test_k8s_pods.py
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
from hydra_plugins.kubernetes_launcher._render import job_name, render

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
