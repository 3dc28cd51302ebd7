//! adamw: torch.optim.AdamW (decoupled weight decay, not amsgrad) on one tensor, step t (1-based):
//!   param = param * (1 - lr * weight_decay)
//!   m = lerp(m, g, 1 - beta1);  v = v * beta2 + (1 - beta2) * g * g
//!   param = param - (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
//! The scalars are computed in f64 on the host (`crate::ops::adam::AdamScalars`), as PyTorch does in
//! Python. The caller passes weight_decay 0 for tensors with ndim <= 1 when the recipe says so.
//!
//! CPU half: [`cpu`].
//! CUDA half: kernels/adamw.cu, launched by `CudaBackend::adamw_step` (src/backend/cuda/train.rs);
//! bit-identical to the CPU half (tests/cuda_common/train.rs).

pub mod cpu;

pub use crate::ops::adam::AdamScalars;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamWConfig {
    /// PyTorch's defaults (betas 0.9 / 0.999, eps 1e-8) with the given lr and weight decay.
    pub fn new(lr: f64, weight_decay: f64) -> AdamWConfig {
        AdamWConfig { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay }
    }
}

// ---- The CUDA kernels' argument structs (device pointers as 64-bit addresses, 0 when absent). ----

/// Mirrors `AdamWArgs` in kernels/adamw.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AdamWArgs {
    pub param: u64,
    pub grad: u64,
    pub m: u64,
    pub v: u64,
    pub len: i64,
    pub beta1: f32,
    pub beta2: f32,
    pub step_size: f32,
    pub bias_correction2_sqrt: f32,
    pub eps: f32,
    pub decay: f32,
    pub apply_decay: i32,
    pub reserved: i32,
}
crate::assert_kernel_layout!(AdamWArgs, size 72, { param: 0, grad: 8, m: 16, v: 24, len: 32, beta1: 40, beta2: 44, step_size: 48, bias_correction2_sqrt: 52, eps: 56, decay: 60, apply_decay: 64, reserved: 68 });
