"""The run directory of DESIGN.md, in one module: where it is, its local staging copy and publishing, the
metrics writer and the one metrics reader, and the one result shape of a finished job.

    <run dir>/config.yaml        the fully resolved config
    <run dir>/metrics.jsonl      one JSON object per line, every line with ``step``
    <run dir>/samples.jsonl      eval.samples' generations, one per line with its ``step`` (framework.evaluation)
    <run dir>/checkpoints/       step_<N>/ and ``latest`` (framework.checkpoint)
    <run dir>/adapter/ | model/  what the recipe exported

The run directory is Hydra's job output dir, or ``storage.output_uri`` when set (a local path or any URI
framework.storage knows). A remote one is worked on in a local staging copy and published file by file. No torch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from framework import storage
from framework.evaluation import SAMPLES

log = logging.getLogger(__name__)

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
# The run's step-keyed logs: fetched, trimmed to the checkpoint a run resumes from, and published together.
STEP_LOGS = (METRICS, SAMPLES)


def run_dir_for(cfg: DictConfig) -> str:
    """``storage.output_uri`` when set, else Hydra's job output dir, else ``outputs/<run_name>``."""
    if cfg.storage.output_uri:
        return str(cfg.storage.output_uri)
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return str(HydraConfig.get().runtime.output_dir)
    return str(Path("outputs") / cfg.run_name)


@dataclass
class RunDir:
    """The run directory at ``uri``; ``path`` is where this process reads and writes it.

    A local run directory is its own path. A remote one is worked on in a local staging copy (``path``) and
    published file by file: config and metrics by rank 0, checkpoints by every node (checkpoint.RemoteSync),
    outputs at the end.
    """

    uri: str
    path: Path

    @classmethod
    def at(cls, uri: str | Path) -> RunDir:
        uri = str(uri)
        if not storage.is_remote(uri):
            local = Path(uri.removeprefix("file://"))
            return cls(str(local), local)
        return cls(uri, storage.staging_dir(uri))

    @classmethod
    def for_config(cls, cfg: DictConfig) -> RunDir:
        return cls.at(run_dir_for(cfg))

    @property
    def remote(self) -> bool:
        return self.uri != str(self.path)

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def resume_staging(self) -> Path:
        """Where another run's checkpoint named by ``resume=<URI>`` is downloaded for one start (not
        ``checkpoints``: it is not one of this run's)."""
        return self.path / ".resume"

    @property
    def remote_checkpoints(self) -> str:
        return storage.join(self.uri, CHECKPOINTS)

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    def publish(self, name: str) -> None:
        """Upload one file or directory of the staging copy (no-op for a local run directory)."""
        if not self.remote or not (self.path / name).exists():
            return
        if (self.path / name).is_dir():
            storage.upload_dir(self.path / name, storage.join(self.uri, name))
        else:
            storage.put_file(self.path / name, storage.join(self.uri, name))

    def fetch_metrics(self) -> None:
        """Bring a remote run's metrics (and samples) into the staging copy before resuming."""
        for name in STEP_LOGS:
            remote = storage.join(self.uri, name)
            if self.remote and storage.exists(remote):
                storage.get_file(remote, self.path / name)

    def write_config(self, text: str) -> None:
        """Write (and publish) ``config.yaml``: ``text`` is the resolved config (framework.config.resolved_yaml)."""
        (self.path / CONFIG).write_text(text)
        self.publish(CONFIG)

    def truncate_metrics(self, after_step: int) -> None:
        """Drop the lines of metrics.jsonl and samples.jsonl that a preempted run wrote past its last checkpoint,
        so a resume does not repeat steps."""
        for name in STEP_LOGS:
            path = self.path / name
            if not path.is_file():
                continue
            rows = parse_metrics(path.read_text(encoding="utf-8", errors="replace").splitlines())
            if not rows.torn_only:  # a torn last line is dropped quietly; damage elsewhere is named
                log.warning("%s: dropped unreadable line(s) %s", path, rows.dropped[:10])
            keep = [row for row in rows if row["step"] <= after_step]
            # ensure_ascii=False: as the samples writer wrote them (generations in any script stay readable)
            text = "".join(json.dumps(row, ensure_ascii=name == METRICS) + "\n" for row in keep)
            storage.write_text_atomic(path, text)


