"""Training-step throughput on one GPU: the same model with `full`, `sparse` and `ssa` attention.

The real training path — Megatron GPT with the SSA spec inside the DeepSpeed engine (bf16, ZeRO-1, torch
AdamW), forward + backward + optimizer step — on random tokens. `full` is the baseline: Megatron with
cuDNN/flash SDPA attention (what `ssa_kernels.full_attention` dispatches to on CUDA); `ssa` runs both
branches every step plus the alignment loss. Prints a table and one JSON line per variant.

    python tools/bench_train.py                                  # 1b, 8192 tokens, micro-batch 1
    python tools/bench_train.py --model configs/train/300m-8k.yaml --micro-batch 2 \
        --out docs/perf/bench_train.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from bench_info import run_info

from ssa_pretrain import cpu_shims
from ssa_pretrain.config import load_config
from ssa_pretrain.distributed import init_distributed, shutdown
from ssa_pretrain.metrics import flops_per_token, peak_flops
from ssa_pretrain.model.alignment import AttachAuxLoss
from ssa_pretrain.model.gpt import build_model, set_attention_mode
from ssa_pretrain.model.modes import choose_mode
from ssa_pretrain.trainer import build_engine


def measure(
    config: str, variant: str, seq_len: int, micro_batch: int, vocab: int, steps: int, overrides: list[str]
) -> dict:
    """Median step time of `steps` timed steps after two warm-up steps."""
    cfg = load_config(
        config,
        [
            f"ssa.variant={variant}",
            f"data.seq_len={seq_len}",
            f"train.micro_batch_size={micro_batch}",
            f"train.global_batch_size={micro_batch}",
            "train.precision=bf16",
            "train.deepspeed_config=configs/deepspeed/zero1.json",
            *overrides,
        ],
    )
    torch.manual_seed(0)
    model = build_model(cfg, vocab)
    num_params = sum(p.numel() for p in model.parameters())
    engine = build_engine(cfg, model, dp=1, bf16=True)
    AttachAuxLoss.set_grad_scale(1.0)
    torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(steps + 2):
        set_attention_mode(engine.module, choose_mode(cfg.ssa, cfg.train.seed, step, 0, 1))
        tokens = torch.randint(0, vocab, (micro_batch, seq_len + 1), device="cuda")
        torch.cuda.synchronize()
        start = time.perf_counter()
        loss = engine(tokens[:, :-1], None, None, labels=tokens[:, 1:]).float().mean()
        engine.backward(loss)
        engine.step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    step_s = sorted(times[2:])[len(times[2:]) // 2]
    tokens_per_s = micro_batch * seq_len / step_s
    peak = peak_flops(torch.device("cuda"))
    result = {
        "variant": variant,
        "params": num_params,
        "seq_len": seq_len,
        "micro_batch": micro_batch,
        "step_ms": step_s * 1e3,
        "tokens_per_s": tokens_per_s,
        "mfu": flops_per_token(cfg, num_params) * tokens_per_s / peak if peak else None,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
        "block_size": cfg.ssa.block_size,
        "block_count": cfg.ssa.block_count,
        "recompute": cfg.train.recompute,
    }
    del engine, model
    torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="configs/train/1b-8k.yaml", help="run config giving the model")
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--micro-batch", type=int, default=1)
    parser.add_argument(
        "--vocab-size", type=int, default=128256, help="Llama-3 vocabulary, as the 1B release"
    )
    parser.add_argument(
        "--steps", type=int, default=6, help="timed steps per variant (after 2 warm-up steps)"
    )
    parser.add_argument("--variants", nargs="+", default=["full", "sparse", "ssa"])
    parser.add_argument(
        "--out", type=Path, help="append the JSON lines here (e.g. docs/perf/bench_train.jsonl)"
    )
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.recompute=selective")
    args = parser.parse_args()

    init_distributed()
    cpu_shims.install()
    cpu_shims.seed_model_parallel_rng(0)
    common = run_info(args.model)
    rows = [
        {
            **common,
            **measure(
                args.model, v, args.seq_len, args.micro_batch, args.vocab_size, args.steps, args.overrides
            ),
        }
        for v in args.variants
    ]
    print(f"{'variant':8} {'step ms':>9} {'tokens/s':>10} {'MFU':>6} {'peak GiB':>9}")
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] else "-"
        memory = r["peak_mem_gib"]
        print(f"{r['variant']:8} {r['step_ms']:9.1f} {r['tokens_per_s']:10.0f} {mfu:>6} {memory:9.1f}")
    for r in rows:
        print(json.dumps(r))
    if args.out:
        with args.out.open("a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    shutdown()


if __name__ == "__main__":
    main()
