#!/usr/bin/env python3
"""Side by side: one recover iteration of cda-engine vs the official-style PyTorch loop, same CPU.

The PyTorch peer is the official recover iteration (CDA/recover_cda_in1k.py): eager mode, frozen
parameters, BN statistics through forward hooks, RandomResizedCrop + flip + roll on the batch,
CE + r_bn * BN loss, backward to the images, Adam step, clip. Same model shape, resolution, batch and
thread count as the engine's `cda-engine bench`. Prints both and the ratio PyTorch / engine.

    python3 benches/recover_cpu_vs_pytorch.py [--threads 2] [--iters 5] [--bin target/release/cda-engine] [--cases i,ii,iii,iv]
Cases (issue "CPU speed"): i ResNet-18 CIFAR stem 32x32 batch 100; ii the shipped Fashion-MNIST teacher
28x28 batch 100; iii ResNet-18 ImageNet stem 224x224 batch 8; iv ResNet-50 224x224 batch 4.
"""
import argparse
import json
import os
import random
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


def pytorch_ms_per_iter(case, iters, warmup=2):
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
    t0 = None
    for it in range(warmup + iters):
        if it == warmup:
            t0 = time.perf_counter()
        aug = transforms.Compose([transforms.RandomResizedCrop(res, scale=(0.5, 1.0)), transforms.RandomHorizontalFlip()])
        x = torch.roll(aug(inputs), shifts=(random.randint(0, jitter), random.randint(0, jitter)), dims=(2, 3))
        optimizer.zero_grad()
        out = model(x)
        loss = criterion(out, targets) + 0.01 * sum(h.r_feature * (10.0 if i == 0 else 1.0) for i, h in enumerate(hooks))
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            inputs.data.clamp_(-2.0, 2.0)
    return 1e3 * (time.perf_counter() - t0) / iters


def engine_ms_per_iter(binary, case, iters, threads):
    args = [binary, "bench", "--res", str(case["res"]), "--batch", str(case["batch"]), "--iters", str(iters), "--threads", str(threads)]
    if "weights" in case:
        args += ["--weights", case["weights"]]
    else:
        args += ["--arch", case["arch"], "--stem", case["stem"], "--in-channels", str(case["in_channels"]), "--classes", str(case["classes"])]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return json.loads(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "cda-engine"))
    ap.add_argument("--cases", default="i,ii,iii,iv")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    random.seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads; cda-engine {args.bin}")
    print(f"{'case':<5} {'model':<34} {'pytorch ms':>11} {'engine ms':>10} {'speed-up':>9}")
    for name in args.cases.split(","):
        case = CASES[name]
        pt = pytorch_ms_per_iter(case, args.iters)
        en = engine_ms_per_iter(args.bin, case, args.iters, args.threads)
        label = f"{en['arch']} {en['stem']} {case['res']}px b{case['batch']}"
        print(f"{name:<5} {label:<34} {pt:>11.1f} {en['ms_per_iter']:>10.1f} {pt / en['ms_per_iter']:>8.2f}x", flush=True)


if __name__ == "__main__":
    main()
