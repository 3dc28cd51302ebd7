//! Per-layer convolution timing on the CPU backend: fprop and dgrad (with their recover epilogues) of
//! the real ResNet layer shapes of the four "CPU speed" cases, in GFLOP/s of direct-convolution FLOPs
//! (2 * N * K * P * Q * C * R * S per pass, whatever the algorithm), next to the measured FMA and
//! microkernel ceilings. Correctness is checked elsewhere (tests/cpu_conv.rs); this only times.
//!
//!     cargo bench --bench conv_layers [-- THREADS [CASE | LAYER SUBSTRING]]
//!
//! Each row: median of 3 timed calls after one warm-up call (which also fills the weight cache).
//! The `v1` columns time the engine's first algorithm on the same shapes, im2col/col2im + the `gemm`
//! crate without epilogues (`ops::conv::cpu::im2col::{fprop_im2col, dgrad_im2col}`), as the baseline.

use std::time::Instant;

use cda_engine::backend::cpu::CpuBackend;
use cda_engine::backend::Backend;
use cda_engine::bench::process_cpu_secs;
use cda_engine::ops::conv::cpu::im2col as conv_v1;
use cda_engine::ops::conv::{cpu::algorithm, BnAffine, ConvProblem, DgradEpilogue, FpropEpilogue};

struct Layer {
    case: &'static str,
    n: usize,
    c: usize,
    k: usize,
    h: usize,
    r: usize,
    stride: usize,
}

const LAYERS: &[Layer] = &[
    // (i) ResNet-18, CIFAR stem, 32x32, batch 100
    Layer { case: "i", n: 100, c: 3, k: 64, h: 32, r: 3, stride: 1 },
    Layer { case: "i", n: 100, c: 64, k: 64, h: 32, r: 3, stride: 1 },
    Layer { case: "i", n: 100, c: 64, k: 128, h: 32, r: 3, stride: 2 },
    Layer { case: "i", n: 100, c: 64, k: 128, h: 32, r: 1, stride: 2 },
    Layer { case: "i", n: 100, c: 128, k: 128, h: 16, r: 3, stride: 1 },
    Layer { case: "i", n: 100, c: 128, k: 256, h: 16, r: 3, stride: 2 },
    Layer { case: "i", n: 100, c: 256, k: 256, h: 8, r: 3, stride: 1 },
    Layer { case: "i", n: 100, c: 256, k: 512, h: 8, r: 3, stride: 2 },
    Layer { case: "i", n: 100, c: 512, k: 512, h: 4, r: 3, stride: 1 },
    // (ii) Fashion-MNIST teacher, widths 16..128, 28x28, batch 100
    Layer { case: "ii", n: 100, c: 1, k: 16, h: 28, r: 3, stride: 1 },
    Layer { case: "ii", n: 100, c: 16, k: 16, h: 28, r: 3, stride: 1 },
    Layer { case: "ii", n: 100, c: 16, k: 32, h: 28, r: 3, stride: 2 },
    Layer { case: "ii", n: 100, c: 32, k: 32, h: 14, r: 3, stride: 1 },
    Layer { case: "ii", n: 100, c: 64, k: 64, h: 7, r: 3, stride: 1 },
    Layer { case: "ii", n: 100, c: 128, k: 128, h: 4, r: 3, stride: 1 },
    // (iii) ResNet-18, ImageNet stem, 224x224, batch 8
    Layer { case: "iii", n: 8, c: 3, k: 64, h: 224, r: 7, stride: 2 },
    Layer { case: "iii", n: 8, c: 64, k: 64, h: 56, r: 3, stride: 1 },
    Layer { case: "iii", n: 8, c: 64, k: 128, h: 56, r: 3, stride: 2 },
    Layer { case: "iii", n: 8, c: 128, k: 128, h: 28, r: 3, stride: 1 },
    Layer { case: "iii", n: 8, c: 256, k: 256, h: 14, r: 3, stride: 1 },
    Layer { case: "iii", n: 8, c: 512, k: 512, h: 7, r: 3, stride: 1 },
    // (iv) ResNet-50, 224x224, batch 4 (the bottleneck shapes of each stage)
    Layer { case: "iv", n: 4, c: 3, k: 64, h: 224, r: 7, stride: 2 },
    Layer { case: "iv", n: 4, c: 256, k: 64, h: 56, r: 1, stride: 1 },
    Layer { case: "iv", n: 4, c: 64, k: 64, h: 56, r: 3, stride: 1 },
    Layer { case: "iv", n: 4, c: 64, k: 256, h: 56, r: 1, stride: 1 },
    Layer { case: "iv", n: 4, c: 128, k: 128, h: 56, r: 3, stride: 2 },
    Layer { case: "iv", n: 4, c: 512, k: 128, h: 28, r: 1, stride: 1 },
    Layer { case: "iv", n: 4, c: 1024, k: 256, h: 14, r: 1, stride: 1 },
    Layer { case: "iv", n: 4, c: 256, k: 256, h: 14, r: 3, stride: 1 },
    Layer { case: "iv", n: 4, c: 2048, k: 512, h: 7, r: 1, stride: 1 },
    Layer { case: "iv", n: 4, c: 512, k: 2048, h: 7, r: 1, stride: 1 },
    Layer { case: "iv", n: 4, c: 512, k: 512, h: 7, r: 3, stride: 1 },
];

