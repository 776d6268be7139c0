"""Schema of the ``launcher`` group: where a run executes (local process(es), a Kubernetes job, a Ray job)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from framework.domains import QUANTITY, d


@dataclass
class LauncherConfig:
    name: str = "local"  # local | kubernetes | ray
    # --- kubernetes (ignored by the local launcher) ---
    # jobset (default: gang restart per incident) | indexed_job | pytorchjob | trainjob; README "Failure semantics"
    backend: str = "jobset"
    namespace: str | None = None  # null: the kubeconfig context's namespace (as kubectl), else "default"
    context: str | None = None  # kubeconfig context; null: current context, or in-cluster config
    image: str = "ghcr.io/example/framework:latest"  # training image (dockerfiles/Dockerfile)
    image_pull_policy: str = "IfNotPresent"  # Always | IfNotPresent | Never
    image_pull_secrets: list[str] = field(default_factory=list)  # names of docker-registry Secrets
    service_account: str | None = None  # pod service account; null: none, and no token mounted
    dry_run: bool = False  # render manifests.yaml, submit nothing
    max_parallel: int = 4  # sweep jobs in flight at once (while following; follow=false submits all)
    follow: bool = True  # stream rank-0 logs and wait for the outcome
    cancel_on_interrupt: str = "ask"  # Ctrl-C: ask | yes (delete the job) | no (leave it running)
    backoff_limit: int = (
        3  # gang restarts allowed, one per incident (exit 143 and disruptions are not counted)
    )
    active_deadline_s: int | None = None  # hard wall-clock limit of the job, seconds; null: none
    ttl_after_finished_s: int = 86400  # finished jobs are deleted after this many seconds
    # SIGTERM to SIGKILL, seconds; null: derived from the checkpoint size and storage (README "Grace period")
    termination_grace_s: int | None = None
    master_port: int = 29500  # c10d rendezvous port on the rank-0 pod
    run_dir: str = "/workspace/runs"  # run directory root inside pods when storage.output_uri is null
    run_dir_pvc: str | None = "framework-outputs"  # PVC mounted at run_dir (the chart's): durable run dirs
    pvcs: dict[str, str] = field(default_factory=dict)  # more PVCs: claim name -> mount path
    env: dict[str, str] = field(default_factory=dict)  # extra plain env vars (never secrets)
    secret_env: dict[str, str] = field(default_factory=dict)  # ENV_VAR -> "secret-name:key" (secretKeyRef)
    env_from_secrets: list[str] = field(default_factory=list)  # Secrets mounted whole via envFrom
    hf_token_secret: str | None = None  # "secret-name:key" for HF_TOKEN
    s3_secret: str | None = None  # Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (envFrom)
    labels: dict[str, str] = field(default_factory=dict)  # extra labels on every object
    annotations: dict[str, str] = field(default_factory=dict)  # extra pod annotations
    job_annotations: dict[str, str] = field(default_factory=dict)  # extra annotations on the job object
    networks: list[str] = field(default_factory=list)  # Multus NetworkAttachmentDefinitions for extra NICs
    exclusive_topology: str | None = None  # JobSet: one replicated job per <node label> domain, e.g. a rack
    prometheus_monitor: str = "annotations"  # with tracking.prometheus.enabled: annotations | podmonitor
    setup_namespace: bool = False  # also render ServiceAccount, Role, RoleBinding, NetworkPolicy
    extra: dict[str, Any] = field(default_factory=dict)  # {pod_spec: {...}, job_spec: {...}} merged in
    # --- Kueue, Kubeflow Trainer (hydra_plugins/kubernetes_launcher/_kueue.py, _trainjob.py) ---
    queue: str | None = None  # Kueue LocalQueue: the job is created suspended and admitted as a whole
    priority: str | None = None  # Kueue WorkloadPriorityClass of the job (with queue)
    priority_class: str | None = None  # the pods' PriorityClass (scheduler preemption)
    topology_required: str | None = None  # Kueue TAS: all pods within one domain of this node label
    topology_preferred: str | None = None  # Kueue TAS: as few domains of this node label as possible
    runtime: str = (
        "framework-torch"  # trainjob: the (Cluster)TrainingRuntime (the chart's, or torch-distributed)
    )
    runtime_kind: str = "ClusterTrainingRuntime"  # trainjob: ClusterTrainingRuntime | TrainingRuntime
    staging: str = "local"  # off | local (upload local paths) | all (+ Hub ids, by an init step on cluster)
    staging_uri: str | None = None  # s3://... or a path on a PVC mount; null: output bucket, else run_dir
    preflight: bool = (
        True  # read-only checks before submit: namespace, Secrets, PVCs, queue, RBAC, GPUs, bucket
    )
    # --- pod profile ---
    run_as_user: int = 1000  # pod UID and GID; the image's user (dockerfiles/Dockerfile)
    fs_group: int = 1000  # group that owns mounted volumes
    mount_service_account_token: bool = False  # mount service_account's token (only if pods call the API)
    tmp_size: str = d("10Gi", QUANTITY)  # sizeLimit of the /tmp emptyDir (Kubernetes quantity)
    # sizeLimit of the /cache emptyDir: HF_HOME, Triton, torch extensions
    cache_size: str = d("50Gi", QUANTITY)
    egress_cidrs: list[str] = field(default_factory=list)  # NetworkPolicy egress beyond peers+DNS: 0.0.0.0/0
    # --- API client ---
    poll_interval_s: float = 5.0  # seconds between status checks while following a job
    api_retries: int = 5  # attempts for a transient API error (429, 5xx, connection, timeout)
    api_timeout_s: float = 30.0  # per-request timeout, seconds
    # --- ray (launcher=ray; also the job inside a launcher.backend=rayjob cluster) ---
    address: str = "auto"  # Jobs API http://host:8265 | Ray Client ray://host:10001 | auto (this cluster)
    max_failures: int = 3  # worker-group restarts from checkpoints/latest; SIGTERM/preemptions are free
    run_dir_shared: bool = False  # a local run dir is a path every Ray node mounts (NFS, RWX PVC)
    ray_python: str = "python"  # interpreter on the Ray cluster that has the framework installed
    ray_memory_fraction: float = 0.6  # share of hardware.memory requested from Ray (it keeps ~30%)
    ray_head_cpu: str = "2"  # rayjob: CPU of the head pod (no GPUs; it runs the driver, not training)
    ray_head_memory: str = "8Gi"  # rayjob: memory of the head pod (Kubernetes quantity)
    ray_auth_secret: str | None = None  # rayjob: "secret:key" holding RAY_AUTH_TOKEN; null: KubeRay's own


def sweep_output_uri(uri: str, job_num: int) -> str:
    """``<storage.output_uri>/<job num>``: each job of a sweep its own run dir (and checkpoints), any launcher."""
    return f"{uri.rstrip('/')}/{job_num}"
