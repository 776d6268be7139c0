"""Public Python API of the Kubernetes launcher (no cluster call happens at import).

from hydra_plugins.kubernetes_launcher.api import JobClient, render, job_name

jobs = JobClient(namespace="team-a")              # current kubeconfig context, or in-cluster config
name = jobs.submit(render(cfg, job_name=..., sweep_id=..., job_index=0, git_commit=None))
info = jobs.wait(name, on_update=print)           # JobInfo: phase Succeeded | Failed | ...
for line in jobs.logs(name, follow=True): print(line)
jobs.cancel(name); jobs.list(); jobs.status(name)
"""

from hydra_plugins.kubernetes_launcher._client import (
    ClusterUnreachable,
    JobClient,
    JobFailed,
    JobInfo,
    KubernetesError,
    PodInfo,
    load_api_client,
)
from hydra_plugins.kubernetes_launcher._render import job_name, render, to_yaml

__all__ = [
    "ClusterUnreachable",
    "JobClient",
    "JobFailed",
    "JobInfo",
    "KubernetesError",
    "PodInfo",
    "job_name",
    "load_api_client",
    "render",
    "to_yaml",
]
