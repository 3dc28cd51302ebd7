//! `cda-engine run`: the official class batching and IPC loop over a recover configuration, with
//! resumable ImageFolder output and a JSON record of settings and per-batch losses.

use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

use super::output::{image_path, quantize, save_image, ImageFormat};
use super::init::{class_images, InitKind, InitSpec};
use super::{batch_rng, LossPoint, RecoverConfig, Recoverer, Residual};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::io::write_atomic;
use crate::model::ResNet;

/// Everything that determines the images; stored in the record and compared on resume.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    pub teacher: String,
    pub teacher_arch: String,
    pub preset: Option<String>,
    pub recover: RecoverConfig,
    pub res: usize,
    /// Classes 0..classes are distilled.
    pub classes: usize,
    /// Classes per batch.
    pub batch_size: usize,
    pub ipc_per_batch: usize,
    pub ipc_start: usize,
    pub ipc_end: usize,
    pub seed: u64,
    pub format: ImageFormat,
    /// Where the images start (noise unless a method or `--init` says otherwise).
    #[serde(default)]
    pub init: InitSpec,
    /// FADRM's data residual; None (records before it) is off.
    #[serde(default)]
    pub residual: Option<Residual>,
    /// The `--method` the settings came from, for the record.
    #[serde(default)]
    pub method: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BatchRecord {
    pub ipc: Vec<usize>,
    pub class_start: usize,
    pub class_end: usize,
    pub device: String,
    pub seconds: f64,
    pub ms_per_iter: f64,
    /// Teacher top-1 (%) on the batch's final images after uint8 quantisation.
    pub teacher_top1: f32,
    pub first: LossPoint,
    pub last: LossPoint,
    /// Unweighted ||rv - var|| + ||rm - mean|| per BN layer at the first and last iteration.
    pub bn_layers_first: Vec<f32>,
    pub bn_layers_last: Vec<f32>,
    pub trace: Vec<LossPoint>,
    /// Per image (batch order): the real sources of its starting image (see `init::InitImage`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub init_sources: Vec<Vec<String>>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRecord {
    pub engine: String,
    pub settings: RunSettings,
    pub batches: Vec<BatchRecord>,
}

pub const RECORD_FILE: &str = "recover_record.json";

/// One optimisation: IPC indices x a chunk of classes; images ordered ipc-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchPlan {
    pub ipc: Vec<usize>,
    pub class_start: usize,
    pub class_end: usize,
}

