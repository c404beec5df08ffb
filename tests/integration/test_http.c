/* test_http.c: the HTTP contract (server/CONTRACT.md) checked against the REAL daemon
 * (DESIGN.md testing ladder, rung 4). One cmocka executable:
 *
 *   test_http [COLORIZED [COLORIZE]]   (else $CZ_BUILD_DIR/colorized and $CZ_BUILD_DIR/colorize)
 *
 * The binaries come from argv (CTest passes the targets' paths) or CZ_BUILD_DIR. Tiny ngf-4
 * generators are made with `colorize init`; test images are generated here (encoded with
 * cz_image_encode) or read from tests/data and ../shared/testdata/pngsuite. Every daemon
 * listens on 127.0.0.1 on an ephemeral port (--listen 127.0.0.1:0 --port-file).
 *
 * This file: main(), the shared "main" daemon (small body / pixel limits, 2 s connection
 * timeout) and the request-level checks: every endpoint, X-Request-Id, uploads and parameters,
 * output size and luminance, metrics, the access log. test_http_errors.c: every error row a
 * single request can trigger. test_http_ops.c: concurrency, batching, queue limits, deadlines,
 * reload, drain, slow clients, descriptor leaks, hostile bytes. itest.c, itest_http.c: the
 * plumbing.
 *
 * Each check prints one line ("ok"/"FAIL"); a cmocka test fails when any of its checks did.
 * Every wait is bounded. Meant to take well under 3 minutes on 2 cores. */
#include <curl/curl.h>
#include <jansson.h>
#include <math.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
// clang-format off
#include <cmocka.h>
// clang-format on

#include "itest.h"
#include "testutil.h"
#include "test_http_cases.h"

it_daemon g_main;

static const char *k_main_config =
    "{\"model\": {\"max_batch\": 8, \"backend\": \"auto\"},"
    " \"image\": {\"max_pixels\": 1000000, \"render\": 256, \"jpeg_quality\": 90},"
    " \"server\": {\"max_body_bytes\": 1048576, \"connection_timeout_s\": 2, \"max_render\": 1024,"
    "   \"http_threads\": 4, \"max_queue\": 64, \"queue_high_water\": 48, \"max_wait_us\": 2000,"
    "   \"drain_timeout_s\": 5, \"max_connections\": 256, \"max_connections_per_ip\": 128,"
    "   \"request_deadline_ms\": 30000},"
    " \"log\": {\"level\": \"info\"}}";

/* ------------------------------------------------------------------ helpers */

static int is_hex32(const char *s) {
    if (!s || strlen(s) != 32) return 0;
    for (; *s; s++)
        if (!strchr("0123456789abcdefABCDEF", *s)) return 0;
    return 1;
}

static cz_image decode_or_empty(const void *b, size_t n) {
    cz_image img = {0};
    if (cz_image_decode(b, n, NULL, &img, NULL) != CZ_OK) memset(&img, 0, sizeof img);
    return img;
}

/* ------------------------------------------------------------------ setup */

static int main_setup(void **state) {
    (void)state;
    return it_daemon_start(&g_main, "main", k_main_config, IT.w1);
}

static int main_teardown(void **state) {
    (void)state;
    if (g_main.pid > 0) it_daemon_stop(&g_main, 5);
    return 0;
}

/* Last test of the main group: the daemon is still alive and exits 0 on SIGTERM. */
static void test_main_shutdown(void **state) {
    (void)state;
    it_test_begin("main daemon shutdown");
    int alive = it_daemon_alive(&g_main);
    it_check(alive, "main daemon survived every test above");
    double t0 = it_now();
    int clean = it_daemon_stop(&g_main, 10);
    it_check(clean, "SIGTERM on an idle daemon: exit status 0 (took %.2f s)", it_now() - t0);
    if (!alive || !clean) it_daemon_log_tail(&g_main, 40);
    IT_TEST_END();
}

/* ------------------------------------------------------------------ endpoints */

