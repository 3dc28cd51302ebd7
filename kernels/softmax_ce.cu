// softmax_ce: mean cross-entropy of logits against integer targets and its gradient
// dlogits = (softmax(logits) - onehot(target)) / N, as torch.nn.CrossEntropyLoss (reduction mean)
// (semantics: src/ops/softmax_ce/mod.rs, CPU twin src/ops/softmax_ce/cpu.rs).
//
// softmax_ce_rows_f32: one 256-thread block per row: max in fp32, sum of exp(v - max) in float64
//   (v - max computed in fp32 as on the CPU), the row's loss log(sum) - (v[t] - max) into row_loss[row]
//   (float64 workspace), and the row's gradient. A target outside 0..classes gives a NaN loss and NaN
//   gradients for that row (the host checks targets it uploaded; this catches the rest loudly).
// softmax_ce_finalize_f32: one block sums the N row losses in a fixed order and writes the mean to
//   losses[slot] (no atomics, so the result is deterministic).
// Version 1 (this file).
#include "common.cuh"

struct SoftmaxCeArgs {
    const float* logits;
    const int32_t* targets;
    float* dlogits;
    double* row_loss;
    float* losses;
    int32_t n, classes, slot, reserved;
};
CDA_PARAMS_SIZE(SoftmaxCeArgs, 56);
CDA_PARAMS_OFFSET(SoftmaxCeArgs, logits, 0);
CDA_PARAMS_OFFSET(SoftmaxCeArgs, targets, 8);
CDA_PARAMS_OFFSET(SoftmaxCeArgs, dlogits, 16);
CDA_PARAMS_OFFSET(SoftmaxCeArgs, row_loss, 24);
CDA_PARAMS_OFFSET(SoftmaxCeArgs, losses, 32);
CDA_PARAMS_OFFSET(SoftmaxCeArgs, n, 40);
CDA_PARAMS_OFFSET(SoftmaxCeArgs, classes, 44);
CDA_PARAMS_OFFSET(SoftmaxCeArgs, slot, 48);
CDA_PARAMS_OFFSET(SoftmaxCeArgs, reserved, 52);

CDA_GLOBAL void __launch_bounds__(256) softmax_ce_rows_f32(SoftmaxCeArgs a) {
    __shared__ float fscratch[32];
    __shared__ double dscratch[32];
    const int row = (int)blockIdx.x;
    const float* v = a.logits + (int64_t)row * a.classes;
    float* d = a.dlogits + (int64_t)row * a.classes;
    float m = cda_neg_inf();
    for (int j = threadIdx.x; j < a.classes; j += blockDim.x) m = fmaxf(m, v[j]);  // fmaxf skips NaN, like f32::max
    m = cda_warp_max(m);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) fscratch[threadIdx.x >> 5] = m;
    __syncthreads();
    float max = fscratch[0];
    for (int w = 1; w < (int)(blockDim.x >> 5); ++w) max = fmaxf(max, fscratch[w]);
    double s = 0.0;
    for (int j = threadIdx.x; j < a.classes; j += blockDim.x) s += exp((double)(v[j] - max));
    const double sum = cda_block_sum(s, dscratch);
    const int t = a.targets[row];
    const bool ok = t >= 0 && t < a.classes;
    for (int j = threadIdx.x; j < a.classes; j += blockDim.x) {
        double p = exp((double)(v[j] - max)) / sum;
        d[j] = ok ? (float)((p - (j == t ? 1.0 : 0.0)) / (double)a.n) : cda_nan();
    }
    if (threadIdx.x == 0) a.row_loss[row] = ok ? log(sum) - (double)(v[t] - max) : (double)cda_nan();
}
CDA_EXPORT(softmax_ce_rows_f32)

CDA_GLOBAL void __launch_bounds__(256) softmax_ce_finalize_f32(SoftmaxCeArgs a) {
    __shared__ double scratch[32];
    cda_block_mean_rows(a.row_loss, a.n, a.losses + a.slot, scratch);
}
CDA_EXPORT(softmax_ce_finalize_f32)
