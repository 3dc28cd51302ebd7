#!/usr/bin/env python3
"""Prints the table of benches/quality_methods.sh's results.jsonl: per row (set, IPC and any student
recipe change), the student's final test top-1 (%) as mean +- sample standard deviation over seeds,
and every seed's value."""
import json
import statistics
import sys
from collections import defaultdict


def main(path):
    rows = defaultdict(list)
    for line in open(path):
        if line.strip():
            r = json.loads(line)
            rows[r["set"]].append(r["result"])
    print("| row | images | student top-1 % (mean +- std) | per seed |")
    print("|---|---|---|---|")
    for name in sorted(rows, key=lambda n: (n.split("+")[0].rsplit("_ipc", 1)[-1].zfill(4), n)):
        rs = sorted(rows[name], key=lambda r: r["seed"])
        tops = [r["top1"] for r in rs]
        std = statistics.stdev(tops) if len(tops) > 1 else 0.0
        seeds = " / ".join(f"{t:.2f}" for t in tops)
        print(f"| {name} | {rs[0]['images']} | {statistics.mean(tops):.2f} +- {std:.2f} | {seeds} "
              f"(seeds {', '.join(str(r['seed']) for r in rs)}) |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "target/quality_methods/results.jsonl")
