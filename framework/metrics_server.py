"""Prometheus exporter for training metrics, served by local rank 0 of every node.

Every metric is named ``framework_*`` and labelled ``run_name`` and ``node_rank``; each server has its own
``CollectorRegistry`` (never the global default), so several can run in one process. Nothing here imports
torch at module import; GPU memory figures are passed in by the caller (see :func:`cuda_memory_bytes`).

Usage from the training loop (``dashboards/grafana-training.json`` charts exactly these metrics)::

    server = maybe_start_metrics_server(cfg.tracking.prometheus, cfg.run_name)
    server.update(**metrics_line, step_time_s=dt, data_time_s=dl, slowest_step_time_s=dt_max,
                  mfu=mfu, **cuda_memory_bytes())
    server.observe_checkpoint(seconds)
    server.stop()
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

from framework.tracking_config import PrometheusConfig

log = logging.getLogger(__name__)

LABELS = ("run_name", "node_rank")

# Histogram buckets, in seconds.
STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
DATA_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CHECKPOINT_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)

# update() keyword -> gauge (last value) name and help.
GAUGES: dict[str, tuple[str, str]] = {
    "step": ("framework_step", "Last completed optimizer step"),
    "loss": ("framework_loss", "Training loss of the last logged step"),
    "eval_loss": ("framework_eval_loss", "Loss of the last evaluation"),
    "lr": ("framework_learning_rate", "Learning rate of the last logged step"),
    "tokens_per_s": (
        "framework_tokens_per_second",
        "Training throughput in tokens per second, as the training loop reports it",
    ),
    "mfu": ("framework_mfu", "Model FLOPs utilization, 0..1"),
    "step_time_s": ("framework_step_time_seconds", "Wall time of the last optimizer step on this rank"),
    "slowest_step_time_s": (
        "framework_slowest_rank_step_time_seconds",
        "Compute time of the last optimizer step on the slowest rank (max over all ranks)",
    ),
    "compute_time_s": (
        "framework_compute_time_seconds",
        "Compute time of the last optimizer step on this rank, before waiting for the others",
    ),
    "data_time_s": ("framework_data_loading_time_seconds", "Time the last step waited for its input batches"),
    "gpu_memory_allocated_bytes": ("framework_gpu_memory_allocated_bytes", "GPU memory held by tensors"),
    "gpu_memory_reserved_bytes": (
        "framework_gpu_memory_reserved_bytes",
        "GPU memory reserved by the caching allocator",
    ),
}
# update() keyword -> histogram name and help (observed alongside the gauge of the same keyword).
HISTOGRAMS: dict[str, tuple[str, str, tuple[float, ...]]] = {
    "step_time_s": ("framework_step_duration_seconds", "Optimizer step wall time on this rank", STEP_BUCKETS),
    "slowest_step_time_s": (
        "framework_slowest_rank_step_duration_seconds",
        "Optimizer step wall time on the slowest rank",
        STEP_BUCKETS,
    ),
    "data_time_s": (
        "framework_data_loading_duration_seconds",
        "Per-step wait for input batches",
        DATA_BUCKETS,
    ),
}
LAST_STEP_TIMESTAMP = "framework_last_step_timestamp_seconds"
CHECKPOINT_HISTOGRAM = "framework_checkpoint_duration_seconds"
CHECKPOINT_GAUGE = "framework_last_checkpoint_duration_seconds"


def metric_families() -> list[str]:
    """Names of every metric family the server exports (histograms without their _bucket/_sum/_count)."""
    return [
        *(name for name, _ in GAUGES.values()),
        *(name for name, _, _ in HISTOGRAMS.values()),
        LAST_STEP_TIMESTAMP,
        CHECKPOINT_HISTOGRAM,
        CHECKPOINT_GAUGE,
    ]


class MetricsServer:
    """A running /metrics endpoint with its own registry. Create with :func:`start_metrics_server`."""

    def __init__(self, port: int, host: str = "0.0.0.0", labels: Mapping[str, Any] | None = None) -> None:
        from prometheus_client import CollectorRegistry, Gauge, Histogram, start_http_server

        values = {"run_name": "run", "node_rank": os.environ.get("NODE_RANK", "0")}
        values.update({k: str(v) for k, v in (labels or {}).items()})
        names = [*LABELS, *sorted(set(values) - set(LABELS))]
        self.labels = {k: str(values[k]) for k in names}
        self.registry = CollectorRegistry(auto_describe=True)

        # Children are bound on first use, so a metric never set (no eval yet, no GPU) is not exported.
        self._metrics: dict[str, Any] = {}
        for key, (name, doc) in GAUGES.items():
            self._metrics[key] = Gauge(name, doc, names, registry=self.registry)
        for key, (name, doc, buckets) in HISTOGRAMS.items():
            self._metrics[f"{key}:hist"] = Histogram(
                name, doc, names, registry=self.registry, buckets=buckets
            )
        self._metrics["last_step_ts"] = Gauge(
            LAST_STEP_TIMESTAMP, "Unix time of the last update with a step", names, registry=self.registry
        )
        self._metrics["checkpoint:hist"] = Histogram(
            CHECKPOINT_HISTOGRAM,
            "Checkpoint save wall time",
            names,
            registry=self.registry,
            buckets=CHECKPOINT_BUCKETS,
        )
        self._metrics["checkpoint"] = Gauge(
            CHECKPOINT_GAUGE, "Wall time of the last checkpoint save", names, registry=self.registry
        )
        self._children: dict[str, Any] = {}
        self.host = host
        self._httpd, self._thread = start_http_server(port, addr=host, registry=self.registry)
        self.port: int = int(self._httpd.server_port)
        self._stopped = False

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}/metrics"

    def update(
        self,
        *,
        step: int | None = None,
        loss: float | None = None,
        eval_loss: float | None = None,
        lr: float | None = None,
        tokens_per_s: float | None = None,
        mfu: float | None = None,
        step_time_s: float | None = None,
        slowest_step_time_s: float | None = None,
        compute_time_s: float | None = None,
        data_time_s: float | None = None,
        gpu_memory_allocated_bytes: float | None = None,
        gpu_memory_reserved_bytes: float | None = None,
        **other: Any,
    ) -> None:
        """Set the values given (None: unchanged). Names match the metrics keys (framework.rundir), so a metrics line can be
        passed as ``update(**line)``; keys this server does not export (perplexity, ...) are ignored.
        Durations are also observed into their histograms.
        """
        given = {
            "step": step,
            "loss": loss,
            "eval_loss": eval_loss,
            "lr": lr,
            "tokens_per_s": tokens_per_s,
            "mfu": mfu,
            "step_time_s": step_time_s,
            "slowest_step_time_s": slowest_step_time_s,
            "compute_time_s": compute_time_s,
            "data_time_s": data_time_s,
            "gpu_memory_allocated_bytes": gpu_memory_allocated_bytes,
            "gpu_memory_reserved_bytes": gpu_memory_reserved_bytes,
        }
        for key, value in given.items():
            if value is None or isinstance(value, bool):
                continue
            value = float(value)
            self._child(key).set(value)
            if key in HISTOGRAMS:
                self._child(f"{key}:hist").observe(value)
        if step is not None:
            self._child("last_step_ts").set(time.time())

    def _child(self, key: str) -> Any:
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._metrics[key].labels(**self.labels)
        return child

    def observe_checkpoint(self, seconds: float) -> None:
        """Record one checkpoint save that took ``seconds``."""
        self._child("checkpoint:hist").observe(seconds)
        self._child("checkpoint").set(seconds)

    def stop(self) -> None:
        """Stop serving and free the port. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class NullMetricsServer:
    """Stands in where no server runs (disabled, not local rank 0, or the port was taken)."""

    port: int | None = None
    url: str | None = None

    def update(self, **values: Any) -> None:
        pass

    def observe_checkpoint(self, seconds: float) -> None:
        pass

    def stop(self) -> None:
        pass

    def __enter__(self) -> NullMetricsServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def start_metrics_server(
    port: int, host: str = "0.0.0.0", labels: Mapping[str, Any] | None = None
) -> MetricsServer:
    """Serve ``/metrics`` on ``host:port`` (port 0: a free port, see ``.port``). Raises OSError if taken."""
    return MetricsServer(port, host, labels)


