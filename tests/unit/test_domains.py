"""Field domains (issue 17 item 1): declared once in the schema, checked for every field at validation, all at
once; one row per value the campaign found accepted, each must be refused naming its key."""

from __future__ import annotations

import dataclasses
import math
import typing

import pytest

from framework import domains, validate
from framework.config import Config
from tests.unit.test_config import compose_cfg

# (overrides, the text the refusal must contain)
REFUSED: list[tuple[list[str], str]] = [
    (["model.intermediate_size=-1"], "model.intermediate_size=-1 must be >= 1"),
    (["model.rope_theta=nan"], "model.rope_theta=nan must be a finite number > 0"),
    (["optim.lr=inf"], "optim.lr=inf must be a finite number in (0, 1]"),
    (["optim.lr=1e6"], "optim.lr=1000000.0 must be in (0, 1]"),
    (["train.global_batch_size=0"], "train.global_batch_size=0 must be >= 1"),
    (["train.global_batch_size=-8"], "train.global_batch_size=-8 must be >= 1"),
    (["hardware.bucket_size=-1"], "hardware.bucket_size=-1 must be >= 1"),
    (["lora.r=9223372036854775808"], "lora.r=9223372036854775808 exceeds model.hidden_size=64"),
    (["optim.betas=[[1,2]]"], "optim.betas=[[1, 2]] must have 2 items"),
    (["optim.betas=[0.9,1.5]"], "optim.betas=[0.9, 1.5] item 1 (1.5) must be in [0, 1)"),
    (["scheduler.min_lr_ratio=-1"], "scheduler.min_lr_ratio=-1.0 must be in [0, 1]"),
    (["lora.alpha=0"], "lora.alpha=0 must be >= 1"),
    (["lora.dropout=1.0"], "lora.dropout=1.0 must be in [0, 1)"),
    (["dataset.path=s3://"], "dataset.path='s3://' names no bucket"),
    (["dataset.path=gs://bucket/x"], "needs the gcsfs package for gs://"),
    (["dataset.path=s3:bucket/x"], "looks like a URI without '//'"),
    (["storage.output_uri=s3:"], "storage.output_uri='s3:' looks like a URI without '//'"),
    (["storage=s3"], "storage=s3 needs storage.output_uri=s3://"),
    (["storage.output_uri=/proc/x"], "storage.output_uri=/proc/x cannot be written"),
    (["dataset.input_template='{prompt} {nope}'"], "uses {nope}, which does not exist"),
    (["dataset.template='no prompt here'"], "dataset.template='no prompt here' must contain {prompt}"),
    (["dataset.template='{prompt'"], "is not a valid format template"),
    (["dataset.prompt_field=''"], "dataset.prompt_field='' must not be empty"),
    (["hardware.cpu=-1"], "hardware.cpu='-1' is not a Kubernetes quantity"),
    (["hardware.memory=8GB"], "hardware.memory='8GB' is not a Kubernetes quantity"),
    (["hardware.memory=0Gi"], "must be a positive quantity"),
    (["hardware.zero_stage=5"], "hardware.zero_stage=5 is not a ZeRO stage; choose one of: 0, 1, 2, 3"),
    (["hardware.precision=fp8"], "hardware.precision='fp8' is not valid; choose one of: fp32, bf16, fp16"),
    (["optim.name=lion"], "optim.name='lion' is not valid; choose one of: adamw, sgd"),
    (["resume=/nonexistent/ckpt"], "resume=/nonexistent/ckpt does not exist"),
    (["run_name=../.."], "run_name='../..' must be one plain name"),
    (["run_name=" + "x" * 300], "is 300 characters long; the limit is 100"),
    (["train.epochs=2"], "train.max_steps=200 and train.epochs=2.0 are both set"),
    (["model.num_attention_heads=3"], "model.hidden_size=64 is not divisible by model.num_attention_heads=3"),
    (["train.seed=-1"], "train.seed=-1 must be >= 0"),
    (["storage.retries=0"], "storage.retries=0 must be >= 1"),
    (["storage.read_timeout_s=0"], "storage.read_timeout_s=0.0 must be > 0"),
]


