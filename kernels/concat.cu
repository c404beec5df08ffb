/* concat.cu: channel concatenation of two NHWC tensors and its backward (the split, optionally
 * accumulating). In NHWC every pixel's channels are contiguous, so the kernels walk the output
 * (or dy) element by element and route each channel to its source. Stateless launchers.
 * Tested by tests/unit/test_ops.c (concat / concat_bwd parity and batch views). */
#include "cu_common.cuh"

static __global__ void k_concat(const void *a, int adt, int ca, const void *b, int bdt, int cb, void *y, int ydt,
                                size_t count) {
    int cy = ca + cb;
    CUK_FOR(i, count) {
        size_t pix = i / (size_t)cy;
        int ch = (int)(i % (size_t)cy);
        float v = ch < ca ? cuk_ld(a, adt, pix * ca + ch) : cuk_ld(b, bdt, pix * cb + (ch - ca));
        cuk_st(y, ydt, i, v);
    }
}

static __global__ void k_concat_bwd(const void *dy, int dydt, void *da, int dadt, int ca, void *db, int dbdt,
                                    int cb, size_t count, int acc) {
    int cy = ca + cb;
    CUK_FOR(i, count) {
        size_t pix = i / (size_t)cy;
        int ch = (int)(i % (size_t)cy);
        float g = cuk_ld(dy, dydt, i);
        if (ch < ca) {
            size_t j = pix * ca + ch;
            cuk_st(da, dadt, j, acc ? cuk_ld(da, dadt, j) + g : g);
        } else {
            size_t j = pix * cb + (ch - ca);
            cuk_st(db, dbdt, j, acc ? cuk_ld(db, dbdt, j) + g : g);
        }
    }
}

extern "C" int cuk_concat(const void *a, int adt, int ca, const void *b, int bdt, int cb, void *y, int ydt,
                          size_t rows, cuk_stream s) {
    size_t count = rows * (size_t)(ca + cb);
    CUK_LAUNCH(k_concat, cuk_blocks(count), CUK_THREADS, 0, s)(a, adt, ca, b, bdt, cb, y, ydt, count);
    return cuk_last();
}

extern "C" int cuk_concat_bwd(const void *dy, int dydt, void *da, int dadt, int ca, void *db, int dbdt, int cb,
                              size_t rows, int accumulate, cuk_stream s) {
    size_t count = rows * (size_t)(ca + cb);
    CUK_LAUNCH(k_concat_bwd, cuk_blocks(count), CUK_THREADS, 0, s)(dy, dydt, da, dadt, ca, db, dbdt, cb, count, accumulate);
    return cuk_last();
}
