"""``python -m framework.prepare [the same overrides as training] [--show N]``: tokenize once, train many times.

Reads, renders, tokenizes, masks, splits, mixes and packs the dataset exactly as training would, and stores the
result in the prepared cache (``framework.data.prepared``; ``dataset.cache_dir`` may be ``s3://`` so every pod
and sweep job shares one copy). Training with the same overrides then only reads it. Prints what happened per
source (examples, truncated, dropped, tokens; a mixture's target and achieved shares), ``--show N`` prints N
training examples decoded with the trained spans between « and », and the last line is the location::

    python -m framework.prepare dataset=chat dataset.path=chats.jsonl model.pretrained=/models/x --show 3
    python -m framework dataset=chat dataset.path=chats.jsonl model.pretrained=/models/x   # reads it

Exit codes as for training: 0 done, 2 bad config or data (the message names the file, the row and the fix).
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import Any

from framework.errors import ConfigError

log = logging.getLogger("framework")
OPEN, CLOSE = "«", "»"


def parse_args(argv: list[str]) -> tuple[list[str], int]:
    """(Hydra overrides, --show N)."""
    overrides, show, i = [], 0, 0
    while i < len(argv):
        a = argv[i]
        if a in ("-h", "--help"):
            print(__doc__)
            raise SystemExit(0)
        if a == "--show" or a.startswith("--show="):
            value = a.partition("=")[2] if "=" in a else (argv[i + 1] if i + 1 < len(argv) else "")
            i += 0 if "=" in a else 1
            if not value.isdigit():
                raise ConfigError(f"--show needs a number of examples, got {value!r}; e.g. --show 3")
            show = int(value)
        else:
            overrides.append(a)
        i += 1
    return overrides, show


def compose(overrides: list[str]) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from framework.config import conf_dir, register
    from framework.validate import check

    register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=overrides)
    return check(cfg)


def show_examples(train: Any, tokenizer: Any, n: int) -> list[str]:
    """The first ``n`` documents of the training split, decoded, with the tokens that carry loss in « »."""
    out: list[str] = []
    for batch in train.to_batches(max_chunksize=64):
        for row in batch.to_pylist():
            ids, labels, pos = row["input_ids"], row["labels"], row["position_ids"]
            starts = [i for i, p in enumerate(pos) if p == 0] + [len(ids)]
            for a, b in zip(starts, starts[1:], strict=False):
                if len(out) >= n:
                    return out
                out.append(_decode_marked(ids[a:b], labels[a:b], tokenizer, len(out) + 1))
    return out


def _decode_marked(ids: list[int], labels: list[int], tokenizer: Any, number: int) -> str:
    """Labels are not shifted: label t is the loss on predicting token t (the first token of a packed
    document never has one: nothing predicts across documents)."""
    pieces: list[str] = []
    run: list[int] = []
    trained = False
    for t, label in zip(ids, labels, strict=True):
        on = label != -100
        if on != trained and run:
            piece = tokenizer.decode(run, skip_special_tokens=False)
            pieces.append(f"{OPEN}{piece}{CLOSE}" if trained else piece)
            run = []
        trained = on
        run.append(t)
    if run:
        piece = tokenizer.decode(run, skip_special_tokens=False)
        pieces.append(f"{OPEN}{piece}{CLOSE}" if trained else piece)
    n_trained = sum(1 for x in labels if x != -100)
    return f"--- example {number}: {len(ids)} tokens, {n_trained} trained\n" + "".join(pieces)


def summary(info: dict[str, Any]) -> list[str]:
    lines = []
    mixture = len(info["sources"]) > 1
    for r in info["sources"]:
        st = r["stats"]
        line = (
            f"{r['name']} ({r['format']}, {r['path']}): {st['examples']} examples, {st['tokens']} tokens; "
            f"{st['truncated']} truncated, {st['dropped']} dropped; {r['train_examples']} train / "
            f"{r['val_examples']} validation"
        )
        if mixture:
            line += (
                f"; drawn {r['mixed_examples']} examples ({r['mixed_tokens']} tokens): share "
                f"{100 * r['achieved_share']:.1f}% (weight {100 * r['target_share']:.1f}%)"
            )
        lines.append(line)
    sp = info["splits"]
    s = info["settings"]
    lines.append(
        f"{sp['train']} train and {sp['validation']} validation sequences (max_seq_len {s['max_seq_len']}, "
        f"packing {'on' if s['packing'] else 'off'}, seed {s['seed']})"
        + ("; mixture shares are by examples" if mixture else "")
    )
    return lines


def run(overrides: list[str], show: int) -> str:
    from framework import storage
    from framework.data import prepared as P
    from framework.model import load_tokenizer

    cfg = compose(overrides)
    storage.configure_from_config(cfg.storage)
    tokenizer = load_tokenizer(cfg)
    loc = P.location(cfg.dataset, tokenizer, cfg.train.seed)
    found = P.load(loc)
    if found is None:
        found = P.prepare(cfg.dataset, tokenizer, cfg.train.seed)
        P.save(found)
        print("prepared:")
    else:
        print("already prepared (the data, tokenizer and options are unchanged):")
    for line in summary(found.info):
        print(f"  {line}")
    if show:
        for block in show_examples(found.train, tokenizer, show):
            print(block)
    print(loc)
    return loc


def main(argv: list[str] | None = None) -> int:
    from framework.__main__ import describe_error

    args = sys.argv[1:] if argv is None else list(argv)
    debug = os.environ.get("FRAMEWORK_DEBUG") == "1" or "debug=true" in args
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    try:
        overrides, show = parse_args(args)
        run(overrides, show)
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else 0
    except KeyboardInterrupt:
        return 130
    except BaseException as e:  # noqa: BLE001 - the single place errors become exit codes
        msg, code = describe_error(e)
        if debug:
            traceback.print_exception(e)
        print(f"error: {msg}", file=sys.stderr, flush=True)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
