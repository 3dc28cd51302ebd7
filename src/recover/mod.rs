//! Recover: the CDA synthesis loop (docs/algorithm.md section 2), generic over the backend.
//!
//! Per batch (a chunk of classes, one image each, optionally several IPC indices): x ~ N(0, 1), fresh
//! Adam (betas 0.5/0.9, eps 1e-8), and for t in 0..T: cosine lr, curriculum crop bound, one sampled
//! RandomResizedCrop + flip + roll (shared by the batch unless per-image), forward, loss
//! CE + r_bn * sum_l w_l (||rv - var|| + ||rm - mean||), backward to x, Adam step, clip.

pub mod batch_augment;
pub mod class_stats;
pub mod cli;
pub mod curriculum;
pub mod gallery;
pub mod init;
pub mod output;
pub mod presets;
pub mod run;
pub mod select;
pub mod shard;
pub mod status;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::backend::{AdamClipIo, Backend, ImagePrior};
use crate::error::{Error, Result};
use crate::model::ResNet;
use crate::net::Net;
use crate::ops::adam::AdamScalars;
use crate::ops::crop_resize::{CropParams, CropResizeProblem};
use batch_augment::AugmentSpec;
use curriculum::Curriculum;

/// How images are kept in range after each step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClipMode {
    /// Per channel c: clamp to [-m_c / s_c, (1 - m_c) / s_c] (pixel range [0, 1] in normalised space).
    Normalized { mean: Vec<f32>, std: Vec<f32> },
    /// Teacher without input normalisation (ImageNet-21K): clamp to [0, 1].
    Unit,
}

impl ClipMode {
    /// Per-channel (lo, hi), computed in f64 like the official numpy code, then cast.
    pub fn bounds(&self, channels: usize) -> (Vec<f32>, Vec<f32>) {
        match self {
            ClipMode::Normalized { mean, std } => (
                mean.iter().zip(std).map(|(&m, &s)| (-(m as f64) / s as f64) as f32).collect(),
                mean.iter().zip(std).map(|(&m, &s)| ((1.0 - m as f64) / s as f64) as f32).collect(),
            ),
            ClipMode::Unit => (vec![0.0; channels], vec![1.0; channels]),
        }
    }

    /// Pixel value in [0, 1] of a normalised value: clamp(x * s + m, 0, 1) in f32 (the official denormalize).
    pub fn to_unit(&self, channel: usize, x: f32) -> f32 {
        match self {
            ClipMode::Normalized { mean, std } => (x * std[channel] + mean[channel]).clamp(0.0, 1.0),
            ClipMode::Unit => x.clamp(0.0, 1.0),
        }
    }

    /// The inverse: the normalised value of pixel value u in [0, 1].
    pub fn from_unit(&self, channel: usize, u: f32) -> f32 {
        match self {
            ClipMode::Normalized { mean, std } => (u - mean[channel]) / std[channel],
            ClipMode::Unit => u,
        }
    }
}

/// Hyper-parameters of one batch's optimisation (the official flags).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecoverConfig {
    pub iterations: usize,
    pub lr: f64,
    pub r_bn: f64,
    pub first_bn_multiplier: f64,
    pub jitter: usize,
    /// RandomResizedCrop on (with the curriculum) or off (roll only, SRe2L CIFAR).
    pub crop: bool,
    pub flip: bool,
    pub easy2hard_mode: Curriculum,
    /// Fraction of the iterations the curriculum spans; 0 = plain SRe2L.
    pub milestone: f64,
    /// Hard-to-easy ablation (the crop bound rises instead of falling).
    pub reverse_curriculum: bool,
    /// Where the crop-scale bound ends (RandomResizedCrop's default 0.08; EDC: 0.5).
    #[serde(default = "default_crop_min_scale", skip_serializing_if = "is_default_crop_min_scale")]
    pub crop_min_scale: f64,
    /// One augmentation per image instead of one per batch.
    pub per_image_augment: bool,
    /// SRe2L's optional image priors on the augmented batch: total variation (L2) and image L2 norm.
    pub tv_l2: f64,
    pub l2_scale: f64,
    pub clip: ClipMode,
    pub adam_betas: (f64, f64),
    pub adam_eps: f64,
}

fn default_crop_min_scale() -> f64 {
    curriculum::MIN_SCALE
}

fn is_default_crop_min_scale(v: &f64) -> bool {
    *v == curriculum::MIN_SCALE
}

