//! Optimizers over a whole `TrainModel`: SGD (momentum, Nesterov) and AdamW, with weight decay on
//! tensors with more than one dimension only (conv and fc weights; BN parameters and biases excluded),
//! as the recipes here and algorithm.md section 4 say. Per-tensor math: `crate::ops::{sgd, adamw}`.

use serde::Serialize;

use super::model::TrainModel;
use crate::ops::adamw::{cpu as adamw, AdamWConfig};
use crate::ops::sgd::{cpu as sgd, SgdConfig};

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum OptimKind {
    Sgd { momentum: f64, nesterov: bool },
    AdamW { beta1: f64, beta2: f64, eps: f64 },
}

#[derive(Clone, Debug)]
pub struct Optimizer {
    pub kind: OptimKind,
    pub weight_decay: f64,
    /// Per parameter: SGD momentum buffer, or AdamW (m, v).
    state: Vec<(Vec<f32>, Vec<f32>)>,
    pub steps: u32,
}

impl OptimKind {
    /// AdamW with PyTorch's betas (0.9, 0.999) and eps 1e-8.
    pub const ADAMW: OptimKind = OptimKind::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8 };
}

impl Optimizer {
    /// An optimizer of `kind` with fresh state for every parameter of `model`.
    pub fn new(model: &TrainModel, kind: OptimKind, weight_decay: f64) -> Optimizer {
        let state = model
            .params
            .iter()
            .map(|p| match kind {
                OptimKind::Sgd { momentum, .. } => (vec![0.0; if momentum != 0.0 { p.data.len() } else { 0 }], Vec::new()),
                OptimKind::AdamW { .. } => (vec![0.0; p.data.len()], vec![0.0; p.data.len()]),
            })
            .collect();
        Optimizer { kind, weight_decay, state, steps: 0 }
    }

    pub fn sgd(model: &TrainModel, momentum: f64, nesterov: bool, weight_decay: f64) -> Optimizer {
        Optimizer::new(model, OptimKind::Sgd { momentum, nesterov }, weight_decay)
    }

    /// AdamW with PyTorch's betas (0.9, 0.999) and eps 1e-8.
    pub fn adamw(model: &TrainModel, weight_decay: f64) -> Optimizer {
        Optimizer::new(model, OptimKind::ADAMW, weight_decay)
    }

    /// One step of every parameter with its current gradient at learning rate `lr`.
    pub fn step(&mut self, model: &mut TrainModel, lr: f64) {
        assert_eq!(self.state.len(), model.params.len(), "optimizer built for another model");
        let first = self.steps == 0;
        self.steps += 1;
        for (p, (s1, s2)) in model.params.iter_mut().zip(&mut self.state) {
            let wd = if p.decays() { self.weight_decay } else { 0.0 };
            match self.kind {
                OptimKind::Sgd { momentum, nesterov } => {
                    let cfg = SgdConfig { lr: lr as f32, momentum: momentum as f32, weight_decay: wd as f32, nesterov };
                    sgd::step(&cfg, &mut p.data, &p.grad, s1, first);
                }
                OptimKind::AdamW { beta1, beta2, eps } => {
                    let cfg = AdamWConfig { lr, beta1, beta2, eps, weight_decay: wd };
                    adamw::step(&cfg, wd, self.steps, &mut p.data, &p.grad, s1, s2);
                }
            }
        }
    }
}
