"""The backend table: one entry per backend is all rendering, RBAC and status reading need; errors are data."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from hydra_plugins.kubernetes_launcher import _backends, _client, _render
from hydra_plugins.kubernetes_launcher._client import JobInfo, KubernetesError, PodInfo, job_info

from tests.k8s.compose import compose

PLUGIN = Path(_render.__file__).resolve().parent


def test_every_backend_is_one_table_entry() -> None:
    assert {"indexed_job", "jobset", "pytorchjob"} <= set(_backends.BACKENDS)
    for name, b in _backends.BACKENDS.items():
        assert b.name == name and _backends.BY_KIND[b.kind] is b
        assert _client.KINDS[b.kind].api_version == b.api_version
        assert _client.KINDS[b.kind].plural == b.plural


def test_no_backend_names_outside_the_table() -> None:
    """Backend-specific branches live in _backends.py only (the default argument values aside)."""
    for path in PLUGIN.glob("*.py"):
        if path.name == "_backends.py":
            continue
        text = path.read_text()
        found = re.findall(r'== "(?:pytorchjob|jobset|indexed_job)"|"(?:JobSet|PyTorchJob)"', text)
        assert found == [], (path.name, found)


def test_no_message_parsing_for_status() -> None:
    for path in PLUGIN.glob("*.py"):
        text = path.read_text()
        assert not re.search(r'"\(\d{3}\)" (not )?in str\(', text), path.name
        assert '"exit code 2" in' not in text, path.name


def test_a_new_backend_is_one_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    """What platform/ray do for trainjob/rayjob: add one Backend; render, RBAC and status follow."""

    def spec(parts: _backends.JobParts) -> dict[str, object]:
        return {"numNodes": int(parts.cfg.hardware.nodes), "template": parts.template}

    toy = _backends.Backend(
        name="toyjob",
        kind="ToyJob",
        group="toy.example.com",
        version="v1",
        plural="toyjobs",
        host_suffix=lambda nodes: f"-toy-{nodes - 1}",
        master_addr=lambda name: f"{name}-toy-0.{name}",
        job_spec=spec,
        pod_templates=lambda s: [s["template"]],
        phase=lambda conds, status: ("Succeeded", conds["Done"]) if "Done" in conds else ("Pending", None),
        node_rank=_backends.BACKENDS["indexed_job"].node_rank,
        container="toy",
    )
    monkeypatch.setitem(_backends.BACKENDS, "toyjob", toy)
    monkeypatch.setitem(_backends.BY_KIND, "ToyJob", toy)
    cfg = compose("hardware.nodes=2", "launcher.backend=toyjob", "launcher.setup_namespace=true")
    name = _render.job_name("r", sweep_id="s0", job_index=0, backend="toyjob", nodes=2)
    objs = _render.render(cfg, job_name=name, sweep_id="s0", job_index=0, git_commit=None)
    main = _render.main_object(objs)
    assert main["apiVersion"] == "toy.example.com/v1" and main["spec"]["numNodes"] == 2
    c = _render.pod_templates(main)[0]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert c["name"] == "toy" and env["MASTER_ADDR"] == f"{name}-toy-0.{name}"
    role = next(o for o in objs if o["kind"] == "Role")
    assert role["rules"][0] == {
        "apiGroups": ["toy.example.com"],
        "resources": ["toyjobs"],
        "verbs": ["create", "get", "list", "watch", "delete"],
    }
    info = job_info(
        {"metadata": {"name": name}, "status": {"conditions": [{"type": "Done", "status": "True"}]}}, "ToyJob"
    )
    assert info.phase == "Succeeded"


def test_kubernetes_error_carries_the_http_status() -> None:
    from kubernetes.client.exceptions import ApiException

    e = ApiException(status=404, reason="Not Found")
    err = _client.api_error("get", _client.KINDS["Job"], "ns", "x", e)
    assert isinstance(err, KubernetesError) and err.status == 404
    assert KubernetesError("no response").status is None


def _failed(*codes: int | None, reason: str = "BackoffLimitExceeded") -> JobInfo:
    pods = [PodInfo(f"p{i}", "Failed", i, exit_code=c) for i, c in enumerate(codes)]
    return JobInfo("j", "ns", "Job", "Failed", message=f"{reason}: exit code 21", pods=pods, reason=reason)


@pytest.mark.parametrize(
    ("codes", "reason", "exit_code", "permanent"),
    [
        ((2, 1), "PodFailurePolicy", 2, True),
        ((1, 2), "BackoffLimitExceeded", 2, True),
        ((21,), "BackoffLimitExceeded", 21, False),  # "exit code 21" in a message used to read as exit 2
        ((255,), "BackoffLimitExceeded", 255, False),
        ((1, 137), "BackoffLimitExceeded", 137, False),
        ((None, 1), "BackoffLimitExceeded", 1, False),
        ((), "DeadlineExceeded", None, False),
    ],
)
def test_job_exit_code_and_permanence(
    codes: tuple[int | None, ...], reason: str, exit_code: int | None, permanent: bool
) -> None:
    info = _failed(*codes, reason=reason)
    assert info.exit_code == exit_code
    assert info.permanent_failure is permanent
    if exit_code == 137:
        assert "OOM-killed" in info.describe() and "hardware.memory" in info.describe()


def test_oom_killed_pod_says_so() -> None:
    pod = {
        "metadata": {"name": "p", "annotations": {"batch.kubernetes.io/job-completion-index": "1"}},
        "status": {
            "phase": "Failed",
            "containerStatuses": [{"state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}],
        },
    }
    info = _client.pod_info(pod, "Job")
    assert info.node_rank == 1 and info.exit_code == 137
    assert "OOMKilled" in (info.reason or "") and "hardware.memory" in (info.reason or "")


def test_entries_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        _backends.BACKENDS["jobset"].kind = "X"  # type: ignore[misc]
