/* reduce.cu: the deterministic reductions: per-channel sums over the rows (pixels) of an NHWC
 * tensor (BatchNorm statistics and gradients, bias gradients) and whole-tensor sums (the BCE
 * and L1 losses). Both use a grid that depends only on the shape, fp64 per-thread sums in a
 * fixed order, a fixed shared-memory tree, and a second pass that adds the per-block partials
 * in index order: the same inputs give the same bits on every run, with no atomics.
 * Stateless launchers; scratch comes from the caller. Tested by tests/unit/test_ops.c
 * (bn_train_fwd/bwd, conv bias gradients, bce/l1 losses, batch views bit for bit). */
#include "cu_common.cuh"

#define RED_TX 32 /* channels per block */
#define RED_TY 8  /* row lanes per block */
#define RED_MAXP CUK_CAP("CZ_CUEMU_MAX_PARTS", 1024) /* partial sums at most (cu_common.cuh) */

static int red_parts(size_t rows) {
    size_t p = (rows + 255) / 256, cap = RED_MAXP;
    if (p < 1) p = 1;
    if (p > cap) p = cap;
    return (int)p;
}

extern "C" size_t cuk_chan_reduce_scratch(size_t rows, int c) {
    return (size_t)red_parts(rows) * (size_t)c * 2 * sizeof(double);
}

static __global__ void k_chan_partial(int mode, const void *a, int adt, const void *b, int bdt, size_t rows, int c,
                                      const double *center, double cscale, const float *mean, const float *invstd,
                                      double *part) {
    __shared__ double sh1[RED_TY][RED_TX], sh2[RED_TY][RED_TX];
    int ch = blockIdx.x * RED_TX + threadIdx.x;
    int P = gridDim.y;
    size_t chunk = (rows + P - 1) / P;
    size_t r0 = (size_t)blockIdx.y * chunk, r1 = r0 + chunk < rows ? r0 + chunk : rows;
    double s1 = 0, s2 = 0;
    if (ch < c) {
        double ctr = 0, m = 0, is = 0;
        if (mode == CUK_RED_SQDEV) ctr = center[ch] * cscale;
        if (mode == CUK_RED_BNBWD) m = mean[ch], is = invstd[ch];
        for (size_t r = r0 + threadIdx.y; r < r1; r += RED_TY) {
            size_t i = r * (size_t)c + ch;
            double v = cuk_ld(a, adt, i);
            if (mode == CUK_RED_SUM) {
                s1 += v;
            } else if (mode == CUK_RED_SQDEV) {
                double d = v - ctr;
                s1 += d * d;
            } else {
                s1 += v;
                s2 += v * ((double)cuk_ld(b, bdt, i) - m) * is;
            }
        }
    }
    sh1[threadIdx.y][threadIdx.x] = s1;
    sh2[threadIdx.y][threadIdx.x] = s2;
    __syncthreads();
    if (threadIdx.y == 0 && ch < c) {
        double t1 = 0, t2 = 0;
        for (int k = 0; k < RED_TY; k++) t1 += sh1[k][threadIdx.x], t2 += sh2[k][threadIdx.x];
        size_t o = ((size_t)blockIdx.y * c + ch) * 2;
        part[o] = t1;
        part[o + 1] = t2;
    }
}

static __global__ void k_chan_final(const double *part, int P, int c, double *s1, double *s2) {
    int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    double t1 = 0, t2 = 0;
    for (int p = 0; p < P; p++) {
        t1 += part[((size_t)p * c + ch) * 2];
        t2 += part[((size_t)p * c + ch) * 2 + 1];
    }
    s1[ch] = t1;
    if (s2) s2[ch] = t2;
}

extern "C" int cuk_chan_reduce(int mode, const void *a, int adt, const void *b, int bdt, size_t rows, int c,
                               const double *center, double center_scale, const float *mean, const float *invstd,
                               double *scratch, double *s1, double *s2, cuk_stream s) {
    int P = red_parts(rows);
    dim3 grid((unsigned)((c + RED_TX - 1) / RED_TX), (unsigned)P), block(RED_TX, RED_TY);
    CUK_LAUNCH_SYNC(k_chan_partial, grid, block, 0, s)(mode, a, adt, b, bdt, rows, c, center, center_scale, mean, invstd,
                                          scratch);
    CUK_LAUNCH(k_chan_final, (c + 127) / 128, 128, 0, s)(scratch, P, c, s1, s2);
    return cuk_last();
}

static __global__ void k_store_vec(const double *src, void *dst, int ddt, int c, int acc) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= c) return;
    double v = src[i];
    if (acc) v += (double)cuk_ld(dst, ddt, i);
    cuk_st_d(dst, ddt, i, v);
}

extern "C" int cuk_store_vec(const double *src, void *dst, int ddt, int c, int accumulate, cuk_stream s) {
    CUK_LAUNCH(k_store_vec, (c + 127) / 128, 128, 0, s)(src, dst, ddt, c, accumulate);
    return cuk_last();
}

/* ---- whole-tensor sums ---- */

static unsigned sum_blocks(size_t count) {
    size_t g = (count + 2047) / 2048, cap = RED_MAXP;
    if (g < 1) g = 1;
    if (g > cap) g = cap;
    return (unsigned)g;
}

extern "C" size_t cuk_sum_scratch(size_t count) { return (size_t)sum_blocks(count) * sizeof(double); }

static __global__ void k_loss_partial(int mode, const void *a, int adt, const void *b, int bdt, double t,
                                      size_t count, double *part) {
    __shared__ double sh[CUK_THREADS];
    double acc = 0;
    CUK_FOR(i, count) {
        double v = cuk_ld(a, adt, i);
        if (mode == 0)
            acc += (v > 0 ? v : 0.0) - v * t + log1p(exp(-fabs(v)));
        else
            acc += fabs(v - (double)cuk_ld(b, bdt, i));
    }
    sh[threadIdx.x] = acc;
    __syncthreads();
    for (int half = CUK_THREADS / 2; half > 0; half >>= 1) {
        if ((int)threadIdx.x < half) sh[threadIdx.x] += sh[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) part[blockIdx.x] = sh[0];
}

static __global__ void k_sum_final(const double *part, int g, double *out) {
    if (threadIdx.x != 0 || blockIdx.x != 0) return;
    double t = 0;
    for (int i = 0; i < g; i++) t += part[i];
    *out = t;
}

extern "C" int cuk_loss_sum(int mode, const void *a, int adt, const void *b, int bdt, float target, size_t count,
                            double *scratch, double *out, cuk_stream s) {
    unsigned g = sum_blocks(count);
    CUK_LAUNCH_SYNC(k_loss_partial, g, CUK_THREADS, 0, s)(mode, a, adt, b, bdt, (double)target, count, scratch);
    CUK_LAUNCH(k_sum_final, 1, 32, 0, s)(scratch, (int)g, out);
    return cuk_last();
}
