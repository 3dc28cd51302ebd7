//! The CPU convolutions (Winograd F(4x4,3x3), implicit GEMM with dgrad phases, GEMM + col2im) against
//! a float64 direct convolution, with every epilogue, on shapes that exercise partial tiles, odd sizes,
//! strides, 1x1 and 7x7 kernels and few channels. Prints max abs / rel-to-scale error per tensor.
//!
//! Tolerances (relative to the tensor's largest magnitude):
//!
//! - direct summation (implicit GEMM, col2im): fp32 dot products of up to C*R*S ~ 600 terms, ~1e-6;
//! - Winograd F(4x4, 3x3): the transforms scale intermediate values by up to ~100 before the sum
//!   and back, a few 1e-6 (Lavin & Gray; measured up to 6e-6 here).
//!
//! 2e-5 (the emulated-CUDA tests' fp32 tolerance against this backend) covers both with margin and
//! fails any wrong tap, tile offset, transform coefficient or epilogue term by orders of magnitude.

mod common;

use cda_engine::ops::conv::cpu::{algorithm, dgrad, fprop};
use cda_engine::ops::conv::{BnAffine, ConvProblem, DgradEpilogue, FpropEpilogue};
use common::assert_close;

const TOL: f64 = 2e-5;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, len: usize, scale: f32) -> Vec<f32> {
        (0..len).map(|_| scale * self.next()).collect()
    }
}

#[allow(clippy::too_many_arguments)] // CUTLASS's letters, one each
fn problem(n: usize, c: usize, h: usize, w: usize, k: usize, r: usize, stride: usize, pad: usize) -> ConvProblem {
    let p = (h + 2 * pad - r) / stride + 1;
    let q = (w + 2 * pad - r) / stride + 1;
    ConvProblem {
        n: n as i32,
        c: c as i32,
        h: h as i32,
        w: w as i32,
        k: k as i32,
        r: r as i32,
        s: r as i32,
        p: p as i32,
        q: q as i32,
        stride: stride as i32,
        pad: pad as i32,
        _reserved: 0,
    }
}

/// y[n][k][p][q] in f64.
fn conv_ref(p: &ConvProblem, x: &[f32], w: &[f32]) -> Vec<f64> {
    let (n, c, h, wd, k, r, s) = (p.n as usize, p.c as usize, p.h as isize, p.w as isize, p.k as usize, p.r as usize, p.s as usize);
    let (pp, qq, st, pad) = (p.p as usize, p.q as usize, p.stride as isize, p.pad as isize);
    let mut y = vec![0f64; n * k * pp * qq];
    for i in 0..n {
        for o in 0..k {
            for a in 0..pp {
                for b in 0..qq {
                    let mut acc = 0f64;
                    for ci in 0..c {
                        for rr in 0..r {
                            for ss in 0..s {
                                let (ih, iw) = (a as isize * st - pad + rr as isize, b as isize * st - pad + ss as isize);
                                if ih >= 0 && iw >= 0 && ih < h && iw < wd {
                                    acc += x[((i * c + ci) * h as usize + ih as usize) * wd as usize + iw as usize] as f64
                                        * w[((o * c + ci) * r + rr) * s + ss] as f64;
                                }
                            }
                        }
                    }
                    y[((i * k + o) * pp + a) * qq + b] = acc;
                }
            }
        }
    }
    y
}

