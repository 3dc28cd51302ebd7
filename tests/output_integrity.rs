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

fn images(dir: &Path) -> Vec<PathBuf> {
    walk(dir).into_iter().filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("png" | "jpg"))).collect()
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
    assert!(walk(&out).iter().all(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.')), "temporary files left: {:?}", walk(&out));
}

#[cfg(unix)]
#[test]
fn select_on_a_full_disk_fails_and_leaves_only_whole_images() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sel");
    let o = on_full_disk(1, &["select", "--init-data", "fashion-mnist", "--classes", "2", "--ipc-end", "3", "--candidates", "20", "--threads", "1", "--out", s(&out)]);
    let all = text(&o);
    assert!(!o.status.success(), "select reported success on a full disk: {all}");
    assert!(all.contains("cannot write"), "{all}");
    assert_all_whole(&out);
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