def maybe_start_metrics_server(
    cfg: PrometheusConfig, run_name: str, env: Mapping[str, str] | None = None
) -> MetricsServer | NullMetricsServer:
    """The server when ``cfg.enabled`` and this is local rank 0 (one per node), else a no-op.

    A missing prometheus-client or a taken port is a WARNING, never an error.
    """
    env = os.environ if env is None else env
    if not cfg.enabled or int(env.get("LOCAL_RANK", "0")) != 0:
        return NullMetricsServer()
    labels = {"run_name": run_name, "node_rank": env.get("NODE_RANK", "0")}
    try:
        server = start_metrics_server(cfg.port, cfg.host, labels)
    except ImportError as exc:
        log.warning(
            "metrics: prometheus-client is missing (%s); no /metrics. Fix: pip install 'framework[tracking]'",
            exc,
        )
        return NullMetricsServer()
    except OSError as exc:
        log.warning(
            "metrics: cannot serve on %s:%d (%s); no /metrics. Fix: free the port, or set "
            "tracking.prometheus.port (0: any free port)",
            cfg.host,
            cfg.port,
            exc,
        )
        return NullMetricsServer()
    log.info("metrics: Prometheus endpoint on %s:%d/metrics", cfg.host, server.port)
    return server


def cuda_memory_bytes(device: Any = None) -> dict[str, float]:
    """GPU memory of ``device`` for :meth:`MetricsServer.update`; empty without CUDA (or without torch loaded).

    Only uses torch if the caller has already imported it, so this module never pulls torch in.
    """
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return {}
    return {
        "gpu_memory_allocated_bytes": float(torch.cuda.memory_allocated(device)),
        "gpu_memory_reserved_bytes": float(torch.cuda.memory_reserved(device)),
    }
