/* test_body.c: cmocka unit tests for server/body.c (multipart/raw body extraction, query
 * parameter parsing, request id validation). Registered as CTest `test_body` (label unit)
 * by server/CMakeLists.txt; it lives here rather than in tests/unit/ because those tests link
 * only cz_core. Single-threaded, no files needed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "body.h"

/* Runs the extractor on a NUL-terminated text body. */
static srv_body_result run(const char *ct, const char *body, const uint8_t **img, size_t *len, char *msg) {
    return srv_body_extract(ct, (const uint8_t *)body, strlen(body), img, len, msg, 256);
}

static void expect_image(const char *ct, const char *body, const char *want) {
    const uint8_t *img = NULL;
    size_t len = 0;
    char msg[256];
    srv_body_result r = run(ct, body, &img, &len, msg);
    if (r != SRV_BODY_OK) fail_msg("expected OK, got %d (%s) for body:\n%s", (int)r, msg, body);
    assert_int_equal(len, strlen(want));
    assert_memory_equal(img, want, len);
}

static void expect_result(const char *ct, const char *body, srv_body_result want) {
    const uint8_t *img = (const uint8_t *)"x";
    size_t len = 7;
    char msg[256];
    srv_body_result r = run(ct, body, &img, &len, msg);
    if (r != want) fail_msg("expected %d, got %d (%s) for body:\n%s", (int)want, (int)r, msg, body);
    assert_true(msg[0] != '\0');
    assert_null(img);
    assert_int_equal(len, 0);
}

static void test_raw(void **state) {
    (void)state;
    expect_image("image/jpeg", "\xff\xd8\xff rest", "\xff\xd8\xff rest");
    expect_image(NULL, "abc", "abc");
    expect_image("application/octet-stream", "abc", "abc");
    expect_image("text/plain; boundary=x", "--x\r\n", "--x\r\n"); /* not form-data: raw */
    expect_result("image/png", "", SRV_BODY_MISSING_IMAGE);
    expect_result(NULL, "", SRV_BODY_MISSING_IMAGE);
}

static void test_basic_multipart(void **state) {
    (void)state;
    const char *ct = "multipart/form-data; boundary=XyZ";
    expect_image(ct,
                 "--XyZ\r\n"
                 "Content-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n"
                 "Content-Type: image/jpeg\r\n"
                 "\r\n"
                 "JPEGDATA\r\n"
                 "--XyZ--\r\n",
                 "JPEGDATA");
    /* other fields before and after, preamble and epilogue */
    expect_image(ct,
                 "preamble text\r\n"
                 "--XyZ\r\n"
                 "Content-Disposition: form-data; name=\"note\"\r\n\r\n"
                 "hello\r\n"
                 "--XyZ\r\n"
                 "content-disposition: FORM-DATA; NAME=image\r\n\r\n"
                 "\r\nbytes with CRLF inside\r\n\r\n"
                 "--XyZ\r\n"
                 "Content-Disposition: form-data; name=\"image\"\r\n\r\n"
                 "second image part ignored\r\n"
                 "--XyZ--\r\n"
                 "epilogue",
                 "\r\nbytes with CRLF inside\r\n");
}

static void test_boundary_forms(void **state) {
    (void)state;
    const char *body = "--a b'c\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\nIMG\r\n--a b'c--";
    expect_image("multipart/form-data; boundary=\"a b'c\"", body, "IMG");
    expect_image("Multipart/Form-Data ;charset=utf-8; BOUNDARY=\"a b'c\" ", body, "IMG");
    /* quoted-pair inside a quoted boundary */
    expect_image("multipart/form-data; boundary=\"q\\\"x\"",
                 "--q\"x\r\nContent-Disposition: form-data; name=image\r\n\r\nZ\r\n--q\"x--\r\n", "Z");
    expect_result("multipart/form-data", "--x--", SRV_BODY_BAD_MULTIPART);
    expect_result("multipart/form-data; charset=utf-8", "--x--", SRV_BODY_BAD_MULTIPART);
    expect_result("multipart/form-data; boundary=", "--x--", SRV_BODY_BAD_MULTIPART);
    expect_result("multipart/form-data; boundary=\"\"", "--x--", SRV_BODY_BAD_MULTIPART);
    expect_result("multipart/form-data; boundary=\"unterminated", "--x--", SRV_BODY_BAD_MULTIPART);
    expect_result("multipart/form-data; =x", "--x--", SRV_BODY_BAD_MULTIPART);
    char ct[200];
    snprintf(ct, sizeof ct, "multipart/form-data; boundary=%071d", 0); /* 71 chars: too long */
    expect_result(ct, "--x--", SRV_BODY_BAD_MULTIPART);
}

