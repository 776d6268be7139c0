"""Hydra's own launcher test suites against the Kubernetes launcher, as Hydra's plugins run them, plus the same
contract on the framework's config (dry run: nothing is submitted).

The launcher runs the framework's app only: each job becomes pods running ``framework-torchrun -m framework``.
Hydra's suite apps (``hydra.test_utils.a_module`` and its ``compose.yaml``) are other apps, so they get the
documented error (README "Kubernetes launcher and Hydra"); every suite test that needs such an app's task to
run says so in its skip reason. The contract itself (JobReturn.cfg without the hydra node, .hydra/ files and a
job log per job, on_job_start/on_job_end) is checked on the framework's config below.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra.test_utils.launcher_common_tests import IntegrationTestSuite, LauncherTestSuite, sweep_1_job
from hydra_plugins.kubernetes_launcher._core import NOT_A_FRAMEWORK_APP

from framework.errors import ConfigError
from tests.helpers import run_cli

NEEDS_ANOTHER_APP = (
    "runs Hydra's test app (hydra.test_utils.a_module, configs/compose.yaml) and checks its task's result; "
    "the Kubernetes launcher runs only the framework's app in pods and refuses other apps with a documented "
    "error (test_a_non_framework_app_gets_the_documented_error); the same contract on the framework's config: "
    "test_framework_sweep_honours_the_launcher_contract"
)
NEEDS_A_SUBPROCESS_APP = (
    "starts Hydra's example apps (no_config.py, ...) as subprocesses and checks what their task printed; those "
    "apps are not the framework's, so the launcher refuses them (see NEEDS_ANOTHER_APP)"
)


def _skipped(suite: type, name: str, reason: str) -> Any:
    base = getattr(suite, name)

    @functools.wraps(base)
    def test(self: Any, *args: Any, **kwargs: Any) -> Any:
        return base(self, *args, **kwargs)

    return pytest.mark.skip(reason=reason)(test)


@pytest.fixture
def launcher_name() -> str:
    return "kubernetes"


@pytest.fixture
def overrides() -> list[str]:
    return []


class TestKubernetesLauncherSuite(LauncherTestSuite):
    # Run as they are: Hydra rejects these before any job reaches the launcher, as it must for every launcher.
    #   test_not_sweeping_hydra_overrides, test_sweep_1_job_strict_and_bad_key
    test_sweep_1_job = _skipped(LauncherTestSuite, "test_sweep_1_job", NEEDS_ANOTHER_APP)
    test_sweep_2_jobs = _skipped(LauncherTestSuite, "test_sweep_2_jobs", NEEDS_ANOTHER_APP)
    test_sweep_1_job_strict = _skipped(LauncherTestSuite, "test_sweep_1_job_strict", NEEDS_ANOTHER_APP)
    test_sweep_2_optimizers = _skipped(LauncherTestSuite, "test_sweep_2_optimizers", NEEDS_ANOTHER_APP)
    test_sweep_over_unspecified_mandatory_default = _skipped(
        LauncherTestSuite, "test_sweep_over_unspecified_mandatory_default", NEEDS_ANOTHER_APP
    )
    test_sweep_and_override = _skipped(LauncherTestSuite, "test_sweep_and_override", NEEDS_ANOTHER_APP)
    test_sweep_with_custom_resolver = _skipped(
        LauncherTestSuite, "test_sweep_with_custom_resolver", NEEDS_ANOTHER_APP
    )


class TestKubernetesIntegrationSuite(IntegrationTestSuite):
    test_custom_task_name = _skipped(IntegrationTestSuite, "test_custom_task_name", NEEDS_A_SUBPROCESS_APP)
    test_custom_sweeper_run_workdir = _skipped(
        IntegrationTestSuite, "test_custom_sweeper_run_workdir", NEEDS_A_SUBPROCESS_APP
    )
    test_get_orig_dir_multirun = _skipped(
        IntegrationTestSuite, "test_get_orig_dir_multirun", NEEDS_A_SUBPROCESS_APP
    )
    test_to_absolute_path_multirun = _skipped(
        IntegrationTestSuite, "test_to_absolute_path_multirun", NEEDS_A_SUBPROCESS_APP
    )


@pytest.mark.usefixtures("hydra_restore_singletons")
def test_a_non_framework_app_gets_the_documented_error(hydra_sweep_runner: Any, tmpdir: Path) -> None:
    with pytest.raises(ConfigError) as e:
        sweep_1_job(
            hydra_sweep_runner,
            overrides=["hydra/launcher=kubernetes"],
            task_function=lambda _: 100,
            temp_dir=tmpdir,
        )
    assert NOT_A_FRAMEWORK_APP in str(e.value) and e.value.exit_code == 2


CALLBACK = "tests.k8s.hydra_callbacks.Record"


def test_framework_sweep_honours_the_launcher_contract(tmp_path: Path) -> None:
    """What Hydra's suite checks, on the framework's own config: per job .hydra/ files and a log, the job's id
    and num, JobReturn.cfg without the hydra node, on_job_start/on_job_end around every job."""
    record = tmp_path / "callbacks.jsonl"
    proc = run_cli(
        [
            "-m",
            "launcher=kubernetes",
            "launcher.dry_run=true",
            "optim.lr=1e-4,3e-4",
            f"+hydra.callbacks.record._target_={CALLBACK}",
            f"+hydra.callbacks.record.path={record}",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    dirs = sorted(tmp_path.glob("multirun/*/*/[0-9]"))
    assert [d.name for d in dirs] == ["0", "1"]
    for i, d in enumerate(dirs):
        for f in ("config.yaml", "hydra.yaml", "overrides.yaml"):
            assert (d / ".hydra" / f).is_file(), f
        key, _, value = yaml.safe_load((d / ".hydra" / "overrides.yaml").read_text())[-1].partition("=")
        assert key == "optim.lr" and float(value) == [1e-4, 3e-4][i]
        assert "hydra" not in yaml.safe_load((d / ".hydra" / "config.yaml").read_text())
        hydra_yaml = yaml.safe_load((d / ".hydra" / "hydra.yaml").read_text())["hydra"]
        assert hydra_yaml["job"]["num"] == i and hydra_yaml["job"]["id"].endswith(f"_{i}")
        (log,) = d.glob("*.log")  # the job log, named as Hydra's job logging names it
        assert "manifests.yaml" in log.read_text()
    events = [json.loads(line) for line in record.read_text().splitlines()]
    assert [(e["event"], e["num"]) for e in events] == [("start", 0), ("start", 1), ("end", 0), ("end", 1)]
    ends = [e for e in events if e["event"] == "end"]
    assert all(e["status"] == "COMPLETED" and not e["cfg_has_hydra"] for e in ends)
    assert [e["lr"] for e in ends] == [1e-4, 3e-4]
