//! CPU linear layer on the shared GEMM: forward, data gradient and weight gradient.

use crate::cpu::gemm::{sgemm, sgemm_rhs_transposed};

pub fn fwd(n: usize, in_f: usize, out_f: usize, x: &[f32], w: &[f32], b: &[f32], y: &mut [f32]) {
    assert!(x.len() == n * in_f && w.len() == out_f * in_f && b.len() == out_f && y.len() == n * out_f);
    sgemm_rhs_transposed(n, out_f, in_f, y, x, w, rayon::current_num_threads());
    for row in y.chunks_mut(out_f) {
        for (v, bias) in row.iter_mut().zip(b) {
            *v += bias;
        }
    }
}

/// dx[N x F] = dy[N x J] * W[J x F].
pub fn bwd_data(n: usize, in_f: usize, out_f: usize, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    assert!(dy.len() == n * out_f && w.len() == out_f * in_f && dx.len() == n * in_f);
    sgemm(n, in_f, out_f, dx, dy, false, w, rayon::current_num_threads());
}

/// dw[J x F] = dy^T x; db = column sums of dy (f64 accumulation). Both overwritten.
pub fn wgrad(n: usize, in_f: usize, out_f: usize, x: &[f32], dy: &[f32], dw: &mut [f32], db: &mut [f32]) {
    assert!(x.len() == n * in_f && dy.len() == n * out_f && dw.len() == out_f * in_f && db.len() == out_f, "linear wgrad operands");
    // dy is row-major N x J, i.e. the transpose of the J x N left operand.
    sgemm(out_f, in_f, n, dw, dy, true, x, rayon::current_num_threads());
    for (j, d) in db.iter_mut().enumerate() {
        *d = (0..n).map(|i| dy[i * out_f + j] as f64).sum::<f64>() as f32;
    }
}
