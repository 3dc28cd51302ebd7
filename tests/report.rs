//! The pictures (`run`'s losses and grid, `validate --record`'s curves) and `cda-engine report`:
//! the PNGs decode and are not blank, and the page is self-contained and carries the record's
//! numbers. (benches/report/screenshot_report.sh renders the page in a real browser.)

use std::path::Path;
use std::process::{Command, Output};

use base64::Engine as _;

fn engine(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cda-engine")).args(args).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let o = engine(args);
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{args:?} failed: {stderr}");
    stderr
}

/// A decodable picture of at least `min_w` x `min_h` with more than a few distinct colours (a
/// blank or single-colour canvas has one or two).
fn check_picture(bytes: &[u8], what: &str, min_w: u32, min_h: u32) {
    let img = image::load_from_memory(bytes).unwrap_or_else(|e| panic!("{what}: {e}")).to_rgb8();
    assert!(img.width() >= min_w && img.height() >= min_h, "{what}: {}x{}", img.width(), img.height());
    let mut colours: Vec<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    colours.sort_unstable();
    colours.dedup();
    assert!(colours.len() > 8, "{what}: only {} colours", colours.len());
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn run_writes_its_pictures_and_report_shows_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("set");
    let o = out.to_str().unwrap();
    ok(&["run", "--out", o, "--iteration", "20", "--ipc-end", "2", "--quiet"]);
    check_picture(&std::fs::read(out.join("recover_losses.png")).unwrap(), "recover_losses.png", 800, 400);
    // The grid: 2 IPC rows of 10 classes, tiles enlarged to at least 96 px.
    check_picture(&std::fs::read(out.join("recover_grid.png")).unwrap(), "recover_grid.png", 10 * 96, 2 * 96);
    // The set's own pictures at its top level are not reported as skipped files by the readers.
    let log = ok(&["evaluate", "--images", o]);
    assert!(!log.contains("not read"), "{log}");

    let log = ok(&["report", o]);
    assert!(log.contains("report.html"), "{log}");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    // Self-contained: no address outside the page, every picture inline.
    for bad in ["http:", "https:", "file:", "<script", "<link"] {
        assert!(!html.contains(bad), "the page holds {bad}");
    }
    let srcs: Vec<&str> = html.split("src=\"").skip(1).map(|s| &s[..s.find('"').unwrap()]).collect();
    assert!(srcs.len() >= 2 + 10 * 2, "{} pictures", srcs.len());
    for src in &srcs {
        let (mime, b64) =
            src.strip_prefix("data:").and_then(|s| s.split_once(";base64,")).unwrap_or_else(|| panic!("not a data URI: {}", &src[..40.min(src.len())]));
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        assert!(mime == "image/png" || mime == "image/jpeg", "{mime}");
        image::load_from_memory(&bytes).unwrap_or_else(|e| panic!("{mime} picture does not decode: {e}"));
    }
    // The record's numbers: every batch's teacher top-1 as the page prints it, and completeness.
    let record = json(&out.join("recover_record.json"));
    for b in record["batches"].as_array().unwrap() {
        let top1 = format!("{:.1}%", b["teacher_top1"].as_f64().unwrap());
        assert!(html.contains(&top1), "the page lacks the batch's teacher top-1 {top1}");
    }
    assert!(html.contains("complete: 1 of 1 batches"), "completeness line");
    // The teacher's own test top-1 comes from its metadata (weights/README.md: 92.02%).
    assert!(html.contains("92.02%"), "teacher accuracy");
}

#[test]
fn report_of_a_sample_set_and_of_a_folder_that_is_no_set() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("real");
    let o = out.to_str().unwrap();
    ok(&["sample", "--data", "fashion-mnist", "--ipc", "2", "--seed", "0", "--out", o]);
    ok(&["report", o]);
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("no loss trace"), "a set without a run says so");
    assert!(html.contains("10 classes with 2 to 2 images each"));
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let r = engine(&["report", empty.to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(1), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(String::from_utf8_lossy(&r.stderr).contains("no class folders"), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(!empty.join("report.html").exists());
}

#[test]
fn validate_record_gets_its_curves() {
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("real");
    let s = set.to_str().unwrap();
    ok(&["sample", "--data", "fashion-mnist", "--ipc", "2", "--seed", "0", "--out", s]);
    let record = dir.path().join("student.json");
    ok(&["validate", "--images", s, "--epochs", "3", "--eval-every", "1", "--record", record.to_str().unwrap(), "--quiet"]);
    check_picture(&std::fs::read(dir.path().join("student.png")).unwrap(), "validate curves", 800, 400);
}
