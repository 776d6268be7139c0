"""Kubeflow Trainer v2's part, played in tests: compile a TrainJob with its (Cluster)TrainingRuntime into the
JobSet the controller would create (so the fake API server and the pods-as-processes tests run TrainJobs).

What the controller does, as far as the pods see it: the runtime's JobSet template, named after the TrainJob;
the ``node`` replicated job runs ``trainer.numNodes`` pods (an Indexed Job: completion index = node rank);
its ``node`` container gets the trainer's image, command, args and resourcesPerNode, the trainer's env after
the runtime's, and the torch plugin's PET_* env; then each runtimePatches entry is merged in (maps merged,
lists of named items merged by name, other values replaced).
"""

from __future__ import annotations

import copy
import functools
from typing import Any

NODE = "node"
PET_MASTER_PORT = 29400


@functools.cache
def _chart_runtime(*sets: str) -> str:
    import yaml

    from tests.fixtures.chart import template

    (rt,) = [
        o
        for o in template(sets=("trainingRuntime.enabled=true", *sets))
        if o["kind"] == "ClusterTrainingRuntime"
    ]
    return yaml.safe_dump(rt)


def chart_runtime(*sets: str) -> dict[str, Any]:
    """The chart's ClusterTrainingRuntime (dockerfiles/chart, default values + ``sets``) as helm renders it."""
    import yaml

    return yaml.safe_load(_chart_runtime(*sets))  # type: ignore[no-any-return]


def merge(base: Any, patch: Any) -> Any:
    """Strategic-merge-like: maps merged key by key, lists of named maps merged by name, the rest replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(x, dict) and "name" in x for x in [*base, *patch])
    ):
        out_list = [copy.deepcopy(x) for x in base]
        index = {x["name"]: i for i, x in enumerate(out_list)}
        for item in patch:
            if item["name"] in index:
                out_list[index[item["name"]]] = merge(out_list[index[item["name"]]], item)
            else:
                out_list.append(copy.deepcopy(item))
        return out_list
    return copy.deepcopy(patch)


def _merge_env(base: list[dict[str, Any]], extra: list[dict[str, Any]]) -> list[dict[str, Any]]:
    names = {e["name"] for e in extra}
    return [e for e in base if e["name"] not in names] + [copy.deepcopy(e) for e in extra]


def compile_trainjob(trainjob: dict[str, Any], runtime: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JobSet Trainer v2 creates for ``trainjob`` with ``runtime`` (default: the chart's runtime)."""
    runtime = runtime or chart_runtime()
    ref = trainjob["spec"]["runtimeRef"]
    assert ref["name"] == runtime["metadata"]["name"], f"TrainJob references {ref['name']}"
    assert ref.get("kind", "ClusterTrainingRuntime") == runtime["kind"]
    name, ns = trainjob["metadata"]["name"], trainjob["metadata"]["namespace"]
    trainer = trainjob["spec"].get("trainer") or {}
    nodes = int(trainer.get("numNodes") or runtime["spec"]["mlPolicy"].get("numNodes") or 1)
    spec = copy.deepcopy(runtime["spec"]["template"]["spec"])
    spec.setdefault("network", {})["subdomain"] = name
    for rj in spec["replicatedJobs"]:
        if rj["name"] != NODE:
            continue
        job = rj["template"]["spec"]
        job["parallelism"] = job["completions"] = nodes
        job.setdefault("completionMode", "Indexed")
        pod = job["template"]["spec"]
        container = next(c for c in pod["containers"] if c["name"] == NODE)
        for key in ("image", "command", "args"):
            if key in trainer:
                container[key] = copy.deepcopy(trainer[key])
        if "resourcesPerNode" in trainer:
            container["resources"] = copy.deepcopy(trainer["resourcesPerNode"])
        pet = [
            {"name": "PET_NNODES", "value": str(nodes)},
            {"name": "PET_NPROC_PER_NODE", "value": str(trainer.get("numProcPerNode") or 1)},
            {
                "name": "PET_NODE_RANK",
                "valueFrom": {
                    "fieldRef": {
                        "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"
                    }
                },
            },
            {"name": "PET_MASTER_ADDR", "value": f"{name}-{NODE}-0-0.{name}"},
            {"name": "PET_MASTER_PORT", "value": str(PET_MASTER_PORT)},
        ]
        container["env"] = _merge_env(_merge_env(container.get("env") or [], trainer.get("env") or []), pet)
    # Initializers: spec.initializer.{dataset,model} go to the runtime's <kind>-initializer container as
    # STORAGE_URI plus its env (a runtime without that replicated job ignores them).
    for kind, init in (trainjob["spec"].get("initializer") or {}).items():
        for rj in spec["replicatedJobs"]:
            if rj["name"] == f"{kind}-initializer":
                pod = rj["template"]["spec"]["template"]["spec"]
                container = next(c for c in pod["containers"] if c["name"] == rj["name"])
                extra = [{"name": "STORAGE_URI", "value": init["storageUri"]}, *(init.get("env") or [])]
                container["env"] = _merge_env(container.get("env") or [], extra)
    for patch in trainjob["spec"].get("runtimePatches") or []:
        spec = merge(spec, (patch.get("trainingRuntimeSpec") or {}).get("template", {}).get("spec", {}))
    spec["suspend"] = bool(trainjob["spec"].get("suspend", False))
    return {
        "apiVersion": "jobset.x-k8s.io/v1alpha2",
        "kind": "JobSet",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": dict(trainjob["metadata"].get("labels") or {}),
            "ownerReferences": [
                {"apiVersion": trainjob["apiVersion"], "kind": "TrainJob", "name": name, "uid": "trainjob"}
            ],
        },
        "spec": spec,
    }
