//! Op-level checks of the CPU halves: exact adjoints, finite differences in f64, and PyTorch's Adam.

mod common;

use cda_engine::model::ConvGeom;
use cda_engine::ops::adam::{cpu::adam_clip, AdamScalars};
use cda_engine::ops::bn_match::cpu::{bn_backward, bn_match};
use cda_engine::ops::conv::{cpu as conv, BnAffine, ConvProblem, DgradEpilogue, FpropEpilogue};
use cda_engine::ops::crop_resize::{cpu as crop, CropParams, CropResizeProblem};
use cda_engine::ops::image_prior::cpu::image_prior;
use cda_engine::recover::ClipMode;
use cda_engine::schedule::cosine_lr;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn randn(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// `<A x, y> = <x, A^T y>` for the augmentation: in f64 the two sides agree to fp32 rounding of the
/// four-tap sums (1e-5 relative); any wrong tap, weight or flip/roll index breaks it by O(1).
#[test]
fn crop_resize_backward_is_the_adjoint_of_forward() {
    let mut rng = StdRng::seed_from_u64(1);
    let (n, c, h, w) = (2, 3, 13, 17);
    let p = CropResizeProblem { n, c, h, w };
    let cases = [
        CropParams { top: 0, left: 0, crop_h: 13, crop_w: 17, flip: 0, shift_y: 0, shift_x: 0, _pad: 0 },
        CropParams { top: 2, left: 3, crop_h: 5, crop_w: 9, flip: 1, shift_y: 4, shift_x: 16, _pad: 0 },
        CropParams { top: 12, left: 16, crop_h: 1, crop_w: 1, flip: 0, shift_y: 12, shift_x: 0, _pad: 0 },
        CropParams { top: 0, left: 5, crop_h: 13, crop_w: 12, flip: 1, shift_y: 0, shift_x: 7, _pad: 0 },
    ];
    for cp in cases {
        let params = vec![cp, CropParams { flip: 1 - cp.flip, shift_x: 3, ..cp }];
        let x = randn(&mut rng, p.len());
        let y = randn(&mut rng, p.len());
        let mut ax = vec![0.0; p.len()];
        let mut aty = vec![0.0; p.len()];
        crop::fwd(&p, &params, &x, &mut ax);
        crop::bwd(&p, &params, &y, &mut aty);
        let (lhs, rhs) = (dot(&ax, &y), dot(&x, &aty));
        assert!((lhs - rhs).abs() <= 1e-5 * lhs.abs().max(1.0), "{cp:?}: <Ax,y> = {lhs}, <x,A^T y> = {rhs}");
    }
}

/// With the full window the map is a pure roll (+ flip): exact, no interpolation.
#[test]
fn crop_resize_full_window_is_an_exact_roll_and_flip() {
    let mut rng = StdRng::seed_from_u64(2);
    let (h, w) = (6, 7);
    let p = CropResizeProblem { n: 1, c: 1, h: h as i32, w: w as i32 };
    let x = randn(&mut rng, h * w);
    let cp = CropParams { top: 0, left: 0, crop_h: h as i32, crop_w: w as i32, flip: 1, shift_y: 2, shift_x: 3, _pad: 0 };
    let mut out = vec![0.0; h * w];
    crop::fwd(&p, &[cp], &x, &mut out);
    for y in 0..h {
        for xx in 0..w {
            // torch.roll(flip(x), (2, 3)): out[y][x] = flip(x)[y-2][x-3] = x[y-2][w-1-(x-3)]
            let sy = (y + h - 2) % h;
            let sx = w - 1 - (xx + w - 3) % w;
            assert_eq!(out[y * w + xx], x[sy * w + sx]);
        }
    }
}

/// Bilinear upsampling of a 2x2 crop to 4x4, against torch.nn.functional.interpolate:
/// ```python
/// x = torch.tensor([[[[1., 2.], [3., 4.]]]])
/// F.interpolate(x, size=(4, 4), mode="bilinear", align_corners=False)
/// # rows: [1.00 1.25 1.75 2.00] [1.50 1.75 2.25 2.50] [2.50 2.75 3.25 3.50] [3.00 3.25 3.75 4.00]
/// ```
#[test]
fn crop_resize_matches_pytorch_bilinear() {
    let p = CropResizeProblem { n: 1, c: 1, h: 4, w: 4 };
    let mut x = vec![0.0f32; 16];
    x[5] = 1.0; // crop rows 1..3, cols 1..3 of a 4x4 image
    x[6] = 2.0;
    x[9] = 3.0;
    x[10] = 4.0;
    let cp = CropParams { top: 1, left: 1, crop_h: 2, crop_w: 2, flip: 0, shift_y: 0, shift_x: 0, _pad: 0 };
    let mut out = vec![0.0; 16];
    crop::fwd(&p, &[cp], &x, &mut out);
    let want = [1.0, 1.25, 1.75, 2.0, 1.5, 1.75, 2.25, 2.5, 2.5, 2.75, 3.25, 3.5, 3.0, 3.25, 3.75, 4.0];
    assert_eq!(out, want);
}

/// The BN-matching coefficients against a float64 finite difference of
/// r(y) = wt * (||var(y) - rv||_2 + ||mean(y) - rm||_2); central differences with step 1e-4 on
/// f64 are accurate to ~1e-8, the op works in f32 coefficients: 1e-4 relative.
#[test]
fn bn_matching_gradient_matches_f64_finite_differences() {
    let mut rng = StdRng::seed_from_u64(3);
    let (n, k, hw) = (3, 4, 5);
    let y: Vec<f32> = randn(&mut rng, n * k * hw).iter().enumerate().map(|(i, v)| v * 2.0 + (i % 3) as f32).collect();
    let rm = randn(&mut rng, k);
    let rv: Vec<f32> = randn(&mut rng, k).iter().map(|v| v.abs() + 0.5).collect();
    let wt = 0.7;
    let count = (n * hw) as f64;
    let loss64 = |y: &[f64]| -> f64 {
        let mut nm = 0.0;
        let mut nv = 0.0;
        for ch in 0..k {
            let vals: Vec<f64> = (0..n).flat_map(|i| (0..hw).map(move |j| (i, j))).map(|(i, j)| y[(i * k + ch) * hw + j]).collect();
            let mean = vals.iter().sum::<f64>() / count;
            let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / count;
            nm += (mean - rm[ch] as f64).powi(2);
            nv += (var - rv[ch] as f64).powi(2);
        }
        wt * (nm.sqrt() + nv.sqrt())
    };
    // stats as the conv epilogue produces them
    let mut stats = vec![0.0f32; 2 * k];
    for ch in 0..k {
        let vals: Vec<f64> = (0..n).flat_map(|i| (0..hw).map(move |j| (i, j))).map(|(i, j)| y[(i * k + ch) * hw + j] as f64).collect();
        let mean = vals.iter().sum::<f64>() / count;
        stats[ch] = mean as f32;
        stats[k + ch] = (vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / count) as f32;
    }
    let mut coef = vec![0.0; 3 * k];
    let r = bn_match(&stats, &rm, &rv, count, wt, &mut coef);
    let y64: Vec<f64> = y.iter().map(|&v| v as f64).collect();
    assert!((r as f64 * wt - loss64(&y64)).abs() < 1e-5 * loss64(&y64));
    // gradient through bn_backward with dz = 0 (only the matching term)
    let mut g = vec![0.0; y.len()];
    bn_backward(k, hw, &vec![0.0; y.len()], &y, &vec![1.0; k], &coef, &mut g);
    let scale = g.iter().fold(0f64, |m, &v| m.max((v as f64).abs()));
    for i in 0..y.len() {
        let (mut a, mut b) = (y64.clone(), y64.clone());
        a[i] += 1e-4;
        b[i] -= 1e-4;
        let fd = (loss64(&a) - loss64(&b)) / 2e-4;
        assert!((g[i] as f64 - fd).abs() <= 1e-4 * scale, "element {i}: op {} vs finite difference {fd}", g[i]);
    }
}

/// Adam + clip against torch.optim.Adam (betas 0.5/0.9, eps 1e-8) with the cosine lr and the
/// ImageNet channel-0 clip, three steps:
/// ```python
/// x = torch.tensor([0.5, -1.25, 2.0, 0.0, 3.0e-3, -0.75], requires_grad=True)
/// opt = torch.optim.Adam([x], lr=0.25, betas=[0.5, 0.9], eps=1e-8)
/// grads = [[0.1, -0.2, 0.0, 1e-9, 5.0, -3.0], [-0.3, 0.2, 0.4, 0.0, 5.0, 1.0], [0.05, 0.05, -0.05, 2.0, -1.0, 0.5]]
/// for t, g in enumerate(grads):
///     for pg in opt.param_groups: pg['lr'] = 0.5 * (1 + np.cos(np.pi * t / 3)) * 0.25
///     x.grad = torch.tensor(g); opt.step()
///     x.data = torch.clamp(x.data, -0.485 / 0.229, (1 - 0.485) / 0.229)
/// ```
/// Same fp32 operations in the same order: agreement to 2 ulp (2.5e-7 relative).
#[test]
fn adam_step_and_clip_match_pytorch() {
    let grads = [[0.1f32, -0.2, 0.0, 1e-9, 5.0, -3.0], [-0.3, 0.2, 0.4, 0.0, 5.0, 1.0], [0.05, 0.05, -0.05, 2.0, -1.0, 0.5]];
    let want = [
        [0.250_000_03_f32, -1.0, 2.0, -0.022_727_272, -0.247, -0.5],
        [0.386_901_86, -1.0625, 1.827_699_4, -0.028_574_817, -0.434_5, -0.471_441_45],
        [0.401_471_2, -1.084_580_2, 1.804_658_5, -0.087_367_95, -0.458_943_9, -0.476_500_8],
    ];
    let mut x = vec![0.5f32, -1.25, 2.0, 0.0, 3.0e-3, -0.75];
    let (mut m, mut v) = (vec![0.0; 6], vec![0.0; 6]);
    let clip = ClipMode::Normalized { mean: vec![0.485], std: vec![0.229] };
    let (lo, hi) = clip.bounds(1);
    for t in 0..3 {
        let s = AdamScalars::new(cosine_lr(0.25, t, 3), 0.5, 0.9, 1e-8, t as u32 + 1);
        adam_clip(1, 6, &s, &mut x, &grads[t], &mut m, &mut v, &lo, &hi);
        for (i, (&got, &w)) in x.iter().zip(&want[t]).enumerate() {
            assert!((got - w).abs() <= 2.5e-7 * w.abs().max(1e-3), "step {t} element {i}: {got} vs PyTorch {w}");
        }
    }
}

#[test]
fn clip_bounds_are_the_normalised_unit_interval() {
    let clip = ClipMode::Normalized { mean: vec![0.485, 0.456, 0.406], std: vec![0.229, 0.224, 0.225] };
    let (lo, hi) = clip.bounds(3);
    for c in 0..3 {
        assert!((clip.to_unit(c, lo[c]) - 0.0).abs() < 1e-6 && (clip.to_unit(c, hi[c]) - 1.0).abs() < 1e-6);
    }
    assert_eq!(ClipMode::Unit.bounds(2), (vec![0.0, 0.0], vec![1.0, 1.0]));
}

/// conv dgrad (Store) is the adjoint of the raw conv fprop: <conv(x), dy> = <x, dgrad(dy)>, for
/// strides, pads and 1x1 convs; f64 dot products of fp32 GEMM results agree to ~1e-6 relative.
#[test]
fn conv_dgrad_is_the_adjoint_of_fprop() {
    let mut rng = StdRng::seed_from_u64(4);
    let geoms = [
        ConvGeom { c: 3, k: 5, r: 3, s: 3, stride: 1, pad: 1 },
        ConvGeom { c: 4, k: 6, r: 3, s: 3, stride: 2, pad: 1 },
        ConvGeom { c: 3, k: 4, r: 7, s: 7, stride: 2, pad: 3 },
        ConvGeom { c: 5, k: 7, r: 1, s: 1, stride: 1, pad: 0 },
        ConvGeom { c: 5, k: 7, r: 1, s: 1, stride: 2, pad: 0 },
    ];
    for g in geoms {
        let p = ConvProblem::new(3, 11, 9, &g);
        let x = randn(&mut rng, p.input_len());
        let w = randn(&mut rng, p.weight_len());
        let dy = randn(&mut rng, p.output_len());
        let k = g.k;
        let (zeros, ones) = (vec![0.0; k], vec![1.0; k]);
        let mut y = vec![0.0; p.output_len()];
        let mut out = vec![0.0; p.output_len()];
        let epi = FpropEpilogue {
            bn: BnAffine { mean: &zeros[..], scale: &ones[..], beta: &zeros[..] },
            residual: None,
            relu: false,
            y: Some(&mut y[..]),
            stats: None,
        };
        conv::fprop(&p, &x, &w, epi, &mut out);
        let mut dx = vec![0.0; p.input_len()];
        conv::dgrad(&p, &dy, &w, &x, DgradEpilogue::Store, &mut dx);
        let (lhs, rhs) = (dot(&y, &dy), dot(&x, &dx));
        assert!((lhs - rhs).abs() <= 1e-5 * lhs.abs().max(1.0), "{g:?}: {lhs} vs {rhs}");
    }
}

/// SRe2L's image priors: gradient against f64 central differences of the loss.
#[test]
fn image_prior_gradient_matches_finite_differences() {
    let mut rng = StdRng::seed_from_u64(5);
    let (n, c, h, w) = (2, 2, 4, 5);
    let x = randn(&mut rng, n * c * h * w);
    let (tv, l2) = (0.3, 0.2);
    let mut g = vec![0.0; x.len()];
    let base = image_prior(n, c, h, w, &x, tv, l2, &mut g);
    assert!(base > 0.0);
    for i in (0..x.len()).step_by(3) {
        let (mut a, mut b) = (x.clone(), x.clone());
        a[i] += 1e-3;
        b[i] -= 1e-3;
        let mut scratch = vec![0.0; x.len()];
        let fd = (image_prior(n, c, h, w, &a, tv, l2, &mut scratch) - image_prior(n, c, h, w, &b, tv, l2, &mut scratch)) / 2e-3;
        // f32 perturbation of 1e-3 on values ~1: finite-difference error ~1e-4 of the gradient scale
        assert!((g[i] as f64 - fd).abs() < 2e-3, "element {i}: {} vs {fd}", g[i]);
    }
}
