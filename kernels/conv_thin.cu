/* conv_thin.cu: direct kernels for the convolutions at the two thin ends of the networks, where
 * one side has few channels (at most CUK_THIN_MAX into a conv, 2 or 3 out of a transposed one):
 * the U-Net's first down conv (1 -> ngf), the PatchGAN's first conv (3 -> 64) and the U-Net's
 * last up conv (2 ngf -> 2, bias + tanh).
 * cuDNN's tensor-core kernels are built for wide channels, and these layers are memory-bound
 * with little arithmetic, so plain fp32 FMAs on CUDA cores suffice.
 *
 * Measured on an H200 (session 9 of issue 5; tests/gpu/README.md): with both kernels in use the
 * bf16 training step at batch 64 went from 1136 to 1304 images/s (two device calls in two leases,
 * so perhaps two machines), but the bf16 forward pass at batch 64 went from 16,187 to 12,693
 * images/s (one call, COLORIZE_CUDA_THIN=0 against both). The transposed-conv kernel was the
 * likely cause: its threads walked one pixel each with the channels in the outer loop, so a
 * warp's 16-byte loads landed on 32 different 128-byte lines and every line was fetched again
 * for each 8 channels. So the backend uses only the conv kernel by default (cuda_impl.h `thin`);
 * COLORIZE_CUDA_THIN=all adds the transposed one, =0 neither. Session 11 rewrote the transposed
 * kernel around shared-memory tiles (below; same bits as before, checked on the emulator), with
 * no GPU to time it: it stays off by default until check.sh step 4's thin-conv row shows it
 * beats cuDNN. (By its arithmetic, at bf16 batch 64 the U-Net's last layer is 8.6 GFLOP of fp32
 * FMAs, about 130 us at the H200's 67 TFLOP/s, against 0.82 ms for cuDNN in session 9.)
 *
 * Both fuse the bias and the activation and write the result straight into y (a channel view
 * too: pixel stride ys, first channel yo), and sum in one fixed order per output element with
 * fp32 accumulation: deterministic, and an image gives the same bits alone or in a batch.
 * Weights come in fp32 (the backend hands the fp32 copy: training's masters as they are, an
 * inference model's bf16 weights widened once and cached), stored as the rest of the backend
 * stores them (cu_kernels.h): (out, kh, kw, in) for a conv, (in, kh, kw, out) for a transposed
 * conv. Stateless launchers; they return cudaErrorInvalidValue for shapes they do not take
 * (the backend checks cuk_conv_thin_ok first).
 * Tested by tests/unit/test_ops.c (the conv and deconv cases with at most 4 channels on one
 * side: 1, 2 and 3 channels, strides 1 and 2, with and without bias, every activation, fp32,
 * bf16 and fp16, channel views) against the ref backend. */
#include "cu_common.cuh"

/* 8 consecutive elements, 16-byte aligned in fp16/bf16 (32 in fp32), widened to fp32 */
template <typename T> static __device__ __forceinline__ void load8(const T *p, float *f) {
    alignas(16) T v[8];
    copy16(v, p);
    if (sizeof(T) == 4) copy16(v + 4, p + 4);
CUK_UNROLL
    for (int j = 0; j < 8; j++) f[j] = to_f(v[j]);
}

/* the reverse: 8 fp32 values rounded once and stored together */
template <typename T> static __device__ __forceinline__ void store8(T *p, const float *f) {
    alignas(16) T v[8];
CUK_UNROLL
    for (int j = 0; j < 8; j++) v[j] = from_f<T>(f[j]);
    copy16(p, v);
    if (sizeof(T) == 4) copy16(p + 4, v + 4);
}

/* ---- conv with C <= CUK_THIN_MAX input channels and a 4x4 kernel (any stride and padding) ----
 * One thread per (output pixel, group of 8 output channels); the groups of a pixel are adjacent
 * threads, so a warp writes contiguous memory. Each thread gathers its 16 C input values once
 * and multiplies them by the weight rows of its 8 channels (16 C contiguous floats each, read as
 * float4: 16 C is a multiple of 4). VEC: 8 | K and the output's stride and offset are multiples
 * of 8, so the 8 results go out as one 16-byte store (two in fp32). */
