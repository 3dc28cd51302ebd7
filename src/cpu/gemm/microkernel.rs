//! GEMM microkernels: C[MR x NR] (+)= A_panel * B_panel over a reduction of length `kc`, with
//! A packed as `kc` groups of MR values (one per row) and B packed as `kc` groups of NR values (one per
//! column). The SIMD version is picked at run time:
//!
//! | isa    | MR x NR | registers                                   |
//! |--------|---------|---------------------------------------------|
//! | avx512 | 8 x 32  | 16 zmm accumulators, 2 B loads, 1 broadcast |
//! | avx2   | 6 x 16  | 12 ymm accumulators, 2 B loads, 1 broadcast |
//! | scalar | 4 x 8   | plain Rust (any target)                      |
//!
//! `CDA_CPU_ISA=scalar|avx2|avx512` picks a lower path than the best one (for tests and comparisons).
//! Every path is checked against a naive GEMM in this module's tests.

use std::sync::OnceLock;

/// The instruction set a kernel uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    Scalar,
    Avx2,
    Avx512,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2+fma",
            Isa::Avx512 => "avx512f",
        }
    }

    /// The best path this CPU runs.
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    }

    /// The best path, lowered by `CDA_CPU_ISA` if that is set to a lower one.
    pub fn selected() -> Isa {
        let best = Isa::detect();
        let wanted = match std::env::var("CDA_CPU_ISA").ok().as_deref() {
            Some("scalar") => Isa::Scalar,
            Some("avx2") => Isa::Avx2,
            _ => best,
        };
        wanted.min(best)
    }
}

/// `c` points at an MR x NR tile with row stride `ldc`; `accumulate` adds to it instead of storing.
type KernelFn = unsafe fn(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, accumulate: bool);

/// One microkernel and its tile shape.
#[derive(Clone, Copy)]
pub struct Kernel {
    pub isa: Isa,
    pub mr: usize,
    pub nr: usize,
    f: KernelFn,
}

impl Kernel {
    /// The kernel for `isa` (which the CPU must support: see [`Isa::detect`]).
    pub fn for_isa(isa: Isa) -> Kernel {
        assert!(isa <= Isa::detect(), "this CPU cannot run the {} kernel", isa.name());
        match isa {
            Isa::Scalar => Kernel { isa, mr: 4, nr: 8, f: scalar_4x8 },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => Kernel { isa, mr: 6, nr: 16, f: avx2_6x16 },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => Kernel { isa, mr: 8, nr: 32, f: avx512_8x32 },
            #[allow(unreachable_patterns)]
            _ => unreachable!(),
        }
    }

    /// The kernel every CPU op uses (chosen once per process).
    pub fn get() -> &'static Kernel {
        static K: OnceLock<Kernel> = OnceLock::new();
        K.get_or_init(|| Kernel::for_isa(Isa::selected()))
    }

    /// C[0..MR][0..NR] (+)= sum over p < kc of a[p*MR + i] * b[p*NR + j].
    ///
    /// # Safety
    /// `a` holds kc*MR and `b` kc*NR floats; `c` addresses MR rows of NR floats at stride `ldc`, not
    /// aliasing `a` or `b`.
    #[inline]
    pub unsafe fn run(&self, kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, accumulate: bool) {
        (self.f)(kc, a, b, c, ldc, accumulate)
    }

    /// As [`Kernel::run`] for a tile of which only `rows` x `cols` elements exist in `c`.
    ///
    /// # Safety
    /// As `run`, for the `rows` x `cols` part of `c`.
    #[allow(clippy::too_many_arguments)] // the microkernel's raw-pointer calling convention
    pub unsafe fn run_partial(&self, kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, accumulate: bool, rows: usize, cols: usize) {
        if rows == self.mr && cols == self.nr {
            return self.run(kc, a, b, c, ldc, accumulate);
        }
        let mut tmp = [0f32; 8 * 32];
        debug_assert!(self.mr * self.nr <= tmp.len());
        self.run(kc, a, b, tmp.as_mut_ptr(), self.nr, false);
        for i in 0..rows {
            let row = c.add(i * ldc);
            for j in 0..cols {
                let v = tmp[i * self.nr + j];
                *row.add(j) = if accumulate { *row.add(j) + v } else { v };
            }
        }
    }
}

