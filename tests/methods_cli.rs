//! The recover methods end to end on the shipped teacher and Fashion-MNIST (the Debian package
//! dataset-fashion-mnist): `select`, `run --init`, several teachers, `--method` names, and their
//! refusals. The numbers inside (selection, stitching, rotation, residual) are checked against
//! PyTorch in tests/select_init.rs and tests/recover_replay.rs; here the plumbing: which images,
//! which records, which errors.

use std::path::Path;
use std::process::{Command, Output};

use cda_engine::data::{self, Split};

const TEACHER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/weights/fashion_mnist_resnet18_w16.safetensors");

fn engine(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cda-engine")).args(args).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let o = engine(args);
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{args:?} failed: {stderr}");
    stderr
}

fn refused(args: &[&str], says: &str) {
    let o = engine(args);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{args:?} should fail cleanly: {stderr}");
    assert!(stderr.contains(says), "{args:?}: expected '{says}' in: {stderr}");
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The source index of a record entry "index:top,left,h,w".
fn source_index(s: &str) -> usize {
    s.split(':').next().unwrap().parse().unwrap()
}

/// `select` writes factor^2 real crops per image, every one from a training image of the image's
/// class, and the PNG holds their stitched pixels: each 14 x 14 quarter of a 2x2 image is the box
/// mean of its crop, re-rendered here from the recorded window (within one 8-bit level).
#[test]
fn select_writes_class_true_stitched_crops_with_their_sources() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sel");
    ok(&["select", "--out", out.to_str().unwrap(), "--ipc-end", "2", "--classes", "3", "--candidates", "10", "--crops", "2", "--threads", "2"]);
    let rec = json(&out.join("select_record.json"));
    let images = rec["images"].as_array().unwrap();
    assert_eq!(images.len(), 6, "3 classes x 2 IPC");
    let train = data::open("fashion-mnist", Split::Train, 1).unwrap();
    for entry in images {
        let (cls, ipc) = (entry[0].as_u64().unwrap() as usize, entry[1].as_u64().unwrap() as usize);
        let sources: Vec<&str> = entry[2].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
        assert_eq!(sources.len(), 4, "2x2 patches");
        let png = image::open(out.join(format!("new{cls:03}/class{cls:03}_id{ipc:03}.png"))).unwrap().to_luma8();
        for (k, s) in sources.iter().enumerate() {
            let i = source_index(s);
            assert_eq!(train.label(i), cls, "source {s} of class {cls}");
            let window: Vec<i32> = s.split(':').nth(1).unwrap().split(',').map(|v| v.parse().unwrap()).collect();
            let view = data::augment::View { top: window[0], left: window[1], h: window[2], w: window[3], flip: false };
            let mut crop = vec![0.0; 28 * 28];
            data::augment::render(&train.image(i).unwrap(), &view, 28, &mut crop);
            let (py, px) = (k / 2, k % 2);
            for y in 0..14 {
                for x in 0..14 {
                    let mean: f32 = [(0, 0), (0, 1), (1, 0), (1, 1)].iter().map(|(dy, dx)| crop[(2 * y + dy) * 28 + 2 * x + dx]).sum::<f32>() / 4.0;
                    let got = png.get_pixel((px * 14 + x) as u32, (py * 14 + y) as u32).0[0] as f32;
                    assert!((got - mean * 255.0).abs() <= 1.0, "class {cls} ipc {ipc} patch {k} pixel ({y},{x}): {got} vs {}", mean * 255.0);
                }
            }
        }
    }
    // A set is never mixed into another folder.
    refused(&["select", "--out", out.to_str().unwrap(), "--ipc-end", "2", "--candidates", "10", "--crops", "2"], "not empty");
}

#[test]
fn select_refuses_numbers_that_do_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("s");
    let out = out.to_str().unwrap();
    refused(&["select", "--out", out, "--factor", "3"], "divide the image size 28");
    refused(&["select", "--out", out, "--ipc-end", "10", "--candidates", "30"], "--candidates 30 is below the 40");
    refused(&["select", "--out", out, "--crops", "0"], "--candidates and --crops must be at least 1");
    refused(&["select", "--out", out, "--init-data", "/nonexistent/folder"], "not a dataset name");
}

