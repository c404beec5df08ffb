/* jobs.h: the training-job registry behind the daemon's admin API (server/CONTRACT.md,
 * "Training jobs and model activation"): parameters validated from JSON, a FIFO of jobs run
 * one at a time by cz_trainer on the device thread, job records persisted under a state
 * directory, cancel / resume, and the read side (job objects, loss history, sample sheets,
 * checkpoint lookup) as JSON.
 *
 * Layout: <state_dir>/jobs/<id>/job.json   this module's record (atomic writes)
 *         <state_dir>/jobs/<id>/run/        the trainer's out dir (see trainer.h)
 *
 * Threads: cz_jobs_tick runs on the device thread (it creates, steps and destroys trainers,
 * which use the serving backend); everything else may run on any thread. One mutex guards
 * the registry; a trainer is published and retired under it, so readers can snapshot a
 * running trainer (cz_trainer_get_info) safely. cz_jobs_close runs after the device thread
 * has stopped. Job records survive restarts: a job found queued or running at open was
 * interrupted and shows so; it can be resumed from its last checkpoint.
 *
 * Errors of the API calls come back as a cz_api_error (HTTP status, stable code, message),
 * the codes of the contract. Tested by tests/unit/test_jobs.c and end to end by
 * tests/integration/test_train_http.c. */
#ifndef CZ_JOBS_H
#define CZ_JOBS_H

#include <stddef.h>

#include "backend.h"
#include "status.h"

typedef struct cz_jobs_opts {
    const char *data_root;  /* "" or NULL: training disabled (submit answers 409) */
    const char *state_dir;  /* required */
    int max_jobs;           /* queued + running, at most */
    int max_steps, max_batch, max_image_size;
    int keep_checkpoints;   /* default of a job's keep_checkpoints */
    int workers;            /* decode threads of a running job */
    int cache_mb;           /* photo cache of a running job, MiB (cz_trainer_config.cache_mb) */
    int keep_jobs;          /* finished jobs kept on disk (0 = all): older ones are deleted, except
                             * the one whose checkpoint is in service and init sources of queued jobs */
} cz_jobs_opts;

typedef struct cz_api_error {
    int http;          /* 0 when no error */
    const char *code;  /* "invalid_field", "job_not_found", ... */
    int retry_after;   /* seconds, 0 = none */
    char message[512];
} cz_api_error;

typedef struct cz_jobs cz_jobs;

/* Creates the state directory if needed and loads the job records found there (queued or
 * running ones become interrupted). A record that cannot be read is skipped with a warning. */
cz_status cz_jobs_open(const cz_jobs_opts *o, cz_jobs **out);
/* Marks queued/running jobs interrupted (persisted), destroys the trainer of a running job
 * (its last checkpoint stays), frees everything. Only once the device thread has stopped. */
void cz_jobs_close(cz_jobs *j);
/* Called (any thread, registry lock not held) when new work arrives, to wake the device thread. */
void cz_jobs_set_wake(cz_jobs *j, void (*fn)(void *arg), void *arg);

/* Device thread: one unit of work (start the next queued job, or one training step of the
 * running one, or retire a finished one). Returns non-zero when there is more to do. */
int cz_jobs_tick(cz_jobs *j, cz_backend *be);

/* POST /train: `body` is the request JSON. `current_model` is the file of the generator in
 * service (init "current"). On success *job_json is the new job object (malloc'd) and id is
 * filled; on failure err says why and NULL is returned. */
char *cz_jobs_submit(cz_jobs *j, const char *body, size_t len, const char *current_model, char id[65],
                     cz_api_error *err);
/* GET /train: {"jobs": [...]} newest first (malloc'd). */
char *cz_jobs_list_json(cz_jobs *j, cz_api_error *err);
/* GET /train/{id} */
char *cz_jobs_get_json(cz_jobs *j, const char *id, cz_api_error *err);
/* GET /train/{id}/losses?stride=N (stride >= 1). */
char *cz_jobs_losses_json(cz_jobs *j, const char *id, long stride, cz_api_error *err);
/* GET /train/{id}/samples/{step}.png: the sheet's path (malloc'd) or NULL. */
char *cz_jobs_sample_path(cz_jobs *j, const char *id, long step, cz_api_error *err);
/* DELETE /train/{id}: the job object after the cancel request. */
char *cz_jobs_cancel(cz_jobs *j, const char *id, cz_api_error *err);
/* POST /train/{id}/resume: the job object, queued again. */
char *cz_jobs_resume(cz_jobs *j, const char *id, cz_api_error *err);

/* Checkpoint of a job for activation: step >= 0 that step, -1 the best (lowest validation
 * L1), -2 the latest. Writes its path and step. 0 on success, else err is set. */
int cz_jobs_checkpoint(cz_jobs *j, const char *id, long step, char *path, size_t cap, long *step_out,
                       cz_api_error *err);

/* POST /model: parses {"job": id, "step": N | "best" | "latest"} (step defaults to "best") and
 * finds that checkpoint: writes the job id, the file's path and its step. 0, or -1 with err
 * set (400 for the body, 404 for the job or checkpoint). */
int cz_jobs_activation(cz_jobs *j, const char *body, size_t len, char job[65], char *path, size_t cap, long *step,
                       cz_api_error *err);

/* Counts for /metrics. */
typedef struct cz_jobs_stats {
    int queued, running, succeeded, failed, cancelled, interrupted;
    unsigned long long steps_total; /* training steps run by this process */
    double images_per_s;            /* of the running job's last step, 0 when none */
} cz_jobs_stats;
void cz_jobs_stats_get(cz_jobs *j, cz_jobs_stats *st);

/* Whether `id` has the shape of a job id ([A-Za-z0-9-]{1,64}). */
int cz_job_id_valid(const char *id);

#endif
