#!/usr/bin/env bash
# Builds the pip wheel (maturin, `bindings = "bin"`, manylinux2014 through zig) and checks it the way
# a cluster user meets it: a fresh virtual environment, `pip install` of the wheel file, then
# `cda-engine --version`, `doctor` (the CUDA kernels must be embedded) and a short `run` on the
# embedded teacher, with nothing of this checkout on PATH. Exit non-zero on any failure.
#
#   benches/wheel/build_and_check_wheel.sh            # wheel into target/wheels
#
# NVRTC must be findable at build time (build.rs: CDA_NVRTC_LIB, a CUDA toolkit, or the PyPI wheel
# nvidia-cuda-nvrtc-cu12 of python3; tests/setup_and_test.sh installs the latter): a wheel without
# kernels would run on CPU only, so this script refuses to build one.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The build venv has its own python3, so point build.rs at the NVRTC the outer python3 has.
if [ -z "${CDA_NVRTC_LIB:-}" ]; then
    lib=$(python3 -c "import nvidia.cuda_nvrtc as m, os; print(os.path.join(list(m.__path__)[0], 'lib', 'libnvrtc.so.12'))" 2>/dev/null || true)
    if [ -n "$lib" ] && [ -f "$lib" ]; then export CDA_NVRTC_LIB="$lib"; fi
fi
export CDA_REQUIRE_NVRTC=1
# The wheel ships the binary only; the host emulation of the kernels is for the tests.
export CDA_NO_EMULATION=1

# Debian splits venv (and its ensurepip) into python3-venv.
make_venv() {
    if ! python3 -m venv "$1" 2>/dev/null; then
        command -v apt-get >/dev/null || { echo "python3 -m venv fails and there is no apt-get to install python3-venv" >&2; exit 1; }
        echo "installing python3-venv (python3 -m venv failed)"
        as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
        rm -rf "$1"
        python3 -m venv "$1"
    fi
}

echo "== build tools (maturin, ziglang) in a throwaway venv"
make_venv "$work/build"
"$work/build/bin/pip" install --quiet --disable-pip-version-check "maturin>=1.5,<2" ziglang
start=$(date +%s)
rm -rf target/wheels
# maturin finds zig through the python3 on PATH (ziglang's `python -m ziglang`).
PATH="$work/build/bin:$PATH" maturin build --release --zig --compatibility manylinux2014 --out target/wheels
echo "wheel built in $(( $(date +%s) - start )) s"
wheel=$(ls target/wheels/cda_engine-*.whl)
[ "$(echo "$wheel" | wc -l)" = 1 ] || { echo "expected one wheel, found: $wheel" >&2; exit 1; }
echo "wheel  $(basename "$wheel")  $(du -k "$wheel" | cut -f1) KiB"
case "$(basename "$wheel")" in
    *manylinux_2_17_x86_64*|*manylinux2014_x86_64*) ;;
    *) echo "the wheel is not tagged manylinux2014 / manylinux_2_17: $(basename "$wheel")" >&2; exit 1 ;;
esac

echo "== fresh venv, pip install of the wheel file (no index: the wheel has no Python dependencies)"
make_venv "$work/user"
"$work/user/bin/pip" install --quiet --disable-pip-version-check --no-index "$wheel"
cd "$work"
export PATH="$work/user/bin:/usr/bin:/bin"
exe=$(command -v cda-engine)
[ "$exe" = "$work/user/bin/cda-engine" ] || { echo "cda-engine on PATH is $exe, not the wheel's" >&2; exit 1; }
cda-engine --version
cda-engine doctor | tee doctor.txt
grep -q "kernels .*compiled at build time by NVRTC" doctor.txt || { echo "the wheel's binary has no embedded kernels" >&2; exit 1; }

echo "== short run on the embedded teacher"
cda-engine run --iteration 20 --ipc-end 1 --out "$work/set" --quiet
n=$(find "$work/set" -mindepth 2 -name '*.jpg' | wc -l)
[ "$n" = 10 ] || { echo "expected 10 images (10 classes x IPC 1), found $n" >&2; exit 1; }
[ -s "$work/set/recover_record.json" ] || { echo "no recover_record.json" >&2; exit 1; }
cd "$root"
echo "wheel ok: $(basename "$wheel") installs and runs ($n images and the record written)"
