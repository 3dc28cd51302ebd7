//! The conv epilogues on runs of raw GEMM results: `len` consecutive values of one output channel that
//! land at `dst, dst + step, ...` of an N C H W tensor. Every element is written by exactly one run, so
//! tasks that own disjoint runs may share the output buffers.

use crate::cpu::gemm::microkernel::{Isa, Kernel};
use crate::cpu::par::SyncPtr;
use crate::ops::conv::DgradEpilogue;

/// Per-channel sum and sum of squares of raw outputs, f32 within a run, f64 across runs.
#[derive(Clone, Copy, Default)]
pub struct Moments {
    pub s1: f64,
    pub s2: f64,
}

/// fprop: y = raw; out = act((raw - mean) * scale + beta [+ residual]); statistics of raw.
pub struct Fprop<'a> {
    pub mean: &'a [f32],
    pub scale: &'a [f32],
    pub beta: &'a [f32],
    pub residual: Option<&'a [f32]>,
    pub relu: bool,
    pub y: Option<SyncPtr<f32>>,
    pub out: SyncPtr<f32>,
    pub len: usize,
}

/// Whether the AVX2 builds of the epilogues can run here.
#[inline]
fn avx2() -> bool {
    Kernel::get().isa >= Isa::Avx2
}

impl Fprop<'_> {
    /// # Safety
    /// `dst..dst + raw.len()` lies in the output and no other task touches it meanwhile.
    #[inline]
    pub unsafe fn run(&self, ch: usize, raw: &[f32], dst: usize, moments: Option<&mut Moments>) {
        #[cfg(target_arch = "x86_64")]
        if avx2() {
            return self.run_avx2(ch, raw, dst, moments);
        }
        self.run_impl(ch, raw, dst, moments)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2(&self, ch: usize, raw: &[f32], dst: usize, moments: Option<&mut Moments>) {
        self.run_impl(ch, raw, dst, moments)
    }

    #[inline(always)]
    unsafe fn run_impl(&self, ch: usize, raw: &[f32], dst: usize, moments: Option<&mut Moments>) {
        let n = raw.len();
        debug_assert!(dst + n <= self.len);
        if let Some(y) = &self.y {
            y.slice(dst, n).copy_from_slice(raw);
        }
        if let Some(m) = moments {
            let (mut s1, mut s2) = ([0f32; 8], [0f32; 8]);
            let chunks = raw.chunks_exact(8);
            let rest = chunks.remainder();
            for c in chunks {
                for i in 0..8 {
                    s1[i] += c[i];
                    s2[i] += c[i] * c[i];
                }
            }
            for (i, &v) in rest.iter().enumerate() {
                s1[i] += v;
                s2[i] += v * v;
            }
            m.s1 += s1.iter().map(|&v| v as f64).sum::<f64>();
            m.s2 += s2.iter().map(|&v| v as f64).sum::<f64>();
        }
        let (mean, scale, beta) = (self.mean[ch], self.scale[ch], self.beta[ch]);
        let out = self.out.slice(dst, n);
        match (self.residual, self.relu) {
            (Some(r), true) => {
                for ((o, &v), &r) in out.iter_mut().zip(raw).zip(&r[dst..dst + n]) {
                    *o = ((v - mean) * scale + beta + r).max(0.0);
                }
            }
            (Some(r), false) => {
                for ((o, &v), &r) in out.iter_mut().zip(raw).zip(&r[dst..dst + n]) {
                    *o = (v - mean) * scale + beta + r;
                }
            }
            (None, true) => {
                for (o, &v) in out.iter_mut().zip(raw) {
                    *o = ((v - mean) * scale + beta).max(0.0);
                }
            }
            (None, false) => {
                for (o, &v) in out.iter_mut().zip(raw) {
                    *o = (v - mean) * scale + beta;
                }
            }
        }
    }
}

/// dgrad: combines raw = (W^T dy) at input positions into dx as `DgradEpilogue` says.
pub struct Dgrad<'a> {
    pub kind: Kind<'a>,
    /// The conv input (its sign is the ReLU mask).
    pub x: &'a [f32],
    pub dx: SyncPtr<f32>,
    /// Channels of dx (for the per-channel BN coefficients).
    pub c: usize,
    pub len: usize,
}

