//! A seeded, multi-threaded batch loader. Each epoch is a list of batch plans (dataset indices, plus
//! recorded views and mix when replaying a relabel file); `workers` threads render batches b with
//! b % workers == worker into bounded channels, and the consumer takes them in order. Every batch's
//! random numbers come from its own generator seeded by (seed, epoch, batch), so the batches are the
//! same for any number of workers, and at most workers * prefetch batches exist at once: a dataset
//! streamed from files is never held in memory as a whole.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::augment::{apply_mix, normalize, render, render_eval, sample_mix, sample_view, Crop, MixKind, MixRecord, View};
use super::Dataset;
use crate::error::{Error, Result};

/// How each image becomes a normalised size x size tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleSpec {
    pub size: usize,
    pub crop: Crop,
    pub flip: bool,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

/// One batch to render: dataset indices, and the recorded views / mix when replaying.
#[derive(Clone, Debug, Default)]
pub struct BatchPlan {
    pub ids: Vec<usize>,
    pub views: Option<Vec<View>>,
    /// Some(recorded mix, possibly none) when replaying; None: sample with the loader's MixKind.
    pub mix: Option<Option<MixRecord>>,
    pub seed: u64,
}

#[derive(Clone, Debug)]
pub struct Batch {
    /// Position of the batch in its epoch.
    pub number: usize,
    pub n: usize,
    pub ids: Vec<usize>,
    pub labels: Vec<usize>,
    pub views: Vec<View>,
    pub mix: Option<MixRecord>,
    /// n x C x size x size, normalised.
    pub x: Vec<f32>,
}

