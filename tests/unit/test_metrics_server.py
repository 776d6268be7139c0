"""Prometheus exporter scraped over HTTP, and the Grafana dashboard checked against what it exports."""

from __future__ import annotations

import json
import logging
import re
import sys
import types
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from framework.metrics_server import (
    MetricsServer,
    NullMetricsServer,
    cuda_memory_bytes,
    maybe_start_metrics_server,
    metric_families,
    start_metrics_server,
)
from framework.tracking_config import PrometheusConfig

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboards" / "grafana-training.json"
ALL_VALUES: dict[str, Any] = {
    "step": 10,
    "loss": 2.5,
    "eval_loss": 2.7,
    "lr": 3e-4,
    "tokens_per_s": 12345.0,
    "mfu": 0.41,
    "step_time_s": 0.52,
    "slowest_step_time_s": 0.61,
    "compute_time_s": 0.45,
    "data_time_s": 0.004,
    "gpu_memory_allocated_bytes": 2.0e9,
    "gpu_memory_reserved_bytes": 3.0e9,
}


def scrape(server: MetricsServer) -> dict[str, float]:
    """Sample name (with labels) -> value, from one HTTP scrape of /metrics on 127.0.0.1."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k != "le")
            le = f",le={s.labels['le']}" if "le" in s.labels else ""
            samples[f"{s.name}{{{labels}{le}}}"] = s.value
    return samples


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    srv = start_metrics_server(0, host="127.0.0.1", labels={"run_name": "demo", "node_rank": 1})
    yield srv
    srv.stop()


def test_values_change_between_scrapes(server: MetricsServer) -> None:
    assert server.port > 0
    server.update(step=1, loss=3.0, lr=1e-3, tokens_per_s=900.0, step_time_s=0.5, perplexity=20.0)
    first = scrape(server)
    lbl = "{node_rank=1,run_name=demo}"
    assert first[f"framework_step{lbl}"] == 1
    assert first[f"framework_loss{lbl}"] == 3.0
    assert first[f"framework_learning_rate{lbl}"] == 1e-3
    assert first[f"framework_step_duration_seconds_count{lbl}"] == 1
    # Never set: not exported (no eval yet, no GPU on this machine).
    assert not any(
        k.startswith(("framework_eval_loss", "framework_gpu_memory", "framework_mfu")) for k in first
    )

    server.update(step=2, loss=2.0, eval_loss=2.2, step_time_s=0.7)
    server.observe_checkpoint(3.5)
    second = scrape(server)
    assert second[f"framework_step{lbl}"] == 2
    assert second[f"framework_loss{lbl}"] == 2.0
    assert second[f"framework_eval_loss{lbl}"] == 2.2
    assert second[f"framework_learning_rate{lbl}"] == 1e-3  # unchanged
    assert second[f"framework_step_duration_seconds_count{lbl}"] == 2
    assert second[f"framework_step_duration_seconds_sum{lbl}"] == pytest.approx(1.2)
    assert second[f"framework_checkpoint_duration_seconds_count{lbl}"] == 1
    assert second[f"framework_last_checkpoint_duration_seconds{lbl}"] == 3.5
    assert (
        second[f"framework_last_step_timestamp_seconds{lbl}"]
        >= first[f"framework_last_step_timestamp_seconds{lbl}"]
    )


def test_servers_are_independent_and_stop_frees_the_port() -> None:
    a = start_metrics_server(0, "127.0.0.1", {"run_name": "a", "node_rank": 0})
    b = start_metrics_server(0, "127.0.0.1", {"run_name": "b", "node_rank": 0})
    try:
        a.update(step=5)
        assert "framework_step{node_rank=0,run_name=a}" in scrape(a)
        assert not any(k.startswith("framework_step{") for k in scrape(b))
    finally:
        a.stop()
        b.stop()
    again = start_metrics_server(a.port, "127.0.0.1", {"run_name": "next-job"})  # the port is free again
    again.stop()
    a.stop()  # idempotent


def test_maybe_start_only_on_local_rank0_and_warns_on_taken_port(caplog: pytest.LogCaptureFixture) -> None:
    cfg = PrometheusConfig(enabled=True, port=0, host="127.0.0.1")
    assert isinstance(maybe_start_metrics_server(PrometheusConfig(), "r", env={}), NullMetricsServer)
    assert isinstance(maybe_start_metrics_server(cfg, "r", env={"LOCAL_RANK": "1"}), NullMetricsServer)
    srv = maybe_start_metrics_server(cfg, "r", env={"LOCAL_RANK": "0", "NODE_RANK": "3"})
    assert isinstance(srv, MetricsServer)
    try:
        srv.update(step=1)
        assert "framework_step{node_rank=3,run_name=r}" in scrape(srv)
        taken = PrometheusConfig(enabled=True, port=srv.port, host="127.0.0.1")
        with caplog.at_level(logging.WARNING, logger="framework.metrics_server"):
            other = maybe_start_metrics_server(taken, "r", env={})
        assert isinstance(other, NullMetricsServer)
        other.update(step=1, loss=1.0)  # a no-op, never an error
        assert any("cannot serve" in r.getMessage() and "Fix:" in r.getMessage() for r in caplog.records)
    finally:
        srv.stop()


def test_cuda_memory_is_skipped_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    class Cuda:
        available = False

        def is_available(self) -> bool:
            return self.available

        def memory_allocated(self, device: object = None) -> int:
            return 100

        def memory_reserved(self, device: object = None) -> int:
            return 200

    fake_torch = types.SimpleNamespace(cuda=Cuda())
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert cuda_memory_bytes() == {}  # torch not loaded: never imported here
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    assert cuda_memory_bytes() == {}  # no CUDA
    fake_torch.cuda.available = True
    assert cuda_memory_bytes() == {"gpu_memory_allocated_bytes": 100.0, "gpu_memory_reserved_bytes": 200.0}


# -------------------------------------------------------------------------------------------- dashboard


def _exprs(dashboard: dict) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


def test_dashboard_is_valid_grafana_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert 36 <= dashboard["schemaVersion"] <= 41 and dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    assert variables["run_name"]["type"] == "query" and "run_name" in variables["run_name"]["definition"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in (
        "loss",
        "learning rate",
        "tokens/s",
        "mfu",
        "slowest",
        "data-loading",
        "gpu memory",
        "checkpoint",
    ):
        assert topic in titles, topic
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            assert 'run_name=~"$run_name"' in target["expr"], target["expr"]


def test_dashboard_uses_exactly_the_exported_metrics(server: MetricsServer) -> None:
    server.update(**ALL_VALUES)
    server.observe_checkpoint(12.0)
    exported = {key.split("{", 1)[0] for key in scrape(server)}
    used = {
        name
        for expr in _exprs(json.loads(DASHBOARD.read_text()))
        for name in re.findall(r"\bframework_\w+", expr)
    }
    assert used, "no framework_* metric in any expr"
    assert used - exported == set(), (
        f"dashboard queries metrics the server does not export: {used - exported}"
    )
    base = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    unused = set(metric_families()) - base - used
    assert unused == set(), f"exported but never charted: {unused}"
