"""Convert a training checkpoint (DeepSpeed + Megatron, any TP size) to a Hugging Face model directory.

    ssa convert runs/300m runs/300m/hf                         # the run's latest checkpoint
    ssa convert runs/300m/checkpoints/step-005000 exports/300m-step5000

Steps: read `meta.json` (resolved config, vocabulary) and every TP rank's `mp_rank_NN_model_states.pt`;
gather the shards to TP=1; check every shape against the config; map to Llama names (`q/k/v/o_proj`,
`gate/up/down_proj`, norms, `embed_tokens`, plus the SSA head gate `self_attn.gate_proj`), dropping the
embedding's padding rows (these three steps follow the weight-layout table, `ssa_pretrain/model/layout.py`);
write weights (safetensors, sharded past `max_shard_size`), config with `auto_map`, generation config,
tokenizer and the modeling code into a temporary directory; load it back with `trust_remote_code=True`
and compare its logits with the training model's (Megatron, TP=1) in both inference modes; only then
rename it to OUT_DIR.

The staging directory `.OUT_NAME.tmp-HOST-PID-XXXXXXXX` sits next to OUT_DIR (the same file system, so the
rename is atomic) and names its owner: a later convert into the same OUT_DIR removes the ones whose process
is gone (a killed run), and leaves those of a live process or another host. The export gets the user's umask.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
from pathlib import Path
from typing import Any

import torch

from ssa_pretrain.checkpoint import CheckpointError, latest_checkpoint, read_meta
from ssa_pretrain.config import Config
from ssa_pretrain.errors import UserError

LOGIT_TOLERANCE = 2e-3
"""Largest |HF − Megatron| logit allowed, relative to max(1, max |logit|): both run in fp32 on CPU; the
differences are summation order (observed ~1e-5 on the tiny model)."""

TOKENIZER_SAMPLES = ["Hello world", "  def f(x):\n\treturn x  # ünïcödé 123", " leading space", "a\n\nb"]


class ConversionError(UserError, RuntimeError):
    """A checkpoint that cannot be converted, or an output directory that would be overwritten."""


# ----------------------------------------------------------------------------------------- reading


def resolve_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """(checkpoint directory, run directory) of a run directory (its latest checkpoint) or a checkpoint."""
    path = Path(path)
    if not path.exists():
        raise ConversionError(f"{path}: no such run directory or checkpoint")
    if (path / "meta.json").is_file():
        return path, path.parent.parent
    ckpt_dir = path / "checkpoints"
    found = latest_checkpoint(ckpt_dir) if ckpt_dir.is_dir() else None
    if found is None:
        raise ConversionError(
            f"{path}: neither a checkpoint (no meta.json) nor a run directory with checkpoints/latest; "
            f"pass RUN_DIR or RUN_DIR/checkpoints/step-NNNNNN"
        )
    return found, path


def load_shards(ckpt: Path, tp: int) -> list[dict[str, torch.Tensor]]:
    """The Megatron state dict of every TP rank (tensors only, on CPU)."""
    shards = []
    for rank in range(tp):
        file = ckpt / f"mp_rank_{rank:02d}_model_states.pt"
        if not file.is_file():
            raise ConversionError(
                f"{file}: missing model shard of tensor-parallel rank {rank} (the checkpoint was saved with "
                f"parallel.tp={tp}); copy the complete step directory"
            )
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as err:  # a truncated or foreign file: name it
            raise ConversionError(f"{file}: unreadable model shard ({err})") from err
        if "module" not in state:
            raise ConversionError(f"{file}: no 'module' state dict; not a DeepSpeed model-states file")
        shards.append({k: v for k, v in state["module"].items() if isinstance(v, torch.Tensor)})
    return shards


def gather_tensor_parallel(shards: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Megatron state dicts of TP ranks -> the TP=1 state dict (same keys), each weight as the layout table
    says its ranks hold it."""
    from ssa_pretrain.model import layout

    if len(shards) == 1:
        return dict(shards[0])
    keys = set(shards[0])
    for rank, shard in enumerate(shards[1:], start=1):
        if set(shard) != keys:
            raise ConversionError(
                f"TP rank {rank} holds other weights than rank 0: {sorted(keys ^ set(shard))}"
            )
    full = {}
    for key in shards[0]:
        weight = layout.find(key)
        if weight is None:
            raise ConversionError(f"{key}: unknown Megatron weight; this converter does not support it")
        try:
            full[key] = layout.merge_shards(weight, [shard[key] for shard in shards])
        except RuntimeError as err:
            raise ConversionError(f"{key}: TP shards do not fit together ({err})") from err
    return full


