"""Checkpoint-like save/load throughput of framework.storage against plain s3fs, in the same run.

Saves a directory of N random files (default 4 x 50 MB) with ``storage.upload_dir`` and loads it back with
``storage.download_dir``; the baseline moves the same bytes with one plain ``s3fs`` ``put``/``get`` call (default
s3fs settings, its own concurrency). Runs alternate between the two so drift hits both; the median of the runs
is reported, with the ratio ours / baseline (target >= 0.9x).

By default the S3 endpoint is a moto server started here in its own process on 127.0.0.1. Pass ``--endpoint``
(and the usual AWS variables) to measure against MinIO or S3 instead::

    .venv/bin/python benchmarks/bench_storage.py                      # 4 x 50 MB against local moto
    .venv/bin/python benchmarks/bench_storage.py --files 8 --file-mb 25 --repeats 5
    AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... \\
        .venv/bin/python benchmarks/bench_storage.py --endpoint http://minio:9000 --bucket scratch
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from framework import storage  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def moto_server() -> Iterator[str]:
    """A moto S3 server in a child process (its own GIL), yielding its endpoint URL."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def make_files(root: Path, files: int, file_mb: float) -> dict[str, int]:
    root.mkdir(parents=True)
    size = int(file_mb * 1_000_000)
    out: dict[str, int] = {}
    for i in range(files):
        rel = f"mp_rank_00_model_states_{i:02d}.pt" if i % 2 == 0 else f"shard_{i:02d}/optim_states.pt"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            left = size
            while left:
                chunk = min(left, 8 << 20)
                f.write(os.urandom(chunk))
                left -= chunk
        out[rel] = size
    return out


def timed(fn: Callable[[], object], before: Callable[[], object] | None = None) -> float:
    if before is not None:  # untimed set-up
        before()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=4, help="files in the checkpoint directory (default 4)")
    p.add_argument("--file-mb", type=float, default=50.0, help="size of each file in MB (default 50)")
    p.add_argument("--repeats", type=int, default=5, help="save+load rounds per method (default 5)")
    p.add_argument("--workers", type=int, default=8, help="upload_dir/download_dir max_workers (default 8)")
    p.add_argument("--endpoint", default=None, help="S3 endpoint URL; default: start a local moto server")
    p.add_argument("--bucket", default=None, help="existing bucket to use; default: create a scratch bucket")
    p.add_argument("--tmp", default=None, help="local scratch directory (default: $TMPDIR)")
    p.add_argument("--min-ratio", type=float, default=0.0, help="exit 1 if a ratio is below this (e.g. 0.9)")
    args = p.parse_args(argv)

    server = contextlib.nullcontext(args.endpoint) if args.endpoint else moto_server()
    with server as endpoint:
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        if not args.endpoint:  # moto accepts anything
            os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
            os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
            os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        return run(args, endpoint)


def run(args: argparse.Namespace, endpoint: str) -> int:
    import s3fs

    baseline = s3fs.S3FileSystem(
        endpoint_url=endpoint,
        key=os.environ.get("AWS_ACCESS_KEY_ID"),
        secret=os.environ.get("AWS_SECRET_ACCESS_KEY"),
        client_kwargs={"region_name": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")},
        skip_instance_cache=True,
    )
    bucket = args.bucket or f"bench-{uuid.uuid4().hex[:10]}"
    if not args.bucket:
        baseline.call_s3("create_bucket", Bucket=bucket)
    scratch = Path(tempfile.mkdtemp(prefix="bench-storage-", dir=args.tmp))
    base_prefix = f"{bucket}/bench-{uuid.uuid4().hex[:6]}"
    try:
        src = scratch / "ckpt"
        expected = make_files(src, args.files, args.file_mb)
        total = sum(expected.values())
        rels = sorted(expected)
        ours_uri = f"s3://{base_prefix}/ours/step_1"
        base_remote = [f"{base_prefix}/baseline/step_1/{rel}" for rel in rels]

        def save_baseline() -> None:
            baseline.put([str(src / rel) for rel in rels], base_remote)

        def load_baseline() -> None:
            dest = scratch / "load_baseline"
            targets = [str(dest / rel) for rel in rels]
            for t in targets:
                Path(t).parent.mkdir(parents=True, exist_ok=True)
            baseline.get(base_remote, targets)

        def save_ours() -> None:
            assert storage.upload_dir(src, ours_uri, max_workers=args.workers) == expected

        def load_ours() -> None:
            dest = scratch / "load_ours"
            assert storage.download_dir(ours_uri, dest, max_workers=args.workers) == expected

        times: dict[str, list[float]] = {
            k: [] for k in ("save_baseline", "save_ours", "load_baseline", "load_ours")
        }
        # Warm-up (connections, bucket, code paths), not measured.
        save_baseline()
        save_ours()
        for r in range(args.repeats):
            pairs = [("baseline", save_baseline, load_baseline), ("ours", save_ours, load_ours)]
            if r % 2:
                pairs.reverse()
            for name, save, _ in pairs:
                times[f"save_{name}"].append(timed(save))
            for name, _, load in pairs:
                clear = functools.partial(shutil.rmtree, scratch / f"load_{name}", ignore_errors=True)
                times[f"load_{name}"].append(timed(load, before=clear))
        for rel in rels:  # both loads produced every byte
            assert (scratch / "load_ours" / rel).stat().st_size == expected[rel]
            assert (scratch / "load_baseline" / rel).stat().st_size == expected[rel]
        assert (scratch / "load_ours" / rels[0]).read_bytes() == (src / rels[0]).read_bytes()

        mb = total / 1e6
        print(
            f"storage benchmark: {args.files} files x {args.file_mb:g} MB = {mb:.0f} MB, endpoint {endpoint}, "
            f"{args.repeats} rounds, upload/download workers={args.workers}"
        )
        print(
            "throughput: median [best] over rounds; ratio: median over rounds of (baseline time / our time)"
        )
        print(f"{'':6} {'plain s3fs put/get':>24} {'storage.*_dir':>24} {'ratio':>7}   per-round ratios")
        worst = float("inf")
        for op in ("save", "load"):
            b = times[f"{op}_baseline"]
            o = times[f"{op}_ours"]
            ratios = [tb / to for tb, to in zip(b, o, strict=True)]  # paired: same round, adjacent in time
            ratio = statistics.median(ratios)
            worst = min(worst, ratio)
            print(
                f"{op:6} {mb / statistics.median(b):>12.1f} MB/s [{mb / min(b):>6.1f}] "
                f"{mb / statistics.median(o):>12.1f} MB/s [{mb / min(o):>6.1f}] {ratio:>6.2f}x   "
                + " ".join(f"{r:.2f}" for r in ratios)
            )
        if worst < args.min_ratio:
            print(f"FAIL: ratio {worst:.2f}x < {args.min_ratio:.2f}x")
            return 1
        return 0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        try:
            for path in baseline.find(base_prefix):
                baseline.rm_file(path)
            if not args.bucket:
                baseline.rmdir(bucket)
        except Exception as e:  # cleanup is best effort
            print(f"(cleanup: {e})", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
