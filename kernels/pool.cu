// pool: the ImageNet stem's max pool and the global average pool before the fc head, forward and
// backward (semantics: src/ops/pool/mod.rs, CPU twin src/ops/pool/cpu.rs).
//
// maxpool_fwd_f32: x N C H W -> out N C P Q and argmax (flat index h*W + w in the input plane).
//   PyTorch rules: padding never wins, the first maximum in scan order (row, then column) wins, NaN
//   propagates (a NaN is taken, and a later NaN replaces it). One thread per output element.
// maxpool_bwd_f32: dx (overwritten) gets each output gradient at its argmax. Written as a gather: one
//   thread per input element visits the (at most ceil(window/stride)^2) outputs whose windows cover it,
//   in increasing output order, and sums those whose argmax is this element. Deterministic, no atomics,
//   no zero-fill pass, and the same summation order as the CPU twin (bit-identical results).
// avgpool_fwd_f32: out[n*C + c] = mean of plane (n, c), summed in float64. One warp per plane,
//   8 planes per 256-thread block.
// avgpool_bwd_f32: dx = dout[plane] * (1/HW) where x > 0, else 0 (the last block's output is a ReLU
//   output). One thread per element.
// Launch shapes: 1-D grids of 256-thread blocks. Version 1 (this file).
#include "common.cuh"

// Mirrors `PoolProblem` in src/ops/pool/mod.rs.
struct PoolProblem {
    int32_t n, c, h, w, p, q, window, stride, pad, reserved;
};
CDA_PARAMS_SIZE(PoolProblem, 40);
CDA_PARAMS_OFFSET(PoolProblem, n, 0);
CDA_PARAMS_OFFSET(PoolProblem, c, 4);
CDA_PARAMS_OFFSET(PoolProblem, h, 8);
CDA_PARAMS_OFFSET(PoolProblem, w, 12);
CDA_PARAMS_OFFSET(PoolProblem, p, 16);
CDA_PARAMS_OFFSET(PoolProblem, q, 20);
CDA_PARAMS_OFFSET(PoolProblem, window, 24);
CDA_PARAMS_OFFSET(PoolProblem, stride, 28);
CDA_PARAMS_OFFSET(PoolProblem, pad, 32);
CDA_PARAMS_OFFSET(PoolProblem, reserved, 36);

CDA_GLOBAL void maxpool_fwd_f32(PoolProblem p, const float* __restrict__ x, float* __restrict__ out,
                                int32_t* __restrict__ argmax) {
    const int64_t total = (int64_t)p.n * p.c * p.p * p.q;
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    const int oq = (int)(i % p.q);
    const int op = (int)((i / p.q) % p.p);
    const int64_t plane = i / ((int64_t)p.p * p.q);
    const float* src = x + plane * p.h * p.w;
    const int h0 = op * p.stride - p.pad, w0 = oq * p.stride - p.pad;
    const int h_end = cda_min(h0 + p.window, p.h), w_end = cda_min(w0 + p.window, p.w);
    float best = cda_neg_inf();
    int best_i = -1;
    for (int ih = cda_max(h0, 0); ih < h_end; ++ih) {
        for (int iw = cda_max(w0, 0); iw < w_end; ++iw) {
            const int j = ih * p.w + iw;
            const float v = src[j];
            if (v > best || cda_isnan(v) || best_i < 0) {
                best = v;
                best_i = j;
            }
        }
    }
    out[i] = best;
    argmax[i] = best_i;
}
CDA_EXPORT(maxpool_fwd_f32)

CDA_GLOBAL void maxpool_bwd_f32(PoolProblem p, const float* __restrict__ dout, const int32_t* __restrict__ argmax,
                                float* __restrict__ dx) {
    const int64_t total = (int64_t)p.n * p.c * p.h * p.w;
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    const int iw = (int)(i % p.w);
    const int ih = (int)((i / p.w) % p.h);
    const int64_t plane = i / ((int64_t)p.h * p.w);
    const int self = ih * p.w + iw;
    // Outputs op with op*stride - pad <= ih < op*stride - pad + window.
    const int hp = ih + p.pad, wp = iw + p.pad;
    const int op_lo = hp - p.window + 1 <= 0 ? 0 : (hp - p.window + p.stride) / p.stride;
    const int op_hi = cda_min(hp / p.stride, p.p - 1);
    const int oq_lo = wp - p.window + 1 <= 0 ? 0 : (wp - p.window + p.stride) / p.stride;
    const int oq_hi = cda_min(wp / p.stride, p.q - 1);
    const float* g = dout + plane * p.p * p.q;
    const int32_t* am = argmax + plane * p.p * p.q;
    float acc = 0.f;
    for (int op = op_lo; op <= op_hi; ++op) {
        for (int oq = oq_lo; oq <= oq_hi; ++oq) {
            const int o = op * p.q + oq;
            if (am[o] == self) acc += g[o];
        }
    }
    dx[i] = acc;
}
CDA_EXPORT(maxpool_bwd_f32)

CDA_GLOBAL void __launch_bounds__(256) avgpool_fwd_f32(int32_t nc, int32_t hw, const float* __restrict__ x,
                                                       float* __restrict__ out) {
    const int warp = (int)(threadIdx.x >> 5), lane = (int)(threadIdx.x & 31);
    const int64_t plane = (int64_t)blockIdx.x * (blockDim.x >> 5) + warp;
    // Every lane of the warp takes part in the shuffle reduction, even past the last plane.
    const bool valid = plane < nc;
    double s = 0.0;
    if (valid) {
        const float* src = x + plane * hw;
        for (int j = lane; j < hw; j += 32) s += (double)src[j];
    }
    s = cda_warp_sum(s);
    if (valid && lane == 0) out[plane] = (float)(s / (double)hw);
}
CDA_EXPORT(avgpool_fwd_f32)

CDA_GLOBAL void avgpool_bwd_f32(int32_t nc, int32_t hw, const float* __restrict__ dout, const float* __restrict__ x,
                                float* __restrict__ dx) {
    const int64_t total = (int64_t)nc * hw;
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    const float inv = 1.0f / (float)hw;
    const float v = dout[i / hw] * inv;
    dx[i] = x[i] > 0.f ? v : 0.f;
}
CDA_EXPORT(avgpool_bwd_f32)
