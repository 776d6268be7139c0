"""The training loop every training recipe calls: data, model, DeepSpeed engine, eval, checkpoints, metrics,
resume.

Plain functions and small collaborators, no base class: a recipe decides what is trainable (its
``prepare_model``) and what is written at the end (its ``export``, which returns the names it wrote); the loop
in :func:`train` knows no recipe. :class:`Checkpointer` saves, polls, commits and publishes checkpoints;
:class:`Outputs` writes the metrics file, trackers, Prometheus and the progress bar; :func:`run_eval` evaluates.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from framework import checkpoint
from framework import dataset as data
from framework import distributed as dist
from framework.config import resolved, resolved_yaml
from framework.errors import ConfigError, DataError, Preempted
from framework.rundir import STEP_LOGS, JobResult, MetricsLog, RunDir
from recipes import trains

log = logging.getLogger("framework")


# ----------------------------------------------------------------------------------------------- set-up


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cpu_threads(cfg: DictConfig, available: int) -> int:
    """Intra-op threads per process: ``hardware.cpu_threads`` when set; else the cores shared out over the
    processes, except one for a small model on CPU (hidden_size < 512). Its matmuls are too small to split, and
    threads spin-waiting for cores that other jobs hold slowed the 2-core demo ~9x (367 s vs 40 s end to end
    under load; ~5% slower with 1 thread on an idle machine)."""
    hw = cfg.hardware
    if hw.cpu_threads:
        return int(hw.cpu_threads)
    if hw.accelerator == "cpu" and int(cfg.model.hidden_size) < 512:
        return 1
    return max(1, available // max(1, int(dist.world_size())))


def deepspeed_config(cfg: DictConfig) -> dict[str, Any]:
    """The DeepSpeed config, derived from the recipe and the hardware profile."""
    hw, tr, opt = cfg.hardware, cfg.train, cfg.optim
    zero: dict[str, Any] = {
        "stage": hw.zero_stage,
        "contiguous_gradients": True,
        # Overlapping reduction with backward pays on GPUs; on gloo it only adds threads.
        "overlap_comm": hw.accelerator == "cuda",
        "reduce_bucket_size": int(hw.bucket_size),
        "allgather_bucket_size": int(hw.bucket_size),
    }
    if hw.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if hw.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": hw.accelerator == "cuda"}
    if hw.offload_param:
        zero["offload_param"] = {"device": "cpu", "pin_memory": hw.accelerator == "cuda"}
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": tr.micro_batch_size,
        "gradient_accumulation_steps": tr.grad_accum,
        "gradient_clipping": float(tr.grad_clip),
        "zero_optimization": zero,
        "bf16": {"enabled": hw.precision == "bf16"},
        "fp16": {"enabled": hw.precision == "fp16"},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
    }
    if opt.name == "adamw":
        # torch_adam: the stock torch AdamW, so no fused op is compiled on first start.
        ds["optimizer"] = {
            "type": "AdamW",
            "params": {
                "lr": opt.lr,
                "betas": list(opt.betas),
                "eps": opt.eps,
                "weight_decay": opt.weight_decay,
                "torch_adam": True,
            },
        }
    return ds


def lr_lambda(cfg: DictConfig, total_steps: int) -> Callable[[int], float]:
    """Linear warmup, then cosine decay to ``min_lr_ratio`` (or constant)."""
    warmup = cfg.scheduler.warmup_steps
    floor = cfg.scheduler.min_lr_ratio
    name = cfg.scheduler.name

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if name == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


@dataclass
class Data:
    train: data.Batches
    val: list[data.Sequence]
    steps: int  # optimizer steps for the whole run


def prepare_data(cfg: DictConfig, tokenizer: Any) -> Data:
    """The prepared splits (``python -m framework.prepare``), or tokenized here when there are none yet; a
    node's first local rank then stores them in a local cache root for the next run (framework.data.prepared)."""
    from framework import storage

    ds, tr = cfg.dataset, cfg.train
    write = dist.local_rank() == 0 and not storage.is_remote(data.prepared_root(ds))
    prepared = data.load_or_prepare(ds, tokenizer, tr.seed, write=write)
    if dist.is_rank0():
        data.report(prepared)
    pad = tokenizer.pad_token_id
    train_rows = data.Rows(prepared.train, ds.max_seq_len, pad)
    val_rows = list(data.Rows(prepared.validation, ds.max_seq_len, pad))
    world = dist.world_size()
    batches = data.Batches(train_rows, tr.micro_batch_size, world, dist.rank(), tr.seed)
    if batches.per_epoch == 0:
        raise DataError(
            f"the train split packs into {len(train_rows)} sequences, fewer than one global micro batch "
            f"(train.micro_batch_size x world size = {tr.micro_batch_size} x {world}); lower "
            "train.micro_batch_size or dataset.max_seq_len, or add data"
        )
    if tr.max_steps is not None:
        steps = int(tr.max_steps)
    else:
        steps = max(1, math.ceil(float(tr.epochs) * batches.per_epoch / tr.grad_accum))
    return Data(batches, val_rows, steps)


