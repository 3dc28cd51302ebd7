//! `run --shard I/N` and `cda-engine status` end to end on the shipped teacher: N processes writing
//! into one folder at the same time make the set one process makes, byte for byte; shards of other
//! settings, a plain run on a sharded folder and a second process for one shard are refused; status
//! reports what is missing or damaged and the commands that finish the set, and exits 1 until then.
//! `relabel --shard I/N` likewise: N processes give the labels file one process writes, byte for byte.

use std::path::Path;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_cda-engine");

/// A small set: 4 classes x 3 IPC in batches of 2 classes x 1 IPC (6 batches), 4 iterations.
const SET: &[&str] = &["run", "--iteration", "4", "--ipc-end", "3", "--ipc-per-batch", "1", "--classes", "4", "--batch-size", "2", "--threads", "1", "--quiet"];

fn engine(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn set_args<'a>(out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    SET.iter().copied().chain(["--out", out]).chain(extra.iter().copied()).collect()
}

fn ok(o: &Output) -> String {
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "failed: {stderr}");
    stderr
}

fn refused(o: &Output, says: &str) {
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "should fail cleanly: {stderr}");
    assert!(stderr.contains(says), "expected '{says}' in: {stderr}");
}

/// (relative path, bytes) of every image under `dir`, sorted.
fn images(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for class in std::fs::read_dir(dir).unwrap().flatten().filter(|e| e.path().is_dir()) {
        for f in std::fs::read_dir(class.path()).unwrap().flatten() {
            let name = format!("{}/{}", class.file_name().to_string_lossy(), f.file_name().to_string_lossy());
            out.push((name, std::fs::read(f.path()).unwrap()));
        }
    }
    out.sort();
    out
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Three shard processes started together into one folder give one process's images, a merged
/// record with every batch in plan order, and a complete status.
#[test]
fn three_concurrent_shards_make_the_set_one_run_makes() {
    let dir = tempfile::tempdir().unwrap();
    let (one, three) = (dir.path().join("one"), dir.path().join("three"));
    ok(&engine(&set_args(one.to_str().unwrap(), &[]), &[]));
    let children: Vec<_> = (0..3)
        .map(|i| {
            let shard = format!("{i}/3");
            Command::new(BIN).args(set_args(three.to_str().unwrap(), &["--shard", &shard])).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap()
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "a shard failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    let (a, b) = (images(&one), images(&three));
    assert_eq!(a.len(), 12, "4 classes x 3 IPC");
    assert!(a == b, "the shards' images differ from one run's");
    let (r1, r3) = (json(&one.join("recover_record.json")), json(&three.join("recover_record.json")));
    let key = |r: &serde_json::Value| {
        r["batches"].as_array().unwrap().iter().map(|b| (b["ipc"].clone(), b["class_start"].clone(), b["last"]["ce"].clone())).collect::<Vec<_>>()
    };
    assert_eq!(key(&r1), key(&r3), "the merged record lists the same batches, in plan order, with the same losses");
    assert_eq!(r1["settings"], r3["settings"]);
    let o = engine(&["status", three.to_str().unwrap()], &[]);
    assert!(ok(&o).contains("6 of 6 batches complete"));
    // A plain rerun of the finished set resumes it: nothing to do.
    let o = engine(&set_args(three.to_str().unwrap(), &[]), &[]);
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains("\"batches_skipped\":6"));
}

/// What is refused, what status says about an unfinished or damaged sharded set, and how it is
/// finished: the commands it prints, run as they are.
#[test]
fn sharded_sets_are_checked_reported_and_finished() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("s");
    let o = out.to_str().unwrap();
    // Shard 0 of 2 from a Slurm job array numbered 1..2.
    let log = ok(&engine(&set_args(o, &["--shard", "auto"]), &[("SLURM_ARRAY_TASK_ID", "1"), ("SLURM_ARRAY_TASK_MIN", "1"), ("SLURM_ARRAY_TASK_MAX", "2")]));
    assert!(log.contains("shard 0 of 2 (SLURM_ARRAY_TASK_ID=1 in SLURM_ARRAY_TASK_MIN..MAX=1..2)"), "{log}");
    refused(&engine(&set_args(o, &["--shard", "1/2", "--seed", "3"]), &[]), "seed: 0 -> 3");
    refused(&engine(&set_args(o, &["--shard", "1/3"]), &[]), "shards: 2 -> 3");
    refused(&engine(&set_args(o, &[]), &[]), "sharded set that is not complete");
    refused(&engine(&set_args(o, &["--shard", "2/2"]), &[]), "not below the count 2");
    // Status: 3 of 6 batches done, shard 1's missing, one command to finish, exit 1.
    let st = engine(&["status", o], &[]);
    refused(&st, "the set is incomplete: 3 of 6 batches left");
    let report: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&st.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(report["complete"], 3);
    assert!(report["incomplete"].as_array().unwrap().iter().all(|b| b["shard"] == 1 && b["state"] == "missing"));
    let commands: Vec<String> = report["commands"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()).collect();
    assert_eq!(commands.len(), 1);
    assert!(commands[0].ends_with("--shard 1/2"), "{}", commands[0]);
    // Damage one of shard 0's images: status names it, and rerunning shard 0 repairs it.
    let victim = out.join("new000/class000_id000.jpg");
    std::fs::write(&victim, b"\xff\xd8 cut").unwrap();
    let st = engine(&["status", o], &[]);
    assert!(String::from_utf8_lossy(&st.stderr).contains("damaged"), "{}", String::from_utf8_lossy(&st.stderr));
    ok(&engine(&set_args(o, &["--shard", "0/2"]), &[]));
    // The printed command finishes the set (its arguments are the recorded ones, unquoted here).
    let args: Vec<&str> = commands[0].split(' ').skip(1).collect();
    let log = ok(&engine(&args, &[]));
    assert!(log.contains("the set is complete"), "{log}");
    ok(&engine(&["status", o], &[]));
    // A folder a plain run made is not taken over by a shard.
    let plain = dir.path().join("p");
    ok(&engine(&set_args(plain.to_str().unwrap(), &[]), &[]));
    refused(&engine(&set_args(plain.to_str().unwrap(), &["--shard", "0/2"]), &[]), "made by a run without --shard");
}

/// A hybrid set (`--method recommended`: selected real images, then recovered ones) split over two
/// shards: the real part is split by class, and the union is one process's set.
#[test]
fn a_sharded_hybrid_set_is_the_unsharded_one() {
    let dir = tempfile::tempdir().unwrap();
    let args = |out: &Path, extra: &[&str]| -> Vec<String> {
        ["run", "--method", "recommended", "--iteration", "3", "--ipc-end", "4", "--classes", "3", "--candidates", "6", "--threads", "1", "--quiet", "--out"]
            .iter()
            .map(|s| s.to_string())
            .chain([out.to_str().unwrap().to_string()])
            .chain(extra.iter().map(|s| s.to_string()))
            .collect()
    };
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    let run = |a: Vec<String>| ok(&Command::new(BIN).args(&a).output().unwrap());
    run(args(&one, &[]));
    run(args(&two, &["--shard", "1/2"]));
    run(args(&two, &["--shard", "0/2"]));
    assert!(images(&one) == images(&two), "the shards' hybrid set differs from one run's");
    let (r1, r2) = (json(&one.join("recover_record.json")), json(&two.join("recover_record.json")));
    assert_eq!(r1["real_images"], r2["real_images"], "the merged record lists every real image and its sources");
}

/// Three `relabel --shard` processes at once: the last to finish merges their files into the labels
/// file one process writes, byte for byte (views, mixes and fp16 logits), and removes them. Before
/// that, validate refuses a shard's file; a shard made with another seed is named at the merge, and
/// rerunning it with the right flags finishes the file.
#[test]
fn relabel_shards_merge_into_the_file_one_process_writes() {
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("set");
    ok(&engine(&["sample", "--data", "fashion-mnist", "--ipc", "3", "--seed", "0", "--out", set.to_str().unwrap()], &[]));
    // 30 images in batches of 4: 8 batches per epoch, the last of 2, so shards hold 3, 3 and 2.
    let relabel = |out: &Path, extra: &[&str]| {
        let mut a = vec!["relabel", "--images", set.to_str().unwrap(), "--epochs", "2", "--batch-size", "4", "--topk", "3", "--threads", "1", "--quiet"];
        a.extend(["--out", out.to_str().unwrap()]);
        a.extend(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let (one, three) = (dir.path().join("one.safetensors"), dir.path().join("three.safetensors"));
    ok(&engine(&relabel(&one, &[]).iter().map(String::as_str).collect::<Vec<_>>(), &[]));
    let part = |i: usize| dir.path().join(format!("three.safetensors.shard-{i}-of-3"));

    // Shards 0 and 1 at once, shard 2 with another seed: the merge names the difference.
    let children: Vec<_> = (0..2)
        .map(|i| Command::new(BIN).args(relabel(&three, &["--shard", &format!("{i}/3")])).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap())
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "a relabel shard failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    assert!(!three.exists() && part(0).exists() && part(1).exists(), "two of three shards must not merge");
    let v = engine(&["validate", "--images", set.to_str().unwrap(), "--labels", part(0).to_str().unwrap(), "--epochs", "1", "--quiet"], &[]);
    refused(&v, "is shard 0 of 3");
    let args = relabel(&three, &["--shard", "2/3", "--seed", "1"]);
    refused(&engine(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]), "seed 0 vs 1");
    assert!(!three.exists());

    // The right flags: shard 2 is made again, the others are kept, and the merge matches one process.
    let args = relabel(&three, &["--shard", "2/3"]);
    let said = ok(&engine(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]));
    assert!(said.contains("merged 3 shards"), "{said}");
    assert!(std::fs::read(&one).unwrap() == std::fs::read(&three).unwrap(), "merged shards differ from one process's labels file");
    assert!(!part(0).exists() && !part(1).exists() && !part(2).exists(), "shard files left after the merge");

    // A rerun after the merge (a requeued task) finds the whole file and leaves everything as it is.
    let args = relabel(&three, &["--shard", "0/3"]);
    let o = engine(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    let said = ok(&o);
    assert!(said.contains("already holds the merged labels"), "{said}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("\"merged_into\""), "the summary names the merged file");
    assert!(!part(0).exists(), "a rerun after the merge left a shard file");
    assert!(std::fs::read(&one).unwrap() == std::fs::read(&three).unwrap());
    // The merged file's place is checked before any work: a folder there is refused at once.
    let folder = dir.path().join("folder.safetensors");
    std::fs::create_dir(&folder).unwrap();
    let args = relabel(&folder, &["--shard", "0/2"]);
    refused(&engine(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]), "folder");
    assert!(!dir.path().join("folder.safetensors.shard-0-of-2").exists());
}
