/* conv_small.cu: direct convolution kernels for small images with many channels, the U-Net's
 * innermost layers (1x1 to 8x8 pixels, 512 or 1024 channels, weights of 16-32 MB in fp32).
 * There a convolution is a matrix-vector product per pixel: reading the weights is the whole
 * cost. Session 9 of issue 5 saw cuDNN's deterministic fp32 (FMA math) backward-data take
 * 0.27-0.42 ms on each of these layers at batch 1, where reading the weights once from HBM takes
 * about 5-10 us. cudnn_ops.c offers these kernels as one more candidate beside cuDNN's algorithms
 * for small problems, times both on the device, and keeps the faster (cudnn_ops.c "Direct
 * candidates"); COLORIZE_CUDA_DIRECT=force takes them on those problems without timing (tests),
 * =0 never.
 *
 * Both are in cuDNN's terms (x (n, h, w, c), filter (k, r, r, c), y (n, oh, ow, k), NHWC, KRSC,
 * one dtype, fp32 accumulation), and both keep a warp's weight reads contiguous: its 32 lanes
 * walk adjacent input channels of one weight row, 16 bytes per lane (4 fp32 or 8 bf16/fp16
 * channels, a "chunk") when that many divide c, else one channel per lane.
 * - forward: a block takes one output pixel and SF_KB output channels; lane l of channel k sums
 *   x * w over the valid taps (r, s in order) and the chunks l, l + 32, ... of input channels
 *   (a chunk's channels in order); lane 0 then adds the channel's 32 partial sums from shared
 *   memory in lane order.
 * - backward data: a block takes one pixel of dx and 32 adjacent chunks of input channels, each
 *   channel with its own sum; its SB_KS rows of lanes split the output channels (row j takes
 *   k = j, j + SB_KS, ...) over the valid taps (r, s in order); the SB_KS partial sums of a
 *   channel are then added in row order.
 * Every output element is thus summed in one fixed order that depends on the shape of one image
 * only: deterministic, and an image gives the same bits alone or in a batch (a requirement of
 * the backend: batched == alone). The backward filter's candidate is conv_naive.cu's kernel,
 * whose threads already read contiguous memory and whose serial loop is short for small images.
 * Stateless launchers, like the rest of kernels/. Tested by tests/unit/test_ops.c (conv and
 * deconv parity, every dtype) with COLORIZE_CUDA_DIRECT=force (tests/gpu/check.sh step 1 and
 * tests/gpu/emu_check.sh). */
#include "cu_common.cuh"

#define SF_KB 4 /* forward: output channels per block (blockDim (32, SF_KB)) */
#define SB_KS 8 /* backward data: rows splitting the output channels (blockDim (32, SB_KS)) */

/* V consecutive elements widened to fp32, and the reverse (rounded once). When V elements make
 * 16 bytes and A says they are 16-byte aligned, one vector access; otherwise V scalar ones. The
 * arithmetic that follows is the same either way, so alignment never changes a result. */
template <typename T, int V, bool A> static __device__ __forceinline__ void ldv(const T *p, float *f) {
    if constexpr (A && V * sizeof(T) == 16) {
        alignas(16) T v[V];
        copy16(v, p);
CUK_UNROLL
        for (int j = 0; j < V; j++) f[j] = to_f(v[j]);
    } else {
CUK_UNROLL
        for (int j = 0; j < V; j++) f[j] = to_f(p[j]);
    }
}
template <typename T, int V, bool A> static __device__ __forceinline__ void stv(T *p, const float *f) {
    if constexpr (A && V * sizeof(T) == 16) {
        alignas(16) T v[V];
CUK_UNROLL
        for (int j = 0; j < V; j++) v[j] = from_f<T>(f[j]);
        copy16(p, v);
    } else {
CUK_UNROLL
        for (int j = 0; j < V; j++) p[j] = from_f<T>(f[j]);
    }
}

/* Forward. grid (n oh ow, ceil(k / SF_KB)), block (32, SF_KB). A lane takes chunks of V input
 * channels (V = 16 bytes' worth when V divides c, else 1): chunks l, l + 32, ... of each valid
 * tap, each chunk's channels in order. */
