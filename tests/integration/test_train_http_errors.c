/* test_train_http_errors.c: the refusals of the admin API, half of test_train_http (see
 * test_train_http.c for how it runs): the bearer token (401 + WWW-Authenticate on every admin
 * operation, decided before the body), daemons without a token (403 admin_disabled) and
 * without a data root (409 training_disabled), every POST /train and POST /model field wrong,
 * JSON that is not an object, oversized bodies, dataset escapes (.., absolute, a symlink out
 * of the root), missing / empty / gray-only datasets, unknown jobs and malformed sub-paths.
 * Runs on the main thread against the shared training daemon g_d (and two short-lived ones of
 * its own). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
// clang-format off
#include <cmocka.h>
// clang-format on

#include "test_train_http.h"

/* ------------------------------------------------------------------ auth */

static void check_401(int port, const char *method, const char *path, const char *body, const char *auth,
                      const char *what) {
    it_resp r;
    areq(port, method, path, body, auth, &r);
    char wa[256] = "";
    it_header(&r, "WWW-Authenticate", wa, sizeof wa);
    char w[256];
    snprintf(w, sizeof w, "%s %s %s", method, path, what);
    if (it_check_error(&r, 401, "unauthorized", w))
        it_check(!strcmp(wa, REALM), "  ... with WWW-Authenticate: %s (got '%s')", REALM, wa);
    it_resp_free(&r);
}

void test_auth(void **state) {
    (void)state;
    it_test_begin("admin token");
    int port = g_d.port;
    const char *job = "/train/20240101-000000-abcdef";
    struct {
        const char *m, *p, *b;
    } ops[] = {{"GET", "/train", NULL},
               {"POST", "/train", "{\"dataset\":\"ds1\",\"steps\":1}"},
               {"GET", job, NULL},
               {"DELETE", job, NULL},
               {"GET", "/train/20240101-000000-abcdef/losses", NULL},
               {"GET", "/train/20240101-000000-abcdef/samples/1.png", NULL},
               {"POST", "/train/20240101-000000-abcdef/resume", NULL},
               {"POST", "/model", "{\"job\":\"20240101-000000-abcdef\"}"}};
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
        check_401(port, ops[i].m, ops[i].p, ops[i].b, NULL, "without Authorization");
    check_401(port, "GET", "/train", NULL, "Authorization: Bearer wrong-token-0000000000000", "wrong token");
    check_401(port, "GET", "/train", NULL, "Authorization: Bearer " TOKEN "x", "token + one more char");
    check_401(port, "GET", "/train", NULL, "Authorization: Bearer itest-admin-7f3a9c51e2d84b0",
              "token - last char");
    check_401(port, "GET", "/train", NULL, "Authorization: Bearer ", "empty token");
    check_401(port, "GET", "/train", NULL, "Authorization: Basic aXRlc3Q6eA==", "Basic scheme");
    check_401(port, "POST", "/model", "{\"job\":\"x\"}", "Authorization: Bearer nope", "wrong token");

    /* decided from the headers: a body far above max_json_bytes still gets 401, not 413 */
    size_t big = 300000;
    char *b = malloc(big + 1);
    memset(b, ' ', big);
    b[0] = '{', b[big - 1] = '}', b[big] = '\0';
    check_401(port, "POST", "/train", b, NULL, "with a 300 kB body (401 before the body)");
    free(b);

    it_resp r;
    long st = areq(port, "GET", "/train", NULL, AUTH, &r);
    json_t *j = jload(&r);
    it_check(st == 200 && json_is_array(json_object_get(j, "jobs")),
             "GET /train with the token -> 200 {\"jobs\": [...]} (%ld %.120s)", st, r.body);
    json_decref(j);
    it_resp_free(&r);

    it_get(port, "/model", &r);
    j = jload(&r);
    json_t *src = json_object_get(j, "source");
    it_check(r.status == 200 && !strcmp(jstr(src, "kind"), "file") && *jstr(src, "path"),
             "GET /model stays public and shows source {kind: file, path} (%ld %.200s)", r.status, r.body);
    json_decref(j);
    it_resp_free(&r);
    IT_TEST_END();
}

