/* batcher.c: the inference queue and its device-owner thread (contract in batcher.h).
 *
 * Ownership and threads
 *   One mutex (mu) guards everything below it in struct cz_batcher. Exactly one thread, the
 *   device thread started by cz_batcher_create, touches the colorizer (and so the backend):
 *   warm-up, forward passes and cz_batcher_call functions all run there. The lock is never
 *   held across a forward pass, a call function or a `done` callback, so callbacks may call
 *   cz_batcher_submit / depth / stats / ready. A callback must not call cz_batcher_drain
 *   (it would not wait: drain from the device thread behaves as drain(0)) nor
 *   cz_batcher_destroy (it would join its own thread).
 *
 *   `done` runs on the device thread, except for jobs that cz_batcher_drain fails with
 *   CZ_ERR_SHUTTING_DOWN: those complete on the thread that called drain (or destroy).
 *
 * Queue
 *   Jobs wait in one FIFO per network size (net_w x net_h). A group is *ready* when it holds
 *   max_batch jobs, when its oldest job has waited max_wait_us, or always while draining.
 *   Among ready groups the one whose oldest job is oldest runs first, so a size that keeps
 *   filling full batches cannot starve another size past its max_wait. A batch takes up to
 *   max_batch jobs (also capped by the current colorizer's own max_batch) from the group's
 *   head. Control requests (cz_batcher_call) run before the next batch.
 *
 * Deadlines
 *   Every time the thread looks at the queue it first removes jobs whose deadline has passed
 *   and completes them with CZ_ERR_DEADLINE (t_start_ns stays 0). While idle it sleeps on a
 *   CLOCK_MONOTONIC condition variable until the earliest of: the oldest job's max_wait
 *   expiry, the earliest queued deadline, a submit, a call, a drain. So an expired job is
 *   completed within scheduler latency of its deadline, EXCEPT while a forward pass, a call
 *   function or one warm-up pass is in progress: then it is completed right after that ends.
 *   Bound: a queued job is completed at most max(one forward pass, one call function, one
 *   warm-up pass) after its deadline (warm-up checks deadlines between its passes; a call
 *   that swaps the model also re-warms, which is checked the same way). A job already
 *   inside a running batch is not interrupted by its deadline: it completes with the batch.
 *
 * Readiness (cz_batcher_ready), first match wins: "draining", "warming_up",
 *   "device_error: <detail>", "queue_high" (depth >= high_water; high_water <= 0 disables).
 *   device_error is set when a forward pass fails with CZ_ERR_BACKEND (a library or device
 *   failure; other failures such as a bad shape are charged to the batch alone) or when
 *   warm-up fails with any status; cleared by the next successful batch. After any failed
 *   pass the backend's health() (when it has one) is asked: a sticky device error makes the
 *   batcher "lost" for good: readiness reports "device_error: device lost: ...", the jobs of
 *   that pass and every later one fail with CZ_ERR_UNAVAILABLE, background work stops, and
 *   on_device_lost is called once (the daemon then drains and exits non-zero so that a
 *   supervisor restarts it).
 *
 * Pipelining: where the colorizer is pipelined (a backend with asynchronous transfers), a batch
 *   is launched and left in flight while the loop goes on; the pass in flight is collected
 *   (and its callbacks called) right after the next batch has been launched, or as soon as no
 *   other batch is ready, or before a control request runs. So at most two passes are on the
 *   device, the second one's staging and upload overlap the first one's compute, and a batch
 *   never waits for traffic that has not arrived yet. infer_seconds of such a pass runs from
 *   its launch to its collection.
 *
 * Out of memory: a forward pass failing with CZ_ERR_NOMEM is split in halves and each half
 *   retried, down to single images; a single image that still does not fit fails alone.
 *
 * Model swap via cz_batcher_call: fn may replace *cz; the batcher destroys nothing itself,
 *   fn owns the old colorizer (typically destroys it). Jobs already queued run on the new
 *   model, so it must have the same in_ch/out_ch as the old one (their buffers were sized for
 *   it); a change is logged as an error. When the colorizer changes and warmup_render > 0,
 *   the new one is warmed up on the spot (readiness is not affected). fn's error detail is
 *   copied to the calling thread. Calling from the device thread returns CZ_ERR_INVALID_ARG.
 *
 * Background work (cz_batcher_set_idle): the idle function runs in the loop's last place, after
 *   control requests, expired jobs and ready batches, only with an empty queue, and only once
 *   idle_grace_us have passed since the last forward pass ended (clients that send their next
 *   request as soon as an answer arrives keep the device); a job submitted while it runs
 *   waits for it to return (one unit, e.g. one training step).
 *
 * Stats: batches/images/batch_size_hist/infer_seconds_* count every forward pass (failed ones
 *   too, except a pass that ran out of memory and was retried as halves), `expired` counts
 *   deadline drops, `failed` counts jobs completed with any other error (failed forward pass,
 *   shut down by drain).
 *
 * Creation: on failure the caller still owns `cz`; on success the batcher owns it.
 *
 * Tested by tests/unit/test_batcher.c (also under TSan with CZ_TEST_BACKEND=ref). */
