"""The evaluation token stream and its windows.

`--data` is a shard directory (`ssa data` output: a dataset directory, whose `valid/` split is used, or a
split directory with `manifest.json`), its samples concatenated in manifest order (the packed token stream),
or text (`.txt`/`.jsonl` files or a directory of them, optionally compressed) tokenized with the export's
tokenizer as training did (`encode(text) + [eos]` per document). Either way one token stream.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ssa_pretrain.eval.errors import EvalError
from ssa_pretrain.eval.options import check_data_path


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
