"""Where ``model.pretrained`` points and what the checkpoint there is, read at validation before anything heavy.

``model.pretrained`` is one of:

- a local directory (or ``file://`` / ``pkg://``) in Hugging Face format: ``config.json``, ``*.safetensors``
  (or ``pytorch_model*.bin``), usually the tokenizer;
- a URI (``s3://bucket/models/Llama-3.1-8B``) read through :mod:`framework.storage`;
- a Hugging Face model id (``meta-llama/Llama-3.2-1B-Instruct``, optional ``model.revision``), resolved in the
  Hugging Face cache (``HF_HUB_CACHE``, else ``HF_HOME``/hub, else ``~/.cache/huggingface/hub``), downloaded
  through ``huggingface_hub`` when the hub is reachable (``HF_TOKEN`` from the environment) and
  ``HF_HUB_OFFLINE`` is not set.

:func:`apply` reads the checkpoint's ``config.json`` (no torch, no weights) and writes its architecture into
``cfg.model``, so the resolved ``config.yaml``, the logged name, the memory check and the CPU thread policy all
describe what is loaded, not what the ``model=`` group said. A value the user set on the command line that
contradicts the checkpoint is a problem naming both. :func:`weight_problems` reads the safetensors headers
(a few KB) and checks them against the file sizes and the architecture.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import struct
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict, read_write

from framework.config import Config, conf_dir, package_path
from framework.errors import FrameworkError

log = logging.getLogger("framework")

# org/name as the Hub spells repo ids (no leading ./ or /, one slash).
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")

# model_type of the Llama-shaped decoders the recipes train: the same module names (q/k/v/o, gate/up/down
# projections, RMSNorm), so LoRA targets, the memory estimate and the kernels apply unchanged.
SUPPORTED_TYPES = ("llama", "mistral", "qwen2")

# config.json key -> model.<field>; the architecture the checkpoint decides.
ARCH_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
    "rope_theta",
    "rms_norm_eps",
    "tie_word_embeddings",
)
POSITIVE = ARCH_FIELDS[:7]

MAX_HEADER = 100_000_000  # bytes: the safetensors format's own limit on the JSON header
DTYPE_SIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8,
}  # fmt: skip


class Unavailable(Exception):
    """The checkpoint cannot be read from here (missing locally, not in the HF cache and hub unreachable)."""


@dataclass(frozen=True)
class Checkpoint:
    """A ``config.json`` that was read: where from, its content, and (hub ids) the snapshot's commit."""

    where: str  # the config.json read, for messages
    config: dict[str, Any]
    local_dir: Path | None  # the directory holding it, when local (a local path or an HF cache snapshot)
    commit: str | None = None


def is_hub_id(value: str) -> bool:
    """A Hub model id, not a path: ``org/name``, and nothing of that name exists locally."""
    return bool(HUB_ID.match(value)) and not Path(value).expanduser().exists()


