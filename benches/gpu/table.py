#!/usr/bin/env python3
"""Summary table of a run_checks.sh output folder: step results, then conv kernel and whole-iteration
timings with the PyTorch peer. Reads OUT_DIR/status.txt and the TIMING / PYTORCH_CHECK / test-result
lines of the step logs.

    python3 table.py OUT_DIR
"""
import json
import os
import re
import sys


def lines(path):
    try:
        with open(path, errors="replace") as f:
            return f.read().splitlines()
    except OSError:
        return []


def timings(out, name):
    rows = []
    for line in lines(os.path.join(out, f"{name}.log")):
        if line.startswith("TIMING "):
            try:
                rows.append(json.loads(line[len("TIMING "):]))
            except ValueError:
                pass
    return rows


def main():
    out = sys.argv[1]
    device = next((l.split(":", 1)[1].strip() for l in lines(os.path.join(out, "kernels.log")) if l.startswith("GPU ")), "?")
    smi = lines(os.path.join(out, "nvidia-smi.log"))
    driver = next((re.sub(r"\s+", " ", l.strip(" |")) for l in smi if "Driver Version" in l), "")
    print(f"cda-engine CUDA backend on {device}")
    if driver:
        print(driver)
    print()
    print(f"{'step':<15} {'result':<18} {'time':>6}  notes")
    for line in lines(os.path.join(out, "status.txt")):
        parts = line.split()
        if not parts or parts[0] == "total":
            continue
        name, secs = parts[0], parts[-1] if parts[-1].endswith("s") else ""
        verdict = " ".join(parts[1:-1] if secs else parts[1:])
        notes = ""
        log = lines(os.path.join(out, f"{name}.log"))
        results = [l for l in log if l.startswith("test result:")]
        if results:
            m = re.search(r"(\d+) passed; (\d+) failed", results[-1])
            if m:
                notes = f"{m.group(1)} passed, {m.group(2)} failed"
        # libtest lists failed tests in its last "failures:" block, one per indented line.
        failed = []
        if "failures:" in log:
            block = log[len(log) - 1 - log[::-1].index("failures:") + 1:]
            failed = [l.strip() for l in block if l.startswith("    ") and l.strip()]
        if failed:
            notes += "; failed: " + ", ".join(failed)
        why = next((log[i + 1].strip() for i, l in enumerate(log[:-1]) if "panicked at" in l), "")
        if not why and verdict != "ok" and log:
            why = log[-1].strip()
        if why and verdict != "ok":
            notes += ("; " if notes else "") + (why if len(why) <= 110 else why[:107] + "...")
        skipped = [l for l in log if l.startswith("skipping")]
        if skipped and not results:
            notes = skipped[0]
        for l in log:
            if l.startswith("PYTORCH_CHECK "):
                r = json.loads(l[len("PYTORCH_CHECK "):])
                notes = f"worst {r['worst']} {r['worst_rel']:.1e} of scale (tol {r['tol']:.0e}) on {r['device']}"
        if name == "resnet_224":
            tags = [(l.split(" input gradient rel_l2 ")[0].split(), l.split()[-1]) for l in log if " input gradient rel_l2 " in l]
            grads = [f"{t[0]} {t[-1].lower()} {v}" for t, v in tags if t]
            notes = (notes + "; grad rel_l2 " + ", ".join(grads)) if grads else notes
        print(f"{name:<15} {verdict:<18} {secs:>6}  {notes}")

    # benches/ops.rs rows of the GPU's conv passes: shape "LAYER xCOUNT ... VERSION", rate in GFLOP/s.
    convs = {}
    for r in timings(out, "timings"):
        if r.get("kind") != "op" or r.get("op") not in ("conv_fprop", "conv_dgrad") or r.get("device", "").startswith("cpu"):
            continue
        words = r["shape"].split()
        layer, count, version = words[0], int(words[1][1:]), words[-1]
        convs.setdefault(layer, {"count": count})[(r["op"][5:], version)] = r
    if convs:
        print()
        print("conv layers, ResNet-18 224px batch 100: ms (TFLOP/s)   [v1 = fp32 CUDA cores, v2 = TF32 mma.sync]")
        print(f"{'layer':<24} {'x':>2} {'fprop v1':>15} {'fprop v2':>15} {'dgrad v1':>15} {'dgrad v2':>15}")
        for name, by in convs.items():
            cell = lambda v, k: f"{by[(k, v)]['ms']:.2f} ({by[(k, v)]['rate'] / 1000:.0f})" if (k, v) in by else "-"
            print(f"{name:<24} {by['count']:>2} {cell('Fp32', 'fprop'):>15} {cell('Tf32', 'fprop'):>15} {cell('Fp32', 'dgrad'):>15} {cell('Tf32', 'dgrad'):>15}")
    iters = [r for r in timings(out, "timings") if r.get("kind") == "iteration"]
    peer = {r["arch"]: r for r in timings(out, "pytorch_peer")}
    if iters or peer:
        print()
        print("recover iteration, 224px batch 100: ms per iteration")
        print(f"{'model':<10} {'conv':<5} {'eager':>8} {'graph':>8} {'2 streams':>10} {'pytorch':>8} {'speed-up':>9}")
        for r in iters:
            p = peer.get(r["arch"])
            best = min(r["eager_ms"], r["graph_ms"], r["two_streams_ms"])
            pt = f"{p['ms']:.1f}" if p else "-"
            sp = f"{p['ms'] / best:.2f}x" if p else "-"
            print(f"{r['arch']:<10} {r['version'].lower():<5} {r['eager_ms']:>8.1f} {r['graph_ms']:>8.1f} {r['two_streams_ms']:>10.1f} {pt:>8} {sp:>9}")
    total = [l for l in lines(os.path.join(out, "status.txt")) if l.startswith("total")]
    if total:
        print()
        print(f"{total[0]}; logs in {out}")


if __name__ == "__main__":
    main()
