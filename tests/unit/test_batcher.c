/* test_batcher.c: the inference queue and its device thread (core/batcher.c) on a tiny U-Net
 * (ngf 4, depth 8, lab): single job equals a direct run bit for bit, concurrent jobs form one
 * batch, max_batch splits them, sizes batch separately, queue full answers at once, deadlines
 * expire promptly without running, drain and destroy complete every job exactly once, calls
 * run on the device thread and swap the model under load, readiness states, a failing batch,
 * a multi-threaded stress run, and pipelined passes (launch the next batch, then collect the
 * previous one) on a backend whose asynchronous transfers check their contract. Backend: CZ_TEST_BACKEND (default "auto"); the TSan build
 * runs it with CZ_TEST_BACKEND=ref. cmocka assertions are made on the main thread only. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "backend.h"
#include "batcher.h"
#include "colorize.h"
#include "safetensors.h"
#include "testutil.h"
#include "unet.h"

/* Guard for waits that only end early on a bug: generous, TSan + ref on a loaded box is slow. */
#define WAIT_MS 120000

static char *g_w1, *g_w2;     /* weights files, seeds 5 and 6 */
static cz_backend *g_prep_be; /* ref backend for the prepare-only colorizer */
static cz_colorizer *g_prep;  /* used for cz_cjob_prepare only (never run) */

static const char *backend_name(void) {
    const char *s = getenv("CZ_TEST_BACKEND");
    return s && *s ? s : "auto";
}

static char *write_weights(uint64_t seed) {
    cz_unet_arch a = cz_unet_arch_default(4, CZ_COLOR_LAB);
    a.depth = 8;
    cz_st_writer *w;
    assert_int_equal(cz_st_writer_create(&w), CZ_OK);
    assert_int_equal(cz_unet_init_weights(&a, seed, w), CZ_OK);
    char *path = strdup("/tmp/cz_batcher_XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(cz_st_writer_save(w, path), CZ_OK);
    cz_st_writer_destroy(w);
    return path;
}

static int group_setup(void **state) {
    (void)state;
    g_w1 = write_weights(5);
    g_w2 = write_weights(6);
    cz_colorizer_opts o = {.max_batch = 1, .precision = CZ_F32};
    if (cz_backend_create("ref", NULL, &g_prep_be) != CZ_OK) return -1;
    if (cz_colorizer_create(g_prep_be, g_w1, &o, &g_prep) != CZ_OK) return -1;
    printf("backend: %s\n", backend_name());
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    cz_colorizer_destroy(g_prep);
    cz_backend_destroy(g_prep_be);
    unlink(g_w1);
    unlink(g_w2);
    free(g_w1);
    free(g_w2);
    return 0;
}

/* ---- helpers ---- */

typedef struct tracker {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
} tracker;

typedef struct tjob {
    cz_bjob bj;
    atomic_int calls;
    pthread_t done_thread;
    tracker *tr;
} tjob;

static void tracker_init(tracker *t) {
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->cv, NULL);
    t->done = 0;
}

static void tracker_fini(tracker *t) {
    pthread_mutex_destroy(&t->mu);
    pthread_cond_destroy(&t->cv);
}

/* Waits until `n` callbacks have arrived or timeout_ms passed; returns the count seen. */
static int tracker_wait(tracker *t, int n, int timeout_ms) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += timeout_ms / 1000;
    ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&t->mu);
    while (t->done < n)
        if (pthread_cond_timedwait(&t->cv, &t->mu, &ts) != 0) break;
    int d = t->done;
    pthread_mutex_unlock(&t->mu);
    return d;
}

static void on_done(cz_bjob *j, void *user) {
    tjob *t = user;
    (void)j;
    t->done_thread = pthread_self();
    atomic_fetch_add(&t->calls, 1);
    pthread_mutex_lock(&t->tr->mu);
    t->tr->done++;
    pthread_cond_broadcast(&t->tr->cv);
    pthread_mutex_unlock(&t->tr->mu);
}

/* Prepares t for a w x h gray image at `render` (no cmocka: usable from worker threads). */
static cz_status tjob_prepare(tjob *t, int w, int h, int render, uint64_t seed, tracker *tr) {
    memset(t, 0, sizeof *t);
    cz_image img;
    if (cz_image_alloc(&img, w, h, 1) != CZ_OK) return CZ_ERR_NOMEM;
    uint64_t s = seed | 1;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            img.px[(size_t)y * w + x] =
                (uint8_t)((x * 255 / w + y * 128 / h + (int)(tu_rand_u64(&s) % 32)) % 256);
    cz_status st = cz_cjob_prepare(g_prep, &img, render, &t->bj.cjob);
    cz_image_free(&img);
    atomic_init(&t->calls, 0);
    t->tr = tr;
    t->bj.done = on_done;
    t->bj.user = t;
    return st;
}

static void tjob_release(tjob *t) {
    cz_cjob_release(&t->bj.cjob);
}

static cz_batcher *make_batcher(cz_backend **be, const char *weights, int cz_max_batch,
                                const cz_batcher_opts *o) {
    assert_int_equal(cz_backend_create(backend_name(), NULL, be), CZ_OK);
    cz_colorizer_opts co = {.max_batch = cz_max_batch, .precision = CZ_F32};
    cz_colorizer *cz;
    assert_int_equal(cz_colorizer_create(*be, weights, &co, &cz), CZ_OK);
    cz_batcher *b;
    assert_int_equal(cz_batcher_create(cz, o, &b), CZ_OK);
    return b;
}

static size_t out_floats(const cz_cjob *j) {
    return (size_t)2 * j->geom.net_w * j->geom.net_h;
}

static double max_abs_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= m)) m = d; /* NaN propagates */
    }
    return m;
}

static double ms_since(int64_t t0) {
    return (double)(cz_now_ns() - t0) / 1e6;
}

/* ---- call functions ---- */

typedef struct direct_run {
    cz_cjob *job;
    pthread_t thread;
    cz_status nested;
    cz_batcher *b;
} direct_run;

static cz_status noop_fn(cz_colorizer **cz, void *arg) {
    (void)cz;
    (void)arg;
    return CZ_OK;
}

static cz_status direct_run_fn(cz_colorizer **cz, void *arg) {
    direct_run *d = arg;
    d->thread = pthread_self();
    d->nested = cz_batcher_call(d->b, noop_fn, NULL); /* must refuse, not deadlock */
    cz_cjob *p = d->job;
    return cz_colorizer_run(*cz, &p, 1);
}

static cz_status failing_fn(cz_colorizer **cz, void *arg) {
    (void)cz;
    (void)arg;
    return cz_error_set(CZ_ERR_NOT_FOUND, "the thing from the test");
}

/* ---- tests ---- */

