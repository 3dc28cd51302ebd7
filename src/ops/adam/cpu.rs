//! CPU Adam + clip, one (n, c) plane per task.

use rayon::prelude::*;

use super::AdamScalars;

/// PyTorch's lerp: self + w * (end - self) for |w| < 0.5, else end - (end - self) * (1 - w).
#[inline]
pub fn lerp(start: f32, end: f32, weight: f32) -> f32 {
    let diff = end - start;
    if weight.abs() < 0.5 {
        start + weight * diff
    } else {
        end - diff * (1.0 - weight)
    }
}

#[allow(clippy::too_many_arguments)]
pub fn adam_clip(c: usize, hw: usize, s: &AdamScalars, x: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], lo: &[f32], hi: &[f32]) {
    assert!(g.len() == x.len() && m.len() == x.len() && v.len() == x.len() && lo.len() == c && hi.len() == c);
    let (w1, one_m_b2) = (1.0 - s.beta1, 1.0 - s.beta2);
    x.par_chunks_mut(hw).zip(g.par_chunks(hw)).zip(m.par_chunks_mut(hw).zip(v.par_chunks_mut(hw))).enumerate().for_each(|(plane, ((xs, gs), (ms, vs)))| {
        let ch = plane % c;
        let (l, h) = (lo[ch], hi[ch]);
        for i in 0..hw {
            let gi = gs[i];
            let mi = lerp(ms[i], gi, w1);
            let vi = vs[i] * s.beta2 + one_m_b2 * gi * gi;
            ms[i] = mi;
            vs[i] = vi;
            let denom = vi.sqrt() / s.bias_correction2_sqrt + s.eps;
            let xi = xs[i] + (-s.step_size) * (mi / denom);
            xs[i] = xi.clamp(l, h);
        }
    });
}
