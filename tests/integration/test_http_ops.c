/* test_http_ops.c: the operational half of test_http (see test_http.c for how it runs):
 *  - on the shared main daemon: 32 parallel clients; hostile bytes (random bodies, broken
 *    multipart, lying Content-Length, garbage request lines, the PNG suite's broken files);
 *    slow clients (slowloris) do not block fast ones and are cut after
 *    server.connection_timeout_s; no descriptor leak over a burst of 100 requests including
 *    aborted uploads and clients that give up while their job is queued;
 *  - on daemons of their own: batched == alone bit for bit; queue_full (503 + Retry-After: 1,
 *    at once) and readiness at the high-water mark; 504 deadline_exceeded; SIGHUP reload
 *    (good weights swap, bad weights keep the old model, requests in flight survive); SIGTERM
 *    drain (in-flight requests finish with 200, new ones get 503 shutting_down, exit 0).
 * Single-threaded except where a client must run beside the test's own actions (a pthread
 * running it_http_many); every wait is bounded. */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
// clang-format off
#include <cmocka.h>
// clang-format on

#include "test_http_cases.h"
#include "testutil.h"

/* ------------------------------------------------------------------ helpers */

/* it_http_many on a thread of its own, so the test can act while the requests are in flight. */
typedef struct bg_batch {
    pthread_t th;
    int port, n;
    it_req *rq;
    it_resp *rs;
} bg_batch;

static void *bg_main(void *arg) {
    bg_batch *b = arg;
    it_http_many(b->port, b->rq, b->n, b->rs);
    return NULL;
}

static void bg_start(bg_batch *b, int port, it_req *rq, it_resp *rs, int n) {
    b->port = port, b->rq = rq, b->rs = rs, b->n = n;
    if (pthread_create(&b->th, NULL, bg_main, b)) fail_msg("pthread_create");
}

static void bg_join(bg_batch *b) {
    pthread_join(b->th, NULL);
}

static char *model_checksum(int port) {
    it_resp r;
    it_get(port, "/model", &r);
    char *c = r.status == 200 ? it_json_str(&r, "checksum", NULL) : NULL;
    it_resp_free(&r);
    return c;
}

/* One raw exchange: connect, send `req` (n bytes), optionally half-close, read for up to
 * `wait` s. Returns the response status (0: none) and whether the server closed. */
static int raw_exchange(int port, const void *req, size_t n, int shut_wr, double wait, int *closed, char *buf,
                        size_t cap) {
    *closed = 0;
    buf[0] = '\0';
    int fd = it_connect(port);
    if (fd < 0) return -1;
    it_send(fd, req, n);
    if (shut_wr) shutdown(fd, SHUT_WR);
    it_recv_all(fd, buf, cap, wait, closed);
    close(fd);
    return it_raw_status(buf);
}

static int healthy(const it_daemon *d) {
    it_resp r;
    it_req rq = {.path = "/healthz", .timeout_ms = 5000};
    it_http(d->port, &rq, &r);
    int ok = r.status == 200;
    it_resp_free(&r);
    return ok;
}

static int colorize_ok(const it_daemon *d) {
    size_t n;
    uint8_t *png = it_make_image(48, 32, 1, 777, CZ_FMT_PNG, &n);
    it_resp r;
    it_post(d->port, "/colorize", png, n, "image/png", &r);
    int ok = r.status == 200;
    it_resp_free(&r);
    free(png);
    return ok;
}

/* Error body code of a response, "" when none (static buffer). */
static const char *err_code(const it_resp *r) {
    static char code[64];
    code[0] = '\0';
    json_error_t e;
    json_t *root = json_loadb(r->body, r->len, 0, &e);
    const char *c = json_string_value(json_object_get(json_object_get(root, "error"), "code"));
    if (c) snprintf(code, sizeof code, "%s", c);
    json_decref(root);
    return code;
}

/* ------------------------------------------------------------------ concurrency */

