// conv.cuh: what the convolution kernels share (conv_fprop.cu, conv_dgrad.cu, conv_wgrad.cu): the problem
// and argument structs (mirrored in src/ops/conv/mod.rs), the CTA tiling, the operand stepping and the
// tensor-core mainloop; each pass's gather and epilogue live in its own file.
//
// Layouts: x N C H W, w K C R S, y N K P Q (row-major, PyTorch order); P = (H + 2 pad - R) / stride + 1.
// GEMM mapping (CUTLASS letters):
//   fprop: GEMM_M = N*P*Q (output pixels), GEMM_N = K, GEMM_K = C*R*S;
//          A[m][kk] = x[n][c][p*stride - pad + r][q*stride - pad + s] (0 outside), B[kk][k] = w[k][c][r][s].
//   dgrad: GEMM_M = N*H*W (input pixels), GEMM_N = C, GEMM_K = K*R*S;
//          A[m][kk] = dy[n][k][(h + pad - r) / stride][(w + pad - s) / stride] where the division is exact
//          and in range (else 0), B[kk][c] = w[k][c][r][s].
//   Neither operand is materialised: every CTA gathers its tiles straight from x / dy and w.
//
// Tiling (both versions): CTA tile 64 (M) x 64 (N) x 16 (K), 128 threads = 4 warps as 2 (M) x 2 (N),
// warp tile 32 x 32 = 2 x 4 tiles of 16 x 8. Global loads for tile t+1 are issued into registers
// before the math on tile t (register prefetch); shared memory is double-buffered, so one
// __syncthreads per K tile. Shared rows are padded to 72 floats: fragment reads (row = lane % 4,
// column = lane / 4) then hit 32 distinct banks. Per thread: 8 A and 8 B elements per K tile, 32 fp32
// accumulators laid out as mma.sync's C fragments (row g or g+8, column 2t or 2t+1, g = lane / 4,
// t = lane % 4), so both versions share the epilogue.
// Versions:
//   1. conv_*_v1_f32: fp32 FMA on that fragment layout (CUDA cores). The numbered baseline; also the
//      exact reference for the tensor-core version in tests.
//   2. conv_*_v2_tf32: tensor cores, mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32. Operands are
//      rounded to TF32 (cvt.rna) once when stored to shared memory; accumulation is fp32. Expect ~1e-3
//      relative error on dot products (10-bit mantissa), the same as PyTorch's default TF32 convolutions.
// Limits: any N, C, H, W, K, R, S, stride >= 1, pad >= 0 (no alignment or channel-multiple
// requirement: tiles are guarded); GEMM_M < 2^31, grid.y = ceil(GEMM_N / 64) <= 65535.
// Operand indices advance incrementally (one mixed-radix add per K tile, no divisions in the loop).
// Not yet done (speed, not correctness): cp.async multi-stage pipelines, strided dgrad in the GEMM kernels (skipping the
// (stride^2 - 1) / stride^2 zero taps of the stride-2 layers), larger CTA tiles for wide layers.
#pragma once
#include "common.cuh"

// Mirrors `ConvProblem` in src/ops/conv/mod.rs.
struct ConvProblem {
    int32_t n, c, h, w, k, r, s, p, q, stride, pad, reserved;
};
CDA_PARAMS_SIZE(ConvProblem, 48);
CDA_PARAMS_OFFSET(ConvProblem, n, 0);
CDA_PARAMS_OFFSET(ConvProblem, c, 4);
CDA_PARAMS_OFFSET(ConvProblem, h, 8);
CDA_PARAMS_OFFSET(ConvProblem, w, 12);
CDA_PARAMS_OFFSET(ConvProblem, k, 16);
CDA_PARAMS_OFFSET(ConvProblem, r, 20);
CDA_PARAMS_OFFSET(ConvProblem, s, 24);
CDA_PARAMS_OFFSET(ConvProblem, p, 28);
CDA_PARAMS_OFFSET(ConvProblem, q, 32);
CDA_PARAMS_OFFSET(ConvProblem, stride, 36);
CDA_PARAMS_OFFSET(ConvProblem, pad, 40);
CDA_PARAMS_OFFSET(ConvProblem, reserved, 44);

