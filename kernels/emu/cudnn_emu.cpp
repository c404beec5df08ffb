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
 * Threading: descriptors and handles as in cuDNN (one thread at a time per handle). */
#include "cuemu.h"
#include "cuemu_internal.h"

#include <cudnn.h>

#include <cstdlib>
#include <cstring>
#include <initializer_list>
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

/* For each (output pixel, filter tap) pair that touches the input: f(n, oy, ox, iy, ix, r, s). */
template <typename F> void taps(const cudnnTensorStruct &x, const cudnnFilterStruct &f, const cudnnConvolutionStruct &cd,
                                const cudnnTensorStruct &y, F fn) {
    for (int n = 0; n < y.n; n++)
        for (int oy = 0; oy < y.h; oy++)
            for (int ox = 0; ox < y.w; ox++)
                for (int r = 0; r < f.r; r++) {
                    int iy = oy * cd.u - cd.pad_h + r * cd.dil_h;
                    if (iy < 0 || iy >= x.h) continue;
                    for (int s = 0; s < f.s; s++) {
                        int ix = ox * cd.v - cd.pad_w + s * cd.dil_w;
                        if (ix < 0 || ix >= x.w) continue;
                        /* convolution mode flips the filter; cross-correlation does not */
                        int fr = cd.mode == CUDNN_CONVOLUTION ? f.r - 1 - r : r;
                        int fs = cd.mode == CUDNN_CONVOLUTION ? f.s - 1 - s : s;
                        fn(n, oy, ox, iy, ix, fr, fs);
                    }
                }
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
    const char *fn = "cudnnConvolutionForward";
    cudnnStatus_t st = check_problem(fn, xd, wd, cdp, yd);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    t4 X{*xd}, Y{*yd};
    f4 W{*wd};
    size_t es = dt_size(xd->dt), need = ws_need((int)algo, wd->k, yd->h, yd->w);
    if ((st = check_ws(fn, (int)algo, need, ws, ws_bytes)) || (st = check_mem(fn, "x", x, X.numel() * es)) ||
        (st = check_mem(fn, "w", w, W.numel() * es)) || (st = check_mem(fn, "y", y, Y.numel() * es)))
        return st;
    if (!alpha || !beta) return CUDNN_STATUS_BAD_PARAM;
    double a = scalar(alpha), b = scalar(beta);
    cudnnConvolutionStruct cd = *cdp;
    return submit(h, fn, [=]() {
        cudaError_t live = still_live(fn, {{ws, need}, {x, X.numel() * es}, {w, W.numel() * es}, {y, Y.numel() * es}});
        if (live != cudaSuccess) return live;
        std::vector<double> acc(Y.numel(), 0.0);
        std::vector<size_t> offs(Y.numel());
        size_t i = 0;
        for (int n = 0; n < Y.d.n; n++)
            for (int k = 0; k < Y.d.c; k++)
                for (int oy = 0; oy < Y.d.h; oy++)
                    for (int ox = 0; ox < Y.d.w; ox++) offs[i++] = Y.off(n, k, oy, ox);
        taps(X.d, W.d, cd, Y.d, [&](int n, int oy, int ox, int iy, int ix, int r, int s) {
            for (int k = 0; k < W.d.k; k++) {
                double t = 0;
                for (int c = 0; c < W.d.c; c++) t += load(x, X.d.dt, X.off(n, c, iy, ix)) * load(w, W.d.dt, W.off(k, c, r, s));
                accum(acc[(((size_t)n * Y.d.c + k) * Y.d.h + oy) * Y.d.w + ox], t, (int)algo);
            }
        });
        blend(y, Y.d.dt, acc, a, b, offs);
        return cudaSuccess;
    });
}

