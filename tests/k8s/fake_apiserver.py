"""An in-process fake Kubernetes API server, enough of the REST protocol for the real ``kubernetes`` client.

    kube = FakeKube().start()                      # http://127.0.0.1:<port>, a thread; kube.stop() at the end
    kube.write_kubeconfig(path)                    # or kube.api_client()
    kube.fail("POST", r"/jobs$", 403)              # inject an error (times=, delay=, drop=)
    kube.on_create.append(simulate("succeed"))     # play the controller: pods, phases, logs, job conditions

Covers create/get/list/delete/watch for namespaced objects in the core, batch, rbac, networking, JobSet,
PyTorchJob, TrainJob and RayJob APIs, pods/log (with follow), label and field selectors, resourceVersion-based watches (chunked
streaming, like the real server), and ownerReference garbage collection on delete. Not covered: patch/update,
cluster-scoped objects, admission and validation (use the schema tests for that).
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

Obj = dict[str, Any]

# (group, version, plural) -> Kind
RESOURCES: dict[tuple[str, str, str], str] = {
    ("", "v1", "configmaps"): "ConfigMap",
    ("", "v1", "services"): "Service",
    ("", "v1", "pods"): "Pod",
    ("", "v1", "events"): "Event",
    ("", "v1", "serviceaccounts"): "ServiceAccount",
    ("batch", "v1", "jobs"): "Job",
    ("rbac.authorization.k8s.io", "v1", "roles"): "Role",
    ("rbac.authorization.k8s.io", "v1", "rolebindings"): "RoleBinding",
    ("networking.k8s.io", "v1", "networkpolicies"): "NetworkPolicy",
    ("jobset.x-k8s.io", "v1alpha2", "jobsets"): "JobSet",
    ("kubeflow.org", "v1", "pytorchjobs"): "PyTorchJob",
    ("trainer.kubeflow.org", "v1alpha1", "trainjobs"): "TrainJob",
    ("ray.io", "v1", "rayjobs"): "RayJob",
    # what preflight reads (launchers/hydra_plugins/kubernetes_launcher/_preflight.py)
    ("", "v1", "secrets"): "Secret",
    ("", "v1", "persistentvolumeclaims"): "PersistentVolumeClaim",
    ("kueue.x-k8s.io", "v1beta2", "localqueues"): "LocalQueue",
    ("trainer.kubeflow.org", "v1alpha1", "trainingruntimes"): "TrainingRuntime",
}
CRDS = {"jobsets", "pytorchjobs", "trainjobs", "rayjobs"}
PLURALS = {
    "Job": "jobs",
    "JobSet": "jobsets",
    "PyTorchJob": "pytorchjobs",
    "TrainJob": "trainjobs",
    "RayJob": "rayjobs",
}
# Cluster-scoped resources (get/list; objects kept under namespace ""), and SelfSubjectAccessReview.
CLUSTER_RESOURCES: dict[tuple[str, str, str], str] = {
    ("", "v1", "nodes"): "Node",
    ("trainer.kubeflow.org", "v1alpha1", "clustertrainingruntimes"): "ClusterTrainingRuntime",
    ("kueue.x-k8s.io", "v1beta2", "clusterqueues"): "ClusterQueue",
}
_CLUSTER_PATH = re.compile(
    r"^/(?:api/(?P<cv>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?$"
)
SSAR_PATH = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
_PATH = re.compile(
    r"^/(?:api/(?P<cv>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))/namespaces/(?P<ns>[^/]+)"
    r"(?:/(?P<plural>[^/]+)(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?)?$"
)


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def status_body(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> Obj:
    body: Obj = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
    }
    body.update({"reason": reason, "code": code})
    if details is not None:
        body["details"] = details
    return body


REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 409: "AlreadyExists"}
REASONS.update({422: "Invalid", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"})


@dataclass
class Fault:
    method: str
    path: re.Pattern[str]
    status: int = 500  # 0: no error, only the delay (the request is then served normally)
    times: int = 1  # how many matching requests it hits; -1: all
    message: str | None = None
    details: dict[str, Any] | None = None
    delay: float = 0.0  # seconds to stall before answering (timeouts)
    drop: bool = False  # close the connection without an answer

    def body(self, path: str) -> Obj:
        msg = self.message or f"injected {self.status} for {path}"
        return status_body(self.status, REASONS.get(self.status, "Unknown"), msg, self.details)


def selector_match(labels: dict[str, str], selector: str | None) -> bool:
    for term in filter(None, (selector or "").split(",")):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k) == v:
                return False
        elif "=" in term:
            k, v = term.split("=", 1)
            if labels.get(k) != v.lstrip("="):
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def field_match(obj: Obj, selector: str | None) -> bool:
    for term in filter(None, (selector or "").split(",")):
        path, _, want = term.partition("=")
        node: Any = obj
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if str(node) != want:
            return False
    return True


class FakeKube:
    """State, fault injection and the HTTP server. Thread-safe; every change wakes the watchers."""

    def __init__(self, namespaces: tuple[str, ...] = ("default",), crds: set[str] | None = None) -> None:
        self.namespaces = set(namespaces)
        self.crds = CRDS if crds is None else crds
        self.objects: dict[tuple[str, str, str], Obj] = {}  # (plural, ns, name)
        self.history: list[tuple[int, str, str, Obj]] = []  # (rv, type, plural, object)
        self.rv = 100
        self.cond = threading.Condition()
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str]] = []
        self.logs: dict[tuple[str, str], list[str]] = {}
        self.logs_done: set[tuple[str, str]] = set()
        self.on_create: list[Callable[[FakeKube, Obj], None]] = []
        self.forbidden: set[tuple[str, str, str]] = (
            set()
        )  # (verb, group, resource) SSAR answers "not allowed"
        self.stopping = False
        self._server: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------------------------- lifecycle
    def start(self) -> FakeKube:
        # Each namespace as dockerfiles/chart sets it up: the outputs PVC that launcher.run_dir_pvc names by
        # default (preflight checks it exists). Tests about a missing PVC delete it.
        for ns in sorted(self.namespaces):
            if ("persistentvolumeclaims", ns, "framework-outputs") not in self.objects:
                self.put(
                    "persistentvolumeclaims",
                    {
                        "apiVersion": "v1",
                        "kind": "PersistentVolumeClaim",
                        "metadata": {"name": "framework-outputs", "namespace": ns},
                        "spec": {"accessModes": ["ReadWriteMany"]},
                        "status": {"phase": "Bound"},
                    },
                )
        kube = self

        class Handler(_Handler):
            pass

        Handler.kube = kube
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True, name="fake-kube"
        ).start()
        return self

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> FakeKube:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                    "users": [{"name": "fake", "user": {"token": "fake-token"}}],
                    "contexts": [
                        {
                            "name": "fake",
                            "context": {"cluster": "fake", "user": "fake", "namespace": namespace},
                        }
                    ],
                    "current-context": "fake",
                }
            )
        )
        return path

    def api_client(self) -> Any:
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.url
        cfg.retries = 0
        return client.ApiClient(cfg)

    # ---------------------------------------------------------------------------------------- faults
    def fail(self, method: str, path: str, status: int = 500, **kw: Any) -> Fault:
        fault = Fault(method.upper(), re.compile(path), status, **kw)
        with self.cond:
            self.faults.append(fault)
        return fault

    def _fault_for(self, method: str, path: str) -> Fault | None:
        with self.cond:
            for f in self.faults:
                if f.method in (method, "*") and f.path.search(path) and f.times != 0:
                    f.times -= 1 if f.times > 0 else 0
                    return f
        return None

    # ----------------------------------------------------------------------------------------- state
    def _emit(self, kind: str, plural: str, obj: Obj) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.history.append((self.rv, kind, plural, json.loads(json.dumps(obj))))
        self.cond.notify_all()

    def put(self, plural: str, obj: Obj) -> Obj:
        """Create or replace an object directly (as a controller would), waking the watchers."""
        meta = obj.setdefault("metadata", {})
        key = (plural, meta.get("namespace", "default"), meta["name"])
        with self.cond:
            old = self.objects.get(key)
            meta.setdefault("uid", old["metadata"]["uid"] if old else str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", old["metadata"]["creationTimestamp"] if old else now())
            self.objects[key] = obj
            self._emit("MODIFIED" if old else "ADDED", plural, obj)
        return obj

    def get(self, plural: str, ns: str, name: str) -> Obj | None:
        with self.cond:
            obj = self.objects.get((plural, ns, name))
            return json.loads(json.dumps(obj)) if obj else None

    def names(self, plural: str, ns: str = "default") -> list[str]:
        with self.cond:
            return sorted(n for (p, s, n) in self.objects if p == plural and s == ns)

    def update(self, plural: str, ns: str, name: str, fn: Callable[[Obj], None]) -> None:
        with self.cond:
            obj = self.objects.get((plural, ns, name))
            if obj is None:
                return
            fn(obj)
            self._emit("MODIFIED", plural, obj)

    def delete(self, plural: str, ns: str, name: str) -> bool:
        with self.cond:
            obj = self.objects.pop((plural, ns, name), None)
            if obj is None:
                return False
            self._emit("DELETED", plural, obj)
            uid = obj["metadata"]["uid"]
            # Garbage collection: dependents whose ownerReferences name the deleted object go too.
            for p, s, n in [
                k
                for k, o in self.objects.items()
                if any(r.get("uid") == uid for r in o["metadata"].get("ownerReferences") or [])
            ]:
                self.delete(p, s, n)
            return True

    def log(self, ns: str, pod: str, *lines: str, done: bool = False) -> None:
        with self.cond:
            self.logs.setdefault((ns, pod), []).extend(lines)
            if done:
                self.logs_done.add((ns, pod))
            self.cond.notify_all()

    def event(self, ns: str, involved: str, reason: str, message: str, type_: str = "Warning") -> None:
        name = f"{involved}.{uuid.uuid4().hex[:8]}"
        self.put(
            "events",
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": name, "namespace": ns},
                "involvedObject": {"name": involved, "namespace": ns},
                "reason": reason,
                "message": message,
                "type": type_,
                "lastTimestamp": now().split(".")[0] + "Z",
            },
        )


class _Handler(BaseHTTPRequestHandler):
    kube: FakeKube
    protocol_version = "HTTP/1.1"  # keep-alive and chunked streams, like the API server
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK stalls

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet
        pass

    # ------------------------------------------------------------------------------------------ plumbing
    def _send(self, code: int, body: Any, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, code: int, message: str, details: dict[str, Any] | None = None) -> None:
        self._send(code, status_body(code, REASONS.get(code, "Unknown"), message, details))

    def _start_stream(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _read_body(self) -> Any:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        return json.loads(raw) if raw else None

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    # ------------------------------------------------------------------------------------------ routing
    def _handle(self, method: str) -> None:
        kube = self.kube
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        body = self._read_body() if method in ("POST", "PUT", "PATCH", "DELETE") else None
        with kube.cond:
            kube.requests.append((method, url.path))
        fault = kube._fault_for(method, url.path)
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            if fault.drop:
                self.close_connection = True
                self.connection.shutdown(2)
                return
            if fault.status:
                self._send(fault.status, fault.body(url.path))
                return
        try:
            self._route(method, url.path, query, body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _route(self, method: str, path: str, query: dict[str, str], body: Any) -> None:
        kube = self.kube
        if path == "/version":
            self._send(200, {"major": "1", "minor": "33", "gitVersion": "v1.33.0-fake"})
            return
        if path == SSAR_PATH and method == "POST":
            attrs = (body or {}).get("spec", {}).get("resourceAttributes", {})
            resource = attrs.get("resource", "") + (
                f"/{attrs['subresource']}" if attrs.get("subresource") else ""
            )
            allowed = (attrs.get("verb"), attrs.get("group", ""), resource) not in kube.forbidden
            self._send(201, {**body, "status": {"allowed": allowed}})
            return
        c = _CLUSTER_PATH.match(path)
        if c and c["plural"] != "namespaces":
            group, version = ("", "v1") if c["cv"] else (c["group"], c["version"])
            ckind = CLUSTER_RESOURCES.get((group, version, c["plural"]))
            if ckind is None or method != "GET":
                self._error(404, "the server could not find the requested resource")
            elif c["name"] is None:
                with kube.cond:
                    items = [
                        json.loads(json.dumps(o))
                        for (p, ns, _), o in sorted(kube.objects.items())
                        if p == c["plural"] and ns == ""
                    ]
                self._send(
                    200,
                    {"kind": f"{ckind}List", "metadata": {"resourceVersion": str(kube.rv)}, "items": items},
                )
            else:
                obj = kube.get(c["plural"], "", c["name"])
                if obj is None:
                    self._error(
                        404,
                        f'{c["plural"]} "{c["name"]}" not found',
                        {"name": c["name"], "kind": c["plural"]},
                    )
                else:
                    self._send(200, obj)
            return
        m = _PATH.match(path)
        if not m:
            self._error(404, "the server could not find the requested resource", None)
            return
        group, version = ("", "v1") if m["cv"] else (m["group"], m["version"])
        ns, plural, name, sub = m["ns"], m["plural"], m["name"], m["sub"]
        if plural is None:  # GET namespace
            if ns in kube.namespaces:
                self._send(200, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
            else:
                self._error(404, f'namespaces "{ns}" not found', {"name": ns, "kind": "namespaces"})
            return
        kind = RESOURCES.get((group, version, plural))
        if kind is None or (plural in CRDS and plural not in kube.crds):
            self._error(404, "the server could not find the requested resource")
            return
        if ns not in kube.namespaces:
            self._error(404, f'namespaces "{ns}" not found', {"name": ns, "kind": "namespaces"})
            return
        resource = f"{plural}.{group}" if group else plural
        if sub == "log" and method == "GET":
            self._logs(ns, name, query)
        elif name is None and method == "GET":
            if query.get("watch") in ("true", "1"):
                self._watch(plural, ns, query)
            else:
                self._list(kind, group, version, plural, ns, query)
        elif name is None and method == "POST":
            self._create(kind, group, version, plural, ns, body)
        elif method == "GET":
            obj = kube.get(plural, ns, name)
            if obj is None:
                self._error(
                    404, f'{resource} "{name}" not found', {"name": name, "group": group, "kind": plural}
                )
            else:
                self._send(200, obj)
        elif method == "DELETE":
            if kube.delete(plural, ns, name):
                self._send(
                    200,
                    {"kind": "Status", "apiVersion": "v1", "status": "Success", "details": {"name": name}},
                )
            else:
                self._error(
                    404, f'{resource} "{name}" not found', {"name": name, "group": group, "kind": plural}
                )
        elif method == "PATCH":  # JSON merge patch (RFC 7386), what the client sends
            if self.headers.get("Content-Type") != "application/merge-patch+json":
                self._error(415, f"unsupported patch type {self.headers.get('Content-Type')}")
            elif kube.get(plural, ns, name) is None:
                self._error(
                    404, f'{resource} "{name}" not found', {"name": name, "group": group, "kind": plural}
                )
            else:
                kube.update(plural, ns, name, lambda o: _merge_patch(o, body))
                self._send(200, kube.get(plural, ns, name))
        else:
            self._error(405, f"{method} is not supported by the fake API server")

    # -------------------------------------------------------------------------------------------- verbs
    def _create(self, kind: str, group: str, version: str, plural: str, ns: str, body: Any) -> None:
        kube = self.kube
        if not isinstance(body, dict) or body.get("kind") != kind:
            self._error(400, f"expected a {kind} object")
            return
        meta = body.setdefault("metadata", {})
        meta.setdefault("namespace", ns)
        name = meta.get("name")
        resource = f"{plural}.{group}" if group else plural
        with kube.cond:
            if (plural, ns, name) in kube.objects:
                self._error(
                    409, f'{resource} "{name}" already exists', {"name": name, "group": group, "kind": plural}
                )
                return
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=now().split(".")[0] + "Z", generation=1)
            body.setdefault("status", {})
            kube.objects[(plural, ns, name)] = body
            kube._emit("ADDED", plural, body)
            created = json.loads(json.dumps(body))
        self._send(201, created)
        for hook in list(kube.on_create):
            hook(kube, created)

    def _list(self, kind: str, group: str, version: str, plural: str, ns: str, query: dict[str, str]) -> None:
        kube = self.kube
        with kube.cond:
            items = [
                json.loads(json.dumps(o))
                for (p, s, _), o in sorted(kube.objects.items())
                if p == plural
                and s == ns
                and selector_match(o["metadata"].get("labels") or {}, query.get("labelSelector"))
                and field_match(o, query.get("fieldSelector"))
            ]
            rv = str(kube.rv)
        api_version = f"{group}/{version}" if group else version
        self._send(
            200,
            {
                "apiVersion": api_version,
                "kind": f"{kind}List",
                "metadata": {"resourceVersion": rv},
                "items": items,
            },
        )

    def _watch(self, plural: str, ns: str, query: dict[str, str]) -> None:
        kube = self.kube
        deadline = time.monotonic() + float(query.get("timeoutSeconds") or 30)
        labels, fields = query.get("labelSelector"), query.get("fieldSelector")

        def matches(obj: Obj) -> bool:
            meta = obj["metadata"]
            return (
                meta.get("namespace") == ns
                and selector_match(meta.get("labels") or {}, labels)
                and field_match(obj, fields)
            )

        self._start_stream("application/json")
        with kube.cond:
            if query.get("resourceVersion"):
                since = int(query["resourceVersion"])
                pending: list[tuple[str, Obj]] = []
            else:  # no resourceVersion: the current state first, as ADDED events
                since = kube.rv
                pending = [
                    ("ADDED", json.loads(json.dumps(o)))
                    for (p, _, _), o in sorted(kube.objects.items())
                    if p == plural and matches(o)
                ]
        for type_, obj in pending:
            self._chunk(json.dumps({"type": type_, "object": obj}).encode() + b"\n")
        while True:
            with kube.cond:
                news = [
                    (rv, t, o) for rv, t, p, o in kube.history if rv > since and p == plural and matches(o)
                ]
                if not news:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or kube.stopping:
                        break
                    kube.cond.wait(min(remaining, 0.5))
                    continue
            for rv, type_, obj in news:
                since = max(since, rv)
                self._chunk(json.dumps({"type": type_, "object": obj}).encode() + b"\n")
        self._end_stream()

    def _logs(self, ns: str, name: str, query: dict[str, str]) -> None:
        kube = self.kube
        pod = kube.get("pods", ns, name)
        if pod is None:
            self._error(404, f'pods "{name}" not found', {"name": name, "kind": "pods"})
            return
        key = (ns, name)
        with kube.cond:
            started = key in kube.logs or key in kube.logs_done
        if not started:
            self._error(400, f'container "trainer" in pod "{name}" is waiting to start: ContainerCreating')
            return
        if query.get("follow") not in ("true", "1"):
            with kube.cond:
                text = "".join(line + "\n" for line in kube.logs.get(key, []))
            self._send(200, text.encode(), "text/plain")
            return
        self._start_stream("text/plain")
        sent = 0
        deadline = time.monotonic() + 60
        while True:
            with kube.cond:
                lines = kube.logs.get(key, [])[sent:]
                done = key in kube.logs_done
                if not lines and not done:
                    if kube.stopping or time.monotonic() > deadline:
                        break
                    kube.cond.wait(0.5)
                    continue
            if lines:
                sent += len(lines)
                self._chunk("".join(line + "\n" for line in lines).encode())
            if done and not lines:
                break
        self._end_stream()


# ------------------------------------------------------------------------------------------- controllers
def _pod_templates(obj: Obj) -> list[tuple[str, int, Obj]]:
    """(replica type, count, template) of a Job, JobSet or PyTorchJob."""
    if obj["kind"] == "TrainJob":  # Trainer v2 compiles it with its runtime into a JobSet
        from tests.k8s.trainer import compile_trainjob

        obj = compile_trainjob(obj)
    spec = obj["spec"]
    if obj["kind"] == "RayJob":  # KubeRay: the submitter Job's pod (the job's log) first, then the Ray nodes
        cluster = spec["rayClusterSpec"]
        return [
            ("submitter", 1, spec["submitterPodTemplate"]),
            ("head", 1, cluster["headGroupSpec"]["template"]),
            *(("worker", int(g["replicas"]), g["template"]) for g in cluster["workerGroupSpecs"]),
        ]
    if obj["kind"] == "Job":
        return [("", int(spec["completions"]), spec["template"])]
    if obj["kind"] == "JobSet":
        rj = spec["replicatedJobs"][0]
        return [("", int(rj["template"]["spec"]["completions"]), rj["template"]["spec"]["template"])]
    return [(r.lower(), int(s["replicas"]), s["template"]) for r, s in spec["pytorchReplicaSpecs"].items()]


def make_pods(kube: FakeKube, job: Obj, attempt: int = 0) -> list[str]:
    """Create the job's pods the way its controller would (labels, completion index, owner reference)."""
    name, ns = job["metadata"]["name"], job["metadata"]["namespace"]
    names = []
    for rtype, count, template in _pod_templates(job):
        for i in range(count):
            labels = dict(template["metadata"].get("labels") or {})
            annotations = dict(template["metadata"].get("annotations") or {})
            if job["kind"] == "RayJob":
                pod_name = f"{name}-{rtype}-{i}-{attempt}x{uuid.uuid4().hex[:4]}"
                if rtype == "submitter":
                    labels["batch.kubernetes.io/job-name"] = name
                else:
                    labels["ray.io/node-type"] = rtype
            elif job["kind"] == "PyTorchJob":
                pod_name = f"{name}-{rtype}-{i}"
                labels.update(
                    {
                        "training.kubeflow.org/replica-type": rtype,
                        "training.kubeflow.org/replica-index": str(i),
                    }
                )
            else:
                prefix = f"{name}-node-0" if job["kind"] in ("JobSet", "TrainJob") else name
                pod_name = f"{prefix}-{i}-{attempt}x{uuid.uuid4().hex[:4]}"
                annotations["batch.kubernetes.io/job-completion-index"] = str(i)
                labels.update(
                    {"batch.kubernetes.io/job-name": name, "batch.kubernetes.io/job-completion-index": str(i)}
                )
            kube.put(
                "pods",
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "name": pod_name,
                        "namespace": ns,
                        "labels": labels,
                        "annotations": annotations,
                        "ownerReferences": [
                            {
                                "apiVersion": job["apiVersion"],
                                "kind": job["kind"],
                                "name": name,
                                "uid": job["metadata"]["uid"],
                            }
                        ],
                    },
                    "spec": template["spec"],
                    "status": {"phase": "Pending"},
                },
            )
            names.append(pod_name)
    return names


