/* trainer.c: one pix2pix training run (see trainer.h for the lifecycle, the out dir layout and
 * the failure rules). Choices made here:
 *  - the run's own metadata (seed, total, batch, size) and its history live inside each
 *    checkpoint (metadata trainer.*, F64 tensors trainer.losses [n,8], trainer.val [m,8],
 *    trainer.ckpts [k,2]) so a checkpoint alone resumes the run, history included; a resume
 *    takes seed, batch, size and total from the checkpoint unless the config sets them;
 *  - validation (and so the sample sheet) also runs at every checkpoint, so `best` always
 *    names an existing checkpoint file;
 *  - losses.jsonl / val.jsonl are append-only logs flushed per line; state.json and every
 *    checkpoint, sheet and weights file are written atomically (temp, fsync, rename).
 * Threading: the owner thread calls create/step/finish/run/save/destroy; cancel is an atomic
 * store; get_info/losses/vals copy under the mutex that guards what they read. */
#include "trainer.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "dataset.h"
#include "fileio.h"
#include "log.h"

#define MOD "trainer"

typedef struct ckpt_entry {
    long step;
    double val_l1; /* NAN: no validation */
} ckpt_entry;

struct cz_trainer {
    cz_backend *be;
    cz_trainer_config cfg;
    char *data_dir, *val_dir, *out_dir;
    cz_gan *gan;
    cz_dataset *ds;
    cz_batch tb, vb;
    long staged; /* step number whose batch cz_gan_stage uploaded during the previous step, 0 none */
    cz_unet_arch arch;
    int size, nb;
    long total;
    uint64_t seed;
    atomic_int cancel;
    pthread_mutex_t mu;
    /* guarded by mu */
    cz_train_status status;
    char error[256];
    long step, epoch;
    double ips, eta, run_time;
    long run_steps;
    cz_train_record *hist;
    size_t nhist, caphist;
    cz_val_record *vals;
    size_t nvals, capvals;
    ckpt_entry *ckpts;
    size_t nckpt, capckpt;
    long best_step;
    double best_l1;
    /* owner thread only */
    FILE *losses_f, *val_f;
    double t0;
    float *pred, *sA, *sP, *sT;
    cz_status final_status;
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

const char *cz_train_status_name(cz_train_status s) {
    switch (s) {
    case CZ_TRAIN_RUNNING: return "running";
    case CZ_TRAIN_SUCCEEDED: return "succeeded";
    case CZ_TRAIN_FAILED: return "failed";
    case CZ_TRAIN_CANCELLED: return "cancelled";
    }
    return "unknown";
}

void cz_trainer_config_default(cz_trainer_config *c) {
    memset(c, 0, sizeof *c);
    c->val_fraction = 0.05;
    c->ngf = 64;
    c->ndf = 64;
    c->lr = 2e-4f;
    c->lambda_l1 = 100.f;
    c->seed = 1;
    c->validate_every = 500;
    c->checkpoint_every = 5000;
    c->sample_images = 4;
    c->val_max_images = 64;
    c->workers = 0;
    c->cache_mb = 1024;
    c->init = CZ_TRAIN_INIT_AUTO;
}

int cz_trainer_auto_workers(const cz_backend *be) {
    if (!be || strcmp(be->ops->name, "cuda") != 0) return 2;
    long n = sysconf(_SC_NPROCESSORS_ONLN) - 2;
    return n < 2 ? 2 : n > 16 ? 16 : (int)n;
}

const char *cz_trainer_missing_op(const cz_backend *be) {
    const cz_backend_ops *o = be->ops;
#define NEED(slot) \
    if (!o->slot) return #slot
    NEED(tensor_alloc); NEED(tensor_free); NEED(tensor_write); NEED(tensor_read); NEED(tensor_zero);
    NEED(sync); NEED(conv2d); NEED(deconv2d); NEED(bn_train_fwd); NEED(bn_infer); NEED(act_fwd);
    NEED(concat); NEED(dropout_fwd); NEED(bce_logits_fwd); NEED(l1_fwd); NEED(conv2d_bwd_data);
    NEED(conv2d_bwd_weights); NEED(deconv2d_bwd_data); NEED(deconv2d_bwd_weights); NEED(bn_train_bwd);
    NEED(act_bwd); NEED(concat_bwd); NEED(dropout_bwd); NEED(bce_logits_bwd); NEED(l1_bwd); NEED(adam_step);
#undef NEED
    return NULL;
}

/* ---------------------------------------------------------------- files */

static cz_status mkdir_p(const char *path) {
    char buf[1024];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return cz_error_set(CZ_ERR_INVALID_ARG, "out_dir: path too long");
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || !*p) {
            char c = *p;
            *p = '\0';
            if (mkdir(buf, 0755) != 0 && errno != EEXIST)
                return cz_error_set(CZ_ERR_IO, "cannot create directory %s: %s", buf, strerror(errno));
            struct stat sb;
            if (stat(buf, &sb) != 0 || !S_ISDIR(sb.st_mode))
                return cz_error_set(CZ_ERR_IO, "%s is not a directory", buf);
            *p = c;
            if (!c) break;
        }
    }
    return CZ_OK;
}

static void path_in(const cz_trainer *t, char *out, size_t cap, const char *fmt, long step) {
    char rel[128];
    snprintf(rel, sizeof rel, fmt, step);
    snprintf(out, cap, "%s/%s", t->out_dir, rel);
}

static int rec_line(char *out, size_t cap, const cz_train_record *r) {
    return snprintf(out, cap,
                    "{\"step\":%ld,\"epoch\":%ld,\"g_gan\":%.7g,\"g_l1\":%.7g,\"d_real\":%.7g,\"d_fake\":%.7g,"
                    "\"images_per_s\":%.4g}\n",
                    r->step, r->epoch, r->losses.g_gan, r->losses.g_l1, r->losses.d_real, r->losses.d_fake,
                    r->images_per_s);
}

