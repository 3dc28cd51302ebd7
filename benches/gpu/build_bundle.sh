#!/usr/bin/env bash
# Builds, on a development machine, what a GPU machine needs to check and time the CUDA backend: the
# release binary, the release GPU test binary and the per-op benchmark (with the kernels' PTX embedded, so NVRTC is required
# here and only the NVIDIA driver there), the forward fixtures, the PyTorch scripts and run_checks.sh,
# all in one folder (default gpu-bundle/ at the repository root, ignored by git).
#
#   benches/gpu/build_bundle.sh [BUNDLE_DIR]
# then copy BUNDLE_DIR to the GPU machine and run  BUNDLE_DIR/run_checks.sh OUT_DIR  there.
# The GPU machine needs the NVIDIA driver (CUDA 12.9 or newer), python3 with PyTorch and torchvision for
# the PyTorch comparison and timing (skipped without them), and no Rust, network or writable system path.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
bundle=${1:-$root/gpu-bundle}
target=${CARGO_TARGET_DIR:-$root/target}

# PTX must be embedded: a kernel NVRTC rejects, or a missing NVRTC, stops the build here.
export CDA_REQUIRE_NVRTC=1
# The bundle runs on real GPUs only: no host emulation, so the binaries need no C++ runtime either.
export CDA_NO_EMULATION=1

echo "building the release binary and the GPU test binary (target dir $target)"
cargo build --release --locked --bin cda-engine
json=$(mktemp)
trap 'rm -f "$json"' EXIT
# executable NAME: the path cargo reported in "$json" for the test or bench target NAME.
executable() {
    python3 - "$json" "$1" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == sys.argv[2] and m.get("executable"):
        print(m["executable"])
EOF
}
cargo test --release --locked --no-run --message-format=json --test cuda_gpu >"$json"
test_bin=$(executable cuda_gpu)
cargo bench --locked --no-run --message-format=json --bench ops >"$json"
bench_bin=$(executable ops)
if [ -z "$test_bin" ] || [ -z "$bench_bin" ]; then
    echo "error: cargo did not report the cuda_gpu test or the ops bench executable" >&2
    exit 1
fi

rm -rf "$bundle"
mkdir -p "$bundle/bin" "$bundle/fixtures" "$bundle/scripts"
cp "$target/release/cda-engine" "$bundle/bin/cda-engine"
cp "$test_bin" "$bundle/bin/cuda_gpu_tests"
cp "$bench_bin" "$bundle/bin/ops_bench"
cp -r tests/fixtures/forward "$bundle/fixtures/forward"
cp -r tests/fixtures/train "$bundle/fixtures/train"
cp weights/fashion_mnist_resnet18_w16.safetensors "$bundle/teacher.safetensors"
cp benches/gpu/pytorch_check.py benches/gpu/pytorch_peer.py benches/gpu/table.py "$bundle/scripts/"
cp benches/gpu/run_checks.sh "$bundle/run_checks.sh"
chmod +x "$bundle/run_checks.sh" "$bundle/bin/"*

# What was built, and which glibc the binaries need (the GPU machine's must be at least as new).
glibc=$( (objdump -T "$bundle/bin/cda-engine" "$bundle/bin/cuda_gpu_tests" "$bundle/bin/ops_bench" 2>/dev/null || true) | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)
{
    echo "built      $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -srm)"
    echo "commit     $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- kernels src build.rs 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "rustc      $(rustc --version)"
    echo "needs      ${glibc:-glibc version unknown (objdump missing)}"
    "$bundle/bin/cda-engine" doctor 2>&1 | grep -i -E 'kernel|nvrtc|ptx' || true
} >"$bundle/BUILD_INFO"
cat "$bundle/BUILD_INFO"
du -sh "$bundle"
echo "bundle ready: copy $bundle to the GPU machine and run: $(basename "$bundle")/run_checks.sh OUT_DIR"
