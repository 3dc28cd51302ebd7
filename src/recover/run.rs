//! `cda-engine run`: the official class batching and IPC loop over a recover configuration, with
//! resumable ImageFolder output and a JSON record of settings and per-batch losses.

use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

use super::class_stats::{BnTarget, ClassBnStats};
use super::init::{class_images, InitKind, InitSpec, RealData};
use super::output::{check_image, image_path, quantize, save_image, ImageFormat};
use super::shard::Shard;
use super::{batch_rng, LossPoint, RecoverConfig, Recoverer, Residual, TeacherSchedule};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::io::{folder_entries, lock_folder, lock_folder_shared, lock_named, remove_stale_temps_in, write_atomic};
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
    /// Teachers after the main one (EDC / CV-DD), as given; empty for one teacher.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_teachers: Vec<String>,
    /// How several teachers share the iterations.
    #[serde(default)]
    pub teacher_schedule: TeacherSchedule,
    /// IPC indices 0..real.ipc of every class are selected real images written as they are (no
    /// optimisation); recover fills the rest. None: every image is recovered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub real: Option<RealPart>,
    /// What the BN-matching loss aims at: the teachers' running statistics (official), or class-wise
    /// statistics measured on real images (`class_stats`).
    #[serde(default, skip_serializing_if = "BnTarget::is_running")]
    pub bn_target: BnTarget,
}

/// The real part of a hybrid set: which selection fills the first IPC indices of each class.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RealPart {
    /// Real images per class (IPC indices 0..ipc).
    pub ipc: usize,
    /// How they are chosen (kind `patches`: see `init::class_images`).
    pub select: InitSpec,
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

/// `recover_record.json`: what a folder `run` wrote holds. It is written before the first image (so a
/// folder with images and no record was not written by `run`) and rewritten after every batch.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRecord {
    pub engine: String,
    /// `TrainModel::fingerprint` of the teacher's weights and normalisation: a continuation with other
    /// weights (another training, an f16 copy) is refused. With several teachers, theirs joined with
    /// '+', the main one first. None in records written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_fingerprint: Option<String>,
    /// The settings; `ipc_start..ipc_end` spans the recorded batches once there are any (the union
    /// of a run and its continuations), else the range asked for.
    pub settings: RunSettings,
    /// The batches whose images were all written, in the order they finished.
    pub batches: Vec<BatchRecord>,
    /// The real part's images (class, ipc, sources), when the settings have one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub real_images: Vec<(usize, usize, Vec<String>)>,
    /// The command line of the run that started the set (empty in older records).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
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
    /// Whether `r` records this batch (the same IPC indices and classes).
    pub fn is_recorded_by(&self, r: &BatchRecord) -> bool {
        r.ipc == self.ipc && r.class_start == self.class_start && r.class_end == self.class_end
    }

    /// Whether a recorded batch holds any image of this one (some IPC index and class in common).
    pub fn overlaps(&self, r: &BatchRecord) -> bool {
        r.ipc.iter().any(|i| self.ipc.contains(i)) && r.class_start < self.class_end && self.class_start < r.class_end
    }

    /// (class, ipc) of every image in batch order.
    pub fn images(&self) -> Vec<(usize, usize)> {
        self.ipc.iter().flat_map(|&i| (self.class_start..self.class_end).map(move |c| (c, i))).collect()
    }
}

pub fn plan(s: &RunSettings) -> Vec<BatchPlan> {
    let mut out = Vec::new();
    let mut ipc = s.ipc_start.max(s.real.as_ref().map_or(0, |r| r.ipc));
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
    s.init.validate(s.res, s.ipc_end)?;
    if let Some(real) = &s.real {
        real.select.validate(s.res, real.ipc)?;
        if real.ipc > s.ipc_end {
            return bad(format!("--real-ipc {} exceeds --ipc-end {} (the images per class)", real.ipc, s.ipc_end));
        }
    }
    if let BnTarget::Class { images: 0, .. } = s.bn_target {
        return bad("--class-stats-images must be at least 1".into());
    }
    if let Some(r) = &s.residual {
        r.validate(s.recover.iterations, s.res, s.recover.jitter)?;
    }
    if !matches!(model.in_channels, 1 | 3) {
        return bad(format!("the teacher takes {} input channels; images can be saved for 1 or 3 only", model.in_channels));
    }
    Ok(())
}

