//! weights/export_resnet.py on the checkpoint layouts training scripts write. Runs only where
//! python3 with torch and safetensors is installed (it prints why it skips otherwise).

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn python_with_torch() -> bool {
    Command::new("python3").args(["-c", "import torch, safetensors.torch"]).output().is_ok_and(|o| o.status.success())
}

/// Writes the shipped teacher's tensors as a checkpoint in several layouts, exports each with the
/// script, and checks the engine reads the result with the same tensors.
#[test]
fn export_finds_weights_under_the_usual_keys() {
    if !python_with_torch() {
        println!("skipped: python3 with torch and safetensors is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let teacher = root().join("weights/fashion_mnist_resnet18_w16.safetensors");
    // (file, --key or "", layout) of each checkpoint the script must read.
    let make = r#"
import sys, torch
from safetensors.torch import load_file
sd = load_file(sys.argv[1])
d = sys.argv[2]
ema = {"module." + k: v for k, v in sd.items()}
torch.save({"epoch": 3, "state_dict_ema": ema, "optimizer": {"lr": 0.1}}, d + "/ema.pth")
torch.save({"model_ema": {"module." + k: v for k, v in sd.items()}, "args": {"arch": "resnet18"}}, d + "/model_ema.pth")
# torchvision's reference scripts: model_ema is an AveragedModel state dict, its n_averaged beside module.*
torch.save({"model": sd, "model_ema": {"n_averaged": torch.tensor(7), **{"module." + k: v for k, v in sd.items()}}}, d + "/averaged.pth")
split = dict(sd)
for k in list(sd):
    if k.startswith("layer1.0.bn1."):
        split[k.replace("bn1.", "bn1.aux_bn.0.")] = sd[k].clone()
torch.save({"state_dict": split}, d + "/split_bn.pth")
torch.save({"state_dict": sd, "state_dict_ema": ema}, d + "/both.pth")
torch.save({"weird": {"inner": sd}}, d + "/custom.pth")
torch.save({"epoch": 1, "optimizer": {"x": torch.zeros(2)}}, d + "/empty.pth")
"#;
    let out = Command::new("python3").args(["-c", make, teacher.to_str().unwrap(), dir.path().to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let want = cda_engine::weights::read_tensor_file(&teacher).unwrap();
    let script = root().join("weights/export_resnet.py");
    let cases: [(&str, &[&str], &str); 6] = [
        ("ema.pth", &[], ""),
        ("model_ema.pth", &[], ""),
        ("averaged.pth", &["--key", "model_ema"], ""),
        ("split_bn.pth", &[], "dropped 4 timm split-BN auxiliary tensors"),
        ("both.pth", &["--key", "state_dict_ema"], ""),
        ("custom.pth", &["--key", "weird.inner"], ""),
    ];
    for (file, extra, note) in cases {
        let out_path = dir.path().join(format!("{file}.safetensors"));
        let out =
            Command::new("python3").arg(&script).arg(dir.path().join(file)).arg(&out_path).args(["--norm", "fashion-mnist"]).args(extra).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{file}: {stderr}");
        assert!(stderr.contains(note), "{file}: stderr lacks {note:?}: {stderr}");
        let got = cda_engine::weights::read_tensor_file(&out_path).unwrap();
        assert_eq!(got.tensors, want.tensors, "{file}: other tensors than the teacher's");
        cda_engine::model::ResNet::load(&out_path).unwrap_or_else(|e| panic!("{file}: {e}"));
    }
    // Two candidates and no --key: the first is used and the other is named.
    let out = Command::new("python3").arg(&script).arg(dir.path().join("both.pth")).arg(dir.path().join("b.safetensors")).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.contains("also found under: state_dict_ema"), "{stderr}");
    // Found under an unusual key too, and said where.
    let out = Command::new("python3").arg(&script).arg(dir.path().join("custom.pth")).arg(dir.path().join("c.safetensors")).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.contains("using the weights under `weird.inner`"), "{stderr}");
    // No ResNet anywhere: the error lists what is there and points at --key.
    let out = Command::new("python3").arg(&script).arg(dir.path().join("empty.pth")).arg(dir.path().join("e.safetensors")).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("optimizer") && stderr.contains("--key"), "{stderr}");
    // A --key that is not there names the keys that are.
    let out =
        Command::new("python3").arg(&script).arg(dir.path().join("ema.pth")).arg(dir.path().join("d.safetensors")).args(["--key", "model"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("no `model`") && stderr.contains("state_dict_ema"), "{stderr}");
}

fn python_has(modules: &str) -> bool {
    Command::new("python3").args(["-c", &format!("import {modules}")]).output().is_ok_and(|o| o.status.success())
}

/// `--torchvision NAME --weights TAG` and `--timm NAME` with `--random-init` (no download): the
/// metadata names the weights and carries their preprocessing, and the exported file is the same
/// network in the engine as in PyTorch: the file is loaded back into a fresh torchvision/timm
/// model (strict) and its logits on a seeded 2 x 3 x 224 x 224 batch (torch.manual_seed(5)) are
/// compared with `cda-engine forward`'s, within 1e-4 of the largest logit (float32 through 18
/// layers in another summation order gives about 1e-6). Networks the engine does not run are
/// refused. tests/fixtures/check_pretrained_exports.py does the same for more names and ResNet-50.
#[test]
fn export_by_name_records_the_weights_and_matches_pytorch() {
    if !python_has("torch, safetensors.torch, torchvision, timm") {
        println!("skipped: python3 with torch, safetensors, torchvision and timm is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = root().join("weights/export_resnet.py");
    let reference = r#"
import sys, torch, torchvision, timm
from safetensors.torch import load_file, save_file
flag, name, st, xin, yout = sys.argv[1:]
model = torchvision.models.get_model(name, num_classes=1000) if flag == "--torchvision" else timm.create_model(name, pretrained=False)
missing, unexpected = model.load_state_dict(load_file(st), strict=False)
assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
torch.manual_seed(5)
x = torch.randn(2, 3, 224, 224)
with torch.no_grad():
    y = model.eval()(x)
save_file({"input": x}, xin)
save_file({"logits": y}, yout)
"#;
    let logits = |p: &std::path::Path| cda_engine::weights::read_tensor_file(p).unwrap().tensors["logits"].data.clone();
    for (flag, name, tag, weights) in
        [("--torchvision", "resnet18", Some("IMAGENET1K_V1"), "ResNet18_Weights.IMAGENET1K_V1"), ("--timm", "resnet18.a1_in1k", None, "timm resnet18.a1_in1k")]
    {
        let st = dir.path().join(format!("{name}.safetensors"));
        let mut cmd = Command::new("python3");
        cmd.arg(&script).arg(&st).args([flag, name, "--random-init", "3"]);
        if let Some(t) = tag {
            cmd.args(["--weights", t]);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let model = cda_engine::model::ResNet::load(&st).unwrap();
        assert_eq!((model.num_classes, model.in_channels), (1000, 3));
        let meta = &model.metadata;
        assert_eq!(meta["source"], &flag[2..]);
        assert!(meta["weights"].contains(weights) && meta["weights"].starts_with("random (seed 3)"), "{meta:?}");
        assert_eq!(meta["mean"], "[0.485, 0.456, 0.406]");
        assert_eq!(meta["std"], "[0.229, 0.224, 0.225]");
        assert_eq!(meta["image_size"], "224");
        let (xin, want, got) = (dir.path().join("x.safetensors"), dir.path().join("want.safetensors"), dir.path().join("got.safetensors"));
        let out = Command::new("python3").args(["-c", reference, flag, name]).args([&st, &xin, &want]).output().unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let out = Command::new(env!("CARGO_BIN_EXE_cda-engine"))
            .args(["forward", "--weights"])
            .arg(&st)
            .arg("--input")
            .arg(&xin)
            .arg("--output")
            .arg(&got)
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let (want, got) = (logits(&want), logits(&got));
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = want.iter().zip(&got).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(err <= 1e-4 * scale, "{name}: max |engine - PyTorch| {err} of {scale}");
    }
    // A deep stem with average-pool shortcuts, and squeeze-excitation: refused with the reason.
    for (name, says) in [("resnet50d", "deep stem"), ("seresnet50", "squeeze-excitation")] {
        let out = Command::new("python3").arg(&script).arg(dir.path().join("r.safetensors")).args(["--timm", name, "--random-init", "0"]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(says), "{name}: {stderr}");
    }
    let out =
        Command::new("python3").arg(&script).arg(dir.path().join("r.safetensors")).args(["--torchvision", "resnet18", "--weights", "V9"]).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no weights V9"));
}
