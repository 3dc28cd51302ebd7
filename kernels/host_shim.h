// Host emulation of the CUDA subset that kernels/*.cu use, so the same sources compile as C++17
// (g++ / clang++) when __CUDACC_RTC__ is not defined. build.rs compiles every kernel file this way
// into a static library; the CUDA backend's emulated device launches kernels through `cda_emu_<kernel>`
// (see CDA_EXPORT in common.cuh) with the same grid, block and argument array as cuLaunchKernel.
//
// Execution model (faithful for kernels that are correct CUDA; slow by design):
//   - Blocks of a grid run one at a time. Each CUDA thread of a block is a fiber: its own stack and
//     registers, switched by a few instructions (x86-64) or ucontext (elsewhere). An OS thread per CUDA
//     thread is the textbook shim, but on a 2-core machine every __syncthreads over 128 OS threads
//     costs ~300 us (each thread must be scheduled by the kernel) against ~5 us with fibers, which is
//     the difference between seconds and minutes for the test suite.
//   - threadIdx / blockIdx / blockDim / gridDim come from the running fiber and launch.
//   - __syncthreads is a barrier over the block's live threads: a thread that returned no longer counts
//     (sm_70+ semantics). Warp operations (shuffles, mma.sync) wait on a per-warp barrier and stage
//     values in a per-warp exchange area. The area is double-buffered, so one barrier per operation is
//     enough: a lane writes slot s again only two operations later, after every lane passed the barrier
//     in between, i.e. after every lane finished reading slot s. All lanes of a warp must take part.
//   - When a barrier opens, its waiters resume in ascending thread order on even generations and in
//     descending order on odd ones, so a read that is missing a barrier after another thread's write
//     sees stale data in one of the two orders instead of always being lucky.
//   - __shared__ is `static`: only one block is live at a time. Dynamic shared memory goes through
//     CDA_DYNAMIC_SMEM. Emulated launches must be serialised by the caller (the Rust side holds a lock).
//   - Atomics are host atomics (compare-and-swap loops for floating point).
//   - Inline-PTX helpers (cvt.rna.tf32.f32, mma.sync.m16n8k8 tf32) follow the PTX ISA: TF32 rounding
//     adds 0x1000 to the bit pattern and clears the low 13 bits (round to nearest, ties away from zero
//     on the magnitude); the mma fragment tables are written out at cda_emu_mma_tf32_m16n8k8.
// What this cannot show: speed, races that a fixed interleaving hides, and the real hardware's fragment
// layout if the tables below were misread. Those need a GPU run.
#pragma once

#ifdef __CUDACC_RTC__
#error "host_shim.h is for host emulation only"
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

struct uint3 {
    unsigned x, y, z;
};

// std::bit_cast without C++20: the bits of `from` as a `To` of the same size.
template <class To, class From>
inline To cda_bit_cast(const From& from) {
    static_assert(sizeof(To) == sizeof(From), "same size");
    To to;
    std::memcpy(&to, &from, sizeof(To));
    return to;
}
struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