static void test_single_job(void **state) {
    (void)state;
    cz_backend *be;
    cz_batcher_opts o = {
        .max_batch = 4, .max_wait_us = 1000, .max_queue = 16, .high_water = 0, .warmup_render = 0};
    cz_batcher *b = make_batcher(&be, g_w1, 4, &o);
    assert_null(cz_batcher_ready(b, NULL, 0));

    tracker tr;
    tracker_init(&tr);
    tjob t;
    assert_int_equal(tjob_prepare(&t, 100, 80, 256, 11, &tr), CZ_OK);
    /* argument checks */
    assert_int_equal(cz_batcher_submit(NULL, &t.bj), CZ_ERR_INVALID_ARG);
    assert_int_equal(cz_batcher_submit(b, NULL), CZ_ERR_INVALID_ARG);
    t.bj.done = NULL;
    assert_int_equal(cz_batcher_submit(b, &t.bj), CZ_ERR_INVALID_ARG);
    t.bj.done = on_done;

    int64_t before = cz_now_ns();
    assert_int_equal(cz_batcher_submit(b, &t.bj), CZ_OK);
    assert_int_equal(tracker_wait(&tr, 1, WAIT_MS), 1);
    int64_t after = cz_now_ns();
    assert_int_equal(atomic_load(&t.calls), 1);
    assert_int_equal(t.bj.status, CZ_OK);
    assert_string_equal(t.bj.error, "");
    assert_int_equal(t.bj.batch_size, 1);
    assert_true(t.bj.t_submit_ns >= before);
    assert_true(t.bj.t_start_ns >= t.bj.t_submit_ns);
    assert_true(t.bj.t_end_ns >= t.bj.t_start_ns);
    assert_true(t.bj.t_end_ns <= after);
    assert_false(pthread_equal(t.done_thread, pthread_self()));

    /* the same input run directly on the batcher's colorizer, on its thread */
    tjob ref;
    assert_int_equal(tjob_prepare(&ref, 100, 80, 256, 11, &tr), CZ_OK);
    direct_run d = {.job = &ref.bj.cjob, .b = b};
    assert_int_equal(cz_batcher_call(b, direct_run_fn, &d), CZ_OK);
    assert_int_equal(d.nested, CZ_ERR_INVALID_ARG);
    assert_true(pthread_equal(d.thread, t.done_thread));
    assert_memory_equal(ref.bj.cjob.net_out, t.bj.cjob.net_out, out_floats(&t.bj.cjob) * sizeof(float));

    /* fn's status and detail reach the caller */
    assert_int_equal(cz_batcher_call(b, failing_fn, NULL), CZ_ERR_NOT_FOUND);
    assert_non_null(strstr(cz_error_detail(), "the thing from the test"));
    assert_int_equal(cz_batcher_call(b, NULL, NULL), CZ_ERR_INVALID_ARG);

    cz_batcher_stats st;
    cz_batcher_stats_get(b, &st);
    assert_int_equal(st.batches, 1);
    assert_int_equal(st.images, 1);
    assert_int_equal(st.batch_size_hist[1], 1);
    assert_int_equal(st.failed, 0);
    assert_true(st.infer_seconds_sum > 0 && st.infer_seconds_max > 0);
    assert_int_equal(st.depth, 0);

    cz_batcher_destroy(b);
    cz_batcher_destroy(NULL);
    cz_backend_destroy(be);
    tjob_release(&t);
    tjob_release(&ref);
    tracker_fini(&tr);
}

typedef struct submitter {
    cz_batcher *b;
    tjob *job;
    pthread_barrier_t *bar;
    cz_status rc;
} submitter;

static void *submit_thread(void *arg) {
    submitter *s = arg;
    pthread_barrier_wait(s->bar);
    s->rc = cz_batcher_submit(s->b, &s->job->bj);
    return NULL;
}

static void check_batching(int max_batch) {
    enum { N = 8 };
    cz_backend *be;
    /* the window is far longer than 8 threads need to submit, even on a loaded CI machine */
    cz_batcher_opts o = {.max_batch = max_batch, .max_wait_us = 10000000, .max_queue = 64, .warmup_render = 0};
    cz_batcher *b = make_batcher(&be, g_w1, 8, &o);
    tracker tr;
    tracker_init(&tr);
    tjob jobs[N];
    submitter sub[N];
    pthread_t th[N];
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, N);
    for (int i = 0; i < N; i++) {
        assert_int_equal(tjob_prepare(&jobs[i], 64 + 10 * i, 64, 256, (uint64_t)i + 1, &tr), CZ_OK);
        sub[i] = (submitter){.b = b, .job = &jobs[i], .bar = &bar};
    }
    int64_t t0 = cz_now_ns();
    for (int i = 0; i < N; i++)
        assert_int_equal(pthread_create(&th[i], NULL, submit_thread, &sub[i]), 0);
    for (int i = 0; i < N; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < N; i++)
        assert_int_equal(sub[i].rc, CZ_OK);
    assert_int_equal(tracker_wait(&tr, N, WAIT_MS), N);
    double ms = ms_since(t0);
    printf("max_batch %d: 8 jobs done in %.1f ms\n", max_batch, ms);
    for (int i = 0; i < N; i++) {
        assert_int_equal(jobs[i].bj.status, CZ_OK);
        assert_int_equal(jobs[i].bj.batch_size, max_batch);
        assert_int_equal(atomic_load(&jobs[i].calls), 1);
    }
    cz_batcher_stats st;
    cz_batcher_stats_get(b, &st);
    assert_int_equal(st.batches, N / max_batch);
    assert_int_equal(st.images, N);
    assert_int_equal(st.batch_size_hist[max_batch], N / max_batch);
    if (max_batch == N) { /* a full batch starts at once, without waiting out max_wait (10 s) */
        int64_t first = jobs[0].bj.t_submit_ns;
        for (int i = 1; i < N; i++)
            if (jobs[i].bj.t_submit_ns < first) first = jobs[i].bj.t_submit_ns;
        assert_true(jobs[0].bj.t_start_ns - first < 5000 * 1000000LL);
    }
    cz_batcher_destroy(b);
    cz_backend_destroy(be);
    pthread_barrier_destroy(&bar);
    for (int i = 0; i < N; i++)
        tjob_release(&jobs[i]);
    tracker_fini(&tr);
}

static void test_batching_8(void **state) {
    (void)state;
    check_batching(8);
}

static void test_batching_4(void **state) {
    (void)state;
    check_batching(4);
}

static void test_sizes_batch_separately(void **state) {
    (void)state;
    cz_backend *be;
    cz_batcher_opts o = {.max_batch = 4, .max_wait_us = 1000000, .max_queue = 64, .warmup_render = 0};
    cz_batcher *b = make_batcher(&be, g_w1, 4, &o);
    tracker tr;
    tracker_init(&tr);
    tjob jobs[4];
    assert_int_equal(tjob_prepare(&jobs[0], 100, 80, 256, 1, &tr), CZ_OK);
    assert_int_equal(tjob_prepare(&jobs[1], 600, 100, 512, 2, &tr), CZ_OK);
    assert_int_equal(tjob_prepare(&jobs[2], 80, 100, 256, 3, &tr), CZ_OK);
    assert_int_equal(tjob_prepare(&jobs[3], 500, 120, 512, 4, &tr), CZ_OK);
    assert_int_equal(jobs[1].bj.cjob.geom.net_w, 512);
    assert_int_equal(jobs[1].bj.cjob.geom.net_h, 256);
    for (int i = 0; i < 4; i++)
        assert_int_equal(cz_batcher_submit(b, &jobs[i].bj), CZ_OK);
    assert_int_equal(tracker_wait(&tr, 4, WAIT_MS), 4);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(jobs[i].bj.status, CZ_OK);
        assert_int_equal(jobs[i].bj.batch_size, 2);
        /* waited for company up to max_wait */
        assert_true(jobs[i].bj.t_start_ns - jobs[i].bj.t_submit_ns >= 900 * 1000000LL);
    }
    assert_true(jobs[0].bj.t_start_ns == jobs[2].bj.t_start_ns);
    assert_true(jobs[1].bj.t_start_ns == jobs[3].bj.t_start_ns);
    assert_true(jobs[0].bj.t_start_ns != jobs[1].bj.t_start_ns);
    cz_batcher_stats st;
    cz_batcher_stats_get(b, &st);
    assert_int_equal(st.batches, 2);
    assert_int_equal(st.batch_size_hist[2], 2);
    cz_batcher_destroy(b);
    cz_backend_destroy(be);
    for (int i = 0; i < 4; i++)
        tjob_release(&jobs[i]);
    tracker_fini(&tr);
}

