#!/usr/bin/env bash
# Which recover method gives the best Fashion-MNIST set: every set of SETS at every IPC of IPCS is made
# once with the shipped teacher, then a student is trained on it with `cda-engine validate` for each
# seed of SEEDS, under one student recipe for every row (validate's defaults: ResNet-18 w16 as the
# teacher, 300 epochs, batch 50, online KD at T 20, RandomResizedCrop 0.08..1 + flip + CutMix, AdamW
# with weight decay 0.01 and per-epoch cosine; plus LR and STUDENT_INIT below). The sets:
#   real          cda-engine sample --seed 0                       a class-balanced random real subset
#   rded          cda-engine select                                RDED: teacher-selected crops, 2x2 stitched
#   rded_f1       cda-engine select --factor 1                     RDED with one whole crop per image
#   cda           cda-engine run                                   CDA from noise (the preset)
#   sre2l         cda-engine run --method sre2l                    SRe2L from noise
#   cda_real      cda-engine run --init real                       CDA from random real images
#   cda_patches   cda-engine run --init patches                    CDA from RDED's patches
#   fadrm         cda-engine run --method fadrm                    + FADRM's data residual
#   fadrm2        the same as fadrm, a second folder (fadrm sets made before the Adam restart per stage keep the moments)
#   fadrm_res     cda-engine run --method fadrm --resolution-stages 24,28,24,28  + FADRM's resolution stages
#                 (ImageNet's 200/224 scaled to 28 px)
#   delt          cda-engine run --method delt                     CDA from whole selected crops
#   recommended   cda-engine run --method recommended              70% k-means-selected real, 30% CDA
#   rec_r5        --method recommended --real-ipc IPC/2              half k-means-selected real, half CDA
#   recommended_edc    the same with the three teachers in turn for the CDA half (--weights TEACHERS)
#   gentle_f1     cda-engine run --init patches --factor 1 --lr 0.05 --iteration 500
#   real_gentle   cda-engine run --init real --lr 0.05 --iteration 500 --format png
#   cda_png       cda-engine run --format png                      CDA from noise, lossless files
#   hybrid        half the IPC from the random real subset, half CDA images from noise
#   sel_hard_whole     cda-engine select --factor 1 --crops 1 --select-min-scale 1 --select-rank hard
#   sel_diverse_whole  the same with --select-rank diverse (k-center over the teacher's logits)
#   sel_kmeans_whole   the same with --select-rank kmeans (k-means medoids over the teacher's logits)
#   sel_kmeans-features_whole  the same with --select-rank kmeans-features (over its pooled features)
#   edc           cda-engine run --init patches --factor 1 --weights T,T2,T3 (three teachers in turn)
#   cvdd          as edc with --teachers-per-step 2
#   rec_rK        --method recommended with --real-ipc IPC*K/10 (K 1..9): rec_r7 is the same set as recommended
#   rec_kf        --method recommended --select-rank kmeans-features (the real part clustered in feature space)
#   rec_c1000     --method recommended --real-ipc IPC/2 with --candidates 1000 (k-means over more real images)
#   rec_it2000    --method recommended --real-ipc IPC/2 with --iteration 2000 for the CDA part
#   rec_it500, rec_lr01, rec_cs05, rec_rbn003, rec_rbn0003, rec_perimg
#                 the same with --iteration 500, --lr 0.1, --crop-min-scale 0.5, --r-bn 0.03 or 0.003,
#                 or --per-image-augment for the CDA part
#   cda_class     cda-engine run --bn-stats class                  CDA from noise, class-wise BN statistics, one class per batch
#   rec_class     --method recommended --real-ipc IPC/2 with --bn-stats class for the CDA part
#   rec_r7_class  the same with --real-ipc 7 (of 10)
#   kmeans_gentle, kmeans_gentle2
#                 CDA from the k-means medoids (whole images), gently: lr 0.05 for 300 iterations, or
#                 lr 0.02 for 500, PNG
#   kmeans_c1000  select --factor 1 --crops 1 --select-min-scale 1 --select-rank kmeans --candidates 1000
#
#   SETS="real rded cda" IPCS=10 SEEDS="0 1 2" JOBS=2 THREADS=1 benches/quality_methods.sh
#
# Environment: OUT (target/quality_methods), ENGINE (a cda-engine binary to use instead of building one), SETS, IPCS (10), SEEDS (0 1 2), LR (student lr, 2e-3), TEACHERS,
# STUDENT_INIT (torchvision), EPOCHS (300), JOBS (jobs at a time, 1), THREADS (per job, 0 = all
# cores), EXTRA (more validate flags), TAG (names the rows of a recipe changed by EXTRA, e.g.
# TAG=w8-student EXTRA="--student resnet18-w8"). Each set is made once (a lock keeps two jobs from making the
# same one); finished students are skipped on rerun. The table: benches/quality_methods.py
# OUT/results.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-target/quality_methods}
SETS=${SETS:-"real rded rded_f1 cda cda_real cda_patches fadrm delt recommended"}
IPCS=${IPCS:-10}
SEEDS=${SEEDS:-"0 1 2"}
LR=${LR:-2e-3}
STUDENT_INIT=${STUDENT_INIT:-torchvision}
EPOCHS=${EPOCHS:-300}
JOBS=${JOBS:-1}
THREADS=${THREADS:-0}
EXTRA=${EXTRA:-}
TAG=${TAG:-}
# The teachers of the edc and cvdd sets (the shipped one first; the others made by `squeeze`, see
# weights/README.md).
TEACHERS=${TEACHERS:-weights/fashion_mnist_resnet18_w16.safetensors,weights/fashion_mnist_resnet18_w8_seed1.safetensors,weights/fashion_mnist_resnet18_w8_seed2.safetensors}