# ----------------------------------------------------------------------------------------------- metrics


class MetricsLog:
    """Rank 0 appends one JSON object per line to the metrics file; other ranks write nothing. Every record
    also goes to ``sinks`` (trackers)."""

    def __init__(self, path: Path, enabled: bool, sinks: list[Callable[[dict[str, Any]], None]]) -> None:
        self.enabled = enabled
        self.sinks = sinks
        self._f = path.open("a", buffering=1) if enabled else None

    def write(self, record: dict[str, Any]) -> None:
        if self._f is None:
            return
        self._f.write(json.dumps(record) + "\n")
        for sink in self.sinks:
            sink(record)

    def flush(self) -> None:
        if self._f is not None:
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()


class MetricsRows(list[dict[str, Any]]):
    """The rows of a metrics file, in file order. ``dropped`` lists the (1-based) numbers of the lines that
    were not a JSON object with an integer ``step``; ``torn_only`` is True when that is at most the last line
    (what a kill mid-write leaves, or a run that is still writing)."""

    dropped: list[int]
    n_lines: int

    @property
    def torn_only(self) -> bool:
        return not self.dropped or self.dropped == [self.n_lines]


def parse_metrics(lines: Iterable[str]) -> MetricsRows:
    rows = MetricsRows()
    rows.dropped, rows.n_lines = [], 0
    for i, raw in enumerate(lines, 1):
        rows.n_lines = i
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
            ok = (
                isinstance(row, dict)
                and isinstance(row.get("step"), int)
                and not isinstance(row["step"], bool)
            )
        except ValueError:
            ok = False
        if ok:
            rows.append(row)
        else:
            rows.dropped.append(i)
    return rows


def read_metrics(run_dir_or_file: str | Path) -> MetricsRows:
    """The metrics of a run directory (or of the metrics file itself), local or remote; empty when there are
    none yet. The one reader: a torn last line (a run still writing, or killed mid-write) and malformed lines
    are skipped and listed in ``.dropped``."""
    uri = str(run_dir_or_file)
    if not uri.rstrip("/").endswith(METRICS):
        uri = storage.join(uri, METRICS)
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        return parse_metrics([])
    return parse_metrics(data.decode("utf-8", errors="replace").splitlines())


# ----------------------------------------------------------------------------------------------- results


@dataclass
class JobResult:
    """What every launcher reports for one job (a Hydra job's return value, as a dict): in-process, torchrun,
    Kubernetes alike, so a sweep summary has the same columns whatever ran it."""

    status: str  # COMPLETED | FAILED | DRY_RUN | SUBMITTED | INTERRUPTED | CANCELLED | VALID
    run_dir: str | None = None  # URI of the run directory
    steps: int | None = None  # last optimizer step reached
    loss: float | None = None  # last train loss
    eval_loss: float | None = None  # final eval loss
    perplexity: float | None = None  # final eval perplexity
    tokens_per_s: float | None = None  # mean training throughput over the logged steps
    wall_s: float | None = None  # wall time of the job, seconds
    error: str | None = None  # why it failed

    def as_dict(self, **extra: Any) -> dict[str, Any]:
        return {**dataclasses.asdict(self), **extra}

    @classmethod
    def from_metrics(cls, status: str, run_dir: str, rows: Iterable[dict[str, Any]], **kw: Any) -> JobResult:
        """The result read back from a run's metrics rows (what a launcher outside the ranks can see)."""
        train = [r for r in rows if "loss" in r]
        evals = [r for r in rows if "eval_loss" in r]
        tps = [float(r["tokens_per_s"]) for r in train if r.get("tokens_per_s") is not None]
        last_eval = evals[-1] if evals else {}
        steps = [int(r["step"]) for r in (train[-1:] + evals[-1:])]
        return cls(
            status=status,
            run_dir=run_dir,
            steps=max(steps) if steps else None,
            loss=train[-1]["loss"] if train else None,
            eval_loss=last_eval.get("eval_loss"),
            perplexity=last_eval.get("perplexity"),
            tokens_per_s=sum(tps) / len(tps) if tps else None,
            **kw,
        )