/* Daemons without a token (403 admin_disabled) and without a data root (409 training_disabled). */
void test_disabled(void **state) {
    (void)state;
    it_test_begin("admin API off / training off");
    it_daemon d;
    char cfg[PATH_MAX + 1024];
    snprintf(cfg, sizeof cfg,
             "{\"model\": {\"max_batch\": 2}, \"train\": {\"data_root\": \"%s\", \"state_dir\": "
             "\"%s/st-noadmin\"},"
             " \"log\": {\"level\": \"warn\"}}",
             g_data, IT.tmp);
    if (it_check(it_daemon_start(&d, "noadmin", cfg, g_weights6) == 0, "daemon without admin.token starts")) {
        it_resp r;
        const char *paths[][3] = {{"GET", "/train", NULL},
                                  {"POST", "/train", "{\"dataset\":\"ds1\",\"steps\":1}"},
                                  {"GET", "/train/20240101-000000-abcdef", NULL},
                                  {"DELETE", "/train/20240101-000000-abcdef", NULL},
                                  {"POST", "/model", "{\"job\":\"20240101-000000-abcdef\"}"}};
        for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
            char w[128];
            snprintf(w, sizeof w, "no token configured: %s %s", paths[i][0], paths[i][1]);
            areq(d.port, paths[i][0], paths[i][1], paths[i][2], NULL, &r);
            it_check_error(&r, 403, "admin_disabled", w);
            it_resp_free(&r);
        }
        areq(d.port, "GET", "/train", NULL, AUTH, &r);
        it_check_error(&r, 403, "admin_disabled",
                       "no token configured, request with a bearer token: GET /train");
        it_resp_free(&r);
        size_t big = 300000;
        char *b = malloc(big + 1);
        memset(b, 'x', big);
        b[big] = '\0';
        areq(d.port, "POST", "/train", b, NULL, &r);
        it_check_error(&r, 403, "admin_disabled", "no token configured, 300 kB body (403 before the body)");
        it_resp_free(&r);
        free(b);
        it_get(d.port, "/model", &r);
        it_check(r.status == 200, "GET /model still 200 without admin (%ld)", r.status);
        it_resp_free(&r);
        it_check(it_daemon_stop(&d, 10), "daemon without token exits 0 on SIGTERM");
    }

    snprintf(cfg, sizeof cfg,
             "{\"model\": {\"max_batch\": 2}, \"admin\": {\"token\": \"" TOKEN "\"},"
             " \"train\": {\"state_dir\": \"%s/st-notrain\"}, \"log\": {\"level\": \"warn\"}}",
             IT.tmp);
    if (it_check(it_daemon_start(&d, "notrain", cfg, g_weights6) == 0,
                 "daemon without train.data_root starts")) {
        it_resp r;
        areq(d.port, "POST", "/train", "{\"dataset\":\"ds1\",\"steps\":10,\"image_size\":64}", AUTH, &r);
        it_check_error(&r, 409, "training_disabled", "no train.data_root: POST /train");
        it_resp_free(&r);
        areq(d.port, "GET", "/train", NULL, AUTH, &r);
        it_check(r.status == 200, "no train.data_root: GET /train -> 200 (%ld %.120s)", r.status, r.body);
        it_resp_free(&r);
        areq(d.port, "GET", "/train/20240101-000000-abcdef", NULL, AUTH, &r);
        it_check_error(&r, 404, "job_not_found", "no train.data_root: GET /train/{unknown}");
        it_resp_free(&r);
        it_check(it_daemon_stop(&d, 10), "daemon without data root exits 0 on SIGTERM");
    }
    IT_TEST_END();
}

/* ------------------------------------------------------------------ bad requests */

typedef struct bad_case {
    const char *body;
    long status;
    const char *code;
    const char *field; /* the message starts with it (or names it, when contains) */
    int contains;
} bad_case;

