/* test_unet.c: U-Net architecture tables, weight validation messages, forward sanity and
 * batch invariance (an image's output is bit-identical alone and inside a batch of 8) on
 * every backend available here, fp32 and bf16; on cuda, recorded (CUDA graph) forward passes
 * against op-by-op ones and pipelined passes (two in flight) against synchronous ones; plans of
 * several shapes sharing one set of activation stores against unets planned alone. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "safetensors.h"
#include "testutil.h"
#include "unet.h"

/* Builds weights in memory; `mutate` may replace one tensor's data/shape or add one. */
typedef struct mutation {
    const char *name;    /* tensor to change (NULL: none) */
    int64_t shape0;      /* replacement first dim (0: keep) */
    int nan;             /* put a NaN in it */
    const char *extra;   /* add a tensor with this name */
    const char *drop;    /* leave this tensor out */
    const char *meta_k, *meta_v; /* override one metadata value */
} mutation;

static cz_safetensors *make_weights(const cz_unet_arch *a, const mutation *m, uint8_t **bytes) {
    cz_unet_param_spec specs[CZ_UNET_MAX_PARAMS];
    int n = cz_unet_param_specs(a, specs, CZ_UNET_MAX_PARAMS);
    cz_st_writer *w;
    assert_int_equal(cz_st_writer_create(&w), CZ_OK);
    assert_int_equal(cz_unet_arch_to_meta(a, w), CZ_OK);
    if (m && m->meta_k) assert_int_equal(cz_st_writer_meta(w, m->meta_k, m->meta_v), CZ_OK);
    uint64_t rng = 99;
    for (int i = 0; i < n; i++) {
        cz_unet_param_spec p = specs[i];
        if (m && m->drop && !strcmp(m->drop, p.name)) continue;
        if (m && m->name && !strcmp(m->name, p.name) && m->shape0) p.shape[0] = m->shape0;
        size_t k = 1;
        for (int d = 0; d < p.ndim; d++) k *= (size_t)p.shape[d];
        float *v = malloc(k * sizeof *v);
        int is_var = strstr(p.name, "running_var") != NULL;
        int fan_in = p.ndim == 4 ? (int)(p.shape[1] * 16) : 1;
        for (size_t j = 0; j < k; j++)
            v[j] = is_var ? tu_rand_uniform(&rng, 0.5f, 1.5f)
                   : p.ndim == 4 ? tu_rand_normal(&rng) * sqrtf(2.0f / (float)fan_in)
                                 : tu_rand_uniform(&rng, -0.2f, 0.2f) + (strstr(p.name, "bn.weight") ? 1.f : 0.f);
        if (m && m->nan && m->name && !strcmp(m->name, p.name)) v[k / 2] = NAN;
        assert_int_equal(cz_st_writer_add(w, p.name, CZ_ST_F32, p.ndim, p.shape, v, k * sizeof *v), CZ_OK);
        free(v);
    }
    if (m && m->extra) {
        float z = 0;
        int64_t one = 1;
        assert_int_equal(cz_st_writer_add(w, m->extra, CZ_ST_F32, 1, &one, &z, 4), CZ_OK);
    }
    size_t len;
    assert_int_equal(cz_st_writer_bytes(w, bytes, &len), CZ_OK);
    cz_st_writer_destroy(w);
    cz_safetensors *st = NULL;
    assert_int_equal(cz_st_parse(*bytes, len, 0, &st), CZ_OK);
    return st;
}

