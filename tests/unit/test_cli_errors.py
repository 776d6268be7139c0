"""Bad input at the command line: one clear message naming the key and the fix, exit code 2, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import run_cli


def assert_usage_error(args: list[str], tmp_path: Path, *expected: str) -> str:
    res = run_cli(["hydra.run.dir=" + str(tmp_path / "run"), *args], cwd=tmp_path, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    for text in expected:
        assert text in res.stderr, res.stderr
    return res.stderr


def test_unknown_option_lists_valid_ones(tmp_path: Path) -> None:
    assert_usage_error(["model=gpt5"], tmp_path, "Could not find 'model/gpt5'", "llama3_2_1b", "tiny_llama")


def test_unknown_key_names_it_and_lists_valid_keys(tmp_path: Path) -> None:
    assert_usage_error(["train.max_stepz=3"], tmp_path, "unknown key 'train.max_stepz'", "max_steps")


def test_wrong_type(tmp_path: Path) -> None:
    assert_usage_error(["train.max_steps=lots"], tmp_path, "train.max_steps", "lots")


def test_missing_required_value(tmp_path: Path) -> None:
    assert_usage_error(["dataset=jsonl"], tmp_path, "dataset.path is required but not set")


def test_batch_that_does_not_divide_and_zero3(tmp_path: Path) -> None:
    assert_usage_error(
        ["train.global_batch_size=6", "train.micro_batch_size=4", "hardware.offload_param=true"],
        tmp_path,
        "2 problems",
        "train.global_batch_size=6 is not divisible",
        "hardware.offload_param=true needs ZeRO stage 3",
    )


def test_gpu_profile_on_cpu_machine(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert_usage_error(
        ["hardware=h200x1"], tmp_path, "hardware=h200x1 needs CUDA GPUs but this machine has none"
    )


def test_debug_switch_shows_traceback(tmp_path: Path) -> None:
    res = run_cli(["debug=true", "model=gpt5", f"hydra.run.dir={tmp_path}"], cwd=tmp_path, timeout=120)
    assert res.returncode == 2
    assert "Traceback" in res.stderr


def test_malformed_data_names_file_and_line(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text('{"instruction": "a", "response": "b"}\n{"instruction": "c", "response": \n')
    assert_usage_error(
        ["dataset=jsonl", f"dataset.path={data}", "dataset.tokenizer=pkg://framework.data/sample/tokenizer"],
        tmp_path,
        f"{data}: cannot be read as json: line 2, column 34: malformed JSON",
    )


def test_mode_is_unset_only_when_nothing_can_set_it() -> None:
    from framework.__main__ import mode_is_unset

    assert mode_is_unset([])
    assert mode_is_unset(["-m", "optim.lr=1e-4,3e-4", "hydra.run.dir=/tmp/x", "recipe=full_finetune"])
    for args in (
        ["launcher=kubernetes"],
        ["+launcher=kubernetes"],
        ["hydra.mode=RUN"],
        ["hydra.searchpath=[file:///x]"],
        ["--config-path=/etc/framework", "--config-name=config"],
        ["-cn", "other"],
    ):
        assert not mode_is_unset(args), args
