/* test_train.c: unit tests of the training core on the `ref` backend (the oracle; other
 * backends are compared with PyTorch in test_train_golden.c):
 *   - PatchGAN: logit map sizes (256 -> 30x30, 64 -> 6x6), exact parameter counts, naming,
 *     init statistics, refusal of too-small inputs;
 *   - Adam against its closed form at t = 1 and 2, zero_grad, the linear lr policy;
 *   - the generator's training graph: export -> cz_unet_create gives the same eval output as
 *     the training graph's eval mode; import -> export is the identity;
 *   - mixed precision (bf16 activations, fp32 weights) on ref and dnnl: first-step losses
 *     within 3e-2 of fp32, and a bf16 run overfits a batch too;
 *   - pix2pix steps: G_L1 falls when overfitting one tiny batch for 30 steps, two runs with
 *     one seed agree bit for bit, a checkpoint resumes to the same next step, and a NaN or
 *     Inf in the batch gives CZ_ERR_NONFINITE without touching D's weights;
 *   - step halves (begin / stage / end) on every backend that starts here, cuda included where
 *     there is one (its queued losses and gated optimizer steps): see test_step_halves;
 *   - recorded steps (cuda only) == steps run op by op, bit for bit: see test_recorded_steps. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "gan.h"
#include "optim.h"
#include "patchgan.h"
#include "safetensors.h"
#include "testutil.h"
#include "unet.h"
#include "unet_train.h"

static cz_backend *ref(void) {
    cz_backend *be;
    assert_int_equal(cz_backend_create("ref", NULL, &be), CZ_OK);
    return be;
}

/* Serializes a writer and parses it back. */
static cz_safetensors *writer_to_st(cz_st_writer *w) {
    uint8_t *bytes;
    size_t len;
    assert_int_equal(cz_st_writer_bytes(w, &bytes, &len), CZ_OK);
    cz_safetensors *st;
    assert_int_equal(cz_st_parse(bytes, len, 1, &st), CZ_OK);
    free(bytes);
    return st;
}

/* ---------------------------------------------------------------- PatchGAN */

static void test_patchgan_sizes(void **state) {
    (void)state;
    cz_patchgan_arch a = cz_patchgan_arch_default(CZ_COLOR_LAB, 64);
    assert_int_equal(a.in_ch, 3);
    assert_int_equal(cz_patchgan_out_size(&a, 256), 30);
    assert_int_equal(cz_patchgan_out_size(&a, 64), 6);
    assert_int_equal(cz_patchgan_out_size(&a, 16), 0); /* 16 -> 8 -> 4 -> 2 -> 1 -> 0 */
    /* a real forward at 256 (small ndf to keep ref fast): 30x30 logits */
    cz_backend *be = ref();
    a.ndf = 2;
    cz_patchgan *d;
    assert_int_equal(cz_patchgan_create(be, &a, NULL, 3, &d), CZ_OK);
    assert_int_equal(cz_patchgan_plan(d, 1, 256, 256), CZ_OK);
    size_t n = 3 * 256 * 256;
    float *x = malloc(n * sizeof *x);
    tu_fill_uniform(x, n, 5, -1.f, 1.f);
    assert_int_equal(be->ops->tensor_write(be, cz_patchgan_input(d), x), CZ_OK);
    const cz_tensor *logits;
    assert_int_equal(cz_patchgan_forward(d, 1, &logits), CZ_OK);
    assert_int_equal(logits->n, 1);
    assert_int_equal(logits->c, 1);
    assert_int_equal(logits->h, 30);
    assert_int_equal(logits->w, 30);
    /* too small for three stride-2 convs and two stride-1 convs */
    assert_int_equal(cz_patchgan_plan(d, 1, 16, 16), CZ_ERR_INVALID_ARG);
    free(x);
    cz_patchgan_destroy(d);
    cz_backend_destroy(be);
}