static void test_arch_tables(void **state) {
    (void)state;
    cz_unet_arch a = cz_unet_arch_default(64, CZ_COLOR_LAB);
    cz_unet_param_spec specs[CZ_UNET_MAX_PARAMS];
    int n = cz_unet_param_specs(&a, specs, CZ_UNET_MAX_PARAMS);
    /* 8 down weights + 6 down BN x4 + 8 up weights + 1 bias + 7 up BN x4 */
    assert_int_equal(n, 8 + 24 + 8 + 1 + 28);
    assert_string_equal(specs[0].name, "down.0.weight");
    assert_int_equal(specs[0].shape[0], 64);
    assert_int_equal(specs[0].shape[1], 1);
    int widths[8] = {64, 128, 256, 512, 512, 512, 512, 512};
    for (int i = 0; i < 8; i++) assert_int_equal(cz_unet_width(&a, i), widths[i]);
    /* 2 FLOP per multiply-add: 11.96 GFLOP per 256x256 image at ngf 64 in lab mode (1 -> 2),
     * 12.10 GFLOP in rgb mode (3 -> 3, the figure usually quoted for pix2pix) */
    double gf = cz_unet_flops(&a, 256, 256) / 1e9;
    assert_true(gf > 11.95 && gf < 11.97);
    cz_unet_arch rgb = cz_unet_arch_default(64, CZ_COLOR_RGB);
    gf = cz_unet_flops(&rgb, 256, 256) / 1e9;
    assert_true(gf > 12.09 && gf < 12.11);
    /* pix2pix's unet_256 (3 -> 3) is reported as 54.414 M parameters */
    assert_int_equal(cz_unet_param_count(&rgb), 54413955);
    /* parameters: known count of the 1->2 pix2pix U-Net at ngf 64 */
    size_t pc = cz_unet_param_count(&a);
    assert_true(pc > 54000000 && pc < 54500000);
    cz_unet_arch bad = a;
    bad.depth = 9;
    assert_int_equal(cz_unet_arch_validate(&bad), CZ_ERR_BAD_WEIGHTS);
    bad = a;
    bad.out_ch = 3;
    assert_int_equal(cz_unet_arch_validate(&bad), CZ_ERR_BAD_WEIGHTS);
}

static void expect_refused(const mutation *m, const char *needle) {
    cz_unet_arch a = cz_unet_arch_default(4, CZ_COLOR_LAB);
    a.depth = 5;
    uint8_t *bytes;
    cz_safetensors *st = make_weights(&a, m, &bytes);
    cz_backend *be;
    assert_int_equal(cz_backend_create("ref", NULL, &be), CZ_OK);
    cz_unet *u = NULL;
    assert_int_equal(cz_unet_create(be, st, CZ_F32, &u), CZ_ERR_BAD_WEIGHTS);
    assert_null(u);
    if (!strstr(cz_error_detail(), needle)) fail_msg("detail '%s' lacks '%s'", cz_error_detail(), needle);
    cz_backend_destroy(be);
    cz_st_close(st);
    free(bytes);
}

static void test_validation(void **state) {
    (void)state;
    expect_refused(&(mutation){.name = "down.2.weight", .shape0 = 7}, "down.2.weight: shape [7,8,4,4], expected [16,8,4,4]");
    expect_refused(&(mutation){.drop = "up.3.bn.running_var"}, "up.3.bn.running_var: tensor missing");
    expect_refused(&(mutation){.name = "up.1.weight", .nan = 1}, "up.1.weight: element");
    expect_refused(&(mutation){.extra = "down.9.weight"}, "down.9.weight: unexpected tensor");
    expect_refused(&(mutation){.meta_k = "color_mode", .meta_v = "cmyk"}, "color_mode");
    expect_refused(&(mutation){.meta_k = "ngf", .meta_v = "4x"}, "'ngf'");
    expect_refused(&(mutation){.meta_k = "format", .meta_v = "other"}, "format");
    /* other namespaces are ignored */
    cz_unet_arch a = cz_unet_arch_default(4, CZ_COLOR_LAB);
    a.depth = 5;
    uint8_t *bytes;
    cz_safetensors *st = make_weights(&a, &(mutation){.extra = "disc.0.weight"}, &bytes);
    cz_backend *be;
    assert_int_equal(cz_backend_create("ref", NULL, &be), CZ_OK);
    cz_unet *u = NULL;
    assert_int_equal(cz_unet_create(be, st, CZ_F32, &u), CZ_OK);
    cz_unet_destroy(u);
    cz_backend_destroy(be);
    cz_st_close(st);
    free(bytes);
}

/* Runs 8 random images as one batch and each alone; outputs must match bit for bit. With
 * `full`, every pass runs the plan's 8 images (cz_unet_set_full_batches): what the daemon does
 * on cuda, where a batch of 1 and one of 8 may get different cuDNN kernels; images 0 and 5 are
 * then run alone. */