# ----------------------------------------------------------------------------------------------- signals

# Stop requests that reach a rank other than as a signal to its own thread, each returning a signal number (0:
# none). A Ray Train rank runs the loop off the main thread, so ray_launcher._train relays its process's SIGTERM
# and Ray's node-drain notice through here.
STOP_SOURCES: list[Callable[[], int]] = []


@dataclass
class StopFlag:
    """Set by SIGTERM/SIGINT; checked (and agreed on by all ranks) at each step boundary."""

    signum: int = 0
    previous: dict[int, Any] = field(default_factory=dict)
    at: float = 0.0  # monotonic time of the first signal
    # A pod-wide SIGTERM reaches each worker twice (directly, and forwarded by torchrun) within moments: the
    # copy is ignored, or the worker would die mid-collective without a checkpoint. Only a deliberate second
    # interrupt (Ctrl-C twice, or SIGTERM again later) exits at once.
    duplicate_window_s: float = 5.0

    def install(self) -> None:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return  # a Ray Train rank runs the loop in a thread: its launcher relays signals via STOP_SOURCES
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum:
            if signum == signal.SIGTERM and time.monotonic() - self.at < self.duplicate_window_s:
                log.info("Ignoring a duplicate SIGTERM (already stopping at the next step boundary)")
                return
            # Second signal: leave at once. `latest` is written atomically, so it is never half-written.
            raise SystemExit(128 + signum)
        self.signum, self.at = signum, time.monotonic()
        log.warning("Received signal %d: saving a checkpoint at the next step boundary, then exiting", signum)

    def requested(self) -> int:
        """This rank's stop request so far: a signal it got, or one a STOP_SOURCES entry reports (0: none)."""
        for source in STOP_SOURCES if not self.signum else ():
            signum = source()
            if signum:
                self.signum, self.at = signum, time.monotonic()
                log.warning(
                    "Stop requested (signal %d): saving a checkpoint at this step, then exiting", signum
                )
                break
        return self.signum

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


# ----------------------------------------------------------------------------------------------- loop


def evaluate(engine: Any, rows: list[data.Sequence], micro: int, max_batches: int) -> tuple[float, float]:
    """Token-weighted mean loss over this rank's share of the validation rows, reduced over ranks."""
    import torch

    engine.eval()
    mine = rows[dist.rank() :: dist.world_size()]
    batches = [mine[i : i + micro] for i in range(0, len(mine), micro)]
    if max_batches:
        batches = batches[:max_batches]
    loss_sum, n_tok = 0.0, 0.0
    with torch.no_grad():
        for rows_b in batches:
            batch = {k: v.to(engine.device) for k, v in data.collate(rows_b).items()}
            n = int((batch["labels"][:, 1:] != data.IGNORE_INDEX).sum())
            if n == 0:
                continue
            out = engine(**batch)
            loss_sum += float(out.loss) * n
            n_tok += n
    engine.train()
    loss_sum, n_tok = dist.all_reduce_sum([loss_sum, n_tok])
    loss = loss_sum / max(n_tok, 1.0)
    return loss, math.exp(min(loss, 50.0))


def micro_step(engine: Any, rows: list[data.Sequence]) -> Any:
    """One micro batch on the engine: forward, backward, ``engine.step()`` (DeepSpeed applies the optimizer at
    the accumulation boundary). Returns the detached loss tensor, so the caller syncs with the device once."""
    batch = {k: v.to(engine.device, non_blocking=True) for k, v in data.collate(rows).items()}
    out = engine(**batch)
    engine.backward(out.loss)
    engine.step()
    return out.loss.detach()


