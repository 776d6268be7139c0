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

from framework.errors import ConfigError
from framework.evaluation import EvalConfig
from framework.launcher_config import LauncherConfig
from framework.storage_config import StorageConfig
from framework.tracking_config import TrackingConfig


@dataclass
class RecipeConfig:
    name: str = MISSING  # entry point in recipes.RECIPES: lora_llama | full_finetune | evaluate
    finetune: str = "lora"  # lora: train adapters only; full: train every weight; none: nothing (evaluate)


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | sgd
    lr: float = 3e-4  # peak learning rate
    weight_decay: float = 0.0  # decoupled weight decay
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # Adam betas
    eps: float = 1e-8  # Adam epsilon


@dataclass
class SchedulerConfig:
    name: str = "cosine"  # cosine | constant
    warmup_steps: int = 0  # linear warmup, optimizer steps
    min_lr_ratio: float = 0.1  # cosine floor as a fraction of optim.lr


@dataclass
class TrainConfig:
    max_steps: int | None = None  # optimizer steps; null: train for `epochs`
    epochs: float | None = None  # passes over the train split when max_steps is null
    micro_batch_size: int = 4  # sequences per process per forward pass
    grad_accum: int = 1  # micro batches per optimizer step
    global_batch_size: int | None = None  # sequences per optimizer step; null: derived (must divide if set)
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    eval_interval: int = 20  # optimizer steps between evals; 0: only at the end
    eval_max_batches: int = 0  # cap on eval micro batches; 0: the whole validation split
    checkpoint_interval: int = 50  # optimizer steps between checkpoints; 0: only at the end
    keep_last: int = 2  # checkpoints kept (the one `latest` names is never deleted)
    seed: int = 42  # seeds init, data order, dropout
    log_interval: int = 1  # optimizer steps between metrics lines
    progress: bool = True  # rank-0 progress bar
    compile: bool = False  # torch.compile each decoder layer in place (pays on GPU; slow to start on CPU)


@dataclass
class LoraConfig:
    r: int = 8  # adapter rank
    alpha: int = 16  # scaling numerator (scale = alpha / r)
    dropout: float = 0.05  # dropout on the adapter input
    use_dora: bool = False  # DoRA (peft): adapters on the direction, a trained magnitude per output feature
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    # q/k/v and gate/up share one dropout and one A GEMM (framework/lora_fused.py); null: hardware.fast_paths
    fused_inputs: bool | None = None


