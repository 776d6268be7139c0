"""Every bad file and damaged checkpoint of issue 17, table-driven, through the training entry point
(``framework.__main__.main``, in this process, real training of one or two steps): exit 2 naming the file (or
a safe fallback for a damaged checkpoint), never a traceback, never exit 1.

The bad-data table is the data pipeline's (``tests/unit/test_bad_data.py``, there through ``framework.prepare``),
the bad-weights cases the model loader's (``tests/unit/test_pretrained.py``, there at validation); the damage
table is ``tests/unit/test_checkpoint_damage.py``'s, applied here to a real run's checkpoints.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from framework import __main__ as cli
from tests.data_fixtures import SAMPLE_TOKENIZER, chat_tokenizer, save_tokenizer
from tests.fuzz_cases import restore_logging  # noqa: F401 - a fixture
from tests.pretrained_fixtures import TINY, write_checkpoint
from tests.unit import test_bad_data, test_checkpoint_damage, test_pretrained

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("restore_logging")]

ONE_STEP = ["train.max_steps=1", "train.eval_interval=0", "train.progress=false", "scheduler.warmup_steps=0"]


def cli_run(args: list[str], capfd: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = cli.main(args)
    out, err = capfd.readouterr()
    text = out + err
    assert "Traceback" not in text, text[-3000:]
    return rc, text


@pytest.fixture(scope="module")
def chat_tok(tmp_path_factory: pytest.TempPathFactory) -> str:
    return save_tokenizer(chat_tokenizer("chatml"), tmp_path_factory.mktemp("tok") / "chatml")


@pytest.mark.parametrize("case", sorted(test_bad_data.CASES))
def test_bad_data_file(case: str, tmp_path: Path, chat_tok: str, capfd: pytest.CaptureFixture[str]) -> None:
    name, content, extra, expected = test_bad_data.CASES[case]
    path = tmp_path / name
    if name.endswith("/"):
        path.mkdir()
        (path / "README.md").write_text("no data here")
    else:
        path.write_bytes(content(tmp_path) if callable(content) else content)
    tok = chat_tok if "dataset=chat" in extra else SAMPLE_TOKENIZER
    args = [
        "dataset=jsonl",
        *extra,
        f"dataset.path={path}",
        f"dataset.tokenizer={tok}",
        "dataset.max_seq_len=256",
    ]
    rc, text = cli_run([*args, *ONE_STEP, f"hydra.run.dir={tmp_path / 'run'}"], capfd)
    assert rc == 2, text[-2000:]
    for piece in expected:
        assert piece in text, (piece, text[-2000:])
    assert not (tmp_path / "run" / "config.yaml").exists(), "a failed start writes no config.yaml"


MODEL_CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    **{
        case: (lambda d, c=case: test_pretrained._corrupt(d, c), expected)
        for case, expected in [
            ("truncated", "truncated"),
            ("corrupt_header", "header is not valid JSON"),
            ("oversized_header", "the safetensors header claims"),
            ("random_bytes", "the safetensors header claims"),
            ("no_weights", "has no weights"),
        ]
    },
    "config shapes do not match the weights": (
        lambda d: (d / "config.json").write_text(json.dumps({**TINY, "intermediate_size": 64})),
        "with shape",
    ),
    "a BERT config": (
        lambda d: (d / "config.json").write_text(
            json.dumps({**TINY, "architectures": ["BertForMaskedLM"], "model_type": "bert"})
        ),
        "BertForMaskedLM",
    ),
}


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_bad_model_dir(case: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    model = write_checkpoint(tmp_path / "m")
    damage, expected = MODEL_CASES[case]
    damage(model)
    rc, text = cli_run([f"model.pretrained={model}", *ONE_STEP, f"hydra.run.dir={tmp_path / 'run'}"], capfd)
    assert rc == 2, text[-2000:]
    assert expected in text, text[-2000:]


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run with checkpoints step_10 and step_20 (named as in the damage table), latest -> step_20."""
    run_dir = tmp_path_factory.mktemp("ckpt") / "run"
    args = ["train.max_steps=20", "train.checkpoint_interval=10", "train.eval_interval=0", "train.progress=false",
            "dataset.max_seq_len=64", "train.micro_batch_size=2", f"hydra.run.dir={run_dir}"]  # fmt: skip
    assert cli.main(args) == 0
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_20"
    return run_dir


@pytest.mark.parametrize(
    ("case", "damage", "named", "latest_damaged"),
    test_checkpoint_damage.FALLBACK,
    ids=[c[0] for c in test_checkpoint_damage.FALLBACK],
)
def test_damaged_checkpoint_resumes_from_the_intact_one(
    case: str,
    damage: Callable[[Path], None],
    named: str,
    latest_damaged: bool,
    two_checkpoints: Path,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(two_checkpoints, run_dir)
    ckpts = run_dir / "checkpoints"
    for tag in ("step_10", "step_20"):  # the table's shard path, pointing at DeepSpeed's real file
        (ckpts / tag / "step").mkdir()
        shutil.move(ckpts / tag / "mp_rank_00_model_states.pt", ckpts / tag / test_checkpoint_damage.SHARD)
        (ckpts / tag / "mp_rank_00_model_states.pt").symlink_to(ckpts / tag / test_checkpoint_damage.SHARD)
        manifest = json.loads((ckpts / tag / "manifest.json").read_text())
        manifest["files"][test_checkpoint_damage.SHARD] = manifest["files"].pop("mp_rank_00_model_states.pt")
        (ckpts / tag / "manifest.json").write_text(json.dumps(manifest))
    damage(ckpts)
    args = ["train.max_steps=22", "train.checkpoint_interval=10", "train.eval_interval=0", "train.progress=false",
            "dataset.max_seq_len=64", "train.micro_batch_size=2", f"hydra.run.dir={run_dir}"]  # fmt: skip
    rc, text = cli_run(args, capfd)
    assert rc == 0, text[-3000:]
    assert named in text
    expected = "step_10" if latest_damaged else "step_20"
    assert f"Resumed from {ckpts / expected}" in text


def test_no_intact_checkpoint_exits_2(
    two_checkpoints: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(two_checkpoints, run_dir)
    for tag in ("step_10", "step_20"):
        next((run_dir / "checkpoints" / tag).glob("*model_states.pt")).unlink()
    (run_dir / "checkpoints" / "latest").unlink()
    (run_dir / "checkpoints" / "latest").mkdir()  # and a directory as `latest`
    rc, text = cli_run([*ONE_STEP, "train.max_steps=25", f"hydra.run.dir={run_dir}"], capfd)
    assert rc == 2, text[-3000:]
    assert "no intact checkpoint" in text and "resume=none" in text and "latest is a directory" in text
    assert (run_dir / "checkpoints" / "step_20").is_dir(), "nothing deleted"
