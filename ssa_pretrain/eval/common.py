"""What the `ssa eval` commands share: the output directory, the exported model, evaluation tokens, hooks.

* Output: every command computes in memory, then writes its files into `.OUT.partial-PID/` next to OUT and
  renames that to OUT, so a failed or interrupted run never leaves a half-written OUT. An existing non-empty
  OUT is an error unless `--overwrite` (then it is replaced at the end, not before).
* Model: the Hugging Face directory written by `ssa convert`, loaded with `trust_remote_code=True` (the
  artifact users get); the attention mode and budget are switched through `model.config`, which every
  forward reads. RoPE scaling (lengths beyond training) goes in as `rope_parameters` at load time and is
  run by transformers' `LlamaRotaryEmbedding`, which the export uses.
* Tokens: a shard directory (`ssa data` output: a dataset directory, whose `valid/` split is used, or a
  split directory with `manifest.json`), its samples concatenated in manifest order (the packed token
  stream), or text (`.txt`/`.jsonl` files or a directory of them, optionally compressed) tokenized with the
  export's tokenizer as training did (`encode(text) + [eos]` per document). Either way one token stream.
* Internals: `attention_calls` wraps the export's `ssa_attention` function, so an evaluation sees the
  post-RoPE queries and keys each layer attends with, can call the export's own `block_means` /
  `select_blocks`, and can make a single layer sparse.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from ssa_pretrain.errors import UserError
from ssa_pretrain.eval import ROPE_TYPES


class EvalError(UserError, ValueError):
    """Bad input to `ssa eval`: a missing model or data, an output directory in the way, a bad option."""


# ----------------------------------------------------------------------------------------- output


class OutputDir:
    """Where a command's files go: a staging directory next to `out`, renamed to `out` on success.

    Construct it before any work (it checks that `out` may be written); enter it only to write the files.
    On an exception inside the `with` block the staging directory is removed and `out` is untouched.
    """

    def __init__(self, out: str | Path, overwrite: bool) -> None:
        self.out = Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise EvalError(f"{self.out}: exists and is not a directory; choose another --out")
        if self.out.is_dir() and any(self.out.iterdir()) and not overwrite:
            raise EvalError(f"{self.out}: exists and is not empty; pass --overwrite to replace it")
        self.staging = self.out.parent / f".{self.out.name}.partial-{os.getpid()}"

    def __enter__(self) -> Path:
        self.staging.mkdir(parents=True)
        return self.staging

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            return
        if self.out.exists():
            old = self.out.parent / f".{self.out.name}.old-{os.getpid()}"
            self.out.rename(old)
            self.staging.rename(self.out)
            shutil.rmtree(old)
        else:
            self.staging.rename(self.out)

    def publish(
        self, name: str, report: dict, markdown: Callable[[dict], str], plot: Callable[[dict, Path], None]
    ) -> None:
        """Write `NAME.json`, `NAME.md` (`markdown(report)`) and `NAME.png` (`plot`); publish them at once."""
        with self as staging:
            write_json(staging / f"{name}.json", report)
            (staging / f"{name}.md").write_text(markdown(report))
            plot(report, staging / f"{name}.png")


def write_json(path: Path, data: Any) -> None:
    """Indented JSON; NaN and inf are written as null (strict JSON readers reject them)."""

    def clean(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        return x

    path.write_text(json.dumps(clean(data), indent=1) + "\n")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; floats with 4 significant digits, None as `–`."""

    def cell(x: Any) -> str:
        if x is None:
            return "–"
        if isinstance(x, float):
            return f"{x:.4g}"
        return str(x)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def pyplot() -> ModuleType:
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def positive_ints(values: Sequence[int], flag: str) -> list[int]:
    """Sorted unique values, or `EvalError` for an empty list or a value below 1."""
    if not values or any(v < 1 for v in values):
        raise EvalError(f"{flag} needs positive integers, got {list(values)}")
    return sorted(set(values))


