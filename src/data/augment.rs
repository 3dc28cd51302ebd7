//! Training augmentation, per image (crop, flip) and per batch (CutMix, MixUp), recorded as plain
//! parameters so a relabel file can replay exactly the same views.
//!
//! Per image (torchvision semantics, on [0, 1] pixels before normalisation):
//! - `Crop::Pad { padding }`: RandomCrop(size, padding, fill 0): pad every side with zeros, take a
//!   size x size window at a uniform offset in 0..=2*padding (+ any excess of the image over size).
//! - `Crop::Resized { min_scale, max_scale }`: RandomResizedCrop(size, scale, ratio (3/4, 4/3)) with
//!   torchvision's parameter sampling ([`sample_resized_crop`], which recover's batch augmentation shares) and a bilinear resize
//!   of the window to size x size (align_corners = False, no antialias: torchvision's tensor path).
//! - `Crop::Center`: the whole image when it already has the target size, else resize the shorter
//!   side to `size` and take the centre.
//! - `Crop::Eval`: the official validate's test transform, Resize(size / 0.875) + CenterCrop(size)
//!   on PIL images (antialiased bilinear; 256 then 224 for ImageNet); an image already size x size
//!   is taken as is.
//! - flip: horizontal, probability 0.5.
//!
//! Per batch (`Mix`), SRe2L / FKD style, one permutation per batch:
//! - CutMix: lam ~ Beta(1, 1); the official `rand_bbox`: cut = sqrt(1 - lam), box of
//!   (int(H * cut), int(W * cut)) centred at a uniform pixel, clipped; the box is pasted from the
//!   permuted images; lam is then set to 1 - box area / image area.
//! - MixUp: lam ~ Beta(alpha, alpha); x = lam * x + (1 - lam) * x[perm].

use rand::Rng;
use rand_distr::{Beta, Distribution};
use serde::{Deserialize, Serialize};

use super::Image;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Crop {
    Center,
    Eval,
    Pad { padding: usize },
    Resized { min_scale: f64, max_scale: f64 },
}

/// One image's view: a window of the source (may extend past it for padded crops: negative top/left)
/// resized to the output size, then optionally flipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct View {
    pub top: i32,
    pub left: i32,
    pub h: i32,
    pub w: i32,
    pub flip: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum MixKind {
    None,
    Cutmix,
    Mixup { alpha: f64 },
}

/// One batch's mix: permutation (within the batch), lambda, CutMix box rows top..bottom, cols left..right.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MixRecord {
    pub cutmix: bool,
    pub perm: Vec<u32>,
    pub lam: f32,
    pub bbox: [u32; 4],
}

/// torchvision `RandomResizedCrop.get_params(img, scale, ratio=(3/4, 4/3))`: (top, left, h, w).
/// Ten tries of area * U(scale) and log-uniform aspect ratio, `round` half-to-even as Python's, then
/// the centre-crop fallback.
pub fn sample_resized_crop<R: Rng>(rng: &mut R, height: usize, width: usize, scale: (f64, f64)) -> (usize, usize, usize, usize) {
    let ratio = (3.0f64 / 4.0, 4.0f64 / 3.0);
    let area = (height * width) as f64;
    let (log_lo, log_hi) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target_area = area * uniform(rng, scale.0, scale.1);
        let aspect = uniform(rng, log_lo, log_hi).exp();
        let w = (target_area * aspect).sqrt().round_ties_even() as i64;
        let h = (target_area / aspect).sqrt().round_ties_even() as i64;
        if 0 < w && w <= width as i64 && 0 < h && h <= height as i64 {
            let (h, w) = (h as usize, w as usize);
            let top = rng.random_range(0..=height - h);
            let left = rng.random_range(0..=width - w);
            return (top, left, h, w);
        }
    }
    centre_fallback(height, width, ratio)
}

/// The fallback when no try fits: the largest centred window whose aspect lies within `ratio`.
pub fn centre_fallback(height: usize, width: usize, ratio: (f64, f64)) -> (usize, usize, usize, usize) {
    let in_ratio = width as f64 / height as f64;
    let (h, w) = if in_ratio < ratio.0 {
        ((width as f64 / ratio.0).round_ties_even() as usize, width)
    } else if in_ratio > ratio.1 {
        (height, (height as f64 * ratio.1).round_ties_even() as usize)
    } else {
        (height, width)
    };
    ((height - h) / 2, (width - w) / 2, h, w)
}