static void test_queue_full_and_drain(void **state) {
    (void)state;
    cz_backend *be;
    cz_batcher_opts o = {
        .max_batch = 4, .max_wait_us = 10000000, .max_queue = 2, .high_water = 2, .warmup_render = 0};
    cz_batcher *b = make_batcher(&be, g_w1, 4, &o);
    tracker tr;
    tracker_init(&tr);
    tjob jobs[3];
    for (int i = 0; i < 3; i++)
        assert_int_equal(tjob_prepare(&jobs[i], 90, 90, 256, (uint64_t)i + 7, &tr), CZ_OK);
    assert_int_equal(cz_batcher_submit(b, &jobs[0].bj), CZ_OK);
    assert_null(cz_batcher_ready(b, NULL, 0));
    assert_int_equal(cz_batcher_submit(b, &jobs[1].bj), CZ_OK);
    char buf[128];
    const char *r = cz_batcher_ready(b, buf, sizeof buf);
    assert_non_null(r);
    assert_string_equal(r, "queue_high");
    int64_t t0 = cz_now_ns();
    assert_int_equal(cz_batcher_submit(b, &jobs[2].bj), CZ_ERR_QUEUE_FULL);
    assert_true(ms_since(t0) < 2000); /* at once, not after max_wait (10 s) */
    assert_int_equal(cz_batcher_depth(b), 2);
    usleep(20000);
    assert_int_equal(tracker_wait(&tr, 1, 0), 0); /* still waiting for company (max_wait 10 s) */

    t0 = cz_now_ns();
    assert_int_equal(cz_batcher_drain(b, WAIT_MS), 0); /* returns once done, not at the timeout */
    printf("drain of 2 queued jobs took %.1f ms\n", ms_since(t0));
    assert_int_equal(tracker_wait(&tr, 2, 0), 2); /* callbacks ran before drain returned */
    for (int i = 0; i < 2; i++) {
        assert_int_equal(jobs[i].bj.status, CZ_OK);
        assert_int_equal(jobs[i].bj.batch_size, 2);
        assert_int_equal(atomic_load(&jobs[i].calls), 1);
    }
    assert_int_equal(atomic_load(&jobs[2].calls), 0);
    assert_int_equal(cz_batcher_submit(b, &jobs[2].bj), CZ_ERR_SHUTTING_DOWN);
    r = cz_batcher_ready(b, buf, sizeof buf);
    assert_non_null(r);
    assert_string_equal(r, "draining");
    assert_int_equal(cz_batcher_drain(b, 0), 0);
    /* calls still work after drain (the thread lives until destroy) */
    assert_int_equal(cz_batcher_call(b, noop_fn, NULL), CZ_OK);
    cz_batcher_destroy(b);
    cz_backend_destroy(be);
    assert_int_equal(atomic_load(&jobs[2].calls), 0);
    for (int i = 0; i < 3; i++)
        tjob_release(&jobs[i]);
    tracker_fini(&tr);
}

static void test_deadline(void **state) {
    (void)state;
    cz_backend *be;
    cz_batcher_opts o = {.max_batch = 4, .max_wait_us = 3000000, .max_queue = 8, .warmup_render = 0};
    cz_batcher *b = make_batcher(&be, g_w1, 4, &o);
    tracker tr;
    tracker_init(&tr);
    tjob t, late;
    assert_int_equal(tjob_prepare(&t, 90, 90, 256, 3, &tr), CZ_OK);
    assert_int_equal(tjob_prepare(&late, 90, 90, 256, 4, &tr), CZ_OK);
    int64_t t0 = cz_now_ns();
    t.bj.deadline_ns = t0 + 1000000;         /* 1 ms */
    late.bj.deadline_ns = t0 + 5000000000LL; /* far: runs after max_wait */
    assert_int_equal(cz_batcher_submit(b, &t.bj), CZ_OK);
    assert_int_equal(cz_batcher_submit(b, &late.bj), CZ_OK);
    assert_int_equal(tracker_wait(&tr, 1, WAIT_MS), 1);
    double ms = ms_since(t0);
    printf("expired job completed after %.2f ms: %s\n", ms, t.bj.error);
    assert_true(ms < 1500); /* promptly: well before max_wait (3 s) */
    assert_int_equal(atomic_load(&t.calls), 1);
    assert_int_equal(t.bj.status, CZ_ERR_DEADLINE);
    assert_true(t.bj.t_start_ns == 0);
    assert_int_equal(t.bj.batch_size, 0);
    assert_true(t.bj.t_end_ns >= t.bj.deadline_ns);
    assert_non_null(strstr(t.bj.error, "ms"));
    assert_int_equal(atomic_load(&late.calls), 0);
    assert_int_equal(tracker_wait(&tr, 2, WAIT_MS), 2);
    assert_int_equal(late.bj.status, CZ_OK);
    assert_int_equal(late.bj.batch_size, 1);
    cz_batcher_stats st;
    cz_batcher_stats_get(b, &st);
    assert_int_equal(st.expired, 1);
    assert_int_equal(st.images, 1);
    cz_batcher_destroy(b);
    cz_backend_destroy(be);
    tjob_release(&t);
    tjob_release(&late);
    tracker_fini(&tr);
}

static void test_destroy_with_queued_jobs(void **state) {
    (void)state;
    enum { N = 6 };
    cz_backend *be;
    cz_batcher_opts o = {.max_batch = 4, .max_wait_us = 10000000, .max_queue = 16, .warmup_render = 0};
    cz_batcher *b = make_batcher(&be, g_w1, 4, &o);
    tracker tr;
    tracker_init(&tr);
    tjob jobs[N];
    for (int i = 0; i < N; i++)
        assert_int_equal(tjob_prepare(&jobs[i], 70 + 40 * i, 90, i % 2 ? 512 : 256, (uint64_t)i + 1, &tr),
                         CZ_OK);
    for (int i = 0; i < N; i++)
        assert_int_equal(cz_batcher_submit(b, &jobs[i].bj), CZ_OK);
    cz_batcher_destroy(b);
    assert_int_equal(tracker_wait(&tr, N, 0), N);
    int shut = 0;
    for (int i = 0; i < N; i++) {
        assert_int_equal(atomic_load(&jobs[i].calls), 1);
        assert_true(jobs[i].bj.status == CZ_OK || jobs[i].bj.status == CZ_ERR_SHUTTING_DOWN);
        if (jobs[i].bj.status == CZ_ERR_SHUTTING_DOWN) {
            shut++;
            assert_true(jobs[i].bj.t_start_ns == 0);
            assert_non_null(strstr(jobs[i].bj.error, "shutting down"));
        }
    }
    printf("destroy: %d of %d queued jobs shut down\n", shut, N);
    cz_backend_destroy(be);
    for (int i = 0; i < N; i++)
        tjob_release(&jobs[i]);
    tracker_fini(&tr);
}

static void test_failed_batch(void **state) {
    (void)state;
    cz_backend *be;
    cz_batcher_opts o = {.max_batch = 2, .max_wait_us = 0, .max_queue = 8, .warmup_render = 0};
    cz_batcher *b = make_batcher(&be, g_w1, 2, &o);
    tracker tr;
    tracker_init(&tr);
    tjob bad, good;
    assert_int_equal(tjob_prepare(&bad, 90, 90, 256, 3, &tr), CZ_OK);
    assert_int_equal(tjob_prepare(&good, 90, 90, 256, 4, &tr), CZ_OK);
    bad.bj.cjob.geom.net_w = bad.bj.cjob.geom.net_h = 128; /* not a multiple of 2^depth */
    assert_int_equal(cz_batcher_submit(b, &bad.bj), CZ_OK);
    assert_int_equal(tracker_wait(&tr, 1, WAIT_MS), 1);
    printf("failed batch: %s: %s\n", cz_strerror(bad.bj.status), bad.bj.error);
    assert_int_not_equal(bad.bj.status, CZ_OK);
    assert_true(strlen(bad.bj.error) > 0);
    assert_int_equal(bad.bj.batch_size, 1);
    assert_true(bad.bj.t_start_ns > 0);
    assert_null(cz_batcher_ready(b, NULL, 0)); /* only backend failures are sticky */
    assert_int_equal(cz_batcher_submit(b, &good.bj), CZ_OK);
    assert_int_equal(tracker_wait(&tr, 2, WAIT_MS), 2);
    assert_int_equal(good.bj.status, CZ_OK);
    cz_batcher_stats st;
    cz_batcher_stats_get(b, &st);
    assert_int_equal(st.failed, 1);
    assert_int_equal(st.batches, 2);
    cz_batcher_destroy(b);
    cz_backend_destroy(be);
    tjob_release(&bad);
    tjob_release(&good);
    tracker_fini(&tr);
}

static void test_ready_warm_up(void **state) {
    (void)state;
    cz_backend *be;
    /* 512 keeps dnnl's warm-up measurable; ref (the slow TSan run) is slow enough at 256 */
    cz_batcher_opts o = {.max_batch = 4,
                         .max_wait_us = 1000,
                         .max_queue = 8,
                         .high_water = 4,
                         .warmup_render = strcmp(backend_name(), "ref") == 0 ? 256 : 512};
    int64_t t0 = cz_now_ns();
    cz_batcher *b = make_batcher(&be, g_w1, 4, &o);
    char buf[128];
    const char *r = cz_batcher_ready(b, buf, sizeof buf);
    assert_non_null(r);
    assert_string_equal(r, "warming_up");
    assert_string_equal(cz_batcher_ready(b, NULL, 0), "warming_up");
    /* a job submitted during warm-up is accepted and runs afterwards */
    tracker tr;
    tracker_init(&tr);
    tjob t;
    assert_int_equal(tjob_prepare(&t, 90, 90, 256, 3, &tr), CZ_OK);
    assert_int_equal(cz_batcher_submit(b, &t.bj), CZ_OK);
    /* calls are served after warm-up */
    assert_int_equal(cz_batcher_call(b, noop_fn, NULL), CZ_OK);
    printf("warm-up finished %.1f ms after create\n", ms_since(t0));
    assert_null(cz_batcher_ready(b, buf, sizeof buf));
    assert_int_equal(tracker_wait(&tr, 1, WAIT_MS), 1);
    assert_int_equal(t.bj.status, CZ_OK);
    cz_batcher_stats st;
    cz_batcher_stats_get(b, &st);
    assert_int_equal(st.batches, 1); /* warm-up passes are not counted */
    cz_batcher_drain(b, 1000);
    assert_string_equal(cz_batcher_ready(b, buf, sizeof buf), "draining");
    cz_batcher_destroy(b);
    cz_backend_destroy(be);
    tjob_release(&t);
    tracker_fini(&tr);
}