static void test_endpoints(void **state) {
    (void)state;
    it_test_begin("endpoints");
    int port = g_main.port;
    char ct[256], rid[256];
    it_resp r;

    it_get(port, "/healthz", &r);
    char *s = it_json_str(&r, "status", NULL);
    it_check(r.status == 200 && it_header(&r, "Content-Type", ct, sizeof ct) &&
                 !strncasecmp(ct, "application/json", 16) && s && !strcmp(s, "ok"),
             "GET /healthz -> 200 application/json {\"status\":\"ok\"} (%ld, '%s')", r.status, r.body);
    it_check(is_hex32(it_header(&r, "X-Request-Id", rid, sizeof rid)),
             "GET /healthz carries a generated X-Request-Id");
    free(s);
    it_resp_free(&r);

    it_get(port, "/readyz", &r);
    s = it_json_str(&r, "status", NULL);
    it_check(r.status == 200 && it_header(&r, "Content-Type", ct, sizeof ct) &&
                 !strncasecmp(ct, "application/json", 16) && s && !strcmp(s, "ready"),
             "GET /readyz -> 200 application/json {\"status\":\"ready\"} (%ld, '%s')", r.status, r.body);
    free(s);
    it_resp_free(&r);

    it_get(port, "/metrics", &r);
    it_header(&r, "Content-Type", ct, sizeof ct);
    it_check(r.status == 200 && !strncasecmp(ct, "text/plain", 10) && strstr(ct, "version=0.0.4"),
             "GET /metrics -> 200 text/plain; version=0.0.4 ('%s')", ct);
    it_resp_free(&r);

    it_get(port, "/model", &r);
    it_header(&r, "Content-Type", ct, sizeof ct);
    json_error_t je;
    json_t *m = r.status == 200 ? json_loadb(r.body, r.len, 0, &je) : NULL;
    it_check(r.status == 200 && !strncasecmp(ct, "application/json", 16) && json_is_object(m),
             "GET /model -> 200 application/json object (%ld)", r.status);
    static const char *keys[] = {"architecture", "ngf",        "depth",         "color_mode", "in_ch",
                                 "out_ch",       "parameters", "checksum",      "path",       "backend",
                                 "precision",    "max_batch",  "render_default"};
    int have = 1;
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (!json_object_get(m, keys[i])) {
            it_check(0, "/model has \"%s\"", keys[i]);
            have = 0;
        }
    if (have) it_check(1, "/model has all 13 fields of the contract");
    char want[64];
    it_checksum_str(IT.sum1, want, sizeof want);
    const char *cs = json_string_value(json_object_get(m, "checksum"));
    it_check(cs && !strcmp(cs, want), "/model checksum '%s' == weights file's %s", cs ? cs : "(none)", want);
    it_check(json_integer_value(json_object_get(m, "ngf")) == 4 &&
                 json_integer_value(json_object_get(m, "depth")) == 8,
             "/model ngf 4, depth 8");
    const char *cm = json_string_value(json_object_get(m, "color_mode"));
    it_check(cm && !strcmp(cm, "lab") && json_integer_value(json_object_get(m, "in_ch")) == 1 &&
                 json_integer_value(json_object_get(m, "out_ch")) == 2,
             "/model color_mode lab, in_ch 1, out_ch 2");
    it_check(json_integer_value(json_object_get(m, "parameters")) > 0, "/model parameters > 0");
    const char *be = json_string_value(json_object_get(m, "backend"));
    it_check(be && (!strcmp(be, "dnnl") || !strcmp(be, "cuda") || !strcmp(be, "ref")),
             "/model backend is the one chosen, not 'auto' ('%s')", be ? be : "(none)");
    const char *pr = json_string_value(json_object_get(m, "precision"));
    it_check(pr && !strcmp(pr, "fp32"), "/model precision fp32 ('%s')", pr ? pr : "(none)");
    it_check(json_integer_value(json_object_get(m, "max_batch")) == 8 &&
                 json_integer_value(json_object_get(m, "render_default")) == 256,
             "/model max_batch 8, render_default 256 (as configured)");
    const char *mp = json_string_value(json_object_get(m, "path"));
    it_check(mp && strstr(mp, "model.safetensors"), "/model path names the model file ('%s')",
             mp ? mp : "(none)");
    json_decref(m);
    it_resp_free(&r);

    it_get(port, "/openapi.yaml", &r);
    it_header(&r, "Content-Type", ct, sizeof ct);
    it_check(r.status == 200 && !strncasecmp(ct, "application/yaml", 16) && strstr(r.body, "openapi:") &&
                 strstr(r.body, "/colorize"),
             "GET /openapi.yaml -> 200 application/yaml with an openapi document ('%s', %zu bytes)", ct,
             r.len);
    char *spec_path = tu_path(tu_source_dir(), "openapi.yaml");
    size_t sn;
    uint8_t *spec = it_read_file(spec_path, &sn);
    if (spec)
        it_check(sn == r.len && !memcmp(spec, r.body, sn),
                 "/openapi.yaml is the source tree's openapi.yaml byte for byte");
    else
        it_note("no %s in the source tree: embedded copy not compared", spec_path);
    free(spec);
    free(spec_path);
    it_resp_free(&r);
    IT_TEST_END();
}

