/* test_trainer.c: unit tests of a training run (core/trainer.h) on the `ref` backend (or
 * CZ_TEST_BACKEND's: tests/gpu/emu_check.sh runs them on the emulated cuda one, whose steps
 * queue their losses and upload the next batch while they run), over a
 * generated dataset of 24 colourful 64x64 PNGs in a temp dir (ngf 4, depth 6, ndf 8, size 64,
 * batch 4):
 *   - each step's record carries its own batch's epoch while the next batch is prefetched;
 *   - a run records losses every step (memory + losses.jsonl), validates and writes a sample
 *     sheet at validate_every, writes checkpoints that load with cz_unet_create, picks `best`
 *     by validation L1 and writes state.json;
 *   - resuming from a checkpoint continues at the right step, restores the history and gives
 *     the same next-step losses as the uninterrupted run;
 *   - cancel stops within one step and leaves a checkpoint;
 *   - a non-finite loss fails with CZ_ERR_NONFINITE and keeps the last good checkpoint;
 *   - an unwritable out dir (at create, and mid-run) fails with CZ_ERR_IO, no crash;
 *   - a backend missing a training op is refused up front with the op named;
 *   - workers = 0 (the default) picks 2 decode threads on a CPU backend, more on cuda. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend.h"
#include "fileio.h"
#include "image.h"
#include "safetensors.h"
#include "testutil.h"
#include "trainer.h"
#include "unet.h"

static char g_root[256]; /* temp dir: data/ and one out dir per test */
static cz_backend *g_be;

static int setup(void **state) {
    (void)state;
    snprintf(g_root, sizeof g_root, "/tmp/cz_trainer_XXXXXX");
    if (!mkdtemp(g_root)) return -1;
    char d[512];
    snprintf(d, sizeof d, "%s/data", g_root);
    if (tu_write_color_pngs(d, 24) != 0) return -1;
    /* CZ_TEST_BACKEND (tests/gpu/emu_check.sh sets cuda): the same runs on another backend */
    const char *name = getenv("CZ_TEST_BACKEND");
    if (!name || !*name) name = "ref";
    if (cz_backend_create(name, NULL, &g_be) != CZ_OK) {
        fprintf(stderr, "test_trainer: backend %s: %s\n", name, cz_error_detail());
        return -1;
    }
    printf("test_trainer: backend %s\n", name);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    cz_backend_destroy(g_be);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_root);
    return system(cmd) == 0 ? 0 : -1;
}

static char g_data[512], g_out[512];
static void config(cz_trainer_config *c, const char *out_name) {
    cz_trainer_config_default(c);
    snprintf(g_data, sizeof g_data, "%s/data", g_root);
    snprintf(g_out, sizeof g_out, "%s/%s", g_root, out_name);
    c->data_dir = g_data;
    c->out_dir = g_out;
    c->val_fraction = 0.25;
    c->ngf = 4;
    c->depth = 6;
    c->ndf = 8;
    c->image_size = 64;
    c->batch = 4;
    c->seed = 7;
    c->val_max_images = 8;
    c->workers = 2;
}

static int exists(const char *dir, const char *rel) {
    char p[700];
    struct stat sb;
    snprintf(p, sizeof p, "%s/%s", dir, rel);
    return stat(p, &sb) == 0 && sb.st_size > 0;
}

static int count_lines(const char *dir, const char *rel) {
    char p[700];
    snprintf(p, sizeof p, "%s/%s", dir, rel);
    FILE *f = fopen(p, "r");
    if (!f) return -1;
    int n = 0, ch;
    while ((ch = fgetc(f)) != EOF) n += ch == '\n';
    fclose(f);
    return n;
}

static char *slurp(const char *dir, const char *rel) {
    char p[700];
    uint8_t *d;
    size_t len;
    snprintf(p, sizeof p, "%s/%s", dir, rel);
    return cz_file_read(p, 0, &d, &len) == CZ_OK ? (char *)d : NULL;
}

