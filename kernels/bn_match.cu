// bn_match: the recover loss's BatchNorm-statistic term of one BN layer and its gradient coefficients
// (semantics: src/ops/bn_match/mod.rs, CPU twin src/ops/bn_match/cpu.rs); bn_backward: the gradient
// through an eval-mode BN whose input also carries that term.
//
// bn_match_f32: stats = [mean (K), biased var (K)] of the BN input (from the conv fprop epilogue),
//   r = ||var - rv||_2 + ||mean - rm||_2 -> losses[slot]
//   coef = [a (K), b (K), mean (K)], a = weight * gm / count, b = 2 * weight * gv / count,
//   gm = (mean - rm) / ||mean - rm||, gv = (var - rv) / ||var - rv|| (0 where a norm is 0).
//   Norms are accumulated in float64 from float32 differences, as on the CPU.
//   Launch: one block of 256 threads (K is at most a few thousand); deterministic block reduction.
// bn_backward_f32: dy = scale[c] * dz + a[c] + b[c] * (y - mean[c]) over an N C (HW) tensor.
//   Launch: one thread per element, ceil(N*C*HW / 256) blocks of 256.
// Version 1 (this file).
#include "common.cuh"

struct BnMatchArgs {
    const float* stats;
    const float* running_mean;
    const float* running_var;
    float* coef;
    float* losses;
    double count;
    double weight;
    int32_t k, slot;
};
CDA_PARAMS_SIZE(BnMatchArgs, 64);
CDA_PARAMS_OFFSET(BnMatchArgs, stats, 0);
CDA_PARAMS_OFFSET(BnMatchArgs, running_mean, 8);
CDA_PARAMS_OFFSET(BnMatchArgs, running_var, 16);
CDA_PARAMS_OFFSET(BnMatchArgs, coef, 24);
CDA_PARAMS_OFFSET(BnMatchArgs, losses, 32);
CDA_PARAMS_OFFSET(BnMatchArgs, count, 40);
CDA_PARAMS_OFFSET(BnMatchArgs, weight, 48);
CDA_PARAMS_OFFSET(BnMatchArgs, k, 56);
CDA_PARAMS_OFFSET(BnMatchArgs, slot, 60);

struct BnBackwardArgs {
    const float* dz;
    const float* y;
    const float* scale;
    const float* coef;
    float* dy;
    int32_t n, c, hw, reserved;
};
CDA_PARAMS_SIZE(BnBackwardArgs, 56);
CDA_PARAMS_OFFSET(BnBackwardArgs, dz, 0);
CDA_PARAMS_OFFSET(BnBackwardArgs, y, 8);
CDA_PARAMS_OFFSET(BnBackwardArgs, scale, 16);
CDA_PARAMS_OFFSET(BnBackwardArgs, coef, 24);
CDA_PARAMS_OFFSET(BnBackwardArgs, dy, 32);
CDA_PARAMS_OFFSET(BnBackwardArgs, n, 40);
CDA_PARAMS_OFFSET(BnBackwardArgs, c, 44);
CDA_PARAMS_OFFSET(BnBackwardArgs, hw, 48);
CDA_PARAMS_OFFSET(BnBackwardArgs, reserved, 52);

CDA_GLOBAL void __launch_bounds__(256) bn_match_f32(BnMatchArgs a) {
    __shared__ double scratch[32];
    const int k = a.k;
    const float* mean = a.stats;
    const float* var = a.stats + k;
    double sm = 0.0, sv = 0.0;
    for (int c = threadIdx.x; c < k; c += blockDim.x) {
        double dm = (double)(mean[c] - a.running_mean[c]);
        double dv = (double)(var[c] - a.running_var[c]);
        sm += dm * dm;
        sv += dv * dv;
    }
    const double n_mean = sqrt(cda_block_sum(sm, scratch));
    const double n_var = sqrt(cda_block_sum(sv, scratch));
    for (int c = threadIdx.x; c < k; c += blockDim.x) {
        double gm = n_mean > 0.0 ? (double)(mean[c] - a.running_mean[c]) / n_mean : 0.0;
        double gv = n_var > 0.0 ? (double)(var[c] - a.running_var[c]) / n_var : 0.0;
        a.coef[c] = (float)(a.weight * gm / a.count);
        a.coef[k + c] = (float)(2.0 * a.weight * gv / a.count);
        a.coef[2 * k + c] = mean[c];
    }
    if (threadIdx.x == 0) a.losses[a.slot] = (float)(n_var + n_mean);
}
CDA_EXPORT(bn_match_f32)

CDA_GLOBAL void bn_backward_f32(BnBackwardArgs a) {
    const int64_t total = (int64_t)a.n * a.c * a.hw;
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    const int ch = (int)((i / a.hw) % a.c);
    const float* coef = a.coef;
    a.dy[i] = a.scale[ch] * a.dz[i] + coef[ch] + coef[a.c + ch] * (a.y[i] - coef[2 * a.c + ch]);
}
CDA_EXPORT(bn_backward_f32)