static void test_patchgan_param_count(void **state) {
    (void)state;
    /* 70x70 PatchGAN, ndf 64, n_layers 3, BatchNorm (convs before BN have no bias):
     *   disc.0  3 -> 64:     64*3*16 + 64 bias          =     3,136
     *   disc.1  64 -> 128:   128*64*16 + 2*128 (BN)     =   131,328
     *   disc.2  128 -> 256:  256*128*16 + 2*256         =   524,800
     *   disc.3  256 -> 512:  512*256*16 + 2*512         = 2,098,176
     *   disc.4  512 -> 1:    1*512*16 + 1 bias          =     8,193
     *   total (lab, in_ch 1 + 2 = 3)                     = 2,765,633
     * rgb (in_ch 3 + 3 = 6) adds 64*3*16 = 3,072: 2,768,705, the "2.769 M" the reference
     * implementation prints for pix2pix's netD. torch_train.py selftest counts the torch
     * module's parameters and gets the same 2,765,633. */
    cz_patchgan_arch lab = cz_patchgan_arch_default(CZ_COLOR_LAB, 64);
    cz_patchgan_arch rgb = cz_patchgan_arch_default(CZ_COLOR_RGB, 64);
    assert_int_equal(cz_patchgan_param_count(&lab), 2765633);
    assert_int_equal(cz_patchgan_param_count(&rgb), 2768705);
    cz_unet_param_spec specs[CZ_PATCHGAN_MAX_PARAMS];
    int n = cz_patchgan_param_specs(&lab, specs, CZ_PATCHGAN_MAX_PARAMS);
    /* 5 weights + 2 biases + 3 BN x 4 */
    assert_int_equal(n, 19);
    assert_string_equal(specs[0].name, "disc.0.weight");
    assert_string_equal(specs[1].name, "disc.0.bias");
    assert_string_equal(specs[2].name, "disc.1.weight");
    assert_string_equal(specs[3].name, "disc.1.bn.weight");
    assert_string_equal(specs[6].name, "disc.1.bn.running_var");
    assert_string_equal(specs[n - 1].name, "disc.4.bias");
    assert_int_equal(specs[n - 2].shape[0], 1);
    assert_int_equal(specs[n - 2].shape[1], 512);
    /* init: weights N(0, 0.02), BN gamma N(1, 0.02), running var 1 */
    cz_backend *be = ref();
    cz_patchgan_arch small = cz_patchgan_arch_default(CZ_COLOR_LAB, 16);
    cz_patchgan *d;
    assert_int_equal(cz_patchgan_create(be, &small, NULL, 9, &d), CZ_OK);
    int np;
    cz_param *p = cz_patchgan_params(d, &np);
    for (int i = 0; i < np; i++) {
        size_t k = cz_param_numel(&p[i]);
        float *v = malloc(k * sizeof *v);
        assert_int_equal(cz_param_read(be, &p[i], 0, v), CZ_OK);
        double m = 0, sq = 0;
        for (size_t j = 0; j < k; j++) m += v[j];
        m /= (double)k;
        for (size_t j = 0; j < k; j++) sq += (v[j] - m) * (v[j] - m);
        double sd = sqrt(sq / (double)k);
        if (strstr(p[i].name, ".running_var")) assert_true(m == 1.0 && sd == 0.0);
        else if (strstr(p[i].name, "bn.weight")) assert_true(fabs(m - 1.0) < 0.02 && sd < 0.04);
        else if (p[i].ndim == 4 && k > 1000) assert_true(fabs(m) < 0.005 && fabs(sd - 0.02) < 0.003);
        free(v);
    }
    cz_patchgan_destroy(d);
    cz_backend_destroy(be);
}

/* ---------------------------------------------------------------- Adam */

static void test_adam_closed_form(void **state) {
    (void)state;
    cz_backend *be = ref();
    cz_param p;
    int64_t shape[1] = {3};
    assert_int_equal(cz_param_alloc(be, &p, "x", 1, shape, CZ_ROLE_VEC, 1), CZ_OK);
    float v0[3] = {1.f, -2.f, 0.5f}, g1[3] = {0.1f, -3.f, 0.f}, g2[3] = {0.2f, 1.f, -1e-3f};
    assert_int_equal(cz_param_write(be, &p, 0, v0), CZ_OK);
    cz_adam *opt;
    assert_int_equal(cz_adam_create(be, &p, 1, NULL, &opt), CZ_OK);
    assert_true(cz_adam_get_lr(opt) == 2e-4f);
    assert_int_equal(cz_param_write(be, &p, 1, g1), CZ_OK);
    assert_int_equal(cz_adam_step(opt), CZ_OK);
    assert_int_equal(cz_param_write(be, &p, 1, g2), CZ_OK);
    assert_int_equal(cz_adam_step(opt), CZ_OK);
    assert_int_equal(cz_adam_steps(opt), 2);
    float got[3];
    assert_int_equal(cz_param_read(be, &p, 0, got), CZ_OK);
    for (int i = 0; i < 3; i++) { /* torch.optim.Adam, written out */
        double m = 0, v = 0, x = v0[i], g[2] = {g1[i], g2[i]};
        for (int t = 1; t <= 2; t++) {
            m = 0.5 * m + 0.5 * g[t - 1];
            v = 0.999 * v + 0.001 * g[t - 1] * g[t - 1];
            x -= 2e-4 * (m / (1 - pow(0.5, t))) / (sqrt(v / (1 - pow(0.999, t))) + 1e-8);
        }
        assert_true(fabs(got[i] - x) < 1e-6);
    }
    assert_int_equal(cz_params_zero_grad(be, &p, 1), CZ_OK);
    assert_int_equal(cz_param_read(be, &p, 1, got), CZ_OK);
    assert_true(got[0] == 0.f && got[1] == 0.f && got[2] == 0.f);
    assert_int_equal(cz_params_count(&p, 1), 3);
    /* linear policy: constant for n_const steps, then down to base / (n_decay + 1) */
    assert_true(cz_lr_linear(1.f, 0, 10, 10) == 1.f);
    assert_true(cz_lr_linear(1.f, 9, 10, 10) == 1.f);
    assert_true(fabsf(cz_lr_linear(1.f, 10, 10, 10) - 10.f / 11.f) < 1e-7f);
    assert_true(fabsf(cz_lr_linear(1.f, 19, 10, 10) - 1.f / 11.f) < 1e-7f);
    assert_true(cz_lr_linear(1.f, 100, 10, 10) == 0.f);
    assert_true(cz_lr_linear(1.f, 100, 10, 0) == 1.f);
    cz_adam_destroy(opt);
    cz_param_free(be, &p);
    cz_backend_destroy(be);
}