/* ---- model swap under load ---- */

typedef struct swap_arg {
    cz_colorizer *next;
    pthread_t thread;
    int64_t t_swap;
} swap_arg;

static cz_status swap_fn(cz_colorizer **cz, void *arg) {
    swap_arg *s = arg;
    s->thread = pthread_self();
    cz_colorizer_destroy(*cz);
    *cz = s->next;
    s->t_swap = cz_now_ns();
    return CZ_OK;
}

enum { SWAP_THREADS = 4, SWAP_JOBS = 12 };

typedef struct swap_worker {
    cz_batcher *b;
    tjob jobs[SWAP_JOBS];
    tracker tr;
    atomic_int *total;
    int submit_errors, prep_errors;
} swap_worker;

static void *swap_worker_main(void *arg) {
    swap_worker *w = arg;
    for (int i = 0; i < SWAP_JOBS; i++) {
        if (tjob_prepare(&w->jobs[i], 120, 90, 256, 42, &w->tr) != CZ_OK) {
            w->prep_errors++;
            continue;
        }
        if (cz_batcher_submit(w->b, &w->jobs[i].bj) != CZ_OK) {
            w->submit_errors++;
            continue;
        }
        tracker_wait(&w->tr, i + 1 - w->submit_errors - w->prep_errors, WAIT_MS);
        atomic_fetch_add(w->total, 1);
    }
    return NULL;
}

/* Reads, on the device thread, whether the colorizer holds the plans the warm-up made. */
typedef struct plan_probe {
    int render[2], has[2], kept[2], max_batch;
} plan_probe;

static cz_status probe_plans_fn(cz_colorizer **cz, void *arg) {
    plan_probe *p = arg;
    for (int i = 0; i < 2; i++) {
        p->has[i] = cz_unet_has_plan(cz_colorizer_unet(*cz), p->max_batch, p->render[i], p->render[i]);
        p->kept[i] = cz_unet_plan_kept(cz_colorizer_unet(*cz), p->render[i], p->render[i]);
    }
    return CZ_OK;
}

/* warmup_render and more_renders are planned at start for max_batch images and kept there */
static void test_warm_more_renders(void **state) {
    (void)state;
    cz_backend *be;
    cz_batcher_opts o = {.max_batch = 2, .max_wait_us = 1000, .max_queue = 8, .warmup_render = 256,
                         .more_renders = {512}, .n_more_renders = 1};
    cz_batcher *b = make_batcher(&be, g_w1, 2, &o);
    plan_probe p = {.render = {256, 512}, .max_batch = 2};
    assert_int_equal(cz_batcher_call(b, probe_plans_fn, &p), CZ_OK); /* runs after warm-up */
    assert_null(cz_batcher_ready(b, NULL, 0));
    assert_int_equal(p.has[0], 1);
    assert_int_equal(p.has[1], 1);
    assert_int_equal(p.kept[0], 1);
    assert_int_equal(p.kept[1], 1);
    /* a job at 512 runs on the plan made at start */
    tracker tr;
    tracker_init(&tr);
    tjob t;
    assert_int_equal(tjob_prepare(&t, 400, 400, 512, 9, &tr), CZ_OK);
    assert_int_equal(cz_batcher_submit(b, &t.bj), CZ_OK);
    assert_int_equal(tracker_wait(&tr, 1, WAIT_MS), 1);
    assert_int_equal(t.bj.status, CZ_OK);
    cz_batcher_destroy(b);
    cz_backend_destroy(be);
    tjob_release(&t);
    tracker_fini(&tr);
}

/* Reads, on the device thread, which shapes are kept and how many plans there are. */
typedef struct shape_probe {
    int n;
    int w[8], h[8], kept[8];
    int plans;
} shape_probe;

static cz_status probe_shapes_fn(cz_colorizer **cz, void *arg) {
    shape_probe *p = arg;
    for (int i = 0; i < p->n; i++) p->kept[i] = cz_unet_plan_kept(cz_colorizer_unet(*cz), p->h[i], p->w[i]);
    p->plans = cz_unet_plan_count(cz_colorizer_unet(*cz));
    return CZ_OK;
}

/* plan_shapes: the other aspect ratios of the planned renders are planned and kept at start
 * (at 512 with this depth-8 model: 512x256 and 256x512), so a wide photo at 512 runs on a plan
 * made at start and plans nothing; with plan_shapes 0 only the squares are kept */
static void test_warm_other_shapes(void **state) {
    (void)state;
    for (int shapes = 0; shapes <= 8; shapes += 8) {
        cz_backend *be;
        cz_batcher_opts o = {.max_batch = 2, .max_wait_us = 1000, .max_queue = 8, .warmup_render = 256,
                             .more_renders = {512}, .n_more_renders = 1, .plan_shapes = shapes};
        cz_batcher *b = make_batcher(&be, g_w1, 2, &o);
        shape_probe p = {.n = 4, .w = {256, 512, 512, 256}, .h = {256, 512, 256, 512}};
        assert_int_equal(cz_batcher_call(b, probe_shapes_fn, &p), CZ_OK); /* after warm-up */
        assert_null(cz_batcher_ready(b, NULL, 0));
        assert_int_equal(p.kept[0], 1);
        assert_int_equal(p.kept[1], 1);
        assert_int_equal(p.kept[2], shapes > 0);
        assert_int_equal(p.kept[3], shapes > 0);
        int plans_at_start = p.plans;
        assert_int_equal(plans_at_start, shapes > 0 ? 4 : 2);
        /* a 400x150 photo at render 512 runs at 512x256 */
        tracker tr;
        tracker_init(&tr);
        tjob t;
        assert_int_equal(tjob_prepare(&t, 400, 150, 512, 31, &tr), CZ_OK);
        assert_int_equal(t.bj.cjob.geom.net_w, 512);
        assert_int_equal(t.bj.cjob.geom.net_h, 256);
        assert_int_equal(cz_batcher_submit(b, &t.bj), CZ_OK);
        assert_int_equal(tracker_wait(&tr, 1, WAIT_MS), 1);
        assert_int_equal(t.bj.status, CZ_OK);
        assert_int_equal(cz_batcher_call(b, probe_shapes_fn, &p), CZ_OK);
        assert_int_equal(p.plans, plans_at_start + (shapes == 0)); /* planned on first use only without */
        cz_batcher_destroy(b);
        cz_backend_destroy(be);
        tjob_release(&t);
        tracker_fini(&tr);
    }
}

