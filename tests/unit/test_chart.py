"""dockerfiles/chart with the real helm binary: lint, template (defaults and the two example environments),
every object valid against the official schemas and the CRDs, restricted Pod Security on every pod spec, the
launcher Role exactly what the launcher's client uses, and launcher defaults the launcher accepts as they are."""

from __future__ import annotations

import ast
import copy
import json
import re
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra_plugins.kubernetes_launcher import _chart_defaults, _client, cli
from hydra_plugins.kubernetes_launcher._backends import BACKENDS, JobParts
from hydra_plugins.kubernetes_launcher._client import JobClient, KubernetesError
from hydra_plugins.kubernetes_launcher._render import _view, job_name, main_object, pod_templates, render
from kubernetes.client.exceptions import ApiException
from omegaconf import OmegaConf

from framework.config import resolved
from tests.fixtures.chart import CHART, NS, run_helm, template
from tests.k8s import pss, schemas
from tests.k8s.compose import compose
from tests.k8s.fake_apiserver import FakeKube, simulate

ROOT = Path(__file__).resolve().parents[2]
ENVIRONMENTS = {
    "default": (),
    "kind": (CHART / "values-kind.yaml",),
    "production": (CHART / "values-production.yaml",),
}


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


# ------------------------------------------------------------------------------------ lint and schemas
@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_helm_lint_strict(env: str) -> None:
    args: list[str | Path] = ["lint", "--strict", CHART, "-n", NS]
    for v in ENVIRONMENTS[env]:
        args += ["-f", v]
    out = run_helm(*args).stdout
    assert "1 chart(s) linted, 0 chart(s) failed" in out


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_object_is_valid_and_namespaced_right(env: str) -> None:
    objs = template(*ENVIRONMENTS[env])
    kinds = {k for (_, k) in schemas.CRD_FILES} & {o["kind"] for o in objs}
    if not schemas.crds_present(*kinds):
        pytest.skip(f"CRDs of {sorted(kinds)} not in {schemas.CRD_DIR}")
    assert objs
    problems = [p for o in objs for p in schemas.errors(o)]
    assert not problems, "\n".join(problems)
    cluster_scoped = {"Namespace", "ClusterQueue", "ResourceFlavor", "WorkloadPriorityClass"}
    cluster_scoped.add("ClusterTrainingRuntime")
    for o in objs:
        ns = o["metadata"].get("namespace")
        if o["kind"] in cluster_scoped:
            assert ns is None, f"{o['kind']} is cluster-scoped"
        elif o["kind"] == "ConfigMap" and "grafana" in o["metadata"]["name"] and env == "production":
            assert ns == "monitoring"  # dashboard.namespace: where Grafana's sidecar looks
        else:
            assert ns == NS, f"{o['kind']} {o['metadata']['name']}"
        assert o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "framework"


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_restricted_pod_security_on_every_pod_spec(env: str) -> None:
    objs = template(*ENVIRONMENTS[env])
    problems = [p for o in objs for p in pss.object_violations(o)]
    assert not problems, "\n".join(problems)
    if env == "production":  # the runtime is the pod-bearing object here: its pod spec was checked
        (runtime,) = by_kind(objs, "ClusterTrainingRuntime")
        assert len(list(pss.pod_specs(runtime))) == 1


def test_the_pss_checker_catches_each_control() -> None:
    base = {
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": "c",
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
            }
        ],
    }
    assert pss.violations(base) == []
    bad = [
        ("hostNetwork", lambda s: s.update(hostNetwork=True)),
        ("hostPath", lambda s: s.update(volumes=[{"name": "h", "hostPath": {"path": "/"}}])),
        (
            "allowPrivilegeEscalation",
            lambda s: s["containers"][0]["securityContext"].pop("allowPrivilegeEscalation"),
        ),
        ("drop ALL", lambda s: s["containers"][0]["securityContext"].pop("capabilities")),
        ("runAsNonRoot", lambda s: s["securityContext"].pop("runAsNonRoot")),
        ("seccompProfile", lambda s: s["securityContext"].pop("seccompProfile")),
        ("privileged", lambda s: s["containers"][0]["securityContext"].update(privileged=True)),
        ("hostPort", lambda s: s["containers"][0].update(ports=[{"containerPort": 1, "hostPort": 1}])),
    ]
    for what, mutate in bad:
        spec = copy.deepcopy(base)
        mutate(spec)
        assert pss.violations(spec), what


