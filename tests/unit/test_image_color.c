/* test_image_color.c: sRGB <-> Lab (core/image_color.c) and the network geometry
 * (core/image_geom.c): known Lab values, round trips, the luminance promise of the merge
 * (output L == input L up to 8-bit rounding, for any ab), render geometry, resize, reflect
 * padding (numpy semantics), crop, render_input_L and render_merge_ab; and that the fast paths
 * change nothing: the row Lab -> sRGB conversion byte-identical to the scalar one on a million
 * pixels (special values included), the row resampler
 * bit-identical to the pixel-wise one, the merge identical to its pixel-wise definition, the
 * vectorized sRGB -> Lab rows bit-identical to the scalar conversion on all 2^24 colours, and
 * the conversions' cube root within 4 ulp of libm's. Also the training loader's float paths
 * (sRGB -> Lab rows on all 2^24 colours, the 8-bit RGB resize) against the double ones. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "image.h"
#include "testutil.h"

static float L_of(const uint8_t rgb[3]) {
    float lab[3];
    cz_srgb8_to_lab(rgb, lab);
    return lab[0];
}

/* ---------- color ---------- */

static void test_known_lab_values(void **state) {
    (void)state;
    float lab[3];
    const uint8_t white[3] = {255, 255, 255}, black[3] = {0, 0, 0}, red[3] = {255, 0, 0};
    cz_srgb8_to_lab(white, lab);
    assert_true(fabsf(lab[0] - 100.0f) < 0.01f);
    assert_true(fabsf(lab[1]) < 0.01f && fabsf(lab[2]) < 0.01f);
    cz_srgb8_to_lab(black, lab);
    assert_true(fabsf(lab[0]) < 1e-4f && fabsf(lab[1]) < 1e-4f && fabsf(lab[2]) < 1e-4f);
    cz_srgb8_to_lab(red, lab);
    assert_true(fabsf(lab[0] - 53.24f) < 0.05f);
    assert_true(fabsf(lab[1] - 80.09f) < 0.05f);
    assert_true(fabsf(lab[2] - 67.20f) < 0.05f);
    /* float API agrees with the 8-bit one */
    const float redf[3] = {1.0f, 0.0f, 0.0f};
    float lab2[3];
    cz_srgbf_to_lab(redf, lab2);
    for (int k = 0; k < 3; k++) assert_true(fabsf(lab[k] - lab2[k]) < 1e-3f);
    /* back again */
    uint8_t rgb[3];
    const float lab_red[3] = {53.2408f, 80.0925f, 67.2032f};
    cz_lab_to_srgb8(lab_red, rgb);
    assert_int_equal(rgb[0], 255);
    assert_true(rgb[1] <= 1 && rgb[2] <= 1);
}

static void test_gray_roundtrip_exact(void **state) {
    (void)state;
    for (int g = 0; g < 256; g++) {
        uint8_t in[3] = {(uint8_t)g, (uint8_t)g, (uint8_t)g}, out[3];
        float lab[3];
        cz_srgb8_to_lab(in, lab);
        assert_true(fabsf(lab[1]) < 1e-3f && fabsf(lab[2]) < 1e-3f);
        cz_lab_to_srgb8(lab, out);
        assert_memory_equal(in, out, 3);
        /* the pure gray of the same L (ab exactly 0) gives the identical byte */
        float lab0[3] = {lab[0], 0.0f, 0.0f};
        cz_lab_to_srgb8(lab0, out);
        assert_memory_equal(in, out, 3);
        if (g > 0) {
            uint8_t prev[3] = {(uint8_t)(g - 1), (uint8_t)(g - 1), (uint8_t)(g - 1)};
            assert_true(L_of(prev) < lab[0]); /* monotonic */
        }
    }
}

static void test_color_roundtrip(void **state) {
    (void)state;
    uint64_t rs = 42;
    for (int i = 0; i < 20000; i++) {
        uint8_t in[3], out[3];
        for (int k = 0; k < 3; k++) in[k] = (uint8_t)tu_rand_u64(&rs);
        float lab[3];
        cz_srgb8_to_lab(in, lab);
        cz_lab_to_srgb8(lab, out);
        for (int k = 0; k < 3; k++) assert_true(abs((int)in[k] - (int)out[k]) <= 1);
        float f[3] = {in[0] / 255.0f, in[1] / 255.0f, in[2] / 255.0f}, g[3];
        cz_srgbf_to_lab(f, lab);
        cz_lab_to_srgbf(lab, g);
        for (int k = 0; k < 3; k++) assert_true(fabsf(f[k] - g[k]) < 1e-3f);
    }
}

