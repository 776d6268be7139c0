"""``framework --help``: the app, each config group's options with one line each, and how to see more.

The text is Hydra's help template (``conf/hydra/help/framework.yaml``); the options table in it comes from the
``framework_options`` resolver below, built from ``conf/`` at the time of the call, so a new option file shows
up with the first sentence of its leading comment as its description. No torch import.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

# Groups the help lists, in this order; others (tuning: picked automatically) are left out.
GROUPS = ("recipe", "model", "dataset", "hardware", "launcher", "storage", "tracking", "experiment")
WIDTH = 110


def describe(path: Path) -> str:
    """The first sentence of a YAML file's leading comment (``# @package`` lines skipped)."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if not text.startswith("@package"):
            lines.append(text)
    text = " ".join(lines)
    depth = 0
    for i, ch in enumerate(text):  # the first sentence: up to . : or ; outside parentheses, not "e.g."
        depth += {"(": 1, ")": -1}.get(ch, 0)
        end = i + 1 == len(text) or text[i + 1] == " "
        if depth == 0 and end and ch in ".:;" and not text[: i + 1].endswith(("e.g.", "i.e.")):
            return text[:i]
    return text.rstrip(".")


def defaults(conf: Path) -> dict[str, str]:
    """Group -> the option the primary config picks."""
    import yaml

    primary = yaml.safe_load((conf / "config.yaml").read_text(encoding="utf-8"))
    return {
        str(key): str(value)
        for entry in primary.get("defaults", [])
        if isinstance(entry, dict)
        for key, value in entry.items()
    }


def options_table(conf: Path | None = None) -> str:
    """One line per option: group, option (``*`` = the default), what it is."""
    from framework.config import conf_dir

    conf = conf or conf_dir()
    chosen = defaults(conf)
    rows = []
    for group in GROUPS:
        files = sorted((conf / group).glob("*.yaml"))
        for i, f in enumerate(files):
            mark = " *" if chosen.get(group) == f.stem else ""
            rows.append((group if i == 0 else "", f.stem + mark, describe(f)))
    w0 = max(len(r[0]) for r in rows) + 2
    w1 = max(len(r[1]) for r in rows) + 2
    out = []
    for group, option, text in rows:
        line = f"  {group:<{w0}}{option:<{w1}}{text}"
        out.append(line if len(line) <= WIDTH else line[: WIDTH - 1] + "…")
    return "\n".join(out).replace("$", "$$")  # the template is a string.Template


def register_resolver() -> None:
    if not OmegaConf.has_resolver("framework_options"):
        OmegaConf.register_new_resolver("framework_options", lambda: options_table(), use_cache=False)
