// conv_dgrad: implicit-GEMM convolution data gradient with the fused epilogues recover and training
// need (semantics: src/ops/conv/mod.rs; CPU twin src/ops/conv/cpu.rs `dgrad`; shared tiling in conv.cuh).
//
// GEMM mapping (CUTLASS's dgrad): GEMM_M = N*H*W (input pixels), GEMM_N = C, GEMM_K = K*R*S;
//   A[m][kk] = dy[n][k][(h + pad - r) / stride][(w + pad - s) / stride] where the division is exact
//   and in range (else 0), B[kk][c] = w[k][c][r][s].
// Versions: conv_dgrad_v1_f32 (fp32 FMA), conv_dgrad_v2_tf32 (mma.sync TF32); see conv.cuh.
//   conv_dgrad_direct_f32: dgrad for C <= 4 input channels (the input-image gradient), used by both
//      versions: one thread per input pixel, fp32, only the taps the stride lets through; no tiles.
// Epilogue (exactly DgradEpilogue of src/ops/conv/mod.rs):
//   dgrad: Store: dx = acc. MaskInput: dx = (acc [+ add] [+ dx]) * (x > 0). BnRelu: dx = scale[c] * acc *
//          (x > 0) + a[c] + b[c] * (y_prev - mean[c]) with coef = [a, b, mean] (see bn_match.cu).
#include "conv.cuh"

namespace conv {

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
