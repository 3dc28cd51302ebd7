//! Turning `cda-engine run` flags into run settings: preset, then teacher metadata, then flags.

use std::path::PathBuf;

use super::class_stats::BnTarget;
use super::curriculum::Curriculum;
use super::init::{InitKind, InitSpec, Rank};
use super::output::ImageFormat;
use super::presets::{Preset, PresetName};
use super::run::{RealPart, RunSettings};
use super::{ClipMode, RecoverConfig, Residual, TeacherSchedule};
use crate::error::{Error, Result};
use crate::model::{ResNet, Stem};

/// Flags of `cda-engine run`, named like the official scripts'.
#[derive(clap::Args, Clone, Debug)]
pub struct RunArgs {
    /// Teacher ResNet (safetensors). Default: the Fashion-MNIST teacher shipped in weights/. Several,
    /// comma-separated, share the iterations (EDC, CV-DD; see --teachers-per-step): the first is the
    /// main one (its metadata gives the defaults, it reports the teacher top-1).
    #[arg(long, value_delimiter = ',')]
    pub weights: Vec<PathBuf>,
    /// With several teachers: 1 = EDC's rotation (iteration t uses teacher t mod T); k > 1 = CV-DD's
    /// committee (k distinct teachers drawn at random each iteration, the mean of their losses).
    /// Default 1; 2 for --method cvdd.
    #[arg(long)]
    pub teachers_per_step: Option<usize>,
    /// Official settings to start from (default: from the teacher's metadata or class count).
    #[arg(long, value_enum)]
    pub preset: Option<PresetName>,
    /// Output folder (ImageFolder layout: new{cls}/class{cls}_id{ipc}.jpg). Default: syn-data/<preset>.
    #[arg(long, alias = "syn-data-path")]
    pub out: Option<PathBuf>,
    /// Adam learning rate of the images, cosine-decayed over the iterations (official: 0.25 for
    /// ImageNet-1K, 0.4 for Tiny-ImageNet; the preset's).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Weight of the BN-statistics loss against the cross-entropy (official: 0.01 ImageNet-1K, 0.05
    /// Tiny-ImageNet; the preset's).
    #[arg(long = "r-bn")]
    pub r_bn: Option<f64>,
    /// Iterations per batch.
    #[arg(long)]
    pub iteration: Option<usize>,
    /// Roll offsets are uniform on 0..=jitter.
    #[arg(long)]
    pub jitter: Option<usize>,
    /// Extra weight of the first BN layer's statistics loss (official: 10).
    #[arg(long)]
    pub first_bn_multiplier: Option<f64>,
    #[arg(long, value_enum)]
    pub easy2hard_mode: Option<Curriculum>,
    /// Fraction of the iterations over which the crop bound falls from 1.0 to 0.08 (0 = SRe2L).
    #[arg(long)]
    pub milestone: Option<f64>,
    /// Hard-to-easy ablation: the crop bound rises from 0.08 to 1.0 instead.
    #[arg(long)]
    pub reverse_curriculum: bool,
    /// Where the crop-scale bound ends (RandomResizedCrop's scale lower bound after the curriculum:
    /// 0.08 officially; EDC 0.5).
    #[arg(long)]
    pub crop_min_scale: Option<f64>,
    /// First IPC index to distil.
    #[arg(long)]
    pub ipc_start: Option<usize>,
    /// One past the last IPC index (default: the preset's IPC, e.g. 50 for imagenet-1k, 10 for fashion-mnist).
    #[arg(long)]
    pub ipc_end: Option<usize>,
    /// Classes per batch.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// IPC indices optimised together in one batch (for datasets with few classes).
    #[arg(long)]
    pub ipc_per_batch: Option<usize>,
    /// Distil classes 0..N only (default: all of the teacher's).
    #[arg(long)]
    pub classes: Option<usize>,
    /// Image size (default: the preset's, or the teacher's `image_size` metadata).
    #[arg(long)]
    pub res: Option<usize>,
    /// Turn RandomResizedCrop off (roll only, as SRe2L's CIFAR script).
    #[arg(long)]
    pub no_crop: bool,
    /// Turn the random horizontal flip off.
    #[arg(long)]
    pub no_flip: bool,
    /// Sample the augmentation per image instead of once per batch.
    #[arg(long)]
    pub per_image_augment: bool,
    /// SRe2L's optional total-variation prior weight (official default when enabled: 1e-4).
    #[arg(long = "tv-l2", default_value_t = 0.0)]
    pub tv_l2: f64,
    /// SRe2L's optional image L2 prior weight (official default when enabled: 1e-5).
    #[arg(long = "l2-scale", default_value_t = 0.0)]
    pub l2_scale: f64,
    /// Per-channel mean of the teacher's input normalisation (comma-separated); overrides metadata.
    #[arg(long, value_delimiter = ',')]
    pub mean: Option<Vec<f32>>,
    /// Per-channel std of the teacher's input normalisation (comma-separated); overrides metadata.
    #[arg(long, value_delimiter = ',')]
    pub std: Option<Vec<f32>>,
    /// Seeds the noise, the augmentation and the real-image draws (each batch's stream depends only
    /// on the seed and the batch).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Image files: jpg (the official JPEG, quality 75) or png (lossless). Default: jpg; png for
    /// --method recommended, whose real images would lose detail to JPEG at 28 pixels.
    #[arg(long, value_enum)]
    pub format: Option<ImageFormat>,
    /// Log losses every N iterations (the JSON record keeps them).
    #[arg(long, default_value_t = 50)]
    pub log_every: usize,
    /// A published method's settings on top of the preset (flags given explicitly still win):
    /// cda (default: the preset as it is), sre2l (--milestone 0), rded (teacher-selected real
    /// patches, no optimisation: as `cda-engine select`), delt (CDA from teacher-selected whole real
    /// crops, --factor 1), fadrm (CDA from RDED patches with the data residual every quarter of the
    /// iterations, alpha 0.5), edc (from RDED patches, --bn-stats class, --crop-min-scale 0.5
    /// --milestone 0, --lr 0.05, --iteration 1000), cvdd (from RDED patches, --teachers-per-step 2),
    /// recommended (the best measured on Fashion-MNIST, README section "Recover methods, and sets
    /// against a random real subset": 70% of each class's images k-means-selected whole real images,
    /// the rest CDA from noise, PNG files).
    #[arg(long, value_enum, default_value_t = Method::Cda)]
    pub method: Method,
    /// Where images start: noise (SRe2L, CDA), real (seeded random real images of the class) or
    /// patches (RDED's teacher-selected crops, --factor x --factor stitched). Default: the method's.
    #[arg(long, value_enum)]
    pub init: Option<InitKind>,
    /// Where real images come from and how they are selected.
    #[command(flatten)]
    pub selection: SelectionArgs,
    /// Hybrid sets: IPC indices 0..N of every class are selected real images written as they are
    /// (the selection flags above choose them, one whole crop each unless --factor says otherwise);
    /// recover makes the rest. Default 0; 70% of the IPC (rounded down) for --method recommended.
    #[arg(long)]
    pub real_ipc: Option<usize>,
    /// FADRM's data residual: mix each image with its start after every N iterations (0 = off).
    #[arg(long)]
    pub residual_every: Option<usize>,
    /// Weight of the current image in the residual mix; the start gets 1 - alpha (FADRM: 0.5).
    #[arg(long, default_value_t = 0.5)]
    pub residual_alpha: f64,
    /// FADRM's resolution stages: the image size (px) of each stage of --residual-every iterations,
    /// comma-separated, ending at the teacher's resolution (FADRM on ImageNet: 200,224,200,224; the
    /// image is resized bilinearly between stages). Default: the teacher's resolution throughout,
    /// except --method fadrm at 224 px, which takes FADRM's 200,224,200,224.
    #[arg(long, value_delimiter = ',')]
    pub resolution_stages: Option<Vec<usize>>,
    /// What the BN-matching loss aims at: running (the teacher's running statistics: SRe2L, CDA) or
    /// class (each class's statistics, measured by the teacher on the real images of --init-data:
    /// LPLD, EDC; then one class per batch unless --batch-size is given).
    #[arg(long, value_enum)]
    pub bn_stats: Option<BnStats>,
    /// Real images per class measured for --bn-stats class (all of a class that has fewer).
    #[arg(long, default_value_t = 1000)]
    pub class_stats_images: usize,
    /// Run only part of the set, sharing --out with the other parts: I/N (0-based I below N) runs
    /// every N-th batch from the I-th; auto reads the index and count from a Slurm job array
    /// (SLURM_ARRAY_TASK_ID with SLURM_ARRAY_TASK_COUNT or MIN/MAX) or torchrun (RANK, WORLD_SIZE);
    /// auto/N takes the index from JOB_COMPLETION_INDEX (a Kubernetes Indexed Job) and the count N.
    /// The union of the N shards is the same set, byte for byte, as one run without --shard.
    #[arg(long)]
    pub shard: Option<String>,
}

