/* test_jobs.c: unit tests of the training-job registry (core/jobs.h), without HTTP, on the
 * `dnnl` backend (the registry is under test, not the numbers: on `ref` this took 110 s of
 * CI's 181 s ctest) and a generated dataset of 16 colourful 64x64 PNGs in a temp dir:
 *   - request validation: every field wrong, unknown fields, steps/epochs rules, init rules,
 *     dataset confinement (absolute, '..', a symlink leaving data_root, missing, empty), not
 *     JSON / not an object, training disabled, the max_jobs bound;
 *   - a job runs to success through cz_jobs_tick, writes its record, lists checkpoints and
 *     samples, serves its loss history with a stride and finds best/latest/numbered checkpoints;
 *   - cancel (queued and running), 409 on finished jobs;
 *   - records survive a reopen: a running job comes back interrupted and resumable, resumes
 *     from its checkpoint and finishes;
 *   - a write failure (a file-size limit standing in for a full disk) fails the job with the
 *     reason while the registry carries on;
 *   - retention (keep_jobs): the oldest finished jobs are deleted, the one in service is not. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend.h"
#include "fileio.h"
#include "image.h"
#include "jobs.h"
#include "testutil.h"

static char g_root[256], g_data[300], g_state[300];
static cz_backend *g_be;

static int setup(void **state) {
    (void)state;
    snprintf(g_root, sizeof g_root, "/tmp/cz_jobs_XXXXXX");
    if (!mkdtemp(g_root)) return -1;
    snprintf(g_data, sizeof g_data, "%s/data", g_root);
    mkdir(g_data, 0755);
    char d[400];
    snprintf(d, sizeof d, "%s/ds", g_data);
    if (tu_write_color_pngs(d, 16) != 0) return -1;
    snprintf(d, sizeof d, "%s/empty", g_data);
    mkdir(d, 0755);
    snprintf(d, sizeof d, "%s/gray", g_data); /* only grayscale photos: nothing to learn */
    mkdir(d, 0755);
    for (int k = 0; k < 3; k++) {
        cz_image im;
        if (cz_image_alloc(&im, 32, 32, 1) != CZ_OK) return -1;
        for (int i = 0; i < 32 * 32; i++) im.px[i] = (uint8_t)(i * 7 + k);
        uint8_t *png;
        size_t len;
        char path[700];
        snprintf(path, sizeof path, "%s/g%d.png", d, k);
        int bad = cz_image_encode(&im, CZ_FMT_PNG, 90, &png, &len) != CZ_OK || cz_file_write_atomic(path, png, len) != CZ_OK;
        free(png);
        cz_image_free(&im);
        if (bad) return -1;
    }
    snprintf(d, sizeof d, "%s/escape", g_data);
    if (symlink("/", d) != 0) return -1;
    snprintf(g_state, sizeof g_state, "%s/state", g_root);
    return cz_backend_create("dnnl", NULL, &g_be) == CZ_OK ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    cz_backend_destroy(g_be);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_root);
    return system(cmd) == 0 ? 0 : -1;
}

static int g_keep_jobs; /* train.keep_jobs of the next open_jobs */

static cz_jobs *open_jobs(const char *state_dir, int max_jobs, int training) {
    cz_jobs_opts o = {.data_root = training ? g_data : "",
                      .state_dir = state_dir,
                      .max_jobs = max_jobs,
                      .max_steps = 1000,
                      .max_batch = 8,
                      .max_image_size = 128,
                      .keep_checkpoints = 0,
                      .workers = 1,
                      .keep_jobs = g_keep_jobs};
    cz_jobs *j = NULL;
    assert_int_equal(cz_jobs_open(&o, &j), CZ_OK);
    return j;
}

/* Submits `body`; expects `http` (202 = success) and, for errors, the code and a message
 * starting with `field` when given. Returns the id (static) on success. */
static const char *submit(cz_jobs *j, const char *body, int http, const char *code, const char *field) {
    static char id[65];
    cz_api_error e;
    char *out = cz_jobs_submit(j, body, strlen(body), "/nonexistent/current.safetensors", id, &e);
    if (http == 202) {
        if (!out) fail_msg("%s -> %d %s: %s", body, e.http, e.code, e.message);
        free(out);
        return id;
    }
    if (out) fail_msg("%s: accepted, expected %d", body, http);
    if (e.http != http || strcmp(e.code, code) != 0)
        fail_msg("%s -> %d %s (%s), expected %d %s", body, e.http, e.code, e.message, http, code);
    if (field && strncmp(e.message, field, strlen(field)) != 0)
        fail_msg("%s -> message '%s' does not start with '%s'", body, e.message, field);
    return NULL;
}