void test_concurrency(void **state) {
    (void)state;
    it_test_begin("32 parallel clients");
    enum { N = 32 };
    it_req rq[N];
    it_resp rs[N];
    uint8_t *bodies[N];
    int w[N], h[N];
    cz_image_format fmt[N];
    for (int i = 0; i < N; i++) {
        w[i] = 40 + 7 * i, h[i] = 30 + 5 * (N - i);
        int gray = i % 2 == 0;
        size_t n;
        bodies[i] =
            it_make_image(w[i], h[i], gray ? 1 : 3, 100 + (uint64_t)i, gray ? CZ_FMT_PNG : CZ_FMT_JPEG, &n);
        int to_png = i % 4 < 2;
        fmt[i] = to_png ? CZ_FMT_PNG : CZ_FMT_JPEG;
        rq[i] = (it_req){.path = to_png ? "/colorize?format=png" : "/colorize?format=jpeg",
                         .body = bodies[i],
                         .len = n,
                         .content_type = gray ? "image/png" : "image/jpeg",
                         .timeout_ms = 60000};
    }
    double t0 = it_now();
    it_http_many(g_main.port, rq, N, rs);
    double dt = it_now() - t0;
    int good = 0, maxb = 0;
    for (int i = 0; i < N; i++) {
        char what[64];
        snprintf(what, sizeof what, "client %d (%dx%d)", i, w[i], h[i]);
        cz_image img;
        /* print only failures; one summary line below */
        if (rs[i].status == 200 && it_batch_size(&rs[i]) > 0 &&
            cz_image_decode(rs[i].body, rs[i].len, NULL, &img, NULL) == CZ_OK) {
            good += img.width == w[i] && img.height == h[i];
            if (img.width != w[i] || img.height != h[i])
                it_check(0, "%s: output %dx%d", what, img.width, img.height);
            cz_image_free(&img);
        } else {
            it_check_image(&rs[i], fmt[i], w[i], h[i], what, NULL);
        }
        if (it_batch_size(&rs[i]) > maxb) maxb = it_batch_size(&rs[i]);
        it_resp_free(&rs[i]);
        free(bodies[i]);
    }
    it_check(good == N,
             "%d/%d parallel clients got 200 with a valid image of their own size (%.2f s, largest "
             "X-Batch-Size %d)",
             good, N, dt, maxb);
    it_check(healthy(&g_main), "daemon healthy afterwards");
    IT_TEST_END();
}

/* ------------------------------------------------------------------ hostile bytes */

