/* gan.c: the pix2pix training step (order, losses and determinism in gan.h), checkpoint save
 * and restore of the whole training state. One thread at a time. Tested by
 * tests/unit/test_train.c and tests/unit/test_train_golden.c. */
#include "gan.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

/* Recorded steps (gan.h "Recorded steps"): the step variables (backend.h var_set) and one
 * recording per batch size in use. */
enum { VAR_SEED = 0, VAR_OPT_D = 1, VAR_OPT_G = 4, VAR_N = 7 };
_Static_assert(VAR_N <= CZ_STEP_VARS, "more step variables than the backend holds");
#define GAN_RECS 4
enum { REC_NEW = 0, REC_SEEN, REC_READY, REC_OFF };
typedef struct gan_rec {
    int n;           /* batch size; 0: slot unused */
    int state;       /* REC_SEEN: one step ran unrecorded (algorithms chosen, scratch sized);
                      * REC_READY: rec replays; REC_OFF: recording failed, steps run unrecorded */
    cz_recording *rec;
    long used;       /* step number of its last use (the least recent is replaced) */
} gan_rec;

struct cz_gan {
    cz_backend *be;
    cz_gan_config cfg;
    cz_unet_train *g;
    cz_patchgan *d;
    cz_adam *opt_g, *opt_d;
    long steps;
    int max_batch, h, w;
    cz_tensor b;     /* target batch (max_batch, out_ch, h, w) */
    cz_tensor gfake; /* d(loss_G)/d(fake) */
    cz_tensor ga;    /* scratch for the condition's half of d(D input), discarded */
    cz_tensor dlog;  /* d(loss)/d(logits) */
    int queued;             /* the backend has loss_queue, loss_read and adam_multi */
    double host_loss[CZ_LOSS_SLOTS]; /* otherwise: the step's losses, computed as it goes */
    int in_flight;          /* begun, not ended */
    int staged_n;           /* images uploaded by cz_gan_stage for the next step, 0 none */
    uint64_t tickets[2];    /* and their transfers */
    int n_tickets;
    int vars;               /* the backend has step variables and recordings: steps are recorded */
    gan_rec recs[GAN_RECS];
    cz_gan_record_stats rstats;
};

cz_gan_config cz_gan_config_default(void) {
    cz_gan_config c = {.adam = cz_adam_config_default(), .lambda_l1 = 100.f, .ndf = 64, .n_layers = 3,
                       .dropout = 0.5f, .seed = 1, .act_dtype = CZ_F32, .unrecorded = 0};
    return c;
}

uint64_t cz_gan_step_seed(uint64_t seed, long step) { return seed + (uint64_t)step * 0xD1B54A32D192ED03ull; }
cz_unet_train *cz_gan_generator(cz_gan *gan) { return gan->g; }
cz_patchgan *cz_gan_discriminator(cz_gan *gan) { return gan->d; }
long cz_gan_steps(const cz_gan *gan) { return gan->steps; }

void cz_gan_set_lr(cz_gan *gan, float lr) {
    cz_adam_set_lr(gan->opt_g, lr);
    cz_adam_set_lr(gan->opt_d, lr);
}

/* Frees every recording (their tensors are about to go, or the caller wants fresh ones). */
static void drop_recordings(cz_gan *gan) {
    for (int i = 0; i < GAN_RECS; i++) {
        if (gan->recs[i].rec) gan->be->ops->record_free(gan->be, gan->recs[i].rec);
        gan->recs[i] = (gan_rec){0};
    }
}

cz_gan_record_stats cz_gan_recordings(const cz_gan *gan) {
    cz_gan_record_stats r = gan->rstats;
    r.active = 0;
    for (int i = 0; i < GAN_RECS; i++) r.active += gan->recs[i].state == REC_READY;
    return r;
}

