"""Cost model of SSA training under context / tensor / data parallelism: the tables of docs/SCALING.md.

Predicts the optimizer-step time of `tools/bench_scaling.py`'s runs (2 sequences per step, micro-batch 1)
from the 1-GPU measurements in docs/perf (H100: `bench_attention.jsonl` kernel times at 8K-128K,
`bench_train.jsonl` 1B training steps at 8K) and the hardware assumptions of `HARDWARE`, term by term:

* dense (embedding, projections, MLP, norms, logits + CE, optimizer): per token, the measured `full` step at
  8K minus its 16 full-attention kernels; SSA extra (alignment loss, counterpart bookkeeping): the `ssa` step
  minus the `full` step minus the sparse kernels; selective recompute extra: likewise. TP divides these by
  `tp` (GEMMs split; replicated element-wise work is not charged: optimistic);
* full attention: CP = 1 the measured kernel; CP = P a ring of P steps of `T/P x T/P` causal-equivalent pairs
  each (the load-balanced layout makes every step the same size), and the ring's backward recomputes every
  step's forward (`parallel/context.py`), so P x (fwd + fwd/bwd) of a `T/P` attention;
* selection: the Triton kernels as measured (`block_scores_kernel`: every query row against the blocks before
  it; `top_blocks_kernel`: the segment top-k per row). CP = 1 `select_blocks` on the sequence; CP = P
  `select_blocks_from_means` on each load-balanced half of this rank's rows (`q_start` = the half's global
  position) against the all-gathered block means: chunks `r` and `2P-1-r` hold 1/P of the causal row x
  block pairs and 1/P of the rows, so `select(T) / P` at the measured rate;
* sparse attention: per query row as measured on one GPU; under CP every ring step runs the kernel on all
  its rows (the kernel's grid is per row), `2C` rows at step 0 and `3C` (padded, `_past_sparse`) after —
  an upper bound, since rows without a selected block in the visiting chunk only do masked loads;
* communication, with its overlap: ring shifts of K/V (forward) and K/V + fp32 dK/dV (backward) hidden behind
  each step's compute when shorter; the all-gather of fp32 block means, TP all-reduces of `[T/P, hidden]`
  bf16 activations (5 per layer and micro-step + 2 for embedding / logits, all exposed: an upper bound) and
  the ZeRO reduce-scatter + all-gather of bf16 gradients / parameters over DP x CP once per step: exposed;
* memory per GPU: bf16 parameters and gradients + fp32 master, Adam moments and gradient partition sharded by
  ZeRO over DP x CP, plus activations per token as measured at 8K (none, selective); full recompute: none.

Not modelled: merges and other element-wise work of the ring, kernel efficiency at small chunks beyond the
pair-rate scaling (e.g. the selection launched on `T / 2P` rows), H200-vs-H100 speed (taken equal: every
compute term is the H100 measurement; `--hardware` sets the memory per GPU). Every number printed is
computed here from the measured lines and these assumptions.

    python tools/scaling_model.py                                  # one node: ring overlap + step table
    python tools/scaling_model.py --multi-node                     # 64 GPUs over 8 nodes
    python tools/scaling_model.py --table layer                    # one layer, as tools/bench_cp.py times
    python tools/scaling_model.py --measured runs/scaling-123/bench_scaling.jsonl
    python tools/scaling_model.py --hardware h100 --gpus 1 --layouts cp --recompute full --table steps
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

from ssa_pretrain.config import Config, load_config

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

    def __init__(self, cfg: Config, calibration: Calibration, hardware: Hardware, recompute: str):
        self.cal, self.hw, self.recompute = calibration, hardware, recompute
        m = cfg.model
        self.layers, self.hidden, self.kv_heads = m.num_layers, m.hidden_size, m.num_kv_heads
        self.head_dim, self.block = m.kv_channels, cfg.ssa.block_size

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

    def ring_bytes(self, p: Point) -> tuple[float, float]:
        """Bytes one rank sends per ring step and layer: forward the K/V share (bf16); backward K/V + the
        fp32 dK/dV accumulators."""
        kv = 2 * (p.seq_len / p.cp) * (self.kv_heads / p.tp) * self.head_dim
        return kv * BF16, kv * (BF16 + FP32)

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

    def ring_step(self, p: Point) -> dict[str, float]:
        """One ring step of one layer on one rank (CP > 1): ms to send the share to the next rank and ms of
        the compute it hides behind, forward (K/V) and backward (K/V + dK/dV; recomputed forward + backward).
        A step pairs `T/P x T/P` causal-equivalent query-key pairs and, on average, 1.5 T/P sparse rows."""
        n, k = p.seq_len / p.cp, self.cal.kernel
        row_fwd, row_fb = self._sparse_row_ms(n)
        fwd_bytes, bwd_bytes = self.ring_bytes(p)
        return {
            "send_fwd": self._comm_ms(fwd_bytes, p.cp),
            "compute_fwd": (k("full_fwd_ms", n) + 1.5 * n * row_fwd) / p.tp,
            "send_bwd": self._comm_ms(bwd_bytes, p.cp),
            "compute_bwd": (k("full_fwd_ms", n) + k("full_fwd_bwd_ms", n) + 1.5 * n * (row_fwd + row_fb))
            / p.tp,
        }

    def micro_step(self, p: Point) -> dict[str, float]:
        """ms of one micro-step (one sequence) on one rank, by term."""
        cal, layers, n, P, tp, k = self.cal, self.layers, p.seq_len / p.cp, p.cp, p.tp, self.cal.kernel
        row_fwd, row_fb = self._sparse_row_ms(n)
        if P == 1:
            full, select, sparse = k("full_fwd_bwd_ms", n), k("select_ms", n), n * row_fb
            attention_fwd = k("full_fwd_ms", n) + n * row_fwd + select
        else:
            full = P * (k("full_fwd_ms", n) + k("full_fwd_bwd_ms", n))  # forward ring + backward ring
            rows = n + (P - 1) * 1.5 * n  # step 0: 2C rows; later steps 3C (queries + padding)
            # the Triton kernels on this rank's two halves: 1/P of the rows and of the causal row-block pairs
            select = k("select_ms", p.seq_len) / P
            sparse = rows * (row_fwd + row_fb)  # forward + backward (with its recomputed forward)
            attention_fwd = P * k("full_fwd_ms", n) + rows * row_fwd + select
        terms = {
            "dense": cal.dense_ms * n / tp,
            "ssa_extra": cal.ssa_ms * n / tp,
            "full_attention": layers * full / tp,
            "selection": layers * select / tp,
            "sparse_attention": layers * sparse / tp,
            "recompute": 0.0,
        }
        if self.recompute != "none":  # the core attention's forward again, ring and selection included
            terms["recompute"] = layers * attention_fwd / tp + cal.selective_ms * n / tp
        if self.recompute == "full":  # not measured: the dense forward is ~1/3 of its fwd + bwd (FLOPs)
            terms["recompute"] += cal.dense_ms * n / tp / 3
        return {**terms, **self._exposed_comm(p)}

    def _exposed_comm(self, p: Point) -> dict[str, float]:
        """ms per micro-step of communication no compute hides (ring: per step, transfer beyond compute)."""
        P, tp, layers = p.cp, p.tp, self.layers
        passes = 1 if self.recompute == "none" else 2  # the forward ring (and selection) runs again
        out = {"ring": 0.0, "block_means": 0.0, "tp_allreduce": 0.0}
        if P > 1:
            step = self.ring_step(p)
            last_dkv = self._comm_ms(self.ring_bytes(p)[1] * FP32 / (BF16 + FP32), P)  # after the last step
            out["ring"] = layers * (
                passes * (P - 1) * max(0.0, step["send_fwd"] - step["compute_fwd"])
                + (P - 1) * max(0.0, step["send_bwd"] - step["compute_bwd"])
                + last_dkv
            )
            gather = self._comm_ms((P - 1) / P * self.block_mean_bytes(p), P, hops=P - 1)
            out["block_means"] = layers * passes * gather
        if tp > 1:  # 2 forward + 3 backward per layer, embedding + logits; full recompute: 2 more per layer
            one = self._comm_ms(2 * (tp - 1) / tp * self.tp_allreduce_bytes(p), tp, hops=2 * (tp - 1))
            out["tp_allreduce"] = (layers * (5 + (2 if self.recompute == "full" else 0)) + 2) * one
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
        return static + self.cal.activation_gib[self.recompute] * p.seq_len / p.cp / p.tp


# ------------------------------------------------------------------------------------------------- tables


def _measured(path: Path | None, config: str, recompute: str, hardware: str) -> dict[tuple, dict]:
    """bench_scaling lines of this model, recompute setting and GPU kind, by (layout, GPUs, seq_len); the last
    line of a point wins."""
    if path is None:
        return {}
    lines = _last_lines(path, config=config, recompute=recompute)
    return {(r["layout"], r["world_size"], r["seqlen"]): r for r in lines if hardware in r["device"].lower()}


def _pct(part: float, total: float) -> str:
    return f"{part / total:.0%}"


def overlap_table(model: Model, points: list[Point]) -> list[str]:
    """Per layer and micro-step: bytes on the wire and the overlap condition of every ring step."""
    inside, across = break_even_tokens(model, 2), break_even_tokens(model, 2 * GPUS_PER_NODE)
    out = [
        f"Ring overlap (step compute >= shift) from {inside[0]:,.0f} tokens per rank forward and "
        f"{inside[1]:,.0f} backward inside a node; {across[0]:,.0f} / {across[1]:,.0f} across nodes.",
        "",
        "| GPUs | layout | T | tokens/rank | K/V per shift | fwd shift / step compute "
        "| K/V + dK/dV per shift | bwd shift / step compute | block means (all-gather) "
        "| TP all-reduce, each | ZeRO per step |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        ring = ["-"] * 5
        if p.cp > 1:
            (fwd, bwd), step = model.ring_bytes(p), model.ring_step(p)
            ring = [
                f"{fwd / 2**20:.1f} MiB",
                f"{step['send_fwd'] * 1e3:.0f} µs / {step['compute_fwd'] * 1e3:.0f} µs",
                f"{bwd / 2**20:.1f} MiB",
                f"{step['send_bwd'] * 1e3:.0f} µs / {step['compute_bwd'] * 1e3:.0f} µs",
                f"{model.block_mean_bytes(p) / 2**20:.2f} MiB",
            ]
        tp = f"{model.tp_allreduce_bytes(p) / 2**20:.0f} MiB" if p.tp > 1 else "-"
        zero = f"{model.zero_bytes(p) / 2**30:.2f} GiB" if p.dp * p.cp > 1 else "-"
        cells = [str(p.gpus), p.layout, f"{p.seq_len // 1024}K", str(p.seq_len // p.cp), *ring, tp, zero]
        out.append("| " + " | ".join(cells) + " |")
    return out


def break_even_tokens(model: Model, cp: int) -> tuple[float, float]:
    """Fewest tokens per rank for which a ring step's compute covers its shift, forward and backward, in a
    ring of `cp` ranks (bisection on the step's length; compute grows ~quadratically, the shift linearly)."""

    def covered(n: float, direction: str) -> bool:
        step = model.ring_step(Point("cp", round(n * cp), 1, cp, 1))
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
        comm = s["ring"] + s["block_means"] + s["tp_allreduce"] + s["zero"]
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


def layer_table(model: Model, seq_lens: list[int], cps: list[int]) -> list[str]:
    """One layer's SSA attention, forward + backward, no recompute (what tools/bench_cp.py times): measured on
    one GPU (the calibration kernels) against the model's context-parallel ring."""
    out = [
        "| T | CP | full, 1 GPU (measured) | SSA, 1 GPU (measured) | full ring, CP (model) "
        "| SSA ring, CP (model) | full speed-up | SSA speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    k = model.cal.kernel
    for seq_len in seq_lens:
        full_one = k("full_fwd_bwd_ms", seq_len)
        ssa_one = full_one + k("sparse_fwd_bwd_ms", seq_len)  # the sparse line includes the selection
        for cp in (c for c in cps if c > 1):
            p, n = Point("cp", seq_len, 1, cp, 1), seq_len / cp
            terms = model.micro_step(p)
            attention = ("full_attention", "selection", "sparse_attention", "ring", "block_means")
            ssa_ring = sum(terms[t] for t in attention) / model.layers
            full_ring = cp * (k("full_fwd_ms", n) + k("full_fwd_bwd_ms", n))
            cells = [f"{seq_len // 1024}K", str(cp), f"{full_one:.0f} ms", f"{ssa_one:.0f} ms",
                     f"{full_ring:.0f} ms", f"{ssa_ring:.0f} ms", f"{full_one / full_ring:.2f}x",
                     f"{ssa_one / ssa_ring:.2f}x"]  # fmt: skip
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
        f"per GPU. Recompute: {model.recompute}.",
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
        "--multi-node", action="store_true",
        help="the 64-GPU extrapolation (8 nodes): DP 8 x CP 8 (16 sequences per step) and CP 64",
    )  # fmt: skip
    parser.add_argument("--table", choices=["all", "overlap", "steps", "layer"], default="all")
    parser.add_argument("--measured", type=Path, help="bench_scaling JSON lines to set beside the prediction")
    parser.add_argument("--perf", type=Path, default=PERF, help="folder of the 1-GPU calibration lines")
    args = parser.parse_args()

    cfg = load_config(REPO / args.model if not Path(args.model).is_file() else args.model, ["train.steps=1"])
    calibration = Calibration(args.perf, cfg)
    model = Model(cfg, calibration, HARDWARE[args.hardware], args.recompute)
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
    measured = _measured(args.measured, args.model, args.recompute, args.hardware)
    tables = {
        "overlap": lambda: overlap_table(model, points),
        "steps": lambda: step_table(model, points, measured),
        "layer": lambda: layer_table(model, args.seqlens, args.gpus),
    }
    chosen = ["overlap", "steps"] if args.table == "all" else [args.table]
    print(
        "\n\n".join("\n".join(lines) for lines in [calibration_lines(model), *(tables[t]() for t in chosen)])
    )


if __name__ == "__main__":
    main()
