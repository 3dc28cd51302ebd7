//! The CPU backend: host vectors, the ops' CPU halves, a private rayon pool of `threads` workers.
//! With profiling on ([`CpuBackend::set_profiling`]) every op call is timed and attributed to its
//! op, shape and algorithm ([`Profile`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

mod train;

use super::{AdamClipIo, Backend, BnBackwardIo, BnMatchIo, ImagePrior, LinearProblem, SoftmaxCeIo};
use crate::error::{Error, Result};
use crate::ops::adam::AdamScalars;
use crate::ops::batchnorm::BnProblem;
use crate::ops::conv::{BnAffine, ConvProblem, DgradEpilogue, FpropEpilogue};
use crate::ops::crop_resize::{CropParams, CropResizeProblem};
use crate::ops::pool::PoolProblem;
use crate::ops::{adam, bn_match, conv, crop_resize, image_prior, linear, pool, softmax_ce};

pub struct CpuBackend {
    /// The backend's own pool; None runs every op on the caller's rayon pool (`on_current_pool`).
    pool: Option<Arc<rayon::ThreadPool>>,
    threads: usize,
    profile: Mutex<Option<Profile>>,
    /// Transformed conv weights (Winograd), reused while the weight buffers are unchanged.
    weights: conv::cpu::WeightCache,
    /// Which conv algorithms may run (all, by default).
    conv_choice: conv::cpu::ConvChoice,
    /// Keep prepared weights between calls (recover: frozen teachers); training turns it off, as
    /// its weights change every step and the cache would only copy and compare them.
    cache_weights: bool,
}

/// Accumulated time per (op, shape, algorithm), in first-call order.
#[derive(Clone, Debug, Default)]
pub struct Profile {
    order: Vec<String>,
    entries: HashMap<String, ProfileEntry>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct ProfileEntry {
    pub calls: u64,
    pub secs: f64,
    pub flops: f64,
}

impl Profile {
    fn add(&mut self, key: String, secs: f64, flops: f64) {
        let e = match self.entries.get_mut(&key) {
            Some(e) => e,
            None => {
                self.order.push(key.clone());
                self.entries.entry(key).or_default()
            }
        };
        e.calls += 1;
        e.secs += secs;
        e.flops += flops;
    }

    /// (key, entry) in first-call order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &ProfileEntry)> {
        self.order.iter().map(|k| (k.as_str(), &self.entries[k]))
    }

    pub fn total_secs(&self) -> f64 {
        self.entries.values().map(|e| e.secs).sum()
    }

    /// A table of ms per iteration (over `iters` iterations), share of the total and GFLOP/s.
    pub fn table(&self, iters: usize) -> String {
        let total = self.total_secs().max(1e-12);
        let it = iters.max(1) as f64;
        let mut s = format!("{:<58} {:>6} {:>10} {:>6} {:>8}\n", "op (shape, algorithm)", "calls", "ms/iter", "%", "GFLOP/s");
        let mut by_op: Vec<(String, f64)> = Vec::new();
        for (k, e) in self.entries() {
            let gf = if e.flops > 0.0 { format!("{:8.1}", e.flops / e.secs / 1e9) } else { String::new() };
            s += &format!("{:<58} {:>6.0} {:>10.2} {:>6.1} {}\n", k, e.calls as f64 / it, 1e3 * e.secs / it, 100.0 * e.secs / total, gf);
            let op = k.split_whitespace().next().unwrap_or("").to_string();
            match by_op.iter_mut().find(|(o, _)| *o == op) {
                Some(v) => v.1 += e.secs,
                None => by_op.push((op, e.secs)),
            }
        }
        s += "per op:";
        for (op, secs) in by_op {
            s += &format!("  {op} {:.1} ms ({:.1}%)", 1e3 * secs / it, 100.0 * secs / total);
        }
        s += &format!("\ntotal in ops: {:.1} ms/iter\n", 1e3 * total / it);
        s
    }
}

