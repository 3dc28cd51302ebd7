//! Sizes, options, folders and messages from issue 12: each reproduction gives a clear error (or the
//! right result) and a non-zero exit, never a panic (exit 101), an abort or a hang.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_cda-engine");

/// The shipped Fashion-MNIST teacher (1 channel, 10 classes, 28 px, CIFAR stem).
fn teacher() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("weights/fashion_mnist_resnet18_w16.safetensors")
}

/// Runs the binary with `args` under an address-space limit (KiB; 0 = none), killing it after
/// `secs`: a hang or a runaway allocation fails the test instead of the machine.
fn run_limited(args: &[&str], limit_kib: u64, secs: u64, env: &[(&str, &str)], cwd: Option<&Path>) -> Output {
    let mut cmd = Command::new("sh");
    let ulimit = if limit_kib > 0 { format!("ulimit -v {limit_kib}; ") } else { String::new() };
    cmd.arg("-c").arg(format!("{ulimit}exec \"$0\" \"$@\"")).arg(BIN).args(args);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    let mut child = cmd.spawn().unwrap();
    // Read both pipes on threads so a chatty child cannot block on a full pipe.
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let to = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let te = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?} still running after {secs} s (a hang)");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: to.join().unwrap(), stderr: te.join().unwrap() }
}

/// Asserts a clean failure: non-zero exit that is not a panic (101) nor a signal (abort, OOM kill),
/// and a message containing every needle. Returns stderr.
fn refused(out: &Output, what: &str, needles: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{what} succeeded; stderr: {stderr}");
    assert_eq!(out.status.code(), Some(1), "{what}: exit {:?} (101 = panic, none = killed by a signal); stderr: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{what} panicked: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "{what}: stderr lacks {n:?}: {stderr}");
    }
    stderr
}

fn fails(args: &[&str], needles: &[&str]) -> String {
    refused(&run_limited(args, 0, 120, &[], None), &format!("{args:?}"), needles)
}

