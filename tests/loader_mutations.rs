//! Loaders that cannot crash: seeded mutations (bit flips, truncations, huge length fields, spliced
//! and repeated bytes) of every file format the engine reads, each loaded through the public read
//! path. Every input must give `Ok` or `Err`; a panic fails the test naming the format, the seed
//! and the mutation (so it can be replayed), and an input that takes more than `HANG_SECS` is
//! reported as a hang. An abort (a failed allocation) ends the process: rerun with
//! `MUTATION_TRACE=1` to print each input before it is loaded, then `MUTATION_ONLY=<seed>` (and
//! `MUTATION_DUMP=<folder>` to keep its bytes) to replay one.
//!
//! Formats: safetensors (header, tensors, then the ResNet built from them), IDX (plain and gzip),
//! the relabel soft-label file (open, then every epoch), the run record (`recover_record.json`)
//! and the image decoder (PNG and JPEG through `load_image`). At least 2 000 inputs each, 10 000+
//! in all; the whole file runs in well under a minute on two cores in the test profile.

use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cda_engine::data::folder::load_image;
use cda_engine::data::idx::{parse_idx, read_idx};
use cda_engine::model::ResNet;
use cda_engine::recover::run::RunRecord;
use cda_engine::train::labels::LabelFile;
use cda_engine::weights::parse_tensor_file;

/// Mutated inputs per format.
const PER_FORMAT: usize = 2200;
/// One input taking longer than this is a hang.
const HANG_SECS: u64 = 20;

/// SplitMix64: a tiny seeded generator, so a failing seed replays exactly on any machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Values a corrupted length or count field likes to hold.
const HUGE: [u64; 8] = [u64::MAX, u64::MAX / 2, 1 << 63, u32::MAX as u64, i32::MAX as u64, 1 << 40, 0x8000_0000, 0];

/// One seeded mutation of `base`; `fields` are byte offsets of length fields worth hitting, and
/// `big_endian` says how they are written. Returns the bytes and a description for the report.
fn mutate(base: &[u8], seed: u64, fields: &[usize], big_endian: bool) -> (Vec<u8>, String) {
    let mut r = Rng(seed);
    let mut b = base.to_vec();
    let kind = r.below(7);
    let what = match kind {
        0 => {
            let n = 1 + r.below(8);
            for _ in 0..n {
                let i = r.below(b.len());
                b[i] ^= 1 << r.below(8);
            }
            format!("{n} bit flip(s)")
        }
        1 => {
            let at = r.below(b.len());
            b.truncate(at);
            format!("truncated to {at} bytes")
        }
        2 | 3 => {
            // A huge value in a known length field, or anywhere.
            let at = if kind == 2 && !fields.is_empty() { fields[r.below(fields.len())] } else { r.below(b.len()) };
            let v = HUGE[r.below(HUGE.len())];
            let width = if r.below(2) == 0 { 4 } else { 8 };
            let bytes: Vec<u8> = match (width, big_endian) {
                (4, false) => (v as u32).to_le_bytes().to_vec(),
                (4, true) => (v as u32).to_be_bytes().to_vec(),
                (_, false) => v.to_le_bytes().to_vec(),
                (_, true) => v.to_be_bytes().to_vec(),
            };
            for (k, x) in bytes.iter().enumerate() {
                if let Some(y) = b.get_mut(at + k) {
                    *y = *x;
                }
            }
            format!("{width}-byte value {v:#x} at {at}")
        }
        4 => {
            // Random bytes over a short run.
            let at = r.below(b.len());
            let n = 1 + r.below(16);
            for k in at..(at + n).min(b.len()) {
                b[k] = r.next() as u8;
            }
            format!("{n} random bytes at {at}")
        }
        5 => {
            // A slice repeated or removed (chunk boundaries move).
            let at = r.below(b.len());
            let n = 1 + r.below(64.min(b.len() - at).max(1));
            let slice: Vec<u8> = b[at..(at + n).min(b.len())].to_vec();
            if r.below(2) == 0 {
                b.splice(at..at, slice);
                format!("{n} bytes at {at} repeated")
            } else {
                b.drain(at..(at + n).min(b.len()));
                format!("{n} bytes at {at} removed")
            }
        }
        _ => {
            // Digits in a text part grown into huge or negative numbers (JSON headers and records).
            let digits: Vec<usize> = (0..b.len()).filter(|&i| b[i].is_ascii_digit()).collect();
            if digits.is_empty() {
                b.truncate(r.below(b.len()));
                "truncated (no digits)".to_string()
            } else {
                let at = digits[r.below(digits.len())];
                let with: &[u8] = [&b"99999999999999999999"[..], b"18446744073709551615", b"-1", b"1e308", b"0", b"4294967296"][r.below(6)];
                b.splice(at..at + 1, with.iter().copied());
                format!("digit at {at} replaced by {}", String::from_utf8_lossy(with))
            }
        }
    };
    (b, what)
}