/// U(lo, hi) like torch's `uniform_` (lo when lo == hi).
fn uniform<R: Rng>(rng: &mut R, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.random::<f64>()
}

/// Samples the view of an h x w image for an output of `size` x `size`.
pub fn sample_view<R: Rng>(rng: &mut R, crop: Crop, flip: bool, h: usize, w: usize, size: usize) -> View {
    let mut v = match crop {
        Crop::Center => center_view(h, w, size),
        Crop::Eval => eval_view(h, w, size),
        Crop::Pad { padding } => {
            // torchvision RandomCrop: pad, then offsets uniform over the padded image.
            let (ph, pw) = (h + 2 * padding, w + 2 * padding);
            let top = rng.random_range(0..=ph.saturating_sub(size)) as i32 - padding as i32;
            let left = rng.random_range(0..=pw.saturating_sub(size)) as i32 - padding as i32;
            View { top, left, h: size as i32, w: size as i32, flip: false }
        }
        Crop::Resized { min_scale, max_scale } => {
            let (top, left, ch, cw) = sample_resized_crop(rng, h, w, (min_scale, max_scale));
            View { top: top as i32, left: left as i32, h: ch as i32, w: cw as i32, flip: false }
        }
    };
    v.flip = flip && rng.random::<f64>() < 0.5;
    v
}

/// Evaluation view: the whole image if it is size x size, else the centred square of the shorter side.
pub fn center_view(h: usize, w: usize, size: usize) -> View {
    if h == size && w == size {
        return View { top: 0, left: 0, h: h as i32, w: w as i32, flip: false };
    }
    let s = h.min(w);
    View { top: ((h - s) / 2) as i32, left: ((w - s) / 2) as i32, h: s as i32, w: s as i32, flip: false }
}

/// Evaluation crop ratio of the official validate (CenterCrop 224 of Resize 256).
pub const EVAL_CROP_RATIO: f64 = 0.875;

/// The source window `render_eval` shows, for the record: the centred square of the shorter side
/// times EVAL_CROP_RATIO (the whole image when it is already size x size).
pub fn eval_view(h: usize, w: usize, size: usize) -> View {
    if h == size && w == size {
        return View { top: 0, left: 0, h: h as i32, w: w as i32, flip: false };
    }
    let s = ((h.min(w) as f64 * EVAL_CROP_RATIO).round() as usize).max(1);
    View { top: ((h - s) / 2) as i32, left: ((w - s) / 2) as i32, h: s as i32, w: s as i32, flip: false }
}

/// PIL's antialiased bilinear resampling of an axis of `input` samples to `output`: per output
/// sample in `kept`, the first input index and the normalised triangle weights (support widened by
/// the downscale factor; plain bilinear when upscaling), as PIL's `precompute_coeffs`.
fn pil_bilinear_weights(input: usize, output: usize, kept: std::ops::Range<usize>) -> Vec<(usize, Vec<f32>)> {
    let scale = input as f64 / output as f64;
    let filter_scale = scale.max(1.0);
    kept.map(|o| {
        let center = (o as f64 + 0.5) * scale;
        let first = (center - filter_scale + 0.5).max(0.0) as usize;
        let end = ((center + filter_scale + 0.5) as usize).min(input);
        let w: Vec<f64> = (first..end).map(|x| (1.0 - ((x as f64 - center + 0.5) / filter_scale).abs()).max(0.0)).collect();
        let sum: f64 = w.iter().sum();
        (first, w.iter().map(|v| (v / sum) as f32).collect())
    })
    .collect()
}

