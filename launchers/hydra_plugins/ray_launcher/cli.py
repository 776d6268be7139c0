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


def _age(start_ms: int | None) -> str:
    if not start_ms:
        return "-"
    s = int(datetime.now(timezone.utc).timestamp() - start_ms / 1000)
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s // n}{unit}"
    return f"{s}s"


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def run(args: argparse.Namespace) -> int:
    from hydra_plugins.ray_launcher._client import RayJobs

    jobs = RayJobs(str(args.ray))
    if args.command == "list":
        rows: list[tuple[str, ...]] = [("NAME", "STATUS", "AGE", "RUN", "OVERRIDES")]
        for j in jobs.list():
            rows.append(
                (
                    j.name,
                    j.status,
                    _age(j.start_time),
                    j.metadata.get("framework.io/run-name", "-"),
                    j.metadata.get("framework.io/overrides", "") or "-",
                )
            )
        print(_table(rows) if len(rows) > 1 else f"No training jobs on the Ray cluster at {args.ray}")
    elif args.command == "status":
        info = jobs.status(args.name)
        print(f"Ray job {info.name} at {args.ray}: {info.describe()}")
        run_dir = info.metadata.get("framework.io/run-dir")
        if run_dir:
            print(f"run directory: {run_dir}")
        return info.outcome_code if info.done else 0
    elif args.command == "logs":
        if args.follow:
            stop = threading.Event()
            try:
                jobs.follow_logs(args.name, lambda line: print(line, flush=True), stop)
            finally:
                stop.set()
        else:
            sys.stdout.write(jobs.logs(args.name))
            sys.stdout.flush()
    elif args.command == "cancel":
        ask = not args.yes and sys.stdin.isatty()
        if ask and input(f"Stop Ray job {args.name} at {args.ray}? [y/N] ").strip().lower() not in (
            "y",
            "yes",
        ):
            print("Not stopped")
            return 0
        stopped = jobs.stop(args.name)
        print(f"Stopped Ray job {args.name}" if stopped else f"Ray job {args.name} was not running")
    return 0
