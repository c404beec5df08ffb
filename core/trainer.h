/* trainer.h: one pix2pix training RUN on a dataset directory: the loop around cz_gan_step
 * that the CLI (`colorize train`) drives now and the daemon's job system will drive next.
 *
 * Lifecycle (everything but cancel/get_info/history on ONE thread, the backend's owner):
 *   cz_trainer_create   opens the dataset, builds G and D (scratch, a generator weights file,
 *                       or a resumable checkpoint), creates the out dir, writes state.json;
 *   cz_trainer_step     exactly one G/D step plus whatever falls due after it (validation,
 *                       sample sheet, checkpoint); after the last step it finishes the run
 *                       itself. A daemon can interleave single steps between inference batches;
 *   cz_trainer_finish   ends the run early (status cancelled): final checkpoint + state;
 *   cz_trainer_run      convenience loop: step until done or cancelled, then finish;
 *   cz_trainer_cancel   from any thread (atomic flag): the next step call finishes instead.
 *
 * Out dir layout (every file but the append-only logs written atomically):
 *   losses.jsonl                   one object per step: step, epoch, g_gan, g_l1, d_real,
 *                                  d_fake, images_per_s (rewritten from the restored history
 *                                  on resume, then appended and flushed per step)
 *   val.jsonl                      one object per validation
 *   samples/step_<N>.png           gray | ours | truth rows for the first few val images
 *   checkpoints/step_<N>.safetensors  cz_gan_save (G, D, Adam moments, train_step) plus the
 *                                  run's metadata (trainer.*) and history tensors
 *                                  (trainer.losses, trainer.val); loads with cz_unet_create
 *   state.json                     step, total, status, error, last losses, last metrics,
 *                                  checkpoints [{step, path, val_l1}], best {step, path, val_l1}
 *
 * Validation runs every validate_every steps AND at every checkpoint (so each checkpoint has a
 * validation L1); `best` is the checkpoint with the lowest validation L1 (always an existing
 * file). It uses the training graph's eval mode (running statistics, no dropout), which is
 * cheaper than exporting to cz_unet and matches its output (tested in test_train.c).
 *
 * Failures put the run in status failed with cz_error_detail() saved as the reason:
 * CZ_ERR_NONFINITE for a NaN/Inf loss (no checkpoint is written after it, the previous one
 * stays the last good one), CZ_ERR_IO for write errors (the process is unaffected). A failed run
 * answers every later step with the same status.
 *
 * Resume from a checkpoint restores G, D, both optimizers, the step and the loss/validation
 * history, and fast-forwards the data stream by the steps already done (decoding the skipped
 * samples), so the next step's losses equal those of an uninterrupted run with the same seed.
 *
 * Tested by tests/unit/test_trainer.c and tests/cli/test_train_cli.sh. */
#ifndef CZ_TRAINER_H
#define CZ_TRAINER_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "gan.h"
#include "metrics_img.h"
#include "status.h"

typedef enum cz_train_init {
    CZ_TRAIN_INIT_SCRATCH = 0,    /* fresh weights (ngf, depth, ndf, seed) */
    CZ_TRAIN_INIT_WEIGHTS = 1,    /* generator from init_path; fresh D and optimizers, step 0 */
    CZ_TRAIN_INIT_CHECKPOINT = 2, /* resume from init_path (needs train_step metadata) */
    CZ_TRAIN_INIT_AUTO = 3        /* init_path: checkpoint when it has train_step, else weights */
} cz_train_init;

typedef enum cz_train_status {
    CZ_TRAIN_RUNNING = 0,
    CZ_TRAIN_SUCCEEDED = 1,
    CZ_TRAIN_FAILED = 2,
    CZ_TRAIN_CANCELLED = 3
} cz_train_status;

const char *cz_train_status_name(cz_train_status s); /* "running", ... */

/* One step's record (also one line of losses.jsonl). */
typedef struct cz_train_record {
    long step;
    long epoch;
    cz_gan_losses losses;
    double images_per_s;
} cz_train_record;

typedef struct cz_val_record {
    long step;
    cz_val_metrics m;
} cz_val_record;

typedef struct cz_train_progress {
    long step, total, epoch;
    cz_gan_losses losses;
    double images_per_s; /* this step */
    double elapsed_s;    /* since create */
    double eta_s;        /* remaining steps at this run's mean step time */
    const cz_val_metrics *val; /* non-NULL when this step validated */
} cz_train_progress;

typedef void (*cz_train_progress_fn)(const cz_train_progress *p, void *user);