def check_shapes(state: dict[str, torch.Tensor], cfg: Config, padded_vocab: int, ckpt: Path) -> None:
    """Raise ConversionError listing every weight whose presence or shape contradicts the config."""
    from ssa_pretrain.model import layout

    expected = layout.shapes(cfg.model, padded_vocab, cfg.ssa.output_gate)
    problems = [f"{k}: missing" for k in expected if k not in state]
    problems += [f"{k}: not in a model of this config" for k in state if k not in expected]
    problems += [
        f"{k}: checkpoint {tuple(state[k].shape)}, config {shape}"
        for k, shape in expected.items()
        if k in state and tuple(state[k].shape) != shape
    ]
    if problems:
        shown = "\n  ".join(problems[:12]) + (
            f"\n  … {len(problems) - 12} more" if len(problems) > 12 else ""
        )
        raise ConversionError(
            f"{ckpt}: the weights do not match the model in meta.json:\n  {shown}\n"
            "The checkpoint and its meta.json come from different models; use the step directory as saved."
        )


# ----------------------------------------------------------------------------------------- mapping


def hf_config(cfg: Config, vocab_size: int, dtype: torch.dtype):
    """The `SSAConfig` of the checkpoint's model."""
    from ssa_pretrain.hf.configuration_ssa import SSAConfig

    model = cfg.model
    return SSAConfig(
        vocab_size=vocab_size,
        hidden_size=model.hidden_size,
        intermediate_size=model.ffn_hidden_size,
        num_hidden_layers=model.num_layers,
        num_attention_heads=model.num_attention_heads,
        num_key_value_heads=model.num_kv_heads,
        head_dim=model.kv_channels,
        max_position_embeddings=cfg.data.seq_len,
        rms_norm_eps=model.norm_eps,
        rope_theta=model.rope_theta,
        initializer_range=model.init_std,
        tie_word_embeddings=model.tie_embeddings,
        output_gate=cfg.ssa.output_gate,
        inference_mode=cfg.ssa.effective_inference_mode,
        block_size=cfg.ssa.block_size,
        block_count=cfg.ssa.block_count,
        dtype=dtype,
    )


# ----------------------------------------------------------------------------------------- writing


def save_tokenizer(tokenizer_dir: Path, out: Path) -> None:
    """The run's sentencepiece model + a fast tokenizer (`tokenizer.json`) that `AutoTokenizer` loads.

    Training documents are `encode(text) + [eos]` with no BOS and no dummy prefix, so the HF tokenizer adds
    no special tokens and no prefix space.
    """
    from transformers import LlamaTokenizerFast

    model_file = tokenizer_dir / "tokenizer.model"
    if not model_file.is_file():
        raise ConversionError(f"{model_file}: the run's tokenizer is missing (expected RUN_DIR/tokenizer/)")
    shutil.copy(model_file, out / "tokenizer.model")
    tokenizer = LlamaTokenizerFast.from_pretrained(
        out,
        legacy=False,
        add_prefix_space=False,
        add_bos_token=False,
        add_eos_token=False,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )
    tokenizer.save_pretrained(out)


def write_export(state: dict[str, torch.Tensor], config, tokenizer_dir: Path, out: Path, shard: str) -> None:
    """Weights, config (+ auto_map), generation config, tokenizer and modeling code into `out`."""
    from transformers import GenerationConfig

    from ssa_pretrain.hf.configuration_ssa import SSAConfig
    from ssa_pretrain.hf.modeling_ssa import SSAForCausalLM

    SSAConfig.register_for_auto_class()
    SSAForCausalLM.register_for_auto_class("AutoModelForCausalLM")
    with torch.device("meta"):
        model = SSAForCausalLM(config)
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    model.save_pretrained(out, max_shard_size=shard)
    save_tokenizer(tokenizer_dir, out)


# ----------------------------------------------------------------------------------------- checking


