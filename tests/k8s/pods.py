"""Run a rendered job's pods as local processes, the way kubelet would start their containers.

Per pod: the controller's metadata (completion index annotation, or the PyTorchJob operator's labels and the env
it appends), env resolved like kubelet (``$(VAR)`` sees only earlier entries; fieldRef from the pod's metadata),
command and args expanded against the final env, volumes mapped to local directories (the ConfigMap written out
as /etc/framework, emptyDirs per pod, PVCs shared), and the pods' DNS names resolved to 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from hydra_plugins.kubernetes_launcher._render import COMPLETION_INDEX, main_object

_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_FIELD = re.compile(r"^metadata\.(annotations|labels)\['([^']+)'\]$")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: unknown references stay as written, ``$$`` is a literal ``$``."""
    return _REF.sub(lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


@dataclass
class Pod:
    name: str
    hostname: str
    node_rank: int
    metadata: dict[str, Any]
    spec: dict[str, Any]
    injected_env: list[dict[str, str]] = field(default_factory=list)  # appended by an operator


def pods_of(objs: list[dict[str, Any]]) -> list[Pod]:
    """The pods the backend's controller would create for the job, node rank 0 first."""
    main = main_object(objs)
    if main["kind"] == "TrainJob":  # what Trainer v2 makes of it with the chart's runtime: a JobSet
        from tests.k8s.trainer import compile_trainjob

        main = compile_trainjob(main)
    name, kind, spec = main["metadata"]["name"], main["kind"], main["spec"]
    pods: list[Pod] = []
    if kind in ("Job", "JobSet"):
        template = (
            spec["template"] if kind == "Job" else spec["replicatedJobs"][0]["template"]["spec"]["template"]
        )
        count = (
            spec["completions"]
            if kind == "Job"
            else spec["replicatedJobs"][0]["template"]["spec"]["completions"]
        )
        for i in range(count):
            host = f"{name}-{i}" if kind == "Job" else f"{name}-node-0-{i}"
            meta = {
                "name": f"{host}-abcde",
                "namespace": main["metadata"]["namespace"],
                "labels": {**template["metadata"]["labels"], COMPLETION_INDEX: str(i)},
                "annotations": {**template["metadata"].get("annotations", {}), COMPLETION_INDEX: str(i)},
            }
            pods.append(Pod(meta["name"], host, i, meta, template["spec"]))
        return pods
    # PyTorchJob: the training-operator (v1.8+) appends these to the container env of every replica.
    replicas = spec["pytorchReplicaSpecs"]
    total = sum(r["replicas"] for r in replicas.values())
    nproc = int(spec["nprocPerNode"])
    for rtype in ("Master", "Worker"):
        if rtype not in replicas:
            continue
        template = replicas[rtype]["template"]
        port = next(
            p["containerPort"]
            for p in template["spec"]["containers"][0]["ports"]
            if p["name"] == "pytorchjob-port"
        )
        for i in range(replicas[rtype]["replicas"]):
            rank = i if rtype == "Master" else i + 1
            host = f"{name}-{rtype.lower()}-{i}"
            meta = {
                "name": host,
                "namespace": main["metadata"]["namespace"],
                "labels": {
                    **template["metadata"]["labels"],
                    "training.kubeflow.org/replica-type": rtype.lower(),
                    "training.kubeflow.org/replica-index": str(i),
                },
                "annotations": dict(template["metadata"].get("annotations", {})),
            }
            injected = [
                {"name": "PYTHONUNBUFFERED", "value": "0"},
                {"name": "MASTER_PORT", "value": str(port)},
                {"name": "MASTER_ADDR", "value": f"{name}-master-0"},
                {"name": "WORLD_SIZE", "value": str(total * nproc)},
                {"name": "RANK", "value": str(rank)},
                {"name": "PET_NPROC_PER_NODE", "value": str(nproc)},
                {"name": "PET_NODE_RANK", "value": str(rank)},
                {"name": "PET_NNODES", "value": str(total)},
            ]
            pods.append(Pod(host, host, rank, meta, template["spec"], injected))
    return pods


def resolve_env(pod: Pod, secrets: dict[str, dict[str, str]] | None = None) -> dict[str, str]:
    """The container's environment as kubelet builds it."""
    container = pod.spec["containers"][0]
    secrets = secrets or {}
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        env.update(secrets[source["secretRef"]["name"]])
    for entry in [*container.get("env", []), *pod.injected_env]:
        if "value" in entry:
            env[entry["name"]] = expand(entry["value"], env)  # only variables defined above are seen
            continue
        ref = entry["valueFrom"]
        if "fieldRef" in ref:
            path = ref["fieldRef"]["fieldPath"]
            m = _FIELD.match(path)
            if m:
                env[entry["name"]] = pod.metadata[m.group(1)][m.group(2)]
            else:
                env[entry["name"]] = {
                    "metadata.name": pod.name,
                    "metadata.namespace": pod.metadata["namespace"],
                }[path]
        elif "secretKeyRef" in ref:
            env[entry["name"]] = secrets[ref["secretKeyRef"]["name"]][ref["secretKeyRef"]["key"]]
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Started:
    pod: Pod
    proc: subprocess.Popen[bytes]
    log: Path
    mounts: dict[str, Path]


def start(
    pod: Pod,
    objs: list[dict[str, Any]],
    root: Path,
    *,
    master_port: int,
    keep_env: dict[str, str] | None = None,
    log: IO[bytes] | None = None,
) -> Started:
    """Start the pod's container command as a local process; its volumes live under ``root``."""
    container = pod.spec["containers"][0]
    configmaps = {o["metadata"]["name"]: o["data"] for o in objs if o["kind"] == "ConfigMap"}
    volumes = {v["name"]: v for v in pod.spec["volumes"]}
    mounts: dict[str, Path] = {}
    for m in container["volumeMounts"]:
        vol = volumes[m["name"]]
        if m["mountPath"] == "/dev/shm":
            continue  # the host's /dev/shm stands in for the memory-backed emptyDir
        if "configMap" in vol:
            host = root / pod.hostname / m["name"]
            host.mkdir(parents=True, exist_ok=True)
            data = configmaps[vol["configMap"]["name"]]
            for item in vol["configMap"].get("items") or [{"key": k, "path": k} for k in data]:
                (host / item["path"]).write_text(data[item["key"]])
        elif "persistentVolumeClaim" in vol:
            host = root / "pvc" / vol["persistentVolumeClaim"]["claimName"]  # shared by every pod
        else:
            host = root / pod.hostname / m["name"]
        host.mkdir(parents=True, exist_ok=True)
        mounts[m["mountPath"]] = host

    # One pass, longest mount path first: a mapped path (under the host's /tmp) must not be mapped again.
    mount_re = re.compile(
        r"(^|=)(" + "|".join(re.escape(p) for p in sorted(mounts, key=len, reverse=True)) + r")(?=/|$)"
    )

    def local(text: str) -> str:
        return mount_re.sub(lambda m: m.group(1) + str(mounts[m.group(2)]), text)

    env = {k: local(v) for k, v in resolve_env(pod).items()}
    env.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(master_port)})  # pod DNS -> this host
    env["TMPDIR"] = str(mounts["/tmp"])
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, "/usr/local/bin", "/usr/bin", "/bin"])
    env.update(keep_env or {})
    argv = [local(expand(a, env)) for a in [*container["command"], *container["args"]]]
    argv[0] = str(Path(bin_dir) / argv[0])  # the image has it on PATH; here it is the venv's console script
    cwd = local(container.get("workingDir", "/tmp"))
    log_path = root / f"{pod.hostname}.log"
    out = log or open(log_path, "wb")  # noqa: SIM115 - the process owns it until it exits
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    return Started(pod, proc, log_path, mounts)
