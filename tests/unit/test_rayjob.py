"""launcher.backend=rayjob: the KubeRay RayJob for 1, 2 and 4 nodes against golden files and the RayJob and
RayCluster CRDs (KubeRay v1.7), its pods, secrets, clean-up, Kueue and status reading.

The entrypoint run against a real local Ray cluster is in tests/integration/test_ray_cluster.py.
Regenerate the golden files after an intended change: ``UPDATE_GOLDEN=1 python -m pytest tests/unit/test_rayjob.py``.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
from hydra_plugins.kubernetes_launcher._render import job_name, main_object, render, to_yaml
from hydra_plugins.ray_launcher import _rayjob

from framework.errors import ConfigError
from tests.k8s import schemas
from tests.k8s.compose import compose

GOLDEN = Path(__file__).resolve().parents[1] / "k8s" / "golden"
TOKEN_VALUE = "rAy-ToKeN-vAlUe-0123456789"  # in the launcher's env: must never reach a manifest
BASE = (
    "launcher.backend=rayjob",
    "hardware=a100x8",
    "launcher.image=registry.example.com/ml/framework:1.2.3",
    "launcher.image_pull_secrets=[regcred]",
    "launcher.ray_auth_secret=ray-auth:auth_token",
    "launcher.s3_secret=minio-credentials",
    "launcher.hf_token_secret=hf-token:token",
    "launcher.active_deadline_s=86400",
    "++hardware.node_selector={nvidia.com/gpu.product: NVIDIA-A100-SXM4-80GB}",
    "hardware.tolerations=[{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]",
    "storage=s3",
    "storage.output_uri=s3://runs/exp1",
)


def rendered(*overrides: str) -> list[dict[str, Any]]:
    cfg = compose(*BASE, *overrides)
    name = job_name(
        str(cfg.run_name), sweep_id="s0test", job_index=0, backend="rayjob", nodes=int(cfg.hardware.nodes)
    )
    return render(cfg, job_name=name, sweep_id="s0test", job_index=0, git_commit="0" * 40)


def rayjob(*overrides: str) -> dict[str, Any]:
    return main_object(rendered(*overrides))


def normalized(objs: list[dict[str, Any]]) -> str:
    objs = copy.deepcopy(objs)
    for o in objs:
        if o["kind"] == "ConfigMap":
            o["data"]["config.yaml"] = "<resolved config>\n"
    return re.sub(r"(framework\.io/config-hash: )[0-9a-f]{16}", r"\1<config-hash>", to_yaml(objs))


def crd_errors(job: dict[str, Any]) -> list[str]:
    """RayJob against its CRD, and its rayClusterSpec as a RayCluster against the RayCluster CRD."""
    cluster = {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": job["metadata"]["name"], "namespace": "default"},
        "spec": job["spec"]["rayClusterSpec"],
    }
    return schemas.errors(job) + schemas.errors(cluster)


@pytest.mark.parametrize("nodes", [1, 2, 4])
def test_golden_and_valid_against_the_crds(nodes: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN_VALUE)
    objs = rendered(f"hardware.nodes={nodes}")
    text = normalized(objs)
    path = GOLDEN / f"rayjob_{nodes}node.yaml"
    if os.environ.get("UPDATE_GOLDEN") == "1" or not path.exists():
        path.write_text(text)
    assert text == path.read_text(), f"{path} differs; rerun with UPDATE_GOLDEN=1 if the change is intended"
    assert TOKEN_VALUE not in to_yaml(objs)
    if not schemas.crds_present("RayJob", "RayCluster"):
        pytest.skip(f"CRD schemas not found in {schemas.CRD_DIR} (the shared k8s-crds checkout)")
    assert [p for o in objs for p in schemas.errors(o)] == []
    assert crd_errors(main_object(objs)) == []


def test_ray_nodes_drain_for_the_pods_grace_period() -> None:
    """A deleted worker pod's `ray start` marks its node draining (Ray Train then tells the workers, which
    checkpoint the current step) for the grace period less the margin, not Ray's default 30 s."""
    cluster = rayjob("hardware.nodes=2", "launcher.termination_grace_s=300")["spec"]["rayClusterSpec"]
    for group in (cluster["headGroupSpec"], *cluster["workerGroupSpecs"]):
        spec = group["template"]["spec"]
        env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
        assert spec["terminationGracePeriodSeconds"] == 300
        assert env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] == "285"


