/* cuemu.h: the device side of the CUDA emulator, a test-only build of the `cuda` backend that
 * runs on a machine without a GPU (cmake -DCZ_CUDA=EMU; tests/gpu/emu_check.sh).
 *
 * In that build every .cu file of kernels/ is compiled as plain C++ by the host compiler, with
 * this header in place of nvcc's device environment (cu_common.cuh includes it when
 * CZ_CUDA_EMU is defined):
 * - __global__ / __device__ / __host__ vanish, so kernels are ordinary functions;
 * - threadIdx, blockIdx, blockDim and gridDim read the calling host thread's emulated
 *   coordinates;
 * - CUK_LAUNCH(k, grid, block, shmem, stream)(args...) checks the launch configuration the
 *   way the CUDA runtime does and queues the grid on the stream (or records it into a graph
 *   being captured). When the stream is synchronized, every pointer argument must point into
 *   live memory from the emulated cudaMalloc (a host pointer or a freed buffer handed to a
 *   kernel faults on a real GPU too), and every thread of every block runs in order on the
 *   synchronizing thread (or in reverse order with CZ_CUEMU_ORDER=reverse, see cuemu_rt.cpp);
 * - CUK_LAUNCH_SYNC(...) is for kernels that call __syncthreads(): each thread of a block
 *   runs as a fiber (its own stack and ucontext) on the synchronizing thread, blocks one after
 *   another, and every thread of the block reaches a barrier before any goes past it, so
 *   shared memory (__shared__ becomes a function-local static) behaves as on the device. A
 *   __syncthreads() under plain CUK_LAUNCH aborts with the kernel's name.
 * The host side (cudaMalloc, streams, copies, errors, cuDNN) is kernels/emu/cuemu_rt.cpp and
 * kernels/emu/cudnn_emu.cpp, linked in place of cudart and libcudnn.
 *
 * What the emulator proves: the kernels' index arithmetic, dtype handling, reductions and
 * barriers, and the backend's use of the runtime and of cuDNN's documented API (copy
 * directions and sizes, which pointers reach kernels, launch shapes, descriptor wiring,
 * workspaces, graph capture rules, error paths), under ASan in CI. What it cannot: speed,
 * real cuDNN (its algorithms, numerics, and what it refuses), races between device threads,
 * races between streams beyond what its stream model exposes (streams run apart and only as
 * far as a synchronization needs, so a missing event wait reads stale data, but each op runs
 * whole, never interleaved with another), warp-level behaviour, the real device's rounding of
 * transcendental functions. */
#ifndef CZ_CUEMU_H
#define CZ_CUEMU_H

#ifndef __cplusplus
#error "cuemu.h is for the .cu files compiled as C++"
#endif

/* Before the CUDA headers, so that host_defines.h keeps these empty. */
#define __global__
#define __device__
#define __host__
#define __shared__ static

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace cuemu {

struct coords {
    uint3 tid, bid;
    uint3 bdim, gdim;   /* (uint3, not dim3: a trivial type needs no TLS init call per use) */
    const char *kernel; /* name of the kernel being run, for diagnostics */
    int threaded;       /* launched with CUK_LAUNCH_SYNC: __syncthreads is allowed */
    unsigned bars;      /* __syncthreads() this thread reached in its current block */
};
extern thread_local coords t_at;

/* The type-erased launch (cuemu_rt.cpp). It checks the configuration now (an error is the
 * launch's error, returned by cudaGetLastError, and nothing runs) and queues the grid on the
 * stream; when it runs, each pointer argument must lie in live device memory, else the kernel
 * "faults": a diagnostic naming the kernel and argument, and a sticky cudaErrorIllegalAddress. */
struct launch_desc {
    const char *kernel;
    dim3 grid, block;
    size_t shmem;
    cudaStream_t stream;
    int threaded;
};
typedef std::vector<std::pair<const void *, int>> ptr_args; /* (pointer, argument index) */
void launch(const launch_desc &d, ptr_args ptrs, std::function<void()> thread_body);
void syncthreads();

template <typename T> static inline void collect_ptr(const T &v, int idx, ptr_args &out) {
    if constexpr (std::is_pointer_v<T>)
        out.emplace_back((const void *)v, idx);
    else
        (void)v, (void)idx, (void)out;
}

template <typename... P> struct launcher {
    const char *name;
    void (*kernel)(P...);
    dim3 grid, block;
    size_t shmem;
    cudaStream_t stream;
    int threaded;

    template <typename... A> void operator()(A &&...a) const {
        static_assert(sizeof...(A) == sizeof...(P), "kernel launched with the wrong number of arguments");
        std::tuple<P...> args(std::forward<A>(a)...); /* converted to the parameter types, as nvcc does */
        ptr_args ptrs;
        std::apply(
            [&](const auto &...v) {
                int i = 0;
                (collect_ptr(v, i++, ptrs), ...);
            },
            args);
        auto k = kernel;
        launch(launch_desc{name, grid, block, shmem, stream, threaded}, std::move(ptrs),
               [k, args]() { std::apply(k, args); });
    }
};

template <typename... P>
static inline launcher<P...> make_launcher(const char *name, void (*k)(P...), dim3 g, dim3 b, size_t sh,
                                           cudaStream_t s, int threaded) {
    return launcher<P...>{name, k, g, b, sh, s, threaded};
}

} // namespace cuemu

#define threadIdx (cuemu::t_at.tid)
#define blockIdx (cuemu::t_at.bid)
#define blockDim (cuemu::t_at.bdim)
#define gridDim (cuemu::t_at.gdim)
#define __syncthreads() cuemu::syncthreads()

#define CUK_LAUNCH(k, g, b, sh, s) cuemu::make_launcher(#k, k, dim3(g), dim3(b), (sh), (cudaStream_t)(s), 0)
#define CUK_LAUNCH_SYNC(k, g, b, sh, s) cuemu::make_launcher(#k, k, dim3(g), dim3(b), (sh), (cudaStream_t)(s), 1)

/* Device intrinsics the kernels use that the host C library lacks. */
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }

#endif
