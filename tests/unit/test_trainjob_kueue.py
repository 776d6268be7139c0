"""launcher.backend=trainjob (Kubeflow Trainer v2) and Kueue for every backend: golden file, CRD-valid objects,
the pods Trainer compiles from the chart's runtime (same env and failure semantics as the other backends),
status/logs/cancel through the client against the fake API server, queue labels + suspend per backend,
priority, topology, and `framework-jobs status` while Kueue holds a job."""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import pytest
from hydra_plugins.kubernetes_launcher import _kueue, cli
from hydra_plugins.kubernetes_launcher._backends import BACKENDS
from hydra_plugins.kubernetes_launcher._client import JobClient
from hydra_plugins.kubernetes_launcher._render import job_name, main_object, pod_templates, render, to_yaml

from framework.errors import ConfigError
from tests.k8s import pss, schemas
from tests.k8s.compose import compose
from tests.k8s.fake_apiserver import FakeKube, simulate
from tests.k8s.pods import expand, pods_of, resolve_env
from tests.k8s.trainer import chart_runtime, compile_trainjob

GOLDEN = Path(__file__).resolve().parents[1] / "k8s" / "golden"
RICH = (
    "hardware=a100x8",
    "hardware.nodes=2",
    "launcher.backend=trainjob",
    "launcher.hf_token_secret=hf-token:token",
    "launcher.s3_secret=s3-credentials",
    "+launcher.secret_env.WANDB_API_KEY=wandb:api-key",
    "launcher.run_dir_pvc=training-runs",
    "launcher.image=registry.example.com/ml/framework:1.2.3",
    "launcher.image_pull_secrets=[regcred]",
    "launcher.active_deadline_s=86400",
    "launcher.queue=training",
    "launcher.priority=framework-high",
    "launcher.topology_preferred=cloud.provider.com/topology-rack",
    "++hardware.node_selector={nvidia.com/gpu.product: NVIDIA-A100-SXM4-80GB}",
    "hardware.tolerations=[{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]",
)


def rendered(*overrides: str, index: int = 0) -> list[dict[str, Any]]:
    cfg = compose(*overrides)
    backend, nodes = str(cfg.launcher.backend), int(cfg.hardware.nodes)
    name = job_name(str(cfg.run_name), sweep_id="s0test", job_index=index, backend=backend, nodes=nodes)
    return render(cfg, job_name=name, sweep_id="s0test", job_index=index, git_commit="0" * 40)


def normalized(objs: list[dict[str, Any]]) -> str:
    objs = copy.deepcopy(objs)
    for o in objs:
        if o["kind"] == "ConfigMap":
            o["data"]["config.yaml"] = "<resolved config>\n"
    return re.sub(r"(framework\.io/config-hash: )[0-9a-f]{16}", r"\1<config-hash>", to_yaml(objs))


# -------------------------------------------------------------------------------------------- TrainJob
def test_trainjob_golden() -> None:
    text = normalized(rendered(*RICH))
    path = GOLDEN / "trainjob.yaml"
    if os.environ.get("UPDATE_GOLDEN") == "1" or not path.exists():
        path.write_text(text)
    assert text == path.read_text(), f"{path} differs; rerun with UPDATE_GOLDEN=1 if the change is intended"