static void test_luminance_promise_pointwise(void **state) {
    (void)state;
    uint64_t rs = 5;
    double worst = 0;
    for (int i = 0; i < 200000; i++) {
        float lab[3] = {tu_rand_uniform(&rs, 0.0f, 100.0f), tu_rand_uniform(&rs, -110.0f, 110.0f),
                        tu_rand_uniform(&rs, -110.0f, 110.0f)};
        if (i % 7 == 0) lab[1] = lab[2] = 0.0f;
        if (i % 11 == 0) lab[1] *= 4.0f; /* far outside the gamut */
        uint8_t rgb[3];
        cz_lab_to_srgb8(lab, rgb);
        double d = fabs((double)L_of(rgb) - lab[0]);
        if (d > worst) worst = d;
        if (d > 1.0) fail_msg("L %.3f a %.2f b %.2f -> L %.3f", lab[0], lab[1], lab[2], L_of(rgb));
    }
    assert_true(worst <= 1.0);
    /* hostile values stay defined: L is clamped, non-finite treated as 0 */
    const float odd[][3] = {{-5, 0, 0}, {150, 0, 0}, {NAN, 10, 10}, {50, INFINITY, -INFINITY},
                            {50, 1e30f, -1e30f}};
    for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++) {
        uint8_t rgb[3];
        cz_lab_to_srgb8(odd[i], rgb);
    }
    uint8_t rgb[3];
    cz_lab_to_srgb8(odd[1], rgb);
    assert_int_equal(rgb[0], 255);
}

static void test_lightness_plane(void **state) {
    (void)state;
    cz_image g, c;
    assert_int_equal(cz_image_alloc(&g, 256, 1, 1), CZ_OK);
    assert_int_equal(cz_image_alloc(&c, 256, 1, 3), CZ_OK);
    for (int i = 0; i < 256; i++) {
        g.px[i] = (uint8_t)i;
        c.px[3 * i] = c.px[3 * i + 1] = c.px[3 * i + 2] = (uint8_t)i;
    }
    float Lg[256], Lc[256];
    assert_int_equal(cz_image_lightness(&g, Lg), CZ_OK);
    assert_int_equal(cz_image_lightness(&c, Lc), CZ_OK);
    for (int i = 0; i < 256; i++) {
        assert_true(fabsf(Lg[i] - Lc[i]) < 1e-4f);
        const uint8_t rgb[3] = {(uint8_t)i, (uint8_t)i, (uint8_t)i};
        assert_true(fabsf(Lg[i] - L_of(rgb)) < 1e-5f);
    }
    c.px[0] = 255; /* a color pixel: L of its luminance */
    assert_int_equal(cz_image_lightness(&c, Lc), CZ_OK);
    assert_true(fabsf(Lc[0] - 53.24f) < 0.05f);
    assert_int_equal(cz_image_lightness(NULL, Lc), CZ_ERR_INVALID_ARG);
    cz_image_free(&g);
    cz_image_free(&c);
}

/* ---------- geometry ---------- */

static void test_geom_compute(void **state) {
    (void)state;
    const struct {
        int w, h, render, mult;
        int sw, sh, nw, nh, ox, oy;
    } cases[] = {
        {4000, 3000, 256, 256, 256, 192, 256, 256, 0, 32},
        {4000, 3000, 512, 256, 512, 384, 512, 512, 0, 64},
        {3000, 4000, 256, 256, 192, 256, 256, 256, 32, 0},
        {1, 1, 256, 256, 256, 256, 256, 256, 0, 0},
        {1, 5000, 256, 256, 1, 256, 256, 256, 127, 0},
        {5000, 1, 512, 256, 512, 1, 512, 256, 0, 127},
        {1, 5000, 512, 256, 1, 512, 256, 512, 127, 0},
        {640, 480, 256, 32, 256, 192, 256, 192, 0, 0},
        {100, 37, 256, 256, 256, 95, 256, 256, 0, 80}, /* 37*256/100 = 94.72 -> 95 */
        {333, 1000, 300, 256, 100, 300, 256, 512, 78, 106},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cz_render_geom g;
        assert_int_equal(
            cz_render_geom_compute(cases[i].w, cases[i].h, cases[i].render, cases[i].mult, &g),
            CZ_OK);
        if (g.scaled_w != cases[i].sw || g.scaled_h != cases[i].sh || g.net_w != cases[i].nw ||
            g.net_h != cases[i].nh || g.off_x != cases[i].ox || g.off_y != cases[i].oy)
            fail_msg("case %zu: scaled %dx%d net %dx%d off %d,%d", i, g.scaled_w, g.scaled_h,
                     g.net_w, g.net_h, g.off_x, g.off_y);
        assert_int_equal(g.src_w, cases[i].w);
        assert_int_equal(g.src_h, cases[i].h);
    }
    cz_render_geom g;
    assert_int_equal(cz_render_geom_compute(0, 10, 256, 256, &g), CZ_ERR_EMPTY_IMAGE);
    assert_int_equal(cz_render_geom_compute(10, 10, 0, 256, &g), CZ_ERR_INVALID_ARG);
    assert_int_equal(cz_render_geom_compute(10, 10, 256, 0, &g), CZ_ERR_INVALID_ARG);
    assert_int_equal(cz_render_geom_compute(10, 10, 256, 256, NULL), CZ_ERR_INVALID_ARG);
}

