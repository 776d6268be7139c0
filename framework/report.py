"""Loss curves and a final-metrics table for one run or a whole sweep.

    python -m framework.report <run dir | sweep dir | s3://bucket/...> [--out report.png]

A run dir holds its metrics file (framework.rundir). A sweep dir is a Hydra multirun dir whose numbered job
dirs each hold a run dir (directly, or one level deeper). Each job is labelled by its overrides
(``<job>/.hydra/overrides.yaml``, minus those every job shares), else by the keys where its ``config.yaml``
differs from the other jobs'. Files are read through framework.storage, so s3:// works (with the standard AWS
variables, and storage's retries). Writes a PNG (train loss and eval loss vs step, one line per job) and prints the
jobs best first (lowest final eval loss).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from framework import storage
from framework.errors import EXIT_OK, EXIT_RUNTIME, EXIT_USAGE
from framework.rundir import CONFIG, METRICS, MetricsRows, read_metrics
from framework.tables import fmt, ranked_table

# Keys that differ between jobs without being a choice of the sweep.
_RUN_SPECIFIC = re.compile(r"^(hydra\.|storage\.output_uri$)")


class ReportError(Exception):
    """A problem with the path given; the message is one line naming the path and the fix."""


@dataclass
class JobMetrics:
    name: str  # job dir name (e.g. "0"), or the run dir's name
    run_dir: str  # URI of the run dir
    label: str = ""  # what tells this job apart: "k=v k=v"
    train: list[tuple[int, float]] = field(default_factory=list)  # (step, loss), by step
    eval: list[tuple[int, float]] = field(default_factory=list)  # (step, eval_loss), by step
    final_perplexity: float | None = None
    mean_tokens_per_s: float | None = None
    bad_lines: int = 0  # lines that were not JSON objects with a step (e.g. a torn last line)

    @property
    def final_eval_loss(self) -> float | None:
        return self.eval[-1][1] if self.eval else None

    @property
    def final_loss(self) -> float | None:
        return self.train[-1][1] if self.train else None

    @property
    def last_step(self) -> int | None:
        steps = [s for s, _ in self.train[-1:] + self.eval[-1:]]
        return max(steps) if steps else None


# ------------------------------------------------------------------------------------------------ reading


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def parse_metrics(rows: MetricsRows, job: JobMetrics) -> JobMetrics:
    """Fill ``job`` from a run's metrics rows. A step logged twice (a resumed run) keeps its last value."""
    train: dict[int, float] = {}
    evals: dict[int, tuple[float, float | None]] = {}
    tokens: list[float] = []
    job.bad_lines = len(rows.dropped)
    for line in rows:
        step = line["step"]
        eval_loss = _num(line.get("eval_loss"))
        loss = _num(line.get("loss"))
        if eval_loss is not None:
            evals[step] = (eval_loss, _num(line.get("perplexity")))
        elif loss is not None:
            train[step] = loss
            tps = _num(line.get("tokens_per_s"))
            if tps is not None:
                tokens.append(tps)
    job.train = sorted(train.items())
    job.eval = [(s, v[0]) for s, v in sorted(evals.items())]
    if evals:
        last_loss, last_ppl = evals[max(evals)]
        job.final_perplexity = last_ppl if last_ppl is not None else _safe_exp(last_loss)
    job.mean_tokens_per_s = sum(tokens) / len(tokens) if tokens else None
    return job


def _safe_exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def _natural_key(name: str) -> tuple[int, int | str]:
    return (0, int(name)) if name.isdigit() else (1, name)


