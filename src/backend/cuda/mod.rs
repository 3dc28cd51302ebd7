//! The CUDA backend: every op of a recover iteration as a launch of the kernels in kernels/*.cu.
//!
//! `CudaBackend<D>` is generic over the [`CudaDevice`] it launches on: [`GpuDevice`] (a real GPU through
//! cudarc, kernels from the PTX build.rs embedded) or [`EmuDevice`] (the same kernel sources compiled for
//! the host). Grid shapes, argument packing, buffer checks and epilogue selection live here once, so
//! the emulated tests exercise the launch path a GPU runs.
//!
//! - Buffers are allocated by the caller once (`alloc`); the backend itself owns one float64 workspace
//!   (conv statistics partials, per-row losses) that grows on first use and must not grow while a graph
//!   is being captured (run one iteration before capturing).
//! - Convolutions run version 2 (TF32 tensor cores) by default; [`ConvVersion::Fp32`] (version 1, CUDA
//!   cores) is selectable with [`CudaBackend::set_conv_version`] (`cda-engine bench --conv-version`). Dgrad into
//!   at most 4 channels (the input image) always runs a direct fp32 kernel.
//! - A whole recover iteration can be captured as a graph ([`CudaBackend::capture`]) and replayed;
//!   per-iteration inputs (crop parameters, Adam scalars) are uploaded into their buffers between
//!   replays. Independent batches can run concurrently on forked backends ([`CudaBackend::fork`]),
//!   one stream each.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Mutex;

use super::{AdamClipIo, Backend, BnBackwardIo, BnMatchIo, ImagePrior, LinearProblem, SoftmaxCeIo};
use crate::error::{Error, Result};
use crate::ops::adam::AdamArgs;
use crate::ops::batchnorm::BnProblem;
use crate::ops::bn_match::{BnBackwardArgs, BnMatchArgs};
use crate::ops::conv::{ConvDgradArgs, ConvFpropArgs, ConvStatsArgs};
use crate::ops::conv::{ConvProblem, DgradEpilogue, FpropEpilogue};
use crate::ops::crop_resize::CropResizeProblem;
use crate::ops::image_prior::ImagePriorArgs;
use crate::ops::pool::PoolProblem;
use crate::ops::softmax_ce::SoftmaxCeArgs;
use emulation::EmuDevice;
use runtime::{ids, CudaDevice, GpuDevice, KernelArgs, KernelId, LaunchConfig};

pub mod emulation;
mod params;
pub mod probe;
pub mod runtime;
mod train;

/// Which convolution kernels run (see kernels/conv.cuh).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ConvVersion {
    /// Version 1: fp32 FMA on CUDA cores.
    Fp32 = 1,
    /// Version 2: TF32 tensor cores (mma.sync.m16n8k8), fp32 accumulation.
    Tf32 = 2,
}

/// Which crop_resize backward runs (see kernels/crop_resize.cu).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CropBackwardVersion {
    /// Version 1: scatter with atomicAdd into a zeroed gradient.
    Scatter = 1,
    /// Version 2: deterministic gather.
    Gather = 2,
}

/// Rows (GEMM_M) and columns (GEMM_N) of one conv CTA tile, as in kernels/conv.cuh.
pub const CONV_TILE_M: usize = 64;
pub const CONV_TILE_N: usize = 64;
const CONV_THREADS: u32 = 128;
/// Input channels up to which conv dgrad runs the direct kernel instead of the implicit GEMM
/// (`conv_dgrad_direct_f32`: the input-image gradient, where a 64-wide GEMM_N tile would be mostly
/// padding and stride 2 makes 3 of 4 taps zero).
pub const CONV_DIRECT_DGRAD_MAX_C: usize = 4;
const THREADS: u32 = 256;

/// A float buffer on the device.
pub struct CudaBuf<D: CudaDevice> {
    mem: D::Mem,
    len: usize,
}

/// An int32 buffer on the device; keeps a copy of what the host last uploaded into it (targets are
/// checked against it), forgotten when a kernel writes the buffer.
pub struct CudaIntBuf<D: CudaDevice> {
    mem: D::Mem,
    len: usize,
    uploaded: Option<Vec<i32>>,
}

