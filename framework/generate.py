"""Generate text from a run directory, an export, or any pretrained Hugging Face model directory.

    python -m framework.generate outputs/run --prompt "Summarise: ..."
    python -m framework.generate outputs/run/export/merged --file prompts.jsonl --out preds.jsonl
    python -m framework.generate /models/Llama-3.2-1B-Instruct --chat
    python -m framework.generate s3://bucket/runs/x --step 400 --prompt "..." --do-sample --temperature 0.7

The prompt is formatted as in training: a run's ``dataset.template``, else the tokenizer's chat template (an
export carries the run's template as its chat template), else the raw text (``--raw`` always sends the raw
text). A prompts file is JSONL: one object per line with ``prompt`` (or the run's ``dataset.prompt_field`` and
``input_field``), or ``messages`` (a chat: ``[{"role": "user", "content": ...}, ...]``); the output file holds
each input object with ``generation`` added, in input order. Greedy decoding unless ``--do-sample``. Prompts are
generated in batches (left-padded, longest first), on CUDA when available.

:func:`generate` is the function evaluation and in-training samples call.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from framework import storage
from framework.errors import EXIT_USAGE, FrameworkError, UsageError

log = logging.getLogger("framework.generate")


@dataclass
class Settings:
    """Decoding settings (greedy by default)."""

    max_new_tokens: int = 128  # tokens generated per prompt at most
    do_sample: bool = False  # sample instead of greedy decoding
    temperature: float = 1.0  # sampling temperature
    top_p: float = 1.0  # nucleus sampling mass
    top_k: int = 0  # sample from the k most likely tokens; 0: no limit
    batch_size: int = 8  # prompts per generate call
    seed: int = 0  # sampling seed

    def kwargs(self, tokenizer: Any) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "use_cache": True,
        }
        if self.do_sample:
            kw.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k or None)
        else:  # silence the "do_sample=False but temperature set" warnings of a model's generation config
            kw.update(temperature=None, top_p=None, top_k=None)
        return kw


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    source: str
    kind: str  # run | adapter | model
    dataset: DictConfig | None = None  # the run's dataset config: its prompt template is the training format
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------- loading


def _local_dir(uri: str) -> Path:
    return Path(storage.local_copy(uri)) if storage.is_remote(uri) else Path(uri).expanduser()


def load(
    source: str,
    *,
    step: int | None = None,
    best: bool = False,
    device: str = "auto",
    dtype: str = "auto",
    merge: bool = True,
) -> Loaded:
    """The model and tokenizer of a run dir (final state, ``step`` or ``best``), an adapter dir (its base from
    ``adapter_config.json``), or an HF model dir (an export or any pretrained one). LoRA adapters are merged into
    the base for generation unless ``merge=False`` (the same outputs, without the adapters' extra matmuls)."""
    from framework import export as ex

    source = str(source).rstrip("/") or "/"
    if storage.exists(storage.join(source, "config.yaml")):
        run = ex.Run.open(source)
        if run.is_lora:
            ex.require_base(run)
        tokenizer = ex.ensure_chat_template(ex.load_tokenizer_for(run), run.cfg.get("dataset"))
        model = ex.load_model(ex.select(run, step=step, best=best), tokenizer)
        loaded = Loaded(model, tokenizer, source, "run", run.cfg.get("dataset"))
    elif step is not None or best:
        raise UsageError(f"--step/--best need a run directory; {source} has no config.yaml")
    elif storage.exists(storage.join(source, "adapter_config.json")):
        loaded = _load_adapter(source)
    elif storage.exists(storage.join(source, "config.json")):
        from transformers import AutoModelForCausalLM

        local = _local_dir(source)
        model = AutoModelForCausalLM.from_pretrained(str(local), dtype="auto")
        loaded = Loaded(model, _tokenizer(local, source), source, "model")
    else:
        what = (
            "does not exist" if not storage.exists(source) else "holds no config.yaml, config.json or adapter"
        )
        raise UsageError(
            f"{source} {what}; pass a run directory, an export (python -m framework.export), or a Hugging "
            "Face model directory"
        )
    if merge and hasattr(loaded.model, "merge_and_unload"):
        loaded.model = loaded.model.merge_and_unload()
    loaded.model = _place(loaded.model, device, dtype)
    loaded.model.eval()
    return loaded


def _tokenizer(local: Path, source: str) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(local))
    except (OSError, ValueError) as e:
        raise UsageError(f"{source} holds no loadable tokenizer ({e}); save one beside the model") from e
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def _load_adapter(source: str) -> Loaded:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    local = _local_dir(source)
    base_ref = json.loads((local / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base_ref or not storage.exists(storage.join(str(base_ref), "config.json")):
        raise UsageError(
            f"the base of adapter {source} cannot be found: adapter_config.json names {base_ref!r}, which does "
            "not exist or holds no config.json; set base_model_name_or_path there to the base model's "
            "directory, or export the run with --merge"
        )
    base = AutoModelForCausalLM.from_pretrained(str(_local_dir(str(base_ref))), dtype="auto")
    model = PeftModel.from_pretrained(base, str(local))
    return Loaded(model, _tokenizer(local, source), source, "adapter")


def _place(model: Any, device: str, dtype: str) -> Any:
    import torch

    from framework.export import DTYPES

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype != "auto":
        model = model.to(getattr(torch, DTYPES[dtype]))
    model.config.use_cache = True
    return model.to(device)


# ----------------------------------------------------------------------------------------------- prompts


def source_of(dataset: DictConfig | None) -> Any:
    """The run's (first) data source: its format, fields and templates (framework.data.rows.Source)."""
    if dataset is None:
        return None
    from framework.data.rows import sources_of

    return sources_of(dataset)[0]


_FORMATS: dict[str, str] = {}


def trained_format(src: Any) -> str:
    """The row style training used: ``dataset.format``, or for auto what the data pipeline detects in the
    training file (read once; an unreadable file counts as instruction rows)."""
    if src.format != "auto":
        return str(src.format)
    if src.path not in _FORMATS:
        from framework.data.read import read
        from framework.data.rows import detect

        try:
            _FORMATS[src.path] = detect(read(src.path, key=f"{src.key}.path", split=src.split), src)
        except (FrameworkError, OSError) as e:
            log.info(
                "could not read %s to see its format (%s); formatting prompts as instructions", src.path, e
            )
            _FORMATS[src.path] = "prompt_response"
    return _FORMATS[src.path]


def render_chat(messages: list[dict[str, Any]], tokenizer: Any, dataset: DictConfig | None) -> str:
    """A conversation up to the reply to generate, rendered by the data pipeline's renderer (the training
    rendering: ``dataset.chat_template``, else the tokenizer's), with the generation prompt."""
    from framework.data.chat import Renderer

    src = source_of(dataset)
    template, key = (src.chat_template, src.key) if src is not None else (None, "dataset")
    if template is None and not getattr(tokenizer, "chat_template", None):
        raise UsageError(
            "a chat (messages) was given but neither the tokenizer nor the run's dataset.chat_template has a chat "
            "template; set one, or give a prompt instead"
        )
    msgs = [{"role": m["role"], "content": m.get("content") or ""} for m in messages]
    return Renderer(tokenizer, template, key).render(msgs, True)


def format_prompt(
    item: str | dict[str, Any], tokenizer: Any, dataset: DictConfig | None, raw: bool = False
) -> str:
    """The one place a prompt is formatted for generation, as training formatted it (see the module docstring).

    ``item``: a string, ``{"messages": [...]}``, or a dataset row (``prompt`` or the dataset's prompt field,
    with its input field). Instruction rows go through the source's ``template`` / ``input_template`` exactly as
    ``framework.data.rows.examples`` renders them; chats through :func:`render_chat`."""
    src = source_of(dataset)
    if isinstance(item, dict) and "messages" in item:
        return render_chat(item["messages"], tokenizer, dataset)
    extra = None
    if isinstance(item, dict):
        field = (
            src.prompt_field if src is not None and isinstance(item.get(src.prompt_field), str) else "prompt"
        )
        if not isinstance(item.get(field), str):
            fields = "prompt" + (f" or {src.prompt_field}" if src is not None else "")
            raise UsageError(f"each prompt object needs a string {fields} field, or messages")
        extra = item.get(src.input_field) if src is not None and src.input_field else None
        item = item[field]
    if raw:
        return item
    if src is not None and trained_format(src) != "chat":
        if isinstance(extra, str) and extra.strip():
            return src.input_template.format(prompt=item, input=extra)
        return src.template.format(prompt=item, input="")
    if getattr(tokenizer, "chat_template", None) or (src is not None and src.chat_template):
        return render_chat([{"role": "user", "content": item}], tokenizer, dataset)
    return item


def prompt_ids(text: str, tokenizer: Any) -> list[int]:
    """Token ids of a formatted prompt as training tokenizes it: no special tokens added, except the BOS the
    data pipeline puts in front (framework.data.chat.bos_to_add) when the text does not start with it."""
    from framework.data.chat import bos_to_add

    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = bos_to_add(tokenizer)
    if bos is not None and not (tokenizer.bos_token and text.startswith(tokenizer.bos_token)):
        ids = [bos, *ids]
    return ids


# ----------------------------------------------------------------------------------------------- generation


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str] | Sequence[list[int]],
    settings: Settings | None = None,
    *,
    synced_gpus: bool = False,
) -> list[str]:
    """Generations for ``prompts`` (formatted text, or token ids as training tokenized them), in order.

    Batched longest first with left padding; the text after the prompt up to EOS, special tokens dropped.
    """
    import torch

    s = settings or Settings()
    ids = [p if isinstance(p, list) else prompt_ids(p, tokenizer) for p in prompts]
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    out: list[str] = [""] * len(ids)
    device = next(model.parameters()).device
    kwargs = s.kwargs(tokenizer)
    if s.do_sample:
        torch.manual_seed(s.seed)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), s.batch_size):
            batch = [ids[i] for i in order[start : start + s.batch_size]]
            width = max(len(b) for b in batch)
            input_ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, b in enumerate(batch):
                if b:
                    input_ids[row, width - len(b) :] = torch.tensor(b)
                    mask[row, width - len(b) :] = 1
            gen = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=mask.to(device),
                synced_gpus=synced_gpus,
                **kwargs,
            )
            new = gen[:, width:].tolist()
            for i, tokens in zip(order[start : start + s.batch_size], new, strict=True):
                if tokenizer.eos_token_id in tokens:
                    tokens = tokens[: tokens.index(tokenizer.eos_token_id)]
                out[i] = tokenizer.decode(tokens, skip_special_tokens=True)
    if was_training:
        model.train()
    return out


