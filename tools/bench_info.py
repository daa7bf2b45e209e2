"""Provenance fields that every tools/bench_*.py line starts with: device, date, git commit."""

from __future__ import annotations

import datetime
import os
import subprocess

import torch


def git_commit() -> str:
    """`GIT_COMMIT` when set (for a copy of the tree without .git), else the short commit of the
    working tree with `+dirty` when it has changes; `unknown` outside git."""
    if os.environ.get("GIT_COMMIT"):
        return os.environ["GIT_COMMIT"]
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def run_info(config: str) -> dict[str, str]:
    """The fields every training benchmark line starts with: device, date, git commit, config."""
    return {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "date": datetime.date.today().isoformat(),
        "git": git_commit(),
        "config": config,
    }
