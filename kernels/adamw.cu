// adamw: one torch.optim.AdamW step on one tensor (decoupled weight decay, not amsgrad; semantics:
// src/ops/adamw/mod.rs, CPU twin src/ops/adamw/cpu.rs):
//   param = param * decay                       (decay = 1 - lr * weight_decay; skipped when 1)
//   m = lerp(m, g, 1 - beta1);  v = v * beta2 + (1 - beta2) * g * g
//   param = param + (-step_size) * (m / (sqrt(v) / bias_correction2_sqrt + eps))
// The scalars (AdamScalars, computed in float64 on the host as PyTorch does in Python) come by value.
// Every multiply and add is __fmul_rn / __fadd_rn, sqrt and division are IEEE: bit-identical to the
// CPU twin. Launch: one thread per element, 1-D grid of 256-thread blocks. Memory bound.
// Version 1 (this file).
#include "common.cuh"

// Mirrors `AdamWArgs` in src/ops/adamw/mod.rs.
struct AdamWArgs {
    float* param;
    const float* grad;
    float* m;
    float* v;
    int64_t len;
    float beta1, beta2, step_size, bias_correction2_sqrt, eps, decay;
    int32_t apply_decay, reserved;
};
CDA_PARAMS_SIZE(AdamWArgs, 72);
CDA_PARAMS_OFFSET(AdamWArgs, param, 0);
CDA_PARAMS_OFFSET(AdamWArgs, grad, 8);
CDA_PARAMS_OFFSET(AdamWArgs, m, 16);
CDA_PARAMS_OFFSET(AdamWArgs, v, 24);
CDA_PARAMS_OFFSET(AdamWArgs, len, 32);
CDA_PARAMS_OFFSET(AdamWArgs, beta1, 40);
CDA_PARAMS_OFFSET(AdamWArgs, beta2, 44);
CDA_PARAMS_OFFSET(AdamWArgs, step_size, 48);
CDA_PARAMS_OFFSET(AdamWArgs, bias_correction2_sqrt, 52);
CDA_PARAMS_OFFSET(AdamWArgs, eps, 56);
CDA_PARAMS_OFFSET(AdamWArgs, decay, 60);
CDA_PARAMS_OFFSET(AdamWArgs, apply_decay, 64);
CDA_PARAMS_OFFSET(AdamWArgs, reserved, 68);

CDA_GLOBAL void adamw_step_f32(AdamWArgs a) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= a.len) return;
    const float g = a.grad[i];
    const float p = a.apply_decay ? __fmul_rn(a.param[i], a.decay) : a.param[i];
    const float mi = cda_lerp_rn(a.m[i], g, __fadd_rn(1.0f, -a.beta1));
    const float vi = __fadd_rn(__fmul_rn(a.v[i], a.beta2), __fmul_rn(__fmul_rn(__fadd_rn(1.0f, -a.beta2), g), g));
    a.m[i] = mi;
    a.v[i] = vi;
    const float denom = __fadd_rn(sqrtf(vi) / a.bias_correction2_sqrt, a.eps);
    a.param[i] = __fadd_rn(p, __fmul_rn(-a.step_size, mi / denom));
}
CDA_EXPORT(adamw_step_f32)
