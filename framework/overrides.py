"""Command-line overrides that Hydra or OmegaConf reject, told in the project's words, every one at once.

Hydra stops at the first bad override and reports it in OmegaConf's terms (``full_key:``, ``object_type=``),
or, for a few forms, with a bare AssertionError or ValueError. When composing fails, :func:`explain` parses and
composes each override on its own (with the command line's group choices) so that every wrong one is named with
Hydra's reason in one line. :func:`precheck` catches, before composing, what Hydra would silently accept. Only
Hydra's public API is used (``hydra.compose``, the override parser). No torch import.
"""

from __future__ import annotations

import errno
import re
import typing
from collections.abc import Iterator
from typing import Any

from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    ConfigTypeError,
    OmegaConfBaseException,
    ValidationError,
)

from framework.config import Config, conf_dir

_SWEEP_CHARS = set(",()[]{}$*")
_BOOLS = {"true", "false", "yes", "no", "on", "off"}
MAX_EXPLAINED = 24  # each costs one compose (~0.1 s); only on the error path


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~").split("@", 1)[0].strip()


def groups() -> set[str]:
    """The config groups: the folders of conf/ (``model``, ``dataset``, ...)."""
    return {p.name for p in conf_dir().iterdir() if p.is_dir()}


def _is_choice(override: str, group_names: set[str]) -> bool:
    key = _key(override)
    return key in group_names or "/" in key


def _field_types(schema: type, prefix: str = "") -> Iterator[tuple[str, Any]]:
    import dataclasses

    from framework.domains import _dataclass_of

    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):  # type: ignore[arg-type]
        nested = _dataclass_of(hints[f.name])
        key = f"{prefix}{f.name}"
        if nested is not None:
            yield from _field_types(nested, f"{key}.")
        else:
            yield key, hints[f.name]


def precheck(args: list[str]) -> list[str]:
    """What composing would accept but means nothing: a group option with a file extension, a number for a
    boolean field (OmegaConf turns ``2`` into true). Pure string work: no compose, no I/O beyond conf/."""
    overrides = [a for a in args if not a.startswith("-") and "=" in a]
    if not overrides:
        return []
    problems = []
    names = groups()
    bools = {k for k, tp in _field_types(Config) if tp is bool or tp == (bool | None)}
    for o in overrides:
        key, value = _key(o), o.split("=", 1)[1].strip()
        if key in names and re.search(r"\.ya?ml$", value):
            problems.append(
                f"{o}: name the option without the file extension: {key}={re.sub(r'[.]ya?ml$', '', value)}"
            )
        elif (
            key in bools
            and value
            and not _SWEEP_CHARS & set(value)
            and value.lower() not in _BOOLS | {"null"}
        ):
            problems.append(f"{o}: {key} is true or false, not {value!r}")
    return problems


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0].strip() if text else type(e).__name__


def _cause(e: BaseException) -> BaseException:
    """The innermost error Hydra wrapped (OmegaConf's, or the AssertionError/ValueError of OmegaConf.update)."""
    seen = e
    while seen.__cause__ is not None and seen.__cause__ is not seen:
        seen = seen.__cause__
    return seen


_CONVERT = re.compile(r"Value '(.*)' of type '\w+' could not be converted to (\w+)")
_TYPE_WORDS = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false", "String": "a string"}