#include "batcher.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"

#define MOD "batcher"
#define MAX_WAIT_US_CAP (86400LL * 1000000LL) /* one day */

typedef struct bgroup {
    int net_w, net_h;
    cz_bjob *head, *tail;
    int n;
    struct bgroup *next;
} bgroup;

typedef struct bctl {
    cz_status (*fn)(cz_colorizer **cz, void *arg);
    void *arg;
    int no_warm; /* the caller warmed a swapped-in colorizer itself */
    cz_status result;
    int finished;
    char detail[256];
    struct bctl *next;
} bctl;

struct cz_batcher {
    cz_batcher_opts opt;
    pthread_t thread;
    /* device thread only */
    cz_colorizer *cz;
    cz_bjob **batch;   /* 2 * max_batch: the halves hold the batch in flight and the next one */
    cz_cjob **cbatch;
    /* the pipelined pass in flight (launched, not yet collected) */
    int fl_active, fl_half, fl_handle, fl_n;
    cz_bjob *fl_chain;
    int64_t fl_t0;

    pthread_mutex_t mu;
    pthread_cond_t wake; /* the device thread waits here */
    pthread_cond_t idle; /* drain and call wait here */
    bgroup *groups;
    int depth;
    int busy; /* jobs taken off the queue whose callbacks have not all run yet (a batch, or a
                 batch in flight) */
    int warming, draining, stop;
    bctl *ctl_head, *ctl_tail;
    int device_error;
    char device_error_msg[256];
    cz_batcher_stats st;
    int (*idle_fn)(void *arg); /* background work (cz_batcher_set_idle) */
    void *idle_arg;
    int idle_more; /* the idle function said it has more, or was kicked */
    int lost;      /* the backend reported a sticky device error (check_health) */
    int64_t last_batch_end_ns; /* when the last forward pass ended (idle grace) */
};

int64_t cz_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Set on the device thread to its batcher: lets call/drain recognise re-entry without reading
 * the pthread_t that pthread_create may still be writing. */
static _Thread_local const cz_batcher *tl_device_of;

static int on_device_thread(const cz_batcher *b) {
    return tl_device_of == b;
}