impl<D: CudaDevice> CudaBuf<D> {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}
impl<D: CudaDevice> CudaIntBuf<D> {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

struct Workspace<D: CudaDevice> {
    mem: Option<D::Mem>,
    bytes: usize,
    /// Outgrown allocations, kept until the backend drops: a graph captured earlier holds their
    /// addresses and replays its launches into them (another recover state, e.g. a resolution stage
    /// of another size, may grow the workspace after a smaller one recorded its graph). At most
    /// about as much again as the current one, since each growth at least doubles.
    retired: Vec<D::Mem>,
}

pub struct CudaBackend<D: CudaDevice> {
    dev: D,
    conv_version: AtomicU8,
    crop_bwd_version: AtomicU8,
    capturing: AtomicBool,
    workspace: Mutex<Workspace<D>>,
}

/// The emulated backend used by the tests.
pub type EmulatedBackend = CudaBackend<EmuDevice>;
/// The GPU backend.
pub type GpuBackend = CudaBackend<GpuDevice>;

impl CudaBackend<GpuDevice> {
    /// The CUDA backend on GPU `ordinal`. Errors say what is missing: driver, device, sm_80, PTX.
    pub fn new(ordinal: usize) -> Result<Self> {
        Self::on(GpuDevice::new(ordinal)?)
    }

    /// A backend on a new stream of the same GPU (shared kernels, own workspace): run an independent
    /// batch on it concurrently. Buffers belong to the backend that allocated them.
    pub fn fork(&self) -> Result<Self> {
        let b = Self::on(self.dev.fork()?)?;
        b.set_conv_version(self.conv_version());
        b.set_crop_backward_version(self.crop_backward_version());
        Ok(b)
    }
}

impl CudaBackend<EmuDevice> {
    /// The CUDA backend on the host emulation of the kernels.
    pub fn emulated() -> Result<Self> {
        Self::on(EmuDevice::new()?)
    }
}

fn check_len(what: &str, have: usize, need: usize) -> Result<()> {
    if have < need {
        Err(Error::input(what, format!("buffer of {have} elements, the op needs {need}")))
    } else {
        Ok(())
    }
}

fn to_i32(what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::input(what, format!("{v} does not fit the kernels' 32-bit sizes")))
}

/// 1-D grid of `threads`-wide blocks covering `total` elements.
fn grid_1d(total: usize, threads: u32) -> Result<LaunchConfig> {
    let blocks = total.div_ceil(threads as usize);
    let blocks = u32::try_from(blocks)
        .ok()
        .filter(|&b| b <= i32::MAX as u32)
        .ok_or_else(|| Error::input("launch", format!("{total} elements are too many for one grid")))?;
    Ok(LaunchConfig { grid: [blocks, 1, 1], block: [threads, 1, 1], shared_bytes: 0 })
}

impl<D: CudaDevice> CudaBackend<D> {
    /// The backend on any device.
    pub fn on(dev: D) -> Result<Self> {
        Ok(CudaBackend {
            dev,
            conv_version: AtomicU8::new(ConvVersion::Tf32 as u8),
            crop_bwd_version: AtomicU8::new(CropBackwardVersion::Gather as u8),
            capturing: AtomicBool::new(false),
            workspace: Mutex::new(Workspace { mem: None, bytes: 0, retired: Vec::new() }),
        })
    }

    pub fn device(&self) -> &D {
        &self.dev
    }

    pub fn conv_version(&self) -> ConvVersion {
        if self.conv_version.load(Ordering::Relaxed) == 1 {
            ConvVersion::Fp32
        } else {
            ConvVersion::Tf32
        }
    }
    pub fn set_conv_version(&self, v: ConvVersion) {
        self.conv_version.store(v as u8, Ordering::Relaxed);
    }
    pub fn crop_backward_version(&self) -> CropBackwardVersion {
        if self.crop_bwd_version.load(Ordering::Relaxed) == 1 {
            CropBackwardVersion::Scatter
        } else {
            CropBackwardVersion::Gather
        }
    }
    pub fn set_crop_backward_version(&self, v: CropBackwardVersion) {
        self.crop_bwd_version.store(v as u8, Ordering::Relaxed);
    }

    /// Starts recording every following op into a graph instead of running it. Uploads and downloads
    /// fail until [`end_capture`](Self::end_capture).
    pub fn begin_capture(&self) -> Result<()> {
        self.dev.begin_capture()?;
        self.capturing.store(true, Ordering::Relaxed);
        Ok(())
    }
    pub fn end_capture(&self) -> Result<D::Graph> {
        self.capturing.store(false, Ordering::Relaxed);
        self.dev.end_capture()
    }
    /// Records the ops `f` issues as a graph (capture always ends, also when `f` fails).
    pub fn capture(&self, f: impl FnOnce(&Self) -> Result<()>) -> Result<D::Graph> {
        self.begin_capture()?;
        let issued = f(self);
        let graph = self.end_capture();
        issued?;
        graph
    }
    /// Runs a captured graph on this backend's stream.
    pub fn replay(&self, graph: &D::Graph) -> Result<()> {
        self.dev.replay(graph)
    }

