//! Class-wise BatchNorm statistics: what the BN-matching loss aims at when a batch should look like
//! the real images of its own classes rather than like the whole training set.
//!
//! The official loss (SRe2L, CDA) pulls a batch's BN-input statistics toward the teacher's running
//! statistics, which describe all classes at once; a batch of one class is then pushed toward the
//! statistics of a mixture of every class. LPLD ("Are Large-scale Soft Labels Necessary for
//! Large-scale Dataset Distillation?", NeurIPS 2024; official code
//! he-y/soft-label-pruning-for-dataset-distillation) measures each class's statistics in one pass of
//! the teacher over real images and recovers one class per batch against them; EDC (NeurIPS 2024)
//! matches category-aware statistics too.
//!
//! Here, for each class and BN layer l with K_l channels: the per-channel mean and biased variance of
//! the layer's input over (N, H, W) of `images` real training images of the class (seeded draw,
//! centre view at the recover size, the teacher's normalisation, eval mode). A batch holding images
//! of several classes (one per (class, IPC) entry) aims at the statistics of the pooled images of
//! its classes in those proportions: mean = avg_i mu_{c_i}, var = avg_i (sigma^2_{c_i} + mu_{c_i}^2)
//! - mean^2. A batch with one image of every class therefore aims near the running statistics, so
//!   the setting matters for batches of one or a few classes (`run --bn-stats class` makes one
//!   class per batch its default).

use serde::{Deserialize, Serialize};

use super::init::RealData;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::model::ResNet;
use crate::net::Net;

/// What the BN-matching loss aims at; stored in the run record.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum BnTarget {
    /// The teacher's running statistics (SRe2L, CDA: the official loss).
    #[default]
    Running,
    /// Class-wise statistics measured by the teacher on real images (LPLD, EDC).
    Class {
        /// The real training images: a dataset name or an ImageFolder.
        data: String,
        /// Images drawn per class for the measurement (all of a class that has fewer).
        images: usize,
    },
}

impl BnTarget {
    pub fn is_running(&self) -> bool {
        *self == BnTarget::Running
    }
}

/// Sums of one BN layer's input over the images measured so far: per channel sum x and sum x^2
/// over (N, H, W), in f64 so that thousands of images add without losing the variance.
#[derive(Clone, Debug)]
struct Moments {
    count: f64,
    sum: Vec<f64>,
    sum_sq: Vec<f64>,
}

/// Per class and BN layer (module order), the mean and biased variance of the layer's input.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassBnStats {
    /// [class][layer] = (mean (K_l), biased var (K_l)); empty for classes not measured.
    pub per_class: Vec<Vec<(Vec<f32>, Vec<f32>)>>,
}

/// The BN-input statistics of `views` pooled over all of them: per BN layer (module order) the
/// per-channel mean and biased variance over (N, H, W), as one forward of all the views at once
/// would compute them. `views`: C x res x res pixels in [0, 1] each; `mean`/`std` the teacher's
/// normalisation per channel. The views go through the eval-mode forward in chunks of up to 100.
///
/// Errors: no views, a view of the wrong length (`Error::Input`), a backend failure.
pub fn measure_views<B: Backend>(backend: &B, model: &ResNet, views: &[Vec<f32>], res: usize, mean: &[f32], std: &[f32]) -> Result<Vec<(Vec<f32>, Vec<f32>)>> {
    let c = model.in_channels;
    if views.is_empty() {
        return Err(Error::input("class statistics", "no images to measure".to_string()));
    }
    if let Some(v) = views.iter().find(|v| v.len() != c * res * res) {
        return Err(Error::input("class statistics", format!("an image of {} values where {c} x {res} x {res} were expected", v.len())));
    }
    let mut moments: Vec<Moments> = Vec::new();
    let mut net: Option<(usize, Net<B>, B::Buf)> = None;
    for chunk in views.chunks(100) {
        let n = chunk.len();
        if net.as_ref().map(|(nn, _, _)| *nn) != Some(n) {
            net = Some((n, Net::new(backend, model, n, res, res)?, backend.alloc(n * c * res * res)?));
        }
        let (_, net, xb) = net.as_mut().expect("built above");
        let mut x = Vec::with_capacity(n * c * res * res);
        for v in chunk {
            for ch in 0..c {
                x.extend(v[ch * res * res..(ch + 1) * res * res].iter().map(|&u| (u - mean[ch]) / std[ch]));
            }
        }
        backend.upload(&x, xb)?;
        net.forward(backend, xb)?;
        if moments.is_empty() {
            moments =
                (0..net.num_bn_layers()).map(|l| Moments { count: 0.0, sum: vec![0.0; net.bn_channels(l)], sum_sq: vec![0.0; net.bn_channels(l)] }).collect();
        }
        for (l, m) in moments.iter_mut().enumerate() {
            let k = net.bn_channels(l);
            let count = net.bn_count(l) as f64;
            let mut stats = vec![0.0f32; 2 * k];
            backend.download(net.bn_stats(l), &mut stats)?;
            // This chunk's mean and biased variance back to sums: sum = M mean, sum_sq = M (var + mean^2).
            for ch in 0..k {
                let (mu, var) = (stats[ch] as f64, stats[k + ch] as f64);
                m.sum[ch] += count * mu;
                m.sum_sq[ch] += count * (var + mu * mu);
            }
            m.count += count;
        }
    }
    Ok(moments
        .iter()
        .map(|m| {
            let mu: Vec<f64> = m.sum.iter().map(|s| s / m.count).collect();
            let var = m.sum_sq.iter().zip(&mu).map(|(s2, mu)| ((s2 / m.count) - mu * mu).max(0.0) as f32).collect();
            (mu.into_iter().map(|v| v as f32).collect(), var)
        })
        .collect())
}

