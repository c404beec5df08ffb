/* backend_cuda.c: the `cuda` backend's instance and memory: device selection, the stream, the
 * scratch buffers, tensor alloc/free/write/read/zero, weight copies in another dtype, error
 * conversion (incl. sticky errors and the health() slot) and cz_backend_cuda_create. The ops
 * are in backend_cuda_ops.c, every cuDNN call in cudnn_ops.c, the kernels in *.cu.
 *
 * Choices (see cuda_impl.h and backend.h, the contract):
 * - Storage: every tensor is NHWC in device memory in its own dtype (fp32, bf16, fp16), batch
 *   outermost, so batch views are prefixes. Conv weights (out, in, kh, kw) are therefore kept
 *   (out, kh, kw, in) and transposed-conv weights (in, out, kh, kw) as (in, kh, kw, out): both
 *   are cuDNN's NHWC filter format for the convolution cuDNN runs. New tensors are zeroed.
 * - Host transfers: tensor_write copies the plain NCHW fp32 host data into a device staging
 *   buffer and converts it there (layout + dtype); tensor_read does the reverse and waits for
 *   the copy. Both are synchronous for the host buffer. write_async/read_async do the same on
 *   copy streams of their own, overlapped with compute (backend_cuda_xfer.c); sync waits for
 *   all three streams.
 * - Weight copies: a conv weight whose dtype differs from the activations' is converted once
 *   into a copy kept beside the buffer and rebuilt when the buffer's generation changed (every
 *   write through the backend bumps it: tensor_write/zero, and any op output).
 * - Channel views (the decoders' concat-free skips): view_ok accepts any channel range (unless
 *   COLORIZE_CUDA_VIEWS=0). A conv/deconv whose output is a view runs cuDNN into a packed
 *   temporary and its epilogue (bias + activation) writes the view; act_fwd reads and writes
 *   views directly. cuDNN itself only ever sees packed NHWC tensors. Every other op, and
 *   tensor_read/write/zero, refuses views with CZ_ERR_UNSUPPORTED.
 * - No GPU (or a GPU this build has no code for, found by running a probe kernel, or no
 *   cuDNN): create returns CZ_ERR_UNAVAILABLE with the reason, so `auto` falls through to dnnl
 *   and tests print a skip line. bf16 tensors need sm_80 or newer (supports() says so).
 * - Sticky errors (illegal address, launch failure, ...): the first one is remembered; every
 *   later op and health() fail with CZ_ERR_BACKEND naming it. The owner must then destroy the
 *   instance (and, in the daemon, exit so that a supervisor restarts it).
 * Environment: COLORIZE_CUDA_DEVICE (index, default 0), COLORIZE_CUDA_TF32=1,
 * COLORIZE_CUDA_NAIVE=1, COLORIZE_CUDA_ALGO=heuristic, COLORIZE_CUDA_NONDET=1 (cudnn_ops.c),
 * COLORIZE_CUDA_WS_MB (workspace cap, default 1024), COLORIZE_CUDA_GRAPHS=0 (no recordings: the
 * model runs its ops one by one),
 * COLORIZE_CUDA_VIEWS=0 (no channel views: the model uses concat).
 * Threading: one thread at a time per instance; the device is re-selected on entry to every
 * op, so the instance may move between threads. Tested by tests/unit/test_ops.c (parity with
 * ref, run by tests/gpu/check.sh on a GPU; skipped with a message where there is none). */
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_impl.h"
#include "log.h"

/* ------------------------------------------------------------------------------ errors */

static int is_sticky(cudaError_t e) {
    switch (e) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorHardwareStackError:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorECCUncorrectable:
    case cudaErrorLaunchTimeout:
    case cudaErrorAssert:
    case cudaErrorContextIsDestroyed:
    case cudaErrorDevicesUnavailable:
    case cudaErrorTensorMemoryLeak:     /* driver_types.h: the process must be relaunched */
    case cudaErrorMpsClientTerminated:  /* likewise */
    case cudaErrorUnknown: return 1;
    default: return 0;
    }
}