/* ------------------------------------------------------------------ request ids */

static void test_request_id(void **state) {
    (void)state;
    it_test_begin("X-Request-Id");
    int port = g_main.port;
    char rid[256], rid2[256];
    it_resp r;
    it_req rq = {.path = "/healthz", .request_id = "abc-123_x.Y"};
    it_http(port, &rq, &r);
    it_check(it_header(&r, "X-Request-Id", rid, sizeof rid) && !strcmp(rid, "abc-123_x.Y"),
             "a valid client id is echoed ('%s')", rid);
    it_resp_free(&r);

    char id128[129];
    memset(id128, 'a', 128), id128[128] = '\0';
    rq.request_id = id128;
    it_http(port, &rq, &r);
    it_check(it_header(&r, "X-Request-Id", rid, sizeof rid) && !strcmp(rid, id128),
             "a 128-char id is echoed");
    it_resp_free(&r);

    char id129[130];
    memset(id129, 'b', 129), id129[129] = '\0';
    const char *bad[] = {id129, "has space", "slash/no", "semi;colon", "quote\"x"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        rq.request_id = bad[i];
        it_http(port, &rq, &r);
        const char *h = it_header(&r, "X-Request-Id", rid, sizeof rid);
        it_check(r.status == 200 && is_hex32(h), "an invalid id (%.20s%s) is replaced by 32 hex chars ('%s')",
                 bad[i], strlen(bad[i]) > 20 ? "..." : "", h ? h : "(none)");
        it_resp_free(&r);
    }

    it_get(port, "/healthz", &r);
    it_header(&r, "X-Request-Id", rid, sizeof rid);
    it_resp_free(&r);
    it_get(port, "/healthz", &r);
    it_header(&r, "X-Request-Id", rid2, sizeof rid2);
    it_resp_free(&r);
    it_check(is_hex32(rid) && is_hex32(rid2) && strcmp(rid, rid2),
             "generated ids are 32 hex and differ per request");

    /* on every endpoint */
    static const char *paths[] = {"/healthz", "/readyz", "/metrics", "/model", "/openapi.yaml"};
    int every = 1;
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        it_req q = {.path = paths[i], .request_id = "every-endpoint.1"};
        it_http(port, &q, &r);
        if (r.status != 200 || !it_header(&r, "X-Request-Id", rid, sizeof rid) ||
            strcmp(rid, "every-endpoint.1")) {
            it_check(0, "GET %s echoes X-Request-Id (%ld)", paths[i], r.status);
            every = 0;
        }
        it_resp_free(&r);
    }
    it_check(every, "every GET endpoint echoes X-Request-Id");

    /* on a 200 from /colorize and on errors */
    size_t n;
    uint8_t *png = it_make_image(40, 30, 1, 5, CZ_FMT_PNG, &n);
    it_req p = {.path = "/colorize",
                .body = png,
                .len = n,
                .content_type = "image/png",
                .request_id = "colorize-ok-1"};
    it_http(port, &p, &r);
    it_check(r.status == 200 && it_header(&r, "X-Request-Id", rid, sizeof rid) &&
                 !strcmp(rid, "colorize-ok-1"),
             "POST /colorize 200 echoes the id (%ld)", r.status);
    it_resp_free(&r);
    it_req e = {.path = "/no/such/path", .request_id = "err-id-404"};
    it_http(port, &e, &r);
    char *jr = it_json_str(&r, "error", "request_id");
    it_check(r.status == 404 && it_header(&r, "X-Request-Id", rid, sizeof rid) &&
                 !strcmp(rid, "err-id-404") && jr && !strcmp(jr, "err-id-404"),
             "a 404 echoes the id in the header and in error.request_id");
    free(jr);
    it_resp_free(&r);
    it_req e2 = {.path = "/colorize?quality=0",
                 .body = png,
                 .len = n,
                 .content_type = "image/png",
                 .request_id = "err-id-400"};
    it_http(port, &e2, &r);
    jr = it_json_str(&r, "error", "request_id");
    it_check(r.status == 400 && jr && !strcmp(jr, "err-id-400"),
             "a 400 carries the client id in error.request_id");
    free(jr);
    it_resp_free(&r);
    free(png);
    IT_TEST_END();
}

