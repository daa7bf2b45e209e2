"""Training-step throughput, time split and memory on one GPU: `anchor`, `full`, `sparse`, `ssa` side by side.

The real training path — Megatron GPT with the SSA spec inside the DeepSpeed engine (bf16, ZeRO-1 with fp32
gradients: `configs/deepspeed/zero1-fp32-grads.json`, DeepSpeed's BF16 optimizer, as the one-GPU recipe
trains; torch AdamW), forward + backward + optimizer step — on random tokens. The JSON line's
`zero_optimizer` names DeepSpeed's optimizer wrapper that ran. Variants:

* `anchor`: plain Megatron-Core GPT of the same shape — Megatron's local layer spec with PyTorch SDPA as its
  core attention (injected through the `ModuleSpec`), no output gate, no SSA code, Megatron's own loss — in
  the same engine;
* `full`: our model with full attention only (cuDNN/flash SDPA through `ssa_kernels.full_attention`);
* `sparse`: our model with block-sparse attention only (selection + sparse kernel);
* `ssa`: both branches every step plus the alignment loss (mode drawn per step as in training).

Each (variant, sequence length, micro-batch) gives one JSON line, appended to `--out` as soon as it is
measured (an out-of-memory shape gives a line with `"oom": true` and the run goes on):

* `step_ms`, `tokens_per_s`: `--steps` steps back to back after `--warmup` steps (CUDA events, one host
  synchronisation at the end: the step's own synchronisations only); `step_ms_median` per step;
  `phase_ms`: per step, the device time of the forward (with the loss), the backward and the optimizer step
  (between events recorded at their boundaries, idle included).
* `mfu` = flops_per_token x tokens_per_s / peak, with `ssa_pretrain.metrics.flops_per_token`:
  6 N (N = all parameters, the tied embedding once: it is the output GEMM) + per layer 12 H d ctx for each
  attention branch that runs (ctx = T / 2 causal full, min(K BS, T / 2) sparse; `ssa` counts both) + the
  selection scores 2 H d T / (2 BS) per layer for `sparse` and `ssa`; `anchor` counts as `full`. Peak:
  dense bf16 of the GPU (989 TFLOP/s on H100 / H200).
* `peak_mem_gib`: max allocated over warm-up and timed steps; `mem_state_gib`: allocated after them
  (weights, optimizer state, gradients); `mem_before_build_gib`: allocated before the variant's model was
  built (non-zero: something of an earlier variant is still alive).
* `split_ms` (`--split`): one more step under `torch.profiler`, device time per part: full attention,
  selection, sparse attention, alignment loss (the `attention.*` profiler ranges of the model, forward and
  — by the autograd sequence number — backward), GEMMs, norms/activations/RoPE/gate (the other work of the
  layers), logits + cross-entropy (output layer and loss), optimizer (`engine.step`), other (embedding,
  gradient bookkeeping, kernels the profiler could not attribute). On CPU the same split of CPU time.
  `split_top`: per part, its kernels (CPU: ops) with the most time; `split_launches`: how many it launched
  (a part of many short kernels is bound by the host, not the device). `device_idle_ms`: `step_ms` minus
  the profiled step's device time, what the device waits for the host per step, and `phase_idle_ms` the
  same per phase (forward + backward, optimizer: `phase_ms` minus the kernel time of their parts); `syncs`:
  one more step's synchronising calls per source line (`synchronizations`), where those waits begin.
* `timeline_ms` (`--timeline`): one more step marked at its phases and at every layer's boundaries, forward
  and backward (`timeline`): per region (start, layers' forward, loss, backward start, layers' backward,
  backward end, optimizer) the host's and the device's time between the marks, so the stretches where the
  device runs at the host's pace show; `layer_forward_ms` / `layer_backward_ms` per layer.
* `memory` (`--memory`): per mode, the bytes the autograd graph of one forward keeps for backward (unique
  storages, parameters excluded, by `saved_tensors_hooks`), per layer and per part of a layer, the fp32 share
  and the largest tensors; on CUDA also the memory each layer leaves allocated after its forward.

**Context-parallel rank simulation** (`--simulate-cp P`, one process): the step of CP rank 0 of `P` — its
share of every sequence (`seq_len / P` tokens through the embedding, the layers, the loss and its 1/P of
ZeRO's optimizer partitions), its attention against the whole sequence by `parallel.cp_comm` — under torch's
fake process group (collectives return at once; Megatron's and DeepSpeed's groups have their real sizes)
while each SSA layer communicates through `SimulatedComm`, which copies the bytes a transfer would move
locally (the rank's own share standing in for its peers'). `step_ms` is the rank's compute: one GPU's step
over the same sequences divided by it is the speed-up once the transfers hide behind compute;
`cp_moved_bytes_per_step` is what the attention layers would move per step, `zero_moved_bytes_per_step`
ZeRO's gradient reduction and parameter all-gather (`zero_moved_bytes`: what the fake group skipped), to show
they do.

    python tools/bench_train.py                                   # 1b, 8192 tokens, micro-batch 1
    python tools/bench_train.py --variants anchor full sparse ssa --micro-batch 1 2 --split --memory \\
        --out docs/perf/bench_train.jsonl
    python tools/bench_train.py --variants ssa --seq-len 131072 65536 32768 --longest train.recompute=full
    python tools/bench_train.py --variants full ssa --micro-batch 2 --cross-entropy megatron   # a lever, off
    python tools/bench_train.py --variants full --micro-batch 2 \\
        train.deepspeed_config=configs/deepspeed/zero1.json                            # bf16 gradients
    python tools/bench_train.py --variants ssa --seq-len 65536 --simulate-cp 2 train.recompute=full
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import itertools
import json
import os
import re
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from bench_info import run_info
from megatron.core import parallel_state
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

from ssa_pretrain import cpu_shims
from ssa_pretrain.config import Config, load_config
from ssa_pretrain.distributed import init_distributed, shutdown
from ssa_pretrain.metrics import flops_per_token, peak_flops
from ssa_pretrain.model.alignment import AttachAuxLoss
from ssa_pretrain.model.gpt import build_model, set_attention_mode, ssa_layers
from ssa_pretrain.model.modes import choose_mode
from ssa_pretrain.parallel.collectives import SimulatedComm
from ssa_pretrain.parallelize import context_parallel_share, parallelize, seed_model_parallel_rng

VARIANTS = ("anchor", "full", "sparse", "ssa")
GIB, MIB = 2**30, 2**20

# ------------------------------------------------------------------------------------------ the anchor


class SDPACoreAttention(MegatronModule):
    """Megatron core attention computed by `F.scaled_dot_product_attention` (causal; k, v expanded to the
    query heads), as a user would plug it into Megatron's local spec."""

    def __init__(self, config, layer_number, attn_mask_type, attention_type, **kwargs):
        super().__init__(config=config)
        self.softmax_scale = kwargs.get("softmax_scale")

    def forward(self, query, key, value, attention_mask, **kwargs) -> torch.Tensor:
        """query [sq, b, hq, d], key/value [sk, b, hkv, d] -> [sq, b, hq * d]."""
        sq, b = query.shape[:2]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, heads, s, d]
        group = q.shape[1] // k.shape[1]
        k, v = (t.repeat_interleave(group, dim=1) for t in (k, v))
        with record_function("attention.full"):
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.softmax_scale)
        return o.permute(2, 0, 1, 3).reshape(sq, b, -1)


