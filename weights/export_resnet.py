#!/usr/bin/env python3
"""Turn a torchvision / timm ResNet checkpoint or state dict into the safetensors cda-engine reads.

Accepts: a .pth/.pt/.tar checkpoint (a plain state dict, or one nested under `state_dict` / `model`,
names optionally prefixed `module.` by nn.DataParallel), a whole pickled nn.Module, or a safetensors
file; or `--torchvision NAME` to export torchvision's pretrained weights (needs them cached/downloadable).

Writes float32 tensors with torchvision names (num_batches_tracked dropped) and metadata:
arch, stem (imagenet|cifar), num_classes, in_channels, mean, std (JSON lists), plus any --meta k=v.

    python3 weights/export_resnet.py ckpt.pth out.safetensors --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225
"""
import argparse
import json
import sys

import torch
from safetensors.torch import save_file

PRESET_NORMS = {
    "imagenet": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    "tiny-imagenet": ([0.4802, 0.4481, 0.3975], [0.2302, 0.2265, 0.2262]),
    "cifar-100": ([0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]),
    "fashion-mnist": ([0.2860], [0.3530]),
}
WRAPPERS = ("module.", "state_dict.", "model.")


def load_state_dict(path):
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        obj = load_file(path)
    else:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    for key in ("state_dict", "model", "model_state_dict", "net"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        sys.exit(f"error: {path} holds a {type(obj).__name__}, not a state dict")
    sd = {k: v for k, v in obj.items() if torch.is_tensor(v)}
    while sd and any(all(k.startswith(p) for k in sd) for p in WRAPPERS):
        p = next(p for p in WRAPPERS if all(k.startswith(p) for k in sd))
        sd = {k[len(p):]: v for k, v in sd.items()}
    return sd


def describe(sd):
    if "conv1.weight" not in sd or "fc.weight" not in sd:
        sys.exit("error: not a torchvision-style ResNet state dict (no conv1.weight / fc.weight)")
    w = sd["conv1.weight"]
    stem = "imagenet" if w.shape[-1] == 7 else "cifar"
    bottleneck = "layer1.0.conv3.weight" in sd
    blocks = []
    stage = 1
    while f"layer{stage}.0.conv1.weight" in sd:
        i = 0
        while f"layer{stage}.{i}.conv1.weight" in sd:
            i += 1
        blocks.append(i)
        stage += 1
    names = {("basic", (2, 2, 2, 2)): "resnet18", ("basic", (3, 4, 6, 3)): "resnet34",
             ("bottleneck", (3, 4, 6, 3)): "resnet50", ("bottleneck", (3, 4, 23, 3)): "resnet101",
             ("bottleneck", (3, 8, 36, 3)): "resnet152"}
    kind = "bottleneck" if bottleneck else "basic"
    arch = names.get((kind, tuple(blocks)), f"resnet-custom-{kind}-{'-'.join(map(str, blocks))}")
    return {"arch": arch, "stem": stem, "num_classes": str(sd["fc.weight"].shape[0]),
            "in_channels": str(w.shape[1])}


def export(sd, out, mean=None, std=None, extra=None):
    """Writes `sd` (a torchvision ResNet state dict) to `out` with cda-engine metadata."""
    sd = {k: v.detach().to(torch.float32).contiguous() for k, v in sd.items()
          if not k.endswith("num_batches_tracked")}
    meta = describe(sd)
    if mean is not None:
        meta["mean"] = json.dumps([float(m) for m in mean])
    if std is not None:
        meta["std"] = json.dumps([float(s) for s in std])
    meta.update({k: str(v) for k, v in (extra or {}).items()})
    save_file(sd, out, metadata=meta)
    return meta


def floats(text):
    return [float(x) for x in text.split(",")]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", nargs="?", help="checkpoint or state dict file")
    ap.add_argument("output", help="safetensors to write")
    ap.add_argument("--torchvision", metavar="NAME", help="export torchvision.models.NAME(weights='DEFAULT')")
    ap.add_argument("--norm", choices=sorted(PRESET_NORMS), help="mean/std preset")
    ap.add_argument("--mean", type=floats, help="comma-separated per-channel mean")
    ap.add_argument("--std", type=floats, help="comma-separated per-channel std")
    ap.add_argument("--stem", choices=["imagenet", "cifar"], help="override the stem inferred from conv1")
    ap.add_argument("--meta", action="append", default=[], help="extra metadata key=value")
    args = ap.parse_args()
    if args.torchvision:
        import torchvision
        sd = getattr(torchvision.models, args.torchvision)(weights="DEFAULT").state_dict()
        mean, std = PRESET_NORMS["imagenet"]
    elif args.checkpoint:
        sd = load_state_dict(args.checkpoint)
        mean, std = PRESET_NORMS[args.norm] if args.norm else (None, None)
    else:
        ap.error("give a checkpoint or --torchvision NAME")
    mean = args.mean or mean
    std = args.std or std
    extra = dict(kv.split("=", 1) for kv in args.meta)
    if args.stem:
        extra["stem"] = args.stem
    meta = export(sd, args.output, mean, std, extra)
    print(f"wrote {args.output}: " + ", ".join(f"{k}={v}" for k, v in meta.items()))


if __name__ == "__main__":
    main()
