"""Experiment trackers (TensorBoard, MLflow, Weights & Biases) behind one small interface.

``make_trackers(...)`` returns a :class:`MultiTracker` that fans every call out to the configured backends.
Only rank 0 tracks; every other rank gets a no-op. Each backend runs on its own worker thread behind a
bounded queue, so a slow disk or a slow server never stalls a training step. A backend that cannot be
imported or reached is a WARNING at start (the reason and the fix) and is left out; one that fails
mid-run is warned about once and disabled. Tracking never crashes a run.

Heavy clients (mlflow, wandb, tensorboard) are imported inside the backend constructors only; this module
imports neither them nor torch. Credentials come from the environment only (``WANDB_API_KEY``,
``MLFLOW_TRACKING_TOKEN``, ...), and config keys that look like secrets are redacted before logging.

Run directories on object storage (``s3://...``): TensorBoard event files, the default MLflow file store
and W&B's offline files are written to a local staging dir and uploaded under the run directory at
``close()``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any, Protocol

from framework import storage
from framework.secrets import name_looks_secret, value_looks_secret
from framework.tracking_config import MlflowConfig, TrackingConfig, WandbConfig, tracking_problems

log = logging.getLogger(__name__)

RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")
MLFLOW_DIR, MLFLOW_DB = "mlflow", "mlflow.db"  # the default store: sqlite:///<run_dir>/mlflow/mlflow.db
INSTALL_FIX = "pip install 'framework[tracking]'"
REDACTED = "<redacted>"


class Tracker(Protocol):
    """One experiment-tracking backend. Calls come from a single worker thread, in order.

    A backend may also define ``flush()``; the worker calls it after every batch of calls.
    """

    name: str

    def log_params(self, flat: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None: ...

    def log_artifact(self, path: str, name: str) -> None: ...

    def close(self, status: str = "FINISHED") -> None: ...


# ----------------------------------------------------------------------------------------------- helpers


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings to dotted keys (``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}``); lists stay values.

    Values that look like secrets, by key name or by shape (framework.secrets), are redacted.
    """
    flat: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_config(value, dotted + "."))
        elif value not in (None, "") and (name_looks_secret(str(key)) or value_looks_secret(value)):
            flat[dotted] = REDACTED
        else:
            flat[dotted] = value
    return flat


def _to_plain(config: Any) -> dict[str, Any]:
    """A resolved config as plain containers (accepts a DictConfig, a dataclass or a mapping)."""
    if config is None:
        return {}
    if isinstance(config, Mapping) and not _is_omegaconf(config):
        return dict(config)
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(
        OmegaConf.create(config) if not _is_omegaconf(config) else config, resolve=True
    )
    return {str(k): v for k, v in plain.items()} if isinstance(plain, dict) else {}


def _is_omegaconf(obj: Any) -> bool:
    return type(obj).__module__.startswith("omegaconf")


def numeric_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries of a metrics line as floats (drops ``step``, booleans, strings, None)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if key == "step" or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        out[key] = float(value)
    return out


def _stringify(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, default=str)
    return str(value)


def _md_cell(value: Any) -> str:
    return _stringify(value).replace("|", "\\|").replace("\n", " ")


def _local_path(uri: str) -> str:
    """The absolute local path of a local path or ``file:`` URI (``file:/dir`` too, as MLflow spells it)."""
    if uri.startswith("file:") and not uri.startswith("file://"):
        uri = uri.removeprefix("file:")
    return os.path.abspath(storage.local_copy(uri))


def _redact_uri(uri: str) -> str:
    """Drop user:password@ from a URI before it reaches a log line."""
    return re.sub(r"//[^/@\s]*@", "//***@", uri)


