// linear: the fc head (semantics: src/ops/linear/mod.rs, CPU twin src/ops/linear/cpu.rs).
//
// linear_fwd_f32: y[N x J] = x[N x F] * W^T + b, W stored J x F (PyTorch). GEMM view: M = N (images),
//   N = J (classes), K = F (features). One warp per output element: the 32 lanes stride over F with
//   coalesced reads of one x row and one W row, then a shuffle reduction; 8 outputs per 256-thread block.
//   At recover sizes (N = 100, J = 1000, F = 512) this is 51 MFLOP and reads W (2 MB) once per image
//   from L2: microseconds, far below the convolutions.
// linear_bwd_data_f32: dx[N x F] = dy[N x J] * W[J x F]. One thread per dx element loops over J; W
//   reads are coalesced across threads, dy reads broadcast.
// linear_wgrad_f32: dw[J x F] = dy[N x J]^T * x[N x F] and db[J] = column sums of dy, both overwritten.
//   GEMM view: M = J (classes), N = F (features), K = N (images). One thread per dw element loops over
//   the images (reads of x coalesced across threads, dy broadcast), fp32 accumulation as the CPU GEMM;
//   the last J threads of the grid sum db in float64. At training sizes (N <= 1024, J*F <= 1000*2048)
//   this is at most 4 GFLOP: far below the convolutions.
// Accumulation is fp32 in all three (the CPU GEMM is fp32 too). Version 1 (this file).
#include "common.cuh"

CDA_GLOBAL void __launch_bounds__(256) linear_fwd_f32(int32_t n, int32_t in_f, int32_t out_f, const float* __restrict__ x,
                                                      const float* __restrict__ w, const float* __restrict__ b,
                                                      float* __restrict__ y) {
    const int warp = (int)(threadIdx.x >> 5), lane = (int)(threadIdx.x & 31);
    const int64_t o = (int64_t)blockIdx.x * (blockDim.x >> 5) + warp;
    const bool valid = o < (int64_t)n * out_f;
    float s = 0.f;
    if (valid) {
        const int64_t img = o / out_f, j = o % out_f;
        const float* xr = x + img * in_f;
        const float* wr = w + j * in_f;
        for (int f = lane; f < in_f; f += 32) s += xr[f] * wr[f];
    }
    s = cda_warp_sum(s);
    if (valid && lane == 0) y[o] = s + b[o % out_f];
}
CDA_EXPORT(linear_fwd_f32)

CDA_GLOBAL void linear_bwd_data_f32(int32_t n, int32_t in_f, int32_t out_f, const float* __restrict__ dy,
                                    const float* __restrict__ w, float* __restrict__ dx) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (int64_t)n * in_f) return;
    const int64_t img = i / in_f, f = i % in_f;
    const float* g = dy + img * out_f;
    float s = 0.f;
    for (int j = 0; j < out_f; ++j) s += g[j] * w[(int64_t)j * in_f + f];
    dx[i] = s;
}
CDA_EXPORT(linear_bwd_data_f32)

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
