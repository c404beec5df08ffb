/* test_colorize.c: the whole job pipeline (prepare -> run -> finish) on small untrained
 * models in both colour modes: output size equals input size, output luminance equals input
 * luminance, batched jobs equal single jobs, bad batches and render sizes are refused. */
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
#include "colorize.h"
#include "safetensors.h"
#include "testutil.h"
#include "unet.h"

static char *write_weights(cz_color_mode mode, int depth) {
    cz_unet_arch a = cz_unet_arch_default(4, mode);
    a.depth = depth;
    cz_st_writer *w;
    assert_int_equal(cz_st_writer_create(&w), CZ_OK);
    assert_int_equal(cz_unet_init_weights(&a, 5, w), CZ_OK);
    char *path = strdup("/tmp/cz_colorize_XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(cz_st_writer_save(w, path), CZ_OK);
    cz_st_writer_destroy(w);
    return path;
}

static void make_image(cz_image *img, int w, int h, int ch, uint64_t seed) {
    assert_int_equal(cz_image_alloc(img, w, h, ch), CZ_OK);
    uint64_t s = seed;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int c = 0; c < ch; c++) /* smooth pattern plus noise */
                img->px[((size_t)y * w + x) * ch + c] =
                    (uint8_t)((x * 255 / w + y * 128 / h + c * 40 + (int)(tu_rand_u64(&s) % 16)) % 256);
}

static void check_mode(cz_color_mode mode) {
    char *path = write_weights(mode, 8);
    cz_backend *be;
    assert_int_equal(cz_backend_create("auto", NULL, &be), CZ_OK);
    cz_colorizer *cz;
    cz_colorizer_opts o = {.max_batch = 3, .precision = CZ_F32};
    assert_int_equal(cz_colorizer_create(be, path, &o, &cz), CZ_OK);
    assert_int_equal(cz_render_validate(cz, 300), CZ_ERR_INVALID_ARG);
    assert_int_equal(cz_render_validate(cz, 512), CZ_OK);

    cz_image src[3];
    make_image(&src[0], 301, 187, 1, 1);
    make_image(&src[1], 120, 260, 3, 2);
    make_image(&src[2], 64, 64, 1, 3);
    cz_cjob jobs[3];
    cz_cjob *ptrs[3];
    for (int i = 0; i < 3; i++) {
        assert_int_equal(cz_cjob_prepare(cz, &src[i], 256, &jobs[i]), CZ_OK);
        assert_int_equal(jobs[i].geom.net_w, 256);
        assert_int_equal(jobs[i].geom.net_h, 256);
        ptrs[i] = &jobs[i];
    }
    assert_int_equal(cz_colorizer_run(cz, ptrs, 3), CZ_OK);
    for (int i = 0; i < 3; i++) {
        cz_image out = {0};
        assert_int_equal(cz_cjob_finish(cz, &jobs[i], &out), CZ_OK);
        assert_int_equal(out.width, src[i].width);
        assert_int_equal(out.height, src[i].height);
        assert_int_equal(out.channels, 3);
        /* luminance promise: L of every output pixel equals the input's L */
        size_t np = (size_t)out.width * out.height;
        float *Lin = malloc(np * sizeof *Lin), *Lout = malloc(np * sizeof *Lout);
        assert_int_equal(cz_image_lightness(&src[i], Lin), CZ_OK);
        assert_int_equal(cz_image_lightness(&out, Lout), CZ_OK);
        double worst = 0, chroma = 0;
        for (size_t k = 0; k < np; k++) {
            double d = fabs((double)Lin[k] - Lout[k]);
            if (d > worst) worst = d;
            const uint8_t *p = out.px + 3 * k;
            chroma += abs(p[0] - p[1]) + abs(p[1] - p[2]);
        }
        printf("%s image %d (%dx%d): max |dL| = %.3f, mean channel spread %.2f\n", cz_color_mode_name(mode), i,
               out.width, out.height, worst, chroma / np);
        assert_true(worst <= 1.0);
        assert_true(chroma > 0); /* the model added some colour */
        /* single run gives the same pixels as the batched one */
        cz_cjob one;
        assert_int_equal(cz_cjob_prepare(cz, &src[i], 256, &one), CZ_OK);
        cz_cjob *p1 = &one;
        assert_int_equal(cz_colorizer_run(cz, &p1, 1), CZ_OK);
        cz_image out1 = {0};
        assert_int_equal(cz_cjob_finish(cz, &one, &out1), CZ_OK);
        assert_memory_equal(out1.px, out.px, np * 3);
        cz_image_free(&out1);
        cz_cjob_release(&one);
        free(Lin);
        free(Lout);
        cz_image_free(&out);
    }
    /* refused: batch above max_batch, mixed network sizes */
    cz_cjob big;
    cz_image wide;
    make_image(&wide, 600, 100, 1, 4);
    assert_int_equal(cz_cjob_prepare(cz, &wide, 512, &big), CZ_OK);
    assert_int_equal(big.geom.net_w, 512);
    assert_int_equal(big.geom.net_h, 256);
    cz_cjob *mixed[2] = {&jobs[0], &big};
    assert_int_equal(cz_colorizer_run(cz, mixed, 2), CZ_ERR_INVALID_ARG);
    cz_cjob *four[4] = {&jobs[0], &jobs[1], &jobs[2], &jobs[0]};
    assert_int_equal(cz_colorizer_run(cz, four, 4), CZ_ERR_INVALID_ARG);
    cz_cjob_release(&big);
    cz_image_free(&wide);
    for (int i = 0; i < 3; i++) {
        cz_cjob_release(&jobs[i]);
        cz_image_free(&src[i]);
    }
    cz_colorizer_destroy(cz);
    cz_backend_destroy(be);
    unlink(path);
    free(path);
}

static void test_lab_mode(void **state) {
    (void)state;
    check_mode(CZ_COLOR_LAB);
}

static void test_rgb_mode(void **state) {
    (void)state;
    check_mode(CZ_COLOR_RGB);
}

static void test_bad_weights_path(void **state) {
    (void)state;
    cz_backend *be;
    assert_int_equal(cz_backend_create("ref", NULL, &be), CZ_OK);
    cz_colorizer *cz = NULL;
    cz_colorizer_opts o = {.max_batch = 1, .precision = CZ_F32};
    assert_int_not_equal(cz_colorizer_create(be, "/nonexistent.safetensors", &o, &cz), CZ_OK);
    assert_null(cz);
    o.max_batch = 0;
    assert_int_equal(cz_colorizer_create(be, "/nonexistent.safetensors", &o, &cz), CZ_ERR_INVALID_ARG);
    cz_backend_destroy(be);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lab_mode),
        cmocka_unit_test(test_rgb_mode),
        cmocka_unit_test(test_bad_weights_path),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
