//! CPU softmax cross-entropy, max-subtracted, accumulated in f64.

/// Returns the mean loss; writes dlogits. Targets must be in 0..classes (checked by the caller).
pub fn softmax_ce(n: usize, classes: usize, logits: &[f32], targets: &[i32], dlogits: &mut [f32]) -> f32 {
    assert!(logits.len() == n * classes && dlogits.len() == n * classes && targets.len() == n);
    let mut total = 0f64;
    for i in 0..n {
        let row = &logits[i * classes..(i + 1) * classes];
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = row.iter().map(|&v| ((v - max) as f64).exp()).sum();
        let t = targets[i] as usize;
        total += sum.ln() - (row[t] - max) as f64;
        let d = &mut dlogits[i * classes..(i + 1) * classes];
        for (j, (dv, &v)) in d.iter_mut().zip(row).enumerate() {
            let p = ((v - max) as f64).exp() / sum;
            *dv = ((p - if j == t { 1.0 } else { 0.0 }) / n as f64) as f32;
        }
    }
    (total / n as f64) as f32
}
