"""Task metrics on a held-out set (the ``evaluate`` recipe) and generated samples during training.

    python -m framework recipe=evaluate eval.run=outputs/run dataset=jsonl dataset.path=test.jsonl
    python -m framework ... eval.samples=4        # training: 4 fixed validation prompts generated at every eval

Evaluation reads every example of ``dataset.path`` (the test set; no split) and reports:

- ``eval_loss`` / ``perplexity``: token-weighted cross-entropy of the references given the prompts (teacher
  forcing), exactly as training's eval computes it;
- ``exact_match``: the share of generations equal to the reference after :func:`normalize` (Unicode NFKC,
  case-folded, whitespace runs collapsed to one space, leading/trailing whitespace and punctuation removed);
- when the references come from a small label set (``eval.labels``, or detected: at most ``eval.max_labels``
  distinct normalised references, and at least two examples per label on average): ``accuracy``, per-label and
  macro precision / recall / F1 and the confusion matrix, computed with scikit-learn. A generation counts as the
  label it equals after normalisation, else the longest label it starts with (followed by a word boundary), else
  ``<unmatched>`` (always wrong). ``majority_accuracy`` is the accuracy of always answering the most common label.

Written to ``<run>/eval/metrics.json`` and ``<run>/eval/predictions.jsonl`` (one line per example, in test-set
order), one line in the run's metrics file (framework.rundir), and the trackers. Under torchrun each rank evaluates its share.

Nothing here imports torch at module level (the schema is part of the composed config).
"""

from __future__ import annotations

import json
import logging
import math
import re
import string
import time
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("framework.evaluation")

UNMATCHED = "<unmatched>"
SAMPLES = "samples.jsonl"
IGNORE = -100  # framework.data.tokenize.IGNORE_INDEX (not imported: this module stays light)


@dataclass
class EvalConfig:
    run: str | None = None  # recipe=evaluate: run dir, export or HF model dir to evaluate (local path or URI)
    step: int | None = None  # recipe=evaluate on a run dir: its checkpoints/step_N instead of the final state
    best: bool = False  # recipe=evaluate on a run dir: its checkpoint with the lowest eval loss
    labels: list[str] | None = None  # the label set of a classification task; null: detected from references
    max_labels: int = 20  # label detection: at most this many distinct (normalised) references
    max_new_tokens: int = 64  # tokens generated per example at most
    batch_size: int = 8  # prompts per generate call
    samples: int = 0  # training: generate from this many fixed validation prompts at every eval; 0: off
    samples_max_new_tokens: int = 64  # training samples: tokens generated per prompt at most


def eval_problems(cfg: Any) -> list[str]:
    """Problems of the ``eval`` section (for the one validation pass; no torch)."""
    from omegaconf import OmegaConf

    e = cfg.get("eval")
    if e is None:
        return []
    problems = []
    recipe = OmegaConf.select(cfg, "recipe.name", throw_on_missing=False)
    if recipe == "evaluate" and not OmegaConf.select(cfg, "eval.run", throw_on_missing=False):
        problems.append(
            "recipe=evaluate needs eval.run: the run directory, export or model directory to evaluate; pass "
            "eval.run=outputs/<run>"
        )
    if e.step is not None and e.best:
        problems.append("eval.step and eval.best both set; choose one")
    for key in ("max_new_tokens", "batch_size", "max_labels", "samples_max_new_tokens"):
        if int(e[key]) < 1:
            problems.append(f"eval.{key}={e[key]} must be >= 1")
    if int(e.samples) < 0:
        problems.append(f"eval.samples={e.samples} must be >= 0")
    if e.labels is not None and len({normalize(str(x)) for x in e.labels}) < 2:
        problems.append(f"eval.labels={list(e.labels)} needs at least two distinct labels")
    return problems


# ----------------------------------------------------------------------------------------------- metrics


_PUNCT = string.punctuation + "\u2018\u2019\u201c\u201d"


def normalize(text: str) -> str:
    """Exact-match normalisation: NFKC, case-folded, whitespace collapsed, outer whitespace/punctuation removed."""
    t = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    return t.strip(_PUNCT + " ")


def detect_labels(
    references: Sequence[str], given: Sequence[str] | None, max_labels: int
) -> list[str] | None:
    """The label set: ``given`` (normalised), else the distinct references when they are few; else None."""
    if given:
        return sorted(dict.fromkeys(normalize(str(x)) for x in given))
    distinct = sorted({normalize(r) for r in references})
    if 2 <= len(distinct) <= max_labels and 2 * len(distinct) <= len(references):
        return distinct
    return None