template <typename T, int C, bool VEC>
static __global__ void k_thin_in(cuk_conv p, const T *x, const float *w, const void *bias, int bdt, int act,
                                 float alpha, T *y, int ys, int yo, size_t count) {
    const int groups = (p.k + 7) / 8;
    CUK_FOR(i, count) {
        const int g = (int)(i % (size_t)groups);
        const size_t pix = i / (size_t)groups;
        size_t t = pix;
        const int ox = (int)(t % (size_t)p.ow);
        t /= (size_t)p.ow;
        const int oy = (int)(t % (size_t)p.oh);
        const size_t n = t / (size_t)p.oh;
        float xv[16 * C];
CUK_UNROLL
        for (int r = 0; r < 4; r++) {
            const int iy = oy * p.stride - p.pad + r;
CUK_UNROLL
            for (int s = 0; s < 4; s++) {
                const int ix = ox * p.stride - p.pad + s;
                const bool in = iy >= 0 && iy < p.h && ix >= 0 && ix < p.w;
                const T *px = x + ((n * (size_t)p.h + (size_t)(in ? iy : 0)) * (size_t)p.w + (size_t)(in ? ix : 0)) * C;
CUK_UNROLL
                for (int c = 0; c < C; c++) xv[(r * 4 + s) * C + c] = in ? to_f(px[c]) : 0.f;
            }
        }
        const int k0 = g * 8, nk = p.k - k0 < 8 ? p.k - k0 : 8;
        float acc[8];
CUK_UNROLL
        for (int j = 0; j < 8; j++) {
            acc[j] = 0.f;
            if (j < nk) {
                const float4 *wr = (const float4 *)(w + (size_t)(k0 + j) * (16 * C));
CUK_UNROLL
                for (int q = 0; q < 4 * C; q++) {
                    const float4 wv = wr[q];
                    acc[j] += xv[4 * q] * wv.x;
                    acc[j] += xv[4 * q + 1] * wv.y;
                    acc[j] += xv[4 * q + 2] * wv.z;
                    acc[j] += xv[4 * q + 3] * wv.w;
                }
                if (bias) acc[j] += cuk_ld(bias, bdt, (size_t)(k0 + j));
                acc[j] = cuk_act_f(act, alpha, acc[j]);
            }
        }
        T *py = y + pix * (size_t)ys + (size_t)yo + (size_t)k0;
        if (VEC) {
            store8(py, acc);
        } else {
CUK_UNROLL
            for (int j = 0; j < 8; j++)
                if (j < nk) py[j] = from_f<T>(acc[j]);
        }
    }
}

/* ---- transposed conv, 4x4 kernel, stride 2, padding 1, 2 or 3 output channels ----
 * Output row oy = 2a + py takes input rows a (tap 1 when py = 0, tap 2 when py = 1) and a - 1
 * (tap 3, py = 0) or a + 1 (tap 0, py = 1); columns alike. So input pixel (a, b) owns the 2x2
 * output block (2a.., 2b..), computed from the 3x3 input pixels around it: every tap of every
 * input channel is used exactly once.
 * A block takes a tile of TO_TH x TO_TW input pixels, 2 adjacent pixels of a row per thread.
 * It walks the input channels TO_CC at a time: the block first copies the tile with a one-pixel
 * halo for those channels into shared memory as fp32 (channel-major, rows padded to an odd
 * length so that the two rows a warp reads fall in different banks), and their 16 x KO weights;
 * then each thread reads its 3x4 neighbourhood per channel from there and the weights as
 * float4 broadcasts. Global reads are whole 32-byte sectors (a pixel's TO_CC channels are
 * contiguous), each input byte is read about 1.3 times (the halo) instead of 9 (the 3x3
 * neighbourhoods of the per-pixel kernel this replaced, which also read 16 bytes per lane from
 * 32 different lines per load), and the weight loads are shared by the thread's two pixels.
 * Each output element is summed over the channels in increasing order, per channel over the
 * taps (row tap u, column tap v) in the order (0,0), (0,1), (1,0), (1,1): the per-pixel kernel's
 * order, so the two give the same bits. */
