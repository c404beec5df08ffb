/* cuemu_internal.h: what the emulated runtime (cuemu_rt.cpp) offers the emulated cuDNN
 * (cudnn_emu.cpp): queuing work on a stream and checking that a range is device memory.
 * Test-only; see cuemu.h for the emulator as a whole. */
#ifndef CZ_CUEMU_INTERNAL_H
#define CZ_CUEMU_INTERNAL_H

#include <cuda_runtime_api.h>

#include <cstddef>
#include <functional>

namespace cuemu {

/* Queues `work` on stream s, after everything queued on s before it (or records it into the
 * graph s is capturing). It runs when a synchronization needs it (see cuemu_rt.cpp); if it
 * returns an error, that error becomes sticky as a failing kernel would make it on a device,
 * and all queued work is discarded. Returns an error now for an invalid stream or a sticky
 * state. */
cudaError_t enqueue(cudaStream_t s, const char *what, std::function<cudaError_t()> work);

/* Whether [p, p + bytes) lies inside one live allocation of the emulated cudaMalloc. */
bool is_device_range(const void *p, size_t bytes);

/* Prints "cuemu: <message>" to stderr (diagnostics for bugs the emulator caught). */
void report(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

} // namespace cuemu

#endif
