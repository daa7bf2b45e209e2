"""Collectives of the context-parallel group, with their autograd written out.

`torch.distributed.nn.functional.all_gather` returns wrong input gradients on gloo when the incoming gradient
is non-contiguous (checked with torch 2.13 CPU). Every collective here therefore works on explicit contiguous
buffers in both directions, and its gradient is tested (`tests/distributed/`).

* `group_rank_size(group)`: this rank's index and the group size (`0, 1` without torch.distributed).
* `all_gather_nograd(x, group)`: the ranks' tensors, stacked; no gradient (block-key means, counts).
* `all_gather(x, dim, group)`: differentiable all-gather; backward is the adjoint (sum over ranks, own slice).
* `Ring`: point-to-point shifts along the group (rank `r` sends to `r + 1`, receives from `r - 1`), used by
  the ring attention in `context.py`.
* `GroupComm` / `SimulatedComm`: what `context.py` communicates through (shifts, all-gathers and a
  reduce-scatter, no gradient): the real group, or one process playing one rank of a group with every
  transfer replaced by a local copy of the same bytes (`tools/bench_cp.py --simulate`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.distributed as dist


def group_rank_size(group: dist.ProcessGroup | None) -> tuple[int, int]:
    """`(rank in group, group size)`; `(0, 1)` when torch.distributed is not initialised.

    `group=None` means the default (world) group, as in `torch.distributed`.
    """
    if not dist.is_available() or not dist.is_initialized():
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def all_gather_nograd(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Every rank's `x`, stacked in group-rank order, without gradient.

    Args:
        x: `[...]`, the same shape and dtype on every rank.

    Returns:
        `[P, ...]`, `P` = group size (a view of `x` with a new leading dim when `P == 1`).
    """
    _, size = group_rank_size(group)
    if size == 1:
        return x.detach()[None]
    out = torch.empty(size * x.numel(), dtype=x.dtype, device=x.device)  # contiguous receive buffer
    dist.all_gather_into_tensor(out, x.detach().contiguous().view(-1), group=group)
    return out.view(size, *x.shape)


class _AllGather(torch.autograd.Function):
    """All-gather along `dim`; backward: all-reduce (sum) of the incoming gradient, then this rank's slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int, group: dist.ProcessGroup | None) -> torch.Tensor:  # type: ignore[override]
        """x `[..., N, ...]` (N at `dim`) -> `[..., P * N, ...]`, rank `p`'s part at `p * N … (p + 1) * N`."""
        ctx.dim, ctx.group = dim, group
        ctx.rank, _ = group_rank_size(group)
        parts = all_gather_nograd(x, group)  # [P, ...]
        return torch.cat(parts.unbind(0), dim=dim)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        """grad `[..., P * N, ...]` (any strides) -> `[..., N, ...]`: sum over ranks of their grad slices."""
        total = grad.contiguous().clone()  # explicit contiguous buffer: the fix for the gloo bug
        _, size = group_rank_size(ctx.group)
        if size > 1:
            dist.all_reduce(total, op=dist.ReduceOp.SUM, group=ctx.group)
        return total.chunk(size, dim=ctx.dim)[ctx.rank].contiguous(), None, None


