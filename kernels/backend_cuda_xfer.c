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
 * A staging buffer grows with cudaMalloc/cudaFree (grow(): cudaFree waits for the device, so no
 * transfer still uses the old one).
 *
 * merge_lab (the final merge of a batch of colorizations, kernels/merge.cu) is a third kind of
 * transfer: a descriptor table and the L planes up, one kernel for the whole batch, rgb images
 * down. It has MG_SLOTS device buffers of its own (a call's descriptor table, its L planes, then
 * its rgb outputs), used in turn, each with three events:
 *   up waits for `done` (the slot's previous merge is finished with its buffer), copies the
 *   table and every L host -> buffer, records `loaded`; compute waits for `loaded`, runs the
 *   kernel (reading the ab tensor and writing rgb into the buffer), records `merged`; down
 *   waits for `merged`, copies every rgb buffer -> host, records `done`.
 * The table is built in page-locked host memory of the slot's own (an async copy reads its source
 * when it runs, and from pageable memory it may synchronize). The host rewrites that memory only
 * after synchronizing the slot's `loaded`, the end of the last upload that read it: merge k waits
 * for merge k - MG_SLOTS's upload, normally long finished.
 * As the kernel runs on the compute stream, it sees every op queued before the merge (the
 * forward pass that wrote ab, every upload before it) and every op queued after runs after
 * it (the next batch's forward may overwrite ab). Its ticket is tagged TICKET_MERGE and
 * numbered in a sequence of its own; waiting on it synchronizes the slot's `done` event (a
 * reused slot's `done` belongs to a later merge: longer, never too short). The lab_exact.h
 * tables are copied to the device on the first merge (on the compute stream, ahead of the
 * kernel) and kept until destroy. Threading: one thread at a time (backend.h). Tested on the
 * emulator, which runs streams apart and only as far as a synchronization needs (so a missing
 * event wait or a wait on the wrong stream reads stale data), by tests/unit/test_unet.c
 * (pipelined forward passes == synchronous ones) and tests/unit/test_ops.c (which also checks
 * merge_lab byte for byte against cz_render_merge_ab). */
#include <cuda_runtime_api.h>
#include <stdlib.h>

#include "cuda_impl.h"
#include "image.h"
#include "lab_exact.h"
#include "log.h"

#define TICKET_DOWN (1ull << 63)
#define TICKET_MERGE (1ull << 62)

static cu_xslot *xslot(cu_backend *b, int down, uint64_t seq) {
    return &b->xf[down][(seq - 1) % XF_SLOTS];
}

/* A staging or merge buffer at least `bytes` large. (Not cu_scratch_get: these buffers are
 * never recorded, so growing them must not make recordings stale.) */
static cz_status grow(cu_backend *b, cu_scratch *buf, size_t bytes) {
    return buf->bytes >= bytes ? CZ_OK : cu_scratch_resize(b, buf, bytes);
}

/* The next slot of a direction, its staging buffer at least `bytes` large. */
static cz_status take_slot(cu_backend *b, int down, size_t bytes, cu_xslot **out, uint64_t *seq) {
    uint64_t s = b->xf_seq[down] + 1;
    cu_xslot *x = xslot(b, down, s);
    if (!x->copied) {
        CU_CHECK(b, cudaEventCreateWithFlags(&x->copied, cudaEventDisableTiming));
        CU_CHECK(b, cudaEventCreateWithFlags(&x->used, cudaEventDisableTiming));
    }
    CZ_TRY(grow(b, &x->buf, bytes));
    b->xf_seq[down] = s;
    *out = x;
    *seq = s;
    return CZ_OK;
}

static cz_status copy_streams(cu_backend *b) {
    if (!b->up) CU_CHECK(b, cudaStreamCreateWithFlags(&b->up, cudaStreamNonBlocking));
    if (!b->down) CU_CHECK(b, cudaStreamCreateWithFlags(&b->down, cudaStreamNonBlocking));
    return CZ_OK;
}

static cz_status start(cu_backend *b, const char *op, const cz_tensor *t, const void *host) {
    CZ_TRY(cu_enter(b));
    CZ_TRY(cu_recording_guard(b, op));
    CZ_TRY(cu_check(op, "t", t));
    if (!host) return cz_error_set(CZ_ERR_INVALID_ARG, "cuda %s: host buffer is NULL", op);
    return copy_streams(b);
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

/* ---- merge_lab ---- */

static cu_mslot *mslot(cu_backend *b, uint64_t seq) { return &b->mg[(seq - 1) % MG_SLOTS]; }

/* Bytes from one region of a merge buffer to the next: 256-byte aligned. */
static size_t mg_round(size_t bytes) { return (bytes + 255) & ~(size_t)255; }

/* Why item `it` cannot be merged from a net_w x net_h plane, or NULL. */
static const char *merge_item_problem(const cz_merge_item *it, int net_w, int net_h) {
    if (!it->L) return "L is NULL";
    if (!it->rgb) return "rgb is NULL";
    if (it->src_w < 1 || it->src_h < 1) return "the source size must be positive";
    if (it->scaled_w < 1 || it->scaled_h < 1) return "the scaled size must be positive";
    if (it->off_x < 0 || it->off_y < 0 || (long long)it->off_x + it->scaled_w > net_w ||
        (long long)it->off_y + it->scaled_h > net_h)
        return "the scaled image is not inside the network plane";
    if (it->scaled_w > 2LL * it->src_w || it->scaled_h > 2LL * it->src_h)
        return "the scaled image is more than twice the source size (area averaging: the host merges those)";
    if ((size_t)it->src_w * (size_t)it->src_h > ((size_t)1 << 40)) return "the source is too large";
    return NULL;
}

/* The next merge slot, its buffer at least `bytes` large. */
static cz_status take_mslot(cu_backend *b, size_t bytes, cu_mslot **out, uint64_t *seq) {
    uint64_t s = b->mg_seq + 1;
    cu_mslot *m = mslot(b, s);
    if (!m->loaded) CU_CHECK(b, cudaEventCreateWithFlags(&m->loaded, cudaEventDisableTiming));
    if (!m->merged) CU_CHECK(b, cudaEventCreateWithFlags(&m->merged, cudaEventDisableTiming));
    if (!m->done) CU_CHECK(b, cudaEventCreateWithFlags(&m->done, cudaEventDisableTiming));
    CZ_TRY(grow(b, &m->buf, bytes));
    b->mg_seq = s;
    *out = m;
    *seq = s;
    return CZ_OK;
}

/* The lab_exact.h tables on the device, copied on first use. The copy is queued on the compute
 * stream, so the kernel queued after it reads it complete; the host tables are immutable. */
static cz_status lab_tables(cu_backend *b) {
    if (b->lab_tab) return CZ_OK;
    const cz_lab_exact_tab *host = cz_lab_exact_tables();
    void *p = NULL;
    CU_CHECK(b, cudaMalloc(&p, sizeof *host));
    cudaError_t e = cudaMemcpyAsync(p, host, sizeof *host, cudaMemcpyHostToDevice, b->stream);
    if (e != cudaSuccess) {
        (void)cudaFree(p);
        return cu_fail(b, e, __FILE__, __LINE__, "cudaMemcpyAsync(lab tables)");
    }
    b->lab_tab = p;
    return CZ_OK;
}

/* Slot m's descriptor table in host memory, room for n entries, once no upload reads it any
 * more (the last one that did is the slot's last record of `loaded`). */
static cz_status mg_table(cu_backend *b, cu_mslot *m, int n, cuk_merge_desc **out) {
    cu_scratch *pin = &m->pin;
    CU_CHECK(b, cudaEventSynchronize(m->loaded));
    size_t bytes = (size_t)n * sizeof(cuk_merge_desc);
    if (pin->bytes < bytes) {
        /* a merge that failed after queuing its table copy recorded no `loaded`: before freeing,
         * wait for every upload */
        CU_CHECK(b, cudaStreamSynchronize(b->up));
        if (pin->p) CU_CHECK(b, cudaFreeHost(pin->p));
        pin->p = NULL;
        pin->bytes = 0;
        size_t want = (bytes + 4095) & ~(size_t)4095; /* whole pages: fewer regrowths */
        CU_CHECK(b, cudaMallocHost(&pin->p, want));
        pin->bytes = want;
    }
    *out = (cuk_merge_desc *)pin->p;
    return CZ_OK;
}

static cz_status cu_merge_lab(cz_backend *be, const cz_tensor *ab, const cz_merge_item *items, int n,
                              float ab_scale, uint64_t *ticket) {
    cu_backend *b = (cu_backend *)be;
    CZ_TRY(cu_enter(b));
    CZ_TRY(cu_recording_guard(b, "merge_lab"));
    if (!ticket) return cz_error_set(CZ_ERR_INVALID_ARG, "cuda merge_lab: ticket is NULL");
    if (!ab) return cz_error_set(CZ_ERR_INVALID_ARG, "cuda merge_lab: ab is NULL");
    CZ_TRY(cu_check("merge_lab", "ab", ab));
    if (ab->c != 2)
        return cz_error_set(CZ_ERR_INVALID_ARG, "cuda merge_lab: ab has %d channels, expected 2 (a, b)", ab->c);
    if (!items) return cz_error_set(CZ_ERR_INVALID_ARG, "cuda merge_lab: items is NULL");
    if (n < 1 || n > ab->n)
        return cz_error_set(CZ_ERR_INVALID_ARG, "cuda merge_lab: %d items for a batch of %d images", n, ab->n);
    /* the buffer: the descriptor table, every image's L plane, then every image's rgb, each
     * region 256-byte aligned */
    size_t t_bytes = mg_round((size_t)n * sizeof(cuk_merge_desc)), l_bytes = 0, rgb_bytes = 0;
    for (int i = 0; i < n; i++) {
        const cz_merge_item *it = &items[i];
        const char *why = merge_item_problem(it, ab->w, ab->h);
        if (why)
            return cz_error_set(CZ_ERR_INVALID_ARG,
                                "cuda merge_lab: item %d (source %dx%d, scaled %dx%d at %d,%d in a %dx%d plane): %s",
                                i, it->src_w, it->src_h, it->scaled_w, it->scaled_h, it->off_x, it->off_y, ab->w,
                                ab->h, why);
        size_t px = (size_t)it->src_w * (size_t)it->src_h;
        l_bytes += mg_round(px * sizeof(float));
        rgb_bytes += mg_round(px * 3);
    }
    CZ_TRY(copy_streams(b));
    CZ_TRY(lab_tables(b));
    cu_mslot *m = NULL;
    uint64_t seq = 0;
    CZ_TRY(take_mslot(b, t_bytes + l_bytes + rgb_bytes, &m, &seq));
    unsigned char *base = (unsigned char *)m->buf.p;
    cuk_merge_desc *desc = NULL;
    CZ_TRY(mg_table(b, m, n, &desc));
    size_t total = 0, loff = t_bytes, roff = t_bytes + l_bytes;
    for (int i = 0; i < n; i++) {
        const cz_merge_item *it = &items[i];
        size_t px = (size_t)it->src_w * (size_t)it->src_h;
        desc[i] = (cuk_merge_desc){.first_px = total,
                                   .l_off = loff,
                                   .rgb_off = roff,
                                   .img = i,
                                   .src_w = it->src_w,
                                   .src_h = it->src_h,
                                   .scaled_w = it->scaled_w,
                                   .scaled_h = it->scaled_h,
                                   .off_x = it->off_x,
                                   .off_y = it->off_y};
        total += px;
        loff += mg_round(px * sizeof(float));
        roff += mg_round(px * 3);
    }
    /* up: the table and the L planes, once the slot's previous merge is done with the buffer */
    CU_CHECK(b, cudaStreamWaitEvent(b->up, m->done, 0));
    CU_CHECK(b, cudaMemcpyAsync(base, desc, (size_t)n * sizeof *desc, cudaMemcpyHostToDevice, b->up));
    for (int i = 0; i < n; i++) {
        size_t px = (size_t)items[i].src_w * (size_t)items[i].src_h;
        CU_CHECK(b, cudaMemcpyAsync(base + desc[i].l_off, items[i].L, px * sizeof(float),
                                    cudaMemcpyHostToDevice, b->up));
    }
    CU_CHECK(b, cudaEventRecord(m->loaded, b->up));
    /* compute: behind every op queued so far (the forward pass that wrote ab) */
    CU_CHECK(b, cudaStreamWaitEvent(b->stream, m->loaded, 0));
    CUK_CHECK(b,
              cuk_merge_lab(cu_dev(ab), (int)ab->dtype, ab->h, ab->w, ab_scale, (const cuk_merge_desc *)base,
                            n, total, base, (const struct cz_lab_exact_tab *)b->lab_tab, b->stream));
    CU_CHECK(b, cudaEventRecord(m->merged, b->stream));
    /* down: the rgb images */
    CU_CHECK(b, cudaStreamWaitEvent(b->down, m->merged, 0));
    for (int i = 0; i < n; i++) {
        size_t px = (size_t)items[i].src_w * (size_t)items[i].src_h;
        CU_CHECK(b, cudaMemcpyAsync(items[i].rgb, base + desc[i].rgb_off, px * 3, cudaMemcpyDeviceToHost,
                                    b->down));
    }
    CU_CHECK(b, cudaEventRecord(m->done, b->down));
    *ticket = seq | TICKET_MERGE;
    return CZ_OK;
}

static cz_status cu_transfer_wait(cz_backend *be, uint64_t ticket) {
    cu_backend *b = (cu_backend *)be;
    CZ_TRY(cu_enter(b));
    CZ_TRY(cu_recording_guard(b, "transfer_wait"));
    int down = (ticket & TICKET_DOWN) != 0, merge = (ticket & TICKET_MERGE) != 0;
    uint64_t seq = ticket & ~(TICKET_DOWN | TICKET_MERGE);
    if (seq == 0 || (down && merge) || seq > (merge ? b->mg_seq : b->xf_seq[down]))
        return cz_error_set(CZ_ERR_INVALID_ARG, "cuda transfer_wait: no transfer has ticket %llx",
                            (unsigned long long)ticket);
    if (merge)
        CU_CHECK(b, cudaEventSynchronize(mslot(b, seq)->done));
    else
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
    for (int i = 0; i < MG_SLOTS; i++) {
        cu_mslot *m = &b->mg[i];
        if (m->loaded) cudaEventDestroy(m->loaded);
        if (m->merged) cudaEventDestroy(m->merged);
        if (m->done) cudaEventDestroy(m->done);
        if (m->buf.p) cudaFree(m->buf.p);
        if (m->pin.p) cudaFreeHost(m->pin.p);
        m->loaded = m->merged = m->done = NULL;
        m->buf.p = m->pin.p = NULL;
        m->buf.bytes = m->pin.bytes = 0;
    }
    if (b->lab_tab) cudaFree(b->lab_tab);
    b->lab_tab = NULL;
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
    ops->merge_lab = cu_merge_lab;
}