fn succeeds(args: &[&str]) -> Output {
    let out = run_limited(args, 0, 300, &[], None);
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// A copy of the shipped teacher with its metadata edited (`None` removes the key).
fn teacher_with(dir: &Path, name: &str, edits: &[(&str, Option<&str>)]) -> PathBuf {
    let bytes = std::fs::read(teacher()).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut md: HashMap<String, String> = meta.metadata().clone().unwrap_or_default();
    for (k, v) in edits {
        match v {
            Some(v) => md.insert(k.to_string(), v.to_string()),
            None => md.remove(*k),
        };
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = st.tensors().into_iter().collect();
    let out = safetensors::tensor::serialize(views, Some(md)).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, out).unwrap();
    p
}

/// Writes a `side` x `side` PNG: grey (1 channel) or RGBA (4), a seeded pattern.
fn png(path: &Path, side: u32, channels: u8, seed: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let px = |i: u32| ((i.wrapping_mul(2654435761).wrapping_add(seed.wrapping_mul(40503))) >> 24) as u8;
    match channels {
        1 => image::GrayImage::from_fn(side, side, |x, y| image::Luma([px(y * side + x)])).save(path).unwrap(),
        _ => image::RgbaImage::from_fn(side, side, |x, y| image::Rgba([px(y * side + x), 0, 0, 255])).save(path).unwrap(),
    }
}

/// An ImageFolder of 28 px grey images: one folder per name, `per` images each.
fn folder(root: &Path, names: &[&str], per: usize) {
    for (c, n) in names.iter().enumerate() {
        for i in 0..per {
            png(&root.join(n).join(format!("img{i:03}.png")), 28, 1, (c * 100 + i) as u32);
        }
    }
}

const TEN: [&str; 10] = ["new000", "new001", "new002", "new003", "new004", "new005", "new006", "new007", "new008", "new009"];

// ---- 4. sizes ----

#[test]
fn huge_sizes_are_refused_with_the_size_and_the_memory_available() {
    let dir = tempfile::tempdir().unwrap();
    // Capacity overflow before: now one tensor too many values for the 32-bit kernels.
    refused(
        &run_limited(&["bench", "--res", "100000", "--iters", "1"], 0, 60, &[], None),
        "bench --res 100000",
        &["100000x100000", "too large", "GiB of memory", "available"],
    );
    // An abort in the allocator before: under a 4 GiB address space, refused with both sizes.
    let e = refused(
        &run_limited(&["bench", "--res", "2000", "--batch", "4", "--iters", "1"], 4 << 20, 60, &[], None),
        "bench --res 2000 --batch 4",
        &["4 images of 2000x2000", "needs about", "GiB are available"],
    );
    assert!(e.contains("MemAvailable"), "{e}");
    let out = dir.path().join("o");
    refused(
        &run_limited(&["run", "--res", "3000", "--iteration", "1", "--out", out.to_str().unwrap()], 8 << 20, 60, &[], None),
        "run --res 3000",
        &["3000x3000"],
    );
    assert!(!out.exists(), "a refused run created its --out");
    // The size from a teacher's metadata is checked as an option's is.
    let big = teacher_with(dir.path(), "big.safetensors", &[("image_size", Some("99999999"))]);
    refused(
        &run_limited(&["run", "--weights", big.to_str().unwrap(), "--iteration", "1", "--out", out.to_str().unwrap()], 8 << 20, 60, &[], None),
        "run with image_size 99999999",
        &["99999999x99999999"],
    );
    let images = dir.path().join("set");
    folder(&images, &TEN, 1);
    refused(
        &run_limited(
            &[
                "relabel",
                "--teacher",
                big.to_str().unwrap(),
                "--images",
                images.to_str().unwrap(),
                "--epochs",
                "1",
                "--out",
                dir.path().join("l").to_str().unwrap(),
            ],
            8 << 20,
            60,
            &[],
            None,
        ),
        "relabel with image_size 99999999",
        &["99999999x99999999"],
    );
    // A grid enlarged past what a PNG (or the memory) can hold.
    let g = dir.path().join("g.png");
    refused(
        &run_limited(&["grid", images.to_str().unwrap(), "--out", g.to_str().unwrap(), "--scale", "1000000000"], 8 << 20, 60, &[], None),
        "grid --scale 1e9",
        &["--scale 1000000000", "larger than a PNG"],
    );
    refused(
        &run_limited(&["grid", images.to_str().unwrap(), "--out", g.to_str().unwrap(), "--scale", "3000"], 4 << 20, 60, &[], None),
        "grid --scale 3000",
        &["needs about", "available"],
    );
    assert!(!g.exists());
}

// ---- 5. options and pipes ----

#[test]
fn zero_options_are_refused_before_the_banner() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    let o = out.to_str().unwrap();
    for flag in ["--batch-size", "--ipc-per-batch"] {
        // These looped in the banner's plan until memory ran out: 8 GiB and 60 s bound the test.
        let e = refused(&run_limited(&["run", "--out", o, flag, "0"], 8 << 20, 60, &[], None), flag, &["--batch-size and --ipc-per-batch must be at least 1"]);
        assert!(!e.contains("teacher "), "the banner was printed before the refusal: {e}");
        assert!(!out.exists(), "a refused run created its --out");
    }
    fails(&["bench", "--classes", "0", "--res", "32", "--iters", "1"], &["--classes 0", "must be at least 1"]);
    fails(&["bench", "--in-channels", "0", "--res", "32", "--iters", "1"], &["--in-channels 0", "must be at least 1"]);
    fails(&["bench", "--res", "0", "--iters", "1"], &["--res must be at least 1"]);
}

