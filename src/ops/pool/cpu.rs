//! CPU pooling, one (n, c) plane per task.

use rayon::prelude::*;

use super::PoolProblem;

pub fn maxpool_fwd(p: &PoolProblem, x: &[f32], out: &mut [f32], argmax: &mut [i32]) {
    let (h, w, pp, qq) = (p.h as isize, p.w as isize, p.p as usize, p.q as usize);
    let (win, stride, pad) = (p.window as isize, p.stride as isize, p.pad as isize);
    assert!(x.len() == p.input_len() && out.len() == p.output_len() && argmax.len() == p.output_len());
    let plane_in = (h * w) as usize;
    out.par_chunks_mut(pp * qq).zip(argmax.par_chunks_mut(pp * qq)).zip(x.par_chunks(plane_in)).for_each(|((o, am), src)| {
        for op in 0..pp {
            for oq in 0..qq {
                let (h0, w0) = (op as isize * stride - pad, oq as isize * stride - pad);
                // The window's first element starts the search, so the loop is branch-free
                // selects (a data-dependent branch here mispredicts about half the time).
                // First maximum wins; a NaN wins (the last one, as PyTorch's CPU kernel).
                let (ih0, iw0) = (h0.max(0), w0.max(0));
                let mut best_i = (ih0 * w + iw0) as usize;
                let mut best = src[best_i];
                for ih in ih0..(h0 + win).min(h) {
                    let row = &src[(ih * w) as usize..];
                    for iw in iw0..(w0 + win).min(w) {
                        let v = row[iw as usize];
                        let take = v > best || v.is_nan();
                        best = if take { v } else { best };
                        best_i = if take { (ih * w + iw) as usize } else { best_i };
                    }
                }
                let best_i = best_i as i32;
                o[op * qq + oq] = best;
                am[op * qq + oq] = best_i;
            }
        }
    });
}

/// dx (overwritten) receives each output gradient at its argmax.
pub fn maxpool_bwd(p: &PoolProblem, dout: &[f32], argmax: &[i32], dx: &mut [f32]) {
    let plane_out = (p.p * p.q) as usize;
    let plane_in = (p.h * p.w) as usize;
    assert!(dout.len() == p.output_len() && argmax.len() == p.output_len() && dx.len() == p.input_len());
    dx.par_chunks_mut(plane_in).zip(dout.par_chunks(plane_out).zip(argmax.par_chunks(plane_out))).for_each(|(d, (g, am))| {
        d.fill(0.0);
        for (gv, &i) in g.iter().zip(am) {
            d[i as usize] += gv;
        }
    });
}

/// out[n*C + c] = mean of plane (n, c).
pub fn avgpool_fwd(hw: usize, x: &[f32], out: &mut [f32]) {
    assert_eq!(x.len(), out.len() * hw);
    out.par_iter_mut().zip(x.par_chunks(hw)).for_each(|(o, plane)| {
        *o = (plane.iter().map(|&v| v as f64).sum::<f64>() / hw as f64) as f32;
    });
}

/// dx = dout / HW broadcast over each plane, masked by (x > 0).
pub fn avgpool_bwd(hw: usize, dout: &[f32], x: &[f32], dx: &mut [f32]) {
    assert!(x.len() == dout.len() * hw && dx.len() == x.len());
    let inv = 1.0 / hw as f32;
    dx.par_chunks_mut(hw).zip(x.par_chunks(hw)).zip(dout.par_iter()).for_each(|((d, xs), &g)| {
        let v = g * inv;
        for (dv, &xv) in d.iter_mut().zip(xs) {
            *dv = if xv > 0.0 { v } else { 0.0 };
        }
    });
}

/// dx[n*C + c, :] = dout[n*C + c] / hw (overwrites dx), without [`avgpool_bwd`]'s ReLU mask (the
/// training executor's BN+ReLU backward applies it).
pub fn avgpool_bwd_unmasked(hw: usize, dout: &[f32], dx: &mut [f32]) {
    assert_eq!(dx.len(), dout.len() * hw, "avgpool backward operands");
    let inv = 1.0 / hw as f32;
    dx.par_chunks_mut(hw).zip(dout.par_iter()).for_each(|(d, &g)| d.fill(g * inv));
}