def compat_state(cfg: DictConfig) -> dict[str, Any]:
    """What a checkpoint must agree on with the run that loads it (else the weights would load as garbage)."""
    return {
        "world_size": dist.world_size(),
        "model": cfg.model.name,
        "finetune": trains(cfg.recipe.name),
        "lora_r": cfg.lora.r if trains(cfg.recipe.name) == "lora" and cfg.lora is not None else None,
        "zero_stage": cfg.hardware.zero_stage,
    }


def resolve_resume(cfg: DictConfig, run: RunDir) -> tuple[Path, str] | None:
    """Which checkpoint to resume from: auto (latest if intact, else the newest intact one) | none | <step> |
    <checkpoint dir, or a checkpoints dir with ``latest``: local or a URI>. Remote checkpoints are downloaded
    first (by each node); every choice is verified against its manifest before anything is loaded."""
    from framework import storage

    mode = str(cfg.resume)
    if mode == "none":
        return None
    if mode == "auto":
        if run.remote:
            tag = checkpoint.fetch_remote(run.remote_checkpoints, run.checkpoints)
        else:
            tag = checkpoint.newest_intact(run.checkpoints, move_damaged=True)
        if tag is not None:
            same_run_or_refuse(cfg, run.checkpoints, tag)
        return (run.checkpoints, tag) if tag else None
    if mode.isdigit():
        tag = checkpoint.tag_for(int(mode))
        if run.remote:
            checkpoint.fetch_remote(run.remote_checkpoints, run.checkpoints, tag)
        elif not (run.checkpoints / tag).is_dir():
            raise ConfigError(f"resume={mode}: {run.checkpoints / tag} does not exist")
        else:
            checkpoint.require_intact(run.checkpoints, tag, f"resume={mode}")
        return run.checkpoints, tag
    if storage.is_remote(mode):
        uri = mode.rstrip("/")
        parent, _, name = uri.rpartition("/")
        local = run.resume_staging
        if checkpoint.TAG_RE.match(name):
            return local, str(checkpoint.fetch_remote(parent, local, name))
        tag = checkpoint.fetch_remote(uri, local)
        if tag is None:
            raise ConfigError(
                f"resume={mode}: neither a checkpoint (…/checkpoints/step_<N>) nor a checkpoints directory "
                f"with a {checkpoint.LATEST} file; point resume= at one of those, or use resume=auto"
            )
        return local, tag
    path = Path(mode).expanduser()
    if path.is_dir() and checkpoint.TAG_RE.match(path.name):
        checkpoint.require_intact(path.parent, path.name, f"resume={mode}")
        return path.parent, path.name
    if path.is_dir() and os.path.lexists(path / checkpoint.LATEST):
        tag = checkpoint.newest_intact(path)  # another run's: damaged ones are skipped, not moved
        if tag is not None:
            return path, tag
    raise ConfigError(
        f"resume={mode!r} is neither auto, none, a step number, nor a checkpoint directory; "
        "pass e.g. resume=auto, resume=40 or resume=s3://bucket/runs/x/checkpoints/step_40"
    )


def same_run_or_refuse(cfg: DictConfig, root: Path, tag: str) -> None:
    """resume=auto continues the same run: a checkpoint written with another dataset, model, tokenizer or
    recipe is refused (exit 2) naming the keys that differ (checkpoint.MAY_CHANGE lists what may change)."""
    saved = checkpoint.recorded(root, tag).get("config")
    if not isinstance(saved, dict):
        return  # written before checkpoints recorded their config
    changes = checkpoint.config_changes(saved, resolved(cfg))
    if changes:
        raise ConfigError(
            f"resume=auto: the checkpoint {root / tag} was written by a different run; changed: "
            f"{'; '.join(changes[:8])}{f' (and {len(changes) - 8} more)' if len(changes) > 8 else ''}. "
            "Start a new run in another run directory (e.g. hydra.run.dir=<new dir> or a new "
            "storage.output_uri), or start over here with resume=none"
        )