/* A run of `steps` steps into out dir `name` with the given validation and checkpoint periods,
 * run to its end (CZ_OK); its config in *c and its info in *info. */
static cz_trainer *run_steps(const char *name, long steps, long validate_every, long checkpoint_every,
                             cz_trainer_config *c, cz_trainer_info *info) {
    config(c, name);
    c->steps = steps;
    c->validate_every = validate_every;
    c->checkpoint_every = checkpoint_every;
    cz_trainer *t;
    assert_int_equal(cz_trainer_create(g_be, c, &t), CZ_OK);
    assert_int_equal(cz_trainer_run(t), CZ_OK);
    cz_trainer_get_info(t, info);
    return t;
}

static void test_run_records_everything(void **state) {
    (void)state;
    cz_trainer_config c;
    cz_trainer_info info;
    cz_trainer *t = run_steps("run", 6, 2, 3, &c, &info);
    assert_int_equal(info.status, CZ_TRAIN_SUCCEEDED);
    assert_int_equal(info.step, 6);
    assert_true(info.val_files >= 1);
    cz_train_record rec[16];
    assert_int_equal(cz_trainer_losses(t, rec, 16, 1), 6);
    for (int i = 0; i < 6; i++) {
        assert_int_equal(rec[i].step, i + 1);
        assert_true(isfinite(rec[i].losses.g_l1) && rec[i].losses.g_l1 > 0);
        assert_true(rec[i].images_per_s > 0);
    }
    assert_int_equal(count_lines(g_out, "losses.jsonl"), 6);
    /* validations at 2, 3 (checkpoint), 4, 6 */
    cz_val_record v[8];
    assert_int_equal(cz_trainer_vals(t, v, 8), 4);
    assert_int_equal(v[0].step, 2);
    assert_int_equal(v[1].step, 3);
    assert_true(v[0].m.images >= 1 && v[0].m.psnr > 0 && v[0].m.l1 > 0);
    assert_true(exists(g_out, "samples/step_2.png"));
    assert_true(exists(g_out, "samples/step_4.png"));
    assert_true(exists(g_out, "samples/step_6.png"));
    assert_true(exists(g_out, "checkpoints/step_3.safetensors"));
    assert_true(exists(g_out, "checkpoints/step_6.safetensors"));
    assert_true(!exists(g_out, "checkpoints/step_2.safetensors"));
    /* best = the checkpoint with the lower validation L1 */
    long want = v[1].m.l1 <= v[3].m.l1 ? 3 : 6;
    assert_int_equal(info.best_step, want);
    char *js = slurp(g_out, "state.json");
    assert_non_null(js);
    assert_non_null(strstr(js, "\"status\": \"succeeded\""));
    assert_non_null(strstr(js, "\"best\": {"));
    char bestpath[64];
    snprintf(bestpath, sizeof bestpath, "checkpoints/step_%ld.safetensors", want);
    assert_non_null(strstr(strstr(js, "\"best\": {"), bestpath));
    free(js);
    /* a checkpoint is usable inference weights */
    char p[700];
    snprintf(p, sizeof p, "%s/checkpoints/step_6.safetensors", g_out);
    cz_safetensors *st;
    assert_int_equal(cz_st_open(p, &st), CZ_OK);
    cz_unet *u;
    assert_int_equal(cz_unet_create(g_be, st, CZ_F32, &u), CZ_OK);
    assert_int_equal(cz_unet_get_arch(u)->depth, 6);
    cz_unet_destroy(u);
    cz_st_close(st);
    /* and the generator export too */
    snprintf(p, sizeof p, "%s/g.safetensors", g_out);
    assert_int_equal(cz_trainer_save_generator(t, p), CZ_OK);
    assert_int_equal(cz_st_open(p, &st), CZ_OK);
    assert_int_equal(cz_unet_create(g_be, st, CZ_F32, &u), CZ_OK);
    cz_unet_destroy(u);
    cz_st_close(st);
    cz_trainer_destroy(t);
}

