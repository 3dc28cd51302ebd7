//! CDA's crop-scale curriculum (easy2hard-mode, milestone): the lower bound of RandomResizedCrop's
//! scale at each recover iteration. The learning-rate schedule is `crate::schedule::cosine_lr`.

use serde::{Deserialize, Serialize};

/// How the lower bound of RandomResizedCrop's scale moves from 1.0 to `MIN_SCALE` (CDA's easy2hard-mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Curriculum {
    /// Whole images until the milestone, then (0.08, 1).
    Step,
    /// Linear decrease over the milestone window.
    Linear,
    /// Cosine decrease over the milestone window (the official setting).
    Cosine,
}

/// RandomResizedCrop's default lower scale bound, where every curriculum ends.
pub const MIN_SCALE: f64 = 0.08;
pub const MAX_SCALE: f64 = 1.0;

/// Lower crop-scale bound at iteration t of T (CDA, recover_cda_*.py). `milestone` = 0 is plain SRe2L.
/// `reverse` is the hard-to-easy ablation: the bound mirrored, 1.08 - bound, so it rises from 0.08 to 1.
pub fn min_crop_scale(mode: Curriculum, milestone: f64, t: usize, total: usize, reverse: bool) -> f64 {
    min_crop_scale_to(MIN_SCALE, mode, milestone, t, total, reverse)
}

/// [`min_crop_scale`] with the curriculum ending at `floor` instead of 0.08 (EDC crops with scale
/// 0.5..1): the same shape between 1.0 and `floor`; reversed, it rises from `floor` to 1.
pub fn min_crop_scale_to(floor: f64, mode: Curriculum, milestone: f64, t: usize, total: usize, reverse: bool) -> f64 {
    let window = milestone * total as f64;
    let t = t as f64;
    let easy_to_hard = if t < window {
        match mode {
            Curriculum::Step => 1.0,
            Curriculum::Linear => floor + (1.0 - floor) * (1.0 - t / window),
            Curriculum::Cosine => floor + (1.0 - floor) * (1.0 + (std::f64::consts::PI * t / window).cos()) / 2.0,
        }
    } else {
        floor
    };
    if reverse {
        floor + MAX_SCALE - easy_to_hard
    } else {
        easy_to_hard
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_curriculum_can_end_at_another_floor() {
        // EDC's RandomResizedCrop(scale=(0.5, 1)): the cosine falls from 1 to 0.5 over the window.
        assert_eq!(min_crop_scale_to(0.5, Curriculum::Cosine, 1.0, 0, 100, false), 1.0);
        assert!((min_crop_scale_to(0.5, Curriculum::Cosine, 1.0, 50, 100, false) - 0.75).abs() < 1e-12);
        assert_eq!(min_crop_scale_to(0.5, Curriculum::Cosine, 0.5, 60, 100, false), 0.5);
        assert_eq!(min_crop_scale_to(0.5, Curriculum::Step, 0.0, 0, 100, false), 0.5, "milestone 0: the floor throughout");
        assert_eq!(min_crop_scale_to(0.5, Curriculum::Cosine, 1.0, 0, 100, true), 0.5, "reversed: rises from the floor");
        // The official floor gives the official bound exactly.
        for t in 0..100 {
            assert_eq!(min_crop_scale_to(MIN_SCALE, Curriculum::Linear, 0.7, t, 100, false), min_crop_scale(Curriculum::Linear, 0.7, t, 100, false));
        }
    }

    #[test]
    fn curricula_match_recover_cda() {
        let (t_total, m) = (1000, 0.5);
        // before the milestone window ends
        assert_eq!(min_crop_scale(Curriculum::Step, m, 0, t_total, false), 1.0);
        assert_eq!(min_crop_scale(Curriculum::Step, m, 499, t_total, false), 1.0);
        assert_eq!(min_crop_scale(Curriculum::Linear, m, 0, t_total, false), 1.0);
        assert!((min_crop_scale(Curriculum::Linear, m, 250, t_total, false) - (0.08 + 0.92 * 0.5)).abs() < 1e-12);
        assert!((min_crop_scale(Curriculum::Cosine, m, 250, t_total, false) - (0.08 + 0.92 * 0.5)).abs() < 1e-12);
        assert!((min_crop_scale(Curriculum::Cosine, m, 125, t_total, false) - (0.08 + 0.92 * (1.0 + (0.25 * std::f64::consts::PI).cos()) / 2.0)).abs() < 1e-12);
        // after it, and milestone 0 (SRe2L)
        for mode in [Curriculum::Step, Curriculum::Linear, Curriculum::Cosine] {
            assert_eq!(min_crop_scale(mode, m, 500, t_total, false), 0.08);
            assert_eq!(min_crop_scale(mode, 0.0, 0, t_total, false), 0.08);
        }
        // reverse mirrors the bound
        assert!((min_crop_scale(Curriculum::Cosine, 1.0, 0, t_total, true) - 0.08).abs() < 1e-12);
        assert!((min_crop_scale(Curriculum::Cosine, 1.0, 999, t_total, true) - 1.0).abs() < 1e-4);
        assert_eq!(min_crop_scale(Curriculum::Step, 0.5, 600, t_total, true), 1.0);
    }
}