def _read_yaml(uri: str) -> Any:
    try:
        return yaml.safe_load(storage.read_text(uri))
    except FileNotFoundError:
        return None


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(obj, dict):
        return {prefix.rstrip("."): obj} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in obj.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _fmt_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def _label_jobs(jobs: list[JobMetrics], job_dirs: list[str]) -> None:
    """Label by Hydra overrides (minus the shared ones), else by config.yaml differences."""
    overrides = []
    for job, job_dir in zip(jobs, job_dirs, strict=True):
        found = None
        for base in dict.fromkeys([job_dir, job.run_dir]):
            found = _read_yaml(storage.join(base, ".hydra", "overrides.yaml"))
            if isinstance(found, list):
                break
        overrides.append([str(o) for o in found] if isinstance(found, list) else None)
    if all(o is not None for o in overrides):
        lists = [o for o in overrides if o is not None]
        if len(lists) == 1:
            jobs[0].label = " ".join(lists[0]) or "(no overrides)"
            return
        # Only the keys whose value differs between jobs (an override one job lacks counts as different).
        parsed = [dict(_split_override(o) for o in ovr) for ovr in lists]
        keys = list(dict.fromkeys(k for p in parsed for k in p))
        differing = [k for k in keys if len({p.get(k, "<unset>") for p in parsed}) > 1]
        if differing:
            for job, p in zip(jobs, parsed, strict=True):
                job.label = " ".join(f"{k}={p.get(k, '<unset>')}" for k in differing)
            return
    configs = [_flatten(_read_yaml(storage.join(job.run_dir, CONFIG)) or {}) for job in jobs]
    keys = sorted({k for c in configs for k in c})
    differing = [
        k
        for k in keys
        if not _RUN_SPECIFIC.match(k) and len({_fmt_value(c.get(k, "<unset>")) for c in configs}) > 1
    ]
    for job, cfg in zip(jobs, configs, strict=True):
        if differing:
            job.label = " ".join(f"{k}={_fmt_value(cfg.get(k, '<unset>'))}" for k in differing)
        else:
            job.label = job.name


