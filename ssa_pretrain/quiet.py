"""Known-harmless console noise of third-party packages, silenced in one place; our own messages stay.

Every entry point (`ssa ...`, `python -m ssa_pretrain.train`) calls `install()` before anything heavy is
imported. It

* hides the warnings in `HARMLESS_WARNINGS`: each entry names the message *and* the package that issues
  it, so any other warning of that package, and every warning of ours, still shows;
* sets up logging: our loggers (`ssa_pretrain.*`) at INFO, everyone else's at WARNING (Megatron announces
  its import-time choices at INFO), and the loggers in `QUIET_LOGGERS` at ERROR.

`deepspeed_prints()` swallows what DeepSpeed `print`s while it builds an engine (its bf16 optimizer reports
the memory in use five times, on stdout, unconditionally).

`WANDB_SETTINGS` turns off wandb's start banner and end-of-run summary (the same numbers are on the
console and in `metrics.jsonl`), and `announce_deepspeed_op_build` says, before a first CPU run goes
quiet for minutes, that DeepSpeed is compiling its CPU communication op.

`SSA_VERBOSE=1` in the environment turns all of this off, to see every line the packages print.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Iterator

log = logging.getLogger(__name__)

HARMLESS_WARNINGS: tuple[tuple[str, str], ...] = (
    # (message regex, matched at its start; module regex of the code that warns)
    # Megatron falls back to plain PyTorch without these; we use our own norms and torch's AdamW anyway.
    (r"(Transformer Engine|Apex)\b.* not installed", r"megatron\."),
    # Megatron's TransformerConfig warns about its own default `cuda_graph_scope="full"`.
    (r"full scope is deprecated", r"megatron\."),
)

QUIET_LOGGERS = (
    # A CUDA build of torch on a machine without a GPU: "No CUDA runtime is found, using CUDA_HOME=...".
    "torch.utils.cpp_extension",
)

WANDB_SETTINGS = {"silent": True}
"""`wandb.Settings` keywords: no start banner, no run history / summary at the end (the metrics logger prints
one line saying where the run's wandb data is instead)."""

DEEPSPEED_CPU_OP = "deepspeed_shm_comm"
"""The op DeepSpeed's CPU accelerator JIT-compiles when it starts (its `ShareMemCommBuilder.NAME`)."""


def verbose() -> bool:
    """True when `SSA_VERBOSE` asks for every third-party line."""
    return os.environ.get("SSA_VERBOSE", "") not in ("", "0")


def install() -> None:
    """Filter the known-harmless warnings and configure logging (see the module docstring). Idempotent."""
    logging.basicConfig(level=logging.INFO if verbose() else logging.WARNING, format="%(message)s")
    logging.getLogger("ssa_pretrain").setLevel(logging.INFO)
    if verbose():
        return
    for message, module in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=UserWarning, module=module)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def deepspeed_prints() -> Iterator[None]:
    """Inside: stdout goes nowhere (DeepSpeed's start-up `print`s, e.g. `see_memory_usage(force=True)`);
    its logger and every exception still show."""
    if verbose():
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def announce_deepspeed_op_build() -> None:
    """On CPU, DeepSpeed compiles a shared-memory op with g++ the first time it starts (1-3 minutes, then
    cached in torch's extension directory): log that before the silence. Nothing on GPU or when cached, and
    only on each node's first local rank."""
    import torch
    from torch.utils.cpp_extension import _get_build_directory

    local_rank = os.environ.get("LOCAL_RANK") or os.environ.get("SLURM_LOCALID") or "0"
    if torch.cuda.is_available() or local_rank != "0":
        return
    build_dir = _get_build_directory(DEEPSPEED_CPU_OP, verbose=False)
    if not os.path.isfile(os.path.join(build_dir, f"{DEEPSPEED_CPU_OP}.so")):
        log.info(
            "DeepSpeed is compiling its CPU communication op with g++ (first run only, 1-3 minutes; "
            "cached in %s)",
            build_dir,
        )
