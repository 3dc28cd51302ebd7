//! CPU convolution, fprop and dgrad with fused epilogues (BN, residual, ReLU, BN-input statistics; ReLU
//! mask and the BN-matching gradient in dgrad).
//!
//! Algorithms (chosen per problem):
//! - 3x3 stride-1 pad-1 convs, fprop and dgrad (a stride-1 conv's dgrad is the same conv with the
//!   weights flipped and C/K swapped): Winograd F(4x4, 3x3), [`winograd`].
//! - everything else: implicit GEMM over all images at once (GEMM_N = N * P * Q), B gathered from the
//!   N C H W input while packing, and dgrad split into stride x stride output phases so it needs no
//!   col2im, [`implicit`].
//!
//! Both drive the runtime-selected microkernel of `cpu::gemm::microkernel` (AVX-512 / AVX2+FMA /
//! scalar) and write raw results through [`epilogue`] while they are in cache. Scratch is per thread
//! and grow-only, so steady-state calls allocate almost nothing.
//!
//! im2col / col2im (the first version's algorithm, kept as the reference the per-layer bench times)
//! and the weight gradient live in [`im2col`].

mod epilogue;
pub mod im2col;
mod implicit;
mod winograd;

use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use super::{ConvProblem, DgradEpilogue, FpropEpilogue};
use crate::cpu::gemm::microkernel::{Isa, Kernel};
use crate::cpu::par::{with_scratch, Scratch, SyncPtr};
use epilogue::{Dgrad, Fprop, Kind, Moments};
use implicit::{Epi, Grid, Source};

/// Which algorithms the CPU convolutions may choose. The defaults pick per problem (below); the
/// switches turn a path off, to measure what it gives (`cda-engine bench --no-winograd ...`,
/// benches/conv_layers.rs). Every choice computes the same convolution to fp32 rounding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConvChoice {
    /// Never Winograd F(4x4, 3x3) (3x3 stride-1 convs then run as implicit GEMMs).
    pub no_winograd: bool,
    /// Never the `gemm` crate for pointwise convs (they then run as implicit GEMMs).
    pub no_pointwise_gemm: bool,
    /// How the dgrad of other convs runs.
    pub dgrad: DgradPath,
}

/// The dgrad of a conv that neither Winograd nor the pointwise GEMM takes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DgradPath {
    /// Per problem: GEMM + col2im for few input channels or strided convs with K >= C, else phased.
    #[default]
    Auto,
    /// Implicit GEMM split into stride x stride output phases (no col2im).
    Phased,
    /// GEMM into columns, then col2im.
    Col2im,
}

/// Where the CPU convolutions may keep prepared weights between calls, and which algorithms they
/// may choose.
#[derive(Clone, Copy, Default)]
pub struct ConvContext<'a> {
    pub cache: Option<&'a WeightCache>,
    pub choice: ConvChoice,
}

/// Does this problem take the Winograd path?
fn use_winograd(p: &ConvProblem, ch: ConvChoice) -> bool {
    p.r == 3 && p.s == 3 && p.stride == 1 && p.pad == 1 && p.c >= 8 && p.k >= 8 && !ch.no_winograd
}

/// Is this a pointwise conv (1x1, no padding) that runs as plain GEMMs on the `gemm` crate: stride 1 on
/// planes of at least 128 positions, and every strided one (the downsample convs, after gathering the
/// strided input). Per layer (2 threads) the `gemm` crate beats our packing there: stride-1 fprop by
/// 5-10% and dgrad by 3-23% on 14x14..56x56 planes, strided 1x1 convs about 2x. Stride-1 convs on
/// smaller planes (7x7) keep the implicit GEMM, which was 15-30% faster there.
fn use_pointwise_gemm(p: &ConvProblem, ch: ConvChoice) -> bool {
    p.r == 1 && p.s == 1 && p.pad == 0 && (p.stride > 1 || p.h * p.w >= 128) && !ch.no_pointwise_gemm
}

