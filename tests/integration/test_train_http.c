/* test_train_http.c: the training-jobs admin API (server/CONTRACT.md, "Training jobs and model
 * activation") end to end against the REAL daemon. One cmocka executable:
 *
 *   test_train_http [COLORIZED [COLORIZE]]   (else $CZ_BUILD_DIR/colorized and .../colorize)
 *
 * Owns: a generated dataset (a few dozen 96x96 colour PNGs whose colours follow their
 * structure: a blue-to-pale sky above a green ground and a red disc, so that a tiny network
 * learns something in a hundred steps), written with the project's PNG encoder under
 * <tmp>/data/ds1, next to an empty dir, a dir of gray images, a symlink escaping to / and one
 * staying inside; a state dir shared by two daemon lifetimes. Every daemon listens on
 * 127.0.0.1:0 and serves a tiny depth-6 generator (the depth a 64 px training run produces,
 * so a trained checkpoint is compatible with it).
 *
 * Checks, one printed line each: the bearer token (401 + WWW-Authenticate before the body,
 * 403 admin_disabled without a configured token, 409 training_disabled without a data root);
 * every POST /train and POST /model field wrong, JSON that is not an object, oversized bodies,
 * dataset escapes, missing and empty datasets, bad stride, unknown jobs and sub-paths; a tiny
 * job run to success (losses fall, stride thins the history, sample sheets are PNGs,
 * checkpoints and best listed, /colorize keeps answering while it trains, metrics); cancel of
 * a queued and of a running job (final checkpoint, 409 afterwards), the 429 queue bound;
 * activation of a checkpoint (GET /model source and checksum, /colorize output changes; a
 * missing step, an incompatible depth and a corrupted file all keep the old model, /colorize
 * answers 200 throughout the swap; jobs initialized from the served model and from a
 * checkpoint); restart
 * with a running job (interrupted + resumable, resume continues from the checkpoint, never
 * below it) and the activation remembered across the restart.
 *
 * This file: the daemon and the job tests (tiny job, cancel, activation, restart).
 * test_train_http_errors.c: token and bad-request tests. test_train_http_util.c: helpers and
 * the datasets.
 *
 * Threading: the main thread, plus one client thread that keeps posting /colorize while a
 * checkpoint is activated; every wait is a bounded poll (a dead daemon ends a poll at once); a
 * watchdog alarm ends the run. Sized for 2 CPU cores: about 40 s on an idle machine, half of
 * it the tiny job (several times that when the cores are shared). Registered in
 * tests/integration/CMakeLists.txt (LABELS integration, RUN_SERIAL). */
#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
// clang-format off
#include <cmocka.h>
// clang-format on

#include "test_train_http.h"
#include "testutil.h"

/* Tiny job size: 120 steps of batch 4 at 64 px, ngf 8 (~4 steps/s on 2 cores with dnnl). */
#define TINY_STEPS 120

char g_data[PATH_MAX], g_state[PATH_MAX], g_weights6[PATH_MAX];
it_daemon g_d;
static char g_config[3 * PATH_MAX];
static char g_tiny[65], g_cancelled[65];
static long g_cancelled_ckpt = -1;
static char g_active_sum[64];

static int make_data(void) {
    snprintf(g_data, sizeof g_data, "%s/data", IT.tmp);
    snprintf(g_state, sizeof g_state, "%s/state", IT.tmp);
    if (tt_mkdir(g_data) || tt_mkdir(g_state)) return -1;
    if (tt_write_datasets(g_data)) return -1;
    /* the depth-6 generator every daemon here serves */
    snprintf(g_weights6, sizeof g_weights6, "%s/w6.safetensors", IT.tmp);
    char cmd[3 * PATH_MAX];
    snprintf(cmd, sizeof cmd, "'%s' init --ngf 4 --depth 6 --seed 5 -o '%s' >/dev/null", IT.cli, g_weights6);
    if (system(cmd) != 0) return -1;
    snprintf(
        g_config, sizeof g_config,
        "{\"model\": {\"max_batch\": 4, \"backend\": \"auto\"},"
        " \"server\": {\"max_body_bytes\": 1048576, \"max_json_bytes\": 65536, \"drain_timeout_s\": 10,"
        "   \"request_deadline_ms\": 30000},"
        " \"admin\": {\"token\": \"" TOKEN "\"},"
        " \"train\": {\"data_root\": \"%s\", \"state_dir\": \"%s\", \"max_jobs\": 2, \"max_steps\": 100000,"
        "   \"max_batch\": 8, \"max_image_size\": 256, \"keep_checkpoints\": 5, \"workers\": 1},"
        " \"log\": {\"level\": \"info\"}}",
        g_data, g_state);
    return 0;
}

/* ------------------------------------------------------------------ setup */

static int group_setup(void **state) {
    (void)state;
    if (make_data()) {
        printf("test_train_http: cannot write the dataset / weights under %s\n", IT.tmp);
        return -1;
    }
    printf("itest: dataset %s/ds1 (36 colour PNGs 96x96), state %s\n", g_data, g_state);
    return it_daemon_start(&g_d, "train", g_config, g_weights6);
}

static int group_teardown(void **state) {
    (void)state;
    if (g_d.pid > 0) it_daemon_stop(&g_d, 20);
    return 0;
}

/* ------------------------------------------------------------------ the tiny job */

static int has_progress(json_t *j) {
    return jlong(j, "step") >= 3;
}

