//! conv: 2-D convolution (no bias, as torchvision's ResNet convs), all three passes.
//!
//! Layouts: x N C H W, w K C R S, y N K P Q (all row-major, PyTorch order); P = (H + 2 pad - R) /
//! stride + 1. The passes and CUTLASS's implicit-GEMM view of each:
//! - fprop: y = conv(x, w); GEMM_M = N*P*Q, GEMM_N = K, GEMM_K = C*R*S.
//! - dgrad: dx = conv_transpose(dy, w); GEMM_M = N*H*W, GEMM_N = C, GEMM_K = K*R*S.
//! - wgrad: dw = sum over (n, p, q) of dy x im2col(x); GEMM_M = K, GEMM_N = C*R*S, GEMM_K = N*P*Q
//!   (training only: recover needs no weight gradient).
//!
//! The BatchNorm that follows every conv is applied in the fprop epilogue (eval mode), which also
//! reduces the per-channel mean and biased variance of the raw conv output (the BN input) for BN
//! matching. The dgrad epilogue applies the ReLU mask of the conv's input and, where the input is itself
//! a BN+ReLU output, turns the gradient into the gradient of that BN's input including the BN-matching
//! term. Training uses plain epilogues (identity BN, store or masked store).
//!
//! PyTorch equivalents: `F.conv2d` (fprop), `torch.nn.grad.conv2d_input` (dgrad),
//! `torch.nn.grad.conv2d_weight` (wgrad). Accumulation is fp32 (TF32 operands in CUDA version 2).
//!
//! | pass  | CPU half                                                   | CUDA kernel (launcher)                                   |
//! |-------|------------------------------------------------------------|----------------------------------------------------------|
//! | fprop | [`cpu::fprop`] (Winograd or implicit GEMM)                 | kernels/conv_fprop.cu (`CudaBackend::conv_fprop`)        |
//! | dgrad | [`cpu::dgrad`] (Winograd or phase-split implicit GEMM)     | kernels/conv_dgrad.cu (`CudaBackend::conv_dgrad`)        |
//! | wgrad | [`cpu::im2col::wgrad`] (im2col + GEMM)                     | kernels/conv_wgrad.cu (`CudaBackend::conv_wgrad`)        |
//!
//! [`cpu::im2col`] also keeps the first version's im2col fprop and dgrad, the reference the faster
//! paths are checked (tests/cpu_conv.rs) and timed (benches/conv_layers.rs) against. The kernels share
//! kernels/conv.cuh, which mirrors [`ConvProblem`] and the argument structs below.

pub mod cpu;

use crate::model::ConvGeom;

/// Shape of one convolution problem, passed by value to kernels (mirrors `ConvProblem` in kernels/conv.cuh).
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
crate::assert_kernel_layout!(ConvProblem, size 48, { n: 0, c: 4, h: 8, w: 12, k: 16, r: 20, s: 24, p: 28, q: 32, stride: 36, pad: 40, _reserved: 44 });

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

// ---- The CUDA kernels' argument structs (device pointers as 64-bit addresses, 0 when absent). ----

/// Mirrors `ConvFpropArgs` in kernels/conv.cuh.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConvFpropArgs {
    pub x: u64,
    pub w: u64,
    pub out: u64,
    pub y: u64,
    pub residual: u64,
    pub bn_mean: u64,
    pub bn_scale: u64,
    pub bn_beta: u64,
    /// float64 [2][K][tiles_m] partial sums of y and y^2 per channel and M tile.
    pub stats_partial: u64,
    pub relu: i32,
    pub tiles_m: i32,
}
crate::assert_kernel_layout!(ConvFpropArgs, size 80, { x: 0, w: 8, out: 16, y: 24, residual: 32, bn_mean: 40, bn_scale: 48, bn_beta: 56, stats_partial: 64, relu: 72, tiles_m: 76 });

/// Mirrors `ConvDgradArgs` in kernels/conv.cuh.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConvDgradArgs {
    pub dy: u64,
    pub w: u64,
    pub x: u64,
    pub dx: u64,
    pub add: u64,
    pub y_prev: u64,
    pub scale: u64,
    pub coef: u64,
    /// 0 Store, 1 MaskInput, 2 BnRelu.
    pub mode: i32,
    pub accumulate: i32,
}
crate::assert_kernel_layout!(ConvDgradArgs, size 72, { dy: 0, w: 8, x: 16, dx: 24, add: 32, y_prev: 40, scale: 48, coef: 56, mode: 64, accumulate: 68 });

/// Mirrors `ConvStatsArgs` in kernels/conv.cuh.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConvStatsArgs {
    pub partial: u64,
    pub stats: u64,
    pub count: f64,
    pub k: i32,
    pub tiles_m: i32,
}
crate::assert_kernel_layout!(ConvStatsArgs, size 32, { partial: 0, stats: 8, count: 16, k: 24, tiles_m: 28 });
