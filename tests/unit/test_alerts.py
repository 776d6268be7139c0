"""The chart's training alerts with `promtool test rules` on synthetic series: each alert fires on the failure it
names and stays quiet on a healthy run (default thresholds from values.yaml). The rules are the chart's own,
rendered by helm; annotations are dropped for the unit tests only (promtool compares them verbatim), after
`promtool check rules` has checked their templates."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from framework.metrics_server import GAUGES, metric_families
from tests.fixtures import tools
from tests.fixtures.chart import prometheus_rules

TARGET = 'job="framework", namespace="team-a"'


def series(name: str, values: str, pod: str = "p0", node_rank: str = "0", run: str = "r") -> dict[str, str]:
    labels = f'{TARGET}, instance="{pod}:9400", pod="{pod}", run_name="{run}", node_rank="{node_rank}"'
    return {"series": f"{name}{{{labels}}}", "values": values}


def up(values: str, pod: str = "p0") -> dict[str, str]:
    return {"series": f'up{{{TARGET}, instance="{pod}:9400", pod="{pod}"}}', "values": values}


def alert(labels: dict[str, str], severity: str) -> dict[str, Any]:
    return {"exp_labels": {**labels, "severity": severity}}


def target(pod: str = "p0", node_rank: str = "0") -> dict[str, str]:
    return {
        "job": "framework",
        "namespace": "team-a",
        "instance": f"{pod}:9400",
        "pod": pod,
        "run_name": "r",
        "node_rank": node_rank,
    }


RUN = {"namespace": "team-a", "run_name": "r"}

# (test name, alert, input series, [(eval time, expected alerts)]); series sampled every minute from t=0.
CASES: list[tuple[str, str, list[dict[str, str]], list[tuple[str, list[dict[str, Any]]]]]] = [
    (
        "stalled: steps stop, scrapes go on",
        "FrameworkTrainingStalled",
        [series("framework_last_step_timestamp_seconds", "0+60x10 600x40"), up("1x50")],
        # 600 + 900 s threshold = 25m, + for 10m
        [("20m", []), ("34m", []), ("36m", [alert(target(), "critical")])],
    ),
    (
        "stalled: the process hangs and stops answering scrapes (SIGSTOP)",
        "FrameworkTrainingStalled",
        [series("framework_last_step_timestamp_seconds", "0+60x10 stale"), up("1x10 0x40")],
        [("20m", []), ("36m", [alert(target(), "critical")])],
    ),
    (
        "stalled: not when the pod is gone (finished)",
        "FrameworkTrainingStalled",
        [series("framework_last_step_timestamp_seconds", "0+60x10 stale"), up("1x10 stale")],
        [("36m", [])],
    ),
    (
        "stalled: not while steps advance",
        "FrameworkTrainingStalled",
        [series("framework_last_step_timestamp_seconds", "0+60x50"), up("1x50")],
        [("45m", [])],
    ),
    (
        "loss NaN",
        "FrameworkLossNotFinite",
        [series("framework_loss", "2 1.9 1.8 NaN NaN NaN")],
        [("2m", []), ("5m", [alert(target(), "critical")])],
    ),
    (
        "loss +Inf",
        "FrameworkLossNotFinite",
        [series("framework_loss", "2 1.9 Inf Inf Inf")],
        [("1m", []), ("4m", [alert(target(), "critical")])],
    ),
    (
        "throughput drops below half its median",
        "FrameworkThroughputDrop",
        [series("framework_tokens_per_second", "1000x60 400x30")],
        [("60m", []), ("70m", []), ("80m", [alert(target(), "warning")])],
    ),
    (
        "throughput dips to 60%: quiet",
        "FrameworkThroughputDrop",
        [series("framework_tokens_per_second", "1000x60 600x30")],
        [("85m", [])],
    ),
    (
        "straggler: one node's compute far above the median",
        "FrameworkStragglerRank",
        [
            *(series("framework_slowest_rank_step_time_seconds", "3x30", f"p{i}", str(i)) for i in range(3)),
            series("framework_compute_time_seconds", "1x30", "p0", "0"),
            series("framework_compute_time_seconds", "1.1x30", "p1", "1"),
            series("framework_compute_time_seconds", "3x30", "p2", "2"),
        ],
        [("10m", []), ("20m", [alert(RUN, "warning")])],
    ),
    (
        "straggler: balanced ranks are quiet",
        "FrameworkStragglerRank",
        [
            *(
                series("framework_slowest_rank_step_time_seconds", "1.2x30", f"p{i}", str(i))
                for i in range(3)
            ),
            *(series("framework_compute_time_seconds", f"1.{i}x30", f"p{i}", str(i)) for i in range(3)),
        ],
        [("20m", [])],
    ),
    (
        "checkpoint slow",
        "FrameworkCheckpointSlow",
        [series("framework_last_checkpoint_duration_seconds", "30 30 2400 2400")],
        [("1m", []), ("2m", [alert(target(), "warning")])],
    ),
    (
        "checkpoint missing while steps advance",
        "FrameworkCheckpointMissing",
        [series("framework_step", "0+10x300")],
        # needs the series 3h back (window), then for 15m
        [("2h", []), ("3h10m", []), ("3h20m", [alert(RUN, "warning")])],
    ),
    (
        "checkpoints complete: quiet",
        "FrameworkCheckpointMissing",
        [
            series("framework_step", "0+10x300"),
            series("framework_checkpoint_duration_seconds_count", "0+1x300"),
        ],
        [("4h", [])],
    ),
    (
        "restarts: a fourth pod for the same node rank",
        "FrameworkRepeatedRestarts",
        [
            series("framework_step", "0+1x30 stale", "p1"),
            series("framework_step", "_x31 20+1x30 stale", "p2"),
            series("framework_step", "_x62 40+1x30 stale", "p3"),
            series("framework_step", "_x93 60+1x27", "p4"),
        ],
        [("80m", []), ("100m", [alert({**RUN, "node_rank": "0"}, "warning")])],
    ),
    (
        "restarts: a container restarting in place (the step gauge resets)",
        "FrameworkRepeatedRestarts",
        [series("framework_step", "0+1x10 5+1x10 3+1x10 2+1x10")],
        [("25m", []), ("35m", [alert({**RUN, "node_rank": "0"}, "warning")])],
    ),
]


@pytest.fixture(scope="module")
def rules_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rules") / "rules.yaml"
    path.write_text(yaml.safe_dump(prometheus_rules()))
    return path


def test_promtool_checks_the_rules_with_annotations(rules_file: Path) -> None:
    result = subprocess.run(
        [str(tools.promtool()), "check", "rules", str(rules_file)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout


def test_rules_read_only_exported_metrics() -> None:
    import re

    exported = set(metric_families())
    exported |= {f"{h}_{s}" for h in exported for s in ("bucket", "sum", "count")}
    used = {
        m
        for g in prometheus_rules()["groups"]
        for r in g["rules"]
        for m in re.findall(r"framework_\w+", r["expr"])
    }
    assert used and used <= exported, used - exported
    assert "framework_compute_time_seconds" in {name for name, _ in GAUGES.values()}


def test_promtool_rule_tests(tmp_path: Path) -> None:
    rules = prometheus_rules()
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    tests = []
    for name, alertname, inputs, evals in CASES:
        tests.append(
            {
                "name": name,
                "interval": "1m",
                "input_series": inputs,
                "alert_rule_test": [
                    {"eval_time": t, "alertname": alertname, "exp_alerts": exp} for t, exp in evals
                ],
            }
        )
    spec = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests}
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    result = subprocess.run(
        [str(tools.promtool()), "test", "rules", "tests.yaml"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    # every alert of the chart has at least one firing and one quiet case
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    fired = {a for _, a, _, evals in CASES if any(exp for _, exp in evals)}
    quiet = {a for _, a, _, evals in CASES if any(not exp for _, exp in evals)}
    assert alerts == fired == quiet
