"""Sweep summaries: one table row per job, best final eval loss first. No torch import."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from framework.hydra_compat import return_value
from framework.tables import fmt, ranked_table


@dataclass
class JobSummary:
    overrides: str  # the job's sweep overrides, "k=v k=v"
    status: str  # COMPLETED | REJECTED (config or data: exit 2) | FAILED | ...
    eval_loss: float | None = None  # final eval loss
    tokens_per_s: float | None = None  # mean training throughput
    wall_s: float | None = None  # wall time of the job
    run_dir: str | None = None  # where its run directory is

    @classmethod
    def from_return(cls, overrides: Sequence[str], status: str, value: Any) -> JobSummary:
        value = value if isinstance(value, dict) else {}
        return cls(
            overrides=" ".join(overrides) or "(no overrides)",
            status=str(value.get("status") or status),  # the task's own verdict: REJECTED, FAILED, ...
            eval_loss=value.get("eval_loss"),
            tokens_per_s=value.get("tokens_per_s"),
            wall_s=value.get("wall_s"),
            run_dir=value.get("run_dir"),
        )


def format_summary(rows: Sequence[JobSummary]) -> str:
    """A plain-text table, best (lowest final eval loss) first, the best job marked with '*'."""
    return ranked_table(
        "Sweep summary (best first):",
        ("overrides", "status", "eval_loss", "tokens/s", "wall_s", "run_dir"),
        rows,
        lambda r: r.eval_loss,
        lambda r: (
            r.overrides,
            r.status,
            fmt(r.eval_loss, ".4f"),
            fmt(r.tokens_per_s, ".0f"),
            fmt(r.wall_s, ".1f"),
            r.run_dir or "-",
        ),
    )


class SweepSummaryCallback(Callback):
    """Collects every local job's return value and prints the summary when the multirun ends."""

    def __init__(self) -> None:
        self.rows: list[JobSummary] = []

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        value = return_value(job_return)
        overrides = list(job_return.overrides or [])
        self.rows.append(JobSummary.from_return(overrides, job_return.status.name, value))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.rows:
            print(format_summary(varying_only(self.rows)), flush=True)


def varying_only(rows: Sequence[JobSummary]) -> list[JobSummary]:
    """Drop the overrides every job shares, so each row shows what distinguishes it."""
    split = [r.overrides.split(" ") for r in rows]
    common = set.intersection(*(set(s) for s in split)) if len(rows) > 1 else set()
    return [
        dataclasses.replace(r, overrides=" ".join(o for o in s if o not in common) or r.overrides)
        for r, s in zip(rows, split, strict=True)
    ]
