//! The optimizers the training loops choose from: SGD (momentum, Nesterov) and AdamW. The training
//! executor (`super::executor::TrainNet::step`) steps every parameter with them, weight decay on
//! tensors with more than one dimension only (conv and fc weights; BN parameters and biases
//! excluded), as the recipes here and docs/algorithm.md section 4 say. Per-tensor math:
//! `crate::ops::{sgd, adamw}`.

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum OptimKind {
    Sgd { momentum: f64, nesterov: bool },
    AdamW { beta1: f64, beta2: f64, eps: f64 },
}

impl OptimKind {
    /// AdamW with PyTorch's betas (0.9, 0.999) and eps 1e-8.
    pub const ADAMW: OptimKind = OptimKind::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8 };
}