static void test_call_swaps_model_under_load(void **state) {
    (void)state;
    cz_backend *be, *be2;
    cz_batcher_opts o = {.max_batch = 4, .max_wait_us = 2000, .max_queue = 64, .warmup_render = 256};
    cz_batcher *b = make_batcher(&be, g_w1, 4, &o);
    /* the replacement, on its own backend instance (one thread per backend at a time) */
    assert_int_equal(cz_backend_create(backend_name(), NULL, &be2), CZ_OK);
    cz_colorizer_opts co = {.max_batch = 4, .precision = CZ_F32};
    cz_colorizer *cz2;
    assert_int_equal(cz_colorizer_create(be2, g_w2, &co, &cz2), CZ_OK);

    /* reference outputs of both models for the input every worker submits */
    tracker tr;
    tracker_init(&tr);
    tjob ra, rb;
    assert_int_equal(tjob_prepare(&ra, 120, 90, 256, 42, &tr), CZ_OK);
    assert_int_equal(tjob_prepare(&rb, 120, 90, 256, 42, &tr), CZ_OK);
    direct_run d = {.job = &ra.bj.cjob, .b = b};
    assert_int_equal(cz_batcher_call(b, direct_run_fn, &d), CZ_OK);
    cz_cjob *pb = &rb.bj.cjob;
    assert_int_equal(cz_colorizer_run(cz2, &pb, 1), CZ_OK); /* main thread owns be2 until the swap */
    size_t nf = out_floats(&ra.bj.cjob);
    double ab = max_abs_diff(ra.bj.cjob.net_out, rb.bj.cjob.net_out, nf);
    assert_true(ab > 1e-3); /* the two models differ */

    atomic_int total;
    atomic_init(&total, 0);
    swap_worker *w = calloc(SWAP_THREADS, sizeof *w);
    pthread_t th[SWAP_THREADS];
    for (int k = 0; k < SWAP_THREADS; k++) {
        w[k].b = b;
        w[k].total = &total;
        tracker_init(&w[k].tr);
        assert_int_equal(pthread_create(&th[k], NULL, swap_worker_main, &w[k]), 0);
    }
    for (int64_t t0 = cz_now_ns(); atomic_load(&total) < SWAP_THREADS * SWAP_JOBS / 3;) {
        assert_true(ms_since(t0) < WAIT_MS);
        usleep(1000);
    }
    swap_arg s = {.next = cz2};
    assert_int_equal(cz_batcher_call(b, swap_fn, &s), CZ_OK);
    int64_t t_after = cz_now_ns();
    assert_true(pthread_equal(s.thread, d.thread));
    assert_false(pthread_equal(s.thread, pthread_self()));
    for (int k = 0; k < SWAP_THREADS; k++)
        pthread_join(th[k], NULL);

    int n_a = 0, n_b = 0;
    for (int k = 0; k < SWAP_THREADS; k++) {
        assert_int_equal(w[k].prep_errors, 0);
        assert_int_equal(w[k].submit_errors, 0);
        for (int i = 0; i < SWAP_JOBS; i++) {
            tjob *j = &w[k].jobs[i];
            assert_int_equal(atomic_load(&j->calls), 1);
            assert_int_equal(j->bj.status, CZ_OK);
            double da = max_abs_diff(j->bj.cjob.net_out, ra.bj.cjob.net_out, nf);
            double db = max_abs_diff(j->bj.cjob.net_out, rb.bj.cjob.net_out, nf);
            int is_a = da < 1e-5, is_b = db < 1e-5;
            assert_true(is_a != is_b);
            if (j->bj.t_end_ns < s.t_swap) assert_true(is_a);
            if (j->bj.t_start_ns > s.t_swap || j->bj.t_submit_ns > t_after) assert_true(is_b);
            n_a += is_a;
            n_b += is_b;
            tjob_release(j);
        }
        tracker_fini(&w[k].tr);
    }
    printf("swap under load: %d jobs on the old model, %d on the new\n", n_a, n_b);
    assert_true(n_a > 0 && n_b > 0);
    cz_batcher_destroy(b); /* destroys cz2 */
    cz_backend_destroy(be);
    cz_backend_destroy(be2);
    free(w);
    tjob_release(&ra);
    tjob_release(&rb);
    tracker_fini(&tr);
}

/* ---- stress ---- */

enum { STRESS_THREADS = 4, STRESS_JOBS = 50 };

typedef struct stress_ctx {
    atomic_int done_calls, ok, expired, bad, retries;
} stress_ctx;

typedef struct sjob {
    cz_bjob bj;
    atomic_int calls;
    stress_ctx *ctx;
    tracker *tr;
} sjob;

static void stress_done(cz_bjob *j, void *user) {
    sjob *s = user;
    atomic_fetch_add(&s->calls, 1);
    atomic_fetch_add(&s->ctx->done_calls, 1);
    if (j->status == CZ_OK) {
        if (j->t_start_ns < j->t_submit_ns || j->t_end_ns < j->t_start_ns || j->batch_size < 1 ||
            j->batch_size > 4)
            atomic_fetch_add(&s->ctx->bad, 1);
        atomic_fetch_add(&s->ctx->ok, 1);
    } else if (j->status == CZ_ERR_DEADLINE) {
        if (j->t_start_ns != 0 || (j->deadline_ns && j->t_end_ns < j->deadline_ns))
            atomic_fetch_add(&s->ctx->bad, 1);
        atomic_fetch_add(&s->ctx->expired, 1);
    } else {
        atomic_fetch_add(&s->ctx->bad, 1);
    }
    cz_cjob_release(&j->cjob); /* the owner may free buffers in its callback */
    pthread_mutex_lock(&s->tr->mu);
    s->tr->done++;
    pthread_cond_broadcast(&s->tr->cv);
    pthread_mutex_unlock(&s->tr->mu);
}

typedef struct stress_worker {
    cz_batcher *b;
    stress_ctx *ctx;
    sjob jobs[STRESS_JOBS];
    tracker tr;
    uint64_t seed;
    int errors;
} stress_worker;

static void *stress_main(void *arg) {
    stress_worker *w = arg;
    uint64_t s = w->seed;
    for (int i = 0; i < STRESS_JOBS; i++) {
        sjob *j = &w->jobs[i];
        int wpx = 16 + (int)(tu_rand_u64(&s) % 300), hpx = 16 + (int)(tu_rand_u64(&s) % 200);
        int render = tu_rand_u64(&s) % 4 == 0 ? 512 : 256;
        cz_image img;
        if (cz_image_alloc(&img, wpx, hpx, 1) != CZ_OK) {
            w->errors++;
            continue;
        }
        memset(img.px, (int)(tu_rand_u64(&s) % 256), (size_t)wpx * hpx);
        memset(j, 0, sizeof *j);
        cz_status st = cz_cjob_prepare(g_prep, &img, render, &j->bj.cjob);
        cz_image_free(&img);
        if (st != CZ_OK) {
            w->errors++;
            continue;
        }
        atomic_init(&j->calls, 0);
        j->ctx = w->ctx;
        j->tr = &w->tr;
        j->bj.done = stress_done;
        j->bj.user = j;
        int kind = (int)(tu_rand_u64(&s) % 4); /* none, tight (0..10 ms), loose (50..500 ms) x2 */
        int64_t us =
            kind == 1 ? (int64_t)(tu_rand_u64(&s) % 10000) : 50000 + (int64_t)(tu_rand_u64(&s) % 450000);
        j->bj.deadline_ns = kind == 0 ? 0 : cz_now_ns() + us * 1000;
        while ((st = cz_batcher_submit(w->b, &j->bj)) == CZ_ERR_QUEUE_FULL) {
            atomic_fetch_add(&w->ctx->retries, 1);
            usleep(2000);
        }
        if (st != CZ_OK) w->errors++;
        if (tu_rand_u64(&s) % 8 == 0) usleep(1000);
    }
    return NULL;
}