static int is_hexstr(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!strchr("0123456789abcdef", s[i])) return 0;
    return 1;
}

static void test_tiny_job(void **state) {
    (void)state;
    it_test_begin("tiny job: submit, train, losses, samples");
    int port = g_d.port;
    char body[512];
    snprintf(body, sizeof body,
             "{\"dataset\":\"ds1\",\"steps\":%d,\"batch_size\":4,\"image_size\":64,\"ngf\":8,\"seed\":3,"
             "\"validate_every\":20,\"checkpoint_every\":40,\"lr\":0.0002}",
             TINY_STEPS);
    it_resp r;
    double t0 = it_now();
    long st = areq(port, "POST", "/train", body, AUTH, &r);
    json_t *job = jload(&r);
    char loc[256] = "", want_loc[128];
    it_header(&r, "Location", loc, sizeof loc);
    snprintf(g_tiny, sizeof g_tiny, "%s", jstr(job, "id"));
    snprintf(want_loc, sizeof want_loc, "/train/%s", g_tiny);
    const char *id = g_tiny;
    if (!it_check(st == 202 && *id, "POST /train tiny job -> 202 (%ld %.300s)", st, r.body)) {
        json_decref(job);
        it_resp_free(&r);
        it_daemon_log_tail(&g_d, 30);
        IT_TEST_END();
        return;
    }
    it_check(!strcmp(loc, want_loc), "Location: %s (got '%s')", want_loc, loc);
    it_check(!strcmp(jstr(job, "url"), want_loc), "job url %s", jstr(job, "url"));
    it_check(strlen(id) == 22 && id[8] == '-' && id[15] == '-' && is_hexstr(id + 16, 6),
             "generated id '%s' has the form YYYYMMDD-HHMMSS-xxxxxx", id);
    it_check(status_in(job, "queued"), "status queued in the 202 body (%s)", jstr(job, "status"));
    json_t *params = json_object_get(job, "params");
    char *params_txt = params ? json_dumps(params, JSON_COMPACT) : NULL;
    it_check(fabs(jnum(params, "lambda_l1") - 100) < 1e-9 && fabs(jnum(params, "lr") - 0.0002) < 1e-12 &&
                 jlong(params, "keep_checkpoints") == 5 && !strcmp(jstr(params, "init"), "scratch") &&
                 jlong(params, "ngf") == 8 && jlong(params, "steps") == TINY_STEPS &&
                 jlong(params, "lr_decay_steps") == 0 && jlong(params, "batch_size") == 4,
             "params hold the effective values, defaults filled (%.400s)", params_txt ? params_txt : "(none)");
    free(params_txt);
    json_t *created = json_object_get(job, "created");
    it_check(json_is_string(created) && strlen(json_string_value(created)) >= 20 &&
                 json_string_value(created)[10] == 'T',
             "created is an RFC 3339 string (%s)", json_string_value(created));
    json_decref(job);
    it_resp_free(&r);

    /* serving while it trains */
    job = wait_job(port, id, "running succeeded failed", has_progress, 60);
    it_check(status_in(job, "running"), "job running within 60 s (status %s, step %ld)", jstr(job, "status"),
             jlong(job, "step"));
    long step_before = jlong(job, "step");
    json_decref(job);
    size_t glen;
    uint8_t *gray = it_make_image(160, 120, 1, 11, CZ_FMT_PNG, &glen);
    double lat[6], worst = 0;
    int n200 = 0;
    char lats[256] = "";
    for (int i = 0; i < 6; i++) {
        it_post(port, "/colorize?format=png", gray, glen, "image/png", &r);
        lat[i] = r.seconds * 1000;
        if (lat[i] > worst) worst = lat[i];
        n200 += r.status == 200;
        snprintf(lats + strlen(lats), sizeof lats - strlen(lats), "%s%.0f", i ? ", " : "", lat[i]);
        it_resp_free(&r);
        it_sleep(0.3);
    }
    job = get_job(port, id);
    long step_after = jlong(job, "step");
    /* one training step, as the job measures it (4 images per step); the bound leaves room for
     * the request's own work and a loaded machine, far below the job's length */
    double ips = jnum(job, "images_per_s");
    double step_ms = ips > 0 ? 4000.0 / ips : 1000.0, bound = 3 * step_ms + 2000;
    json_decref(job);
    it_check(n200 == 6, "POST /colorize while the job trains: %d/6 -> 200, latencies ms: %s", n200, lats);
    it_check(
        worst < bound,
        "  ... slowest %.0f ms < %.0f ms (3 training steps of %.0f ms + 2 s: a request waits at most one "
        "step, not for the job)",
        worst, bound, step_ms);
    it_check(step_after > step_before, "  ... and the job kept training meanwhile (step %ld -> %ld)",
             step_before, step_after);

    job = wait_job(port, id, "succeeded failed cancelled interrupted", NULL, 240);
    double took = it_now() - t0;
    if (!it_check(status_in(job, "succeeded"), "job succeeded (status %s, error %s) in %.1f s",
                  jstr(job, "status"), jstr(job, "error"), took)) {
        it_daemon_log_tail(&g_d, 30);
        json_decref(job);
        free(gray);
        IT_TEST_END();
        return;
    }
    char *dump = json_dumps(job, JSON_COMPACT);
    it_note("final job object: %.900s", dump);
    free(dump);
    it_check(jlong(job, "step") == TINY_STEPS && jlong(job, "total") == TINY_STEPS,
             "step = total = %d (%ld / %ld)", TINY_STEPS, jlong(job, "step"), jlong(job, "total"));
    it_check(json_is_string(json_object_get(job, "started")) &&
                 json_is_string(json_object_get(job, "finished")),
             "started and finished are set");
    it_check(json_is_null(json_object_get(job, "error")), "error is null");
    json_t *ls = json_object_get(job, "losses"), *val = json_object_get(job, "validation");
    it_check(json_is_number(json_object_get(ls, "g_l1")) && json_is_number(json_object_get(ls, "g_gan")) &&
                 json_is_number(json_object_get(ls, "d_real")) &&
                 json_is_number(json_object_get(ls, "d_fake")),
             "latest losses g_gan/g_l1/d_real/d_fake present");
    it_check(json_is_number(json_object_get(val, "l1")) && json_is_number(json_object_get(val, "psnr")) &&
                 json_is_number(json_object_get(val, "colorfulness_ratio")),
             "latest validation present (l1 %.4f, psnr %.2f, colorfulness ratio %.3f)", jnum(val, "l1"),
             jnum(val, "psnr"), jnum(val, "colorfulness_ratio"));
    json_t *ck = json_object_get(job, "checkpoints"), *best = json_object_get(job, "best");
    it_check(json_array_size(ck) >= 1, "%zu checkpoint(s) listed", json_array_size(ck));
    long last_ck = jlong(json_array_get(ck, json_array_size(ck) - 1), "step");
    it_check(last_ck == TINY_STEPS, "last checkpoint at the final step (%ld)", last_ck);
    it_check(json_is_object(best) && jlong(best, "step") > 0 &&
                 json_is_number(json_object_get(best, "val_l1")),
             "best checkpoint listed (step %ld, val_l1 %.4f)", jlong(best, "step"), jnum(best, "val_l1"));
    json_t *model = json_object_get(job, "model");
    it_check(jlong(model, "ngf") == 8 && jlong(model, "depth") == 6 &&
                 !strcmp(jstr(model, "color_mode"), "lab"),
             "model {ngf 8, depth 6, lab} (%ld, %ld, %s)", jlong(model, "ngf"), jlong(model, "depth"),
             jstr(model, "color_mode"));
    it_check(json_is_false(json_object_get(job, "resumable")), "a succeeded job is not resumable");
    json_t *samples = json_object_get(job, "samples");
    it_check(json_array_size(samples) >= 1, "%zu sample sheet(s) listed", json_array_size(samples));
    long sample_step = json_is_integer(json_array_get(samples, 0))
                           ? (long)json_integer_value(json_array_get(samples, 0))
                           : -1;
    json_decref(job);

    /* listed, newest first */
    areq(port, "GET", "/train", NULL, AUTH, &r);
    json_t *list = jload(&r);
    json_t *jobs = json_object_get(list, "jobs");
    it_check(r.status == 200 && !strcmp(jstr(json_array_get(jobs, 0), "id"), id),
             "GET /train lists it first (newest first; %zu jobs)", json_array_size(jobs));
    json_decref(list);
    it_resp_free(&r);

    /* the loss history */
    char p[256];
    snprintf(p, sizeof p, "/train/%s/losses", id);
    areq(port, "GET", p, NULL, AUTH, &r);
    json_t *h = jload(&r);
    json_t *recs = json_object_get(h, "losses");
    size_t n = json_array_size(recs);
    it_check(r.status == 200 && n == TINY_STEPS && jlong(h, "total") == TINY_STEPS &&
                 jlong(h, "stride") == 1 && !strcmp(jstr(h, "id"), id),
             "GET %s -> 200, %zu records, total %ld, stride %ld", p, n, jlong(h, "total"),
             jlong(h, "stride"));
    int steps_ok = 1;
    for (size_t i = 0; i < n; i++)
        if (jlong(json_array_get(recs, i), "step") != (long)i + 1) steps_ok = 0;
    it_check(steps_ok && n, "records are steps 1..%zu in order", n);
    if (n >= 20) {
        size_t k = n / 10;
        double first = 0, last = 0;
        for (size_t i = 0; i < k; i++) {
            first += jnum(json_array_get(recs, i), "g_l1") / (double)k;
            last += jnum(json_array_get(recs, n - k + i), "g_l1") / (double)k;
        }
        it_check(first > 1.3 * last,
                 "losses go down: mean g_l1 of the first %zu records %.3f, of the last %zu %.3f "
                 "(ratio %.2f, want > 1.3)",
                 k, first, k, last, first / last);
    }
    json_t *vh = json_object_get(h, "validation");
    it_check(json_array_size(vh) >= TINY_STEPS / 20, "%zu validation records (validate_every 20)",
             json_array_size(vh));
    if (json_array_size(vh) >= 2)
        it_note("validation l1: first %.4f (step %ld), last %.4f (step %ld)",
                jnum(json_array_get(vh, 0), "l1"), jlong(json_array_get(vh, 0), "step"),
                jnum(json_array_get(vh, json_array_size(vh) - 1), "l1"),
                jlong(json_array_get(vh, json_array_size(vh) - 1), "step"));
    json_decref(h);
    it_resp_free(&r);

    snprintf(p, sizeof p, "/train/%s/losses?stride=10", id);
    areq(port, "GET", p, NULL, AUTH, &r);
    h = jload(&r);
    recs = json_object_get(h, "losses");
    n = json_array_size(recs);
    it_check(r.status == 200 && n == TINY_STEPS / 10 && jlong(h, "stride") == 10 &&
                 jlong(h, "total") == TINY_STEPS && jlong(json_array_get(recs, 0), "step") == 1 &&
                 jlong(json_array_get(recs, 1), "step") == 11,
             "GET ...losses?stride=10 -> %zu records (want %d), steps %ld, %ld, ...", n, TINY_STEPS / 10,
             jlong(json_array_get(recs, 0), "step"), jlong(json_array_get(recs, 1), "step"));
    json_decref(h);
    it_resp_free(&r);
    snprintf(p, sizeof p, "/train/%s/losses?stride=1000000000", id);
    areq(port, "GET", p, NULL, AUTH, &r);
    h = jload(&r);
    it_check(r.status == 200 && json_array_size(json_object_get(h, "losses")) == 1,
             "stride=1000000000 -> only the first record (%ld, %zu)", r.status,
             json_array_size(json_object_get(h, "losses")));
    json_decref(h);
    it_resp_free(&r);
    const char *bad_strides[] = {"0", "-1", "abc", "1000000001", "", "1.5", "10x"};
    for (size_t i = 0; i < sizeof bad_strides / sizeof bad_strides[0]; i++) {
        char w[300];
        snprintf(p, sizeof p, "/train/%s/losses?stride=%s", id, bad_strides[i]);
        snprintf(w, sizeof w, "GET ...losses?stride=%s", bad_strides[i]);
        areq(port, "GET", p, NULL, AUTH, &r);
        it_check_error(&r, 400, "invalid_parameter", w);
        it_resp_free(&r);
    }

    /* sample sheets */
    if (sample_step >= 0) {
        snprintf(p, sizeof p, "/train/%s/samples/%ld.png", id, sample_step);
        areq(port, "GET", p, NULL, AUTH, &r);
        char ct[128] = "";
        it_header(&r, "Content-Type", ct, sizeof ct);
        cz_image img = {0};
        cz_image_format f = CZ_FMT_UNKNOWN;
        int dec =
            r.status == 200 && cz_image_decode(r.body, r.len, NULL, &img, &f) == CZ_OK && f == CZ_FMT_PNG;
        it_check(dec && !strncasecmp(ct, "image/png", 9),
                 "GET %s -> 200 image/png, a valid %dx%d PNG (%ld, '%s')", p, img.width, img.height, r.status,
                 ct);
        cz_image_free(&img);
        it_resp_free(&r);
    }
    snprintf(p, sizeof p, "/train/%s/samples/7.png", id);
    areq(port, "GET", p, NULL, AUTH, &r);
    it_check_error(&r, 404, "not_found", "GET .../samples/7.png (no sheet at step 7)");
    it_resp_free(&r);

    /* finished jobs */
    snprintf(p, sizeof p, "/train/%s", id);
    areq(port, "DELETE", p, NULL, AUTH, &r);
    it_check_error(&r, 409, "job_finished", "DELETE a succeeded job");
    it_resp_free(&r);
    snprintf(p, sizeof p, "/train/%s/resume", id);
    areq(port, "POST", p, NULL, AUTH, &r);
    it_check_error(&r, 409, "job_not_resumable", "POST .../resume on a succeeded job");
    it_resp_free(&r);

    /* files the contract places, and metrics */
    char f[PATH_MAX + 128];
    struct stat sb;
    snprintf(f, sizeof f, "%s/jobs/%s/job.json", g_state, id);
    it_check(stat(f, &sb) == 0, "%s exists", f);
    snprintf(f, sizeof f, "%s/jobs/%s/run/losses.jsonl", g_state, id);
    it_check(stat(f, &sb) == 0, "<state_dir>/jobs/<id>/run/losses.jsonl exists");
    char *m = it_get_metrics(port);
    double ok_jobs = it_metric_sum(m, "colorize_train_jobs", "status", "succeeded");
    double steps = it_metric_sum(m, "colorize_train_steps_total", NULL, NULL);
    it_check(ok_jobs >= 1 && steps >= TINY_STEPS && strstr(m, "colorize_train_images_per_second"),
             "metrics: colorize_train_jobs{status=\"succeeded\"} %.0f, colorize_train_steps_total %.0f, "
             "colorize_train_images_per_second present",
             ok_jobs, steps);
    free(m);
    free(gray);
    IT_TEST_END();
}

