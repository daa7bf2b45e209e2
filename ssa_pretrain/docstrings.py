"""A module's docstring without importing it, for `--help` texts of commands whose modules import torch."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path


def module_doc(name: str) -> str:
    """The docstring of module `name` (e.g. `ssa_pretrain.eval.ppl`), read from its source file."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(name)
    return ast.get_docstring(ast.parse(Path(spec.origin).read_text())) or ""