static void test_pad_reflect_numpy(void **state) {
    (void)state;
    /* np.pad(np.arange(3), 5, 'reflect') */
    const float src3[3] = {0, 1, 2};
    const float want3[13] = {1, 0, 1, 2, 1, 0, 1, 2, 1, 0, 1, 2, 1};
    float dst[20];
    cz_pad_reflect_plane(src3, 3, 1, dst, 13, 1, 5, 0);
    assert_memory_equal(dst, want3, sizeof want3);
    /* np.pad(np.arange(4), (7, 9), 'reflect') */
    const float src4[4] = {0, 1, 2, 3};
    const float want4[20] = {1, 0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0};
    cz_pad_reflect_plane(src4, 4, 1, dst, 20, 1, 7, 0);
    assert_memory_equal(dst, want4, sizeof want4);
    /* 1-pixel source: replicated */
    const float one = 7.0f;
    float d5[15];
    cz_pad_reflect_plane(&one, 1, 1, d5, 5, 3, 2, 1);
    for (int i = 0; i < 15; i++) assert_true(d5[i] == 7.0f);
    /* 2D: rows reflect the same way (columns of a 2x3 padded to 4x7) */
    const float s2[6] = {0, 1, 2, 10, 11, 12};
    float d2[28];
    cz_pad_reflect_plane(s2, 3, 2, d2, 7, 4, 2, 1);
    const float want_row0[7] = {12, 11, 10, 11, 12, 11, 10}; /* reflect of row 1 */
    const float want_row3[7] = {2, 1, 0, 1, 2, 1, 0};        /* reflect of row 0 */
    assert_memory_equal(d2, want_row0, sizeof want_row0);
    assert_memory_equal(d2 + 21, want_row3, sizeof want_row3);
}

static void test_pad_crop_inverse(void **state) {
    (void)state;
    const int sizes[][6] = {{37, 19, 64, 64, 13, 22}, {5, 3, 256, 256, 125, 126},
                            {1, 9, 32, 16, 15, 3}, {8, 8, 8, 8, 0, 0}};
    for (size_t k = 0; k < 4; k++) {
        int sw = sizes[k][0], sh = sizes[k][1], dw = sizes[k][2], dh = sizes[k][3];
        int ox = sizes[k][4], oy = sizes[k][5];
        float *src = malloc(sizeof(float) * sw * sh);
        float *pad = malloc(sizeof(float) * dw * dh);
        float *back = malloc(sizeof(float) * sw * sh);
        tu_fill_uniform(src, (size_t)sw * sh, k + 1, -3.0f, 3.0f);
        cz_pad_reflect_plane(src, sw, sh, pad, dw, dh, ox, oy);
        cz_crop_plane(pad, dw, back, sw, sh, ox, oy);
        assert_memory_equal(back, src, sizeof(float) * sw * sh);
        /* every padded value is one of the source values */
        for (int i = 0; i < dw * dh; i++) {
            int found = 0;
            for (int j = 0; j < sw * sh && !found; j++) found = pad[i] == src[j];
            assert_true(found);
        }
        free(src);
        free(pad);
        free(back);
    }
}

