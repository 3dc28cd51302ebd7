//! CPU BatchNorm for training: one channel per task (its elements are strided over the images).

use rayon::prelude::*;

use super::BnProblem;
use crate::cpu::par::SyncPtr;

/// The per-channel parameters of the affine y * alpha + shift.
#[inline]
fn affine(gamma: f32, beta: f32, mean: f32, invstd: f32) -> (f32, f32) {
    let alpha = invstd * gamma;
    (alpha, beta - mean * alpha)
}

#[allow(clippy::too_many_arguments)]
fn apply(p: &BnProblem, y: &[f32], alpha: &[f32], shift: &[f32], residual: Option<&[f32]>, relu: bool, out: &mut [f32]) {
    let hw = p.hw;
    out.par_chunks_mut(hw).zip(y.par_chunks(hw)).enumerate().for_each(|(plane, (o, yv))| {
        let ch = plane % p.c;
        let (a, s) = (alpha[ch], shift[ch]);
        match residual {
            Some(r) => {
                let rv = &r[plane * hw..(plane + 1) * hw];
                for ((o, &y), &r) in o.iter_mut().zip(yv).zip(rv) {
                    let z = y * a + s + r;
                    *o = if relu { z.max(0.0) } else { z };
                }
            }
            None => {
                for (o, &y) in o.iter_mut().zip(yv) {
                    let z = y * a + s;
                    *o = if relu { z.max(0.0) } else { z };
                }
            }
        }
    });
}

/// Sum of a plane in 8 f32 lanes (vectorisable), returned in f64. A plane holds at most a few
/// thousand values, where lane-wise f32 sums keep ~1e-7 relative error; planes are combined in f64.
#[inline]
fn plane_sum(v: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut lanes = [0f32; 8];
    let chunks = v.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l += f(x);
        }
    }
    lanes.iter().map(|&l| l as f64).sum::<f64>() + rest.iter().map(|&x| f(x) as f64).sum::<f64>()
}

/// Per-channel mean and biased variance of y (two passes: the mean, then the squared deviations).
pub fn batch_stats(p: &BnProblem, y: &[f32]) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(y.len(), p.len(), "batchnorm input");
    let m = p.count() as f64;
    let per: Vec<(f64, f64)> = (0..p.c)
        .into_par_iter()
        .map(|ch| {
            let planes = (0..p.n).map(|i| &y[(i * p.c + ch) * p.hw..(i * p.c + ch + 1) * p.hw]);
            let sum: f64 = planes.clone().map(|pl| plane_sum(pl, |v| v)).sum();
            let mean = sum / m;
            let mf = mean as f32;
            let ss: f64 = planes.map(|pl| plane_sum(pl, |v| (v - mf) * (v - mf))).sum();
            (mean, ss / m)
        })
        .collect();
    per.into_iter().unzip()
}

/// Train-mode forward: batch statistics, running-stat update, `out = act(bn(y) [+ residual])`.
/// Saves the batch mean and invstd per channel for the backward.
#[allow(clippy::too_many_arguments)]
pub fn fwd_train(
    p: &BnProblem,
    y: &[f32],
    gamma: &[f32],
    beta: &[f32],
    momentum: f64,
    eps: f64,
    running_mean: &mut [f32],
    running_var: &mut [f32],
    residual: Option<&[f32]>,
    relu: bool,
    out: &mut [f32],
    save_mean: &mut [f32],
    save_invstd: &mut [f32],
) {
    assert!(out.len() == p.len() && gamma.len() == p.c && beta.len() == p.c && running_mean.len() == p.c && running_var.len() == p.c);
    assert!(residual.is_none_or(|r| r.len() == p.len()) && save_mean.len() == p.c && save_invstd.len() == p.c);
    let (mean, var) = batch_stats(p, y);
    let m = p.count() as f64;
    let mut alpha = vec![0f32; p.c];
    let mut shift = vec![0f32; p.c];
    for ch in 0..p.c {
        let invstd = 1.0 / (var[ch] + eps).sqrt();
        save_mean[ch] = mean[ch] as f32;
        save_invstd[ch] = invstd as f32;
        (alpha[ch], shift[ch]) = affine(gamma[ch], beta[ch], mean[ch] as f32, invstd as f32);
        let unbiased = if m > 1.0 { var[ch] * m / (m - 1.0) } else { var[ch] };
        running_mean[ch] = (momentum * mean[ch] + (1.0 - momentum) * running_mean[ch] as f64) as f32;
        running_var[ch] = (momentum * unbiased + (1.0 - momentum) * running_var[ch] as f64) as f32;
    }
    apply(p, y, &alpha, &shift, residual, relu, out);
}

