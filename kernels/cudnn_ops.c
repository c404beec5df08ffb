/* cudnn_ops.c: every cuDNN call of the `cuda` backend, in one file: the handle, and the three
 * convolution primitives (forward, backward data, backward filter) in cuDNN's own terms
 * (x (n,c,h,w), filter (k,c,r,r), y (n,k,oh,ow), NHWC tensors and NHWC/KRSC filters). The
 * transposed convolution of the op table is built from these by the caller (deconv forward =
 * backward data, deconv backward data = forward, deconv weight gradient = backward filter
 * with the roles of x and dy swapped).
 *
 * Uses cuDNN 9's legacy convolution API (deprecated but present in every 9.x; its deprecation
 * attributes are off unless CUDNN_WARN_DEPRECATED is defined). Choices:
 * - Plans are cached by (primitive, problem): descriptors plus an algorithm chosen once, by
 *   cudnnFind*Algorithm (benchmarks every algorithm on the device; COLORIZE_CUDA_ALGO=heuristic
 *   picks by cudnnGet*_v7 instead, faster start), restricted to deterministic algorithms
 *   (batch views and batched == alone must be bit-exact) whose workspace fits ws_limit.
 *   COLORIZE_CUDA_NONDET=1 lifts the determinism rule, for measuring what it costs (PyTorch's
 *   default, cudnn.benchmark without cudnn.deterministic, has no such rule): with it, runs of
 *   the same training step or batch may differ in their last bits.
 * - One algorithm per problem whatever the batch size: the first batch size seen for a
 *   (primitive, problem) runs the search, and every other batch size of it reuses that
 *   algorithm (with its own workspace size), so that an image's result does not depend on the
 *   size of the batch it came in, as far as the algorithm choice goes. The daemon warms up its
 *   largest batch first, so serving uses the algorithm chosen for max_batch.
 *   COLORIZE_CUDA_ALGO_PER_BATCH=1 searches for every batch size instead (fastest per size,
 *   batched == alone no longer guaranteed).
 * - Precision: fp32 uses CUDNN_FMA_MATH (no TF32: the fp32 contract is 1e-4 against the
 *   oracle) unless COLORIZE_CUDA_TF32=1; bf16/fp16 use tensor cores with fp32 accumulation
 *   (compute type CUDNN_DATA_FLOAT).
 * - One shared workspace (cu_backend.ws), grown to the chosen algorithm's need.
 * - When cuDNN has no deterministic algorithm for a problem, or refuses the chosen one at run
 *   time with a NOT_SUPPORTED status, the plan falls back to conv_naive.cu for good (logged
 *   once per plan). COLORIZE_CUDA_NAIVE=1 forces the fallback everywhere.
 * - Direct candidates: on small problems (a few pixels, many channels: the U-Net's innermost
 *   layers, where cuDNN's deterministic fp32 algorithms were seen taking 0.27-0.42 ms for what
 *   reading the weights does in 5-10 us) our own kernels race the chosen algorithm once, on the
 *   call's own inputs, and the faster is kept for the plan (and so for every batch size of the
 *   problem, as above): conv_small.cu for forward and backward data, conv_naive.cu for backward
 *   filter. Limits in direct_admits. Each race is logged with both times and the winner.
 *   Only with the search (the heuristic mode times nothing). COLORIZE_CUDA_DIRECT=0 turns this
 *   off, =force gives them every problem the race would take, untimed (tests: their parity
 *   and batch invariance; the per-layer tables of tests/gpu/check.sh).
 * - A batch whose x or y would hold more than INT32_MAX elements runs as sub-batches under
 *   that (sub_batch); COLORIZE_CUDNN_MAX_ELEMS lowers the limit so that tests reach the path
 *   (and, for images above it, the direct kernels).
 * - Every cuDNN status is checked: allocation failures become CZ_ERR_NOMEM, the rest
 *   CZ_ERR_BACKEND with file:line and cudnnGetErrorString.
 * Threading: per instance, one thread at a time. Tested by tests/unit/test_ops.c (conv and
 * deconv forward/backward parity) on a GPU via tests/gpu/check.sh. */
#include <cudnn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_impl.h"
#include "log.h"

enum { CDN_FWD = 0, CDN_BWD_DATA = 1, CDN_BWD_FILTER = 2 };
enum { DIRECT_OFF = 0, DIRECT_RACE = 1, DIRECT_FORCE = 2 };
static const char *const k_kind_name[3] = {"forward", "backward-data", "backward-filter"};
static const char *const k_call[3] = {"cudnnConvolutionForward", "cudnnConvolutionBackwardData",
                                      "cudnnConvolutionBackwardFilter"};

typedef struct cdn_plan {
    int kind;
    int tf32;
    cuk_conv p;
    cudnnTensorDescriptor_t xd, yd;
    cudnnFilterDescriptor_t wd;
    cudnnConvolutionDescriptor_t cd;
    int algo;
    cudnnMathType_t math; /* the math type the algorithm was chosen with */
    size_t ws;
    int naive;  /* cuDNN cannot: conv_naive.cu's kernels */
    int direct; /* our kernels won the race (or COLORIZE_CUDA_DIRECT=force): direct_run */
} cdn_plan;