mkdir -p "$OUT/records"
if [ -n "${ENGINE:-}" ]; then
    # A given binary (ENGINE=path), e.g. to measure one build while the tree changes.
    BIN=$(realpath "$ENGINE")
else
    cargo build --release --quiet
    # A copy, so a rebuild while the jobs run does not change the binary under them.
    BIN="$OUT/cda-engine"
    cp "${CARGO_TARGET_DIR:-target}/release/cda-engine" "$BIN.new" && mv "$BIN.new" "$BIN"
fi
RESULTS="$OUT/results.jsonl"
touch "$RESULTS"

# make_set NAME IPC: writes $OUT/NAME_ipcIPC once.
make_set() {
    local name=$1 ipc=$2 dir="$OUT/${1}_ipc$2"
    [ -f "$dir.done" ] && return
    rm -rf "$dir"
    local common=(--ipc-end "$ipc" --out "$dir")
    case $name in
        real) "$BIN" sample --data fashion-mnist --ipc "$ipc" --seed 0 --out "$dir" ;;
        rded) "$BIN" select "${common[@]}" --threads "$THREADS" ;;
        rded_f1) "$BIN" select "${common[@]}" --factor 1 --threads "$THREADS" ;;
        cda) "$BIN" run "${common[@]}" --threads "$THREADS" --quiet ;;
        sre2l) "$BIN" run "${common[@]}" --method sre2l --threads "$THREADS" --quiet ;;
        cda_real) "$BIN" run "${common[@]}" --init real --threads "$THREADS" --quiet ;;
        cda_patches) "$BIN" run "${common[@]}" --init patches --threads "$THREADS" --quiet ;;
        fadrm|fadrm2) "$BIN" run "${common[@]}" --method fadrm --threads "$THREADS" --quiet ;;
        fadrm_res) "$BIN" run "${common[@]}" --method fadrm --resolution-stages 24,28,24,28 --threads "$THREADS" --quiet ;;
        delt) "$BIN" run "${common[@]}" --method delt --threads "$THREADS" --quiet ;;
        recommended) "$BIN" run "${common[@]}" --method recommended --threads "$THREADS" --quiet ;;
        recommended_edc) "$BIN" run "${common[@]}" --method recommended --weights "$TEACHERS" --threads "$THREADS" --quiet ;;
        gentle_f1) "$BIN" run "${common[@]}" --init patches --factor 1 --lr 0.05 --iteration 500 --threads "$THREADS" --quiet ;;
        real_gentle) "$BIN" run "${common[@]}" --init real --lr 0.05 --iteration 500 --format png --threads "$THREADS" --quiet ;;
        cda_png) "$BIN" run "${common[@]}" --format png --threads "$THREADS" --quiet ;;
        hybrid) "$BIN" sample --data fashion-mnist --ipc "$ipc" --seed 0 --out "$dir.real" && "$BIN" run "${common[@]}" --threads "$THREADS" --quiet && \
            python3 - "$dir" "$ipc" <<'PY' ;;
import os, shutil, sys
# IPC 0..ipc/2 from the random real subset, the rest CDA images: one ImageFolder.
out, ipc = sys.argv[1], int(sys.argv[2])
for cls in sorted(os.listdir(out + ".real")):
    for f in sorted(os.listdir(os.path.join(out, cls))):
        if int(f.split("_id")[1][:3]) < ipc // 2:
            os.remove(os.path.join(out, cls, f))
    for f in sorted(os.listdir(os.path.join(out + ".real", cls))):
        if int(f.split("_id")[1][:3]) < ipc // 2:
            shutil.copy(os.path.join(out + ".real", cls, f), os.path.join(out, cls, f))
