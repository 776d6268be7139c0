"""Typed schemas for every config group, registered in Hydra's ConfigStore.

The YAML files under ``conf/`` extend these dataclasses, so an unknown key or a wrong type fails at compose
time. Nothing here imports torch: composing a config (and rendering Kubernetes manifests) stays light.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from framework.domains import (
    NON_EMPTY,
    NON_NEGATIVE,
    NON_NEGATIVE_REAL,
    POSITIVE,
    POSITIVE_REAL,
    PROBABILITY,
    QUANTITY,
    RUN_NAME,
    URI,
    Each,
    Int,
    Real,
    d,
    one_of,
)
from framework.errors import ConfigError
from framework.evaluation import EvalConfig
from framework.launcher_config import LauncherConfig
from framework.storage_config import StorageConfig
from framework.tracking_config import TrackingConfig


@dataclass
class RecipeConfig:
    name: str = MISSING  # entry point in recipes.RECIPES: lora_llama | full_finetune | evaluate (what it trains: recipes.TRAINS)


@dataclass
class OptimConfig:
    name: str = d("adamw", one_of("adamw", "sgd"))  # adamw | sgd
    lr: float = d(3e-4, Real(0.0, 1.0, lo_open=True))  # peak learning rate (above 1 only diverges)
    weight_decay: float = d(0.0, Real(0.0, 1.0))  # decoupled weight decay
    betas: list[float] = d([0.9, 0.999], Each(Real(0.0, 1.0, hi_open=True), length=2))  # Adam betas
    eps: float = d(1e-8, Real(0.0, 1.0, lo_open=True))  # Adam epsilon


@dataclass
class SchedulerConfig:
    name: str = d("cosine", one_of("cosine", "constant"))  # cosine | constant
    warmup_steps: int = d(0, NON_NEGATIVE)  # linear warmup, optimizer steps
    min_lr_ratio: float = d(0.1, PROBABILITY)  # cosine floor as a fraction of optim.lr


@dataclass
class TrainConfig:
    max_steps: int | None = d(None, POSITIVE)  # optimizer steps; null: train for `epochs` (set one, not both)
    # passes over the train split when max_steps is null
    epochs: float | None = d(None, Real(0.0, 1e6, lo_open=True))
    micro_batch_size: int = d(4, Int(1, 1 << 20))  # sequences per process per forward pass
    grad_accum: int = d(1, Int(1, 1 << 20))  # micro batches per optimizer step
    # sequences per optimizer step; set: grad_accum is derived from it (micro batch x world must divide it)
    global_batch_size: int | None = d(None, Int(1, 1 << 30))
    grad_clip: float = d(1.0, NON_NEGATIVE_REAL)  # max global grad norm; 0 disables
    eval_interval: int = d(20, NON_NEGATIVE)  # optimizer steps between evals; 0: only at the end
    eval_max_batches: int = d(0, NON_NEGATIVE)  # cap on eval micro batches; 0: the whole validation split
    checkpoint_interval: int = d(50, NON_NEGATIVE)  # optimizer steps between checkpoints; 0: only at the end
    keep_last: int = d(2, NON_NEGATIVE)  # checkpoints kept (the one `latest` names is never deleted)
    keep_best: bool = False  # also keep the checkpoint with the lowest eval loss (saved at that eval)
    eval_at_start: bool = True  # eval once before the first update (step 0), so every curve has a baseline
    seed: int = d(42, Int(0, 2**32 - 1))  # seeds init, data order, dropout
    log_interval: int = d(1, POSITIVE)  # optimizer steps between metrics lines
    progress: bool = True  # rank-0 progress bar
    compile: bool = False  # torch.compile each decoder layer in place (pays on GPU; slow to start on CPU)


@dataclass
class LoraConfig:
    r: int = d(8, POSITIVE)  # adapter rank (at most model.hidden_size)
    alpha: int = d(16, POSITIVE)  # scaling numerator (scale = alpha / r)
    dropout: float = d(0.05, Real(0.0, 1.0, hi_open=True))  # dropout on the adapter input
    use_dora: bool = False  # DoRA (peft): adapters on the direction, a trained magnitude per output feature
    target_modules: list[str] = d(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], Each(NON_EMPTY)
    )
    # q/k/v and gate/up share one dropout and one A GEMM (framework/lora_fused.py); null: hardware.fast_paths
    fused_inputs: bool | None = None


@dataclass
class ModelConfig:
    name: str = d(MISSING, NON_EMPTY)  # label for logs and manifests
    # HF checkpoint: a local dir, a URI (s3://...) or a Hub id (org/name, via the HF cache); null: random init
    # from the fields below. When set, the architecture fields below are read from its config.json.
    pretrained: str | None = d(None, URI)
    revision: str | None = None  # Hub id only: branch, tag or commit; recorded as the commit actually read
    architecture: str | None = None  # the checkpoint's class (config.json `architectures`); recorded, not set
    # tokenizer dir or URI; null: `pretrained`, else the dataset's tokenizer
    tokenizer: str | None = d(None, URI)
    vocab_size: int = d(32000, Int(1, 1 << 24))
    hidden_size: int = d(2048, Int(1, 1 << 20))
    intermediate_size: int = d(8192, Int(1, 1 << 22))
    num_hidden_layers: int = d(16, Int(1, 4096))
    num_attention_heads: int = d(32, Int(1, 4096))  # divides hidden_size
    num_key_value_heads: int = d(8, Int(1, 4096))  # divides num_attention_heads
    max_position_embeddings: int = d(8192, Int(1, 1 << 24))
    rope_theta: float = d(500000.0, POSITIVE_REAL)
    rms_norm_eps: float = d(1e-5, Real(0.0, 1.0, lo_open=True))
    tie_word_embeddings: bool = False
    # eager | sdpa | flash_attention_2 | flex_attention
    attn_implementation: str = d("sdpa", one_of("eager", "sdpa", "flash_attention_2", "flex_attention"))
    gradient_checkpointing: bool = False  # recompute activations in backward to save memory
    train_embeddings: bool = False  # LoRA runs also train embeddings + LM head (for random-init bases)
    # chunked LM head + cross-entropy, never materializing the full logits; null: hardware.fast_paths
    fused_linear_ce: bool | None = None
    load_in_4bit: bool = False  # QLoRA: the frozen base in 4-bit NF4 via bitsandbytes (CUDA, LoRA recipe)
    # RMSNorm/SwiGLU: hf (transformers' modules) | lean (our autograd functions: fewer saved activations, fused
    # into single kernels by train.compile) | liger (Liger's Triton RMSNorm, SwiGLU, RoPE; CUDA, liger-kernel)
    # | auto (hardware.fast_paths: liger when installed on cuda, else lean; otherwise hf)
    kernels: str = d("auto", one_of("auto", "hf", "lean", "liger"))


@dataclass
class MixtureSource:
    """One source of ``dataset=mixture``; every field left null takes the ``dataset.*`` value of the same name."""

    path: str = MISSING  # file, directory of shards or save_to_disk dir (local path or URI)
    weight: float = 1.0  # share of the training split, by examples (normalized over the sources)
    name: str | None = None  # label in reports; null: the file name
    format: str | None = None  # auto | chat | alpaca | prompt_response
    split: str | None = None  # split of a save_to_disk DatasetDict
    val_path: str | None = None  # this source's own validation data; null: hold out val_fraction
    val_fraction: float | None = None  # share of this source held out for validation
    messages_field: str | None = None  # chat column
    prompt_field: str | None = None
    input_field: str | None = None
    response_field: str | None = None
    template: str | None = None
    input_template: str | None = None
    chat_template: str | None = None
    train_on: str | None = None


@dataclass
class DatasetConfig:
    name: str = d(MISSING, NON_EMPTY)  # label for logs
    # JSONL, JSON array, parquet or CSV file; a directory of such shards; or a datasets.save_to_disk directory
    # (local path or URI). Unused by dataset=mixture (see `sources`).
    path: str | None = d(MISSING, URI)
    tokenizer: str | None = d(None, URI)  # tokenizer shipped with the dataset (used when the model has none)
    # Row style: auto (detected from the columns, logged) | chat (OpenAI `messages` role/content or ShareGPT
    # `conversations` from/value) | alpaca (instruction/input/output) | prompt_response (the *_field keys below)
    format: str = "auto"
    split: str | None = None  # split of a save_to_disk DatasetDict; null: train (or its only split)
    messages_field: str | None = None  # chat column; null: `messages` or `conversations`, whichever exists
    prompt_field: str = d("instruction", NON_EMPTY)  # prompt_response: key of the prompt
    input_field: str | None = "input"  # optional extra context key; missing or empty is fine
    response_field: str = d("response", NON_EMPTY)  # prompt_response: key of the target text
    template: str = "### Instruction:\n{prompt}\n\n### Response:\n"  # {prompt} and {input} are filled in
    input_template: str = "### Instruction:\n{prompt}\n\n### Input:\n{input}\n\n### Response:\n"
    # Chat rows: a Jinja template (file path or the template text); null: the tokenizer's chat_template
    chat_template: str | None = None
    # Which tokens of a chat carry the loss: assistant (every assistant turn, with its end-of-turn token) |
    # last_assistant | all (every token). A message's own `weight` (0/1) or `train` (bool) key wins.
    train_on: str = "assistant"
    val_path: str | None = d(None, URI)  # separate validation data; null: split `val_fraction` off `path`
    # share of examples held out for eval when val_path is null
    val_fraction: float = d(0.05, Real(0.0, 1.0, hi_open=True))
    max_seq_len: int = d(512, Int(2, 1 << 24))  # tokens per packed training sequence
    packing: bool = True  # pack several examples per sequence (no attention across them)
    # examples longer than max_seq_len: truncate | drop (counted per source)
    overlong: str = d("truncate", one_of("truncate", "drop"))
    max_row_chars: int = 1_000_000  # a row with more text than this is refused (a runaway or corrupt row)
    # Root of the prepared (tokenized, packed) cache, local or s3://; null: $FRAMEWORK_CACHE/prepared
    cache_dir: str | None = d(None, URI)
    require_prepared: bool = (
        False  # true: training refuses to tokenize; run `python -m framework.prepare` first
    )
    sources: list[MixtureSource] = field(default_factory=list)  # dataset=mixture: the weighted sources
    # When a mixture's training split ends: first_exhausted (when a source runs out; nothing repeats) |
    # all_exhausted (when every source has been used once; smaller sources repeat to keep their share)
    mixture_stop: str = d("first_exhausted", one_of("first_exhausted", "all_exhausted"))


@dataclass
class HardwareConfig:
    name: str = d(MISSING, NON_EMPTY)  # label for logs and manifests
    nodes: int = d(1, Int(1, 4096))  # machines (pods); any profile becomes multi-node with hardware.nodes=N
    nproc_per_node: int = d(1, Int(1, 256))  # training processes per node (one per GPU)
    accelerator: str = d("cpu", one_of("cpu", "cuda"))  # cpu | cuda
    resource_name: str | None = d(None, NON_EMPTY)  # extended resource requested per pod, e.g. nvidia.com/gpu
    gpus_per_node: int = d(0, Int(0, 256))  # count of resource_name per pod
    # the node's allocatable CPU (Kubernetes quantity); pods request allocatable_fraction of it
    cpu: str = d("2", QUANTITY)
    # the node's allocatable memory (Kubernetes quantity); pods request the same fraction
    memory: str = d("8Gi", QUANTITY)
    # share of cpu/memory a pod requests (= limits, Guaranteed QoS); the rest is for daemonsets (GPU operator,
    # DCGM exporter, CNI, log agents)
    allocatable_fraction: float = d(0.9, Real(0.0, 1.0, lo_open=True))
    extra_resources: dict[str, int] = field(
        default_factory=dict
    )  # e.g. {rdma/ib: 1}, {vpc.amazonaws.com/efa: 32}
    nccl_env: dict[str, str] = field(
        default_factory=dict
    )  # NCCL/EFA env of the profile (launcher.env overrides)
    shm_size: str = d("1Gi", QUANTITY)  # /dev/shm size per pod (memory-backed emptyDir)
    precision: str = d("fp32", one_of("fp32", "bf16", "fp16"))  # fp32 | bf16 | fp16
    zero_stage: int = d(0, one_of(0, 1, 2, 3, what="a ZeRO stage"))  # DeepSpeed ZeRO stage: 0 | 1 | 2 | 3
    offload_optimizer: bool = False  # ZeRO-Offload of optimizer state to CPU
    offload_param: bool = False  # ZeRO-3 parameter offload to CPU
    bucket_size: int = d(500_000_000, Int(1, 1 << 40))  # DeepSpeed reduce/allgather bucket size (elements)
    # memory per GPU; set: the launch is checked against an estimate
    gpu_memory_gb: float | None = d(None, Real(0.0, 1e5, lo_open=True))
    # torch threads per process; null: auto (1 for small models on CPU)
    cpu_threads: int | None = d(None, Int(1, 4096))
    # defaults of model.fused_linear_ce, model.kernels=auto and lora.fused_inputs (framework/fastpath.py)
    fast_paths: bool = False
    node_selector: dict[str, str] = field(default_factory=dict)  # pod nodeSelector
    tolerations: list[dict[str, Any]] = field(default_factory=list)  # pod tolerations


@dataclass
class Config:
    recipe: RecipeConfig = MISSING
    model: ModelConfig = MISSING
    dataset: DatasetConfig = MISSING
    hardware: HardwareConfig = MISSING
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraConfig | None = field(default_factory=LoraConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run_name: str = d("run", RUN_NAME)  # names the run in logs, trackers and Kubernetes objects
    # auto: continue from checkpoints/latest if present | none | <step> | <checkpoint path or URI>
    resume: str = d("auto", NON_EMPTY)
    debug: bool = False  # show full tracebacks


PKG_PREFIX = "pkg://"


def package_path(uri: str) -> str:
    """Map ``pkg://<module>/<relpath>`` to the file the installed package ships; other paths unchanged.

    Shipped data is named this way (not by absolute path) so a resolved config stays valid on another machine,
    e.g. inside a pod.
    """
    if not uri.startswith(PKG_PREFIX):
        return uri
    module, _, rel = uri[len(PKG_PREFIX) :].partition("/")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{uri}: package {module!r} is not installed")
    return str(Path(next(iter(spec.submodule_search_locations))) / rel)


def register() -> None:
    """Register the schema in Hydra's ConfigStore (idempotent)."""
    ConfigStore.instance().store(name="config_schema", node=Config)
    from framework.cli_help import register_resolver

    register_resolver()  # `framework --help` lists every group's options


