//! The CUDA backend on a real GPU against the CPU backend (and, through an exported case, PyTorch).
//! Every test skips (printing why) when no usable GPU is present, so CI without a GPU passes;
//! `CDA_REQUIRE_GPU=1` (set by benches/gpu/run_checks.sh) turns a skip into a failure.
//!
//! - the mma.sync fragment layout against the hardware (a float64 GEMM), every kernel on the emulated
//!   tests' shapes and on real ResNet layer shapes, all fixture networks in fp32 and TF32;
//! - graph capture/replay and forked streams against eager single-stream execution (bit-identical);
//! - ResNet-18 224x224 batch 100 and ResNet-50 224x224 forward + losses + backward against the CPU;
//!   with `CDA_GPU_EXPORT=<dir>` the ResNet-18 case (state dict, input, GPU results) is written for
//!   benches/gpu/pytorch_check.py;
//! - with `CDA_GPU_BENCH=1`, timings: per-layer conv kernels (ms, TFLOP/s) and whole recover
//!   iterations (eager, graph replay, two streams), one `TIMING {json}` line each.

mod common;
mod cuda_common;

use std::path::PathBuf;
use std::time::Instant;

use cda_engine::backend::cuda::{ConvVersion, CudaBackend, GpuBackend};
use cda_engine::backend::Backend;
use cda_engine::bench::random_resnet;
use cda_engine::model::{maxpool_out_hw, ResNet, Stem};
use cda_engine::ops::conv::{BnAffine, ConvProblem, DgradEpilogue, FpropEpilogue};
use cuda_common::*;

fn gpu() -> Option<GpuBackend> {
    let ordinal = std::env::var("CDA_GPU").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    match CudaBackend::new(ordinal) {
        Ok(b) => {
            println!("GPU {ordinal}: {}", b.describe());
            Some(b)
        }
        Err(e) => {
            if std::env::var("CDA_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("CDA_REQUIRE_GPU=1 but the CUDA backend cannot start: {e}");
            }
            eprintln!("skipping (no usable GPU): {e}");
            None
        }
    }
}

#[test]
fn gpu_mma_fragment_layout_matches_hardware() {
    let Some(g) = gpu() else { return };
    for (m, n, k) in [(16, 8, 8), (37, 29, 45), (128, 64, 256)] {
        check_mma(&g, m, n, k);
    }
    // The host shim's warp, block, shared-memory and atomic semantics are the hardware's.
    check_shim(&g);
}

/// ResNet layer shapes (small batch): the tiles' steady state, every K tile full.
fn resnet_layer_shapes() -> Vec<(&'static str, ConvProblem)> {
    vec![
        ("stem 7x7/2 3->64 112px", conv_problem(2, 3, 112, 112, 64, 7, 2, 3)),
        ("layer1 3x3 64->64 56px", conv_problem(2, 64, 56, 56, 64, 3, 1, 1)),
        ("layer2.0 3x3/2 64->128", conv_problem(2, 64, 56, 56, 128, 3, 2, 1)),
        ("downsample 1x1/2 128->256", conv_problem(2, 128, 28, 28, 256, 1, 2, 0)),
        ("layer4 3x3 512->512 7px", conv_problem(4, 512, 7, 7, 512, 3, 1, 1)),
        ("bottleneck 1x1 256->64 56px", conv_problem(2, 256, 56, 56, 64, 1, 1, 0)),
    ]
}