impl RecoverConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Option(m));
        if !(self.crop_min_scale > 0.0 && self.crop_min_scale <= 1.0) {
            return bad(format!("--crop-min-scale must be in (0, 1], got {}", self.crop_min_scale));
        }
        if self.iterations == 0 {
            return bad("--iteration must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("--lr must be positive, got {}", self.lr));
        }
        if !(self.r_bn.is_finite() && self.r_bn >= 0.0) {
            return bad(format!("--r-bn must be >= 0, got {}", self.r_bn));
        }
        if !(self.first_bn_multiplier.is_finite() && self.first_bn_multiplier >= 0.0) {
            return bad(format!("--first-bn-multiplier must be >= 0, got {}", self.first_bn_multiplier));
        }
        if !(0.0..=1.0).contains(&self.milestone) {
            return bad(format!("--milestone must be in [0, 1], got {}", self.milestone));
        }
        if !(self.tv_l2 >= 0.0 && self.l2_scale >= 0.0) {
            return bad("--tv-l2 and --l2-scale must be >= 0".into());
        }
        Ok(())
    }

    fn augment(&self) -> AugmentSpec {
        AugmentSpec { crop: self.crop, flip: self.flip, jitter: self.jitter }
    }
}

/// Loss parts at one iteration. `bn` is sum_l w_l r_l without r_bn; total = ce + r_bn * bn (+ priors).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LossPoint {
    pub iteration: usize,
    pub ce: f32,
    pub bn: f32,
    /// Unweighted r_0 of the first BN layer (the first chosen teacher's): the layer whose weight
    /// `first_bn_multiplier` raises. Absent (0) in records written before it was kept.
    #[serde(default)]
    pub bn_first: f32,
    pub total: f32,
    pub min_crop: f32,
    pub lr: f32,
}

/// What one batch's optimisation produced.
#[derive(Clone, Debug)]
pub struct BatchOutcome {
    /// Final images, N C H W, normalised space.
    pub images: Vec<f32>,
    /// Losses every `log_every` iterations and at the last one.
    pub trace: Vec<LossPoint>,
    /// Teacher top-1 (%) on the final images after the official uint8 quantisation.
    pub teacher_top1: f32,
    /// Per BN layer: unweighted r_l at the first and at the last iteration.
    pub bn_layers_first: Vec<f32>,
    pub bn_layers_last: Vec<f32>,
}

/// Device buffers of one recover iteration besides the teacher's own.
struct StepBuffers<B: Backend> {
    problem: CropResizeProblem,
    x: B::Buf,
    x_aug: B::Buf,
    g_aug: B::Buf,
    g_x: B::Buf,
    m: B::Buf,
    v: B::Buf,
    params: B::IntBuf,
    scalars: B::Buf,
    lo: B::Buf,
    hi: B::Buf,
}

/// The device work of one iteration after its inputs (crop parameters, Adam scalars) are uploaded:
/// augment, forward, losses, backward, augmentation adjoint, Adam + clip. No host transfers, so a
/// backend may record it once as a graph and replay it.
fn issue_iteration<B: Backend>(b: &B, net: &mut Net<B>, s: &mut StepBuffers<B>, bn_weights: &[f64]) -> Result<()> {
    let p = s.problem;
    b.crop_resize_fwd(&p, &s.params, &s.x, &mut s.x_aug)?;
    net.forward(b, &s.x_aug)?;
    net.losses(b, bn_weights)?;
    net.backward(b, &s.x_aug, &mut s.g_aug)?;
    b.crop_resize_bwd(&p, &s.params, &s.g_aug, &mut s.g_x)?;
    let (n, c, hw) = (p.n as usize, p.c as usize, (p.h * p.w) as usize);
    b.adam_clip(AdamClipIo { n, c, hw, scalars: &s.scalars, x: &mut s.x, g: &s.g_x, m: &mut s.m, v: &mut s.v, lo: &s.lo, hi: &s.hi })
}

/// One teacher's executor with its BN-loss weights, its recorded iteration and its loss readback.
struct TeacherState<B: Backend> {
    net: Net<B>,
    /// r_bn * w_l per BN layer, and the w_l alone (first_bn_multiplier for l = 0, else 1).
    bn_weights: Vec<f64>,
    bn_mult: Vec<f64>,
    losses_host: Vec<f32>,
    /// This teacher's iteration recorded as a graph (CUDA), once one eager iteration has sized
    /// every workspace.
    graph: Option<B::Graph>,
    eager_iterations: usize,
}

/// Which of several teachers drive an iteration. With one teacher both are the plain loop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum TeacherSchedule {
    /// EDC ("Elucidating the Design Space of Dataset Condensation", NeurIPS 2024): one teacher per
    /// iteration, in turn (iteration t uses teacher t mod T).
    #[default]
    Rotate,
    /// CV-DD ("Dataset Distillation via Committee Voting"): `per_step` distinct teachers drawn at
    /// random each iteration (from the batch's generator, after the augmentation); the loss is the
    /// mean of theirs.
    Committee { per_step: usize },
}

