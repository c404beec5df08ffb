/* test_dataset.c: the training data pipeline (core/dataset.c) on small generated trees in a
 * temp directory: listing counts (nested folders, mixed-case extensions, corrupt files, gray
 * photos, non-images, hidden files, a symlink loop, links leaving the root, a duplicate link),
 * batch shapes and value ranges in lab and rgb mode, reproducibility across seeds and worker
 * counts, the crop and flip checked pixel by pixel on a left/right asymmetric image, the
 * validation split (hash and separate folder), the prefetch ring filling up, all-bad and
 * empty datasets, and destroy at any point (no hang; leaks show under the ASan build).
 * No timed assertions: waits are bounded only to turn a hang into a failure. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "dataset.h"
#include "fileio.h"
#include "image.h"
#include "testutil.h"

static char g_tmp[256];     /* the temp tree */
static char g_root[300];    /* the mixed dataset */
static char g_clean[300];   /* colour PNGs only */
static char g_asym[300];    /* one asymmetric PNG of exactly load x load */
static char g_valdir[300];  /* a separate validation folder */
static char g_bad[300];     /* corrupt files only */
static char g_empty[300];   /* no images */
static char g_outside[300]; /* outside every root, target of links */

#define N_COLOUR 36 /* colour images in g_root */
#define N_CORRUPT 3
#define N_GRAY 2

/* ---------- generated files ---------- */

static void write_bytes(const char *dir, const char *name, const void *p, size_t n) {
    char *path = tu_path(dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    if (n) assert_int_equal(fwrite(p, 1, n, f), n);
    fclose(f);
    free(path);
}

static void make_image(cz_image *img, int w, int h, int ch, int idx) {
    assert_int_equal(cz_image_alloc(img, w, h, ch), CZ_OK);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            uint8_t *p = img->px + ((size_t)y * w + x) * ch;
            if (ch == 1) {
                p[0] = (uint8_t)((x * 7 + y * 3 + idx) & 255);
                continue;
            }
            p[0] = (uint8_t)((x * 255 / w + idx * 37) & 255);
            p[1] = (uint8_t)((y * 255 / h + idx * 11) & 255);
            p[2] = (uint8_t)(((x + y) * 3 + idx * 53) & 255);
        }
}

static void write_image(const char *dir, const char *name, const cz_image *img, cz_image_format f) {
    uint8_t *buf;
    size_t n;
    assert_int_equal(cz_image_encode(img, f, 90, &buf, &n), CZ_OK);
    write_bytes(dir, name, buf, n);
    free(buf);
}

static void colour_file(const char *dir, const char *name, int idx, cz_image_format f) {
    cz_image img;
    make_image(&img, 40 + (idx * 13) % 60, 30 + (idx * 7) % 50, 3, idx);
    write_image(dir, name, &img, f);
    cz_image_free(&img);
}

static void mkdir_p(const char *path) {
    assert_true(mkdir(path, 0755) == 0 || access(path, F_OK) == 0);
}

static int rm_cb(const char *p, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(p);
}