struct cu_dnn {
    cudnnHandle_t h;
    cdn_plan **plans;
    int n, cap;
    int use_find;
    int per_batch; /* COLORIZE_CUDA_ALGO_PER_BATCH=1 */
    int any_determinism; /* COLORIZE_CUDA_NONDET=1: non-deterministic algorithms may be chosen */
    int direct_mode;     /* DIRECT_OFF / DIRECT_RACE / DIRECT_FORCE (COLORIZE_CUDA_DIRECT) */
    int64_t max_elems; /* most elements of x or y in one cuDNN call (sub_batch) */
    int warned_large;  /* logged that an image exceeded it */
};

/* Out of host (4003) or device (4004) memory: the caller may retry smaller. */
static int alloc_failed(cudnnStatus_t st) {
    return st == CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED ||
           st == CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED;
}

static cz_status dnn_fail(cudnnStatus_t st, const char *file, int line, const char *expr) {
    const char *base = strrchr(file, '/');
    base = base ? base + 1 : file;
    cz_status code = alloc_failed(st) ? CZ_ERR_NOMEM : CZ_ERR_BACKEND;
    CZ_LOGE("cuda", "%s:%d: %s failed: %s (%d)", base, line, expr, cudnnGetErrorString(st), (int)st);
    return cz_error_set(code, "%s:%d: %s failed: %s (%d)", base, line, expr, cudnnGetErrorString(st), (int)st);
}

