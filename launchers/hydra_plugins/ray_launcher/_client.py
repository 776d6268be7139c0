"""The thin Ray Jobs API layer: connect (with the cluster's auth token), submit, status, logs, stop, list.

Every Ray error becomes a framework error type with an ``exit_code`` (errors are data): Ray missing here (2),
the cluster unreachable (1, naming the address and the port-forward that exposes it), a submission the cluster
rejects (2), a job that failed (its driver's exit code). The auth token is sent as a header and never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from framework.errors import EXIT_PREEMPTED, EXIT_RUNTIME, EXIT_USAGE, FrameworkError

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
RUN_NAME_KEY = "framework.io/run-name"  # job metadata: which runs the framework submitted


class RayError(FrameworkError):
    """A Ray cluster or job error; ``exit_code`` is per instance (a job's own code when it failed)."""

    def __init__(self, message: str, exit_code: int = EXIT_RUNTIME) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class RayNotInstalled(RayError):
    def __init__(self, what: str) -> None:
        super().__init__(
            f"{what} needs Ray on this machine, and it is not installed; pip install 'framework[ray]' "
            "(or pip install 'ray[default,train]')",
            EXIT_USAGE,
        )


class ClusterUnreachable(RayError):
    pass


class JobRejected(RayError):
    pass


def import_ray_jobs(what: str = "launcher=ray") -> Any:
    """``ray.job_submission``, or RayNotInstalled (exit 2) saying how to install it."""
    try:
        import ray.job_submission as jobs
    except ImportError as e:
        raise RayNotInstalled(what) from e
    return jobs


# ------------------------------------------------------------------------------------------------ auth
def auth_token() -> str | None:
    """The cluster's token as Ray itself finds it: $RAY_AUTH_TOKEN, the file $RAY_AUTH_TOKEN_PATH, or the user's
    Ray config ~/.ray/auth_token. None when there is none (a cluster without token auth)."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    for path in (os.environ.get("RAY_AUTH_TOKEN_PATH"), str(Path.home() / ".ray" / "auth_token")):
        if path and Path(path).is_file():
            text = Path(path).read_text().strip()
            if text:
                return text
    return None


def auth_headers() -> dict[str, str]:
    token = auth_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


def port_forward_hint(address: str) -> str:
    """What to run so that ``address`` answers, for the usual KubeRay set-up."""
    port = address.rsplit(":", 1)[-1].strip("/") if address.count(":") >= 2 else "8265"
    if not port.isdigit():
        port = "8265"
    if address.startswith("ray://"):
        return (
            f"kubectl port-forward svc/<raycluster>-head-svc {port}:10001 (then launcher.address={address})"
        )
    return f"kubectl port-forward svc/<raycluster>-head-svc {port}:8265 (then launcher.address={address})"


@contextlib.contextmanager
def _address_from_config() -> Iterator[None]:
    """Ray lets $RAY_ADDRESS / $RAY_API_SERVER_ADDRESS override the address passed in; ours is launcher.address."""
    saved = {k: os.environ.pop(k) for k in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS") if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


# ------------------------------------------------------------------------------------------------ client
@dataclass
class JobInfo:
    name: str  # submission id
    status: str  # PENDING | RUNNING | SUCCEEDED | FAILED | STOPPED
    message: str = ""
    exit_code: int | None = None  # the driver's exit code, once it ended
    metadata: dict[str, str] = field(default_factory=dict)
    entrypoint: str = ""
    runtime_env: dict[str, Any] = field(default_factory=dict)
    start_time: int | None = None  # ms since the epoch
    end_time: int | None = None

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    @property
    def outcome_code(self) -> int:
        """The exit code of DESIGN.md this job's end means: 0, 2 (bad config: never retry), 143 (stopped by
        SIGTERM: rerun resumes), else 1."""
        if self.status == "SUCCEEDED":
            return 0
        if self.status == "STOPPED" or self.exit_code in (EXIT_PREEMPTED, -15):
            return EXIT_PREEMPTED
        if self.exit_code == EXIT_USAGE:
            return EXIT_USAGE
        return EXIT_RUNTIME

    def describe(self) -> str:
        if self.exit_code is not None:  # Ray's message then only repeats the code, with the log's tail
            return f"{self.status} (driver exit code {self.exit_code})"
        first = self.message.strip().splitlines()[0] if self.message.strip() else ""
        return f"{self.status}{': ' + first if first else ''}"


def _info(d: Any) -> JobInfo:
    status = getattr(d.status, "value", str(d.status))
    return JobInfo(
        name=str(d.submission_id or d.job_id),
        status=str(status),
        message=str(d.message or ""),
        exit_code=getattr(d, "driver_exit_code", None),
        metadata=dict(d.metadata or {}),
        entrypoint=str(d.entrypoint or ""),
        runtime_env=dict(d.runtime_env or {}),
        start_time=d.start_time,
        end_time=d.end_time,
    )


_RAY_CLIENT_PAUSES_S = (2.0, 5.0)  # between the tries of resolving a ray:// address


class RayJobs:
    """Jobs of one Ray cluster through its Jobs API (``http://host:8265``, ``ray://host:10001`` or ``auto``)."""

    def __init__(self, address: str) -> None:
        token = auth_token()
        if address.startswith("ray://") and token and "RAY_AUTH_MODE" not in os.environ:
            # A Ray Client connection authenticates through Ray's own token loader, which reads these (in this
            # process only; they are never passed on to the job).
            os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token})
        jobs = import_ray_jobs()
        self.address = address
        # A ray:// address is resolved through a Ray Client session, whose server process the cluster starts on
        # demand: on a busy head that can miss Ray's connect timeout once. An http:// address fails at once.
        pauses = _RAY_CLIENT_PAUSES_S if address.startswith("ray://") else ()
        try:
            for pause in (*pauses, None):
                try:
                    with _address_from_config():
                        self._client = jobs.JobSubmissionClient(address, headers=auth_headers())
                    break
                except ConnectionError as e:
                    if pause is None or _is_auth_error(e):
                        raise
                    time.sleep(pause)
        except ConnectionError as e:
            if _is_auth_error(e):
                raise _auth_error(address) from e
            raise ClusterUnreachable(
                f"Ray cluster at {address} is unreachable (no Jobs API answered: {_one_line(e)}); is it running "
                f"and forwarded? e.g. {port_forward_hint(address)}"
            ) from e
        except Exception as e:  # Ray raises its own types per cause; each is reported with the address
            if _is_auth_error(e):
                raise _auth_error(address) from e
            raise ClusterUnreachable(f"cannot connect to the Ray cluster at {address}: {_one_line(e)}") from e

    def submit(
        self,
        *,
        name: str,
        entrypoint: str,
        runtime_env: dict[str, Any],
        metadata: dict[str, str],
    ) -> str:
        try:
            return str(
                self._client.submit_job(
                    entrypoint=entrypoint, submission_id=name, runtime_env=runtime_env, metadata=metadata
                )
            )
        except ConnectionError as e:
            raise ClusterUnreachable(
                f"Ray cluster at {self.address} went away while submitting {name}"
            ) from e
        except RuntimeError as e:  # the Jobs API answered with an error status: it rejected the job
            raise JobRejected(
                f"the Ray cluster at {self.address} rejected job {name}: {_one_line(e)}", EXIT_USAGE
            ) from e

    def status(self, name: str) -> JobInfo:
        try:
            return _info(self._client.get_job_info(name))
        except ConnectionError as e:
            raise ClusterUnreachable(f"Ray cluster at {self.address} is unreachable") from e
        except RuntimeError as e:
            raise RayError(f"no Ray job {name} at {self.address}: {_one_line(e)}") from e

    def list(self) -> list[JobInfo]:
        """The jobs this framework submitted (others on the cluster are left out), newest first."""
        infos = [_info(d) for d in self._client.list_jobs() if d.submission_id]
        mine = [i for i in infos if RUN_NAME_KEY in i.metadata]
        return sorted(mine, key=lambda i: i.start_time or 0, reverse=True)

    def logs(self, name: str) -> str:
        try:
            return str(self._client.get_job_logs(name))
        except RuntimeError as e:
            raise RayError(f"no logs for Ray job {name} at {self.address}: {_one_line(e)}") from e

    def stop(self, name: str) -> bool:
        try:
            return bool(self._client.stop_job(name))
        except RuntimeError as e:
            raise RayError(f"could not stop Ray job {name} at {self.address}: {_one_line(e)}") from e

    def follow_logs(self, name: str, emit: Callable[[str], None], stop: threading.Event) -> None:
        """Stream the job's log (its driver's output, which carries rank 0's) line by line until it ends."""

        async def tail() -> None:
            buf = ""
            async for chunk in self._client.tail_job_logs(name):
                if stop.is_set():
                    return
                buf += chunk
                *lines, buf = buf.split("\n")
                for line in lines:
                    emit(line)
            if buf:
                emit(buf)

        async def run() -> None:
            task = asyncio.ensure_future(tail())
            while not task.done():
                if stop.is_set():
                    task.cancel()
                    break
                await asyncio.sleep(0.2)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

        asyncio.run(run())

    def wait(
        self,
        name: str,
        *,
        poll_s: float,
        stop: threading.Event | None = None,
        on_update: Callable[[str], None] | None = None,
    ) -> JobInfo:
        """Poll until the job ends (or ``stop`` is set); report each status change."""
        last = ""
        while True:
            info = self.status(name)
            if info.status != last and on_update is not None:
                on_update(info.describe())
            last = info.status
            if info.done or (stop is not None and stop.wait(poll_s)):
                return info
            if stop is None:
                threading.Event().wait(poll_s)


def _is_auth_error(e: BaseException) -> bool:
    from ray.exceptions import AuthenticationError

    return isinstance(e, AuthenticationError)


def _auth_error(address: str) -> RayError:
    where = (
        "$RAY_AUTH_TOKEN" if os.environ.get("RAY_AUTH_TOKEN") else "~/.ray/auth_token, $RAY_AUTH_TOKEN_PATH"
    )
    state = "was refused" if auth_token() else "is required and none was found"
    return RayError(
        f"the Ray cluster at {address} uses token authentication and the token {state} (looked in {where}); "
        "set RAY_AUTH_TOKEN (or write ~/.ray/auth_token) to the cluster's token, e.g. from the Kubernetes "
        "Secret that holds it",
        EXIT_USAGE,
    )


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
