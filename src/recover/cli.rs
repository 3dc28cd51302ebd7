//! Turning `cda-engine run` flags into run settings: preset, then teacher metadata, then flags.

use std::path::PathBuf;

use super::output::ImageFormat;
use super::presets::{Preset, PresetName};
use super::run::RunSettings;
use super::schedule::Curriculum;
use super::{ClipMode, RecoverConfig};
use crate::error::{Error, Result};
use crate::model::{ResNet, Stem};

/// Flags of `cda-engine run`, named like the official scripts'.
#[derive(clap::Args, Clone, Debug)]
pub struct RunArgs {
    /// Teacher ResNet (safetensors). Default: the Fashion-MNIST teacher shipped in weights/.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Official settings to start from (default: from the teacher's metadata or class count).
    #[arg(long, value_enum)]
    pub preset: Option<PresetName>,
    /// Output folder (ImageFolder layout: new{cls}/class{cls}_id{ipc}.jpg). Default: syn-data/<preset>.
    #[arg(long, alias = "syn-data-path")]
    pub out: Option<PathBuf>,
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long = "r-bn")]
    pub r_bn: Option<f64>,
    /// Iterations per batch.
    #[arg(long)]
    pub iteration: Option<usize>,
    /// Roll offsets are uniform on 0..=jitter.
    #[arg(long)]
    pub jitter: Option<usize>,
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
    #[arg(long, value_delimiter = ',')]
    pub std: Option<Vec<f32>>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, value_enum, default_value_t = ImageFormat::Jpg)]
    pub format: ImageFormat,
    /// Log losses every N iterations (the JSON record keeps them).
    #[arg(long, default_value_t = 50)]
    pub log_every: usize,
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
    let mean = args.mean.clone().or_else(|| model.mean.clone());
    let std = args.std.clone().or_else(|| model.std.clone());
    let clip = match (mean, std) {
        (Some(mean), Some(std)) => ClipMode::Normalized { mean, std },
        (None, None) => match &p.mean_std {
            Some((m, s)) if m.len() == model.in_channels => ClipMode::Normalized { mean: m.clone(), std: s.clone() },
            Some(_) => return Err(Error::Option(format!("the teacher takes {} channels: pass --mean and --std", model.in_channels))),
            None => ClipMode::Unit,
        },
        _ => return Err(Error::Option("give both --mean and --std, or neither".into())),
    };
    if let ClipMode::Normalized { mean, std } = &clip {
        if mean.len() != model.in_channels || std.len() != model.in_channels {
            return Err(Error::Option(format!("--mean/--std need {} values (the teacher's input channels)", model.in_channels)));
        }
        if std.iter().any(|s| !(*s > 0.0)) {
            return Err(Error::Option(format!("--std values must be positive, got {std:?}")));
        }
    }
    let recover = RecoverConfig {
        iterations: args.iteration.unwrap_or(p.iterations),
        lr: args.lr.unwrap_or(p.lr),
        r_bn: args.r_bn.unwrap_or(p.r_bn),
        first_bn_multiplier: args.first_bn_multiplier.unwrap_or(p.first_bn_multiplier),
        jitter: args.jitter.unwrap_or(p.jitter),
        crop: p.crop && !args.no_crop,
        flip: p.flip && !args.no_flip,
        easy2hard_mode: args.easy2hard_mode.unwrap_or(p.easy2hard_mode),
        milestone: args.milestone.unwrap_or(p.milestone),
        reverse_curriculum: args.reverse_curriculum,
        per_image_augment: args.per_image_augment,
        tv_l2: args.tv_l2,
        l2_scale: args.l2_scale,
        clip,
        adam_betas: (0.5, 0.9),
        adam_eps: 1e-8,
    };
    let ipc_start = args.ipc_start.unwrap_or(0);
    let settings = RunSettings {
        teacher: teacher.to_string(),
        teacher_arch: model.arch_name(),
        preset: Some(format!("{preset_name:?}")),
        recover,
        res,
        classes: args.classes.unwrap_or(model.num_classes),
        batch_size: args.batch_size.unwrap_or(p.batch_size),
        ipc_per_batch: args.ipc_per_batch.unwrap_or(p.ipc_per_batch),
        ipc_start,
        ipc_end: args.ipc_end.unwrap_or(p.ipc),
        seed: args.seed,
        format: args.format,
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
