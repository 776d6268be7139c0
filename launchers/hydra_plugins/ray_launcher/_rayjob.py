"""``launcher=kubernetes launcher.backend=rayjob``: a KubeRay ``ray.io/v1`` RayJob (one entry of the Kubernetes
launcher's backend table, ``kubernetes_launcher/_backends.py``).

The RayJob creates a Ray cluster for the job: a head group (no GPUs, ``num-cpus: 0`` so no training lands on
it) and one worker group of ``hardware.nodes`` pods with the hardware profile's GPUs, CPU, memory, /dev/shm, node
selector and tolerations. Its pods are the launcher's pod (same image, env, Secret references, labels, PVCs,
ConfigMap, restricted profile with Ray's writable paths on emptyDirs: /tmp for /tmp/ray, /cache for HOME, the
/dev/shm memory emptyDir for the object store), minus the torchrun command and rendezvous env (KubeRay starts
``ray start``; Ray Train sets the rendezvous). KubeRay's submitter Job (``submissionMode: K8sJobMode``) runs
``ray job submit -- <entrypoint>`` with the entrypoint

    python -m framework --config-path=/etc/framework --config-name=config hydra.mode=RUN hydra.run.dir=<run dir>
        hydra.output_subdir=null launcher.name=ray launcher.address=auto launcher.max_failures=<backoff_limit>

i.e. ``launcher=ray`` on the cluster's own address: the job's driver on the head reads the ConfigMap's resolved
config and starts the Ray Train TorchTrainer (``_train.py``). (The ConfigMap holds a resolved config without a
defaults list, so the choice is made by its keys: ``launcher.name=ray``.)

Retries: ``backoffLimit: 0``. KubeRay retries a Failed RayJob with a new cluster whatever the entrypoint exited
(only DeadlineExceeded is exempt: ``checkBackoffLimitAndUpdateStatusIfNeeded`` in KubeRay v1.7's
rayjob_controller.go), so a bad config (exit 2) would be retried ``backoffLimit`` times. The restart budget
``launcher.backoff_limit`` is spent inside the one cluster instead: the entrypoint passes it to Ray Train as
``launcher.max_failures`` (``_train.py``: exit 2 never retried, SIGTERM free), and KubeRay replaces a lost worker
pod. A lost head pod (the driver) fails the RayJob, not retried.

Clean-up: ``deletionStrategy.deletionRules`` frees the workers (GPUs) the moment the job ends and deletes the
RayJob after ``launcher.ttl_after_finished_s``. KubeRay refuses rules together with ``shutdownAfterJobFinishes``
/ ``ttlSecondsAfterFinished``, and Kueue's RayJob webhook requires ``shutdownAfterJobFinishes: true``; so with
``launcher.queue`` set the RayJob uses ``shutdownAfterJobFinishes`` + ``ttlSecondsAfterFinished`` instead.
Token auth: ``authOptions.mode: token``; with ``launcher.ray_auth_secret`` ("secret:key") every Ray container and
the submitter get ``RAY_AUTH_TOKEN`` by secretKeyRef (never a value). Pure: no I/O, no Ray.
"""

from __future__ import annotations

import copy
import shlex
from collections.abc import Mapping
from typing import Any

from hydra_plugins.kubernetes_launcher._names import effective_pvcs

GROUP, VERSION, KIND, PLURAL = "ray.io", "v1", "RayJob", "rayjobs"
HEAD_CONTAINER, WORKER_CONTAINER, SUBMITTER_CONTAINER = "ray-head", "ray-worker", "ray-job-submitter"
WORKER_GROUP = "node"
NODE_TYPE_LABEL = "ray.io/node-type"  # KubeRay's label on head and worker pods (the submitter has none)
RENDEZVOUS_ENV = ("MASTER_ADDR", "MASTER_PORT", "NNODES", "NODE_RANK", "NPROC_PER_NODE")
CONFIG_VOLUME = "config"
# The longest a pod or Service name adds to the RayJob's name: the RayCluster <job>-<5> and its worker pods
# <cluster>-<group>-worker-<5> (the head's Service <cluster>-head-svc is shorter).
HOST_SUFFIX = f"-xxxxx-{WORKER_GROUP}-worker-xxxxx"


def _split_ref(ref: str) -> tuple[str, str] | None:
    name, sep, key = str(ref).partition(":")
    return (name, key) if sep and name and key else None


def entrypoint(cfg: Any, name: str, config_dir: str = "/etc/framework") -> str:
    """The command KubeRay's submitter hands to ``ray job submit``: the framework with launcher=ray, here."""
    hydra_dir = f"{str(cfg.launcher.run_dir).rstrip('/')}/{name}"  # the run dir unless storage.output_uri
    parts = [
        str(cfg.launcher.ray_python), "-m", "framework", f"--config-path={config_dir}", "--config-name=config",
        "hydra.mode=RUN", f"hydra.run.dir={hydra_dir}", "hydra.output_subdir=null",
        "launcher.name=ray", "launcher.address=auto",
        # The restart budget of every Kubernetes backend, spent by Ray Train (the RayJob itself: backoffLimit 0).
        f"launcher.max_failures={int(cfg.launcher.backoff_limit)}",
    ]  # fmt: skip
    if on_pvc(str(cfg.storage.output_uri or hydra_dir), effective_pvcs(cfg.launcher)):
        parts.append("launcher.run_dir_shared=true")  # a PVC mounted in every pod
    return " ".join(shlex.quote(p) for p in parts)


