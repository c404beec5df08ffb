/* jobs_impl.h: what core/jobs.c, jobs_params.c and jobs_view.c share (private to the job
 * registry): a job and its parameters, the request-side helpers (validation of a POST /train
 * body, dataset confinement under data_root, API errors) and the read-side ones. Not thread-sensitive: pure functions of their
 * arguments plus the file system. Tested through tests/unit/test_jobs.c. */
#ifndef CZ_JOBS_IMPL_H
#define CZ_JOBS_IMPL_H

#include <jansson.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>

#include "jobs.h"
#include "trainer.h"

typedef enum jinit { INIT_SCRATCH, INIT_CURRENT, INIT_CHECKPOINT } jinit;
extern const char *const cz_jobs_init_names[3]; /* "scratch", "current", "checkpoint" */

/* Effective parameters of a job (defaults filled). */
typedef struct jparams {
    char dataset[256];
    long steps;    /* 0 when epochs is used */
    double epochs; /* 0 when steps is used */
    int batch, size, ngf, keep;
    double lr, lambda_l1;
    jinit init;
    char init_job[65];
    long init_step; /* -1 best, -2 latest */
    uint64_t seed;
    long validate_every, checkpoint_every, lr_decay_steps;
    int bf16; /* precision "bf16" (mixed) instead of "fp32" */
} jparams;

/* Sets *e and returns -1. */
int cz_jobs_api_err(cz_api_error *e, int http, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Client-supplied text made safe to quote in a message (non-printable bytes -> '?'). */
void cz_jobs_printable(char *out, size_t cap, const char *s);
/* The request body as a JSON object (duplicate keys refused), or NULL with *e set (400
 * invalid_json, saying where parsing failed). */
json_t *cz_jobs_parse_body(const char *body, size_t len, cz_api_error *e);
/* A checkpoint selector: a step number, "best" (-1) or "latest" (-2). 0, or -1 with *e set
 * naming `key`. */
int cz_jobs_parse_step(json_t *v, const char *key, long *out, cz_api_error *e);
/* Parses a request object into p (defaults first; limits from o). `stored`: a record read
 * back from disk, where the configured limits are not re-applied. 0, or -1 with *e set. */
int cz_jobs_parse_params(const cz_jobs_opts *o, json_t *obj, jparams *p, int stored, cz_api_error *e);
/* The effective parameters as the job object shows them. */
json_t *cz_jobs_params_json(const jparams *p);
/* Resolves dataset `name` under data_root (a realpath): no absolute path, no '..', still
 * under data_root after symlinks, a directory holding at least one image. 0 (out = the
 * resolved directory), or -1 with *e set (400 / 404 / 422). */
int cz_jobs_resolve_dataset(const char *data_root, const char *name, char *out, size_t cap, cz_api_error *e);

typedef enum jstatus { J_QUEUED, J_RUNNING, J_SUCCEEDED, J_FAILED, J_CANCELLED, J_INTERRUPTED, J_NSTATUS } jstatus;
extern const char *const cz_jobs_status_names[J_NSTATUS]; /* "queued", "running", ... */

typedef struct job {
    char id[65];
    char dir[PATH_MAX], run[PATH_MAX];
    jparams p;
    char data_dir[PATH_MAX];    /* dataset resolved at submit / resume */
    char init_path[PATH_MAX];   /* weights for init current/checkpoint ("" = none) */
    char resume_from[PATH_MAX]; /* checkpoint the next start resumes from ("" = none) */
    jstatus status;
    char error[512];
    double created, started, finished; /* unix seconds, 0 = not yet */
    int cancel_req;
    cz_trainer *trainer; /* while running, published under J->mu */
    struct job *next;    /* list, oldest first */
} job;

#define STATE_FILE_MAX (64 << 20) /* a run dir's state.json, at most */

/* Helpers shared by jobs.c and jobs_view.c. */
void cz_jobs_fmt(char *out, size_t cap, const char *f, ...) __attribute__((format(printf, 3, 4)));
json_t *cz_jobs_load_json(const char *path, size_t max); /* NULL when missing or not JSON */
const char *cz_jobs_jstr(json_t *o, const char *k);       /* "" when absent */
double cz_jobs_jnum(json_t *o, const char *k);            /* 0 when absent */
/* The contract's job object (registry lock held). */
json_t *cz_jobs_job_object(job *a);
/* Appends every stride-th parsable line of a JSON-lines file to arr; returns how many lines
 * parsed (a half-written last line is skipped). */
long cz_jobs_read_jsonl(const char *path, long stride, json_t *arr);

#endif