/// The official test transform (`Crop::Eval`) of `img` into `out` (C x size x size): resize the
/// shorter side to round(size / EVAL_CROP_RATIO) with torchvision's rounding of the longer side,
/// then the centre size x size (Python's round-half-even offsets), computing only the kept pixels.
pub fn render_eval(img: &Image, size: usize, out: &mut [f32]) {
    let (c, h, w) = (img.c, img.h, img.w);
    assert_eq!(out.len(), c * size * size, "render_eval output");
    if h == size && w == size {
        out.copy_from_slice(&img.data);
        return;
    }
    let short = (size as f64 / EVAL_CROP_RATIO).round() as usize;
    let (rh, rw) = if h <= w { (short, (short as f64 * w as f64 / h as f64) as usize) } else { ((short as f64 * h as f64 / w as f64) as usize, short) };
    let top = ((rh - size) as f64 / 2.0).round_ties_even() as usize;
    let left = ((rw - size) as f64 / 2.0).round_ties_even() as usize;
    let rows = pil_bilinear_weights(h, rh, top..top + size);
    let cols = pil_bilinear_weights(w, rw, left..left + size);
    // Horizontal pass first, as PIL: every source row at the kept columns, then the vertical pass.
    let mut wide = vec![0f32; h * size];
    for ch in 0..c {
        let src = &img.data[ch * h * w..(ch + 1) * h * w];
        for (y, row) in wide.chunks_mut(size).enumerate() {
            for (o, (first, wts)) in row.iter_mut().zip(&cols) {
                *o = wts.iter().zip(&src[y * w + first..]).map(|(a, b)| a * b).sum();
            }
        }
        for (oy, (first, wts)) in rows.iter().enumerate() {
            for ox in 0..size {
                out[(ch * size + oy) * size + ox] = wts.iter().enumerate().map(|(i, a)| a * wide[(first + i) * size + ox]).sum();
            }
        }
    }
}

/// Renders a view of `img` into `out` (C x size x size): zeros outside the source; a window of the
/// output size is copied, any other is resized bilinearly (align_corners = False).
pub fn render(img: &Image, v: &View, size: usize, out: &mut [f32]) {
    let (c, h, w) = (img.c, img.h as i32, img.w as i32);
    assert_eq!(out.len(), c * size * size, "render output");
    let exact = v.h as usize == size && v.w as usize == size;
    let (sy, sx) = (v.h as f32 / size as f32, v.w as f32 / size as f32);
    for ch in 0..c {
        let src = &img.data[ch * (h * w) as usize..(ch + 1) * (h * w) as usize];
        let at = |y: i32, x: i32| if y >= 0 && y < h && x >= 0 && x < w { src[(y * w + x) as usize] } else { 0.0 };
        for oy in 0..size {
            for ox in 0..size {
                let xo = if v.flip { size - 1 - ox } else { ox };
                let val = if exact {
                    at(v.top + oy as i32, v.left + xo as i32)
                } else {
                    let fy = (sy * (oy as f32 + 0.5) - 0.5).max(0.0);
                    let fx = (sx * (xo as f32 + 0.5) - 0.5).max(0.0);
                    let (iy, ix) = (fy as i32, fx as i32);
                    let (ly, lx) = (fy - iy as f32, fx - ix as f32);
                    let iy1 = if iy < v.h - 1 { iy + 1 } else { iy };
                    let ix1 = if ix < v.w - 1 { ix + 1 } else { ix };
                    let (y0, y1, x0, x1) = (v.top + iy, v.top + iy1, v.left + ix, v.left + ix1);
                    let top = (1.0 - lx) * at(y0, x0) + lx * at(y0, x1);
                    let bot = (1.0 - lx) * at(y1, x0) + lx * at(y1, x1);
                    (1.0 - ly) * top + ly * bot
                };
                out[(ch * size + oy) * size + ox] = val;
            }
        }
    }
}

/// SRe2L's `rand_bbox` for an h x w image: (top, left, bottom, right).
pub fn rand_bbox<R: Rng>(rng: &mut R, h: usize, w: usize, lam: f64) -> [u32; 4] {
    let cut = (1.0 - lam).sqrt();
    let (cut_h, cut_w) = ((h as f64 * cut) as i64, (w as f64 * cut) as i64);
    let cy = rng.random_range(0..h) as i64;
    let cx = rng.random_range(0..w) as i64;
    let clip = |v: i64, hi: usize| v.clamp(0, hi as i64) as u32;
    [clip(cy - cut_h / 2, h), clip(cx - cut_w / 2, w), clip(cy + cut_h / 2, h), clip(cx + cut_w / 2, w)]
}