# ---------------------------------------------------------------------------------------- values
@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("storage.outputs.acessMode=ReadWriteMany", r"storage\.outputs: Additional property acessMode"),
        ("storage.datasets.accessMode=RWX", r"storage\.datasets\.accessMode.*must be one of"),
        ("launcher.rbac.backends={indexed_job,slurm}", r"launcher\.rbac\.backends\.1"),
        ("kueue.enable=true", r"kueue: Additional property enable"),
        ("secrets.hfToken.name=HF_TOKEN", r"secrets\.hfToken\.name"),
        ("networkPolicy.egress[0].cidr=everywhere", r"networkPolicy\.egress\.0"),
    ],
)
def test_values_schema_names_the_bad_key(setting: str, message: str) -> None:
    result = run_helm("template", "team", CHART, "-n", NS, "--set", setting, check=False)
    assert result.returncode != 0
    assert re.search(message, result.stderr), result.stderr


def test_every_part_switches_off() -> None:
    off = (
        "launcher.serviceAccount.create=false",
        "launcher.rbac.create=false",
        "storage.datasets.create=false",
        "storage.outputs.create=false",
        "storage.hfCache.create=false",
        "networkPolicy.enabled=false",
        "dashboard.enabled=false",
        "monitoring.podMonitor.enabled=false",
        "monitoring.prometheusRule.enabled=false",
        "launcherDefaults.enabled=false",
    )
    assert template(sets=off) == []
    on = {o["kind"] for o in template(CHART / "values-production.yaml", sets=("namespace.create=true",))}
    assert on == {
        "Namespace",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "PersistentVolumeClaim",
        "NetworkPolicy",
        "ResourceQuota",
        "LimitRange",
        "ResourceFlavor",
        "ClusterQueue",
        "LocalQueue",
        "WorkloadPriorityClass",
        "ClusterTrainingRuntime",
        "ConfigMap",
        "PodMonitor",
        "PrometheusRule",
    }


def test_a_created_namespace_enforces_restricted_pod_security() -> None:
    objs = template(sets=("namespace.create=true", "namespace.name=team-b"))
    (ns,) = by_kind(objs, "Namespace")
    assert ns["metadata"]["name"] == "team-b"
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"} == {"team-b"}


def test_jobs_get_no_service_account_or_rules_by_default() -> None:
    objs = template()
    assert [o["metadata"]["name"] for o in by_kind(objs, "ServiceAccount")] == ["framework-launcher"]
    assert [o["metadata"]["name"] for o in by_kind(objs, "Role")] == ["framework-launcher"]
    sa = by_kind(objs, "ServiceAccount")[0]
    assert sa["automountServiceAccountToken"] is False
    rules = [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]
    objs = template(sets=("jobs.serviceAccount.create=true", f"json:jobs.rbac.rules={json.dumps(rules)}"))
    assert {o["metadata"]["name"] for o in by_kind(objs, "Role")} == {"framework-launcher", "framework-jobs"}