static void test_validation(void **state) {
    (void)state;
    char sd[400];
    snprintf(sd, sizeof sd, "%s/state_validation", g_root);
    cz_jobs *off = open_jobs(sd, 4, 0);
    submit(off, "{\"dataset\":\"ds\",\"steps\":1}", 409, "training_disabled", NULL);
    cz_jobs_close(off);

    cz_jobs *j = open_jobs(sd, 1, 1);
    submit(j, "", 400, "invalid_json", NULL);
    submit(j, "{\"dataset\":", 400, "invalid_json", NULL);
    submit(j, "[1,2]", 400, "invalid_json", NULL);
    submit(j, "{\"dataset\":\"ds\",\"steps\":1,\"steps\":2}", 400, "invalid_json", NULL); /* duplicate key */
    submit(j, "{\"steps\":1}", 400, "invalid_field", "dataset");
    submit(j, "{\"dataset\":\"ds\"}", 400, "invalid_field", "steps");
    submit(j, "{\"dataset\":\"ds\",\"steps\":1,\"epochs\":1}", 400, "invalid_field", "steps");
    submit(j, "{\"dataset\":\"ds\",\"steps\":1,\"colour\":1}", 400, "invalid_field", "colour");
    submit(j, "{\"dataset\":3,\"steps\":1}", 400, "invalid_field", "dataset");
    submit(j, "{\"dataset\":\"ds\",\"steps\":0}", 400, "invalid_field", "steps");
    submit(j, "{\"dataset\":\"ds\",\"steps\":1001}", 400, "invalid_field", "steps");
    submit(j, "{\"dataset\":\"ds\",\"steps\":1.5}", 400, "invalid_field", "steps");
    submit(j, "{\"dataset\":\"ds\",\"steps\":\"10\"}", 400, "invalid_field", "steps");
    submit(j, "{\"dataset\":\"ds\",\"epochs\":0}", 400, "invalid_field", "epochs");
    submit(j, "{\"dataset\":\"ds\",\"epochs\":1e9}", 400, "invalid_field", "epochs");
    submit(j, "{\"dataset\":\"ds\",\"steps\":1,\"batch_size\":0}", 400, "invalid_field", "batch_size");
    submit(j, "{\"dataset\":\"ds\",\"steps\":1,\"batch_size\":9}", 400, "invalid_field", "batch_size");
    submit(j, "{\"dataset\":\"ds\",\"steps\":1,\"image_size\":96}", 400, "invalid_field", "image_size");
    submit(j, "{\"dataset\":\"ds\",\"steps\":1,\"image_size\":256}", 400, "invalid_field", "image_size");
    submit(j, "{\"dataset\":\"ds\",\"steps\":1,\"image_size\":32}", 400, "invalid_field", "image_size");
    submit(j, "{\"dataset\":\"ds\",\"steps\":1,\"lr\":0}", 400, "invalid_field", "lr");
    submit(j, "{\"dataset\":\"ds\",\"steps\":1,\"lr\":2}", 400, "invalid_field", "lr");
    submit(j, "{\"dataset\":\"ds\",\"steps\":1,\"lambda_l1\":-1}", 400, "invalid_field", "lambda_l1");
    submit(j, "{\"dataset\":\"ds\",\"steps\":1,\"ngf\":3}", 400, "invalid_field", "ngf");
    submit(j, "{\"dataset\":\"ds\",\"steps\":1,\"ngf\":8,\"init\":\"current\"}", 400, "invalid_field", "ngf");
    submit(j, "{\"dataset\":\"ds\",\"steps\":1,\"init\":\"warm\"}", 400, "invalid_field", "init");
    submit(j, "{\"dataset\":\"ds\",\"steps\":1,\"init\":\"checkpoint\"}", 400, "invalid_field", "init_job");
    submit(j, "{\"dataset\":\"ds\",\"steps\":1,\"init_job\":\"abc\"}", 400, "invalid_field", "init_job");
    submit(j, "{\"dataset\":\"ds\",\"steps\":1,\"init\":\"checkpoint\",\"init_job\":\"../x\"}", 400, "invalid_field",
           "init_job");
    submit(j, "{\"dataset\":\"ds\",\"steps\":1,\"init\":\"checkpoint\",\"init_job\":\"nope\"}", 404, "job_not_found",
           NULL);
    submit(j, "{\"dataset\":\"ds\",\"steps\":1,\"seed\":-1}", 400, "invalid_field", "seed");
    submit(j, "{\"dataset\":\"ds\",\"steps\":1,\"validate_every\":-1}", 400, "invalid_field", "validate_every");
    submit(j, "{\"dataset\":\"ds\",\"steps\":1,\"checkpoint_every\":true}", 400, "invalid_field", "checkpoint_every");
    submit(j, "{\"dataset\":\"ds\",\"steps\":1,\"keep_checkpoints\":1001}", 400, "invalid_field", "keep_checkpoints");
    submit(j, "{\"dataset\":\"ds\",\"steps\":10,\"lr_decay_steps\":11}", 400, "invalid_field", "lr_decay_steps");
    /* confinement */
    submit(j, "{\"dataset\":\"/etc\",\"steps\":1}", 400, "invalid_field", "dataset");
    submit(j, "{\"dataset\":\"../data/ds\",\"steps\":1}", 400, "invalid_field", "dataset");
    submit(j, "{\"dataset\":\"ds/../../x\",\"steps\":1}", 400, "invalid_field", "dataset");
    submit(j, "{\"dataset\":\"escape\",\"steps\":1}", 400, "invalid_field", "dataset");
    submit(j, "{\"dataset\":\"escape/tmp\",\"steps\":1}", 400, "invalid_field", "dataset");
    submit(j, "{\"dataset\":\"missing\",\"steps\":1}", 404, "dataset_not_found", NULL);
    submit(j, "{\"dataset\":\"ds/img_00.png\",\"steps\":1}", 404, "dataset_not_found", NULL);
    submit(j, "{\"dataset\":\"empty\",\"steps\":1}", 422, "empty_dataset", NULL);
    submit(j, "{\"dataset\":\"gray\",\"steps\":1}", 422, "empty_dataset", NULL);
    submit(j, "{\"dataset\":\"ds\",\"steps\":1,\"precision\":\"fp16\"}", 400, "invalid_field", "precision");
    submit(j, "{\"dataset\":\"init\",\"init\":\"current\",\"steps\":1}", 404, "dataset_not_found", NULL);
    /* the queue bound (max_jobs 1): the second one waits for the first */
    submit(j, "{\"dataset\":\"ds\",\"steps\":5,\"image_size\":64,\"ngf\":4}", 202, NULL, NULL);
    cz_api_error e;
    char id[65];
    char *out = cz_jobs_submit(j, "{\"dataset\":\"./ds\",\"epochs\":0.5}", 31, "", id, &e);
    assert_null(out);
    assert_int_equal(e.http, 429);
    assert_string_equal(e.code, "too_many_jobs");
    assert_true(e.retry_after > 0);
    cz_jobs_close(j);
}