# ----------------------------------------------------------------------------------------- model


def rope_parameters(config: dict, rope_type: str | None, factor: float | None) -> dict | None:
    """`rope_parameters` for `from_pretrained` from `--rope-scaling/--rope-factor` (None: the export's own).

    The original context is the export's `max_position_embeddings` (the training sequence length); llama3
    takes Llama 3.1's low/high frequency factors 1 and 4.
    """
    if rope_type is None:
        if factor is not None:
            raise EvalError("--rope-factor needs --rope-scaling TYPE")
        return None
    if rope_type not in ROPE_TYPES:
        raise EvalError(f"--rope-scaling must be one of {ROPE_TYPES}, got {rope_type!r}")
    if factor is None or factor <= 1.0:
        raise EvalError(f"--rope-scaling {rope_type} needs --rope-factor > 1 (e.g. 4 for 8K -> 32K)")
    theta = config.get("rope_parameters", {}).get("rope_theta", config.get("rope_theta", 10000.0))
    params = {"rope_type": rope_type, "rope_theta": theta, "factor": float(factor)}
    if rope_type == "llama3":
        params |= {"low_freq_factor": 1.0, "high_freq_factor": 4.0}
    if rope_type != "linear":
        params["original_max_position_embeddings"] = int(config["max_position_embeddings"])
    return params


@dataclass(frozen=True)
class LoadOptions:
    """How every `ssa eval` command loads the export.

    Attributes:
        device: a torch device; None: cuda when available, else cpu.
        dtype: weights dtype, a `torch` attribute name.
        rope_scaling, rope_factor: replace the export's RoPE (see `rope_parameters`).
    """

    device: str | None = None
    dtype: str = "float32"
    rope_scaling: str | None = None
    rope_factor: float | None = None


DEFAULT_LOAD = LoadOptions()


def load_model(hf_dir: str | Path, load: LoadOptions) -> tuple[torch.nn.Module, Any]:
    """(model in eval mode, tokenizer) of an export; `EvalError` when `hf_dir` is not one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(hf_dir)
    if not path.is_dir():
        raise EvalError(f"{path}: no such model directory; pass the OUT_DIR written by `ssa convert`")
    if not (path / "config.json").is_file() or not (path / "modeling_ssa.py").is_file():
        raise EvalError(
            f"{path}: not an SSA Hugging Face export (no config.json and modeling_ssa.py); "
            "write one with `ssa convert RUN_DIR OUT_DIR`"
        )
    rope = rope_parameters(
        json.loads((path / "config.json").read_text()), load.rope_scaling, load.rope_factor
    )
    kwargs: dict = {"trust_remote_code": True, "dtype": getattr(torch, load.dtype)}
    if rope is not None:
        kwargs["rope_parameters"] = rope  # max_position_embeddings stays the training length
    device = load.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs).to(device).eval()
    return model, AutoTokenizer.from_pretrained(path, trust_remote_code=True)


def set_mode(model: torch.nn.Module, mode: str, block_count: int | None = None) -> None:
    """Switch the export's inference mode (and sparse budget) in place: every forward reads `model.config`."""
    model.config.inference_mode = mode
    if block_count is not None:
        model.config.block_count = block_count


def modeling_module(model: torch.nn.Module) -> ModuleType:
    """The export's `modeling_ssa` module (transformers loaded it from the model directory)."""
    module = sys.modules[type(model).__module__]
    for name in ("ssa_attention", "block_means", "select_blocks"):
        if not hasattr(module, name):
            raise EvalError(f"{module.__file__}: the export's modeling code has no {name}(); re-export it")
    return module


