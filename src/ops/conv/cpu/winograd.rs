//! Winograd F(4x4, 3x3) for 3x3 stride-1 pad-1 convolutions, fprop and dgrad (dgrad is the same conv
//! on dy with the weights flipped and C/K swapped).
//!
//! Y = A^T [ (G g G^T) (.) (B^T d B) ] A with the points (0, 1, -1, 2, -2, inf) (Lavin & Gray):
//! a 4x4 output tile costs 36 multiplies per (input, output) channel pair instead of 144. The 36
//! element-wise products summed over input channels are 36 independent GEMMs
//! M[xi] (Cout x T) = U[xi] (Cout x Cin) * V[xi] (Cin x T) over T tiles, run by the shared microkernel:
//! - weights: U = G g G^T, packed as the microkernel's A panels ([`transform_weights`], cacheable);
//! - input: a zero-padded copy of the input (so no tile needs bounds checks), then B^T d B for 8 tiles
//!   at a time (one SIMD vector per element, lane = tile), written straight into the B strips;
//! - output: A^T M A for 8 tiles at a time into a staging image of the chunk's rows, then the
//!   epilogue on whole output rows.
//!
//! Tiles are numbered (image, tile row, tile column); chunks are runs of whole tile rows, which bound
//! the scratch (V and M). With small weights and many chunks each thread runs whole chunks; otherwise
//! chunks go one at a time with every phase split over the threads.
//!
//! Accuracy: the transforms scale values by up to ~100 (B^T and A^T entries up to 8, G down to 1/24),
//! so results carry a few 1e-6 of an output's scale of fp32 rounding against ~1e-7 for direct
//! summation (measured in tests/cpu_conv.rs: up to 6e-6).
// The transforms index tiles and rows by their position in the maths (B^T d B, G g G^T, A^T m A),
// so index loops read as the formulas do.
#![allow(clippy::needless_range_loop)]

use rayon::prelude::*;

use super::epilogue::{Dgrad, Fprop, Moments};
use crate::cpu::gemm::microkernel::{Isa, Kernel};
use crate::cpu::par::{with_scratch, Scratch, SyncPtr};
use crate::ops::conv::ConvProblem;

const KC: usize = 256;
/// Lanes of the transforms (tiles per vector).
const L: usize = 8;
type V8 = [f32; L];

/// Where finished output rows go.
pub enum Epi<'a, 'b> {
    Fprop(&'b Fprop<'a>),
    Dgrad(&'b Dgrad<'a>),
}

/// One Winograd problem: `cin` -> `cout` channels on n images of h x w.
#[derive(Clone, Copy)]
pub struct Geo {
    n: usize,
    cin: usize,
    cout: usize,
    h: usize,
    w: usize,
    th: usize,
    tw: usize,
    /// The padded input plane: rows -1 .. 4*th + 1, columns -1 .. 4*tw + 3 (8-wide loads stay inside).
    hp: usize,
    wp: usize,
}

impl Geo {
    pub fn new(n: usize, cin: usize, cout: usize, h: usize, w: usize) -> Geo {
        let (th, tw) = (h.div_ceil(4), w.div_ceil(4));
        Geo { n, cin, cout, h, w, th, tw, hp: 4 * th + 2, wp: 4 * tw + 4 }
    }
    fn fprop(p: &ConvProblem) -> Geo {
        Geo::new(p.n as usize, p.c as usize, p.k as usize, p.h as usize, p.w as usize)
    }
    fn dgrad(p: &ConvProblem) -> Geo {
        Geo::new(p.n as usize, p.k as usize, p.c as usize, p.h as usize, p.w as usize)
    }
    fn tile_rows(&self) -> usize {
        self.n * self.th
    }
    fn padded_len(&self) -> usize {
        self.n * self.cin * self.hp * self.wp + self.hp * self.wp
    }
}

/// Length of the transformed weights of the fprop (`dgrad` = false) or dgrad of `p` for `kern`.
pub fn weights_len(kern: &Kernel, p: &ConvProblem, dgrad: bool) -> usize {
    let geo = if dgrad { Geo::dgrad(p) } else { Geo::fprop(p) };
    36 * geo.cout.div_ceil(kern.mr) * kern.mr * geo.cin
}