class _Mirror:
    """A local stand-in for a remote directory: written in its storage staging dir, uploaded at close.

    The staging path is derived from the remote path (storage.staging_dir), so a restarted pod reuses the same
    local paths (MLflow's file store records absolute paths), and a tracker dir inside a remote run directory
    is part of that run directory's one staging copy. ``download`` first copies any existing remote content.
    """

    def __init__(self, remote: str, download: bool = False) -> None:
        self.remote = remote.rstrip("/")
        self.local = str(storage.staging_dir(self.remote))
        os.makedirs(self.local, exist_ok=True)
        if download and storage.isdir(self.remote):
            with contextlib.suppress(FileNotFoundError):  # a directory marker with no files under it
                storage.download_dir(self.remote, self.local)

    def upload(self) -> None:
        storage.upload_dir(self.local, self.remote)


def _materialize(path: str) -> str:
    """A local path holding ``path`` (a file or dir, local or remote; remote ones via the storage cache)."""
    if not storage.is_remote(path):
        return _local_path(path)
    return str(storage.local_copy(path))


# ----------------------------------------------------------------------------------------------- backends


class TensorBoardTracker:
    """Event files readable by TensorBoard, written with the tensorboard package's protos (no torch, no TF).

    Written synchronously from the tracker's worker thread (no writer thread of its own) and flushed after
    every batch.
    """

    name = "tensorboard"
    fix = "check that tracking.tensorboard.log_dir is writable"

    def __init__(self, log_dir: str, start_step: int = 0) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.compat.proto.tensor_pb2 import TensorProto
        from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
        from tensorboard.plugins.text.plugin_data_pb2 import TextPluginData
        from tensorboard.summary.writer.record_writer import RecordWriter

        self._event = event_pb2.Event
        self._summary = summary_pb2.Summary
        self._metadata = summary_pb2.SummaryMetadata
        self._tensor = TensorProto
        self._shape = TensorShapeProto
        self._text_plugin = TextPluginData
        self.log_dir = log_dir
        os.makedirs(log_dir, exist_ok=True)
        fname = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{id(self)}"
        self._writer = RecordWriter(open(os.path.join(log_dir, fname), "wb"))  # noqa: SIM115 (closed in close())
        self._write(self._event(wall_time=time.time(), file_version="brain.Event:2"))
        if start_step > 0:
            # A resumed run re-logs the steps after its checkpoint: a session START at the first of them makes
            # TensorBoard drop what the interrupted run wrote from there on (as SummaryWriter's purge_step).
            log = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
            self._write(self._event(wall_time=time.time(), step=start_step + 1, session_log=log))
        self.flush()

    def _write(self, event: Any) -> None:
        self._writer.write(event.SerializeToString())

    def flush(self) -> None:
        self._writer.flush()

    def log_params(self, flat: dict[str, Any]) -> None:
        rows = ["| key | value |", "|---|---|"]
        rows += [f"| {k} | {_md_cell(v)} |" for k, v in sorted(flat.items())]
        plugin = self._metadata.PluginData(
            plugin_name="text", content=self._text_plugin(version=0).SerializeToString()
        )
        tensor = self._tensor(
            dtype="DT_STRING",
            string_val=["\n".join(rows).encode()],
            tensor_shape=self._shape(dim=[self._shape.Dim(size=1)]),
        )
        value = self._summary.Value(
            tag="config/text_summary", metadata=self._metadata(plugin_data=plugin), tensor=tensor
        )
        self._write(self._event(wall_time=time.time(), step=0, summary=self._summary(value=[value])))

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        values = [self._summary.Value(tag=k, simple_value=v) for k, v in numeric_metrics(metrics).items()]
        if values:
            summary = self._summary(value=values)
            self._write(self._event(wall_time=time.time(), step=step, summary=summary))

    def log_artifact(self, path: str, name: str) -> None:
        log.debug("tensorboard: artifacts are not supported; skipping %s", name)

    def log_samples(self, rows: list[dict[str, Any]], step: int) -> None:
        """Generated samples as a markdown table under the ``samples`` text tag (TensorBoard's Text tab)."""
        table = ["| prompt | generation | reference |", "|---|---|---|"]
        table += [
            f"| {_md_cell(r['prompt'])} | {_md_cell(r['generation'])} | {_md_cell(r['reference'])} |"
            for r in rows
        ]
        plugin = self._metadata.PluginData(
            plugin_name="text", content=self._text_plugin(version=0).SerializeToString()
        )
        tensor = self._tensor(
            dtype="DT_STRING",
            string_val=["\n".join(table).encode()],
            tensor_shape=self._shape(dim=[self._shape.Dim(size=1)]),
        )
        value = self._summary.Value(
            tag="samples/text_summary", metadata=self._metadata(plugin_data=plugin), tensor=tensor
        )
        self._write(self._event(wall_time=time.time(), step=step, summary=self._summary(value=[value])))

    def close(self, status: str = "FINISHED") -> None:
        self._writer.flush()
        self._writer.close()