/// Loads `count` mutations of `base` with `load`, catching panics and watching for hangs.
fn fuzz(format: &str, base: &[u8], seed0: u64, fields: &[usize], big_endian: bool, mut load: impl FnMut(&[u8]) -> bool) {
    let trace = std::env::var_os("MUTATION_TRACE").is_some();
    // Replaying one input: MUTATION_ONLY=<seed> loads only it, MUTATION_DUMP=<folder> saves the bytes.
    let only: Option<u64> = std::env::var("MUTATION_ONLY").ok().and_then(|s| s.parse().ok());
    let dump = std::env::var_os("MUTATION_DUMP");
    // A watchdog names a hanging input: the loader cannot be interrupted, so it exits the process.
    let current = Arc::new(AtomicU64::new(u64::MAX));
    let started = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    {
        let (current, started, done) = (current.clone(), started.clone(), done.clone());
        let format = format.to_string();
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(500));
            if done.load(Ordering::Relaxed) == 1 {
                return;
            }
            let s = started.load(Ordering::Relaxed);
            if s > 0 && (t0.elapsed().as_millis() as u64).saturating_sub(s) > HANG_SECS * 1000 {
                eprintln!("{format}: mutation seed {} still loading after {HANG_SECS} s (a hang)", current.load(Ordering::Relaxed));
                std::process::exit(3);
            }
        });
    }
    let mut panics = Vec::new();
    let (mut ok, mut err) = (0usize, 0usize);
    for k in 0..PER_FORMAT as u64 {
        let seed = seed0 + k;
        let (bytes, what) = mutate(base, seed, fields, big_endian);
        if only.is_some_and(|o| o != seed) {
            continue;
        }
        if let Some(dir) = &dump {
            write(&Path::new(dir).join(format!("{seed}.bin")), &bytes);
        }
        if trace {
            eprintln!("{format} seed {seed}: {what}");
        }
        current.store(seed, Ordering::Relaxed);
        started.store(t0.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
        match catch_unwind(AssertUnwindSafe(|| load(&bytes))) {
            Ok(true) => ok += 1,
            Ok(false) => err += 1,
            Err(p) => {
                let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
                panics.push(format!("seed {seed} ({what}): {msg}"));
            }
        }
        started.store(0, Ordering::Relaxed);
    }
    done.store(1, Ordering::Relaxed);
    println!("{format}: {PER_FORMAT} mutated inputs: {ok} loaded, {err} refused, {} panicked, {:.1} s", panics.len(), t0.elapsed().as_secs_f64());
    assert!(ok + err > 0 || only.is_some());
    assert!(panics.is_empty(), "{format}: {} of {PER_FORMAT} mutated inputs panicked:\n{}", panics.len(), panics.join("\n"));
}

fn write(path: &Path, bytes: &[u8]) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(bytes).unwrap();
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cda-engine"))
}

/// A small ImageFolder of the shipped teacher's kind: 10 classes x 1 grey 28 px PNG.
fn small_set(root: &Path) {
    for c in 0..10u32 {
        let d = root.join(format!("new{c:03}"));
        std::fs::create_dir_all(&d).unwrap();
        image::GrayImage::from_fn(28, 28, |x, y| image::Luma([((x * 7 + y * 3 + c * 25) % 256) as u8])).save(d.join("a.png")).unwrap();
    }
}

#[test]
fn safetensors_loader_survives_mutations() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/forward/basic_cifar_batch1.safetensors");
    let base = std::fs::read(&path).unwrap();
    assert!(ResNet::from_tensors(parse_tensor_file(&path, &base).unwrap()).is_ok());
    // The 8-byte header length, then (as digits) the offsets and shapes of the JSON header.
    fuzz("safetensors", &base, 1_000_000, &[0], false, |b| match parse_tensor_file(&path, b) {
        Ok(f) => ResNet::from_tensors(f).is_ok(),
        Err(_) => false,
    });
}

/// An IDX image file of `n` images of h x w: magic, dims (big-endian u32), pixels.
fn idx_images(n: u32, h: u32, w: u32) -> Vec<u8> {
    let mut b = vec![0, 0, 8, 3];
    for d in [n, h, w] {
        b.extend(d.to_be_bytes());
    }
    b.extend((0..n * h * w).map(|i| (i * 37 % 256) as u8));
    b
}

