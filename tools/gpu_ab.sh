#!/usr/bin/env bash
# A lever against the revision before it, in one GPU call: the same tools/bench_train.py command on an earlier
# revision's tree, then on this one, one after the other on the same GPU (a second call can land on another
# machine: the H200s measured ~3.5 % apart). The machine gets no .git, so the earlier tree travels as an
# archive inside this one (an untracked file is copied with the tree):
#   git archive -o rev.tar REV ssa_pretrain kernels tools configs pyproject.toml
#   GIT_COMMIT=$(git rev-parse --short HEAD) bash tools/gpu_ab.sh "$OUT" rev.tar REV -- \
#       --variants full ssa --micro-batch 2 --split
# The earlier tree runs from /tmp/ab-REV with PYTHONPATH in front of this tree's editable install (its
# `ssa_kernels` is linked to its kernels/), so each side imports its own code. Both append to OUT/ab.jsonl;
# each line carries its revision in "git". The summary prints the two sides' lines and tokens/s per variant
# (after / before). Exit status: the larger of the two sides' (0 when both ran).
set -uo pipefail
OUT=${1:?usage: gpu_ab.sh OUT ARCHIVE REV -- BENCH_TRAIN_ARGS...}
ARCHIVE=${2:?archive of the earlier revision}
REV=${3:?its name, e.g. the short commit}
shift 3
[ "${1:-}" = "--" ] && shift
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
. tools/gpu_setup.sh "$OUT" >/dev/null || { echo "setup failed (wheels / editable install)"; exit 1; }
export GIT_COMMIT=${GIT_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8} PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
BEFORE=/tmp/ab-$REV
rm -rf "$BEFORE" && mkdir -p "$BEFORE" && tar -xf "$ARCHIVE" -C "$BEFORE" && ln -s kernels "$BEFORE/ssa_kernels" \
    || { echo "cannot unpack $ARCHIVE"; exit 1; }
(cd "$BEFORE" && GIT_COMMIT=$REV PYTHONPATH=$BEFORE:$PYTHONPATH python3 tools/bench_train.py \
    --out "$OUT/ab.jsonl" "$@") > "$OUT/before.log" 2>&1
before=$?
python3 tools/bench_train.py --out "$OUT/ab.jsonl" "$@" > "$OUT/after.log" 2>&1
after=$?
python3 - "$OUT/ab.jsonl" "$REV" "$GIT_COMMIT" <<'EOF' | tee "$OUT/summary.txt"
import json, os, sys
path, before, after = sys.argv[1:]
rows = [json.loads(line) for line in open(path)] if os.path.exists(path) else []
key = lambda r: (r["variant"], r.get("seq_len"), r.get("micro_batch"), tuple(r.get("overrides") or ()))
for r in rows:
    print(r["git"], r["variant"], r.get("seq_len"), r.get("micro_batch"),
          "out of memory" if r.get("oom") else f"{r.get('step_ms')} ms {r.get('tokens_per_s')} tokens/s "
          f"{r.get('peak_mem_gib')} GiB")
old = {key(r): r for r in rows if r["git"] == before and "tokens_per_s" in r}
for r in rows:
    if r["git"] == after and "tokens_per_s" in r and key(r) in old:
        print(f"{r['variant']} seq {r['seq_len']} mbs {r['micro_batch']}: {after} / {before} tokens/s "
              f"{r['tokens_per_s'] / old[key(r)]['tokens_per_s']:.3f}")
EOF
exit $((before > after ? before : after))
