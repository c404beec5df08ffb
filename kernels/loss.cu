/* loss.cu: gradients of the mean BCE-with-logits (constant target) and of the mean L1
 * distance, scaled by the caller's factor k = scale / numel. The forward sums live in
 * reduce.cu. Math in fp64 like the ref backend, rounded once. Stateless launchers.
 * Tested by tests/unit/test_ops.c (bce_logits_bwd, l1_bwd parity). */
#include "cu_common.cuh"

static __global__ void k_bce_bwd(const void *x, int xdt, double t, double k, void *dx, int dxdt, size_t count) {
    CUK_FOR(i, count) {
        double v = cuk_ld(x, xdt, i), e = exp(-fabs(v));
        double sig = v >= 0 ? 1.0 / (1.0 + e) : e / (1.0 + e);
        cuk_st_d(dx, dxdt, i, k * (sig - t));
    }
}

static __global__ void k_l1_bwd(const void *a, int adt, const void *b, int bdt, double k, void *da, int dadt,
                                size_t count) {
    CUK_FOR(i, count) {
        double d = (double)cuk_ld(a, adt, i) - (double)cuk_ld(b, bdt, i);
        cuk_st_d(da, dadt, i, d > 0 ? k : d < 0 ? -k : 0.0);
    }
}

extern "C" int cuk_bce_bwd(const void *x, int xdt, float target, double k, void *dx, int dxdt, size_t count,
                           cuk_stream s) {
    CUK_LAUNCH(k_bce_bwd, cuk_blocks(count), CUK_THREADS, 0, s)(x, xdt, (double)target, k, dx, dxdt, count);
    return cuk_last();
}

extern "C" int cuk_l1_bwd(const void *a, int adt, const void *b, int bdt, double k, void *da, int dadt, size_t count,
                          cuk_stream s) {
    CUK_LAUNCH(k_l1_bwd, cuk_blocks(count), CUK_THREADS, 0, s)(a, adt, b, bdt, k, da, dadt, count);
    return cuk_last();
}
