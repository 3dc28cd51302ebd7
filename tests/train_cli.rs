//! The training commands end to end on a tiny ImageFolder (3 classes x 4 grey 16x16 PNGs, a width-4
//! ResNet-18): squeeze -> sample -> relabel -> validate (replayed and online), and their errors.
//! Everything here takes a few seconds in the test profile.

use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cda-engine"))
}

fn ok(args: &[&str]) -> serde_json::Value {
    let out = bin().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?} failed: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_else(|| panic!("{args:?}: no stdout; stderr {stderr}"));
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{args:?}: last stdout line is not JSON ({e}): {last}"))
}

fn fails_with(args: &[&str], needle: &str) -> String {
    let out = bin().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    assert!(stderr.contains(needle), "{args:?}: stderr lacks {needle:?}: {stderr}");
    stderr
}

/// Like `fails_with`, and no epoch ran first: bad options and unwritable outputs cost no training time.
fn fails_before_training(args: &[&str], needle: &str) {
    let stderr = fails_with(args, needle);
    assert!(!stderr.contains("epoch 1"), "{args:?} trained before failing: {stderr}");
}

/// Class c's images are a bright square in a class-specific corner with noise: learnable in a few steps.
fn make_folder(root: &Path) {
    let mut seed = 1u32;
    for c in 0..3 {
        let dir = root.join(format!("c{c}"));
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..4 {
            let img = image::GrayImage::from_fn(16, 16, |x, y| {
                seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
                let noise = (seed >> 27) as u8;
                let (x0, y0) = [(0, 0), (8, 0), (4, 8)][c];
                image::Luma([if x >= x0 && x < x0 + 8 && y >= y0 && y < y0 + 8 { 200 + noise } else { noise }])
            });
            img.save(dir.join(format!("{i}.png"))).unwrap();
        }
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn squeeze_relabel_validate_round_trip_on_a_tiny_folder() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_folder(&data);
    let teacher: PathBuf = dir.path().join("teacher.safetensors");
    let common = ["--threads", "1", "--workers", "2", "--quiet"];
    let mut args = vec![
        "squeeze",
        "--data",
        s(&data),
        "--test-data",
        s(&data),
        "--out",
        s(&teacher),
        "--arch",
        "resnet18-w4",
        "--channels",
        "1",
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--lr",
        "0.05",
    ];
    args.extend(common);
    let r = ok(&args);
    assert_eq!(r["epochs"], 2);
    assert!(r["test_top1"].as_f64().is_some());
    // The teacher reads back as weights/export_resnet.py's files do, with the recipe and accuracy.
    let m = cda_engine::model::ResNet::load(&teacher).unwrap();
    assert_eq!((m.num_classes, m.in_channels, m.stage_widths.clone()), (3, 1, vec![4, 8, 16, 32]));
    for key in ["arch", "stem", "num_classes", "in_channels", "mean", "std", "dataset", "image_size", "test_top1", "recipe"] {
        assert!(m.metadata.contains_key(key), "metadata lacks {key}");
    }
    assert!(teacher.with_extension("json").exists());

    let subset = dir.path().join("subset");
    let r = ok(&["sample", "--data", s(&data), "--channels", "1", "--ipc", "2", "--out", s(&subset), "--seed", "3"]);
    assert_eq!(r["images"], 6);
    assert!(subset.join("new002/class002_id001.png").exists());

    let labels = dir.path().join("labels.safetensors");
    let mut args = vec![
        "relabel",
        "--teacher",
        s(&teacher),
        "--images",
        s(&subset),
        "--out",
        s(&labels),
        "--epochs",
        "3",
        "--batch-size",
        "4",
        "--topk",
        "2",
        "--seed",
        "5",
    ];
    args.extend(common);
    let r = ok(&args);
    assert_eq!((r["epochs"].as_u64(), r["images"].as_u64(), r["batch_size"].as_u64()), (Some(3), Some(6), Some(4)));

    let mut args = vec![
        "validate",
        "--teacher",
        s(&teacher),
        "--images",
        s(&subset),
        "--labels",
        s(&labels),
        "--test-data",
        s(&data),
        "--epochs",
        "3",
        "--student",
        "resnet18-w2",
        "--eval-every",
        "2",
    ];
    args.extend(common);
    let record = dir.path().join("record.json");
    args.extend(["--record", s(&record)]);
    let r = ok(&args);
    assert_eq!((r["epochs"].as_u64(), r["images"].as_u64(), r["steps"].as_u64()), (Some(3), Some(6), Some(6)));
    let top1 = r["top1"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&top1));
    let rec: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&record).unwrap()).unwrap();
    assert_eq!(rec["history"].as_array().unwrap().len(), 3);
    assert!(rec["history"][1]["test"]["top1"].as_f64().is_some() && rec["history"][0]["test"].is_null());

    // Online (no label file), teacher's architecture as the student, MixUp.
    let student = dir.path().join("student.safetensors");
    let mut args = vec![
        "validate",
        "--teacher",
        s(&teacher),
        "--images",
        s(&subset),
        "--test-data",
        s(&data),
        "--epochs",
        "2",
        "--batch-size",
        "3",
        "--mix",
        "mixup",
        "--temperature",
        "4",
    ];
    args.extend(["--save-student", s(&student)]);
    args.extend(common);
    let r = ok(&args);
    assert_eq!((r["epochs"].as_u64(), r["steps"].as_u64(), r["labels"].as_str()), (Some(2), Some(4), Some("online")));
    // The saved student is the trained one: `evaluate` (the inference network, read back from the
    // file) scores it on the same 12 test images exactly as validate's last evaluation did.
    let e = ok(&["evaluate", "--weights", s(&student), "--images", s(&data), "--threads", "1"]);
    assert_eq!(e["top1"].as_f64(), r["top1"].as_f64(), "evaluate {e} vs validate {r}");

    // Errors: more epochs than the file holds, labels for another set, bad student, a non-label file.
    let mut args = vec!["validate", "--teacher", s(&teacher), "--images", s(&subset), "--labels", s(&labels), "--test-data", s(&data), "--epochs", "4"];
    args.extend(common);
    fails_with(&args, "holds only 3 epochs");
    let mut args = vec!["validate", "--teacher", s(&teacher), "--images", s(&data), "--labels", s(&labels), "--test-data", s(&data), "--epochs", "1"];
    args.extend(common);
    fails_with(&args, "another image set");
    fails_with(&["validate", "--teacher", s(&teacher), "--images", s(&subset), "--test-data", s(&data), "--student", "vgg11"], "unknown architecture");
    if cda_engine::device::gpu_usable().is_err() {
        // Without a usable GPU, asking for the CUDA executor is an error that says why.
        fails_with(&["validate", "--teacher", s(&teacher), "--images", s(&subset), "--test-data", s(&data), "--device", "cuda"], "--device cuda");
    }
    fails_with(&["validate", "--teacher", s(&teacher), "--images", s(&subset), "--labels", s(&teacher), "--test-data", s(&data)], "not a relabel file");
    fails_with(&["relabel", "--teacher", s(&teacher), "--images", s(&subset), "--out", s(&labels), "--topk", "3"], "--topk 3");
    fails_with(&["squeeze", "--data", "no-such-dataset", "--out", s(&teacher)], "not a dataset name");
    fails_with(&["squeeze", "--data", s(&data), "--channels", "1", "--out", s(&teacher), "--mean", "0.5"], "both --mean and --std");

    // Bad numbers and unwritable outputs (a path under a regular file) fail before any training.
    let unwritable = teacher.join("out.safetensors");
    let squeeze = |extra: &[&str], needle: &str| {
        let mut args =
            vec!["squeeze", "--data", s(&data), "--test-data", s(&data), "--arch", "resnet18-w4", "--channels", "1", "--epochs", "1", "--batch-size", "4"];
        args.extend(extra);
        args.extend(common);
        if !extra.contains(&"--out") {
            args.extend(["--out", s(&teacher)]);
        }
        fails_before_training(&args, needle);
    };
    squeeze(&["--out", s(&unwritable)], "cannot write");
    squeeze(&["--lr", "nan"], "--lr NaN");
    squeeze(&["--momentum", "1"], "--momentum 1");
    squeeze(&["--epochs", "0"], "--epochs");
    let validate = |extra: &[&str], needle: &str| {
        let mut args = vec!["validate", "--teacher", s(&teacher), "--images", s(&subset), "--test-data", s(&data), "--epochs", "1"];
        args.extend(extra);
        args.extend(common);
        fails_before_training(&args, needle);
    };
    validate(&["--record", unwritable.with_extension("json").to_str().unwrap()], "cannot write");
    validate(&["--lr", "inf"], "--lr inf");
    validate(&["--temperature=-1"], "--temperature -1");
    validate(&["--weight-decay=-0.1"], "--weight-decay -0.1");
    let mut args = vec!["relabel", "--teacher", s(&teacher), "--images", s(&subset), "--out", s(&unwritable)];
    args.extend(common);
    fails_before_training(&args, "cannot write");
    let mut args = vec!["relabel", "--teacher", s(&teacher), "--images", s(&subset), "--out", s(&data)];
    args.extend(common);
    fails_before_training(&args, "is a folder");

    // The test set: no default for a teacher squeezed on a folder; its classes must be the teacher's.
    validate_test_set_errors(&teacher, &subset, &data, &common);
    // A replay refuses another teacher's labels and records the file's augmentation, not the flags'.
    replay_checks(dir.path(), &teacher, &subset, &data, &labels, &common);
    // sample never mixes into an earlier set.
    fails_with(&["sample", "--data", s(&data), "--channels", "1", "--ipc", "1", "--out", s(&subset)], "not empty");
}

