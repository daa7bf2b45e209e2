"""The one exception the data pipeline raises for bad inputs: a file, what is wrong with it, and the fix."""

from pathlib import Path

from ssa_pretrain.errors import UserError


class DataError(UserError, ValueError):
    """A corpus, tokenizer, shard or manifest is missing, corrupt or does not match what the run expects.

    The message names the offending file and says how to fix it (usually: rebuild with `ssa data ...`).
    """


def missing_data_hint(path: str | Path) -> str:
    """How to build a missing tokenizer or shard directory at `path`: the default dataset (the configs'
    `data.dir`) comes from `ssa data prepare`, any other from `ssa data tokenizer` and `ssa data shards`."""
    from ssa_pretrain.data.prepare import DEFAULT_BUILD_DIR  # here: prepare imports this module

    if Path(path).resolve().is_relative_to(DEFAULT_BUILD_DIR):
        return "build the default dataset (the bundled corpus) with `ssa data prepare`"
    return "train a tokenizer with `ssa data tokenizer`, then write shards with `ssa data shards`"
