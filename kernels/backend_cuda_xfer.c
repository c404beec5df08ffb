/* backend_cuda_xfer.c: the `cuda` backend's asynchronous host transfers (the write_async,
 * read_async and transfer_wait slots of backend.h), so that a batch's upload and the previous
 * batch's download run while the device computes.
 *
 * Streams: uploads run on `up`, downloads on `down`, both non-blocking and apart from the
 * compute stream (a GPU has a copy engine per direction; with one copy stream for both, a
 * batch's upload would queue behind the previous batch's download, which waits for that
 * batch's compute: nothing would overlap).
 *
 * A transfer moves plain NCHW fp32 between the host buffer and a device staging buffer of its
 * own, and a kernel on the compute stream converts between that and the tensor's NHWC storage
 * in its dtype. Each direction has XF_SLOTS staging buffers used in turn; events order the
 * three streams:
 *   upload:   up waits for `used` (the slot's last conversion is done with the buffer), copies
 *             host -> buffer, records `copied`; compute waits for `copied`, converts buffer ->
 *             tensor, records `used`.
 *   download: compute waits for `copied` (the slot's last copy out of the buffer is done),
 *             converts tensor -> buffer, records `used`; down waits for `used`, copies buffer ->
 *             host, records `copied`.
 * Since the conversions run on the compute stream, ops queued after an upload see it, and a
 * download sees every op queued before it (and so every upload before it). A ticket is the
 * transfer's direction and sequence number; waiting on it synchronizes its slot's `copied`
 * event. When the slot has been reused since, that event belongs to a later transfer on the
 * same stream, which completes after the one asked for: waiting on it is longer than needed,
 * never too short.
 * A staging buffer grows with cudaMalloc/cudaFree (cudaFree waits for the device, so no
 * transfer still uses the old one). Threading: one thread at a time (backend.h). Tested on the
 * emulator, which runs streams apart and only as far as a synchronization needs (so a missing
 * event wait or a wait on the wrong stream reads stale data), by tests/unit/test_unet.c
 * (pipelined forward passes == synchronous ones) and tests/unit/test_ops.c. */
#include <cuda_runtime_api.h>
#include <stdlib.h>

#include "cuda_impl.h"
#include "log.h"

#define TICKET_DOWN (1ull << 63)

static cu_xslot *xslot(cu_backend *b, int down, uint64_t seq) {
    return &b->xf[down][(seq - 1) % XF_SLOTS];
}

/* The next slot of a direction, its staging buffer at least `bytes` large. */
static cz_status take_slot(cu_backend *b, int down, size_t bytes, cu_xslot **out, uint64_t *seq) {
    uint64_t s = b->xf_seq[down] + 1;
    cu_xslot *x = xslot(b, down, s);
    if (!x->copied) {
        CU_CHECK(b, cudaEventCreateWithFlags(&x->copied, cudaEventDisableTiming));
        CU_CHECK(b, cudaEventCreateWithFlags(&x->used, cudaEventDisableTiming));
    }
    if (x->buf.bytes < bytes) {
        if (x->buf.p) CU_CHECK(b, cudaFree(x->buf.p)); /* waits for the device */
        x->buf.p = NULL;
        x->buf.bytes = 0;
        CU_CHECK(b, cudaMalloc(&x->buf.p, bytes));
        x->buf.bytes = bytes;
    }
    b->xf_seq[down] = s;
    *out = x;
    *seq = s;
    return CZ_OK;
}

static cz_status start(cu_backend *b, const char *op, const cz_tensor *t, const void *host) {
    CZ_TRY(cu_enter(b));
    CZ_TRY(cu_recording_guard(b, op));
    CZ_TRY(cu_check(op, "t", t));
    if (!host) return cz_error_set(CZ_ERR_INVALID_ARG, "cuda %s: host buffer is NULL", op);
    if (!b->up) {
        CU_CHECK(b, cudaStreamCreateWithFlags(&b->up, cudaStreamNonBlocking));
        CU_CHECK(b, cudaStreamCreateWithFlags(&b->down, cudaStreamNonBlocking));
    }
    return CZ_OK;
}

