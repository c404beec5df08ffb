/* test_http_errors.c: the error table of server/CONTRACT.md against the main daemon of
 * test_http.c: 400 missing_image / bad_multipart / invalid_parameter (the message names the
 * parameter), 404, 405 with Allow, 413 (declared length, streamed multipart and chunked
 * bodies, answered before the body when the length is declared, with an orderly close after
 * the declared body), 415, and the four 422
 * decoder verdicts. Each crafted input is first shown to get the intended verdict from
 * cz_core's own decoder, so a mismatch is the daemon's. Every error answer is checked for
 * application/json {"error":{"code","message","request_id"}} with request_id == X-Request-Id.
 * The 503/504 rows need daemons of their own (test_http_ops.c); 500 has no outside trigger. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>
// clang-format off
#include <cmocka.h>
// clang-format on

#include "test_http_cases.h"
#include "testutil.h"

static uint32_t crc32_buf(const uint8_t *p, size_t n) {
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1u)));
    }
    return c ^ 0xffffffffu;
}

static void be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8), p[3] = (uint8_t)v;
}

/* A PNG whose header declares w x h (8-bit RGB) followed by a token IDAT: the pixel limit
 * must be decided from the header alone. */
static size_t png_header_bomb(uint8_t *buf, uint32_t w, uint32_t h) {
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a};
    static const uint8_t idat[] = {0x78, 0x9c, 0x63, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01};
    size_t n = 0;
    memcpy(buf, sig, 8), n = 8;
    be32(buf + n, 13), memcpy(buf + n + 4, "IHDR", 4), be32(buf + n + 8, w), be32(buf + n + 12, h);
    buf[n + 16] = 8, buf[n + 17] = 2, buf[n + 18] = buf[n + 19] = buf[n + 20] = 0;
    be32(buf + n + 21, crc32_buf(buf + n + 4, 17)), n += 25;
    be32(buf + n, sizeof idat), memcpy(buf + n + 4, "IDAT", 4), memcpy(buf + n + 8, idat, sizeof idat);
    be32(buf + n + 8 + sizeof idat, crc32_buf(buf + n + 4, 4 + sizeof idat)), n += 12 + sizeof idat;
    be32(buf + n, 0), memcpy(buf + n + 4, "IEND", 4), be32(buf + n + 8, crc32_buf(buf + n + 4, 4));
    return n + 12;
}

/* HTTP status and error code the contract gives for a decoder verdict. */
static void verdict_to_http(cz_status s, long *status, const char **code) {
    switch (s) {
    case CZ_ERR_UNSUPPORTED_FORMAT: *status = 415, *code = "unsupported_media_type"; break;
    case CZ_ERR_CORRUPT_IMAGE: *status = 422, *code = "corrupt_image"; break;
    case CZ_ERR_TRUNCATED_IMAGE: *status = 422, *code = "truncated_image"; break;
    case CZ_ERR_TOO_MANY_PIXELS: *status = 422, *code = "too_many_pixels"; break;
    case CZ_ERR_EMPTY_IMAGE: *status = 422, *code = "empty_image"; break;
    default: *status = 200, *code = "";
    }
}

static cz_status local_verdict(const void *b, size_t n) {
    cz_image_limits lim;
    cz_image_limits_default(&lim);
    lim.max_pixels = MAIN_MAX_PIXELS;
    cz_image img;
    cz_status s = cz_image_decode(b, n, &lim, &img, NULL);
    if (s == CZ_OK) cz_image_free(&img);
    return s;
}

/* POSTs raw bytes and checks the answer against what cz_core's decoder says about them. */
static void post_expect_verdict(const void *b, size_t n, const char *what, cz_status intended) {
    cz_status s = local_verdict(b, n);
    long st;
    const char *code;
    verdict_to_http(s, &st, &code);
    if (intended)
        it_check(s == intended, "%s: test input really is a %d verdict (cz_core says %d)", what, intended, s);
    it_resp r;
    it_post(g_main.port, "/colorize", b, n, "application/octet-stream", &r);
    it_check_error(&r, st, code, what);
    it_resp_free(&r);
}