namespace cda_emu {

constexpr unsigned kWarpSize = 32;
// Kernels keep little on the stack (a few hundred bytes of fragments); 128 KiB leaves ample room even
// unoptimised. The pool is not zero-filled, so untouched pages cost no memory.
constexpr size_t kStackBytes = 128 * 1024;

struct Fiber {
#if defined(__x86_64__)
    void* sp = nullptr;
#else
    ucontext_t ctx;
#endif
    uint3 idx{0, 0, 0};
    unsigned tid = 0;
    unsigned parity = 0;  // which exchange slot this thread's next warp operation uses
    bool done = false;
    unsigned char* stack = nullptr;
};

struct WaitBarrier {
    unsigned expected = 0, arrived = 0, generation = 0;
    std::vector<Fiber*> waiters;
};

// One warp's exchange area: two slots (double buffering, see above) for shuffles and mma operands.
struct Warp {
    uint64_t xchg[2][kWarpSize];
    float mma_a[2][16][8];
    float mma_b[2][8][8];
};

struct Launch {
    dim3 grid, block;
    uint3 block_idx{0, 0, 0};
    unsigned threads = 0, live = 0;
    std::vector<Fiber> fibers;
    WaitBarrier block_bar;
    std::vector<WaitBarrier> warp_bars;
    std::vector<Warp> warps;
    std::vector<Fiber*> ready;
    size_t ready_head = 0;
    std::vector<unsigned char> dyn_smem;
    void (*invoke)(void*) = nullptr;
    void* body = nullptr;
#if defined(__x86_64__)
    void* sched_sp = nullptr;
#else
    ucontext_t sched_ctx;
#endif
};

inline thread_local Launch* tl_launch = nullptr;
inline thread_local Fiber* tl_cur = nullptr;
inline thread_local std::string tl_error;

// ---- context switching ----------------------------------------------------------------------------
#if defined(__x86_64__)
// Saves the callee-saved registers, MXCSR and the x87 control word on the current stack, stores the
// stack pointer to *save, loads `load` and restores the same from there (System V ABI).
__attribute__((naked, noinline)) static void switch_stack(void** /*save*/, void* /*load*/) {
    __asm__(
        "pushq %rbp\n\tpushq %rbx\n\tpushq %r12\n\tpushq %r13\n\tpushq %r14\n\tpushq %r15\n\t"
        "subq $8, %rsp\n\tstmxcsr (%rsp)\n\tfnstcw 4(%rsp)\n\t"
        "movq %rsp, (%rdi)\n\tmovq %rsi, %rsp\n\t"
        "ldmxcsr (%rsp)\n\tfldcw 4(%rsp)\n\taddq $8, %rsp\n\t"
        "popq %r15\n\tpopq %r14\n\tpopq %r13\n\tpopq %r12\n\tpopq %rbx\n\tpopq %rbp\n\tret\n\t");
}
// First code a new fiber runs: calls r12(rbx) on a 16-byte aligned stack; the callee never returns.
__attribute__((naked, noinline)) static void fiber_trampoline() {
    __asm__("movq %rbx, %rdi\n\tcallq *%r12\n\tud2\n\t");
}
// Called through a volatile pointer so the optimiser treats every switch as an opaque call.
static void (*volatile g_switch)(void**, void*) = switch_stack;
#endif

inline void fiber_main(Fiber* f);

#if defined(__x86_64__)
inline void fiber_reset(Fiber& f) {
    uintptr_t top = ((uintptr_t)(f.stack + kStackBytes)) & ~(uintptr_t)15;
    uint64_t* s = (uint64_t*)top;
    uint32_t mxcsr;
    uint16_t fpucw;
    __asm__ volatile("stmxcsr %0" : "=m"(mxcsr));
    __asm__ volatile("fnstcw %0" : "=m"(fpucw));
    s[-1] = (uint64_t)(uintptr_t)&fiber_trampoline;  // return address of the first switch
    s[-2] = 0;                                        // rbp
    s[-3] = (uint64_t)(uintptr_t)&f;                  // rbx: argument
    s[-4] = (uint64_t)(uintptr_t)&fiber_main;         // r12: entry
    s[-5] = 0;                                        // r13
    s[-6] = 0;                                        // r14
    s[-7] = 0;                                        // r15
    s[-8] = (uint64_t)mxcsr | ((uint64_t)fpucw << 32);
    f.sp = &s[-8];
}
inline void switch_to_fiber(Launch& L, Fiber& f) { g_switch(&L.sched_sp, f.sp); }
inline void switch_to_scheduler(Launch& L, Fiber& f) { g_switch(&f.sp, L.sched_sp); }
#else
inline void fiber_entry_ucontext(unsigned lo, unsigned hi) {
    fiber_main((Fiber*)(((uintptr_t)hi << 32) | (uintptr_t)lo));
}
inline void fiber_reset(Fiber& f) {
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = nullptr;
    uintptr_t p = (uintptr_t)&f;
    makecontext(&f.ctx, (void (*)())fiber_entry_ucontext, 2, (unsigned)(p & 0xffffffffu), (unsigned)(p >> 32));
}
inline void switch_to_fiber(Launch& L, Fiber& f) { swapcontext(&L.sched_ctx, &f.ctx); }
inline void switch_to_scheduler(Launch& L, Fiber& f) { swapcontext(&f.ctx, &L.sched_ctx); }
#endif

// Stacks are kept between launches (launches are serialised) and only grow.
struct StackPool {
    std::unique_ptr<unsigned char[]> mem;
    size_t bytes = 0;
    unsigned char* get(size_t need) {
        if (bytes < need) {
            mem.reset(new unsigned char[need + 64]);
            bytes = need;
        }
        return (unsigned char*)(((uintptr_t)mem.get() + 63) & ~(uintptr_t)63);
    }
};
inline StackPool& stack_pool() {
    static StackPool pool;
    return pool;
}

inline void release(Launch& L, WaitBarrier& b) {
    if (b.generation++ % 2 == 0) {
        for (Fiber* f : b.waiters) L.ready.push_back(f);
    } else {
        for (size_t i = b.waiters.size(); i-- > 0;) L.ready.push_back(b.waiters[i]);
    }
    b.waiters.clear();
    b.arrived = 0;
}

inline void arrive_and_wait(WaitBarrier& b) {
    Launch& L = *tl_launch;
    Fiber& f = *tl_cur;
    b.arrived++;
    b.waiters.push_back(&f);
    if (b.arrived == b.expected) release(L, b);
    switch_to_scheduler(L, f);
}

inline void drop(Launch& L, WaitBarrier& b) {
    b.expected--;
    if (b.arrived > 0 && b.arrived == b.expected) release(L, b);
}

inline void fiber_main(Fiber* f) {
    Launch& L = *tl_launch;
    L.invoke(L.body);
    f->done = true;
    L.live--;
    drop(L, L.block_bar);
    drop(L, L.warp_bars[f->tid / kWarpSize]);
    switch_to_scheduler(L, *f);
    std::abort();  // a finished fiber is never resumed
}

// Runs `body` for every thread of every block. Returns false (message in tl_error) on a deadlock, i.e.
// a barrier some live threads never reach.
template <class Body>
bool run_grid(dim3 grid, dim3 block, unsigned smem_bytes, Body& body) {
    Launch L;
    L.grid = grid;
    L.block = block;
    L.threads = block.x * block.y * block.z;
    const unsigned long long blocks = (unsigned long long)grid.x * grid.y * grid.z;
    if (L.threads == 0 || blocks == 0) return true;
    const unsigned nwarps = (L.threads + kWarpSize - 1) / kWarpSize;
    L.fibers = std::vector<Fiber>(L.threads);
    L.warp_bars = std::vector<WaitBarrier>(nwarps);
    L.warps = std::vector<Warp>(nwarps);
    L.dyn_smem.assign((size_t)smem_bytes + 16, 0);
    L.invoke = [](void* b) { (*static_cast<Body*>(b))(); };
    L.body = &body;
    unsigned char* base = stack_pool().get((size_t)L.threads * kStackBytes);
    for (unsigned t = 0; t < L.threads; ++t) {
        Fiber& f = L.fibers[t];
        f.tid = t;
        f.idx = uint3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
        f.stack = base + (size_t)t * kStackBytes;
    }
    Launch* saved_launch = tl_launch;
    Fiber* saved_cur = tl_cur;
    tl_launch = &L;
    bool ok = true;
    for (unsigned long long b = 0; b < blocks && ok; ++b) {
        L.block_idx = uint3{(unsigned)(b % grid.x), (unsigned)((b / grid.x) % grid.y),
                            (unsigned)(b / ((unsigned long long)grid.x * grid.y))};
        L.live = L.threads;
        L.block_bar = WaitBarrier{};
        L.block_bar.expected = L.threads;
        for (unsigned w = 0; w < nwarps; ++w) {
            L.warp_bars[w] = WaitBarrier{};
            L.warp_bars[w].expected = std::min(kWarpSize, L.threads - w * kWarpSize);
        }
        L.ready.clear();
        L.ready_head = 0;
        for (Fiber& f : L.fibers) {
            f.done = false;
            f.parity = 0;
            fiber_reset(f);
            L.ready.push_back(&f);
        }
        while (L.ready_head < L.ready.size()) {
            Fiber* f = L.ready[L.ready_head++];
            if (L.ready_head > 4096 && L.ready_head * 2 > L.ready.size()) {
                L.ready.erase(L.ready.begin(), L.ready.begin() + (std::ptrdiff_t)L.ready_head);
                L.ready_head = 0;
            }
            tl_cur = f;
            switch_to_fiber(L, *f);
        }
        if (L.live != 0) {
            tl_error = "deadlock in block (" + std::to_string(L.block_idx.x) + "," + std::to_string(L.block_idx.y) + "," +
                       std::to_string(L.block_idx.z) + "): " + std::to_string(L.live) + " of " +
                       std::to_string(L.threads) + " threads wait at a barrier the others never reach";
            ok = false;
        }
    }
    tl_launch = saved_launch;
    tl_cur = saved_cur;
    return ok;
}

// cuLaunchKernel-style entry: args[i] points at the value of the kernel's i-th parameter (device
// pointers are host addresses here, passed as 64-bit integers exactly as to the driver).
template <class... A, size_t... I>
void call_unpacked(void (*kernel)(A...), void** args, std::index_sequence<I...>) {
    kernel(*reinterpret_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
}

template <class... A>
int launch(void (*kernel)(A...), const unsigned* grid, const unsigned* block, unsigned smem, void** args) {
    auto body = [&]() { call_unpacked(kernel, args, std::index_sequence_for<A...>{}); };
    return run_grid(dim3{grid[0], grid[1], grid[2]}, dim3{block[0], block[1], block[2]}, smem, body) ? 0 : 1;
}

inline unsigned lane_id() { return tl_cur->tid % kWarpSize; }
inline Warp& my_warp() { return tl_launch->warps[tl_cur->tid / kWarpSize]; }
inline WaitBarrier& my_warp_bar() { return tl_launch->warp_bars[tl_cur->tid / kWarpSize]; }
inline unsigned next_slot() {
    unsigned s = tl_cur->parity;
    tl_cur->parity ^= 1u;
    return s;
}

template <class T>
T warp_exchange(T v, unsigned src_lane) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>);
    Warp& w = my_warp();
    unsigned slot = next_slot();
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    w.xchg[slot][lane_id()] = bits;
    arrive_and_wait(my_warp_bar());
    T r;
    uint64_t got = w.xchg[slot][src_lane % kWarpSize];
    std::memcpy(&r, &got, sizeof(T));
    return r;
}

}  // namespace cda_emu