/// The `--bn-stats` choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BnStats {
    /// The teacher's running statistics (the official loss).
    Running,
    /// Class-wise statistics of real images, measured by the teacher.
    Class,
}

/// The real-image selection flags shared by `run` (--init real|patches, --real-ipc, the methods that
/// select) and `select`: one definition, the defaults applied where they are used.
#[derive(clap::Args, Clone, Debug)]
pub struct SelectionArgs {
    /// Real training images: a dataset name (fashion-mnist) or an ImageFolder. Default: the dataset
    /// in the teacher's metadata.
    #[arg(long)]
    pub init_data: Option<String>,
    /// Crops per side of an image (RDED's factor: 2 stitches four half-size crops, 1 keeps one).
    /// Default 2 for RDED's patches, 1 for delt and for real parts.
    #[arg(long)]
    pub factor: Option<usize>,
    /// Real images per class scored (RDED's mipc).
    #[arg(long, default_value_t = 300)]
    pub candidates: usize,
    /// Random crops scored per candidate image (RDED's num_crop). Default 5; 1 for the real part of
    /// --method recommended.
    #[arg(long)]
    pub crops: Option<usize>,
    /// Smallest area fraction of a candidate crop (RandomResizedCrop scale lower bound; 1 = whole
    /// images). Default 0.08; 1 for the real part of --method recommended.
    #[arg(long)]
    pub select_min_scale: Option<f64>,
    /// Order of the selected views: easy (RDED: lowest teacher loss first), hard (highest first),
    /// diverse (k-center greedy over the teacher's logits) or kmeans (k-means medoids over them).
    /// Default easy; kmeans for the real part of --method recommended.
    #[arg(long, value_enum)]
    pub select_rank: Option<Rank>,
}

