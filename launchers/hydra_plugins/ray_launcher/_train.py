"""Inside the Ray job: the driver starts a Ray Train ``TorchTrainer``; every worker runs the recipe unchanged.

The framework's task calls :func:`run_on_ray` when ``launcher.name=ray`` (the job ``launcher=ray`` submitted, or a
RayJob's entrypoint with ``launcher.address=auto``). Ray Train starts hardware.nodes x nproc_per_node workers
(``_scaling.py``) and sets up their torch process group (gloo on CPU, NCCL on GPU); each worker completes the
rendezvous env of DESIGN.md (RANK, LOCAL_RANK, WORLD_SIZE from Ray Train; NODE_RANK, NNODES, NPROC_PER_NODE,
MASTER_ADDR, MASTER_PORT) and calls the recipe, whose DeepSpeed engine uses that process group.

Failures: a worker-group failure restarts the group (``launcher.max_failures`` times, Ray Train's FailureConfig)
and the recipe resumes from ``checkpoints/latest`` of the run dir (resume=auto). A worker exiting 2 (bad config or
data) is never retried; all workers stopping with 143 (SIGTERM, checkpoint saved) is a preemption, retried without
consuming max_failures. The driver exits 0, 2, 143 or 1 as DESIGN.md says.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from typing import Any

from omegaconf import DictConfig, OmegaConf

from framework.config import resolved
from framework.errors import EXIT_PREEMPTED, EXIT_RUNTIME, EXIT_USAGE, Preempted

log = logging.getLogger("framework")


# ------------------------------------------------------------------------------------------------ workers
def _worker_exit_code(error: BaseException | None) -> int | None:
    """The framework exit code a worker's exception carries (Ray wraps it), or None for anything else."""
    seen = 0
    while error is not None and seen < 5:
        code = getattr(type(error), "exit_code", None)
        if isinstance(code, int) and type(error).__module__.startswith("framework"):
            return code
        # UserExceptionWithTraceback (Ray Train) keeps the user's exception; RayTaskError keeps it as `cause`.
        error = getattr(error, "_base_exc", None) or getattr(error, "cause", None)
        seen += 1
    return None


def worker_exit_codes(error: BaseException) -> list[int | None]:
    failures = getattr(error, "worker_failures", None) or {}
    return [_worker_exit_code(e) for e in failures.values()]


def outcome_code(error: BaseException) -> int:
    """The driver's exit code for a failed Ray Train run: 2 if any worker exited 2, 143 if every failed worker
    stopped on SIGTERM, else 1."""
    codes = worker_exit_codes(error)
    if EXIT_USAGE in codes:
        return EXIT_USAGE
    if codes and all(c == EXIT_PREEMPTED for c in codes):
        return EXIT_PREEMPTED
    return EXIT_RUNTIME


def rendezvous_env(ctx: Any, nnodes: int) -> dict[str, str]:
    """DESIGN.md's rendezvous env from Ray Train's context (MASTER_ADDR/PORT are Ray Train's own, for env://)."""
    return {
        "RANK": str(ctx.get_world_rank()),
        "LOCAL_RANK": str(ctx.get_local_rank()),
        "WORLD_SIZE": str(ctx.get_world_size()),
        "LOCAL_WORLD_SIZE": str(ctx.get_local_world_size()),
        "NODE_RANK": str(ctx.get_node_rank()),
        "NPROC_PER_NODE": str(ctx.get_local_world_size()),
        "NNODES": str(nnodes),
    }


# A SIGTERM to a worker process (its pod deleted, a kill from the node) must end in a checkpoint at the current
# step, as under torchrun. Ray runs train_worker in a thread of the worker actor, where signal.signal is refused,
# and the actor's main thread has Ray's handler (worker.main_loop), which exits the process at once. The actor
# runs its tasks on that main thread, so train_worker asks its own actor to install ours there
# (RayTrainWorker.execute): the first SIGTERM only records the request; the loop polls it through
# train.STOP_SOURCES, all ranks agree on the step in train_step's all-reduce, save, and exit 143 (a preemption:
# retried without consuming max_failures). A node drain (Ray's raylet marks its node draining on SIGTERM; Ray
# Train's PreemptionWatcher tells every worker) is the same request. A second SIGTERM after the duplicate window
# goes on to Ray's handler.
# window_s: as train.StopFlag's duplicate window (a pod-wide SIGTERM can reach the worker twice).
_sigterm: dict[str, Any] = {"at": 0.0, "previous": None, "window_s": 5.0}


