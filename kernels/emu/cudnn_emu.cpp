/* cudnn_emu.cpp: the emulator's cuDNN: the legacy convolution API subset that cudnn_ops.c
 * calls, implemented on the CPU against the real cudnn.h prototypes. Test-only, linked in place
 * of libcudnn in the CZ_CUDA=EMU build (see cuemu.h).
 *
 * It implements the documented semantics, independently of conv_naive.cu, so that the way
 * cudnn_ops.c wires cuDNN (which descriptor goes where, the NHWC tensor and KRSC filter
 * formats, transposed convolution as backward data, alpha/beta accumulation, workspace
 * sizes) is tested without a GPU:
 * - descriptors keep what they were set to; every call checks that the tensors, filter and
 *   convolution agree (channels, output size, one data type) and answers
 *   CUDNN_STATUS_BAD_PARAM (with a diagnostic) where real cuDNN would refuse;
 * - y = alpha * op(...) + beta * y, and y is not read when beta is 0 (the emulated cudaMalloc
 *   fills memory with NaN, so code that relies on reading it would show);
 * - the algorithm search returns a non-deterministic algorithm first (which cudnn_ops.c must
 *   skip), then two deterministic ones that need workspaces and round differently, ranked by
 *   batch size (so per-batch-size choices would break batched == alone, as they can on a
 *   GPU); running with a workspace smaller than the algorithm asked for is BAD_PARAM;
 * - the work is queued on the handle's stream and runs at the next synchronization, with fp64
 *   accumulation and one rounding into the data type on store.
 * Threading: descriptors and handles as in cuDNN (one thread at a time per handle); a large
 * convolution, when it runs, is split over host threads by output channel
 * (CZ_CUEMU_CONV_THREADS, default the machine's cores, at most 8) with the same bits as one. */
#include "cuemu.h"
#include "cuemu_internal.h"

#include <cudnn.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <thread>
#include <utility>
#include <vector>

struct cudnnContext {
    cudaStream_t stream;
};

struct cudnnTensorStruct {
    cudnnTensorFormat_t fmt;
    cudnnDataType_t dt;
    int n, c, h, w;
    bool set;
};

struct cudnnFilterStruct {
    cudnnTensorFormat_t fmt;
    cudnnDataType_t dt;
    int k, c, r, s;
    bool set;
};

struct cudnnConvolutionStruct {
    int pad_h, pad_w, u, v, dil_h, dil_w;
    cudnnConvolutionMode_t mode;
    cudnnDataType_t compute;
    cudnnMathType_t math;
    bool set;
};

