//! CPU SGD step, chunks of the tensor over the rayon pool.

use rayon::prelude::*;

use super::SgdConfig;

const CHUNK: usize = 1 << 14;

/// One step. `first`: the momentum buffer is uninitialised (PyTorch creates it from g).
pub fn step(cfg: &SgdConfig, param: &mut [f32], grad: &[f32], buf: &mut [f32], first: bool) {
    assert!(grad.len() == param.len() && (cfg.momentum == 0.0 || buf.len() == param.len()), "sgd operands");
    let SgdConfig { lr, momentum, weight_decay, nesterov } = *cfg;
    if momentum == 0.0 {
        param.par_chunks_mut(CHUNK).zip(grad.par_chunks(CHUNK)).for_each(|(p, g)| {
            for (p, &g) in p.iter_mut().zip(g) {
                let g = if weight_decay != 0.0 { g + weight_decay * *p } else { g };
                *p += -lr * g;
            }
        });
        return;
    }
    param.par_chunks_mut(CHUNK).zip(grad.par_chunks(CHUNK)).zip(buf.par_chunks_mut(CHUNK)).for_each(|((p, g), b)| {
        for ((p, &g), b) in p.iter_mut().zip(g).zip(b.iter_mut()) {
            let g = if weight_decay != 0.0 { g + weight_decay * *p } else { g };
            *b = if first { g } else { *b * momentum + g };
            let d = if nesterov { g + momentum * *b } else { *b };
            *p += -lr * d;
        }
    });
}
