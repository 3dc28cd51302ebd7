//! Flags of `cda-engine squeeze`, `relabel` and `validate`, turned into configurations.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::trainable::{ArchSpec, TrainModel};
use crate::data::augment::{Crop, MixKind};
use crate::data::{self, Dataset, Split};
use crate::error::{Error, Result};
use crate::model::Stem;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CropArg {
    /// RandomCrop with zero padding (--padding).
    Pad,
    /// RandomResizedCrop with scale (--min-scale, 1).
    Resized,
    /// No crop (centre / whole image).
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MixArg {
    /// No mixing.
    None,
    /// CutMix (Yun et al. 2019): a box of a partner image pasted in, lambda ~ Beta(1, 1).
    Cutmix,
    /// MixUp (Zhang et al. 2018): a convex blend with a partner, lambda ~ Beta(alpha, alpha).
    Mixup,
}

pub fn crop_of(kind: CropArg, padding: usize, min_scale: f64) -> Result<Crop> {
    if !(min_scale > 0.0 && min_scale <= 1.0) {
        return Err(Error::Option(format!("--min-scale {min_scale}: expected 0 < scale <= 1")));
    }
    Ok(match kind {
        CropArg::Pad => Crop::Pad { padding },
        CropArg::Resized => Crop::Resized { min_scale, max_scale: 1.0 },
        CropArg::None => Crop::Center,
    })
}

pub fn mix_of(kind: MixArg, alpha: f64) -> Result<MixKind> {
    Ok(match kind {
        MixArg::None => MixKind::None,
        MixArg::Cutmix => MixKind::Cutmix,
        MixArg::Mixup => {
            if !(alpha > 0.0 && alpha.is_finite()) {
                return Err(Error::Option(format!("--mixup-alpha {alpha}: expected a positive number")));
            }
            MixKind::Mixup { alpha }
        }
    })
}

/// The one check of `--threads` (every command): 0 (all cores) or at most 4 threads per core and
/// never more than 4096, since each is an OS thread started up front: a mistyped 100000000 would
/// otherwise spend minutes starting threads, then fail.
pub fn check_threads(threads: usize) -> Result<()> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let most = (4 * cores).clamp(64, 4096);
    if threads > most {
        return Err(Error::Option(format!("--threads {threads}: at most {most} on this machine ({cores} cores; 0 uses them all)")));
    }
    Ok(())
}

/// A rayon pool of `threads` workers (0 = all cores).
pub fn thread_pool(threads: usize) -> Result<rayon::ThreadPool> {
    check_threads(threads)?;
    let threads = if threads == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) } else { threads };
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("cda-train-{i}"))
        .build()
        .map_err(|e| Error::Option(format!("cannot start {threads} CPU threads: {e}")))
}

/// Per-channel mean and std of up to 2000 images of `ds` (evenly spaced), in [0, 1] pixel units.
pub fn estimate_norm(ds: &dyn Dataset) -> Result<(Vec<f32>, Vec<f32>)> {
    let c = ds.channels();
    let take = ds.len().min(2000);
    let mut s1 = vec![0f64; c];
    let mut s2 = vec![0f64; c];
    let mut count = 0f64;
    for k in 0..take {
        let img = ds.image(k * ds.len() / take)?;
        let hw = img.h * img.w;
        for ch in 0..c {
            for &v in &img.data[ch * hw..(ch + 1) * hw] {
                s1[ch] += v as f64;
                s2[ch] += (v as f64) * (v as f64);
            }
        }
        count += hw as f64;
    }
    let mean: Vec<f32> = s1.iter().map(|s| (s / count) as f32).collect();
    let std: Vec<f32> = s1.iter().zip(&s2).map(|(a, b)| ((b / count - (a / count).powi(2)).max(1e-12).sqrt()) as f32).collect();
    Ok((mean, std))
}

/// A finite option value that satisfies `ok`, or an error naming the flag and what it expects.
fn check_number(flag: &str, v: f64, ok: bool, expected: &str) -> Result<()> {
    if v.is_finite() && ok {
        Ok(())
    } else {
        Err(Error::Option(format!("--{flag} {v}: expected {expected}")))
    }
}