static void err_case(const char *method, const char *path, const void *body, size_t n, int has_body,
                     const char *ctype, long status, const char *code, const char *what, const char *names) {
    it_req rq = {
        .method = method, .path = path, .body = body, .len = n, .has_body = has_body, .content_type = ctype};
    it_resp r;
    it_http(g_main.port, &rq, &r);
    it_check_error(&r, status, code, what);
    if (names && r.status == status) {
        char *m = it_json_str(&r, "error", "message");
        it_check(m && strstr(m, names), "%s: the message names '%s' (\"%s\")", what, names, m ? m : "");
        free(m);
    }
    it_resp_free(&r);
}

static void method_case(const char *method, const char *path, const char *allow) {
    it_req rq = {.method = method, .path = path};
    if (!strcmp(method, "POST")) rq.has_body = 1;
    it_resp r;
    it_http(g_main.port, &rq, &r);
    char what[128], a[128] = "";
    snprintf(what, sizeof what, "%s %s", method, path);
    it_check_error(&r, 405, "method_not_allowed", what);
    it_header(&r, "Allow", a, sizeof a);
    it_check(strstr(a, allow) != NULL, "%s: Allow: %s ('%s')", what, allow, a);
    it_resp_free(&r);
}

/* 413 for a declared Content-Length above the limit, answered without the body being sent. */
static void raw_413_content_length(void) {
    int fd = it_connect(g_main.port);
    if (!it_check(fd >= 0, "raw connect")) return;
    const char *req = "POST /colorize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
                      "Content-Length: 2000000000\r\n\r\n";
    it_send(fd, req, strlen(req));
    char buf[4096];
    int closed;
    double t0 = it_now();
    it_recv_all(fd, buf, sizeof buf, 3.0, &closed);
    double dt = it_now() - t0;
    it_check(
        it_raw_status(buf) == 413 && strstr(buf, "payload_too_large"),
        "Content-Length: 2000000000 with no body sent -> 413 payload_too_large at once (%.2f s, got '%.40s')",
        dt, buf);
    close(fd);
}

/* Sends the headers of a POST /colorize declaring max_body_bytes + 1 (with `extra` header lines)
 * and reads what comes back within 3 s into buf; returns the socket, -1 when it cannot connect. */
static int raw_declared_413(const char *extra, char *buf, size_t cap, int *closed) {
    char req[256];
    snprintf(req, sizeof req,
             "POST /colorize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
             "Content-Length: %d\r\n%s\r\n",
             1048576 + 1, extra);
    int fd = it_connect(g_main.port);
    if (!it_check(fd >= 0, "raw connect")) return -1;
    it_send(fd, req, strlen(req));
    it_recv_all(fd, buf, cap, 3.0, closed);
    return fd;
}

/* A declared body just above the limit, sent without waiting for 100-continue. The 413 must
 * come at once, and the daemon must then read the body to its end and close in order (FIN):
 * closing on an unread body makes the kernel reset the connection, which can destroy the 413
 * before the client reads it (curl: "send failure", error 55). Sending the body only after the
 * answer has arrived makes that reset certain where the daemon does not read on, so the check
 * is the client socket's state: CLOSE_WAIT (the daemon's FIN, no reset). Then the same request with
 * "Expect: 100-continue": the 413 comes instead of "100 Continue" and the connection closes
 * without any body sent. */
