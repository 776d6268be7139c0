"""What ``RayLauncher.launch()`` does: compose and validate every job, then submit each to the Ray Jobs API and
follow it.

A Ray job runs ``python -m framework`` on the cluster with the job's resolved config (uploaded as the job's
``working_dir``: that one file, nothing else of this machine); the framework there sees ``launcher.name=ray`` and
starts a Ray Train TorchTrainer (``_train.py``). The code and its dependencies are the cluster's: the image's
installed ``framework`` package. No secret travels: the runtime env holds only ``launcher.env`` (checked to hold
no secret-looking names) and the auth token goes in a request header.

Every job of a sweep is validated before anything is submitted, so a bad override fails the whole sweep up front.
Submitted jobs run at most ``launcher.max_parallel`` at once; each one's log is streamed (prefixed with the job
name when several run). Ctrl-C stops following and, per launcher.cancel_on_interrupt, stops the submitted jobs
(asking first on a terminal).
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import re
import secrets
import shlex
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobRuntime, JobStatus, configure_log, setup_globals
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from framework.config import config_yaml, resolved
from framework.errors import ConfigError
from framework.sweep import JobSummary, format_summary

if TYPE_CHECKING:
    from hydra_plugins.ray_launcher._client import JobInfo, RayJobs
    from hydra_plugins.ray_launcher.ray_launcher import RayLauncher

log = logging.getLogger(__name__)
_print_lock = threading.Lock()


@dataclass
class Job:
    index: int
    overrides: list[str]
    cfg: DictConfig  # the job's config (its hydra node included)
    name: str  # the Ray submission id
    run_dir: str  # where the job's run directory is, as the cluster sees it
    out_dir: Path  # Hydra's sweep subdir here: config.yaml and submission.json are written there
    plain: dict[str, Any]  # the resolved config the job runs
    status: str = "VALIDATED"  # SUBMITTED | COMPLETED | FAILED | INTERRUPTED | CANCELLED
    message: str = ""
    error: BaseException | None = None
    wall_s: float | None = None
    submitted: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def launcher(self) -> DictConfig:
        return self.cfg.launcher


def new_sweep_id() -> str:
    return "s" + secrets.token_hex(3)[:5]


def job_name(run_name: str, sweep_id: str, index: int) -> str:
    """A readable, unique Ray submission id: ``<run name>-<sweep id>-<index>``."""
    slug = re.sub(r"[^a-z0-9]+", "-", run_name.lower()).strip("-")[:40].strip("-") or "run"
    return f"{slug}-{sweep_id}-{index}"


def entrypoint(python: str) -> str:
    """The command the Ray job runs: the framework on the uploaded resolved config, in RUN mode (its task then
    starts Ray Train because launcher.name=ray)."""
    return (
        f'{shlex.quote(python)} -m framework --config-path="$PWD" --config-name=config '
        'hydra.mode=RUN hydra.run.dir="$PWD" hydra.output_subdir=null'
    )


def runtime_env(config_dir: str, launcher: dict[str, Any]) -> dict[str, Any]:
    """The job's runtime env: the directory holding only config.yaml, and launcher.env (never a secret)."""
    env = {"PYTHONUNBUFFERED": "1", **{str(k): str(v) for k, v in (launcher.get("env") or {}).items()}}
    return {"working_dir": config_dir, "env_vars": env}


def metadata(job: Job) -> dict[str, str]:
    return {
        "framework.io/run-name": str(job.plain["run_name"]),
        "framework.io/overrides": " ".join(job.overrides)[:1000],
        "framework.io/run-dir": job.run_dir,
        "framework.io/job-index": str(job.index),
    }


def _without_hydra(cfg: DictConfig) -> DictConfig:
    with read_write(cfg), open_dict(cfg):
        copy = cfg.copy()
        del copy["hydra"]
    return copy


def build_jobs(
    launcher: RayLauncher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
) -> list[Job]:
    """Compose and validate every job (all problems of a job at once, as one ConfigError); name it, fix its run
    directory on the cluster, and write its resolved config into its output dir here."""
    from framework.validate import validate

    assert launcher.config is not None and launcher.hydra_context is not None
    if launcher.sweep_id is None:
        launcher.sweep_id = new_sweep_id()
    jobs = []
    for i, overrides in enumerate(job_overrides):
        idx = initial_job_idx + i
        sweep_config = launcher.hydra_context.config_loader.load_sweep_config(
            launcher.config, list(overrides)
        )
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = f"{launcher.sweep_id}_{idx}"
            sweep_config.hydra.job.num = idx
        HydraConfig.instance().set_config(sweep_config)
        out_dir = Path(str(sweep_config.hydra.sweep.dir)) / str(sweep_config.hydra.sweep.subdir)
        cfg = _without_hydra(sweep_config)
        # Paths are read on the cluster, so their existence is checked there (the job validates again).
        problems = validate(cfg, gpu_count=None, check_local_paths=False)
        if problems:
            raise ConfigError(problems)
        plain = resolved(cfg)
        name = job_name(str(plain["run_name"]), launcher.sweep_id, idx)
        storage = plain["storage"]
        run_dir = str(storage["output_uri"] or f"{str(plain['launcher']['run_dir']).rstrip('/')}/{name}")
        storage["output_uri"] = run_dir  # every worker (and a restarted one) writes to this one place
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(config_yaml(plain))
        jobs.append(Job(idx, list(overrides), sweep_config, name, run_dir, out_dir, plain))
    return jobs


