// batchnorm: BatchNorm2d for training, fused with the residual add and ReLU,
// out = act(bn(y) [+ residual]) (semantics: src/ops/batchnorm/mod.rs, CPU twin src/ops/batchnorm/cpu.rs).
//
// Forward, train mode, two launches:
//   bn_train_stats_f32: one 256-thread block per channel. Mean of the N*HW values (float64 sums), then
//     the biased variance from the squared deviations (v - mean) computed in fp32 and summed in float64,
//     as the CPU twin's two passes. Thread 0 writes save_mean / save_invstd, updates the running
//     statistics (momentum, unbiased variance) and the affine coef[c] = alpha, coef[C + c] = shift.
//   bn_apply_f32: one thread per element, out = act(y * alpha + shift [+ residual]).
// Forward, eval mode: bn_eval_coef_f32 (one thread per channel, the affine from the running statistics),
//   then bn_apply_f32.
// Backward, train mode, two launches:
//   bn_train_bwd_reduce_f32: one block per channel: dbeta = sum g, dot = sum (y - mean) g over the
//     ReLU-masked gradient g (float64 sums); dgamma = dot * invstd; coef3[c] = (dbeta / M,
//     dot * invstd^2 / M, invstd * gamma).
//   bn_train_bwd_apply_f32: one thread per element, dy = (g - coef3.x - (y - mean) * coef3.y) * coef3.z,
//     dresidual = g when asked for.
// The sums are float64 where the CPU sums 8 fp32 lanes per plane and float64 across planes: both are
// within ~1e-7 relative of the exact sum, so results agree to fp32 rounding, not bit for bit.
// Version 1 (this file): one block per channel reduces the whole channel (C blocks: enough at training
// batch sizes; a split reduction would be version 2).
#include "common.cuh"

// Mirrors `BnTrainArgs` in src/ops/batchnorm/mod.rs.
struct BnTrainArgs {
    const float* y;
    const float* gamma;
    const float* beta;
    float* running_mean;
    float* running_var;
    float* save_mean;
    float* save_invstd;
    float* coef;  // 2C: alpha, shift
    double momentum;
    double eps;
    int32_t n, c, hw, reserved;
};
CDA_PARAMS_SIZE(BnTrainArgs, 96);
CDA_PARAMS_OFFSET(BnTrainArgs, y, 0);
CDA_PARAMS_OFFSET(BnTrainArgs, gamma, 8);
CDA_PARAMS_OFFSET(BnTrainArgs, beta, 16);
CDA_PARAMS_OFFSET(BnTrainArgs, running_mean, 24);
CDA_PARAMS_OFFSET(BnTrainArgs, running_var, 32);
CDA_PARAMS_OFFSET(BnTrainArgs, save_mean, 40);
CDA_PARAMS_OFFSET(BnTrainArgs, save_invstd, 48);
CDA_PARAMS_OFFSET(BnTrainArgs, coef, 56);
CDA_PARAMS_OFFSET(BnTrainArgs, momentum, 64);
CDA_PARAMS_OFFSET(BnTrainArgs, eps, 72);
CDA_PARAMS_OFFSET(BnTrainArgs, n, 80);
CDA_PARAMS_OFFSET(BnTrainArgs, c, 84);
CDA_PARAMS_OFFSET(BnTrainArgs, hw, 88);
CDA_PARAMS_OFFSET(BnTrainArgs, reserved, 92);

// Mirrors `BnTrainBwdArgs` in src/ops/batchnorm/mod.rs. `dresidual` is null when not wanted.
struct BnTrainBwdArgs {
    const float* dout;
    const float* out;
    const float* y;
    const float* gamma;
    const float* save_mean;
    const float* save_invstd;
    float* dy;
    float* dgamma;
    float* dbeta;
    float* dresidual;
    float* coef3;  // 3C: grad_mean, k, w
    int32_t n, c, hw, relu;
};
CDA_PARAMS_SIZE(BnTrainBwdArgs, 104);
CDA_PARAMS_OFFSET(BnTrainBwdArgs, dout, 0);
CDA_PARAMS_OFFSET(BnTrainBwdArgs, out, 8);
CDA_PARAMS_OFFSET(BnTrainBwdArgs, y, 16);
CDA_PARAMS_OFFSET(BnTrainBwdArgs, gamma, 24);
CDA_PARAMS_OFFSET(BnTrainBwdArgs, save_mean, 32);
CDA_PARAMS_OFFSET(BnTrainBwdArgs, save_invstd, 40);
CDA_PARAMS_OFFSET(BnTrainBwdArgs, dy, 48);
CDA_PARAMS_OFFSET(BnTrainBwdArgs, dgamma, 56);
CDA_PARAMS_OFFSET(BnTrainBwdArgs, dbeta, 64);
CDA_PARAMS_OFFSET(BnTrainBwdArgs, dresidual, 72);
CDA_PARAMS_OFFSET(BnTrainBwdArgs, coef3, 80);
CDA_PARAMS_OFFSET(BnTrainBwdArgs, n, 88);
CDA_PARAMS_OFFSET(BnTrainBwdArgs, c, 92);
CDA_PARAMS_OFFSET(BnTrainBwdArgs, hw, 96);
CDA_PARAMS_OFFSET(BnTrainBwdArgs, relu, 100);