/* With neither validation nor checkpoints in between, every step reads and uploads the next
 * batch while it runs; each record still carries the epoch of its own batch's last sample. */
static void test_epochs_with_prefetch(void **state) {
    (void)state;
    cz_trainer_config c;
    cz_trainer_info info;
    cz_trainer *t = run_steps("epochs", 6, 0, 0, &c, &info);
    assert_true(info.train_files >= 8 && info.train_files < 24);
    cz_train_record rec[8];
    assert_int_equal(cz_trainer_losses(t, rec, 8, 1), 6);
    long boundaries = 0;
    for (int i = 0; i < 6; i++) {
        long want = (long)((size_t)(c.batch * (i + 1) - 1) / info.train_files);
        assert_int_equal(rec[i].epoch, want);
        boundaries += i > 0 && rec[i].epoch != rec[i - 1].epoch;
    }
    assert_true(boundaries >= 1); /* the run crossed an epoch boundary, so the check means something */
    cz_trainer_destroy(t);
}

static void test_resume_is_exact(void **state) {
    (void)state;
    cz_trainer_config c;
    config(&c, "full");
    c.steps = 4;
    c.validate_every = 0;
    c.checkpoint_every = 2;
    cz_trainer *t;
    assert_int_equal(cz_trainer_create(g_be, &c, &t), CZ_OK);
    assert_int_equal(cz_trainer_run(t), CZ_OK);
    cz_train_record full[4];
    assert_int_equal(cz_trainer_losses(t, full, 4, 1), 4);
    cz_trainer_destroy(t);

    char ck[700];
    snprintf(ck, sizeof ck, "%s/full/checkpoints/step_2.safetensors", g_root);
    config(&c, "resumed");
    c.steps = 4;
    c.validate_every = 0;
    c.checkpoint_every = 2;
    c.init_path = ck;
    c.seed = 999; /* ignored: a resume keeps the checkpoint's seed */
    assert_int_equal(cz_trainer_create(g_be, &c, &t), CZ_OK);
    cz_trainer_info info;
    cz_trainer_get_info(t, &info);
    assert_int_equal(info.step, 2);
    assert_int_equal(cz_trainer_step(t), CZ_OK);
    cz_train_record got[4];
    assert_int_equal(cz_trainer_losses(t, got, 4, 1), 3); /* history restored + one step */
    assert_memory_equal(&got[0].losses, &full[0].losses, sizeof full[0].losses);
    assert_int_equal(got[2].step, 3);
    assert_true(got[2].losses.g_gan == full[2].losses.g_gan);
    assert_true(got[2].losses.g_l1 == full[2].losses.g_l1);
    assert_true(got[2].losses.d_real == full[2].losses.d_real);
    assert_true(got[2].losses.d_fake == full[2].losses.d_fake);
    assert_int_equal(count_lines(g_out, "losses.jsonl"), 3);
    assert_int_equal(cz_trainer_run(t), CZ_OK);
    assert_int_equal(cz_trainer_losses(t, got, 4, 1), 4);
    assert_true(got[3].losses.g_l1 == full[3].losses.g_l1);
    cz_trainer_destroy(t);
}

static void cancel_at_2(const cz_train_progress *p, void *user) {
    if (p->step == 2) cz_trainer_cancel((cz_trainer *)*(cz_trainer **)user);
}

