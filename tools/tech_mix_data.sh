#!/usr/bin/env bash
# The tech-mix shards of the 2K replication runs in DATA (default /tmp/tech-mix), built once (16 workers)
# from the corpus and tokenizer in data/build/, with the tokenizer copied beside them, where training
# looks for it.
# Used by tools/gpu_replication.sh and tools/gpu_stability.sh:
#   bash tools/tech_mix_data.sh DATA            # prints the shard summary when it builds them
set -euo pipefail
DATA=${1:-/tmp/tech-mix}
if [ ! -f "$DATA/train/manifest.json" ]; then
    ssa data shards data/build/tech-mix.jsonl.xz --tokenizer data/build/tech-mix-tokenizer --out "$DATA" \
        --seq-len 2048 --valid-fraction 0.01 --workers 16 2>&1 | tail -n 3
fi
[ -e "$DATA/tokenizer" ] || cp -r data/build/tech-mix-tokenizer "$DATA/tokenizer"