impl SelectionArgs {
    /// The dataset named by --init-data, else the teacher's.
    fn data(&self, model: &ResNet) -> Result<String> {
        self.init_data
            .clone()
            .or_else(|| model.metadata.get("dataset").cloned())
            .ok_or_else(|| Error::Option("--init-data is needed: the teacher's metadata names no dataset".into()))
    }

    /// A `patches` selection with these flags over `defaults` (factor, crops, min scale, rank).
    fn spec(&self, model: &ResNet, defaults: (usize, usize, f64, Rank)) -> Result<InitSpec> {
        Ok(InitSpec {
            kind: InitKind::Patches,
            data: Some(self.data(model)?),
            factor: self.factor.unwrap_or(defaults.0),
            candidates: self.candidates,
            crops: self.crops.unwrap_or(defaults.1),
            min_scale: self.select_min_scale.unwrap_or(defaults.2),
            rank: self.select_rank.unwrap_or(defaults.3),
        })
    }

    /// Whether any flag that only matters to a selection was given.
    fn given(&self) -> bool {
        self.factor.is_some() || self.crops.is_some() || self.select_min_scale.is_some() || self.select_rank.is_some()
    }
}

/// Recover methods of the SRe2L family, by their papers' names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    /// CDA (arXiv 2311.18838): the preset, noise start, curriculum crops.
    Cda,
    /// SRe2L (arXiv 2306.13092): noise start, fixed crop scale 0.08..1.
    Sre2l,
    /// RDED (CVPR 2024): teacher-selected real patches, stitched; no optimisation.
    Rded,
    /// DELT (CVPR 2025), closest here: CDA from teacher-selected whole real crops.
    Delt,
    /// FADRM (Fast and Accurate Data Residual Matching), closest here: CDA from RDED patches in 4
    /// stages with the data residual and a new Adam each (at 224 px: 200, 224, 200, 224 px stages).
    Fadrm,
    /// EDC (NeurIPS 2024), closest here: from RDED patches, class-wise BN statistics, crop scale
    /// 0.5..1 throughout, lr 0.05; several --weights in turn.
    Edc,
    /// CV-DD (committee voting), closest here: from RDED patches, two of the --weights per iteration.
    Cvdd,
    /// The best combination measured on Fashion-MNIST: 70% k-means-selected whole real images, 30%
    /// CDA images from noise, PNG files.
    Recommended,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Cda => "cda",
            Method::Sre2l => "sre2l",
            Method::Rded => "rded",
            Method::Delt => "delt",
            Method::Fadrm => "fadrm",
            Method::Edc => "edc",
            Method::Cvdd => "cvdd",
            Method::Recommended => "recommended",
        }
    }
}

