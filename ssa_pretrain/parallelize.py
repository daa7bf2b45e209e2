"""All parallel wiring of a training run, in the order it is applied: TP → SP → recompute → CP → ZeRO.

Megatron-Core lays a model out while it builds it, so the first four steps are TransformerConfig fields
(`transformer_parallel_config`, which `build_model` hands to Megatron); `parallelize` then applies what is
left to the built model, and `context_parallel_share` splits each batch. The process groups come from
`ssa_pretrain.distributed` (Megatron's `initialize_model_parallel(tp, cp)`); the context-parallel attention
itself lives in `ssa_pretrain.parallel`.

1. Tensor parallel: Megatron's column/row-parallel linears shard heads, kv heads, the per-head gate and the
   MLP. The master weights are initialised on the CPU and split, so every TP size starts from the same
   weights; each TP rank has its own RNG stream (`seed_model_parallel_rng`).
2. Sequence parallel (TP > 1): outside attention and MLP each TP rank holds `1/tp` of the tokens; the norm
   weights' partial gradients are summed over TP (`sum_sequence_parallel_grads`).
3. Activation recompute: Megatron's, of the core attention (`selective`) or of whole layers (`full`).
4. Context parallel: `parallel.cp_comm` travels to `SSACoreAttention` as Megatron's `cp_comm_type`; the core
   attention takes its CP group from Megatron (`core_attention_groups`); each CP rank trains on chunks `r` and
   `2cp-1-r` of every sequence (`context_parallel_share`), at the global positions Megatron's RoPE takes.
5. ZeRO: the DeepSpeed engine (stage 1 or 2, `build_engine`) reduces gradients over data parallel × context
   parallel (`MegatronMPU`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.tensor_parallel import random as mc_random

from ssa_pretrain import checkpoint, quiet
from ssa_pretrain.config import Config, ConfigError, read_deepspeed_json
from ssa_pretrain.optim import build_optimizer, build_scheduler
from ssa_pretrain.parallel import CP_COMM, split_sequence
from ssa_pretrain.parallel.context import CpComm

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine
    from megatron.core.models.gpt import GPTModel
    from megatron.core.process_groups_config import ProcessGroupCollection


def transformer_parallel_config(cfg: Config) -> dict[str, Any]:
    """The TransformerConfig fields of steps 1-4: the layout Megatron builds the layers in."""
    parallel = cfg.parallel
    return dict(
        # 1. Tensor parallel
        tensor_model_parallel_size=parallel.tp,
        use_cpu_initialization=True,  # identical weights for every TP size (the master weight is split)
        # 2. Sequence parallel: a layout, not a model property (`ssa convert` rebuilds a run's model at TP=1)
        sequence_parallel=parallel.sequence_parallel and parallel.tp > 1,
        # 3. Activation recompute
        **RECOMPUTE[cfg.train.recompute],
        # 4. Context parallel
        context_parallel_size=parallel.cp,
        cp_comm_type=MEGATRON_CP_COMM[parallel.cp_comm],  # handed to SSACoreAttention by Megatron
    )


def parallelize(cfg: Config, model: GPTModel, dp: int, bf16: bool) -> DeepSpeedEngine:
    """The DeepSpeed engine that trains `model` (built by `build_model`) on its layout.

    `dp` is the data-parallel size without CP (gradient accumulation); `bf16` DeepSpeed's bf16 mode."""
    # 1. Tensor parallel, 3. recompute, 4. context parallel: built into the layers by Megatron.
    # 2. Sequence parallel: every rank accumulates the full norm-weight gradients.
    if model.config.sequence_parallel:
        sum_sequence_parallel_grads(model, parallel_state.get_tensor_model_parallel_group())
    # 5. ZeRO over data parallel × context parallel.
    return build_engine(cfg, model, dp, bf16)


# ------------------------------------------------------------------------------------ 1. tensor parallel


def seed_model_parallel_rng(seed: int) -> None:
    """Megatron's `model_parallel_cuda_manual_seed` (distinct streams per TP rank), on CPU or CUDA.

    On CPU the tracker is the CPU one that `cpu_shims.install()` put in Megatron's place."""
    if torch.cuda.is_available():
        mc_random.model_parallel_cuda_manual_seed(seed)
        return
    tracker = mc_random.get_cuda_rng_tracker()
    tracker.reset()
    tracker.add(
        mc_random._MODEL_PARALLEL_RNG_TRACKER_NAME,
        seed + 2718 + parallel_state.get_tensor_model_parallel_rank(),
    )


# ---------------------------------------------------------------------------------- 2. sequence parallel


def sum_sequence_parallel_grads(model: torch.nn.Module, tp_group: dist.ProcessGroup) -> None:
    """Make every gradient of a parameter marked `sequence_parallel` (the RMSNorm weights) the full one.

    Under sequence parallelism each tensor-parallel rank runs the norms on its own slice of the tokens, so
    the autograd gradient of a norm weight is a partial sum over that slice. Megatron sums them over TP in
    `finalize_model_grads`, part of its own DDP path, which we do not use; DeepSpeed reduces over data
    parallel only, and takes each gradient in a post-accumulation hook during backward. So the sum
    happens here, in a hook that runs before accumulation: every rank accumulates the full gradient, as it
    would without sequence parallelism, and DeepSpeed (reduction, norm, clipping, step) sees only full
    gradients. One all-reduce of `hidden_size` values per norm per backward, summed in fp32.
    """

    def full_grad(grad: torch.Tensor) -> torch.Tensor:
        total = grad.to(torch.float32, copy=True)
        dist.all_reduce(total, group=tp_group)
        return total.to(grad.dtype)

    for param in model.parameters():
        if getattr(param, "sequence_parallel", False):
            param.register_hook(full_grad)


