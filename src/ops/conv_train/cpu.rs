//! CPU training convolutions: im2col + GEMM per image, images spread over the rayon pool; wgrad keeps
//! one partial dw per task and sums them at the end. Scratch is thread-local and only grows.

use std::cell::RefCell;

use rayon::prelude::*;

use crate::ops::conv2d::cpu::{col2im, im2col};
use crate::ops::conv2d::ConvProblem;
use crate::ops::gemm::sgemm;
use crate::ops::par::{image_groups, SyncPtr};

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() < len {
            c.resize(len, 0.0);
        }
        f(&mut c[..len])
    })
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
            m, n, k,
            dst.as_mut_ptr(), 1, n as isize, true,
            lhs.as_ptr(), 1, k as isize,
            rhs.as_ptr(), k as isize, 1,
            1.0, 1.0, false, false, false, par,
        );
    }
}

/// y = conv(x, w), no bias.
pub fn fprop(p: &ConvProblem, x: &[f32], w: &[f32], y: &mut [f32]) {
    let n = p.n as usize;
    let (in_len, out_len) = (p.input_len() / n, p.output_len() / n);
    let (k, pq, crs) = (p.k as usize, (p.p * p.q) as usize, (p.c * p.r * p.s) as usize);
    assert!(x.len() == p.input_len() && w.len() == p.weight_len() && y.len() == p.output_len(), "conv fprop operands");
    let y_ptr = SyncPtr(y.as_mut_ptr());
    let (groups, gemm_threads) = image_groups(n);
    groups.into_par_iter().for_each(|range| {
        for img in range {
            let xi = &x[img * in_len..(img + 1) * in_len];
            // SAFETY: image ranges are disjoint across tasks.
            let yi = unsafe { y_ptr.slice(img * out_len, out_len) };
            if p.is_pointwise() {
                sgemm(k, pq, crs, yi, w, false, xi, gemm_threads);
            } else {
                with_scratch(crs * pq, |col| {
                    im2col(p, xi, col);
                    sgemm(k, pq, crs, yi, w, false, col, gemm_threads);
                });
            }
        }
    });
}

/// dx = conv_transpose(dy, w), or dx += that when `accumulate`.
pub fn dgrad(p: &ConvProblem, dy: &[f32], w: &[f32], dx: &mut [f32], accumulate: bool) {
    let n = p.n as usize;
    let (in_len, out_len) = (p.input_len() / n, p.output_len() / n);
    let (k, pq, crs) = (p.k as usize, (p.p * p.q) as usize, (p.c * p.r * p.s) as usize);
    assert!(dy.len() == p.output_len() && w.len() == p.weight_len() && dx.len() == p.input_len(), "conv dgrad operands");
    let dx_ptr = SyncPtr(dx.as_mut_ptr());
    let (groups, gemm_threads) = image_groups(n);
    groups.into_par_iter().for_each(|range| {
        for img in range {
            let dyi = &dy[img * out_len..(img + 1) * out_len];
            // SAFETY: image ranges are disjoint across tasks.
            let dxi = unsafe { dx_ptr.slice(img * in_len, in_len) };
            if p.is_pointwise() && !accumulate {
                sgemm(crs, pq, k, dxi, w, true, dyi, gemm_threads);
            } else if p.is_pointwise() {
                with_scratch(in_len, |tmp| {
                    sgemm(crs, pq, k, tmp, w, true, dyi, gemm_threads);
                    dxi.iter_mut().zip(tmp.iter()).for_each(|(d, t)| *d += t);
                });
            } else {
                with_scratch(crs * pq, |col| {
                    sgemm(crs, pq, k, col, w, true, dyi, gemm_threads);
                    if !accumulate {
                        dxi.fill(0.0);
                    }
                    col2im(p, col, dxi);
                });
            }
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
    let partials: Vec<Vec<f32>> = groups
        .into_par_iter()
        .map(|range| {
            let mut acc = vec![0f32; k * crs];
            for img in range {
                let xi = &x[img * in_len..(img + 1) * in_len];
                let dyi = &dy[img * out_len..(img + 1) * out_len];
                if p.is_pointwise() {
                    gemm_acc_rhs_t(k, crs, pq, &mut acc, dyi, xi, gemm_threads);
                } else {
                    with_scratch(crs * pq, |col| {
                        im2col(p, xi, col);
                        gemm_acc_rhs_t(k, crs, pq, &mut acc, dyi, col, gemm_threads);
                    });
                }
            }
            acc
        })
        .collect();
    dw.fill(0.0);
    for part in &partials {
        dw.iter_mut().zip(part).for_each(|(d, v)| *d += v);
    }
}
