#!/usr/bin/env bash
# Quality benchmark: how much a student learns from each Fashion-MNIST training set, distilled from the
# shipped teacher (weights/fashion_mnist_resnet18_w16.safetensors) with one student recipe for all rows:
#   (a) CDA images        cda-engine run                      (curriculum crops, the fashion-mnist preset)
#   (b) SRe2L images      cda-engine run --milestone 0        (fixed crop scale 0.08..1)
#   (c) random real       cda-engine sample                   (a class-balanced random subset, same size)
#   (d) full train set    all 60000 images                    (fewer epochs: FULL_EPOCHS)
# Every set is validated with `cda-engine validate` (online teacher soft labels on the student's own
# RandomResizedCrop + flip + CutMix views, KD loss at temperature T, AdamW, per-epoch cosine) for each
# seed in SEEDS; benches/quality_fashion_mnist.py prints the table (mean, std and each seed's top-1).
#
#   benches/quality_fashion_mnist.sh                       # IPC 10 and 50, seeds 0 1 2
#   IPCS=10 SEEDS="0 1 2" FULL=0 benches/quality_fashion_mnist.sh
#
# Environment: OUT (default target/quality), IPCS, SEEDS, EPOCHS (300), BATCH (student batch, 50),
# T (20), MIN_SCALE (0.08), LR (1e-3), FULL (1: run row d), FULL_EPOCHS (4), FULL_BATCH (256),
# THREADS (0 = all cores), EXTRA (more validate flags). Finished runs are skipped on rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-target/quality}
IPCS=${IPCS-"10 50"}  # IPCS="" skips the distilled rows (e.g. only the full set)
SEEDS=${SEEDS:-"0 1 2"}
EPOCHS=${EPOCHS:-300}
BATCH=${BATCH:-50}
T=${T:-20}
MIN_SCALE=${MIN_SCALE:-0.08}
LR=${LR:-1e-3}
FULL=${FULL:-1}
FULL_EPOCHS=${FULL_EPOCHS:-4}
FULL_BATCH=${FULL_BATCH:-256}
THREADS=${THREADS:-0}
EXTRA=${EXTRA:-}

cargo build --release --quiet
BIN=${CARGO_TARGET_DIR:-target}/release/cda-engine
mkdir -p "$OUT/records"
RESULTS="$OUT/results.jsonl"
touch "$RESULTS"

# validate NAME IMAGES EPOCHS BATCH SEED
validate() {
    local name=$1 images=$2 epochs=$3 batch=$4 seed=$5
    local rec="$OUT/records/${name}_seed${seed}.json"
    if grep -q "\"run\":\"${name}_seed${seed}\"" "$RESULTS"; then
        echo "skip $name seed $seed (done)"
        return
    fi
    echo "validate $name seed $seed"
    # shellcheck disable=SC2086
    line=$("$BIN" validate --images "$images" --epochs "$epochs" --batch-size "$batch" --seed "$seed" \
        --temperature "$T" --min-scale "$MIN_SCALE" --lr "$LR" --eval-every "$epochs" --threads "$THREADS" \
        --record "$rec" --quiet $EXTRA | tail -n 1)
    echo "{\"run\":\"${name}_seed${seed}\",\"set\":\"${name}\",\"result\":$line}" >> "$RESULTS"
    echo "  $line"
}

for ipc in $IPCS; do
    "$BIN" run --ipc-end "$ipc" --out "$OUT/cda_ipc$ipc" --threads "$THREADS" --quiet | tail -n 1
    "$BIN" run --ipc-end "$ipc" --milestone 0 --out "$OUT/sre2l_ipc$ipc" --threads "$THREADS" --quiet | tail -n 1
    [ -d "$OUT/real_ipc$ipc" ] || "$BIN" sample --data fashion-mnist --ipc "$ipc" --seed 0 --out "$OUT/real_ipc$ipc" | tail -n 1
    for seed in $SEEDS; do
        validate "cda_ipc$ipc" "$OUT/cda_ipc$ipc" "$EPOCHS" "$BATCH" "$seed"
        validate "sre2l_ipc$ipc" "$OUT/sre2l_ipc$ipc" "$EPOCHS" "$BATCH" "$seed"
        validate "real_ipc$ipc" "$OUT/real_ipc$ipc" "$EPOCHS" "$BATCH" "$seed"
    done
done
if [ "$FULL" = 1 ]; then
    for seed in $SEEDS; do
        validate "full" fashion-mnist "$FULL_EPOCHS" "$FULL_BATCH" "$seed"
    done
fi
python3 benches/quality_fashion_mnist.py "$RESULTS"