def on_pvc(path: str, pvcs: Mapping[str, Any]) -> bool:
    """True when ``path`` lies on one of the job's PVC mounts (a volume every pod mounts)."""
    path = str(path).rstrip("/")
    mounts = [str(m).rstrip("/") for m in (pvcs or {}).values()]
    return "://" not in path and any(path == m or path.startswith(m + "/") for m in mounts)


def _auth_env(launcher: Any) -> list[dict[str, Any]]:
    ref = _split_ref(launcher.ray_auth_secret) if getattr(launcher, "ray_auth_secret", None) else None
    if ref is None:
        return []
    return [
        {"name": "RAY_AUTH_MODE", "value": "token"},
        {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {"name": ref[0], "key": ref[1]}}},
    ]


def _ray_pod(
    template: dict[str, Any],
    container_name: str,
    resources: dict[str, Any] | None,
    *,
    with_config: bool,
    keep_placement: bool,
    auth: list[dict[str, Any]],
) -> dict[str, Any]:
    """The launcher's pod template as a Ray node: KubeRay supplies the command (ray start) and the ports."""
    pod = copy.deepcopy(template)
    spec = pod["spec"]
    c = spec["containers"][0]
    c["name"] = container_name
    for key in ("command", "args", "ports"):
        c.pop(key, None)
    c["env"] = [e for e in c.get("env") or [] if e["name"] not in RENDEZVOUS_ENV] + copy.deepcopy(auth)
    grace = spec.get("terminationGracePeriodSeconds")
    if grace is not None:
        # On the pod's SIGTERM, `ray start` (PID 1: bash -c execs KubeRay's last command) marks its node draining
        # for this long (Ray's default: 30 s); Ray Train's preemption watcher tells the workers, which checkpoint
        # the current step (ray_launcher._train). The margin leaves Ray's own teardown before the SIGKILL.
        from hydra_plugins.kubernetes_launcher._render import GRACE_MARGIN_S

        drain = {
            "name": "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S",
            "value": str(max(int(grace) - GRACE_MARGIN_S, 1)),
        }
        c["env"] = [e for e in c["env"] if e["name"] != drain["name"]] + [drain]
    if resources is not None:
        c["resources"] = resources
    if not with_config:
        c["volumeMounts"] = [m for m in c["volumeMounts"] if m["name"] != CONFIG_VOLUME]
        spec["volumes"] = [v for v in spec["volumes"] if v["name"] != CONFIG_VOLUME]
    if not keep_placement:  # the head has no GPUs: it needs no GPU node
        spec.pop("nodeSelector", None)
        spec.pop("tolerations", None)
    spec.pop("subdomain", None)
    pod["metadata"].setdefault("annotations", {})["kubectl.kubernetes.io/default-container"] = container_name
    return pod


def _submitter(template: dict[str, Any], auth: list[dict[str, Any]]) -> dict[str, Any]:
    """KubeRay's submitter pod (it adds the ``ray job submit`` command): restricted, small, the token by ref."""
    base = template["spec"]
    c = base["containers"][0]
    container = {
        "name": SUBMITTER_CONTAINER,
        "image": c["image"],
        "imagePullPolicy": c.get("imagePullPolicy", "IfNotPresent"),
        "env": [
            {"name": "PYTHONUNBUFFERED", "value": "1"},
            {"name": "HOME", "value": "/tmp"},
            *copy.deepcopy(auth),
        ],
        "resources": {
            "requests": {"cpu": "500m", "memory": "512Mi"},
            "limits": {"cpu": "500m", "memory": "512Mi"},
        },
        "securityContext": copy.deepcopy(c["securityContext"]),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": copy.deepcopy(base["securityContext"]),
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}],
    }
    if base.get("imagePullSecrets"):
        spec["imagePullSecrets"] = copy.deepcopy(base["imagePullSecrets"])
    meta = copy.deepcopy(template["metadata"])
    meta.setdefault("annotations", {})["kubectl.kubernetes.io/default-container"] = SUBMITTER_CONTAINER
    return {"metadata": meta, "spec": spec}


def _deletion(launcher: Any) -> dict[str, Any]:
    ttl = int(launcher.ttl_after_finished_s)
    rules = []
    for status in ("SUCCEEDED", "FAILED"):
        rules.append({"policy": "DeleteWorkers", "condition": {"jobStatus": status, "ttlSeconds": 0}})
        rules.append({"policy": "DeleteSelf", "condition": {"jobStatus": status, "ttlSeconds": ttl}})
    # A submission that never ran (bad image, unschedulable head) must not hold its pods either.
    rules.append({"policy": "DeleteSelf", "condition": {"jobDeploymentStatus": "Failed", "ttlSeconds": ttl}})
    return {"deletionRules": rules}


