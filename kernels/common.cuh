// Shared helpers for every kernels/*.cu.
//
// Under NVRTC (__CUDACC_RTC__) these are CUDA device helpers. Every kernel file also compiles as plain
// C++ for host emulation (see host_shim.h), so kernels use only what this header and the shim provide.
#pragma once

#ifdef __CUDACC_RTC__
typedef int int32_t;
typedef unsigned int uint32_t;
typedef long long int64_t;
typedef unsigned long long uint64_t;
#define CDA_DEVICE __device__ __forceinline__
#define CDA_GLOBAL extern "C" __global__
#else
#include "host_shim.h"
#endif

// Compile-time layout check for a parameter struct mirrored in Rust (`#[repr(C)]`, same size asserted there).
#define CDA_PARAMS_SIZE(T, bytes) static_assert(sizeof(T) == (bytes), #T " must match its Rust mirror")

CDA_DEVICE int cda_min(int a, int b) { return a < b ? a : b; }
CDA_DEVICE int cda_max(int a, int b) { return a > b ? a : b; }

// Euclidean modulo: result in [0, m) for any a.
CDA_DEVICE int cda_mod(int a, int m) {
    int r = a % m;
    return r < 0 ? r + m : r;
}
