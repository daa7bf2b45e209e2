#!/usr/bin/env bash
# Training efficiency on one GPU (torch 2.11, Python 3.12, no megatron/deepspeed: the wheels in .whl/,
# installed by tools/gpu_setup.sh), in one run of about 5 minutes:
#   bash tools/gpu_efficiency.sh "$OUT"
# Every part appends JSON lines to OUT/bench_efficiency.jsonl as soon as each shape is measured
# (tools/bench_train.py: throughput, MFU, peak memory, the profiler split of a step, the saved-for-backward
# report; an out-of-memory shape is a line with "oom": true):
# (0) the fused alignment loss against its reference on this GPU (ALIGNMENT_GPU_TEST of gpu_setup.sh)
#     before any timed step uses it: if it fails, every part below runs with
#     SSA_KERNELS_REFERENCE=alignment_loss (the reference) and the summary says so; then its kernels timed
#     against the reference (tools/bench_attention.py --alignment -> OUT/bench_alignment.jsonl); the GPU tests
#     of the fused loss and the compiled element-wise ops against the plain ones;
# (a) 1B at 8,192 tokens, micro-batch 1 and 2: ssa, full, anchor, sparse (in that order: the part may be
#     cut by its timeout, the first ones matter most), with --split --memory;
# (b) ~40M at 2,048 tokens (8 layers x 512, 8 q / 2 kv heads, FFN 1536, 32K vocabulary: 40.6M parameters),
#     micro-batch 32: full, sparse, ssa, with --split --memory;
# (c) the longest sequence that trains: 1B ssa with train.recompute=full, trying 64K, 32K, 16K in turn
#     (micro-batch 1) until one fits, with whatever time is left;
# (d) if time is still left, the levers, each against the same variant and shape of (a), measured by their
#     absence where they are the default: full and ssa at micro-batch 2 with --cross-entropy megatron
#     (Megatron's logits + cross-entropy instead of the recipes' fused linear cross-entropy: Liger's kernel
#     when its wheel is in .whl — `pip download --no-deps liger-kernel==0.8.5 -d .whl`, pure Python, needs
#     only torch, triton, packaging — else the chunked PyTorch path) and with Megatron's own fused
#     cross-entropy (--cross-entropy megatron_fused: its compiled vocab-parallel loss); full and ssa at
#     micro-batch 2 with train.fused_elementwise=false (the default compiles SwiGLU, the output gate and
#     RoPE with the attention's layout copy); full at micro-batch 2 with ZeRO-2
#     (configs/deepspeed/zero2.json: gradients reduced into their partitions during backward).
# Each part runs under `timeout`, capped so that the parts after it keep their share of BUDGET (default
# 540 s from the start of this script, setup included); a part with less than 25 s is skipped and said so.
# OUT/summary.txt: what ran, how long, how it ended, and the table. Exit status 0 when nothing failed.
# Environment: BUDGET (s), GIT_COMMIT (recorded in the lines; for a copy of the tree without .git).
set -uo pipefail
OUT=${1:-/tmp/gpu-efficiency}
BUDGET=${BUDGET:-540}
GRACE=5  # seconds between timeout's TERM and KILL
mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
JSONL=$OUT/bench_efficiency.jsonl
SCRIPT=gpu_efficiency MIN_PART_S=25
. tools/gpu_parts.sh  # say, part
# bench NAME MAX RESERVE COMMAND...: a part whose result lines also go into the summary
bench() {
    part "$@"
    local rc=$?
    grep -E "^(variant|anchor|full|sparse|ssa) " "$OUT/logs/$1.log" 2>/dev/null | tee -a "$OUT/summary.txt"
    return "$rc"
}

. tools/gpu_setup.sh "$OUT" >/dev/null || { say "setup failed (wheels / editable install)"; exit 1; }
say "setup: $(cat "$OUT/versions.txt")"
export GIT_COMMIT=${GIT_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8} PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
BENCH=(python3 tools/bench_train.py --out "$JSONL")

# (0) the fused alignment loss on this GPU, before anything trusts it
part alignment_test 60 250 "${ALIGNMENT_GPU_TEST[@]}" \
    || { say "fused alignment loss failed its GPU test: the parts below use its reference"
         export SSA_KERNELS_REFERENCE=alignment_loss; }
part fused_ops_test 60 440 python3 -m pytest -q -m gpu -p no:cacheprovider tests/model/test_head.py \
    tests/model/test_gpu.py -k "megatrons or fused or elementwise" \
    || say "the fused loss or the compiled element-wise ops failed their GPU tests: read their lines below as suspect"
part alignment_bench 40 420 python3 tools/bench_attention.py --alignment --append "$OUT/bench_alignment.jsonl" \
    && tail -n 12 "$OUT/logs/alignment_bench.log" | tee -a "$OUT/summary.txt"

# (a) 1B, 8K: every variant, micro-batch 1 and 2
bench 1b_8k 220 200 "${BENCH[@]}" --variants ssa full anchor sparse --micro-batch 1 2 --warmup 2 --steps 4 \
    --split --memory