/// Which preset a teacher most likely belongs to.
pub fn infer_preset(model: &ResNet) -> Option<PresetName> {
    if let Some(d) = model.metadata.get("dataset") {
        let d = d.to_ascii_lowercase();
        return match d.as_str() {
            "fashion-mnist" | "fashion_mnist" => Some(PresetName::FashionMnist),
            "imagenet" | "imagenet-1k" | "imagenet1k" => Some(PresetName::Imagenet1k),
            "tiny-imagenet" | "tinyimagenet" => Some(PresetName::TinyImagenet),
            "imagenet-21k" | "imagenet21k" => Some(PresetName::Imagenet21k),
            "cifar-100" | "cifar100" => Some(PresetName::Cifar100),
            _ => None,
        };
    }
    match (model.num_classes, model.stem) {
        (1000, Stem::ImageNet) => Some(PresetName::Imagenet1k),
        (200, Stem::Cifar) => Some(PresetName::TinyImagenet),
        (10450, _) => Some(PresetName::Imagenet21k),
        (100, Stem::Cifar) => Some(PresetName::Cifar100),
        (10, Stem::Cifar) if model.in_channels == 1 => Some(PresetName::FashionMnist),
        _ => None,
    }
}

/// Resolves flags against the preset and the teacher's metadata.
pub fn settings(args: &RunArgs, model: &ResNet, teacher: &str) -> Result<(RunSettings, PathBuf)> {
    let preset_name = args.preset.or_else(|| infer_preset(model)).ok_or_else(|| {
        Error::Option(format!(
            "cannot tell which official settings fit this teacher ({} classes, {} stem); pass --preset \
             (imagenet-1k, tiny-imagenet, imagenet-21k, cifar-100, fashion-mnist)",
            model.num_classes,
            model.stem.name()
        ))
    })?;
    let p = Preset::get(preset_name);
    let meta_res = model.metadata.get("image_size").and_then(|s| s.parse::<usize>().ok());
    let res = args.res.or(meta_res).unwrap_or(p.res);
    let clip = teacher_norm(args.mean.clone(), args.std.clone(), model, Some(preset_name))?;
    // A method's settings sit between the preset and the explicit flags.
    let m = args.method;
    let (m_init, m_factor, m_lr, m_iterations, m_milestone) = match m {
        Method::Cda => (InitKind::Noise, 2, None, None, None),
        Method::Sre2l => (InitKind::Noise, 2, None, None, Some(0.0)),
        Method::Rded | Method::Fadrm | Method::Cvdd => (InitKind::Patches, 2, None, None, None),
        Method::Delt => (InitKind::Patches, 1, None, None, None),
        Method::Recommended => (InitKind::Noise, 1, None, None, None),
        // EDC: 1000 iterations at lr 0.05 with RandomResizedCrop(0.5, 1) throughout.
        Method::Edc => (InitKind::Patches, 2, Some(0.05), Some(1000), Some(0.0)),
    };
    let m_crop_min_scale = if m == Method::Edc { 0.5 } else { super::curriculum::MIN_SCALE };
    let m_bn_stats = if m == Method::Edc { BnStats::Class } else { BnStats::Running };
    // CV-DD: two of the teachers per iteration (all of them when fewer are given).
    let m_per_step = if m == Method::Cvdd { 2.min(args.weights.len().max(1)) } else { 1 };
    let iterations = args.iteration.or(m_iterations).unwrap_or(p.iterations);
    let init_kind = args.init.unwrap_or(m_init);
    // A noise start ignores the selection numbers, so they do not enter the record.
    let sel = &args.selection;
    let init = match init_kind {
        InitKind::Noise => InitSpec::default(),
        kind => InitSpec { kind, ..sel.spec(model, (m_factor, 5, 0.08, Rank::Easy))? },
    };
    let ipc_end = args.ipc_end.unwrap_or(p.ipc);
    // 70% real: at IPC 10 and 50 on Fashion-MNIST it beat half real by 0.1 and 0.4 points (README).
    let real_ipc = args.real_ipc.unwrap_or(if m == Method::Recommended { ipc_end * 7 / 10 } else { 0 });
    let recommended = m == Method::Recommended;
    let real = match real_ipc {
        0 => None,
        ipc => Some(RealPart { ipc, select: sel.spec(model, if recommended { (1, 1, 1.0, Rank::Kmeans) } else { (1, 5, 0.08, Rank::Easy) })? }),
    };
    // Flags that only choose real images must not be silently ignored.
    if sel.given() && init_kind != InitKind::Patches && real.is_none() {
        return Err(Error::Option(
            "--factor, --crops, --select-min-scale and --select-rank choose real crops: they need --init patches, --real-ipc, or a --method that selects (rded, delt, fadrm, recommended)".into(),
        ));
    }
    if m == Method::Cvdd && args.weights.len() < 2 && args.teachers_per_step.is_none() {
        return Err(Error::Option(
            "--method cvdd draws two teachers per iteration (CV-DD's committee): give at least two, --weights a.safetensors,b.safetensors".into(),
        ));
    }
    if m == Method::Rded && args.weights.len() > 1 {
        return Err(Error::Option("--method rded scores crops with one teacher; give one --weights".into()));
    }
    // FADRM's code builds a new Adam per stage (restart_adam); with --resolution-stages alone the
    // stages split the iterations evenly.
    let fadrm_sizes = (m == Method::Fadrm && res == 224).then(|| vec![200, 224, 200, 224]);
    let sizes = args.resolution_stages.clone().or(fadrm_sizes).unwrap_or_default();
    let stage_len = |stages: usize| iterations.div_ceil(stages.max(1)).max(1);
    let every = match (args.residual_every, m) {
        (Some(0), _) if args.resolution_stages.is_some() => {
            return Err(Error::Option("--resolution-stages runs in stages of the data residual: it needs --residual-every above 0".into()))
        }
        (Some(0), _) => None,
        (Some(every), _) => Some(every),
        (None, _) if !sizes.is_empty() => Some(stage_len(sizes.len())),
        (None, Method::Fadrm) => Some(stage_len(4)),
        (None, _) => None,
    };
    let residual = every.map(|every| Residual { every, alpha: args.residual_alpha, restart_adam: true, resolutions: sizes });
    if let Some(r) = &residual {
        r.validate(iterations, res, args.jitter.unwrap_or(p.jitter))?;
    }
    let recover = RecoverConfig {
        iterations,
        lr: args.lr.or(m_lr).unwrap_or(p.lr),
        r_bn: args.r_bn.unwrap_or(p.r_bn),
        first_bn_multiplier: args.first_bn_multiplier.unwrap_or(p.first_bn_multiplier),
        jitter: args.jitter.unwrap_or(p.jitter),
        crop: p.crop && !args.no_crop,
        flip: p.flip && !args.no_flip,
        easy2hard_mode: args.easy2hard_mode.unwrap_or(p.easy2hard_mode),
        milestone: args.milestone.or(m_milestone).unwrap_or(p.milestone),
        reverse_curriculum: args.reverse_curriculum,
        crop_min_scale: args.crop_min_scale.unwrap_or(m_crop_min_scale),
        per_image_augment: args.per_image_augment,
        tv_l2: args.tv_l2,
        l2_scale: args.l2_scale,
        clip,
        adam_betas: (0.5, 0.9),
        adam_eps: 1e-8,
    };
    let ipc_start = args.ipc_start.unwrap_or(0);
    let bn_target = match args.bn_stats.unwrap_or(m_bn_stats) {
        BnStats::Running => BnTarget::Running,
        BnStats::Class => BnTarget::Class { data: sel.data(model)?, images: args.class_stats_images },
    };
    // Class-wise targets pay off when a batch holds one class: that is their default batching.
    let default_batch = if bn_target.is_running() { p.batch_size } else { 1 };
    let settings = RunSettings {
        teacher: teacher.to_string(),
        teacher_arch: model.arch_name(),
        preset: Some(format!("{preset_name:?}")),
        recover,
        res,
        classes: args.classes.unwrap_or(model.num_classes),
        batch_size: args.batch_size.unwrap_or(default_batch),
        ipc_per_batch: args.ipc_per_batch.unwrap_or(p.ipc_per_batch),
        ipc_start,
        ipc_end,
        seed: args.seed,
        format: args.format.unwrap_or(if recommended { ImageFormat::Png } else { ImageFormat::Jpg }),
        init,
        residual,
        method: Some(m.name().to_string()),
        real,
        extra_teachers: args.weights.iter().skip(1).map(|p| p.display().to_string()).collect(),
        teacher_schedule: match args.teachers_per_step.unwrap_or(m_per_step) {
            0 => return Err(Error::Option("--teachers-per-step must be at least 1".into())),
            1 => TeacherSchedule::Rotate,
            k if k > args.weights.len().max(1) => {
                return Err(Error::Option(format!("--teachers-per-step {k} exceeds the {} teachers given", args.weights.len().max(1))))
            }
            k => TeacherSchedule::Committee { per_step: k },
        },
        bn_target,
    };
    let preset_slug = match preset_name {
        PresetName::Imagenet1k => "imagenet-1k",
        PresetName::TinyImagenet => "tiny-imagenet",
        PresetName::Imagenet21k => "imagenet-21k",
        PresetName::Cifar100 => "cifar-100",
        PresetName::FashionMnist => "fashion-mnist",
    };
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from("syn-data").join(preset_slug));
    Ok((settings, out))
}

