"""One typed config tree for a run: model / ssa / parallel / train / data / logging.

A run is described by one YAML file. It may `include:` other YAML files (paths relative to it, merged in
order, its own keys win), and dotted command-line overrides come last::

    ssa train configs/train/tiny-cpu.yaml train.steps=20 ssa.full_ratio=0.25

Every key is checked: an unknown key or a bad value raises `ConfigError` naming the key, what was given
and what is allowed. The resolved tree is saved as `config.yaml` in the run directory.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ssa_pretrain.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[1]


class ConfigError(UserError, ValueError):
    """A config file, key or value that cannot be used; the message names it and the fix."""


class Section(BaseModel):
    """A config section: unknown keys, bad values and inf/nan are refused; field docstrings document keys."""

    model_config = ConfigDict(
        extra="forbid", use_attribute_docstrings=True, validate_assignment=True, allow_inf_nan=False
    )  # inf / nan in a config (e.g. `train.lr=inf`) would train NaN weights: refused like any bad value


class ModelConfig(Section):
    """A Llama-style decoder: RMSNorm, SwiGLU, RoPE, no biases."""

    num_layers: int = Field(ge=1)
    """Number of transformer layers."""
    hidden_size: int = Field(ge=1)
    """Width of the residual stream."""
    num_attention_heads: int = Field(ge=1)
    """Query heads."""
    num_kv_heads: int = Field(ge=1)
    """Key/value heads (GQA); must divide `num_attention_heads`."""
    head_dim: int | None = Field(default=None, ge=1)
    """Per-head width; default `hidden_size / num_attention_heads`."""
    ffn_hidden_size: int = Field(ge=1)
    """Inner width of the SwiGLU MLP."""
    vocab_size: int | None = Field(default=None, ge=2)
    """Vocabulary size; `null` takes it from the tokenizer (the usual case)."""
    make_vocab_size_divisible_by: int = Field(default=128, ge=1)
    """The embedding is padded to a multiple of this times the tensor-parallel size (Megatron's rule)."""
    rope_theta: float = Field(default=500000.0, gt=0)
    """RoPE base (500000 in the released SSA models)."""
    tie_embeddings: bool = True
    """Share the input embedding and the output projection."""
    norm_eps: float = Field(default=1e-5, gt=0)
    """RMSNorm epsilon."""
    init_std: float = Field(default=0.02, gt=0)
    """Standard deviation of the normal weight init."""

    @model_validator(mode="after")
    def _check_heads(self) -> ModelConfig:
        if self.num_attention_heads % self.num_kv_heads:
            raise ValueError(
                f"num_kv_heads={self.num_kv_heads} must divide num_attention_heads={self.num_attention_heads}"
            )
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads="
                f"{self.num_attention_heads}; set head_dim explicitly"
            )
        return self

    @property
    def kv_channels(self) -> int:
        """Per-head width actually used."""
        return self.head_dim or self.hidden_size // self.num_attention_heads


class SSAConfig(Section):
    """The attention method (see docs/DESIGN.md: full + block-sparse branches tied by an alignment loss)."""

    variant: Literal["full", "sparse", "ssa"] = "ssa"
    """`full`: full attention only; `sparse`: block-sparse only; `ssa`: both branches + alignment."""
    block_size: int = Field(default=16, ge=1)
    """Tokens per key block (BS)."""
    block_count: int = Field(default=16, ge=1)
    """Blocks each query attends to, its own block included (K)."""
    full_ratio: float = Field(default=0.5, ge=0.0, le=1.0)
    """Share of micro-steps whose residual stream uses full attention (ssa only)."""
    mode_schedule: Literal["random", "alternate"] = "random"
    """`random`: mode drawn from seed + step + micro-step (the paper); `alternate`: exact interleaving."""
    alpha: float = Field(default=10.0, ge=0.0)
    """Weight of the alignment loss."""
    w_fs: float = Field(default=1.0, ge=0.0)
    """Weight of D(a_full, sg(a_sparse)): pulls full attention towards sparse."""
    w_sf: float = Field(default=1.0, ge=0.0)
    """Weight of D(sg(a_full), a_sparse): pulls sparse attention towards full."""
    output_gate: bool = True
    """Per-head sigmoid gate on the attention output (as in the released SSA models)."""
    inference_mode: Literal["full", "sparse"] = "full"
    """Attention used outside training (evaluation, export) unless a caller asks for the other."""

    @property
    def effective_inference_mode(self) -> Literal["full", "sparse"]:
        """The attention used outside training: `inference_mode` for `ssa`, else the one branch trained."""
        return self.inference_mode if self.variant == "ssa" else self.variant


