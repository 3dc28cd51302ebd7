//! Top-1 accuracy of a model in eval mode on a labelled dataset (the real test set), streamed in batches.

use std::sync::Arc;

use serde::Serialize;

use super::learner::{learner, TrainDevice};
use super::trainable::TrainModel;
use crate::data::augment::{Crop, MixKind};
use crate::data::loader::{epoch_order, plan_epoch, EpochLoader, SampleSpec};
use crate::data::Dataset;
use crate::error::{Error, Result};

#[derive(Clone, Debug, Serialize)]
pub struct EvalResult {
    pub images: usize,
    pub top1: f64,
    /// Mean cross-entropy against the labels.
    pub loss: f64,
}

/// Index of the largest value (the first on ties).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// Eval-mode top-1 of `model` on `ds`, images centre-cropped to `size` and normalised with mean/std.
pub fn evaluate(model: &mut TrainModel, ds: Arc<dyn Dataset>, size: usize, mean: &[f32], std: &[f32], batch: usize, workers: usize) -> Result<EvalResult> {
    if ds.num_classes() > model.num_classes {
        return Err(Error::input(ds.describe(), format!("{} classes but the model has {}", ds.num_classes(), model.num_classes)));
    }
    if ds.channels() != model.in_channels {
        return Err(Error::input(ds.describe(), format!("{}-channel images for a {}-channel model", ds.channels(), model.in_channels)));
    }
    let batch = batch.min(ds.len()).max(1);
    let ds_name = ds.describe();
    let spec = SampleSpec { size, crop: Crop::Eval, flip: false, mean: mean.to_vec(), std: std.to_vec() };
    let plans = plan_epoch(&epoch_order(ds.len(), 0, 0, false), batch, false, 0, 0);
    let k = model.num_classes;
    let mut net = learner(TrainDevice::Cpu, model, batch, size, None)?;
    let (mut correct, mut total, mut loss) = (0usize, 0usize, 0f64);
    for b in EpochLoader::new(ds, spec, MixKind::None, plans, workers, 2) {
        let b = b?;
        let logits = net.forward_eval(&b.x, b.n)?;
        if let Some(v) = logits.iter().find(|v| !v.is_finite()) {
            return Err(Error::Numeric(format!("the model's logits hold {v} on {} (eval mode): its weights or running statistics have diverged", ds_name)));
        }
        for (row, &label) in logits.chunks(k).zip(&b.labels) {
            correct += (argmax(row) == label) as usize;
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max;
            loss += lse - row[label] as f64;
        }
        total += b.n;
    }
    Ok(EvalResult { images: total, top1: 100.0 * correct as f64 / total.max(1) as f64, loss: loss / total.max(1) as f64 })
}