# ----------------------------------------------------------------------------------------- 3. recompute

RECOMPUTE: dict[str, dict[str, Any]] = {  # train.recompute -> Megatron's TransformerConfig fields
    "none": {},
    "selective": dict(recompute_granularity="selective", recompute_modules=["core_attn"]),
    "full": dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1),
}


# ---------------------------------------------------------------------------------- 4. context parallel

MEGATRON_CP_COMM: dict[str, str] = {"ring": "p2p", "allgather": "all_gather"}  # its `cp_comm_type` names


def cp_comm_from_megatron(cp_comm_type: str | None) -> CpComm:
    """Our `comm` for Megatron-Core's `cp_comm_type` (`"p2p"` = ring, `"all_gather"`; None = ring)."""
    by_megatron = {name: ours for ours, name in MEGATRON_CP_COMM.items()}
    if cp_comm_type is None:
        return "ring"
    if cp_comm_type not in by_megatron:
        raise ValueError(
            f"SSA context parallelism supports cp_comm_type {' or '.join(by_megatron)}, got {cp_comm_type!r} "
            f"(set parallel.cp_comm to {' or '.join(CP_COMM)})"
        )
    return by_megatron[cp_comm_type]  # type: ignore[return-value]


def core_attention_groups(pg_collection: ProcessGroupCollection | None) -> tuple[int, dist.ProcessGroup]:
    """(TP size, CP group) of a core attention: from Megatron's `pg_collection` when Megatron builds the
    layer, else Megatron's global groups (a core attention built on its own)."""
    if pg_collection is not None:
        return pg_collection.tp.size(), pg_collection.cp
    return parallel_state.get_tensor_model_parallel_world_size(), parallel_state.get_context_parallel_group()


def context_parallel_share(*batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """This CP rank's share of `[batch, seq]` tensors: chunks `r` and `2cp-1-r` of every sequence (RoPE
    takes the same positions); the tensors as they are without context parallelism."""
    cp = parallel_state.get_context_parallel_world_size()
    if cp == 1:
        return batch
    rank = parallel_state.get_context_parallel_rank()
    return tuple(split_sequence(x, rank, cp, dim=1) for x in batch)


# ------------------------------------------------------------------------------------------------ 5. ZeRO


class MegatronMPU:
    """The model-parallel view DeepSpeed expects (`mpu=`), backed by Megatron's parallel_state.

    Gradients are reduced over data parallel x context parallel: CP ranks hold different tokens of the
    same sequences, so their gradients add up like those of data-parallel ranks.
    """

    get_model_parallel_rank = staticmethod(parallel_state.get_tensor_model_parallel_rank)
    get_model_parallel_world_size = staticmethod(parallel_state.get_tensor_model_parallel_world_size)
    get_model_parallel_group = staticmethod(parallel_state.get_tensor_model_parallel_group)

    @staticmethod
    def get_data_parallel_group():
        return parallel_state.get_data_parallel_group(with_context_parallel=True)

    @staticmethod
    def get_data_parallel_rank() -> int:
        return parallel_state.get_data_parallel_rank(with_context_parallel=True)

    @staticmethod
    def get_data_parallel_world_size() -> int:
        return parallel_state.get_data_parallel_world_size(with_context_parallel=True)


def deepspeed_config(cfg: Config, dp: int, bf16: bool) -> dict[str, Any]:
    """The DeepSpeed JSON of `train.deepspeed_config` with its "auto" values filled from our config."""
    path, ds = cfg.train.deepspeed_config, read_deepspeed_json(cfg.train)
    train = cfg.train
    auto = {
        # DeepSpeed's data-parallel group is DP x CP and it counts a micro-batch on every rank of it.
        "train_batch_size": train.global_batch_size * cfg.parallel.cp,
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": train.global_batch_size // (train.micro_batch_size * dp),
        "gradient_clipping": train.grad_clip,
    }
    for key, value in auto.items():
        if ds.get(key, "auto") == "auto":
            ds[key] = value
        elif ds[key] != value:
            raise ConfigError(
                f'{path}: {key}={ds[key]} contradicts the run config ({value}); set it to "auto"'
            )
    ds.setdefault("bf16", {})
    if ds["bf16"].get("enabled", "auto") == "auto":
        ds["bf16"]["enabled"] = bf16
    zero = ds.get("zero_optimization", {})
    stage = zero.get("stage", 0)
    if stage not in (1, 2):
        raise ConfigError(f"{path}: zero_optimization.stage={stage}; ssa-pretrain uses ZeRO stage 1 or 2")
    if ds["bf16"].get("check_grad_overflow") is False or zero.get("compute_grad_norm") is False:
        raise ConfigError(  # without them DeepSpeed applies an update with non-finite gradients
            f"{path}: bf16.check_grad_overflow and zero_optimization.compute_grad_norm must stay true "
            "(a non-finite gradient norm then skips the update)"
        )
    return ds


def build_engine(cfg: Config, model: torch.nn.Module, dp: int, bf16: bool) -> DeepSpeedEngine:
    """The DeepSpeed engine around `model`: torch AdamW + warm-up/cosine schedule, ZeRO over data parallel."""
    import deepspeed  # after the CPU shims: DeepSpeed picks its accelerator at import

    optimizer = build_optimizer(model, cfg.train)
    with quiet.deepspeed_prints():
        engine, *_ = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=build_scheduler(optimizer, cfg.train),
            config=deepspeed_config(cfg, dp, bf16),
            mpu=MegatronMPU(),
            dist_init_required=False,
        )
    checkpoint.use_safe_checkpoint_files(engine)
    return engine
