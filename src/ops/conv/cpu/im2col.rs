//! CPU convolution by im2col + GEMM: the weight gradient (wgrad, training) and the first version's
//! fprop and dgrad, kept as the reference for the faster paths of `super`. im2col + GEMM over groups of images, the groups spread over the rayon
//! pool; wgrad keeps one partial dw per task and sums them at the end. Scratch is thread-local and only
//! grows.
//!
//! Deep layers have small P*Q (7x7 = 49, 4x4 = 16 on 28-pixel inputs), which makes one image's GEMM
//! too narrow to run the SIMD kernel efficiently; so G images are put side by side (GEMM_N = G*P*Q of
//! about 512 columns): their im2col columns form one [C*R*S x G*P*Q] matrix and their outputs or output
//! gradients one [K x G*P*Q] matrix, copied from / to the N K P Q layout around the GEMM.

use std::cell::RefCell;

use rayon::prelude::*;

use crate::cpu::gemm::sgemm;
use crate::cpu::par::{image_groups, SyncPtr};
use crate::ops::conv::ConvProblem;

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on `len` floats of this thread's grow-only scratch; a temporary buffer when the scratch is
/// already borrowed on this thread (a GEMM waiting on the pool may run another task here).
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let run = |v: &mut Vec<f32>| {
        if v.len() < len {
            v.resize(len, 0.0);
        }
        f(&mut v[..len])
    };
    SCRATCH.with(|c| match c.try_borrow_mut() {
        Ok(mut v) => run(&mut v),
        Err(_) => run(&mut Vec::new()),
    })
}

/// Output columns oq whose input column oq * stride + iw0 lies in 0..w: (first, end).
#[inline]
fn valid_cols(qq: usize, w: isize, stride: isize, iw0: isize) -> (usize, usize) {
    let first = if iw0 >= 0 { 0 } else { ((-iw0 + stride - 1) / stride) as usize };
    let end = if w - iw0 <= 0 { 0 } else { (((w - iw0 + stride - 1) / stride) as usize).min(qq) };
    (first.min(end), end)
}

/// Images per GEMM: enough that GEMM_N = G * P * Q reaches about 512 columns.
fn images_per_gemm(pq: usize) -> usize {
    (512 / pq.max(1)).max(1)
}

/// col[(c*R + r)*S + s][p*Q + q] = x[c][p*stride - pad + r][q*stride - pad + s] (0 outside), with the
/// padded borders handled per row instead of per element.
pub fn im2col(p: &ConvProblem, x: &[f32], col: &mut [f32]) {
    im2col_into(p, x, col, (p.p * p.q) as usize, 0);
}