static void free_plan(cz_gan *gan) {
    drop_recordings(gan);
    cz_tensor_free(gan->be, &gan->b);
    cz_tensor_free(gan->be, &gan->gfake);
    cz_tensor_free(gan->be, &gan->ga);
    cz_tensor_free(gan->be, &gan->dlog);
    gan->max_batch = gan->h = gan->w = 0;
    gan->staged_n = gan->n_tickets = 0; /* (freeing waited for the device) */
}

void cz_gan_destroy(cz_gan *gan) {
    if (!gan) return;
    free_plan(gan);
    cz_adam_destroy(gan->opt_g);
    cz_adam_destroy(gan->opt_d);
    cz_patchgan_destroy(gan->d);
    cz_unet_train_destroy(gan->g);
    free(gan);
}

static cz_status create_parts(cz_gan *gan, const cz_unet_arch *arch, const cz_safetensors *init) {
    cz_backend *be = gan->be;
    const cz_gan_config *c = &gan->cfg;
    CZ_TRY(cz_unet_train_create(be, arch, init, c->seed, &gan->g));
    CZ_TRY(cz_unet_train_set_dropout(gan->g, c->dropout));
    CZ_TRY(cz_unet_train_set_act_dtype(gan->g, c->act_dtype));
    const cz_unet_arch *ga = cz_unet_train_get_arch(gan->g);
    cz_patchgan_arch da = {.in_ch = ga->in_ch + ga->out_ch, .ndf = c->ndf, .n_layers = c->n_layers, .bn_eps = 1e-5f};
    const cz_safetensors *dst = NULL;
    if (init) {
        cz_status s = cz_patchgan_arch_from_meta(init, &da);
        if (s == CZ_OK)
            dst = init;
        else if (s != CZ_ERR_NOT_FOUND)
            return s;
    }
    if (da.in_ch != ga->in_ch + ga->out_ch)
        return cz_error_set(CZ_ERR_BAD_WEIGHTS, "discriminator takes %d channels, the generator gives %d + %d",
                            da.in_ch, ga->in_ch, ga->out_ch);
    CZ_TRY(cz_patchgan_create(be, &da, dst, c->seed, &gan->d));
    CZ_TRY(cz_patchgan_set_act_dtype(gan->d, c->act_dtype));
    int ng, nd;
    cz_param *pg = cz_unet_train_params(gan->g, &ng), *pd = cz_patchgan_params(gan->d, &nd);
    CZ_TRY(cz_adam_create(be, pg, ng, &c->adam, &gan->opt_g));
    CZ_TRY(cz_adam_create(be, pd, nd, &c->adam, &gan->opt_d));
    if (init && cz_st_meta(init, "train_step")) { /* resume */
        char *end;
        const char *v = cz_st_meta(init, "train_step");
        long t = strtol(v, &end, 10);
        if (end == v || *end || t < 0) return cz_error_set(CZ_ERR_BAD_WEIGHTS, "metadata train_step '%s' invalid", v);
        CZ_TRY(cz_adam_load(gan->opt_g, "opt_g.", init));
        CZ_TRY(cz_adam_load(gan->opt_d, "opt_d.", init));
        gan->steps = t;
    }
    return CZ_OK;
}