shutil.rmtree(out + ".real")
PY
        sel_*_whole) local r=${name#sel_}; "$BIN" select "${common[@]}" --factor 1 --crops 1 --select-min-scale 1 --select-rank "${r%_whole}" --threads "$THREADS" ;;
        edc) "$BIN" run "${common[@]}" --init patches --factor 1 --weights "$TEACHERS" --threads "$THREADS" --quiet ;;
        cvdd) "$BIN" run "${common[@]}" --init patches --factor 1 --weights "$TEACHERS" --teachers-per-step 2 --threads "$THREADS" --quiet ;;
        rec_r[1-9]) "$BIN" run "${common[@]}" --method recommended --real-ipc $((ipc * ${name#rec_r} / 10)) --threads "$THREADS" --quiet ;;
        cda_class) "$BIN" run "${common[@]}" --bn-stats class --threads "$THREADS" --quiet ;;
        rec_class) "$BIN" run "${common[@]}" --method recommended --real-ipc $((ipc / 2)) --bn-stats class --threads "$THREADS" --quiet ;;
        rec_r7_class) "$BIN" run "${common[@]}" --method recommended --real-ipc $((ipc * 7 / 10)) --bn-stats class --threads "$THREADS" --quiet ;;
        rec_kf) "$BIN" run "${common[@]}" --method recommended --select-rank kmeans-features --threads "$THREADS" --quiet ;;
        rec_c1000) "$BIN" run "${common[@]}" --method recommended --real-ipc $((ipc / 2)) --candidates 1000 --threads "$THREADS" --quiet ;;
        rec_it2000) "$BIN" run "${common[@]}" --method recommended --real-ipc $((ipc / 2)) --iteration 2000 --threads "$THREADS" --quiet ;;
        rec_it500) "$BIN" run "${common[@]}" --method recommended --iteration 500 --threads "$THREADS" --quiet ;;
        rec_lr01) "$BIN" run "${common[@]}" --method recommended --lr 0.1 --threads "$THREADS" --quiet ;;
        rec_cs05) "$BIN" run "${common[@]}" --method recommended --crop-min-scale 0.5 --threads "$THREADS" --quiet ;;
        rec_rbn003) "$BIN" run "${common[@]}" --method recommended --r-bn 0.03 --threads "$THREADS" --quiet ;;
        rec_rbn0003) "$BIN" run "${common[@]}" --method recommended --r-bn 0.003 --threads "$THREADS" --quiet ;;
        rec_perimg) "$BIN" run "${common[@]}" --method recommended --per-image-augment --threads "$THREADS" --quiet ;;
        kmeans_gentle) "$BIN" run "${common[@]}" --init patches --factor 1 --crops 1 --select-min-scale 1 --select-rank kmeans --lr 0.05 --iteration 300 --format png --threads "$THREADS" --quiet ;;
        kmeans_gentle2) "$BIN" run "${common[@]}" --init patches --factor 1 --crops 1 --select-min-scale 1 --select-rank kmeans --lr 0.02 --iteration 500 --format png --threads "$THREADS" --quiet ;;
        kmeans_c1000) "$BIN" select "${common[@]}" --factor 1 --crops 1 --select-min-scale 1 --select-rank kmeans --candidates 1000 --threads "$THREADS" ;;
        *) echo "unknown set $name" >&2; return 1 ;;
    esac > "$dir.log" 2>&1
    touch "$dir.done"
}

# job NAME IPC SEED: the set (made under its lock), then one student. A student recipe other than the
# default is named in the run and row (e.g. real_ipc10+pytorch-init), so recipes never mix in a row.
job() {
    local name=$1 ipc=$2 seed=$3 tag=""
    [ "$STUDENT_INIT" = torchvision ] || tag="+${STUDENT_INIT}-init"
    [ "$LR" = 2e-3 ] || tag="$tag+lr$LR"
    [ -z "$TAG" ] || tag="$tag+$TAG"
    local row="${name}_ipc${ipc}$tag"
    local run="${row}_seed${seed}"
    if grep -q "\"run\":\"$run\"" "$RESULTS"; then
        echo "skip $run (done)"
        return
    fi
    (flock 9; make_set "$name" "$ipc") 9>"$OUT/${name}_ipc$ipc.lock"
    echo "validate $run"
    # shellcheck disable=SC2086
    line=$("$BIN" validate --images "$OUT/${name}_ipc$ipc" --epochs "$EPOCHS" --seed "$seed" --lr "$LR" \
        --student-init "$STUDENT_INIT" --eval-every "$EPOCHS" --threads "$THREADS" \
        --record "$OUT/records/$run.json" --quiet $EXTRA | tail -n 1)
    (flock 9; echo "{\"run\":\"$run\",\"set\":\"$row\",\"result\":$line}" >> "$RESULTS") 9>"$RESULTS.lock"
    echo "  $run: $line"
}

queue=()
for ipc in $IPCS; do
    for seed in $SEEDS; do
        for name in $SETS; do
            queue+=("$name $ipc $seed")
        done
    done
done
export BIN OUT RESULTS LR STUDENT_INIT EPOCHS THREADS EXTRA TEACHERS TAG
export -f make_set job
printf '%s\n' "${queue[@]}" | xargs -P "$JOBS" -L 1 bash -c 'job "$@"' _
python3 benches/quality_methods.py "$RESULTS"