def all_gather(x: torch.Tensor, dim: int, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Differentiable all-gather: the ranks' `x` concatenated along `dim` in group-rank order.

    The backward is the adjoint of the gather: rank `p` receives the sum over all ranks of the gradient slice
    that belongs to its part (as `torch.distributed.nn.functional.all_gather`, but correct for
    non-contiguous gradients). A loss computed identically on every rank from the gathered tensor therefore
    gets `P` times the single-process gradient; divide by `P`, or compute the loss on one share only.

    Args:
        x: `[..., N, ...]` with `N` at `dim`, the same shape on every rank.

    Returns:
        `[..., P * N, ...]`.
    """
    _, size = group_rank_size(group)
    if size == 1:
        return x
    return _AllGather.apply(x, dim % x.ndim, group)


class Ring:
    """Point-to-point shifts around a process group: send to rank `r + 1`, receive from rank `r - 1`.

    A shift is started with `shift(send)`, which returns the receive buffer and a handle; `wait(handle)`
    completes it. Start the next shift before computing on the current data to overlap the two. Every rank
    must issue the same sequence of shifts (they are matched in order; `tag` separates streams on gloo).
    """

    def __init__(self, group: dist.ProcessGroup | None):
        self.group = group
        self.rank, self.size = group_rank_size(group)
        self.next = self.prev = self.rank
        if self.size > 1:
            world = group if group is not None else dist.group.WORLD
            self.next = dist.get_global_rank(world, (self.rank + 1) % self.size)  # P2P takes global ranks
            self.prev = dist.get_global_rank(world, (self.rank - 1) % self.size)

    def source(self, step: int) -> int:
        """The group rank whose data this rank holds after `step` shifts."""
        return (self.rank - step) % self.size

    def shift(self, send: torch.Tensor, tag: int = 0) -> tuple[torch.Tensor, list]:
        """Start sending `send` to the next rank and receiving the previous rank's into a new buffer.

        Args:
            send: `[...]`, the same shape and dtype on every rank; made contiguous.

        Returns:
            recv: `[...]` buffer (valid after `wait`), and the handle for `wait`.
        """
        send = send.contiguous()
        recv = torch.empty_like(send)
        ops = [
            dist.P2POp(dist.isend, send, self.next, self.group, tag),
            dist.P2POp(dist.irecv, recv, self.prev, self.group, tag),
        ]
        return recv, [*dist.batch_isend_irecv(ops), send]  # keep `send` alive until the wait

    @staticmethod
    def wait(handle: list) -> None:
        """Complete a `shift`."""
        for work in handle[:-1]:
            work.wait()


class Comm(Protocol):
    """What context-parallel attention communicates through (`GroupComm`, `SimulatedComm`)."""

    rank: int
    size: int

    def shift(self, send: torch.Tensor, kind: str, step: int) -> tuple[torch.Tensor, list]: ...
    def wait(self, handle: list) -> None: ...
    def all_gather(self, x: torch.Tensor, kind: str) -> torch.Tensor: ...
    def reduce_scatter(self, x: torch.Tensor) -> torch.Tensor: ...


def as_comm(group: dist.ProcessGroup | Comm | None) -> Comm:
    """A `Comm` for a process group (None: the default group); a `Comm` is returned as it is."""
    return group if isinstance(group, (GroupComm, SimulatedComm)) else GroupComm(group)


class GroupComm:
    """The communication of context-parallel attention over a real process group (no gradient).

    `kind` names what travels (`"kv"`, `"dkv"`, `"means"`): it separates the shift streams on gloo and lets
    `SimulatedComm` stand in for this class.
    """

    def __init__(self, group: dist.ProcessGroup | None):
        self.group = group
        self.ring = Ring(group)
        self.rank, self.size = self.ring.rank, self.ring.size

    def shift(self, send: torch.Tensor, kind: str, step: int) -> tuple[torch.Tensor, list]:
        """`Ring.shift`: start sending `send` to rank `r + 1`, receiving rank `r − 1`'s (valid after `wait`);
        `step`: the shifts of this stream made before in this pass (used by `SimulatedComm`)."""
        return self.ring.shift(send, tag=0 if kind == "kv" else 1)

    def wait(self, handle: list) -> None:
        self.ring.wait(handle)

    def all_gather(self, x: torch.Tensor, kind: str) -> torch.Tensor:
        """Every rank's `x`, stacked: `[P, ...]`."""
        return all_gather_nograd(x, self.group)

    def reduce_scatter(self, x: torch.Tensor) -> torch.Tensor:
        """x `[P, ...]` on every rank -> `[...]`: the sum over ranks of their slot `rank`."""
        out = torch.empty(x.shape[1:], dtype=x.dtype, device=x.device)
        dist.reduce_scatter_tensor(out.view(-1), x.detach().contiguous().view(-1), group=self.group)
        return out


@dataclass
class SimulatedComm:
    """One process playing rank `rank` of `size`: every transfer is a local copy of the bytes it would move.

    What a rank would receive is what its peers send: `peer(kind, p, x)` gives rank `p`'s counterpart of
    this rank's `x` (e.g. its key/value share), so shifts and gathers return the real values and the
    simulated rank does exactly its real work (including which ring steps the sparse branch skips). Without
    `peer`, the rank's own `x` stands in for every peer's. `moved` records `(kind, bytes)` per transfer.
    """

    rank: int
    size: int
    peer: Callable[[str, int, torch.Tensor], torch.Tensor] | None = None
    moved: list[tuple[str, int]] = field(default_factory=list)

    def _of(self, kind: str, p: int, x: torch.Tensor) -> torch.Tensor:
        return x if self.peer is None or p == self.rank else self.peer(kind, p, x)

    def shift(self, send: torch.Tensor, kind: str, step: int) -> tuple[torch.Tensor, list]:
        """A copy of what rank `r − 1` sends at shift `step` of the `kind` stream: the data it holds then,
        which started at rank `r − 1 − step`."""
        self.moved.append((kind, send.numel() * send.element_size()))
        return self._of(kind, (self.rank - 1 - step) % self.size, send).clone(), []

    def wait(self, handle: list) -> None:
        pass

    def all_gather(self, x: torch.Tensor, kind: str) -> torch.Tensor:
        self.moved.append((kind, (self.size - 1) * x.numel() * x.element_size()))
        return torch.stack([self._of(kind, p, x) for p in range(self.size)])

    def reduce_scatter(self, x: torch.Tensor) -> torch.Tensor:
        """A sum of `P` slots, as a real reduce-scatter adds (of this rank's slots, not the peers')."""
        self.moved.append(("dkv", (self.size - 1) * x[0].numel() * x.element_size()))
        return x.sum(0)
