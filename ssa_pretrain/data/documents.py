"""Read documents out of text files: the one place that knows the input formats.

Accepted inputs (each may also be compressed as `.xz` or `.gz`; directories are searched recursively, in
sorted order, for these suffixes):

* `.jsonl`: one JSON object per line with a string field `"text"`: one document per line. Other fields (e.g.
  `"source"`) are ignored. Empty lines are skipped; an empty `"text"` is skipped.
* `.txt`: the whole file is one document. Put many documents in `.jsonl` (or many `.txt` files): document
  boundaries decide where an EOS token goes and what the document-level validation split can hold out.
"""

from __future__ import annotations

import gzip
import json
import lzma
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from ssa_pretrain.data.errors import DataError

SUFFIXES = (".jsonl", ".txt", ".jsonl.xz", ".txt.xz", ".jsonl.gz", ".txt.gz")


def _open_text(path: Path) -> IO[str]:
    if path.name.endswith(".xz"):
        return lzma.open(path, "rt", encoding="utf-8")
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files named by `inputs`, directories expanded (sorted); raises `DataError` for anything unusable."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.name.endswith(SUFFIXES))
            if not found:
                raise DataError(f"{item}: directory holds no input files ({', '.join(SUFFIXES)})")
            files.extend(found)
        elif item.is_file():
            if not item.name.endswith(SUFFIXES):
                raise DataError(f"{item}: unsupported input; use one of {', '.join(SUFFIXES)}")
            files.append(item)
        else:
            raise DataError(f"{item}: input file not found")
    if not files:
        raise DataError("no input files given")
    return files


def iter_documents(inputs: Sequence[str | Path]) -> Iterator[str]:
    """Yield every non-empty document of `inputs`, in order (files as given, lines in file order)."""
    for path in expand_inputs(inputs):
        try:
            with _open_text(path) as f:
                if ".jsonl" in path.name:
                    yield from _jsonl_texts(f, path)
                else:
                    text = f.read()
                    if text.strip():
                        yield text
        except (UnicodeDecodeError, EOFError, lzma.LZMAError, gzip.BadGzipFile) as e:
            raise DataError(f"{path}: cannot read ({e}); is the file truncated or not UTF-8 text?") from e


def _jsonl_texts(f: IO[str], path: Path) -> Iterator[str]:
    for lineno, line in enumerate(f, start=1):
        if not line.strip():
            continue
        try:
            text = json.loads(line)["text"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DataError(f'{path}:{lineno}: not a JSON object with a "text" field ({e})') from e
        if not isinstance(text, str):
            raise DataError(f'{path}:{lineno}: "text" must be a string, got {type(text).__name__}')
        if text:
            yield text
