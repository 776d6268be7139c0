"""recipe=evaluate on a classification-style instruction set the test writes: a tiny model trained on it beats
the majority-class baseline, and the metrics file equals scikit-learn's recomputed from predictions.jsonl."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.helpers import read_metrics, run_cli

pytestmark = pytest.mark.integration

CUES = {
    "fruit": ["apple", "banana", "grape", "mango", "pear", "cherry"],
    "animal": ["dog", "cat", "horse", "bird", "fish", "mouse"],
    "colour": ["red", "blue", "green", "yellow", "white", "black"],
}
SHARE = {"fruit": 0.5, "animal": 0.3, "colour": 0.2}  # imbalanced: the majority baseline is about 0.5
FORMS = ["Which category is this word? {w}", "Name the category of: {w}", "Category of {w}?"]
DATA = ["dataset=jsonl", "dataset.tokenizer=pkg://framework.data/sample/tokenizer", "dataset.max_seq_len=128"]


def write_task(path: Path, n: int, seed: int) -> Path:
    r = random.Random(seed)
    with path.open("w") as f:
        for _ in range(n):
            label = r.choices(list(SHARE), weights=list(SHARE.values()))[0]
            row = {"instruction": r.choice(FORMS).format(w=r.choice(CUES[label])), "response": label}
            f.write(json.dumps(row) + "\n")
    return path


def test_evaluate_beats_majority_and_matches_sklearn(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    train, test = write_task(tmp_path / "train.jsonl", 400, 0), write_task(tmp_path / "test.jsonl", 60, 1)
    run = tmp_path / "run"
    res = run_cli(
        [*DATA, f"dataset.path={train}", "train.max_steps=80", "train.eval_interval=40",
         "train.checkpoint_interval=40", "train.progress=false", f"hydra.run.dir={run}"],
        cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "eval"
    res = run_cli(
        ["recipe=evaluate", f"eval.run={run}", *DATA, f"dataset.path={test}", "tracking=tensorboard",
         f"hydra.run.dir={out}"],
        cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((out / "eval" / "metrics.json").read_text())
    assert m["labels"] == ["animal", "colour", "fruit"] and m["examples"] == 60
    assert m["accuracy"] > m["majority_accuracy"] + 0.2, m

    preds = [json.loads(x) for x in (out / "eval" / "predictions.jsonl").read_text().splitlines()]
    rows = [json.loads(x) for x in test.read_text().splitlines()]
    assert [p["reference"] for p in preds] == [r["response"] for r in rows]  # test-set order
    y_true, y_pred = [p["label"] for p in preds], [p["predicted_label"] for p in preds]
    assert m["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    labels = m["labels"]
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    for i, lab in enumerate(labels):
        assert m["per_label"][lab] == pytest.approx(
            {"precision": p[i], "recall": r[i], "f1": f[i], "support": s[i]}
        )
    mp, mr, mf, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="macro", zero_division=0
    )
    assert (m["macro_precision"], m["macro_recall"], m["macro_f1"]) == pytest.approx((mp, mr, mf))
    cm = m["confusion_matrix"]
    assert cm["matrix"] == confusion_matrix(y_true, y_pred, labels=cm["labels"]).tolist()
    assert m["exact_match"] == pytest.approx(sum(p["exact_match"] for p in preds) / 60)

    line = read_metrics(out)[-1]
    assert line["accuracy"] == m["accuracy"] and line["eval_loss"] == m["eval_loss"]
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    # Under torchrun (2 processes, each its share of the rows): the same predictions and metrics.
    out2 = tmp_path / "eval2"
    res = run_cli(
        ["recipe=evaluate", f"eval.run={run}", *DATA, f"dataset.path={test}", "hardware.nproc_per_node=2",
         f"hydra.run.dir={out2}"],
        cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert (out2 / "eval" / "predictions.jsonl").read_text() == (
        out / "eval" / "predictions.jsonl"
    ).read_text()
    m2 = json.loads((out2 / "eval" / "metrics.json").read_text())
    assert {k: m2[k] for k in ("accuracy", "macro_f1", "exact_match")} == {
        k: m[k] for k in ("accuracy", "macro_f1", "exact_match")
    }
    assert m2["eval_loss"] == pytest.approx(m["eval_loss"], rel=1e-5)

    from framework import report

    assert report.main([str(out), "--out", str(tmp_path / "r.png")]) == 0
    assert f"accuracy {m['accuracy']:.3f} (majority {m['majority_accuracy']:.3f})" in capsys.readouterr().out


def test_evaluate_needs_a_run(tmp_path: Path) -> None:
    res = run_cli(["recipe=evaluate", f"hydra.run.dir={tmp_path / 'e'}"], cwd=tmp_path)
    assert res.returncode == 2
    assert "recipe=evaluate needs eval.run" in res.stderr
    res = run_cli(
        ["recipe=evaluate", f"eval.run={tmp_path / 'gone'}", f"hydra.run.dir={tmp_path / 'e'}"], cwd=tmp_path
    )
    assert res.returncode == 2 and f"eval.run={tmp_path / 'gone'} does not exist" in res.stderr