def to_label(generation: str, labels: Sequence[str]) -> str:
    """The label a generation names (see the module docstring), or UNMATCHED."""
    g = normalize(generation)
    if g in labels:
        return g
    for label in sorted(labels, key=len, reverse=True):
        if g.startswith(label) and re.match(r"\W|$", g[len(label) :]):
            return label
    return UNMATCHED


def task_metrics(
    references: Sequence[str], generations: Sequence[str], labels: Sequence[str] | None
) -> tuple[dict[str, Any], list[str] | None]:
    """Exact match, and with ``labels`` the classification metrics (scikit-learn); also the predicted labels."""
    n = len(references)
    em = sum(normalize(r) == normalize(g) for r, g in zip(references, generations, strict=True))
    out: dict[str, Any] = {"examples": n, "exact_match": em / n if n else 0.0}
    if not labels:
        return out, None
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    y_true = [normalize(r) for r in references]
    y_pred = [to_label(g, labels) for g in generations]
    known = list(labels)
    p, r, f, support = precision_recall_fscore_support(y_true, y_pred, labels=known, zero_division=0)
    mp, mr, mf, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=known, average="macro", zero_division=0
    )
    cm_labels = known + ([UNMATCHED] if UNMATCHED in y_pred or UNMATCHED in y_true else [])
    counts = Counter(y_true)
    out.update(
        {
            "accuracy": float(accuracy_score(y_true, y_pred)),
            "macro_precision": float(mp),
            "macro_recall": float(mr),
            "macro_f1": float(mf),
            "majority_label": counts.most_common(1)[0][0],
            "majority_accuracy": counts.most_common(1)[0][1] / n,
            "unmatched": sum(y == UNMATCHED for y in y_pred),
            "labels": known,
            "per_label": {
                lab: {
                    "precision": float(p[i]),
                    "recall": float(r[i]),
                    "f1": float(f[i]),
                    "support": int(support[i]),
                }
                for i, lab in enumerate(known)
            },
            "confusion_matrix": {
                "labels": cm_labels,  # rows: reference, columns: prediction
                "matrix": confusion_matrix(y_true, y_pred, labels=cm_labels).tolist(),
            },
        }
    )
    return out, y_pred


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers of a metrics dict as flat scalars for the metrics file and the trackers."""
    flat = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    for lab, vals in metrics.get("per_label", {}).items():
        key = re.sub(r"[^\w.-]", "_", lab)[:60]
        flat.update({f"{name}/{key}": float(v) for name, v in vals.items() if name != "support"})
    return flat


# ----------------------------------------------------------------------------------------------- loss


def reference_loss(model: Any, examples: Sequence[Any], pad_id: int, batch_size: int) -> tuple[float, float]:
    """(sum of token losses, tokens) of the references given the prompts, teacher forced, labels as training's."""
    import torch

    from framework.dataset import IGNORE_INDEX

    device = next(model.parameters()).device
    loss_sum, n_tok = 0.0, 0.0
    with torch.inference_mode():
        for start in range(0, len(examples), batch_size):
            batch = examples[start : start + batch_size]
            width = max(len(e.input_ids) for e in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, e in enumerate(batch):
                ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
                labels[i, : len(e.labels)] = torch.tensor(e.labels)
                mask[i, : len(e.input_ids)] = 1
            n = int((labels[:, 1:] != IGNORE_INDEX).sum())
            if n == 0:
                continue
            out = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device))
            loss_sum += float(out.loss) * n
            n_tok += n
    return loss_sum, n_tok


# ----------------------------------------------------------------------------------------------- recipe


def _gather(items: list[Any]) -> list[Any]:
    """Every rank's list, concatenated in rank order (one list per process when not distributed)."""
    import torch.distributed as tdist

    if not tdist.is_initialized() or tdist.get_world_size() == 1:
        return items
    parts: list[Any] = [None] * tdist.get_world_size()
    tdist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