/// Flags of `cda-engine squeeze`.
#[derive(clap::Args, Clone, Debug)]
pub struct SqueezeArgs {
    /// Training data: `fashion-mnist` (the Debian package's IDX files) or an ImageFolder path.
    #[arg(long)]
    pub data: String,
    /// Test data for the per-epoch top-1 (default: the test split of a named dataset, a CIFAR or a Tiny-ImageNet folder).
    #[arg(long)]
    pub test_data: Option<String>,
    /// safetensors file to write (a JSON record is written beside it).
    #[arg(long)]
    pub out: PathBuf,
    /// resnet18/34/50/101/152, optionally `-w<width>` (base width; torchvision's is 64).
    #[arg(long, default_value = "resnet18-w16")]
    pub arch: String,
    /// imagenet (7x7/2 conv + max pool) or cifar (3x3/1 conv); default cifar up to 64 px.
    #[arg(long)]
    pub stem: Option<String>,
    /// Input channels for ImageFolder data (1 = grey, 3 = RGB).
    #[arg(long, default_value_t = 3)]
    pub channels: usize,
    /// Training epochs (the shipped Fashion-MNIST teacher: 4).
    #[arg(long, default_value_t = 4)]
    pub epochs: usize,
    /// Images per SGD step.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// SGD peak learning rate, reached after the warm-up and cosine-decayed per step to 0
    /// (torchvision's ResNet recipe: 0.1 at batch 256).
    #[arg(long, default_value_t = 0.1)]
    pub lr: f64,
    /// SGD momentum (Nesterov unless --no-nesterov).
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    /// Plain (heavy-ball) momentum instead of Nesterov's.
    #[arg(long)]
    pub no_nesterov: bool,
    /// L2 weight decay of SGD on every weight with more than one dimension (BN and biases excluded).
    #[arg(long, default_value_t = 5e-4)]
    pub weight_decay: f64,
    /// Epochs of linear learning-rate warm-up from 0 before the cosine decay.
    #[arg(long, default_value_t = 1)]
    pub warmup_epochs: usize,
    /// Seed of the initialisation, the data order and the augmentations.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Training/evaluation image size (default: the dataset's).
    #[arg(long)]
    pub image_size: Option<usize>,
    #[arg(long, value_enum, default_value_t = CropArg::Pad)]
    pub crop: CropArg,
    /// Zero padding in pixels of `--crop pad` (RandomCrop(size, padding)).
    #[arg(long, default_value_t = 2)]
    pub padding: usize,
    /// Smallest area fraction of `--crop resized` (RandomResizedCrop's scale lower bound).
    #[arg(long, default_value_t = 0.08)]
    pub min_scale: f64,
    /// No random horizontal flip (the default flips with probability 0.5).
    #[arg(long)]
    pub no_flip: bool,
    /// Batch mixing of the training images.
    #[arg(long, value_enum, default_value_t = MixArg::None)]
    pub mix: MixArg,
    /// alpha of MixUp's Beta(alpha, alpha) (official SRe2L/CDA scripts: 0.8).
    #[arg(long, default_value_t = 0.8)]
    pub mixup_alpha: f64,
    /// Per-channel mean of the input normalisation, comma-separated (default: the dataset's, or
    /// estimated from the images); recorded in the teacher's metadata.
    #[arg(long, value_delimiter = ',')]
    pub mean: Option<Vec<f32>>,
    /// Per-channel std of the input normalisation, comma-separated (default as --mean).
    #[arg(long, value_delimiter = ',')]
    pub std: Option<Vec<f32>>,
    /// CPU threads for the math (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Data loader threads.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// No progress bar (a line per epoch instead).
    #[arg(long)]
    pub quiet: bool,
    /// Where the networks run: cpu, cuda (the CUDA training executor on GPU 0), or auto (a usable
    /// GPU, else the CPU). Data loading and test-set evaluation run on the CPU either way.
    #[arg(long, value_enum, default_value_t = crate::device::Device::Cpu)]
    pub device: crate::device::Device,
}

/// GPU 0 when `device` asks for it (an error saying why if `cuda` cannot start), else None (the CPU).
fn gpu_for(device: crate::device::Device) -> Result<Option<crate::backend::cuda::GpuBackend>> {
    Ok(if crate::device::use_gpu(device)? { Some(crate::backend::cuda::GpuBackend::new(0)?) } else { None })
}

/// "cpu (N threads)" or the GPU's description.
fn device_name(gpu: Option<&crate::backend::cuda::GpuBackend>, threads: usize) -> String {
    gpu.map_or_else(|| format!("cpu ({threads} threads)"), crate::backend::Backend::describe)
}

fn train_device(gpu: Option<&crate::backend::cuda::GpuBackend>) -> super::learner::TrainDevice<'_> {
    gpu.map_or(super::learner::TrainDevice::Cpu, super::learner::TrainDevice::Gpu)
}

/// A training set and, when there is one, its test set.
pub type TrainTest = (Arc<dyn Dataset>, Option<Arc<dyn Dataset>>);

/// Opens a dataset given by name or path with the right channel count; the default test split.
pub fn open_train_test(data: &str, test: Option<&str>, channels: usize) -> Result<TrainTest> {
    let train = data::open(data, Split::Train, channels)?;
    let test = match test {
        Some(t) => Some(data::open(t, Split::Test, channels)?),
        // A named dataset, a CIFAR and a Tiny-ImageNet folder have their own test split.
        None if data::dataset_norm(data).is_some()
            || data::cifar::detect(Path::new(data)).is_some()
            || data::tiny_imagenet::detect(Path::new(data)).is_some() =>
        {
            Some(data::open(data, Split::Test, channels)?)
        }
        None => None,
    };
    Ok((train, test))
}

pub fn channels_of(data: &str, flag: usize) -> usize {
    if data == "fashion-mnist" {
        1
    } else {
        flag
    }
}