static void test_stress(void **state) {
    (void)state;
    cz_backend *be;
    cz_batcher_opts o = {
        .max_batch = 4, .max_wait_us = 2000, .max_queue = 8, .high_water = 6, .warmup_render = 0};
    cz_batcher *b = make_batcher(&be, g_w1, 4, &o);
    stress_ctx ctx;
    atomic_init(&ctx.done_calls, 0);
    atomic_init(&ctx.ok, 0);
    atomic_init(&ctx.expired, 0);
    atomic_init(&ctx.bad, 0);
    atomic_init(&ctx.retries, 0);
    stress_worker *w = calloc(STRESS_THREADS, sizeof *w);
    pthread_t th[STRESS_THREADS];
    int64_t t0 = cz_now_ns();
    for (int k = 0; k < STRESS_THREADS; k++) {
        w[k].b = b;
        w[k].ctx = &ctx;
        w[k].seed = 1000 + (uint64_t)k;
        tracker_init(&w[k].tr);
        assert_int_equal(pthread_create(&th[k], NULL, stress_main, &w[k]), 0);
    }
    char buf[128];
    for (int i = 0; i < 5; i++) { /* control traffic and readers alongside */
        assert_int_equal(cz_batcher_call(b, noop_fn, NULL), CZ_OK);
        (void)cz_batcher_ready(b, buf, sizeof buf);
        cz_batcher_stats st;
        cz_batcher_stats_get(b, &st);
        usleep(5000);
    }
    for (int k = 0; k < STRESS_THREADS; k++)
        pthread_join(th[k], NULL);
    for (int k = 0; k < STRESS_THREADS; k++) {
        assert_int_equal(w[k].errors, 0);
        assert_int_equal(tracker_wait(&w[k].tr, STRESS_JOBS, WAIT_MS), STRESS_JOBS);
    }
    cz_batcher_stats st;
    cz_batcher_stats_get(b, &st);
    cz_batcher_destroy(b);
    int total = STRESS_THREADS * STRESS_JOBS;
    printf("stress: %d jobs in %.0f ms: %d ok, %d expired, %d queue-full retries, %llu batches\n", total,
           ms_since(t0), atomic_load(&ctx.ok), atomic_load(&ctx.expired), atomic_load(&ctx.retries),
           (unsigned long long)st.batches);
    assert_int_equal(atomic_load(&ctx.done_calls), total);
    assert_int_equal(atomic_load(&ctx.bad), 0);
    assert_int_equal(atomic_load(&ctx.ok) + atomic_load(&ctx.expired), total);
    for (int k = 0; k < STRESS_THREADS; k++)
        for (int i = 0; i < STRESS_JOBS; i++)
            assert_int_equal(atomic_load(&w[k].jobs[i].calls), 1);
    assert_int_equal(st.images, (uint64_t)atomic_load(&ctx.ok));
    assert_int_equal(st.expired, (uint64_t)atomic_load(&ctx.expired));
    uint64_t hist_images = 0;
    for (int k = 1; k < 17; k++)
        hist_images += (uint64_t)k * st.batch_size_hist[k];
    assert_int_equal(hist_images, st.images);
    for (int k = 0; k < STRESS_THREADS; k++)
        tracker_fini(&w[k].tr);
    free(w);
    cz_backend_destroy(be);
}

static void test_create_args(void **state) {
    (void)state;
    cz_backend *be;
    assert_int_equal(cz_backend_create("ref", NULL, &be), CZ_OK);
    cz_colorizer_opts co = {.max_batch = 2, .precision = CZ_F32};
    cz_colorizer *cz;
    assert_int_equal(cz_colorizer_create(be, g_w1, &co, &cz), CZ_OK);
    cz_batcher *b = (cz_batcher *)1;
    cz_batcher_opts o = {.max_batch = 3, .max_wait_us = 0, .max_queue = 1};
    assert_int_equal(cz_batcher_create(cz, &o, &b), CZ_ERR_INVALID_ARG); /* above the colorizer's */
    assert_null(b);
    o.max_batch = 2;
    o.max_queue = 0;
    assert_int_equal(cz_batcher_create(cz, &o, &b), CZ_ERR_INVALID_ARG);
    o.max_queue = 1;
    o.warmup_render = 300;
    assert_int_equal(cz_batcher_create(cz, &o, &b), CZ_ERR_INVALID_ARG);
    o.warmup_render = 256; /* more renders: each a valid render, at most CZ_BATCHER_MAX_RENDERS */
    o.more_renders[0] = 384;
    o.n_more_renders = 1;
    assert_int_equal(cz_batcher_create(cz, &o, &b), CZ_ERR_INVALID_ARG);
    o.more_renders[0] = 512;
    o.n_more_renders = CZ_BATCHER_MAX_RENDERS + 1;
    assert_int_equal(cz_batcher_create(cz, &o, &b), CZ_ERR_INVALID_ARG);
    o.n_more_renders = 1;
    o.warmup_render = 0;
    assert_int_equal(cz_batcher_create(cz, &o, &b), CZ_ERR_INVALID_ARG);
    assert_int_equal(cz_batcher_create(NULL, &o, &b), CZ_ERR_INVALID_ARG);
    /* failures leave the colorizer with the caller */
    cz_colorizer_destroy(cz);
    cz_backend_destroy(be);
    int64_t a = cz_now_ns(), c = cz_now_ns();
    assert_true(a > 0 && c >= a);
}

/* ---- background (idle) work ---- */

typedef struct idle_state {
    cz_batcher *b;
    atomic_int calls;
    atomic_int saw_queued; /* calls made while an inference job was waiting */
    atomic_int limit;      /* returns "more" while calls < limit */
} idle_state;

static int idle_fn(void *arg) {
    idle_state *st = arg;
    if (cz_batcher_depth(st->b) > 0) atomic_fetch_add(&st->saw_queued, 1);
    struct timespec ts = {0, 20 * 1000 * 1000}; /* one 20 ms unit of work */
    nanosleep(&ts, NULL);
    int n = atomic_fetch_add(&st->calls, 1) + 1;
    return n < atomic_load(&st->limit);
}

