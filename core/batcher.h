/* batcher.h: the inference queue and its device-owner thread (DESIGN.md "Threads").
 *
 * HTTP threads prepare a job (decode + cz_cjob_prepare), submit it and suspend their
 * connection. ONE device thread owns the colorizer (and so the backend): it groups queued jobs
 * by network size (net_w x net_h), and sends a group as one forward pass when it holds
 * `max_batch` jobs or its oldest job has waited `max_wait_us`. After the pass it calls each
 * job's `done` callback (on the device thread; the callback must be short, e.g. resume the
 * connection). A job whose deadline has passed before its batch starts is not run: it
 * completes with CZ_ERR_DEADLINE. The queue is bounded: submit fails at once with
 * CZ_ERR_QUEUE_FULL when `max_queue` jobs wait, and with CZ_ERR_SHUTTING_DOWN once draining.
 * Every submitted job gets exactly one `done` call, whatever happens (ran, failed, expired,
 * shut down): nothing accepted is lost.
 *
 * The model can be swapped between batches (cz_batcher_call with a function that replaces the
 * colorizer) without failing a request.
 *
 * Thread-safety: submit/depth/stats/ready may be called from any thread; create/drain/destroy
 * from one controlling thread. Tested by tests/unit/test_batcher.c (also under TSan). */
#ifndef CZ_BATCHER_H
#define CZ_BATCHER_H

#include <stdint.h>

#include "colorize.h"
#include "status.h"

typedef struct cz_bjob cz_bjob;
typedef void (*cz_bjob_done_fn)(cz_bjob *job, void *user);

/* Owned by the submitter; must stay valid until its done callback has been called. */
struct cz_bjob {
    cz_cjob cjob;        /* prepared by the caller; net_out is filled when status == CZ_OK */
    int64_t deadline_ns; /* CLOCK_MONOTONIC; 0 = none */
    cz_bjob_done_fn done;
    void *user;
    /* results, written by the batcher before `done` */
    cz_status status;
    char error[256];        /* detail when status != CZ_OK */
    int64_t t_submit_ns;    /* when submitted */
    int64_t t_start_ns;     /* when its batch started (0 when it never ran) */
    int64_t t_end_ns;       /* when its batch ended / it was dropped */
    int batch_size;         /* images in the forward pass it ran in */
    /* internal */
    cz_bjob *next_;
};

#define CZ_BATCHER_MAX_RENDERS 6
#define CZ_BATCHER_MAX_SHAPES 56 /* leaves 8 of the U-Net's plans to shapes planned on demand */

typedef struct cz_batcher_opts {
    int max_batch;        /* 1..colorizer max_batch */
    int64_t max_wait_us;  /* how long the oldest job of a group may wait for company */
    int max_queue;        /* jobs waiting, at most */
    int high_water;       /* depth at which cz_batcher_ready() reports "queue_high" */
    int warmup_render;    /* render size to warm up at start (0 = none) */
    /* more render sizes planned and warmed up at start, after warmup_render; every size warmed
     * up (square, max_batch images) keeps its plan: later sizes never evict it. One of these
     * that runs out of memory ends the list there (logged; planned on first use instead). */
    int more_renders[CZ_BATCHER_MAX_RENDERS];
    int n_more_renders;
    /* network shapes planned at start in all: the renders' squares always, then their other
     * aspect ratios (cz_colorizer_warm_steps) while fewer than this many are planned; 0 plans
     * the squares only. At most CZ_BATCHER_MAX_SHAPES. */
    int plan_shapes;
    int64_t idle_grace_us; /* background work starts only this long after the last forward pass */
    cz_backend *be;       /* the colorizer's backend, asked for health() after a failed pass (optional) */
    /* called once, on the device thread, when that backend reports a sticky device error */
    void (*on_device_lost)(void *arg, const char *why);
    void *on_device_lost_arg;
} cz_batcher_opts;

typedef struct cz_batcher_stats {
    uint64_t batches, images, expired, failed;
    uint64_t batch_size_hist[17]; /* [k] = batches of size k for k < 16, [16] = 16 or more */
    double infer_seconds_sum;     /* forward-pass wall time, summed over batches */
    double infer_seconds_max;
    int depth;                    /* jobs waiting now */
    /* the model's plans, as of the last warm-up or batch: network shapes planned, and the bytes
     * of activation memory they hold (cz_unet_plan_bytes) */
    int planned_shapes;
    uint64_t activation_bytes;
} cz_batcher_stats;

typedef struct cz_batcher cz_batcher;

/* Starts the device thread. The batcher takes ownership of `cz` (destroyed with it). Warm-up
 * (plans and a forward pass for every batch size up to max_batch at warmup_render, then at
 * each of more_renders, then the other shapes of those renders up to plan_shapes) runs on the
 * device thread; cz_batcher_ready() reports "warming_up" until it is done. */
cz_status cz_batcher_create(cz_colorizer *cz, const cz_batcher_opts *opt, cz_batcher **out);
/* Queues a job (its cjob prepared, done set). CZ_ERR_QUEUE_FULL / CZ_ERR_SHUTTING_DOWN at once
 * (the callback is then NOT called: the caller still owns the job). */
cz_status cz_batcher_submit(cz_batcher *b, cz_bjob *job);
int cz_batcher_depth(cz_batcher *b);
void cz_batcher_stats_get(cz_batcher *b, cz_batcher_stats *out);
/* NULL when ready to serve; otherwise a reason: "warming_up", "queue_high", "draining",
 * "device_error: ...". */
const char *cz_batcher_ready(cz_batcher *b, char *buf, int cap);
/* Runs `fn(cz, arg)` on the device thread between batches (e.g. to read model info or swap
 * weights) and waits for it. Returns fn's status. */
cz_status cz_batcher_call(cz_batcher *b, cz_status (*fn)(cz_colorizer **cz, void *arg), void *arg);
/* The same with flags: CZ_CALL_NO_WARMUP skips the warm-up after a swap (the caller warmed
 * the new colorizer aside already, e.g. one pass per call between batches). */
#define CZ_CALL_NO_WARMUP 1
cz_status cz_batcher_call_ex(cz_batcher *b, cz_status (*fn)(cz_colorizer **cz, void *arg), void *arg, int flags);
/* Background work at lower priority (training steps, DESIGN.md "Threads"). `fn(arg)` runs on
 * the device thread only when no inference job is queued, no call is pending and the batcher
 * is not draining; it does one bounded unit of work and returns non-zero when it has more
 * (it is called again as long as the queue stays empty) or 0 when it has nothing to do (then
 * it is not called again until cz_batcher_kick). So an inference job waits at most one unit.
 * fn may call submit/depth/stats/ready/kick, not call/drain/destroy. Any thread; NULL clears. */
void cz_batcher_set_idle(cz_batcher *b, int (*fn)(void *arg), void *arg);
/* Tells the device thread that the idle function has work (any thread). */
void cz_batcher_kick(cz_batcher *b);
/* Stops accepting, lets queued and running jobs finish for up to timeout_ms, then completes
 * whatever is left with CZ_ERR_SHUTTING_DOWN. Returns the number of jobs failed that way. */
int cz_batcher_drain(cz_batcher *b, int timeout_ms);
/* Drains with timeout 0 if needed, joins the thread, destroys the colorizer. NULL-safe. */
void cz_batcher_destroy(cz_batcher *b);

int64_t cz_now_ns(void); /* CLOCK_MONOTONIC in nanoseconds */

#endif