#define DNN_CHECK(expr)                                                                            \
    do {                                                                                           \
        cudnnStatus_t dn_s_ = (expr);                                                              \
        if (dn_s_ != CUDNN_STATUS_SUCCESS) return dnn_fail(dn_s_, __FILE__, __LINE__, #expr);      \
    } while (0)

/* cuDNN 9 groups its statuses by thousands. Part of the 3000s (NOT_SUPPORTED) says that
 * this installation cannot run cuDNN at all (driver, runtime, architecture, a missing NVRTC
 * or sub-library), like 1008: those must fail loudly, not send every convolution to the slow
 * direct kernels while the parity checks still pass. */
static int env_broken(cudnnStatus_t st) {
    return st == CUDNN_STATUS_SUBLIBRARY_LOADING_FAILED || st == CUDNN_STATUS_NOT_SUPPORTED_INCOMPATIBLE_CUDA_DRIVER ||
           st == CUDNN_STATUS_NOT_SUPPORTED_INCOMPATIBLE_CUDART || st == CUDNN_STATUS_NOT_SUPPORTED_ARCH_MISMATCH ||
           st == CUDNN_STATUS_NOT_SUPPORTED_RUNTIME_PREREQUISITE_MISSING ||
           st == CUDNN_STATUS_NOT_SUPPORTED_SUBLIBRARY_UNAVAILABLE;
}
/* The rest of the 3000s: this problem is not supported (another algorithm or our kernel may be). */
static int not_supported(cudnnStatus_t st) {
    return (int)st / 1000 == (int)CUDNN_STATUS_NOT_SUPPORTED / 1000 && !env_broken(st);
}

const char *cdn_version_string(void) {
    static char buf[32];
    size_t v = cudnnGetVersion();
    snprintf(buf, sizeof buf, "%zu.%zu.%zu", v / 10000, (v / 100) % 100, v % 100);
    return buf;
}

cz_status cdn_create(cu_backend *b) {
    cu_dnn *d = calloc(1, sizeof *d);
    if (!d) return cz_error_set(CZ_ERR_NOMEM, "cuda: cannot allocate the cuDNN state");
    b->dnn = d;
    const char *algo = getenv("COLORIZE_CUDA_ALGO");
    d->use_find = !(algo && !strcmp(algo, "heuristic"));
    const char *pb = getenv("COLORIZE_CUDA_ALGO_PER_BATCH");
    d->per_batch = pb && *pb && strcmp(pb, "0") != 0;
    const char *nd = getenv("COLORIZE_CUDA_NONDET");
    d->any_determinism = nd && *nd && strcmp(nd, "0") != 0;
    const char *dm = getenv("COLORIZE_CUDA_DIRECT");
    if (!dm || !*dm || !strcmp(dm, "1") || !strcmp(dm, "auto"))
        d->direct_mode = DIRECT_RACE;
    else if (!strcmp(dm, "0"))
        d->direct_mode = DIRECT_OFF;
    else if (!strcmp(dm, "force"))
        d->direct_mode = DIRECT_FORCE;
    else
        return cz_error_set(CZ_ERR_CONFIG, "COLORIZE_CUDA_DIRECT=%s: expected auto, 0 or force", dm);
    d->max_elems = INT32_MAX;
    /* a lower limit, for tests: the emulator cannot hold tensors of 2^31 elements */
    const char *me = getenv("COLORIZE_CUDNN_MAX_ELEMS");
    if (me && *me) {
        char *end;
        long long v = strtoll(me, &end, 10);
        if (*end || v < 1 || v > INT32_MAX)
            return cz_error_set(CZ_ERR_CONFIG, "COLORIZE_CUDNN_MAX_ELEMS=%s: expected 1..%d", me, INT32_MAX);
        d->max_elems = v;
    }
    /* built against CUDNN_VERSION; an older library of the same major version (a GPU machine
     * whose cuDNN comes from another package) is not promised to work: say so up front */
    size_t v = cudnnGetVersion();
    if (v / 10000 != CUDNN_MAJOR)
        return cz_error_set(CZ_ERR_UNAVAILABLE, "cuda: cuDNN %s found, this build needs %d.x (built with %d.%d.%d)",
                            cdn_version_string(), CUDNN_MAJOR, CUDNN_MAJOR, CUDNN_MINOR, CUDNN_PATCHLEVEL);
    if (v < CUDNN_VERSION)
        CZ_LOGW("cuda", "cuDNN %s is older than the %d.%d.%d this build was compiled with (cuDNN promises only "
                "forward compatibility): if convolutions fail, install %d.%d or later",
                cdn_version_string(), CUDNN_MAJOR, CUDNN_MINOR, CUDNN_PATCHLEVEL, CUDNN_MAJOR, CUDNN_MINOR);
    DNN_CHECK(cudnnCreate(&d->h));
    DNN_CHECK(cudnnSetStream(d->h, b->stream));
    return CZ_OK;
}

static void plan_free(cdn_plan *pl) {
    if (!pl) return;
    if (pl->xd) cudnnDestroyTensorDescriptor(pl->xd);
    if (pl->yd) cudnnDestroyTensorDescriptor(pl->yd);
    if (pl->wd) cudnnDestroyFilterDescriptor(pl->wd);
    if (pl->cd) cudnnDestroyConvolutionDescriptor(pl->cd);
    free(pl);
}

void cdn_destroy(cu_backend *b) {
    cu_dnn *d = b->dnn;
    if (!d) return;
    for (int i = 0; i < d->n; i++) plan_free(d->plans[i]);
    free(d->plans);
    if (d->h) cudnnDestroy(d->h);
    free(d);
    b->dnn = NULL;
}

int cdn_plan_count(const cu_backend *b) { return b->dnn ? b->dnn->n : 0; }

int cdn_any_determinism(const cu_backend *b) { return b->dnn ? b->dnn->any_determinism : 0; }

const char *cdn_direct_note(const cu_backend *b) {
    if (!b->dnn || b->force_naive) return "";
    if (b->dnn->direct_mode == DIRECT_FORCE) return ", small-conv kernels forced";
    if (b->dnn->direct_mode == DIRECT_OFF || !b->dnn->use_find) return ", no small-conv kernels";
    return "";
}

static cudnnDataType_t dnn_type(int dt) {
    return dt == CZ_BF16 ? CUDNN_DATA_BFLOAT16 : dt == CZ_F16 ? CUDNN_DATA_HALF : CUDNN_DATA_FLOAT;
}

/* Whether a math type is allowed for this plan (fp32 stays off tensor cores unless TF32 is on). */
static int math_ok(const cdn_plan *pl, cudnnMathType_t m) {
    if (pl->p.dt != CZ_F32 || pl->tf32) return 1;
    /* for fp32 data DEFAULT_MATH lets cuDNN 8+ use TF32: only FMA keeps full precision */
    return m == CUDNN_FMA_MATH;
}

/* Picks the first acceptable entry of a perf list (cuDNN sorts them fastest first). The three
 * perf struct types share these fields, hence the macro. */
#define PICK(perf, count, pl, limit, any_det, out_algo, out_ws, out_math, found)                     \
    do {                                                                                           \
        for (int i_ = 0; i_ < (count) && !(found); i_++) {                                         \
            if ((perf)[i_].status != CUDNN_STATUS_SUCCESS) continue;                               \
            if (!(any_det) && (perf)[i_].determinism != CUDNN_DETERMINISTIC) continue;             \
            if ((perf)[i_].memory > (limit)) continue;                                             \
            if (!math_ok((pl), (perf)[i_].mathType)) continue;                                     \
            (out_algo) = (int)(perf)[i_].algo;                                                     \
            (out_ws) = (perf)[i_].memory;                                                          \
            (out_math) = (perf)[i_].mathType;                                                      \
            (found) = 1;                                                                           \
        }                                                                                          \
    } while (0)

/* The workspace algorithm `algo` needs for this plan's problem. */
static cudnnStatus_t workspace_for(cu_backend *b, const cdn_plan *pl, int algo, size_t *ws) {
    cudnnHandle_t h = b->dnn->h;
    if (pl->kind == CDN_FWD)
        return cudnnGetConvolutionForwardWorkspaceSize(h, pl->xd, pl->wd, pl->cd, pl->yd,
                                                       (cudnnConvolutionFwdAlgo_t)algo, ws);
    if (pl->kind == CDN_BWD_DATA)
        return cudnnGetConvolutionBackwardDataWorkspaceSize(h, pl->wd, pl->yd, pl->cd, pl->xd,
                                                            (cudnnConvolutionBwdDataAlgo_t)algo, ws);
    return cudnnGetConvolutionBackwardFilterWorkspaceSize(h, pl->xd, pl->yd, pl->cd, pl->wd,
                                                          (cudnnConvolutionBwdFilterAlgo_t)algo, ws);
}

static cz_status choose_algo(cu_backend *b, cdn_plan *pl) {
    cudnnHandle_t h = b->dnn->h;
    int found = 0, algo = 0, got = 0;
    size_t ws = 0;
    cudnnMathType_t math = CUDNN_DEFAULT_MATH;
    cudnnStatus_t st;
    cu_prof_mark(b, "cudnn algorithm search");
    for (int pass = b->dnn->use_find ? 0 : 1; pass < 2 && !found; pass++) {
        if (pl->kind == CDN_FWD) {
            cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
            st = pass == 0 ? cudnnFindConvolutionForwardAlgorithm(h, pl->xd, pl->wd, pl->cd, pl->yd,
                                                                   CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &got, perf)
                           : cudnnGetConvolutionForwardAlgorithm_v7(h, pl->xd, pl->wd, pl->cd, pl->yd,
                                                                    CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &got, perf);
            if (st == CUDNN_STATUS_SUCCESS) PICK(perf, got, pl, b->ws_limit, b->dnn->any_determinism, algo, ws, math, found);
        } else if (pl->kind == CDN_BWD_DATA) {
            cudnnConvolutionBwdDataAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
            st = pass == 0 ? cudnnFindConvolutionBackwardDataAlgorithm(h, pl->wd, pl->yd, pl->cd, pl->xd,
                                                                        CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &got,
                                                                        perf)
                           : cudnnGetConvolutionBackwardDataAlgorithm_v7(h, pl->wd, pl->yd, pl->cd, pl->xd,
                                                                         CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &got,
                                                                         perf);
            if (st == CUDNN_STATUS_SUCCESS) PICK(perf, got, pl, b->ws_limit, b->dnn->any_determinism, algo, ws, math, found);
        } else {
            cudnnConvolutionBwdFilterAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
            st = pass == 0 ? cudnnFindConvolutionBackwardFilterAlgorithm(h, pl->xd, pl->yd, pl->cd, pl->wd,
                                                                          CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT,
                                                                          &got, perf)
                           : cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, pl->xd, pl->yd, pl->cd, pl->wd,
                                                                           CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT,
                                                                           &got, perf);
            if (st == CUDNN_STATUS_SUCCESS) PICK(perf, got, pl, b->ws_limit, b->dnn->any_determinism, algo, ws, math, found);
        }
        if (alloc_failed(st) || env_broken(st)) return dnn_fail(st, __FILE__, __LINE__, "cudnnFind*Algorithm");
        if (st != CUDNN_STATUS_SUCCESS)
            CZ_LOGW("cuda", "cudnn %s algorithm %s failed: %s", k_kind_name[pl->kind], pass ? "heuristic" : "search",
                    cudnnGetErrorString(st));
    }
    /* (cuDNN 9 links its own copy of the CUDA runtime, so our cudaGetLastError cannot see its
     * errors: the status above is all there is) */
    const cuk_conv *p = &pl->p;
    if (!found) {
        pl->naive = 1;
        CZ_LOGW("cuda",
                "cudnn has no deterministic %s algorithm for %s n%d c%d %dx%d k%d r%d s%d p%d: using the direct kernel",
                k_kind_name[pl->kind], cz_dtype_name((cz_dtype)p->dt), p->n, p->c, p->h, p->w, p->k, p->r, p->stride,
                p->pad);
        return CZ_OK;
    }
    pl->algo = algo;
    pl->math = math;
    /* the algorithm runs with the math type it was measured with (algorithm and math type are a
     * pair), and its workspace is asked for with that type set */
    DNN_CHECK(cudnnSetConvolutionMathType(pl->cd, pl->math));
    size_t ws2 = 0;
    cudnnStatus_t wst = workspace_for(b, pl, algo, &ws2);
    if (wst == CUDNN_STATUS_SUCCESS && ws2 > ws) ws = ws2;
    pl->ws = ws;
    CZ_LOGD("cuda", "cudnn %s %s n%d c%d %dx%d -> k%d %dx%d: algo %d, workspace %zu, math %d", k_kind_name[pl->kind],
            cz_dtype_name((cz_dtype)p->dt), p->n, p->c, p->h, p->w, p->k, p->oh, p->ow, algo, ws, (int)math);
    return CZ_OK;
}

