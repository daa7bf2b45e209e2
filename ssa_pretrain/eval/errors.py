"""The one exception `ssa eval` raises for bad input."""

from ssa_pretrain.errors import UserError


class EvalError(UserError, ValueError):
    """Bad input to `ssa eval`: a missing model or data, an output directory in the way, a bad option."""
