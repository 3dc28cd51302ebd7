//! Bad input gives a clear error naming the problem and a non-zero exit, never a panic.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::fixture;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cda-engine"))
}

/// Runs the binary; asserts failure with a message containing every `needle`.
fn fails_with(args: &[&str], needles: &[&str]) -> String {
    let out = bin().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{args:?} succeeded; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "{args:?}: stderr lacks {n:?}: {stderr}");
    }
    stderr
}

/// The fixture model's tensors (name, dtype, shape, bytes), to be edited into bad files.
fn tensors() -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(fixture("forward/basic_cifar_batch1.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<_> = st.tensors().into_iter().map(|(n, t)| (n.to_string(), t.dtype(), t.shape().to_vec(), t.data().to_vec())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn write(dir: &Path, name: &str, ts: &[(String, Dtype, Vec<usize>, Vec<u8>)]) -> PathBuf {
    let views: Vec<(String, TensorView<'_>)> = ts.iter().map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    let bytes = safetensors::tensor::serialize(views, None::<HashMap<String, String>>).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn bad_weight_files_are_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = tensors();

    let missing: Vec<_> = good.iter().filter(|t| t.0 != "layer2.0.bn1.running_var").cloned().collect();
    let p = write(dir.path(), "missing.safetensors", &missing);
    fails_with(&["inspect", p.to_str().unwrap()], &["missing tensor `layer2.0.bn1.running_var`"]);

    let mut wrong_shape = good.clone();
    let t = wrong_shape.iter_mut().find(|t| t.0 == "layer1.0.conv2.weight").unwrap();
    t.2 = vec![t.2[0], t.2[1], 1, 9];
    let p = write(dir.path(), "shape.safetensors", &wrong_shape);
    fails_with(&["inspect", p.to_str().unwrap()], &["`layer1.0.conv2.weight`", "expected [8, 8, 3, 3]"]);

    let mut extra = good.clone();
    extra.push(("layer1.0.se.fc.weight".into(), Dtype::F32, vec![2], vec![0; 8]));
    let p = write(dir.path(), "extra.safetensors", &extra);
    fails_with(&["inspect", p.to_str().unwrap()], &["unexpected tensor", "layer1.0.se.fc.weight"]);

    let mut bad_dtype = good.clone();
    let t = bad_dtype.iter_mut().find(|t| t.0 == "fc.weight").unwrap();
    t.1 = Dtype::I32;
    let p = write(dir.path(), "dtype.safetensors", &bad_dtype);
    fails_with(&["inspect", p.to_str().unwrap()], &["`fc.weight`", "dtype I32"]);

    let mut nan = good.clone();
    let t = nan.iter_mut().find(|t| t.0 == "conv1.weight").unwrap();
    t.3[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
    let p = write(dir.path(), "nan.safetensors", &nan);
    fails_with(&["inspect", p.to_str().unwrap()], &["`conv1.weight`", "non-finite"]);

    let bytes = std::fs::read(fixture("forward/basic_cifar_batch1.safetensors")).unwrap();
    let p = dir.path().join("truncated.safetensors");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    fails_with(&["inspect", p.to_str().unwrap()], &["not a valid safetensors file"]);

    let p = dir.path().join("garbage.safetensors");
    std::fs::write(&p, b"this is not a tensor file at all").unwrap();
    fails_with(&["inspect", p.to_str().unwrap()], &["not a valid safetensors file"]);

    fails_with(&["inspect", dir.path().join("absent.safetensors").to_str().unwrap()], &["cannot read", "absent.safetensors"]);
}

#[test]
fn forward_rejects_mismatched_input_and_unwritable_output() {
    let dir = tempfile::tempdir().unwrap();
    let weights = fixture("forward/basic_cifar_batch1.safetensors");
    // 1-channel input for a 3-channel model
    let x = vec![0u8; 4 * 16 * 16];
    let view = TensorView::new(Dtype::F32, vec![1, 1, 16, 16], &x).unwrap();
    let bytes = safetensors::tensor::serialize([("input", view)], None::<HashMap<String, String>>).unwrap();
    let input = dir.path().join("x.safetensors");
    std::fs::write(&input, bytes).unwrap();
    fails_with(
        &[
            "forward",
            "--weights",
            weights.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            dir.path().join("y.safetensors").to_str().unwrap(),
        ],
        &["tensor `input` has shape [1, 1, 16, 16]", "expected [N, 3, H, W]"],
    );
    // a good input, but the output's parent is a file
    let io = fixture("forward/basic_cifar_batch1.io.safetensors");
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, b"x").unwrap();
    fails_with(
        &["forward", "--weights", weights.to_str().unwrap(), "--input", io.to_str().unwrap(), "--output", blocker.join("y.safetensors").to_str().unwrap()],
        &["cannot write"],
    );
}

#[test]
fn run_rejects_bad_options_before_doing_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    let o = out.to_str().unwrap();
    fails_with(&["run", "--out", o, "--lr=-1"], &["--lr must be positive"]);
    fails_with(&["run", "--out", o, "--milestone", "1.5"], &["--milestone must be in [0, 1]"]);
    fails_with(&["run", "--out", o, "--ipc-start", "5", "--ipc-end", "5"], &["--ipc-start 5 must be below --ipc-end 5"]);
    fails_with(&["run", "--out", o, "--classes", "11"], &["--classes 11 must be in 1..=10"]);
    fails_with(&["run", "--out", o, "--mean", "0.5,0.5", "--std", "0.2,0.2"], &["need 1 values"]);
    fails_with(&["run", "--out", o, "--jitter", "40"], &["--jitter 40 must be smaller than the image size"]);
    fails_with(&["run", "--out", o, "--iteration", "abc"], &["invalid value 'abc'"]);
    assert!(!out.join("recover_record.json").exists());
}

#[test]
fn run_refuses_to_mix_settings_in_one_output_folder() {
    let dir = tempfile::tempdir().unwrap();
    let o = dir.path().join("o");
    let o = o.to_str().unwrap();
    let ok = bin().args(["run", "--out", o, "--iteration", "2", "--ipc-end", "1", "--classes", "2", "--quiet"]).output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    fails_with(&["run", "--out", o, "--iteration", "3", "--ipc-end", "1", "--classes", "2", "--quiet"], &["different settings"]);
}

#[test]
fn cuda_without_a_gpu_says_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin().args(["run", "--device", "cuda", "--iteration", "1", "--out", dir.path().join("o").to_str().unwrap()]).output().unwrap();
    if out.status.success() {
        return; // a machine with a usable GPU
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--device cuda") && !stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_bad_gpu_list_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let o = dir.path().join("o");
    let o = o.to_str().unwrap();
    // Syntax errors, whatever the machine: clap reports them with the offending text.
    fails_with(&["run", "--device", "cuda:0,x", "--out", o], &["\"x\"", "not a GPU number"]);
    fails_with(&["run", "--device", "cuda:1,1", "--out", o], &["GPU 1 is named twice"]);
    fails_with(&["run", "--device", "cuda:+1", "--out", o], &["\"+1\"", "not a GPU number"]);
    fails_with(&["run", "--device", "gpu", "--out", o], &["not a device", "cuda:all"]);
    // GPU 999 exists nowhere: without a GPU the message says why none is usable, with one it says
    // there is no GPU 999; either way it names the option and writes nothing.
    fails_with(&["run", "--device", "cuda:0,999", "--iteration", "1", "--out", o], &["--device cuda:0,999"]);
    assert!(!Path::new(o).exists(), "a refused device list created the output folder");
}

/// Every flag of every command says what it does in `--help` (not only its name and default).
#[test]
fn every_flag_of_every_command_has_help() {
    let top = String::from_utf8(bin().arg("--help").output().unwrap().stdout).unwrap();
    let commands: Vec<String> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect();
    assert!(commands.len() >= 10, "{top}");
    // Text that is not help: clap's own [default: ...] and [possible values: ...].
    let strip = |t: &str| {
        let mut out = String::new();
        let mut depth = 0;
        for ch in t.chars() {
            match ch {
                '[' => depth += 1,
                ']' => depth -= 1,
                _ if depth == 0 => out.push(ch),
                _ => {}
            }
        }
        out.trim().to_string()
    };
    let mut blank = Vec::new();
    for c in &commands {
        let help = String::from_utf8(bin().args([c, "--help"]).output().unwrap().stdout).unwrap();
        let lines: Vec<&str> = help.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim_start();
            let t = t.strip_prefix("-h, ").unwrap_or(t);
            let Some(rest) = t.strip_prefix("--") else { continue };
            if !l.starts_with("  ") || rest.starts_with("help") {
                continue;
            }
            // "--flag <VALUE>  help" on one line, or the help on the next, deeper-indented line.
            let name = rest.split_whitespace().next().unwrap_or("");
            let after = rest[name.len()..].trim_start();
            let after = if after.starts_with('<') { after.split_once('>').map_or("", |(_, r)| r) } else { after };
            let next = lines.get(i + 1).copied().unwrap_or("");
            let next_is_help = next.starts_with("          ") && !next.trim_start().starts_with('-') && !strip(next).is_empty();
            if strip(after).is_empty() && !next_is_help {
                blank.push(format!("{c} --{name}"));
            }
        }
    }
    assert!(blank.is_empty(), "flags without help: {blank:?}");
}
