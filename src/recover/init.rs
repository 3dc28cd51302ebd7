//! Where a batch's images start: Gaussian noise (SRe2L, CDA), seeded random real images of the target
//! class (the real-image start of DELT and CV-DD), or RDED's teacher-selected patches (Sun et al.,
//! "On the Diversity and Realism of Distilled Dataset", CVPR 2024; official code
//! LINs-lab/RDED), which `cda-engine select` also writes as a set on its own.
//!
//! RDED's selection, per class, as implemented here:
//! 1. draw `candidates` distinct training images of the class (RDED's `mipc`, seeded by the run seed
//!    and the class only, so every shard and every IPC range sees the same ranking);
//! 2. from each, `crops` RandomResizedCrop views (torchvision's sampling, scale `min_scale..1`, ratio
//!    3/4..4/3) at the teacher's resolution (bilinear, as `data::augment::render`);
//! 3. score every view by the teacher's cross-entropy for the class (eval mode, normalised input);
//!    keep each image's best view, rank the images by that score (lowest first, ties by draw order;
//!    `Rank` offers other orders: hardest first, k-center or k-means medoids over the logits, or
//!    k-means medoids over the pooled features);
//! 4. image k of the class stitches the views ranked k*f^2 .. (k+1)*f^2 - 1 into an f x f grid
//!    (row-major), each view shrunk by f with a box filter (the mean of each f x f block).
//!
//! With factor 1 an output image is one selected view at full size; with `min_scale` 1 a view is the
//! whole image.

use rand::rngs::StdRng;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::data::augment::{render, sample_view, Crop};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::ResNet;
use crate::net::Net;

/// How images start; stored in the run record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum InitKind {
    /// x ~ N(0, 1) in normalised space (SRe2L, CDA).
    #[default]
    Noise,
    /// A seeded random real training image of the target class, resized to the image size.
    Real,
    /// RDED's teacher-selected crops, factor x factor of them stitched into one image.
    Patches,
}

/// The start of every image of a run and how it was chosen.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InitSpec {
    pub kind: InitKind,
    /// The real images: a dataset name (fashion-mnist) or an ImageFolder; None for noise.
    pub data: Option<String>,
    /// Patches per side of a stitched image (RDED's `factor`).
    pub factor: usize,
    /// Images of each class drawn as candidates (RDED's `mipc`).
    pub candidates: usize,
    /// Random views scored per candidate (RDED's `num_crop`).
    pub crops: usize,
    /// Smallest crop area fraction of a candidate view (1: the whole image, no crop).
    pub min_scale: f64,
    /// How candidates are ranked (RDED: easy first).
    #[serde(default)]
    pub rank: Rank,
}

/// The order in which selected views fill the images. Each candidate image is represented by its
/// view of lowest teacher cross-entropy in every case.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Rank {
    /// RDED: lowest cross-entropy first (the most realistic, most typical).
    #[default]
    Easy,
    /// Highest cross-entropy first (nearest the teacher's decision boundaries).
    Hard,
    /// k-center greedy over the teacher's centred logits: the easiest first, then each time the
    /// candidate farthest (L2) from all chosen ones; covers the class as the teacher sees it,
    /// outliers first.
    Diverse,
    /// k-means medoids over the teacher's centred logits: Lloyd's k-means into as many groups as
    /// views are needed (20 rounds, started from the k-center points), then each group's member
    /// nearest its mean, largest group first: representative and spread.
    Kmeans,
    /// k-means medoids as `kmeans`, over the teacher's penultimate features (its last block's output
    /// after global average pooling, the fc layer's input) instead of its logits: the space coreset
    /// methods (herding, k-center) cluster in.
    #[serde(rename = "kmeans-features")]
    KmeansFeatures,
}

impl Default for InitSpec {
    fn default() -> Self {
        InitSpec { kind: InitKind::Noise, data: None, factor: 2, candidates: 300, crops: 5, min_scale: 0.08, rank: Rank::Easy }
    }
}

