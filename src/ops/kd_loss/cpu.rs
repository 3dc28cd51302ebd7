//! CPU distillation losses, one row (image) at a time in f64.

/// log_softmax(row / t) in f64.
fn log_softmax(row: &[f32], t: f64, out: &mut [f64]) {
    let max = row.iter().map(|&v| v as f64 / t).fold(f64::NEG_INFINITY, f64::max);
    let lse = row.iter().map(|&v| (v as f64 / t - max).exp()).sum::<f64>().ln() + max;
    for (o, &v) in out.iter_mut().zip(row) {
        *o = v as f64 / t - lse;
    }
}

/// Mean (batchmean) KL(softmax(teacher/T) || softmax(student/T)); writes d loss / d student logits.
pub fn kl_div(n: usize, classes: usize, student: &[f32], teacher: &[f32], temperature: f64, dlogits: &mut [f32]) -> f32 {
    assert!(student.len() == n * classes && teacher.len() == n * classes && dlogits.len() == n * classes, "kl_div operands");
    let mut lq = vec![0f64; classes];
    let mut lp = vec![0f64; classes];
    let mut total = 0f64;
    for i in 0..n {
        let r = i * classes..(i + 1) * classes;
        log_softmax(&student[r.clone()], temperature, &mut lq);
        log_softmax(&teacher[r.clone()], temperature, &mut lp);
        for (j, d) in dlogits[r].iter_mut().enumerate() {
            let p = lp[j].exp();
            if p > 0.0 {
                total += p * (lp[j] - lq[j]);
            }
            *d = ((lq[j].exp() - p) / (n as f64 * temperature)) as f32;
        }
    }
    (total / n as f64) as f32
}

/// Mean cross-entropy against class-probability targets; writes d loss / d logits.
pub fn soft_cross_entropy(n: usize, classes: usize, logits: &[f32], targets: &[f32], dlogits: &mut [f32]) -> f32 {
    assert!(logits.len() == n * classes && targets.len() == n * classes && dlogits.len() == n * classes, "soft_cross_entropy operands");
    let mut lq = vec![0f64; classes];
    let mut total = 0f64;
    for i in 0..n {
        let r = i * classes..(i + 1) * classes;
        log_softmax(&logits[r.clone()], 1.0, &mut lq);
        let t = &targets[r.clone()];
        let tsum: f64 = t.iter().map(|&v| v as f64).sum();
        for (j, d) in dlogits[r].iter_mut().enumerate() {
            total -= t[j] as f64 * lq[j];
            *d = ((lq[j].exp() * tsum - t[j] as f64) / n as f64) as f32;
        }
    }
    (total / n as f64) as f32
}
