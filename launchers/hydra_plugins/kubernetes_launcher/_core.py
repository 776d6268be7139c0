"""What ``KubernetesLauncher.launch()`` does: compose and render every job, then dry-run, or submit and follow.

Every job of a sweep is rendered (and validated) before anything is submitted, so a bad override fails the whole
sweep up front. Submitted jobs run at most ``launcher.max_parallel`` at once; each one's rank-0 log is streamed
(prefixed with the job name when several run). Ctrl-C stops following and, per launcher.cancel_on_interrupt,
deletes the submitted jobs (asking first on a terminal).
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn
from hydra_plugins.kubernetes_launcher import _backends, _render, _staging
from hydra_plugins.kubernetes_launcher._client import default_namespace
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from framework import remote_jobs
from framework.config import config_yaml, resolved
from framework.errors import ConfigError
from framework.launcher_config import sweep_output_uri
from framework.sweep import JobSummary, format_summary

if TYPE_CHECKING:
    from hydra_plugins.kubernetes_launcher._client import JobClient, JobInfo
    from hydra_plugins.kubernetes_launcher.kubernetes_launcher import KubernetesLauncher

log = logging.getLogger(__name__)
_print_lock = remote_jobs.print_lock  # job log files and streamed lines, one line at a time


@dataclass
class Job:
    index: int
    overrides: list[str]
    cfg: DictConfig  # the job's config (its hydra node included)
    name: str
    objs: list[dict[str, Any]]
    out_dir: Path
    status: str = "RENDERED"  # DRY_RUN | SUBMITTED | COMPLETED | FAILED | INTERRUPTED | CANCELLED
    message: str = ""
    error: BaseException | None = None
    wall_s: float | None = None
    submitted: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    plain: dict[str, Any] = field(default_factory=dict)  # the resolved config without hydra (what pods read)

    @property
    def log_path(self) -> Path:
        """The job's log, as Hydra's job logging names it: <output dir>/<hydra.job.name>.log."""
        return self.out_dir / f"{self.cfg.hydra.job.name}.log"

    def log(self, line: str) -> None:
        with _print_lock, open(self.log_path, "a") as f:
            f.write(line.rstrip("\n") + "\n")

    @property
    def launcher(self) -> DictConfig:
        return self.cfg.launcher

    @property
    def ref(self) -> str:
        return f"{self.launcher.namespace}/{self.name}"


new_sweep_id = remote_jobs.new_sweep_id


def git_commit() -> str | None:
    """HEAD of the checkout this code runs from (else of the working directory), or None outside git."""
    for where in (Path(__file__).resolve().parent, Path.cwd()):
        try:
            out = subprocess.run(
                ["git", "rev-parse", "HEAD"],
                cwd=where,
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        sha = out.stdout.strip()
        if out.returncode == 0 and len(sha) == 40:
            return sha
    return None


@contextlib.contextmanager
def _without_hydra(sweep_config: DictConfig) -> Iterator[DictConfig]:
    """The job's config with its hydra node detached for the duration: what the task sees, without the copy
    Hydra's run_job makes (~10 ms a job). The node is put back as is (no deep copy)."""
    from framework.hydra_compat import detached

    with detached(sweep_config, "hydra") as cfg:
        yield cfg


NOT_A_FRAMEWORK_APP = (
    "hydra/launcher=kubernetes runs the framework's training app only (python -m framework ... "
    "launcher=kubernetes): every job becomes pods running `framework-torchrun -m framework` with the job's config, "
    "and this app's config has no launcher.backend to render. Run other Hydra apps with another launcher "
    "(the basic one, submitit, ray)"
)


def _check_framework_app(sweep_config: DictConfig) -> None:
    """Hydra's launcher contract for any app: a clear error (README "Kubernetes launcher and Hydra")."""
    if OmegaConf.select(sweep_config, "launcher.backend") is None:
        raise ConfigError(NOT_A_FRAMEWORK_APP)


