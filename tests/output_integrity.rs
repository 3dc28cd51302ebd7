//! What the engine guarantees about its outputs (README "What the engine guarantees"), each from a
//! fault once found: a failed write leaves no partial file under its final name and fails the
//! command; a resumed run trusts no damaged image; one folder never holds two sets (other settings or
//! teacher weights, two runs at once, a folder `run` did not write, a kill between images and
//! record); soft labels are tied to the pixels of the set they were made for.
//!
//! A full disk is simulated with the file size limit (`ulimit -f`, 512-byte blocks in a POSIX shell)
//! and SIGXFSZ ignored, so writes past it fail with EFBIG as they would with ENOSPC: no root, no
//! tmpfs, the same on every Unix machine. Everything uses the shipped Fashion-MNIST teacher and the
//! Debian package's Fashion-MNIST (as tests/run_cli.rs and tests/train_cli.rs).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cda-engine"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn ok(args: &[&str]) -> String {
    let o = bin().args(args).output().unwrap();
    assert!(o.status.success(), "{args:?} failed: {}", text(&o));
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn fails_with(args: &[&str], needles: &[&str]) -> String {
    let o = bin().args(args).output().unwrap();
    let all = text(&o);
    assert!(!o.status.success(), "{args:?} succeeded: {all}");
    assert!(!all.contains("panicked"), "{args:?} panicked: {all}");
    for n in needles {
        assert!(all.contains(n), "{args:?}: output lacks {n:?}: {all}");
    }
    all
}

/// Runs the engine with writes limited to `blocks` x 512 bytes per file, as on a nearly full disk.
#[cfg(unix)]
fn on_full_disk(blocks: u32, args: &[&str]) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(format!("trap '' XFSZ; ulimit -f {blocks} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_cda-engine"))
        .args(args)
        .output()
        .unwrap()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// The set's images: those in class folders (the run's pictures sit at the top level).
fn images(dir: &Path) -> Vec<PathBuf> {
    walk(dir).into_iter().filter(|p| p.parent() != Some(dir) && matches!(p.extension().and_then(|e| e.to_str()), Some("png" | "jpg"))).collect()
}

/// Every file under a final image name decodes whole, at 28 x 28 grey (the shipped teacher's size).
fn assert_all_whole(dir: &Path) {
    for p in images(dir) {
        let bytes = std::fs::read(&p).unwrap();
        assert!(!bytes.is_empty(), "{} is empty", p.display());
        let end_ok = if p.extension().unwrap() == "png" { bytes.ends_with(&[0xAE, 0x42, 0x60, 0x82]) } else { bytes.ends_with(&[0xFF, 0xD9]) };
        assert!(end_ok, "{} is cut short ({} bytes)", p.display(), bytes.len());
        let img = image::load_from_memory(&bytes).unwrap_or_else(|e| panic!("{} does not decode: {e}", p.display()));
        assert_eq!((img.width(), img.height(), img.color()), (28, 28, image::ColorType::L8), "{}", p.display());
    }
}

fn record(out: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join("recover_record.json")).unwrap()).unwrap()
}

/// `run` on 3 classes for 3 iterations into `out`, with `extra` flags (an `--iteration` among them
/// replaces the 3).
fn run_args<'a>(out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["run", "--classes", "3", "--quiet", "--out", s(out)];
    if !extra.contains(&"--iteration") {
        v.extend(["--iteration", "3"]);
    }
    v.extend_from_slice(extra);
    v
}

// ---- 1. A failed write leaves nothing partial under its final name, and the command fails. ----

#[cfg(unix)]
#[test]
fn sample_on_a_full_disk_fails_and_leaves_only_whole_images() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("s");
    // Fashion-MNIST PNGs are 340..820 bytes: about half do not fit in one block.
    let o = on_full_disk(1, &["sample", "--data", "fashion-mnist", "--ipc", "5", "--out", s(&out)]);
    let all = text(&o);
    assert!(!o.status.success(), "sample reported success on a full disk: {all}");
    assert!(all.contains("cannot write") && all.contains(".png"), "{all}");
    assert!(!all.contains("wrote 50 images"), "{all}");
    assert_all_whole(&out);
    // The set is whole or absent: the images written before the failure are removed again.
    assert!(walk(&out).iter().all(|p| p.extension().is_none_or(|e| e != "png")), "a partial set was left: {:?}", walk(&out));
    assert!(walk(&out).iter().all(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.')), "temporary files left: {:?}", walk(&out));
}

#[cfg(unix)]
#[test]
fn select_on_a_full_disk_fails_and_leaves_only_whole_images() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sel");
    let o = on_full_disk(
        1,
        &["select", "--init-data", "fashion-mnist", "--classes", "2", "--ipc-end", "3", "--candidates", "20", "--threads", "1", "--out", s(&out)],
    );
    let all = text(&o);
    assert!(!o.status.success(), "select reported success on a full disk: {all}");
    assert!(all.contains("cannot write"), "{all}");
    assert_all_whole(&out);
    assert!(walk(&out).iter().all(|p| p.extension().is_none_or(|e| e != "png")), "a partial set was left: {:?}", walk(&out));
}

