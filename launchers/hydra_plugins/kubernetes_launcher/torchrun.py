"""``framework-torchrun``: torchrun whose exit code is the training processes' own, for Kubernetes to act on.

Plain torchrun exits 1 whenever a worker fails, so a pod could not tell the cluster "bad config, never retry"
(a worker exited 2) from "preempted, retry" (exit 143). This wrapper runs torchrun in-process with the same
arguments and exits with:

    2    any worker exited 2 (bad config or data): every backend fails the job at once
    143  the pod got SIGTERM (or every worker exited 143 after checkpointing): retried, not counted
    137  a worker was SIGKILLed (the kernel's OOM killer, most often): retried and counted, reported as OOM
    1    any other failure (``$FRAMEWORK_CRASH_EXIT`` instead where set: PyTorchJob's ExitCode policy retries
         only 128-255, so it gets 200);  0 success

Restart budget (``$FRAMEWORK_RESTART_BUDGET``, set for PyTorchJob, whose operator ignores backoffLimit under
ExitCode): node rank 0 keeps ``restarts.json`` in the run dir ``$FRAMEWORK_RUN_DIR``. Every incident restarts
node rank 0 too (its collectives break), so counting there counts each incident once; an attempt that ended
143 is not counted. Over budget, node rank 0 exits 1, which ExitCode treats as permanent.

Usage is torchrun's: ``framework-torchrun --nnodes=2 --nproc-per-node=8 ... -m framework ...``.
torch is imported inside main(): Hydra imports this module while scanning plugins.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterable
from typing import Any

from framework.errors import EXIT_KILLED, EXIT_PREEMPTED, EXIT_USAGE, FAILURE_DIR_ENV

LEDGER = "restarts.json"


def exit_code(worker_codes: Iterable[int], crash: int = 1) -> int:
    """The pod's exit code from its workers' (negative: killed by that signal)."""
    codes = list(worker_codes)
    if EXIT_USAGE in codes:
        return EXIT_USAGE
    if codes and all(c in (EXIT_PREEMPTED, -signal.SIGTERM) for c in codes):
        return EXIT_PREEMPTED
    if any(c in (EXIT_KILLED, -signal.SIGKILL) for c in codes):
        return EXIT_KILLED
    return crash if codes else 0


def _storage(argv: list[str]) -> Any:
    """framework.storage configured from the job's config (S3 endpoint ...), as the workers will use it."""
    from framework import storage

    path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config-path=")), None)
    name = next((a.split("=", 1)[1] for a in argv if a.startswith("--config-name=")), "config")
    if path:
        import yaml

        with open(os.path.join(path, f"{name}.yaml")) as f:
            cfg = yaml.safe_load(f) or {}
        storage.configure_from_config(_Attrs(cfg.get("storage") or {}))
    return storage


class _Attrs(dict):  # type: ignore[type-arg]
    """A mapping read by attribute, as configure_from_config reads a StorageConfig."""

    def __getattr__(self, key: str) -> Any:
        if key not in self:
            raise AttributeError(key)  # configure_from_config then uses its default
        return self[key]


def charge_budget(run_dir: str, budget: int, argv: list[str]) -> tuple[bool, dict[str, Any]]:
    """At node rank 0's start: count the previous attempt unless it ended 143; (within budget, the ledger)."""
    storage = _storage(argv)
    uri = storage.join(run_dir, LEDGER)
    ledger: dict[str, Any] = {"attempts": 0, "incidents": 0, "last_exit": None}
    if storage.exists(uri):
        ledger.update(json.loads(storage.read_text(uri)))
        # No exit recorded: node rank 0 itself was killed (SIGKILL, node loss) - an incident too.
        if ledger["attempts"] and ledger["last_exit"] not in (0, EXIT_PREEMPTED):
            ledger["incidents"] += 1
    ledger["attempts"] += 1
    ledger["last_exit"] = None
    storage.write_text_atomic(uri, json.dumps(ledger))
    return ledger["incidents"] <= budget, ledger


def record_exit(run_dir: str, code: int, argv: list[str]) -> None:
    storage = _storage(argv)
    uri = storage.join(run_dir, LEDGER)
    ledger = json.loads(storage.read_text(uri)) if storage.exists(uri) else {"attempts": 1, "incidents": 0}
    ledger["last_exit"] = code
    storage.write_text_atomic(uri, json.dumps(ledger))


def _node_rank(args: Any) -> int:
    try:
        return int(args.node_rank)
    except (TypeError, ValueError):
        return 0


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    crash = int(os.environ.get("FRAMEWORK_CRASH_EXIT") or 1)
    budget, run_dir = os.environ.get("FRAMEWORK_RESTART_BUDGET"), os.environ.get("FRAMEWORK_RUN_DIR")
    keeps_budget = budget is not None and bool(run_dir) and _node_rank(args) == 0
    if keeps_budget:
        assert run_dir is not None and budget is not None
        within, ledger = charge_budget(run_dir, int(budget), argv)
        if not within:
            print(
                f"framework-torchrun: restart budget exhausted ({ledger['incidents']} incidents > "
                f"launcher.backoff_limit={budget}, ledger {run_dir}/{LEDGER}); failing the job",
                file=sys.stderr,
                flush=True,
            )
            return 1  # permanent under PyTorchJob's ExitCode policy
    code = 0
    try:
        run(args)
    except ChildFailedError as e:
        code = exit_code((f.exitcode for f in e.failures.values()), crash)
        # A local job's parent (framework.__main__.spawn_torchrun) prints the workers' rejection once itself.
        if not (code == EXIT_USAGE and os.environ.get(FAILURE_DIR_ENV)):
            # torchrun's root-cause table: rank, exit code, error file
            print(str(e), file=sys.stderr, flush=True)
    except SignalException as e:  # the agent already stopped the workers (they checkpoint on SIGTERM)
        print(f"framework-torchrun: stopped by {e.sigval.name}", file=sys.stderr, flush=True)
        code = 128 + int(e.sigval)
    if keeps_budget:
        assert run_dir is not None
        record_exit(run_dir, code, argv)
    return code


if __name__ == "__main__":
    sys.exit(main())