def test_head_and_worker_groups_from_the_hardware_profile() -> None:
    spec = rayjob("hardware.nodes=4")["spec"]
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    (group,) = cluster["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 4
    assert head["rayStartParams"]["num-cpus"] == "0"  # no training on the head
    hc, wc = head["template"]["spec"]["containers"][0], group["template"]["spec"]["containers"][0]
    assert hc["resources"]["limits"] == {"cpu": "2", "memory": "8Gi"}  # no GPUs
    # the workers are the other backends' training pods: the same requests (= limits)
    pod = main_object(rendered("hardware.nodes=4", "launcher.backend=indexed_job"))
    trainer = pod["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert wc["resources"] == trainer and trainer["limits"]["nvidia.com/gpu"] == "8"
    wspec, hspec = group["template"]["spec"], head["template"]["spec"]
    assert wspec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert wspec["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert "nodeSelector" not in hspec and "tolerations" not in hspec
    shm = {v["name"]: v for v in wspec["volumes"]}["dshm"]
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "64Gi"}
    for c in (hc, wc):  # KubeRay runs `ray start`; Ray Train sets the rendezvous env
        assert "command" not in c and "args" not in c
        names = {e["name"] for e in c["env"]}
        assert not names & {"MASTER_ADDR", "MASTER_PORT", "NNODES", "NODE_RANK", "NPROC_PER_NODE"}
    assert {m["mountPath"] for m in hc["volumeMounts"]} >= {"/etc/framework", "/tmp", "/cache", "/dev/shm"}
    assert "/etc/framework" not in {m["mountPath"] for m in wc["volumeMounts"]}


def test_entrypoint_is_the_framework_with_launcher_ray_on_this_cluster() -> None:
    job = rayjob()
    name = job["metadata"]["name"]
    spec = job["spec"]
    assert spec["submissionMode"] == "K8sJobMode"
    assert spec["entrypoint"] == (
        "python -m framework --config-path=/etc/framework --config-name=config hydra.mode=RUN "
        f"hydra.run.dir=/workspace/runs/{name} hydra.output_subdir=null launcher.name=ray launcher.address=auto "
        "launcher.max_failures=3"
    )
    assert name.startswith("lora-llama-tiny-llama")
    # A run dir on an RWX PVC mounted in every pod is shared: the job's own validation is told so.
    pvc = rayjob("storage=local", "storage.output_uri=null", "hardware.nodes=2")  # launcher.run_dir_pvc's
    assert pvc["spec"]["entrypoint"].endswith("launcher.max_failures=3 launcher.run_dir_shared=true")


def test_pods_restricted_and_secrets_by_reference() -> None:
    spec = rayjob()["spec"]
    templates = [*_rayjob.pod_templates(spec), spec["submitterPodTemplate"]]
    assert len(templates) == 3
    for tpl in templates:
        pod = tpl["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        c = pod["containers"][0]
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]} and sc["runAsNonRoot"] is True
        env = {e["name"]: e for e in c["env"]}
        assert env["RAY_AUTH_TOKEN"] == {
            "name": "RAY_AUTH_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "ray-auth", "key": "auth_token"}},
        }
        # Ray's writable paths: /tmp (/tmp/ray) is an emptyDir, the root filesystem is read-only.
        volumes = {v["name"]: v for v in pod["volumes"]}
        tmp = next(m for m in c["volumeMounts"] if m["mountPath"] == "/tmp")
        assert "emptyDir" in volumes[tmp["name"]]
    for tpl in _rayjob.pod_templates(spec):  # MinIO/S3 credentials and endpoint: the Secret, whole
        c = tpl["spec"]["containers"][0]
        assert c["envFrom"] == [{"secretRef": {"name": "minio-credentials"}}]
        assert {e["name"]: e for e in c["env"]}["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "hf-token"
    assert spec["rayClusterSpec"]["authOptions"] == {"mode": "token", "secretName": "ray-auth"}


def test_clean_up_rules_or_shutdown_with_kueue() -> None:
    spec = rayjob("launcher.ttl_after_finished_s=3600", "launcher.backoff_limit=2")["spec"]
    assert spec["activeDeadlineSeconds"] == 86400
    strategy = spec["deletionStrategy"]
    assert set(strategy) == {"deletionRules"}  # never the deprecated onSuccess/onFailure
    rules = {
        (r["condition"].get("jobStatus"), r["policy"]): r["condition"]["ttlSeconds"]
        for r in strategy["deletionRules"]
    }
    assert (
        rules[("SUCCEEDED", "DeleteWorkers")] == rules[("FAILED", "DeleteWorkers")] == 0
    )  # GPUs freed at once
    assert rules[("SUCCEEDED", "DeleteSelf")] == rules[("FAILED", "DeleteSelf")] == 3600
    # KubeRay refuses rules together with shutdownAfterJobFinishes / a global TTL.
    assert "shutdownAfterJobFinishes" not in spec and "ttlSecondsAfterFinished" not in spec
    queued = rayjob("launcher.queue=team-a", "launcher.ttl_after_finished_s=3600")
    qspec = queued["spec"]
    assert queued["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert qspec["suspend"] is True
    assert qspec["shutdownAfterJobFinishes"] is True and qspec["ttlSecondsAfterFinished"] == 3600
    assert "deletionStrategy" not in qspec
    if schemas.crds_present("RayJob", "RayCluster"):
        assert crd_errors(queued) == []


def test_multi_node_needs_a_shared_run_dir() -> None:
    with pytest.raises(ConfigError, match="launcher.backend=rayjob with hardware.nodes=2"):
        rayjob(
            "storage=local", "storage.output_uri=null", "hardware.nodes=2", "launcher.run_dir_pvc=null",
            "launcher.backoff_limit=0",
        )  # fmt: skip
    with pytest.raises(ConfigError, match="launcher.ray_auth_secret='ray-auth' must be 'secret-name:key'"):
        rayjob("launcher.ray_auth_secret=ray-auth")


def test_exit_2_is_never_retried_by_kuberay() -> None:
    """KubeRay retries a Failed RayJob with a new cluster whatever the entrypoint exited (KubeRay v1.7,
    rayjob_controller.go checkBackoffLimitAndUpdateStatusIfNeeded: only DeadlineExceeded is exempt), so the RayJob
    allows none; launcher.backoff_limit becomes Ray Train's max_failures inside the cluster, where exit 2 fails the
    run at once (_train.outcome_code)."""
    for budget in (0, 2, 5):
        spec = rayjob(f"launcher.backoff_limit={budget}")["spec"]
        assert spec["backoffLimit"] == 0
        assert shlex.split(spec["entrypoint"])[-1] == f"launcher.max_failures={budget}"
    if schemas.crds_present("RayJob", "RayCluster"):
        assert crd_errors(rayjob("launcher.backoff_limit=5")) == []


def test_status_and_log_pod_of_a_rayjob() -> None:
    def phase(**status: str) -> str:
        return _rayjob.phase({}, status)[0]

    assert phase(jobDeploymentStatus="Initializing") == "Pending"
    assert phase(jobDeploymentStatus="Running", jobStatus="RUNNING") == "Running"
    assert phase(jobDeploymentStatus="Complete", jobStatus="SUCCEEDED") == "Succeeded"
    assert phase(jobDeploymentStatus="Complete", jobStatus="FAILED") == "Failed"
    assert phase(jobDeploymentStatus="Failed") == "Failed"
    assert phase(jobDeploymentStatus="Suspended") == "Suspended"
    submitter = {"metadata": {"labels": {"batch.kubernetes.io/job-name": "x"}}}
    head = {"metadata": {"labels": {"ray.io/node-type": "head"}}}
    assert _rayjob.node_rank(submitter) == 0 and _rayjob.node_rank(head) is None


def test_rayjob_status_logs_cancel_through_the_kubernetes_client() -> None:
    """The existing client against the fake API server playing KubeRay (the submitter pod carries the log)."""
    from hydra_plugins.kubernetes_launcher._client import JobClient

    from tests.k8s.fake_apiserver import FakeKube, simulate

    with FakeKube(namespaces=("default",)) as kube:
        kube.on_create.append(simulate("succeed", step_s=0.02))
        c = JobClient("default", backend="rayjob", api_client=kube.api_client(), poll_interval_s=0.2)
        name = c.submit(rendered("hardware.nodes=2"))
        assert kube.get("rayjobs", "default", name) is not None
        info = c.wait(name, timeout_s=30)
        assert info.phase == "Succeeded" and info.kind == "RayJob"
        ranks = [p.node_rank for p in c.status(name).pods]
        assert ranks.count(0) == 1 and len(ranks) == 4  # submitter (rank 0: its log), head, 2 workers
        assert "done" in list(c.logs(name))
        assert [j.name for j in c.list()] == [name]
        c.cancel(name)
        assert kube.get("rayjobs", "default", name) is None
        kube.on_create[:] = [simulate("fail", step_s=0.02)]
        name = c.submit(rendered())
        assert c.wait(name, timeout_s=30).phase == "Failed"
