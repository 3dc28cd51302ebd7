// conv2d: implicit-GEMM convolution, fprop and dgrad, with the fused epilogues recover needs
// (semantics: src/ops/conv2d/mod.rs, CPU twin src/ops/conv2d/cpu.rs).
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
//   conv_dgrad_direct_f32: dgrad for C <= 4 input channels (the input-image gradient), used by both
//      versions: one thread per input pixel, fp32, only the taps the stride lets through; no tiles.
// Operand indices advance incrementally (one mixed-radix add per K tile, no divisions in the loop).
// Not yet done (speed, not correctness): cp.async multi-stage pipelines, strided dgrad in the GEMM kernels (skipping the
// (stride^2 - 1) / stride^2 zero taps of the stride-2 layers), larger CTA tiles for wide layers.
//
// Fused epilogues (exactly FpropEpilogue / DgradEpilogue of src/ops/conv2d/mod.rs):
//   fprop: y = acc (optional store of the raw conv output); out = act((y - mean[k]) * scale[k] + beta[k]
//          [+ residual]) with act = ReLU or identity; optional per-channel statistics of y over N*P*Q.
//          Statistics: every CTA reduces sum(y) and sum(y^2) of its 64 rows per channel in float64
//          (thread, then warp shuffles, then shared memory), writing partial[2][K][tiles_m]; then
//          conv_stats_finalize_f32 (one block per channel) sums the partials in float64 and writes
//          mean and biased variance max(E[y^2] - mean^2, 0). In float64 the cancellation in
//          E[y^2] - mean^2 costs ~1e-16 * mean^2 / var relative: harmless for any BN input, and it is
//          the CPU twin's formula. No atomics: results are deterministic.
//   dgrad: Store: dx = acc. MaskInput: dx = (acc [+ add] [+ dx]) * (x > 0). BnRelu: dx = scale[c] * acc *
//          (x > 0) + a[c] + b[c] * (y_prev - mean[c]) with coef = [a, b, mean] (see bn_match.cu).
#include "common.cuh"

// Mirrors `ConvProblem` in src/ops/conv2d/mod.rs.
struct ConvProblem {
    int32_t n, c, h, w, k, r, s, p, q, stride, pad, reserved;
};
CDA_PARAMS_SIZE(ConvProblem, 48);

// Mirrors `ConvFpropArgs` in src/backend/cuda_params.rs. Optional pointers are null when absent.
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

// Mirrors `ConvDgradArgs` in src/backend/cuda_params.rs.
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

struct ConvStatsArgs {
    const double* partial;
    float* stats;
    double count;
    int32_t k, tiles_m;
};
CDA_PARAMS_SIZE(ConvStatsArgs, 32);

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

// fprop: A[m][kk] = x[img][c][h0 + r][w0 + s], kk = (c, r, s); B[kk][k] = w[k][kk].
struct FpropGather {
    const float* xb;  // this thread's image
    const float* w;
    int h0, w0, crs, K, H, W, R, S, HW;
    bool valid;
    KStep step;
    int a_kk[A_LOADS], a_r[A_LOADS], a_s[A_LOADS], a_off[A_LOADS];  // a_off = c*H*W + r*W + s
    int b_kk;

    CDA_METHOD void init(const ConvProblem& p, const float* x, const float* wt, int m, int a_k, int b_k) {
        const int pq = p.p * p.q;
        const int M = p.n * pq;
        valid = m < M;
        const int img = valid ? m / pq : 0;
        const int rem = valid ? m - img * pq : 0;
        const int op = rem / p.q, oq = rem - (rem / p.q) * p.q;
        xb = x + (int64_t)img * p.c * p.h * p.w;
        w = wt;
        h0 = op * p.stride - p.pad;
        w0 = oq * p.stride - p.pad;
        R = p.r;
        S = p.s;
        H = p.h;
        W = p.w;
        HW = p.h * p.w;
        crs = p.c * R * S;
        K = p.k;
        step.init(R, S);
        CDA_UNROLL
        for (int i = 0; i < A_LOADS; ++i) {
            const int kk = a_k + A_KSTEP * i;
            const int c = kk / (R * S), rs = kk - c * (R * S), r = rs / S, s = rs - r * S;
            a_kk[i] = kk;
            a_r[i] = r;
            a_s[i] = s;
            a_off[i] = c * HW + r * W + s;
        }
        b_kk = b_k;
    }
    CDA_METHOD int gemm_k() const { return crs; }
    CDA_METHOD void load_a(float (&ra)[A_LOADS]) const {
        CDA_UNROLL
        for (int i = 0; i < A_LOADS; ++i) {
            const int h = h0 + a_r[i], wi = w0 + a_s[i];
            const bool in = valid && a_kk[i] < crs && h >= 0 && h < H && wi >= 0 && wi < W;
            ra[i] = in ? xb[(int64_t)a_off[i] + h0 * W + w0] : 0.f;
        }
    }
    CDA_METHOD void load_b(float (&rb)[B_LOADS], int n_first) const {
        CDA_UNROLL
        for (int i = 0; i < B_LOADS; ++i) {
            const int n = n_first + B_NSTEP * i;
            rb[i] = (b_kk < crs && n < K) ? w[(int64_t)n * crs + b_kk] : 0.f;
        }
    }
    CDA_METHOD void advance() {
        CDA_UNROLL
        for (int i = 0; i < A_LOADS; ++i) {
            a_kk[i] += BK;
            a_s[i] += step.d_s;
            a_r[i] += step.d_r;
            a_off[i] += step.d_hi * HW + step.d_r * W + step.d_s;
            if (a_s[i] >= S) {
                a_s[i] -= S;
                a_r[i] += 1;
                a_off[i] += W - S;
            }
            if (a_r[i] >= R) {
                a_r[i] -= R;
                a_off[i] += HW - R * W;
            }
        }
        b_kk += BK;
    }
};