// Message of the last failed emulated launch on this thread (defined in host_shim.cpp).
extern "C" const char* cda_emu_last_error();

// ---- CUDA built-ins -------------------------------------------------------------------------------
#define threadIdx (cda_emu::tl_cur->idx)
#define blockIdx (cda_emu::tl_launch->block_idx)
#define blockDim (cda_emu::tl_launch->block)
#define gridDim (cda_emu::tl_launch->grid)
#define warpSize 32

#define __device__
#define __host__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

inline void __syncthreads() { cda_emu::arrive_and_wait(cda_emu::tl_launch->block_bar); }
inline void __syncwarp(unsigned = 0xffffffffu) { cda_emu::arrive_and_wait(cda_emu::my_warp_bar()); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

template <class T>
inline T __shfl_sync(unsigned, T v, int src, int width = 32) {
    unsigned lane = cda_emu::lane_id();
    unsigned base = lane - lane % (unsigned)width;
    return cda_emu::warp_exchange(v, base + ((unsigned)src % (unsigned)width));
}
template <class T>
inline T __shfl_xor_sync(unsigned, T v, int mask, int width = 32) {
    unsigned lane = cda_emu::lane_id();
    unsigned src = lane ^ (unsigned)mask;
    if (src / (unsigned)width != lane / (unsigned)width) src = lane;
    return cda_emu::warp_exchange(v, src);
}
template <class T>
inline T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
    unsigned lane = cda_emu::lane_id();
    unsigned src = lane + delta;
    if (src / (unsigned)width != lane / (unsigned)width) src = lane;
    return cda_emu::warp_exchange(v, src);
}

