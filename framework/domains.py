"""Field domains: the values a schema field accepts, declared once, next to the field and its comment::

    lr: float = d(3e-4, Real(0, 1, lo_open=True))  # peak learning rate

:func:`problems` checks every declared field of a config group at validation, all at once (the group functions
in ``framework.validate`` add only what spans several fields). The typed schema already fixes each field's type
at compose time; a domain says which values of that type mean something. No torch, no fsspec import.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf


class Domain:
    """A set of values; :meth:`problem` says how ``value`` falls outside it (None: inside)."""

    def problem(self, value: Any) -> str | None:
        raise NotImplementedError


def d(default: Any, domain: Domain) -> Any:
    """A dataclass field with ``default`` (lists and dicts copied per instance) and its domain."""
    meta = {"domain": domain}
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _interval(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    if hi is None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    if lo is None:
        return f"{'<' if hi_open else '<='} {hi:g}"
    return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"


@dataclass(frozen=True)
class Int(Domain):
    lo: int | None = None
    hi: int | None = None

    def problem(self, value: Any) -> str | None:
        if not isinstance(value, int) or isinstance(value, bool):
            return "must be an integer"
        if self.lo is not None and value < self.lo:
            return f"must be >= {self.lo}"
        if self.hi is not None and value > self.hi:
            return f"must be <= {self.hi}" + ("" if self.lo is None else f" (and >= {self.lo})")
        return None


POSITIVE = Int(1)
NON_NEGATIVE = Int(0)
PORT = Int(0, 65535)


@dataclass(frozen=True)
class Real(Domain):
    """A finite number (never nan or inf) in an interval."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def problem(self, value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return "must be a number"
        if not math.isfinite(value):
            return f"must be a finite number {_interval(self.lo, self.hi, self.lo_open, self.hi_open)}"
        too_low = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
        too_high = self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi)
        if too_low or too_high:
            return f"must be {_interval(self.lo, self.hi, self.lo_open, self.hi_open)}"
        return None


PROBABILITY = Real(0.0, 1.0)
POSITIVE_REAL = Real(0.0, lo_open=True)
NON_NEGATIVE_REAL = Real(0.0)


@dataclass(frozen=True)
class OneOf(Domain):
    values: tuple[Any, ...]
    what: str = "valid"  # "is not <what>"

    def problem(self, value: Any) -> str | None:
        if value in self.values:
            return None
        return f"is not {self.what}; choose one of: {', '.join(str(v) for v in self.values)}"


def one_of(*values: Any, what: str = "valid") -> OneOf:
    return OneOf(tuple(values), what)


@dataclass(frozen=True)
class NonEmpty(Domain):
    """A string that names something: empty or blank means nothing."""

    def problem(self, value: Any) -> str | None:
        return "must not be empty" if isinstance(value, str) and not value.strip() else None


NON_EMPTY = NonEmpty()


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$")
_BARE_SCHEME = re.compile(
    r"^(s3|s3a|gs|gcs|az|abfs|abfss|adl|hf|hdfs|http|https|memory|file|pkg):/?[^/]?", re.I
)


@dataclass(frozen=True)
class Uri(Domain):
    """A local path or ``scheme://...`` whose filesystem is installed (``pkg://`` names a shipped file).
    Whether it exists or is writable is a question for the machine that runs (``validate.host_problems``)."""

    def problem(self, value: Any) -> str | None:
        if not isinstance(value, str):
            return "must be a path or URI"
        if not value.strip():
            return "must not be empty (use null for none)"
        m = _SCHEME.match(value)
        if m is None:
            if _BARE_SCHEME.match(value) and "://" not in value:
                return "looks like a URI without '//'; write e.g. s3://bucket/path"
            return None
        scheme, rest = m.group(1).lower(), m.group(2)
        if scheme == "pkg":
            return None if rest.strip("/") else "names no package; write pkg://<module>/<file>"
        if scheme not in ("file", "memory") and not rest.split("/", 1)[0]:
            return f"names no bucket or host after {scheme}://"
        from framework.storage import scheme_problem  # the one door to fsspec

        return scheme_problem(scheme)


URI = Uri()


@dataclass(frozen=True)
class Quantity(Domain):
    """A positive Kubernetes resource quantity (``2``, ``500m``, ``8Gi``, ``1e3``)."""

    PATTERN: typing.ClassVar[re.Pattern[str]] = re.compile(
        r"^(?P<num>[0-9]+(\.[0-9]*)?|\.[0-9]+)(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?$"
    )

    def problem(self, value: Any) -> str | None:
        m = self.PATTERN.match(str(value)) if isinstance(value, str | int | float) else None
        if m is None or isinstance(value, bool):
            return "is not a Kubernetes quantity; write e.g. 4, 500m, 16Gi"
        if float(m.group("num")) <= 0:
            return "must be a positive quantity"
        return None