static void check_batch_invariance(const char *backend, cz_dtype dt, int ngf, int depth, int size, int full) {
    cz_backend *be;
    if (cz_backend_create(backend, NULL, &be) != CZ_OK) {
        printf("skipped: backend %s not available: %s\n", backend, cz_error_detail());
        return;
    }
    if (!be->ops->supports(be, dt)) {
        printf("skipped: backend %s has no %s\n", backend, cz_dtype_name(dt));
        cz_backend_destroy(be);
        return;
    }
    cz_unet_arch a = cz_unet_arch_default(ngf, CZ_COLOR_LAB);
    a.depth = depth;
    uint8_t *bytes;
    cz_safetensors *st = make_weights(&a, NULL, &bytes);
    cz_unet *u;
    assert_int_equal(cz_unet_create(be, st, dt, &u), CZ_OK);
    cz_unet_set_full_batches(u, full);
    const int B = 8;
    size_t px = (size_t)size * size;
    float *in = malloc(B * px * sizeof *in), *out = malloc(B * 2 * px * sizeof *out);
    float *one = malloc(2 * px * sizeof *one);
    tu_fill_uniform(in, B * px, 7, -1.f, 1.f);
    assert_int_equal(cz_unet_plan(u, B, size, size), CZ_OK);
    assert_int_equal(cz_unet_forward(u, B, size, size, in, out), CZ_OK);
    double sum = 0;
    for (size_t i = 0; i < B * 2 * px; i++) {
        assert_true(isfinite(out[i]) && out[i] >= -1.f && out[i] <= 1.f);
        sum += fabs(out[i]);
    }
    assert_true(sum / (B * 2 * px) > 1e-3); /* not trivially zero */
    /* with full batches every pass below costs B images: the first and a middle one alone
     * (what matters there is that companions and position do not; the CPU emulator in CI
     * would take minutes for all eight) */
    for (int b = 0; b < B; b += full ? 5 : 1) {
        assert_int_equal(cz_unet_forward(u, 1, size, size, in + b * px, one), CZ_OK);
        if (memcmp(one, out + (size_t)b * 2 * px, 2 * px * sizeof *one)) {
            /* how far apart, so that a GPU run tells a rounding-order difference from a bug */
            size_t nd = 0;
            double worst = 0;
            for (size_t i = 0; i < 2 * px; i++) {
                double d = fabs((double)one[i] - (double)out[(size_t)b * 2 * px + i]);
                nd += d != 0 || isnan(d);
                if (!(d <= worst)) worst = d;
            }
            fail_msg("%s %s%s: image %d differs alone vs in a batch of %d: %zu of %zu values, largest |diff| %.3g",
                     backend, cz_dtype_name(dt), full ? " (full batches)" : "", b, B, nd, 2 * px, worst);
        }
    }
    /* a smaller batch through a view of the same plan, and a second identical run */
    assert_int_equal(cz_unet_forward(u, 3, size, size, in + 2 * px, out), CZ_OK);
    assert_int_equal(cz_unet_forward(u, 1, size, size, in + 3 * px, one), CZ_OK);
    assert_memory_equal(one, out + 2 * px, 2 * px * sizeof *one);
    printf("batch invariance ok: %s %s ngf %d depth %d %dx%d%s\n", backend, cz_dtype_name(dt), ngf, depth, size, size,
           full ? ", full batches" : "");
    free(in);
    free(out);
    free(one);
    cz_unet_destroy(u);
    cz_backend_destroy(be);
    cz_st_close(st);
    free(bytes);
}

static void test_batch_invariance(void **state) {
    (void)state;
    check_batch_invariance("ref", CZ_F32, 4, 6, 64, 0);
    check_batch_invariance("ref", CZ_F32, 4, 6, 64, 1);
    check_batch_invariance("dnnl", CZ_F32, 16, 8, 256, 0);
    check_batch_invariance("dnnl", CZ_BF16, 16, 8, 256, 0);
#ifdef CZ_HAVE_CUDA
    /* on an H200, fp32 held at the padded sizes; bf16 did not in the daemon (a batch of 1 and
     * of 8 differed by 1/255 in some pixels), hence full batches there (server.full_batches).
     * At 64x64, depth 6: the CPU emulator in CI runs this too, and check.sh step 3 checks bf16
     * batched == alone through the daemon at the real model's shapes */
    check_batch_invariance("cuda", CZ_F32, 16, 8, 256, 0);
    check_batch_invariance("cuda", CZ_BF16, 16, 6, 64, 1);
#endif
}