@contextlib.contextmanager
def attention_calls(model: torch.nn.Module, on_call: Callable[..., torch.Tensor | None]) -> Iterator[None]:
    """Call `on_call(layer, q, k, v, q_pos, k_pos, kbar)` in every attention layer of every forward.

    Wraps the export's `ssa_attention(q [B,T,HQ,D], k/v [B,S,HKV,D], q_pos [B,T], k_pos [B,S], kbar,
    block_size, block_count, chunk_size)`; `layer` counts the calls modulo the number of layers (a forward
    runs the layers in order). A tensor returned by `on_call` replaces `kbar` (block means `[B, NB, HKV, D]`),
    so that layer runs sparse with the config's `block_count`. The function is restored on exit.
    """
    module = modeling_module(model)
    original = module.ssa_attention
    num_layers = model.config.num_hidden_layers
    calls = 0

    def wrapped(q, k, v, q_pos, k_pos, kbar, *rest):
        nonlocal calls
        replaced = on_call(calls % num_layers, q, k, v, q_pos, k_pos, kbar)
        calls += 1
        return original(q, k, v, q_pos, k_pos, kbar if replaced is None else replaced, *rest)

    module.ssa_attention = wrapped
    try:
        yield
    finally:
        module.ssa_attention = original


# ----------------------------------------------------------------------------------------- tokens


def check_data_path(data: str | Path) -> Path:
    """`data` as a Path, or `EvalError` when it does not exist (checked before the model loads)."""
    path = Path(data)
    if not path.exists():
        raise EvalError(f"{path}: no such shard directory or text file (--data)")
    return path


def load_tokens(
    data: str | Path, hf_dir: str | Path, tokenizer: Any, max_tokens: int
) -> tuple[torch.Tensor, str]:
    """The first `max_tokens` (or fewer) tokens of the evaluation stream: `(LongTensor [N], description)`.

    Shards must have been built with the export's tokenizer (checked by sha256 when the export records it).
    """
    from ssa_pretrain.data.errors import DataError

    path = check_data_path(data)
    split = next((p for p in (path, path / "valid") if (p / "manifest.json").is_file()), None)
    try:
        if split is not None:
            return _shard_tokens(split, Path(hf_dir), max_tokens), f"shards {split}"
        return _text_tokens(path, tokenizer, max_tokens), f"text {path}"
    except DataError as err:
        raise EvalError(str(err)) from err


def _shard_tokens(split: Path, hf_dir: Path, max_tokens: int) -> torch.Tensor:
    from ssa_pretrain.data.loader import iter_validation
    from ssa_pretrain.data.manifest import load_manifest

    export = hf_dir / "ssa_export.json"
    sha = json.loads(export.read_text()).get("tokenizer_sha256") if export.is_file() else None
    samples, total = [], 0
    for batch in iter_validation(split, load_manifest(split)["seq_len"], 1, tokenizer_sha256=sha):
        samples.append(batch[0])  # consecutive samples are consecutive pieces of the packed stream
        total += batch.shape[1]
        if total >= max_tokens:
            break
    return torch.cat(samples)[:max_tokens]


def _text_tokens(path: Path, tokenizer: Any, max_tokens: int) -> torch.Tensor:
    from ssa_pretrain.data.documents import iter_documents

    ids: list[int] = []
    for text in iter_documents([path]):  # raises DataError for an unusable input
        ids += [*tokenizer(text, add_special_tokens=False).input_ids, tokenizer.eos_token_id]
        if len(ids) >= max_tokens:
            break
    return torch.tensor(ids[:max_tokens], dtype=torch.long)


def token_windows(stream: torch.Tensor, length: int, num_tokens: int) -> torch.Tensor:
    """`[n, length + 1]` windows of `stream [N]`, each starting where the previous one's inputs end.

    Window `i` is `stream[i·length : (i+1)·length + 1]` (inputs: all but the last token, labels: all but the
    first), so the labels of all windows are `stream[1 : n·length + 1]`, each token once, with
    `n = num_tokens // length` (fewer when the stream is shorter). Lengths that divide `num_tokens` score
    exactly the same tokens.
    """
    n = min(num_tokens, stream.numel() - 1) // length
    return stream[: n * length + 1].unfold(0, length + 1, length)
