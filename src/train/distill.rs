//! `cda-engine relabel` and `cda-engine validate` (docs/algorithm.md sections 3 and 4).
//!
//! relabel: for each of E epochs, the distilled images in a seeded order, in batches; per image a
//! RandomResizedCrop (scale min_scale..1) and flip, per batch one mix (CutMix by default); the teacher's
//! eval-mode logits on the mixed views are stored with the views and mixes (`labels`).
//!
//! validate: a student trained from scratch (train mode) with AdamW (lr 1e-3, weight decay 0.01 on
//! ndim > 1 tensors), a per-epoch cosine schedule, and the KD loss
//! KLDiv(log_softmax(student / T), softmax(teacher / T)) (batchmean, no T^2) against either the stored
//! logits (replaying the stored views and mixes exactly) or an online teacher on the student's own
//! augmented, mixed batches; top-1 on the real test set every `eval_every` epochs and at the end.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use half::f16;

use serde::Serialize;

use super::eval::{evaluate, EvalResult};
use super::labels::{EpochLabels, LabelFile, LabelMeta, LabelWriter};
use super::learner::{learner, Learner, TrainDevice};
use super::optim::OptimKind;
use super::progress::Progress;
use super::trainable::TrainModel;
use crate::data::augment::{Crop, MixKind};
use crate::data::loader::{epoch_order, plan_epoch, BatchPlan, EpochLoader, SampleSpec};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::io::{check_writable, write_atomic};
use crate::ops::kd_loss::cpu::kl_div;
use crate::schedule::Cosine;