pub fn squeeze(a: &SqueezeArgs) -> Result<()> {
    // Bad numbers fail here, not after the training (the outputs are checked by `squeeze::squeeze`).
    check_number("lr", a.lr, a.lr > 0.0, "a positive number")?;
    check_number("momentum", a.momentum, (0.0..1.0).contains(&a.momentum), "0 <= momentum < 1")?;
    check_number("weight-decay", a.weight_decay, a.weight_decay >= 0.0, "a number >= 0")?;
    let channels = channels_of(&a.data, a.channels);
    let (train, test) = open_train_test(&a.data, a.test_data.as_deref(), channels)?;
    let size = match (a.image_size, train.image_size()) {
        (Some(s), _) => s,
        (None, Some((h, w))) if h == w => h,
        (None, other) => return Err(Error::Option(format!("--image-size is needed (the images are {other:?})"))),
    };
    if size == 0 {
        return Err(Error::Option("--image-size must be at least 1".into()));
    }
    // A pad wider than the image shows nothing but zeros (and its sums overflow near usize::MAX).
    if a.crop == CropArg::Pad && a.padding > size {
        return Err(Error::Option(format!("--padding {}: at most the image size {size}", a.padding)));
    }
    let stem = match a.stem.as_deref() {
        Some(s) => Stem::parse(s).ok_or_else(|| Error::Option(format!("--stem {s}: expected imagenet or cifar")))?,
        None if size <= 64 => Stem::Cifar,
        None => Stem::ImageNet,
    };
    let spec = ArchSpec::parse(&a.arch, stem, channels, train.num_classes())?;
    check_train_fits("the network", &spec, a.batch_size, size)?;
    // The test set is scored every epoch; one it cannot score is refused now, not after an epoch.
    if let Some(t) = test.as_ref().filter(|t| t.num_classes() > spec.num_classes) {
        return Err(Error::input(t.describe(), format!("{} classes, but the training data (and so the teacher) has {}", t.num_classes(), spec.num_classes)));
    }
    let (mean, std) = match (&a.mean, &a.std, data::dataset_norm(&a.data)) {
        (Some(m), Some(s), _) => (m.clone(), s.clone()),
        (None, None, Some(n)) => n,
        (None, None, None) => estimate_norm(train.as_ref())?,
        _ => return Err(Error::Option("give both --mean and --std, or neither".into())),
    };
    data::check_norm(&mean, &std, channels, "the normalisation (--mean/--std, or the dataset's)")?;
    let cfg = super::squeeze::SqueezeConfig {
        data: a.data.clone(),
        test_data: a.test_data.clone().or_else(|| test.as_ref().map(|_| format!("{} (test split)", a.data))),
        arch: a.arch.clone(),
        epochs: a.epochs,
        batch_size: a.batch_size,
        lr: a.lr,
        momentum: a.momentum,
        nesterov: !a.no_nesterov,
        weight_decay: a.weight_decay,
        warmup_epochs: a.warmup_epochs,
        seed: a.seed,
        image_size: size,
        crop: crop_of(a.crop, a.padding, a.min_scale)?,
        flip: !a.no_flip,
        mix: mix_of(a.mix, a.mixup_alpha)?,
        mean,
        std,
        workers: a.workers.max(1),
    };
    let recipe = format!(
        "cda-engine {} squeeze --data {} --arch {} --epochs {} --batch-size {} --lr {} --momentum {}{} --weight-decay {} --warmup-epochs {} --seed {} --crop {} --padding {} --min-scale {}{} --mix {}",
        env!("CARGO_PKG_VERSION"),
        a.data,
        a.arch,
        a.epochs,
        a.batch_size,
        a.lr,
        a.momentum,
        if a.no_nesterov { " --no-nesterov" } else { "" },
        a.weight_decay,
        a.warmup_epochs,
        a.seed,
        format!("{:?}", a.crop).to_lowercase(),
        a.padding,
        a.min_scale,
        if a.no_flip { " --no-flip" } else { "" },
        format!("{:?}", a.mix).to_lowercase()
    );
    let pool = thread_pool(a.threads)?;
    let gpu = gpu_for(a.device)?;
    let show = !a.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
    eprintln!(
        "squeeze: {} on {} ({} classes, {}px), {} epochs of {} steps, on {}",
        spec.describe(),
        train.describe(),
        train.num_classes(),
        size,
        a.epochs,
        train.len() / a.batch_size.max(1),
        device_name(gpu.as_ref(), pool.current_num_threads())
    );
    let summary = pool.install(|| super::squeeze::squeeze(&cfg, &spec, train, test, &a.out, &recipe, show, train_device(gpu.as_ref())))?;
    eprintln!(
        "wrote {} ({} parameters){}",
        a.out.display(),
        summary.parameters,
        summary.test_top1.map(|t| format!(", test top-1 {t:.2}%")).unwrap_or_default()
    );
    let line = serde_json::json!({
        "out": summary.out, "arch": summary.arch, "epochs": summary.epochs, "images": summary.images,
        "test_top1": summary.test_top1, "seconds": summary.seconds,
    });
    crate::outln!("{line}");
    Ok(())
}

/// The teacher (default: the shipped one, [`crate::default_teacher::load_teacher`]) and its
/// trainable form.
pub fn load_trainable_teacher(path: Option<&std::path::Path>) -> Result<(TrainModel, crate::model::ResNet, String)> {
    let (m, name) = crate::default_teacher::load_teacher(path)?;
    Ok((TrainModel::from_resnet(&m), m, name))
}

fn teacher_size(m: &crate::model::ResNet, flag: Option<usize>, images: &dyn Dataset) -> Result<usize> {
    if let Some(s) = flag {
        return Ok(s);
    }
    if let Some(s) = m.metadata.get("image_size").and_then(|s| s.parse().ok()) {
        return Ok(s);
    }
    match images.image_size() {
        Some((h, w)) if h == w => Ok(h),
        other => Err(Error::Option(format!("--image-size is needed (the teacher's metadata has none and the images are {other:?})"))),
    }
}

/// The teacher's normalisation by the rule every command shares ([`crate::recover::cli::teacher_norm`]),
/// as per-channel (mean, std); a unit-range teacher is mean 0, std 1.
fn teacher_norm(m: &crate::model::ResNet, mean: Option<Vec<f32>>, std: Option<Vec<f32>>) -> Result<(Vec<f32>, Vec<f32>)> {
    let clip = crate::recover::cli::teacher_norm(mean, std, m, None)?;
    Ok(crate::recover::run::norm_of(&clip, m.in_channels))
}