static void test_cancel(void **state) {
    (void)state;
    cz_trainer_config c;
    config(&c, "cancel");
    c.steps = 1000;
    cz_trainer *t = NULL;
    c.progress = cancel_at_2;
    c.progress_user = &t;
    assert_int_equal(cz_trainer_create(g_be, &c, &t), CZ_OK);
    assert_int_equal(cz_trainer_run(t), CZ_OK);
    cz_trainer_info info;
    cz_trainer_get_info(t, &info);
    assert_int_equal(info.status, CZ_TRAIN_CANCELLED);
    assert_int_equal(info.step, 2);
    assert_int_equal(info.last_checkpoint_step, 2);
    assert_true(exists(g_out, "checkpoints/step_2.safetensors"));
    char *js = slurp(g_out, "state.json");
    assert_non_null(strstr(js, "\"status\": \"cancelled\""));
    free(js);
    assert_int_equal(cz_trainer_step(t), CZ_OK); /* finished: nothing more happens */
    cz_trainer_get_info(t, &info);
    assert_int_equal(info.step, 2);
    cz_trainer_destroy(t);
}

/* keep_checkpoints: only the newest N and the best stay on disk (and in state.json). */
static void test_checkpoint_retention(void **state) {
    (void)state;
    cz_trainer_config c;
    config(&c, "keep");
    c.steps = 6;
    c.checkpoint_every = 1;
    c.validate_every = 1;
    c.keep_checkpoints = 2;
    cz_trainer *t = NULL;
    assert_int_equal(cz_trainer_create(g_be, &c, &t), CZ_OK);
    assert_int_equal(cz_trainer_run(t), CZ_OK);
    cz_trainer_info info;
    cz_trainer_get_info(t, &info);
    assert_int_equal(info.status, CZ_TRAIN_SUCCEEDED);
    assert_true(info.best_step >= 1 && info.best_step <= 6);
    int on_disk = 0;
    for (int k = 1; k <= 6; k++) {
        char rel[64];
        snprintf(rel, sizeof rel, "checkpoints/step_%d.safetensors", k);
        int want = k >= 5 || k == info.best_step;
        if (exists(g_out, rel) != want) fail_msg("step %d on disk: %d, expected %d (best %ld)", k, !want, want, info.best_step);
        on_disk += want;
    }
    assert_true(on_disk == 2 || on_disk == 3);
    char *js = slurp(g_out, "state.json");
    json_t *root = json_loads(js, 0, NULL);
    assert_non_null(root);
    assert_int_equal(json_array_size(json_object_get(root, "checkpoints")), on_disk);
    json_decref(root);
    free(js);
    cz_trainer_destroy(t);
    c.keep_checkpoints = -1;
    assert_int_equal(cz_trainer_create(g_be, &c, &t), CZ_ERR_CONFIG);
}

static void test_nonfinite(void **state) {
    (void)state;
    cz_trainer_config c;
    config(&c, "nan");
    c.steps = 6;
    c.validate_every = 0;
    c.checkpoint_every = 2;
    c.test_nan_at_step = 3;
    cz_trainer *t;
    assert_int_equal(cz_trainer_create(g_be, &c, &t), CZ_OK);
    assert_int_equal(cz_trainer_run(t), CZ_ERR_NONFINITE);
    cz_trainer_info info;
    cz_trainer_get_info(t, &info);
    assert_int_equal(info.status, CZ_TRAIN_FAILED);
    assert_int_equal(info.step, 2);
    assert_int_equal(info.last_checkpoint_step, 2);
    assert_non_null(strstr(info.error, "step 3"));
    assert_true(exists(g_out, "checkpoints/step_2.safetensors"));
    assert_true(!exists(g_out, "checkpoints/step_3.safetensors"));
    char *js = slurp(g_out, "state.json");
    assert_non_null(strstr(js, "\"status\": \"failed\""));
    free(js);
    assert_int_equal(cz_trainer_step(t), CZ_ERR_NONFINITE); /* stays failed */
    cz_trainer_destroy(t);
}

