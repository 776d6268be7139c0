"""``framework-torchrun``: torchrun whose exit code is the training processes' own, for Kubernetes to act on.

Plain torchrun exits 1 whenever a worker fails, so a pod could not tell the cluster "bad config, never retry"
(a worker exited 2) from "preempted, retry" (exit 143). This wrapper runs torchrun in-process with the same
arguments and exits with:

    2    any worker exited 2 (bad config or data): the Job's podFailurePolicy fails the job at once
    143  the pod got SIGTERM (or a worker exited 143 after checkpointing): retried, not counted
    1    any other failure;  0 success

Usage is torchrun's: ``framework-torchrun --nnodes=2 --nproc-per-node=8 ... -m framework ...``.
torch is imported inside main(): Hydra imports this module while scanning plugins.
"""

import sys
from collections.abc import Iterable

EXIT_USAGE = 2
EXIT_PREEMPTED = 143


def exit_code(worker_codes: Iterable[int]) -> int:
    """The pod's exit code from its workers' (negative: killed by that signal)."""
    codes = list(worker_codes)
    if EXIT_USAGE in codes:
        return EXIT_USAGE
    if codes and all(c in (EXIT_PREEMPTED, -15) for c in codes):
        return EXIT_PREEMPTED
    return 1 if codes else 0


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run(args)
    except ChildFailedError as e:
        print(str(e), file=sys.stderr, flush=True)  # torchrun's root-cause table: rank, exit code, error file
        return exit_code(f.exitcode for f in e.failures.values())
    except SignalException as e:  # the agent already stopped the workers (they checkpoint on SIGTERM)
        print(f"framework-torchrun: stopped by {e.sigval.name}", file=sys.stderr, flush=True)
        return 128 + int(e.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
