"""The Kubernetes backends as one table: what ``launcher.backend`` means, in one entry per backend.

An entry says which object runs the job (kind, API group, version, plural), how its pods are named (the hostname
suffix, the rank-0 address), what differs in the pod (container and port names, where the node rank comes from,
whether the launcher renders the headless Service), how to build the object's spec from the pod template, and
how to read it back (pod templates, phase, a pod's node rank). ``_render`` and ``_client`` read only this table.

Adding a backend = adding one ``Backend(...)`` to ``BACKENDS`` (its builder and readers next to it). Pure: no
I/O, no cluster, no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hydra_plugins.kubernetes_launcher import _staging, _trainjob
from hydra_plugins.kubernetes_launcher._names import COMPLETION_INDEX, pod_run_dir
from hydra_plugins.ray_launcher import _rayjob

from framework.errors import EXIT_PREEMPTED, EXIT_USAGE

Manifest = dict[str, Any]
EXIT_PERMANENT = EXIT_USAGE  # DESIGN.md: bad config or data, never retried (exit codes: framework.errors)
# PyTorchJob's ExitCode policy retries 128-255 only: there a crash exits this instead of 1 (framework-torchrun).
EXIT_CRASH_RETRYABLE = 200
JOBSET_REPLICATED_JOB = "node"  # JobSet pods: <jobset>-node-0-<node rank>
PYTORCHJOB_REPLICA_TYPE = "training.kubeflow.org/replica-type"
PYTORCHJOB_REPLICA_INDEX = "training.kubeflow.org/replica-index"


@dataclass(frozen=True)
class JobParts:
    """What a job-spec builder gets: the config (plain values, attribute access), the job's name, its pod
    template (one for every pod; the main container first) and the labels every object carries."""

    cfg: Any
    name: str
    template: dict[str, Any]
    labels: Mapping[str, str]


@dataclass(frozen=True)
class Backend:
    name: str  # the launcher.backend value
    kind: str  # the object that runs the job
    group: str  # its API group
    version: str  # its API version
    plural: str  # its resource name (RBAC, REST paths)
    host_suffix: Callable[[int], str]  # nodes -> the longest suffix a pod hostname adds to the job name
    master_addr: Callable[[str], str]  # job name -> DNS name of the node-rank-0 pod
    job_spec: Callable[[JobParts], dict[str, Any]]  # the object's spec
    pod_templates: Callable[[dict[str, Any]], list[dict[str, Any]]]  # spec -> its pod templates
    phase: Callable[[Mapping[str, dict[str, Any]], Mapping[str, Any]], tuple[str, dict[str, Any] | None]]
    node_rank: Callable[[dict[str, Any]], int | None]  # a pod of the job -> its node rank
    container: str = "trainer"  # the training container's name
    port_name: str = "rdzv"  # the rendezvous port's name
    node_rank_arg: str = "$(NODE_RANK)"  # torchrun's --node-rank, after Kubernetes' $(VAR) expansion
    node_rank_env: bool = True  # NODE_RANK from the pod's completion-index annotation
    headless_service: bool = False  # the launcher renders Service <job> and the pods set subdomain=<job>
    suspend_path: tuple[str, ...] = ("suspend",)  # where the spec says suspend (Kueue creates jobs suspended)
    # Env the pods need for this backend's failure semantics (JobParts -> env entries), after the launcher's own.
    pod_env: Callable[[Any, str], list[dict[str, Any]]] = lambda cfg, name: []
    semantics: str = ""  # how a failure is handled, one line for the README and `framework-jobs`
    # What a dry run and a submit both print about this backend for a config (resolved plain data)
    warnings: Callable[[Mapping[str, Any]], list[str]] = lambda plain: []
    # The job-object annotation that takes launcher.exclusive_topology (None: the backend has no such placement)
    exclusive_topology_annotation: str | None = None
    # launcher.staging=all: puts the Hub download steps into the spec (_staging.py); None: not supported
    stage_init: Callable[[dict[str, Any], list[Any]], None] | None = None

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


# ---------------------------------------------------------------------------------------- failure policy
def pod_failure_policy(container: str) -> dict[str, Any]:
    """Exit 2 (bad config) fails the job at once; preemption (exit 143, disruption) is retried for free."""
    return {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": container, "operator": "In", "values": [EXIT_PERMANENT]},
            },
            {
                "action": "Ignore",
                "onExitCodes": {"containerName": container, "operator": "In", "values": [EXIT_PREEMPTED]},
            },
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]
    }


def _completion_index(pod: dict[str, Any]) -> int | None:
    meta = pod.get("metadata") or {}
    value = (meta.get("annotations") or {}).get(
        COMPLETION_INDEX, (meta.get("labels") or {}).get(COMPLETION_INDEX)
    )
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------------------------- Indexed Job
def indexed_job_spec(parts: JobParts, backoff_limit: int, container: str = "trainer") -> dict[str, Any]:
    """An Indexed Job whose completion index is the node rank (also JobSet's child job)."""
    launcher, nodes = parts.cfg.launcher, int(parts.cfg.hardware.nodes)
    spec: dict[str, Any] = {
        "completionMode": "Indexed",  # completion index = node rank
        "completions": nodes,
        "parallelism": nodes,
        "backoffLimit": backoff_limit,
        "podFailurePolicy": pod_failure_policy(container),
        # A replacement pod starts only once the pod it replaces has terminated: it never rendezvouses with a
        # pod that is still shutting down (the default with podFailurePolicy; stated for the reader).
        "podReplacementPolicy": "Failed",
        "template": parts.template,
    }
    if launcher.active_deadline_s:
        spec["activeDeadlineSeconds"] = int(launcher.active_deadline_s)
    return spec


def _job_spec(parts: JobParts) -> dict[str, Any]:
    # The Job controller counts failed pods, not incidents, and has no gang restart: one crash breaks every
    # pod's collectives, so each of the N pods fails once and is replaced. backoffLimit = budget x nodes makes
    # one such incident consume one unit of launcher.backoff_limit (JobSet counts incidents natively).
    budget, nodes = int(parts.cfg.launcher.backoff_limit), int(parts.cfg.hardware.nodes)
    spec = indexed_job_spec(parts, budget * nodes)
    spec["ttlSecondsAfterFinished"] = int(parts.cfg.launcher.ttl_after_finished_s)
    return spec


def _job_phase(
    conds: Mapping[str, dict[str, Any]], status: Mapping[str, Any]
) -> tuple[str, dict[str, Any] | None]:
    if "Complete" in conds:
        return "Succeeded", conds["Complete"]
    if "Failed" in conds or "FailureTarget" in conds:
        return "Failed", conds.get("Failed") or conds["FailureTarget"]
    if "Suspended" in conds:
        return "Suspended", None
    return ("Running" if status.get("active") or status.get("ready") else "Pending"), None


# ------------------------------------------------------------------------------------------------- JobSet
def _jobset_spec(parts: JobParts) -> dict[str, Any]:
    # One pod failing breaks the static rendezvous of all: the child Job does not retry single pods
    # (backoffLimit 0) and the JobSet restarts the whole group instead, up to maxRestarts.
    launcher = parts.cfg.launcher
    return {
        "network": {"enableDNSHostnames": True, "publishNotReadyAddresses": True},
        "failurePolicy": {
            "maxRestarts": int(launcher.backoff_limit),  # one JobSet restart per incident, whatever failed
            # Recreate every child job only once all old pods are gone: no rendezvous with terminating pods.
            "restartStrategy": "BlockingRecreate",
            "rules": [
                {  # exit 2 made the child Job fail through its podFailurePolicy: permanent
                    "name": "FailOnPermanentError",
                    "action": "FailJobSet",
                    "onJobFailureReasons": ["PodFailurePolicy"],
                }
            ],
        },
        "ttlSecondsAfterFinished": int(launcher.ttl_after_finished_s),
        "replicatedJobs": [
            {
                "name": JOBSET_REPLICATED_JOB,
                "replicas": 1,
                "template": {"metadata": {"labels": dict(parts.labels)}, "spec": indexed_job_spec(parts, 0)},
            }
        ],
    }


def _jobset_phase(
    conds: Mapping[str, dict[str, Any]], status: Mapping[str, Any]
) -> tuple[str, dict[str, Any] | None]:
    if "Completed" in conds:
        return "Succeeded", conds["Completed"]
    if "Failed" in conds:
        return "Failed", conds["Failed"]
    if "Suspended" in conds:
        return "Suspended", None
    return ("Running" if status.get("replicatedJobsStatus") else "Pending"), None


# --------------------------------------------------------------------------------------------- PyTorchJob
def _pytorchjob_spec(parts: JobParts) -> dict[str, Any]:
    launcher, hw = parts.cfg.launcher, parts.cfg.hardware
    run_policy: dict[str, Any] = {
        "backoffLimit": int(launcher.backoff_limit),
        "cleanPodPolicy": "Running",
        "ttlSecondsAfterFinished": int(launcher.ttl_after_finished_s),
    }
    if launcher.active_deadline_s:
        run_policy["activeDeadlineSeconds"] = int(launcher.active_deadline_s)
    # ExitCode: 1-127 are permanent (2 = bad config), 128-255 retryable (143 preempted, 137 OOM-killed, and a
    # crash, which framework-torchrun exits as EXIT_CRASH_RETRYABLE here). The operator deletes and recreates a
    # pod that exited retryably, and the others follow as their collectives break: the gang restarts. It ignores
    # backoffLimit for ExitCode replicas, so node rank 0's framework-torchrun keeps the budget (_pytorchjob_env).
    replicas = {"Master": {"replicas": 1, "restartPolicy": "ExitCode", "template": parts.template}}
    if int(hw.nodes) > 1:
        replicas["Worker"] = {
            "replicas": int(hw.nodes) - 1,
            "restartPolicy": "ExitCode",
            "template": parts.template,
        }
    return {"nprocPerNode": str(hw.nproc_per_node), "runPolicy": run_policy, "pytorchReplicaSpecs": replicas}


def _pytorchjob_env(cfg: Any, name: str) -> list[dict[str, Any]]:
    return [
        {"name": "FRAMEWORK_CRASH_EXIT", "value": str(EXIT_CRASH_RETRYABLE)},
        {"name": "FRAMEWORK_RESTART_BUDGET", "value": str(int(cfg.launcher.backoff_limit))},
        {"name": "FRAMEWORK_RUN_DIR", "value": pod_run_dir(cfg, name)},
    ]


def _pytorchjob_warnings(plain: Mapping[str, Any]) -> list[str]:
    if int(plain["hardware"]["nodes"]) < 2:
        return []
    return [
        "backend=pytorchjob: the training-operator injects an init container (init-pytorch: alpine, no "
        "securityContext) into Worker pods, which a namespace enforcing the restricted Pod Security Standard "
        "rejects; use backend=jobset there"
    ]


def _pytorchjob_phase(
    conds: Mapping[str, dict[str, Any]], status: Mapping[str, Any]
) -> tuple[str, dict[str, Any] | None]:
    for cond, phase in (("Succeeded", "Succeeded"), ("Failed", "Failed"), ("Suspended", "Suspended")):
        if cond in conds:
            return phase, conds[cond] if phase != "Suspended" else None
    return ("Running" if "Running" in conds or "Restarting" in conds else "Pending"), None


def _pytorchjob_node_rank(pod: dict[str, Any]) -> int | None:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    try:
        rtype = str(labels.get(PYTORCHJOB_REPLICA_TYPE, "")).lower()
        index = int(labels.get(PYTORCHJOB_REPLICA_INDEX, 0))
    except (TypeError, ValueError):
        return None
    return 0 if rtype == "master" else index + 1 if rtype == "worker" else None


# ------------------------------------------------------------------------------------------ staging steps
def _jobset_stage(spec: dict[str, Any], steps: list[Any]) -> None:
    for rj in spec["replicatedJobs"]:
        _staging.add_to_indexed_job(rj["template"]["spec"], steps)


def _pytorchjob_stage(spec: dict[str, Any], steps: list[Any]) -> None:
    replicas = spec["pytorchReplicaSpecs"]  # Master (node rank 0) downloads, Workers wait for the marker
    _staging.add_to_replicas(
        {r: replicas[n] for r, n in (("0", "Master"), ("1", "Worker")) if n in replicas}, steps
    )


# -------------------------------------------------------------------------------------------------- table
BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend(
            name="indexed_job",
            kind="Job",
            group="batch",
            version="v1",
            plural="jobs",
            host_suffix=lambda nodes: f"-{nodes - 1}",
            # hostname <job>-<index> under the headless Service <job>
            master_addr=lambda name: f"{name}-0.{name}",
            job_spec=_job_spec,
            pod_templates=lambda spec: [spec["template"]],
            phase=_job_phase,
            node_rank=_completion_index,
            headless_service=True,
            stage_init=_staging.add_to_indexed_job,
            semantics="restart budget x nodes pod failures (no gang restart of its own: the peers of a crashed "
            "pod fail and are replaced); exit 2 fails the Job; 143 and disruptions are not counted",
        ),
        Backend(
            name="jobset",
            kind="JobSet",
            group="jobset.x-k8s.io",
            version="v1alpha2",
            plural="jobsets",
            host_suffix=lambda nodes: f"-{JOBSET_REPLICATED_JOB}-0-{nodes - 1}",
            # JobSet hostnames: <jobset>-<replicatedJob>-<job index>-<pod index>.<subdomain = jobset name>
            master_addr=lambda name: f"{name}-{JOBSET_REPLICATED_JOB}-0-0.{name}",
            job_spec=_jobset_spec,
            pod_templates=lambda spec: [rj["template"]["spec"]["template"] for rj in spec["replicatedJobs"]],
            phase=_jobset_phase,
            node_rank=_completion_index,
            exclusive_topology_annotation="alpha.jobset.sigs.k8s.io/exclusive-topology",
            stage_init=_jobset_stage,
            semantics="any pod failure restarts the whole gang (BlockingRecreate), one restart per incident up to "
            "maxRestarts; exit 2 fails the JobSet; 143 and disruptions are not counted",
        ),
        Backend(
            name="pytorchjob",
            kind="PyTorchJob",
            group="kubeflow.org",
            version="v1",
            plural="pytorchjobs",
            host_suffix=lambda nodes: max("-master-0", f"-worker-{max(nodes - 2, 0)}", key=len),
            # the operator's per-replica Service (it also sets MASTER_ADDR to this)
            master_addr=lambda name: f"{name}-master-0",
            job_spec=_pytorchjob_spec,
            pod_templates=lambda spec: [
                spec["pytorchReplicaSpecs"][r]["template"]
                for r in ("Master", "Worker")
                if r in spec["pytorchReplicaSpecs"]
            ],
            phase=_pytorchjob_phase,
            node_rank=_pytorchjob_node_rank,
            # Kubeflow's training-operator finds the rendezvous port by these names and injects MASTER_ADDR/PORT
            # and RANK (the node rank) after our env: Kubernetes substitutes it into args, not into earlier env.
            container="pytorch",
            port_name="pytorchjob-port",
            node_rank_arg="$(RANK)",
            node_rank_env=False,
            pod_env=_pytorchjob_env,
            warnings=_pytorchjob_warnings,
            stage_init=_pytorchjob_stage,
            semantics="ExitCode: a crash (exit 200), 137 and 143 recreate the pod and its peers follow; node rank 0 "
            "counts incidents against the budget in the run dir; exit 2 fails the job",
            suspend_path=("runPolicy", "suspend"),
        ),
        Backend(
            # Kubeflow Trainer v2: compiled with its (Cluster)TrainingRuntime into a JobSet named after the
            # TrainJob, replicated job and container "node" (see _trainjob.py).
            name="trainjob",
            kind=_trainjob.KIND,
            group=_trainjob.GROUP,
            version=_trainjob.VERSION,
            plural=_trainjob.PLURAL,
            host_suffix=lambda nodes: f"-{_trainjob.REPLICATED_JOB}-0-{nodes - 1}",
            master_addr=lambda name: f"{name}-{_trainjob.REPLICATED_JOB}-0-0.{name}",
            job_spec=_trainjob.job_spec,
            pod_templates=_trainjob.pod_templates,
            phase=_trainjob.phase,
            node_rank=_completion_index,
            container=_trainjob.CONTAINER,
            stage_init=_staging.trainjob_initializer,
        ),
        Backend(
            # KubeRay: a Ray cluster per job (head + one worker group of hardware.nodes pods); its driver runs
            # the framework with launcher=ray, whose Ray Train workers train (see ray_launcher/_rayjob.py).
            name="rayjob",
            kind=_rayjob.KIND,
            group=_rayjob.GROUP,
            version=_rayjob.VERSION,
            plural=_rayjob.PLURAL,
            host_suffix=lambda nodes: _rayjob.HOST_SUFFIX,
            master_addr=lambda name: f"{name}-head-svc",  # unused: Ray Train sets the rendezvous
            job_spec=_rayjob.job_spec,
            pod_templates=_rayjob.pod_templates,
            phase=_rayjob.phase,
            node_rank=_rayjob.node_rank,
            node_rank_env=False,
        ),
    )
}
BY_KIND: dict[str, Backend] = {b.kind: b for b in BACKENDS.values()}


def backend(name: str) -> Backend:
    """The entry for a launcher.backend value (launcher_problems has refused unknown names)."""
    return BACKENDS[name]
