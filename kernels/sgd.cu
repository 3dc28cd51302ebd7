// sgd: one torch.optim.SGD step on one tensor (momentum, dampening 0, optional Nesterov, L2 weight
// decay; semantics: src/ops/sgd/mod.rs, CPU twin src/ops/sgd/cpu.rs):
//   g = grad + weight_decay * param;  buf = g (first step) or momentum * buf + g
//   param = param - lr * (nesterov ? g + momentum * buf : buf)        (momentum 0: param - lr * g)
// Multiplies and adds are __fmul_rn / __fadd_rn (no FMA contraction), so the step is bit-identical to
// the CPU twin. Launch: one thread per element, 1-D grid of 256-thread blocks. Memory bound.
// Version 1 (this file).
#include "common.cuh"

// Mirrors `SgdArgs` in src/ops/sgd/mod.rs. `buf` is null when momentum is 0.
struct SgdArgs {
    float* param;
    const float* grad;
    float* buf;
    int64_t len;
    float lr, momentum, weight_decay;
    int32_t nesterov, first, reserved;
};
CDA_PARAMS_SIZE(SgdArgs, 56);
CDA_PARAMS_OFFSET(SgdArgs, param, 0);
CDA_PARAMS_OFFSET(SgdArgs, grad, 8);
CDA_PARAMS_OFFSET(SgdArgs, buf, 16);
CDA_PARAMS_OFFSET(SgdArgs, len, 24);
CDA_PARAMS_OFFSET(SgdArgs, lr, 32);
CDA_PARAMS_OFFSET(SgdArgs, momentum, 36);
CDA_PARAMS_OFFSET(SgdArgs, weight_decay, 40);
CDA_PARAMS_OFFSET(SgdArgs, nesterov, 44);
CDA_PARAMS_OFFSET(SgdArgs, first, 48);
CDA_PARAMS_OFFSET(SgdArgs, reserved, 52);

CDA_GLOBAL void sgd_step_f32(SgdArgs a) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= a.len) return;
    const float p = a.param[i];
    float g = a.grad[i];
    if (a.weight_decay != 0.0f) g = __fadd_rn(g, __fmul_rn(a.weight_decay, p));
    float d = g;
    if (a.momentum != 0.0f) {
        const float b = a.first ? g : __fadd_rn(__fmul_rn(a.buf[i], a.momentum), g);
        a.buf[i] = b;
        d = a.nesterov ? __fadd_rn(g, __fmul_rn(a.momentum, b)) : b;
    }
    a.param[i] = __fadd_rn(p, __fmul_rn(-a.lr, d));
}
CDA_EXPORT(sgd_step_f32)
