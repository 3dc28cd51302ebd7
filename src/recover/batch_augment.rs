//! Sampling a recover batch's augmentation (the parameters `ops::crop_resize` applies): torchvision's
//! RandomResizedCrop window (`data::augment::sample_resized_crop`), the flip coin and the roll
//! offsets, in the official order, from the run's seeded generator.

use rand::Rng;

use crate::data::augment::sample_resized_crop;
use crate::ops::crop_resize::CropParams;

/// What the augmentation does besides rolling.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AugmentSpec {
    /// RandomResizedCrop on (CDA / SRe2L ImageNet) or off (SRe2L CIFAR: roll only).
    pub crop: bool,
    pub flip: bool,
    /// Roll offsets are uniform on 0..=jitter along H and W.
    pub jitter: usize,
}

/// One image's parameters: crop (if on), then the flip coin (if on), then the two roll offsets.
pub fn sample_params<R: Rng>(rng: &mut R, spec: &AugmentSpec, height: usize, width: usize, min_scale: f64) -> CropParams {
    let (top, left, crop_h, crop_w) = if spec.crop { sample_resized_crop(rng, height, width, (min_scale, 1.0)) } else { (0, 0, height, width) };
    let flip = spec.flip && rng.random::<f64>() < 0.5;
    let shift_y = rng.random_range(0..=spec.jitter);
    let shift_x = rng.random_range(0..=spec.jitter);
    CropParams {
        top: top as i32,
        left: left as i32,
        crop_h: crop_h as i32,
        crop_w: crop_w as i32,
        flip: flip as i32,
        shift_y: shift_y as i32,
        shift_x: shift_x as i32,
        _pad: 0,
    }
}

/// Parameters for a batch of n: one set shared by the batch (the official code) or one per image.
pub fn sample_batch<R: Rng>(rng: &mut R, spec: &AugmentSpec, n: usize, height: usize, width: usize, min_scale: f64, per_image: bool) -> Vec<CropParams> {
    if per_image {
        (0..n).map(|_| sample_params(rng, spec, height, width, min_scale)).collect()
    } else {
        vec![sample_params(rng, spec, height, width, min_scale); n]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn roll_offsets_cover_zero_to_jitter_inclusive_and_flip_is_fair() {
        let mut rng = StdRng::seed_from_u64(11);
        let spec = AugmentSpec { crop: false, flip: true, jitter: 4 };
        let mut seen = [0usize; 5];
        let mut flips = 0;
        for _ in 0..5000 {
            let p = sample_params(&mut rng, &spec, 32, 32, 0.08);
            assert_eq!((p.top, p.left, p.crop_h, p.crop_w), (0, 0, 32, 32));
            seen[p.shift_y as usize] += 1;
            assert!((0..=4).contains(&p.shift_x));
            flips += p.flip as usize;
        }
        assert!(seen.iter().all(|&c| c > 800), "{seen:?}");
        assert!((2300..2700).contains(&flips), "{flips}");
    }

    #[test]
    fn shared_batch_parameters_are_identical_per_image_ones_differ() {
        let mut rng = StdRng::seed_from_u64(5);
        let spec = AugmentSpec { crop: true, flip: true, jitter: 8 };
        let shared = sample_batch(&mut rng, &spec, 6, 64, 64, 0.08, false);
        assert!(shared.windows(2).all(|w| w[0] == w[1]));
        let each = sample_batch(&mut rng, &spec, 6, 64, 64, 0.08, true);
        assert!(each.windows(2).any(|w| w[0] != w[1]));
    }
}
