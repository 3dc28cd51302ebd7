// conv_wgrad: the convolution's weight gradient, the pass only training needs (semantics:
// src/ops/conv/mod.rs; CPU twin `wgrad` in src/ops/conv/cpu/im2col.rs; the problem struct in conv.cuh).
//
//   dw[k][c][r][s] = sum over (n, p, q) of dy[n][k][p][q] * x[n][c][p*stride - pad + r][q*stride - pad + s]
// GEMM view (CUTLASS's wgrad): GEMM_M = K, GEMM_N = C*R*S, GEMM_K = N*P*Q; A = dy (K x NPQ, gathered per
// image), B = im2col(x)^T (NPQ x CRS, gathered on the fly, zero outside the image).
// conv_wgrad_f32: one 256-thread CTA per 64 x 64 tile of dw and per split of GEMM_K (blockIdx.z): the
//   reduction over N*P*Q is long (a batch of 256 at 28x28 is 200k terms) while dw has few tiles, so the
//   sum is split to fill the GPU. Chunks of 16 GEMM_K terms of A and B are staged in shared memory;
//   each thread accumulates a 4 x 4 block (rows ty + 16i, columns tx + 16j: conflict-free shared reads,
//   coalesced stores) in fp32 on CUDA cores. Each split writes its partial tile to `partial[split]`.
// conv_wgrad_reduce_f32: dw = sum of the partials in split order (no atomics: deterministic). With
//   one split the first kernel writes dw directly and this one is not launched.
// Version 1 (this file): fp32 FMA, no tensor cores, no double buffering.
#include "conv.cuh"

#define WGRAD_TILE 64
#define WGRAD_CHUNK 16

CDA_GLOBAL void __launch_bounds__(256) conv_wgrad_f32(ConvProblem p, const float* __restrict__ x, const float* __restrict__ dy,
                                                      float* __restrict__ partial, int64_t per_split) {
    __shared__ float a_tile[WGRAD_CHUNK][WGRAD_TILE];  // dy: [gemm_k][k]
    __shared__ float b_tile[WGRAD_CHUNK][WGRAD_TILE];  // im2col(x): [gemm_k][crs]
    const int tid = (int)threadIdx.x, tx = tid % 16, ty = tid / 16;
    const int crs0 = (int)blockIdx.x * WGRAD_TILE, k0 = (int)blockIdx.y * WGRAD_TILE;
    const int rs = p.r * p.s, crs_total = p.c * rs, pq_total = p.p * p.q;
    const int64_t npq = (int64_t)p.n * pq_total;
    const int64_t t_begin = (int64_t)blockIdx.z * per_split;
    const int64_t t_end = t_begin + per_split < npq ? t_begin + per_split : npq;
    float acc[4][4];
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;
    for (int64_t t0 = t_begin; t0 < t_end; t0 += WGRAD_CHUNK) {
        // Consecutive threads take consecutive GEMM_K terms: consecutive output pixels of one image.
        for (int e = tid; e < WGRAD_CHUNK * WGRAD_TILE; e += (int)blockDim.x) {
            const int tt = e % WGRAD_CHUNK, col = e / WGRAD_CHUNK;
            const int64_t t = t0 + tt;
            float av = 0.f, bv = 0.f;
            if (t < t_end) {
                const int img = (int)(t / pq_total), pq = (int)(t % pq_total);
                const int k = k0 + col;
                if (k < p.k) av = dy[((int64_t)img * p.k + k) * pq_total + pq];
                const int crs = crs0 + col;
                if (crs < crs_total) {
                    const int c = crs / rs, r = (crs / p.s) % p.r, s = crs % p.s;
                    const int h = (pq / p.q) * p.stride - p.pad + r, w = (pq % p.q) * p.stride - p.pad + s;
                    if (h >= 0 && h < p.h && w >= 0 && w < p.w) bv = x[(((int64_t)img * p.c + c) * p.h + h) * p.w + w];
                }
            }
            a_tile[tt][col] = av;
            b_tile[tt][col] = bv;
        }
        __syncthreads();
        for (int tt = 0; tt < WGRAD_CHUNK; ++tt) {
            float a[4], b[4];
            for (int i = 0; i < 4; ++i) a[i] = a_tile[tt][ty + 16 * i];
            for (int j = 0; j < 4; ++j) b[j] = b_tile[tt][tx + 16 * j];
            for (int i = 0; i < 4; ++i)
                for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
        }
        __syncthreads();
    }
    float* out = partial + (int64_t)blockIdx.z * p.k * crs_total;
    for (int i = 0; i < 4; ++i) {
        const int k = k0 + ty + 16 * i;
        if (k >= p.k) continue;
        for (int j = 0; j < 4; ++j) {
            const int crs = crs0 + tx + 16 * j;
            if (crs < crs_total) out[(int64_t)k * crs_total + crs] = acc[i][j];
        }
    }
}
CDA_EXPORT(conv_wgrad_f32)

CDA_GLOBAL void conv_wgrad_reduce_f32(const float* __restrict__ partial, float* __restrict__ dw, int64_t len, int32_t splits) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= len) return;
    float s = 0.f;
    for (int z = 0; z < splits; ++z) s += partial[(int64_t)z * len + i];
    dw[i] = s;
}
CDA_EXPORT(conv_wgrad_reduce_f32)