impl InitSpec {
    /// Checks the numbers against the image size and the `count` images per class that will be
    /// made from this start; `Error::Option` names the flag.
    pub fn validate(&self, res: usize, count: usize) -> Result<()> {
        let bad = |m: String| Err(Error::Option(m));
        if self.kind != InitKind::Noise && self.data.is_none() {
            return bad("--init real and --init patches need --init-data (a dataset name or an ImageFolder)".into());
        }
        if self.factor == 0 || !res.is_multiple_of(self.factor) {
            return bad(format!("--factor {} must be at least 1 and divide the image size {res}", self.factor));
        }
        if self.candidates == 0 || self.crops == 0 {
            return bad("--candidates and --crops must be at least 1".into());
        }
        if !(self.min_scale > 0.0 && self.min_scale <= 1.0) {
            return bad(format!("--select-min-scale must be in (0, 1], got {}", self.min_scale));
        }
        let need = count.saturating_mul(self.factor * self.factor);
        if self.kind == InitKind::Patches && self.candidates < need {
            let f = self.factor;
            return bad(format!("--candidates {} is below the {need} selected views that {count} images of {f}x{f} patches need", self.candidates));
        }
        Ok(())
    }
}

/// One starting image: C x H x W pixels in [0, 1] and where each part came from.
#[derive(Clone, Debug, PartialEq)]
pub struct InitImage {
    pub pixels: Vec<f32>,
    /// One entry per patch: "index:top,left,h,w" of the source image and view (index in the dataset).
    pub sources: Vec<String>,
}

/// A seeded generator for one class's draw (independent of IPC ranges and shards).
fn class_rng(seed: u64, class: usize) -> StdRng {
    super::batch_rng(seed ^ 0x5EED_1A17_0000_0000, usize::MAX, class)
}

/// The real images that starts and selections draw from: a training set and its items by class,
/// indexed once (a per-class scan would read every label once per class).
pub struct RealData {
    pub ds: std::sync::Arc<dyn Dataset>,
    by_class: Vec<Vec<usize>>,
}

impl RealData {
    /// The training split of `data` (a dataset name or an ImageFolder) with `channels` channels.
    pub fn open(data: &str, channels: usize) -> Result<RealData> {
        let ds = crate::data::open(data, crate::data::Split::Train, channels)?;
        let by_class = crate::data::indices_by_class(ds.as_ref());
        Ok(RealData { ds, by_class })
    }

    /// Training images of class `class`.
    pub fn class_len(&self, class: usize) -> usize {
        self.by_class.get(class).map_or(0, Vec::len)
    }

    /// `count` distinct indices of class `class`, in a seeded random order (partial Fisher-Yates).
    pub(crate) fn draw_class(&self, class: usize, count: usize, rng: &mut StdRng) -> Result<Vec<usize>> {
        let mut ids = self.by_class.get(class).cloned().unwrap_or_default();
        if ids.len() < count {
            return Err(Error::input(self.ds.describe(), format!("class {class} has {} images; {count} are needed", ids.len())));
        }
        for i in 0..count {
            let j = rng.random_range(i..ids.len());
            ids.swap(i, j);
        }
        ids.truncate(count);
        Ok(ids)
    }
}

/// Checks that a real dataset can start a teacher's images.
fn check_data(ds: &dyn Dataset, model: &ResNet, classes: usize) -> Result<()> {
    if ds.channels() != model.in_channels {
        return Err(Error::input(ds.describe(), format!("{}-channel images for a {}-channel teacher", ds.channels(), model.in_channels)));
    }
    if ds.num_classes() < classes {
        return Err(Error::input(ds.describe(), format!("{} classes, but classes 0..{classes} are distilled", ds.num_classes())));
    }
    Ok(())
}

/// Shrinks a C x S x S image by `f` (S divisible by f) with a box filter.
pub fn shrink(img: &[f32], c: usize, s: usize, f: usize) -> Vec<f32> {
    let t = s / f;
    let mut out = vec![0.0f32; c * t * t];
    let norm = 1.0 / (f * f) as f32;
    for ch in 0..c {
        for y in 0..t {
            for x in 0..t {
                let mut acc = 0.0f32;
                for dy in 0..f {
                    for dx in 0..f {
                        acc += img[(ch * s + y * f + dy) * s + x * f + dx];
                    }
                }
                out[(ch * t + y) * t + x] = acc * norm;
            }
        }
    }
    out
}