class ParallelConfig(Section):
    """Model parallel sizes; data parallel is whatever remains of the world size."""

    tp: int = Field(default=1, ge=1)
    """Tensor-parallel size (heads and MLP columns are sharded)."""
    cp: int = Field(default=1, ge=1)
    """Context-parallel size (the sequence is sharded)."""
    cp_comm: Literal["ring", "allgather"] = "allgather"
    """How context-parallel attention reaches the other ranks' keys/values: `allgather` (one all-gather
    serving both SSA branches, dK/dV reduce-scattered; small with GQA) or `ring` (point-to-point shifts
    overlapped with compute). The default is the faster one in the one-GPU rank simulation at every CP size
    and length measured (docs/PERFORMANCE.md). Megatron-Core calls this choice `cp_comm_type`."""
    sequence_parallel: bool = False
    """Megatron sequence parallelism: outside attention and MLP (norms, residual stream, embedding output)
    each tensor-parallel rank holds 1/tp of the tokens; saves activation memory; needs `tp` > 1."""

    @model_validator(mode="after")
    def _check_sequence_parallel(self) -> ParallelConfig:
        if self.sequence_parallel and self.tp == 1:
            raise ValueError(
                "parallel.sequence_parallel=true needs parallel.tp > 1 (it splits the sequence over the "
                "tensor-parallel ranks); set parallel.tp or parallel.sequence_parallel=false"
            )
        return self


class TrainConfig(Section):
    """Optimisation, schedule, checkpoints and the loop."""

    steps: int = Field(ge=1)
    """Optimizer steps."""
    micro_batch_size: int = Field(default=1, ge=1)
    """Sequences per rank per micro-step."""
    global_batch_size: int = Field(default=1, ge=1)
    """Sequences per optimizer step over all data-parallel ranks (= micro x dp x accumulation)."""
    lr: float = Field(default=1e-3, gt=0)
    """Peak learning rate."""
    min_lr: float = Field(default=0.0, ge=0)
    """Learning rate at the end of the cosine decay."""
    warmup_fraction: float = Field(default=0.01, ge=0, le=1)
    """Linear warm-up length as a share of `steps`."""
    weight_decay: float = Field(default=0.1, ge=0)
    """AdamW decoupled weight decay (not applied to norms)."""
    beta1: float = Field(default=0.9, ge=0, lt=1)
    """AdamW beta1."""
    beta2: float = Field(default=0.95, ge=0, lt=1)
    """AdamW beta2."""
    eps: float = Field(default=1e-8, gt=0)
    """AdamW epsilon."""
    grad_clip: float = Field(default=1.0, ge=0)
    """Global gradient-norm clip; 0 disables clipping."""
    seed: int = Field(default=1234, ge=0)
    """Seeds the weights, the data order and the SSA mode draws."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """`auto`: bf16 on GPU, fp32 on CPU."""
    recompute: Literal["none", "selective", "full"] = "none"
    """Activation recomputation: none, the core attention only, or whole layers."""
    cross_entropy: Literal["megatron", "fused"] = "megatron"
    """The training loss: Megatron's logits + cross-entropy, or `fused`: output projection and cross-entropy
    in one op that never keeps the `[tokens, vocab]` logits (`model/head.py`: Liger's kernel on CUDA when
    installed, else chunked PyTorch); `fused` needs parallel.tp=1."""
    fused_elementwise: bool = True
    """Compiled element-wise kernels (`torch.compile`): Megatron's fused SwiGLU (`bias_activation_fusion`,
    only its input kept for backward), the per-head output gate, and RoPE with the copy of query and key into
    the attention kernels' layout. CUDA only: on CPU the plain ops run whatever this says."""
    deepspeed_config: str = "configs/deepspeed/zero1.json"
    """DeepSpeed JSON (ZeRO stage 1 or 2 over the data-parallel group); its `"auto"` values are filled
    from this config. A relative path is looked up in the working directory, then in the repository.
    Shipped: `zero1.json` (bf16 gradients), `zero1-fp32-grads.json` (in bf16, DeepSpeed's BF16 optimizer:
    gradients accumulated in fp32, the leanest step on one GPU without accumulation) and `zero2.json`
    (gradients partitioned and reduced during backward: multi-node, accumulation, memory)."""
    log_interval: int = Field(default=1, ge=1)
    """Steps between metric lines."""
    eval_interval: int = Field(default=100, ge=1)
    """Steps between validations (both inference modes)."""
    eval_batches: int = Field(default=4, ge=1)
    """Validation micro-batches per evaluation in total, shared by the data-parallel ranks (a multiple of the
    data-parallel size), so the validation set does not depend on the layout."""
    save_interval: int = Field(default=100, ge=1)
    """Steps between checkpoints (one is always written at the end)."""
    keep_last: int = Field(default=3, ge=1)
    """Checkpoints kept in the run directory."""
    max_nonfinite: int = Field(default=5, ge=1)
    """Consecutive non-finite losses (skipped updates) after which the run stops."""

    @model_validator(mode="after")
    def _check_lr(self) -> TrainConfig:
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr={self.min_lr} is larger than lr={self.lr}")
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError(
                f"global_batch_size={self.global_batch_size} is not a multiple of "
                f"micro_batch_size={self.micro_batch_size}"
            )
        return self


