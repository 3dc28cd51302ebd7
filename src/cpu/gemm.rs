//! The CPU GEMMs: `sgemm` (a cache-blocked, runtime-dispatched SIMD GEMM from the `gemm` crate, used by
//! the linear layers and training ops) and [`microkernel`], the register-tile kernels that the recover
//! convolutions (`ops::conv::cpu`) drive with their own packing and fused epilogues.

pub mod microkernel;

/// dst[m x n] = lhs[m x k] * rhs[k x n] (row-major; `lhs_transposed` reads lhs as the transpose of a
/// row-major k x m matrix). `threads` > 1 lets the GEMM split itself over the current rayon pool.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(m: usize, n: usize, k: usize, dst: &mut [f32], lhs: &[f32], lhs_transposed: bool, rhs: &[f32], threads: usize) {
    assert!(dst.len() >= m * n && lhs.len() >= m * k && rhs.len() >= k * n, "sgemm operand too small");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        dst[..m * n].fill(0.0);
        return;
    }
    let (lhs_cs, lhs_rs) = if lhs_transposed { (m as isize, 1) } else { (1, k as isize) };
    let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: the slices hold at least m*n, m*k and k*n elements laid out with the strides given,
    // and `dst` (a unique borrow) cannot alias the inputs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.as_ptr(),
            lhs_cs,
            lhs_rs,
            rhs.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// dst[m x n] = lhs[m x k] * rhs^T where rhs is row-major n x k (a linear layer's weight).
pub fn sgemm_rhs_transposed(m: usize, n: usize, k: usize, dst: &mut [f32], lhs: &[f32], rhs: &[f32], threads: usize) {
    assert!(dst.len() >= m * n && lhs.len() >= m * k && rhs.len() >= k * n, "sgemm operand too small");
    if m == 0 || n == 0 {
        return;
    }
    let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: as in `sgemm`; rhs element (i, j) of the k x n operand is rhs[j * k + i].
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}