cz_status cz_gan_create(cz_backend *be, const cz_gan_config *cfg, const cz_unet_arch *arch, const cz_safetensors *init,
                        cz_gan **out) {
    *out = NULL;
    cz_gan_config c = cfg ? *cfg : cz_gan_config_default();
    if (!(c.lambda_l1 >= 0.f && c.lambda_l1 < 1e6f))
        return cz_error_set(CZ_ERR_INVALID_ARG, "lambda_l1 %g out of range", (double)c.lambda_l1);
    const char *need[] = {"conv2d", "deconv2d", "bn_train_fwd", "bn_infer", "act_fwd", "concat", "dropout_fwd",
                          "bce_logits_fwd", "l1_fwd", "conv2d_bwd_data", "conv2d_bwd_weights", "deconv2d_bwd_data",
                          "deconv2d_bwd_weights", "bn_train_bwd", "act_bwd", "concat_bwd", "dropout_bwd",
                          "bce_logits_bwd", "l1_bwd", "adam_step"};
    const cz_backend_ops *o = be->ops;
    const void *have[] = {(void *)o->conv2d, (void *)o->deconv2d, (void *)o->bn_train_fwd, (void *)o->bn_infer,
                          (void *)o->act_fwd, (void *)o->concat, (void *)o->dropout_fwd, (void *)o->bce_logits_fwd,
                          (void *)o->l1_fwd, (void *)o->conv2d_bwd_data, (void *)o->conv2d_bwd_weights,
                          (void *)o->deconv2d_bwd_data, (void *)o->deconv2d_bwd_weights, (void *)o->bn_train_bwd,
                          (void *)o->act_bwd, (void *)o->concat_bwd, (void *)o->dropout_bwd,
                          (void *)o->bce_logits_bwd, (void *)o->l1_bwd, (void *)o->adam_step};
    for (size_t i = 0; i < sizeof need / sizeof need[0]; i++)
        if (!have[i])
            return cz_error_set(CZ_ERR_UNSUPPORTED, "backend '%s' cannot train: no %s", o->name, need[i]);
    cz_gan *gan = calloc(1, sizeof *gan);
    if (!gan) return cz_error_set(CZ_ERR_NOMEM, "gan: out of memory");
    gan->be = be;
    gan->cfg = c;
    gan->queued = o->loss_queue && o->loss_read && o->adam_multi;
    gan->vars = gan->queued && !c.unrecorded && o->var_set && o->dropout_fwd_var && o->adam_multi_var &&
                o->record_begin && o->record_end && o->replay && o->record_free;
    cz_status s = create_parts(gan, arch, init);
    if (s != CZ_OK) {
        cz_gan_destroy(gan);
        return s;
    }
    *out = gan;
    return CZ_OK;
}

cz_status cz_gan_plan(cz_gan *gan, int max_batch, int h, int w) {
    drop_recordings(gan); /* the parts may reallocate what they point into */
    CZ_TRY(cz_unet_train_plan(gan->g, max_batch, h, w));
    CZ_TRY(cz_patchgan_plan(gan->d, max_batch, h, w));
    if (gan->max_batch == max_batch && gan->h == h && gan->w == w) return CZ_OK;
    free_plan(gan);
    const cz_unet_arch *a = cz_unet_train_get_arch(gan->g);
    const cz_patchgan_arch *da = cz_patchgan_get_arch(gan->d);
    int oh = cz_patchgan_out_size(da, h), ow = cz_patchgan_out_size(da, w);
    cz_backend *be = gan->be;
    cz_status s = cz_tensor_alloc(be, &gan->b, gan->cfg.act_dtype, CZ_ROLE_ACT, max_batch, a->out_ch, h, w);
    if (s == CZ_OK) s = cz_tensor_alloc(be, &gan->gfake, gan->cfg.act_dtype, CZ_ROLE_ACT, max_batch, a->out_ch, h, w);
    if (s == CZ_OK) s = cz_tensor_alloc(be, &gan->ga, gan->cfg.act_dtype, CZ_ROLE_ACT, max_batch, a->in_ch, h, w);
    if (s == CZ_OK) s = cz_tensor_alloc(be, &gan->dlog, gan->cfg.act_dtype, CZ_ROLE_ACT, max_batch, 1, oh, ow);
    if (s != CZ_OK) {
        free_plan(gan);
        return s;
    }
    gan->max_batch = max_batch;
    gan->h = h;
    gan->w = w;
    return CZ_OK;
}

/* The step's losses, one loss slot each (backend.h loss_queue). g_l1 is the raw mean, before
 * lambda. The optimizers' gates: D's update needs both D losses finite, G's all four. */