    fn launch(&self, kernel: KernelId, cfg: LaunchConfig, args: &KernelArgs) -> Result<()> {
        cfg.validate(kernel)?;
        // SAFETY: every call site packs exactly the parameters of `kernel` (the structs are mirrored and
        // size-checked in the .cu files) and checked each buffer's length against what the launch reads
        // and writes, so every address points into a live allocation of sufficient size.
        unsafe { self.dev.launch(kernel, &cfg, args) }
    }

    /// Address of a float64 workspace of at least `doubles` elements (grown outside graph capture).
    fn workspace(&self, doubles: usize) -> Result<u64> {
        let bytes = doubles.max(1) * 8;
        let mut ws = self.workspace.lock().unwrap_or_else(|e| e.into_inner());
        if ws.bytes < bytes || ws.mem.is_none() {
            if self.capturing.load(Ordering::Relaxed) {
                return Err(Error::Cuda(format!(
                    "the backend's workspace must grow to {bytes} bytes during graph capture: run the captured work once before capturing"
                )));
            }
            let grown = bytes.max(ws.bytes * 2);
            let new = self.dev.alloc_zeroed(grown)?;
            if let Some(old) = ws.mem.replace(new) {
                ws.retired.push(old);
            }
            ws.bytes = grown;
        }
        Ok(self.dev.address(ws.mem.as_ref().unwrap()))
    }

    /// The first `dst.len()` float64 values of the workspace (waits for queued work).
    fn read_workspace(&self, dst: &mut [f64]) -> Result<()> {
        let ws = self.workspace.lock().unwrap_or_else(|e| e.into_inner());
        let mem = ws.mem.as_ref().ok_or_else(|| Error::Cuda("the workspace was never allocated".into()))?;
        self.dev.dtoh(mem, bytemuck::cast_slice_mut(dst))
    }

    fn addr(&self, b: &CudaBuf<D>) -> u64 {
        self.dev.address(&b.mem)
    }
    fn addr_int(&self, b: &CudaIntBuf<D>) -> u64 {
        self.dev.address(&b.mem)
    }

    /// Runs the tiled TF32 `mma.sync` GEMM check kernel: c[m x n] = a[m x k] * b[k x n] (row-major), with
    /// operands rounded to TF32 (kernels/mma_check.cu). For testing the mma fragment layout.
    pub fn mma_check_gemm(&self, m: usize, n: usize, k: usize, a: &CudaBuf<D>, b: &CudaBuf<D>, c: &mut CudaBuf<D>) -> Result<()> {
        check_len("mma a", a.len, m * k)?;
        check_len("mma b", b.len, k * n)?;
        check_len("mma c", c.len, m * n)?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        let mut args = KernelArgs::new();
        args.push(to_i32("m", m)?).push(to_i32("n", n)?).push(to_i32("k", k)?).push(self.addr(a)).push(self.addr(b)).push(self.addr(c));
        let cfg = LaunchConfig { grid: [m.div_ceil(16) as u32, n.div_ceil(8) as u32, 1], block: [32, 1, 1], shared_bytes: 0 };
        self.launch(ids::MMA_CHECK_TF32, cfg, &args)
    }
}

/// Results of the shim check kernels (kernels/shim_check.cu).
pub struct ShimCheck {
    /// 6 x 64 values of shim_check_warp_f32.
    pub warp: Vec<f32>,
    /// 6 blocks x 64 values: shared-memory read-back, and the late writes of non-returning threads.
    pub block: Vec<f32>,
    pub late: Vec<f32>,
    pub counter: i32,
    pub fsum: f32,
    pub dsum: f64,
}

impl<D: CudaDevice> CudaBackend<D> {
    /// Runs kernels/shim_check.cu (for tests of the host emulation against the hardware).
    pub fn shim_check(&self) -> Result<ShimCheck> {
        let warp = self.alloc(6 * 64)?;
        let block = self.alloc(6 * 64)?;
        let late = self.alloc(6 * 64)?;
        let counter = self.alloc_int(1)?;
        let fsum = self.alloc(1)?;
        let dsum = self.dev.alloc_zeroed(8)?;
        let mut args = KernelArgs::new();
        args.push(self.addr(&warp));
        self.launch(ids::SHIM_CHECK_WARP_F32, LaunchConfig { grid: [1, 1, 1], block: [64, 1, 1], shared_bytes: 0 }, &args)?;
        let mut args = KernelArgs::new();
        args.push(self.addr(&block)).push(self.addr(&late)).push(self.addr_int(&counter)).push(self.addr(&fsum)).push(self.dev.address(&dsum));
        self.launch(ids::SHIM_CHECK_BLOCK, LaunchConfig { grid: [3, 2, 1], block: [8, 4, 2], shared_bytes: 64 * 4 }, &args)?;
        let get = |b: &CudaBuf<D>, len: usize| -> Result<Vec<f32>> {
            let mut v = vec![0.0; len];
            self.download(b, &mut v)?;
            Ok(v)
        };
        let mut c = [0i32];
        self.download_int(&counter, &mut c)?;
        let mut d = [0f64];
        self.dev.dtoh(&dsum, bytemuck::cast_slice_mut(&mut d))?;
        Ok(ShimCheck { warp: get(&warp, 6 * 64)?, block: get(&block, 6 * 64)?, late: get(&late, 6 * 64)?, counter: c[0], fsum: get(&fsum, 1)?[0], dsum: d[0] })
    }
}

