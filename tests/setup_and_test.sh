#!/usr/bin/env bash
# The README's test command: installs what the tests need when it is missing (Fashion-MNIST from
# Debian's dataset-fashion-mnist, NVRTC from PyPI), then runs `cargo test --locked` (extra arguments
# are passed on). .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Real data for the tests that read Fashion-MNIST.
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
    if command -v apt-get >/dev/null; then
        echo "installing dataset-fashion-mnist (the real images the data tests read)"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist
    else
        echo "warning: /usr/share/datasets/fashion-mnist is missing and there is no apt-get: the tests that read it will fail" >&2
    fi
fi

# NVRTC compiles kernels/*.cu to PTX at build time (build.rs finds the PyPI wheel through python3).
# Where it is found, a kernel NVRTC rejects fails the build instead of being left out.
if ! python3 -c "import nvidia.cuda_nvrtc" 2>/dev/null; then
    echo "installing nvidia-cuda-nvrtc-cu12 (compiles the CUDA kernels at build time)"
    python3 -m pip install --quiet --disable-pip-version-check "nvidia-cuda-nvrtc-cu12==12.9.*" ||
        echo "warning: NVRTC could not be installed: the kernels are built without PTX (the CUDA tests on the host emulation still run)" >&2
fi
if python3 -c "import nvidia.cuda_nvrtc" 2>/dev/null; then
    export CDA_REQUIRE_NVRTC=${CDA_REQUIRE_NVRTC:-1}
fi
# The kernels also compile as C++ for the host emulation, so the CUDA backend is tested without a GPU.
if command -v c++ >/dev/null || command -v g++ >/dev/null || command -v clang++ >/dev/null; then
    export CDA_REQUIRE_EMULATION=${CDA_REQUIRE_EMULATION:-1}
fi

cargo test --locked "$@"