static int val_line(char *out, size_t cap, const cz_val_record *v) {
    return snprintf(out, cap,
                    "{\"step\":%ld,\"images\":%zu,\"l1\":%.7g,\"l1_ab\":%.7g,\"psnr\":%.7g,"
                    "\"colorfulness_pred\":%.7g,\"colorfulness_true\":%.7g,\"colorfulness_ratio\":%.7g}\n",
                    v->step, v->m.images, v->m.l1, v->m.l1_ab, v->m.psnr, v->m.colorfulness_pred,
                    v->m.colorfulness_true, v->m.colorfulness_ratio);
}

/* Rewrites a log from the in-memory history (atomic), then opens it for appending. */
static cz_status open_log(cz_trainer *t, const char *name, int vals, FILE **f) {
    char path[1100];
    snprintf(path, sizeof path, "%s/%s", t->out_dir, name);
    size_t n = vals ? t->nvals : t->nhist, cap = n * 320 + 1, len = 0;
    char *buf = malloc(cap);
    if (!buf) return cz_error_set(CZ_ERR_NOMEM, "trainer: out of memory");
    for (size_t i = 0; i < n; i++)
        len += (size_t)(vals ? val_line(buf + len, cap - len, &t->vals[i]) : rec_line(buf + len, cap - len, &t->hist[i]));
    cz_status s = cz_file_write_atomic(path, buf, len);
    free(buf);
    if (s != CZ_OK) return s;
    *f = fopen(path, "a");
    if (!*f) return cz_error_set(CZ_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    return CZ_OK;
}

static cz_status append_line(FILE *f, const char *line, const char *what) {
    if (fputs(line, f) < 0 || fflush(f) != 0 || ferror(f))
        return cz_error_set(CZ_ERR_IO, "cannot append to %s: %s", what, strerror(errno));
    return CZ_OK;
}

static json_t *losses_json(const cz_gan_losses *l) {
    return json_pack("{s:f,s:f,s:f,s:f}", "g_gan", l->g_gan, "g_l1", l->g_l1, "d_real", l->d_real, "d_fake",
                     l->d_fake);
}

static json_t *ckpt_json(long step, double l1) {
    char rel[96];
    snprintf(rel, sizeof rel, "checkpoints/step_%ld.safetensors", step);
    return json_pack("{s:I,s:s,s:o}", "step", (json_int_t)step, "path", rel, "val_l1",
                     isfinite(l1) ? json_real(l1) : json_null());
}

/* state.json (atomic). Caller holds no lock; reads owner-thread fields. */
static cz_status write_state(cz_trainer *t) {
    json_t *root = json_object();
    pthread_mutex_lock(&t->mu);
    json_object_set_new(root, "status", json_string(cz_train_status_name(t->status)));
    json_object_set_new(root, "error", t->error[0] ? json_string(t->error) : json_null());
    json_object_set_new(root, "step", json_integer(t->step));
    json_object_set_new(root, "total", json_integer(t->total));
    json_object_set_new(root, "epoch", json_integer(t->epoch));
    json_object_set_new(root, "batch", json_integer(t->nb));
    json_object_set_new(root, "image_size", json_integer(t->size));
    json_object_set_new(root, "precision", json_string(cz_dtype_name(t->cfg.precision)));
    json_object_set_new(root, "seed", json_integer((json_int_t)t->seed));
    json_object_set_new(root, "model", json_pack("{s:i,s:i,s:s}", "ngf", t->arch.ngf, "depth", t->arch.depth,
                                                 "color_mode", cz_color_mode_name(t->arch.mode)));
    json_object_set_new(root, "images_per_s", json_real(t->ips));
    json_object_set_new(root, "eta_s", json_real(t->eta));
    json_object_set_new(root, "last_losses", t->nhist ? losses_json(&t->hist[t->nhist - 1].losses) : json_null());
    if (t->nvals) {
        const cz_val_record *v = &t->vals[t->nvals - 1];
        json_object_set_new(root, "last_metrics",
                            json_pack("{s:I,s:I,s:f,s:f,s:f,s:f,s:f,s:f}", "step", (json_int_t)v->step, "images",
                                      (json_int_t)v->m.images, "l1", v->m.l1, "l1_ab", v->m.l1_ab, "psnr",
                                      v->m.psnr, "colorfulness_pred", v->m.colorfulness_pred,
                                      "colorfulness_true", v->m.colorfulness_true, "colorfulness_ratio",
                                      v->m.colorfulness_ratio));
    } else {
        json_object_set_new(root, "last_metrics", json_null());
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < t->nckpt; i++) json_array_append_new(arr, ckpt_json(t->ckpts[i].step, t->ckpts[i].val_l1));
    json_object_set_new(root, "checkpoints", arr);
    json_object_set_new(root, "best", t->best_step >= 0 ? ckpt_json(t->best_step, t->best_l1) : json_null());
    pthread_mutex_unlock(&t->mu);
    char *txt = json_dumps(root, JSON_INDENT(2) | JSON_REAL_PRECISION(7));
    json_decref(root);
    if (!txt) return cz_error_set(CZ_ERR_NOMEM, "state.json: out of memory");
    char path[1100];
    snprintf(path, sizeof path, "%s/state.json", t->out_dir);
    size_t len = strlen(txt);
    txt[len] = '\n'; /* replaces the NUL: the file ends with a newline */
    cz_status s = cz_file_write_atomic(path, txt, len + 1);
    free(txt);
    return s;
}

/* ---------------------------------------------------------------- history */

static cz_status grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return CZ_OK;
    size_t nc = *cap ? *cap * 2 : 64;
    while (nc < need) nc *= 2;
    void *np = realloc(*p, nc * elem);
    if (!np) return cz_error_set(CZ_ERR_NOMEM, "trainer: out of memory");
    *p = np;
    *cap = nc;
    return CZ_OK;
}