/* ------------------------------------------------------------------ uploads and parameters */

static void post_check(const char *path, const void *b, size_t n, const char *ctype, cz_image_format want,
                       int w, int h, const char *what, it_resp *keep) {
    it_resp r;
    it_post(g_main.port, path, b, n, ctype, &r);
    it_check_image(&r, want, w, h, what, NULL);
    if (keep)
        *keep = r;
    else
        it_resp_free(&r);
}

static void test_uploads(void **state) {
    (void)state;
    it_test_begin("uploads, formats, parameters");
    int port = g_main.port;
    size_t pn, jn;
    uint8_t *png = it_make_image(96, 64, 1, 11, CZ_FMT_PNG, &pn);
    uint8_t *jpg = it_make_image(120, 80, 3, 12, CZ_FMT_JPEG, &jn);

    post_check("/colorize", png, pn, "image/png", CZ_FMT_PNG, 96, 64,
               "raw gray PNG (image/png), default format", NULL);
    post_check("/colorize", jpg, jn, "image/jpeg", CZ_FMT_JPEG, 120, 80,
               "raw RGB JPEG (image/jpeg), default format", NULL);
    post_check("/colorize", jpg, jn, "image/png", CZ_FMT_JPEG, 120, 80,
               "mislabelled: JPEG bytes sent as image/png", NULL);
    post_check("/colorize", png, pn, "image/jpeg", CZ_FMT_PNG, 96, 64,
               "mislabelled: PNG bytes sent as image/jpeg", NULL);
    post_check("/colorize", png, pn, "application/octet-stream", CZ_FMT_PNG, 96, 64,
               "application/octet-stream body", NULL);
    post_check("/colorize", jpg, jn, "application/x-www-form-urlencoded", CZ_FMT_JPEG, 120, 80,
               "curl --data-binary default type (x-www-form-urlencoded)", NULL);

    char ct[128];
    size_t mn;
    uint8_t *mp = it_multipart(jpg, jn, "image", 0, ct, &mn);
    post_check("/colorize", mp, mn, ct, CZ_FMT_JPEG, 120, 80, "multipart/form-data, field image", NULL);
    free(mp);
    mp = it_multipart(png, pn, "image", 1, ct, &mn);
    post_check("/colorize?format=jpeg", mp, mn, ct, CZ_FMT_JPEG, 96, 64,
               "multipart with another field first, format=jpeg", NULL);
    free(mp);
    /* curl's own multipart encoder (what `curl -F image=@x.jpg` sends) */
    {
        CURL *c = curl_easy_init();
        curl_mime *mime = curl_mime_init(c);
        curl_mimepart *part = curl_mime_addpart(mime);
        curl_mime_name(part, "note");
        curl_mime_data(part, "an old photo", CURL_ZERO_TERMINATED);
        part = curl_mime_addpart(mime);
        curl_mime_name(part, "image");
        curl_mime_filename(part, "old.jpg");
        curl_mime_type(part, "image/jpeg");
        curl_mime_data(part, (const char *)jpg, jn);
        char url[128];
        snprintf(url, sizeof url, "http://127.0.0.1:%d/colorize?format=png", port);
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_MIMEPOST, mime);
        curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 20000L);
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        FILE *sink = fopen("/dev/null", "wb");
        curl_easy_setopt(c, CURLOPT_WRITEDATA, sink);
        long st = 0;
        char *ctype = NULL;
        CURLcode cc = curl_easy_perform(c);
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &st);
        curl_easy_getinfo(c, CURLINFO_CONTENT_TYPE, &ctype);
        it_check(cc == CURLE_OK && st == 200 && ctype && !strncmp(ctype, "image/png", 9),
                 "curl -F image=@old.jpg (libcurl mime, 100-continue) -> 200 image/png (%ld)", st);
        fclose(sink);
        curl_mime_free(mime);
        curl_easy_cleanup(c);
    }

    it_req ch = {.path = "/colorize", .body = jpg, .len = jn, .content_type = "image/jpeg", .chunked = 1};
    it_resp r;
    it_http(port, &ch, &r);
    it_check_image(&r, CZ_FMT_JPEG, 120, 80, "chunked upload (no Content-Length)", NULL);
    it_resp_free(&r);

    post_check("/colorize?format=png", jpg, jn, "image/jpeg", CZ_FMT_PNG, 120, 80, "format=png on a JPEG",
               NULL);
    post_check("/colorize?format=jpeg", png, pn, "image/png", CZ_FMT_JPEG, 96, 64, "format=jpeg on a PNG",
               NULL);
    post_check("/colorize?render=512", jpg, jn, "image/jpeg", CZ_FMT_JPEG, 120, 80, "render=512", NULL);
    post_check("/colorize?render=1024&format=png", png, pn, "image/png", CZ_FMT_PNG, 96, 64,
               "render=1024 (max_render)", NULL);
    post_check("/colorize?render=256", png, pn, "image/png", CZ_FMT_PNG, 96, 64, "render=256", NULL);
    post_check("/colorize?foo=bar&format=png&x", jpg, jn, "image/jpeg", CZ_FMT_PNG, 120, 80,
               "unknown query parameters are ignored", NULL);

    it_resp lo, hi;
    size_t bn;
    uint8_t *big = it_make_image(320, 240, 3, 13, CZ_FMT_JPEG, &bn);
    post_check("/colorize?quality=5", big, bn, "image/jpeg", CZ_FMT_JPEG, 320, 240, "quality=5", &lo);
    post_check("/colorize?quality=100", big, bn, "image/jpeg", CZ_FMT_JPEG, 320, 240, "quality=100", &hi);
    it_check(lo.status == 200 && hi.status == 200 && lo.len < hi.len,
             "quality=5 gives a smaller JPEG than quality=100 (%zu < %zu)", lo.len, hi.len);
    it_resp_free(&lo);
    it_resp_free(&hi);
    free(big);

    /* the sample photos */
    const char *data[] = {"tests/data/old_a.jpg", "tests/data/old_w_scratch_c.jpg"};
    for (size_t i = 0; i < 2; i++) {
        char *p = tu_path(tu_source_dir(), data[i]);
        size_t n;
        uint8_t *b = it_read_file(p, &n);
        cz_image in = b ? decode_or_empty(b, n) : (cz_image){0};
        if (it_check(b && in.px, "read and decode %s", data[i])) {
            char what[128];
            snprintf(what, sizeof what, "%s", data[i]);
            post_check("/colorize", b, n, "image/jpeg", CZ_FMT_JPEG, in.width, in.height, what, NULL);
        }
        cz_image_free(&in);
        free(b);
        free(p);
    }

    /* PNG suite: bit depths, palettes, alpha, interlacing, odd and tiny sizes */
    static const char *suite[] = {"basn0g01.png", "basn0g02.png", "basn0g04.png", "basn0g08.png",
                                  "basn0g16.png", "basn2c08.png", "basn2c16.png", "basn3p01.png",
                                  "basn3p08.png", "basn4a08.png", "basn4a16.png", "basn6a08.png",
                                  "basn6a16.png", "basi0g08.png", "basi2c16.png", "basi3p02.png",
                                  "s01n3p01.png", "s02n3p01.png", "s09n3p02.png", "s39i3p04.png"};
    char *dir = tu_path(tu_shared_dir(), "testdata/pngsuite");
    int tried = 0;
    for (size_t i = 0; i < sizeof suite / sizeof suite[0]; i++) {
        char *p = tu_path(dir, suite[i]);
        size_t n;
        uint8_t *b = it_read_file(p, &n);
        free(p);
        if (!b) continue;
        tried++;
        cz_image in = decode_or_empty(b, n);
        if (it_check(in.px != NULL, "cz_core decodes pngsuite/%s", suite[i])) {
            char what[128];
            snprintf(what, sizeof what, "pngsuite/%s", suite[i]);
            post_check("/colorize", b, n, "image/png", CZ_FMT_PNG, in.width, in.height, what, NULL);
        }
        cz_image_free(&in);
        free(b);
    }
    it_check(tried > 0, "PNG suite found at %s (%d files)", dir, tried);
    free(dir);
    free(png);
    free(jpg);
    IT_TEST_END();
}

