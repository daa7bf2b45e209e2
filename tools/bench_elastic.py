"""Benchmark of elastic inference on one GPU: prefill time all-full vs the routers' mix vs all-sparse.

    python tools/bench_elastic.py                                   # 1B shape, random weights, 32K and 128K
    python tools/bench_elastic.py --lengths 32768 --append docs/perf/bench_elastic.jsonl
    python tools/bench_elastic.py --hf-dir runs/40m/hf-elastic      # a trained elastic export instead

The model is the HF export's (`SSAForCausalLM`, bf16, the fused `ssa_kernels` prefill) at the shape of
`--config` with random weights and a router per layer (`pool_tokens` 100, hidden 4x head dim), or a trained
elastic export. Per length, one sequence, `logits_to_keep=1` (the prefill of generation): the median time of
a forward in `full` mode, in `sparse` mode, with the routers choosing (Ω = their share of sparse heads), and
with head modes pinned to Ω = 0.5 (alternating heads); the routers' own cost is the median time of all
layers' router calls on that prompt's keys. Speed only: random weights say nothing about quality.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import triton
from bench_info import run_info

ROUTER = {"pool_tokens": 100, "hidden_multiple": 4}


def bench(fn, rep_ms: int = 2000) -> float:
    """Median milliseconds of `fn` (CUDA events, after warm-up)."""
    return triton.testing.do_bench(fn, warmup=200, rep=rep_ms, return_mode="median")


def build_model(args: argparse.Namespace):
    from ssa_pretrain.hf.modeling_ssa import SSAForCausalLM

    if args.hf_dir:
        return SSAForCausalLM.from_pretrained(args.hf_dir, dtype=torch.bfloat16).cuda().eval()
    from ssa_pretrain.config import load_config
    from ssa_pretrain.hf.convert import hf_config

    config = hf_config(load_config(args.config), args.vocab_size, torch.bfloat16)
    config.router = ROUTER
    config.inference_mode = "elastic"
    torch.manual_seed(0)
    with torch.device("cuda"):
        return SSAForCausalLM(config).to(torch.bfloat16).eval()


@torch.no_grad()
def measure(model, length: int) -> dict:
    cfg, device = model.config, model.device
    ids = torch.randint(4, cfg.vocab_size, (1, length), device=device)

    def prefill(mode: str, head_modes=None):
        cfg.inference_mode = mode
        return lambda: model(ids, use_cache=False, logits_to_keep=1, head_modes=head_modes)

    row = {"length": length}
    row["full_ms"] = bench(prefill("full"))
    row["sparse_ms"] = bench(prefill("sparse"))
    prefill("elastic")()
    routed = torch.stack(model.model.last_head_modes)  # [L, 1, HKV]
    row["routed_omega"] = routed.float().mean().item()
    row["elastic_routed_ms"] = bench(prefill("elastic"))
    half = torch.zeros_like(routed)
    half[..., ::2] = True  # every other kv head sparse: Ω = 0.5
    row["elastic_half_ms"] = bench(prefill("elastic", half))
    # the routers alone, on this prompt's keys (pre-RoPE), all layers
    keys = torch.randn(1, length, cfg.num_key_value_heads, cfg.head_dim, device=device, dtype=model.dtype)
    pos = torch.arange(length, device=device)[None]
    layers = [layer.self_attn.router for layer in model.model.layers]
    row["router_ms"] = bench(lambda: [r.decide(r(keys, pos)) for r in layers])
    cfg.inference_mode = "elastic"
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/train/1b-8k.yaml", help="model shape (random weights)")
    parser.add_argument("--hf-dir", help="a trained elastic export instead of random weights")
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--lengths", type=int, nargs="+", default=[32768, 131072])
    parser.add_argument("--append", type=Path, help="append the JSON lines to this file")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_elastic.py needs a CUDA GPU", file=sys.stderr)
        return 2
    model = build_model(args)
    info = run_info(args.hf_dir or args.config)
    for length in args.lengths:
        line = json.dumps({**info, **measure(model, length)})
        print(line, flush=True)
        if args.append:
            with args.append.open("a") as f:
                f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
