"""Staging Hub ids (launcher.staging=all): the init step of each backend in schema-valid manifests, the pods'
config pointing at the staged copy, ``python -m framework.stage`` against a fake hub into moto S3 and into a
directory standing in for the PVC (twice: the second run downloads nothing), a sweep of two jobs staging once,
and bad input as one line with exit 2 (1 for a transient failure)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra_plugins.kubernetes_launcher import _staging
from hydra_plugins.kubernetes_launcher._problems import launcher_problems
from hydra_plugins.kubernetes_launcher._render import job_name, main_object, pod_templates, render

from framework import stage as stage_cmd
from framework import storage
from framework.launcher_config import sweep_output_uri
from tests.fake_hub import fake_hub
from tests.k8s import pss, schemas
from tests.k8s.compose import compose
from tests.k8s.trainer import chart_runtime, compile_trainjob
from tests.s3_fixtures import free_port

ROOT = Path(__file__).resolve().parents[2]
MODEL = "acme/Tiny-Instruct"
DATASET = "acme/tiny-chats"
HUB = (
    "launcher.staging=all",
    f"model.pretrained={MODEL}",
    "dataset=jsonl",
    f"dataset.path=hf://datasets/{DATASET}/data/train.jsonl",
    "launcher.hf_token_secret=hf-token:token",
    "launcher.s3_secret=s3-credentials",
)
S3 = ("storage=s3", "storage.output_uri=s3://runs/team-a/exp1")
PVC = ("+launcher.pvcs.framework-hf-cache=/hf-cache", "launcher.staging_uri=/hf-cache/staging")
MODEL_DEST = "s3://runs/framework-staging/hub/model/acme--Tiny-Instruct/main"
DATA_DEST = "s3://runs/framework-staging/hub/dataset/acme--tiny-chats/main"


def rendered(*overrides: str, index: int = 0) -> list[dict[str, Any]]:
    cfg = compose(*overrides)
    backend, nodes = str(cfg.launcher.backend), int(cfg.hardware.nodes)
    name = job_name(str(cfg.run_name), sweep_id="s0", job_index=index, backend=backend, nodes=nodes)
    return render(cfg, job_name=name, sweep_id="s0", job_index=index, git_commit=None)


def pod_config(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return yaml.safe_load(next(o for o in objs if o["kind"] == "ConfigMap")["data"]["config.yaml"])  # type: ignore[no-any-return]


def arg(container: dict[str, Any], name: str) -> str | None:
    return next((a.split("=", 1)[1] for a in container["args"] if a.startswith(f"--{name}=")), None)


# ------------------------------------------------------------------------------------------- manifests
@pytest.mark.parametrize("backend", ["indexed_job", "jobset", "pytorchjob"])
def test_init_container_per_backend_is_valid_and_pods_read_the_staged_copy(backend: str) -> None:
    objs = rendered(f"launcher.backend={backend}", "hardware.nodes=2", *HUB, *S3)
    assert [p for o in objs for p in schemas.errors(o)] == []
    assert [p for o in objs for p in pss.object_violations(o)] == []
    templates = pod_templates(main_object(objs))
    ranks = []
    for template in templates:
        inits = template["spec"]["initContainers"]
        ours = [c for c in inits if c["name"].startswith("stage-")]
        assert [c["name"] for c in ours] == ["stage-model", "stage-dataset"]
        model, data = ours
        assert model["command"] == ["python", "-m", "framework.stage"]
        assert arg(model, "repo") == MODEL and arg(model, "dest") == MODEL_DEST
        assert arg(data, "repo") == DATASET and arg(data, "repo-type") == "dataset"
        main = template["spec"]["containers"][0]
        assert model["image"] == main["image"] and model["envFrom"] == main["envFrom"]
        env = {e["name"]: e for e in model["env"]}
        assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "token"}
        assert not set(model["resources"]["requests"]) - {"cpu", "memory"}  # no GPUs held by the download
        ranks.append(arg(model, "node-rank"))
    # node rank 0 downloads, the others wait for the marker
    assert ranks == (["0", "1"] if backend == "pytorchjob" else ["$(NODE_RANK)"])
    if backend != "pytorchjob":
        spec = main_object(objs)["spec"]
        job = spec if backend == "indexed_job" else spec["replicatedJobs"][0]["template"]["spec"]
        rules = job["podFailurePolicy"]["rules"]
        fail = [r["onExitCodes"]["containerName"] for r in rules if r["action"] == "FailJob"]
        assert {"stage-model", "stage-dataset"} <= set(fail)  # exit 2 of the download fails the job at once
    cfg = pod_config(objs)
    assert cfg["model"]["pretrained"] == MODEL_DEST and cfg["model"]["revision"] is None
    assert cfg["dataset"]["path"] == f"{DATA_DEST}/data/train.jsonl"


def test_trainjob_initializer_with_the_charts_runtime() -> None:
    objs = rendered("launcher.backend=trainjob", "model.revision=v1.0", *HUB, *S3)
    assert [p for o in objs for p in schemas.errors(o)] == []
    trainjob = main_object(objs)
    init = trainjob["spec"]["initializer"]
    assert init["model"]["storageUri"] == f"hf://{MODEL}"
    assert init["dataset"]["storageUri"] == f"hf://datasets/{DATASET}"
    env = {e["name"]: e for e in init["model"]["env"]}
    dest = "s3://runs/framework-staging/hub/model/acme--Tiny-Instruct/v1.0"
    assert env["FRAMEWORK_STAGE_DEST"]["value"] == dest
    assert env["FRAMEWORK_STAGE_REVISION"]["value"] == "v1.0"
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "s3-credentials"
    assert pod_config(objs)["model"]["pretrained"] == dest

    runtime = chart_runtime("trainingRuntime.initializers=true")
    assert schemas.errors(runtime) == [] and pss.object_violations(runtime) == []
    jobset = compile_trainjob(trainjob, runtime)
    rjs = {rj["name"]: rj for rj in jobset["spec"]["replicatedJobs"]}
    assert [d["name"] for d in rjs["node"]["dependsOn"]] == ["dataset-initializer", "model-initializer"]
    (container,) = rjs["model-initializer"]["template"]["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "framework.stage"]
    got = {e["name"]: e.get("value") for e in container["env"]}
    assert got["STORAGE_URI"] == f"hf://{MODEL}" and got["FRAMEWORK_STAGE_DEST"] == dest
    assert (
        "dependsOn"
        not in {rj["name"]: rj for rj in chart_runtime()["spec"]["template"]["spec"]["replicatedJobs"]}[
            "node"
        ]
    )


def test_pvc_target_mounts_and_names_the_mount() -> None:
    objs = rendered("launcher.backend=jobset", *HUB, *PVC)
    assert [p for o in objs for p in schemas.errors(o)] == []
    (template,) = pod_templates(main_object(objs))
    model = template["spec"]["initContainers"][0]
    assert arg(model, "dest") == "/hf-cache/staging/hub/model/acme--Tiny-Instruct/main"
    assert arg(model, "mount") == "/hf-cache"
    assert {"name": "pvc-framework-hf-cache", "mountPath": "/hf-cache"} in model["volumeMounts"]
    trainjob = main_object(rendered("launcher.backend=trainjob", *HUB, *PVC))
    assert [p for p in schemas.errors(trainjob)] == []
    patched = {
        rj["name"]
        for p in trainjob["spec"]["runtimePatches"]
        for rj in p["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    }
    assert {"model-initializer", "dataset-initializer"} <= patched  # the initializer pods mount the PVC


def test_default_and_local_mode_render_no_init_step() -> None:
    for extra in ((), ("launcher.staging=local",)):
        objs = rendered(f"model.pretrained={MODEL}", *S3, *extra)
        assert "initContainers" not in pod_templates(main_object(objs))[0]["spec"]
        assert pod_config(objs)["model"]["pretrained"] == MODEL


def test_staging_problems_name_the_key_and_fix() -> None:
    problems = launcher_problems(compose("launcher.staging=sometimes"))
    assert any(p.startswith("launcher.staging='sometimes'; choose off | local | all") for p in problems)
    problems = launcher_problems(compose("launcher.staging_uri=/nowhere/staging"))
    assert any("launcher.staging_uri=/nowhere/staging is neither s3://" in p for p in problems), problems
    problems = launcher_problems(compose(*HUB, "launcher.run_dir_pvc=null"))
    assert any("launcher.staging=all stages model.pretrained, dataset.path" in p for p in problems), problems
    problems = launcher_problems(compose("launcher.backend=rayjob", *HUB, *S3))
    assert any("backend=rayjob has no init step" in p for p in problems), problems
    with pytest.raises(Exception, match="launcher.staging"):  # render refuses the same config (exit 2)
        rendered("launcher.staging=sometimes")


def test_rendering_with_staging_imports_no_torch() -> None:
    code = textwrap.dedent(
        """
        import sys
        from tests.unit.test_stage_hub import rendered, HUB, S3
        rendered("launcher.backend=jobset", *HUB, *S3)
        rendered("launcher.backend=trainjob", *HUB, *S3)
        print("imported:", sorted(m for m in ("torch", "huggingface_hub") if m in sys.modules))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "imported: []" in out.stdout


