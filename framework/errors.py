"""Error types and the exit-code contract (DESIGN.md): 0 done, 2 bad config or data, 1 runtime, 143 SIGTERM."""

from __future__ import annotations

from collections.abc import Iterable

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2  # permanent: a retry cannot help (Kubernetes fails the job at once)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
EXIT_KILLED = 137  # 128 + SIGKILL: the OOM killer, or a kill after the grace period
EXIT_PREEMPTED = 143  # 128 + SIGTERM, after a checkpoint: retryable, a restart resumes


class FrameworkError(Exception):
    """Base of every error the framework reports to the user without a traceback."""

    exit_code = EXIT_RUNTIME


class ConfigError(FrameworkError):
    """The configuration is invalid. Permanent: a retry cannot help. Collects every problem at once."""

    exit_code = EXIT_USAGE

    def __init__(self, problems: Iterable[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__(self._render())

    def _render(self) -> str:
        if len(self.problems) == 1:
            return f"Invalid config: {self.problems[0]}"
        body = "\n".join(f"  - {p}" for p in self.problems)
        return f"Invalid config ({len(self.problems)} problems):\n{body}"


class DataError(FrameworkError):
    """Input data is missing or malformed (names the file and line). Permanent."""

    exit_code = EXIT_USAGE


class CheckpointError(FrameworkError):
    """A checkpoint cannot be loaded (missing files, or incompatible with the config)."""

    exit_code = EXIT_RUNTIME


class Preempted(FrameworkError):
    """SIGTERM/SIGINT arrived; a checkpoint was saved. Retryable: a restart resumes from it."""

    exit_code = EXIT_PREEMPTED


class UsageError(FrameworkError):
    """A command-line argument names something that is missing or unusable (a path, a step). Permanent."""

    exit_code = EXIT_USAGE


# A local torchrun job (``hardware.nproc_per_node > 1``): the parent sets this to a directory where each worker
# that fails records its exit code and message as ``rank<N>.json``, so the parent can exit with the workers'
# code (torchrun itself reports any worker failure as its own exit 1) and print the message once.
FAILURE_DIR_ENV = "FRAMEWORK_FAILURE_DIR"


def record_failure(code: int, message: str) -> bool:
    """In a worker of a local torchrun job, record why it fails for the parent; True when recorded."""
    import json
    import os

    directory, rank = os.environ.get(FAILURE_DIR_ENV), os.environ.get("RANK")
    if not directory or rank is None:
        return False
    path = os.path.join(directory, f"rank{rank}.json")
    try:
        with open(f"{path}.tmp", "w") as f:
            json.dump({"rank": int(rank), "exit_code": code, "message": message}, f)
        os.replace(f"{path}.tmp", path)  # the parent never reads half a record
    except OSError:
        return False
    return True


def read_failures(directory: str) -> list[dict[str, object]]:
    """The failure records of a local torchrun job's workers, by rank (unreadable ones skipped)."""
    import json
    from pathlib import Path

    records = []
    for path in Path(directory).glob("rank*.json"):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and isinstance(record.get("exit_code"), int):
            records.append(record)
    return sorted(records, key=lambda r: int(r.get("rank", 0)))  # type: ignore[call-overload]
