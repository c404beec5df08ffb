/* test_config.c: defaults in range, JSON/env/flag layering, every error names its key,
 * server.max_wait_us resolved by backend, server.http_threads resolved from the CPU count,
 * server.plan_renders. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"

static void test_defaults_valid(void **state) {
    (void)state;
    cz_config c;
    cz_config_defaults(&c);
    assert_int_equal(cz_config_validate(&c), CZ_OK);
    assert_int_equal(c.max_pixels, 40000000);
    assert_int_equal(c.render, 256);
    assert_string_equal(c.backend, "auto");
    assert_int_equal(c.train_cache_mb, 1024);
    /* the JSON dump of the defaults loads back to the same struct */
    char *j = cz_config_to_json(&c);
    cz_config d;
    cz_config_defaults(&d);
    assert_int_equal(cz_config_load_json(&d, j, "dump"), CZ_OK);
    assert_memory_equal(&c, &d, sizeof c);
    free(j);
}

static void test_layering(void **state) {
    (void)state;
    cz_config c;
    cz_config_defaults(&c);
    assert_int_equal(cz_config_load_json(&c, "{\"image\": {\"max_pixels\": 1000, \"render\": 512},"
                                             " \"model\": {\"backend\": \"ref\"}}", "t"),
                     CZ_OK);
    assert_int_equal(c.max_pixels, 1000);
    char *env[] = {"PATH=/bin", "COLORIZE_IMAGE_MAX_PIXELS=2000", "COLORIZE_CONFIG=/x", NULL};
    assert_int_equal(cz_config_load_env(&c, env), CZ_OK);
    assert_int_equal(c.max_pixels, 2000);
    assert_int_equal(c.render, 512);
    assert_int_equal(cz_config_set(&c, "image.max_pixels", "3000"), CZ_OK);
    assert_int_equal(c.max_pixels, 3000);
    assert_string_equal(c.backend, "ref");
}

static void expect_error(const char *json, const char *needle) {
    cz_config c;
    cz_config_defaults(&c);
    assert_int_equal(cz_config_load_json(&c, json, "cfg.json"), CZ_ERR_CONFIG);
    if (!strstr(cz_error_detail(), needle)) fail_msg("detail '%s' lacks '%s'", cz_error_detail(), needle);
}

static void test_errors(void **state) {
    (void)state;
    expect_error("{\"image\": {\"max_pixels\": 0}}", "image.max_pixels");
    expect_error("{\"image\": {\"max_pixels\": 0}}", "out of range");
    expect_error("{\"image\": {\"max_pixel\": 5}}", "image.max_pixel");
    expect_error("{\"image\": {\"render\": \"big\"}}", "image.render must be an integer");
    expect_error("{\"model\": {\"backend\": 3}}", "model.backend must be a string");
    expect_error("{\"image\": {\"render\": 256, \"render\": 512}}", "cfg.json");
    expect_error("[1,2]", "top level");
    expect_error("{\"train\": {\"cache_mb\": -1}}", "train.cache_mb");
    expect_error("{\"image\": ", "cfg.json:1");
    cz_config c;
    cz_config_defaults(&c);
    char *env[] = {"COLORIZE_IMAGE_RENDER=abc", NULL};
    assert_int_equal(cz_config_load_env(&c, env), CZ_ERR_CONFIG);
    assert_non_null(strstr(cz_error_detail(), "COLORIZE_IMAGE_RENDER"));
    char *env2[] = {"COLORIZE_NO_SUCH=1", NULL};
    assert_int_equal(cz_config_load_env(&c, env2), CZ_ERR_CONFIG);
    /* the cuda backend's own switches are left to it; a near miss is still refused */
    char *env3[] = {"COLORIZE_CUDA_DEVICE=1", "COLORIZE_CUDA_TF32=1", "COLORIZE_CUDNN_MAX_ELEMS=4096",
                    "COLORIZE_IMAGE_RENDER=512", NULL};
    assert_int_equal(cz_config_load_env(&c, env3), CZ_OK);
    assert_int_equal(c.render, 512);
    char *env4[] = {"COLORIZE_CUDAX_DEVICE=1", NULL};
    assert_int_equal(cz_config_load_env(&c, env4), CZ_ERR_CONFIG);
    assert_int_equal(cz_config_set(&c, "model.backend", "tpu"), CZ_OK);
    assert_int_equal(cz_config_validate(&c), CZ_ERR_CONFIG);
    assert_non_null(strstr(cz_error_detail(), "model.backend"));
    assert_int_equal(cz_config_load_file(&c, "/nonexistent/colorize.json"), CZ_ERR_CONFIG);
}

