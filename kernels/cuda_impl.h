/* cuda_impl.h: private interface of the `cuda` backend, shared by its C files
 * (backend_cuda.c: instance + memory; backend_cuda_ops.c: the op table's ops; cudnn_ops.c: every
 * cuDNN call). Not part of core: only kernels/ includes it, and it is the only place outside
 * the .cu files where CUDA runtime headers appear.
 *
 * Tensor storage: cz_tensor.data points to a host-side cu_buf header (magic, the device
 * pointer, size, a never-reused id and a generation counter), and t->layout is CU_LAYOUT_NHWC,
 * so a tensor from another backend (layout 0 or a oneDNN layout) is refused before its data
 * pointer is ever dereferenced. The device memory is NHWC in the tensor's dtype; batch is
 * outermost, so a batch view is a prefix of it.
 *
 * Recording (backend_cuda_graph.c): between record_begin and record_end the stream is being
 * captured into a CUDA graph; nothing may allocate, free or synchronize then (cu_recording_guard).
 * `epoch` counts reallocations of backend-internal memory a graph may point into (the scratch
 * buffers, converted weight copies) and rewrites of weights whose converted copy a graph may
 * have skipped; a recording made in an older epoch is stale. `conv_epoch` moves at record_begin
 * and record_end and makes every converted weight copy stale: inside a recording each weight's
 * first use records its conversion (a replay cannot know whether the copy is current then),
 * and after one the host no longer knows what ran (a recording is not run; a failed one never
 * will be), so the next unrecorded use converts again.
 *
 * Threading: one thread at a time per instance (contract of backend.h). Errors: CU_CHECK and
 * DNN_CHECK turn a failing call into a cz_status with "file:line: call: message"; errors that
 * leave the CUDA context unusable ("sticky") are remembered in the instance so that health()
 * and every later op report them. */
#ifndef CZ_CUDA_IMPL_H
#define CZ_CUDA_IMPL_H

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "cu_kernels.h"

#define CU_MAGIC 0x43554246u      /* "CUBF" */
#define CU_LAYOUT_NHWC 0x4e485743 /* "NHWC": the only layout this backend allocates */

typedef struct cu_buf {
    uint32_t magic;
    void *dev;      /* device memory, NHWC in the tensor's dtype */
    size_t bytes;
    uint64_t id;    /* unique per allocation, never reused */
    uint64_t gen;   /* bumped whenever the contents change through the backend */
    /* a copy of this buffer converted to another dtype (conv weights used with activations of
     * another dtype); valid while conv_gen == gen and conv_epoch == the instance's conv_epoch */
    void *conv_dev;
    size_t conv_bytes;
    int conv_dtype;
    uint64_t conv_gen;
    uint64_t conv_epoch;
} cu_buf;

typedef struct cu_dnn cu_dnn; /* cudnn_ops.c */
typedef struct cu_prof cu_prof; /* backend_cuda_prof.c */

typedef struct cu_scratch {
    void *p;
    size_t bytes;
} cu_scratch;

/* A staging buffer of the asynchronous transfers and its two events (backend_cuda_xfer.c). */
typedef struct cu_xslot {
    cu_scratch buf;
    cudaEvent_t copied; /* the host copy into / out of buf is done */
    cudaEvent_t used;   /* the compute stream's conversion from / into buf is done */
} cu_xslot;
#define XF_SLOTS 2 /* per direction: enough for two batches in flight */

/* A device buffer of merge_lab (backend_cuda_xfer.c): the call's descriptor table, its L planes
 * (floats), then its rgb outputs (bytes); the page-locked host memory the table is built in;
 * and the events that order its three stages. */
typedef struct cu_mslot {
    cu_scratch buf;
    cu_scratch pin;     /* host (cudaMallocHost): the descriptor table before it goes up */
    cudaEvent_t loaded; /* up: the table and the L planes are in buf (pin is free again) */
    cudaEvent_t merged; /* compute: the kernel has written the rgb outputs */
    cudaEvent_t done;   /* down: the rgb outputs are on the host (buf is free again) */
} cu_mslot;
#define MG_SLOTS 2 /* enough for two batches in flight */

