/* backend.h: the compute backend interface (a table of function pointers plus an opaque
 * context, in the spirit of ggml's backends) and the registry that picks one by name.
 *
 * Tensors
 *   cz_tensor is a small value type: a logical NCHW shape, a dtype, and a pointer to storage
 *   that the backend allocated (host memory for CPU backends, device memory for CUDA). The
 *   backend chooses the physical layout at allocation (plain NCHW, or a blocked layout such as
 *   oneDNN's nChw16c) and records it in `layout`; only the backend that allocated a tensor
 *   interprets its storage. Host code moves data in and out with tensor_write/tensor_read,
 *   always as plain fp32 NCHW. Weight tensors use the same 4-d shape: conv weights are
 *   (out, in, kh, kw), transposed-conv weights (in, out, kh, kw) as in PyTorch; vectors
 *   (bias, BatchNorm parameters) are (1, C, 1, 1).
 *
 *   Batch views: a tensor allocated for batch N can be used with any n <= N by copying the
 *   struct and lowering `n` (cz_tensor_batch_view). Every layout a backend uses must keep
 *   batch as the outermost dimension so that such a view is the buffer's prefix.
 *
 * Ops
 *   Forward ops for inference and training, and a backward slot for each. Output tensors are
 *   allocated by the caller (the model plans all memory once; ops never allocate tensors,
 *   though a backend may cache primitives / scratch keyed by shape on first use). A backend
 *   leaves a slot NULL when it does not implement it; cz_backend_call_* helpers turn that into
 *   CZ_ERR_UNSUPPORTED. Every op validates shapes and returns CZ_ERR_SHAPE with a detail.
 *   `y == x` (in place) is allowed for act_fwd only.
 *
 *   Storage reuse: a copy of an allocated tensor's struct with the same c, dtype, role and
 *   layout but another cap_n, h and w (n <= cap_n) names a tensor of that shape in the first
 *   bytes of the same storage, and every op takes it, as long as cap_n * c * h * w elements
 *   fit in what was allocated (backends that can tell refuse one that does not with
 *   CZ_ERR_SHAPE). It owns nothing: only the allocated struct is freed. The U-Net shares its
 *   activation stores between network shapes this way (unet.h).
 *
 *   Channel views (concat-free skips): where view_ok(be, t, c0, nc) returns non-zero, the view
 *   cz_tensor_channel_view(t, c0, nc) may be the output y of conv2d and deconv2d and the
 *   input or output of act_fwd, so a decoder writes straight into its half of the skip
 *   buffer. Every other use of a view, and any view on a backend whose view_ok is NULL, is
 *   refused with CZ_ERR_UNSUPPORTED.
 *
 * Threading: a backend instance is used by one thread at a time (the device-owner thread in
 * the server). Creating several instances is allowed.
 *
 * Tested by tests/unit/test_ops.c (every op of every backend against `ref`). */
#ifndef CZ_BACKEND_H
#define CZ_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

typedef enum cz_dtype { CZ_F32 = 0, CZ_BF16 = 1, CZ_F16 = 2 } cz_dtype;

/* Size in bytes of one element of `dt`. */
size_t cz_dtype_size(cz_dtype dt);
const char *cz_dtype_name(cz_dtype dt);
/* Parses "fp32"/"f32", "bf16", "fp16"/"f16"; returns -1 when unknown. */
int cz_dtype_parse(const char *name);

/* What a tensor is for: lets a backend pick the best physical layout at allocation. */
typedef enum cz_role {
    CZ_ROLE_ACT = 0,      /* activations, gradients of activations */
    CZ_ROLE_CONV_W = 1,   /* conv weights (out, in, kh, kw) */
    CZ_ROLE_DECONV_W = 2, /* transposed-conv weights (in, out, kh, kw) */
    CZ_ROLE_VEC = 3       /* per-channel vectors (1, C, 1, 1) */
} cz_role;

