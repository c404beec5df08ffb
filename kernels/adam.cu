/* adam.cu: one Adam step on fp32 parameters and moments (the master weights), with the bias
 * corrections computed on the host in fp64 as the ref backend does; per-element math in fp64,
 * rounded once to fp32; the gradient may be any dtype. Layout-agnostic (param, grad, m, v share
 * one layout). cuk_adam_multi updates a list of tensors in one launch (a block row per tensor),
 * gated on loss values in device memory, so that a training step neither launches once per
 * parameter nor waits to read its losses before updating; its lr and bias corrections may be
 * read from device variables when it runs (backend.h adam_multi_var), which cuk_vars_set
 * writes. Stateless.
 * Tested by tests/unit/test_ops.c (adam_step parity over 3 steps; adam_multi == adam_step bit
 * for bit, and the gate). */
#include "cu_common.cuh"
#ifdef CZ_CUDA_EMU
#include "emu/cuemu_internal.h"
#endif

static __device__ __forceinline__ void adam_elem(float *param, const void *grad, int gdt, float *m, float *v,
                                                  size_t i, double lr, double b1, double b2, double eps, double bc1,
                                                  double bc2) {
    double g = cuk_ld(grad, gdt, i);
    double mi = b1 * (double)m[i] + (1.0 - b1) * g;
    double vi = b2 * (double)v[i] + (1.0 - b2) * g * g;
    double step = lr * (mi / bc1) / (sqrt(vi / bc2) + eps);
    m[i] = (float)mi;
    v[i] = (float)vi;
    param[i] = (float)((double)param[i] - step);
}

static __global__ void k_adam(float *param, const void *grad, int gdt, float *m, float *v, size_t count, double lr,
                              double b1, double b2, double eps, double bc1, double bc2) {
    CUK_FOR(i, count) adam_elem(param, grad, gdt, m, v, i, lr, b1, b2, eps, bc1, bc2);
}

extern "C" int cuk_adam(float *param, const void *grad, int gdt, float *m, float *v, size_t count, double lr, double b1,
                        double b2, double eps, double bc1, double bc2, cuk_stream s) {
    CUK_LAUNCH(k_adam, cuk_blocks(count), CUK_THREADS, 0, s)(param, grad, gdt, m, v, count, lr, b1, b2, eps, bc1, bc2);
    return cuk_last();
}

/* blockIdx.y picks the tensor; its blocks stride over it (blocks past a small tensor's end do
 * nothing). */
static __global__ void k_adam_multi(cuk_adam_list l, double lr, double b1, double b2, double eps, double bc1,
                                    double bc2, const double *hv, const double *gate, unsigned mask) {
    for (int k = 0; k < 32; k++)
        if (((mask >> k) & 1u) && !cuk_finite(gate[k])) return;
    if (hv) {
        lr = hv[0];
        bc1 = hv[1];
        bc2 = hv[2];
    }
    const int j = (int)blockIdx.y;
    CUK_FOR(i, l.count[j]) adam_elem(l.param[j], l.grad[j], l.gdt[j], l.m[j], l.v[j], i, lr, b1, b2, eps, bc1, bc2);
}

extern "C" int cuk_adam_multi(const cuk_adam_list *l, double lr, double b1, double b2, double eps, double bc1,
                              double bc2, const double *hv, const double *gate, unsigned mask, cuk_stream s) {
    if (l->n < 1 || l->n > CUK_ADAM_MAX) return (int)cudaErrorInvalidValue;
    size_t most = 0;
    for (int j = 0; j < l->n; j++) {
        if (l->count[j] > most) most = l->count[j];
#ifdef CZ_CUDA_EMU
        /* the emulator checks pointer arguments, not pointers inside a struct argument: check
         * these here, since a bad one is an illegal address (a dead context) on a GPU */
        size_t gb = l->gdt[j] == CUK_F32 ? 4 : 2, n = l->count[j];
        if (!cuemu::is_device_range(l->param[j], n * 4) || !cuemu::is_device_range(l->grad[j], n * gb) ||
            !cuemu::is_device_range(l->m[j], n * 4) || !cuemu::is_device_range(l->v[j], n * 4)) {
            cuemu::report("k_adam_multi: tensor %d of the list is not %zu elements of device memory", j, n);
            return (int)cudaErrorInvalidValue;
        }
#endif
    }
    dim3 grid(cuk_blocks(most), (unsigned)l->n);
    CUK_LAUNCH(k_adam_multi, grid, CUK_THREADS, 0, s)(*l, lr, b1, b2, eps, bc1, bc2, hv, gate, mask);
    return cuk_last();
}

static __global__ void k_vars_set(uint64_t *vars, cuk_vars v) {
    for (int i = (int)threadIdx.x; i < v.n; i += (int)blockDim.x) vars[v.first + i] = v.bits[i];
}

extern "C" int cuk_vars_set(uint64_t *vars, const cuk_vars *v, cuk_stream s) {
    if (v->n < 1 || v->n > CUK_VARS_MAX || v->first < 0) return (int)cudaErrorInvalidValue;
    CUK_LAUNCH(k_vars_set, 1, 32, 0, s)(vars, *v);
    return cuk_last();
}