static cz_status push_ckpt(cz_trainer *t, long step, double l1) {
    pthread_mutex_lock(&t->mu);
    cz_status s = grow((void **)&t->ckpts, &t->capckpt, t->nckpt + 1, sizeof *t->ckpts);
    if (s == CZ_OK) {
        t->ckpts[t->nckpt++] = (ckpt_entry){step, l1};
        if (isfinite(l1) && (t->best_step < 0 || l1 < t->best_l1)) {
            t->best_step = step;
            t->best_l1 = l1;
        }
    }
    pthread_mutex_unlock(&t->mu);
    return s;
}

/* F64 [rows, cols] tensor of the history; skipped when empty. */
static cz_status add_table(cz_st_writer *w, const char *name, const double *d, size_t rows, int cols) {
    if (!rows) return CZ_OK;
    int64_t shape[2] = {(int64_t)rows, cols};
    return cz_st_writer_add(w, name, CZ_ST_F64, 2, shape, d, rows * (size_t)cols * sizeof(double));
}

static cz_status save_history(cz_trainer *t, cz_st_writer *w) {
    size_t rows = t->nhist > t->nvals ? t->nhist : t->nvals;
    if (t->nckpt > rows) rows = t->nckpt;
    double *d = malloc((rows + 1) * 8 * sizeof *d);
    if (!d) return cz_error_set(CZ_ERR_NOMEM, "trainer: out of memory");
    for (size_t i = 0; i < t->nhist; i++) {
        const cz_train_record *r = &t->hist[i];
        double row[8] = {(double)r->step, (double)r->epoch, r->losses.g_gan, r->losses.g_l1,
                         r->losses.d_real, r->losses.d_fake, r->images_per_s, 0};
        memcpy(d + i * 8, row, sizeof row);
    }
    cz_status s = add_table(w, "trainer.losses", d, t->nhist, 8);
    for (size_t i = 0; s == CZ_OK && i < t->nvals; i++) {
        const cz_val_record *v = &t->vals[i];
        double row[8] = {(double)v->step, (double)v->m.images, v->m.l1, v->m.l1_ab, v->m.psnr,
                         v->m.colorfulness_pred, v->m.colorfulness_true, v->m.colorfulness_ratio};
        memcpy(d + i * 8, row, sizeof row);
    }
    if (s == CZ_OK) s = add_table(w, "trainer.val", d, t->nvals, 8);
    for (size_t i = 0; s == CZ_OK && i < t->nckpt; i++) {
        d[i * 2] = (double)t->ckpts[i].step;
        d[i * 2 + 1] = t->ckpts[i].val_l1;
    }
    if (s == CZ_OK) s = add_table(w, "trainer.ckpts", d, t->nckpt, 2);
    free(d);
    char buf[32];
    const struct { const char *k; long long v; } meta[] = {
        {"trainer.total", t->total}, {"trainer.batch", t->nb}, {"trainer.size", t->size}};
    for (size_t i = 0; s == CZ_OK && i < sizeof meta / sizeof meta[0]; i++) {
        snprintf(buf, sizeof buf, "%lld", meta[i].v);
        s = cz_st_writer_meta(w, meta[i].k, buf);
    }
    snprintf(buf, sizeof buf, "%llu", (unsigned long long)t->seed);
    if (s == CZ_OK) s = cz_st_writer_meta(w, "trainer.seed", buf);
    return s;
}

/* Reads an F64 [rows, cols] table; *rows 0 when absent. */
static cz_status load_table(const cz_safetensors *st, const char *name, int cols, double **d, size_t *rows) {
    *d = NULL;
    *rows = 0;
    const cz_st_tensor *x = cz_st_find(st, name);
    if (!x) return CZ_OK;
    if (x->dtype != CZ_ST_F64 || x->ndim != 2 || x->shape[1] != cols || x->shape[0] < 0)
        return cz_error_set(CZ_ERR_BAD_WEIGHTS, "%s: expected F64 [n, %d]", name, cols);
    *rows = (size_t)x->shape[0];
    *d = malloc(x->nbytes + 8);
    if (!*d) return cz_error_set(CZ_ERR_NOMEM, "trainer: out of memory");
    memcpy(*d, x->data, x->nbytes);
    return CZ_OK;
}

static cz_status restore_history(cz_trainer *t, const cz_safetensors *st) {
    double *d;
    size_t n;
    CZ_TRY(load_table(st, "trainer.losses", 8, &d, &n));
    cz_status s = grow((void **)&t->hist, &t->caphist, n, sizeof *t->hist);
    for (size_t i = 0; s == CZ_OK && i < n; i++) {
        const double *r = d + i * 8;
        t->hist[t->nhist++] = (cz_train_record){(long)r[0], (long)r[1], {r[2], r[3], r[4], r[5]}, r[6]};
    }
    free(d);
    if (s != CZ_OK) return s;
    CZ_TRY(load_table(st, "trainer.val", 8, &d, &n));
    s = grow((void **)&t->vals, &t->capvals, n, sizeof *t->vals);
    for (size_t i = 0; s == CZ_OK && i < n; i++) {
        const double *r = d + i * 8;
        cz_val_record v = {.step = (long)r[0]};
        v.m = (cz_val_metrics){(size_t)r[1], r[2], r[3], r[4], r[5], r[6], r[7]};
        t->vals[t->nvals++] = v;
    }
    free(d);
    if (s != CZ_OK) return s;
    CZ_TRY(load_table(st, "trainer.ckpts", 2, &d, &n));
    for (size_t i = 0; s == CZ_OK && i < n; i++) { /* keep those present in this out dir */
        char path[1100];
        struct stat sb;
        path_in(t, path, sizeof path, "checkpoints/step_%ld.safetensors", (long)d[i * 2]);
        if (stat(path, &sb) == 0) s = push_ckpt(t, (long)d[i * 2], d[i * 2 + 1]);
    }
    free(d);
    return s;
}

/* ---------------------------------------------------------------- create */

static long meta_long(const cz_safetensors *st, const char *key, long dflt) {
    const char *v = cz_st_meta(st, key);
    return v ? strtol(v, NULL, 10) : dflt;
}

static int prefixed(const char *s, const char *p) { return strncmp(s, p, strlen(p)) == 0; }

