//! Implicit-GEMM convolution: out[m][col] = sum_kk A[m][kk] * B[kk][col] where the columns are output
//! positions of all images (GEMM_N = N * grid), the reduction runs over (source channel, tap) and B is
//! gathered from the N C H W source while it is packed (no im2col buffer). Used for fprop of every conv
//! Winograd does not take, and for dgrad as one such GEMM per output phase: the positions
//! `(ph + stride * i, pw + stride * j)` of dx receive only the taps with `(ph + pad - r) % stride == 0`,
//! read from dy at `(i + (ph + pad - r) / stride, ...)`, so dgrad needs neither col2im nor zero taps.
//!
//! Blocking (BLIS order): tasks own (column block of NC, row chunk of <= MC); per task, the reduction
//! goes in slices of KC: pack B (KC x NC, gathered) -> for each NR strip, for each MR row panel, the
//! microkernel into a task-local C block. When the block is complete the epilogue writes it out.

use rayon::prelude::*;

use super::epilogue::{Dgrad, Fprop, Moments};
use crate::cpu::gemm::microkernel::Kernel;
use crate::cpu::par::{with_scratch, Scratch, SyncPtr};

const KC: usize = 256;
const MC: usize = 240;

/// The source side of the GEMM: B[(c, t)][col] = src[n][c][oi * step + taps[t].0][oj * step + taps[t].1].
pub struct Source<'a> {
    pub data: &'a [f32],
    pub ch: usize,
    pub h: usize,
    pub w: usize,
    pub step: usize,
    pub taps: &'a [(isize, isize)],
}

/// The columns: `n` images times a `gp` x `gq` grid of output positions
/// `(oh0 + oi * ostride, ow0 + oj * ostride)` in an output plane of `oh` x `ow`.
#[derive(Clone, Copy)]
pub struct Grid {
    pub n: usize,
    pub gp: usize,
    pub gq: usize,
    pub oh: usize,
    pub ow: usize,
    pub oh0: usize,
    pub ow0: usize,
    pub ostride: usize,
    /// Output channels (GEMM_M).
    pub m: usize,
}

impl Grid {
    fn cols(&self) -> usize {
        self.n * self.gp * self.gq
    }
    /// (image, offset of the position in the image's plane) of column `col`.
    #[inline]
    fn locate(&self, col: usize) -> (usize, usize) {
        let g = self.gp * self.gq;
        let (n, r) = (col / g, col % g);
        let (oi, oj) = (r / self.gq, r % self.gq);
        (n, (self.oh0 + oi * self.ostride) * self.ow + self.ow0 + oj * self.ostride)
    }
}

/// What happens to a finished block of raw results.
pub enum Epi<'a, 'b> {
    Fprop(&'b Fprop<'a>),
    Dgrad(&'b Dgrad<'a>),
}

/// Packs A (M x KK, element (m, kk) from `a`) into MR-row panels: panel b holds, for each kk, the
/// MR values of rows b*MR.. (zero past M).
pub fn pack_a(kern: &Kernel, m: usize, kk: usize, a: impl Fn(usize, usize) -> f32 + Sync, dst: &mut [f32]) {
    let mr = kern.mr;
    let panels = m.div_ceil(mr);
    assert!(dst.len() >= panels * kk * mr);
    dst[..panels * kk * mr].par_chunks_mut(kk * mr).enumerate().for_each(|(b, panel)| {
        for i in 0..mr {
            let row = b * mr + i;
            if row < m {
                for k in 0..kk {
                    panel[k * mr + i] = a(row, k);
                }
            } else {
                for k in 0..kk {
                    panel[k * mr + i] = 0.0;
                }
            }
        }
    });
}

/// A run of columns of one strip that lie in one grid row, for one tap: columns `dst..dst + len` of
/// the strip; of these, `lo..hi` read the source at `off + c * plane + (j - lo) * step` (the rest
/// fall outside: zero); `off` < 0: the whole run is outside.
#[derive(Clone, Copy, Default)]
struct Seg {
    dst: usize,
    len: usize,
    lo: usize,
    hi: usize,
    off: isize,
}