def _on_sigterm(signum: int, frame: Any) -> None:
    now = time.monotonic()
    if not _sigterm["at"]:
        _sigterm["at"] = now
        log.warning("Ray worker %d got SIGTERM: checkpointing at the next step boundary", os.getpid())
        return
    if now - _sigterm["at"] < _sigterm["window_s"]:
        return  # the pod-wide copy of the same SIGTERM
    previous = _sigterm["previous"]
    if callable(previous):
        previous(signum, frame)
    raise SystemExit(128 + signum)


def _install_sigterm_relay() -> bool:
    """On the actor's main thread: our SIGTERM handler in place of Ray's. False off the main thread."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return False
    _sigterm["at"] = 0.0
    _sigterm["previous"] = signal.signal(signal.SIGTERM, _on_sigterm)
    return True


def _restore_sigterm() -> None:
    if _sigterm["previous"] is not None:
        signal.signal(signal.SIGTERM, _sigterm["previous"])
        _sigterm["previous"] = None


def _on_main_thread(fn: Any) -> Any:
    """Run ``fn()`` as a task of this worker's own actor, i.e. on its main thread (the loop's thread is not)."""
    import ray

    actor = ray.get_runtime_context().current_actor
    return ray.get(actor.execute.remote(fn), timeout=60)


def stop_requested() -> int:
    """train.STOP_SOURCES entry: SIGTERM if this worker process got one or Ray Train says its node is draining."""
    if _sigterm["at"]:
        return signal.SIGTERM
    try:
        from ray.train.v2._internal.execution.context import get_train_context

        preemption = get_train_context().preemption_context.preemption_info
    except Exception:  # another Ray Train: no drain notice to read
        return 0
    if preemption is not None:
        log.warning("Ray Train reports a preemption (node drain): %s", preemption)
        return signal.SIGTERM
    return 0


def train_worker(config: dict[str, Any]) -> dict[str, Any]:
    """One Ray Train worker: the rendezvous env, logging as torchrun ranks have it, then the recipe."""
    import ray.train
    import torch.distributed as tdist

    from framework.__main__ import recipe_entry
    from framework.validate import with_schema

    ctx = ray.train.get_context()
    node_rank = ctx.get_node_rank()
    nnodes = node_rank + 1
    if tdist.is_initialized() and tdist.get_world_size() > 1:  # Ray Train set up the group before calling us
        import torch
        from ray.train.torch import get_device

        t = torch.tensor([node_rank], dtype=torch.int64, device=get_device())  # this worker's GPU under NCCL
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        nnodes = int(t.item()) + 1
    os.environ.update(rendezvous_env(ctx, nnodes))
    rank0 = ctx.get_world_rank() == 0
    logging.basicConfig(
        level=logging.INFO if rank0 else logging.WARNING,
        format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s",
        stream=sys.stderr,
        force=True,
    )
    cfg = with_schema(OmegaConf.create(config["config"]))
    from framework.train import STOP_SOURCES

    relayed = False
    try:
        relayed = bool(_on_main_thread(_install_sigterm_relay))
    except Exception as e:  # then a SIGTERM ends this worker as Ray does; the group resumes from `latest`
        log.warning("SIGTERM handler not installed on the Ray worker's main thread: %s", e)
    if not relayed:
        log.warning(
            "A SIGTERM to this Ray worker ends it without a checkpoint (no handler on its main thread)"
        )
    STOP_SOURCES.append(stop_requested)
    try:
        result: dict[str, Any] = recipe_entry(str(cfg.recipe.name))(cfg)
    finally:
        STOP_SOURCES.remove(stop_requested)
        if relayed:
            try:
                _on_main_thread(_restore_sigterm)
            except Exception as e:  # the actor is going away; nothing to restore for
                log.debug("SIGTERM handler not restored: %s", e)
    return result


# ------------------------------------------------------------------------------------------------ driver
def _failure_policy(failure_config: Any) -> Any:
    """Ray Train's default policy, except that exit 2 is never retried and exit 143 counts as a preemption."""
    from ray.train.v2._internal.execution.failure_handling import DefaultFailurePolicy, FailureDecision

    class FrameworkFailurePolicy(DefaultFailurePolicy):  # type: ignore[misc, valid-type]
        def make_decision(self, training_failed_error: Any) -> Any:
            codes = worker_exit_codes(training_failed_error)
            if EXIT_USAGE in codes:
                logger = logging.getLogger("ray.train")
                logger.error("A worker exited 2 (bad config or data): not retrying")
                return FailureDecision.RAISE
            if codes and all(c == EXIT_PREEMPTED for c in codes):
                self._preemption_failures += 1
                limit = self.failure_config.max_preemption_failures
                if limit == -1 or self._preemption_failures <= limit:
                    return FailureDecision.RETRY
                return FailureDecision.RAISE
            return super().make_decision(training_failed_error)

    return FrameworkFailurePolicy(failure_config)


