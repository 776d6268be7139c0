"""The same 2-process CPU training job under torchrun (launcher=local) and under Ray Train (launcher=ray), in one
run: time to first step and steady-state step time.

A local Ray cluster (token auth on, 127.0.0.1 only; tests/ray_cluster.py) is started once. Each round runs the
job under torchrun, then through the Jobs API on that cluster (or the other way round on odd rounds, so load
drift from other jobs hits both arms), each in a fresh ``python -m framework`` process:

- **time to first step**: from just before ``Popen`` to the moment the first train line lands in the run's
  ``metrics.jsonl`` (rank 0 writes it right after optimizer step 1). For Ray this includes submitting, the
  runtime env, the driver's start, placing and starting the Ray Train worker group.
- **steady-state step time**: the median of the ``step_time_s`` each step logs (rank 0's wall time of the step,
  its all-reduces included) over the steps after ``--warmup``.

Target: Ray's steady-state step time within 5% of torchrun's; its start-up overhead is stated, not targeted.

    .venv/bin/python benchmarks/bench_ray.py                 # 2 rounds of 60 steps (ZeRO-2, tiny Llama)
    .venv/bin/python benchmarks/bench_ray.py --rounds 3 --steps 100
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.ray_cluster import start_cluster, stop_cluster  # noqa: E402


def job_args(steps: int) -> list[str]:
    return [
        "hardware.nproc_per_node=2", "hardware.zero_stage=2", f"train.max_steps={steps}",
        "train.eval_interval=0", "train.checkpoint_interval=0", "train.progress=false",
    ]  # fmt: skip


def first_step_and_steps(cmd: list[str], metrics: Path, env: dict[str, str], cwd: Path) -> dict[str, Any]:
    """Run ``cmd``; seconds until metrics.jsonl has its first train line; every step's step_time_s."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    first = None
    while proc.poll() is None:
        if first is None and metrics.is_file() and '"loss"' in metrics.read_text():
            first = time.perf_counter() - t0
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    err = proc.stderr.read() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:6])} ... exited {proc.returncode}:\n{err[-3000:]}")
    rows = [json.loads(ln) for ln in metrics.read_text().splitlines() if ln.strip()]
    train = [r for r in rows if "loss" in r]
    if first is None:
        first = wall  # finished between two polls
    return {
        "first_step_s": first,
        "wall_s": wall,
        "step_times": [r["step_time_s"] for r in train],
        "rows": train,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10, help="steps left out of the steady-state median")
    args = ap.parse_args()

    cluster = start_cluster()
    results: dict[str, list[dict[str, Any]]] = {"torchrun": [], "ray": []}
    base_env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
            for r in range(args.rounds):
                order = ("torchrun", "ray") if r % 2 == 0 else ("ray", "torchrun")
                for arm in order:
                    run_dir = Path(tmp) / f"{arm}-{r}"
                    py = [sys.executable, "-m", "framework", *job_args(args.steps)]
                    if arm == "torchrun":
                        cmd, env = [*py, f"hydra.run.dir={run_dir}"], base_env
                    else:
                        cmd = [
                            *py, "launcher=ray", f"launcher.address={cluster.address}", "launcher.poll_interval_s=0.5",
                            f"storage.output_uri={run_dir}", f"hydra.sweep.dir={Path(tmp) / f'sweep-{r}'}",
                        ]  # fmt: skip
                        env = {**base_env, "RAY_AUTH_TOKEN": cluster.token}
                    res = first_step_and_steps(cmd, run_dir / "metrics.jsonl", env, Path(tmp))
                    results[arm].append(res)
                    steady = statistics.median(res["step_times"][args.warmup :])
                    print(
                        f"round {r} {arm:8s} first step {res['first_step_s']:6.1f}s  steady step {steady * 1000:6.1f}ms"
                        f"  wall {res['wall_s']:6.1f}s",
                        flush=True,
                    )
    finally:
        stop_cluster(cluster.temp_dir)
        shutil.rmtree(cluster.temp_dir, ignore_errors=True)

    def med(arm: str, key: str) -> float:
        if key == "steady":
            return statistics.median(t for res in results[arm] for t in res["step_times"][args.warmup :])
        return statistics.median(res[key] for res in results[arm])

    same = all(
        abs(a["loss"] - b["loss"]) <= 1e-5 * max(1.0, abs(b["loss"]))
        for ra, rt in zip(results["ray"], results["torchrun"], strict=True)
        for a, b in zip(ra["rows"], rt["rows"], strict=True)
    )
    t_first, r_first = med("torchrun", "first_step_s"), med("ray", "first_step_s")
    t_step, r_step = med("torchrun", "steady"), med("ray", "steady")
    print()
    print(f"{'':10s} {'first step':>12s} {'steady step':>12s} {'wall':>8s}")
    for arm in ("torchrun", "ray"):
        print(
            f"{arm:10s} {med(arm, 'first_step_s'):11.1f}s {med(arm, 'steady') * 1000:10.1f}ms {med(arm, 'wall_s'):7.1f}s"
        )
    print(
        f"\nRay Train vs torchrun: steady-state step time {r_step / t_step:.3f}x (target <= 1.05x); "
        f"start-up overhead {r_first - t_first:+.1f}s to the first step; losses equal within 1e-5: {same}"
    )


if __name__ == "__main__":
    main()
