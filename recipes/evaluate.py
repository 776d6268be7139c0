"""Evaluation of a trained run, an export or a pretrained model on a held-out test set.

Nothing is trained and nothing is exported. Reads every example of ``dataset.path`` (any supported data
format), generates greedily with ``framework.generate`` (the prompt template as in training), and writes
``eval/metrics.json`` (loss, perplexity, exact match; accuracy, per-label and macro precision/recall/F1 and the
confusion matrix when the references are labels) and ``eval/predictions.jsonl`` to its run directory, one line
to the run's metrics file and the trackers. See ``framework/evaluation.py`` for how each metric is computed.

    python -m framework recipe=evaluate eval.run=outputs/run dataset=jsonl dataset.path=test.jsonl
    python -m framework recipe=evaluate eval.run=outputs/run eval.best=true eval.labels=[positive,negative] ...
    python -m framework recipe=evaluate eval.run=s3://bucket/runs/x hardware.nproc_per_node=2   # under torchrun
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from framework.evaluation import evaluate_run
from framework.rundir import run_dir_for


def main(cfg: DictConfig) -> dict[str, Any]:
    return evaluate_run(cfg, run_dir_for(cfg))