/* A cuda backend with recordings, or NULL after saying why the test is skipped. */
static cz_backend *recording_cuda(void) {
    cz_backend *be;
    if (cz_backend_create("cuda", NULL, &be) != CZ_OK) {
        printf("skipped: cuda not available: %s\n", cz_error_detail());
        return NULL;
    }
    if (!be->ops->record_begin) {
        printf("skipped: cuda has no recordings\n");
        cz_backend_destroy(be);
        return NULL;
    }
    return be;
}

/* Two models of one set of fresh ngf-4 depth-6 weights on be: *u as created (recording), *plain
 * running every op directly. The caller closes the returned weights and frees *bytes. */
static cz_safetensors *model_pair(cz_backend *be, cz_dtype dt, cz_unet **u, cz_unet **plain, uint8_t **bytes) {
    cz_unet_arch a = cz_unet_arch_default(4, CZ_COLOR_LAB);
    a.depth = 6;
    cz_safetensors *st = make_weights(&a, NULL, bytes);
    assert_int_equal(cz_unet_create(be, st, dt, u), CZ_OK);
    assert_int_equal(cz_unet_create(be, st, dt, plain), CZ_OK);
    cz_unet_set_recording(*plain, 0);
    return st;
}

/* Recordings (CUDA graphs; the emulator build runs them on the CPU): a model that records and
 * replays gives the same bits as one that runs every op, for every batch size (each padded to
 * its slot's size), a recording made stale by the backend growing a buffer it points into (a
 * bigger plan's convolution workspace) is made again, and both keep agreeing. Skipped without
 * a recording backend. */
static void test_recordings(void **state) {
    (void)state;
    const cz_dtype dts[2] = {CZ_F32, CZ_BF16};
    for (int di = 0; di < 2; di++) {
        cz_backend *be = recording_cuda(); /* a fresh instance per dtype: its buffers start small */
        if (!be) return;
        uint8_t *bytes;
        cz_unet *rec, *plain;
        cz_safetensors *st = model_pair(be, dts[di], &rec, &plain, &bytes);
        const int B = 5, S = 64;
        size_t px = (size_t)S * S;
        float *in = malloc(4 * B * px * sizeof *in), *o1 = malloc(4 * B * 2 * px * sizeof *o1);
        float *o0 = malloc(4 * B * 2 * px * sizeof *o0);
        tu_fill_uniform(in, 4 * B * px, 11, -1.f, 1.f);
        assert_int_equal(cz_unet_plan(rec, B, S, S), CZ_OK);
        assert_int_equal(cz_unet_plan(plain, B, S, S), CZ_OK);
        const int seq[] = {1, 3, 5, 2, 3, 1, 5, 4, 3, 2, 1, 5, 3};
        const int nseq = (int)(sizeof seq / sizeof seq[0]);
        for (int pass = 0; pass < 2; pass++) {
            if (pass == 1) { /* a bigger plan grows the backend's buffers (the convolution
                              * workspace among them): the recordings go stale */
                assert_int_equal(cz_unet_plan(rec, 1, 4 * S, 4 * S), CZ_OK);
                assert_int_equal(cz_unet_forward(rec, 1, 4 * S, 4 * S, in, o1), CZ_OK);
            }
            for (int k = 0; k < nseq; k++) {
                int n = seq[k];
                const float *x = in + (size_t)(k % 3) * px; /* different images every time */
                assert_int_equal(cz_unet_forward(rec, n, S, S, x, o1), CZ_OK);
                assert_int_equal(cz_unet_forward(plain, n, S, S, x, o0), CZ_OK);
                if (memcmp(o1, o0, (size_t)n * 2 * px * sizeof *o1))
                    fail_msg("%s: batch of %d (call %d, pass %d) differs recorded vs op by op",
                             cz_dtype_name(dts[di]), n, k, pass);
            }
        }
        cz_unet_rec_stats rs = cz_unet_recording_stats(rec), ps = cz_unet_recording_stats(plain);
        printf("recordings %s: %llu recorded, %llu replays, %llu op by op, %llu stale, %llu failed\n",
               cz_dtype_name(dts[di]), (unsigned long long)rs.recorded, (unsigned long long)rs.replays,
               (unsigned long long)rs.unrecorded, (unsigned long long)rs.stale, (unsigned long long)rs.failed);
        assert_true(rs.recorded >= 4); /* slots 1, 2, 4 and 5 */
        assert_true(rs.replays >= (uint64_t)nseq);
        assert_true(rs.stale >= 1);
        assert_int_equal(rs.failed, 0);
        assert_int_equal(ps.recorded + ps.replays, 0);
        free(in);
        free(o1);
        free(o0);
        cz_unet_destroy(rec);
        cz_unet_destroy(plain);
        cz_st_close(st);
        free(bytes);
        cz_backend_destroy(be);
    }
}