typedef struct cu_backend {
    cz_backend base;
    int device;
    int cc_major; /* compute capability of the device (8 = Ampere, 9 = Hopper, ...) */
    cudaStream_t stream;
    cu_dnn *dnn;
    cu_scratch ws;   /* cuDNN workspace, shared by every convolution */
    cu_scratch tmp;  /* staging for host transfers, temporaries of other dtypes */
    cu_scratch red;  /* reduction partials and per-channel statistics */
    cu_scratch tmp2; /* a second temporary (conv weight gradients of another dtype) */
    uint64_t next_id;
    int allow_tf32;  /* COLORIZE_CUDA_TF32=1: fp32 convolutions may use TF32 tensor cores */
    int force_naive; /* COLORIZE_CUDA_NAIVE=1: never use cuDNN (debugging) */
    size_t ws_limit; /* largest cuDNN workspace an algorithm may ask for */
    int recording;   /* the stream is being captured (record_begin .. record_end) */
    int no_graphs;   /* COLORIZE_CUDA_GRAPHS=0: record_begin answers CZ_ERR_UNSUPPORTED */
    int no_views;    /* COLORIZE_CUDA_VIEWS=0: view_ok refuses every view */
    int thin;        /* conv_thin.cu's kernels in use: bit 0 the conv (default), bit 1 the transposed
                      * conv (COLORIZE_CUDA_THIN=all); 0 with COLORIZE_CUDA_THIN=0 or NAIVE */
    uint64_t epoch;  /* see "Recording" above */
    uint64_t conv_epoch; /* likewise */
    int sticky;      /* a sticky CUDA error happened: the instance is unusable */
    char sticky_msg[256];
    char device_name[256];
    /* asynchronous transfers (backend_cuda_xfer.c): copy streams, made on first use */
    cudaStream_t up, down;
    cu_xslot xf[2][XF_SLOTS]; /* [0] uploads, [1] downloads */
    uint64_t xf_seq[2];       /* transfers issued per direction */
    /* merge_lab (backend_cuda_xfer.c): slots used in turn, and the lab_exact.h tables on the
     * device (copied on the first merge, never reallocated) */
    cu_mslot mg[MG_SLOTS];
    uint64_t mg_seq; /* merges issued */
    void *lab_tab;
    /* loss_queue's slots (backend_cuda_ops.c): sums on the device, made zero on first use, and
     * the element count of each slot's last loss (its mean = sum / count, taken at loss_read);
     * the step variables (var_set) follow the slots in the same allocation */
    double *loss_dev;
    uint64_t *vars_dev;
    unsigned rec_loss_slots; /* slots loss_queue wrote in the recording being made (bit per slot) */
    double loss_count[CZ_LOSS_SLOTS];
    cu_prof *prof; /* COLORIZE_CUDA_PROFILE=1 (backend_cuda_prof.c), else NULL */
} cu_backend;