static void raw_413_declared_body(void) {
    const size_t n = 1048576 + 1; /* server.max_body_bytes + 1 */
    for (int expect = 0; expect < 2; expect++) {
        char buf[4096];
        int closed;
        int fd = raw_declared_413(expect ? "Expect: 100-continue\r\n" : "", buf, sizeof buf, &closed);
        if (fd < 0) return;
        const char *what = expect ? "with Expect: 100-continue" : "body not yet sent";
        it_check(it_raw_status(buf) == 413 && strstr(buf, "payload_too_large"),
                 "Content-Length max_body_bytes + 1, %s -> 413 payload_too_large at once (got '%.40s')", what,
                 buf);
        if (expect) {
            it_check(closed, "with Expect: 100-continue the daemon closes after the 413 (no body was sent)");
            close(fd);
            continue;
        }
        char *body = calloc(1, n);
        int sent = body ? it_send(fd, body, n) : -1;
        int send_errno = errno;
        free(body);
        /* A reset would have come back at the first segment; on loopback that is at once. */
        usleep(300 * 1000);
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
        struct tcp_info ti;
        memset(&ti, 0, sizeof ti);
        socklen_t tl = sizeof ti;
        getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &tl);
        it_check(sent == 0 && err == 0 && ti.tcpi_state == TCP_CLOSE_WAIT,
                 "then the daemon reads the declared body and closes in order, not with a reset (send: %s; "
                 "socket error: %s; TCP state %d, want CLOSE_WAIT %d)",
                 sent ? strerror(send_errno) : "ok", err ? strerror(err) : "none", (int)ti.tcpi_state,
                 (int)TCP_CLOSE_WAIT);
        close(fd);
    }
}

/* After an early 413 the daemon reads the declared body only at server.min_body_rate: a client
 * that trickles it is cut off like any slow upload (server.connection_timeout_s = 2 s of grace
 * here), not kept as long as it sends a byte now and then. */
static void raw_413_then_trickle(void) {
    char buf[4096];
    int closed;
    int fd = raw_declared_413("", buf, sizeof buf, &closed);
    if (fd < 0) return;
    it_check(it_raw_status(buf) == 413, "declared body above the limit -> 413 at once (got %d)", it_raw_status(buf));
    double t0 = it_now(), cut = -1;
    while (it_now() - t0 < 10.0) {
        if (it_send(fd, "x", 1)) {
            cut = it_now() - t0;
            break;
        }
        usleep(200 * 1000);
    }
    it_check(cut >= 0 && cut < 6.0,
             "a client trickling the rest of the body after the 413 is cut off (after %.1f s; grace 2 s)", cut);
    close(fd);
}

/* Chunked bodies past the limit. A terminated one must get 413; an endless one must be refused
 * while it streams (CONTRACT: "refused as soon as known: Content-Length, or while streaming"). */
static void raw_413_chunked(void) {
    const char *req = "POST /colorize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
                      "Transfer-Encoding: chunked\r\n\r\n";
    static char chunk[65536 + 32];
    int hn = snprintf(chunk, 32, "%x\r\n", 65536);
    memset(chunk + hn, 0xab, 65536);
    memcpy(chunk + hn + 65536, "\r\n", 2);
    for (int endless = 0; endless < 2; endless++) {
        int fd = it_connect(g_main.port);
        if (!it_check(fd >= 0, "raw connect")) return;
        it_send(fd, req, strlen(req));
        char buf[4096] = "";
        int closed = 0, send_failed = 0;
        size_t sent = 0;
        int nchunks = endless ? 64 : 24; /* 4 MiB without an end, or 1.5 MiB and the last chunk */
        for (int i = 0; i < nchunks && !closed; i++) {
            if (it_send(fd, chunk, (size_t)hn + 65536 + 2)) {
                send_failed = 1;
                break;
            }
            sent += 65536;
            if (it_recv_all(fd, buf, sizeof buf, 0.005, &closed) > 0) break;
        }
        if (!endless && !buf[0] && !closed && !send_failed) it_send(fd, "0\r\n\r\n", 5);
        if (!buf[0]) it_recv_all(fd, buf, sizeof buf, 3.0, &closed);
        if (endless)
            it_check(
                it_raw_status(buf) == 413 && strstr(buf, "payload_too_large"),
                "endless chunked body -> 413 payload_too_large while it streams (%zu KiB sent; got %d%s)",
                sent / 1024, it_raw_status(buf),
                it_raw_status(buf) ? "" : ", connection closed without an answer");
        else
            it_check(
                it_raw_status(buf) == 413 && strstr(buf, "payload_too_large"),
                "chunked body of 1.5 MiB (> max_body_bytes), terminated -> 413 payload_too_large (got %d)",
                it_raw_status(buf));
        close(fd);
    }
}

