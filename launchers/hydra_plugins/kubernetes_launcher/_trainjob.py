"""``launcher.backend=trainjob``: a Kubeflow Trainer v2 TrainJob (``trainer.kubeflow.org/v1alpha1``).

The TrainJob references a (Cluster)TrainingRuntime and carries what differs per job; Trainer compiles both into
a JobSet named after the TrainJob (replicated job ``node``, container ``node``), so pods, hostnames and the node
rank are the JobSet backend's: ``<job>-node-0-<rank>.<job>``, NODE_RANK from the completion-index annotation.

    runtime (launcher.runtime)      the chart's ``framework-torch`` (dockerfiles/chart, trainingRuntime.*): the
                                    failure semantics of every backend (exit 2 fails at once, 143 and
                                    disruptions are free, other failures restart the gang up to maxRestarts),
                                    the restricted pod profile, workingDir /tmp, the metrics port.
                                    Or the stock ``torch-distributed``: same ``node`` names, but no exit-code
                                    rules (any failure fails the job) and its own pod defaults.
    trainer                         image, command, args, env, numNodes, numProcPerNode, resourcesPerNode.
    runtimePatches                  the pod profile (securityContext, volumes and mounts, node selector,
                                    tolerations, pull secrets, service account, grace period) and the pods'
                                    labels and annotations, as one patch owned by ``framework.io/launcher``
                                    (the v2.2+ field; ``podTemplateOverrides`` is gone).

A TrainJob has no ``envFrom``: the S3 Secret (launcher.s3_secret) becomes one secretKeyRef per AWS variable
(optional ones marked optional), and launcher.env_from_secrets is refused for this backend (name the keys in
launcher.secret_env). Pure: no I/O.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

GROUP, VERSION, KIND, PLURAL = "trainer.kubeflow.org", "v1alpha1", "TrainJob", "trainjobs"
REPLICATED_JOB = "node"  # the runtime's replicated job and container (the stock torch-distributed names)
CONTAINER = "node"
PATCH_MANAGER = "framework.io/launcher"
RUNTIME_KINDS = ("ClusterTrainingRuntime", "TrainingRuntime")
# What runtimePatches may set on a pod (and on its containers), per the TrainJob CRD.
PATCHABLE_POD = (
    "affinity",
    "imagePullSecrets",
    "nodeSelector",
    "schedulingGates",
    "securityContext",
    "serviceAccountName",
    "terminationGracePeriodSeconds",
    "tolerations",
    "volumes",
)
PATCHABLE_CONTAINER = ("name", "env", "securityContext", "volumeMounts")
# launcher.s3_secret as explicit references: the keys the chart's README creates (required first).
S3_KEYS = (
    ("AWS_ACCESS_KEY_ID", False),
    ("AWS_SECRET_ACCESS_KEY", False),
    ("AWS_ENDPOINT_URL", True),
    ("AWS_SESSION_TOKEN", True),
    ("AWS_DEFAULT_REGION", True),
)


def _env_from_as_env(env_from: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for source in env_from:
        name = source["secretRef"]["name"]
        for key, optional in S3_KEYS:
            ref: dict[str, Any] = {"name": name, "key": key}
            if optional:
                ref["optional"] = True
            out.append({"name": key, "valueFrom": {"secretKeyRef": ref}})
    return out


def job_spec(parts: Any) -> dict[str, Any]:
    """The TrainJob spec from the launcher's pod template (the one every backend renders)."""
    cfg, template = parts.cfg, parts.template
    launcher, hw = cfg.launcher, cfg.hardware
    pod = template["spec"]
    container = pod["containers"][0]
    env = list(container.get("env") or []) + _env_from_as_env(container.get("envFrom") or [])
    trainer = {
        "image": container["image"],
        "command": list(container["command"]),
        "args": list(container["args"]),
        "env": env,
        "numNodes": int(hw.nodes),
        "numProcPerNode": int(hw.nproc_per_node),
        "resourcesPerNode": copy.deepcopy(container["resources"]),
    }
    patch_pod = {k: copy.deepcopy(pod[k]) for k in PATCHABLE_POD if k in pod}
    patch_pod["containers"] = [
        {
            "name": CONTAINER,
            "securityContext": copy.deepcopy(container["securityContext"]),
            "volumeMounts": copy.deepcopy(container["volumeMounts"]),
        }
    ]
    runtime_kind = str(getattr(launcher, "runtime_kind", RUNTIME_KINDS[0]))
    spec: dict[str, Any] = {
        "runtimeRef": {"apiGroup": GROUP, "kind": runtime_kind, "name": str(launcher.runtime)},
        "trainer": trainer,
        "runtimePatches": [
            {
                "manager": PATCH_MANAGER,
                "trainingRuntimeSpec": {
                    "template": {
                        "spec": {
                            "replicatedJobs": [
                                {
                                    "name": REPLICATED_JOB,
                                    "template": {
                                        "metadata": {"labels": dict(parts.labels)},
                                        "spec": {
                                            "template": {
                                                "metadata": copy.deepcopy(template["metadata"]),
                                                "spec": patch_pod,
                                            }
                                        },
                                    },
                                }
                            ]
                        }
                    }
                },
            }
        ],
    }
    if launcher.active_deadline_s:
        spec["activeDeadlineSeconds"] = int(launcher.active_deadline_s)
    return spec