#[test]
fn gpu_kernels_match_cpu() {
    let Some(g) = gpu() else { return };
    check_bn_match_and_backward(&g);
    check_pools(&g);
    check_linear_and_softmax(&g);
    check_crop_resize(&g);
    check_adam(&g);
    check_image_prior(&g);
    // The training ops, on the emulated tests' shapes and on ResNet layer shapes (wgrad).
    train::check_batchnorm(&g);
    train::check_linear_wgrad(&g);
    train::check_kd_loss(&g);
    train::check_optimizers(&g);
    train::check_train_errors(&g);
    let mut wgrad = train::wgrad_shapes();
    wgrad.extend(resnet_layer_shapes());
    for (i, (name, p)) in wgrad.iter().enumerate() {
        train::check_conv_wgrad(&g, name, p, 900 + i as u64);
    }
    // A whole training step of the CUDA executor against PyTorch, fp32 and TF32.
    for name in ["basic_cifar_ce_sgd", "bottleneck_imagenet_kd_adamw", "basic_resnet18_w4_ce_sgd"] {
        train::check_train_step_fixture(&g, name, false);
        train::check_train_step_fixture(&g, name, true);
    }
    g.set_conv_version(ConvVersion::Tf32);
    let kinds = [DgradKind::Store, DgradKind::MaskAdd, DgradKind::MaskAccumulate, DgradKind::BnRelu];
    for v in [ConvVersion::Fp32, ConvVersion::Tf32] {
        let mut shapes = conv_shapes();
        shapes.extend(resnet_layer_shapes());
        for (i, (name, p)) in shapes.iter().enumerate() {
            check_conv_fprop(&g, v, name, p, i % 2 == 0, true, 500 + i as u64);
            check_conv_fprop(&g, v, name, p, i % 2 == 1, false, 600 + i as u64);
            for (j, kind) in kinds.iter().enumerate() {
                check_conv_dgrad(&g, v, name, p, *kind, 700 + (10 * i + j) as u64);
            }
        }
    }
}

#[test]
fn gpu_fixture_networks() {
    let Some(g) = gpu() else { return };
    let fixtures =
        ["basic_imagenet_w8", "basic_imagenet_w16_33px", "basic_cifar_1ch_7cls_30px", "bottleneck_imagenet_33px", "bottleneck_cifar_w8", "basic_cifar_batch1"];
    for f in fixtures {
        let (w, io) = (format!("forward/{f}.safetensors"), format!("forward/{f}.io.safetensors"));
        check_net(&g, ConvVersion::Fp32, &w, &io, NET_FP32);
        check_net(&g, ConvVersion::Tf32, &w, &io, NET_TF32);
    }
}

