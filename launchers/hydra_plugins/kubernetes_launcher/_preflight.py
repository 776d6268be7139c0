"""Preflight: before submitting, check with read-only API calls that what the job needs is there, so a job does
not sit Pending forever or fail minutes later on a missing Secret. Skip with ``launcher.preflight=false``.

Checked (each failure is one line naming the object and the fix; any failure exits 2 before anything is created):

- the namespace exists;
- every Secret (and key), ConfigMap and PersistentVolumeClaim the pods reference, found in the rendered objects
  (env secretKeyRef/configMapKeyRef, envFrom, volumes, imagePullSecrets);
- the Kueue LocalQueue (launcher.queue) and, for trainjob, the (Cluster)TrainingRuntime (launcher.runtime), with
  the initializer steps a TrainJob of launcher.staging=all needs;
- the launcher's own permissions for submit, follow, logs and cancel (SelfSubjectAccessReview);
- some node offers the GPUs one pod asks for (hardware.resource_name x gpus_per_node), else, when nodes cannot be
  listed, the queue's ClusterQueue quota does; what the cluster has is named;
- the run dir's S3 bucket answers with the configured endpoint, when credentials are available here.

A check the launcher may not make (403) or that hits a transient API error is skipped (logged), not failed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hydra_plugins.kubernetes_launcher import _staging, _trainjob
from hydra_plugins.kubernetes_launcher._backends import BACKENDS, BY_KIND

from framework.errors import EXIT_USAGE, FrameworkError

log = logging.getLogger(__name__)


class PreflightError(FrameworkError):
    """Something the job needs is missing on the cluster; the lines say what and how to fix it. Permanent."""

    exit_code = EXIT_USAGE

    def __init__(self, lines: Sequence[str]) -> None:
        self.lines = list(lines)
        body = "\n".join(f"  - {line}" for line in self.lines)
        super().__init__(
            f"Preflight found {len(self.lines)} problem(s); nothing was submitted (skip the checks with "
            f"launcher.preflight=false):\n{body}"
        )


@dataclass(frozen=True)
class Resource:
    """A REST resource preflight reads (namespaced unless ``cluster``)."""

    kind: str
    group: str
    version: str
    plural: str
    cluster: bool = False

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        p = base if self.cluster else f"{base}/namespaces/{namespace}"
        p += f"/{self.plural}"
        return f"{p}/{name}" if name else p


NAMESPACE = Resource("Namespace", "", "v1", "namespaces", cluster=True)
SECRET = Resource("Secret", "", "v1", "secrets")
CONFIGMAP = Resource("ConfigMap", "", "v1", "configmaps")
PVC = Resource("PersistentVolumeClaim", "", "v1", "persistentvolumeclaims")
NODE = Resource("Node", "", "v1", "nodes", cluster=True)
LOCALQUEUE = Resource("LocalQueue", "kueue.x-k8s.io", "v1beta2", "localqueues")
CLUSTERQUEUE = Resource("ClusterQueue", "kueue.x-k8s.io", "v1beta2", "clusterqueues", cluster=True)
RUNTIMES = {
    "ClusterTrainingRuntime": Resource(
        "ClusterTrainingRuntime", _trainjob.GROUP, _trainjob.VERSION, "clustertrainingruntimes", cluster=True
    ),
    "TrainingRuntime": Resource("TrainingRuntime", _trainjob.GROUP, _trainjob.VERSION, "trainingruntimes"),
}
SSAR = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"


class _Skip(Exception):
    """The check cannot be made from here (forbidden, or a transient API error)."""


# ----------------------------------------------------------------------------------------- references
@dataclass
class References:
    secrets: dict[str, dict[str | None, str]]  # name -> {key (None: the whole Secret): where it is used}
    configmaps: dict[str, dict[str | None, str]]
    pvcs: dict[str, str]  # claim -> where


def _pod_specs(objs: Sequence[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
    for obj in objs:
        entry = BY_KIND.get(str(obj.get("kind")))
        if entry is not None:
            for template in entry.pod_templates(obj["spec"]):
                yield template["spec"]


def references(objs: Sequence[Mapping[str, Any]]) -> References:
    """What the job's pods reference by name, from the rendered objects (its own ConfigMap excluded)."""
    own = {o["metadata"]["name"] for o in objs if o.get("kind") == "ConfigMap"}
    refs = References({}, {}, {})
    for spec in _pod_specs(objs):
        for s in spec.get("imagePullSecrets") or []:
            refs.secrets.setdefault(s["name"], {})[None] = "launcher.image_pull_secrets"
        for v in spec.get("volumes") or []:
            if "persistentVolumeClaim" in v:
                refs.pvcs[v["persistentVolumeClaim"]["claimName"]] = "launcher.pvcs"
            if "secret" in v:
                refs.secrets.setdefault(v["secret"]["secretName"], {})[None] = f"volume {v['name']}"
            if "configMap" in v and v["configMap"]["name"] not in own:
                refs.configmaps.setdefault(v["configMap"]["name"], {})[None] = f"volume {v['name']}"
        for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
            for e in c.get("env") or []:
                ref = e.get("valueFrom") or {}
                for field, table in (("secretKeyRef", refs.secrets), ("configMapKeyRef", refs.configmaps)):
                    r = ref.get(field)
                    if r and not r.get("optional"):
                        table.setdefault(r["name"], {})[r["key"]] = f"env {e['name']}"
            for src in c.get("envFrom") or []:
                for field, table in (("secretRef", refs.secrets), ("configMapRef", refs.configmaps)):
                    r = src.get(field)
                    if r and not r.get("optional"):
                        table.setdefault(r["name"], {})[None] = (
                            "envFrom (launcher.s3_secret / env_from_secrets)"
                        )
    return refs


