#!/usr/bin/env bash
# Renders `cda-engine report` of a short default run in a real headless browser (Debian's chromium)
# and checks the screenshot is there and not blank; keeps it as SHOT (default target/report/report.png).
#
#   benches/report/screenshot_report.sh            (ENGINE=path uses that binary instead of building one)
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${WORK:-target/report}
SHOT=${SHOT:-$WORK/report.png}
if [ -n "${ENGINE:-}" ]; then
    BIN=$ENGINE
else
    cargo build --release --quiet
    BIN=${CARGO_TARGET_DIR:-target}/release/cda-engine
fi
if ! command -v chromium >/dev/null; then
    echo "installing Debian's chromium"
    apt-get install -y chromium >/dev/null
fi
rm -rf "$WORK/set"
mkdir -p "$WORK"
# A short run of the default method on the shipped teacher: 3 IPC, 200 iterations.
"$BIN" run --ipc-end 3 --iteration 200 --out "$WORK/set" --quiet > /dev/null
"$BIN" report "$WORK/set" > /dev/null
PAGE=$(realpath "$WORK/set/report.html")
PROFILE=$(mktemp -d)
trap 'rm -rf "$PROFILE"' EXIT
# The flags keep chromium off the network and out of any profile (the machine may have neither).
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --user-data-dir="$PROFILE" --hide-scrollbars \
    --screenshot="$SHOT" --window-size=1200,2600 "file://$PAGE" 2>/dev/null
python3 - "$SHOT" <<'PY'
import sys, zlib, struct
# Not blank: the PNG decodes and its pixels are not all one value (checked on the raw scanlines).
data = open(sys.argv[1], "rb").read()
assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
pos, idat, width, height = 8, b"", 0, 0
while pos < len(data):
    n, kind = struct.unpack(">I4s", data[pos:pos + 8])
    body = data[pos + 8:pos + 8 + n]
    if kind == b"IHDR":
        width, height = struct.unpack(">II", body[:8])
    elif kind == b"IDAT":
        idat += body
    pos += 12 + n
raw = zlib.decompress(idat)
distinct = len(set(raw[1:4000])) + len(set(raw[len(raw) // 2:len(raw) // 2 + 4000]))
assert width >= 1000 and height >= 1000 and distinct > 8, f"blank screenshot ({width}x{height}, {distinct} distinct bytes)"
print(f"screenshot {sys.argv[1]}: {width}x{height}, not blank")
PY
