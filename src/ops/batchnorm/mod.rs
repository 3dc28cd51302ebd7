//! batchnorm: BatchNorm2d for training, train mode (batch statistics) and eval mode (running
//! statistics), fused with the ResNet's residual add and ReLU: `out = act(bn(y) [+ residual])`.
//!
//! Train mode, as PyTorch's CPU kernel (`batch_norm_cpu_collect_stats` / `_transform_input`), per
//! channel c over the M = N*H*W elements of y:
//!   mean_c = sum y / M;  var_c = sum (y - mean_c)^2 / M (two passes, f64);  invstd_c = 1 / sqrt(var_c + eps)
//!   alpha_c = invstd_c * gamma_c;  shift_c = beta_c - mean_c * alpha_c;  bn(y) = y * alpha_c + shift_c
//!   running_mean = (1 - momentum) * running_mean + momentum * mean_c
//!   running_var  = (1 - momentum) * running_var  + momentum * var_c * M / (M - 1)   (unbiased)
//! Eval mode: the same affine with running_mean / running_var in place of the batch statistics.
//!
//! Backward (PyTorch's `batch_norm_backward_cpu`, train mode) of the masked gradient
//! g = dout * (out > 0) (no mask without ReLU):
//!   dbeta_c = sum g;  dgamma_c = invstd_c * sum (y - mean_c) g
//!   dy = (g - dbeta_c / M - (y - mean_c) * invstd_c^2 * sum((y - mean_c) g) / M) * invstd_c * gamma_c
//!   dresidual = g
//! Sums run in 8 f32 lanes within an image plane and in f64 across planes.
//!
//! CPU half: [`cpu`].
//! CUDA half: kernels/batchnorm.cu (`bn_train_stats_f32`, `bn_eval_coef_f32`, `bn_apply_f32`,
//! `bn_train_bwd_*`), launched by `CudaBackend::bn_fwd_train` / `bn_fwd_eval` / `bn_bwd_train`
//! (src/backend/cuda/train.rs); checked against the CPU half in tests/cuda_common/train.rs.

pub mod cpu;

/// PyTorch's BatchNorm2d defaults.
pub const BN_MOMENTUM: f64 = 0.1;
pub const BN_EPS: f64 = 1e-5;

/// Shape of one BatchNorm problem: N images, C channels, HW elements per channel plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BnProblem {
    pub n: usize,
    pub c: usize,
    pub hw: usize,
}

impl BnProblem {
    pub fn len(&self) -> usize {
        self.n * self.c * self.hw
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Elements per channel (M).
    pub fn count(&self) -> usize {
        self.n * self.hw
    }
}
