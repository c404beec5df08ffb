/* unet.h: the pix2pix U-Net generator (Isola et al. 2017, appendix; layer for layer as the
 * reference `UnetGenerator` with BatchNorm, see DESIGN.md "Model") written once against the
 * backend interface.
 *
 * Architecture: `depth` levels (8 for 256x256 inputs; 5..8 accepted so small test networks
 * can run on 32..128 px inputs), widths ngf * min(2^i, 8). Weights live in safetensors files
 * with the architecture in `__metadata__` (format "colorize-unet", version "1", ngf, depth,
 * in_ch, out_ch, color_mode, norm "batch", bn_eps) and tensors named per level:
 *   down.{i}.weight (out,in,4,4); down.{i}.bn.{weight,bias,running_mean,running_var} for
 *   1 <= i <= depth-2; up.{i}.weight (in,out,4,4) (ConvTranspose layout); up.0.bias;
 *   up.{i}.bn.* for 1 <= i <= depth-1.
 *
 * Inference (this file): BatchNorm folded into the convolutions at load, dropout off, every
 * activation fused into the conv that produces it where the graph allows:
 *   s[i]  = lrelu(down_i(...))            i = 0..depth-2   (the skip carries LeakyReLU(x),
 *                                                           as the reference's in-place op)
 *   r     = relu(down_{depth-1}(s[depth-2]))
 *   u[i]  = relu(up_i(...)),              i = depth-1..1
 *   c[i]  = relu(concat(s[i], u[i+1]))    i = 0..depth-2   (ReLU(LReLU(x)) == ReLU(x))
 *   out   = tanh(up_0(c[0]) + bias)
 * Where the backend supports channel views, u[i+1] is written straight into the second half of
 * c[i] and relu(s[i]) into the first, so no concat copy is made.
 * All activations for a (max_batch, h, w) shape are planned once (cz_unet_plan); forward
 * allocates nothing and runs any batch n <= max_batch through batch views. A plan owns no
 * memory: the input, output and intermediate activations of all plans share one store per
 * tensor, sized for the largest plan, since passes run one after another in launch order on the
 * backend and never need two sets at once (on cuda every op that touches them runs on the one
 * compute stream; transfers go through staging buffers). So planning every network shape a
 * render can produce costs what the largest one needs alone. One image's output
 * does not depend on what else is in its batch (tests/unit/test_unet.c checks it bit for bit).
 * On a backend with recordings (CUDA graphs) the device part of a forward pass is recorded
 * once per (plan, padded batch size) and replayed: a batch of n runs as the next power of two
 * (or max_batch), the extra rows holding leftovers whose outputs are never read.
 *
 * Threading: a cz_unet is used by one thread at a time (its backend's owner).
 * Tested by tests/unit/test_unet.c (loading, validation, batch invariance, ref vs dnnl) and
 * tests/unit/test_unet_golden.c (against PyTorch fixtures from tests/golden/). */
#ifndef CZ_UNET_H
#define CZ_UNET_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "safetensors.h"
#include "status.h"

typedef enum cz_color_mode { CZ_COLOR_LAB = 0, CZ_COLOR_RGB = 1 } cz_color_mode;

typedef struct cz_unet_arch {
    int ngf;
    int depth;
    int in_ch, out_ch;
    cz_color_mode mode;
    float bn_eps;
} cz_unet_arch;

#define CZ_UNET_MAX_DEPTH 8
#define CZ_UNET_MIN_DEPTH 5
#define CZ_UNET_MAX_PARAMS (4 * CZ_UNET_MAX_DEPTH * 5)

/* Default lab architecture with the given ngf (depth 8, 1 -> 2 channels, eps 1e-5). */
cz_unet_arch cz_unet_arch_default(int ngf, cz_color_mode mode);
cz_status cz_unet_arch_validate(const cz_unet_arch *a);
/* Reads and checks the architecture from safetensors metadata. */
cz_status cz_unet_arch_from_meta(const cz_safetensors *st, cz_unet_arch *a);
/* Writes the architecture as metadata. */
cz_status cz_unet_arch_to_meta(const cz_unet_arch *a, cz_st_writer *w);
const char *cz_color_mode_name(cz_color_mode m);
int cz_color_mode_parse(const char *name); /* -1 when unknown */

/* Channel width of level i. */
int cz_unet_width(const cz_unet_arch *a, int level);
/* Inputs must be multiples of this (2^depth). */
int cz_unet_multiple(const cz_unet_arch *a);

/* The parameters a weights file must hold, in layer order. */
typedef struct cz_unet_param_spec {
    char name[40];
    int ndim;
    int64_t shape[4];
} cz_unet_param_spec;
int cz_unet_param_specs(const cz_unet_arch *a, cz_unet_param_spec *out, int cap);
/* Learnable parameter count (running statistics excluded). */
size_t cz_unet_param_count(const cz_unet_arch *a);
/* Multiply-add FLOPs (2 per MAC) of one forward pass at h x w. */
double cz_unet_flops(const cz_unet_arch *a, int h, int w);

/* Freshly initialized weights as in pix2pix (`init_type normal`, gain 0.02): conv weights
 * N(0, 0.02), BatchNorm gamma N(1, 0.02), beta 0, running mean 0 / var 1, bias 0.
 * Adds metadata and tensors to `w`. */
cz_status cz_unet_init_weights(const cz_unet_arch *a, uint64_t seed, cz_st_writer *w);
/* The same initialization for any parameter list in our naming (the PatchGAN uses it), drawn
 * from the SplitMix64 stream `rng`. */
cz_status cz_init_params_pix2pix(const cz_unet_param_spec *specs, int n, uint64_t rng, cz_st_writer *w);