impl ClassBnStats {
    /// Measures classes 0..classes that `wanted` accepts: `images` seeded real training images of
    /// each (all of a class that has fewer), each its centre view at `res`, through `model`.
    ///
    /// Errors: a dataset whose channels or classes do not fit the teacher (`Error::Input`), a class
    /// with no images, a backend failure.
    #[allow(clippy::too_many_arguments)]
    pub fn measure<B: Backend>(
        backend: &B,
        model: &ResNet,
        real: &RealData,
        classes: usize,
        wanted: impl Fn(usize) -> bool,
        images: usize,
        res: usize,
        seed: u64,
        mean: &[f32],
        std: &[f32],
    ) -> Result<ClassBnStats> {
        let ds = real.ds.as_ref();
        if ds.channels() != model.in_channels {
            return Err(Error::input(ds.describe(), format!("{}-channel images for a {}-channel teacher", ds.channels(), model.in_channels)));
        }
        if ds.num_classes() < classes {
            return Err(Error::input(ds.describe(), format!("{} classes, but classes 0..{classes} are distilled", ds.num_classes())));
        }
        let mut per_class = vec![Vec::new(); classes];
        for (cls, slot) in per_class.iter_mut().enumerate() {
            if !wanted(cls) {
                continue;
            }
            let mut rng = super::batch_rng(seed ^ 0xC1A5_5B00_0000_0000, usize::MAX, cls);
            let count = images.min(real.class_len(cls)).max(1);
            let ids = real.draw_class(cls, count, &mut rng)?;
            let c = model.in_channels;
            let views = ids
                .iter()
                .map(|&i| {
                    let img = ds.image(i)?;
                    let view = crate::data::augment::center_view(img.h, img.w, res);
                    let mut px = vec![0.0; c * res * res];
                    crate::data::augment::render(&img, &view, res, &mut px);
                    Ok(px)
                })
                .collect::<Result<Vec<_>>>()?;
            *slot = measure_views(backend, model, &views, res, mean, std)?;
        }
        Ok(ClassBnStats { per_class })
    }

    /// Per BN layer, the (mean, biased var) that a batch whose images have the classes `classes`
    /// (one entry per image, repeats allowed) aims at: the statistics of its classes' images pooled
    /// in those proportions. Errors: an empty list or a class that was not measured.
    pub fn mixture(&self, classes: &[usize]) -> Result<Vec<(Vec<f32>, Vec<f32>)>> {
        let missing = |c: &usize| self.per_class.get(*c).is_none_or(|s| s.is_empty());
        if classes.is_empty() || classes.iter().any(missing) {
            return Err(Error::State(format!("class statistics were not measured for every class of the batch {classes:?}")));
        }
        let layers = self.per_class[classes[0]].len();
        let inv = 1.0 / classes.len() as f64;
        Ok((0..layers)
            .map(|l| {
                let k = self.per_class[classes[0]][l].0.len();
                let (mut mu, mut m2) = (vec![0.0f64; k], vec![0.0f64; k]);
                for &c in classes {
                    let (m, v) = &self.per_class[c][l];
                    for ch in 0..k {
                        let (a, b) = (m[ch] as f64, v[ch] as f64);
                        mu[ch] += inv * a;
                        m2[ch] += inv * (b + a * a);
                    }
                }
                let var = m2.iter().zip(&mu).map(|(s2, a)| (s2 - a * a).max(0.0) as f32).collect();
                (mu.into_iter().map(|v| v as f32).collect(), var)
            })
            .collect())
    }
}