/* A copy of `st` with only the generator's metadata and tensors (fine-tuning from weights). */
static cz_status generator_only(const cz_safetensors *st, cz_safetensors **out) {
    cz_st_writer *w = NULL;
    uint8_t *bytes = NULL;
    size_t len = 0;
    cz_status s = cz_st_writer_create(&w);
    for (size_t i = 0; s == CZ_OK && i < cz_st_meta_count(st); i++) {
        const char *k, *v;
        cz_st_meta_at(st, i, &k, &v);
        if (!prefixed(k, "disc_") && !prefixed(k, "opt_") && !prefixed(k, "trainer.") && strcmp(k, "train_step"))
            s = cz_st_writer_meta(w, k, v);
    }
    for (size_t i = 0; s == CZ_OK && i < cz_st_count(st); i++) {
        const cz_st_tensor *x = cz_st_at(st, i);
        if (prefixed(x->name, "down.") || prefixed(x->name, "up."))
            s = cz_st_writer_add(w, x->name, x->dtype, x->ndim, x->shape, x->data, x->nbytes);
    }
    if (s == CZ_OK) s = cz_st_writer_bytes(w, &bytes, &len);
    if (s == CZ_OK) s = cz_st_parse(bytes, len, 1, out);
    free(bytes);
    cz_st_writer_destroy(w);
    return s;
}

static cz_status check_config(const cz_trainer_config *c) {
    if (!c->data_dir || !*c->data_dir) return cz_error_set(CZ_ERR_CONFIG, "data_dir: required");
    if (!c->out_dir || !*c->out_dir) return cz_error_set(CZ_ERR_CONFIG, "out_dir: required");
    if (c->steps < 0 || c->steps > 100000000L) return cz_error_set(CZ_ERR_CONFIG, "steps: %ld out of range", c->steps);
    if (!(c->epochs >= 0 && c->epochs <= 1e6)) return cz_error_set(CZ_ERR_CONFIG, "epochs: out of range");
    if (c->batch < 0 || c->batch > 4096) return cz_error_set(CZ_ERR_CONFIG, "batch: %d out of range", c->batch);
    if (c->image_size && (c->image_size < 32 || c->image_size > 4096))
        return cz_error_set(CZ_ERR_CONFIG, "image_size: %d out of range 32..4096", c->image_size);
    if (c->ngf < 1 || c->ngf > 1024) return cz_error_set(CZ_ERR_CONFIG, "ngf: %d out of range", c->ngf);
    if (c->ndf < 1 || c->ndf > 1024) return cz_error_set(CZ_ERR_CONFIG, "ndf: %d out of range", c->ndf);
    if (c->depth && (c->depth < CZ_UNET_MIN_DEPTH || c->depth > CZ_UNET_MAX_DEPTH))
        return cz_error_set(CZ_ERR_CONFIG, "depth: %d out of range 5..8", c->depth);
    if (!(c->lr > 0 && c->lr < 1e38f)) return cz_error_set(CZ_ERR_CONFIG, "lr: out of range");
    if (!(c->lambda_l1 >= 0 && c->lambda_l1 < 1e6f)) return cz_error_set(CZ_ERR_CONFIG, "lambda_l1: out of range");
    if (c->keep_checkpoints < 0)
        return cz_error_set(CZ_ERR_CONFIG, "keep_checkpoints %d: negative", c->keep_checkpoints);
    if (c->validate_every < 0 || c->checkpoint_every < 0 || c->sample_every < 0 || c->lr_decay_steps < 0)
        return cz_error_set(CZ_ERR_CONFIG, "validate_every/checkpoint_every/sample_every/lr_decay_steps: negative");
    if (c->sample_images < 0 || c->sample_images > 64) return cz_error_set(CZ_ERR_CONFIG, "sample_images: 0..64");
    if (c->val_max_images < 0) return cz_error_set(CZ_ERR_CONFIG, "val_max_images: negative");
    if (c->workers < 0 || c->workers > 64) return cz_error_set(CZ_ERR_CONFIG, "workers: 0..64");
    if (c->cache_mb < 0 || c->cache_mb > CZ_TRAIN_MAX_CACHE_MB)
        return cz_error_set(CZ_ERR_CONFIG, "cache_mb: 0..%d", CZ_TRAIN_MAX_CACHE_MB);
    if (c->precision != CZ_F32 && c->precision != CZ_BF16)
        return cz_error_set(CZ_ERR_CONFIG, "precision: fp32 or bf16 (fp16 training would need loss scaling)");
    if (c->init != CZ_TRAIN_INIT_SCRATCH && !c->init_path && c->init != CZ_TRAIN_INIT_AUTO)
        return cz_error_set(CZ_ERR_CONFIG, "init: a weights or checkpoint file is required");
    return CZ_OK;
}

static void *batch_host_alloc(void *ctx, size_t bytes) {
    cz_backend *be = ctx;
    return be->ops->host_alloc(be, bytes);
}

static void batch_host_free(void *ctx, void *p) {
    cz_backend *be = ctx;
    be->ops->host_free(be, p);
}