/// Samples one batch's mix for n images of h x w (None for MixKind::None or a single image).
pub fn sample_mix<R: Rng>(rng: &mut R, kind: MixKind, n: usize, h: usize, w: usize) -> Option<MixRecord> {
    if n < 2 {
        return None;
    }
    let perm = |rng: &mut R| {
        let mut p: Vec<u32> = (0..n as u32).collect();
        for i in (1..n).rev() {
            p.swap(i, rng.random_range(0..=i));
        }
        p
    };
    match kind {
        MixKind::None => None,
        MixKind::Cutmix => {
            let lam: f64 = Beta::new(1.0, 1.0).expect("valid beta").sample(rng);
            let perm = perm(rng);
            let b = rand_bbox(rng, h, w, lam);
            let area = (b[2] - b[0]) as f64 * (b[3] - b[1]) as f64;
            Some(MixRecord { cutmix: true, perm, lam: (1.0 - area / (h * w) as f64) as f32, bbox: b })
        }
        MixKind::Mixup { alpha } => {
            let lam: f64 = Beta::new(alpha, alpha).expect("alpha > 0 checked by the caller").sample(rng);
            let perm = perm(rng);
            Some(MixRecord { cutmix: false, perm, lam: lam as f32, bbox: [0; 4] })
        }
    }
}

/// Applies a mix to a batch x (n x C x H x W) in place.
pub fn apply_mix(m: &MixRecord, n: usize, c: usize, h: usize, w: usize, x: &mut [f32]) {
    let len = c * h * w;
    let src = x.to_vec();
    for i in 0..n {
        let j = m.perm[i] as usize;
        let (dst, other) = (&mut x[i * len..(i + 1) * len], &src[j * len..(j + 1) * len]);
        if m.cutmix {
            let [t, l, b, r] = m.bbox.map(|v| v as usize);
            for ch in 0..c {
                for y in t..b {
                    let row = ch * h * w + y * w;
                    dst[row + l..row + r].copy_from_slice(&other[row + l..row + r]);
                }
            }
        } else {
            for (d, &o) in dst.iter_mut().zip(other) {
                *d = m.lam * *d + (1.0 - m.lam) * o;
            }
        }
    }
}