typedef struct cz_tensor {
    void *data;     /* backend storage; NULL for an unallocated tensor */
    cz_dtype dtype;
    cz_role role;
    int layout;     /* backend-private layout id; 0 = plain NCHW */
    int n, c, h, w; /* logical shape; n may be lowered for a batch view */
    int cap_n;      /* batch the storage was allocated for */
    int c_off;      /* channel view: first channel of this tensor within its storage */
    int c_store;    /* channel view: channels of the storage (0 = not a view) */
} cz_tensor;

static inline size_t cz_tensor_numel(const cz_tensor *t) {
    return (size_t)t->n * (size_t)t->c * (size_t)t->h * (size_t)t->w;
}
static inline cz_tensor cz_tensor_batch_view(cz_tensor t, int n) {
    t.n = n;
    return t;
}
/* Channel view: channels [c0, c0+nc) of t, sharing its storage. Only where the backend's
 * view_ok() accepts it (see below). */
static inline cz_tensor cz_tensor_channel_view(cz_tensor t, int c0, int nc) {
    if (!t.c_store) t.c_store = t.c;
    t.c_off += c0;
    t.c = nc;
    return t;
}
static inline int cz_tensor_is_view(const cz_tensor *t) {
    return t->c_store != 0 && (t->c_store != t->c || t->c_off != 0);
}

/* One image of a batch finished on the device (merge_lab below). */
typedef struct cz_merge_item {
    const float *L;       /* full-resolution lightness, src_w * src_h floats, [0, 100] */
    uint8_t *rgb;         /* out: src_w * src_h interleaved 8-bit RGB */
    int src_w, src_h;     /* the source image */
    int scaled_w, scaled_h; /* the scaled image inside the network plane ... */
    int off_x, off_y;     /* ... and where it sits */
} cz_merge_item;

/* One parameter of a multi-tensor Adam step (adam_multi below): the same four tensors as
 * adam_step's. */
typedef struct cz_adam_item {
    cz_tensor *param;
    const cz_tensor *grad;
    cz_tensor *m, *v;
} cz_adam_item;

/* Loss slots of loss_queue / loss_read / adam_multi below. */
#define CZ_LOSS_SLOTS 8
/* Step variables of var_set / dropout_fwd_var / adam_multi_var below. */
#define CZ_STEP_VARS 16

typedef enum cz_act { CZ_ACT_NONE = 0, CZ_ACT_RELU = 1, CZ_ACT_LRELU = 2, CZ_ACT_TANH = 3 } cz_act;

/* Square kernels; kernel size comes from the weight tensor. `act` is applied after the bias
 * (fused where the backend can). `alpha` is LeakyReLU's negative slope. */
typedef struct cz_conv_params {
    int stride;
    int pad;
    cz_act act;
    float alpha;
} cz_conv_params;

typedef struct cz_backend cz_backend;
/* An opaque recorded op sequence (see record_begin below). */
typedef struct cz_recording cz_recording;

