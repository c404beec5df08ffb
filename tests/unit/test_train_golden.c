/* test_train_golden.c: one pix2pix training step of our engine against an independent PyTorch
 * implementation (tests/golden/torch_train.py, float64): the same G and D weights, the same
 * batch and the same dropout masks (torch regenerates our RNG's masks, see torch_train.py).
 * Compared on every backend that implements all training ops (others are skipped with a
 * line saying why): the four losses of step 1, every parameter gradient of G and D after
 * step 1, and the four losses of each of five consecutive steps; each within fp32 relative
 * error 1e-4 (per tensor: ||ours - torch|| / ||torch||). Every figure is printed.
 * Fixture: tests/golden/data/train_lab_ngf4_ndf8_d6.safetensors, written by
 * tests/golden/make_train_fixture.py (see its header for the contents). */
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
#include "safetensors.h"
#include "testutil.h"

#define FIXTURE "tests/golden/data/train_lab_ngf4_ndf8_d6.safetensors"
#define TOL 1e-4

static const char *const k_loss_names[4] = {"G_GAN", "G_L1", "D_real", "D_fake"};

static float *tensor_f32(const cz_safetensors *st, const char *name, size_t *n) {
    const cz_st_tensor *t = cz_st_find(st, name);
    if (!t) fail_msg("fixture has no %s", name);
    *n = cz_st_numel(t);
    float *v = malloc(*n * sizeof *v);
    assert_non_null(v);
    assert_int_equal(cz_st_to_f32(t, v, *n), CZ_OK);
    return v;
}

static long meta_long(const cz_safetensors *st, const char *key) {
    const char *v = cz_st_meta(st, key);
    if (!v) fail_msg("fixture metadata has no %s", key);
    return strtol(v, NULL, 10);
}

/* Compares every learnable parameter's gradient; returns the worst relative error. */
static double check_grads(cz_backend *be, cz_param *params, int np, const cz_safetensors *st, int *count) {
    double worst = 0;
    for (int i = 0; i < np; i++) {
        cz_param *p = &params[i];
        if (!cz_param_learnable(p)) continue;
        char name[80];
        snprintf(name, sizeof name, "grad.%s", p->name);
        size_t n;
        float *want = tensor_f32(st, name, &n);
        assert_int_equal(n, cz_param_numel(p));
        float *got = malloc(n * sizeof *got);
        assert_int_equal(cz_param_read(be, p, 1, got), CZ_OK);
        double e = tu_rel_err(got, want, n);
        printf("  grad %-24s %7zu values  rel err %.2e\n", p->name, n, e);
        if (!(e < TOL)) fail_msg("gradient of %s: relative error %.3e >= %.0e", p->name, e, TOL);
        if (e > worst) worst = e;
        (*count)++;
        free(want);
        free(got);
    }
    return worst;
}

static void test_pix2pix_step_vs_torch(void **state) {
    (void)state;
    char *path = tu_path(tu_source_dir(), FIXTURE);
    cz_safetensors *st = NULL;
    if (cz_st_open(path, &st) != CZ_OK) fail_msg("%s: %s", path, cz_error_detail());
    size_t na, nb, nl;
    float *A = tensor_f32(st, "fixture.A", &na), *B = tensor_f32(st, "fixture.B", &nb);
    const cz_st_tensor *tl = cz_st_find(st, "expected.losses");
    assert_non_null(tl);
    nl = cz_st_numel(tl);
    float *expect = tensor_f32(st, "expected.losses", &nl);
    const cz_st_tensor *ta = cz_st_find(st, "fixture.A");
    int batch = (int)ta->shape[0], size = (int)ta->shape[2];
    int steps = (int)meta_long(st, "fixture_steps");
    assert_int_equal((int)nl, steps * 4);

    cz_gan_config cfg = cz_gan_config_default();
    cfg.seed = (uint64_t)meta_long(st, "fixture_seed");
    cfg.lambda_l1 = (float)strtod(cz_st_meta(st, "fixture_lambda"), NULL);
    const char *const *names = cz_backend_names();
    int ran = 0;
    for (int bi = 0; names[bi]; bi++) {
        cz_backend *be;
        if (cz_backend_create(names[bi], NULL, &be) != CZ_OK) {
            printf("skipped: %s: %s\n", names[bi], cz_error_detail());
            continue;
        }
        cz_gan *gan = NULL;
        cz_status s = cz_gan_create(be, &cfg, NULL, st, &gan);
        if (s == CZ_ERR_UNSUPPORTED) {
            printf("skipped: %s cannot train yet: %s\n", names[bi], cz_error_detail());
            cz_backend_destroy(be);
            continue;
        }
        if (s != CZ_OK) fail_msg("%s: %s", names[bi], cz_error_detail());
        assert_int_equal(cz_gan_plan(gan, batch, size, size), CZ_OK);
        double worst_loss = 0, worst_grad = 0;
        int ngrad = 0;
        for (int t = 0; t < steps; t++) {
            cz_gan_losses L;
            s = cz_gan_step(gan, batch, A, B, &L);
            if (s != CZ_OK) fail_msg("%s: step %d: %s", names[bi], t + 1, cz_error_detail());
            double got[4] = {L.g_gan, L.g_l1, L.d_real, L.d_fake};
            for (int k = 0; k < 4; k++) {
                double want = expect[t * 4 + k], e = fabs(got[k] - want) / fabs(want);
                printf("%-5s step %d %-6s ours %.7f torch %.7f rel err %.2e\n", names[bi], t + 1, k_loss_names[k],
                       got[k], want, e);
                if (!(e < TOL)) fail_msg("%s step %d %s: relative error %.3e >= %.0e", names[bi], t + 1,
                                         k_loss_names[k], e, TOL);
                if (e > worst_loss) worst_loss = e;
            }
            if (t == 0) {
                int np;
                cz_param *pd = cz_patchgan_params(cz_gan_discriminator(gan), &np);
                double e = check_grads(be, pd, np, st, &ngrad);
                cz_param *pg = cz_unet_train_params(cz_gan_generator(gan), &np);
                double e2 = check_grads(be, pg, np, st, &ngrad);
                worst_grad = e > e2 ? e : e2;
            }
        }
        printf("%s: %d steps, worst loss rel err %.2e; %d gradient tensors, worst rel err %.2e (tolerance %.0e)\n",
               names[bi], steps, worst_loss, ngrad, worst_grad, TOL);
        ran++;
        cz_gan_destroy(gan);
        cz_backend_destroy(be);
    }
    assert_true(ran >= 1); /* ref always trains */
    free(A);
    free(B);
    free(expect);
    cz_st_close(st);
    free(path);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pix2pix_step_vs_torch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
