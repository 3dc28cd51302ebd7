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
#   JOBS=2 THREADS=1 benches/quality_fashion_mnist.sh      # two students at a time, one thread each
#
# Environment: OUT (default target/quality), IPCS, SEEDS, EPOCHS (300), BATCH (student batch, 50),
# T (20), MIN_SCALE (0.08), LR (1e-3), FULL (1: run row d), FULL_EPOCHS (4), FULL_BATCH (256),
# THREADS (0 = all cores), JOBS (students trained at the same time, 1), EXTRA (more validate flags).
# Finished runs are skipped on rerun. A larger-IPC set starts from a copy of the next smaller one
# (recover seeds each batch by its first IPC index and class, so the images are those of a fresh run).
# Small students use few cores well: on 2 cores JOBS=2 THREADS=1 gets more done than one 2-thread job.
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
JOBS=${JOBS:-1}
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

# The runs to validate, one "name images epochs batch seed" line each.
queue=()
prev=""
for ipc in $IPCS; do
    for kind in cda sre2l; do
        if [ -n "$prev" ] && [ -d "$OUT/${kind}_ipc$prev" ] && [ ! -d "$OUT/${kind}_ipc$ipc" ]; then
            cp -r "$OUT/${kind}_ipc$prev" "$OUT/${kind}_ipc$ipc"
        fi
    done
    # CDA (the preset's curriculum) and SRe2L (--milestone 0); side by side when JOBS > 1.
    "$BIN" run --ipc-end "$ipc" --out "$OUT/cda_ipc$ipc" --threads "$THREADS" --quiet >"$OUT/cda_ipc$ipc.run.log" &
    cda_pid=$!
    if [ "$JOBS" -le 1 ]; then wait "$cda_pid"; fi
    "$BIN" run --ipc-end "$ipc" --milestone 0 --out "$OUT/sre2l_ipc$ipc" --threads "$THREADS" --quiet >"$OUT/sre2l_ipc$ipc.run.log"
    if [ "$JOBS" -gt 1 ]; then wait "$cda_pid"; fi
    tail -n 1 "$OUT/cda_ipc$ipc.run.log" "$OUT/sre2l_ipc$ipc.run.log"
    [ -d "$OUT/real_ipc$ipc" ] || "$BIN" sample --data fashion-mnist --ipc "$ipc" --seed 0 --out "$OUT/real_ipc$ipc" | tail -n 1
    for seed in $SEEDS; do
        for kind in cda sre2l real; do
            queue+=("${kind}_ipc$ipc $OUT/${kind}_ipc$ipc $EPOCHS $BATCH $seed")
        done
    done
    prev=$ipc
done
if [ "$FULL" = 1 ]; then
    for seed in $SEEDS; do
        queue+=("full fashion-mnist $FULL_EPOCHS $FULL_BATCH $seed")
    done
fi
if [ ${#queue[@]} -gt 0 ]; then
    export BIN OUT RESULTS T MIN_SCALE LR THREADS EXTRA
    export -f validate
    printf '%s\n' "${queue[@]}" | xargs -P "$JOBS" -L 1 bash -c 'validate "$@"' _
fi
python3 benches/quality_fashion_mnist.py "$RESULTS"