def hub_cache_dir() -> str:
    """The Hugging Face hub cache, from the environment at call time (as huggingface_hub reads it)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface"
    )
    return os.path.join(os.path.expanduser(home), "hub")


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """A TCP connection to the hub opens within ``timeout_s`` (huggingface_hub itself retries for ~25 s)."""
    import socket
    from urllib.parse import urlsplit

    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # only the proxy knows; huggingface_hub goes through it
    url = urlsplit(hub_endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _local(uri: str) -> str | None:
    """The local path of ``uri``, or None for a remote URI."""
    uri = package_path(uri)
    if uri.startswith("file://"):
        return uri.removeprefix("file://")
    if "://" in uri:
        return None
    return os.path.expanduser(uri)


def _parse(text: str, where: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"{where} is not valid JSON ({e}); restore the checkpoint's config.json") from e
    if not isinstance(data, dict):
        raise ValueError(f"{where} is not a JSON object; restore the checkpoint's config.json")
    return data


def _hub_config(repo_id: str, revision: str | None) -> Checkpoint:
    """config.json of a Hub model: from the cache, else downloaded (unless offline)."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cache = hub_cache_dir()
    try:
        cached = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache, revision=revision)
    except ValueError as e:  # HFValidationError
        raise ValueError(
            f"{repo_id} does not exist locally and is not a valid Hugging Face model id ({e}); point "
            "model.pretrained at a model directory, an s3:// URI or an org/name id"
        ) from e
    path = cached if isinstance(cached, str) else None
    if path is None and not hub_offline() and not hub_reachable():
        raise Unavailable(
            f"{repo_id} is not in the Hugging Face cache {cache} and the hub ({hub_endpoint()}) cannot be "
            f"reached from here: download it where the hub is reachable (`hf download {repo_id}`) and point "
            "HF_HOME at that cache, or set model.pretrained to a local directory"
        )
    if path is None and not hub_offline():
        try:
            path = hf_hub_download(
                repo_id, "config.json", revision=revision, cache_dir=cache, endpoint=hub_endpoint()
            )
        except Exception as e:  # noqa: BLE001 - every hub failure means the same here: not available
            kind = type(e).__name__
            hint = (
                "the repository is gated or private: set HF_TOKEN to a token with access"
                if "Gated" in kind or "Repository" in kind or "401" in str(e)
                else "the hub cannot be reached from here"
            )
            raise Unavailable(
                f"{repo_id} is not in the Hugging Face cache {cache} and downloading it failed ({kind}: "
                f"{str(e).splitlines()[0][:200]}): {hint}. Download it where the hub is reachable "
                f"(`hf download {repo_id}`) and point HF_HOME at that cache, or set model.pretrained to a "
                "local directory"
            ) from e
    if path is None:
        raise Unavailable(
            f"{repo_id} is not in the Hugging Face cache {cache} (HF_HUB_OFFLINE is set, so nothing is "
            f"downloaded): download it where the hub is reachable (`hf download {repo_id}`) and point HF_HOME "
            "at that cache, or set model.pretrained to a local directory"
        )
    snapshot = Path(path).parent
    text = Path(path).read_text(encoding="utf-8")
    return Checkpoint(path, _parse(text, path), snapshot, commit=snapshot.name)


def read_config(pretrained: str, revision: str | None = None) -> Checkpoint:
    """The checkpoint's config.json. Raises :class:`Unavailable` when it cannot be reached from here and
    ``ValueError`` when it is there but unreadable."""
    if is_hub_id(pretrained):
        return _hub_config(pretrained, revision)
    local = _local(pretrained)
    if local is not None:
        d = Path(local)
        if not d.exists():
            raise Unavailable(f"{pretrained} does not exist")
        if not d.is_dir():
            raise ValueError(
                f"{pretrained} is a file; model.pretrained must be a Hugging Face model directory "
                "(config.json + *.safetensors), not a weights file"
            )
        path = d / "config.json"
        if not path.is_file():
            raise ValueError(
                f"{pretrained} has no config.json; model.pretrained must be a Hugging Face model directory "
                "(config.json + *.safetensors), e.g. what save_pretrained or `hf download` writes"
            )
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path} is not UTF-8 text; restore the checkpoint's config.json") from e
        return Checkpoint(str(path), _parse(text, str(path)), d)
    from framework import storage

    scheme, _, rest = pretrained.partition("://")
    if not rest.strip("/"):
        raise ValueError(f"{pretrained} names no bucket or path; e.g. {scheme}://bucket/models/Llama-3.2-1B")
    uri = storage.join(pretrained, "config.json")
    try:
        text = storage.read_text(uri)
    except ImportError as e:  # fsspec: the scheme's filesystem package is not installed
        raise ValueError(f"{scheme}:// cannot be read here: {e}") from e
    except FileNotFoundError as e:  # StorageNotFoundError included
        raise ValueError(
            f"{uri} does not exist; model.pretrained must name a Hugging Face model directory "
            "(config.json + *.safetensors)"
        ) from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{uri} is not UTF-8 text; restore the checkpoint's config.json") from e
    except storage.StorageError as e:  # unreachable, access denied: storage's message names the fix
        raise Unavailable(str(e)) from e
    return Checkpoint(uri, _parse(text, uri), None)


def _rope_theta(hf: dict[str, Any]) -> Any:
    params = hf.get("rope_parameters")
    if isinstance(params, dict) and "rope_theta" in params:
        return params["rope_theta"]  # transformers >= 5 writes it there
    return hf.get("rope_theta", 10000.0)