static cz_status build(cz_trainer *t, const cz_trainer_config *c) {
    cz_safetensors *st = NULL, *gonly = NULL;
    const cz_safetensors *init = NULL;
    int resume = 0;
    cz_status s = CZ_OK;
    t->nb = c->batch ? c->batch : 1;
    t->size = c->image_size ? c->image_size : 256;
    t->seed = c->seed;
    long total = c->steps;
    if (c->init_path && c->init != CZ_TRAIN_INIT_SCRATCH) {
        CZ_TRY(cz_st_open(c->init_path, &st));
        int has_step = cz_st_meta(st, "train_step") != NULL;
        if (c->init == CZ_TRAIN_INIT_CHECKPOINT && !has_step)
            s = cz_error_set(CZ_ERR_BAD_WEIGHTS, "%s: not a training checkpoint (no train_step)", c->init_path);
        resume = has_step && c->init != CZ_TRAIN_INIT_WEIGHTS;
        if (s == CZ_OK && resume) {
            init = st;
            t->seed = (uint64_t)strtoull(cz_st_meta(st, "trainer.seed") ? cz_st_meta(st, "trainer.seed") : "", NULL, 10);
            if (!cz_st_meta(st, "trainer.seed")) t->seed = c->seed;
            if (!c->batch) t->nb = (int)meta_long(st, "trainer.batch", 1);
            if (!c->image_size) t->size = (int)meta_long(st, "trainer.size", 256);
            if (!c->steps && !(c->epochs > 0)) total = meta_long(st, "trainer.total", 0);
        } else if (s == CZ_OK) {
            s = generator_only(st, &gonly);
            init = gonly;
        }
        if (s == CZ_OK) s = cz_unet_arch_from_meta(init, &t->arch);
    } else {
        t->arch = cz_unet_arch_default(c->ngf, CZ_COLOR_LAB);
        int d = 0;
        while (d < CZ_UNET_MAX_DEPTH && (2 << d) <= t->size) d++;
        t->arch.depth = c->depth ? c->depth : (d < CZ_UNET_MIN_DEPTH ? CZ_UNET_MIN_DEPTH : d);
        s = cz_unet_arch_validate(&t->arch);
    }
    if (s == CZ_OK && t->size % cz_unet_multiple(&t->arch))
        s = cz_error_set(CZ_ERR_CONFIG, "image_size: %d is not a multiple of 2^depth = %d", t->size,
                         cz_unet_multiple(&t->arch));
    if (s == CZ_OK && (t->nb < 1 || t->size < 32 || t->size > 4096))
        s = cz_error_set(CZ_ERR_CONFIG, "batch/image_size from the checkpoint out of range");
    if (s == CZ_OK) {
        cz_gan_config gc = cz_gan_config_default();
        gc.adam.lr = c->lr;
        gc.lambda_l1 = c->lambda_l1;
        gc.ndf = c->ndf;
        gc.seed = t->seed;
        gc.act_dtype = c->precision;
        s = cz_gan_create(t->be, &gc, &t->arch, init, &t->gan);
    }
    if (s == CZ_OK) s = cz_gan_plan(t->gan, t->nb, t->size, t->size);
    if (s == CZ_OK && resume) s = restore_history(t, st);
    cz_st_close(st);
    cz_st_close(gonly);
    if (s != CZ_OK) return s;
    t->step = cz_gan_steps(t->gan);

    cz_dataset_config dc;
    cz_dataset_config_default(&dc);
    dc.root = t->data_dir;
    dc.val_dir = t->val_dir;
    dc.val_fraction = c->val_fraction;
    dc.mode = t->arch.mode;
    dc.image_size = t->size;
    dc.batch_size = t->nb;
    dc.workers = c->workers ? c->workers : cz_trainer_auto_workers(t->be);
    dc.cache_bytes = (size_t)c->cache_mb << 20;
    dc.seed = t->seed;
    CZ_TRY(cz_dataset_open(&dc, &t->ds));
    /* training batches in the backend's page-locked memory, so that their upload overlaps the
     * step before (cz_gan_stage) */
    cz_batch_mem mem = {0};
    if (t->be->ops->host_alloc && t->be->ops->host_free) mem = (cz_batch_mem){batch_host_alloc, batch_host_free, t->be};
    CZ_TRY(cz_dataset_batch_alloc_in(t->ds, &t->tb, &mem));
    CZ_TRY(cz_dataset_batch_alloc(t->ds, &t->vb));
    size_t ntrain = cz_dataset_train_count(t->ds);
    if (!total && c->epochs > 0) total = (long)ceil(c->epochs * (double)ntrain / t->nb);
    if (total < 1) return cz_error_set(CZ_ERR_CONFIG, "steps: give steps or epochs (at least one step)");
    if (c->max_total_steps > 0 && total > c->max_total_steps) {
        if (!c->steps && c->epochs > 0)
            return cz_error_set(CZ_ERR_CONFIG, "epochs: %g epochs of %zu images at batch %d are %ld steps, above the limit of %ld",
                                c->epochs, ntrain, t->nb, total, c->max_total_steps);
        return cz_error_set(CZ_ERR_CONFIG, "steps: %ld, above the limit of %ld", total, c->max_total_steps);
    }
    t->total = total;
    size_t plane = (size_t)t->size * t->size, k = (size_t)(c->sample_images ? c->sample_images : 1);
    t->pred = malloc((size_t)t->nb * t->arch.out_ch * plane * sizeof(float));
    t->sA = malloc(k * t->tb.a_ch * plane * sizeof(float));
    t->sP = malloc(k * t->tb.b_ch * plane * sizeof(float));
    t->sT = malloc(k * t->tb.b_ch * plane * sizeof(float));
    if (!t->pred || !t->sA || !t->sP || !t->sT) return cz_error_set(CZ_ERR_NOMEM, "trainer: out of memory");
    /* fast-forward the data stream past the steps already done, so a resume is exact */
    for (long i = 0; i < t->step; i++) CZ_TRY(cz_dataset_next_batch(t->ds, &t->tb));
    char sub[1100];
    snprintf(sub, sizeof sub, "%s/checkpoints", t->out_dir);
    CZ_TRY(mkdir_p(sub));
    snprintf(sub, sizeof sub, "%s/samples", t->out_dir);
    CZ_TRY(mkdir_p(sub));
    CZ_TRY(open_log(t, "losses.jsonl", 0, &t->losses_f));
    CZ_TRY(open_log(t, "val.jsonl", 1, &t->val_f));
    CZ_TRY(write_state(t));
    CZ_LOGI(MOD,
            "run: %s, %zu train / %zu val images, ngf %d depth %d, %dx%d batch %d, steps %ld..%ld, backend %s, "
            "%d decode threads, photo cache %d MiB",
            resume ? "resumed" : "new", ntrain, cz_dataset_val_count(t->ds), t->arch.ngf, t->arch.depth, t->size,
            t->size, t->nb, t->step, t->total, t->be->ops->name, dc.workers, c->cache_mb);
    return CZ_OK;
}

