#!/usr/bin/env python3
"""The PyTorch peer on the GPU: the official recover iteration (VILA-Lab/SRe2L CDA/recover_cda_in1k.py)
timed on the same card as the engine's whole iterations (benches/ops.rs, `iteration` rows).

Per iteration, as the official code: RandomResizedCrop(scale=(0.08, 1)) + RandomHorizontalFlip on the
batch, torch.roll by up to 32, forward of an eval-mode torchvision ResNet with BN-statistic hooks,
CE + 0.01 * sum_l w_l r_l (w_0 = 10), backward to the images, Adam (betas 0.5/0.9), clamp. Eager mode,
PyTorch's default precision (cuDNN convolutions in TF32 on Ampere and newer). Random weights: the time
does not depend on them.

    python3 benches/gpu/pytorch_peer.py [--archs resnet18,resnet50] [--batch 100] [--res 224] [--iters 10]
Prints one `TIMING {json}` line per model (kind "pytorch"): milliseconds per iteration after warm-up,
measured with torch.cuda.synchronize around the timed loop.
"""
import argparse
import json
import random
import time

import torch
import torch.nn as nn
import torch.optim as optim
import torchvision
from torchvision import transforms


class BNFeatureHook:  # official utils.py
    def __init__(self, module):
        self.hook = module.register_forward_hook(self.hook_fn)

    def hook_fn(self, module, input, output):
        nch = input[0].shape[1]
        mean = input[0].mean([0, 2, 3])
        var = input[0].permute(1, 0, 2, 3).contiguous().reshape([nch, -1]).var(1, unbiased=False)
        self.r_feature = torch.norm(module.running_var.data - var, 2) + torch.norm(module.running_mean.data - mean, 2)


def ms_per_iter(arch, batch, res, iters, warmup=3):
    dev = torch.device("cuda")
    model = torchvision.models.get_model(arch, num_classes=1000).to(dev).eval()
    for p in model.parameters():
        p.requires_grad = False
    hooks = [BNFeatureHook(m) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    targets = (torch.arange(batch) % 1000).to(dev)
    inputs = torch.randn((batch, 3, res, res), requires_grad=True, device=dev)
    optimizer = optim.Adam([inputs], lr=0.25, betas=[0.5, 0.9], eps=1e-8)
    criterion = nn.CrossEntropyLoss()
    aug = transforms.Compose([transforms.RandomResizedCrop(res, scale=(0.08, 1.0)), transforms.RandomHorizontalFlip()])
    t0 = None
    for it in range(warmup + iters):
        if it == warmup:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        x = torch.roll(aug(inputs), shifts=(random.randint(0, 32), random.randint(0, 32)), dims=(2, 3))
        optimizer.zero_grad()
        out = model(x)
        loss = criterion(out, targets) + 0.01 * sum(h.r_feature * (10.0 if i == 0 else 1.0) for i, h in enumerate(hooks))
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            inputs.data.clamp_(-2.1, 2.6)
    torch.cuda.synchronize()
    return 1e3 * (time.perf_counter() - t0) / iters


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--archs", default="resnet18,resnet50")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--res", type=int, default=224)
    ap.add_argument("--iters", type=int, default=10)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible to PyTorch")
    torch.manual_seed(0)
    random.seed(0)
    name = torch.cuda.get_device_name(0)
    for arch in args.archs.split(","):
        ms = ms_per_iter(arch, args.batch, args.res, args.iters)
        print("TIMING " + json.dumps({"kind": "pytorch", "device": name, "arch": arch, "res": args.res, "batch": args.batch,
                                      "ms": ms, "torch": torch.__version__, "cudnn_tf32": torch.backends.cudnn.allow_tf32}), flush=True)


if __name__ == "__main__":
    main()
