"""Cost model of SSA training under context / tensor / data parallelism: the tables of docs/SCALING.md.

Predicts the optimizer-step time of `tools/bench_scaling.py`'s runs (2 sequences per step, micro-batch 1)
from the 1-GPU measurements in docs/perf (H100: `bench_attention.jsonl` kernel times at 8K-128K,
`bench_train.jsonl` 1B training steps at 8K) and the hardware assumptions of `HARDWARE`, term by term:

* dense (embedding, projections, MLP, norms, logits + CE, optimizer): per token, the measured `full` step at
  8K minus its 16 full-attention kernels; SSA extra (alignment loss, counterpart bookkeeping): the `ssa` step
  minus the `full` step minus the sparse kernels; selective recompute extra: likewise. TP divides these by
  `tp` (GEMMs split; replicated element-wise work is not charged: optimistic);
* full attention: the rank's causal-equivalent pairs, forward + backward at the measured kernel rate: CP = 1
  the kernel on `T`; CP = P `P` x fwd+bwd of a `T/P` attention, both `--cp-comm` ways (`parallel.cp_comm`):
  the ring runs them in `P` steps of `T/P x T/P` pairs (the load-balanced layout makes every step the same
  size), the all-gather as one causal own-chunk piece + one unmasked piece of every earlier key per local
  chunk. The backward recomputes no forward: every piece differentiates from the merged output and
  log-sum-exp (`parallel/context.py`);
* selection: the Triton kernels as measured (`block_scores_kernel`: every query row against the blocks before
  it; `top_blocks_kernel`: the segment top-k per row). CP = 1 `select_blocks` on the sequence; CP = P
  `select_blocks_from_means` on each load-balanced half of this rank's rows (`q_start` = the half's global
  position) against the all-gathered block means: chunks `r` and `2P-1-r` hold 1/P of the causal row x
  block pairs and 1/P of the rows, so `select(T) / P` at the measured rate;
* sparse attention: per query row as measured on one GPU (forward + backward). All-gather: each local chunk
  runs the kernel once over its own rows with global block ids, `T/P` rows; ring: every step runs it on all
  its rows (the kernel's grid is per row), `2C` rows at step 0 and `3C` (padded, `_past_sparse`) after — an
  upper bound, since rows without a selected block in the visiting chunk only do masked loads;
* communication, with its overlap: ring shifts of K/V (forward) and K/V + fp32 dK/dV (backward, `P - 1`
  each) hidden behind each step's compute when shorter, the last dK/dV shift exposed; all-gather: one
  gather of the other ranks' K/V (bf16) and one reduce-scatter of their fp32 dK/dV per layer, exposed;
  the all-gather of fp32 block means, TP all-reduces of `[T/P, hidden]` bf16 activations (5 per layer and
  micro-step + 2 for embedding / logits, all exposed: an upper bound) and the ZeRO reduce-scatter +
  all-gather of bf16 gradients / parameters over DP x CP once per step: exposed. Recompute repeats the
  forward's transfers;
* memory per GPU: bf16 parameters and gradients + fp32 master, Adam moments and gradient partition sharded by
  ZeRO over DP x CP, plus activations per token as measured at 8K (none, selective; without recompute the
  all-gather also keeps each layer's gathered K/V); full recompute: none.

The `layer` table sets the model's one-layer rank time beside `tools/bench_cp.py --simulate` lines
(`--simulated`, docs/perf/bench_cp.jsonl: one GPU plays each CP rank in turn) of the same shape, length, CP
size, `cp_comm` and GPU kind, so model and measurement can be read side by side.

Not modelled: merges and other element-wise work of the ring, kernel efficiency at small chunks beyond the
pair-rate scaling (e.g. the selection launched on `T / 2P` rows), H200-vs-H100 speed (taken equal: every
compute term is the H100 measurement; `--hardware` sets the memory per GPU). Every number printed is
computed here from the measured lines and these assumptions.

    python tools/scaling_model.py                                  # one node: transfers + step table
    python tools/scaling_model.py --multi-node                     # 64 GPUs over 8 nodes
    python tools/scaling_model.py --table layer                    # one layer: model vs simulated rank
    python tools/scaling_model.py --cp-comm ring                   # the ring instead of the all-gather
    python tools/scaling_model.py --measured runs/scaling-123/bench_scaling.jsonl
    python tools/scaling_model.py --hardware h100 --gpus 1 --layouts cp --recompute full --table steps
"""

