//! CPU linear layer on the shared GEMM.

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
