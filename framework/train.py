"""The training loop both recipes call: data, model, DeepSpeed engine, eval, checkpoints, metrics, resume.

Plain functions, no base class: a recipe decides what is trainable (LoRA adapters or every weight) and what is
written at the end; everything else is here.
"""

from __future__ import annotations

import hashlib
import json
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
    if hw.get("cpu_threads"):
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
        "reduce_bucket_size": int(hw.get("bucket_size", 500_000_000)),
        "allgather_bucket_size": int(hw.get("bucket_size", 500_000_000)),
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


# ----------------------------------------------------------------------------------------------- run dir


@dataclass
class RunDir:
    """The run directory of DESIGN.md at ``uri`` (local path or any fsspec URI).

    A remote run directory is worked on in a local staging copy (``path``) and published file by file:
    config and metrics by rank 0, checkpoints by every node (see checkpoint.RemoteSync), outputs at the end.
    """

    uri: str
    path: Path

    @classmethod
    def at(cls, uri: str | Path) -> RunDir:
        from framework import storage

        uri = str(uri)
        if not storage.is_remote(uri):
            local = Path(uri.removeprefix("file://"))
            return cls(str(local), local)
        digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
        return cls(uri, storage.cache_root() / "runs" / digest)

    @property
    def remote(self) -> bool:
        return self.uri != str(self.path)

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def resume_staging(self) -> Path:
        """Where another run's checkpoint named by ``resume=<URI>`` is downloaded for one start (not
        ``checkpoints``: it is not one of this run's)."""
        return self.path / ".resume"

    @property
    def remote_checkpoints(self) -> str:
        from framework import storage

        return storage.join(self.uri, "checkpoints")

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    def publish(self, name: str) -> None:
        """Upload one file or directory of the staging copy (no-op for a local run directory)."""
        from framework import storage

        if not self.remote or not (self.path / name).exists():
            return
        if (self.path / name).is_dir():
            storage.upload_dir(self.path / name, storage.join(self.uri, name))
        else:
            storage.put_file(self.path / name, storage.join(self.uri, name))

    def fetch_metrics(self) -> None:
        """Bring a remote run's metrics.jsonl into the staging copy before resuming."""
        from framework import storage

        remote = storage.join(self.uri, "metrics.jsonl")
        if self.remote and storage.exists(remote):
            storage.get_file(remote, self.metrics)

    def write_config(self, cfg: DictConfig) -> None:
        (self.path / "config.yaml").write_text(resolved_yaml(cfg))
        self.publish("config.yaml")

    def truncate_metrics(self, after_step: int) -> None:
        """Drop lines a preempted run wrote past its last checkpoint, so a resume does not repeat steps."""
        if not self.metrics.is_file():
            return
        keep, bad = [], []
        lines = self.metrics.read_bytes().decode("utf-8", errors="replace").splitlines()
        for i, ln in enumerate(lines, 1):
            try:
                rec = json.loads(ln) if ln.strip() else None
            except ValueError:
                rec = None
            if isinstance(rec, dict) and isinstance(rec.get("step"), int):
                if rec["step"] <= after_step:
                    keep.append(ln)
            elif ln.strip():
                bad.append(i)
        # A torn last line is what a kill mid-write leaves: dropped quietly; damage elsewhere is named.
        if bad and bad != [len(lines)]:
            log.warning("%s: dropped unreadable line(s) %s", self.metrics, bad[:10])
        self.metrics.write_text("".join(f"{ln}\n" for ln in keep))


class MetricsLog:
    """Rank 0 appends one JSON object per line to metrics.jsonl; other ranks write nothing."""

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


# ----------------------------------------------------------------------------------------------- signals


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
            return  # a Ray Train worker runs the loop in a thread: Ray handles that process's signals
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
        "finetune": cfg.recipe.finetune,
        "lora_r": cfg.lora.r if cfg.recipe.finetune == "lora" and cfg.lora is not None else None,
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


