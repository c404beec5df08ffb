/* cu_kernels.h: the launchers of our own CUDA kernels (one .cu file per op family), callable
 * from the C side of the backend (backend_cuda*.c, cudnn_ops.c). Plain C types only, so it is
 * included both by gcc (C11) and by nvcc (C++); no core/ header is needed here.
 *
 * Conventions shared by every launcher:
 * - Every tensor is stored NHWC (channels innermost, batch outermost); a per-channel vector
 *   (1, C, 1, 1) is therefore C contiguous elements, and a conv weight (out, in, kh, kw) is
 *   stored (out, kh, kw, in), which is what cuDNN calls a KRSC / NHWC filter.
 * - `dt` arguments are cz_dtype values (0 fp32, 1 bf16, 2 fp16); kernels load every element
 *   into fp32 (fp64 where a reduction or Adam wants it), compute, and round once on store.
 * - Everything is queued on `stream`; a launcher returns cudaGetLastError() after its launches
 *   (as an int, to keep CUDA headers out of the C files that only need this interface).
 * - Reductions are deterministic: a fixed grid that depends only on the shape, per-thread
 *   sums in a fixed order, tree reductions in shared memory, and a second kernel that sums the
 *   per-block partials in order. No floating-point atomics anywhere.
 * Threading: stateless; the caller serializes use of a stream.
 * Tested through the backend by tests/unit/test_ops.c (on a GPU; tests/gpu/check.sh). */
#ifndef CZ_CU_KERNELS_H
#define CZ_CU_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct CUstream_st *cuk_stream; /* == cudaStream_t */

/* ---- cast.cu: layout and dtype conversion ---- */
/* dst (NHWC, dt) <- src (plain NCHW fp32), n images of c x h x w. */
int cuk_nchw_f32_to_nhwc(const float *src, void *dst, int dt, int n, int c, int h, int w, cuk_stream s);
/* dst (plain NCHW fp32) <- src (NHWC, dt). */
int cuk_nhwc_to_nchw_f32(const void *src, int dt, float *dst, int n, int c, int h, int w, cuk_stream s);
/* dst[i] = src[i] converted between dtypes (same layout), count elements. */
int cuk_cast(const void *src, int sdt, void *dst, int ddt, size_t count, cuk_stream s);
/* dst[i] = (accumulate ? dst[i] : 0) + src[i], converted on load/store. */
int cuk_add_into(const void *src, int sdt, void *dst, int ddt, size_t count, int accumulate, cuk_stream s);

/* Launches a one-thread kernel that sets *flag (device memory) to 1: fails with
 * cudaErrorNoKernelImageForDevice when the build has no code for the device. */
int cuk_probe(int *flag, cuk_stream s);

/* ---- act.cu: activations and the conv epilogue ---- */
/* y = act(x (+ bias[c])) over `rows` pixels of c channels; bias (per channel, dtype bdt) may be
 * NULL. act: 0 none, 1 relu, 2 leaky relu (alpha), 3 tanh. Channel ch of pixel p is element
 * p * xs + xo + ch of x and p * ys + yo + ch of y: (c, 0) for a dense NHWC tensor, (channels of
 * the storage, first channel) for a channel view. x may equal y. */
int cuk_bias_act(const void *x, int xdt, int xs, int xo, const void *bias, int bdt, int act, float alpha, void *y,
                 int ydt, int ys, int yo, size_t rows, int c, cuk_stream s);
/* dx = dy * act'(y). */
int cuk_act_bwd(int act, float alpha, const void *y, int ydt, const void *dy, int dydt, void *dx, int dxdt,
                size_t count, cuk_stream s);

/* ---- concat.cu ---- */
/* y[..., 0:ca] = a, y[..., ca:ca+cb] = b over `rows` = n*h*w pixels. */
int cuk_concat(const void *a, int adt, int ca, const void *b, int bdt, int cb, void *y, int ydt, size_t rows,
               cuk_stream s);
/* da (+)= y[..., 0:ca], db (+)= y[..., ca:]. */
int cuk_concat_bwd(const void *dy, int dydt, void *da, int dadt, int ca, void *db, int dbdt, int cb, size_t rows,
                   int accumulate, cuk_stream s);

/* ---- dropout.cu: the SplitMix64 counter RNG of backend.h on the logical NCHW index ---- */
/* seed_var: NULL, or a device variable read when the kernel runs; the seed is then
 * *seed_var + seed (mod 2^64). */
int cuk_dropout_fwd(float p, uint64_t seed, const uint64_t *seed_var, const void *x, int xdt, void *mask, int mdt,
                    void *y, int ydt, int n, int c, int h, int w, cuk_stream s);
/* dx = dy * mask (elementwise, layout-agnostic). */
int cuk_mul(const void *a, int adt, const void *b, int bdt, void *y, int ydt, size_t count, cuk_stream s);