typedef struct cz_backend_ops {
    const char *name; /* "ref", "dnnl", "cuda" */

    void (*destroy)(cz_backend *be);
    /* Whether tensors/ops of this dtype are supported (CZ_F32 always is). */
    int (*supports)(cz_backend *be, cz_dtype dt);

    /* ---- memory ---- */
    /* In: t->dtype, t->role, t->n/c/h/w. Out: t->data, t->layout, t->cap_n = t->n. */
    cz_status (*tensor_alloc)(cz_backend *be, cz_tensor *t);
    void (*tensor_free)(cz_backend *be, cz_tensor *t); /* NULL data is a no-op */
    /* Host side is always plain NCHW fp32 with numel(t) elements. */
    cz_status (*tensor_write)(cz_backend *be, cz_tensor *t, const float *src);
    cz_status (*tensor_read)(cz_backend *be, const cz_tensor *t, float *dst);
    cz_status (*tensor_zero)(cz_backend *be, cz_tensor *t);
    /* Waits for queued work (no-op on synchronous backends). */
    cz_status (*sync)(cz_backend *be);
    /* Whether channels [c0, c0+nc) of allocated tensor t can be used as a channel view (see
     * "Channel views" above). NULL: views unsupported. */
    int (*view_ok)(cz_backend *be, const cz_tensor *t, int c0, int nc);

    /* ---- forward ---- */
    /* y = act(conv(x, w) + b); b may be NULL. */
    cz_status (*conv2d)(cz_backend *be, const cz_tensor *x, const cz_tensor *w, const cz_tensor *b,
                        const cz_conv_params *p, cz_tensor *y);
    /* y = act(conv_transpose(x, w) + b); b may be NULL. Output size (h-1)*stride - 2*pad + k. */
    cz_status (*deconv2d)(cz_backend *be, const cz_tensor *x, const cz_tensor *w,
                          const cz_tensor *b, const cz_conv_params *p, cz_tensor *y);
    /* Inference BatchNorm with running statistics: y = (x-mean)/sqrt(var+eps)*gamma + beta. */
    cz_status (*bn_infer)(cz_backend *be, const cz_tensor *x, const cz_tensor *gamma,
                          const cz_tensor *beta, const cz_tensor *mean, const cz_tensor *var,
                          float eps, cz_tensor *y);
    /* Training BatchNorm with batch statistics (biased variance for normalization). Writes the
     * batch mean and 1/sqrt(var+eps) to save_mean/save_invstd (1,C,1,1, fp32) for backward,
     * and updates running_mean/running_var (unbiased variance) with `momentum` when not NULL. */
    cz_status (*bn_train_fwd)(cz_backend *be, const cz_tensor *x, const cz_tensor *gamma,
                              const cz_tensor *beta, float eps, float momentum,
                              cz_tensor *running_mean, cz_tensor *running_var,
                              cz_tensor *save_mean, cz_tensor *save_invstd, cz_tensor *y);
    /* y = act(x); y may equal x. */
    cz_status (*act_fwd)(cz_backend *be, cz_act act, float alpha, const cz_tensor *x, cz_tensor *y);
    /* y = concat(a, b) along channels: y->c == a->c + b->c. */
    cz_status (*concat)(cz_backend *be, const cz_tensor *a, const cz_tensor *b, cz_tensor *y);
    /* Inverted dropout with a counter-based RNG, identical on every backend. For the logical
     * NCHW index i of an element (whatever the physical layout), arithmetic mod 2^64:
     *   z = seed + (i+1) * 0x9E3779B97F4A7C15
     *   z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9;  z = (z ^ (z >> 27)) * 0x94D049BB133111EB
     *   z = z ^ (z >> 31)                         (the (i+1)-th SplitMix64 output)
     *   u = (float)(z >> 40) * 2^-24;  keep = u >= p (fp32)
     *   mask = keep ? 1.0f/(1.0f-p) : 0;  y = x * mask.  mask has x's shape. */
    cz_status (*dropout_fwd)(cz_backend *be, float p, uint64_t seed, const cz_tensor *x,
                             cz_tensor *mask, cz_tensor *y);
    /* Mean over all elements of BCE-with-logits(x, target) with a constant target (0 or 1). */
    cz_status (*bce_logits_fwd)(cz_backend *be, const cz_tensor *x, float target, double *loss);
    /* Mean absolute difference mean|a - b|. */
    cz_status (*l1_fwd)(cz_backend *be, const cz_tensor *a, const cz_tensor *b, double *loss);

    /* ---- backward (training) ---- */
    /* dx = conv2d backward-data. */
    cz_status (*conv2d_bwd_data)(cz_backend *be, const cz_tensor *dy, const cz_tensor *w,
                                 const cz_conv_params *p, cz_tensor *dx);
    /* dw (+)= grad wrt weights; db (+)= grad wrt bias when db != NULL. accumulate != 0 adds
     * to the existing gradient instead of overwriting it. */
    cz_status (*conv2d_bwd_weights)(cz_backend *be, const cz_tensor *x, const cz_tensor *dy,
                                    const cz_conv_params *p, cz_tensor *dw, cz_tensor *db,
                                    int accumulate);
    cz_status (*deconv2d_bwd_data)(cz_backend *be, const cz_tensor *dy, const cz_tensor *w,
                                   const cz_conv_params *p, cz_tensor *dx);
    cz_status (*deconv2d_bwd_weights)(cz_backend *be, const cz_tensor *x, const cz_tensor *dy,
                                      const cz_conv_params *p, cz_tensor *dw, cz_tensor *db,
                                      int accumulate);
    cz_status (*bn_train_bwd)(cz_backend *be, const cz_tensor *x, const cz_tensor *dy,
                              const cz_tensor *gamma, const cz_tensor *save_mean,
                              const cz_tensor *save_invstd, cz_tensor *dx, cz_tensor *dgamma,
                              cz_tensor *dbeta, int accumulate);
    /* dx = dy * act'(.), computed from the forward output y (relu, lrelu, tanh all allow it). */
    cz_status (*act_bwd)(cz_backend *be, cz_act act, float alpha, const cz_tensor *y,
                         const cz_tensor *dy, cz_tensor *dx);
    /* Splits dy (channels a.c + b.c) into da, db; accumulate adds to them. */
    cz_status (*concat_bwd)(cz_backend *be, const cz_tensor *dy, cz_tensor *da, cz_tensor *db,
                            int accumulate);
    cz_status (*dropout_bwd)(cz_backend *be, const cz_tensor *mask, const cz_tensor *dy,
                             cz_tensor *dx);
    /* dx = scale * d(mean BCE)/dx. */
    cz_status (*bce_logits_bwd)(cz_backend *be, const cz_tensor *x, float target, float scale,
                                cz_tensor *dx);
    /* da = scale * d(mean|a-b|)/da (sign(a-b)/numel, 0 at equality). */
    cz_status (*l1_bwd)(cz_backend *be, const cz_tensor *a, const cz_tensor *b, float scale,
                        cz_tensor *da);
    /* One Adam step on fp32 params: m,v moments; t is the 1-based step count. */
    cz_status (*adam_step)(cz_backend *be, cz_tensor *param, const cz_tensor *grad, cz_tensor *m,
                           cz_tensor *v, float lr, float beta1, float beta2, float eps, int t);

    /* ---- optional extensions (appended; NULL where a backend has none) ---- */
    /* Whether the instance can still run work. CZ_OK, or CZ_ERR_BACKEND once a device error left
     * it unusable ("sticky": every later op fails too). The owner should then stop using the
     * instance: a server fails its readiness probe and exits non-zero so that a supervisor
     * restarts it. CPU backends leave this NULL (always healthy). */
    cz_status (*health)(cz_backend *be);

    /* Recorded op sequences (CUDA graphs), used by the model's forward pass. After
     * record_begin, the ops called until record_end are recorded instead of run (their outputs
     * are undefined until a replay); record_end hands back the recording, or an error after
     * which nothing was recorded and the instance works as before. replay queues the recorded
     * ops again, on the same tensors (like any op: tensor_read or sync waits for them). Only ops
     * between already-allocated tensors may be recorded: no tensor_write/read, sync, alloc or
     * free, no loss op that reads back to the host (bce_logits_fwd, l1_fwd, loss_read);
     * tensor_zero, loss_queue, adam_multi and the step-variable ops below may be. An op that
     * would grow backend-internal memory refuses while recording, so a sequence is run once
     * unrecorded before it is recorded. A conversion of a weight to the activations' dtype
     * that an op makes is recorded wherever the weight is first used in the recording, so a
     * replay never relies on a converted copy made before it. A recording stays valid while the
     * tensors it used live and their contents are changed only by ops; replay answers
     * CZ_ERR_UNAVAILABLE when backend-internal memory it relied on has been reallocated since
     * (the caller frees it and records again). NULL on CPU backends: run the ops instead. */
    cz_status (*record_begin)(cz_backend *be);
    cz_status (*record_end)(cz_backend *be, cz_recording **out);
    cz_status (*replay)(cz_backend *be, cz_recording *rec);
    void (*record_free)(cz_backend *be, cz_recording *rec);

    /* Host memory for the buffers a caller passes to tensor_write/tensor_read, page-locked
     * where that makes transfers faster (CUDA: DMA straight from/to it, no staging copy).
     * host_alloc returns NULL on failure; host_free(NULL) is a no-op. NULL slots: use malloc. */
    void *(*host_alloc)(cz_backend *be, size_t bytes);
    void (*host_free)(cz_backend *be, void *p);

    /* Asynchronous host transfers, so that copies overlap compute (CUDA: copy streams of their
     * own, one per direction, ordered against the ops by events). write_async queues src -> t
     * (plain NCHW fp32, as tensor_write): ops queued after it see the new contents. read_async
     * queues t -> dst behind every op queued so far. Both return at once with a ticket; `src`
     * must stay unchanged and `dst` unread until transfer_wait(ticket) has returned CZ_OK, and
     * both should come from host_alloc (pageable memory makes the copy synchronous). Waiting
     * on a read's ticket also covers every write queued before that read. A transfer's errors
     * may surface only at transfer_wait (or a later op). Not while recording. NULL slots: the
     * backend has only the synchronous tensor_write/tensor_read. */
    cz_status (*write_async)(cz_backend *be, cz_tensor *t, const float *src, uint64_t *ticket);
    cz_status (*read_async)(cz_backend *be, const cz_tensor *t, float *dst, uint64_t *ticket);
    cz_status (*transfer_wait)(cz_backend *be, uint64_t ticket);

    /* Finishing colorizations on the device, so that the host neither converts nor upsamples.
     * For image i of `ab` (the network's output: a batch view of n images, channels a and b at
     * the network size): multiply by ab_scale, crop items[i]'s scaled image, upsample it
     * bilinearly to the source size and convert it with items[i].L to 8-bit sRGB in
     * items[i].rgb, byte-identical to cz_render_merge_ab on the same ab values (the exact
     * arithmetic is shared through lab_exact.h). Bilinear only: scaled_w <= 2 * src_w and
     * scaled_h <= 2 * src_h (beyond that the host's area averaging applies). Queued like
     * read_async, behind every op queued so far: returns a ticket at once; L must stay
     * unchanged and rgb unread until transfer_wait(ticket), which also covers every write queued
     * before. L and rgb should come from host_alloc. Not while recording. NULL: the host merges. */
    cz_status (*merge_lab)(cz_backend *be, const cz_tensor *ab, const cz_merge_item *items, int n,
                           float ab_scale, uint64_t *ticket);

    /* Training steps that wait for the device once instead of once per loss (all three or
     * none). loss_queue queues the same mean as bce_logits_fwd(a, target) (b NULL) or l1_fwd(a,
     * b) into the backend's loss slot `slot` (0 <= slot < CZ_LOSS_SLOTS, 0.0 until first
     * written) and returns at once. loss_read waits for every op queued so far and copies slots
     * [0, n) to out. adam_multi queues adam_step on each of the n items (same arithmetic), all
     * of them skipped (params and moments untouched) when a slot whose bit is set in `gate`
     * holds a NaN or Inf at that point of the queue: a step can go on without reading its
     * losses and still never apply a non-finite one. loss_read not while recording (the
     * other two may be recorded). NULL: use
     * bce_logits_fwd, l1_fwd and adam_step. */
    cz_status (*loss_queue)(cz_backend *be, int slot, const cz_tensor *a, const cz_tensor *b, float target);
    cz_status (*loss_read)(cz_backend *be, double *out, int n);
    cz_status (*adam_multi)(cz_backend *be, const cz_adam_item *items, int n, float lr, float beta1, float beta2,
                            float eps, int t, unsigned gate);

    /* Step variables, so that one recording of a training step replays with each step's own
     * dropout seed, learning rate and Adam bias corrections: CZ_STEP_VARS 64-bit variables in
     * device memory, 0 until first set. var_set queues vars[first + i] = bits[i] (i < n) behind
     * every op queued so far and returns at once (bits may be reused on return); ops queued
     * after it see the new values. Not while recording. dropout_fwd_var is dropout_fwd with
     * seed = vars[seed_var] + seed_add (mod 2^64), read when it runs. adam_multi_var is
     * adam_multi with lr, 1 - beta1^t and 1 - beta2^t read when it runs, as the doubles whose
     * IEEE bits are vars[var], vars[var + 1], vars[var + 2] (adam_multi computes those three
     * the same way from its arguments: (double)lr, 1.0 - pow((double)beta1, t), ...). Both may
     * be recorded. NULL (all three): the caller passes values and does not record its steps. */
    cz_status (*var_set)(cz_backend *be, int first, int n, const uint64_t *bits);
    cz_status (*dropout_fwd_var)(cz_backend *be, float p, int seed_var, uint64_t seed_add, const cz_tensor *x,
                                 cz_tensor *mask, cz_tensor *y);
    cz_status (*adam_multi_var)(cz_backend *be, const cz_adam_item *items, int n, float beta1, float beta2, float eps,
                                int var, unsigned gate);
} cz_backend_ops;