def anchor_block_spec(num_layers: int) -> TransformerBlockSubmodules:
    """Megatron's local GPT layer (RMSNorm, SwiGLU) with `SDPACoreAttention`, and its own final norm."""
    layer = copy.deepcopy(get_gpt_layer_local_spec(normalization="RMSNorm"))
    layer.submodules.self_attention.submodules.core_attention = SDPACoreAttention
    return TransformerBlockSubmodules(
        layer_specs=[layer] * num_layers, layer_norm=layer.submodules.input_layernorm
    )


# ------------------------------------------------------------------------------------ the step split

PARTS = (
    "full_attention",
    "selection",
    "sparse_attention",
    "alignment",
    "gemm",
    "norm_act_rope",
    "logits_ce",
    "optimizer",
    "other",
)
PHASES = ("forward", "backward", "optimizer")
"""A timed step's phases: forward with the loss, `engine.backward`, `engine.step`."""
RANGES = {  # profiler range -> part; the innermost range of an op decides
    "attention.selection": "selection",
    "attention.sparse": "sparse_attention",
    "attention.full": "full_attention",
    "attention.alignment": "alignment",
    "bench.logits_ce": "logits_ce",
    "bench.optimizer": "optimizer",
}
LAYER_RANGES = ("bench.norm", "bench.mlp", "bench.attention")  # what is not a GEMM there: norm_act_rope
KERNEL_PARTS = {  # kernel name prefix -> part, whatever range launched it (our Triton kernels)
    "block_scores_kernel": "selection",
    "top_blocks_kernel": "selection",
    "sparse_fwd_kernel": "sparse_attention",
    "sparse_bwd_": "sparse_attention",
}
GEMM_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear"}
GEMM_KERNELS = ("gemm", "cutlass", "nvjet", "xmma", "cublas")
TOP_KERNELS = 8  # per part, the kernels (CPU: ops) with the most time, in `split_top`


@contextlib.contextmanager
def profile_ranges(model: torch.nn.Module) -> Iterator[None]:
    """Open `bench.*` profiler ranges around the model's norms, MLPs, self-attentions, output layer and
    loss (forward hooks: no change to Megatron's modules)."""
    handles, open_ranges = [], {}

    def enter(name: str) -> Callable:
        def hook(module, *_):
            open_ranges.setdefault(id(module), []).append(record_function(name).__enter__())

        return hook

    def leave(module, *_):
        open_ranges[id(module)].pop().__exit__(None, None, None)

    for name, module in model.named_modules():
        kind = type(module).__name__
        label = (
            "bench.logits_ce"
            if name.endswith("output_layer")
            else "bench.norm"
            if "Norm" in kind
            else "bench.mlp"
            if kind == "MLP"
            else "bench.attention"
            if kind.endswith("SelfAttention")
            else None
        )
        if label:
            handles += [module.register_forward_pre_hook(enter(label)), module.register_forward_hook(leave)]
    loss_fn, patched = model.compute_language_model_loss, "compute_language_model_loss" in vars(model)

    def loss_in_range(*args, **kwargs):
        with record_function("bench.logits_ce"):
            return loss_fn(*args, **kwargs)

    model.compute_language_model_loss = loss_in_range
    try:
        yield
    finally:
        if patched:  # e.g. by use_fused_cross_entropy
            model.compute_language_model_loss = loss_fn
        else:
            del model.compute_language_model_loss  # the class's method again
        for handle in handles:
            handle.remove()


