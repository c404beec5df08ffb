/* colorize.h: the data path of one photo, split in the three stages the daemon runs on
 * different threads (DESIGN.md "Data path"):
 *   prepare (any thread): decoded image -> full-resolution L, render geometry, network input
 *   run     (model owner thread): a batch of prepared jobs of the same network size -> U-Net
 *   finish  (any thread): predicted ab (lab mode) or RGB (rgb mode) -> crop, upsample, merge
 *           with the ORIGINAL L -> RGB image whose luminance equals the input's.
 * cz_colorize_files-style batching for the CLI lives in cli/; this module only knows jobs.
 *
 * A cz_colorizer owns a backend-resident cz_unet; cz_colorizer_run must be called by one thread
 * at a time. prepare/finish only read the colorizer's immutable architecture and may run
 * concurrently with run. Tested by tests/unit/test_colorize.c. */
#ifndef CZ_COLORIZE_H
#define CZ_COLORIZE_H

#include "backend.h"
#include "image.h"
#include "unet.h"

struct cz_host_pool;

typedef struct cz_colorizer_opts {
    int max_batch;      /* images per forward pass (planned at this size) */
    cz_dtype precision; /* fp32 or bf16 (backend permitting) */
    /* Optional (NULL: none): page-locked job memory. On a backend that finishes on the device
     * (merge_lab) with a lab model, a job whose L and RGB fit in it is finished by the device:
     * the host then neither upsamples nor converts it (see cz_cjob_finish). Not owned. */
    struct cz_host_pool *pool;
    /* 1: every forward pass runs max_batch images (cz_unet_set_full_batches; server.full_batches) */
    int full_batches;
} cz_colorizer_opts;

typedef struct cz_colorizer cz_colorizer;

/* Loads weights (validated) onto `be`. The backend stays owned by the caller. */
cz_status cz_colorizer_create(cz_backend *be, const char *weights_path, const cz_colorizer_opts *opt,
                              cz_colorizer **out);
void cz_colorizer_destroy(cz_colorizer *cz);
const cz_unet_arch *cz_colorizer_arch(const cz_colorizer *cz);
cz_unet *cz_colorizer_unet(cz_colorizer *cz);
/* FNV-1a 64 of the weights file and its parameter count, for /model and logs. */
uint64_t cz_colorizer_checksum(const cz_colorizer *cz);
int cz_colorizer_max_batch(const cz_colorizer *cz);

/* Render sizes: the long side the network sees. Valid values are positive multiples of
 * 2^depth up to CZ_RENDER_MAX. */
#define CZ_RENDER_MAX 4096
cz_status cz_render_validate(const cz_colorizer *cz, int render);

typedef struct cz_cjob {
    cz_render_geom geom;
    int src_channels;
    float *L_full;  /* src_w * src_h, Lab L of the source */
    float *net_in;  /* in_ch planes of net_w * net_h */
    float *net_out; /* out_ch planes of net_w * net_h, filled by run (host finish) */
    /* device finish: the colorized RGB (src_w * src_h * 3), in the same pool block as L_full;
     * NULL when the job is finished on the host */
    uint8_t *rgb;
    int rgb_ready;  /* set by run when the device finished the job into rgb */
    struct cz_host_pool *pool;
    void *pool_block;
} cz_cjob;

/* Computes L, geometry and the network input for `src` at `render`. With a pool (opts) and a
 * device that finishes (merge_lab), L and the RGB output go in one pool block when one fits
 * and the scaling is bilinear (the scaled image at most twice the source per axis). */
cz_status cz_cjob_prepare(const cz_colorizer *cz, const cz_image *src, int render, cz_cjob *job);
/* Runs n jobs (all with the same net_w x net_h, n <= max_batch) through the U-Net. */
cz_status cz_colorizer_run(cz_colorizer *cz, cz_cjob *const *jobs, int n);
/* cz_colorizer_run in two halves (model owner thread). launch stages the jobs' inputs and
 * starts the pass; where cz_colorizer_pipelined says so it returns before the device is done,
 * so the caller can launch the next batch (whose upload then overlaps this one's compute)
 * before collecting this one. collect waits for the pass and fills its jobs' net_out. At most
 * CZ_COLORIZER_PASSES passes are in flight; collect each exactly once (a failed collect too).
 * A failed launch leaves nothing in flight. The jobs must stay alive
 * and unchanged until their pass is collected. */
