// mma_check: a GEMM made only of mma.sync.m16n8k8 TF32 tiles, for testing, not speed.
//
// c[M x N] = a[M x K] * b[K x N] (row-major float32), operands rounded to TF32 with cvt.rna, fp32
// accumulation. One warp per 16 x 8 tile of c (grid ceil(M/16) x ceil(N/8), block 32); fragments are
// loaded straight from global memory at the positions of the PTX ISA tables (see host_shim.h), with
// zeros outside the matrices. On a GPU this checks the fragment layout the conv kernels rely on against
// the hardware; under emulation it checks the emulated mma against a float64 GEMM.
// Version 1 (this file).
#include "common.cuh"

CDA_GLOBAL void mma_check_tf32(int32_t m, int32_t n, int32_t k, const float* __restrict__ a, const float* __restrict__ b,
                               float* __restrict__ c) {
    const int lane = (int)(threadIdx.x & 31);
    const int g = lane >> 2, t = lane & 3;
    const int r0 = (int)blockIdx.x * 16, c0 = (int)blockIdx.y * 8;
    auto A = [&](int row, int col) { return row < m && col < k ? a[(int64_t)row * k + col] : 0.f; };
    auto B = [&](int row, int col) { return row < k && col < n ? b[(int64_t)row * n + col] : 0.f; };
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    for (int k0 = 0; k0 < k; k0 += 8) {
        uint32_t af[4], bf[2];
        af[0] = cda_tf32(A(r0 + g, k0 + t));
        af[1] = cda_tf32(A(r0 + g + 8, k0 + t));
        af[2] = cda_tf32(A(r0 + g, k0 + t + 4));
        af[3] = cda_tf32(A(r0 + g + 8, k0 + t + 4));
        bf[0] = cda_tf32(B(k0 + t, c0 + g));
        bf[1] = cda_tf32(B(k0 + t + 4, c0 + g));
        cda_mma_tf32_m16n8k8(acc, af, bf, acc);
    }
    for (int i = 0; i < 4; ++i) {
        const int row = r0 + g + (i >= 2 ? 8 : 0), col = c0 + 2 * t + (i & 1);
        if (row < m && col < n) c[(int64_t)row * n + col] = acc[i];
    }
}
CDA_EXPORT(mma_check_tf32)