/// U for the fprop of `p` (`dgrad` = false) or its dgrad; returns the used length.
pub fn transform_weights(kern: &Kernel, p: &ConvProblem, w: &[f32], dgrad: bool, u: &mut [f32]) -> usize {
    let geo = if dgrad { Geo::dgrad(p) } else { Geo::fprop(p) };
    let mr = kern.mr;
    let panels = geo.cout.div_ceil(mr);
    let (cin, cout) = (geo.cin, geo.cout);
    let plane = panels * mr * cin; // one xi
    assert!(u.len() >= 36 * plane);
    let up = SyncPtr(u.as_mut_ptr());
    (0..panels).into_par_iter().for_each(|pn| {
        for ci in 0..cin {
            // g[r][s][lane = output channel within the panel]
            let mut g = [[[0f32; L]; 3]; 3];
            for i in 0..mr.min(cout - pn * mr).min(L) {
                let m = pn * mr + i;
                for r in 0..3 {
                    for s in 0..3 {
                        g[r][s][i] = if dgrad { w[((ci * cout + m) * 3 + (2 - r)) * 3 + (2 - s)] } else { w[((m * cin + ci) * 3 + r) * 3 + s] };
                    }
                }
            }
            let mut t = [[[0f32; L]; 3]; 6];
            for s in 0..3 {
                let c = g_col([g[0][s], g[1][s], g[2][s]]);
                for a in 0..6 {
                    t[a][s] = c[a];
                }
            }
            for a in 0..6 {
                let row = g_col(t[a]);
                for b in 0..6 {
                    let at = (a * 6 + b) * plane + (pn * cin + ci) * mr;
                    // SAFETY: each task writes only its own panel of every xi plane.
                    let dst = unsafe { up.slice(at, mr) };
                    dst.copy_from_slice(&row[b][..mr]);
                }
            }
        }
    });
    36 * plane
}

/// G (6x3) times a 3-vector of lanes.
#[inline(always)]
fn g_col(g: [V8; 3]) -> [V8; 6] {
    let s = add(g[0], g[2]);
    [
        scale(g[0], 0.25),
        scale(add(s, g[1]), -1.0 / 6.0),
        scale(sub(s, g[1]), -1.0 / 6.0),
        add(add(scale(g[0], 1.0 / 24.0), scale(g[1], 1.0 / 12.0)), scale(g[2], 1.0 / 6.0)),
        add(sub(scale(g[0], 1.0 / 24.0), scale(g[1], 1.0 / 12.0)), scale(g[2], 1.0 / 6.0)),
        g[2],
    ]
}

pub fn fprop(kern: &Kernel, p: &ConvProblem, x: &[f32], u: &[f32], f: &Fprop, moments: Option<&mut [Moments]>) {
    run(kern, &Geo::fprop(p), x, u, Epi::Fprop(f), moments);
}

pub fn dgrad(kern: &Kernel, p: &ConvProblem, dy: &[f32], u: &[f32], d: &Dgrad) {
    run(kern, &Geo::dgrad(p), dy, u, Epi::Dgrad(d), None);
}

