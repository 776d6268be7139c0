"""The Kubernetes API layer: submit, status, wait, logs, cancel and list training jobs.

Thin over the official ``kubernetes`` client (imported lazily: plugin discovery must stay fast). Every API
error becomes one message naming the resource and the fix, with the ApiException chained; transient errors
(429, 5xx, connection failures, timeouts) are retried with exponential backoff first.

    from hydra_plugins.kubernetes_launcher.api import JobClient
    jobs = JobClient(namespace="team-a")
    for job in jobs.list(): print(job.name, job.phase)
    print("\\n".join(jobs.logs("lora-llama-x1y2z3-0")))
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hydra_plugins.kubernetes_launcher._backends import BACKENDS, BY_KIND
from hydra_plugins.kubernetes_launcher._names import MANAGED_BY

from framework.errors import EXIT_KILLED, EXIT_PREEMPTED, EXIT_USAGE, FrameworkError

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

log = logging.getLogger(__name__)

TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
EXIT_OOM_KILLED = EXIT_KILLED  # the kernel's OOM killer (or a SIGKILL after the grace period)
_OBJECT = {200: "object", 201: "object", 202: "object"}  # responses as plain dicts
_MERGE = "application/merge-patch+json"
INSTANCE_LABEL = "app.kubernetes.io/instance"


class KubernetesError(FrameworkError):
    """A Kubernetes operation failed; the message names the resource and what to do. ``status`` is the API
    server's HTTP status (None when no response came back): code reads it, never the message."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ClusterUnreachable(KubernetesError):
    """No cluster configured, or its API server cannot be reached."""


class JobFailed(KubernetesError):
    """The training job ran and failed (exit code 2 when the pods rejected the config)."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        if permanent:
            self.exit_code = EXIT_USAGE


@dataclass(frozen=True)
class Kind:
    kind: str
    group: str  # "" for the core API
    version: str
    plural: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def resource(self) -> str:
        """As RBAC and kubectl name it: jobs.batch, configmaps."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def path(self, namespace: str, name: str | None = None, sub: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        p = f"{base}/namespaces/{namespace}/{self.plural}"
        if name:
            p += f"/{name}"
        if sub:
            p += f"/{sub}"
        return p


KINDS = {
    k.kind: k
    for k in (
        *(Kind(b.kind, b.group, b.version, b.plural) for b in BACKENDS.values()),
        Kind("ConfigMap", "", "v1", "configmaps"),
        Kind("Service", "", "v1", "services"),
        Kind("Pod", "", "v1", "pods"),
        Kind("Event", "", "v1", "events"),
        Kind("ServiceAccount", "", "v1", "serviceaccounts"),
        Kind("Role", "rbac.authorization.k8s.io", "v1", "roles"),
        Kind("RoleBinding", "rbac.authorization.k8s.io", "v1", "rolebindings"),
        Kind("NetworkPolicy", "networking.k8s.io", "v1", "networkpolicies"),
        Kind("PodMonitor", "monitoring.coreos.com", "v1", "podmonitors"),
    )
}
JOB_KINDS = tuple(BY_KIND)
SETUP_KINDS = ("ServiceAccount", "Role", "RoleBinding")
GC_KINDS = ("ConfigMap", "Service", "NetworkPolicy", "PodMonitor")  # per-job objects a job owns


# ------------------------------------------------------------------------------------------- status types
@dataclass
class PodInfo:
    name: str
    phase: str  # Pending | Running | Succeeded | Failed | Unknown
    node_rank: int | None
    reason: str | None = None  # why it is not running (Unschedulable, ImagePullBackOff, ...) or how it failed
    exit_code: int | None = None
    created: str = ""