/// `run --init real` starts each image from a real training image of its class and records it;
/// `run --method rded` writes the selection without optimisation.
#[test]
fn run_from_real_images_records_their_sources() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r");
    ok(&["run", "--out", out.to_str().unwrap(), "--init", "real", "--iteration", "2", "--ipc-end", "2", "--classes", "3", "--quiet"]);
    let rec = json(&out.join("recover_record.json"));
    assert_eq!(rec["settings"]["init"]["kind"], "real");
    assert_eq!(rec["settings"]["init"]["data"], "fashion-mnist", "from the teacher's metadata");
    let batch = &rec["batches"][0];
    let sources = batch["init_sources"].as_array().unwrap();
    assert_eq!(sources.len(), 6, "one entry per image of the batch (3 classes x 2 IPC)");
    let train = data::open("fashion-mnist", Split::Train, 1).unwrap();
    // Images are ipc-major within a batch: image k has class k mod 3.
    for (k, s) in sources.iter().enumerate() {
        let i = source_index(s[0].as_str().unwrap());
        assert_eq!(train.label(i), k % 3, "image {k} starts from a class-{} image", k % 3);
    }
    let rded = dir.path().join("rded");
    ok(&["run", "--out", rded.to_str().unwrap(), "--method", "rded", "--ipc-end", "1", "--classes", "2", "--candidates", "8", "--crops", "1"]);
    assert_eq!(json(&rded.join("select_record.json"))["images"].as_array().unwrap().len(), 2);
    assert!(!rded.join("recover_record.json").exists(), "rded does not optimise");
}

/// Several teachers: the record names the extra ones and the schedule; a committee larger than the
/// teachers is refused before any work.
#[test]
fn run_with_two_teachers() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t");
    let both = format!("{TEACHER},{TEACHER}");
    ok(&[
        "run",
        "--out",
        out.to_str().unwrap(),
        "--weights",
        &both,
        "--teachers-per-step",
        "2",
        "--iteration",
        "2",
        "--ipc-end",
        "1",
        "--classes",
        "2",
        "--quiet",
    ]);
    let rec = json(&out.join("recover_record.json"));
    assert_eq!(rec["settings"]["extra_teachers"].as_array().unwrap().len(), 1);
    assert_eq!(rec["settings"]["teacher_schedule"]["kind"], "committee");
    refused(&["run", "--out", dir.path().join("u").to_str().unwrap(), "--weights", &both, "--teachers-per-step", "3"], "exceeds the 2 teachers");
}

/// `--method recommended`: the first 70% of each class's images are selected real images written
/// as they are (recorded with their sources), the rest recovered; a rerun resumes instead of
/// refusing its own folder, and a --real-ipc above the IPC or selection flags that nothing uses are
/// refused before any work.
#[test]
fn hybrid_sets_write_real_then_recovered_images_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("h");
    let args = [
        "run",
        "--out",
        out.to_str().unwrap(),
        "--method",
        "recommended",
        "--iteration",
        "2",
        "--ipc-end",
        "4",
        "--classes",
        "2",
        "--candidates",
        "6",
        "--quiet",
    ];
    ok(&args);
    let rec = json(&out.join("recover_record.json"));
    let real = rec["real_images"].as_array().unwrap();
    assert_eq!(real.len(), 4, "IPC 0 and 1 of 2 classes are real");
    assert!(real.iter().all(|e| e[1].as_u64().unwrap() < 2));
    assert_eq!(rec["batches"][0]["ipc"], serde_json::json!([2, 3]), "recover makes IPC 2 and 3");
    assert!(out.join("new001/class001_id003.png").is_file(), "PNG files");
    let train = data::open("fashion-mnist", Split::Train, 1).unwrap();
    for e in real {
        assert_eq!(train.label(source_index(e[2][0].as_str().unwrap())), e[0].as_u64().unwrap() as usize);
    }
    // A run killed after its record but before its batches resumes (the record is written first).
    std::fs::remove_file(out.join("new000/class000_id002.png")).unwrap();
    let log = ok(&args);
    assert!(log.contains("resuming"), "{log}");
    refused(&["run", "--out", dir.path().join("x").to_str().unwrap(), "--real-ipc", "5", "--ipc-end", "2"], "--real-ipc 5 exceeds --ipc-end 2");
    refused(&["run", "--out", dir.path().join("y").to_str().unwrap(), "--factor", "3"], "need --init patches, --real-ipc");
}

