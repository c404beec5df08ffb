/* fuzz_body.c: libFuzzer driver for the daemon's request body parser (server/body.c:
 * multipart/form-data and raw bodies) and its query parameter parsers.
 *
 * Input layout: everything up to the first '\n' (at most 256 bytes) is the Content-Type
 * header value; the rest is the request body. So seeds are readable: a first line such as
 * "multipart/form-data; boundary=XyZ" followed by a multipart body, or "image/jpeg" followed
 * by raw bytes.
 * The body is copied into a buffer of exactly its size, so ASan catches any read past it.
 * Beyond "no crash, leak, UB or hang" it checks the contract of body.h and aborts when one
 * does not hold:
 *   - the result is one of the three srv_body_result values;
 *   - on success the image is a non-empty range inside the body (every byte readable), and
 *     for a Content-Type that is not multipart/form-data it is the whole body;
 *   - on failure the image is NULL/0 and the message is non-empty;
 *   - the parser is deterministic (a second run gives the same answer);
 *   - the query parameter parsers, fed the header line as a value, either accept a value in
 *     range or leave the output untouched with a message that names the parameter and holds
 *     printable ASCII only.
 *
 * Run through tests/fuzz/run.sh (target `body`; built with -fsanitize=fuzzer,address,undefined
 * from this file, server/body.c and core/). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "body.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("fuzz_body: invariant violated: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    abort();
}

static void check_msg(const char *msg, const char *must_contain) {
    if (!msg[0]) fail("empty error message");
    for (const char *p = msg; *p; p++)
        if (*p < 0x20 || *p >= 0x7f) fail("message holds a non-printable byte 0x%02x", (unsigned char)*p);
    if (must_contain && !strstr(msg, must_contain)) fail("message '%s' does not name '%s'", msg, must_contain);
}

static void fuzz_params(const char *v) {
    char msg[256];
    cz_image_format f = (cz_image_format)77;
    if (srv_param_format(v, &f, msg, sizeof msg) == 0) {
        if (f != CZ_FMT_JPEG && f != CZ_FMT_PNG) fail("format accepted '%s' as %d", v, (int)f);
    } else {
        if (f != (cz_image_format)77) fail("format changed its output on error");
        check_msg(msg, "format");
    }
    int q = -7;
    if (srv_param_quality(v, &q, msg, sizeof msg) == 0) {
        if (q < 1 || q > 100) fail("quality accepted %d", q);
    } else {
        if (q != -7) fail("quality changed its output on error");
        check_msg(msg, "quality");
    }
    int r = -7;
    if (srv_param_render(v, 1024, &r, msg, sizeof msg) == 0) {
        if (r < 256 || r > 1024 || r % 256) fail("render accepted %d", r);
    } else {
        if (r != -7) fail("render changed its output on error");
        check_msg(msg, "render");
    }
    (void)srv_request_id_valid(v);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char ct[257];
    size_t ct_len = 0;
    while (ct_len < size && ct_len < 256 && data[ct_len] != '\n') ct_len++;
    memcpy(ct, data, ct_len);
    ct[ct_len] = '\0'; /* an embedded NUL just shortens the header, as in C strings */
    size_t off = ct_len < size ? ct_len + 1 : size;
    size_t n = size - off;
    uint8_t *body = malloc(n ? n : 1);
    if (!body) return 0;
    memcpy(body, data + off, n);

    const uint8_t *img = (const uint8_t *)"sentinel";
    size_t img_len = 12345;
    char msg[256];
    memset(msg, 'Z', sizeof msg);
    srv_body_result r = srv_body_extract(ct, body, n, &img, &img_len, msg, sizeof msg);
    if (r != SRV_BODY_OK && r != SRV_BODY_MISSING_IMAGE && r != SRV_BODY_BAD_MULTIPART)
        fail("unexpected result %d", (int)r);
    if (r == SRV_BODY_OK) {
        if (!img || img_len == 0) fail("success with an empty image");
        if (img < body || img + img_len > body + n) fail("image range outside the body");
        volatile unsigned sum = 0;
        for (size_t i = 0; i < img_len; i++) sum += img[i];
        (void)sum;
        int multipart = strncasecmp(ct + strspn(ct, " \t"), "multipart/form-data", 19) == 0;
        if (!multipart && (img != body || img_len != n)) fail("raw body not returned whole");
    } else {
        if (img || img_len) fail("failure left an image pointer");
        check_msg(msg, NULL);
    }

    const uint8_t *img2 = NULL;
    size_t len2 = 0;
    char msg2[256];
    srv_body_result r2 = srv_body_extract(ct, body, n, &img2, &len2, msg2, sizeof msg2);
    if (r2 != r || img2 != img || len2 != img_len) fail("second run disagrees");

    fuzz_params(ct);
    free(body);
    return 0;
}