#define DS "\"dataset\":\"ds1\","
static const bad_case k_bad_train[] = {
    /* not a JSON object */
    {"", 400, "invalid_json", NULL, 0},
    {"{\"dataset\":", 400, "invalid_json", NULL, 0},
    {"{\"dataset\":\"ds1\",\"steps\":10,}", 400, "invalid_json", NULL, 0},
    {"[1,2,3]", 400, "invalid_json", NULL, 0},
    {"\"ds1\"", 400, "invalid_json", NULL, 0},
    {"null", 400, "invalid_json", NULL, 0},
    {"42", 400, "invalid_json", NULL, 0},
    {"{\"dataset\":\"ds1\",\"steps\":10} {}", 400, "invalid_json", NULL, 0},
    /* unknown field */
    {"{" DS "\"steps\":10,\"bogus\":1}", 400, "invalid_field", "bogus", 1},
    {"{" DS "\"steps\":10,\"Steps\":10}", 400, "invalid_field", "Steps", 1},
    /* required / exclusive */
    {"{\"steps\":10}", 400, "invalid_field", "dataset", 0},
    {"{" DS "\"batch_size\":2}", 400, "invalid_field", "steps", 0},
    {"{" DS "\"steps\":10,\"epochs\":1}", 400, "invalid_field", "steps", 0},
    /* types */
    {"{\"dataset\":5,\"steps\":10}", 400, "invalid_field", "dataset", 0},
    {"{\"dataset\":null,\"steps\":10}", 400, "invalid_field", "dataset", 0},
    {"{" DS "\"steps\":\"10\"}", 400, "invalid_field", "steps", 0},
    {"{" DS "\"steps\":1.5}", 400, "invalid_field", "steps", 0},
    {"{" DS "\"steps\":true}", 400, "invalid_field", "steps", 0},
    {"{" DS "\"epochs\":\"2\"}", 400, "invalid_field", "epochs", 0},
    {"{" DS "\"steps\":10,\"batch_size\":2.5}", 400, "invalid_field", "batch_size", 0},
    {"{" DS "\"steps\":10,\"batch_size\":true}", 400, "invalid_field", "batch_size", 0},
    {"{" DS "\"steps\":10,\"image_size\":\"64\"}", 400, "invalid_field", "image_size", 0},
    {"{" DS "\"steps\":10,\"lr\":\"0.1\"}", 400, "invalid_field", "lr", 0},
    {"{" DS "\"steps\":10,\"lambda_l1\":[1]}", 400, "invalid_field", "lambda_l1", 0},
    {"{" DS "\"steps\":10,\"ngf\":8.5}", 400, "invalid_field", "ngf", 0},
    {"{" DS "\"steps\":10,\"init\":3}", 400, "invalid_field", "init", 0},
    {"{" DS "\"steps\":10,\"seed\":\"1\"}", 400, "invalid_field", "seed", 0},
    {"{" DS "\"steps\":10,\"validate_every\":{}}", 400, "invalid_field", "validate_every", 0},
    /* ranges */
    {"{" DS "\"steps\":0}", 400, "invalid_field", "steps", 0},
    {"{" DS "\"steps\":-5}", 400, "invalid_field", "steps", 0},
    {"{" DS "\"steps\":100001}", 400, "invalid_field", "steps", 0}, /* train.max_steps = 100000 */
    {"{" DS "\"epochs\":0}", 400, "invalid_field", "epochs", 0},
    {"{" DS "\"epochs\":-1}", 400, "invalid_field", "epochs", 0},
    {"{" DS "\"epochs\":10001}", 400, "invalid_field", "epochs", 0},
    {"{" DS "\"steps\":10,\"batch_size\":0}", 400, "invalid_field", "batch_size", 0},
    {"{" DS "\"steps\":10,\"batch_size\":9}", 400, "invalid_field", "batch_size", 0}, /* max_batch 8 */
    {"{" DS "\"steps\":10,\"image_size\":32}", 400, "invalid_field", "image_size", 0},
    {"{" DS "\"steps\":10,\"image_size\":96}", 400, "invalid_field", "image_size", 0},  /* not k * 2^6 */
    {"{" DS "\"steps\":10,\"image_size\":100}", 400, "invalid_field", "image_size", 0}, /* not k * 32 */
    {"{" DS "\"steps\":10,\"image_size\":192}", 400, "invalid_field", "image_size", 0}, /* not k * 2^7 */
    {"{" DS "\"steps\":10,\"image_size\":512}", 400, "invalid_field", "image_size", 0}, /* max 256 */
    {"{" DS "\"steps\":10,\"lr\":0}", 400, "invalid_field", "lr", 0},
    {"{" DS "\"steps\":10,\"lr\":-0.001}", 400, "invalid_field", "lr", 0},
    {"{" DS "\"steps\":10,\"lr\":1.5}", 400, "invalid_field", "lr", 0},
    {"{" DS "\"steps\":10,\"lambda_l1\":-1}", 400, "invalid_field", "lambda_l1", 0},
    {"{" DS "\"steps\":10,\"lambda_l1\":10001}", 400, "invalid_field", "lambda_l1", 0},
    {"{" DS "\"steps\":10,\"ngf\":3}", 400, "invalid_field", "ngf", 0},
    {"{" DS "\"steps\":10,\"ngf\":129}", 400, "invalid_field", "ngf", 0},
    {"{" DS "\"steps\":10,\"init\":\"foo\"}", 400, "invalid_field", "init", 0},
    {"{" DS "\"steps\":10,\"seed\":-1}", 400, "invalid_field", "seed", 0},
    {"{" DS "\"steps\":10,\"seed\":9007199254740993}", 400, "invalid_field", "seed", 0},
    {"{" DS "\"steps\":10,\"validate_every\":-1}", 400, "invalid_field", "validate_every", 0},
    {"{" DS "\"steps\":10,\"validate_every\":1000000001}", 400, "invalid_field", "validate_every", 0},
    {"{" DS "\"steps\":10,\"checkpoint_every\":-1}", 400, "invalid_field", "checkpoint_every", 0},
    {"{" DS "\"steps\":10,\"checkpoint_every\":1000000001}", 400, "invalid_field", "checkpoint_every", 0},
    {"{" DS "\"steps\":10,\"keep_checkpoints\":-1}", 400, "invalid_field", "keep_checkpoints", 0},
    {"{" DS "\"steps\":10,\"keep_checkpoints\":1001}", 400, "invalid_field", "keep_checkpoints", 0},
    {"{" DS "\"steps\":10,\"lr_decay_steps\":-1}", 400, "invalid_field", "lr_decay_steps", 0},
    {"{" DS "\"steps\":10,\"lr_decay_steps\":11}", 400, "invalid_field", "lr_decay_steps", 0},
    /* init combinations */
    {"{" DS "\"steps\":10,\"init\":\"current\",\"ngf\":8}", 400, "invalid_field", "ngf", 0},
    {"{" DS "\"steps\":10,\"init\":\"checkpoint\"}", 400, "invalid_field", "init_job", 1},
    {"{" DS "\"steps\":10,\"init_job\":\"20240101-000000-abcdef\"}", 400, "invalid_field", "init_job", 1},
    {"{" DS "\"steps\":10,\"init_step\":\"best\"}", 400, "invalid_field", "init_step", 1},
    {"{" DS "\"steps\":10,\"init\":\"checkpoint\",\"init_job\":\"bad id!\"}", 400, "invalid_field",
     "init_job", 0},
    {"{" DS
     "\"steps\":10,\"init\":\"checkpoint\",\"init_job\":\"20240101-000000-abcdef\",\"init_step\":\"worst\"}",
     400, "invalid_field", "init_step", 0},
    {"{" DS "\"steps\":10,\"init\":\"checkpoint\",\"init_job\":\"20240101-000000-abcdef\",\"init_step\":-3}",
     400, "invalid_field", "init_step", 0},
    {"{" DS "\"steps\":10,\"init\":\"checkpoint\",\"init_job\":\"20240101-000000-abcdef\"}", 404,
     "job_not_found", NULL, 0},
    /* datasets */
    {"{\"dataset\":\"../x\",\"steps\":10}", 400, "invalid_field", "dataset", 0},
    {"{\"dataset\":\"..\",\"steps\":10}", 400, "invalid_field", "dataset", 0},
    {"{\"dataset\":\"/etc\",\"steps\":10}", 400, "invalid_field", "dataset", 0},
    {"{\"dataset\":\"ds1/../../x\",\"steps\":10}", 400, "invalid_field", "dataset", 0},
    {"{\"dataset\":\"ds1/../ds1\",\"steps\":10}", 400, "invalid_field", "dataset", 0}, /* a `..` component */
    {"{\"dataset\":\"escape\",\"steps\":10}", 400, "invalid_field", "dataset", 0},     /* symlink to / */
    {"{\"dataset\":\"escape/etc\",\"steps\":10}", 400, "invalid_field", "dataset", 0},
    {"{\"dataset\":\"nope\",\"steps\":10}", 404, "dataset_not_found", NULL, 0},
    {"{\"dataset\":\"ds1/nope\",\"steps\":10}", 404, "dataset_not_found", NULL, 0},
    {"{\"dataset\":\"empty\",\"steps\":10,\"image_size\":64}", 422, "empty_dataset", NULL, 0},
    {"{\"dataset\":\"gray\",\"steps\":10,\"image_size\":64}", 422, "empty_dataset", NULL, 0},
};