// dgrad: A[m][kk] = dy[img][k][(h + pad - r) / stride][(w + pad - s) / stride] where exact and in
// range, kk = (k, r, s); B[kk][c] = w[k][c][r][s].
struct DgradGather {
    const float* dyb;
    const float* w;
    int hp, wp, krs, rs, C, P, Q, PQ, R, S, stride;
    bool valid;
    KStep step;
    int a_kk[A_LOADS], a_r[A_LOADS], a_s[A_LOADS], a_koff[A_LOADS];  // a_koff = k*P*Q
    int b_kk, b_rs, b_off;                                               // b_off = k*C*R*S + rs

    CDA_METHOD void init(const ConvProblem& p, const float* dy, const float* wt, int m, int a_k, int b_k) {
        const int hw = p.h * p.w;
        const int M = p.n * hw;
        valid = m < M;
        const int img = valid ? m / hw : 0;
        const int rem = valid ? m - img * hw : 0;
        const int ih = rem / p.w, iw = rem - (rem / p.w) * p.w;
        dyb = dy + (int64_t)img * p.k * p.p * p.q;
        w = wt;
        hp = ih + p.pad;
        wp = iw + p.pad;
        R = p.r;
        S = p.s;
        rs = R * S;
        krs = p.k * rs;
        C = p.c;
        P = p.p;
        Q = p.q;
        PQ = p.p * p.q;
        stride = p.stride;
        step.init(R, S);
        CDA_UNROLL
        for (int i = 0; i < A_LOADS; ++i) {
            const int kk = a_k + A_KSTEP * i;
            const int k = kk / rs, r_s = kk - k * rs, r = r_s / S, s = r_s - r * S;
            a_kk[i] = kk;
            a_r[i] = r;
            a_s[i] = s;
            a_koff[i] = k * PQ;
        }
        b_kk = b_k;
        const int bk = b_k / rs;
        b_rs = b_k - bk * rs;
        b_off = bk * C * rs + b_rs;
    }
    CDA_METHOD int gemm_k() const { return krs; }
    // Output coordinate (ph, pw) fed by tap offset d = hp - r (or wp - s), or -1.
    CDA_METHOD int tap(int d, int limit) const {
        if (d < 0) return -1;
        if (stride == 2) {
            if (d & 1) return -1;
            d >>= 1;
        } else if (stride != 1) {
            if (d % stride != 0) return -1;
            d /= stride;
        }
        return d < limit ? d : -1;
    }
    CDA_METHOD void load_a(float (&ra)[A_LOADS]) const {
        CDA_UNROLL
        for (int i = 0; i < A_LOADS; ++i) {
            const int ph = tap(hp - a_r[i], P), pw = tap(wp - a_s[i], Q);
            const bool in = valid && a_kk[i] < krs && ph >= 0 && pw >= 0;
            ra[i] = in ? dyb[(int64_t)a_koff[i] + ph * Q + pw] : 0.f;
        }
    }
    CDA_METHOD void load_b(float (&rb)[B_LOADS], int c_first) const {
        CDA_UNROLL
        for (int i = 0; i < B_LOADS; ++i) {
            const int c = c_first + B_NSTEP * i;
            rb[i] = (b_kk < krs && c < C) ? w[(int64_t)b_off + c * rs] : 0.f;
        }
    }
    CDA_METHOD void advance() {
        CDA_UNROLL
        for (int i = 0; i < A_LOADS; ++i) {
            a_kk[i] += BK;
            a_s[i] += step.d_s;
            a_r[i] += step.d_r;
            a_koff[i] += step.d_hi * PQ;
            if (a_s[i] >= S) {
                a_s[i] -= S;
                a_r[i] += 1;
            }
            if (a_r[i] >= R) {
                a_r[i] -= R;
                a_koff[i] += PQ;
            }
        }
        // B: (k, rs) digits of this thread's kk, BK = d_hi * rs + (d_r * S + d_s).
        b_kk += BK;
        b_rs += step.d_r * S + step.d_s;
        b_off += step.d_hi * C * rs + step.d_r * S + step.d_s;
        if (b_rs >= rs) {
            b_rs -= rs;
            b_off += C * rs - rs;
        }
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

template <bool TC>
CDA_DEVICE void fprop(const ConvProblem& p, const ConvFpropArgs& a) {
    __shared__ __align__(16) float As[2][BK][LDS];
    __shared__ __align__(16) float Bs[2][BK][LDS];
    __shared__ double red[WARPS_M][2][BN];
    const int tid = (int)threadIdx.x;
    const int lane = tid & 31, warp = tid >> 5;
    const int gid = lane >> 2, tig = lane & 3;
    const int wm0 = (warp % WARPS_M) * WM, wn0 = (warp / WARPS_M) * WN;
    const int m0 = (int)blockIdx.x * BM, n0 = (int)blockIdx.y * BN;
    const int pq = p.p * p.q;
    const int M = p.n * pq;

    FpropGather g;
    g.init(p, a.x, a.w, m0 + tid % BM, tid / BM, tid % BK);
    float acc[MT][NT][4];
    CDA_UNROLL
    for (int mt = 0; mt < MT; ++mt)
        CDA_UNROLL
        for (int nt = 0; nt < NT; ++nt)
            CDA_UNROLL
            for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0.f;
    mainloop<TC>(g, n0, acc, As, Bs);

    // Output offsets of this lane's 4 rows: img * K * PQ + pq (the channel adds k * PQ).
    int64_t row_off[MT][2];
    bool row_ok[MT][2];
    CDA_UNROLL
    for (int mt = 0; mt < MT; ++mt)
        CDA_UNROLL
        for (int h = 0; h < 2; ++h) {
            const int m = m0 + acc_row(wm0, mt, gid, 2 * h);
            row_ok[mt][h] = m < M;
            const int img = row_ok[mt][h] ? m / pq : 0;
            row_off[mt][h] = row_ok[mt][h] ? (int64_t)img * p.k * pq + (m - img * pq) : 0;
        }
    const bool stats = a.stats_partial != nullptr;
    double s1[NT][2], s2[NT][2];
    CDA_UNROLL
    for (int nt = 0; nt < NT; ++nt)
        CDA_UNROLL
        for (int j = 0; j < 2; ++j) s1[nt][j] = s2[nt][j] = 0.0;
    CDA_UNROLL
    for (int mt = 0; mt < MT; ++mt)
        CDA_UNROLL
        for (int nt = 0; nt < NT; ++nt)
            CDA_UNROLL
            for (int i = 0; i < 4; ++i) {
                const int h = i >> 1, j = i & 1;
                const int k = n0 + acc_col(wn0, nt, tig, i);
                if (!row_ok[mt][h] || k >= p.k) continue;
                const int64_t o = row_off[mt][h] + (int64_t)k * pq;
                const float y = acc[mt][nt][i];
                if (a.y) a.y[o] = y;
                float z = (y - a.bn_mean[k]) * a.bn_scale[k] + a.bn_beta[k];
                if (a.residual) z += a.residual[o];
                if (a.relu) z = fmaxf(z, 0.f);
                a.out[o] = z;
                if (stats) {
                    s1[nt][j] += (double)y;
                    s2[nt][j] += (double)y * (double)y;
                }
            }
    if (stats) {
        // Lanes with the same tig hold the same columns: reduce over gid (lane bits 2..4).
        CDA_UNROLL
        for (int nt = 0; nt < NT; ++nt)
            CDA_UNROLL
            for (int j = 0; j < 2; ++j)
                CDA_UNROLL
                for (int o = 4; o < 32; o <<= 1) {
                    s1[nt][j] += __shfl_xor_sync(CDA_FULL_MASK, s1[nt][j], o);
                    s2[nt][j] += __shfl_xor_sync(CDA_FULL_MASK, s2[nt][j], o);
                }
        if (gid == 0)
            CDA_UNROLL
            for (int nt = 0; nt < NT; ++nt)
                CDA_UNROLL
                for (int j = 0; j < 2; ++j) {
                    const int col = wn0 + nt * 8 + 2 * tig + j;
                    red[warp % WARPS_M][0][col] = s1[nt][j];
                    red[warp % WARPS_M][1][col] = s2[nt][j];
                }
        __syncthreads();
        for (int col = tid; col < BN; col += THREADS) {
            const int k = n0 + col;
            if (k >= p.k) continue;
            double t1 = 0.0, t2 = 0.0;
            CDA_UNROLL
            for (int wm = 0; wm < WARPS_M; ++wm) {
                t1 += red[wm][0][col];
                t2 += red[wm][1][col];
            }
            a.stats_partial[(int64_t)k * a.tiles_m + blockIdx.x] = t1;
            a.stats_partial[((int64_t)p.k + k) * a.tiles_m + blockIdx.x] = t2;
        }
    }
}

// dx[o] (channel c of C) from the dgrad value v, as DgradEpilogue (mode 0 Store, 1 MaskInput, 2 BnRelu).
CDA_DEVICE void dgrad_epilogue(const ConvDgradArgs& a, int C, int64_t o, int c, float v) {
    if (a.mode == 0) {
        a.dx[o] = v;
    } else if (a.mode == 1) {
        float gsum = v;
        if (a.add) gsum += a.add[o];
        if (a.accumulate) gsum += a.dx[o];
        a.dx[o] = a.x[o] > 0.f ? gsum : 0.f;
    } else {
        const float through = a.x[o] > 0.f ? a.scale[c] * v : 0.f;
        a.dx[o] = through + a.coef[c] + a.coef[C + c] * (a.y_prev[o] - a.coef[2 * C + c]);
    }
}

template <bool TC>
CDA_DEVICE void dgrad(const ConvProblem& p, const ConvDgradArgs& a) {
    __shared__ __align__(16) float As[2][BK][LDS];
    __shared__ __align__(16) float Bs[2][BK][LDS];
    const int tid = (int)threadIdx.x;
    const int lane = tid & 31, warp = tid >> 5;
    const int gid = lane >> 2, tig = lane & 3;
    const int wm0 = (warp % WARPS_M) * WM, wn0 = (warp / WARPS_M) * WN;
    const int m0 = (int)blockIdx.x * BM, n0 = (int)blockIdx.y * BN;
    const int hw = p.h * p.w;
    const int M = p.n * hw;

    DgradGather g;
    g.init(p, a.dy, a.w, m0 + tid % BM, tid / BM, tid % BK);
    float acc[MT][NT][4];
    CDA_UNROLL
    for (int mt = 0; mt < MT; ++mt)
        CDA_UNROLL
        for (int nt = 0; nt < NT; ++nt)
            CDA_UNROLL
            for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0.f;
    mainloop<TC>(g, n0, acc, As, Bs);

    CDA_UNROLL
    for (int mt = 0; mt < MT; ++mt)
        CDA_UNROLL
        for (int h = 0; h < 2; ++h) {
            const int m = m0 + acc_row(wm0, mt, gid, 2 * h);
            if (m >= M) continue;
            const int img = m / hw;
            const int64_t base = (int64_t)img * p.c * hw + (m - img * hw);
            CDA_UNROLL
            for (int nt = 0; nt < NT; ++nt)
                CDA_UNROLL
                for (int j = 0; j < 2; ++j) {
                    const int c = n0 + wn0 + nt * 8 + 2 * tig + j;
                    if (c >= p.c) continue;
                    const int64_t o = base + (int64_t)c * hw;
                    dgrad_epilogue(a, p.c, o, c, acc[mt][nt][2 * h + j]);
                }
        }
}

// Direct dgrad for few input channels (C <= DIRECT_MAX_C): one thread per input pixel computes all C
// channels in fp32, visiting only the taps that reach it: r = (h + pad) mod stride, stride steps on,
// and the same for s. For the input-image gradient of an ImageNet stem (C = 3, 7x7 stride 2) the GEMM
// kernels would pad GEMM_N = 3 to a 64-wide tile and multiply the 3 of 4 taps that stride 2 makes
// zero: ~170x the useful work. Weights are read through the cache (every lane of a warp reads one of
// at most stride^2 addresses), dy rows are shared by neighbouring lanes.
constexpr int DIRECT_MAX_C = 4;

template <int C>
CDA_DEVICE void dgrad_direct(const ConvProblem& p, const ConvDgradArgs& a) {
    const int64_t total = (int64_t)p.n * p.h * p.w;
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    const int hw = p.h * p.w;
    const int img = (int)(i / hw), rem = (int)(i - (int64_t)img * hw);
    const int ih = rem / p.w, iw = rem - (rem / p.w) * p.w;
    const int hp = ih + p.pad, wp = iw + p.pad;
    const int rs = p.r * p.s;
    const float* dyb = a.dy + (int64_t)img * p.k * p.p * p.q;
    float acc[C];
    CDA_UNROLL
    for (int c = 0; c < C; ++c) acc[c] = 0.f;
    for (int r = hp % p.stride; r < p.r && r <= hp; r += p.stride) {
        const int oh = (hp - r) / p.stride;
        if (oh >= p.p) continue;
        for (int s = wp % p.stride; s < p.s && s <= wp; s += p.stride) {
            const int ow = (wp - s) / p.stride;
            if (ow >= p.q) continue;
            const float* g = dyb + (int64_t)oh * p.q + ow;
            const float* wk = a.w + r * p.s + s;
            for (int k = 0; k < p.k; ++k) {
                const float gv = g[(int64_t)k * p.p * p.q];
                CDA_UNROLL
                for (int c = 0; c < C; ++c) acc[c] += gv * __ldg(wk + ((int64_t)k * C + c) * rs);
            }
        }
    }
    const int64_t base = (int64_t)img * C * hw + rem;
    CDA_UNROLL
    for (int c = 0; c < C; ++c) dgrad_epilogue(a, C, base + (int64_t)c * hw, c, acc[c]);
}

}  // namespace conv

CDA_GLOBAL void __launch_bounds__(128) conv_fprop_v1_f32(ConvProblem p, ConvFpropArgs a) { conv::fprop<false>(p, a); }
CDA_EXPORT(conv_fprop_v1_f32)
CDA_GLOBAL void __launch_bounds__(128) conv_fprop_v2_tf32(ConvProblem p, ConvFpropArgs a) { conv::fprop<true>(p, a); }
CDA_EXPORT(conv_fprop_v2_tf32)
CDA_GLOBAL void __launch_bounds__(128) conv_dgrad_v1_f32(ConvProblem p, ConvDgradArgs a) { conv::dgrad<false>(p, a); }
CDA_EXPORT(conv_dgrad_v1_f32)
CDA_GLOBAL void __launch_bounds__(128) conv_dgrad_v2_tf32(ConvProblem p, ConvDgradArgs a) { conv::dgrad<true>(p, a); }
CDA_EXPORT(conv_dgrad_v2_tf32)

// Direct dgrad, C <= 4 (see conv::dgrad_direct). Launch: one thread per input pixel (N*H*W), 256 per block.
CDA_GLOBAL void __launch_bounds__(256) conv_dgrad_direct_f32(ConvProblem p, ConvDgradArgs a) {
    static_assert(conv::DIRECT_MAX_C == 4, "one case per channel count below");
    switch (p.c) {
        case 1: conv::dgrad_direct<1>(p, a); break;
        case 2: conv::dgrad_direct<2>(p, a); break;
        case 3: conv::dgrad_direct<3>(p, a); break;
        case 4: conv::dgrad_direct<4>(p, a); break;
        default: break;
    }
}
CDA_EXPORT(conv_dgrad_direct_f32)

// stats[k] = mean, stats[K + k] = biased variance of channel k from the fprop partial sums.
// Launch: K blocks of 256 threads.
CDA_GLOBAL void __launch_bounds__(256) conv_stats_finalize_f32(ConvStatsArgs a) {
    __shared__ double scratch[32];
    const int k = (int)blockIdx.x;
    const double* p1 = a.partial + (int64_t)k * a.tiles_m;
    const double* p2 = a.partial + ((int64_t)a.k + k) * a.tiles_m;
    double s1 = 0.0, s2 = 0.0;
    for (int t = threadIdx.x; t < a.tiles_m; t += blockDim.x) {
        s1 += p1[t];
        s2 += p2[t];
    }
    const double t1 = cda_block_sum(s1, scratch);
    const double t2 = cda_block_sum(s2, scratch);
    if (threadIdx.x == 0) {
        const double mean = t1 / a.count;
        const double var = t2 / a.count - mean * mean;
        a.stats[k] = (float)mean;
        a.stats[a.k + k] = (float)(var > 0.0 ? var : 0.0);
    }
}
CDA_EXPORT(conv_stats_finalize_f32)