/// Flags shared by relabel and validate: the distilled set, teacher and augmentation.
#[derive(clap::Args, Clone, Debug)]
pub struct DistillArgs {
    /// Teacher (safetensors); default: the shipped Fashion-MNIST teacher.
    #[arg(long)]
    pub teacher: Option<PathBuf>,
    /// The images to train on: an ImageFolder (e.g. the output of `run`), or a dataset name
    /// (`fashion-mnist`: its whole training split).
    #[arg(long)]
    pub images: String,
    /// Size of the training views in pixels (default: the teacher's metadata, else the images').
    #[arg(long)]
    pub image_size: Option<usize>,
    /// RandomResizedCrop scale lower bound (1 = no crop; official: 0.08).
    #[arg(long, default_value_t = 0.08)]
    pub min_scale: f64,
    /// No random horizontal flip (the official recipe flips with probability 0.5).
    #[arg(long)]
    pub no_flip: bool,
    /// Batch mixing of the views (official SRe2L/CDA validation: CutMix).
    #[arg(long, value_enum, default_value_t = MixArg::Cutmix)]
    pub mix: MixArg,
    /// alpha of MixUp's Beta(alpha, alpha) (official: 0.8).
    #[arg(long, default_value_t = 0.8)]
    pub mixup_alpha: f64,
    /// Images per batch. Default: a tenth of the images, at least 50 and at most the official 1024
    /// (so 50 for Fashion-MNIST IPC 10 or 50, 1024 for ImageNet-1K IPC 50): the official 1024 makes
    /// one step per epoch on a small set.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Epochs over the distilled set (official: 300).
    #[arg(long, default_value_t = 300)]
    pub epochs: usize,
    /// Seed of the data order, the views and mixes, and the student's initialisation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// CPU threads for the math (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Data loader threads.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// No progress bar (a line per epoch instead).
    #[arg(long)]
    pub quiet: bool,
    /// Where the networks run: cpu, cuda (the CUDA training executor on GPU 0), or auto (a usable
    /// GPU, else the CPU). Data loading and test-set evaluation run on the CPU either way.
    #[arg(long, value_enum, default_value_t = crate::device::Device::Cpu)]
    pub device: crate::device::Device,
    /// Per-channel mean of the teacher's input normalisation (comma-separated); overrides the
    /// teacher's metadata, and is needed for a teacher exported without it.
    #[arg(long, value_delimiter = ',')]
    pub mean: Option<Vec<f32>>,
    /// Per-channel std of the teacher's input normalisation; overrides the teacher's metadata.
    #[arg(long, value_delimiter = ',')]
    pub std: Option<Vec<f32>>,
}

/// Refuses training batches of `batch` images of `size` x `size` on `spec` that cannot fit in
/// memory, before the network is built; `what` names the model ("the student").
pub fn check_train_fits(what: &str, spec: &ArchSpec, batch: usize, size: usize) -> Result<()> {
    let layout = crate::model::Layout::of_arch(spec)?;
    crate::model::ensure_batch_fits(
        &format!("training {what} ({}) on batches of {batch} images of {size}x{size}", spec.describe()),
        layout.train_bytes(batch, size),
    )
}

/// What relabel and validate start from: the teacher (trainable form and as loaded), its name, the
/// distilled images and the augmentation.
type DistillInputs = (TrainModel, crate::model::ResNet, String, Arc<dyn Dataset>, super::distill::AugmentConfig);

impl DistillArgs {
    fn open(&self) -> Result<DistillInputs> {
        let (mut tm, m, name) = load_trainable_teacher(self.teacher.as_deref())?;
        // The normalisation is settled first: it is an option, and a teacher without it fails here,
        // before any images are read.
        let (mean, std) = teacher_norm(&m, self.mean.clone(), self.std.clone())?;
        // The teacher's logits (and its fingerprint in a relabel file) are those of this normalisation.
        tm.mean = Some(mean.clone());
        tm.std = Some(std.clone());
        let images = data::open(&self.images, Split::Train, m.in_channels)?;
        if let Some(map) = images.class_map() {
            map.check_teacher(std::path::Path::new(&self.images), m.num_classes, false)?;
        }
        let size = teacher_size(&m, self.image_size, images.as_ref())?;
        if size < m.min_side() {
            return Err(Error::Option(format!("--image-size {size}: this teacher's {} stem needs at least {}", m.stem.name(), m.min_side())));
        }
        if !(self.min_scale > 0.0 && self.min_scale <= 1.0) {
            return Err(Error::Option(format!("--min-scale {}: expected 0 < scale <= 1", self.min_scale)));
        }
        let batch_size = self.batch_size.unwrap_or_else(|| default_batch_size(images.len()));
        if batch_size == 0 {
            return Err(Error::Option("--batch-size must be at least 1".into()));
        }
        check_train_fits("the teacher and student", &ArchSpec::of(&m), batch_size.saturating_mul(2), size)?;
        let aug = super::distill::AugmentConfig {
            image_size: size,
            min_scale: self.min_scale,
            flip: !self.no_flip,
            mix: mix_of(self.mix, self.mixup_alpha)?,
            batch_size,
            mean,
            std,
        };
        Ok((tm, m, name, images, aug))
    }
}

/// The default student batch for a set of `images`: images / 10, clamped to 50..=1024.
pub fn default_batch_size(images: usize) -> usize {
    (images / 10).clamp(50, 1024)
}