void test_hostile_bodies(void **state) {
    (void)state;
    it_test_begin("hostile bodies");
    int port = g_main.port;
    uint64_t s = 4242;
    static const size_t sizes[] = {1, 2, 17, 1000, 65536, 300000};
    int all4xx = 1;
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        uint8_t *b = malloc(sizes[k]);
        for (size_t i = 0; i < sizes[k]; i++)
            b[i] = (uint8_t)tu_rand_u64(&s);
        it_resp r;
        it_post(port, "/colorize", b, sizes[k], "image/jpeg", &r);
        int ok = r.status >= 400 && r.status < 500 && err_code(&r)[0];
        if (!ok)
            it_check(0, "%zu random bytes -> 4xx JSON error (got %ld '%.80s')", sizes[k], r.status, r.body);
        all4xx &= ok;
        it_resp_free(&r);
        char ct[128];
        size_t mn;
        uint8_t *mp = it_multipart(b, sizes[k], "image", 0, ct, &mn);
        it_post(port, "/colorize", mp, mn, ct, &r);
        ok = r.status >= 400 && r.status < 500 && err_code(&r)[0];
        if (!ok) it_check(0, "%zu random bytes in multipart -> 4xx JSON error (got %ld)", sizes[k], r.status);
        all4xx &= ok;
        it_resp_free(&r);
        free(mp);
        free(b);
    }
    it_check(all4xx, "random bodies (raw and multipart, 1 B .. 300 KB) -> 4xx JSON errors");

    /* multipart cut at many points: always a 400 */
    size_t n, mn;
    uint8_t *jpg = it_make_image(64, 64, 1, 7, CZ_FMT_JPEG, &n);
    char ct[128];
    uint8_t *mp = it_multipart(jpg, n, "image", 1, ct, &mn);
    int all400 = 1;
    for (int k = 0; k < 12; k++) {
        size_t cut = mn * (size_t)k / 12;
        it_resp r;
        it_post(port, "/colorize", mp, cut, ct, &r);
        if (r.status != 400) {
            it_check(0, "multipart cut at %zu of %zu bytes -> 400 (got %ld %s)", cut, mn, r.status,
                     err_code(&r));
            all400 = 0;
        }
        it_resp_free(&r);
    }
    it_check(all400, "multipart cut at 12 points -> 400 each");
    free(mp);

    /* lying and broken framing on raw sockets */
    char buf[8192];
    int closed, st;
    double t0;
    const char *q1 =
        "POST /colorize HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 900000\r\n\r\n"
        "\xff\xd8\xff\xe0 only a few bytes of the promised body";
    t0 = it_now();
    st = raw_exchange(port, q1, strlen(q1), 1, 6.0, &closed, buf, sizeof buf);
    it_note("Content-Length 900000, 40 bytes sent, write side closed -> status %d, closed %d after %.2f s",
            st, closed, it_now() - t0);
    t0 = it_now();
    st = raw_exchange(port, q1, strlen(q1), 0, 6.0, &closed, buf, sizeof buf);
    it_check(closed && it_now() - t0 < 6.0,
             "Content-Length 900000, 40 bytes sent, then silence -> connection closed within "
             "connection_timeout_s (%.2f s, "
             "status %d)",
             it_now() - t0, st);
    const char *q2 = "POST /colorize HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000000\r\n\r\nabc";
    st = raw_exchange(port, q2, strlen(q2), 0, 3.0, &closed, buf, sizeof buf);
    it_check(st == 413, "Content-Length 10^15 with a 3-byte body -> 413 (got %d)", st);
    const char *q3 = "POST /colorize HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\nabc";
    st = raw_exchange(port, q3, strlen(q3), 0, 3.0, &closed, buf, sizeof buf);
    it_check(st == 400 || (st == 0 && closed), "Content-Length -5 -> 400 or closed (got %d)", st);
    const char *q4 = "POST /colorize HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\nabc";
    st = raw_exchange(port, q4, strlen(q4), 0, 3.0, &closed, buf, sizeof buf);
    it_check(st == 400 || st == 413 || (st == 0 && closed),
             "Content-Length 12abc -> 400/413 or closed (got %d)", st);
    const char *q5 =
        "POST /colorize HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        "0\r\n\r\n";
    st = raw_exchange(port, q5, strlen(q5), 1, 3.0, &closed, buf, sizeof buf);
    it_check(st >= 400 || (st == 0 && closed),
             "Content-Length together with chunked -> an error or closed (got %d)", st);
    const char *q6 =
        "POST /colorize HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n";
    st = raw_exchange(port, q6, strlen(q6), 1, 3.0, &closed, buf, sizeof buf);
    it_check(st >= 400 || (st == 0 && closed), "malformed chunk size -> an error or closed (got %d)", st);
    static const char q7[] = "\x00\x01\x02GARBAGE \xff\xfe\r\n\r\n";
    st = raw_exchange(port, q7, sizeof q7 - 1, 1, 3.0, &closed, buf, sizeof buf);
    it_check(st >= 400 || (st == 0 && closed), "binary garbage request line -> an error or closed (got %d)",
             st);
    size_t hb = 256 * 1024;
    char *bomb = malloc(hb + 128);
    int hn = snprintf(bomb, 128, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ");
    memset(bomb + hn, 'a', hb);
    memcpy(bomb + hn + hb, "\r\n\r\n", 4);
    st = raw_exchange(port, bomb, (size_t)hn + hb + 4, 0, 3.0, &closed, buf, sizeof buf);
    it_check(st >= 400 || (st == 0 && closed), "a 256 KiB header -> an error or closed (got %d)", st);
    free(bomb);
    const char *q8 = "POST /colorize HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary="
                     "\r\nContent-Length: 10\r\n\r\n0123456789";
    st = raw_exchange(port, q8, strlen(q8), 0, 3.0, &closed, buf, sizeof buf);
    it_check(st == 400, "multipart with an empty boundary -> 400 (got %d)", st);

    /* the PNG suite's deliberately broken files */
    char *dir = tu_path(tu_shared_dir(), "testdata/pngsuite");
    static const char *broken[] = {"xs1n0g01.png", "xs2n0g01.png", "xs4n0g01.png", "xs7n0g01.png",
                                   "xcrn0g04.png", "xlfn0g04.png", "xhdn0g08.png", "xc1n0g08.png",
                                   "xc9n2c08.png", "xd0n2c08.png", "xd3n2c08.png", "xd9n2c08.png",
                                   "xdtn0g01.png", "xcsn0g01.png"};
    int tried = 0, agree = 0;
    for (size_t i = 0; i < sizeof broken / sizeof broken[0]; i++) {
        char *p = tu_path(dir, broken[i]);
        size_t bn;
        uint8_t *b = it_read_file(p, &bn);
        free(p);
        if (!b) continue;
        tried++;
        cz_image img;
        cz_status v = cz_image_decode(b, bn, NULL, &img, NULL);
        if (v == CZ_OK) cz_image_free(&img);
        it_resp r;
        it_post(port, "/colorize", b, bn, "image/png", &r);
        int ok = v == CZ_OK ? r.status == 200 : (r.status == 415 || r.status == 422) && err_code(&r)[0];
        if (!ok)
            it_check(0, "pngsuite/%s: cz_core says %d, daemon %ld %s", broken[i], v, r.status, err_code(&r));
        agree += ok;
        it_resp_free(&r);
        free(b);
    }
    it_check(tried > 0 && agree == tried,
             "%d/%d broken PNG suite files answered like cz_core decodes them (415/422 or 200)", agree,
             tried);
    free(dir);
    free(jpg);

    it_check(it_daemon_alive(&g_main), "daemon process still alive");
    it_check(healthy(&g_main) && colorize_ok(&g_main), "daemon still serves /healthz and /colorize");
    IT_TEST_END();
}

/* ------------------------------------------------------------------ slow clients */

typedef struct fast_client {
    pthread_t th;
    int port, n_ok, n;
    double worst;
} fast_client;

static void *fast_main(void *arg) {
    fast_client *f = arg;
    size_t n;
    uint8_t *png = it_make_image(96, 64, 1, 61, CZ_FMT_PNG, &n);
    for (int i = 0; i < f->n; i++) {
        it_sleep(0.3);
        it_req rq = {
            .path = "/colorize", .body = png, .len = n, .content_type = "image/png", .timeout_ms = 10000};
        it_resp r;
        it_http(f->port, &rq, &r);
        f->n_ok += r.status == 200;
        if (r.seconds > f->worst) f->worst = r.seconds;
        it_resp_free(&r);
    }
    free(png);
    return NULL;
}

