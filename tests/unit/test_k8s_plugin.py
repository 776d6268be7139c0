"""The Hydra plugin end to end: discovery, no torch at render time, dry runs, errors, and one real launch.

The launch goes through `python -m framework launcher=kubernetes` in a subprocess against the in-process fake API
server (tests/k8s/fake_apiserver.py); more launch scenarios are in tests/integration/test_k8s_launch.py.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from framework.errors import ConfigError
from tests.helpers import ROOT, one_line_error, run_cli
from tests.k8s import schemas
from tests.k8s.fake_apiserver import FakeKube, simulate


def manifests(cwd: Path) -> list[tuple[Path, list[dict[str, Any]]]]:
    found = sorted(cwd.glob("multirun/*/*/*/manifests.yaml"))
    return [(p, list(yaml.safe_load_all(p.read_text()))) for p in found]


@pytest.mark.parametrize(("plugin", "config"), [("KubernetesLauncher", "kubernetes"), ("RayLauncher", "ray")])
def test_discovery(plugin: str, config: str) -> None:
    """Both launcher plugins are found by Hydra's namespace scan and register their hydra/launcher config."""
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins
    from hydra.plugins.launcher import Launcher

    names = [p.__name__ for p in Plugins.instance().discover(Launcher)]
    assert plugin in names, (
        f"{names}: reinstall with `pip install -e '.[dev]' --config-settings editable_mode=strict`"
    )
    assert f"{config}.yaml" in ConfigStore.instance().list("hydra/launcher")


def test_compose_and_render_import_neither_torch_nor_the_kubernetes_client() -> None:
    code = textwrap.dedent(
        """
        import sys
        from hydra.core.plugins import Plugins
        from hydra.plugins.launcher import Launcher
        Plugins.instance().discover(Launcher)  # imports every plugin module, as each run does
        from tests.k8s.compose import compose
        from hydra_plugins.kubernetes_launcher._render import job_name, render, to_yaml
        cfg = compose("hardware=a100x8", "hardware.nodes=2")
        name = job_name(cfg.run_name, sweep_id="s0", job_index=0, nodes=2)
        to_yaml(render(cfg, job_name=name, sweep_id="s0", job_index=0, git_commit=None))
        heavy = sorted(m for m in ("torch", "deepspeed", "transformers", "kubernetes") if m in sys.modules)
        print("imported:", heavy)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "imported: []" in out.stdout


def test_dry_run_writes_valid_manifests(tmp_path: Path) -> None:
    proc = run_cli(
        ["launcher=kubernetes", "launcher.dry_run=true", "hardware=a100x8", "hardware.nodes=2"], tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    ((path, objs),) = manifests(tmp_path)
    assert (
        path.parent.name == "0" and "kubectl apply -f" in proc.stdout and "framework-jobs gc" in proc.stdout
    )
    assert [o["kind"] for o in objs] == ["ConfigMap", "JobSet"]  # the default backend
    assert [e for o in objs for e in schemas.errors(o)] == []
    job = objs[-1]
    child = job["spec"]["replicatedJobs"][0]["template"]["spec"]
    assert child["completions"] == 2
    assert child["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert len(job["metadata"]["labels"]["framework.io/git-commit"]) == 40
    # the warnings a live submit prints, printed by the dry run too
    assert "launcher.image=ghcr.io/example/framework:latest is not pinned" in proc.stderr + proc.stdout


def test_dry_run_sweep_writes_one_job_per_point(tmp_path: Path) -> None:
    proc = run_cli(["-m", "launcher=kubernetes", "launcher.dry_run=true", "optim.lr=1e-4,3e-4"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    found = manifests(tmp_path)
    assert [p.parent.name for p, _ in found] == ["0", "1"]
    names, lrs, sweeps = set(), [], set()
    for _, objs in found:
        job = objs[-1]
        names.add(job["metadata"]["name"])
        sweeps.add(job["metadata"]["labels"]["framework.io/sweep-id"])
        lrs.append(yaml.safe_load(objs[0]["data"]["config.yaml"])["optim"]["lr"])
        assert [e for o in objs for e in schemas.errors(o)] == []
    assert len(names) == 2 and len(sweeps) == 1 and lrs == [1e-4, 3e-4]
    # Only rendered: the summary says so, never COMPLETED.
    table = proc.stdout[proc.stdout.index("Sweep summary") :].splitlines()[2:]
    assert len(table) == 2 and all(row.split()[1] == "DRY_RUN" for row in table), proc.stdout
    assert "COMPLETED" not in proc.stdout


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["+launcher.env.HF_TOKEN=hf_abc"], "launcher.env.HF_TOKEN looks like a secret"),
        (["train.max_steps=0"], "train.max_steps=0 must be >= 1"),
        (["launcher.backend=slurm"], "launcher.backend='slurm' is not valid"),
    ],
)
def test_bad_config_fails_before_anything_is_submitted(tmp_path: Path, args: list[str], match: str) -> None:
    proc = run_cli(["launcher=kubernetes", *args], tmp_path, env={"KUBECONFIG": str(tmp_path / "none")})
    assert proc.returncode == 2, proc.stderr
    assert match in proc.stderr


def test_no_cluster_is_one_line_and_exit_1(tmp_path: Path) -> None:
    proc = run_cli(
        ["launcher=kubernetes"], tmp_path, env={"KUBECONFIG": str(tmp_path / "missing-kubeconfig")}
    )
    assert proc.returncode == 1
    line = one_line_error(proc)
    assert "No Kubernetes cluster configured" in line and "launcher.dry_run=true" in line


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[FakeKube]:
    with FakeKube() as k:
        yield k


def test_launch_follows_the_job_to_success(tmp_path: Path, kube: FakeKube) -> None:
    kube.on_create.append(simulate("succeed", pending="Unschedulable"))
    env = {"KUBECONFIG": str(kube.write_kubeconfig(tmp_path / "kubeconfig"))}
    proc = run_cli(
        [
            "launcher=kubernetes",
            "hardware.nodes=2",
            "launcher.poll_interval_s=0.2",
            "launcher.backend=indexed_job",
        ],
        tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "step 1 loss 2.0\nstep 2 loss 1.5\ndone" in proc.stdout  # rank 0's log, streamed
    assert "Unschedulable: 0/3 nodes are available" in proc.stdout  # why it waited (Hydra's log)
    assert "Succeeded" in proc.stdout
    (name,) = kube.names("jobs")
    assert kube.names("configmaps") == [f"{name}-config"] and kube.names("services") == [name]
    ((path, objs),) = manifests(tmp_path)  # written for submitted runs too
    assert objs[-1]["metadata"]["name"] == name


def test_paths_are_checked_in_the_pods_not_here() -> None:
    """The launchers' one check before submitting (framework.remote_jobs.validate, Kubernetes and Ray alike)."""
    from framework.remote_jobs import validate as _validate
    from tests.k8s.compose import compose

    _validate(compose("dataset=jsonl", "dataset.path=/data/only-on-the-pvc.jsonl"))  # no error: a pod path
    with pytest.raises(ConfigError, match="train.max_steps=0 must be >= 1"):
        _validate(compose("dataset=jsonl", "dataset.path=/data/x.jsonl", "train.max_steps=0"))