fn mix_name(m: MixKind) -> String {
    match m {
        MixKind::None => "none".into(),
        MixKind::Cutmix => "cutmix".into(),
        MixKind::Mixup { alpha } => format!("mixup:{alpha}"),
    }
}

/// The inverse of [`mix_name`] (a relabel file's `mix_detail`).
fn mix_from_name(name: &str) -> Option<MixKind> {
    match name {
        "none" => Some(MixKind::None),
        "cutmix" => Some(MixKind::Cutmix),
        _ => name.strip_prefix("mixup:")?.parse().ok().map(|alpha| MixKind::Mixup { alpha }),
    }
}

/// In replay the views, mixes and batches are the relabel file's: the config (and so the record)
/// takes its values, whatever the augmentation flags say.
fn aug_from_labels(f: &super::labels::LabelFile, aug: &mut super::distill::AugmentConfig) -> Result<()> {
    let get = |k: &str| f.meta.extra.get(k).map(String::as_str);
    let bad = |k: &str| Error::Corrupt { path: f.path.clone(), reason: format!("metadata {k} missing or unreadable") };
    aug.image_size = get("image_size").and_then(|v| v.parse().ok()).filter(|&s| s > 0).ok_or_else(|| bad("image_size"))?;
    aug.min_scale = get("min_scale").and_then(|v| v.parse().ok()).ok_or_else(|| bad("min_scale"))?;
    aug.flip = get("flip").and_then(|v| v.parse().ok()).ok_or_else(|| bad("flip"))?;
    aug.mix = get("mix_detail").and_then(mix_from_name).ok_or_else(|| bad("mix_detail"))?;
    aug.batch_size = f.meta.batch_size;
    Ok(())
}

/// Flags of `cda-engine relabel`.
#[derive(clap::Args, Clone, Debug)]
pub struct RelabelArgs {
    #[command(flatten)]
    pub common: DistillArgs,
    /// Relabel file to write (safetensors layout, fp16 logits).
    #[arg(long)]
    pub out: PathBuf,
    /// Store only the k largest logits per view (+ the mean of the rest); 0 stores all.
    #[arg(long, default_value_t = 0)]
    pub topk: usize,
    /// Label only part of each epoch: `I/N` (0-based) takes batches I, I+N, ... into
    /// OUT.shard-I-of-N; `auto` or `auto/N` reads I and N from Slurm, Kubernetes or torchrun
    /// variables, as `run --shard` does. The last shard to finish merges the N files into OUT,
    /// byte-identical to one process's; a rerun keeps a shard file that is already complete.
    #[arg(long)]
    pub shard: Option<String>,
}

/// Where shard `index` of `count` of the relabel file `out` is written.
pub fn relabel_shard_path(out: &Path, index: usize, count: usize) -> PathBuf {
    let mut name = out.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".shard-{index}-of-{count}"));
    out.with_file_name(name)
}

/// The folder of the file `out` ("." for a bare name).
fn parent_dir(out: &Path) -> &Path {
    crate::io::parent_dir(out).unwrap_or(Path::new("."))
}

/// Merges the `count` shard files of `out` into `out` when all are written, then removes them.
/// Shards check and merge one at a time (a lock beside `out`, waited for), so the last shard to
/// finish always sees every file. Returns whether `out` now holds the merged labels.
/// Errors: those of [`super::labels::merge_shards`].
fn merge_relabel_shards(out: &Path, count: usize) -> Result<bool> {
    let name = out.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let _lock = crate::io::wait_lock_named(parent_dir(out), &format!(".{name}.merge.lock"))?;
    let parts: Vec<PathBuf> = (0..count).map(|i| relabel_shard_path(out, i, count)).collect();
    let missing: Vec<usize> = (0..count).filter(|&i| !parts[i].exists()).collect();
    if missing.len() == count && out.exists() {
        eprintln!("the shards were merged into {} already", out.display());
        return Ok(true);
    }
    if !missing.is_empty() {
        eprintln!("waiting for shard(s) {missing:?} of {count}: the last shard to finish merges them into {}", out.display());
        return Ok(false);
    }
    super::labels::merge_shards(&parts, out)?;
    for p in &parts {
        let _ = std::fs::remove_file(p);
    }
    eprintln!("merged {count} shards into {}", out.display());
    Ok(true)
}

