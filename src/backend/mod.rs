//! Backends supply the ops of one recover iteration over their own buffers; the network executor
//! (`crate::net`) drives them identically. `cpu` always works; `cuda` runs `kernels/*.cu`.

pub mod cpu;
pub mod cuda;

use crate::error::Result;
use crate::ops::adamw::AdamWConfig;
use crate::ops::batchnorm::BnProblem;
use crate::ops::conv::{ConvProblem, DgradEpilogue, FpropEpilogue};
use crate::ops::crop_resize::CropResizeProblem;
pub use crate::ops::linear::LinearProblem;
use crate::ops::pool::PoolProblem;
use crate::ops::sgd::SgdConfig;

/// The ops of a recover iteration. Buffers are flat f32 / i32 arrays in the layouts of `crate::ops`;
/// a buffer may be longer than an op needs (scratch sized for the largest activation): ops use its prefix.
/// Scalar results (losses) are written into buffers so a backend may run asynchronously; they are
/// read with `download`.
pub trait Backend: Send + Sync {
    type Buf: Send + Sync;
    type IntBuf: Send + Sync;
    /// A recorded sequence of ops that can be replayed (a CUDA graph); `()` where there is none.
    type Graph;

    /// e.g. "cpu (2 threads, avx2+fma)" or the GPU's name.
    fn describe(&self) -> String;
    /// A zero-filled buffer of `len` floats.
    fn alloc(&self, len: usize) -> Result<Self::Buf>;
    fn alloc_int(&self, len: usize) -> Result<Self::IntBuf>;
    fn upload(&self, src: &[f32], dst: &mut Self::Buf) -> Result<()>;
    fn upload_int(&self, src: &[i32], dst: &mut Self::IntBuf) -> Result<()>;
    fn download(&self, src: &Self::Buf, dst: &mut [f32]) -> Result<()>;
    fn download_int(&self, src: &Self::IntBuf, dst: &mut [i32]) -> Result<()>;
    /// Waits for queued work (no-op on CPU).
    fn synchronize(&self) -> Result<()>;
    /// Records the ops `issue` launches, without running them, for [`replay_graph`](Self::replay_graph).
    /// Ok(None) where the backend has no graphs: then `issue` was not called and the caller runs the
    /// ops eagerly. Uploads and downloads are not allowed inside `issue`.
    fn capture_graph(&self, issue: impl FnOnce(&Self) -> Result<()>) -> Result<Option<Self::Graph>> {
        let _ = issue;
        Ok(None)
    }
    /// Runs a graph captured by [`capture_graph`](Self::capture_graph).
    fn replay_graph(&self, graph: &Self::Graph) -> Result<()> {
        let _ = graph;
        Ok(())
    }

