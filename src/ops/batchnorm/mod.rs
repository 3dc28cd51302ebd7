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

// ---- The CUDA kernels' argument structs (device pointers as 64-bit addresses, 0 when absent). ----

/// Mirrors `BnTrainArgs` in kernels/batchnorm.cu (train-mode statistics, eval-mode affine).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BnTrainArgs {
    pub y: u64,
    pub gamma: u64,
    pub beta: u64,
    pub running_mean: u64,
    pub running_var: u64,
    pub save_mean: u64,
    pub save_invstd: u64,
    /// 2C floats: alpha, shift.
    pub coef: u64,
    pub momentum: f64,
    pub eps: f64,
    pub n: i32,
    pub c: i32,
    pub hw: i32,
    pub reserved: i32,
}
crate::assert_kernel_layout!(BnTrainArgs, size 96, { y: 0, gamma: 8, beta: 16, running_mean: 24, running_var: 32, save_mean: 40, save_invstd: 48, coef: 56, momentum: 64, eps: 72, n: 80, c: 84, hw: 88, reserved: 92 });

/// Mirrors `BnTrainBwdArgs` in kernels/batchnorm.cu. `dresidual` is 0 when not wanted.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BnTrainBwdArgs {
    pub dout: u64,
    pub out: u64,
    pub y: u64,
    pub gamma: u64,
    pub save_mean: u64,
    pub save_invstd: u64,
    pub dy: u64,
    pub dgamma: u64,
    pub dbeta: u64,
    pub dresidual: u64,
    /// 3C floats: grad_mean, k, w.
    pub coef3: u64,
    pub n: i32,
    pub c: i32,
    pub hw: i32,
    pub relu: i32,
}
crate::assert_kernel_layout!(BnTrainBwdArgs, size 104, { dout: 0, out: 8, y: 16, gamma: 24, save_mean: 32, save_invstd: 40, dy: 48, dgamma: 56, dbeta: 64, dresidual: 72, coef3: 80, n: 88, c: 92, hw: 96, relu: 100 });