/* Sockets of one slow-client kind: when each was seen closed (-1: never). */
typedef struct slow_group {
    const char *what;
    int fd[4];
    double closed_at[4];
    size_t pos[4]; /* trickle: next byte to send */
    int trickle;   /* 1: send a byte every 0.4 s */
    int skip_hdr;  /* trickle the body only (headers sent whole at the start) */
} slow_group;

void test_slow_clients(void **state) {
    (void)state;
    it_test_begin("slow clients (server.connection_timeout_s = 2)");
    int port = g_main.port;
    const char *hdr = "POST /colorize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                      "image/jpeg\r\nContent-Length: 100000\r\n\r\n";
    size_t hl = strlen(hdr);
    char part[300];
    memset(part, 'x', sizeof part);
    slow_group g[4] = {{.what = "stalled after a partial header"},
                       {.what = "stalled after headers + part of the body"},
                       {.what = "trickling the headers, 1 byte / 0.4 s", .trickle = 1},
                       {.what = "trickling the body, 1 byte / 0.4 s", .trickle = 1, .skip_hdr = 1}};
    for (int k = 0; k < 4; k++)
        for (int i = 0; i < 4; i++) {
            g[k].fd[i] = it_connect(port);
            g[k].closed_at[i] = -1;
            if (g[k].fd[i] < 0) continue;
            if (k == 0) it_send(g[k].fd[i], hdr, 30);
            if (k == 1 || k == 3) it_send(g[k].fd[i], hdr, hl);
            if (k == 1) it_send(g[k].fd[i], part, sizeof part);
            if (k == 3) g[k].pos[i] = hl;
        }
    double t0 = it_now();
    fast_client fc = {.port = port, .n = 5};
    pthread_create(&fc.th, NULL, fast_main, &fc);
    double next = t0, limit = t0 + 10.0;
    for (;;) {
        double now = it_now();
        int open_left = 0, tick = now >= next;
        for (int k = 0; k < 4; k++)
            for (int i = 0; i < 4; i++) {
                int fd = g[k].fd[i];
                if (fd < 0 || g[k].closed_at[i] >= 0) continue;
                char b[512];
                ssize_t r = recv(fd, b, sizeof b, MSG_DONTWAIT);
                if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
                    g[k].closed_at[i] = now - t0;
                    continue;
                }
                if (g[k].trickle && tick) {
                    char c = g[k].pos[i] < hl ? hdr[g[k].pos[i]] : 'x';
                    if (send(fd, &c, 1, MSG_NOSIGNAL) != 1) {
                        g[k].closed_at[i] = now - t0;
                        continue;
                    }
                    g[k].pos[i]++;
                }
                open_left++;
            }
        if (tick) next = now + 0.4;
        if (!open_left || now > limit) break;
        it_sleep(0.05);
    }
    pthread_join(fc.th, NULL);
    it_check(fc.n_ok == fc.n && fc.worst < 2.0,
             "a normal client beside 16 slow connections: %d/%d 200, slowest %.2f s (< 2 s)", fc.n_ok, fc.n,
             fc.worst);
    for (int k = 0; k < 4; k++) {
        double bound = g[k].trickle ? 10.0 : 5.0, latest = 0;
        int cut = 0;
        for (int i = 0; i < 4; i++) {
            if (g[k].closed_at[i] >= 0 && g[k].closed_at[i] <= bound) cut++;
            latest = g[k].closed_at[i] < 0 ? INFINITY : fmax(latest, g[k].closed_at[i]);
            if (g[k].fd[i] >= 0) close(g[k].fd[i]);
        }
        size_t bytes = g[k].trickle ? g[k].pos[0] - (g[k].skip_hdr ? hl : 0) : 0;
        char extra[64] = "";
        if (g[k].trickle) snprintf(extra, sizeof extra, ", %zu bytes trickled each", bytes);
        it_check(cut == 4, "4 connections %s: %d cut within %.0f s (latest %s%.2f s%s)", g[k].what, cut,
                 bound, isinf(latest) ? "never, > " : "", isinf(latest) ? bound : latest, extra);
    }
    it_check(healthy(&g_main), "daemon healthy afterwards");
    IT_TEST_END();
}

/* ------------------------------------------------------------------ descriptor leaks */

static int settled_fd_count(const it_daemon *d, int target, double timeout_s) {
    double end = it_now() + timeout_s;
    int n = it_daemon_fd_count(d);
    while (it_now() < end && (target < 0 || n > target)) {
        it_sleep(0.2);
        int m = it_daemon_fd_count(d);
        if (target < 0 && m == n) return n;
        n = m;
    }
    return n;
}