#define TO_TW 32 /* input columns per tile (2 per thread) */
#define TO_TH 8  /* input rows per tile */
#define TO_CC 16 /* input channels per pass through shared memory */
#define TO_RS (TO_TW + 3) /* shared row stride: the halo (2) plus 1, odd */

template <typename T, int KO>
static __global__ void k_thin_out(cuk_conv p, const T *x, const float *w, const void *bias, int bdt, int act,
                                  float alpha, T *y, int ys, int yo) {
    __shared__ float xs[TO_CC][TO_TH + 2][TO_RS];
    __shared__ float4 wq[TO_CC * 4 * KO]; /* channel cc's 16 KO weights: wq[cc * 4 KO ..] */
    const int tx = (int)threadIdx.x, ty = (int)threadIdx.y;
    const int tid = ty * (TO_TW / 2) + tx, nthr = (TO_TW / 2) * TO_TH;
    const int b0 = (int)blockIdx.x * TO_TW, a0 = (int)blockIdx.y * TO_TH;
    const size_t n = blockIdx.z;
    const int a = a0 + ty, bl = b0 + 2 * tx; /* this thread's row and left pixel */
    float acc[2][2][2][KO];                 /* [pixel][py][px][k] */
CUK_UNROLL
    for (int j = 0; j < 2; j++)
CUK_UNROLL
        for (int q = 0; q < 2; q++)
CUK_UNROLL
            for (int r = 0; r < 2; r++)
CUK_UNROLL
                for (int k = 0; k < KO; k++) acc[j][q][r][k] = 0.f;
    for (int c0 = 0; c0 < p.c; c0 += TO_CC) {
        const int cn = p.c - c0 < TO_CC ? p.c - c0 : TO_CC;
        /* the tile and its halo, channels fastest (contiguous in x), zero outside the image */
        for (int l = tid; l < (TO_TH + 2) * (TO_TW + 2) * TO_CC; l += nthr) {
            const int cc = l % TO_CC, pix = l / TO_CC;
            const int pc = pix % (TO_TW + 2), pr = pix / (TO_TW + 2);
            const int iy = a0 - 1 + pr, ix = b0 - 1 + pc;
            float v = 0.f;
            if (cc < cn && iy >= 0 && iy < p.h && ix >= 0 && ix < p.w)
                v = to_f(x[((n * (size_t)p.h + (size_t)iy) * (size_t)p.w + (size_t)ix) * (size_t)p.c + (size_t)(c0 + cc)]);
            xs[cc][pr][pc] = v;
        }
        const float4 *wg = (const float4 *)(w + (size_t)c0 * (16 * KO));
        for (int l = tid; l < TO_CC * 4 * KO; l += nthr) wq[l] = l < cn * 4 * KO ? wg[l] : make_float4(0.f, 0.f, 0.f, 0.f);
        __syncthreads();
        for (int cc = 0; cc < cn; cc++) {
            /* input rows a-1 .. a+1 and columns bl-1 .. bl+2 (shared rows ty.., columns 2 tx..) */
            float xv[3][4];
CUK_UNROLL
            for (int dr = 0; dr < 3; dr++)
CUK_UNROLL
                for (int q = 0; q < 4; q++) xv[dr][q] = xs[cc][ty + dr][2 * tx + q];
            float wv[16 * KO];
CUK_UNROLL
            for (int q = 0; q < 4 * KO; q++) {
                const float4 v = wq[cc * 4 * KO + q];
                wv[4 * q] = v.x;
                wv[4 * q + 1] = v.y;
                wv[4 * q + 2] = v.z;
                wv[4 * q + 3] = v.w;
            }
CUK_UNROLL
            for (int j = 0; j < 2; j++)
CUK_UNROLL
                for (int py = 0; py < 2; py++)
CUK_UNROLL
                    for (int pxx = 0; pxx < 2; pxx++)
CUK_UNROLL
                        for (int u = 0; u < 2; u++) {
                            /* row tap u: py 0 -> (row a, ky 1), (row a-1, ky 3); py 1 -> (a, 2), (a+1, 0) */
                            const int dr = py == 0 ? (u == 0 ? 1 : 0) : (u == 0 ? 1 : 2);
                            const int ky = py == 0 ? (u == 0 ? 1 : 3) : (u == 0 ? 2 : 0);
CUK_UNROLL
                            for (int v = 0; v < 2; v++) {
                                const int dc = pxx == 0 ? (v == 0 ? 1 : 0) : (v == 0 ? 1 : 2);
                                const int kx = pxx == 0 ? (v == 0 ? 1 : 3) : (v == 0 ? 2 : 0);
                                const float xe = xv[dr][j + dc];
CUK_UNROLL
                                for (int k = 0; k < KO; k++)
                                    acc[j][py][pxx][k] += xe * wv[(ky * 4 + kx) * KO + k];
                            }
                        }
        }
        __syncthreads();
    }
    if (a >= p.h) return;
    const int oh = 2 * p.h, ow = 2 * p.w;
CUK_UNROLL
    for (int j = 0; j < 2; j++) {
        if (bl + j >= p.w) break;
CUK_UNROLL
        for (int py = 0; py < 2; py++)
CUK_UNROLL
            for (int pxx = 0; pxx < 2; pxx++) {
                const size_t opix =
                    (n * (size_t)oh + (size_t)(2 * a + py)) * (size_t)ow + (size_t)(2 * (bl + j) + pxx);
                T *o = y + opix * (size_t)ys + (size_t)yo;
CUK_UNROLL
                for (int k = 0; k < KO; k++) {
                    float v = acc[j][py][pxx][k];
                    if (bias) v += cuk_ld(bias, bdt, (size_t)k);
                    o[k] = from_f<T>(cuk_act_f(act, alpha, v));
                }
            }
    }
}