enum { SL_D_FAKE, SL_D_REAL, SL_G_GAN, SL_G_L1, SL_N };
#define GATE_D ((1u << SL_D_FAKE) | (1u << SL_D_REAL))
#define GATE_G (GATE_D | (1u << SL_G_GAN) | (1u << SL_G_L1))
_Static_assert(SL_N <= CZ_LOSS_SLOTS, "more losses than loss slots");
static const char *const slot_name[SL_N] = {"D_fake", "D_real", "G_GAN", "G_L1"};

/* A loss into its slot: queued where the backend can, else computed now into host_loss. */
static cz_status loss(cz_gan *gan, int slot, const cz_tensor *x, const cz_tensor *y, float target) {
    cz_backend *be = gan->be;
    if (gan->queued) return be->ops->loss_queue(be, slot, x, y, target);
    double *out = &gan->host_loss[slot];
    return y ? be->ops->l1_fwd(be, x, y, out) : be->ops->bce_logits_fwd(be, x, target, out);
}

/* D(cat(cond, color)) -> mean BCE against `target` into `slot`; dlog = scale * d(loss)/d(logits). */
static cz_status d_eval(cz_gan *gan, int n, const cz_tensor *cond, const cz_tensor *color, float target,
                        float scale, int slot, cz_tensor *dlog) {
    cz_backend *be = gan->be;
    cz_tensor xin = cz_tensor_batch_view(*cz_patchgan_input(gan->d), n);
    CZ_TRY(be->ops->concat(be, cond, color, &xin));
    const cz_tensor *logits;
    CZ_TRY(cz_patchgan_forward(gan->d, n, &logits));
    CZ_TRY(loss(gan, slot, logits, NULL, target));
    return be->ops->bce_logits_bwd(be, logits, target, scale, dlog);
}

/* The reported value of slot i (G_L1 times lambda, as the loss it is). */
static double slot_value(const cz_gan *gan, int i, const double *v) {
    return i == SL_G_L1 ? v[i] * (double)gan->cfg.lambda_l1 : v[i];
}

/* The first non-finite loss among slots [from, to) of v, as CZ_ERR_NONFINITE; CZ_OK if none. */
static cz_status first_nonfinite(const cz_gan *gan, const double *v, int from, int to, long step) {
    for (int i = from; i < to; i++) {
        double x = slot_value(gan, i, v);
        if (!isfinite(x)) return cz_error_set(CZ_ERR_NONFINITE, "step %ld: %s is %g", step, slot_name[i], x);
    }
    return CZ_OK;
}

/* On a synchronous backend the losses are known at once: stop before the optimizer step they
 * would feed, as the gated update does on the device. */
static cz_status check_now(const cz_gan *gan, int from, int to, long step) {
    return gan->queued ? CZ_OK : first_nonfinite(gan, gan->host_loss, from, to, step);
}

static cz_status check_batch(const cz_gan *gan, int n, const char *what) {
    if (!gan->max_batch || n < 1 || n > gan->max_batch)
        return cz_error_set(CZ_ERR_INVALID_ARG, "gan %s: batch %d not planned (max %d)", what, n, gan->max_batch);
    return CZ_OK;
}

/* Forgets the staged batch once its copies are done. */
static cz_status drop_staged(cz_gan *gan) {
    gan->staged_n = 0;
    while (gan->n_tickets > 0) {
        cz_status s = gan->be->ops->transfer_wait(gan->be, gan->tickets[gan->n_tickets - 1]);
        gan->n_tickets--;
        CZ_TRY(s);
    }
    return CZ_OK;
}