pub fn relabel(a: &RelabelArgs) -> Result<()> {
    let c = &a.common;
    let (mut teacher, _, name, images, aug) = c.open()?;
    let mut extra = std::collections::BTreeMap::new();
    let join = |v: &[f32]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",");
    extra.insert("teacher".to_string(), name.clone());
    extra.insert("teacher_fingerprint".to_string(), teacher.fingerprint());
    extra.insert("mean".to_string(), join(&aug.mean));
    extra.insert("std".to_string(), join(&aug.std));
    // The folder or dataset name ("images" is the file's image count).
    extra.insert("images_folder".to_string(), c.images.clone());
    extra.insert("image_size".to_string(), aug.image_size.to_string());
    extra.insert("min_scale".to_string(), aug.min_scale.to_string());
    extra.insert("flip".to_string(), aug.flip.to_string());
    extra.insert(
        "mix".to_string(),
        match aug.mix {
            MixKind::Mixup { .. } => "mixup".into(),
            m => mix_name(m),
        },
    );
    extra.insert("mix_detail".to_string(), mix_name(aug.mix));
    extra.insert("seed".to_string(), c.seed.to_string());
    if let Some(id) = images_hash(images.as_ref(), &c.images)? {
        extra.insert("images_hash".to_string(), id.names);
        extra.insert("images_content_hash".to_string(), id.content);
    }
    let shard = a.shard.as_deref().map(|t| crate::recover::shard::Shard::parse(t, &|k| std::env::var(k).ok())).transpose()?;
    let out = match &shard {
        Some(sh) => relabel_shard_path(&a.out, sh.index, sh.count),
        None => a.out.clone(),
    };
    let pool = thread_pool(c.threads)?;
    let show = !c.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
    eprintln!("relabel: {} with teacher {}, {} epochs", images.describe(), name, c.epochs);
    // A shard's own lock, held while it labels and merges: the same shard twice stops at once.
    let mut _shard_lock = None;
    if let Some(sh) = &shard {
        // The merged file's place is checked before any work, as a plain relabel's is.
        crate::io::check_writable(&a.out)?;
        let meta = super::labels::LabelMeta {
            epochs: c.epochs,
            batch_size: aug.batch_size.min(images.len()),
            images: images.len(),
            classes: teacher.num_classes,
            topk: a.topk,
            extra: extra.clone(),
            shard: Some((sh.index, sh.count)),
        };
        let held = (sh.index..meta.epoch_batches()).step_by(sh.count).count();
        eprintln!(
            "shard {} of {} ({}): {held} of each epoch's {} batches (one in {}, from batch {}) -> {}",
            sh.index,
            sh.count,
            sh.source,
            meta.epoch_batches(),
            sh.count,
            sh.index,
            out.display()
        );
        let name = a.out.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        _shard_lock = Some(crate::io::lock_named(
            parent_dir(&a.out),
            &format!(".{name}.shard-{}.lock", sh.tag()),
            "another process runs this shard; wait for it or run another shard",
        )?);
        let kept = |path: &Path, merged: bool| {
            let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            let s = super::distill::RelabelSummary {
                out: path.to_path_buf(),
                epochs: meta.epochs,
                images: meta.images,
                batch_size: meta.batch_size,
                topk: meta.topk,
                bytes,
                seconds: 0.0,
                merged_into: merged.then(|| a.out.clone()),
            };
            crate::outln!("{}", serde_json::to_string(&s).expect("summary serialises"));
        };
        // After the merge a rerun (a requeued task) finds the whole file and leaves it.
        if super::labels::holds_shard(&a.out, &super::labels::LabelMeta { shard: None, ..meta.clone() }) {
            eprintln!("{} already holds the merged labels of these settings: nothing to do", a.out.display());
            kept(&a.out, true);
            return Ok(());
        }
        if super::labels::holds_shard(&out, &meta) {
            eprintln!("{} already holds this shard with these settings: kept", out.display());
            let merged = merge_relabel_shards(&a.out, sh.count)?;
            kept(&out, merged);
            return Ok(());
        }
    }
    let gpu = gpu_for(c.device)?;
    let held = shard.as_ref().map(|sh| (sh.index, sh.count));
    let mut s = pool.install(|| {
        super::distill::relabel(&mut teacher, images, &aug, c.epochs, a.topk, c.seed, c.workers.max(1), &out, extra, held, show, train_device(gpu.as_ref()))
    })?;
    eprintln!("wrote {} ({:.1} MB, {} epochs, batch {})", s.out.display(), s.bytes as f64 / 1e6, s.epochs, s.batch_size);
    if let Some(sh) = &shard {
        if merge_relabel_shards(&a.out, sh.count)? {
            s.merged_into = Some(a.out.clone());
        }
    }
    crate::outln!("{}", serde_json::to_string(&s).expect("summary serialises"));
    Ok(())
}

/// What identifies an ImageFolder set: its relative file names ([`super::labels::folder_hash`]) and
/// the files' content ([`super::labels::folder_content_hash`]).
struct ImagesId {
    names: String,
    content: String,
}

/// Identifies the ImageFolder `spec` (None for named datasets, which do not change): reads every
/// image file once.
///
/// Errors: `Error::Io` for a file that cannot be read.
fn images_hash(ds: &dyn Dataset, spec: &str) -> Result<Option<ImagesId>> {
    let root = std::path::Path::new(spec);
    // The dataset's own listing: listing the folder again would repeat its warnings.
    let Some(files) = ds.files().filter(|_| root.is_dir()) else { return Ok(None) };
    Ok(Some(ImagesId { names: super::labels::folder_hash(root, &files), content: super::labels::folder_content_hash(root, &files)? }))
}

/// Refuses soft labels made for other images than `spec`'s: other file names, or the same names with
/// other content (two `run`s with different seeds). A file from before content hashes is checked by
/// names only, with a warning.
///
/// Errors: `Error::Input` naming the labels file and the set.
fn check_labels_images(f: &super::labels::LabelFile, ds: &dyn Dataset, spec: &str) -> Result<()> {
    let Some(id) = images_hash(ds, spec)? else { return Ok(()) };
    let (names, content) = (f.meta.extra.get("images_hash"), f.meta.extra.get("images_content_hash"));
    let made_for = f.meta.extra.get("images_folder").map_or("?", String::as_str);
    let refuse = |why: String| Err(Error::input(f.path.display().to_string(), format!("{why}; run relabel on {spec} to make its labels")));
    if names.is_some_and(|n| *n != id.names) {
        return refuse(format!("labels were made for another image set ({made_for}) than {spec}: the file names differ"));
    }
    match content {
        Some(h) if *h != id.content => refuse(format!(
            "labels were made for other images than those in {spec}: the file names match but the pixels differ: at least one file holds other content than relabel read (the labels describe {made_for})"
        )),
        Some(_) => Ok(()),
        None => {
            eprintln!("warning: {} predates content hashes: only the file names of {spec} were checked, not its pixels; rerun relabel to tie the labels to the images", f.path.display());
            Ok(())
        }
    }
}