class DataConfig(Section):
    """Packed token shards written by `ssa data shards` / `ssa data prepare`."""

    dir: str = "data/build/default"
    """Dataset root holding `train/`, `valid/` (shards + manifest) and `tokenizer/`."""
    tokenizer: str | None = None
    """Tokenizer directory; default `<dir>/tokenizer`."""
    seq_len: int = Field(default=256, ge=2)
    """Tokens per training sequence (shards hold seq_len + 1)."""

    @property
    def tokenizer_dir(self) -> str:
        """Where the tokenizer lives."""
        return self.tokenizer or str(Path(self.dir) / "tokenizer")


class LoggingConfig(Section):
    """Where metrics go besides `RUN_DIR/metrics.jsonl` and the console."""

    wandb: Literal["offline", "online", "disabled"] = "offline"
    """wandb mode; `online` needs a login; `offline` writes under the run dir for a later `wandb sync`."""
    project: str = "ssa-pretrain"
    """wandb project."""
    name: str | None = None
    """wandb run name; default the run directory's name."""
    progress: bool = True
    """Show a live progress display on the console (rank 0)."""


class DebugConfig(Section):
    """Fault injection, to test through the command line how a run survives faults (off by default)."""

    inject_nonfinite_at: list[int] = []
    """Optimizer steps (1-based) at which `inject_nonfinite_into` is made NaN, e.g. `[3]` or `[3, 4, 5]`."""
    inject_nonfinite_into: Literal["loss", "gradients", "weights"] = "loss"
    """`loss`: the step's loss (and so its gradients); `gradients`: the gradients only, the loss stays finite;
    `weights`: one weight after the step's update (as an overflowing update would)."""

    @field_validator("inject_nonfinite_at", mode="before")
    @classmethod
    def _one_step(cls, value: Any) -> Any:
        return [value] if isinstance(value, int) else value


