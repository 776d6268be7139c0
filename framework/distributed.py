"""The rendezvous env contract (DESIGN.md) and process-group set-up.

A rank reads only MASTER_ADDR, MASTER_PORT, NNODES, NODE_RANK, NPROC_PER_NODE (set by the launcher) and the
RANK / LOCAL_RANK / WORLD_SIZE that torchrun derives from them. A lone process without them gets a world of one.
"""

from __future__ import annotations

import os
import socket
from typing import Any

RENDEZVOUS_ENV = ("MASTER_ADDR", "MASTER_PORT", "NNODES", "NODE_RANK", "NPROC_PER_NODE")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def under_torchrun() -> bool:
    """True inside a process that torchrun (or an equivalent) started with the rank env."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def ensure_single_process_env() -> None:
    """Give a process started without torchrun a world of one, so DeepSpeed does not look for MPI."""
    if under_torchrun():
        return
    os.environ.update(
        {
            "RANK": "0",
            "LOCAL_RANK": "0",
            "WORLD_SIZE": "1",
            "LOCAL_WORLD_SIZE": "1",
            "MASTER_ADDR": os.environ.get("MASTER_ADDR", "127.0.0.1"),
            "MASTER_PORT": os.environ.get("MASTER_PORT") or str(free_port()),
        }
    )


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_rank0() -> bool:
    return rank() == 0


def import_deepspeed(accelerator: str | None = None) -> Any:
    """``import deepspeed``, minus ~0.8 s of start-up: DeepSpeed's autotuner (which training never uses) imports
    MLflow, with FastAPI and more, whenever it is installed. It is kept out while DeepSpeed loads, then allowed
    again (the MLflow tracker imports it normally).

    Quiet on CPU: ``accelerator="cpu"`` names DeepSpeed's accelerator (DS_ACCELERATOR), so it does not warn that
    it found no GPU, which the hardware profile asked for; and the gcc command lines of its op-builder probes
    (setuptools' ``compilers`` logger at INFO) are not the user's business on any machine."""
    import logging
    import sys

    logging.getLogger("compilers").setLevel(logging.WARNING)
    if accelerator == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "deepspeed" in sys.modules:
        return sys.modules["deepspeed"]
    block = "mlflow" not in sys.modules
    if block:
        sys.modules["mlflow"] = None  # type: ignore[assignment]  # `import mlflow` raises ImportError
    try:
        import deepspeed
    finally:
        if block and sys.modules.get("mlflow", 0) is None:
            del sys.modules["mlflow"]
    return deepspeed


def _skip_cpu_shm_comm_op(deepspeed: Any) -> None:
    """DeepSpeed JIT-builds and loads a shared-memory all-reduce op in every CPU process (~70 s on 2 cores the
    first time on a machine or pod, then cached in TORCH_EXTENSIONS_DIR). Only its inference all-reduce uses it;
    training reduces through the gloo process group, so mark it unavailable."""
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    ops = getattr(deepspeed.ops, "__compatible_ops__", None)
    if builder is not None and isinstance(ops, dict):
        ops[builder.NAME] = False


def init(accelerator: str) -> None:
    """Start the process group: gloo on CPU, nccl on GPU (binding this rank to its GPU first)."""
    import torch

    deepspeed = import_deepspeed(accelerator)
    ensure_single_process_env()
    if accelerator == "cuda":
        torch.cuda.set_device(local_rank())
    else:
        _skip_cpu_shm_comm_op(deepspeed)
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(
            dist_backend="nccl" if accelerator == "cuda" else "gloo", auto_mpi_discovery=False
        )


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sum a few floats over all ranks (float64 on CPU: exact enough and backend-agnostic for gloo)."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return list(values)
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_reduce_max(values: list[float]) -> list[float]:
    import torch
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return list(values)
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def describe() -> dict[str, Any]:
    return {k: os.environ.get(k) for k in (*RENDEZVOUS_ENV, "RANK", "LOCAL_RANK", "WORLD_SIZE")}