QUANTITY = Quantity()


@dataclass(frozen=True)
class Each(Domain):
    """Every item of a list in ``item``; ``length``: exactly that many items."""

    item: Domain
    length: int | None = None

    def problem(self, value: Any) -> str | None:
        if not isinstance(value, list | tuple):
            return "must be a list"
        if self.length is not None and len(value) != self.length:
            return f"must have {self.length} items, not {len(value)}"
        for i, v in enumerate(value):
            p = self.item.problem(v)
            if p:
                return f"item {i} ({v!r}) {p}"
        return None


# ------------------------------------------------------------------------------------------------- checking
def _dataclass_of(tp: Any) -> type | None:
    """The dataclass in an annotation such as ``LoraConfig | None``."""
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return tp
    for arg in typing.get_args(tp):
        found = _dataclass_of(arg)
        if found is not None:
            return found
    return None


def _plain(value: Any) -> Any:
    return (
        OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig | ListConfig) else value
    )


def show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


@functools.cache
def declared(schema: type) -> dict[str, tuple[Domain | None, type | None]]:
    """Field name -> (its domain, the nested dataclass when it is a section)."""
    hints = typing.get_type_hints(schema)
    return {
        f.name: (f.metadata.get("domain"), _dataclass_of(hints[f.name]))
        for f in dataclasses.fields(schema)  # type: ignore[arg-type]
    }


def problems(cfg: DictConfig | None, schema: type, prefix: str) -> list[str]:
    """``<key>=<value> <problem>`` for every field of ``cfg`` (a section of ``schema``) outside its domain;
    nested sections are checked too. Null values are not checked (the type says whether null is allowed)."""
    if cfg is None:
        return []
    found = []
    for name, (domain, nested) in declared(schema).items():
        if domain is None and nested is None:
            continue  # nothing to check: skip the read (a DictConfig read costs ~20 us; most fields have none)
        try:
            value = cfg[name]
        except Exception:  # noqa: BLE001 - an unset mandatory value or interpolation error is reported elsewhere
            continue
        if value is None:
            continue
        key = f"{prefix}.{name}"
        if nested is not None and isinstance(value, DictConfig):
            found += problems(value, nested, key)
        elif domain is not None:
            plain = _plain(value)
            problem = domain.problem(plain)
            if problem:
                found.append(f"{key}={show(plain)} {problem}")
    return found


def described(schema: type, prefix: str) -> Sequence[tuple[str, Domain]]:
    """Every (key, domain) declared under ``schema``, for docs and tests."""
    out: list[tuple[str, Domain]] = []
    for name, (domain, nested) in declared(schema).items():
        if nested is not None:
            out += described(nested, f"{prefix}.{name}")
        elif domain is not None:
            out.append((f"{prefix}.{name}", domain))
    return out


@dataclass(frozen=True)
class RunName(Domain):
    """A name that is safe as one path component and in object names: no separators, no ``..``, bounded."""

    limit: int = 100

    def problem(self, value: Any) -> str | None:
        if not isinstance(value, str) or not value.strip():
            return "must not be empty"
        if len(value) > self.limit:
            return f"is {len(value)} characters long; the limit is {self.limit}"
        if "/" in value or "\\" in value or value in (".", "..") or any(ord(c) < 32 for c in value):
            return "must be one plain name (no '/', '\\', '..' or control characters)"
        return None


RUN_NAME = RunName()


def path_safe(name: Any, limit: int = RUN_NAME.limit) -> str:
    """A run name as one directory name, for ``hydra.run.dir`` (resolver ``${path_safe:...}``): separators and
    ``..`` cannot leave outputs/, and a long name is shortened (with a hash, so two long names stay apart).
    Validation then refuses such a run_name with its limit; this keeps Hydra from writing elsewhere first."""
    import hashlib

    text = str(name)
    safe = re.sub(r"[/\\\x00-\x1f]", "_", text).strip() or "run"
    if set(safe) == {"."}:
        safe = safe.replace(".", "_")
    if len(safe.encode()) > limit:
        safe = f"{safe[: limit - 9]}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"
    return safe


if not OmegaConf.has_resolver("path_safe"):
    OmegaConf.register_new_resolver("path_safe", path_safe)
