"""Start-up speed of ``python -m framework`` on this machine, against a plain transformers+peft script.

Measures, in fresh subprocesses, in one run:

1. **demo wall time**: ``python -m framework`` with the embedded default config (LoRA on the tiny Llama, the
   sample data, 200 steps, evals, checkpoints, adapter export), end to end. Target: under 3 minutes.
2. **time to first training step**, from process start (just before ``Popen``) until the first optimizer step is
   done: for the framework, when its first train line lands in ``metrics.jsonl`` (written right after step 1);
   for the baseline, when the plain script (written below, same tiny model, same data, same template and
   tokenization, same packing, micro batch, LoRA settings and optimizer) writes the same line after its first
   ``optimizer.step()``. Both train one step (``train.max_steps=1``) on a cold tokenized-data cache. Runs
   alternate framework/plain for ``--repeats`` rounds so load drift from other jobs hits both; medians and
   the ratio are reported. Target ratio: at most 1.2x.

Also prints where the framework's first step goes (its log timestamps: imports and Hydra, process group and
DeepSpeed, data, model, engine and first step), from the last framework run.

    .venv/bin/python benchmarks/bench_startup.py                  # both measurements, 5 rounds
    .venv/bin/python benchmarks/bench_startup.py --skip-demo --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PLAIN_SCRIPT = r'''
"""A plain transformers + peft LoRA script: the framework's default job up to its first optimizer step."""
import json, math, random, sys

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

P = json.loads(sys.argv[1])
metrics = sys.argv[2]
random.seed(P["seed"])
torch.manual_seed(P["seed"])

tok = AutoTokenizer.from_pretrained(P["tokenizer"])
if tok.pad_token_id is None:
    tok.pad_token = tok.eos_token
rows = [json.loads(line) for line in open(P["data"], encoding="utf-8") if line.strip()]
prompts = [
    (P["input_template"].format(prompt=r["instruction"], input=r["input"]) if r.get("input", "").strip()
     else P["template"].format(prompt=r["instruction"], input=""))
    for r in rows
]
p_ids = tok(prompts, add_special_tokens=False)["input_ids"]
r_ids = tok([r["response"] for r in rows], add_special_tokens=False)["input_ids"]
examples = []
for p, r in zip(p_ids, r_ids):
    ids, labels = p + r + [tok.eos_token_id], [-100] * len(p) + r + [tok.eos_token_id]
    examples.append((ids[: P["seq"]], labels[: P["seq"]]))
random.Random(P["seed"]).shuffle(examples)
n_val = math.ceil(len(examples) * P["val_fraction"])
train = examples[n_val:]

# greedy packing into rows of seq tokens; position ids restart per document (no cross-document attention)
packed, cur = [], ([], [], [])
for ids, labels in train:
    if len(cur[0]) + len(ids) > P["seq"]:
        packed.append(cur)
        cur = ([], [], [])
    cur[0].extend(ids)
    cur[1].extend([-100] + labels[1:])
    cur[2].extend(range(len(ids)))
packed.append(cur)
def collate(batch):
    out = {"input_ids": [], "labels": [], "position_ids": []}
    for ids, labels, pos in batch:
        pad = P["seq"] - len(ids)
        out["input_ids"].append(ids + [tok.pad_token_id] * pad)
        out["labels"].append(labels + [-100] * pad)
        out["position_ids"].append(pos + list(range(pos[-1] + 1, pos[-1] + 1 + pad)))
    return {k: torch.tensor(v) for k, v in out.items()}