impl BatchPlan {
    pub fn len(&self) -> usize {
        self.ipc.len() * (self.class_end - self.class_start)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// (class, ipc) of every image in batch order.
    pub fn images(&self) -> Vec<(usize, usize)> {
        self.ipc.iter().flat_map(|&i| (self.class_start..self.class_end).map(move |c| (c, i))).collect()
    }
}

pub fn plan(s: &RunSettings) -> Vec<BatchPlan> {
    let mut out = Vec::new();
    let mut ipc = s.ipc_start;
    while ipc < s.ipc_end {
        let group: Vec<usize> = (ipc..(ipc + s.ipc_per_batch).min(s.ipc_end)).collect();
        let mut c = 0;
        while c < s.classes {
            out.push(BatchPlan { ipc: group.clone(), class_start: c, class_end: (c + s.batch_size).min(s.classes) });
            c += s.batch_size;
        }
        ipc += s.ipc_per_batch;
    }
    out
}

pub fn validate(s: &RunSettings, model: &ResNet) -> Result<()> {
    s.recover.validate()?;
    let bad = |m: String| Err(Error::Option(m));
    if s.classes == 0 || s.classes > model.num_classes {
        return bad(format!("--classes {} must be in 1..={} (the teacher's classes)", s.classes, model.num_classes));
    }
    if s.batch_size == 0 || s.ipc_per_batch == 0 {
        return bad("--batch-size and --ipc-per-batch must be at least 1".into());
    }
    if s.ipc_start >= s.ipc_end {
        return bad(format!("--ipc-start {} must be below --ipc-end {}", s.ipc_start, s.ipc_end));
    }
    if s.ipc_end > 1000 {
        return bad(format!("--ipc-end {} exceeds the three-digit file names (at most 1000)", s.ipc_end));
    }
    s.init.validate(s.res)?;
    if let Some(r) = s.residual {
        if r.every == 0 || !(0.0..=1.0).contains(&r.alpha) {
            return bad(format!("--residual-every must be at least 1 and --residual-alpha in [0, 1] (got {} and {})", r.every, r.alpha));
        }
    }
    if !matches!(model.in_channels, 1 | 3) {
        return bad(format!("the teacher takes {} input channels; images can be saved for 1 or 3 only", model.in_channels));
    }
    Ok(())
}

fn load_record(path: &Path) -> Result<Option<RunRecord>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::input(path.display().to_string(), format!("unreadable run record ({e}); move it away or use a new --out"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct RunSummary {
    pub out: PathBuf,
    pub device: String,
    pub images_written: usize,
    pub batches_run: usize,
    pub batches_skipped: usize,
    pub seconds: f64,
    pub ms_per_iter: f64,
    pub teacher_top1: f32,
    pub ce_first: f32,
    pub ce_last: f32,
    pub bn_first: f32,
    pub bn_last: f32,
}

/// Runs (or resumes) a recover job into `out`.
pub fn run<B: Backend>(backend: &B, model: &ResNet, settings: &RunSettings, out: &Path, show_progress: bool, log_every: usize) -> Result<RunSummary> {
    validate(settings, model)?;
    std::fs::create_dir_all(out).map_err(|e| Error::output(out, e))?;
    let record_path = out.join(RECORD_FILE);
    let mut record = match load_record(&record_path)? {
        Some(r) if r.settings != settings_for_compare(&r.settings, settings) => {
            return Err(Error::Option(format!(
                "{} was written with different settings; use a new --out (or remove it) to start another run",
                record_path.display()
            )))
        }
        Some(r) => r,
        None => RunRecord { engine: format!("cda-engine {}", env!("CARGO_PKG_VERSION")), settings: settings.clone(), batches: Vec::new() },
    };
    let device = backend.describe();
    let (c, res) = (model.in_channels, settings.res);
    let batches = plan(settings);
    let done = |b: &BatchPlan| b.images().iter().all(|&(cls, ipc)| image_path(out, cls, ipc, model.num_classes, settings.format).is_file());
    let pending: Vec<&BatchPlan> = batches.iter().filter(|b| !done(b)).collect();
    let skipped = batches.len() - pending.len();
    if skipped > 0 {
        eprintln!("resuming: {skipped} of {} batches already in {}", batches.len(), out.display());
    }

    let starts = starting_images(backend, model, settings, &pending)?;

    let iters = settings.recover.iterations;
    let bar = ProgressBar::with_draw_target(Some((pending.len() * iters) as u64), if show_progress { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() });
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} it, ETA {eta_precise}  {msg}")
            .unwrap()
            .progress_chars("=> "),
    );
    let started = Instant::now();
    let mut recoverers: Vec<(usize, Recoverer<'_, B>)> = Vec::new();
    let mut written = 0;
    let mut total_iter_secs = 0.0;
    for (bi, plan) in pending.iter().enumerate() {
        let n = plan.len();
        if !recoverers.iter().any(|(len, _)| *len == n) {
            let mut r = Recoverer::new(backend, model, &settings.recover, n, res, res)?;
            r.log_every = log_every.max(1);
            r.residual = settings.residual;
            recoverers.push((n, r));
        }
        let rec = &mut recoverers.iter_mut().find(|(len, _)| *len == n).unwrap().1;
        let images = plan.images();
        let targets: Vec<i32> = images.iter().map(|&(cls, _)| cls as i32).collect();
        let mut rng = batch_rng(settings.seed, plan.ipc[0], plan.class_start);
        let t0 = Instant::now();
        let label = format!("batch {}/{} (ipc {:?}, classes {}..{})", bi + 1, pending.len(), plan.ipc, plan.class_start, plan.class_end);
        let (start, init_sources) = match &starts {
            Some(per_class) => {
                let mut x = Vec::with_capacity(n * c * res * res);
                let mut sources = Vec::with_capacity(n);
                for &(cls, ipc) in &images {
                    let img = &per_class[cls][ipc];
                    x.extend(img.pixels.iter().enumerate().map(|(i, &u)| settings.recover.clip.from_unit(i / (res * res), u)));
                    sources.push(img.sources.clone());
                }
                (Some(x), sources)
            }
            None => (None, Vec::new()),
        };
        let outcome = rec.run_batch(&targets, &mut rng, start.as_deref(), |_, point| {
            bar.inc(1);
            if let Some(p) = point {
                bar.set_message(format!("{label}  ce {:.3}  bn {:.3}  crop>={:.2}", p.ce, p.bn, p.min_crop));
            }
        })?;
        let secs = t0.elapsed().as_secs_f64();
        total_iter_secs += secs;
        // Save every image, then the record: a batch counts as done only when all its files exist.
        let hw = res * res;
        for (k, &(cls, ipc)) in images.iter().enumerate() {
            let img = &outcome.images[k * c * hw..(k + 1) * c * hw];
            let pixels: Vec<u8> = img.iter().enumerate().map(|(i, &v)| quantize(settings.recover.clip.to_unit(i / hw, v))).collect();
            save_image(&image_path(out, cls, ipc, model.num_classes, settings.format), &pixels, c, res, res, settings.format)?;
            written += 1;
        }
        let first = outcome.trace.first().copied().unwrap_or_default();
        let last = outcome.trace.last().copied().unwrap_or_default();
        let line = format!(
            "{label}: {:.1}s, ce {:.3} -> {:.3}, bn {:.3} -> {:.3}, teacher top-1 {:.1}%",
            secs, first.ce, last.ce, first.bn, last.bn, outcome.teacher_top1
        );
        if show_progress {
            bar.println(line);
        } else {
            eprintln!("{line}");
        }
        record.batches.retain(|b| !(b.ipc == plan.ipc && b.class_start == plan.class_start));
        record.batches.push(BatchRecord {
            ipc: plan.ipc.clone(),
            class_start: plan.class_start,
            class_end: plan.class_end,
            device: device.clone(),
            seconds: secs,
            ms_per_iter: 1e3 * secs / iters as f64,
            teacher_top1: outcome.teacher_top1,
            first,
            last,
            bn_layers_first: outcome.bn_layers_first,
            bn_layers_last: outcome.bn_layers_last,
            trace: outcome.trace,
            init_sources,
        });
        let json = serde_json::to_vec_pretty(&record).expect("record serialises");
        write_atomic(&record_path, &json)?;
    }
    bar.finish_and_clear();
    let run_batches = &record.batches;
    let weight: f32 = run_batches.iter().map(|b| (b.ipc.len() * (b.class_end - b.class_start)) as f32).sum::<f32>().max(1.0);
    let avg = |f: &dyn Fn(&BatchRecord) -> f32| run_batches.iter().map(|b| f(b) * (b.ipc.len() * (b.class_end - b.class_start)) as f32).sum::<f32>() / weight;
    Ok(RunSummary {
        out: out.to_path_buf(),
        device,
        images_written: written,
        batches_run: pending.len(),
        batches_skipped: skipped,
        seconds: started.elapsed().as_secs_f64(),
        ms_per_iter: if pending.is_empty() { 0.0 } else { 1e3 * total_iter_secs / (pending.len() * iters) as f64 },
        teacher_top1: avg(&|b| b.teacher_top1),
        ce_first: avg(&|b| b.first.ce),
        ce_last: avg(&|b| b.last.ce),
        bn_first: avg(&|b| b.first.bn),
        bn_last: avg(&|b| b.last.bn),
    })
}

/// The starting images of every (class, ipc) the pending batches need, indexed [class][ipc], or None
/// for noise (drawn per batch inside the loop). Selection runs once per class, on the CPU data.
fn starting_images<B: Backend>(backend: &B, model: &ResNet, s: &RunSettings, pending: &[&BatchPlan]) -> Result<Option<Vec<Vec<super::init::InitImage>>>> {
    if s.init.kind == InitKind::Noise || pending.is_empty() {
        return Ok(None);
    }
    let spec = &s.init;
    let data = spec.data.as_deref().expect("validated: real starts name their data");
    let ds = crate::data::open(data, crate::data::Split::Train, model.in_channels)?;
    let (mean, std) = norm_of(&s.recover.clip, model.in_channels);
    let mut per_class = vec![Vec::new(); s.classes];
    let t0 = Instant::now();
    for cls in 0..s.classes {
        if pending.iter().any(|b| (b.class_start..b.class_end).contains(&cls)) {
            per_class[cls] = class_images(backend, model, ds.as_ref(), spec, cls, s.ipc_end, s.res, s.seed, &mean, &std)?;
        }
    }
    eprintln!("starting images ({:?} from {}) chosen in {:.1}s", spec.kind, ds.describe(), t0.elapsed().as_secs_f64());
    Ok(Some(per_class))
}

/// The teacher's per-channel (mean, std) as the clip mode holds them (identity for unit range).
pub fn norm_of(clip: &super::ClipMode, channels: usize) -> (Vec<f32>, Vec<f32>) {
    match clip {
        super::ClipMode::Normalized { mean, std } => (mean.clone(), std.clone()),
        super::ClipMode::Unit => (vec![0.0; channels], vec![1.0; channels]),
    }
}

/// Settings that may legitimately change between a run and its resumption (the IPC range and the
/// teacher's path spelling) are taken from the stored record, so only real changes are refused.
fn settings_for_compare(stored: &RunSettings, new: &RunSettings) -> RunSettings {
    RunSettings { ipc_start: stored.ipc_start, ipc_end: stored.ipc_end, teacher: stored.teacher.clone(), method: stored.method.clone(), ..new.clone() }
}