impl<D: CudaDevice> Backend for CudaBackend<D> {
    type Buf = CudaBuf<D>;
    type IntBuf = CudaIntBuf<D>;
    type Graph = D::Graph;

    fn describe(&self) -> String {
        self.dev.describe()
    }

    fn alloc(&self, len: usize) -> Result<CudaBuf<D>> {
        Ok(CudaBuf { mem: self.dev.alloc_zeroed(len * 4)?, len })
    }

    fn alloc_int(&self, len: usize) -> Result<CudaIntBuf<D>> {
        Ok(CudaIntBuf { mem: self.dev.alloc_zeroed(len * 4)?, len, uploaded: None })
    }

    /// Writes `src` to the start of `dst` (a shorter `src` fills a prefix).
    fn upload(&self, src: &[f32], dst: &mut CudaBuf<D>) -> Result<()> {
        check_len("upload destination", dst.len, src.len())?;
        self.dev.htod(bytemuck::cast_slice(src), &dst.mem)
    }

    fn upload_int(&self, src: &[i32], dst: &mut CudaIntBuf<D>) -> Result<()> {
        check_len("upload destination", dst.len, src.len())?;
        self.dev.htod(bytemuck::cast_slice(src), &dst.mem)?;
        dst.uploaded = Some(src.to_vec());
        Ok(())
    }

    /// Reads the first `dst.len()` elements of `src` after all queued work.
    fn download(&self, src: &CudaBuf<D>, dst: &mut [f32]) -> Result<()> {
        check_len("download source", src.len, dst.len())?;
        self.dev.dtoh(&src.mem, bytemuck::cast_slice_mut(dst))
    }

    fn download_int(&self, src: &CudaIntBuf<D>, dst: &mut [i32]) -> Result<()> {
        check_len("download source", src.len, dst.len())?;
        self.dev.dtoh(&src.mem, bytemuck::cast_slice_mut(dst))
    }

    fn capture_graph(&self, issue: impl FnOnce(&Self) -> Result<()>) -> Result<Option<D::Graph>> {
        self.capture(issue).map(Some)
    }

    fn replay_graph(&self, graph: &D::Graph) -> Result<()> {
        self.replay(graph)
    }

    fn synchronize(&self) -> Result<()> {
        self.dev.synchronize()
    }