/* Every backend instance starts with this header; implementations embed it first. */
struct cz_backend {
    const cz_backend_ops *ops;
    int threads; /* CPU threads the backend may use (0 = library default) */
};

/* ---- registry ---- */
typedef struct cz_backend_options {
    int threads; /* 0 = all available cores */
} cz_backend_options;

/* Creates a backend by name: "ref", "dnnl", "cuda", or "auto" (cuda -> dnnl -> ref, first
 * that is compiled in and initializes; the choice is logged). CZ_ERR_UNAVAILABLE when the
 * named backend is not compiled in or cannot start here (detail says why). */
cz_status cz_backend_create(const char *name, const cz_backend_options *opt, cz_backend **out);
void cz_backend_destroy(cz_backend *be);
/* Names compiled into this build, NULL-terminated. */
const char *const *cz_backend_names(void);

/* Implementations (each returns CZ_ERR_UNAVAILABLE when it cannot run here). */
cz_status cz_backend_ref_create(const cz_backend_options *opt, cz_backend **out);
cz_status cz_backend_dnnl_create(const cz_backend_options *opt, cz_backend **out);
cz_status cz_backend_cuda_create(const cz_backend_options *opt, cz_backend **out);

/* ---- convenience wrappers (NULL slot -> CZ_ERR_UNSUPPORTED with the op's name) ---- */
cz_status cz_tensor_alloc(cz_backend *be, cz_tensor *t, cz_dtype dt, cz_role role, int n, int c,
                          int h, int w);
