#!/usr/bin/env python3
"""Checks a case exported by the CUDA backend's tests against PyTorch (torchvision's own ResNet).

The test `gpu_resnet18_224_batch100_vs_cpu` (tests/cuda_gpu.rs, with CDA_GPU_EXPORT=<dir>) writes
<dir>/<arch>.safetensors (a torchvision state dict) and <dir>/<arch>.io.safetensors (input, targets,
per-BN-layer weights, and the engine's fp32 logits, BN-input statistics, losses and input gradient).
This script recomputes all of them with PyTorch in fp32 (TF32 off) on the GPU when there is one:

    loss = CE(model(x), targets) + sum_l w_l * (||var_l - running_var_l||_2 + ||mean_l - running_mean_l||_2)

with mean_l / var_l the per-channel mean and biased variance of BN layer l's input (module order), as
the official recover code's BNFeatureHook; the gradient is d loss / d x.

    python3 benches/gpu/pytorch_check.py <dir> [--arch resnet18] [--tol 1e-3]
Prints max abs / relative-to-scale error per tensor and a last line `PYTORCH_CHECK {json}`; exits 1
when any tensor is off by more than --tol of its scale (fp32 vs fp32 with different algorithms:
cuDNN may pick FFT or Winograd convolutions, ~1e-5 relative; 1e-3 fails any real error).
"""
import argparse
import json
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from safetensors.torch import load_file


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--tol", type=float, default=1e-3)
    args = ap.parse_args()
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    sd = load_file(os.path.join(args.dir, f"{args.arch}.safetensors"))
    io = load_file(os.path.join(args.dir, f"{args.arch}.io.safetensors"))
    classes = sd["fc.weight"].shape[0]
    model = torchvision.models.get_model(args.arch, num_classes=classes)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        sys.exit(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    model = model.to(dev).eval()
    for p in model.parameters():
        p.requires_grad_(False)

    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    stats, rs = [], []

    def hook(module, inputs, output):
        x = inputs[0]
        mean = x.mean([0, 2, 3])
        var = x.permute(1, 0, 2, 3).reshape(x.shape[1], -1).var(1, unbiased=False)
        stats.append(torch.cat([mean, var]).detach())
        rs.append(torch.norm(module.running_var - var, 2) + torch.norm(module.running_mean - mean, 2))

    for m in bns:
        m.register_forward_hook(hook)
    x = io["input"].to(dev).requires_grad_(True)
    targets = io["targets"].to(dev).long()
    weights = io["bn_weights"].to(dev).double()
    logits = model(x)
    ce = F.cross_entropy(logits, targets)
    loss = ce + sum(w * r for w, r in zip(weights, rs))
    loss.backward()

    def compare(name, got, want):
        got, want = got.detach().double().cpu().flatten(), want.detach().double().cpu().flatten()
        finite = bool(torch.isfinite(got).all())
        scale = max(want.abs().max().item(), 1e-30)
        err = (got - want).abs().max().item() if finite else float("inf")
        ok = finite and err / scale <= args.tol
        print(f"{name:<28} max_abs {err:.3e}  rel_to_scale {err / scale:.3e}  {'ok' if ok else 'FAIL'}")
        return {"name": name, "rel_to_scale": err / scale, "ok": ok}

    results = [compare("logits", io["logits"], logits)]
    for l, s in enumerate(stats):
        results.append(compare(f"bn.{l} mean+var", io[f"bn.{l}.stats"], s))
    losses = torch.stack([ce] + rs)
    results.append(compare("losses", io["losses"], losses))
    results.append(compare("input gradient", io["dx"], x.grad))
    ok = all(r["ok"] for r in results)
    worst = max(results, key=lambda r: r["rel_to_scale"])
    print("PYTORCH_CHECK " + json.dumps({"arch": args.arch, "device": str(dev), "torch": torch.__version__, "ok": ok,
                                         "worst": worst["name"], "worst_rel": worst["rel_to_scale"], "tol": args.tol}))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
