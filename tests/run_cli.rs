//! `cda-engine run` end to end on the shipped teacher: determinism, resumption, layout, record.

use std::path::Path;
use std::process::Command;

fn run(out: &Path, extra: &[&str]) -> String {
    let mut args = vec!["run", "--out", out.to_str().unwrap(), "--iteration", "3", "--classes", "3", "--quiet"];
    args.extend_from_slice(extra);
    let o = Command::new(env!("CARGO_BIN_EXE_cda-engine")).args(&args).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "run {args:?} failed: {stderr}");
    stderr
}

/// The images of the class folders with their bytes; the record and the pictures
/// beside it (`recover_losses.png`, `recover_grid.png`) are not part of the set.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    for e in walk(dir) {
        let rel = e.strip_prefix(dir).unwrap().to_string_lossy().to_string();
        if e.parent() == Some(dir) {
            continue;
        }
        v.push((rel, std::fs::read(&e).unwrap()));
    }
    v.sort();
    v
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn same_seed_same_images_and_resume_skips_finished_batches() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    // two batches: IPC 0 and IPC 1 of classes 0..3
    run(&a, &["--ipc-end", "2", "--ipc-per-batch", "1", "--seed", "7"]);
    run(&b, &["--ipc-end", "2", "--ipc-per-batch", "1", "--seed", "7"]);
    let fa = files(&a);
    assert_eq!(fa.len(), 6, "3 classes x 2 IPC");
    assert!(fa.iter().any(|(p, _)| p == "new002/class002_id001.jpg"), "{:?}", fa.iter().map(|f| &f.0).collect::<Vec<_>>());
    assert_eq!(fa, files(&b), "same seed, same bytes");

    // a different seed gives different images
    let c = dir.path().join("c");
    run(&c, &["--ipc-end", "2", "--ipc-per-batch", "1", "--seed", "8"]);
    assert_ne!(fa, files(&c));

    // lose one image of the second batch: a rerun redoes that batch only, identically
    std::fs::remove_file(a.join("new001/class001_id001.jpg")).unwrap();
    let log = run(&a, &["--ipc-end", "2", "--ipc-per-batch", "1", "--seed", "7"]);
    assert!(log.contains("resuming: 1 of 2 batches"), "{log}");
    assert_eq!(fa, files(&a));

    // nothing half-written or temporary is left, and the record holds both batches
    assert!(walk(&a).iter().all(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.')));
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(a.join("recover_record.json")).unwrap()).unwrap();
    assert_eq!(record["batches"].as_array().unwrap().len(), 2);
    assert_eq!(record["settings"]["recover"]["iterations"], 3);
}

#[test]
fn png_output_and_summary_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("p");
    let o = Command::new(env!("CARGO_BIN_EXE_cda-engine"))
        .args(["run", "--out", out.to_str().unwrap(), "--iteration", "2", "--classes", "2", "--ipc-end", "1", "--format", "png", "--quiet"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let summary: serde_json::Value = serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();
    assert_eq!(summary["images_written"], 2);
    let img = image::open(out.join("new001/class001_id000.png")).unwrap();
    assert_eq!((img.width(), img.height()), (28, 28));
    assert_eq!(img.color(), image::ColorType::L8);
}