/* Pipelined passes (cz_unet_launch / cz_unet_wait) on cuda, two in flight with their own page-
 * locked buffers, switching between two plans: each output equals the synchronous forward
 * pass of the same input. On the emulator the upload, compute and download streams run
 * apart, so a missing event or a wait on the wrong stream gives stale or NaN outputs here. */
/* Full batches on a recording backend: whatever the batch size, every pass runs the plan's
 * max_batch images through the one recording of that size, and gives the bits of an op-by-op
 * model of normal batches. */
static void test_full_batches(void **state) {
    (void)state;
    cz_backend *be = recording_cuda();
    if (!be) return;
    uint8_t *bytes;
    cz_unet *full, *plain;
    cz_safetensors *st = model_pair(be, CZ_F32, &full, &plain, &bytes);
    cz_unet_set_full_batches(full, 1);
    const int B = 5, S = 64;
    size_t px = (size_t)S * S;
    /* B + 1 images: odd calls start one image in */
    float *in = malloc((B + 1) * px * sizeof *in), *o1 = malloc(B * 2 * px * sizeof *o1);
    float *o0 = malloc(B * 2 * px * sizeof *o0);
    tu_fill_uniform(in, (B + 1) * px, 13, -1.f, 1.f);
    assert_int_equal(cz_unet_plan(full, B, S, S), CZ_OK);
    assert_int_equal(cz_unet_plan(plain, B, S, S), CZ_OK);
    const int seq[] = {1, 3, 2, 5, 1, 4};
    for (int k = 0; k < 6; k++) {
        assert_int_equal(cz_unet_forward(full, seq[k], S, S, in + (size_t)(k % 2) * px, o1), CZ_OK);
        assert_int_equal(cz_unet_forward(plain, seq[k], S, S, in + (size_t)(k % 2) * px, o0), CZ_OK);
        assert_memory_equal(o1, o0, (size_t)seq[k] * 2 * px * sizeof *o1);
    }
    cz_unet_rec_stats rs = cz_unet_recording_stats(full);
    printf("full batches: %llu recorded, %llu replays, %llu op by op\n", (unsigned long long)rs.recorded,
           (unsigned long long)rs.replays, (unsigned long long)rs.unrecorded);
    assert_int_equal(rs.recorded, 1); /* the max_batch slot alone */
    assert_int_equal(rs.unrecorded, 1);
    assert_int_equal(rs.replays, 5);
    free(in);
    free(o1);
    free(o0);
    cz_unet_destroy(full);
    cz_unet_destroy(plain);
    cz_backend_destroy(be);
    cz_st_close(st);
    free(bytes);
}