void test_fd_leak(void **state) {
    (void)state;
    it_test_begin("file descriptors over a burst of 100 requests");
    int port = g_main.port;
    it_sleep(0.3);
    int before = settled_fd_count(&g_main, -1, 3.0);
    it_check(before > 0, "daemon has %d open descriptors before", before);
    size_t pn, jn;
    uint8_t *png = it_make_image(80, 60, 1, 71, CZ_FMT_PNG, &pn);
    uint8_t *jpg = it_make_image(80, 60, 3, 72, CZ_FMT_JPEG, &jn);
    /* 60 ordinary requests (200s and errors), 10 at a time */
    enum { N = 60 };
    it_req rq[N];
    it_resp rs[N];
    for (int i = 0; i < N; i++) {
        switch (i % 6) {
        case 0:
        case 1:
            rq[i] = (it_req){.path = "/colorize", .body = png, .len = pn, .content_type = "image/png"};
            break;
        case 2:
            rq[i] = (it_req){
                .path = "/colorize?format=png", .body = jpg, .len = jn, .content_type = "image/jpeg"};
            break;
        case 3:
            rq[i] = (it_req){.path = "/colorize", .body = "garbage!", .len = 8, .content_type = "image/jpeg"};
            break;
        case 4: rq[i] = (it_req){.path = "/nope"}; break;
        default:
            rq[i] =
                (it_req){.path = "/colorize?quality=0", .body = png, .len = pn, .content_type = "image/png"};
        }
        rq[i].timeout_ms = 30000;
    }
    int expected_ok = 1;
    for (int k = 0; k < N; k += 10) {
        it_http_many(port, rq + k, 10, rs + k);
        for (int i = k; i < k + 10; i++) {
            long want = (i % 6 <= 2) ? 200 : (i % 6 == 3) ? 415 : (i % 6 == 4) ? 404 : 400;
            expected_ok &= rs[i].status == want;
            it_resp_free(&rs[i]);
        }
    }
    it_check(expected_ok, "60 ordinary requests answered as expected (200/415/404/400)");
    /* 20 uploads aborted half-way */
    char hdr[256];
    int hl = snprintf(
        hdr, sizeof hdr,
        "POST /colorize HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: %zu\r\n\r\n", pn);
    for (int i = 0; i < 20; i++) {
        int fd = it_connect(port);
        if (fd < 0) continue;
        it_send(fd, hdr, (size_t)hl);
        it_send(fd, png, pn / 2);
        if (i % 2) it_sleep(0.01);
        close(fd);
    }
    /* 10 clients that give up while their job is queued or running, 10 after headers only */
    it_req quit[10];
    it_resp qr[10];
    for (int i = 0; i < 10; i++)
        quit[i] = (it_req){.path = "/colorize?render=1024",
                           .body = png,
                           .len = pn,
                           .content_type = "image/png",
                           .timeout_ms = 15};
    it_http_many(port, quit, 10, qr);
    for (int i = 0; i < 10; i++)
        it_resp_free(&qr[i]);
    for (int i = 0; i < 10; i++) {
        int fd = it_connect(port);
        if (fd < 0) continue;
        it_send(fd, hdr, (size_t)hl - 2);
        close(fd);
    }
    it_sleep(1.0); /* let abandoned jobs finish */
    int after = settled_fd_count(&g_main, before + 2, 6.0);
    it_check(after >= 0 && after <= before + 2, "descriptors after the burst: %d (before %d, slack 2)", after,
             before);
    it_check(healthy(&g_main) && colorize_ok(&g_main), "daemon still serves afterwards");
    free(png);
    free(jpg);
    IT_TEST_END();
}

/* ------------------------------------------------------------------ batching */

void test_batched_equals_alone(void **state) {
    (void)state;
    it_test_begin("batched == alone, bit for bit (max_batch 8, max_wait_us 300000)");
    static it_daemon d;
    const char *cfg =
        "{\"model\": {\"max_batch\": 8}, \"server\": {\"max_wait_us\": 300000, \"max_queue\": 64,"
        " \"queue_high_water\": 48, \"http_threads\": 8, \"drain_timeout_s\": 5}}";
    assert_int_equal(it_daemon_start(&d, "batch", cfg, IT.w1), 0);
    enum { N = 8 };
    uint8_t *img[N];
    size_t len[N];
    for (int i = 0; i < N; i++)
        img[i] = it_make_image(200, 150, i % 3 ? 1 : 3, 500 + (uint64_t)i, i % 2 ? CZ_FMT_JPEG : CZ_FMT_PNG,
                               &len[i]);
    const int probe[] = {0, 5};
    it_resp alone[2];
    for (int k = 0; k < 2; k++) {
        int i = probe[k];
        it_req rq = {
            .path = "/colorize?format=png", .body = img[i], .len = len[i], .content_type = "image/png"};
        it_http(d.port, &rq, &alone[k]);
        char what[64];
        snprintf(what, sizeof what, "image %d alone", i);
        it_check_image(&alone[k], CZ_FMT_PNG, 200, 150, what, NULL);
        it_check(it_batch_size(&alone[k]) == 1, "image %d alone: X-Batch-Size 1 (got %d)", i,
                 it_batch_size(&alone[k]));
    }
    it_req rq[N];
    it_resp rs[N];
    for (int i = 0; i < N; i++)
        rq[i] = (it_req){.path = "/colorize?format=png",
                         .body = img[i],
                         .len = len[i],
                         .content_type = "application/octet-stream"};
    it_http_many(d.port, rq, N, rs);
    int all = 1, maxb = 0;
    for (int i = 0; i < N; i++) {
        all &= rs[i].status == 200;
        if (it_batch_size(&rs[i]) > maxb) maxb = it_batch_size(&rs[i]);
    }
    it_check(all, "8 concurrent requests all 200");
    for (int k = 0; k < 2; k++) {
        int i = probe[k];
        it_check(it_batch_size(&rs[i]) > 1, "image %d ran in a batch of %d (> 1)", i, it_batch_size(&rs[i]));
        it_check(rs[i].status == 200 && alone[k].status == 200 && rs[i].len == alone[k].len &&
                     !memcmp(rs[i].body, alone[k].body, rs[i].len),
                 "image %d: PNG from the batch == PNG alone, byte for byte (%zu vs %zu bytes)", i, rs[i].len,
                 alone[k].len);
        it_resp_free(&alone[k]);
    }
    it_note("largest X-Batch-Size seen: %d", maxb);
    for (int i = 0; i < N; i++) {
        it_resp_free(&rs[i]);
        free(img[i]);
    }
    it_check(it_daemon_stop(&d, 10), "daemon exits 0 on SIGTERM");
    IT_TEST_END();
}