// Mirrors `ConvFpropArgs` in src/ops/conv/mod.rs. Optional pointers are null when absent.
struct ConvFpropArgs {
    const float* x;
    const float* w;
    float* out;
    float* y;                // raw conv output (optional)
    const float* residual;   // added after BN, before ReLU (optional)
    const float* bn_mean;
    const float* bn_scale;
    const float* bn_beta;
    double* stats_partial;   // [2][K][tiles_m] (optional)
    int32_t relu;
    int32_t tiles_m;
};
CDA_PARAMS_SIZE(ConvFpropArgs, 80);
CDA_PARAMS_OFFSET(ConvFpropArgs, x, 0);
CDA_PARAMS_OFFSET(ConvFpropArgs, w, 8);
CDA_PARAMS_OFFSET(ConvFpropArgs, out, 16);
CDA_PARAMS_OFFSET(ConvFpropArgs, y, 24);
CDA_PARAMS_OFFSET(ConvFpropArgs, residual, 32);
CDA_PARAMS_OFFSET(ConvFpropArgs, bn_mean, 40);
CDA_PARAMS_OFFSET(ConvFpropArgs, bn_scale, 48);
CDA_PARAMS_OFFSET(ConvFpropArgs, bn_beta, 56);
CDA_PARAMS_OFFSET(ConvFpropArgs, stats_partial, 64);
CDA_PARAMS_OFFSET(ConvFpropArgs, relu, 72);
CDA_PARAMS_OFFSET(ConvFpropArgs, tiles_m, 76);

// Mirrors `ConvDgradArgs` in src/ops/conv/mod.rs.
struct ConvDgradArgs {
    const float* dy;
    const float* w;
    const float* x;          // the conv's input: its ReLU mask
    float* dx;
    const float* add;        // MaskInput: added before masking (optional)
    const float* y_prev;     // BnRelu: BN input that produced x
    const float* scale;      // BnRelu: BN scale
    const float* coef;       // BnRelu: [a, b, mean]
    int32_t mode;            // 0 Store, 1 MaskInput, 2 BnRelu
    int32_t accumulate;      // MaskInput: also add the previous dx
};
CDA_PARAMS_SIZE(ConvDgradArgs, 72);
CDA_PARAMS_OFFSET(ConvDgradArgs, dy, 0);
CDA_PARAMS_OFFSET(ConvDgradArgs, w, 8);
CDA_PARAMS_OFFSET(ConvDgradArgs, x, 16);
CDA_PARAMS_OFFSET(ConvDgradArgs, dx, 24);
CDA_PARAMS_OFFSET(ConvDgradArgs, add, 32);
CDA_PARAMS_OFFSET(ConvDgradArgs, y_prev, 40);
CDA_PARAMS_OFFSET(ConvDgradArgs, scale, 48);
CDA_PARAMS_OFFSET(ConvDgradArgs, coef, 56);
CDA_PARAMS_OFFSET(ConvDgradArgs, mode, 64);
CDA_PARAMS_OFFSET(ConvDgradArgs, accumulate, 68);

struct ConvStatsArgs {
    const double* partial;
    float* stats;
    double count;
    int32_t k, tiles_m;
};
CDA_PARAMS_SIZE(ConvStatsArgs, 32);
CDA_PARAMS_OFFSET(ConvStatsArgs, partial, 0);
CDA_PARAMS_OFFSET(ConvStatsArgs, stats, 8);
CDA_PARAMS_OFFSET(ConvStatsArgs, count, 16);
CDA_PARAMS_OFFSET(ConvStatsArgs, k, 24);
CDA_PARAMS_OFFSET(ConvStatsArgs, tiles_m, 28);

