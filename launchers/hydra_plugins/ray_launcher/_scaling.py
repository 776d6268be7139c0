"""Ray Train's ScalingConfig from the hardware profile, and the check that a cluster can hold it. Pure: no Ray,
no torch, so validation and tests use it without a cluster.

One Ray Train worker per training process: workers = hardware.nodes x hardware.nproc_per_node; each takes
gpus_per_node / nproc_per_node GPUs and its share of what a pod gets of the node's CPU and memory
(hardware.allocatable_fraction; of the memory, launcher.ray_memory_fraction: Ray keeps the rest for its object
store). One node's workers stay together:
STRICT_PACK (all on one node) for a one-node profile, PACK (fill a node before using the next) for several.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|P|Ki|Mi|Gi|Ti|Pi)?$")
_FACTOR = {
    None: 1.0,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "Ki": 2.0**10,
    "Mi": 2.0**20,
    "Gi": 2.0**30,
    "Ti": 2.0**40,
    "Pi": 2.0**50,
}


def quantity(value: Any, key: str) -> float:
    """A Kubernetes quantity ("2", "500m", "8Gi") as a number; ValueError naming ``key`` otherwise."""
    m = _QUANTITY.match(str(value).strip())
    if not m:
        raise ValueError(f"{key}={value!r} is not a quantity; use e.g. 2, 500m, 8Gi")
    return float(m.group(1)) * _FACTOR[m.group(2)]


@dataclass(frozen=True)
class Scaling:
    num_workers: int  # Ray Train workers = training processes in the world
    nodes: int  # hardware.nodes: how many groups of workers_per_node
    workers_per_node: int  # hardware.nproc_per_node
    use_gpu: bool
    resources_per_worker: dict[str, float] = field(default_factory=dict)  # CPU, GPU, memory (bytes)
    placement_strategy: str = "PACK"

    def scaling_config_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``ray.train.ScalingConfig``."""
        return {
            "num_workers": self.num_workers,
            "use_gpu": self.use_gpu,
            "resources_per_worker": dict(self.resources_per_worker),
            "placement_strategy": self.placement_strategy,
        }

    def total(self) -> dict[str, float]:
        return {k: v * self.num_workers for k, v in self.resources_per_worker.items()}


def scaling(hardware: Mapping[str, Any], memory_fraction: float = 0.6) -> Scaling:
    """The Ray Train scaling of a hardware profile (plain mapping or DictConfig node)."""
    nodes, nproc = int(hardware["nodes"]), int(hardware["nproc_per_node"])
    # A pod gets allocatable_fraction of the node (as the Kubernetes launcher requests it), and Ray counts
    # whole CPUs of a pod's limit: so a node's workers share the floor of that.
    fraction = float(hardware.get("allocatable_fraction") or 1.0)
    cpu = quantity(hardware["cpu"], "hardware.cpu") * fraction
    per: dict[str, float] = {"CPU": (math.floor(cpu) if cpu >= 1 else cpu) / nproc}
    use_gpu = hardware["accelerator"] == "cuda"
    if use_gpu:
        per["GPU"] = max(1, int(hardware.get("gpus_per_node") or nproc)) / nproc
    mem = quantity(hardware["memory"], "hardware.memory") * fraction * memory_fraction / nproc
    if mem > 0:
        per["memory"] = float(math.floor(mem))
    return Scaling(
        num_workers=nodes * nproc,
        nodes=nodes,
        workers_per_node=nproc,
        use_gpu=use_gpu,
        resources_per_worker=per,
        placement_strategy="STRICT_PACK" if nodes == 1 else "PACK",
    )


def _fits(capacity: Mapping[str, float], per: Mapping[str, float]) -> int:
    """How many workers of ``per`` one node of ``capacity`` holds."""
    counts = [math.floor(capacity.get(k, 0.0) / v + 1e-9) for k, v in per.items() if v > 0]
    return min(counts) if counts else 0


def _fmt(resources: Mapping[str, float]) -> str:
    def one(k: str, v: float) -> str:
        if k == "memory":
            return f"memory {v / 2**30:.1f}Gi"
        return f"{k} {v:g}"

    return ", ".join(one(k, v) for k, v in resources.items()) or "nothing"


def missing_resources(s: Scaling, nodes: Sequence[Mapping[str, float]]) -> str | None:
    """None when the alive nodes (each a resource -> capacity mapping, e.g. ``ray.nodes()[i]["Resources"]``)
    can hold the scaling; else a sentence saying what is missing."""
    if s.placement_strategy == "STRICT_PACK":
        holds = max((_fits(n, s.resources_per_worker) for n in nodes), default=0)
        placed = holds >= s.num_workers
        where = f"one node holding all {s.num_workers} workers"
    else:
        holds = sum(_fits(n, s.resources_per_worker) for n in nodes)
        placed = holds >= s.num_workers
        where = f"{s.num_workers} workers over the nodes"
    if placed:
        return None
    have: dict[str, float] = {}
    for n in nodes:
        for k in s.resources_per_worker:
            have[k] = have.get(k, 0.0) + float(n.get(k, 0.0))
    short = {k: v - have.get(k, 0.0) for k, v in s.total().items() if v > have.get(k, 0.0) + 1e-9}
    best = max((dict(n) for n in nodes), key=lambda n: _fits(n, s.resources_per_worker), default={})
    detail = (
        f"missing {_fmt(short)} in total"
        if short
        else f"the largest node has {_fmt({k: float(best.get(k, 0.0)) for k in s.resources_per_worker})}"
    )
    return (
        f"the Ray cluster cannot place the scaling config: {s.num_workers} worker(s) x "
        f"{{{_fmt(s.resources_per_worker)}}} ({s.placement_strategy}: {where}); it has {len(nodes)} node(s) "
        f"with {_fmt(have)}: {detail}, room for {holds} worker(s). Lower hardware.nodes/nproc_per_node/cpu/memory "
        "or add nodes to the cluster"
    )