cz_status cu_fail(cu_backend *b, cudaError_t e, const char *file, int line, const char *expr) {
    const char *base = strrchr(file, '/');
    base = base ? base + 1 : file;
    const char *msg = cudaGetErrorString(e);
    if (b && is_sticky(e) && !b->sticky) {
        b->sticky = 1;
        snprintf(b->sticky_msg, sizeof b->sticky_msg, "%s:%d: %s: %s (%d)", base, line, expr, msg, (int)e);
    }
    cz_status code = e == cudaErrorMemoryAllocation ? CZ_ERR_NOMEM : CZ_ERR_BACKEND;
    CZ_LOGE("cuda", "%s:%d: %s failed: %s (%d)%s", base, line, expr, msg, (int)e,
            b && b->sticky ? " [sticky: the CUDA context is unusable]" : "");
    /* a failed call also leaves its error in the runtime's last-error slot, which our launch
     * checks read: clear it (an out-of-memory included, or the batcher's retry of a smaller
     * batch would fail on it at its first launch); sticky errors stay whatever we do */
    if (!is_sticky(e)) (void)cudaGetLastError();
    return cz_error_set(code, "%s:%d: %s failed: %s (%d)", base, line, expr, msg, (int)e);
}

cz_status cu_enter(cu_backend *b) {
    if (b->sticky)
        return cz_error_set(CZ_ERR_BACKEND, "cuda: the device had a sticky error earlier (%s)", b->sticky_msg);
    CU_CHECK(b, cudaSetDevice(b->device));
    /* Each op checks its launches with cudaGetLastError, which also returns anything an earlier
     * call left behind. Drain that here so that an op reports its own errors only; a sticky one
     * (an earlier kernel's fault surfacing now) still stops this op. */
    cudaError_t e = cudaGetLastError();
    if (is_sticky(e)) return cu_fail(b, e, __FILE__, __LINE__, "an earlier asynchronous error");
    return CZ_OK;
}

/* ----------------------------------------------------------------------------- scratch */

cz_status cu_recording_guard(const cu_backend *b, const char *what) {
    if (!b->recording) return CZ_OK;
    return cz_error_set(CZ_ERR_UNSUPPORTED, "cuda: %s cannot be part of a recording (CUDA graph)", what);
}

cz_status cu_scratch_resize(cu_backend *b, cu_scratch *s, size_t bytes) {
    if (s->p) CU_CHECK(b, cudaFree(s->p));
    s->p = NULL;
    s->bytes = 0;
    CU_CHECK(b, cudaMalloc(&s->p, bytes));
    s->bytes = bytes;
    return CZ_OK;
}

cz_status cu_scratch_get(cu_backend *b, cu_scratch *s, size_t bytes, void **out) {
    if (bytes == 0) bytes = 1;
    if (s->bytes < bytes) {
        /* a graph keeps the old pointer: growing is refused while recording (the caller runs
         * the sequence once unrecorded first) and makes older recordings stale */
        CZ_TRY(cu_recording_guard(b, "growing a scratch buffer"));
        b->epoch++;
        CZ_TRY(cu_scratch_resize(b, s, bytes + bytes / 4)); /* headroom against growth in small steps */
    }
    *out = s->p;
    return CZ_OK;
}

static void scratch_free(cu_scratch *s) {
    if (s->p) cudaFree(s->p);
    s->p = NULL;
    s->bytes = 0;
}

/* -------------------------------------------------------------------------- validation */

typedef struct {
    char s[64];
} shape_str;

static shape_str tshape(const cz_tensor *t) {
    shape_str r;
    snprintf(r.s, sizeof r.s, "[%d,%d,%d,%d]", t->n, t->c, t->h, t->w);
    return r;
}