@pytest.mark.parametrize(("overrides", "expected"), REFUSED, ids=[r[1][:40] for r in REFUSED])
def test_refused_naming_the_key(overrides: list[str], expected: str) -> None:
    cfg = compose_cfg(*overrides)
    problems = validate.validate(validate.with_schema(cfg))
    assert any(expected in p for p in problems), problems


def test_all_at_once() -> None:
    cfg = compose_cfg(
        "optim.lr=nan", "lora.alpha=-1", "hardware.memory=lots", "dataset.overlong=cut", "train.seed=-2"
    )
    problems = validate.validate(validate.with_schema(cfg))
    for key in ("optim.lr", "lora.alpha", "hardware.memory", "dataset.overlong", "train.seed"):
        assert sum(p.startswith(f"{key}=") for p in problems) == 1, (key, problems)


def test_defaults_of_every_group_option_are_inside_their_domains() -> None:
    for recipe in ("lora_llama", "full_finetune"):
        for hardware in ("cpu", "h200x1", "a100x8", "h100x8"):
            cfg = validate.with_schema(compose_cfg(f"recipe={recipe}", f"hardware={hardware}"))
            found = [p for g in validate.GROUPS[:-1] for p in g(cfg)]
            assert found == [], (recipe, hardware, found)


def test_global_batch_size_sets_grad_accum() -> None:
    cfg = validate.check(compose_cfg("train.global_batch_size=32", "train.micro_batch_size=4"))
    assert cfg.train.grad_accum == 8


# Fields whose type is already their whole domain (booleans), free-form mappings checked by their consumer
# (the launcher's own problems), and fields checked across several keys in a group function.
EXEMPT_TYPES = (bool, bool | None)
CHECKED_ELSEWHERE = {
    "recipe.name",  # recipe_problems: a name in recipes.RECIPES
    "dataset.input_field",  # optional: missing or empty means "no input column"
    "model.revision",  # a Hub branch, tag or commit: checked by reading it (framework.pretrained)
    "model.architecture",  # recorded from the checkpoint, never set
    "hardware.node_selector",  # Kubernetes maps: the launcher checks them
    "hardware.tolerations",
    "hardware.extra_resources",
    "hardware.nccl_env",
    "debug",
    # framework.data.problems checks these for the dataset and for each mixture source alike
    "dataset.format",
    "dataset.split",
    "dataset.messages_field",
    "dataset.template",
    "dataset.input_template",
    "dataset.chat_template",
    "dataset.train_on",
    "dataset.max_row_chars",
    "dataset.require_prepared",
    "dataset.sources",
}


def _leaves(schema: type, prefix: str) -> list[tuple[str, typing.Any, dataclasses.Field]]:
    hints = typing.get_type_hints(schema)
    out = []
    for f in dataclasses.fields(schema):  # type: ignore[arg-type]
        nested = domains._dataclass_of(hints[f.name])
        key = f"{prefix}{f.name}"
        if nested is not None:
            out += _leaves(nested, f"{key}.")
        else:
            out.append((key, hints[f.name], f))
    return out


def test_every_field_of_the_training_groups_declares_its_domain() -> None:
    owned = (
        "recipe.",
        "optim.",
        "scheduler.",
        "train.",
        "lora.",
        "model.",
        "dataset.",
        "hardware.",
        "storage.",
    )
    undeclared = [
        key
        for key, tp, f in _leaves(Config, "")
        if (key.startswith(owned) or "." not in key)
        and "domain" not in f.metadata
        and tp not in EXEMPT_TYPES
        and key not in CHECKED_ELSEWHERE
        and not key.startswith("dataset.sources.")
    ]
    assert undeclared == []


def test_domain_unit_cases() -> None:
    assert domains.Real(0, 1).problem(math.nan)
    assert domains.Real(0, 1).problem(True)
    assert domains.Int(1).problem(True)
    assert domains.QUANTITY.problem("500m") is None and domains.QUANTITY.problem("16Gi") is None
    assert domains.QUANTITY.problem("1e3") is None and domains.QUANTITY.problem("1.5") is None
    assert domains.QUANTITY.problem("Gi") and domains.QUANTITY.problem("-2")
    assert domains.URI.problem("pkg://framework.data/sample") is None
    assert domains.URI.problem("memory://bucket/x") is None
    assert domains.URI.problem("foo://x/y")
    assert domains.path_safe("../..") == ".._.."
    assert len(domains.path_safe("y" * 500)) == 100