static const bad_case k_bad_model[] = {
    {"", 400, "invalid_json", NULL, 0},
    {"{\"job\":", 400, "invalid_json", NULL, 0},
    {"[\"x\"]", 400, "invalid_json", NULL, 0},
    {"{}", 400, "invalid_field", "job", 0},
    {"{\"job\":5}", 400, "invalid_field", "job", 0},
    {"{\"job\":\"20240101-000000-abcdef\",\"step\":\"worst\"}", 400, "invalid_field", "step", 0},
    {"{\"job\":\"20240101-000000-abcdef\",\"step\":-1}", 400, "invalid_field", "step", 0},
    {"{\"job\":\"20240101-000000-abcdef\",\"step\":1.5}", 400, "invalid_field", "step", 0},
    {"{\"job\":\"20240101-000000-abcdef\",\"bogus\":true}", 400, "invalid_field", "bogus", 1},
    {"{\"job\":\"20240101-000000-abcdef\"}", 404, "job_not_found", NULL, 0},
    {"{\"job\":\"20240101-000000-abcdef\",\"step\":100}", 404, "job_not_found", NULL, 0},
};

static void run_bad(int port, const char *path, const bad_case *c, size_t n) {
    for (size_t i = 0; i < n; i++) {
        it_resp r;
        areq(port, "POST", path, c[i].body, AUTH, &r);
        char what[400];
        snprintf(what, sizeof what, "POST %s %.150s", path, *c[i].body ? c[i].body : "(empty body)");
        if (it_check_error(&r, c[i].status, c[i].code, what) && c[i].field)
            it_check(message_names(&r, c[i].field, !c[i].contains), "  ... message %s '%s'",
                     c[i].contains ? "names" : "starts with", c[i].field);
        if (r.status == 202) { /* accepted by mistake: see what becomes of it, keep it out of later tests */
            json_t *j = jload(&r);
            json_t *fin = wait_job(port, jstr(j, "id"), "cancelled succeeded failed", NULL, 20);
            it_note("the job accepted by mistake ended %s (error: %s)", jstr(fin, "status"),
                    jstr(fin, "error"));
            if (!status_in(fin, "cancelled succeeded failed")) {
                char p[160];
                snprintf(p, sizeof p, "/train/%s", jstr(j, "id"));
                it_resp d;
                areq(port, "DELETE", p, NULL, AUTH, &d);
                it_resp_free(&d);
                json_decref(wait_job(port, jstr(j, "id"), "cancelled succeeded failed", NULL, 30));
            }
            json_decref(fin);
            json_decref(j);
        }
        it_resp_free(&r);
    }
}