/* ------------------------------------------------------------------ cancel, queue bound */

#define LONG_JOB                                                                                       \
    "{\"dataset\":\"ds1\",\"steps\":100000,\"batch_size\":2,\"image_size\":64,\"ngf\":8,\"checkpoint_" \
    "every\":10,"                                                                                      \
    "\"validate_every\":10,\"seed\":%d}"

static int has_checkpoint(json_t *j) {
    return json_array_size(json_object_get(j, "checkpoints")) > 0;
}

static void test_cancel(void **state) {
    (void)state;
    it_test_begin("cancel, queue bound");
    int port = g_d.port;
    char body[512], a[65] = "", b[65] = "", p[160];
    it_resp r;
    snprintf(body, sizeof body, LONG_JOB, 1);
    if (!it_check(submit(port, body, a, NULL) == 202, "POST long job A -> 202")) {
        IT_TEST_END();
        return;
    }
    json_t *ja = wait_job(port, a, "running", has_progress, 60);
    it_check(status_in(ja, "running"), "A running (step %ld)", jlong(ja, "step"));
    json_decref(ja);
    snprintf(p, sizeof p, "/train/%s/resume", a);
    areq(port, "POST", p, NULL, AUTH, &r);
    it_check_error(&r, 409, "job_not_resumable", "POST .../resume on a running job");
    it_resp_free(&r);

    snprintf(body, sizeof body, LONG_JOB, 2);
    json_t *jb = NULL;
    long stb = submit(port, body, b, &jb);
    it_check(stb == 202 && status_in(jb, "queued"), "POST long job B while A runs -> 202 queued (%ld %s)",
             stb, jstr(jb, "status"));
    json_decref(jb);
    /* max_jobs = 2: a third is refused */
    areq(port, "POST", "/train", body, AUTH, &r);
    char ra[64] = "";
    it_header(&r, "Retry-After", ra, sizeof ra);
    if (it_check_error(&r, 429, "too_many_jobs", "POST a third job (train.max_jobs = 2)"))
        it_check(!strcmp(ra, "60"), "  ... with Retry-After: 60 (got '%s')", ra);
    it_resp_free(&r);

    /* a queued job is cancelled at once */
    if (*b) {
        snprintf(p, sizeof p, "/train/%s", b);
        double t0 = it_now();
        areq(port, "DELETE", p, NULL, AUTH, &r);
        it_check(r.status == 202, "DELETE queued job B -> 202 (%ld %.200s)", r.status, r.body);
        it_resp_free(&r);
        jb = wait_job(port, b, "cancelled", NULL, 10);
        it_check(status_in(jb, "cancelled") && jlong(jb, "step") == 0,
                 "B cancelled in %.2f s without running (status %s, step %ld)", it_now() - t0,
                 jstr(jb, "status"), jlong(jb, "step"));
        it_check(json_is_true(json_object_get(jb, "resumable")), "a cancelled job is resumable");
        json_decref(jb);
        areq(port, "DELETE", p, NULL, AUTH, &r);
        it_check_error(&r, 409, "job_finished", "DELETE B again");
        it_resp_free(&r);
    }

    /* a running job stops within a step and writes a final checkpoint */
    ja = wait_job(port, a, "running", has_checkpoint, 60);
    it_check(has_checkpoint(ja), "A has written a checkpoint (step %ld)", jlong(ja, "step"));
    json_decref(ja);
    snprintf(p, sizeof p, "/train/%s", a);
    double t0 = it_now();
    areq(port, "DELETE", p, NULL, AUTH, &r);
    json_t *dj = jload(&r);
    it_check(r.status == 202 && !strcmp(jstr(dj, "id"), a),
             "DELETE running job A -> 202 with the job object (%ld %.200s)", r.status, r.body);
    json_decref(dj);
    it_resp_free(&r);
    ja = wait_job(port, a, "cancelled", NULL, 30);
    double took = it_now() - t0;
    json_t *ck = json_object_get(ja, "checkpoints");
    long last_ck = jlong(json_array_get(ck, json_array_size(ck) - 1), "step");
    it_check(status_in(ja, "cancelled"), "A cancelled %.2f s after DELETE (status %s)", took,
             jstr(ja, "status"));
    it_check(last_ck > 0 && last_ck == jlong(ja, "step"),
             "A kept a final checkpoint at its last step (checkpoint %ld, step %ld)", last_ck,
             jlong(ja, "step"));
    it_check(json_is_true(json_object_get(ja, "resumable")), "A is resumable");
    snprintf(g_cancelled, sizeof g_cancelled, "%s", a);
    g_cancelled_ckpt = last_ck;
    json_decref(ja);
    areq(port, "DELETE", p, NULL, AUTH, &r);
    it_check_error(&r, 409, "job_finished", "DELETE A again");
    it_resp_free(&r);

    /* resume a cancelled job, then cancel it again */
    snprintf(p, sizeof p, "/train/%s/resume", b);
    areq(port, "POST", p, NULL, AUTH, &r);
    jb = jload(&r);
    it_check(r.status == 202 && status_in(jb, "queued"),
             "POST .../resume on cancelled B -> 202 queued (%ld %.160s)", r.status, r.body);
    json_decref(jb);
    it_resp_free(&r);
    snprintf(p, sizeof p, "/train/%s", b);
    areq(port, "DELETE", p, NULL, AUTH, &r);
    it_check(r.status == 202, "DELETE resumed B -> 202 (%ld)", r.status);
    it_resp_free(&r);
    jb = wait_job(port, b, "cancelled", NULL, 30);
    it_check(status_in(jb, "cancelled"), "B cancelled again (%s)", jstr(jb, "status"));
    json_decref(jb);
    IT_TEST_END();
}