    fn conv_fprop(&self, p: &ConvProblem, x: &CudaBuf<D>, w: &CudaBuf<D>, epi: FpropEpilogue<'_, CudaBuf<D>>, out: &mut CudaBuf<D>) -> Result<()> {
        let (il, ol, k) = (p.input_len(), p.output_len(), p.k as usize);
        check_len("conv fprop x", x.len, il)?;
        check_len("conv fprop w", w.len, p.weight_len())?;
        check_len("conv fprop out", out.len, ol)?;
        check_len("conv fprop bn mean", epi.bn.mean.len, k)?;
        check_len("conv fprop bn scale", epi.bn.scale.len, k)?;
        check_len("conv fprop bn beta", epi.bn.beta.len, k)?;
        if let Some(r) = epi.residual {
            check_len("conv fprop residual", r.len, ol)?;
        }
        if let Some(y) = epi.y.as_deref() {
            check_len("conv fprop y", y.len, ol)?;
        }
        if let Some(s) = epi.stats.as_deref() {
            check_len("conv fprop stats", s.len, 2 * k)?;
        }
        let m = p.n as usize * p.p as usize * p.q as usize;
        if m == 0 || k == 0 {
            return Ok(());
        }
        to_i32("conv GEMM_M", m)?;
        let tiles_m = m.div_ceil(CONV_TILE_M);
        let tiles_n = k.div_ceil(CONV_TILE_N);
        let partial = match epi.stats {
            Some(_) => self.workspace(2 * k * tiles_m)?,
            None => 0,
        };
        let a = ConvFpropArgs {
            x: self.addr(x),
            w: self.addr(w),
            out: self.addr(out),
            y: epi.y.as_deref().map_or(0, |y| self.addr(y)),
            residual: epi.residual.map_or(0, |r| self.addr(r)),
            bn_mean: self.addr(epi.bn.mean),
            bn_scale: self.addr(epi.bn.scale),
            bn_beta: self.addr(epi.bn.beta),
            stats_partial: partial,
            relu: epi.relu as i32,
            tiles_m: to_i32("conv tiles", tiles_m)?,
        };
        let mut args = KernelArgs::new();
        args.push(*p).push(a);
        let kernel = match self.conv_version() {
            ConvVersion::Fp32 => ids::CONV_FPROP_V1_F32,
            ConvVersion::Tf32 => ids::CONV_FPROP_V2_TF32,
        };
        let cfg = LaunchConfig { grid: [tiles_m as u32, tiles_n as u32, 1], block: [CONV_THREADS, 1, 1], shared_bytes: 0 };
        self.launch(kernel, cfg, &args)?;
        if let Some(stats) = epi.stats {
            let s = ConvStatsArgs { partial, stats: self.addr(stats), count: m as f64, k: p.k, tiles_m: a.tiles_m };
            let mut args = KernelArgs::new();
            args.push(s);
            let cfg = LaunchConfig { grid: [k as u32, 1, 1], block: [THREADS, 1, 1], shared_bytes: 0 };
            self.launch(ids::CONV_STATS_FINALIZE_F32, cfg, &args)?;
        }
        Ok(())
    }

    fn conv_dgrad(
        &self,
        p: &ConvProblem,
        dy: &CudaBuf<D>,
        w: &CudaBuf<D>,
        x: &CudaBuf<D>,
        epi: DgradEpilogue<'_, CudaBuf<D>>,
        dx: &mut CudaBuf<D>,
    ) -> Result<()> {
        let (il, ol, c) = (p.input_len(), p.output_len(), p.c as usize);
        check_len("conv dgrad dy", dy.len, ol)?;
        check_len("conv dgrad w", w.len, p.weight_len())?;
        check_len("conv dgrad x", x.len, il)?;
        check_len("conv dgrad dx", dx.len, il)?;
        let mut a = ConvDgradArgs { dy: self.addr(dy), w: self.addr(w), x: self.addr(x), dx: self.addr(dx), ..Default::default() };
        match epi {
            DgradEpilogue::Store => a.mode = 0,
            DgradEpilogue::MaskInput { add, accumulate } => {
                a.mode = 1;
                a.accumulate = accumulate as i32;
                if let Some(add) = add {
                    check_len("conv dgrad add", add.len, il)?;
                    a.add = self.addr(add);
                }
            }
            DgradEpilogue::BnRelu { y_prev, scale, coef } => {
                check_len("conv dgrad y_prev", y_prev.len, il)?;
                check_len("conv dgrad scale", scale.len, c)?;
                check_len("conv dgrad coef", coef.len, 3 * c)?;
                a.mode = 2;
                a.y_prev = self.addr(y_prev);
                a.scale = self.addr(scale);
                a.coef = self.addr(coef);
            }
        }
        let m = p.n as usize * p.h as usize * p.w as usize;
        if m == 0 || c == 0 {
            return Ok(());
        }
        to_i32("conv dgrad GEMM_M", m)?;
        let mut args = KernelArgs::new();
        args.push(*p).push(a);
        if c <= CONV_DIRECT_DGRAD_MAX_C {
            // Few input channels (the input image): the direct kernel, fp32 in both versions.
            return self.launch(ids::CONV_DGRAD_DIRECT_F32, grid_1d(m, THREADS)?, &args);
        }
        let kernel = match self.conv_version() {
            ConvVersion::Fp32 => ids::CONV_DGRAD_V1_F32,
            ConvVersion::Tf32 => ids::CONV_DGRAD_V2_TF32,
        };
        let cfg = LaunchConfig { grid: [m.div_ceil(CONV_TILE_M) as u32, c.div_ceil(CONV_TILE_N) as u32, 1], block: [CONV_THREADS, 1, 1], shared_bytes: 0 };
        self.launch(kernel, cfg, &args)
    }