def job_spec(parts: Any) -> dict[str, Any]:
    """The RayJob spec from the launcher's pod template (the one every backend renders)."""
    cfg, template = parts.cfg, parts.template
    launcher, hw = cfg.launcher, cfg.hardware
    auth = _auth_env(launcher)
    head_amounts = {"cpu": str(launcher.ray_head_cpu), "memory": str(launcher.ray_head_memory)}
    head = _ray_pod(
        template,
        HEAD_CONTAINER,
        {"requests": head_amounts, "limits": dict(head_amounts)},
        with_config=True,
        keep_placement=False,
        auth=auth,
    )
    worker = _ray_pod(template, WORKER_CONTAINER, None, with_config=False, keep_placement=True, auth=auth)
    nodes = int(hw.nodes)
    auth_options: dict[str, Any] = {"mode": "token"}
    ref = _split_ref(launcher.ray_auth_secret) if getattr(launcher, "ray_auth_secret", None) else None
    if ref is not None:
        auth_options["secretName"] = ref[0]
    spec: dict[str, Any] = {
        "entrypoint": entrypoint(cfg, parts.name),
        "submissionMode": "K8sJobMode",
        # Never KubeRay's retries: they ignore the exit code (exit 2 retried); the budget is Ray Train's (above).
        "backoffLimit": 0,
        "rayClusterSpec": {
            "enableInTreeAutoscaling": False,
            "authOptions": auth_options,
            "headGroupSpec": {
                # No training on the head: the driver and Ray Train's controller need no CPU slot.
                "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
                "template": head,
            },
            "workerGroupSpecs": [
                {
                    "groupName": WORKER_GROUP,
                    "replicas": nodes,
                    "minReplicas": nodes,
                    "maxReplicas": nodes,
                    "rayStartParams": {},
                    "template": worker,
                }
            ],
        },
        "submitterPodTemplate": _submitter(template, auth),
    }
    if launcher.active_deadline_s:
        spec["activeDeadlineSeconds"] = int(launcher.active_deadline_s)
    if getattr(launcher, "queue", None):  # Kueue's RayJob webhook requires shutdownAfterJobFinishes
        spec["shutdownAfterJobFinishes"] = True
        spec["ttlSecondsAfterFinished"] = int(launcher.ttl_after_finished_s)
    else:
        spec["deletionStrategy"] = _deletion(launcher)
    return spec


def pod_templates(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Head first, then the worker group (the submitter is KubeRay's, not a training pod)."""
    cluster = spec["rayClusterSpec"]
    return [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster["workerGroupSpecs"])]


def phase(
    conds: Mapping[str, dict[str, Any]], status: Mapping[str, Any]
) -> tuple[str, dict[str, Any] | None]:
    """Phase from KubeRay's status: jobDeploymentStatus (the RayJob) and jobStatus (the Ray job in it)."""
    deployment, job = str(status.get("jobDeploymentStatus") or ""), str(status.get("jobStatus") or "")
    why = {
        "reason": str(status.get("reason") or job or deployment),
        "message": str(status.get("message") or ""),
    }
    if deployment == "Complete":
        return ("Succeeded", why) if job == "SUCCEEDED" else ("Failed", why)
    if deployment in ("Failed", "ValidationFailed") or job in ("FAILED", "STOPPED"):
        return "Failed", why
    if deployment in ("Suspended", "Suspending"):
        return "Suspended", None
    if deployment == "Running" or job == "RUNNING":
        return "Running", None
    return "Pending", None


def node_rank(pod: dict[str, Any]) -> int | None:
    """The submitter pod carries the job's log (``ray job submit`` follows the driver): it reads as rank 0."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return None if labels.get(NODE_TYPE_LABEL) else 0


def problems(plain: Mapping[str, Any]) -> list[str]:
    """What a RayJob cannot run: a multi-node job's run dir on each pod's own emptyDir, a bad token reference."""
    launcher = plain.get("launcher") or {}
    if launcher.get("backend") != "rayjob":
        return []
    out = []
    ref = launcher.get("ray_auth_secret")
    if ref and _split_ref(ref) is None:
        out.append(
            f"launcher.ray_auth_secret={ref!r} must be 'secret-name:key' (the Secret holding the token)"
        )
    nodes = int((plain.get("hardware") or {}).get("nodes") or 1)
    uri = (plain.get("storage") or {}).get("output_uri")
    path = str(uri or launcher.get("run_dir") or "")
    if nodes > 1 and "://" not in path and not on_pvc(path, effective_pvcs(launcher)):
        out.append(
            f"launcher.backend=rayjob with hardware.nodes={nodes}: the workers of every pod write one run "
            "directory, so it must be shared; set storage=s3 storage.output_uri=s3://bucket/runs/<name>, or mount "
            f"an RWX PVC over launcher.run_dir={launcher.get('run_dir')} with launcher.run_dir_pvc=<claim>"
        )
    return out