cudnnStatus_t cudnnConvolutionBackwardData(cudnnHandle_t h, const void *alpha, const cudnnFilterDescriptor_t wd,
                                           const void *w, const cudnnTensorDescriptor_t dyd, const void *dy,
                                           const cudnnConvolutionDescriptor_t cdp, cudnnConvolutionBwdDataAlgo_t algo,
                                           void *ws, size_t ws_bytes, const void *beta,
                                           const cudnnTensorDescriptor_t dxd, void *dx) {
    const char *fn = "cudnnConvolutionBackwardData";
    cudnnStatus_t st = check_problem(fn, dxd, wd, cdp, dyd);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    t4 DX{*dxd}, DY{*dyd};
    f4 W{*wd};
    size_t es = dt_size(dxd->dt), need = ws_need((int)algo, wd->k, dyd->h, dyd->w);
    if ((st = check_ws(fn, (int)algo, need, ws, ws_bytes)) || (st = check_mem(fn, "dx", dx, DX.numel() * es)) ||
        (st = check_mem(fn, "w", w, W.numel() * es)) || (st = check_mem(fn, "dy", dy, DY.numel() * es)))
        return st;
    if (!alpha || !beta) return CUDNN_STATUS_BAD_PARAM;
    double a = scalar(alpha), b = scalar(beta);
    cudnnConvolutionStruct cd = *cdp;
    return submit(h, fn, [=]() {
        cudaError_t live =
            still_live(fn, {{ws, need}, {dx, DX.numel() * es}, {w, W.numel() * es}, {dy, DY.numel() * es}});
        if (live != cudaSuccess) return live;
        std::vector<double> acc(DX.numel(), 0.0);
        std::vector<size_t> offs(DX.numel());
        size_t i = 0;
        for (int n = 0; n < DX.d.n; n++)
            for (int c = 0; c < DX.d.c; c++)
                for (int y0 = 0; y0 < DX.d.h; y0++)
                    for (int x0 = 0; x0 < DX.d.w; x0++) offs[i++] = DX.off(n, c, y0, x0);
        taps(DX.d, W.d, cd, DY.d, [&](int n, int oy, int ox, int iy, int ix, int r, int s) {
            for (int c = 0; c < W.d.c; c++) {
                double t = 0;
                for (int k = 0; k < W.d.k; k++)
                    t += load(dy, DY.d.dt, DY.off(n, k, oy, ox)) * load(w, W.d.dt, W.off(k, c, r, s));
                accum(acc[(((size_t)n * DX.d.c + c) * DX.d.h + iy) * DX.d.w + ix], t, (int)algo);
            }
        });
        blend(dx, DX.d.dt, acc, a, b, offs);
        return cudaSuccess;
    });
}

cudnnStatus_t cudnnConvolutionBackwardFilter(cudnnHandle_t h, const void *alpha, const cudnnTensorDescriptor_t xd,
                                             const void *x, const cudnnTensorDescriptor_t dyd, const void *dy,
                                             const cudnnConvolutionDescriptor_t cdp,
                                             cudnnConvolutionBwdFilterAlgo_t algo, void *ws, size_t ws_bytes,
                                             const void *beta, const cudnnFilterDescriptor_t dwd, void *dw) {
    const char *fn = "cudnnConvolutionBackwardFilter";
    cudnnStatus_t st = check_problem(fn, xd, dwd, cdp, dyd);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    t4 X{*xd}, DY{*dyd};
    f4 DW{*dwd};
    size_t es = dt_size(xd->dt), need = ws_need((int)algo, dwd->k, dyd->h, dyd->w);
    if ((st = check_ws(fn, (int)algo, need, ws, ws_bytes)) || (st = check_mem(fn, "x", x, X.numel() * es)) ||
        (st = check_mem(fn, "dy", dy, DY.numel() * es)) || (st = check_mem(fn, "dw", dw, DW.numel() * es)))
        return st;
    if (!alpha || !beta) return CUDNN_STATUS_BAD_PARAM;
    double a = scalar(alpha), b = scalar(beta);
    cudnnConvolutionStruct cd = *cdp;
    return submit(h, fn, [=]() {
        cudaError_t live =
            still_live(fn, {{ws, need}, {x, X.numel() * es}, {dy, DY.numel() * es}, {dw, DW.numel() * es}});
        if (live != cudaSuccess) return live;
        std::vector<double> acc(DW.numel(), 0.0);
        std::vector<size_t> offs(DW.numel());
        size_t i = 0;
        for (int k = 0; k < DW.d.k; k++)
            for (int c = 0; c < DW.d.c; c++)
                for (int r = 0; r < DW.d.r; r++)
                    for (int s = 0; s < DW.d.s; s++) offs[i++] = DW.off(k, c, r, s);
        taps(X.d, DW.d, cd, DY.d, [&](int n, int oy, int ox, int iy, int ix, int r, int s) {
            for (int k = 0; k < DW.d.k; k++) {
                double g = load(dy, DY.d.dt, DY.off(n, k, oy, ox));
                for (int c = 0; c < DW.d.c; c++)
                    accum(acc[(((size_t)k * DW.d.c + c) * DW.d.r + r) * DW.d.s + s], g * load(x, X.d.dt, X.off(n, c, iy, ix)),
                          (int)algo);
            }
        });
        blend(dw, DW.d.dt, acc, a, b, offs);
        return cudaSuccess;
    });
}

} /* extern "C" */