pub enum Kind<'a> {
    Store,
    Mask { add: Option<&'a [f32]>, accumulate: bool },
    BnRelu { y_prev: &'a [f32], scale: &'a [f32], coef: &'a [f32] },
}

impl<'a> Kind<'a> {
    pub fn new(e: &DgradEpilogue<'a, [f32]>) -> Kind<'a> {
        match e {
            DgradEpilogue::Store => Kind::Store,
            DgradEpilogue::MaskInput { add, accumulate } => Kind::Mask { add: *add, accumulate: *accumulate },
            DgradEpilogue::BnRelu { y_prev, scale, coef } => Kind::BnRelu { y_prev, scale, coef },
        }
    }
}

impl Dgrad<'_> {
    /// `raw` = None stands for zeros (positions no tap reaches).
    ///
    /// # Safety
    /// The `len` positions `dst + i * step` lie in dx and no other task touches them meanwhile.
    #[inline]
    pub unsafe fn run(&self, ch: usize, raw: Option<&[f32]>, len: usize, dst: usize, step: usize) {
        if len == 0 {
            return;
        }
        debug_assert!(dst + (len - 1) * step < self.len && raw.is_none_or(|r| r.len() >= len));
        #[cfg(target_arch = "x86_64")]
        if avx2() {
            return self.run_avx2(ch, raw, len, dst, step);
        }
        self.run_impl(ch, raw, len, dst, step)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2(&self, ch: usize, raw: Option<&[f32]>, len: usize, dst: usize, step: usize) {
        self.run_impl(ch, raw, len, dst, step)
    }

    #[inline(always)]
    unsafe fn run_impl(&self, ch: usize, raw: Option<&[f32]>, len: usize, dst: usize, step: usize) {
        if step == 1 {
            self.contiguous(ch, raw, len, dst);
            return;
        }
        let p = self.dx.0;
        let x = self.x.as_ptr();
        let r = |i: usize| raw.map_or(0.0, |r| r[i]);
        match &self.kind {
            Kind::Store => {
                for i in 0..len {
                    *p.add(dst + i * step) = r(i);
                }
            }
            Kind::Mask { add, accumulate } => {
                for i in 0..len {
                    let at = dst + i * step;
                    let mut g = r(i);
                    if let Some(a) = add {
                        g += a[at];
                    }
                    if *accumulate {
                        g += *p.add(at);
                    }
                    *p.add(at) = if *x.add(at) > 0.0 { g } else { 0.0 };
                }
            }
            Kind::BnRelu { y_prev, scale, coef } => {
                let (sc, a, b, m) = (scale[ch], coef[ch], coef[self.c + ch], coef[2 * self.c + ch]);
                for i in 0..len {
                    let at = dst + i * step;
                    let main = if *x.add(at) > 0.0 { sc * r(i) } else { 0.0 };
                    *p.add(at) = main + a + b * (y_prev[at] - m);
                }
            }
        }
    }

    /// The unit-stride case, one loop per epilogue kind so that each vectorizes.
    #[inline(always)]
    unsafe fn contiguous(&self, ch: usize, raw: Option<&[f32]>, len: usize, dst: usize) {
        let dx = self.dx.slice(dst, len);
        let x = &self.x[dst..dst + len];
        match (&self.kind, raw) {
            (Kind::Store, Some(r)) => dx.copy_from_slice(&r[..len]),
            (Kind::Store, None) => dx.fill(0.0),
            (Kind::Mask { add, accumulate }, r) => {
                let add = add.map(|a| &a[dst..dst + len]);
                match (r, add, *accumulate) {
                    (Some(r), None, false) => {
                        for ((d, &g), &xv) in dx.iter_mut().zip(&r[..len]).zip(x) {
                            *d = if xv > 0.0 { g } else { 0.0 };
                        }
                    }
                    (Some(r), None, true) => {
                        for ((d, &g), &xv) in dx.iter_mut().zip(&r[..len]).zip(x) {
                            *d = if xv > 0.0 { g + *d } else { 0.0 };
                        }
                    }
                    (Some(r), Some(a), false) => {
                        for (((d, &g), &av), &xv) in dx.iter_mut().zip(&r[..len]).zip(a).zip(x) {
                            *d = if xv > 0.0 { g + av } else { 0.0 };
                        }
                    }
                    (Some(r), Some(a), true) => {
                        for (((d, &g), &av), &xv) in dx.iter_mut().zip(&r[..len]).zip(a).zip(x) {
                            *d = if xv > 0.0 { g + av + *d } else { 0.0 };
                        }
                    }
                    (None, a, acc) => {
                        for i in 0..len {
                            let mut g = 0.0;
                            if let Some(a) = a {
                                g += a[i];
                            }
                            if acc {
                                g += dx[i];
                            }
                            dx[i] = if x[i] > 0.0 { g } else { 0.0 };
                        }
                    }
                }
            }
            (Kind::BnRelu { y_prev, scale, coef }, r) => {
                let (sc, a, b, m) = (scale[ch], coef[ch], coef[self.c + ch], coef[2 * self.c + ch]);
                let yp = &y_prev[dst..dst + len];
                match r {
                    Some(r) => {
                        for (((d, &g), &xv), &yv) in dx.iter_mut().zip(&r[..len]).zip(x).zip(yp) {
                            let main = if xv > 0.0 { sc * g } else { 0.0 };
                            *d = main + a + b * (yv - m);
                        }
                    }
                    None => {
                        for (d, &yv) in dx.iter_mut().zip(yp) {
                            *d = 0.0 + a + b * (yv - m);
                        }
                    }
                }
            }
        }
    }
}