namespace {

using cuemu::report;

size_t dt_size(cudnnDataType_t dt) { return dt == CUDNN_DATA_FLOAT ? 4 : 2; }

bool dt_ok(cudnnDataType_t dt) {
    return dt == CUDNN_DATA_FLOAT || dt == CUDNN_DATA_HALF || dt == CUDNN_DATA_BFLOAT16;
}

double load(const void *p, cudnnDataType_t dt, size_t i) {
    if (dt == CUDNN_DATA_FLOAT) return ((const float *)p)[i];
    if (dt == CUDNN_DATA_BFLOAT16) return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    return __half2float(((const __half *)p)[i]);
}

void store(void *p, cudnnDataType_t dt, size_t i, double v) {
    float f = (float)v;
    if (dt == CUDNN_DATA_FLOAT)
        ((float *)p)[i] = f;
    else if (dt == CUDNN_DATA_BFLOAT16)
        ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn(f);
    else
        ((__half *)p)[i] = __float2half_rn(f);
}

/* Element offsets of a 4-d tensor in either format. */
struct t4 {
    cudnnTensorStruct d;
    size_t off(int n, int c, int h, int w) const {
        if (d.fmt == CUDNN_TENSOR_NHWC) return (((size_t)n * d.h + h) * d.w + w) * d.c + c;
        return (((size_t)n * d.c + c) * d.h + h) * d.w + w;
    }
    size_t numel() const { return (size_t)d.n * d.c * d.h * d.w; }
};

struct f4 {
    cudnnFilterStruct d;
    size_t off(int k, int c, int r, int s) const {
        if (d.fmt == CUDNN_TENSOR_NHWC) return (((size_t)k * d.r + r) * d.s + s) * d.c + c; /* KRSC */
        return (((size_t)k * d.c + c) * d.r + r) * d.s + s;                                 /* KCRS */
    }
    size_t numel() const { return (size_t)d.k * d.c * d.r * d.s; }
};

int out_dim(int in, int pad, int filt, int dil, int stride) { return (in + 2 * pad - ((filt - 1) * dil + 1)) / stride + 1; }

/* The common checks of the three primitives: x (n,c,h,w) * filter (k,c,r,s) -> y (n,k,oh,ow). */
cudnnStatus_t check_problem(const char *fn, const cudnnTensorStruct *x, const cudnnFilterStruct *f,
                            const cudnnConvolutionStruct *cd, const cudnnTensorStruct *y) {
    if (!x || !f || !cd || !y || !x->set || !f->set || !cd->set || !y->set) {
        report("%s: a descriptor is NULL or was never set", fn);
        return CUDNN_STATUS_BAD_PARAM;
    }
    if (x->dt != f->dt || x->dt != y->dt) {
        report("%s: data types differ (x %d, filter %d, y %d)", fn, (int)x->dt, (int)f->dt, (int)y->dt);
        return CUDNN_STATUS_BAD_PARAM;
    }
    if (x->c != f->c || y->c != f->k || x->n != y->n) {
        report("%s: x [%d,%d,%d,%d], filter [%d,%d,%d,%d], y [%d,%d,%d,%d] do not fit together", fn, x->n, x->c, x->h,
               x->w, f->k, f->c, f->r, f->s, y->n, y->c, y->h, y->w);
        return CUDNN_STATUS_BAD_PARAM;
    }
    int oh = out_dim(x->h, cd->pad_h, f->r, cd->dil_h, cd->u), ow = out_dim(x->w, cd->pad_w, f->s, cd->dil_w, cd->v);
    if (oh != y->h || ow != y->w) {
        report("%s: y is %dx%d but the convolution gives %dx%d", fn, y->h, y->w, oh, ow);
        return CUDNN_STATUS_BAD_PARAM;
    }
    if (x->dt != CUDNN_DATA_FLOAT && cd->compute != CUDNN_DATA_FLOAT && cd->compute != x->dt) {
        report("%s: compute type %d for data type %d", fn, (int)cd->compute, (int)x->dt);
        return CUDNN_STATUS_BAD_PARAM;
    }
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t check_mem(const char *fn, const char *what, const void *p, size_t bytes) {
    if (!cuemu::is_device_range(p, bytes)) {
        report("%s: %s (%p, %zu bytes) is not inside one device allocation", fn, what, p, bytes);
        return CUDNN_STATUS_BAD_PARAM;
    }
    return CUDNN_STATUS_SUCCESS;
}

/* The workspace each emulated algorithm asks for: none for algorithm 1 (the non-deterministic
 * one); for algorithm 0 an amount that grows with the problem (per output channel and output
 * pixel), so that workspace handling, its growth and graphs holding an old workspace are
 * exercised. */
size_t ws_need(int algo, int k, int oh, int ow) {
    if (algo == 1) return 0;
    return (size_t)(algo == 2 ? 512 : 1024) * (size_t)k + (size_t)16 * (size_t)oh * (size_t)ow;
}

/* acc += t, the way algorithm `algo` accumulates (2: rounded to fp32 at every step). */
inline void accum(double &acc, double t, int algo) { acc = algo == 2 ? (double)(float)(acc + t) : acc + t; }

/* At execution time (the call may have been recorded into a graph long before): every buffer
 * must still be live device memory, as on a device where a freed pointer faults. */
cudaError_t still_live(const char *fn, std::initializer_list<std::pair<const void *, size_t>> bufs) {
    for (auto &b : bufs)
        if (b.second && !cuemu::is_device_range(b.first, b.second)) {
            report("%s ran on %p (%zu bytes), which is no longer live device memory", fn, b.first, b.second);
            return cudaErrorIllegalAddress;
        }
    return cudaSuccess;
}

cudnnStatus_t check_ws(const char *fn, int algo, size_t need, const void *ws, size_t ws_bytes) {
    if (algo < 0 || algo > 2) {
        report("%s: algorithm %d was never offered", fn, algo);
        return CUDNN_STATUS_BAD_PARAM;
    }
    if (ws_bytes < need) {
        report("%s: algorithm %d needs %zu bytes of workspace, got %zu", fn, algo, need, ws_bytes);
        return CUDNN_STATUS_BAD_PARAM;
    }
    if (need && check_mem(fn, "the workspace", ws, need) != CUDNN_STATUS_SUCCESS) return CUDNN_STATUS_BAD_PARAM;
    return CUDNN_STATUS_SUCCESS;
}

/* out = alpha * acc + beta * out, not reading out when beta is 0. */
void blend(void *out, cudnnDataType_t dt, const std::vector<double> &acc, double alpha, double beta,
           const std::vector<size_t> &offs) {
    for (size_t i = 0; i < acc.size(); i++) {
        double v = alpha * acc[i];
        if (beta != 0) v += beta * load(out, dt, offs[i]);
        store(out, dt, offs[i], v);
    }
}

double scalar(const void *p) { return *(const float *)p; } /* alpha/beta are float for these types */

} // namespace

extern "C" {

size_t cudnnGetVersion(void) { return CUDNN_VERSION; }

const char *cudnnGetErrorString(cudnnStatus_t st) {
    switch (st) {
    case CUDNN_STATUS_SUCCESS: return "CUDNN_STATUS_SUCCESS";
    case CUDNN_STATUS_BAD_PARAM: return "CUDNN_STATUS_BAD_PARAM (emulator: see the cuemu line above)";
    case CUDNN_STATUS_NOT_SUPPORTED: return "CUDNN_STATUS_NOT_SUPPORTED";
    case CUDNN_STATUS_ALLOC_FAILED: return "CUDNN_STATUS_ALLOC_FAILED";
    case CUDNN_STATUS_EXECUTION_FAILED: return "CUDNN_STATUS_EXECUTION_FAILED";
    default: return "CUDNN_STATUS_(emulator: unknown)";
    }
}

cudnnStatus_t cudnnCreate(cudnnHandle_t *h) {
    int n = 0;
    if (!h) return CUDNN_STATUS_BAD_PARAM;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n < 1) return CUDNN_STATUS_NOT_INITIALIZED;
    *h = new cudnnContext{nullptr};
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnDestroy(cudnnHandle_t h) {
    delete h;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetStream(cudnnHandle_t h, cudaStream_t s) {
    if (!h) return CUDNN_STATUS_BAD_PARAM;
    h->stream = s;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnCreateTensorDescriptor(cudnnTensorDescriptor_t *d) {
    if (!d) return CUDNN_STATUS_BAD_PARAM;
    *d = new cudnnTensorStruct{};
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnDestroyTensorDescriptor(cudnnTensorDescriptor_t d) {
    delete d;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetTensor4dDescriptor(cudnnTensorDescriptor_t d, cudnnTensorFormat_t fmt, cudnnDataType_t dt,
                                         int n, int c, int h, int w) {
    if (!d || n < 1 || c < 1 || h < 1 || w < 1 || !dt_ok(dt) ||
        (fmt != CUDNN_TENSOR_NHWC && fmt != CUDNN_TENSOR_NCHW)) {
        report("cudnnSetTensor4dDescriptor: format %d type %d [%d,%d,%d,%d] refused", (int)fmt, (int)dt, n, c, h, w);
        return CUDNN_STATUS_BAD_PARAM;
    }
    *d = cudnnTensorStruct{fmt, dt, n, c, h, w, true};
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnCreateFilterDescriptor(cudnnFilterDescriptor_t *d) {
    if (!d) return CUDNN_STATUS_BAD_PARAM;
    *d = new cudnnFilterStruct{};
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnDestroyFilterDescriptor(cudnnFilterDescriptor_t d) {
    delete d;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetFilter4dDescriptor(cudnnFilterDescriptor_t d, cudnnDataType_t dt, cudnnTensorFormat_t fmt, int k,
                                         int c, int r, int s) {
    if (!d || k < 1 || c < 1 || r < 1 || s < 1 || !dt_ok(dt) ||
        (fmt != CUDNN_TENSOR_NHWC && fmt != CUDNN_TENSOR_NCHW)) {
        report("cudnnSetFilter4dDescriptor: type %d format %d [%d,%d,%d,%d] refused", (int)dt, (int)fmt, k, c, r, s);
        return CUDNN_STATUS_BAD_PARAM;
    }
    *d = cudnnFilterStruct{fmt, dt, k, c, r, s, true};
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnCreateConvolutionDescriptor(cudnnConvolutionDescriptor_t *d) {
    if (!d) return CUDNN_STATUS_BAD_PARAM;
    *d = new cudnnConvolutionStruct{};
    (*d)->math = CUDNN_DEFAULT_MATH;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnDestroyConvolutionDescriptor(cudnnConvolutionDescriptor_t d) {
    delete d;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetConvolution2dDescriptor(cudnnConvolutionDescriptor_t d, int pad_h, int pad_w, int u, int v,
                                              int dil_h, int dil_w, cudnnConvolutionMode_t mode,
                                              cudnnDataType_t compute) {
    if (!d || pad_h < 0 || pad_w < 0 || u < 1 || v < 1 || dil_h < 1 || dil_w < 1 ||
        (mode != CUDNN_CONVOLUTION && mode != CUDNN_CROSS_CORRELATION) || !dt_ok(compute)) {
        report("cudnnSetConvolution2dDescriptor: pad %d,%d stride %d,%d dilation %d,%d mode %d compute %d refused",
               pad_h, pad_w, u, v, dil_h, dil_w, (int)mode, (int)compute);
        return CUDNN_STATUS_BAD_PARAM;
    }
    cudnnMathType_t math = d->math;
    *d = cudnnConvolutionStruct{pad_h, pad_w, u, v, dil_h, dil_w, mode, compute, math, true};
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetConvolutionMathType(cudnnConvolutionDescriptor_t d, cudnnMathType_t m) {
    if (!d) return CUDNN_STATUS_BAD_PARAM;
    d->math = m;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnGetConvolution2dForwardOutputDim(const cudnnConvolutionDescriptor_t cd,
                                                    const cudnnTensorDescriptor_t x, const cudnnFilterDescriptor_t f,
                                                    int *n, int *c, int *h, int *w) {
    if (!cd || !x || !f || !cd->set || !x->set || !f->set || !n || !c || !h || !w) return CUDNN_STATUS_BAD_PARAM;
    if (x->c != f->c) {
        report("cudnnGetConvolution2dForwardOutputDim: x has %d channels, the filter %d", x->c, f->c);
        return CUDNN_STATUS_BAD_PARAM;
    }
    *n = x->n;
    *c = f->k;
    *h = out_dim(x->h, cd->pad_h, f->r, cd->dil_h, cd->u);
    *w = out_dim(x->w, cd->pad_w, f->s, cd->dil_w, cd->v);
    return *h > 0 && *w > 0 ? CUDNN_STATUS_SUCCESS : CUDNN_STATUS_BAD_PARAM;
}

} /* extern "C" */

namespace {

/* The offers described at the top. The perf structs of the three primitives share these fields. */
template <typename Perf, typename Algo>
cudnnStatus_t offer(const char *fn, const cudnnTensorStruct *x, const cudnnFilterStruct *f,
                    const cudnnConvolutionStruct *cd, const cudnnTensorStruct *y, int requested, int *returned,
                    Perf *perf) {
    cudnnStatus_t st = check_problem(fn, x, f, cd, y);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    if (!returned || !perf || requested < 1) return CUDNN_STATUS_BAD_PARAM;
    /* deterministic algorithms 0 and 2 give slightly different bits (2 accumulates in fp32), and
     * which is "fastest" depends on the batch size, as with real cuDNN: a backend that searched
     * per batch size would break batched == alone */
    const int order[3] = {1, x->n == 1 ? 2 : 0, x->n == 1 ? 0 : 2};
    Perf p[3];
    memset(p, 0, sizeof p);
    for (int i = 0; i < 3; i++) {
        p[i].algo = (Algo)order[i];
        p[i].status = CUDNN_STATUS_SUCCESS;
        p[i].time = 0.5f * (float)(i + 1);
        p[i].memory = ws_need(order[i], f->k, y->h, y->w);
        p[i].determinism = order[i] == 1 ? CUDNN_NON_DETERMINISTIC : CUDNN_DETERMINISTIC;
        p[i].mathType = cd->math;
    }
    int n = requested < 3 ? requested : 3;
    for (int i = 0; i < n; i++) perf[i] = p[i];
    *returned = n;
    return CUDNN_STATUS_SUCCESS;
}

/* The three workspace-size queries, in the terms of check_problem. */
cudnnStatus_t ws_size(const char *fn, cudnnHandle_t h, const cudnnTensorStruct *x, const cudnnFilterStruct *f,
                      const cudnnConvolutionStruct *cd, const cudnnTensorStruct *y, int algo, size_t *bytes) {
    cudnnStatus_t st = check_problem(fn, x, f, cd, y);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    if (!h || !bytes || algo < 0 || algo > 2) return CUDNN_STATUS_BAD_PARAM;
    *bytes = ws_need(algo, f->k, y->h, y->w);
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t submit(cudnnHandle_t h, const char *fn, std::function<cudaError_t()> work) {
    if (!h) return CUDNN_STATUS_BAD_PARAM;
    cudaError_t e = cuemu::enqueue(h->stream, fn, std::move(work));
    if (e != cudaSuccess) return CUDNN_STATUS_EXECUTION_FAILED;
    return CUDNN_STATUS_SUCCESS;
}

/* Host threads for one large convolution: the machine's cores, at most 8, or
 * CZ_CUEMU_CONV_THREADS. */
int workers() {
    static const int n = [] {
        const char *v = getenv("CZ_CUEMU_CONV_THREADS");
        long k = v && *v ? strtol(v, nullptr, 10) : (long)std::thread::hardware_concurrency();
        return (int)(k < 1 ? 1 : k > 8 ? 8 : k);
    }();
    return n;
}

/* a[0] * b[0] + a[1] * b[1] + ..., left to right. Not instrumented (this file is built
 * without ASan, and UBSan's alignment checks are off here): much of the emulator's time is
 * here, and both rows lie in vectors of doubles that conv_call sized itself. */
__attribute__((no_sanitize("alignment"))) double dot(const double *a, const double *b, int n) {
    double t = 0;
    for (int i = 0; i < n; i++) t += a[i] * b[i];
    return t;
}

/* y[l[0].first] * x[l[0].second] + ..., left to right, accumulated as algorithm `algo` does
 * (see accum). Unchecked by UBSan's alignment checks, as dot() is. */
__attribute__((no_sanitize("alignment"))) double pair_sum(const double *y, const double *x,
                                                          const std::pair<size_t, size_t> *l, size_t n, int algo) {
    double a = 0;
    if (algo == 2)
        for (size_t i = 0; i < n; i++) a = (double)(float)(a + y[l[i].first] * x[l[i].second]);
    else
        for (size_t i = 0; i < n; i++) a += y[l[i].first] * x[l[i].second];
    return a;
}

/* A tensor's elements as doubles in n,h,w,c order, whatever its format. */
std::vector<double> channels_last(const void *p, const t4 &T) {
    std::vector<double> v(T.numel());
    size_t i = 0;
    for (int n = 0; n < T.d.n; n++)
        for (int h = 0; h < T.d.h; h++)
            for (int w = 0; w < T.d.w; w++)
                for (int c = 0; c < T.d.c; c++) v[i++] = load(p, T.d.dt, T.off(n, c, h, w));
    return v;
}

/* A filter's elements as doubles in k,r,s,c order, or r,s,c,k (k innermost) with by_k. */
std::vector<double> filter_doubles(const void *p, const f4 &F, bool by_k) {
    std::vector<double> v(F.numel());
    for (int k = 0; k < F.d.k; k++)
        for (int r = 0; r < F.d.r; r++)
            for (int s = 0; s < F.d.s; s++)
                for (int c = 0; c < F.d.c; c++)
                    v[by_k ? (((size_t)r * F.d.s + s) * F.d.c + c) * F.d.k + k
                           : (((size_t)k * F.d.r + r) * F.d.s + s) * F.d.c + c] = load(p, F.d.dt, F.off(k, c, r, s));
    return v;
}

/* The three primitives in the terms of check_problem: x (n,c,h,w) * filter (k,c,r,s) -> y
 * (n,k,oh,ow). `out` names the one that is written (forward: y, backward data: x, backward
 * filter: the filter), as out = alpha * op(the other two) + beta * out; the others are read. */
enum conv_out { OUT_Y, OUT_X, OUT_W };

cudnnStatus_t conv_call(const char *fn, conv_out out, cudnnHandle_t h, const cudnnTensorStruct *xd, const void *x,
                        const cudnnFilterStruct *wd, const void *w, const cudnnConvolutionStruct *cdp,
                        const cudnnTensorStruct *yd, const void *y, int algo, void *ws, size_t ws_bytes,
                        const void *alpha, const void *beta) {
    cudnnStatus_t st = check_problem(fn, xd, wd, cdp, yd);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    t4 X{*xd}, Y{*yd};
    f4 W{*wd};
    size_t es = dt_size(xd->dt), need = ws_need(algo, wd->k, yd->h, yd->w);
    if ((st = check_ws(fn, algo, need, ws, ws_bytes)) || (st = check_mem(fn, "x", x, X.numel() * es)) ||
        (st = check_mem(fn, "w", w, W.numel() * es)) || (st = check_mem(fn, "y", y, Y.numel() * es)))
        return st;
    if (!alpha || !beta) return CUDNN_STATUS_BAD_PARAM;
    double a = scalar(alpha), b = scalar(beta);
    cudnnConvolutionStruct cd = *cdp;
    return submit(h, fn, [=]() {
        cudaError_t live = still_live(fn, {{ws, need}, {x, X.numel() * es}, {w, W.numel() * es}, {y, Y.numel() * es}});
        if (live != cudaSuccess) return live;
        /* acc in the written tensor's logical order (n,c,h,w or k,c,r,s); offs maps it to memory */
        int d0, d1, d2, d3;
        if (out == OUT_W)
            d0 = W.d.k, d1 = W.d.c, d2 = W.d.r, d3 = W.d.s;
        else if (out == OUT_X)
            d0 = X.d.n, d1 = X.d.c, d2 = X.d.h, d3 = X.d.w;
        else
            d0 = Y.d.n, d1 = Y.d.c, d2 = Y.d.h, d3 = Y.d.w;
        std::vector<double> acc((size_t)d0 * d1 * d2 * d3, 0.0);
        std::vector<size_t> offs(acc.size());
        size_t i = 0;
        for (int i0 = 0; i0 < d0; i0++)
            for (int i1 = 0; i1 < d1; i1++)
                for (int i2 = 0; i2 < d2; i2++)
                    for (int i3 = 0; i3 < d3; i3++)
                        offs[i++] = out == OUT_W ? W.off(i0, i1, i2, i3)
                                    : out == OUT_X ? X.off(i0, i1, i2, i3)
                                                   : Y.off(i0, i1, i2, i3);
        auto at = [&](int i0, int i1, int i2, int i3) -> double & {
            return acc[(((size_t)i0 * d1 + i1) * d2 + i2) * d3 + i3];
        };
        /* The two read tensors as doubles, channels innermost (x, y: n,h,w,c; the filter:
         * k,r,s,c, or r,s,c,k for backward data), each element loaded once, so that the dot
         * products below run over contiguous memory. The sums are taken in the same order as
         * over the tensors themselves, so the bits do not depend on the layouts. */
        const int C = W.d.c, K = W.d.k, R = W.d.r, S = W.d.s;
        std::vector<double> xv, yv, wv;
        if (out != OUT_X) xv = channels_last(x, X);
        if (out != OUT_Y) yv = channels_last(y, Y);
        if (out != OUT_W) wv = filter_doubles(w, W, out == OUT_X);
        /* Each worker takes a range of the outer channel loop (k, or c for backward data), so
         * that no two write the same sum. Each element written is one sum in a fixed order:
         * forward, over the filter taps (r, s) that land inside the input, each tap's product
         * summed over c first; backward data, over the output pixels that reach the input
         * pixel in row-major order, each summed over k first; backward filter, over n and the
         * output pixels in row-major order, one product at a time. So the bits do not depend on
         * the number of workers. "Convolution" mode flips the filter (r -> R-1-r). */
        const int pad_h = cd.pad_h, pad_w = cd.pad_w, u = cd.u, v = cd.v, dh = cd.dil_h, dw = cd.dil_w;
        const bool flip = cd.mode == CUDNN_CONVOLUTION;
        auto tap = [&](int i, int o, int stride, int pad, int dil, int nfilt) { /* filter index, or -1 */
            int t = i - o * stride + pad;
            if (t < 0 || t % dil) return -1;
            t /= dil;
            return t < nfilt ? t : -1;
        };
        auto xrow = [&](int n, int iy, int ix) { return &xv[(((size_t)n * X.d.h + iy) * X.d.w + ix) * C]; };
        auto yrow = [&](int n, int oy, int ox) { return &yv[(((size_t)n * Y.d.h + oy) * Y.d.w + ox) * K]; };
        auto part = [&](int lo, int hi) {
            if (out == OUT_Y) {
                std::vector<std::pair<const double *, int>> list; /* (x row, filter r*S+s) per tap */
                for (int n = 0; n < Y.d.n; n++)
                    for (int oy = 0; oy < Y.d.h; oy++)
                        for (int ox = 0; ox < Y.d.w; ox++) {
                            list.clear();
                            for (int r = 0; r < R; r++) {
                                int iy = oy * u - pad_h + r * dh;
                                if (iy < 0 || iy >= X.d.h) continue;
                                for (int s = 0; s < S; s++) {
                                    int ix = ox * v - pad_w + s * dw;
                                    if (ix < 0 || ix >= X.d.w) continue;
                                    list.emplace_back(xrow(n, iy, ix), (flip ? R - 1 - r : r) * S + (flip ? S - 1 - s : s));
                                }
                            }
                            for (int k = lo; k < hi; k++) {
                                double acc_k = 0;
                                for (auto &e : list) {
                                    const double *wp = &wv[((size_t)k * R * S + e.second) * C];
                                    accum(acc_k, dot(e.first, wp, C), algo);
                                }
                                at(n, k, oy, ox) = acc_k;
                            }
                        }
            } else if (out == OUT_X) {
                /* the (output row, filter row) pairs that reach each input row, rows ascending;
                 * the same for columns */
                std::vector<std::vector<std::pair<int, int>>> rows(X.d.h), cols(X.d.w);
                for (int iy = 0; iy < X.d.h; iy++)
                    for (int oy = 0; oy < Y.d.h; oy++) {
                        int r = tap(iy, oy, u, pad_h, dh, R);
                        if (r >= 0) rows[iy].emplace_back(oy, flip ? R - 1 - r : r);
                    }
                for (int ix = 0; ix < X.d.w; ix++)
                    for (int ox = 0; ox < Y.d.w; ox++) {
                        int s = tap(ix, ox, v, pad_w, dw, S);
                        if (s >= 0) cols[ix].emplace_back(ox, flip ? S - 1 - s : s);
                    }
                for (int n = 0; n < X.d.n; n++)
                    for (int iy = 0; iy < X.d.h; iy++)
                        for (int ix = 0; ix < X.d.w; ix++)
                            for (int c = lo; c < hi; c++) {
                                double acc_c = 0;
                                for (auto &ry : rows[iy])
                                    for (auto &sx : cols[ix]) {
                                        const double *yp = yrow(n, ry.first, sx.first);
                                        const double *wp = &wv[(((size_t)ry.second * S + sx.second) * C + c) * K];
                                        accum(acc_c, dot(yp, wp, K), algo);
                                    }
                                at(n, c, iy, ix) = acc_c;
                            }
            } else {
                std::vector<std::pair<size_t, size_t>> list; /* (y row, x row) offsets per output pixel */
                for (int r = 0; r < R; r++)
                    for (int s = 0; s < S; s++) {
                        list.clear();
                        for (int n = 0; n < Y.d.n; n++)
                            for (int oy = 0; oy < Y.d.h; oy++) {
                                int iy = oy * u - pad_h + r * dh;
                                if (iy < 0 || iy >= X.d.h) continue;
                                for (int ox = 0; ox < Y.d.w; ox++) {
                                    int ix = ox * v - pad_w + s * dw;
                                    if (ix < 0 || ix >= X.d.w) continue;
                                    list.emplace_back(yrow(n, oy, ox) - yv.data(), xrow(n, iy, ix) - xv.data());
                                }
                            }
                        for (int k = lo; k < hi; k++)
                            for (int c = 0; c < C; c++)
                                at(k, c, flip ? R - 1 - r : r, flip ? S - 1 - s : s) =
                                    pair_sum(yv.data() + k, xv.data() + c, list.data(), list.size(), algo);
                    }
            }
        };
        const int outer = out == OUT_X ? C : K;
        const double macs = (double)Y.numel() * C * R * S;
        const int nw = macs < (1 << 20) ? 1 : std::min(outer, workers());
        std::vector<std::thread> th;
        for (int i = 1; i < nw; i++) th.emplace_back(part, outer * i / nw, outer * (i + 1) / nw);
        part(0, outer / nw);
        for (auto &t : th) t.join();
        void *dst = (void *)(out == OUT_W ? w : out == OUT_X ? x : y);
        blend(dst, xd->dt, acc, a, b, offs);
        return cudaSuccess;
    });
}

} // namespace

extern "C" {

cudnnStatus_t cudnnFindConvolutionForwardAlgorithm(cudnnHandle_t h, const cudnnTensorDescriptor_t x,
                                                   const cudnnFilterDescriptor_t w,
                                                   const cudnnConvolutionDescriptor_t cd,
                                                   const cudnnTensorDescriptor_t y, const int requested,
                                                   int *returned, cudnnConvolutionFwdAlgoPerf_t *perf) {
    if (!h) return CUDNN_STATUS_BAD_PARAM;
    return offer<cudnnConvolutionFwdAlgoPerf_t, cudnnConvolutionFwdAlgo_t>("cudnnFindConvolutionForwardAlgorithm", x,
                                                                            w, cd, y, requested, returned, perf);
}

cudnnStatus_t cudnnGetConvolutionForwardAlgorithm_v7(cudnnHandle_t h, const cudnnTensorDescriptor_t x,
                                                     const cudnnFilterDescriptor_t w,
                                                     const cudnnConvolutionDescriptor_t cd,
                                                     const cudnnTensorDescriptor_t y, const int requested,
                                                     int *returned, cudnnConvolutionFwdAlgoPerf_t *perf) {
    return cudnnFindConvolutionForwardAlgorithm(h, x, w, cd, y, requested, returned, perf);
}

cudnnStatus_t cudnnFindConvolutionBackwardDataAlgorithm(cudnnHandle_t h, const cudnnFilterDescriptor_t w,
                                                        const cudnnTensorDescriptor_t dy,
                                                        const cudnnConvolutionDescriptor_t cd,
                                                        const cudnnTensorDescriptor_t dx, const int requested,
                                                        int *returned, cudnnConvolutionBwdDataAlgoPerf_t *perf) {
    if (!h) return CUDNN_STATUS_BAD_PARAM;
    return offer<cudnnConvolutionBwdDataAlgoPerf_t, cudnnConvolutionBwdDataAlgo_t>(
        "cudnnFindConvolutionBackwardDataAlgorithm", dx, w, cd, dy, requested, returned, perf);
}

cudnnStatus_t cudnnGetConvolutionBackwardDataAlgorithm_v7(cudnnHandle_t h, const cudnnFilterDescriptor_t w,
                                                          const cudnnTensorDescriptor_t dy,
                                                          const cudnnConvolutionDescriptor_t cd,
                                                          const cudnnTensorDescriptor_t dx, const int requested,
                                                          int *returned, cudnnConvolutionBwdDataAlgoPerf_t *perf) {
    return cudnnFindConvolutionBackwardDataAlgorithm(h, w, dy, cd, dx, requested, returned, perf);
}

cudnnStatus_t cudnnFindConvolutionBackwardFilterAlgorithm(cudnnHandle_t h, const cudnnTensorDescriptor_t x,
                                                          const cudnnTensorDescriptor_t dy,
                                                          const cudnnConvolutionDescriptor_t cd,
                                                          const cudnnFilterDescriptor_t dw, const int requested,
                                                          int *returned, cudnnConvolutionBwdFilterAlgoPerf_t *perf) {
    if (!h) return CUDNN_STATUS_BAD_PARAM;
    return offer<cudnnConvolutionBwdFilterAlgoPerf_t, cudnnConvolutionBwdFilterAlgo_t>(
        "cudnnFindConvolutionBackwardFilterAlgorithm", x, dw, cd, dy, requested, returned, perf);
}

cudnnStatus_t cudnnGetConvolutionBackwardFilterAlgorithm_v7(cudnnHandle_t h, const cudnnTensorDescriptor_t x,
                                                            const cudnnTensorDescriptor_t dy,
                                                            const cudnnConvolutionDescriptor_t cd,
                                                            const cudnnFilterDescriptor_t dw, const int requested,
                                                            int *returned,
                                                            cudnnConvolutionBwdFilterAlgoPerf_t *perf) {
    return cudnnFindConvolutionBackwardFilterAlgorithm(h, x, dy, cd, dw, requested, returned, perf);
}

cudnnStatus_t cudnnGetConvolutionForwardWorkspaceSize(cudnnHandle_t h, const cudnnTensorDescriptor_t x,
                                                      const cudnnFilterDescriptor_t w,
                                                      const cudnnConvolutionDescriptor_t cd,
                                                      const cudnnTensorDescriptor_t y, cudnnConvolutionFwdAlgo_t algo,
                                                      size_t *bytes) {
    return ws_size("cudnnGetConvolutionForwardWorkspaceSize", h, x, w, cd, y, (int)algo, bytes);
}

cudnnStatus_t cudnnGetConvolutionBackwardDataWorkspaceSize(cudnnHandle_t h, const cudnnFilterDescriptor_t w,
                                                           const cudnnTensorDescriptor_t dy,
                                                           const cudnnConvolutionDescriptor_t cd,
                                                           const cudnnTensorDescriptor_t dx,
                                                           cudnnConvolutionBwdDataAlgo_t algo, size_t *bytes) {
    return ws_size("cudnnGetConvolutionBackwardDataWorkspaceSize", h, dx, w, cd, dy, (int)algo, bytes);
}

cudnnStatus_t cudnnGetConvolutionBackwardFilterWorkspaceSize(cudnnHandle_t h, const cudnnTensorDescriptor_t x,
                                                             const cudnnTensorDescriptor_t dy,
                                                             const cudnnConvolutionDescriptor_t cd,
                                                             const cudnnFilterDescriptor_t dw,
                                                             cudnnConvolutionBwdFilterAlgo_t algo, size_t *bytes) {
    return ws_size("cudnnGetConvolutionBackwardFilterWorkspaceSize", h, x, dw, cd, dy, (int)algo, bytes);
}

cudnnStatus_t cudnnConvolutionForward(cudnnHandle_t h, const void *alpha, const cudnnTensorDescriptor_t xd,
                                      const void *x, const cudnnFilterDescriptor_t wd, const void *w,
                                      const cudnnConvolutionDescriptor_t cdp, cudnnConvolutionFwdAlgo_t algo,
                                      void *ws, size_t ws_bytes, const void *beta, const cudnnTensorDescriptor_t yd,
                                      void *y) {
    return conv_call("cudnnConvolutionForward", OUT_Y, h, xd, x, wd, w, cdp, yd, y, (int)algo, ws, ws_bytes, alpha,
                     beta);
}

cudnnStatus_t cudnnConvolutionBackwardData(cudnnHandle_t h, const void *alpha, const cudnnFilterDescriptor_t wd,
                                           const void *w, const cudnnTensorDescriptor_t dyd, const void *dy,
                                           const cudnnConvolutionDescriptor_t cdp, cudnnConvolutionBwdDataAlgo_t algo,
                                           void *ws, size_t ws_bytes, const void *beta,
                                           const cudnnTensorDescriptor_t dxd, void *dx) {
    return conv_call("cudnnConvolutionBackwardData", OUT_X, h, dxd, dx, wd, w, cdp, dyd, dy, (int)algo, ws, ws_bytes,
                     alpha, beta);
}

cudnnStatus_t cudnnConvolutionBackwardFilter(cudnnHandle_t h, const void *alpha, const cudnnTensorDescriptor_t xd,
                                             const void *x, const cudnnTensorDescriptor_t dyd, const void *dy,
                                             const cudnnConvolutionDescriptor_t cdp,
                                             cudnnConvolutionBwdFilterAlgo_t algo, void *ws, size_t ws_bytes,
                                             const void *beta, const cudnnFilterDescriptor_t dwd, void *dw) {
    return conv_call("cudnnConvolutionBackwardFilter", OUT_W, h, xd, x, dwd, dw, cdp, dyd, dy, (int)algo, ws, ws_bytes,
                     alpha, beta);
}

} /* extern "C" */