from __future__ import annotations

import argparse
import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

from ssa_pretrain.config import Config, ParallelConfig, load_config

REPO = Path(__file__).resolve().parents[1]
PERF = REPO / "docs" / "perf"
GPUS_PER_NODE = 8
BF16, FP32 = 2, 4


@dataclass(frozen=True)
class Hardware:
    """Assumed machine (not measured here): bandwidths are effective ones, ~80 % of nominal."""

    name: str
    link_gbs: float
    """Point-to-point bandwidth per GPU and direction inside a node, GB/s."""
    link_latency_us: float
    """Latency of one transfer inside a node."""
    net_gbs: float
    """Bandwidth per GPU and direction between nodes, GB/s."""
    net_latency_us: float
    """Latency of one transfer between nodes."""
    memory_gib: float
    """Usable memory per GPU, as the GPU reports it (below the nominal size)."""


HARDWARE = {
    # NVLink4 through NVSwitch: 450 GB/s per direction nominal -> 360; 8 x 400 Gb/s InfiniBand per node, one
    # NIC per GPU: 50 GB/s nominal -> 40. The kinds differ in memory only (compute: the H100 calibration).
    "h200": Hardware("8 x H200 SXM (NVLink4), 8 x 400 Gb/s IB per node", 360, 10, 40, 20, 139),
    "h100": Hardware("8 x H100 SXM 80GB (NVLink4), 8 x 400 Gb/s IB per node", 360, 10, 40, 20, 78),
}


LAYOUTS = ("cp", "tp2-cp", "dp2-cp")
CP_COMM_FIELD = ParallelConfig.model_fields["cp_comm"]
CP_COMM: tuple[str, ...] = get_args(CP_COMM_FIELD.annotation)  # the config's choices: ring, allgather


def layout_sizes(layout: str, world: int) -> tuple[int, int, int]:
    """`(tp, cp, dp)` of a `tools/bench_scaling.py` layout on `world` GPUs: `cp` = CP world; `tp2-cp` =
    TP 2 x CP world/2; `dp2-cp` = DP 2 x CP world/2."""
    if layout == "cp":
        return 1, world, 1
    if layout not in LAYOUTS or world % 2:
        raise ValueError(
            f"layout {layout!r} on {world} GPUs: layouts are {LAYOUTS}, tp2/dp2 need even counts"
        )
    return (2, world // 2, 1) if layout == "tp2-cp" else (1, world // 2, 2)


@dataclass(frozen=True)
class Point:
    """One run: `layout` (a bench_scaling layout or a name), sizes, sequence length, sequences per step."""

    layout: str
    seq_len: int
    tp: int
    cp: int
    dp: int
    global_batch: int = 2

    @property
    def gpus(self) -> int:
        return self.tp * self.cp * self.dp


def _last_lines(path: Path, **match: object) -> list[dict]:
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in lines if all(r.get(k) == v for k, v in match.items())]