template <typename T, int V, bool A> static __global__ void k_small_fwd(cuk_conv p, const T *x, const T *w, T *y) {
    __shared__ float red[SF_KB][32];
    const int lane = (int)threadIdx.x, kk = (int)threadIdx.y;
    const int k = (int)blockIdx.y * SF_KB + kk;
    const size_t pix = blockIdx.x;
    const int ox = (int)(pix % (size_t)p.ow);
    const size_t t = pix / (size_t)p.ow;
    const int oy = (int)(t % (size_t)p.oh);
    const size_t n = t / (size_t)p.oh;
    const int chunks = p.c / V;
    float acc = 0.f;
    if (k < p.k) {
        for (int r = 0; r < p.r; r++) {
            const int iy = oy * p.stride - p.pad + r;
            if (iy < 0 || iy >= p.h) continue;
            for (int s = 0; s < p.r; s++) {
                const int ix = ox * p.stride - p.pad + s;
                if (ix < 0 || ix >= p.w) continue;
                const T *xr = x + ((n * (size_t)p.h + (size_t)iy) * (size_t)p.w + (size_t)ix) * (size_t)p.c;
                const T *wr = w + (((size_t)k * (size_t)p.r + (size_t)r) * (size_t)p.r + (size_t)s) * (size_t)p.c;
                for (int q = lane; q < chunks; q += 32) {
                    float xv[V], wv[V];
                    ldv<T, V, A>(xr + (size_t)q * V, xv);
                    ldv<T, V, A>(wr + (size_t)q * V, wv);
CUK_UNROLL
                    for (int j = 0; j < V; j++) acc += xv[j] * wv[j];
                }
            }
        }
    }
    red[kk][lane] = acc;
    __syncthreads();
    if (lane == 0 && k < p.k) {
        float v = red[kk][0];
        for (int l = 1; l < 32; l++) v += red[kk][l];
        y[pix * (size_t)p.k + (size_t)k] = from_f<T>(v);
    }
}

/* Backward data. grid (n h w, ceil(c / (32 V))), block (32, SB_KS). A lane takes V adjacent
 * input channels (V as above), each with its own sum; rows split the output channels. */
template <typename T, int V, bool A> static __global__ void k_small_bwd_data(cuk_conv p, const T *w, const T *dy, T *dx) {
    __shared__ float red[SB_KS][32][V];
    const int lane = (int)threadIdx.x, j = (int)threadIdx.y;
    const int c = ((int)blockIdx.y * 32 + lane) * V;
    const size_t pix = blockIdx.x;
    const int ix = (int)(pix % (size_t)p.w);
    const size_t t = pix / (size_t)p.w;
    const int iy = (int)(t % (size_t)p.h);
    const size_t n = t / (size_t)p.h;
    const size_t kstep = (size_t)p.r * (size_t)p.r * (size_t)p.c; /* from w[k][r][s][c] to w[k + 1][r][s][c] */
    float acc[V];
CUK_UNROLL
    for (int i = 0; i < V; i++) acc[i] = 0.f;
    if (c < p.c) {
        for (int r = 0; r < p.r; r++) {
            const int ny = iy + p.pad - r;
            if (ny < 0 || ny % p.stride) continue;
            const int oy = ny / p.stride;
            if (oy >= p.oh) continue;
            for (int s = 0; s < p.r; s++) {
                const int nx = ix + p.pad - s;
                if (nx < 0 || nx % p.stride) continue;
                const int ox = nx / p.stride;
                if (ox >= p.ow) continue;
                const T *dr = dy + ((n * (size_t)p.oh + (size_t)oy) * (size_t)p.ow + (size_t)ox) * (size_t)p.k;
                const T *wr = w + ((size_t)r * (size_t)p.r + (size_t)s) * (size_t)p.c + (size_t)c;
                for (int k = j; k < p.k; k += SB_KS) {
                    const float d = to_f(dr[k]);
                    float wv[V];
                    ldv<T, V, A>(wr + (size_t)k * kstep, wv);
CUK_UNROLL
                    for (int i = 0; i < V; i++) acc[i] += d * wv[i];
                }
            }
        }
    }
CUK_UNROLL
    for (int i = 0; i < V; i++) red[j][lane][i] = acc[i];
    __syncthreads();
    if (j == 0 && c < p.c) {
        float v[V];
CUK_UNROLL
        for (int i = 0; i < V; i++) {
            v[i] = red[0][lane][i];
            for (int q = 1; q < SB_KS; q++) v[i] += red[q][lane][i];
        }
        stv<T, V, A>(dx + pix * (size_t)p.c + (size_t)c, v);
    }
}

/* ---- launchers ---- */