/// Places f*f patches (each C x S/f x S/f, row-major order) into one C x S x S image.
pub fn stitch(patches: &[Vec<f32>], c: usize, s: usize, f: usize) -> Vec<f32> {
    assert_eq!(patches.len(), f * f, "stitch needs factor^2 patches");
    let t = s / f;
    let mut out = vec![0.0f32; c * s * s];
    for (k, p) in patches.iter().enumerate() {
        let (py, px) = (k / f, k % f);
        for ch in 0..c {
            for y in 0..t {
                let row = &p[(ch * t + y) * t..(ch * t + y + 1) * t];
                let o = (ch * s + py * t + y) * s + px * t;
                out[o..o + t].copy_from_slice(row);
            }
        }
    }
    out
}

/// Teacher cross-entropy of `class` for each of `views` (C x res x res pixels in [0, 1]), the
/// logits (views x classes, row-major) and the pooled features (views x feat_dim), in batches of
/// up to 100 through the eval-mode forward.
fn score_views<B: Backend>(
    backend: &B,
    model: &ResNet,
    views: &[Vec<f32>],
    class: usize,
    res: usize,
    mean: &[f32],
    std: &[f32],
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let c = model.in_channels;
    let mut scores = Vec::with_capacity(views.len());
    let mut all_logits = Vec::with_capacity(views.len() * model.num_classes);
    let mut all_feats = Vec::with_capacity(views.len() * model.feat_dim);
    let mut net: Option<(usize, Net<B>, B::Buf)> = None;
    for chunk in views.chunks(100) {
        let n = chunk.len();
        if net.as_ref().map(|(nn, _, _)| *nn) != Some(n) {
            net = Some((n, Net::new(backend, model, n, res, res)?, backend.alloc(n * c * res * res)?));
        }
        let (_, net, xb) = net.as_mut().unwrap();
        let mut x = Vec::with_capacity(n * c * res * res);
        for v in chunk {
            for ch in 0..c {
                x.extend(v[ch * res * res..(ch + 1) * res * res].iter().map(|&u| (u - mean[ch]) / std[ch]));
            }
        }
        backend.upload(&x, xb)?;
        net.forward(backend, xb)?;
        let mut logits = vec![0.0; n * model.num_classes];
        backend.download(&net.logits, &mut logits)?;
        for row in logits.chunks(model.num_classes) {
            let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let lse = max + row.iter().map(|&v| (v - max).exp()).sum::<f32>().ln();
            let score = lse - row[class];
            if !score.is_finite() {
                return Err(Error::Numeric(format!(
                    "the teacher's cross-entropy is {score} on a real image of class {class}: its logits are not finite, so its weights or BN statistics are not usable (a diverged training?)"
                )));
            }
            scores.push(score);
        }
        all_logits.extend_from_slice(&logits);
        let mut feats = vec![0.0; n * model.feat_dim];
        backend.download(&net.feat, &mut feats)?;
        all_feats.extend_from_slice(&feats);
    }
    Ok((scores, all_logits, all_feats))
}