class Calibration:
    """The 1-GPU measurements (H100) the model scales from: kernel times per length, per-token step costs."""

    def __init__(self, perf: Path, cfg: Config):
        m, s = cfg.model, cfg.ssa
        shape = dict(heads=m.num_attention_heads, kv_heads=m.num_kv_heads, dim=m.kv_channels,
                     block_size=s.block_size, block_count=s.block_count)  # fmt: skip
        self.kernels = {r["seqlen"]: r for r in _last_lines(perf / "bench_attention.jsonl", **shape)}
        if not self.kernels:
            raise SystemExit(f"{perf}/bench_attention.jsonl has no line of the shape {shape}")
        train = _last_lines(perf / "bench_train.jsonl", seq_len=8192, block_size=s.block_size)
        step = {(r["variant"], r.get("recompute", "none")): r for r in train}
        t, layers = 8192, cfg.model.num_layers
        self.params = step["full", "none"]["params"]
        full_8k, ssa_8k = step["full", "none"]["step_ms"], step["ssa", "none"]["step_ms"]
        selective_8k = step["ssa", "selective"]["step_ms"]
        self.dense_ms = (full_8k - layers * self.kernel("full_fwd_bwd_ms", t)) / t
        self.ssa_ms = (ssa_8k - full_8k - layers * self.kernel("sparse_fwd_bwd_ms", t)) / t
        recomputed = sum(self.kernel(key, t) for key in ("full_fwd_ms", "sparse_fwd_ms", "select_ms"))
        self.selective_ms = (selective_8k - ssa_8k - layers * recomputed) / t
        # bf16 parameters + gradients, fp32 master + Adam moments + gradient partition (ZeRO over one rank)
        static_8k = self.params * (2 * BF16 + 4 * FP32) / 2**30
        self.activation_gib = {
            recompute: (step["ssa", recompute]["peak_mem_gib"] - static_8k) / t
            for recompute in ("none", "selective")
        }
        self.sources = sorted({r["device"] for r in [*self.kernels.values(), *train]})

    def kernel(self, key: str, n: float) -> float:
        """ms of kernel `key` for one sequence of `n` tokens, scaled from the nearest measured length:
        quadratically (full attention, selection: pairs) or linearly (`sparse_*`: per row; the sparse
        fwd+bwd line includes the selection, which is scaled quadratically)."""
        near = min(self.kernels, key=lambda m: abs(math.log(n / m)))
        line = self.kernels[near]
        per_seq = {k: line[k] / line["batch"] for k in ("select_ms", key)}
        ratio = n / near
        if key == "sparse_fwd_bwd_ms":
            return (per_seq[key] - per_seq["select_ms"]) * ratio + per_seq["select_ms"] * ratio**2
        return per_seq[key] * (ratio if key.startswith("sparse") else ratio**2)