fn run(kern: &Kernel, geo: &Geo, src: &[f32], u: &[f32], epi: Epi, moments: Option<&mut [Moments]>) {
    let (mr, nr) = (kern.mr, kern.nr);
    let panels = geo.cout.div_ceil(mr);
    let threads = rayon::current_num_threads().max(1);
    let rows_all = geo.tile_rows();
    let per_tile = 36 * (geo.cin + panels * mr);
    let u_bytes = 4 * 36 * panels * mr * geo.cin;
    // Tile rows per chunk when threads take whole chunks: V and M within ~1 MiB.
    let small_rows = ((256 * 1024 / per_tile) / geo.tw).max(1);
    let per_thread = u_bytes <= (3 << 20) && rows_all >= 2 * threads * small_rows;
    let want = moments.is_some();
    let cout = geo.cout;
    let stage_len = |rows: usize| rows * 4 * 4 * geo.tw;
    let pad_len = geo.padded_len();
    if per_thread {
        with_scratch(Scratch::Shared, pad_len, |xp| {
            pad_input(geo, src, xp);
            let xp: &[f32] = xp;
            let chunks = rows_all.div_ceil(small_rows);
            let parts: Vec<Vec<Moments>> = (0..chunks)
                .into_par_iter()
                .fold(
                    || vec![Moments::default(); if want { cout } else { 0 }],
                    |mut acc, ci| {
                        let r0 = ci * small_rows;
                        let nrows = (rows_all - r0).min(small_rows);
                        let tcp = (nrows * geo.tw).div_ceil(nr) * nr;
                        let (vl, ml) = (36 * tcp * geo.cin, 36 * tcp * panels * mr);
                        with_scratch(Scratch::Task, vl + ml + stage_len(nrows), |buf| {
                            let (v, rest) = buf.split_at_mut(vl);
                            let (mm, stage) = rest.split_at_mut(ml);
                            input_transform(kern, geo, xp, r0, nrows, tcp, 0, geo.cin, v);
                            for xi in 0..36 {
                                gemm(kern, geo, u, v, mm, tcp, xi, 0, panels);
                            }
                            for ch in 0..cout {
                                output_channel(kern, geo, mm, r0, nrows, tcp, ch, stage, &epi, if want { Some(&mut acc[ch]) } else { None });
                            }
                        });
                        acc
                    },
                )
                .collect();
            if let Some(m) = moments {
                sum_moments(m, &parts);
            }
        });
        return;
    }
    // One chunk at a time (as many tile rows as ~32 MiB of V and M allow), phases split over threads.
    let big_rows = (((32usize << 20) / (4 * per_tile)) / geo.tw).max(1).min(rows_all);
    let tcp_max = (big_rows * geo.tw).div_ceil(nr) * nr;
    let (vl_max, ml_max) = (36 * tcp_max * geo.cin, 36 * tcp_max * panels * mr);
    let mut parts: Vec<Vec<Moments>> = Vec::new();
    with_scratch(Scratch::Shared, pad_len + vl_max + ml_max, |buf| {
        let (xp, rest) = buf.split_at_mut(pad_len);
        pad_input(geo, src, xp);
        let xp: &[f32] = xp;
        let (v_all, m_all) = rest.split_at_mut(vl_max);
        let mut r0 = 0;
        while r0 < rows_all {
            let nrows = (rows_all - r0).min(big_rows);
            let tcp = (nrows * geo.tw).div_ceil(nr) * nr;
            let v = &mut v_all[..36 * tcp * geo.cin];
            let mm = &mut m_all[..36 * tcp * panels * mr];
            // Input transform: tasks over channel blocks (each writes its own channels' rows of V).
            let cb = geo.cin.div_ceil(threads * 4).max(1);
            let vp = SyncPtr(v.as_mut_ptr());
            let vlen = v.len();
            (0..geo.cin.div_ceil(cb)).into_par_iter().for_each(|b| {
                // SAFETY: tasks write disjoint channel rows of V.
                let v = unsafe { vp.slice(0, vlen) };
                input_transform(kern, geo, xp, r0, nrows, tcp, b * cb, ((b + 1) * cb).min(geo.cin), v);
            });
            let v: &[f32] = v;
            // GEMMs: tasks over (xi, blocks of row panels).
            let splits = (2 * threads).div_ceil(36).max(1);
            let pb = panels.div_ceil(splits);
            let per_xi = panels.div_ceil(pb);
            let mp = SyncPtr(mm.as_mut_ptr());
            let mlen = mm.len();
            (0..36 * per_xi).into_par_iter().for_each(|task| {
                let (xi, b) = (task / per_xi, task % per_xi);
                // SAFETY: tasks write disjoint (xi, panel) rows of M.
                let mm = unsafe { mp.slice(0, mlen) };
                gemm(kern, geo, u, v, mm, tcp, xi, b * pb, ((b + 1) * pb).min(panels));
            });
            let mm: &[f32] = mm;
            // Output transform + epilogue: tasks over output channels.
            let chunk_parts: Vec<Vec<Moments>> = (0..cout)
                .into_par_iter()
                .fold(
                    || vec![Moments::default(); if want { cout } else { 0 }],
                    |mut acc, ch| {
                        with_scratch(Scratch::Task, stage_len(nrows), |stage| {
                            output_channel(kern, geo, mm, r0, nrows, tcp, ch, stage, &epi, if want { Some(&mut acc[ch]) } else { None });
                        });
                        acc
                    },
                )
                .collect();
            parts.extend(chunk_parts);
            r0 += nrows;
        }
    });
    if let Some(m) = moments {
        sum_moments(m, &parts);
    }
}