/* ------------------------------------------------------------------ luminance */

static void lum_case(const uint8_t *b, size_t n, const char *ctype, const char *query, const char *what) {
    cz_image in = decode_or_empty(b, n);
    it_resp r;
    char path[128];
    snprintf(path, sizeof path, "/colorize?format=png%s", query);
    it_post(g_main.port, path, b, n, ctype, &r);
    cz_image out = {0};
    if (in.px && it_check_image(&r, CZ_FMT_PNG, in.width, in.height, what, &out)) {
        double d = it_max_dL(&in, &out);
        it_check(d <= 1.0,
                 "%s: output lightness == input lightness, worst |dL| = %.3f (<= 1.0, 8-bit rounding)", what,
                 d);
        cz_image_free(&out);
    }
    it_resp_free(&r);
    cz_image_free(&in);
}

static void test_luminance(void **state) {
    (void)state;
    it_test_begin("output luminance == input luminance");
    size_t n;
    uint8_t *g = it_make_image(160, 120, 1, 21, CZ_FMT_PNG, &n);
    lum_case(g, n, "image/png", "", "gray PNG 160x120");
    lum_case(g, n, "image/png", "&render=512", "gray PNG 160x120, render=512");
    free(g);
    g = it_make_image(77, 203, 1, 22, CZ_FMT_PNG, &n);
    lum_case(g, n, "image/png", "", "gray PNG 77x203 (portrait, odd)");
    free(g);
    g = it_make_image(150, 100, 3, 23, CZ_FMT_JPEG, &n);
    lum_case(g, n, "image/jpeg", "", "RGB JPEG 150x100 (color input -> its luminance)");
    free(g);
    char *p = tu_path(tu_source_dir(), "tests/data/old_a.jpg");
    uint8_t *b = it_read_file(p, &n);
    if (b) lum_case(b, n, "image/jpeg", "", "tests/data/old_a.jpg");
    free(b);
    free(p);
    IT_TEST_END();
}