/// Pointwise conv as GEMMs over groups of images placed side by side (so small planes still give wide
/// GEMMs): raw (M x g*cols) = lhs (M x KK; `lhs_transposed`: dgrad's W^T) * B (KK x g*cols), where B
/// is `direct(img)` for a single image whose operand is already dense, else assembled by
/// `fill(img, b, ld, col0)`. Then `epi(img, row, raw row, plane)` for every image and row, with a
/// scratch `plane` of `plane_len` floats.
#[allow(clippy::too_many_arguments)]
fn pointwise_gemm<'s>(
    n: usize,
    m: usize,
    kk: usize,
    cols: usize,
    lhs: &[f32],
    lhs_transposed: bool,
    direct: impl Fn(usize) -> Option<&'s [f32]> + Sync,
    fill: impl Fn(usize, &mut [f32], usize, usize) + Sync,
    plane_len: usize,
    epi: impl Fn(usize, usize, &[f32], &mut [f32]) + Sync,
) {
    let threads = rayon::current_num_threads().max(1);
    let g = if cols >= 128 { 1 } else { 128usize.div_ceil(cols).min(n.div_ceil(threads)).max(1) };
    let groups = n.div_ceil(g);
    // Groups over threads when there are enough of them, else the GEMM splits itself.
    let gemm_threads = if groups >= threads { 1 } else { threads };
    (0..groups).into_par_iter().for_each(|gi| {
        let (i0, gn) = (gi * g, g.min(n - gi * g));
        let ld = gn * cols;
        with_scratch(Scratch::Task, kk * ld + m * ld + plane_len, |buf| {
            let (bbuf, rest) = buf.split_at_mut(kk * ld);
            let (raw, plane) = rest.split_at_mut(m * ld);
            let b: &[f32] = match direct(i0) {
                Some(d) if gn == 1 => d,
                _ => {
                    for j in 0..gn {
                        fill(i0 + j, bbuf, ld, j * cols);
                    }
                    bbuf
                }
            };
            crate::cpu::gemm::sgemm(m, ld, kk, raw, lhs, lhs_transposed, b, gemm_threads);
            for j in 0..gn {
                for row in 0..m {
                    epi(i0 + j, row, &raw[row * ld + j * cols..row * ld + (j + 1) * cols], plane);
                }
            }
        });
    });
}

/// Does the dgrad of this (non-Winograd) problem go through GEMM + col2im? For few input channels
/// (the stems), gathering dy for every one of C rows costs more than scattering C*R*S rows.
/// For strided convs with K >= C the same holds (the phases' gathers cost per input channel what
/// the scatter costs per output channel). [`DgradPath`] overrides (for measurements).
fn use_col2im(p: &ConvProblem, ch: ConvChoice) -> bool {
    if use_winograd(p, ch) || p.r * p.s == 1 {
        return false;
    }
    match ch.dgrad {
        DgradPath::Phased => false,
        DgradPath::Col2im => true,
        DgradPath::Auto => p.c < 16 || (p.stride > 1 && p.k >= p.c),
    }
}

/// Which algorithm `fprop` / `dgrad` use for `p` under `choice` (for profiles and benchmarks).
pub fn algorithm(p: &ConvProblem, dgrad: bool, choice: ConvChoice) -> &'static str {
    if use_winograd(p, choice) {
        "winograd-f4x4"
    } else if use_pointwise_gemm(p, choice) {
        "pointwise-gemm"
    } else if dgrad && use_col2im(p, choice) {
        "gemm-col2im"
    } else {
        "implicit-gemm"
    }
}