class Model:
    """Per-rank time of one optimizer step of `Point` on `Hardware`, by term (milliseconds)."""

    def __init__(
        self, cfg: Config, calibration: Calibration, hardware: Hardware, recompute: str, cp_comm: str
    ):
        if cp_comm not in CP_COMM:
            raise ValueError(f"cp_comm must be one of {', '.join(CP_COMM)}; got {cp_comm!r}")
        self.cal, self.hw, self.recompute, self.cp_comm = calibration, hardware, recompute, cp_comm
        m = cfg.model
        self.layers, self.hidden, self.kv_heads = m.num_layers, m.hidden_size, m.num_kv_heads
        self.head_dim, self.block = m.kv_channels, cfg.ssa.block_size

    def with_cp_comm(self, cp_comm: str) -> Model:
        """This model with another `cp_comm` (the other terms unchanged)."""
        other = copy.copy(self)
        other.cp_comm = cp_comm
        return other

    def _bandwidth(self, ranks: int) -> tuple[float, float]:
        """(GB/s, latency µs) of a collective or ring over `ranks` consecutive GPUs."""
        if ranks <= GPUS_PER_NODE:
            return self.hw.link_gbs, self.hw.link_latency_us
        return self.hw.net_gbs, self.hw.net_latency_us

    def _comm_ms(self, nbytes: float, ranks: int, hops: int = 1) -> float:
        """ms to move `nbytes` per rank in `hops` sequential transfers among `ranks` GPUs."""
        gbs, latency = self._bandwidth(ranks)
        return nbytes / (gbs * 1e6) + hops * latency * 1e-3

    # ------------------------------------------------------------------------------ communication, bytes

    def share_values(self, p: Point) -> float:
        """K and V values of one rank's share of one layer (`2 x T/P x kv heads / tp x D`)."""
        return 2 * (p.seq_len / p.cp) * (self.kv_heads / p.tp) * self.head_dim

    def block_mean_bytes(self, p: Point) -> float:
        """Bytes of all block means gathered per layer (fp32 `[T / BS, kv heads / tp, D]`)."""
        return p.seq_len / self.block * (self.kv_heads / p.tp) * self.head_dim * FP32

    def tp_allreduce_bytes(self, p: Point) -> float:
        """Bytes of one TP all-reduce of the residual stream of this rank's tokens (bf16)."""
        return p.seq_len / p.cp * self.hidden * BF16

    def zero_bytes(self, p: Point) -> float:
        """Bytes per rank of the ZeRO gradient reduce-scatter + parameter all-gather (bf16) over DP x CP."""
        ranks = p.dp * p.cp
        return 2 * (ranks - 1) / ranks * self.cal.params / p.tp * BF16

    # ------------------------------------------------------------------------------------------- times

    def _sparse_row_ms(self, n: float) -> tuple[float, float]:
        """ms per query row of the sparse kernels without selection: forward, forward + backward."""
        k = self.cal.kernel
        return k("sparse_fwd_ms", n) / n, (k("sparse_fwd_bwd_ms", n) - k("select_ms", n)) / n

    def sparse_rows(self, p: Point) -> float:
        """Query rows one rank runs the sparse kernel on per layer (forward, and again backward): the
        all-gather runs each local chunk once (`T/P`); the ring runs every step's rows, `2C` at step 0 and
        `3C` (queries + the padding of `_past_sparse`) at each later one."""
        n = p.seq_len / p.cp
        return n if self.cp_comm == "allgather" else n + (p.cp - 1) * 1.5 * n

    def attention(self, p: Point) -> dict[str, float]:
        """ms of one layer's core attention on one rank and micro-step (no TP split), forward + backward
        (`full`, `selection`, `sparse`) and forward alone (`forward`: what recompute repeats). Full attention:
        the rank's `P` causal attentions of `T/P` worth of pairs (ring: `P` steps of `T/P x T/P`
        causal-equivalent pairs; all-gather: per local chunk one causal own-chunk piece + one unmasked
        piece of every earlier key), forward + backward, no forward recomputed; selection: `1/P` of the
        sequence's; sparse: `sparse_rows` at the per-row rate of a `T/P` sequence."""
        n, P, k = p.seq_len / p.cp, p.cp, self.cal.kernel
        row_fwd, row_fb = self._sparse_row_ms(n)
        rows, select = self.sparse_rows(p), k("select_ms", p.seq_len) / P
        return {
            "full": P * k("full_fwd_bwd_ms", n),
            "selection": select,
            "sparse": rows * row_fb,
            "forward": P * k("full_fwd_ms", n) + rows * row_fwd + select,
        }

    def transfers(self, p: Point) -> dict[str, float]:
        """`cp_comm`'s K/V transfers of one layer on one rank (CP > 1): bytes and ms of one forward and one
        backward transfer, how many of each, and the compute each hides behind (0: exposed).
        Ring: `P − 1` shifts of the K/V share forward and `P − 1` of K/V + fp32 dK/dV backward, each behind
        one ring step (`C x 2C` pairs, 1.5 `C` sparse rows on average); the last dK/dV shift, to the owner,
        is exposed (`last`). All-gather: one gather of the other `P − 1` shares and one reduce-scatter of
        their fp32 dK/dV, exposed (the kernels need the keys first; the gradient is final only after them)."""
        P, share, k = p.cp, self.share_values(p), self.cal.kernel
        if self.cp_comm == "allgather":
            fwd, bwd = (P - 1) * share * BF16, (P - 1) * share * FP32
            return {
                "fwd_bytes": fwd, "send_fwd": self._comm_ms(fwd, P, hops=P - 1), "compute_fwd": 0.0,
                "bwd_bytes": bwd, "send_bwd": self._comm_ms(bwd, P, hops=P - 1), "compute_bwd": 0.0,
                "count": 1, "last": 0.0,
            }  # fmt: skip
        n = p.seq_len / P
        row_fwd, row_fb = self._sparse_row_ms(n)
        full_fwd = k("full_fwd_ms", n)
        fwd, bwd = share * BF16, share * (BF16 + FP32)
        return {
            "fwd_bytes": fwd, "send_fwd": self._comm_ms(fwd, P),
            "compute_fwd": (full_fwd + 1.5 * n * row_fwd) / p.tp,
            "bwd_bytes": bwd, "send_bwd": self._comm_ms(bwd, P),
            "compute_bwd": (k("full_fwd_bwd_ms", n) - full_fwd + 1.5 * n * (row_fb - row_fwd)) / p.tp,
            "count": P - 1, "last": self._comm_ms(share * FP32, P),
        }  # fmt: skip

    def micro_step(self, p: Point) -> dict[str, float]:
        """ms of one micro-step (one sequence) on one rank, by term."""
        cal, layers, n, tp = self.cal, self.layers, p.seq_len / p.cp, p.tp
        attention = self.attention(p)
        terms = {
            "dense": cal.dense_ms * n / tp,
            "ssa_extra": cal.ssa_ms * n / tp,
            "full_attention": layers * attention["full"] / tp,
            "selection": layers * attention["selection"] / tp,
            "sparse_attention": layers * attention["sparse"] / tp,
            "recompute": 0.0,
        }
        if self.recompute != "none":  # the core attention's forward again, transfers and selection included
            terms["recompute"] = layers * attention["forward"] / tp + cal.selective_ms * n / tp
        if self.recompute == "full":  # not measured: the dense forward is ~1/3 of its fwd + bwd (FLOPs)
            terms["recompute"] += cal.dense_ms * n / tp / 3
        return {**terms, **self._exposed_comm(p)}

    def layer_exposed_ms(self, p: Point, passes: int = 1) -> dict[str, float]:
        """ms of one layer's CP transfers that no compute hides, `passes` forward passes (2: recomputed):
        K/V (`kv`, per `transfers`) and the block means' all-gather (`block_means`, which selection waits
        for)."""
        if p.cp == 1:
            return {"kv": 0.0, "block_means": 0.0}
        t, P = self.transfers(p), p.cp
        kv = (
            passes * t["count"] * max(0.0, t["send_fwd"] - t["compute_fwd"])
            + t["count"] * max(0.0, t["send_bwd"] - t["compute_bwd"])
            + t["last"]
        )
        means = passes * self._comm_ms((P - 1) / P * self.block_mean_bytes(p), P, hops=P - 1)
        return {"kv": kv, "block_means": means}

    def _exposed_comm(self, p: Point) -> dict[str, float]:
        """ms per micro-step of communication no compute hides: CP transfers, TP all-reduces."""
        passes = 1 if self.recompute == "none" else 2  # the forward's transfers (and selection) run again
        layer = self.layer_exposed_ms(p, passes)
        out = {"cp_kv": self.layers * layer["kv"], "block_means": self.layers * layer["block_means"]}
        out["tp_allreduce"] = 0.0
        if p.tp > 1:  # 2 forward + 3 backward per layer, embedding + logits; full recompute: 2 more per layer
            tp = p.tp
            one = self._comm_ms(2 * (tp - 1) / tp * self.tp_allreduce_bytes(p), tp, hops=2 * (tp - 1))
            out["tp_allreduce"] = (self.layers * (5 + (2 if self.recompute == "full" else 0)) + 2) * one
        return out

    def step(self, p: Point) -> dict[str, float]:
        """ms of one optimizer step on one rank by term (`global_batch / dp` micro-steps + the ZeRO
        collectives), with `total` and `tokens_per_s`."""
        accum = p.global_batch // p.dp
        terms = {name: ms * accum for name, ms in self.micro_step(p).items()}
        ranks = p.dp * p.cp
        terms["zero"] = self._comm_ms(self.zero_bytes(p), ranks, hops=2 * (ranks - 1)) if ranks > 1 else 0.0
        total = sum(terms.values())
        return {**terms, "total": total, "tokens_per_s": p.global_batch * p.seq_len / total * 1e3}

    def memory_gib(self, p: Point) -> float | None:
        """Estimated peak memory per GPU; None where not calibrated (full recompute)."""
        if self.recompute not in self.cal.activation_gib:
            return None
        ranks, params = p.dp * p.cp, self.cal.params / p.tp
        static = params * (2 * BF16 + 4 * FP32 / ranks) / 2**30
        activations = self.cal.activation_gib[self.recompute] * p.seq_len / p.cp / p.tp
        if self.cp_comm == "allgather" and self.recompute == "none":  # each layer keeps the gathered K/V
            activations += self.layers * (p.cp - 1) * self.share_values(p) * BF16 / 2**30
        return static + activations