/* ------------------------------------------------------------------ queue limits */

void test_queue_full(void **state) {
    (void)state;
    it_test_begin("queue_full (max_queue 1, queue_high_water 1, max_wait_us 3 s)");
    static it_daemon d;
    const char *cfg =
        "{\"model\": {\"max_batch\": 8}, \"server\": {\"max_wait_us\": 3000000, \"max_queue\": 1,"
        " \"queue_high_water\": 1, \"drain_timeout_s\": 5}}";
    assert_int_equal(it_daemon_start(&d, "qfull", cfg, IT.w1), 0);
    size_t n;
    uint8_t *png = it_make_image(64, 64, 1, 81, CZ_FMT_PNG, &n);
    it_req first = {
        .path = "/colorize", .body = png, .len = n, .content_type = "image/png", .timeout_ms = 20000};
    it_resp first_r;
    bg_batch bg;
    double t0 = it_now();
    bg_start(&bg, d.port, &first, &first_r, 1);
    /* wait for the job to sit in the queue: /readyz turns 503 queue_high */
    it_resp r = {0};
    char *reason = NULL;
    while (it_now() - t0 < 2.5) {
        it_get(d.port, "/readyz", &r);
        if (r.status == 503) break;
        it_resp_free(&r);
        it_sleep(0.02);
    }
    char *status = r.status == 503 ? it_json_str(&r, "status", NULL) : NULL;
    reason = r.status == 503 ? it_json_str(&r, "reason", NULL) : NULL;
    it_check(
        r.status == 503 && status && !strcmp(status, "not_ready") && reason && !strcmp(reason, "queue_high"),
        "/readyz at the high-water mark -> 503 {\"status\":\"not_ready\",\"reason\":\"queue_high\"} (%ld %s)",
        r.status, r.body ? r.body : "");
    free(status);
    free(reason);
    it_resp_free(&r);
    enum { M = 3 };
    it_req more[M];
    it_resp mr[M];
    for (int i = 0; i < M; i++)
        more[i] = first;
    it_http_many(d.port, more, M, mr);
    for (int i = 0; i < M; i++) {
        char what[64], ra[32] = "";
        snprintf(what, sizeof what, "request %d while the queue is full", i + 1);
        it_check_error(&mr[i], 503, "queue_full", what);
        it_header(&mr[i], "Retry-After", ra, sizeof ra);
        it_check(!strcmp(ra, "1") && mr[i].seconds < 2.0, /* at once: max_wait is 3 s */
                 "%s: Retry-After: 1 ('%s'), answered at once (%.3f s)", what, ra, mr[i].seconds);
        it_resp_free(&mr[i]);
    }
    bg_join(&bg);
    it_check(first_r.status == 200, "the queued request still completes with 200 (%ld after %.2f s)",
             first_r.status, first_r.seconds);
    it_resp_free(&first_r);
    char *m = it_get_metrics(d.port);
    double qf = it_metric_sum(m, "colorize_rejections_total", "reason", "queue_full");
    it_check(qf >= M, "colorize_rejections_total{reason=\"queue_full\"} >= %d (%.0f)", M, qf);
    free(m);
    free(png);
    it_check(it_daemon_stop(&d, 10), "daemon exits 0 on SIGTERM");
    IT_TEST_END();
}