/* A plan of the same primitive and problem for another batch size (NULL if none, or when
 * every batch size searches for itself). */
static const cdn_plan *sibling(const cu_dnn *d, int kind, int tf32, const cuk_conv *p) {
    if (d->per_batch) return NULL;
    cuk_conv q = *p;
    for (int i = 0; i < d->n; i++) {
        const cdn_plan *pl = d->plans[i];
        q.n = pl->p.n;
        if (pl->kind == kind && pl->tf32 == tf32 && !memcmp(&pl->p, &q, sizeof q)) return pl;
    }
    return NULL;
}

/* ---- Direct candidates (see the top of the file) ---- */

/* The largest problems raced: pixels of the side a block of conv_small.cu sums into (y for the
 * forward, dx for backward data), or the length of conv_naive.cu's backward-filter loop over
 * the pixels of dy; and multiply-adds, so that timing a loser stays cheap (2^30 of them at a
 * pessimistic 1 TFLOP/s is 2 ms a run). The U-Net's innermost layers at batch 1 are 1x1 to 8x8. */
#define DIRECT_FWD_PIXELS 64
#define DIRECT_BWD_DATA_PIXELS 256
#define DIRECT_FILTER_PIXELS 64
#define DIRECT_MAX_MACS ((int64_t)1 << 30)
#define RACE_RUNS 5 /* timed calls per contestant, after one untimed */