_MLFLOW_BAD_CHARS = re.compile(r"[^\w./\- ]")


class MlflowTracker:
    """An MLflow run through ``MlflowClient`` (no global active run). Resumes the run of the same run dir."""

    name = "mlflow"
    fix = (
        "start the server or fix tracking.mlflow.tracking_uri (credentials: MLFLOW_TRACKING_TOKEN or "
        "MLFLOW_TRACKING_USERNAME/PASSWORD in the environment), or drop mlflow from the trackers"
    )

    def __init__(
        self,
        cfg: MlflowConfig,
        tracking_uri: str,
        run_name: str,
        run_dir: str,
        artifact_location: str | None = None,
    ) -> None:
        self.artifact_location = artifact_location
        self._last: dict[str, float] = {}  # the latest value of every metric: a registered version's tags
        if tracking_uri.startswith("file:"):
            # MLflow >= 3.7 refuses the file store unless opted in; a local store per run dir is our default.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient
        from mlflow.utils import validation

        self._metric_cls = Metric
        self._param_cls = Param
        self._max_key = getattr(validation, "MAX_ENTITY_KEY_LENGTH", 250)
        self._max_value = getattr(validation, "MAX_PARAM_VAL_LENGTH", 6000)
        self._max_params = getattr(validation, "MAX_PARAMS_TAGS_PER_BATCH", 100)
        self._max_metrics = getattr(validation, "MAX_METRICS_PER_BATCH", 1000)
        self._pending: list[Any] = []
        self.cfg = cfg
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        experiment_id = self._experiment_id(cfg.experiment_name)
        self._existing_params: dict[str, str] = {}
        run = self._find_run(experiment_id, run_dir)
        if run is not None:
            self.run_id: str = run.info.run_id
            self._existing_params = dict(run.data.params)
            if run.info.status != "RUNNING":
                self.client.update_run(self.run_id, status="RUNNING")
            log.info("mlflow: resuming run %s in experiment %r", self.run_id, cfg.experiment_name)
        else:
            tags = {"framework.run_dir": run_dir}
            self.run_id = self.client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
            log.info(
                "mlflow: run %s in experiment %r at %s",
                self.run_id,
                cfg.experiment_name,
                _redact_uri(tracking_uri),
            )

    def _experiment_id(self, name: str) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return str(experiment.experiment_id)
        try:
            return str(self.client.create_experiment(name, artifact_location=self.artifact_location))
        except Exception:  # another job of the sweep created it first
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return str(experiment.experiment_id)

    def _find_run(self, experiment_id: str, run_dir: str) -> Any:
        if "'" in run_dir:
            return None
        runs = self.client.search_runs(
            [experiment_id],
            filter_string=f"tags.`framework.run_dir` = '{run_dir}'",
            max_results=1,
            order_by=["attributes.start_time DESC"],
        )
        return runs[0] if runs else None

    def _key(self, key: str) -> str:
        return _MLFLOW_BAD_CHARS.sub("_", key)[: self._max_key]

    def log_params(self, flat: dict[str, Any]) -> None:
        params = []
        for key, value in flat.items():
            k, v = self._key(key), _stringify(value)[: self._max_value]
            if k in self._existing_params:  # a resumed run: params are immutable in MLflow
                if self._existing_params[k] != v:
                    log.info(
                        "mlflow: param %s changed on resume (%r -> %r); keeping the first",
                        k,
                        self._existing_params[k],
                        v,
                    )
                continue
            params.append(self._param_cls(k, v))
        for i in range(0, len(params), self._max_params):
            self.client.log_batch(self.run_id, params=params[i : i + self._max_params])

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        now = int(time.time() * 1000)
        self._last.update(numeric_metrics(metrics))
        self._pending += [
            self._metric_cls(self._key(k), v, now, step) for k, v in numeric_metrics(metrics).items()
        ]

    def flush(self) -> None:
        """Send the buffered metrics: one request per batch of queued calls rather than one per step."""
        pending, self._pending = self._pending, []
        for i in range(0, len(pending), self._max_metrics):
            self.client.log_batch(self.run_id, metrics=pending[i : i + self._max_metrics])

    def log_artifact(self, path: str, name: str) -> None:
        self.flush()
        if not self.cfg.log_artifacts:
            return
        local = _materialize(path)
        if os.path.isdir(local):
            self.client.log_artifacts(self.run_id, local, artifact_path=name)
        else:
            self.client.log_artifact(self.run_id, local, artifact_path=name)

    def register_model(self, artifact: str) -> None:
        """Register the artifact ``artifact`` of this run (logged before) as a new version of
        ``tracking.mlflow.register_as``, tagged with the run's latest metrics."""
        if not self.cfg.register_as:
            return
        self.flush()
        from mlflow.exceptions import MlflowException

        name = self.cfg.register_as
        try:
            self.client.create_registered_model(name)
        except MlflowException as exc:  # it exists: a new version is what we want
            if "RESOURCE_ALREADY_EXISTS" not in str(getattr(exc, "error_code", "")):
                raise
        source = f"{self.client.get_run(self.run_id).info.artifact_uri.rstrip('/')}/{artifact}"
        tags = {f"metric.{self._key(k)}": repr(v) for k, v in sorted(self._last.items())}
        desc = ", ".join(
            f"{k} {v:.4g}" for k, v in sorted(self._last.items()) if k in ("eval_loss", "perplexity", "loss")
        )
        version = self.client.create_model_version(
            name, source, run_id=self.run_id, tags={"framework.artifact": artifact, **tags}, description=desc
        )
        log.info("mlflow: registered %s as %s version %s", artifact, name, version.version)

    def log_samples(self, rows: list[dict[str, Any]], step: int) -> None:
        """Generated samples as an MLflow table artifact (``samples/step_<N>.json``; shown in the UI)."""
        columns = {k: [str(r[k]) for r in rows] for k in ("prompt", "generation", "reference")}
        columns["step"] = [str(step)] * len(rows)
        self.client.log_table(self.run_id, data=columns, artifact_file=f"samples/step_{step:06d}.json")

    def close(self, status: str = "FINISHED") -> None:
        self.flush()
        self.client.set_terminated(self.run_id, status=status)


