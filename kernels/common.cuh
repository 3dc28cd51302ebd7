// Shared helpers for every kernels/*.cu.
//
// Under NVRTC (__CUDACC_RTC__) these are CUDA device helpers. Every kernel file also compiles as plain
// C++ for host emulation (see host_shim.h), so kernels use only what this header and the shim provide:
// CDA_DEVICE / CDA_METHOD (member functions) / CDA_GLOBAL instead of __device__ / __global__, CDA_EXPORT(kernel) after each entry point
// (it exports the emulated launcher `cda_emu_<kernel>`; build.rs lists the exported names), and the
// helpers below for everything that differs between the two (inline PTX, constants).
#pragma once

#ifdef __CUDACC_RTC__
typedef int int32_t;
typedef unsigned int uint32_t;
typedef long long int64_t;
typedef unsigned long long uint64_t;
#define CDA_DEVICE __device__ __forceinline__
#define CDA_METHOD __device__ __forceinline__
#define CDA_GLOBAL extern "C" __global__
#define CDA_UNROLL _Pragma("unroll")
#define CDA_EXPORT(kernel)
// Dynamic shared memory (the launch's shared-memory byte count) as a `T*` named `name`.
#define CDA_DYNAMIC_SMEM(T, name)                                  \
    extern __shared__ __align__(16) unsigned char cda_dyn_smem[];   \
    T* name = reinterpret_cast<T*>(cda_dyn_smem)
#else
#include "host_shim.h"
#define CDA_DEVICE static inline
#define CDA_METHOD inline
#define CDA_GLOBAL extern "C"
#define CDA_UNROLL
#define CDA_EXPORT(kernel)                                                                              \
    extern "C" int cda_emu_##kernel(const unsigned* grid, const unsigned* block, unsigned smem, void** args) { \
        return cda_emu::launch(kernel, grid, block, smem, args);                                         \
    }
#define CDA_DYNAMIC_SMEM(T, name) T* name = reinterpret_cast<T*>(cda_emu::tl_launch->dyn_smem.data())
#endif

// Compile-time layout checks for a parameter struct mirrored in Rust (`#[repr(C)]`; the same size and
// field offsets are asserted there by `assert_kernel_layout!`).
#define CDA_PARAMS_SIZE(T, bytes) static_assert(sizeof(T) == (bytes), #T " must match its Rust mirror")
// NVRTC has no offsetof in constant expressions, so the offsets are checked where the same source is
// compiled as C++ for host emulation (g++: same struct layout rules for these plain structs).
#ifdef __CUDACC_RTC__
#define CDA_PARAMS_OFFSET(T, field, bytes)
#else
#define CDA_PARAMS_OFFSET(T, field, bytes) \
    static_assert(__builtin_offsetof(T, field) == (bytes), #T "." #field " must match its Rust mirror")
#endif

#define CDA_FULL_MASK 0xffffffffu

CDA_DEVICE int cda_min(int a, int b) { return a < b ? a : b; }
CDA_DEVICE int cda_max(int a, int b) { return a > b ? a : b; }

// Euclidean modulo: result in [0, m) for any a.
CDA_DEVICE int cda_mod(int a, int m) {
    int r = a % m;
    return r < 0 ? r + m : r;
}

CDA_DEVICE float cda_neg_inf() { return __int_as_float((int)0xff800000u); }
CDA_DEVICE float cda_nan() { return __int_as_float(0x7fc00000); }
CDA_DEVICE bool cda_isnan(float x) { return x != x; }

// Round to TF32 (cvt.rna.tf32.f32: nearest, ties away from zero); the bits feed mma.sync directly.
CDA_DEVICE uint32_t cda_tf32(float x) {
#ifdef __CUDACC_RTC__
    uint32_t r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
#else
    return cda_emu_cvt_rna_tf32(x);
#endif
}

// d = A(16x8, tf32) * B(8x8, tf32) + c in fp32, one warp; fragment layouts in host_shim.h.
CDA_DEVICE void cda_mma_tf32_m16n8k8(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
#ifdef __CUDACC_RTC__
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
#else
    cda_emu_mma_tf32_m16n8k8(d, a, b, c);
#endif
}

// Sum over the 32 lanes of a warp (every lane gets the total; all lanes must call it).
template <class T>
CDA_DEVICE T cda_warp_sum(T v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(CDA_FULL_MASK, v, o);
    return v;
}
template <class T>
CDA_DEVICE T cda_warp_max(T v) {
    for (int o = 16; o > 0; o >>= 1) {
        T other = __shfl_xor_sync(CDA_FULL_MASK, v, o);
        v = other > v ? other : v;
    }
    return v;
}

// Sum over a 1-D block whose size is a multiple of 32 (<= 1024); every thread gets the total, summed
// in the same order on every thread (deterministic). `scratch` is __shared__ with >= 32 elements.
template <class T>
CDA_DEVICE T cda_block_sum(T v, T* scratch) {
    v = cda_warp_sum(v);
    const int warps = (int)(blockDim.x >> 5);
    __syncthreads();  // earlier readers of scratch are done
    if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
    __syncthreads();
    T total = scratch[0];
    for (int w = 1; w < warps; ++w) total += scratch[w];
    return total;
}

// Max over a 1-D block, as cda_block_sum (NaN is not propagated: use on finite data or check after).
template <class T>
CDA_DEVICE T cda_block_max(T v, T* scratch) {
    v = cda_warp_max(v);
    const int warps = (int)(blockDim.x >> 5);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
    __syncthreads();
    T m = scratch[0];
    for (int w = 1; w < warps; ++w) m = scratch[w] > m ? scratch[w] : m;
    return m;
}

// PyTorch's lerp, start + w * (end - start) for |w| < 0.5, else end - (end - start) * (1 - w), with
// every operation rounded separately (no FMA contraction) so that it matches the CPU twins bit for bit
// (Adam's and AdamW's first-moment update).
CDA_DEVICE float cda_lerp_rn(float start, float end, float weight) {
    float diff = __fadd_rn(end, -start);
    return fabsf(weight) < 0.5f ? __fadd_rn(start, __fmul_rn(weight, diff))
                                : __fadd_rn(end, -__fmul_rn(diff, __fadd_rn(1.0f, -weight)));
}

// out = mean of rows[0..n) (float64), summed by one 1-D block: strided partial sums, then the
// fixed-order block sum, so the result is deterministic for a given n. Every thread must call it;
// thread 0 writes. The finalize step of the per-row losses (softmax_ce, kd_loss).
CDA_DEVICE void cda_block_mean_rows(const double* rows, int n, float* out, double* scratch) {
    double s = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += rows[i];
    const double total = cda_block_sum(s, scratch);
    if (threadIdx.x == 0) *out = (float)(total / (double)n);
}
