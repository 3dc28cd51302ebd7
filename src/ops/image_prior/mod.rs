//! image_prior: SRe2L / DeepInversion's optional image priors on the augmented batch x (N C H W).
//!
//!   TV-L2 = ||d1|| + ||d2|| + ||d3|| + ||d4||   (Frobenius norms over the whole batch) with
//!     d1 = x[..., :, :-1] - x[..., :, 1:]      d2 = x[..., :-1, :] - x[..., 1:, :]
//!     d3 = x[..., 1:, :-1] - x[..., :-1, 1:]   d4 = x[..., :-1, :-1] - x[..., 1:, 1:]
//!   L2 = mean_n ||x_n||
//! Gradients: each ||d|| contributes +d/||d|| at its first operand and -d/||d|| at its second;
//! L2 contributes x_n / (N ||x_n||).
//!
//! CPU half: [`cpu`]. CUDA half: `kernels/image_prior.cu`.

pub mod cpu;

// ---- The CUDA kernels' argument structs (device pointers as 64-bit addresses, 0 when absent). ----

/// Mirrors `ImagePriorArgs` in kernels/image_prior.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ImagePriorArgs {
    pub x: u64,
    pub grad: u64,
    /// float64 workspace: [loss][4 TV norms][N image norms][N*C*5 partials].
    pub ws: u64,
    pub tv_l2: f64,
    pub l2_scale: f64,
    pub n: i32,
    pub c: i32,
    pub h: i32,
    pub w: i32,
}
crate::assert_kernel_layout!(ImagePriorArgs, size 56, { x: 0, grad: 8, ws: 16, tv_l2: 24, l2_scale: 32, n: 40, c: 44, h: 48, w: 52 });
