//! Datasets for training: Fashion-MNIST from its gzip IDX files (held in memory: 47 MB as bytes),
//! CIFAR-10/100, Tiny-ImageNet and ImageNet-1K as distributed (cifar.rs, tiny_imagenet.rs, imagenet.rs),
//! ImageFolder trees of PNG/JPEG files (only paths in memory; each image decoded when a batch needs
//! it), the training augmentations (random crop with padding, RandomResizedCrop, flip, CutMix, MixUp)
//! and a seeded, multi-threaded batch loader.

pub mod augment;
pub mod cifar;
pub mod folder;
pub mod idx;
pub mod imagenet;
pub mod loader;
pub mod tiny_imagenet;

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};

/// One image as C x H x W floats in [0, 1].
#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub data: Vec<f32>,
}

/// A labelled image dataset with random access.
pub trait Dataset: Send + Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn num_classes(&self) -> usize;
    /// Channels of the images `image` returns.
    fn channels(&self) -> usize;
    /// The class of item i (cheap: no decoding).
    fn label(&self, i: usize) -> usize;
    fn image(&self, i: usize) -> Result<Image>;
    /// e.g. "fashion-mnist train (60000 images)".
    fn describe(&self) -> String;
    /// Common image size when all images share one and it is known without decoding.
    fn image_size(&self) -> Option<(usize, usize)>;
    /// How class folders map to classes, for datasets read from folders.
    fn class_map(&self) -> Option<&folder::ClassMap> {
        None
    }
    /// The image files in item order, for datasets read from folders.
    fn files(&self) -> Option<Vec<std::path::PathBuf>> {
        None
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

/// Every item's index, grouped by class (index order within a class): one pass over the labels.
pub fn indices_by_class(ds: &dyn Dataset) -> Vec<Vec<usize>> {
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); ds.num_classes()];
    for i in 0..ds.len() {
        by_class[ds.label(i)].push(i);
    }
    by_class
}

/// Known dataset names and their normalisation (mean, std per channel).
pub fn dataset_norm(name: &str) -> Option<(Vec<f32>, Vec<f32>)> {
    match name {
        "fashion-mnist" => Some((vec![0.2860], vec![0.3530])),
        _ => None,
    }
}

/// Checks a normalisation (`from` names where it came from, e.g. "--mean/--std" or "the teacher's
/// metadata mean/std"): one mean and one std per channel, stds positive and finite, means finite.
pub fn check_norm(mean: &[f32], std: &[f32], channels: usize, from: &str) -> Result<()> {
    if mean.len() != channels || std.len() != channels {
        return Err(Error::Option(format!("{from}: need {channels} values each (one per input channel); got {} and {}", mean.len(), std.len())));
    }
    if std.iter().any(|s| !(*s > 0.0 && s.is_finite())) {
        return Err(Error::Option(format!("{from}: std values must be positive and finite, got {std:?}")));
    }
    if mean.iter().any(|m| !m.is_finite()) {
        return Err(Error::Option(format!("{from}: mean values must be finite, got {mean:?}")));
    }
    Ok(())
}

/// Where Fashion-MNIST's files are: `$FASHION_MNIST_DIR`, else the Debian package's folder. An
/// empty variable is unset (as shells treat empty variables), not the current folder.
fn fashion_mnist_dir() -> std::path::PathBuf {
    std::env::var_os("FASHION_MNIST_DIR").filter(|d| !d.is_empty()).map(std::path::PathBuf::from).unwrap_or_else(|| idx::FASHION_MNIST_DIR.into())
}

/// Cheaply checks that [`open`] can find `spec` (the dataset's files, or the folder), without
/// reading it: commands call this before they print a plan or create an output folder.
pub fn check_source(spec: &str, split: Split) -> Result<()> {
    if spec == "fashion-mnist" {
        return idx::fashion_mnist_files(&fashion_mnist_dir(), split).map(|_| ());
    }
    if !Path::new(spec).is_dir() {
        return Err(Error::input(spec, "not a dataset name (fashion-mnist) nor a folder of class subfolders"));
    }
    Ok(())
}

/// True when `path` holds a dataset in one of the distributed layouts [`open`] recognises by its
/// files (CIFAR, Tiny-ImageNet, ImageNet's layouts including its wnid folders), rather than a plain
/// ImageFolder such as a distilled set.
pub fn is_distributed_layout(path: &Path) -> bool {
    tiny_imagenet::detect(path).is_some() || cifar::detect(path).is_some() || imagenet::detect(path).is_some()
}

/// `fashion-mnist` (the Debian package's IDX files, or `$FASHION_MNIST_DIR`), a CIFAR-10/100 folder
/// as distributed (python or binary version, see [`cifar`]), Tiny-ImageNet as distributed (see
/// [`tiny_imagenet`]), ImageNet-1K's layouts (wnid folders, the flat val folder with its solution
/// CSV, a root with train/ and val/: see [`imagenet`]) — each recognised by its files, and said so
/// on stderr — or an ImageFolder path (class subfolders of PNG/JPEG files; `channels` 1 converts
/// colour to luma, 3 replicates grey).
pub fn open(spec: &str, split: Split, channels: usize) -> Result<Arc<dyn Dataset>> {
    if spec == "fashion-mnist" {
        let ds = idx::IdxDataset::fashion_mnist(&fashion_mnist_dir(), split)?;
        if channels != 1 {
            return Err(Error::input("fashion-mnist", format!("the images have 1 channel; the model takes {channels}")));
        }
        return Ok(Arc::new(ds));
    }
    let path = Path::new(spec);
    if !path.is_dir() {
        return Err(Error::input(spec, "not a dataset name (fashion-mnist) nor a folder of class subfolders"));
    }
    if let Some(dir) = tiny_imagenet::detect(path) {
        let ds = tiny_imagenet::open(&dir, split, channels)?;
        eprintln!(
            "{spec}: reading Tiny-ImageNet from {} ({}); classes in wnids.txt order, not the sorted order an ImageFolder of train/ would give",
            dir.display(),
            if split == Split::Train { "train/" } else { "val/ with val_annotations.txt" }
        );
        return Ok(Arc::new(ds));
    }
    if let Some((format, dir)) = cifar::detect(path) {
        eprintln!("{spec}: reading {} from {}", format.describe(), dir.display());
        if channels != 3 {
            return Err(Error::input(spec, format!("{} images have 3 channels; the model takes {channels}", format.describe())));
        }
        return Ok(Arc::new(cifar::Cifar::open(&dir, format, split)?));
    }
    if let Some(layout) = imagenet::detect(path) {
        eprintln!("{spec}: reading {}", layout.describe(split));
        return Ok(Arc::new(imagenet::open(&layout, split, channels)?));
    }
    Ok(Arc::new(folder::ImageFolder::open(path, channels)?))
}
