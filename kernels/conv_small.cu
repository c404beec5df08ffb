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
 * - forward: a block takes a tile of output pixels (1, or 8 once there are 16) and 4 or 8
 *   output channels; lane l of channel k sums x * w over the valid taps (r, s in order) and the
 *   chunks l, l + 32, ... of input channels (a chunk's channels in order), each weight chunk
 *   loaded once for the tile's pixels; a channel's 32 partial sums are then added from shared
 *   memory in lane order.
 * - backward data: a block takes a tile of dx pixels (1, or 4-8 once there are 16) and 32
 *   adjacent chunks of input channels, each channel with its own sum; its SB_KS rows of lanes
 *   split the output channels (row j takes k = j, j + SB_KS, ...) over the valid taps (r, s in
 *   order), each weight chunk loaded once for the tile's pixels; the SB_KS partial sums of a
 *   channel are then added in row order.
 * Every output element is thus summed in one fixed order that depends on the shape of one image
 * only: deterministic, and an image gives the same bits alone or in a batch (a requirement of
 * the backend: batched == alone). The backward filter's candidate is conv_naive.cu's kernel,
 * whose threads already read contiguous memory and whose serial loop is short for small images.
 * Stateless launchers, like the rest of kernels/. Tested by tests/unit/test_ops.c (conv and
 * deconv parity, every dtype) with COLORIZE_CUDA_DIRECT=force (tests/gpu/check.sh step 1 and
 * tests/gpu/emu_check.sh). */
#include "cu_common.cuh"

#define SF_KB 4 /* forward: output channels per block of one pixel (blockDim (32, SF_KB)) */
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

/* A pixel's image (returned), row and column from its index in a batch of h x w images. */
static __device__ __forceinline__ size_t split_pix(size_t pix, int h, int w, int *y, int *x) {
    *x = (int)(pix % (size_t)w);
    const size_t t = pix / (size_t)w;
    *y = (int)(t % (size_t)h);
    return t / (size_t)h;
}

/* Forward. grid (ceil(n oh ow / P), ceil(k / KB)), block (32, KB). A block takes P consecutive
 * output pixels (of the whole batch) and KB output channels: each weight chunk it reads serves
 * its P pixels. A lane takes chunks of V input channels (V = 16 bytes' worth when V divides c,
 * else 1): chunks l, l + 32, ... of each valid tap, each chunk's channels in order. P and KB only
 * decide which thread computes an output, never its order of summation, so the launcher may
 * pick them by size. */
template <typename T, int V, bool A, int P, int KB>
static __global__ void k_small_fwd(cuk_conv p, const T *x, const T *w, T *y) {
    __shared__ float red[P][KB][32];
    const int lane = (int)threadIdx.x, kk = (int)threadIdx.y;
    const int k = (int)blockIdx.y * KB + kk;
    const size_t total = (size_t)p.n * (size_t)p.oh * (size_t)p.ow, pix0 = (size_t)blockIdx.x * P;
    const int chunks = p.c / V;
    float acc[P];
CUK_UNROLL
    for (int i = 0; i < P; i++) acc[i] = 0.f;
    if (k < p.k) {
        for (int r = 0; r < p.r; r++) {
            for (int s = 0; s < p.r; s++) {
                /* where each pixel of the tile reads this tap (NULL: outside the image, or past
                 * the last pixel) */
                const T *xr[P];
                bool any = false;
CUK_UNROLL
                for (int i = 0; i < P; i++) {
                    const size_t pix = pix0 + (size_t)i;
                    int oy, ox;
                    const size_t n = split_pix(pix, p.oh, p.ow, &oy, &ox);
                    const int iy = oy * p.stride - p.pad + r, ix = ox * p.stride - p.pad + s;
                    const bool in = pix < total && iy >= 0 && iy < p.h && ix >= 0 && ix < p.w;
                    xr[i] = in ? x + ((n * (size_t)p.h + (size_t)iy) * (size_t)p.w + (size_t)ix) * (size_t)p.c : nullptr;
                    any = any || in;
                }
                if (!any) continue;
                const T *wr = w + (((size_t)k * (size_t)p.r + (size_t)r) * (size_t)p.r + (size_t)s) * (size_t)p.c;
                for (int q = lane; q < chunks; q += 32) {
                    float wv[V];
                    ldv<T, V, A>(wr + (size_t)q * V, wv);
CUK_UNROLL
                    for (int i = 0; i < P; i++) {
                        if (!xr[i]) continue;
                        float xv[V];
                        ldv<T, V, A>(xr[i] + (size_t)q * V, xv);
CUK_UNROLL
                        for (int j = 0; j < V; j++) acc[i] += xv[j] * wv[j];
                    }
                }
            }
        }
    }
CUK_UNROLL
    for (int i = 0; i < P; i++) red[i][kk][lane] = acc[i];
    __syncthreads();
    /* lane i adds pixel i's 32 partial sums in lane order */
    if (lane < P && k < p.k && pix0 + (size_t)lane < total) {
        float v = red[lane][kk][0];
        for (int l = 1; l < 32; l++) v += red[lane][kk][l];
        y[(pix0 + (size_t)lane) * (size_t)p.k + (size_t)k] = from_f<T>(v);
    }
}

/* Backward data. grid (ceil(n h w / P), ceil(c / (32 V))), block (32, SB_KS). A block takes P
 * consecutive pixels of dx (of the whole batch) and 32 chunks of V adjacent input channels (V
 * as above), each channel of each pixel with its own sum: each weight chunk it reads serves the
 * tile's pixels that use that tap. Row j of lanes takes the output channels k = j, j + SB_KS,
 * ...; for each pixel and channel the rows' sums are then added in row order. P only decides
 * which thread computes an output, never its order of summation. */
template <typename T, int V, bool A, int P>
static __global__ void k_small_bwd_data(cuk_conv p, const T *w, const T *dy, T *dx) {
    __shared__ float red[SB_KS][32][P * V];
    const int lane = (int)threadIdx.x, j = (int)threadIdx.y;
    const int c = ((int)blockIdx.y * 32 + lane) * V;
    const size_t total = (size_t)p.n * (size_t)p.h * (size_t)p.w, pix0 = (size_t)blockIdx.x * P;
    const size_t kstep = (size_t)p.r * (size_t)p.r * (size_t)p.c; /* from w[k][r][s][c] to w[k + 1][r][s][c] */
    float acc[P][V];
CUK_UNROLL
    for (int i = 0; i < P; i++)
CUK_UNROLL
        for (int v = 0; v < V; v++) acc[i][v] = 0.f;
    if (c < p.c) {
        for (int r = 0; r < p.r; r++) {
            for (int s = 0; s < p.r; s++) {
                /* the dy pixel each pixel of the tile takes from this tap (NULL: none) */
                const T *dr[P];
                bool any = false;
CUK_UNROLL
                for (int i = 0; i < P; i++) {
                    const size_t pix = pix0 + (size_t)i;
                    int iy, ix;
                    const size_t n = split_pix(pix, p.h, p.w, &iy, &ix);
                    const int ny = iy + p.pad - r, nx = ix + p.pad - s;
                    const int oy = ny / p.stride, ox = nx / p.stride;
                    const bool in = pix < total && ny >= 0 && ny % p.stride == 0 && oy < p.oh && nx >= 0 &&
                                    nx % p.stride == 0 && ox < p.ow;
                    dr[i] = in ? dy + ((n * (size_t)p.oh + (size_t)oy) * (size_t)p.ow + (size_t)ox) * (size_t)p.k : nullptr;
                    any = any || in;
                }
                if (!any) continue;
                const T *wr = w + ((size_t)r * (size_t)p.r + (size_t)s) * (size_t)p.c + (size_t)c;
                for (int k = j; k < p.k; k += SB_KS) {
                    float wv[V];
                    ldv<T, V, A>(wr + (size_t)k * kstep, wv);
CUK_UNROLL
                    for (int i = 0; i < P; i++) {
                        if (!dr[i]) continue;
                        const float d = to_f(dr[i][k]);
CUK_UNROLL
                        for (int v = 0; v < V; v++) acc[i][v] += d * wv[v];
                    }
                }
            }
        }
    }
CUK_UNROLL
    for (int i = 0; i < P; i++)
CUK_UNROLL
        for (int v = 0; v < V; v++) red[j][lane][i * V + v] = acc[i][v];
    __syncthreads();
    /* row i (< P) writes pixel i */
    if (j < P && c < p.c && pix0 + (size_t)j < total) {
        float o[V];
CUK_UNROLL
        for (int v = 0; v < V; v++) {
            o[v] = red[0][lane][j * V + v];
            for (int q = 1; q < SB_KS; q++) o[v] += red[q][lane][j * V + v];
        }
        stv<T, V, A>(dx + (pix0 + (size_t)j) * (size_t)p.c + (size_t)c, o);
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
template <typename T, int V, int P, int KB>
static void fwd_tile(const cuk_conv *p, const void *x, const void *w, void *y, cuk_stream s) {
    void (*kern)(cuk_conv, const T *, const T *, T *) =
        aligned16(x) && aligned16(w) ? k_small_fwd<T, V, true, P, KB> : k_small_fwd<T, V, false, P, KB>;
    const size_t tiles = (fwd_pixels(p) + P - 1) / P, groups = ((size_t)p->k + KB - 1) / KB;
    CUK_LAUNCH_SYNC(kern, dim3((unsigned)tiles, (unsigned)groups), dim3(32, KB), 0, s)(*p, (const T *)x, (const T *)w,
                                                                                     (T *)y);
}

/* Tiles of SF_P pixels and SF_PKB channels once there are SF_TILE_MIN pixels (the weights are
 * then read once per 8 pixels instead of once per pixel), else one pixel and SF_KB channels
 * per block (more blocks for the 1x1 and 2x2 layers) */
#define SF_P 8
/* Blocks stay at 256 threads or fewer, so that they launch whatever registers ptxas gives a
 * thread (at most 255; 255 x 256 < 64K): a first version of 32 x 16 threads needed 168 a thread
 * in fp32, more than an SM holds for 512 threads. */
#define SF_PKB 8
#define SF_TILE_MIN 16
template <typename T, int V> static void fwd_v(const cuk_conv *p, const void *x, const void *w, void *y, cuk_stream s) {
    if (fwd_pixels(p) >= SF_TILE_MIN)
        fwd_tile<T, V, SF_P, SF_PKB>(p, x, w, y, s);
    else
        fwd_tile<T, V, 1, SF_KB>(p, x, w, y, s);
}

template <typename T> static int fwd_t(const cuk_conv *p, const void *x, const void *w, void *y, cuk_stream s) {
    if (!cuk_conv_small_ok(p, 0)) return (int)cudaErrorInvalidValue;
    if (chunk<T>(p->c) > 1)
        fwd_v<T, 16 / sizeof(T)>(p, x, w, y, s);
    else
        fwd_v<T, 1>(p, x, w, y, s);
    return cuk_last();
}

/* Tiles of 32 / V pixels of dx (8 in fp32, 4 in bf16/fp16: 32 floats of shared memory a lane and
 * row) once there are SF_TILE_MIN, else one pixel per block. */
template <typename T, int V, int P>
static void bwd_data_tile(const cuk_conv *p, const void *w, const void *dy, void *dx, cuk_stream s) {
    void (*kern)(cuk_conv, const T *, const T *, T *) =
        aligned16(w) && aligned16(dx) ? k_small_bwd_data<T, V, true, P> : k_small_bwd_data<T, V, false, P>;
    const size_t tiles = (bwd_pixels(p) + P - 1) / P;
    CUK_LAUNCH_SYNC(kern, dim3((unsigned)tiles, (unsigned)bwd_groups(p)), dim3(32, SB_KS), 0, s)(
        *p, (const T *)w, (const T *)dy, (T *)dx);
}

template <typename T, int V>
static void bwd_data_v(const cuk_conv *p, const void *w, const void *dy, void *dx, cuk_stream s) {
    if (bwd_pixels(p) >= SF_TILE_MIN)
        bwd_data_tile<T, V, (V > 1 ? 32 / V : 8)>(p, w, dy, dx, s);
    else
        bwd_data_tile<T, V, 1>(p, w, dy, dx, s);
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