impl CpuBackend {
    /// `threads` = 0 uses every core.
    pub fn new(threads: usize) -> Result<CpuBackend> {
        let threads = if threads == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) } else { threads };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("cda-cpu-{i}"))
            .build()
            .map_err(|e| Error::Option(format!("cannot start {threads} CPU threads: {e}")))?;
        Ok(CpuBackend {
            pool: Some(Arc::new(pool)),
            threads,
            profile: Mutex::new(None),
            weights: conv::cpu::WeightCache::new(conv::cpu::WeightCache::default_budget()),
            conv_choice: conv::cpu::ConvChoice::default(),
            cache_weights: true,
        })
    }

    /// A backend that runs its ops on the caller's rayon pool instead of a pool of its own: the
    /// training loops already run inside the command's pool, and handing every op to a second pool
    /// would cost a thread wake-up per op.
    pub fn on_current_pool() -> CpuBackend {
        CpuBackend {
            pool: None,
            threads: rayon::current_num_threads(),
            profile: Mutex::new(None),
            weights: conv::cpu::WeightCache::new(conv::cpu::WeightCache::default_budget()),
            conv_choice: conv::cpu::ConvChoice::default(),
            cache_weights: true,
        }
    }

    /// This backend without the prepared-weights cache (for weights that change every call).
    pub fn without_weight_cache(mut self) -> CpuBackend {
        self.cache_weights = false;
        self
    }

    /// This backend with only the conv algorithms `choice` allows (for measurements).
    pub fn with_conv_choice(mut self, choice: conv::cpu::ConvChoice) -> CpuBackend {
        self.conv_choice = choice;
        self
    }

    fn conv_context(&self) -> conv::cpu::ConvContext<'_> {
        conv::cpu::ConvContext { cache: self.cache_weights.then_some(&self.weights), choice: self.conv_choice }
    }

    /// Starts (clearing what was recorded) or stops timing every op call.
    pub fn set_profiling(&self, on: bool) {
        *self.profile.lock().unwrap_or_else(|e| e.into_inner()) = on.then(Profile::default);
    }

    /// What was recorded since profiling was (re)started.
    pub fn profile(&self) -> Option<Profile> {
        self.profile.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Runs `f` on the pool, timed under `key()` when profiling.
    fn op<R: Send>(&self, key: impl FnOnce() -> String, flops: f64, f: impl FnOnce() -> R + Send) -> R {
        let profiling = self.profile.lock().unwrap_or_else(|e| e.into_inner()).is_some();
        if !profiling {
            return self.run_on_pool(f);
        }
        let t = Instant::now();
        let r = self.run_on_pool(f);
        let secs = t.elapsed().as_secs_f64();
        if let Some(p) = self.profile.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            p.add(key(), secs, flops);
        }
        r
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f` on this backend's thread pool (used by ops that are not part of the trait).
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.run_on_pool(f)
    }

    fn run_on_pool<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(p) => p.install(f),
            None => f(),
        }
    }
}

/// Which SIMD paths this CPU offers (the GEMM picks the best at run time).
pub fn cpu_features() -> Vec<&'static str> {
    let mut v = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            v.push("avx512f");
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            v.push("avx2");
        }
        if std::arch::is_x86_feature_detected!("fma") {
            v.push("fma");
        }
        if std::arch::is_x86_feature_detected!("avx") {
            v.push("avx");
        }
        if std::arch::is_x86_feature_detected!("sse4.1") {
            v.push("sse4.1");
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        v.push("neon");
    }
    v
}

/// "3x3/1 64->64 N100 32x32 winograd" for the profile.
pub(super) fn conv_key(p: &ConvProblem, dgrad: bool, choice: conv::cpu::ConvChoice) -> String {
    format!("{}x{}/{} {}->{} N{} {}x{} {}", p.r, p.s, p.stride, p.c, p.k, p.n, p.h, p.w, conv::cpu::algorithm(p, dgrad, choice))
}

fn crop_params(raw: &[i32], n: usize) -> Result<&[CropParams]> {
    Ok(bytemuck::cast_slice(prefix("crop parameters", raw, 8 * n)?))
}

/// The first `len` elements of a buffer (buffers may be longer than an op needs: shared scratch), or
/// an error naming it when it is shorter.
fn prefix<'a, T>(what: &str, v: &'a [T], len: usize) -> Result<&'a [T]> {
    v.get(..len).ok_or_else(|| Error::input(what, format!("a buffer of {} values where {len} are needed", v.len())))
}
fn prefix_mut<'a, T>(what: &str, v: &'a mut [T], len: usize) -> Result<&'a mut [T]> {
    let have = v.len();
    v.get_mut(..len).ok_or_else(|| Error::input(what, format!("a buffer of {have} values where {len} are needed")))
}

pub(super) fn pre<T>(v: &[T], len: usize) -> &[T] {
    &v[..len]
}
pub(super) fn pre_mut<T>(v: &mut [T], len: usize) -> &mut [T] {
    &mut v[..len]
}

impl Backend for CpuBackend {
    type Buf = Vec<f32>;
    type IntBuf = Vec<i32>;
    type Graph = ();

    fn describe(&self) -> String {
        format!("cpu ({} threads, {})", self.threads, cpu_features().join("+"))
    }
    fn alloc(&self, len: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; len])
    }
    fn alloc_int(&self, len: usize) -> Result<Vec<i32>> {
        Ok(vec![0; len])
    }
    // Transfers fill or read a buffer's prefix, as the CUDA backend's do (buffers are sized for the
    // largest batch).
    fn upload(&self, src: &[f32], dst: &mut Vec<f32>) -> Result<()> {
        prefix_mut("upload destination", dst, src.len())?.copy_from_slice(src);
        Ok(())
    }
    fn upload_int(&self, src: &[i32], dst: &mut Vec<i32>) -> Result<()> {
        prefix_mut("upload destination", dst, src.len())?.copy_from_slice(src);
        Ok(())
    }
    fn download(&self, src: &Vec<f32>, dst: &mut [f32]) -> Result<()> {
        dst.copy_from_slice(prefix("download source", src, dst.len())?);
        Ok(())
    }
    fn download_int(&self, src: &Vec<i32>, dst: &mut [i32]) -> Result<()> {
        dst.copy_from_slice(prefix("download source", src, dst.len())?);
        Ok(())
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn conv_fprop(&self, p: &ConvProblem, x: &Vec<f32>, w: &Vec<f32>, epi: FpropEpilogue<'_, Vec<f32>>, out: &mut Vec<f32>) -> Result<()> {
        let (il, ol, k) = (p.input_len(), p.output_len(), p.k as usize);
        let epi = FpropEpilogue {
            bn: BnAffine {
                mean: prefix("conv fprop BN mean", epi.bn.mean, k)?,
                scale: prefix("conv fprop BN scale", epi.bn.scale, k)?,
                beta: prefix("conv fprop BN beta", epi.bn.beta, k)?,
            },
            residual: epi.residual.map(|r| prefix("conv fprop residual", r, ol)).transpose()?,
            relu: epi.relu,
            y: epi.y.map(|y| prefix_mut("conv fprop y", y, ol)).transpose()?,
            stats: epi.stats.map(|s| prefix_mut("conv fprop stats", s, 2 * k)).transpose()?,
        };
        let (x, w, out) = (prefix("conv fprop x", x, il)?, prefix("conv fprop w", w, p.weight_len())?, prefix_mut("conv fprop out", out, ol)?);
        self.op(|| format!("conv_fprop {}", conv_key(p, false, self.conv_choice)), p.flops(), || conv::cpu::fprop_with(self.conv_context(), p, x, w, epi, out));
        Ok(())
    }

    fn conv_dgrad(&self, p: &ConvProblem, dy: &Vec<f32>, w: &Vec<f32>, x: &Vec<f32>, epi: DgradEpilogue<'_, Vec<f32>>, dx: &mut Vec<f32>) -> Result<()> {
        let (il, ol, c) = (p.input_len(), p.output_len(), p.c as usize);
        let epi = match epi {
            DgradEpilogue::Store => DgradEpilogue::Store,
            DgradEpilogue::MaskInput { add, accumulate } => {
                DgradEpilogue::MaskInput { add: add.map(|a| prefix("conv dgrad add", a, il)).transpose()?, accumulate }
            }
            DgradEpilogue::BnRelu { y_prev, scale, coef } => DgradEpilogue::BnRelu {
                y_prev: prefix("conv dgrad y_prev", y_prev, il)?,
                scale: prefix("conv dgrad scale", scale, c)?,
                coef: prefix("conv dgrad coef", coef, 3 * c)?,
            },
        };
        let (dy, w, x, dx) = (
            prefix("conv dgrad dy", dy, ol)?,
            prefix("conv dgrad w", w, p.weight_len())?,
            prefix("conv dgrad x", x, il)?,
            prefix_mut("conv dgrad dx", dx, il)?,
        );
        self.op(
            || format!("conv_dgrad {}", conv_key(p, true, self.conv_choice)),
            p.flops(),
            || conv::cpu::dgrad_with(self.conv_context(), p, dy, w, x, epi, dx),
        );
        Ok(())
    }

    fn bn_match(&self, t: BnMatchIo<'_, Vec<f32>>) -> Result<()> {
        let BnMatchIo { stats, target_mean: running_mean, target_var: running_var, count, weight, coef, losses, slot } = t;
        let k = running_mean.len();
        let (stats, running_var, coef) =
            (prefix("bn_match stats", stats, 2 * k)?, prefix("bn_match target var", running_var, k)?, prefix_mut("bn_match coef", coef, 3 * k)?);
        let loss = self.op(|| format!("bn_match K{k}"), 0.0, || bn_match::cpu::bn_match(stats, running_mean, running_var, count as f64, weight, coef));
        prefix_mut("bn_match losses", losses, slot + 1)?[slot] = loss;
        Ok(())
    }

    fn bn_backward(&self, p: &BnProblem, t: BnBackwardIo<'_, Vec<f32>>) -> Result<()> {
        let BnProblem { n, c, hw } = *p;
        let BnBackwardIo { dz, y, scale, coef, dy } = t;
        let len = n * c * hw;
        let (dz, y, scale, coef) = (
            prefix("bn_backward dz", dz, len)?,
            prefix("bn_backward y", y, len)?,
            prefix("bn_backward scale", scale, c)?,
            prefix("bn_backward coef", coef, 3 * c)?,
        );
        let dy = prefix_mut("bn_backward dy", dy, len)?;
        self.op(|| format!("bn_backward {n}x{c}x{hw}"), 0.0, || bn_match::cpu::bn_backward(c, hw, dz, y, scale, coef, dy));
        Ok(())
    }

    fn maxpool_fwd(&self, p: &PoolProblem, x: &Vec<f32>, out: &mut Vec<f32>, argmax: &mut Vec<i32>) -> Result<()> {
        let (il, ol) = (p.input_len(), p.output_len());
        let (x, out, argmax) = (prefix("maxpool x", x, il)?, prefix_mut("maxpool out", out, ol)?, prefix_mut("maxpool argmax", argmax, ol)?);
        self.op(|| format!("maxpool_fwd {}x{}x{}x{}", p.n, p.c, p.h, p.w), 0.0, || pool::cpu::maxpool_fwd(p, x, out, argmax));
        Ok(())
    }

    fn maxpool_bwd(&self, p: &PoolProblem, dout: &Vec<f32>, argmax: &Vec<i32>, dx: &mut Vec<f32>) -> Result<()> {
        let (il, ol) = (p.input_len(), p.output_len());
        let (dout, argmax, dx) = (prefix("maxpool dout", dout, ol)?, prefix("maxpool argmax", argmax, ol)?, prefix_mut("maxpool dx", dx, il)?);
        self.op(|| format!("maxpool_bwd {}x{}x{}x{}", p.n, p.c, p.h, p.w), 0.0, || pool::cpu::maxpool_bwd(p, dout, argmax, dx));
        Ok(())
    }

    fn avgpool_fwd(&self, nc: usize, hw: usize, x: &Vec<f32>, out: &mut Vec<f32>) -> Result<()> {
        let (x, out) = (prefix("avgpool x", x, nc * hw)?, prefix_mut("avgpool out", out, nc)?);
        self.op(|| format!("avgpool_fwd {nc}x{hw}"), 0.0, || pool::cpu::avgpool_fwd(hw, x, out));
        Ok(())
    }

    fn avgpool_bwd(&self, nc: usize, hw: usize, dout: &Vec<f32>, x: &Vec<f32>, dx: &mut Vec<f32>) -> Result<()> {
        let (dout, x, dx) = (prefix("avgpool dout", dout, nc)?, prefix("avgpool x", x, nc * hw)?, prefix_mut("avgpool dx", dx, nc * hw)?);
        self.op(|| format!("avgpool_bwd {nc}x{hw}"), 0.0, || pool::cpu::avgpool_bwd(hw, dout, x, dx));
        Ok(())
    }

    fn linear_fwd(&self, p: &LinearProblem, x: &Vec<f32>, w: &Vec<f32>, b: &Vec<f32>, y: &mut Vec<f32>) -> Result<()> {
        let LinearProblem { n, in_f, out_f } = *p;
        let (x, w, b, y) =
            (prefix("linear x", x, n * in_f)?, prefix("linear w", w, in_f * out_f)?, prefix("linear b", b, out_f)?, prefix_mut("linear y", y, n * out_f)?);
        self.op(|| format!("linear_fwd {n}x{in_f}x{out_f}"), 2.0 * (n * in_f * out_f) as f64, || linear::cpu::fwd(n, in_f, out_f, x, w, b, y));
        Ok(())
    }

    fn linear_bwd_data(&self, p: &LinearProblem, dy: &Vec<f32>, w: &Vec<f32>, dx: &mut Vec<f32>) -> Result<()> {
        let LinearProblem { n, in_f, out_f } = *p;
        let (dy, w, dx) = (prefix("linear dy", dy, n * out_f)?, prefix("linear w", w, in_f * out_f)?, prefix_mut("linear dx", dx, n * in_f)?);
        self.op(|| format!("linear_bwd_data {n}x{in_f}x{out_f}"), 2.0 * (n * in_f * out_f) as f64, || linear::cpu::bwd_data(n, in_f, out_f, dy, w, dx));
        Ok(())
    }

    fn softmax_ce(&self, t: SoftmaxCeIo<'_, Vec<f32>, Vec<i32>>) -> Result<()> {
        let SoftmaxCeIo { n, classes, logits, targets, dlogits, losses, slot } = t;
        let targets = prefix("softmax_ce targets", targets, n)?;
        if let Some(t) = targets.iter().find(|&&t| t < 0 || t as usize >= classes) {
            return Err(Error::input("targets", format!("class {t} is outside 0..{classes}")));
        }
        let (logits, dlogits) = (prefix("softmax_ce logits", logits, n * classes)?, prefix_mut("softmax_ce dlogits", dlogits, n * classes)?);
        let loss = self.op(|| format!("softmax_ce {n}x{classes}"), 0.0, || softmax_ce::cpu::softmax_ce(n, classes, logits, targets, dlogits));
        prefix_mut("softmax_ce losses", losses, slot + 1)?[slot] = loss;
        Ok(())
    }

    fn crop_resize_fwd(&self, p: &CropResizeProblem, params: &Vec<i32>, x: &Vec<f32>, out: &mut Vec<f32>) -> Result<()> {
        let (n, len) = (p.n as usize, p.len());
        let (params, x, out) = (crop_params(params, n)?, prefix("crop_resize x", x, len)?, prefix_mut("crop_resize out", out, len)?);
        self.op(|| format!("crop_resize_fwd {}x{}x{}x{}", p.n, p.c, p.h, p.w), 0.0, || crop_resize::cpu::fwd(p, params, x, out));
        Ok(())
    }

    fn crop_resize_bwd(&self, p: &CropResizeProblem, params: &Vec<i32>, dout: &Vec<f32>, dx: &mut Vec<f32>) -> Result<()> {
        let (n, len) = (p.n as usize, p.len());
        let (params, dout, dx) = (crop_params(params, n)?, prefix("crop_resize dout", dout, len)?, prefix_mut("crop_resize dx", dx, len)?);
        self.op(|| format!("crop_resize_bwd {}x{}x{}x{}", p.n, p.c, p.h, p.w), 0.0, || crop_resize::cpu::bwd(p, params, dout, dx));
        Ok(())
    }

    fn image_prior(&self, p: &ImagePrior, x: &Vec<f32>, grad: &mut Vec<f32>) -> Result<f64> {
        let ImagePrior { n, c, h, w, tv_l2, l2_scale } = *p;
        let len = n * c * h * w;
        let (x, grad) = (prefix("image_prior x", x, len)?, prefix_mut("image_prior grad", grad, len)?);
        Ok(self.op(|| format!("image_prior {n}x{c}x{h}x{w}"), 0.0, || image_prior::cpu::image_prior(n, c, h, w, x, tv_l2, l2_scale, grad)))
    }

    fn check_image_prior_support(&self) -> Result<()> {
        Ok(())
    }

    fn adam_clip(&self, t: AdamClipIo<'_, Vec<f32>>) -> Result<()> {
        let AdamClipIo { n, c, hw, scalars, x, g, m, v, lo, hi } = t;
        let s = AdamScalars::from_slice(prefix("adam scalars", scalars, AdamScalars::LEN)?);
        let len = n * c * hw;
        let (x, g, m, v) = (prefix_mut("adam x", x, len)?, prefix("adam g", g, len)?, prefix_mut("adam m", m, len)?, prefix_mut("adam v", v, len)?);
        let (lo, hi) = (prefix("adam lo", lo, c)?, prefix("adam hi", hi, c)?);
        self.op(|| format!("adam_clip {n}x{c}x{hw}"), 0.0, || adam::cpu::adam_clip(c, hw, &s, x, g, m, v, lo, hi));
        Ok(())
    }
}