def _is_backward_node(name: str) -> bool:
    return "Backward" in name and not name.startswith("aten::")


def _context(event: Any, forward_ctx: dict[tuple[int, int], list[str]]) -> list[str]:
    """Names around `event`, innermost first; a backward node brings the names around its forward op
    (sequence numbers count per thread: the key is (forward thread, sequence number))."""
    names, node = [], event
    while node is not None:
        names.append(node.name)
        if _is_backward_node(node.name) and node.sequence_nr >= 0:
            names += forward_ctx.get((node.fwd_thread, node.sequence_nr), [])
        node = node.cpu_parent
    return names


def _part(names: list[str], kernel: str) -> str:
    for prefix, part in KERNEL_PARTS.items():
        if kernel.startswith(prefix):
            return part
    part = next((RANGES[n] for n in names if n in RANGES), None)
    if part:
        return part
    if any(n in GEMM_OPS for n in names) or any(k in kernel.lower() for k in GEMM_KERNELS):
        return "gemm"
    if any(n in LAYER_RANGES for n in names):
        return "norm_act_rope"
    return "other"


def step_split(events: list[Any], cuda: bool) -> dict[str, Any]:
    """Time of a profiled step per part (`PARTS`), in ms: device kernel time on CUDA, CPU self time on CPU.

    `events`: the profiler's `FunctionEvent`s. Forward ops are attributed by the ranges around them; a
    backward node (`XBackward…`, same `sequence_nr` as the forward op that made it) by the ranges around that
    forward op.
    """
    forward_ctx: dict[tuple[int, int], list[str]] = {}
    for e in events:  # time order: the outermost forward op with a sequence number comes first
        if e.device_type == DeviceType.CPU and e.sequence_nr >= 0 and not _is_backward_node(e.name):
            names = _context(e, {})
            if not any(_is_backward_node(n) for n in names):
                forward_ctx.setdefault((e.thread, e.sequence_nr), names)
    spent: dict[tuple[str, str], float] = defaultdict(float)  # (part, kernel or op) -> ms
    launched: dict[tuple[str, str], int] = defaultdict(int)  # (part, kernel or op) -> launches

    def add(part: str, name: str, ms: float, launches: int = 1) -> None:
        spent[part, name] += ms
        launched[part, name] += launches

    linked: dict[str, list] = defaultdict(lambda: [0.0, 0])  # kernel name -> [ms, launches] through its op
    for e in events:
        if e.device_type != DeviceType.CPU:
            continue
        if not cuda:
            add(_part(_context(e, forward_ctx), ""), e.name, e.self_cpu_time_total / 1e3)
        elif e.kernels:
            names = _context(e, forward_ctx)
            for k in e.kernels:
                add(_part(names, k.name), k.name, k.duration / 1e3)
                linked[k.name][0] += k.duration / 1e3
                linked[k.name][1] += 1
    busy = None
    if cuda:  # device work the profiler linked to no op: by kernel name (memcpy, memset, ... are `other`)
        ranges = {e.name for e in events if e.device_type == DeviceType.CPU}  # their device-side copies
        device: dict[str, list] = defaultdict(lambda: [0.0, 0])
        for e in events:
            if e.device_type == DeviceType.CUDA and e.name not in ranges:
                device[e.name][0] += e.time_range.elapsed_us() / 1e3
                device[e.name][1] += 1
        busy = sum(ms for ms, _ in device.values())
        for name, (ms, launches) in device.items():
            add(_part([], name), name, max(0.0, ms - linked[name][0]), max(0, launches - linked[name][1]))
    split = {part: sum(ms for (p, _), ms in spent.items() if p == part) for part in PARTS}
    total = sum(split.values())
    top: dict[str, list] = defaultdict(list)
    for (part, name), ms in sorted(spent.items(), key=lambda kv: -kv[1]):
        if len(top[part]) < TOP_KERNELS and ms > 0:
            top[part].append([name[:120], round(ms, 3)])
    return {
        "split_ms": {k: round(v, 3) for k, v in split.items()},
        "split_share": {k: round(v / total, 4) if total else 0.0 for k, v in split.items()},
        "split_top": {k: top[k] for k in PARTS if top[k]},
        "split_launches": {part: sum(n for (p, _), n in launched.items() if p == part) for part in PARTS},
        "device_busy_ms": busy,
    }