/// Eval-mode forward with the running statistics.
#[allow(clippy::too_many_arguments)]
pub fn fwd_eval(
    p: &BnProblem,
    y: &[f32],
    gamma: &[f32],
    beta: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
    eps: f64,
    residual: Option<&[f32]>,
    relu: bool,
    out: &mut [f32],
) {
    assert!(y.len() == p.len() && out.len() == p.len() && gamma.len() == p.c && beta.len() == p.c);
    let mut alpha = vec![0f32; p.c];
    let mut shift = vec![0f32; p.c];
    for ch in 0..p.c {
        let invstd = (1.0 / (running_var[ch] as f64 + eps).sqrt()) as f32;
        (alpha[ch], shift[ch]) = affine(gamma[ch], beta[ch], running_mean[ch], invstd);
    }
    apply(p, y, &alpha, &shift, residual, relu, out);
}

/// Train-mode backward. `dout`: gradient of the fused output; `out`: the fused output (its sign is the
/// ReLU mask, ignored when `relu` is false). Writes dy, dgamma, dbeta (overwritten) and, when given,
/// dresidual (overwritten with the masked gradient).
#[allow(clippy::too_many_arguments)]
pub fn bwd_train(
    p: &BnProblem,
    dout: &[f32],
    out: &[f32],
    relu: bool,
    y: &[f32],
    gamma: &[f32],
    save_mean: &[f32],
    save_invstd: &[f32],
    dy: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
    dresidual: Option<&mut [f32]>,
) {
    assert!(dout.len() == p.len() && out.len() == p.len() && y.len() == p.len() && dy.len() == p.len());
    assert!(gamma.len() == p.c && dgamma.len() == p.c && dbeta.len() == p.c && save_mean.len() == p.c && save_invstd.len() == p.c);
    let hw = p.hw;
    let m = p.count() as f64;
    let dy_ptr = SyncPtr(dy.as_mut_ptr());
    let dres_ptr = dresidual.map(|r| {
        assert_eq!(r.len(), p.len());
        SyncPtr(r.as_mut_ptr())
    });
    let grads: Vec<(f32, f32)> = (0..p.c)
        .into_par_iter()
        .map(|ch| {
            let mean = save_mean[ch];
            let invstd = save_invstd[ch] as f64;
            let (mut sum, mut dotp) = (0f64, 0f64);
            for i in 0..p.n {
                let r = (i * p.c + ch) * hw..(i * p.c + ch + 1) * hw;
                let (g, o, yv) = (&dout[r.clone()], &out[r.clone()], &y[r]);
                // Masked gradient sums in 8 f32 lanes per plane (see `plane_sum`), planes in f64.
                let (mut ls, mut ld) = ([0f32; 8], [0f32; 8]);
                let mut j = 0;
                while j + 8 <= hw {
                    for l in 0..8 {
                        let gm = if relu && o[j + l] <= 0.0 { 0.0 } else { g[j + l] };
                        ls[l] += gm;
                        ld[l] += (yv[j + l] - mean) * gm;
                    }
                    j += 8;
                }
                for k in j..hw {
                    let gm = if relu && o[k] <= 0.0 { 0.0 } else { g[k] };
                    ls[0] += gm;
                    ld[0] += (yv[k] - mean) * gm;
                }
                sum += ls.iter().map(|&v| v as f64).sum::<f64>();
                dotp += ld.iter().map(|&v| v as f64).sum::<f64>();
            }
            let k = (dotp * invstd * invstd / m) as f32;
            let grad_mean = (sum / m) as f32;
            let w = (invstd * gamma[ch] as f64) as f32;
            for i in 0..p.n {
                let off = (i * p.c + ch) * hw;
                // SAFETY: plane (i, ch) belongs to this task only.
                let d = unsafe { dy_ptr.slice(off, hw) };
                let (g, o, yv) = (&dout[off..off + hw], &out[off..off + hw], &y[off..off + hw]);
                match dres_ptr.as_ref() {
                    Some(rp) => {
                        // SAFETY: as above.
                        let dr = unsafe { rp.slice(off, hw) };
                        for j in 0..hw {
                            let gm = if relu && o[j] <= 0.0 { 0.0 } else { g[j] };
                            dr[j] = gm;
                            d[j] = (gm - grad_mean - (yv[j] - mean) * k) * w;
                        }
                    }
                    None => {
                        for j in 0..hw {
                            let gm = if relu && o[j] <= 0.0 { 0.0 } else { g[j] };
                            d[j] = (gm - grad_mean - (yv[j] - mean) * k) * w;
                        }
                    }
                }
            }
            ((dotp * invstd) as f32, sum as f32)
        })
        .collect();
    for (ch, (dg, db)) in grads.into_iter().enumerate() {
        dgamma[ch] = dg;
        dbeta[ch] = db;
    }
}