template <class U, class Op>
inline U cda_emu_atomic_rmw(U* addr, Op op) {
    U old = __atomic_load_n(addr, __ATOMIC_SEQ_CST);
    U want;
    do {
        want = op(old);
    } while (!__atomic_compare_exchange(addr, &old, &want, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
    return old;
}
inline float atomicAdd(float* a, float v) {
    uint32_t old = cda_emu_atomic_rmw(reinterpret_cast<uint32_t*>(a),
                                      [v](uint32_t o) { return cda_bit_cast<uint32_t>(cda_bit_cast<float>(o) + v); });
    return cda_bit_cast<float>(old);
}
inline double atomicAdd(double* a, double v) {
    uint64_t old = cda_emu_atomic_rmw(reinterpret_cast<uint64_t*>(a),
                                      [v](uint64_t o) { return cda_bit_cast<uint64_t>(cda_bit_cast<double>(o) + v); });
    return cda_bit_cast<double>(old);
}
inline int atomicAdd(int* a, int v) { return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicAdd(unsigned* a, unsigned v) { return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST); }

inline unsigned __float_as_uint(float f) { return cda_bit_cast<unsigned>(f); }
inline float __uint_as_float(unsigned u) { return cda_bit_cast<float>(u); }
inline int __float_as_int(float f) { return cda_bit_cast<int>(f); }
inline float __int_as_float(int i) { return cda_bit_cast<float>(i); }
template <class T>
inline T __ldg(const T* p) { return *p; }
// Correctly rounded single operations that the compiler must not contract into FMAs (the emulation
// library is built with -ffp-contract=off anyway).
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }

// ---- inline-PTX helpers ---------------------------------------------------------------------------
// cvt.rna.tf32.f32: round to nearest, ties away from zero, keeping 10 explicit mantissa bits.
inline uint32_t cda_emu_cvt_rna_tf32(float x) {
    uint32_t u = cda_bit_cast<uint32_t>(x);
    if ((u & 0x7f800000u) == 0x7f800000u) return u;  // Inf and NaN pass through
    return (u + 0x1000u) & 0xffffe000u;
}

// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {d0..d3}, {a0..a3}, {b0, b1}, {c0..c3}.
// Fragment tables (PTX ISA, "Matrix Fragments for mma.m16n8k8", .tf32 and .f32), with
// g = laneid >> 2 (groupID) and t = laneid % 4 (threadID_in_group):
//   A (16x8, row): a0 = A[g][t], a1 = A[g+8][t], a2 = A[g][t+4], a3 = A[g+8][t+4]
//   B (8x8, col):  b0 = B[t][g], b1 = B[t+4][g]
//   C, D (16x8):   c0 = C[g][2t], c1 = C[g][2t+1], c2 = C[g+8][2t], c3 = C[g+8][2t+1]
// The hardware reads only the tf32 bits of a and b (the low 13 are ignored); tf32 products are exact
// in fp32 and are summed in fp32 here (the hardware's internal summation order is not specified).
inline void cda_emu_mma_tf32_m16n8k8(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
    cda_emu::Warp& w = cda_emu::my_warp();
    unsigned slot = cda_emu::next_slot();
    unsigned lane = cda_emu::lane_id(), g = lane >> 2, t = lane & 3u;
    auto tf = [](uint32_t bits) { return cda_bit_cast<float>(bits & 0xffffe000u); };
    w.mma_a[slot][g][t] = tf(a[0]);
    w.mma_a[slot][g + 8][t] = tf(a[1]);
    w.mma_a[slot][g][t + 4] = tf(a[2]);
    w.mma_a[slot][g + 8][t + 4] = tf(a[3]);
    w.mma_b[slot][t][g] = tf(b[0]);
    w.mma_b[slot][t + 4][g] = tf(b[1]);
    cda_emu::arrive_and_wait(cda_emu::my_warp_bar());
    const unsigned rows[4] = {g, g, g + 8, g + 8};
    const unsigned cols[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
    float out[4];
    for (int i = 0; i < 4; ++i) {
        float acc = 0.f;
        for (int k = 0; k < 8; ++k) acc += w.mma_a[slot][rows[i]][k] * w.mma_b[slot][k][cols[i]];
        out[i] = c[i] + acc;
    }
    for (int i = 0; i < 4; ++i) d[i] = out[i];
}
