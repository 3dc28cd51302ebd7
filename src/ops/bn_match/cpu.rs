//! CPU BN matching: the per-layer reduction is tiny (K channels), done in f64.

use rayon::prelude::*;

/// `stats` = [mean (K), var (K)]; writes coef = [a, b, mean] (3K) and returns the unweighted loss.
pub fn bn_match(stats: &[f32], running_mean: &[f32], running_var: &[f32], count: f64, weight: f64, coef: &mut [f32]) -> f32 {
    let k = running_mean.len();
    assert!(stats.len() == 2 * k && running_var.len() == k && coef.len() == 3 * k);
    let (mean, var) = stats.split_at(k);
    let norm = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(&x, &y)| ((x - y) as f64).powi(2)).sum::<f64>().sqrt();
    let n_mean = norm(mean, running_mean);
    let n_var = norm(var, running_var);
    for c in 0..k {
        let gm = if n_mean > 0.0 { (mean[c] - running_mean[c]) as f64 / n_mean } else { 0.0 };
        let gv = if n_var > 0.0 { (var[c] - running_var[c]) as f64 / n_var } else { 0.0 };
        coef[c] = (weight * gm / count) as f32;
        coef[k + c] = (2.0 * weight * gv / count) as f32;
        coef[2 * k + c] = mean[c];
    }
    (n_var + n_mean) as f32
}

/// dy = scale * dz + a + b * (y - mean), per channel of an N C HW tensor.
pub fn bn_backward(c: usize, hw: usize, dz: &[f32], y: &[f32], scale: &[f32], coef: &[f32], dy: &mut [f32]) {
    assert!(dz.len() == y.len() && dy.len() == y.len() && scale.len() == c && coef.len() == 3 * c);
    dy.par_chunks_mut(hw).zip(dz.par_chunks(hw).zip(y.par_chunks(hw))).enumerate().for_each(|(plane, (d, (g, yv)))| {
        let ch = plane % c;
        let (sc, a, b, m) = (scale[ch], coef[ch], coef[c + ch], coef[2 * c + ch]);
        for ((dv, &gv), &y) in d.iter_mut().zip(g).zip(yv) {
            *dv = sc * gv + a + b * (y - m);
        }
    });
}