static const char *const k_short[3] = {"fwd", "bwd-data", "bwd-filter"};

static int direct_admits(const cu_dnn *d, int kind, const cuk_conv *p) {
    if (d->direct_mode == DIRECT_OFF || !cuk_conv_small_ok(p, kind == CDN_BWD_DATA)) return 0;
    int64_t out_pix = (int64_t)p->n * p->oh * p->ow, in_pix = (int64_t)p->n * p->h * p->w;
    if (out_pix * p->k * p->r * p->r * p->c > DIRECT_MAX_MACS) return 0;
    if (kind == CDN_FWD) return out_pix <= DIRECT_FWD_PIXELS;
    if (kind == CDN_BWD_DATA) return in_pix <= DIRECT_BWD_DATA_PIXELS;
    return out_pix <= DIRECT_FILTER_PIXELS;
}

/* The operands of every primitive, in cuDNN's order: (in0, in1) = (x, w) forward, (w, dy)
 * backward data, (x, dy) backward filter; out = y, dx, dw (added to when accumulate, backward
 * filter only). */
static int direct_run(const cu_backend *b, int kind, const cuk_conv *p, const void *in0, const void *in1, void *out,
                      int accumulate) {
    if (kind == CDN_FWD) return cuk_conv_fwd_small(p, in0, in1, out, b->stream);
    if (kind == CDN_BWD_DATA) return cuk_conv_bwd_data_small(p, in0, in1, out, b->stream);
    return cuk_conv_bwd_filter_naive(p, in0, in1, out, accumulate, b->stream);
}

static int naive_run(const cu_backend *b, int kind, const cuk_conv *p, const void *in0, const void *in1, void *out,
                     int accumulate) {
    if (kind == CDN_FWD) return cuk_conv_fwd_naive(p, in0, in1, out, b->stream);
    if (kind == CDN_BWD_DATA) return cuk_conv_bwd_data_naive(p, in0, in1, out, b->stream);
    return cuk_conv_bwd_filter_naive(p, in0, in1, out, accumulate, b->stream);
}

static cudnnStatus_t cudnn_run(const cu_backend *b, const cdn_plan *pl, const void *in0, const void *in1, void *out,
                               int accumulate, void *ws) {
    const float one = 1.f, beta = accumulate ? 1.f : 0.f;
    cudnnHandle_t h = b->dnn->h;
    if (pl->kind == CDN_FWD)
        return cudnnConvolutionForward(h, &one, pl->xd, in0, pl->wd, in1, pl->cd, (cudnnConvolutionFwdAlgo_t)pl->algo,
                                       ws, pl->ws, &beta, pl->yd, out);
    if (pl->kind == CDN_BWD_DATA)
        return cudnnConvolutionBackwardData(h, &one, pl->wd, in0, pl->yd, in1, pl->cd,
                                            (cudnnConvolutionBwdDataAlgo_t)pl->algo, ws, pl->ws, &beta, pl->xd, out);
    return cudnnConvolutionBackwardFilter(h, &one, pl->xd, in0, pl->yd, in1, pl->cd,
                                          (cudnnConvolutionBwdFilterAlgo_t)pl->algo, ws, pl->ws, &beta, pl->wd, out);
}

/* Times one contestant (our kernels or the plan's algorithm): an untimed call (lazy loading,
 * caches), then RACE_RUNS calls queued back to back between two events; *ms = their mean. Back
 * to back, the host's cost of queuing a call hides behind the previous one on the device, as in
 * a recorded (CUDA graph) pass, so what is compared is device time. A cuDNN status other than
 * success comes back in *st, untimed (our kernels leave it at success). */
static cz_status race_time(cu_backend *b, const cdn_plan *pl, int direct, const void *in0, const void *in1, void *out,
                           cudaEvent_t ev[2], float *ms, cudnnStatus_t *st) {
    void *ws = NULL;
    if (!direct && pl->ws) CZ_TRY(cu_scratch_get(b, &b->ws, pl->ws, &ws));
    *st = CUDNN_STATUS_SUCCESS;
    for (int i = 0; i <= RACE_RUNS; i++) {
        if (i == 1) CU_CHECK(b, cudaEventRecord(ev[0], b->stream));
        if (direct)
            CU_CHECK(b, (cudaError_t)direct_run(b, pl->kind, &pl->p, in0, in1, out, 0));
        else if ((*st = cudnn_run(b, pl, in0, in1, out, 0, ws)) != CUDNN_STATUS_SUCCESS)
            return CZ_OK;
        if (i == 0) CU_CHECK(b, cudaStreamSynchronize(b->stream));
    }
    CU_CHECK(b, cudaEventRecord(ev[1], b->stream));
    CU_CHECK(b, cudaEventSynchronize(ev[1]));
    float t = 0.f;
    CU_CHECK(b, cudaEventElapsedTime(&t, ev[0], ev[1]));
    *ms = t / RACE_RUNS;
    return CZ_OK;
}

