/* backend_cuda_graph.c: the `cuda` backend's recorded op sequences (CUDA graphs) and its
 * page-locked host memory: the record_begin/record_end/replay/record_free and
 * host_alloc/host_free slots of backend.h.
 *
 * Recording is stream capture on the instance's stream, in thread-local mode (other threads'
 * CUDA calls are not affected). While it is on, everything that would allocate, free,
 * synchronize or move data to or from the host refuses with CZ_ERR_UNSUPPORTED
 * (cu_recording_guard), so a recording holds only kernels, cuDNN calls and memsets on memory
 * that already exists. Weight conversions are recorded where the recording first uses each
 * weight (conv_epoch in cuda_impl.h): a training step's weights change on every replay. A graph
 * keeps raw device pointers, so each recording remembers the
 * instance's epoch (see cuda_impl.h) and replay refuses a stale one with CZ_ERR_UNAVAILABLE; the
 * model then records again. A capture that CUDA invalidated (an op did something a graph cannot
 * hold) ends with CZ_ERR_UNSUPPORTED and the instance keeps working unrecorded.
 * COLORIZE_CUDA_GRAPHS=0 turns recording off (record_begin answers CZ_ERR_UNSUPPORTED).
 *
 * Host memory: cudaMallocHost, so tensor_write/tensor_read DMA straight from and to it. The copy
 * in tensor_write from such a buffer is asynchronous: the caller must not change the buffer
 * before the next tensor_read or sync (the model's forward pass ends with both).
 * Threading: one thread at a time per instance. Tested by tests/unit/test_unet.c (forward with
 * recordings == without, padded batch sizes, stale recordings), tests/unit/test_train.c
 * (recorded training steps == op by op) and tests/unit/test_ops.c (f) on the emulator build and
 * on a GPU. */
#include <cuda_runtime_api.h>
#include <stdlib.h>

#include "cuda_impl.h"
#include "log.h"

struct cz_recording {
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    uint64_t epoch;
    /* the loss slots it queues into and their element counts: loss_read divides by the count of
     * the last loss queued, which after a replay is the recording's, not the last one the host
     * queued itself */
    unsigned loss_slots;
    double loss_count[CZ_LOSS_SLOTS];
};

static void rec_destroy(cz_recording *r) {
    if (!r) return;
    if (r->exec) cudaGraphExecDestroy(r->exec);
    if (r->graph) cudaGraphDestroy(r->graph);
    free(r);
}

static cz_status cu_record_begin(cz_backend *be) {
    cu_backend *b = (cu_backend *)be;
    CZ_TRY(cu_enter(b));
    if (b->no_graphs) return cz_error_set(CZ_ERR_UNSUPPORTED, "cuda: recordings are off (COLORIZE_CUDA_GRAPHS=0)");
    if (b->recording) return cz_error_set(CZ_ERR_INVALID_ARG, "cuda record_begin: already recording");
    CU_CHECK(b, cudaStreamBeginCapture(b->stream, cudaStreamCaptureModeThreadLocal));
    b->recording = 1;
    b->rec_loss_slots = 0;
    b->conv_epoch++; /* each weight's first use in the recording records its conversion */
    return CZ_OK;
}

static cz_status cu_record_end(cz_backend *be, cz_recording **out) {
    cu_backend *b = (cu_backend *)be;
    if (!out) return cz_error_set(CZ_ERR_INVALID_ARG, "cuda record_end: out is NULL");
    *out = NULL;
    if (!b->recording) return cz_error_set(CZ_ERR_INVALID_ARG, "cuda record_end: not recording");
    b->recording = 0;
    b->conv_epoch++; /* nothing recorded has run: convert again on the next unrecorded use */
    uint64_t epoch = b->epoch;
    cudaGraph_t g = NULL;
    cudaError_t e = cudaStreamEndCapture(b->stream, &g);
    if (e == cudaErrorStreamCaptureInvalidated || e == cudaErrorStreamCaptureUnsupported ||
        e == cudaErrorStreamCaptureUnmatched || e == cudaErrorStreamCaptureWrongThread) {
        /* the capture was broken by an op; nothing was recorded, the stream works as before */
        (void)cudaGetLastError();
        if (g) cudaGraphDestroy(g);
        return cz_error_set(CZ_ERR_UNSUPPORTED, "cuda: the recording was invalidated: %s", cudaGetErrorString(e));
    }
    if (e != cudaSuccess) return cu_fail(b, e, __FILE__, __LINE__, "cudaStreamEndCapture");
    cz_recording *r = calloc(1, sizeof *r);
    if (!r) {
        cudaGraphDestroy(g);
        return cz_error_set(CZ_ERR_NOMEM, "cuda: cannot allocate a recording");
    }
    r->graph = g;
    r->epoch = epoch;
    r->loss_slots = b->rec_loss_slots;
    for (int i = 0; i < CZ_LOSS_SLOTS; i++) r->loss_count[i] = b->loss_count[i];
    e = cudaGraphInstantiate(&r->exec, g, 0);
    if (e != cudaSuccess) {
        r->exec = NULL;
        rec_destroy(r);
        return cu_fail(b, e, __FILE__, __LINE__, "cudaGraphInstantiate");
    }
    *out = r;
    return CZ_OK;
}

static cz_status cu_replay(cz_backend *be, cz_recording *r) {
    cu_backend *b = (cu_backend *)be;
    if (!r) return cz_error_set(CZ_ERR_INVALID_ARG, "cuda replay: recording is NULL");
    CZ_TRY(cu_enter(b));
    CZ_TRY(cu_recording_guard(b, "replay"));
    if (r->epoch != b->epoch)
        return cz_error_set(CZ_ERR_UNAVAILABLE, "cuda replay: the recording is stale (backend memory moved)");
    CU_CHECK(b, cudaGraphLaunch(r->exec, b->stream));
    for (int i = 0; i < CZ_LOSS_SLOTS; i++)
        if (r->loss_slots >> i & 1u) b->loss_count[i] = r->loss_count[i];
    return CZ_OK;
}

static void cu_record_free(cz_backend *be, cz_recording *r) {
    cu_backend *b = (cu_backend *)be;
    if (!r) return;
    (void)cudaSetDevice(b->device);
    /* an earlier launch of it may still be queued (a recording goes stale without any wait,
     * e.g. when a weight is rewritten), and the runtime does not say that destroying a running
     * graph is safe: let the stream finish first (rare: stale recordings and shutdown) */
    if (!b->sticky && !b->recording) (void)cudaStreamSynchronize(b->stream);
    (void)cudaGetLastError();
    rec_destroy(r);
}

static void *cu_host_alloc(cz_backend *be, size_t bytes) {
    cu_backend *b = (cu_backend *)be;
    if (b->recording || cudaSetDevice(b->device) != cudaSuccess) return NULL;
    void *p = NULL;
    cudaError_t e = cudaMallocHost(&p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        CZ_LOGW("cuda", "cannot allocate %zu bytes of page-locked host memory: %s", bytes, cudaGetErrorString(e));
        return NULL;
    }
    return p;
}

static void cu_host_free(cz_backend *be, void *p) {
    cu_backend *b = (cu_backend *)be;
    if (!p) return;
    (void)cudaSetDevice(b->device);
    cudaFreeHost(p);
}

void cu_fill_graph_ops(cz_backend_ops *ops) {
    ops->record_begin = cu_record_begin;
    ops->record_end = cu_record_end;
    ops->replay = cu_replay;
    ops->record_free = cu_record_free;
    ops->host_alloc = cu_host_alloc;
    ops->host_free = cu_host_free;
}