static void test_resize(void **state) {
    (void)state;
    /* same size: identity, bit for bit */
    float a[35], b[35];
    tu_fill_uniform(a, 35, 9, -1, 1);
    cz_resize_plane(a, 7, 5, b, 7, 5);
    assert_memory_equal(a, b, sizeof a);
    /* constants stay constant whatever the factor (bilinear and area paths) */
    const int dims[][4] = {{10, 10, 37, 23}, {100, 80, 7, 9}, {64, 64, 32, 32}, {3, 1, 1000, 2},
                           {1000, 3, 1, 1}};
    for (size_t k = 0; k < sizeof dims / sizeof dims[0]; k++) {
        int sw = dims[k][0], sh = dims[k][1], dw = dims[k][2], dh = dims[k][3];
        float *s = malloc(sizeof(float) * sw * sh), *d = malloc(sizeof(float) * dw * dh);
        for (int i = 0; i < sw * sh; i++) s[i] = 42.5f;
        cz_resize_plane(s, sw, sh, d, dw, dh);
        for (int i = 0; i < dw * dh; i++) assert_true(fabsf(d[i] - 42.5f) < 1e-4f);
        free(s);
        free(d);
    }
    /* area: 4x4 -> 1x1 is the mean; 8x1 -> 2x1 averages blocks of 4 (no aliasing) */
    float s16[16], d1;
    for (int i = 0; i < 16; i++) s16[i] = (float)i;
    cz_resize_plane(s16, 4, 4, &d1, 1, 1);
    assert_true(fabsf(d1 - 7.5f) < 1e-5f);
    const float s8[8] = {0, 10, 0, 10, 0, 10, 0, 10};
    float d2[2];
    cz_resize_plane(s8, 8, 1, d2, 2, 1);
    assert_true(fabsf(d2[0] - 5.0f) < 1e-5f && fabsf(d2[1] - 5.0f) < 1e-5f);
    /* bilinear 2x upsample with half-pixel centres: [0, 4] -> [0, 1, 3, 4] */
    const float s2[2] = {0, 4};
    float d4[4];
    cz_resize_plane(s2, 2, 1, d4, 4, 1);
    const float w4[4] = {0, 1, 3, 4};
    for (int i = 0; i < 4; i++) assert_true(fabsf(d4[i] - w4[i]) < 1e-6f);
    /* 2x downsample (bilinear path, factor 2): pairs are averaged */
    const float s4[4] = {0, 2, 4, 6};
    float d22[2];
    cz_resize_plane(s4, 4, 1, d22, 2, 1);
    assert_true(fabsf(d22[0] - 1.0f) < 1e-6f && fabsf(d22[1] - 5.0f) < 1e-6f);
}

static cz_image gray_ramp(int w, int h) {
    cz_image img;
    assert_int_equal(cz_image_alloc(&img, w, h, 1), CZ_OK);
    for (int i = 0; i < w * h; i++) img.px[i] = (uint8_t)(i % 256);
    return img;
}

static void test_render_input_and_gray_merge(void **state) {
    (void)state;
    const int dims[][2] = {{256, 1}, {300, 200}, {1, 1}, {17, 500}};
    for (size_t k = 0; k < sizeof dims / sizeof dims[0]; k++) {
        int w = dims[k][0], h = dims[k][1];
        cz_image img = gray_ramp(w, h);
        float *L = malloc(sizeof(float) * w * h);
        assert_int_equal(cz_image_lightness(&img, L), CZ_OK);
        cz_render_geom g;
        assert_int_equal(cz_render_geom_compute(w, h, 256, 256, &g), CZ_OK);
        size_t plane = (size_t)g.net_w * g.net_h;
        float *in = malloc(sizeof(float) * plane);
        cz_render_input_L(L, &g, in);
        for (size_t i = 0; i < plane; i++) assert_true(in[i] >= -1.0f && in[i] <= 1.0f);
        if (w == 1 && h == 1) /* constant image: every net pixel is its L */
            for (size_t i = 0; i < plane; i++) assert_true(fabsf(in[i] - (L[0] / 50 - 1)) < 1e-6f);
        float *ab = calloc(2 * plane, sizeof(float));
        cz_image out;
        assert_int_equal(cz_render_merge_ab(L, ab, &g, &out), CZ_OK);
        assert_int_equal(out.width, w);
        assert_int_equal(out.height, h);
        assert_int_equal(out.channels, 3);
        for (int i = 0; i < w * h; i++)
            for (int c = 0; c < 3; c++)
                if (out.px[3 * i + c] != img.px[i])
                    fail_msg("%dx%d pixel %d channel %d: %d, expected %d", w, h, i, c,
                             out.px[3 * i + c], img.px[i]);
        cz_image_free(&out);
        free(ab);
        free(in);
        free(L);
        cz_image_free(&img);
    }
}

static void test_merge_luminance_promise(void **state) {
    (void)state;
    const int dims[][3] = {{123, 77, 256}, {40, 300, 256}, {1000, 20, 128}};
    uint64_t rs = 77;
    for (size_t k = 0; k < sizeof dims / sizeof dims[0]; k++) {
        int w = dims[k][0], h = dims[k][1];
        cz_image img;
        assert_int_equal(cz_image_alloc(&img, w, h, 3), CZ_OK);
        for (int i = 0; i < w * h * 3; i++) img.px[i] = (uint8_t)tu_rand_u64(&rs);
        float *L = malloc(sizeof(float) * w * h);
        assert_int_equal(cz_image_lightness(&img, L), CZ_OK);
        cz_render_geom g;
        assert_int_equal(cz_render_geom_compute(w, h, dims[k][2], 64, &g), CZ_OK);
        size_t plane = (size_t)g.net_w * g.net_h;
        float *ab = malloc(2 * plane * sizeof(float));
        tu_fill_uniform(ab, 2 * plane, k + 100, -110.0f, 110.0f);
        cz_image out;
        assert_int_equal(cz_render_merge_ab(L, ab, &g, &out), CZ_OK);
        double worst = 0;
        for (int i = 0; i < w * h; i++) {
            double d = fabs((double)L_of(out.px + 3 * i) - L[i]);
            if (d > worst) worst = d;
        }
        if (worst > 1.0) fail_msg("%dx%d: worst |dL| = %.3f", w, h, worst);
        cz_image_free(&out);
        /* and with the ab planes at the extremes of the network's range (tanh * 110) */
        for (size_t i = 0; i < 2 * plane; i++) ab[i] = (i & 1) ? 110.0f : -110.0f;
        assert_int_equal(cz_render_merge_ab(L, ab, &g, &out), CZ_OK);
        for (int i = 0; i < w * h; i++)
            assert_true(fabs((double)L_of(out.px + 3 * i) - L[i]) <= 1.0);
        cz_image_free(&out);
        free(ab);
        free(L);
        cz_image_free(&img);
    }
    cz_image out;
    cz_render_geom bad = {0};
    float x = 0;
    assert_int_equal(cz_render_merge_ab(&x, &x, &bad, &out), CZ_ERR_INVALID_ARG);
}

