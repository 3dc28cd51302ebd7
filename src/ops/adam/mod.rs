//! adam: one PyTorch Adam step on the synthetic images followed by the per-channel clip, in one pass.
//!
//! PyTorch (torch.optim.Adam, no weight decay, not amsgrad), step t (1-based):
//!   m = lerp(m, g, 1 - beta1);  v = v * beta2 + (1 - beta2) * g * g
//!   x = x - (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
//! then x[:, c] = clamp(x[:, c], lo[c], hi[c]) (recover's clip in normalised space).
//! The per-step scalars travel in a small buffer (`AdamScalars`) so a captured CUDA graph can replay
//! the step with a new learning rate.
//!
//! CPU half: [`cpu`]. CUDA half: `kernels/adam.cu`.

pub mod cpu;

/// Per-step scalars, computed on the host in f64 like PyTorch's Python-side arithmetic.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AdamScalars {
    pub beta1: f32,
    pub beta2: f32,
    /// lr / (1 - beta1^t)
    pub step_size: f32,
    /// sqrt(1 - beta2^t)
    pub bias_correction2_sqrt: f32,
    pub eps: f32,
}

impl AdamScalars {
    pub const LEN: usize = 5;
    pub fn new(lr: f64, beta1: f64, beta2: f64, eps: f64, step: u32) -> AdamScalars {
        let bc1 = 1.0 - beta1.powi(step as i32);
        let bc2 = 1.0 - beta2.powi(step as i32);
        AdamScalars { beta1: beta1 as f32, beta2: beta2 as f32, step_size: (lr / bc1) as f32, bias_correction2_sqrt: bc2.sqrt() as f32, eps: eps as f32 }
    }
    pub fn to_array(self) -> [f32; Self::LEN] {
        [self.beta1, self.beta2, self.step_size, self.bias_correction2_sqrt, self.eps]
    }
    pub fn from_slice(s: &[f32]) -> AdamScalars {
        AdamScalars { beta1: s[0], beta2: s[1], step_size: s[2], bias_correction2_sqrt: s[3], eps: s[4] }
    }
}

// ---- The CUDA kernels' argument structs (device pointers as 64-bit addresses, 0 when absent). ----

/// Mirrors `AdamArgs` in kernels/adam.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AdamArgs {
    pub scalars: u64,
    pub x: u64,
    pub g: u64,
    pub m: u64,
    pub v: u64,
    pub lo: u64,
    pub hi: u64,
    pub n: i32,
    pub c: i32,
    pub hw: i32,
    pub reserved: i32,
}
crate::assert_kernel_layout!(AdamArgs, size 72, { scalars: 0, x: 8, g: 16, m: 24, v: 32, lo: 40, hi: 48, n: 56, c: 60, hw: 64, reserved: 68 });
