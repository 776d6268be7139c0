"""Driving a sweep's jobs on a remote backend, for every launcher plugin that submits them (Kubernetes, Ray).

A launcher composes and validates its jobs, then hands them here with a :class:`Backend`: its client calls
(submit, wait, log stream, cancel) and the words it reports with. This module runs the jobs at most
``launcher.max_parallel`` at once, streams each one's log (prefixed with the job name when several run), applies
``launcher.cancel_on_interrupt`` on Ctrl-C (stop or leave the submitted jobs, asking first on a terminal), and
builds each job's Hydra ``JobReturn`` in the one result shape (framework.rundir.JobResult). No torch.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import gc
import logging
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from hydra.core.utils import JobReturn, JobRuntime, JobStatus, configure_log, setup_globals
from omegaconf import DictConfig, open_dict

from framework.errors import ConfigError

log = logging.getLogger(__name__)
print_lock = threading.Lock()  # one job's log line at a time on stdout

Emit = Callable[[str], None]


class RemoteJob(Protocol):
    """What this module reads and sets on a launcher's job (each launcher has its own dataclass)."""

    overrides: list[str]
    cfg: DictConfig
    name: str
    status: str
    message: str
    error: BaseException | None
    wall_s: float | None
    submitted: bool
    extra: dict[str, Any]

    @property
    def launcher(self) -> DictConfig: ...


class Info(Protocol):
    """A job's state as a backend's ``wait`` returns it."""

    @property
    def done(self) -> bool: ...


class Backend(Protocol):
    """A launcher's side of driving its jobs; the texts are what the user reads on Ctrl-C."""

    thread_prefix: str  # the worker threads' name prefix
    pending_status: str  # a job's status before it is submitted (VALIDATED, RENDERED)
    ask_cancel: str  # the question on a terminal; {names} is filled in
    not_on_terminal: str  # why the jobs are left running under cancel_on_interrupt=ask without a terminal
    cancelled: str  # after a successful cancel; {job} is filled in
    not_cancelled: str  # a failed cancel; {job} and {error} are filled in

    def label(self, job: Any) -> str:
        """The job as the Ctrl-C texts name it."""

    def submit(self, job: Any, prefix: str) -> None:
        """Submit the job and log where it went (``prefix``: the job's log prefix)."""

    def not_followed(self, job: Any) -> None:
        """launcher.follow=false: say how to follow the submitted job."""

    def follow_logs(self, job: Any, prefix: str, stop: threading.Event) -> None:
        """Print the job's log lines (through :func:`emitter`) until it ends or ``stop`` is set (in a thread)."""

    def wait(self, job: Any, prefix: str, stop: threading.Event) -> Info:
        """Poll the job until it is done or ``stop`` is set."""

    def end_logs(self, job: Any, done: bool, follower: threading.Thread, log_stop: threading.Event) -> None:
        """Stop the job's log stream (``done``: the job finished, let its last lines through)."""

    def outcome(self, job: Any, info: Any) -> None:
        """Set the job's status, message and error from its final state."""

    def cancel(self, job: Any) -> None:
        """Stop (or delete) a submitted job."""

    def left_running(self, job: Any) -> str:
        """What to tell about a job left running after Ctrl-C: how to follow and how to stop it."""


# ------------------------------------------------------------------------------------------ composing
@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off while a batch of jobs is composed and rendered (not while they run).

    Every job keeps its configs alive (thousands of OmegaConf nodes each), and each full collection walks all
    of them, so the per-job cost of a sweep grew with its length. Composing makes little cyclic garbage
    (~100 objects a job), which the collector takes once it is back on.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def new_sweep_id() -> str:
    """Six lowercase characters starting with a letter: short, and unique enough per namespace or cluster."""
    return "s" + secrets.token_hex(3)[:5]