/// Which prepared form of a weight tensor: the algorithm's layout (Winograd U of fprop or dgrad, the
/// packed GEMM A of an implicit-GEMM pass) and the geometry it was made for, [K, C, R*1000+S,
/// stride*1000+pad], so one buffer used in two problems never gets the other's form.
type Form = (&'static str, [i32; 4]);

fn form(name: &'static str, p: &ConvProblem) -> Form {
    (name, [p.k, p.c, p.r * 1000 + p.s, p.stride * 1000 + p.pad])
}

/// Prepared weights (Winograd U, packed GEMM A) kept between calls, keyed by the weight buffer's
/// address and length and valid only while the buffer holds exactly the values they were made from
/// (checked on every use by comparing with a copy). Holds at most `budget` bytes; least recently used
/// first out. In recover the weights never change, so every conv prepares its weights once per run.
pub struct WeightCache {
    inner: Mutex<CacheState>,
    budget: usize,
}

#[derive(Default)]
struct CacheState {
    entries: Vec<CacheEntry>,
    clock: u64,
}

struct CacheEntry {
    ptr: usize,
    copy: Vec<f32>,
    isa: Isa,
    forms: Vec<(Form, Arc<Vec<f32>>)>,
    used: u64,
}

impl CacheEntry {
    fn bytes(&self) -> usize {
        4 * (self.copy.len() + self.forms.iter().map(|(_, u)| u.len()).sum::<usize>())
    }
}

impl WeightCache {
    /// A cache of at most `budget_bytes`; 0 disables it.
    pub fn new(budget_bytes: usize) -> WeightCache {
        WeightCache { inner: Mutex::new(CacheState::default()), budget: budget_bytes }
    }

    /// The default budget: `CDA_WEIGHT_CACHE_MIB` MiB, else 1 GiB.
    pub fn default_budget() -> usize {
        std::env::var("CDA_WEIGHT_CACHE_MIB").ok().and_then(|v| v.parse::<usize>().ok()).map_or(1 << 30, |m| m << 20)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).entries.iter().map(|e| e.bytes()).sum()
    }

    /// The `len`-float form `key` of `w`, from the cache or made by `make` (and kept if the budget allows).
    fn prepared(&self, kern: &Kernel, w: &[f32], key: Form, len: usize, make: impl FnOnce(&mut [f32])) -> Option<Arc<Vec<f32>>> {
        if self.budget == 0 {
            return None;
        }
        let mut st = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        st.clock += 1;
        let now = st.clock;
        let ptr = w.as_ptr() as usize;
        let same = |e: &CacheEntry| e.ptr == ptr && e.isa == kern.isa && same_bits(&e.copy, w);
        if let Some(e) = st.entries.iter_mut().find(|e| same(e)) {
            e.used = now;
            if let Some((_, u)) = e.forms.iter().find(|(k, u)| *k == key && u.len() == len) {
                return Some(u.clone());
            }
        } else {
            // A stale entry for this buffer goes; then make room for the copy.
            st.entries.retain(|e| e.ptr != ptr);
            st.entries.push(CacheEntry { ptr, copy: w.to_vec(), isa: kern.isa, forms: Vec::new(), used: now });
        }
        let mut u = vec![0f32; len];
        make(&mut u);
        let u = Arc::new(u);
        // Evict least recently used entries (never the current one) until the new form fits.
        loop {
            let total: usize = st.entries.iter().map(|e| e.bytes()).sum::<usize>() + 4 * len;
            if total <= self.budget {
                break;
            }
            let victim = st.entries.iter().enumerate().filter(|(_, e)| !same(e)).min_by_key(|(_, e)| e.used).map(|(i, _)| i);
            match victim {
                Some(i) => {
                    st.entries.swap_remove(i);
                }
                None => {
                    // Even alone it does not fit: do not keep it.
                    st.entries.retain(|e| !same(e));
                    return Some(u);
                }
            }
        }
        if let Some(e) = st.entries.iter_mut().find(|e| same(e)) {
            e.forms.push((key, u.clone()));
        }
        Some(u)
    }
}

/// Bitwise equality of two weight tensors, compared on all threads (ResNet-50 checks about 200 MB of
/// weights per recover iteration; on one thread that would leave the others idle for ~15 ms).
fn same_bits(a: &[f32], b: &[f32]) -> bool {
    const CHUNK: usize = 1 << 15;
    a.len() == b.len() && a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)).all(|(x, y)| bytemuck::cast_slice::<f32, u32>(x) == bytemuck::cast_slice::<f32, u32>(y))
}

/// Runs `f` on the `len`-float form `key` of `w` (made by `make`): cached, or made into this
/// thread's weight scratch.
fn with_prepared<R>(cache: Option<&WeightCache>, kern: &Kernel, w: &[f32], key: Form, len: usize, make: impl Fn(&mut [f32]), f: impl FnOnce(&[f32]) -> R) -> R {
    if let Some(u) = cache.and_then(|c| c.prepared(kern, w, key, len, &make)) {
        return f(&u);
    }
    with_scratch(Scratch::Weights, len, |u| {
        make(u);
        f(u)
    })
}

/// Runs `f` on Winograd U of `w`.
fn with_winograd_u<R>(cache: Option<&WeightCache>, kern: &Kernel, p: &ConvProblem, w: &[f32], dgrad: bool, f: impl FnOnce(&[f32]) -> R) -> R {
    let key = form(if dgrad { "winograd-dgrad" } else { "winograd-fprop" }, p);
    with_prepared(
        cache,
        kern,
        w,
        key,
        winograd::weights_len(kern, p, dgrad),
        |u| {
            winograd::transform_weights(kern, p, w, dgrad, u);
        },
        f,
    )
}