@dataclass
class Job:
    """What one rank trains: the engine and its data, and where in the run it stands."""

    engine: Any
    scheduler: Any
    data: Data
    tokenizer: Any
    step: int = 0  # optimizer steps done
    consumed: int = 0  # micro batches drawn from the data order
    best_loss: float = math.inf  # train.keep_best: the lowest eval loss so far
    best_pending: int = -1  # train.keep_best: the step whose checkpoint becomes ``best``


def build_engine(cfg: DictConfig, model: Any, steps: int) -> tuple[Any, Any]:
    """The DeepSpeed engine (optimizer, LR schedule, ZeRO) over the trainable parameters of ``model``."""
    import torch

    # Without the ~0.8 s MLflow import of DeepSpeed's autotuner.
    deepspeed = dist.import_deepspeed(cfg.hardware.accelerator)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = None
    if cfg.optim.name == "sgd":
        optimizer = torch.optim.SGD(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    schedule = lr_lambda(cfg, steps)
    engine, _, _, scheduler = deepspeed.initialize(
        model=model,
        model_parameters=params,
        optimizer=optimizer,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
        config=deepspeed_config(cfg),
        dist_init_required=False,
    )
    return engine, scheduler


def setup(cfg: DictConfig, run: RunDir, prepare_model: Callable[[DictConfig, Any], Any]) -> Job:
    """Process group, run directory, seeds, data, the recipe's model, the engine, and the resumed position."""
    import torch

    from framework import storage
    from framework.model import count_params, load_tokenizer

    storage.configure_from_config(cfg.storage)
    dist.init(cfg.hardware.accelerator)
    if run.remote and dist.local_rank() == 0:
        shutil.rmtree(run.path, ignore_errors=True)  # staging is per run: the remote copy is the truth
    dist.barrier()
    run.path.mkdir(parents=True, exist_ok=True)
    if dist.is_rank0():
        log.info("Run directory: %s", run.uri if run.remote else run.path.resolve())
        log.info("World: %d process(es) %s", dist.world_size(), dist.describe())
    # Chosen (and verified) before anything heavy starts, so a damaged or foreign checkpoint fails in seconds.
    resume_from = resolve_resume(cfg, run)
    seed_everything(cfg.train.seed)
    torch.set_num_threads(cpu_threads(cfg, torch.get_num_threads()))

    tokenizer = load_tokenizer(cfg)
    d = prepare_data(cfg, tokenizer)
    model = prepare_model(cfg, tokenizer)
    if cfg.train.compile:
        from framework.kernels import compile_model

        log.info(
            "train.compile: compiled %d decoder layers (first steps include compile time)",
            compile_model(model),
        )
    total, trainable = count_params(model)
    if dist.is_rank0():
        log.info(
            "Model %s: %s parameters, %s trainable (%.2f%%); %d train sequences of %d tokens, %d val, %d steps",
            cfg.model.name,
            f"{total:,}",
            f"{trainable:,}",
            100 * trainable / max(total, 1),
            len(d.train.rows),
            cfg.dataset.max_seq_len,
            len(d.val),
            d.steps,
        )
    engine, scheduler = build_engine(cfg, model, d.steps)
    job = Job(engine, scheduler, d, tokenizer)
    if resume_from is not None:
        resume(cfg, run, job, *resume_from)
    elif (
        dist.is_rank0()
    ):  # a fresh start: lines of an earlier attempt that left no checkpoint would repeat its steps
        run.truncate_metrics(after_step=-1)  # keeps no line
    if dist.is_rank0():
        # Only now: a start that fails earlier leaves an earlier attempt's config.yaml as it was.
        run.write_config(resolved_yaml(cfg))
    return job


def resume(cfg: DictConfig, run: RunDir, job: Job, root: Path, tag: str) -> None:
    """Load checkpoint ``tag`` under ``root`` (chosen by resolve_resume) into ``job``; drop metrics logged past
    it."""
    from framework import storage

    state = checkpoint.load(job.engine, root, tag, expect=compat_state(cfg))
    job.step, job.consumed = int(state["step"]), int(state["consumed"])
    job.best_loss = float(state.get("best_eval_loss", math.inf))  # absent in checkpoints before keep_best
    if root == run.resume_staging:  # another run's checkpoint, downloaded for this start only
        source: Any = cfg.resume
        dist.barrier()
        if dist.local_rank() == 0:
            shutil.rmtree(root, ignore_errors=True)
    else:
        source = storage.join(run.remote_checkpoints, tag) if run.remote else root / tag
    if dist.is_rank0():
        log.info("Resumed from %s at step %d", source, job.step)
        run.fetch_metrics()
        run.truncate_metrics(job.step)


class Outputs:
    """Where a rank reports: metrics file (rank 0), trackers, Prometheus, the progress bar; and the figures the
    run's result is made of (last train line, last eval, mean throughput)."""

    def __init__(self, cfg: DictConfig, run: RunDir, start_step: int, total_steps: int) -> None:
        from tqdm import tqdm

        from framework.metrics_server import maybe_start_metrics_server
        from framework.tracking import make_trackers
        from framework.trainer_status import maybe_reporter as maybe_trainer_reporter

        rank0 = dist.is_rank0()
        self.run = run
        self.tracker = make_trackers(
            cfg.tracking, run.uri, cfg.run_name, resolved(cfg), rank0, start_step=start_step
        )
        self.prom = maybe_start_metrics_server(cfg.tracking.prometheus, cfg.run_name)
        # Kubeflow Trainer's trainerStatus, when set
        self.progress = maybe_trainer_reporter(total_steps, start_step, rank0)
        self.metrics = MetricsLog(
            run.metrics, rank0, [lambda r: self.tracker.log_metrics(r, r["step"]), self.progress.report]
        )
        self.bar = tqdm(
            total=total_steps,
            initial=start_step,
            disable=not (rank0 and cfg.train.progress),
            dynamic_ncols=True,
            desc="train",
            unit="step",
        )
        self.samples: Any = None  # eval.samples: generated at every eval (framework.evaluation.Samples)
        self.last: dict[str, Any] = {}
        self.last_eval: dict[str, Any] = {}
        self._rates: list[float] = []

    def train_line(self, record: dict[str, Any], write: bool, **gauges: float) -> None:
        from framework.metrics_server import cuda_memory_bytes

        self.last = record
        self._rates.append(record["tokens_per_s"])
        if write:
            self.metrics.write(record)
        self.prom.update(**record, **gauges, **cuda_memory_bytes())
        self.bar.set_postfix(
            loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:,.0f}", refresh=False
        )
        self.bar.update(1)

    def eval_line(self, step: int, eval_loss: float, ppl: float) -> None:
        self.last_eval = {"step": step, "eval_loss": eval_loss, "perplexity": ppl}
        self.metrics.write(self.last_eval)
        self.prom.update(eval_loss=eval_loss)
        if dist.is_rank0():
            self.bar.write(f"step {step}: eval_loss {eval_loss:.4f}  perplexity {ppl:.2f}")

    def publish_metrics(self) -> None:
        """Rank 0 of a remote run: upload the metrics written so far (at each checkpoint commit)."""
        if dist.is_rank0() and self.run.remote:
            self.metrics.flush()
            for name in STEP_LOGS:  # samples.jsonl too: a resume elsewhere fetches and trims both
                self.run.publish(name)

    def publish_outputs(self, names: list[str]) -> None:
        """Rank 0: upload what the recipe exported, and hand it to the trackers."""
        if not dist.is_rank0():
            return
        for name in names:
            self.run.publish(name)
            if (self.run.path / name).is_dir():
                self.tracker.log_artifact(str(self.run.path / name), name)
        if names:
            self.tracker.register_model(names[0])  # the recipe's main output (tracking.mlflow.register_as)

    def close(self, status: str) -> None:
        self.bar.close()
        self.metrics.close()
        self.tracker.close(status)
        self.progress.close(finished=status == "FINISHED")
        self.prom.stop()

    def result(self, step: int, wall_s: float) -> JobResult:
        return JobResult(
            status="COMPLETED",
            run_dir=self.run.uri,
            steps=step,
            loss=self.last.get("loss"),
            eval_loss=self.last_eval.get("eval_loss"),
            perplexity=self.last_eval.get("perplexity"),
            tokens_per_s=sum(self._rates) / len(self._rates) if self._rates else None,
            wall_s=wall_s,
        )


