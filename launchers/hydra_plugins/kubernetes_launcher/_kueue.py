"""Kueue as a first-class option: the queue label on the object Kueue manages, created suspended, priority and
topology-aware placement. One function for every backend (it reads where each keeps ``suspend`` from the table).

    launcher.queue=training               kueue.x-k8s.io/queue-name on the Job/JobSet/PyTorchJob/TrainJob; the
                                          object is created suspended and Kueue unsuspends it once the whole
                                          gang is admitted (the LocalQueue of dockerfiles/chart, kueue.*)
    launcher.priority=framework-high      kueue.x-k8s.io/priority-class: a WorkloadPriorityClass
    launcher.topology_required=LEVEL      kueue.x-k8s.io/podset-required-topology on the pod templates (all
    launcher.topology_preferred=LEVEL     pods in one domain of that node label, e.g. a rack or block), or the
                                          preferred form; the flavor needs a Topology (ResourceFlavor.topologyName)
    launcher.priority_class=NAME          the pods' priorityClassName (scheduler preemption; no queue needed)

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hydra_plugins.kubernetes_launcher._names import DNS_SUBDOMAIN, LABEL_KEY_NAME, LABEL_VALUE

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
REQUIRED_TOPOLOGY = "kueue.x-k8s.io/podset-required-topology"
PREFERRED_TOPOLOGY = "kueue.x-k8s.io/podset-preferred-topology"


def apply(obj: dict[str, Any], entry: Any, launcher: Any) -> None:
    """Set the Kueue labels, suspend and topology annotations on the job object ``obj`` in place."""
    queue = getattr(launcher, "queue", None)
    labels = obj["metadata"].setdefault("labels", {})
    if queue:
        labels[QUEUE_LABEL] = str(queue)
        node = obj["spec"]
        *parents, last = entry.suspend_path
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = True  # Kueue admits the whole gang, then unsuspends
        if getattr(launcher, "priority", None):
            labels[PRIORITY_LABEL] = str(launcher.priority)
    topology = [
        (key, value)
        for key, value in (
            (REQUIRED_TOPOLOGY, getattr(launcher, "topology_required", None)),
            (PREFERRED_TOPOLOGY, getattr(launcher, "topology_preferred", None)),
        )
        if value
    ]
    priority_class = getattr(launcher, "priority_class", None)
    for template in entry.pod_templates(obj["spec"]):
        for key, value in topology:
            template["metadata"].setdefault("annotations", {})[key] = str(value)
    if priority_class:
        for template in entry.pod_templates(obj["spec"]):
            template["spec"]["priorityClassName"] = str(priority_class)


def _label_key(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    return (
        bool(name)
        and len(name) <= 63
        and bool(LABEL_KEY_NAME.match(name))
        and (not prefix or bool(DNS_SUBDOMAIN.match(prefix)))
    )


def problems(launcher: Mapping[str, Any]) -> list[str]:
    """Each bad Kueue setting, naming the key and the fix."""
    out = []
    queue, priority = launcher.get("queue"), launcher.get("priority")
    if queue is not None and not (DNS_SUBDOMAIN.match(str(queue)) and len(str(queue)) <= 63):
        out.append(f"launcher.queue={queue!r} is not a LocalQueue name (a DNS label, e.g. training)")
    if priority is not None and not (LABEL_VALUE.match(str(priority)) and DNS_SUBDOMAIN.match(str(priority))):
        out.append(f"launcher.priority={priority!r} is not a WorkloadPriorityClass name")
    if priority and not queue:
        out.append(
            "launcher.priority needs launcher.queue: a WorkloadPriorityClass orders workloads in a Kueue queue "
            "(for the scheduler's PriorityClass use launcher.priority_class)"
        )
    required, preferred = launcher.get("topology_required"), launcher.get("topology_preferred")
    if required and preferred:
        out.append("launcher.topology_required and launcher.topology_preferred are exclusive; set one")
    for key, value in (("topology_required", required), ("topology_preferred", preferred)):
        if value and not _label_key(str(value)):
            out.append(
                f"launcher.{key}={value!r} is not a node label key (a topology level, e.g. kubernetes.io/hostname)"
            )
        if value and not queue:
            out.append(
                f"launcher.{key} needs launcher.queue: Kueue's topology-aware scheduling places admitted jobs"
            )
    pc = launcher.get("priority_class")
    if pc is not None and not DNS_SUBDOMAIN.match(str(pc)):
        out.append(f"launcher.priority_class={pc!r} is not a PriorityClass name")
    if pc and launcher.get("backend") == "trainjob":
        out.append(
            "launcher.priority_class cannot be patched into a TrainJob's pods; set priorityClassName in the "
            "TrainingRuntime, or use launcher.queue + launcher.priority"
        )
    return out