/* The chunk width for c channels of T: 16 bytes' worth when that divides c, else 1. */
template <typename T> static int chunk(int c) { return c % (int)(16 / sizeof(T)) == 0 ? (int)(16 / sizeof(T)) : 1; }
static int chunk_dt(int dt, int c) { return dt == CUK_F32 ? chunk<float>(c) : chunk<__half>(c); }
static bool aligned16(const void *q) { return ((uintptr_t)q & 15u) == 0; }

/* grid dimensions past the device's limits (x at most 2^31 - 1, y at most 65535) are refused */
static bool grid_ok(size_t pixels, size_t groups) {
    return pixels >= 1 && pixels <= 0x7fffffffu && groups >= 1 && groups <= 65535u;
}
static size_t fwd_pixels(const cuk_conv *p) { return (size_t)p->n * p->oh * p->ow; }
static size_t fwd_groups(const cuk_conv *p) { return ((size_t)p->k + SF_KB - 1) / SF_KB; }
static size_t bwd_pixels(const cuk_conv *p) { return (size_t)p->n * p->h * p->w; }
static size_t bwd_groups(const cuk_conv *p) {
    const size_t per = 32 * (size_t)chunk_dt(p->dt, p->c);
    return ((size_t)p->c + per - 1) / per;
}

extern "C" int cuk_conv_small_ok(const cuk_conv *p, int bwd_data) {
    return bwd_data ? grid_ok(bwd_pixels(p), bwd_groups(p)) : grid_ok(fwd_pixels(p), fwd_groups(p));
}

/* through pointers: the launch macro cannot take a template's commas */
template <typename T, int V> static void fwd_v(const cuk_conv *p, const void *x, const void *w, void *y, cuk_stream s) {
    void (*kern)(cuk_conv, const T *, const T *, T *) =
        aligned16(x) && aligned16(w) ? k_small_fwd<T, V, true> : k_small_fwd<T, V, false>;
    CUK_LAUNCH_SYNC(kern, dim3((unsigned)fwd_pixels(p), (unsigned)fwd_groups(p)), dim3(32, SF_KB), 0, s)(
        *p, (const T *)x, (const T *)w, (T *)y);
}

template <typename T> static int fwd_t(const cuk_conv *p, const void *x, const void *w, void *y, cuk_stream s) {
    if (!cuk_conv_small_ok(p, 0)) return (int)cudaErrorInvalidValue;
    if (chunk<T>(p->c) > 1)
        fwd_v<T, 16 / sizeof(T)>(p, x, w, y, s);
    else
        fwd_v<T, 1>(p, x, w, y, s);
    return cuk_last();
}

template <typename T, int V>
static void bwd_data_v(const cuk_conv *p, const void *w, const void *dy, void *dx, cuk_stream s) {
    void (*kern)(cuk_conv, const T *, const T *, T *) =
        aligned16(w) && aligned16(dx) ? k_small_bwd_data<T, V, true> : k_small_bwd_data<T, V, false>;
    CUK_LAUNCH_SYNC(kern, dim3((unsigned)bwd_pixels(p), (unsigned)bwd_groups(p)), dim3(32, SB_KS), 0, s)(
        *p, (const T *)w, (const T *)dy, (T *)dx);
}

template <typename T> static int bwd_data_t(const cuk_conv *p, const void *w, const void *dy, void *dx, cuk_stream s) {
    if (!cuk_conv_small_ok(p, 1)) return (int)cudaErrorInvalidValue;
    if (chunk<T>(p->c) > 1)
        bwd_data_v<T, 16 / sizeof(T)>(p, w, dy, dx, s);
    else
        bwd_data_v<T, 1>(p, w, dy, dx, s);
    return cuk_last();
}

extern "C" int cuk_conv_fwd_small(const cuk_conv *p, const void *x, const void *w, void *y, cuk_stream s) {
    if (p->dt == CUK_BF16) return fwd_t<__nv_bfloat16>(p, x, w, y, s);
    if (p->dt == CUK_F16) return fwd_t<__half>(p, x, w, y, s);
    return fwd_t<float>(p, x, w, y, s);
}

extern "C" int cuk_conv_bwd_data_small(const cuk_conv *p, const void *w, const void *dy, void *dx, cuk_stream s) {
    if (p->dt == CUK_BF16) return bwd_data_t<__nv_bfloat16>(p, w, dy, dx, s);
    if (p->dt == CUK_F16) return bwd_data_t<__half>(p, w, dy, dx, s);
    return bwd_data_t<float>(p, w, dy, dx, s);
}
