/* adam.cu: one Adam step on fp32 parameters and moments (the master weights), with the bias
 * corrections computed on the host in fp64 as the ref backend does; per-element math in fp64,
 * rounded once to fp32; the gradient may be any dtype. Layout-agnostic (param, grad, m, v share one layout). Stateless.
 * Tested by tests/unit/test_ops.c (adam_step parity over 3 steps). */
#include "cu_common.cuh"

static __global__ void k_adam(float *param, const void *grad, int gdt, float *m, float *v, size_t count, double lr, double b1,
                              double b2, double eps, double bc1, double bc2) {
    CUK_FOR(i, count) {
        double g = cuk_ld(grad, gdt, i);
        double mi = b1 * (double)m[i] + (1.0 - b1) * g;
        double vi = b2 * (double)v[i] + (1.0 - b2) * g * g;
        double step = lr * (mi / bc1) / (sqrt(vi / bc2) + eps);
        m[i] = (float)mi;
        v[i] = (float)vi;
        param[i] = (float)((double)param[i] - step);
    }
}

extern "C" int cuk_adam(float *param, const void *grad, int gdt, float *m, float *v, size_t count, double lr, double b1,
                        double b2, double eps, double bc1, double bc2, cuk_stream s) {
    CUK_LAUNCH(k_adam, cuk_blocks(count), CUK_THREADS, 0, s)(param, grad, gdt, m, v, count, lr, b1, b2, eps, bc1, bc2);
    return cuk_last();
}
