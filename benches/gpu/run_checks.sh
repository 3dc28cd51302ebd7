#!/usr/bin/env bash
# Checks, then times, the CUDA backend on this GPU machine, from a bundle made by
# benches/gpu/build_bundle.sh (this script is copied to the bundle's root). Needs only the NVIDIA
# driver; PyTorch with torchvision for the PyTorch comparison and peer timing (skipped without).
#
#   run_checks.sh OUT_DIR          (OUT_DIR is created; nothing is written anywhere else)
#
# Steps, each with a time limit so the whole run stays under 5 minutes, each logged to OUT_DIR/<step>.log:
#   nvidia-smi, doctor        the card, the driver, the embedded kernels
#   kernels                   mma fragment layout vs a float64 GEMM, every kernel vs the CPU backend,
#                             all fixture networks (fp32 and TF32), graph replay and two streams
#   resnet_224                ResNet-18 224px batch 100 and ResNet-50 224px batch 16, forward + losses
#                             + backward, vs the CPU backend; exports the ResNet-18 case
#   pytorch_check             that case vs torchvision's ResNet-18 in PyTorch (fp32)
#   timings                   benches/ops.rs: every op (per-layer conv kernels in both versions, the
#                             memory-bound ops, the optimizers) and whole recover iterations (eager,
#                             graph, 2 streams), on the CPU backend and the GPU
#   bench_cli                 `cda-engine bench --device cuda`, ResNet-18 224px batch 100 (its JSON line)
#   run_cli, validate_cli     the main job on the GPU (`cda-engine run --device cuda`, the shipped
#                             Fashion-MNIST teacher, IPC 10), then `validate --device cuda` (the CUDA
#                             training executor) on that set for 30 epochs, and the same on the CPU
#   pytorch_peer              the official PyTorch recover iteration on the same card
# The summary table is printed last and saved as OUT_DIR/table.txt.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [ $# -ne 1 ]; then
    echo "usage: $0 OUT_DIR" >&2
    exit 2
fi
mkdir -p "$1"
out=$(cd "$1" && pwd)
work="$out/work"
mkdir -p "$work"
export CDA_FIXTURE_DIR="$here/fixtures"
export CDA_REQUIRE_GPU=1
export PYTHONUNBUFFERED=1
export RUST_BACKTRACE=1
tests="$here/bin/cuda_gpu_tests"
status="$out/status.txt"
: >"$status"
start=$(date +%s)

# step NAME LIMIT_SECONDS COMMAND...: runs COMMAND with a time limit, output to OUT_DIR/NAME.log.
step() {
    local name=$1 limit=$2
    shift 2
    local t0=$(date +%s)
    echo "== $name (limit ${limit}s)"
    timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    local secs=$(($(date +%s) - t0))
    local verdict=ok
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then verdict="TIMEOUT"; elif [ $rc -ne 0 ]; then verdict="FAILED (exit $rc)"; fi
    echo "$name $verdict ${secs}s" | tee -a "$status"
    return 0
}

have_torch() { python3 -c 'import torch, torchvision, safetensors; assert torch.cuda.is_available()' >/dev/null 2>&1; }

step nvidia-smi 20 nvidia-smi
step doctor 20 "$here/bin/cda-engine" doctor
step kernels 75 "$tests" --test-threads=1 --nocapture gpu_mma_fragment_layout_matches_hardware gpu_kernels_match_cpu gpu_fixture_networks gpu_graph_replay_and_streams_match_eager
CDA_GPU_EXPORT="$work/export" step resnet_224 80 "$tests" --test-threads=1 --nocapture gpu_resnet
if have_torch; then
    step pytorch_check 40 python3 "$here/scripts/pytorch_check.py" "$work/export" --arch resnet18
else
    echo "pytorch_check SKIPPED (no PyTorch with CUDA, torchvision and safetensors)" | tee -a "$status"
fi
step timings 90 "$here/bin/ops_bench"
step bench_cli 40 "$here/bin/cda-engine" bench --device cuda --arch resnet18 --res 224 --batch 100 --iters 10
step run_cli 40 "$here/bin/cda-engine" run --device cuda --weights "$here/teacher.safetensors" --out "$work/syn" --quiet
for dev in cuda cpu; do
    step "validate_cli_$dev" 40 "$here/bin/cda-engine" validate --device "$dev" --teacher "$here/teacher.safetensors" \
        --images "$work/syn" --test-data "$work/syn" --epochs 30 --batch-size 50 --eval-every 10 --quiet
done
if have_torch; then
    step pytorch_peer 45 python3 "$here/scripts/pytorch_peer.py" --archs resnet18,resnet50 --batch 100 --res 224 --iters 10
else
    echo "pytorch_peer SKIPPED (no PyTorch)" | tee -a "$status"
fi
# The exported case is ~120 MB of tensors; the logs keep what matters.
rm -rf "$work"
echo "total $(($(date +%s) - start))s" >>"$status"

echo
python3 "$here/scripts/table.py" "$out" | tee "$out/table.txt" || cat "$status"