def _merge_patch(target: Obj, patch: Any) -> None:
    for key, value in (patch or {}).items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge_patch(target[key], value)
        else:
            target[key] = value


def set_pods(kube: FakeKube, ns: str, pods: list[str], status: Obj) -> None:
    for p in pods:
        kube.update("pods", ns, p, lambda o: o.__setitem__("status", json.loads(json.dumps(status))))


def finish_job(kube: FakeKube, job: Obj, ok: bool, reason: str = "", message: str = "") -> None:
    kind = job["kind"]
    plural = PLURALS[kind]
    if kind == "RayJob":  # KubeRay reports in status fields, not conditions
        ray_status = {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED" if ok else "FAILED"}
        ray_status.update({"reason": reason, "message": message} if not ok else {})
        kube.update(
            plural,
            job["metadata"]["namespace"],
            job["metadata"]["name"],
            lambda o: o.setdefault("status", {}).update(ray_status),
        )
        return
    ctype = {
        "Job": ("Complete", "Failed"),
        "JobSet": ("Completed", "Failed"),
        "PyTorchJob": ("Succeeded", "Failed"),
        "TrainJob": ("Complete", "Failed"),
    }[kind][0 if ok else 1]
    cond = {
        "type": ctype,
        "status": "True",
        "reason": reason or ("Completed" if ok else "BackoffLimitExceeded"),
        "message": message,
    }

    def apply(o: Obj) -> None:
        o.setdefault("status", {})["conditions"] = [cond]
        if kind == "Job":
            o["status"]["active"] = 0
            o["status"]["succeeded" if ok else "failed"] = len(_pod_templates(o))

    kube.update(plural, job["metadata"]["namespace"], job["metadata"]["name"], apply)


def simulate(
    outcome: str = "succeed",
    *,
    pending: str | None = None,
    log_lines: tuple[str, ...] = ("step 1 loss 2.0", "step 2 loss 1.5", "done"),
    step_s: float = 0.05,
    hold: threading.Event | None = None,
) -> Callable[[FakeKube, Obj], None]:
    """An on_create hook playing the job controller for every created Job/JobSet/PyTorchJob.

    outcome: succeed | fail (exit 1, backoff exhausted) | fail_permanent (exit 2, podFailurePolicy).
    pending: None | "Unschedulable" | "ImagePullBackOff" | "CreateContainerConfigError": shown first, then cleared.
    hold: when given, the pods stay Running until it is set (to test cancel and Ctrl-C).
    """

    def hook(kube: FakeKube, obj: Obj) -> None:
        if obj.get("kind") not in PLURALS:
            return
        threading.Thread(target=run, args=(kube, obj), daemon=True).start()

    def run(kube: FakeKube, job: Obj) -> None:
        ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
        plural = PLURALS[job["kind"]]

        def alive() -> Obj | None:
            return kube.get(plural, ns, name)

        time.sleep(step_s)
        pods = make_pods(kube, job)
        time.sleep(step_s)
        if pending == "Unschedulable":
            set_pods(
                kube,
                ns,
                pods,
                {
                    "phase": "Pending",
                    "conditions": [
                        {
                            "type": "PodScheduled",
                            "status": "False",
                            "reason": "Unschedulable",
                            "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                        }
                    ],
                },
            )
        elif pending:
            messages = {
                "ImagePullBackOff": 'Back-off pulling image "ghcr.io/example/framework:latest"',
                "CreateContainerConfigError": 'secret "hf-token" not found',
            }
            set_pods(
                kube,
                ns,
                pods,
                {
                    "phase": "Pending",
                    "containerStatuses": [
                        {
                            "name": "trainer",
                            "ready": False,
                            "state": {"waiting": {"reason": pending, "message": messages.get(pending, "")}},
                        }
                    ],
                },
            )
        if pending:
            time.sleep(step_s * 4)
        running = {
            "phase": "Running",
            "containerStatuses": [
                {"name": "trainer", "ready": True, "state": {"running": {"startedAt": now()}}}
            ],
        }
        set_pods(kube, ns, pods, running)
        if job["kind"] == "Job":
            kube.update("jobs", ns, name, lambda o: o.setdefault("status", {}).update(active=len(pods)))
        rank0 = pods[0]
        for line in log_lines:
            kube.log(ns, rank0, line)
            time.sleep(step_s / 2)
        if hold is not None:
            while not hold.is_set() and alive() is not None:
                time.sleep(step_s)
        if alive() is None:  # cancelled
            kube.log(ns, rank0, done=True)
            return
        code = {"succeed": 0, "fail": 1, "fail_permanent": 2}[outcome]
        state = {
            "terminated": {
                "exitCode": code,
                "reason": "Completed" if code == 0 else "Error",
                "message": "Traceback ...\nRuntimeError: boom" if code else "",
            }
        }
        kube.log(ns, rank0, done=True)
        set_pods(
            kube,
            ns,
            pods,
            {
                "phase": "Succeeded" if code == 0 else "Failed",
                "containerStatuses": [{"name": "trainer", "ready": False, "state": state}],
            },
        )
        time.sleep(step_s)
        if code == 0:
            finish_job(kube, job, True)
        elif code == 2:
            finish_job(
                kube,
                job,
                False,
                "PodFailurePolicy",
                f"Container trainer for pod {ns}/{rank0} failed with exit code 2 matching FailJob rule at index 0",
            )
        else:
            finish_job(
                kube, job, False, "BackoffLimitExceeded", "Job has reached the specified backoff limit"
            )

    return hook