/* ------------------------------------------------------------------ activation */

static uint8_t *colorize_png(int port, const uint8_t *in, size_t n, size_t *out_len, long *status) {
    it_resp r;
    it_post(port, "/colorize?format=png", in, n, "image/png", &r);
    *status = r.status;
    uint8_t *out = NULL;
    *out_len = 0;
    if (r.status == 200) {
        out = malloc(r.len);
        memcpy(out, r.body, r.len);
        *out_len = r.len;
    }
    it_resp_free(&r);
    return out;
}

/* A client that keeps posting /colorize (one request at a time) until told to stop, so that
 * an activation happens while requests are in flight. */
typedef struct bg_client {
    pthread_t th;
    int port;
    const uint8_t *img;
    size_t len;
    atomic_int stop;
    int sent, ok;
    double worst_ms;
} bg_client;

static void *bg_client_main(void *arg) {
    bg_client *c = arg;
    while (!atomic_load(&c->stop)) {
        it_resp r;
        it_post(c->port, "/colorize?format=png", c->img, c->len, "image/png", &r);
        c->sent++;
        c->ok += r.status == 200;
        if (r.seconds * 1000 > c->worst_ms) c->worst_ms = r.seconds * 1000;
        it_resp_free(&r);
    }
    return NULL;
}