#[test]
fn a_closed_stdout_is_a_clean_exit() {
    // `inspect BIG | head -1`: the reader is gone before the first line is written.
    let mut child = Command::new(BIN).args(["inspect", teacher().to_str().unwrap()]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

// ---- 6. one definition of each shared option ----

#[test]
fn evaluate_checks_mean_and_std_as_run_does() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("set");
    folder(&images, &TEN, 1);
    let i = images.to_str().unwrap();
    fails(&["evaluate", "--images", i, "--mean", "0.286", "--std", "0"], &["--mean/--std: std values must be positive"]);
    fails(&["evaluate", "--images", i, "--mean", "0.286", "--std=-0.3"], &["--mean/--std: std values must be positive"]);
    fails(&["evaluate", "--images", i, "--mean", "0.286", "--std", "NaN"], &["--mean/--std: std values must be positive"]);
    fails(&["evaluate", "--images", i, "--mean", "NaN", "--std", "0.35"], &["--mean/--std: mean values must be finite"]);
    fails(&["evaluate", "--images", i, "--mean", "0.3,0.3", "--std", "0.3,0.3"], &["need 1 values"]);
    fails(&["evaluate", "--images", i, "--mean", "0.3"], &["give both --mean and --std"]);
    // The same words from run: one function checks both.
    fails(&["run", "--out", dir.path().join("o").to_str().unwrap(), "--mean", "0.286", "--std", "0"], &["--mean/--std: std values must be positive"]);
}

/// A teacher without normalisation metadata is treated alike by every command that runs one: the
/// preset it belongs to decides (the official scripts' normalisation), with a note saying so, and
/// --mean/--std override it; one flag alone is refused everywhere.
#[test]
fn every_command_resolves_a_teacher_without_mean_and_std_alike() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("set");
    folder(&images, &TEN, 1);
    let bare = teacher_with(dir.path(), "bare.safetensors", &[("mean", None), ("std", None)]);
    let (b, i) = (bare.to_str().unwrap(), images.to_str().unwrap());
    let labels = dir.path().join("labels.safetensors");
    let note = "metadata has no mean/std: using the FashionMnist preset's";
    let out = succeeds(&["relabel", "--teacher", b, "--images", i, "--epochs", "1", "--threads", "1", "--out", labels.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains(note), "relabel: {}", String::from_utf8_lossy(&out.stderr));
    let out = succeeds(&["evaluate", "--weights", b, "--images", i, "--threads", "1"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains(note), "evaluate");
    let out = succeeds(&[
        "run",
        "--weights",
        b,
        "--iteration",
        "1",
        "--ipc-end",
        "1",
        "--classes",
        "2",
        "--threads",
        "1",
        "--out",
        dir.path().join("r").to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains(note), "run");
    let rec: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("r/recover_record.json")).unwrap()).unwrap();
    assert_eq!(rec["settings"]["recover"]["clip"]["normalized"]["std"][0].as_f64().unwrap() as f32, 0.353);
    let out = succeeds(&[
        "select",
        "--weights",
        b,
        "--ipc-end",
        "1",
        "--classes",
        "2",
        "--candidates",
        "4",
        "--crops",
        "1",
        "--threads",
        "1",
        "--out",
        dir.path().join("s").to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains(note), "select");
    // The flags win, checked by the shared rule (before any training), and never one alone.
    succeeds(&[
        "relabel",
        "--teacher",
        b,
        "--images",
        i,
        "--epochs",
        "1",
        "--threads",
        "1",
        "--out",
        dir.path().join("l2").to_str().unwrap(),
        "--mean",
        "0.286",
        "--std",
        "0.353",
    ]);
    fails(
        &["validate", "--teacher", b, "--images", i, "--test-data", i, "--epochs", "1", "--mean", "0.286", "--std", "0"],
        &["--mean/--std: std values must be positive"],
    );
    for cmd in [
        &["run", "--std", "0.353", "--out", dir.path().join("x").to_str().unwrap()][..],
        &["evaluate", "--images", i, "--std", "0.353"],
        &["validate", "--images", i, "--std", "0.353"],
        &["select", "--std", "0.353", "--out", dir.path().join("y").to_str().unwrap()],
    ] {
        fails(cmd, &["give both --mean and --std"]);
    }
    assert!(!dir.path().join("x").exists() && !dir.path().join("y").exists(), "refused before the output folder");
}

#[test]
fn bench_accepts_the_architecture_spellings_squeeze_accepts() {
    let out =
        succeeds(&["bench", "--arch", "resnet18-w8", "--stem", "cifar", "--res", "16", "--batch", "1", "--iters", "1", "--classes", "10", "--threads", "1"]);
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(line.contains("\"arch\":\"resnet18\"") && line.contains("\"width\":8"), "{line}");
    fails(&["bench", "--arch", "resnet18-wx", "--res", "32", "--iters", "1"], &["width after -w must be a number"]);
}

// ---- 7. class folders ----

/// (images, top-1 per class) of `evaluate` on `root`.
fn per_class(root: &Path) -> Vec<f64> {
    let out = succeeds(&["evaluate", "--images", root.to_str().unwrap(), "--threads", "1"]);
    let line = String::from_utf8_lossy(&out.stdout).lines().last().unwrap().to_string();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    v["per_class_top1"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

#[test]
fn numbered_class_folders_keep_their_class_when_others_are_missing() {
    let dir = tempfile::tempdir().unwrap();
    let all = dir.path().join("all");
    folder(&all, &TEN, 3);
    let full = per_class(&all);
    // Two folders removed: the others keep their scores (by position they shifted: 12.5%).
    for gone in ["new002", "new005"] {
        std::fs::remove_dir_all(all.join(gone)).unwrap();
    }
    let kept: Vec<f64> = [0, 1, 3, 4, 6, 7, 8, 9].iter().map(|&c| full[c]).collect();
    assert_eq!(per_class(&all), kept);
    // A set holding only class 3 scores as class 3 (by position it was class 0).
    let only = dir.path().join("only");
    std::fs::create_dir_all(&only).unwrap();
    std::fs::rename(all.join("new003"), only.join("new003")).unwrap();
    assert_eq!(per_class(&only), vec![full[3]]);
    // Folders named otherwise are matched by position, so a missing one is refused.
    let named = dir.path().join("named");
    folder(&named, &["a", "b", "c"], 1);
    fails(&["evaluate", "--images", named.to_str().unwrap()], &["3 class folders but the teacher has 10 classes", "new{class}"]);
    // A numbered folder beyond the teacher's classes.
    let far = dir.path().join("far");
    folder(&far, &["new000", "new012"], 1);
    fails(&["evaluate", "--images", far.to_str().unwrap()], &["class 12", "10 classes"]);
    // Nine new{class} folders and one other: by position `extra` would take class 0 and shift the
    // rest (0% instead of 100%), so the mix is refused by every reader of folders.
    let mixed = dir.path().join("mixed");
    folder(&mixed, &TEN[..9], 1);
    folder(&mixed, &["extra"], 1);
    let (m, l) = (mixed.to_str().unwrap(), dir.path().join("l.labels"));
    for args in [
        vec!["evaluate", "--images", m],
        vec!["validate", "--images", m, "--epochs", "1"],
        vec!["relabel", "--images", m, "--epochs", "1", "--out", l.to_str().unwrap()],
    ] {
        fails(&args, &["9 of 10 class folders are named new{class} but 1 is not (extra)"]);
    }
}

#[test]
fn numbers_sorted_as_text_and_images_in_sub_folders_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("numbers");
    folder(&root, &["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"], 1);
    let out = succeeds(&["evaluate", "--images", root.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("numbers sorted as text") && stderr.contains("\"10\""), "{stderr}");
    let nested = dir.path().join("nested");
    folder(&nested, &TEN, 1);
    png(&nested.join("new004/extra/deeper.png"), 28, 1, 7);
    let out = succeeds(&["evaluate", "--images", nested.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("sub-folder(s) not read") && stderr.contains("extra"), "{stderr}");
    // A class folder whose images are all one level down says so.
    let deep = dir.path().join("deep");
    png(&deep.join("new000/inner/a.png"), 28, 1, 1);
    fails(&["evaluate", "--images", deep.to_str().unwrap()], &["has no .png/.jpg/.jpeg images", "sub-folders"]);
}

// ---- 8. squeeze ----

#[test]
fn squeeze_fails_and_writes_no_teacher_when_training_diverges() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("Data"); // upper case: the recipe must keep it
    for c in 0..2 {
        for i in 0..16 {
            png(&data.join(format!("c{c}/{i:02}.png")), 16, 1, (c * 50 + i) as u32);
        }
    }
    let out = dir.path().join("t.safetensors");
    let args = [
        "squeeze",
        "--data",
        data.to_str().unwrap(),
        "--channels",
        "1",
        "--arch",
        "resnet18-w4",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--lr",
        "1e6",
        "--threads",
        "1",
        "--workers",
        "1",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ];
    refused(&run_limited(&args, 0, 120, &[], None), "squeeze --lr 1e6", &["non-finite", "no teacher was written"]);
    assert!(!out.exists(), "a diverged squeeze wrote {}", out.display());
    // At lr 1e2 the weights grow to ~1e12 but stay finite and the training loss (batch statistics)
    // too; in eval mode the BN-input variances overflow, so `run` could never use the teacher.
    let mut args = args;
    args[12] = "1e2";
    refused(&run_limited(&args, 0, 120, &[], None), "squeeze --lr 1e2", &["in eval mode", "overflow", "no teacher was written"]);
    assert!(!out.exists(), "a diverged squeeze wrote {}", out.display());
    // The recorded recipe keeps the data path as given (it was lowercased).
    args[12] = "0.1";
    assert!(run_limited(&args, 0, 120, &[], None).status.success());
    let meta = cda_engine::model::ResNet::load(&out).unwrap().metadata;
    assert!(meta["recipe"].contains(&format!("--data {}", data.display())), "{}", meta["recipe"]);
}

// ---- 10. messages ----

#[test]
fn messages_name_the_real_problem() {
    let dir = tempfile::tempdir().unwrap();
    // forward's --input is data, not weights.
    let x: Vec<u8> = [0f32, f32::NAN].iter().cycle().take(28 * 28).flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1, 1, 28, 28], &x).unwrap();
    let input = dir.path().join("x.safetensors");
    std::fs::write(&input, safetensors::tensor::serialize([("input", view)], None::<HashMap<String, String>>).unwrap()).unwrap();
    let e = fails(
        &[
            "forward",
            "--weights",
            teacher().to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            dir.path().join("y.safetensors").to_str().unwrap(),
        ],
        &["--input", "non-finite"],
    );
    assert!(!e.contains("weights"), "{e}");
    // --res 0 is an image size problem, not a jitter one.
    let e = fails(&["run", "--res", "0", "--out", dir.path().join("r").to_str().unwrap()], &["--res 0", "at least 8x8"]);
    assert!(!e.contains("jitter"), "{e}");
    assert!(!dir.path().join("r").exists());
    // Real images that are not there are found missing before the banner and the folder.
    let e = fails(
        &[
            "run",
            "--init",
            "real",
            "--init-data",
            dir.path().join("absent").to_str().unwrap(),
            "--iteration",
            "1",
            "--out",
            dir.path().join("r").to_str().unwrap(),
        ],
        &["not a dataset name"],
    );
    assert!(!e.contains("teacher "), "banner printed: {e}");
    assert!(!dir.path().join("r").exists());
    // An RGBA image is called RGBA.
    let rgba = dir.path().join("rgba");
    png(&rgba.join("new000/a.png"), 28, 4, 1);
    fails(&["evaluate", "--images", rgba.to_str().unwrap()], &["RGBA (4 channels) image for a 1-channel teacher"]);
    // grid writes PNG only, so a .jpg name is refused rather than filled with PNG bytes.
    let set = dir.path().join("set");
    folder(&set, &TEN, 1);
    let jpg = dir.path().join("g.jpg");
    fails(&["grid", set.to_str().unwrap(), "--out", jpg.to_str().unwrap()], &["PNG", ".png"]);
    assert!(!jpg.exists());
    // An empty FASHION_MNIST_DIR is unset: the files of the current folder are not read.
    let cwd = dir.path().join("cwd");
    std::fs::create_dir_all(&cwd).unwrap();
    for f in ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"] {
        std::fs::write(cwd.join(f), b"not an idx file").unwrap();
    }
    let out = run_limited(
        &["sample", "--data", "fashion-mnist", "--ipc", "1", "--out", dir.path().join("s").to_str().unwrap()],
        0,
        120,
        &[("FASHION_MNIST_DIR", "")],
        Some(&cwd),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("bad magic") && !stderr.contains("panicked"), "{stderr}");
    if !out.status.success() {
        assert!(stderr.contains("/usr/share/datasets/fashion-mnist"), "{stderr}");
    }
}

#[test]
fn non_finite_soft_labels_blame_the_labels_file() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("set");
    folder(&images, &TEN, 1);
    let i = images.to_str().unwrap();
    let labels = dir.path().join("labels.safetensors");
    succeeds(&["relabel", "--images", i, "--epochs", "1", "--threads", "1", "--mix", "none", "--out", labels.to_str().unwrap()]);
    // Every stored logit becomes an fp16 NaN.
    let mut bytes = std::fs::read(&labels).unwrap();
    let hlen = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + hlen]).unwrap();
    let mut hit = false;
    for (name, t) in header.as_object().unwrap() {
        if name.contains("logits") && t["dtype"] == "F16" {
            let (a, b) = (t["data_offsets"][0].as_u64().unwrap() as usize, t["data_offsets"][1].as_u64().unwrap() as usize);
            for k in (8 + hlen + a..8 + hlen + b).step_by(2) {
                bytes[k..k + 2].copy_from_slice(&0x7e00u16.to_le_bytes());
            }
            hit = true;
        }
    }
    assert!(hit, "no F16 logits tensor in {header}");
    std::fs::write(&labels, &bytes).unwrap();
    let e = fails(
        &["validate", "--images", i, "--test-data", i, "--labels", labels.to_str().unwrap(), "--epochs", "1", "--threads", "1"],
        &["soft label NaN", "remake the file with relabel"],
    );
    assert!(!e.contains("lower --lr"), "{e}");
}