/// The run record at `path`, None when there is none. Errors: an unreadable record (`Error::Input`).
pub fn load_record(path: &Path) -> Result<Option<RunRecord>> {
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
///
/// The folder is this process's for the whole call ([`crate::io::lock_folder`]): a second run into
/// it fails at once. A folder that holds files but no [`RECORD_FILE`] is refused (it is not a set
/// `run` wrote), and so is a record whose settings or teacher fingerprint differ from these (the
/// message lists each difference, old and new). On resume a batch is skipped only when the record
/// holds it and each of its files is a whole image of the right size and channels
/// ([`check_image`]); any other batch of the plan runs (again), and stale temporary files of a killed
/// run are removed. Images are written before the record, so a batch counts as done only once both are.
///
/// Errors: `Error::Option` (settings out of range, or other than the folder's record),
/// `Error::Output` (the folder is another run's or not a run's, or a write failed), `Error::Input`
/// (an unreadable record), and whatever the recovery itself returns.
pub fn run<B: Backend>(backend: &B, model: &ResNet, settings: &RunSettings, out: &Path, show_progress: bool, log_every: usize) -> Result<RunSummary> {
    run_with_teachers(backend, &[model], settings, out, &RunOptions { show_progress, log_every, ..RunOptions::default() })
}

/// How a run reports and which part of the set it makes; none of it changes the images.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// A progress bar on stderr (else a line per batch).
    pub show_progress: bool,
    /// Losses every N iterations into the record (0 is taken as 1).
    pub log_every: usize,
    /// Run only this shard's batches, sharing the folder with the other shards.
    pub shard: Option<Shard>,
    /// The command line, kept in the record so `cda-engine status` can print the command that
    /// finishes the set.
    pub command: Vec<String>,
}

/// What a sharded set's shards agree on, written once by the first shard that starts
/// (`recover_settings.json`): the settings (with the whole IPC range), the teacher's fingerprint and
/// the number of shards. A shard with anything else is refused.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShardedSet {
    pub engine: String,
    pub teacher_fingerprint: String,
    pub settings: RunSettings,
    pub shards: usize,
    /// The first shard's command line.
    #[serde(default)]
    pub command: Vec<String>,
}

pub const SHARDED_SET_FILE: &str = "recover_settings.json";

/// Records `set` as the folder's sharded set if it has none (atomically: the first of several
/// shards starting together wins), else checks that the recorded one is the same set. Errors:
/// `Error::Option` listing every difference, `Error::Output` for a folder that holds a set made
/// without --shard or files no run wrote.
fn agree_on_shards(out: &Path, set: &ShardedSet) -> Result<()> {
    let path = out.join(SHARDED_SET_FILE);
    if !path.exists() {
        if out.join(RECORD_FILE).exists() {
            return Err(Error::output(
                out,
                format!("the folder holds a set made by a run without --shard ({RECORD_FILE}); continue it without --shard, or give a new --out"),
            ));
        }
        // Another shard may record the set (and write its first files) between the two looks:
        // then the folder is the sharded set's, and its settings are compared below.
        if let Some(first) = foreign_entry(out).filter(|_| !path.exists()) {
            return Err(Error::output(
                out,
                format!("the folder holds files ({first}, ...) but no {SHARDED_SET_FILE}, so no sharded run wrote it; give a new or empty --out"),
            ));
        }
    }
    if !path.exists() {
        let json = serde_json::to_vec_pretty(set).map_err(|e| Error::output(&path, format!("cannot serialise the settings: {e}")))?;
        // Complete under a temporary name, then linked into place only if absent: every shard
        // sees either no file or the whole of the first one's.
        let tmp = out.join(format!(".{SHARDED_SET_FILE}.new{}", std::process::id()));
        write_atomic(&tmp, &json)?;
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::output(&path, e)),
        }
    }
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let stored: ShardedSet =
        serde_json::from_slice(&bytes).map_err(|e| Error::input(path.display().to_string(), format!("unreadable sharded-set record ({e})")))?;
    let mut differ = settings_diff(&stored.settings, &settings_for_compare(&stored.settings, &set.settings));
    for (what, a, b) in [
        ("ipc_start", stored.settings.ipc_start, set.settings.ipc_start),
        ("ipc_end", stored.settings.ipc_end, set.settings.ipc_end),
        ("shards", stored.shards, set.shards),
    ] {
        if a != b {
            differ.push(format!("{what}: {a} -> {b}"));
        }
    }
    if stored.teacher_fingerprint != set.teacher_fingerprint {
        differ.push(format!("teacher weights: fingerprint {} -> {}", stored.teacher_fingerprint, set.teacher_fingerprint));
    }
    if !differ.is_empty() {
        return Err(Error::Option(format!(
            "{} holds a sharded set made with other settings (recorded -> this shard): {}. Shards of one set must agree; run this shard with the recorded settings, or give a new --out",
            path.display(),
            differ.join("; ")
        )));
    }
    Ok(())
}