#[cfg(unix)]
#[test]
fn run_on_a_full_disk_fails_and_a_rerun_completes_the_set() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r");
    let args = run_args(&out, &["--ipc-per-batch", "1", "--ipc-end", "2"]);
    // The JPEGs are about 900 bytes: none fits in one block.
    let o = on_full_disk(1, &args);
    assert!(!o.status.success(), "run reported success on a full disk: {}", text(&o));
    assert!(text(&o).contains("cannot write"), "{}", text(&o));
    assert_all_whole(&out);
    // Space freed: the rerun writes the whole set, trusting none of what the failed run left.
    ok(&args);
    assert_eq!(images(&out).len(), 6);
    assert_all_whole(&out);
    assert_eq!(record(&out)["batches"].as_array().unwrap().len(), 2);
}

// ---- 1. A resumed run checks the files it skips. ----

#[test]
fn resume_reruns_batches_whose_images_are_empty_cut_or_the_wrong_size() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r");
    let args = run_args(&out, &["--ipc-per-batch", "1", "--ipc-end", "4", "--seed", "3"]);
    ok(&args);
    let want: Vec<Vec<u8>> = images(&out).iter().map(|p| std::fs::read(p).unwrap()).collect();
    // Batch ipc 0: an empty file; ipc 1: a file cut in half; ipc 2: a whole JPEG of another size.
    std::fs::write(out.join("new000/class000_id000.jpg"), b"").unwrap();
    let cut = out.join("new001/class001_id001.jpg");
    let bytes = std::fs::read(&cut).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    image::GrayImage::new(14, 14).save_with_format(out.join("new002/class002_id002.jpg"), image::ImageFormat::Jpeg).unwrap();
    let log = ok(&args);
    assert!(log.contains("resuming: 1 of 4 batches"), "{log}");
    assert!(log.contains("class000_id000.jpg is not a whole image: empty file"), "{log}");
    assert!(log.contains("class001_id001.jpg is not a whole image: cut short"), "{log}");
    assert!(log.contains("class002_id002.jpg is not a whole image: 14x14"), "{log}");
    let got: Vec<Vec<u8>> = images(&out).iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(got == want, "the rerun batches differ from the first run's");
}

// ---- 2. One folder never holds two sets. ----

/// The shipped teacher with every F32 tensor stored as F16 (same architecture, other weights).
fn f16_copy(to: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/fashion_mnist_resnet18_w16.safetensors");
    let bytes = std::fs::read(from).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        let (dtype, data) = if view.dtype() == safetensors::Dtype::F32 {
            let d = view.data().chunks_exact(4).flat_map(|c| half::f16::from_f32(f32::from_le_bytes([c[0], c[1], c[2], c[3]])).to_le_bytes()).collect();
            (safetensors::Dtype::F16, d)
        } else {
            (view.dtype(), view.data().to_vec())
        };
        tensors.push((name, dtype, view.shape().to_vec(), data));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> =
        tensors.iter().map(|(n, d, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap())).collect();
    safetensors::serialize_to_file(views, meta.metadata().clone(), to).unwrap();
}

#[test]
fn a_continuation_with_other_weights_or_settings_is_refused_naming_each_difference() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x");
    ok(&run_args(&out, &["--ipc-end", "2", "--seed", "7"]));
    let fingerprint = record(&out)["teacher_fingerprint"].as_str().expect("the record holds the teacher's fingerprint").to_string();

    let other = dir.path().join("teacher_f16.safetensors");
    f16_copy(&other);
    let msg = fails_with(
        &run_args(&out, &["--ipc-start", "2", "--ipc-end", "4", "--seed", "7", "--weights", s(&other)]),
        &["teacher weights: fingerprint", &fingerprint, "teacher_f16.safetensors"],
    );
    assert!(msg.contains("give a new --out"), "{msg}");
    // Several settings at once: each is named with its old and new value.
    fails_with(&run_args(&out, &["--ipc-start", "2", "--ipc-end", "4", "--seed", "8", "--iteration", "4"]), &["seed: 7 -> 8", "recover.iterations: 3 -> 4"]);
    // Nothing of the refused runs reached the folder.
    assert_eq!(images(&out).len(), 6);
    // The same teacher and settings continue, and the record spans both ranges.
    ok(&run_args(&out, &["--ipc-start", "2", "--ipc-end", "4", "--seed", "7"]));
    let r = record(&out);
    assert_eq!((r["settings"]["ipc_start"].as_u64(), r["settings"]["ipc_end"].as_u64()), (Some(0), Some(4)), "{}", r["settings"]);
    assert_eq!(images(&out).len(), 12);
}

