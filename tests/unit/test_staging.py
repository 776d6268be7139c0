"""Staging local inputs to the run's S3 storage (moto): a model dir and a dataset file are uploaded once,
content-addressed, the job's config (and so the ConfigMap the pods read) points at them, and a second submit
uploads nothing; pod paths, URIs and dry runs are left alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra_plugins.kubernetes_launcher import _staging
from hydra_plugins.kubernetes_launcher._render import job_name, render

from framework import storage
from framework.errors import ConfigError
from tests.k8s.compose import compose


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    model = tmp_path / "tiny-model"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 16}))
    (model / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    (model / "sub" / "tokenizer.json").write_text("{}")
    (tmp_path / "data").mkdir()
    data = tmp_path / "data" / "train.jsonl"
    data.write_text(
        "".join(json.dumps({"instruction": f"q{i}", "response": f"a{i}"}) + "\n" for i in range(20))
    )
    return model, data


def config(bucket: str, model: Path, data: Path, *extra: str) -> Any:
    return compose(
        "storage=s3",
        f"storage.output_uri={bucket}/runs/exp1",
        f"model.pretrained={model}",
        "dataset=jsonl",
        f"dataset.path={data}",
        *extra,
    )


def test_stage_once_content_addressed_and_pods_read_it(
    s3_env: str, s3_bucket: str, inputs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, data = inputs
    puts: list[str] = []
    real_put = storage.put_file
    monkeypatch.setattr(storage, "put_file", lambda src, uri: (puts.append(str(uri)), real_put(src, uri))[1])

    cfg = config(s3_bucket, model, data)
    staged = {s.key: s for s in _staging.stage(cfg)}
    root = f"{s3_bucket}/framework-staging"
    m, d = staged["model.pretrained"], staged["dataset.path"]
    assert m.uri == f"{root}/model/{_staging.content_hash(model)}"
    assert d.uri == f"{root}/dataset/{_staging.content_hash(data)}/train.jsonl"
    assert m.uploaded_bytes == sum(p.stat().st_size for p in model.rglob("*") if p.is_file())
    assert len(puts) == 4  # 3 model files + 1 dataset file
    assert cfg.model.pretrained == m.uri and cfg.dataset.path == d.uri

    # The pods: the ConfigMap's config names the S3 copies, and reading them gives the same bytes.
    name = job_name(str(cfg.run_name), sweep_id="s0", job_index=0)
    objs = render(cfg, job_name=name, sweep_id="s0", job_index=0, git_commit=None)
    pod_cfg = yaml.safe_load(next(o for o in objs if o["kind"] == "ConfigMap")["data"]["config.yaml"])
    assert pod_cfg["model"]["pretrained"] == m.uri and pod_cfg["dataset"]["path"] == d.uri
    copy = Path(storage.local_copy(m.uri))
    assert (copy / "model.safetensors").read_bytes() == (model / "model.safetensors").read_bytes()
    assert (copy / "sub" / "tokenizer.json").is_file()
    assert Path(storage.local_copy(d.uri)).read_text() == data.read_text()

    # A second submit (a rerun, another sweep job) of the same content uploads nothing.
    puts.clear()
    again = {s.key: s for s in _staging.stage(config(s3_bucket, model, data))}
    assert puts == [] and all(s.uploaded_bytes == 0 for s in again.values())
    assert again["model.pretrained"].uri == m.uri

    # Changed content: a new address, uploaded.
    (model / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 32}))
    changed = {s.key: s for s in _staging.stage(config(s3_bucket, model, data))}
    assert changed["model.pretrained"].uri != m.uri and len(puts) == 3


def test_pod_paths_uris_and_dry_runs_are_left_alone(
    s3_env: str, s3_bucket: str, inputs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, data = inputs
    cfg = config(s3_bucket, model, data, f"+launcher.pvcs.datasets={data.parent}")  # under a PVC mount
    (only,) = _staging.stage(cfg, upload=False)
    assert only.key == "model.pretrained" and only.uploaded_bytes == 0
    assert not storage.exists(
        f"{s3_bucket}/framework-staging/model/{_staging.content_hash(model)}/{_staging.MARKER}"
    )
    assert cfg.dataset.path == str(data)
    uri_cfg = config(s3_bucket, model, data)
    uri_cfg.model.pretrained, uri_cfg.dataset.path = "s3://elsewhere/model", "meta-llama/Llama-3.2-1B"
    assert _staging.local_inputs(uri_cfg) == []


def test_local_inputs_without_s3_name_the_key(inputs: tuple[Path, Path]) -> None:
    model, data = inputs
    cfg = compose(f"model.pretrained={model}")
    with pytest.raises(ConfigError, match=r"model\.pretrained: a path on this machine"):
        _staging.stage(cfg)
    cfg = compose(f"model.pretrained={model}", "launcher.staging_uri=s3://bucket/stage")
    assert _staging.staging_root(cfg) == "s3://bucket/stage"