def required_access(backend: str, objs: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, str]]:
    """(verb, API group, resource) the launcher needs for this job: submit its objects, follow, logs, cancel."""
    entry = BACKENDS[backend]
    need = [("create", entry.group, entry.plural), ("get", entry.group, entry.plural)]
    need.append(("delete", entry.group, entry.plural))
    from hydra_plugins.kubernetes_launcher._client import KINDS

    for obj in objs:
        kind = KINDS.get(str(obj.get("kind")))
        if kind is not None and obj.get("kind") != entry.kind:
            need.append(("create", kind.group, kind.plural))
    need += [("list", "", "pods"), ("watch", "", "pods"), ("get", "", "pods/log"), ("list", "", "events")]
    return list(dict.fromkeys(need))


# --------------------------------------------------------------------------------------------- checks
class Preflight:
    """The checks for one job, through a JobClient (its retries, timeouts and error messages)."""

    def __init__(self, client: Any, objs: Sequence[Mapping[str, Any]], cfg: Any) -> None:
        self.client, self.objs, self.cfg = client, objs, cfg
        self.ns = str(client.namespace)
        self.skipped: list[str] = []

    def _get(self, res: Resource, name: str, namespaced: bool = True) -> dict[str, Any] | None:
        """The object, or None when it does not exist (404); _Skip when it cannot be read."""
        from hydra_plugins.kubernetes_launcher._client import Kind, KubernetesError

        kind = Kind(res.kind, res.group, res.version, res.plural)
        path = res.path(None if res.cluster else self.ns, name)
        try:
            return self.client._request("get", kind, "GET", path, name=name, retries=2)  # type: ignore[no-any-return]
        except KubernetesError as e:
            if e.status == 404:
                return None
            self.skipped.append(f"{res.kind} {name}: {e}")
            raise _Skip from e

    def _list(self, res: Resource) -> list[dict[str, Any]]:
        from hydra_plugins.kubernetes_launcher._client import Kind, KubernetesError

        kind = Kind(res.kind, res.group, res.version, res.plural)
        try:
            out = self.client._request("list", kind, "GET", res.path(self.ns), retries=2)
        except KubernetesError as e:
            self.skipped.append(f"{res.plural}: {e}")
            raise _Skip from e
        return list(out.get("items") or [])

    def run(self) -> list[str]:
        problems = self.namespace()
        if problems:
            return problems  # everything else would be "not found" too
        for check in (self.references, self.queue_and_runtime, self.access, self.gpus, self.bucket):
            try:
                problems += check()
            except _Skip:
                continue
        return problems

    def namespace(self) -> list[str]:
        try:
            found = self._get(NAMESPACE, self.ns)
        except _Skip:
            return []
        if found is None:
            return [
                f"namespace {self.ns} does not exist: kubectl create namespace {self.ns} (or install "
                "dockerfiles/chart with namespace.create=true), or set launcher.namespace"
            ]
        return []

    def references(self) -> list[str]:
        refs, problems = references(self.objs), []
        for name, uses in sorted(refs.secrets.items()):
            try:
                secret = self._get(SECRET, name)
            except _Skip:
                continue
            where = ", ".join(sorted(set(uses.values())))
            if secret is None:
                keys = " ".join(f"--from-literal={k}=..." for k in sorted(k for k in uses if k)) or "..."
                problems.append(
                    f"Secret {self.ns}/{name} not found ({where}): kubectl -n {self.ns} create secret generic "
                    f"{name} {keys} (dockerfiles/chart/README.md lists each)"
                )
                continue
            have = set(secret.get("data") or {}) | set(secret.get("stringData") or {})
            for key in sorted(k for k in uses if k and k not in have):
                problems.append(
                    f"Secret {self.ns}/{name} has no key {key} ({uses[key]}); it has: "
                    f"{', '.join(sorted(have)) or 'no keys'}. Add it, or point the reference at the right key"
                )
        for name, uses in sorted(refs.configmaps.items()):
            try:
                cm = self._get(CONFIGMAP, name)
            except _Skip:
                continue
            if cm is None:
                problems.append(
                    f"ConfigMap {self.ns}/{name} not found ({', '.join(sorted(set(uses.values())))})"
                )
                continue
            have = set(cm.get("data") or {}) | set(cm.get("binaryData") or {})
            problems += [
                f"ConfigMap {self.ns}/{name} has no key {k} ({uses[k]})"
                for k in sorted(k for k in uses if k and k not in have)
            ]
        for claim in sorted(refs.pvcs):
            try:
                pvc = self._get(PVC, claim)
            except _Skip:
                continue
            if pvc is None:
                problems.append(
                    f"PersistentVolumeClaim {self.ns}/{claim} not found (launcher.pvcs): create it (the chart's "
                    "storage.* values) or fix the claim name in launcher.pvcs"
                )
            elif (pvc.get("status") or {}).get("phase") == "Lost":
                problems.append(
                    f"PersistentVolumeClaim {self.ns}/{claim} is Lost (its volume is gone): recreate it"
                )
        return problems

    def queue_and_runtime(self) -> list[str]:
        launcher, problems = self.cfg.launcher, []
        queue = getattr(launcher, "queue", None)
        if queue:
            try:
                if self._get(LOCALQUEUE, str(queue)) is None:
                    problems.append(
                        f"LocalQueue {self.ns}/{queue} not found (launcher.queue): install dockerfiles/chart with "
                        f"kueue.enabled=true, or pick one of: kubectl -n {self.ns} get localqueues"
                    )
            except _Skip:
                pass
        if str(launcher.backend) == "trainjob":
            kind = str(getattr(launcher, "runtime_kind", "ClusterTrainingRuntime"))
            res = RUNTIMES[kind]
            try:
                runtime = self._get(res, str(launcher.runtime))
                if runtime is None:
                    where = "" if res.cluster else f" in namespace {self.ns}"
                    problems.append(
                        f"{kind} {launcher.runtime} not found{where} (launcher.runtime): install dockerfiles/chart "
                        "with trainingRuntime.enabled=true, or use Kubeflow Trainer's stock torch-distributed"
                    )
                else:
                    problems += _staging.runtime_problems(self.objs, runtime)
            except _Skip:
                pass
        return problems

    def access(self) -> list[str]:
        from hydra_plugins.kubernetes_launcher._client import Kind, KubernetesError

        kind = Kind("SelfSubjectAccessReview", "authorization.k8s.io", "v1", "selfsubjectaccessreviews")
        problems = []
        for verb, group, resource in required_access(str(self.cfg.launcher.backend), self.objs):
            plural, _, sub = resource.partition("/")
            attrs = {"namespace": self.ns, "verb": verb, "group": group, "resource": plural}
            if sub:
                attrs["subresource"] = sub
            body = {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": attrs},
            }
            try:
                review = self.client._request("create", kind, "POST", SSAR, body=body, retries=2)
            except KubernetesError as e:
                self.skipped.append(f"access review: {e}")
                raise _Skip from e
            if not (review.get("status") or {}).get("allowed"):
                what = f"{resource}.{group}" if group else resource
                problems.append(
                    f"the launcher may not {verb} {what} in namespace {self.ns}: bind it to the chart's Role "
                    f"framework-launcher (launcher.rbac.backends must include {self.cfg.launcher.backend}, "
                    "launcher.rbac.subjects your user or group)"
                )
        return problems

    def gpus(self) -> list[str]:
        hw = self.cfg.hardware
        resource, per_pod = hw.resource_name, int(hw.gpus_per_node or 0)
        if not resource or per_pod <= 0:
            return []
        selector = dict(hw.node_selector or {})
        try:
            nodes = self._list(NODE)
        except _Skip:
            return self._queue_quota(str(resource), per_pod)
        offers = []
        for n in nodes:
            labels = (n.get("metadata") or {}).get("labels") or {}
            if any(labels.get(k) != str(v) for k, v in selector.items()):
                continue
            alloc = ((n.get("status") or {}).get("allocatable") or {}).get(str(resource))
            offers.append((_count(alloc), n["metadata"]["name"]))
        if any(count >= per_pod for count, _ in offers):
            return []
        have = (
            ", ".join(f"{name}: {count}" for count, name in sorted(offers, reverse=True)[:5])
            or "no matching node"
        )
        where = f" with labels {selector}" if selector else ""
        return [
            f"no node{where} offers {per_pod} {resource} per pod (hardware.gpus_per_node), so the pods would stay "
            f"Pending; the cluster has {have}. Pick a smaller hardware profile or add nodes"
        ]

    def _queue_quota(self, resource: str, per_pod: int) -> list[str]:
        queue = getattr(self.cfg.launcher, "queue", None)
        if not queue:
            return []
        lq = self._get(LOCALQUEUE, str(queue))
        if lq is None:
            return []  # reported by queue_and_runtime
        cq = self._get(CLUSTERQUEUE, str(lq["spec"]["clusterQueue"]))
        if cq is None:
            return [f"ClusterQueue {lq['spec']['clusterQueue']} of LocalQueue {self.ns}/{queue} not found"]
        quota = {
            f["name"]: _count(r.get("nominalQuota"))
            for g in cq["spec"].get("resourceGroups") or []
            for f in g.get("flavors") or []
            for r in f.get("resources") or []
            if r.get("name") == resource
        }
        total = per_pod * int(self.cfg.hardware.nodes)
        if any(q >= total for q in quota.values()):
            return []
        return [
            f"ClusterQueue {cq['metadata']['name']} (queue {queue}) has no flavor with {total} {resource} for the job "
            f"({per_pod} per pod x {self.cfg.hardware.nodes} pods); its quota: {quota or 'none'}. The job would "
            "wait for admission forever"
        ]

    def bucket(self) -> list[str]:
        uri = str(getattr(self.cfg.storage, "output_uri", None) or "")
        if not uri.startswith("s3://"):
            return []
        if not (os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE")):
            self.skipped.append(f"{uri}: no S3 credentials here to check the bucket with")
            return []
        from framework import storage

        bucket = "s3://" + uri[len("s3://") :].split("/", 1)[0]
        try:
            with storage.configured(retries=1, connect_timeout_s=3.0, read_timeout_s=5.0):  # a few seconds
                storage.exists(bucket)
        except FrameworkError as e:
            endpoint = os.environ.get("AWS_ENDPOINT_URL") or "the AWS default endpoint"
            return [
                f"the run dir's bucket {bucket} is not reachable via {endpoint} (storage.output_uri): {e}"
            ]
        return []


def _count(value: Any) -> int:
    try:
        return int(str(value or "0"))
    except ValueError:
        return 0


def signature(objs: Sequence[Mapping[str, Any]], cfg: Any) -> tuple[Any, ...]:
    """What the checks depend on: sweep jobs with the same signature are checked once."""
    refs = references(objs)
    hw, launcher = cfg.hardware, cfg.launcher
    return (
        sorted((n, sorted(map(str, k))) for n, k in refs.secrets.items()),
        sorted(refs.configmaps),
        sorted(refs.pvcs),
        getattr(launcher, "queue", None),
        getattr(launcher, "runtime", None),
        hw.resource_name,
        hw.gpus_per_node,
        hw.nodes,
        str(getattr(cfg.storage, "output_uri", None) or "").split("/")[:3],
        sorted(required_access(str(launcher.backend), objs)),
    )


def check(client: Any, objs: Sequence[Mapping[str, Any]], cfg: Any) -> None:
    """Run every preflight check for one job; raise PreflightError listing all problems (exit 2)."""
    pf = Preflight(client, objs, cfg)
    problems = pf.run()
    for s in pf.skipped:
        log.info("preflight: skipped %s", s)
    if problems:
        raise PreflightError(problems)
