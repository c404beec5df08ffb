/* test_core.c: status table, error detail, logging format, file helpers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "fileio.h"
#include "log.h"
#include "status.h"
#include "testutil.h"

static void test_status_table(void **state) {
    (void)state;
    for (int s = 0; s >= CZ_STATUS_MIN_; s--) {
        assert_non_null(cz_strerror((cz_status)s));
        assert_string_not_equal(cz_strerror((cz_status)s), "unknown error");
        int http = cz_status_http((cz_status)s);
        assert_true(http >= 200 && http < 600);
    }
    assert_int_equal(cz_status_http(CZ_ERR_TOO_MANY_PIXELS), 422);
    assert_int_equal(cz_status_http(CZ_ERR_UNSUPPORTED_FORMAT), 415);
    assert_int_equal(cz_status_http(CZ_ERR_TOO_LARGE), 413);
    assert_string_equal(cz_status_code(CZ_ERR_TOO_MANY_PIXELS), "too_many_pixels");
}

static void test_error_detail(void **state) {
    (void)state;
    cz_status s = cz_error_set(CZ_ERR_BAD_WEIGHTS, "%s: bad %d", "down.0.weight", 3);
    assert_int_equal(s, CZ_ERR_BAD_WEIGHTS);
    assert_string_equal(cz_error_detail(), "down.0.weight: bad 3");
    cz_error_clear();
    assert_string_equal(cz_error_detail(), "");
}

static void test_log_json_line(void **state) {
    (void)state;
    char path[] = "/tmp/cz_log_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    cz_log_set_fd(fd);
    cz_log_set_request_id("req-1");
    CZ_LOGI("test", "quote \" backslash \\ newline \n done");
    cz_log_set_request_id(NULL);
    CZ_LOGD("test", "not shown at info level");
    cz_log_set_fd(2);
    close(fd);
    uint8_t *buf;
    size_t len;
    assert_int_equal(cz_file_read(path, 0, &buf, &len), CZ_OK);
    unlink(path);
    const char *line = (const char *)buf;
    assert_non_null(strstr(line, "\"level\":\"info\""));
    assert_non_null(strstr(line, "\"module\":\"test\""));
    assert_non_null(strstr(line, "quote \\\" backslash \\\\ newline \\n done"));
    assert_non_null(strstr(line, "\"request_id\":\"req-1\""));
    assert_null(strstr(line, "not shown"));
    assert_int_equal(line[len - 1], '\n');
    assert_int_equal(cz_log_parse_level("warn"), CZ_LOG_WARN);
    assert_int_equal(cz_log_parse_level("loud"), -1);
    free(buf);
}

static void test_file_atomic(void **state) {
    (void)state;
    char dir[] = "/tmp/cz_io_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *p = tu_path(dir, "f.bin");
    assert_int_equal(cz_file_write_atomic(p, "hello", 5), CZ_OK);
    uint8_t *buf;
    size_t len;
    assert_int_equal(cz_file_read(p, 0, &buf, &len), CZ_OK);
    assert_int_equal(len, 5);
    assert_memory_equal(buf, "hello", 5);
    free(buf);
    assert_int_equal(cz_file_read(p, 4, &buf, &len), CZ_ERR_TOO_LARGE);
    unlink(p);
    assert_int_equal(cz_file_read(p, 0, &buf, &len), CZ_ERR_NOT_FOUND);
    free(p);
    rmdir(dir);
}

static void test_half_conversions(void **state) {
    (void)state;
    const float vals[] = {0.f, 1.f, -2.5f, 3.14159f, 1e-3f, 65504.f, 1e-6f};
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
        float v = vals[i];
        assert_float_equal(cz_bf16_to_f32(cz_f32_to_bf16(v)), v, fabsf(v) * 1e-2f + 1e-30f);
        assert_float_equal(cz_f16_to_f32(cz_f32_to_f16(v)), v, fabsf(v) * 1e-3f + 6e-8f);
    }
    assert_int_equal(cz_f32_to_bf16(1.0f), 0x3f80);
    assert_int_equal(cz_f32_to_f16(1.0f), 0x3c00);
    assert_true(cz_f16_to_f32(cz_f32_to_f16(1e6f)) > 65504.f); /* overflow -> inf */
    assert_int_equal(cz_dtype_parse("bf16"), CZ_BF16);
    assert_int_equal(cz_dtype_parse("int8"), -1);
}

static void test_backend_registry(void **state) {
    (void)state;
    cz_backend *be = NULL;
    assert_int_equal(cz_backend_create("nope", NULL, &be), CZ_ERR_INVALID_ARG);
    assert_null(be);
    assert_non_null(strstr(cz_error_detail(), "nope"));
    const char *const *names = cz_backend_names();
    int have_ref = 0;
    for (int i = 0; names[i]; i++) have_ref |= !strcmp(names[i], "ref");
    assert_true(have_ref);
    cz_backend_destroy(NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status_table),  cmocka_unit_test(test_error_detail),
        cmocka_unit_test(test_log_json_line), cmocka_unit_test(test_file_atomic),
        cmocka_unit_test(test_half_conversions), cmocka_unit_test(test_backend_registry),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
