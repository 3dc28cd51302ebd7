#!/usr/bin/env python3
"""Turn a torchvision / timm ResNet checkpoint or state dict into the safetensors cda-engine reads.

Accepts: a .pth/.pt/.tar checkpoint (a plain state dict, or one nested under the keys training
scripts use: `state_dict`, `model`, `state_dict_ema`, `model_ema`, `ema`, `module`, `model_state_dict`,
`net`, ...; names optionally prefixed `module.` by nn.DataParallel/DDP or `_orig_mod.` by torch.compile),
a whole pickled nn.Module (or an EMA wrapper holding one), or a safetensors file; or pretrained
weights by name (downloading them needs the internet, or torch hub's / Hugging Face's cache):

    --torchvision NAME [--weights TAG]   torchvision.models NAME (resnet18, resnet50, ...) with the
                                         weights TAG (IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT)
    --timm NAME                          timm's NAME (resnet18.a1_in1k, resnet50.tv2_in1k, ...);
                                         only plain ResNets: deep stems (resnet50d), anti-aliasing,
                                         squeeze-excitation, grouped convolutions are refused

Both take mean/std and image size from the weights' own preprocessing and record where the weights
came from (source, weights, url, and torchvision's ImageNet-1K top-1). `--random-init SEED` keeps
NAME's architecture and metadata but draws seeded random weights and BN statistics instead of
downloading: it checks the export (tests/fixtures/check_pretrained_exports.py), it is no teacher. When a checkpoint holds
ResNet weights under several keys (e.g. `state_dict` and `state_dict_ema`) the first in that order is
used and the others are named; `--key state_dict_ema` picks one (dots go deeper: `--key ema.module`).
timm's split-BN auxiliary tensors (`*.aux_bn.*`) are dropped with a note: the main BN is the model's.

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
WRAPPERS = ("module.", "state_dict.", "model.", "_orig_mod.")
# Entries beside the weights that are not the model's: torch.optim.swa_utils.AveragedModel (what
# torchvision's reference scripts save as `model_ema`) keeps its update count next to `module.*`.
BOOKKEEPING = ("n_averaged",)
# Where training scripts keep the weights, in the order they are tried.
NESTED_KEYS = ("state_dict", "model", "model_state_dict", "state_dict_ema", "model_ema", "ema",
               "module", "net", "network", "ema_state_dict", "teacher")


def tensors_of(obj):
    """The tensor entries of a state dict or module (or an EMA wrapper's `.module`), else None."""
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    elif not isinstance(obj, dict) and hasattr(obj, "module") and isinstance(obj.module, torch.nn.Module):
        obj = obj.module.state_dict()
    if not isinstance(obj, dict):
        return None
    sd = {k: v for k, v in obj.items() if isinstance(k, str) and torch.is_tensor(v) and k not in BOOKKEEPING}
    while sd and any(all(k.startswith(p) for k in sd) for p in WRAPPERS):
        p = next(p for p in WRAPPERS if all(k.startswith(p) for k in sd))
        sd = {k[len(p):]: v for k, v in sd.items()}
    return sd


def is_resnet(sd):
    return bool(sd) and "conv1.weight" in sd and "fc.weight" in sd


def find_resnets(obj, path="", depth=0):
    """(key path, state dict) of every torchvision-style ResNet state dict inside `obj`."""
    found = []
    sd = tensors_of(obj)
    if sd is not None and is_resnet(sd):
        found.append((path, sd))
    if isinstance(obj, dict) and depth < 3:
        keys = [k for k in NESTED_KEYS if k in obj] + sorted(k for k in obj if isinstance(k, str) and k not in NESTED_KEYS)
        for k in keys:
            v = obj[k]
            if isinstance(v, (dict, torch.nn.Module)) or hasattr(v, "module"):
                found += find_resnets(v, f"{path}.{k}" if path else k, depth + 1)
    return found


def load_state_dict(path, key=None):
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        obj = load_file(path)
    else:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    if key:
        for part in key.split("."):
            if isinstance(obj, dict) and part in obj:
                obj = obj[part]
            elif hasattr(obj, part):
                obj = getattr(obj, part)
            else:
                keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
                sys.exit(f"error: {path}: no `{part}` in --key {key} (found: {keys})")
        sd = tensors_of(obj)
        if not is_resnet(sd):
            sys.exit(f"error: {path}: --key {key} holds no torchvision-style ResNet state dict (no conv1.weight / fc.weight)")
    else:
        found = find_resnets(obj)
        if not found:
            top = sorted(k for k in obj if isinstance(k, str))[:20] if isinstance(obj, dict) else type(obj).__name__
            sys.exit(f"error: {path}: no torchvision-style ResNet state dict (conv1.weight and fc.weight) at the top "
                     f"or under {', '.join(NESTED_KEYS)}; top-level keys: {top}; name one with --key")
        where, sd = found[0]
        others = [w or "(top level)" for w, _ in found[1:]]
        if others:
            print(f"note: using the weights under `{where or '(top level)'}`; also found under: {', '.join(others)} "
                  f"(pick one with --key)", file=sys.stderr)
        elif where and where.split(".")[0] not in NESTED_KEYS:
            print(f"note: using the weights under `{where}`", file=sys.stderr)
    aux = [k for k in sd if ".aux_bn." in k]
    if aux:
        print(f"note: dropped {len(aux)} timm split-BN auxiliary tensors (aux_bn); the main BN statistics are kept",
              file=sys.stderr)
        sd = {k: v for k, v in sd.items() if ".aux_bn." not in k}
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


def randomise(model, seed):
    """Seeded random weights and BN statistics (running mean/var too, so BN is not the identity)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 2.0)
            elif isinstance(m, torch.nn.Linear):
                m.weight.normal_(0, 0.05)
                m.bias.normal_(0, 0.05)
    return model


def from_torchvision(name, tag, random_init=None):
    """(state dict, mean, std, metadata) of torchvision.models NAME with weights TAG."""
    import torchvision
    try:
        weights = torchvision.models.get_model_weights(name)[tag]
    except (KeyError, ValueError) as e:
        sys.exit(f"error: torchvision has no weights {tag} for {name} ({e}); see torchvision.models.get_model_weights")
    if random_init is None:
        model = torchvision.models.get_model(name, weights=weights)
    else:
        model = randomise(torchvision.models.get_model(name, num_classes=len(weights.meta["categories"])), random_init)
    t = weights.transforms()
    acc = weights.meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1")
    meta = {"source": "torchvision", "weights": str(weights), "url": weights.url, "dataset": "imagenet-1k",
            "image_size": str(t.crop_size[0]), "resize_size": str(t.resize_size[0])}
    if acc is not None:
        meta["imagenet_top1"] = str(acc)
    if random_init is not None:
        meta["weights"] = f"random (seed {random_init}); architecture and metadata of {weights}"
        meta.pop("imagenet_top1", None)
    return model.state_dict(), list(t.mean), list(t.std), meta


def plain_resnet_problems(model):
    """What makes a timm ResNet other than torchvision's: one line per reason with the first place
    it occurs (empty when it is the same network)."""
    nn = torch.nn
    found = {}

    def bad(reason, where):
        found.setdefault(reason, []).append(where)

    c = getattr(model, "conv1", None)
    if not (isinstance(c, nn.Conv2d) and c.kernel_size == (7, 7) and c.stride == (2, 2)):
        bad("the stem is not one 7x7/2 convolution (a deep stem, as in resnet*d, resnet*t, resnet*s)", "conv1")
    if not isinstance(getattr(model, "maxpool", None), nn.MaxPool2d):
        bad("the stem has no 3x3/2 max pool", "maxpool")
    pool = getattr(model, "global_pool", None)
    if pool is not None and getattr(pool, "pool_type", "avg") != "avg":
        bad(f"the global pool is {pool.pool_type}, not avg", "global_pool")
    allowed = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Identity, nn.Sequential)
    for si in range(1, 5):
        for bi, block in enumerate(getattr(model, f"layer{si}", [])):
            where = f"layer{si}.{bi}"
            if type(block).__name__ not in ("BasicBlock", "Bottleneck"):
                bad(f"blocks of type {type(block).__name__}", where)
                continue
            for part, what in (("aa", "anti-aliasing"), ("se", "squeeze-excitation"), ("drop_block", "DropBlock")):
                m = getattr(block, part, None)
                if m is not None and not isinstance(m, nn.Identity):
                    bad(f"{what} ({part} is {type(m).__name__})", f"{where}.{part}")
            ds = getattr(block, "downsample", None)
            if ds is not None and not (isinstance(ds, nn.Sequential) and len(ds) == 2 and isinstance(ds[0], nn.Conv2d)
                                       and ds[0].kernel_size == (1, 1) and isinstance(ds[1], nn.BatchNorm2d)):
                bad("the shortcut is not a strided 1x1 convolution and BN (an average-pool shortcut, as in resnet*d)", f"{where}.downsample")
            for mname, m in block.named_modules():
                if isinstance(m, nn.Conv2d) and (m.groups != 1 or m.dilation != (1, 1)):
                    bad("grouped or dilated convolutions (ResNeXt, dilated ResNet)", f"{where}.{mname}")
                elif not isinstance(m, allowed) and m is not block and type(m).__name__ != "DropPath" \
                        and not mname.startswith(("aa", "se", "drop_block", "downsample")):
                    bad(f"layers of type {type(m).__name__}", f"{where}.{mname}")
    return [f"{reason} at {places[0]}" + (f" and {len(places) - 1} more" if len(places) > 1 else "")
            for reason, places in found.items()]


def from_timm(name, random_init=None):
    """(state dict, mean, std, metadata) of timm's NAME, refused unless it is a plain ResNet."""
    import timm
    try:
        model = timm.create_model(name, pretrained=random_init is None)
    except RuntimeError as e:
        sys.exit(f"error: timm could not make {name}: {e}")
    if type(model).__name__ != "ResNet":
        sys.exit(f"error: timm's {name} is a {type(model).__name__}, not a ResNet")
    problems = plain_resnet_problems(model)
    if problems:
        sys.exit(f"error: timm's {name} is not the torchvision ResNet the engine runs: " + "; ".join(problems))
    if random_init is not None:
        randomise(model, random_init)
    cfg = model.pretrained_cfg
    meta = {"source": "timm", "weights": f"timm {cfg.get('architecture', name)}.{cfg.get('tag', '')}".rstrip("."),
            "url": cfg.get("url") or (f"https://huggingface.co/{cfg['hf_hub_id']}" if cfg.get("hf_hub_id") else ""),
            "dataset": "imagenet-1k" if cfg.get("num_classes") == 1000 else "",
            # timm's input_size is the training resolution (where the BN statistics come from, so
            # recover's default); test_input_size the one its accuracy is quoted at.
            "image_size": str(cfg["input_size"][-1]), "test_image_size": str(cfg.get("test_input_size", ("",))[-1]),
            "crop_pct": str(cfg.get("crop_pct", ""))}
    if random_init is not None:
        meta["weights"] = f"random (seed {random_init}); architecture and metadata of {meta['weights']}"
    return model.state_dict(), list(cfg["mean"]), list(cfg["std"]), {k: v for k, v in meta.items() if v}


def floats(text):
    return [float(x) for x in text.split(",")]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", nargs="?", help="checkpoint or state dict file")
    ap.add_argument("output", help="safetensors to write")
    ap.add_argument("--torchvision", metavar="NAME", help="export torchvision.models NAME with --weights (downloads them)")
    ap.add_argument("--weights", metavar="TAG", default="DEFAULT",
                    help="torchvision weights: IMAGENET1K_V1, IMAGENET1K_V2 or DEFAULT (default: DEFAULT)")
    ap.add_argument("--timm", metavar="NAME", help="export timm's NAME with its pretrained weights (downloads them)")
    ap.add_argument("--random-init", metavar="SEED", type=int,
                    help="with --torchvision/--timm: seeded random weights instead of a download (checks the export)")
    ap.add_argument("--norm", choices=sorted(PRESET_NORMS), help="mean/std preset")
    ap.add_argument("--mean", type=floats, help="comma-separated per-channel mean")
    ap.add_argument("--std", type=floats, help="comma-separated per-channel std")
    ap.add_argument("--stem", choices=["imagenet", "cifar"], help="override the stem inferred from conv1")
    ap.add_argument("--meta", action="append", default=[], help="extra metadata key=value")
    ap.add_argument("--key", help="where the weights sit in the checkpoint, e.g. state_dict_ema (dots go deeper)")
    args = ap.parse_args()
    given = [x for x in (args.checkpoint, args.torchvision, args.timm) if x]
    if len(given) > 1:
        ap.error("give one of: a checkpoint, --torchvision NAME, --timm NAME")
    source = {}
    if args.torchvision:
        sd, mean, std, source = from_torchvision(args.torchvision, args.weights, args.random_init)
    elif args.timm:
        sd, mean, std, source = from_timm(args.timm, args.random_init)
    elif args.checkpoint:
        sd = load_state_dict(args.checkpoint, args.key)
        mean, std = PRESET_NORMS[args.norm] if args.norm else (None, None)
    else:
        ap.error("give a checkpoint, --torchvision NAME or --timm NAME")
    if args.random_init is not None and not (args.torchvision or args.timm):
        ap.error("--random-init goes with --torchvision or --timm")
    mean = args.mean or mean
    std = args.std or std
    extra = dict(source)
    extra.update(kv.split("=", 1) for kv in args.meta)
    if args.stem:
        extra["stem"] = args.stem
    meta = export(sd, args.output, mean, std, extra)
    print(f"wrote {args.output}: " + ", ".join(f"{k}={v}" for k, v in meta.items()))


if __name__ == "__main__":
    main()
