"""The Triton kernels run on CPU under Triton's interpreter (CI has no GPU), forward and backward.

The cases live in `interpreter_cases.py` and run in one child process with `TRITON_INTERPRET=1` (it must be
set before triton is imported; this process imported it already, without). About 30 s on 2 cores.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kernels.interpreter_cases import cases

if importlib.util.find_spec("triton") is None:
    pytest.skip(
        "triton is not installed: the Triton kernels cannot run (pip install triton)", allow_module_level=True
    )

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def results() -> dict[str, str | None]:
    """Run every case once in a child process under the interpreter; case name -> traceback or None."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    child = subprocess.run(
        [sys.executable, "-m", "tests.kernels.interpreter_cases"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert child.returncode == 0, f"interpreter run failed:\n{child.stdout}\n{child.stderr}"
    return json.loads(child.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", list(cases()))
def test_kernel_under_interpreter(case: str, results: dict[str, str | None]) -> None:
    assert case in results, f"{case} did not run"
    assert results[case] is None, results[case]