/// y = conv(x, w); out = act((y - mean) * scale + beta [+ residual]); optional y and statistics.
pub fn fprop(p: &ConvProblem, x: &[f32], w: &[f32], epi: FpropEpilogue<'_, [f32]>, out: &mut [f32]) {
    fprop_with(ConvContext::default(), p, x, w, epi, out)
}

/// [`fprop`] with the algorithms `ctx.choice` allows and transformed weights kept in `ctx.cache`.
pub fn fprop_with(ctx: ConvContext<'_>, p: &ConvProblem, x: &[f32], w: &[f32], epi: FpropEpilogue<'_, [f32]>, out: &mut [f32]) {
    let (n, k) = (p.n as usize, p.k as usize);
    assert_eq!(x.len(), p.input_len(), "conv fprop input");
    assert_eq!(w.len(), p.weight_len(), "conv fprop weight");
    assert_eq!(out.len(), p.output_len(), "conv fprop output");
    let FpropEpilogue { bn, residual, relu, y, stats } = epi;
    assert!(bn.mean.len() == k && bn.scale.len() == k && bn.beta.len() == k, "conv fprop BN parameters");
    if let Some(r) = residual {
        assert_eq!(r.len(), p.output_len(), "conv fprop residual");
    }
    let y = y.map(|y| {
        assert_eq!(y.len(), p.output_len(), "conv fprop y");
        SyncPtr(y.as_mut_ptr())
    });
    let f = Fprop { mean: bn.mean, scale: bn.scale, beta: bn.beta, residual, relu, y, out: SyncPtr(out.as_mut_ptr()), len: p.output_len() };
    let mut moments = Vec::new();
    if stats.is_some() {
        moments.resize(k, Moments::default());
    }
    let mom = stats.is_some().then_some(&mut moments[..]);
    let kern = Kernel::get();
    let (cache, choice) = (ctx.cache, ctx.choice);
    if use_winograd(p, choice) {
        with_winograd_u(cache, kern, p, w, false, |u| winograd::fprop(kern, p, x, u, &f, mom));
    } else if use_pointwise_gemm(p, choice) {
        let (c, h, wd, stride) = (p.c as usize, p.h as usize, p.w as usize, p.stride as usize);
        let (pp, qq) = (p.p as usize, p.q as usize);
        let pq = pp * qq;
        // Per image and channel, summed below (tasks own disjoint images).
        let mut partial = vec![Moments::default(); if mom.is_some() { n * k } else { 0 }];
        let part = SyncPtr(partial.as_mut_ptr());
        let want = mom.is_some();
        let direct = |img: usize| (stride == 1).then(|| &x[img * c * h * wd..(img + 1) * c * h * wd]);
        // B rows: channel ch of image img at the strided positions (i * stride, j * stride).
        let fill = |img: usize, b: &mut [f32], ld: usize, col0: usize| {
            for ch in 0..c {
                let src = &x[(img * c + ch) * h * wd..(img * c + ch + 1) * h * wd];
                let dst = &mut b[ch * ld + col0..ch * ld + col0 + pq];
                for i in 0..pp {
                    for j in 0..qq {
                        dst[i * qq + j] = src[i * stride * wd + j * stride];
                    }
                }
            }
        };
        pointwise_gemm(n, k, c, pq, w, false, direct, fill, 0, |img, ch, raw, _| {
            // SAFETY: image img's outputs and moment slots belong to this task alone.
            unsafe {
                let m = want.then(|| &mut part.slice(img * k + ch, 1)[0]);
                f.run(ch, raw, (img * k + ch) * pq, m);
            }
        });
        if let Some(out) = mom {
            for (ch, o) in out.iter_mut().enumerate() {
                *o = Moments::default();
                for img in 0..n {
                    o.s1 += partial[img * k + ch].s1;
                    o.s2 += partial[img * k + ch].s2;
                }
            }
        }
    } else {
        let (c, r, s) = (p.c as usize, p.r as usize, p.s as usize);
        let crs = c * r * s;
        let panels = k.div_ceil(kern.mr);
        let taps: Vec<(isize, isize)> = (0..r).flat_map(|i| (0..s).map(move |j| (i as isize - p.pad as isize, j as isize - p.pad as isize))).collect();
        let pack = |ap: &mut [f32]| implicit::pack_a(kern, k, crs, |m, kk| w[m * crs + kk], ap);
        with_prepared(cache, kern, w, form("implicit-fprop", p), panels * crs * kern.mr, pack, |ap| {
            let src = Source { data: x, ch: c, h: p.h as usize, w: p.w as usize, step: p.stride as usize, taps: &taps };
            let (pp, qq) = (p.p as usize, p.q as usize);
            let grid = Grid { n, gp: pp, gq: qq, oh: pp, ow: qq, oh0: 0, ow0: 0, ostride: 1, m: k };
            implicit::run(kern, ap, &src, &grid, Epi::Fprop(&f), mom);
        });
    }
    if let Some(stats) = stats {
        assert_eq!(stats.len(), 2 * k, "conv fprop stats");
        let count = (n * (p.p * p.q) as usize) as f64;
        for ch in 0..k {
            let mean = moments[ch].s1 / count;
            stats[ch] = mean as f32;
            stats[k + ch] = (moments[ch].s2 / count - mean * mean).max(0.0) as f32;
        }
    }
}

