"""A real local Ray cluster for the launcher=ray tests: ``ray start --head`` on 127.0.0.1 with token auth on.

Every port is a free one picked here (several engineers share the machine); RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
makes Ray keep its node address on loopback, so nothing listens beyond 127.0.0.1. The cluster is stopped by the
PIDs of its own processes (those naming its temp dir, and their children), never by a broad ``ray stop``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import ROOT, shell_env

BIN = Path(sys.executable).parent


@dataclass
class RayCluster:
    address: str  # Jobs API, http://127.0.0.1:<port>
    client_address: str  # Ray Client, ray://127.0.0.1:<port>
    token: str
    temp_dir: Path
    env: dict[str, str]  # what a user's shell needs to reach the cluster (the token included)

    def pids(self) -> set[int]:
        return cluster_pids(self.temp_dir)

    def client(self) -> object:
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.address, headers={"Authorization": f"Bearer {self.token}"})


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _procs() -> dict[int, tuple[int, str]]:
    out = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        out[int(p)] = (ppid, cmd)
    return out


def cluster_pids(temp_dir: Path) -> set[int]:
    """The processes of the cluster rooted at ``temp_dir``: those naming it, and all their descendants."""
    procs = _procs()
    me = os.getpid()
    tree = {p for p, (_, cmd) in procs.items() if str(temp_dir) in cmd and p != me}
    grew = True
    while grew:
        grew = False
        for p, (ppid, _) in procs.items():
            if ppid in tree and p not in tree:
                tree.add(p)
                grew = True
    return tree


def stop_cluster(temp_dir: Path) -> None:
    pids = cluster_pids(temp_dir)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)
        deadline = time.time() + 10
        while time.time() < deadline and any(Path(f"/proc/{p}").exists() and _alive(p) for p in pids):
            time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def start_cluster(extra_env: dict[str, str] | None = None) -> RayCluster:
    """``extra_env``: what the cluster's own processes have (on Kubernetes: its pods' Secret references)."""
    import secrets

    token = secrets.token_hex(16)
    # A short temp dir: Ray's unix sockets live under it and paths are limited to ~107 characters.
    temp_dir = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    gcs, dash, client, agent_http, agent_grpc, metrics, runtime_env, node_mgr = free_ports(8)
    env = {
        **shell_env(),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # the job's `python` is this venv's
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # node address 127.0.0.1: every server on loopback
        "RAY_USAGE_STATS_ENABLED": "0",
        "FRAMEWORK_CACHE": str(temp_dir / "cache"),
        "OMP_NUM_THREADS": "1",
        **(extra_env or {}),
    }
    cmd = [
        str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}",
        f"--node-manager-port={node_mgr}", "--num-cpus=4", "--memory=16000000000",
        "--object-store-memory=300000000", f"--temp-dir={temp_dir}", "--disable-usage-stats",
    ]  # fmt: skip
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, check=False)
    if res.returncode != 0:
        stop_cluster(temp_dir)
        raise RuntimeError(
            f"ray start failed ({res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
        )
    return RayCluster(
        address=f"http://127.0.0.1:{dash}",
        client_address=f"ray://127.0.0.1:{client}",
        token=token,
        temp_dir=temp_dir,
        env={"RAY_AUTH_TOKEN": token, "RAY_AUTH_MODE": "token"},
    )


@pytest.fixture(scope="session")
def ray_cluster(s3_server: str) -> Iterator[RayCluster]:
    """The cluster; its processes hold the S3 (moto) credentials, as a KubeRay cluster's pods would."""
    from tests.s3_fixtures import aws_env

    cluster = start_cluster(aws_env(s3_server))
    try:
        yield cluster
    finally:
        stop_cluster(cluster.temp_dir)
        shutil.rmtree(cluster.temp_dir, ignore_errors=True)


def listening_addresses(pids: set[int]) -> list[str]:
    """``host:port`` of every TCP socket the given processes listen on."""
    import psutil

    out = []
    for pid in pids:
        try:
            conns = psutil.Process(pid).net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        out += [f"{c.laddr.ip}:{c.laddr.port}" for c in conns if c.status == psutil.CONN_LISTEN]
    return out