/// Flags of `cda-engine validate`.
#[derive(clap::Args, Clone, Debug)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub common: DistillArgs,
    /// Student architecture (resnet18/34/50/101/152 with optional -w<width>); default: the teacher's.
    #[arg(long)]
    pub student: Option<String>,
    /// Soft labels stored by `relabel`; without it the teacher labels each batch online.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Real test set: a dataset name (fashion-mnist) or an ImageFolder path; default: the dataset
    /// the teacher's metadata names, when it is one the engine reads by name.
    #[arg(long)]
    pub test_data: Option<String>,
    /// KD temperature T: KL(softmax(teacher / T) || softmax(student / T)) (official: 20).
    #[arg(long, default_value_t = 20.0)]
    pub temperature: f64,
    /// AdamW peak learning rate, cosine-decayed per epoch (official --adamw-lr: 0.001).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// AdamW decoupled weight decay on tensors with more than one dimension (official: 0.01).
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f64,
    /// Test top-1 every N epochs (and after the last).
    #[arg(long, default_value_t = 25)]
    pub eval_every: usize,
    /// JSON record (settings, per-epoch loss and top-1), rewritten after every epoch.
    #[arg(long)]
    pub record: Option<PathBuf>,
    /// Save the trained student here (safetensors with torchvision names and metadata, as squeeze's).
    #[arg(long)]
    pub save_student: Option<PathBuf>,
    /// The student's initial weights: torchvision (its ResNet's kaiming_normal fan_out convs, what
    /// the official code uses) or pytorch (the layers' own default, kaiming_uniform a = sqrt(5):
    /// U(+-1/sqrt(fan_in)) for convs).
    #[arg(long, value_enum, default_value_t = super::trainable::InitScheme::Torchvision)]
    pub student_init: super::trainable::InitScheme,
}

pub fn validate(a: &ValidateArgs) -> Result<()> {
    let c = &a.common;
    // Bad numbers and an unwritable --save-student fail here, not after the training (--record is
    // checked by `distill::validate`, which writes it).
    check_number("lr", a.lr, a.lr > 0.0, "a positive number")?;
    check_number("weight-decay", a.weight_decay, a.weight_decay >= 0.0, "a number >= 0")?;
    if let Some(path) = &a.save_student {
        crate::io::check_writable(path)?;
    }
    let (mut teacher, m, name, images, mut aug) = c.open()?;
    let labels = match &a.labels {
        Some(p) => {
            let f = super::labels::LabelFile::open(p)?;
            if let Some((i, n)) = f.meta.shard {
                return Err(Error::input(
                    p.display().to_string(),
                    format!("is shard {i} of {n} of a relabel file, not the whole file: run the other shards (relabel --shard J/{n} with the same flags); the last to finish merges them"),
                ));
            }
            check_labels_images(&f, images.as_ref(), &c.images)?;
            // The stored logits are those of one teacher's weights and normalisation (files that
            // predate the fingerprint are taken on trust).
            if let Some(want) = f.meta.extra.get("teacher_fingerprint") {
                if *want != teacher.fingerprint() {
                    let made_with = f.meta.extra.get("teacher").map_or("?", String::as_str);
                    return Err(Error::input(
                        p.display().to_string(),
                        format!("labels were made with another teacher ({made_with}) than {name}; pass that one with --teacher"),
                    ));
                }
            }
            aug_from_labels(&f, &mut aug)?;
            eprintln!(
                "replaying {}: its views, mixes and batches (batch {}, {}px, min-scale {}, flip {}, mix {}); --batch-size, --image-size, --min-scale, --no-flip and --mix are not used",
                p.display(),
                aug.batch_size,
                aug.image_size,
                aug.min_scale,
                aug.flip,
                mix_name(aug.mix)
            );
            Some(f)
        }
        None => None,
    };
    let test_name = match (&a.test_data, m.metadata.get("dataset")) {
        (Some(t), _) => t.clone(),
        (None, Some(d)) if data::dataset_norm(d).is_some() => d.clone(),
        (None, d) => return Err(Error::Option(format!("--test-data is needed: the teacher's metadata names no dataset the engine reads by name ({d:?})"))),
    };
    let test = data::open(&test_name, Split::Test, m.in_channels)?;
    if test.num_classes() != m.num_classes {
        return Err(Error::input(test.describe(), format!("{} classes in the test set but the teacher has {}", test.num_classes(), m.num_classes)));
    }
    let spec = match &a.student {
        Some(s) => ArchSpec::parse(s, m.stem, m.in_channels, m.num_classes)?,
        None => ArchSpec::of(&m),
    };
    check_train_fits("the student", &spec, aug.batch_size, aug.image_size)?;
    let mut student = TrainModel::init_with(&spec, c.seed, a.student_init)?;
    student.mean = Some(aug.mean.clone());
    student.std = Some(aug.std.clone());
    let cfg = super::distill::ValidateConfig {
        epochs: c.epochs,
        lr: a.lr,
        weight_decay: a.weight_decay,
        temperature: a.temperature,
        seed: c.seed,
        eval_every: a.eval_every,
        workers: c.workers.max(1),
        aug,
        labels: a.labels.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "online".into()),
        device: String::new(),
    };
    let pool = thread_pool(c.threads)?;
    let gpu = gpu_for(c.device)?;
    let mut cfg = cfg;
    cfg.device = device_name(gpu.as_ref(), pool.current_num_threads());
    let device = train_device(gpu.as_ref());
    let show = !c.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
    eprintln!(
        "validate: student {} on {}, teacher {} ({}), {} epochs, T = {}, labels {}, on {}",
        spec.describe(),
        images.describe(),
        name,
        m.arch_name(),
        c.epochs,
        a.temperature,
        cfg.labels,
        cfg.device
    );
    let s = pool.install(|| super::distill::validate(&mut teacher, &mut student, images, labels.as_ref(), test, &cfg, a.record.as_deref(), show, device))?;
    eprintln!("student top-1 {:.2}% after {} epochs ({:.0}s)", s.top1, s.epochs, s.seconds);
    if let Some(path) = &a.save_student {
        let mut extra = vec![("image_size", cfg.aug.image_size.to_string()), ("test_top1", format!("{:.2}", s.top1))];
        extra.push((
            "recipe",
            format!("cda-engine {} validate --images {} --teacher {name} --epochs {} --seed {}", env!("CARGO_PKG_VERSION"), c.images, c.epochs, c.seed),
        ));
        if let Some(d) = m.metadata.get("dataset") {
            extra.push(("dataset", d.clone()));
        }
        student.save(path, &extra)?;
        eprintln!("wrote {}", path.display());
    }
    let line = serde_json::json!({
        "top1": s.top1, "best_top1": s.best_top1, "epochs": s.epochs, "images": s.images, "steps": s.steps,
        "student": s.student, "teacher": name, "labels": cfg.labels, "temperature": a.temperature,
        "seed": c.seed, "seconds": s.seconds, "batch_size": cfg.aug.batch_size,
        "student_init": format!("{:?}", a.student_init).to_lowercase(),
    });
    crate::outln!("{line}");
    Ok(())
}