static void test_max_wait(void **state) {
    (void)state;
    cz_config c;
    cz_config_defaults(&c);
    /* default -1: by backend */
    assert_int_equal(c.max_wait_us, -1);
    assert_int_equal(cz_config_max_wait_us(&c, 1), 200);
    assert_int_equal(cz_config_max_wait_us(&c, 0), 2000);
    /* a value given is taken as it is, 0 included */
    assert_int_equal(cz_config_set(&c, "server.max_wait_us", "0"), CZ_OK);
    assert_int_equal(cz_config_max_wait_us(&c, 1), 0);
    assert_int_equal(cz_config_max_wait_us(&c, 0), 0);
    assert_int_equal(cz_config_set(&c, "server.max_wait_us", "5000"), CZ_OK);
    assert_int_equal(cz_config_max_wait_us(&c, 1), 5000);
    assert_int_equal(cz_config_set(&c, "server.max_wait_us", "-2"), CZ_ERR_CONFIG);
}

static void test_http_threads(void **state) {
    (void)state;
    cz_config c;
    cz_config_defaults(&c);
    /* default 0: one per online CPU, 4..64 */
    assert_int_equal(c.http_threads, 0);
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    int want = cpus < 4 ? 4 : cpus > 64 ? 64 : (int)cpus;
    assert_int_equal(cz_config_http_threads(&c), want);
    assert_true(cz_config_http_threads(&c) >= 4 && cz_config_http_threads(&c) <= 64);
    /* a value given is taken as it is */
    assert_int_equal(cz_config_set(&c, "server.http_threads", "1"), CZ_OK);
    assert_int_equal(cz_config_http_threads(&c), 1);
    assert_int_equal(cz_config_set(&c, "server.http_threads", "200"), CZ_OK);
    assert_int_equal(cz_config_http_threads(&c), 200);
    assert_int_equal(cz_config_set(&c, "server.http_threads", "-1"), CZ_ERR_CONFIG);
    assert_int_equal(cz_config_set(&c, "server.http_threads", "257"), CZ_ERR_CONFIG);
}

static void test_plan_renders(void **state) {
    (void)state;
    cz_config c;
    cz_config_defaults(&c);
    int r[CZ_CFG_MAX_PLAN_RENDERS], trunc;
    /* default auto: every other render a request may ask for on a GPU, none on a CPU */
    assert_int_equal(cz_config_plan_renders(&c, 0, 256, r, CZ_CFG_MAX_PLAN_RENDERS, &trunc), 0);
    assert_int_equal(cz_config_plan_renders(&c, 1, 256, r, CZ_CFG_MAX_PLAN_RENDERS, &trunc), 3);
    assert_int_equal(trunc, 0);
    assert_int_equal(r[0], 512);
    assert_int_equal(r[2], 1024);
    assert_int_equal(cz_config_set(&c, "server.max_render", "4096"), CZ_OK);
    assert_int_equal(cz_config_plan_renders(&c, 1, 256, r, CZ_CFG_MAX_PLAN_RENDERS, &trunc), 6);
    assert_int_equal(trunc, 1);
    assert_int_equal(r[5], 1792);
    /* a deeper model (renders multiples of 512) gets only its own renders */
    assert_int_equal(cz_config_plan_renders(&c, 1, 512, r, CZ_CFG_MAX_PLAN_RENDERS, &trunc), 6);
    assert_int_equal(r[0], 512);
    assert_int_equal(r[1], 1024);
    assert_int_equal(r[5], 3072);
    assert_int_equal(cz_config_set(&c, "server.max_render", "1024"), CZ_OK);
    /* a list is taken as written, GPU or not; empty: none */
    assert_int_equal(cz_config_set(&c, "server.plan_renders", "512, 1024,"), CZ_OK);
    assert_int_equal(cz_config_validate(&c), CZ_OK);
    assert_int_equal(cz_config_plan_renders(&c, 0, 256, r, CZ_CFG_MAX_PLAN_RENDERS, &trunc), 2);
    assert_int_equal(r[0], 512);
    assert_int_equal(r[1], 1024);
    assert_int_equal(cz_config_set(&c, "server.plan_renders", ""), CZ_OK);
    assert_int_equal(cz_config_validate(&c), CZ_OK);
    assert_int_equal(cz_config_plan_renders(&c, 1, 256, r, CZ_CFG_MAX_PLAN_RENDERS, &trunc), 0);
    const char *bad[] = {"big", "512;768", "2048" /* above server.max_render */, "16", "512,,768",
                         "256,256,256,256,256,256,256" /* seven */};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(cz_config_set(&c, "server.plan_renders", bad[i]), CZ_OK);
        assert_int_equal(cz_config_validate(&c), CZ_ERR_CONFIG);
        assert_non_null(strstr(cz_error_detail(), "server.plan_renders"));
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_max_wait), cmocka_unit_test(test_http_threads), cmocka_unit_test(test_plan_renders),
        cmocka_unit_test(test_defaults_valid),
        cmocka_unit_test(test_layering),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