# (b) ~40M, 2K, micro-batch 32 (the ablation scale)
bench 40m_2k 60 150 "${BENCH[@]}" --variants full sparse ssa --seq-len 2048 --micro-batch 32 --vocab-size 32000 \
    --warmup 2 --steps 5 --split --memory model.num_layers=8 model.hidden_size=512 \
    model.num_attention_heads=8 model.num_kv_heads=2 model.ffn_hidden_size=1536

# (c) the longest sequence for ssa with full recomputation: from 64K down, stops at the first that fits
bench seq_sweep 90 110 "${BENCH[@]}" --variants ssa --seq-len 16384 32768 65536 --longest \
    --micro-batch 1 --warmup 1 --steps 2 train.recompute=full

# (d) the levers, if time is left: Megatron's loss (what the fused linear cross-entropy saves), the plain
#     element-wise ops (what compiling them saves), ZeRO-2
bench megatron_loss 60 90 "${BENCH[@]}" --variants full ssa --micro-batch 2 --warmup 2 --steps 4 \
    --cross-entropy megatron
bench megatron_fused_loss 50 60 "${BENCH[@]}" --variants full ssa --micro-batch 2 --warmup 2 --steps 4 \
    --cross-entropy megatron_fused
bench elementwise_off 50 25 "${BENCH[@]}" --variants full ssa --micro-batch 2 --warmup 2 --steps 4 \
    train.fused_elementwise=false
bench zero2 40 0 "${BENCH[@]}" --variants full --micro-batch 2 --warmup 2 --steps 4 \
    train.deepspeed_config=configs/deepspeed/zero2.json

{
    echo "================================ summary (${SECONDS}s of ${BUDGET}s)"
    python3 - "$JSONL" <<'EOF'
import json, os, sys
rows = [json.loads(line) for line in open(sys.argv[1])] if os.path.exists(sys.argv[1]) else []
shape = lambda r: tuple(o for o in r.get("overrides") or () if o.startswith("model."))  # the 40M model
setup = lambda r: (r.get("seq_len"), r.get("micro_batch"), r.get("recompute"), shape(r))
default_loss = lambda r: "megatron" if r["variant"] == "anchor" else "fused"  # bench_train's defaults
lever = lambda r: (*([r["cross_entropy"]] if r.get("cross_entropy") != default_loss(r) else []),
                   *[o for o in r.get("overrides") or () if "recompute" not in o and o not in shape(r)])
ok = [r for r in rows if "step_ms" in r]
print(f"{'model':>6} {'variant':8} {'seq':>6} {'mbs':>4} {'ms':>8} {'tok/s':>9} {'MFU':>6} {'GiB':>6} "
      f"{'saved/layer MiB':>15}  split (top 5)")
for r in rows:
    if "step_ms" not in r:
        print(f"{'':>6} {r['variant']:8} {r.get('seq_len', '-'):>6} {r.get('micro_batch', '-'):>4}  "
              + ("out of memory" if r.get("oom") else r.get("error", "?")))
        continue
    mem = r.get("memory") or {}
    saved = "/".join(f"{sum(m['saved_per_layer_mib']) / max(len(m['saved_per_layer_mib']), 1):.0f}"
                     for m in mem.values())
    split = sorted((r.get("split_share") or {}).items(), key=lambda kv: -kv[1])[:5]
    extra = "".join(f" {lever}" for lever in lever(r)) + ("" if r.get("recompute") == "none" else
                                                          f" recompute={r.get('recompute')}")
    print(f"{r['params'] / 1e6:5.0f}M {r['variant']:8} {r['seq_len']:>6} {r['micro_batch']:>4} "
          f"{r['step_ms']:8.1f} {r['tokens_per_s']:9.0f} {(r['mfu'] or 0):6.1%} {(r['peak_mem_gib'] or 0):6.1f} "
          f"{saved:>15}  " + " ".join(f"{k}={v:.0%}" for k, v in split) + extra)
print("ratios at the same shape and recomputation, every variant with its default loss (tokens/s, peak memory):")
for r in ok:
    for base in ("full", "anchor"):
        ref = next((x for x in ok if x["variant"] == base and setup(x) == setup(r) and not lever(x)
                    and abs(x["params"] - r["params"]) < 0.05 * r["params"]), None)
        if ref and r["variant"] not in (base, "anchor") and not lever(r):
            print(f"  {r['params'] / 1e6:5.0f}M {r['variant']:6} / {base:6} {setup(r)[:3]}: "
                  f"speed {r['tokens_per_s'] / ref['tokens_per_s']:.3f}, "
                  f"memory {(r['peak_mem_gib'] or 0) / (ref['peak_mem_gib'] or 1):.3f}")
    if lever(r):  # a lever (another loss, an override) against the same variant without it
        ref = next((x for x in ok if x["variant"] == r["variant"] and not lever(x)
                    and setup(x)[:2] == setup(r)[:2] and x["params"] == r["params"]), None)
        if ref:
            print(f"  {r['params'] / 1e6:5.0f}M {r['variant']:6} {' '.join(lever(r))} / default: "
                  f"speed {r['tokens_per_s'] / ref['tokens_per_s']:.3f}, "
                  f"memory {(r['peak_mem_gib'] or 0) / (ref['peak_mem_gib'] or 1):.3f}")
EOF
} 2>&1 | tee -a "$OUT/summary.txt"
exit "$failed"