@dataclass
class JobInfo:
    name: str
    namespace: str
    kind: str
    phase: str  # Pending | Running | Succeeded | Failed | Suspended | Deleted
    message: str = ""
    pods: list[PodInfo] = field(default_factory=list)
    created: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    reason: str = (
        ""  # the reason of the condition that ended it (PodFailurePolicy, BackoffLimitExceeded, ...)
    )

    @property
    def done(self) -> bool:
        return self.phase in ("Succeeded", "Failed", "Deleted")

    @property
    def exit_code(self) -> int | None:
        """The exit code that explains a failure, from the pods' container statuses: 2 (bad config) first, then
        137 (OOM-killed), else the lowest node rank's non-zero code; None when no pod reported one."""
        codes = [p.exit_code for p in self.pods if p.exit_code not in (None, 0)]
        for code in (EXIT_USAGE, EXIT_OOM_KILLED):
            if code in codes:
                return code
        return codes[0] if codes else None

    @property
    def permanent_failure(self) -> bool:
        """Failed because a pod exited 2 (bad config or data), so the controller's exit-2 rule ended it:
        rerunning cannot help."""
        return self.phase == "Failed" and (self.reason == "PodFailurePolicy" or self.exit_code == EXIT_USAGE)

    def describe(self) -> str:
        """One line: the phase and, while not running, why."""
        queue = self.labels.get("kueue.x-k8s.io/queue-name")
        if self.phase == "Suspended" and queue:  # Kueue unsuspends it once the whole gang is admitted
            return f"Suspended: waiting for admission in queue {queue} (Kueue)"
        if self.done or not self.pods:
            text = f"{self.phase}: {self.message}" if self.message else self.phase
            if self.phase == "Failed" and self.exit_code is not None:
                text += f" ({exit_meaning(self.exit_code)})"
            return text
        running = sum(p.phase == "Running" for p in self.pods)
        waiting = [p for p in self.pods if p.reason and p.phase in ("Pending", "Unknown")]
        if waiting:
            p = waiting[0]
            more = f" (+{len(waiting) - 1} more)" if len(waiting) > 1 else ""
            return f"Pending: pod {p.name}: {p.reason}{more}"
        phase = "Running" if running else "Pending"
        return f"{phase} ({running}/{len(self.pods)} pods running)"


# ---------------------------------------------------------------------------------------------- errors
def _body(e: Any) -> dict[str, Any]:
    try:
        body = json.loads(e.body or "{}")
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def api_error(
    verb: str, kind: Kind, namespace: str, name: str | None, e: Any, attempts: int = 1
) -> KubernetesError:
    """Turn an ApiException into one message: what failed, on which resource, why, and the fix."""
    status = int(getattr(e, "status", 0) or 0)
    body = _body(e)
    server_msg = str(body.get("message") or getattr(e, "reason", "") or "").strip()
    details = body.get("details") or {}
    what = f"{kind.kind} {namespace}/{name}" if name else f"{kind.resource} in namespace {namespace}"
    if status == 401:
        why = "unauthorized (401) — the cluster rejected the credentials; refresh your kubeconfig login"
    elif status == 403:
        why = (
            f"forbidden (403) — the service account needs '{verb}' on {kind.resource}; apply the RBAC from "
            "launcher.setup_namespace=true"
        )
    elif status == 404 and (
        details.get("kind") == "namespaces" or f'namespaces "{namespace}" not found' in server_msg
    ):
        why = (
            f"namespace '{namespace}' not found (404) — create it (kubectl create namespace {namespace}) or set "
            "launcher.namespace"
        )
    elif (
        status == 404
        and kind.kind in BY_KIND
        and kind.group != "batch"
        and verb in ("create", "list")
        and not details
    ):
        why = (
            f"the {kind.kind} API ({kind.resource}/{kind.version}) is not installed on this cluster (404) — "
            "install its operator, or use launcher.backend=indexed_job"
        )
    elif status == 404:
        why = "not found (404)"
    elif status == 409:
        why = f"already exists (409) — pick another run_name, or delete it: framework-jobs cancel {name} -n {namespace}"
    elif status == 422:
        causes = [
            f"{c.get('field', '?')}: {c.get('message', '')}".strip()
            for c in details.get("causes") or []
            if isinstance(c, dict)
        ]
        why = f"invalid (422): {'; '.join(causes) or server_msg}"
    elif status == 429:
        why = f"rate limited by the API server (429), gave up after {attempts} attempts"
    elif status >= 500:
        why = f"API server error ({status}) after {attempts} attempts: {server_msg or 'no details'}"
    else:
        why = f"{status} {server_msg}".strip()
    if status == 403 and server_msg:  # names the user the server saw
        why += f" [{server_msg}]"
    return KubernetesError(f"Failed to {verb} {what}: {why}", status=status or None)


def _is_transient_exc(e: BaseException) -> bool:
    import urllib3

    return isinstance(e, urllib3.exceptions.HTTPError | OSError | TimeoutError)


