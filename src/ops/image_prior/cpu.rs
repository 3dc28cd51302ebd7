//! CPU image priors (f64 norms).

/// The four neighbour pairs of the TV term as (dy, dx) offsets of the first and second operand.
const PAIRS: [((usize, usize), (usize, usize)); 4] = [
    ((0, 0), (0, 1)), // d1: horizontal
    ((0, 0), (1, 0)), // d2: vertical
    ((1, 0), (0, 1)), // d3: anti-diagonal
    ((0, 0), (1, 1)), // d4: diagonal
];

/// Adds the weighted prior gradients to `grad` and returns the weighted loss.
#[allow(clippy::too_many_arguments)]
pub fn image_prior(n: usize, c: usize, h: usize, w: usize, x: &[f32], tv_l2: f64, l2_scale: f64, grad: &mut [f32]) -> f64 {
    assert!(x.len() == n * c * h * w && grad.len() == x.len());
    let mut loss = 0.0;
    if tv_l2 > 0.0 && h > 1 && w > 1 {
        for &((ay, ax), (by, bx)) in &PAIRS {
            // region of valid first-operand positions: rows 0..h-1 or 1..h etc.
            let (rows, cols) = (h - (ay.max(by) - ay.min(by)), w - (ax.max(bx) - ax.min(bx)));
            let diff = |plane: &[f32], i: usize, j: usize| plane[(i + ay) * w + j + ax] as f64 - plane[(i + by) * w + j + bx] as f64;
            let mut sq = 0f64;
            for plane in x.chunks(h * w) {
                for i in 0..rows {
                    for j in 0..cols {
                        sq += diff(plane, i, j).powi(2);
                    }
                }
            }
            let norm = sq.sqrt();
            loss += tv_l2 * norm;
            if norm > 0.0 {
                for (plane, g) in x.chunks(h * w).zip(grad.chunks_mut(h * w)) {
                    for i in 0..rows {
                        for j in 0..cols {
                            let d = tv_l2 * diff(plane, i, j) / norm;
                            g[(i + ay) * w + j + ax] += d as f32;
                            g[(i + by) * w + j + bx] -= d as f32;
                        }
                    }
                }
            }
        }
    }
    if l2_scale > 0.0 {
        let per = c * h * w;
        for (xi, gi) in x.chunks(per).zip(grad.chunks_mut(per)) {
            let norm = xi.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
            loss += l2_scale * norm / n as f64;
            if norm > 0.0 {
                for (g, &v) in gi.iter_mut().zip(xi) {
                    *g += (l2_scale * v as f64 / (norm * n as f64)) as f32;
                }
            }
        }
    }
    loss
}