def test_trainjob_is_crd_valid() -> None:
    if not schemas.crds_present("TrainJob"):
        pytest.skip(f"TrainJob CRD not in {schemas.CRD_DIR}")
    objs = rendered(*RICH)
    assert [o["kind"] for o in objs] == ["ConfigMap", "TrainJob"]
    problems = [p for o in objs for p in schemas.errors(o)]
    assert problems == [], problems
    spec = main_object(objs)["spec"]
    assert spec["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": "ClusterTrainingRuntime",
        "name": "framework-torch",
    }
    assert spec["trainer"]["numNodes"] == 2 and spec["trainer"]["numProcPerNode"] == 8
    assert spec["trainer"]["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "8"
    assert (
        "podTemplateOverrides" not in spec and spec["runtimePatches"][0]["manager"] == "framework.io/launcher"
    )


def test_trainjob_secrets_are_references_and_no_env_from() -> None:
    spec = main_object(rendered(*RICH))["spec"]
    env = {e["name"]: e for e in spec["trainer"]["env"]}
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[var]["valueFrom"]["secretKeyRef"] == {"name": "s3-credentials", "key": var}
    assert env["AWS_ENDPOINT_URL"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "token"}
    assert all("value" not in e for n, e in env.items() if n.startswith("AWS_") or n == "HF_TOKEN")


def test_trainjob_refuses_what_it_cannot_express() -> None:
    with pytest.raises(ConfigError) as e:
        rendered(
            "launcher.backend=trainjob",
            "launcher.env_from_secrets=[tracker-keys]",
            "launcher.runtime_kind=Runtime",
            "++launcher.extra={pod_spec: {hostAliases: []}}",
            "launcher.priority_class=high",
        )
    text = str(e.value)
    for needle in ("env_from_secrets", "runtime_kind", "hostAliases", "priority_class"):
        assert needle in text, needle


def test_trainjob_pods_compiled_with_the_chart_runtime_are_restricted_and_same_env() -> None:
    """Trainer (emulated) + the chart's runtime: what each pod gets equals the jobset backend's pod."""
    objs = rendered(
        "hardware=cpu", "hardware.nodes=2", "hardware.nproc_per_node=2", "launcher.backend=trainjob"
    )
    jobset = compile_trainjob(main_object(objs))
    assert schemas.errors(jobset) == [] or not schemas.crds_present("JobSet")
    assert pss.object_violations(jobset) == []
    (rj,) = jobset["spec"]["replicatedJobs"]
    child = rj["template"]["spec"]
    assert child["completions"] == child["parallelism"] == 2 and child["backoffLimit"] == 0
    assert [r["action"] for r in child["podFailurePolicy"]["rules"]] == ["FailJob", "Ignore", "Ignore"]
    assert jobset["spec"]["failurePolicy"]["rules"][0]["onJobFailureReasons"] == ["PodFailurePolicy"]
    pods = pods_of(objs)
    assert [p.hostname for p in pods] == [
        f"{main_object(objs)['metadata']['name']}-node-0-{i}" for i in (0, 1)
    ]
    ref = rendered("hardware=cpu", "hardware.nodes=2", "hardware.nproc_per_node=2", "launcher.backend=jobset")
    ref_pods = pods_of(ref)
    for pod, other in zip(pods, ref_pods, strict=True):
        env, ref_env = resolve_env(pod), resolve_env(other)
        assert {k: env[k] for k in ("NNODES", "NPROC_PER_NODE", "NODE_RANK")} == {
            k: ref_env[k] for k in ("NNODES", "NPROC_PER_NODE", "NODE_RANK")
        }
        # same rank-0 address shape: <job>-node-0-0.<job> (the TrainJob's JobSet has the TrainJob's name)
        assert (
            env["MASTER_ADDR"]
            == f"{pod.hostname.rsplit('-', 1)[0]}-0.{main_object(objs)['metadata']['name']}"
        )
        c = pod.spec["containers"][0]
        assert c["name"] == "node" and c["workingDir"] == "/tmp"
        rank_arg = next(a for a in c["args"] if a.startswith("--node-rank="))
        assert expand(rank_arg, env) == f"--node-rank={pod.node_rank}"
        assert {m["mountPath"] for m in c["volumeMounts"]} == {
            m["mountPath"] for m in other.spec["containers"][0]["volumeMounts"]
        }
        assert pod.spec["restartPolicy"] == "Never" and pod.spec["automountServiceAccountToken"] is False
    assert chart_runtime()["metadata"]["name"] == compose("launcher.backend=trainjob").launcher.runtime


def test_trainjob_status_logs_cancel_through_the_client(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeKube(namespaces=("default",)) as kube:
        kube.on_create.append(simulate("succeed", step_s=0.02))
        c = JobClient("default", backend="trainjob", api_client=kube.api_client(), poll_interval_s=0.2)
        objs = rendered("hardware=cpu", "hardware.nodes=2", "launcher.backend=trainjob")
        name = c.submit(objs)
        assert kube.get("trainjobs", "default", name) is not None
        cm = kube.get("configmaps", "default", f"{name}-config")
        assert cm is not None and cm["metadata"]["ownerReferences"][0]["kind"] == "TrainJob"
        info = c.wait(name, timeout_s=30)
        assert info.phase == "Succeeded" and info.kind == "TrainJob"
        assert [p.node_rank for p in c.status(name).pods] == [0, 1]
        assert "done" in list(c.logs(name))
        assert [j.name for j in c.list()] == [name]
        c.cancel(name)
        assert kube.get("trainjobs", "default", name) is None
        assert kube.get("configmaps", "default", f"{name}-config") is None  # owned: collected with it
        # permanent failure (exit 2) is reported as such
        kube.on_create[:] = [simulate("fail_permanent", step_s=0.02)]
        name = c.submit(rendered("hardware=cpu", "launcher.backend=trainjob", index=1))
        info = c.wait(name, timeout_s=30)
        assert info.phase == "Failed" and info.permanent_failure


# ------------------------------------------------------------------------------------------------ Kueue
@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_queue_label_and_suspended_on_the_object_kueue_manages(backend: str) -> None:
    objs = rendered(
        "hardware=cpu",
        "hardware.nodes=2",
        f"launcher.backend={backend}",
        "launcher.queue=training",
        "launcher.priority=framework-high",
        "launcher.topology_required=kubernetes.io/hostname",
    )
    job = main_object(objs)
    assert job["metadata"]["labels"][_kueue.QUEUE_LABEL] == "training"
    assert job["metadata"]["labels"][_kueue.PRIORITY_LABEL] == "framework-high"
    node = job["spec"]
    for key in BACKENDS[backend].suspend_path:
        node = node[key]
    assert node is True
    for tpl in pod_templates(job):
        assert tpl["metadata"]["annotations"][_kueue.REQUIRED_TOPOLOGY] == "kubernetes.io/hostname"
    others = [o for o in objs if o is not job]
    assert all(_kueue.QUEUE_LABEL not in o["metadata"]["labels"] for o in others)  # only what Kueue manages
    kinds = {o["kind"] for o in objs}
    if schemas.crds_present(*kinds):
        assert [p for o in objs for p in schemas.errors(o)] == []


def test_no_queue_no_suspend_and_priority_class_on_pods() -> None:
    job = main_object(rendered("hardware=cpu", "launcher.priority_class=team-high"))
    assert "suspend" not in job["spec"] and _kueue.QUEUE_LABEL not in job["metadata"]["labels"]
    assert pod_templates(job)[0]["spec"]["priorityClassName"] == "team-high"


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (("launcher.priority=high",), "launcher.priority needs launcher.queue"),
        (("launcher.queue=Not_A_Queue",), "launcher.queue='Not_A_Queue'"),
        (("launcher.queue=q", "launcher.topology_required=a", "launcher.topology_preferred=b"), "exclusive"),
        (("launcher.queue=q", "launcher.topology_required='bad label'"), "not a node label key"),
        (("launcher.topology_preferred=kubernetes.io/hostname",), "needs launcher.queue"),
    ],
)
def test_bad_kueue_settings_name_the_key(overrides: tuple[str, ...], needle: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(needle)):
        rendered("hardware=cpu", *overrides)


def test_status_says_waiting_for_admission_while_suspended(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeKube(namespaces=("default",)) as kube:
        c = JobClient("default", backend="jobset", api_client=kube.api_client())
        name = c.submit(rendered("hardware=cpu", "launcher.backend=jobset", "launcher.queue=training"))

        def suspended(o: dict[str, Any]) -> None:  # what the JobSet controller reports for a suspended JobSet
            o["status"] = {
                "conditions": [{"type": "Suspended", "status": "True", "reason": "SuspendedByKueue"}]
            }

        kube.update("jobsets", "default", name, suspended)
        assert c.status(name).describe() == "Suspended: waiting for admission in queue training (Kueue)"
        monkeypatch.setenv("KUBECONFIG", str(kube.write_kubeconfig(tmp_path / "kubeconfig")))
        cli.main(["status", name, "-n", "default"])
        assert "waiting for admission in queue training" in capsys.readouterr().out