static cz_status check_common(const char *op, const char *name, const cz_tensor *t, int view_allowed) {
    if (!t) return cz_error_set(CZ_ERR_INVALID_ARG, "cuda %s: %s is NULL", op, name);
    if (!t->data) return cz_error_set(CZ_ERR_INVALID_ARG, "cuda %s: %s is not allocated", op, name);
    if (t->layout != CU_LAYOUT_NHWC)
        return cz_error_set(CZ_ERR_UNSUPPORTED, "cuda %s: %s has layout %d, not allocated by the cuda backend", op,
                            name, t->layout);
    if (cu_buf_of(t)->magic != CU_MAGIC)
        return cz_error_set(CZ_ERR_INVALID_ARG, "cuda %s: %s was not allocated by this backend", op, name);
    if (t->dtype != CZ_F32 && t->dtype != CZ_BF16 && t->dtype != CZ_F16)
        return cz_error_set(CZ_ERR_UNSUPPORTED, "cuda %s: %s has unknown dtype %d", op, name, (int)t->dtype);
    if (t->n < 1 || t->c < 1 || t->h < 1 || t->w < 1)
        return cz_error_set(CZ_ERR_SHAPE, "cuda %s: %s is %s, every dim must be positive", op, name, tshape(t).s);
    if (t->n > t->cap_n)
        return cz_error_set(CZ_ERR_SHAPE, "cuda %s: %s is a batch view of %d but was allocated for %d", op, name,
                            t->n, t->cap_n);
    if (cz_tensor_is_view(t)) {
        if (!view_allowed)
            return cz_error_set(CZ_ERR_UNSUPPORTED, "cuda %s: %s is a channel view (channels %d..%d of %d); %s takes "
                                                    "none there (backend.h: views are for conv/deconv outputs and "
                                                    "act_fwd)",
                                op, name, t->c_off, t->c_off + t->c - 1, t->c_store, op);
        if (t->c_off < 0 || t->c_off + t->c > t->c_store)
            return cz_error_set(CZ_ERR_SHAPE, "cuda %s: %s is a view of channels %d..%d of a %d-channel buffer", op,
                                name, t->c_off, t->c_off + t->c - 1, t->c_store);
    }
    size_t need = (size_t)t->n * t->h * t->w * (size_t)cu_ch_stride(t) * cz_dtype_size(t->dtype);
    if (need > cu_buf_of(t)->bytes)
        return cz_error_set(CZ_ERR_SHAPE, "cuda %s: %s is %s, larger than its storage", op, name, tshape(t).s);
    return CZ_OK;
}

cz_status cu_check(const char *op, const char *name, const cz_tensor *t) { return check_common(op, name, t, 0); }

cz_status cu_check_view(const char *op, const char *name, const cz_tensor *t) {
    return check_common(op, name, t, 1);
}

cz_status cu_check_opt(const char *op, const char *name, const cz_tensor *t) {
    return t ? cu_check(op, name, t) : CZ_OK;
}

cz_status cu_expect_shape(const char *op, const char *name, const cz_tensor *t, int n, int c, int h, int w) {
    if (t->n != n || t->c != c || t->h != h || t->w != w)
        return cz_error_set(CZ_ERR_SHAPE, "cuda %s: %s is %s, expected [%d,%d,%d,%d]", op, name, tshape(t).s, n, c, h,
                            w);
    return CZ_OK;
}

cz_status cu_expect_same(const char *op, const char *name, const cz_tensor *t, const cz_tensor *like) {
    return cu_expect_shape(op, name, t, like->n, like->c, like->h, like->w);
}

cz_status cu_expect_vec(const char *op, const char *name, const cz_tensor *t, int c) {
    return t ? cu_expect_shape(op, name, t, 1, c, 1, 1) : CZ_OK;
}

/* ----------------------------------------------------------------------------- memory */

static int cu_supports(cz_backend *be, cz_dtype dt) {
    const cu_backend *b = (const cu_backend *)be;
    if (dt == CZ_BF16) return b->cc_major >= 8; /* bf16 arithmetic and tensor cores: Ampere on */
    return dt == CZ_F32 || dt == CZ_F16;
}