# ------------------------------------------------------------------------------------------------- tables


def _measured(
    path: Path | None, config: str, recompute: str, cp_comm: str, hardware: str
) -> dict[tuple, dict]:
    """bench_scaling lines of this model, recompute setting, `cp_comm` and GPU kind, by (layout, GPUs,
    seq_len); the last line of a point wins. Lines without `cp_comm` predate the choice: the ring."""
    if path is None:
        return {}
    lines = [
        r
        for r in _last_lines(path, config=config, recompute=recompute)
        if r.get("cp_comm", "ring") == cp_comm
    ]
    return {(r["layout"], r["world_size"], r["seqlen"]): r for r in lines if hardware in r["device"].lower()}


def _pct(part: float, total: float) -> str:
    return f"{part / total:.0%}"


def overlap_table(model: Model, points: list[Point]) -> list[str]:
    """Per layer and micro-step: bytes on the wire of `cp_comm`'s transfers (the calibration lines name it)
    and the compute each hides behind (the all-gather's: none), with the ring's break-even chunk."""
    ring = model.with_cp_comm("ring")
    inside, across = break_even_tokens(ring, 2), break_even_tokens(ring, 2 * GPUS_PER_NODE)
    backward = "K/V + dK/dV per shift" if model.cp_comm == "ring" else "dK/dV reduce-scatter"
    out = [
        f"Ring overlap (step compute >= shift) from {inside[0]:,.0f} tokens per rank forward and "
        f"{inside[1]:,.0f} backward inside a node; {across[0]:,.0f} / {across[1]:,.0f} across nodes.",
        "",
        f"| GPUs | layout | T | tokens/rank | K/V {'per shift' if model.cp_comm == 'ring' else 'all-gather'} "
        f"| fwd transfer / compute behind it | {backward} | bwd transfer / compute behind it "
        "| block means (all-gather) | TP all-reduce, each | ZeRO per step |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def behind(ms: float) -> str:
        return f"{ms * 1e3:.0f} µs" if ms else "exposed"

    for p in points:
        kv = ["-"] * 5
        if p.cp > 1:
            t = model.transfers(p)
            kv = [
                f"{t['fwd_bytes'] / 2**20:.1f} MiB",
                f"{t['send_fwd'] * 1e3:.0f} µs / {behind(t['compute_fwd'])}",
                f"{t['bwd_bytes'] / 2**20:.1f} MiB",
                f"{t['send_bwd'] * 1e3:.0f} µs / {behind(t['compute_bwd'])}",
                f"{model.block_mean_bytes(p) / 2**20:.2f} MiB",
            ]
        tp = f"{model.tp_allreduce_bytes(p) / 2**20:.0f} MiB" if p.tp > 1 else "-"
        zero = f"{model.zero_bytes(p) / 2**30:.2f} GiB" if p.dp * p.cp > 1 else "-"
        cells = [str(p.gpus), p.layout, f"{p.seq_len // 1024}K", str(p.seq_len // p.cp), *kv, tp, zero]
        out.append("| " + " | ".join(cells) + " |")
    return out


def break_even_tokens(model: Model, cp: int) -> tuple[float, float]:
    """Fewest tokens per rank for which a ring step's compute covers its shift, forward and backward, in a
    ring of `cp` ranks (bisection on the step's length; compute grows ~quadratically, the shift linearly)."""

    def covered(n: float, direction: str) -> bool:
        step = model.transfers(Point("cp", round(n * cp), 1, cp, 1))
        return step[f"compute_{direction}"] >= step[f"send_{direction}"]

    found = []
    for direction in ("fwd", "bwd"):
        low, high = 1.0, float(1 << 20)
        for _ in range(60):
            mid = (low * high) ** 0.5
            low, high = (low, mid) if covered(mid, direction) else (mid, high)
        found.append(high)
    return found[0], found[1]


def _speedup(tokens_per_s: float, one_gpu: float, gpus: int) -> str:
    return f"{tokens_per_s / one_gpu:.2f}x ({tokens_per_s / one_gpu / gpus:.0%})"


def step_table(model: Model, points: list[Point], measured: dict[tuple, dict]) -> list[str]:
    """Predicted step time, throughput, speed-up over one GPU and where the time goes; measured beside."""
    out = [
        "| layout | GPUs | T | step | tokens/s | per GPU | speed-up (eff.) | full attn | selection | sparse "
        "| dense + SSA extra | recompute | exposed comm | memory/GPU | measured step | measured speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        s = model.step(p)
        total = s["total"]
        one = model.step(Point("cp", p.seq_len, 1, 1, 1, p.global_batch))
        memory = model.memory_gib(p)
        fits = "" if memory is None or memory <= model.hw.memory_gib else " (> GPU)"
        comm = s["cp_kv"] + s["block_means"] + s["tp_allreduce"] + s["zero"]
        got, base = measured.get((p.layout, p.gpus, p.seq_len)), measured.get(("cp", 1, p.seq_len))
        cells = [
            p.layout, str(p.gpus), f"{p.seq_len // 1024}K", f"{total / 1e3:.2f} s",
            f"{s['tokens_per_s']:,.0f}", f"{s['tokens_per_s'] / p.gpus:,.0f}",
            _speedup(s["tokens_per_s"], one["tokens_per_s"], p.gpus),
            _pct(s["full_attention"], total), _pct(s["selection"], total), _pct(s["sparse_attention"], total),
            _pct(s["dense"] + s["ssa_extra"], total), _pct(s["recompute"], total), _pct(comm, total),
            "-" if memory is None else f"{memory:.0f} GiB{fits}",
            f"{got['step_ms'] / 1e3:.2f} s" if got else "unmeasured",
            _speedup(got["tokens_per_s"], base["tokens_per_s"], p.gpus) if got and base else "-",
        ]  # fmt: skip
        out.append("| " + " | ".join(cells) + " |")
    return out


def simulated_lines(path: Path | None, cfg: Config, hardware: str) -> dict[tuple, dict]:
    """`tools/bench_cp.py --simulate` lines of this model's attention shape on this GPU kind, by (seqlen,
    cp, cp_comm); the last line of a point wins."""
    if path is None or not path.is_file():
        return {}
    m, s = cfg.model, cfg.ssa
    shape = dict(mode="simulate", heads=m.num_attention_heads, kv_heads=m.num_kv_heads,
                 head_dim=m.kv_channels, block_size=s.block_size, block_count=s.block_count)  # fmt: skip
    lines = _last_lines(path, **shape)
    return {(r["seqlen"], r["cp"], r["cp_comm"]): r for r in lines if hardware in r["device"].lower()}


def layer_table(model: Model, seq_lens: list[int], cps: list[int], simulated: dict[tuple, dict]) -> list[str]:
    """One layer's SSA attention (selection + both branches), forward + backward, no recompute, per
    `cp_comm`: the busiest rank's time as the model predicts it (its 1-GPU reference: the calibration
    kernels) beside the one-GPU rank simulation of `tools/bench_cp.py` (compute + exposed transfers;
    "-" where no line matches). The simulated `full` op also differentiates its log-sum-exp output, a
    slower backward than the training step's, so only its speed-up is set beside the model's."""
    out = [
        "| T | CP | cp_comm | SSA 1 GPU (model) | SSA rank (model) | SSA rank (simulated) "
        "| model / simulated | SSA speed-up (model) | SSA speed-up (simulated) | full speed-up (model) "
        "| full speed-up (simulated) | exposed (model) | exposed (simulated) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for seq_len in seq_lens:
        one = model.attention(Point("cp", seq_len, 1, 1, 1))
        ssa_one = one["full"] + one["selection"] + one["sparse"]
        for cp in (c for c in cps if c > 1):
            for comm in CP_COMM:
                p, m = Point("cp", seq_len, 1, cp, 1), model.with_cp_comm(comm)
                rank = m.attention(p)
                exposed = sum(m.layer_exposed_ms(p).values())
                ssa = rank["full"] + rank["selection"] + rank["sparse"] + exposed
                got = simulated.get((seq_len, cp, comm))
                sim = ["-"] * 5  # rank time, model / simulated, SSA and full speed-ups, exposed
                if got:
                    rank_ms = max(got["ssa_rank_ms"]) + got["ssa_exposed_ms"]
                    sim = [f"{rank_ms:.1f} ms", f"{ssa / rank_ms:.2f}", f"{got['ssa_speedup_exposed']:.2f}x",
                           f"{got['full_speedup']:.2f}x", f"{got['ssa_exposed_ms']:.2f} ms"]  # fmt: skip
                cells = [f"{seq_len // 1024}K", str(cp), comm, f"{ssa_one:.1f} ms", f"{ssa:.1f} ms", *sim[:2],
                         f"{ssa_one / ssa:.2f}x", sim[2], f"{one['full'] / rank['full']:.2f}x", sim[3],
                         f"{exposed:.2f} ms", sim[4]]  # fmt: skip
                out.append("| " + " | ".join(cells) + " |")
    return out


def calibration_lines(model: Model) -> list[str]:
    """What the numbers rest on: the calibration derived from the measured lines, the assumed hardware."""
    cal, hw = model.cal, model.hw
    activation = {k: f"{v * 2**10:.2f} MiB/token" for k, v in cal.activation_gib.items()}
    return [
        f"Calibration (1 GPU, measured on {', '.join(cal.sources)}; docs/perf): dense "
        f"{cal.dense_ms * 1e3:.1f} µs/token, SSA extra {cal.ssa_ms * 1e3:.2f} µs/token, selective-recompute "
        f"extra {cal.selective_ms * 1e3:.2f} µs/token; activations {activation['none']} (no recompute), "
        f"{activation['selective']} (selective); "
        f"{cal.params:,} parameters; kernel lengths {sorted(cal.kernels)}.",
        f"Hardware (assumed): {hw.name}; NVLink {hw.link_gbs:.0f} GB/s + {hw.link_latency_us:.0f} µs, "
        f"network {hw.net_gbs:.0f} GB/s + {hw.net_latency_us:.0f} µs per GPU, {hw.memory_gib:.0f} GiB "
        f"per GPU. Recompute: {model.recompute}; cp_comm: {model.cp_comm}.",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="configs/model/1b.yaml", help="model config (as bench_scaling's)")
    parser.add_argument("--hardware", choices=sorted(HARDWARE), default="h200")
    parser.add_argument("--recompute", choices=["none", "selective", "full"], default="selective")
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    parser.add_argument("--seqlens", type=int, nargs="+", default=[32768, 65536, 131072])
    parser.add_argument("--global-batch", type=int, default=2)
    parser.add_argument(
        "--cp-comm", choices=CP_COMM, default=CP_COMM_FIELD.default,
        help="how CP attention reaches the other ranks' keys (parallel.cp_comm; default: the config's)",
    )  # fmt: skip
    parser.add_argument(
        "--multi-node", action="store_true",
        help="the 64-GPU extrapolation (8 nodes): DP 8 x CP 8 (16 sequences per step) and CP 64",
    )  # fmt: skip
    parser.add_argument("--table", choices=["all", "overlap", "steps", "layer"], default="all")
    parser.add_argument("--measured", type=Path, help="bench_scaling JSON lines to set beside the prediction")
    parser.add_argument("--perf", type=Path, default=PERF, help="folder of the 1-GPU calibration lines")
    parser.add_argument(
        "--simulated", type=Path, default=PERF / "bench_cp.jsonl",
        help="tools/bench_cp.py --simulate lines for the layer table's simulated columns",
    )  # fmt: skip
    args = parser.parse_args()

    cfg = load_config(REPO / args.model if not Path(args.model).is_file() else args.model, ["train.steps=1"])
    calibration = Calibration(args.perf, cfg)
    model = Model(cfg, calibration, HARDWARE[args.hardware], args.recompute, args.cp_comm)
    if args.multi_node:
        points = [Point("dp8xcp8", t, 1, 8, 8, 8 * args.global_batch) for t in args.seqlens]
        points += [Point("cp64", t, 1, 64, 1, args.global_batch) for t in (*args.seqlens, 1 << 20)]
    else:
        points = [
            Point(layout, seq_len, *layout_sizes(layout, gpus), args.global_batch)
            for layout in args.layouts
            for gpus in args.gpus
            if layout == "cp" or (gpus > 1 and gpus % 2 == 0)
            for seq_len in args.seqlens
        ]
    measured = _measured(args.measured, args.model, args.recompute, args.cp_comm, args.hardware)
    tables = {
        "overlap": lambda: overlap_table(model, points),
        "steps": lambda: step_table(model, points, measured),
        "layer": lambda: layer_table(
            model, args.seqlens, args.gpus, simulated_lines(args.simulated, cfg, args.hardware)
        ),
    }
    chosen = ["overlap", "steps"] if args.table == "all" else [args.table]
    print(
        "\n\n".join("\n".join(lines) for lines in [calibration_lines(model), *(tables[t]() for t in chosen)])
    )


if __name__ == "__main__":
    main()