/* Ticks until nothing is left to do (bounded). */
static void run_all(cz_jobs *j) {
    for (int i = 0; i < 10000 && cz_jobs_tick(j, g_be); i++) {
    }
}

static json_t *get(cz_jobs *j, const char *id) {
    cz_api_error e;
    char *txt = cz_jobs_get_json(j, id, &e);
    if (!txt) fail_msg("get %s: %d %s %s", id, e.http, e.code, e.message);
    json_t *o = json_loads(txt, 0, NULL);
    free(txt);
    assert_non_null(o);
    return o;
}

static const char *status_of(json_t *o) { return json_string_value(json_object_get(o, "status")); }

static void test_run_and_history(void **state) {
    (void)state;
    char sd[400];
    snprintf(sd, sizeof sd, "%s/state_run", g_root);
    cz_jobs *j = open_jobs(sd, 4, 1);
    char id[65];
    snprintf(id, sizeof id, "%s",
             submit(j, "{\"dataset\":\"ds\",\"steps\":6,\"batch_size\":2,\"image_size\":64,\"ngf\":4,"
                       "\"validate_every\":2,\"checkpoint_every\":3,\"seed\":7}",
                    202, NULL, NULL));
    json_t *o = get(j, id);
    assert_string_equal(status_of(o), "queued");
    json_decref(o);
    run_all(j);
    o = get(j, id);
    assert_string_equal(status_of(o), "succeeded");
    assert_int_equal(json_integer_value(json_object_get(o, "step")), 6);
    assert_int_equal(json_array_size(json_object_get(o, "checkpoints")), 2); /* steps 3 and 6 */
    assert_true(json_is_object(json_object_get(o, "best")));
    assert_true(json_array_size(json_object_get(o, "samples")) >= 1);
    assert_true(json_is_object(json_object_get(o, "losses")));
    assert_true(json_is_object(json_object_get(o, "validation")));
    assert_false(json_is_true(json_object_get(o, "resumable")));
    long sample_step = (long)json_integer_value(json_array_get(json_object_get(o, "samples"), 0));
    json_decref(o);

    cz_api_error e;
    char *txt = cz_jobs_losses_json(j, id, 4, &e);
    assert_non_null(txt);
    o = json_loads(txt, 0, NULL);
    free(txt);
    assert_int_equal(json_integer_value(json_object_get(o, "total")), 6);
    assert_int_equal(json_array_size(json_object_get(o, "losses")), 2); /* steps 1 and 5 */
    assert_int_equal(json_integer_value(json_object_get(json_array_get(json_object_get(o, "losses"), 1), "step")), 5);
    assert_true(json_array_size(json_object_get(o, "validation")) >= 3);
    json_decref(o);

    char *p = cz_jobs_sample_path(j, id, sample_step, &e);
    assert_non_null(p);
    assert_int_equal(access(p, R_OK), 0);
    free(p);
    assert_null(cz_jobs_sample_path(j, id, 12345, &e));
    assert_int_equal(e.http, 404);

    char path[4200];
    long step = 0;
    assert_int_equal(cz_jobs_checkpoint(j, id, -2, path, sizeof path, &step, &e), 0);
    assert_int_equal(step, 6);
    assert_int_equal(cz_jobs_checkpoint(j, id, 3, path, sizeof path, &step, &e), 0);
    assert_int_equal(step, 3);
    assert_int_equal(cz_jobs_checkpoint(j, id, -1, path, sizeof path, &step, &e), 0);
    assert_true(step == 3 || step == 6);
    assert_int_not_equal(cz_jobs_checkpoint(j, id, 4, path, sizeof path, &step, &e), 0);
    assert_string_equal(e.code, "checkpoint_not_found");
    assert_int_not_equal(cz_jobs_checkpoint(j, "nope", -1, path, sizeof path, &step, &e), 0);
    assert_string_equal(e.code, "job_not_found");

    /* finished jobs cannot be cancelled or resumed */
    assert_null(cz_jobs_cancel(j, id, &e));
    assert_int_equal(e.http, 409);
    assert_string_equal(e.code, "job_finished");
    assert_null(cz_jobs_resume(j, id, &e));
    assert_string_equal(e.code, "job_not_resumable");

    /* a job initialised from this one's checkpoint */
    char body[300];
    snprintf(body, sizeof body,
             "{\"dataset\":\"ds\",\"steps\":2,\"batch_size\":2,\"image_size\":64,\"init\":\"checkpoint\","
             "\"init_job\":\"%s\",\"init_step\":\"latest\"}",
             id);
    char id2[65];
    snprintf(id2, sizeof id2, "%s", submit(j, body, 202, NULL, NULL));
    run_all(j);
    o = get(j, id2);
    assert_string_equal(status_of(o), "succeeded");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(o, "model"), "ngf")), 4);
    json_decref(o);

    txt = cz_jobs_list_json(j, &e);
    o = json_loads(txt, 0, NULL);
    free(txt);
    assert_int_equal(json_array_size(json_object_get(o, "jobs")), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(json_object_get(o, "jobs"), 0), "id")), id2);
    json_decref(o);
    cz_jobs_stats st;
    cz_jobs_stats_get(j, &st);
    assert_int_equal(st.succeeded, 2);
    assert_int_equal(st.steps_total, 8);
    cz_jobs_close(j);

    /* records survive a reopen */
    j = open_jobs(sd, 4, 1);
    o = get(j, id);
    assert_string_equal(status_of(o), "succeeded");
    assert_int_equal(json_integer_value(json_object_get(o, "step")), 6);
    json_decref(o);
    cz_jobs_close(j);
}