/// dx = W^T dy in f64 (the adjoint of conv_ref).
fn dgrad_ref(p: &ConvProblem, dy: &[f32], w: &[f32]) -> Vec<f64> {
    let (n, c, h, wd, k, r, s) = (p.n as usize, p.c as usize, p.h as isize, p.w as isize, p.k as usize, p.r as usize, p.s as usize);
    let (pp, qq, st, pad) = (p.p as usize, p.q as usize, p.stride as isize, p.pad as isize);
    let mut dx = vec![0f64; n * c * (h * wd) as usize];
    for i in 0..n {
        for o in 0..k {
            for a in 0..pp {
                for b in 0..qq {
                    let g = dy[((i * k + o) * pp + a) * qq + b] as f64;
                    for ci in 0..c {
                        for rr in 0..r {
                            for ss in 0..s {
                                let (ih, iw) = (a as isize * st - pad + rr as isize, b as isize * st - pad + ss as isize);
                                if ih >= 0 && iw >= 0 && ih < h && iw < wd {
                                    dx[((i * c + ci) * h as usize + ih as usize) * wd as usize + iw as usize] += g * w[((o * c + ci) * r + rr) * s + ss] as f64;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    dx
}

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

fn check(name: &str, p: ConvProblem, seed: u64) {
    let mut rng = Rng(seed);
    let (n, c, k) = (p.n as usize, p.c as usize, p.k as usize);
    let (il, ol) = (p.input_len(), p.output_len());
    let hw_in = (p.h * p.w) as usize;
    let hw_out = (p.p * p.q) as usize;
    let x = rng.vec(il, 1.0);
    let w = rng.vec(p.weight_len(), (3.0 / (c * (p.r * p.s) as usize) as f32).sqrt());
    let (mean, scale, beta) = (rng.vec(k, 0.3), rng.vec(k, 0.5).iter().map(|v| v + 1.0).collect::<Vec<_>>(), rng.vec(k, 0.2));
    let res = rng.vec(ol, 1.0);
    let tag = format!("{name} [{} | {}]", algorithm(&p, false, Default::default()), algorithm(&p, true, Default::default()));

    // fprop: y, out with residual + ReLU, statistics.
    let y_ref = conv_ref(&p, &x, &w);
    let mut out_ref = vec![0f64; ol];
    let mut st_ref = vec![0f64; 2 * k];
    for i in 0..n {
        for o in 0..k {
            for j in 0..hw_out {
                let at = (i * k + o) * hw_out + j;
                let v = y_ref[at];
                out_ref[at] = ((v - mean[o] as f64) * scale[o] as f64 + beta[o] as f64 + res[at] as f64).max(0.0);
                st_ref[o] += v;
                st_ref[k + o] += v * v;
            }
        }
    }
    let cnt = (n * hw_out) as f64;
    for o in 0..k {
        let m = st_ref[o] / cnt;
        st_ref[k + o] = st_ref[k + o] / cnt - m * m;
        st_ref[o] = m;
    }
    let (mut y, mut out, mut st) = (vec![0.0; ol], vec![0.0; ol], vec![0.0; 2 * k]);
    let epi = FpropEpilogue {
        bn: BnAffine { mean: &mean[..], scale: &scale[..], beta: &beta[..] },
        residual: Some(&res[..]),
        relu: true,
        y: Some(&mut y[..]),
        stats: Some(&mut st[..]),
    };
    fprop(&p, &x, &w, epi, &mut out);
    assert_close(&format!("{tag} fprop y"), &y, &f32s(&y_ref), TOL);
    assert_close(&format!("{tag} fprop out"), &out, &f32s(&out_ref), TOL);
    assert_close(&format!("{tag} fprop mean"), &st[..k], &f32s(&st_ref[..k]), TOL);
    assert_close(&format!("{tag} fprop var"), &st[k..], &f32s(&st_ref[k..]), TOL);
    // Without y and statistics, no residual, no ReLU.
    let mut out2 = vec![0.0; ol];
    let epi = FpropEpilogue { bn: BnAffine { mean: &mean[..], scale: &scale[..], beta: &beta[..] }, residual: None, relu: false, y: None, stats: None };
    fprop(&p, &x, &w, epi, &mut out2);
    let out2_ref: Vec<f64> =
        (0..ol).map(|at| (y_ref[at] - mean[(at / hw_out) % k] as f64) * scale[(at / hw_out) % k] as f64 + beta[(at / hw_out) % k] as f64).collect();
    assert_close(&format!("{tag} fprop out (no y)"), &out2, &f32s(&out2_ref), TOL);

    // dgrad with each epilogue.
    let dy = rng.vec(ol, 1.0);
    let dx_ref = dgrad_ref(&p, &dy, &w);
    let add = rng.vec(il, 1.0);
    let old = rng.vec(il, 1.0);
    let y_prev = rng.vec(il, 1.0);
    let sc = rng.vec(c, 0.5).iter().map(|v| v + 1.0).collect::<Vec<_>>();
    let coef = rng.vec(3 * c, 0.1);
    let mut dx = vec![7.0; il];
    dgrad(&p, &dy, &w, &x, DgradEpilogue::Store, &mut dx);
    assert_close(&format!("{tag} dgrad store"), &dx, &f32s(&dx_ref), TOL);
    let mut dx = old.clone();
    dgrad(&p, &dy, &w, &x, DgradEpilogue::MaskInput { add: Some(&add[..]), accumulate: true }, &mut dx);
    let want: Vec<f64> = (0..il).map(|i| if x[i] > 0.0 { dx_ref[i] + add[i] as f64 + old[i] as f64 } else { 0.0 }).collect();
    assert_close(&format!("{tag} dgrad mask+add+acc"), &dx, &f32s(&want), TOL);
    let mut dx = old.clone();
    dgrad(&p, &dy, &w, &x, DgradEpilogue::MaskInput { add: None, accumulate: false }, &mut dx);
    let want: Vec<f64> = (0..il).map(|i| if x[i] > 0.0 { dx_ref[i] } else { 0.0 }).collect();
    assert_close(&format!("{tag} dgrad mask"), &dx, &f32s(&want), TOL);
    let mut dx = vec![0.0; il];
    dgrad(&p, &dy, &w, &x, DgradEpilogue::BnRelu { y_prev: &y_prev[..], scale: &sc[..], coef: &coef[..] }, &mut dx);
    let want: Vec<f64> = (0..il)
        .map(|i| {
            let ch = (i / hw_in) % c;
            let main = if x[i] > 0.0 { sc[ch] as f64 * dx_ref[i] } else { 0.0 };
            main + coef[ch] as f64 + coef[c + ch] as f64 * (y_prev[i] as f64 - coef[2 * c + ch] as f64)
        })
        .collect();
    assert_close(&format!("{tag} dgrad bn+relu"), &dx, &f32s(&want), TOL);
}

/// Runs `f` on a pool of 2 threads (the chunking decisions depend on the thread count).
fn two_threads(f: impl FnOnce() + Send) {
    rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap().install(f)
}

#[test]
fn winograd_shapes() {
    two_threads(winograd_cases);
}

fn winograd_cases() {
    // Partial tiles (7, 9, 13 are not multiples of 4), one tile per image, many tiles, K and C not
    // multiples of the register tile, and more than 256 input channels (split reduction).
    check("3x3/1 C8 K8 N3 7x7", problem(3, 8, 7, 7, 8, 3, 1, 1), 1);
    check("3x3/1 C16 K13 N2 9x13", problem(2, 16, 9, 13, 13, 3, 1, 1), 2);
    check("3x3/1 C24 K40 N5 4x4", problem(5, 24, 4, 4, 40, 3, 1, 1), 3);
    check("3x3/1 C32 K32 N2 32x32", problem(2, 32, 32, 32, 32, 3, 1, 1), 4);
    check("3x3/1 C300 K20 N1 6x5", problem(1, 300, 6, 5, 20, 3, 1, 1), 5);
    check("3x3/1 C64 K64 N9 8x8", problem(9, 64, 8, 8, 64, 3, 1, 1), 6);
    // Enough tile rows for whole chunks per thread.
    check("3x3/1 C8 K8 N40 28x28", problem(40, 8, 28, 28, 8, 3, 1, 1), 7);
}

#[test]
fn implicit_gemm_and_col2im_shapes() {
    two_threads(implicit_cases);
}

fn implicit_cases() {
    check("3x3/1 C3 K16 N2 11x9 (stem)", problem(2, 3, 11, 9, 16, 3, 1, 1), 11);
    check("3x3/1 C1 K16 N3 28x28 (1-channel stem)", problem(3, 1, 28, 28, 16, 3, 1, 1), 12);
    check("7x7/2 C3 K10 N2 17x17 (ImageNet stem)", problem(2, 3, 17, 17, 10, 7, 2, 3), 13);
    check("7x7/2 C3 K8 N1 32x30", problem(1, 3, 32, 30, 8, 7, 2, 3), 14);
    check("3x3/2 C16 K24 N3 11x13", problem(3, 16, 11, 13, 24, 3, 2, 1), 15);
    check("3x3/2 C20 K40 N2 16x16", problem(2, 20, 16, 16, 40, 3, 2, 1), 16);
    // K < C: dgrad by output phases rather than col2im.
    check("3x3/2 C24 K16 N2 9x11", problem(2, 24, 9, 11, 16, 3, 2, 1), 22);
    check("5x5/3 C20 K12 N2 13x14", problem(2, 20, 13, 14, 12, 5, 3, 2), 23);
    check("1x1/2 C24 K40 N2 7x7", problem(2, 24, 7, 7, 40, 1, 2, 0), 17);
    check("1x1/2 C16 K32 N3 8x8", problem(3, 16, 8, 8, 32, 1, 2, 0), 18);
    check("1x1/1 C40 K17 N3 5x7", problem(3, 40, 5, 7, 17, 1, 1, 0), 19);
    check("1x1/1 C300 K24 N2 4x4", problem(2, 300, 4, 4, 24, 1, 1, 0), 20);
    check("3x3/1 C5 K7 N1 9x9", problem(1, 5, 9, 9, 7, 3, 1, 1), 21);
    // Planes of >= 128 positions: the pointwise path (the `gemm` crate per image, then the epilogue),
    // with images over threads (N3) and one image with the GEMM split over threads (N1).
    check("1x1/1 C40 K17 N3 12x11 (pointwise)", problem(3, 40, 12, 11, 17, 1, 1, 0), 24);
    check("1x1/1 C300 K24 N1 16x16 (pointwise)", problem(1, 300, 16, 16, 24, 1, 1, 0), 25);
    // Strided 1x1: gathered input, one image per GEMM (12x12 = 144 positions) and odd sizes.
    check("1x1/2 C8 K12 N3 24x23 (pointwise)", problem(3, 8, 24, 23, 12, 1, 2, 0), 26);
}
