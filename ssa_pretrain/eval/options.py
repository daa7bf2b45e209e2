"""What a user can ask of each `ssa eval` command: its options, their defaults (here and nowhere else) and
the checks that need no model. The command line is built from these classes (`eval/cli.py`), a flag per
field (`batch_size` → `--batch-size`).

Imports neither torch nor transformers, so that `ssa --help` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ssa_pretrain.eval.errors import EvalError

ROPE_TYPES = ("llama3", "linear", "dynamic", "yarn")
"""`--rope-scaling` choices (transformers' RoPE types)."""


class CommandOptions(Protocol):
    """A command's options, as the skeleton (`command.run_evaluation`) takes them."""

    def check(self) -> None:
        """`EvalError` for a value no model could make right (before the output directory and the model)."""


DATA_HELP = "shard directory (its valid/ split) or .txt/.jsonl text to evaluate on"


def cli(doc: str, **argparse: Any) -> dict:
    """A field's `metadata`: the field is the option `--NAME` (a required one without a default).

    Args:
        doc: its help text; `%(default)s` in it shows the default.
        argparse: more keywords of `add_argument` (`type`, `nargs`, `choices`).
    """
    return {"doc": doc, "argparse": argparse}


def flag(name: str) -> str:
    """The command-line flag of the field `name`."""
    return "--" + name.replace("_", "-")


def check_at_least_one(options: Any, *names: str) -> None:
    """`EvalError` naming the first of the fields `names` that is set (not None) and below 1."""
    for name in names:
        value = getattr(options, name)
        if value is not None and value < 1:
            raise EvalError(f"{flag(name)} must be >= 1, got {value}")


def positive_ints(values: Any, option: str) -> list[int]:
    """Sorted unique values, or `EvalError` naming the flag `option` for an empty list or a value below 1."""
    if not values or any(v < 1 for v in values):
        raise EvalError(f"{option} needs positive integers, got {list(values)}")
    return sorted(set(values))


def check_data_path(data: str | Path) -> Path:
    """`data` as a Path, or `EvalError` when it does not exist (checked before the model loads)."""
    path = Path(data)
    if not path.exists():
        raise EvalError(f"{path}: no such shard directory or text file (--data)")
    return path


@dataclass(frozen=True)
class LoadOptions:
    """How every `ssa eval` command loads the export."""

    device: str | None = field(
        default=None, metadata=cli("torch device (default: cuda when available, else cpu)")
    )
    dtype: str = field(
        default="float32",
        metadata=cli("weights dtype (default: %(default)s)", choices=["float32", "bfloat16", "float16"]),
    )
    rope_scaling: str | None = field(
        default=None,
        metadata=cli(
            "RoPE scaling for lengths beyond training (transformers' implementation; llama3 with Llama 3.1's "
            "frequency factors); the original length is the export's max_position_embeddings",
            choices=ROPE_TYPES,
        ),
    )
    rope_factor: float | None = field(
        default=None, metadata=cli("RoPE scaling factor (> 1), with --rope-scaling", type=float)
    )

    def check(self) -> None:
        """`EvalError` for a RoPE scaling without its factor (> 1), or a factor without a scaling."""
        if self.rope_scaling is None:
            if self.rope_factor is not None:
                raise EvalError("--rope-factor needs --rope-scaling TYPE")
            return
        if self.rope_scaling not in ROPE_TYPES:
            raise EvalError(f"--rope-scaling must be one of {ROPE_TYPES}, got {self.rope_scaling!r}")
        if self.rope_factor is None or self.rope_factor <= 1.0:
            raise EvalError(
                f"--rope-scaling {self.rope_scaling} needs --rope-factor > 1 (e.g. 4 for 8K -> 32K)"
            )


DEFAULT_LOAD = LoadOptions()

LENGTHS = cli("context lengths (default: the training length)", type=int, nargs="+")
BLOCK_COUNT = cli("sparse budget K (default: the export's)", type=int)


@dataclass(frozen=True)
class PplOptions:
    """`ssa eval ppl`."""

    data: str = field(metadata=cli(DATA_HELP))
    lengths: list[int] | None = field(default=None, metadata=LENGTHS)
    block_counts: list[int] | None = field(
        default=None, metadata=cli("sparse budgets besides the export's block_count", type=int, nargs="+")
    )
    windows: int = field(
        default=16,
        metadata=cli(
            "windows of the longest length (default %(default)s); shorter lengths score the same tokens",
            type=int,
        ),
    )
    batch_size: int = field(default=4, metadata=cli("windows per forward (default %(default)s)", type=int))

    def check(self) -> None:
        check_data_path(self.data)
        check_at_least_one(self, "windows", "batch_size")
        for name in ("lengths", "block_counts"):
            if getattr(self, name) is not None:
                positive_ints(getattr(self, name), flag(name))


@dataclass(frozen=True)
class SparsityOptions:
    """`ssa eval sparsity`."""

    data: str = field(metadata=cli(DATA_HELP))
    length: int | None = field(
        default=None, metadata=cli("window length (default: the training length)", type=int)
    )
    block_count: int | None = field(default=None, metadata=BLOCK_COUNT)
    windows: int = field(default=4, metadata=cli("windows to evaluate (default %(default)s)", type=int))
    batch_size: int = field(default=2, metadata=cli("windows per forward (default %(default)s)", type=int))

    def check(self) -> None:
        check_data_path(self.data)
        check_at_least_one(self, "length", "block_count", "windows", "batch_size")


@dataclass(frozen=True)
class NiahOptions:
    """`ssa eval niah`."""

    lengths: list[int] | None = field(default=None, metadata=LENGTHS)
    depths: tuple[float, ...] = field(
        default=(0.0, 0.25, 0.5, 0.75, 1.0),
        metadata=cli("needle depths in [0, 1] (default %(default)s)", type=float, nargs="+"),
    )
    trials: int = field(default=4, metadata=cli("trials per cell (default %(default)s)", type=int))
    distractors: int = field(
        default=9, metadata=cli("wrong values scored per trial (default %(default)s)", type=int)
    )
    digits: int = field(default=5, metadata=cli("digits of the secret value (default %(default)s)", type=int))
    block_count: int | None = field(default=None, metadata=BLOCK_COUNT)
    seed: int = field(
        default=0, metadata=cli("seed of keys, values and filler offsets (default %(default)s)", type=int)
    )

    def check(self) -> None:
        if not self.depths or any(not 0.0 <= d <= 1.0 for d in self.depths):
            raise EvalError(f"--depths must lie in [0, 1], got {sorted(set(self.depths))}")
        numbers = 9 * 10 ** (self.digits - 1)  # of `digits` digits
        if self.trials < 1 or not 1 <= self.digits <= 12 or not 1 <= self.distractors < numbers:
            raise EvalError(
                f"--trials must be >= 1, --digits in [1, 12] and --distractors in [1, {numbers}) "
                f"(fewer than the {self.digits}-digit numbers); got {self.trials}, {self.digits}, "
                f"{self.distractors}"
            )
        check_at_least_one(self, "block_count")
        if self.lengths is not None:
            positive_ints(self.lengths, "--lengths")


@dataclass(frozen=True)
class ElasticOptions:
    """`ssa eval elastic`."""

    corpus: str | None = field(
        default=None, metadata=cli("documents for the task mix (default: as the router trained)")
    )
    seq_len: int | None = field(
        default=None, metadata=cli("tokens per example (default: as the router trained)", type=int)
    )
    examples_per_task: int | None = field(
        default=None, metadata=cli("held-out examples per task (default: as the router trained)", type=int)
    )
    batch_size: int = field(default=8, metadata=cli("examples per forward (default %(default)s)", type=int))

    def check(self) -> None:
        check_at_least_one(self, "seq_len", "examples_per_task", "batch_size")