void cz_tensor_free(cz_backend *be, cz_tensor *t);
/* Whether a model may switch its activation storage from `cur` to `dt` (both training graphs
 * use it): only before it planned memory (planned == 0), and only to a dtype `be` supports. */
cz_status cz_act_dtype_check(cz_backend *be, cz_dtype cur, cz_dtype dt, int planned);
int cz_shape_eq(const cz_tensor *a, const cz_tensor *b);

/* A host buffer for tensor_write/tensor_read: from the backend's host_alloc where it has one
 * (page-locked on CUDA), else malloc; it remembers which, so that it is freed the same way. */
typedef struct cz_host_buf {
    void *p;
    size_t bytes;
    int from_backend;
} cz_host_buf;
/* Makes hb at least `bytes` large (contents are not kept when it grows). CZ_ERR_NOMEM. */
cz_status cz_host_buf_reserve(cz_backend *be, cz_host_buf *hb, size_t bytes);
void cz_host_buf_free(cz_backend *be, cz_host_buf *hb);

/* Float <-> bfloat16 / half conversions (round to nearest even), shared by backends. */
uint16_t cz_f32_to_bf16(float f);
float cz_bf16_to_f32(uint16_t h);
uint16_t cz_f32_to_f16(float f);
float cz_f16_to_f32(uint16_t h);

#endif
