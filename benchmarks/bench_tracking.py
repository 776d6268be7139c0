"""Step-time overhead of experiment tracking + the Prometheus exporter, against no tracking, in the same run.

A simulated training step (CPU matmuls, calibrated to ``--step-ms``, default 30 ms) runs in blocks of
``--steps`` steps, alternating baseline and tracked blocks (ABBA order, so drift and neighbours' load hit
both). Tracked steps log every step, as the training loop does: ``MultiTracker.log_metrics`` to TensorBoard +
MLflow (local file store) + W&B (offline), and ``MetricsServer.update`` with a scraper hitting /metrics every
``--scrape-s`` seconds. Reports, for both: per-step wall time (mean, median) and the overhead as the median over
adjacent block pairs (robust to load from other processes on a shared machine); CPU time per step including the
tracking threads and W&B's wandb-core process (all of wandb-core's CPU is charged to tracking), which is the
cost when training is CPU-bound on every core; and what one logging call costs the training thread.
Target: < 2 %.

    .venv/bin/python benchmarks/bench_tracking.py                    # 16 rounds x 2 x 20 steps of ~30 ms
    .venv/bin/python benchmarks/bench_tracking.py --step-ms 20 --rounds 8 --backends tensorboard,mlflow
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from framework.metrics_server import start_metrics_server  # noqa: E402
from framework.tracking import make_trackers  # noqa: E402
from framework.tracking_config import TrackingConfig  # noqa: E402

RESOLVED = {
    "run_name": "bench",
    "optim": {"name": "adamw", "lr": 3e-4, "betas": [0.9, 0.999]},
    "train": {"max_steps": 1000, "micro_batch_size": 4, "grad_accum": 1},
    "lora": {"r": 8, "alpha": 16, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
    "model": {"name": "tiny_llama", "hidden_size": 256, "num_hidden_layers": 4},
}


class Workload:
    """``reps`` matmuls of two n x n matrices: the stand-in for a forward/backward/optimizer step."""

    def __init__(self, n: int, reps: int) -> None:
        gen = torch.Generator().manual_seed(0)
        self.a = torch.randn(n, n, generator=gen)
        self.b = torch.randn(n, n, generator=gen)
        self.reps = reps

    def __call__(self) -> float:
        c = self.a
        for _ in range(self.reps):
            c = torch.tanh(c @ self.b)
        return float(c[0, 0])


def calibrate(step_ms: float, n: int = 384) -> Workload:
    """Size the workload by CPU time of this thread, which other processes' load does not inflate."""
    probe = Workload(n, 1)
    for _ in range(5):
        probe()
    samples = []
    for _ in range(40):
        t0 = time.thread_time()
        probe()
        samples.append(time.thread_time() - t0)
    per_rep = statistics.median(samples)
    return Workload(n, max(1, round(step_ms / 1000 / max(per_rep, 1e-6))))


def run_block(
    work: Workload, steps: int, first_step: int, tracker: Any, server: Any, call_s: list[float]
) -> list[float]:
    times = []
    for i in range(steps):
        step = first_step + i
        t0 = time.perf_counter()
        loss = work()
        if tracker is not None:
            dt = time.perf_counter() - t0
            line = {"step": step, "loss": abs(loss) % 10, "lr": 3e-4, "tokens_per_s": 2048 / max(dt, 1e-9)}
            c0 = time.perf_counter()
            tracker.log_metrics(line, step)
            server.update(**line, step_time_s=dt, slowest_step_time_s=dt, data_time_s=0.001, mfu=0.4)
            call_s.append(time.perf_counter() - c0)
        times.append(time.perf_counter() - t0)
    return times


def own_cpu_s() -> float:
    """CPU seconds of this process, all threads."""
    t = os.times()
    return t.user + t.system


