"""``framework-jobs`` (or ``python -m hydra_plugins.kubernetes_launcher.cli``): the jobs the launcher submitted.

    framework-jobs list [-n NAMESPACE]
    framework-jobs status NAME [-n NAMESPACE]
    framework-jobs logs NAME [-n NAMESPACE] [--follow] [--rank NODE_RANK]
    framework-jobs cancel NAME [-n NAMESPACE] [--yes]
    framework-jobs list|status|logs|cancel ... --ray ADDRESS   # launcher=ray jobs (hydra_plugins.ray_launcher.cli)
    framework-jobs gc [-n NAMESPACE] [--dry-run]     # what `kubectl apply -f manifests.yaml` left behind
    framework-jobs defaults [-n NAMESPACE]           # the chart release's launcher settings, as overrides

Exit codes: 0 ok, 1 an API or cluster error (one line on stderr), 2 usage.
"""

import argparse
import os
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Protocol

from hydra_plugins.kubernetes_launcher._client import default_namespace  # the kubernetes client loads lazily

from framework.errors import EXIT_INTERRUPTED


def age(seconds: float) -> str:
    """``3d``, ``5h``, ``12m``, ``40s``: the largest whole unit."""
    s = int(seconds)
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s // n}{unit}"
    return f"{s}s"


def _age(created: str) -> str:
    try:
        t = datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return "-"
    return age((datetime.now(timezone.utc) - t).total_seconds())


def table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="framework-jobs",
        description="Training jobs submitted by launcher=kubernetes (or, with --ray, launcher=ray).",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-n", "--namespace", help="namespace (default: the kubeconfig context's, as launcher.namespace=null)"
    )
    common.add_argument("--context", help="kubeconfig context (default: the current one, or in-cluster)")
    common.add_argument(
        "--ray",
        default=os.environ.get("FRAMEWORK_RAY_ADDRESS"),
        metavar="ADDRESS",
        help="a Ray cluster (http://host:8265, ray://host:10001, auto): its launcher=ray jobs instead "
        "(default: $FRAMEWORK_RAY_ADDRESS)",
    )
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", parents=[common], help="list the jobs in the namespace")
    gc = sub.add_parser(
        "gc",
        parents=[common],
        help="delete ConfigMaps/Services/... of jobs that no longer exist (kubectl apply)",
    )
    gc.add_argument("--dry-run", action="store_true", help="only list what would be deleted")
    defaults = sub.add_parser(
        "defaults",
        parents=[common],
        help="print the launcher settings of the namespace's dockerfiles/chart release as Hydra overrides",
    )
    defaults.add_argument("--configmap", default="framework-launcher-defaults", help="launcherDefaults.name")
    for name, text in (
        ("status", "phase and pods of a job"),
        ("logs", "a pod's logs"),
        ("cancel", "delete a job"),
    ):
        sp = sub.add_parser(name, parents=[common], help=text)
        sp.add_argument("name", help="job name (framework-jobs list shows them)")
        if name == "logs":
            sp.add_argument("-f", "--follow", action="store_true", help="stream until the pod ends")
            sp.add_argument("--rank", type=int, default=0, help="node rank whose pod to read (default 0)")
        if name == "cancel":
            sp.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    return p


class Jobs(Protocol):
    """One launcher's jobs behind the shared verbs (list, status, logs, cancel): Kubernetes here, Ray in
    hydra_plugins.ray_launcher.cli."""

    header: tuple[str, ...]  # the list table's columns
    empty: str  # what list prints when there are no jobs
    not_cancelled: str  # what cancel prints when the user says no

    def rows(self) -> list[tuple[str, ...]]: ...

    def status(self, name: str) -> int:
        """Print the job's state; its exit code (0 running or succeeded)."""

    def logs(self, name: str, args: argparse.Namespace) -> None: ...

    def cancel_prompt(self, name: str) -> str: ...

    def cancel(self, name: str) -> str:
        """Stop the job; the line to print."""