/// The teacher's input normalisation, by one rule for every command that runs a teacher (`run`,
/// `select`, `evaluate`, `relabel`, `validate`): `--mean` and `--std` together (one alone is an
/// error), else the teacher's metadata, else the normalisation of `preset` or, when None, of the
/// preset the teacher belongs to ([`infer_preset`]; ImageNet-21K's is none: unit range). Values are
/// checked ([`crate::data::check_norm`]) and the message names where they came from.
///
/// Errors (`Error::Option`): one flag without the other, bad values, a preset whose normalisation
/// has another channel count, and a teacher with no metadata that no preset fits.
pub fn teacher_norm(mean: Option<Vec<f32>>, std: Option<Vec<f32>>, model: &ResNet, preset: Option<PresetName>) -> Result<ClipMode> {
    let c = model.in_channels;
    let checked = |mean: Vec<f32>, std: Vec<f32>, from: &str| -> Result<ClipMode> {
        crate::data::check_norm(&mean, &std, c, from)?;
        Ok(ClipMode::Normalized { mean, std })
    };
    match (mean, std) {
        (Some(m), Some(s)) => return checked(m, s, "--mean/--std"),
        (None, None) => {}
        _ => return Err(Error::Option("give both --mean and --std, or neither (then the teacher's metadata or its preset decides)".into())),
    }
    match (model.mean.clone(), model.std.clone()) {
        (Some(m), Some(s)) => return checked(m, s, "the teacher's metadata mean/std"),
        (None, None) => {}
        _ => return Err(Error::Option("the teacher's metadata has only one of mean and std: pass both --mean and --std".into())),
    }
    let Some(name) = preset.or_else(|| infer_preset(model)) else {
        return Err(Error::Option(
            "the teacher's metadata has no mean/std and no preset fits it: pass the normalisation it was trained with as --mean and --std (--mean 0 --std 1 for inputs in [0, 1])".into(),
        ));
    };
    let chosen = Preset::get(name).mean_std;
    if let Some((m, s)) = chosen.as_ref().filter(|(m, _)| m.len() == c) {
        eprintln!("note: the teacher's metadata has no mean/std: using the {name:?} preset's ({m:?} / {s:?}), as the official scripts do; pass --mean and --std if it was trained with another");
    } else if chosen.is_none() {
        eprintln!("note: the teacher's metadata has no mean/std: the {name:?} preset feeds it unnormalised [0, 1] pixels; pass --mean and --std if it was trained otherwise");
    }
    match chosen {
        Some((m, s)) if m.len() == c => checked(m, s, &format!("the {name:?} preset's mean/std")),
        Some(_) => Err(Error::Option(format!("the teacher takes {c} channels, unlike the {name:?} preset's normalisation: pass --mean and --std"))),
        None => Ok(ClipMode::Unit),
    }
}

