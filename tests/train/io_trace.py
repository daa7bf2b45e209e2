"""`python tests/train/io_trace.py ARGS` = `python -m ssa_pretrain.train ARGS`, recording in order every fsync
(the real path of its file descriptor) and every rename as JSON lines in `$SSA_IO_TRACE`: the order that
decides what a power loss can leave behind."""

from __future__ import annotations

import json
import os
import runpy
import sys

trace = open(os.environ["SSA_IO_TRACE"], "a")  # noqa: SIM115 (open for the life of the process)


def record(kind: str, *paths: str) -> None:
    trace.write(json.dumps([kind, *(os.path.realpath(p) for p in paths)]) + "\n")
    trace.flush()


def fsync(fd: int, _fsync=os.fsync) -> None:
    _fsync(fd)
    record("fsync", os.readlink(f"/proc/self/fd/{fd}"))


def audit(event: str, args: tuple) -> None:
    if event == "os.rename":  # os.rename and os.replace
        record("rename", os.fsdecode(args[0]), os.fsdecode(args[1]))


os.fsync = fsync
sys.addaudithook(audit)
sys.argv = ["ssa_pretrain.train", *sys.argv[1:]]
runpy.run_module("ssa_pretrain.train", run_name="__main__", alter_sys=True)