static cz_status cu_tensor_alloc(cz_backend *be, cz_tensor *t) {
    cu_backend *b = (cu_backend *)be;
    if (!t) return cz_error_set(CZ_ERR_INVALID_ARG, "cuda tensor_alloc: tensor is NULL");
    CZ_TRY(cu_enter(b));
    CZ_TRY(cu_recording_guard(b, "tensor_alloc"));
    if (!cu_supports(be, t->dtype))
        return cz_error_set(CZ_ERR_UNSUPPORTED, "cuda tensor_alloc: dtype %d is not supported", (int)t->dtype);
    if (t->n < 1 || t->c < 1 || t->h < 1 || t->w < 1)
        return cz_error_set(CZ_ERR_INVALID_ARG, "cuda tensor_alloc: shape %s has a non-positive dim", tshape(t).s);
    size_t numel = 1;
    const int dims[4] = {t->n, t->c, t->h, t->w};
    for (int i = 0; i < 4; i++) {
        if (numel > ((size_t)1 << 40) / (size_t)dims[i])
            return cz_error_set(CZ_ERR_TOO_LARGE, "cuda tensor_alloc: shape %s is too large", tshape(t).s);
        numel *= (size_t)dims[i];
    }
    cu_buf *buf = calloc(1, sizeof *buf);
    if (!buf) return cz_error_set(CZ_ERR_NOMEM, "cuda tensor_alloc: cannot allocate a header");
    buf->bytes = numel * cz_dtype_size(t->dtype);
    cudaError_t e = cudaMalloc(&buf->dev, buf->bytes);
    if (e != cudaSuccess) {
        free(buf);
        if (e == cudaErrorMemoryAllocation) {
            (void)cudaGetLastError();
            return cz_error_set(CZ_ERR_NOMEM, "cuda tensor_alloc: out of device memory for %s %s (%zu bytes)",
                                cz_dtype_name(t->dtype), tshape(t).s, numel * cz_dtype_size(t->dtype));
        }
        return cu_fail(b, e, __FILE__, __LINE__, "cudaMalloc");
    }
    e = cudaMemsetAsync(buf->dev, 0, buf->bytes, b->stream);
    if (e != cudaSuccess) {
        cudaFree(buf->dev);
        free(buf);
        return cu_fail(b, e, __FILE__, __LINE__, "cudaMemsetAsync");
    }
    buf->magic = CU_MAGIC;
    buf->id = ++b->next_id;
    t->data = buf;
    t->layout = CU_LAYOUT_NHWC;
    t->cap_n = t->n;
    return CZ_OK;
}

static void cu_tensor_free(cz_backend *be, cz_tensor *t) {
    cu_backend *b = (cu_backend *)be;
    if (!t || !t->data) return;
    if (cz_tensor_is_view(t) || t->layout != CU_LAYOUT_NHWC) return; /* a view owns nothing */
    cu_buf *buf = cu_buf_of(t);
    if (buf->magic != CU_MAGIC) return;
    (void)cudaSetDevice(b->device);
    if (buf->dev) cudaFree(buf->dev);
    if (buf->conv_dev) cudaFree(buf->conv_dev);
    buf->magic = 0;
    free(buf);
    t->data = NULL;
}

static cz_status cu_tensor_write(cz_backend *be, cz_tensor *t, const float *src) {
    cu_backend *b = (cu_backend *)be;
    CZ_TRY(cu_enter(b));
    CZ_TRY(cu_recording_guard(b, "tensor_write"));
    CZ_TRY(cu_check("tensor_write", "t", t));
    if (!src) return cz_error_set(CZ_ERR_INVALID_ARG, "cuda tensor_write: src is NULL");
    if (cu_buf_of(t)->conv_dev) b->epoch++; /* a graph may use the converted copy without rebuilding it */
    size_t n = cz_tensor_numel(t);
    void *stage;
    CZ_TRY(cu_scratch_get(b, &b->tmp, n * sizeof(float), &stage));
    cu_prof_mark(b, "copy host->device");
    CU_CHECK(b, cudaMemcpyAsync(stage, src, n * sizeof(float), cudaMemcpyHostToDevice, b->stream));
    /* The caller may reuse src when this returns. From page-locked memory (host_alloc) the copy
     * above is still queued, so wait for it (write_async is the call that does not wait). */
    CU_SYNC(b);
    CUK_CHECK(b, cuk_nchw_f32_to_nhwc(stage, cu_dev(t), t->dtype, t->n, t->c, t->h, t->w, b->stream));
    cu_touch(t);
    return CZ_OK;
}