static void test_idle_work(void **state) {
    (void)state;
    cz_backend *be;
    cz_batcher_opts o = {.max_batch = 2, .max_wait_us = 0, .max_queue = 16, .high_water = 0, .warmup_render = 0};
    cz_batcher *b = make_batcher(&be, g_w1, 2, &o);
    idle_state st = {.b = b};
    atomic_init(&st.calls, 0);
    atomic_init(&st.saw_queued, 0);
    atomic_init(&st.limit, 1000000);
    cz_batcher_set_idle(b, idle_fn, &st);
    int64_t t0 = cz_now_ns();
    while (atomic_load(&st.calls) < 5 && ms_since(t0) < WAIT_MS) {
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    assert_true(atomic_load(&st.calls) >= 5); /* runs again and again while it has more */

    /* inference jobs go first: each waits for at most the unit in progress */
    tracker tr;
    tracker_init(&tr);
    tjob t[4];
    for (int i = 0; i < 4; i++) {
        assert_int_equal(tjob_prepare(&t[i], 64, 48, 256, 40 + (uint64_t)i, &tr), CZ_OK);
        assert_int_equal(cz_batcher_submit(b, &t[i].bj), CZ_OK);
        assert_int_equal(tracker_wait(&tr, i + 1, WAIT_MS), i + 1);
        assert_int_equal(t[i].bj.status, CZ_OK);
        double waited = (double)(t[i].bj.t_start_ns - t[i].bj.t_submit_ns) / 1e6;
        print_message("  job %d waited %.1f ms for the device (one idle unit is 20 ms)\n", i, waited);
        assert_true(waited < 1000); /* generous: one unit, on a loaded CI machine */
    }
    assert_int_equal(atomic_load(&st.saw_queued), 0);

    /* nothing more to do: not called again until kicked */
    atomic_store(&st.limit, 0);
    struct timespec pause = {0, 100 * 1000 * 1000};
    nanosleep(&pause, NULL); /* the unit in progress returns 0 */
    int before = atomic_load(&st.calls);
    nanosleep(&pause, NULL);
    assert_int_equal(atomic_load(&st.calls), before);
    cz_batcher_kick(b);
    t0 = cz_now_ns();
    while (atomic_load(&st.calls) == before && ms_since(t0) < WAIT_MS) nanosleep(&(struct timespec){0, 2000000}, NULL);
    assert_int_equal(atomic_load(&st.calls), before + 1);
    nanosleep(&pause, NULL);
    assert_int_equal(atomic_load(&st.calls), before + 1);

    /* draining stops background work */
    atomic_store(&st.limit, 1000000);
    cz_batcher_drain(b, 1000);
    nanosleep(&pause, NULL);
    int after_drain = atomic_load(&st.calls);
    cz_batcher_kick(b);
    nanosleep(&pause, NULL);
    assert_int_equal(atomic_load(&st.calls), after_drain);
    cz_batcher_set_idle(b, NULL, NULL);
    for (int i = 0; i < 4; i++) tjob_release(&t[i]);
    tracker_fini(&tr);
    cz_batcher_destroy(b);
    cz_backend_destroy(be);
}

/* With idle_grace_us, background work waits that long after the last forward pass. */
static void test_idle_grace(void **state) {
    (void)state;
    cz_backend *be;
    cz_batcher_opts o = {.max_batch = 2, .max_wait_us = 0, .max_queue = 16, .idle_grace_us = 1500000};
    cz_batcher *b = make_batcher(&be, g_w1, 2, &o);
    idle_state st = {.b = b};
    atomic_init(&st.calls, 0);
    atomic_init(&st.saw_queued, 0);
    atomic_init(&st.limit, 1); /* one unit per kick */
    tracker tr;
    tracker_init(&tr);
    tjob t;
    assert_int_equal(tjob_prepare(&t, 64, 48, 256, 77, &tr), CZ_OK);
    assert_int_equal(cz_batcher_submit(b, &t.bj), CZ_OK);
    assert_int_equal(tracker_wait(&tr, 1, WAIT_MS), 1);
    int64_t done = cz_now_ns();
    cz_batcher_set_idle(b, idle_fn, &st); /* work arrives right after a forward pass */
    while (atomic_load(&st.calls) == 0 && ms_since(done) < WAIT_MS) nanosleep(&(struct timespec){0, 2000000}, NULL);
    double waited = ms_since(done);
    print_message("  background work started %.0f ms after the forward pass (grace 1500 ms)\n", waited);
    assert_int_equal(atomic_load(&st.calls), 1);
    assert_true(waited >= 1400); /* never before the grace (minus the time set_idle took to run) */
    cz_batcher_set_idle(b, NULL, NULL);
    tjob_release(&t);
    tracker_fini(&tr);
    cz_batcher_destroy(b);
    cz_backend_destroy(be);
}

/* ---- faults: out of memory and a lost device ---- */

/* A ref backend whose convolutions fail with CZ_ERR_NOMEM above a batch size, and whose health
 * turns bad on demand (with every op then failing like a sticky device error). */
static cz_backend_ops g_fault_ops;
static const cz_backend_ops *g_real_ops;
static atomic_int g_fault_max_n;   /* conv2d on more images than this: CZ_ERR_NOMEM */
static atomic_int g_fault_dead;    /* non-zero: device lost */
static atomic_int g_fault_lost_calls;

static atomic_int g_fault_max_h;   /* conv2d on images taller than this: CZ_ERR_NOMEM */

static cz_status fault_conv2d(cz_backend *be, const cz_tensor *x, const cz_tensor *w, const cz_tensor *bias,
                              const cz_conv_params *p, cz_tensor *y) {
    if (atomic_load(&g_fault_dead)) return cz_error_set(CZ_ERR_BACKEND, "injected: illegal address");
    if (x->n > atomic_load(&g_fault_max_n)) return cz_error_set(CZ_ERR_NOMEM, "injected: %d images do not fit", x->n);
    if (x->h > atomic_load(&g_fault_max_h)) return cz_error_set(CZ_ERR_NOMEM, "injected: height %d does not fit", x->h);
    return g_real_ops->conv2d(be, x, w, bias, p, y);
}

static cz_status fault_health(cz_backend *be) {
    (void)be;
    return atomic_load(&g_fault_dead) ? cz_error_set(CZ_ERR_BACKEND, "injected: sticky error") : CZ_OK;
}

static void fault_lost(void *arg, const char *why) {
    (void)arg;
    (void)why;
    atomic_fetch_add(&g_fault_lost_calls, 1);
}

/* A ref backend with the fault-injecting ops, no fault armed yet; fault_backend_destroy undoes it. */
static cz_backend *fault_backend_create(void) {
    cz_backend *be;
    assert_int_equal(cz_backend_create("ref", NULL, &be), CZ_OK);
    g_real_ops = be->ops;
    g_fault_ops = *be->ops;
    g_fault_ops.conv2d = fault_conv2d;
    g_fault_ops.health = fault_health;
    be->ops = &g_fault_ops;
    atomic_store(&g_fault_max_n, 1000);
    atomic_store(&g_fault_max_h, 1 << 20);
    atomic_store(&g_fault_dead, 0);
    atomic_store(&g_fault_lost_calls, 0);
    return be;
}

static void fault_backend_destroy(cz_backend *be) {
    be->ops = g_real_ops;
    cz_backend_destroy(be);
}

static void test_oom_split_and_device_lost(void **state) {
    (void)state;
    cz_backend *be = fault_backend_create();
    cz_colorizer_opts co = {.max_batch = 4, .precision = CZ_F32};
    cz_colorizer *cz;
    assert_int_equal(cz_colorizer_create(be, g_w1, &co, &cz), CZ_OK);
    cz_batcher_opts o = {.max_batch = 4, .max_wait_us = 200000, .max_queue = 16, .warmup_render = 0,
                         .be = be, .on_device_lost = fault_lost};
    cz_batcher *b;
    assert_int_equal(cz_batcher_create(cz, &o, &b), CZ_OK);

    /* 4 jobs in one batch, but only 1 image fits: 4 -> 2 + 2 -> 1 + 1 + 1 + 1, all succeed */
    atomic_store(&g_fault_max_n, 1);
    tracker tr;
    tracker_init(&tr);
    tjob t[4];
    for (int i = 0; i < 4; i++) {
        assert_int_equal(tjob_prepare(&t[i], 64, 48, 256, 70 + (uint64_t)i, &tr), CZ_OK);
        assert_int_equal(cz_batcher_submit(b, &t[i].bj), CZ_OK);
    }
    assert_int_equal(tracker_wait(&tr, 4, WAIT_MS), 4);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(t[i].bj.status, CZ_OK);
        assert_int_equal(t[i].bj.batch_size, 1);
    }
    assert_null(cz_batcher_ready(b, NULL, 0));
    cz_batcher_stats st;
    cz_batcher_stats_get(b, &st);
    assert_int_equal(st.failed, 0);  /* jobs of the passes that did not fit were retried, not failed */
    assert_int_equal(st.batches, 4); /* completed passes: four of one image */

    /* the device is lost: the failing pass marks the batcher lost for good */
    atomic_store(&g_fault_dead, 1);
    tjob u[2];
    for (int i = 0; i < 2; i++) {
        assert_int_equal(tjob_prepare(&u[i], 64, 48, 256, 90 + (uint64_t)i, &tr), CZ_OK);
        assert_int_equal(cz_batcher_submit(b, &u[i].bj), CZ_OK);
        assert_int_equal(tracker_wait(&tr, 5 + i, WAIT_MS), 5 + i);
    }
    /* the pass that met the failure answers as every later one does (503 in the daemon) */
    assert_int_equal(u[0].bj.status, CZ_ERR_UNAVAILABLE);
    assert_non_null(strstr(u[0].bj.error, "device lost"));
    assert_int_equal(u[1].bj.status, CZ_ERR_UNAVAILABLE); /* not run at all */
    assert_non_null(strstr(u[1].bj.error, "device lost"));
    assert_int_equal(atomic_load(&g_fault_lost_calls), 1);
    char buf[300];
    const char *why = cz_batcher_ready(b, buf, sizeof buf);
    assert_non_null(why);
    assert_non_null(strstr(why, "device lost"));
    for (int i = 0; i < 4; i++) tjob_release(&t[i]);
    for (int i = 0; i < 2; i++) tjob_release(&u[i]);
    tracker_fini(&tr);
    cz_batcher_destroy(b);
    fault_backend_destroy(be);
}

/* A render planned at start that does not fit in memory is left to be planned on first use:
 * the batcher is ready and serves the renders that fit; a request at the big one fails alone
 * with CZ_ERR_NOMEM (503 out_of_memory in the daemon). */
static void test_warm_render_out_of_memory(void **state) {
    (void)state;
    cz_backend *be = fault_backend_create();
    atomic_store(&g_fault_max_h, 256);
    cz_colorizer_opts co = {.max_batch = 2, .precision = CZ_F32};
    cz_colorizer *cz;
    assert_int_equal(cz_colorizer_create(be, g_w1, &co, &cz), CZ_OK);
    cz_batcher_opts o = {.max_batch = 2, .max_wait_us = 1000, .max_queue = 8, .warmup_render = 256,
                         .more_renders = {512, 768}, .n_more_renders = 2, .be = be};
    cz_batcher *b;
    assert_int_equal(cz_batcher_create(cz, &o, &b), CZ_OK);
    plan_probe p = {.render = {256, 768}, .max_batch = 2};
    assert_int_equal(cz_batcher_call(b, probe_plans_fn, &p), CZ_OK); /* after warm-up */
    assert_null(cz_batcher_ready(b, NULL, 0));
    assert_int_equal(p.kept[0], 1);
    /* the list stopped at 512: 768 is not kept (its square was planned first, so that the shared
     * activation stores have their full size from the start, but never warmed) */
    assert_int_equal(p.kept[1], 0);
    tracker tr;
    tracker_init(&tr);
    tjob t[2];
    assert_int_equal(tjob_prepare(&t[0], 200, 150, 256, 21, &tr), CZ_OK);
    assert_int_equal(tjob_prepare(&t[1], 400, 300, 512, 22, &tr), CZ_OK);
    for (int i = 0; i < 2; i++) assert_int_equal(cz_batcher_submit(b, &t[i].bj), CZ_OK);
    assert_int_equal(tracker_wait(&tr, 2, WAIT_MS), 2);
    assert_int_equal(t[0].bj.status, CZ_OK);
    assert_int_equal(t[1].bj.status, CZ_ERR_NOMEM);
    assert_null(cz_batcher_ready(b, NULL, 0));
    cz_batcher_destroy(b);
    for (int i = 0; i < 2; i++) tjob_release(&t[i]);
    tracker_fini(&tr);
    fault_backend_destroy(be);
}