    fn bn_match(&self, t: BnMatchIo<'_, CudaBuf<D>>) -> Result<()> {
        let BnMatchIo { stats, target_mean: running_mean, target_var: running_var, count, weight, coef, losses, slot } = t;
        let k = running_mean.len;
        check_len("bn_match stats", stats.len, 2 * k)?;
        check_len("bn_match running_var", running_var.len, k)?;
        check_len("bn_match coef", coef.len, 3 * k)?;
        check_len("bn_match losses", losses.len, slot + 1)?;
        let a = BnMatchArgs {
            stats: self.addr(stats),
            running_mean: self.addr(running_mean),
            running_var: self.addr(running_var),
            coef: self.addr(coef),
            losses: self.addr(losses),
            count: count as f64,
            weight,
            k: to_i32("bn channels", k)?,
            slot: to_i32("loss slot", slot)?,
        };
        let mut args = KernelArgs::new();
        args.push(a);
        self.launch(ids::BN_MATCH_F32, LaunchConfig { grid: [1, 1, 1], block: [THREADS, 1, 1], shared_bytes: 0 }, &args)
    }

    fn bn_backward(&self, p: &BnProblem, t: BnBackwardIo<'_, CudaBuf<D>>) -> Result<()> {
        let BnProblem { n, c, hw } = *p;
        let BnBackwardIo { dz, y, scale, coef, dy } = t;
        let len = n * c * hw;
        check_len("bn_backward dz", dz.len, len)?;
        check_len("bn_backward y", y.len, len)?;
        check_len("bn_backward scale", scale.len, c)?;
        check_len("bn_backward coef", coef.len, 3 * c)?;
        check_len("bn_backward dy", dy.len, len)?;
        if len == 0 {
            return Ok(());
        }
        let a = BnBackwardArgs {
            dz: self.addr(dz),
            y: self.addr(y),
            scale: self.addr(scale),
            coef: self.addr(coef),
            dy: self.addr(dy),
            n: to_i32("n", n)?,
            c: to_i32("c", c)?,
            hw: to_i32("hw", hw)?,
            reserved: 0,
        };
        let mut args = KernelArgs::new();
        args.push(a);
        self.launch(ids::BN_BACKWARD_F32, grid_1d(len, THREADS)?, &args)
    }

    fn maxpool_fwd(&self, p: &PoolProblem, x: &CudaBuf<D>, out: &mut CudaBuf<D>, argmax: &mut CudaIntBuf<D>) -> Result<()> {
        let (il, ol) = (p.input_len(), p.output_len());
        check_len("maxpool x", x.len, il)?;
        check_len("maxpool out", out.len, ol)?;
        check_len("maxpool argmax", argmax.len, ol)?;
        if p.window <= p.pad || p.stride < 1 {
            return Err(Error::input("maxpool", format!("window {} / stride {} / pad {}: padding must be smaller than the window", p.window, p.stride, p.pad)));
        }
        argmax.uploaded = None;
        if ol == 0 {
            return Ok(());
        }
        let mut args = KernelArgs::new();
        args.push(*p).push(self.addr(x)).push(self.addr(out)).push(self.addr_int(argmax));
        self.launch(ids::MAXPOOL_FWD_F32, grid_1d(ol, THREADS)?, &args)
    }

    fn maxpool_bwd(&self, p: &PoolProblem, dout: &CudaBuf<D>, argmax: &CudaIntBuf<D>, dx: &mut CudaBuf<D>) -> Result<()> {
        let (il, ol) = (p.input_len(), p.output_len());
        check_len("maxpool dout", dout.len, ol)?;
        check_len("maxpool argmax", argmax.len, ol)?;
        check_len("maxpool dx", dx.len, il)?;
        if il == 0 {
            return Ok(());
        }
        let mut args = KernelArgs::new();
        args.push(*p).push(self.addr(dout)).push(self.addr_int(argmax)).push(self.addr(dx));
        self.launch(ids::MAXPOOL_BWD_F32, grid_1d(il, THREADS)?, &args)
    }

    fn avgpool_fwd(&self, nc: usize, hw: usize, x: &CudaBuf<D>, out: &mut CudaBuf<D>) -> Result<()> {
        check_len("avgpool x", x.len, nc * hw)?;
        check_len("avgpool out", out.len, nc)?;
        if nc == 0 {
            return Ok(());
        }
        let mut args = KernelArgs::new();
        args.push(to_i32("nc", nc)?).push(to_i32("hw", hw)?).push(self.addr(x)).push(self.addr(out));
        // One warp per plane.
        self.launch(ids::AVGPOOL_FWD_F32, grid_1d(nc * 32, THREADS)?, &args)
    }

