"""launcher=ray against a real local Ray cluster (token auth on, loopback only), one cluster for all tests.

Each test submits through the Jobs API with the CLI a user runs; references are independent runs (the same
config under torchrun), not pinned numbers.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT, read_metrics, run_cli, shell_env
from tests.ray_cluster import RayCluster, listening_addresses, ray_cluster  # noqa: F401 - the fixture

pytestmark = pytest.mark.integration

# ZeRO-2 over 2 processes; checkpoints every 4 steps so a killed worker group has one to resume from.
TRAIN = [
    "hardware.nproc_per_node=2", "hardware.zero_stage=2", "train.max_steps=12", "train.eval_interval=4",
    "train.checkpoint_interval=4", "train.progress=false",
]  # fmt: skip


def ray_args(cluster: RayCluster, *extra: str, address: str | None = None) -> list[str]:
    return [
        "launcher=ray",
        f"launcher.address={address or cluster.address}",
        "launcher.poll_interval_s=0.5",
        *extra,
    ]


def user_env(cluster: RayCluster) -> dict[str, str]:
    """A user's shell: the token in the environment, nothing else of the cluster's."""
    return {"RAY_AUTH_TOKEN": cluster.token}


@pytest.fixture(scope="module")
def torchrun_reference(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    run_dir = tmp_path_factory.mktemp("torchrun") / "run"
    res = run_cli([*TRAIN, f"hydra.run.dir={run_dir}"], cwd=run_dir.parent)
    assert res.returncode == 0, res.stderr[-3000:]
    return read_metrics(run_dir)


def assert_same_metrics(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert [m["step"] for m in got] == [m["step"] for m in want]
    for a, b in zip(got, want, strict=True):
        for key in ("loss", "eval_loss", "lr"):
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (a, b)


def test_cluster_listens_on_loopback_only(ray_cluster: RayCluster) -> None:  # noqa: F811
    addresses = listening_addresses(ray_cluster.pids())
    assert addresses, "the cluster's processes listen somewhere"
    outside = [a for a in addresses if not re.match(r"^(127\.0\.0\.1|::1|::ffff:127\.0\.0\.1):", a)]
    assert not outside, outside


def test_two_worker_zero2_job_matches_torchrun(
    ray_cluster: RayCluster,  # noqa: F811
    torchrun_reference: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    res = run_cli(
        ray_args(
            ray_cluster, *TRAIN, f"storage.output_uri={run_dir}", f"hydra.sweep.dir={tmp_path / 'sweep'}"
        ),
        cwd=tmp_path,
        env=user_env(ray_cluster),
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-5000:]
    assert "World: 2 process(es)" in out and "'NNODES': '1'" in out and "'NPROC_PER_NODE': '2'" in out
    assert_same_metrics(read_metrics(run_dir), torchrun_reference)
    # The token went in a header only: not in the job's runtime env, the config it ran, its log or ours.
    name = re.search(r"Submitted Ray job (\S+)", out)
    assert name is not None, out[-3000:]
    info = ray_cluster.client().get_job_info(name.group(1))  # type: ignore[attr-defined]
    assert info.status == "SUCCEEDED" and info.driver_exit_code == 0
    assert set(info.runtime_env["env_vars"]) == {"PYTHONUNBUFFERED"}
    logs = ray_cluster.client().get_job_logs(name.group(1))  # type: ignore[attr-defined]
    for text in (json.dumps(info.runtime_env), (run_dir / "config.yaml").read_text(), logs, out):
        assert ray_cluster.token not in text
    # A submission the cluster rejects (here: that id exists) is a JobRejected with exit code 2.
    from hydra_plugins.ray_launcher._client import JobRejected, RayJobs

    os.environ["RAY_AUTH_TOKEN"] = ray_cluster.token
    try:
        with pytest.raises(JobRejected) as rejected:
            RayJobs(ray_cluster.address).submit(
                name=name.group(1), entrypoint="true", runtime_env={}, metadata={}
            )
    finally:
        del os.environ["RAY_AUTH_TOKEN"]
    assert rejected.value.exit_code == 2 and name.group(1) in str(rejected.value)


def test_not_enough_resources_says_what_is_missing(ray_cluster: RayCluster, tmp_path: Path) -> None:  # noqa: F811
    res = run_cli(
        ray_args(ray_cluster, "hardware=h200x1", "train.max_steps=1", f"storage.output_uri={tmp_path / 'run'}",
                 f"hydra.sweep.dir={tmp_path / 'sweep'}"),
        cwd=tmp_path,
        env=user_env(ray_cluster),
    )  # fmt: skip
    out = res.stdout + res.stderr
    assert res.returncode == 2, out[-3000:]
    assert "the Ray cluster cannot place the scaling config: 1 worker(s)" in out
    assert re.search(r"missing [^:]*GPU 1", out), out[-3000:]  # the cluster has CPUs, no GPU
    assert "Started training worker group" not in out


def _popen(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], list[str]]:
    full_env = shell_env(PYTHONUNBUFFERED="1", **env)
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), full_env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(
        [sys.executable, "-m", "framework", *args],
        cwd=cwd,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # A shell's background job ignores SIGINT, and children inherit that: give the CLI Python's handler.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)

    threading.Thread(target=read, daemon=True).start()
    return proc, lines


def _wait_for(cond: Any, timeout: float, what: str, lines: list[str]) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}:\n{''.join(lines)[-5000:]}")


def _group_past_step_4(
    cluster: RayCluster, run_dir: Path, tmp_path: Path, max_failures: int
) -> tuple[subprocess.Popen[str], list[str], str]:
    """Start the TRAIN job; return once its group runs and ``latest`` is step_4, with rank 1's worker pid."""
    args = ray_args(
        cluster, *TRAIN, f"storage.output_uri={run_dir}", f"launcher.max_failures={max_failures}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )  # fmt: skip
    proc, lines = _popen(args, tmp_path, user_env(cluster))
    try:
        rank1 = _wait_for(
            lambda: next(
                (m.group(1) for ln in lines if (m := re.search(r"pid=(\d+)\) world_rank=1", ln))), None
            ),
            400,
            "the worker group",
            lines,
        )
        latest = run_dir / "checkpoints" / "latest"
        _wait_for(lambda: latest.is_file() and latest.read_text().strip() == "step_4", 300, "step_4", lines)
    except BaseException:
        proc.kill()
        raise
    return proc, lines, rank1


def test_killed_worker_restarts_group_and_resumes(
    ray_cluster: RayCluster,  # noqa: F811
    torchrun_reference: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    proc, lines, rank1 = _group_past_step_4(ray_cluster, run_dir, tmp_path, max_failures=1)
    try:
        os.kill(int(rank1), signal.SIGKILL)  # rank 1 dies without a word, as on a lost node
        rc = proc.wait(timeout=500)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines)
    assert rc == 0, out[-5000:]
    assert "Resumed from" in out and "step_4" in out[out.index("Resumed from") :], out[-5000:]
    assert out.count("Started training worker group") == 2, "one restart of the group"
    assert_same_metrics(read_metrics(run_dir), torchrun_reference)


def test_sigterm_to_a_worker_checkpoints_that_step_and_resumes(
    ray_cluster: RayCluster,  # noqa: F811
    torchrun_reference: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    """A SIGTERM to one Ray Train worker process (a pod deletion's) checkpoints the current step on every rank;
    the group restarts as a preemption (max_failures=0: not counted) and resumes from it."""
    run_dir = tmp_path / "run"
    proc, lines, rank1 = _group_past_step_4(ray_cluster, run_dir, tmp_path, max_failures=0)
    try:
        _wait_for(lambda: any(m["step"] > 4 for m in read_metrics(run_dir)), 120, "step 5", lines)
        os.kill(int(rank1), signal.SIGTERM)
        rc = proc.wait(timeout=500)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines)
    assert rc == 0, out[-5000:]
    stopped = re.search(r"stopped by signal 15 at step (\d+); checkpoint step_\1 saved", out)
    assert stopped is not None, out[-5000:]
    step = int(stopped.group(1))  # past the periodic step_4: the steps since were not lost
    assert 4 < step < 12 and f"Ray worker {rank1} got SIGTERM" in out, out[-5000:]
    assert re.search(rf"Resumed from \S+/checkpoints/step_{step} at step {step}\b", out), out[-5000:]
    assert out.count("Started training worker group") == 2, "one restart of the group, not counted"
    assert_same_metrics(read_metrics(run_dir), torchrun_reference)


def test_sweep_of_two_ray_jobs_prints_summary(ray_cluster: RayCluster, tmp_path: Path) -> None:  # noqa: F811
    """Through the Ray Client address this time (ray://): the Jobs API found from it."""
    res = run_cli(
        [
            "-m",  # Hydra's flags come before the overrides
            *ray_args(
                ray_cluster, "optim.lr=1e-3,3e-3", "train.max_steps=2", "train.eval_interval=0",
            "train.checkpoint_interval=0", "train.progress=false", "launcher.max_parallel=2",
            f"launcher.run_dir={tmp_path / 'runs'}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                address=ray_cluster.client_address,
            ),
        ],
        cwd=tmp_path,
        env=user_env(ray_cluster),
    )  # fmt: skip
    assert res.returncode == 0, (res.stdout + res.stderr)[-5000:]
    table = res.stdout[res.stdout.index("Sweep summary (best first):") :].splitlines()
    rows = [ln for ln in table[2:4]]
    assert len(rows) == 2 and rows[0].startswith("*"), table
    assert all("COMPLETED" in r for r in rows), table
    assert {"optim.lr=0.001", "optim.lr=0.003"} <= set(" ".join(rows).split())
    for job in ("0", "1"):
        cfg = (tmp_path / "sweep" / job / "config.yaml").read_text()
        assert "launcher" in cfg and ray_cluster.token not in cfg
    assert len(list((tmp_path / "runs").glob("*/metrics.jsonl"))) == 2


def test_bad_data_inside_the_job_exits_2_without_retry(
    ray_cluster: RayCluster,  # noqa: F811
    tmp_path: Path,
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "response": "b"}\n{not json\n')
    res = run_cli(
        ray_args(
            ray_cluster, *TRAIN, f"dataset.path={bad}", "launcher.max_failures=3",
            f"storage.output_uri={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ),
        cwd=tmp_path,
        env=user_env(ray_cluster),
    )  # fmt: skip
    out = res.stdout + res.stderr
    assert res.returncode == 2, out[-5000:]
    assert str(bad) in out and "line 2" in out  # the DataError names the file and line
    assert "driver exit code 2" in out and "not retried" in out
    assert out.count("Started training worker group") == 1, out[-5000:]


def test_ctrl_c_leaves_job_then_framework_jobs_cancels_it(
    ray_cluster: RayCluster,  # noqa: F811
    tmp_path: Path,
) -> None:
    args = ray_args(
        ray_cluster, "hardware.nproc_per_node=2", "train.max_steps=2000", "train.eval_interval=0",
        "train.progress=false", f"storage.output_uri={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )  # fmt: skip
    proc, lines = _popen(args, tmp_path, user_env(ray_cluster))
    try:
        name = _wait_for(
            lambda: next(
                (m.group(1) for ln in lines if (m := re.search(r"Submitted Ray job (\S+)", ln))), None
            ),
            120,
            "the submission",
            lines,
        )
        _wait_for(lambda: (tmp_path / "run" / "metrics.jsonl").is_file(), 400, "training", lines)
        proc.send_signal(signal.SIGINT)  # Ctrl-C; not on a terminal, `ask` leaves the job running
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines)
    assert rc == 130, out[-3000:]
    assert "leaving the Ray job(s) running" in out

    def jobs(*argv: str) -> subprocess.CompletedProcess[str]:
        env = shell_env(**user_env(ray_cluster))
        cmd = [
            sys.executable,
            "-m",
            "hydra_plugins.kubernetes_launcher.cli",
            *argv,
            "--ray",
            ray_cluster.address,
        ]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)

    listed = jobs("list")
    assert listed.returncode == 0 and name in listed.stdout and "RUNNING" in listed.stdout, listed
    status = jobs("status", name)
    assert status.returncode == 0 and "RUNNING" in status.stdout, status
    logs = jobs("logs", name)
    assert "World: 2 process(es)" in logs.stdout, logs.stdout[-3000:]
    cancel = jobs("cancel", name, "--yes")
    assert cancel.returncode == 0, cancel
    client = ray_cluster.client()
    _wait_for(lambda: client.get_job_status(name) == "STOPPED", 60, "STOPPED", lines)  # type: ignore[attr-defined]
    assert jobs("status", name).returncode == 143

    def running() -> list[str]:
        left = []
        for pid in ray_cluster.pids():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if cmd.startswith(("ray::RayTrainWorker", "ray::TrainController")) or "-m framework" in cmd:
                left.append(cmd)
        return left

    _wait_for(lambda: not running(), 60, "the job's processes to end", [str(running())])


def test_rayjob_entrypoint_trains_on_the_cluster(ray_cluster: RayCluster, tmp_path: Path) -> None:  # noqa: F811
    """The command a RayJob's submitter runs (``ray job submit -- <spec.entrypoint>``), with the ConfigMap mounted
    where the head pod has it: here /etc/framework is a local directory, as tests/k8s/pods.py maps volumes."""
    import yaml
    from hydra_plugins.kubernetes_launcher._render import job_name, main_object, render

    from tests.k8s.compose import compose

    run_dir = tmp_path / "run"
    cfg = compose(
        "launcher.backend=rayjob", "hardware.nproc_per_node=2", "train.max_steps=3", "train.eval_interval=0",
        "train.checkpoint_interval=0", "train.progress=false", f"storage.output_uri={run_dir}",
        f"launcher.run_dir={tmp_path / 'runs'}",
    )  # fmt: skip
    name = job_name(str(cfg.run_name), sweep_id="s0ray", job_index=0, backend="rayjob", nodes=1)
    objs = render(cfg, job_name=name, sweep_id="s0ray", job_index=0, git_commit=None)
    config_map = next(o for o in objs if o["kind"] == "ConfigMap")
    etc = tmp_path / "etc-framework"
    etc.mkdir()
    (etc / "config.yaml").write_text(config_map["data"]["config.yaml"])
    entrypoint = main_object(objs)["spec"]["entrypoint"]
    assert "--config-path=/etc/framework" in entrypoint and "launcher.address=auto" in entrypoint
    command = entrypoint.replace("/etc/framework", str(etc))
    env = shell_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=ray_cluster.token)  # the submitter's
    res = subprocess.run(
        [str(Path(sys.executable).parent / "ray"), "job", "submit", f"--address={ray_cluster.address}",
         f"--submission-id={name}", "--", *shlex.split(command)],  # as the submitter's shell splits it
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-5000:]
    assert "World: 2 process(es)" in out
    assert [m["step"] for m in read_metrics(run_dir) if "loss" in m] == [1, 2, 3]
    ran = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert ran["launcher"]["name"] == "ray" and ran["launcher"]["backend"] == "rayjob"


def test_s3_run_dir_with_credentials_only_on_the_cluster(
    ray_cluster: RayCluster,  # noqa: F811
    s3_bucket: str,
    s3_client: Any,
    tmp_path: Path,
) -> None:
    """MinIO/S3 as for every run: the endpoint and keys are the cluster's (its pods' Secrets), never the job's."""
    from tests.s3_fixtures import FAKE_SECRET

    uri = f"{s3_bucket}/runs/exp"
    res = run_cli(
        ray_args(ray_cluster, "storage=s3", f"storage.output_uri={uri}", "train.max_steps=3",
                 "train.eval_interval=0", "train.checkpoint_interval=0", "train.progress=false",
                 f"hydra.sweep.dir={tmp_path / 'sweep'}"),
        cwd=tmp_path,
        env=user_env(ray_cluster),
    )  # fmt: skip
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-5000:]
    bucket = s3_bucket.removeprefix("s3://")
    body = s3_client.get_object(Bucket=bucket, Key="runs/exp/metrics.jsonl")["Body"].read().decode()
    assert [json.loads(ln)["step"] for ln in body.splitlines() if '"loss"' in ln] == [1, 2, 3]
    latest = s3_client.get_object(Bucket=bucket, Key="runs/exp/checkpoints/latest")["Body"].read().decode()
    assert latest.strip() == "step_3"
    name = re.search(r"Submitted Ray job (\S+)", out)
    assert name is not None
    info = ray_cluster.client().get_job_info(name.group(1))  # type: ignore[attr-defined]
    assert not [k for k in info.runtime_env.get("env_vars", {}) if k.startswith("AWS_")]
    logs = ray_cluster.client().get_job_logs(name.group(1))  # type: ignore[attr-defined]
    for text in (json.dumps(info.runtime_env), logs, out):
        assert FAKE_SECRET not in text