#define CZ_COLORIZER_PASSES 2
cz_status cz_colorizer_launch(cz_colorizer *cz, cz_cjob *const *jobs, int n, int *handle);
cz_status cz_colorizer_collect(cz_colorizer *cz, int handle);
int cz_colorizer_pipelined(const cz_colorizer *cz);
/* The network shapes photos at `render` can have: render x render first, then render x k*m and
 * k*m x render (wide, then tall) for k from render/m - 1 down to 1, m = 2^depth: nearest the
 * square first, which is where most photos land (a 4:3 photo at 1024 with m 256 runs at
 * 1024x768). Writes up to cap (w, h) pairs and returns how many there are (0 for an invalid
 * render). */
int cz_render_shapes(const cz_colorizer *cz, int render, int *w, int *h, int cap);
/* One forward pass of n zero images at a network shape, so that the plan and primitives of that
 * (n, shape) exist before traffic (model owner thread); two where the backend records forward
 * passes, so that the recording exists too. n == 0 plans the shape for max_batch without
 * running it. */
cz_status cz_colorizer_warm_shape(cz_colorizer *cz, int net_w, int net_h, int n);
/* The warm-up steps of a shape, as batch sizes for cz_colorizer_warm_shape, largest first: a
 * square runs every size max_batch..1. Another shape runs the padded sizes where the backend
 * records forward passes (its algorithms are chosen and its recordings made before traffic)
 * and is only planned (0) elsewhere: on a CPU a pass per batch size at every shape would
 * take minutes at large renders, and a first pass there adds only the creation of its
 * primitives. With full batches (cz_colorizer_opts) every shape runs max_batch alone (a shape
 * without recordings that is not a square is only planned). Returns the count written (at most
 * cap). */
int cz_colorizer_warm_sizes(const cz_colorizer *cz, int square, int *n, int cap);
/* The warm-up a daemon does at start and after a model swap, as steps of one
 * cz_colorizer_warm_shape call each, so that queued work can run between them:
 *   1. the square of the largest of `renders` planned alone (when it is not renders[0]), so
 *      that the shared activation stores are allocated once at their final size;
 *   2. the square of each render, in the order given, at every batch size max_batch..1;
 *   3. the other shapes of each render (cz_render_shapes order) with cz_colorizer_warm_sizes,
 *      while fewer than max_shapes shapes are planned; *left_out counts the others, which are
 *      planned on first use.
 * A step with keep set is its shape's last: cz_colorizer_warm_step then keeps the plan. *out is
 * malloc'd (free it). CZ_ERR_INVALID_ARG for an invalid render. */
typedef struct cz_warm_step {
    int w, h; /* network shape */
    int n;    /* batch size; 0 = plan only */
    int keep; /* the shape's last step: keep its plan */
} cz_warm_step;
cz_status cz_colorizer_warm_steps(const cz_colorizer *cz, const int *renders, int nr, int max_shapes,
                                  cz_warm_step **out, int *count, int *left_out);
cz_status cz_colorizer_warm_step(cz_colorizer *cz, const cz_warm_step *st);
/* What a warm-up does when step st ran out of memory, given whether renders[0]'s square is
 * planned and kept already: CZ_WARM_FAIL (the daemon cannot serve its main render),
 * CZ_WARM_GO_ON (st only reserved the stores at the largest render: that render's own steps
 * will tell) or CZ_WARM_STOP (the rest is left to be planned on first use). */
enum { CZ_WARM_FAIL = 0, CZ_WARM_GO_ON = 1, CZ_WARM_STOP = 2 };
int cz_warm_step_nomem(const cz_warm_step *st, int first_done);
/* Builds the colorized RGB image from a job that has run: a copy of the device's result where
 * the device finished it (rgb_ready), else the merge on this thread. Byte-identical either way. */
cz_status cz_cjob_finish(const cz_colorizer *cz, const cz_cjob *job, cz_image *out);
void cz_cjob_release(cz_cjob *job); /* frees buffers; NULL-safe; the struct may be reused */

#endif
