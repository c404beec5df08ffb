/* test_unet_golden.c: the whole generator against an independent PyTorch implementation
 * (tests/golden/torch_unet.py, canonical pix2pix UnetGenerator, eval mode, float64). Each
 * fixture file holds the weights, `fixture.input` and `fixture.expected`; every available
 * backend must reproduce it: ||ours - torch|| / ||torch|| < 1e-4 in fp32, < 2e-2 in bf16.
 * Regenerate fixtures with tests/golden/README.md. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "safetensors.h"
#include "testutil.h"
#include "unet.h"

static void run_fixture(const char *rel) {
    char *path = tu_path(tu_source_dir(), rel);
    cz_safetensors *st = NULL;
    if (cz_st_open(path, &st) != CZ_OK) fail_msg("%s: %s", path, cz_error_detail());
    const cz_st_tensor *ti = cz_st_find(st, "fixture.input"), *te = cz_st_find(st, "fixture.expected");
    assert_non_null(ti);
    assert_non_null(te);
    assert_int_equal(ti->ndim, 4);
    int n = (int)ti->shape[0], h = (int)ti->shape[2], w = (int)ti->shape[3];
    size_t in_n = cz_st_numel(ti), out_n = cz_st_numel(te);
    float *in = malloc(in_n * sizeof *in), *want = malloc(out_n * sizeof *want), *got = malloc(out_n * sizeof *got);
    assert_int_equal(cz_st_to_f32(ti, in, in_n), CZ_OK);
    assert_int_equal(cz_st_to_f32(te, want, out_n), CZ_OK);
    const char *const *names = cz_backend_names();
    for (int bi = 0; names[bi]; bi++) {
        cz_backend *be;
        if (cz_backend_create(names[bi], NULL, &be) != CZ_OK) {
            printf("skipped: %s on %s: %s\n", rel, names[bi], cz_error_detail());
            continue;
        }
        for (int dt = CZ_F32; dt <= CZ_BF16; dt++) {
            if (!be->ops->supports(be, (cz_dtype)dt)) continue;
            cz_unet *u;
            if (cz_unet_create(be, st, (cz_dtype)dt, &u) != CZ_OK) fail_msg("%s: %s", rel, cz_error_detail());
            assert_int_equal(cz_unet_plan(u, n, h, w), CZ_OK);
            assert_int_equal(cz_unet_forward(u, n, h, w, in, got), CZ_OK);
            double err = tu_rel_err(got, want, out_n);
            double tol = dt == CZ_F32 ? 1e-4 : 2e-2;
            printf("%-40s %-5s %-5s rel err %.3e (tolerance %.0e)\n", rel, names[bi], cz_dtype_name((cz_dtype)dt), err,
                   tol);
            if (!(err < tol)) fail_msg("%s on %s %s: relative error %.3e >= %.0e", rel, names[bi],
                                       cz_dtype_name((cz_dtype)dt), err, tol);
            cz_unet_destroy(u);
        }
        cz_backend_destroy(be);
    }
    free(in);
    free(want);
    free(got);
    cz_st_close(st);
    free(path);
}

static void test_lab_ngf3_depth8(void **state) {
    (void)state;
    run_fixture("tests/golden/data/unet_lab_ngf3_d8.safetensors");
}

static void test_rgb_ngf4_depth6(void **state) {
    (void)state;
    run_fixture("tests/golden/data/unet_rgb_ngf4_d6.safetensors");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lab_ngf3_depth8),
        cmocka_unit_test(test_rgb_ngf4_depth6),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