CDA_GLOBAL void __launch_bounds__(256) bn_train_stats_f32(BnTrainArgs a) {
    __shared__ double scratch[32];
    const int ch = (int)blockIdx.x;
    const int64_t m = (int64_t)a.n * a.hw;
    double s = 0.0;
    for (int64_t t = threadIdx.x; t < m; t += blockDim.x) {
        const int64_t img = t / a.hw, j = t % a.hw;
        s += (double)a.y[(img * a.c + ch) * a.hw + j];
    }
    const double mean = cda_block_sum(s, scratch) / (double)m;
    const float mf = (float)mean;
    double ss = 0.0;
    for (int64_t t = threadIdx.x; t < m; t += blockDim.x) {
        const int64_t img = t / a.hw, j = t % a.hw;
        const float d = a.y[(img * a.c + ch) * a.hw + j] - mf;
        ss += (double)(d * d);
    }
    const double var = cda_block_sum(ss, scratch) / (double)m;
    if (threadIdx.x == 0) {
        const double invstd = 1.0 / sqrt(var + a.eps);
        const float invstd_f = (float)invstd;
        a.save_mean[ch] = mf;
        a.save_invstd[ch] = invstd_f;
        const float alpha = invstd_f * a.gamma[ch];
        a.coef[ch] = alpha;
        a.coef[a.c + ch] = __fadd_rn(a.beta[ch], -__fmul_rn(mf, alpha));  // no FMA contraction: as the CPU
        const double unbiased = m > 1 ? var * (double)m / (double)(m - 1) : var;
        a.running_mean[ch] = (float)(a.momentum * mean + (1.0 - a.momentum) * (double)a.running_mean[ch]);
        a.running_var[ch] = (float)(a.momentum * unbiased + (1.0 - a.momentum) * (double)a.running_var[ch]);
    }
}
CDA_EXPORT(bn_train_stats_f32)

CDA_GLOBAL void bn_eval_coef_f32(BnTrainArgs a) {
    const int ch = (int)(blockIdx.x * blockDim.x + threadIdx.x);
    if (ch >= a.c) return;
    const float invstd = (float)(1.0 / sqrt((double)a.running_var[ch] + a.eps));
    const float alpha = invstd * a.gamma[ch];
    a.coef[ch] = alpha;
    a.coef[a.c + ch] = __fadd_rn(a.beta[ch], -__fmul_rn(a.running_mean[ch], alpha));
}
CDA_EXPORT(bn_eval_coef_f32)

// out = act(y * coef[c] + coef[C + c] [+ residual]); residual may be null.
CDA_GLOBAL void bn_apply_f32(const float* __restrict__ y, const float* __restrict__ coef, const float* __restrict__ residual,
                             float* __restrict__ out, int32_t n, int32_t c, int32_t hw, int32_t relu) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (int64_t)n * c * hw) return;
    const int ch = (int)((i / hw) % c);
    float z = __fadd_rn(__fmul_rn(y[i], coef[ch]), coef[c + ch]);
    if (residual) z = __fadd_rn(z, residual[i]);
    out[i] = relu ? fmaxf(z, 0.0f) : z;
}
CDA_EXPORT(bn_apply_f32)

CDA_DEVICE float bn_masked(const BnTrainBwdArgs& a, int64_t i) {
    return (a.relu && a.out[i] <= 0.0f) ? 0.0f : a.dout[i];
}

CDA_GLOBAL void __launch_bounds__(256) bn_train_bwd_reduce_f32(BnTrainBwdArgs a) {
    __shared__ double scratch[32];
    const int ch = (int)blockIdx.x;
    const int64_t m = (int64_t)a.n * a.hw;
    const float mean = a.save_mean[ch];
    double s = 0.0, dot = 0.0;
    for (int64_t t = threadIdx.x; t < m; t += blockDim.x) {
        const int64_t img = t / a.hw, j = t % a.hw;
        const int64_t i = (img * a.c + ch) * a.hw + j;
        const float g = bn_masked(a, i);
        s += (double)g;
        dot += (double)((a.y[i] - mean) * g);
    }
    const double sum = cda_block_sum(s, scratch);
    const double dotp = cda_block_sum(dot, scratch);
    if (threadIdx.x == 0) {
        const double invstd = (double)a.save_invstd[ch];
        a.dgamma[ch] = (float)(dotp * invstd);
        a.dbeta[ch] = (float)sum;
        a.coef3[3 * ch] = (float)(sum / (double)m);
        a.coef3[3 * ch + 1] = (float)(dotp * invstd * invstd / (double)m);
        a.coef3[3 * ch + 2] = (float)(invstd * (double)a.gamma[ch]);
    }
}
CDA_EXPORT(bn_train_bwd_reduce_f32)

CDA_GLOBAL void bn_train_bwd_apply_f32(BnTrainBwdArgs a) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (int64_t)a.n * a.c * a.hw) return;
    const int ch = (int)((i / a.hw) % a.c);
    const float g = bn_masked(a, i);
    if (a.dresidual) a.dresidual[i] = g;
    const float grad_mean = a.coef3[3 * ch], k = a.coef3[3 * ch + 1], w = a.coef3[3 * ch + 2];
    a.dy[i] = __fmul_rn(__fadd_rn(__fadd_rn(g, -grad_mean), -__fmul_rn(__fadd_rn(a.y[i], -a.save_mean[ch]), k)), w);
}
CDA_EXPORT(bn_train_bwd_apply_f32)