static void test_pipelined(void **state) {
    (void)state;
    cz_backend *be;
    if (cz_backend_create("cuda", NULL, &be) != CZ_OK) {
        printf("skipped: cuda not available: %s\n", cz_error_detail());
        return;
    }
    cz_unet_arch a = cz_unet_arch_default(4, CZ_COLOR_LAB);
    a.depth = 6;
    uint8_t *bytes;
    cz_safetensors *st = make_weights(&a, NULL, &bytes);
    cz_unet *u;
    assert_int_equal(cz_unet_create(be, st, CZ_BF16, &u), CZ_OK);
    assert_true(cz_unet_async(u));
    const int B = 3, S[2] = {64, 128}, K = 10;
    assert_int_equal(cz_unet_plan(u, B, S[0], S[0]), CZ_OK);
    assert_int_equal(cz_unet_plan(u, B, S[1], S[1]), CZ_OK);
    size_t big = (size_t)B * S[1] * S[1];
    float *in = malloc((size_t)K * big * sizeof *in), *want = malloc((size_t)K * 2 * big * sizeof *want);
    tu_fill_uniform(in, (size_t)K * big, 12, -1.f, 1.f);
    cz_host_buf hin[2] = {{0}}, hout[2] = {{0}};
    for (int i = 0; i < 2; i++) {
        assert_int_equal(cz_host_buf_reserve(be, &hin[i], big * sizeof(float)), CZ_OK);
        assert_int_equal(cz_host_buf_reserve(be, &hout[i], 2 * big * sizeof(float)), CZ_OK);
    }
    /* pass k: batch 1 + k % B, the size switching every other pass */
    for (int k = 0; k < K; k++) {
        int n = 1 + k % B, sz = S[(k / 2) % 2];
        assert_int_equal(cz_unet_forward(u, n, sz, sz, in + (size_t)k * big, want + (size_t)k * 2 * big), CZ_OK);
    }
    uint64_t ticket[2] = {0, 0};
    int pending[2] = {-1, -1};
    for (int k = 0; k <= K; k++) {
        int slot = k % 2;
        if (k < K) {
            int n = 1 + k % B, sz = S[(k / 2) % 2];
            memcpy(hin[slot].p, in + (size_t)k * big, (size_t)n * sz * sz * sizeof(float));
            assert_int_equal(cz_unet_launch(u, n, sz, sz, hin[slot].p, hout[slot].p, &ticket[slot]), CZ_OK);
            pending[slot] = k;
        }
        int prev = 1 - slot; /* collect the pass before this one, after this one was launched */
        if (pending[prev] >= 0) {
            int j = pending[prev], n = 1 + j % B, sz = S[(j / 2) % 2];
            assert_int_equal(cz_unet_wait(u, ticket[prev]), CZ_OK);
            if (memcmp(hout[prev].p, want + (size_t)j * 2 * big, (size_t)n * 2 * sz * sz * sizeof(float)))
                fail_msg("pipelined pass %d (batch %d at %d) differs from the synchronous one", j, n, sz);
            pending[prev] = -1;
        }
    }
    printf("pipelined: %d passes, two in flight, equal to synchronous ones\n", K);
    for (int i = 0; i < 2; i++) {
        cz_host_buf_free(be, &hin[i]);
        cz_host_buf_free(be, &hout[i]);
    }
    free(in);
    free(want);
    cz_unet_destroy(u);
    cz_st_close(st);
    free(bytes);
    cz_backend_destroy(be);
}

/* Activation stores shared between plans: a unet planned at three shapes (square, wide, tall)
 * holds exactly the bytes of one planned at the largest alone, and every shape's output equals,
 * bit for bit, that of a unet planned at that shape alone, whatever ran in between. A store grown by a later, larger plan (which drops the
 * recordings where the backend records) leaves the smaller plans' results as they were. */