static cz_status cu_tensor_read(cz_backend *be, const cz_tensor *t, float *dst) {
    cu_backend *b = (cu_backend *)be;
    CZ_TRY(cu_enter(b));
    CZ_TRY(cu_recording_guard(b, "tensor_read"));
    CZ_TRY(cu_check("tensor_read", "t", t));
    if (!dst) return cz_error_set(CZ_ERR_INVALID_ARG, "cuda tensor_read: dst is NULL");
    size_t n = cz_tensor_numel(t);
    void *stage;
    CZ_TRY(cu_scratch_get(b, &b->tmp, n * sizeof(float), &stage));
    CUK_CHECK(b, cuk_nhwc_to_nchw_f32(cu_dev(t), t->dtype, stage, t->n, t->c, t->h, t->w, b->stream));
    cu_prof_mark(b, "copy device->host");
    CU_CHECK(b, cudaMemcpyAsync(dst, stage, n * sizeof(float), cudaMemcpyDeviceToHost, b->stream));
    CU_SYNC(b);
    return CZ_OK;
}

static cz_status cu_tensor_zero(cz_backend *be, cz_tensor *t) {
    cu_backend *b = (cu_backend *)be;
    CZ_TRY(cu_enter(b));
    CZ_TRY(cu_check("tensor_zero", "t", t));
    if (cu_buf_of(t)->conv_dev) b->epoch++;
    cu_prof_mark(b, "memset (tensor_zero)");
    CU_CHECK(b, cudaMemsetAsync(cu_dev(t), 0, cz_tensor_numel(t) * cz_dtype_size(t->dtype), b->stream));
    cu_touch(t);
    return CZ_OK;
}

static cz_status cu_sync(cz_backend *be) {
    cu_backend *b = (cu_backend *)be;
    CZ_TRY(cu_enter(b));
    CZ_TRY(cu_recording_guard(b, "sync"));
    CU_SYNC(b);
    return cu_xfer_sync(b);
}

static int cu_view_ok(cz_backend *be, const cz_tensor *t, int c0, int nc) {
    const cu_backend *b = (const cu_backend *)be;
    return !b->no_views && t && c0 >= 0 && nc >= 1 && c0 + nc <= t->c;
}

static cz_status cu_health(cz_backend *be) {
    cu_backend *b = (cu_backend *)be;
    CZ_TRY(cu_enter(b));
    if (b->recording) return CZ_OK; /* querying a stream under capture would invalidate the capture */
    cudaError_t e = cudaStreamQuery(b->stream);
    if (e == cudaErrorNotReady) {
        (void)cudaGetLastError(); /* busy is healthy, and must not fail the next launch check */
        return CZ_OK;
    }
    if (e != cudaSuccess) return cu_fail(b, e, __FILE__, __LINE__, "cudaStreamQuery");
    return CZ_OK;
}

cz_status cu_weight_as(cu_backend *b, const cz_tensor *w, cz_dtype dt, const void **out) {
    cu_buf *buf = cu_buf_of(w);
    if (w->dtype == dt) {
        *out = buf->dev;
        return CZ_OK;
    }
    size_t count = cz_tensor_numel(w), need = count * cz_dtype_size(dt);
    if (!buf->conv_dev || buf->conv_dtype != (int)dt || buf->conv_gen != buf->gen ||
        buf->conv_epoch != b->conv_epoch) {
        /* under capture the cast is recorded (conv_epoch in cuda_impl.h) */
        if (buf->conv_bytes < need) {
            CZ_TRY(cu_recording_guard(b, "allocating a converted weight copy"));
            b->epoch++;
            if (buf->conv_dev) CU_CHECK(b, cudaFree(buf->conv_dev));
            buf->conv_dev = NULL;
            buf->conv_bytes = 0;
            CU_CHECK(b, cudaMalloc(&buf->conv_dev, need));
            buf->conv_bytes = need;
        }
        CUK_CHECK(b, cuk_cast(buf->dev, w->dtype, buf->conv_dev, dt, count, b->stream));
        buf->conv_dtype = (int)dt;
        buf->conv_gen = buf->gen;
        buf->conv_epoch = b->conv_epoch;
    }
    *out = buf->conv_dev;
    return CZ_OK;
}

