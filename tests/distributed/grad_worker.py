"""One forward + backward of the tiny SSA model under a parallel layout (run by torchrun from
test_parallel_gradients.py). Writes the loss, the alignment loss and every parameter gradient — averaged over
data x context parallel ranks, as DeepSpeed does, and with the TP shards reassembled — to `--out` (rank 0)."""

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
from tests.helpers import tiny_config

VOCAB, BATCH, SEQ_LEN = 512, 4, 64  # 512: the same padded embedding for TP=1 and TP=2


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--cp", type=int, default=1)
    parser.add_argument("--mode", choices=["full", "sparse"], required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    init_distributed(args.tp, args.cp)
    cpu_shims.install()
    cpu_shims.seed_model_parallel_rng(0)
    cfg = tiny_config(
        f"parallel.tp={args.tp}", f"parallel.cp={args.cp}", f"data.seq_len={SEQ_LEN}", *args.overrides
    )
    torch.manual_seed(0)
    model = build_model(cfg, VOCAB).train()
    set_attention_mode(model, args.mode)
    AttachAuxLoss.set_grad_scale(1.0)

    dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    cp_rank = ps.get_context_parallel_rank()
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ_LEN + 1), generator=torch.Generator().manual_seed(1))
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
        grad = param.grad.detach().clone()
        dist.all_reduce(grad, group=group)
        grads[name] = grad / replicas
    align = alignment_per_layer(model)
    values = torch.stack([loss.detach(), align.mean() if align is not None else torch.zeros(())])
    dist.all_reduce(values)
    values /= dist.get_world_size()
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