@dataclass
class ModelConfig:
    name: str = MISSING  # label for logs and manifests
    # HF checkpoint: a local dir, a URI (s3://...) or a Hub id (org/name, via the HF cache); null: random init
    # from the fields below. When set, the architecture fields below are read from its config.json.
    pretrained: str | None = None
    revision: str | None = None  # Hub id only: branch, tag or commit; recorded as the commit actually read
    architecture: str | None = None  # the checkpoint's class (config.json `architectures`); recorded, not set
    tokenizer: str | None = None  # tokenizer dir or URI; null: `pretrained`, else the dataset's tokenizer
    vocab_size: int = 32000
    hidden_size: int = 2048
    intermediate_size: int = 8192
    num_hidden_layers: int = 16
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    max_position_embeddings: int = 8192
    rope_theta: float = 500000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    attn_implementation: str = "sdpa"  # eager | sdpa | flash_attention_2 | flex_attention
    gradient_checkpointing: bool = False  # recompute activations in backward to save memory
    train_embeddings: bool = False  # LoRA runs also train embeddings + LM head (for random-init bases)
    # chunked LM head + cross-entropy, never materializing the full logits; null: hardware.fast_paths
    fused_linear_ce: bool | None = None
    load_in_4bit: bool = False  # QLoRA: the frozen base in 4-bit NF4 via bitsandbytes (CUDA, LoRA recipe)
    # RMSNorm/SwiGLU: hf (transformers' modules) | lean (our autograd functions: fewer saved activations, fused
    # into single kernels by train.compile) | liger (Liger's Triton RMSNorm, SwiGLU, RoPE; CUDA, liger-kernel)
    # | auto (hardware.fast_paths: liger when installed on cuda, else lean; otherwise hf)
    kernels: str = "auto"


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
    name: str = MISSING  # label for logs
    # JSONL, JSON array, parquet or CSV file; a directory of such shards; or a datasets.save_to_disk directory
    # (local path or URI). Unused by dataset=mixture (see `sources`).
    path: str | None = MISSING
    tokenizer: str | None = None  # tokenizer shipped with the dataset (used when the model has none)
    # Row style: auto (detected from the columns, logged) | chat (OpenAI `messages` role/content or ShareGPT
    # `conversations` from/value) | alpaca (instruction/input/output) | prompt_response (the *_field keys below)
    format: str = "auto"
    split: str | None = None  # split of a save_to_disk DatasetDict; null: train (or its only split)
    messages_field: str | None = None  # chat column; null: `messages` or `conversations`, whichever exists
    prompt_field: str = "instruction"  # prompt_response: key of the prompt
    input_field: str | None = "input"  # optional extra context key; missing or empty is fine
    response_field: str = "response"  # prompt_response: key of the target text
    template: str = "### Instruction:\n{prompt}\n\n### Response:\n"  # {prompt} and {input} are filled in
    input_template: str = "### Instruction:\n{prompt}\n\n### Input:\n{input}\n\n### Response:\n"
    # Chat rows: a Jinja template (file path or the template text); null: the tokenizer's chat_template
    chat_template: str | None = None
    # Which tokens of a chat carry the loss: assistant (every assistant turn, with its end-of-turn token) |
    # last_assistant | all (every token). A message's own `weight` (0/1) or `train` (bool) key wins.
    train_on: str = "assistant"
    val_path: str | None = None  # separate validation data; null: split `val_fraction` off `path`
    val_fraction: float = 0.05  # share of examples held out for eval when val_path is null
    max_seq_len: int = 512  # tokens per packed training sequence
    packing: bool = True  # pack several examples per sequence (no attention across them)
    overlong: str = "truncate"  # examples longer than max_seq_len: truncate | drop (counted per source)
    max_row_chars: int = 1_000_000  # a row with more text than this is refused (a runaway or corrupt row)
    # Root of the prepared (tokenized, packed) cache, local or s3://; null: $FRAMEWORK_CACHE/prepared
    cache_dir: str | None = None
    require_prepared: bool = (
        False  # true: training refuses to tokenize; run `python -m framework.prepare` first
    )
    sources: list[MixtureSource] = field(default_factory=list)  # dataset=mixture: the weighted sources


@dataclass
class HardwareConfig:
    name: str = MISSING  # label for logs and manifests
    nodes: int = 1  # machines (pods); any profile becomes multi-node with hardware.nodes=N
    nproc_per_node: int = 1  # training processes per node (one per GPU)
    accelerator: str = "cpu"  # cpu | cuda
    resource_name: str | None = None  # extended resource requested per pod, e.g. nvidia.com/gpu
    gpus_per_node: int = 0  # count of resource_name per pod
    cpu: str = (
        "2"  # the node's allocatable CPU (Kubernetes quantity); pods request allocatable_fraction of it
    )
    memory: str = "8Gi"  # the node's allocatable memory (Kubernetes quantity); pods request the same fraction
    # share of cpu/memory a pod requests (= limits, Guaranteed QoS); the rest is for daemonsets (GPU operator,
    # DCGM exporter, CNI, log agents)
    allocatable_fraction: float = 0.9
    extra_resources: dict[str, int] = field(
        default_factory=dict
    )  # e.g. {rdma/ib: 1}, {vpc.amazonaws.com/efa: 32}
    nccl_env: dict[str, str] = field(
        default_factory=dict
    )  # NCCL/EFA env of the profile (launcher.env overrides)
    shm_size: str = "1Gi"  # /dev/shm size per pod (memory-backed emptyDir)
    precision: str = "fp32"  # fp32 | bf16 | fp16
    zero_stage: int = 0  # DeepSpeed ZeRO stage: 0 | 1 | 2 | 3
    offload_optimizer: bool = False  # ZeRO-Offload of optimizer state to CPU
    offload_param: bool = False  # ZeRO-3 parameter offload to CPU
    bucket_size: int = 500_000_000  # DeepSpeed reduce/allgather bucket size (elements)
    gpu_memory_gb: float | None = None  # memory per GPU; set: the launch is checked against an estimate
    cpu_threads: int | None = None  # torch threads per process; null: auto (1 for small models on CPU)
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
    run_name: str = "run"  # names the run in logs, trackers and Kubernetes objects
    # auto: continue from checkpoints/latest if present | none | <step> | <checkpoint path or URI>
    resume: str = "auto"
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
