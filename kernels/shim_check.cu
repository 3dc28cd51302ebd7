// shim_check: small kernels exercising each CUDA feature that kernels/host_shim.h emulates, with
// results the tests know exactly. Under emulation they check the shim; on a GPU the same tests check
// that the shim's semantics are the hardware's. Not used by the engine.
//
// shim_check_warp_f32 (1 block of 64 threads = 2 warps; out: 6 x 64 floats), lane value v = tid:
//   row 0: __shfl_xor_sync(v, 5)          row 1: __shfl_down_sync(v, 3) (upper lanes keep their own)
//   row 2: __shfl_sync(v, lane * 7 % 32)  row 3: __shfl_xor_sync(v, 1, width 8)
//   row 4: cda_warp_sum(v)                row 5: __shfl_down_sync(v, 2, width 16) after __syncwarp
// shim_check_block (grid 3 x 2, block 8 x 4 x 2 = 64 threads, 64 * 4 bytes of dynamic shared memory):
//   out[b * 64 + t] = 1000 * (b + 1) + (63 - t) read back from dynamic shared memory written by
//   thread 63 - t (t, b: linear thread and block indices from the 3-D threadIdx and 2-D blockIdx);
//   every thread adds 1 to counters[0], 0.5 to fsum[0] and 0.25 to dsum[0] (exactly representable, so
//   any order gives the same sums); threads with t % 3 != 0 then add 1 to out2[b * 64 + t], the others
//   return first (after the last barrier: __syncthreads after a partial exit is undefined in CUDA,
//   and no kernel here relies on it).
// Version 1 (this file).
#include "common.cuh"

CDA_GLOBAL void shim_check_warp_f32(float* out) {
    const int tid = (int)threadIdx.x;
    const int lane = tid & 31;
    const float v = (float)tid;
    out[0 * 64 + tid] = __shfl_xor_sync(CDA_FULL_MASK, v, 5);
    out[1 * 64 + tid] = __shfl_down_sync(CDA_FULL_MASK, v, 3);
    out[2 * 64 + tid] = __shfl_sync(CDA_FULL_MASK, v, lane * 7 % 32);
    out[3 * 64 + tid] = __shfl_xor_sync(CDA_FULL_MASK, v, 1, 8);
    out[4 * 64 + tid] = cda_warp_sum(v);
    __syncwarp();
    out[5 * 64 + tid] = __shfl_down_sync(CDA_FULL_MASK, v, 2, 16);
}
CDA_EXPORT(shim_check_warp_f32)

CDA_GLOBAL void shim_check_block(float* out, float* out2, int32_t* counters, float* fsum, double* dsum) {
    CDA_DYNAMIC_SMEM(int32_t, sm);
    const int t = (int)(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z));
    const int b = (int)(blockIdx.x + gridDim.x * blockIdx.y);
    const int nt = (int)(blockDim.x * blockDim.y * blockDim.z);
    sm[t] = 1000 * (b + 1) + t;
    __syncthreads();
    out[b * nt + t] = (float)sm[nt - 1 - t];
    atomicAdd(&counters[0], 1);
    atomicAdd(fsum, 0.5f);
    atomicAdd(dsum, 0.25);
    if (t % 3 == 0) return;
    out2[b * nt + t] += 1.f;
}
CDA_EXPORT(shim_check_block)
