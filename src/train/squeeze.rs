//! `cda-engine squeeze`: train a teacher from scratch on a real dataset (SRe2L's squeeze phase) and save
//! it as weights/export_resnet.py would, with the recipe and the measured test top-1 in its metadata.
//!
//! Recipe (defaults = weights/train_fashion_mnist_teacher.py): SGD momentum 0.9, Nesterov, weight decay
//! 5e-4 on conv/fc weights only, batch 128 (last partial batch dropped), lr 0.1 with a per-step cosine
//! decay and a one-epoch linear warm-up, augmentation random crop with 2-pixel zero padding + flip,
//! cross-entropy. Evaluated on the test split after every epoch.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::eval::{evaluate, EvalResult};
use super::learner::{learner, TrainDevice};
use super::optim::OptimKind;
use super::progress::Progress;
use super::trainable::{ArchSpec, TrainModel};
use crate::data::augment::{Crop, MixKind};
use crate::data::loader::{epoch_order, plan_epoch, EpochLoader, SampleSpec};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::io::{check_writable, write_atomic};
use crate::ops::kd_loss::cpu::soft_cross_entropy;
use crate::ops::softmax_ce::cpu::softmax_ce;
use crate::schedule::Cosine;

#[derive(Clone, Debug, Serialize)]
pub struct SqueezeConfig {
    /// Dataset name or ImageFolder path (train split).
    pub data: String,
    pub test_data: Option<String>,
    pub arch: String,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    pub warmup_epochs: usize,
    pub seed: u64,
    pub image_size: usize,
    pub crop: Crop,
    pub flip: bool,
    pub mix: MixKind,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    pub workers: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_top1: f64,
    pub lr_last: f64,
    pub seconds: f64,
    pub test: Option<EvalResult>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SqueezeSummary {
    pub out: PathBuf,
    pub arch: String,
    pub parameters: usize,
    pub epochs: usize,
    pub images: usize,
    pub test_top1: Option<f64>,
    pub seconds: f64,
    pub config: SqueezeConfig,
    pub history: Vec<EpochRecord>,
}

/// Trains and saves the teacher; returns the summary (also written to `<out>.json`).
#[allow(clippy::too_many_arguments)]
pub fn squeeze(
    cfg: &SqueezeConfig,
    spec: &ArchSpec,
    train: Arc<dyn Dataset>,
    test: Option<Arc<dyn Dataset>>,
    out: &Path,
    recipe: &str,
    show: bool,
    device: TrainDevice<'_>,
) -> Result<SqueezeSummary> {
    if cfg.epochs == 0 || cfg.batch_size == 0 {
        return Err(Error::Option("--epochs and --batch-size must be at least 1".into()));
    }
    // Both outputs are checked now, not after the training.
    let record = out.with_extension("json");
    check_writable(out)?;
    check_writable(&record)?;
    let steps_per_epoch = train.len() / cfg.batch_size;
    if steps_per_epoch == 0 {
        return Err(Error::Option(format!("--batch-size {} is larger than the dataset ({} images)", cfg.batch_size, train.len())));
    }
    let mut model = TrainModel::init(spec, cfg.seed)?;
    model.mean = Some(cfg.mean.clone());
    model.std = Some(cfg.std.clone());
    let k = model.num_classes;
    let sgd = (OptimKind::Sgd { momentum: cfg.momentum, nesterov: cfg.nesterov }, cfg.weight_decay);
    let parameters = model.parameter_count();
    let mut net = learner(device, &mut model, cfg.batch_size, cfg.image_size, Some(sgd))?;
    let sched = Cosine { base: cfg.lr, total: cfg.epochs * steps_per_epoch, warmup: cfg.warmup_epochs * steps_per_epoch };
    let sample = SampleSpec { size: cfg.image_size, crop: cfg.crop, flip: cfg.flip, mean: cfg.mean.clone(), std: cfg.std.clone() };
    let progress = Progress::new((cfg.epochs * steps_per_epoch) as u64, show);
    let start = Instant::now();
    let mut history = Vec::new();
    let mut step = 0usize;
    let mut dlogits = vec![0f32; cfg.batch_size * k];
    let mut soft = vec![0f32; cfg.batch_size * k];
    let mut labels = vec![0i32; cfg.batch_size];
    for epoch in 0..cfg.epochs {
        let t0 = Instant::now();
        let plans = plan_epoch(&epoch_order(train.len(), cfg.seed, epoch, true), cfg.batch_size, true, cfg.seed, epoch);
        let (mut loss_sum, mut correct, mut seen) = (0f64, 0usize, 0usize);
        let mut lr = 0.0;
        // The epoch's last batch, for the eval-mode check below.
        let mut last_batch: (Vec<f32>, usize) = (Vec::new(), 0);
        for b in EpochLoader::new(train.clone(), sample.clone(), cfg.mix, plans, cfg.workers, 2) {
            let b = b?;
            if let Some(&bad) = b.labels.iter().find(|&&l| l >= k) {
                return Err(Error::input(train.describe(), format!("label {bad} is outside the model's {k} classes")));
            }
            let logits = &net.forward_train(&b.x, b.n)?;
            let dl = &mut dlogits[..b.n * k];
            let loss = match &b.mix {
                None => {
                    for (t, &l) in labels.iter_mut().zip(&b.labels) {
                        *t = l as i32;
                    }
                    softmax_ce(b.n, k, logits, &labels[..b.n], dl)
                }
                Some(m) => {
                    let s = &mut soft[..b.n * k];
                    s.fill(0.0);
                    for i in 0..b.n {
                        s[i * k + b.labels[i]] += m.lam;
                        s[i * k + b.labels[m.perm[i] as usize]] += 1.0 - m.lam;
                    }
                    soft_cross_entropy(b.n, k, logits, s, dl)
                }
            };
            if !loss.is_finite() {
                return Err(Error::Numeric(format!("training loss became {loss} at epoch {} step {step}; lower --lr", epoch + 1)));
            }
            for (row, &l) in logits.chunks(k).zip(&b.labels) {
                correct += (super::eval::argmax(row) == l) as usize;
            }
            lr = sched.lr(step);
            net.backward_step(&b.x, &dlogits[..b.n * k], lr)?;
            last_batch = (b.x, b.n);
            loss_sum += loss as f64 * b.n as f64;
            seen += b.n;
            step += 1;
            progress.step(|| format!("epoch {}/{} loss {:.4}", epoch + 1, cfg.epochs, loss_sum / seen as f64));
        }
        // A diverged network is a failure now, not a file nothing can load later: a finite loss
        // does not prove finite weights (BN running variances overflow first at a huge lr).
        check_finite(net.model()?, epoch + 1)?;
        check_usable_teacher(net.model()?, &last_batch.0, last_batch.1, cfg.image_size, epoch + 1)?;
        let test_result = match &test {
            Some(t) => Some(evaluate(net.model()?, t.clone(), cfg.image_size, &cfg.mean, &cfg.std, 500, cfg.workers)?),
            None => None,
        };
        let rec = EpochRecord {
            epoch: epoch + 1,
            train_loss: loss_sum / seen.max(1) as f64,
            train_top1: 100.0 * correct as f64 / seen.max(1) as f64,
            lr_last: lr,
            seconds: t0.elapsed().as_secs_f64(),
            test: test_result,
        };
        progress.line(&format!(
            "epoch {}/{}: loss {:.4}, train top-1 {:.2}%{}, {:.0}s",
            rec.epoch,
            cfg.epochs,
            rec.train_loss,
            rec.train_top1,
            rec.test.as_ref().map(|t| format!(", test top-1 {:.2}%", t.top1)).unwrap_or_default(),
            rec.seconds
        ));
        history.push(rec);
        // The record so far, so a long squeeze can be followed (and its history survives a crash).
        let partial = summary(cfg, spec, out, parameters, train.len(), &history, start);
        write_atomic(&record, serde_json::to_string_pretty(&partial).expect("summary serialises").as_bytes())?;
    }
    progress.finish();
    // The weights and running statistics back on the host (from a device), then the model is ours.
    net.model()?;
    drop(net);
    let test_top1 = history.last().and_then(|h| h.test.as_ref().map(|t| t.top1));
    let mut extra: Vec<(&str, String)> = vec![("dataset", cfg.data.clone()), ("image_size", cfg.image_size.to_string()), ("recipe", recipe.to_string())];
    if let Some(t) = test_top1 {
        extra.push(("test_top1", format!("{t:.2}")));
    }
    check_finite(&model, cfg.epochs)?;
    model.save(out, &extra)?;
    let summary = summary(cfg, spec, out, parameters, train.len(), &history, start);
    write_atomic(&record, serde_json::to_string_pretty(&summary).expect("summary serialises").as_bytes())?;
    let png = crate::plot::epochs_path_for(&record);
    let points: Vec<crate::plot::EpochPoint> = history
        .iter()
        .map(|h| crate::plot::EpochPoint { epoch: h.epoch, loss: h.train_loss, train_top1: Some(h.train_top1), test_top1: h.test.as_ref().map(|t| t.top1) })
        .collect();
    crate::plot::or_warn(&png, || crate::plot::epochs(&points, "training loss", &format!("squeeze: {}", summary.arch), &png));
    Ok(summary)
}

/// Every weight and BN statistic of the trained network is finite, or an error naming the first
/// tensors that are not (and how many values), so that no unloadable teacher is written.
fn check_finite(model: &TrainModel, epoch: usize) -> Result<()> {
    let bad: Vec<String> = model
        .tensors()
        .iter()
        .filter_map(|(name, t)| {
            let n = t.data.iter().filter(|v| !v.is_finite()).count();
            (n > 0).then(|| format!("`{name}` ({n} of {})", t.data.len()))
        })
        .collect();
    if bad.is_empty() {
        return Ok(());
    }
    Err(Error::Numeric(format!(
        "training diverged by epoch {epoch}: {} tensor(s) hold non-finite values, e.g. {}; no teacher was written (lower --lr)",
        bad.len(),
        bad.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
    )))
}

/// The network as `run` will use it as a teacher: one eval-mode forward of (up to 16 images of) the
/// batch `x` of `n` images through the recover executor. Train mode normalises with batch
/// statistics, so weights that grew huge but stayed finite still give a finite training loss; in
/// eval mode (running statistics) they overflow the BN-input variances (sums of squares) or the
/// logits, and `run` could never start from such a teacher. Errors: `Error::Numeric` naming what
/// overflowed.
fn check_usable_teacher(model: &TrainModel, x: &[f32], n: usize, size: usize, epoch: usize) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let n = n.min(16);
    let teacher = model.to_resnet()?;
    use crate::backend::Backend;
    let backend = crate::backend::cpu::CpuBackend::new(1)?;
    let mut net = crate::net::Net::new(&backend, &teacher, n, size, size)?;
    let len = net.input_len();
    let mut xb = backend.alloc(len)?;
    backend.upload(&x[..len], &mut xb)?;
    net.forward(&backend, &xb)?;
    let mut logits = vec![0.0f32; n * teacher.num_classes];
    backend.download(&net.logits, &mut logits)?;
    let mut bad = Vec::new();
    // relabel stores a teacher's logits in fp16: beyond its range they are inf.
    if let Some(v) = logits.iter().find(|v| !v.is_finite() || v.abs() > half::f16::MAX.to_f32()) {
        bad.push(format!("the logits (up to {v}, beyond fp16's 65504)"));
    }
    for l in 0..net.num_bn_layers() {
        let mut stats = vec![0.0f32; 2 * net.bn_channels(l)];
        backend.download(net.bn_stats(l), &mut stats)?;
        if stats.iter().any(|v| !v.is_finite()) {
            bad.push(format!("the input statistics of BN layer {l}"));
            break;
        }
    }
    if bad.is_empty() {
        return Ok(());
    }
    Err(Error::Numeric(format!(
        "training diverged by epoch {epoch}: in eval mode (with its running statistics) {} overflow, so neither recover nor relabel could use it as a teacher; no teacher was written (lower --lr)",
        bad.join(" and ")
    )))
}

fn summary(cfg: &SqueezeConfig, spec: &ArchSpec, out: &Path, parameters: usize, images: usize, history: &[EpochRecord], start: Instant) -> SqueezeSummary {
    SqueezeSummary {
        out: out.to_path_buf(),
        arch: spec.describe(),
        parameters,
        epochs: history.len(),
        images,
        test_top1: history.last().and_then(|h| h.test.as_ref().map(|t| t.top1)),
        seconds: start.elapsed().as_secs_f64(),
        config: cfg.clone(),
        history: history.to_vec(),
    }
}