def _split_override(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def load_jobs(uri: str) -> list[JobMetrics]:
    """The run at ``uri``, or every job of the sweep at ``uri`` (in job order), parsed and labelled."""
    root = uri.rstrip("/") or "/"
    if not storage.is_remote(root):
        root = root.removeprefix("file://")
    if storage.isfile(storage.join(root, METRICS)):
        found = [(root, storage.join(root, METRICS))]
    else:
        found = []
        # Paths come back in the store's own spelling (memory:///b vs memory://b): rebuild each from `root`.
        paths = sorted(
            {
                storage.join(root, *p.rstrip("/").split("/")[-depth - 1 :])
                for depth in (1, 2)
                for p in storage.glob(storage.join(root, *["*"] * depth, METRICS))
            }
        )
        by_first: dict[str, list[str]] = {}
        for path in paths:
            by_first.setdefault(path[len(root) :].lstrip("/").split("/")[0], []).append(path)
        for first, found_here in by_first.items():
            direct = storage.join(root, first, METRICS)
            if direct in found_here or len(found_here) == 1:
                # <job>/<metrics> wins over <job>/<run>/<metrics>; one nested run dir is that job's
                found.append((storage.join(root, first), direct if direct in found_here else found_here[0]))
            else:  # one level above a sweep: every job of every sweep below, named <sweep>/<job>
                found += [(p[: -len(METRICS) - 1], p) for p in found_here]
        found.sort(key=lambda item: [_natural_key(part) for part in item[0][len(root) :].split("/") if part])
    if not found:
        what = "does not exist" if not storage.exists(root) else f"has no {METRICS}, nor do its job dirs"
        raise ReportError(
            f"{uri} {what}; pass a run directory (holding {METRICS}) or a Hydra multirun directory "
            f"(numbered job dirs, each holding a run directory)"
        )
    jobs = []
    for job_dir, path in found:
        run_dir = path[: -len(METRICS) - 1]
        name = job_dir[len(root) :].strip("/") or job_dir.rsplit("/", 1)[-1] or job_dir
        jobs.append(parse_metrics(read_metrics(path), JobMetrics(name=name, run_dir=run_dir)))
    _label_jobs(jobs, [j for j, _ in found])
    return jobs


# ------------------------------------------------------------------------------------------------ output


def format_table(jobs: Sequence[JobMetrics]) -> str:
    """A plain-text table of final metrics, best first, the best job marked with '*'."""
    return ranked_table(
        "Final metrics (best eval_loss first):",
        ("job", "overrides", "eval_loss", "perplexity", "train_loss", "tokens/s", "steps"),
        jobs,
        lambda j: j.final_eval_loss,
        lambda j: (
            j.name,
            j.label,
            fmt(j.final_eval_loss, ".4f"),
            fmt(j.final_perplexity, ".3f"),
            fmt(j.final_loss, ".4f"),
            fmt(j.mean_tokens_per_s, ".0f"),
            "-" if j.last_step is None else str(j.last_step),
        ),
    )


def plot(jobs: Sequence[JobMetrics], out: str, title: str) -> None:
    """Two panels, train loss and eval loss vs step, one labelled line per job; written to ``out`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax_train, ax_eval) = plt.subplots(1, 2, figsize=(13, 5.2), constrained_layout=True)
    cmap = plt.get_cmap("tab10" if len(jobs) <= 10 else "tab20")
    distinct = len({j.label for j in jobs}) == len(jobs)  # then the legend is what differs, nothing more
    for i, job in enumerate(jobs):
        color = cmap(i % cmap.N)
        label = _shorten(job.label if len(jobs) == 1 or distinct else f"{job.name}: {job.label}", 64)
        if job.train:
            steps, values = zip(*job.train, strict=True)
            ax_train.plot(steps, values, color=color, linewidth=1.4, label=label)
        if job.eval:
            steps, values = zip(*job.eval, strict=True)
            ax_eval.plot(steps, values, color=color, linewidth=1.4, marker="o", markersize=4, label=label)
    for ax, name, points in (
        (ax_train, "train loss", [p for j in jobs for p in j.train]),
        (ax_eval, "eval loss", [p for j in jobs for p in j.eval]),
    ):
        has = bool(points)
        steps_seen = {s for s, _ in points}
        if len(steps_seen) == 1:  # one point: give the axis integer room either side
            only = steps_seen.pop()
            ax.set_xlim(only - 1, only + 1)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
        if has:
            ax.legend(fontsize=8 if len(jobs) <= 8 else 6, loc="upper right")
        else:
            ax.text(0.5, 0.5, f"no {name} lines", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(_shorten(title, 120), fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    storage.write_bytes_atomic(out, buf.getvalue())


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def default_out(uri: str) -> str:
    """report.png inside a local run/sweep dir; in the working dir for remote ones (never writes to a bucket)."""
    if storage.is_remote(uri):
        return "report.png"
    return storage.join(uri.removeprefix("file://"), "report.png")


def eval_summaries(jobs: Sequence[JobMetrics]) -> list[str]:
    """Task metrics of jobs that ran the evaluate recipe (``<run>/eval/metrics.json``), one block per job."""
    from framework.evaluation import summary

    out = []
    for job in jobs:
        path = storage.join(job.run_dir, "eval", "metrics.json")
        if not storage.isfile(path):
            continue
        m = json.loads(storage.read_text(path))
        lines = [f"Evaluation of {m.get('model', '?')} on {m.get('dataset', '?')} ({job.name}): {summary(m)}"]
        for label, v in m.get("per_label", {}).items():
            lines.append(
                f"  {label:<20} precision {v['precision']:.3f}  recall {v['recall']:.3f}  f1 {v['f1']:.3f}  "
                f"support {v['support']}"
            )
        out.append("\n".join(lines))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m framework.report",
        description="Plot train/eval loss of a run or a sweep and print each job's final metrics, best first.",
    )
    parser.add_argument("path", help=f"run dir (holds {METRICS}), Hydra multirun dir, or a URI (s3://...)")
    parser.add_argument("--out", help="PNG to write (local path or URI); default: <path>/report.png")
    args = parser.parse_args(argv)
    try:
        jobs = load_jobs(args.path)
        out = args.out or default_out(args.path)
        plot(jobs, out, args.path)
    except ReportError as exc:
        print(f"report: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # storage/credential problems: one line, runtime failure
        print(f"report: error: cannot read {args.path}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    for job in jobs:
        if job.bad_lines:
            print(
                f"report: warning: skipped {job.bad_lines} malformed line(s) in {job.run_dir}/{METRICS}",
                file=sys.stderr,
            )
    print(format_table(jobs))
    for text in eval_summaries(jobs):
        print(text)
    print(f"Plot: {out}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
