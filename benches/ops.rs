//! One benchmark entry per op, recover's and training's, on the CPU backend always and on the CUDA
//! backend when a GPU is usable: each row gives the op, its shape, ms per call, the work (FLOPs for
//! the GEMM-like ops, bytes read and written for the memory-bound ones) and the achieved GFLOP/s or
//! GB/s, so each op can be held against the device's ceilings (`cda-engine bench --ceiling` on the
//! CPU; the card's datasheet or a measured GEMM on a GPU). On a GPU the convolutions run in both
//! versions (fp32 and TF32) and whole recover iterations are timed too (eager launches, a replayed
//! CUDA graph, and two half batches on two streams).
//!
//!   cargo bench --bench ops                     every op (about a minute on 2 cores)
//!   cargo bench --bench ops -- conv_fprop bn    rows whose op or shape contains one of the words
//!
//! Timing: 2 warm-up calls, then as many calls as fit in about 0.2 s (at least 3), synchronised,
//! host clock around them (launch overhead is microseconds against the work timed). Every row is also
//! printed as a `TIMING {json}` line (benches/gpu/table.py reads the conv and iteration ones).
//! Shapes: ResNet-18's layers (torchvision widths), at 32 px batch 16 on the CPU and 224 px batch
//! 100 on a GPU (the official ImageNet-1K recover batch).

use std::time::Instant;

use cda_engine::backend::cpu::CpuBackend;
use cda_engine::backend::cuda::{ConvVersion, GpuBackend};
use cda_engine::backend::{
    AdamClipIo, Backend, BnBackwardIo, BnEvalFwd, BnMatchIo, BnTrainBwd, BnTrainFwd, ImagePrior, LinearProblem, SoftmaxCeIo, TrainBackend,
};
use cda_engine::bench::{conv_layer_table, random_resnet, BenchSpec};
use cda_engine::model::Stem;
use cda_engine::ops::adamw::AdamWConfig;
use cda_engine::ops::batchnorm::{BnProblem, BN_EPS, BN_MOMENTUM};
use cda_engine::ops::conv::{BnAffine, DgradEpilogue, FpropEpilogue};
use cda_engine::ops::crop_resize::{CropParams, CropResizeProblem};
use cda_engine::ops::pool::PoolProblem;
use cda_engine::ops::sgd::SgdConfig;

/// Where rows go: the filter words and the device name.
struct Report {
    device: String,
    filter: Vec<String>,
}

/// What a row's rate is in.
enum Work {
    Flops(f64),
    Bytes(f64),
}

impl Report {
    fn wants(&self, op: &str, shape: &str) -> bool {
        self.filter.is_empty() || self.filter.iter().any(|f| op.contains(f.as_str()) || shape.contains(f.as_str()))
    }

    /// Times `f` on `b` and prints the row, when the filter wants it.
    fn row<B: Backend>(&self, b: &B, op: &str, shape: &str, work: Work, mut f: impl FnMut()) {
        if !self.wants(op, shape) {
            return;
        }
        let ms = time_ms(b, &mut f);
        let (rate, unit, amount) = match work {
            Work::Flops(x) => (x / (ms * 1e-3) / 1e9, "GFLOP/s", x),
            Work::Bytes(x) => (x / (ms * 1e-3) / 1e9, "GB/s", x),
        };
        println!("{:<16} {:<44} {:>10.3} ms {:>10.1} {unit}", op, shape, ms, rate);
        let kind = if unit == "GB/s" { "bytes" } else { "flops" };
        println!(
            "TIMING {}",
            serde_json::json!({"kind": "op", "device": self.device, "op": op, "shape": shape, "ms": ms, kind: amount, "rate": rate, "unit": unit})
        );
    }
}

fn time_ms<B: Backend>(b: &B, f: &mut impl FnMut()) -> f64 {
    for _ in 0..2 {
        f();
    }
    b.synchronize().unwrap();
    let (mut reps, t) = (0usize, Instant::now());
    while reps < 3 || (t.elapsed().as_secs_f64() < 0.2 && reps < 1000) {
        f();
        reps += 1;
        if reps % 8 == 0 {
            b.synchronize().unwrap();
        }
    }
    b.synchronize().unwrap();
    1e3 * t.elapsed().as_secs_f64() / reps as f64
}

