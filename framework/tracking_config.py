"""Schema of the ``tracking`` group: experiment trackers and Prometheus metrics.

Select trackers either with the group (several options at once is fine) or with the list::

    python -m framework tracking=tensorboard                 # one tracker
    python -m framework 'tracking=[tensorboard,mlflow]'      # several: each option sets <name>.enabled
    python -m framework 'tracking.backends=[tensorboard,mlflow,wandb]'   # the same, as a list

The trackers that run are the union of ``backends`` and every section whose ``enabled`` is true.
Credentials never live here: they come from the environment only (``WANDB_API_KEY``,
``MLFLOW_TRACKING_TOKEN`` or ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``), so they never reach
a config dump or a manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

BACKENDS = ("tensorboard", "mlflow", "wandb")
WANDB_MODES = ("online", "offline", "disabled")


@dataclass
class TensorBoardConfig:
    enabled: bool = False  # also enabled when "tensorboard" is in tracking.backends
    log_dir: str | None = (
        None  # event files; null: <run_dir>/tensorboard (remote run dirs: uploaded at close)
    )


@dataclass
class MlflowConfig:
    enabled: bool = False  # also enabled when "mlflow" is in tracking.backends
    # http(s)://server, sqlite:///db, file:/dir; null: sqlite:///<run_dir>/mlflow/mlflow.db (artifacts beside it)
    tracking_uri: str | None = None
    experiment_name: str = "framework"  # created when missing
    log_artifacts: bool = True  # upload the final adapter/model dir to the run's artifact store
    register_as: str | None = (
        None  # register the final adapter/model as a new version of this registered model
    )


@dataclass
class WandbConfig:
    enabled: bool = False  # also enabled when "wandb" is in tracking.backends
    project: str = "framework"
    entity: str | None = None  # team or user; null: the API key's default entity
    group: str | None = None  # groups runs in the UI (e.g. one sweep)
    mode: str | None = (
        None  # online | offline | disabled; null: $WANDB_MODE, else online iff $WANDB_API_KEY set
    )
    dir: str | None = None  # local dir for wandb/ files; null: <run_dir> (remote run dirs: uploaded at close)
    log_artifacts: bool = True  # log the final adapter/model dir as a W&B model artifact
    init_timeout_s: float = 60.0  # give up on an unreachable server after this long (then: warning, disabled)


@dataclass
class PrometheusConfig:
    enabled: bool = False  # serve /metrics from local rank 0 of every node
    port: int = 9400  # 0: any free port (logged)
    host: str = "0.0.0.0"  # bind address


@dataclass
class TrackingConfig:
    backends: list[str] = field(default_factory=list)  # any of: tensorboard, mlflow, wandb
    tensorboard: TensorBoardConfig = field(default_factory=TensorBoardConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    prometheus: PrometheusConfig = field(default_factory=PrometheusConfig)
    flush_interval_s: float = 1.0  # trackers get the queued calls in batches this often (MLflow: 1 request)
    queue_size: int = 10000  # pending calls buffered per tracker; when full, calls are dropped (warned once)
    close_timeout_s: float = 120.0  # max wait per tracker for pending logs at close

    def active_backends(self) -> list[str]:
        """The trackers to run, in a stable order: the union of ``backends`` and the enabled sections."""
        chosen = set(self.backends)
        chosen.update(name for name in BACKENDS if getattr(self, name).enabled)
        return [name for name in BACKENDS if name in chosen]


def tracking_problems(cfg: TrackingConfig) -> list[str]:
    """Every problem in a tracking config (empty when valid); for the compose-time validation."""
    problems = []
    for name in cfg.backends:
        if name not in BACKENDS:
            problems.append(
                f"tracking.backends: unknown tracker {name!r}; choose from {', '.join(BACKENDS)} "
                "(Prometheus is tracking.prometheus.enabled=true)"
            )
    if cfg.wandb.mode is not None and cfg.wandb.mode not in WANDB_MODES:
        problems.append(
            f"tracking.wandb.mode: {cfg.wandb.mode!r} is not one of {', '.join(WANDB_MODES)} or null"
        )
    if not 0 <= cfg.prometheus.port <= 65535:
        problems.append(f"tracking.prometheus.port: {cfg.prometheus.port} is not in 0..65535")
    if cfg.flush_interval_s <= 0:
        problems.append(f"tracking.flush_interval_s: {cfg.flush_interval_s} must be > 0")
    if cfg.queue_size < 1:
        problems.append(f"tracking.queue_size: {cfg.queue_size} must be >= 1")
    return problems
