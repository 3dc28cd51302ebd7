// image_prior: SRe2L / DeepInversion's optional image priors on the augmented batch x (N C H W)
// (semantics: src/ops/image_prior/mod.rs, CPU twin src/ops/image_prior/cpu.rs):
//   TV-L2 = sum over the four neighbour pairs d of ||d||_F (over the whole batch), L2 = mean_n ||x_n||,
//   loss = tv_l2 * TV-L2 + l2_scale * L2, grad += d loss / dx.
// Pairs (first operand offset a, second operand offset b), valid positions (i, j) in
// [0, H - |ay - by|) x [0, W - |ax - bx|):  d1 (0,0)-(0,1), d2 (0,0)-(1,0), d3 (1,0)-(0,1), d4 (0,0)-(1,1).
//
// Three launches, all deterministic (no atomics):
//   image_prior_partials_f64: one 256-thread block per (n, c) plane: float64 sums of d^2 for the four
//     pairs and of x^2, into ws[PARTIALS + plane * 5 + {0..4}].
//   image_prior_norms_f64: one block: the four TV norms (block sums over planes), the N image norms
//     (each thread sums its image's C planes in order), and, in thread 0 and in the CPU twin's order,
//     the loss into ws[0].
//   image_prior_grad_f32: one thread per element gathers what the CPU twin scatters: per pair, the
//     term where this element is the first operand (+tv_l2 d / ||d||) and where it is the second
//     (-tv_l2 d / ||d||), added in the CPU's loop order (the source position with the lower row-major
//     index first), then the L2 term l2_scale * x / (||x_n|| N); each term computed in float64 and
//     rounded to fp32 before it is added, as on the CPU. A zero norm contributes nothing.
// Workspace (float64): [loss][4 TV norms][N image norms][N*C*5 partials].
// Version 1 (this file).
#include "common.cuh"

struct ImagePriorArgs {
    const float* x;
    float* grad;
    double* ws;
    double tv_l2;
    double l2_scale;
    int32_t n, c, h, w;
};
CDA_PARAMS_SIZE(ImagePriorArgs, 56);
CDA_PARAMS_OFFSET(ImagePriorArgs, x, 0);
CDA_PARAMS_OFFSET(ImagePriorArgs, grad, 8);
CDA_PARAMS_OFFSET(ImagePriorArgs, ws, 16);
CDA_PARAMS_OFFSET(ImagePriorArgs, tv_l2, 24);
CDA_PARAMS_OFFSET(ImagePriorArgs, l2_scale, 32);
CDA_PARAMS_OFFSET(ImagePriorArgs, n, 40);
CDA_PARAMS_OFFSET(ImagePriorArgs, c, 44);
CDA_PARAMS_OFFSET(ImagePriorArgs, h, 48);
CDA_PARAMS_OFFSET(ImagePriorArgs, w, 52);

namespace prior {
constexpr int AY[4] = {0, 0, 1, 0}, AX[4] = {0, 0, 0, 0}, BY[4] = {0, 1, 0, 1}, BX[4] = {1, 0, 1, 1};

CDA_DEVICE bool tv_on(const ImagePriorArgs& a) { return a.tv_l2 > 0.0 && a.h > 1 && a.w > 1; }
CDA_DEVICE int64_t partials(const ImagePriorArgs& a) { return 5 + a.n; }
CDA_DEVICE int rows(const ImagePriorArgs& a, int k) { return a.h - (AY[k] > BY[k] ? AY[k] - BY[k] : BY[k] - AY[k]); }
CDA_DEVICE int cols(const ImagePriorArgs& a, int k) { return a.w - (AX[k] > BX[k] ? AX[k] - BX[k] : BX[k] - AX[k]); }
// d at valid position (i, j) of pair k in plane `src`, in float64.
CDA_DEVICE double diff(const ImagePriorArgs& a, const float* src, int k, int i, int j) {
    return (double)src[(i + AY[k]) * a.w + j + AX[k]] - (double)src[(i + BY[k]) * a.w + j + BX[k]];
}
}  // namespace prior

