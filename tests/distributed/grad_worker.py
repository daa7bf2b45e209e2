"""One forward + backward of the tiny SSA model under a parallel layout (run by torchrun from
test_parallel_gradients.py on CPU/gloo and test_parallel_gradients_gpu.py on CUDA/NCCL). Writes the loss, the
alignment loss and every parameter gradient — averaged over data x context parallel ranks, as DeepSpeed does,
and with the TP shards reassembled — to `--out` (rank 0), on the CPU and in fp32.

`--backend nccl --dtype bfloat16` is the GPU run: device `cuda:LOCAL_RANK`, NCCL, and the parameters in bf16
as the trainer has them on GPU (Megatron config in fp32, then DeepSpeed's bf16 mode casts the parameters, not
the buffers, to bf16; compute follows the parameters). The defaults are the CPU tests' run, unchanged.
"""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

from ssa_pretrain import cpu_shims
from ssa_pretrain.distributed import init_distributed, shutdown
from ssa_pretrain.hf.convert import gather_tensor_parallel
from ssa_pretrain.model.alignment import AttachAuxLoss
from ssa_pretrain.model.gpt import alignment_per_layer, build_model, set_attention_mode
from ssa_pretrain.parallel import split_sequence
from ssa_pretrain.parallelize import seed_model_parallel_rng
from tests.helpers import tiny_config

VOCAB, BATCH, SEQ_LEN = 512, 4, 64  # 512: the same padded embedding for TP=1 and TP=2
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

LAYOUTS = {  # case id -> (processes, layout options, attention mode); DP = processes / (TP x CP)
    "tp2-sparse": (2, ["--tp", "2"], "sparse"),
    "cp2-full": (2, ["--cp", "2"], "full"),  # the default `parallel.cp_comm`, allgather
    "cp2-sparse-ring": (2, ["--cp", "2", "parallel.cp_comm=ring"], "sparse"),
    "cp2-sparse-allgather": (2, ["--cp", "2", "parallel.cp_comm=allgather"], "sparse"),
    "cp4-sparse-ring": (4, ["--cp", "4", "parallel.cp_comm=ring"], "sparse"),
    "tp2xcp2-full-ring": (4, ["--tp", "2", "--cp", "2", "parallel.cp_comm=ring"], "full"),
    "dp2xcp2-sparse": (4, ["--cp", "2"], "sparse"),
    "cp8-sparse": (8, ["--cp", "8"], "sparse"),
    "dp2xtp2xcp2-sparse": (8, ["--tp", "2", "--cp", "2"], "sparse"),
}
"""The layouts the gradient tests run: every one on GPUs, those of up to 4 processes on CPU (gloo)."""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--cp", type=int, default=1)
    parser.add_argument("--mode", choices=["full", "sparse"], required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument(
        "--backend", choices=["auto", "nccl"], default="auto",
        help="auto: what init_distributed picks (gloo on a machine without CUDA: the CPU tests); "
        "nccl: require CUDA, one GPU per local rank",
    )  # fmt: skip
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32", help="parameters and compute")
    parser.add_argument(
        "--bf16-weights", action="store_true",
        help="round the parameters through bf16 (kept in --dtype): with float32, the fp32-arithmetic twin of "
        "the bf16 run, whose distance to the bf16 run is bf16's own arithmetic error",
    )  # fmt: skip
    parser.add_argument("--seq-len", type=int, default=SEQ_LEN)
    parser.add_argument("--batch", type=int, default=BATCH, help="sequences, split over data-parallel ranks")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides (after the tiny config's)")
    args = parser.parse_args()

    if args.backend == "nccl" and not torch.cuda.is_available():
        raise SystemExit("--backend nccl needs CUDA")
    env = init_distributed(args.tp, args.cp)
    if args.backend == "nccl" and dist.get_backend() != "nccl":
        raise SystemExit(f"--backend nccl, but the process group is {dist.get_backend()}")
    cpu_shims.install()
    seed_model_parallel_rng(0)
    cfg = tiny_config(
        f"parallel.tp={args.tp}", f"parallel.cp={args.cp}", f"data.seq_len={args.seq_len}", *args.overrides
    )
    torch.manual_seed(0)
    model = build_model(cfg, VOCAB).train()  # on env.device; fp32 master weights, as in the trainer
    dtype = DTYPES[args.dtype]
    for param in model.parameters() if dtype != torch.float32 or args.bf16_weights else ():
        # what DeepSpeed's bf16 mode does to the module: the parameters (not the buffers) to bf16
        param.data = param.data.to(torch.bfloat16 if args.bf16_weights else dtype).to(dtype)
    set_attention_mode(model, args.mode)
    AttachAuxLoss.set_grad_scale(1.0)

    dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    cp_rank = ps.get_context_parallel_rank()
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (args.batch, args.seq_len + 1), generator=gen).to(env.device)
    tokens = tokens.chunk(dp)[dp_rank]  # this data-parallel rank's sequences
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    if args.cp > 1:  # this context-parallel rank's share of every sequence
        inputs, labels = (split_sequence(x, cp_rank, args.cp, dim=1) for x in (inputs, labels))
    loss = model(inputs, None, None, labels=labels).float().mean()
    loss.backward()

    group = ps.get_data_parallel_group(with_context_parallel=True)
    replicas = ps.get_data_parallel_world_size(with_context_parallel=True)
    grads = {}
    for name, param in model.named_parameters():
        # fp32 before the reduction: the comparison measures the layout, not the rounding of a bf16 sum
        grad = param.grad.detach().to(torch.float32, copy=True)
        dist.all_reduce(grad, group=group)
        grads[name] = (grad / replicas).cpu()
    align = alignment_per_layer(model)
    values = torch.stack([loss.detach(), align.float().mean() if align is not None else loss.new_zeros(())])
    dist.all_reduce(values)
    values = (values / dist.get_world_size()).cpu()
    shards = [None] * dist.get_world_size()
    dist.all_gather_object(shards, (ps.get_tensor_model_parallel_rank(), dp_rank, cp_rank, grads))
    if dist.get_rank() == 0:
        by_tp_rank = [s[3] for s in sorted(shards, key=lambda s: s[:3]) if s[1] == 0 and s[2] == 0]
        torch.save(
            {"loss": values[0], "align": values[1], "grads": gather_tensor_parallel(by_tp_rank)}, args.out
        )
    shutdown()


if __name__ == "__main__":
    main()