    fn conv_fprop(&self, p: &ConvProblem, x: &Self::Buf, w: &Self::Buf, epi: FpropEpilogue<'_, Self::Buf>, out: &mut Self::Buf) -> Result<()>;
    fn conv_dgrad(&self, p: &ConvProblem, dy: &Self::Buf, w: &Self::Buf, x: &Self::Buf, epi: DgradEpilogue<'_, Self::Buf>, dx: &mut Self::Buf) -> Result<()>;
    /// BN matching of one layer ([`BnMatchIo`]): `stats` = [mean, var] of the BN input -> `coef` =
    /// [a, b, mean] (the backward's coefficients), `losses[slot]` = the unweighted term r.
    fn bn_match(&self, t: BnMatchIo<'_, Self::Buf>) -> Result<()>;
    /// dy = scale * dz + a + b * (y - mean) over an N C (hw) tensor `p` ([`BnBackwardIo`]).
    fn bn_backward(&self, p: &BnProblem, t: BnBackwardIo<'_, Self::Buf>) -> Result<()>;
    fn maxpool_fwd(&self, p: &PoolProblem, x: &Self::Buf, out: &mut Self::Buf, argmax: &mut Self::IntBuf) -> Result<()>;
    fn maxpool_bwd(&self, p: &PoolProblem, dout: &Self::Buf, argmax: &Self::IntBuf, dx: &mut Self::Buf) -> Result<()>;
    fn avgpool_fwd(&self, nc: usize, hw: usize, x: &Self::Buf, out: &mut Self::Buf) -> Result<()>;
    /// dx = dout / hw broadcast, masked by (x > 0).
    fn avgpool_bwd(&self, nc: usize, hw: usize, dout: &Self::Buf, x: &Self::Buf, dx: &mut Self::Buf) -> Result<()>;
    /// y = x W^T + b for the fc layer `p` (W stored out_f x in_f).
    fn linear_fwd(&self, p: &LinearProblem, x: &Self::Buf, w: &Self::Buf, b: &Self::Buf, y: &mut Self::Buf) -> Result<()>;
    /// dx = dy W for the fc layer `p`.
    fn linear_bwd_data(&self, p: &LinearProblem, dy: &Self::Buf, w: &Self::Buf, dx: &mut Self::Buf) -> Result<()>;
    /// Mean cross-entropy into losses[slot], its gradient into dlogits ([`SoftmaxCeIo`]).
    fn softmax_ce(&self, t: SoftmaxCeIo<'_, Self::Buf, Self::IntBuf>) -> Result<()>;
    /// `params`: 8 int32 per image (`CropParams`).
    fn crop_resize_fwd(&self, p: &CropResizeProblem, params: &Self::IntBuf, x: &Self::Buf, out: &mut Self::Buf) -> Result<()>;
    fn crop_resize_bwd(&self, p: &CropResizeProblem, params: &Self::IntBuf, dout: &Self::Buf, dx: &mut Self::Buf) -> Result<()>;
    /// SRe2L's optional image priors on x (N C H W, [`ImagePrior`]): adds tv_l2 * d(TV-L2)/dx +
    /// l2_scale * d(mean_n ||x_n||)/dx to `grad` and returns tv_l2 * TV-L2 + l2_scale * L2 (waits for
    /// the device). See `ops::image_prior`. Backends without it say so.
    fn image_prior(&self, p: &ImagePrior, x: &Self::Buf, grad: &mut Self::Buf) -> Result<f64> {
        let _ = (p, x, grad);
        Err(crate::error::Error::Option(format!("image priors (--tv-l2, --l2-scale) are not implemented on {}", self.describe())))
    }
    /// Ok when `image_prior` is implemented.
    fn check_image_prior_support(&self) -> Result<()> {
        Err(crate::error::Error::Option(format!("image priors (--tv-l2, --l2-scale) are not implemented on {}", self.describe())))
    }
    /// One Adam step on x (N C hw) with `scalars` (`AdamScalars`), then x[:, c] = clamp(x, lo[c],
    /// hi[c]) ([`AdamClipIo`]).
    fn adam_clip(&self, t: AdamClipIo<'_, Self::Buf>) -> Result<()>;
}

/// The tensors of a train-mode BatchNorm forward over an N C (hw) tensor (`BnProblem`), with the
/// residual add and ReLU fused: batch statistics, the running-statistics update, and the batch mean
/// and 1/std saved for the backward. `T` is the backend's buffer type.
pub struct BnTrainFwd<'a, T: ?Sized> {
    pub y: &'a T,
    pub gamma: &'a T,
    pub beta: &'a T,
    pub running_mean: &'a mut T,
    pub running_var: &'a mut T,
    /// Added after the affine, before the ReLU.
    pub residual: Option<&'a T>,
    pub relu: bool,
    pub out: &'a mut T,
    pub save_mean: &'a mut T,
    pub save_invstd: &'a mut T,
}

/// The tensors of an eval-mode BatchNorm forward (running statistics), residual and ReLU fused.
pub struct BnEvalFwd<'a, T: ?Sized> {
    pub y: &'a T,
    pub gamma: &'a T,
    pub beta: &'a T,
    pub running_mean: &'a T,
    pub running_var: &'a T,
    pub residual: Option<&'a T>,
    pub relu: bool,
    pub out: &'a mut T,
}

/// The tensors of a train-mode BatchNorm backward of the fused op: `dout` (the gradient of `out`)
/// to `dy`, `dgamma`, `dbeta` (overwritten) and, when given, `dresidual` (the ReLU-masked gradient
/// that flows to the residual). `out` is the forward's output; its sign is the ReLU mask.
pub struct BnTrainBwd<'a, T: ?Sized> {
    pub dout: &'a T,
    pub out: &'a T,
    pub relu: bool,
    pub y: &'a T,
    pub gamma: &'a T,
    pub save_mean: &'a T,
    pub save_invstd: &'a T,
    pub dy: &'a mut T,
    pub dgamma: &'a mut T,
    pub dbeta: &'a mut T,
    pub dresidual: Option<&'a mut T>,
}

/// The ops training adds to a recover iteration's (`squeeze`, `relabel`, `validate`): the conv and
/// fc weight gradients, BatchNorm in train and eval mode and its backward, and the optimizer steps.
/// The one training executor (`crate::train::executor::TrainNet`) runs on any backend that has them.
/// Each op's CPU half is `crate::ops::<op>::cpu`, its CUDA half in kernels/<op>*.cu; buffers may be
/// longer than the op needs (ops use their prefix), as in [`Backend`].
pub trait TrainBackend: Backend {
    /// dw = the weight gradient of conv `p` for input `x` and output gradient `dy` (overwrites dw).
    fn conv_wgrad(&self, p: &ConvProblem, x: &Self::Buf, dy: &Self::Buf, dw: &mut Self::Buf) -> Result<()>;
    /// Train-mode BatchNorm forward with momentum `momentum` and `eps`.
    fn bn_fwd_train(&self, p: &BnProblem, momentum: f64, eps: f64, t: BnTrainFwd<'_, Self::Buf>) -> Result<()>;
    /// Eval-mode BatchNorm forward.
    fn bn_fwd_eval(&self, p: &BnProblem, eps: f64, t: BnEvalFwd<'_, Self::Buf>) -> Result<()>;
    /// Train-mode BatchNorm backward.
    fn bn_bwd_train(&self, p: &BnProblem, t: BnTrainBwd<'_, Self::Buf>) -> Result<()>;
    /// fc parameter gradients for `n` rows: dw[out_f x in_f] = dy^T x, db = column sums of dy
    /// (both overwritten).
    fn linear_wgrad(&self, p: &LinearProblem, x: &Self::Buf, dy: &Self::Buf, grads: (&mut Self::Buf, &mut Self::Buf)) -> Result<()>;
    /// One SGD step on one tensor; `first`: the momentum buffer is not initialised yet (PyTorch
    /// makes it from the gradient); `buf` may be None when momentum is 0.
    fn sgd_step(&self, cfg: &SgdConfig, param: &mut Self::Buf, grad: &Self::Buf, buf: Option<&mut Self::Buf>, first: bool) -> Result<()>;
    /// One AdamW step number `step` (1-based) on one tensor with `cfg.weight_decay` (0 for tensors
    /// the recipe excludes); `moments` = (m, v).
    fn adamw_step(&self, cfg: &AdamWConfig, step: u32, param: &mut Self::Buf, grad: &Self::Buf, moments: (&mut Self::Buf, &mut Self::Buf)) -> Result<()>;
}

/// The tensors and numbers of one layer's BN matching (SRe2L's loss term): `stats` = [mean (K),
/// biased var (K)] of the BN input over `count` values per channel, aimed at `target_mean` and
/// `target_var` (the running statistics, or class-wise ones), weighted by `weight` in the total
/// loss. Writes `coef` = [a (K), b (K), mean (K)] for the backward and `losses[slot]` = r.
pub struct BnMatchIo<'a, T: ?Sized> {
    pub stats: &'a T,
    pub target_mean: &'a T,
    pub target_var: &'a T,
    pub count: usize,
    pub weight: f64,
    pub coef: &'a mut T,
    pub losses: &'a mut T,
    pub slot: usize,
}

/// The tensors of the BN-matching backward: `dz` the gradient of the BN output, `y` the BN input,
/// `scale` the eval-mode BN scale, `coef` from [`BnMatchIo`]; `dy` receives the BN input's gradient.
pub struct BnBackwardIo<'a, T: ?Sized> {
    pub dz: &'a T,
    pub y: &'a T,
    pub scale: &'a T,
    pub coef: &'a T,
    pub dy: &'a mut T,
}

/// Softmax cross-entropy over `n` rows of `classes` logits against integer `targets`: the mean
/// loss into `losses[slot]`, its gradient into `dlogits`. `I` is the integer buffer type.
pub struct SoftmaxCeIo<'a, T: ?Sized, I: ?Sized> {
    pub n: usize,
    pub classes: usize,
    pub logits: &'a T,
    pub targets: &'a I,
    pub dlogits: &'a mut T,
    pub losses: &'a mut T,
    pub slot: usize,
}

/// Shape and weights of SRe2L's image priors on an N C H W batch (`tv_l2`: total variation,
/// `l2_scale`: the image norm; see `ops::image_prior`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ImagePrior {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub tv_l2: f64,
    pub l2_scale: f64,
}

/// One Adam step with clipping on images x (N C hw): `scalars` the step's `AdamScalars`, `g` the
/// gradient, `m`/`v` the moments, `lo`/`hi` the per-channel clip bounds.
pub struct AdamClipIo<'a, T: ?Sized> {
    pub n: usize,
    pub c: usize,
    pub hw: usize,
    pub scalars: &'a T,
    pub x: &'a mut T,
    pub g: &'a T,
    pub m: &'a mut T,
    pub v: &'a mut T,
    pub lo: &'a T,
    pub hi: &'a T,
}
