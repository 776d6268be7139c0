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
from datetime import datetime, timezone

from hydra_plugins.kubernetes_launcher._client import default_namespace  # the kubernetes client loads lazily

from framework.errors import EXIT_INTERRUPTED


def _age(created: str) -> str:
    try:
        t = datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return "-"
    s = int((datetime.now(timezone.utc) - t).total_seconds())
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s // n}{unit}"
    return f"{s}s"


def _table(rows: list[tuple[str, ...]]) -> str:
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


def run(args: argparse.Namespace) -> int:
    if getattr(args, "ray", None):  # launcher=ray jobs: the same verbs through the Ray Jobs API
        from hydra_plugins.ray_launcher.cli import run as run_ray

        return run_ray(args)
    from hydra_plugins.kubernetes_launcher._client import JobClient

    ns = args.namespace or default_namespace(args.context)
    jobs = JobClient(ns, context=args.context)
    rows: list[tuple[str, ...]]
    if args.command == "list":
        rows = [("NAME", "KIND", "PHASE", "AGE", "RUN", "OVERRIDES")]
        for j in jobs.list():
            rows.append(
                (
                    j.name,
                    j.kind,
                    j.phase,
                    _age(j.created),
                    j.annotations.get("framework.io/run-name", "-"),
                    j.annotations.get("framework.io/overrides", "") or "-",
                )
            )
        print(_table(rows) if len(rows) > 1 else f"No training jobs in namespace {ns}")
    elif args.command == "status":
        info = jobs.status(args.name)
        print(f"{info.kind} {ns}/{info.name}: {info.describe()}")
        if info.pods:
            rows = [("POD", "NODE RANK", "PHASE", "REASON")]
            rows += [
                (p.name, str(p.node_rank if p.node_rank is not None else "-"), p.phase, p.reason or "")
                for p in info.pods
            ]
            print(_table(rows))
        if info.permanent_failure:
            return 2
        return 1 if info.phase == "Failed" else 0
    elif args.command == "defaults":
        from hydra_plugins.kubernetes_launcher import _chart_defaults

        print(" ".join(_chart_defaults.read(jobs, args.configmap)))
    elif args.command == "gc":
        gone = jobs.gc(dry_run=args.dry_run)
        verb = "Would delete" if args.dry_run else "Deleted"
        print("\n".join(f"{verb} {ns}/{g}" for g in gone) if gone else f"Nothing to clean up in {ns}")
    elif args.command == "logs":
        for line in jobs.logs(args.name, node_rank=args.rank, follow=args.follow):
            print(line, flush=True)
    elif args.command == "cancel":
        ask = not args.yes and sys.stdin.isatty()
        if ask and input(f"Delete {ns}/{args.name} and its pods? [y/N] ").strip().lower() not in ("y", "yes"):
            print("Not deleted")
            return 0
        jobs.cancel(args.name)
        print(f"Deleted {ns}/{args.name}")
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