def architecture(ckpt: Checkpoint) -> tuple[dict[str, Any], list[str]]:
    """``model.*`` values from the checkpoint's config.json, and the problems that make it untrainable here."""
    hf, where = ckpt.config, ckpt.where
    mtype = hf.get("model_type")
    archs = hf.get("architectures") or []
    arch = str(archs[0]) if isinstance(archs, list) and archs else None
    if mtype not in SUPPORTED_TYPES:
        return {}, [
            f"model.pretrained: {where} is a {mtype!r} checkpoint ({arch or 'no architectures listed'}); the "
            f"recipes train causal LMs of the Llama family (model_type {', '.join(SUPPORTED_TYPES)}): point "
            "model.pretrained at one of those"
        ]
    if arch is not None and not arch.endswith("ForCausalLM"):
        return {}, [
            f"model.pretrained: {where} is a {arch}, not a causal LM (…ForCausalLM); the recipes train "
            "causal language models"
        ]
    values: dict[str, Any] = {
        "vocab_size": hf.get("vocab_size"),
        "hidden_size": hf.get("hidden_size"),
        "intermediate_size": hf.get("intermediate_size"),
        "num_hidden_layers": hf.get("num_hidden_layers"),
        "num_attention_heads": hf.get("num_attention_heads"),
        "num_key_value_heads": hf.get("num_key_value_heads", hf.get("num_attention_heads")),
        "max_position_embeddings": hf.get("max_position_embeddings", 2048),
        "rope_theta": _rope_theta(hf),
        "rms_norm_eps": hf.get("rms_norm_eps", 1e-6),
        "tie_word_embeddings": hf.get("tie_word_embeddings", False),
    }
    problems = []
    for key in POSITIVE:
        v = values[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            problems.append(f"model.pretrained: {where} has {key}={v!r}; it must be a positive integer")
    for key in ("rope_theta", "rms_norm_eps"):
        v = values[key]
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
            problems.append(f"model.pretrained: {where} has {key}={v!r}; it must be a positive number")
        else:
            values[key] = float(v)
    if not isinstance(values["tie_word_embeddings"], bool):
        problems.append(
            f"model.pretrained: {where} has tie_word_embeddings={values['tie_word_embeddings']!r}; "
            "it must be true or false"
        )
    if not problems:
        h, n, kv = values["hidden_size"], values["num_attention_heads"], values["num_key_value_heads"]
        if n % kv:
            problems.append(
                f"model.pretrained: {where} has num_attention_heads={n} not divisible by num_key_value_heads={kv}"
            )
        if "head_dim" not in hf and h % n:
            problems.append(
                f"model.pretrained: {where} has hidden_size={h} not divisible by num_attention_heads={n}"
            )
    if arch:
        values["architecture"] = arch
    return values, problems


def explicit_keys() -> set[str]:
    """Keys and groups the user set on the command line (Hydra's task overrides), e.g. ``model.hidden_size``,
    ``model``. What a group or preset gave is not in it. Empty outside a Hydra app."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return set()
    return override_keys(HydraConfig.get().overrides.task)


def override_keys(overrides: Iterable[str]) -> set[str]:
    keys = set()
    for o in overrides:
        key = str(o).split("=", 1)[0].lstrip("+~").strip()
        if "@" in key:  # group@package: the group is what was chosen
            key = key.split("@", 1)[0]
        keys.add(key)
    return keys


def _leaves(node: Any, prefix: str = "") -> list[str]:
    if not isinstance(node, DictConfig):
        return [prefix]
    return [
        leaf
        for k, v in node.items()
        for leaf in _leaves(v, f"{prefix}{k}" if not prefix else f"{prefix}.{k}")
    ]


def restore_recipe_defaults(cfg: DictConfig, explicit: set[str]) -> list[str]:
    """A pretrained checkpoint with a model group that has demo settings (``conf/tuning/<recipe>-<model>.yaml``,
    e.g. ``python -m framework model.pretrained=...`` on the default ``tiny_llama``): put back the recipe's own
    defaults, which suit a pretrained model, for every key the user did not set. Returns the keys restored."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    if not HydraConfig.initialized():
        return []
    choices = HydraConfig.get().runtime.choices
    tuning, recipe = choices.get("tuning"), choices.get("recipe")
    demo_file = conf_dir() / "tuning" / f"{tuning}.yaml"
    recipe_file = conf_dir() / "recipe" / f"{recipe}.yaml"
    if not tuning or not demo_file.is_file() or not recipe_file.is_file():
        return []
    demo, base = OmegaConf.load(demo_file), OmegaConf.load(recipe_file)
    schema = OmegaConf.structured(Config)
    restored = []
    for key in _leaves(demo):
        if any(key == e or key.startswith(e + ".") for e in explicit):
            continue
        value = OmegaConf.select(base, key, default=OmegaConf.select(schema, key, default=None))
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value)
        with read_write(cfg), open_dict(cfg):
            OmegaConf.update(cfg, key, value, merge=False)
        restored.append(key)
    if restored:
        log.info(
            "model.pretrained: %s from the recipe's defaults for a pretrained model (conf/recipe/%s.yaml), "
            "not the %s demo's",
            ", ".join(restored),
            recipe,
            choices.get("model"),
        )
    return restored