/// (x - mean_c) / std_c in place over C x HW.
pub fn normalize(x: &mut [f32], c: usize, mean: &[f32], std: &[f32]) {
    let hw = x.len() / c;
    for (ch, plane) in x.chunks_mut(hw).enumerate() {
        let (m, s) = (mean[ch % mean.len()], std[ch % std.len()]);
        plane.iter_mut().for_each(|v| *v = (*v - m) / s);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn crops_fit_and_follow_the_scale_and_ratio_bounds() {
        let mut rng = StdRng::seed_from_u64(7);
        let (h, w) = (224, 224);
        let mut fallbacks = 0;
        let mut mean_area = 0.0;
        let trials = 20000;
        for _ in 0..trials {
            let (top, left, ch, cw) = sample_resized_crop(&mut rng, h, w, (0.08, 1.0));
            assert!(ch > 0 && cw > 0 && top + ch <= h && left + cw <= w);
            if (top, left, ch, cw) == (0, 0, h, w) {
                fallbacks += 1;
            }
            let area = (ch * cw) as f64 / (h * w) as f64;
            // rounding of w and h to integers moves area and aspect slightly past the bounds
            assert!((0.08 * 0.97..=1.0).contains(&area), "area {area}");
            let ar = cw as f64 / ch as f64;
            assert!((0.75 * 0.97..=4.0 / 3.0 * 1.03).contains(&ar), "aspect {ar}");
            mean_area += area;
        }
        mean_area /= trials as f64;
        // Accepted draws are U(0.08, 1) conditioned on fitting: large areas with extreme aspect ratios
        // are rejected, so the mean area sits below 0.54. torchvision's get_params gives 0.4778 over
        // 20000 draws on 224x224 (torch.manual_seed(0)); the standard error of such a mean is ~0.002.
        assert!(mean_area > 0.468 && mean_area < 0.488, "mean area {mean_area}");
        // A full-scale draw fits only when its aspect rounds to 1; almost never falls back at (0.08, 1).
        assert!(fallbacks < trials / 100, "{fallbacks} fallbacks");
    }

    #[test]
    fn scale_one_mostly_falls_back_to_the_whole_image() {
        // scale (1, 1): area = H*W, so any aspect != 1 overflows one side; the fallback is the full image.
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..200 {
            let (top, left, ch, cw) = sample_resized_crop(&mut rng, 64, 64, (1.0, 1.0));
            assert!(ch * cw >= 63 * 63, "{ch}x{cw}");
            assert!(top + ch <= 64 && left + cw <= 64);
        }
    }

    #[test]
    fn centre_fallback_matches_torchvision() {
        assert_eq!(centre_fallback(100, 100, (0.75, 4.0 / 3.0)), (0, 0, 100, 100));
        // wide image: h = H, w = round(H * 4/3)
        assert_eq!(centre_fallback(30, 100, (0.75, 4.0 / 3.0)), (0, 30, 30, 40));
        // tall image: w = W, h = round(W / (3/4))
        assert_eq!(centre_fallback(100, 30, (0.75, 4.0 / 3.0)), (30, 0, 40, 30));
    }

    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn ramp(c: usize, h: usize, w: usize) -> Image {
        Image { c, h, w, data: (0..c * h * w).map(|i| i as f32).collect() }
    }

    #[test]
    fn padded_crop_shifts_and_fills_with_zeros() {
        let img = ramp(1, 4, 4);
        let mut out = vec![0.0; 16];
        render(&img, &View { top: -1, left: 2, h: 4, w: 4, flip: false }, 4, &mut out);
        assert_eq!(&out[..4], &[0.0; 4]);
        assert_eq!(&out[4..8], &[2.0, 3.0, 0.0, 0.0]);
        render(&img, &View { top: 0, left: 0, h: 4, w: 4, flip: true }, 4, &mut out);
        assert_eq!(&out[..4], &[3.0, 2.0, 1.0, 0.0]);
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..200 {
            let v = sample_view(&mut rng, Crop::Pad { padding: 2 }, true, 28, 28, 28);
            assert!((-2..=2).contains(&v.top) && (-2..=2).contains(&v.left) && v.h == 28);
        }
    }

    #[test]
    fn resized_crop_of_the_whole_image_is_identity_and_half_is_bilinear() {
        let img = ramp(2, 6, 6);
        let mut out = vec![0.0; 72];
        render(&img, &View { top: 0, left: 0, h: 6, w: 6, flip: false }, 6, &mut out);
        assert_eq!(out, img.data);
        // A 3x3 window upsampled to 6x6: output (0, 1) samples source x = 0.5*(1.5) - 0.5 = 0.25.
        render(&img, &View { top: 1, left: 1, h: 3, w: 3, flip: false }, 6, &mut out);
        assert!((out[1] - (7.0 + 0.25)).abs() < 1e-6, "{}", out[1]);
    }

    #[test]
    fn cutmix_pastes_the_box_from_the_permuted_image_and_sets_lambda_to_the_kept_area() {
        let mut rng = StdRng::seed_from_u64(4);
        let (n, c, h, w) = (3, 1, 8, 8);
        for _ in 0..50 {
            let m = sample_mix(&mut rng, MixKind::Cutmix, n, h, w).unwrap();
            let mut x: Vec<f32> = (0..n).flat_map(|i| vec![i as f32; c * h * w]).collect();
            apply_mix(&m, n, c, h, w, &mut x);
            let [t, l, b, r] = m.bbox.map(|v| v as usize);
            let kept = 1.0 - ((b - t) * (r - l)) as f32 / (h * w) as f32;
            assert!((m.lam - kept).abs() < 1e-6);
            for i in 0..n {
                let from_other = x[i * 64..(i + 1) * 64].iter().filter(|&&v| v == m.perm[i] as f32 && m.perm[i] as usize != i).count();
                if m.perm[i] as usize != i {
                    assert_eq!(from_other, (b - t) * (r - l));
                }
            }
        }
    }

    #[test]
    fn mixup_blends_with_lambda() {
        let mut rng = StdRng::seed_from_u64(5);
        let m = sample_mix(&mut rng, MixKind::Mixup { alpha: 0.8 }, 2, 2, 2).unwrap();
        let mut x = vec![1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0];
        apply_mix(&m, 2, 1, 2, 2, &mut x);
        let j = m.perm[0] as usize;
        let want = if j == 0 { 1.0 } else { m.lam };
        assert!((x[0] - want).abs() < 1e-6);
    }
}
