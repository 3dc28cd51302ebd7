//! CPU crop_resize: one (n, c) plane per task; the backward scatters into a zeroed plane.

use rayon::prelude::*;

use super::{taps, CropParams, CropResizeProblem};

pub fn fwd(p: &CropResizeProblem, params: &[CropParams], x: &[f32], out: &mut [f32]) {
    let (c, h, w) = (p.c as usize, p.h as usize, p.w as usize);
    assert!(x.len() == p.len() && out.len() == p.len() && params.len() == p.n as usize);
    out.par_chunks_mut(h * w).zip(x.par_chunks(h * w)).enumerate().for_each(|(plane, (dst, src))| {
        let cp = &params[plane / c];
        for y in 0..h {
            for xx in 0..w {
                let t = taps(cp, h, w, y, xx);
                let top = (1.0 - t.lx) * src[t.y0 * w + t.x0] + t.lx * src[t.y0 * w + t.x1];
                let bot = (1.0 - t.lx) * src[t.y1 * w + t.x0] + t.lx * src[t.y1 * w + t.x1];
                dst[y * w + xx] = (1.0 - t.ly) * top + t.ly * bot;
            }
        }
    });
}

/// dx = A^T dout for the forward map A above (dx is overwritten).
pub fn bwd(p: &CropResizeProblem, params: &[CropParams], dout: &[f32], dx: &mut [f32]) {
    let (c, h, w) = (p.c as usize, p.h as usize, p.w as usize);
    assert!(dout.len() == p.len() && dx.len() == p.len() && params.len() == p.n as usize);
    dx.par_chunks_mut(h * w).zip(dout.par_chunks(h * w)).enumerate().for_each(|(plane, (dst, g))| {
        let cp = &params[plane / c];
        dst.fill(0.0);
        for y in 0..h {
            for xx in 0..w {
                let t = taps(cp, h, w, y, xx);
                let gv = g[y * w + xx];
                dst[t.y0 * w + t.x0] += (1.0 - t.ly) * (1.0 - t.lx) * gv;
                dst[t.y0 * w + t.x1] += (1.0 - t.ly) * t.lx * gv;
                dst[t.y1 * w + t.x0] += t.ly * (1.0 - t.lx) * gv;
                dst[t.y1 * w + t.x1] += t.ly * t.lx * gv;
            }
        }
    });
}