def start(launcher: Any) -> None:
    """What Hydra's launchers do before the first job: globals, Hydra's logging, the sweep dir."""
    assert launcher.config is not None
    setup_globals()
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    Path(str(launcher.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)


def job_configs(
    launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
) -> Iterator[tuple[int, list[str], DictConfig]]:
    """(index, overrides, config) of each job of the batch, composed by the sweep's config loader, its
    ``hydra.job.id`` and ``num`` set as Hydra sets them (``launcher.sweep_id`` is chosen on the first batch)."""
    assert launcher.config is not None and launcher.hydra_context is not None
    if launcher.sweep_id is None:
        launcher.sweep_id = new_sweep_id()
    for i, overrides in enumerate(job_overrides):
        idx = initial_job_idx + i
        sweep_config = launcher.hydra_context.config_loader.load_sweep_config(
            launcher.config, list(overrides)
        )
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = f"{launcher.sweep_id}_{idx}"
            sweep_config.hydra.job.num = idx
        yield idx, list(overrides), sweep_config


def validate(cfg: DictConfig) -> None:
    """The framework's config checks and the launcher's (framework.validate asks launcher_problems through its
    table), as one ConfigError, minus local-path existence: paths are read on the cluster, not here (the job
    validates again there)."""
    from framework.validate import validate

    # Composed with the schema already: no with_schema() needed.
    problems = validate(cfg, gpu_count=None, check_local_paths=False)
    if problems:
        raise ConfigError(problems)


# ------------------------------------------------------------------------------------------ driving
def emitter(prefix: str, also: Emit | None = None) -> Emit:
    """Print each line with ``prefix`` (one line at a time across threads); ``also`` gets the bare line too."""

    def emit(line: str) -> None:
        with print_lock:
            print(f"{prefix}{line}", flush=True)
        if also is not None:
            also(line)

    return emit


def run(jobs: Sequence[RemoteJob], backend: Backend) -> None:
    """Submit and follow every job, at most launcher.max_parallel at once; Ctrl-C applies cancel_on_interrupt."""
    first = jobs[0].launcher
    stop = threading.Event()
    many = len(jobs) > 1

    def one(job: RemoteJob) -> None:
        prefix = f"[{job.name}] " if many else ""
        if stop.is_set():
            job.status, job.message = "CANCELLED", "not submitted (interrupted)"
            return
        t0 = time.monotonic()
        try:
            backend.submit(job, prefix)
        except Exception as e:
            job.status, job.error, job.message = "FAILED", e, str(e)
            return
        job.submitted = True
        if not job.launcher.follow:
            job.status = "SUBMITTED"
            backend.not_followed(job)
            return
        log_stop = threading.Event()
        follower = threading.Thread(
            target=backend.follow_logs,
            args=(job, prefix, log_stop),
            daemon=True,
            name=f"logs-{job.name}",
        )
        follower.start()
        info = None
        try:
            info = backend.wait(job, prefix, stop)
        except Exception as e:
            job.status, job.error, job.message = "FAILED", e, str(e)
            return
        finally:
            backend.end_logs(job, info is not None and info.done, follower, log_stop)
        job.wall_s = time.monotonic() - t0
        backend.outcome(job, info)

    pool = cf.ThreadPoolExecutor(
        max_workers=max(1, int(first.max_parallel)), thread_name_prefix=backend.thread_prefix
    )
    futures = [pool.submit(one, job) for job in jobs]
    try:
        while not all(f.done() for f in futures):
            cf.wait(futures, timeout=0.5)
    except KeyboardInterrupt:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        interrupted(jobs, backend, str(first.cancel_on_interrupt))
        raise
    pool.shutdown(wait=True)
    for f in futures:
        f.result()  # re-raise a bug in `one` rather than reporting a half-filled job


def interrupted(jobs: Sequence[RemoteJob], backend: Backend, policy: str) -> None:
    """Ctrl-C: stop the jobs still running, or leave them, per launcher.cancel_on_interrupt (yes | no | ask)."""
    running = [j for j in jobs if j.submitted and j.status not in ("COMPLETED", "FAILED")]
    for j in jobs:
        if j.status == backend.pending_status:
            j.status = "CANCELLED"
    if not running:
        return
    names = ", ".join(backend.label(j) for j in running)
    cancel = policy == "yes"
    if policy == "ask":
        if sys.stdin.isatty():
            try:
                answer = input(backend.ask_cancel.format(names=names))
            except (EOFError, KeyboardInterrupt):
                answer = ""
            cancel = answer.strip().lower() in ("y", "yes")
        else:
            print(backend.not_on_terminal, file=sys.stderr)
    for job in running:
        if cancel:
            try:
                backend.cancel(job)
                job.status = "CANCELLED"
                print(backend.cancelled.format(job=backend.label(job)), file=sys.stderr)
            except Exception as e:
                print(backend.not_cancelled.format(job=backend.label(job), error=e), file=sys.stderr)
        else:
            job.status = "INTERRUPTED"
            print(backend.left_running(job), file=sys.stderr)


# ----------------------------------------------------------------------------------------------- results
def value(job: RemoteJob, run_dir: str, /, **extra: Any) -> dict[str, Any]:
    """The job's result in the one shape every launcher reports (framework.rundir.JobResult), plus ``extra``."""
    from framework.rundir import JobResult

    result = JobResult(
        status=job.status,
        run_dir=run_dir,
        eval_loss=job.extra.get("eval_loss"),
        tokens_per_s=job.extra.get("tokens_per_s"),
        wall_s=job.wall_s,
        error=str(job.error) if job.error is not None else None,
    )
    return result.as_dict(**extra)


def job_return(
    job: RemoteJob,
    *,
    cfg: DictConfig,
    working_dir: str,
    value: Callable[[], dict[str, Any]],
    failure: Callable[[], BaseException],
) -> JobReturn:
    """Hydra's JobReturn: FAILED with the job's error (else ``failure()``), or COMPLETED with ``value()``."""
    ret = JobReturn(
        overrides=job.overrides,
        cfg=cfg,
        hydra_cfg=job.cfg,  # its hydra node, without a copy (read-only for the caller)
        working_dir=working_dir,
        task_name=JobRuntime.instance().get("name"),
    )
    if job.status == "FAILED":
        ret.status = JobStatus.FAILED
        ret.return_value = job.error or failure()
    else:
        ret.status = JobStatus.COMPLETED
        ret.return_value = value()
    return ret