def test_pvcs_are_kept_on_uninstall_and_use_the_access_modes() -> None:
    pvcs = {
        o["metadata"]["name"]: o
        for o in by_kind(template(CHART / "values-production.yaml"), "PersistentVolumeClaim")
    }
    assert {n: p["spec"]["accessModes"] for n, p in pvcs.items()} == {
        "framework-datasets": ["ReadOnlyMany"],
        "framework-outputs": ["ReadWriteMany"],
        "framework-hf-cache": ["ReadWriteMany"],
    }
    assert all(p["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep" for p in pvcs.values())
    assert pvcs["framework-outputs"]["spec"]["storageClassName"] == "cephfs"


def test_network_policy_peers_dns_nodelocal_and_listed_egress() -> None:
    (np,) = by_kind(template(CHART / "values-production.yaml"), "NetworkPolicy")
    spec = np["spec"]
    training = {"app.kubernetes.io/name": "framework", "app.kubernetes.io/component": "training"}
    assert spec["podSelector"]["matchLabels"] == training
    egress = spec["egress"]
    assert egress[0] == {"to": [{"podSelector": {"matchLabels": training}}]}
    dns = [e for e in egress if {"port": 53, "protocol": "UDP"} in e.get("ports", [])]
    assert {"ipBlock": {"cidr": "169.254.20.10/32"}} in [t for e in dns for t in e["to"]]
    assert any(
        t.get("podSelector", {}).get("matchLabels") == {"k8s-app": "kube-dns"} for e in dns for t in e["to"]
    )
    others = egress[1 + len(dns) :]
    assert len(others) == 4
    assert others[-1]["to"][0]["ipBlock"]["except"] == ["10.0.0.0/8", "169.254.169.254/32"]
    # the pods the launcher renders are the ones selected (every backend labels them the same)
    cfg = compose("hardware=cpu")
    name = job_name(str(cfg.run_name), sweep_id="s0", job_index=0)
    job = main_object(render(cfg, job_name=name, sweep_id="s0", job_index=0, git_commit=None))
    labels = pod_templates(job)[0]["metadata"]["labels"]
    assert training.items() <= labels.items()
    # Prometheus may reach the metrics port from its namespace
    assert spec["ingress"][1]["ports"] == [{"port": 9400, "protocol": "TCP"}]


def test_dashboard_configmap_is_the_dashboard_with_the_sidecar_label() -> None:
    (cm,) = [
        o for o in by_kind(template(), "ConfigMap") if o["metadata"]["name"] == "framework-grafana-dashboard"
    ]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads((ROOT / "dashboards" / "grafana-training.json").read_text())
    assert json.loads(cm["data"]["grafana-training.json"]) == dashboard


def test_kueue_objects_reference_each_other() -> None:
    objs = template(CHART / "values-production.yaml")
    (cq,) = by_kind(objs, "ClusterQueue")
    (lq,) = by_kind(objs, "LocalQueue")
    flavors = {o["metadata"]["name"] for o in by_kind(objs, "ResourceFlavor")}
    assert lq["spec"]["clusterQueue"] == cq["metadata"]["name"] == "team-a"
    used = {f["name"] for g in cq["spec"]["resourceGroups"] for f in g["flavors"]}
    assert used <= flavors
    assert {o["metadata"]["name"]: o["value"] for o in by_kind(objs, "WorkloadPriorityClass")} == {
        "framework-low": 100,
        "framework-high": 1000,
    }


def test_training_runtime_carries_the_failure_semantics() -> None:
    (rt,) = by_kind(template(CHART / "values-production.yaml"), "ClusterTrainingRuntime")
    spec = rt["spec"]["template"]["spec"]
    assert spec["failurePolicy"]["rules"][0] == {
        "name": "FailOnPermanentError",
        "action": "FailJobSet",
        "onJobFailureReasons": ["PodFailurePolicy"],
    }
    # the jobset backend's failure semantics, rule for rule (issue 14: one incident, one restart)
    view = _view(resolved(compose("hardware=cpu", "launcher.backend=jobset")))
    ref = BACKENDS["jobset"].job_spec(JobParts(view, "x", {"metadata": {}, "spec": {}}, {}))
    assert {k: v for k, v in spec["failurePolicy"].items() if k != "maxRestarts"} == {
        k: v for k, v in ref["failurePolicy"].items() if k != "maxRestarts"
    }
    child = ref["replicatedJobs"][0]["template"]["spec"]
    (node,) = spec["replicatedJobs"]
    ours = node["template"]["spec"]
    assert ours["podReplacementPolicy"] == child["podReplacementPolicy"]
    assert ours["backoffLimit"] == child["backoffLimit"] == 0
    renamed = [  # the runtime's container is "node" (the stock runtime's name), the jobset backend's "trainer"
        {**r, "onExitCodes": {**r["onExitCodes"], "containerName": "node"}} if "onExitCodes" in r else r
        for r in child["podFailurePolicy"]["rules"]
    ]
    assert ours["podFailurePolicy"]["rules"] == renamed
    assert node["name"] == "node"
    rules = node["template"]["spec"]["podFailurePolicy"]["rules"]
    assert [r["action"] for r in rules] == ["FailJob", "Ignore", "Ignore"]
    assert rules[0]["onExitCodes"]["values"] == [2] and rules[1]["onExitCodes"]["values"] == [143]
    assert node["template"]["spec"]["template"]["spec"]["containers"][0]["name"] == "node"


def test_launcher_defaults_are_launcher_settings_that_render() -> None:
    """The chart's ConfigMap of launcher settings composes and renders as it is (no key the launcher lacks)."""
    (cm,) = [
        o
        for o in by_kind(template(CHART / "values-production.yaml"), "ConfigMap")
        if "launcher" in o["metadata"]["name"]
    ]
    settings = yaml.safe_load(cm["data"]["launcher.yaml"])
    assert settings["namespace"] == NS and settings["s3_secret"] == "framework-s3"
    assert settings["run_dir_pvc"] == "framework-outputs" and settings["run_dir"] == "/workspace/runs"
    assert settings["pvcs"] == {"framework-datasets": "/data", "framework-hf-cache": "/hf-cache"}
    overrides = _chart_defaults.overrides(cm["data"]["launcher.yaml"])
    cfg = compose("hardware=cpu", *overrides)
    name = job_name(str(cfg.run_name), sweep_id="s0", job_index=0)
    objs = render(cfg, job_name=name, sweep_id="s0", job_index=0, git_commit=None)
    pod = pod_templates(main_object(objs))[0]["spec"]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"framework-datasets", "framework-outputs", "framework-hf-cache"}
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "token"}
    assert env["HF_HUB_CACHE"]["value"] == "/hf-cache/hub"
    assert {"secretRef": {"name": "tracker-keys"}} in pod["containers"][0]["envFrom"]
    assert pod["imagePullSecrets"] == [{"name": "registry-pull"}]