cz_status cz_gan_stage(cz_gan *gan, int n, const float *A, const float *B) {
    CZ_TRY(check_batch(gan, n, "stage"));
    if (!A || !B) return cz_error_set(CZ_ERR_INVALID_ARG, "gan stage: A or B is NULL");
    cz_backend *be = gan->be;
    const cz_backend_ops *ops = be->ops;
    cz_tensor a = cz_tensor_batch_view(*cz_unet_train_input(gan->g), n), b = cz_tensor_batch_view(gan->b, n);
    CZ_TRY(drop_staged(gan));
    if (ops->write_async && ops->transfer_wait) {
        /* copies on the upload stream now; the conversions queue behind the step in flight */
        CZ_TRY(ops->write_async(be, &a, A, &gan->tickets[0]));
        gan->n_tickets = 1;
        CZ_TRY(ops->write_async(be, &b, B, &gan->tickets[1]));
        gan->n_tickets = 2;
    } else {
        CZ_TRY(ops->tensor_write(be, &a, A));
        CZ_TRY(ops->tensor_write(be, &b, B));
    }
    gan->staged_n = n;
    return CZ_OK;
}

/* Queues every op of step t on n images whose inputs are in place. vars != 0: the dropout seed
 * and the optimizers' step values come from the step variables (set by step_vars), so that the
 * ops may be recorded; the optimizers' counts were advanced there. */
static cz_status queue_step(cz_gan *gan, int n, long t, int vars) {
    cz_backend *be = gan->be;
    const cz_backend_ops *ops = be->ops;
    cz_tensor a = cz_tensor_batch_view(*cz_unet_train_input(gan->g), n);
    cz_tensor b = cz_tensor_batch_view(gan->b, n), dlog = cz_tensor_batch_view(gan->dlog, n);
    const cz_tensor *fake;
    if (vars)
        CZ_TRY(cz_unet_train_forward_var(gan->g, n, VAR_SEED, &fake));
    else
        CZ_TRY(cz_unet_train_forward(gan->g, n, 1, cz_gan_step_seed(gan->cfg.seed, t), &fake));

    /* ---- D step: 0.5 * (BCE(D(A, fake), 0) + BCE(D(A, B), 1)) */
    CZ_TRY(d_eval(gan, n, &a, fake, 0.f, 0.5f, SL_D_FAKE, &dlog));
    CZ_TRY(cz_patchgan_backward(gan->d, &dlog, CZ_GRAD_OVERWRITE, NULL));
    CZ_TRY(d_eval(gan, n, &a, &b, 1.f, 0.5f, SL_D_REAL, &dlog));
    CZ_TRY(cz_patchgan_backward(gan->d, &dlog, CZ_GRAD_ACCUMULATE, NULL));
    CZ_TRY(check_now(gan, SL_D_FAKE, SL_D_REAL + 1, t));
    CZ_TRY(vars ? cz_adam_step_var(gan->opt_d, VAR_OPT_D, GATE_D) : cz_adam_step_gated(gan->opt_d, GATE_D));

    /* ---- G step: BCE(D(A, fake), 1) + lambda * mean|fake - B|, D's parameters untouched */
    const cz_tensor *dx;
    CZ_TRY(d_eval(gan, n, &a, fake, 1.f, 1.f, SL_G_GAN, &dlog));
    CZ_TRY(cz_patchgan_backward(gan->d, &dlog, CZ_GRAD_NONE, &dx));
    CZ_TRY(loss(gan, SL_G_L1, fake, &b, 0.f));
    CZ_TRY(check_now(gan, SL_G_GAN, SL_G_L1 + 1, t));
    cz_tensor gf = cz_tensor_batch_view(gan->gfake, n), ga = cz_tensor_batch_view(gan->ga, n);
    CZ_TRY(ops->l1_bwd(be, fake, &b, gan->cfg.lambda_l1, &gf));
    /* gf += the color half of d(D input); the condition half goes to (zeroed) scratch */
    CZ_TRY(ops->tensor_zero(be, &ga));
    CZ_TRY(ops->concat_bwd(be, dx, &ga, &gf, 1));
    CZ_TRY(cz_unet_train_backward(gan->g, &gf, CZ_GRAD_OVERWRITE));
    CZ_TRY(vars ? cz_adam_step_var(gan->opt_g, VAR_OPT_G, GATE_G) : cz_adam_step_gated(gan->opt_g, GATE_G));
    return CZ_OK;
}

