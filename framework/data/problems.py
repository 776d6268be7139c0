"""``dataset_problems(cfg)``: the dataset group's checks for the single validation pass (no torch, no datasets).

Everything that can be known from the config alone is checked here, all at once: choices, ranges, the prompt
templates' placeholders (one example is rendered), the chat template's syntax or file, the mixture's sources
and weights, and (for a local launch) that the files exist.
"""

from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig, OmegaConf

from framework.data.rows import FORMATS, TRAIN_ON


def _missing(uri: str) -> bool:
    from framework.config import package_path

    if uri.startswith("pkg://"):
        try:
            uri = package_path(uri)
        except FileNotFoundError:
            return True
    from framework import storage

    if storage.is_remote(uri):
        return False  # remote: checked when read
    return not storage.exists(uri)


def _template_problems(key: str, text: Any) -> list[str]:
    if text is None:
        return []
    try:
        str(text).format(prompt="p", input="i")
    except KeyError as e:
        return [
            f"{key}={text!r} uses {{{e.args[0]}}}, which does not exist; only {{prompt}} and {{input}} are filled in"
        ]
    except (ValueError, IndexError) as e:
        return [
            f"{key}={text!r} is not a valid format template ({e}); escape literal braces as {{{{ and }}}}"
        ]
    return []


def _chat_template_problems(key: str, value: Any, local: bool) -> list[str]:
    if value is None:
        return []
    value = str(value)
    if "{%" in value or "{{" in value:
        import jinja2

        try:
            jinja2.Environment().parse(value)
        except jinja2.TemplateSyntaxError as e:
            return [f"{key} is not valid Jinja (line {e.lineno}: {e.message})"]
        return []
    if local and _missing(value):
        return [
            f"{key}={value} is neither a Jinja template (no {{% or {{{{ in it) nor an existing file; pass the "
            "template text or the path of a .jinja file"
        ]
    return []


def _source_problems(key: str, s: Any, local: bool) -> list[str]:
    problems = []
    fmt = s.get("format")
    if fmt is not None and fmt not in FORMATS:
        problems.append(f"{key}.format={fmt!r} is not valid; choose one of: {', '.join(FORMATS)}")
    train_on = s.get("train_on")
    if train_on is not None and train_on not in TRAIN_ON:
        problems.append(f"{key}.train_on={train_on!r} is not valid; choose one of: {', '.join(TRAIN_ON)}")
    vf = s.get("val_fraction")
    top = key == "dataset"  # validate.py checks the top-level val_fraction and template itself
    if (
        not top
        and vf is not None
        and not (isinstance(vf, int | float) and math.isfinite(vf) and 0.0 <= vf < 1.0)
    ):
        problems.append(f"{key}.val_fraction={vf} must be in [0, 1)")
    for t in ("template", "input_template"):
        problems += _template_problems(f"{key}.{t}", s.get(t))
    template = s.get("template")
    if not top and template is not None and "{prompt}" not in str(template):
        problems.append(f"{key}.template must contain {{prompt}}")
    problems += _chat_template_problems(f"{key}.chat_template", s.get("chat_template"), local)
    for p in ("path", "val_path"):
        value = s.get(p)
        if local and isinstance(value, str) and value and not top and _missing(value):
            problems.append(f"{key}.{p}={value} does not exist; fix the path (local path or s3:// URI)")
    return problems


def dataset_problems(cfg: DictConfig) -> list[str]:
    """Every problem of ``cfg.dataset`` (the mixture's sources included)."""
    ds = cfg.dataset
    local = OmegaConf.select(cfg, "launcher.name", default="local") == "local"
    problems = _source_problems("dataset", ds, local)
    if int(ds.get("max_row_chars", 1)) < 1:
        problems.append(f"dataset.max_row_chars={ds.max_row_chars} must be >= 1")
    sources = ds.get("sources") if not OmegaConf.is_missing(ds, "sources") else None
    path_missing = OmegaConf.is_missing(ds, "path")
    if sources:
        if not path_missing and ds.path is not None:
            problems.append(
                f"dataset.path={ds.path} and dataset.sources are both set; a mixture reads only its sources: "
                "set dataset.path=null, or drop dataset.sources"
            )
        total = 0.0
        for i, s in enumerate(sources):
            key = f"dataset.sources[{i}]"
            w = s.get("weight")
            if not (isinstance(w, int | float) and math.isfinite(w) and w > 0):
                problems.append(f"{key}.weight={w} must be a finite number > 0")
            else:
                total += w
            problems += _source_problems(key, s, local)
    elif not path_missing and ds.path is None and not OmegaConf.is_missing(ds, "sources"):
        problems.append(
            "dataset.path is null and dataset.sources is empty: name a data file (dataset.path=...) or the "
            "sources of a mixture (dataset=mixture 'dataset.sources=[{path: a.jsonl, weight: 1}]')"
        )
    cache = ds.get("cache_dir")
    if local and isinstance(cache, str) and "://" not in cache:
        from pathlib import Path

        if Path(cache).expanduser().is_file():
            problems.append(f"dataset.cache_dir={cache} is a file; point it at a directory (or an s3:// URI)")
    return problems