fn sum_moments(out: &mut [Moments], parts: &[Vec<Moments>]) {
    for (ch, o) in out.iter_mut().enumerate() {
        *o = Moments::default();
        for p in parts {
            o.s1 += p[ch].s1;
            o.s2 += p[ch].s2;
        }
    }
}

/// xp[n][c][1 + i][1 + j] = src[n][c][i][j], zero elsewhere; then a zero plane (for empty lanes).
fn pad_input(geo: &Geo, src: &[f32], xp: &mut [f32]) {
    let (h, w, hp, wp) = (geo.h, geo.w, geo.hp, geo.wp);
    let planes = geo.n * geo.cin;
    assert!(src.len() >= planes * h * w && xp.len() >= (planes + 1) * hp * wp);
    xp[..(planes + 1) * hp * wp].par_chunks_mut(hp * wp).enumerate().for_each(|(pl, dst)| {
        if pl == planes {
            dst.fill(0.0);
            return;
        }
        let s = &src[pl * h * w..(pl + 1) * h * w];
        dst[..wp].fill(0.0);
        for i in 0..hp - 1 {
            let row = &mut dst[(i + 1) * wp..(i + 2) * wp];
            if i < h {
                row[0] = 0.0;
                row[1..w + 1].copy_from_slice(&s[i * w..(i + 1) * w]);
                row[w + 1..].fill(0.0);
            } else {
                row.fill(0.0);
            }
        }
    });
}

/// Lane i of a group of 8 tiles holds tile PERM[i] of the group (in V and M alike): the order that
/// in-lane (128-bit) 4x4 transposes produce from 8 consecutive tiles of a row, so that the common
/// case needs no lane-crossing shuffles (slow on some CPUs) in either transform.
const PERM: [usize; L] = [0, 2, 4, 6, 1, 3, 5, 7];

/// Offsets into the padded input (channel 0) of the top-left corners of the tiles in the lanes of
/// group g of a chunk starting at tile row r0 with `tiles` tiles; empty lanes point at the zero plane.
#[inline(always)]
fn lane_bases(geo: &Geo, r0: usize, tiles: usize, g: usize) -> ([usize; L], [bool; L]) {
    let mut base = [geo.n * geo.cin * geo.hp * geo.wp; L];
    let mut valid = [false; L];
    for l in 0..L {
        let t = g * L + PERM[l];
        if t < tiles {
            let (gr, tx) = (r0 + t / geo.tw, t % geo.tw);
            let (n, ty) = (gr / geo.th, gr % geo.th);
            base[l] = (n * geo.cin * geo.hp + 4 * ty) * geo.wp + 4 * tx;
            valid[l] = true;
        }
    }
    (base, valid)
}

/// V[xi][strip][ci][lane] = (B^T d B)[xi] of the chunk's tile strip * NR + lane, for ci in c0..c1.
#[allow(clippy::too_many_arguments)]
fn input_transform(kern: &Kernel, geo: &Geo, xp: &[f32], r0: usize, nrows: usize, tcp: usize, c0: usize, c1: usize, v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if kern.isa >= Isa::Avx2 {
        // SAFETY: the kernel's ISA (AVX2 or better) is present on this CPU.
        return unsafe { x86::input_transform(kern.nr, geo, xp, r0, nrows, tcp, c0, c1, v) };
    }
    let nr = kern.nr;
    let tiles = nrows * geo.tw;
    let pp = geo.hp * geo.wp;
    let xi_len = tcp * geo.cin;
    for g in 0..tcp / L {
        let (base, valid) = lane_bases(geo, r0, tiles, g);
        let (strip, lane0) = ((g * L) / nr, (g * L) % nr);
        for ci in c0..c1 {
            let mut d = [[[0f32; L]; 6]; 6];
            for l in 0..L {
                let o = if valid[l] { base[l] + ci * pp } else { base[l] };
                for a in 0..6 {
                    for b in 0..6 {
                        d[a][b][l] = xp[o + a * geo.wp + b];
                    }
                }
            }
            let vv = transform_in(d);
            for xi in 0..36 {
                let at = xi * xi_len + (strip * geo.cin + ci) * nr + lane0;
                v[at..at + L].copy_from_slice(&vv[xi]);
            }
        }
    }
}