/// One batch's state on the backend: the teachers' executors plus images, Adam moments and scratch.
pub struct Recoverer<'a, B: Backend> {
    backend: &'a B,
    /// Teacher 0 is the main one: it reports the per-layer losses' layout and the final top-1.
    teachers: Vec<TeacherState<B>>,
    cfg: RecoverConfig,
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    bufs: StepBuffers<B>,
    /// Unweighted r_l of the first teacher of the last iteration that read its losses back.
    last_layers: Vec<f32>,
    /// Record and replay iterations as graphs where the backend can (default on).
    pub use_graphs: bool,
    pub log_every: usize,
    /// FADRM's data residual ("FADRM: Fast and Accurate Data Residual Matching for Dataset
    /// Distillation"): after every `every`-th iteration but the last, x <- alpha * x + (1 - alpha) *
    /// x0 with x0 the batch's starting images, optionally with a fresh Adam and another resolution
    /// per stage (see [`Residual`]). None: off.
    pub residual: Option<Residual>,
    /// The iteration the current Adam started at: its bias correction counts steps from there
    /// (FADRM builds a new optimizer per stage; 0 otherwise).
    adam_start: usize,
    /// One recover state per resolution stage size other than `h` (FADRM's resolution stages),
    /// made by [`Recoverer::prepare_stages`].
    stage_states: Vec<Recoverer<'a, B>>,
    /// How several teachers share the iterations (unused with one teacher).
    pub schedule: TeacherSchedule,
    /// A committee's summed input gradient and one teacher's, on the host (empty until needed).
    committee_scratch: (Vec<f32>, Vec<f32>),
}

/// FADRM's data residual and stages (official code: Jiacheng8/FADRM `recover/recover.py`): the
/// iterations run in stages of `every`; at each stage boundary the image x is resized (bilinear,
/// align_corners = False) to the next stage's resolution and mixed with its starting image x0
/// resized the same way: x <- alpha x + (1 - alpha) x0.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Residual {
    /// Iterations per stage (the mix happens after iterations every-1, 2*every-1, ...).
    pub every: usize,
    /// Weight of the current image; 1 - alpha goes to the starting image (FADRM: 0.5).
    pub alpha: f64,
    /// Each stage starts a fresh Adam (zero moments, bias correction from step 1; the cosine
    /// learning rate runs on over all iterations), as FADRM's code builds a new optimizer per
    /// stage. False in records made before this was kept: the moments carried over.
    #[serde(default)]
    pub restart_adam: bool,
    /// Image size (pixels, square) of each stage, the last the teacher's resolution (FADRM on
    /// ImageNet: 200, 224, 200, 224); the augmentation and the teacher see images of the stage's
    /// size. Empty: every stage at the teacher's resolution (FADRM on CIFAR).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolutions: Vec<usize>,
}

impl Residual {
    /// Number of stages of a run of `iterations`.
    pub fn stage_count(&self, iterations: usize) -> usize {
        iterations.div_ceil(self.every.max(1))
    }

    /// Checks the settings for a run of `iterations` at resolution `res` with `jitter`. Errors:
    /// `Error::Option` naming the flag.
    pub fn validate(&self, iterations: usize, res: usize, jitter: usize) -> Result<()> {
        if self.every == 0 || !(0.0..=1.0).contains(&self.alpha) {
            return Err(Error::Option(format!("--residual-every must be at least 1 and --residual-alpha in [0, 1] (got {} and {})", self.every, self.alpha)));
        }
        if self.resolutions.is_empty() {
            return Ok(());
        }
        let stages = self.stage_count(iterations);
        if self.resolutions.len() != stages {
            return Err(Error::Option(format!(
                "--resolution-stages gives {} sizes for {stages} stages ({iterations} iterations in stages of {})",
                self.resolutions.len(),
                self.every
            )));
        }
        if self.resolutions.last() != Some(&res) {
            return Err(Error::Option(format!("--resolution-stages must end at the teacher's resolution {res} (the images are saved at it)")));
        }
        if let Some(&bad) = self.resolutions.iter().find(|&&s| s > res || s <= jitter) {
            return Err(Error::Option(format!("--resolution-stages size {bad} must be above --jitter {jitter} and at most the resolution {res}")));
        }
        Ok(())
    }

    /// Size of stage k (the teacher's resolution `res` without resolution stages).
    fn size(&self, k: usize, res: usize) -> usize {
        self.resolutions.get(k).copied().unwrap_or(res)
    }
}

/// Bilinear resize (align_corners = False, no antialiasing: `F.interpolate(mode='bilinear')`, and
/// OpenCV's INTER_LINEAR that FADRM's initialisation uses) of n images of c x from x from to c x to
/// x to, N C H W.
pub fn resize_batch(x: &[f32], n: usize, c: usize, from: usize, to: usize) -> Vec<f32> {
    if from == to {
        return x.to_vec();
    }
    let (len_in, len_out) = (c * from * from, c * to * to);
    let view = crate::data::augment::View { top: 0, left: 0, h: from as i32, w: from as i32, flip: false };
    let mut out = vec![0.0; n * len_out];
    for (img, o) in x.chunks(len_in).zip(out.chunks_mut(len_out)) {
        let img = crate::data::Image { c, h: from, w: from, data: img.to_vec() };
        crate::data::augment::render(&img, &view, to, o);
    }
    out
}

