/* cu_common.cuh: device helpers shared by the .cu files: element load/store for the three
 * dtypes (everything is computed in fp32 or fp64 and rounded once on store, round to nearest
 * even, as the ref backend does), by dtype code or typed (templated kernels), 16-byte copies,
 * grid sizing, the launch macros and the launch-error idiom.
 * Header-only, included by the .cu files: under nvcc, or as C++ under the host compiler in the
 * emulator build (CZ_CUDA_EMU, see emu/cuemu.h). Tested through tests/unit/test_ops.c on a GPU
 * and in the emulator. */
#ifndef CZ_CU_COMMON_CUH
#define CZ_CU_COMMON_CUH

#ifdef CZ_CUDA_EMU
#include <cstring>

#include "emu/cuemu.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
/* Kernel launches: CUK_LAUNCH(kernel, grid, block, shared bytes, stream)(args...). Kernels that
 * call __syncthreads() use CUK_LAUNCH_SYNC (the same on a GPU; the emulator needs to know). */
#define CUK_LAUNCH(k, g, b, sh, s) k<<<g, b, sh, s>>>
#define CUK_LAUNCH_SYNC(k, g, b, sh, s) k<<<g, b, sh, s>>>
#endif
#include <stdint.h>

#include "cu_kernels.h"

#define CUK_F32 0
#define CUK_BF16 1
#define CUK_F16 2

static __device__ __forceinline__ float cuk_ld(const void *p, int dt, size_t i) {
    if (dt == CUK_F32) return ((const float *)p)[i];
    if (dt == CUK_BF16) return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    return __half2float(((const __half *)p)[i]);
}

static __device__ __forceinline__ void cuk_st(void *p, int dt, size_t i, float v) {
    if (dt == CUK_F32)
        ((float *)p)[i] = v;
    else if (dt == CUK_BF16)
        ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn(v);
    else
        ((__half *)p)[i] = __float2half_rn(v);
}

/* The same, typed: element access in the tensor's own type (templated kernels). */
static __device__ __forceinline__ float to_f(float v) { return v; }
static __device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
static __device__ __forceinline__ float to_f(__half v) { return __half2float(v); }

template <typename T> static __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }

/* 16 aligned bytes from src to dst: one vector access on the device (the emulator copies) */
static __device__ __forceinline__ void copy16(void *dst, const void *src) {
#ifdef CZ_CUDA_EMU
    std::memcpy(dst, src, 16);
#else
    *(uint4 *)dst = *(const uint4 *)src;
#endif
}

/* Stores a double with the ref backend's rounding (double -> float -> dtype). */
static __device__ __forceinline__ void cuk_st_d(void *p, int dt, size_t i, double v) { cuk_st(p, dt, i, (float)v); }

/* Whether x is neither NaN nor infinite (the host compiler's C++ library spells it std::). */
#ifdef CZ_CUDA_EMU
static __device__ __forceinline__ bool cuk_finite(double x) { return std::isfinite(x); }
#else
static __device__ __forceinline__ bool cuk_finite(double x) { return isfinite(x); }
#endif

/* Fully unroll the loop that follows (nvcc; the emulator's host compiler has no such pragma). */
#ifdef CZ_CUDA_EMU
#define CUK_UNROLL
#else
#define CUK_UNROLL _Pragma("unroll")
#endif

/* act(v) for the backend's activation codes: 0 none, 1 relu, 2 leaky relu (alpha), 3 tanh. */
static __device__ __forceinline__ float cuk_act_f(int act, float alpha, float v) {
    switch (act) {
    case 1: return v > 0.f ? v : 0.f;
    case 2: return v > 0.f ? v : alpha * v;
    case 3: return tanhf(v);
    default: return v;
    }
}

#define CUK_THREADS 256

/* Grid caps. The emulator build can lower them (CZ_CUEMU_MAX_BLOCKS for grid-stride loops,
 * CZ_CUEMU_MAX_PARTS for reduce.cu's partial sums) so that test-sized tensors take the paths
 * only real sizes reach on a GPU: several elements per thread, more rows per partial sum. */
#ifdef CZ_CUDA_EMU
#include <stdlib.h>
static inline size_t cuk_emu_cap(const char *env, size_t dflt) {
    const char *v = getenv(env);
    long x = v && *v ? strtol(v, NULL, 10) : 0;
    return x > 0 && (size_t)x < dflt ? (size_t)x : dflt;
}
#define CUK_CAP(env, dflt) cuk_emu_cap(env, dflt)
#else
#define CUK_CAP(env, dflt) ((size_t)(dflt))
#endif

/* Blocks for a grid-stride loop over `count` elements. */
static inline unsigned cuk_blocks(size_t count) {
    size_t b = (count + CUK_THREADS - 1) / CUK_THREADS, cap = CUK_CAP("CZ_CUEMU_MAX_BLOCKS", 65536);
    if (b < 1) b = 1;
    if (b > cap) b = cap;
    return (unsigned)b;
}

#define CUK_FOR(i, count)                                                                          \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (count);                   \
         i += (size_t)gridDim.x * blockDim.x)

static inline int cuk_last(void) { return (int)cudaGetLastError(); }

#endif
