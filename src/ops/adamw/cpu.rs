//! CPU AdamW step, chunks of the tensor over the rayon pool.

use rayon::prelude::*;

use super::{AdamScalars, AdamWConfig};
use crate::ops::adam::cpu::lerp;

const CHUNK: usize = 1 << 14;

/// One step number `step` (1-based) with weight decay `weight_decay` (0 for excluded tensors).
pub fn step(cfg: &AdamWConfig, weight_decay: f64, step: u32, param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32]) {
    assert!(grad.len() == param.len() && m.len() == param.len() && v.len() == param.len(), "adamw operands");
    let s = AdamScalars::new(cfg.lr, cfg.beta1, cfg.beta2, cfg.eps, step);
    let decay = (1.0 - cfg.lr * weight_decay) as f32;
    let (w1, one_m_b2) = (1.0 - s.beta1, 1.0 - s.beta2);
    param.par_chunks_mut(CHUNK).zip(grad.par_chunks(CHUNK)).zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK))).for_each(|((p, g), (m, v))| {
        for i in 0..p.len() {
            let gi = g[i];
            let pi = if weight_decay != 0.0 { p[i] * decay } else { p[i] };
            let mi = lerp(m[i], gi, w1);
            let vi = v[i] * s.beta2 + one_m_b2 * gi * gi;
            m[i] = mi;
            v[i] = vi;
            let denom = vi.sqrt() / s.bias_correction2_sqrt + s.eps;
            p[i] = pi + (-s.step_size) * (mi / denom);
        }
    });
}