/// A buffer of `len` values of a fixed pattern in [-1, 1] (the timings do not depend on the values).
fn buf<B: Backend>(b: &B, len: usize, seed: u32) -> B::Buf {
    let v: Vec<f32> = (0..len as u32).map(|i| ((i.wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / (1u32 << 24) as f32) * 2.0 - 1.0).collect();
    let mut out = b.alloc(len).unwrap();
    b.upload(&v, &mut out).unwrap();
    out
}

fn pos<B: Backend>(b: &B, len: usize) -> B::Buf {
    let mut out = b.alloc(len).unwrap();
    b.upload(&vec![1.0; len], &mut out).unwrap();
    out
}

const F: f64 = 4.0; // bytes per f32

/// Every conv layer of ResNet-18 at `n` x `res`: fprop with recover's epilogue (BN, ReLU, y and the
/// BN-input statistics), dgrad with the BN+ReLU epilogue, and training's wgrad.
fn convs<B: TrainBackend>(r: &Report, b: &B, n: usize, res: usize, tag: &str) {
    let model = random_resnet("resnet18", Stem::ImageNet, 3, 1000, 64, 1).unwrap();
    for (name, p, count) in conv_layer_table(&model, n, res) {
        let shape = format!("{name} x{count} {}x{}/{} {}->{} N{} {}x{}{tag}", p.r, p.s, p.stride, p.c, p.k, p.n, p.h, p.w);
        if !["conv_fprop", "conv_dgrad", "conv_wgrad"].iter().any(|op| r.wants(op, &shape)) {
            continue;
        }
        let k = p.k as usize;
        let (x, w, dy) = (buf(b, p.input_len(), 1), buf(b, p.weight_len(), 2), buf(b, p.output_len(), 3));
        let ones = pos(b, k.max(p.c as usize));
        let coef = buf(b, 3 * p.c as usize, 4);
        let (mut out, mut y, mut st) = (b.alloc(p.output_len()).unwrap(), b.alloc(p.output_len()).unwrap(), b.alloc(2 * k).unwrap());
        let (mut dx, mut dw) = (b.alloc(p.input_len()).unwrap(), b.alloc(p.weight_len()).unwrap());
        r.row(b, "conv_fprop", &shape, Work::Flops(p.flops()), || {
            let epi =
                FpropEpilogue { bn: BnAffine { mean: &ones, scale: &ones, beta: &ones }, residual: None, relu: true, y: Some(&mut y), stats: Some(&mut st) };
            b.conv_fprop(&p, &x, &w, epi, &mut out).unwrap();
        });
        r.row(b, "conv_dgrad", &shape, Work::Flops(p.flops()), || {
            let epi = DgradEpilogue::BnRelu { y_prev: &x, scale: &ones, coef: &coef };
            b.conv_dgrad(&p, &dy, &w, &x, epi, &mut dx).unwrap();
        });
        r.row(b, "conv_wgrad", &shape, Work::Flops(p.flops()), || b.conv_wgrad(&p, &x, &dy, &mut dw).unwrap());
    }
}

/// The memory-bound ops and the small GEMMs, on a ResNet-18 block-1 activation (64 channels at
/// `hw` positions, batch `n`) and its 512-feature, 1000-class head.
fn others<B: TrainBackend>(r: &Report, b: &B, n: usize, side: usize) {
    let (c, hw) = (64usize, side * side);
    let len = n * c * hw;
    let act = format!("{n}x{c}x{side}x{side}");
    let (y, dz) = (buf(b, len, 5), buf(b, len, 6));
    let (scale, beta) = (pos(b, c), buf(b, c, 7));
    let (mut coef, mut losses, mut out, mut dy) = (buf(b, 3 * c, 8), b.alloc(2).unwrap(), b.alloc(len).unwrap(), b.alloc(len).unwrap());
    let stats = buf(b, 2 * c, 9);
    let (rm, rv) = (buf(b, c, 10), pos(b, c));
    r.row(b, "bn_match", &format!("K{c}"), Work::Bytes(F * 7.0 * c as f64), || {
        let t = BnMatchIo { stats: &stats, target_mean: &rm, target_var: &rv, count: n * hw, weight: 0.01, coef: &mut coef, losses: &mut losses, slot: 1 };
        b.bn_match(t).unwrap();
    });
    let bp = BnProblem { n, c, hw };
    r.row(b, "bn_backward", &act, Work::Bytes(F * 3.0 * len as f64), || {
        b.bn_backward(&bp, BnBackwardIo { dz: &dz, y: &y, scale: &scale, coef: &coef, dy: &mut dy }).unwrap();
    });
    let (mut rmm, mut rvm, mut sm, mut si) = (buf(b, c, 10), pos(b, c), b.alloc(c).unwrap(), b.alloc(c).unwrap());
    r.row(b, "bn_fwd_train", &act, Work::Bytes(F * 3.0 * len as f64), || {
        let t = BnTrainFwd {
            y: &y,
            gamma: &scale,
            beta: &beta,
            running_mean: &mut rmm,
            running_var: &mut rvm,
            residual: None,
            relu: true,
            out: &mut out,
            save_mean: &mut sm,
            save_invstd: &mut si,
        };
        b.bn_fwd_train(&bp, BN_MOMENTUM, BN_EPS, t).unwrap();
    });
    r.row(b, "bn_fwd_eval", &act, Work::Bytes(F * 2.0 * len as f64), || {
        let t = BnEvalFwd { y: &y, gamma: &scale, beta: &beta, running_mean: &rm, running_var: &rv, residual: None, relu: true, out: &mut out };
        b.bn_fwd_eval(&bp, BN_EPS, t).unwrap();
    });
    let (mut dgamma, mut dbeta) = (b.alloc(c).unwrap(), b.alloc(c).unwrap());
    let o2 = buf(b, len, 11);
    r.row(b, "bn_bwd_train", &act, Work::Bytes(F * 5.0 * len as f64), || {
        let t = BnTrainBwd {
            dout: &dz,
            out: &o2,
            relu: true,
            y: &y,
            gamma: &scale,
            save_mean: &stats,
            save_invstd: &rv,
            dy: &mut dy,
            dgamma: &mut dgamma,
            dbeta: &mut dbeta,
            dresidual: None,
        };
        b.bn_bwd_train(&bp, t).unwrap();
    });
    // The stem's max pool (3x3 stride 2 pad 1) on this activation, and the global average pool.
    let pp = PoolProblem::stem(n, c, side, side);
    let (mut pout, mut argmax, mut pdx) = (b.alloc(pp.output_len()).unwrap(), b.alloc_int(pp.output_len()).unwrap(), b.alloc(len).unwrap());
    r.row(b, "maxpool_fwd", &act, Work::Bytes(F * (len + 2 * pp.output_len()) as f64), || b.maxpool_fwd(&pp, &y, &mut pout, &mut argmax).unwrap());
    r.row(b, "maxpool_bwd", &act, Work::Bytes(F * (len + 2 * pp.output_len()) as f64), || b.maxpool_bwd(&pp, &pout, &argmax, &mut pdx).unwrap());
    let mut pooled = b.alloc(n * c).unwrap();
    r.row(b, "avgpool_fwd", &act, Work::Bytes(F * len as f64), || b.avgpool_fwd(n * c, hw, &y, &mut pooled).unwrap());
    r.row(b, "avgpool_bwd", &act, Work::Bytes(F * 2.0 * len as f64), || b.avgpool_bwd(n * c, hw, &pooled, &y, &mut pdx).unwrap());
    // The head: 512 features, 1000 classes.
    let lp = LinearProblem { n, in_f: 512, out_f: 1000 };
    let head = format!("{n}x512->1000");
    let (feat, wfc, bfc, dlog) = (buf(b, n * 512, 12), buf(b, 512 * 1000, 13), buf(b, 1000, 14), buf(b, n * 1000, 15));
    let (mut logits, mut dfeat, mut dwfc, mut dbfc) =
        (b.alloc(n * 1000).unwrap(), b.alloc(n * 512).unwrap(), b.alloc(512 * 1000).unwrap(), b.alloc(1000).unwrap());
    let gemm = 2.0 * (n * 512 * 1000) as f64;
    r.row(b, "linear_fwd", &head, Work::Flops(gemm), || b.linear_fwd(&lp, &feat, &wfc, &bfc, &mut logits).unwrap());
    r.row(b, "linear_bwd_data", &head, Work::Flops(gemm), || b.linear_bwd_data(&lp, &dlog, &wfc, &mut dfeat).unwrap());
    r.row(b, "linear_wgrad", &head, Work::Flops(gemm), || b.linear_wgrad(&lp, &feat, &dlog, (&mut dwfc, &mut dbfc)).unwrap());
    let mut targets = b.alloc_int(n).unwrap();
    b.upload_int(&(0..n as i32).collect::<Vec<_>>(), &mut targets).unwrap();
    let mut dlogits = b.alloc(n * 1000).unwrap();
    r.row(b, "softmax_ce", &format!("{n}x1000"), Work::Bytes(F * 2.0 * (n * 1000) as f64), || {
        let t = SoftmaxCeIo { n, classes: 1000, logits: &dlog, targets: &targets, dlogits: &mut dlogits, losses: &mut losses, slot: 0 };
        b.softmax_ce(t).unwrap();
    });
    // The image ops at the recover batch: crop + resize forward and its adjoint, the priors, Adam.
    let img = CropResizeProblem { n: n as i32, c: 3, h: (side * 4) as i32, w: (side * 4) as i32 };
    let ilen = img.len();
    let ishape = format!("{n}x3x{}x{}", side * 4, side * 4);
    let params: Vec<CropParams> = (0..n)
        .map(|_| CropParams { top: 3, left: 5, crop_h: (side * 3) as i32, crop_w: (side * 3) as i32, flip: 1, shift_y: 2, shift_x: 1, _pad: 0 })
        .collect();
    let mut pb = b.alloc_int(8 * n).unwrap();
    b.upload_int(&CropParams::flatten(&params), &mut pb).unwrap();
    let (x, g) = (buf(b, ilen, 16), buf(b, ilen, 17));
    let (mut xa, mut gx) = (b.alloc(ilen).unwrap(), b.alloc(ilen).unwrap());
    r.row(b, "crop_resize_fwd", &ishape, Work::Bytes(F * 2.0 * ilen as f64), || b.crop_resize_fwd(&img, &pb, &x, &mut xa).unwrap());
    r.row(b, "crop_resize_bwd", &ishape, Work::Bytes(F * 2.0 * ilen as f64), || b.crop_resize_bwd(&img, &pb, &g, &mut gx).unwrap());
    if b.check_image_prior_support().is_ok() {
        let ip = ImagePrior { n, c: 3, h: side * 4, w: side * 4, tv_l2: 1e-4, l2_scale: 1e-5 };
        r.row(b, "image_prior", &ishape, Work::Bytes(F * 3.0 * ilen as f64), || {
            b.image_prior(&ip, &x, &mut gx).unwrap();
        });
    }
    let scalars = buf(b, cda_engine::ops::adam::AdamScalars::LEN, 18);
    let (lo, hi) = (buf(b, 3, 19), pos(b, 3));
    let (mut xm, mut m, mut v) = (buf(b, ilen, 20), b.alloc(ilen).unwrap(), b.alloc(ilen).unwrap());
    r.row(b, "adam_clip", &ishape, Work::Bytes(F * 7.0 * ilen as f64), || {
        let t = AdamClipIo { n, c: 3, hw: ilen / (3 * n), scalars: &scalars, x: &mut xm, g: &g, m: &mut m, v: &mut v, lo: &lo, hi: &hi };
        b.adam_clip(t).unwrap();
    });
    // The optimizer steps on ResNet-18's largest tensor (512 x 512 x 3 x 3).
    let plen = 512 * 512 * 9;
    let (grad, mut param, mut mom, mut m2, mut v2) =
        (buf(b, plen, 21), buf(b, plen, 22), b.alloc(plen).unwrap(), b.alloc(plen).unwrap(), b.alloc(plen).unwrap());
    let sgd = SgdConfig { lr: 0.1, momentum: 0.9, weight_decay: 5e-4, nesterov: true };
    r.row(b, "sgd_step", &format!("{plen}"), Work::Bytes(F * 5.0 * plen as f64), || b.sgd_step(&sgd, &mut param, &grad, Some(&mut mom), false).unwrap());
    let adamw = AdamWConfig::new(1e-3, 0.01);
    let mut step = 0u32;
    r.row(b, "adamw_step", &format!("{plen}"), Work::Bytes(F * 7.0 * plen as f64), || {
        step += 1;
        b.adamw_step(&adamw, step, &mut param, &grad, (&mut m2, &mut v2)).unwrap();
    });
}

/// Whole recover iterations on the GPU: eager, a replayed graph, and two half batches on two streams.
fn iterations(r: &Report, g: &GpuBackend, n: usize, res: usize) {
    for arch in ["resnet18", "resnet50"] {
        let shape = format!("{arch} {res}x{res} batch {n}");
        if !r.wants("iteration", &shape) {
            continue;
        }
        let model = random_resnet(arch, Stem::ImageNet, 3, 1000, 64, 1).unwrap();
        for v in [ConvVersion::Fp32, ConvVersion::Tf32] {
            g.set_conv_version(v);
            let spec = |batch: usize, graphs: bool| BenchSpec { res, batch, iters: 10, warmup: 3, graphs };
            let eager = cda_engine::bench::bench(g, &model, &spec(n, false), 0).unwrap();
            let graph = cda_engine::bench::bench(g, &model, &spec(n, true), 0).unwrap();
            let forks = [g.fork().unwrap(), g.fork().unwrap()];
            let two_streams = std::thread::scope(|s| {
                let hs: Vec<_> = forks.iter().map(|b| s.spawn(|| cda_engine::bench::bench(b, &model, &spec(n / 2, true), 0).unwrap().ms_per_iter)).collect();
                hs.into_iter().map(|h| h.join().unwrap()).fold(0f64, f64::max)
            });
            println!(
                "{:<16} {:<44} eager {:.1} ms, graph {:.1} ms, two streams {:.1} ms ({v:?})",
                "iteration", shape, eager.ms_per_iter, graph.ms_per_iter, two_streams
            );
            println!(
                "TIMING {}",
                serde_json::json!({"kind": "iteration", "device": r.device, "arch": arch, "res": res, "batch": n, "version": format!("{v:?}"),
                    "eager_ms": eager.ms_per_iter, "graph_ms": graph.ms_per_iter, "two_streams_ms": two_streams, "eager_gflops": eager.gflops})
            );
        }
    }
}

fn main() {
    // cargo passes --bench; everything else that is not a flag is a filter word.
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let cpu = CpuBackend::new(0).unwrap();
    let r = Report { device: cpu.describe(), filter: filter.clone() };
    println!("# {}", r.device);
    convs(&r, &cpu, 16, 32, "");
    others(&r, &cpu, 16, 16);
    match cda_engine::device::gpu_usable().and_then(|()| GpuBackend::new(0).map_err(|e| e.to_string())) {
        Err(why) => println!("# no GPU timings: {why}"),
        Ok(g) => {
            let r = Report { device: g.describe(), filter };
            println!("# {}", r.device);
            for v in [ConvVersion::Fp32, ConvVersion::Tf32] {
                g.set_conv_version(v);
                convs(&r, &g, 100, 224, &format!(" {v:?}"));
            }
            others(&r, &g, 100, 56);
            iterations(&r, &g, 100, 224);
        }
    }
}
