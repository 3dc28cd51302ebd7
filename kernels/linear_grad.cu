// linear_grad: parameter gradients of the fc head (semantics and CPU twin: src/ops/linear_grad).
//
// linear_wgrad_f32: dw[J x F] = dy[N x J]^T * x[N x F] and db[J] = column sums of dy, both overwritten.
//   GEMM view: M = J (classes), N = F (features), K = N (images). One thread per dw element loops over
//   the images (reads of x coalesced across threads, dy broadcast), fp32 accumulation as the CPU GEMM;
//   the last J threads of the grid sum db in float64. At training sizes (N <= 1024, J*F <= 1000*2048)
//   this is at most 4 GFLOP: far below the convolutions.
// Version 1 (this file).
#include "common.cuh"

CDA_GLOBAL void linear_wgrad_f32(int32_t n, int32_t in_f, int32_t out_f, const float* __restrict__ x,
                                 const float* __restrict__ dy, float* __restrict__ dw, float* __restrict__ db) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int64_t weights = (int64_t)out_f * in_f;
    if (i < weights) {
        const int64_t j = i / in_f, f = i % in_f;
        float s = 0.f;
        for (int img = 0; img < n; ++img) s += dy[(int64_t)img * out_f + j] * x[(int64_t)img * in_f + f];
        dw[i] = s;
    } else if (i < weights + out_f) {
        const int64_t j = i - weights;
        double s = 0.0;
        for (int img = 0; img < n; ++img) s += (double)dy[(int64_t)img * out_f + j];
        db[j] = (float)s;
    }
}
CDA_EXPORT(linear_wgrad_f32)