static void test_activation(void **state) {
    (void)state;
    it_test_begin("activation");
    int port = g_d.port;
    if (!it_check(g_tiny[0] != '\0', "the tiny job exists")) {
        IT_TEST_END();
        return;
    }
    size_t glen, o0n, o1n;
    long st;
    uint8_t *gray = it_make_image(160, 120, 1, 23, CZ_FMT_PNG, &glen);
    char kind[32];
    char *sum0 = model_checksum(port, kind, sizeof kind);
    uint8_t *out0 = colorize_png(port, gray, glen, &o0n, &st);
    it_check(st == 200 && !strcmp(kind, "file"), "before: /colorize 200, model %s from a %s", sum0, kind);

    json_t *tj = get_job(port, g_tiny);
    long best_step = jlong(json_object_get(tj, "best"), "step");
    json_decref(tj);
    char body[256];
    snprintf(body, sizeof body, "{\"job\":\"%s\",\"step\":\"best\"}", g_tiny);
    it_resp r;
    bg_client bg = {.port = port, .img = gray, .len = glen};
    int bg_on = pthread_create(&bg.th, NULL, bg_client_main, &bg) == 0;
    it_sleep(0.3);
    double t0 = it_now();
    areq(port, "POST", "/model", body, AUTH, &r);
    double took = it_now() - t0;
    it_sleep(0.3);
    if (bg_on) {
        atomic_store(&bg.stop, 1);
        pthread_join(bg.th, NULL);
        it_check(bg.sent >= 2 && bg.ok == bg.sent,
                 "/colorize around the activation: %d/%d -> 200, slowest %.0f ms (no request fails during "
                 "the swap)",
                 bg.ok, bg.sent, bg.worst_ms);
    }
    json_t *m = jload(&r);
    json_t *src = json_object_get(m, "source");
    it_check(r.status == 200, "POST /model {job: tiny, step: best} -> 200 in %.2f s (%ld %.300s)", took,
             r.status, r.body);
    it_check(
        !strcmp(jstr(src, "kind"), "checkpoint") && !strcmp(jstr(src, "job"), g_tiny) &&
            jlong(src, "step") == best_step && *jstr(src, "path") && *jstr(src, "activated_at"),
        "  ... the answer is the new /model: source {checkpoint, job, step %ld (best), path, activated_at}",
        best_step);
    it_check(jlong(m, "ngf") == 8 && strcmp(jstr(m, "checksum"), sum0) != 0,
             "  ... ngf 8, checksum %s (was %s)", jstr(m, "checksum"), sum0);
    json_decref(m);
    it_resp_free(&r);
    char *sum1 = model_checksum(port, kind, sizeof kind);
    it_check(strcmp(sum1, sum0) != 0 && !strcmp(kind, "checkpoint"), "GET /model: checksum %s, source %s",
             sum1, kind);
    snprintf(g_active_sum, sizeof g_active_sum, "%s", sum1);
    uint8_t *out1 = colorize_png(port, gray, glen, &o1n, &st);
    it_check(st == 200 && out0 && out1 && (o0n != o1n || memcmp(out0, out1, o0n) != 0),
             "POST /colorize after activation -> 200 and a different image (the new weights serve)");
    if (out0 && out1) {
        cz_image a = {0}, b = {0};
        if (cz_image_decode(out0, o0n, NULL, &a, NULL) == CZ_OK &&
            cz_image_decode(out1, o1n, NULL, &b, NULL) == CZ_OK)
            it_check(it_max_dL(&a, &b) <= 1.5, "  ... luminance unchanged (max dL %.2f)", it_max_dL(&a, &b));
        cz_image_free(&a);
        cz_image_free(&b);
    }
    char f[PATH_MAX + 160];
    struct stat sb;
    snprintf(f, sizeof f, "%s/active_model.json", g_state);
    it_check(stat(f, &sb) == 0, "<state_dir>/active_model.json written");

    /* failures keep the model */
    snprintf(body, sizeof body, "{\"job\":\"%s\",\"step\":99999}", g_tiny);
    areq(port, "POST", "/model", body, AUTH, &r);
    it_check_error(&r, 404, "checkpoint_not_found", "POST /model {job: tiny, step: 99999}");
    it_resp_free(&r);
    char *s2 = model_checksum(port, NULL, 0);
    it_check(!strcmp(s2, sum1), "  ... model unchanged (%s)", s2);
    free(s2);
    areq(port, "POST", "/model", "{\"job\":\"20240101-000000-abcdef\",\"step\":\"latest\"}", AUTH, &r);
    it_check_error(&r, 404, "job_not_found", "POST /model {job: unknown}");
    it_resp_free(&r);

    /* a different depth (image_size 128 -> depth 7) is incompatible */
    char id7[65] = "";
    if (submit(port,
               "{\"dataset\":\"ds1\",\"steps\":2,\"batch_size\":1,\"image_size\":128,\"ngf\":4,\"checkpoint_"
               "every\":0,"
               "\"validate_every\":0}",
               id7, NULL) == 202) {
        json_t *j7 = wait_job(port, id7, "succeeded failed cancelled", NULL, 120);
        it_check(status_in(j7, "succeeded"), "a 2-step job at image_size 128 (depth 7) succeeded (%s %s)",
                 jstr(j7, "status"), jstr(j7, "error"));
        json_decref(j7);
        snprintf(body, sizeof body, "{\"job\":\"%s\",\"step\":\"latest\"}", id7);
        areq(port, "POST", "/model", body, AUTH, &r);
        it_check_error(&r, 409, "incompatible_model",
                       "POST /model with a depth-7 checkpoint (serving depth 6)");
        it_resp_free(&r);
        s2 = model_checksum(port, NULL, 0);
        it_check(!strcmp(s2, sum1), "  ... model unchanged (%s)", s2);
        free(s2);
    } else {
        it_check(0, "POST /train image_size 128 -> 202");
    }

    /* a corrupted checkpoint file fails validation */
    if (g_cancelled[0] && g_cancelled_ckpt > 0) {
        snprintf(f, sizeof f, "%s/jobs/%s/run/checkpoints/step_%ld.safetensors", g_state, g_cancelled,
                 g_cancelled_ckpt);
        size_t n = 0;
        uint8_t *ckb = it_read_file(f, &n);
        if (it_check(ckb && n > 1024, "checkpoint file %s (%zu bytes) found at the contract's layout", f,
                     n)) {
            it_write_file(f, ckb, n / 2); /* truncated: offsets past the end */
            snprintf(body, sizeof body, "{\"job\":\"%s\",\"step\":%ld}", g_cancelled, g_cancelled_ckpt);
            areq(port, "POST", "/model", body, AUTH, &r);
            it_check_error(&r, 422, "bad_weights", "POST /model with a truncated checkpoint file");
            it_resp_free(&r);
            s2 = model_checksum(port, NULL, 0);
            it_check(!strcmp(s2, sum1), "  ... model unchanged (%s)", s2);
            free(s2);
        }
        free(ckb);
    }
    uint8_t *out2 = colorize_png(port, gray, glen, &o1n, &st);
    it_check(st == 200, "POST /colorize after the failed activations -> 200");
    free(out2);

    /* the other two ways to initialize a job: the generator in service, a checkpoint */
    char idc[65] = "";
    json_t *jc = NULL;
    if (it_check(
            submit(port,
                   "{\"dataset\":\"ds1\",\"steps\":2,\"batch_size\":1,\"image_size\":64,\"init\":\"current\","
                   "\"checkpoint_every\":0,\"validate_every\":0}",
                   idc, NULL) == 202,
            "POST /train init current -> 202")) {
        jc = wait_job(port, idc, "succeeded failed cancelled", NULL, 120);
        json_t *mc = json_object_get(jc, "model");
        it_check(status_in(jc, "succeeded") && jlong(mc, "ngf") == 8 && jlong(mc, "depth") == 6,
                 "  ... succeeded from the served (activated, ngf 8) generator (%s %s, ngf %ld depth %ld)",
                 jstr(jc, "status"), jstr(jc, "error"), jlong(mc, "ngf"), jlong(mc, "depth"));
        json_decref(jc);
    }
    snprintf(body, sizeof body,
             "{\"dataset\":\"ds1\",\"steps\":2,\"batch_size\":1,\"image_size\":64,\"init\":\"checkpoint\","
             "\"init_job\":\"%s\",\"init_step\":\"best\",\"checkpoint_every\":0,\"validate_every\":0}",
             g_tiny);
    if (it_check(submit(port, body, idc, &jc) == 202,
                 "POST /train init checkpoint (the tiny job's best) -> 202")) {
        json_t *pc = json_object_get(jc, "params");
        it_check(!strcmp(jstr(pc, "init_job"), g_tiny), "  ... params.init_job %s", jstr(pc, "init_job"));
        json_decref(jc);
        jc = wait_job(port, idc, "succeeded failed cancelled", NULL, 120);
        it_check(status_in(jc, "succeeded") && jlong(json_object_get(jc, "model"), "ngf") == 8,
                 "  ... succeeded (%s %s)", jstr(jc, "status"), jstr(jc, "error"));
    }
    json_decref(jc);
    free(out0);
    free(out1);
    free(sum0);
    free(sum1);
    free(gray);
    IT_TEST_END();
}

