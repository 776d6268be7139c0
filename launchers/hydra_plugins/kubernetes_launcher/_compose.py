"""Sweep configs without recomposing the defaults tree for every job.

Hydra's ``load_sweep_config`` composes each job from scratch (~0.2 s here), and the basic sweeper does it twice
per job (once to validate the batch, once in the launcher): a 100-job sweep spent ~40 s composing identical
trees. Here a job's overrides are split into structural ones (config-group choices, packages, ``hydra.*``) and
plain value overrides. The tree is composed once per distinct structural set; each job is a copy of it with its
value overrides applied by Hydra's own override code (framework.hydra_compat.apply_overrides) and its ``hydra.overrides.task`` and
``hydra.job.override_dirname`` set as Hydra sets them. Anything else falls back to the full composition.
The config the sweeper validated is handed to the launcher as is (it is composed once per job).
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Sequence
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from omegaconf import DictConfig, OmegaConf, open_dict

from framework.hydra_compat import apply_overrides, overrides_dirname

_HYDRA_INTERPOLATION = re.compile(r"\$\\?\{hydra\\?:")


def clone(cfg: DictConfig) -> DictConfig:
    """A deep copy; OmegaConf's pickling is about twice as fast as copy.deepcopy for a whole config."""
    return pickle.loads(pickle.dumps(cfg, protocol=pickle.HIGHEST_PROTOCOL))  # type: ignore[no-any-return]


class SweepConfigLoader:
    """A ConfigLoader whose load_sweep_config is fast for value sweeps; everything else is delegated."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._parser = OverridesParser.create()
        self._bases: dict[tuple[str, ...], DictConfig] = {}
        self._base_uses_hydra: dict[tuple[str, ...], bool] = {}
        self._validated: dict[tuple[str, ...], DictConfig] = {}
        self._parsed: dict[str, Override] = {}  # the ANTLR parser is slow; sweeps repeat most overrides

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: Sequence[str]) -> DictConfig:
        key = tuple(sweep_overrides)
        if key in self._validated:  # the sweeper composed (and dropped) it while validating the batch
            return self._validated.pop(key)
        cfg = self._compose(master_config, list(sweep_overrides))
        self._validated[key] = cfg
        return cfg

    def _structural(self, o: Override) -> bool:
        if o.is_hydra_override() or o.package is not None or o.is_sweep_override():
            return True
        if o.type not in (OverrideType.CHANGE, OverrideType.ADD, OverrideType.FORCE_ADD, OverrideType.DEL):
            return True
        repo = getattr(self._inner, "repository", None)
        return repo is None or bool(repo.group_exists(o.key_or_group.replace(".", "/")))

    def _parse(self, overrides: Sequence[str]) -> list[Override]:
        for line in overrides:
            if line not in self._parsed:
                self._parsed[line] = self._parser.parse_override(line)
        return [self._parsed[line] for line in overrides]

    def needs_hydra_config(self, overrides: Sequence[str]) -> bool:
        """Whether the job's config has a ${hydra:...} interpolation (then HydraConfig must hold its hydra node)."""
        # The basic sweeper hands overrides on escaped ($\{hydra\:job.num\}): match both spellings.
        if any(_HYDRA_INTERPOLATION.search(o) for o in overrides):
            return True
        key = tuple(str(o.input_line) for o in self._parse(overrides) if self._structural(o))
        return self._base_uses_hydra.get(key, True)

    def _compose(self, master: DictConfig, overrides: list[str]) -> DictConfig:
        parsed = self._parse(overrides)
        structural = [str(o.input_line) for o in parsed if self._structural(o)]
        values = [o for o in parsed if not self._structural(o)]
        if not values or getattr(self._inner, "repository", None) is None:
            return self._inner.load_sweep_config(master, overrides)  # type: ignore[no-any-return]
        base_key = tuple(structural)
        if base_key not in self._bases:
            base = self._inner.load_sweep_config(master, structural)
            plain = OmegaConf.to_container(base, resolve=False)
            assert isinstance(plain, dict)
            hydra = plain.pop("hydra", {})
            self._base_uses_hydra[base_key] = "${hydra:" in repr(plain) or "${hydra:" in repr(
                hydra.get("sweep")
            )
            self._bases[base_key] = base
        cfg = clone(self._bases[base_key])
        apply_overrides(values, cfg)
        dirname = cfg.hydra.job.config.override_dirname
        with open_dict(cfg.hydra):
            cfg.hydra.overrides.task = [str(o.input_line) for o in parsed]
            cfg.hydra.job.override_dirname = overrides_dirname(
                parsed,
                kv_sep=dirname.kv_sep,
                item_sep=dirname.item_sep,
                exclude_keys=list(dirname.exclude_keys),
            )
        OmegaConf.copy_cache(from_config=master, to_config=cfg)
        return cfg


def install(hydra_context: Any) -> None:
    """Make the sweep's ConfigLoader (shared by the sweeper and this launcher) a SweepConfigLoader."""
    if not isinstance(hydra_context.config_loader, SweepConfigLoader):
        hydra_context.config_loader = SweepConfigLoader(hydra_context.config_loader)
