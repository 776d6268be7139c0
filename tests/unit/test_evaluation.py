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


CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def test_chat_test_set_prompts_references_and_loss_rows(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A chat test set: the prompt is the conversation before the last assistant turn (the reference), rendered
    by the data pipeline with the generation prompt; the loss rows train on that last turn only."""
    import json

    from transformers import AutoTokenizer

    from framework.config import package_path
    from framework.evaluation import test_set

    path = tmp_path / "test.jsonl"
    chats = [
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "3+3?"},
            {"role": "assistant", "content": "6"},
        ],
    ]
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in chats))
    tok = AutoTokenizer.from_pretrained(package_path("pkg://framework.data/sample/tokenizer"))
    ds = OmegaConf.create(
        {"name": "chat", "path": str(path), "format": "chat", "chat_template": CHAT_TEMPLATE, "max_seq_len": 256,
         "overlong": "truncate", "train_on": "assistant"}
    )  # fmt: skip
    prompts, refs, rows = test_set(ds, tok)
    assert refs == ["hello", "6"]
    assert prompts == [
        "<|user|>hi</s><|assistant|>",
        "<|system|>be brief</s><|user|>2+2?</s><|assistant|>4</s><|user|>3+3?</s><|assistant|>",
    ]
    trained = [tok.decode([t for t in r.labels if t != -100]) for r in rows]
    assert [t.replace(" ", "") for t in trained] == ["hello</s>", "6</s>"]