/* ------------------------------------------------------------------ metrics */

static void test_metrics(void **state) {
    (void)state;
    it_test_begin("metrics");
    char *m0 = it_get_metrics(g_main.port);
    static const struct {
        const char *name, *type;
    } names[] = {{"colorize_http_requests_total", "counter"},
                 {"colorize_http_request_duration_seconds", "histogram"},
                 {"colorize_queue_depth", "gauge"},
                 {"colorize_batch_size", "histogram"},
                 {"colorize_inference_seconds", "histogram"},
                 {"colorize_rejections_total", "counter"},
                 {"colorize_http_request_bytes_total", "counter"},
                 {"colorize_http_response_bytes_total", "counter"},
                 {"colorize_model_info", "gauge"},
                 {"colorize_ready", "gauge"},
                 {"colorize_finished_total", "counter"},
                 {"colorize_pinned_bytes", "gauge"},
                 {"colorize_pinned_misses_total", "counter"},
                 {"colorize_planned_shapes", "gauge"},
                 {"colorize_activation_bytes", "gauge"}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char type_line[160], sample[160];
        snprintf(type_line, sizeof type_line, "# TYPE %s %s\n", names[i].name, names[i].type);
        snprintf(sample, sizeof sample, "\n%s", names[i].name);
        it_check(strstr(m0, type_line) && strstr(m0, sample), "/metrics has %s (%s) with a sample",
                 names[i].name, names[i].type);
    }
    char sum[64], want[96];
    it_checksum_str(IT.sum1, sum, sizeof sum);
    snprintf(want, sizeof want, "checksum=\"%s\"", sum);
    it_check(strstr(m0, want) != NULL, "colorize_model_info carries %s", want);
    it_check(it_metric_sum(m0, "colorize_ready", NULL, NULL) == 1.0, "colorize_ready is 1");
    /* ready means warmed up: image.render's shape at least is planned, and holds memory */
    it_check(it_metric_sum(m0, "colorize_planned_shapes", NULL, NULL) >= 1.0 &&
                 it_metric_sum(m0, "colorize_activation_bytes", NULL, NULL) > 0.0,
             "colorize_planned_shapes >= 1 and colorize_activation_bytes > 0 once ready");
    it_check(strstr(m0, "colorize_http_request_duration_seconds_bucket{") && strstr(m0, "le=\"+Inf\"") &&
                 strstr(m0, "colorize_http_request_duration_seconds_count") &&
                 strstr(m0, "colorize_http_request_duration_seconds_sum"),
             "request duration is a histogram (_bucket with le=\"+Inf\", _sum, _count)");

    double req0 = it_metric_sum(m0, "colorize_http_requests_total", "route", "colorize");
    double unsup0 = it_metric_sum(m0, "colorize_rejections_total", "reason", "unsupported");
    double big0 = it_metric_sum(m0, "colorize_rejections_total", "reason", "too_large");
    double bin0 = it_metric_sum(m0, "colorize_http_request_bytes_total", NULL, NULL);
    double bout0 = it_metric_sum(m0, "colorize_http_response_bytes_total", NULL, NULL);
    double bat0 = it_metric_sum(m0, "colorize_batch_size_count", NULL, NULL);
    double inf0 = it_metric_sum(m0, "colorize_inference_seconds_count", NULL, NULL);
    double fin0 = it_metric_sum(m0, "colorize_finished_total", NULL, NULL);

    size_t n;
    uint8_t *png = it_make_image(50, 40, 1, 41, CZ_FMT_PNG, &n);
    it_resp r;
    int ok = 1;
    for (int i = 0; i < 3; i++) {
        it_post(g_main.port, "/colorize", png, n, "image/png", &r);
        ok &= r.status == 200;
        it_resp_free(&r);
    }
    it_post(g_main.port, "/colorize", "not an image at all", 19, "image/png", &r);
    ok &= r.status == 415;
    it_resp_free(&r);
    /* a declared body above max_body_bytes (rejection reason too_large) */
    int fd = it_connect(g_main.port);
    if (fd >= 0) {
        const char *q = "POST /colorize HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n";
        char buf[2048];
        int closed;
        it_send(fd, q, strlen(q));
        it_recv_all(fd, buf, sizeof buf, 3.0, &closed);
        close(fd);
    }
    free(png);
    it_check(ok, "3 POST /colorize 200 + one 415 sent");
    it_sleep(0.1);
    char *m1 = it_get_metrics(g_main.port);
    double req1 = it_metric_sum(m1, "colorize_http_requests_total", "route", "colorize");
    it_check(req1 >= req0 + 4, "colorize_http_requests_total{route=colorize} grew by >= 4 (%.0f -> %.0f)",
             req0, req1);
    double unsup1 = it_metric_sum(m1, "colorize_rejections_total", "reason", "unsupported");
    it_check(unsup1 >= unsup0 + 1, "colorize_rejections_total{reason=\"unsupported\"} grew (%.0f -> %.0f)",
             unsup0, unsup1);
    double big1 = it_metric_sum(m1, "colorize_rejections_total", "reason", "too_large");
    it_check(big1 >= big0 + 1, "colorize_rejections_total{reason=\"too_large\"} grew (%.0f -> %.0f)", big0,
             big1);
    double bin1 = it_metric_sum(m1, "colorize_http_request_bytes_total", NULL, NULL);
    double bout1 = it_metric_sum(m1, "colorize_http_response_bytes_total", NULL, NULL);
    it_check(bin1 >= bin0 + 3.0 * (double)n && bout1 > bout0,
             "request bytes grew by >= the 3 uploads (%.0f -> %.0f), response bytes grew (%.0f -> %.0f)",
             bin0, bin1, bout0, bout1);
    double bat1 = it_metric_sum(m1, "colorize_batch_size_count", NULL, NULL);
    double inf1 = it_metric_sum(m1, "colorize_inference_seconds_count", NULL, NULL);
    it_check(bat1 >= bat0 + 1 && inf1 >= inf0 + 1,
             "batch_size and inference_seconds histograms counted the batches (%.0f -> %.0f, %.0f -> %.0f)",
             bat0, bat1, inf0, inf1);
    double fin1 = it_metric_sum(m1, "colorize_finished_total", NULL, NULL);
    it_check(fin1 >= fin0 + 3, "colorize_finished_total counted the 3 images (%.0f -> %.0f)", fin0, fin1);
    {
        char code_lbl[64];
        snprintf(code_lbl, sizeof code_lbl, "code=\"415\"");
        it_check(strstr(m1, code_lbl) != NULL, "colorize_http_requests_total has a code=\"415\" series");
    }
    free(m0);
    free(m1);
    IT_TEST_END();
}