/* The conversions' own cube root against libm's, over the whole range the conversions use it on
 * (t in (216/24389, 1.1]) and beyond it. */
static void test_cbrt_pos(void **state) {
    (void)state;
    uint64_t rs = 99;
    double worst = 0.0;
    for (int i = 0; i < 2000000; i++) {
        double u = (double)(tu_rand_u64(&rs) >> 11) * 0x1p-53;
        double t = i < 1500000 ? 216.0 / 24389.0 + u * 1.1 : ldexp(0.5 + u, (int)(i % 200) - 100);
        double r = cbrt(t), e = fabs(cz_cbrt_pos(t) - r) / (r * 0x1p-52);
        if (e > worst) worst = e;
    }
    print_message("cbrt_pos: worst %.2f ulp from libm over 2M values\n", worst);
    if (worst > 4.0) fail_msg("cbrt_pos is %.2f ulp from libm's cbrt", worst);
}

/* cz_srgb8_row_to_lab against cz_srgb8_to_lab on every one of the 2^24 8-bit colours, bit for
 * bit (rows of 65,536 and, for the scalar tail, of 65,535 pixels), and cz_image_lightness's L of
 * colour pixels against the rows' L. */
static void test_srgb8_row_exhaustive(void **state) {
    (void)state;
    enum { ROW = 65536 };
    float worst_f[3] = {0.0f, 0.0f, 0.0f}; /* cz_srgb8_row_to_lab_f's largest errors */
    uint8_t *rgb = malloc(3 * ROW);
    float *L = malloc(ROW * sizeof(float)), *a = malloc(ROW * sizeof(float)), *b = malloc(ROW * sizeof(float));
    float *Lf = malloc(ROW * sizeof(float)), *af = malloc(ROW * sizeof(float)), *bf = malloc(ROW * sizeof(float));
    assert_true(Lf && af && bf);
    assert_non_null(rgb);
    assert_non_null(L);
    assert_non_null(a);
    assert_non_null(b);
    for (int r = 0; r < 256; r++) {
        for (int i = 0; i < ROW; i++) {
            rgb[3 * i] = (uint8_t)r;
            rgb[3 * i + 1] = (uint8_t)(i >> 8);
            rgb[3 * i + 2] = (uint8_t)i;
        }
        size_t n = r & 1 ? ROW - 1 : ROW; /* odd rows leave a tail for the scalar path */
        cz_srgb8_row_to_lab(rgb, n, L, a, b);
        for (size_t i = 0; i < n; i++) {
            float want[3];
            cz_srgb8_to_lab(rgb + 3 * i, want);
            float got[3] = {L[i], a[i], b[i]};
            if (memcmp(want, got, sizeof want))
                fail_msg("rgb %u,%u,%u: row (%.9g, %.9g, %.9g), scalar (%.9g, %.9g, %.9g)", rgb[3 * i],
                         rgb[3 * i + 1], rgb[3 * i + 2], (double)got[0], (double)got[1], (double)got[2],
                         (double)want[0], (double)want[1], (double)want[2]);
        }
        /* the float rows (odd n: their padded last octet) against the same scalar results */
        cz_srgb8_row_to_lab_f(rgb, n, Lf, af, bf);
        /* cz_image_lightness (its own vector path, the same float operations) gives their L */
        cz_image img = {.width = (int)n, .height = 1, .channels = 3, .px = rgb};
        assert_int_equal(cz_image_lightness(&img, af), CZ_OK);
        if (memcmp(af, Lf, n * sizeof(float))) fail_msg("row %d: cz_image_lightness differs from the float rows' L", r);
        cz_srgb8_row_to_lab_f(rgb, n, Lf, af, bf);
        for (size_t i = 0; i < n; i++) {
            float d[3] = {fabsf(Lf[i] - L[i]), fabsf(af[i] - a[i]), fabsf(bf[i] - b[i])};
            for (int c = 0; c < 3; c++)
                if (!(d[c] <= worst_f[c])) worst_f[c] = d[c]; /* NaN lands here too */
        }
    }
    print_message("float sRGB -> Lab rows, all 2^24 colours: largest error L %.3g, a %.3g, b %.3g\n",
                  (double)worst_f[0], (double)worst_f[1], (double)worst_f[2]);
    for (int c = 0; c < 3; c++)
        if (!(worst_f[c] < 5e-4f)) fail_msg("float rows: channel %d off by %g from the double conversion", c, (double)worst_f[c]);
    free(Lf);
    free(af);
    free(bf);
    free(rgb);
    free(L);
    free(a);
    free(b);
}