typedef struct cz_trainer_config {
    const char *data_dir;   /* required */
    const char *val_dir;    /* NULL: hash split with val_fraction */
    double val_fraction;    /* 0.05 */
    const char *out_dir;    /* required: losses, samples, checkpoints, state.json */
    long steps;             /* total steps (absolute: a resumed run continues up to it) */
    double epochs;          /* used when steps == 0: ceil(epochs * train files / batch) */
    int batch;              /* 1 */
    int image_size;         /* 256; a multiple of 2^depth */
    int ngf;                /* 64 (scratch only) */
    int depth;              /* 0 = largest with 2^depth <= image_size, clamped to 5..8 */
    int ndf;                /* 64 (when D is fresh) */
    float lr;               /* 2e-4 */
    long lr_decay_steps;    /* 0: constant lr; else linear decay to 0 over the last N steps */
    float lambda_l1;        /* 100 */
    uint64_t seed;          /* weights, data order, augmentation, dropout */
    long validate_every;    /* 0 = only at checkpoints */
    long checkpoint_every;  /* 0 = only at the end */
    int keep_checkpoints;   /* 0 = keep all; else the newest N plus the best are kept on disk */
    long sample_every;      /* 0 = validate_every (sheets are made during validation) */
    int sample_images;      /* rows in a sample sheet (4) */
    int val_max_images;     /* validation images per validation (64; 0 = all) */
    int workers;            /* decode threads; 0 = cz_trainer_auto_workers (the default) */
    int cache_mb;           /* MiB of photos kept stretched between epochs (1024; 0 = decode every
                               sample again); see cz_dataset_config.cache_bytes */
    cz_dtype precision;     /* activations: CZ_F32, or CZ_BF16 (mixed precision, fp32 master weights) */
    long max_total_steps;   /* 0 = none; else a run whose total (from steps or epochs) is larger is refused */
    cz_train_init init;     /* SCRATCH unless init_path is given (then AUTO by default) */
    const char *init_path;
    cz_train_progress_fn progress;
    void *progress_user;
    long test_nan_at_step;  /* test hook: poison that step's target with NaN (0 = off) */
} cz_trainer_config;

void cz_trainer_config_default(cz_trainer_config *c);
#define CZ_TRAIN_MAX_CACHE_MB (1 << 20) /* cache_mb's ceiling: 1 TiB */

typedef struct cz_trainer cz_trainer;

/* Validates the config, checks that the backend implements every training op (a NULL slot
 * fails with CZ_ERR_UNSUPPORTED naming it), creates the model, opens the dataset, creates the
 * out dir. Errors: CZ_ERR_CONFIG / INVALID_ARG (bad values), NOT_FOUND (no data), BAD_WEIGHTS,
 * IO (out dir not writable), UNSUPPORTED. */
cz_status cz_trainer_create(cz_backend *be, const cz_trainer_config *cfg, cz_trainer **out);
/* Stops the decode threads and frees everything; does not finish the run. NULL: no-op. */
void cz_trainer_destroy(cz_trainer *t);

/* One step (see top). CZ_OK while running or once succeeded/cancelled; the run's error when
 * failed. */
cz_status cz_trainer_step(cz_trainer *t);
/* Non-zero once the run has succeeded, failed or been cancelled. */
int cz_trainer_done(const cz_trainer *t);
/* Ends a running run now as cancelled (final validation + checkpoint + state.json). No-op on
 * a finished run (returns its status). */
cz_status cz_trainer_finish(cz_trainer *t);
/* step() until done or cancelled, then finish(). Returns the final status. */
cz_status cz_trainer_run(cz_trainer *t);
/* Any thread, async-signal-safe: the run stops at the next step boundary. */
void cz_trainer_cancel(cz_trainer *t);

/* Writes the generator alone (loads with cz_unet_create / `colorize -m`), atomically. */
cz_status cz_trainer_save_generator(cz_trainer *t, const char *path);

/* A consistent snapshot; any thread. */
typedef struct cz_trainer_info {
    cz_train_status status;
    long step, total, epoch;
    int batch, image_size;
    cz_unet_arch arch;
    cz_gan_losses last_losses;
    double images_per_s, eta_s, elapsed_s;
    int have_val;
    cz_val_record last_val;
    long best_step; /* -1: none */
    double best_l1;
    long last_checkpoint_step; /* -1: none */
    size_t train_files, val_files;
    char error[256];
    char last_checkpoint[512];
} cz_trainer_info;
void cz_trainer_get_info(cz_trainer *t, cz_trainer_info *info);

/* Copies up to cap loss records (every stride-th, from the first) into out; returns how many
 * exist in total (a stride of 0 counts as 1). Any thread. */
size_t cz_trainer_losses(cz_trainer *t, cz_train_record *out, size_t cap, size_t stride);
size_t cz_trainer_vals(cz_trainer *t, cz_val_record *out, size_t cap);

/* The backend ops a training run needs that `be` leaves NULL: the first missing op's name,
 * or NULL when all are there. */
/* The decode threads a run gets when its config says 0: on a GPU backend one per online CPU
 * less two (the device thread and the HTTP or main thread), between 2 and 16, since the GPU
 * steps far faster than two threads decode; on a CPU backend 2, since the step itself wants the
 * cores. */
int cz_trainer_auto_workers(const cz_backend *be);
const char *cz_trainer_missing_op(const cz_backend *be);

#endif
