"""launcher=ray without a cluster: no torch while submitting, problems, scaling, auth, exit codes (its plugin
discovery: test_k8s_plugin.test_discovery, parametrized over both launchers).

The runs against a real local Ray cluster are in tests/integration/test_ray_cluster.py.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from omegaconf import OmegaConf

from tests.helpers import ROOT, one_line_error, run_cli
from tests.ray_cluster import free_ports


def test_unreachable_cluster_names_address_and_port_forward_without_torch(tmp_path: Path) -> None:
    (port,) = free_ports(1)  # nothing listens there
    address = f"http://127.0.0.1:{port}"
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "framework", "launcher=ray", f"launcher.address={address}",
         f"storage.output_uri={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    error = one_line_error(proc)
    assert address in error and "kubectl port-forward svc/<raycluster>-head-svc" in error
    imported = {
        line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "import time:" in line
    }
    assert "ray.job_submission" in imported, "the Jobs API client was used"
    assert not {m for m in imported if m == "torch" or m.startswith("torch.")}, "no torch while submitting"
    # The job was composed and validated before connecting: its resolved config is in its output dir.
    cfg = OmegaConf.load(tmp_path / "sweep" / "0" / "config.yaml")
    assert cfg.launcher.name == "ray" and cfg.storage.output_uri == str(tmp_path / "run")


def test_without_ray_installed_says_how_to_install(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['ray'] = None\n"  # `import ray` raises ImportError, as when it is absent
        "from framework.__main__ import main\n"
        f"sys.exit(main(['launcher=ray', 'hydra.sweep.dir={tmp_path / 'sweep'}']))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "pip install 'framework[ray]'" in one_line_error(proc)


def test_every_launcher_problem_in_one_error(tmp_path: Path) -> None:
    res = run_cli(
        ["launcher=ray", "launcher.address=nowhere:8265", "hardware.nodes=2", "+launcher.env.HF_TOKEN=x",
         "launcher.max_failures=-5", "storage.output_uri=runs/x", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 2, res.stderr[-3000:]
    text = res.stderr
    assert "Invalid config (5 problems)" in text, text
    assert "launcher.address='nowhere:8265' is not a Ray address" in text
    assert "launcher.env.HF_TOKEN looks like a secret" in text
    assert "launcher.max_failures=-5" in text
    assert "storage.output_uri=runs/x is a relative path" in text
    assert "hardware.nodes=2 with launcher=ray needs a run directory every Ray node shares" in text


@pytest.mark.parametrize(
    ("extra", "ok"),
    [
        (["storage.output_uri=s3://bucket/runs/x"], True),
        (["storage.output_uri=/mnt/nfs/runs/x", "launcher.run_dir_shared=true"], True),
        (["storage.output_uri=/tmp/runs/x"], False),
        ([], False),
    ],
)
def test_multi_node_run_dir_must_be_shared(extra: list[str], ok: bool) -> None:
    from hydra_plugins.ray_launcher._problems import run_dir_problems

    cfg = OmegaConf.create(
        {"hardware": {"nodes": 2}, "launcher": {"run_dir": "/tmp/r", "run_dir_shared": False}}
    )
    cfg.storage = {"output_uri": None}
    for kv in extra:
        key, value = kv.split("=", 1)
        OmegaConf.update(cfg, key, True if value == "true" else value)
    assert (run_dir_problems(cfg) == []) is ok


def test_scaling_from_hardware_profiles() -> None:
    from hydra_plugins.ray_launcher._scaling import scaling

    cpu = scaling({"nodes": 1, "nproc_per_node": 2, "accelerator": "cpu", "cpu": "2", "memory": "8Gi"}, 0.5)
    assert cpu.scaling_config_kwargs() == {
        "num_workers": 2,
        "use_gpu": False,
        "resources_per_worker": {"CPU": 1.0, "memory": float(2 * 2**30)},
        "placement_strategy": "STRICT_PACK",
    }
    a100 = {"nodes": 2, "nproc_per_node": 8, "accelerator": "cuda", "gpus_per_node": 8, "cpu": "90"}
    s = scaling({**a100, "memory": "900Gi"}, 0.6)
    assert (s.num_workers, s.use_gpu, s.placement_strategy) == (16, True, "PACK")
    assert s.resources_per_worker["GPU"] == 1.0 and s.resources_per_worker["CPU"] == 90 / 8
    assert s.resources_per_worker["memory"] == pytest.approx(900 * 2**30 * 0.6 / 8, abs=1)
    # what a pod of the profile gets: allocatable_fraction of the node, whole CPUs
    fair = scaling({**a100, "cpu": "96", "memory": "1152Gi", "allocatable_fraction": 0.9}, 0.6)
    assert fair.resources_per_worker["CPU"] == 86 / 8
    assert fair.resources_per_worker["memory"] == pytest.approx(1152 * 2**30 * 0.9 * 0.6 / 8, abs=1)
    assert scaling({**a100, "cpu": "500m", "memory": "1Gi"}, 0.0).resources_per_worker == {
        "CPU": 0.0625,
        "GPU": 1.0,
    }


def test_missing_resources_says_what_is_missing() -> None:
    from hydra_plugins.ray_launcher._scaling import missing_resources, scaling

    s = scaling({"nodes": 2, "nproc_per_node": 8, "accelerator": "cuda", "gpus_per_node": 8, "cpu": "16",
                 "memory": "64Gi"}, 0.5)  # fmt: skip
    node = {"CPU": 16.0, "GPU": 8.0, "memory": float(40 * 2**30)}
    assert missing_resources(s, [node, node]) is None
    msg = missing_resources(s, [node])
    assert (
        msg is not None and "16 worker(s)" in msg and "missing CPU 16, GPU 8, memory 24.0Gi in total" in msg
    )
    one = scaling({"nodes": 1, "nproc_per_node": 4, "accelerator": "cpu", "cpu": "4", "memory": "0"}, 0.5)
    msg = missing_resources(one, [{"CPU": 2.0}, {"CPU": 2.0}])
    assert msg is not None and "STRICT_PACK: one node holding all 4 workers" in msg and "largest node" in msg


def test_auth_token_from_env_file_or_ray_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hydra_plugins.ray_launcher._client import auth_headers, auth_token

    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert auth_token() is None and auth_headers() == {}
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-ray-config\n")
    assert auth_token() == "from-ray-config"
    (tmp_path / "t").write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "t"))
    assert auth_token() == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert auth_headers() == {"Authorization": "Bearer from-env"}


def test_job_outcome_exit_codes() -> None:
    from hydra_plugins.ray_launcher._client import JobInfo

    def code(status: str, exit_code: int | None) -> int:
        return JobInfo("j", status, exit_code=exit_code).outcome_code

    assert code("SUCCEEDED", 0) == 0
    assert code("FAILED", 2) == 2
    assert code("FAILED", 143) == 143
    assert code("STOPPED", None) == 143
    assert code("FAILED", 1) == 1 and code("FAILED", None) == 1


@pytest.mark.parametrize(
    ("exit_code", "code", "status"), [(143, 143, "PREEMPTED"), (2, 2, "REJECTED"), (1, 1, "FAILED")]
)
def test_a_jobs_end_gives_the_launchers_exit_code_and_summary_row(
    exit_code: int, code: int, status: str
) -> None:
    """A Ray job whose driver exited 143 (SIGTERM, checkpoint saved) fails the launcher with 143 (Hydra raises
    the job's error; main() exits with its exit_code) and its sweep row says PREEMPTED, with how to resume."""
    from hydra_plugins.ray_launcher import _core
    from hydra_plugins.ray_launcher._client import JobInfo

    launcher = {"address": "http://127.0.0.1:8265", "follow": True}
    job = _core.Job(
        0, ["optim.lr=1e-4"], OmegaConf.create({"launcher": launcher}), "j-0", "/r", Path("."), {}
    )
    _core._outcome(job, JobInfo("j-0", "FAILED", exit_code=exit_code))
    assert job.status == "FAILED" and getattr(job.error, "exit_code", None) == code
    if code == 143:
        assert "resubmit with storage.output_uri=/r to resume" in str(job.error)
    from hydra.core.singleton import Singleton
    from hydra.core.utils import JobRuntime

    from framework.__main__ import describe_error

    state = Singleton.get_state()
    JobRuntime.instance().set("name", "train")
    try:
        with pytest.raises(type(job.error)) as raised:
            _ = _core._job_return(job).return_value  # what Hydra's sweeper does with every job's return
    finally:
        Singleton.set_state(state)
    assert describe_error(raised.value)[1] == code  # main()'s exit code
    row = _core._summary(job)
    assert row.status == status
    assert status in _core.format_summary([row])


def test_worker_failures_map_to_exit_codes() -> None:
    from hydra_plugins.ray_launcher._train import outcome_code

    from framework.errors import DataError, Preempted

    class Wrapped(Exception):  # as Ray Train's UserExceptionWithTraceback keeps the user's exception
        def __init__(self, base: BaseException) -> None:
            self._base_exc = base

    class GroupError(Exception):
        def __init__(self, failures: dict[int, Any]) -> None:
            self.worker_failures = failures

    assert outcome_code(GroupError({0: Wrapped(DataError("x:2: bad")), 1: RuntimeError("peer gone")})) == 2
    assert outcome_code(GroupError({0: Wrapped(Preempted("s")), 1: Wrapped(Preempted("s"))})) == 143
    assert outcome_code(GroupError({1: RuntimeError("actor died")})) == 1


def test_sigterm_relay_on_the_worker_main_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ray Train worker's SIGTERM: our handler, installed on the actor's main thread in place of Ray's, records
    the request for the loop's thread to poll, ignores the pod-wide copy, and hands a later one to Ray's."""
    from hydra_plugins.ray_launcher import _train

    seen: list[int] = []

    def rays_handler(signum: int, frame: Any) -> None:  # as Ray's worker.main_loop: the worker exits
        seen.append(signum)
        raise SystemExit(1)

    before = signal.signal(signal.SIGTERM, rays_handler)
    monkeypatch.setitem(_train._sigterm, "window_s", 0.3)
    try:
        with cf.ThreadPoolExecutor(1) as pool:  # the thread Ray Train runs the loop in may not install one
            assert pool.submit(_train._install_sigterm_relay).result() is False
        assert signal.getsignal(signal.SIGTERM) is rays_handler
        assert _train._install_sigterm_relay() is True
        assert _train.stop_requested() == 0
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # the copy of a pod-wide SIGTERM
        assert _train.stop_requested() == signal.SIGTERM and seen == []
        time.sleep(0.4)
        with pytest.raises(SystemExit) as e:
            os.kill(os.getpid(), signal.SIGTERM)  # a deliberate second one: Ray's handler, at once
        assert seen == [signal.SIGTERM] and e.value.code == 1
        _train._restore_sigterm()
        assert signal.getsignal(signal.SIGTERM) is rays_handler
    finally:
        signal.signal(signal.SIGTERM, before)
        _train._sigterm.update(at=0.0, previous=None)


def test_node_drain_notice_is_a_stop_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray's raylet marks its node draining on SIGTERM and Ray Train's PreemptionWatcher tells every worker
    (RayTrainWorker.mark_preempt): that stops the loop like a SIGTERM of its own."""
    from hydra_plugins.ray_launcher import _train
    from ray.train.v2._internal.execution import context
    from ray.train.v2.api.preemption import PreemptionInfo

    worker = SimpleNamespace(preemption_context=SimpleNamespace(preemption_info=None))
    monkeypatch.setattr(context, "get_train_context", lambda: worker)
    assert _train.stop_requested() == 0
    worker.preemption_context.preemption_info = PreemptionInfo(None, {"node": [1]})
    assert _train.stop_requested() == signal.SIGTERM


@pytest.mark.parametrize(("policy", "stopped"), [("yes", True), ("no", False), ("ask", False)])
def test_ctrl_c_policy(policy: str, stopped: bool, capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C while following: stop the job (yes), leave it (no), ask on a terminal (here none: leave it)."""
    from hydra_plugins.ray_launcher import _core

    class Client:
        address = "http://127.0.0.1:8265"
        calls: list[str] = []

        def stop(self, name: str) -> bool:
            self.calls.append(name)
            return True

    job = _core.Job(
        0, [], OmegaConf.create({"launcher": {"address": Client.address}}), "j-0", "/r", Path("."), {}
    )
    job.submitted, job.status = True, "SUBMITTED"
    _core._interrupted([job], {Client.address: Client()}, policy)  # type: ignore[dict-item]
    assert (Client.calls == ["j-0"]) is stopped
    assert job.status == ("CANCELLED" if stopped else "INTERRUPTED")
    err = capsys.readouterr().err
    assert ("Stopped Ray job j-0" in err) is stopped
    if not stopped:
        assert "framework-jobs cancel j-0 --ray http://127.0.0.1:8265" in err


def test_dry_run_is_refused_rather_than_submitted() -> None:
    """launcher=ray has nothing to render: launcher.dry_run=true would otherwise submit for real (and a sweep
    list the jobs COMPLETED). A RayJob's driver (address auto) runs what a kubernetes dry run rendered."""
    from hydra_plugins.ray_launcher._problems import launcher_problems

    def problems(address: str) -> list[str]:
        cfg = OmegaConf.create(
            {
                "launcher": {
                    "address": address,
                    "dry_run": True,
                    "cancel_on_interrupt": "ask",
                    "ray_python": "python",
                }
            }
        )
        return launcher_problems(cfg)

    (problem,) = problems("http://127.0.0.1:8265")
    assert (
        problem.startswith("launcher.dry_run=true")
        and "--validate" in problem
        and "backend=rayjob" in problem
    )
    assert problems("auto") == []


@pytest.mark.parametrize("fails", [1, 2, 3])
def test_ray_client_address_is_tried_again_http_is_not(fails: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ray:// address goes through a Ray Client session that a busy head may start too late once; an
    http:// address that does not answer fails at the first try."""
    from hydra_plugins.ray_launcher import _client

    calls: list[str] = []

    def client(address: str, headers: dict[str, str]) -> object:
        calls.append(address)
        if len(calls) <= fails:
            raise ConnectionError("ray client connection timeout")
        return SimpleNamespace()

    monkeypatch.setattr(_client, "import_ray_jobs", lambda: SimpleNamespace(JobSubmissionClient=client))
    monkeypatch.setattr(_client, "_RAY_CLIENT_PAUSES_S", (0.0, 0.0))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    if fails < 3:
        _client.RayJobs("ray://127.0.0.1:10001")
        assert len(calls) == fails + 1
    else:
        with pytest.raises(_client.ClusterUnreachable, match="ray client connection timeout") as info:
            _client.RayJobs("ray://127.0.0.1:10001")
        assert len(calls) == 3 and "kubectl port-forward" in str(info.value)
    calls.clear()
    with pytest.raises(_client.ClusterUnreachable):
        _client.RayJobs("http://127.0.0.1:8265")
    assert len(calls) == 1
