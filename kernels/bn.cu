/* bn.cu: BatchNorm on NHWC tensors: inference with running statistics, the training forward's
 * finalize (batch mean / invstd, running-stat update with the unbiased variance) and apply,
 * and the backward's dx. The channel sums themselves come from reduce.cu (deterministic).
 * Per-channel vectors may be any dtype; save_mean/save_invstd are fp32 as the contract says.
 * Stateless launchers. Tested by tests/unit/test_ops.c (bn_infer, bn_train_fwd, bn_train_bwd
 * parity and batch views). */
#include "cu_common.cuh"

static __global__ void k_bn_infer(const void *x, int xdt, const void *gamma, int gdt, const void *beta, int bdt,
                                  const void *mean, int mdt, const void *var, int vdt, float eps, void *y, int ydt,
                                  size_t count, int c) {
    CUK_FOR(i, count) {
        int ch = (int)(i % (size_t)c);
        float sc = (gamma ? cuk_ld(gamma, gdt, ch) : 1.f) * rsqrtf(cuk_ld(var, vdt, ch) + eps);
        float sh = beta ? cuk_ld(beta, bdt, ch) : 0.f;
        cuk_st(y, ydt, i, (cuk_ld(x, xdt, i) - cuk_ld(mean, mdt, ch)) * sc + sh);
    }
}

extern "C" int cuk_bn_infer(const void *x, int xdt, const void *gamma, int gdt, const void *beta, int bdt,
                            const void *mean, int mdt, const void *var, int vdt, float eps, void *y, int ydt,
                            size_t count, int c, cuk_stream s) {
    CUK_LAUNCH(k_bn_infer, cuk_blocks(count), CUK_THREADS, 0, s)(x, xdt, gamma, gdt, beta, bdt, mean, mdt, var, vdt, eps, y,
                                                          ydt, count, c);
    return cuk_last();
}

static __global__ void k_bn_finalize(const double *s1, const double *s2, double count, float eps, float momentum,
                                     float *save_mean, float *save_invstd, void *rmean, int rmdt, void *rvar,
                                     int rvdt, float *ab, int c) {
    int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    double mean = s1[ch] / count, var = s2[ch] / count;
    double invstd = 1.0 / sqrt(var + (double)eps), mom = (double)momentum;
    if (save_mean) save_mean[ch] = (float)mean;
    if (save_invstd) save_invstd[ch] = (float)invstd;
    if (rmean) cuk_st_d(rmean, rmdt, ch, (1.0 - mom) * (double)cuk_ld(rmean, rmdt, ch) + mom * mean);
    if (rvar) cuk_st_d(rvar, rvdt, ch, (1.0 - mom) * (double)cuk_ld(rvar, rvdt, ch) + mom * (s2[ch] / (count - 1.0)));
    ab[2 * ch] = (float)mean;
    ab[2 * ch + 1] = (float)invstd;
}

extern "C" int cuk_bn_finalize(const double *s1, const double *s2, double count, float eps, float momentum,
                               float *save_mean, float *save_invstd, void *rmean, int rmdt, void *rvar, int rvdt,
                               float *ab, int c, cuk_stream s) {
    CUK_LAUNCH(k_bn_finalize, (c + 127) / 128, 128, 0, s)(s1, s2, count, eps, momentum, save_mean, save_invstd, rmean, rmdt,
                                                   rvar, rvdt, ab, c);
    return cuk_last();
}

static __global__ void k_bn_apply(const void *x, int xdt, const float *ab, const void *gamma, int gdt,
                                  const void *beta, int bdt, void *y, int ydt, size_t count, int c) {
    CUK_FOR(i, count) {
        int ch = (int)(i % (size_t)c);
        float g = gamma ? cuk_ld(gamma, gdt, ch) : 1.f, bt = beta ? cuk_ld(beta, bdt, ch) : 0.f;
        cuk_st(y, ydt, i, (cuk_ld(x, xdt, i) - ab[2 * ch]) * ab[2 * ch + 1] * g + bt);
    }
}

extern "C" int cuk_bn_apply(const void *x, int xdt, const float *ab, const void *gamma, int gdt, const void *beta,
                            int bdt, void *y, int ydt, size_t count, int c, cuk_stream s) {
    CUK_LAUNCH(k_bn_apply, cuk_blocks(count), CUK_THREADS, 0, s)(x, xdt, ab, gamma, gdt, beta, bdt, y, ydt, count, c);
    return cuk_last();
}

static __global__ void k_bn_bwd_dx(const void *x, int xdt, const void *dy, int dydt, const void *gamma, int gdt,
                                   const float *mean, const float *invstd, const double *s1, const double *s2,
                                   double count, void *dx, int dxdt, size_t total, int c) {
    CUK_FOR(i, total) {
        int ch = (int)(i % (size_t)c);
        float is = invstd[ch], g = gamma ? cuk_ld(gamma, gdt, ch) : 1.f;
        float xhat = (cuk_ld(x, xdt, i) - mean[ch]) * is;
        float m1 = (float)(s1[ch] / count), m2 = (float)(s2[ch] / count);
        cuk_st(dx, dxdt, i, g * is * (cuk_ld(dy, dydt, i) - m1 - xhat * m2));
    }
}

extern "C" int cuk_bn_bwd_dx(const void *x, int xdt, const void *dy, int dydt, const void *gamma, int gdt,
                             const float *mean, const float *invstd, const double *s1, const double *s2, double count,
                             void *dx, int dxdt, size_t total, int c, cuk_stream s) {
    CUK_LAUNCH(k_bn_bwd_dx, cuk_blocks(total), CUK_THREADS, 0, s)(x, xdt, dy, dydt, gamma, gdt, mean, invstd, s1, s2, count,
                                                           dx, dxdt, total, c);
    return cuk_last();
}
