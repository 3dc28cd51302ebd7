//! The official recover settings (docs/algorithm.md's table), plus our Fashion-MNIST preset.

use serde::Serialize;

use super::curriculum::Curriculum;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum PresetName {
    /// 224 px, 1000 classes, lr 0.25, r_bn 0.01, 4000 iterations, jitter 32, cosine crop
    /// curriculum, batches of 100 classes x 1 IPC, IPC 50 (CDA's ImageNet-1K script)
    #[value(name = "imagenet-1k")]
    Imagenet1k,
    /// 64 px, 200 classes, lr 0.4, r_bn 0.05, 4000 iterations, jitter 4, otherwise as imagenet-1k
    #[value(name = "tiny-imagenet")]
    TinyImagenet,
    /// 224 px, 10450 classes, [0, 1] pixels, lr 0.05, r_bn 0.25, 2000 iterations, IPC 20
    #[value(name = "imagenet-21k")]
    Imagenet21k,
    /// 32 px, 100 classes, lr 0.25, r_bn 0.01, 1000 iterations, jitter 4, no crop, no flip
    /// (SRe2L's CIFAR)
    #[value(name = "cifar-100")]
    Cifar100,
    /// Ours: 28 px grey, 10 classes, lr 0.4, r_bn 0.05, 1000 iterations, jitter 4, curriculum crops,
    /// all 10 IPC of the 10 classes in one batch of 100
    #[value(name = "fashion-mnist")]
    FashionMnist,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Preset {
    pub name: PresetName,
    pub res: usize,
    pub classes: usize,
    /// None: the teacher takes [0, 1] pixels (clamp to [0, 1], save without denormalising).
    pub mean_std: Option<(Vec<f32>, Vec<f32>)>,
    pub lr: f64,
    pub r_bn: f64,
    pub iterations: usize,
    pub jitter: usize,
    pub crop: bool,
    pub flip: bool,
    pub easy2hard_mode: Curriculum,
    pub milestone: f64,
    /// Classes per batch.
    pub batch_size: usize,
    /// IPC indices per batch (1 in the official scripts).
    pub ipc_per_batch: usize,
    pub ipc: usize,
    pub first_bn_multiplier: f64,
}

impl Preset {
    pub fn get(name: PresetName) -> Preset {
        let imagenet_norm = Some((vec![0.485, 0.456, 0.406], vec![0.229, 0.224, 0.225]));
        let base = Preset {
            name,
            res: 224,
            classes: 1000,
            mean_std: imagenet_norm,
            lr: 0.25,
            r_bn: 0.01,
            iterations: 4000,
            jitter: 32,
            crop: true,
            flip: true,
            easy2hard_mode: Curriculum::Cosine,
            milestone: 1.0,
            batch_size: 100,
            ipc_per_batch: 1,
            ipc: 50,
            first_bn_multiplier: 10.0,
        };
        match name {
            PresetName::Imagenet1k => base,
            PresetName::TinyImagenet => Preset {
                res: 64,
                classes: 200,
                mean_std: Some((vec![0.4802, 0.4481, 0.3975], vec![0.2302, 0.2265, 0.2262])),
                lr: 0.4,
                r_bn: 0.05,
                jitter: 4,
                ..base
            },
            PresetName::Imagenet21k => Preset { classes: 10450, mean_std: None, lr: 0.05, r_bn: 0.25, iterations: 2000, ipc: 20, ..base },
            PresetName::Cifar100 => Preset {
                res: 32,
                classes: 100,
                mean_std: Some((vec![0.4914, 0.4822, 0.4465], vec![0.2023, 0.1994, 0.2010])),
                r_bn: 0.01,
                iterations: 1000,
                jitter: 4,
                crop: false,
                flip: false,
                milestone: 0.0,
                ..base
            },
            // Ours: CDA's small-image recipe (tiny-imagenet's lr, r_bn, jitter) on 28x28 grayscale with 10
            // classes and 1000 iterations (as SRe2L's CIFAR). All IPC of the 10 classes in one batch of 100,
            // so BN statistics are taken over as many images as in the official batches.
            PresetName::FashionMnist => Preset {
                res: 28,
                classes: 10,
                mean_std: Some((vec![0.2860], vec![0.3530])),
                lr: 0.4,
                r_bn: 0.05,
                iterations: 1000,
                jitter: 4,
                batch_size: 10,
                ipc_per_batch: 10,
                ipc: 10,
                ..base
            },
        }
    }
}

#[cfg(test)]
mod help_tests {
    use super::*;
    use clap::ValueEnum;

    /// `run --help` lists each preset's settings from these doc comments: they must say what
    /// `Preset::get` sets (resolution, classes, lr, r_bn, iterations).
    #[test]
    fn every_preset_help_names_its_settings() {
        for name in PresetName::value_variants() {
            let p = Preset::get(*name);
            let help = name.to_possible_value().unwrap().get_help().map(|h| h.to_string()).unwrap_or_default();
            for want in [
                format!("{} px", p.res),
                format!("{} classes", p.classes),
                format!("lr {}", p.lr),
                format!("r_bn {}", p.r_bn),
                format!("{} iterations", p.iterations),
            ] {
                assert!(help.contains(&want), "{name:?}: help {help:?} lacks {want:?}");
            }
        }
    }
}
