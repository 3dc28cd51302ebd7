#!/usr/bin/env python3
"""Prints the table of benches/quality_methods.sh's results.jsonl: per row (set, IPC and any student
recipe change), the student's final test top-1 (%) as mean +- sample standard deviation over seeds,
every seed's value, and the difference of the mean from the random real subset's under the same
recipe. Known sets are named by what made them and listed in a fixed order; others follow."""
import json
import statistics
import sys
from collections import defaultdict

NAMES = {
    "real": "random real subset (`sample`)",
    "rded": "RDED: `select` (2x2 stitched crops)",
    "rded_f1": "RDED, one whole crop per image (`select --factor 1`)",
    "cda": "CDA from noise (`run`)",
    "cda_real": "CDA from random real images (`run --init real`)",
    "cda_patches": "CDA from RDED patches (`run --init patches`)",
    "edc": "+ three teachers in turn (EDC), from one selected crop per image",
    "fadrm": "+ data residual (`--method fadrm`)",
    "delt": "`--method delt` (CDA from one selected crop per image)",
    "real_gentle": "CDA from real images, lr 0.05, 500 it, PNG",
    "hybrid": "half random real, half CDA (composed by hand)",
    "sel_hard_whole": "`select --factor 1 --crops 1 --select-min-scale 1 --select-rank hard`",
    "sel_diverse_whole": "the same, `--select-rank diverse` (k-center)",
    "sel_kmeans_whole": "k-means medoids, whole real images (`select --factor 1 --crops 1 --select-min-scale 1 --select-rank kmeans`)",
    "rec_r3": "30% k-means real, 70% CDA (`--method recommended --real-ipc IPC*3/10`)",
    "rec_r5": "half k-means real, half CDA (`--method recommended --real-ipc IPC/2`)",
    "recommended": "**`--method recommended`**: 70% k-means real, 30% CDA, PNG",
    "rec_r7": "**`--method recommended`**: 70% k-means real, 30% CDA, PNG",
    "rec_r7_class": "the same, CDA part with class-wise BN statistics (`--bn-stats class`)",
    "rec_r6": "60% k-means real, 40% CDA (`--method recommended --real-ipc IPC*6/10`)",
    "rec_r8": "80% k-means real, 20% CDA (`--method recommended --real-ipc IPC*8/10`)",
    "rec_r9": "90% k-means real, 10% CDA (`--method recommended --real-ipc IPC*9/10`)",
    "rec_kf": "`--method recommended` with the real part clustered by pooled features (`--select-rank kmeans-features`)",
    "sel_kmeans-features_whole": "k-means medoids over the teacher's pooled features, whole real images (`--select-rank kmeans-features`)",
    "fadrm2": "+ data residual (`--method fadrm`, a new Adam per stage)",
    "fadrm_res": "+ FADRM's resolution stages (`--method fadrm --resolution-stages 24,28,24,28`)",
    "rec_it500": "`--method recommended`, CDA part with `--iteration 500`",
    "rec_lr01": "`--method recommended`, CDA part with `--lr 0.1`",
    "rec_cs05": "`--method recommended`, CDA part with `--crop-min-scale 0.5`",
    "rec_rbn003": "`--method recommended`, CDA part with `--r-bn 0.03`",
    "rec_rbn0003": "`--method recommended`, CDA part with `--r-bn 0.003`",
    "rec_perimg": "`--method recommended`, CDA part with `--per-image-augment`",
    "rec_class": "half k-means real, half CDA with class-wise BN statistics",
    "cda_class": "CDA from noise with class-wise BN statistics (`--bn-stats class`, one class per batch)",
    "rec_c1000": "half k-means real (k-means over 1000 candidates), half CDA",
    "rec_it2000": "half k-means real, half CDA with 2000 iterations",
    "kmeans_gentle": "CDA from the k-means medoids, lr 0.05, 300 iterations, PNG",
    "kmeans_gentle2": "CDA from the k-means medoids, lr 0.02, 500 iterations, PNG",
    "kmeans_c1000": "k-means medoids over 1000 candidates (`select ... --candidates 1000`)",
    "recommended_edc": "`--method recommended` with the three teachers in turn",
}
ORDER = list(NAMES)


def split(row):
    """(set name, ipc, recipe tag) of a row name such as real_ipc10+pytorch-init."""
    head, _, tag = row.partition("+")
    name, _, ipc = head.rpartition("_ipc")
    return name, int(ipc), tag


def main(path):
    rows = defaultdict(list)
    seen = set()
    for line in open(path):
        if line.strip():
            r = json.loads(line)
            if r["run"] in seen:  # two jobs raced on one student: keep the first
                continue
            seen.add(r["run"])
            rows[r["set"]].append(r["result"])
    means = {row: statistics.mean(r["top1"] for r in rs) for row, rs in rows.items()}
    print("| set | IPC | student recipe | top-1 % (mean +- std) | vs real | per seed |")
    print("|---|---|---|---|---|---|")

    def key(row):
        name, ipc, tag = split(row)
        return (ipc, tag, ORDER.index(name) if name in ORDER else len(ORDER), name)

    for row in sorted(rows, key=key):
        name, ipc, tag = split(row)
        rs = sorted(rows[row], key=lambda r: r["seed"])
        tops = [r["top1"] for r in rs]
        std = statistics.stdev(tops) if len(tops) > 1 else 0.0
        real = means.get(f"real_ipc{ipc}" + (f"+{tag}" if tag else ""))
        vs = f"{means[row] - real:+.2f}" if real is not None and name != "real" else ""
        seeds = " / ".join(f"{t:.2f}" for t in tops)
        # One seed is a screen: no spread to show.
        score = f"{means[row]:.2f} +- {std:.2f}" if len(tops) > 1 else f"{means[row]:.2f} (one seed)"
        print(f"| {NAMES.get(name, name)} | {ipc} | {tag or 'torchvision-init'} | {score} | {vs} | "
              f"{seeds} (seeds {', '.join(str(r['seed']) for r in rs)}) |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "target/quality_methods/results.jsonl")