m = P["model"]
config = LlamaConfig(
    vocab_size=m["vocab_size"], hidden_size=m["hidden_size"], intermediate_size=m["intermediate_size"],
    num_hidden_layers=m["num_hidden_layers"], num_attention_heads=m["num_attention_heads"],
    num_key_value_heads=m["num_key_value_heads"], max_position_embeddings=m["max_position_embeddings"],
    rope_theta=m["rope_theta"], rms_norm_eps=m["rms_norm_eps"], tie_word_embeddings=m["tie_word_embeddings"],
)
config._attn_implementation = m["attn_implementation"]
model = LlamaForCausalLM(config)
model.config.use_cache = False
lora = P["lora"]
model = get_peft_model(model, LoraConfig(
    task_type="CAUSAL_LM", r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
    target_modules=lora["target_modules"],
    modules_to_save=["embed_tokens", "lm_head"] if m["train_embeddings"] else None,
))
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=P["lr"], betas=tuple(P["betas"]), eps=P["eps"], weight_decay=P["wd"])
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / P["warmup"] if s < P["warmup"] else 1.0)

model.train()
batch = collate(packed[: P["micro"]])
loss = model(**batch).loss
loss.backward()
torch.nn.utils.clip_grad_norm_(params, P["clip"])
opt.step()
sched.step()
opt.zero_grad(set_to_none=True)
with open(metrics, "a") as f:
    f.write(json.dumps({"step": 1, "loss": float(loss)}) + "\n")