def default_name(pretrained: str) -> str:
    """A label for logs and run names: the directory's or repo's last component."""
    tail = pretrained.rstrip("/").rsplit("/", 1)[-1] or "pretrained"
    return re.sub(r"[^A-Za-z0-9._-]", "_", tail)[:60]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-9)
        except (TypeError, ValueError):
            return False
    return bool(a == b)


def apply(cfg: DictConfig, *, explicit: set[str] | None = None, here: bool = True) -> list[str]:
    """Fill ``cfg.model`` from the checkpoint ``model.pretrained`` names; return the problems.

    ``explicit``: keys set on the command line (default: Hydra's overrides). ``here=False``: the run happens on
    another machine (Kubernetes), so a checkpoint that cannot be read from here is left to the pod to read.
    Nothing happens for a random-init model (``model.pretrained`` null).
    """
    m = cfg.model
    pretrained = m.get("pretrained")
    if not pretrained:
        return []
    explicit = explicit_keys() if explicit is None else explicit
    pretrained = str(pretrained)
    restore_recipe_defaults(cfg, explicit)
    if m.get("revision") and not is_hub_id(pretrained):
        return [
            f"model.revision={m.revision} applies to a Hugging Face model id, not to model.pretrained={pretrained}; "
            "drop model.revision (a directory or URI holds one revision)"
        ]
    try:
        ckpt = read_config(pretrained, m.get("revision"))
    except Unavailable as e:
        if not here:
            log.info(
                "model.pretrained=%s: not readable here (%s); the job reads it where it runs", pretrained, e
            )
            return []
        if isinstance(e.__cause__, FrameworkError):
            raise e.__cause__ from None  # storage down or denied: a runtime failure (exit 1, retried), not config
        return [f"model.pretrained={pretrained}: {e}"]
    except ValueError as e:
        return [f"model.pretrained={pretrained}: {e}"]
    except OSError as e:  # a local file that cannot be read (permissions, I/O)
        return [f"model.pretrained={pretrained}: {e}"]
    values, problems = architecture(ckpt)
    if problems:
        return problems
    if ckpt.commit is not None:
        values["revision"] = ckpt.commit  # the snapshot actually read: every rank and pod loads the same
    changed = []
    for key, value in values.items():
        current = m.get(key)
        if f"model.{key}" in explicit and current is not None and not _same(current, value):
            if key == "revision":
                continue  # a branch or tag the user named resolves to this commit
            problems.append(
                f"model.{key}={current} (set on the command line) contradicts the checkpoint: {ckpt.where} has "
                f"{key}={value}; drop model.{key}=... (the checkpoint's architecture is used) or point "
                "model.pretrained at a checkpoint with that value"
            )
        elif current is None or not _same(current, value):
            changed.append(f"{key} {current} -> {value}")
    if "model.train_embeddings" in explicit and m.get("train_embeddings") and values["tie_word_embeddings"]:
        problems.append(
            f"model.train_embeddings=true needs untied embeddings, but {ckpt.where} has "
            "tie_word_embeddings=true (the LM head shares the input embeddings); drop "
            "model.train_embeddings=true: LoRA adapts a pretrained base without retraining its vocabulary"
        )
    if problems:
        return problems
    with read_write(m), open_dict(m):
        for key, value in values.items():
            m[key] = value
        if "model.train_embeddings" not in explicit:
            m.train_embeddings = (
                False  # a pretrained base has its vocabulary; the demo's random init had none
            )
        if "model.name" not in explicit:
            m.name = default_name(pretrained)
    if changed:
        log.info("model.pretrained=%s: architecture from %s (%s)", pretrained, ckpt.where, ", ".join(changed))
    if ckpt.local_dir is None:
        return problems  # a URI: its weights are checked once downloaded (framework.model.load_pretrained)
    if ckpt.commit is not None and not has_weights(ckpt.local_dir):
        # A hub snapshot with config.json only: the rest comes with the first load, if it can.
        if hub_offline() or not hub_reachable():
            problems.append(
                f"model.pretrained={pretrained}: the Hugging Face cache has its config.json but not its weights, "
                f"and nothing can be downloaded from here: run `hf download {pretrained}` where the hub is "
                "reachable and point HF_HOME at that cache"
            )
        return problems
    problems += weight_problems(
        ckpt.local_dir,
        values,
        head_dim=ckpt.config.get("head_dim"),
        quantized="quantization_config" in ckpt.config,
    )
    if not m.get("tokenizer") and not any((ckpt.local_dir / f).is_file() for f in TOKENIZER_FILES):
        problems.append(
            f"model.pretrained: {ckpt.local_dir} has no tokenizer ({', '.join(TOKENIZER_FILES[:2])}); copy the "
            "checkpoint's tokenizer files there, or set model.tokenizer to a tokenizer directory"
        )
    return problems