static void check_shared_stores(const char *backend, cz_dtype dt) {
    cz_backend *be;
    if (cz_backend_create(backend, NULL, &be) != CZ_OK) {
        printf("skipped: %s not available: %s\n", backend, cz_error_detail());
        return;
    }
    cz_unet_arch a = cz_unet_arch_default(4, CZ_COLOR_LAB);
    a.depth = 5;
    uint8_t *bytes;
    cz_safetensors *st = make_weights(&a, NULL, &bytes);
    enum { NS = 3, B = 2, MAXPX = 64 * 64 };
    const int H[NS] = {64, 32, 64}, W[NS] = {64, 64, 32};
    cz_unet *sh, *alone[NS];
    assert_int_equal(cz_unet_create(be, st, dt, &sh), CZ_OK);
    for (int k = 0; k < NS; k++) {
        assert_int_equal(cz_unet_create(be, st, dt, &alone[k]), CZ_OK);
        assert_int_equal(cz_unet_plan(alone[k], B, H[k], W[k]), CZ_OK);
        assert_int_equal(cz_unet_plan(sh, B, H[k], W[k]), CZ_OK);
    }
    assert_int_equal(cz_unet_plan_count(sh), NS);
    assert_int_equal(cz_unet_plan_bytes(sh), cz_unet_plan_bytes(alone[0]));
    size_t shared = cz_unet_plan_bytes(sh),
           apart = cz_unet_plan_bytes(alone[0]) + cz_unet_plan_bytes(alone[1]) + cz_unet_plan_bytes(alone[2]);
    assert_true(shared < apart);
    float *in = malloc((size_t)B * MAXPX * sizeof *in), *got = malloc((size_t)B * 2 * MAXPX * sizeof *got);
    float *want = malloc((size_t)B * 2 * MAXPX * sizeof *want);
    const int seq[] = {0, 1, 2, 0, 2, 1, 1, 0};
    for (int j = 0; j < (int)(sizeof seq / sizeof *seq); j++) {
        int k = seq[j], n = 1 + j % B;
        size_t px = (size_t)H[k] * W[k];
        tu_fill_uniform(in, (size_t)n * px, 40 + (uint64_t)j, -1.f, 1.f);
        assert_int_equal(cz_unet_forward(sh, n, H[k], W[k], in, got), CZ_OK);
        assert_int_equal(cz_unet_forward(alone[k], n, H[k], W[k], in, want), CZ_OK);
        if (memcmp(got, want, (size_t)n * 2 * px * sizeof *got))
            fail_msg("%s %s: pass %d (%d images at %dx%d) differs with shared stores", backend, cz_dtype_name(dt), j,
                     n, W[k], H[k]);
    }
    /* growth: a plan twice the size moves every store; the three shapes still give the same */
    cz_unet_rec_stats before = cz_unet_recording_stats(sh);
    assert_int_equal(cz_unet_plan(sh, B, 128, 64), CZ_OK);
    tu_fill_uniform(in, (size_t)MAXPX, 60, -1.f, 1.f);
    float *big = malloc((size_t)2 * 128 * 64 * sizeof *big);
    assert_int_equal(cz_unet_forward(sh, 1, 128, 64, in, big), CZ_OK);
    free(big);
    for (int k = 0; k < NS; k++) {
        size_t px = (size_t)H[k] * W[k];
        tu_fill_uniform(in, (size_t)B * px, 70 + (uint64_t)k, -1.f, 1.f);
        for (int rep = 0; rep < 2; rep++) { /* where the backend records: op by op, then recorded */
            assert_int_equal(cz_unet_forward(sh, B, H[k], W[k], in, got), CZ_OK);
            assert_int_equal(cz_unet_forward(alone[k], B, H[k], W[k], in, want), CZ_OK);
            if (memcmp(got, want, (size_t)B * 2 * px * sizeof *got))
                fail_msg("%s %s: %dx%d differs after the stores grew (run %d)", backend, cz_dtype_name(dt), W[k],
                         H[k], rep);
        }
    }
    cz_unet_rec_stats after = cz_unet_recording_stats(sh);
    if (be->ops->record_begin) assert_true(after.stale > before.stale); /* their recordings went */
    printf("shared stores ok: %s %s, %d shapes in %.1f KiB (%.1f KiB apart), recordings %llu made, %llu dropped\n",
           backend, cz_dtype_name(dt), NS, (double)shared / 1024.0, (double)apart / 1024.0,
           (unsigned long long)after.recorded, (unsigned long long)after.stale);
    free(in);
    free(got);
    free(want);
    for (int k = 0; k < NS; k++) cz_unet_destroy(alone[k]);
    cz_unet_destroy(sh);
    cz_st_close(st);
    free(bytes);
    cz_backend_destroy(be);
}

