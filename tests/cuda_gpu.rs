//! The CUDA backend on a real GPU against the CPU backend (and, through an exported case, PyTorch).
//! Every test skips (printing why) when no usable GPU is present, so CI without a GPU passes;
//! `CDA_REQUIRE_GPU=1` (set by benches/gpu/run_checks.sh) turns a skip into a failure.
//!
//! - the mma.sync fragment layout against the hardware (a float64 GEMM), every kernel on the emulated
//!   tests' shapes and on real ResNet layer shapes, all fixture networks in fp32 and TF32;
//! - graph capture/replay and forked streams against eager single-stream execution (bit-identical);
//! - ResNet-18 224x224 batch 100 and ResNet-50 224x224 forward + losses + backward against the CPU;
//!   with `CDA_GPU_EXPORT=<dir>` the ResNet-18 case (state dict, input, GPU results) is written for
//!   benches/gpu/pytorch_check.py.
//!
//! Timings are not tests: benches/ops.rs times every op and whole iterations on the GPU.

mod common;
mod cuda_common;

use std::path::PathBuf;

use cda_engine::backend::cuda::{ConvVersion, CudaBackend, GpuBackend};
use cda_engine::backend::Backend;
use cda_engine::model::ResNet;
use cda_engine::ops::conv::ConvProblem;
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