/// Every check a recover run makes before it starts, so that a refused run prints no banner and
/// creates no output folder: the settings (`run::validate`), an image size the teacher accepts, a
/// jitter below it, and a batch that fits in memory.
pub fn check_run(s: &RunSettings, model: &ResNet) -> Result<()> {
    if s.res < model.min_side() {
        return Err(Error::Option(format!(
            "--res {}: this teacher's {} stem needs images of at least {}x{}",
            s.res,
            model.stem.name(),
            model.min_side(),
            model.min_side()
        )));
    }
    // The size first: a size no machine can hold is the problem to report, whatever else is off.
    crate::bench::check_recover_fits(model, batch_images(s).max(1), s.res, s.res)?;
    // Resolution stages keep one more recover state per other size: activations grow with the
    // pixel count, so the batch is checked as one of the summed area.
    let mut sizes: Vec<usize> = s.residual.iter().flat_map(|r| r.resolutions.iter().copied()).filter(|&z| z != s.res).collect();
    sizes.sort_unstable();
    sizes.dedup();
    if let Some(&small) = sizes.first() {
        crate::bench::check_recover_fits(model, batch_images(s).max(1), small, small)?;
        let area: usize = s.res * s.res + sizes.iter().map(|z| z * z).sum::<usize>();
        crate::bench::check_recover_fits(model, batch_images(s).max(1), s.res, area.div_ceil(s.res))?;
    }
    super::run::validate(s, model)?;
    if let Some(data) = &s.init.data {
        crate::data::check_source(data, crate::data::Split::Train)?;
    }
    if let BnTarget::Class { data, .. } = &s.bn_target {
        crate::data::check_source(data, crate::data::Split::Train)?;
    }
    if s.recover.jitter >= s.res {
        return Err(Error::Option(format!("--jitter {} must be smaller than the image size {}", s.recover.jitter, s.res)));
    }
    Ok(())
}

