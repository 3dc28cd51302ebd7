// kd_loss: knowledge-distillation loss, batchmean KL(softmax(teacher / T) || softmax(student / T)),
// and its gradient with respect to the student logits (semantics and CPU twin: src/ops/kd_loss).
//
//   lq = log_softmax(student / T), lp = log_softmax(teacher / T)   (float64)
//   loss = sum_rows sum_j exp(lp_j) * (lp_j - lq_j) / N             (terms with exp(lp_j) = 0 skipped)
//   dstudent_j = (exp(lq_j) - exp(lp_j)) / (N * T)
// The official recipe multiplies the loss by T^2 outside; the caller scales.
// kd_kl_div_rows_f32: one 256-thread block per row, all math in float64 as the CPU twin; the row's
//   loss into row_loss[row] (float64 workspace).
// kd_kl_div_finalize_f32: one block sums the rows in a fixed order into losses[slot] (deterministic).
// Version 1 (this file).
#include "common.cuh"

// Mirrors `KdLossArgs` in src/ops/kd_loss/mod.rs.
struct KdLossArgs {
    const float* student;
    const float* teacher;
    float* dstudent;
    double* row_loss;
    float* losses;
    double temperature;
    int32_t n, classes, slot, reserved;
};
CDA_PARAMS_SIZE(KdLossArgs, 64);
CDA_PARAMS_OFFSET(KdLossArgs, student, 0);
CDA_PARAMS_OFFSET(KdLossArgs, teacher, 8);
CDA_PARAMS_OFFSET(KdLossArgs, dstudent, 16);
CDA_PARAMS_OFFSET(KdLossArgs, row_loss, 24);
CDA_PARAMS_OFFSET(KdLossArgs, losses, 32);
CDA_PARAMS_OFFSET(KdLossArgs, temperature, 40);
CDA_PARAMS_OFFSET(KdLossArgs, n, 48);
CDA_PARAMS_OFFSET(KdLossArgs, classes, 52);
CDA_PARAMS_OFFSET(KdLossArgs, slot, 56);
CDA_PARAMS_OFFSET(KdLossArgs, reserved, 60);

// log-sum-exp of row / t over the block (every thread gets it).
CDA_DEVICE double kd_lse(const float* row, int classes, double t, double* scratch) {
    double m = (double)cda_neg_inf();
    for (int j = threadIdx.x; j < classes; j += blockDim.x) m = fmax(m, (double)row[j] / t);
    m = cda_block_max(m, scratch);
    double s = 0.0;
    for (int j = threadIdx.x; j < classes; j += blockDim.x) s += exp((double)row[j] / t - m);
    return log(cda_block_sum(s, scratch)) + m;
}

CDA_GLOBAL void __launch_bounds__(256) kd_kl_div_rows_f32(KdLossArgs a) {
    __shared__ double scratch[32];
    const int64_t off = (int64_t)blockIdx.x * a.classes;
    const float* s = a.student + off;
    const float* te = a.teacher + off;
    const double t = a.temperature;
    const double lse_q = kd_lse(s, a.classes, t, scratch);
    const double lse_p = kd_lse(te, a.classes, t, scratch);
    double part = 0.0;
    for (int j = threadIdx.x; j < a.classes; j += blockDim.x) {
        const double lq = (double)s[j] / t - lse_q, lp = (double)te[j] / t - lse_p;
        const double p = exp(lp);
        if (p > 0.0) part += p * (lp - lq);
        a.dstudent[off + j] = (float)((exp(lq) - p) / ((double)a.n * t));
    }
    const double row = cda_block_sum(part, scratch);
    if (threadIdx.x == 0) a.row_loss[blockIdx.x] = row;
}
CDA_EXPORT(kd_kl_div_rows_f32)

CDA_GLOBAL void __launch_bounds__(256) kd_kl_div_finalize_f32(KdLossArgs a) {
    __shared__ double scratch[32];
    cda_block_mean_rows(a.row_loss, a.n, a.losses + a.slot, scratch);
}
CDA_EXPORT(kd_kl_div_finalize_f32)