/* cz_lab_row_to_srgb8 must be byte-identical to cz_lab_to_srgb8 on every pixel: anywhere in and
 * beyond the Lab box, moderate chroma, grays on the code thresholds, NaN and the infinities, and
 * row lengths that leave a partial group of four (N - 3 below). */
static void test_lab_row_matches_scalar(void **state) {
    (void)state;
    enum { N = 1 << 20 };
    float *L = malloc(N * sizeof(float)), *a = malloc(N * sizeof(float)), *b = malloc(N * sizeof(float));
    uint8_t *got = malloc(3 * (size_t)N);
    assert_non_null(L);
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(got);
    uint64_t rs = 2024;
    const float specials[] = {0.0f, -0.0f, 8.0f, 100.0f, 1e-30f, -1e-3f, 100.001f, 128.0f, -128.0f,
                              128.5f, 1e30f, INFINITY, -INFINITY, NAN};
    const int ns = (int)(sizeof specials / sizeof specials[0]);
    for (int i = 0; i < N; i++) {
        double u = (double)(tu_rand_u64(&rs) >> 11) * 0x1p-53;
        double v = (double)(tu_rand_u64(&rs) >> 11) * 0x1p-53;
        double w = (double)(tu_rand_u64(&rs) >> 11) * 0x1p-53;
        switch (i % 5) {
        case 0: /* anywhere in the box and a little beyond */
            L[i] = (float)(u * 104 - 2);
            a[i] = (float)(v * 270 - 135);
            b[i] = (float)(w * 270 - 135);
            break;
        case 1: /* what a network predicts: moderate chroma */
            L[i] = (float)(u * 100);
            a[i] = (float)(v * 60 - 30);
            b[i] = (float)(w * 60 - 30);
            break;
        case 2: /* grays and near-grays, including L on the sRGB code thresholds */
            L[i] = (float)(u * 100);
            a[i] = (i & 8) ? 0.0f : (float)(v * 1e-3 - 5e-4);
            b[i] = (i & 16) ? 0.0f : (float)(w * 1e-3 - 5e-4);
            break;
        case 3: { /* L within a few float steps of the L of a gray code threshold */
            uint8_t lo[3] = {(uint8_t)(u * 255), (uint8_t)(u * 255), (uint8_t)(u * 255)};
            uint8_t hi[3] = {(uint8_t)(lo[0] + 1), (uint8_t)(lo[0] + 1), (uint8_t)(lo[0] + 1)};
            float la[3], lb[3];
            cz_srgb8_to_lab(lo, la);
            cz_srgb8_to_lab(hi, lb);
            float mid = 0.5f * (la[0] + lb[0]);
            int steps = (int)(v * 64) - 32;
            L[i] = mid;
            for (int k = 0; k < (steps < 0 ? -steps : steps); k++)
                L[i] = nextafterf(L[i], steps < 0 ? -1.0f : 101.0f);
            a[i] = b[i] = 0.0f;
            break;
        }
        default: /* special values in any position */
            L[i] = (i & 1) ? specials[(int)(u * ns)] : (float)(u * 100);
            a[i] = (i & 2) ? specials[(int)(v * ns)] : (float)(v * 40 - 20);
            b[i] = (i & 4) ? specials[(int)(w * ns)] : (float)(w * 40 - 20);
            break;
        }
    }
    cz_lab_row_to_srgb8(L, a, b, N - 3, got);
    for (int i = 0; i < N - 3; i++) {
        uint8_t want[3];
        cz_lab_to_srgb8((const float[3]){L[i], a[i], b[i]}, want);
        if (memcmp(want, got + 3 * (size_t)i, 3))
            fail_msg("pixel %d Lab (%.9g, %.9g, %.9g): row %u,%u,%u, scalar %u,%u,%u", i, (double)L[i],
                     (double)a[i], (double)b[i], got[3 * i], got[3 * i + 1], got[3 * i + 2], want[0], want[1],
                     want[2]);
    }
    print_message("lab row: %d pixels byte-identical to the scalar conversion\n", N);
    free(L);
    free(a);
    free(b);
    free(got);
}

