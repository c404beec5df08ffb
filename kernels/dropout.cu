/* dropout.cu: inverted dropout with the counter-based SplitMix64 draw that backend.h defines,
 * evaluated on the LOGICAL NCHW index of each element although storage is NHWC, so masks are
 * bit-identical to the ref backend's; plus the elementwise product used by dropout_bwd.
 * The seed may be read from a device variable when the kernel runs (backend.h dropout_fwd_var).
 * Stateless launchers. Tested by tests/unit/test_ops.c (dropout parity: mask and y; the
 * variable form == the value form). */
#include "cu_common.cuh"

static __device__ __forceinline__ float draw(uint64_t seed, uint64_t i) {
    uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (float)(z >> 40) * (1.0f / 16777216.0f);
}

static __global__ void k_dropout(float p, float scale, uint64_t seed, const uint64_t *seed_var, const void *x,
                                 int xdt, void *mask, int mdt, void *y, int ydt, int c, int hw, size_t count) {
    if (seed_var) seed += *seed_var;
    CUK_FOR(i, count) {
        size_t ch = i % (size_t)c, pix = i / (size_t)c;
        size_t img = pix / (size_t)hw, pp = pix % (size_t)hw;
        uint64_t logical = (uint64_t)((img * (size_t)c + ch) * (size_t)hw + pp);
        int keep = draw(seed, logical) >= p;
        /* as the ref: x * scale computed in double, rounded once */
        double xv = (double)cuk_ld(x, xdt, i);
        cuk_st(mask, mdt, i, keep ? scale : 0.f);
        cuk_st_d(y, ydt, i, keep ? xv * (double)scale : 0.0);
    }
}

static __global__ void k_mul(const void *a, int adt, const void *b, int bdt, void *y, int ydt, size_t count) {
    CUK_FOR(i, count) cuk_st_d(y, ydt, i, (double)cuk_ld(a, adt, i) * (double)cuk_ld(b, bdt, i));
}

extern "C" int cuk_dropout_fwd(float p, uint64_t seed, const uint64_t *seed_var, const void *x, int xdt, void *mask,
                               int mdt, void *y, int ydt, int n, int c, int h, int w, cuk_stream s) {
    size_t count = (size_t)n * c * h * w;
    float scale = 1.0f / (1.0f - p);
    CUK_LAUNCH(k_dropout, cuk_blocks(count), CUK_THREADS, 0, s)(p, scale, seed, seed_var, x, xdt, mask, mdt, y, ydt, c,
                                                                h * w, count);
    return cuk_last();
}

extern "C" int cuk_mul(const void *a, int adt, const void *b, int bdt, void *y, int ydt, size_t count,
                       cuk_stream s) {
    CUK_LAUNCH(k_mul, cuk_blocks(count), CUK_THREADS, 0, s)(a, adt, b, bdt, y, ydt, count);
    return cuk_last();
}