def test_framework_jobs_defaults_reads_the_release_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ConfigMap helm rendered, served by the fake API server: `framework-jobs defaults` prints overrides
    that compose into the same launcher settings."""
    (cm,) = [
        o
        for o in by_kind(template(CHART / "values-production.yaml"), "ConfigMap")
        if o["metadata"]["name"] == "framework-launcher-defaults"
    ]
    with FakeKube(namespaces=(NS,)) as kube:
        kube.put("configmaps", cm)
        monkeypatch.setenv("KUBECONFIG", str(kube.write_kubeconfig(tmp_path / "kubeconfig")))
        assert cli.main(["defaults", "-n", NS]) == 0
    printed = capsys.readouterr().out.split()
    cfg = compose("hardware=cpu", *printed)
    settings = yaml.safe_load(cm["data"]["launcher.yaml"])
    for key, value in settings.items():
        assert OmegaConf.to_container(cfg.launcher)[key] == value, key


# ------------------------------------------------------------------------------- launcher RBAC == client
_PATH = re.compile(
    r"^/(?:api/v1|apis/(?P<group>[^/]+)/[^/]+)/namespaces/(?P<ns>[^/]+)/(?P<plural>[^/]+)"
    r"(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?$"
)
VERB = {"POST": "create", "DELETE": "delete", "PUT": "update", "PATCH": "patch"}


def rbac_request(method: str, path: str, query: list[tuple[str, Any]]) -> tuple[str, str, str] | None:
    """(apiGroup, resource, verb) the API server's authorizer sees for one request; None: non-resource URL."""
    m = _PATH.match(path)
    if m is None:
        return None
    resource = m["plural"] + (f"/{m['sub']}" if m["sub"] else "")
    if method == "GET":
        verb = "get" if m["name"] else "watch" if ("watch", "true") in query else "list"
    else:
        verb = VERB[method]
    return (m["group"] or "", resource, verb)


def granted(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (g, r, v)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }


class Authorizer:
    """Wraps an ApiClient: a request the Role does not grant is refused with 403, as RBAC would; records the rest."""

    def __init__(self, api: Any, allowed: set[tuple[str, str, str]]) -> None:
        self.allowed, self.used, self.denied = allowed, set(), set()
        self._call = api.call_api
        api.call_api = self

    def __call__(self, path: str, method: str, *args: Any, **kw: Any) -> Any:
        need = rbac_request(method, path, list(kw.get("query_params") or []))
        if need is not None and need not in self.allowed:
            self.denied.add(need)
            e = ApiException(status=403, reason="Forbidden")
            e.body = json.dumps({"kind": "Status", "code": 403, "message": f"forbidden: {need}"})
            raise e
        if need is not None:
            self.used.add(need)
        return self._call(path, method, *args, **kw)