static void test_lf_only_and_padding(void **state) {
    (void)state;
    const char *ct = "multipart/form-data; boundary=b";
    /* bare LF line endings, transport padding after the boundary */
    expect_image(ct, "--b  \t\nContent-Disposition: form-data; name=\"image\"\n\nPIX\n--b--\n", "PIX");
    /* "--b" inside content that is not followed by a line break is content */
    expect_image(ct, "--b\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\nA\r\n--bX\r\nB\r\n--b--",
                 "A\r\n--bX\r\nB");
    /* the image's own trailing CR and LF bytes are kept: only the delimiter's CRLF goes */
    expect_image(ct, "--b\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\nA\r\n\r\n--b--", "A\r\n");
}

static void test_missing_and_malformed(void **state) {
    (void)state;
    const char *ct = "multipart/form-data; boundary=b";
    expect_result(ct, "", SRV_BODY_MISSING_IMAGE);
    expect_result(ct, "--b--\r\n", SRV_BODY_MISSING_IMAGE);
    expect_result(ct, "--b\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nX\r\n--b--", SRV_BODY_MISSING_IMAGE);
    expect_result(ct, "--b\r\nContent-Disposition: form-data; name=\"images\"\r\n\r\nX\r\n--b--", SRV_BODY_MISSING_IMAGE);
    expect_result(ct, "--b\r\nContent-Disposition: attachment; name=\"image\"\r\n\r\nX\r\n--b--", SRV_BODY_MISSING_IMAGE);
    /* an empty image part */
    expect_result(ct, "--b\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\n\r\n--b--", SRV_BODY_MISSING_IMAGE);
    /* no boundary anywhere */
    expect_result(ct, "just some bytes", SRV_BODY_BAD_MULTIPART);
    /* unterminated: no close delimiter */
    expect_result(ct, "--b\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\nX\r\n", SRV_BODY_BAD_MULTIPART);
    expect_result(ct, "--b\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\nX\r\n--b\r\n", SRV_BODY_BAD_MULTIPART);
    /* headers without the blank line */
    expect_result(ct, "--b\r\nContent-Disposition: form-data; name=\"image\"\r\n", SRV_BODY_BAD_MULTIPART);
    expect_result(ct, "--b\r\nContent-Disposition: form-data; name=\"image\"", SRV_BODY_BAD_MULTIPART);
    /* header line without a colon */
    expect_result(ct, "--b\r\nnot a header\r\n\r\nX\r\n--b--", SRV_BODY_BAD_MULTIPART);
    /* broken disposition parameters */
    expect_result(ct, "--b\r\nContent-Disposition: form-data; name=\"image\r\n\r\nX\r\n--b--", SRV_BODY_BAD_MULTIPART);
    /* delimiter at the end with nothing after it */
    expect_result(ct, "--b", SRV_BODY_BAD_MULTIPART);
}

static void test_binary_exact(void **state) {
    (void)state;
    /* every byte value in the part, including NUL, CR, LF and '-' */
    uint8_t payload[512];
    for (int i = 0; i < 512; i++) payload[i] = (uint8_t)(i * 7 + (i >> 8));
    const char *head = "--0123abc\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.bin\"\r\n\r\n";
    const char *tail = "\r\n--0123abc--\r\n";
    size_t n = strlen(head) + sizeof payload + strlen(tail);
    uint8_t *body = malloc(n);
    assert_non_null(body);
    memcpy(body, head, strlen(head));
    memcpy(body + strlen(head), payload, sizeof payload);
    memcpy(body + strlen(head) + sizeof payload, tail, strlen(tail));
    const uint8_t *img = NULL;
    size_t len = 0;
    char msg[256];
    assert_int_equal(srv_body_extract("multipart/form-data; boundary=0123abc", body, n, &img, &len, msg, sizeof msg),
                     SRV_BODY_OK);
    assert_int_equal(len, sizeof payload);
    assert_memory_equal(img, payload, sizeof payload);
    /* every truncation that cuts into the close delimiter or before is refused, without
     * reading past the end (the final CRLF is epilogue: cutting it is harmless) */
    for (size_t cut = 0; cut < n - 2; cut++) {
        uint8_t *copy = malloc(cut ? cut : 1);
        assert_non_null(copy);
        memcpy(copy, body, cut);
        srv_body_result r = srv_body_extract("multipart/form-data; boundary=0123abc", copy, cut, &img, &len, msg,
                                             sizeof msg);
        assert_int_not_equal(r, SRV_BODY_OK);
        free(copy);
    }
    free(body);
}