/* ------------------------------------------------------------------ access log */

static void test_access_log(void **state) {
    (void)state;
    it_test_begin("access log");
    size_t n;
    uint8_t *png = it_make_image(30, 20, 1, 51, CZ_FMT_PNG, &n);
    it_req rq = {.path = "/colorize?format=png",
                 .body = png,
                 .len = n,
                 .content_type = "image/png",
                 .request_id = "access-log-probe-1"};
    it_resp r;
    it_http(g_main.port, &rq, &r);
    size_t out_len = r.len;
    it_check(r.status == 200, "probe request 200");
    it_resp_free(&r);
    free(png);
    json_t *rec = NULL;
    double end = it_now() + 3;
    while (!rec && it_now() < end) {
        size_t ln;
        char *log = (char *)it_read_file(g_main.log, &ln);
        if (log) {
            log = realloc(log, ln + 1);
            log[ln] = '\0';
            for (char *line = strtok(log, "\n"); line && !rec; line = strtok(NULL, "\n")) {
                if (!strstr(line, "access-log-probe-1")) continue;
                json_error_t je;
                json_t *j = json_loads(line, 0, &je);
                const char *mod = json_string_value(json_object_get(j, "module"));
                if (mod && !strcmp(mod, "access"))
                    rec = j;
                else
                    json_decref(j);
            }
            free(log);
        }
        if (!rec) it_sleep(0.05);
    }
    if (it_check(rec != NULL, "one JSON access line with module \"access\" for the request id")) {
        static const char *keys[] = {"ts",         "level",     "module",    "msg",
                                     "request_id", "method",    "path",      "status",
                                     "bytes_in",   "bytes_out", "ms_total",  "ms_decode",
                                     "ms_queue",   "ms_infer",  "ms_encode", "remote"};
        int all = 1;
        for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
            if (!json_object_get(rec, keys[i])) {
                it_check(0, "access line has \"%s\"", keys[i]);
                all = 0;
            }
        if (all) it_check(1, "access line has all 16 fields");
        const char *msg = json_string_value(json_object_get(rec, "msg"));
        const char *meth = json_string_value(json_object_get(rec, "method"));
        it_check(msg && !strcmp(msg, "request") && meth && !strcmp(meth, "POST") &&
                     json_integer_value(json_object_get(rec, "status")) == 200,
                 "access line: msg request, method POST, status 200");
        json_t *bi = json_object_get(rec, "bytes_in"), *bo = json_object_get(rec, "bytes_out");
        it_check(json_is_integer(bi) && json_integer_value(bi) == (json_int_t)n && json_is_integer(bo) &&
                     json_integer_value(bo) == (json_int_t)out_len,
                 "access line: bytes_in %lld == %zu sent, bytes_out %lld == %zu received",
                 (long long)json_integer_value(bi), n, (long long)json_integer_value(bo), out_len);
        json_decref(rec);
    }
    IT_TEST_END();
}