class Checkpointer:
    """Checkpoint save, poll, commit and publish. A local run directory commits at once (``latest`` written
    last); a remote one uploads in the background (checkpoint.RemoteSync) and commits once every node's upload
    finished, which :meth:`poll` learns from one small collective at the same step boundary on every rank."""

    def __init__(self, engine: Any, run: RunDir, cfg: DictConfig, out: Outputs) -> None:
        self.engine, self.run, self.out = engine, run, out
        self.meta = compat_state(cfg)
        self.config = resolved(cfg)  # recorded in each manifest: resume=auto compares it
        self.keep_last = int(cfg.train.keep_last)
        self.remote = checkpoint.RemoteSync(run.checkpoints, run.remote_checkpoints) if run.remote else None

    def save(self, job: Job, *, blocking: bool = False) -> None:
        t0 = time.time()
        if self.remote is not None and self.remote.tag is not None:
            self._commit(sync=True)  # the previous upload must land before a new one starts
        state = {"step": job.step, "consumed": job.consumed, "best_eval_loss": job.best_loss}
        checkpoint.save(
            self.engine,
            self.run.checkpoints,
            job.step,
            state,
            meta=self.meta,
            config=self.config,
            commit=self.remote is None,
        )
        checkpoint.prune(self.run.checkpoints, self.keep_last)
        if dist.is_rank0():
            log.info("Checkpoint step_%d saved in %.2fs", job.step, time.time() - t0)
        self.out.prom.observe_checkpoint(time.time() - t0)
        if self.remote is not None:
            self.remote.start(checkpoint.tag_for(job.step))
            if blocking:
                self._commit(sync=True)
                if dist.is_rank0():
                    log.info("Checkpoint step_%d uploaded and committed in %.2fs", job.step, time.time() - t0)

    def mark_best(self, job: Job, *, saved: bool) -> None:
        """train.keep_best: the eval at this step was the best so far, so its checkpoint becomes ``best``."""
        if job.best_pending != job.step:
            return
        if not saved:
            self.save(job, blocking=True)
        tag = checkpoint.tag_for(job.step)
        checkpoint.write_best(self.run.checkpoints, tag)
        checkpoint.prune(self.run.checkpoints, self.keep_last)  # the previous best is now one of the old ones
        if self.remote is not None:  # the store's marker waits for this checkpoint's upload to commit
            self.remote.mark_best(tag)

    def poll(self) -> None:
        """Commit a finished background upload; one small collective while an upload is pending."""
        if self.remote is None or self.remote.tag is None:
            return
        busy, failed = dist.all_reduce_max([float(self.remote.busy), float(self.remote.failed)])
        if failed:
            self.remote.raise_error()
        if not busy:
            tag = self.remote.tag
            self._commit(sync=False)
            if dist.is_rank0():
                log.info(
                    "Checkpoint %s uploaded in %.2fs, overlapped with training", tag, self.remote.upload_s
                )

    def _commit(self, *, sync: bool) -> None:
        assert self.remote is not None
        if sync:
            self.remote.sync(self.keep_last)
        else:
            self.remote.commit(self.keep_last)
        self.out.publish_metrics()