/// Images optimised together in one batch of a run (classes per batch x IPC per batch).
pub fn batch_images(s: &RunSettings) -> usize {
    s.batch_size.min(s.classes) * s.ipc_per_batch.min(s.ipc_end.saturating_sub(s.ipc_start))
}

/// Flags of `cda-engine select`: RDED's teacher-selected real patches, no optimisation.
#[derive(clap::Args, Clone, Debug)]
pub struct SelectArgs {
    /// Teacher ResNet (safetensors) that scores the crops. Default: the shipped Fashion-MNIST teacher.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Where real images come from and how they are selected (here: --factor 2, --crops 5,
    /// --select-min-scale 0.08 and --select-rank easy unless given).
    #[command(flatten)]
    pub selection: SelectionArgs,
    /// Output folder (must be new or empty), in `run`'s ImageFolder layout.
    #[arg(long)]
    pub out: PathBuf,
    /// First IPC index to write.
    #[arg(long, default_value_t = 0)]
    pub ipc_start: usize,
    /// One past the last IPC index (images per class when --ipc-start is 0). Default: the preset's.
    #[arg(long)]
    pub ipc_end: Option<usize>,
    /// Classes 0..N only (default: all of the teacher's).
    #[arg(long)]
    pub classes: Option<usize>,
    /// Image size (default: the teacher's `image_size` metadata, else the preset's).
    #[arg(long)]
    pub res: Option<usize>,
    /// Official settings the defaults come from (default: inferred from the teacher).
    #[arg(long, value_enum)]
    pub preset: Option<PresetName>,
    /// Per-channel mean of the teacher's input normalisation (comma-separated); overrides metadata.
    #[arg(long, value_delimiter = ',')]
    pub mean: Option<Vec<f32>>,
    /// Per-channel std of the teacher's input normalisation; overrides metadata.
    #[arg(long, value_delimiter = ',')]
    pub std: Option<Vec<f32>>,
    /// Seeds which candidates and crops are drawn.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Image format (PNG keeps the real pixels exactly).
    #[arg(long, value_enum, default_value_t = ImageFormat::Png)]
    pub format: ImageFormat,
}