/* The row resampler against the pixel-at-a-time reference: bilinear up and down (<= 2x), exact
 * copies, area reductions on either axis, one-pixel sides. Bit-identical, not just close. */
static void test_resize_rows_match_pixelwise(void **state) {
    (void)state;
    const int dims[][4] = {{64, 48, 300, 200}, {256, 256, 256, 256}, {300, 200, 170, 101}, {1000, 30, 37, 29},
                           {17, 500, 400, 9},  {1, 1, 5, 7},         {7, 1, 1, 3},        {513, 257, 64, 64},
                           {3, 90, 90, 3}};
    for (size_t k = 0; k < sizeof dims / sizeof dims[0]; k++) {
        int sw = dims[k][0], sh = dims[k][1], dw = dims[k][2], dh = dims[k][3];
        float *src = malloc(sizeof(float) * sw * sh);
        float *x = malloc(sizeof(float) * dw * dh), *y = malloc(sizeof(float) * dw * dh);
        tu_fill_uniform(src, (size_t)sw * sh, 31 + k, -110.0f, 110.0f);
        cz_resize_plane(src, sw, sh, x, dw, dh);
        cz_resize_plane_pixelwise(src, sw, sh, y, dw, dh);
        if (memcmp(x, y, sizeof(float) * dw * dh))
            fail_msg("%dx%d -> %dx%d: row resampler differs from the pixel-wise one", sw, sh, dw, dh);
        free(src);
        free(x);
        free(y);
    }
}

/* The tap tables (cz_resample_taps) and the 8-bit RGB resize built on them (the training loader's
 * stretch) against cz_resize_plane on the same sizes: the tables stay inside the source and their
 * weights sum to 1; every resized value is within one level of the rounded double-precision
 * result, nearly all equal; same size is an exact copy; bad arguments are refused. */
static void test_resize_rgb8_matches_plane(void **state) {
    (void)state;
    const int dims[][4] = {{64, 48, 300, 200}, {256, 256, 286, 286}, {300, 200, 170, 101}, {1000, 30, 37, 29},
                           {17, 500, 400, 9},  {1, 1, 5, 7},         {7, 1, 1, 3},        {1024, 768, 286, 286},
                           {3, 90, 90, 3},     {4000, 8, 286, 3}};
    size_t values = 0, equal = 0;
    for (size_t k = 0; k < sizeof dims / sizeof dims[0]; k++) {
        const int sw = dims[k][0], sh = dims[k][1], dw = dims[k][2], dh = dims[k][3];
        for (int axis = 0; axis < 2; axis++) {
            const int sn = axis ? sh : sw, dn = axis ? dh : dw, nt = cz_resample_ntaps(sn, dn);
            assert_true(nt >= 1 && nt <= sn);
            int *first = malloc(sizeof(int) * dn);
            float *w = malloc(sizeof(float) * dn * nt);
            cz_resample_taps(sn, dn, nt, first, w);
            for (int d = 0; d < dn; d++) {
                double sum = 0.0;
                for (int t = 0; t < nt; t++) sum += w[d * nt + t];
                if (first[d] < 0 || first[d] + nt > sn || fabs(sum - 1.0) > 1e-6)
                    fail_msg("%d -> %d, output %d: window [%d, %d), weights sum to %.9g", sn, dn, d, first[d],
                             first[d] + nt, sum);
            }
            free(first);
            free(w);
        }
        const size_t sp = (size_t)sw * sh, dp = (size_t)dw * dh;
        uint8_t *src = malloc(3 * sp), *dst = malloc(3 * dp);
        float *plane = malloc(sizeof(float) * sp), *ref = malloc(sizeof(float) * dp);
        uint32_t r = 77u + (uint32_t)k;
        for (size_t i = 0; i < 3 * sp; i++) { /* smooth ramps plus noise, like a photo */
            r = r * 1664525u + 1013904223u;
            size_t px = i / 3;
            src[i] = (uint8_t)((px % sw * 97 / (sw + 1) + px / sw * 131 / (sh + 1) + (r >> 27) + 40 * (i % 3)) % 256);
        }
        assert_int_equal(cz_resize_rgb8(src, sw, sh, dst, dw, dh), CZ_OK);
        for (int c = 0; c < 3; c++) {
            for (size_t i = 0; i < sp; i++) plane[i] = src[3 * i + c];
            cz_resize_plane(plane, sw, sh, ref, dw, dh);
            for (size_t i = 0; i < dp; i++) {
                float want = rintf(ref[i] < 0.0f ? 0.0f : ref[i] > 255.0f ? 255.0f : ref[i]);
                if (fabsf((float)dst[3 * i + c] - want) > 1.0f)
                    fail_msg("%dx%d -> %dx%d, pixel %zu channel %d: %d, double-precision resize %.6f", sw, sh, dw, dh,
                             i, c, dst[3 * i + c], ref[i]);
                values++;
                equal += (float)dst[3 * i + c] == want;
            }
        }
        free(src);
        free(dst);
        free(plane);
        free(ref);
    }
    if (equal * 1000 < values * 999) fail_msg("only %zu of %zu values equal the rounded double resize", equal, values);

    uint8_t img[5 * 4 * 3], out[5 * 4 * 3];
    for (size_t i = 0; i < sizeof img; i++) img[i] = (uint8_t)(i * 37 + 11);
    assert_int_equal(cz_resize_rgb8(img, 5, 4, out, 5, 4), CZ_OK);
    assert_memory_equal(img, out, sizeof img);
    assert_int_equal(cz_resize_rgb8(img, 0, 4, out, 5, 4), CZ_ERR_INVALID_ARG);
    assert_int_equal(cz_resize_rgb8(NULL, 5, 4, out, 5, 4), CZ_ERR_INVALID_ARG);
    assert_int_equal(cz_resample_ntaps(0, 3), 0);
}

