"""Every Hydra and OmegaConf private API the framework and its launchers use, in one place.

Each function wraps one hook, states why the public API does not do, and has its own test
(tests/unit/test_hydra_compat.py), so a Hydra or OmegaConf upgrade has one module to check. Written against
hydra-core 1.3 and omegaconf 2.3. No torch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from hydra.core.override_parser.types import Override
from hydra.core.utils import JobReturn
from omegaconf import DictConfig, flag_override, open_dict, read_write


@contextlib.contextmanager
def no_mode_compose(skip: bool = True) -> Iterator[None]:
    """Skip the compose Hydra runs only to read ``hydra.mode`` (about 0.2 s of start-up).

    Only safe when nothing on the command line can set the mode (the caller decides: ``skip``). Hook:
    ``hydra._internal.hydra.Hydra.get_mode``, which ``hydra.main`` calls before the real compose; returning
    None means "not set", exactly what the extra compose finds for our primary config.
    """
    from hydra._internal.hydra import Hydra

    original = Hydra.get_mode
    if skip:
        Hydra.get_mode = lambda self, config_name, overrides: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        Hydra.get_mode = original  # type: ignore[method-assign]


def apply_overrides(overrides: Sequence[Override], cfg: DictConfig) -> None:
    """Apply parsed value overrides (``k=v``, ``+k=v``, ``++k=v``, ``~k``) to ``cfg`` in place, as Hydra's
    compose does. Hook: ``ConfigLoaderImpl._apply_overrides_to_config`` (no public equivalent applies
    Hydra's override grammar to an existing config)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    ConfigLoaderImpl._apply_overrides_to_config(list(overrides), cfg)


def overrides_dirname(
    overrides: Sequence[Override], *, kv_sep: str, item_sep: str, exclude_keys: Sequence[str]
) -> str:
    """``hydra.job.override_dirname`` for a job's overrides, as Hydra computes it. Hook:
    ``hydra._internal.config_loader_impl.get_overrides_dirname``."""
    from hydra._internal.config_loader_impl import get_overrides_dirname

    return str(
        get_overrides_dirname(
            overrides=list(overrides), kv_sep=kv_sep, item_sep=item_sep, exclude_keys=list(exclude_keys)
        )
    )


@contextlib.contextmanager
def detached(cfg: DictConfig, key: str) -> Iterator[DictConfig]:
    """``cfg`` without its ``key`` node for the duration (e.g. the job config without ``hydra``), the node put
    back as is afterwards: no deep copy either way (a whole-config copy costs ~10 ms a job in a sweep).

    Hooks: ``DictConfig._get_node`` (the node object itself, not a converted value), ``Node._set_parent(None)``
    (else OmegaConf sees a node of the same config and deep-copies it anyway) and the
    ``no_deepcopy_set_nodes`` flag (assign the node without copying it).
    """
    with read_write(cfg), open_dict(cfg):
        node = cfg._get_node(key)
        assert node is not None, key
        del cfg[key]
    try:
        yield cfg
    finally:
        node._set_parent(None)
        with read_write(cfg), open_dict(cfg), flag_override(cfg, "no_deepcopy_set_nodes", True):
            cfg[key] = node


def return_value(job_return: JobReturn) -> Any:
    """A job's return value, or None when it failed. Hook: ``JobReturn._return_value`` (the public
    ``return_value`` property re-raises a failed job's exception)."""
    return job_return._return_value if job_return.status.name == "COMPLETED" else None


def missing_keys(cfg: DictConfig) -> set[str]:
    """``OmegaConf.missing_keys(cfg)``, the same set (and the same errors), in about a third of the time.

    OmegaConf reads every value (``cfg[key]``) to find the nested configs, which runs its validation and
    conversion for each leaf: ~4 ms of a config check. Here the nodes are walked (``Container._get_node``,
    ``Node._is_missing``, ``Node._is_interpolation``); only interpolations are read as OmegaConf reads them, so
    one that points at a missing value raises as there, and one that yields a config is walked into.
    """
    from omegaconf import ListConfig, OmegaConf
    from omegaconf.basecontainer import Container

    found: set[str] = set()

    def gather(node: Container) -> None:
        keys: Any = range(len(node)) if isinstance(node, ListConfig) else list(node.keys())
        for key in keys:
            child = node._get_node(key)
            if child is None:
                continue
            if child._is_missing():
                found.add(node._get_full_key(key))
            elif child._is_interpolation():
                value = node[key]
                if OmegaConf.is_config(value):
                    gather(value)
            elif isinstance(child, Container):
                gather(child)

    gather(cfg)
    return found
