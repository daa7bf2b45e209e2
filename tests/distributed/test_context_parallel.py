"""Context parallelism on real process groups (gloo, CPU, 2 and 4 ranks) against the single-process ops.

Each world size is launched once (`torch.multiprocessing`, spawn) and runs every check of `cp_cases.py` on
every rank; each check is then reported as its own test. A rank that aborts at interpreter exit *after*
writing complete results and passing the final barrier is tolerated with a warning (it happens rarely with
gloo at teardown); a rank that raises, hangs or dies earlier fails every test of its world.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from ssa_pretrain.parallel import check_cp_seq_len, global_positions, split_sequence, unsplit_sequence
from tests.distributed import cp_cases

WORLD_SIZES = (2, 4)
LAUNCH_TIMEOUT_S = 240
_runs: dict[int, dict] = {}


def _read_results(out_dir: Path, world: int) -> dict[int, dict] | None:
    """Every rank's results, or None when a rank did not write complete ones."""
    files = [out_dir / f"rank{rank}.json" for rank in range(world)]
    if not all(f.exists() for f in files):
        return None
    data = {rank: json.loads(f.read_text()) for rank, f in enumerate(files)}
    return data if all(d.get("done") for d in data.values()) else None


def _launch(world: int, tmp_dir: Path, checks: list[str] | None = None, abort: str = "") -> dict[int, dict]:
    """Run `cp_cases.worker` on `world` ranks; returns `{rank: {"results": {check: "ok" | traceback}}}`."""
    out_dir = tmp_dir / f"world{world}"
    out_dir.mkdir(parents=True)
    context = mp.start_processes(
        cp_cases.worker,
        args=(world, str(tmp_dir / f"store{world}"), str(out_dir), checks, abort),
        nprocs=world,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    try:
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                for process in context.processes:
                    if process.is_alive():
                        process.terminate()
                raise AssertionError(f"world {world}: ranks did not finish in {LAUNCH_TIMEOUT_S} s (a hang?)")
    except mp.ProcessExitedException as error:  # died by a signal / exit code, not by a Python exception
        results = _read_results(out_dir, world)
        if results is None:
            raise
        warnings.warn(
            f"world {world}: rank {error.error_index} exited abnormally after finishing and passing the "
            f"final barrier ({error}); its results are complete and kept",
            stacklevel=2,
        )
        return results
    results = _read_results(out_dir, world)
    assert results is not None, f"world {world}: every rank exited cleanly but results are missing"
    return results


@pytest.fixture(scope="module")
def cp_runs(tmp_path_factory) -> dict[int, dict]:
    """Launch each world size once for the module (lazily, so `-k` on one world launches only that one)."""
    return _runs


def _results(cp_runs: dict[int, dict], world: int, tmp_path_factory) -> dict[int, dict]:
    if world not in cp_runs:
        cp_runs[world] = _launch(world, tmp_path_factory.mktemp(f"cp{world}"))
    return cp_runs[world]


@pytest.mark.distributed
@pytest.mark.timeout(LAUNCH_TIMEOUT_S + 60)
@pytest.mark.parametrize("check", list(cp_cases.CHECKS))
@pytest.mark.parametrize("world", WORLD_SIZES, ids=[f"cp{w}" for w in WORLD_SIZES])
def test_context_parallel(cp_runs, tmp_path_factory, world: int, check: str):
    """One check of `cp_cases.py` (see its docstring) on every rank of a `world`-rank gloo group."""
    results = _results(cp_runs, world, tmp_path_factory)
    failures = {
        rank: data["results"].get(check, "not run")
        for rank, data in results.items()
        if data["results"].get(check) != "ok"
    }
    assert not failures, "\n".join(f"rank {rank}:\n{message}" for rank, message in failures.items())


@pytest.mark.distributed
def test_launcher_tolerates_abort_after_finishing_only(tmp_path):
    """A rank aborting after results + final barrier: kept with a warning; aborting before: a failure."""
    with pytest.warns(UserWarning, match="exited abnormally after finishing"):
        results = _launch(2, tmp_path / "after", ["bad_length"], abort="after")
    assert all(data["results"] == {"bad_length": "ok"} for data in results.values())
    with pytest.raises(mp.ProcessExitedException):
        _launch(2, tmp_path / "before", ["bad_length"], abort="before")


# Single-process checks of the layout (no group needed).


@pytest.mark.parametrize("cp", [1, 2, 3, 4])
def test_split_unsplit_roundtrip(cp: int):
    x = torch.arange(2 * cp * 6 * 2).view(2, 2 * cp * 6)  # tokens [B, T]
    shares = [split_sequence(x, rank, cp, dim=1) for rank in range(cp)]
    assert all(s.shape == (2, 12) for s in shares)
    assert torch.equal(unsplit_sequence(shares, dim=1), x)
    for rank, share in enumerate(shares):
        assert torch.equal(share[0], global_positions(x.shape[1], rank, cp))  # row 0 holds the positions


def test_layout_is_megatrons():
    """Rank 1 of 2 holds chunks 1 and 2 of 4 (Megatron's `get_pos_emb_on_this_cp_rank`), sequence dim 0."""
    x = torch.arange(16)
    assert split_sequence(x, 1, 2, dim=0).tolist() == [4, 5, 6, 7, 8, 9, 10, 11]
    assert split_sequence(x, 0, 2, dim=0).tolist() == [0, 1, 2, 3, 12, 13, 14, 15]


def test_bad_length_message():
    with pytest.raises(ValueError, match=r"2 \* 2 \* 16 = 64; got 100 .*64 and 128"):
        check_cp_seq_len(100, 2, 16)
    with pytest.raises(ValueError, match="multiple of 2 \\* cp \\* block_size"):
        split_sequence(torch.zeros(1, 10), 0, 4, dim=1)


def test_group_of_one_is_the_plain_ops():
    """Without context parallelism (no group / a group of one) the entries are the `ssa_kernels` ops, for any
    sequence length (here 37, not a multiple of anything)."""
    import ssa_kernels

    from ssa_pretrain.parallel import context_parallel_ssa_attention

    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 37, 4, 8, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(2, 37, 2, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    (o_full, lse_full), (o_sparse, lse_sparse) = context_parallel_ssa_attention(q, k, v, 4, 3, group=None)
    ref_full = ssa_kernels.full_attention(q, k, v)
    ref_sparse = ssa_kernels.sparse_attention(q, k, v, ssa_kernels.select_blocks(q, k, 4, 3), 4)
    for got, ref in zip((o_full, lse_full, o_sparse, lse_sparse), (*ref_full, *ref_sparse), strict=True):
        assert torch.equal(got, ref)


def test_cp_comm_option_reaches_megatron():
    """`parallel.cp_comm` becomes Megatron's `cp_comm_type`, which Megatron hands to `SSACoreAttention`;
    names SSA has no path for are refused with the choices."""
    from ssa_pretrain.model.gpt import transformer_config
    from ssa_pretrain.parallelize import cp_comm_from_megatron
    from tests.helpers import tiny_config

    for ours, megatron in (("ring", "p2p"), ("allgather", "all_gather")):
        config = transformer_config(tiny_config("parallel.cp=2", f"parallel.cp_comm={ours}"), torch.float32)
        assert config.cp_comm_type == megatron
        assert cp_comm_from_megatron(megatron) == ours
    assert cp_comm_from_megatron(None) == "ring"
    with pytest.raises(ValueError, match=r"a2a.*parallel\.cp_comm"):
        cp_comm_from_megatron("a2a")