CDA_GLOBAL void __launch_bounds__(256) image_prior_partials_f64(ImagePriorArgs a) {
    __shared__ double scratch[32];
    const int64_t plane = blockIdx.x;
    const float* src = a.x + plane * a.h * a.w;
    double* out = a.ws + prior::partials(a) + plane * 5;
    for (int k = 0; k < 4; ++k) {
        double sq = 0.0;
        if (prior::tv_on(a)) {
            const int rows = prior::rows(a, k), cols = prior::cols(a, k);
            for (int e = threadIdx.x; e < rows * cols; e += blockDim.x) {
                const double d = prior::diff(a, src, k, e / cols, e % cols);
                sq += d * d;
            }
        }
        const double total = cda_block_sum(sq, scratch);
        if (threadIdx.x == 0) out[k] = total;
    }
    double sq = 0.0;
    for (int e = threadIdx.x; e < a.h * a.w; e += blockDim.x) sq += (double)src[e] * (double)src[e];
    const double total = cda_block_sum(sq, scratch);
    if (threadIdx.x == 0) out[4] = total;
}
CDA_EXPORT(image_prior_partials_f64)

CDA_GLOBAL void __launch_bounds__(256) image_prior_norms_f64(ImagePriorArgs a) {
    __shared__ double scratch[32];
    const int planes = a.n * a.c;
    const double* part = a.ws + prior::partials(a);
    for (int k = 0; k < 4; ++k) {
        double s = 0.0;
        for (int pl = threadIdx.x; pl < planes; pl += blockDim.x) s += part[pl * 5 + k];
        const double total = cda_block_sum(s, scratch);
        if (threadIdx.x == 0) a.ws[1 + k] = sqrt(total);
    }
    for (int img = threadIdx.x; img < a.n; img += blockDim.x) {
        double s = 0.0;
        for (int ch = 0; ch < a.c; ++ch) s += part[(img * a.c + ch) * 5 + 4];
        a.ws[5 + img] = sqrt(s);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        double loss = 0.0;
        if (prior::tv_on(a))
            for (int k = 0; k < 4; ++k) loss += a.tv_l2 * a.ws[1 + k];
        if (a.l2_scale > 0.0)
            for (int img = 0; img < a.n; ++img) loss += a.l2_scale * a.ws[5 + img] / (double)a.n;
        a.ws[0] = loss;
    }
}
CDA_EXPORT(image_prior_norms_f64)

CDA_GLOBAL void image_prior_grad_f32(ImagePriorArgs a) {
    const int64_t total = (int64_t)a.n * a.c * a.h * a.w;
    const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= total) return;
    const int X = (int)(idx % a.w);
    const int Y = (int)((idx / a.w) % a.h);
    const int64_t plane = idx / ((int64_t)a.h * a.w);
    const float* src = a.x + plane * a.h * a.w;
    float g = a.grad[idx];
    if (prior::tv_on(a)) {
        for (int k = 0; k < 4; ++k) {
            const double norm = a.ws[1 + k];
            if (!(norm > 0.0)) continue;
            const int rows = prior::rows(a, k), cols = prior::cols(a, k);
            // This element is the first operand at position (Y - ay, X - ax), the second at (Y - by, X - bx).
            const int i1 = Y - prior::AY[k], j1 = X - prior::AX[k];
            const int i2 = Y - prior::BY[k], j2 = X - prior::BX[k];
            const bool first = i1 >= 0 && i1 < rows && j1 >= 0 && j1 < cols;
            const bool second = i2 >= 0 && i2 < rows && j2 >= 0 && j2 < cols;
            const float t1 = first ? (float)(a.tv_l2 * prior::diff(a, src, k, i1, j1) / norm) : 0.f;
            const float t2 = second ? (float)(a.tv_l2 * prior::diff(a, src, k, i2, j2) / norm) : 0.f;
            const bool first_before = (int64_t)i1 * cols + j1 < (int64_t)i2 * cols + j2;
            if (first && second) {
                if (first_before) {
                    g += t1;
                    g -= t2;
                } else {
                    g -= t2;
                    g += t1;
                }
            } else if (first) {
                g += t1;
            } else if (second) {
                g -= t2;
            }
        }
    }
    if (a.l2_scale > 0.0) {
        const int img = (int)(plane / a.c);
        const double norm = a.ws[5 + img];
        if (norm > 0.0) g += (float)(a.l2_scale * (double)src[Y * a.w + X] / (norm * (double)a.n));
    }
    a.grad[idx] = g;
}
CDA_EXPORT(image_prior_grad_f32)
