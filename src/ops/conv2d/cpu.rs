//! CPU conv2d: im2col + a cache-blocked SIMD GEMM (the `gemm` crate) per image, images spread over the
//! threads of the current rayon pool, epilogues applied while an image's output is still in cache.
//! Scratch (im2col columns, per-thread statistics) is thread-local and only grows, so steady-state
//! calls do not allocate.

use std::cell::RefCell;

use rayon::prelude::*;

use super::{ConvProblem, DgradEpilogue, FpropEpilogue};
use crate::ops::gemm::sgemm;
use crate::ops::par::{image_groups, SyncPtr};

thread_local! {
    static COLUMNS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

fn with_columns<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    COLUMNS.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() < len {
            c.resize(len, 0.0);
        }
        f(&mut c[..len])
    })
}

/// col[(c*R + r)*S + s][p*Q + q] = x[c][p*stride - pad + r][q*stride - pad + s] (0 outside).
pub fn im2col(p: &ConvProblem, x: &[f32], col: &mut [f32]) {
    let (c_n, h, w, r_n, s_n, pp, qq) = (p.c as usize, p.h as isize, p.w as isize, p.r as usize, p.s as usize, p.p as usize, p.q as usize);
    let (stride, pad) = (p.stride as isize, p.pad as isize);
    let pq = pp * qq;
    for c in 0..c_n {
        let plane = &x[c * (h * w) as usize..(c + 1) * (h * w) as usize];
        for r in 0..r_n {
            for s in 0..s_n {
                let row = &mut col[((c * r_n + r) * s_n + s) * pq..][..pq];
                for op in 0..pp {
                    let ih = op as isize * stride - pad + r as isize;
                    let dst = &mut row[op * qq..(op + 1) * qq];
                    if ih < 0 || ih >= h {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = &plane[(ih * w) as usize..((ih + 1) * w) as usize];
                    let iw0 = s as isize - pad;
                    if stride == 1 && iw0 >= 0 && iw0 + qq as isize <= w {
                        dst.copy_from_slice(&src[iw0 as usize..iw0 as usize + qq]);
                    } else {
                        for (oq, d) in dst.iter_mut().enumerate() {
                            let iw = oq as isize * stride + iw0;
                            *d = if iw >= 0 && iw < w { src[iw as usize] } else { 0.0 };
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: x[c][ih][iw] += col[...] (x must be zeroed by the caller).
pub fn col2im(p: &ConvProblem, col: &[f32], x: &mut [f32]) {
    let (c_n, h, w, r_n, s_n, pp, qq) = (p.c as usize, p.h as isize, p.w as isize, p.r as usize, p.s as usize, p.p as usize, p.q as usize);
    let (stride, pad) = (p.stride as isize, p.pad as isize);
    let pq = pp * qq;
    for c in 0..c_n {
        let plane = &mut x[c * (h * w) as usize..(c + 1) * (h * w) as usize];
        for r in 0..r_n {
            for s in 0..s_n {
                let row = &col[((c * r_n + r) * s_n + s) * pq..][..pq];
                for op in 0..pp {
                    let ih = op as isize * stride - pad + r as isize;
                    if ih < 0 || ih >= h {
                        continue;
                    }
                    let dst = &mut plane[(ih * w) as usize..((ih + 1) * w) as usize];
                    let src = &row[op * qq..(op + 1) * qq];
                    let iw0 = s as isize - pad;
                    if stride == 1 && iw0 >= 0 && iw0 + qq as isize <= w {
                        for (d, v) in dst[iw0 as usize..iw0 as usize + qq].iter_mut().zip(src) {
                            *d += v;
                        }
                    } else {
                        for (oq, v) in src.iter().enumerate() {
                            let iw = oq as isize * stride + iw0;
                            if iw >= 0 && iw < w {
                                dst[iw as usize] += v;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// One channel's eval-mode BN + optional residual + optional ReLU.
struct BnRow {
    mean: f32,
    scale: f32,
    beta: f32,
    relu: bool,
}

impl BnRow {
    #[inline]
    fn z(&self, y: f32, res: f32) -> f32 {
        let z = (y - self.mean) * self.scale + self.beta + res;
        if self.relu { z.max(0.0) } else { z }
    }
    fn apply(&self, y: &[f32], res: Option<&[f32]>, out: &mut [f32]) {
        match res {
            Some(r) => out.iter_mut().zip(y).zip(r).for_each(|((o, &y), &r)| *o = self.z(y, r)),
            None => out.iter_mut().zip(y).for_each(|(o, &y)| *o = self.z(y, 0.0)),
        }
    }
    fn apply_in_place(&self, res: Option<&[f32]>, out: &mut [f32]) {
        match res {
            Some(r) => out.iter_mut().zip(r).for_each(|(o, &r)| *o = self.z(*o, r)),
            None => out.iter_mut().for_each(|o| *o = self.z(*o, 0.0)),
        }
    }
}

/// y = conv(x, w); out = act((y - mean) * scale + beta [+ residual]); optional y and statistics.
pub fn fprop(p: &ConvProblem, x: &[f32], w: &[f32], epi: FpropEpilogue<'_, [f32]>, out: &mut [f32]) {
    let (n, k) = (p.n as usize, p.k as usize);
    let (in_len, out_len) = (p.input_len() / n, p.output_len() / n);
    let pq = (p.p * p.q) as usize;
    let crs = (p.c * p.r * p.s) as usize;
    assert_eq!(x.len(), p.input_len(), "conv fprop input");
    assert_eq!(w.len(), p.weight_len(), "conv fprop weight");
    assert_eq!(out.len(), p.output_len(), "conv fprop output");
    let FpropEpilogue { bn, residual, relu, y, stats } = epi;
    let (mean, scale, beta) = (bn.mean, bn.scale, bn.beta);
    let out_ptr = SyncPtr(out.as_mut_ptr());
    let y_ptr = y.map(|y| {
        assert_eq!(y.len(), p.output_len());
        SyncPtr(y.as_mut_ptr())
    });
    let want_stats = stats.is_some();
    let (groups, gemm_threads) = image_groups(n);

    let partials: Vec<Vec<f64>> = groups
        .into_par_iter()
        .map(|range| {
            let mut acc = if want_stats { vec![0f64; 2 * k] } else { Vec::new() };
            for img in range {
                let xi = &x[img * in_len..(img + 1) * in_len];
                // SAFETY: image ranges are disjoint across tasks, so each task writes its own slices.
                let oi = unsafe { out_ptr.slice(img * out_len, out_len) };
                let mut yi = y_ptr.as_ref().map(|yp| unsafe { yp.slice(img * out_len, out_len) });
                {
                    let gemm_dst: &mut [f32] = match yi.as_deref_mut() {
                        Some(yv) => yv,
                        None => &mut *oi,
                    };
                    if p.is_pointwise() {
                        sgemm(k, pq, crs, gemm_dst, w, false, xi, gemm_threads);
                    } else {
                        with_columns(crs * pq, |col| {
                            im2col(p, xi, col);
                            sgemm(k, pq, crs, gemm_dst, w, false, col, gemm_threads);
                        });
                    }
                }
                let res = residual.map(|r| &r[img * out_len..(img + 1) * out_len]);
                for ch in 0..k {
                    let rows = ch * pq..(ch + 1) * pq;
                    if want_stats {
                        let raw: &[f32] = match yi.as_deref() {
                            Some(yv) => &yv[rows.clone()],
                            None => &oi[rows.clone()],
                        };
                        let (mut s1, mut s2) = (0f64, 0f64);
                        for &v in raw {
                            s1 += v as f64;
                            s2 += (v as f64) * (v as f64);
                        }
                        acc[ch] += s1;
                        acc[k + ch] += s2;
                    }
                    let affine = BnRow { mean: mean[ch], scale: scale[ch], beta: beta[ch], relu };
                    let res_row = res.map(|r| &r[rows.clone()]);
                    match yi.as_deref() {
                        Some(yv) => affine.apply(&yv[rows.clone()], res_row, &mut oi[rows]),
                        None => affine.apply_in_place(res_row, &mut oi[rows]),
                    }
                }
            }
            acc
        })
        .collect();
    if let Some(stats) = stats {
        assert_eq!(stats.len(), 2 * k);
        let mut total = vec![0f64; 2 * k];
        for part in &partials {
            for (t, v) in total.iter_mut().zip(part) {
                *t += v;
            }
        }
        let count = (n * pq) as f64;
        for ch in 0..k {
            let mean = total[ch] / count;
            stats[ch] = mean as f32;
            stats[k + ch] = (total[k + ch] / count - mean * mean).max(0.0) as f32;
        }
    }
}

/// dx_out = epilogue(W^T * dy) for every image.
pub fn dgrad(p: &ConvProblem, dy: &[f32], w: &[f32], x: &[f32], epi: DgradEpilogue<'_, [f32]>, dx_out: &mut [f32]) {
    let (n, k) = (p.n as usize, p.k as usize);
    let (in_len, out_len) = (p.input_len() / n, p.output_len() / n);
    let (c, hw) = (p.c as usize, (p.h * p.w) as usize);
    let pq = (p.p * p.q) as usize;
    let crs = (p.c * p.r * p.s) as usize;
    assert_eq!(dy.len(), p.output_len(), "conv dgrad dy");
    assert_eq!(x.len(), p.input_len(), "conv dgrad x");
    assert_eq!(dx_out.len(), p.input_len(), "conv dgrad dx");
    let dx_ptr = SyncPtr(dx_out.as_mut_ptr());
    let (groups, gemm_threads) = image_groups(n);
    groups.into_par_iter().for_each(|range| {
        for img in range {
            let dyi = &dy[img * out_len..(img + 1) * out_len];
            let xi = &x[img * in_len..(img + 1) * in_len];
            // SAFETY: disjoint image ranges per task.
            let dxi = unsafe { dx_ptr.slice(img * in_len, in_len) };
            let finish = |dx: &[f32], dxi: &mut [f32]| match &epi {
                DgradEpilogue::Store => dxi.copy_from_slice(dx),
                DgradEpilogue::MaskInput { add, accumulate } => {
                    let add = add.map(|a| &a[img * in_len..(img + 1) * in_len]);
                    for i in 0..in_len {
                        let mut g = dx[i];
                        if let Some(a) = add {
                            g += a[i];
                        }
                        if *accumulate {
                            g += dxi[i];
                        }
                        dxi[i] = if xi[i] > 0.0 { g } else { 0.0 };
                    }
                }
                DgradEpilogue::BnRelu { y_prev, scale, coef } => {
                    let yp = &y_prev[img * in_len..(img + 1) * in_len];
                    let (ca, cb, cm) = (&coef[..c], &coef[c..2 * c], &coef[2 * c..3 * c]);
                    for ch in 0..c {
                        let sc = scale[ch];
                        let r = ch * hw..(ch + 1) * hw;
                        for ((d, (&g, &xv)), &yv) in dxi[r.clone()].iter_mut().zip(dx[r.clone()].iter().zip(&xi[r.clone()])).zip(&yp[r]) {
                            let main = if xv > 0.0 { sc * g } else { 0.0 };
                            *d = main + ca[ch] + cb[ch] * (yv - cm[ch]);
                        }
                    }
                }
            };
            if p.is_pointwise() {
                with_columns(in_len, |dx| {
                    sgemm(crs, pq, k, dx, w, true, dyi, gemm_threads);
                    finish(dx, dxi);
                });
            } else {
                with_columns(crs * pq + in_len, |buf| {
                    let (col, dx) = buf.split_at_mut(crs * pq);
                    sgemm(crs, pq, k, col, w, true, dyi, gemm_threads);
                    dx.fill(0.0);
                    col2im(p, col, dx);
                    finish(dx, dxi);
                });
            }
        }
    });
}