    fn avgpool_bwd(&self, nc: usize, hw: usize, dout: &CudaBuf<D>, x: &CudaBuf<D>, dx: &mut CudaBuf<D>) -> Result<()> {
        check_len("avgpool dout", dout.len, nc)?;
        check_len("avgpool x", x.len, nc * hw)?;
        check_len("avgpool dx", dx.len, nc * hw)?;
        if nc * hw == 0 {
            return Ok(());
        }
        let mut args = KernelArgs::new();
        args.push(to_i32("nc", nc)?).push(to_i32("hw", hw)?).push(self.addr(dout)).push(self.addr(x)).push(self.addr(dx));
        self.launch(ids::AVGPOOL_BWD_F32, grid_1d(nc * hw, THREADS)?, &args)
    }

    fn linear_fwd(&self, p: &LinearProblem, x: &CudaBuf<D>, w: &CudaBuf<D>, b: &CudaBuf<D>, y: &mut CudaBuf<D>) -> Result<()> {
        let LinearProblem { n, in_f, out_f } = *p;
        check_len("linear x", x.len, n * in_f)?;
        check_len("linear w", w.len, in_f * out_f)?;
        check_len("linear b", b.len, out_f)?;
        check_len("linear y", y.len, n * out_f)?;
        if n * out_f == 0 {
            return Ok(());
        }
        let mut args = KernelArgs::new();
        args.push(to_i32("n", n)?).push(to_i32("in_f", in_f)?).push(to_i32("out_f", out_f)?);
        args.push(self.addr(x)).push(self.addr(w)).push(self.addr(b)).push(self.addr(y));
        // One warp per output element.
        self.launch(ids::LINEAR_FWD_F32, grid_1d(n * out_f * 32, THREADS)?, &args)
    }

    fn linear_bwd_data(&self, p: &LinearProblem, dy: &CudaBuf<D>, w: &CudaBuf<D>, dx: &mut CudaBuf<D>) -> Result<()> {
        let LinearProblem { n, in_f, out_f } = *p;
        check_len("linear dy", dy.len, n * out_f)?;
        check_len("linear w", w.len, in_f * out_f)?;
        check_len("linear dx", dx.len, n * in_f)?;
        if n * in_f == 0 {
            return Ok(());
        }
        let mut args = KernelArgs::new();
        args.push(to_i32("n", n)?).push(to_i32("in_f", in_f)?).push(to_i32("out_f", out_f)?);
        args.push(self.addr(dy)).push(self.addr(w)).push(self.addr(dx));
        self.launch(ids::LINEAR_BWD_DATA_F32, grid_1d(n * in_f, THREADS)?, &args)
    }

    fn softmax_ce(&self, t: SoftmaxCeIo<'_, CudaBuf<D>, CudaIntBuf<D>>) -> Result<()> {
        let SoftmaxCeIo { n, classes, logits, targets, dlogits, losses, slot } = t;
        check_len("softmax_ce logits", logits.len, n * classes)?;
        check_len("softmax_ce targets", targets.len, n)?;
        check_len("softmax_ce dlogits", dlogits.len, n * classes)?;
        check_len("softmax_ce losses", losses.len, slot + 1)?;
        // Targets the host uploaded are checked like the CPU backend does; targets a kernel wrote give
        // NaN losses and gradients instead.
        if let Some(t) = targets.uploaded.as_ref().and_then(|u| u.get(..n)).and_then(|u| u.iter().find(|&&t| t < 0 || t as usize >= classes)) {
            return Err(Error::input("targets", format!("class {t} is outside 0..{classes}")));
        }
        if n == 0 {
            return Err(Error::input("softmax_ce", "a batch of 0 images has no mean loss"));
        }
        let a = SoftmaxCeArgs {
            logits: self.addr(logits),
            targets: self.addr_int(targets),
            dlogits: self.addr(dlogits),
            row_loss: self.workspace(n)?,
            losses: self.addr(losses),
            n: to_i32("n", n)?,
            classes: to_i32("classes", classes)?,
            slot: to_i32("slot", slot)?,
            reserved: 0,
        };
        let mut args = KernelArgs::new();
        args.push(a);
        let rows = u32::try_from(n).map_err(|_| Error::input("softmax_ce", "too many rows"))?;
        self.launch(ids::SOFTMAX_CE_ROWS_F32, LaunchConfig { grid: [rows, 1, 1], block: [THREADS, 1, 1], shared_bytes: 0 }, &args)?;
        self.launch(ids::SOFTMAX_CE_FINALIZE_F32, LaunchConfig { grid: [1, 1, 1], block: [THREADS, 1, 1], shared_bytes: 0 }, &args)
    }