/* ---------------------------------------------------------------- generator export */

static void test_unet_export_roundtrip(void **state) {
    (void)state;
    cz_backend *be = ref();
    cz_unet_arch a = cz_unet_arch_default(4, CZ_COLOR_LAB);
    a.depth = 6;
    cz_unet_train *g;
    assert_int_equal(cz_unet_train_create(be, &a, NULL, 21, &g), CZ_OK);
    const int N = 2, S = 64;
    assert_int_equal(cz_unet_train_plan(g, N, S, S), CZ_OK);
    size_t nin = (size_t)N * S * S, nout = 2 * nin;
    float *x = malloc(nin * sizeof *x), *y_train = malloc(nout * sizeof *y_train), *y_inf = malloc(nout * sizeof *y_inf);
    /* a few training forwards move the running statistics away from 0 / 1 */
    const cz_tensor *out;
    for (int k = 0; k < 3; k++) {
        tu_fill_uniform(x, nin, 100 + (uint64_t)k, -1.f, 1.f);
        assert_int_equal(be->ops->tensor_write(be, cz_unet_train_input(g), x), CZ_OK);
        assert_int_equal(cz_unet_train_forward(g, N, 1, (uint64_t)k, &out), CZ_OK);
    }
    tu_fill_uniform(x, nin, 7, -1.f, 1.f);
    assert_int_equal(be->ops->tensor_write(be, cz_unet_train_input(g), x), CZ_OK);
    assert_int_equal(cz_unet_train_forward(g, N, 0, 0, &out), CZ_OK);
    assert_int_equal(be->ops->tensor_read(be, out, y_train), CZ_OK);
    /* backward needs a training forward */
    assert_int_equal(cz_unet_train_backward(g, out, CZ_GRAD_OVERWRITE), CZ_ERR_INVALID_ARG);

    cz_st_writer *w;
    assert_int_equal(cz_st_writer_create(&w), CZ_OK);
    assert_int_equal(cz_unet_train_export(g, w), CZ_OK);
    cz_safetensors *st = writer_to_st(w);
    cz_st_writer_destroy(w);
    const cz_st_tensor *rv = cz_st_find(st, "down.2.bn.running_var");
    assert_non_null(rv);
    float rv0;
    memcpy(&rv0, rv->data, 4);
    assert_true(rv0 != 1.0f); /* running statistics were exported */

    cz_unet *u;
    assert_int_equal(cz_unet_create(be, st, CZ_F32, &u), CZ_OK);
    assert_int_equal(cz_unet_plan(u, N, S, S), CZ_OK);
    assert_int_equal(cz_unet_forward(u, N, S, S, x, y_inf), CZ_OK);
    double e = tu_rel_err(y_inf, y_train, nout);
    printf("eval mode of the training graph vs cz_unet (BN folded): rel err %.2e\n", e);
    assert_true(e < 1e-5);

    /* import -> export is the identity on every tensor */
    cz_unet_train *g2;
    assert_int_equal(cz_unet_train_create(be, NULL, st, 0, &g2), CZ_OK);
    assert_int_equal(cz_st_writer_create(&w), CZ_OK);
    assert_int_equal(cz_unet_train_export(g2, w), CZ_OK);
    cz_safetensors *st2 = writer_to_st(w);
    cz_st_writer_destroy(w);
    assert_int_equal(cz_st_count(st2), cz_st_count(st));
    for (size_t i = 0; i < cz_st_count(st); i++) {
        const cz_st_tensor *t1 = cz_st_at(st, i), *t2 = cz_st_find(st2, t1->name);
        assert_non_null(t2);
        assert_int_equal(t1->nbytes, t2->nbytes);
        assert_memory_equal(t1->data, t2->data, t1->nbytes);
    }
    /* a file of another architecture is refused by load */
    cz_unet_arch b = a;
    b.ngf = 8;
    cz_unet_train *g3;
    assert_int_equal(cz_unet_train_create(be, &b, NULL, 1, &g3), CZ_OK);
    assert_int_equal(cz_unet_train_load(g3, st), CZ_ERR_BAD_WEIGHTS);
    cz_unet_train_destroy(g3);
    cz_st_close(st2);
    cz_unet_train_destroy(g2);
    cz_unet_destroy(u);
    cz_st_close(st);
    cz_unet_train_destroy(g);
    free(x);
    free(y_train);
    free(y_inf);
    cz_backend_destroy(be);
}