/* ------------------------------------------------------------------ restart and resume */

static void test_restart(void **state) {
    (void)state;
    it_test_begin("restart: interrupted job, resume");
    int port = g_d.port;
    char body[512], id[65] = "", p[160];
    it_resp r;
    snprintf(body, sizeof body, LONG_JOB, 9);
    if (!it_check(submit(port, body, id, NULL) == 202, "POST long job C -> 202")) {
        IT_TEST_END();
        return;
    }
    json_t *j = wait_job(port, id, "running", has_checkpoint, 90);
    json_t *ck = json_object_get(j, "checkpoints");
    long seen_ck = jlong(json_array_get(ck, json_array_size(ck) - 1), "step");
    it_check(status_in(j, "running") && seen_ck > 0, "C running with a checkpoint at step %ld (step %ld)",
             seen_ck, jlong(j, "step"));
    json_decref(j);

    double t0 = it_now();
    int clean = it_daemon_stop(&g_d, 30);
    it_check(clean, "SIGTERM with a job running: daemon exits 0 in %.2f s", it_now() - t0);
    if (!clean) it_daemon_log_tail(&g_d, 30);
    if (!it_check(it_daemon_start(&g_d, "train2", g_config, g_weights6) == 0,
                  "new daemon on the same state_dir")) {
        IT_TEST_END();
        return;
    }
    port = g_d.port;
    char kind[32];
    char *sum = model_checksum(port, kind, sizeof kind);
    it_check(!g_active_sum[0] || (!strcmp(sum, g_active_sum) && !strcmp(kind, "checkpoint")),
             "the activated checkpoint serves again after the restart (%s from a %s, want %s)", sum, kind,
             g_active_sum);
    free(sum);

    j = get_job(port, id);
    ck = json_object_get(j, "checkpoints");
    long ck_step = jlong(json_array_get(ck, json_array_size(ck) - 1), "step");
    it_check(status_in(j, "interrupted") && json_is_true(json_object_get(j, "resumable")),
             "C shows interrupted, resumable (status %s, resumable %s, step %ld, last checkpoint %ld)",
             jstr(j, "status"), json_is_true(json_object_get(j, "resumable")) ? "true" : "false",
             jlong(j, "step"), ck_step);
    it_check(ck_step >= seen_ck, "its last checkpoint (%ld) is at least the one seen before (%ld)", ck_step,
             seen_ck);
    json_decref(j);
    if (g_tiny[0]) {
        j = get_job(port, g_tiny);
        it_check(status_in(j, "succeeded"), "the tiny job is still listed succeeded (%s)", jstr(j, "status"));
        json_decref(j);
    }
    snprintf(p, sizeof p, "/train/%s", id);
    areq(port, "DELETE", p, NULL, AUTH, &r);
    it_check_error(&r, 409, "job_finished", "DELETE an interrupted job");
    it_resp_free(&r);

    snprintf(p, sizeof p, "/train/%s/resume", id);
    areq(port, "POST", p, NULL, AUTH, &r);
    j = jload(&r);
    it_check(r.status == 202 && status_in(j, "queued"), "POST .../resume -> 202 queued (%ld %.200s)",
             r.status, r.body);
    json_decref(j);
    it_resp_free(&r);

    /* follow it: once running, its step never goes below the checkpoint */
    long min_step = -1, last = -1;
    double end = it_now() + 90;
    int running = 0;
    while (it_now() < end) {
        j = get_job(port, id);
        if (status_in(j, "running")) {
            long s = jlong(j, "step");
            if (s > 0 && (min_step < 0 || s < min_step)) min_step = s;
            last = s;
            running = 1;
        }
        int done = !status_in(j, "queued running") || (running && last >= ck_step + 5);
        json_decref(j);
        if (done) break;
        it_sleep(0.05);
    }
    it_check(running && last >= ck_step + 5, "resumed C runs past its checkpoint (step %ld, checkpoint %ld)",
             last, ck_step);
    it_check(min_step >= ck_step,
             "its step never went below the checkpoint (lowest seen %ld, checkpoint %ld)", min_step, ck_step);
    snprintf(p, sizeof p, "/train/%s/losses", id);
    areq(port, "GET", p, NULL, AUTH, &r);
    json_t *h = jload(&r);
    json_t *recs = json_object_get(h, "losses");
    int seq = json_array_size(recs) > 0;
    for (size_t i = 0; i < json_array_size(recs); i++)
        if (jlong(json_array_get(recs, i), "step") != (long)i + 1) seq = 0;
    it_check(seq, "its loss history is steps 1..%zu without gaps or repeats across the restart",
             json_array_size(recs));
    json_decref(h);
    it_resp_free(&r);

    snprintf(p, sizeof p, "/train/%s", id);
    areq(port, "DELETE", p, NULL, AUTH, &r);
    it_check(r.status == 202, "DELETE resumed C -> 202 (%ld)", r.status);
    it_resp_free(&r);
    j = wait_job(port, id, "cancelled", NULL, 30);
    it_check(status_in(j, "cancelled"), "C cancelled (%s)", jstr(j, "status"));
    json_decref(j);

    t0 = it_now();
    clean = it_daemon_stop(&g_d, 30);
    it_check(clean, "second daemon exits 0 on SIGTERM (%.2f s)", it_now() - t0);
    if (!clean) it_daemon_log_tail(&g_d, 30);
    IT_TEST_END();
}

/* ------------------------------------------------------------------ main */

static void on_watchdog(int sig) {
    (void)sig;
    static const char msg[] = "test_train_http: watchdog: still running after 840 s, giving up\n";
    if (write(2, msg, sizeof msg - 1) < 0) {
    }
    _exit(1); /* the daemons die with us (PR_SET_PDEATHSIG) */
}

int main(int argc, char **argv) {
    signal(SIGALRM, on_watchdog);
    alarm(840);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (it_env_init(argc, argv)) {
        fprintf(stderr, "test_train_http: environment not ready\n");
        return 1;
    }
    double t0 = it_now();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_auth),     cmocka_unit_test(test_disabled), cmocka_unit_test(test_bad_requests),
        cmocka_unit_test(test_tiny_job), cmocka_unit_test(test_cancel),   cmocka_unit_test(test_activation),
        cmocka_unit_test(test_restart),
    };
    int fails = cmocka_run_group_tests_name("train_http", tests, group_setup, group_teardown);
    printf("test_train_http: %d check(s) failed, %.1f s\n", it_total_failures(), it_now() - t0);
    it_env_cleanup(fails != 0 || it_total_failures() != 0);
    curl_global_cleanup();
    return fails;
}
