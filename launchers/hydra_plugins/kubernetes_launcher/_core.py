"""What ``KubernetesLauncher.launch()`` does: compose and render every job, then dry-run, or submit and follow.

Every job of a sweep is rendered (and validated) before anything is submitted, so a bad override fails the whole
sweep up front. Submitted jobs run at most ``launcher.max_parallel`` at once; each one's rank-0 log is streamed
(prefixed with the job name when several run). Ctrl-C stops following and, per launcher.cancel_on_interrupt,
deletes the submitted jobs (asking first on a terminal).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobRuntime, JobStatus, configure_log, setup_globals
from hydra_plugins.kubernetes_launcher import _backends, _render, _staging
from hydra_plugins.kubernetes_launcher._client import default_namespace
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from framework.config import config_yaml, resolved
from framework.errors import ConfigError
from framework.launcher_config import sweep_output_uri
from framework.sweep import JobSummary, format_summary

if TYPE_CHECKING:
    from hydra_plugins.kubernetes_launcher._client import JobClient, JobInfo
    from hydra_plugins.kubernetes_launcher.kubernetes_launcher import KubernetesLauncher

log = logging.getLogger(__name__)
_print_lock = threading.Lock()


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


def new_sweep_id() -> str:
    """Six lowercase characters starting with a letter: short, and unique enough per namespace."""
    return "s" + secrets.token_hex(3)[:5]


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


def _validate(cfg: DictConfig) -> None:
    """The framework's config checks and the launcher's (framework.validate asks launcher_problems through its
    table), as one ConfigError, minus local-path existence: paths are read inside the pods, not here."""
    from framework.validate import validate

    # Composed with the schema already: no with_schema() needed. Paths are checked where they are read.
    problems = validate(cfg, gpu_count=None, check_local_paths=False)
    if problems:
        raise ConfigError(problems)


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
    (out / "config.yaml").write_text(config_yaml(job.plain))
    hydra = OmegaConf.to_container(cfg.hydra, resolve=False, enum_to_str=True)
    (out / "hydra.yaml").write_text(config_yaml({"hydra": hydra}))
    (out / "overrides.yaml").write_text(config_yaml(list(job.overrides)))  # type: ignore[arg-type]


def _task_cfg(cfg: DictConfig) -> DictConfig:
    """The job's config without its hydra node (a pickled copy: ~3x faster than OmegaConf.create or deepcopy)."""
    from hydra_plugins.kubernetes_launcher._compose import clone

    task = clone(cfg)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task


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
    if launcher.sweep_id is None:
        launcher.sweep_id = new_sweep_id()
    commit = git_commit()
    jobs = []
    sweep = len(job_overrides) > 1 or initial_job_idx > 0  # more than one job: each its own run dir
    namespaces: dict[Any, str] = {}
    for i, overrides in enumerate(job_overrides):
        idx = initial_job_idx + i
        sweep_config = launcher.hydra_context.config_loader.load_sweep_config(
            launcher.config, list(overrides)
        )
        _check_framework_app(sweep_config)
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = f"{launcher.sweep_id}_{idx}"
            sweep_config.hydra.job.num = idx
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
            _validate(cfg)
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
        job = Job(idx, list(overrides), sweep_config, name, objs, out_dir, plain=plain)
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
    assert launcher.config is not None
    setup_globals()
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    Path(str(launcher.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)

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


def _emit(prefix: str, job: Job | None = None) -> Any:
    def emit(line: str) -> None:
        with _print_lock:
            print(f"{prefix}{line}", flush=True)
        if job is not None:
            job.log(line)  # rank 0's log lines, also in the job's own log file

    return emit


def _run(jobs: list[Job]) -> None:
    clients = _clients(jobs)
    _run_preflight(jobs, clients)
    first = jobs[0].launcher
    stop = threading.Event()
    many = len(jobs) > 1

    def one(job: Job) -> None:
        client = clients[(job.launcher.context, job.launcher.namespace, job.launcher.backend)]
        prefix = f"[{job.name}] " if many else ""
        if stop.is_set():
            job.status, job.message = "CANCELLED", "not submitted (interrupted)"
            return
        t0 = time.monotonic()
        try:
            client.submit(job.objs)
        except Exception as e:
            job.status, job.error, job.message = "FAILED", e, str(e)
            return
        job.submitted = True
        log.info("%sSubmitted %s %s", prefix, client.kind.kind, job.ref)
        if not job.launcher.follow:
            job.status = "SUBMITTED"
            log.info(
                "Follow it with: framework-jobs logs %s -n %s --follow", job.name, job.launcher.namespace
            )
            return
        log_stop = threading.Event()
        follower = threading.Thread(
            target=client.follow_logs,
            args=(job.name, _emit(prefix, job), log_stop),
            daemon=True,
            name=f"logs-{job.name}",
        )
        follower.start()
        info = None
        try:
            info = client.wait(job.name, on_update=lambda line: _status(job, prefix, line), stop=stop)
        except Exception as e:
            job.status, job.error, job.message = "FAILED", e, str(e)
            return
        finally:
            log_stop.set()
            if info is not None and info.done:
                follower.join(timeout=10.0)  # a finished pod's stream ends by itself: print its last lines
            client.close_log_streams()
            follower.join(timeout=1.0)
        job.wall_s = time.monotonic() - t0
        _outcome(job, info)

    pool = cf.ThreadPoolExecutor(max_workers=max(1, int(first.max_parallel)), thread_name_prefix="k8s-job")
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


def _interrupted(jobs: list[Job], clients: dict[tuple[Any, ...], JobClient], policy: str) -> None:
    """Ctrl-C: delete the jobs still running, or leave them, per launcher.cancel_on_interrupt."""
    running = [j for j in jobs if j.submitted and j.status not in ("COMPLETED", "FAILED")]
    for j in jobs:
        if j.status == "RENDERED":
            j.status = "CANCELLED"
    if not running:
        return
    names = ", ".join(j.ref for j in running)
    cancel = policy == "yes"
    if policy == "ask":
        if sys.stdin.isatty():
            try:
                answer = input(f"\nDelete the submitted job(s) {names}? [y/N] ")
            except (EOFError, KeyboardInterrupt):
                answer = ""
            cancel = answer.strip().lower() in ("y", "yes")
        else:
            print(
                "\nNot on a terminal: leaving the job(s) running (launcher.cancel_on_interrupt=ask)",
                file=sys.stderr,
            )
    for job in running:
        client = clients[(job.launcher.context, job.launcher.namespace, job.launcher.backend)]
        if cancel:
            try:
                client.cancel(job.name)
                job.status = "CANCELLED"
                print(f"Deleted {job.ref}", file=sys.stderr)
            except Exception as e:
                print(f"Could not delete {job.ref}: {e}", file=sys.stderr)
        else:
            job.status = "INTERRUPTED"
            print(
                f"Left {job.ref} running; follow: framework-jobs logs {job.name} -n {job.launcher.namespace} --follow; "
                f"cancel: framework-jobs cancel {job.name} -n {job.launcher.namespace}",
                file=sys.stderr,
            )


# ----------------------------------------------------------------------------------------------- results
def _value(job: Job) -> dict[str, Any]:
    from hydra_plugins.kubernetes_launcher._backends import BACKENDS

    from framework.rundir import JobResult

    result = JobResult(
        status=job.status,
        run_dir=_render.pod_run_dir(job.cfg, job.name),
        eval_loss=job.extra.get("eval_loss"),
        tokens_per_s=job.extra.get("tokens_per_s"),
        wall_s=job.wall_s,
        error=str(job.error) if job.error is not None else None,
    )
    return result.as_dict(
        job=job.name,
        namespace=str(job.launcher.namespace),
        kind=BACKENDS[str(job.launcher.backend)].kind,
        manifests=str(job.out_dir / "manifests.yaml"),
        message=job.message,
    )


def _job_return(job: Job) -> JobReturn:
    from hydra_plugins.kubernetes_launcher._client import KubernetesError

    ret = JobReturn(
        overrides=job.overrides,
        cfg=_task_cfg(job.cfg),  # as a task sees it: no hydra node (Hydra's contract)
        hydra_cfg=job.cfg,  # its hydra node, without a copy (read-only for the caller)
        working_dir=str(job.out_dir),
        task_name=JobRuntime.instance().get("name"),
    )
    if job.status == "FAILED":
        ret.status = JobStatus.FAILED
        ret.return_value = job.error or KubernetesError(f"Job {job.ref} failed: {job.message}")
    else:
        ret.status = JobStatus.COMPLETED
        ret.return_value = _value(job)
    return ret