/// `--method edc` and `--method cvdd` record their papers' settings (EDC: RDED start, class-wise BN
/// statistics with one class per batch, crop scale 0.5..1 throughout, lr 0.05; CV-DD: two teachers
/// per iteration), explicit flags still win, and --bn-stats class refuses a measurement of no images.
#[test]
fn edc_and_cvdd_record_their_settings() {
    let dir = tempfile::tempdir().unwrap();
    let two = format!("{TEACHER},{TEACHER}");
    let edc = dir.path().join("edc");
    let log = ok(&[
        "run",
        "--out",
        edc.to_str().unwrap(),
        "--method",
        "edc",
        "--weights",
        &two,
        "--iteration",
        "2",
        "--ipc-end",
        "1",
        "--classes",
        "2",
        "--candidates",
        "8",
        "--crops",
        "1",
        "--class-stats-images",
        "20",
        "--quiet",
    ]);
    assert!(log.contains("class-wise BN statistics"), "{log}");
    let s = &json(&edc.join("recover_record.json"))["settings"];
    assert_eq!(s["init"]["kind"], "patches");
    assert_eq!(s["bn_target"], serde_json::json!({"kind": "class", "data": "fashion-mnist", "images": 20}));
    assert_eq!(s["batch_size"], 1, "one class per batch");
    assert_eq!(s["recover"]["crop_min_scale"], 0.5);
    assert_eq!(s["recover"]["milestone"], 0.0);
    assert_eq!(s["recover"]["lr"], 0.05);
    assert_eq!(s["teacher_schedule"]["kind"], "rotate");
    assert_eq!(json(&edc.join("recover_record.json"))["batches"].as_array().unwrap().len(), 2, "a batch per class");
    let cvdd = dir.path().join("cvdd");
    ok(&[
        "run",
        "--out",
        cvdd.to_str().unwrap(),
        "--method",
        "cvdd",
        "--weights",
        &two,
        "--iteration",
        "2",
        "--ipc-end",
        "1",
        "--classes",
        "2",
        "--candidates",
        "8",
        "--crops",
        "1",
        "--lr",
        "0.1",
        "--quiet",
    ]);
    let s = &json(&cvdd.join("recover_record.json"))["settings"];
    assert_eq!(s["teacher_schedule"], serde_json::json!({"kind": "committee", "per_step": 2}));
    assert_eq!(s["recover"]["lr"], 0.1, "an explicit flag wins over the method's");
    assert!(s.get("bn_target").is_none(), "the running statistics are the default and not written");
    refused(
        &["run", "--out", dir.path().join("z").to_str().unwrap(), "--bn-stats", "class", "--class-stats-images", "0"],
        "--class-stats-images must be at least 1",
    );
    refused(&["run", "--out", dir.path().join("z").to_str().unwrap(), "--crop-min-scale", "0"], "--crop-min-scale must be in (0, 1]");
}

/// FADRM's resolution stages from the command line: a staged run writes full-size images and
/// records its stages (the loop itself is checked against PyTorch in tests/recover_replay.rs), and
/// stage lists that cannot work are refused before anything is written.
#[test]
fn resolution_stages_run_and_refuse_bad_lists() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("staged");
    let o = out.to_str().unwrap();
    ok(&["run", "--out", o, "--resolution-stages", "20,28,20,28", "--iteration", "8", "--ipc-end", "1", "--classes", "2", "--quiet"]);
    let s = &json(&out.join("recover_record.json"))["settings"];
    assert_eq!(s["residual"], serde_json::json!({"every": 2, "alpha": 0.5, "restart_adam": true, "resolutions": [20, 28, 20, 28]}));
    let img = image::open(out.join("new000/class000_id000.jpg")).unwrap();
    assert_eq!((img.width(), img.height()), (28, 28), "saved at the teacher's resolution");
    let bad = dir.path().join("bad");
    let b = bad.to_str().unwrap();
    let base = ["run", "--out", b, "--iteration", "8", "--ipc-end", "1", "--classes", "2", "--quiet"];
    for (extra, says) in [
        (&["--resolution-stages", "20,24"][..], "must end at the teacher's resolution 28"),
        (&["--resolution-stages", "20,32,28"][..], "at most the resolution 28"),
        (&["--resolution-stages", "3,28"][..], "must be above --jitter 4"),
        (&["--resolution-stages", "20,28", "--residual-every", "2"][..], "gives 2 sizes for 4 stages"),
        (&["--resolution-stages", "20,28", "--residual-every", "0"][..], "needs --residual-every above 0"),
    ] {
        refused(&[&base[..], extra].concat(), says);
        assert!(!bad.exists(), "{extra:?} wrote {}", bad.display());
    }
}
