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