def _patch_template(spec: Mapping[str, Any]) -> dict[str, Any]:
    for patch in spec.get("runtimePatches") or []:
        if patch.get("manager") == PATCH_MANAGER:
            (rj,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
            return rj["template"]["spec"]["template"]  # type: ignore[no-any-return]
    raise KeyError(f"no runtimePatches entry of {PATCH_MANAGER}")


def pod_templates(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The pod as this TrainJob specifies it: the patched pod with the trainer's container fields merged in.

    The runtime adds the rest (restartPolicy, workingDir, ports...: tests/k8s/trainer.py compiles both). The
    metadata is the TrainJob's own dict (labels or annotations set on it land in the TrainJob, as with the
    other kinds); spec and container are a merged copy, so the TrainJob keeps only patchable fields.
    """
    template = _patch_template(spec)
    trainer = spec["trainer"]
    container = {
        **template["spec"]["containers"][0],
        **{k: trainer[k] for k in ("image", "command", "args", "env") if k in trainer},
        "resources": trainer.get("resourcesPerNode") or {},
    }
    return [{"metadata": template["metadata"], "spec": {**template["spec"], "containers": [container]}}]


def phase(
    conds: Mapping[str, dict[str, Any]], status: Mapping[str, Any]
) -> tuple[str, dict[str, Any] | None]:
    """TrainJob conditions: Complete, Failed, Suspended (Created is set at once); jobsStatus while running."""
    if "Complete" in conds:
        return "Succeeded", conds["Complete"]
    if "Failed" in conds:
        return "Failed", conds["Failed"]
    if "Suspended" in conds:
        return "Suspended", None
    running = any(int(j.get("active") or 0) > 0 for j in status.get("jobsStatus") or [])
    return ("Running" if running else "Pending"), None


def problems(launcher: Mapping[str, Any]) -> list[str]:
    """What launcher.backend=trainjob cannot express (each with the fix)."""
    if launcher.get("backend") != "trainjob":
        return []
    out = []
    if launcher.get("env_from_secrets"):
        out.append(
            "launcher.env_from_secrets: a TrainJob has no envFrom; name each variable in "
            "launcher.secret_env={VAR: 'secret-name:key'} (launcher.s3_secret is expanded for you)"
        )
    if launcher.get("runtime_kind") not in RUNTIME_KINDS:
        out.append(
            f"launcher.runtime_kind={launcher.get('runtime_kind')!r}; choose {', '.join(RUNTIME_KINDS)}"
        )
    if not launcher.get("runtime"):
        out.append("launcher.runtime is empty: name the (Cluster)TrainingRuntime, e.g. framework-torch")
    extra = ((launcher.get("extra") or {}).get("pod_spec")) or {}
    bad = sorted(set(extra) - set(PATCHABLE_POD))
    if bad:
        out.append(
            f"launcher.extra.pod_spec: {', '.join(bad)} cannot be patched into a TrainJob's pods "
            f"(runtimePatches allows {', '.join(PATCHABLE_POD)}); set it in the TrainingRuntime"
        )
    return out