def train_step(job: Job, cfg: DictConfig, out: Outputs, stop: StopFlag) -> int:
    """One optimizer step (``grad_accum`` micro batches) and its metrics line; returns the signal any rank got
    (0: none). One collective per step: loss and token counts from every rank, plus any rank's stop request."""
    import torch

    t0 = time.perf_counter()
    losses, tokens, data_s = [], 0, 0.0
    accum = cfg.train.grad_accum
    for _ in range(accum):
        td = time.perf_counter()
        rows = job.data.train.batch(job.consumed)
        data_s += time.perf_counter() - td
        job.consumed += 1
        losses.append(micro_step(job.engine, rows))
        tokens += data.n_real_tokens(rows)
    job.step += 1
    loss_sum = float(torch.stack(losses).sum())  # the only host sync of the step
    own_s = time.perf_counter() - t0  # this rank's compute, before waiting for the others
    loss_sum, tokens_all, n = dist.all_reduce_sum([loss_sum, float(tokens), float(accum)])
    stop_any, slowest_s = dist.all_reduce_max([float(stop.requested()), own_s])
    dt = time.perf_counter() - t0
    loss = loss_sum / n
    lr = job.scheduler.get_last_lr()[0] if job.scheduler is not None else cfg.optim.lr
    record = {"step": job.step, "loss": loss, "lr": lr, "tokens_per_s": tokens_all / dt, "step_time_s": dt}
    write = job.step % cfg.train.log_interval == 0 or job.step == job.data.steps
    # compute_time_s vs the slowest rank's: the straggler alert
    out.train_line(record, write, slowest_step_time_s=slowest_s, compute_time_s=own_s, data_time_s=data_s)
    if not math.isfinite(loss):
        raise FloatingPointError(f"loss is {loss} at step {job.step}; lower optim.lr or check the data")
    return int(stop_any)