static void copy_text(char *dst, size_t cap, const char *src) {
    if (!cap) return;
    size_t n = strlen(src);
    if (n >= cap) n = cap - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* Completes a chain of jobs linked by next_ (lock not held). */
static void complete_chain(cz_bjob *j) {
    while (j) {
        cz_bjob *nx = j->next_;
        j->next_ = NULL;
        j->done(j, j->user);
        j = nx;
    }
}

/* ---- queue helpers (lock held) ---- */

static void group_unlink_empty(cz_batcher *b) {
    bgroup **pp = &b->groups;
    while (*pp) {
        if ((*pp)->n == 0) {
            bgroup *g = *pp;
            *pp = g->next;
            free(g);
        } else {
            pp = &(*pp)->next;
        }
    }
}

/* Moves every job whose deadline is <= now onto a chain (status filled in); returns it and
 * the earliest deadline among the jobs left in *next_deadline (INT64_MAX when none). */
static cz_bjob *take_expired(cz_batcher *b, int64_t now, int64_t *next_deadline) {
    cz_bjob *out = NULL, **out_tail = &out;
    int64_t nd = INT64_MAX;
    int any = 0;
    for (bgroup *g = b->groups; g; g = g->next) {
        cz_bjob **pp = &g->head, *prev = NULL;
        while (*pp) {
            cz_bjob *j = *pp;
            if (j->deadline_ns != 0 && j->deadline_ns <= now) {
                *pp = j->next_;
                g->n--;
                b->depth--;
                j->next_ = NULL;
                j->status = CZ_ERR_DEADLINE;
                j->t_start_ns = 0;
                j->t_end_ns = now;
                j->batch_size = 0;
                snprintf(j->error, sizeof j->error,
                         "deadline passed after %.1f ms in the queue (deadline was %.1f ms after submit)",
                         (double)(now - j->t_submit_ns) / 1e6,
                         (double)(j->deadline_ns - j->t_submit_ns) / 1e6);
                *out_tail = j;
                out_tail = &j->next_;
                b->st.expired++;
                any = 1;
            } else {
                if (j->deadline_ns != 0 && j->deadline_ns < nd) nd = j->deadline_ns;
                prev = j;
                pp = &j->next_;
            }
        }
        g->tail = prev;
    }
    if (any) group_unlink_empty(b);
    *next_deadline = nd;
    return out;
}

/* The ready group whose oldest job is oldest, or NULL; *next_ready = when the earliest
 * not-yet-ready group becomes ready by max_wait (INT64_MAX when none). */
static bgroup *pick_ready(cz_batcher *b, int64_t now, int64_t *next_ready) {
    int64_t wait_ns = b->opt.max_wait_us * 1000;
    bgroup *best = NULL;
    int64_t nr = INT64_MAX;
    for (bgroup *g = b->groups; g; g = g->next) {
        int64_t head_t = g->head->t_submit_ns;
        int ready = b->draining || g->n >= b->opt.max_batch || now - head_t >= wait_ns;
        if (ready) {
            if (!best || head_t < best->head->t_submit_ns) best = g;
        } else if (head_t + wait_ns < nr) {
            nr = head_t + wait_ns;
        }
    }
    *next_ready = nr;
    return best;
}

/* ---- device thread ---- */

/* The model's plans as the stats report them (device thread). */
static void plans_now(cz_batcher *b, int *n, uint64_t *bytes) {
    cz_unet *u = b->cz ? cz_colorizer_unet(b->cz) : NULL;
    *n = u ? cz_unet_plan_count(u) : 0;
    *bytes = u ? (uint64_t)cz_unet_plan_bytes(u) : 0;
}

/* Records them in the stats (lock not held). */
static void note_plans(cz_batcher *b) {
    int n;
    uint64_t bytes;
    plans_now(b, &n, &bytes);
    pthread_mutex_lock(&b->mu);
    b->st.planned_shapes = n;
    b->st.activation_bytes = bytes;
    pthread_mutex_unlock(&b->mu);
}

/* Warms up and plans what the options name (cz_colorizer_warm_steps: the square of
 * warmup_render and of each of more_renders at every batch size, then their other shapes up to
 * plan_shapes in all), on a zero input, so that every plan, primitive and recording exists
 * before traffic. Queued jobs keep expiring on time between steps. Running out of memory after
 * warmup_render's square is not a failure: the steps from there on are left to first use. */
static void run_warm_up(cz_batcher *b) {
    int64_t t0 = cz_now_ns();
    cz_colorizer *cz = b->cz;
    int renders[1 + CZ_BATCHER_MAX_RENDERS];
    renders[0] = b->opt.warmup_render;
    for (int i = 0; i < b->opt.n_more_renders; i++) renders[1 + i] = b->opt.more_renders[i];
    int nr = 1 + b->opt.n_more_renders;
    cz_warm_step *steps = NULL;
    int nsteps = 0, left_out = 0, passes = 0, first_done = 0, unplanned = 0, kept = 0;
    cz_status s = cz_colorizer_warm_steps(cz, renders, nr, b->opt.plan_shapes, &steps, &nsteps, &left_out);
    int k = 0;
    for (; s == CZ_OK && k < nsteps; k++) {
        int64_t next_deadline;
        pthread_mutex_lock(&b->mu);
        int stop = b->stop;
        cz_bjob *expired = take_expired(b, cz_now_ns(), &next_deadline);
        pthread_mutex_unlock(&b->mu);
        complete_chain(expired);
        if (stop) break;
        const cz_warm_step *st = &steps[k];
        if (st->n > b->opt.max_batch && !st->keep) continue; /* the batcher never runs that size */
        s = cz_colorizer_warm_step(cz, st);
        passes += st->n > 0;
        int first = st->w == renders[0] && st->h == renders[0];
        if (s == CZ_OK && first && st->keep) first_done = 1;
        if (s == CZ_OK) kept += st->keep;
        int nomem = s == CZ_ERR_NOMEM ? cz_warm_step_nomem(st, first_done) : CZ_WARM_FAIL;
        if (nomem == CZ_WARM_GO_ON) {
            CZ_LOGD(MOD, "activation stores for %dx%d not reserved at once: %s", st->w, st->h, cz_error_detail());
            s = CZ_OK;
        } else if (nomem == CZ_WARM_STOP) {
            for (int j = k; j < nsteps; j++) unplanned += steps[j].keep;
            CZ_LOGW(MOD, "%dx%d does not fit in memory at start (%s): it and the shapes after it (%d in all) are "
                    "planned on first use", st->w, st->h, cz_error_detail(), unplanned);
            s = CZ_OK;
            break;
        }
    }
    free(steps);
    note_plans(b);
    if (s == CZ_OK) {
        cz_unet *u = cz_colorizer_unet(cz);
        cz_unet_rec_stats rs = cz_unet_recording_stats(u);
        char rec[96] = "";
        if (rs.recorded || rs.failed)
            snprintf(rec, sizeof rec, "; %llu forward passes recorded as graphs, %llu could not be",
                     (unsigned long long)rs.recorded, (unsigned long long)rs.failed);
        CZ_LOGI(MOD, "warm-up took %.1f ms: %d passes, %d network shapes planned and kept (%d left to first use), "
                "%.1f MiB of activations%s", (double)(cz_now_ns() - t0) / 1e6, passes, kept, left_out + unplanned,
                (double)cz_unet_plan_bytes(u) / 1048576.0, rec);
        return;
    }
    char msg[200];
    copy_text(msg, sizeof msg, cz_error_detail());
    CZ_LOGE(MOD, "warm-up failed: %s: %s", cz_strerror(s), msg);
    pthread_mutex_lock(&b->mu);
    b->device_error = 1;
    snprintf(b->device_error_msg, sizeof b->device_error_msg, "warm-up failed: %s", msg);
    pthread_mutex_unlock(&b->mu);
}

/* Runs one control request (lock held on entry and exit; released around fn). */
static void run_ctl(cz_batcher *b, bctl *c) {
    pthread_mutex_unlock(&b->mu);
    cz_colorizer *before = b->cz;
    cz_unet_arch old_arch;
    memset(&old_arch, 0, sizeof old_arch);
    if (before) old_arch = *cz_colorizer_arch(before);
    cz_error_clear();
    c->result = c->fn(&b->cz, c->arg);
    if (c->result != CZ_OK) copy_text(c->detail, sizeof c->detail, cz_error_detail());
    if (b->cz != before) {
        if (!b->cz) {
            CZ_LOGE(MOD, "cz_batcher_call left no colorizer; batches will fail until one is set");
        } else {
            const cz_unet_arch *na = cz_colorizer_arch(b->cz);
            if (before && (na->in_ch != old_arch.in_ch || na->out_ch != old_arch.out_ch))
                CZ_LOGE(MOD, "swapped model changes channels (%d->%d to %d->%d): queued jobs unsafe",
                        old_arch.in_ch, old_arch.out_ch, na->in_ch, na->out_ch);
            else
                CZ_LOGI(MOD, "colorizer replaced between batches");
            if (b->opt.warmup_render > 0 && !c->no_warm) run_warm_up(b);
        }
    }
    note_plans(b);
    pthread_mutex_lock(&b->mu);
    c->finished = 1;
    pthread_cond_broadcast(&b->idle);
}

/* Whether the backend reports itself unusable (a sticky device error); then marks the batcher
 * lost (once) and tells the owner. Lock not held. */
static void check_health(cz_batcher *b) {
    cz_backend *be = b->opt.be;
    if (!be || !be->ops->health || b->lost) return;
    cz_error_clear();
    if (be->ops->health(be) == CZ_OK) return;
    char why[256];
    copy_text(why, sizeof why, cz_error_detail()[0] ? cz_error_detail() : "device unusable");
    CZ_LOGE(MOD, "the device is lost: %s", why);
    pthread_mutex_lock(&b->mu);
    b->lost = 1;
    b->device_error = 1;
    snprintf(b->device_error_msg, sizeof b->device_error_msg, "device lost: %.200s", why);
    pthread_mutex_unlock(&b->mu);
    if (b->opt.on_device_lost) b->opt.on_device_lost(b->opt.on_device_lost_arg, why);
}

static void run_pass(cz_batcher *b, cz_bjob **jobs, int n);

/* Applies the outcome s of a forward pass over jobs[0..n) (run from t0 to t1) to the jobs and
 * the stats (lock not held). A pass that ran out of memory is split in halves, each run again
 * (a smaller batch needs less scratch), down to single images. */
static void pass_done(cz_batcher *b, cz_bjob **jobs, int n, cz_status s, int64_t t0, int64_t t1) {
    char detail[256] = "";
    if (s != CZ_OK)
        copy_text(detail, sizeof detail, cz_error_detail()[0] ? cz_error_detail() : cz_strerror(s));
    if (s == CZ_ERR_NOMEM && n > 1) {
        CZ_LOGW(MOD, "forward pass of %d images ran out of memory (%s): retrying as %d + %d", n, detail, n / 2,
                n - n / 2);
        run_pass(b, jobs, n / 2);
        run_pass(b, jobs + n / 2, n - n / 2);
        return;
    }
    int was_lost = b->lost;
    if (s != CZ_OK) check_health(b);
    if (s != CZ_OK && b->lost && (!was_lost || s != CZ_ERR_UNAVAILABLE)) {
        /* this pass met the device's death (or was in flight when an earlier one did): its jobs
         * get what every later one gets (503), with the failing call in the message */
        CZ_LOGE(MOD, "forward pass of %d images failed as the device was lost: %s", n, detail);
        s = CZ_ERR_UNAVAILABLE;
        char lost_msg[256];
        copy_text(lost_msg, sizeof lost_msg, b->device_error_msg);
        copy_text(detail, sizeof detail, lost_msg);
    }
    for (int i = 0; i < n; i++) {
        cz_bjob *j = jobs[i];
        j->status = s;
        j->t_start_ns = t0;
        j->t_end_ns = t1;
        j->batch_size = n;
        if (s == CZ_OK)
            j->error[0] = '\0';
        else
            copy_text(j->error, sizeof j->error, detail);
    }
    if (s != CZ_OK)
        CZ_LOGE(MOD, "forward pass of %d images at %dx%d failed: %s: %s", n, jobs[0]->cjob.geom.net_w,
                jobs[0]->cjob.geom.net_h, cz_strerror(s), detail);
    double secs = (double)(t1 - t0) / 1e9;
    int plans;
    uint64_t plan_bytes;
    plans_now(b, &plans, &plan_bytes); /* a first pass at a shape not planned at start plans it */
    pthread_mutex_lock(&b->mu);
    b->st.planned_shapes = plans;
    b->st.activation_bytes = plan_bytes;
    b->st.batches++;
    b->st.images += (uint64_t)n;
    b->st.batch_size_hist[n < 16 ? n : 16]++;
    b->st.infer_seconds_sum += secs;
    if (secs > b->st.infer_seconds_max) b->st.infer_seconds_max = secs;
    if (s != CZ_OK) b->st.failed += (uint64_t)n;
    if (s == CZ_OK && !b->lost) {
        b->device_error = 0;
    } else if (s == CZ_ERR_BACKEND) {
        b->device_error = 1;
        copy_text(b->device_error_msg, sizeof b->device_error_msg, detail);
    }
    pthread_mutex_unlock(&b->mu);
}

/* One forward pass over jobs[0..n), start to end (lock not held). */
static void run_pass(cz_batcher *b, cz_bjob **jobs, int n) {
    for (int i = 0; i < n; i++) b->cbatch[i] = &jobs[i]->cjob;
    cz_error_clear();
    int64_t t0 = cz_now_ns();
    cz_status s;
    if (b->lost)
        s = cz_error_set(CZ_ERR_UNAVAILABLE, "%s", b->device_error_msg);
    else if (!b->cz)
        s = cz_error_set(CZ_ERR_UNAVAILABLE, "no model loaded");
    else
        s = cz_colorizer_run(b->cz, b->cbatch, n);
    pass_done(b, jobs, n, s, t0, cz_now_ns());
}

static void batch_ended(cz_batcher *b) {
    pthread_mutex_lock(&b->mu);
    b->last_batch_end_ns = cz_now_ns();
    pthread_mutex_unlock(&b->mu);
}

/* Collects the pass in flight, if any, and calls its callbacks (lock not held). */
static void finish_inflight(cz_batcher *b) {
    if (!b->fl_active) return;
    b->fl_active = 0;
    cz_error_clear();
    cz_status s = cz_colorizer_collect(b->cz, b->fl_handle);
    pass_done(b, b->batch + (size_t)b->fl_half * (size_t)b->opt.max_batch, b->fl_n, s, b->fl_t0, cz_now_ns());
    complete_chain(b->fl_chain);
    batch_ended(b);
}

/* Runs a batch taken from the queue (lock not held). Where the colorizer is pipelined the pass
 * is launched and left in flight, and the pass launched before it (if any) is collected and
 * completed only then: the host stages this batch and the device uploads it while the
 * previous one computes. Otherwise (or when the launch fails: the synchronous path below then
 * reports the error or splits a batch that ran out of memory) the pass runs start to end and
 * its callbacks are called before this returns. */
static void run_batch(cz_batcher *b, cz_bjob *chain, int n) {
    int half = b->fl_active ? 1 - b->fl_half : 0;
    cz_bjob **jobs = b->batch + (size_t)half * (size_t)b->opt.max_batch;
    int i = 0;
    for (cz_bjob *j = chain; j; j = j->next_) jobs[i++] = j;
    if (!b->lost && b->cz && cz_colorizer_pipelined(b->cz)) {
        for (i = 0; i < n; i++) b->cbatch[i] = &jobs[i]->cjob;
        cz_error_clear();
        int64_t t0 = cz_now_ns();
        int handle;
        if (cz_colorizer_launch(b->cz, b->cbatch, n, &handle) == CZ_OK) {
            finish_inflight(b);
            b->fl_active = 1;
            b->fl_half = half;
            b->fl_handle = handle;
            b->fl_n = n;
            b->fl_chain = chain;
            b->fl_t0 = t0;
            return;
        }
        CZ_LOGD(MOD, "launching a pass of %d images failed (%s): running it synchronously", n, cz_error_detail());
    }
    finish_inflight(b);
    run_pass(b, jobs, n);
    complete_chain(chain);
    batch_ended(b);
}

static void *device_main(void *arg) {
    cz_batcher *b = arg;
    tl_device_of = b;
    if (b->opt.warmup_render > 0) run_warm_up(b);
    pthread_mutex_lock(&b->mu);
    b->warming = 0;
    pthread_cond_broadcast(&b->idle);
    for (;;) {
        if (b->busy && !b->fl_active) { /* callbacks of the previous step have run */
            b->busy = 0;
            pthread_cond_broadcast(&b->idle);
        }
        if (b->ctl_head && b->fl_active) { /* a call may swap the model: nothing in flight then */
            pthread_mutex_unlock(&b->mu);
            finish_inflight(b);
            pthread_mutex_lock(&b->mu);
            continue;
        }
        if (b->ctl_head) {
            bctl *c = b->ctl_head;
            b->ctl_head = c->next;
            if (!b->ctl_head) b->ctl_tail = NULL;
            run_ctl(b, c); /* c may be gone once it returns */
            continue;
        }
        int64_t now = cz_now_ns(), next_deadline, next_ready;
        cz_bjob *expired = take_expired(b, now, &next_deadline);
        if (expired) {
            b->busy = 1;
            pthread_mutex_unlock(&b->mu);
            complete_chain(expired);
            pthread_mutex_lock(&b->mu);
            continue;
        }
        bgroup *g = pick_ready(b, now, &next_ready);
        if (g) {
            int cap = b->opt.max_batch;
            if (b->cz && cz_colorizer_max_batch(b->cz) < cap) cap = cz_colorizer_max_batch(b->cz);
            int n = g->n < cap ? g->n : cap;
            cz_bjob *chain = g->head, *last = chain;
            for (int i = 1; i < n; i++)
                last = last->next_;
            g->head = last->next_;
            last->next_ = NULL;
            g->n -= n;
            if (!g->head) {
                g->tail = NULL;
                group_unlink_empty(b);
            }
            b->depth -= n;
            b->busy = 1;
            pthread_mutex_unlock(&b->mu);
            run_batch(b, chain, n);
            pthread_mutex_lock(&b->mu);
            continue;
        }
        if (b->fl_active) { /* nothing else is ready: answer the batch in flight now */
            pthread_mutex_unlock(&b->mu);
            finish_inflight(b);
            pthread_mutex_lock(&b->mu);
            continue;
        }
        if (b->stop) break;
        int64_t idle_at = b->last_batch_end_ns + b->opt.idle_grace_us * 1000;
        int idle_due = b->idle_fn && b->idle_more && b->depth == 0 && !b->draining && !b->lost;
        if (idle_due && now < idle_at) { /* inference just ran: more may follow; wait out the grace */
            if (idle_at < next_ready) next_ready = idle_at;
        } else if (idle_due) {
            int (*fn)(void *) = b->idle_fn;
            void *iarg = b->idle_arg;
            b->idle_more = 0;
            pthread_mutex_unlock(&b->mu);
            int more = fn(iarg);
            pthread_mutex_lock(&b->mu);
            if (more) b->idle_more = 1; /* a kick during fn set it already */
            continue;
        }
        int64_t until = next_deadline < next_ready ? next_deadline : next_ready;
        if (until == INT64_MAX) {
            pthread_cond_wait(&b->wake, &b->mu);
        } else {
            struct timespec ts = {.tv_sec = until / 1000000000LL, .tv_nsec = until % 1000000000LL};
            pthread_cond_timedwait(&b->wake, &b->mu, &ts);
        }
    }
    /* stop: drain() has emptied the queue already; anything left is a contract breach by a
     * concurrent submitter, still completed exactly once. */
    cz_bjob *left = NULL;
    for (bgroup *g = b->groups; g; g = g->next) {
        for (cz_bjob *j = g->head; j;) {
            cz_bjob *nx = j->next_;
            j->status = CZ_ERR_SHUTTING_DOWN;
            snprintf(j->error, sizeof j->error, "shutting down");
            j->t_end_ns = cz_now_ns();
            j->next_ = left;
            left = j;
            j = nx;
        }
        g->n = 0;
    }
    group_unlink_empty(b);
    b->depth = 0;
    pthread_mutex_unlock(&b->mu);
    complete_chain(left);
    return NULL;
}

/* ---- public API ---- */

cz_status cz_batcher_create(cz_colorizer *cz, const cz_batcher_opts *opt, cz_batcher **out) {
    if (!out) return cz_error_set(CZ_ERR_INVALID_ARG, "cz_batcher_create: out is NULL");
    *out = NULL;
    if (!cz || !opt) return cz_error_set(CZ_ERR_INVALID_ARG, "cz_batcher_create: NULL colorizer or options");
    int czmax = cz_colorizer_max_batch(cz);
    if (opt->max_batch < 1 || opt->max_batch > czmax)
        return cz_error_set(CZ_ERR_INVALID_ARG, "batcher max_batch %d out of range 1..%d", opt->max_batch,
                            czmax);
    if (opt->max_wait_us < 0)
        return cz_error_set(CZ_ERR_INVALID_ARG, "batcher max_wait_us %lld is negative",
                            (long long)opt->max_wait_us);
    if (opt->max_queue < 1)
        return cz_error_set(CZ_ERR_INVALID_ARG, "batcher max_queue %d < 1", opt->max_queue);
    if (opt->warmup_render < 0)
        return cz_error_set(CZ_ERR_INVALID_ARG, "batcher warmup_render %d is negative", opt->warmup_render);
    if (opt->warmup_render > 0) CZ_TRY(cz_render_validate(cz, opt->warmup_render));
    if (opt->n_more_renders < 0 || opt->n_more_renders > CZ_BATCHER_MAX_RENDERS ||
        (opt->n_more_renders > 0 && opt->warmup_render <= 0))
        return cz_error_set(CZ_ERR_INVALID_ARG, "batcher: %d more render sizes to warm up (0..%d, and only with warmup_render)",
                            opt->n_more_renders, CZ_BATCHER_MAX_RENDERS);
    for (int i = 0; i < opt->n_more_renders; i++) CZ_TRY(cz_render_validate(cz, opt->more_renders[i]));
    if (opt->plan_shapes < 0 || opt->plan_shapes > CZ_BATCHER_MAX_SHAPES)
        return cz_error_set(CZ_ERR_INVALID_ARG, "plan_shapes %d out of range 0..%d", opt->plan_shapes,
                            CZ_BATCHER_MAX_SHAPES);

    cz_batcher *b = calloc(1, sizeof *b);
    if (!b) return cz_error_set(CZ_ERR_NOMEM, "batcher");
    b->opt = *opt;
    if (b->opt.max_wait_us > MAX_WAIT_US_CAP) b->opt.max_wait_us = MAX_WAIT_US_CAP; /* no overflow in ns */
    b->cz = cz;
    /* a swapped-in colorizer may allow more, but batches never exceed opt.max_batch */
    b->batch = calloc(2 * (size_t)opt->max_batch, sizeof *b->batch);
    b->cbatch = calloc((size_t)opt->max_batch, sizeof *b->cbatch);
    if (!b->batch || !b->cbatch) {
        free(b->batch);
        free(b->cbatch);
        free(b);
        return cz_error_set(CZ_ERR_NOMEM, "batcher");
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->wake, &ca);
    pthread_cond_init(&b->idle, &ca);
    pthread_condattr_destroy(&ca);
    b->warming = opt->warmup_render > 0;
    int rc = pthread_create(&b->thread, NULL, device_main, b);
    if (rc != 0) {
        pthread_cond_destroy(&b->wake);
        pthread_cond_destroy(&b->idle);
        pthread_mutex_destroy(&b->mu);
        free(b->batch);
        free(b->cbatch);
        free(b);
        return cz_error_set(CZ_ERR_INTERNAL, "cannot start the device thread: %s", strerror(rc));
    }
    *out = b;
    return CZ_OK;
}

cz_status cz_batcher_submit(cz_batcher *b, cz_bjob *job) {
    if (!b || !job || !job->done)
        return cz_error_set(CZ_ERR_INVALID_ARG, "cz_batcher_submit: NULL batcher, job or done callback");
    const cz_cjob *cj = &job->cjob;
    if (!cj->net_in || !cj->net_out || cj->geom.net_w < 1 || cj->geom.net_h < 1)
        return cz_error_set(CZ_ERR_INVALID_ARG, "cz_batcher_submit: job is not prepared");
    job->status = CZ_OK;
    job->error[0] = '\0';
    job->t_start_ns = 0;
    job->t_end_ns = 0;
    job->batch_size = 0;
    job->next_ = NULL;
    pthread_mutex_lock(&b->mu);
    if (b->draining) {
        pthread_mutex_unlock(&b->mu);
        return cz_error_set(CZ_ERR_SHUTTING_DOWN, "server is shutting down");
    }
    if (b->depth >= b->opt.max_queue) {
        int d = b->depth;
        pthread_mutex_unlock(&b->mu);
        return cz_error_set(CZ_ERR_QUEUE_FULL, "inference queue full (%d jobs waiting)", d);
    }
    bgroup *g = b->groups;
    while (g && (g->net_w != cj->geom.net_w || g->net_h != cj->geom.net_h))
        g = g->next;
    if (!g) {
        g = calloc(1, sizeof *g);
        if (!g) {
            pthread_mutex_unlock(&b->mu);
            return cz_error_set(CZ_ERR_NOMEM, "batcher queue");
        }
        g->net_w = cj->geom.net_w;
        g->net_h = cj->geom.net_h;
        g->next = b->groups;
        b->groups = g;
    }
    job->t_submit_ns = cz_now_ns();
    if (g->tail)
        g->tail->next_ = job;
    else
        g->head = job;
    g->tail = job;
    g->n++;
    b->depth++;
    pthread_cond_signal(&b->wake);
    pthread_mutex_unlock(&b->mu);
    return CZ_OK;
}

int cz_batcher_depth(cz_batcher *b) {
    if (!b) return 0;
    pthread_mutex_lock(&b->mu);
    int d = b->depth;
    pthread_mutex_unlock(&b->mu);
    return d;
}

void cz_batcher_stats_get(cz_batcher *b, cz_batcher_stats *out) {
    if (!out) return;
    memset(out, 0, sizeof *out);
    if (!b) return;
    pthread_mutex_lock(&b->mu);
    *out = b->st;
    out->depth = b->depth;
    pthread_mutex_unlock(&b->mu);
}

const char *cz_batcher_ready(cz_batcher *b, char *buf, int cap) {
    if (!b) return "draining";
    const char *reason = NULL;
    pthread_mutex_lock(&b->mu);
    if (b->draining) {
        reason = "draining";
    } else if (b->warming) {
        reason = "warming_up";
    } else if (b->device_error) {
        if (buf && cap > 0) {
            snprintf(buf, (size_t)cap, "device_error: %s", b->device_error_msg);
            reason = buf;
        } else {
            reason = "device_error";
        }
    } else if (b->opt.high_water > 0 && b->depth >= b->opt.high_water) {
        reason = "queue_high";
    }
    pthread_mutex_unlock(&b->mu);
    if (reason && reason != buf && buf && cap > 0) {
        copy_text(buf, (size_t)cap, reason);
        return buf;
    }
    return reason;
}

cz_status cz_batcher_call(cz_batcher *b, cz_status (*fn)(cz_colorizer **cz, void *arg), void *arg) {
    return cz_batcher_call_ex(b, fn, arg, 0);
}

cz_status cz_batcher_call_ex(cz_batcher *b, cz_status (*fn)(cz_colorizer **cz, void *arg), void *arg, int flags) {
    if (!b || !fn) return cz_error_set(CZ_ERR_INVALID_ARG, "cz_batcher_call: NULL batcher or function");
    if (on_device_thread(b))
        return cz_error_set(CZ_ERR_INVALID_ARG, "cz_batcher_call from the device thread would deadlock");
    bctl c;
    memset(&c, 0, sizeof c);
    c.fn = fn;
    c.arg = arg;
    c.no_warm = (flags & CZ_CALL_NO_WARMUP) != 0;
    pthread_mutex_lock(&b->mu);
    if (b->stop) {
        pthread_mutex_unlock(&b->mu);
        return cz_error_set(CZ_ERR_SHUTTING_DOWN, "batcher stopped");
    }
    if (b->ctl_tail)
        b->ctl_tail->next = &c;
    else
        b->ctl_head = &c;
    b->ctl_tail = &c;
    pthread_cond_signal(&b->wake);
    while (!c.finished)
        pthread_cond_wait(&b->idle, &b->mu);
    pthread_mutex_unlock(&b->mu);
    if (c.result != CZ_OK)
        return cz_error_set(c.result, "%s", c.detail[0] ? c.detail : cz_strerror(c.result));
    return CZ_OK;
}

void cz_batcher_set_idle(cz_batcher *b, int (*fn)(void *arg), void *arg) {
    pthread_mutex_lock(&b->mu);
    b->idle_fn = fn;
    b->idle_arg = arg;
    b->idle_more = fn != NULL;
    pthread_cond_signal(&b->wake);
    pthread_mutex_unlock(&b->mu);
}

void cz_batcher_kick(cz_batcher *b) {
    pthread_mutex_lock(&b->mu);
    b->idle_more = 1;
    pthread_cond_signal(&b->wake);
    pthread_mutex_unlock(&b->mu);
}

int cz_batcher_drain(cz_batcher *b, int timeout_ms) {
    if (!b) return 0;
    int64_t until = cz_now_ns() + (int64_t)(timeout_ms > 0 ? timeout_ms : 0) * 1000000LL;
    int self = on_device_thread(b);
    pthread_mutex_lock(&b->mu);
    if (!b->draining) CZ_LOGI(MOD, "draining: %d jobs queued, timeout %d ms", b->depth, timeout_ms);
    b->draining = 1;
    pthread_cond_signal(&b->wake);
    if (!self) {
        struct timespec ts = {.tv_sec = until / 1000000000LL, .tv_nsec = until % 1000000000LL};
        while ((b->depth > 0 || b->busy) && cz_now_ns() < until) {
            if (pthread_cond_timedwait(&b->idle, &b->mu, &ts) == ETIMEDOUT) break;
        }
    }
    int64_t now = cz_now_ns();
    cz_bjob *left = NULL, **tail = &left;
    int count = 0;
    for (bgroup *g = b->groups; g; g = g->next) {
        for (cz_bjob *j = g->head; j; j = j->next_) {
            j->status = CZ_ERR_SHUTTING_DOWN;
            j->t_start_ns = 0;
            j->t_end_ns = now;
            j->batch_size = 0;
            snprintf(j->error, sizeof j->error,
                     "shutting down: not run within the %d ms drain timeout (queued %.1f ms)", timeout_ms,
                     (double)(now - j->t_submit_ns) / 1e6);
            count++;
        }
        if (g->head) {
            *tail = g->head;
            tail = &g->tail->next_;
        }
        g->n = 0;
        g->head = g->tail = NULL;
    }
    group_unlink_empty(b);
    b->depth = 0;
    b->st.failed += (uint64_t)count;
    pthread_mutex_unlock(&b->mu);
    if (count) CZ_LOGW(MOD, "drain: %d queued jobs failed with shutting_down", count);
    complete_chain(left);
    return count;
}

void cz_batcher_destroy(cz_batcher *b) {
    if (!b) return;
    cz_batcher_drain(b, 0);
    pthread_mutex_lock(&b->mu);
    b->stop = 1;
    pthread_cond_signal(&b->wake);
    pthread_mutex_unlock(&b->mu);
    pthread_join(b->thread, NULL);
    cz_colorizer_destroy(b->cz);
    pthread_cond_destroy(&b->wake);
    pthread_cond_destroy(&b->idle);
    pthread_mutex_destroy(&b->mu);
    free(b->batch);
    free(b->cbatch);
    free(b);
}