/// dx_out = epilogue(W^T * dy) for every image.
pub fn dgrad(p: &ConvProblem, dy: &[f32], w: &[f32], x: &[f32], epi: DgradEpilogue<'_, [f32]>, dx_out: &mut [f32]) {
    dgrad_with(ConvContext::default(), p, dy, w, x, epi, dx_out)
}

/// [`dgrad`] with the algorithms `ctx.choice` allows and transformed weights kept in `ctx.cache`.
pub fn dgrad_with(ctx: ConvContext<'_>, p: &ConvProblem, dy: &[f32], w: &[f32], x: &[f32], epi: DgradEpilogue<'_, [f32]>, dx_out: &mut [f32]) {
    let (n, c, k) = (p.n as usize, p.c as usize, p.k as usize);
    assert_eq!(dy.len(), p.output_len(), "conv dgrad dy");
    assert_eq!(w.len(), p.weight_len(), "conv dgrad weight");
    assert_eq!(x.len(), p.input_len(), "conv dgrad x");
    assert_eq!(dx_out.len(), p.input_len(), "conv dgrad dx");
    match &epi {
        DgradEpilogue::Store => {}
        DgradEpilogue::MaskInput { add, .. } => assert!(add.is_none_or(|a| a.len() == p.input_len()), "conv dgrad add"),
        DgradEpilogue::BnRelu { y_prev, scale, coef } => {
            assert!(y_prev.len() == p.input_len() && scale.len() == c && coef.len() == 3 * c, "conv dgrad BN operands")
        }
    }
    let d = Dgrad { kind: Kind::new(&epi), x, dx: SyncPtr(dx_out.as_mut_ptr()), c, len: p.input_len() };
    let kern = Kernel::get();
    let (cache, choice) = (ctx.cache, ctx.choice);
    if use_winograd(p, choice) {
        with_winograd_u(cache, kern, p, w, true, |u| winograd::dgrad(kern, p, dy, u, &d));
        return;
    }
    let (h, wd, r, s) = (p.h as usize, p.w as usize, p.r as usize, p.s as usize);
    if use_pointwise_gemm(p, choice) {
        let (hw, stride, pp, qq) = (h * wd, p.stride as usize, p.p as usize, p.q as usize);
        let pq = pp * qq;
        let direct = |img: usize| Some(&dy[img * k * pq..(img + 1) * k * pq]);
        let fill = |img: usize, b: &mut [f32], ld: usize, col0: usize| {
            for kk in 0..k {
                b[kk * ld + col0..kk * ld + col0 + pq].copy_from_slice(&dy[(img * k + kk) * pq..(img * k + kk + 1) * pq]);
            }
        };
        let plane_len = if stride > 1 { hw } else { 0 };
        pointwise_gemm(n, c, k, pq, w, true, direct, fill, plane_len, |img, ch, raw, plane| {
            let at = (img * c + ch) * hw;
            // SAFETY: image img's rows of dx belong to this task alone.
            unsafe {
                if stride == 1 {
                    d.run(ch, Some(raw), hw, at, 1);
                } else {
                    // Only the strided positions receive a gradient; the epilogue sees the whole row.
                    plane.fill(0.0);
                    for i in 0..pp {
                        for j in 0..qq {
                            plane[i * stride * wd + j * stride] = raw[i * qq + j];
                        }
                    }
                    d.run(ch, Some(plane), hw, at, 1);
                }
            }
        });
        return;
    }
    if use_col2im(p, choice) {
        // A[(c, r, s)][k] = w[k][c][r][s]
        let (m, rs) = (c * r * s, r * s);
        let pack = |ap: &mut [f32]| implicit::pack_a(kern, m, k, |row, kj| w[(kj * c + row / rs) * rs + row % rs], ap);
        with_prepared(cache, kern, w, form("dgrad-col2im", p), m.div_ceil(kern.mr) * kern.mr * k, pack, |ap| implicit::dgrad_col2im(kern, ap, p, dy, &d));
        return;
    }
    let (stride, pad) = (p.stride as usize, p.pad as isize);
    // The taps (index, offset into dy) that reach phase ph along one axis.
    let phase_taps = |ph: usize, len: usize| -> Vec<(usize, isize)> {
        (0..len)
            .filter(|&t| (ph as isize + pad - t as isize).rem_euclid(stride as isize) == 0)
            .map(|t| (t, (ph as isize + pad - t as isize) / stride as isize))
            .collect()
    };
    let panels = c.div_ceil(kern.mr);
    if stride == 1 {
        // One phase: the whole plane, positions contiguous.
        let (tr, ts) = (phase_taps(0, r), phase_taps(0, s));
        let taps: Vec<(usize, usize, isize, isize)> = tr.iter().flat_map(|&(ri, dr)| ts.iter().map(move |&(si, ds)| (ri, si, dr, ds))).collect();
        let offsets: Vec<(isize, isize)> = taps.iter().map(|t| (t.2, t.3)).collect();
        let nt = taps.len();
        let kk = k * nt;
        let pack = |ap: &mut [f32]| implicit::pack_a(kern, c, kk, |ci, j| w[((j / nt * c + ci) * r + taps[j % nt].0) * s + taps[j % nt].1], ap);
        with_prepared(cache, kern, w, form("implicit-dgrad", p), panels * kk * kern.mr, pack, |ap| {
            let src = Source { data: dy, ch: k, h: p.p as usize, w: p.q as usize, step: 1, taps: &offsets };
            let grid = Grid { n, gp: h, gq: wd, oh: h, ow: wd, oh0: 0, ow0: 0, ostride: 1, m: c };
            implicit::run(kern, ap, &src, &grid, Epi::Dgrad(&d), None);
        });
        return;
    }
    // stride x stride phases, A of each packed one after the other.
    let mut phases = Vec::new();
    let mut a_len = 0;
    for ph in 0..stride.min(h) {
        for pw in 0..stride.min(wd) {
            let (tr, ts) = (phase_taps(ph, r), phase_taps(pw, s));
            let taps: Vec<(usize, usize, isize, isize)> = tr.iter().flat_map(|&(ri, dr)| ts.iter().map(move |&(si, ds)| (ri, si, dr, ds))).collect();
            let (gp, gq) = ((h - ph).div_ceil(stride), (wd - pw).div_ceil(stride));
            phases.push((
                implicit::Phase { ph, pw, gp, gq, taps: taps.iter().map(|t| (t.2, t.3)).collect(), a: a_len },
                taps.iter().map(|t| (t.0, t.1)).collect::<Vec<_>>(),
            ));
            a_len += panels * kern.mr * k * taps.len();
        }
    }
    let pack = |ap: &mut [f32]| {
        for (f, rs) in &phases {
            let nt = rs.len();
            if nt == 0 {
                continue;
            }
            let kk = k * nt;
            implicit::pack_a(kern, c, kk, |ci, j| w[((j / nt * c + ci) * r + rs[j % nt].0) * s + rs[j % nt].1], &mut ap[f.a..f.a + panels * kern.mr * kk]);
        }
    };
    with_prepared(cache, kern, w, form("dgrad-phased", p), a_len.max(1), pack, |ap| {
        let phases: Vec<&implicit::Phase> = phases.iter().map(|(f, _)| f).collect();
        implicit::dgrad_phased(kern, ap, &phases, p, dy, &d);
    });
}