/* ---------------------------------------------------------------- pix2pix steps */

/* A tiny lab batch: A a smooth luminance ramp, B colors correlated with it. */
static void tiny_batch(int n, int s, float *A, float *B) {
    for (int k = 0; k < n; k++)
        for (int y = 0; y < s; y++)
            for (int x = 0; x < s; x++) {
                float l = (float)(x + y) / (float)(2 * s) * 1.6f - 0.8f + 0.1f * (float)k;
                size_t i = ((size_t)k * s + y) * s + x;
                A[i] = l;
                B[((size_t)k * 2 + 0) * s * s + (size_t)y * s + x] = 0.4f * sinf(3.f * l);
                B[((size_t)k * 2 + 1) * s * s + (size_t)y * s + x] = -0.3f * l;
            }
}

/* ngf 4, ndf 4; depth 5 at 32x32 (no dropout level) or depth 6 at 64x64 (dropout on level 4). */
static cz_gan *tiny_gan(cz_backend *be, uint64_t seed, const cz_safetensors *init, int depth) {
    cz_gan_config c = cz_gan_config_default();
    c.seed = seed;
    c.ndf = 4;
    cz_unet_arch a = cz_unet_arch_default(4, CZ_COLOR_LAB);
    a.depth = depth;
    cz_gan *gan;
    if (cz_gan_create(be, &c, init ? NULL : &a, init, &gan) != CZ_OK) fail_msg("%s", cz_error_detail());
    int size = depth == 5 ? 32 : 64;
    assert_int_equal(cz_gan_plan(gan, 2, size, size), CZ_OK);
    return gan;
}

static void test_overfit_one_batch(void **state) {
    (void)state;
    cz_backend *be = ref();
    cz_gan *gan = tiny_gan(be, 5, NULL, 5);
    float A[2 * 32 * 32], B[2 * 2 * 32 * 32];
    tiny_batch(2, 32, A, B);
    cz_gan_losses L, first = {0};
    for (int t = 0; t < 30; t++) {
        assert_int_equal(cz_gan_step(gan, 2, A, B, &L), CZ_OK);
        if (t == 0) first = L;
        if (t % 5 == 0 || t == 29)
            printf("step %2d: G_GAN %.4f G_L1 %.4f D_real %.4f D_fake %.4f\n", t + 1, L.g_gan, L.g_l1, L.d_real,
                   L.d_fake);
    }
    assert_int_equal(cz_gan_steps(gan), 30);
    printf("G_L1 %.4f -> %.4f\n", first.g_l1, L.g_l1);
    assert_true(L.g_l1 < 0.8 * first.g_l1);
    cz_gan_destroy(gan);
    cz_backend_destroy(be);
}

/* Mixed precision: bf16 activations, fp32 weights. The first step's losses agree with fp32
 * within bf16's rounding, and the bf16 run still overfits a batch. On ref (bf16 storage, the
 * oracle's arithmetic), on dnnl (its bf16 kernels) and on cuda where there is one (a GPU, or
 * the emulator build of tests/gpu/emu_check.sh). */
