//! Passing arguments to the CUDA kernels: [`KernelParam`] marks the plain-old-data types whose bytes
//! are exactly what `cuLaunchKernel` copies for a kernel parameter, and [`assert_kernel_layout!`]
//! checks, at compile time, the size and every field offset of an argument struct against the numbers
//! its kernel's C declaration asserts too (`CDA_PARAMS_SIZE` and `CDA_PARAMS_OFFSET` in kernels/*.cu).
//! The structs themselves live with their ops (`crate::ops::<op>`), beside the maths they carry.

use crate::ops::adam::AdamArgs;
use crate::ops::adamw::AdamWArgs;
use crate::ops::batchnorm::{BnTrainArgs, BnTrainBwdArgs};
use crate::ops::bn_match::{BnBackwardArgs, BnMatchArgs};
use crate::ops::conv::{ConvDgradArgs, ConvFpropArgs, ConvProblem, ConvStatsArgs};
use crate::ops::crop_resize::CropResizeProblem;
use crate::ops::image_prior::ImagePriorArgs;
use crate::ops::kd_loss::KdLossArgs;
use crate::ops::pool::PoolProblem;
use crate::ops::sgd::SgdArgs;
use crate::ops::softmax_ce::SoftmaxCeArgs;

/// Asserts at compile time that a kernel argument struct has the C layout its kernel declares: the
/// size and the byte offset of every field (the kernel side asserts the same numbers).
#[macro_export]
macro_rules! assert_kernel_layout {
    ($t:ty, size $size:expr, { $($field:ident: $offset:expr),* $(,)? }) => {
        const _: () = assert!(std::mem::size_of::<$t>() == $size);
        $(const _: () = assert!(std::mem::offset_of!($t, $field) == $offset);)*
    };
}

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