/// B^T d B of 8 tiles.
#[inline(always)]
fn transform_in(d: [[V8; 6]; 6]) -> [V8; 36] {
    let mut t = [[[0f32; L]; 6]; 6];
    for b in 0..6 {
        let col = bt([d[0][b], d[1][b], d[2][b], d[3][b], d[4][b], d[5][b]]);
        for a in 0..6 {
            t[a][b] = col[a];
        }
    }
    let mut out = [[0f32; L]; 36];
    for a in 0..6 {
        let row = bt(t[a]);
        out[a * 6..a * 6 + 6].copy_from_slice(&row);
    }
    out
}

#[inline(always)]
fn add(a: V8, b: V8) -> V8 {
    std::array::from_fn(|i| a[i] + b[i])
}
#[inline(always)]
fn sub(a: V8, b: V8) -> V8 {
    std::array::from_fn(|i| a[i] - b[i])
}
#[inline(always)]
fn scale(a: V8, s: f32) -> V8 {
    std::array::from_fn(|i| a[i] * s)
}

/// B^T (6x6) times a 6-vector of lanes.
#[inline(always)]
fn bt(d: [V8; 6]) -> [V8; 6] {
    let a = sub(d[4], scale(d[2], 4.0));
    let b = sub(d[3], scale(d[1], 4.0));
    let c = sub(d[4], d[2]);
    let e = scale(sub(d[3], d[1]), 2.0);
    [add(sub(scale(d[0], 4.0), scale(d[2], 5.0)), d[4]), add(a, b), sub(a, b), add(c, e), sub(c, e), add(sub(scale(d[1], 4.0), scale(d[3], 5.0)), d[5])]
}

/// A^T (4x6) times a 6-vector of lanes.
#[inline(always)]
fn at(m: [V8; 6]) -> [V8; 4] {
    let s12 = add(m[1], m[2]);
    let d12 = sub(m[1], m[2]);
    let s34 = add(m[3], m[4]);
    let d34 = sub(m[3], m[4]);
    [add(add(m[0], s12), s34), add(d12, scale(d34, 2.0)), add(s12, scale(s34, 4.0)), add(add(d12, scale(d34, 8.0)), m[5])]
}

/// M[xi][rows of panels p0..p1][tiles] = U[xi] * V[xi].
#[allow(clippy::too_many_arguments)]
fn gemm(kern: &Kernel, geo: &Geo, u: &[f32], v: &[f32], m: &mut [f32], tcp: usize, xi: usize, p0: usize, p1: usize) {
    let (mr, nr) = (kern.mr, kern.nr);
    let cin = geo.cin;
    let panels = geo.cout.div_ceil(mr);
    let u_xi = &u[xi * panels * mr * cin..(xi + 1) * panels * mr * cin];
    let v_xi = &v[xi * tcp * cin..(xi + 1) * tcp * cin];
    let m_xi = &mut m[xi * panels * mr * tcp..(xi + 1) * panels * mr * tcp];
    let mut k0 = 0;
    while k0 < cin {
        let kc = KC.min(cin - k0);
        for s in 0..tcp / nr {
            let b = &v_xi[(s * cin + k0) * nr..];
            for pn in p0..p1 {
                let a = &u_xi[(pn * cin + k0) * mr..];
                let c = &mut m_xi[pn * mr * tcp + s * nr..];
                // SAFETY: A panel (kc*mr from k0), B strip (kc*nr from k0) and an mr x nr tile of M
                // with row stride tcp lie in their (sliced) buffers.
                unsafe { kern.run(kc, a.as_ptr(), b.as_ptr(), c.as_mut_ptr(), tcp, k0 > 0) };
            }
        }
        k0 += kc;
    }
}

