/* test_metrics_img.c: validation metrics and the sample sheet (core/metrics_img.c): PSNR of
 * identical buffers (+inf raw, capped in the accumulator) and of known perturbations against
 * the formula, colorfulness of a gray image (0) and of a red/blue image against a hand
 * computation, L1 in model and Lab units in both colour modes, and a sample sheet written
 * atomically that decodes as a (3 x S) x (n x S) RGB PNG with the expected columns. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fileio.h"
#include "image.h"
#include "metrics_img.h"
#include "testutil.h"

static void test_psnr(void **state) {
    (void)state;
    const size_t npx = 1000;
    uint8_t *a = malloc(3 * npx), *b = malloc(3 * npx);
    uint64_t rs = 3;
    for (size_t i = 0; i < 3 * npx; i++)
        a[i] = (uint8_t)(10 + tu_rand_u64(&rs) % 231);
    memcpy(b, a, 3 * npx);
    assert_true(isinf(cz_psnr_rgb8(a, b, npx)) && cz_psnr_rgb8(a, b, npx) > 0);
    /* +5 on the red channel only: MSE = 25 / 3 */
    for (size_t i = 0; i < npx; i++)
        b[3 * i] = (uint8_t)(a[3 * i] + 5);
    assert_float_equal(cz_psnr_rgb8(a, b, npx), 10.0 * log10(255.0 * 255.0 * 3.0 / 25.0), 1e-9);
    assert_float_equal(cz_psnr_rgb8(a, b, npx), 38.9226160691, 1e-6);
    /* -3 on every channel: MSE = 9 */
    for (size_t i = 0; i < 3 * npx; i++)
        b[i] = (uint8_t)(a[i] - 3);
    assert_float_equal(cz_psnr_rgb8(a, b, npx), 20.0 * log10(255.0 / 3.0), 1e-9);
    assert_true(isnan(cz_psnr_rgb8(a, b, 0)));
    free(a);
    free(b);
}

static void test_colorfulness(void **state) {
    (void)state;
    uint8_t img[64 * 3];
    for (int i = 0; i < 64; i++)
        memset(img + 3 * i, i * 4, 3);
    assert_float_equal(cz_colorfulness_rgb8(img, 64), 0.0, 1e-12);
    /* half pure red, half pure blue:
     *   rg: 255 and 0         -> mean 127.5,  sd 127.5
     *   yb: 127.5 and -255    -> mean -63.75, sd 191.25
     *   M = sqrt(127.5^2 + 191.25^2) + 0.3 sqrt(127.5^2 + 63.75^2) = 229.854 + 42.765 */
    for (int i = 0; i < 64; i++) {
        img[3 * i] = i < 32 ? 255 : 0;
        img[3 * i + 1] = 0;
        img[3 * i + 2] = i < 32 ? 0 : 255;
    }
    assert_float_equal(cz_colorfulness_rgb8(img, 64), 272.6186938805, 1e-6);
    /* a single colour has no spread, only the mean term: (200,100,50): rg 100, yb 100 */
    for (int i = 0; i < 64; i++)
        img[3 * i] = 200, img[3 * i + 1] = 100, img[3 * i + 2] = 50;
    assert_float_equal(cz_colorfulness_rgb8(img, 64), 0.3 * sqrt(2.0) * 100.0, 1e-9);
}

/* n images of S x S lab data: L ramp, truth ab random in [-0.5, 0.5]. */
static void lab_batch(int n, int S, float **A, float **T, uint64_t seed) {
    const size_t plane = (size_t)S * S;
    *A = malloc(n * plane * sizeof(float));
    *T = malloc(2 * n * plane * sizeof(float));
    for (size_t i = 0; i < n * plane; i++)
        (*A)[i] = -0.6f + 1.2f * (float)(i % plane) / (float)plane;
    tu_fill_uniform(*T, 2 * n * plane, seed, -0.5f, 0.5f);
}