#[test]
fn absurd_thread_counts_and_padding_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Each of these started 100 million OS threads before failing (or hung).
    for cmd in [
        &["bench", "--res", "32", "--iters", "1"][..],
        &["evaluate", "--images", "."],
        &["run", "--iteration", "1", "--out", dir.path().join("o").to_str().unwrap()],
    ] {
        let args: Vec<&str> = cmd.iter().copied().chain(["--threads", "100000000"]).collect();
        refused(&run_limited(&args, 0, 60, &[], None), &format!("{args:?}"), &["--threads 100000000: at most"]);
    }
    let data = dir.path().join("d");
    folder(&data, &["a", "b"], 4);
    let out = dir.path().join("t.safetensors");
    fails(
        &[
            "squeeze",
            "--data",
            data.to_str().unwrap(),
            "--channels",
            "1",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--padding",
            "18446744073709551615",
            "--out",
            out.to_str().unwrap(),
        ],
        &["--padding 18446744073709551615: at most the image size 28"],
    );
    assert!(!out.exists());
}

#[test]
fn a_closed_stderr_is_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    // `run ... 2>&1 | head -0`: the banner and progress go to a pipe nobody reads.
    let o = dir.path().join("o");
    let mut child = Command::new(BIN)
        .args(["run", "--iteration", "2", "--ipc-end", "1", "--classes", "2", "--quiet", "--out", o.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    let status = child.wait().unwrap();
    assert!(matches!(status.code(), Some(0 | 1)), "exit {status:?} (101 = panic)");
    // An error with nowhere to print it still exits 1.
    let mut child = Command::new(BIN).args(["inspect", dir.path().join("absent").to_str().unwrap()]).stderr(Stdio::piped()).spawn().unwrap();
    drop(child.stderr.take());
    assert_eq!(child.wait().unwrap().code(), Some(1));
}

/// Checks that need the options only come before the banner and the output folder, in every
/// command that selects real images; a command refused after taking its folder removes the folder
/// it created.
#[test]
fn refused_selections_print_no_banner_and_leave_no_folder() {
    let dir = tempfile::tempdir().unwrap();
    let out = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let cases: [(Vec<String>, &str); 5] = [
        (
            ["run", "--init", "patches", "--candidates", "5", "--iteration", "3", "--ipc-end", "3", "--out", &out("a")].map(String::from).to_vec(),
            "--candidates 5 is below the 12 selected views",
        ),
        (
            ["run", "--method", "rded", "--candidates", "5", "--ipc-end", "3", "--out", &out("b")].map(String::from).to_vec(),
            "--candidates 5 is below the 12 selected views",
        ),
        (
            ["select", "--candidates", "5", "--crops", "1", "--ipc-end", "3", "--out", &out("c")].map(String::from).to_vec(),
            "--candidates 5 is below the 12 selected views",
        ),
        (["select", "--init-data", "/nonexistent/data", "--ipc-end", "1", "--out", &out("d")].map(String::from).to_vec(), "not a dataset name"),
        (["sample", "--data", "fashion-mnist", "--ipc", "7000", "--out", &out("e")].map(String::from).to_vec(), "asks for more"),
    ];
    for (args, says) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let e = fails(&args, &[says]);
        assert!(!e.contains("teacher ") || !e.contains(" iterations each"), "{args:?} printed its banner: {e}");
        assert!(!Path::new(args.last().unwrap()).exists(), "{args:?} left its --out behind");
    }
}

