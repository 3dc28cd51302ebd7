//! CPU fc parameter gradients on the shared GEMM; average-pool broadcast.

use rayon::prelude::*;

use crate::cpu::gemm::sgemm;

/// dw[J x F] = dy^T x; db = column sums of dy (f64 accumulation). Both overwritten.
pub fn wgrad(n: usize, in_f: usize, out_f: usize, x: &[f32], dy: &[f32], dw: &mut [f32], db: &mut [f32]) {
    assert!(x.len() == n * in_f && dy.len() == n * out_f && dw.len() == out_f * in_f && db.len() == out_f, "linear wgrad operands");
    // dy is row-major N x J, i.e. the transpose of the J x N left operand.
    sgemm(out_f, in_f, n, dw, dy, true, x, rayon::current_num_threads());
    for (j, d) in db.iter_mut().enumerate() {
        *d = (0..n).map(|i| dy[i * out_f + j] as f64).sum::<f64>() as f32;
    }
}

/// dx[n*C + c, :] = dout[n*C + c] / hw (overwrites dx).
pub fn avgpool_bwd(hw: usize, dout: &[f32], dx: &mut [f32]) {
    assert_eq!(dx.len(), dout.len() * hw, "avgpool backward operands");
    let inv = 1.0 / hw as f32;
    dx.par_chunks_mut(hw).zip(dout.par_iter()).for_each(|(d, &g)| d.fill(g * inv));
}