/// Writes the set's [`RECORD_FILE`] from its shards' records once every batch and real image of
/// the plan is recorded by some shard (batches in plan order); returns whether it did. Any shard
/// may call it after its own work; two at once write the same file.
pub fn merge_shards(out: &Path, settings: &RunSettings, count: usize) -> Result<bool> {
    let mut records = Vec::with_capacity(count);
    for i in 0..count {
        match load_record(&out.join(super::shard::record_file(i, count)))? {
            Some(r) => records.push(r),
            None => return Ok(false),
        }
    }
    let mut batches = Vec::new();
    for b in plan(settings) {
        match records.iter().flat_map(|r| &r.batches).find(|r| b.is_recorded_by(r)) {
            Some(r) => batches.push(r.clone()),
            None => return Ok(false),
        }
    }
    let mut real_images = Vec::new();
    if let Some(real) = &settings.real {
        for cls in 0..settings.classes {
            for ipc in settings.ipc_start..real.ipc.min(settings.ipc_end) {
                match records.iter().flat_map(|r| &r.real_images).find(|e| e.0 == cls && e.1 == ipc) {
                    Some(e) => real_images.push(e.clone()),
                    None => return Ok(false),
                }
            }
        }
    }
    let first = &records[0];
    let merged = RunRecord {
        engine: first.engine.clone(),
        teacher_fingerprint: first.teacher_fingerprint.clone(),
        settings: settings.clone(),
        batches,
        real_images,
        command: first.command.clone(),
    };
    write_record(&out.join(RECORD_FILE), &merged)?;
    Ok(true)
}

/// [`run`] with several teachers (`models[0]` the main one, the rest `settings.extra_teachers` in
/// order), shared by `settings.teacher_schedule`.
pub fn run_with_teachers<B: Backend>(backend: &B, models: &[&ResNet], settings: &RunSettings, out: &Path, opts: &RunOptions) -> Result<RunSummary> {
    run_on_devices(&[backend], models, settings, out, opts)
}

