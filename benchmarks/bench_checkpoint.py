"""Training time lost per checkpoint: local disk and S3 (moto on 127.0.0.1, uploads overlapped with training),
against the same run without intermediate checkpoints, all in one invocation.

    .venv/bin/python benchmarks/bench_checkpoint.py [--steps 40] [--every 10] [--hidden 256]
    .venv/bin/python benchmarks/bench_checkpoint.py --manifest-gb 2   # checksum cost only, no training

``--manifest-gb``: the manifest's checksums (checkpoint.describe_files / damage) on shards of that total size,
against writing those shards and against the size-only manifest of before, in the same run.

Each variant runs ``python -m framework`` (full fine-tune, so checkpoints carry weights + Adam states) in a fresh
process; the figure is the train() wall time the run reports (start-up excluded), minus the baseline's.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(args: list[str], env: dict[str, str]) -> float:
    res = subprocess.run(
        [sys.executable, "-m", "framework", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    out = res.stdout + res.stderr
    if res.returncode != 0:
        raise SystemExit(f"run failed ({res.returncode}):\n{out[-3000:]}")
    match = re.search(r"Done: \d+ steps, eval_loss \S+, ([\d.]+)s", out)
    assert match, out[-2000:]
    return float(match.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--manifest-gb", type=float, default=0.0)
    a = ap.parse_args()
    if a.manifest_gb:
        return manifest_cost(a.manifest_gb)

    import boto3
    from moto.server import ThreadedMotoServer

    sys.path.insert(0, str(ROOT))
    from framework.distributed import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_DEFAULT_REGION": "us-east-1",
        "PYTHONPATH": str(ROOT),
    }
    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                 aws_access_key_id="bench", aws_secret_access_key="bench").create_bucket(Bucket="bench")  # fmt: skip
    model = [
        "recipe=full_finetune", f"model.hidden_size={a.hidden}", f"model.num_hidden_layers={a.layers}",
        f"model.intermediate_size={a.hidden * 11 // 4}", "model.num_attention_heads=8", "model.num_key_value_heads=4",
        f"train.max_steps={a.steps}", "train.eval_interval=0", "train.progress=false", "train.keep_last=2",
    ]  # fmt: skip
    n_ckpt = a.steps // a.every - (1 if a.steps % a.every == 0 else 0)  # the final one is in every variant
    params = 2048 * a.hidden * 2 + a.layers * (4 * a.hidden * a.hidden + 3 * a.hidden * (a.hidden * 11 // 4))
    print(f"model ~{params / 1e6:.1f}M params, checkpoint ~{params * 12 / 1e6:.0f} MB (fp32 weights + Adam)")
    print(f"{a.steps} steps, {n_ckpt} intermediate checkpoints every {a.every} steps")
    with tempfile.TemporaryDirectory() as tmp:
        base = run([*model, "train.checkpoint_interval=0", f"hydra.run.dir={tmp}/a"], env)
        local = run([*model, f"train.checkpoint_interval={a.every}", f"hydra.run.dir={tmp}/b"], env)
        s3 = run(
            [*model, f"train.checkpoint_interval={a.every}", "storage=s3", "storage.output_uri=s3://bench/run",
             f"hydra.run.dir={tmp}/c"],
            env,
        )  # fmt: skip
    server.stop()
    print(f"{'variant':<40}{'train s':>10}{'lost per checkpoint s':>24}")
    print(f"{'no intermediate checkpoints (baseline)':<40}{base:>10.2f}{'-':>24}")
    print(f"{'local disk':<40}{local:>10.2f}{(local - base) / max(n_ckpt, 1):>24.2f}")
    print(f"{'s3 (moto), upload overlapped':<40}{s3:>10.2f}{(s3 - base) / max(n_ckpt, 1):>24.2f}")
    print(
        "(the s3 row also includes uploading the final checkpoint and model, which the baseline writes locally)"
    )


def manifest_cost(gb: float, shards: int = 4) -> None:
    import time

    sys.path.insert(0, str(ROOT))
    from framework import checkpoint

    size = int(gb * (1 << 30) / shards)
    block = os.urandom(64 << 20)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        tag = Path(tmp) / "step_1"
        tag.mkdir()
        t0 = time.perf_counter()
        for i in range(shards):
            with (tag / f"shard_{i}.pt").open("wb") as f:
                for off in range(0, size, len(block)):
                    f.write(block[: min(len(block), size - off)])
                f.flush()
                os.fsync(f.fileno())
        write_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        {str(p.relative_to(tag)): p.stat().st_size for p in sorted(tag.rglob("*")) if p.is_file()}
        sizes_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        doc = {"step": 1, "files": checkpoint.describe_files(tag)}
        describe_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for f in sorted(tag.glob("shard_*")):
            __import__("hashlib").file_digest(f.open("rb"), "sha256")
        sha_s = time.perf_counter() - t0
        (tag / checkpoint.MANIFEST).write_text(__import__("json").dumps(doc))
        t0 = time.perf_counter()
        assert checkpoint.damage(Path(tmp), "step_1") == []
        verify_s = time.perf_counter() - t0
    print(f"{gb:.1f} GB in {shards} shards (page cache warm, as right after a save)")
    print(f"{'step':<44}{'s':>8}{'GB/s':>8}")
    for name, s in (
        ("write + fsync the shards (baseline)", write_s),
        ("manifest, sizes only (before)", sizes_s),
        ("manifest with xxh3_128 checksums (save)", describe_s),
        ("verify sizes + checksums (resume)", verify_s),
        ("the same files through sha256 (for scale)", sha_s),
    ):
        print(f"{name:<44}{s:>8.2f}{gb / max(s, 1e-9):>8.2f}")
    print(f"checksums add {100 * describe_s / write_s:.0f}% to writing the shards")


if __name__ == "__main__":
    main()