static void test_mixed_precision(void **state) {
    (void)state;
    const char *names[3] = {"ref", "dnnl", "cuda"};
    for (int bi = 0; bi < 3; bi++) {
        cz_backend *be;
        if (cz_backend_create(names[bi], NULL, &be) != CZ_OK) {
            printf("skipped: %s not available\n", names[bi]);
            continue;
        }
        cz_gan *g32 = NULL, *g16 = NULL;
        for (int k = 0; k < 2; k++) {
            cz_gan_config c = cz_gan_config_default();
            c.seed = 9;
            c.ndf = 4;
            c.act_dtype = k ? CZ_BF16 : CZ_F32;
            cz_unet_arch a = cz_unet_arch_default(4, CZ_COLOR_LAB);
            a.depth = 5;
            cz_gan **gp = k ? &g16 : &g32;
            if (cz_gan_create(be, &c, &a, NULL, gp) != CZ_OK) fail_msg("%s", cz_error_detail());
            assert_int_equal(cz_gan_plan(*gp, 2, 32, 32), CZ_OK);
        }
        float A[2 * 32 * 32], B[2 * 2 * 32 * 32];
        tiny_batch(2, 32, A, B);
        cz_gan_losses l32, l16, first;
        assert_int_equal(cz_gan_step(g32, 2, A, B, &l32), CZ_OK);
        assert_int_equal(cz_gan_step(g16, 2, A, B, &l16), CZ_OK);
        double v32[4] = {l32.g_gan, l32.g_l1, l32.d_real, l32.d_fake}, v16[4] = {l16.g_gan, l16.g_l1, l16.d_real, l16.d_fake};
        for (int i = 0; i < 4; i++) {
            double rel = fabs(v16[i] - v32[i]) / fabs(v32[i]);
            printf("%s: loss %d fp32 %.6f bf16 %.6f rel %.2e\n", names[bi], i, v32[i], v16[i], rel);
            assert_true(rel < 3e-2);
        }
        first = l16;
        for (int t = 1; t < 30; t++) assert_int_equal(cz_gan_step(g16, 2, A, B, &l16), CZ_OK);
        printf("%s bf16: G_L1 %.4f -> %.4f over 30 steps\n", names[bi], first.g_l1, l16.g_l1);
        assert_true(l16.g_l1 < 0.8 * first.g_l1);
        cz_gan_destroy(g32);
        cz_gan_destroy(g16);
        cz_backend_destroy(be);
    }
}

static void test_determinism_and_resume(void **state) {
    (void)state;
    cz_backend *be = ref();
    static float A[2 * 64 * 64], B[2 * 2 * 64 * 64];
    tiny_batch(2, 64, A, B);
    cz_gan *g1 = tiny_gan(be, 77, NULL, 6), *g2 = tiny_gan(be, 77, NULL, 6);
    cz_gan_losses l1, l2;
    for (int t = 0; t < 2; t++) {
        assert_int_equal(cz_gan_step(g1, 2, A, B, &l1), CZ_OK);
        assert_int_equal(cz_gan_step(g2, 2, A, B, &l2), CZ_OK);
        assert_memory_equal(&l1, &l2, sizeof l1);
    }
    /* checkpoint g1 after 2 steps; a gan created from it takes the same 3rd step */
    cz_st_writer *w;
    assert_int_equal(cz_st_writer_create(&w), CZ_OK);
    assert_int_equal(cz_gan_save(g1, w), CZ_OK);
    cz_safetensors *ck = writer_to_st(w);
    cz_st_writer_destroy(w);
    assert_string_equal(cz_st_meta(ck, "train_step"), "2");
    cz_gan *g3 = tiny_gan(be, 77, ck, 6);
    assert_int_equal(cz_gan_steps(g3), 2);
    assert_int_equal(cz_gan_step(g1, 2, A, B, &l1), CZ_OK);
    assert_int_equal(cz_gan_step(g3, 2, A, B, &l2), CZ_OK);
    assert_memory_equal(&l1, &l2, sizeof l1);
    /* the checkpoint also serves inference */
    cz_unet *u;
    assert_int_equal(cz_unet_create(be, ck, CZ_F32, &u), CZ_OK);
    cz_unet_destroy(u);
    /* another seed draws other dropout masks: different losses */
    cz_gan *g4 = tiny_gan(be, 78, ck, 6);
    assert_int_equal(cz_gan_step(g4, 2, A, B, &l2), CZ_OK);
    assert_true(l1.g_l1 != l2.g_l1);
    cz_gan_destroy(g4);
    cz_st_close(ck);
    cz_gan_destroy(g3);
    cz_gan_destroy(g2);
    cz_gan_destroy(g1);
    cz_backend_destroy(be);
}

