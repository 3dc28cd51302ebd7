#!/usr/bin/env python3
"""Side by side: one recover iteration of cda-engine vs the official-style PyTorch loop, same CPU.

The PyTorch peer is the official recover iteration (CDA/recover_cda_in1k.py): eager mode, frozen
parameters, BN statistics through forward hooks, RandomResizedCrop + flip + roll on the batch,
CE + r_bn * BN loss, backward to the images, Adam step, clip. Same model shape, resolution, batch and
thread count as the engine's `cda-engine bench`. Prints both and the ratio PyTorch / engine.

    python3 benches/recover_cpu_vs_pytorch.py [--threads 2] [--iters 5] [--repeats 3]
        [--bin target/release/cda-engine] [--cases i,ii,iii,iv]
Cases (issue "CPU speed"): i ResNet-18 CIFAR stem 32x32 batch 100; ii the shipped Fashion-MNIST teacher
28x28 batch 100; iii ResNet-18 ImageNet stem 224x224 batch 8; iv ResNet-50 224x224 batch 4.

Each repeat runs PyTorch and the engine once each, alternating which goes first, every run in a fresh
process (so each peak resident memory, VmHWM, is that run's own; PyTorch's includes importing torch).
Reported: medians over the repeats of wall ms per iteration (the comparison), CPU ms per iteration
(all threads; on a machine loaded by other processes it leaves out time spent waiting for a core) and
peak memory, with the load average before each case. Wall times on a shared machine are noisy: look
at the spread column (max/min of the speed-up over the repeats).
"""
import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time

import torch
import torch.nn as nn
import torch.optim as optim
import torchvision
from torchvision import transforms

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures"))

CASES = {
    "i": dict(arch="resnet18", stem="cifar", in_channels=3, classes=100, res=32, batch=100),
    "ii": dict(weights=os.path.join(ROOT, "weights", "fashion_mnist_resnet18_w16.safetensors"), res=28, batch=100),
    "iii": dict(arch="resnet18", stem="imagenet", in_channels=3, classes=1000, res=224, batch=8),
    "iv": dict(arch="resnet50", stem="imagenet", in_channels=3, classes=1000, res=224, batch=4),
}


class BNFeatureHook:  # official utils.py
    def __init__(self, module):
        self.hook = module.register_forward_hook(self.hook_fn)

    def hook_fn(self, module, input, output):
        nch = input[0].shape[1]
        mean = input[0].mean([0, 2, 3])
        var = input[0].permute(1, 0, 2, 3).contiguous().reshape([nch, -1]).var(1, unbiased=False)
        self.r_feature = torch.norm(module.running_var.data - var, 2) + torch.norm(module.running_mean.data - mean, 2)


def torch_model(case):
    if "weights" in case:
        from safetensors.torch import load_file
        from safetensors import safe_open
        from tv_resnet import ResNet
        from torchvision.models.resnet import BasicBlock
        with safe_open(case["weights"], "pt") as f:
            meta = f.metadata()
        sd = load_file(case["weights"])
        widths = [sd[f"layer{i}.0.conv1.weight"].shape[0] for i in range(1, 5)]
        m = ResNet(BasicBlock, [2, 2, 2, 2], widths, int(meta["in_channels"]), int(meta["num_classes"]), meta["stem"])
        m.load_state_dict(sd, strict=False)
        return m, int(meta["in_channels"]), int(meta["num_classes"])
    m = torchvision.models.get_model(case["arch"], num_classes=case["classes"])
    if case["stem"] == "cifar":
        m.conv1 = nn.Conv2d(case["in_channels"], 64, 3, 1, 1, bias=False)
        m.maxpool = nn.Identity()
    return m, case["in_channels"], case["classes"]


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return None


