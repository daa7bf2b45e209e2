"""A real Slurm (`.ci/slurm.sh start`), a tiny dataset and the environment the jobs run with.

Every test here is marked `slurm` and skipped, with the reason, where no Slurm with an idle node answers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slurm: needs a running Slurm with an idle node (.ci/slurm.sh start)")


def slurm_unavailable() -> str | None:
    """Why the Slurm tests cannot run here, or None."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "Slurm is not installed (no sinfo/sbatch); start one with: .ci/slurm.sh start"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"sinfo failed ({err}); start Slurm with: .ci/slurm.sh start"
    if out.returncode != 0:
        return f"sinfo failed: {out.stderr.strip()[:200]}; start Slurm with: .ci/slurm.sh start"
    if not {"idle", "mix"} & set(out.stdout.split()):
        return f"Slurm has no idle node (sinfo states: {out.stdout.split() or 'none'})"
    return None


@pytest.fixture(scope="session")
def slurm_data(tmp_path_factory) -> Path:
    """Tokenizer (vocabulary 512) + 64-token shards from the bundled corpus, once per session."""
    from ssa_pretrain.data.prepare import prepare_default

    out = tmp_path_factory.mktemp("slurm-data")
    prepare_default(out, vocab_size=512, seq_len=64, progress=False)
    return out


@pytest.fixture(scope="session")
def job_env() -> dict[str, str]:
    """What sbatch exports to the jobs (--export=ALL): this Python first on PATH, CPU mode, quiet wandb."""
    env = dict(os.environ)
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        SSA_PYTHON=sys.executable,
        SSA_DEVICE="cpu",
        DS_ACCELERATOR="cpu",
        WANDB_MODE="disabled",
        OMP_NUM_THREADS="1",
        # a torchrun environment left in the submitting shell: srun's ranks must win over it
        RANK="0",
        WORLD_SIZE="1",
        LOCAL_RANK="0",
    )
    return env