static cz_status cu_write_async(cz_backend *be, cz_tensor *t, const float *src, uint64_t *ticket) {
    cu_backend *b = (cu_backend *)be;
    if (!ticket) return cz_error_set(CZ_ERR_INVALID_ARG, "cuda write_async: ticket is NULL");
    CZ_TRY(start(b, "write_async", t, src));
    size_t bytes = cz_tensor_numel(t) * sizeof(float);
    cu_xslot *x;
    uint64_t seq;
    CZ_TRY(take_slot(b, 0, bytes, &x, &seq));
    if (cu_buf_of(t)->conv_dev) b->epoch++; /* as tensor_write: a graph may use a stale converted copy */
    CU_CHECK(b, cudaStreamWaitEvent(b->up, x->used, 0));
    CU_CHECK(b, cudaMemcpyAsync(x->buf.p, src, bytes, cudaMemcpyHostToDevice, b->up));
    CU_CHECK(b, cudaEventRecord(x->copied, b->up));
    CU_CHECK(b, cudaStreamWaitEvent(b->stream, x->copied, 0));
    CUK_CHECK(b, cuk_nchw_f32_to_nhwc(x->buf.p, cu_dev(t), t->dtype, t->n, t->c, t->h, t->w, b->stream));
    CU_CHECK(b, cudaEventRecord(x->used, b->stream));
    cu_touch(t);
    *ticket = seq;
    return CZ_OK;
}

static cz_status cu_read_async(cz_backend *be, const cz_tensor *t, float *dst, uint64_t *ticket) {
    cu_backend *b = (cu_backend *)be;
    if (!ticket) return cz_error_set(CZ_ERR_INVALID_ARG, "cuda read_async: ticket is NULL");
    CZ_TRY(start(b, "read_async", t, dst));
    size_t bytes = cz_tensor_numel(t) * sizeof(float);
    cu_xslot *x;
    uint64_t seq;
    CZ_TRY(take_slot(b, 1, bytes, &x, &seq));
    CU_CHECK(b, cudaStreamWaitEvent(b->stream, x->copied, 0));
    CUK_CHECK(b, cuk_nhwc_to_nchw_f32(cu_dev(t), t->dtype, x->buf.p, t->n, t->c, t->h, t->w, b->stream));
    CU_CHECK(b, cudaEventRecord(x->used, b->stream));
    CU_CHECK(b, cudaStreamWaitEvent(b->down, x->used, 0));
    CU_CHECK(b, cudaMemcpyAsync(dst, x->buf.p, bytes, cudaMemcpyDeviceToHost, b->down));
    CU_CHECK(b, cudaEventRecord(x->copied, b->down));
    *ticket = seq | TICKET_DOWN;
    return CZ_OK;
}

static cz_status cu_transfer_wait(cz_backend *be, uint64_t ticket) {
    cu_backend *b = (cu_backend *)be;
    CZ_TRY(cu_enter(b));
    CZ_TRY(cu_recording_guard(b, "transfer_wait"));
    int down = (ticket & TICKET_DOWN) != 0;
    uint64_t seq = ticket & ~TICKET_DOWN;
    if (seq == 0 || seq > b->xf_seq[down])
        return cz_error_set(CZ_ERR_INVALID_ARG, "cuda transfer_wait: no transfer has ticket %llx",
                            (unsigned long long)ticket);
    CU_CHECK(b, cudaEventSynchronize(xslot(b, down, seq)->copied));
    return CZ_OK;
}

void cu_xfer_destroy(cu_backend *b) {
    for (int d = 0; d < 2; d++)
        for (int i = 0; i < XF_SLOTS; i++) {
            cu_xslot *x = &b->xf[d][i];
            if (x->copied) cudaEventDestroy(x->copied);
            if (x->used) cudaEventDestroy(x->used);
            if (x->buf.p) cudaFree(x->buf.p);
        }
    if (b->up) cudaStreamDestroy(b->up);
    if (b->down) cudaStreamDestroy(b->down);
    b->up = b->down = NULL;
}

cz_status cu_xfer_sync(cu_backend *b) {
    if (b->up) CU_CHECK(b, cudaStreamSynchronize(b->up));
    if (b->down) CU_CHECK(b, cudaStreamSynchronize(b->down));
    return CZ_OK;
}

void cu_fill_xfer_ops(cz_backend_ops *ops) {
    ops->write_async = cu_write_async;
    ops->read_async = cu_read_async;
    ops->transfer_wait = cu_transfer_wait;
}