static void test_unwritable(void **state) {
    (void)state;
    cz_trainer_config c;
    char file[600], bad[700];
    snprintf(file, sizeof file, "%s/plainfile", g_root);
    assert_int_equal(cz_file_write_atomic(file, "x", 1), CZ_OK);
    snprintf(bad, sizeof bad, "%s/out", file);
    config(&c, "unused");
    c.out_dir = bad;
    c.steps = 2;
    cz_trainer *t = NULL;
    assert_int_equal(cz_trainer_create(g_be, &c, &t), CZ_ERR_IO);
    assert_null(t);

    /* mid-run: the checkpoints directory becomes a file (like a full or broken disk) */
    config(&c, "midrun");
    c.steps = 4;
    c.validate_every = 0;
    c.checkpoint_every = 2;
    assert_int_equal(cz_trainer_create(g_be, &c, &t), CZ_OK);
    char ck[700];
    snprintf(ck, sizeof ck, "%s/checkpoints", g_out);
    assert_int_equal(rmdir(ck), 0);
    assert_int_equal(cz_file_write_atomic(ck, "x", 1), CZ_OK);
    assert_int_equal(cz_trainer_run(t), CZ_ERR_IO);
    cz_trainer_info info;
    cz_trainer_get_info(t, &info);
    assert_int_equal(info.status, CZ_TRAIN_FAILED);
    assert_int_equal(info.last_checkpoint_step, -1);
    assert_int_equal(info.best_step, -1);
    cz_trainer_destroy(t);
}

static void test_missing_op(void **state) {
    (void)state;
    cz_backend_ops ops = *g_be->ops;
    ops.deconv2d_bwd_weights = NULL;
    cz_backend fake = {.ops = &ops, .threads = 0};
    cz_trainer_config c;
    config(&c, "missing");
    c.steps = 1;
    cz_trainer *t = NULL;
    assert_int_equal(cz_trainer_create(&fake, &c, &t), CZ_ERR_UNSUPPORTED);
    assert_non_null(strstr(cz_error_detail(), "deconv2d_bwd_weights"));
    assert_string_equal(cz_trainer_missing_op(g_be) ? "missing" : "none", "none");
}

static void test_bad_config(void **state) {
    (void)state;
    cz_trainer_config c;
    config(&c, "badcfg");
    c.steps = 1;
    c.image_size = 96; /* not a multiple of 2^6 */
    cz_trainer *t = NULL;
    assert_int_equal(cz_trainer_create(g_be, &c, &t), CZ_ERR_CONFIG);
    assert_non_null(strstr(cz_error_detail(), "image_size"));
    config(&c, "badcfg");
    c.steps = 1;
    char nodir[600];
    snprintf(nodir, sizeof nodir, "%s/no_such_dir", g_root);
    c.data_dir = nodir;
    assert_int_equal(cz_trainer_create(g_be, &c, &t), CZ_ERR_NOT_FOUND);
}

/* workers = 0 picks the decode threads from the backend: 2 on a CPU backend, one per online CPU
 * less two (2..16) on cuda. */
static void test_auto_workers(void **state) {
    (void)state;
    if (strcmp(g_be->ops->name, "cuda") != 0) assert_int_equal(cz_trainer_auto_workers(g_be), 2);
    cz_backend_ops ops = {.name = "cuda"};
    cz_backend gpu = {.ops = &ops};
    long n = sysconf(_SC_NPROCESSORS_ONLN) - 2;
    int want = n < 2 ? 2 : n > 16 ? 16 : (int)n;
    assert_int_equal(cz_trainer_auto_workers(&gpu), want);
    cz_trainer_config c;
    cz_trainer_config_default(&c);
    assert_int_equal(c.workers, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_auto_workers),
        cmocka_unit_test(test_run_records_everything), cmocka_unit_test(test_epochs_with_prefetch),
        cmocka_unit_test(test_resume_is_exact),
        cmocka_unit_test(test_cancel),                 cmocka_unit_test(test_nonfinite),
        cmocka_unit_test(test_unwritable),             cmocka_unit_test(test_missing_op),
        cmocka_unit_test(test_bad_config),             cmocka_unit_test(test_checkpoint_retention),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