def conf_dir() -> Path:
    """The YAML config tree: the checkout's ``conf/`` when run from source, else the packaged copy."""
    here = Path(__file__).resolve().parent
    src = here.parent / "conf"
    if (src / "config.yaml").is_file():
        return src
    return here / "conf"


def resolved(cfg: DictConfig) -> dict[str, Any]:
    """The fully resolved config as plain data, without the ``hydra`` node (Hydra's own settings, which only
    resolve inside a running Hydra app). A mandatory key left unset raises ConfigError naming it."""
    plain: dict[str, Any] = {}
    try:
        for key in cfg:
            if key != "hydra":
                value = cfg[key]
                is_node = OmegaConf.is_config(value)
                plain[str(key)] = (
                    OmegaConf.to_container(value, resolve=True, throw_on_missing=True) if is_node else value
                )
    except MissingMandatoryValue as e:
        raise ConfigError(f"{e.full_key} is required but not set; pass {e.full_key}=<value>") from e
    return plain


def config_yaml(plain: dict[str, Any]) -> str:
    """What ``OmegaConf.to_yaml`` writes for plain data, with libyaml's emitter (~10x faster)."""
    import yaml

    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump(plain, Dumper=dumper, default_flow_style=False, allow_unicode=True, sort_keys=False)


def resolved_yaml(cfg: DictConfig) -> str:
    """:func:`resolved` as YAML: the run directory's ``config.yaml``, what torchrun workers and pods read."""
    return config_yaml(resolved(cfg))