def _save_hydra_files(job: Job) -> None:
    """What Hydra's run_job writes for every job: .hydra/{config,hydra,overrides}.yaml (output_subdir). The task
    config is the resolved one the pods read (as the run dir's config.yaml); libyaml keeps it ~1 ms a job."""
    cfg = job.cfg
    with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):
        cfg.hydra.runtime.output_dir = str(job.out_dir.resolve())
    if cfg.hydra.output_subdir is None:
        return
    out = job.out_dir / str(cfg.hydra.output_subdir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(_config_text(job))
    hydra = OmegaConf.to_container(cfg.hydra, resolve=False, enum_to_str=True)
    (out / "hydra.yaml").write_text(config_yaml({"hydra": hydra}))
    (out / "overrides.yaml").write_text(config_yaml(list(job.overrides)))  # type: ignore[arg-type]


def _config_text(job: Job) -> str:
    """The job's resolved config as its ConfigMap holds it (rendered once), else as config_yaml writes it."""
    from hydra_plugins.kubernetes_launcher._names import CONFIG_FILE

    for obj in job.objs:
        meta = obj.get("metadata") or {}
        if obj.get("kind") == "ConfigMap" and meta.get("name") == f"{job.name}-config":
            return str(obj["data"][CONFIG_FILE])
    return config_yaml(job.plain)


def _task_cfg(cfg: DictConfig) -> DictConfig:
    """The job's config without its hydra node (a pickled copy: ~3x faster than OmegaConf.create or deepcopy),
    the node detached while copying: only the task's part is copied (half the time)."""
    from hydra_plugins.kubernetes_launcher._compose import clone

    with _without_hydra(cfg) as task:
        return clone(task)


def _set_hydra_config(cfg: DictConfig) -> None:
    """HydraConfig for a job's callbacks, as run_job sets it, without set_config's masked copy of the config
    (~20 ms a job): the job's own config, its hydra node read-only."""
    OmegaConf.set_readonly(cfg.hydra, True)
    HydraConfig.instance().cfg = cfg  # type: ignore[assignment]


def render_jobs(
    launcher: KubernetesLauncher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
) -> list[Job]:
    """Compose, validate and render every job; write each one's manifests.yaml into its output dir."""
    assert launcher.config is not None and launcher.hydra_context is not None
    commit = git_commit()
    jobs = []
    sweep = len(job_overrides) > 1 or initial_job_idx > 0  # more than one job: each its own run dir
    namespaces: dict[Any, str] = {}
    for idx, overrides, sweep_config in remote_jobs.job_configs(launcher, job_overrides, initial_job_idx):
        _check_framework_app(sweep_config)
        loader = launcher.hydra_context.config_loader
        if getattr(loader, "needs_hydra_config", lambda _: True)(overrides):  # ~5 ms a job: only if used
            HydraConfig.instance().set_config(sweep_config)
        out_dir = Path(str(sweep_config.hydra.sweep.dir)) / str(sweep_config.hydra.sweep.subdir)
        with _without_hydra(sweep_config) as cfg:
            with open_dict(cfg):
                if cfg.launcher.namespace is None:  # the one namespace rule, shared with framework-jobs
                    context = cfg.launcher.context
                    if context not in namespaces:
                        namespaces[context] = default_namespace(context)
                    cfg.launcher.namespace = namespaces[context]
                if sweep and cfg.storage.output_uri:
                    cfg.storage.output_uri = sweep_output_uri(str(cfg.storage.output_uri), idx)
            remote_jobs.validate(cfg)
            # local model/dataset paths -> the run's S3 storage, content-addressed (dry runs only name them)
            _staging.stage(cfg, upload=not bool(cfg.launcher.dry_run))
            plain = resolved(cfg)
            name = _render.job_name(
                str(cfg.run_name),
                sweep_id=launcher.sweep_id,
                job_index=idx,
                backend=str(cfg.launcher.backend),
                nodes=int(cfg.hardware.nodes),
            )
            objs = _render.render(
                plain,
                job_name=name,
                sweep_id=launcher.sweep_id,
                job_index=idx,
                git_commit=commit,
                overrides=list(overrides),
            )
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "manifests.yaml").write_text(_render.to_yaml(objs))
        job = Job(idx, overrides, sweep_config, name, objs, out_dir, plain=plain)
        _save_hydra_files(job)
        jobs.append(job)
    return jobs


def warnings_for(job: Job) -> list[str]:
    """What a dry run and a live submit both print about a job before it runs."""
    from hydra_plugins.kubernetes_launcher._problems import run_dir_is_durable

    plain = job.plain
    launcher = plain["launcher"]
    out = []
    if not run_dir_is_durable(plain):
        out.append(
            f"the run directory {_render.pod_run_dir(job.cfg, job.name)} is on an emptyDir and is lost when the "
            "pods end; set storage.output_uri=s3://... or mount a PVC with launcher.pvcs"
        )
    image = str(launcher["image"])
    if _render.image_digest(image) is None and _render.image_tag(image) in (None, "latest"):
        out.append(
            f"launcher.image={image} is not pinned: nodes may pull different builds under one tag, and no digest "
            "is recorded; use a version tag or repo@sha256:<digest> (recorded in the framework.io/image-digest label)"
        )
    derived = _render.derived_grace_s(plain)
    if launcher.get("termination_grace_s") is not None and int(launcher["termination_grace_s"]) < derived:
        out.append(
            f"launcher.termination_grace_s={launcher['termination_grace_s']} is below the {derived} s a checkpoint "
            'of this size needs on this storage (README "Grace period"): a preempted pod may be killed mid-save'
        )
    out += _backends.BACKENDS[str(launcher["backend"])].warnings(plain)
    return out