/// [`im2col`] of one image into columns off..off + P*Q of a matrix with row length `ld`.
pub fn im2col_into(p: &ConvProblem, x: &[f32], col: &mut [f32], ld: usize, off: usize) {
    let (c_n, h, w, r_n, s_n, pp, qq) = (p.c as usize, p.h as isize, p.w as isize, p.r as usize, p.s as usize, p.p as usize, p.q as usize);
    let (stride, pad) = (p.stride as isize, p.pad as isize);
    let pq = pp * qq;
    for c in 0..c_n {
        let plane = &x[c * (h * w) as usize..(c + 1) * (h * w) as usize];
        for r in 0..r_n {
            for s in 0..s_n {
                let row = &mut col[((c * r_n + r) * s_n + s) * ld + off..][..pq];
                let iw0 = s as isize - pad;
                let (q0, q1) = valid_cols(qq, w, stride, iw0);
                for op in 0..pp {
                    let ih = op as isize * stride - pad + r as isize;
                    let dst = &mut row[op * qq..(op + 1) * qq];
                    if ih < 0 || ih >= h {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = &plane[(ih * w) as usize..((ih + 1) * w) as usize];
                    dst[..q0].fill(0.0);
                    dst[q1..].fill(0.0);
                    if stride == 1 {
                        let a = (q0 as isize + iw0) as usize;
                        dst[q0..q1].copy_from_slice(&src[a..a + (q1 - q0)]);
                    } else {
                        for (oq, d) in dst[q0..q1].iter_mut().enumerate() {
                            *d = src[((q0 + oq) as isize * stride + iw0) as usize];
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: x[c][ih][iw] += col[...] (x must be zeroed or hold what to add to).
pub fn col2im(p: &ConvProblem, col: &[f32], x: &mut [f32]) {
    col2im_from(p, col, (p.p * p.q) as usize, 0, x);
}

/// [`col2im`] from columns off..off + P*Q of a matrix with row length `ld`.
pub fn col2im_from(p: &ConvProblem, col: &[f32], ld: usize, off: usize, x: &mut [f32]) {
    let (c_n, h, w, r_n, s_n, pp, qq) = (p.c as usize, p.h as isize, p.w as isize, p.r as usize, p.s as usize, p.p as usize, p.q as usize);
    let (stride, pad) = (p.stride as isize, p.pad as isize);
    let pq = pp * qq;
    for c in 0..c_n {
        let plane = &mut x[c * (h * w) as usize..(c + 1) * (h * w) as usize];
        for r in 0..r_n {
            for s in 0..s_n {
                let row = &col[((c * r_n + r) * s_n + s) * ld + off..][..pq];
                let iw0 = s as isize - pad;
                let (q0, q1) = valid_cols(qq, w, stride, iw0);
                for op in 0..pp {
                    let ih = op as isize * stride - pad + r as isize;
                    if ih < 0 || ih >= h {
                        continue;
                    }
                    let dst = &mut plane[(ih * w) as usize..((ih + 1) * w) as usize];
                    let src = &row[op * qq + q0..op * qq + q1];
                    if stride == 1 {
                        let a = (q0 as isize + iw0) as usize;
                        dst[a..a + src.len()].iter_mut().zip(src).for_each(|(d, v)| *d += v);
                    } else {
                        for (oq, v) in src.iter().enumerate() {
                            dst[((q0 + oq) as isize * stride + iw0) as usize] += v;
                        }
                    }
                }
            }
        }
    }
}

/// Copies images a..a+g of an N K PQ tensor into a [K x g*PQ] matrix (image j in columns j*PQ..).
fn gather(t: &[f32], k: usize, pq: usize, a: usize, g: usize, out: &mut [f32]) {
    let ld = g * pq;
    for j in 0..g {
        let img = &t[(a + j) * k * pq..(a + j + 1) * k * pq];
        for kk in 0..k {
            out[kk * ld + j * pq..kk * ld + (j + 1) * pq].copy_from_slice(&img[kk * pq..(kk + 1) * pq]);
        }
    }
}

/// dst[m x n] += lhs[m x k] * rhs^T where rhs is row-major n x k (both operands row-major).
fn gemm_acc_rhs_t(m: usize, n: usize, k: usize, dst: &mut [f32], lhs: &[f32], rhs: &[f32], threads: usize) {
    assert!(dst.len() >= m * n && lhs.len() >= m * k && rhs.len() >= n * k, "gemm operand too small");
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: the slices hold m*n, m*k and n*k elements with the strides given (dst row-major m x n,
    // lhs row-major m x k, rhs element (i, j) of the k x n operand at rhs[j * k + i]); dst is a unique
    // borrow, so it cannot alias the inputs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            true,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs.as_ptr(),
            k as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// y = conv(x, w) by im2col + the `gemm` crate over groups of images: the first version, kept as
/// the reference the faster paths are checked and timed against.
pub fn fprop_im2col(p: &ConvProblem, x: &[f32], w: &[f32], y: &mut [f32]) {
    let n = p.n as usize;
    let (in_len, out_len) = (p.input_len() / n, p.output_len() / n);
    let (k, pq, crs) = (p.k as usize, (p.p * p.q) as usize, (p.c * p.r * p.s) as usize);
    assert!(x.len() == p.input_len() && w.len() == p.weight_len() && y.len() == p.output_len(), "conv fprop operands");
    let y_ptr = SyncPtr(y.as_mut_ptr());
    let (groups, gemm_threads) = image_groups(n);
    let per = images_per_gemm(pq);
    groups.into_par_iter().for_each(|range| {
        let mut a = range.start;
        while a < range.end {
            let g = per.min(range.end - a);
            let ld = g * pq;
            // SAFETY: image ranges are disjoint across tasks.
            let ys = unsafe { y_ptr.slice(a * out_len, g * out_len) };
            with_scratch(crs * ld + if g > 1 { k * ld } else { 0 }, |buf| {
                let (col, tmp) = buf.split_at_mut(crs * ld);
                for j in 0..g {
                    im2col_into(p, &x[(a + j) * in_len..(a + j + 1) * in_len], col, ld, j * pq);
                }
                if g == 1 {
                    sgemm(k, pq, crs, ys, w, false, col, gemm_threads);
                } else {
                    sgemm(k, ld, crs, tmp, w, false, col, gemm_threads);
                    for j in 0..g {
                        for kk in 0..k {
                            ys[j * out_len + kk * pq..j * out_len + (kk + 1) * pq].copy_from_slice(&tmp[kk * ld + j * pq..kk * ld + (j + 1) * pq]);
                        }
                    }
                }
            });
            a += g;
        }
    });
}

/// dx = conv_transpose(dy, w) (dx += that when `accumulate`) by the `gemm` crate + col2im over
/// groups of images: the first version, kept as the reference.
pub fn dgrad_im2col(p: &ConvProblem, dy: &[f32], w: &[f32], dx: &mut [f32], accumulate: bool) {
    let n = p.n as usize;
    let (in_len, out_len) = (p.input_len() / n, p.output_len() / n);
    let (k, pq, crs) = (p.k as usize, (p.p * p.q) as usize, (p.c * p.r * p.s) as usize);
    assert!(dy.len() == p.output_len() && w.len() == p.weight_len() && dx.len() == p.input_len(), "conv dgrad operands");
    let dx_ptr = SyncPtr(dx.as_mut_ptr());
    let (groups, gemm_threads) = image_groups(n);
    let per = images_per_gemm(pq);
    groups.into_par_iter().for_each(|range| {
        let mut a = range.start;
        while a < range.end {
            let g = per.min(range.end - a);
            let ld = g * pq;
            // SAFETY: image ranges are disjoint across tasks.
            let dxs = unsafe { dx_ptr.slice(a * in_len, g * in_len) };
            with_scratch(crs * ld + if g > 1 { k * ld } else { 0 }, |buf| {
                let (col, dyg) = buf.split_at_mut(crs * ld);
                let lhs: &[f32] = if g == 1 {
                    &dy[a * out_len..(a + 1) * out_len]
                } else {
                    gather(dy, k, pq, a, g, dyg);
                    dyg
                };
                sgemm(crs, ld, k, col, w, true, lhs, gemm_threads);
                for j in 0..g {
                    let dxi = &mut dxs[j * in_len..(j + 1) * in_len];
                    if !accumulate {
                        dxi.fill(0.0);
                    }
                    col2im_from(p, col, ld, j * pq, dxi);
                }
            });
            a += g;
        }
    });
}

/// dw = sum over images of dy_n[K x PQ] * im2col(x_n)^T[PQ x CRS] (overwrites dw).
pub fn wgrad(p: &ConvProblem, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    let n = p.n as usize;
    let (in_len, out_len) = (p.input_len() / n, p.output_len() / n);
    let (k, pq, crs) = (p.k as usize, (p.p * p.q) as usize, (p.c * p.r * p.s) as usize);
    assert!(x.len() == p.input_len() && dy.len() == p.output_len() && dw.len() == p.weight_len(), "conv wgrad operands");
    let (groups, gemm_threads) = image_groups(n);
    let per = images_per_gemm(pq);
    let partials: Vec<Vec<f32>> = groups
        .into_par_iter()
        .map(|range| {
            let mut acc = vec![0f32; k * crs];
            let mut a = range.start;
            while a < range.end {
                let g = per.min(range.end - a);
                let ld = g * pq;
                with_scratch(crs * ld + if g > 1 { k * ld } else { 0 }, |buf| {
                    let (col, dyg) = buf.split_at_mut(crs * ld);
                    for j in 0..g {
                        im2col_into(p, &x[(a + j) * in_len..(a + j + 1) * in_len], col, ld, j * pq);
                    }
                    let lhs: &[f32] = if g == 1 {
                        &dy[a * out_len..(a + 1) * out_len]
                    } else {
                        gather(dy, k, pq, a, g, dyg);
                        dyg
                    };
                    gemm_acc_rhs_t(k, crs, ld, &mut acc, lhs, col, gemm_threads);
                });
                a += g;
            }
            acc
        })
        .collect();
    dw.fill(0.0);
    for part in &partials {
        dw.iter_mut().zip(part).for_each(|(d, v)| *d += v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ConvGeom;

    /// im2col from its definition, element by element.
    fn naive_im2col(p: &ConvProblem, x: &[f32]) -> Vec<f32> {
        let (c_n, h, w, r_n, s_n, pp, qq) = (p.c as i64, p.h as i64, p.w as i64, p.r as i64, p.s as i64, p.p as i64, p.q as i64);
        let mut col = Vec::new();
        for c in 0..c_n {
            for r in 0..r_n {
                for s in 0..s_n {
                    for op in 0..pp {
                        for oq in 0..qq {
                            let (ih, iw) = (op * p.stride as i64 - p.pad as i64 + r, oq * p.stride as i64 - p.pad as i64 + s);
                            col.push(if ih >= 0 && ih < h && iw >= 0 && iw < w { x[(c * h * w + ih * w + iw) as usize] } else { 0.0 });
                        }
                    }
                }
            }
        }
        col
    }

    /// The row-wise im2col equals its definition on every border case, and col2im is its adjoint
    /// (<im2col x, y> = <x, col2im y>, exact for these small integers).
    #[test]
    fn im2col_matches_its_definition_and_col2im_is_its_adjoint() {
        for (h, w, r, stride, pad) in [(9, 9, 3, 1, 1), (9, 8, 3, 2, 1), (8, 8, 1, 2, 0), (17, 17, 7, 2, 3), (5, 6, 3, 1, 0), (4, 4, 3, 3, 2)] {
            let g = ConvGeom { c: 2, k: 3, r, s: r, stride, pad };
            let p = ConvProblem::new(1, h, w, &g);
            let x: Vec<f32> = (0..p.input_len()).map(|i| (i % 7) as f32 - 3.0).collect();
            let len = (p.c * p.r * p.s * p.p * p.q) as usize;
            let mut a = vec![9.0; len];
            im2col(&p, &x, &mut a);
            assert_eq!(a, naive_im2col(&p, &x), "im2col {h}x{w} r{r} s{stride} p{pad}");
            let y: Vec<f32> = (0..len).map(|i| (i % 5) as f32 - 2.0).collect();
            let mut xt = vec![0.0; p.input_len()];
            col2im(&p, &y, &mut xt);
            let lhs: f64 = a.iter().zip(&y).map(|(a, b)| (*a * *b) as f64).sum();
            let rhs: f64 = x.iter().zip(&xt).map(|(a, b)| (*a * *b) as f64).sum();
            assert_eq!(lhs, rhs, "col2im adjoint {h}x{w} r{r} s{stride} p{pad}");
        }
    }
}
