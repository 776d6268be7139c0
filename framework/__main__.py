"""``python -m framework [group=option ...] [key=value ...]``: compose, validate, launch, run the recipe.

Exit codes (DESIGN.md): 0 done; 2 bad config, usage or data (never retried); 1 runtime failure; 143 stopped by
SIGTERM after saving a checkpoint. Errors print one clear message without a traceback; ``debug=true`` or
``FRAMEWORK_DEBUG=1`` shows it. ``--validate`` composes and validates the config (every problem at once, exit 2)
and starts nothing.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import (
    ConfigCompositionException,
    HydraException,
    MissingConfigException,
    OverrideParseException,
)
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from framework import distributed as dist
from framework.config import Config, conf_dir, register, resolved_yaml
from framework.errors import (
    EXIT_INTERRUPTED,
    EXIT_PREEMPTED,
    EXIT_RUNTIME,
    EXIT_USAGE,
    FAILURE_DIR_ENV,
    ConfigError,
    FrameworkError,
    Preempted,
    UsageError,
    read_failures,
    record_failure,
)
from framework.hydra_compat import no_mode_compose
from framework.validate import check
from recipes import RECIPES

log = logging.getLogger("framework")
_failed_jobs: list[tuple[str, int]] = []  # (message, exit code) of each sweep job that did not finish
_run_error: list[FrameworkError] = []  # the error of a single run, raised by main() (not through Hydra)
_in_task = False  # an error escaping while False happened in Hydra's set-up: the command line's doing
_validate_only = False  # set by main() for --validate
VALIDATE_FLAG = "--validate"


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def recipe_entry(name: str) -> Any:
    module, _, func = RECIPES[name].partition(":")
    return getattr(importlib.import_module(module), func)


def spawn_torchrun(cfg: DictConfig, run_dir: str) -> dict[str, Any]:
    """Run the recipe in ``nproc_per_node`` local processes under torchrun, each reading the resolved config."""
    from framework import storage
    from framework.rundir import JobResult, read_metrics

    n = cfg.hardware.nproc_per_node
    port = dist.free_port()
    env = dict(os.environ)
    env.update(zip(dist.RENDEZVOUS_ENV, ("127.0.0.1", str(port), "1", "0", str(n)), strict=True))
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="framework-launch-") as tmp:
        (Path(tmp) / "config.yaml").write_text(resolved_yaml(cfg))
        # Each failing worker's exit code and message (errors.record_failure).
        failures = Path(tmp) / "failures"
        failures.mkdir()
        env[FAILURE_DIR_ENV] = str(failures)
        # A remote run directory comes from storage.output_uri in the config; Hydra's own dir stays local.
        hydra_dir = Path(tmp) / "hydra" if storage.is_remote(run_dir) else run_dir
        # framework-torchrun, not torch.distributed.run: plain torchrun exits 1 whatever its workers exited.
        cmd = [
            sys.executable, "-m", "hydra_plugins.kubernetes_launcher.torchrun",
            "--nnodes=1", f"--nproc-per-node={n}", "--node-rank=0",
            "--master-addr=127.0.0.1", f"--master-port={port}",
            "-m", "framework", f"--config-path={tmp}", "--config-name=config",
            "hydra.mode=RUN", f"hydra.run.dir={hydra_dir}", "hydra.output_subdir=null",
        ]  # fmt: skip
        log.info("Starting %d processes under torchrun; run directory: %s", n, run_dir)
        rc = subprocess.call(cmd, env=env)
        records = read_failures(str(failures))
    if rc in (EXIT_PREEMPTED, -signal.SIGTERM):
        raise Preempted(f"torchrun job stopped by SIGTERM; rerun the same command to resume from {run_dir}")
    rejected = [r for r in records if r["exit_code"] == EXIT_USAGE]
    if rc == EXIT_USAGE or rejected:
        if not rejected:  # the workers printed their own message (no record could be written)
            raise ConfigError("a training process rejected the config or data (see its message above)")
        # Every rank usually rejects the same input: its message once (the workers left printing it to us).
        messages = list(dict.fromkeys(str(r["message"]) for r in rejected))
        if len(messages) == 1:
            raise UsageError(messages[0])
        raise UsageError("\n".join(f"rank {r['rank']}: {r['message']}" for r in rejected))
    if rc != 0:
        failed = ", ".join(f"rank {r['rank']} exited {r['exit_code']}" for r in records)
        raise FrameworkError(
            f"torchrun exited with code {rc}{f' ({failed})' if failed else ''}; see the rank logs above"
        )
    rows = read_metrics(run_dir)
    return JobResult.from_metrics("COMPLETED", str(run_dir), rows, wall_s=time.time() - t0).as_dict()


def task(cfg: DictConfig) -> dict[str, Any]:
    """The Hydra task: validate, then run the recipe here, or fan out under torchrun or Ray Train."""
    from framework.launcher_config import sweep_output_uri

    if dist.under_torchrun() and int(os.environ.get("RANK", "0")) != 0:
        logging.getLogger().setLevel(logging.WARNING)
    global _in_task
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    _in_task = True
    try:
        if _validate_only:
            return validate_only(cfg)
        if cfg.launcher.name == "local" and cfg.launcher.dry_run and not dist.under_torchrun():
            # Nothing to render here: a local dry run starts nothing, after the checks a real start makes.
            return validate_only(cfg, dry_run=True)
        cfg = check(cfg, gpu_count=_gpu_count)
        if multirun and cfg.storage.output_uri:  # a sweep job: its own run dir, recorded in its config
            cfg.storage.output_uri = sweep_output_uri(str(cfg.storage.output_uri), HydraConfig.get().job.num)
        from framework.rundir import run_dir_for  # imports storage: only once a run starts

        if cfg.launcher.name == "local" and cfg.hardware.nproc_per_node > 1 and not dist.under_torchrun():
            return spawn_torchrun(cfg, run_dir_for(cfg))
        if cfg.launcher.name == "ray" and not dist.under_torchrun():
            # The Ray job's driver (launcher=ray submitted it): Ray Train's workers run the recipe.
            from hydra_plugins.ray_launcher._train import run_on_ray

            return run_on_ray(cfg, run_dir_for(cfg))
        result: dict[str, Any] = recipe_entry(cfg.recipe.name)(cfg)
        return result
    except FrameworkError as e:
        if not multirun:
            # Returned, not raised through Hydra (which would print its own "Error executing job" line first).
            _run_error.append(e)
            return {"status": "REJECTED" if e.exit_code == EXIT_USAGE else "FAILED", "error": str(e)}
        # One failing sweep job must not stop the others; the summary and the exit code report it.
        log.error("%s", e)
        _failed_jobs.append((str(e), e.exit_code))
        from framework.rundir import JobResult

        status = "REJECTED" if e.exit_code == EXIT_USAGE else "FAILED"
        return JobResult(status, error=str(e)).as_dict()
    finally:
        _in_task = False


def validate_only(cfg: DictConfig, *, dry_run: bool = False) -> dict[str, Any]:
    """``--validate``: every problem the launch would report (one ConfigError), or a one-line OK; nothing runs.
    Also ``launcher=local launcher.dry_run=true`` (status DRY_RUN, so a sweep's summary never says COMPLETED).

    A local run is checked as it would start here (files exist, GPUs visible); another launcher's as that
    launcher checks it (paths are read where the job runs)."""
    local = cfg.launcher.name == "local"
    cfg = check(cfg, gpu_count=_gpu_count if local else None, check_local_paths=local)
    what = "launcher.dry_run=true: validated only" if dry_run else "validated only"
    print(
        f"Config OK: recipe={cfg.recipe.name} model={cfg.model.name} dataset={cfg.dataset.name} "
        f"hardware={cfg.hardware.name} launcher={cfg.launcher.name} ({what}; nothing was started)",
        flush=True,
    )
    from framework.rundir import JobResult

    return JobResult("DRY_RUN" if dry_run else "VALID").as_dict()


def validate_overrides(args: list[str], out_dir: str) -> list[str]:
    """What ``--validate`` adds to the command line: run the task here (never a launcher that submits), with
    Hydra's output in ``out_dir`` (a temporary directory) rather than in outputs/ or multirun/."""
    if any(a in ("-m", "--multirun") for a in args):
        return ["hydra/launcher=basic", f"hydra.sweep.dir={out_dir}"]
    return ["hydra.mode=RUN", f"hydra.run.dir={out_dir}", "hydra.output_subdir=null"]


_SETUP_ERRORS = (
    HydraException,
    OmegaConfBaseException,
    AssertionError,
    ValueError,
    KeyError,
    TypeError,
    OSError,
)


def describe_setup_error(e: BaseException, args: list[str]) -> tuple[str, int] | None:
    """An error Hydra raised before the task ran (composing the command line, creating the run directory): the
    user's to fix, so exit 2, every rejected override named with Hydra's reason in one line."""
    from framework import overrides

    if isinstance(e, OSError) and not isinstance(e, FrameworkError | HydraException):
        return f"Invalid config: {overrides.setup_os_error(e)}", EXIT_USAGE
    if not isinstance(e, _SETUP_ERRORS):
        return None
    try:
        problems = overrides.explain(args)
    except Exception:  # noqa: BLE001 - the explanation is best effort; Hydra's own reason follows
        problems = []
    return str(ConfigError(problems or [overrides.describe(e)])), EXIT_USAGE


def describe_error(e: BaseException) -> tuple[str, int]:
    """One clear message and the exit code for an error escaping the app."""
    if isinstance(e, FrameworkError):
        return str(e), e.exit_code
    if isinstance(e, MissingConfigException):
        return f"Invalid config: {e}".rstrip(), EXIT_USAGE
    if isinstance(e, ConfigCompositionException | OverrideParseException | OmegaConfBaseException):
        cause = e.__cause__
        if isinstance(cause, ConfigAttributeError | ConfigKeyError) and getattr(cause, "full_key", None):
            key = str(cause.full_key)
            parent = _dict_option(key)
            if parent is not None:
                # launcher.env, launcher.pvcs, ...: open dicts whose keys the user names; Hydra wants + to add one
                return (
                    f"Invalid config: {parent} is a dict option with no key {key[len(parent) + 1 :]!r} yet; add it "
                    f"with a leading +: +{key}=<value> (quote it in the shell if needed)",
                    EXIT_USAGE,
                )
            valid = _known_keys(key)
            hint = f"; valid keys there: {', '.join(valid)}" if valid else ""
            return f"Invalid config: unknown key '{key}'{hint}", EXIT_USAGE
        msg = str(e).replace("To append to your config use", "(to add a new key use")
        if isinstance(cause, OmegaConfBaseException):
            msg = f"{msg}\n{cause}"
        return f"Invalid config: {msg}".rstrip(), EXIT_USAGE
    if isinstance(e, HydraException):
        return f"Invalid usage: {e}", EXIT_USAGE
    return "".join(traceback.format_exception(e)).rstrip(), EXIT_RUNTIME


def _dict_option(full_key: str) -> str | None:
    """The dict-typed schema field (e.g. ``launcher.env``) that ``full_key`` is a new key of, if any."""
    parent = full_key.rsplit(".", 1)[0] if "." in full_key else ""
    try:
        target = (
            OmegaConf.select(OmegaConf.structured(Config), parent, throw_on_missing=False) if parent else None
        )
    except OmegaConfBaseException:
        return None
    return parent if isinstance(target, DictConfig) and OmegaConf.get_type(target) is dict else None


def _known_keys(full_key: str) -> list[str] | None:
    node = OmegaConf.structured(Config)
    parent = full_key.rsplit(".", 1)[0] if "." in full_key else ""
    try:
        target = OmegaConf.select(node, parent, throw_on_missing=False) if parent else node
    except OmegaConfBaseException:
        return None
    if isinstance(target, DictConfig):
        return sorted(str(k) for k in target)
    return None


_CONFIG_FLAGS = ("-cp", "-cn", "-cd", "--config-path", "--config-name", "--config-dir")


def mode_is_unset(args: list[str]) -> bool:
    """True when ``hydra.mode`` is certainly unset for this command line: our primary config, no launcher
    choice (``launcher=kubernetes`` sets it), no mode or search-path override. Hydra then needs no extra
    compose."""
    for a in args:
        key = a.split("=", 1)[0].lstrip("+~")
        if a.startswith(_CONFIG_FLAGS) or "launcher" in key or key in ("hydra.mode", "hydra.searchpath"):
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the process exit code."""
    global _validate_only
    args = sys.argv[1:] if argv is None else list(argv)
    _validate_only = VALIDATE_FLAG in args
    args = [a for a in args if a != VALIDATE_FLAG]
    scratch = tempfile.TemporaryDirectory(prefix="framework-validate-") if _validate_only else None
    with scratch or contextlib.nullcontext() as out:
        if out is not None:
            args += validate_overrides(args, out)
        return _main(args)


class _Terminated(BaseException):
    """SIGTERM before training installed its own handler (which saves a checkpoint first)."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated(signum)


def _main(args: list[str]) -> int:
    from framework import overrides

    debug = os.environ.get("FRAMEWORK_DEBUG") == "1" or any(a in ("debug=true", "debug=True") for a in args)
    os.environ["HYDRA_FULL_ERROR"] = "1"  # errors reach us; we print them once, cleanly
    register()
    sys.argv = [sys.argv[0] if sys.argv else "framework", *args]
    _failed_jobs.clear()
    _run_error.clear()
    app = hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")(task)
    with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
        previous_term = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        wrong = overrides.precheck(args)
        if wrong:
            raise ConfigError(wrong)
        with no_mode_compose(skip=mode_is_unset(args)):
            app()
        if _run_error:
            raise _run_error[0]
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else (0 if e.code is None else EXIT_USAGE)
    except BaseException as e:  # noqa: BLE001 - the single place errors become exit codes
        if isinstance(e, KeyboardInterrupt):
            print("error: interrupted (Ctrl-C) before training started; nothing was saved", file=sys.stderr)
            return EXIT_INTERRUPTED
        if isinstance(e, BrokenPipeError):  # `framework --help | head`: the reader left, nothing went wrong
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        if isinstance(e, _Terminated):
            print("error: stopped by SIGTERM before training started; nothing to save", file=sys.stderr)
            return 143
        setup = None if _in_task or isinstance(e, FrameworkError) else describe_setup_error(e, args)
        msg, code = setup or describe_error(e)
        if debug and code != EXIT_RUNTIME:
            traceback.print_exception(e)
        # A worker of a local torchrun job: the parent prints a rejection once for all ranks; a runtime
        # failure each rank prints itself (their tracebacks differ).
        if record_failure(code, msg) and code == EXIT_USAGE:
            return code
        print(f"error: {msg}", file=sys.stderr, flush=True)
        if code == EXIT_USAGE and not debug:
            print(
                "(exit code 2: fix the config and rerun; add debug=true for the traceback)", file=sys.stderr
            )
        return code
    finally:
        with contextlib.suppress(ValueError, NameError):
            signal.signal(signal.SIGTERM, previous_term)
    if _failed_jobs:
        rejected = sum(code == EXIT_USAGE for _, code in _failed_jobs)
        print(
            f"error: {len(_failed_jobs)} sweep job(s) did not finish: {rejected} rejected for their config or "
            f"data (fix and rerun those), {len(_failed_jobs) - rejected} failed",
            file=sys.stderr,
        )
        return EXIT_USAGE if rejected or _validate_only else EXIT_RUNTIME
    return 0


if __name__ == "__main__":
    sys.exit(main())
