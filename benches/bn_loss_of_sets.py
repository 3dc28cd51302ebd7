#!/usr/bin/env python3
"""The recover BN-matching loss of image sets, computed independently of the engine in PyTorch, to put
the loss the engine reports during `run` next to what real images score.

For each ImageFolder (the images as saved: JPEG/PNG read back, normalised with the teacher's mean/std),
as one batch of at most --batch images per chunk, the official loss: sum over BN layers of
||running_var - var||_2 + ||running_mean - mean||_2 of the layer's input (biased variance, forward
hooks as the official utils.py), the first BN layer times --first-bn-multiplier. Two columns:
  plain      the images as they are
  cropped    mean over --draws of the official batch-shared RandomResizedCrop(res, scale=(0.08, 1))
             + flip (what every recover iteration sees at the end of the curriculum, and all along
             in SRe2L), seeded
Real images (e.g. a `cda-engine sample` subset of the training set) give the floor: a batch of real
images does not reach zero, and under small crops real images score far from the running statistics too.

    python3 benches/bn_loss_of_sets.py --weights weights/fashion_mnist_resnet18_w16.safetensors \
        real=target/quality/real_ipc10 cda=target/quality/cda_ipc10 sre2l=target/quality/sre2l_ipc10
"""
import argparse
import glob
import os
import sys

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from torchvision import transforms
from torchvision.models.resnet import BasicBlock, Bottleneck

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures"))
from tv_resnet import ResNet  # noqa: E402
from make_recover_fixtures import BNFeatureHook  # noqa: E402  (the official utils.py hook)


def teacher(path):
    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
    sd = load_file(path)
    bottleneck = "layer1.0.conv3.weight" in sd
    layers = [len({k.split(".")[1] for k in sd if k.startswith(f"layer{i}.")}) for i in range(1, 5)]
    widths = [sd[f"layer{i}.0.conv1.weight"].shape[0] for i in range(1, 5)]
    stem = "imagenet" if sd["conv1.weight"].shape[-1] == 7 else "cifar"
    m = ResNet(Bottleneck if bottleneck else BasicBlock, layers, widths, sd["conv1.weight"].shape[1], sd["fc.weight"].shape[0], stem,
               stem_width=sd["conv1.weight"].shape[0])
    m.load_state_dict({k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}, strict=False)
    mean = [float(v) for v in meta["mean"].strip("[]").split(",")]
    std = [float(v) for v in meta["std"].strip("[]").split(",")]
    return m.eval(), mean, std


def load_folder(root, mean, std):
    files = sorted(glob.glob(os.path.join(root, "*", "*.jpg")) + glob.glob(os.path.join(root, "*", "*.png")))
    if not files:
        sys.exit(f"{root}: no class folders with images")
    imgs = []
    for f in files:
        a = np.asarray(Image.open(f), dtype=np.float32) / 255.0
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        imgs.append(a)
    x = torch.from_numpy(np.stack(imgs))
    return (x - torch.tensor(mean)[None, :, None, None]) / torch.tensor(std)[None, :, None, None]


def bn_loss(model, hooks, x, mult):
    with torch.no_grad():
        model(x)
    return float(sum(h.r_feature * (mult if i == 0 else 1.0) for i, h in enumerate(hooks)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", required=True)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--draws", type=int, default=64)
    ap.add_argument("--first-bn-multiplier", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("sets", nargs="+", help="NAME=IMAGEFOLDER")
    a = ap.parse_args()
    torch.set_num_threads(2)
    model, mean, std = teacher(a.weights)
    hooks = [BNFeatureHook(m) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    print(f"| set | images | BN loss, plain | BN loss, cropped (mean of {a.draws} draws) |")
    print("|---|---|---|---|")
    for spec in a.sets:
        name, _, root = spec.partition("=")
        x = load_folder(root, mean, std)
        res = x.shape[-1]
        aug = transforms.Compose([transforms.RandomResizedCrop(res, scale=(0.08, 1.0)), transforms.RandomHorizontalFlip()])
        plain, cropped = [], []
        for i in range(0, len(x), a.batch):
            xb = x[i:i + a.batch]
            plain.append(bn_loss(model, hooks, xb, a.first_bn_multiplier))
            torch.manual_seed(a.seed)
            cropped.extend(bn_loss(model, hooks, aug(xb), a.first_bn_multiplier) for _ in range(a.draws))
        print(f"| {name} | {len(x)} | {np.mean(plain):.1f} | {np.mean(cropped):.1f} |")


if __name__ == "__main__":
    main()