typedef struct cz_unet cz_unet;

/* Validates `st` against its metadata architecture (every tensor present, shape and dtype
 * right, values finite, variances non-negative; unexpected down.* / up.* tensors refused;
 * other namespaces ignored), folds BatchNorm and uploads weights to `be` in `precision`. */
cz_status cz_unet_create(cz_backend *be, const cz_safetensors *st, cz_dtype precision,
                         cz_unet **out);
void cz_unet_destroy(cz_unet *u);
const cz_unet_arch *cz_unet_get_arch(const cz_unet *u);
cz_dtype cz_unet_precision(const cz_unet *u);
cz_backend *cz_unet_backend(const cz_unet *u);

/* Plans activations for up to max_batch images of h x w (multiples of cz_unet_multiple).
 * Replaces an existing plan for the same h x w when max_batch grows. A unet keeps up to
 * CZ_UNET_MAX_PLANS plans; planning another evicts the least recently used one that is not
 * kept (CZ_ERR_UNAVAILABLE when every plan is kept). A plan larger than the shared stores hold
 * grows them: the new stores are allocated first (CZ_ERR_NOMEM leaves every plan as it was),
 * then the backend is synced, the old stores freed and every recording dropped (counted as
 * stale; each size records again on its next pass). */
#define CZ_UNET_MAX_PLANS 64
cz_status cz_unet_plan(cz_unet *u, int max_batch, int h, int w);
/* Marks the existing h x w plan as kept: never evicted (the daemon keeps the sizes it planned
 * at start). CZ_ERR_INVALID_ARG when there is no such plan. */
cz_status cz_unet_plan_keep(cz_unet *u, int h, int w);
/* Plans held now, and whether one for h x w (and at least max_batch images) is among them. */
int cz_unet_plan_count(const cz_unet *u);
int cz_unet_has_plan(const cz_unet *u, int max_batch, int h, int w);
int cz_unet_plan_kept(const cz_unet *u, int h, int w); /* whether h x w is planned and kept */
/* Runs n images (NCHW fp32 host buffers: in n*in_ch*h*w values in [-1,1], out n*out_ch*h*w).
 * Requires a plan for h x w with max_batch >= n. */
cz_status cz_unet_forward(cz_unet *u, int n, int h, int w, const float *in, float *out);
/* cz_unet_forward in two halves, so that the host can prepare the next batch while the device
 * runs this one. launch queues the upload, the device part and the download and returns a
 * ticket; `in` must stay unchanged and `out` unread until cz_unet_wait(ticket) returned CZ_OK.
 * Both should come from the backend's host_alloc (cz_host_buf). On a backend without
 * asynchronous transfers launch runs the whole pass and wait returns at once. Passes run in
 * launch order; a later launch may reuse the plan's activations, which the backend orders. */
cz_status cz_unet_launch(cz_unet *u, int n, int h, int w, const float *in, float *out, uint64_t *ticket);
cz_status cz_unet_wait(cz_unet *u, uint64_t ticket);
/* cz_unet_launch without the download, for output consumed on the device (merge_lab): queues the
 * upload of `in` and the device part, and gives the output's batch view in *out (valid until the
 * next pass, of any size, is queued; ops queued after this call and before that pass see the
 * pass's result). `in`
 * stays the caller's until a later transfer's ticket that covers it has been waited on.
 * Asynchronous backends only (CZ_ERR_UNSUPPORTED otherwise). */
cz_status cz_unet_launch_device(cz_unet *u, int n, int h, int w, const float *in, cz_tensor *out);
/* Whether cz_unet_launch returns before the pass is done (the backend transfers asynchronously). */
int cz_unet_async(const cz_unet *u);
/* The device part of a forward pass alone, on whatever the (shared) input holds, then a
 * sync: what a batch costs without host transfers (benchmarks). Same rules as forward. */
cz_status cz_unet_forward_device(cz_unet *u, int n, int h, int w);
/* Bytes of activation memory held: the shared stores. */
size_t cz_unet_plan_bytes(const cz_unet *u);

/* Recordings: one slot per padded batch size of a plan (sizes 1, 2, 4, ... below max_batch,
 * and max_batch). On by default where the backend has them; cz_unet_set_recording(u, 0) runs
 * every op directly (tests compare the two). The counters say what forward passes did. */
#define CZ_UNET_REC_SLOTS 14
typedef struct cz_unet_rec_stats {
    uint64_t recorded;   /* recordings made */
    uint64_t replays;    /* forward passes run from a recording */
    uint64_t unrecorded; /* forward passes run op by op (first of a size, or recording failed) */
    uint64_t stale;      /* recordings dropped because the backend or the stores moved memory */
    uint64_t failed;     /* recordings that failed (that size then runs op by op) */
} cz_unet_rec_stats;
void cz_unet_set_recording(cz_unet *u, int on);
/* Full batches (off by default): every forward pass on the device runs the plan's max_batch
 * images, the rows past n holding whatever an earlier pass left, so that the backend computes
 * one problem size per shape. Where the backend's arithmetic depends on the batch size (cuDNN
 * picks other kernels, with other rounding, for other sizes: seen in bf16 on an H200), that
 * keeps an image's output the same bits alone or in any batch; it costs a lone image the time
 * of a full batch. Recording then uses the max_batch slot alone. A full pass that runs out of
 * device memory is retried at n (logged), so that a caller's split-and-retry still works. */
void cz_unet_set_full_batches(cz_unet *u, int on);
int cz_unet_full_batches(const cz_unet *u);
cz_unet_rec_stats cz_unet_recording_stats(const cz_unet *u);

#endif