def launch(
    launcher: RayLauncher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
) -> list[JobReturn]:
    assert launcher.config is not None
    setup_globals()
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    Path(str(launcher.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)

    jobs = build_jobs(launcher, job_overrides, initial_job_idx)
    _run(jobs)
    if len(jobs) > 1 and jobs[0].launcher.follow:
        print(format_summary([_summary(j) for j in jobs]), flush=True)
    return [_job_return(j) for j in jobs]


# ------------------------------------------------------------------------------------------ submitting
def _emit(prefix: str) -> Any:
    def emit(line: str) -> None:
        with _print_lock:
            print(f"{prefix}{line}", flush=True)

    return emit


def _clients(jobs: Sequence[Job]) -> dict[str, RayJobs]:
    """One Jobs API client per address; each is connected (and so checked) once, before anything is submitted."""
    from hydra_plugins.ray_launcher._client import RayJobs

    clients: dict[str, RayJobs] = {}
    for job in jobs:
        address = str(job.launcher.address)
        if address not in clients:
            clients[address] = RayJobs(address)
    return clients


def submit(job: Job, client: RayJobs) -> None:
    """Upload the job's resolved config (alone) and submit the job."""
    with tempfile.TemporaryDirectory(prefix="framework-ray-") as tmp:
        (Path(tmp) / "config.yaml").write_text(config_yaml(job.plain))
        env = runtime_env(tmp, job.plain["launcher"])
        cmd = entrypoint(str(job.plain["launcher"]["ray_python"]))
        meta = metadata(job)
        (job.out_dir / "submission.json").write_text(
            json.dumps(
                {"submission_id": job.name, "entrypoint": cmd, "env_vars": env["env_vars"], "metadata": meta}
            )
        )
        client.submit(name=job.name, entrypoint=cmd, runtime_env=env, metadata=meta)


def _run(jobs: list[Job]) -> None:
    clients = _clients(jobs)
    first = jobs[0].launcher
    stop = threading.Event()
    many = len(jobs) > 1

    def one(job: Job) -> None:
        client = clients[str(job.launcher.address)]
        prefix = f"[{job.name}] " if many else ""
        if stop.is_set():
            job.status, job.message = "CANCELLED", "not submitted (interrupted)"
            return
        t0 = time.monotonic()
        try:
            submit(job, client)
        except Exception as e:
            job.status, job.error, job.message = "FAILED", e, str(e)
            return
        job.submitted = True
        log.info(
            "%sSubmitted Ray job %s to %s; run directory %s", prefix, job.name, client.address, job.run_dir
        )
        if not job.launcher.follow:
            job.status = "SUBMITTED"
            log.info("Follow it with: framework-jobs logs %s --ray %s --follow", job.name, client.address)
            return
        log_stop = threading.Event()
        follower = threading.Thread(
            target=_follow,
            args=(client, job.name, _emit(prefix), log_stop),
            daemon=True,
            name=f"logs-{job.name}",
        )
        follower.start()
        info = None
        try:
            info = client.wait(
                job.name,
                poll_s=float(job.launcher.poll_interval_s),
                stop=stop,
                on_update=lambda line: log.info("%sRay job %s: %s", prefix, job.name, line),
            )
        except Exception as e:
            job.status, job.error, job.message = "FAILED", e, str(e)
            return
        finally:
            if info is not None and info.done:
                follower.join(
                    timeout=10.0
                )  # a finished job's log stream ends by itself: print its last lines
            log_stop.set()
            follower.join(timeout=2.0)
        job.wall_s = time.monotonic() - t0
        _outcome(job, info)

    pool = cf.ThreadPoolExecutor(max_workers=max(1, int(first.max_parallel)), thread_name_prefix="ray-job")
    futures = [pool.submit(one, job) for job in jobs]
    try:
        while not all(f.done() for f in futures):
            cf.wait(futures, timeout=0.5)
    except KeyboardInterrupt:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        _interrupted(jobs, clients, str(first.cancel_on_interrupt))
        raise
    pool.shutdown(wait=True)
    for f in futures:
        f.result()  # re-raise a bug in `one` rather than reporting a half-filled job


def _follow(client: RayJobs, name: str, emit: Any, stop: threading.Event) -> None:
    try:
        client.follow_logs(name, emit, stop)
    except Exception as e:  # the log stream is best effort; the job's status is what decides the outcome
        log.debug("log stream of %s ended: %s", name, e)


def _outcome(job: Job, info: JobInfo) -> None:
    from hydra_plugins.ray_launcher._client import RayError

    job.message = info.describe()
    if info.status == "SUCCEEDED":
        job.status = "COMPLETED"
        job.extra.update(_final_metrics(job))
        return
    if not info.done:  # stopped following (Ctrl-C)
        job.status = "INTERRUPTED"
        return
    job.status = "FAILED"
    code = info.outcome_code
    hint = {
        2: "fix the config or data and resubmit (not retried)",
        143: f"stopped by SIGTERM; resubmit with storage.output_uri={job.run_dir} to resume from its checkpoint",
    }.get(code, f"see its log: framework-jobs logs {job.name} --ray {job.launcher.address}")
    job.error = RayError(f"Ray job {job.name} {info.describe()}; {hint}", code)


def _final_metrics(job: Job) -> dict[str, Any]:
    """Final eval loss and throughput from the run's metrics, when they are readable from here."""
    try:
        from framework import storage
        from framework.rundir import JobResult, read_metrics

        storage.configure_from_config(OmegaConf.create(job.plain["storage"]))
        found = JobResult.from_metrics("COMPLETED", job.run_dir, read_metrics(job.run_dir))
    except Exception as e:  # best effort: a run dir only the cluster sees gives '-' in the summary
        log.debug("no metrics for %s: %s", job.name, e)
        return {}
    return {"eval_loss": found.eval_loss, "tokens_per_s": found.tokens_per_s}


def _interrupted(jobs: list[Job], clients: dict[str, RayJobs], policy: str) -> None:
    """Ctrl-C: stop the jobs still running, or leave them, per launcher.cancel_on_interrupt."""
    running = [j for j in jobs if j.submitted and j.status not in ("COMPLETED", "FAILED")]
    for j in jobs:
        if j.status == "VALIDATED":
            j.status = "CANCELLED"
    if not running:
        return
    names = ", ".join(j.name for j in running)
    cancel = policy == "yes"
    if policy == "ask":
        if sys.stdin.isatty():
            try:
                answer = input(f"\nStop the Ray job(s) {names}? [y/N] ")
            except (EOFError, KeyboardInterrupt):
                answer = ""
            cancel = answer.strip().lower() in ("y", "yes")
        else:
            print(
                "\nNot on a terminal: leaving the Ray job(s) running (launcher.cancel_on_interrupt=ask)",
                file=sys.stderr,
            )
    for job in running:
        client = clients[str(job.launcher.address)]
        if cancel:
            try:
                client.stop(job.name)
                job.status = "CANCELLED"
                print(f"Stopped Ray job {job.name}", file=sys.stderr)
            except Exception as e:
                print(f"Could not stop Ray job {job.name}: {e}", file=sys.stderr)
        else:
            job.status = "INTERRUPTED"
            print(
                f"Left Ray job {job.name} running; follow: framework-jobs logs {job.name} --ray {client.address} "
                f"--follow; stop: framework-jobs cancel {job.name} --ray {client.address}",
                file=sys.stderr,
            )


# ----------------------------------------------------------------------------------------------- results
def _value(job: Job) -> dict[str, Any]:
    """The job's result in the one shape every launcher reports (framework.rundir.JobResult)."""
    from framework.rundir import JobResult

    found = JobResult(
        status=job.status,
        run_dir=job.run_dir,
        eval_loss=job.extra.get("eval_loss"),
        tokens_per_s=job.extra.get("tokens_per_s"),
        wall_s=job.wall_s,
        error=str(job.error) if job.error else None,
    )
    return found.as_dict(job=job.name, address=str(job.launcher.address), message=job.message)


def _summary(job: Job) -> JobSummary:
    return JobSummary.from_return(job.overrides, job.status, _value(job))


def _job_return(job: Job) -> JobReturn:
    from hydra_plugins.ray_launcher._client import RayError

    ret = JobReturn(
        overrides=job.overrides,
        cfg=job.cfg,
        hydra_cfg=job.cfg,
        working_dir=str(job.out_dir),
        task_name=JobRuntime.instance().get("name"),
    )
    if job.status == "FAILED":
        ret.status = JobStatus.FAILED
        ret.return_value = job.error or RayError(f"Ray job {job.name} failed: {job.message}")
    else:
        ret.status = JobStatus.COMPLETED
        ret.return_value = _value(job)
    return ret
