//! Learning-rate schedules, both cosine, each in the operation order of the official code it
//! reproduces (so a schedule is bit-exact, not merely close):
//!
//! - [`cosine_lr`]: recover's, SRe2L / CDA `lr_cosine_policy` without warm-up, set before each
//!   iteration: `0.5 * (1 + cos(pi * t / T)) * base`.
//! - [`Cosine`]: training's, cosine decay with an optional linear warm-up, stepped per iteration or
//!   per epoch:
//!
//!   lr(t) = base * min(1, (t + 1) / warmup) * 0.5 * (1 + cos(pi * t / total))     (warmup > 0)
//!   lr(t) = base * 0.5 * (1 + cos(pi * t / total))                                 (warmup = 0)
//!
//!   Per iteration with a one-epoch warm-up this is weights/train_fashion_mnist_teacher.py's schedule;
//!   per epoch without warm-up it is SRe2L/CDA validate's `LambdaLR(0.5 * (1 + cos(pi * epoch /
//!   epochs)))` (epoch 0 trains at the base rate).

/// Learning rate at iteration t of T, set before the step (SRe2L's `lr_cosine_policy`, no warm-up).
pub fn cosine_lr(base_lr: f64, t: usize, total: usize) -> f64 {
    0.5 * (1.0 + (std::f64::consts::PI * t as f64 / total as f64).cos()) * base_lr
}

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Cosine {
    pub base: f64,
    /// Steps (iterations or epochs) over which the cosine falls from base to 0.
    pub total: usize,
    /// Linear warm-up steps (0 = none).
    pub warmup: usize,
}

impl Cosine {
    pub fn lr(&self, t: usize) -> f64 {
        let warm = if self.warmup > 0 { ((t + 1) as f64 / self.warmup as f64).min(1.0) } else { 1.0 };
        let frac = if self.total > 0 { t as f64 / self.total as f64 } else { 0.0 };
        self.base * warm * 0.5 * (1.0 + (std::f64::consts::PI * frac).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lr_follows_the_official_cosine() {
        // lr_cosine_policy(0.25, 0, 4000): 0.5 * (1 + cos(pi * e / 4000)) * 0.25
        assert_eq!(cosine_lr(0.25, 0, 4000), 0.25);
        assert!((cosine_lr(0.25, 2000, 4000) - 0.125).abs() < 1e-15);
        assert!((cosine_lr(0.25, 1000, 4000) - 0.5 * (1.0 + (std::f64::consts::FRAC_PI_4).cos()) * 0.25).abs() < 1e-15);
        assert!(cosine_lr(0.25, 3999, 4000) > 0.0);
    }

    #[test]
    fn cosine_with_warmup_matches_the_formula() {
        let s = Cosine { base: 0.1, total: 100, warmup: 10 };
        assert!((s.lr(0) - 0.1 * 0.1).abs() < 1e-12);
        assert!((s.lr(9) - 0.1 * 0.5 * (1.0 + (std::f64::consts::PI * 0.09).cos())).abs() < 1e-12);
        assert!((s.lr(50) - 0.05).abs() < 1e-12);
        assert!(s.lr(100).abs() < 1e-12);
        let e = Cosine { base: 1e-3, total: 300, warmup: 0 };
        assert_eq!(e.lr(0), 1e-3);
    }
}