/* ---- launchers ---- */

static bool aligned16(const void *q) { return ((uintptr_t)q & 15u) == 0; }

extern "C" int cuk_conv_thin_ok(const cuk_conv *p, int transposed) {
    if (p->r != 4) return 0;
    if (!transposed) return p->c >= 1 && p->c <= CUK_THIN_MAX;
    /* transposed: p->c is the output's channels (the backend's cuDNN terms), p->k the input's;
     * built for the generators' 2 (Lab) and 3 (RGB) output channels only (each variant is a
     * large unrolled kernel, and this one is off by default) */
    return p->k >= 1 && (p->c == 2 || p->c == 3) && p->stride == 2 && p->pad == 1 && p->oh * 2 == p->h &&
           p->ow * 2 == p->w;
}

template <typename T, int C>
static void launch_in(const cuk_conv *p, const void *x, const float *w, const void *bias, int bdt, int act,
                      float alpha, void *y, int ys, int yo, cuk_stream s) {
    size_t count = (size_t)p->n * p->oh * p->ow * (size_t)((p->k + 7) / 8);
    const bool vec = p->k % 8 == 0 && ys % 8 == 0 && yo % 8 == 0 && aligned16(y);
    /* through a pointer: the macro cannot take a template's commas */
    void (*kern)(cuk_conv, const T *, const float *, const void *, int, int, float, T *, int, int, size_t) =
        vec ? k_thin_in<T, C, true> : k_thin_in<T, C, false>;
    CUK_LAUNCH(kern, cuk_blocks(count), CUK_THREADS, 0, s)(*p, (const T *)x, w, bias, bdt, act, alpha, (T *)y, ys, yo,
                                                          count);
}