def _list(jobs: Jobs, args: argparse.Namespace) -> int:
    rows = [jobs.header, *jobs.rows()]
    print(table(rows) if len(rows) > 1 else jobs.empty)
    return 0


def _status(jobs: Jobs, args: argparse.Namespace) -> int:
    return jobs.status(args.name)


def _logs(jobs: Jobs, args: argparse.Namespace) -> int:
    jobs.logs(args.name, args)
    return 0


def _cancel(jobs: Jobs, args: argparse.Namespace) -> int:
    ask = not args.yes and sys.stdin.isatty()
    if ask and input(jobs.cancel_prompt(args.name)).strip().lower() not in ("y", "yes"):
        print(jobs.not_cancelled)
        return 0
    print(jobs.cancel(args.name))
    return 0


# The verbs every launcher's jobs answer (framework-jobs VERB ... [--ray ADDRESS]), with parser()'s arguments.
VERBS: dict[str, Callable[[Jobs, argparse.Namespace], int]] = {
    "list": _list,
    "status": _status,
    "logs": _logs,
    "cancel": _cancel,
}


class KubernetesJobs:
    """framework-jobs' verbs over the namespace's jobs (JobClient)."""

    header = ("NAME", "KIND", "PHASE", "AGE", "RUN", "OVERRIDES")
    not_cancelled = "Not deleted"

    def __init__(self, args: argparse.Namespace) -> None:
        from hydra_plugins.kubernetes_launcher._client import JobClient

        self.ns = args.namespace or default_namespace(args.context)
        self.client = JobClient(self.ns, context=args.context)
        self.empty = f"No training jobs in namespace {self.ns}"

    def rows(self) -> list[tuple[str, ...]]:
        return [
            (
                j.name,
                j.kind,
                j.phase,
                _age(j.created),
                j.annotations.get("framework.io/run-name", "-"),
                j.annotations.get("framework.io/overrides", "") or "-",
            )
            for j in self.client.list()
        ]

    def status(self, name: str) -> int:
        info = self.client.status(name)
        print(f"{info.kind} {self.ns}/{info.name}: {info.describe()}")
        if info.pods:
            rows: list[tuple[str, ...]] = [("POD", "NODE RANK", "PHASE", "REASON")]
            rows += [
                (p.name, str(p.node_rank if p.node_rank is not None else "-"), p.phase, p.reason or "")
                for p in info.pods
            ]
            print(table(rows))
        if info.permanent_failure:
            return 2
        return 1 if info.phase == "Failed" else 0

    def logs(self, name: str, args: argparse.Namespace) -> None:
        for line in self.client.logs(name, node_rank=args.rank, follow=args.follow):
            print(line, flush=True)

    def cancel_prompt(self, name: str) -> str:
        return f"Delete {self.ns}/{name} and its pods? [y/N] "

    def cancel(self, name: str) -> str:
        self.client.cancel(name)
        return f"Deleted {self.ns}/{name}"


def run(args: argparse.Namespace) -> int:
    if getattr(args, "ray", None):  # launcher=ray jobs: the same verbs through the Ray Jobs API
        from hydra_plugins.ray_launcher.cli import run as run_ray

        return run_ray(args)
    jobs = KubernetesJobs(args)
    if args.command in VERBS:
        return VERBS[args.command](jobs, args)
    if args.command == "defaults":
        from hydra_plugins.kubernetes_launcher import _chart_defaults

        print(" ".join(_chart_defaults.read(jobs.client, args.configmap)))
    elif args.command == "gc":
        gone = jobs.client.gc(dry_run=args.dry_run)
        verb = "Would delete" if args.dry_run else "Deleted"
        print(
            "\n".join(f"{verb} {jobs.ns}/{g}" for g in gone) if gone else f"Nothing to clean up in {jobs.ns}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    from framework.errors import FrameworkError

    args = parser().parse_args(argv)
    try:
        return run(args)
    except FrameworkError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