'''


def plain_params() -> dict[str, Any]:
    """The default config's settings, so the plain script does the framework's work."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from framework.config import conf_dir, package_path, register

    register()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("config")
    c: Any = OmegaConf.to_container(cfg, resolve=True)
    return {
        "seed": c["train"]["seed"],
        "tokenizer": package_path(c["dataset"]["tokenizer"]),
        "data": package_path(c["dataset"]["path"]),
        "template": c["dataset"]["template"],
        "input_template": c["dataset"]["input_template"],
        "val_fraction": c["dataset"]["val_fraction"],
        "seq": c["dataset"]["max_seq_len"],
        "micro": c["train"]["micro_batch_size"],
        "model": c["model"],
        "lora": c["lora"],
        "lr": c["optim"]["lr"],
        "betas": c["optim"]["betas"],
        "eps": c["optim"]["eps"],
        "wd": c["optim"]["weight_decay"],
        "warmup": c["scheduler"]["warmup_steps"],
        "clip": c["train"]["grad_clip"],
    }


@dataclass
class Run:
    first_step_s: float | None  # process start -> first train line in metrics.jsonl
    exit_s: float
    returncode: int
    output: str
    start_wall: float  # time.time() at process start, to place the run's log timestamps


def _env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["FRAMEWORK_CACHE"] = str(cache)  # cold tokenized-data cache: the plain script tokenizes too
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def timed(cmd: list[str], metrics: Path, env: dict[str, str], timeout: float) -> Run:
    """Start ``cmd``; poll ``metrics`` for the first line with a loss; wait for exit."""
    log = metrics.parent / "output.log"
    start_wall = time.time()
    t0 = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        first = None
        while proc.poll() is None and time.perf_counter() - t0 < timeout:
            if first is None and metrics.is_file() and '"loss"' in metrics.read_text():
                first = time.perf_counter() - t0
            time.sleep(0.01)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    if first is None and metrics.is_file() and '"loss"' in metrics.read_text():
        first = time.perf_counter() - t0  # finished between two polls
    return Run(first, time.perf_counter() - t0, proc.returncode, log.read_text(), start_wall)


def run_framework(tmp: Path, overrides: list[str], timeout: float = 600) -> Run:
    run_dir = tmp / "run"
    cmd = [sys.executable, "-m", "framework", f"hydra.run.dir={run_dir}", "train.progress=false", *overrides]
    run_dir.mkdir(parents=True, exist_ok=True)
    return timed(cmd, run_dir / "metrics.jsonl", _env(tmp / "cache"), timeout)


def run_plain(tmp: Path, params: dict[str, Any], timeout: float = 600) -> Run:
    script = tmp / "plain_lora.py"
    script.write_text(PLAIN_SCRIPT)
    metrics = tmp / "metrics.jsonl"
    return timed(
        [sys.executable, str(script), json.dumps(params), str(metrics)], metrics, _env(tmp / "cache"), timeout
    )


STAGES = [
    ("Hydra, torch + DeepSpeed imports, process group", r"\] - Run directory:"),
    ("tokenizer, data read + tokenized + packed", r"train\.jsonl: \d+ examples"),
    ("transformers/peft imports, model + LoRA", r"\] - Model "),
]


def stage_times(run: Run) -> list[tuple[str, float]]:
    """Seconds from process start to the end of each start-up stage, from the framework's log timestamps."""
    out = []
    for name, pattern in STAGES:
        for line in run.output.splitlines():
            m = re.match(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})\]", line)
            if m and re.search(pattern, line):
                t = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000
                out.append((name, t - run.start_wall))
                break
    if run.first_step_s is not None:
        out.append(("DeepSpeed engine + first step", run.first_step_s))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="alternating framework/plain rounds")
    p.add_argument("--skip-demo", action="store_true", help="skip the end-to-end demo run")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    report: dict[str, Any] = {"cpus": os.cpu_count()}
    params = plain_params()
    print(
        f"bench_startup: {os.cpu_count()} CPUs, python {sys.version.split()[0]}, {args.repeats} rounds",
        flush=True,
    )

    if not args.skip_demo:
        with tempfile.TemporaryDirectory(prefix="bench-demo-") as d:
            demo = run_framework(Path(d), [])
        ok = demo.returncode == 0
        print(
            f"demo (python -m framework, default config): {demo.exit_s:.1f}s end to end, exit {demo.returncode} "
            f"-> {'PASS' if ok and demo.exit_s < 180 else 'FAIL'} (target < 180s)",
            flush=True,
        )
        if not ok:
            print(demo.output[-3000:])
        report["demo_wall_s"] = demo.exit_s
        report["demo_rc"] = demo.returncode

    fw: list[Run] = []
    plain: list[Run] = []
    for i in range(args.repeats):
        order = ("framework", "plain") if i % 2 == 0 else ("plain", "framework")
        for which in order:
            with tempfile.TemporaryDirectory(prefix=f"bench-{which}-") as d:
                if which == "framework":
                    r = run_framework(Path(d), ["train.max_steps=1", "resume=none"])
                    fw.append(r)
                else:
                    r = run_plain(Path(d), params)
                    plain.append(r)
            if r.returncode != 0 or r.first_step_s is None:
                print(f"{which} run failed (exit {r.returncode}):\n{r.output[-3000:]}")
                return 1
            print(
                f"  round {i + 1} {which:9s}: first step at {r.first_step_s:6.2f}s, exit at {r.exit_s:6.2f}s",
                flush=True,
            )

    f_med = statistics.median(r.first_step_s or 0.0 for r in fw)
    p_med = statistics.median(r.first_step_s or 0.0 for r in plain)
    ratio = f_med / p_med
    paired = statistics.median(
        (a.first_step_s or 0.0) / (b.first_step_s or 1.0) for a, b in zip(fw, plain, strict=True)
    )
    print(
        f"time to first step (median of {args.repeats}): framework {f_med:.2f}s, plain transformers+peft "
        f"{p_med:.2f}s -> ratio {ratio:.2f}x, median of per-round ratios {paired:.2f}x "
        f"({'PASS' if ratio <= 1.2 else 'FAIL'}, target <= 1.2x)"
    )
    fastest = min(fw, key=lambda r: r.first_step_s or 1e9)
    stages = stage_times(fastest)
    if stages:
        print("framework start-up stages (seconds from process start, fastest run):")
        for name, t in stages:
            print(f"  {name:50s} done at {t:5.2f}s")
    report.update(
        {
            "framework_first_step_s": [r.first_step_s for r in fw],
            "plain_first_step_s": [r.first_step_s for r in plain],
            "framework_median_s": f_med,
            "plain_median_s": p_med,
            "ratio": ratio,
            "paired_ratio": paired,
        }
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