#[test]
fn idx_reader_survives_mutations() {
    let plain = idx_images(12, 7, 5);
    assert!(parse_idx(&plain).is_ok());
    fuzz("idx", &plain, 2_000_000, &[4, 8, 12], true, |b| parse_idx(b).is_ok());
    // The gzip path streams: header first, then exactly the promised bytes.
    let dir = tempfile::tempdir().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&plain).unwrap();
    let gz = gz.finish().unwrap();
    let p = dir.path().join("x-idx3-ubyte.gz");
    write(&p, &gz);
    assert!(read_idx(&p).is_ok());
    fuzz("idx.gz", &gz, 2_500_000, &[], false, |b| {
        write(&p, b);
        read_idx(&p).is_ok()
    });
}

#[test]
fn soft_label_file_survives_mutations() {
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("set");
    small_set(&set);
    let labels = dir.path().join("labels.safetensors");
    for (name, extra) in [("full", vec![]), ("topk", vec!["--topk", "3"])] {
        let path = dir.path().join(format!("{name}.safetensors"));
        let out = bin()
            .args([
                "relabel",
                "--images",
                set.to_str().unwrap(),
                "--epochs",
                "2",
                "--batch-size",
                "4",
                "--threads",
                "1",
                "--quiet",
                "--out",
                path.to_str().unwrap(),
            ])
            .args(&extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let base = std::fs::read(&path).unwrap();
        let f = LabelFile::open(&path).unwrap();
        assert!(f.epoch(0).is_ok() && f.epoch(1).is_ok());
        let seed = if name == "full" { 3_000_000 } else { 3_500_000 };
        fuzz(&format!("labels ({name})"), &base, seed, &[0], false, |b| {
            write(&labels, b);
            match LabelFile::open(&labels) {
                Ok(f) => (0..f.meta.epochs.min(4)).all(|e| f.epoch(e).is_ok()),
                Err(_) => false,
            }
        });
    }
}

#[test]
fn run_record_survives_mutations() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    let run = bin()
        .args(["run", "--iteration", "2", "--ipc-end", "1", "--classes", "2", "--log-every", "1", "--quiet", "--threads", "1", "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let base = std::fs::read(out.join("recover_record.json")).unwrap();
    assert!(serde_json::from_slice::<RunRecord>(&base).is_ok());
    fuzz("run record", &base, 4_000_000, &[], false, |b| serde_json::from_slice::<RunRecord>(b).is_ok());
}

#[test]
fn image_decoder_survives_mutations() {
    let dir = tempfile::tempdir().unwrap();
    let img = image::RgbImage::from_fn(24, 20, |x, y| image::Rgb([(x * 10) as u8, (y * 12) as u8, ((x + y) * 5) as u8]));
    for (ext, seed) in [("png", 5_000_000u64), ("jpg", 5_500_000)] {
        let src = dir.path().join(format!("base.{ext}"));
        img.save(&src).unwrap();
        let base = std::fs::read(&src).unwrap();
        assert!(load_image(&src, None).is_ok());
        let p = dir.path().join(format!("m.{ext}"));
        // PNG: IHDR's length, width and height (big-endian); JPEG: its first segment lengths.
        let fields: &[usize] = if ext == "png" { &[8, 16, 20, 33] } else { &[4, 20, 22] };
        let png = ext == "png";
        let mut k = 0u32;
        fuzz(&format!("image ({ext})"), &base, seed, fields, true, |b| {
            // Every other PNG gets its chunk CRCs recomputed, so the mutation reaches the decoder
            // instead of stopping at the checksum.
            k += 1;
            let fixed;
            let b = if png && k.is_multiple_of(2) {
                fixed = fix_png_crcs(b);
                &fixed[..]
            } else {
                b
            };
            write(&p, b);
            load_image(&p, None).is_ok() && load_image(&p, Some(1)).is_ok()
        });
    }
}

/// `b` with the CRC of every PNG chunk whose length fits recomputed (CRC-32, as zlib's).
fn fix_png_crcs(b: &[u8]) -> Vec<u8> {
    let mut out = b.to_vec();
    let mut at = 8;
    while at + 12 <= out.len() {
        let len = u32::from_be_bytes([out[at], out[at + 1], out[at + 2], out[at + 3]]) as usize;
        let Some(end) = (at + 8).checked_add(len).filter(|&e| e + 4 <= out.len()) else { break };
        let mut h = flate2::Crc::new();
        h.update(&out[at + 4..end]);
        out[end..end + 4].copy_from_slice(&h.sum().to_be_bytes());
        at = end + 4;
    }
    out
}