/* The slot for batch size n, claiming the least recently used one if none. (The dropout
 * probability, also baked into a recording, is set once, at cz_gan_create.) */
static gan_rec *rec_slot(cz_gan *gan, int n, long t) {
    gan_rec *best = &gan->recs[0];
    for (int i = 0; i < GAN_RECS; i++) {
        gan_rec *r = &gan->recs[i];
        if (r->n == n) {
            r->used = t;
            return r;
        }
        if (r->n == 0 || (best->n != 0 && r->used < best->used)) best = r;
    }
    if (best->rec) gan->be->ops->record_free(gan->be, best->rec);
    *best = (gan_rec){.n = n, .state = REC_NEW, .used = t};
    return best;
}

/* Records step t's ops into r->rec. On failure nothing was recorded and the cause is logged. */
static cz_status record_step(cz_gan *gan, int n, long t, gan_rec *r) {
    cz_backend *be = gan->be;
    cz_status s = be->ops->record_begin(be);
    if (s == CZ_OK) {
        s = queue_step(gan, n, t, 1);
        char why[256];
        snprintf(why, sizeof why, "%s", s == CZ_OK ? "" : cz_error_detail());
        cz_recording *rec = NULL;
        cz_status e = be->ops->record_end(be, &rec); /* always ends the capture */
        if (s == CZ_OK && e == CZ_OK) {
            r->rec = rec;
            return CZ_OK;
        }
        if (rec) be->ops->record_free(be, rec);
        if (s != CZ_OK) s = cz_error_set(s, "%s", why);
        else s = e;
    }
    CZ_LOGW("train", "training steps of %d images run unrecorded: %s", n, cz_error_detail());
    return s;
}

/* step_vars once the variables are set. */
static cz_status run_step(cz_gan *gan, int n, long t) {
    cz_backend *be = gan->be;
    gan_rec *r = rec_slot(gan, n, t);
    if (r->state == REC_READY) {
        cz_status s = be->ops->replay(be, r->rec);
        if (s == CZ_OK) gan->rstats.replays++;
        if (s != CZ_ERR_UNAVAILABLE) return s;
        /* backend memory it used has moved: record again */
        be->ops->record_free(be, r->rec);
        r->rec = NULL;
        r->state = REC_SEEN;
        gan->rstats.stale++;
    }
    if (r->state == REC_SEEN) {
        if (record_step(gan, n, t, r) == CZ_OK) {
            cz_log(gan->rstats.made ? CZ_LOG_DEBUG : CZ_LOG_INFO, "train",
                   "training steps of %d images recorded as one graph; later steps of that size replay it", n);
            r->state = REC_READY;
            gan->rstats.made++;
            CZ_TRY(be->ops->replay(be, r->rec));
            gan->rstats.replays++;
            return CZ_OK;
        }
        r->state = REC_OFF;
        gan->rstats.failed++;
    }
    CZ_TRY(queue_step(gan, n, t, 1));
    if (r->state == REC_NEW) r->state = REC_SEEN;
    gan->rstats.unrecorded++;
    return CZ_OK;
}

/* Step t with the step variables: set them, then replay the recording for n images, or record
 * it (the second step of that size: the first ran unrecorded, choosing algorithms and sizing
 * scratch memory), or run the ops unrecorded. */
static cz_status step_vars(cz_gan *gan, int n, long t) {
    cz_backend *be = gan->be;
    uint64_t v[VAR_N];
    v[VAR_SEED] = cz_gan_step_seed(gan->cfg.seed, t);
    cz_adam_next_vars(gan->opt_d, v + VAR_OPT_D);
    cz_adam_next_vars(gan->opt_g, v + VAR_OPT_G);
    cz_status s = be->ops->var_set(be, 0, VAR_N, v);
    if (s == CZ_OK) s = run_step(gan, n, t);
    if (s != CZ_OK) { /* a failed step is not counted, nor are its optimizer updates */
        cz_adam_rewind(gan->opt_d);
        cz_adam_rewind(gan->opt_g);
    }
    return s;
}