static void test_nonfinite(void **state) {
    (void)state;
    cz_backend *be = ref();
    cz_gan *gan = tiny_gan(be, 3, NULL, 5);
    float A[2 * 32 * 32], B[2 * 2 * 32 * 32];
    tiny_batch(2, 32, A, B);
    int np;
    cz_param *pd = cz_patchgan_params(cz_gan_discriminator(gan), &np);
    size_t k = cz_param_numel(&pd[0]);
    float *before = malloc(k * sizeof *before), *after = malloc(k * sizeof *after);
    assert_int_equal(cz_param_read(be, &pd[0], 0, before), CZ_OK);
    cz_gan_losses L;
    A[100] = NAN;
    assert_int_equal(cz_gan_step(gan, 2, A, B, &L), CZ_ERR_NONFINITE);
    printf("NaN in A: %s\n", cz_error_detail());
    assert_int_equal(cz_param_read(be, &pd[0], 0, after), CZ_OK);
    assert_memory_equal(before, after, k * sizeof *before); /* D not updated */
    assert_int_equal(cz_gan_steps(gan), 0);
    A[100] = 0.f;
    B[7] = INFINITY;
    assert_int_equal(cz_gan_step(gan, 2, A, B, &L), CZ_ERR_NONFINITE);
    printf("Inf in B: %s\n", cz_error_detail());
    free(before);
    free(after);
    cz_gan_destroy(gan);
    cz_backend_destroy(be);
}

/* The optimizer step counts a checkpoint records (opt_d. and opt_g.adam_step). */
static void adam_counts(cz_gan *gan, int *d, int *g) {
    cz_st_writer *w;
    assert_int_equal(cz_st_writer_create(&w), CZ_OK);
    assert_int_equal(cz_gan_save(gan, w), CZ_OK);
    cz_safetensors *ck = writer_to_st(w);
    cz_st_writer_destroy(w);
    *d = atoi(cz_st_meta(ck, "opt_d.adam_step"));
    *g = atoi(cz_st_meta(ck, "opt_g.adam_step"));
    cz_st_close(ck);
}

/* Step halves on every backend that starts here (ref and dnnl compute losses as they go; cuda,
 * on a GPU or the emulator, queues them and gates the optimizer steps on the device):
 *  - three steps on three different batches, each uploaded with cz_gan_stage while the step
 *    before is in flight, give exactly the losses of plain cz_gan_step (a staged upload that
 *    overtook the step in flight would change them);
 *  - a NaN in the batch fails the step with CZ_ERR_NONFINITE leaving D's weights, both
 *    optimizers' counts and the step count as they were; the next finite step then runs;
 *  - misuse is refused: end without begin, begin twice, begin(NULL) with nothing staged. */
static void test_step_halves(void **state) {
    (void)state;
    const char *names[3] = {"ref", "dnnl", "cuda"};
    enum { S = 32, N = 2, NB = 3 };
    static float A[NB][N * S * S], B[NB][N * 2 * S * S];
    for (int k = 0; k < NB; k++) {
        tiny_batch(N, S, A[k], B[k]);
        for (size_t i = 0; i < (size_t)N * S * S; i++) A[k][i] += 0.05f * (float)k * (float)((i * 7) % 5);
    }
    for (int bi = 0; bi < 3; bi++) {
        cz_backend *be;
        if (cz_backend_create(names[bi], NULL, &be) != CZ_OK) {
            printf("skipped: %s not available\n", names[bi]);
            continue;
        }
        const char *mode = be->ops->loss_queue ? "queued losses, gated optimizer" : "losses as they go";
        cz_gan *plain = tiny_gan(be, 21, NULL, 5), *piped = tiny_gan(be, 21, NULL, 5);
        cz_gan_losses lp, lq;
        assert_int_equal(cz_gan_stage(piped, N, A[0], B[0]), CZ_OK);
        for (int k = 0; k < NB; k++) {
            assert_int_equal(cz_gan_step(plain, N, A[k], B[k], &lp), CZ_OK);
            assert_int_equal(cz_gan_step_begin(piped, N, NULL, NULL), CZ_OK);
            if (k + 1 < NB) assert_int_equal(cz_gan_stage(piped, N, A[k + 1], B[k + 1]), CZ_OK);
            assert_int_equal(cz_gan_step_end(piped, &lq), CZ_OK);
            printf("%s (%s): step %d G_L1 plain %.9g staged %.9g\n", names[bi], mode, k + 1, lp.g_l1, lq.g_l1);
            assert_memory_equal(&lp, &lq, sizeof lp);
        }
        assert_int_equal(cz_gan_steps(piped), NB);
        /* misuse */
        assert_int_equal(cz_gan_step_end(piped, &lq), CZ_ERR_INVALID_ARG);
        assert_int_equal(cz_gan_step_begin(piped, N, NULL, NULL), CZ_ERR_INVALID_ARG);
        assert_int_equal(cz_gan_step_begin(piped, N, A[0], B[0]), CZ_OK);
        assert_int_equal(cz_gan_step_begin(piped, N, A[0], B[0]), CZ_ERR_INVALID_ARG);
        assert_int_equal(cz_gan_step_end(piped, &lq), CZ_OK);
        /* a NaN: nothing of D's or the optimizers' moves */
        int np, d0, g0, d1, g1;
        cz_param *pd = cz_patchgan_params(cz_gan_discriminator(plain), &np);
        size_t k0 = cz_param_numel(&pd[0]);
        float *before = malloc(k0 * sizeof *before), *after = malloc(k0 * sizeof *after);
        assert_non_null(before);
        assert_non_null(after);
        assert_int_equal(cz_param_read(be, &pd[0], 0, before), CZ_OK);
        adam_counts(plain, &d0, &g0);
        float keep = A[1][5];
        A[1][5] = NAN;
        assert_int_equal(cz_gan_step(plain, N, A[1], B[1], &lp), CZ_ERR_NONFINITE);
        printf("%s (%s): NaN in A: %s\n", names[bi], mode, cz_error_detail());
        A[1][5] = keep;
        assert_int_equal(cz_param_read(be, &pd[0], 0, after), CZ_OK);
        assert_memory_equal(before, after, k0 * sizeof *before);
        adam_counts(plain, &d1, &g1);
        assert_int_equal(d1, d0);
        assert_int_equal(g1, g0);
        assert_int_equal(cz_gan_steps(plain), NB);
        /* and the run goes on */
        assert_int_equal(cz_gan_step(plain, N, A[1], B[1], &lp), CZ_OK);
        assert_true(isfinite(lp.g_l1));
        assert_int_equal(cz_gan_steps(plain), NB + 1);
        adam_counts(plain, &d1, &g1);
        assert_int_equal(d1, d0 + 1);
        assert_int_equal(g1, g0 + 1);
        free(before);
        free(after);
        cz_gan_destroy(plain);
        cz_gan_destroy(piped);
        cz_backend_destroy(be);
    }
}

