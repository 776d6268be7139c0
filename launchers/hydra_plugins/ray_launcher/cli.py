"""``framework-jobs ... --ray ADDRESS``: the same verbs for the Ray jobs launcher=ray submitted (Jobs API).

    framework-jobs list --ray http://127.0.0.1:8265
    framework-jobs status NAME --ray ADDRESS        # exit 0 running/succeeded, 2 bad config, 143 stopped, 1 failed
    framework-jobs logs NAME --ray ADDRESS [--follow]
    framework-jobs cancel NAME --ray ADDRESS [--yes]

``framework-jobs`` (hydra_plugins.kubernetes_launcher.cli) parses the command line and hands it here when
``--ray`` (or $FRAMEWORK_RAY_ADDRESS) names a cluster. The token comes from $RAY_AUTH_TOKEN or ~/.ray/auth_token.
"""

from __future__ import annotations

import argparse
import sys
import threading
from datetime import datetime, timezone

from hydra_plugins.kubernetes_launcher.cli import VERBS, age


def _age(start_ms: int | None) -> str:
    if not start_ms:
        return "-"
    return age(datetime.now(timezone.utc).timestamp() - start_ms / 1000)


class RayJobsView:
    """framework-jobs' verbs (hydra_plugins.kubernetes_launcher.cli.VERBS) over a Ray cluster's jobs."""

    header = ("NAME", "STATUS", "AGE", "RUN", "OVERRIDES")
    not_cancelled = "Not stopped"

    def __init__(self, address: str) -> None:
        from hydra_plugins.ray_launcher._client import RayJobs

        self.address = address
        self.client = RayJobs(address)
        self.empty = f"No training jobs on the Ray cluster at {address}"

    def rows(self) -> list[tuple[str, ...]]:
        return [
            (
                j.name,
                j.status,
                _age(j.start_time),
                j.metadata.get("framework.io/run-name", "-"),
                j.metadata.get("framework.io/overrides", "") or "-",
            )
            for j in self.client.list()
        ]

    def status(self, name: str) -> int:
        info = self.client.status(name)
        print(f"Ray job {info.name} at {self.address}: {info.describe()}")
        run_dir = info.metadata.get("framework.io/run-dir")
        if run_dir:
            print(f"run directory: {run_dir}")
        return info.outcome_code if info.done else 0

    def logs(self, name: str, args: argparse.Namespace) -> None:
        if args.follow:
            stop = threading.Event()
            try:
                self.client.follow_logs(name, lambda line: print(line, flush=True), stop)
            finally:
                stop.set()
        else:
            sys.stdout.write(self.client.logs(name))
            sys.stdout.flush()

    def cancel_prompt(self, name: str) -> str:
        return f"Stop Ray job {name} at {self.address}? [y/N] "

    def cancel(self, name: str) -> str:
        stopped = self.client.stop(name)
        return f"Stopped Ray job {name}" if stopped else f"Ray job {name} was not running"


def run(args: argparse.Namespace) -> int:
    jobs = RayJobsView(str(args.ray))  # connects: an unreachable cluster is reported whatever the verb
    verb = VERBS.get(args.command)
    return verb(jobs, args) if verb is not None else 0
