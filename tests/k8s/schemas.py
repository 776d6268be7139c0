"""Validate rendered objects the way a cluster would: official core schemas and the published CRD schemas.

Core kinds: the ``kubernetes-validate`` package (strict: unknown fields are errors). JobSet and PyTorchJob: the
CRDs in ../shared/k8s-crds (``spec.versions[].schema.openAPIV3Schema``) with jsonschema, plus a check for
fields the schema does not know, which a real API server would silently drop.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

K8S_VERSION = "1.33.0"  # a current release; kubernetes-validate ships 1.25 .. 1.37
_ROOT = Path(__file__).resolve().parents[2]
# The shared checkout beside the project (../shared), or beside the worktrees' parent (/work/wt/<name> -> /work).
CRD_DIR = next(
    (
        d
        for d in (_ROOT.parent / "shared" / "k8s-crds", _ROOT.parents[1] / "shared" / "k8s-crds")
        if d.is_dir()
    ),
    _ROOT.parent / "shared" / "k8s-crds",
)
CRD_FILES = {
    ("jobset.x-k8s.io/v1alpha2", "JobSet"): "jobset.x-k8s.io_jobsets.yaml",
    ("kubeflow.org/v1", "PyTorchJob"): "kubeflow.org_pytorchjobs.yaml",
    # the Helm chart (dockerfiles/chart) and the TrainJob backend
    ("trainer.kubeflow.org/v1alpha1", "TrainJob"): "trainer.kubeflow.org_trainjobs.yaml",
    (
        "trainer.kubeflow.org/v1alpha1",
        "ClusterTrainingRuntime",
    ): "trainer.kubeflow.org_clustertrainingruntimes.yaml",
    ("trainer.kubeflow.org/v1alpha1", "TrainingRuntime"): "trainer.kubeflow.org_trainingruntimes.yaml",
    ("kueue.x-k8s.io/v1beta2", "ClusterQueue"): "kueue.x-k8s.io_clusterqueues.yaml",
    ("kueue.x-k8s.io/v1beta2", "LocalQueue"): "kueue.x-k8s.io_localqueues.yaml",
    ("kueue.x-k8s.io/v1beta2", "ResourceFlavor"): "kueue.x-k8s.io_resourceflavors.yaml",
    ("kueue.x-k8s.io/v1beta2", "WorkloadPriorityClass"): "kueue.x-k8s.io_workloadpriorityclasses.yaml",
    ("monitoring.coreos.com/v1", "PodMonitor"): "monitoring.coreos.com_podmonitors.yaml",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_prometheusrules.yaml",
    ("ray.io/v1", "RayJob"): "ray.io_rayjobs.yaml",  # launcher.backend=rayjob (KubeRay v1.7)
    ("ray.io/v1", "RayCluster"): "ray.io_rayclusters.yaml",
}


def crds_present(*kinds: str) -> bool:
    """All CRD files there (or those of ``kinds``)."""
    return all((CRD_DIR / f).is_file() for (_, k), f in CRD_FILES.items() if not kinds or k in kinds)


@functools.cache
def crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    doc = yaml.safe_load((CRD_DIR / CRD_FILES[(api_version, kind)]).read_text())
    version = api_version.rsplit("/", 1)[-1]
    for v in doc["spec"]["versions"]:
        if v["name"] == version:
            return v["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]
    raise KeyError(f"{kind} {api_version} not in {CRD_FILES[(api_version, kind)]}")


@functools.cache
def crd_validator(api_version: str, kind: str) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(crd_schema(api_version, kind))


def unknown_fields(obj: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Fields of ``obj`` a structural schema does not declare (the API server would prune them)."""
    if isinstance(obj, dict):
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return []
        props, extra = schema.get("properties"), schema.get("additionalProperties")
        out: list[str] = []
        for key, value in obj.items():
            if props is not None and key in props:
                out += unknown_fields(value, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                out += unknown_fields(value, extra, f"{path}.{key}")
            elif props is not None:
                out.append(f"{path}.{key}")
        return out
    if isinstance(obj, list) and isinstance(schema.get("items"), dict):
        return [
            e for i, item in enumerate(obj) for e in unknown_fields(item, schema["items"], f"{path}[{i}]")
        ]
    return []


def errors(obj: dict[str, Any]) -> list[str]:
    """Every schema problem of one object (empty when a cluster would accept it as is)."""
    key = (obj.get("apiVersion", ""), obj.get("kind", ""))
    name = f"{key[1]} {obj.get('metadata', {}).get('name')}"
    if key in CRD_FILES:
        schema = crd_schema(*key)
        found = [f"{name}: {e.json_path}: {e.message}" for e in crd_validator(*key).iter_errors(obj)]
        return found + [f"{name}: unknown field {f}" for f in unknown_fields(obj, schema)]
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{name}: {'.'.join(str(p) for p in e.path)}: {e.message}"]
    return []