static void test_cancel_interrupt_resume(void **state) {
    (void)state;
    char sd[400];
    snprintf(sd, sizeof sd, "%s/state_resume", g_root);
    cz_jobs *j = open_jobs(sd, 4, 1);
    cz_api_error e;
    const char *body = "{\"dataset\":\"ds\",\"steps\":8,\"batch_size\":2,\"image_size\":64,\"ngf\":4,"
                       "\"validate_every\":0,\"checkpoint_every\":2}";
    char a[65], b[65];
    snprintf(a, sizeof a, "%s", submit(j, body, 202, NULL, NULL));
    snprintf(b, sizeof b, "%s", submit(j, body, 202, NULL, NULL));
    /* b is cancelled while queued */
    char *txt = cz_jobs_cancel(j, b, &e);
    assert_non_null(txt);
    free(txt);
    json_t *o = get(j, b);
    assert_string_equal(status_of(o), "cancelled");
    assert_true(json_is_true(json_object_get(o, "resumable")));
    json_decref(o);
    /* a: start + 5 steps, then the "daemon" stops */
    for (int i = 0; i < 6; i++) assert_int_equal(cz_jobs_tick(j, g_be), 1);
    o = get(j, a);
    assert_string_equal(status_of(o), "running");
    assert_int_equal(json_integer_value(json_object_get(o, "step")), 5);
    json_decref(o);
    cz_jobs_close(j);

    j = open_jobs(sd, 4, 1);
    o = get(j, a);
    assert_string_equal(status_of(o), "interrupted");
    assert_true(json_is_true(json_object_get(o, "resumable")));
    assert_int_equal(json_array_size(json_object_get(o, "checkpoints")), 2); /* steps 2 and 4 */
    json_decref(o);
    assert_int_equal(cz_jobs_tick(j, g_be), 0); /* nothing queued after a restart */
    txt = cz_jobs_resume(j, a, &e);
    assert_non_null(txt);
    free(txt);
    assert_int_equal(cz_jobs_tick(j, g_be), 1); /* starts from the step-4 checkpoint */
    o = get(j, a);
    assert_string_equal(status_of(o), "running");
    assert_int_equal(json_integer_value(json_object_get(o, "step")), 4);
    json_decref(o);
    assert_int_equal(cz_jobs_tick(j, g_be), 1); /* step 5 */
    txt = cz_jobs_cancel(j, a, &e);               /* running: stops at the next tick */
    assert_non_null(txt);
    free(txt);
    assert_int_equal(cz_jobs_tick(j, g_be), 1);
    o = get(j, a);
    assert_string_equal(status_of(o), "cancelled");
    assert_int_equal(json_integer_value(json_object_get(o, "step")), 5);
    json_decref(o);
    long step = 0;
    char path[4200];
    assert_int_equal(cz_jobs_checkpoint(j, a, -2, path, sizeof path, &step, &e), 0);
    assert_int_equal(step, 5); /* cancel writes a final checkpoint */
    /* resume again and let it finish */
    txt = cz_jobs_resume(j, a, &e);
    assert_non_null(txt);
    free(txt);
    run_all(j);
    o = get(j, a);
    assert_string_equal(status_of(o), "succeeded");
    assert_int_equal(json_integer_value(json_object_get(o, "step")), 8);
    json_decref(o);
    cz_jobs_close(j);
}