def test_set(ds: Any, tokenizer: Any) -> tuple[list[str], list[str], list[Any]]:
    """The test set read, recognized and rendered by the data pipeline (any format it reads): each row's prompt
    (a chat: the conversation before its last assistant turn, with the generation prompt) and reference (the
    response, or that last turn), and the tokenized rows for the loss (a chat: on its last turn only)."""
    from framework.data.chat import Renderer
    from framework.data.read import read
    from framework.data.rows import detect, examples, sources_of
    from framework.data.tokenize import tokenize_chats, tokenize_instructions
    from framework.errors import DataError

    src = sources_of(ds)[0]
    table = read(src.path, key=f"{src.key}.path", split=src.split)
    if len(table.data) == 0:
        raise DataError(f"{src.path} holds no examples; point {src.key}.path at a non-empty test set")
    fmt = detect(table, src)
    rows = examples(table, src, fmt, int(ds.get("max_row_chars", 1_000_000)))
    max_len, overlong = int(ds.max_seq_len), str(ds.overlong)
    if fmt != "chat":
        toks, _ = tokenize_instructions(rows, tokenizer, max_len, overlong)  # type: ignore[arg-type]
        return [r.prompt for r in rows], [r.response for r in rows], toks  # type: ignore[union-attr]
    renderer = Renderer(tokenizer, src.chat_template, src.key)
    prompts, refs = [], []
    for i, chat in enumerate(rows):
        msgs = [{"role": r, "content": c} for r, c, _ in chat.messages]  # type: ignore[union-attr]
        last = max((k for k, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
        if last is None:
            raise DataError(f"{table.where(i)}: a test conversation needs an assistant turn (the reference)")
        prompts.append(renderer.render(msgs[:last], True))
        refs.append(msgs[last]["content"])
    toks, _ = tokenize_chats(rows, tokenizer, renderer, "last_assistant", max_len, overlong, table.where)  # type: ignore[arg-type]
    return prompts, refs, toks


def evaluate_run(cfg: Any, run_uri: str) -> dict[str, Any]:
    """The ``evaluate`` recipe: load ``eval.run``, score ``dataset.path``, write ``<run_uri>/eval/``."""
    import torch

    from framework import distributed as dist
    from framework import storage
    from framework.config import resolved, resolved_yaml
    from framework.generate import Settings, generate, load
    from framework.rundir import METRICS
    from framework.tracking import make_trackers
    from framework.train import cpu_threads

    t0 = time.time()
    e = cfg.eval
    storage.configure_from_config(cfg.storage)
    dist.init(cfg.hardware.accelerator)
    torch.set_num_threads(cpu_threads(cfg, torch.get_num_threads()))
    rank0, rank, world = dist.is_rank0(), dist.rank(), dist.world_size()
    device = "cuda" if cfg.hardware.accelerator == "cuda" else "cpu"
    dtype = "auto" if cfg.hardware.accelerator == "cuda" else "fp32"
    loaded = load(str(e.run), step=e.step, best=bool(e.best), device=device, dtype=dtype)
    tok = loaded.tokenizer
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    ds = cfg.dataset
    all_prompts, all_refs, examples = test_set(ds, tok)
    mine = list(range(rank, len(all_prompts), world))
    loss_sum, n_tok = reference_loss(loaded.model, examples[rank::world], tok.pad_token_id, e.batch_size)
    loss_sum, n_tok = dist.all_reduce_sum([loss_sum, n_tok])
    prompts = [all_prompts[i] for i in mine]
    settings = Settings(max_new_tokens=int(e.max_new_tokens), batch_size=int(e.batch_size))
    gens = generate(loaded.model, tok, prompts, settings)
    done = sorted(_gather(list(zip(mine, prompts, gens, strict=True))))
    result: dict[str, Any] = {"status": "COMPLETED", "run_dir": run_uri}
    if rank0:
        refs = [all_refs[i] for i, _, _ in done]
        labels = detect_labels(refs, list(e.labels) if e.labels else None, int(e.max_labels))
        loss = loss_sum / max(n_tok, 1.0)
        metrics: dict[str, Any] = {
            "eval_loss": loss,
            "perplexity": math.exp(min(loss, 50.0)),
            "tokens": n_tok,
        }
        task, predicted = task_metrics(refs, [g for _, _, g in done], labels)
        metrics.update(task)
        metrics.update({"model": str(e.run), "dataset": str(ds.path), "seconds": time.time() - t0})
        preds = []
        for j, (i, prompt, gen) in enumerate(done):
            line = {"index": i, "prompt": prompt, "reference": refs[j], "generation": gen}
            line["exact_match"] = normalize(refs[j]) == normalize(gen)
            if predicted is not None:
                line.update(label=normalize(refs[j]), predicted_label=predicted[j])
            preds.append(json.dumps(line, ensure_ascii=False) + "\n")
        step = int(e.step) if e.step is not None else 0
        scalars = scalar_metrics(metrics)
        storage.write_text_atomic(storage.join(run_uri, "config.yaml"), resolved_yaml(cfg))
        storage.write_text_atomic(storage.join(run_uri, "eval", "predictions.jsonl"), "".join(preds))
        storage.write_text_atomic(
            storage.join(run_uri, "eval", "metrics.json"), json.dumps(metrics, indent=1)
        )
        storage.write_text_atomic(
            storage.join(run_uri, METRICS), json.dumps({"step": step, **scalars}) + "\n"
        )
        tracker = make_trackers(cfg.tracking, run_uri, cfg.run_name, resolved(cfg), True)
        tracker.log_metrics(scalars, step)
        tracker.log_artifact(storage.join(run_uri, "eval"), "eval")
        tracker.close("FINISHED")
        log.info("Evaluation of %s on %s (%d examples): %s", e.run, ds.path, len(done), summary(metrics))
        log.info("Wrote %s", storage.join(run_uri, "eval"))
        result.update(
            {k: metrics.get(k) for k in ("eval_loss", "perplexity", "exact_match", "accuracy", "macro_f1")}
        )
    dist.barrier()
    return result


def summary(metrics: dict[str, Any]) -> str:
    """One line of the headline numbers."""
    parts = [f"eval_loss {metrics['eval_loss']:.4f}", f"perplexity {metrics['perplexity']:.2f}"]
    parts.append(f"exact_match {metrics['exact_match']:.3f}")
    if "accuracy" in metrics:
        parts.append(
            f"accuracy {metrics['accuracy']:.3f} (majority {metrics['majority_accuracy']:.3f}), "
            f"macro F1 {metrics['macro_f1']:.3f} over {len(metrics['labels'])} labels"
        )
    return ", ".join(parts)


# ----------------------------------------------------------------------------------------------- samples


class Samples:
    """``eval.samples=N``: the first N validation examples (fixed for the run), generated at every eval.

    Prompts are the training tokenization of each example (its tokens before the first label), so generation
    sees exactly what training did. Rank 0 appends one line per sample to ``samples.jsonl`` (step, prompt,
    generation, reference) and sends them to the trackers. Under ZeRO-3 every rank generates (the forward is a
    collective, kept in step with ``synced_gpus``); otherwise only rank 0 does. Not built when N is 0.
    """

    def __init__(self, rows: Sequence[Any], n: int, tokenizer: Any, max_new_tokens: int, path: Any) -> None:
        self.tokenizer = tokenizer
        self.path = path
        self.max_new_tokens = max_new_tokens
        self.prompts: list[list[int]] = []
        self.texts: list[str] = []
        self.references: list[str] = []
        for ids, labels in documents(rows, n):
            first = next((i for i, label in enumerate(labels) if label != IGNORE), len(labels))
            ref = [t for t in labels[first:] if t != IGNORE and t != tokenizer.eos_token_id]
            self.prompts.append(ids[:first])
            self.texts.append(tokenizer.decode(ids[:first], skip_special_tokens=True))
            self.references.append(tokenizer.decode(ref, skip_special_tokens=True))

    def __call__(self, model: Any, step: int, tracker: Any, *, zero3: bool) -> list[dict[str, Any]]:
        from framework import distributed as dist
        from framework.generate import Settings, generate

        if not self.prompts or not (zero3 or dist.is_rank0()):
            return []
        settings = Settings(max_new_tokens=self.max_new_tokens, batch_size=len(self.prompts))
        synced = zero3 and dist.world_size() > 1
        gens = generate(model, self.tokenizer, self.prompts, settings, synced_gpus=synced)
        if not dist.is_rank0():
            return []
        rows = [
            {"step": step, "prompt": p, "generation": g, "reference": r}
            for p, g, r in zip(self.texts, gens, self.references, strict=True)
        ]
        with open(self.path, "a", encoding="utf-8") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        tracker.log_samples(rows, step)
        return rows


def documents(rows: Sequence[Any], n: int) -> list[tuple[list[int], list[int]]]:
    """The first ``n`` documents of packed rows (``position_ids`` restart at 0 for each), as (ids, labels)."""
    out: list[tuple[list[int], list[int]]] = []
    for row in rows:
        k = row.n_tokens
        starts = [i for i in range(k) if row.position_ids[i] == 0] + [k]
        for a, b in zip(starts, starts[1:], strict=False):
            out.append((list(row.input_ids[a:b]), list(row.labels[a:b])))
            if len(out) == n:
                return out
    return out