void test_deadline(void **state) {
    (void)state;
    it_test_begin("deadline_exceeded (request_deadline_ms 200, max_wait_us 2 s); per-IP connection limit");
    static it_daemon d;
    const char *cfg =
        "{\"model\": {\"max_batch\": 8}, \"server\": {\"max_wait_us\": 2000000, \"request_deadline_ms\": 200,"
        " \"drain_timeout_s\": 5, \"max_connections_per_ip\": 4}}";
    assert_int_equal(it_daemon_start(&d, "deadline", cfg, IT.w1), 0);
    size_t n;
    uint8_t *png = it_make_image(64, 64, 1, 91, CZ_FMT_PNG, &n);
    it_req rq[2] = {{.path = "/colorize", .body = png, .len = n, .content_type = "image/png"},
                    {.path = "/colorize?format=jpeg", .body = png, .len = n, .content_type = "image/png"}};
    it_resp rs[2];
    it_http_many(d.port, rq, 2, rs);
    for (int i = 0; i < 2; i++) {
        char what[64];
        snprintf(what, sizeof what, "request %d waiting for company past its deadline", i + 1);
        it_check_error(&rs[i], 504, "deadline_exceeded", what);
        it_check(rs[i].seconds < 2.6, "%s: answered in %.2f s (< max_wait + slack)", what, rs[i].seconds);
        it_resp_free(&rs[i]);
    }
    char *m = it_get_metrics(d.port);
    double dl = it_metric_sum(m, "colorize_rejections_total", "reason", "deadline");
    it_check(dl >= 2, "colorize_rejections_total{reason=\"deadline\"} >= 2 (%.0f)", dl);
    free(m);

    /* the same daemon has server.max_connections_per_ip = 4: a fifth connection is turned away */
    it_sleep(0.3);
    int hold[4];
    for (int i = 0; i < 4; i++) {
        hold[i] = it_connect(d.port);
        if (hold[i] >= 0) it_send(hold[i], "GET /healthz HTTP/1.1\r\n", 24);
    }
    it_sleep(0.2);
    it_resp r;
    it_req h = {.path = "/healthz", .timeout_ms = 3000};
    it_http(d.port, &h, &r);
    it_check(r.status == 0,
             "4 connections open (max_connections_per_ip 4): a fifth is turned away (status %ld, curl %d)",
             r.status, r.curl_code);
    it_resp_free(&r);
    for (int i = 0; i < 4; i++)
        if (hold[i] >= 0) close(hold[i]);
    it_sleep(0.3);
    it_check(healthy(&d), "once they close, /healthz answers again");
    free(png);
    it_check(it_daemon_stop(&d, 10), "daemon exits 0 on SIGTERM");
    IT_TEST_END();
}

/* ------------------------------------------------------------------ reload */

static int wait_checksum(int port, const char *want, double timeout_s, char *got, size_t cap) {
    double end = it_now() + timeout_s;
    got[0] = '\0';
    do {
        char *c = model_checksum(port);
        snprintf(got, cap, "%s", c ? c : "(none)");
        free(c);
        if (!strcmp(got, want)) return 1;
        it_sleep(0.05);
    } while (it_now() < end);
    return 0;
}

void test_reload(void **state) {
    (void)state;
    it_test_begin("SIGHUP reload");
    static it_daemon d;
    const char *cfg =
        "{\"model\": {\"max_batch\": 4}, \"server\": {\"max_wait_us\": 2000, \"drain_timeout_s\": 5}}";
    assert_int_equal(it_daemon_start(&d, "reload", cfg, IT.w1), 0);
    char s1[64], s2[64], got[128];
    it_checksum_str(IT.sum1, s1, sizeof s1);
    it_checksum_str(IT.sum2, s2, sizeof s2);
    it_check(IT.sum1 != IT.sum2, "the two weight files differ (%s, %s)", s1, s2);
    it_check(wait_checksum(d.port, s1, 0, got, sizeof got), "/model checksum is the first weights' (%s)",
             got);
    size_t n;
    uint8_t *png = it_make_image(100, 80, 1, 95, CZ_FMT_PNG, &n);
    it_resp before, after;
    it_post(d.port, "/colorize?format=png", png, n, "image/png", &before);

    /* good weights, with requests in flight */
    enum { M = 12 };
    it_req rq[M];
    it_resp rs[M];
    for (int i = 0; i < M; i++)
        rq[i] = (it_req){.path = "/colorize?format=png",
                         .body = png,
                         .len = n,
                         .content_type = "image/png",
                         .timeout_ms = 30000};
    bg_batch bg;
    bg_start(&bg, d.port, rq, rs, M);
    it_sleep(0.05);
    it_check(it_copy_file(IT.w2, d.model) == 0, "second weights copied over the model file (atomic rename)");
    kill(d.pid, SIGHUP);
    int swapped = wait_checksum(d.port, s2, 10, got, sizeof got);
    bg_join(&bg);
    it_check(swapped, "after SIGHUP /model checksum is the second weights' (%s)", got);
    int all = 1;
    for (int i = 0; i < M; i++) {
        all &= rs[i].status == 200;
        it_resp_free(&rs[i]);
    }
    it_check(all, "%d requests in flight across the swap all 200", M);
    it_post(d.port, "/colorize?format=png", png, n, "image/png", &after);
    it_check(before.status == 200 && after.status == 200 &&
                 (before.len != after.len || memcmp(before.body, after.body, before.len)),
             "the new weights are serving: output changed");
    char *m = it_get_metrics(d.port);
    char lbl[96];
    snprintf(lbl, sizeof lbl, "checksum=\"%s\"", s2);
    it_check(strstr(m, lbl) != NULL, "colorize_model_info shows the new checksum");
    free(m);

    /* bad weights: garbage, then a truncated file */
    uint8_t junk[4096];
    uint64_t s = 5;
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (uint8_t)tu_rand_u64(&s);
    char tmp[PATH_MAX + 8];
    snprintf(tmp, sizeof tmp, "%s.junk", d.model);
    it_write_file(tmp, junk, sizeof junk);
    rename(tmp, d.model);
    kill(d.pid, SIGHUP);
    it_sleep(1.5);
    it_check(wait_checksum(d.port, s2, 0, got, sizeof got),
             "SIGHUP with a garbage file: checksum unchanged (%s)", got);
    it_check(healthy(&d) && colorize_ok(&d), "still serving after the failed reload");
    size_t wn;
    uint8_t *w1 = it_read_file(IT.w1, &wn);
    it_write_file(tmp, w1, wn * 2 / 3);
    rename(tmp, d.model);
    free(w1);
    kill(d.pid, SIGHUP);
    it_sleep(1.5);
    it_check(wait_checksum(d.port, s2, 0, got, sizeof got),
             "SIGHUP with a truncated weights file: checksum unchanged (%s)", got);
    it_resp rz;
    it_get(d.port, "/readyz", &rz);
    it_check(rz.status == 200 && colorize_ok(&d), "ready and serving after the failed reload (%ld)",
             rz.status);
    it_resp_free(&rz);
    it_resp_free(&before);
    it_resp_free(&after);
    free(png);
    it_check(it_daemon_stop(&d, 10), "daemon exits 0 on SIGTERM");
    IT_TEST_END();
}

