//! `run --device cuda:0,1`: several devices draining one queue of batches make the set one device makes,
//! byte for byte (every batch has its own seeded RNG and starts from the same state), and the record
//! lists the batches in plan order. Checked with two CPU backends and with two emulated CUDA backends,
//! so no GPU is needed; the shipped Fashion-MNIST teacher is the model. A device that fails mid-run
//! is named, the others finish the queue, and a rerun makes just the failed batch.

use std::path::Path;

use cda_engine::backend::cpu::CpuBackend;
use cda_engine::backend::cuda::emulation::EmuDevice;
use cda_engine::backend::cuda::CudaBackend;
use cda_engine::backend::Backend;
use cda_engine::recover::cli::RunArgs;
use cda_engine::recover::run::{run_on_devices, RunOptions};
use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: RunArgs,
}

/// 3 classes x 2 IPC in batches of 1 IPC x 1 class (6 batches), 2 iterations:
/// more batches than devices, so the queue hands each device several.
fn settings(out: &Path) -> (cda_engine::recover::run::RunSettings, cda_engine::model::ResNet) {
    let (model, teacher) = cda_engine::default_teacher::load_teacher(None).unwrap();
    let out = out.to_str().unwrap();
    let cli = Cli::parse_from(["run", "--iteration", "2", "--ipc-end", "2", "--ipc-per-batch", "1", "--classes", "3", "--batch-size", "1", "--out", out]);
    let (s, _) = cda_engine::recover::cli::settings(&cli.args, &model, &teacher).unwrap();
    (s, model)
}

fn opts() -> RunOptions {
    RunOptions { show_progress: false, log_every: 1, shard: None, command: vec!["run".into()] }
}

/// (relative path, bytes) of every image under `dir`, sorted.
fn images(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for class in std::fs::read_dir(dir).unwrap().flatten().filter(|e| e.path().is_dir()) {
        for f in std::fs::read_dir(class.path()).unwrap().flatten() {
            out.push((format!("{}/{}", class.file_name().to_string_lossy(), f.file_name().to_string_lossy()), std::fs::read(f.path()).unwrap()));
        }
    }
    out.sort();
    out
}

/// (ipc, class_start) of the record's batches, in the record's order.
fn recorded_batches(dir: &Path) -> Vec<(Vec<usize>, usize)> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("recover_record.json")).unwrap()).unwrap();
    v["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["ipc"].as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as usize).collect(), b["class_start"].as_u64().unwrap() as usize))
        .collect()
}

fn same_set_on_one_and_two<B: Backend>(one: &B, two: [&B; 2]) {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("one"), dir.path().join("two"));
    let (s, model) = settings(&a);
    let summary_one = run_on_devices(&[one], &[&model], &s, &a, &opts()).unwrap();
    let (s, model) = settings(&b);
    let summary_two = run_on_devices(&two, &[&model], &s, &b, &opts()).unwrap();
    assert_eq!(summary_one.images_written, 6);
    assert_eq!(summary_two.images_written, 6);
    let (ia, ib) = (images(&a), images(&b));
    assert_eq!(ia.len(), 6);
    assert!(ia == ib, "two devices made other images than one");
    assert_eq!(recorded_batches(&a), recorded_batches(&b), "record not in plan order");
}

#[test]
fn two_cpu_backends_make_the_set_one_makes() {
    let one = CpuBackend::new(1).unwrap();
    let (x, y) = (CpuBackend::new(1).unwrap(), CpuBackend::new(1).unwrap());
    same_set_on_one_and_two(&one, [&x, &y]);
}

#[test]
fn two_emulated_cuda_backends_make_the_set_one_makes() {
    let (Ok(one), Ok(x), Ok(y)) = (CudaBackend::emulated(), CudaBackend::emulated(), CudaBackend::emulated()) else {
        // CI builds always have emulation (CDA_REQUIRE_EMULATION=1 makes its absence a build error).
        eprintln!("skipping: no host emulation in this build");
        return;
    };
    same_set_on_one_and_two(&one, [&x, &y]);
}

#[test]
fn a_failing_device_is_named_and_the_others_finish_the_queue() {
    // The second device fails every launch after its 50th: within its first batch (2 iterations of
    // a ResNet-18 are some hundreds of launches).
    let (Ok(one), Ok(good), Ok(bad)) = (CudaBackend::emulated(), CudaBackend::emulated(), EmuDevice::failing_after(50).and_then(CudaBackend::on)) else {
        eprintln!("skipping: no host emulation in this build");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("one"), dir.path().join("two"));
    let (s, model) = settings(&a);
    run_on_devices(&[&one], &[&model], &s, &a, &opts()).unwrap();
    let (s, model) = settings(&b);
    let err = run_on_devices(&[&good, &bad], &[&model], &s, &b, &opts()).unwrap_err().to_string();
    assert!(err.contains("1 batch(es) failed") && err.contains("emulated device fault") && err.contains("rerun"), "{err}");
    assert_eq!(recorded_batches(&b).len(), 5, "the good device did not finish the other batches");
    assert_eq!(images(&b).len(), 5);
    // The rerun makes only the failed batch, and the set is then one device's, record included.
    let again = run_on_devices(&[&good], &[&model], &s, &b, &opts()).unwrap();
    assert_eq!(again.batches_run, 1);
    assert!(images(&a) == images(&b), "the finished set differs from one device's");
    assert_eq!(recorded_batches(&a), recorded_batches(&b));
}
