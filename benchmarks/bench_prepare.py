"""Speed of preparing chat data (``framework.data.prepared``) against plain ``datasets.map`` scripts, in one run.

Generates N multi-turn chat conversations (JSONL, seeded; 1-3 user/assistant exchanges, a system prompt in half
of them) and a fast tokenizer with a Llama-3-style header template, then times, alternating arms per round:

- **ours**: ``prepare()``: read (datasets/pyarrow), render with the template, derive and verify the assistant
  spans, tokenize in batches of 1000 with offsets, label, split, pack, build the Arrow table;
- **map+apply_chat_template**: ``load_dataset("json")`` then ``.map(apply_chat_template(tokenize=True))`` per
  example: the plain script, without any loss mask (less work than ours: a lower bound for the plain way);
- **map+masks**: the same, plus what a plain script does to mask every assistant turn without
  ``{% generation %}`` tags: one ``apply_chat_template(messages[:i], add_generation_prompt=True)`` per turn.

Prints the median seconds per arm, examples/s, the ratios, and where our time goes (read, render + spans,
tokenize + label, split + pack + Arrow), measured stage by stage on the same data.

``--first-step`` instead measures time to the first training step of the demo (``python -m framework
train.max_steps=1``, process start to its first metrics line), alternating per round: today's demo at
``--baseline-rev`` (extracted with ``git archive``; cold and warm tokenized cache), and this tree with the data
tokenized in-process (cold) and read from the prepared copy (after ``framework.prepare``)::

    .venv/bin/python benchmarks/bench_prepare.py                 # 100k conversations, 1 round
    .venv/bin/python benchmarks/bench_prepare.py -n 20000 --repeats 3
    .venv/bin/python benchmarks/bench_prepare.py --first-step --repeats 3 --baseline-rev 2c154f2
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
SPECIAL = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def make_tokenizer() -> Any:
    from transformers import AutoTokenizer

    from framework.data.read import local_path

    tok = AutoTokenizer.from_pretrained(str(local_path("pkg://framework.data/sample/tokenizer")))
    tok.add_special_tokens({"additional_special_tokens": SPECIAL})
    tok.bos_token, tok.eos_token, tok.chat_template = "<|begin_of_text|>", "<|eot_id|>", TEMPLATE
    return tok


def make_data(path: Path, n: int, seed: int = 0) -> None:
    from framework.data.build_sample import WORDS

    rng = random.Random(seed)

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

    with path.open("w") as f:
        for _ in range(n):
            msgs = [{"role": "system", "content": text(5, 15)}] if rng.random() < 0.5 else []
            for _ in range(rng.randint(1, 3)):
                msgs.append({"role": "user", "content": text(5, 40)})
                msgs.append({"role": "assistant", "content": text(10, 80)})
            f.write(json.dumps({"messages": msgs}) + "\n")


def ours(path: str, tok: Any, cache: Path) -> int:
    from omegaconf import OmegaConf

    from framework.config import DatasetConfig
    from framework.data.prepared import prepare

    ds = OmegaConf.structured(DatasetConfig(name="bench", path=path, format="chat", max_seq_len=2048))
    return int(prepare(ds, tok, seed=0).train.num_rows)


def plain(path: str, tok: Any, cache: Path, masks: bool) -> int:
    import datasets

    raw = datasets.load_dataset("json", data_files=[path], split="train", cache_dir=str(cache))

    def one(ex: dict[str, Any]) -> dict[str, Any]:
        ids = tok.apply_chat_template(ex["messages"], tokenize=True, return_dict=True)["input_ids"]
        out = {"input_ids": ids}
        if masks:
            labels = [-100] * len(ids)
            msgs = ex["messages"]
            for i, m in enumerate(msgs):
                if m["role"] != "assistant":
                    continue
                start = len(
                    tok.apply_chat_template(
                        msgs[:i], add_generation_prompt=True, tokenize=True, return_dict=True
                    )["input_ids"]
                )
                end = len(
                    tok.apply_chat_template(msgs[: i + 1], tokenize=True, return_dict=True)["input_ids"]
                )
                labels[start:end] = ids[start:end]
            out["labels"] = labels
        return out

    done = raw.map(one, remove_columns=["messages"], load_from_cache_file=False, desc=None)
    return len(done)


def stages(path: str, tok: Any) -> dict[str, float]:
    """Our pipeline stage by stage (the same calls prepare() makes, timed separately)."""
    from omegaconf import OmegaConf

    from framework.config import DatasetConfig
    from framework.data.chat import Renderer
    from framework.data.prepared import split, to_arrow
    from framework.data.read import read
    from framework.data.rows import detect, examples, sources_of
    from framework.data.tokenize import tokenize_chats

    ds = OmegaConf.structured(DatasetConfig(name="bench", path=path, format="chat", max_seq_len=2048))
    src = sources_of(ds)[0]
    out: dict[str, float] = {}
    t = time.perf_counter()
    table = read(path)
    rows = examples(table, src, detect(table, src), 10**9)
    out["read (datasets) + rows"] = time.perf_counter() - t
    renderer = Renderer(tok, None)
    t = time.perf_counter()
    for i, r in enumerate(rows):
        renderer.spans(r, "assistant", lambda i=i: str(i))
    out["render + spans (Jinja)"] = time.perf_counter() - t
    t = time.perf_counter()
    toks, _ = tokenize_chats(rows, tok, renderer, "assistant", 2048, "truncate", table.where)  # type: ignore[arg-type]
    out["tokenize + label (minus render)"] = time.perf_counter() - t - out["render + spans (Jinja)"]
    t = time.perf_counter()
    train, _ = split(toks, 0.05, 0)
    to_arrow(train, 2048, True, 0)
    out["split + pack + Arrow"] = time.perf_counter() - t
    return out


def first_step(cmd: list[str], cwd: Path, run_dir: Path, cache: Path, timeout: float = 600) -> float:
    """Seconds from process start until the first train line lands in ``run_dir/metrics.jsonl``."""
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(cwd), "FRAMEWORK_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    metrics = run_dir / "metrics.jsonl"
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    first = None
    while proc.poll() is None and time.perf_counter() - t0 < timeout:
        if first is None and metrics.is_file() and '"loss"' in metrics.read_text():
            first = time.perf_counter() - t0
        time.sleep(0.01)
    _, err = proc.communicate()
    if first is None and metrics.is_file() and '"loss"' in metrics.read_text():
        first = time.perf_counter() - t0
    if proc.returncode != 0 or first is None:
        raise RuntimeError(f"{cmd} failed ({proc.returncode}): {err[-2000:]}")
    return first


def bench_first_step(repeats: int, rev: str) -> None:
    import subprocess

    with tempfile.TemporaryDirectory(prefix="bench-first-step-") as d:
        tmp = Path(d)
        base = tmp / "baseline"
        base.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
        args = ["-m", "framework", "train.max_steps=1", "train.progress=false"]
        times: dict[str, list[float]] = {
            k: [] for k in ("today cold", "today warm", "ours cold", "ours prepared")
        }
        for r in range(repeats):
            for arm in times:
                tree = base if arm.startswith("today") else ROOT
                cache = tmp / f"cache-{arm.split()[0]}-{r}"
                if arm == "ours prepared":
                    env = {**os.environ, "FRAMEWORK_CACHE": str(cache)}
                    subprocess.run([sys.executable, "-m", "framework.prepare"], cwd=ROOT, env=env, check=True,
                                   capture_output=True)  # fmt: skip
                run_dir = tmp / f"run-{arm.replace(' ', '-')}-{r}"
                extra = ["dataset.require_prepared=true"] if arm == "ours prepared" else []
                cmd = [sys.executable, *args, f"hydra.run.dir={run_dir}", *extra]
                times[arm].append(first_step(cmd, tree, run_dir, cache))
                print(f"round {r + 1}: {arm}: first step at {times[arm][-1]:.2f}s", flush=True)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"\ntime to first step of the demo (train.max_steps=1), median of {repeats}; today = {rev}:")
        for k, v in med.items():
            print(
                f"  {k:14s} {v:6.2f}s  ({v / med['today cold']:.2f}x today cold, {v / med['today warm']:.2f}x today warm)"
            )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=100_000, help="conversations (default 100000)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--first-step", action="store_true", help="time to the demo's first step instead")
    ap.add_argument(
        "--baseline-rev", default="2c154f2", help="today's demo for --first-step (a git revision)"
    )
    args = ap.parse_args(argv)
    if args.first_step:
        bench_first_step(args.repeats, args.baseline_rev)
        return
    import datasets

    datasets.disable_progress_bars()
    datasets.disable_caching()
    tok = make_tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "chats.jsonl"
        make_data(data, args.n)
        # First calls pay one-time imports and compiles: in no arm's time.
        warm = Path(tmp) / "warm.jsonl"
        make_data(warm, 50, seed=1)
        ours(str(warm), tok, Path(tmp))
        plain(str(warm), tok, Path(tmp) / "hf-warm", masks=True)
        times: dict[str, list[float]] = {"ours": [], "map+apply_chat_template": [], "map+masks": []}
        for r in range(args.repeats):
            for arm in times:
                cache = Path(tmp) / f"hf-{arm}-{r}"
                t = time.perf_counter()
                if arm == "ours":  # a fresh cache too: datasets' Arrow copy of the JSON is not reused
                    os.environ["FRAMEWORK_CACHE"] = str(cache)
                    ours(str(data), tok, cache)
                else:
                    plain(str(data), tok, cache, masks=arm == "map+masks")
                times[arm].append(time.perf_counter() - t)
                print(f"round {r + 1}: {arm}: {times[arm][-1]:.2f}s", flush=True)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"\n{args.n} conversations, median of {args.repeats}:")
        for k, v in med.items():
            print(
                f"  {k:26s} {v:7.2f}s  {args.n / v:9.0f} conversations/s  ours is {v / med['ours']:.2f}x faster"
            )
        print("where our time goes (one pass, stage by stage):")
        for k, v in stages(str(data), tok).items():
            print(f"  {k:34s} {v:7.2f}s")


if __name__ == "__main__":
    main()
