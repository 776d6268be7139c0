"""dockerfiles/Dockerfile agrees with the manifests: what it COPYs exists, its user is the pods' runAsUser, its
entry point is the command the renderer emits, and its writable paths are the pods' volumes. (No docker here.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import tomllib
from hydra_plugins.kubernetes_launcher import _render

from framework.launcher_config import LauncherConfig
from tests.k8s.compose import compose

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "dockerfiles" / "Dockerfile"
IGNORE = ROOT / "dockerfiles" / "Dockerfile.dockerignore"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def last(name: str) -> str:
    return [a for i, a in instructions() if i == name][-1]


def env() -> dict[str, str]:
    found: dict[str, str] = {}
    for i, args in instructions():
        if i == "ENV":
            found.update(dict(re.findall(r"(\w+)=(\S+)", args)))
    return found


def _regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus '**') as a regex."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("/**", i) and i + 3 == len(pattern):
            out, i = out + "(?:/.*)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def ignored(rel: str) -> bool:
    """Docker's rule: the last pattern matching the path (or a parent dir of it) wins; '!' re-includes."""
    parts = rel.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for line in IGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate, pattern = line.startswith("!"), line.lstrip("!")
        if any(_regex(pattern).fullmatch(c) for c in candidates):
            result = not negate
    return result


def test_copied_paths_exist_and_are_in_the_build_context() -> None:
    copies = [a.split() for i, a in instructions() if i == "COPY"]
    assert copies
    for *sources, _dest in copies:
        for src in sources:
            assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
            tree = (ROOT / src).rglob("*")
            files = (
                [src]
                if (ROOT / src).is_file()
                else [str(f.relative_to(ROOT)) for f in tree if f.is_file() and "__pycache__" not in f.parts]
            )
            assert files and not any(ignored(f) for f in files), f"COPY {src}: excluded by {IGNORE.name}"
    assert (
        ignored(".venv/bin/python") and ignored("tests/unit/test_k8s_dockerfile.py") and ignored(".git/HEAD")
    )
    # Everything `pip install .` needs from pyproject is copied.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    copied = {s for *srcs, _ in copies for s in srcs}
    assert project["project"]["readme"] in copied
    dirs = set(project["tool"]["setuptools"]["package-dir"].values()) | {"framework", "recipes"}
    assert {d.split("/")[0] for d in dirs} <= copied


def test_user_is_the_pods_run_as_user() -> None:
    user = last("USER")
    assert user == "1000:1000", "numeric uid:gid, so runAsNonRoot can be verified by the kubelet"
    assert int(user.split(":")[0]) == LauncherConfig().run_as_user == 1000
    assert LauncherConfig().fs_group == int(user.split(":")[1])
    assert re.search(r"useradd --uid 1000 --gid 1000", DOCKERFILE.read_text())


def test_entrypoint_is_the_rendered_command() -> None:
    cfg = compose("hardware=a100x8", "hardware.nodes=2")
    name = _render.job_name(str(cfg.run_name), sweep_id="s0", job_index=0, nodes=2)
    container = _render.pod_templates(
        _render.main_object(_render.render(cfg, job_name=name, sweep_id="s0", job_index=0, git_commit=None))
    )[0]["spec"]["containers"][0]
    assert json.loads(last("ENTRYPOINT")) == container["command"] == ["framework-torchrun"]
    cmd = json.loads(last("CMD"))
    assert cmd[-2:] == ["-m", "framework"]  # same program; the manifests add the rendezvous and config args
    args = container["args"]
    assert args[args.index("-m") : args.index("-m") + 2] == ["-m", "framework"]
    assert {a.split("=")[0] for a in cmd if a.startswith("--")} <= {
        a.split("=")[0] for a in args if a.startswith("--")
    }
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["framework-torchrun"] == "hydra_plugins.kubernetes_launcher.torchrun:main"


def test_writable_paths_are_the_pods_volumes() -> None:
    e = env()
    for key, value in _render.CACHE_ENV.items():
        assert e.get(key) == value, f"ENV {key} in the Dockerfile differs from the manifests"
    assert all(v.startswith(_render.CACHE_DIR) for v in _render.CACHE_ENV.values())
    assert last("WORKDIR") == _render.TMP_DIR  # the pods' workingDir, an emptyDir
    assert e["PYTHONDONTWRITEBYTECODE"] == "1"  # site-packages is read-only in the pods


def test_torchrun_wrapper_exit_codes() -> None:
    from hydra_plugins.kubernetes_launcher.torchrun import exit_code

    assert exit_code([]) == 0
    assert exit_code([2, -15]) == 2  # one rank rejected the config; torchrun killed the other
    assert exit_code([143, 143]) == 143 and exit_code([-15]) == 143  # preempted: retryable
    assert exit_code([1, -15]) == 1