/* Limits that only apply once the job starts or that shape defaults. */
static void test_limits(void **state) {
    (void)state;
    char sd[400];
    snprintf(sd, sizeof sd, "%s/state_limits", g_root);
    cz_jobs *j = open_jobs(sd, 4, 1);
    /* epochs become steps at start: 1000 epochs of ~15 images exceed max_steps (1000) */
    char id[65];
    snprintf(id, sizeof id, "%s", submit(j, "{\"dataset\":\"ds\",\"epochs\":1000,\"image_size\":64,\"ngf\":4}", 202, NULL, NULL));
    run_all(j);
    json_t *o = get(j, id);
    assert_string_equal(status_of(o), "failed");
    assert_non_null(strstr(json_string_value(json_object_get(o, "error")), "above the limit of 1000"));
    json_decref(o);
    /* the default image size stays within train.max_image_size (128 here) */
    snprintf(id, sizeof id, "%s", submit(j, "{\"dataset\":\"ds\",\"steps\":1,\"ngf\":4}", 202, NULL, NULL));
    o = get(j, id);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(o, "params"), "image_size")), 128);
    json_decref(o);
    cz_api_error e;
    char *txt = cz_jobs_cancel(j, id, &e);
    assert_non_null(txt);
    free(txt);
    cz_jobs_close(j);
}

