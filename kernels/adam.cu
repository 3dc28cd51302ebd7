// adam: one PyTorch Adam step on the synthetic images followed by recover's per-channel clip, fused
// into one elementwise pass (semantics: src/ops/adam, CPU twin src/ops/adam/cpu.rs).
//
//   m = lerp(m, g, 1 - beta1)            (PyTorch's lerp: start + w*(end-start) for |w| < 0.5, else
//                                          end - (end-start)*(1-w))
//   v = v * beta2 + (1 - beta2) * g * g
//   x = x + (-step_size) * (m / (sqrt(v) / bias_correction2_sqrt + eps))
//   x = clamp(x, lo[c], hi[c])            (NaN stays NaN)
// Layout: x, g, m, v are N C (HW) float32; lo, hi have C entries. The step scalars are read from a
// device buffer (AdamScalars: beta1, beta2, step_size, bias_correction2_sqrt, eps) so that a captured
// CUDA graph replays with the learning rate of each iteration.
// Every multiply and add is written with __fmul_rn / __fadd_rn so that nvcc's default FMA contraction
// cannot change results: the step is then bit-identical to the CPU twin (sqrt and division are IEEE
// round-to-nearest on both sides without fast math). Over thousands of iterations this keeps the two
// backends' images identical rather than merely close.
// Launch: one thread per element, 1-D grid of ceil(N*C*HW / 256) blocks of 256 threads.
// Version 1 (this file): scalar loads. Memory bound: 4 reads + 3 writes of 4 bytes per element.
#include "common.cuh"

struct AdamArgs {
    const float* scalars;
    float* x;
    const float* g;
    float* m;
    float* v;
    const float* lo;
    const float* hi;
    int32_t n, c, hw, reserved;
};
CDA_PARAMS_SIZE(AdamArgs, 72);
CDA_PARAMS_OFFSET(AdamArgs, scalars, 0);
CDA_PARAMS_OFFSET(AdamArgs, x, 8);
CDA_PARAMS_OFFSET(AdamArgs, g, 16);
CDA_PARAMS_OFFSET(AdamArgs, m, 24);
CDA_PARAMS_OFFSET(AdamArgs, v, 32);
CDA_PARAMS_OFFSET(AdamArgs, lo, 40);
CDA_PARAMS_OFFSET(AdamArgs, hi, 48);
CDA_PARAMS_OFFSET(AdamArgs, n, 56);
CDA_PARAMS_OFFSET(AdamArgs, c, 60);
CDA_PARAMS_OFFSET(AdamArgs, hw, 64);
CDA_PARAMS_OFFSET(AdamArgs, reserved, 68);

CDA_GLOBAL void adam_clip_f32(AdamArgs a) {
    const int64_t total = (int64_t)a.n * a.c * a.hw;
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    const float beta1 = a.scalars[0], beta2 = a.scalars[1], step_size = a.scalars[2];
    const float bc2_sqrt = a.scalars[3], eps = a.scalars[4];
    const int ch = (int)((i / a.hw) % a.c);
    const float gi = a.g[i];
    const float mi = cda_lerp_rn(a.m[i], gi, __fadd_rn(1.0f, -beta1));
    const float vi = __fadd_rn(__fmul_rn(a.v[i], beta2), __fmul_rn(__fmul_rn(__fadd_rn(1.0f, -beta2), gi), gi));
    a.m[i] = mi;
    a.v[i] = vi;
    const float denom = __fadd_rn(sqrtf(vi) / bc2_sqrt, eps);
    float xi = __fadd_rn(a.x[i], __fmul_rn(-step_size, mi / denom));
    const float lo = a.lo[ch], hi = a.hi[ch];
    xi = xi < lo ? lo : (xi > hi ? hi : xi);
    a.x[i] = xi;
}
CDA_EXPORT(adam_clip_f32)