cz_status cz_trainer_create(cz_backend *be, const cz_trainer_config *cfg, cz_trainer **out) {
    *out = NULL;
    if (!be || !cfg) return cz_error_set(CZ_ERR_INVALID_ARG, "trainer: backend and config required");
    CZ_TRY(check_config(cfg));
    const char *miss = cz_trainer_missing_op(be);
    if (miss) return cz_error_set(CZ_ERR_UNSUPPORTED, "backend '%s' cannot train: it does not implement %s",
                                  be->ops->name, miss);
    CZ_TRY(mkdir_p(cfg->out_dir));
    cz_trainer *t = calloc(1, sizeof *t);
    if (!t) return cz_error_set(CZ_ERR_NOMEM, "trainer: out of memory");
    pthread_mutex_init(&t->mu, NULL);
    t->be = be;
    t->cfg = *cfg;
    t->best_step = -1;
    t->best_l1 = NAN;
    t->t0 = now_s();
    t->data_dir = strdup(cfg->data_dir);
    t->out_dir = strdup(cfg->out_dir);
    t->val_dir = cfg->val_dir ? strdup(cfg->val_dir) : NULL;
    t->cfg.data_dir = t->cfg.val_dir = t->cfg.out_dir = t->cfg.init_path = NULL;
    cz_status s = !t->data_dir || !t->out_dir || (cfg->val_dir && !t->val_dir)
                      ? cz_error_set(CZ_ERR_NOMEM, "trainer: out of memory")
                      : build(t, cfg);
    if (s != CZ_OK) {
        cz_trainer_destroy(t);
        return s;
    }
    *out = t;
    return CZ_OK;
}

void cz_trainer_destroy(cz_trainer *t) {
    if (!t) return;
    cz_dataset_destroy(t->ds);
    cz_gan_destroy(t->gan); /* first: it waits for uploads still reading tb */
    cz_batch_free(&t->tb);
    cz_batch_free(&t->vb);
    if (t->losses_f) fclose(t->losses_f);
    if (t->val_f) fclose(t->val_f);
    free(t->pred);
    free(t->sA);
    free(t->sP);
    free(t->sT);
    free(t->hist);
    free(t->vals);
    free(t->ckpts);
    free(t->data_dir);
    free(t->val_dir);
    free(t->out_dir);
    pthread_mutex_destroy(&t->mu);
    free(t);
}

/* ---------------------------------------------------------------- validation, checkpoints */

/* Eval-mode pass over (up to val_max_images of) the validation split; *m.images == 0 when
 * the split is empty. With `sheet`, writes samples/step_<N>.png from the first images. */
static cz_status validate(cz_trainer *t, int sheet, cz_val_metrics *m) {
    cz_metrics_acc acc;
    cz_metrics_acc_init(&acc, t->arch.mode);
    memset(m, 0, sizeof *m);
    cz_backend *be = t->be;
    const int S = t->size, ac = t->vb.a_ch, bc = t->vb.b_ch, kmax = t->cfg.sample_images;
    const size_t plane = (size_t)S * S;
    size_t cursor = 0, images = 0, limit = t->cfg.val_max_images ? (size_t)t->cfg.val_max_images : (size_t)-1;
    int kept = 0;
    while (images < limit) {
        CZ_TRY(cz_dataset_val_batch(t->ds, &cursor, &t->vb));
        int n = t->vb.n;
        if (n <= 0) break;
        if ((size_t)n > limit - images) n = (int)(limit - images);
        cz_tensor in = cz_tensor_batch_view(*cz_unet_train_input(cz_gan_generator(t->gan)), n);
        CZ_TRY(be->ops->tensor_write(be, &in, t->vb.A));
        const cz_tensor *y;
        CZ_TRY(cz_unet_train_forward(cz_gan_generator(t->gan), n, 0, 0, &y));
        CZ_TRY(be->ops->tensor_read(be, y, t->pred));
        CZ_TRY(cz_metrics_acc_add(&acc, n, S, t->vb.A, t->pred, t->vb.B));
        for (int i = 0; i < n && kept < kmax; i++, kept++) {
            memcpy(t->sA + (size_t)kept * ac * plane, t->vb.A + (size_t)i * ac * plane, ac * plane * sizeof(float));
            memcpy(t->sP + (size_t)kept * bc * plane, t->pred + (size_t)i * bc * plane, bc * plane * sizeof(float));
            memcpy(t->sT + (size_t)kept * bc * plane, t->vb.B + (size_t)i * bc * plane, bc * plane * sizeof(float));
        }
        images += (size_t)n;
    }
    cz_metrics_acc_result(&acc, m);
    if (!m->images) return CZ_OK;
    if (sheet && kept) {
        char path[1100];
        path_in(t, path, sizeof path, "samples/step_%ld.png", t->step);
        CZ_TRY(cz_sample_sheet_write(path, t->arch.mode, kept, S, t->sA, t->sP, t->sT));
    }
    cz_val_record v = {.step = t->step, .m = *m};
    pthread_mutex_lock(&t->mu);
    cz_status s = grow((void **)&t->vals, &t->capvals, t->nvals + 1, sizeof *t->vals);
    if (s == CZ_OK) t->vals[t->nvals++] = v;
    pthread_mutex_unlock(&t->mu);
    if (s != CZ_OK) return s;
    char line[512];
    val_line(line, sizeof line, &v);
    return append_line(t->val_f, line, "val.jsonl");
}

/* Retention (keep_checkpoints > 0): deletes the oldest checkpoints beyond the newest N, never
 * the best. A file that cannot be removed is logged and forgotten all the same. */
static void prune_checkpoints(cz_trainer *t) {
    int keep = t->cfg.keep_checkpoints;
    if (keep <= 0) return;
    pthread_mutex_lock(&t->mu);
    size_t i = 0;
    while (i < t->nckpt) {
        if (t->ckpts[i].step == t->best_step || t->nckpt - i <= (size_t)keep) {
            i++;
            continue;
        }
        char path[1100];
        path_in(t, path, sizeof path, "checkpoints/step_%ld.safetensors", t->ckpts[i].step);
        if (unlink(path) != 0) CZ_LOGW(MOD, "cannot remove old checkpoint %s: %s", path, strerror(errno));
        memmove(&t->ckpts[i], &t->ckpts[i + 1], (t->nckpt - i - 1) * sizeof *t->ckpts);
        t->nckpt--;
    }
    pthread_mutex_unlock(&t->mu);
}

