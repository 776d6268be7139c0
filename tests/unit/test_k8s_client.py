"""The API layer against an in-process fake API server: submit, follow, logs, cancel, errors, retries, cleanup."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hydra_plugins.kubernetes_launcher import cli
from hydra_plugins.kubernetes_launcher._client import ClusterUnreachable, JobClient, KubernetesError
from hydra_plugins.kubernetes_launcher._render import job_name, render
from kubernetes.client.exceptions import ApiException

from tests.k8s.compose import compose
from tests.k8s.fake_apiserver import FakeKube, simulate

PLURAL = {"indexed_job": "jobs", "jobset": "jobsets", "pytorchjob": "pytorchjobs"}


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    with FakeKube(namespaces=("default", "team-a")) as k:
        yield k


def client(kube: FakeKube, backend: str = "indexed_job", namespace: str = "default", **kw: Any) -> JobClient:
    opts: dict[str, Any] = {"retries": 3, "backoff_s": 0.01, "timeout_s": 2.0, "poll_interval_s": 0.2}
    opts.update(kw)
    return JobClient(namespace, backend=backend, api_client=kube.api_client(), **opts)


@functools.cache
def manifests(
    backend: str = "indexed_job", namespace: str = "default", index: int = 0
) -> tuple[dict[str, Any], ...]:
    cfg = compose(
        "hardware=cpu", "hardware.nodes=2", f"launcher.backend={backend}", f"launcher.namespace={namespace}"
    )
    name = job_name(str(cfg.run_name), sweep_id="s0test", job_index=index, backend=backend, nodes=2)
    return tuple(render(cfg, job_name=name, sweep_id="s0test", job_index=index, git_commit=None))


def objs(*args: Any) -> list[dict[str, Any]]:
    import copy

    return copy.deepcopy(list(manifests(*args)))


def follow(c: JobClient, name: str) -> tuple[list[str], threading.Event, threading.Thread]:
    lines: list[str] = []
    stop = threading.Event()
    t = threading.Thread(target=c.follow_logs, args=(name, lines.append, stop), daemon=True)
    t.start()
    return lines, stop, t


# ------------------------------------------------------------------------------------------- lifecycle
def test_submit_creates_the_job_first_then_objects_it_owns(kube: FakeKube) -> None:
    name = client(kube).submit(objs())
    job = kube.get("jobs", "default", name)
    assert job is not None
    for plural, obj_name in (("configmaps", f"{name}-config"), ("services", name)):
        owned = kube.get(plural, "default", obj_name)
        assert owned is not None
        (ref,) = owned["metadata"]["ownerReferences"]
        assert ref == {"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": job["metadata"]["uid"]}
    posts = [p for m, p in kube.requests if m == "POST"]
    assert posts[0].endswith("/jobs") and {p.rsplit("/", 1)[1] for p in posts[1:]} == {
        "configmaps",
        "services",
    }


@pytest.mark.parametrize(
    ("pending", "expect"),
    [
        (None, None),
        ("Unschedulable", "Unschedulable: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu."),
        ("ImagePullBackOff", "ImagePullBackOff: Back-off pulling image"),
        ("CreateContainerConfigError", 'CreateContainerConfigError: secret "hf-token" not found'),
    ],
)
def test_follow_to_success_says_why_pods_are_pending(
    kube: FakeKube, pending: str | None, expect: str | None
) -> None:
    kube.on_create.append(simulate("succeed", pending=pending))
    c = client(kube)
    name = c.submit(objs())
    lines, stop, t = follow(c, name)
    updates: list[str] = []
    info = c.wait(name, on_update=updates.append, timeout_s=20)
    stop.set()
    t.join(5)
    assert info.phase == "Succeeded", updates
    assert updates[-1].startswith("Succeeded")
    assert any(u.startswith("Running") for u in updates), updates
    if expect:
        assert any(expect in u for u in updates), updates
    assert lines == ["step 1 loss 2.0", "step 2 loss 1.5", "done"]


def test_pending_reason_from_events(kube: FakeKube) -> None:
    c = client(kube)
    name = c.submit(objs())
    from tests.k8s.fake_apiserver import make_pods

    pods = make_pods(kube, kube.get("jobs", "default", name) or {})
    kube.event(
        "default", pods[0], "FailedMount", 'MountVolume.SetUp failed for volume "runs": pvc "x" not found'
    )
    info = c.status(name)
    assert "FailedMount" in info.describe() and "launcher.pvcs" in info.describe()


@pytest.mark.parametrize(("outcome", "permanent"), [("fail", False), ("fail_permanent", True)])
def test_follow_to_failure(kube: FakeKube, outcome: str, permanent: bool) -> None:
    kube.on_create.append(simulate(outcome))
    c = client(kube)
    name = c.submit(objs())
    info = c.wait(name, timeout_s=20)
    assert info.phase == "Failed" and info.permanent_failure is permanent
    assert ("PodFailurePolicy" if permanent else "BackoffLimitExceeded") in info.message
    assert info.pods[0].exit_code == (2 if permanent else 1)
    assert "RuntimeError: boom" in (info.pods[0].reason or "")


@pytest.mark.parametrize("backend", ["jobset", "pytorchjob"])
def test_operator_backends(kube: FakeKube, backend: str) -> None:
    kube.on_create.append(simulate("succeed"))
    c = client(kube, backend)
    name = c.submit(objs(backend))
    assert kube.get(PLURAL[backend], "default", name) is not None
    cm = kube.get("configmaps", "default", f"{name}-config")
    assert cm is not None and cm["metadata"]["ownerReferences"][0]["kind"] == {"jobset": "JobSet"}.get(
        backend, "PyTorchJob"
    )
    assert kube.names("services") == []  # the operator (here: nobody) makes the Services
    info = c.wait(name, timeout_s=20)
    assert info.phase == "Succeeded"
    assert [p.node_rank for p in info.pods] == [0, 1]
    assert list(c.logs(name)) == ["step 1 loss 2.0", "step 2 loss 1.5", "done"]
    assert [j.name for j in c.list()] == [name]


def test_logs_status_list_and_cancel(kube: FakeKube) -> None:
    hold = threading.Event()
    kube.on_create.append(simulate("succeed", hold=hold))
    c = client(kube)
    name = c.submit(objs())
    deadline = time.monotonic() + 10
    while not any(kube.logs.values()):  # rank 0 is running and logging
        assert time.monotonic() < deadline
        time.sleep(0.05)
    info = c.status(name)
    assert info.phase == "Running" and len(info.pods) == 2
    assert [j.name for j in c.list()] == [name]
    c.cancel(name)
    # Garbage collection: the ConfigMap, Service and pods go with the job.
    for plural in ("jobs", "configmaps", "services", "pods"):
        assert kube.names(plural) == [], plural
    with pytest.raises(KubernetesError, match=r"No training job default/"):
        c.status(name)
    hold.set()
    with pytest.raises(KubernetesError, match=r"No training job default/nope"):
        c.cancel("nope")


# ---------------------------------------------------------------------------------------------- errors
def _error(fn: Any) -> KubernetesError:
    with pytest.raises(KubernetesError) as info:
        fn()
    return info.value


def test_forbidden_names_the_verb_and_resource(kube: FakeKube) -> None:
    kube.fail(
        "POST", r"/jobs$", 403, message='jobs.batch is forbidden: User "alice" cannot create resource "jobs"'
    )
    name = objs()[-1]["metadata"]["name"]
    e = _error(lambda: client(kube).submit(objs()))
    assert str(e).startswith(
        f"Failed to create Job default/{name}: forbidden (403) — the service account needs 'create' on jobs.batch; "
        "apply the RBAC from launcher.setup_namespace=true"
    )
    assert 'User "alice"' in str(e)
    assert isinstance(e.__cause__, ApiException) and e.__cause__.status == 403


def test_missing_namespace(kube: FakeKube) -> None:
    e = _error(lambda: client(kube, namespace="nowhere").submit(objs("indexed_job", "nowhere")))
    assert "namespace 'nowhere' not found (404) — create it (kubectl create namespace nowhere)" in str(e)


def test_operator_not_installed() -> None:
    with FakeKube(crds=set()) as kube:
        e = _error(lambda: client(kube, "jobset").submit(objs("jobset")))
    assert "the JobSet API (jobsets.jobset.x-k8s.io/v1alpha2) is not installed" in str(e)
    assert "launcher.backend=indexed_job" in str(e)


def test_name_taken(kube: FakeKube) -> None:
    taken = objs()
    taken[-1]["metadata"]["labels"]["framework.io/config-hash"] = "another"
    kube.put("jobs", taken[-1])
    name = taken[-1]["metadata"]["name"]
    e = _error(lambda: client(kube).submit(objs()))
    assert f"Failed to create Job default/{name}: already exists (409)" in str(e)
    assert f"framework-jobs cancel {name} -n default" in str(e)


def test_invalid_lists_the_fields(kube: FakeKube) -> None:
    causes = {"causes": [{"field": "spec.completions", "message": "Invalid value: -1: must be >= 0"}]}
    kube.fail("POST", r"/jobs$", 422, details=causes)
    e = _error(lambda: client(kube).submit(objs()))
    assert "invalid (422): spec.completions: Invalid value: -1: must be >= 0" in str(e)


def test_server_errors_are_retried_then_reported(kube: FakeKube) -> None:
    kube.fail("POST", r"/jobs$", 500, times=-1, message="etcdserver: request timed out")
    e = _error(lambda: client(kube, retries=3).submit(objs()))
    assert "API server error (500) after 3 attempts: etcdserver: request timed out" in str(e)
    assert sum(1 for m, p in kube.requests if m == "POST" and p.endswith("/jobs")) == 3


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 500},
        {"status": 503, "times": 2},
        {"status": 429, "times": 2},
        {"status": 0, "delay": 1.5},  # longer than the client's 1 s timeout
        {"status": 0, "drop": True},  # connection closed without an answer
    ],
)
def test_transient_errors_are_retried(kube: FakeKube, fault: dict[str, Any]) -> None:
    kube.fail("POST", r"/configmaps$", **fault)
    name = client(kube, retries=4, timeout_s=1.0).submit(objs())
    assert kube.get("configmaps", "default", f"{name}-config") is not None


def test_create_that_timed_out_but_happened_is_not_an_error(kube: FakeKube) -> None:
    # The first POST stalls past the client's timeout and then creates the job; the retry sees 409 for *our* job.
    kube.fail("POST", r"/jobs$", 0, delay=1.2)
    c = client(kube, retries=3, timeout_s=1.0, backoff_s=1.0)
    name = c.submit(objs())
    assert kube.names("jobs") == [name] and kube.names("configmaps") == [f"{name}-config"]


def test_unreachable_server() -> None:
    kube = FakeKube().start()
    api = kube.api_client()
    kube.stop()
    c = JobClient("default", api_client=api, retries=2, backoff_s=0.01, timeout_s=1.0)
    with pytest.raises(
        ClusterUnreachable,
        match=r"Cannot reach the Kubernetes API server at http://127\.0\.0\.1:\d+ .*dry_run=true",
    ):
        c.check_reachable()
    with pytest.raises(
        ClusterUnreachable,
        match=r"Failed to create Job default/.*cannot reach the API server .* after 2 attempts",
    ):
        c.submit(objs())


@pytest.mark.parametrize(
    ("path", "status"), [(r"/configmaps$", 403), (r"/services$", 500), (r"/services$", 422)]
)
def test_failed_submit_leaves_nothing_behind(kube: FakeKube, path: str, status: int) -> None:
    kube.fail("POST", path, status, times=-1)
    with pytest.raises(KubernetesError):
        client(kube).submit(objs())
    for plural in ("jobs", "configmaps", "services", "pods"):
        assert kube.names(plural) == [], plural


def test_setup_objects_are_created_once(kube: FakeKube) -> None:
    cfg = compose("launcher.setup_namespace=true")
    c = client(kube)
    for i in range(2):
        name = job_name(str(cfg.run_name), sweep_id="s0test", job_index=i)
        c.submit(render(cfg, job_name=name, sweep_id="s0test", job_index=i, git_commit=None))
    assert kube.names("serviceaccounts") == ["framework-launcher"]
    assert kube.names("roles") == kube.names("rolebindings") == ["framework-launcher"]
    assert len(kube.names("networkpolicies")) == 2
    assert "ownerReferences" not in (kube.get("roles", "default", "framework-launcher") or {})["metadata"]


# ------------------------------------------------------------------------------------------------- CLI
def test_cli(
    kube: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kube.write_kubeconfig(tmp_path / "kubeconfig", namespace="team-a")))
    kube.on_create.append(simulate("fail_permanent"))
    c = client(kube, namespace="team-a")
    name = c.submit(objs("indexed_job", "team-a"))
    c.wait(name, timeout_s=20)

    assert cli.main(["list"]) == 0  # namespace from the kubeconfig context
    out = capsys.readouterr().out
    assert name in out and "Failed" in out and "NAME" in out
    assert cli.main(["status", name]) == 2  # failed for good: bad config
    out = capsys.readouterr().out
    assert "PodFailurePolicy" in out and "exit code 2" in out
    assert cli.main(["logs", name, "-n", "team-a"]) == 0
    assert capsys.readouterr().out.splitlines() == ["step 1 loss 2.0", "step 2 loss 1.5", "done"]
    assert cli.main(["cancel", name, "--yes"]) == 0
    assert kube.names("jobs", "team-a") == []
    assert cli.main(["status", name]) == 1
    assert f"No training job team-a/{name}" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["frobnicate"])
    assert exit_info.value.code == 2
