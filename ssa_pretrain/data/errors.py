"""The one exception the data pipeline raises for bad inputs: a file, what is wrong with it, and the fix."""

from ssa_pretrain.errors import UserError


class DataError(UserError, ValueError):
    """A corpus, tokenizer, shard or manifest is missing, corrupt or does not match what the run expects.

    The message names the offending file and says how to fix it (usually: rebuild with `ssa data ...`).
    """