/// [`run_with_teachers`] on several devices of one kind at once (`--device cuda:0,1`): one worker
/// per device takes the next pending batch from a shared queue, so the set is the same as on one
/// device. A device whose batch fails is reported and stops; the others go on, the failed batches
/// stay unrecorded (a rerun makes them), and the run ends with an error naming each.
pub fn run_on_devices<B: Backend>(backends: &[&B], models: &[&ResNet], settings: &RunSettings, out: &Path, opts: &RunOptions) -> Result<RunSummary> {
    let backend = *backends.first().ok_or_else(|| Error::State("no device".into()))?;
    let (show_progress, log_every) = (opts.show_progress, opts.log_every);
    let model = *models.first().ok_or_else(|| Error::State("no teacher".into()))?;
    if models.len() != 1 + settings.extra_teachers.len() {
        return Err(Error::State(format!("{} teachers loaded for {} named", models.len(), 1 + settings.extra_teachers.len())));
    }
    validate(settings, model)?;
    // A plain run owns the folder; a shard shares it with the other shards and owns its own part.
    let _locks = match &opts.shard {
        None => vec![lock_folder(out)?],
        Some(s) => vec![lock_folder_shared(out)?, lock_named(out, &format!(".cda-engine.shard-{}.lock", s.tag()), "that shard is already running")?],
    };
    remove_stale_temps_in(out);
    // Several teachers: their fingerprints joined with '+', main one first.
    let fingerprint = models.iter().map(|m| crate::train::trainable::TrainModel::from_resnet(m).fingerprint()).collect::<Vec<_>>().join("+");
    let record_path = match &opts.shard {
        None => {
            if out.join(SHARDED_SET_FILE).exists() && !out.join(RECORD_FILE).exists() {
                return Err(Error::output(
                    out,
                    format!("the folder holds a sharded set that is not complete ({SHARDED_SET_FILE}); finish it with its --shard runs (`cda-engine status` lists what is missing)"),
                ));
            }
            out.join(RECORD_FILE)
        }
        Some(s) => {
            let set = ShardedSet {
                engine: format!("cda-engine {}", env!("CARGO_PKG_VERSION")),
                teacher_fingerprint: fingerprint.clone(),
                settings: settings.clone(),
                shards: s.count,
                command: opts.command.clone(),
            };
            agree_on_shards(out, &set)?;
            out.join(super::shard::record_file(s.index, s.count))
        }
    };
    // A new folder's record is written just before its first images: a folder with images and no
    // record is then never a run's, and a run refused before any image leaves no record.
    let mut record_written = true;
    let mut record = match load_record(&record_path)? {
        Some(mut r) => {
            let mut differ = settings_diff(&r.settings, &settings_for_compare(&r.settings, settings));
            if let Some(f) = r.teacher_fingerprint.as_ref().filter(|f| **f != fingerprint) {
                differ.push(format!("teacher weights: fingerprint {f} ({}) -> {fingerprint} ({})", r.settings.teacher, settings.teacher));
            }
            if !differ.is_empty() {
                return Err(Error::Option(format!(
                    "{} holds a set made with different settings (recorded -> this run): {}. This run would mix its images with that set; continue it with the recorded settings, or give a new --out",
                    record_path.display(),
                    differ.join("; ")
                )));
            }
            if r.teacher_fingerprint.is_none() {
                eprintln!("note: {} predates teacher fingerprints; the teacher is taken on trust and its fingerprint recorded now", record_path.display());
                r.teacher_fingerprint = Some(fingerprint.clone());
                write_record(&record_path, &r)?;
            }
            r
        }
        None => {
            if let Some(first) = foreign_entry(out).filter(|_| opts.shard.is_none()) {
                return Err(Error::output(
                    out,
                    format!("the folder holds files ({first}, ...) but no {RECORD_FILE}, so `run` did not write it (a `sample` or `select` set, or other files); give a new or empty --out"),
                ));
            }
            record_written = false;
            RunRecord {
                engine: format!("cda-engine {}", env!("CARGO_PKG_VERSION")),
                teacher_fingerprint: Some(fingerprint.clone()),
                settings: settings.clone(),
                batches: Vec::new(),
                real_images: Vec::new(),
                command: opts.command.clone(),
            }
        }
    };
    let device = backends.iter().map(|b| b.describe()).collect::<Vec<_>>().join(", ");
    let (c, res) = (model.in_channels, settings.res);
    // A shard's part: every count-th batch of the plan, from its index on.
    let all = plan(settings);
    let batches: Vec<BatchPlan> = all.iter().enumerate().filter(|(i, _)| opts.shard.as_ref().is_none_or(|s| s.owns(*i))).map(|(_, b)| b.clone()).collect();
    let pending = unfinished(&batches, &record, out, model, settings);
    let skipped = batches.len() - pending.len();
    let mut written = 0;
    if skipped > 0 {
        eprintln!("resuming: {skipped} of {} batches already in {}", batches.len(), out.display());
    }

    if let Some(real) = &settings.real {
        // The record first, so a run killed among the real images is still this run's folder.
        if !record_written {
            write_record(&record_path, &record)?;
            record_written = true;
        }
        let owns_class = |cls: usize| opts.shard.as_ref().is_none_or(|s| s.owns(cls));
        written += write_real_part(backend, model, settings, real, out, &mut record, &owns_class)?;
        write_record(&record_path, &record)?;
    }
    let starts = starting_images(backend, model, settings, &pending)?;
    let class_stats = class_statistics(backend, models, settings, &pending)?;

    let iters = settings.recover.iterations;
    let bar = ProgressBar::with_draw_target(
        Some((pending.len() * iters) as u64),
        if show_progress { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() },
    );
    bar.set_style(ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} it, ETA {eta_precise}  {msg}").unwrap().progress_chars("=> "));
    let started = Instant::now();
    // What the workers share: the queue position and, under one lock, the record and the counts.
    let next = std::sync::atomic::AtomicUsize::new(0);
    struct Shared {
        record: RunRecord,
        record_written: bool,
        written: usize,
        total_iter_secs: f64,
        failures: Vec<String>,
    }
    let shared = std::sync::Mutex::new(Shared { record, record_written, written, total_iter_secs: 0.0, failures: Vec::new() });
    let several = backends.len() > 1;
    let worker = |b: &B| -> Result<()> {
        let device = b.describe();
        let mut recoverers: Vec<(usize, Recoverer<'_, B>)> = Vec::new();
        loop {
            let bi = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let Some(plan) = pending.get(bi) else { return Ok(()) };
            let label = format!("batch {}/{} (ipc {:?}, classes {}..{})", bi + 1, pending.len(), plan.ipc, plan.class_start, plan.class_end);
            let done = (|| -> Result<()> {
                let n = plan.len();
                if !recoverers.iter().any(|(len, _)| *len == n) {
                    let mut r = Recoverer::with_teachers(b, models, &settings.recover, n, res, res)?;
                    r.schedule = settings.teacher_schedule;
                    r.log_every = log_every.max(1);
                    r.residual = settings.residual.clone();
                    r.prepare_stages(models)?;
                    recoverers.push((n, r));
                }
                let rec = &mut recoverers.iter_mut().find(|(len, _)| *len == n).expect("made above").1;
                let images = plan.images();
                let targets: Vec<i32> = images.iter().map(|&(cls, _)| cls as i32).collect();
                for (k, stats) in class_stats.iter().enumerate() {
                    let classes: Vec<usize> = images.iter().map(|&(cls, _)| cls).collect();
                    rec.set_bn_targets(k, &stats.mixture(&classes)?)?;
                }
                let mut rng = batch_rng(settings.seed, plan.ipc[0], plan.class_start);
                let t0 = Instant::now();
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
                {
                    let mut sh = shared.lock().unwrap_or_else(|e| e.into_inner());
                    if !sh.record_written {
                        write_record(&record_path, &sh.record)?;
                        sh.record_written = true;
                    }
                }
                // Save every image, then the record: a batch counts as done only when the record
                // holds it and all its files are whole.
                let hw = res * res;
                for (k, &(cls, ipc)) in images.iter().enumerate() {
                    let img = &outcome.images[k * c * hw..(k + 1) * c * hw];
                    let pixels: Vec<u8> = img.iter().enumerate().map(|(i, &v)| quantize(settings.recover.clip.to_unit(i / hw, v))).collect();
                    save_image(&image_path(out, cls, ipc, model.num_classes, settings.format), &pixels, c, res, res, settings.format)?;
                }
                let first = outcome.trace.first().copied().unwrap_or_default();
                let last = outcome.trace.last().copied().unwrap_or_default();
                let on = if several { format!(" on {device}") } else { String::new() };
                let line = format!(
                    "{label}: {:.1}s{on}, ce {:.3} -> {:.3}, bn {:.3} -> {:.3}, teacher top-1 {:.1}%",
                    secs, first.ce, last.ce, first.bn, last.bn, outcome.teacher_top1
                );
                if show_progress {
                    bar.println(line);
                } else {
                    eprintln!("{line}");
                }
                let mut sh = shared.lock().unwrap_or_else(|e| e.into_inner());
                sh.written += images.len();
                sh.total_iter_secs += secs;
                // Entries of another batch layout over the same images (a continuation that changed
                // how IPC indices group) are replaced, so the record never counts an image twice.
                sh.record.batches.retain(|r| !plan.overlaps(r));
                sh.record.batches.push(BatchRecord {
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
                write_record(&record_path, &sh.record)
            })();
            if let Err(e) = done {
                if !several {
                    return Err(e);
                }
                // This device stops; the others take the rest of the queue.
                let why = format!("{label} on {device}: {e}");
                let line = format!("error: {why}; that device stops, the others go on");
                if show_progress {
                    bar.println(line);
                } else {
                    eprintln!("{line}");
                }
                shared.lock().unwrap_or_else(|e| e.into_inner()).failures.push(why);
                return Ok(());
            }
        }
    };
    // One device works on this thread (as before there were several); several get a thread each.
    let results: Vec<Result<()>> = if several {
        std::thread::scope(|scope| {
            let handles: Vec<_> = backends.iter().map(|&b| scope.spawn(move || worker(b))).collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(Error::State("a device worker panicked".into())))).collect()
        })
    } else {
        vec![worker(backend)]
    };
    let not_started = pending.len().saturating_sub(next.load(std::sync::atomic::Ordering::SeqCst));
    let Shared { mut record, written, total_iter_secs, failures, .. } = shared.into_inner().unwrap_or_else(|e| e.into_inner());
    for r in results {
        r?;
    }
    // Devices finish in any order and a resumed run appends what it made: the record lists batches
    // in plan order, as one uninterrupted run on one device writes them.
    let at = |b: &BatchRecord| all.iter().position(|p| p.is_recorded_by(b)).unwrap_or(usize::MAX);
    if !record.batches.is_sorted_by_key(at) {
        record.batches.sort_by_key(at);
        write_record(&record_path, &record)?;
    }
    if !failures.is_empty() {
        bar.finish_and_clear();
        return Err(Error::Incomplete(format!(
            "{} batch(es) failed{}; they are not in the set, rerun the same command to make them: {}",
            failures.len(),
            if not_started > 0 { format!(" and {not_started} did not start (every device stopped)") } else { String::new() },
            failures.join("; ")
        )));
    }
    bar.finish_and_clear();
    match &opts.shard {
        // A shard's record covers only its part; the last shard to finish writes the set's record.
        Some(s) => {
            if merge_shards(out, settings, s.count)? {
                eprintln!("shard {} of {}: the set is complete; {} merges every shard's record", s.index, s.count, out.join(RECORD_FILE).display());
            } else {
                eprintln!("shard {} of {}: done; other shards are still missing (`cda-engine status {}`)", s.index, s.count, out.display());
            }
        }
        None => {
            if let Some(note) = missing_ipc(&record) {
                eprintln!("note: {} {note}", out.display());
            }
        }
    }
    write_pictures(out, &record_path, &record, settings, opts.shard.is_none());
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

/// The run's pictures, as warnings when they fail: the losses beside the record and, for a whole
/// (unsharded) run, `recover_grid.png` (up to 10 IPC rows of up to 20 classes).
fn write_pictures(out: &Path, record_path: &Path, record: &RunRecord, settings: &RunSettings, whole: bool) {
    let losses = crate::plot::losses_path_for(record_path);
    let traces: Vec<&[LossPoint]> = record.batches.iter().map(|b| b.trace.as_slice()).filter(|t| !t.is_empty()).collect();
    if !traces.is_empty() {
        let batches = if traces.len() == 1 { "1 batch".to_string() } else { format!("{} batches", traces.len()) };
        let title = format!("recover losses, --method {} ({batches})", settings.method.as_deref().unwrap_or("cda"));
        crate::plot::or_warn(&losses, || crate::plot::recover_losses(&traces, &title, &losses));
    }
    if whole {
        let grid = out.join(GRID_FILE);
        let rows = recorded_ipcs(record).len().clamp(1, 10);
        crate::plot::or_warn(&grid, || super::gallery::grid(&[out.to_path_buf()], &grid, rows, 20, 0));
    }
}

/// The grid of a run's images beside its record.
pub const GRID_FILE: &str = "recover_grid.png";

/// The starting images of every (class, ipc) the pending batches need, indexed [class][ipc], or None
/// for noise (drawn per batch inside the loop). Selection runs once per class, on the CPU data.
fn starting_images<B: Backend>(backend: &B, model: &ResNet, s: &RunSettings, pending: &[&BatchPlan]) -> Result<Option<Vec<Vec<super::init::InitImage>>>> {
    if s.init.kind == InitKind::Noise || pending.is_empty() {
        return Ok(None);
    }
    let spec = &s.init;
    let data = spec.data.as_deref().expect("validated: real starts name their data");
    let real = RealData::open(data, model.in_channels)?;
    let (mean, std) = norm_of(&s.recover.clip, model.in_channels);
    let mut per_class = vec![Vec::new(); s.classes];
    let t0 = Instant::now();
    for (cls, slot) in per_class.iter_mut().enumerate() {
        if pending.iter().any(|b| (b.class_start..b.class_end).contains(&cls)) {
            *slot = class_images(backend, model, &real, spec, cls, s.ipc_end, s.res, s.seed, &mean, &std)?;
        }
    }
    let kind = match spec.kind {
        InitKind::Real => "random real images",
        _ => "teacher-selected real crops",
    };
    eprintln!("starting images ({kind} from {}) chosen in {:.1}s", real.ds.describe(), t0.elapsed().as_secs_f64());
    Ok(Some(per_class))
}

/// Each teacher's class-wise BN statistics of the classes the pending batches hold, when the
/// settings aim the BN loss at them; empty otherwise (the running statistics stay the targets).
fn class_statistics<B: Backend>(backend: &B, models: &[&ResNet], s: &RunSettings, pending: &[&BatchPlan]) -> Result<Vec<ClassBnStats>> {
    let BnTarget::Class { data, images } = &s.bn_target else {
        return Ok(Vec::new());
    };
    if pending.is_empty() {
        return Ok(Vec::new());
    }
    let model = models[0];
    let real = RealData::open(data, model.in_channels)?;
    let (mean, std) = norm_of(&s.recover.clip, model.in_channels);
    let wanted = |cls: usize| pending.iter().any(|b| (b.class_start..b.class_end).contains(&cls));
    let t0 = Instant::now();
    let stats =
        models.iter().map(|m| ClassBnStats::measure(backend, m, &real, s.classes, wanted, *images, s.res, s.seed, &mean, &std)).collect::<Result<Vec<_>>>()?;
    eprintln!("class-wise BN statistics of up to {images} images per class from {} measured in {:.1}s", real.ds.describe(), t0.elapsed().as_secs_f64());
    Ok(stats)
}

/// Writes the real part's images of IPC ipc_start..min(real.ipc, ipc_end) that are not already
/// whole in `out` (8-bit rounding of the selected pixels) and records all of them; returns how many
/// were written. The selection ranks `real.ipc` images per class, so the set does not depend on the
/// IPC range of one invocation.
fn write_real_part<B: Backend>(
    backend: &B,
    model: &ResNet,
    s: &RunSettings,
    real: &RealPart,
    out: &Path,
    record: &mut RunRecord,
    owns_class: &dyn Fn(usize) -> bool,
) -> Result<usize> {
    let ipcs = s.ipc_start..real.ipc.min(s.ipc_end);
    if ipcs.is_empty() {
        return Ok(0);
    }
    let data = real.select.data.as_deref().ok_or_else(|| Error::Option("the real part needs --init-data".into()))?;
    let pool = RealData::open(data, model.in_channels)?;
    let (mean, std) = norm_of(&s.recover.clip, model.in_channels);
    let (c, res) = (model.in_channels, s.res);
    let mut written = 0;
    for cls in (0..s.classes).filter(|&c| owns_class(c)) {
        let path = |ipc| image_path(out, cls, ipc, model.num_classes, s.format);
        let whole = ipcs.clone().all(|ipc| super::output::check_image(&path(ipc), c, res, res, s.format).is_ok());
        let recorded = ipcs.clone().all(|ipc| record.real_images.iter().any(|e| e.0 == cls && e.1 == ipc));
        if whole && recorded {
            continue;
        }
        let chosen = class_images(backend, model, &pool, &real.select, cls, real.ipc, res, s.seed, &mean, &std)?;
        for ipc in ipcs.clone() {
            let img = &chosen[ipc];
            let px: Vec<u8> = img.pixels.iter().map(|&u| super::output::round_to_u8(u)).collect();
            save_image(&path(ipc), &px, c, res, res, s.format)?;
            written += 1;
            record.real_images.retain(|e| !(e.0 == cls && e.1 == ipc));
            record.real_images.push((cls, ipc, img.sources.clone()));
        }
    }
    eprintln!("real part: {written} selected real images written (IPC {}..{} of each class)", ipcs.start, ipcs.end);
    Ok(written)
}

/// The teacher's per-channel (mean, std) as the clip mode holds them (identity for unit range).
pub fn norm_of(clip: &super::ClipMode, channels: usize) -> (Vec<f32>, Vec<f32>) {
    match clip {
        super::ClipMode::Normalized { mean, std } => (mean.clone(), std.clone()),
        super::ClipMode::Unit => (vec![0.0; channels], vec![1.0; channels]),
    }
}

/// Writes the record with its IPC range set to the span of the recorded batches (a continuation
/// widens it to the union), else left as asked.
fn write_record(path: &Path, record: &RunRecord) -> Result<()> {
    let mut r = record.clone();
    let present = recorded_ipcs(&r);
    if let (Some(&lo), Some(&hi)) = (present.first(), present.last()) {
        r.settings.ipc_start = lo;
        r.settings.ipc_end = hi + 1;
    }
    let json = serde_json::to_vec_pretty(&r).map_err(|e| Error::output(path, format!("cannot serialise the record: {e}")))?;
    write_atomic(path, &json)
}

/// The IPC indices the record holds images of: its batches' and its real part's.
fn recorded_ipcs(record: &RunRecord) -> std::collections::BTreeSet<usize> {
    record.batches.iter().flat_map(|b| b.ipc.iter().copied()).chain(record.real_images.iter().map(|e| e.1)).collect()
}

/// "lacks IPC [..] of a..b" when the recorded batches leave holes in their span (a continuation
/// that started past the end of the earlier run), for a note; None when the span is whole.
fn missing_ipc(record: &RunRecord) -> Option<String> {
    let present = recorded_ipcs(record);
    let (lo, hi) = (*present.first()?, *present.last()?);
    let missing: Vec<usize> = (lo..=hi).filter(|i| !present.contains(i)).collect();
    (!missing.is_empty()).then(|| format!("lacks IPC {missing:?} of {lo}..{}: run with --ipc-start/--ipc-end covering them to fill the set", hi + 1))
}

/// The first entry of `out` that a run's own folder would not hold before its record exists (the
/// lock file and temporary files aside), as a name to show.
fn foreign_entry(out: &Path) -> Option<String> {
    // Another shard's settings file while it is being written (and write_atomic's temporary beside
    // it) belong to the sharded set, not to a foreign one.
    let settings_temp = format!("{SHARDED_SET_FILE}.new");
    folder_entries(out).find(|n| !n.trim_start_matches('.').starts_with(&settings_temp))
}

/// The batches of `batches` still to run: those the record does not hold (a run killed between a
/// batch's images and its record reruns it, deterministically the same images, so the record holds
/// every batch's numbers), and those with a file that is missing or not a whole image of the
/// settings' size and channels. Prints why each recorded batch reruns.
fn unfinished<'a>(batches: &'a [BatchPlan], record: &RunRecord, out: &Path, model: &ResNet, s: &RunSettings) -> Vec<&'a BatchPlan> {
    use rayon::prelude::*;
    let recorded = |b: &BatchPlan| record.batches.iter().any(|r| b.is_recorded_by(r));
    let (c, res) = (model.in_channels, s.res);
    let mut notes = Vec::new();
    let mut pending = Vec::new();
    for b in batches {
        let paths: Vec<PathBuf> = b.images().iter().map(|&(cls, ipc)| image_path(out, cls, ipc, model.num_classes, s.format)).collect();
        if !recorded(b) {
            if paths.iter().any(|p| p.exists()) {
                let regrouped = record.batches.iter().any(|r| b.overlaps(r));
                let why = if regrouped {
                    "its images were recorded in batches of another layout (the IPC range or --ipc-per-batch changed), and a batch's images are made together"
                } else {
                    "images present but not in the record (the run stopped before recording it)"
                };
                notes.push(format!("batch ipc {:?}, classes {}..{}: {why}; it runs again", b.ipc, b.class_start, b.class_end));
            }
            pending.push(b);
            continue;
        }
        // Decoding is the costly part of a resume of a large set: spread over the cores.
        let damaged: Vec<(PathBuf, String)> = paths.into_par_iter().filter_map(|p| check_image(&p, c, res, res, s.format).err().map(|why| (p, why))).collect();
        if let Some((p, why)) = damaged.first() {
            let more = if damaged.len() > 1 { format!(" (and {} more)", damaged.len() - 1) } else { String::new() };
            notes.push(format!(
                "batch ipc {:?}, classes {}..{}: {} is not a whole image: {why}{more}; it runs again",
                b.ipc,
                b.class_start,
                b.class_end,
                p.display()
            ));
            pending.push(b);
        }
    }
    const SHOWN: usize = 10;
    for n in notes.iter().take(SHOWN) {
        eprintln!("resuming: {n}");
    }
    if notes.len() > SHOWN {
        eprintln!("resuming: ... and {} more batches run again", notes.len() - SHOWN);
    }
    pending
}