/* Recorded steps (gan.h): on a backend with step variables and recordings (cuda, on a GPU or
 * the emulator), a gan that records its steps gives exactly what one running every op does,
 * in fp32 and bf16 (where each replay converts the fp32 master weights again), over:
 *  - a learning rate that changes every step and a dropout level (depth 6), so the seed and
 *    the optimizers' values must come from the step variables, not the first recording;
 *  - an eval-mode forward (a validation) just before the step that records, which leaves G's
 *    converted weights current at that moment (bf16): the recording still converts them;
 *  - a NaN batch in the middle (the replayed optimizer steps are skipped, counts taken back);
 *  - a recording made stale by the backend's scratch memory growing (it is made again);
 *  - a second batch size, then the first again (one recording each).
 * Losses are compared bit for bit at every step, and whole checkpoints (weights, moments,
 * counts) at the end; the counts of recordings made, replayed and run op by op are checked. */
static void test_recorded_steps(void **state) {
    (void)state;
    cz_backend *be;
    if (cz_backend_create("cuda", NULL, &be) != CZ_OK) {
        printf("skipped: no GPU (cuda unavailable: %s); tests/gpu/emu_check.sh runs this on the emulator\n",
               cz_error_detail());
        return;
    }
    if (!be->ops->var_set) {
        cz_backend_destroy(be);
        fail_msg("cuda has no step variables");
    }
    enum { S = 64, N = 2, NB = 3, STEPS = 9 };
    static float A[NB][N * S * S], B[NB][N * 2 * S * S];
    for (int k = 0; k < NB; k++) {
        tiny_batch(N, S, A[k], B[k]);
        for (size_t i = 0; i < (size_t)N * S * S; i++) A[k][i] += 0.05f * (float)k * (float)((i * 3) % 7);
    }
    const cz_dtype dts[2] = {CZ_F32, CZ_BF16};
    for (int di = 0; di < 2; di++) {
        cz_gan *g[2];
        for (int k = 0; k < 2; k++) {
            cz_gan_config c = cz_gan_config_default();
            c.seed = 31;
            c.ndf = 4;
            c.n_layers = 1; /* a shorter D: fewer ops per step on the emulator */
            c.act_dtype = dts[di];
            c.unrecorded = k == 0;
            cz_unet_arch a = cz_unet_arch_default(4, CZ_COLOR_LAB);
            a.depth = 6;
            if (cz_gan_create(be, &c, &a, NULL, &g[k]) != CZ_OK) fail_msg("%s", cz_error_detail());
            assert_int_equal(cz_gan_plan(g[k], N, S, S), CZ_OK);
        }
        cz_tensor big = {0};
        for (int t = 1; t <= STEPS; t++) {
            int n = t == 7 || t == 8 ? N : 1, kb = t % NB; /* mostly batch 1, the setting of the batch-1 goal */
            float keep = A[kb][9];
            if (t == 4) A[kb][9] = NAN;
            if (t == 6) { /* grows the backend's reduction scratch: every recording goes stale */
                double l;
                assert_int_equal(cz_tensor_alloc(be, &big, dts[di], CZ_ROLE_ACT, 1, 1, 1024 << di, 1024), CZ_OK);
                assert_int_equal(be->ops->tensor_zero(be, &big), CZ_OK);
                assert_int_equal(be->ops->bce_logits_fwd(be, &big, 1.f, &l), CZ_OK);
            }
            cz_gan_losses L[2];
            cz_status st[2];
            for (int k = 1; k >= 0; k--) { /* the recorded gan first: nothing the other queues helps it */
                if (t == 2) { /* a validation pass converts G's weights: the recording must not rely on it */
                    const cz_tensor *out;
                    assert_int_equal(cz_unet_train_forward(cz_gan_generator(g[k]), N, 0, 0, &out), CZ_OK);
                }
                cz_gan_set_lr(g[k], 2e-4f * (1.f - 0.07f * (float)t));
                st[k] = cz_gan_step(g[k], n, A[kb], B[kb], &L[k]);
            }
            A[kb][9] = keep;
            cz_gan_record_stats r = cz_gan_recordings(g[1]);
            printf("cuda %s: step %d, %d images: G_L1 op by op %.9g, recorded %.9g (%ld made, %ld replays, %ld op by "
                   "op, %ld stale)\n",
                   cz_dtype_name(dts[di]), t, n, L[0].g_l1, L[1].g_l1, r.made, r.replays, r.unrecorded, r.stale);
            assert_int_equal(st[0], t == 4 ? CZ_ERR_NONFINITE : CZ_OK);
            assert_int_equal(st[1], st[0]);
            if (st[0] == CZ_OK) assert_memory_equal(&L[0], &L[1], sizeof L[0]);
        }
        cz_tensor_free(be, &big);
        cz_gan_record_stats r = cz_gan_recordings(g[1]), r0 = cz_gan_recordings(g[0]);
        /* 1 op by op (batch 1), 2 recorded + replayed, 3-5 replayed (4: NaN), 6 stale: recorded
         * again, 7 op by op (batch 2), 8 recorded, 9 replayed (batch 1) */
        assert_int_equal(r.unrecorded, 2);
        assert_int_equal(r.made, 3);
        assert_int_equal(r.replays, 7);
        assert_int_equal(r.stale, 1);
        assert_int_equal(r.failed, 0);
        assert_int_equal(r.active, 2);
        assert_int_equal(r0.made + r0.replays, 0);
        assert_int_equal(r0.unrecorded, 0); /* unrecorded gans do not use the step variables at all */
        assert_int_equal(cz_gan_steps(g[0]), STEPS - 1);
        assert_int_equal(cz_gan_steps(g[1]), STEPS - 1);
        uint8_t *bytes[2];
        size_t len[2];
        for (int k = 0; k < 2; k++) {
            cz_st_writer *w;
            assert_int_equal(cz_st_writer_create(&w), CZ_OK);
            assert_int_equal(cz_gan_save(g[k], w), CZ_OK);
            assert_int_equal(cz_st_writer_bytes(w, &bytes[k], &len[k]), CZ_OK);
            cz_st_writer_destroy(w);
        }
        assert_int_equal(len[0], len[1]);
        int same = memcmp(bytes[0], bytes[1], len[0]) == 0;
        printf("cuda %s: checkpoints after %d steps (%zu bytes: weights, moments, counts): %s\n", cz_dtype_name(dts[di]),
               STEPS, len[0], same ? "identical" : "DIFFERENT");
        assert_true(same);
        free(bytes[0]);
        free(bytes[1]);
        cz_gan_destroy(g[0]);
        cz_gan_destroy(g[1]);
    }
    cz_backend_destroy(be);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_patchgan_sizes),
        cmocka_unit_test(test_patchgan_param_count),
        cmocka_unit_test(test_adam_closed_form),
        cmocka_unit_test(test_unet_export_roundtrip),
        cmocka_unit_test(test_overfit_one_batch),
        cmocka_unit_test(test_mixed_precision),
        cmocka_unit_test(test_determinism_and_resume),
        cmocka_unit_test(test_nonfinite),
        cmocka_unit_test(test_step_halves),
        cmocka_unit_test(test_recorded_steps),
    };
    const char *only = getenv("CZ_TEST_FILTER"); /* e.g. test_recorded_steps: run that one alone */
    if (only && *only) cmocka_set_test_filter(only);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