/// Median of 3 timed calls after a warm-up: (wall seconds, process CPU seconds).
fn median3(mut f: impl FnMut()) -> (f64, f64) {
    f();
    let mut t: Vec<(f64, f64)> = (0..3)
        .map(|_| {
            let c0 = process_cpu_secs().unwrap_or(0.0);
            let t0 = Instant::now();
            f();
            (t0.elapsed().as_secs_f64(), process_cpu_secs().unwrap_or(0.0) - c0)
        })
        .collect();
    let mut wall: Vec<f64> = t.iter().map(|v| v.0).collect();
    wall.sort_by(|a, b| a.partial_cmp(b).unwrap());
    t.sort_by(|a, b| a.1.partial_cmp(&b.1).unwrap());
    (wall[1], t[1].1)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let threads = args.first().and_then(|a| a.parse().ok()).unwrap_or(2);
    let filter = args.get(1).cloned().unwrap_or_default();
    let be = CpuBackend::new(threads).unwrap();
    let ceil = cda_engine::bench::ceiling(&be, 0.5);
    println!(
        "{} | microkernel {} {}: {:.1} GFLOP/s ({:.1} on one thread), FMA peak {:.1} ({:.1})",
        be.describe(),
        ceil.isa,
        ceil.kernel,
        ceil.kernel_gflops,
        ceil.kernel_gflops_1t,
        ceil.fma_gflops,
        ceil.fma_gflops_1t
    );
    println!("wall ms (median of 3), GFLOP/s from wall time; cpu ms = CPU time of all threads (robust to other load)");
    println!(
        "{:<4} {:<28} {:<14} {:>9} {:>8} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8}",
        "case", "layer", "algorithm", "fprop ms", "cpu ms", "GFLOP/s", "dgrad ms", "cpu ms", "GFLOP/s", "v1 fp ms", "v1 dg ms"
    );
    for l in LAYERS.iter() {
        let name = format!("{}x{}/{} {}->{} N{} {}x{}", l.r, l.r, l.stride, l.c, l.k, l.n, l.h, l.h);
        if !(filter.is_empty() || l.case == filter || name.contains(&filter)) {
            continue;
        }
        let pad = l.r / 2;
        let geom = cda_engine::model::ConvGeom { c: l.c, k: l.k, r: l.r, s: l.r, stride: l.stride, pad };
        let p = ConvProblem::new(l.n, l.h, l.h, &geom);
        let mut rnd = 1u32;
        let mut next = move || {
            rnd = rnd.wrapping_mul(1664525).wrapping_add(1013904223);
            (rnd >> 9) as f32 / (1u32 << 23) as f32 - 0.5
        };
        let mut up = |len: usize| {
            let data: Vec<f32> = (0..len).map(|_| next()).collect();
            let mut b = be.alloc(len).unwrap();
            be.upload(&data, &mut b).unwrap();
            b
        };
        let (x, w, dy) = (up(p.input_len()), up(p.weight_len()), up(p.output_len()));
        let (mean, scale, beta) = (up(l.k), up(l.k), up(l.k));
        let (yp, sc, coef) = (up(p.input_len()), up(l.c), up(3 * l.c));
        let mut y = be.alloc(p.output_len()).unwrap();
        let mut out = be.alloc(p.output_len()).unwrap();
        let mut stats = be.alloc(2 * l.k).unwrap();
        let mut dx = be.alloc(p.input_len()).unwrap();
        let (tf, cf) = median3(|| {
            let epi = FpropEpilogue {
                bn: BnAffine { mean: &mean, scale: &scale, beta: &beta },
                residual: None,
                relu: true,
                y: Some(&mut y),
                stats: Some(&mut stats),
            };
            be.conv_fprop(&p, &x, &w, epi, &mut out).unwrap();
        });
        let (td, cd) = median3(|| {
            let epi = if l.c == 3 { DgradEpilogue::Store } else { DgradEpilogue::BnRelu { y_prev: &yp, scale: &sc, coef: &coef } };
            be.conv_dgrad(&p, &dy, &w, &x, epi, &mut dx).unwrap();
        });
        let (tf1, _) = median3(|| be.install(|| conv_v1::fprop_im2col(&p, &x, &w, &mut out)));
        let (td1, _) = median3(|| be.install(|| conv_v1::dgrad_im2col(&p, &dy, &w, &mut dx, false)));
        let gf = p.flops() / 1e9;
        let alg = format!("{}|{}", short(algorithm(&p, false, Default::default())), short(algorithm(&p, true, Default::default())));
        println!(
            "{:<4} {:<28} {:<14} {:>9.2} {:>8.2} {:>8.1} {:>9.2} {:>8.2} {:>8.1} {:>8.2} {:>8.2}",
            l.case,
            name,
            alg,
            1e3 * tf,
            1e3 * cf,
            gf / tf,
            1e3 * td,
            1e3 * cd,
            gf / td,
            1e3 * tf1,
            1e3 * td1
        );
    }
}

fn short(a: &str) -> &str {
    match a {
        "winograd-f4x4" => "wino",
        "implicit-gemm" => "igemm",
        "gemm-col2im" => "col2im",
        other => other,
    }
}
