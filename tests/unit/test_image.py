"""The training image is the one the tests vouch for: dockerfiles/Dockerfile installs every Python package at the
version this test environment runs (dockerfiles/constraints.txt, which scripts/setup.sh installs with), pins its
apt packages, and lints clean with the real hadolint. (No docker here: the image itself is not built.)"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sysconfig
from pathlib import Path

from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.fixtures import tools

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "dockerfiles" / "Dockerfile"
CONSTRAINTS = ROOT / "dockerfiles" / "constraints.txt"
REGENERATE = "run scripts/freeze-constraints.sh after bash scripts/setup.sh"


def pins() -> dict[str, str]:
    out = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            out[canonicalize_name(name)] = version
    return out


def runs() -> list[str]:
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    return [line.strip()[4:] for line in text.splitlines() if line.strip().startswith("RUN ")]


def test_hadolint_clean() -> None:
    result = subprocess.run(
        [str(tools.hadolint()), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


def test_this_environment_is_the_constraints_file() -> None:
    """What the tests run with == what the image installs (every installed distribution, same version)."""
    pinned = pins()
    missing, differ = [], []
    # The venv's site-packages only: once something imports setuptools, its vendored copies (setuptools/_vendor,
    # with their own dist-info) are on sys.path too, and they are not installed distributions.
    site = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    for dist in importlib.metadata.distributions(path=site):
        name = canonicalize_name(dist.metadata["Name"])
        if name == "framework":
            continue
        if name not in pinned:
            missing.append(name)
        elif Version(pinned[name]) != Version(
            Version(dist.version).base_version if name == "torch" else dist.version
        ):
            differ.append(f"{name} {dist.version} installed, {pinned[name]} pinned")
    assert not missing and not differ, f"{REGENERATE}: unpinned {sorted(missing)}; {differ}"


def test_dockerfile_installs_with_the_constraints_and_pinned_tools() -> None:
    pinned = pins()
    text = DOCKERFILE.read_text()
    assert "COPY dockerfiles/constraints.txt /etc/framework-constraints.txt" in text
    pip_runs = [cmd for r in runs() for cmd in r.split("&&") if "pip install" in cmd]
    assert len(pip_runs) == 3
    for cmd in pip_runs:
        assert "-c /etc/framework-constraints.txt" in cmd, cmd
    torch_arg = re.search(r"^ARG TORCH_VERSION=(\S+)$", text, re.M)
    assert torch_arg is not None and torch_arg.group(1) == pinned["torch"], (
        f"ARG TORCH_VERSION vs {CONSTRAINTS.name}"
    )
    for tool in ("pip", "setuptools"):
        m = re.search(rf"\b{tool}==(\S+)", text)
        assert m is not None and m.group(1) == pinned[tool], f"{tool} in the Dockerfile vs {CONSTRAINTS.name}"
    assert 'pip install -q -c "$constraints" -e' in (ROOT / "scripts" / "setup.sh").read_text()


def test_apt_packages_are_pinned() -> None:
    installs = [r for r in runs() if "apt-get install" in r]
    assert installs
    for run in installs:
        args = run.split("apt-get install", 1)[1].split("&&", 1)[0].split()
        packages = [a for a in args if not a.startswith("-")]
        assert packages and all(re.fullmatch(r"[a-z0-9.+-]+=[\w.:~+-]+", p) for p in packages), packages