#[test]
fn a_record_from_before_fingerprints_is_continued_and_gets_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("old");
    let args = run_args(&out, &["--ipc-end", "1"]);
    ok(&args);
    let mut r = record(&out);
    let fingerprint = r.as_object_mut().unwrap().remove("teacher_fingerprint").unwrap();
    std::fs::write(out.join("recover_record.json"), serde_json::to_vec_pretty(&r).unwrap()).unwrap();
    let log = ok(&args);
    assert!(log.contains("predates teacher fingerprints"), "{log}");
    assert_eq!(record(&out)["teacher_fingerprint"], fingerprint);
}

/// A child process killed (as kill -9 would) when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_second_run_into_a_busy_folder_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("busy");
    let long = ["run", "--iteration", "100000", "--classes", "3", "--ipc-end", "1", "--quiet", "--out", s(&out)];
    // A run long enough to still be going when the second one starts.
    let mut first = KillOnDrop(bin().args(long).stderr(std::process::Stdio::null()).spawn().unwrap());
    let t0 = Instant::now();
    while !out.join(".cda-engine.lock").exists() {
        assert!(t0.elapsed() < Duration::from_secs(60), "the first run took no lock within a minute");
        assert!(first.0.try_wait().unwrap().is_none(), "the first run ended early");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut second = KillOnDrop(bin().args(long).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap());
    let t1 = Instant::now();
    while second.0.try_wait().unwrap().is_none() {
        assert!(t1.elapsed() < Duration::from_secs(30), "the second run was not refused: it was still running after 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut err = String::new();
    std::io::Read::read_to_string(second.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!second.0.wait().unwrap().success(), "{err}");
    assert!(err.contains("is writing into this folder") && err.contains(s(&out)), "{err}");
    // The killed owner's lock dies with it (its file stays): the next run takes the folder.
    drop(first);
    ok(&run_args(&out, &["--ipc-end", "1"]));
    assert!(!out.join(".cda-engine.lock").exists());
}

#[test]
fn run_refuses_a_folder_of_images_it_did_not_write() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sampled");
    ok(&["sample", "--data", "fashion-mnist", "--ipc", "2", "--out", s(&out), "--format", "jpg"]);
    let before = walk(&out);
    fails_with(&run_args(&out, &["--ipc-end", "2"]), &["no recover_record.json", s(&out)]);
    assert_eq!(walk(&out), before, "the refused run changed the folder");
}

#[test]
fn a_kill_between_images_and_record_is_reconciled_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("k");
    let args = run_args(&out, &["--ipc-per-batch", "1", "--ipc-end", "2", "--seed", "5"]);
    ok(&args);
    let want: Vec<Vec<u8>> = images(&out).iter().map(|p| std::fs::read(p).unwrap()).collect();
    // As a kill leaves it: the last batch's images written, its record entry not, and the record's
    // and an image's temporary files (of a process that is gone) beside them.
    let mut r = record(&out);
    r["batches"].as_array_mut().unwrap().pop();
    std::fs::write(out.join("recover_record.json"), serde_json::to_vec_pretty(&r).unwrap()).unwrap();
    let stale = [out.join(".recover_record.json.tmp999999"), out.join("new000/.class000_id001.jpg.tmp999999")];
    for p in &stale {
        std::fs::write(p, b"{").unwrap();
    }
    let log = ok(&args);
    assert!(log.contains("images present but not in the record"), "{log}");
    assert_eq!(record(&out)["batches"].as_array().unwrap().len(), 2, "the record stays one batch short");
    for p in &stale {
        assert!(!p.exists(), "{} left behind", p.display());
    }
    let got: Vec<Vec<u8>> = images(&out).iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(got == want, "the rerun batch differs from the first run's");
    assert!(walk(&out).iter().all(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.')), "{:?}", walk(&out));
}

// ---- 3. Soft labels are tied to pixels. ----

#[test]
fn labels_made_for_other_pixels_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    // Two sets with the same layout and names, other pixels (other seeds); all ten classes, so the
    // teacher's test set fits.
    for (out, seed) in [(&a, "1"), (&b, "2")] {
        ok(&["run", "--iteration", "2", "--ipc-end", "1", "--quiet", "--seed", seed, "--out", s(out)]);
    }
    let labels = dir.path().join("a.safetensors");
    ok(&["relabel", "--images", s(&a), "--out", s(&labels), "--epochs", "1", "--threads", "1", "--quiet"]);
    let validate = |images: &Path, needle: &str| {
        let args = [
            "validate",
            "--images",
            s(images),
            "--labels",
            s(&labels),
            "--epochs",
            "1",
            "--student",
            "resnet18-w2",
            "--test-data",
            s(&a),
            "--threads",
            "1",
            "--quiet",
        ];
        let msg = fails_with(&args, &["the file names match but the pixels differ", needle]);
        assert!(!msg.contains("epoch 1"), "validate trained before refusing: {msg}");
    };
    validate(&b, s(&b));
    // One image changed in place is enough.
    std::fs::copy(b.join("new004/class004_id000.jpg"), a.join("new004/class004_id000.jpg")).unwrap();
    validate(&a, s(&a));
}