static cz_status checkpoint(cz_trainer *t, double val_l1) {
    char path[1100];
    path_in(t, path, sizeof path, "checkpoints/step_%ld.safetensors", t->step);
    CZ_TRY(push_ckpt(t, t->step, val_l1));
    cz_st_writer *w = NULL;
    cz_status s = cz_st_writer_create(&w);
    if (s == CZ_OK) s = cz_gan_save(t->gan, w);
    if (s == CZ_OK) s = save_history(t, w);
    if (s == CZ_OK) s = cz_st_writer_save(w, path);
    cz_st_writer_destroy(w);
    if (s != CZ_OK) { /* not on disk: forget it (and a best that pointed at it) */
        pthread_mutex_lock(&t->mu);
        t->nckpt--;
        t->best_step = -1;
        t->best_l1 = NAN;
        for (size_t i = 0; i < t->nckpt; i++)
            if (isfinite(t->ckpts[i].val_l1) && (t->best_step < 0 || t->ckpts[i].val_l1 < t->best_l1)) {
                t->best_step = t->ckpts[i].step;
                t->best_l1 = t->ckpts[i].val_l1;
            }
        pthread_mutex_unlock(&t->mu);
        return s;
    }
    CZ_LOGI(MOD, "checkpoint %s", path);
    prune_checkpoints(t);
    return CZ_OK;
}

static int have_ckpt(cz_trainer *t, long step) {
    for (size_t i = 0; i < t->nckpt; i++)
        if (t->ckpts[i].step == step) return 1;
    return 0;
}

static cz_status fail(cz_trainer *t, cz_status s) {
    pthread_mutex_lock(&t->mu);
    t->status = CZ_TRAIN_FAILED;
    snprintf(t->error, sizeof t->error, "%s", cz_error_detail());
    pthread_mutex_unlock(&t->mu);
    t->final_status = s;
    CZ_LOGE(MOD, "run failed at step %ld: %s", t->step, t->error);
    write_state(t); /* best effort: the disk may be what failed */
    cz_error_set(s, "%s", t->error);
    return s;
}

/* Validation (+ sheet) and checkpoint for the current step; the sheet when due or forced. */
static cz_status val_and_ckpt(cz_trainer *t, int do_val, int do_ckpt, int force_sheet, cz_val_metrics *m, int *have) {
    *have = 0;
    double l1 = NAN;
    if (do_val || do_ckpt) {
        long se = t->cfg.sample_every ? t->cfg.sample_every : t->cfg.validate_every;
        int sheet = force_sheet || (se && t->step % se == 0);
        CZ_TRY(validate(t, sheet, m));
        if (m->images) {
            *have = 1;
            l1 = m->l1;
        }
    }
    if (do_ckpt && !have_ckpt(t, t->step)) CZ_TRY(checkpoint(t, l1));
    return CZ_OK;
}

static cz_status finish_as(cz_trainer *t, cz_train_status st) {
    cz_val_metrics m;
    int have;
    cz_status s = val_and_ckpt(t, 1, 1, 1, &m, &have);
    if (s != CZ_OK) return fail(t, s);
    pthread_mutex_lock(&t->mu);
    t->status = st;
    t->eta = 0;
    pthread_mutex_unlock(&t->mu);
    s = write_state(t);
    if (s != CZ_OK) return fail(t, s);
    t->final_status = CZ_OK;
    cz_gan_record_stats r = cz_gan_recordings(t->gan);
    CZ_LOGI(MOD, "run %s at step %ld of %ld (steps: %ld replayed, %ld op by op; recordings made: %ld)",
            cz_train_status_name(st), t->step, t->total, r.replays, r.unrecorded, r.made);
    return CZ_OK;
}

/* ---------------------------------------------------------------- the loop */

int cz_trainer_done(const cz_trainer *t) { return t->status != CZ_TRAIN_RUNNING; }

void cz_trainer_cancel(cz_trainer *t) { atomic_store(&t->cancel, 1); }

cz_status cz_trainer_finish(cz_trainer *t) {
    if (t->status != CZ_TRAIN_RUNNING) return t->final_status;
    return finish_as(t, t->step >= t->total ? CZ_TRAIN_SUCCEEDED : CZ_TRAIN_CANCELLED);
}

/* The training batch of step number `no` (1-based) into tb. */
static cz_status next_batch(cz_trainer *t, long no) {
    CZ_TRY(cz_dataset_next_batch(t->ds, &t->tb));
    if (t->cfg.test_nan_at_step && t->cfg.test_nan_at_step == no) t->tb.B[0] = NAN;
    return CZ_OK;
}

/* Whether step `no` ends the run or is followed by validation or a checkpoint (which run the
 * generator on its input tensor, so no batch may be staged in it across them). */
static int stops_after(const cz_trainer *t, long no) {
    const cz_trainer_config *c = &t->cfg;
    return no >= t->total || (c->validate_every && no % c->validate_every == 0) ||
           (c->checkpoint_every && no % c->checkpoint_every == 0);
}

/* One training step, with the next step's batch read and uploaded while the device trains on
 * this one (cz_gan_stage). *epoch: the epoch of this step's last sample (tb holds the next
 * batch afterwards). */
