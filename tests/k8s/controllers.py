"""What each backend's controller does with the exit codes of a job's pods, as the real controller would.

Independent of the launcher's code: it reads only the rendered object. The rules modelled, and from where:

Job (batch/v1, Kubernetes 1.31+: podFailurePolicy GA in 1.31; pkg/controller/job):
  every failed pod is matched against spec.podFailurePolicy.rules in order (onExitCodes on the named
  container, or onPodConditions such as DisruptionTarget); FailJob fails the Job at once (condition reason
  PodFailurePolicy); Ignore replaces the pod without counting it; Count or no matching rule counts it; once
  the count exceeds spec.backoffLimit the Job fails (BackoffLimitExceeded); otherwise the failed pod's index
  is started again (podReplacementPolicy Failed: after the old pod has terminated). Pods that did not fail
  keep running: the Job controller has no gang restart.
JobSet (jobset.x-k8s.io/v1alpha2, main of 2026-08, the CRD in shared/k8s-crds; pkg/controllers):
  each child Job is the Job above; when a child Job fails, failurePolicy.rules are evaluated in order against
  its failure reason (onJobFailureReasons); FailJobSet fails the JobSet; no match = RestartJobSet: if
  status.restarts >= failurePolicy.maxRestarts the JobSet fails, else restarts += 1 and every child Job is
  recreated (BlockingRecreate: once all their pods are gone).
PyTorchJob (kubeflow.org/v1, training-operator v1.8/v1.9; pkg/controller.v1/common, ExitCode policy):
  a pod of a replica with restartPolicy ExitCode that exits 1-127 is a permanent failure (the job fails); 128-
  255 is retryable: the pod is deleted and recreated, and runPolicy.backoffLimit is not applied to ExitCode
  replicas (PastBackoffLimit skips them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DISRUPTED = "DisruptionTarget"  # a pod evicted by preemption or a drain: condition, plus SIGTERM -> 143


@dataclass
class Outcome:
    phase: str  # Running (pods replaced) | Failed
    reason: str = ""
    replaced: list[int] = field(default_factory=list)  # node ranks whose pods are started again
    gang: bool = False  # every pod recreated together (JobSet restart)


def _pod_failure_action(policy: dict[str, Any], container: str, exit_code: int, disrupted: bool) -> str:
    for rule in policy.get("rules") or []:
        if "onExitCodes" in rule:
            req = rule["onExitCodes"]
            if req.get("containerName", container) != container:
                continue
            inside = exit_code in req["values"]
            if (req["operator"] == "In") == inside:
                return str(rule["action"])
        for cond in rule.get("onPodConditions") or []:
            if cond["type"] == DISRUPTED and disrupted:
                return str(rule["action"])
    return "Count"


@dataclass
class JobModel:
    """One batch/v1 Indexed Job."""

    spec: dict[str, Any]
    failed: int = 0

    def pods_ended(self, exits: dict[int, int], disrupted: set[int] = frozenset()) -> Outcome:  # type: ignore[assignment]
        container = self.spec["template"]["spec"]["containers"][0]["name"]
        policy = self.spec.get("podFailurePolicy") or {}
        replaced = []
        for rank, code in sorted(exits.items()):
            if code == 0:
                continue
            action = _pod_failure_action(policy, container, code, rank in disrupted)
            if action == "FailJob":
                return Outcome("Failed", "PodFailurePolicy")
            if action == "Count":
                self.failed += 1
            replaced.append(rank)
        if self.failed > int(self.spec.get("backoffLimit", 6)):
            return Outcome("Failed", "BackoffLimitExceeded")
        return Outcome("Running", replaced=replaced)


@dataclass
class JobSetModel:
    spec: dict[str, Any]
    restarts: int = 0

    def pods_ended(self, exits: dict[int, int], disrupted: set[int] = frozenset()) -> Outcome:  # type: ignore[assignment]
        child = JobModel(self.spec["replicatedJobs"][0]["template"]["spec"])
        out = child.pods_ended(exits, disrupted)
        if out.phase == "Running":
            return out  # the child Job replaced the pods itself (Ignore'd exits)
        policy = self.spec.get("failurePolicy") or {}
        for rule in policy.get("rules") or []:
            reasons = rule.get("onJobFailureReasons") or []
            if not reasons or out.reason in reasons:
                if rule["action"] == "FailJobSet":
                    return Outcome("Failed", f"FailJobSet({out.reason})")
                break
        if self.restarts >= int(policy.get("maxRestarts", 0)):
            return Outcome("Failed", "ReachedMaxRestarts")
        self.restarts += 1
        nodes = int(self.spec["replicatedJobs"][0]["template"]["spec"]["completions"])
        return Outcome("Running", "RestartJobSet", replaced=list(range(nodes)), gang=True)


@dataclass
class PyTorchJobModel:
    spec: dict[str, Any]

    def pods_ended(self, exits: dict[int, int], disrupted: set[int] = frozenset()) -> Outcome:  # type: ignore[assignment]
        policies = {r["restartPolicy"] for r in self.spec["pytorchReplicaSpecs"].values()}
        assert policies == {"ExitCode"}, policies
        replaced = []
        for rank, code in sorted(exits.items()):
            if code == 0:
                continue
            if 1 <= code <= 127:
                return Outcome("Failed", f"exit code {code} (permanent under ExitCode)")
            replaced.append(rank)  # retryable: deleted and recreated; backoffLimit not applied
        return Outcome("Running", replaced=replaced)


def model_for(obj: dict[str, Any]) -> JobModel | JobSetModel | PyTorchJobModel:
    kind = obj["kind"]
    if kind == "Job":
        return JobModel(obj["spec"])
    if kind == "JobSet":
        return JobSetModel(obj["spec"])
    if kind == "PyTorchJob":
        return PyTorchJobModel(obj["spec"])
    raise KeyError(kind)
