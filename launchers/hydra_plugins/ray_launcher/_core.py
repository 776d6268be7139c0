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

import json
import logging
import re
import shlex
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from framework import remote_jobs
from framework.config import config_yaml, resolved
from framework.sweep import JobSummary, format_summary

if TYPE_CHECKING:
    from hydra_plugins.ray_launcher._client import JobInfo, RayJobs
    from hydra_plugins.ray_launcher.ray_launcher import RayLauncher

log = logging.getLogger(__name__)


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


new_sweep_id = remote_jobs.new_sweep_id


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
    jobs = []
    for idx, overrides, sweep_config in remote_jobs.job_configs(launcher, job_overrides, initial_job_idx):
        HydraConfig.instance().set_config(sweep_config)
        out_dir = Path(str(sweep_config.hydra.sweep.dir)) / str(sweep_config.hydra.sweep.subdir)
        cfg = _without_hydra(sweep_config)
        remote_jobs.validate(cfg)  # paths are read on the cluster: their existence is checked there
        plain = resolved(cfg)
        name = job_name(str(plain["run_name"]), str(launcher.sweep_id), idx)
        storage = plain["storage"]
        run_dir = str(storage["output_uri"] or f"{str(plain['launcher']['run_dir']).rstrip('/')}/{name}")
        storage["output_uri"] = run_dir  # every worker (and a restarted one) writes to this one place
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(config_yaml(plain))
        jobs.append(Job(idx, overrides, sweep_config, name, run_dir, out_dir, plain))
    return jobs


def launch(
    launcher: RayLauncher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
) -> list[JobReturn]:
    remote_jobs.start(launcher)
    with remote_jobs.gc_paused():
        jobs = build_jobs(launcher, job_overrides, initial_job_idx)
    _run(jobs)
    if len(jobs) > 1 and jobs[0].launcher.follow:
        print(format_summary([_summary(j) for j in jobs]), flush=True)
    return [_job_return(j) for j in jobs]


# ------------------------------------------------------------------------------------------ submitting
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


class _Backend:
    """The Ray Jobs API side of framework.remote_jobs: one client per address."""

    thread_prefix = "ray-job"
    pending_status = "VALIDATED"
    ask_cancel = "\nStop the Ray job(s) {names}? [y/N] "
    not_on_terminal = "\nNot on a terminal: leaving the Ray job(s) running (launcher.cancel_on_interrupt=ask)"
    cancelled = "Stopped Ray job {job}"
    not_cancelled = "Could not stop Ray job {job}: {error}"

    def __init__(self, clients: dict[str, RayJobs]) -> None:
        self.clients = clients

    def client(self, job: Job) -> RayJobs:
        return self.clients[str(job.launcher.address)]

    def label(self, job: Job) -> str:
        return job.name

    def submit(self, job: Job, prefix: str) -> None:
        client = self.client(job)
        submit(job, client)
        log.info(
            "%sSubmitted Ray job %s to %s; run directory %s", prefix, job.name, client.address, job.run_dir
        )

    def not_followed(self, job: Job) -> None:
        log.info(
            "Follow it with: framework-jobs logs %s --ray %s --follow", job.name, self.client(job).address
        )

    def follow_logs(self, job: Job, prefix: str, stop: threading.Event) -> None:
        try:
            self.client(job).follow_logs(job.name, remote_jobs.emitter(prefix), stop)
        except Exception as e:  # the log stream is best effort; the job's status is what decides the outcome
            log.debug("log stream of %s ended: %s", job.name, e)

    def wait(self, job: Job, prefix: str, stop: threading.Event) -> JobInfo:
        return self.client(job).wait(
            job.name,
            poll_s=float(job.launcher.poll_interval_s),
            stop=stop,
            on_update=lambda line: log.info("%sRay job %s: %s", prefix, job.name, line),
        )

    def end_logs(self, job: Job, done: bool, follower: threading.Thread, log_stop: threading.Event) -> None:
        if done:
            follower.join(timeout=10.0)  # a finished job's log stream ends by itself: print its last lines
        log_stop.set()
        follower.join(timeout=2.0)

    def outcome(self, job: Job, info: JobInfo) -> None:
        _outcome(job, info)

    def cancel(self, job: Job) -> None:
        self.client(job).stop(job.name)

    def left_running(self, job: Job) -> str:
        address = self.client(job).address
        return (
            f"Left Ray job {job.name} running; follow: framework-jobs logs {job.name} --ray {address} "
            f"--follow; stop: framework-jobs cancel {job.name} --ray {address}"
        )


def _run(jobs: list[Job]) -> None:
    remote_jobs.run(jobs, _Backend(_clients(jobs)))


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
    remote_jobs.interrupted(jobs, _Backend(clients), policy)


# ----------------------------------------------------------------------------------------------- results
def _value(job: Job) -> dict[str, Any]:
    """The job's result in the one shape every launcher reports (framework.rundir.JobResult)."""
    return remote_jobs.value(
        job, job.run_dir, job=job.name, address=str(job.launcher.address), message=job.message
    )


def _summary(job: Job) -> JobSummary:
    # A failed job's row says what its exit code means, as the local launcher's REJECTED does: PREEMPTED
    # (143: stopped by SIGTERM after a checkpoint; resubmitting resumes), REJECTED (2: fix the config or data).
    status = job.status
    if status == "FAILED":
        status = {2: "REJECTED", 143: "PREEMPTED"}.get(getattr(job.error, "exit_code", None), status)
    return JobSummary.from_return(job.overrides, status, {**_value(job), "status": status})


def _job_return(job: Job) -> JobReturn:
    from hydra_plugins.ray_launcher._client import RayError

    return remote_jobs.job_return(
        job,
        cfg=job.cfg,
        working_dir=str(job.out_dir),
        value=lambda: _value(job),
        failure=lambda: RayError(f"Ray job {job.name} failed: {job.message}"),
    )