/// One stage of a batch's optimisation: iterations start..end on images of size x size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stage {
    start: usize,
    end: usize,
    size: usize,
}

impl<'a, B: Backend> Recoverer<'a, B> {
    /// One teacher's recover state for batches of `n` images of `h` x `w`. Errors: bad settings
    /// (`Error::Option`) and device allocation failures.
    pub fn new(backend: &'a B, model: &ResNet, cfg: &RecoverConfig, n: usize, h: usize, w: usize) -> Result<Recoverer<'a, B>> {
        Self::with_teachers(backend, &[model], cfg, n, h, w)
    }

    /// Several teachers (EDC / CV-DD): each one's BN statistics are matched against its own running
    /// statistics; `teachers[0]` is the main one. They must take the same input channels and classes;
    /// the one normalisation in `cfg` is used for all.
    pub fn with_teachers(backend: &'a B, models: &[&ResNet], cfg: &RecoverConfig, n: usize, h: usize, w: usize) -> Result<Recoverer<'a, B>> {
        cfg.validate()?;
        let model = *models.first().ok_or_else(|| Error::State("no teacher".into()))?;
        let c = model.in_channels;
        if let Some(m) = models.iter().find(|m| m.in_channels != c || m.num_classes != model.num_classes) {
            return Err(Error::Option(format!(
                "the teachers differ: {} ({} channels, {} classes) and {} ({} channels, {} classes)",
                model.arch_name(),
                c,
                model.num_classes,
                m.arch_name(),
                m.in_channels,
                m.num_classes
            )));
        }
        if let ClipMode::Normalized { mean, std } = &cfg.clip {
            if mean.len() != c || std.len() != c {
                return Err(Error::Option(format!("mean/std have {}/{} values; the teacher has {c} input channels", mean.len(), std.len())));
            }
        }
        if cfg.jitter >= h.min(w) {
            return Err(Error::Option(format!("--jitter {} must be smaller than the image size {h}x{w}", cfg.jitter)));
        }
        if cfg.tv_l2 > 0.0 || cfg.l2_scale > 0.0 {
            backend.check_image_prior_support()?;
        }
        let mut teachers = Vec::with_capacity(models.len());
        for m in models {
            let net = Net::new(backend, m, n, h, w)?;
            let layers = net.num_bn_layers();
            let bn_mult: Vec<f64> = (0..layers).map(|l| if l == 0 { cfg.first_bn_multiplier } else { 1.0 }).collect();
            let bn_weights = bn_mult.iter().map(|m| cfg.r_bn * m).collect();
            teachers.push(TeacherState { net, bn_weights, bn_mult, losses_host: vec![0.0; 1 + layers], graph: None, eager_iterations: 0 });
        }
        let len = n * c * h * w;
        let (lo_h, hi_h) = cfg.clip.bounds(c);
        let mut lo = backend.alloc(c)?;
        let mut hi = backend.alloc(c)?;
        backend.upload(&lo_h, &mut lo)?;
        backend.upload(&hi_h, &mut hi)?;
        let bufs = StepBuffers {
            problem: CropResizeProblem { n: n as i32, c: c as i32, h: h as i32, w: w as i32 },
            x: backend.alloc(len)?,
            x_aug: backend.alloc(len)?,
            g_aug: backend.alloc(len)?,
            g_x: backend.alloc(len)?,
            m: backend.alloc(len)?,
            v: backend.alloc(len)?,
            params: backend.alloc_int(8 * n)?,
            scalars: backend.alloc(AdamScalars::LEN)?,
            lo,
            hi,
        };
        Ok(Recoverer {
            backend,
            last_layers: vec![0.0; teachers[0].losses_host.len() - 1],
            teachers,
            cfg: cfg.clone(),
            n,
            c,
            h,
            w,
            bufs,
            use_graphs: true,
            log_every: 50,
            residual: None,
            adam_start: 0,
            stage_states: Vec::new(),
            schedule: TeacherSchedule::Rotate,
            committee_scratch: (Vec::new(), Vec::new()),
        })
    }

    /// Makes the recover states of `residual`'s resolution stages (one per size other than the
    /// batch's), with the same teachers `models` as this one. Call after setting `residual` and
    /// before [`Recoverer::run_batch`]. Errors: bad stage settings (`Error::Option`), allocation
    /// failures.
    pub fn prepare_stages(&mut self, models: &[&ResNet]) -> Result<()> {
        self.stage_states.clear();
        let Some(r) = self.residual.clone() else { return Ok(()) };
        r.validate(self.cfg.iterations, self.h, self.cfg.jitter)?;
        let mut sizes: Vec<usize> = r.resolutions.iter().copied().filter(|&s| s != self.h).collect();
        sizes.sort_unstable();
        sizes.dedup();
        for s in sizes {
            let mut st = Recoverer::with_teachers(self.backend, models, &self.cfg, self.n, s, s)?;
            st.use_graphs = self.use_graphs;
            self.stage_states.push(st);
        }
        Ok(())
    }

    /// The stages of a batch: one of all iterations without the residual.
    fn stages(&self) -> Vec<Stage> {
        let t = self.cfg.iterations;
        match &self.residual {
            Some(r) if r.every > 0 => {
                (0..r.stage_count(t)).map(|k| Stage { start: k * r.every, end: ((k + 1) * r.every).min(t), size: r.size(k, self.h) }).collect()
            }
            _ => vec![Stage { start: 0, end: t, size: self.h }],
        }
    }

    pub fn batch_len(&self) -> usize {
        self.n
    }

    /// Number of teachers.
    pub fn teacher_count(&self) -> usize {
        self.teachers.len()
    }

    /// Sets what teacher `teacher`'s BN-matching loss aims at, per BN layer (module order): K means
    /// and K biased variances each (class-wise statistics, `class_stats`). Kept across batches until
    /// set again; initially the teacher's running statistics. Errors: a teacher or layer count or a
    /// length that does not fit (`Error::Input`).
    pub fn set_bn_targets(&mut self, teacher: usize, targets: &[(Vec<f32>, Vec<f32>)]) -> Result<()> {
        let b = self.backend;
        let net = &mut self.teachers.get_mut(teacher).ok_or_else(|| Error::input("BN targets", format!("no teacher {teacher}")))?.net;
        if targets.len() != net.num_bn_layers() {
            return Err(Error::input("BN targets", format!("{} layers of targets for a teacher of {} BN layers", targets.len(), net.num_bn_layers())));
        }
        for (l, (mean, var)) in targets.iter().enumerate() {
            net.set_bn_targets(b, l, mean, var)?;
        }
        // BN statistics are per channel, so every stage's size aims at the same targets.
        for st in &mut self.stage_states {
            st.set_bn_targets(teacher, targets)?;
        }
        Ok(())
    }

    /// Starts a batch: images from `init` (N C H W, normalised), zero Adam moments, the targets.
    pub fn reset(&mut self, init: &[f32], targets: &[i32]) -> Result<()> {
        let b = self.backend;
        b.upload(init, &mut self.bufs.x)?;
        self.restart_adam(0)?;
        for t in &mut self.teachers {
            t.net.set_targets(b, targets)?;
        }
        Ok(())
    }

    /// Starts a fresh Adam at iteration t: zero moments, bias correction counted from t.
    pub fn restart_adam(&mut self, t: usize) -> Result<()> {
        let zeros = vec![0.0; self.n * self.c * self.h * self.w];
        self.backend.upload(&zeros, &mut self.bufs.m)?;
        self.backend.upload(&zeros, &mut self.bufs.v)?;
        self.adam_start = t;
        Ok(())
    }

    /// Replaces the images, keeping the Adam moments (tests replay a reference trajectory).
    pub fn set_images(&mut self, x: &[f32]) -> Result<()> {
        self.backend.upload(x, &mut self.bufs.x)
    }

    /// The teachers of iteration t under `Rotate` (also the choice for `Committee` when no generator
    /// is at hand): teacher t mod T.
    pub fn rotation(&self, t: usize) -> usize {
        t % self.teachers.len()
    }

    /// The teachers of iteration t: the rotation, or a committee drawn from `rng`.
    pub fn choose_teachers(&self, t: usize, rng: &mut StdRng) -> Vec<usize> {
        let count = self.teachers.len();
        match self.schedule {
            TeacherSchedule::Committee { per_step } if count > 1 => {
                let mut ids: Vec<usize> = (0..count).collect();
                let k = per_step.clamp(1, count);
                for i in 0..k {
                    let j = rng.random_range(i..count);
                    ids.swap(i, j);
                }
                ids.truncate(k);
                ids.sort_unstable();
                ids
            }
            _ => vec![self.rotation(t)],
        }
    }

    /// One iteration (0-based t) with the given augmentation and the rotation's teacher; returns
    /// the losses if `want_losses`.
    pub fn step(&mut self, t: usize, aug: &[CropParams], want_losses: bool) -> Result<Option<LossPoint>> {
        let k = self.rotation(t);
        self.step_with(t, aug, &[k], want_losses)
    }

    /// One iteration driven by the teachers `chosen` (indices, distinct): the mean of their losses.
    /// One teacher runs as a recorded graph where the backend has graphs; several add their input
    /// gradients on the host. Errors: backend failures, a non-finite loss (`Error::Numeric`).
    pub fn step_with(&mut self, t: usize, aug: &[CropParams], chosen: &[usize], want_losses: bool) -> Result<Option<LossPoint>> {
        let b = self.backend;
        let cfg = &self.cfg;
        if chosen.is_empty() || chosen.iter().any(|&k| k >= self.teachers.len()) {
            return Err(Error::State(format!("teachers {chosen:?} of {}", self.teachers.len())));
        }
        let lr = crate::schedule::cosine_lr(cfg.lr, t, cfg.iterations);
        b.upload_int(&CropParams::flatten(aug), &mut self.bufs.params)?;
        let (beta1, beta2) = cfg.adam_betas;
        let scalars = AdamScalars::new(lr, beta1, beta2, cfg.adam_eps, (t + 1 - self.adam_start.min(t)) as u32).to_array();
        b.upload(&scalars, &mut self.bufs.scalars)?;
        let priors = cfg.tv_l2 > 0.0 || cfg.l2_scale > 0.0;
        let prior = if priors || chosen.len() > 1 {
            // The priors read back their loss and a committee adds gradients on the host, so this
            // path stays eager.
            let s = &mut self.bufs;
            let p = s.problem;
            let len = self.n * self.c * self.h * self.w;
            // Host scratch for a committee's gradients, sized once per Recoverer.
            let (sum, part) = &mut self.committee_scratch;
            if chosen.len() > 1 && sum.len() != len {
                *sum = vec![0.0; len];
                *part = vec![0.0; len];
            }
            sum.fill(0.0);
            let mut prior = 0.0;
            b.crop_resize_fwd(&p, &s.params, &s.x, &mut s.x_aug)?;
            for &k in chosen {
                let tch = &mut self.teachers[k];
                tch.net.forward(b, &s.x_aug)?;
                tch.net.losses(b, &tch.bn_weights)?;
                tch.net.backward(b, &s.x_aug, &mut s.g_aug)?;
                if priors {
                    let ip = ImagePrior { n: self.n, c: self.c, h: self.h, w: self.w, tv_l2: cfg.tv_l2, l2_scale: cfg.l2_scale };
                    prior = b.image_prior(&ip, &s.x_aug, &mut s.g_aug)?;
                }
                b.crop_resize_bwd(&p, &s.params, &s.g_aug, &mut s.g_x)?;
                if chosen.len() > 1 {
                    b.download(&s.g_x, part)?;
                    sum.iter_mut().zip(part.iter()).for_each(|(a, &g)| *a += g);
                }
            }
            if chosen.len() > 1 {
                // The mean of the teachers' losses: each one's gradient (with the priors') / count.
                let inv = 1.0 / chosen.len() as f32;
                sum.iter_mut().for_each(|v| *v *= inv);
                b.upload(sum, &mut s.g_x)?;
            }
            let (n, c, hw) = (self.n, self.c, self.h * self.w);
            b.adam_clip(AdamClipIo { n, c, hw, scalars: &s.scalars, x: &mut s.x, g: &s.g_x, m: &mut s.m, v: &mut s.v, lo: &s.lo, hi: &s.hi })?;
            prior
        } else {
            let tch = &mut self.teachers[chosen[0]];
            if tch.graph.is_none() && self.use_graphs && tch.eager_iterations > 0 {
                let (net, bufs, weights) = (&mut tch.net, &mut self.bufs, &tch.bn_weights);
                tch.graph = b.capture_graph(|b| issue_iteration(b, net, bufs, weights))?;
                if tch.graph.is_none() {
                    self.use_graphs = false; // the backend has no graphs
                }
            }
            match &tch.graph {
                Some(g) => b.replay_graph(g)?,
                None => {
                    issue_iteration(b, &mut tch.net, &mut self.bufs, &tch.bn_weights)?;
                    tch.eager_iterations += 1;
                }
            }
            0.0
        };
        if !want_losses {
            return Ok(None);
        }
        let (mut ce_sum, mut bn_sum) = (0.0f64, 0.0f64);
        for (i, &k) in chosen.iter().enumerate() {
            let tch = &mut self.teachers[k];
            b.download(&tch.net.losses, &mut tch.losses_host)?;
            ce_sum += tch.losses_host[0] as f64;
            bn_sum += tch.losses_host[1..].iter().zip(&tch.bn_mult).map(|(&r, &w)| r as f64 * w).sum::<f64>();
            if i == 0 {
                self.last_layers = tch.losses_host[1..].to_vec();
            }
        }
        let count = chosen.len() as f64;
        let (ce, bn) = (ce_sum / count, bn_sum / count);
        let total = ce + cfg.r_bn * bn + prior;
        if !total.is_finite() {
            // At the first iteration no step has been taken yet: the starting images are finite, so
            // the teacher is what gives non-finite outputs.
            if t == 0 {
                return Err(Error::Numeric(format!(
                    "the loss is {total} at the first iteration, before any step (ce {ce}, bn {bn}): the teacher's outputs on the starting images are not finite, so its weights or BN statistics are not usable (a diverged training?)"
                )));
            }
            return Err(Error::Numeric(format!("the loss became {total} at iteration {t} (ce {ce}, bn {bn}); the images diverged: try a smaller --lr")));
        }
        let bn_first = self.last_layers.first().copied().unwrap_or(0.0);
        Ok(Some(LossPoint { iteration: t, ce: ce as f32, bn: bn as f32, bn_first, total: total as f32, min_crop: 0.0, lr: lr as f32 }))
    }

    /// FADRM's data residual after iteration t (0-based) when its schedule says so, for stages at
    /// one resolution: x <- alpha x + (1 - alpha) start, in normalised space (the same mix in pixel
    /// space, so the clip range holds), then a fresh Adam when `restart_adam`. Returns whether it
    /// mixed. ([`Recoverer::run_batch`] does this itself, resizing between resolution stages.)
    pub fn apply_residual(&mut self, t: usize, start: &[f32]) -> Result<bool> {
        let Some(r) = self.residual.clone().filter(|r| r.every > 0 && (t + 1).is_multiple_of(r.every) && t + 1 < self.cfg.iterations) else {
            return Ok(false);
        };
        let mut x = self.images()?;
        mix_residual(&mut x, start, r.alpha);
        self.set_images(&x)?;
        if r.restart_adam {
            self.restart_adam(t + 1)?;
        }
        Ok(true)
    }

    /// True once iterations run as a replayed graph (for any teacher).
    pub fn uses_graph(&self) -> bool {
        self.teachers.iter().any(|t| t.graph.is_some())
    }

    /// Unweighted r_l of every BN layer (of the first teacher of that iteration) from the last
    /// `step` that returned losses.
    pub fn bn_layer_losses(&self) -> &[f32] {
        &self.last_layers
    }

    pub fn images(&self) -> Result<Vec<f32>> {
        let mut out = vec![0.0; self.n * self.c * self.h * self.w];
        self.backend.download(&self.bufs.x, &mut out)?;
        Ok(out)
    }

    /// The input gradient of the last step (before Adam), for tests.
    pub fn last_gradient(&self) -> Result<Vec<f32>> {
        let mut out = vec![0.0; self.n * self.c * self.h * self.w];
        self.backend.download(&self.bufs.g_x, &mut out)?;
        Ok(out)
    }

    /// Runs all iterations from `start` (N C H W, normalised) or, when None, from noise drawn from
    /// `rng` (before any augmentation draw, as the official code); `on_iter` sees every finished
    /// iteration and, every `log_every` iterations (and the first and last), its losses.
    pub fn run_batch(
        &mut self,
        targets: &[i32],
        rng: &mut StdRng,
        start: Option<&[f32]>,
        on_iter: impl FnMut(usize, Option<&LossPoint>),
    ) -> Result<BatchOutcome> {
        let len = self.n * self.c * self.h * self.w;
        let init: Vec<f32> = match start {
            Some(x) if x.len() == len => x.to_vec(),
            Some(x) => return Err(Error::State(format!("{} starting values for a batch of {len}", x.len()))),
            None => (0..len).map(|_| StandardNormal.sample(rng)).collect(),
        };
        let spec = self.cfg.augment();
        let (n, per_image) = (self.n, self.cfg.per_image_augment);
        self.run_stages(
            targets,
            &init,
            |rec, t, size, min_crop| {
                let aug = batch_augment::sample_batch(rng, &spec, n, size, size, min_crop, per_image);
                // Drawn after the augmentation, and only with several teachers: one teacher's stream
                // is the official one.
                let chosen = rec.choose_teachers(t, rng);
                (aug, chosen)
            },
            on_iter,
        )
    }

    /// The loop of [`Recoverer::run_batch`] from `init` (N C H W at the batch's resolution,
    /// normalised) with the augmentation and teachers of each iteration from `draw(state, t, size,
    /// min_crop)` (size: the stage's image size), so tests can replay a reference's draws. Stages
    /// (FADRM's residual, [`Residual`]) run on the state of their size. Errors: as
    /// [`Recoverer::step_with`]; resolution stages not prepared (`Error::State`).
    pub fn run_stages(
        &mut self,
        targets: &[i32],
        init: &[f32],
        mut draw: impl FnMut(&Recoverer<'a, B>, usize, usize, f64) -> (Vec<CropParams>, Vec<usize>),
        mut on_iter: impl FnMut(usize, Option<&LossPoint>),
    ) -> Result<BatchOutcome> {
        let cfg = self.cfg.clone();
        let (n, c, res) = (self.n, self.c, self.h);
        let stages = self.stages();
        if let Some(s) = stages.iter().find(|s| s.size != res && !self.stage_states.iter().any(|st| st.h == s.size)) {
            return Err(Error::State(format!("resolution stage {} has no recover state: call prepare_stages", s.size)));
        }
        let (alpha, restart) = self.residual.as_ref().map_or((1.0, false), |r| (r.alpha, r.restart_adam));
        let (log_every, schedule, use_graphs) = (self.log_every, self.schedule, self.use_graphs);
        for st in &mut self.stage_states {
            st.log_every = log_every;
            st.schedule = schedule;
            st.use_graphs &= use_graphs;
            st.residual = None;
        }
        let mut trace = Vec::new();
        let mut first_layers = Vec::new();
        let mut last_layers = Vec::new();
        // The images at the end of the previous stage, and their size.
        let (mut x, mut size) = (init.to_vec(), res);
        for (k, stage) in stages.iter().enumerate() {
            let mut xs = resize_batch(&x, n, c, size, stage.size);
            if k > 0 {
                mix_residual(&mut xs, &resize_batch(init, n, c, res, stage.size), alpha);
            }
            let rec: &mut Recoverer<'a, B> =
                if stage.size == res { &mut *self } else { self.stage_states.iter_mut().find(|st| st.h == stage.size).expect("checked above") };
            if k == 0 {
                rec.reset(&xs, targets)?;
            } else if stage.size != size {
                // Another state takes over, so its Adam starts afresh: only FADRM's own way.
                if !restart {
                    return Err(Error::State("resolution stages need a fresh Adam per stage (restart_adam)".into()));
                }
                rec.reset(&xs, targets)?;
                rec.adam_start = stage.start;
            } else {
                rec.set_images(&xs)?;
                if restart {
                    rec.restart_adam(stage.start)?;
                }
            }
            for t in stage.start..stage.end {
                let min_crop = curriculum::min_crop_scale_to(cfg.crop_min_scale, cfg.easy2hard_mode, cfg.milestone, t, cfg.iterations, cfg.reverse_curriculum);
                let (aug, chosen) = draw(rec, t, stage.size, min_crop);
                let want = t == 0 || t + 1 == cfg.iterations || (t + 1) % log_every.max(1) == 0;
                match rec.step_with(t, &aug, &chosen, want)? {
                    Some(mut point) => {
                        point.min_crop = min_crop as f32;
                        if t == 0 {
                            first_layers = rec.bn_layer_losses().to_vec();
                        }
                        if t + 1 == cfg.iterations {
                            last_layers = rec.bn_layer_losses().to_vec();
                        }
                        on_iter(t, Some(&point));
                        trace.push(point);
                    }
                    None => on_iter(t, None),
                }
            }
            x = rec.images()?;
            size = stage.size;
        }
        if size != res {
            return Err(Error::State(format!("the last stage is at {size}, not the resolution {res}")));
        }
        let teacher_top1 = self.top1_quantized(&x, targets)?;
        Ok(BatchOutcome { images: x, trace, teacher_top1, bn_layers_first: first_layers, bn_layers_last: last_layers })
    }

    /// Teacher top-1 (%) on `images` after the saved-file quantisation (uint8, truncation).
    pub fn top1_quantized(&mut self, images: &[f32], targets: &[i32]) -> Result<f32> {
        let hw = self.h * self.w;
        let q: Vec<f32> = images
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let ch = (i / hw) % self.c;
                let u = output::quantize(self.cfg.clip.to_unit(ch, v));
                self.cfg.clip.from_unit(ch, u as f32 / 255.0)
            })
            .collect();
        self.backend.upload(&q, &mut self.bufs.x_aug)?;
        let net = &mut self.teachers[0].net;
        net.forward(self.backend, &self.bufs.x_aug)?;
        let classes = net.classes;
        let mut logits = vec![0.0; self.n * classes];
        self.backend.download(&net.logits, &mut logits)?;
        let correct = logits.chunks(classes).zip(targets).filter(|(row, &t)| argmax(row) == t as usize).count();
        Ok(100.0 * correct as f32 / self.n as f32)
    }
}

/// FADRM's residual mix in place: x <- alpha x + (1 - alpha) x0.
fn mix_residual(x: &mut [f32], x0: &[f32], alpha: f64) {
    let (a, b) = (alpha as f32, 1.0 - alpha as f32);
    x.iter_mut().zip(x0).for_each(|(v, &v0)| *v = a * *v + b * v0);
}

pub fn argmax(row: &[f32]) -> usize {
    row.iter().enumerate().fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) }).0
}

/// A seed for one batch derived from the run seed and the batch's first (ipc, class), so a resumed
/// or partial run produces the same images as a full one.
pub fn batch_rng(seed: u64, ipc: usize, first_class: usize) -> StdRng {
    // splitmix64 of the three numbers
    let mut z = seed ^ (ipc as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (first_class as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    StdRng::seed_from_u64(z ^ (z >> 31))
}
