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