/// Graph replay and two forked streams give exactly what eager execution on one stream gives.
#[test]
fn gpu_graph_replay_and_streams_match_eager() {
    let Some(g) = gpu() else { return };
    let model = ResNet::load(&fixture("forward/basic_imagenet_w16_33px.safetensors")).unwrap();
    let (n, h, w) = (4, 64, 64);
    let mut r = rng(31);
    let x0 = randn(&mut r, n * 3 * h * w, 1.0);
    let x1 = randn(&mut r, n * 3 * h * w, 1.0);
    let targets = [1, 2, 3, 4];
    let steps = augment_schedule(n, h, w, 4);
    let run_eager = |b: &GpuBackend, x: &[f32]| {
        let mut it = Iteration::new(b, &model, n, h, w, x, &targets);
        for (t, aug) in steps.iter().enumerate() {
            it.prepare(b, t, aug);
            it.issue(b).unwrap();
        }
        down(b, &it.x, x.len())
    };
    let run_graph = |b: &GpuBackend, x: &[f32]| {
        let mut it = Iteration::new(b, &model, n, h, w, x, &targets);
        it.prepare(b, 0, &steps[0]);
        it.issue(b).unwrap();
        let graph = b.capture(|bb| it.issue(bb)).unwrap();
        for (t, aug) in steps.iter().enumerate().skip(1) {
            it.prepare(b, t, aug);
            b.replay(&graph).unwrap();
        }
        down(b, &it.x, x.len())
    };
    let (e0, e1) = (run_eager(&g, &x0), run_eager(&g, &x1));
    common::assert_close("graph replay", &run_graph(&g, &x0), &e0, 0.0);
    let (fa, fb) = (g.fork().unwrap(), g.fork().unwrap());
    let (a, b) = std::thread::scope(|s| {
        let ta = s.spawn(|| run_graph(&fa, &x0));
        let tb = s.spawn(|| run_eager(&fb, &x1));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    common::assert_close("stream A (graph)", &a, &e0, 0.0);
    common::assert_close("stream B (eager)", &b, &e1, 0.0);
}

#[test]
fn gpu_resnet18_224_batch100_vs_cpu() {
    let Some(g) = gpu() else { return };
    check_large(&g, "resnet18", 224, 100, std::env::var_os("CDA_GPU_EXPORT").map(PathBuf::from));
}

#[test]
fn gpu_resnet50_224_vs_cpu() {
    let Some(g) = gpu() else { return };
    check_large(&g, "resnet50", 224, 16, None);
}

// ---- timings ---------------------------------------------------------------------------------------

/// Every conv of `model` at batch n and square resolution `res`, with how often each shape occurs.
fn conv_layers(model: &ResNet, n: usize, res: usize) -> Vec<(String, ConvProblem, usize)> {
    let mut out: Vec<(String, ConvProblem, usize)> = Vec::new();
    let mut add = |name: &str, p: ConvProblem| match out.iter_mut().find(|(_, q, _)| *q == p) {
        Some(e) => e.2 += 1,
        None => out.push((name.to_string(), p, 1)),
    };
    let stem = ConvProblem::new(n, res, res, &model.stem_conv.geom);
    add(&model.stem_conv.name, stem);
    let (mut h, mut w) = (stem.p as usize, stem.q as usize);
    if model.stem == Stem::ImageNet {
        (h, w) = maxpool_out_hw(h, w);
    }
    for b in &model.blocks {
        let (bh, bw) = (h, w);
        for c in &b.convs {
            let p = ConvProblem::new(n, h, w, &c.geom);
            add(&c.name, p);
            (h, w) = (p.p as usize, p.q as usize);
        }
        if let Some(d) = &b.downsample {
            add(&d.name, ConvProblem::new(n, bh, bw, &d.geom));
        }
    }
    out
}

fn time_ms(g: &GpuBackend, reps: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..2 {
        f();
    }
    g.synchronize().unwrap();
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    g.synchronize().unwrap();
    1e3 * t.elapsed().as_secs_f64() / reps as f64
}

#[test]
fn gpu_timings() {
    if std::env::var("CDA_GPU_BENCH").map(|v| v != "1").unwrap_or(true) {
        println!("skipping timings (set CDA_GPU_BENCH=1)");
        return;
    }
    let Some(g) = gpu() else { return };
    let device = g.describe();
    let (n, res) = (100, 224);
    let model = random_resnet("resnet18", Stem::ImageNet, 3, 1000, 64, 1).unwrap();
    // Per-layer kernels: fprop with the epilogue the executor uses (BN, ReLU, y, statistics) and dgrad
    // with the BN+ReLU epilogue. Host timing around synchronised repetitions (launch overhead is
    // microseconds against milliseconds of work).
    for (name, p, count) in conv_layers(&model, n, res) {
        let k = p.k as usize;
        let mut r = rng(41);
        let x = up(&g, &randn(&mut r, p.input_len(), 1.0));
        let wt = up(&g, &randn(&mut r, p.weight_len(), 0.05));
        let ones = up(&g, &vec![1.0; k.max(p.c as usize)]);
        let coef = up(&g, &vec![0.0; 3 * p.c as usize]);
        let (mut out, mut y, mut st) = (g.alloc(p.output_len()).unwrap(), g.alloc(p.output_len()).unwrap(), g.alloc(2 * k).unwrap());
        let dy = up(&g, &randn(&mut r, p.output_len(), 1.0));
        let mut dx = g.alloc(p.input_len()).unwrap();
        for v in [ConvVersion::Fp32, ConvVersion::Tf32] {
            g.set_conv_version(v);
            let fprop = time_ms(&g, 10, || {
                let epi = FpropEpilogue {
                    bn: BnAffine { mean: &ones, scale: &ones, beta: &ones },
                    residual: None,
                    relu: true,
                    y: Some(&mut y),
                    stats: Some(&mut st),
                };
                g.conv_fprop(&p, &x, &wt, epi, &mut out).unwrap();
            });
            let dgrad = time_ms(&g, 10, || {
                let epi = DgradEpilogue::BnRelu { y_prev: &x, scale: &ones, coef: &coef };
                g.conv_dgrad(&p, &dy, &wt, &x, epi, &mut dx).unwrap();
            });
            let tf = |ms: f64| p.flops() / (ms * 1e-3) / 1e12;
            println!(
                "TIMING {}",
                serde_json::json!({"kind": "conv", "device": device, "layer": name, "count": count, "version": format!("{v:?}"),
                    "n": p.n, "c": p.c, "hw": p.h, "k": p.k, "rs": p.r, "stride": p.stride,
                    "fprop_ms": fprop, "fprop_tflops": tf(fprop), "dgrad_ms": dgrad, "dgrad_tflops": tf(dgrad)})
            );
        }
    }
    // Whole recover iterations.
    for arch in ["resnet18", "resnet50"] {
        let model = random_resnet(arch, Stem::ImageNet, 3, 1000, 64, 1).unwrap();
        for v in [ConvVersion::Fp32, ConvVersion::Tf32] {
            g.set_conv_version(v);
            // Eager, through the recover loop itself (per-iteration uploads and all).
            let spec = cda_engine::bench::BenchSpec { res, batch: n, iters: 10, warmup: 3, graphs: false };
            let eager = cda_engine::bench::bench(&g, &model, &spec, 0).unwrap();
            // One captured iteration replayed (crop parameters and Adam scalars uploaded between).
            let mut r = rng(43);
            let x0 = randn(&mut r, n * 3 * res * res, 1.0);
            let targets: Vec<i32> = (0..n as i32).collect();
            let steps = augment_schedule(n, res, res, 13);
            let mut it = Iteration::new(&g, &model, n, res, res, &x0, &targets);
            it.prepare(&g, 0, &steps[0]);
            it.issue(&g).unwrap();
            let graph = g.capture(|b| it.issue(b)).unwrap();
            let mut t = 1;
            let replay = time_ms(&g, 10, || {
                it.prepare(&g, t, &steps[t]);
                g.replay(&graph).unwrap();
                t += 1;
            });
            // Two independent half batches on two streams, each a replayed graph.
            let half = n / 2;
            let forks = [g.fork().unwrap(), g.fork().unwrap()];
            let two_streams = std::thread::scope(|s| {
                let hs: Vec<_> = forks
                    .iter()
                    .map(|b| {
                        let model = &model;
                        s.spawn(move || {
                            let steps = augment_schedule(half, res, res, 13);
                            let x0 = vec![0.5f32; half * 3 * res * res];
                            let tg: Vec<i32> = (0..half as i32).collect();
                            let mut it = Iteration::new(b, model, half, res, res, &x0, &tg);
                            it.prepare(b, 0, &steps[0]);
                            it.issue(b).unwrap();
                            let graph = b.capture(|bb| it.issue(bb)).unwrap();
                            b.synchronize().unwrap();
                            let t0 = Instant::now();
                            for (t, aug) in steps.iter().enumerate().skip(1) {
                                it.prepare(b, t, aug);
                                b.replay(&graph).unwrap();
                            }
                            b.synchronize().unwrap();
                            1e3 * t0.elapsed().as_secs_f64() / (steps.len() - 1) as f64
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).fold(0f64, f64::max)
            });
            println!(
                "TIMING {}",
                serde_json::json!({"kind": "iteration", "device": device, "arch": arch, "res": res, "batch": n, "version": format!("{v:?}"),
                    "eager_ms": eager.ms_per_iter, "graph_ms": replay, "two_streams_ms": two_streams,
                    "eager_gflops": eager.gflops})
            );
        }
    }
}