# ----------------------------------------------------------------------------------------------- CLI


def read_prompts(path: str) -> list[dict[str, Any]]:
    """JSONL prompt objects; a bad line is a UsageError naming file:line."""
    local = _local_dir(path)
    if not local.is_file():
        raise UsageError(f"prompts file {path} does not exist; fix --file")
    items: list[dict[str, Any]] = []
    for lineno, line in enumerate(local.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise UsageError(f"{path}:{lineno}: not JSON ({e}); one JSON object per line") from e
        if isinstance(obj, str):
            obj = {"prompt": obj}
        if not isinstance(obj, dict):
            raise UsageError(f"{path}:{lineno}: expected an object with prompt or messages")
        items.append(obj)
    if not items:
        raise UsageError(f"prompts file {path} holds no prompts")
    return items


def chat(loaded: Loaded, settings: Settings) -> None:
    """An interactive chat on stdin/stdout; the whole conversation is the prompt of each turn."""
    history: list[dict[str, str]] = []
    print("Chat with the model; an empty line or Ctrl-D ends it.", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            break
        if not line.strip():
            break
        history.append({"role": "user", "content": line})
        if getattr(loaded.tokenizer, "chat_template", None):
            prompt = format_prompt({"messages": history}, loaded.tokenizer, loaded.dataset)
        else:
            prompt = format_prompt(line, loaded.tokenizer, loaded.dataset)
        reply = generate(loaded.model, loaded.tokenizer, [prompt], settings)[0]
        history.append({"role": "assistant", "content": reply})
        print(reply, flush=True)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m framework.generate",
        description=(
            "Generate from a run directory (its adapter or model, or --step/--best checkpoint), an export, or "
            "a Hugging Face model directory (local or s3://). Prompts are formatted as in training (the run's "
            "prompt template, else the tokenizer's chat template). Greedy unless --do-sample."
        ),
        epilog="Exit codes: 0 done; 2 bad input (the message names the path and the fix); 1 runtime failure.",
    )
    p.add_argument("source", help="run dir, export dir, or pretrained HF model dir (local or URI)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", action="append", help="a prompt (repeat for several; generated as a batch)")
    what.add_argument("--file", help="JSONL of prompts (prompt / messages per line); see --out")
    what.add_argument("--chat", action="store_true", help="interactive chat on the terminal")
    p.add_argument(
        "--out", help="with --file: JSONL to write (each input object plus generation); default stdout"
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--step", type=int, help="run dir: generate from checkpoints/step_N")
    which.add_argument(
        "--best", action="store_true", help="run dir: the checkpoint with the lowest eval loss"
    )
    p.add_argument("--raw", action="store_true", help="send prompts as they are, without any template")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--do-sample", action="store_true", help="sample (default: greedy)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0: no top-k limit")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per generate call")
    p.add_argument("--device", default="auto", help="auto (CUDA when available) | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.out and not args.file:
        print("generate: error: --out goes with --file; pass --file prompts.jsonl", file=sys.stderr)
        return EXIT_USAGE
    settings = Settings(
        max_new_tokens=args.max_new_tokens,
        do_sample=args.do_sample,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    try:
        items: list[Any] = read_prompts(args.file) if args.file else list(args.prompt or [])
        loaded = load(args.source, step=args.step, best=args.best, device=args.device, dtype=args.dtype)
        if args.chat:
            chat(loaded, settings)
            return 0
        prompts = [format_prompt(it, loaded.tokenizer, loaded.dataset, raw=args.raw) for it in items]
        outputs = generate(loaded.model, loaded.tokenizer, prompts, settings)
    except FrameworkError as e:
        print(f"generate: error: {e}", file=sys.stderr)
        return e.exit_code
    if args.file:
        lines = "".join(
            json.dumps({**it, "generation": g}, ensure_ascii=False) + "\n"
            for it, g in zip(items, outputs, strict=True)
        )
        if args.out:
            storage.write_text_atomic(args.out, lines)
            print(f"Wrote {len(outputs)} generations to {args.out}", file=sys.stderr)
        else:
            sys.stdout.write(lines)
    else:
        for g in outputs:
            print(g)
    return 0


if __name__ == "__main__":
    sys.exit(main())