def children_cpu_s() -> float:
    """CPU seconds of live child processes (wandb-core), via psutil when available."""
    try:
        import psutil
    except ImportError:
        return 0.0
    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            t = child.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def scraper(url: str, interval: float, stop: threading.Event, count: list[int]) -> None:
    while not stop.wait(interval):
        with urllib.request.urlopen(url, timeout=5) as resp:
            resp.read()
        count[0] += 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--step-ms", type=float, default=30.0, help="target simulated step time")
    ap.add_argument("--steps", type=int, default=20, help="steps per block")
    ap.add_argument("--rounds", type=int, default=16, help="(baseline, tracked) block pairs, in ABBA order")
    ap.add_argument("--backends", default="tensorboard,mlflow,wandb")
    ap.add_argument("--scrape-s", type=float, default=1.0, help="seconds between /metrics scrapes")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (0: torch's default). 1 by default: a GPU node's training thread leaves CPU cores "
        "free, and multi-threaded matmuls on a shared box measure the scheduler more than the trackers",
    )
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)

    tmp = Path(tempfile.mkdtemp(prefix="bench-tracking-"))
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        os.environ.setdefault(var, str(tmp / var.lower()))
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.pop("WANDB_API_KEY", None)  # offline: measure the client, not the network

    work = calibrate(args.step_ms)
    backends = [b for b in args.backends.split(",") if b]
    t0 = time.perf_counter()
    tracker = make_trackers(
        TrackingConfig(backends=backends), str(tmp / "run"), "bench", RESOLVED, is_rank0=True
    )
    server = start_metrics_server(0, "127.0.0.1", {"run_name": "bench", "node_rank": 0})
    startup_s = time.perf_counter() - t0
    stop, scrapes = threading.Event(), [0]
    scrape_thread = threading.Thread(
        target=scraper, args=(server.url, args.scrape_s, stop, scrapes), daemon=True
    )
    scrape_thread.start()

    for _ in range(10):  # warm-up
        work()
    blocks: dict[str, list[list[float]]] = {"base": [], "tracked": []}
    cpu: dict[str, float] = {"base": 0.0, "tracked": 0.0}
    call_s: list[float] = []
    step = 0
    children0 = children_cpu_s()
    for r in range(args.rounds):
        for mode in ("base", "tracked") if r % 2 == 0 else ("tracked", "base"):
            c0 = own_cpu_s()
            if mode == "base":
                blocks[mode].append(run_block(work, args.steps, step, None, None, call_s))
            else:
                blocks[mode].append(run_block(work, args.steps, step, tracker, server, call_s))
            cpu[mode] += own_cpu_s() - c0
            step += args.steps
    children_run = children_cpu_s() - children0  # wandb-core over the whole timed run
    t0 = time.perf_counter()
    tracker.close()
    close_s = time.perf_counter() - t0
    stop.set()
    scrape_thread.join()
    server.stop()

    base = [t for b in blocks["base"] for t in b]
    tracked = [t for b in blocks["tracked"] for t in b]
    mean_b, mean_t = statistics.fmean(base), statistics.fmean(tracked)
    med_b, med_t = statistics.median(base), statistics.median(tracked)
    # Adjacent (baseline, tracked) block pairs ran under the same outside load.
    pair_pct = [
        100 * (statistics.fmean(t) / statistics.fmean(b) - 1)
        for b, t in zip(blocks["base"], blocks["tracked"], strict=True)
    ]
    cpu_b = cpu["base"] / len(base)
    cpu_t = (cpu["tracked"] + children_run) / len(tracked)
    result = {
        "backends": tracker.backends,
        "prometheus": True,
        "torch_threads": torch.get_num_threads(),
        "steps_per_mode": len(base),
        "baseline_mean_ms": 1000 * mean_b,
        "tracked_mean_ms": 1000 * mean_t,
        "baseline_median_ms": 1000 * med_b,
        "tracked_median_ms": 1000 * med_t,
        "overhead_wall_pct_median_of_pairs": statistics.median(pair_pct),
        "overhead_wall_pct_pairs": pair_pct,
        "baseline_cpu_ms_per_step": 1000 * cpu_b,
        "tracked_cpu_ms_per_step": 1000 * cpu_t,
        "wandb_core_cpu_ms_per_tracked_step": 1000 * children_run / len(tracked),
        "overhead_cpu_pct": 100 * (cpu_t - cpu_b) / cpu_b,
        "log_call_mean_us": 1e6 * statistics.fmean(call_s),
        "log_call_median_us": 1e6 * statistics.median(call_s),
        "log_call_p99_us": 1e6 * sorted(call_s)[int(0.99 * (len(call_s) - 1))],
        "startup_s": startup_s,
        "close_s": close_s,
        "scrapes": scrapes[0],
        "load_avg_1m": os.getloadavg()[0],
        "cpus": os.cpu_count(),
    }
    print(
        f"tracking: {', '.join(tracker.backends)} + prometheus; torch threads {torch.get_num_threads()}; "
        f"step = {work.reps} x ({work.a.shape[0]}^2 matmul + tanh)"
    )
    print(
        f"steps per mode: {len(base)} ({args.rounds} rounds x {args.steps}, ABBA); /metrics scrapes: {scrapes[0]}; "
        f"load average {result['load_avg_1m']:.1f} on {result['cpus']} CPUs"
    )
    print(f"{'':10}{'wall mean ms':>14}{'wall median ms':>16}{'CPU ms/step':>13}")
    print(f"{'baseline':10}{1000 * mean_b:14.2f}{1000 * med_b:16.2f}{1000 * cpu_b:13.2f}")
    print(f"{'tracked':10}{1000 * mean_t:14.2f}{1000 * med_t:16.2f}{1000 * cpu_t:13.2f}")
    print(
        f"overhead: wall {result['overhead_wall_pct_median_of_pairs']:+.2f} % (median of {len(pair_pct)} block pairs), "
        f"CPU {result['overhead_cpu_pct']:+.2f} % (incl. wandb-core "
        f"{result['wandb_core_cpu_ms_per_tracked_step']:.2f} ms/step); target < 2 %"
    )
    print(
        f"logging call on the training thread: median {result['log_call_median_us']:.0f} us, "
        f"mean {result['log_call_mean_us']:.0f} us, p99 {result['log_call_p99_us']:.0f} us"
    )
    print(f"start-up (once): {startup_s:.2f} s; close/flush (once): {close_s:.2f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