class Config(Section):
    """A whole run."""

    model: ModelConfig
    ssa: SSAConfig = SSAConfig()
    parallel: ParallelConfig = ParallelConfig()
    train: TrainConfig
    data: DataConfig = DataConfig()
    logging: LoggingConfig = LoggingConfig()
    debug: DebugConfig = DebugConfig()

    @model_validator(mode="after")
    def _check_cross_sections(self) -> Config:
        tp, cp, seq_len = self.parallel.tp, self.parallel.cp, self.data.seq_len
        if self.model.num_kv_heads % tp:
            raise ValueError(f"parallel.tp={tp} must divide model.num_kv_heads={self.model.num_kv_heads}")
        if self.model.ffn_hidden_size % tp:
            raise ValueError(
                f"parallel.tp={tp} must divide model.ffn_hidden_size={self.model.ffn_hidden_size}"
            )
        if self.train.cross_entropy == "fused" and tp > 1:
            raise ValueError(
                f"train.cross_entropy=fused needs parallel.tp=1 (got {tp}: the output layer splits the "
                "vocabulary); use train.cross_entropy=megatron"
            )
        unit = 2 * cp * (self.ssa.block_size if cp > 1 else 1)  # each CP chunk holds whole key blocks
        if seq_len % unit:
            raise ValueError(
                f"data.seq_len={seq_len} must be a multiple of 2 * parallel.cp"
                f"{' * ssa.block_size' if cp > 1 else ''} = {unit}"
            )
        if self.parallel.sequence_parallel and seq_len % (cp * tp):  # each CP share splits over TP
            raise ValueError(
                f"data.seq_len={seq_len} must be a multiple of parallel.cp * parallel.tp = "
                f"{cp * tp} with parallel.sequence_parallel"
            )
        return self


def _merge(base: dict, extra: dict) -> dict:
    """Deep-merge `extra` into a copy of `base` (mappings merge, everything else replaces)."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = (
            _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def read_yaml(path: str | Path, _including: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML mapping, resolving its `include:` list (paths relative to the file); an include cycle is
    refused with its chain of files."""
    path = Path(path)
    if path.resolve() in _including:
        chain = [*_including[_including.index(path.resolve()) :], path.resolve()]
        raise ConfigError(f"include cycle: {' -> '.join(map(str, chain))}; remove one of these includes")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    includes = data.pop("include", [])
    if isinstance(includes, str):
        includes = [includes]
    merged: dict[str, Any] = {}
    for inc in includes:
        merged = _merge(merged, read_yaml(path.parent / inc, (*_including, path.resolve())))
    return _merge(merged, data)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` strings; values are parsed as YAML scalars (`1e-3`, `true`, `null`)."""
    data = _merge({}, data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        dotted, raw = item.split("=", 1)
        keys = dotted.strip().split(".")
        node = data
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {key!r} is not a section")
        node[keys[-1]] = yaml.safe_load(raw) if raw.strip() else None
    return data


def describe_errors(err: ValidationError, root: type[BaseModel]) -> str:
    """pydantic's errors as one line per key, with the allowed keys (and a close match) for an unknown one."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            section = _section_at(e["loc"][:-1], root)
            allowed = sorted(section.model_fields) if section else []
            close = difflib.get_close_matches(str(e["loc"][-1]), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            lines.append(f"{loc}: unknown key{hint}; allowed: {', '.join(allowed)}")
        elif e["type"] == "missing":
            lines.append(f"{loc}: required but not set")
        else:
            given = f" (got {e['input']!r})" if not isinstance(e.get("input"), dict) else ""
            lines.append(f"{loc or 'config'}: {e['msg']}{given}")
    return "\n  ".join(lines)


def _section_at(loc: tuple, root: type[BaseModel]) -> type[BaseModel] | None:
    model = root
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not (
            isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        ):
            return None
        model = field.annotation
    return model


def build_config(data: dict[str, Any], source: str = "config") -> Config:
    """Validate a raw mapping into a `Config`, turning pydantic's errors into one readable message."""
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{source}: invalid config\n  {describe_errors(err, Config)}") from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load a run config: YAML (+ includes) + dotted overrides, validated."""
    return build_config(apply_overrides(read_yaml(path), overrides or []), source=str(path))


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML (what the run directory stores)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def read_deepspeed_json(train: TrainConfig) -> dict[str, Any]:
    """The DeepSpeed JSON `train.deepspeed_config` names (looked up in the working directory, then the
    repository)."""
    path = Path(train.deepspeed_config)
    if not path.is_absolute() and not path.is_file():
        path = REPO_ROOT / path
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(
            f"train.deepspeed_config: cannot read {path} ({err}); name a DeepSpeed JSON such as "
            "configs/deepspeed/zero1.json"
        ) from err


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"train": {"lr": 1e-3}}` -> `{"train.lr": 1e-3}` (the dotted keys of overrides)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
