"""Shared test set-up: caches in a per-session temp dir, DeepSpeed's CPU op cached across runs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = ["tests.s3_fixtures"]

# DeepSpeed compiles a small CPU comm op on first start (~30 s); keep it across test sessions.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _rendezvous_env() -> dict[str, str | None]:
    from tests.helpers import TORCHRUN_ENV

    return {k: os.environ.get(k) for k in TORCHRUN_ENV}


# What the session started with: module fixtures run before a test's own fixtures, so a per-test snapshot would
# take a module fixture's leftovers for the baseline and keep them for the rest of the session.
_SESSION_RENDEZVOUS_ENV = _rendezvous_env()


@pytest.fixture(autouse=True)
def _no_leftover_rendezvous_env() -> Iterator[None]:
    """An in-process run sets the rendezvous env (RANK, MASTER_PORT, ...) and keeps its process group's port;
    a later test's subprocess must not inherit them (it would think it runs under torchrun, on a taken port).
    Only those keys are undone: module fixtures may set others (a Ray cluster's token) for their tests."""
    yield
    for k, v in _SESSION_RENDEZVOUS_ENV.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAMEWORK_CACHE", str(tmp_path_factory.getbasetemp() / "framework-cache"))


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread avoids spin-waiting on cores other jobs share (3-10x faster here)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