/// Resolves `select` flags against the preset and the teacher's metadata.
pub fn select_settings(a: &SelectArgs, model: &ResNet, teacher: &str) -> Result<super::select::SelectSettings> {
    let preset_name = a.preset.or_else(|| infer_preset(model));
    let p = preset_name.map(Preset::get);
    let meta_res = model.metadata.get("image_size").and_then(|s| s.parse::<usize>().ok());
    let res = a.res.or(meta_res).or(p.as_ref().map(|p| p.res)).ok_or_else(|| Error::Option("pass --res: the teacher's metadata gives no image size".into()))?;
    let clip = teacher_norm(a.mean.clone(), a.std.clone(), model, preset_name)?;
    // A size no batch could hold (a teacher's image_size of 99999999) is refused before any image is read.
    crate::bench::check_recover_fits(model, 1, res, res)?;
    let (mean, std) = super::run::norm_of(&clip, model.in_channels);
    Ok(super::select::SelectSettings {
        teacher: teacher.to_string(),
        init: a.selection.spec(model, (2, 5, 0.08, Rank::Easy))?,
        classes: a.classes.unwrap_or(model.num_classes),
        ipc_start: a.ipc_start,
        ipc_end: a.ipc_end.or(p.as_ref().map(|p| p.ipc)).ok_or_else(|| Error::Option("pass --ipc-end".into()))?,
        res,
        seed: a.seed,
        format: a.format,
        mean,
        std,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> ResNet {
        ResNet::load(&std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("weights/fashion_mnist_resnet18_w16.safetensors")).unwrap()
    }

    /// One rule: flags, else metadata, else the teacher's preset, else an error naming the flags.
    #[test]
    fn teacher_norm_falls_back_in_one_order() {
        let mut m = shipped();
        let meta = ClipMode::Normalized { mean: vec![0.2860], std: vec![0.3530] };
        assert_eq!(teacher_norm(None, None, &m, None).unwrap(), meta);
        assert_eq!(teacher_norm(Some(vec![0.5]), Some(vec![0.25]), &m, None).unwrap(), ClipMode::Normalized { mean: vec![0.5], std: vec![0.25] });
        m.mean = None;
        assert!(teacher_norm(None, None, &m, None).unwrap_err().to_string().contains("only one of mean and std"));
        m.std = None;
        assert_eq!(teacher_norm(None, None, &m, None).unwrap(), meta, "the Fashion-MNIST preset's");
        assert_eq!(teacher_norm(None, None, &m, Some(PresetName::Imagenet21k)).unwrap(), ClipMode::Unit, "a unit-range preset");
        assert!(teacher_norm(None, None, &m, Some(PresetName::Imagenet1k)).unwrap_err().to_string().contains("takes 1 channels"));
        m.metadata.remove("dataset");
        m.num_classes = 7; // no preset has 7 classes
        let e = teacher_norm(None, None, &m, None).unwrap_err().to_string();
        assert!(e.contains("no preset fits it") && e.contains("--mean and --std"), "{e}");
        assert!(teacher_norm(None, Some(vec![0.3]), &m, None).unwrap_err().to_string().contains("give both"));
    }
}