def exercise(kube: FakeKube, backend: str, allowed: set[tuple[str, str, str]]) -> Authorizer:
    """Everything the launcher and framework-jobs do with one job: submit (twice: the 409 path), follow, logs,
    status, list, cancel, and a submit whose each later object fails (the cleanup path)."""
    api = kube.api_client()
    auth = Authorizer(api, allowed)
    c = JobClient(
        NS, backend=backend, api_client=api, retries=1, backoff_s=0.01, timeout_s=2.0, poll_interval_s=0.2
    )
    cfg = compose(
        "hardware=cpu", "hardware.nodes=2", f"launcher.backend={backend}", f"launcher.namespace={NS}"
    )

    def objs(index: int) -> list[dict[str, Any]]:
        name = job_name(str(cfg.run_name), sweep_id="s0rbac", job_index=index, backend=backend, nodes=2)
        return render(cfg, job_name=name, sweep_id="s0rbac", job_index=index, git_commit=None)

    c.check_reachable()
    pending = c.submit(objs(9))  # no controller yet: Pending without pods, so status reads the events
    assert c.status(pending).phase == "Pending"
    c.cancel(pending)
    hold = threading.Event()  # the pods keep running until released: wait() must watch them
    kube.on_create.append(simulate("succeed", step_s=0.01, hold=hold))
    first = objs(0)
    name = c.submit(copy.deepcopy(first))
    assert c.submit(copy.deepcopy(first)) == name  # a retried submit of the same job finds it (409, ours)
    assert not c.wait(name, timeout_s=1.0).done
    hold.set()
    assert c.wait(name, timeout_s=20).phase == "Succeeded"
    assert c.status(name).phase == "Succeeded"
    assert list(c.logs(name))
    assert [j.name for j in c.list()] == [name]
    c.cancel(name)
    main_kind = next(o["kind"] for o in first if o["kind"] in _client.JOB_KINDS)
    later = [o["kind"] for o in first if o["kind"] != main_kind]
    for i, kind in enumerate(later, start=1):
        plural = _client.KINDS[kind].plural
        kube.fail("POST", rf"/{plural}$", 422, times=1)
        with pytest.raises(KubernetesError):
            c.submit(objs(i))
    return auth


def client_backends() -> list[str]:
    return sorted(BACKENDS)


@pytest.mark.parametrize("backend", client_backends())
def test_launcher_role_is_exactly_what_the_client_uses(backend: str) -> None:
    """Sufficient: every operation succeeds under the Role. Minimal: every rule is used by some operation."""
    roles = by_kind(template(sets=(f"launcher.rbac.backends={{{backend}}}",)), "Role")
    (role,) = roles
    allowed = granted(role)
    with FakeKube(namespaces=(NS,)) as kube:
        auth = exercise(kube, backend, allowed)
    assert auth.used == allowed, f"granted but never used: {sorted(allowed - auth.used)}"
    kind = _client.KINDS[BACKENDS[backend].kind]
    # the only denials: the other backends' kinds, which list/find skip on 403
    others = {_client.KINDS[k].resource for k in _client.JOB_KINDS if k != kind.kind}
    assert {f"{r}.{g}" if g else r for g, r, _ in auth.denied} <= others


def test_every_verb_of_the_client_is_exercised() -> None:
    """Static guard: a new kind of API call in _client.py must show up in the exercise (and so in the Role)."""
    tree = ast.parse(Path(_client.__file__).read_text())
    methods = {
        node.args[2].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "_request"
        and len(node.args) >= 3
        and isinstance(node.args[2], ast.Constant)
    }
    assert methods, "no self._request(verb, kind, METHOD, ...) calls found: update this test to the client"
    union: set[tuple[str, str, str]] = set()
    for backend in client_backends():
        (role,) = by_kind(template(sets=(f"launcher.rbac.backends={{{backend}}}",)), "Role")
        union |= granted(role)
    seen = {v for _, _, v in union}
    expected = {"GET": {"get", "list", "watch"}, "POST": {"create"}, "DELETE": {"delete"}}
    # PATCH: only launcher.setup_namespace=true patches the Role it renders, when one exists; that is run by
    # whoever may manage RBAC, never by the chart's launcher ServiceAccount (the chart owns its Role).
    for m in methods - {"PATCH"}:
        assert m in expected, (
            f"_client.py makes {m} requests; exercise() and the chart's Role must cover them"
        )
        assert expected[m] <= seen | ({"get"} if m == "GET" else set()), m
    # the chart's table of backend kinds agrees with the client's
    helper = (CHART / "templates" / "_helpers.tpl").read_text()
    for backend in client_backends():
        b = BACKENDS[backend]
        assert f"{backend}: [{b.group}, {b.plural}]" in helper