static cz_status train_step(cz_trainer *t, cz_gan_losses *L, long *epoch) {
    const long no = t->step + 1;
    cz_status s;
    if (t->staged == no) {
        s = cz_gan_step_begin(t->gan, t->nb, NULL, NULL);
    } else {
        s = next_batch(t, no);
        if (s == CZ_OK) s = cz_gan_step_begin(t->gan, t->nb, t->tb.A, t->tb.B);
    }
    t->staged = 0;
    if (s != CZ_OK) return s;
    *epoch = (long)t->tb.info[t->nb - 1].epoch;
    if (!stops_after(t, no) && !atomic_load(&t->cancel)) {
        s = next_batch(t, no + 1);
        if (s == CZ_OK) s = cz_gan_stage(t->gan, t->nb, t->tb.A, t->tb.B);
        if (s == CZ_OK) t->staged = no + 1;
    }
    cz_status e = cz_gan_step_end(t->gan, L); /* ends the step even when staging failed */
    return s != CZ_OK ? s : e;
}

cz_status cz_trainer_step(cz_trainer *t) {
    if (t->status != CZ_TRAIN_RUNNING) return t->final_status;
    if (atomic_load(&t->cancel) || t->step >= t->total) return cz_trainer_finish(t);
    const cz_trainer_config *c = &t->cfg;
    if (c->lr_decay_steps)
        cz_gan_set_lr(t->gan, cz_lr_linear(c->lr, t->step, t->total - c->lr_decay_steps, c->lr_decay_steps));
    double t0 = now_s();
    cz_gan_losses L;
    long epoch = 0;
    cz_status s = train_step(t, &L, &epoch);
    if (s != CZ_OK) return fail(t, s);
    double dt = now_s() - t0;
    cz_train_record r = {cz_gan_steps(t->gan), epoch, L, dt > 0 ? t->nb / dt : 0};
    pthread_mutex_lock(&t->mu);
    s = grow((void **)&t->hist, &t->caphist, t->nhist + 1, sizeof *t->hist);
    if (s == CZ_OK) {
        t->hist[t->nhist++] = r;
        t->step = r.step;
        t->epoch = r.epoch;
        t->ips = r.images_per_s;
        t->run_time += dt;
        t->run_steps++;
        t->eta = t->run_time / (double)t->run_steps * (double)(t->total - t->step);
    }
    pthread_mutex_unlock(&t->mu);
    if (s != CZ_OK) return fail(t, s);
    char line[512];
    rec_line(line, sizeof line, &r);
    s = append_line(t->losses_f, line, "losses.jsonl");
    if (s != CZ_OK) return fail(t, s);

    cz_val_metrics m;
    int have = 0, last = t->step >= t->total;
    int do_val = c->validate_every && t->step % c->validate_every == 0;
    int do_ckpt = c->checkpoint_every && t->step % c->checkpoint_every == 0;
    if (last) {
        s = finish_as(t, CZ_TRAIN_SUCCEEDED);
        if (s != CZ_OK) return s;
        have = t->nvals && t->vals[t->nvals - 1].step == t->step;
        if (have) m = t->vals[t->nvals - 1].m;
    } else if (do_val || do_ckpt) {
        s = val_and_ckpt(t, do_val, do_ckpt, 0, &m, &have);
        if (s == CZ_OK) s = write_state(t);
        if (s != CZ_OK) return fail(t, s);
    }
    if (c->progress) {
        cz_train_progress p = {t->step, t->total, t->epoch, L, r.images_per_s, now_s() - t->t0, t->eta,
                               have ? &m : NULL};
        c->progress(&p, c->progress_user);
    }
    return CZ_OK;
}

cz_status cz_trainer_run(cz_trainer *t) {
    while (t->status == CZ_TRAIN_RUNNING) {
        cz_status s = cz_trainer_step(t);
        if (s != CZ_OK) return s;
    }
    return t->final_status;
}

cz_status cz_trainer_save_generator(cz_trainer *t, const char *path) {
    cz_st_writer *w = NULL;
    cz_status s = cz_st_writer_create(&w);
    if (s == CZ_OK) s = cz_unet_train_export(cz_gan_generator(t->gan), w);
    if (s == CZ_OK) s = cz_st_writer_save(w, path);
    cz_st_writer_destroy(w);
    return s;
}

/* ---------------------------------------------------------------- observers */

void cz_trainer_get_info(cz_trainer *t, cz_trainer_info *info) {
    memset(info, 0, sizeof *info);
    pthread_mutex_lock(&t->mu);
    info->status = t->status;
    info->step = t->step;
    info->total = t->total;
    info->epoch = t->epoch;
    info->batch = t->nb;
    info->image_size = t->size;
    info->arch = t->arch;
    if (t->nhist) info->last_losses = t->hist[t->nhist - 1].losses;
    info->images_per_s = t->ips;
    info->eta_s = t->eta;
    info->elapsed_s = now_s() - t->t0;
    info->have_val = t->nvals > 0;
    if (t->nvals) info->last_val = t->vals[t->nvals - 1];
    info->best_step = t->best_step;
    info->best_l1 = t->best_l1;
    info->last_checkpoint_step = t->nckpt ? t->ckpts[t->nckpt - 1].step : -1;
    if (t->nckpt)
        snprintf(info->last_checkpoint, sizeof info->last_checkpoint, "%s/checkpoints/step_%ld.safetensors",
                 t->out_dir, t->ckpts[t->nckpt - 1].step);
    info->train_files = t->ds ? cz_dataset_train_count(t->ds) : 0;
    info->val_files = t->ds ? cz_dataset_val_count(t->ds) : 0;
    snprintf(info->error, sizeof info->error, "%s", t->error);
    pthread_mutex_unlock(&t->mu);
}

size_t cz_trainer_losses(cz_trainer *t, cz_train_record *out, size_t cap, size_t stride) {
    if (!stride) stride = 1;
    pthread_mutex_lock(&t->mu);
    size_t n = t->nhist, k = 0;
    for (size_t i = 0; i < n && k < cap; i += stride) out[k++] = t->hist[i];
    pthread_mutex_unlock(&t->mu);
    return n;
}

size_t cz_trainer_vals(cz_trainer *t, cz_val_record *out, size_t cap) {
    pthread_mutex_lock(&t->mu);
    size_t n = t->nvals;
    for (size_t i = 0; i < n && i < cap; i++) out[i] = t->vals[i];
    pthread_mutex_unlock(&t->mu);
    return n;
}