# ---------------------------------------------------------------------------------- the memory report


def saved_for_backward(model: torch.nn.Module, forward: Callable[[], torch.Tensor]) -> dict[str, Any]:
    """What the autograd graph of `forward()` keeps for backward, attributed to the innermost module whose
    forward saved it: unique storages (a tensor saved by several ops, or viewed, counts once), parameters
    excluded. On CUDA also what each decoder layer leaves allocated after its forward (saved tensors, its
    output, and anything else kept alive, e.g. by a tensor stored on an autograd context)."""
    names = {id(m): n for n, m in model.named_modules()}
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    stack: list[str] = []
    saved: dict[tuple, tuple[str, int, torch.dtype, tuple]] = {}
    layer_alloc: dict[str, float] = {}
    cuda = next(model.parameters()).is_cuda

    def push(module, *_):
        stack.append(names[id(module)])
        if cuda and re.fullmatch(r".*layers\.\d+", stack[-1]):
            layer_alloc[stack[-1]] = -torch.cuda.memory_allocated()

    def pop(module, *_):
        if cuda and stack[-1] in layer_alloc:
            layer_alloc[stack[-1]] += torch.cuda.memory_allocated()
        stack.pop()

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # e.g. a tensor without storage
            return t
        key = (storage.device, storage.data_ptr())
        if storage.data_ptr() not in params and key not in saved:
            saved[key] = (stack[-1] if stack else "", storage.nbytes(), t.dtype, tuple(t.shape))
        # A detached alias: the tensor itself would tie a saved output to its own graph node, a cycle the
        # collector cannot see, and keep the whole forward alive (the graph is only measured, never run).
        return t.detach()

    handles = [
        h for m in model.modules() for h in (m.register_forward_pre_hook(push), m.register_forward_hook(pop))
    ]
    before = torch.cuda.memory_allocated() if cuda else 0
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = forward()
        activations = torch.cuda.memory_allocated() - before if cuda else None
        del loss  # frees the graph
    finally:
        for h in handles:
            h.remove()
    per_layer: dict[int, float] = defaultdict(float)
    by_part: dict[str, float] = defaultdict(float)
    outside = fp32 = 0.0
    for module, nbytes, dtype, _ in saved.values():
        match = re.search(r"layers\.(\d+)\.?(.*)", module)
        if match:
            per_layer[int(match[1])] += nbytes
            by_part[match[2] or "(layer)"] += nbytes
        else:
            outside += nbytes
        fp32 += nbytes if dtype == torch.float32 else 0
    num_layers = max(len(per_layer), 1)
    largest = sorted(saved.values(), key=lambda s: -s[1])[:8]
    return {
        "saved_gib": round(sum(s[1] for s in saved.values()) / GIB, 4),
        "saved_outside_layers_gib": round(outside / GIB, 4),
        "saved_fp32_gib": round(fp32 / GIB, 4),
        "saved_per_layer_mib": [round(per_layer[i] / MIB, 2) for i in sorted(per_layer)],
        "saved_per_layer_by_part_mib": {
            k: round(v / num_layers / MIB, 2) for k, v in sorted(by_part.items(), key=lambda kv: -kv[1])
        },
        "largest_saved": [[m, list(shape), str(dtype), round(n / MIB, 2)] for m, n, dtype, shape in largest],
        "activations_gib": None if activations is None else round(activations / GIB, 4),
        "layer_alloc_mib": [round(v / MIB, 2) for v in layer_alloc.values()] if cuda else None,
    }


# ------------------------------------------------------------------------------------- measurement


def cross_entropy(args: argparse.Namespace, variant: str) -> list[str]:
    """The loss override of a variant: `--cross-entropy` when given, else the run config's own (the recipes:
    `fused`) and, for the anchor, Megatron's (plain Megatron-Core)."""
    if args.cross_entropy is None:
        return ["train.cross_entropy=megatron"] if variant == "anchor" else []
    return [f"train.cross_entropy={'fused' if args.cross_entropy == 'fused' else 'megatron'}"]


def bench_config(args: argparse.Namespace, variant: str, seq_len: int, micro_batch: int) -> Config:
    """The run config of one variant and shape; the anchor is `full` without the output gate."""
    anchor = (
        ["ssa.variant=full", "ssa.output_gate=false"] if variant == "anchor" else [f"ssa.variant={variant}"]
    )
    return load_config(
        args.model,
        [
            *anchor,
            f"data.seq_len={seq_len}",
            f"train.micro_batch_size={micro_batch}",
            f"train.global_batch_size={micro_batch}",
            "train.steps=1000",  # the schedule of a 1000-step run (a model file alone sets no steps)
            f"train.precision={'bf16' if torch.cuda.is_available() else 'fp32'}",
            "train.deepspeed_config=configs/deepspeed/zero1-fp32-grads.json",
            *cross_entropy(args, variant),
            f"parallel.cp={args.simulate_cp}",
            *args.overrides,
        ],
    )


