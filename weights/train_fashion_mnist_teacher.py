#!/usr/bin/env python3
"""The PyTorch twin of the default teacher's recipe: the same model, data and recipe as
`cda-engine squeeze --data fashion-mnist --epochs 4` (which trained the shipped
weights/fashion_mnist_resnet18_w16.safetensors). It made the first shipped teacher (91.96%) and stays
as the reference the engine's training is compared with.

Model: torchvision-style ResNet-18 (BasicBlock, [2, 2, 2, 2]) with a CIFAR stem (3x3/1 conv, no max
pool), widths 16/32/64/128, 1 input channel, 10 classes, for 28x28 Fashion-MNIST.
Data: the Debian package dataset-fashion-mnist (/usr/share/datasets/fashion-mnist), normalised with
mean 0.2860, std 0.3530; augmentation: random crop 28 with 2-pixel zero padding, horizontal flip.
Recipe: SGD momentum 0.9 nesterov, weight decay 5e-4, batch 128, lr 0.1 with per-step cosine decay
(one-epoch linear warm-up), --epochs (default 4), seed 0. Reports test top-1 and writes it into the metadata.

    python3 weights/train_fashion_mnist_teacher.py [--epochs 4] [--threads 2] [--out FILE]
"""
import argparse
import gzip
import math
import os
import struct
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "fixtures"))
sys.path.insert(0, HERE)
from tv_resnet import ResNet  # noqa: E402
from export_resnet import export  # noqa: E402

DATA = "/usr/share/datasets/fashion-mnist"
MEAN, STD = 0.2860, 0.3530


def read_idx(path):
    with gzip.open(path, "rb") as f:
        magic = struct.unpack(">I", f.read(4))[0]
        dims = [struct.unpack(">I", f.read(4))[0] for _ in range(magic & 0xFF)]
        return np.frombuffer(f.read(), dtype=np.uint8).reshape(dims)


def load(split):
    prefix = "train" if split == "train" else "t10k"
    x = read_idx(os.path.join(DATA, f"{prefix}-images-idx3-ubyte.gz")).astype(np.float32) / 255.0
    y = read_idx(os.path.join(DATA, f"{prefix}-labels-idx1-ubyte.gz")).astype(np.int64)
    x = (torch.from_numpy(x).unsqueeze(1) - MEAN) / STD
    return x, torch.from_numpy(y)


def augment(x, gen):
    n = x.shape[0]
    pad = F.pad(x, (2, 2, 2, 2), value=(0.0 - MEAN) / STD)
    i = torch.randint(0, 5, (n,), generator=gen)
    j = torch.randint(0, 5, (n,), generator=gen)
    rows = (i[:, None] + torch.arange(28)[None, :])[:, :, None].expand(n, 28, 28)
    cols = (j[:, None] + torch.arange(28)[None, :])[:, None, :].expand(n, 28, 28)
    out = pad[torch.arange(n)[:, None, None], 0, rows, cols].unsqueeze(1)
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(3)
    return out


def evaluate(model, x, y):
    model.eval()
    correct = 0
    with torch.no_grad():
        for k in range(0, len(x), 1000):
            correct += (model(x[k:k + 1000]).argmax(1) == y[k:k + 1000]).sum().item()
    return 100.0 * correct / len(x)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="fashion_mnist_resnet18_w16_pytorch.safetensors")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    xtr, ytr = load("train")
    xte, yte = load("test")
    model = ResNet(BasicBlock, [2, 2, 2, 2], [16, 32, 64, 128], in_channels=1, num_classes=10, stem="cifar")
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0}],
                          lr=0.1, momentum=0.9, nesterov=True)
    bs = 128
    steps_per_epoch = len(xtr) // bs
    total = args.epochs * steps_per_epoch
    step = 0
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        t0 = time.time()
        loss_sum = 0.0
        for b in range(steps_per_epoch):
            idx = perm[b * bs:(b + 1) * bs]
            xb = augment(xtr[idx], gen)
            lr = 0.1 * min(1.0, (step + 1) / steps_per_epoch) * 0.5 * (1 + math.cos(math.pi * step / total))
            for g in opt.param_groups:
                g["lr"] = lr
            loss = F.cross_entropy(model(xb), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item()
            step += 1
        acc = evaluate(model, xte, yte)
        print(f"epoch {epoch + 1}/{args.epochs} loss {loss_sum / steps_per_epoch:.4f} test top-1 {acc:.2f}% "
              f"({time.time() - t0:.0f}s)", flush=True)
    acc = evaluate(model, xte, yte)
    meta = export(model.state_dict(), args.out, [MEAN], [STD], {
        "dataset": "fashion-mnist", "image_size": "28", "test_top1": f"{acc:.2f}",
        "recipe": f"weights/train_fashion_mnist_teacher.py --epochs {args.epochs} (seed 0, PyTorch {torch.__version__})",
    })
    print(f"wrote {args.out}: test top-1 {acc:.2f}%; {meta}")


if __name__ == "__main__":
    main()
