"""launcher_problems: every launcher-side mistake of one command line, in one list (framework.validate's table)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from hydra_plugins.kubernetes_launcher._problems import launcher_problems
from hydra_plugins.kubernetes_launcher._render import job_name, render

from framework.errors import ConfigError
from tests.helpers import ROOT
from tests.k8s.compose import compose

MISTAKES = (
    "launcher.backend=slurm",
    "launcher.namespace=Team_A",
    "+launcher.env.HF_TOKEN=oops",
    "+launcher.pvcs.data=/tmp/data",
    "++launcher.labels={framework.io/run-name: x}",
    "launcher.hf_token_secret=just-a-name",
    "+launcher.extra.pod_specs={}",
    "launcher.egress_cidrs=[everywhere]",
    "launcher.image_pull_policy=Sometimes",
)


def test_a_valid_config_has_no_problems() -> None:
    assert launcher_problems(compose("hardware=a100x8", "hardware.nodes=2")) == []


def test_every_mistake_in_one_list() -> None:
    problems = launcher_problems(compose(*MISTAKES))
    text = "\n".join(problems)
    for expected in (
        r"launcher.backend='slurm' is not valid",
        r"launcher.namespace='Team_A'",
        r"launcher.env.HF_TOKEN looks like a secret",
        r"launcher.pvcs.data='/tmp/data'",
        r"launcher.labels.framework.io/run-name: reserved",
        r"launcher.hf_token_secret='just-a-name'",
        r"launcher.extra: unknown key(s) pod_specs",
        r"launcher.egress_cidrs: 'everywhere'",
        r"launcher.image_pull_policy='Sometimes'",
    ):
        assert expected in text, (expected, problems)
    assert len(problems) == len(MISTAKES)


def test_render_raises_them_all_at_once() -> None:
    cfg = compose(*MISTAKES[1:])  # a valid backend, so a job name can be made
    name = job_name(str(cfg.run_name), sweep_id="s0", job_index=0)
    with pytest.raises(ConfigError) as e:
        render(cfg, job_name=name, sweep_id="s0", job_index=0, git_commit=None)
    assert len(e.value.problems) == len(MISTAKES) - 1


def test_plain_dict_and_dictconfig_agree() -> None:
    from framework.config import resolved

    cfg = compose(*MISTAKES)
    assert launcher_problems(resolved(cfg)) == launcher_problems(cfg)


def test_pure_no_torch_no_kubernetes_client() -> None:
    code = textwrap.dedent(
        """
        import sys
        from tests.k8s.compose import compose
        from hydra_plugins.kubernetes_launcher._problems import launcher_problems
        launcher_problems(compose("launcher.backend=slurm"))
        print("imported:", sorted(m for m in ("torch", "kubernetes", "fsspec") if m in sys.modules))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "imported: []" in out.stdout