def test_role_for_several_backends_is_the_union() -> None:
    (role,) = by_kind(template(CHART / "values-production.yaml"), "Role")
    resources = {r for rule in role["rules"] for r in rule["resources"]}
    assert {"jobs", "jobsets", "pytorchjobs", "trainjobs"} <= resources
    (binding,) = by_kind(template(CHART / "values-production.yaml"), "RoleBinding")
    assert {"kind": "Group", "name": "team-a-ml", "apiGroup": "rbac.authorization.k8s.io"} in binding[
        "subjects"
    ]


@pytest.mark.parametrize("preflight_rbac", [True, False])
def test_preflight_rbac_lets_every_check_run(preflight_rbac: bool) -> None:
    """launcher.rbac.preflight=true: under the chart's Role + ClusterRole (RBAC enforced, resourceNames too) no
    preflight check is skipped, and a set-up namespace passes; without it the reads are skipped, not failed."""
    from hydra_plugins.kubernetes_launcher import _preflight

    objs_chart = template(
        CHART / "values-production.yaml", sets=(f"launcher.rbac.preflight={str(preflight_rbac).lower()}",)
    )
    rules = [r for o in objs_chart if o["kind"] in ("Role", "ClusterRole") for r in o["rules"]]
    allowed = {
        (g, r, v, n)
        for rule in rules
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
        for n in rule.get("resourceNames") or [None]
    }
    cluster_path = re.compile(
        r"^/(?:api/v1|apis/(?P<group>[^/]+)/[^/]+)/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?$"
    )

    def need(method: str, path: str, query: list[tuple[str, Any]]) -> tuple[str, str, str, str | None] | None:
        m = _PATH.match(path) or cluster_path.match(path)
        if m is None or path.endswith("selfsubjectaccessreviews"):
            return None  # non-resource, or allowed to every authenticated user
        d = m.groupdict()
        name = d.get("name")
        verb = "get" if name else ("watch" if ("watch", "true") in query else "list")
        return (
            d["group"] or "",
            d["plural"] + (f"/{d['sub']}" if d.get("sub") else ""),
            VERB.get(method, verb),
            name,
        )

    with FakeKube(namespaces=(NS,)) as kube:
        for s in ("hf-token", "framework-s3", "registry-pull", "tracker-keys"):
            kube.put("secrets", {"metadata": {"name": s, "namespace": NS}, "data": {"token": "eA=="}})
        api = kube.api_client()
        call = api.call_api

        def authorized(path: str, method: str, *args: Any, **kw: Any) -> Any:
            n = need(method, path, list(kw.get("query_params") or []))
            if n is not None and n not in allowed and (*n[:3], None) not in allowed:
                e = ApiException(status=403, reason="Forbidden")
                e.body = json.dumps({"kind": "Status", "code": 403, "message": f"forbidden: {n}"})
                raise e
            return call(path, method, *args, **kw)

        api.call_api = authorized
        cfg = compose("hardware=cpu", f"launcher.namespace={NS}", "launcher.hf_token_secret=hf-token:token")
        name = job_name(str(cfg.run_name), sweep_id="s0", job_index=0)
        objs = render(cfg, job_name=name, sweep_id="s0", job_index=0, git_commit=None)
        client = JobClient(NS, backend=str(cfg.launcher.backend), api_client=api, retries=1)
        pf = _preflight.Preflight(client, objs, cfg)
        found = pf.run()
    assert found == []
    assert (pf.skipped == []) is preflight_rbac, pf.skipped
