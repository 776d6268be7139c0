"""End to end: a real Prometheus server on 127.0.0.1 scrapes a real CPU training run's exporter with the chart's
stall alert (short durations through values), which fires after the run is paused (SIGSTOP) and resolves after
it continues (SIGCONT)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from framework.distributed import free_port
from tests.fixtures import tools
from tests.fixtures.chart import prometheus_rules
from tests.helpers import shell_env

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
ALERT = "FrameworkTrainingStalled"
# Only the stall alert, with seconds instead of minutes (values, not a separate rule file).
SHORT = (
    "monitoring.prometheusRule.alerts.stalled.seconds=4",
    "monitoring.prometheusRule.alerts.stalled.for=2s",
    "monitoring.prometheusRule.alerts.stalled.lookback=10m",
    *(
        f"monitoring.prometheusRule.alerts.{a}.enabled=false"
        for a in (
            "lossNotFinite",
            "throughputDrop",
            "straggler",
            "checkpointSlow",
            "checkpointMissing",
            "restarts",
        )
    ),
)


def api(port: int, path: str, **query: str) -> Any:
    url = f"http://127.0.0.1:{port}/api/v1/{path}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    return json.loads(urllib.request.urlopen(url, timeout=5).read())["data"]


def wait_for(
    what: str, check: Callable[[], bool], timeout: float, procs: list[subprocess.Popen[Any]]
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            assert p.poll() is None, f"{p.args[0]} exited {p.returncode} while waiting for {what}"
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def alert_state(port: int) -> str | None:
    states = [a["state"] for a in api(port, "alerts")["alerts"] if a["labels"]["alertname"] == ALERT]
    return states[0] if states else None


def test_stall_alert_fires_on_sigstop_and_resolves_on_sigcont(tmp_path: Path) -> None:
    metrics_port, prom_port = free_port(), free_port()
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(prometheus_rules(sets=SHORT)))
    (tmp_path / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "scrape_timeout": "500ms", "evaluation_interval": "1s"},
                "rule_files": [str(tmp_path / "rules.yaml")],
                "scrape_configs": [
                    {"job_name": "framework", "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}
                ],
            }
        )
    )
    prometheus = tools.prometheus()
    run_log = (tmp_path / "run.log").open("w")
    prom_log = (tmp_path / "prometheus.log").open("w")
    env = shell_env(PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    run = subprocess.Popen(
        [
            sys.executable, "-m", "framework", "train.max_steps=100000", "train.eval_interval=0",
            "train.checkpoint_interval=0", "train.progress=false", "tracking.prometheus.enabled=true",
            f"tracking.prometheus.port={metrics_port}", "tracking.prometheus.host=127.0.0.1",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path, env=env, stdout=run_log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    prom = subprocess.Popen(
        [
            str(prometheus), f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        cwd=tmp_path, stdout=prom_log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    procs: list[subprocess.Popen[Any]] = [run, prom]
    try:

        def steps() -> list[float]:
            return [float(r["value"][1]) for r in api(prom_port, "query", query="framework_step")["result"]]

        wait_for("Prometheus to scrape training steps", lambda: bool(steps()) and steps()[0] > 0, 240, procs)
        first = steps()[0]
        wait_for("more steps", lambda: steps()[0] > first, 30, procs)
        time.sleep(3)
        assert alert_state(prom_port) is None, "stall alert while the run makes progress"

        run.send_signal(signal.SIGSTOP)
        paused = time.monotonic()
        wait_for("the stall alert to fire", lambda: alert_state(prom_port) == "firing", 60, procs)
        fired_after = time.monotonic() - paused
        assert fired_after >= 4, "fired before the 4 s threshold"
        up = api(prom_port, "query", query="up")["result"]
        assert [r["value"][1] for r in up] == ["0"], "a stopped process answers no scrape"

        run.send_signal(signal.SIGCONT)
        wait_for("the stall alert to resolve", lambda: alert_state(prom_port) is None, 60, procs)
        assert steps()[0] > first
    finally:
        if run.poll() is None:
            run.kill()  # SIGKILL works on a stopped process too; the run dir is a tmp dir
        if prom.poll() is None:
            prom.terminate()
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        run_log.close()
        prom_log.close()