static void test_shared_stores(void **state) {
    (void)state;
    check_shared_stores("ref", CZ_F32);
    check_shared_stores("dnnl", CZ_F32);
    check_shared_stores("dnnl", CZ_BF16);
#ifdef CZ_HAVE_CUDA
    check_shared_stores("cuda", CZ_F32);
    check_shared_stores("cuda", CZ_BF16);
#endif
}

static void test_plan_errors(void **state) {
    (void)state;
    cz_backend *be;
    assert_int_equal(cz_backend_create("ref", NULL, &be), CZ_OK);
    cz_unet_arch a = cz_unet_arch_default(4, CZ_COLOR_LAB);
    a.depth = 5;
    uint8_t *bytes;
    cz_safetensors *st = make_weights(&a, NULL, &bytes);
    cz_unet *u;
    assert_int_equal(cz_unet_create(be, st, CZ_F32, &u), CZ_OK);
    assert_int_equal(cz_unet_plan(u, 2, 48, 32), CZ_ERR_INVALID_ARG); /* 48 not a multiple of 32 */
    float x[32 * 32], y[2 * 32 * 32];
    assert_int_equal(cz_unet_forward(u, 1, 32, 32, x, y), CZ_ERR_INVALID_ARG); /* not planned */
    assert_int_equal(cz_unet_plan(u, 2, 32, 32), CZ_OK);
    assert_int_equal(cz_unet_forward(u, 3, 32, 32, x, y), CZ_ERR_INVALID_ARG); /* above max_batch */
    /* LRU eviction keeps at most CZ_UNET_MAX_PLANS plans and stays usable */
    for (int k = 1; k <= CZ_UNET_MAX_PLANS + 2; k++) assert_int_equal(cz_unet_plan(u, 1, 32 * k, 32), CZ_OK);
    assert_int_equal(cz_unet_plan(u, 1, 32, 32), CZ_OK);
    memset(x, 0, sizeof x);
    assert_int_equal(cz_unet_forward(u, 1, 32, 32, x, y), CZ_OK);
    /* a kept plan survives any number of other sizes; when every plan is kept, a new size is
     * refused and the kept ones still work */
    assert_int_equal(cz_unet_plan_keep(u, 32, 32), CZ_OK);
    assert_int_equal(cz_unet_plan_keep(u, 64, 64), CZ_ERR_INVALID_ARG); /* not planned */
    for (int k = 1; k <= 2 * CZ_UNET_MAX_PLANS; k++) assert_int_equal(cz_unet_plan(u, 1, 32, 32 * k + 32), CZ_OK);
    assert_true(cz_unet_has_plan(u, 1, 32, 32));
    assert_false(cz_unet_has_plan(u, 2, 32, 32));
    assert_int_equal(cz_unet_plan_count(u), CZ_UNET_MAX_PLANS);
    assert_int_equal(cz_unet_plan(u, 2, 32, 32), CZ_OK); /* grown in place: still kept */
    for (int k = 2; k <= CZ_UNET_MAX_PLANS; k++) {
        assert_int_equal(cz_unet_plan(u, 1, 64 * k, 32), CZ_OK);
        assert_int_equal(cz_unet_plan_keep(u, 64 * k, 32), CZ_OK);
    }
    assert_int_equal(cz_unet_plan(u, 1, 96, 96), CZ_ERR_UNAVAILABLE);
    assert_non_null(strstr(cz_error_detail(), "kept"));
    assert_int_equal(cz_unet_forward(u, 1, 32, 32, x, y), CZ_OK);
    cz_unet_destroy(u);
    cz_unet_destroy(NULL);
    cz_backend_destroy(be);
    cz_st_close(st);
    free(bytes);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_arch_tables),
        cmocka_unit_test(test_validation),
        cmocka_unit_test(test_plan_errors),
        cmocka_unit_test(test_batch_invariance),
        cmocka_unit_test(test_recordings),
        cmocka_unit_test(test_full_batches),
        cmocka_unit_test(test_pipelined),
        cmocka_unit_test(test_shared_stores),
    };
    const char *only = getenv("CZ_TEST_FILTER"); /* e.g. test_batch_invariance (tests/gpu/check.sh) */
    if (only && *only) cmocka_set_test_filter(only);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