def launch(
    launcher: KubernetesLauncher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
) -> list[JobReturn]:
    remote_jobs.start(launcher)
    with remote_jobs.gc_paused():
        jobs = render_jobs(launcher, job_overrides, initial_job_idx)
    callbacks = launcher.hydra_context.callbacks if launcher.hydra_context is not None else None
    if callbacks is not None and not getattr(callbacks, "callbacks", True):
        callbacks = None  # none configured: skip setting HydraConfig per job (a masked copy, ~10 ms)
    live = [j for j in jobs if not j.launcher.dry_run]
    seen: set[str] = set()
    for job in jobs:  # the same warnings whether the job is submitted or only rendered
        for text in warnings_for(job):
            if text not in seen or len(jobs) == 1:
                log.warning("%s: %s", job.name, text)
            seen.add(text)
            job.log(f"WARNING {text}")
    for job in jobs:
        if callbacks is not None:  # Hydra's contract: around every job, with the job's config
            _set_hydra_config(job.cfg)
            callbacks.on_job_start(config=job.cfg, task_function=launcher.task_function)
        if job.launcher.dry_run:
            job.status = "DRY_RUN"
            line = (
                f"Wrote {job.out_dir / 'manifests.yaml'} ({job.name}); submit with: kubectl apply -f "
                f"{job.out_dir / 'manifests.yaml'} (afterwards `framework-jobs gc -n {job.launcher.namespace}` "
                "deletes its ConfigMap (and Service) once the job is gone)"
            )
            print(line)
            job.log(line)
    if live:
        _run(live)  # the sweep summary: framework.sweep.SweepSummaryCallback, from on_job_end below
        if len(jobs) > 1 and any(j.status == "FAILED" for j in jobs):
            # Hydra's basic sweeper raises at the first FAILED JobReturn, before on_multirun_end: the callback's
            # summary would never print, so this sweep's is printed here.
            print(format_summary([JobSummary.from_return(j.overrides, j.status, _value(j)) for j in jobs]))
    returns = []
    with remote_jobs.gc_paused():  # each JobReturn holds a copy of its task config
        for job in jobs:
            ret = _job_return(job)
            job.log(f"{job.status}: {job.message}" if job.message else job.status)
            if callbacks is not None:
                _set_hydra_config(job.cfg)
                callbacks.on_job_end(config=job.cfg, job_return=ret)
            returns.append(ret)
    return returns


# ------------------------------------------------------------------------------------------ submitting
def _clients(jobs: Sequence[Job]) -> dict[tuple[Any, ...], JobClient]:
    """One client per (context, namespace, backend); reachability is checked once per context, up front."""
    from hydra_plugins.kubernetes_launcher._client import JobClient, load_api_client

    api_clients: dict[Any, Any] = {}
    clients: dict[tuple[Any, ...], JobClient] = {}
    for job in jobs:
        L = job.launcher
        key = (L.context, L.namespace, L.backend)
        if key in clients:
            continue
        fresh = L.context not in api_clients
        if fresh:
            api_clients[L.context] = load_api_client(L.context)
        client = JobClient(
            str(L.namespace),
            backend=str(L.backend),
            api_client=api_clients[L.context],
            retries=int(L.api_retries),
            timeout_s=float(L.api_timeout_s),
            poll_interval_s=float(L.poll_interval_s),
        )
        if fresh:
            client.check_reachable()
        clients[key] = client
    return clients


def _run_preflight(jobs: Sequence[Job], clients: dict[tuple[Any, ...], JobClient]) -> None:
    """Read-only checks before anything is submitted (launcher.preflight); once per distinct set of needs."""
    from hydra_plugins.kubernetes_launcher import _preflight

    seen: set[str] = set()
    for job in jobs:
        L = job.launcher
        if not getattr(L, "preflight", True):
            continue
        key = (L.context, L.namespace, L.backend)
        signature = repr((key, _preflight.signature(job.objs, job.cfg)))
        if signature in seen:
            continue
        seen.add(signature)
        _preflight.check(clients[key], job.objs, job.cfg)