def pytorch_ms_per_iter(case, iters, warmup=2, cpu_out=None):
    model, c, classes = torch_model(case)
    model.eval()
    for p in model.parameters():
        p.requires_grad = False
    hooks = [BNFeatureHook(m) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    res, n = case["res"], case["batch"]
    targets = torch.arange(n) % classes
    inputs = torch.randn((n, c, res, res), requires_grad=True)
    optimizer = optim.Adam([inputs], lr=0.25, betas=[0.5, 0.9], eps=1e-8)
    criterion = nn.CrossEntropyLoss()
    jitter = max(1, min(32, res // 8))
    t0 = c0 = None
    for it in range(warmup + iters):
        if it == warmup:
            t0 = time.perf_counter()
            c0 = time.process_time()
        aug = transforms.Compose([transforms.RandomResizedCrop(res, scale=(0.5, 1.0)), transforms.RandomHorizontalFlip()])
        x = torch.roll(aug(inputs), shifts=(random.randint(0, jitter), random.randint(0, jitter)), dims=(2, 3))
        optimizer.zero_grad()
        out = model(x)
        loss = criterion(out, targets) + 0.01 * sum(h.r_feature * (10.0 if i == 0 else 1.0) for i, h in enumerate(hooks))
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            inputs.data.clamp_(-2.0, 2.0)
    if cpu_out is not None:
        cpu_out.append(1e3 * (time.process_time() - c0) / iters)
    return 1e3 * (time.perf_counter() - t0) / iters


def engine_run(binary, case, iters, threads):
    args = [binary, "bench", "--res", str(case["res"]), "--batch", str(case["batch"]), "--iters", str(iters), "--threads", str(threads)]
    if "weights" in case:
        args += ["--weights", case["weights"]]
    else:
        args += ["--arch", case["arch"], "--stem", case["stem"], "--in-channels", str(case["in_channels"]), "--classes", str(case["classes"])]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return json.loads(out)


def pytorch_run(name, iters, threads):
    """PyTorch in a fresh process: {"ms_per_iter", "cpu_ms_per_iter", "peak_rss_mib"}."""
    args = [sys.executable, os.path.abspath(__file__), "--worker", name, "--iters", str(iters), "--threads", str(threads)]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return json.loads(out)


def worker(name, iters, threads):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    random.seed(0)
    cpu = []
    ms = pytorch_ms_per_iter(CASES[name], iters, cpu_out=cpu)
    print(json.dumps({"ms_per_iter": ms, "cpu_ms_per_iter": cpu[0], "peak_rss_mib": peak_rss_mib()}))


def load_average():
    try:
        return float(open("/proc/loadavg").read().split()[0])
    except OSError:
        return float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "cda-engine"))
    ap.add_argument("--cases", default="i,ii,iii,iv")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.iters, args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.iters} timed iterations per run, {args.repeats} repeats; cda-engine {args.bin}")
    print(f"{'case':<5} {'model':<30} {'load':>5} {'pytorch ms':>11} {'engine ms':>10} {'speed-up':>9} {'spread':>13} "
          f"{'pt cpu ms':>10} {'en cpu ms':>10} {'cpu ratio':>9} {'pt MiB':>7} {'en MiB':>7}")
    for name in args.cases.split(","):
        case = CASES[name]
        load = load_average()
        pts, ens = [], []
        for r in range(args.repeats):
            if r % 2 == 0:
                pts.append(pytorch_run(name, args.iters, args.threads))
                ens.append(engine_run(args.bin, case, args.iters, args.threads))
            else:
                ens.append(engine_run(args.bin, case, args.iters, args.threads))
                pts.append(pytorch_run(name, args.iters, args.threads))
        med = lambda runs, key: statistics.median(r[key] for r in runs if r.get(key) is not None)
        pt, en = med(pts, "ms_per_iter"), med(ens, "ms_per_iter")
        ratios = [p["ms_per_iter"] / e["ms_per_iter"] for p, e in zip(pts, ens)]
        ptc, enc = med(pts, "cpu_ms_per_iter"), med(ens, "cpu_ms_per_iter")
        label = f"{ens[0]['arch']} {ens[0]['stem']} {case['res']}px b{case['batch']}"
        print(f"{name:<5} {label:<30} {load:>5.1f} {pt:>11.1f} {en:>10.1f} {pt / en:>8.2f}x {min(ratios):>6.2f}-{max(ratios):<5.2f}x "
              f"{ptc:>10.1f} {enc:>10.1f} {ptc / enc:>8.2f}x {med(pts, 'peak_rss_mib'):>7.0f} {med(ens, 'peak_rss_mib'):>7.0f}", flush=True)


if __name__ == "__main__":
    main()