/* ---- pipelining: a backend with asynchronous transfers ---- */

/* The ref backend with write_async/read_async/transfer_wait that check the host side of their
 * contract (backend.h): the transfer itself happens at once (so the ops stay in order), but a
 * read's destination holds NaN until its ticket is waited on, and a write's source is checked
 * at the wait to be unchanged since the write. So a colorizer or batcher that reads results
 * early, or reuses a staging buffer before its transfer is done, gets NaN images or a failed
 * pass. It also counts how many reads were in flight at once. */
enum { XF_MAX = 64 };
typedef struct xfer {
    int is_read;
    float *host;      /* dst of a read, src of a write */
    float *snap;      /* read: the data; write: a copy of src */
    size_t count;
    uint64_t ticket;
} xfer;
static xfer g_xf[XF_MAX];
static uint64_t g_xf_next;
static int g_xf_reads_pending, g_xf_reads_max, g_xf_violations;
static cz_backend_ops g_async_ops;

static xfer *xf_new(int is_read, float *host, size_t count) {
    for (int i = 0; i < XF_MAX; i++)
        if (!g_xf[i].ticket) {
            g_xf[i] = (xfer){.is_read = is_read, .host = host, .count = count, .ticket = ++g_xf_next};
            g_xf[i].snap = malloc(count * sizeof(float));
            return g_xf[i].snap ? &g_xf[i] : NULL;
        }
    return NULL;
}

static cz_status xf_write_async(cz_backend *be, cz_tensor *t, const float *src, uint64_t *ticket) {
    xfer *x = xf_new(0, (float *)src, cz_tensor_numel(t));
    if (!x) return cz_error_set(CZ_ERR_NOMEM, "test: too many transfers in flight");
    memcpy(x->snap, src, x->count * sizeof(float));
    *ticket = x->ticket;
    return g_real_ops->tensor_write(be, t, src);
}

static cz_status xf_read_async(cz_backend *be, const cz_tensor *t, float *dst, uint64_t *ticket) {
    xfer *x = xf_new(1, dst, cz_tensor_numel(t));
    if (!x) return cz_error_set(CZ_ERR_NOMEM, "test: too many transfers in flight");
    CZ_TRY(g_real_ops->tensor_read(be, t, x->snap));
    for (size_t i = 0; i < x->count; i++) dst[i] = NAN;
    *ticket = x->ticket;
    if (++g_xf_reads_pending > g_xf_reads_max) g_xf_reads_max = g_xf_reads_pending;
    return CZ_OK;
}

/* Completes every transfer up to `ticket` (tickets complete in order here). */
static cz_status xf_wait(cz_backend *be, uint64_t ticket) {
    (void)be;
    if (ticket == 0 || ticket > g_xf_next) return cz_error_set(CZ_ERR_INVALID_ARG, "test: unknown ticket");
    cz_status s = CZ_OK;
    for (int i = 0; i < XF_MAX; i++) {
        xfer *x = &g_xf[i];
        if (!x->ticket || x->ticket > ticket) continue;
        if (x->is_read) {
            memcpy(x->host, x->snap, x->count * sizeof(float));
            g_xf_reads_pending--;
        } else if (memcmp(x->host, x->snap, x->count * sizeof(float)) != 0) {
            g_xf_violations++;
            s = cz_error_set(CZ_ERR_BACKEND, "test: a write's source changed before its transfer was done");
        }
        free(x->snap);
        x->ticket = 0;
    }
    return s;
}

static void test_pipelined_passes(void **state) {
    (void)state;
    enum { N = 24 };
    cz_backend *be;
    assert_int_equal(cz_backend_create("ref", NULL, &be), CZ_OK);
    g_real_ops = be->ops;
    g_async_ops = *be->ops;
    g_async_ops.write_async = xf_write_async;
    g_async_ops.read_async = xf_read_async;
    g_async_ops.transfer_wait = xf_wait;
    be->ops = &g_async_ops;
    g_xf_next = 0;
    g_xf_reads_pending = g_xf_reads_max = g_xf_violations = 0;
    cz_colorizer_opts co = {.max_batch = 2, .precision = CZ_F32};
    cz_colorizer *cz;
    assert_int_equal(cz_colorizer_create(be, g_w1, &co, &cz), CZ_OK);
    assert_true(cz_colorizer_pipelined(cz));
    /* the expected outputs: each job alone, start to end */
    tracker tr;
    tracker_init(&tr);
    tjob t[N];
    float *want[N];
    for (int i = 0; i < N; i++) {
        /* two network sizes, interleaved, so that passes switch plans while one is in flight */
        assert_int_equal(tjob_prepare(&t[i], i % 2 ? 300 : 64, 48, i % 2 ? 512 : 256, 300 + (uint64_t)i, &tr), CZ_OK);
        cz_cjob *p = &t[i].bj.cjob;
        assert_int_equal(cz_colorizer_run(cz, &p, 1), CZ_OK);
        want[i] = malloc(out_floats(p) * sizeof(float));
        memcpy(want[i], p->net_out, out_floats(p) * sizeof(float));
        memset(p->net_out, 0, out_floats(p) * sizeof(float));
    }
    /* all queued before the device thread looks: batches are ready back to back */
    cz_batcher_opts o = {.max_batch = 2, .max_wait_us = 0, .max_queue = N, .warmup_render = 0, .be = be};
    cz_batcher *b;
    assert_int_equal(cz_batcher_create(cz, &o, &b), CZ_OK);
    assert_int_equal(cz_batcher_call(b, noop_fn, NULL), CZ_OK);
    for (int i = 0; i < N; i++) assert_int_equal(cz_batcher_submit(b, &t[i].bj), CZ_OK);
    assert_int_equal(tracker_wait(&tr, N, WAIT_MS), N);
    cz_batcher_drain(b, 0);
    for (int i = 0; i < N; i++) {
        assert_int_equal(t[i].bj.status, CZ_OK);
        assert_int_equal(atomic_load(&t[i].calls), 1);
        /* the batch does not change an image's result (ref is deterministic per image) */
        assert_true(max_abs_diff(t[i].bj.cjob.net_out, want[i], out_floats(&t[i].bj.cjob)) == 0.0);
    }
    printf("pipelined: %d jobs, up to %d passes in flight, %d transfer contract violations\n", N, g_xf_reads_max,
           g_xf_violations);
    assert_int_equal(g_xf_violations, 0);
    assert_int_equal(g_xf_reads_pending, 0);
    assert_true(g_xf_reads_max >= 2); /* a pass was launched while another was in flight */
    assert_true(g_xf_reads_max <= CZ_COLORIZER_PASSES);
    cz_batcher_destroy(b);
    for (int i = 0; i < N; i++) {
        tjob_release(&t[i]);
        free(want[i]);
    }
    tracker_fini(&tr);
    be->ops = g_real_ops;
    cz_backend_destroy(be);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_args),
        cmocka_unit_test(test_single_job),
        cmocka_unit_test(test_batching_8),
        cmocka_unit_test(test_batching_4),
        cmocka_unit_test(test_sizes_batch_separately),
        cmocka_unit_test(test_queue_full_and_drain),
        cmocka_unit_test(test_deadline),
        cmocka_unit_test(test_destroy_with_queued_jobs),
        cmocka_unit_test(test_failed_batch),
        cmocka_unit_test(test_ready_warm_up),
        cmocka_unit_test(test_warm_more_renders),
        cmocka_unit_test(test_call_swaps_model_under_load),
        cmocka_unit_test(test_stress),
        cmocka_unit_test(test_idle_work),
        cmocka_unit_test(test_idle_grace),
        cmocka_unit_test(test_oom_split_and_device_lost),
        cmocka_unit_test(test_warm_render_out_of_memory),
        cmocka_unit_test(test_warm_other_shapes),
        cmocka_unit_test(test_pipelined_passes),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