def run_eval(job: Job, cfg: DictConfig, out: Outputs) -> None:
    """Eval loss on the validation rows (and, with eval.samples, generated samples); remembers the best."""
    if not job.data.val:
        return
    loss, ppl = evaluate(job.engine, job.data.val, cfg.train.micro_batch_size, cfg.train.eval_max_batches)
    out.eval_line(job.step, loss, ppl)
    if out.samples is not None:
        out.samples(job.engine.module, job.step, out.tracker, zero3=cfg.hardware.zero_stage == 3)
    if cfg.train.keep_best and job.step > 0 and loss < job.best_loss:  # the same on every rank
        job.best_loss, job.best_pending = loss, job.step


def train(
    cfg: DictConfig,
    run: RunDir,
    *,
    prepare_model: Callable[[DictConfig, Any], Any],
    export: Callable[[Any, DictConfig, RunDir, Any], list[str]],
) -> dict[str, Any]:
    """Run the whole training job in this rank; return its JobResult as a dict (rank 0's view).

    ``prepare_model(cfg, tokenizer)`` builds the model with what the recipe trains marked trainable;
    ``export(engine, cfg, run, tokenizer)`` writes the recipe's outputs into ``run.path`` and returns their names.
    """
    t_start = time.time()
    job = setup(cfg, run, prepare_model)
    out = Outputs(cfg, run, job.step, job.data.steps)
    if cfg.eval.samples:
        from framework.evaluation import SAMPLES, Samples

        out.samples = Samples(
            job.data.val, cfg.eval.samples, job.tokenizer, cfg.eval.samples_max_new_tokens, run.path / SAMPLES
        )
    ckpt = Checkpointer(job.engine, run, cfg, out)
    every = cfg.train
    stop = StopFlag()
    stop.install()
    status = "FAILED"
    try:
        if job.step == 0 and every.eval_at_start:
            run_eval(job, cfg, out)  # the baseline every curve starts from
        while job.step < job.data.steps:
            signum = train_step(job, cfg, out, stop)
            last = job.step == job.data.steps
            if every.eval_interval and job.step % every.eval_interval == 0 and not last:
                run_eval(job, cfg, out)
            ckpt.poll()
            if signum:
                ckpt.save(job, blocking=True)
                raise Preempted(
                    f"stopped by signal {signum} at step {job.step}; checkpoint step_{job.step} saved"
                )
            due = bool(every.checkpoint_interval) and job.step % every.checkpoint_interval == 0
            if due and not last:
                ckpt.save(job)
            if not last:
                ckpt.mark_best(job, saved=due)
        run_eval(job, cfg, out)
        ckpt.save(job, blocking=True)
        ckpt.mark_best(job, saved=True)
        out.publish_outputs(export(job.engine, cfg, run, job.tokenizer))
        status = "FINISHED"
    except Preempted:
        status = "KILLED"
        raise
    finally:
        stop.restore()
        out.close(status)
    dist.barrier()
    result = out.result(job.step, time.time() - t_start)
    if dist.is_rank0():
        log.info(
            "Done: %d steps, eval_loss %s, %.1fs; outputs in %s",
            job.step,
            f"{result.eval_loss:.4f}" if result.eval_loss is not None else "-",
            result.wall_s,
            run.uri if run.remote else run.path.resolve(),
        )
    return result.as_dict()


def full_state_dict(engine: Any) -> dict[str, Any] | None:
    """The full (unpartitioned) state dict on rank 0; None on other ranks. A collective under ZeRO-3."""
    if engine.zero_optimization_stage() == 3:
        sd = engine._zero3_consolidated_16bit_state_dict()
        return sd if dist.is_rank0() else None
    return engine.module.state_dict() if dist.is_rank0() else None