static void test_many_parts(void **state) {
    (void)state;
    size_t cap = 64 * 1024, n = 0;
    char *body = malloc(cap);
    assert_non_null(body);
    for (int i = 0; i < SRV_MULTIPART_MAX_PARTS + 5; i++)
        n += (size_t)snprintf(body + n, cap - n, "--b\r\nContent-Disposition: form-data; name=\"f%d\"\r\n\r\nv\r\n", i);
    n += (size_t)snprintf(body + n, cap - n, "--b--\r\n");
    const uint8_t *img;
    size_t len;
    char msg[256];
    assert_int_equal(srv_body_extract("multipart/form-data; boundary=b", (const uint8_t *)body, n, &img, &len, msg,
                                      sizeof msg),
                     SRV_BODY_BAD_MULTIPART);
    free(body);
}

static void test_params(void **state) {
    (void)state;
    char msg[256];
    cz_image_format f = CZ_FMT_UNKNOWN;
    assert_int_equal(srv_param_format(NULL, &f, msg, sizeof msg), 0);
    assert_int_equal(f, CZ_FMT_UNKNOWN);
    assert_int_equal(srv_param_format("png", &f, msg, sizeof msg), 0);
    assert_int_equal(f, CZ_FMT_PNG);
    assert_int_equal(srv_param_format("jpeg", &f, msg, sizeof msg), 0);
    assert_int_equal(f, CZ_FMT_JPEG);
    assert_int_equal(srv_param_format("gif", &f, msg, sizeof msg), -1);
    assert_int_equal(srv_param_format("jpg", &f, msg, sizeof msg), -1);
    assert_int_equal(srv_param_format("PNG", &f, msg, sizeof msg), -1);
    assert_non_null(strstr(msg, "format"));
    assert_int_equal(srv_param_format("", &f, msg, sizeof msg), -1);

    int q = 90;
    assert_int_equal(srv_param_quality(NULL, &q, msg, sizeof msg), 0);
    assert_int_equal(q, 90);
    assert_int_equal(srv_param_quality("1", &q, msg, sizeof msg), 0);
    assert_int_equal(q, 1);
    assert_int_equal(srv_param_quality("100", &q, msg, sizeof msg), 0);
    assert_int_equal(q, 100);
    const char *badq[] = {"0", "101", "", "-5", "+5", "5x", " 5", "1000", "99999999999999999999", "\xff"};
    for (size_t i = 0; i < sizeof badq / sizeof badq[0]; i++) {
        msg[0] = '\0';
        assert_int_equal(srv_param_quality(badq[i], &q, msg, sizeof msg), -1);
        assert_non_null(strstr(msg, "quality"));
    }
    assert_int_equal(q, 100);

    int r = 256;
    assert_int_equal(srv_param_render("512", 1024, &r, msg, sizeof msg), 0);
    assert_int_equal(r, 512);
    assert_int_equal(srv_param_render("1024", 1024, &r, msg, sizeof msg), 0);
    const char *badr[] = {"0", "128", "300", "1280", "", "abc", "2048", "-256"};
    for (size_t i = 0; i < sizeof badr / sizeof badr[0]; i++) {
        assert_int_equal(srv_param_render(badr[i], 1024, &r, msg, sizeof msg), -1);
        assert_non_null(strstr(msg, "render"));
    }
    /* the message never carries raw non-printable bytes */
    assert_int_equal(srv_param_format("\x01\xc3\x28", &f, msg, sizeof msg), -1);
    for (const char *p = msg; *p; p++) assert_true(*p >= 0x20 && *p < 0x7f);
}

static void test_request_id(void **state) {
    (void)state;
    assert_true(srv_request_id_valid("abc-DEF_1.2"));
    assert_true(srv_request_id_valid("a"));
    char id[140];
    memset(id, 'x', 128);
    id[128] = '\0';
    assert_true(srv_request_id_valid(id));
    id[128] = 'x';
    id[129] = '\0';
    assert_false(srv_request_id_valid(id));
    assert_false(srv_request_id_valid(""));
    assert_false(srv_request_id_valid(NULL));
    assert_false(srv_request_id_valid("has space"));
    assert_false(srv_request_id_valid("semi;colon"));
    assert_false(srv_request_id_valid("quote\""));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_raw),
        cmocka_unit_test(test_basic_multipart),
        cmocka_unit_test(test_boundary_forms),
        cmocka_unit_test(test_lf_only_and_padding),
        cmocka_unit_test(test_missing_and_malformed),
        cmocka_unit_test(test_binary_exact),
        cmocka_unit_test(test_many_parts),
        cmocka_unit_test(test_params),
        cmocka_unit_test(test_request_id),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