static void test_metrics_lab(void **state) {
    (void)state;
    const int n = 3, S = 12;
    const size_t plane = (size_t)S * S;
    float *A, *T;
    lab_batch(n, S, &A, &T, 5);
    float *P = malloc(2 * n * plane * sizeof(float));
    cz_metrics_acc acc;
    cz_val_metrics m;

    /* perfect prediction */
    cz_metrics_acc_init(&acc, CZ_COLOR_LAB);
    assert_int_equal(cz_metrics_acc_add(&acc, n, S, A, T, T), CZ_OK);
    cz_metrics_acc_result(&acc, &m);
    assert_int_equal(m.images, 3);
    assert_float_equal(m.l1, 0.0, 0.0);
    assert_float_equal(m.l1_ab, 0.0, 0.0);
    assert_float_equal(m.psnr, CZ_PSNR_CAP_DB, 0.0);
    assert_true(m.colorfulness_true > 1.0);
    assert_float_equal(m.colorfulness_pred, m.colorfulness_true, 1e-12);
    assert_float_equal(m.colorfulness_ratio, 1.0, 1e-12);

    /* ab off by +0.1 everywhere: L1 0.1 in model units, 11 in Lab units */
    for (size_t i = 0; i < 2 * n * plane; i++)
        P[i] = T[i] + 0.1f;
    cz_metrics_acc_init(&acc, CZ_COLOR_LAB);
    assert_int_equal(cz_metrics_acc_add(&acc, 2, S, A, P, T), CZ_OK); /* two calls accumulate */
    assert_int_equal(cz_metrics_acc_add(&acc, 1, S, A + 2 * plane, P + 4 * plane, T + 4 * plane), CZ_OK);
    cz_metrics_acc_result(&acc, &m);
    assert_int_equal(m.images, 3);
    assert_float_equal(m.l1, 0.1, 1e-6);
    assert_float_equal(m.l1_ab, 11.0, 1e-4);
    assert_true(m.psnr > 5.0 && m.psnr < CZ_PSNR_CAP_DB);

    /* the PSNR is that of the 8-bit renderings, image by image */
    uint8_t *rp = malloc(3 * plane), *rt = malloc(3 * plane);
    double want = 0;
    for (int k = 0; k < n; k++) {
        assert_int_equal(cz_metrics_to_rgb8(CZ_COLOR_LAB, S, A + k * plane, P + 2 * k * plane, NULL, rp),
                         CZ_OK);
        assert_int_equal(cz_metrics_to_rgb8(CZ_COLOR_LAB, S, A + k * plane, T + 2 * k * plane, NULL, rt),
                         CZ_OK);
        want += cz_psnr_rgb8(rp, rt, plane) / n;
    }
    assert_float_equal(m.psnr, want, 1e-9);

    /* a gray prediction (ab = 0) has no colour: ratio 0 */
    memset(P, 0, 2 * n * plane * sizeof(float));
    cz_metrics_acc_init(&acc, CZ_COLOR_LAB);
    assert_int_equal(cz_metrics_acc_add(&acc, n, S, A, P, T), CZ_OK);
    cz_metrics_acc_result(&acc, &m);
    assert_float_equal(m.colorfulness_pred, 0.0, 1e-9);
    assert_float_equal(m.colorfulness_ratio, 0.0, 1e-9);
    double l1 = 0;
    for (size_t i = 0; i < 2 * n * plane; i++)
        l1 += fabs(T[i]);
    assert_float_equal(m.l1, l1 / (2.0 * n * plane), 1e-9);

    /* empty and bad calls */
    cz_metrics_acc_init(&acc, CZ_COLOR_LAB);
    cz_metrics_acc_result(&acc, &m);
    assert_int_equal(m.images, 0);
    assert_int_equal(cz_metrics_acc_add(&acc, 1, S, NULL, P, T), CZ_ERR_INVALID_ARG);
    assert_int_equal(cz_metrics_acc_add(&acc, -1, S, A, P, T), CZ_ERR_INVALID_ARG);
    free(rp), free(rt), free(A), free(T), free(P);
}

static void test_metrics_rgb(void **state) {
    (void)state;
    const int n = 2, S = 10;
    const size_t plane = (size_t)S * S;
    float *T = malloc(3 * n * plane * sizeof(float)), *P = malloc(3 * n * plane * sizeof(float));
    float *A = malloc(3 * n * plane * sizeof(float));
    tu_fill_uniform(T, 3 * n * plane, 8, -0.6f, 0.6f);
    for (size_t i = 0; i < 3 * n * plane; i++)
        P[i] = T[i] + 0.2f, A[i] = 0.f;
    cz_metrics_acc acc;
    cz_val_metrics m;
    cz_metrics_acc_init(&acc, CZ_COLOR_RGB);
    assert_int_equal(cz_metrics_acc_add(&acc, n, S, A, P, T), CZ_OK);
    cz_metrics_acc_result(&acc, &m);
    assert_float_equal(m.l1, 0.2, 1e-6);
    assert_true(m.l1_ab > 0.0);
    /* l1_ab is the mean |ab| difference after converting both to Lab */
    double want = 0;
    for (int k = 0; k < n; k++)
        for (size_t i = 0; i < plane; i++) {
            float cp[3], ct[3], lp[3], lt[3];
            for (int c = 0; c < 3; c++) {
                cp[c] = fminf(1.f, fmaxf(0.f, (P[(k * 3 + c) * plane + i] + 1.f) * 0.5f));
                ct[c] = fminf(1.f, fmaxf(0.f, (T[(k * 3 + c) * plane + i] + 1.f) * 0.5f));
            }
            cz_srgbf_to_lab(cp, lp);
            cz_srgbf_to_lab(ct, lt);
            want += (fabs(lp[1] - lt[1]) + fabs(lp[2] - lt[2])) / (2.0 * plane * n);
        }
    assert_float_equal(m.l1_ab, want, 1e-4);
    /* perfect prediction: PSNR capped, colourfulness equal */
    cz_metrics_acc_init(&acc, CZ_COLOR_RGB);
    assert_int_equal(cz_metrics_acc_add(&acc, n, S, A, T, T), CZ_OK);
    cz_metrics_acc_result(&acc, &m);
    assert_float_equal(m.psnr, CZ_PSNR_CAP_DB, 0.0);
    assert_float_equal(m.colorfulness_ratio, 1.0, 1e-12);
    free(T), free(P), free(A);
}