void test_bad_requests(void **state) {
    (void)state;
    it_test_begin("bad requests");
    int port = g_d.port;
    run_bad(port, "/train", k_bad_train, sizeof k_bad_train / sizeof k_bad_train[0]);
    run_bad(port, "/model", k_bad_model, sizeof k_bad_model / sizeof k_bad_model[0]);

    /* 413 above server.max_json_bytes (65536), for both JSON endpoints */
    size_t big = 70000;
    char *b = malloc(big + 64);
    int k = snprintf(b, big + 64, "{\"dataset\":\"ds1\",\"steps\":10,\"pad\":\"");
    memset(b + k, 'x', big - (size_t)k);
    strcpy(b + big, "\"}");
    it_resp r;
    areq(port, "POST", "/train", b, AUTH, &r);
    it_check_error(&r, 413, "payload_too_large", "POST /train with a 70 kB JSON body");
    it_resp_free(&r);
    areq(port, "POST", "/model", b, AUTH, &r);
    it_check_error(&r, 413, "payload_too_large", "POST /model with a 70 kB JSON body");
    it_resp_free(&r);
    free(b);

    /* unknown jobs and malformed sub-paths */
    const char *unk = "20240101-000000-abcdef";
    const char *fmt[][2] = {{"GET", "/train/%s"},
                            {"DELETE", "/train/%s"},
                            {"GET", "/train/%s/losses"},
                            {"GET", "/train/%s/losses?stride=10"},
                            {"GET", "/train/%s/samples/10.png"},
                            {"POST", "/train/%s/resume"}};
    for (size_t i = 0; i < sizeof fmt / sizeof fmt[0]; i++) {
        char p[128], w[160];
        snprintf(p, sizeof p, fmt[i][1], unk);
        snprintf(w, sizeof w, "%s %s (unknown job)", fmt[i][0], p);
        areq(port, fmt[i][0], p, NULL, AUTH, &r);
        it_check_error(&r, 404, "job_not_found", w);
        it_resp_free(&r);
    }
    const char *bad_paths[] = {
        "/train/20240101-000000-abcdef/bogus", "/train/20240101-000000-abcdef/samples/x.png",
        "/train/20240101-000000-abcdef/samples/10.jpg", "/train/20240101-000000-abcdef/losses/more"};
    for (size_t i = 0; i < sizeof bad_paths / sizeof bad_paths[0]; i++) {
        char w[160];
        snprintf(w, sizeof w, "GET %s (malformed sub-path)", bad_paths[i]);
        areq(port, "GET", bad_paths[i], NULL, AUTH, &r);
        it_check_error(&r, 404, "not_found", w);
        it_resp_free(&r);
    }
    /* an id with characters outside [A-Za-z0-9-]: either reading is within the contract */
    areq(port, "GET", "/train/bad_id.x", NULL, AUTH, &r);
    json_t *j = jload(&r);
    const char *code = jstr(json_object_get(j, "error"), "code");
    it_check(r.status == 404 && (!strcmp(code, "not_found") || !strcmp(code, "job_not_found")),
             "GET /train/bad_id.x -> 404 not_found or job_not_found (%ld %s)", r.status, code);
    json_decref(j);
    it_resp_free(&r);

    /* a symlink that stays inside the data root is a valid dataset: accepted, then cancelled */
    char id[65];
    long st = submit(port,
                     "{\"dataset\":\"inside\",\"steps\":50,\"image_size\":64,\"batch_size\":1,\"ngf\":4,"
                     "\"checkpoint_every\":0,\"validate_every\":0}",
                     id, NULL);
    if (it_check(st == 202, "POST /train dataset \"inside\" (symlink to ds1, inside the root) -> 202 (%ld)",
                 st)) {
        char p[128];
        snprintf(p, sizeof p, "/train/%s", id);
        areq(port, "DELETE", p, NULL, AUTH, &r);
        it_check(r.status == 202, "DELETE it at once -> 202 (%ld %.160s)", r.status, r.body);
        it_resp_free(&r);
        j = wait_job(port, id, "cancelled", NULL, 30);
        it_check(status_in(j, "cancelled"), "it is cancelled within 30 s (%s)", jstr(j, "status"));
        json_decref(j);
    }
    IT_TEST_END();
}