namespace conv {

constexpr int BM = 64, BN = 64, BK = 16;
constexpr int WARPS_M = 2, WARPS_N = 2, THREADS = 32 * WARPS_M * WARPS_N;
constexpr int WM = BM / WARPS_M, WN = BN / WARPS_N;  // 32 x 32 per warp
constexpr int MT = WM / 16, NT = WN / 8;             // 2 x 4 mma tiles per warp
constexpr int LDS = BM + 8;                          // padded shared row (BM == BN)
constexpr int A_LOADS = BM * BK / THREADS;           // 8 A elements per thread per K tile
constexpr int B_LOADS = BN * BK / THREADS;           // 8 B elements per thread per K tile
constexpr int A_KSTEP = THREADS / BM;                // A: thread -> (m = tid % BM, kk = tid / BM + A_KSTEP * i)
constexpr int B_NSTEP = THREADS / BK;                // B: thread -> (kk = tid % BK, n = tid / BK + B_NSTEP * i)
static_assert(BM == BN, "one padded row length for both operands");
static_assert(A_LOADS * A_KSTEP == BK && B_LOADS * B_NSTEP == BN, "load mapping covers the tile");

// Operand gathers. Each thread loads the same A row (its output or input pixel, m = tid % BM) and
// the same kk columns (tid / BM + A_KSTEP * i) of every K tile, and B elements of one kk
// (tid % BK) for 8 columns. Instead of dividing kk into (c, r, s) for every element of every tile (two
// integer divisions each, which would make the tensor-core loop issue-bound), every thread divides
// once at the start and then advances its indices by BK per tile with a constant-time mixed-radix
// add: BK = dc * (R*S) + dr * S + ds, with at most one carry per digit (ds < S, dr < R).
struct KStep {
    int d_hi, d_r, d_s;  // BK in (outer channel, r, s) digits
    CDA_METHOD void init(int R, int S) {
        const int rs = R * S;
        d_hi = BK / rs;
        const int rem = BK - d_hi * rs;
        d_r = rem / S;
        d_s = rem - d_r * S;
    }
};


template <bool TC>
CDA_DEVICE float stage(float v) {
    if constexpr (TC) return __uint_as_float(cda_tf32(v));
    else return v;
}

// acc[mt][nt][i] += A(tile rows) * B(tile cols) over the whole GEMM_K for CTA tile (m0, n0).
template <bool TC, class G>
CDA_DEVICE void mainloop(G& g, int n0, float (&acc)[MT][NT][4], float (*As)[BK][LDS], float (*Bs)[BK][LDS]) {
    const int tid = (int)threadIdx.x;
    const int lane = tid & 31, warp = tid >> 5;
    const int gid = lane >> 2, tig = lane & 3;
    const int wm0 = (warp % WARPS_M) * WM, wn0 = (warp / WARPS_M) * WN;
    const int a_m = tid % BM, a_k = tid / BM;
    const int b_k = tid % BK, b_n = tid / BK;
    const int gemm_k = g.gemm_k();
    const int tiles = (gemm_k + BK - 1) / BK;
    float ra[A_LOADS], rb[B_LOADS];
    g.load_a(ra);
    g.load_b(rb, n0 + b_n);
    for (int t = 0; t < tiles; ++t) {
        const int buf = t & 1;
        CDA_UNROLL
        for (int i = 0; i < A_LOADS; ++i) As[buf][a_k + A_KSTEP * i][a_m] = stage<TC>(ra[i]);
        CDA_UNROLL
        for (int i = 0; i < B_LOADS; ++i) Bs[buf][b_k][b_n + B_NSTEP * i] = stage<TC>(rb[i]);
        __syncthreads();
        if (t + 1 < tiles) {
            g.advance();
            g.load_a(ra);
            g.load_b(rb, n0 + b_n);
        }
        const float(*A)[LDS] = As[buf];
        const float(*B)[LDS] = Bs[buf];
        if constexpr (TC) {
            CDA_UNROLL
            for (int kb = 0; kb < BK; kb += 8) {
                uint32_t af[MT][4], bf[NT][2];
                CDA_UNROLL
                for (int mt = 0; mt < MT; ++mt) {
                    const int r0 = wm0 + mt * 16 + gid;
                    af[mt][0] = __float_as_uint(A[kb + tig][r0]);
                    af[mt][1] = __float_as_uint(A[kb + tig][r0 + 8]);
                    af[mt][2] = __float_as_uint(A[kb + tig + 4][r0]);
                    af[mt][3] = __float_as_uint(A[kb + tig + 4][r0 + 8]);
                }
                CDA_UNROLL
                for (int nt = 0; nt < NT; ++nt) {
                    const int c0 = wn0 + nt * 8 + gid;
                    bf[nt][0] = __float_as_uint(B[kb + tig][c0]);
                    bf[nt][1] = __float_as_uint(B[kb + tig + 4][c0]);
                }
                CDA_UNROLL
                for (int mt = 0; mt < MT; ++mt)
                    CDA_UNROLL
                    for (int nt = 0; nt < NT; ++nt) cda_mma_tf32_m16n8k8(acc[mt][nt], af[mt], bf[nt], acc[mt][nt]);
            }
        } else {
            CDA_UNROLL
            for (int kk = 0; kk < BK; ++kk) {
                float av[MT][2], bv[NT][2];
                CDA_UNROLL
                for (int mt = 0; mt < MT; ++mt) {
                    av[mt][0] = A[kk][wm0 + mt * 16 + gid];
                    av[mt][1] = A[kk][wm0 + mt * 16 + gid + 8];
                }
                CDA_UNROLL
                for (int nt = 0; nt < NT; ++nt) {
                    bv[nt][0] = B[kk][wn0 + nt * 8 + 2 * tig];
                    bv[nt][1] = B[kk][wn0 + nt * 8 + 2 * tig + 1];
                }
                CDA_UNROLL
                for (int mt = 0; mt < MT; ++mt)
                    CDA_UNROLL
                    for (int nt = 0; nt < NT; ++nt) {
                        acc[mt][nt][0] += av[mt][0] * bv[nt][0];
                        acc[mt][nt][1] += av[mt][0] * bv[nt][1];
                        acc[mt][nt][2] += av[mt][1] * bv[nt][0];
                        acc[mt][nt][3] += av[mt][1] * bv[nt][1];
                    }
            }
        }
    }
}

// Row (within the CTA tile) and column of accumulator element (mt, nt, i) of this lane.
CDA_DEVICE int acc_row(int wm0, int mt, int gid, int i) { return wm0 + mt * 16 + gid + (i >= 2 ? 8 : 0); }
CDA_DEVICE int acc_col(int wn0, int nt, int tig, int i) { return wn0 + nt * 8 + 2 * tig + (i & 1); }

}  // namespace conv
