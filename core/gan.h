/* gan.h: one pix2pix training step (Isola et al. 2017; the reference implementation's
 * Pix2PixModel.optimize_parameters, in its order) over the U-Net training graph
 * (unet_train.h), the PatchGAN (patchgan.h) and two Adam optimizers (optim.h):
 *
 *   fake = G(A)                                  (training mode, dropout seeded per step)
 *   D step:  D_fake = BCE(D(cat(A, fake)), 0)    (fake detached: no gradient into G)
 *            D_real = BCE(D(cat(A, B)), 1)
 *            loss_D = 0.5 (D_fake + D_real) -> D gradients -> Adam step on D
 *   G step:  G_GAN = BCE(D(cat(A, fake)), 1)     (D already updated; D's parameters get no
 *                                                 gradient here, only d/d(fake) flows)
 *            G_L1  = lambda * mean|fake - B|     (lambda 100; reported WITH lambda, as the
 *                                                 reference's loss_G_L1)
 *            loss_G = G_GAN + G_L1 -> G gradients -> Adam step on G
 * BCE is BCE-with-logits averaged over every patch logit. Each D call updates D's BatchNorm
 * running statistics (three per step, as in torch). After a step the gradient tensors hold
 * d(loss_D)/d(D params) and d(loss_G)/d(G params) of that step (tests read them).
 *
 * A: the condition (lab: L/50 - 1, one channel; rgb: RGB in [-1, 1]); B: the target (lab:
 * ab/110; rgb: RGB), host fp32 NCHW. Determinism: the same weights, batch, config and step
 * number give the same result on a backend; the generator's dropout seed for step t (1-based)
 * is cz_gan_step_seed(seed, t) = seed + t * 0xD1B54A32D192ED03 (mod 2^64), levels derived by
 * cz_unet_train_level_seed.
 * Errors: a non-finite loss returns CZ_ERR_NONFINITE and the optimizer step it would feed does
 * not happen (a D loss: no parameter or moment updated; a G loss: D already updated, G not).
 * BatchNorm running statistics and gradients are not covered. The model should then be
 * reloaded from a checkpoint.
 *
 * Recorded steps: on a backend with step variables and recordings (backend.h var_set,
 * record_begin; cuda), the dropout seed and both optimizers' lr and bias corrections go to the
 * device as step variables, and every op of a step reads them from there. The first step on n
 * images runs its ops one by one (choosing convolution algorithms, sizing scratch memory), the
 * second records them (a CUDA graph), and every later one replays that recording: two launches
 * (the variables, the graph) instead of hundreds of calls. The results are the same bit for bit
 * (the same deterministic algorithms run either way; tests/unit/test_train.c checks it). Up to 4
 * batch sizes keep a recording;
 * a recording that fails is logged and that size runs unrecorded from then on; cz_gan_plan
 * drops them all. cz_gan_config.unrecorded turns this off.
 *
 * Threading: one thread at a time (the backend's owner). Tested by tests/unit/test_train.c
 * (overfitting, non-finite detection, determinism) and tests/unit/test_train_golden.c
 * (losses, every gradient and five steps against PyTorch). */
#ifndef CZ_GAN_H
#define CZ_GAN_H

#include <stdint.h>

#include "backend.h"
#include "optim.h"
#include "patchgan.h"
#include "safetensors.h"
#include "status.h"
#include "unet.h"
#include "unet_train.h"

typedef struct cz_gan_config {
    cz_adam_config adam; /* both optimizers (2e-4, 0.5, 0.999, 1e-8) */
    float lambda_l1;     /* 100 */
    int ndf;             /* 64 (used when the initial weights have no discriminator) */
    int n_layers;        /* 3 */
    float dropout;       /* 0.5 */
    uint64_t seed;       /* fresh weights and the dropout streams */
    cz_dtype act_dtype;  /* CZ_F32, or CZ_BF16 for mixed precision (fp32 master weights) */
    int unrecorded;      /* 1: never record steps (see "Recorded steps"); 0 */
} cz_gan_config;

cz_gan_config cz_gan_config_default(void);

typedef struct cz_gan_losses {
    double g_gan, g_l1, d_real, d_fake;
} cz_gan_losses;

typedef struct cz_gan cz_gan;

/* Generator from `init` (its metadata architecture; `arch` may then be NULL) or fresh from
 * `arch`; discriminator from init's disc.* tensors when it has them, else fresh (ndf,
 * n_layers, in_ch = G's in_ch + out_ch). Optimizer moments and the step count are restored
 * when init holds them (written by cz_gan_save), else start at zero. */
cz_status cz_gan_create(cz_backend *be, const cz_gan_config *cfg, const cz_unet_arch *arch,
                        const cz_safetensors *init, cz_gan **out);
void cz_gan_destroy(cz_gan *gan);
/* Plans G and D for up to max_batch images of h x w. */
cz_status cz_gan_plan(cz_gan *gan, int max_batch, int h, int w);
/* One step on n images (n <= max_batch): A is n*in_ch*h*w floats, B n*out_ch*h*w.
 * cz_gan_step_begin then cz_gan_step_end. */
cz_status cz_gan_step(cz_gan *gan, int n, const float *A, const float *B, cz_gan_losses *losses);
/* A step in two halves, so that the host prepares the next batch while the device trains on
 * this one. begin queues the whole step on n images: A and B as for cz_gan_step, or both NULL
 * for the batch cz_gan_stage uploaded; it may return before the device is done. end waits for
 * it, reads the losses (on a backend with loss_queue, the step's one wait) and advances the
 * step count. On a synchronous backend a non-finite loss fails begin; on a queued one the
 * device skips the optimizer steps it would feed (backend.h adam_multi) and end reports it:
 * either way CZ_ERR_NONFINITE as described above, and the step count stays. Between begin and
 * end only cz_gan_stage may be called. */
cz_status cz_gan_step_begin(cz_gan *gan, int n, const float *A, const float *B);
cz_status cz_gan_step_end(cz_gan *gan, cz_gan_losses *losses);
/* Queues the upload of the batch the next cz_gan_step_begin(gan, n, NULL, NULL) trains on, so
 * that it overlaps the step in flight (ordered after it on the device). A and B as for
 * cz_gan_step; from the backend's host_alloc (page-locked) for a copy that really overlaps,
 * and unchanged until that begin returns. It overwrites the generator's input: nothing else may
 * use it (validation) between stage and that begin. */
cz_status cz_gan_stage(cz_gan *gan, int n, const float *A, const float *B);
/* Sets both optimizers' learning rate (e.g. from cz_lr_linear). */
void cz_gan_set_lr(cz_gan *gan, float lr);
long cz_gan_steps(const cz_gan *gan);
/* What "Recorded steps" did so far: steps replayed, recordings made, steps run op by op,
 * recordings that failed, recordings found stale (backend memory moved; made again), and the
 * recordings held now. */
typedef struct cz_gan_record_stats {
    long replays, made, unrecorded, failed, stale;
    int active;
} cz_gan_record_stats;
cz_gan_record_stats cz_gan_recordings(const cz_gan *gan);
uint64_t cz_gan_step_seed(uint64_t seed, long step);
cz_unet_train *cz_gan_generator(cz_gan *gan);
cz_patchgan *cz_gan_discriminator(cz_gan *gan);
/* A resumable checkpoint: the generator (loads with cz_unet_create), disc.*, the optimizers'
 * moments (opt_g./opt_d. prefixes) and metadata train_step. */
cz_status cz_gan_save(cz_gan *gan, cz_st_writer *w);

#endif
