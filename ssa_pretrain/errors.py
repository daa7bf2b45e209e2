"""Errors a user can fix (a config key, a shard, a checkpoint, a sweep grid) and how commands report them.

Each module raises its own subclass of `UserError`; every command entry point is wrapped in
`exits_on_user_error`, so bad input ends with the message (which names the thing and the fix) and exit
code 2 instead of a traceback. Bugs and failed runs keep their tracebacks.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

Args = TypeVar("Args")

USER_ERROR_EXIT = 2


class UserError(Exception):
    """Bad input: the message says what is wrong and how to fix it."""


def exits_on_user_error(command: Callable[[Args], int]) -> Callable[[Args], int]:
    """Wrap a command: a `UserError` is printed as `error: ...` and the command returns 2."""

    @functools.wraps(command)
    def run(args: Args) -> int:
        try:
            return command(args)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            return USER_ERROR_EXIT

    return run
