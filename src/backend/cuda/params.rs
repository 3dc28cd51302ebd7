//! `#[repr(C)]` argument structs of the CUDA kernels, mirrored field by field in kernels/*.cu with a
//! size check on both sides (`CDA_PARAMS_SIZE` there, `const` asserts here). Device pointers are 64-bit
//! addresses (0 for an absent optional operand), exactly the bytes `cuLaunchKernel` copies.
//! The shape structs (`ConvProblem`, `PoolProblem`, `CropResizeProblem`) live with their ops.

use crate::ops::conv2d::ConvProblem;
use crate::ops::crop_resize::CropResizeProblem;
use crate::ops::pool::PoolProblem;

/// Mirrors `ConvFpropArgs` in kernels/conv2d.cu.
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
const _: () = assert!(std::mem::size_of::<ConvFpropArgs>() == 80);

/// Mirrors `ConvDgradArgs` in kernels/conv2d.cu.
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
const _: () = assert!(std::mem::size_of::<ConvDgradArgs>() == 72);

/// Mirrors `ConvStatsArgs` in kernels/conv2d.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConvStatsArgs {
    pub partial: u64,
    pub stats: u64,
    pub count: f64,
    pub k: i32,
    pub tiles_m: i32,
}
const _: () = assert!(std::mem::size_of::<ConvStatsArgs>() == 32);

/// Mirrors `BnMatchArgs` in kernels/bn_match.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BnMatchArgs {
    pub stats: u64,
    pub running_mean: u64,
    pub running_var: u64,
    pub coef: u64,
    pub losses: u64,
    pub count: f64,
    pub weight: f64,
    pub k: i32,
    pub slot: i32,
}
const _: () = assert!(std::mem::size_of::<BnMatchArgs>() == 64);

/// Mirrors `BnBackwardArgs` in kernels/bn_match.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BnBackwardArgs {
    pub dz: u64,
    pub y: u64,
    pub scale: u64,
    pub coef: u64,
    pub dy: u64,
    pub n: i32,
    pub c: i32,
    pub hw: i32,
    pub reserved: i32,
}
const _: () = assert!(std::mem::size_of::<BnBackwardArgs>() == 56);

/// Mirrors `SoftmaxCeArgs` in kernels/softmax_ce.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SoftmaxCeArgs {
    pub logits: u64,
    pub targets: u64,
    pub dlogits: u64,
    /// float64 workspace, one loss per row.
    pub row_loss: u64,
    pub losses: u64,
    pub n: i32,
    pub classes: i32,
    pub slot: i32,
    pub reserved: i32,
}
const _: () = assert!(std::mem::size_of::<SoftmaxCeArgs>() == 56);

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
const _: () = assert!(std::mem::size_of::<AdamArgs>() == 72);

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
const _: () = assert!(std::mem::size_of::<ImagePriorArgs>() == 56);

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
const _: () = assert!(std::mem::size_of::<BnTrainArgs>() == 96);

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
const _: () = assert!(std::mem::size_of::<BnTrainBwdArgs>() == 104);

/// Mirrors `KdLossArgs` in kernels/kd_loss.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KdLossArgs {
    pub student: u64,
    pub teacher: u64,
    pub dstudent: u64,
    /// float64 workspace, one loss per row.
    pub row_loss: u64,
    pub losses: u64,
    pub temperature: f64,
    pub n: i32,
    pub classes: i32,
    pub slot: i32,
    pub reserved: i32,
}
const _: () = assert!(std::mem::size_of::<KdLossArgs>() == 64);

/// Mirrors `SgdArgs` in kernels/sgd.cu. `buf` is 0 when momentum is 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SgdArgs {
    pub param: u64,
    pub grad: u64,
    pub buf: u64,
    pub len: i64,
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub nesterov: i32,
    pub first: i32,
    pub reserved: i32,
}
const _: () = assert!(std::mem::size_of::<SgdArgs>() == 56);

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
const _: () = assert!(std::mem::size_of::<AdamWArgs>() == 72);

/// A value that may be passed to a kernel by value: plain old data whose bytes are the C layout
/// the kernel declares.
///
/// # Safety
/// Implementors must be `#[repr(C)]` (or primitive) with no padding-dependent meaning, and match the
/// kernel parameter's C type byte for byte.
pub unsafe trait KernelParam: Copy + 'static {}

// SAFETY: primitives have the C layout of the same-width C types.
unsafe impl KernelParam for i32 {}
unsafe impl KernelParam for u32 {}
unsafe impl KernelParam for u64 {}
unsafe impl KernelParam for i64 {}
unsafe impl KernelParam for f32 {}
unsafe impl KernelParam for f64 {}
// SAFETY: each is #[repr(C)] and mirrored by the kernel struct of the same name, with its size asserted
// on both sides.
unsafe impl KernelParam for ConvProblem {}
unsafe impl KernelParam for PoolProblem {}
unsafe impl KernelParam for CropResizeProblem {}
unsafe impl KernelParam for ConvFpropArgs {}
unsafe impl KernelParam for ConvDgradArgs {}
unsafe impl KernelParam for ConvStatsArgs {}
unsafe impl KernelParam for BnMatchArgs {}
unsafe impl KernelParam for BnBackwardArgs {}
unsafe impl KernelParam for SoftmaxCeArgs {}
unsafe impl KernelParam for AdamArgs {}
unsafe impl KernelParam for ImagePriorArgs {}
unsafe impl KernelParam for BnTrainArgs {}
unsafe impl KernelParam for BnTrainBwdArgs {}
unsafe impl KernelParam for KdLossArgs {}
unsafe impl KernelParam for SgdArgs {}
unsafe impl KernelParam for AdamWArgs {}