def simulated_cp_world(size: int) -> None:
    """This process as rank 0 of a context-parallel group of `size`: torch's fake process group
    (`torch.testing._internal.distributed.fake_pg`, the one torchtitan's dry runs use: every collective
    returns at once, nothing is sent) under Megatron's groups (no gloo groups: they would wait for peers)."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    os.environ.update(RANK="0", WORLD_SIZE=str(size), LOCAL_RANK="0")  # DeepSpeed reads them
    if torch.cuda.is_available():
        torch.cuda.set_device(0)
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=size)
    parallel_state.initialize_model_parallel(context_parallel_size=size, create_gloo_process_groups=False)


def simulate_context_parallel(model: torch.nn.Module) -> list[SimulatedComm]:
    """Give every SSA layer of `model` its own `SimulatedComm` as this CP rank: its transfers become local
    copies of real data (the fake group would hand back uninitialised buffers)."""
    rank, size = parallel_state.get_context_parallel_rank(), parallel_state.get_context_parallel_world_size()
    comms = []
    for layer in ssa_layers(model):
        layer.cp_group = SimulatedComm(rank, size)
        comms.append(layer.cp_group)
    return comms


def _allocated_gib() -> float | None:
    return torch.cuda.memory_allocated() / GIB if torch.cuda.is_available() else None


def train_step(
    engine: Any, cfg: Config, step: int, tokens: torch.Tensor, mark: Callable[[], None] = lambda: None
) -> torch.Tensor:
    """One optimizer step of one micro-batch, the mode drawn as in training (host-side: no sync); its loss.
    `mark()` runs after the forward (loss included) and after the backward (`timed`'s phase events)."""
    set_attention_mode(engine.module, choose_mode(cfg.ssa, cfg.train.seed, step, 0, 1))
    inputs, labels = context_parallel_share(tokens[:, :-1], tokens[:, 1:])  # as is without CP
    loss = engine(inputs, None, None, labels=labels).float().mean()
    mark()
    engine.backward(loss)
    mark()
    with record_function("bench.optimizer"):
        engine.step()
    return loss.detach()


def timed(
    engine: Any, cfg: Config, batches: list[torch.Tensor], warmup: int, steps: int
) -> tuple[list[float], list[float], dict[str, float]]:
    """Per-step milliseconds of `steps` steps run back to back after `warmup` steps, every step's loss (read
    after the last step: no host synchronisation in between), and the mean milliseconds per phase of a step
    (`PHASES`: forward with the loss, backward, optimizer; on CUDA the device time between events recorded
    at the phase boundaries, idle included)."""
    cuda = torch.cuda.is_available()
    losses = [train_step(engine, cfg, step, batches[step % len(batches)]) for step in range(warmup)]
    marks: list[Any] = []

    def mark() -> None:
        if cuda:
            marks.append(torch.cuda.Event(enable_timing=True))
            marks[-1].record()
        else:
            marks.append(time.perf_counter())

    if cuda:
        torch.cuda.synchronize()
    mark()
    for step in range(warmup, warmup + steps):
        losses.append(train_step(engine, cfg, step, batches[step % len(batches)], mark))
        mark()
    if cuda:
        torch.cuda.synchronize()
        between = [a.elapsed_time(b) for a, b in itertools.pairwise(marks)]
    else:
        between = [(b - a) * 1e3 for a, b in itertools.pairwise(marks)]
    phases = {name: sum(between[i :: len(PHASES)]) / steps for i, name in enumerate(PHASES)}
    times = [sum(between[i : i + len(PHASES)]) for i in range(0, len(between), len(PHASES))]
    return times, [round(float(x), 4) for x in losses], phases


def measure_shape(
    engine: Any,
    cfg: Config,
    num_params: int,
    vocab: int,
    args: argparse.Namespace,
    variant: str,
    comms: list[SimulatedComm],
) -> dict[str, Any]:
    """Throughput, memory, and optionally the split and the memory report, of one shape; `comms`: the
    simulated context-parallel channels (their bytes over the timed steps are reported)."""
    seq_len, micro_batch = cfg.data.seq_len, cfg.train.micro_batch_size
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    generator = torch.Generator().manual_seed(seq_len * 1000 + micro_batch)
    batches = [
        torch.randint(0, vocab, (micro_batch, seq_len + 1), generator=generator).to(device) for _ in range(2)
    ]
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for comm in comms:
        comm.moved.clear()
    times, losses, phases = timed(engine, cfg, batches, args.warmup, args.steps)
    moved = sum(nbytes for comm in comms for _, nbytes in comm.moved) / (args.warmup + args.steps)
    step_ms = sum(times) / len(times)
    tokens_per_s = micro_batch * seq_len / (step_ms / 1e3)
    peak = peak_flops(device)
    flops = flops_per_token(cfg, num_params)
    modes = [
        choose_mode(cfg.ssa, cfg.train.seed, s, 0, 1) for s in range(args.warmup, args.warmup + args.steps)
    ]
    zero_optimizer = type(engine.optimizer).__name__
    row: dict[str, Any] = {
        "variant": variant,
        "params": num_params,
        "seq_len": seq_len,
        "micro_batch": micro_batch,
        "step_ms": round(step_ms, 3),
        "step_ms_median": round(sorted(times)[len(times) // 2], 3),
        "phase_ms": {name: round(ms, 3) for name, ms in phases.items()},
        "tokens_per_s": round(tokens_per_s, 1),
        "flops_per_token": flops,
        "mfu": round(flops * tokens_per_s / peak, 4) if peak else None,
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / GIB, 3) if cuda else None,
        "mem_state_gib": _allocated_gib(),
        "full_steps": modes.count("full"),
        "losses": losses,  # warm-up and timed steps: finite, ~ln(vocab) at initialisation
        "block_size": cfg.ssa.block_size,
        "block_count": cfg.ssa.block_count,
        "recompute": cfg.train.recompute,
        "zero_optimizer": zero_optimizer,  # DeepSpeed's wrapper: its stage and dtypes pick it
        "oom": False,
    }
    if comms:  # what the fake process group and the simulated channels did not send
        size = cfg.parallel.cp
        row.update(
            simulate_cp=size,
            cp_moved_bytes_per_step=round(moved),
            zero_moved_bytes_per_step=round(zero_moved_bytes(zero_optimizer, size, num_params)),
        )
    if args.split:
        with _optional(row, "split"):
            row.update(profiled_split(engine, cfg, args.warmup + args.steps, batches[0]))
            if cuda:
                row["device_idle_ms"] = round(step_ms - row["device_busy_ms"], 3)
                optimizer_busy = row["split_ms"]["optimizer"]
                row["phase_idle_ms"] = {
                    "forward_backward": round(
                        phases["forward"] + phases["backward"] - (row["device_busy_ms"] - optimizer_busy), 3
                    ),
                    "optimizer": round(phases["optimizer"] - optimizer_busy, 3),
                }
            row["syncs"] = synchronizations(engine, cfg, args.warmup + args.steps + 1, batches[1])
    if args.timeline:
        with _optional(row, "timeline"):
            row.update(timeline(engine, cfg, args.warmup + args.steps, batches[0]))
    if args.memory:
        with _optional(row, "memory"):
            row["memory"] = {
                mode: memory_report(engine, mode, batches[0])
                for mode in (("full", "sparse") if variant == "ssa" else modes[:1])
            }
    return row


def zero_moved_bytes(zero_optimizer: str, ranks: int, num_params: int) -> float:
    """Bytes one rank sends per step in ZeRO-1/2 over `ranks`: the gradients (DeepSpeed's BF16 optimizer
    all-reduces its fp32 accumulators, its ZeRO optimizer reduce-scatters bf16) and the all-gather of the
    updated bf16 parameters."""
    share = (ranks - 1) / ranks * num_params
    grads = 2 * share * 4 if zero_optimizer == "BF16_Optimizer" else share * 2
    return grads + share * 2


@contextlib.contextmanager
def _optional(row: dict[str, Any], what: str) -> Iterator[None]:
    """A failing split or memory report (even out of memory) leaves the measured throughput in the line."""
    try:
        yield
    except Exception as error:  # any failure is reported in the line
        row[f"{what}_error"] = f"{type(error).__name__}: {error}"[:300]
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def profiled_split(engine: Any, cfg: Config, step: int, batch: torch.Tensor) -> dict[str, Any]:
    """One more training step under `torch.profiler`: its `step_split` and wall time (profiler included)."""
    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    start = time.perf_counter()
    with profile_ranges(engine.module), profile(activities=activities) as prof:
        train_step(engine, cfg, step, batch)
        if cuda:
            torch.cuda.synchronize()
    wall_ms = (time.perf_counter() - start) * 1e3
    return {"profiled_step_ms": round(wall_ms, 3), **step_split(list(prof.events()), cuda)}


def synchronizations(engine: Any, cfg: Config, step: int, batch: torch.Tensor) -> dict[str, int]:
    """Where one more training step makes the host wait for the device (CUDA only; `{}` on CPU): every
    synchronising call `torch.cuda.set_sync_debug_mode` reports (`.item()`, a tensor's truth value, a copy to
    the host, ...), counted per calling line (the file's last three path parts, `:line`). After each, the
    device runs dry until the host has queued new work: where the step's idle time comes from."""
    if not torch.cuda.is_available():
        return {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train_step(engine, cfg, step, batch)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    sites = Counter(
        "/".join(Path(w.filename).parts[-3:]) + f":{w.lineno}"
        for w in caught
        if "synchroniz" in str(w.message).lower()
    )
    return dict(sites.most_common())


TIMELINE_REGIONS = (  # (name, first mark, last mark) of a step's stretches, in order; L = the last layer
    ("start", "step<", "forward0<"),  # mode draw, embedding
    ("layers_forward", "forward0<", "forwardL>"),
    ("loss", "forwardL>", "forward_end"),  # final norm, logits, cross-entropy
    ("backward_start", "forward_end", "backwardL<"),  # the loss's backward up to the last layer
    ("layers_backward", "backwardL<", "backward0>"),
    ("backward_end", "backward0>", "backward_end"),  # embedding, DeepSpeed's gradient bookkeeping
    ("optimizer", "backward_end", "step>"),
)


def timeline(engine: Any, cfg: Config, step: int, batch: torch.Tensor) -> dict[str, Any]:
    """Where the device waits for the host: one more step with marks at its phase boundaries and at every
    transformer layer (forward: entry and exit; backward: when the gradient reaches each layer's input, and
    the last layer's output, by tensor hooks), each a host clock reading and, on CUDA, an event recorded
    there.
    `timeline_ms`: per region of `TIMELINE_REGIONS` the host time and (CUDA) the device time between its
    marks. Where a region's device time is no longer than its host time the device ran at the host's pace
    (it waited); where it is longer the host ran ahead and the device was the bound. `layer_forward_ms`,
    `layer_backward_ms`: per layer, device time on CUDA, host time on CPU. Without recomputation only (a
    recomputed layer marks its forward again inside the backward)."""
    cuda = torch.cuda.is_available()
    layers = engine.module.decoder.layers
    last = len(layers) - 1
    marks: dict[str, tuple[float, Any]] = {}

    def mark(label: str) -> None:
        event = torch.cuda.Event(enable_timing=True) if cuda else None
        if event is not None:
            event.record()
        marks[label] = (time.perf_counter(), event)

    def hooks(i: int) -> tuple[Callable, Callable]:
        def enter(module, args, kwargs):
            mark(f"forward{i}<")
            hidden = args[0] if args else kwargs["hidden_states"]
            if hidden.requires_grad:
                hidden.register_hook(lambda _: mark(f"backward{i}>"))

        def leave(module, args, kwargs, output):
            mark(f"forward{i}>")
            if i == last:  # the others' output is the next layer's input: its mark
                hidden = output[0] if isinstance(output, tuple) else output
                hidden.register_hook(lambda _: mark(f"backward{i}<"))

        return enter, leave

    handles = []
    for i, layer in enumerate(layers):
        enter, leave = hooks(i)
        handles += [
            layer.register_forward_pre_hook(enter, with_kwargs=True),
            layer.register_forward_hook(leave, with_kwargs=True),
        ]
    phase_ends = iter(("forward_end", "backward_end"))
    try:
        mark("step<")
        train_step(engine, cfg, step, batch, lambda: mark(next(phase_ends)))
        mark("step>")
        if cuda:
            torch.cuda.synchronize()
    finally:
        for handle in handles:
            handle.remove()

    def between(first: str, then: str, device: bool) -> float:
        (host_a, event_a), (host_b, event_b) = (marks[at.replace("L", str(last))] for at in (first, then))
        return round(event_a.elapsed_time(event_b) if device else (host_b - host_a) * 1e3, 3)

    regions = {}
    for name, first, then in TIMELINE_REGIONS:
        regions[name] = {"host": between(first, then, False)}
        if cuda:
            regions[name]["device"] = between(first, then, True)
    return {
        "timeline_ms": regions,
        "layer_forward_ms": [between(f"forward{i}<", f"forward{i}>", cuda) for i in range(len(layers))],
        "layer_backward_ms": [  # from the gradient at the layer's output (the next one's input) to its input
            between(f"backward{i + 1}>" if i < last else "backwardL<", f"backward{i}>", cuda)
            for i in range(len(layers))
        ],
    }


def memory_report(engine: Any, mode: str, batch: torch.Tensor) -> dict[str, Any]:
    """`saved_for_backward` of one training forward in `mode` (nothing to set in the anchor)."""
    set_attention_mode(engine.module, mode)
    inputs, labels = context_parallel_share(batch[:, :-1], batch[:, 1:])
    return saved_for_backward(engine.module, lambda: engine(inputs, None, None, labels=labels).float().mean())


def shapes(args: argparse.Namespace) -> list[tuple[int, int]]:
    """(sequence length, micro-batch) in ascending tokens: after an out-of-memory shape, larger ones are
    skipped."""
    return sorted(
        ((s, b) for s in args.seq_len for b in args.micro_batch), key=lambda sb: (sb[0] * sb[1], sb)
    )


def run_variant(args: argparse.Namespace, variant: str, common: dict, emit: Callable[[dict], None]) -> None:
    """Build the variant's engine once and measure every shape with it; free it completely afterwards."""
    before = _allocated_gib()
    cfg = bench_config(args, variant, max(args.seq_len), args.micro_batch[0])  # RoPE up to the longest
    torch.manual_seed(0)
    spec = anchor_block_spec(cfg.model.num_layers) if variant == "anchor" else None
    model = build_model(cfg, args.vocab_size, block_spec=spec)
    num_params = sum(p.numel() for p in model.parameters())
    if args.cross_entropy == "megatron_fused":  # read at every loss: setting it after the build is enough
        model.config.cross_entropy_loss_fusion, model.config.cross_entropy_fusion_impl = True, "native"
    comms = simulate_context_parallel(model) if args.simulate_cp > 1 else []
    engine = parallelize(cfg, model, dp=1, bf16=torch.cuda.is_available())
    AttachAuxLoss.set_grad_scale(1.0)
    failed_at = None
    try:
        for seq_len, micro_batch in shapes(args)[:: -1 if args.longest else 1]:
            base = {**common, "variant": variant, "seq_len": seq_len, "micro_batch": micro_batch}
            if failed_at is not None and seq_len * micro_batch >= failed_at and not args.longest:
                emit({**base, "oom": True, "skipped": True})
                continue
            cfg = bench_config(args, variant, seq_len, micro_batch)
            try:
                row = measure_shape(engine, cfg, num_params, args.vocab_size, args, variant, comms)
                emit(
                    {
                        **common,
                        **row,
                        "cross_entropy": args.cross_entropy
                        if args.cross_entropy == "megatron_fused"
                        else cfg.train.cross_entropy,
                        "overrides": args.overrides,
                        "mem_before_build_gib": before,
                    }
                )
                if args.longest:
                    break
            except torch.OutOfMemoryError as error:
                failed_at = seq_len * micro_batch
                with contextlib.suppress(Exception):
                    engine.zero_grad()
                gc.collect()
                torch.cuda.empty_cache()
                emit({**base, "oom": True, "error": str(error).splitlines()[0][:300]})
    finally:
        engine.destroy()  # DeepSpeed's hooks hold the model and optimizer otherwise (survives del + gc)
        del engine, model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def print_row(r: dict) -> None:
    if r.get("oom") or "error" in r:
        what = "out of memory" if r.get("oom") else r["error"]
        print(
            f"{r['variant']:8} {r.get('seq_len', '-'):>7} {r.get('micro_batch', '-'):>4}  {what}", flush=True
        )
        return
    mfu = f"{r['mfu']:.1%}" if r["mfu"] else "-"
    memory = f"{r['peak_mem_gib']:9.1f}" if r["peak_mem_gib"] is not None else "        -"
    split = r.get("split_share")
    top = (
        " ".join(f"{k}={v:.0%}" for k, v in sorted(split.items(), key=lambda kv: -kv[1])[:5]) if split else ""
    )
    print(
        f"{r['variant']:8} {r['seq_len']:>7} {r['micro_batch']:>4} {r['step_ms']:9.1f} "
        f"{r['tokens_per_s']:10.0f} {mfu:>6} {memory}  {top}",
        flush=True,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="configs/train/1b-8k.yaml", help="run config giving the model")
    parser.add_argument("--seq-len", type=int, nargs="+", default=[8192])
    parser.add_argument("--micro-batch", type=int, nargs="+", default=[1])
    parser.add_argument(
        "--vocab-size", type=int, default=128256, help="Llama-3 vocabulary, as the 1B release"
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per shape")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per shape")
    parser.add_argument(
        "--variants", nargs="+", default=["anchor", "full", "sparse", "ssa"], choices=VARIANTS
    )
    parser.add_argument("--split", action="store_true", help="profile one more step: time per part")
    parser.add_argument("--memory", action="store_true", help="report what each layer saves for backward")
    parser.add_argument(
        "--timeline", action="store_true", help="one more step marked per layer: where the device waits"
    )
    parser.add_argument(
        "--cross-entropy",
        choices=["megatron", "megatron_fused", "fused"],
        help="the loss: Megatron's logits + cross-entropy, the same with its native fusion, or "
        "ssa_pretrain.model.head's fused linear cross-entropy (Liger's kernel when installed); default: the "
        "run config's (train.cross_entropy), Megatron's for the anchor",
    )
    parser.add_argument(
        "--longest",
        action="store_true",
        help="shapes from the most tokens down; stop at the first that trains",
    )
    parser.add_argument(
        "--simulate-cp",
        type=int,
        default=1,
        metavar="P",
        help="measure context-parallel rank 0 of P in this one process (module docstring)",
    )
    parser.add_argument(
        "--out", type=Path, help="append the JSON lines here (e.g. docs/perf/bench_train.jsonl)"
    )
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.recompute=selective")
    args = parser.parse_intermixed_args(argv)  # overrides may come before and after options
    if args.simulate_cp < 1 or (args.simulate_cp > 1 and "anchor" in args.variants):
        parser.error("--simulate-cp needs P >= 1 and SSA variants (the anchor's attention has no CP)")
    return args


def main() -> None:
    args = parse_args()
    if args.simulate_cp > 1:
        simulated_cp_world(args.simulate_cp)
    else:
        init_distributed()
    cpu_shims.install()
    seed_model_parallel_rng(0)
    common = run_info(args.model)

    def emit(row: dict) -> None:
        print_row(row)
        if args.out:
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")

    print(
        f"{'variant':8} {'seq':>7} {'mbs':>4} {'step ms':>9} {'tokens/s':>10} {'MFU':>6} {'peak GiB':>9}"
        "  split"
    )
    for variant in args.variants:
        try:
            run_variant(args, variant, common, emit)
        except Exception as error:  # a variant that cannot run is a result too; the next one still runs
            emit(
                {
                    **common,
                    "variant": variant,
                    "oom": False,
                    "error": f"{type(error).__name__}: {error}"[:500],
                }
            )
    shutdown()


if __name__ == "__main__":
    main()