/* Error conversion (backend_cuda.c). */
cz_status cu_fail(cu_backend *b, cudaError_t e, const char *file, int line, const char *expr);
#define CU_CHECK(b, expr)                                                                          \
    do {                                                                                           \
        cudaError_t cu_e_ = (expr);                                                                \
        if (cu_e_ != cudaSuccess) return cu_fail((b), cu_e_, __FILE__, __LINE__, #expr);           \
    } while (0)
/* Profiling (backend_cuda_prof.c): a mark tags the device work queued after it; free when off. */
void cu_prof_start(cu_backend *b);
void cu_prof_finish(cu_backend *b);
void cu_prof_mark_(cu_backend *b, const char *what);
void cu_prof_markf_(cu_backend *b, const char *fmt, ...);
#define cu_prof_mark(b, what)                                                                      \
    do {                                                                                           \
        if ((b)->prof) cu_prof_mark_((b), (what));                                                 \
    } while (0)
#define cu_prof_markf(b, ...)                                                                      \
    do {                                                                                           \
        if ((b)->prof) cu_prof_markf_((b), __VA_ARGS__);                                           \
    } while (0)
/* For our kernel launchers (they return cudaGetLastError() as int); marked for the profile. */
#define CUK_CHECK(b, expr)                                                                         \
    do {                                                                                           \
        cu_prof_mark((b), #expr);                                                                  \
        CU_CHECK(b, (cudaError_t)(expr));                                                          \
    } while (0)
/* cudaStreamSynchronize on the compute stream; the profile charges the time until the next
 * launch to the host. */
#define CU_SYNC(b)                                                                                 \
    do {                                                                                           \
        CU_CHECK(b, cudaStreamSynchronize((b)->stream));                                           \
        cu_prof_mark((b), "host: after a sync");                                                 \
    } while (0)

/* CZ_OK, or CZ_ERR_UNSUPPORTED naming `what` when the stream is being recorded (allocation,
 * host transfers and synchronization cannot be part of a CUDA graph). */
cz_status cu_recording_guard(const cu_backend *b, const char *what);

/* Grows a scratch buffer to at least `bytes` (contents not kept); refused while recording. */
cz_status cu_scratch_get(cu_backend *b, cu_scratch *s, size_t bytes, void **out);
/* Replaces s's buffer by one of exactly `bytes` (contents not kept; cudaFree waits for the
 * device, so nothing queued still uses the old one). No recording guard, no epoch change: for
 * buffers no recording uses. */
cz_status cu_scratch_resize(cu_backend *b, cu_scratch *s, size_t bytes);

static inline cu_buf *cu_buf_of(const cz_tensor *t) { return (cu_buf *)t->data; }
static inline void *cu_dev(const cz_tensor *t) { return cu_buf_of(t)->dev; }
/* Elements from one pixel to the next (the storage's channels) and the first channel: (c, 0)
 * for a dense tensor, (c_store, c_off) for a channel view. */
static inline int cu_ch_stride(const cz_tensor *t) { return t->c_store ? t->c_store : t->c; }
static inline int cu_ch_off(const cz_tensor *t) { return t->c_off; }
static inline void cu_touch(const cz_tensor *t) {
    if (t && t->data) cu_buf_of(t)->gen++;
}
/* Device pointer of w's contents in dtype `dt` (a cached converted copy when w->dtype != dt). */
cz_status cu_weight_as(cu_backend *b, const cz_tensor *w, cz_dtype dt, const void **out);

/* Validation shared by the ops (backend_cuda.c). */
cz_status cu_enter(cu_backend *b);
cz_status cu_check(const char *op, const char *name, const cz_tensor *t);
/* cu_check, but a channel view is accepted (for the ops backend.h allows views on). */
cz_status cu_check_view(const char *op, const char *name, const cz_tensor *t);
cz_status cu_check_opt(const char *op, const char *name, const cz_tensor *t);
cz_status cu_expect_shape(const char *op, const char *name, const cz_tensor *t, int n, int c, int h, int w);
cz_status cu_expect_same(const char *op, const char *name, const cz_tensor *t, const cz_tensor *like);
cz_status cu_expect_vec(const char *op, const char *name, const cz_tensor *t, int c);

/* ---- cudnn_ops.c: convolutions in cuDNN's terms (see cuk_conv in cu_kernels.h) ---- */
cz_status cdn_create(cu_backend *b);
void cdn_destroy(cu_backend *b);
/* y = conv(x, w) */
cz_status cdn_conv_fwd(cu_backend *b, const cuk_conv *p, const void *x, const void *w, void *y);
/* dx = conv backward data(w, dy) */
cz_status cdn_conv_bwd_data(cu_backend *b, const cuk_conv *p, const void *w, const void *dy, void *dx);
/* dw (+)= conv backward filter(x, dy) */
cz_status cdn_conv_bwd_filter(cu_backend *b, const cuk_conv *p, const void *x, const void *dy, void *dw,
                              int accumulate);
/* Plans cached so far (for logs and tests). */
int cdn_plan_count(const cu_backend *b);
int cdn_any_determinism(const cu_backend *b); /* COLORIZE_CUDA_NONDET=1 in effect */
/* For the start-up line: how conv_small.cu's kernels are used when not by race ("" when raced). */
const char *cdn_direct_note(const cu_backend *b);
const char *cdn_version_string(void);

/* The op table: backend_cuda_ops.c fills every slot (calling cu_fill_mem_ops from
 * backend_cuda.c for the memory ones and cu_fill_graph_ops from backend_cuda_graph.c for
 * recording and host memory). */
void cu_fill_ops(cz_backend_ops *ops);
void cu_fill_mem_ops(cz_backend_ops *ops);
void cu_fill_graph_ops(cz_backend_ops *ops);
void cu_fill_xfer_ops(cz_backend_ops *ops);
/* backend_cuda_xfer.c (which also fills merge_lab): waits for both copy streams; frees their
 * streams, events and buffers, the merge slots and the device copy of the merge tables. */
cz_status cu_xfer_sync(cu_backend *b);
void cu_xfer_destroy(cu_backend *b);

#endif