def _wandb_name(text: str, limit: int = 128) -> str:
    return re.sub(r"[^\w.\-]", "-", text)[:limit] or "run"


class WandbTracker:
    """A W&B run; offline unless WANDB_API_KEY is set (or tracking.wandb.mode / WANDB_MODE says otherwise).

    The run id derives from the run dir, so a restarted pod resumes the same W&B run.
    """

    name = "wandb"
    fix = (
        "set WANDB_API_KEY in the environment (or tracking.wandb.mode=offline and `wandb sync` later), "
        "check tracking.wandb.project/entity, or drop wandb from the trackers"
    )

    def __init__(self, cfg: WandbConfig, local_dir: str, run_name: str, run_dir: str) -> None:
        self.cfg = cfg
        self.run_name = run_name
        self.mode = wandb_mode(cfg)
        import wandb

        self._wandb = wandb
        os.makedirs(local_dir, exist_ok=True)
        run_id = f"{_wandb_name(run_name, 55)}-{hashlib.sha1(run_dir.encode()).hexdigest()[:8]}"
        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            group=cfg.group,
            name=run_name,
            id=run_id,
            resume="allow",
            dir=local_dir,
            mode=self.mode,  # type: ignore[arg-type]
            reinit="create_new",
            settings=wandb.Settings(init_timeout=cfg.init_timeout_s, console="off"),
        )
        if self.mode == "offline":
            log.info("wandb: offline run in %s (upload later with `wandb sync`)", self.run.dir)

    def log_params(self, flat: dict[str, Any]) -> None:
        self.run.config.update(flat, allow_val_change=True)

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        values = numeric_metrics(metrics)
        if values:
            self.run.log(values, step=step)

    def log_artifact(self, path: str, name: str) -> None:
        if not self.cfg.log_artifacts:
            return
        local = _materialize(path)
        artifact = self._wandb.Artifact(name=_wandb_name(f"{self.run_name}-{name}"), type="model")
        if os.path.isdir(local):
            artifact.add_dir(local)
        else:
            artifact.add_file(local)
        self.run.log_artifact(artifact)

    def log_samples(self, rows: list[dict[str, Any]], step: int) -> None:
        """Generated samples as a W&B table (one per eval step)."""
        columns = ["step", "prompt", "generation", "reference"]
        data = [[step, r["prompt"], r["generation"], r["reference"]] for r in rows]
        self.run.log({"samples": self._wandb.Table(columns=columns, data=data)}, step=step)

    def close(self, status: str = "FINISHED") -> None:
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)


