//! Backends supply the ops of one recover iteration over their own buffers; the network executor
//! (`crate::net`) drives them identically. `cpu` always works; `cuda` runs `kernels/*.cu`.

pub mod cpu;
pub mod cuda;

use crate::error::Result;
use crate::ops::conv::{ConvProblem, DgradEpilogue, FpropEpilogue};
use crate::ops::crop_resize::CropResizeProblem;
use crate::ops::pool::PoolProblem;

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
    /// `stats` = [mean, var] of one BN input -> coef = [a, b, mean], losses[slot] = unweighted r.
    #[allow(clippy::too_many_arguments)]
    fn bn_match(
        &self,
        stats: &Self::Buf,
        running_mean: &Self::Buf,
        running_var: &Self::Buf,
        count: usize,
        weight: f64,
        coef: &mut Self::Buf,
        losses: &mut Self::Buf,
        slot: usize,
    ) -> Result<()>;
    /// dy = scale * dz + a + b * (y - mean) over an N C (hw) tensor.
    #[allow(clippy::too_many_arguments)]
    fn bn_backward(&self, n: usize, c: usize, hw: usize, dz: &Self::Buf, y: &Self::Buf, scale: &Self::Buf, coef: &Self::Buf, dy: &mut Self::Buf) -> Result<()>;
    fn maxpool_fwd(&self, p: &PoolProblem, x: &Self::Buf, out: &mut Self::Buf, argmax: &mut Self::IntBuf) -> Result<()>;
    fn maxpool_bwd(&self, p: &PoolProblem, dout: &Self::Buf, argmax: &Self::IntBuf, dx: &mut Self::Buf) -> Result<()>;
    fn avgpool_fwd(&self, nc: usize, hw: usize, x: &Self::Buf, out: &mut Self::Buf) -> Result<()>;
    /// dx = dout / hw broadcast, masked by (x > 0).
    fn avgpool_bwd(&self, nc: usize, hw: usize, dout: &Self::Buf, x: &Self::Buf, dx: &mut Self::Buf) -> Result<()>;
    #[allow(clippy::too_many_arguments)]
    fn linear_fwd(&self, n: usize, in_f: usize, out_f: usize, x: &Self::Buf, w: &Self::Buf, b: &Self::Buf, y: &mut Self::Buf) -> Result<()>;
    fn linear_bwd_data(&self, n: usize, in_f: usize, out_f: usize, dy: &Self::Buf, w: &Self::Buf, dx: &mut Self::Buf) -> Result<()>;
    /// Mean cross-entropy into losses[slot], its gradient into dlogits.
    #[allow(clippy::too_many_arguments)]
    fn softmax_ce(
        &self,
        n: usize,
        classes: usize,
        logits: &Self::Buf,
        targets: &Self::IntBuf,
        dlogits: &mut Self::Buf,
        losses: &mut Self::Buf,
        slot: usize,
    ) -> Result<()>;
    /// `params`: 8 int32 per image (`CropParams`).
    fn crop_resize_fwd(&self, p: &CropResizeProblem, params: &Self::IntBuf, x: &Self::Buf, out: &mut Self::Buf) -> Result<()>;
    fn crop_resize_bwd(&self, p: &CropResizeProblem, params: &Self::IntBuf, dout: &Self::Buf, dx: &mut Self::Buf) -> Result<()>;
    /// SRe2L's optional image priors on x (N C H W): adds tv_l2 * d(TV-L2)/dx + l2_scale * d(mean_n ||x_n||)/dx
    /// to `grad` and returns tv_l2 * TV-L2 + l2_scale * L2 (waits for the device). See `ops::image_prior`.
    #[allow(clippy::too_many_arguments)]
    fn image_prior(&self, _n: usize, _c: usize, _h: usize, _w: usize, _x: &Self::Buf, _tv_l2: f64, _l2_scale: f64, _grad: &mut Self::Buf) -> Result<f64> {
        Err(crate::error::Error::Option(format!("image priors (--tv-l2, --l2-scale) are not implemented on {}", self.describe())))
    }
    /// Ok when `image_prior` is implemented.
    fn check_image_prior_support(&self) -> Result<()> {
        Err(crate::error::Error::Option(format!("image priors (--tv-l2, --l2-scale) are not implemented on {}", self.describe())))
    }
    /// One Adam step on x (N C hw) with `scalars` (`AdamScalars`), then x[:, c] = clamp(x, lo[c], hi[c]).
    #[allow(clippy::too_many_arguments)]
    fn adam_clip(
        &self,
        n: usize,
        c: usize,
        hw: usize,
        scalars: &Self::Buf,
        x: &mut Self::Buf,
        g: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        lo: &Self::Buf,
        hi: &Self::Buf,
    ) -> Result<()>;
}