/// Metadata the commands take defaults from is checked when the teacher loads: a value nothing can
/// use names the file and the key instead of passing as an option error later or being ignored.
#[test]
fn unusable_teacher_metadata_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    for (key, value, says) in [
        ("image_size", "abc", "metadata image_size=\"abc\" is not a positive whole number"),
        ("image_size", "0", "metadata image_size=\"0\" is not a positive whole number"),
        ("image_size", "-5", "metadata image_size=\"-5\""),
        ("in_channels", "3", "metadata in_channels=3 but conv1.weight takes 1 input channels"),
    ] {
        let t = teacher_with(dir.path(), &format!("{key}{value}.safetensors"), &[(key, Some(value))]);
        let e = fails(&["inspect", t.to_str().unwrap()], &[says]);
        assert!(!e.contains("--res"), "{e}");
        fails(&["run", "--weights", t.to_str().unwrap(), "--out", dir.path().join("o").to_str().unwrap()], &[says]);
    }
    assert!(!dir.path().join("o").exists());
}

/// Files a folder reader skips are named once, whichever command reads the folder.
#[test]
fn skipped_files_are_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("set");
    folder(&set, &TEN, 1);
    std::fs::write(set.join("new003/notes.txt"), b"x").unwrap();
    std::fs::write(set.join("new004/scan.bmp"), b"BM").unwrap();
    png(&set.join("stray.png"), 28, 1, 3);
    std::fs::write(set.join("recover_record.json"), b"{}").unwrap();
    let labels = dir.path().join("l.labels");
    let out = succeeds(&["relabel", "--images", set.to_str().unwrap(), "--epochs", "1", "--threads", "1", "--out", labels.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("3 file(s) not read").count(), 1, "{stderr}");
    assert!(!stderr.contains("recover_record.json"), "records at the top level are expected: {stderr}");
}