unsafe fn scalar_4x8(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, accumulate: bool) {
    let mut acc = [[0f32; 8]; 4];
    for p in 0..kc {
        let bp = std::slice::from_raw_parts(b.add(p * 8), 8);
        let ap = std::slice::from_raw_parts(a.add(p * 4), 4);
        for i in 0..4 {
            for j in 0..8 {
                acc[i][j] += ap[i] * bp[j];
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        let dst = std::slice::from_raw_parts_mut(c.add(i * ldc), 8);
        for j in 0..8 {
            dst[j] = if accumulate { dst[j] + row[j] } else { row[j] };
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_6x16(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, accumulate: bool) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); 2]; 6];
    let (mut a, mut b) = (a, b);
    for _ in 0..kc {
        let b0 = _mm256_loadu_ps(b);
        let b1 = _mm256_loadu_ps(b.add(8));
        for (i, row) in acc.iter_mut().enumerate() {
            let ai = _mm256_broadcast_ss(&*a.add(i));
            row[0] = _mm256_fmadd_ps(ai, b0, row[0]);
            row[1] = _mm256_fmadd_ps(ai, b1, row[1]);
        }
        a = a.add(6);
        b = b.add(16);
    }
    for (i, row) in acc.iter().enumerate() {
        let dst = c.add(i * ldc);
        let (mut v0, mut v1) = (row[0], row[1]);
        if accumulate {
            v0 = _mm256_add_ps(v0, _mm256_loadu_ps(dst));
            v1 = _mm256_add_ps(v1, _mm256_loadu_ps(dst.add(8)));
        }
        _mm256_storeu_ps(dst, v0);
        _mm256_storeu_ps(dst.add(8), v1);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn avx512_8x32(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, accumulate: bool) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; 8];
    let (mut a, mut b) = (a, b);
    for _ in 0..kc {
        let b0 = _mm512_loadu_ps(b);
        let b1 = _mm512_loadu_ps(b.add(16));
        for (i, row) in acc.iter_mut().enumerate() {
            let ai = _mm512_set1_ps(*a.add(i));
            row[0] = _mm512_fmadd_ps(ai, b0, row[0]);
            row[1] = _mm512_fmadd_ps(ai, b1, row[1]);
        }
        a = a.add(8);
        b = b.add(32);
    }
    for (i, row) in acc.iter().enumerate() {
        let dst = c.add(i * ldc);
        let (mut v0, mut v1) = (row[0], row[1]);
        if accumulate {
            v0 = _mm512_add_ps(v0, _mm512_loadu_ps(dst));
            v1 = _mm512_add_ps(v1, _mm512_loadu_ps(dst.add(16)));
        }
        _mm512_storeu_ps(dst, v0);
        _mm512_storeu_ps(dst.add(16), v1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(k: &Kernel) {
        let (mr, nr) = (k.mr, k.nr);
        for kc in [1usize, 3, 17, 64] {
            let a: Vec<f32> = (0..kc * mr).map(|i| ((i * 7 % 13) as f32 - 6.0) / 7.0).collect();
            let b: Vec<f32> = (0..kc * nr).map(|i| ((i * 5 % 11) as f32 - 5.0) / 5.0).collect();
            let ldc = nr + 3;
            let mut c = vec![0.5f32; mr * ldc];
            // SAFETY: buffers sized as the kernel requires.
            unsafe { k.run(kc, a.as_ptr(), b.as_ptr(), c.as_mut_ptr(), ldc, true) };
            for i in 0..mr {
                for j in 0..ldc {
                    let want = if j < nr { 0.5 + (0..kc).map(|p| a[p * mr + i] as f64 * b[p * nr + j] as f64).sum::<f64>() } else { 0.5 };
                    assert!((c[i * ldc + j] as f64 - want).abs() < 1e-4, "{:?} kc {kc} ({i},{j}): {} vs {want}", k.isa, c[i * ldc + j]);
                }
            }
            let mut c2 = vec![9f32; mr * nr];
            // SAFETY: as above; a partial tile of 1 row and 3 columns.
            unsafe { k.run_partial(kc, a.as_ptr(), b.as_ptr(), c2.as_mut_ptr(), nr, false, 1, 3) };
            assert!((c2[0] - (c[0] - 0.5)).abs() < 1e-5 && c2[3] == 9.0 && c2[nr] == 9.0);
        }
    }

    #[test]
    fn every_available_kernel_matches_a_naive_gemm() {
        let best = Isa::detect();
        for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
            if isa <= best {
                check(&Kernel::for_isa(isa));
            }
        }
    }
}

/// Measured ceilings of this CPU for the notes and `cda-engine bench --ceiling`.
pub mod ceiling {
    use super::{Isa, Kernel};
    use std::time::Instant;

    /// FLOP/s of a register-only FMA loop (the instruction set's peak) on the calling thread.
    pub fn fma_flops(isa: Isa, secs: f64) -> f64 {
        let t = Instant::now();
        let mut flops = 0f64;
        let mut sink = 0f32;
        while t.elapsed().as_secs_f64() < secs {
            let (f, s) = fma_burst(isa, 1 << 20);
            flops += f;
            sink += s;
        }
        std::hint::black_box(sink);
        flops / t.elapsed().as_secs_f64()
    }

    fn fma_burst(isa: Isa, iters: usize) -> (f64, f32) {
        #[cfg(target_arch = "x86_64")]
        match isa {
            // SAFETY: callers pass an ISA this CPU supports (see `Isa::detect`).
            Isa::Avx512 => return unsafe { (fma_avx512(iters), 0.0) },
            // SAFETY: as above.
            Isa::Avx2 => return unsafe { (fma_avx2(iters), 0.0) },
            Isa::Scalar => {}
        }
        let _ = isa;
        let mut acc = [1f32; 8];
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = *a * 0.999_999 + 1e-7;
            }
        }
        (2.0 * 8.0 * iters as f64, acc.iter().sum())
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn fma_avx2(iters: usize) -> f64 {
        use std::arch::x86_64::*;
        let m = _mm256_set1_ps(0.999_999);
        let c = _mm256_set1_ps(1e-7);
        let mut acc = [_mm256_set1_ps(1.0); 12];
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = _mm256_fmadd_ps(*a, m, c);
            }
        }
        let mut s = acc[0];
        for a in &acc[1..] {
            s = _mm256_add_ps(s, *a);
        }
        std::hint::black_box(s);
        2.0 * 8.0 * 12.0 * iters as f64
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn fma_avx512(iters: usize) -> f64 {
        use std::arch::x86_64::*;
        let m = _mm512_set1_ps(0.999_999);
        let c = _mm512_set1_ps(1e-7);
        let mut acc = [_mm512_set1_ps(1.0); 16];
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = _mm512_fmadd_ps(*a, m, c);
            }
        }
        let mut s = acc[0];
        for a in &acc[1..] {
            s = _mm512_add_ps(s, *a);
        }
        std::hint::black_box(s);
        2.0 * 16.0 * 16.0 * iters as f64
    }

    /// FLOP/s of the microkernel on cache-resident panels (reduction `kc`) on the calling thread.
    pub fn kernel_flops(k: &Kernel, kc: usize, secs: f64) -> f64 {
        let a: Vec<f32> = (0..kc * k.mr).map(|i| 1.0 + (i % 7) as f32 * 1e-3).collect();
        let b: Vec<f32> = (0..kc * k.nr).map(|i| 1.0 - (i % 5) as f32 * 1e-3).collect();
        let mut c = vec![0f32; k.mr * k.nr];
        let t = Instant::now();
        let mut calls = 0u64;
        while t.elapsed().as_secs_f64() < secs {
            for _ in 0..256 {
                // SAFETY: panels sized for the kernel.
                unsafe { k.run(kc, a.as_ptr(), b.as_ptr(), c.as_mut_ptr(), k.nr, false) };
            }
            calls += 256;
        }
        std::hint::black_box(&c);
        2.0 * (k.mr * k.nr * kc) as f64 * calls as f64 / t.elapsed().as_secs_f64()
    }
}
