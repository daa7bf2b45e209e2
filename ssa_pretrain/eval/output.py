"""Where an `ssa eval` report goes and how it is written: JSON, a markdown table, a PNG.

Every command computes in memory, then writes its files into `.OUT.partial-PID/` next to OUT and renames that
to OUT, so a failed or interrupted run never leaves a half-written OUT. An existing non-empty OUT is an error
unless `--overwrite` (then it is replaced at the end, not before).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from ssa_pretrain.eval.errors import EvalError


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
