/* conv_naive.cu: direct convolution kernels (forward, backward data, backward filter) in
 * cuDNN's terms on NHWC tensors and KRSC filters, fp32 accumulation, one thread per output
 * element (so deterministic). They are the fallback when cuDNN offers no deterministic
 * algorithm for a shape/dtype (or refuses one at run time), and a debugging aid
 * (COLORIZE_CUDA_NAIVE=1 forces them). Slow but obviously right. Stateless launchers.
 * Tested by tests/unit/test_ops.c whenever the backend falls back to them (and by forcing
 * them in tests/gpu/check.sh). */
#include "cu_common.cuh"

static __global__ void k_fwd(cuk_conv p, const void *x, const void *wt, void *y, size_t count) {
    CUK_FOR(i, count) {
        int k = (int)(i % (size_t)p.k);
        size_t t = i / (size_t)p.k;
        int ox = (int)(t % (size_t)p.ow);
        t /= (size_t)p.ow;
        int oy = (int)(t % (size_t)p.oh);
        int n = (int)(t / (size_t)p.oh);
        float acc = 0.f;
        for (int r = 0; r < p.r; r++) {
            int iy = oy * p.stride - p.pad + r;
            if (iy < 0 || iy >= p.h) continue;
            for (int s = 0; s < p.r; s++) {
                int ix = ox * p.stride - p.pad + s;
                if (ix < 0 || ix >= p.w) continue;
                size_t xb = (((size_t)n * p.h + iy) * p.w + ix) * p.c;
                size_t wb = (((size_t)k * p.r + r) * p.r + s) * p.c;
                for (int c = 0; c < p.c; c++) acc += cuk_ld(x, p.dt, xb + c) * cuk_ld(wt, p.dt, wb + c);
            }
        }
        cuk_st(y, p.dt, i, acc);
    }
}

static __global__ void k_bwd_data(cuk_conv p, const void *wt, const void *dy, void *dx, size_t count) {
    CUK_FOR(i, count) {
        int c = (int)(i % (size_t)p.c);
        size_t t = i / (size_t)p.c;
        int ix = (int)(t % (size_t)p.w);
        t /= (size_t)p.w;
        int iy = (int)(t % (size_t)p.h);
        int n = (int)(t / (size_t)p.h);
        float acc = 0.f;
        for (int r = 0; r < p.r; r++) {
            int ny = iy + p.pad - r;
            if (ny < 0 || ny % p.stride) continue;
            int oy = ny / p.stride;
            if (oy >= p.oh) continue;
            for (int s = 0; s < p.r; s++) {
                int nx = ix + p.pad - s;
                if (nx < 0 || nx % p.stride) continue;
                int ox = nx / p.stride;
                if (ox >= p.ow) continue;
                size_t db = (((size_t)n * p.oh + oy) * p.ow + ox) * p.k;
                for (int k = 0; k < p.k; k++)
                    acc += cuk_ld(dy, p.dt, db + k) * cuk_ld(wt, p.dt, (((size_t)k * p.r + r) * p.r + s) * p.c + c);
            }
        }
        cuk_st(dx, p.dt, i, acc);
    }
}

static __global__ void k_bwd_filter(cuk_conv p, const void *x, const void *dy, void *dw, int acc_in, size_t count) {
    CUK_FOR(i, count) {
        int c = (int)(i % (size_t)p.c);
        size_t t = i / (size_t)p.c;
        int s = (int)(t % (size_t)p.r);
        t /= (size_t)p.r;
        int r = (int)(t % (size_t)p.r);
        int k = (int)(t / (size_t)p.r);
        float acc = 0.f;
        for (int n = 0; n < p.n; n++)
            for (int oy = 0; oy < p.oh; oy++) {
                int iy = oy * p.stride - p.pad + r;
                if (iy < 0 || iy >= p.h) continue;
                for (int ox = 0; ox < p.ow; ox++) {
                    int ix = ox * p.stride - p.pad + s;
                    if (ix < 0 || ix >= p.w) continue;
                    acc += cuk_ld(dy, p.dt, (((size_t)n * p.oh + oy) * p.ow + ox) * p.k + k) *
                           cuk_ld(x, p.dt, (((size_t)n * p.h + iy) * p.w + ix) * p.c + c);
                }
            }
        cuk_st(dw, p.dt, i, acc_in ? cuk_ld(dw, p.dt, i) + acc : acc);
    }
}

extern "C" int cuk_conv_fwd_naive(const cuk_conv *p, const void *x, const void *wt, void *y, cuk_stream s) {
    size_t count = (size_t)p->n * p->oh * p->ow * p->k;
    CUK_LAUNCH(k_fwd, cuk_blocks(count), CUK_THREADS, 0, s)(*p, x, wt, y, count);
    return cuk_last();
}

extern "C" int cuk_conv_bwd_data_naive(const cuk_conv *p, const void *wt, const void *dy, void *dx, cuk_stream s) {
    size_t count = (size_t)p->n * p->h * p->w * p->c;
    CUK_LAUNCH(k_bwd_data, cuk_blocks(count), CUK_THREADS, 0, s)(*p, wt, dy, dx, count);
    return cuk_last();
}

extern "C" int cuk_conv_bwd_filter_naive(const cuk_conv *p, const void *x, const void *dy, void *dw, int accumulate,
                                         cuk_stream s) {
    size_t count = (size_t)p->k * p->r * p->r * p->c;
    CUK_LAUNCH(k_bwd_filter, cuk_blocks(count), CUK_THREADS, 0, s)(*p, x, dy, dw, accumulate, count);
    return cuk_last();
}
