"""Progress reports to Kubeflow Trainer v2 (TrainJobStatus), so ``kubectl get trainjob NAME -o
jsonpath='{.status.trainerStatus}'`` shows the run: percentage, ETA and the latest metrics.

Active only where Trainer injected its endpoint (the TrainJobStatus feature) and only on global rank 0::

    KUBEFLOW_TRAINER_SERVER_URL      https://.../namespaces/<ns>/trainjobs/<name>/status   (POST)
    KUBEFLOW_TRAINER_SERVER_CA_CERT  the CA of that endpoint (a file)
    KUBEFLOW_TRAINER_SERVER_TOKEN    a projected service-account token (a file, rotated: re-read per request)

Each POST is ``{"trainerStatus": {progressPercentage, estimatedRemainingSeconds, metrics: [{name, value}],
lastUpdatedTime}}``, at most one every ``MIN_INTERVAL_S`` (the latest state wins), from a background thread:
a slow or failing endpoint never stalls or stops training (a warning once, then debug lines).
"""

from __future__ import annotations

import json
import logging
import math
import os
import ssl
import threading
import time
import urllib.request
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

log = logging.getLogger(__name__)

ENV_URL = "KUBEFLOW_TRAINER_SERVER_URL"
ENV_CA = "KUBEFLOW_TRAINER_SERVER_CA_CERT"
ENV_TOKEN = "KUBEFLOW_TRAINER_SERVER_TOKEN"
MIN_INTERVAL_S = 5.0  # Trainer asks clients for >= 5 s between updates
TIMEOUT_S = 5.0  # per request
# Metrics keys reported (status.trainerStatus.metrics: names <= 64 chars, values strings <= 64 chars)
METRICS = ("loss", "eval_loss", "perplexity", "lr", "tokens_per_s")


class TrainerStatusReporter:
    """Posts the training progress to the TrainJobStatus endpoint; see the module docstring."""

    def __init__(
        self,
        url: str,
        total_steps: int,
        start_step: int = 0,
        *,
        ca_cert: str | None = None,
        token_file: str | None = None,
        min_interval_s: float = MIN_INTERVAL_S,
    ) -> None:
        self.url, self.total, self.start_step = url, max(1, int(total_steps)), int(start_step)
        self.ca_cert, self.token_file, self.min_interval_s = ca_cert, token_file, min_interval_s
        self.sent = 0
        self._metrics: dict[str, str] = {}
        self._step = self.start_step
        self._t0 = time.monotonic()
        self._pending: dict[str, Any] | None = None
        self._last_post = -math.inf
        self._cond = threading.Condition()
        self._closing = False
        self._warned = False
        self._thread = threading.Thread(target=self._loop, name="trainer-status", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------------ state
    def report(self, row: Mapping[str, Any]) -> None:
        """Take one metrics row (train or eval line); queue the status it implies."""
        if "step" in row:
            self._step = int(row["step"])
        for key in METRICS:
            value = row.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                self._metrics[key] = f"{value:.6g}"
        self._queue(self.payload())

    def payload(self, *, done: bool = False) -> dict[str, Any]:
        step = self.total if done else self._step
        pct = 100 if done else min(99, int(100 * step / self.total))  # 100 only once training finished
        status: dict[str, Any] = {
            "progressPercentage": pct,
            "metrics": [
                {"name": "step", "value": str(step)},
                {"name": "total_steps", "value": str(self.total)},
            ]
            + [{"name": k, "value": v} for k, v in self._metrics.items()],
            "lastUpdatedTime": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        done_steps = step - self.start_step
        if done:
            status["estimatedRemainingSeconds"] = 0
        elif done_steps > 0:
            per_step = (time.monotonic() - self._t0) / done_steps
            status["estimatedRemainingSeconds"] = max(0, int((self.total - step) * per_step))
        return {"trainerStatus": status}

    def close(self, finished: bool) -> None:
        """Send the last state (100% when ``finished``) and stop; waits at most one request timeout."""
        self._queue(self.payload(done=finished), force=True)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout=TIMEOUT_S + 1)

    # ---------------------------------------------------------------------------------------- sending
    def _queue(self, payload: dict[str, Any], force: bool = False) -> None:
        with self._cond:
            self._pending = payload
            if force:
                self._last_post = -math.inf
            self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    wait = self._last_post + self.min_interval_s - time.monotonic()
                    if self._pending is not None and wait <= 0:
                        break
                    if self._closing and (self._pending is None or wait > 0):
                        return
                    self._cond.wait(timeout=None if self._pending is None else wait)
                payload, self._pending = self._pending, None
                self._last_post = time.monotonic()
            self._post(payload)

    def _post(self, payload: dict[str, Any]) -> None:
        headers = {"Content-Type": "application/json"}
        try:
            if self.token_file:
                with open(self.token_file) as f:  # rotated by the kubelet: read every time
                    headers["Authorization"] = f"Bearer {f.read().strip()}"
            context = (
                ssl.create_default_context(cafile=self.ca_cert) if self.url.startswith("https") else None
            )
            req = urllib.request.Request(
                self.url, data=json.dumps(payload).encode(), headers=headers, method="POST"
            )
            with urllib.request.urlopen(req, timeout=TIMEOUT_S, context=context) as resp:
                resp.read()
            self.sent += 1
        except (OSError, ValueError) as e:  # URLError, HTTPError, timeouts, a missing token file
            (log.debug if self._warned else log.warning)(
                "trainer status: could not report progress to %s (%s); training continues", self.url, e
            )
            self._warned = True


class NullReporter:
    """Where no TrainJobStatus endpoint is configured (or not rank 0)."""

    sent = 0

    def report(self, row: Mapping[str, Any]) -> None:
        pass

    def close(self, finished: bool) -> None:
        pass


def maybe_reporter(
    total_steps: int, start_step: int, rank0: bool, env: Mapping[str, str] | None = None
) -> TrainerStatusReporter | NullReporter:
    """A reporter when this is rank 0 and Trainer set KUBEFLOW_TRAINER_SERVER_URL, else a no-op."""
    env = os.environ if env is None else env
    url = env.get(ENV_URL)
    if not (rank0 and url):
        return NullReporter()
    return TrainerStatusReporter(
        url, total_steps, start_step, ca_cert=env.get(ENV_CA) or None, token_file=env.get(ENV_TOKEN) or None
    )