/* ------------------------------------------------------------------ main */

static void on_watchdog(int sig) {
    (void)sig;
    static const char msg[] = "test_http: watchdog: still running after 720 s, giving up\n";
    if (write(2, msg, sizeof msg - 1) < 0) {
    }
    _exit(1); /* the daemons die with us (PR_SET_PDEATHSIG) */
}

int main(int argc, char **argv) {
    signal(SIGALRM, on_watchdog);
    alarm(720);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (it_env_init(argc, argv)) {
        fprintf(stderr, "test_http: environment not ready\n");
        return 1;
    }
    double t0 = it_now();
    const struct CMUnitTest main_tests[] = {
        cmocka_unit_test(test_endpoints),      cmocka_unit_test(test_request_id),
        cmocka_unit_test(test_uploads),        cmocka_unit_test(test_luminance),
        cmocka_unit_test(test_errors),         cmocka_unit_test(test_metrics),
        cmocka_unit_test(test_access_log),     cmocka_unit_test(test_concurrency),
        cmocka_unit_test(test_hostile_bodies), cmocka_unit_test(test_slow_clients),
        cmocka_unit_test(test_fd_leak),        cmocka_unit_test(test_main_shutdown),
    };
    const struct CMUnitTest own_daemon_tests[] = {
        cmocka_unit_test(test_batched_equals_alone),
        cmocka_unit_test(test_queue_full),
        cmocka_unit_test(test_deadline),
        cmocka_unit_test(test_reload),
        cmocka_unit_test(test_drain),
    };
    int fails = cmocka_run_group_tests_name("http_main_daemon", main_tests, main_setup, main_teardown);
    fails += cmocka_run_group_tests_name("http_own_daemons", own_daemon_tests, NULL, NULL);
    printf("test_http: %d check(s) failed, %.1f s\n", it_total_failures(), it_now() - t0);
    it_env_cleanup(fails != 0 || it_total_failures() != 0);
    curl_global_cleanup();
    return fails;
}