def wandb_mode(cfg: WandbConfig) -> str:
    """The W&B mode: the config's, else $WANDB_MODE, else online iff WANDB_API_KEY is set."""
    if cfg.mode:
        return cfg.mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


# ----------------------------------------------------------------------------------------------- fan-out


_STOP = object()


class _Worker:
    """Runs one backend's calls on its own thread, in order, in batches every ``interval`` seconds.

    The training thread only appends to a deque (no lock, no wake-up); the worker wakes once per interval
    and delivers everything pending. The first failure disables the backend (one warning); when
    ``queue_size`` calls are pending, further calls are dropped (one warning).
    """

    def __init__(self, backend: Tracker, queue_size: int, interval: float) -> None:
        self.backend = backend
        self.name = backend.name
        self.disabled = False
        self.dropped = 0
        self._interval = interval
        self._max = queue_size
        self._pending: deque[Any] = deque()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"tracking-{self.name}", daemon=True)
        self._thread.start()

    def submit(self, method: str, *args: Any) -> None:
        if self.disabled:
            return
        if len(self._pending) < self._max:
            self._pending.append((method, args))
            return
        self.dropped += 1
        if self.dropped == 1:
            log.warning(
                "tracking: %s is falling behind (%d calls pending); dropping calls while it catches up. "
                "Fix: a faster or closer tracking server, or raise tracking.queue_size",
                self.name,
                self._max,
            )

    def _run(self) -> None:
        flush = getattr(self.backend, "flush", None)
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            while self._pending:
                item = self._pending.popleft()
                if item is _STOP:  # close() ran just before and flushed
                    return
                self._call(*item)
            if flush is not None:
                self._call("flush", ())

    def _call(self, method: str, args: tuple[Any, ...]) -> None:
        if self.disabled:
            return
        try:
            getattr(self.backend, method)(*args)
        except Exception as exc:
            self.disabled = True
            log.warning(
                "tracking: %s failed in %s (%s: %s); disabled for the rest of this run. Fix: %s",
                self.name,
                method,
                type(exc).__name__,
                _redact_uri(str(exc)),
                getattr(self.backend, "fix", "see the error"),
            )

    def close(self, status: str, timeout: float) -> bool:
        """Run pending calls, close the backend; False when it did not finish within ``timeout``."""
        self._pending.append(("close", (status,)))
        self._pending.append(_STOP)
        self._wake.set()
        self._thread.join(timeout)
        if self.dropped:
            log.warning("tracking: %s dropped %d calls because its queue was full", self.name, self.dropped)
        if self._thread.is_alive():
            log.warning(
                "tracking: %s did not finish within %.0f s; pending logs are lost", self.name, timeout
            )
            return False
        return True