/// The first `count` starting images of `class` (image k is the same whatever `count`).
///
/// `mean`/`std` are the teacher's input normalisation (per channel; identity for a unit-range
/// teacher). Errors: a class with fewer images than needed, images of another channel count, and
/// any backend error of the scoring forward.
#[allow(clippy::too_many_arguments)]
pub fn class_images<B: Backend>(
    backend: &B,
    model: &ResNet,
    real: &RealData,
    spec: &InitSpec,
    class: usize,
    count: usize,
    res: usize,
    seed: u64,
    mean: &[f32],
    std: &[f32],
) -> Result<Vec<InitImage>> {
    let ds = real.ds.as_ref();
    check_data(ds, model, class + 1)?;
    let c = model.in_channels;
    let mut rng = class_rng(seed, class);
    match spec.kind {
        InitKind::Noise => Err(Error::State("noise needs no starting images".into())),
        InitKind::Real => {
            let ids = real.draw_class(class, count, &mut rng)?;
            ids.iter()
                .map(|&i| {
                    let img = ds.image(i)?;
                    let view = crate::data::augment::center_view(img.h, img.w, res);
                    let mut px = vec![0.0; c * res * res];
                    render(&img, &view, res, &mut px);
                    Ok(InitImage { pixels: px, sources: vec![format!("{i}:{},{},{},{}", view.top, view.left, view.h, view.w)] })
                })
                .collect()
        }
        InitKind::Patches => {
            let f = spec.factor;
            let need = count * f * f;
            if spec.candidates < need {
                return Err(Error::Option(format!(
                    "--candidates {} is below the {need} selected views that {count} images of {f}x{f} patches need",
                    spec.candidates
                )));
            }
            let ids = real.draw_class(class, spec.candidates, &mut rng)?;
            // Every candidate's views, drawn in candidate order from the class generator.
            let mut views = Vec::with_capacity(ids.len() * spec.crops);
            let mut boxes = Vec::with_capacity(ids.len() * spec.crops);
            for &i in &ids {
                let img = ds.image(i)?;
                for _ in 0..spec.crops {
                    let v = if spec.min_scale >= 1.0 {
                        crate::data::augment::center_view(img.h, img.w, res)
                    } else {
                        sample_view(&mut rng, Crop::Resized { min_scale: spec.min_scale, max_scale: 1.0 }, false, img.h, img.w, res)
                    };
                    let mut px = vec![0.0; c * res * res];
                    render(&img, &v, res, &mut px);
                    views.push(px);
                    boxes.push(format!("{i}:{},{},{},{}", v.top, v.left, v.h, v.w));
                }
            }
            let picked = select_views(backend, model, &views, spec.crops, class, count, f, res, mean, std, spec.rank)?;
            Ok(picked.into_iter().map(|(pixels, used)| InitImage { pixels, sources: used.iter().map(|&v| boxes[v].clone()).collect() }).collect())
        }
    }
}

/// RDED's selection and stitching over given views: `views` holds `crops` consecutive views
/// (C x res x res, pixels in [0, 1]) of each candidate image. Each candidate keeps its view of lowest
/// teacher cross-entropy for `class` (the first of equal ones); candidates are ordered by `rank`
/// (RDED: by that loss, lowest first; ties by candidate order); output image k stitches the views
/// of ranks k f^2 .. (k+1) f^2 - 1, each shrunk by `factor`, row-major. Returns, per output image,
/// its pixels and the view indices used.
///
/// Errors: fewer candidates than `count * factor^2`, or a backend error of the scoring forward.
#[allow(clippy::too_many_arguments)]
pub fn select_views<B: Backend>(
    backend: &B,
    model: &ResNet,
    views: &[Vec<f32>],
    crops: usize,
    class: usize,
    count: usize,
    factor: usize,
    res: usize,
    mean: &[f32],
    std: &[f32],
    rank: Rank,
) -> Result<Vec<(Vec<f32>, Vec<usize>)>> {
    let (c, f) = (model.in_channels, factor);
    let candidates = views.len() / crops.max(1);
    let need = count * f * f;
    if crops == 0 || candidates < need {
        return Err(Error::State(format!("{candidates} candidate images for {need} selected views")));
    }
    let (scores, logits, feats) = score_views(backend, model, views, class, res, mean, std)?;
    let best: Vec<(f32, usize, usize)> = (0..candidates)
        .map(|k| {
            let (j, s) = (0..crops).map(|j| (j, scores[k * crops + j])).fold((0, f32::INFINITY), |a, b| if b.1 < a.1 { b } else { a });
            (s, k, k * crops + j)
        })
        .collect();
    let mut easy = best.clone();
    easy.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let order: Vec<(f32, usize, usize)> = match rank {
        Rank::Easy => easy,
        Rank::Hard => {
            let mut hard = best.clone();
            hard.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            hard
        }
        Rank::Diverse | Rank::Kmeans | Rank::KmeansFeatures => {
            // The space the points live in: centred logits, or the raw pooled features.
            let (space, dims, centre) = if rank == Rank::KmeansFeatures { (&feats, model.feat_dim, false) } else { (&logits, model.num_classes, true) };
            let classes = dims;
            let centred = |v: usize| {
                let row = &space[v * dims..(v + 1) * dims];
                let m = if centre { row.iter().sum::<f32>() / dims as f32 } else { 0.0 };
                row.iter().map(move |x| x - m)
            };
            let dist = |a: usize, b: usize| centred(a).zip(centred(b)).map(|(x, y)| (x - y) * (x - y)).sum::<f32>();
            let mut chosen = vec![easy[0]];
            let mut nearest: Vec<f32> = best.iter().map(|e| dist(e.2, easy[0].2)).collect();
            nearest[easy[0].1] = f32::NEG_INFINITY;
            while chosen.len() < need {
                // The farthest candidate not chosen yet (chosen ones hold -inf); the first of equals.
                let mut next: Option<usize> = None;
                for k in (0..candidates).filter(|&k| nearest[k] != f32::NEG_INFINITY) {
                    if next.is_none_or(|a| nearest[k] > nearest[a]) {
                        next = Some(k);
                    }
                }
                let Some(k) = next else { break };
                chosen.push(best[k]);
                nearest[k] = f32::NEG_INFINITY;
                for (j, e) in best.iter().enumerate() {
                    if nearest[j] != f32::NEG_INFINITY {
                        nearest[j] = nearest[j].min(dist(e.2, best[k].2));
                    }
                }
            }
            if rank != Rank::Diverse {
                chosen = kmeans_medoids(&best, &chosen, &|v| centred(v).collect(), classes);
            }
            chosen
        }
    };
    Ok(order[..need]
        .chunks(f * f)
        .map(|group| {
            let patches: Vec<Vec<f32>> = group.iter().map(|&(_, _, v)| shrink(&views[v], c, res, f)).collect();
            (stitch(&patches, c, res, f), group.iter().map(|&(_, _, v)| v).collect())
        })
        .collect())
}