# ------------------------------------------------------------------------------------ the stage command
@pytest.fixture
def tiny_repo(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 16}))
    (src / "model.safetensors").write_bytes(bytes(range(256)) * 32)
    return src


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(stage_cmd, "POLL_S", 0.05)


def downloads(seen: list[tuple[str, str]]) -> set[str]:
    """The files requested from the hub (HEAD and GET of each)."""
    return {p.rsplit("/", 1)[-1] for p, _ in seen if "/resolve/" in p}


def test_stage_command_to_s3_and_pvc_twice_downloads_once(
    s3_env: str,
    s3_bucket: str,
    tmp_path: Path,
    tiny_repo: Path,
    online: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pvc = tmp_path / "pvc"
    pvc.mkdir()
    with fake_hub(MODEL, tiny_repo) as (endpoint, seen):
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        for dest, mount in ((f"{s3_bucket}/staging/model", None), (f"{pvc}/staging/model", str(pvc))):
            argv = [f"--repo={MODEL}", f"--dest={dest}", "--key=model.pretrained", "--node-rank=0"]
            argv += [f"--mount={mount}"] if mount else []
            seen.clear()
            assert stage_cmd.main(argv) == 0
            assert downloads(seen) == {"config.json", "model.safetensors"}
            got = storage.read_bytes(storage.join(dest, "model.safetensors"))
            assert got == (tiny_repo / "model.safetensors").read_bytes()
            marker = json.loads(storage.read_text(storage.join(dest, stage_cmd.MARKER)))
            assert marker["repo"] == MODEL and marker["commit"] == "f" * 40
            assert not storage.exists(storage.join(dest, ".cache"))  # hub bookkeeping is not staged
            assert not storage.exists(dest + stage_cmd.LOCK_SUFFIX)  # released
            seen.clear()
            assert stage_cmd.main(argv) == 0  # a retried pod, another job: nothing from the hub
            assert seen == []
            assert stage_cmd.main([*argv[:-1], "--node-rank=1"] + argv[-1:]) == 0 and seen == []


def test_dataset_from_trainjob_env_and_other_ranks_wait(
    tmp_path: Path, online: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A TrainJob initializer passes STORAGE_URI and FRAMEWORK_STAGE_*; snapshot_download is the boundary."""
    calls: list[dict[str, Any]] = []

    def fake_snapshot(repo_id: str, **kw: Any) -> str:
        calls.append({"repo_id": repo_id, **kw})
        out = Path(kw["local_dir"])
        (out / "data").mkdir(parents=True, exist_ok=True)
        (out / "data" / "train.jsonl").write_text('{"messages": []}\n')
        return str(out)

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot)
    pvc = tmp_path / "pvc"
    pvc.mkdir()
    dest = f"{pvc}/staging/hub/dataset/acme--tiny-chats/main"
    monkeypatch.setenv("STORAGE_URI", f"hf://datasets/{DATASET}")
    monkeypatch.setenv("FRAMEWORK_STAGE_DEST", dest)
    monkeypatch.setenv("FRAMEWORK_STAGE_MOUNT", str(pvc))
    assert stage_cmd.main(["--wait-s=0.2", "--node-rank=1"]) == 1  # a waiting rank gives up: retryable
    assert calls == []
    assert stage_cmd.main([]) == 0
    assert [(c["repo_id"], c["repo_type"], c["revision"]) for c in calls] == [(DATASET, "dataset", None)]
    assert (Path(dest) / "data" / "train.jsonl").is_file() and (Path(dest) / stage_cmd.MARKER).is_file()
    assert stage_cmd.main(["--node-rank=1"]) == 0 and stage_cmd.main([]) == 0 and len(calls) == 1
    monkeypatch.delenv("STORAGE_URI")
    assert stage_cmd.main([]) == 0  # a TrainJob without this initializer: the runtime's step is a no-op


def test_stale_lock_is_taken_over_and_a_fresh_one_waits(
    tmp_path: Path, tiny_repo: Path, online: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = str(tmp_path / "staging" / "model")
    lock = Path(dest + stage_cmd.LOCK_SUFFIX)
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"owner": "other-job", "time": 0}))  # a pod that died long ago
    with fake_hub(MODEL, tiny_repo) as (endpoint, seen):
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        assert stage_cmd.stage(MODEL, dest) is True
        lock.write_text(
            json.dumps({"owner": "other-job", "time": 9e18})
        )  # held, fresh, and it has the marker
        assert stage_cmd.stage(MODEL, dest) is False
        dest2 = str(tmp_path / "staging" / "model2")
        Path(dest2 + stage_cmd.LOCK_SUFFIX).write_text(json.dumps({"owner": "other-job", "time": 9e18}))
        with pytest.raises(stage_cmd.StageError) as e:  # another job downloads: this one waits, then gives up
            stage_cmd.stage(MODEL, dest2, wait_s=0.2)
        assert e.value.exit_code == 1


def test_a_sweep_of_two_jobs_stages_once(
    s3_env: str, s3_bucket: str, tiny_repo: Path, online: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two jobs of one -m sweep (different lr, each its own run dir): the same init step destination, and the
    second job's init step downloads nothing; a local model dir is uploaded once for both."""
    bucket = s3_bucket.removeprefix("s3://")
    dests = []
    for i, lr in enumerate(("1e-4", "2e-4")):
        objs = rendered(
            *HUB,
            "storage=s3",
            f"storage.output_uri={sweep_output_uri(f's3://{bucket}/sweep', i)}",
            f"optim.lr={lr}",
            index=i,
        )
        (template,) = pod_templates(main_object(objs))
        dests.append(arg(template["spec"]["initContainers"][0], "dest"))
    assert dests[0] == dests[1] == f"s3://{bucket}/framework-staging/hub/model/acme--Tiny-Instruct/main"
    with fake_hub(MODEL, tiny_repo) as (endpoint, seen):
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        assert stage_cmd.main([f"--repo={MODEL}", f"--dest={dests[0]}"]) == 0
        assert downloads(seen) == {"config.json", "model.safetensors"}
        seen.clear()
        assert stage_cmd.main([f"--repo={MODEL}", f"--dest={dests[1]}"]) == 0
        assert seen == []  # the second job's init step asks the hub nothing

    puts: list[str] = []
    real_put = storage.put_file
    monkeypatch.setattr(storage, "put_file", lambda src, uri: (puts.append(str(uri)), real_put(src, uri))[1])
    staged = []
    for i, lr in enumerate(("1e-4", "2e-4")):
        cfg = compose(
            f"model.pretrained={tiny_repo}",
            "storage=s3",
            f"storage.output_uri={sweep_output_uri(f's3://{bucket}/sweep', i)}",
            f"optim.lr={lr}",
        )
        staged.append(_staging.stage(cfg)[0])
    assert staged[0].uri == staged[1].uri and staged[1].uploaded_bytes == 0 and len(puts) == 2


# ----------------------------------------------------------------------------------------- bad input
def _fail(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    def raise_(*a: Any, **kw: Any) -> str:
        raise exc

    monkeypatch.setattr("huggingface_hub.snapshot_download", raise_)


def _run(capsys: pytest.CaptureFixture[str], dest: str, *extra: str) -> tuple[int, list[str]]:
    code = stage_cmd.main([f"--repo={MODEL}", f"--dest={dest}", "--key=model.pretrained", *extra])
    return code, [line for line in capsys.readouterr().err.splitlines() if line]


def test_bad_input_is_one_line_and_exit_2_transient_is_1(
    tmp_path: Path,
    tiny_repo: Path,
    online: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import httpx
    from huggingface_hub.errors import GatedRepoError

    dest = str(tmp_path / "out" / "model")
    with fake_hub("acme/other-model", tiny_repo) as (endpoint, _):  # the hub answers, but not for this id
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        code, err = _run(capsys, dest)
    assert code == 2 and len(err) == 1, err
    assert (
        err[0].startswith(f"error: model.pretrained={MODEL}: no such model on") and "HF_TOKEN" not in err[0]
    )
    assert "launcher.hf_token_secret" in err[0]

    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens: transient
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_ETAG_TIMEOUT", 1, raising=False)
    code, err = _run(capsys, dest)
    assert code == 1 and len(err) == 1 and "downloading from http://127.0.0.1" in err[0], err

    response = httpx.Response(403, request=httpx.Request("GET", f"{endpoint}/api/models/{MODEL}"))
    _fail(monkeypatch, GatedRepoError("403 gated", response=response))
    code, err = _run(capsys, dest)
    assert code == 2 and len(err) == 1 and "gated repo and no HF_TOKEN is set" in err[0], err
    assert "launcher.hf_token_secret" in err[0]

    code, err = _run(capsys, "/hf-cache-not-mounted/staging/model", "--mount=/hf-cache-not-mounted")
    assert code == 2 and len(err) == 1 and "the PVC is not mounted" in err[0], err
    assert not (tmp_path / "out" / "model" / stage_cmd.MARKER).exists()


def test_stage_command_runs_as_a_module(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "framework.stage",
            f"--repo={MODEL}",
            "--dest=/not/mounted/x",
            "--mount=/not/mounted",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and out.stderr.strip().startswith("error: staging target /not/mounted/x")


def test_a_dry_run_sweep_through_the_launcher_shares_one_staged_copy(tmp_path: Path) -> None:
    """`python -m framework -m ...`: both jobs of the sweep (own run dirs) get the same init step and read the
    same staged copy."""
    from tests.helpers import run_cli

    proc = run_cli(
        ["-m", "launcher=kubernetes", "launcher.dry_run=true", *HUB, *S3, "optim.lr=1e-4,3e-4"], tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = sorted(tmp_path.glob("multirun/*/*/*/manifests.yaml"))
    assert len(found) == 2
    dests, pretrained, outputs = set(), set(), set()
    for path in found:
        objs = list(yaml.safe_load_all(path.read_text()))
        assert [e for o in objs for e in schemas.errors(o)] == []
        (template,) = pod_templates(main_object(objs))
        dests.add(arg(template["spec"]["initContainers"][0], "dest"))
        cfg = pod_config(objs)
        pretrained.add(cfg["model"]["pretrained"])
        outputs.add(cfg["storage"]["output_uri"])
    assert dests == pretrained == {MODEL_DEST} and len(outputs) == 2