void test_errors(void **state) {
    (void)state;
    it_test_begin("error table");
    size_t pn, jn, mn;
    uint8_t *png = it_make_image(64, 48, 1, 31, CZ_FMT_PNG, &pn);
    uint8_t *jpg = it_make_image(64, 48, 1, 32, CZ_FMT_JPEG, &jn);
    char ct[128];

    /* 400 missing_image */
    uint8_t *mp = it_multipart(png, pn, "file", 1, ct, &mn);
    err_case("POST", "/colorize", mp, mn, 1, ct, 400, "missing_image", "multipart without an image part",
             NULL);
    free(mp);
    err_case("POST", "/colorize", "", 0, 1, "image/jpeg", 400, "missing_image", "empty raw body", NULL);
    err_case("POST", "/colorize", NULL, 0, 0, NULL, 400, "missing_image", "POST without a body", NULL);

    /* 400 bad_multipart */
    mp = it_multipart(png, pn, "image", 0, ct, &mn);
    err_case("POST", "/colorize", mp, mn, 1, "multipart/form-data", 400, "bad_multipart",
             "multipart without a boundary", NULL);
    err_case("POST", "/colorize", mp, mn - 8, 1, ct, 400, "bad_multipart",
             "multipart without its closing boundary", NULL);
    err_case("POST", "/colorize", mp, mn / 2, 1, ct, 400, "bad_multipart",
             "multipart cut in the middle of the file", NULL);
    free(mp);

    /* 400 invalid_parameter */
    static const struct {
        const char *q, *name;
    } bad[] = {{"format=gif", "format"},   {"format=", "format"},      {"quality=0", "quality"},
               {"quality=101", "quality"}, {"quality=abc", "quality"}, {"quality=50x", "quality"},
               {"render=0", "render"},     {"render=128", "render"},   {"render=300", "render"},
               {"render=2048", "render"},  {"render=1280", "render"},  {"render=-256", "render"},
               {"render=abc", "render"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char path[128], what[128];
        snprintf(path, sizeof path, "/colorize?%s", bad[i].q);
        snprintf(what, sizeof what, "?%s", bad[i].q);
        err_case("POST", path, png, pn, 1, "image/png", 400, "invalid_parameter", what, bad[i].name);
    }

    /* 404 */
    err_case("GET", "/", NULL, 0, 0, NULL, 404, "not_found", "GET /", NULL);
    err_case("GET", "/nope", NULL, 0, 0, NULL, 404, "not_found", "GET /nope", NULL);
    err_case("POST", "/colorise", png, pn, 1, "image/png", 404, "not_found", "POST /colorise (typo)", NULL);
    err_case("GET", "/healthz/extra", NULL, 0, 0, NULL, 404, "not_found", "GET /healthz/extra", NULL);

    /* 405 + Allow */
    method_case("GET", "/colorize", "POST");
    method_case("PUT", "/colorize", "POST");
    method_case("DELETE", "/colorize", "POST");
    method_case("POST", "/healthz", "GET");
    method_case("POST", "/readyz", "GET");
    method_case("POST", "/metrics", "GET");
    method_case("PUT", "/model", "GET");
    method_case("DELETE", "/openapi.yaml", "GET");

    /* 413 */
    size_t big_n = MAIN_MAX_BODY + 1;
    uint8_t *big = malloc(big_n);
    memcpy(big, jpg, jn);
    memset(big + jn, 0, big_n - jn);
    err_case("POST", "/colorize", big, big_n, 1, "image/jpeg", 413, "payload_too_large",
             "raw body of max_body_bytes + 1", NULL);
    mp = it_multipart(big, big_n - 100, "image", 0, ct, &mn); /* > limit with the part headers */
    err_case("POST", "/colorize", mp, mn, 1, ct, 413, "payload_too_large",
             "multipart body above max_body_bytes", NULL);
    free(mp);
    free(big);
    raw_413_content_length();
    raw_413_declared_body();
    raw_413_then_trickle();
    raw_413_chunked();

    /* 415 */
    uint8_t rnd[4096];
    uint64_t s = 99;
    for (size_t i = 0; i < sizeof rnd; i++)
        rnd[i] = (uint8_t)tu_rand_u64(&s);
    rnd[0] = 'R';
    post_expect_verdict(rnd, sizeof rnd, "4 KiB of random bytes", CZ_ERR_UNSUPPORTED_FORMAT);
    static const char gif[] =
        "GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00,"
        "\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00;";
    post_expect_verdict(gif, sizeof gif - 1, "a GIF", CZ_ERR_UNSUPPORTED_FORMAT);
    const char *txt = "hello, this is not an image\n";
    mp = it_multipart(txt, strlen(txt), "image", 0, ct, &mn);
    err_case("POST", "/colorize", mp, mn, 1, ct, 415, "unsupported_media_type",
             "multipart image part holding text", NULL);
    free(mp);

    /* 422 */
    post_expect_verdict(jpg, jn * 6 / 10, "JPEG cut at 60%", CZ_ERR_TRUNCATED_IMAGE);
    post_expect_verdict(png, pn / 2, "PNG cut in half", CZ_ERR_TRUNCATED_IMAGE);
    uint8_t *c = malloc(jn > pn ? jn : pn);
    memcpy(c, png, pn);
    c[29] ^= 1; /* IHDR CRC */
    post_expect_verdict(c, pn, "PNG with a bad IHDR checksum", CZ_ERR_CORRUPT_IMAGE);
    memcpy(c, jpg, jn);
    for (size_t i = 2; i + 1 < jn; i++)
        if (c[i] == 0xff && c[i + 1] == 0xc4) {
            memset(c + i + 5, 0xff, 16); /* bogus Huffman table */
            break;
        }
    post_expect_verdict(c, jn, "JPEG with a bogus Huffman table", CZ_ERR_CORRUPT_IMAGE);
    memcpy(c, jpg, jn);
    for (size_t i = 2; i + 6 < jn; i++)
        if (c[i] == 0xff && (c[i + 1] == 0xc0 || c[i + 1] == 0xc1 || c[i + 1] == 0xc2)) {
            c[i + 5] = c[i + 6] = 0; /* SOF height 0 */
            break;
        }
    post_expect_verdict(c, jn, "JPEG whose frame header says height 0", CZ_ERR_EMPTY_IMAGE);
    free(c);
    uint8_t bomb[128];
    size_t bn = png_header_bomb(bomb, 100000, 100000);
    double t0 = it_now();
    post_expect_verdict(bomb, bn, "PNG header declaring 100000x100000", CZ_ERR_TOO_MANY_PIXELS);
    it_check(it_now() - t0 < 2.0, "too_many_pixels decided from the header (%.2f s)", it_now() - t0);
    uint8_t *over = it_make_image(1001, 1000, 1, 33, CZ_FMT_PNG, &bn);
    post_expect_verdict(over, bn, "real PNG of 1001x1000 > image.max_pixels 1e6", CZ_ERR_TOO_MANY_PIXELS);
    free(over);

    it_note("500 internal_error has no reliable trigger from outside; not exercised");
    free(png);
    free(jpg);
    IT_TEST_END();
}