class MultiTracker:
    """Fans calls out to the active backends; a no-op when there are none (non-rank-0, or none configured).

    Every method returns at once (calls are queued per backend and delivered every ``flush_interval_s``);
    ``close()`` delivers what is pending and waits.
    """

    def __init__(
        self,
        backends: list[Tracker] | None = None,
        queue_size: int = 10000,
        close_timeout_s: float = 120.0,
        mirrors: list[_Mirror] | None = None,
        flush_interval_s: float = 1.0,
    ) -> None:
        self._workers = [_Worker(b, queue_size, flush_interval_s) for b in backends or []]
        self._mirrors = list(mirrors or [])
        self.close_timeout_s = close_timeout_s
        self._closed = False

    @property
    def backends(self) -> list[str]:
        """Names of the backends still enabled."""
        return [w.name for w in self._workers if not w.disabled]

    def __bool__(self) -> bool:
        return bool(self._workers)

    def _fan_out(self, method: str, *args: Any) -> None:
        if self._closed:
            return
        for worker in self._workers:
            worker.submit(method, *args)

    def log_params(self, flat: dict[str, Any]) -> None:
        """Log run parameters (flattened, dotted keys)."""
        self._fan_out("log_params", dict(flat))

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        """Log one metrics line (its numeric values; ``step`` may be included and is ignored)."""
        if self._workers:
            self._fan_out("log_metrics", dict(metrics), int(step))

    def log_artifact(self, path: str, name: str) -> None:
        """Upload a file or directory (a local path or a storage URI) where supported (MLflow, W&B)."""
        self._fan_out("log_artifact", path, name)

    def _fan_out_to_those_with(self, method: str, *args: Any) -> None:
        if self._closed:
            return
        for worker in self._workers:
            if hasattr(worker.backend, method):
                worker.submit(method, *args)

    def log_samples(self, rows: list[dict[str, Any]], step: int) -> None:
        """Generated samples (dicts with prompt, generation, reference): TensorBoard text, MLflow and W&B tables."""
        self._fan_out_to_those_with("log_samples", [dict(r) for r in rows], int(step))

    def register_model(self, artifact: str) -> None:
        """Register a logged artifact in the model registry (MLflow, with tracking.mlflow.register_as)."""
        self._fan_out_to_those_with("register_model", artifact)

    def close(self, status: str = "FINISHED") -> None:
        """Flush and close every backend (FINISHED | FAILED | KILLED), then upload staged files. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if status not in RUN_STATUSES:
            status = "FAILED"
        for worker in self._workers:
            worker.close(status, self.close_timeout_s)
        for mirror in self._mirrors:
            try:
                mirror.upload()
            except Exception as exc:
                log.warning(
                    "tracking: could not upload %s to %s (%s: %s); the files stay in %s",
                    mirror.local,
                    mirror.remote,
                    type(exc).__name__,
                    _redact_uri(str(exc)),
                    mirror.local,
                )

    def __enter__(self) -> MultiTracker:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close("FINISHED")
        else:
            self.close("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")


def _as_tracking_config(cfg: Any) -> TrackingConfig:
    if cfg is None:
        return TrackingConfig()
    if isinstance(cfg, TrackingConfig):
        return cfg
    from omegaconf import OmegaConf

    merged = OmegaConf.merge(OmegaConf.structured(TrackingConfig), cfg)
    obj = OmegaConf.to_object(merged)
    assert isinstance(obj, TrackingConfig)
    return obj


def _local_dir(target: str, mirrors: list[_Mirror], download: bool = False) -> str:
    """Where to write ``target`` locally: itself when local, else a staging dir uploaded at close."""
    if not storage.is_remote(target):
        return _local_path(target)
    mirror = _Mirror(target, download=download)
    mirrors.append(mirror)
    return mirror.local


def _build_backend(
    name: str, cfg: TrackingConfig, run_dir: str, run_name: str, mirrors: list[_Mirror], start_step: int
) -> Tracker:
    if name == "tensorboard":
        target = cfg.tensorboard.log_dir or storage.join(run_dir, "tensorboard")
        return TensorBoardTracker(_local_dir(target, mirrors), start_step)
    if name == "mlflow":
        if cfg.mlflow.tracking_uri:
            return MlflowTracker(cfg.mlflow, cfg.mlflow.tracking_uri, run_name, run_dir)
        # Default: a SQLite store in the run dir, which MLflow 3's client and `mlflow ui` open as they are
        # (the file store needs MLFLOW_ALLOW_FILE_STORE); artifacts beside it, or in the remote run dir.
        local = _local_dir(storage.join(run_dir, MLFLOW_DIR), mirrors, download=True)
        artifacts = storage.join(run_dir, MLFLOW_DIR, "artifacts")
        location = artifacts if storage.is_remote(run_dir) else "file://" + _local_path(artifacts)
        uri = "sqlite:///" + os.path.join(local, MLFLOW_DB)
        return MlflowTracker(cfg.mlflow, uri, run_name, run_dir, artifact_location=location)
    if name == "wandb":
        # wandb.init(dir=X) writes X/wandb/...; a remote X is staged whole (only wandb/ lands in the stage).
        return WandbTracker(cfg.wandb, _local_dir(cfg.wandb.dir or run_dir, mirrors), run_name, run_dir)
    raise ValueError(f"unknown tracker {name!r}")


_FIXES = {"tensorboard": TensorBoardTracker.fix, "mlflow": MlflowTracker.fix, "wandb": WandbTracker.fix}


def _start_backend(
    name: str, cfg: TrackingConfig, run_dir: str, run_name: str, mirrors: list[_Mirror], start_step: int
) -> Tracker | None:
    """The backend, or None after a WARNING naming the reason and the fix."""
    try:
        return _build_backend(name, cfg, run_dir, run_name, mirrors, start_step)
    except ImportError as exc:
        log.warning(
            "tracking: %s is not installed (%s); continuing without it. Fix: %s", name, exc, INSTALL_FIX
        )
    except Exception as exc:
        log.warning(
            "tracking: %s cannot start (%s: %s); continuing without it. Fix: %s",
            name,
            type(exc).__name__,
            _redact_uri(str(exc)),
            _FIXES[name],
        )
    return None


def make_trackers(
    cfg_tracking: Any,
    run_dir: str,
    run_name: str,
    resolved_config: Mapping[str, Any] | Any,
    is_rank0: bool,
    start_step: int = 0,
) -> MultiTracker:
    """Start the configured trackers and log the resolved config as params.

    ``cfg_tracking``: a TrackingConfig, or the ``tracking`` node of a composed config. ``run_dir``: the run
    directory (local path or URI). ``resolved_config``: the whole resolved config (a mapping or a DictConfig).
    ``start_step``: the step a resumed run continues from (TensorBoard then drops the later steps it had).
    Non-rank-0 processes get a no-op. Raises ConfigError for an invalid tracking config (on every rank).
    """
    cfg = _as_tracking_config(cfg_tracking)
    problems = tracking_problems(cfg)
    if problems:
        from framework.errors import ConfigError

        raise ConfigError(problems)
    names = cfg.active_backends()
    if not is_rank0 or not names:
        return MultiTracker()

    mirrors: list[_Mirror] = []
    backends = [
        b
        for b in (_start_backend(n, cfg, run_dir, run_name, mirrors, start_step) for n in names)
        if b is not None
    ]
    tracker = MultiTracker(
        backends,
        queue_size=cfg.queue_size,
        close_timeout_s=cfg.close_timeout_s,
        mirrors=mirrors,
        flush_interval_s=cfg.flush_interval_s,
    )
    if backends:
        log.info("tracking: %s", ", ".join(b.name for b in backends))
        tracker.log_params(flatten_config(_to_plain(resolved_config)))
    return tracker


__all__ = [
    "MlflowTracker",
    "MultiTracker",
    "TensorBoardTracker",
    "Tracker",
    "WandbTracker",
    "flatten_config",
    "make_trackers",
    "numeric_metrics",
    "wandb_mode",
]