static void test_sample_sheet(void **state) {
    (void)state;
    const int n = 3, S = 16;
    const size_t plane = (size_t)S * S;
    float *A, *T;
    lab_batch(n, S, &A, &T, 21);
    float *P = malloc(2 * n * plane * sizeof(float));
    for (size_t i = 0; i < 2 * n * plane; i++)
        P[i] = -T[i];
    char dir[] = "/tmp/cz_sheet_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *path = tu_path(dir, "sheet.png");
    assert_int_equal(cz_sample_sheet_write(path, CZ_COLOR_LAB, n, S, A, P, T), CZ_OK);
    uint8_t *data;
    size_t len;
    assert_int_equal(cz_file_read(path, 0, &data, &len), CZ_OK);
    cz_image img;
    cz_image_format f;
    assert_int_equal(cz_image_decode(data, len, NULL, &img, &f), CZ_OK);
    assert_int_equal(f, CZ_FMT_PNG);
    assert_int_equal(img.width, 3 * S);
    assert_int_equal(img.height, n * S);
    assert_int_equal(img.channels, 3);
    uint8_t *tile = malloc(3 * plane);
    for (int k = 0; k < n; k++) {
        for (int col = 1; col < 3; col++) {
            const float *c = (col == 1 ? P : T) + 2 * k * plane;
            assert_int_equal(cz_metrics_to_rgb8(CZ_COLOR_LAB, S, A + k * plane, c, NULL, tile), CZ_OK);
            for (int y = 0; y < S; y++)
                assert_memory_equal(img.px + ((size_t)(k * S + y) * img.width + col * S) * 3,
                                    tile + (size_t)y * S * 3, (size_t)S * 3);
        }
        for (int y = 0; y < S; y++) /* gray column */
            for (int x = 0; x < S; x++) {
                const uint8_t *p = img.px + ((size_t)(k * S + y) * img.width + x) * 3;
                assert_true(p[0] == p[1] && p[1] == p[2]);
            }
    }
    /* in memory, rgb mode */
    float *Tr = malloc(3 * plane * sizeof(float)), *Ar = calloc(3 * plane, sizeof(float));
    tu_fill_uniform(Tr, 3 * plane, 4, -1.f, 1.f);
    uint8_t *png;
    size_t plen;
    assert_int_equal(cz_sample_sheet_png(CZ_COLOR_RGB, 1, S, Ar, Tr, Tr, &png, &plen), CZ_OK);
    cz_image im2;
    assert_int_equal(cz_image_decode(png, plen, NULL, &im2, NULL), CZ_OK);
    assert_int_equal(im2.width, 3 * S);
    assert_int_equal(im2.height, S);
    assert_memory_equal(im2.px + S * 3, im2.px + 2 * S * 3, (size_t)S * 3); /* ours == truth */
    free(png);
    assert_int_equal(cz_sample_sheet_png(CZ_COLOR_LAB, 0, S, A, P, T, &png, &plen), CZ_ERR_INVALID_ARG);
    assert_null(png);
    cz_image_free(&im2);
    free(Tr), free(Ar);
    free(tile);
    cz_image_free(&img);
    free(data);
    unlink(path);
    rmdir(dir);
    free(path);
    free(A), free(T), free(P);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_psnr),         cmocka_unit_test(test_colorfulness),
        cmocka_unit_test(test_metrics_lab),  cmocka_unit_test(test_metrics_rgb),
        cmocka_unit_test(test_sample_sheet),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