def train(
    cfg: DictConfig,
    run_dir: str | Path,
    *,
    prepare_model: Callable[[DictConfig, Any], Any],
    export: Callable[[Any, DictConfig, Path, Any], None],
) -> dict[str, Any]:
    """Run the whole training job in this rank; return the final metrics (rank 0's view)."""
    import torch
    from tqdm import tqdm

    from framework import storage
    from framework.metrics_server import cuda_memory_bytes, maybe_start_metrics_server
    from framework.model import count_params, load_tokenizer
    from framework.tracking import make_trackers
    from framework.trainer_status import maybe_reporter as maybe_trainer_reporter

    deepspeed = dist.import_deepspeed(
        cfg.hardware.accelerator
    )  # without the ~0.8 s MLflow import of DeepSpeed's autotuner
    t_start = time.time()
    storage.configure_from_config(cfg.storage)
    dist.init(cfg.hardware.accelerator)
    rank0 = dist.is_rank0()
    run = RunDir.at(run_dir)
    if run.remote and dist.local_rank() == 0:
        shutil.rmtree(run.path, ignore_errors=True)  # staging is per run: the remote copy is the truth
    dist.barrier()
    run.path.mkdir(parents=True, exist_ok=True)
    if rank0:
        log.info("Run directory: %s", run.uri if run.remote else run.path.resolve())
        log.info("World: %d process(es) %s", dist.world_size(), dist.describe())
    # Chosen (and verified) before anything heavy starts, so a damaged or foreign checkpoint fails in seconds.
    resume_from = resolve_resume(cfg, run)
    seed_everything(cfg.train.seed)
    torch.set_num_threads(cpu_threads(cfg, torch.get_num_threads()))

    tokenizer = load_tokenizer(cfg)
    d = prepare_data(cfg, tokenizer)
    model = prepare_model(cfg, tokenizer)
    if cfg.train.get("compile", False):
        from framework.kernels import compile_model

        log.info(
            "train.compile: compiled %d decoder layers (first steps include compile time)",
            compile_model(model),
        )
    total, trainable = count_params(model)
    if rank0:
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

    ds_cfg = deepspeed_config(cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = None
    if cfg.optim.name == "sgd":
        optimizer = torch.optim.SGD(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    schedule = lr_lambda(cfg, d.steps)
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model,
        model_parameters=params,
        optimizer=optimizer,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
        config=ds_cfg,
        dist_init_required=False,
    )

    step, consumed = 0, 0
    best_loss, best_pending = math.inf, -1  # train.keep_best: lowest eval loss so far; the step to mark
    if resume_from is not None:
        root, tag = resume_from
        state = checkpoint.load(engine, root, tag, expect=compat_state(cfg))
        step, consumed = int(state["step"]), int(state["consumed"])
        best_loss = float(state.get("best_eval_loss", math.inf))
        if root == run.resume_staging:  # another run's checkpoint, downloaded for this start only
            source: Any = cfg.resume
            dist.barrier()
            if dist.local_rank() == 0:
                shutil.rmtree(root, ignore_errors=True)
        else:
            source = storage.join(run.remote_checkpoints, tag) if run.remote else root / tag
        if rank0:
            log.info("Resumed from %s at step %d", source, step)
            run.fetch_metrics()
            run.truncate_metrics(step)
    elif rank0:  # a fresh start: lines of an earlier attempt that left no checkpoint would repeat its steps
        run.truncate_metrics(after_step=-1)  # keeps no line
    if rank0:
        # Only now: a start that fails earlier leaves an earlier attempt's config.yaml as it was.
        run.write_config(cfg)

    tracker = make_trackers(cfg.tracking, run.uri, cfg.run_name, resolved(cfg), rank0, start_step=step)
    prom = maybe_start_metrics_server(cfg.tracking.prometheus, cfg.run_name)
    progress = maybe_trainer_reporter(d.steps, step, rank0)  # Kubeflow Trainer's trainerStatus, when set
    metrics = MetricsLog(run.metrics, rank0, [lambda r: tracker.log_metrics(r, r["step"]), progress.report])
    stop = StopFlag()
    stop.install()
    micro, accum = cfg.train.micro_batch_size, cfg.train.grad_accum
    bar = tqdm(
        total=d.steps,
        initial=step,
        disable=not (rank0 and cfg.train.progress),
        dynamic_ncols=True,
        desc="train",
        unit="step",
    )
    last: dict[str, Any] = {}
    last_eval: dict[str, Any] = {}
    tok_rate_sum, tok_rate_n = 0.0, 0

    def client_state() -> dict[str, Any]:
        return {
            "step": step,
            "consumed": consumed,
            "best_eval_loss": best_loss,
        }

    compat = compat_state(cfg)
    plain_cfg = resolved(cfg)
    remote = checkpoint.RemoteSync(run.checkpoints, run.remote_checkpoints) if run.remote else None

    def save_checkpoint(blocking: bool = False) -> None:
        t0 = time.time()
        if remote is not None and remote.tag is not None:
            remote.sync(cfg.train.keep_last)  # the previous upload must land before a new one starts
            publish_metrics()
        checkpoint.save(
            engine,
            run.checkpoints,
            step,
            client_state(),
            meta=compat,
            config=plain_cfg,
            commit=remote is None,
        )
        checkpoint.prune(run.checkpoints, cfg.train.keep_last)
        if rank0:
            log.info("Checkpoint step_%d saved in %.2fs", step, time.time() - t0)
        prom.observe_checkpoint(time.time() - t0)
        if remote is not None:
            remote.start(checkpoint.tag_for(step))
            if blocking:
                remote.sync(cfg.train.keep_last)
                publish_metrics()
                if rank0:
                    log.info("Checkpoint step_%d uploaded and committed in %.2fs", step, time.time() - t0)

    def poll_upload() -> None:
        """Commit a finished background upload; learned from one small collective while one is pending."""
        if remote is None or remote.tag is None:
            return
        busy, failed = dist.all_reduce_max([float(remote.busy), float(remote.failed)])
        if failed:
            remote.raise_error()
        if not busy:
            tag = remote.tag
            remote.commit(cfg.train.keep_last)
            publish_metrics()
            if rank0:
                log.info("Checkpoint %s uploaded in %.2fs, overlapped with training", tag, remote.upload_s)

    def publish_metrics() -> None:
        if rank0 and run.remote:
            metrics.flush()
            run.publish("metrics.jsonl")

    def run_eval() -> None:
        nonlocal last_eval, best_loss, best_pending
        if not d.val:
            return
        eval_loss, ppl = evaluate(engine, d.val, micro, cfg.train.eval_max_batches)
        last_eval = {"step": step, "eval_loss": eval_loss, "perplexity": ppl}
        metrics.write(last_eval)
        prom.update(eval_loss=eval_loss)
        if rank0:
            bar.write(f"step {step}: eval_loss {eval_loss:.4f}  perplexity {ppl:.2f}")
        if samples is not None:
            samples(engine.module, step, tracker, zero3=cfg.hardware.zero_stage == 3)
        if cfg.train.get("keep_best") and step > 0 and eval_loss < best_loss:  # the same on every rank
            best_loss, best_pending = eval_loss, step

    def mark_best(saved: bool) -> None:
        """train.keep_best: the eval at this step was the best so far; its checkpoint becomes ``best``."""
        if best_pending != step:
            return
        if not saved:
            save_checkpoint(blocking=True)
        tag = checkpoint.tag_for(step)
        checkpoint.write_best(run.checkpoints, tag)
        checkpoint.prune(run.checkpoints, cfg.train.keep_last)  # the previous best is now one of the old ones
        if rank0 and run.remote:
            storage.write_text_atomic(storage.join(run.remote_checkpoints, checkpoint.BEST), tag)

    samples = None
    if cfg.get("eval") is not None and cfg.eval.samples:
        from framework.evaluation import SAMPLES, Samples

        samples = Samples(
            d.val, cfg.eval.samples, tokenizer, cfg.eval.samples_max_new_tokens, run.path / SAMPLES
        )

    try:
        if step == 0 and cfg.train.get("eval_at_start", True):
            run_eval()  # the baseline every curve starts from
        while step < d.steps:
            t0 = time.perf_counter()
            losses, tokens, data_s = [], 0, 0.0
            for _ in range(accum):
                td = time.perf_counter()
                rows = d.train.batch(consumed)
                data_s += time.perf_counter() - td
                consumed += 1
                losses.append(micro_step(engine, rows))
                tokens += data.n_real_tokens(rows)
            step += 1
            # One collective per step: loss and token counts from every rank, plus any rank's stop request.
            loss_sum = float(torch.stack(losses).sum())  # the only host sync of the step
            own_s = time.perf_counter() - t0  # this rank's compute, before waiting for the others
            loss_sum, tokens_all, n = dist.all_reduce_sum([loss_sum, float(tokens), float(accum)])
            stop_any, slowest_s = dist.all_reduce_max([float(stop.signum), own_s])
            dt = time.perf_counter() - t0
            loss = loss_sum / n
            tok_s = tokens_all / dt
            tok_rate_sum, tok_rate_n = tok_rate_sum + tok_s, tok_rate_n + 1
            lr = scheduler.get_last_lr()[0] if scheduler is not None else cfg.optim.lr
            last = {"step": step, "loss": loss, "lr": lr, "tokens_per_s": tok_s, "step_time_s": dt}
            if step % cfg.train.log_interval == 0 or step == d.steps:
                metrics.write(last)
            prom.update(
                **last,
                slowest_step_time_s=slowest_s,
                compute_time_s=own_s,  # vs the slowest rank's: the straggler alert
                data_time_s=data_s,
                **cuda_memory_bytes(),
            )
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tok_s:,.0f}", refresh=False)
            bar.update(1)
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss is {loss} at step {step}; lower optim.lr or check the data")
            if cfg.train.eval_interval and step % cfg.train.eval_interval == 0 and step < d.steps:
                run_eval()
            poll_upload()
            if stop_any:
                save_checkpoint(blocking=True)
                raise Preempted(
                    f"stopped by signal {int(stop_any)} at step {step}; checkpoint step_{step} saved"
                )
            due = bool(cfg.train.checkpoint_interval) and step % cfg.train.checkpoint_interval == 0
            if due and step < d.steps:
                save_checkpoint()
            if step < d.steps:
                mark_best(saved=due)
        run_eval()
        save_checkpoint(blocking=True)
        mark_best(saved=True)
        export(engine, cfg, run.path, tokenizer)
        if rank0:
            for name in ("adapter", "model", "base"):
                run.publish(name)
                if (run.path / name).is_dir():
                    tracker.log_artifact(str(run.path / name), name)
            tracker.register_model("adapter" if (run.path / "adapter").is_dir() else "model")
        status = "FINISHED"
    except Preempted:
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        bar.close()
        metrics.close()
        stop.restore()
        tracker.close(status)
        progress.close(finished=status == "FINISHED")
        prom.stop()
    dist.barrier()
    result = {
        "status": "COMPLETED",
        "steps": step,
        "loss": last.get("loss"),
        "eval_loss": last_eval.get("eval_loss"),
        "perplexity": last_eval.get("perplexity"),
        "tokens_per_s": tok_rate_sum / tok_rate_n if tok_rate_n else None,
        "wall_s": time.time() - t_start,
        "run_dir": run.uri,
    }
    if rank0:
        log.info(
            "Done: %d steps, eval_loss %s, %.1fs; outputs in %s",
            step,
            f"{result['eval_loss']:.4f}" if result["eval_loss"] is not None else "-",
            result["wall_s"],
            run.uri if run.remote else run.path.resolve(),
        )
    return result


def full_state_dict(engine: Any) -> dict[str, Any] | None:
    """The full (unpartitioned) state dict on rank 0; None on other ranks. A collective under ZeRO-3."""
    if engine.zero_optimization_stage() == 3:
        sd = engine._zero3_consolidated_16bit_state_dict()
        return sd if dist.is_rank0() else None
    return engine.module.state_dict() if dist.is_rank0() else None


def run_dir_for(cfg: DictConfig) -> str:
    """``storage.output_uri`` when set, else Hydra's job output dir, else ``outputs/<run_name>``."""
    if cfg.storage.output_uri:
        return str(cfg.storage.output_uri)
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return str(HydraConfig.get().runtime.output_dir)
    return str(Path("outputs") / cfg.run_name)