static int setup(void **state) {
    (void)state;
    snprintf(g_tmp, sizeof g_tmp, "/tmp/cz_dataset_XXXXXX");
    if (!mkdtemp(g_tmp)) return -1;
    snprintf(g_root, sizeof g_root, "%s/root", g_tmp);
    snprintf(g_clean, sizeof g_clean, "%s/clean", g_tmp);
    snprintf(g_asym, sizeof g_asym, "%s/asym", g_tmp);
    snprintf(g_valdir, sizeof g_valdir, "%s/val", g_tmp);
    snprintf(g_bad, sizeof g_bad, "%s/bad", g_tmp);
    snprintf(g_empty, sizeof g_empty, "%s/empty", g_tmp);
    snprintf(g_outside, sizeof g_outside, "%s/outside", g_tmp);
    const char *dirs[] = {g_root, g_clean, g_asym, g_valdir, g_bad, g_empty, g_outside};
    for (size_t i = 0; i < sizeof dirs / sizeof *dirs; i++)
        mkdir_p(dirs[i]);
    char sub[400], deep[400], name[64];
    snprintf(sub, sizeof sub, "%s/sub", g_root);
    snprintf(deep, sizeof deep, "%s/sub/deeper", g_root);
    mkdir_p(sub);
    mkdir_p(deep);

    /* 36 colour photos: root, sub/ and sub/deeper/, PNG and JPEG, mixed-case extensions */
    static const char *ext[] = {"png", "jpg", "JPG", "jpeg", "PNG", "Jpeg"};
    for (int i = 0; i < N_COLOUR; i++) {
        snprintf(name, sizeof name, "img%02d.%s", i, ext[i % 6]);
        const char *dir = i < 20 ? g_root : i < 30 ? sub : deep;
        colour_file(dir, name, i, i % 6 == 0 || i % 6 == 4 ? CZ_FMT_PNG : CZ_FMT_JPEG);
    }
    /* corrupt: noise named .jpg, a truncated PNG, an empty .jpg */
    uint8_t noise[512];
    uint64_t rs = 7;
    for (size_t i = 0; i < sizeof noise; i++)
        noise[i] = (uint8_t)tu_rand_u64(&rs);
    write_bytes(g_root, "corrupt_noise.jpg", noise, sizeof noise);
    cz_image img;
    make_image(&img, 50, 40, 3, 99);
    uint8_t *png;
    size_t n;
    assert_int_equal(cz_image_encode(&img, CZ_FMT_PNG, 0, &png, &n), CZ_OK);
    write_bytes(sub, "corrupt_truncated.png", png, n / 2);
    free(png);
    cz_image_free(&img);
    write_bytes(g_root, "corrupt_empty.jpg", "", 0);
    /* grayscale: a 1-channel PNG and an RGB JPEG with R == G == B */
    make_image(&img, 48, 32, 1, 3);
    write_image(g_root, "gray1.png", &img, CZ_FMT_PNG);
    cz_image rgb;
    assert_int_equal(cz_image_alloc(&rgb, 48, 32, 3), CZ_OK);
    for (int i = 0; i < 48 * 32; i++)
        memset(rgb.px + 3 * i, img.px[i], 3);
    write_image(sub, "gray3.jpg", &rgb, CZ_FMT_JPEG);
    cz_image_free(&rgb);
    cz_image_free(&img);
    /* ignored: non-images, a hidden image */
    write_bytes(g_root, "notes.txt", "hello", 5);
    write_bytes(sub, "README", "x", 1);
    colour_file(g_root, ".hidden.jpg", 1, CZ_FMT_JPEG);
    /* links: a loop, a folder and a file outside the root, a duplicate inside, a dangling one */
    colour_file(g_outside, "out.png", 5, CZ_FMT_PNG);
    char link[1024];
    snprintf(link, sizeof link, "%s/loop", deep);
    assert_int_equal(symlink("../..", link), 0);
    snprintf(link, sizeof link, "%s/outdir", g_root);
    assert_int_equal(symlink(g_outside, link), 0);
    snprintf(link, sizeof link, "%s/outfile.png", sub);
    char target[1024];
    snprintf(target, sizeof target, "%s/out.png", g_outside);
    assert_int_equal(symlink(target, link), 0);
    snprintf(link, sizeof link, "%s/alias.png", g_root);
    assert_int_equal(symlink("img00.png", link), 0);
    snprintf(link, sizeof link, "%s/dangling.jpg", g_root);
    assert_int_equal(symlink("nowhere.jpg", link), 0);

    for (int i = 0; i < 12; i++) {
        snprintf(name, sizeof name, "c%02d.png", i);
        colour_file(g_clean, name, 100 + i, CZ_FMT_PNG);
    }
    for (int i = 0; i < 5; i++) {
        snprintf(name, sizeof name, "v%d.jpg", i);
        colour_file(g_valdir, name, 200 + i, CZ_FMT_JPEG);
    }
    for (int i = 0; i < 4; i++) {
        snprintf(name, sizeof name, "b%d.png", i);
        write_bytes(g_bad, name, noise + i, 100);
    }
    write_bytes(g_empty, "readme.txt", "no images", 9);

    /* asymmetric 72x72 (= load for S 64): left half red, right half blue, a vertical ramp in
     * green so a vertical shift of the crop shows too */
    assert_int_equal(cz_image_alloc(&img, 72, 72, 3), CZ_OK);
    for (int y = 0; y < 72; y++)
        for (int x = 0; x < 72; x++) {
            uint8_t *p = img.px + (y * 72 + x) * 3;
            p[0] = x < 36 ? 230 : 20;
            p[1] = (uint8_t)(y * 3);
            p[2] = x < 36 ? 20 : 230;
        }
    write_image(g_asym, "asym.png", &img, CZ_FMT_PNG);
    cz_image_free(&img);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    nftw(g_tmp, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}

/* ---------- helpers ---------- */

static cz_dataset_config config(const char *root, int S, int B, uint64_t seed) {
    cz_dataset_config c;
    cz_dataset_config_default(&c);
    c.root = root;
    c.image_size = S;
    c.batch_size = B;
    c.seed = seed;
    return c;
}

static cz_dataset *open_ok(const cz_dataset_config *c) {
    cz_dataset *ds = NULL;
    cz_status s = cz_dataset_open(c, &ds);
    if (s != CZ_OK) fprintf(stderr, "open: %s\n", cz_error_detail());
    assert_int_equal(s, CZ_OK);
    assert_non_null(ds);
    return ds;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void range_check(const float *x, size_t n, float lo, float hi) {
    for (size_t i = 0; i < n; i++) {
        assert_true(isfinite(x[i]));
        assert_true(x[i] >= lo && x[i] <= hi);
    }
}

/* ---------- tests ---------- */

static void test_listing_counts(void **state) {
    (void)state;
    cz_dataset_config c = config(g_root, 32, 4, 1);
    c.workers = 3;
    cz_dataset *ds = open_ok(&c);
    cz_dataset_stats st;
    cz_dataset_get_stats(ds, &st);
    /* alias.png duplicates img00.png; hidden, non-image and outside files are not listed */
    assert_int_equal(st.files_found, N_COLOUR + N_CORRUPT + N_GRAY);
    assert_int_equal(st.train_files + st.val_files, st.files_found);
    assert_true(st.val_files >= 1);
    assert_int_equal(st.non_image, 2);
    assert_int_equal(st.links_refused, 4); /* loop, outside folder, outside file, dangling */
    assert_false(st.truncated);
    for (uint32_t i = 0; i < st.files_found; i++) {
        const char *p = cz_dataset_file_path(ds, i);
        assert_non_null(p);
        assert_null(strstr(p, "out.png"));
        assert_null(strstr(p, "hidden"));
        if (i) assert_true(strcmp(cz_dataset_file_path(ds, i - 1), p) < 0); /* sorted */
    }
    assert_null(cz_dataset_file_path(ds, (uint32_t)st.files_found));

    /* one full epoch of training plus a validation pass visit every file once */
    cz_batch b;
    assert_int_equal(cz_dataset_batch_alloc(ds, &b), CZ_OK);
    while (1) {
        assert_int_equal(cz_dataset_next_batch(ds, &b), CZ_OK);
        assert_int_equal(b.n, 4);
        cz_dataset_get_stats(ds, &st);
        if (st.epoch >= 1) break;
    }
    size_t cur = 0, nval = 0;
    cz_batch vb;
    assert_int_equal(cz_batch_alloc(&vb, 3, 32, 1, 2), CZ_OK);
    do {
        assert_int_equal(cz_dataset_val_batch(ds, &cur, &vb), CZ_OK);
        nval += (size_t)vb.n;
    } while (vb.n > 0);
    cz_dataset_get_stats(ds, &st);
    assert_int_equal(st.skipped_unreadable, N_CORRUPT);
    assert_int_equal(st.skipped_gray, N_GRAY);
    assert_int_equal(st.val_served, nval);
    assert_true(st.samples_served >= st.train_files - N_CORRUPT - N_GRAY);
    assert_int_equal(st.samples_served, 4 * st.batches);
    /* a second epoch re-reads nothing bad: the counts stay */
    for (int i = 0; i < 12; i++)
        assert_int_equal(cz_dataset_next_batch(ds, &b), CZ_OK);
    cz_dataset_stats st2;
    cz_dataset_get_stats(ds, &st2);
    assert_int_equal(st2.skipped_unreadable, N_CORRUPT);
    assert_int_equal(st2.skipped_gray, N_GRAY);
    cz_batch_free(&vb);
    cz_batch_free(&b);
    cz_dataset_destroy(ds);

    /* the cap on listed files */
    c.max_files = 10;
    ds = open_ok(&c);
    cz_dataset_get_stats(ds, &st);
    assert_int_equal(st.files_found, 10);
    assert_true(st.truncated);
    cz_dataset_destroy(ds);
}

static void test_shapes_and_ranges(void **state) {
    (void)state;
    for (int mode = 0; mode < 2; mode++) {
        cz_dataset_config c = config(g_root, 24, 5, 3);
        c.mode = mode ? CZ_COLOR_RGB : CZ_COLOR_LAB;
        cz_dataset *ds = open_ok(&c);
        assert_int_equal(cz_dataset_load_size(ds), (24 * 286 + 128) / 256);
        cz_batch b;
        assert_int_equal(cz_dataset_batch_alloc(ds, &b), CZ_OK);
        assert_int_equal(b.cap, 5);
        assert_int_equal(b.a_ch, mode ? 3 : 1);
        assert_int_equal(b.b_ch, mode ? 3 : 2);
        const size_t plane = 24 * 24;
        double chroma = 0;
        for (int it = 0; it < 4; it++) {
            assert_int_equal(cz_dataset_next_batch(ds, &b), CZ_OK);
            assert_int_equal(b.n, 5);
            range_check(b.A, 5 * b.a_ch * plane, -1.f, 1.f);
            range_check(b.B, 5 * b.b_ch * plane, -1.f, 1.f);
            for (int k = 0; k < 5; k++) {
                const float *A = b.A + k * b.a_ch * plane, *B = b.B + k * b.b_ch * plane;
                assert_true(b.info[k].crop_x >= 0 && b.info[k].crop_x <= 27 - 24);
                assert_true(b.info[k].crop_y >= 0 && b.info[k].crop_y <= 27 - 24);
                for (size_t i = 0; i < plane; i++) {
                    if (mode) { /* gray input replicated; colour output */
                        assert_true(A[i] == A[plane + i] && A[i] == A[2 * plane + i]);
                        chroma += fabsf(B[i] - B[plane + i]) + fabsf(B[plane + i] - B[2 * plane + i]);
                    } else {
                        chroma += fabsf(B[i]) + fabsf(B[plane + i]);
                    }
                }
            }
        }
        assert_true(chroma / (20.0 * plane) > 0.05); /* the samples are in colour */
        cz_batch_free(&b);
        cz_dataset_destroy(ds);
    }
    /* load size scales with S: 286 for 256, 72 for 64 */
    cz_dataset_config c = config(g_clean, 64, 1, 0);
    cz_dataset *ds = open_ok(&c);
    assert_int_equal(cz_dataset_load_size(ds), 72);
    cz_dataset_destroy(ds);
    c.image_size = 256;
    ds = open_ok(&c);
    assert_int_equal(cz_dataset_load_size(ds), 286);
    cz_dataset_destroy(ds);
}

/* nb batches of a fresh dataset copied out; its final stats into *st when st is not NULL */
static void draw_st(const cz_dataset_config *c, int nb, float **A, float **B, cz_sample_info **info,
                    cz_dataset_stats *st) {
    cz_dataset *ds = open_ok(c);
    cz_batch b;
    assert_int_equal(cz_dataset_batch_alloc(ds, &b), CZ_OK);
    const size_t asz = (size_t)b.cap * b.a_ch * b.size * b.size,
                 bsz = (size_t)b.cap * b.b_ch * b.size * b.size;
    *A = malloc(nb * asz * sizeof(float));
    *B = malloc(nb * bsz * sizeof(float));
    *info = malloc(nb * (size_t)b.cap * sizeof **info);
    for (int i = 0; i < nb; i++) {
        assert_int_equal(cz_dataset_next_batch(ds, &b), CZ_OK);
        memcpy(*A + i * asz, b.A, asz * sizeof(float));
        memcpy(*B + i * bsz, b.B, bsz * sizeof(float));
        memcpy(*info + i * b.cap, b.info, b.cap * sizeof **info);
    }
    if (st) cz_dataset_get_stats(ds, st);
    cz_batch_free(&b);
    cz_dataset_destroy(ds);
}

static void draw(const cz_dataset_config *c, int nb, float **A, float **B, cz_sample_info **info) {
    draw_st(c, nb, A, B, info, NULL);
}

static void test_reproducible(void **state) {
    (void)state;
    const int nb = 12, B = 4, S = 16; /* 48 samples: crosses an epoch boundary */
    const size_t asz = (size_t)nb * B * S * S, bsz = 2 * asz;
    cz_dataset_config c = config(g_root, S, B, 42);
    c.workers = 1;
    float *A1, *B1, *A2, *B2, *A3, *B3;
    cz_sample_info *i1, *i2, *i3;
    draw(&c, nb, &A1, &B1, &i1);
    c.workers = 4; /* other timing, same stream */
    c.ring = 5;
    draw(&c, nb, &A2, &B2, &i2);
    assert_memory_equal(A1, A2, asz * sizeof(float));
    assert_memory_equal(B1, B2, bsz * sizeof(float));
    assert_memory_equal(i1, i2, (size_t)nb * B * sizeof *i1);
    c.seed = 43;
    draw(&c, nb, &A3, &B3, &i3);
    assert_true(memcmp(A1, A3, asz * sizeof(float)) != 0);
    assert_true(memcmp(i1, i3, (size_t)nb * B * sizeof *i1) != 0);
    /* epochs differ in order: the first epoch's file order is not the second's */
    int e0 = 0, e1 = 0, same = 1;
    uint32_t f0[64], f1[64];
    for (int k = 0; k < nb * B; k++) {
        if (i1[k].epoch == 0 && e0 < 64) f0[e0++] = i1[k].file;
        if (i1[k].epoch == 1 && e1 < 64) f1[e1++] = i1[k].file;
    }
    assert_true(e0 > 0 && e1 > 0);
    for (int k = 0; k < e0 && k < e1; k++)
        same &= f0[k] == f1[k];
    assert_false(same);
    free(A1), free(B1), free(A2), free(B2), free(A3), free(B3), free(i1), free(i2), free(i3);
}

static void test_crop_and_flip(void **state) {
    (void)state;
    const int S = 64;
    cz_dataset_config c = config(g_asym, S, 1, 9);
    c.val_fraction = 0; /* the single file trains */
    cz_dataset *ds = open_ok(&c);
    assert_int_equal(cz_dataset_load_size(ds), 72);
    cz_image src;
    char *path = tu_path(g_asym, "asym.png");
    uint8_t *data;
    size_t len;
    assert_int_equal(cz_file_read(path, 0, &data, &len), CZ_OK);
    assert_int_equal(cz_image_decode(data, len, NULL, &src, NULL), CZ_OK);
    free(data);
    free(path);
    cz_batch b;
    assert_int_equal(cz_dataset_batch_alloc(ds, &b), CZ_OK);
    int flips = 0, xs_seen[9] = {0}, ys_seen[9] = {0};
    const size_t plane = (size_t)S * S;
    for (int it = 0; it < 24; it++) { /* one sample per epoch */
        assert_int_equal(cz_dataset_next_batch(ds, &b), CZ_OK);
        const cz_sample_info *in = &b.info[0];
        assert_int_equal(in->epoch, it);
        flips += in->flipped;
        xs_seen[in->crop_x] = 1;
        ys_seen[in->crop_y] = 1;
        /* every pixel is the source pixel the crop and flip say (72 -> 72 is an exact copy) */
        for (int y = 0; y < S; y += 3)
            for (int x = 0; x < S; x += 5) {
                int sx = in->crop_x + (in->flipped ? S - 1 - x : x), sy = in->crop_y + y;
                float lab[3];
                cz_srgb8_to_lab(src.px + ((size_t)sy * 72 + sx) * 3, lab);
                size_t o = (size_t)y * S + x;
                assert_float_equal(b.A[o], lab[0] / 50.f - 1.f, 1e-4);
                assert_float_equal(b.B[o], lab[1] / 110.f, 1e-4);
                assert_float_equal(b.B[plane + o], lab[2] / 110.f, 1e-4);
            }
        /* visibly: the left edge is red (a > 0, b > 0) unless flipped, then blue (b < 0) */
        if (in->flipped)
            assert_true(b.B[plane + 32 * S] < -0.3f);
        else
            assert_true(b.B[plane + 32 * S] > 0.3f);
    }
    assert_true(flips > 0 && flips < 24);
    int nx = 0, ny = 0;
    for (int i = 0; i < 9; i++)
        nx += xs_seen[i], ny += ys_seen[i];
    assert_true(nx > 1 && ny > 1);
    cz_batch_free(&b);
    cz_dataset_destroy(ds);

    /* no_flip turns the flip off */
    c.no_flip = 1;
    ds = open_ok(&c);
    assert_int_equal(cz_dataset_batch_alloc(ds, &b), CZ_OK);
    for (int it = 0; it < 8; it++) {
        assert_int_equal(cz_dataset_next_batch(ds, &b), CZ_OK);
        assert_int_equal(b.info[0].flipped, 0);
    }
    cz_batch_free(&b);
    cz_dataset_destroy(ds);
    cz_image_free(&src);
}

static void test_validation_split(void **state) {
    (void)state;
    cz_dataset_config c = config(g_root, 16, 2, 5);
    c.val_fraction = 0.25;
    cz_dataset *d1 = open_ok(&c);
    c.seed = 77; /* the split does not depend on the seed */
    cz_dataset *d2 = open_ok(&c);
    size_t nv = cz_dataset_val_count(d1), nt = cz_dataset_train_count(d1);
    assert_true(nv >= 3 && nv <= 25); /* ~10 of 41 */
    assert_int_equal(nv, cz_dataset_val_count(d2));
    assert_int_equal(nv + nt, N_COLOUR + N_CORRUPT + N_GRAY);
    for (size_t i = 0; i < nv; i++) {
        uint32_t v = cz_dataset_val_file(d1, i);
        assert_int_equal(v, cz_dataset_val_file(d2, i));
        for (size_t j = 0; j < nt; j++)
            assert_int_not_equal(v, cz_dataset_train_file(d1, j));
    }
    /* training samples never come from the validation split */
    cz_batch b;
    assert_int_equal(cz_dataset_batch_alloc(d1, &b), CZ_OK);
    for (int it = 0; it < 30; it++) {
        assert_int_equal(cz_dataset_next_batch(d1, &b), CZ_OK);
        for (int k = 0; k < b.n; k++)
            for (size_t i = 0; i < nv; i++)
                assert_int_not_equal(b.info[k].file, cz_dataset_val_file(d1, i));
    }
    /* validation: centre crop, no flip, fixed order, identical across passes and datasets */
    cz_batch v1, v2;
    assert_int_equal(cz_batch_alloc(&v1, 4, 16, 1, 2), CZ_OK);
    assert_int_equal(cz_batch_alloc(&v2, 4, 16, 1, 2), CZ_OK);
    size_t c1 = 0, c2 = 0;
    assert_int_equal(cz_dataset_val_batch(d1, &c1, &v1), CZ_OK);
    assert_int_equal(cz_dataset_val_batch(d2, &c2, &v2), CZ_OK);
    assert_true(v1.n > 0);
    assert_int_equal(v1.n, v2.n);
    assert_memory_equal(v1.A, v2.A, (size_t)v1.n * 256 * sizeof(float));
    assert_memory_equal(v1.B, v2.B, (size_t)v1.n * 512 * sizeof(float));
    for (int k = 0; k < v1.n; k++) {
        assert_int_equal(v1.info[k].flipped, 0);
        assert_int_equal(v1.info[k].crop_x, (18 - 16) / 2);
        assert_int_equal(v1.info[k].epoch, -1);
    }
    c1 = 0;
    assert_int_equal(cz_dataset_val_batch(d1, &c1, &v2), CZ_OK);
    assert_memory_equal(v1.B, v2.B, (size_t)v1.n * 512 * sizeof(float));
    cz_batch_free(&v1);
    cz_batch_free(&v2);
    cz_batch_free(&b);
    cz_dataset_destroy(d1);
    cz_dataset_destroy(d2);

    /* a separate validation folder */
    c = config(g_clean, 16, 2, 5);
    c.val_dir = g_valdir;
    cz_dataset *ds = open_ok(&c);
    assert_int_equal(cz_dataset_train_count(ds), 12);
    assert_int_equal(cz_dataset_val_count(ds), 5);
    assert_int_equal(strncmp(cz_dataset_file_path(ds, cz_dataset_val_file(ds, 0)), "val:", 4), 0);
    cz_dataset_destroy(ds);
}

/* The photo cache (cache_bytes): the same training and validation batches as without it over
 * three epochs, the later ones served from it; a cache with room for one photo holds one; and a
 * cached photo is not read again, so files replaced by garbage after the first epoch still
 * train (without the cache they are skipped). */
static void test_cache(void **state) {
    (void)state;
    const int B = 4, S = 16, nb = 9; /* 12 files: three epochs */
    const size_t asz = (size_t)nb * B * S * S, bsz = 2 * asz, one = 3 * 18 * 18; /* load 18 */
    cz_dataset_config c = config(g_clean, S, B, 11);
    c.val_fraction = 0;
    c.workers = 3;
    float *A0, *B0, *A1, *B1, *A2, *B2;
    cz_sample_info *i0, *i1, *i2;
    cz_dataset_stats st;
    draw_st(&c, nb, &A0, &B0, &i0, &st);
    assert_int_equal(st.cached_files, 0);
    assert_int_equal(st.cache_hits, 0);
    c.cache_bytes = (size_t)64 << 20;
    draw_st(&c, nb, &A1, &B1, &i1, &st);
    assert_memory_equal(A0, A1, asz * sizeof(float));
    assert_memory_equal(B0, B1, bsz * sizeof(float));
    assert_memory_equal(i0, i1, (size_t)nb * B * sizeof *i0);
    assert_int_equal(st.cached_files, 12);
    assert_int_equal(st.cache_bytes, 12 * one);
    assert_true(st.cache_hits > 0); /* how many depends on how far the three workers overlap */
    free(A1), free(B1), free(i1);
    /* one worker: epoch 0 is done before epoch 1 starts, so every later sample is a hit */
    c.workers = 1;
    draw_st(&c, nb, &A1, &B1, &i1, &st);
    assert_memory_equal(A0, A1, asz * sizeof(float));
    assert_int_equal(st.cached_files, 12);
    assert_true(st.cache_hits >= 24);
    c.cache_bytes = one + one / 2; /* room for one photo: the first one decoded */
    draw_st(&c, nb, &A2, &B2, &i2, &st);
    assert_memory_equal(A0, A2, asz * sizeof(float));
    assert_memory_equal(B0, B2, bsz * sizeof(float));
    assert_int_equal(st.cached_files, 1);
    assert_int_equal(st.cache_bytes, one);
    assert_true(st.cache_hits >= 2);
    free(A0), free(B0), free(A1), free(B1), free(A2), free(B2), free(i0), free(i1), free(i2);

    /* validation batches from the cache equal the decoded ones */
    c = config(g_clean, S, 2, 5);
    c.val_dir = g_valdir;
    cz_dataset *dn = open_ok(&c);
    c.cache_bytes = (size_t)1 << 20;
    cz_dataset *dc = open_ok(&c);
    cz_batch v0, v1;
    assert_int_equal(cz_batch_alloc(&v0, 5, S, 1, 2), CZ_OK);
    assert_int_equal(cz_batch_alloc(&v1, 5, S, 1, 2), CZ_OK);
    for (int pass = 0; pass < 2; pass++) {
        size_t k0 = 0, k1 = 0;
        assert_int_equal(cz_dataset_val_batch(dn, &k0, &v0), CZ_OK);
        assert_int_equal(cz_dataset_val_batch(dc, &k1, &v1), CZ_OK);
        assert_int_equal(v0.n, 5);
        assert_int_equal(v1.n, 5);
        assert_memory_equal(v0.A, v1.A, (size_t)5 * S * S * sizeof(float));
        assert_memory_equal(v0.B, v1.B, (size_t)5 * 2 * S * S * sizeof(float));
    }
    cz_dataset_get_stats(dc, &st);
    assert_true(st.cached_files >= 5); /* and the training files the workers prefetched meanwhile */
    assert_true(st.cache_hits >= 5);   /* the second validation pass */
    cz_batch_free(&v0);
    cz_batch_free(&v1);
    cz_dataset_destroy(dn);
    cz_dataset_destroy(dc);

    /* files replaced after they were cached: still served, from the cache */
    char dir[320], name[32];
    snprintf(dir, sizeof dir, "%s/cached", g_tmp);
    mkdir_p(dir);
    for (int i = 0; i < 3; i++) {
        snprintf(name, sizeof name, "p%d.png", i);
        colour_file(dir, name, 300 + i, CZ_FMT_PNG);
    }
    for (int cached = 0; cached < 2; cached++) {
        for (int i = 0; i < 3; i++) { /* fresh copies */
            snprintf(name, sizeof name, "p%d.png", i);
            colour_file(dir, name, 300 + i, CZ_FMT_PNG);
        }
        c = config(dir, S, 3, 9);
        c.val_fraction = 0;
        c.ring = 3; /* the workers run at most one batch ahead */
        c.cache_bytes = cached ? (size_t)1 << 20 : 0;
        cz_dataset *ds = open_ok(&c);
        cz_batch b;
        assert_int_equal(cz_dataset_batch_alloc(ds, &b), CZ_OK);
        assert_int_equal(cz_dataset_next_batch(ds, &b), CZ_OK); /* epoch 0: all three decoded */
        for (int i = 0; i < 3; i++) {
            snprintf(name, sizeof name, "p%d.png", i);
            write_bytes(dir, name, "not a png any more", 18);
        }
        /* two more batches: the second needs samples claimed after the files were replaced
         * (the first may come from samples the workers had already read) */
        cz_status s = CZ_OK;
        for (int k = 0; k < 2 && s == CZ_OK; k++) s = cz_dataset_next_batch(ds, &b);
        if (cached) {
            assert_int_equal(s, CZ_OK);
            assert_int_equal(b.n, 3);
            cz_dataset_get_stats(ds, &st);
            assert_int_equal(st.skipped_unreadable, 0);
            assert_true(st.cache_hits >= 3);
        } else {
            assert_int_equal(s, CZ_ERR_NOT_FOUND); /* every file now fails to decode */
        }
        cz_batch_free(&b);
        cz_dataset_destroy(ds);
    }
}

static void test_workers_keep_up(void **state) {
    (void)state;
    cz_dataset_config c = config(g_clean, 32, 4, 11);
    c.ring = 16;
    c.workers = 2;
    c.val_fraction = 0;
    cz_dataset *ds = open_ok(&c);
    cz_batch b;
    assert_int_equal(cz_dataset_batch_alloc(ds, &b), CZ_OK);
    assert_int_equal(cz_dataset_next_batch(ds, &b), CZ_OK); /* warm up */
    cz_dataset_stats st;
    for (int i = 0; i < 6000; i++) { /* bounded wait for the ring to fill again */
        cz_dataset_get_stats(ds, &st);
        if (st.ring_ready == st.ring_capacity) break;
        sleep_ms(10);
    }
    assert_int_equal(st.ring_capacity, 16);
    assert_int_equal(st.ring_ready, 16);
    uint64_t waits = st.consumer_waits;
    assert_int_equal(cz_dataset_next_batch(ds, &b), CZ_OK);
    cz_dataset_get_stats(ds, &st);
    assert_true(st.ready_at_last_request >= 4);
    assert_int_equal(st.consumer_waits, waits); /* served from the ring without blocking */
    cz_batch_free(&b);
    cz_dataset_destroy(ds);
}

static void test_destroy_anytime(void **state) {
    (void)state;
    cz_dataset_config c = config(g_root, 64, 8, 2);
    c.workers = 4;
    for (int round = 0; round < 3; round++) {
        cz_dataset *ds = open_ok(&c);
        if (round == 1) {
            cz_batch b;
            assert_int_equal(cz_dataset_batch_alloc(ds, &b), CZ_OK);
            assert_int_equal(cz_dataset_next_batch(ds, &b), CZ_OK);
            cz_batch_free(&b);
        } else if (round == 2) {
            sleep_ms(200); /* workers blocked on a full ring */
        }
        cz_dataset_destroy(ds); /* round 0: workers mid-decode */
    }
    cz_dataset_destroy(NULL);
}

static void test_bad_inputs(void **state) {
    (void)state;
    cz_dataset *ds = NULL;
    cz_dataset_config c = config(g_bad, 16, 2, 0);
    c.val_fraction = 0;
    ds = open_ok(&c);
    cz_batch b;
    assert_int_equal(cz_dataset_batch_alloc(ds, &b), CZ_OK);
    assert_int_equal(cz_dataset_next_batch(ds, &b), CZ_ERR_NOT_FOUND);
    cz_dataset_stats st;
    cz_dataset_get_stats(ds, &st);
    assert_int_equal(st.skipped_unreadable, 4);
    cz_batch_free(&b);
    cz_dataset_destroy(ds);

    c = config(g_empty, 16, 2, 0);
    assert_int_equal(cz_dataset_open(&c, &ds), CZ_ERR_NOT_FOUND);
    assert_null(ds);
    char *missing = tu_path(g_tmp, "missing");
    c.root = missing;
    assert_int_equal(cz_dataset_open(&c, &ds), CZ_ERR_NOT_FOUND);
    free(missing);
    c = config(g_clean, 4, 2, 0);
    assert_int_equal(cz_dataset_open(&c, &ds), CZ_ERR_CONFIG);
    c = config(g_clean, 16, 2, 0);
    c.val_fraction = 0.9;
    assert_int_equal(cz_dataset_open(&c, &ds), CZ_ERR_CONFIG);
    c = config(g_clean, 16, 8, 0);
    c.ring = 4;
    assert_int_equal(cz_dataset_open(&c, &ds), CZ_ERR_CONFIG);
    c = config(NULL, 16, 8, 0);
    assert_int_equal(cz_dataset_open(&c, &ds), CZ_ERR_CONFIG);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_listing_counts),   cmocka_unit_test(test_shapes_and_ranges),
        cmocka_unit_test(test_reproducible),     cmocka_unit_test(test_crop_and_flip),
        cmocka_unit_test(test_validation_split), cmocka_unit_test(test_workers_keep_up),
        cmocka_unit_test(test_destroy_anytime),  cmocka_unit_test(test_bad_inputs),
        cmocka_unit_test(test_cache),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