def directory_problems(directory: Path) -> list[str]:
    """A local checkpoint directory checked on its own: its config.json, the architecture it names and its
    weights against it (what :func:`apply` checks at validation, for the files as they are when loaded)."""
    try:
        ckpt = read_config(str(directory))
    except (Unavailable, ValueError) as e:
        return [f"model.pretrained: {e}"]
    values, problems = architecture(ckpt)
    if problems:
        return problems
    return weight_problems(
        directory,
        values,
        head_dim=ckpt.config.get("head_dim"),
        quantized="quantization_config" in ckpt.config,
    )


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")


def has_weights(directory: Path) -> bool:
    return any(any(directory.glob(p)) for p in ("*.safetensors", "pytorch_model*.bin", "*.pt"))


# ----------------------------------------------------------------------------------------------- weights


def expected_shapes(arch: dict[str, Any], head_dim: int | None = None) -> dict[str, tuple[int, ...]]:
    """Weight name (without the ``model.`` prefix) -> shape, for a Llama-family causal LM."""
    h, i, v = arch["hidden_size"], arch["intermediate_size"], arch["vocab_size"]
    n, kv = arch["num_attention_heads"], arch["num_key_value_heads"]
    d = head_dim or h // n
    shapes: dict[str, tuple[int, ...]] = {"embed_tokens.weight": (v, h), "norm.weight": (h,)}
    if not arch["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (v, h)
    for layer in range(arch["num_hidden_layers"]):
        p = f"layers.{layer}."
        shapes.update(
            {
                p + "self_attn.q_proj.weight": (n * d, h),
                p + "self_attn.k_proj.weight": (kv * d, h),
                p + "self_attn.v_proj.weight": (kv * d, h),
                p + "self_attn.o_proj.weight": (h, n * d),
                p + "mlp.gate_proj.weight": (i, h),
                p + "mlp.up_proj.weight": (i, h),
                p + "mlp.down_proj.weight": (h, i),
                p + "input_layernorm.weight": (h,),
                p + "post_attention_layernorm.weight": (h,),
            }
        )
    return shapes


def safetensors_header(path: Path) -> dict[str, Any]:
    """The tensor table of a safetensors file, checked against the file's size. Raises ValueError naming the
    file and what is wrong (truncated, corrupt or oversized header, a tensor outside the file)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path} is {size} bytes, too short for a safetensors file (truncated?)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or 8 + n > size:
            raise ValueError(
                f"{path}: the safetensors header claims {n:,} bytes but the file has {size:,} "
                "(not a safetensors file, or truncated)"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(
            f"{path}: the safetensors header is not valid JSON ({e}); the file is corrupt"
        ) from e
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the safetensors header is not a JSON object; the file is corrupt")
    data = size - 8 - n
    header.pop("__metadata__", None)
    for name, t in header.items():
        ok = (
            isinstance(t, dict)
            and t.get("dtype") in DTYPE_SIZE
            and isinstance(t.get("shape"), list)
            and all(isinstance(s, int) and s >= 0 for s in t["shape"])
            and isinstance(t.get("data_offsets"), list)
            and len(t["data_offsets"]) == 2
            and all(isinstance(o, int) for o in t["data_offsets"])
        )
        if not ok:
            raise ValueError(
                f"{path}: the safetensors header entry {name!r} is malformed; the file is corrupt"
            )
        begin, end = t["data_offsets"]
        if not 0 <= begin <= end or end - begin != math.prod(t["shape"]) * DTYPE_SIZE[t["dtype"]]:
            raise ValueError(
                f"{path}: tensor {name!r} ({t['dtype']} {t['shape']}) has data offsets {begin}..{end} that do "
                "not match its shape; the file is corrupt"
            )
        if end > data:
            raise ValueError(
                f"{path}: tensor {name!r} ends at byte {end:,} of the data but the file holds {data:,} "
                "(truncated: download or copy it again)"
            )
    return header


def _legacy_pickle(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(2) == b"\x80\x02"  # torch < 1.6 wrote a pickle (protocol 2)


def weight_problems(
    directory: Path, arch: dict[str, Any], *, head_dim: int | None = None, quantized: bool = False
) -> list[str]:
    """What is wrong with the weights in ``directory`` (empty when they load): no weights, unreadable
    safetensors files, weights whose shapes do not match the architecture, weights missing from the files.
    ``quantized`` (a config.json with quantization_config): shapes are packed, only the files are checked."""
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        pickled = sorted([*directory.glob("pytorch_model*.bin"), *directory.glob("*.pt")])
        if pickled:
            # torch's files: only torch reads their content (checked when loaded); a zip archive (or a legacy
            # pickle) is what torch.save writes: anything else is truncated or not a checkpoint
            return [
                f"model.pretrained: {f} is not a torch checkpoint (not a zip archive: truncated or corrupt)"
                for f in pickled
                if not zipfile.is_zipfile(f) and not _legacy_pickle(f)
            ]
        return [
            f"model.pretrained: {directory} has no weights (*.safetensors or pytorch_model*.bin); "
            "copy the whole checkpoint directory, not only its config"
        ]
    problems = []
    found: dict[str, tuple[tuple[int, ...], Path]] = {}
    for f in files:
        try:
            header = safetensors_header(f)
        except ValueError as e:
            problems.append(f"model.pretrained: {e}")
            continue
        except OSError as e:
            problems.append(f"model.pretrained: {f} cannot be read ({e})")
            continue
        for name, t in header.items():
            found[name.removeprefix("model.")] = (tuple(t["shape"]), f)
    if problems or quantized:
        return problems
    expected = expected_shapes(arch, head_dim if isinstance(head_dim, int) and head_dim > 0 else None)
    mismatched = [
        (name, shape, found[name])
        for name, shape in expected.items()
        if name in found and found[name][0] != shape
    ]
    for name, shape, (got, f) in mismatched[:5]:
        problems.append(
            f"model.pretrained: {f.name} holds {name} with shape {list(got)} but config.json's architecture "
            f"needs {list(shape)}; the weights and {directory / 'config.json'} are from different models"
        )
    if len(mismatched) > 5:
        problems.append(f"model.pretrained: ... and {len(mismatched) - 5} more weights with the wrong shape")
    missing = [name for name in expected if name not in found]
    if missing:
        problems.append(
            f"model.pretrained: {directory} lacks {len(missing)} of the {len(expected)} weights its config.json "
            f"needs (e.g. {', '.join(missing[:3])}); they would be initialised at random: copy the complete "
            "checkpoint"
        )
    return problems


# ----------------------------------------------------------------------------------------------- loading


def local_dir(pretrained: str, revision: str | None = None) -> Path:
    """A local directory holding the checkpoint: a local path as is, a URI downloaded once into the cache
    (:func:`framework.storage.local_copy`), a hub id's cached snapshot (downloaded when the hub is reachable)."""
    if is_hub_id(pretrained):
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        from framework.errors import ConfigError, FrameworkError

        try:
            path = snapshot_download(
                pretrained,
                revision=revision,
                cache_dir=hub_cache_dir(),
                local_files_only=hub_offline(),
                endpoint=hub_endpoint(),
            )
        except (GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError) as e:
            raise ConfigError(
                f"model.pretrained={pretrained}: {type(e).__name__}: {str(e).splitlines()[0]}; check the id and "
                "revision, and that HF_TOKEN grants access"
            ) from e
        except LocalEntryNotFoundError as e:
            raise ConfigError(
                f"model.pretrained={pretrained}: not complete in the Hugging Face cache {hub_cache_dir()} and "
                f"not downloadable from here: run `hf download {pretrained}` where the hub is reachable"
            ) from e
        except (HfHubHTTPError, OSError) as e:  # the hub or the network, not the config: retryable
            raise FrameworkError(
                f"model.pretrained={pretrained}: downloading from the hub failed: {e}"
            ) from e
        return Path(path)
    local = _local(pretrained)
    if local is not None:
        return Path(local)
    from framework import storage

    return Path(storage.local_copy(pretrained))