cz_status cz_gan_step_begin(cz_gan *gan, int n, const float *A, const float *B) {
    CZ_TRY(check_batch(gan, n, "step"));
    if (gan->in_flight) return cz_error_set(CZ_ERR_INVALID_ARG, "gan step: the previous step was not ended");
    cz_backend *be = gan->be;
    const cz_backend_ops *ops = be->ops;
    const long t = gan->steps + 1;
    cz_tensor a = cz_tensor_batch_view(*cz_unet_train_input(gan->g), n), b = cz_tensor_batch_view(gan->b, n);
    if (A || B) {
        if (!A || !B) return cz_error_set(CZ_ERR_INVALID_ARG, "gan step: A or B is NULL");
        CZ_TRY(drop_staged(gan)); /* its copies still read the caller's buffers */
        CZ_TRY(ops->tensor_write(be, &a, A));
        CZ_TRY(ops->tensor_write(be, &b, B));
    } else {
        if (gan->staged_n != n)
            return cz_error_set(CZ_ERR_INVALID_ARG, "gan step: no staged batch of %d images (staged: %d)", n,
                                gan->staged_n);
        /* waiting for the copies lets the caller reuse its buffers once this returns; after a
         * step in flight they are long done */
        CZ_TRY(drop_staged(gan));
    }
    CZ_TRY(gan->vars ? step_vars(gan, n, t) : queue_step(gan, n, t, 0));
    gan->in_flight = 1;
    return CZ_OK;
}

cz_status cz_gan_step_end(cz_gan *gan, cz_gan_losses *losses) {
    if (!gan->in_flight) return cz_error_set(CZ_ERR_INVALID_ARG, "gan step end: no step in flight");
    gan->in_flight = 0;
    cz_backend *be = gan->be;
    const long t = gan->steps + 1;
    double v[SL_N];
    if (gan->queued) {
        CZ_TRY(be->ops->loss_read(be, v, SL_N));
        /* the device skipped the updates a non-finite loss would have fed: take their counts back */
        int d_bad = first_nonfinite(gan, v, SL_D_FAKE, SL_D_REAL + 1, t) != CZ_OK;
        int g_bad = d_bad || first_nonfinite(gan, v, SL_G_GAN, SL_G_L1 + 1, t) != CZ_OK;
        if (d_bad) cz_adam_rewind(gan->opt_d);
        if (g_bad) cz_adam_rewind(gan->opt_g);
        CZ_TRY(first_nonfinite(gan, v, 0, SL_N, t));
    } else {
        memcpy(v, gan->host_loss, sizeof v);
        CZ_TRY(be->ops->sync(be));
    }
    gan->steps = t;
    if (losses) {
        losses->d_fake = slot_value(gan, SL_D_FAKE, v);
        losses->d_real = slot_value(gan, SL_D_REAL, v);
        losses->g_gan = slot_value(gan, SL_G_GAN, v);
        losses->g_l1 = slot_value(gan, SL_G_L1, v);
    }
    return CZ_OK;
}

cz_status cz_gan_step(cz_gan *gan, int n, const float *A, const float *B, cz_gan_losses *losses) {
    if (!A || !B) return cz_error_set(CZ_ERR_INVALID_ARG, "gan step: A or B is NULL");
    CZ_TRY(cz_gan_step_begin(gan, n, A, B));
    return cz_gan_step_end(gan, losses);
}

cz_status cz_gan_save(cz_gan *gan, cz_st_writer *w) {
    char buf[32];
    CZ_TRY(cz_unet_train_export(gan->g, w));
    CZ_TRY(cz_patchgan_export(gan->d, w));
    CZ_TRY(cz_adam_save(gan->opt_g, "opt_g.", w));
    CZ_TRY(cz_adam_save(gan->opt_d, "opt_d.", w));
    snprintf(buf, sizeof buf, "%ld", gan->steps);
    return cz_st_writer_meta(w, "train_step", buf);
}