/// Augmentation and batching shared by relabel and online validate.
#[derive(Clone, Debug, Serialize)]
pub struct AugmentConfig {
    pub image_size: usize,
    pub min_scale: f64,
    pub flip: bool,
    pub mix: MixKind,
    pub batch_size: usize,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl AugmentConfig {
    fn sample_spec(&self) -> SampleSpec {
        let crop = if self.min_scale >= 1.0 { Crop::Center } else { Crop::Resized { min_scale: self.min_scale, max_scale: 1.0 } };
        SampleSpec { size: self.image_size, crop, flip: self.flip, mean: self.mean.clone(), std: self.std.clone() }
    }
}

fn check_images(images: &dyn Dataset, teacher: &TrainModel) -> Result<()> {
    if images.num_classes() > teacher.num_classes {
        return Err(Error::input(images.describe(), format!("{} class folders but the teacher has {} classes", images.num_classes(), teacher.num_classes)));
    }
    if images.channels() != teacher.in_channels {
        return Err(Error::input(images.describe(), format!("{}-channel images for a {}-channel teacher", images.channels(), teacher.in_channels)));
    }
    Ok(())
}

#[derive(Clone, Debug, Serialize)]
pub struct RelabelSummary {
    pub out: PathBuf,
    pub epochs: usize,
    pub images: usize,
    pub batch_size: usize,
    pub topk: usize,
    pub bytes: u64,
    pub seconds: f64,
    /// For a shard: the labels file the shards were merged into, once they are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merged_into: Option<PathBuf>,
}

/// Writes the relabel file for `images` (`extra` goes into its metadata). With `shard` =
/// `Some((i, n))` only batches i, i + n, ... of each epoch are labelled, into a shard's file (see
/// [`super::labels::merge_shards`]); every batch's views and mix come from its own seed, so the
/// shards' batches are those of the whole run.
#[allow(clippy::too_many_arguments)]
pub fn relabel(
    teacher: &mut TrainModel,
    images: Arc<dyn Dataset>,
    aug: &AugmentConfig,
    epochs: usize,
    topk: usize,
    seed: u64,
    workers: usize,
    out: &Path,
    extra: std::collections::BTreeMap<String, String>,
    shard: Option<(usize, usize)>,
    show: bool,
    device: TrainDevice<'_>,
) -> Result<RelabelSummary> {
    check_images(images.as_ref(), teacher)?;
    if epochs == 0 || aug.batch_size == 0 {
        return Err(Error::Option("--epochs and --batch-size must be at least 1".into()));
    }
    if topk >= teacher.num_classes {
        return Err(Error::Option(format!("--topk {topk}: must be below the {} classes (0 stores all logits)", teacher.num_classes)));
    }
    let n = images.len();
    let bs = aug.batch_size.min(n);
    let k = teacher.num_classes;
    let meta = LabelMeta { epochs, batch_size: bs, images: n, classes: k, topk, extra, shard };
    let mut writer = LabelWriter::create(out, meta)?;
    let mut net = learner(device, teacher, bs, aug.image_size, None)?;
    let held = |b: usize| shard.is_none_or(|(i, count)| b % count == i);
    let progress = Progress::new((epochs * (0..n.div_ceil(bs)).filter(|&b| held(b)).count()) as u64, show);
    let start = Instant::now();
    for epoch in 0..epochs {
        let plans = plan_epoch(&epoch_order(n, seed, epoch, true), bs, false, seed, epoch);
        let plans: Vec<BatchPlan> = plans.into_iter().enumerate().filter(|(b, _)| held(*b)).map(|(_, p)| p).collect();
        let mut rec = EpochLabels { ids: Vec::with_capacity(n), views: Vec::with_capacity(n), mixes: Vec::new(), logits: Vec::with_capacity(n * k) };
        for b in EpochLoader::new(images.clone(), aug.sample_spec(), aug.mix, plans, workers, 2) {
            let b = b?;
            let logits = net.forward_eval(&b.x, b.n)?;
            // Soft labels are stored in fp16: a logit beyond its range (or not finite) would be
            // written as inf and train every student on garbage.
            if let Some(v) = logits.iter().find(|v| !v.is_finite() || v.abs() > f16::MAX.to_f32()) {
                return Err(Error::Numeric(format!(
                    "the teacher's logits reach {v} at epoch {}, beyond what fp16 soft labels can hold (65504): the teacher's weights or BN statistics are not usable (a diverged training?), or --mean/--std are wrong; no labels were written",
                    epoch + 1
                )));
            }
            rec.logits.extend_from_slice(&logits);
            rec.ids.extend_from_slice(&b.ids);
            rec.views.extend_from_slice(&b.views);
            rec.mixes.push(b.mix);
            progress.step(|| format!("epoch {}/{epochs}", epoch + 1));
        }
        writer.write_epoch(&rec)?;
        if !show {
            // Without a progress bar (logs, pipes) a line per epoch, as validate writes.
            progress.line(&format!("epoch {}/{epochs}: {} views labelled", epoch + 1, rec.ids.len()));
        }
    }
    writer.finish()?;
    progress.finish();
    let bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    Ok(RelabelSummary { out: out.to_path_buf(), epochs, images: n, batch_size: bs, topk, bytes, seconds: start.elapsed().as_secs_f64(), merged_into: None })
}

#[derive(Clone, Debug, Serialize)]
pub struct ValidateConfig {
    pub epochs: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub temperature: f64,
    pub seed: u64,
    pub eval_every: usize,
    pub workers: usize,
    pub aug: AugmentConfig,
    /// "online" or the relabel file.
    pub labels: String,
    /// Where the student trained ("cpu (N threads)" or the GPU).
    pub device: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct ValidateEpoch {
    pub epoch: usize,
    pub loss: f64,
    pub lr: f64,
    pub seconds: f64,
    pub test: Option<EvalResult>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ValidateSummary {
    pub top1: f64,
    pub best_top1: f64,
    pub epochs: usize,
    pub images: usize,
    pub steps: usize,
    pub student: String,
    pub student_parameters: usize,
    pub seconds: f64,
    pub config: ValidateConfig,
    pub history: Vec<ValidateEpoch>,
}

/// Trains `student` on `images` by distillation from `teacher` (online) or from `labels`; evaluates on `test`.
#[allow(clippy::too_many_arguments)]
pub fn validate(
    teacher: &mut TrainModel,
    student: &mut TrainModel,
    images: Arc<dyn Dataset>,
    labels: Option<&LabelFile>,
    test: Arc<dyn Dataset>,
    cfg: &ValidateConfig,
    record: Option<&Path>,
    show: bool,
    device: TrainDevice<'_>,
) -> Result<ValidateSummary> {
    check_images(images.as_ref(), teacher)?;
    if student.num_classes != teacher.num_classes || student.in_channels != teacher.in_channels {
        return Err(Error::Option("the student must have the teacher's classes and input channels".into()));
    }
    if cfg.epochs == 0 {
        return Err(Error::Option("--epochs must be at least 1".into()));
    }
    if let Some(path) = record {
        check_writable(path)?;
    }
    if !(cfg.temperature > 0.0 && cfg.temperature.is_finite()) {
        return Err(Error::Option(format!("--temperature {}: must be a positive number", cfg.temperature)));
    }
    let n = images.len();
    let k = teacher.num_classes;
    let bs = match labels {
        Some(l) => {
            if l.meta.images != n {
                return Err(Error::input(l.path.display().to_string(), format!("labels for {} images; the folder has {n}", l.meta.images)));
            }
            if l.meta.classes != k {
                return Err(Error::input(l.path.display().to_string(), format!("labels over {} classes; the teacher has {k}", l.meta.classes)));
            }
            if l.meta.epochs < cfg.epochs {
                return Err(Error::Option(format!("--epochs {}: {} holds only {} epochs of labels", cfg.epochs, l.path.display(), l.meta.epochs)));
            }
            l.meta.batch_size
        }
        None => cfg.aug.batch_size.min(n),
    };
    let steps_per_epoch = n.div_ceil(bs);
    let size = cfg.aug.image_size;
    let online = labels.is_none();
    let adamw = (OptimKind::ADAMW, cfg.weight_decay);
    let mut learner_s = learner(device, student, bs, size, Some(adamw))?;
    let mut learner_t = if online { Some(learner(device, teacher, bs, size, None)?) } else { None };
    validate_loop(learner_s.as_mut(), learner_t.as_deref_mut(), images, labels, test, cfg, bs, steps_per_epoch, record, show)
}

#[allow(clippy::too_many_arguments)]
fn validate_loop<'t>(
    student: &mut dyn Learner,
    mut teacher: Option<&mut (dyn Learner + 't)>,
    images: Arc<dyn Dataset>,
    labels: Option<&LabelFile>,
    test: Arc<dyn Dataset>,
    cfg: &ValidateConfig,
    bs: usize,
    steps_per_epoch: usize,
    record: Option<&Path>,
    show: bool,
) -> Result<ValidateSummary> {
    let n = images.len();
    let k = student.model()?.num_classes;
    let mut dlogits = vec![0f32; bs * k];
    let sched = Cosine { base: cfg.lr, total: cfg.epochs, warmup: 0 };
    let spec = cfg.aug.sample_spec();
    let progress = Progress::new((cfg.epochs * steps_per_epoch) as u64, show);
    let start = Instant::now();
    let mut history: Vec<ValidateEpoch> = Vec::new();
    let mut steps = 0usize;
    let eval_every = cfg.eval_every.max(1);
    for epoch in 0..cfg.epochs {
        let t0 = Instant::now();
        let lr = sched.lr(epoch);
        let (plans, stored) = match labels {
            Some(l) => {
                let e = l.epoch(epoch)?;
                let plans: Vec<BatchPlan> = e
                    .ids
                    .chunks(bs)
                    .zip(e.views.chunks(bs))
                    .zip(&e.mixes)
                    .map(|((ids, views), mix)| BatchPlan { ids: ids.to_vec(), views: Some(views.to_vec()), mix: Some(mix.clone()), seed: 0 })
                    .collect();
                (plans, Some(e.logits))
            }
            None => (plan_epoch(&epoch_order(n, cfg.seed, epoch, true), bs, false, cfg.seed, epoch), None),
        };
        let (mut loss_sum, mut seen, mut row) = (0f64, 0usize, 0usize);
        for b in EpochLoader::new(images.clone(), spec.clone(), cfg.aug.mix, plans, cfg.workers, 2) {
            let b = b?;
            let targets: Vec<f32> = match (&stored, teacher.as_deref_mut()) {
                (Some(all), _) => all[row * k..(row + b.n) * k].to_vec(),
                (None, Some(t)) => t.forward_eval(&b.x, b.n)?,
                (None, None) => unreachable!("online validation has a teacher"),
            };
            // Bad targets are the labels' fault, not the learning rate's: say which.
            if let Some(v) = targets.iter().find(|v| !v.is_finite()) {
                return Err(match labels {
                    Some(l) => Error::Corrupt {
                        path: l.path.clone(),
                        reason: format!("soft label {v} in epoch {} (rows {}..{}); remake the file with relabel", epoch + 1, row, row + b.n),
                    },
                    None => Error::Numeric(format!("the teacher's logits hold {v} at epoch {}: check the teacher file and --mean/--std", epoch + 1)),
                });
            }
            row += b.n;
            let logits = student.forward_train(&b.x, b.n)?;
            let loss = kl_div(b.n, k, &logits, &targets, cfg.temperature, &mut dlogits[..b.n * k]);
            if !loss.is_finite() {
                return Err(Error::Numeric(format!("distillation loss became {loss} at epoch {}; lower --lr", epoch + 1)));
            }
            student.backward_step(&b.x, &dlogits[..b.n * k], lr)?;
            loss_sum += loss as f64 * b.n as f64;
            seen += b.n;
            steps += 1;
            progress.step(|| format!("epoch {}/{} loss {:.4}", epoch + 1, cfg.epochs, loss_sum / seen as f64));
        }
        let last = epoch + 1 == cfg.epochs;
        let test_result = if last || (epoch + 1) % eval_every == 0 {
            Some(evaluate(student.model()?, test.clone(), cfg.aug.image_size, &cfg.aug.mean, &cfg.aug.std, 500, cfg.workers)?)
        } else {
            None
        };
        let rec = ValidateEpoch { epoch: epoch + 1, loss: loss_sum / seen.max(1) as f64, lr, seconds: t0.elapsed().as_secs_f64(), test: test_result };
        if rec.test.is_some() || !show {
            progress.line(&format!(
                "epoch {}/{}: KD loss {:.5}, lr {:.2e}{}",
                rec.epoch,
                cfg.epochs,
                rec.loss,
                rec.lr,
                rec.test.as_ref().map(|t| format!(", test top-1 {:.2}%", t.top1)).unwrap_or_default()
            ));
        }
        history.push(rec);
        if let Some(path) = record {
            let partial = summary(student.model()?, n, steps, start, cfg, &history);
            write_atomic(path, serde_json::to_string_pretty(&partial).expect("record serialises").as_bytes())?;
        }
    }
    progress.finish();
    if let Some(path) = record {
        let png = crate::plot::epochs_path_for(path);
        let points: Vec<crate::plot::EpochPoint> = history
            .iter()
            .map(|h| crate::plot::EpochPoint { epoch: h.epoch, loss: h.loss, train_top1: None, test_top1: h.test.as_ref().map(|t| t.top1) })
            .collect();
        let title = format!("validate: {} on {n} images", student.model()?.spec().describe());
        crate::plot::or_warn(&png, || crate::plot::epochs(&points, "KD loss", &title, &png));
    }
    Ok(summary(student.model()?, n, steps, start, cfg, &history))
}

fn summary(student: &TrainModel, n: usize, steps: usize, start: Instant, cfg: &ValidateConfig, history: &[ValidateEpoch]) -> ValidateSummary {
    let tops: Vec<f64> = history.iter().filter_map(|h| h.test.as_ref().map(|t| t.top1)).collect();
    ValidateSummary {
        top1: history.last().and_then(|h| h.test.as_ref().map(|t| t.top1)).unwrap_or(f64::NAN),
        best_top1: tops.iter().copied().fold(f64::NAN, f64::max),
        epochs: history.len(),
        images: n,
        steps,
        student: student.spec().describe(),
        student_parameters: student.parameter_count(),
        seconds: start.elapsed().as_secs_f64(),
        config: cfg.clone(),
        history: history.to_vec(),
    }
}