/* Races our kernels against the plan's cuDNN algorithm on the call's own inputs, into a scratch
 * output (the call's output, or dw's sum, must not see the runs), and sets pl->direct. A device
 * without room for the scratch output keeps cuDNN. */
static cz_status race(cu_backend *b, cdn_plan *pl, const void *in0, const void *in1) {
    const cuk_conv *p = &pl->p;
    size_t el = pl->kind == CDN_FWD        ? (size_t)p->n * p->oh * p->ow * p->k
                : pl->kind == CDN_BWD_DATA ? (size_t)p->n * p->h * p->w * p->c
                                           : (size_t)p->k * p->r * p->r * p->c;
    void *out = NULL;
    if (cudaMalloc(&out, el * cz_dtype_size((cz_dtype)p->dt)) != cudaSuccess) {
        (void)cudaGetLastError(); /* out of memory is not sticky */
        CZ_LOGW("cuda", "no device memory to time the direct kernel for cudnn %s n%d c%d %dx%d k%d: keeping cuDNN",
                k_kind_name[pl->kind], p->n, p->c, p->h, p->w, p->k);
        return CZ_OK;
    }
    cudaEvent_t ev[2] = {NULL, NULL};
    float t_dnn = 0.f, t_dir = 0.f;
    cudnnStatus_t st = CUDNN_STATUS_SUCCESS;
    cz_status s = CZ_OK;
    cudaError_t e = cudaEventCreate(&ev[0]);
    if (e == cudaSuccess) e = cudaEventCreate(&ev[1]);
    if (e != cudaSuccess) s = cu_fail(b, e, __FILE__, __LINE__, "cudaEventCreate");
    if (s == CZ_OK) s = race_time(b, pl, 0, in0, in1, out, ev, &t_dnn, &st);
    if (s == CZ_OK && st == CUDNN_STATUS_SUCCESS) s = race_time(b, pl, 1, in0, in1, out, ev, &t_dir, &st);
    for (int i = 0; i < 2; i++)
        if (ev[i]) cudaEventDestroy(ev[i]);
    cudaFree(out); /* waits for the device */
    if (s != CZ_OK) return s;
    if (st != CUDNN_STATUS_SUCCESS) {
        /* cuDNN refused its own choice: our kernel takes the plan for good, as fall_back would
         * give it to the slower naive one */
        if (!not_supported(st)) return dnn_fail(st, __FILE__, __LINE__, "cudnn call (timing the direct kernel)");
        CZ_LOGW("cuda", "cudnn refused %s algo %d (%s): using the direct kernel for this shape", k_kind_name[pl->kind],
                pl->algo, cudnnGetErrorString(st));
        pl->direct = 1;
        return CZ_OK;
    }
    pl->direct = t_dir < t_dnn;
    /* logged either way: the measurement that decides the path, once per shape */
    CZ_LOGI("cuda", "race %s %s n%d c%d %dx%d -> k%d %dx%d: direct kernel %.4f ms, cudnn algo %d %.4f ms: %s kept",
            k_short[pl->kind], cz_dtype_name((cz_dtype)p->dt), p->n, p->c, p->h, p->w, p->k, p->oh, p->ow,
            (double)t_dir, pl->algo, (double)t_dnn, pl->direct ? "direct kernel" : "cudnn");
    return CZ_OK;
}

/* Chooses how the plan runs: a sibling's choice, the direct kernels when forced, else cuDNN's
 * algorithm (raced against the direct kernels on a small problem). in0 and in1 are the call's
 * inputs (race). */