class _Backend:
    """The Kubernetes side of framework.remote_jobs: one client per (context, namespace, backend)."""

    thread_prefix = "k8s-job"
    pending_status = "RENDERED"
    ask_cancel = "\nDelete the submitted job(s) {names}? [y/N] "
    not_on_terminal = "\nNot on a terminal: leaving the job(s) running (launcher.cancel_on_interrupt=ask)"
    cancelled = "Deleted {job}"
    not_cancelled = "Could not delete {job}: {error}"

    def __init__(self, clients: dict[tuple[Any, ...], JobClient]) -> None:
        self.clients = clients

    def client(self, job: Job) -> JobClient:
        return self.clients[(job.launcher.context, job.launcher.namespace, job.launcher.backend)]

    def label(self, job: Job) -> str:
        return job.ref

    def submit(self, job: Job, prefix: str) -> None:
        client = self.client(job)
        client.submit(job.objs)
        log.info("%sSubmitted %s %s", prefix, client.kind.kind, job.ref)

    def not_followed(self, job: Job) -> None:
        log.info("Follow it with: framework-jobs logs %s -n %s --follow", job.name, job.launcher.namespace)

    def follow_logs(self, job: Job, prefix: str, stop: threading.Event) -> None:
        # rank 0's log lines, also in the job's own log file
        self.client(job).follow_logs(job.name, remote_jobs.emitter(prefix, job.log), stop)

    def wait(self, job: Job, prefix: str, stop: threading.Event) -> JobInfo:
        return self.client(job).wait(job.name, on_update=lambda line: _status(job, prefix, line), stop=stop)

    def end_logs(self, job: Job, done: bool, follower: threading.Thread, log_stop: threading.Event) -> None:
        log_stop.set()
        if done:
            follower.join(timeout=10.0)  # a finished pod's stream ends by itself: print its last lines
        self.client(job).close_log_streams()
        follower.join(timeout=1.0)

    def outcome(self, job: Job, info: JobInfo) -> None:
        _outcome(job, info)

    def cancel(self, job: Job) -> None:
        self.client(job).cancel(job.name)

    def left_running(self, job: Job) -> str:
        ns = job.launcher.namespace
        return (
            f"Left {job.ref} running; follow: framework-jobs logs {job.name} -n {ns} --follow; "
            f"cancel: framework-jobs cancel {job.name} -n {ns}"
        )


def _run(jobs: list[Job]) -> None:
    clients = _clients(jobs)
    _run_preflight(jobs, clients)
    remote_jobs.run(jobs, _Backend(clients))


def _status(job: Job, prefix: str, line: str) -> None:
    log.info("%s%s: %s", prefix, job.ref, line)
    job.log(f"{job.ref}: {line}")


def _outcome(job: Job, info: JobInfo) -> None:
    from hydra_plugins.kubernetes_launcher._client import JobFailed

    job.message = info.describe()
    if info.phase == "Succeeded":
        job.status = "COMPLETED"
        job.extra.update(_final_metrics(job))
        return
    if info.done:
        job.status = "FAILED"
        job.error = JobFailed(
            f"Job {job.ref} failed: {info.message or info.phase}", permanent=info.permanent_failure
        )
    else:  # stopped following (Ctrl-C)
        job.status = "INTERRUPTED"


def _final_metrics(job: Job) -> dict[str, Any]:
    """Final eval loss and throughput from the run's metrics, when the pods wrote them somewhere readable."""
    from framework.rundir import JobResult, read_metrics

    uri = job.cfg.storage.output_uri
    if not uri:
        return {}
    try:
        rows = read_metrics(str(uri))
    except Exception as e:  # best effort: the summary shows '-' instead
        log.debug("no metrics for %s: %s", job.name, e)
        return {}
    found = JobResult.from_metrics(job.status, str(uri), rows)
    return {"eval_loss": found.eval_loss, "tokens_per_s": found.tokens_per_s}


# ----------------------------------------------------------------------------------------------- results
def _value(job: Job) -> dict[str, Any]:
    from hydra_plugins.kubernetes_launcher._backends import BACKENDS

    return remote_jobs.value(
        job,
        _render.pod_run_dir(job.cfg, job.name),
        job=job.name,
        namespace=str(job.launcher.namespace),
        kind=BACKENDS[str(job.launcher.backend)].kind,
        manifests=str(job.out_dir / "manifests.yaml"),
        message=job.message,
    )


def _job_return(job: Job) -> JobReturn:
    from hydra_plugins.kubernetes_launcher._client import KubernetesError

    return remote_jobs.job_return(
        job,
        cfg=_task_cfg(job.cfg),  # as a task sees it: no hydra node (Hydra's contract)
        working_dir=str(job.out_dir),
        value=lambda: _value(job),
        failure=lambda: KubernetesError(f"Job {job.ref} failed: {job.message}"),
    )
