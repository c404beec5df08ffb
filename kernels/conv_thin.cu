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
 * images/s (one call, COLORIZE_CUDA_THIN=0 against both). The transposed-conv kernel is the likely cause:
 * its threads walk one pixel each with the channels in the outer loop, so a warp's 16-byte loads
 * land on 32 different 128-byte lines and every line is fetched again for each 8 channels. So
 * the backend uses only the conv kernel by default (cuda_impl.h `thin`); COLORIZE_CUDA_THIN=all
 * adds the transposed one, =0 neither, for the measurements still to be made.
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

#ifdef CZ_CUDA_EMU
#include <cstring>
#endif

/* ---- element access in the tensor's own type ---- */

static __device__ __forceinline__ float to_f(float v) { return v; }
static __device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
static __device__ __forceinline__ float to_f(__half v) { return __half2float(v); }

template <typename T> static __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }

/* 16 aligned bytes from src to dst: one vector access on the device (the emulator copies) */
static __device__ __forceinline__ void copy16(void *dst, const void *src) {
#ifdef CZ_CUDA_EMU
    std::memcpy(dst, src, 16);
#else
    *(uint4 *)dst = *(const uint4 *)src;
#endif
}

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
 * (tap 3, py = 0) or a + 1 (tap 0, py = 1); columns alike. So one thread per input pixel (a, b)
 * computes the 2x2 output block (2a.., 2b..) from the 3x3 input pixels around (a, b): every tap
 * of every input channel is used exactly once, in a fixed order. The thread walks the input
 * channels (8 at a time, one vector load per pixel, when VEC: 8 | C and the rows are aligned),
 * reading the channel's 16 x KO weights as float4 (the same address across the warp). */
template <typename T, int KO, bool VEC>
static __global__ void k_thin_out(cuk_conv p, const T *x, const float *w, const void *bias, int bdt, int act,
                                  float alpha, T *y, int ys, int yo, size_t count) {
    CUK_FOR(i, count) {
        const int b = (int)(i % (size_t)p.w);
        size_t t = i / (size_t)p.w;
        const int a = (int)(t % (size_t)p.h);
        const size_t n = t / (size_t)p.h;
        /* the 3x3 neighbourhood: row offsets -1, 0, 1 and column offsets alike */
        const T *px[3][3];
        bool in[3][3];
CUK_UNROLL
        for (int dr = 0; dr < 3; dr++)
CUK_UNROLL
            for (int dc = 0; dc < 3; dc++) {
                const int iy = a + dr - 1, ix = b + dc - 1;
                in[dr][dc] = iy >= 0 && iy < p.h && ix >= 0 && ix < p.w;
                px[dr][dc] = x + ((n * (size_t)p.h + (size_t)(in[dr][dc] ? iy : a)) * (size_t)p.w +
                                  (size_t)(in[dr][dc] ? ix : b)) * (size_t)p.c;
            }
        float acc[2][2][KO];
CUK_UNROLL
        for (int q = 0; q < 2; q++)
CUK_UNROLL
            for (int r = 0; r < 2; r++)
CUK_UNROLL
                for (int k = 0; k < KO; k++) acc[q][r][k] = 0.f;
        const int step = VEC ? 8 : 1;
        for (int c0 = 0; c0 < p.c; c0 += step) {
            float xv[3][3][8];
CUK_UNROLL
            for (int dr = 0; dr < 3; dr++)
CUK_UNROLL
                for (int dc = 0; dc < 3; dc++) {
                    if (VEC) {
                        if (in[dr][dc])
                            load8(px[dr][dc] + c0, xv[dr][dc]);
                        else
CUK_UNROLL
                            for (int j = 0; j < 8; j++) xv[dr][dc][j] = 0.f;
                    } else {
                        xv[dr][dc][0] = in[dr][dc] ? to_f(px[dr][dc][c0]) : 0.f;
                    }
                }
CUK_UNROLL
            for (int j = 0; j < step; j++) {
                /* weights of input channel c0 + j: [ky][kx][k], 16 KO floats */
                float wv[16 * KO];
                const float4 *wr = (const float4 *)(w + (size_t)(c0 + j) * (16 * KO));
CUK_UNROLL
                for (int q = 0; q < 4 * KO; q++) {
                    const float4 v = wr[q];
                    wv[4 * q] = v.x;
                    wv[4 * q + 1] = v.y;
                    wv[4 * q + 2] = v.z;
                    wv[4 * q + 3] = v.w;
                }
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
                                const float xe = xv[dr][dc][j];
CUK_UNROLL
                                for (int k = 0; k < KO; k++) acc[py][pxx][k] += xe * wv[(ky * 4 + kx) * KO + k];
                            }
                        }
            }
        }
        const int oh = 2 * p.h, ow = 2 * p.w;
CUK_UNROLL
        for (int py = 0; py < 2; py++)
CUK_UNROLL
            for (int pxx = 0; pxx < 2; pxx++) {
                const size_t opix = (n * (size_t)oh + (size_t)(2 * a + py)) * (size_t)ow + (size_t)(2 * b + pxx);
                T *o = y + opix * (size_t)ys + (size_t)yo;
CUK_UNROLL
                for (int k = 0; k < KO; k++) {
                    float v = acc[py][pxx][k];
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

#define THIN_OUT_THREADS 128 /* at batch 1 the 128x128 last layer is 16384 threads: 128 blocks */

template <typename T, int KO>
static void launch_out(const cuk_conv *p, const void *x, const float *w, const void *bias, int bdt, int act,
                       float alpha, void *y, int ys, int yo, cuk_stream s) {
    /* in cuDNN's terms of the backend (backward data): the transposed conv's input is "y" (oh x ow,
     * k channels) and its output "x" (h x w, c channels) */
    cuk_conv q = *p;
    q.h = p->oh;
    q.w = p->ow;
    q.c = p->k;
    size_t count = (size_t)q.n * q.h * q.w;
    unsigned blocks = (unsigned)((count + THIN_OUT_THREADS - 1) / THIN_OUT_THREADS);
    size_t cap = CUK_CAP("CZ_CUEMU_MAX_BLOCKS", 65536);
    if (blocks > cap) blocks = (unsigned)cap;
    const bool vec = q.c % 8 == 0 && aligned16(x);
    void (*kern)(cuk_conv, const T *, const float *, const void *, int, int, float, T *, int, int, size_t) =
        vec ? k_thin_out<T, KO, true> : k_thin_out<T, KO, false>;
    CUK_LAUNCH(kern, blocks, THIN_OUT_THREADS, 0, s)(q, (const T *)x, w, bias, bdt, act, alpha, (T *)y, ys, yo, count);
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