/// Lloyd's k-means over the points `feature(view)` of `items` (score, candidate, view), started from
/// the means at `start`; returns each group's member nearest its mean (the first of equals),
/// largest group first (ties by the start order). Empty groups are dropped.
fn kmeans_medoids(items: &[(f32, usize, usize)], start: &[(f32, usize, usize)], feature: &dyn Fn(usize) -> Vec<f32>, dims: usize) -> Vec<(f32, usize, usize)> {
    let points: Vec<Vec<f32>> = items.iter().map(|e| feature(e.2)).collect();
    let mut means: Vec<Vec<f32>> = start.iter().map(|e| feature(e.2)).collect();
    let d2 = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>();
    let nearest_mean = |p: &[f32], means: &[Vec<f32>]| (0..means.len()).fold(0, |best, g| if d2(p, &means[g]) < d2(p, &means[best]) { g } else { best });
    let mut group = vec![0usize; points.len()];
    for _ in 0..20 {
        for (i, p) in points.iter().enumerate() {
            group[i] = nearest_mean(p, &means);
        }
        let mut sums = vec![vec![0.0f32; dims]; means.len()];
        let mut counts = vec![0usize; means.len()];
        for (i, p) in points.iter().enumerate() {
            counts[group[i]] += 1;
            sums[group[i]].iter_mut().zip(p).for_each(|(s, v)| *s += v);
        }
        for g in 0..means.len() {
            if counts[g] > 0 {
                means[g] = sums[g].iter().map(|s| s / counts[g] as f32).collect();
            }
        }
    }
    let mut medoids: Vec<(usize, usize, usize)> = Vec::new(); // (size, group, item)
    for (g, mean) in means.iter().enumerate() {
        let members: Vec<usize> = (0..points.len()).filter(|&i| group[i] == g).collect();
        if let Some(&m) = members.iter().min_by(|&&a, &&b| d2(&points[a], mean).total_cmp(&d2(&points[b], mean)).then(a.cmp(&b))) {
            medoids.push((members.len(), g, m));
        }
    }
    medoids.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    medoids.into_iter().map(|(_, _, m)| items[m]).collect()
}
