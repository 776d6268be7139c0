"""Manifest rendering: golden files, official schemas, secrets, pod security, names, env and failure policy.

Regenerate the golden files after an intended change: ``UPDATE_GOLDEN=1 python -m pytest tests/unit/test_k8s_render.py``.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra_plugins.kubernetes_launcher import _render
from hydra_plugins.kubernetes_launcher._render import job_name, pod_templates, render, to_yaml
from omegaconf import DictConfig, OmegaConf

from framework.errors import ConfigError
from tests.k8s import schemas
from tests.k8s.compose import compose

GOLDEN = Path(__file__).resolve().parents[1] / "k8s" / "golden"
BACKENDS = ("indexed_job", "jobset", "pytorchjob")
SECRET = "hf_sEcReT_vAlUe_0123456789"  # must never appear in a rendered manifest
RICH = (
    "hardware=a100x8",
    "hardware.nodes=2",
    "launcher.hf_token_secret=hf-token:token",
    "launcher.s3_secret=s3-credentials",
    "+launcher.secret_env.WANDB_API_KEY=wandb:api-key",
    "launcher.run_dir_pvc=training-runs",
    "+launcher.env.TOKENIZERS_PARALLELISM='false'",
    "launcher.image=registry.example.com/ml/framework:1.2.3",
    "launcher.image_pull_secrets=[regcred]",
    "launcher.active_deadline_s=86400",
    "++hardware.node_selector={nvidia.com/gpu.product: NVIDIA-A100-SXM4-80GB}",
    "hardware.tolerations=[{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]",
)


@functools.cache
def _cfg(*overrides: str) -> DictConfig:
    return compose(*overrides)


def rendered(
    *overrides: str, name: str | None = None, sweep_id: str = "s0test", index: int = 0
) -> list[dict[str, Any]]:
    cfg = _cfg(*overrides)
    backend, nodes = str(cfg.launcher.backend), int(cfg.hardware.nodes)
    name = name or job_name(
        str(cfg.run_name), sweep_id=sweep_id, job_index=index, backend=backend, nodes=nodes
    )
    return render(cfg, job_name=name, sweep_id=sweep_id, job_index=index, git_commit="0" * 40)


def by_kind(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next(o for o in objs if o["kind"] == kind)


def container(obj: dict[str, Any], i: int = 0) -> dict[str, Any]:
    return pod_templates(obj)[i]["spec"]["containers"][0]


def normalized(objs: list[dict[str, Any]]) -> str:
    """Golden form: the resolved config and its hash vary with every config default, so they are stubbed."""
    objs = copy.deepcopy(objs)
    for o in objs:
        if o["kind"] == "ConfigMap":
            o["data"]["config.yaml"] = "<resolved config>\n"
    return re.sub(r"(framework\.io/config-hash: )[0-9a-f]{16}", r"\1<config-hash>", to_yaml(objs))


# --------------------------------------------------------------------------------------------- golden
@pytest.mark.parametrize("backend", BACKENDS)
def test_golden(backend: str) -> None:
    extra = (
        ("launcher.setup_namespace=true", "launcher.egress_cidrs=[0.0.0.0/0]")
        if backend == "indexed_job"
        else ()
    )
    text = normalized(rendered(*RICH, f"launcher.backend={backend}", *extra))
    path = GOLDEN / f"{backend}.yaml"
    if os.environ.get("UPDATE_GOLDEN") == "1" or not path.exists():
        path.write_text(text)
    assert text == path.read_text(), f"{path} differs; rerun with UPDATE_GOLDEN=1 if the change is intended"


# -------------------------------------------------------------------------------------------- schemas
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_object_validates_against_official_schemas(backend: str) -> None:
    if backend != "indexed_job" and not schemas.crds_present():
        pytest.skip(f"CRD schemas not found in {schemas.CRD_DIR} (the shared k8s-crds checkout)")
    objs = rendered(
        *RICH,
        f"launcher.backend={backend}",
        "launcher.setup_namespace=true",
        "launcher.egress_cidrs=[10.0.0.0/8]",
    )
    kinds = {o["kind"] for o in objs}
    assert {"ConfigMap", "ServiceAccount", "Role", "RoleBinding", "NetworkPolicy"} <= kinds
    problems = [p for o in objs for p in schemas.errors(o)]
    assert problems == []


def test_crd_check_catches_unknown_fields() -> None:
    if not schemas.crds_present():
        pytest.skip(f"CRD schemas not found in {schemas.CRD_DIR}")
    js = by_kind(rendered("launcher.backend=jobset"), "JobSet")
    js["spec"]["failurePolicy"]["maxRestart"] = 3  # typo: a real API server would silently drop it
    assert any("maxRestart" in p for p in schemas.errors(js))
    job = by_kind(rendered("launcher.backend=indexed_job"), "Job")
    job["spec"]["completionsMode"] = "Indexed"
    assert schemas.errors(job)


def test_dry_run_yaml_is_one_document_per_object() -> None:
    objs = rendered(*RICH)
    docs = list(yaml.safe_load_all(to_yaml(objs)))
    assert docs == objs


# -------------------------------------------------------------------------------------------- secrets
@pytest.mark.parametrize("backend", BACKENDS)
def test_secrets_only_by_reference(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    objs = rendered(*RICH, f"launcher.backend={backend}", "+launcher.env_from_secrets=[tracker-keys]")
    assert SECRET not in to_yaml(objs)
    c = container(_render.main_object(objs))
    env = {e["name"]: e for e in c["env"]}
    assert env["HF_TOKEN"] == {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}},
    }
    assert env["WANDB_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "wandb", "key": "api-key"}
    assert c["envFrom"] == [
        {"secretRef": {"name": "s3-credentials"}},
        {"secretRef": {"name": "tracker-keys"}},
    ]
    for e in c["env"]:
        if _render.looks_secret(e["name"]):
            assert "value" not in e, e


@pytest.mark.parametrize(
    "var", ["HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "DB_PASSWORD", "WANDB_API_KEY", "my-api-key"]
)
def test_plain_env_that_looks_secret_is_rejected(var: str) -> None:
    with pytest.raises(
        ConfigError, match=rf"launcher\.env\.{re.escape(var)} looks like a secret.*secret_env"
    ):
        rendered(f"+launcher.env.{var}=oops")


def test_plain_env_with_secret_like_substrings_is_fine() -> None:
    env = {
        e["name"]: e
        for e in container(
            _render.main_object(
                rendered("+launcher.env.TOKENIZERS_PARALLELISM='false'", "+launcher.env.KEYBOARD_LAYOUT=us")
            )
        )["env"]
    }
    assert env["TOKENIZERS_PARALLELISM"]["value"] == "false"


def test_secret_looking_config_value_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"launcher\.annotations\.wandb-api-key looks like a secret"):
        rendered("++launcher.annotations={wandb-api-key: xyz}")


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("launcher.hf_token_secret=just-a-name", r"launcher\.hf_token_secret=.*'secret-name:key'"),
        ("+launcher.secret_env.X=bad", r"launcher\.secret_env\.X=.*'secret-name:key'"),
        ("+launcher.env.NODE_RANK=3", r"launcher\.env\.NODE_RANK: NODE_RANK is set by the launcher"),
        ("launcher.backend=slurm", r"launcher\.backend='slurm' is not valid"),
        ("++launcher.labels={framework.io/run-name: x}", r"reserved for the launcher"),
        ("+launcher.pvcs.data=/tmp/data", r"launcher\.pvcs\.data=.*not under"),
        ("+launcher.extra.pod_specs={}", r"launcher\.extra: unknown key\(s\) pod_specs"),
        ("launcher.egress_cidrs=[everywhere]", r"not a CIDR"),
    ],
)
def test_bad_launcher_settings_name_the_key(override: str, match: str) -> None:
    extra = ("launcher.setup_namespace=true",) if "egress" in override else ()
    with pytest.raises(ConfigError, match=match):
        rendered(override, *extra)


# ----------------------------------------------------------------------------------------- pod profile
@pytest.mark.parametrize("backend", BACKENDS)
def test_pod_profile_is_restricted(backend: str) -> None:
    main = _render.main_object(rendered(*RICH, f"launcher.backend={backend}"))
    for tpl in pod_templates(main):
        spec = tpl["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == 1000
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        assert spec["restartPolicy"] == "Never"
        c = spec["containers"][0]
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert not sc.get("privileged")
        # Writable paths are volumes: /tmp, caches, /dev/shm (memory, sized), the run dir (PVC here).
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes[mounts["/dev/shm"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": "64Gi"}
        assert "emptyDir" in volumes[mounts["/tmp"]] and "emptyDir" in volumes[mounts["/cache"]]
        assert volumes[mounts["/workspace/runs"]]["persistentVolumeClaim"] == {"claimName": "training-runs"}
        assert volumes[mounts["/etc/framework"]]["configMap"]["name"].endswith("-config")
        env = {e["name"]: e.get("value") for e in c["env"]}
        for var in ("HF_HOME", "TRITON_CACHE_DIR", "TORCH_EXTENSIONS_DIR", "XDG_CACHE_HOME", "HOME"):
            assert env[var].startswith("/cache"), var
        assert env["PYTHONUNBUFFERED"] == "1"


def test_service_account_token_only_when_asked() -> None:
    spec = pod_templates(_render.main_object(rendered("launcher.service_account=trainer")))[0]["spec"]
    assert spec["serviceAccountName"] == "trainer" and spec["automountServiceAccountToken"] is False
    spec = pod_templates(
        _render.main_object(
            rendered("launcher.service_account=trainer", "launcher.mount_service_account_token=true")
        )
    )[0]["spec"]
    assert spec["automountServiceAccountToken"] is True


def test_run_dir_is_durable_by_default_and_output_uri_wins() -> None:
    objs = rendered()
    assert not _render.run_dir_is_ephemeral(objs)  # the chart's framework-outputs PVC at launcher.run_dir
    volumes = pod_templates(_render.main_object(objs))[0]["spec"]["volumes"]
    assert {
        "name": "pvc-framework-outputs",
        "persistentVolumeClaim": {"claimName": "framework-outputs"},
    } in volumes
    assert _render.run_dir_is_ephemeral(rendered("launcher.run_dir_pvc=null", "launcher.backoff_limit=0"))
    objs = rendered("storage=s3", "storage.output_uri=s3://bucket/runs/x")
    main = _render.main_object(objs)
    assert main["metadata"]["annotations"]["framework.io/run-dir"] == "s3://bucket/runs/x"
    assert f"hydra.run.dir=/workspace/runs/{main['metadata']['name']}" in container(main)["args"]


def test_resources_from_the_hardware_profile() -> None:
    main = _render.main_object(rendered(*RICH))
    res = container(main)["resources"]
    # 0.9 (hardware.allocatable_fraction) of the p4d node's 96 CPU / 1152Gi: room for the daemonsets
    assert res["requests"] == res["limits"] == {"cpu": "86400m", "memory": "1061683Mi", "nvidia.com/gpu": "8"}
    spec = pod_templates(main)[0]["spec"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    cpu = container(_render.main_object(rendered("hardware=cpu")))["resources"]["limits"]
    assert cpu == {"cpu": "1800m", "memory": "7372Mi"}
    whole = container(_render.main_object(rendered("hardware=cpu", "hardware.allocatable_fraction=1.0")))
    assert whole["resources"]["limits"] == {"cpu": "2", "memory": "8Gi"}


# --------------------------------------------------------------------------------------- rendezvous env
EXPECTED_ADDR = {
    "indexed_job": "{n}-0.{n}",
    "jobset": "{n}-node-0-0.{n}",
    "pytorchjob": "{n}-master-0",
}


@pytest.mark.parametrize("backend", BACKENDS)
def test_rendezvous_env_and_command(backend: str) -> None:
    main = _render.main_object(rendered("hardware=a100x8", "hardware.nodes=2", f"launcher.backend={backend}"))
    name = main["metadata"]["name"]
    templates = pod_templates(main)
    assert len(templates) == (2 if backend == "pytorchjob" else 1)
    for tpl in templates:
        c = tpl["spec"]["containers"][0]
        env = {e["name"]: e for e in c["env"]}
        assert env["MASTER_ADDR"]["value"] == EXPECTED_ADDR[backend].format(n=name)
        assert env["MASTER_PORT"]["value"] == "29500"
        assert env["NNODES"]["value"] == "2" and env["NPROC_PER_NODE"]["value"] == "8"
        assert "WORLD_SIZE" not in env and "RANK" not in env  # torchrun derives them
        if backend == "pytorchjob":
            assert "NODE_RANK" not in env  # the operator's RANK (appended after ours) is the node rank
            assert "--node-rank=$(RANK)" in c["args"]
            assert c["name"] == "pytorch" and c["ports"][0]["name"] == "pytorchjob-port"
        else:
            assert env["NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"] == (
                "metadata.annotations['batch.kubernetes.io/job-completion-index']"
            )
            assert "--node-rank=$(NODE_RANK)" in c["args"]
        assert c["command"] == ["framework-torchrun"]
        args = c["args"]
        assert args[args.index("-m") + 1] == "framework"
        assert {
            "--config-path=/etc/framework",
            "--config-name=config",
            "hydra.mode=RUN",
            "hydra.output_subdir=null",
        } <= set(args)
        assert f"hydra.run.dir=/workspace/runs/{name}" in args


def test_backend_shapes() -> None:
    objs = rendered("hardware=a100x8", "hardware.nodes=3", "launcher.backend=indexed_job")
    job, svc = by_kind(objs, "Job"), by_kind(objs, "Service")
    name = job["metadata"]["name"]
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 3
    assert job["spec"]["template"]["spec"]["subdomain"] == svc["metadata"]["name"] == name
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {"batch.kubernetes.io/job-name": name}

    js = by_kind(rendered("hardware.nodes=3", "launcher.backend=jobset"), "JobSet")
    assert js["spec"]["network"]["enableDNSHostnames"] is True
    (rj,) = js["spec"]["replicatedJobs"]
    assert rj["replicas"] == 1 and rj["template"]["spec"]["completions"] == 3
    assert not any(
        o["kind"] == "Service" for o in rendered("launcher.backend=jobset")
    )  # JobSet makes its own

    pj = by_kind(
        rendered("hardware.nodes=3", "hardware.nproc_per_node=4", "launcher.backend=pytorchjob"), "PyTorchJob"
    )
    reps = pj["spec"]["pytorchReplicaSpecs"]
    assert reps["Master"]["replicas"] == 1 and reps["Worker"]["replicas"] == 2
    assert pj["spec"]["nprocPerNode"] == "4"
    single = by_kind(rendered("launcher.backend=pytorchjob"), "PyTorchJob")
    assert "Worker" not in single["spec"]["pytorchReplicaSpecs"]


# ------------------------------------------------------------------------------------- failure policy
def test_failure_policy() -> None:
    job = by_kind(
        rendered(
            "launcher.backend=indexed_job",
            "hardware.nodes=2",
            "launcher.backoff_limit=5",
            "launcher.active_deadline_s=3600",
            "launcher.ttl_after_finished_s=60",
        ),
        "Job",
    )
    spec = job["spec"]
    assert spec["podReplacementPolicy"] == "Failed"
    assert (
        spec["backoffLimit"] == 5 * 2  # pod failures: one incident fails each of the 2 pods once
        and spec["activeDeadlineSeconds"] == 3600
        and spec["ttlSecondsAfterFinished"] == 60
    )
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "FailJob",
        "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [2]},
    }
    assert rules[1]["action"] == "Ignore" and rules[1]["onExitCodes"]["values"] == [143]
    assert rules[2] == {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }
    assert spec["template"]["spec"]["restartPolicy"] == "Never"

    js = by_kind(rendered("launcher.backend=jobset", "launcher.backoff_limit=5"), "JobSet")
    assert js["spec"]["failurePolicy"]["maxRestarts"] == 5
    assert js["spec"]["failurePolicy"]["restartStrategy"] == "BlockingRecreate"
    assert js["spec"]["failurePolicy"]["rules"][0]["onJobFailureReasons"] == ["PodFailurePolicy"]
    child = js["spec"]["replicatedJobs"][0]["template"]["spec"]
    assert child["backoffLimit"] == 0 and child["podFailurePolicy"] == spec["podFailurePolicy"]

    pj = by_kind(
        rendered("launcher.backend=pytorchjob", "hardware.nodes=2", "launcher.active_deadline_s=3600"),
        "PyTorchJob",
    )
    assert pj["spec"]["runPolicy"]["activeDeadlineSeconds"] == 3600
    assert {r["restartPolicy"] for r in pj["spec"]["pytorchReplicaSpecs"].values()} == {"ExitCode"}
    env = {e["name"]: e.get("value") for e in container(pj)["env"]}
    assert (
        env["FRAMEWORK_CRASH_EXIT"] == "200" and env["FRAMEWORK_RESTART_BUDGET"] == "3"
    )  # the budget holder
    assert env["FRAMEWORK_RUN_DIR"] == f"/workspace/runs/{pj['metadata']['name']}"


# ------------------------------------------------------------------------------------- names and labels
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("nodes", [1, 2, 16, 1024])
@pytest.mark.parametrize(
    "run_name",
    ["x" * 300, "9-Lives_Of_A.Run!!", "---", "ünïcødé-run", "a" * 40 + "-" + "b" * 40, "UPPER_case.name"],
)
def test_names_are_valid_dns_labels(backend: str, nodes: int, run_name: str) -> None:
    name = job_name(run_name, sweep_id="s1a2b3", job_index=99, backend=backend, nodes=nodes)
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), name
    longest_host = name + _render._host_suffix(backend, nodes)
    assert len(longest_host) <= 63, longest_host
    assert name.endswith("-s1a2b3-99")


def test_long_names_stay_distinct_and_stable() -> None:
    a = job_name("x" * 100 + "a", sweep_id="s0", job_index=0)
    b = job_name("x" * 100 + "b", sweep_id="s0", job_index=0)
    assert a != b and a == job_name("x" * 100 + "a", sweep_id="s0", job_index=0)


def test_long_run_name_renders_valid_objects() -> None:
    cfg = copy.deepcopy(_cfg("hardware.nodes=2"))
    cfg.run_name = "My Very Long Experiment Name " * 8
    name = job_name(str(cfg.run_name), sweep_id="s0test", job_index=7, nodes=2)
    objs = render(cfg, job_name=name, sweep_id="s0test", job_index=7, git_commit=None)
    assert [p for o in objs for p in schemas.errors(o)] == []
    labels = _render.main_object(objs)["metadata"]["labels"]
    assert len(labels["framework.io/run-name"]) <= 63 and "framework.io/git-commit" not in labels


def test_labels_and_config_hash() -> None:
    objs = rendered(*RICH, index=3)
    cm = by_kind(objs, "ConfigMap")
    expected = hashlib.sha256(cm["data"]["config.yaml"].encode()).hexdigest()[:16]
    for o in objs:
        labels = o["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == _render.MANAGED_BY
        assert labels["app.kubernetes.io/instance"] == _render.main_object(objs)["metadata"]["name"]
        assert labels["framework.io/config-hash"] == expected
        assert labels["framework.io/sweep-id"] == "s0test" and labels["framework.io/job-index"] == "3"
        assert labels["framework.io/git-commit"] == "0" * 40
        assert labels["framework.io/run-name"] == "lora_llama-tiny_llama"
    tpl_labels = pod_templates(_render.main_object(objs))[0]["metadata"]["labels"]
    assert tpl_labels["app.kubernetes.io/instance"] == _render.main_object(objs)["metadata"]["name"]


def test_configmap_holds_the_resolved_config_that_the_pods_validate() -> None:
    from framework.validate import validate, with_schema

    cm = by_kind(rendered(*RICH, "optim.lr=1e-4"), "ConfigMap")
    loaded = OmegaConf.create(yaml.safe_load(cm["data"]["config.yaml"]))
    assert "hydra" not in loaded and "defaults" not in loaded
    assert loaded.optim.lr == 1e-4 and loaded.hardware.nodes == 2
    assert "${" not in cm["data"]["config.yaml"]  # fully resolved
    expected = OmegaConf.to_container(_cfg(*RICH, "optim.lr=1e-4"), resolve=True)
    assert isinstance(expected, dict)
    expected.pop("hydra", None)
    assert yaml.safe_load(cm["data"]["config.yaml"]) == expected
    assert (
        yaml.safe_load(OmegaConf.to_yaml(OmegaConf.create(expected))) == expected
    )  # same as OmegaConf's YAML
    problems = validate(with_schema(loaded))
    assert [p for p in problems if "does not exist" not in p] == []


# ------------------------------------------------------------------------------------- namespace set-up
def test_setup_namespace_rbac_is_minimal() -> None:
    objs = rendered(
        "launcher.setup_namespace=true",
        "launcher.namespace=team-a",
        "launcher.egress_cidrs=[10.1.0.0/16]",
        "launcher.backend=indexed_job",
    )
    sa, role, rb, np = (by_kind(objs, k) for k in ("ServiceAccount", "Role", "RoleBinding", "NetworkPolicy"))
    assert sa["metadata"]["name"] == "framework-launcher" and sa["metadata"]["namespace"] == "team-a"
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): r["verbs"] for r in role["rules"]}
    manage = ["create", "get", "list", "watch", "delete"]
    assert rules[(("batch",), ("jobs",))] == manage
    assert rules[(("",), ("configmaps", "services"))] == manage
    assert rules[(("",), ("pods",))] == ["get", "list", "watch"]
    assert rules[(("",), ("pods/log",))] == ["get"]
    assert rules[(("",), ("events",))] == ["list"]
    assert not any("*" in v for v in rules.values()) and not any("secrets" in r for _, r in rules)
    assert rb["subjects"] == [{"kind": "ServiceAccount", "name": "framework-launcher", "namespace": "team-a"}]
    name = _render.main_object(objs)["metadata"]["name"]
    assert np["spec"]["podSelector"] == {"matchLabels": {"app.kubernetes.io/instance": name}}
    egress = np["spec"]["egress"]
    assert {"to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/instance": name}}}]} in egress
    assert any(
        e.get("ports") == [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}] for e in egress
    )
    assert {"to": [{"ipBlock": {"cidr": "10.1.0.0/16"}}]} in egress
    jobset_role = by_kind(rendered("launcher.setup_namespace=true", "launcher.backend=jobset"), "Role")
    assert jobset_role["rules"][0] == {
        "apiGroups": ["jobset.x-k8s.io"],
        "resources": ["jobsets"],
        "verbs": manage,
    }


def test_extra_passthrough() -> None:
    main = _render.main_object(
        rendered("+launcher.extra.pod_spec.priorityClassName=high", "+launcher.extra.job_spec.suspend=true")
    )
    assert pod_templates(main)[0]["spec"]["priorityClassName"] == "high"
    assert main["spec"]["suspend"] is True


PROM = ("launcher=kubernetes", "hardware=a100x8", "hardware.nodes=2", "tracking.prometheus.enabled=true")


def test_prometheus_port_and_scrape_annotations() -> None:
    objs = rendered(*PROM, "launcher.backend=indexed_job")
    job = by_kind(objs, "Job")
    ports = {p["name"]: p["containerPort"] for p in container(job)["ports"]}
    assert ports["metrics"] == 9400
    ann = pod_templates(job)[0]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/port"] == "9400"
    assert not any(o["kind"] == "PodMonitor" for o in objs)
    for o in objs:
        assert schemas.errors(o) == [], o["kind"]


def test_prometheus_podmonitor() -> None:
    objs = rendered(*PROM, "launcher.prometheus_monitor=podmonitor", "launcher.backend=jobset")
    pm = by_kind(objs, "PodMonitor")
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    assert pm["spec"]["podMetricsEndpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s"}]
    instance = pm["metadata"]["labels"]["app.kubernetes.io/instance"]
    template_labels = pod_templates(by_kind(objs, "JobSet"))[0]["metadata"]["labels"]
    assert template_labels["app.kubernetes.io/instance"] == instance  # the selector matches the job's pods
    assert "prometheus.io/scrape" not in pod_templates(by_kind(objs, "JobSet"))[0]["metadata"]["annotations"]


def test_prometheus_port_zero_is_rejected_for_pods() -> None:
    with pytest.raises(ConfigError, match="tracking.prometheus.port=0"):
        rendered(*PROM, "tracking.prometheus.port=0")