/* ---- reduce.cu: deterministic per-channel sums over the rows of an NHWC tensor ---- */
typedef enum cuk_red_mode {
    CUK_RED_SUM = 0,   /* s1[c] = sum a */
    CUK_RED_SQDEV = 1, /* s1[c] = sum (a - center[c] * center_scale)^2 */
    CUK_RED_BNBWD = 2  /* s1[c] = sum a;  s2[c] = sum a * (b - mean[c]) * invstd[c] (mean, invstd fp32) */
} cuk_red_mode;
/* Bytes of scratch cuk_chan_reduce needs for (rows, c). */
size_t cuk_chan_reduce_scratch(size_t rows, int c);
/* Writes s1 (and s2 for BNBWD) as c doubles each, on the device. */
int cuk_chan_reduce(int mode, const void *a, int adt, const void *b, int bdt, size_t rows, int c,
                    const double *center, double center_scale, const float *mean, const float *invstd,
                    double *scratch, double *s1, double *s2, cuk_stream s);
/* dst[c] (+)= src[c] (double -> dst dtype). */
int cuk_store_vec(const double *src, void *dst, int ddt, int c, int accumulate, cuk_stream s);
/* Deterministic sum over all elements: mode 0 BCE-with-logits(a, target), 1 |a - b|.
 * Result: one double at *out (device). */
size_t cuk_sum_scratch(size_t count);
int cuk_loss_sum(int mode, const void *a, int adt, const void *b, int bdt, float target, size_t count,
                 double *scratch, double *out, cuk_stream s);

/* ---- bn.cu: batch norm ---- */
/* y = (x - mean[c]) / sqrt(var[c] + eps) * gamma[c] + beta[c]; gamma/beta may be NULL. */
int cuk_bn_infer(const void *x, int xdt, const void *gamma, int gdt, const void *beta, int bdt, const void *mean,
                 int mdt, const void *var, int vdt, float eps, void *y, int ydt, size_t count, int c, cuk_stream s);
/* From s1 = sum x, s2 = sum (x-mean)^2 over `count` values per channel: writes save_mean/
 * save_invstd (fp32, may be NULL), updates running stats (may be NULL) and fills the float
 * pair table ab[2c] = (mean, invstd) used by cuk_bn_apply. */
int cuk_bn_finalize(const double *s1, const double *s2, double count, float eps, float momentum, float *save_mean,
                    float *save_invstd, void *rmean, int rmdt, void *rvar, int rvdt, float *ab, int c, cuk_stream s);
/* y = (x - ab[2c]) * ab[2c+1] * gamma + beta. */
int cuk_bn_apply(const void *x, int xdt, const float *ab, const void *gamma, int gdt, const void *beta, int bdt,
                 void *y, int ydt, size_t count, int c, cuk_stream s);
/* dx = gamma*invstd*(dy - s1/count - xhat*s2/count). */
int cuk_bn_bwd_dx(const void *x, int xdt, const void *dy, int dydt, const void *gamma, int gdt, const float *mean,
                  const float *invstd, const double *s1, const double *s2, double count, void *dx, int dxdt,
                  size_t total, int c, cuk_stream s);

/* ---- loss.cu: gradients of the losses ---- */
int cuk_bce_bwd(const void *x, int xdt, float target, double k, void *dx, int dxdt, size_t count, cuk_stream s);
int cuk_l1_bwd(const void *a, int adt, const void *b, int bdt, double k, void *da, int dadt, size_t count,
               cuk_stream s);

/* ---- adam.cu ---- */
int cuk_adam(float *param, const void *grad, int gdt, float *m, float *v, size_t count, double lr, double b1, double b2,
             double eps, double bc1, double bc2, cuk_stream s);
/* The same update on up to CUK_ADAM_MAX tensors in one launch (passed by value, well under the
 * 4 KiB kernel-parameter limit). Skipped altogether when any gate[k] whose bit k is set in
 * `mask` is NaN or Inf (gate: device doubles, may be NULL when mask is 0). */
#define CUK_ADAM_MAX 32
typedef struct cuk_adam_list {
    int n;
    float *param[CUK_ADAM_MAX];
    const void *grad[CUK_ADAM_MAX];
    float *m[CUK_ADAM_MAX];
    float *v[CUK_ADAM_MAX];
    size_t count[CUK_ADAM_MAX];
    int gdt[CUK_ADAM_MAX];
} cuk_adam_list;
/* hv: NULL, or three device doubles (lr, bc1, bc2) read when the kernel runs instead of the
 * arguments of those names. */
int cuk_adam_multi(const cuk_adam_list *l, double lr, double b1, double b2, double eps, double bc1, double bc2,
                   const double *hv, const double *gate, unsigned mask, cuk_stream s);
/* vars[first + i] = bits[i] for i < n (n <= CUK_VARS_MAX), queued on s. */
#define CUK_VARS_MAX 16
typedef struct cuk_vars {
    int first, n;
    uint64_t bits[CUK_VARS_MAX];
} cuk_vars;
int cuk_vars_set(uint64_t *vars, const cuk_vars *v, cuk_stream s);