/// Each setting that differs between `old` and `new`, as "path: old -> new" (JSON values, nested
/// fields joined with dots), sorted by name.
pub fn settings_diff(old: &RunSettings, new: &RunSettings) -> Vec<String> {
    fn walk(prefix: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
        match (a, b) {
            (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
                let mut keys: Vec<&String> = x.keys().collect();
                keys.extend(y.keys().filter(|k| !x.contains_key(*k)));
                for k in keys {
                    let name = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    let null = serde_json::Value::Null;
                    walk(&name, x.get(k).unwrap_or(&null), y.get(k).unwrap_or(&null), out);
                }
            }
            _ if a != b => out.push(format!("{prefix}: {a} -> {b}")),
            _ => {}
        }
    }
    let (a, b) = (serde_json::to_value(old), serde_json::to_value(new));
    let mut out = Vec::new();
    match (a, b) {
        (Ok(a), Ok(b)) => walk("", &a, &b, &mut out),
        // Settings always serialise; should they not, fall back to saying that they differ.
        _ if old != new => out.push("settings differ".into()),
        _ => {}
    }
    out
}

/// Settings that may legitimately change between a run and its resumption (the IPC range and the
/// teacher's path spelling) are taken from the stored record, so only real changes are refused.
fn settings_for_compare(stored: &RunSettings, new: &RunSettings) -> RunSettings {
    RunSettings { ipc_start: stored.ipc_start, ipc_end: stored.ipc_end, teacher: stored.teacher.clone(), method: stored.method.clone(), ..new.clone() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_diff_names_each_field_old_and_new() {
        let recover = RecoverConfig {
            iterations: 3,
            lr: 0.25,
            r_bn: 0.01,
            first_bn_multiplier: 10.0,
            jitter: 4,
            crop: true,
            flip: true,
            easy2hard_mode: super::super::Curriculum::Cosine,
            milestone: 1.0,
            reverse_curriculum: false,
            crop_min_scale: 0.08,
            per_image_augment: false,
            tv_l2: 0.0,
            l2_scale: 0.0,
            clip: super::super::ClipMode::Unit,
            adam_betas: (0.5, 0.9),
            adam_eps: 1e-8,
        };
        let s = RunSettings {
            teacher: "t.safetensors".into(),
            teacher_arch: "resnet18".into(),
            preset: None,
            recover,
            res: 28,
            classes: 10,
            batch_size: 10,
            ipc_per_batch: 1,
            ipc_start: 0,
            ipc_end: 2,
            seed: 0,
            format: ImageFormat::Jpg,
            init: InitSpec::default(),
            residual: None,
            method: None,
            extra_teachers: Vec::new(),
            teacher_schedule: TeacherSchedule::Rotate,
            real: None,
            bn_target: BnTarget::Running,
        };
        assert!(settings_diff(&s, &s).is_empty());
        let mut t = s.clone();
        t.seed = 3;
        t.recover.iterations = 4;
        t.format = ImageFormat::Png;
        let d = settings_diff(&s, &t);
        assert_eq!(d, ["format: \"jpg\" -> \"png\"", "recover.iterations: 3 -> 4", "seed: 0 -> 3"]);
    }
}