/// Output channel `ch` of the chunk: A^T M A into `stage` (rows of 4*tw per tile row), then the
/// epilogue on each output row.
#[allow(clippy::too_many_arguments)]
fn output_channel(
    kern: &Kernel,
    geo: &Geo,
    mm: &[f32],
    r0: usize,
    nrows: usize,
    tcp: usize,
    ch: usize,
    stage: &mut [f32],
    epi: &Epi,
    mut moments: Option<&mut Moments>,
) {
    let tiles = nrows * geo.tw;
    #[cfg(target_arch = "x86_64")]
    let done = if kern.isa >= Isa::Avx2 {
        // SAFETY: the kernel's ISA (AVX2 or better) is present on this CPU.
        unsafe { x86::output_transform(kern.mr, geo, mm, tiles, tcp, ch, stage) };
        true
    } else {
        false
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = false;
    if !done {
        output_transform(kern.mr, geo, mm, tiles, tcp, ch, stage);
    }
    // Rows of the staged chunk, one run per output row (or per image when rows are contiguous).
    let wq = 4 * geo.tw;
    let plane = geo.h * geo.w;
    let mut gr = r0;
    while gr < r0 + nrows {
        let (n, ty) = (gr / geo.th, gr % geo.th);
        // Tile rows of this image in the chunk.
        let last = (r0 + nrows).min((n + 1) * geo.th);
        let (y0, y1) = (4 * ty, (4 * (last - n * geo.th)).min(geo.h));
        let dst0 = (n * geo.cout + ch) * plane;
        let srow = 4 * (gr - r0);
        if wq == geo.w {
            let raw = &stage[srow * wq..(srow + y1 - y0) * wq];
            // SAFETY: each (channel, output row) is written by exactly one task.
            unsafe { emit(epi, ch, raw, dst0 + y0 * geo.w, moments.as_deref_mut()) };
        } else {
            for y in y0..y1 {
                let raw = &stage[(srow + y - y0) * wq..(srow + y - y0) * wq + geo.w];
                // SAFETY: as above.
                unsafe { emit(epi, ch, raw, dst0 + y * geo.w, moments.as_deref_mut()) };
            }
        }
        gr = last;
    }
}

/// # Safety
/// The run `dst..dst + raw.len()` of the output belongs to the caller's task.
#[inline]
unsafe fn emit(epi: &Epi, ch: usize, raw: &[f32], dst: usize, moments: Option<&mut Moments>) {
    match epi {
        Epi::Fprop(f) => f.run(ch, raw, dst, moments),
        Epi::Dgrad(d) => d.run(ch, Some(raw), raw.len(), dst, 1),
    }
}

/// Portable A^T M A of every tile of the chunk for channel ch into `stage`.
fn output_transform(mr: usize, geo: &Geo, mm: &[f32], tiles: usize, tcp: usize, ch: usize, stage: &mut [f32]) {
    let panels = geo.cout.div_ceil(mr);
    let xi_len = panels * mr * tcp;
    let wq = 4 * geo.tw;
    for g in 0..tiles.div_ceil(L) {
        let mut q = [[[0f32; L]; 6]; 6];
        for (xi, v) in q.iter_mut().flatten().enumerate() {
            let at = xi * xi_len + ch * tcp + g * L;
            v.copy_from_slice(&mm[at..at + L]);
        }
        let o = transform_out(q);
        for l in 0..L {
            let t = g * L + PERM[l];
            if t >= tiles {
                continue;
            }
            let (tr, tx) = (t / geo.tw, t % geo.tw);
            for a in 0..4 {
                let row = &mut stage[(4 * tr + a) * wq + 4 * tx..][..4];
                for b in 0..4 {
                    row[b] = o[a][b][l];
                }
            }
        }
    }
}

/// A^T q A of 8 tiles.
#[inline(always)]
fn transform_out(q: [[V8; 6]; 6]) -> [[V8; 4]; 4] {
    let mut t = [[[0f32; L]; 6]; 4];
    for b in 0..6 {
        let col = at([q[0][b], q[1][b], q[2][b], q[3][b], q[4][b], q[5][b]]);
        for a in 0..4 {
            t[a][b] = col[a];
        }
    }
    let mut o = [[[0f32; L]; 4]; 4];
    for a in 0..4 {
        o[a] = at(t[a]);
    }
    o
}

/// AVX2 versions of the input and output transforms: 8x8 / 4x4 register transposes move between
/// "lane = tile" vectors and tile rows.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{lane_bases, Geo, L};

    /// B^T (6x6) times 6 vectors.
    #[inline(always)]
    unsafe fn bt(d: [__m256; 6]) -> [__m256; 6] {
        let four = _mm256_set1_ps(4.0);
        let five = _mm256_set1_ps(5.0);
        let two = _mm256_set1_ps(2.0);
        let a = _mm256_fnmadd_ps(four, d[2], d[4]);
        let b = _mm256_fnmadd_ps(four, d[1], d[3]);
        let c = _mm256_sub_ps(d[4], d[2]);
        let e = _mm256_mul_ps(two, _mm256_sub_ps(d[3], d[1]));
        [
            _mm256_add_ps(_mm256_fnmadd_ps(five, d[2], _mm256_mul_ps(four, d[0])), d[4]),
            _mm256_add_ps(a, b),
            _mm256_sub_ps(a, b),
            _mm256_add_ps(c, e),
            _mm256_sub_ps(c, e),
            _mm256_add_ps(_mm256_fnmadd_ps(five, d[3], _mm256_mul_ps(four, d[1])), d[5]),
        ]
    }

    /// A^T (4x6) times 6 vectors.
    #[inline(always)]
    unsafe fn at(m: [__m256; 6]) -> [__m256; 4] {
        let s12 = _mm256_add_ps(m[1], m[2]);
        let d12 = _mm256_sub_ps(m[1], m[2]);
        let s34 = _mm256_add_ps(m[3], m[4]);
        let d34 = _mm256_sub_ps(m[3], m[4]);
        [
            _mm256_add_ps(_mm256_add_ps(m[0], s12), s34),
            _mm256_fmadd_ps(_mm256_set1_ps(2.0), d34, d12),
            _mm256_fmadd_ps(_mm256_set1_ps(4.0), s34, s12),
            _mm256_add_ps(_mm256_fmadd_ps(_mm256_set1_ps(8.0), d34, d12), m[5]),
        ]
    }

    /// 4x4 transposes within each 128-bit half of four vectors.
    #[inline(always)]
    unsafe fn transpose4x2(v: [__m256; 4]) -> [__m256; 4] {
        let t0 = _mm256_unpacklo_ps(v[0], v[1]);
        let t1 = _mm256_unpackhi_ps(v[0], v[1]);
        let t2 = _mm256_unpacklo_ps(v[2], v[3]);
        let t3 = _mm256_unpackhi_ps(v[2], v[3]);
        [_mm256_shuffle_ps::<0x44>(t0, t2), _mm256_shuffle_ps::<0xEE>(t0, t2), _mm256_shuffle_ps::<0x44>(t1, t3), _mm256_shuffle_ps::<0xEE>(t1, t3)]
    }

    /// [lo[0..4] | hi[0..4]] from two unaligned addresses.
    #[inline(always)]
    unsafe fn halves(lo: *const f32, hi: *const f32) -> __m256 {
        _mm256_insertf128_ps::<1>(_mm256_castps128_ps256(_mm_loadu_ps(lo)), _mm_loadu_ps(hi))
    }

    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn input_transform(nr: usize, geo: &Geo, xp: &[f32], r0: usize, nrows: usize, tcp: usize, c0: usize, c1: usize, v: &mut [f32]) {
        let tiles = nrows * geo.tw;
        let pp = geo.hp * geo.wp;
        let wp = geo.wp;
        let xi_len = tcp * geo.cin;
        assert!(v.len() >= 36 * xi_len && xp.len() >= geo.padded_len());
        let xptr = xp.as_ptr();
        let vptr = v.as_mut_ptr();
        for g in 0..tcp / L {
            let (base, valid) = lane_bases(geo, r0, tiles, g);
            // Eight consecutive tiles of one tile row: rows of the patches are one contiguous run.
            let t0 = g * L;
            let row_run = t0 + L <= tiles && (t0 % geo.tw) + L <= geo.tw;
            let (strip, lane0) = ((g * L) / nr, (g * L) % nr);
            for ci in c0..c1 {
                let mut d = [[_mm256_setzero_ps(); 6]; 6];
                if row_run {
                    // base[0] is tile t0 (PERM[0] = 0).
                    let p0 = xptr.add(base[0] + ci * pp);
                    for (a, da) in d.iter_mut().enumerate() {
                        let row = p0.add(a * wp);
                        let lo = transpose4x2(std::array::from_fn(|j| _mm256_loadu_ps(row.add(8 * j))));
                        let hi = transpose4x2(std::array::from_fn(|j| _mm256_loadu_ps(row.add(8 * j + 4))));
                        *da = [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1]];
                    }
                } else {
                    let mut off = [0usize; L];
                    for l in 0..L {
                        off[l] = if valid[l] { base[l] + ci * pp } else { base[l] };
                    }
                    for (a, da) in d.iter_mut().enumerate() {
                        let at = |l: usize| xptr.add(off[l] + a * wp);
                        let lo = transpose4x2(std::array::from_fn(|j| halves(at(j), at(j + 4))));
                        let hi = transpose4x2(std::array::from_fn(|j| halves(at(j).add(4), at(j + 4).add(4))));
                        *da = [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1]];
                    }
                }
                let mut t = [[_mm256_setzero_ps(); 6]; 6];
                for b in 0..6 {
                    let col = bt([d[0][b], d[1][b], d[2][b], d[3][b], d[4][b], d[5][b]]);
                    for a in 0..6 {
                        t[a][b] = col[a];
                    }
                }
                let dst = vptr.add((strip * geo.cin + ci) * nr + lane0);
                for a in 0..6 {
                    let row = bt(t[a]);
                    for b in 0..6 {
                        _mm256_storeu_ps(dst.add((a * 6 + b) * xi_len), row[b]);
                    }
                }
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn output_transform(mr: usize, geo: &Geo, mm: &[f32], tiles: usize, tcp: usize, ch: usize, stage: &mut [f32]) {
        let panels = geo.cout.div_ceil(mr);
        let xi_len = panels * mr * tcp;
        let wq = 4 * geo.tw;
        assert!(mm.len() >= 36 * xi_len && stage.len() >= tiles.div_ceil(geo.tw) * 4 * wq);
        let src = mm.as_ptr().add(ch * tcp);
        for g in 0..tiles.div_ceil(L) {
            let q: [__m256; 36] = std::array::from_fn(|xi| _mm256_loadu_ps(src.add(xi * xi_len + g * L)));
            let mut t = [[_mm256_setzero_ps(); 6]; 4];
            for b in 0..6 {
                let col = at([q[b], q[6 + b], q[12 + b], q[18 + b], q[24 + b], q[30 + b]]);
                for a in 0..4 {
                    t[a][b] = col[a];
                }
            }
            let t0 = g * L;
            let row_run = t0 + L <= tiles && (t0 % geo.tw) + L <= geo.tw;
            for a in 0..4 {
                let o = at(t[a]);
                // r[j] = [tile 2j | tile 2j + 1] (lanes hold tiles in PERM order), columns 0..3.
                let r = transpose4x2(o);
                if row_run {
                    let (tr, tx) = (t0 / geo.tw, t0 % geo.tw);
                    let dst = stage.as_mut_ptr().add((4 * tr + a) * wq + 4 * tx);
                    for (j, v) in r.iter().enumerate() {
                        _mm256_storeu_ps(dst.add(8 * j), *v);
                    }
                    continue;
                }
                for j in 0..4 {
                    for (h, t) in [(0, t0 + 2 * j), (1, t0 + 2 * j + 1)] {
                        if t >= tiles {
                            continue;
                        }
                        let (tr, tx) = (t / geo.tw, t % geo.tw);
                        let half = if h == 0 { _mm256_castps256_ps128(r[j]) } else { _mm256_extractf128_ps::<1>(r[j]) };
                        _mm_storeu_ps(stage.as_mut_ptr().add((4 * tr + a) * wq + 4 * tx), half);
                    }
                }
            }
        }
    }
}