def describe(e: BaseException, override: str | None = None) -> str:
    """One line for one rejected override (or for the whole command line when ``override`` is None)."""
    from hydra.errors import MissingConfigException, OverrideParseException

    where = f"{override}: " if override else ""
    key = _key(override) if override else ""
    if isinstance(e, MissingConfigException):
        # "Could not find 'model/gpt5'\n\nAvailable options in 'model':\n\tllama3_1_8b ...\nConfig search path: ..."
        text = str(e).split("Config search path", 1)[0]
        head, _, options = text.partition("Available options")
        found = options.partition(":")[2].split()
        listed = f"; available options{options.partition(':')[0]}: {', '.join(found)}" if found else ""
        return f"{where}{' '.join(head.split())}{listed}"
    if isinstance(e, OverrideParseException):
        return f"{where}Hydra cannot parse it ({_first_line(e)}); quote values with special characters"
    cause = _cause(e)
    full_key = str(getattr(cause, "full_key", "") or key)
    msg = getattr(cause, "msg", None) or _first_line(cause)
    unknown = isinstance(cause, ConfigAttributeError | ConfigKeyError) and "not in" in str(msg)
    if unknown or "No match in config" in str(e):
        missing = full_key or key
        from framework.__main__ import _dict_option, _known_keys

        parent = _dict_option(missing)
        if parent is not None:  # launcher.env, launcher.pvcs, ...: open dicts; Hydra wants + to add a key
            return (
                f"{where}{parent} is a dict option with no key {missing[len(parent) + 1 :]!r} yet; add it with a "
                f"leading +: +{missing}=<value> (quote it in the shell if needed)"
            )
        valid = _known_keys(missing)
        hint = f"; valid keys there: {', '.join(valid)}" if valid else ""
        return f"{where}unknown key '{missing}'{hint}"
    if isinstance(cause, ValidationError):
        m = _CONVERT.search(str(msg))
        if m:
            return (
                f"{where}{full_key}={m.group(1)!r} is not {_TYPE_WORDS.get(m.group(2), m.group(2).lower())}"
            )
        if "is not a valid bool" in str(msg):
            return f"{where}{full_key} is true or false"
        return f"{where}{full_key}: {msg}"
    if isinstance(cause, ConfigTypeError) and "does not support deletion" in str(msg):
        return f"{where}{full_key} is part of the schema and cannot be deleted; set it to a value instead"
    text = _first_line(e)
    if "An item is already at" in str(e):
        return f"{where}{key} already exists: set it without the '+' ({override.lstrip('+') if override else key})"
    if "Could not delete from config" in text:
        return f"{where}{key} does not exist, so there is nothing to delete"
    parent = key.rsplit(".", 1)[0] if "." in key else key
    if isinstance(cause, AssertionError) and "NoneType" in str(cause):
        return (
            f"{where}{parent} is null in this config (this recipe has no {parent} section); drop the "
            f"{parent}.* overrides, or choose a recipe that uses it"
        )
    if isinstance(cause, ValueError) and "invalid literal for int" in str(cause):
        return f"{where}{parent} is a list: index it by position ({parent}.0=...) or set it whole ({parent}=[a,b])"
    if isinstance(cause, OmegaConfBaseException):
        return f"{where}{full_key + ': ' if full_key and full_key not in str(msg) else ''}{msg}"
    return f"{where}{text}"


def explain(args: list[str]) -> list[str]:
    """Every override of ``args`` that Hydra rejects, each with its reason (one line each); empty when none is
    rejected on its own (the failure lies in how they combine: the caller reports Hydra's message)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    overrides = [a for a in args if not a.startswith("-")]
    parser = OverridesParser.create()
    problems, parsed = [], []
    for o in overrides:
        try:
            (p,) = parser.parse_overrides([o])
        except OverrideParseException as e:
            problems.append(describe(e, o))
            continue
        except Exception:  # noqa: BLE001 - a form the parser itself trips over is still the user's to fix
            problems.append(f"{o}: Hydra cannot parse it; check the override syntax")
            continue
        if not p.is_sweep_override() and not _key(o).startswith("hydra"):
            parsed.append(o)
    names = groups()
    choices = [o for o in parsed if _is_choice(o, names)]
    others = [o for o in parsed if o not in choices][:MAX_EXPLAINED]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            try:
                compose(config_name="config", overrides=choices)
            except Exception:  # noqa: BLE001 - find which choice, then stop: the rest needs them
                for o in choices:
                    try:
                        compose(config_name="config", overrides=[o])
                    except Exception as e:  # noqa: BLE001
                        problems.append(describe(e, o))
                return problems
            for o in others:
                try:
                    compose(config_name="config", overrides=[*choices, o])
                except Exception as e:  # noqa: BLE001
                    problems.append(describe(e, o))
    finally:
        GlobalHydra.instance().clear()
    return problems


def setup_os_error(e: OSError) -> str:
    """An OSError before the task ran: Hydra creating the run directory or writing its files there."""
    name = e.filename or "the run directory"
    if e.errno == errno.ENAMETOOLONG:
        return (
            f"cannot create {name}: a name in it is too long (the limit is 255 bytes per path component); "
            "shorten run_name, or set hydra.run.dir=<shorter dir>"
        )
    return (
        f"cannot create or write {name}: {e.strerror or e}; set hydra.run.dir=<a writable directory> (or, for "
        "sweeps, hydra.sweep.dir=...)"
    )