/* A full disk (here: a file-size limit, so writes fail with EFBIG) fails the job with the
 * reason, and the registry (the daemon) carries on: the next job runs once space is back. */
static void test_write_failure(void **state) {
    (void)state;
    char sd[400];
    snprintf(sd, sizeof sd, "%s/state_full", g_root);
    cz_jobs *j = open_jobs(sd, 4, 1);
    const char *body = "{\"dataset\":\"ds\",\"steps\":4,\"batch_size\":2,\"image_size\":64,\"ngf\":4,"
                       "\"validate_every\":0,\"checkpoint_every\":2}";
    char id[65];
    snprintf(id, sizeof id, "%s", submit(j, body, 202, NULL, NULL));
    assert_int_equal(cz_jobs_tick(j, g_be), 1); /* started: logs and state written */
    struct rlimit old, lim;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    lim = old;
    lim.rlim_cur = 4096; /* a checkpoint is far larger */
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    run_all(j);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, prev);
    json_t *o = get(j, id);
    assert_string_equal(status_of(o), "failed");
    const char *err = json_string_value(json_object_get(o, "error"));
    printf("failed job's error: %s\n", err);
    assert_non_null(err);
    assert_true(json_is_true(json_object_get(o, "resumable")));
    json_decref(o);
    /* space is back: a new job runs to the end */
    snprintf(id, sizeof id, "%s", submit(j, body, 202, NULL, NULL));
    run_all(j);
    o = get(j, id);
    assert_string_equal(status_of(o), "succeeded");
    json_decref(o);
    cz_jobs_close(j);
}

/* train.keep_jobs: the oldest finished jobs go, except the one in service. */
static void test_retention(void **state) {
    (void)state;
    char sd[400], ids[4][65];
    snprintf(sd, sizeof sd, "%s/state_keep", g_root);
    g_keep_jobs = 2;
    cz_jobs *j = open_jobs(sd, 4, 1);
    const char *body = "{\"dataset\":\"ds\",\"steps\":1,\"image_size\":64,\"ngf\":4,\"validate_every\":0}";
    for (int k = 0; k < 3; k++) {
        snprintf(ids[k], sizeof ids[k], "%s", submit(j, body, 202, NULL, NULL));
        run_all(j);
    }
    cz_api_error e;
    char *txt = cz_jobs_get_json(j, ids[0], &e);
    assert_null(txt); /* the oldest of three finished jobs is gone */
    assert_string_equal(e.code, "job_not_found");
    char dir[700];
    snprintf(dir, sizeof dir, "%s/jobs/%s", sd, ids[0]);
    assert_int_not_equal(access(dir, F_OK), 0);
    /* the daemon serves job 1's checkpoint: it is spared, job 2 goes instead */
    char rec[700], js[200];
    snprintf(rec, sizeof rec, "%s/active_model.json", sd);
    int n = snprintf(js, sizeof js, "{\"path\":\"x\",\"job\":\"%s\",\"step\":1}", ids[1]);
    assert_int_equal(cz_file_write_atomic(rec, js, (size_t)n), CZ_OK);
    snprintf(ids[3], sizeof ids[3], "%s", submit(j, body, 202, NULL, NULL));
    run_all(j);
    txt = cz_jobs_get_json(j, ids[1], &e);
    assert_non_null(txt);
    free(txt);
    assert_null(cz_jobs_get_json(j, ids[2], &e));
    txt = cz_jobs_get_json(j, ids[3], &e);
    assert_non_null(txt);
    free(txt);
    cz_jobs_close(j);
    g_keep_jobs = 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_validation),
        cmocka_unit_test(test_run_and_history),
        cmocka_unit_test(test_cancel_interrupt_resume),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_write_failure),
        cmocka_unit_test(test_retention),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