static cz_status plan_init(cu_backend *b, cdn_plan *pl, const cdn_plan *sib, const void *in0, const void *in1) {
    cu_dnn *d = b->dnn;
    const cuk_conv *p = &pl->p;
    cudnnDataType_t t = dnn_type(p->dt);
    DNN_CHECK(cudnnCreateTensorDescriptor(&pl->xd));
    DNN_CHECK(cudnnCreateTensorDescriptor(&pl->yd));
    DNN_CHECK(cudnnCreateFilterDescriptor(&pl->wd));
    DNN_CHECK(cudnnCreateConvolutionDescriptor(&pl->cd));
    DNN_CHECK(cudnnSetTensor4dDescriptor(pl->xd, CUDNN_TENSOR_NHWC, t, p->n, p->c, p->h, p->w));
    DNN_CHECK(cudnnSetTensor4dDescriptor(pl->yd, CUDNN_TENSOR_NHWC, t, p->n, p->k, p->oh, p->ow));
    DNN_CHECK(cudnnSetFilter4dDescriptor(pl->wd, t, CUDNN_TENSOR_NHWC, p->k, p->c, p->r, p->r));
    DNN_CHECK(cudnnSetConvolution2dDescriptor(pl->cd, p->pad, p->pad, p->stride, p->stride, 1, 1,
                                              CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    cudnnMathType_t m = p->dt == CZ_F32 ? (pl->tf32 ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH) : CUDNN_TENSOR_OP_MATH;
    DNN_CHECK(cudnnSetConvolutionMathType(pl->cd, m));
    /* cuDNN's own idea of the output size must match ours, or the descriptors disagree */
    int on, oc, oh, ow;
    DNN_CHECK(cudnnGetConvolution2dForwardOutputDim(pl->cd, pl->xd, pl->wd, &on, &oc, &oh, &ow));
    if (on != p->n || oc != p->k || oh != p->oh || ow != p->ow)
        return cz_error_set(CZ_ERR_INTERNAL, "cuda: cudnn output [%d,%d,%d,%d] differs from [%d,%d,%d,%d]", on, oc,
                            oh, ow, p->n, p->k, p->oh, p->ow);
    if (b->force_naive) {
        pl->naive = 1;
        return CZ_OK;
    }
    if (sib) {
        if (sib->naive || sib->direct) {
            pl->naive = sib->naive;
            pl->direct = sib->direct;
            return CZ_OK;
        }
        size_t ws = 0;
        DNN_CHECK(cudnnSetConvolutionMathType(pl->cd, sib->math)); /* first: the workspace depends on it */
        cudnnStatus_t st = workspace_for(b, pl, sib->algo, &ws);
        if (st == CUDNN_STATUS_SUCCESS && ws <= b->ws_limit) {
            pl->algo = sib->algo;
            pl->ws = ws;
            pl->math = sib->math;
            return CZ_OK;
        }
        DNN_CHECK(cudnnSetConvolutionMathType(pl->cd, m)); /* back to the search's starting type */
        /* that algorithm does not take this batch size: search for it (logged; bits may then
         * differ between batch sizes for this layer) */
        CZ_LOGW("cuda", "cudnn %s algo %d does not take batch %d (%s): searching for this batch size",
                k_kind_name[pl->kind], sib->algo, p->n,
                st == CUDNN_STATUS_SUCCESS ? "workspace over the limit" : cudnnGetErrorString(st));
    }
    int admit = direct_admits(d, pl->kind, p);
    if (admit && d->direct_mode == DIRECT_FORCE) {
        pl->direct = 1;
        CZ_LOGI("cuda", "small conv %s %s n%d c%d %dx%d -> k%d %dx%d: direct kernel (forced)", k_short[pl->kind],
                cz_dtype_name((cz_dtype)p->dt), p->n, p->c, p->h, p->w, p->k, p->oh, p->ow);
        return CZ_OK;
    }
    CZ_TRY(choose_algo(b, pl));
    if (admit && d->use_find && !pl->naive) CZ_TRY(race(b, pl, in0, in1));
    return CZ_OK;
}

static cz_status get_plan(cu_backend *b, int kind, const cuk_conv *p, const void *in0, const void *in1,
                          cdn_plan **out) {
    cu_dnn *d = b->dnn;
    int tf32 = p->dt == CZ_F32 && b->allow_tf32;
    for (int i = 0; i < d->n; i++) {
        cdn_plan *pl = d->plans[i];
        if (pl->kind == kind && pl->tf32 == tf32 && !memcmp(&pl->p, p, sizeof *p)) {
            *out = pl;
            return CZ_OK;
        }
    }
    if (d->n == d->cap) {
        int cap = d->cap ? 2 * d->cap : 64;
        cdn_plan **np = realloc(d->plans, (size_t)cap * sizeof *np);
        if (!np) return cz_error_set(CZ_ERR_NOMEM, "cuda: cannot grow the plan cache");
        d->plans = np;
        d->cap = cap;
    }
    /* choosing an algorithm runs and times it on the device: not while recording */
    CZ_TRY(cu_recording_guard(b, "a convolution shape seen for the first time"));
    cdn_plan *pl = calloc(1, sizeof *pl);
    if (!pl) return cz_error_set(CZ_ERR_NOMEM, "cuda: cannot allocate a plan");
    pl->kind = kind;
    pl->tf32 = tf32;
    pl->p = *p;
    cz_status s = plan_init(b, pl, sibling(d, kind, tf32, p), in0, in1);
    if (s != CZ_OK) {
        plan_free(pl);
        return s;
    }
    d->plans[d->n++] = pl;
    *out = pl;
    return CZ_OK;
}

/* A run-time refusal turns the plan into a naive one for good. */
static int fall_back(cdn_plan *pl, cudnnStatus_t st) {
    if (!not_supported(st)) return 0;
    CZ_LOGW("cuda", "cudnn refused %s algo %d (%s): using the direct kernel for this shape", k_kind_name[pl->kind],
            pl->algo, cudnnGetErrorString(st));
    pl->naive = 1;
    return 1;
}

/* Tags the device work queued next in the profile (backend_cuda_prof.c): path, direction and
 * shape in cuDNN's terms. */
#define PROF_MARK(b, path, kind, p)                                                                \
    cu_prof_markf((b), "%s %s %d->%d %dx%d->%dx%d", (path), k_short[kind], (p)->c, (p)->k, (p)->h, (p)->w,    \
                  (p)->oh, (p)->ow)

/* One call of a primitive (operands as in direct_run) on its plan's path. */
static cz_status conv_one(cu_backend *b, int kind, const cuk_conv *p, const void *in0, const void *in1, void *out,
                          int accumulate) {
    cdn_plan *pl = NULL;
    CZ_TRY(get_plan(b, kind, p, in0, in1, &pl));
    if (pl->direct) {
        PROF_MARK(b, "direct", kind, p);
        CU_CHECK(b, (cudaError_t)direct_run(b, kind, p, in0, in1, out, accumulate));
        return CZ_OK;
    }
    if (!pl->naive) {
        void *ws = NULL;
        if (pl->ws) CZ_TRY(cu_scratch_get(b, &b->ws, pl->ws, &ws));
        PROF_MARK(b, "cudnn", kind, p);
        cudnnStatus_t st = cudnn_run(b, pl, in0, in1, out, accumulate, ws);
        if (st == CUDNN_STATUS_SUCCESS) return CZ_OK;
        if (!fall_back(pl, st)) return dnn_fail(st, __FILE__, __LINE__, k_call[kind]);
    }
    PROF_MARK(b, "naive", kind, p);
    CU_CHECK(b, (cudaError_t)naive_run(b, kind, p, in0, in1, out, accumulate));
    return CZ_OK;
}

/* cuDNN's legacy API describes a tensor with int sizes and is not promised to take one of
 * 2^31 elements or more; PyTorch splits such batches for its cuDNN convolutions
 * (split_batch_dim_to_32bit_out). So does this: a batch whose x or y exceeds max_elems runs as
 * sub-batches that stay under it (the daemon's c[0] at render 1024 for 64 images holds
 * 64 x 128 x 512 x 512 = 2^31 elements). Sets *sub to the images per call, 0 when one image is
 * already too large (the direct kernel then runs it: correct, slow, logged once), and *xs / *ys
 * to the bytes of one image of x and of y. */
static int sub_batch(const cu_backend *b, const cuk_conv *p, size_t *xs, size_t *ys) {
    int64_t xe = (int64_t)p->c * p->h * p->w, ye = (int64_t)p->k * p->oh * p->ow;
    int64_t per = xe > ye ? xe : ye, most = b->dnn->max_elems;
    *xs = (size_t)xe * cz_dtype_size((cz_dtype)p->dt);
    *ys = (size_t)ye * cz_dtype_size((cz_dtype)p->dt);
    if (per > most) {
        if (!b->dnn->warned_large)
            CZ_LOGW("cuda", "one image of a convolution holds %lld elements, more than cuDNN takes (%lld): the direct "
                    "kernel runs it, slowly", (long long)per, (long long)most);
        b->dnn->warned_large = 1;
        return 0;
    }
    return (int64_t)p->n * per <= most ? p->n : (int)(most / per);
}

/* A primitive over the whole batch (operands as in direct_run): sub-batches under max_elems, or
 * the naive kernel when one image is over it. */
static cz_status conv_split(cu_backend *b, int kind, const cuk_conv *p, const void *in0, const void *in1, void *out,
                            int accumulate) {
    size_t xs, ys;
    int sub = sub_batch(b, p, &xs, &ys);
    if (!sub) {
        PROF_MARK(b, "naive", kind, p);
        CU_CHECK(b, (cudaError_t)naive_run(b, kind, p, in0, in1, out, accumulate));
        return CZ_OK;
    }
    /* bytes from one image to the next in each operand (none in the weights, dw included) */
    const size_t s0 = kind == CDN_BWD_DATA ? 0 : xs, s1 = kind == CDN_FWD ? 0 : ys;
    const size_t so = kind == CDN_FWD ? ys : kind == CDN_BWD_DATA ? xs : 0;
    for (int i = 0; i < p->n; i += sub) {
        cuk_conv q = *p;
        q.n = p->n - i < sub ? p->n - i : sub;
        /* the sub-batches after the first add to dw */
        CZ_TRY(conv_one(b, kind, &q, (const char *)in0 + i * s0, (const char *)in1 + i * s1, (char *)out + i * so,
                        accumulate || (kind == CDN_BWD_FILTER && i > 0)));
    }
    return CZ_OK;
}

cz_status cdn_conv_fwd(cu_backend *b, const cuk_conv *p, const void *x, const void *w, void *y) {
    return conv_split(b, CDN_FWD, p, x, w, y, 0);
}

cz_status cdn_conv_bwd_data(cu_backend *b, const cuk_conv *p, const void *w, const void *dy, void *dx) {
    return conv_split(b, CDN_BWD_DATA, p, w, dy, dx, 0);
}

cz_status cdn_conv_bwd_filter(cu_backend *b, const cuk_conv *p, const void *x, const void *dy, void *dw,
                              int accumulate) {
    return conv_split(b, CDN_BWD_FILTER, p, x, dy, dw, accumulate);
}