thread_local! {
    static SEGS: std::cell::RefCell<Vec<Seg>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Gathers B[kk0..kk0+kc][cols j0..j0+ncols] into strips of NR columns (zero-padded to `nc`).
#[allow(clippy::too_many_arguments)]
fn pack_b(src: &Source, grid: &Grid, nr: usize, j0: usize, ncols: usize, nc: usize, kk0: usize, kc: usize, dst: &mut [f32]) {
    let taps = src.taps.len();
    let plane = src.h * src.w;
    let step = src.step;
    let pointwise = taps == 1 && src.taps[0] == (0, 0) && step == 1 && grid.gp == src.h && grid.gq == src.w;
    let g = grid.gp * grid.gq;
    SEGS.with(|cell| {
        let mut guard = cell.try_borrow_mut();
        let mut local = Vec::new();
        let segs: &mut Vec<Seg> = match guard.as_deref_mut() {
            Ok(v) => v,
            Err(_) => &mut local,
        };
        if segs.len() < taps * nr {
            segs.resize(taps * nr, Seg::default());
        }
        for s in 0..nc / nr {
            let strip = &mut dst[s * kc * nr..(s + 1) * kc * nr];
            let c0 = j0 + s * nr;
            let valid = ncols.saturating_sub(s * nr).min(nr);
            if pointwise && valid == nr {
                let (n0, p0) = (c0 / plane, c0 % plane);
                if p0 + nr <= plane {
                    // Columns are nr consecutive positions of one image: rows of B are contiguous.
                    let base = n0 * src.ch * plane + p0;
                    for k in 0..kc {
                        let c = kk0 + k;
                        strip[k * nr..(k + 1) * nr].copy_from_slice(&src.data[base + c * plane..base + c * plane + nr]);
                    }
                    continue;
                }
            }
            // Runs of columns within one grid row, and per tap their source span.
            let mut nseg = 0;
            let mut j = 0;
            while j < valid {
                let col = c0 + j;
                let (n, r) = (col / g, col % g);
                let (oi, oj) = (r / grid.gq, r % grid.gq);
                let len = (grid.gq - oj).min(valid - j);
                let base = (n * src.ch * plane) as isize;
                for (t, &(dr, ds)) in src.taps.iter().enumerate() {
                    let ih = (oi * step) as isize + dr;
                    let iw0 = (oj * step) as isize + ds;
                    let mut sg = Seg { dst: j, len, lo: 0, hi: 0, off: -1 };
                    if ih >= 0 && (ih as usize) < src.h {
                        // jj valid when 0 <= iw0 + jj * step < w.
                        let lo = if iw0 < 0 { ((-iw0) as usize).div_ceil(step) } else { 0 };
                        let hi = if iw0 >= src.w as isize { 0 } else { ((src.w as isize - iw0) as usize).div_ceil(step).min(len) };
                        if lo < hi {
                            sg = Seg { dst: j, len, lo, hi, off: base + ih * src.w as isize + iw0 + (lo * step) as isize };
                        }
                    }
                    segs[t * nr + nseg] = sg;
                }
                nseg += 1;
                j += len;
            }
            let (mut c, mut t) = (kk0 / taps, kk0 % taps);
            for k in 0..kc {
                let row = &mut strip[k * nr..(k + 1) * nr];
                row[valid..].fill(0.0);
                let cbase = c * plane;
                for sg in &segs[t * nr..t * nr + nseg] {
                    let d = &mut row[sg.dst..sg.dst + sg.len];
                    if sg.off < 0 {
                        d.fill(0.0);
                        continue;
                    }
                    d[..sg.lo].fill(0.0);
                    d[sg.hi..].fill(0.0);
                    let from = cbase + sg.off as usize;
                    let n = sg.hi - sg.lo;
                    if step == 1 {
                        d[sg.lo..sg.hi].copy_from_slice(&src.data[from..from + n]);
                    } else {
                        let sl = &src.data[from..from + (n - 1) * step + 1];
                        for (i, v) in d[sg.lo..sg.hi].iter_mut().enumerate() {
                            *v = sl[i * step];
                        }
                    }
                }
                t += 1;
                if t == taps {
                    t = 0;
                    c += 1;
                }
            }
        }
    });
}

/// C block (rows of panels p0..p1, columns j0..j0+ncols padded to ncp) = A * B over the whole reduction.
#[allow(clippy::too_many_arguments)]
fn gemm_block(
    kern: &Kernel,
    ap: &[f32],
    src: &Source,
    grid: &Grid,
    p0: usize,
    p1: usize,
    j0: usize,
    ncols: usize,
    ncp: usize,
    bbuf: &mut [f32],
    cblk: &mut [f32],
) {
    let (mr, nr) = (kern.mr, kern.nr);
    let kk = src.ch * src.taps.len();
    let mut k0 = 0;
    while k0 < kk {
        let kc = KC.min(kk - k0);
        pack_b(src, grid, nr, j0, ncols, ncp, k0, kc, bbuf);
        for s in 0..ncp / nr {
            let b = &bbuf[s * kc * nr..];
            for p in p0..p1 {
                let a = &ap[(p * kk + k0) * mr..];
                let c = &mut cblk[(p - p0) * mr * ncp + s * nr..];
                // SAFETY: the A panel holds kc*mr floats from k0, the B strip kc*nr, and the C
                // block has mr rows of ncp >= (s+1)*nr floats from this tile.
                unsafe { kern.run(kc, a.as_ptr(), b.as_ptr(), c.as_mut_ptr(), ncp, k0 > 0) };
            }
        }
        k0 += kc;
    }
}

/// dgrad as GEMM + col2im, for convs whose dx has few channels (the stems): per image and block of
/// dy positions, Z[(c, r, s)][pos] = sum_k W[k][c][r][s] dy[k][pos] (A = `ap`, W^T packed with
/// M = C*R*S, KK = K; B = dy rows, no gather), scattered into the image's dx; then the epilogue.
pub fn dgrad_col2im(kern: &Kernel, ap: &[f32], p: &crate::ops::conv::ConvProblem, dy: &[f32], epi: &Dgrad) {
    let (mr, nr) = (kern.mr, kern.nr);
    let (n, c, k) = (p.n as usize, p.c as usize, p.k as usize);
    let (h, w, r, s) = (p.h as usize, p.w as usize, p.r as usize, p.s as usize);
    let (pp, qq, stride, pad) = (p.p as usize, p.q as usize, p.stride as isize, p.pad as isize);
    let (plane_in, plane_out) = (h * w, pp * qq);
    let m = c * r * s;
    let panels = m.div_ceil(mr);
    let nc = (4 * nr).max(64);
    let taps = [(0isize, 0isize)];
    (0..n).into_par_iter().for_each(|img| {
        let dyi = &dy[img * k * plane_out..(img + 1) * k * plane_out];
        let src = Source { data: dyi, ch: k, h: pp, w: qq, step: 1, taps: &taps };
        let grid = Grid { n: 1, gp: pp, gq: qq, oh: pp, ow: qq, oh0: 0, ow0: 0, ostride: 1, m };
        let kc_max = KC.min(k);
        with_scratch(Scratch::Task, c * plane_in + kc_max * nc + panels * mr * nc, |buf| {
            let (raw, rest) = buf.split_at_mut(c * plane_in);
            let (bbuf, cblk) = rest.split_at_mut(kc_max * nc);
            raw.fill(0.0);
            let mut j0 = 0;
            while j0 < plane_out {
                let ncols = (plane_out - j0).min(nc);
                let ncp = ncols.div_ceil(nr) * nr;
                gemm_block(kern, ap, &src, &grid, 0, panels, j0, ncols, ncp, bbuf, cblk);
                // col2im of this block of positions, one run of a dy row at a time.
                let mut j = 0;
                while j < ncols {
                    let pos = j0 + j;
                    let (op, oq0) = (pos / qq, pos % qq);
                    let len = (qq - oq0).min(ncols - j);
                    for row in 0..m {
                        let (ci, rr, ss) = (row / (r * s), (row / s) % r, row % s);
                        let ih = op as isize * stride - pad + rr as isize;
                        if ih < 0 || ih as usize >= h {
                            continue;
                        }
                        // oq valid when 0 <= oq * stride - pad + ss < w.
                        let iw0 = oq0 as isize * stride - pad + ss as isize;
                        let lo = if iw0 < 0 { ((-iw0) as usize).div_ceil(stride as usize) } else { 0 };
                        let hi = if iw0 >= w as isize { 0 } else { ((w as isize - iw0) as usize).div_ceil(stride as usize).min(len) };
                        if lo >= hi {
                            continue;
                        }
                        let z = &cblk[row * ncp + j + lo..row * ncp + j + hi];
                        let start = ci * plane_in + ih as usize * w + (iw0 + lo as isize * stride) as usize;
                        let dst = &mut raw[start..start + (hi - lo - 1) * stride as usize + 1];
                        if stride == 1 {
                            for (d, &v) in dst.iter_mut().zip(z) {
                                *d += v;
                            }
                        } else {
                            for (i, &v) in z.iter().enumerate() {
                                dst[i * stride as usize] += v;
                            }
                        }
                    }
                    j += len;
                }
                j0 += ncols;
            }
            for ci in 0..c {
                // SAFETY: this task owns image img of dx.
                unsafe { epi.run(ci, Some(&raw[ci * plane_in..(ci + 1) * plane_in]), plane_in, (img * c + ci) * plane_in, 1) };
            }
        });
    });
}

/// One output phase of a strided dgrad: dx positions (ph + stride * i, pw + stride * j) and the taps
/// (offsets into dy) that reach them; `a` is the offset of its packed A in the shared buffer.
pub struct Phase {
    pub ph: usize,
    pub pw: usize,
    pub gp: usize,
    pub gq: usize,
    pub taps: Vec<(isize, isize)>,
    pub a: usize,
}

/// Strided dgrad: tasks over groups of images; each task runs the GEMM of every phase on its images
/// into a local raw dx (every position is reached by exactly one phase, or none: zero), then the
/// epilogue once over contiguous rows.
pub fn dgrad_phased(kern: &Kernel, ap: &[f32], phases: &[&Phase], p: &crate::ops::conv::ConvProblem, dy: &[f32], epi: &Dgrad) {
    let (mr, nr) = (kern.mr, kern.nr);
    let (n, c, k) = (p.n as usize, p.c as usize, p.k as usize);
    let (h, w, stride) = (p.h as usize, p.w as usize, p.stride as usize);
    let (pp, qq) = (p.p as usize, p.q as usize);
    let plane_in = h * w;
    let plane_out = pp * qq;
    let panels = c.div_ceil(mr);
    let threads = rayon::current_num_threads().max(1);
    let nc = (4 * nr).max(64);
    // Images per task: enough columns per phase for a column block, and enough tasks per thread.
    let per_phase = phases.iter().map(|f| f.gp * f.gq).max().unwrap_or(1).max(1);
    let imgs = nc.div_ceil(per_phase).min(n.div_ceil(2 * threads)).max(1);
    let groups = n.div_ceil(imgs);
    let chunk_panels = panels.min(MC / mr).max(1);
    let max_taps = phases.iter().map(|f| f.taps.len()).max().unwrap_or(1);
    let kc_max = KC.min(k * max_taps);
    (0..groups).into_par_iter().for_each(|g| {
        let i0 = g * imgs;
        let gi = (n - i0).min(imgs);
        let dyg = &dy[i0 * k * plane_out..(i0 + gi) * k * plane_out];
        with_scratch(Scratch::Task, gi * c * plane_in + kc_max * nc + chunk_panels * mr * nc, |buf| {
            let (raw, rest) = buf.split_at_mut(gi * c * plane_in);
            let (bbuf, cblk) = rest.split_at_mut(kc_max * nc);
            raw.fill(0.0);
            for f in phases.iter().filter(|f| !f.taps.is_empty() && f.gp * f.gq > 0) {
                let src = Source { data: dyg, ch: k, h: pp, w: qq, step: 1, taps: &f.taps };
                let grid = Grid { n: gi, gp: f.gp, gq: f.gq, oh: h, ow: w, oh0: f.ph, ow0: f.pw, ostride: stride, m: c };
                let cols = grid.cols();
                let a = &ap[f.a..];
                let g_per = f.gp * f.gq;
                let mut j0 = 0;
                while j0 < cols {
                    let ncols = (cols - j0).min(nc);
                    let ncp = ncols.div_ceil(nr) * nr;
                    let mut p0 = 0;
                    while p0 < panels {
                        let p1 = (p0 + chunk_panels).min(panels);
                        gemm_block(kern, a, &src, &grid, p0, p1, j0, ncols, ncp, bbuf, cblk);
                        for row in p0 * mr..(p1 * mr).min(c) {
                            let z = &cblk[(row - p0 * mr) * ncp..(row - p0 * mr) * ncp + ncols];
                            for (j, &v) in z.iter().enumerate() {
                                let col = j0 + j;
                                let (img, r) = (col / g_per, col % g_per);
                                let (oi, oj) = (r / f.gq, r % f.gq);
                                raw[(img * c + row) * plane_in + (f.ph + oi * stride) * w + f.pw + oj * stride] = v;
                            }
                        }
                        p0 = p1;
                    }
                    j0 += ncols;
                }
            }
            for img in 0..gi {
                for ch in 0..c {
                    let at = (img * c + ch) * plane_in;
                    // SAFETY: this task owns images i0..i0+gi of dx.
                    unsafe { epi.run(ch, Some(&raw[at..at + plane_in]), plane_in, ((i0 + img) * c + ch) * plane_in, 1) };
                }
            }
        });
    });
}

/// Runs the GEMM of `grid` (rows = output channels) over the packed A `ap` and the source, and hands
/// every finished block to the epilogue, adding the per-channel moments of the raw results into
/// `moments` when given.
pub fn run(kern: &Kernel, ap: &[f32], src: &Source, grid: &Grid, epi: Epi, moments: Option<&mut [Moments]>) {
    let (mr, nr) = (kern.mr, kern.nr);
    let m = grid.m;
    let kk = src.ch * src.taps.len();
    let cols = grid.cols();
    if cols == 0 || m == 0 {
        return;
    }
    let threads = rayon::current_num_threads().max(1);
    let nc = (4 * nr).max(64);
    let col_blocks = cols.div_ceil(nc);
    let panels = m.div_ceil(mr);
    // Row chunks: at most MC rows, and enough tasks for every thread.
    let mut chunk_panels = panels.min(MC / mr).max(1);
    while col_blocks * panels.div_ceil(chunk_panels) < 2 * threads && chunk_panels > 4 {
        chunk_panels = chunk_panels.div_ceil(2);
    }
    let row_chunks = panels.div_ceil(chunk_panels);
    let tasks = col_blocks * row_chunks;
    let want = moments.is_some();
    // Moments per task and channel of its chunk (reduced below).
    let mom_len = if want { tasks * chunk_panels * mr } else { 0 };
    let mut partial = vec![Moments::default(); mom_len];
    let partial_ptr = SyncPtr(partial.as_mut_ptr());
    (0..tasks).into_par_iter().for_each(|task| {
        let (cb, rc) = (task / row_chunks, task % row_chunks);
        let j0 = cb * nc;
        let ncols = (cols - j0).min(nc);
        let ncp = ncols.div_ceil(nr) * nr;
        let p0 = rc * chunk_panels;
        let p1 = (p0 + chunk_panels).min(panels);
        let rows = (p1 - p0) * mr;
        let kc_max = KC.min(kk);
        let need = kc_max * ncp + rows * ncp;
        with_scratch(Scratch::Task, need, |buf| {
            let (bbuf, cblk) = buf.split_at_mut(kc_max * ncp);
            gemm_block(kern, ap, src, grid, p0, p1, j0, ncols, ncp, bbuf, cblk);
            // Epilogue: runs of consecutive columns that map to consecutive positions.
            let mom = if want {
                // SAFETY: each task owns its own slot range of `partial`.
                Some(unsafe { partial_ptr.slice(task * chunk_panels * mr, chunk_panels * mr) })
            } else {
                None
            };
            let mut mom = mom;
            if let Some(mm) = mom.as_deref_mut() {
                mm.iter_mut().for_each(|v| *v = Moments::default());
            }
            let row_end = (p1 * mr).min(m);
            let mut j = 0;
            while j < ncols {
                let (n, pos) = grid.locate(j0 + j);
                // Extend the run while positions stay consecutive (same image, same grid row unless
                // the grid covers whole planes with unit stride).
                let g = grid.gp * grid.gq;
                let idx = (j0 + j) % g;
                let len = if grid.ostride == 1 && grid.gq == grid.ow && grid.gp == grid.oh {
                    (g - idx).min(ncols - j)
                } else {
                    (grid.gq - idx % grid.gq).min(ncols - j)
                };
                let plane = grid.oh * grid.ow;
                for row in p0 * mr..row_end {
                    let raw = &cblk[(row - p0 * mr) * ncp + j..][..len];
                    let dst = (n * m + row) * plane + pos;
                    // SAFETY: the (row, run) pairs of all tasks are disjoint positions of the output.
                    unsafe {
                        match &epi {
                            Epi::Fprop(f) => f.run(row, raw, dst, mom.as_deref_mut().map(|mm| &mut mm[row - p0 * mr])),
                            Epi::Dgrad(d) => d.run(row, Some(raw), len, dst, grid.ostride),
                        }
                    }
                }
                j += len;
            }
        });
    });
    if let Some(out) = moments {
        for v in out.iter_mut() {
            *v = Moments::default();
        }
        for task in 0..tasks {
            let rc = task % row_chunks;
            let r0 = rc * chunk_panels * mr;
            for i in 0..chunk_panels * mr {
                if r0 + i < m {
                    out[r0 + i].s1 += partial[task * chunk_panels * mr + i].s1;
                    out[r0 + i].s2 += partial[task * chunk_panels * mr + i].s2;
                }
            }
        }
    }
}