fn validate_test_set_errors(teacher: &Path, subset: &Path, data: &Path, common: &[&str]) {
    let mut args = vec!["validate", "--teacher", s(teacher), "--images", s(subset), "--epochs", "1"];
    args.extend(common);
    fails_before_training(&args, "--test-data is needed");
    let two = subset.with_file_name("two_classes");
    for c in ["c0", "c1"] {
        std::fs::create_dir_all(two.join(c)).unwrap();
        std::fs::copy(data.join(c).join("0.png"), two.join(c).join("0.png")).unwrap();
    }
    args.extend(["--test-data", s(&two)]);
    fails_before_training(&args, "2 classes in the test set but the teacher has 3");
}

fn replay_checks(dir: &Path, teacher: &Path, subset: &Path, data: &Path, labels: &Path, common: &[&str]) {
    let other = dir.join("other_teacher.safetensors");
    let mut args = vec![
        "squeeze",
        "--data",
        s(data),
        "--test-data",
        s(data),
        "--out",
        s(&other),
        "--arch",
        "resnet18-w4",
        "--channels",
        "1",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--seed",
        "9",
    ];
    args.extend(common);
    ok(&args);
    let mut args = vec!["validate", "--teacher", s(&other), "--images", s(subset), "--labels", s(labels), "--test-data", s(data), "--epochs", "1"];
    args.extend(common);
    fails_before_training(&args, "made with another teacher");

    let record = dir.join("replay_record.json");
    let mut args = vec!["validate", "--teacher", s(teacher), "--images", s(subset), "--labels", s(labels), "--test-data", s(data), "--epochs", "1"];
    args.extend(["--mix", "none", "--batch-size", "2", "--min-scale", "1", "--record", s(&record)]);
    args.extend(common);
    let r = ok(&args);
    // 6 images in the file's batches of 4: 2 steps (batches of 2 would make 3).
    assert_eq!(r["steps"].as_u64(), Some(2));
    let rec: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&record).unwrap()).unwrap();
    let aug = &rec["config"]["aug"];
    assert_eq!((aug["mix"]["kind"].as_str(), aug["batch_size"].as_u64(), aug["min_scale"].as_f64()), (Some("cutmix"), Some(4), Some(0.08)), "{aug}");
}

#[test]
fn image_folders_skip_hidden_folders_and_refuse_empty_classes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_folder(&data);
    std::fs::create_dir_all(data.join(".ipynb_checkpoints")).unwrap();
    let out = dir.path().join("one_each");
    let r = ok(&["sample", "--data", s(&data), "--channels", "1", "--ipc", "1", "--out", s(&out)]);
    // Three classes: the hidden folder took no class index.
    assert_eq!(r["images"], 3);
    assert!(out.join("new002/class002_id000.png").exists() && !out.join("new003").exists());
    std::fs::create_dir_all(data.join("c1_empty")).unwrap();
    fails_with(&["sample", "--data", s(&data), "--channels", "1", "--ipc", "1", "--out", s(&dir.path().join("x"))], "c1_empty: class folder has no");
}
