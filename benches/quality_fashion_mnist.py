#!/usr/bin/env python3
"""Prints the quality table from benches/quality_fashion_mnist.sh's results.jsonl: per set, the student's
final test top-1 (%) as mean +- sample standard deviation over seeds, and every seed's value."""
import json
import statistics
import sys
from collections import defaultdict

ORDER = ["cda", "sre2l", "real", "full"]
NAMES = {"cda": "CDA images (`run`)", "sre2l": "SRe2L images (`run --milestone 0`)",
         "real": "random real subset (`sample`)", "full": "full training set (60000)"}


def main(path):
    runs = defaultdict(list)
    for line in open(path):
        if line.strip():
            r = json.loads(line)
            runs[r["set"]].append(r["result"])

    def key(name):
        base, _, ipc = name.partition("_ipc")
        return (int(ipc) if ipc else 10**9, ORDER.index(base) if base in ORDER else 99)

    print("| set | IPC | images | epochs | student top-1 % (mean +- std) | per seed |")
    print("|---|---|---|---|---|---|")
    for name in sorted(runs, key=key):
        rs = sorted(runs[name], key=lambda r: r["seed"])
        tops = [r["top1"] for r in rs]
        base, _, ipc = name.partition("_ipc")
        mean = statistics.mean(tops)
        std = statistics.stdev(tops) if len(tops) > 1 else 0.0
        seeds = " / ".join(f"{t:.2f}" for t in tops)
        print(f"| {NAMES.get(base, base)} | {ipc or '-'} | {rs[0]['images']} | {rs[0]['epochs']} | "
              f"{mean:.2f} +- {std:.2f} | {seeds} (seeds {', '.join(str(r['seed']) for r in rs)}) |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "target/quality/results.jsonl")