/// Flags of `cda-engine sample`.
#[derive(clap::Args, Clone, Debug)]
pub struct SampleArgs {
    /// `fashion-mnist` or an ImageFolder path.
    #[arg(long)]
    pub data: String,
    /// Images per class.
    #[arg(long)]
    pub ipc: usize,
    /// Output folder (must be new or empty), in `run`'s ImageFolder layout.
    #[arg(long)]
    pub out: PathBuf,
    /// Seeds which images are drawn.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Channels for ImageFolder data.
    #[arg(long, default_value_t = 3)]
    pub channels: usize,
    #[arg(long, value_enum, default_value_t = crate::recover::output::ImageFormat::Png)]
    pub format: crate::recover::output::ImageFormat,
}

/// Writes a seeded, class-balanced random subset of a dataset as an ImageFolder in `run`'s layout.
///
/// Every image is written atomically ([`crate::recover::output::save_image`]): a failed write (a
/// full disk) ends the command with an error naming the file, and leaves no partial image.
///
/// Errors: `Error::Option` (--ipc 0), `Error::Input` (a class with fewer images than --ipc, an
/// unreadable dataset), `Error::Output` (--out not empty, being written by another process, or not
/// writable).
pub fn sample(a: &SampleArgs) -> Result<()> {
    use rand::{Rng, SeedableRng};
    let channels = channels_of(&a.data, a.channels);
    if a.ipc == 0 {
        return Err(Error::Option("--ipc must be at least 1".into()));
    }
    let ds = data::open(&a.data, Split::Train, channels)?;
    let mut by_class = data::indices_by_class(ds.as_ref());
    // Checked before the folder is taken: a refused sample creates nothing.
    if let Some((cls, ids)) = by_class.iter().enumerate().find(|(_, ids)| ids.len() < a.ipc) {
        return Err(Error::input(ds.describe(), format!("class {cls} has {} images; --ipc {} asks for more", ids.len(), a.ipc)));
    }
    // Owned while it is written, and empty once owned: images left from an earlier sample, or
    // written by another process at the same time, would silently join the set.
    let _lock = crate::io::lock_folder(&a.out)?;
    if let Some(name) = crate::io::folder_entries(&a.out).next() {
        return Err(Error::output(&a.out, format!("the folder is not empty (it holds {name}); give a new --out")));
    }
    let classes = ds.num_classes();
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed);
    let mut written = 0;
    let mut write_all = || -> Result<()> {
        for (cls, ids) in by_class.iter_mut().enumerate() {
            for i in 0..a.ipc {
                let j = rng.random_range(i..ids.len());
                ids.swap(i, j);
                let img = ds.image(ids[i])?;
                let px: Vec<u8> = img.data.iter().map(|&u| crate::recover::output::round_to_u8(u)).collect();
                let path = crate::recover::output::image_path(&a.out, cls, i, classes, a.format);
                crate::recover::output::save_image(&path, &px, img.c, img.h, img.w, a.format)?;
                written += 1;
            }
        }
        Ok(())
    };
    // A set is whole or absent: a failure removes what this call wrote into the (empty) folder.
    if let Err(e) = write_all() {
        crate::io::clear_partial_set(&a.out);
        return Err(e);
    }
    eprintln!("wrote {written} images ({} per class) from {} to {}", a.ipc, ds.describe(), a.out.display());
    crate::outln!("{}", serde_json::json!({"out": a.out, "images": written, "ipc": a.ipc, "seed": a.seed}));
    Ok(())
}
