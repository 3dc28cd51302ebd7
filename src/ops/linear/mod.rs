//! linear: the fc head and its gradients, y[N x J] = x[N x F] * W^T + b with W stored J x F (PyTorch).
//!
//! - fwd: y = x W^T + b (GEMM_M = N, GEMM_N = J, GEMM_K = F);
//! - bwd_data: dx = dy W (GEMM_M = N, GEMM_N = F, GEMM_K = J): recover needs only this one;
//! - wgrad: dW[J x F] = dy^T x (GEMM_M = J, GEMM_N = F, GEMM_K = N), db[j] = sum_n dy[n, j] (training).
//!
//! CPU half: [`cpu`] (the `gemm` crate). CUDA half: `kernels/linear.cu` (`linear_fwd_f32`,
//! `linear_bwd_data_f32`, `linear_wgrad_f32`), launched by `CudaBackend::linear_fwd`,
//! `linear_bwd_data` and `linear_wgrad`; checked in tests/cuda_common.

pub mod cpu;

/// Shape of a fully connected layer: `n` rows of `in_f` features to `out_f` outputs (W stored
/// out_f x in_f, PyTorch's layout).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearProblem {
    pub n: usize,
    pub in_f: usize,
    pub out_f: usize,
}
