"""Issue 14 at render time: durable run dirs, grace rule, secrets by shape, NetworkPolicy egress, digests, sizing,
interconnect, the minimum Kubernetes version, no YAML anchors, the namespace rule, gc and the Role patch."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from hydra_plugins.kubernetes_launcher import _render
from hydra_plugins.kubernetes_launcher._client import JobClient, default_namespace
from hydra_plugins.kubernetes_launcher._names import MIN_KUBERNETES
from hydra_plugins.kubernetes_launcher._problems import launcher_problems
from hydra_plugins.kubernetes_launcher._render import job_name, main_object, pod_templates, render, to_yaml
from omegaconf import DictConfig

from framework.errors import ConfigError
from framework.secrets import name_looks_secret, value_looks_secret
from tests.helpers import run_cli
from tests.k8s import schemas
from tests.k8s.compose import compose
from tests.k8s.fake_apiserver import FakeKube

BACKENDS = ("indexed_job", "jobset", "pytorchjob")


@functools.cache
def _cfg(*overrides: str) -> DictConfig:
    return compose(*overrides)


def rendered(*overrides: str, overrides_annotation: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    cfg = _cfg(*overrides)
    backend, nodes = str(cfg.launcher.backend), int(cfg.hardware.nodes)
    name = job_name(str(cfg.run_name), sweep_id="s0", job_index=0, backend=backend, nodes=nodes)
    return render(
        cfg, job_name=name, sweep_id="s0", job_index=0, git_commit=None, overrides=overrides_annotation
    )


def container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return pod_templates(main_object(objs))[0]["spec"]["containers"][0]


# ------------------------------------------------------------------------------------------ run dir
def test_retries_need_a_durable_run_dir_with_the_two_ways_out() -> None:
    (problem,) = launcher_problems(_cfg("launcher.run_dir_pvc=null"))
    assert "launcher.backoff_limit=3 allows retries" in problem
    assert "storage.output_uri=s3://" in problem and "launcher.run_dir_pvc=<claim>" in problem
    assert launcher_problems(_cfg("launcher.run_dir_pvc=null", "launcher.backoff_limit=0")) == []
    assert (
        launcher_problems(_cfg("launcher.run_dir_pvc=null", "storage=s3", "storage.output_uri=s3://b/r"))
        == []
    )


def test_grace_period_follows_the_checkpoint_size_and_storage() -> None:
    small = pod_templates(main_object(rendered()))[0]["spec"]
    assert small["terminationGracePeriodSeconds"] == _render.GRACE_FLOOR_S  # a tiny LoRA: the floor
    assert "--shutdown-timeout=105" in small["containers"][0]["args"]  # torchrun's follows it
    full = ("hardware=h100x8", "hardware.nodes=2", "model=llama3_1_8b", "recipe=full_finetune")
    plain = _render.resolved_config(_cfg(*full))
    per_node = _render.checkpoint_bytes_per_node(plain)
    assert 60e9 < per_node < 70e9  # 8B params x 16 bytes, ZeRO-2 over 2 nodes
    pvc = pod_templates(main_object(rendered(*full)))[0]["spec"]["terminationGracePeriodSeconds"]
    assert pvc == 60 + -(-per_node // 200e6)
    s3 = rendered(*full, "storage=s3", "storage.output_uri=s3://b/r")
    assert pod_templates(main_object(s3))[0]["spec"]["terminationGracePeriodSeconds"] == 60 + -(
        -per_node // 100e6
    )
    explicit = rendered("launcher.termination_grace_s=900")
    assert pod_templates(main_object(explicit))[0]["spec"]["terminationGracePeriodSeconds"] == 900


# -------------------------------------------------------------------------------------------- secrets
SHAPED = {
    "aws": "AKIAIOSFODNN7EXAMPLE",
    "hf": "hf_" + "a1B2" * 9,
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "pem": "-----BEGIN RSA PRIVATE KEY-----",
    "uri": "https://alice:s3cr3tpass@mlflow.example.com",
    "s3": "s3://AKIAIOSFODNN7EXAMPLE:abc@bucket/x",
}


@pytest.mark.parametrize("kind", sorted(SHAPED))
def test_secret_values_are_refused_by_shape(kind: str) -> None:
    assert value_looks_secret(SHAPED[kind])
    with pytest.raises(ConfigError, match=r"launcher\.env\.HF_AUTH holds what looks like"):
        rendered(f"+launcher.env.HF_AUTH='{SHAPED[kind]}'")


def test_secret_shapes_anywhere_in_the_config_and_overrides() -> None:
    with pytest.raises(ConfigError, match=r"tracking\.mlflow\.tracking_uri holds what looks like a password"):
        rendered(f"tracking.mlflow.tracking_uri='{SHAPED['uri']}'")
    with pytest.raises(ConfigError, match=r"launcher\.annotations\.note holds"):
        rendered(f"++launcher.annotations={{note: '{SHAPED['hf']}'}}")
    with pytest.raises(ConfigError, match="the override hydra.job.name=... holds"):
        rendered(overrides_annotation=(f"hydra.job.name={SHAPED['aws']}",))


@pytest.mark.parametrize(
    "value",
    [
        "0" * 40,
        "s3://bucket/runs/x",
        "meta-llama/Llama-3.2-1B",
        "https://user@host/x",
        "sk-short",
        "${oc.env:X}",
    ],
)
def test_ordinary_values_are_not_secrets(value: str) -> None:
    assert value_looks_secret(value) is None


def test_tokenizer_words_are_not_secret_names() -> None:
    assert not name_looks_secret("pad_token") and not name_looks_secret("eos_token")
    assert name_looks_secret("HF_TOKEN") and name_looks_secret("access_token")


# ------------------------------------------------------------------------------------------- network
S3 = ("storage=s3", "storage.output_uri=s3://bucket/runs/x", "launcher.setup_namespace=true")


def test_network_policy_refuses_an_s3_config_without_egress() -> None:
    problems = launcher_problems(_cfg(*S3))
    assert any(
        "storage.output_uri needs s3.amazonaws.com" in p and "launcher.egress_cidrs" in p for p in problems
    )
    objs = rendered(*S3, "launcher.egress_cidrs=[52.216.0.0/15]")
    (np,) = [o for o in objs if o["kind"] == "NetworkPolicy"]
    egress = np["spec"]["egress"]
    assert {"to": [{"ipBlock": {"cidr": "52.216.0.0/15"}}]} in egress
    # NodeLocal DNSCache answers on a link-local address outside any pod selector
    assert any(t == {"ipBlock": {"cidr": "169.254.20.10/32"}} for e in egress for t in e["to"])


def test_an_endpoint_given_by_ip_is_let_through() -> None:
    objs = rendered(*S3, "+launcher.env.AWS_ENDPOINT_URL=http://10.0.0.5:9000")
    (np,) = [o for o in objs if o["kind"] == "NetworkPolicy"]
    assert {"to": [{"ipBlock": {"cidr": "10.0.0.5/32"}}]} in np["spec"]["egress"]


def test_role_covers_podmonitors() -> None:
    objs = rendered(
        "launcher.setup_namespace=true",
        "tracking.prometheus.enabled=true",
        "launcher.prometheus_monitor=podmonitor",
    )
    (role,) = [o for o in objs if o["kind"] == "Role"]
    kinds = {r for rule in role["rules"] for r in rule["resources"]}
    assert {"jobsets", "configmaps", "networkpolicies", "podmonitors"} <= kinds
    assert {o["kind"] for o in objs} >= {"PodMonitor", "NetworkPolicy", "JobSet"}


# ----------------------------------------------------------------------------------- image and sizing
def test_image_digest_is_recorded_and_latest_is_warned(tmp_path: Path) -> None:
    digest = "sha256:" + "ab" * 32
    objs = rendered(f"launcher.image=registry.example.com/ml/framework:1.2@{digest}")
    main = main_object(objs)
    assert main["metadata"]["annotations"]["framework.io/image-digest"] == digest
    assert main["metadata"]["labels"]["framework.io/image-digest"] == "sha256-" + ("ab" * 32)[:32]
    assert [e for o in objs for e in schemas.errors(o)] == []
    proc = run_cli(["launcher=kubernetes", "launcher.dry_run=true"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "launcher.image=ghcr.io/example/framework:latest is not pinned" in proc.stderr + proc.stdout


def test_interconnect_resources_env_and_annotations() -> None:
    objs = rendered(
        "hardware=h100x8",
        "hardware.nodes=2",
        "++hardware.extra_resources={vpc.amazonaws.com/efa: 32}",
        "+hardware.nccl_env.FI_PROVIDER=efa",
        "+launcher.env.NCCL_SOCKET_IFNAME=eth0",
        "launcher.networks=[ib-net,other/ib-2]",
        "launcher.exclusive_topology=cloud.google.com/gke-nodepool",
        "launcher.topology_required=topology.kubernetes.io/rack",
        "launcher.queue=team-queue",
    )
    main = main_object(objs)
    c = container(objs)
    assert c["resources"]["limits"]["vpc.amazonaws.com/efa"] == "32"
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert (
        env["FI_PROVIDER"] == "efa" and env["NCCL_SOCKET_IFNAME"] == "eth0"
    )  # launcher.env overrides the profile
    assert [e["name"] for e in c["env"]].count("NCCL_SOCKET_IFNAME") == 1
    pod_ann = pod_templates(main)[0]["metadata"]["annotations"]
    assert pod_ann["k8s.v1.cni.cncf.io/networks"] == "ib-net,other/ib-2"
    assert pod_ann["kueue.x-k8s.io/podset-required-topology"] == "topology.kubernetes.io/rack"
    assert main["metadata"]["annotations"]["alpha.jobset.sigs.k8s.io/exclusive-topology"] == (
        "cloud.google.com/gke-nodepool"
    )
    assert [e for o in objs for e in schemas.errors(o)] == []
    (problem,) = launcher_problems(_cfg("launcher.backend=indexed_job", "launcher.exclusive_topology=rack"))
    assert "launcher.exclusive_topology is a JobSet placement" in problem


# ------------------------------------------------------------------------------- versions and YAML
@pytest.mark.parametrize("backend", BACKENDS)
def test_minimum_kubernetes_version_schemas(backend: str) -> None:
    objs = rendered(
        "hardware=a100x8",
        "hardware.nodes=2",
        f"launcher.backend={backend}",
        "launcher.setup_namespace=true",
        "launcher.egress_cidrs=[10.0.0.0/8]",
    )
    core = [o for o in objs if (o["apiVersion"], o["kind"]) not in schemas.CRD_FILES]
    for o in core:
        kubernetes_validate.validate(o, f"{MIN_KUBERNETES}.0", strict=True)
    if (
        backend == "indexed_job"
    ):  # why the minimum is what it is: 1.28 does not know the failure policy's rules
        job = main_object(objs)
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(job, "1.28.0", strict=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_yaml_anchors(backend: str) -> None:
    text = to_yaml(
        rendered("hardware.nodes=3", f"launcher.backend={backend}", "launcher.setup_namespace=true")
    )
    assert not re.search(r"[&*]id\d+", text)
    assert list(yaml.safe_load_all(text))


# ------------------------------------------------------------------------------- namespace rule, gc
def test_one_namespace_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "config"
    cfg.write_text(
        yaml.safe_dump(
            {
                "current-context": "a",
                "contexts": [
                    {"name": "a", "context": {"cluster": "c", "namespace": "team-a"}},
                    {"name": "b", "context": {"cluster": "c"}},
                ],
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(cfg))
    assert default_namespace() == "team-a" and default_namespace("b") == "default"
    from hydra_plugins.kubernetes_launcher import cli

    assert cli.default_namespace is default_namespace  # framework-jobs uses the same rule
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    assert default_namespace() == "default"


def test_gc_deletes_what_kubectl_apply_left_behind() -> None:
    with FakeKube() as kube:
        c = JobClient("default", backend="indexed_job", api_client=kube.api_client(), retries=1)
        objs = rendered("launcher.backend=indexed_job")
        for o in objs:  # as kubectl apply does: no owner references
            c.create(o)
        name = main_object(objs)["metadata"]["name"]
        assert c.gc(min_age_s=0) == []  # the job still exists
        c.delete("Job", name)
        assert c.gc(min_age_s=3600) == []  # too young: kubectl may still be creating its job
        assert sorted(c.gc(min_age_s=0)) == [f"ConfigMap/{name}-config", f"Service/{name}"]
        assert kube.names("configmaps") == [] and kube.names("services") == []


def test_an_existing_role_is_patched_to_the_new_kinds() -> None:
    with FakeKube() as kube:
        c = JobClient("default", backend="jobset", api_client=kube.api_client(), retries=1)
        setup = ("launcher.setup_namespace=true", "launcher.egress_cidrs=[10.0.0.0/8]")
        c.submit(rendered(*setup))
        role = kube.get("roles", "default", "framework-launcher") or {}
        assert not any("jobs" in r["resources"] for r in role["rules"])
        c.submit(rendered(*setup, "launcher.backend=indexed_job", "run_name=second"))  # patched, not skipped
        role = kube.get("roles", "default", "framework-launcher") or {}
        assert any(r["resources"] == ["jobs"] for r in role["rules"])
        assert any("services" in r["resources"] for r in role["rules"])


# ------------------------------------------------------------------------------------------------ sweeps
def _dry_run_jobs(tmp_path: Path, *args: str) -> list[list[dict[str, Any]]]:
    flags = [a for a in args if a.startswith("-")]
    proc = run_cli(
        [*flags, "launcher=kubernetes", "launcher.dry_run=true", *(a for a in args if a not in flags)],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    found = sorted(tmp_path.glob("multirun/*/*/*/manifests.yaml"), key=lambda p: int(p.parent.name))
    return [list(yaml.safe_load_all(p.read_text())) for p in found]


def test_each_sweep_job_its_own_run_dir(tmp_path: Path) -> None:
    jobs = _dry_run_jobs(
        tmp_path, "-m", "storage=s3", "storage.output_uri=s3://bucket/sweep", "optim.lr=1e-4,3e-4,1e-3"
    )
    dirs = [main_object(objs)["metadata"]["annotations"]["framework.io/run-dir"] for objs in jobs]
    assert dirs == ["s3://bucket/sweep/0", "s3://bucket/sweep/1", "s3://bucket/sweep/2"]
    for objs, d in zip(jobs, dirs, strict=True):  # the pods read it from their ConfigMap
        (cm,) = [o for o in objs if o["kind"] == "ConfigMap"]
        assert yaml.safe_load(cm["data"]["config.yaml"])["storage"]["output_uri"] == d
    (tmp_path / "one").mkdir()
    (one,) = _dry_run_jobs(tmp_path / "one", "storage=s3", "storage.output_uri=s3://bucket/single")
    assert main_object(one)["metadata"]["annotations"]["framework.io/run-dir"] == "s3://bucket/single"


def test_hydra_interpolation_in_an_override(tmp_path: Path) -> None:
    """The basic sweeper escapes overrides ($\\{hydra\\:...\\}); each job resolves them against its own hydra node."""

    def seeds(jobs: list[list[dict[str, Any]]]) -> list[int]:
        cms = [next(o for o in objs if o["kind"] == "ConfigMap") for objs in jobs]
        return [yaml.safe_load(cm["data"]["config.yaml"])["train"]["seed"] for cm in cms]

    assert seeds(_dry_run_jobs(tmp_path, "-m", "train.seed=${hydra:job.num}", "optim.lr=1e-4,3e-4")) == [0, 1]
    (tmp_path / "one").mkdir()
    assert seeds(_dry_run_jobs(tmp_path / "one", "train.seed=${hydra:job.num}")) == [0]