/* ----------------------------------------------------------------------------- instance */

static void cu_destroy(cz_backend *be) {
    cu_backend *b = (cu_backend *)be;
    if (!b) return;
    (void)cudaSetDevice(b->device);
    if (!b->sticky && b->stream) (void)cudaStreamSynchronize(b->stream);
    if (!b->sticky) (void)cu_xfer_sync(b);
    cu_prof_finish(b);
    cu_xfer_destroy(b);
    cdn_destroy(b);
    scratch_free(&b->ws);
    scratch_free(&b->tmp);
    scratch_free(&b->tmp2);
    scratch_free(&b->red);
    if (b->loss_dev) cudaFree(b->loss_dev);
    if (b->stream) cudaStreamDestroy(b->stream);
    free(b);
}

static cz_backend_ops g_cu_ops;

#ifndef CZ_CUDA_ARCHS
#define CZ_CUDA_ARCHS "?"
#endif

/* Whether this build's kernels run on the device (a GPU generation the build has neither
 * machine code nor PTX for refuses the launch): a one-thread kernel, checked to the end. */
static cz_status probe_device(cu_backend *b, const struct cudaDeviceProp *prop) {
    int *flag = NULL, got = 0;
    cudaError_t e = cudaMalloc((void **)&flag, sizeof *flag);
    if (e == cudaSuccess) e = cudaMemsetAsync(flag, 0, sizeof *flag, b->stream);
    if (e == cudaSuccess) e = (cudaError_t)cuk_probe(flag, b->stream);
    if (e == cudaSuccess) e = cudaMemcpyAsync(&got, flag, sizeof got, cudaMemcpyDeviceToHost, b->stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(b->stream);
    if (flag) (void)cudaFree(flag);
    if (e == cudaSuccess && got == 1) return CZ_OK;
    (void)cudaGetLastError();
    return cz_error_set(CZ_ERR_UNAVAILABLE,
                        "CUDA device %d (%s, sm_%d%d) cannot run this build's kernels (built for CUDA architectures "
                        "%s): %s",
                        b->device, prop->name, prop->major, prop->minor, CZ_CUDA_ARCHS,
                        e == cudaSuccess ? "the probe kernel did not run" : cudaGetErrorString(e));
}

static int env_flag(const char *name) {
    const char *v = getenv(name);
    return v && *v && strcmp(v, "0") != 0;
}

cz_status cz_backend_cuda_create(const cz_backend_options *opt, cz_backend **out) {
    (void)opt;
    if (!out) return cz_error_set(CZ_ERR_INVALID_ARG, "cuda: out is NULL");
    *out = NULL;
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return cz_error_set(CZ_ERR_UNAVAILABLE, "no CUDA device: %s", cudaGetErrorString(e));
    }
    if (count < 1) return cz_error_set(CZ_ERR_UNAVAILABLE, "no CUDA device: none found");
    int dev = 0;
    const char *ds = getenv("COLORIZE_CUDA_DEVICE");
    if (ds && *ds) {
        char *end;
        long v = strtol(ds, &end, 10);
        if (*end || v < 0 || v >= count)
            return cz_error_set(CZ_ERR_CONFIG, "COLORIZE_CUDA_DEVICE=%s: expected 0..%d", ds, count - 1);
        dev = (int)v;
    }
    struct cudaDeviceProp prop;
    e = cudaGetDeviceProperties(&prop, dev);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return cz_error_set(CZ_ERR_UNAVAILABLE, "no CUDA device: %s", cudaGetErrorString(e));
    }
    cu_backend *b = calloc(1, sizeof *b);
    if (!b) return cz_error_set(CZ_ERR_NOMEM, "cuda: cannot allocate the backend");
    b->base.ops = &g_cu_ops;
    b->base.threads = 1;
    b->device = dev;
    b->cc_major = prop.major;
    snprintf(b->device_name, sizeof b->device_name, "%s", prop.name);
    b->allow_tf32 = env_flag("COLORIZE_CUDA_TF32");
    b->force_naive = env_flag("COLORIZE_CUDA_NAIVE");
    const char *gv = getenv("COLORIZE_CUDA_GRAPHS");
    b->no_graphs = gv && !strcmp(gv, "0");
    gv = getenv("COLORIZE_CUDA_VIEWS");
    b->no_views = gv && !strcmp(gv, "0");
    /* conv_thin.cu: the conv kernel by default; the transposed one only when asked for (its first
     * version made the forward pass slower than cuDNN on an H200, tests/gpu/README.md; its
     * rewrite has not been timed yet) */
    gv = getenv("COLORIZE_CUDA_THIN");
    b->thin = b->force_naive || (gv && !strcmp(gv, "0")) ? 0 : gv && !strcmp(gv, "all") ? 3 : 1;
    long ws_mb = 1024;
    const char *wm = getenv("COLORIZE_CUDA_WS_MB");
    if (wm && *wm) ws_mb = strtol(wm, NULL, 10);
    if (ws_mb < 0) ws_mb = 0;
    b->ws_limit = (size_t)ws_mb << 20;
    if (!g_cu_ops.name) cu_fill_ops(&g_cu_ops);
    cz_status s = CZ_OK;
    e = cudaSetDevice(dev);
    if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&b->stream, cudaStreamNonBlocking);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        s = cz_error_set(CZ_ERR_UNAVAILABLE, "CUDA device %d (%s) cannot start: %s", dev, prop.name,
                         cudaGetErrorString(e));
    }
    if (s == CZ_OK) s = probe_device(b, &prop);
    if (s == CZ_OK && cdn_create(b) != CZ_OK)
        s = cz_error_set(CZ_ERR_UNAVAILABLE, "cuDNN cannot start on device %d: %s", dev, cz_error_detail());
    if (s != CZ_OK) {
        cu_destroy(&b->base);
        return s;
    }
    cu_prof_start(b);
    CZ_LOGI("cuda", "device %d: %s (sm_%d%d, %d SMs, %.1f GiB), cuDNN %s%s%s%s%s%s", dev, prop.name, prop.major,
            prop.minor, prop.multiProcessorCount, (double)prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0),
            cdn_version_string(), b->allow_tf32 ? ", TF32 allowed" : "",
            cdn_any_determinism(b) ? ", non-deterministic cuDNN algorithms allowed" : "",
            b->force_naive ? ", naive convs" : "",
            b->thin == 3 ? ", thin convs and transposed convs" : b->thin || b->force_naive ? "" : ", no thin convs",
            cdn_direct_note(b));
    *out = &b->base;
    return CZ_OK;
}

/* Memory slots; the op slots come from backend_cuda_ops.c. */
void cu_fill_mem_ops(cz_backend_ops *ops) {
    ops->name = "cuda";
    ops->destroy = cu_destroy;
    ops->supports = cu_supports;
    ops->tensor_alloc = cu_tensor_alloc;
    ops->tensor_free = cu_tensor_free;
    ops->tensor_write = cu_tensor_write;
    ops->tensor_read = cu_tensor_read;
    ops->tensor_zero = cu_tensor_zero;
    ops->sync = cu_sync;
    ops->view_ok = cu_view_ok;
    ops->health = cu_health;
    cu_fill_graph_ops(ops);
    cu_fill_xfer_ops(ops);
}
