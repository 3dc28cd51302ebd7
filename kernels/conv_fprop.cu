// conv_fprop: implicit-GEMM convolution forward with the fused epilogue recover needs (semantics:
// src/ops/conv/mod.rs; CPU twin src/ops/conv/cpu.rs `fprop`; shared tiling in conv.cuh).
//
// GEMM mapping (CUTLASS's fprop): GEMM_M = N*P*Q (output pixels), GEMM_N = K, GEMM_K = C*R*S;
//   A[m][kk] = x[n][c][p*stride - pad + r][q*stride - pad + s] (0 outside), B[kk][k] = w[k][c][r][s].
// Versions: conv_fprop_v1_f32 (fp32 FMA), conv_fprop_v2_tf32 (mma.sync TF32); see conv.cuh.
// Epilogue (exactly FpropEpilogue of src/ops/conv/mod.rs):
//   fprop: y = acc (optional store of the raw conv output); out = act((y - mean[k]) * scale[k] + beta[k]
//          [+ residual]) with act = ReLU or identity; optional per-channel statistics of y over N*P*Q.
//          Statistics: every CTA reduces sum(y) and sum(y^2) of its 64 rows per channel in float64
//          (thread, then warp shuffles, then shared memory), writing partial[2][K][tiles_m]; then
//          conv_stats_finalize_f32 (one block per channel) sums the partials in float64 and writes
//          mean and biased variance max(E[y^2] - mean^2, 0). In float64 the cancellation in
//          E[y^2] - mean^2 costs ~1e-16 * mean^2 / var relative: harmless for any BN input, and it is
//          the CPU twin's formula. No atomics: results are deterministic.
#include "conv.cuh"

namespace conv {

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

}  // namespace conv

CDA_GLOBAL void __launch_bounds__(128) conv_fprop_v1_f32(ConvProblem p, ConvFpropArgs a) { conv::fprop<false>(p, a); }
CDA_EXPORT(conv_fprop_v1_f32)
CDA_GLOBAL void __launch_bounds__(128) conv_fprop_v2_tf32(ConvProblem p, ConvFpropArgs a) { conv::fprop<true>(p, a); }
CDA_EXPORT(conv_fprop_v2_tf32)

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
