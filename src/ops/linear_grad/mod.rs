//! linear_grad: the fc layer's parameter gradients and the global average pool's plain backward.
//!
//! For y[N x J] = x[N x F] * W^T + b (W stored J x F, PyTorch):
//!   dW[J x F] = dy^T * x  (GEMM_M = J, GEMM_N = F, GEMM_K = N);  db[j] = sum_n dy[n, j]
//! The data gradient dx = dy * W is `crate::ops::linear::cpu::bwd_data`.
//! Global average pool backward (no ReLU mask; the BN+ReLU backward applies the mask):
//!   dx[n, c, :] = dout[n, c] / HW.
//!
//! CPU half: [`cpu`].
//! CUDA half of `wgrad`: kernels/linear_grad.cu, launched by `CudaBackend::linear_wgrad`; the
//! average pool's backward is the recover kernel (`Backend::avgpool_bwd`).

pub mod cpu;