    fn crop_resize_fwd(&self, p: &CropResizeProblem, params: &CudaIntBuf<D>, x: &CudaBuf<D>, out: &mut CudaBuf<D>) -> Result<()> {
        let len = p.len();
        check_len("crop params", params.len, 8 * p.n as usize)?;
        check_len("crop_resize x", x.len, len)?;
        check_len("crop_resize out", out.len, len)?;
        if len == 0 {
            return Ok(());
        }
        let mut args = KernelArgs::new();
        args.push(*p).push(self.addr_int(params)).push(self.addr(x)).push(self.addr(out));
        self.launch(ids::CROP_RESIZE_FWD_F32, grid_1d(len, THREADS)?, &args)
    }

    fn crop_resize_bwd(&self, p: &CropResizeProblem, params: &CudaIntBuf<D>, dout: &CudaBuf<D>, dx: &mut CudaBuf<D>) -> Result<()> {
        let len = p.len();
        check_len("crop params", params.len, 8 * p.n as usize)?;
        check_len("crop_resize dout", dout.len, len)?;
        check_len("crop_resize dx", dx.len, len)?;
        if len == 0 {
            return Ok(());
        }
        let mut args = KernelArgs::new();
        args.push(*p).push(self.addr_int(params)).push(self.addr(dout)).push(self.addr(dx));
        match self.crop_backward_version() {
            CropBackwardVersion::Gather => self.launch(ids::CROP_RESIZE_BWD_GATHER_F32, grid_1d(len, THREADS)?, &args),
            CropBackwardVersion::Scatter => {
                self.dev.memset_zero(&dx.mem, len * 4)?;
                self.launch(ids::CROP_RESIZE_BWD_F32, grid_1d(len, THREADS)?, &args)
            }
        }
    }

    fn image_prior(&self, p: &ImagePrior, x: &CudaBuf<D>, grad: &mut CudaBuf<D>) -> Result<f64> {
        let ImagePrior { n, c, h, w, tv_l2, l2_scale } = *p;
        let len = n * c * h * w;
        check_len("image prior x", x.len, len)?;
        check_len("image prior grad", grad.len, len)?;
        if len == 0 || !(tv_l2 > 0.0 || l2_scale > 0.0) {
            return Ok(0.0);
        }
        let a = ImagePriorArgs {
            x: self.addr(x),
            grad: self.addr(grad),
            ws: self.workspace(5 + n + 5 * n * c)?,
            tv_l2,
            l2_scale,
            n: to_i32("n", n)?,
            c: to_i32("c", c)?,
            h: to_i32("h", h)?,
            w: to_i32("w", w)?,
        };
        let mut args = KernelArgs::new();
        args.push(a);
        let planes = u32::try_from(n * c).map_err(|_| Error::input("image prior", "too many planes"))?;
        self.launch(ids::IMAGE_PRIOR_PARTIALS_F64, LaunchConfig { grid: [planes, 1, 1], block: [THREADS, 1, 1], shared_bytes: 0 }, &args)?;
        self.launch(ids::IMAGE_PRIOR_NORMS_F64, LaunchConfig { grid: [1, 1, 1], block: [THREADS, 1, 1], shared_bytes: 0 }, &args)?;
        self.launch(ids::IMAGE_PRIOR_GRAD_F32, grid_1d(len, THREADS)?, &args)?;
        let mut loss = [0f64];
        self.read_workspace(&mut loss)?;
        Ok(loss[0])
    }

    fn check_image_prior_support(&self) -> Result<()> {
        Ok(())
    }

    fn adam_clip(&self, t: AdamClipIo<'_, CudaBuf<D>>) -> Result<()> {
        let AdamClipIo { n, c, hw, scalars, x, g, m, v, lo, hi } = t;
        let len = n * c * hw;
        check_len("adam scalars", scalars.len, crate::ops::adam::AdamScalars::LEN)?;
        check_len("adam x", x.len, len)?;
        check_len("adam g", g.len, len)?;
        check_len("adam m", m.len, len)?;
        check_len("adam v", v.len, len)?;
        check_len("adam lo", lo.len, c)?;
        check_len("adam hi", hi.len, c)?;
        if len == 0 {
            return Ok(());
        }
        let a = AdamArgs {
            scalars: self.addr(scalars),
            x: self.addr(x),
            g: self.addr(g),
            m: self.addr(m),
            v: self.addr(v),
            lo: self.addr(lo),
            hi: self.addr(hi),
            n: to_i32("n", n)?,
            c: to_i32("c", c)?,
            hw: to_i32("hw", hw)?,
            reserved: 0,
        };
        let mut args = KernelArgs::new();
        args.push(a);
        self.launch(ids::ADAM_CLIP_F32, grid_1d(len, THREADS)?, &args)
    }
}