def _trainer_class() -> Any:
    from ray.train.torch import TorchTrainer

    if not hasattr(TorchTrainer, "_initialize_and_run_controller"):  # another Ray: its default policy applies
        log.warning("This Ray Train has no controller hook: a worker exiting 2 may be retried")
        return TorchTrainer

    class FrameworkTrainer(TorchTrainer):  # type: ignore[misc, valid-type]
        def _initialize_and_run_controller(self, **kwargs: Any) -> Any:
            kwargs["failure_policy"] = _failure_policy(self.run_config.failure_config)
            return super()._initialize_and_run_controller(**kwargs)

    return FrameworkTrainer


def connect(address: str) -> None:
    """ray.init for the driver: the cluster this job runs in ($RAY_ADDRESS), else launcher.address."""
    import ray

    if ray.is_initialized():
        return
    target = os.environ.get("RAY_ADDRESS") or (address if not address.startswith("http") else "auto")
    ray.init(address=target, log_to_driver=True)


def check_resources(scaling: Any) -> None:
    import ray
    from hydra_plugins.ray_launcher._client import RayError
    from hydra_plugins.ray_launcher._scaling import missing_resources

    nodes = [dict(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")]
    problem = missing_resources(scaling, nodes)
    if problem:
        raise RayError(problem, EXIT_USAGE)


def _raise_preempted(signum: int, frame: Any) -> None:
    raise Preempted(
        f"the Ray job's driver got signal {signum}; resubmit with the same run directory to resume"
    )


def run_on_ray(cfg: DictConfig, run_dir: str) -> dict[str, Any]:
    """The driver: start the TorchTrainer, wait for it, and turn its outcome into the framework's result."""
    from hydra_plugins.ray_launcher._client import RayError, RayNotInstalled
    from hydra_plugins.ray_launcher._scaling import scaling

    try:
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig
    except ImportError as e:
        raise RayNotInstalled("launcher=ray (the Ray job's driver)") from e

    connect(str(cfg.launcher.address))
    s = scaling(cfg.hardware, float(cfg.launcher.ray_memory_fraction))
    check_resources(s)
    plain = resolved(cfg)
    plain["storage"]["output_uri"] = run_dir  # a restarted worker group finds checkpoints/latest here
    name = str(os.environ.get("RAY_JOB_SUBMISSION_ID") or plain["run_name"])
    trainer = _trainer_class()(
        train_worker,
        train_loop_config={"config": plain},
        scaling_config=ScalingConfig(**s.scaling_config_kwargs()),
        torch_config=TorchConfig(backend="nccl" if s.use_gpu else "gloo"),
        run_config=RunConfig(
            name=name,
            storage_path=os.environ.get("FRAMEWORK_RAY_STORAGE", os.path.join("/tmp", "ray_results")),
            failure_config=FailureConfig(max_failures=int(cfg.launcher.max_failures)),
        ),
    )
    log.info(
        "Ray Train: %d worker(s) x %s, %s; run directory %s; max_failures=%d",
        s.num_workers,
        s.resources_per_worker,
        s.placement_strategy,
        run_dir,
        int(cfg.launcher.max_failures),
    )
    previous = signal.signal(signal.SIGTERM, _raise_preempted)
    t0 = time.time()
    try:
        trainer.fit()
    except Preempted:
        raise
    except Exception as e:
        from ray.train import TrainingFailedError

        if not isinstance(e, TrainingFailedError):
            raise
        code = outcome_code(e)
        raise RayError(f"Ray Train run failed (exit {code}): {_first_lines(e)}", code) from e
    finally:
        signal.signal(signal.SIGTERM, previous)
    from framework.rundir import JobResult, read_metrics

    done = JobResult.from_metrics("COMPLETED", run_dir, read_metrics(run_dir), wall_s=time.time() - t0)
    return done.as_dict()


def _first_lines(e: BaseException, n: int = 12) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return "\n".join(lines[-n:])