def sample_tokens(cfg: Config, vocab_size: int) -> torch.Tensor:
    """A fixed `[2, T]` batch, long enough that sparse attention drops blocks (T > BS·K if seq_len allows)."""
    bs, k = cfg.ssa.block_size, cfg.ssa.block_count
    length = max(2, min(cfg.data.seq_len, bs * (k + 2)))
    return torch.randint(4, vocab_size, (2, length), generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def megatron_logits(state: dict[str, torch.Tensor], cfg: Config, vocab_size: int, tokens, modes) -> dict:
    """Logits `[B, T, vocab]` (on CPU) per mode of the training model (Megatron, TP=1, fp32) with `state`.

    It runs where Megatron runs: on the GPU when there is one (its RoPE moves to the current CUDA device).
    """
    from megatron.core import parallel_state

    from ssa_pretrain.distributed import init_distributed
    from ssa_pretrain.model.gpt import build_model, set_attention_mode

    init_distributed(1, 1)
    if parallel_state.get_tensor_model_parallel_world_size() != 1:
        raise ConversionError("run ssa convert as a single process (the check builds the model with TP=1)")
    one = cfg.model_copy(update={"parallel": cfg.parallel.model_copy(update={"tp": 1, "cp": 1})})
    model = build_model(one, vocab_size, dtype=torch.float32)
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    if missing or unexpected:
        raise ConversionError(
            f"Megatron model rejects the weights: missing {missing}, unexpected {unexpected}"
        )
    model.eval()
    out = {}
    for mode in modes:
        set_attention_mode(model, mode)
        out[mode] = (
            model(tokens.to(model.embedding.word_embeddings.weight.device), None, None)[..., :vocab_size]
            .float()
            .cpu()
        )
    return out


@torch.no_grad()
def hf_logits(out: Path, tokens: torch.Tensor, modes) -> dict:
    """Logits (on CPU) per mode of the exported model, loaded as a user loads it (fp32), on the device the
    training model's check uses."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, dtype=torch.float32)
    model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    logits = {}
    for mode in modes:
        model.config.inference_mode = mode
        logits[mode] = model(tokens.to(model.device), use_cache=False).logits.float().cpu()
    return logits


def check_tokenizer(out: Path) -> None:
    """The fast tokenizer must encode like the sentencepiece model the data was tokenized with."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    fast = AutoTokenizer.from_pretrained(out, trust_remote_code=True)  # the config names our model type
    for text in TOKENIZER_SAMPLES:
        if fast(text)["input_ids"] != sp.encode(text):
            raise ConversionError(f"the fast tokenizer encodes {text!r} unlike the sentencepiece model")


def verify(out: Path, state: dict[str, torch.Tensor], cfg: Config, vocab_size: int) -> dict[str, float]:
    """Max |logit difference| HF vs Megatron per mode; raises ConversionError above `LOGIT_TOLERANCE`."""
    modes = ("full", "sparse") if cfg.ssa.variant == "ssa" else (cfg.ssa.variant,)
    tokens = sample_tokens(cfg, vocab_size)
    reference = megatron_logits(state, cfg, vocab_size, tokens, modes)
    exported = hf_logits(out, tokens, modes)
    diffs = {}
    for mode in modes:
        diff = (exported[mode] - reference[mode]).abs().max().item()
        scale = max(1.0, reference[mode].abs().max().item())
        diffs[mode] = diff
        print(f"logits {mode:6s} tokens {tuple(tokens.shape)}: max |HF - Megatron| = {diff:.3g}")
        if not diff <= LOGIT_TOLERANCE * scale:
            raise ConversionError(
                f"the exported model's {mode} logits differ from the training model's by {diff:.3g} "
                f"(tolerance {LOGIT_TOLERANCE * scale:.3g}); nothing was written"
            )
    check_tokenizer(out)
    return diffs


# ----------------------------------------------------------------------------------------- entry point


def convert(
    source: str | Path, out_dir: str | Path, overwrite: bool = False, max_shard_size: str = "5GB"
) -> dict[str, Any]:
    """Convert `source` (run directory or checkpoint) into the HF directory `out_dir`, checked.

    Returns a summary (checkpoint, step, max logit differences). `out_dir` appears complete or not at all.
    """
    out_dir = Path(out_dir)
    clean_stale_staging(out_dir)
    if out_dir.exists() and not overwrite:
        raise ConversionError(f"{out_dir} exists; pass --overwrite to replace it or choose another OUT_DIR")
    ckpt, run_dir = resolve_checkpoint(source)
    meta = read_meta(ckpt)
    try:
        cfg = Config.model_validate(meta["config"])
        vocab_size = int(meta["vocab_size"])
    except Exception as err:
        raise CheckpointError(f"{ckpt / 'meta.json'}: no usable config / vocab_size ({err})") from err
    from ssa_pretrain import cpu_shims
    from ssa_pretrain.model import layout
    from ssa_pretrain.model.gpt import padded_vocab_size

    cpu_shims.install()  # `verify` runs the training model (Megatron), on CPU too
    state = gather_tensor_parallel(load_shards(ckpt, cfg.parallel.tp))
    check_shapes(state, cfg, padded_vocab_size(vocab_size, cfg.model, cfg.parallel.tp), ckpt)
    dtype = state["decoder.final_layernorm.weight"].dtype
    hf_state = layout.hf_state_dict(state, cfg.model, cfg.ssa.output_gate, vocab_size)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_path(out_dir, "tmp")
    tmp.mkdir()
    try:
        write_export(hf_state, hf_config(cfg, vocab_size, dtype), run_dir / "tokenizer", tmp, max_shard_size)
        (tmp / "ssa_export.json").write_text(
            json.dumps(
                {
                    "checkpoint": str(ckpt.resolve()),
                    "step": meta.get("step"),
                    "tokenizer_sha256": meta.get("tokenizer_sha256"),
                },
                indent=1,
            )
        )
        diffs = verify(tmp, state, cfg, vocab_size)
        apply_umask(tmp)
        install_directory(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"checkpoint": ckpt, "step": meta.get("step"), "max_logit_diff": diffs}


def staging_path(out_dir: Path, kind: str) -> Path:
    """`.OUT_NAME.KIND-HOST-PID-XXXXXXXX` next to `out_dir`: this process's staging (`tmp`) or replaced
    (`old`) export."""
    owner = f"{socket.gethostname()}-{os.getpid()}"
    return out_dir.with_name(f".{out_dir.name}.{kind}-{owner}-{secrets.token_hex(4)}")


def apply_umask(root: Path) -> None:
    """Give `root` and everything in it the modes a new directory or file gets under the user's umask (copied
    files, such as the modeling code, would keep their source's mode)."""
    umask = os.umask(0o077)  # reading the umask means setting it; put it back at once
    os.umask(umask)
    for path in [root, *root.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def clean_stale_staging(out_dir: Path) -> None:
    """Tidy up after converts into `out_dir` that died (killed, out of memory): their staging directories go;
    an export a killed `--overwrite` had moved aside is put back when `out_dir` is missing (the rename of the
    new export had not happened), else removed. Directories of a live process, or of another host (whose
    processes cannot be seen from here), are left and named."""
    if not out_dir.parent.is_dir():
        return
    pattern = re.compile(rf"\.{re.escape(out_dir.name)}\.(tmp|old)-(.+)-(\d+)-[0-9a-f]{{8}}")
    host = socket.gethostname()
    found = [(m, p) for p in out_dir.parent.iterdir() if (m := pattern.fullmatch(p.name))]
    for match, path in sorted(found, key=lambda item: item[0][1] == "tmp"):  # a moved-aside export first
        kind, owner, pid = match[1], match[2], int(match[3])
        if owner != host or _process_alive(pid):
            print(f"note: {path} belongs to a convert on {owner} (pid {pid}) that may still run; left alone")
        elif kind == "old" and not out_dir.exists():
            os.replace(path, out_dir)
            print(f"restored {out_dir} from {path.name} (an interrupted --overwrite had moved it aside)")
        else:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
            print(f"removed {path.name} (left by an interrupted convert, pid {pid})")


def install_directory(tmp: Path, out_dir: Path) -> None:
    """Move the finished export to `out_dir`; an existing `out_dir` (--overwrite) goes only afterwards."""
    old = None
    if out_dir.exists():
        old = staging_path(out_dir, "old")
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
