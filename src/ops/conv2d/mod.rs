//! conv2d: implicit-GEMM convolution, fprop and dgrad, with the epilogues recover needs.
//!
//! Layouts: x N C H W, w K C R S, y N K P Q (all row-major, PyTorch order).
//! GEMM view (CUTLASS): fprop GEMM_M = K, GEMM_N = P*Q (per image), GEMM_K = C*R*S;
//! dgrad GEMM_M = C*R*S, GEMM_N = P*Q, GEMM_K = K followed by col2im.
//!
//! The BatchNorm that follows every conv is applied in the fprop epilogue (eval mode), which also
//! reduces the per-channel mean and biased variance of the raw conv output (the BN input) for BN matching.
//! The dgrad epilogue applies the ReLU mask of the conv's input and, where the input is itself a
//! BN+ReLU output, turns the gradient into the gradient of that BN's input including the BN-matching term.
//!
//! CPU half: [`cpu`]. CUDA half: `kernels/conv2d.cu` launched from `src/backend/cuda.rs`.

pub mod cpu;

use crate::model::ConvGeom;

/// Shape of one convolution problem, passed by value to kernels (mirrors `ConvProblem` in kernels/conv2d.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ConvProblem {
    pub n: i32,
    pub c: i32,
    pub h: i32,
    pub w: i32,
    pub k: i32,
    pub r: i32,
    pub s: i32,
    pub p: i32,
    pub q: i32,
    pub stride: i32,
    pub pad: i32,
    pub _reserved: i32,
}
const _: () = assert!(std::mem::size_of::<ConvProblem>() == 48);

impl ConvProblem {
    pub fn new(n: usize, h: usize, w: usize, g: &ConvGeom) -> ConvProblem {
        let (p, q) = g.out_hw(h, w);
        ConvProblem {
            n: n as i32,
            c: g.c as i32,
            h: h as i32,
            w: w as i32,
            k: g.k as i32,
            r: g.r as i32,
            s: g.s as i32,
            p: p as i32,
            q: q as i32,
            stride: g.stride as i32,
            pad: g.pad as i32,
            _reserved: 0,
        }
    }
    pub fn input_len(&self) -> usize {
        (self.n * self.c * self.h * self.w) as usize
    }
    pub fn output_len(&self) -> usize {
        (self.n * self.k * self.p * self.q) as usize
    }
    pub fn weight_len(&self) -> usize {
        (self.k * self.c * self.r * self.s) as usize
    }
    /// Is this a 1x1 stride-1 unpadded conv, whose im2col is the input itself?
    pub fn is_pointwise(&self) -> bool {
        self.r == 1 && self.s == 1 && self.stride == 1 && self.pad == 0
    }
    pub fn flops(&self) -> f64 {
        2.0 * self.output_len() as f64 * (self.c * self.r * self.s) as f64
    }
}

/// Eval-mode BatchNorm applied by the fprop epilogue: z = (y - mean) * scale + beta.
pub struct BnAffine<'a, B: ?Sized> {
    pub mean: &'a B,
    pub scale: &'a B,
    pub beta: &'a B,
}

/// What the fprop epilogue writes besides `out = act((y - mean) * scale + beta [+ residual])`.
pub struct FpropEpilogue<'a, B: ?Sized> {
    pub bn: BnAffine<'a, B>,
    /// Added after BN, before ReLU (the block's shortcut).
    pub residual: Option<&'a B>,
    pub relu: bool,
    /// The raw conv output y (the BN input), kept for the backward pass.
    pub y: Option<&'a mut B>,
    /// Per-channel statistics of y over N*P*Q: K means followed by K biased variances.
    pub stats: Option<&'a mut B>,
}

/// How the dgrad result dx = W^T * dy (mapped back to N C H W) is combined into `dx_out`.
pub enum DgradEpilogue<'a, B: ?Sized> {
    /// dx_out = dx
    Store,
    /// dx_out = (dx + add + [dx_out if accumulate]) * (x > 0): the gradient with respect to a block input
    /// (always a ReLU output), summing the main path with the shortcut path.
    MaskInput { add: Option<&'a B>, accumulate: bool },
    /// The conv input x is relu(bn(y_prev)); writes the gradient with respect to y_prev:
    /// dx_out = scale * dx * (x > 0) + coef_a + coef_b * (y_prev - coef_mean)   (see bn_match).
    BnRelu { y_prev: &'a B, scale: &'a B, coef: &'a B },
}
