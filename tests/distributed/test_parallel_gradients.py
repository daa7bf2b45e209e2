"""Every parameter gradient of the SSA model under TP / CP / DP layouts equals the single-process gradient.

Each layout runs `grad_worker.py` under torchrun (gloo): one forward + backward of the tiny model on the same
4 sequences, gradients averaged over data x context parallel and the TP shards reassembled; compared with one
process on the whole batch. `ssa` training in the given mode: both branches and the alignment loss run.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tests.distributed.grad_worker import LAYOUTS
from tests.helpers import REPO, free_port


def gradients(tmp_path, nproc: int, mode: str, *layout: str) -> dict:
    out = tmp_path / f"grads-{nproc}-{mode}-{'-'.join(layout) or 'one'}.pt"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                "--master-port", str(free_port())] if nproc > 1 else [sys.executable]  # fmt: skip
    proc = subprocess.run(
        [*launcher, "-m", "tests.distributed.grad_worker", "--mode", mode, "--out", str(out), *layout],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(out, weights_only=True)


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    cache: dict[str, dict] = {}

    def run(mode: str) -> dict:
        if mode not in cache:
            cache[mode] = gradients(tmp_path_factory.mktemp("one"), 1, mode)
        return cache[mode]

    return run


@pytest.mark.distributed
@pytest.mark.parametrize(
    ("nproc", "layout", "mode"),
    [pytest.param(*case, id=name) for name, case in LAYOUTS.items() if case[0] <= 4],
)
def test_every_gradient_matches_one_process(single_process, tmp_path, nproc, layout, mode):
    one, many = single_process(mode), gradients(tmp_path, nproc, mode, *layout)
    torch.testing.assert_close(many["loss"], one["loss"], rtol=1e-5, atol=0)
    torch.testing.assert_close(many["align"], one["align"], rtol=1e-4, atol=1e-9)
    assert many["grads"].keys() == one["grads"].keys()
    for name, grad in one["grads"].items():
        assert torch.count_nonzero(grad) > 0, name  # every parameter takes part
        torch.testing.assert_close(many["grads"][name], grad, rtol=1e-4, atol=1e-7, msg=name)