def _exc_text(e: BaseException) -> str:
    """The useful part of a urllib3/socket error: '[Errno 111] Connection refused', 'Read timed out'."""
    text = str(getattr(e, "reason", None) or e)
    m = re.search(
        r"\[Errno -?\d+\] [^'\")\]]+|[Rr]ead timed out|timed out|Connection reset|Connection aborted", text
    )
    return m.group(0).strip() if m else text[:200]


# ---------------------------------------------------------------------------------------- configuration
IN_CLUSTER_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def default_namespace(context: str | None = None) -> str:
    """The one namespace rule (launcher.namespace=null and framework-jobs without -n): the kubeconfig context's
    namespace, as kubectl uses it; in a pod, its service account's namespace; else "default".

    Reads $KUBECONFIG (a path list, merged first-wins as kubectl does) or ~/.kube/config with yaml: no client.
    """
    import os
    from pathlib import Path

    import yaml

    paths = [p for p in (os.environ.get("KUBECONFIG") or "~/.kube/config").split(os.pathsep) if p]
    current, contexts = None, {}
    for p in paths:
        try:
            doc = yaml.safe_load(Path(p).expanduser().read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        current = current or doc.get("current-context")
        for c in doc.get("contexts") or []:
            contexts.setdefault(c.get("name"), c.get("context") or {})
    chosen = contexts.get(context or current)
    if chosen and chosen.get("namespace"):
        return str(chosen["namespace"])
    if chosen is None and context is None:
        try:
            return Path(IN_CLUSTER_NAMESPACE).read_text().strip() or "default"
        except OSError:
            pass
    return "default"


def load_api_client(context: str | None = None) -> ApiClient:
    """An ApiClient for ``context`` in the kubeconfig ($KUBECONFIG or ~/.kube/config), else the in-cluster config."""
    import os

    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    configuration = client.Configuration()
    errors = []
    try:
        # $KUBECONFIG read now, not at import (the client caches it in a module constant).
        config.load_kube_config(
            config_file=os.environ.get("KUBECONFIG") or None,
            context=context,
            client_configuration=configuration,
        )
    except (ConfigException, OSError, TypeError, ValueError) as e:
        errors.append(f"kubeconfig: {e}")
        if context is not None:
            raise ClusterUnreachable(
                f"Cannot use kubeconfig context {context!r} (launcher.context): {e}. Pick one from `kubectl config "
                "get-contexts`, or only render manifests with launcher.dry_run=true"
            ) from e
        try:
            config.load_incluster_config(client_configuration=configuration)
        except ConfigException as e2:
            where = os.environ.get("KUBECONFIG") or "~/.kube/config"
            raise ClusterUnreachable(
                f"No Kubernetes cluster configured (no usable kubeconfig at {where}, not running in a cluster); "
                "set KUBECONFIG, or only render manifests with launcher.dry_run=true"
            ) from e2
    configuration.retries = 0  # retries are ours (with backoff and a clear message), not urllib3's
    return client.ApiClient(configuration)


# ------------------------------------------------------------------------------------------------ client
class JobClient:
    """Training jobs in one namespace: submit, status, wait, logs, cancel, list."""

    def __init__(
        self,
        namespace: str = "default",
        *,
        context: str | None = None,
        backend: str = "indexed_job",
        api_client: ApiClient | None = None,
        retries: int = 5,
        timeout_s: float = 30.0,
        backoff_s: float = 1.0,
        poll_interval_s: float = 5.0,
    ) -> None:
        self.namespace = namespace
        self.kind = KINDS[BACKENDS[backend].kind]
        self.retries = max(1, retries)
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.poll_interval_s = poll_interval_s
        self.api = api_client or load_api_client(context)
        self._log_responses: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def host(self) -> str:
        return str(self.api.configuration.host)

    # -------------------------------------------------------------------------------- raw REST, retried
    def _request(
        self,
        verb: str,
        kind: Kind,
        method: str,
        path: str,
        *,
        name: str | None = None,
        query: Sequence[tuple[str, Any]] = (),
        body: Any = None,
        stream: bool = False,
        timeout: Any = None,
        retries: int | None = None,
        content_type: str = "application/json",
    ) -> Any:
        from kubernetes.client.exceptions import ApiException

        attempts = self.retries if retries is None else retries
        for attempt in range(1, attempts + 1):
            try:
                result = self.api.call_api(
                    path,
                    method,
                    query_params=list(query),
                    header_params={"Accept": "application/json", "Content-Type": content_type},
                    body=body,
                    response_types_map=None if stream else _OBJECT,
                    auth_settings=["BearerToken"],
                    _return_http_data_only=True,
                    _preload_content=not stream,
                    _request_timeout=timeout if timeout is not None else self.timeout_s,
                )
                return result
            except ApiException as e:
                if e.status in TRANSIENT_STATUS and attempt < attempts:
                    self._sleep(attempt, e)
                    continue
                raise api_error(verb, kind, self.namespace, name, e, attempt) from e
            except Exception as e:  # urllib3 / socket errors carry no HTTP status
                if not _is_transient_exc(e):
                    raise
                if attempt < attempts:
                    self._sleep(attempt, e)
                    continue
                what = (
                    f"{kind.kind} {self.namespace}/{name}" if name else f"{kind.resource} in {self.namespace}"
                )
                raise ClusterUnreachable(
                    f"Failed to {verb} {what}: cannot reach the API server at {self.host} after {attempt} attempts "
                    f"({_exc_text(e)})"
                ) from e
        raise AssertionError("unreachable")

    def _sleep(self, attempt: int, e: BaseException) -> None:
        delay = min(30.0, self.backoff_s * 2 ** (attempt - 1)) * (0.75 + random.random() / 2)
        log.debug("transient API error (%s); retry %d in %.2fs", e, attempt, delay)
        time.sleep(delay)

    def create(self, obj: dict[str, Any], *, retries: int | None = None) -> dict[str, Any]:
        kind = KINDS[obj["kind"]]
        ns = obj["metadata"].get("namespace") or self.namespace
        name = obj["metadata"]["name"]
        try:
            return self._request("create", kind, "POST", kind.path(ns), name=name, body=obj, retries=retries)  # type: ignore[no-any-return]
        except KubernetesError as e:
            # A create that timed out may have succeeded: a retry then sees 409. Ours (same config hash)? Done.
            if e.status == 409 and isinstance(e.__cause__, Exception) and self._is_ours(kind, name, obj):
                return self.get(kind.kind, name)
            raise

    def _is_ours(self, kind: Kind, name: str, obj: dict[str, Any]) -> bool:
        try:
            existing = self.get(kind.kind, name)
        except KubernetesError:
            return False
        key = "framework.io/config-hash"
        mine, theirs = obj["metadata"].get("labels", {}), existing.get("metadata", {}).get("labels", {})
        same = mine.get(key) is not None and mine.get(key) == theirs.get(key)
        return same and mine.get("framework.io/sweep-id") == theirs.get("framework.io/sweep-id")

    def get(self, kind: str, name: str) -> dict[str, Any]:
        k = KINDS[kind]
        return self._request("get", k, "GET", k.path(self.namespace, name), name=name)  # type: ignore[no-any-return]

    def list_objects(
        self, kind: str, *, labels: str | None = None, fields: str | None = None
    ) -> dict[str, Any]:
        k = KINDS[kind]
        query = [(key, v) for key, v in (("labelSelector", labels), ("fieldSelector", fields)) if v]
        return self._request("list", k, "GET", k.path(self.namespace), query=query)  # type: ignore[no-any-return]

    def patch(self, kind: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """A JSON merge patch (RFC 7386) of one object."""
        k = KINDS[kind]
        return self._request(  # type: ignore[no-any-return]
            "patch", k, "PATCH", k.path(self.namespace, name), name=name, body=body, content_type=_MERGE
        )

    def delete(self, kind: str, name: str, *, missing_ok: bool = True) -> None:
        k = KINDS[kind]
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        try:
            self._request("delete", k, "DELETE", k.path(self.namespace, name), name=name, body=body)
        except KubernetesError as e:
            if not (missing_ok and e.status == 404):
                raise

    # ---------------------------------------------------------------------------------------- lifecycle
    def check_reachable(self) -> None:
        """GET /version (no RBAC needed): fail fast, in one line, when the API server is unreachable."""
        from kubernetes.client.exceptions import ApiException

        last: BaseException | None = None
        for attempt in range(1, 3):
            try:
                self.api.call_api(
                    "/version",
                    "GET",
                    response_types_map=_OBJECT,
                    auth_settings=["BearerToken"],
                    _return_http_data_only=True,
                    _request_timeout=min(self.timeout_s, 10.0),
                )
                return
            except ApiException as e:
                if e.status in (401, 403):
                    raise api_error("reach", KINDS["Pod"], self.namespace, None, e) from e
                return  # the server answered: reachable
            except Exception as e:
                if not _is_transient_exc(e):
                    raise
                last = e
                if attempt < 2:
                    time.sleep(min(self.backoff_s, 1.0))
        raise ClusterUnreachable(
            f"Cannot reach the Kubernetes API server at {self.host} ({_exc_text(last or Exception())}); check the "
            "kubeconfig context (launcher.context), or only render manifests with launcher.dry_run=true"
        ) from last

    def submit(self, objs: Sequence[dict[str, Any]]) -> str:
        """Create the job and its objects (owned by it: deleting the job deletes them). All or nothing."""
        main = next(o for o in objs if o["kind"] in JOB_KINDS)
        name = main["metadata"]["name"]
        for obj in objs:
            if obj["kind"] in SETUP_KINDS:
                try:
                    self.create(obj, retries=self.retries)
                except KubernetesError as e:
                    if e.status != 409:
                        raise
                    if obj["kind"] == "Role":  # set up before: bring its rules up to this job's kinds
                        self.patch("Role", obj["metadata"]["name"], {"rules": obj["rules"]})
        created: list[dict[str, Any]] = []
        try:
            job = self.create(main)
            created.append(main)
            owner = {
                "apiVersion": main["apiVersion"],
                "kind": main["kind"],
                "name": name,
                "uid": job["metadata"]["uid"],
                # No blockOwnerDeletion: it needs 'update' on the job's finalizers, which the Role does not grant.
            }
            for obj in objs:
                if obj is main or obj["kind"] in SETUP_KINDS:
                    continue
                owned = copy.deepcopy(obj)
                owned["metadata"]["ownerReferences"] = [owner]
                self.create(owned)
                created.append(owned)
        except BaseException:
            self._cleanup(created)
            raise
        return str(name)

    def _cleanup(self, created: list[dict[str, Any]]) -> None:
        """Delete what a failed submit created (newest first), so nothing is left behind."""
        for obj in reversed(created):
            try:
                self.delete(obj["kind"], obj["metadata"]["name"])
            except Exception as e:  # best effort: report, keep cleaning
                log.warning(
                    "could not delete %s %s/%s after a failed submit: %s",
                    obj["kind"],
                    self.namespace,
                    obj["metadata"]["name"],
                    e,
                )

    def find(self, name: str) -> Kind:
        """The kind of the job called ``name``: the configured backend's first, then the others."""
        order = [self.kind.kind] + [k for k in JOB_KINDS if k != self.kind.kind]
        for kind in order:
            try:
                self.get(kind, name)
                return KINDS[kind]
            except KubernetesError as e:
                if e.status not in (403, 404):
                    raise
        raise KubernetesError(
            f"No training job {self.namespace}/{name} (looked for {', '.join(order)}); list them with "
            f"framework-jobs list -n {self.namespace}"
        )

    def status(self, name: str, *, kind: Kind | None = None, events: bool = True) -> JobInfo:
        return self._snapshot(name, kind or self.find(name), events=events)[0]

    def _snapshot(self, name: str, kind: Kind, *, events: bool = True) -> tuple[JobInfo, str | None]:
        try:
            obj = self.get(kind.kind, name)
        except KubernetesError as e:
            if e.status == 404:
                return JobInfo(name, self.namespace, kind.kind, "Deleted", "the job no longer exists"), None
            raise
        info = job_info(obj, kind.kind)
        pod_list = self.list_objects("Pod", labels=f"{INSTANCE_LABEL}={name}")
        info.pods = sorted(
            (pod_info(p, kind.kind) for p in pod_list.get("items") or []),
            key=lambda p: (p.node_rank if p.node_rank is not None else 1 << 30, p.created),
        )
        if events and not info.done:
            for pod in info.pods:
                if pod.phase == "Pending" and pod.reason is None:
                    pod.reason = self._warning(pod.name)
            if not info.pods and info.phase == "Pending":
                reason = self._warning(name)
                if reason:
                    info.message = reason
        rv = (pod_list.get("metadata") or {}).get("resourceVersion")
        return info, rv

    def _warning(self, obj_name: str) -> str | None:
        """The newest Warning event about an object (FailedScheduling, FailedMount, FailedCreate...)."""
        try:
            items = self.list_objects("Event", fields=f"involvedObject.name={obj_name}").get("items") or []
        except KubernetesError as e:
            log.debug("events unavailable: %s", e)
            return None
        warnings = [e for e in items if e.get("type") == "Warning"]
        if not warnings:
            return None
        ev = max(warnings, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
        return _hint(str(ev.get("reason", "")), str(ev.get("message", "")))

    def wait(
        self,
        name: str,
        *,
        on_update: Callable[[str], None] | None = None,
        stop: threading.Event | None = None,
        timeout_s: float | None = None,
    ) -> JobInfo:
        """Follow the job until it succeeds, fails or disappears; ``on_update`` gets each new status line."""
        kind = self.find(name)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        last = None
        while True:
            info, rv = self._snapshot(name, kind)
            line = info.describe()
            if line != last and on_update is not None:
                on_update(line)
            last = line
            if info.done or (stop is not None and stop.is_set()):
                return info
            if deadline is not None and time.monotonic() > deadline:
                return info
            self._await_pod_change(name, rv, stop)

    def _await_pod_change(self, name: str, rv: str | None, stop: threading.Event | None) -> None:
        """Block until a pod of the job changes, or poll_interval_s passes (then the job itself is re-read)."""
        if stop is not None and stop.is_set():
            return
        if rv is None:
            time.sleep(self.poll_interval_s)
            return
        k = KINDS["Pod"]
        query = [
            ("watch", "true"),
            ("labelSelector", f"{INSTANCE_LABEL}={name}"),
            ("resourceVersion", rv),
            ("timeoutSeconds", max(1, round(self.poll_interval_s))),  # whole seconds only
        ]
        started = time.monotonic()
        resp = None
        try:
            # The read timeout ends sub-second polls early; with whole seconds the server ends the watch first.
            timeout = (self.timeout_s, self.poll_interval_s * 1.5)
            resp = self._request(
                "watch",
                k,
                "GET",
                k.path(self.namespace),
                query=query,
                stream=True,
                timeout=timeout,
                retries=1,
            )
            for _ in _lines(resp):
                return  # any event: re-read the job
        except Exception as e:  # a broken or timed-out watch is no reason to stop following: poll instead
            if not isinstance(e, KubernetesError) and not _is_transient_exc(e):
                raise
            log.debug("pod watch ended: %s", e)
        finally:
            if resp is not None:
                resp.close()  # not release_conn(): an unfinished stream must not go back to the pool
        remaining = self.poll_interval_s - (time.monotonic() - started)
        if remaining > 0:
            (stop.wait if stop is not None else time.sleep)(remaining)

    def cancel(self, name: str) -> None:
        """Delete the job; its pods, ConfigMap and Service go with it (owner references)."""
        kind = self.find(name)
        self.delete(kind.kind, name, missing_ok=False)

    def list(self) -> list[JobInfo]:
        """Every training job this launcher created in the namespace, oldest first."""
        jobs: list[JobInfo] = []
        for kind in JOB_KINDS:
            try:
                items = (
                    self.list_objects(kind, labels=f"app.kubernetes.io/managed-by={MANAGED_BY}").get("items")
                    or []
                )
            except KubernetesError as e:
                if kind != self.kind.kind and e.status in (403, 404):
                    continue  # that operator is not installed (or not ours to read)
                raise
            jobs.extend(job_info(obj, kind) for obj in items)
        return sorted(jobs, key=lambda j: j.created)

    def gc(self, *, min_age_s: float = 600.0, dry_run: bool = False) -> list[str]:
        """Delete what ``kubectl apply -f manifests.yaml`` left behind: this launcher's ConfigMaps, Services,
        NetworkPolicies and PodMonitors whose job no longer exists (a submit through the launcher sets owner
        references instead, and Kubernetes deletes those with the job). Objects younger than ``min_age_s`` are
        kept: ``kubectl apply`` may not have created their job yet. Returns "Kind/name" of each one deleted."""
        from datetime import datetime, timezone

        selector = f"app.kubernetes.io/managed-by={MANAGED_BY}"
        jobs = {j.name for j in self.list()}
        now = datetime.now(timezone.utc)
        deleted = []
        for kind in GC_KINDS:
            try:
                items = self.list_objects(kind, labels=selector).get("items") or []
            except KubernetesError as e:
                if e.status in (403, 404):  # PodMonitor CRD not installed, or not ours to read
                    continue
                raise
            for obj in items:
                meta = obj.get("metadata") or {}
                job = (meta.get("labels") or {}).get(INSTANCE_LABEL)
                if not job or job in jobs or meta.get("ownerReferences"):
                    continue
                try:
                    created = datetime.fromisoformat(
                        str(meta.get("creationTimestamp")).replace("Z", "+00:00")
                    )
                except ValueError:
                    continue
                if (now - created).total_seconds() < min_age_s:
                    continue
                if not dry_run:
                    self.delete(kind, str(meta["name"]))
                deleted.append(f"{kind}/{meta['name']}")
        return deleted

    # ---------------------------------------------------------------------------------------------- logs
    def rank_pod(self, name: str, node_rank: int = 0) -> PodInfo | None:
        """The newest pod of the job running ``node_rank`` (a retried pod replaces the old one)."""
        kind = self.find(name)
        items = self.list_objects("Pod", labels=f"{INSTANCE_LABEL}={name}").get("items") or []
        pods = [pod_info(p, kind.kind) for p in items]
        pods = [p for p in pods if p.node_rank == node_rank]
        return max(pods, key=lambda p: p.created) if pods else None

    def logs(
        self, name: str, *, node_rank: int = 0, follow: bool = False, pod: str | None = None
    ) -> Iterator[str]:
        """Log lines of the job's pod with ``node_rank`` (rank 0 writes the training progress)."""
        if pod is None:
            found = self.rank_pod(name, node_rank)
            if found is None:
                raise KubernetesError(
                    f"Job {self.namespace}/{name} has no pod with node rank {node_rank} yet"
                )
            pod = found.name
        k = KINDS["Pod"]
        query: list[tuple[str, Any]] = [("follow", "true")] if follow else []
        resp = self._request(
            "read logs of",
            k,
            "GET",
            k.path(self.namespace, pod, "log"),
            name=pod,
            query=query,
            stream=True,
            timeout=(self.timeout_s, None) if follow else self.timeout_s,
        )
        with self._lock:
            self._log_responses[pod] = resp
        try:
            yield from _lines(resp)
        finally:
            with self._lock:
                self._log_responses.pop(pod, None)
            resp.close()  # in the reading thread; an unfinished stream must not go back to the pool

    def follow_logs(
        self, name: str, emit: Callable[[str], None], stop: threading.Event, *, node_rank: int = 0
    ) -> None:
        """Stream the rank pod's logs; a replaced pod (retry) is followed in turn. Set ``stop`` once the job is
        done (the current stream still runs to its end) or call close_log_streams() to cut it short."""
        seen: set[str] = set()
        while not stop.is_set():
            try:
                pod = self.rank_pod(name, node_rank)
            except KubernetesError as e:
                log.debug("log follower: %s", e)
                pod = None
            if pod is None or pod.name in seen or pod.phase not in ("Running", "Succeeded", "Failed"):
                stop.wait(min(1.0, self.poll_interval_s))
                continue
            if seen:
                emit(f"--- node rank {node_rank} restarted as pod {pod.name} ---")
            seen.add(pod.name)
            try:
                # Not interrupted by `stop`: a finished pod's stream ends by itself, and its last lines matter.
                for line in self.logs(name, pod=pod.name, follow=True):
                    emit(line)
            except KubernetesError as e:
                log.debug("log stream of %s ended: %s", pod.name, e)
                if e.status == 400:  # container not started yet: try this pod again
                    seen.discard(pod.name)
                    stop.wait(1.0)
            except Exception as e:  # a connection closed under us when following stops
                if stop.is_set():
                    return
                log.debug("log stream of %s broke: %s", pod.name, e)

    def close_log_streams(self) -> None:
        """Unblock follow_logs readers (called once the job is done)."""
        with self._lock:
            responses = list(self._log_responses.values())
        for resp in responses:
            # Shut the socket down: the reader thread gets EOF. (close() from here would block on the file
            # object's lock, which that thread holds while it waits in read.)
            sock = getattr(getattr(resp, "connection", None), "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def _lines(resp: Any) -> Iterator[str]:
    from kubernetes.watch.watch import iter_resp_lines

    yield from iter_resp_lines(resp)


# ------------------------------------------------------------------------------------ object → status
def _conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for c in (obj.get("status") or {}).get("conditions") or []:
        if str(c.get("status")) == "True":
            out[str(c.get("type"))] = c
    return out


def _cond_text(c: dict[str, Any]) -> str:
    return ": ".join(x for x in (str(c.get("reason") or ""), str(c.get("message") or "")) if x)


def job_info(obj: dict[str, Any], kind: str) -> JobInfo:
    """Phase and message of a job object from its status conditions (read by its backend's entry)."""
    meta = obj.get("metadata") or {}
    phase, cond = BY_KIND[kind].phase(_conditions(obj), obj.get("status") or {})
    return JobInfo(
        name=str(meta.get("name", "")),
        namespace=str(meta.get("namespace", "")),
        kind=kind,
        phase=phase,
        message=_cond_text(cond) if cond else "",
        reason=str((cond or {}).get("reason") or ""),
        created=str(meta.get("creationTimestamp") or ""),
        labels=dict(meta.get("labels") or {}),
        annotations=dict(meta.get("annotations") or {}),
    )


def exit_meaning(code: int) -> str:
    """What a pod's exit code means under DESIGN.md's contract, with the fix where there is one."""
    meanings = {
        EXIT_USAGE: "exit code 2: bad config or data, not retried; fix the error the pod logged",
        EXIT_OOM_KILLED: "exit code 137: OOM-killed (or killed after the grace period); raise "
        "hardware.memory or lower train.micro_batch_size",
        EXIT_PREEMPTED: "exit code 143: stopped by SIGTERM after a checkpoint",
    }
    return meanings.get(code, f"exit code {code}")


HINTS = {
    "ImagePullBackOff": "check launcher.image and launcher.image_pull_secrets",
    "ErrImagePull": "check launcher.image and launcher.image_pull_secrets",
    "InvalidImageName": "fix launcher.image",
    "CreateContainerConfigError": "create the Secret/ConfigMap it names, or fix launcher.hf_token_secret / "
    "secret_env / s3_secret / env_from_secrets",
    "Unschedulable": "no node has the requested resources free (hardware.* profile, node_selector, tolerations)",
    "FailedScheduling": "no node has the requested resources free (hardware.* profile, node_selector, tolerations)",
    "FailedMount": "a volume could not be mounted; check launcher.pvcs",
    "OOMKilled": "out of memory: raise hardware.memory or lower train.micro_batch_size",
}


def _hint(reason: str, message: str) -> str:
    text = f"{reason}: {message}" if message else reason
    hint = HINTS.get(reason)
    return f"{text} — {hint}" if hint else text


def pod_info(pod: dict[str, Any], kind: str) -> PodInfo:
    """A pod's phase and, when it is stuck or failed, why (from its conditions and container statuses)."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    info = PodInfo(
        name=str(meta.get("name", "")),
        phase=str(status.get("phase") or "Pending"),
        node_rank=BY_KIND[kind].node_rank(pod),
        created=str(meta.get("creationTimestamp") or ""),
    )
    for c in status.get("conditions") or []:
        if c.get("type") == "PodScheduled" and str(c.get("status")) == "False":
            info.reason = _hint(str(c.get("reason") or "Unschedulable"), str(c.get("message") or ""))
            return info
    for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        state = cs.get("state") or {}
        waiting, terminated = state.get("waiting"), state.get("terminated")
        if waiting and waiting.get("reason") not in (None, "ContainerCreating", "PodInitializing"):
            info.reason = _hint(str(waiting.get("reason")), str(waiting.get("message") or ""))
            return info
        if terminated and terminated.get("exitCode") not in (None, 0):
            info.exit_code = int(terminated["exitCode"])
            tail = str(terminated.get("message") or "").strip().splitlines()[-1:] or [""]
            why = str(terminated.get("reason") or "Error")
            info.reason = f"exit code {info.exit_code} ({why}) {tail[0]}".strip()
            if why == "OOMKilled" or info.exit_code == EXIT_OOM_KILLED:
                info.reason = _hint("OOMKilled", info.reason)
            return info
    return info