/* ---- conv_naive.cu: direct convolutions, the fallback when cuDNN has no algorithm ---- */
/* Convolution in cuDNN's terms: x (n, c, h, w), filter (k, c, r, r) stored KRSC, y (n, k, oh, ow),
 * all NHWC, one dtype; fp32 accumulation. bwd_filter adds into dw when accumulate != 0. */
typedef struct cuk_conv {
    int dt, n, c, h, w, k, r, oh, ow, stride, pad;
} cuk_conv;
int cuk_conv_fwd_naive(const cuk_conv *p, const void *x, const void *wt, void *y, cuk_stream s);
int cuk_conv_bwd_data_naive(const cuk_conv *p, const void *wt, const void *dy, void *dx, cuk_stream s);
int cuk_conv_bwd_filter_naive(const cuk_conv *p, const void *x, const void *dy, void *dw, int accumulate,
                              cuk_stream s);

/* ---- conv_small.cu: direct convolutions for small images with many channels ----
 * Same terms as conv_naive.cu (no accumulate); cudnn_ops.c times them against cuDNN on small
 * problems and keeps the faster. cudaErrorInvalidValue for a grid past the device's limits. */
int cuk_conv_small_ok(const cuk_conv *p, int bwd_data); /* whether the grid fits the device's limits */
int cuk_conv_fwd_small(const cuk_conv *p, const void *x, const void *wt, void *y, cuk_stream s);
int cuk_conv_bwd_data_small(const cuk_conv *p, const void *wt, const void *dy, void *dx, cuk_stream s);

/* ---- conv_thin.cu: the convolutions with few channels on one side ----
 * y = act(conv(x, w) + bias) with a 4x4 kernel, written into y at pixel stride ys, first channel
 * yo (a channel view, or (k, 0) dense); w in fp32, 16-byte aligned. p is in the backend's cuDNN
 * terms: for cuk_conv_thin_in_fwd the conv itself (p->c <= CUK_THIN_MAX input channels, any
 * stride and padding); for cuk_deconv_thin_out_fwd the transposed conv seen as backward data
 * (its input x has p->k channels at p->oh x p->ow, its output p->c = 2 or 3 channels at
 * p->h x p->w; stride 2, padding 1 only). cuk_conv_thin_ok says whether a shape is taken. */
#define CUK_THIN_MAX 4
int cuk_conv_thin_ok(const cuk_conv *p, int transposed);
int cuk_conv_thin_in_fwd(const cuk_conv *p, const void *x, const float *w, const void *bias, int bdt, int act,
                         float alpha, void *y, int ys, int yo, cuk_stream s);
int cuk_deconv_thin_out_fwd(const cuk_conv *p, const void *x, const float *w, const void *bias, int bdt, int act,
                            float alpha, void *y, int ys, int yo, cuk_stream s);

/* ---- merge.cu: the final colorization merge (backend.h merge_lab) ---- */
/* The tables of core/lab_exact.h, in device memory (a copy of the host's cz_lab_exact_tables()). */
struct cz_lab_exact_tab;
/* One image of a batched merge: where its pixels, L plane and rgb output lie, and its geometry.
 * Fixed-width fields, explicit padding: the host fills it and the device reads the same bytes. */
typedef struct cuk_merge_desc {
    uint64_t first_px; /* index of the item's first pixel among the batch's pixels (items in order) */
    uint64_t l_off;    /* byte offset in buf of its L plane (src_w * src_h floats, 4-byte aligned) */
    uint64_t rgb_off;  /* byte offset in buf of its rgb output (src_w * src_h * 3 bytes) */
    int32_t img;       /* the image of ab it reads */
    int32_t src_w, src_h, scaled_w, scaled_h, off_x, off_y;
    int32_t pad;
} cuk_merge_desc;
/* One launch for n items (desc[0..n), device memory, first_px ascending from 0, `total` pixels
 * in all): for each, rgb (interleaved 8-bit RGB) <- image `img` of ab (NHWC, 2 channels, dt,
 * net_h x net_w per image) times ab_scale, cropped to the scaled_w x scaled_h block at
 * (off_x, off_y), upsampled bilinearly to src_w x src_h and converted with L: byte-identical to
 * the host's cz_render_merge_ab (see merge.cu). Bilinear only: the caller ensures
 * scaled_w <= 2 * src_w, scaled_h <= 2 * src_h, that the block lies inside the plane, and that
 * the offsets lie inside buf (device; desc may lie in it too). */
int cuk_merge_lab(const void *ab, int dt, int net_h, int net_w, float ab_scale, const cuk_merge_desc *desc,
                  int n, size_t total, unsigned char *buf, const struct cz_lab_exact_tab *tab, cuk_stream s);

#ifdef __cplusplus
}
#endif
#endif
