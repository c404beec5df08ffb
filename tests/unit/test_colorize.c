/* test_colorize.c: the whole job pipeline (prepare -> run -> finish) on small untrained
 * models in both colour modes: output size equals input size, output luminance equals input
 * luminance, batched jobs equal single jobs, bad batches and render sizes are refused; and, on
 * a backend that finishes on the device (merge_lab: cuda, and the emulator in
 * tests/gpu/emu_check.sh), jobs finished on the device give the same bytes as on the host, a
 * batch with a job outside the pool (area scaling, or a full pool) is finished on the host,
 * and every pool block comes back. */
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
#include "host_pool.h"
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

/* A colorizer of fresh depth-8 weights on the `auto` backend; the caller frees all three. */
static cz_colorizer *make_colorizer(cz_color_mode mode, int max_batch, cz_backend **be, char **path) {
    *path = write_weights(mode, 8);
    assert_int_equal(cz_backend_create("auto", NULL, be), CZ_OK);
    cz_colorizer *cz;
    cz_colorizer_opts o = {.max_batch = max_batch, .precision = CZ_F32};
    assert_int_equal(cz_colorizer_create(*be, *path, &o, &cz), CZ_OK);
    return cz;
}

static void check_mode(cz_color_mode mode) {
    char *path;
    cz_backend *be;
    cz_colorizer *cz = make_colorizer(mode, 3, &be, &path);
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

/* The device finish against the host finish, byte for byte, in fp32 and (where the backend has
 * it) bf16. */
/* The shapes a render produces, in the documented order, and the warm-up plan over them: each
 * photo's network shape is among its render's shapes, and the steps plan every shape once. */
static void test_render_shapes(void **state) {
    (void)state;
    char *path;
    cz_backend *be;
    cz_colorizer *cz = make_colorizer(CZ_COLOR_LAB, 5, &be, &path);
    int w[16], h[16];
    assert_int_equal(cz_render_shapes(cz, 1024, w, h, 16), 7);
    const int ew[7] = {1024, 1024, 768, 1024, 512, 1024, 256}, eh[7] = {1024, 768, 1024, 512, 1024, 256, 1024};
    for (int i = 0; i < 7; i++) {
        assert_int_equal(w[i], ew[i]);
        assert_int_equal(h[i], eh[i]);
    }
    assert_int_equal(cz_render_shapes(cz, 1024, w, h, 2), 7); /* counts past cap, writes 2 */
    assert_int_equal(cz_render_shapes(cz, 300, w, h, 16), 0);
    assert_int_equal(cz_render_shapes(cz, 256, w, h, 16), 1);
    /* photos of many aspect ratios at 1024 land on one of the seven */
    const int photo[6][2] = {{4000, 3000}, {3000, 4000}, {1920, 1080}, {6000, 2000}, {500, 500}, {9000, 100}};
    assert_int_equal(cz_render_shapes(cz, 1024, w, h, 16), 7);
    for (int k = 0; k < 6; k++) {
        cz_render_geom g;
        assert_int_equal(cz_render_geom_compute(photo[k][0], photo[k][1], 1024, 256, &g), CZ_OK);
        int found = 0;
        for (int i = 0; i < 7; i++) found |= g.net_w == w[i] && g.net_h == h[i];
        assert_true(found);
    }
    /* batch sizes: a square runs 5..1; another shape runs the padded sizes 5, 4, 2, 1 where
     * passes are recorded, else is planned only (0) */
    int n[8];
    assert_int_equal(cz_colorizer_warm_sizes(cz, 1, n, 8), 5);
    assert_int_equal(n[0], 5);
    assert_int_equal(n[4], 1);
    int k = cz_colorizer_warm_sizes(cz, 0, n, 8);
    if (be->ops->record_begin) {
        assert_int_equal(k, 4);
        assert_int_equal(n[0], 5);
        assert_int_equal(n[1], 4);
        assert_int_equal(n[2], 2);
        assert_int_equal(n[3], 1);
    } else {
        assert_int_equal(k, 1);
        assert_int_equal(n[0], 0);
    }
    /* with full batches (server.full_batches) every pass runs 5 images: one warm-up size */
    cz_colorizer *full;
    cz_colorizer_opts fo = {.max_batch = 5, .precision = CZ_F32, .full_batches = 1};
    assert_int_equal(cz_colorizer_create(be, path, &fo, &full), CZ_OK);
    assert_true(cz_unet_full_batches(cz_colorizer_unet(full)));
    assert_false(cz_unet_full_batches(cz_colorizer_unet(cz)));
    assert_int_equal(cz_colorizer_warm_sizes(full, 1, n, 8), 1);
    assert_int_equal(n[0], 5);
    assert_int_equal(cz_colorizer_warm_sizes(full, 0, n, 8), 1);
    assert_int_equal(n[0], be->ops->record_begin ? 5 : 0);
    cz_colorizer_destroy(full);
    /* out of memory: reserving the stores goes on, anything else before the main render's
     * square is kept fails, after it stops */
    const cz_warm_step reserve = {1024, 1024, 0, 0}, pass = {256, 256, 2, 0}, last = {512, 256, 1, 1};
    assert_int_equal(cz_warm_step_nomem(&reserve, 0), CZ_WARM_GO_ON);
    assert_int_equal(cz_warm_step_nomem(&pass, 0), CZ_WARM_FAIL);
    assert_int_equal(cz_warm_step_nomem(&last, 0), CZ_WARM_FAIL);
    assert_int_equal(cz_warm_step_nomem(&pass, 1), CZ_WARM_STOP);
    assert_int_equal(cz_warm_step_nomem(&reserve, 1), CZ_WARM_STOP);
    const int bad[1] = {300};
    cz_warm_step *st;
    int ns, left;
    assert_int_equal(cz_colorizer_warm_steps(cz, bad, 1, 3, &st, &ns, &left), CZ_ERR_INVALID_ARG);
    cz_colorizer_destroy(cz);
    unlink(path);
    free(path);
    /* steps, run on a depth-5 model (multiples of 32, so that the passes stay cheap on an
     * emulator) for renders 32 and 64 with room for 3 shapes: the 64 square planned first, the
     * two squares warmed at every size, one more shape (64x32), one left out (32x64) */
    path = write_weights(CZ_COLOR_LAB, 5);
    cz_colorizer_opts o = {.max_batch = 5, .precision = CZ_F32};
    assert_int_equal(cz_colorizer_create(be, path, &o, &cz), CZ_OK);
    const int renders[2] = {32, 64};
    assert_int_equal(cz_colorizer_warm_steps(cz, renders, 2, 3, &st, &ns, &left), CZ_OK);
    assert_int_equal(left, 1);
    assert_int_equal(ns, 1 + 5 + 5 + k);
    assert_true(st[0].w == 64 && st[0].h == 64 && st[0].n == 0 && !st[0].keep);
    int kept = 0;
    for (int i = 0; i < ns; i++) kept += st[i].keep;
    assert_int_equal(kept, 3);
    assert_true(st[ns - 1].w == 64 && st[ns - 1].h == 32 && st[ns - 1].keep);
    for (int i = 0; i < ns; i++) assert_int_equal(cz_colorizer_warm_step(cz, &st[i]), CZ_OK);
    assert_true(cz_unet_plan_kept(cz_colorizer_unet(cz), 32, 64)); /* h 32, w 64 */
    assert_false(cz_unet_plan_kept(cz_colorizer_unet(cz), 64, 32));
    assert_true(cz_unet_plan_kept(cz_colorizer_unet(cz), 32, 32) && cz_unet_plan_kept(cz_colorizer_unet(cz), 64, 64));
    if (be->ops->record_begin) /* padded sizes 5, 4, 2 and 1 recorded for each of the three */
        assert_int_equal(cz_unet_recording_stats(cz_colorizer_unet(cz)).recorded, 3 * 4);
    free(st);
    cz_colorizer_destroy(cz);
    cz_backend_destroy(be);
    unlink(path);
    free(path);
}

static void test_device_finish(void **state) {
    (void)state;
    char *path = write_weights(CZ_COLOR_LAB, 8);
    cz_backend *be;
    assert_int_equal(cz_backend_create("auto", NULL, &be), CZ_OK);
    if (!be->ops->merge_lab) {
        print_message("skipped: backend %s does not finish on the device (no merge_lab)\n", be->ops->name);
        cz_backend_destroy(be);
        unlink(path);
        free(path);
        return;
    }
    /* 0..2 fit the pool and scale bilinearly; 3 (64x64 at render 256) needs area averaging */
    const int dims[4][3] = {{301, 187, 1}, {120, 260, 3}, {600, 500, 3}, {64, 64, 1}};
    cz_image src[4];
    for (int i = 0; i < 4; i++) make_image(&src[i], dims[i][0], dims[i][1], dims[i][2], 10 + (uint64_t)i);
    const cz_dtype dts[2] = {CZ_F32, CZ_BF16};
    for (int d = 0; d < 2; d++) {
        cz_host_pool *pool;
        assert_int_equal(cz_host_pool_create(be, 16 << 20, &pool), CZ_OK);
        cz_colorizer *host, *dev;
        cz_colorizer_opts o = {.max_batch = 3, .precision = dts[d]};
        if (cz_colorizer_create(be, path, &o, &host) != CZ_OK) { /* bf16 unsupported here */
            print_message("skipped %s: %s\n", cz_dtype_name(dts[d]), cz_error_detail());
            cz_host_pool_destroy(pool);
            continue;
        }
        o.pool = pool;
        assert_int_equal(cz_colorizer_create(be, path, &o, &dev), CZ_OK);
        cz_cjob hj[4], dj[4];
        for (int i = 0; i < 4; i++) {
            assert_int_equal(cz_cjob_prepare(host, &src[i], 256, &hj[i]), CZ_OK);
            assert_int_equal(cz_cjob_prepare(dev, &src[i], 256, &dj[i]), CZ_OK);
            assert_null(hj[i].rgb);
            if ((i < 3) != (dj[i].rgb != NULL)) fail_msg("image %d: pool block %p", i, (void *)dj[i].rgb);
        }
        cz_cjob *hp[3] = {&hj[0], &hj[1], &hj[2]}, *dp[3] = {&dj[0], &dj[1], &dj[2]};
        assert_int_equal(cz_colorizer_run(host, hp, 3), CZ_OK);
        assert_int_equal(cz_colorizer_run(dev, dp, 3), CZ_OK);
        cz_cjob *hq[1] = {&hj[3]}, *dq[2] = {&dj[3], &dj[0]}; /* a mixed batch: host path for both */
        assert_int_equal(cz_colorizer_run(host, hq, 1), CZ_OK);
        assert_int_equal(cz_colorizer_run(dev, dq, 2), CZ_OK);
        for (int i = 0; i < 4; i++) { /* the mixed batch re-ran image 0 on the host */
            assert_int_equal(dj[i].rgb_ready, i == 1 || i == 2);
            assert_int_equal(hj[i].rgb_ready, 0);
        }
        cz_cjob *dr[3] = {&dj[2], &dj[1], &dj[0]}; /* all in the pool again: device */
        assert_int_equal(cz_colorizer_run(dev, dr, 3), CZ_OK);
        for (int i = 0; i < 4; i++) {
            assert_int_equal(dj[i].rgb_ready, i < 3);
            cz_image a = {0}, b = {0};
            assert_int_equal(cz_cjob_finish(host, &hj[i], &a), CZ_OK);
            assert_int_equal(cz_cjob_finish(dev, &dj[i], &b), CZ_OK);
            assert_int_equal(a.width, b.width);
            assert_int_equal(a.height, b.height);
            size_t bytes = (size_t)a.width * a.height * 3, diff = 0;
            for (size_t k = 0; k < bytes; k++) diff += a.px[k] != b.px[k];
            if (diff)
                fail_msg("%s image %d (%dx%d, %s): %zu of %zu bytes differ", cz_dtype_name(dts[d]), i, a.width,
                         a.height, i < 3 ? "device" : "host", diff, bytes);
            cz_image_free(&a);
            cz_image_free(&b);
        }
        /* a pool too small for the 600x500 image: that job, and so its batch, finish on the host */
        cz_host_pool *tiny;
        assert_int_equal(cz_host_pool_create(be, 1 << 20, &tiny), CZ_OK);
        cz_colorizer *dev2;
        o.pool = tiny;
        assert_int_equal(cz_colorizer_create(be, path, &o, &dev2), CZ_OK);
        cz_cjob t2;
        assert_int_equal(cz_cjob_prepare(dev2, &src[2], 256, &t2), CZ_OK);
        assert_null(t2.rgb);
        cz_host_pool_stats st;
        cz_host_pool_get_stats(tiny, &st);
        assert_int_equal(st.misses, 1);
        cz_cjob_release(&t2);
        cz_colorizer_destroy(dev2);
        cz_host_pool_destroy(tiny);
        for (int i = 0; i < 4; i++) {
            cz_cjob_release(&hj[i]);
            cz_cjob_release(&dj[i]);
        }
        cz_host_pool_get_stats(pool, &st);
        assert_int_equal(st.in_use, 0);
        print_message("%s: 3 images finished on the device equal the host's, byte for byte; %llu pool blocks, "
                      "all returned\n",
                      cz_dtype_name(dts[d]), (unsigned long long)st.allocs);
        cz_colorizer_destroy(host);
        cz_colorizer_destroy(dev);
        cz_host_pool_destroy(pool);
    }
    for (int i = 0; i < 4; i++) cz_image_free(&src[i]);
    cz_backend_destroy(be);
    unlink(path);
    free(path);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lab_mode),
        cmocka_unit_test(test_rgb_mode),
        cmocka_unit_test(test_bad_weights_path),
        cmocka_unit_test(test_device_finish),
        cmocka_unit_test(test_render_shapes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
