"""Preflight against the fake API server: a cluster that has everything passes; each missing thing is one line
naming the object and the fix, all of them at once, exit 2; forbidden checks are skipped; sweeps check once;
launcher.preflight=false skips it."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hydra_plugins.kubernetes_launcher import _core, _preflight
from hydra_plugins.kubernetes_launcher._client import JobClient
from hydra_plugins.kubernetes_launcher._render import job_name, render

from framework.distributed import free_port
from tests.k8s.compose import compose
from tests.k8s.fake_apiserver import FakeKube

NS = "team-a"
GPU = (
    "hardware=h100x8",
    "hardware.nodes=2",
    f"launcher.namespace={NS}",
    "launcher.hf_token_secret=hf-token:token",
    "launcher.s3_secret=framework-s3",
    "launcher.image_pull_secrets=[registry-pull]",
    "launcher.run_dir_pvc=framework-outputs",  # the chart's outputs PVC (the default)
    "launcher.queue=training",
)


def job(*overrides: str) -> tuple[list[dict[str, Any]], Any]:
    cfg = compose(*overrides)
    b, nodes = str(cfg.launcher.backend), int(cfg.hardware.nodes)
    name = job_name(str(cfg.run_name), sweep_id="s0", job_index=0, backend=b, nodes=nodes)
    return render(cfg, job_name=name, sweep_id="s0", job_index=0, git_commit=None), cfg


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def secret(name: str, *keys: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NS},
        "data": {k: b64("x") for k in keys},
    }


def node(name: str, gpus: int, product: str = "NVIDIA-H100-80GB-HBM3") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "namespace": "", "labels": {"nvidia.com/gpu.product": product}},
        "status": {"allocatable": {"nvidia.com/gpu": str(gpus), "cpu": "200"}},
    }


@pytest.fixture
def cluster() -> Iterator[FakeKube]:
    """A namespace set up the way dockerfiles/chart does, plus two 8-GPU nodes."""
    with FakeKube(namespaces=(NS,)) as kube:
        kube.put("secrets", secret("hf-token", "token"))
        kube.put("secrets", secret("framework-s3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))
        kube.put("secrets", secret("registry-pull", ".dockerconfigjson"))
        kube.put(
            "persistentvolumeclaims",
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": "framework-outputs", "namespace": NS},
                "status": {"phase": "Bound"},
            },
        )
        kube.put(
            "localqueues",
            {
                "apiVersion": "kueue.x-k8s.io/v1beta2",
                "kind": "LocalQueue",
                "metadata": {"name": "training", "namespace": NS},
                "spec": {"clusterQueue": "team-a"},
            },
        )
        kube.put(
            "clusterqueues",
            {
                "apiVersion": "kueue.x-k8s.io/v1beta2",
                "kind": "ClusterQueue",
                "metadata": {"name": "team-a", "namespace": ""},
                "spec": {
                    "resourceGroups": [
                        {
                            "coveredResources": ["nvidia.com/gpu"],
                            "flavors": [
                                {
                                    "name": "h100",
                                    "resources": [{"name": "nvidia.com/gpu", "nominalQuota": "8"}],
                                }
                            ],
                        }
                    ]
                },
            },
        )
        kube.put(
            "clustertrainingruntimes",
            {
                "apiVersion": "trainer.kubeflow.org/v1alpha1",
                "kind": "ClusterTrainingRuntime",
                "metadata": {"name": "framework-torch", "namespace": ""},
                "spec": {},
            },
        )
        kube.put("nodes", node("gpu-1", 8))
        kube.put("nodes", node("gpu-2", 8))
        yield kube


def problems(kube: FakeKube, *overrides: str) -> list[str]:
    objs, cfg = job(*GPU, *overrides)
    client = JobClient(
        NS, backend=str(cfg.launcher.backend), api_client=kube.api_client(), retries=1, timeout_s=3
    )
    return _preflight.Preflight(client, objs, cfg).run()


def test_a_cluster_with_everything_passes(cluster: FakeKube) -> None:
    assert problems(cluster) == []
    assert problems(cluster, "launcher.backend=trainjob") == []
    methods = {m for m, _ in cluster.requests}
    assert methods == {"GET", "POST"} and all(
        p.endswith("selfsubjectaccessreviews") for m, p in cluster.requests if m == "POST"
    )


def test_the_namespace_first(cluster: FakeKube) -> None:
    objs, cfg = job(*GPU)
    client = JobClient("nowhere", backend="indexed_job", api_client=cluster.api_client(), retries=1)
    (line,) = _preflight.Preflight(client, objs, cfg).run()
    assert line.startswith("namespace nowhere does not exist: kubectl create namespace nowhere")


def test_every_missing_thing_is_one_line_and_all_are_reported(cluster: FakeKube) -> None:
    cluster.delete("secrets", NS, "hf-token")
    cluster.put("secrets", secret("framework-s3", "AWS_ACCESS_KEY_ID"))  # the second key is missing
    cluster.delete("persistentvolumeclaims", NS, "framework-outputs")
    cluster.delete("localqueues", NS, "training")
    cluster.delete("clustertrainingruntimes", "", "framework-torch")
    cluster.forbidden.add(("create", "trainer.kubeflow.org", "trainjobs"))
    found = problems(cluster, "launcher.backend=trainjob", "hardware.gpus_per_node=16")
    expected = [
        "Secret team-a/framework-s3 has no key AWS_SECRET_ACCESS_KEY (env AWS_SECRET_ACCESS_KEY)",
        "Secret team-a/hf-token not found (env HF_TOKEN): kubectl -n team-a create secret generic hf-token --from-literal=token=...",
        "PersistentVolumeClaim team-a/framework-outputs not found (launcher.pvcs)",
        "LocalQueue team-a/training not found (launcher.queue)",
        "ClusterTrainingRuntime framework-torch not found (launcher.runtime)",
        "the launcher may not create trainjobs.trainer.kubeflow.org in namespace team-a",
        "no node offers 16 nvidia.com/gpu per pod (hardware.gpus_per_node), so the pods would stay Pending",
    ]
    assert len(found) == len(expected), "\n".join(found)
    for want, line in zip(expected, found, strict=True):
        assert line.startswith(want), f"{line!r} does not start with {want!r}"
        assert "\n" not in line
    assert "the cluster has gpu-2: 8, gpu-1: 8" in found[-1]
    with pytest.raises(_preflight.PreflightError) as e:
        objs, cfg = job(*GPU, "launcher.backend=trainjob", "hardware.gpus_per_node=16")
        client = JobClient(NS, backend="trainjob", api_client=cluster.api_client(), retries=1)
        _preflight.check(client, objs, cfg)
    assert e.value.exit_code == 2 and len(e.value.lines) == len(expected)
    assert "launcher.preflight=false" in str(e.value)


def test_nodes_not_readable_falls_back_to_the_queue_quota(cluster: FakeKube) -> None:
    cluster.fail("GET", r"/api/v1/nodes$", 403, times=-1)
    assert problems(cluster, "hardware.nodes=1") == []  # 8 GPUs fit the queue's 8
    (line,) = problems(cluster)  # 2 pods x 8 = 16 > 8
    assert line.startswith("ClusterQueue team-a (queue training) has no flavor with 16 nvidia.com/gpu")
    assert "{'h100': 8}" in line


def test_forbidden_reads_are_skipped_not_failed(cluster: FakeKube) -> None:
    cluster.fail("GET", r"/secrets/", 403, times=-1)
    cluster.fail("GET", r"/api/v1/namespaces/team-a$", 403, times=-1)
    cluster.delete("secrets", NS, "hf-token")  # cannot be seen: no line
    assert problems(cluster) == []


def test_unreachable_bucket(cluster: FakeKube, monkeypatch: pytest.MonkeyPatch) -> None:
    from framework import storage

    storage.clear_instances()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    (line,) = problems(cluster, "storage=s3", "storage.output_uri=s3://runs-bucket/team-a")
    assert line.startswith("the run dir's bucket s3://runs-bucket is not reachable via http://127.0.0.1:")


def test_reachable_bucket(cluster: FakeKube, s3_env: str, s3_bucket: str) -> None:
    assert problems(cluster, "storage=s3", f"storage.output_uri={s3_bucket}/team-a") == []


def test_sweeps_check_once_and_preflight_false_skips(
    cluster: FakeKube, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    monkeypatch.setattr(
        _preflight, "check", lambda client, objs, cfg: calls.append(objs[0]["metadata"]["name"])
    )
    jobs = []
    for i, lr in enumerate(("1e-4", "3e-4", "1e-3")):
        objs, cfg = job(*GPU, f"optim.lr={lr}")
        jobs.append(SimpleNamespace(launcher=cfg.launcher, objs=objs, cfg=cfg, idx=i))
    key = (None, NS, str(jobs[0].launcher.backend))
    _core._run_preflight(jobs, {key: None})  # type: ignore[arg-type,dict-item]
    assert len(calls) == 1
    objs, cfg = job(*GPU, "launcher.preflight=false")
    _core._run_preflight([SimpleNamespace(launcher=cfg.launcher, objs=objs, cfg=cfg)], {key: None})  # type: ignore[list-item,dict-item]
    assert len(calls) == 1


@pytest.mark.integration
def test_launch_stops_before_submitting_and_exits_2(tmp_path: Path) -> None:
    """python -m framework launcher=kubernetes with a Secret the cluster lacks: exit 2, the line, no job."""
    from tests.helpers import run_cli

    with FakeKube() as kube:
        env = {"KUBECONFIG": str(kube.write_kubeconfig(tmp_path / "kubeconfig"))}
        proc = run_cli(["launcher=kubernetes", "launcher.hf_token_secret=hf-token:token"], tmp_path, env=env)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr
        assert "Secret default/hf-token not found (env HF_TOKEN)" in proc.stderr
        assert kube.names("jobsets") == kube.names("jobs") == kube.names("configmaps") == []
        proc = run_cli(
            ["launcher=kubernetes", "launcher.hf_token_secret=hf-token:token", "launcher.preflight=false",
             "launcher.follow=false"],
            tmp_path, env=env,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert len(kube.names("jobsets") + kube.names("jobs")) == 1


def test_staged_trainjob_needs_the_runtimes_initializer_steps(cluster: FakeKube) -> None:
    """launcher.staging=all with a TrainJob: a runtime without model-initializer ignores spec.initializer."""
    from tests.k8s.trainer import chart_runtime

    hub = ("launcher.backend=trainjob", "launcher.staging=all", "model.pretrained=acme/Tiny-Instruct")
    (line,) = problems(cluster, *hub)
    assert line.startswith("ClusterTrainingRuntime framework-torch has no model-initializer step")
    assert "trainingRuntime.initializers=true" in line
    runtime = chart_runtime("trainingRuntime.initializers=true")
    runtime["metadata"]["namespace"] = ""  # cluster-scoped, as the fixture stores it
    cluster.put("clustertrainingruntimes", runtime)
    assert problems(cluster, *hub) == []