/* ------------------------------------------------------------------ drain */

void test_drain(void **state) {
    (void)state;
    it_test_begin("SIGTERM drain (max_wait_us 1.5 s, drain_timeout_s 10)");
    static it_daemon d;
    const char *cfg =
        "{\"model\": {\"max_batch\": 8}, \"server\": {\"max_wait_us\": 1500000, \"drain_timeout_s\": 10}}";
    assert_int_equal(it_daemon_start(&d, "drain", cfg, IT.w1), 0);
    size_t n;
    uint8_t *png = it_make_image(120, 90, 1, 99, CZ_FMT_PNG, &n);
    enum { M = 4 };
    it_req rq[M];
    it_resp rs[M];
    for (int i = 0; i < M; i++)
        rq[i] = (it_req){.path = "/colorize?format=png&render=512",
                         .body = png,
                         .len = n,
                         .content_type = "image/png",
                         .timeout_ms = 30000};
    bg_batch bg;
    bg_start(&bg, d.port, rq, rs, M);
    it_sleep(0.5); /* they are queued, waiting for company */
    double t0 = it_now();
    kill(d.pid, SIGTERM);
    it_sleep(0.1);
    it_resp r;
    it_req late = {
        .path = "/colorize", .body = png, .len = n, .content_type = "image/png", .timeout_ms = 5000};
    it_http(d.port, &late, &r);
    if (r.status == 0) {
        it_check(r.curl_code == 7, "a new request during drain: connection refused (curl %d)", r.curl_code);
    } else {
        char ra[32] = "";
        it_check_error(&r, 503, "shutting_down", "a new request during drain");
        it_header(&r, "Retry-After", ra, sizeof ra);
        it_check(!strcmp(ra, "5"), "shutting_down carries Retry-After: 5 ('%s')", ra);
    }
    it_resp_free(&r);
    it_get(d.port, "/readyz", &r);
    if (r.status == 0) {
        it_check(r.curl_code == 7, "/readyz during drain: connection refused (curl %d)", r.curl_code);
    } else {
        char *reason = it_json_str(&r, "reason", NULL);
        it_check(r.status == 503 && reason && !strcmp(reason, "draining"),
                 "/readyz during drain -> 503 reason draining (%ld %s)", r.status, r.body);
        free(reason);
    }
    it_resp_free(&r);
    bg_join(&bg);
    int all = 1;
    for (int i = 0; i < M; i++) {
        char what[64];
        snprintf(what, sizeof what, "in-flight request %d", i + 1);
        all &= it_check_image(&rs[i], CZ_FMT_PNG, 120, 90, what, NULL);
        it_resp_free(&rs[i]);
    }
    it_check(all, "all %d in-flight requests completed with 200", M);
    int exited = it_daemon_wait_exit(&d, 12.0 - (it_now() - t0));
    it_check(exited && WIFEXITED(d.exit_status) && WEXITSTATUS(d.exit_status) == 0,
             "daemon exited with status 0 within drain_timeout_s + 2 (%.2f s after SIGTERM; %s %d)",
             it_now() - t0, exited ? (WIFEXITED(d.exit_status) ? "exit" : "signal") : "still running",
             exited ? (WIFEXITED(d.exit_status) ? WEXITSTATUS(d.exit_status) : WTERMSIG(d.exit_status)) : 0);
    if (!exited) it_daemon_stop(&d, 1);
    free(png);
    IT_TEST_END();
}