/* The merge against its definition, pixel by pixel: crop, pixel-wise resize of both ab planes
 * to the source size, cz_lab_to_srgb8 with the source's L. */
static void test_merge_matches_pixelwise(void **state) {
    (void)state;
    const int dims[][3] = {{300, 200, 64}, {256, 256, 256}, {200, 333, 256}, {20, 10, 256}, {1001, 3, 128}, {1, 1, 64}};
    for (size_t k = 0; k < sizeof dims / sizeof dims[0]; k++) {
        int w = dims[k][0], h = dims[k][1];
        cz_render_geom g;
        assert_int_equal(cz_render_geom_compute(w, h, dims[k][2], 64, &g), CZ_OK);
        size_t plane = (size_t)g.net_w * g.net_h, n = (size_t)w * h, sc = (size_t)g.scaled_w * g.scaled_h;
        float *L = malloc(sizeof(float) * n), *ab = malloc(2 * plane * sizeof(float));
        float *crop = malloc(sizeof(float) * sc), *up = malloc(2 * n * sizeof(float));
        tu_fill_uniform(L, n, 7 + k, 0.0f, 100.0f);
        /* half the cases with chroma a network gives, half far out of gamut */
        tu_fill_uniform(ab, 2 * plane, 70 + k, k & 1 ? -110.0f : -25.0f, k & 1 ? 110.0f : 25.0f);
        for (int c = 0; c < 2; c++) {
            cz_crop_plane(ab + c * plane, g.net_w, crop, g.scaled_w, g.scaled_h, g.off_x, g.off_y);
            cz_resize_plane_pixelwise(crop, g.scaled_w, g.scaled_h, up + c * n, w, h);
        }
        cz_image out;
        assert_int_equal(cz_render_merge_ab(L, ab, &g, &out), CZ_OK);
        for (size_t i = 0; i < n; i++) {
            uint8_t want[3];
            cz_lab_to_srgb8((const float[3]){L[i], up[i], up[n + i]}, want);
            if (memcmp(want, out.px + 3 * i, 3))
                fail_msg("%dx%d render %d pixel %zu: merge %u,%u,%u, pixel-wise %u,%u,%u", w, h, dims[k][2], i,
                         out.px[3 * i], out.px[3 * i + 1], out.px[3 * i + 2], want[0], want[1], want[2]);
        }
        cz_image_free(&out);
        free(L);
        free(ab);
        free(crop);
        free(up);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_known_lab_values),
        cmocka_unit_test(test_gray_roundtrip_exact),
        cmocka_unit_test(test_color_roundtrip),
        cmocka_unit_test(test_luminance_promise_pointwise),
        cmocka_unit_test(test_lightness_plane),
        cmocka_unit_test(test_geom_compute),
        cmocka_unit_test(test_pad_reflect_numpy),
        cmocka_unit_test(test_pad_crop_inverse),
        cmocka_unit_test(test_resize),
        cmocka_unit_test(test_render_input_and_gray_merge),
        cmocka_unit_test(test_merge_luminance_promise),
        cmocka_unit_test(test_cbrt_pos),
        cmocka_unit_test(test_srgb8_row_exhaustive),
        cmocka_unit_test(test_lab_row_matches_scalar),
        cmocka_unit_test(test_resize_rows_match_pixelwise),
        cmocka_unit_test(test_merge_matches_pixelwise),
        cmocka_unit_test(test_resize_rgb8_matches_plane),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