template <typename T>
static int thin_in_dt(const cuk_conv *p, const void *x, const float *w, const void *bias, int bdt, int act,
                      float alpha, void *y, int ys, int yo, cuk_stream s) {
    switch (p->c) {
    case 1: launch_in<T, 1>(p, x, w, bias, bdt, act, alpha, y, ys, yo, s); break;
    case 2: launch_in<T, 2>(p, x, w, bias, bdt, act, alpha, y, ys, yo, s); break;
    case 3: launch_in<T, 3>(p, x, w, bias, bdt, act, alpha, y, ys, yo, s); break;
    default: launch_in<T, 4>(p, x, w, bias, bdt, act, alpha, y, ys, yo, s); break;
    }
    return cuk_last();
}

extern "C" int cuk_conv_thin_in_fwd(const cuk_conv *p, const void *x, const float *w, const void *bias, int bdt,
                                    int act, float alpha, void *y, int ys, int yo, cuk_stream s) {
    if (!cuk_conv_thin_ok(p, 0) || !aligned16(w)) return (int)cudaErrorInvalidValue;
    if (p->dt == CUK_BF16) return thin_in_dt<__nv_bfloat16>(p, x, w, bias, bdt, act, alpha, y, ys, yo, s);
    if (p->dt == CUK_F16) return thin_in_dt<__half>(p, x, w, bias, bdt, act, alpha, y, ys, yo, s);
    return thin_in_dt<float>(p, x, w, bias, bdt, act, alpha, y, ys, yo, s);
}

template <typename T, int KO>
static void launch_out(const cuk_conv *p, const void *x, const float *w, const void *bias, int bdt, int act,
                       float alpha, void *y, int ys, int yo, cuk_stream s) {
    /* in cuDNN's terms of the backend (backward data): the transposed conv's input is "y" (oh x ow,
     * k channels) and its output "x" (h x w, c channels) */
    cuk_conv q = *p;
    q.h = p->oh;
    q.w = p->ow;
    q.c = p->k;
    dim3 grid((unsigned)((q.w + TO_TW - 1) / TO_TW), (unsigned)((q.h + TO_TH - 1) / TO_TH), (unsigned)q.n);
    dim3 block(TO_TW / 2, TO_TH);
    /* through a pointer: the macro cannot take a template's commas */
    void (*kern)(cuk_conv, const T *, const float *, const void *, int, int, float, T *, int, int) = k_thin_out<T, KO>;
    CUK_LAUNCH_SYNC(kern, grid, block, 0, s)(q, (const T *)x, w, bias, bdt, act, alpha, (T *)y, ys, yo);
}

template <typename T>
static int thin_out_dt(const cuk_conv *p, const void *x, const float *w, const void *bias, int bdt, int act,
                       float alpha, void *y, int ys, int yo, cuk_stream s) {
    if (p->c == 2)
        launch_out<T, 2>(p, x, w, bias, bdt, act, alpha, y, ys, yo, s);
    else
        launch_out<T, 3>(p, x, w, bias, bdt, act, alpha, y, ys, yo, s);
    return cuk_last();
}

extern "C" int cuk_deconv_thin_out_fwd(const cuk_conv *p, const void *x, const float *w, const void *bias, int bdt,
                                       int act, float alpha, void *y, int ys, int yo, cuk_stream s) {
    if (!cuk_conv_thin_ok(p, 1) || !aligned16(w)) return (int)cudaErrorInvalidValue;
    if (p->dt == CUK_BF16) return thin_out_dt<__nv_bfloat16>(p, x, w, bias, bdt, act, alpha, y, ys, yo, s);
    if (p->dt == CUK_F16) return thin_out_dt<__half>(p, x, w, bias, bdt, act, alpha, y, ys, yo, s);
    return thin_out_dt<float>(p, x, w, bias, bdt, act, alpha, y, ys, yo, s);
}
