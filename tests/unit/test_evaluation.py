"""Evaluation metrics (normalisation, label detection, scikit-learn metrics) and the prompt-as-chat template."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from framework.evaluation import UNMATCHED, detect_labels, normalize, task_metrics, to_label
from framework.export import chat_template_from


def test_normalize() -> None:
    assert normalize("  Positive.\n") == "positive"
    assert normalize("ＦＲＵＩＴ") == "fruit"  # NFKC folds full-width letters
    assert normalize("New   York!") == "new york"
    assert normalize("'yes'") == "yes"


def test_detect_labels() -> None:
    refs = ["Yes", "no", "yes.", "No", "yes", "no"]
    assert detect_labels(refs, None, 20) == ["no", "yes"]
    assert detect_labels(["a b", "c d", "e f"], None, 20) is None  # every reference distinct: free text
    assert detect_labels(refs, None, 1) is None
    assert detect_labels(["x"], ["Pos", "neg"], 20) == ["neg", "pos"]


def test_to_label_prefers_exact_then_longest_prefix() -> None:
    labels = ["cat", "cat food", "dog"]
    assert to_label("Cat.", labels) == "cat"
    assert to_label("cat food is good", labels) == "cat food"
    assert to_label("category", labels) == UNMATCHED  # a word boundary must follow the label
    assert to_label("", labels) == UNMATCHED


def test_task_metrics_equal_sklearn() -> None:
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    refs = ["a", "a", "b", "c", "a", "b", "c", "c"]
    gens = ["a", "b", "b", "c.", "zzz", "b", "a", "C"]
    m, pred = task_metrics(refs, gens, ["a", "b", "c"])
    assert pred == ["a", "b", "b", "c", UNMATCHED, "b", "a", "c"]
    assert m["exact_match"] == pytest.approx(5 / 8)
    assert m["accuracy"] == pytest.approx(accuracy_score(refs, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(refs, pred, labels=["a", "b", "c"], average="macro"))
    p, r, f, s = precision_recall_fscore_support(refs, pred, labels=["a", "b", "c"], zero_division=0)
    assert [m["per_label"][x]["recall"] for x in "abc"] == pytest.approx(list(r))
    assert m["confusion_matrix"]["labels"] == ["a", "b", "c", UNMATCHED]
    assert (
        m["confusion_matrix"]["matrix"]
        == confusion_matrix(refs, pred, labels=["a", "b", "c", UNMATCHED]).tolist()
    )
    assert m["majority_accuracy"] == pytest.approx(3 / 8) and m["unmatched"] == 1


def test_free_text_has_exact_match_only() -> None:
    m, pred = task_metrics(["The cat sat."], ["the  cat sat"], None)
    assert pred is None and m == {"examples": 1, "exact_match": 1.0}


def test_chat_template_renders_the_training_prompt() -> None:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    ds = OmegaConf.create(
        {"template": "### Q {{x}}:\n{prompt}\n\n### A:\n", "prompt_field": "instruction", "input_field": None}
    )
    tpl = ImmutableSandboxedEnvironment().from_string(chat_template_from(ds.template))
    text = tpl.render(messages=[{"role": "user", "content": "Hi {there}"}], eos_token="</s>")
    assert text == ds.template.format(prompt="Hi {there}", input="")  # as the data pipeline renders a row
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "1"},
        {"role": "assistant", "content": "one"},
        {"role": "user", "content": "2"},
    ]
    assert tpl.render(messages=chat, eos_token="</s>") == (
        "### Q {x}:\nBe brief.\n\n1\n\n### A:\none</s>### Q {x}:\n2\n\n### A:\n"
    )