/// SplitMix64-style mixing of (seed, a, b) into one generator seed.
pub fn mix_seed(seed: u64, a: u64, b: u64) -> u64 {
    let mut z = seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The order of an epoch: a seeded Fisher-Yates shuffle of 0..len, or 0..len.
pub fn epoch_order(len: usize, seed: u64, epoch: usize, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if shuffle {
        let mut rng = StdRng::seed_from_u64(mix_seed(seed, 0x5eed, epoch as u64));
        for i in (1..len).rev() {
            order.swap(i, rng.random_range(0..=i));
        }
    }
    order
}

/// Batch plans of one epoch over `order` (the last batch is smaller unless dropped).
pub fn plan_epoch(order: &[usize], batch_size: usize, drop_last: bool, seed: u64, epoch: usize) -> Vec<BatchPlan> {
    order
        .chunks(batch_size.max(1))
        .filter(|c| !drop_last || c.len() == batch_size)
        .enumerate()
        .map(|(b, ids)| BatchPlan { ids: ids.to_vec(), views: None, mix: None, seed: mix_seed(seed, epoch as u64 + 1, b as u64) })
        .collect()
}

/// Renders one batch: views (sampled or given), normalisation, then the mix (sampled or given).
pub fn render_batch(ds: &dyn Dataset, spec: &SampleSpec, mix: MixKind, plan: &BatchPlan, number: usize) -> Result<Batch> {
    let mut rng = StdRng::seed_from_u64(plan.seed);
    let n = plan.ids.len();
    let c = ds.channels();
    let len = c * spec.size * spec.size;
    let mut x = vec![0f32; n * len];
    let mut views = Vec::with_capacity(n);
    let mut labels = Vec::with_capacity(n);
    for (k, &id) in plan.ids.iter().enumerate() {
        if id >= ds.len() {
            return Err(Error::input(ds.describe(), format!("image index {id} is out of range (the dataset has {})", ds.len())));
        }
        let img = ds.image(id)?;
        if img.c != c {
            return Err(Error::input(ds.describe(), format!("image {id} has {} channels; expected {c}", img.c)));
        }
        let v = match &plan.views {
            Some(vs) => vs[k],
            None => sample_view(&mut rng, spec.crop, spec.flip, img.h, img.w, spec.size),
        };
        if v.h <= 0 || v.w <= 0 || v.h > 4 * img.h as i32 + 4 || v.w > 4 * img.w as i32 + 4 {
            return Err(Error::input(ds.describe(), format!("view {v:?} does not fit image {id} ({}x{})", img.h, img.w)));
        }
        let out = &mut x[k * len..(k + 1) * len];
        if spec.crop == Crop::Eval && plan.views.is_none() {
            render_eval(&img, spec.size, out);
        } else {
            render(&img, &v, spec.size, out);
        }
        normalize(out, c, &spec.mean, &spec.std);
        views.push(v);
        labels.push(ds.label(id));
    }
    let mix = match &plan.mix {
        Some(m) => m.clone(),
        None => sample_mix(&mut rng, mix, n, spec.size, spec.size),
    };
    if let Some(m) = &mix {
        let [top, left, bottom, right] = m.bbox;
        let box_fits = top <= bottom && left <= right && bottom as usize <= spec.size && right as usize <= spec.size;
        if m.perm.len() != n || m.perm.iter().any(|&p| p as usize >= n) || !box_fits || !(0.0..=1.0).contains(&m.lam) {
            return Err(Error::input(ds.describe(), format!("recorded mix of batch {number} does not fit a batch of {n} images of {}px", spec.size)));
        }
        apply_mix(m, n, c, spec.size, spec.size, &mut x);
    }
    Ok(Batch { number, n, ids: plan.ids.clone(), labels, views, mix, x })
}

/// The batches of one epoch, rendered by worker threads, yielded in order.
pub struct EpochLoader {
    receivers: Vec<Receiver<Result<Batch>>>,
    next: usize,
    total: usize,
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
}

impl EpochLoader {
    pub fn new(ds: Arc<dyn Dataset>, spec: SampleSpec, mix: MixKind, plans: Vec<BatchPlan>, workers: usize, prefetch: usize) -> EpochLoader {
        let workers = workers.clamp(1, plans.len().max(1));
        let total = plans.len();
        let plans = Arc::new(plans);
        let spec = Arc::new(spec);
        let stop = Arc::new(AtomicBool::new(false));
        let mut receivers = Vec::new();
        let mut handles = Vec::new();
        for wk in 0..workers {
            let (tx, rx) = sync_channel(prefetch.max(1));
            let (ds, plans, spec, stop) = (ds.clone(), plans.clone(), spec.clone(), stop.clone());
            handles.push(std::thread::spawn(move || {
                for b in (wk..plans.len()).step_by(workers) {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let r = render_batch(ds.as_ref(), &spec, mix, &plans[b], b);
                    let failed = r.is_err();
                    if tx.send(r).is_err() || failed {
                        break;
                    }
                }
            }));
            receivers.push(rx);
        }
        EpochLoader { receivers, next: 0, total, stop, handles }
    }

    pub fn len(&self) -> usize {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
}

impl Iterator for EpochLoader {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Result<Batch>> {
        if self.next >= self.total {
            return None;
        }
        let w = self.next % self.receivers.len();
        self.next += 1;
        Some(
            self.receivers[w]
                .recv()
                .unwrap_or_else(|_| Err(Error::input("data loader", "a worker thread stopped unexpectedly (an engine bug; please report it)"))),
        )
    }
}

impl Drop for EpochLoader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.receivers.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Image;

    struct Ramp(usize);
    impl Dataset for Ramp {
        fn len(&self) -> usize {
            self.0
        }
        fn num_classes(&self) -> usize {
            3
        }
        fn channels(&self) -> usize {
            1
        }
        fn label(&self, i: usize) -> usize {
            i % 3
        }
        fn image(&self, i: usize) -> Result<Image> {
            Ok(Image { c: 1, h: 8, w: 8, data: (0..64).map(|p| (i * 64 + p) as f32 / 1000.0).collect() })
        }
        fn describe(&self) -> String {
            "ramp".into()
        }
        fn image_size(&self) -> Option<(usize, usize)> {
            Some((8, 8))
        }
    }

    fn run(workers: usize) -> Vec<Batch> {
        let ds: Arc<dyn Dataset> = Arc::new(Ramp(23));
        let spec = SampleSpec { size: 8, crop: Crop::Resized { min_scale: 0.08, max_scale: 1.0 }, flip: true, mean: vec![0.5], std: vec![0.25] };
        let plans = plan_epoch(&epoch_order(23, 7, 2, true), 5, false, 7, 2);
        EpochLoader::new(ds, spec, MixKind::Cutmix, plans, workers, 2).collect::<Result<Vec<_>>>().unwrap()
    }

    #[test]
    fn batches_are_the_same_for_any_number_of_workers_and_cover_the_epoch() {
        let (a, b) = (run(1), run(3));
        assert_eq!(a.len(), 5);
        assert_eq!(a.iter().map(|b| b.n).collect::<Vec<_>>(), vec![5, 5, 5, 5, 3]);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!((x.number, &x.ids, &x.views, &x.mix), (y.number, &y.ids, &y.views, &y.mix));
            assert_eq!(x.x, y.x);
        }
        let mut seen: Vec<usize> = a.iter().flat_map(|b| b.ids.clone()).collect();
        seen.sort();
        assert_eq!(seen, (0..23).collect::<Vec<_>>());
    }

    #[test]
    fn replaying_recorded_views_and_mix_reproduces_the_batch() {
        let a = run(2);
        let ds: Arc<dyn Dataset> = Arc::new(Ramp(23));
        let spec = SampleSpec { size: 8, crop: Crop::Center, flip: false, mean: vec![0.5], std: vec![0.25] };
        for b in &a {
            let plan = BatchPlan { ids: b.ids.clone(), views: Some(b.views.clone()), mix: Some(b.mix.clone()), seed: 0 };
            let r = render_batch(ds.as_ref(), &spec, MixKind::None, &plan, b.number).unwrap();
            assert_eq!(r.x, b.x);
        }
    }

    #[test]
    fn a_corrupt_recorded_mix_is_an_error_not_a_panic() {
        let a = run(1);
        let ds: Arc<dyn Dataset> = Arc::new(Ramp(23));
        let spec = SampleSpec { size: 8, crop: Crop::Center, flip: false, mean: vec![0.5], std: vec![0.25] };
        let b = &a[0];
        let good = b.mix.clone().expect("CutMix batch");
        let inverted_box = MixRecord { bbox: [0, 6, 4, 2], ..good.clone() };
        let bad_lambda = MixRecord { lam: f32::NAN, ..good };
        for mix in [inverted_box, bad_lambda] {
            let plan = BatchPlan { ids: b.ids.clone(), views: Some(b.views.clone()), mix: Some(Some(mix)), seed: 0 };
            let err = render_batch(ds.as_ref(), &spec, MixKind::None, &plan, b.number).map(|_| ()).unwrap_err();
            assert!(err.to_string().contains("recorded mix of batch"), "{err}");
        }
    }
}
