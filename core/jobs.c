/* jobs.c: the training-job registry (contract in jobs.h and server/CONTRACT.md).
 *
 * A job moves queued -> running -> succeeded | failed | cancelled; a job found queued or
 * running when the registry is opened (the daemon stopped or crashed) is interrupted.
 * cancelled, failed and interrupted jobs can be resumed: they are queued again and continue
 * from the last checkpoint in their run dir (from the start when there is none).
 *
 * What is read where: this module's own record (job.json) holds the parameters, status,
 * timestamps and error; the trainer's state.json (in run/) holds progress, last losses and
 * metrics, checkpoints and the best one; while a job runs, its live trainer is asked instead
 * (cz_trainer_get_info) for progress, rate and ETA. Loss history comes from run/losses.jsonl
 * and run/val.jsonl, the append-only logs the trainer flushes every step.
 *
 * Request validation and dataset confinement live in jobs_params.c, the job object and the loss
 * history readers in jobs_view.c.
 *
 * Locking: J->mu guards the list and every job field. The device thread never holds it during
 * a trainer call except cz_trainer_cancel/get_info (cheap, take the trainer's own lock: order
 * J->mu -> trainer mu). A trainer is only destroyed after it was unpublished under J->mu.
 * Tested by tests/unit/test_jobs.c and tests/integration/test_train_http.c. */
#include "jobs.h"

#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fileio.h"
#include "jobs_impl.h"
#include "log.h"
#include "trainer.h"

#define MOD "jobs"
#define MAX_LOSS_RECORDS 100000 /* per /losses response; a larger stride is asked for above */
#define JOB_FILE_MAX (1 << 20)

const char *const cz_jobs_status_names[J_NSTATUS] = {"queued", "running", "succeeded", "failed", "cancelled",
                                                      "interrupted"};

struct cz_jobs {
    cz_jobs_opts o;
    char data_root[PATH_MAX]; /* realpath, "" when training is off */
    char state_dir[PATH_MAX];
    pthread_mutex_t mu;
    job *head;
    job *active; /* the job the device thread works on */
    void (*wake)(void *);
    void *wake_arg;
    unsigned long long steps_total;
    long active_step; /* step of the active job when last seen */
    double last_ips;
};

/* ---------------------------------------------------------------- small helpers */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* snprintf for paths and ids, where truncation is prevented by the callers' bounds (ids are
 * at most 64 chars, directories are checked at open); through a function so the compiler's
 * truncation analysis of each call site does not apply. */
void cz_jobs_fmt(char *out, size_t cap, const char *f, ...) {
    va_list ap;
    va_start(ap, f);
    vsnprintf(out, cap, f, ap);
    va_end(ap);
}

int cz_job_id_valid(const char *id) {
    size_t n = 0;
    if (!id) return 0;
    for (; id[n]; n++) {
        char c = id[n];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-')) return 0;
        if (n >= 64) return 0;
    }
    return n > 0;
}

static void prune_jobs(cz_jobs *J);

static cz_status mkdir_p(const char *path) {
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s", path) >= (int)sizeof tmp)
        return cz_error_set(CZ_ERR_INVALID_ARG, "path too long: %s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(tmp, 0755) != 0 && errno != EEXIST) return cz_error_set(CZ_ERR_IO, "mkdir %s: %s", tmp, strerror(errno));
        *p = '/';
    }
    if (mkdir(tmp, 0755) != 0 && errno != EEXIST) return cz_error_set(CZ_ERR_IO, "mkdir %s: %s", tmp, strerror(errno));
    return CZ_OK;
}

json_t *cz_jobs_load_json(const char *path, size_t max) {
    uint8_t *data = NULL;
    size_t len = 0;
    if (cz_file_read(path, max, &data, &len) != CZ_OK) return NULL;
    json_t *v = json_loadb((const char *)data, len, 0, NULL);
    free(data);
    return v;
}

/* ---------------------------------------------------------------- records */

static job *find(cz_jobs *J, const char *id) {
    for (job *a = J->head; a; a = a->next)
        if (!strcmp(a->id, id)) return a;
    return NULL;
}

static cz_status write_record(const job *a) {
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(a->id));
    json_object_set_new(o, "status", json_string(cz_jobs_status_names[a->status]));
    json_object_set_new(o, "error", a->error[0] ? json_string(a->error) : json_null());
    json_object_set_new(o, "params", cz_jobs_params_json(&a->p));
    json_object_set_new(o, "created", json_real(a->created));
    json_object_set_new(o, "started", a->started > 0 ? json_real(a->started) : json_null());
    json_object_set_new(o, "finished", a->finished > 0 ? json_real(a->finished) : json_null());
    json_object_set_new(o, "data_dir", json_string(a->data_dir));
    json_object_set_new(o, "init_path", a->init_path[0] ? json_string(a->init_path) : json_null());
    json_object_set_new(o, "resume_from", a->resume_from[0] ? json_string(a->resume_from) : json_null());
    char *txt = json_dumps(o, JSON_INDENT(2) | JSON_REAL_PRECISION(17));
    json_decref(o);
    if (!txt) return cz_error_set(CZ_ERR_NOMEM, "job record: out of memory");
    char path[PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/job.json", a->dir);
    cz_status s = cz_file_write_atomic(path, txt, strlen(txt));
    free(txt);
    if (s != CZ_OK) CZ_LOGW(MOD, "job %s: cannot write its record: %s", a->id, cz_error_detail());
    return s;
}

const char *cz_jobs_jstr(json_t *o, const char *k) {
    json_t *v = json_object_get(o, k);
    return json_is_string(v) ? json_string_value(v) : "";
}

double cz_jobs_jnum(json_t *o, const char *k) {
    json_t *v = json_object_get(o, k);
    return json_is_number(v) ? json_number_value(v) : 0;
}

static job *load_record(cz_jobs *J, const char *dir, const char *id) {
    char path[PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/job.json", dir);
    json_t *o = cz_jobs_load_json(path, JOB_FILE_MAX);
    if (!o || !json_is_object(o)) {
        CZ_LOGW(MOD, "skipping %s: not a readable job record", path);
        json_decref(o);
        return NULL;
    }
    job *a = calloc(1, sizeof *a);
    cz_api_error e = {0};
    const char *st = cz_jobs_jstr(o, "status");
    int si = 0;
    while (si < J_NSTATUS && strcmp(st, cz_jobs_status_names[si]) != 0) si++;
    json_t *params = json_object_get(o, "params");
    if (!a || strcmp(cz_jobs_jstr(o, "id"), id) != 0 || si == J_NSTATUS || !json_is_object(params) ||
        cz_jobs_parse_params(&J->o, params, &a->p, 1, &e) != 0) {
        CZ_LOGW(MOD, "skipping %s: invalid record%s%s", path, e.http ? ": " : "", e.http ? e.message : "");
        free(a);
        json_decref(o);
        return NULL;
    }
    cz_jobs_fmt(a->id, sizeof a->id, "%s", id);
    cz_jobs_fmt(a->dir, sizeof a->dir, "%s", dir);
    cz_jobs_fmt(a->run, sizeof a->run, "%s/run", dir);
    snprintf(a->error, sizeof a->error, "%s", cz_jobs_jstr(o, "error"));
    snprintf(a->data_dir, sizeof a->data_dir, "%s", cz_jobs_jstr(o, "data_dir"));
    snprintf(a->init_path, sizeof a->init_path, "%s", cz_jobs_jstr(o, "init_path"));
    snprintf(a->resume_from, sizeof a->resume_from, "%s", cz_jobs_jstr(o, "resume_from"));
    a->created = cz_jobs_jnum(o, "created");
    a->started = cz_jobs_jnum(o, "started");
    a->finished = cz_jobs_jnum(o, "finished");
    a->status = (jstatus)si;
    json_decref(o);
    if (a->status == J_QUEUED || a->status == J_RUNNING) {
        a->status = J_INTERRUPTED;
        snprintf(a->error, sizeof a->error, "the daemon stopped while the job was %s", cz_jobs_status_names[si]);
        write_record(a);
    }
    return a;
}

static int cmp_created(const void *x, const void *y) {
    const job *a = *(job *const *)x, *b = *(job *const *)y;
    if (a->created != b->created) return a->created < b->created ? -1 : 1;
    return strcmp(a->id, b->id);
}

cz_status cz_jobs_open(const cz_jobs_opts *o, cz_jobs **out) {
    *out = NULL;
    if (!o || !o->state_dir || !*o->state_dir)
        return cz_error_set(CZ_ERR_CONFIG, "train.state_dir: required");
    cz_jobs *J = calloc(1, sizeof *J);
    if (!J) return cz_error_set(CZ_ERR_NOMEM, "jobs: out of memory");
    J->o = *o;
    pthread_mutex_init(&J->mu, NULL);
    if (strlen(o->state_dir) > PATH_MAX - 256 || (o->data_root && strlen(o->data_root) > PATH_MAX - 256)) {
        free(J);
        return cz_error_set(CZ_ERR_CONFIG, "train.state_dir / train.data_root: path too long");
    }
    if (o->data_root && *o->data_root) {
        if (!realpath(o->data_root, J->data_root)) {
            cz_status s = cz_error_set(CZ_ERR_CONFIG, "train.data_root = '%s': %s", o->data_root, strerror(errno));
            free(J);
            return s;
        }
    }
    char jobs_dir[PATH_MAX];
    snprintf(J->state_dir, sizeof J->state_dir, "%s", o->state_dir);
    snprintf(jobs_dir, sizeof jobs_dir, "%s/jobs", o->state_dir);
    cz_status s = mkdir_p(jobs_dir);
    if (s != CZ_OK) {
        free(J);
        return cz_error_set(s, "train.state_dir: %s", cz_error_detail());
    }
    DIR *d = opendir(jobs_dir);
    if (!d) {
        free(J);
        return cz_error_set(CZ_ERR_IO, "train.state_dir: cannot list %s: %s", jobs_dir, strerror(errno));
    }
    job **all = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!cz_job_id_valid(de->d_name)) continue;
        char dir[PATH_MAX];
        if (snprintf(dir, sizeof dir, "%s/%s", jobs_dir, de->d_name) >= (int)sizeof dir) continue;
        job *a = load_record(J, dir, de->d_name);
        if (!a) continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            job **na = realloc(all, cap * sizeof *na);
            if (!na) {
                free(a);
                break;
            }
            all = na;
        }
        all[n++] = a;
    }
    closedir(d);
    if (n) qsort(all, n, sizeof *all, cmp_created);
    job **tail = &J->head;
    for (size_t i = 0; i < n; i++) {
        *tail = all[i];
        tail = &all[i]->next;
    }
    free(all);
    if (n) CZ_LOGI(MOD, "%zu job records loaded from %s", n, jobs_dir);
    prune_jobs(J);
    *out = J;
    return CZ_OK;
}

void cz_jobs_close(cz_jobs *J) {
    if (!J) return;
    for (job *a = J->head, *nx; a; a = nx) {
        nx = a->next;
        if (a->status == J_QUEUED || a->status == J_RUNNING) {
            snprintf(a->error, sizeof a->error, "the daemon stopped while the job was %s", cz_jobs_status_names[a->status]);
            a->status = J_INTERRUPTED;
            write_record(a);
        }
        cz_trainer_destroy(a->trainer);
        free(a);
    }
    pthread_mutex_destroy(&J->mu);
    free(J);
}

void cz_jobs_set_wake(cz_jobs *J, void (*fn)(void *arg), void *arg) {
    pthread_mutex_lock(&J->mu);
    J->wake = fn;
    J->wake_arg = arg;
    pthread_mutex_unlock(&J->mu);
}

static void wake(cz_jobs *J) {
    void (*fn)(void *) = J->wake;
    if (fn) fn(J->wake_arg);
}

/* ---------------------------------------------------------------- retention */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st;
    (void)ftw;
    int rc = flag == FTW_DP ? rmdir(path) : unlink(path);
    if (rc != 0) CZ_LOGW(MOD, "cannot remove %s: %s", path, strerror(errno));
    return 0; /* go on with the rest */
}

/* The job whose checkpoint serves (state_dir/active_model.json, written by the daemon). */
static void serving_job(const cz_jobs *J, char out[65]) {
    char path[PATH_MAX + 32];
    cz_jobs_fmt(path, sizeof path, "%s/active_model.json", J->state_dir);
    json_t *o = cz_jobs_load_json(path, JOB_FILE_MAX);
    cz_jobs_fmt(out, 65, "%s", cz_jobs_jstr(o, "job"));
    json_decref(o);
}

/* Deletes the oldest finished jobs beyond keep_jobs (records, logs, samples, checkpoints),
 * sparing the job in service and the checkpoint sources of queued jobs. Lock held. */
static void prune_jobs(cz_jobs *J) {
    if (J->o.keep_jobs <= 0) return;
    int finished = 0;
    for (job *a = J->head; a; a = a->next) finished += a->status != J_QUEUED && a->status != J_RUNNING;
    if (finished <= J->o.keep_jobs) return;
    char serving[65];
    serving_job(J, serving);
    for (job **pp = &J->head; *pp && finished > J->o.keep_jobs;) {
        job *a = *pp;
        int spare = a->status == J_QUEUED || a->status == J_RUNNING || !strcmp(a->id, serving);
        for (job *q = J->head; q && !spare; q = q->next)
            spare = q->status == J_QUEUED && q->init_path[0] && !strncmp(q->init_path, a->dir, strlen(a->dir)) &&
                    q->init_path[strlen(a->dir)] == '/';
        if (spare) {
            pp = &a->next;
            continue;
        }
        CZ_LOGI(MOD, "deleting job %s (%s): more than train.keep_jobs = %d finished jobs", a->id,
                cz_jobs_status_names[a->status], J->o.keep_jobs);
        nftw(a->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
        *pp = a->next;
        free(a);
        finished--;
    }
}

/* ---------------------------------------------------------------- run dir readers */

/* The latest (highest-step) checkpoint listed in run/state.json whose file exists. */
static int latest_checkpoint(const job *a, char *path, size_t cap, long *step) {
    char sp[PATH_MAX + 16];
    snprintf(sp, sizeof sp, "%s/state.json", a->run);
    json_t *st = cz_jobs_load_json(sp, STATE_FILE_MAX);
    json_t *arr = st ? json_object_get(st, "checkpoints") : NULL;
    long best = -1;
    size_t i;
    json_t *c;
    json_array_foreach(arr, i, c) {
        long s = (long)cz_jobs_jnum(c, "step");
        char p[PATH_MAX + 64];
        cz_jobs_fmt(p, sizeof p, "%s/%s", a->run, cz_jobs_jstr(c, "path"));
        if (s > best && access(p, R_OK) == 0) {
            best = s;
            cz_jobs_fmt(path, cap, "%s", p);
        }
    }
    json_decref(st);
    if (best < 0) return -1;
    *step = best;
    return 0;
}

static char *dump(json_t *o, cz_api_error *e) {
    char *txt = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(9)) : NULL;
    json_decref(o);
    if (!txt) cz_jobs_api_err(e, 500, "internal_error", "out of memory building the response");
    return txt;
}

/* ---------------------------------------------------------------- API */

static int active_count(const cz_jobs *J) {
    int n = 0;
    for (const job *a = J->head; a; a = a->next) n += a->status == J_QUEUED || a->status == J_RUNNING;
    return n;
}

static void new_id(cz_jobs *J, char id[65]) {
    for (;;) {
        time_t t = time(NULL);
        struct tm tm;
        gmtime_r(&t, &tm);
        unsigned char r[3] = {0};
        if (getrandom(r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r) {
            uint64_t x = (uint64_t)clock() ^ ((uint64_t)t << 20) ^ (uint64_t)(uintptr_t)id;
            memcpy(r, &x, 3);
        }
        char stamp[20];
        strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", &tm);
        snprintf(id, 65, "%s-%02x%02x%02x", stamp, r[0], r[1], r[2]);
        if (!find(J, id)) return;
    }
}

/* The checkpoint file of job `src` for step selector sel (>= 0, -1 best, -2 latest). Lock held. */
static int checkpoint_of(job *src, long sel, char *path, size_t cap, long *step_out, cz_api_error *e) {
    char sp[PATH_MAX + 16];
    snprintf(sp, sizeof sp, "%s/state.json", src->run);
    json_t *st = cz_jobs_load_json(sp, STATE_FILE_MAX);
    json_t *pick = NULL, *arr = st ? json_object_get(st, "checkpoints") : NULL, *c;
    size_t i;
    if (sel == -1) {
        pick = st ? json_object_get(st, "best") : NULL;
        if (!json_is_object(pick)) pick = NULL;
    } else {
        json_array_foreach(arr, i, c) {
            long s = (long)cz_jobs_jnum(c, "step");
            if ((sel >= 0 && s == sel) || (sel == -2 && (!pick || s > (long)cz_jobs_jnum(pick, "step")))) pick = c;
        }
    }
    int rc = -1;
    if (!pick) {
        if (sel == -1)
            cz_jobs_api_err(e, 404, "checkpoint_not_found", "job %s has no best checkpoint yet (no validated checkpoint)", src->id);
        else if (sel == -2)
            cz_jobs_api_err(e, 404, "checkpoint_not_found", "job %s has no checkpoint yet", src->id);
        else
            cz_jobs_api_err(e, 404, "checkpoint_not_found", "job %s has no checkpoint at step %ld", src->id, sel);
    } else {
        char p[PATH_MAX + 64];
        snprintf(p, sizeof p, "%s/%s", src->run, cz_jobs_jstr(pick, "path"));
        if (access(p, R_OK) != 0) {
            cz_jobs_api_err(e, 404, "checkpoint_not_found", "job %s: checkpoint of step %ld is gone (%s)", src->id,
                    (long)cz_jobs_jnum(pick, "step"), strerror(errno));
        } else {
            snprintf(path, cap, "%s", p);
            *step_out = (long)cz_jobs_jnum(pick, "step");
            rc = 0;
        }
    }
    json_decref(st);
    return rc;
}

char *cz_jobs_submit(cz_jobs *J, const char *body, size_t len, const char *current_model, char id[65],
                     cz_api_error *e) {
    memset(e, 0, sizeof *e);
    if (!J->data_root[0]) {
        cz_jobs_api_err(e, 409, "training_disabled", "training is off: set train.data_root to the directory holding datasets");
        return NULL;
    }
    json_t *req = cz_jobs_parse_body(body, len, e);
    if (!req) return NULL;
    job *a = calloc(1, sizeof *a);
    if (!a) {
        json_decref(req);
        cz_jobs_api_err(e, 503, "out_of_memory", "out of memory");
        return NULL;
    }
    int rc = cz_jobs_parse_params(&J->o, req, &a->p, 0, e);
    json_decref(req);
    if (rc == 0) rc = cz_jobs_resolve_dataset(J->data_root, a->p.dataset, a->data_dir, sizeof a->data_dir, e);
    if (rc != 0) {
        free(a);
        return NULL;
    }
    pthread_mutex_lock(&J->mu);
    char *out = NULL;
    if (active_count(J) >= J->o.max_jobs) {
        cz_jobs_api_err(e, 429, "too_many_jobs", "%d jobs are queued or running (train.max_jobs); try again later", J->o.max_jobs);
        e->retry_after = 60;
        goto done;
    }
    if (a->p.init == INIT_CURRENT) {
        if (!current_model || !*current_model) {
            cz_jobs_api_err(e, 409, "no_current_model", "init \"current\": the model in service has no file to start from");
            goto done;
        }
        snprintf(a->init_path, sizeof a->init_path, "%s", current_model);
    } else if (a->p.init == INIT_CHECKPOINT) {
        job *src = find(J, a->p.init_job);
        long step;
        if (!src) {
            cz_jobs_api_err(e, 404, "job_not_found", "init_job: no job %s", a->p.init_job);
            goto done;
        }
        if (checkpoint_of(src, a->p.init_step, a->init_path, sizeof a->init_path, &step, e) != 0) goto done;
    }
    new_id(J, a->id);
    cz_jobs_fmt(a->dir, sizeof a->dir, "%s/jobs/%s", J->state_dir, a->id);
    cz_jobs_fmt(a->run, sizeof a->run, "%s/run", a->dir);
    a->created = now_s();
    a->status = J_QUEUED;
    if (mkdir_p(a->dir) != CZ_OK || write_record(a) != CZ_OK) {
        cz_jobs_api_err(e, 507, "insufficient_storage", "cannot create the job record: %s", cz_error_detail());
        rmdir(a->dir);
        goto done;
    }
    job **pp = &J->head;
    while (*pp) pp = &(*pp)->next;
    *pp = a;
    snprintf(id, 65, "%s", a->id);
    out = dump(cz_jobs_job_object(a), e);
    CZ_LOGI(MOD, "job %s queued: dataset %s, %s %g, batch %d, size %d, init %s", a->id, a->p.dataset,
            a->p.steps ? "steps" : "epochs", a->p.steps ? (double)a->p.steps : a->p.epochs, a->p.batch, a->p.size,
            cz_jobs_init_names[a->p.init]);
    a = NULL;
done:
    pthread_mutex_unlock(&J->mu);
    free(a);
    if (out) wake(J);
    return out;
}

char *cz_jobs_list_json(cz_jobs *J, cz_api_error *e) {
    memset(e, 0, sizeof *e);
    json_t *arr = json_array();
    pthread_mutex_lock(&J->mu);
    for (job *a = J->head; a; a = a->next) json_array_insert_new(arr, 0, cz_jobs_job_object(a)); /* newest first */
    pthread_mutex_unlock(&J->mu);
    json_t *o = json_object();
    json_object_set_new(o, "jobs", arr);
    return dump(o, e);
}

static job *find_or_err(cz_jobs *J, const char *id, cz_api_error *e) {
    job *a = cz_job_id_valid(id) ? find(J, id) : NULL;
    if (!a) {
        char shown[80];
        cz_jobs_printable(shown, sizeof shown, id);
        cz_jobs_api_err(e, 404, "job_not_found", "no job %s", shown);
    }
    return a;
}

char *cz_jobs_get_json(cz_jobs *J, const char *id, cz_api_error *e) {
    memset(e, 0, sizeof *e);
    pthread_mutex_lock(&J->mu);
    job *a = find_or_err(J, id, e);
    json_t *o = a ? cz_jobs_job_object(a) : NULL;
    pthread_mutex_unlock(&J->mu);
    return a ? dump(o, e) : NULL;
}

char *cz_jobs_losses_json(cz_jobs *J, const char *id, long stride, cz_api_error *e) {
    memset(e, 0, sizeof *e);
    pthread_mutex_lock(&J->mu);
    job *a = find_or_err(J, id, e);
    char run[PATH_MAX];
    long total_hint = 0;
    if (a) {
        snprintf(run, sizeof run, "%s", a->run);
        if (a->trainer) {
            cz_trainer_info inf;
            cz_trainer_get_info(a->trainer, &inf);
            total_hint = inf.step;
        }
    }
    pthread_mutex_unlock(&J->mu);
    if (!a) return NULL;
    if (total_hint / stride > MAX_LOSS_RECORDS) {
        cz_jobs_api_err(e, 400, "invalid_parameter", "stride: %ld would return about %ld records; at most %d per response",
                stride, total_hint / stride, MAX_LOSS_RECORDS);
        return NULL;
    }
    char path[PATH_MAX + 32];
    json_t *losses = json_array(), *vals = json_array();
    snprintf(path, sizeof path, "%s/losses.jsonl", run);
    long total = cz_jobs_read_jsonl(path, stride, losses);
    snprintf(path, sizeof path, "%s/val.jsonl", run);
    cz_jobs_read_jsonl(path, 1, vals);
    if ((long)json_array_size(losses) > MAX_LOSS_RECORDS) {
        json_decref(losses);
        json_decref(vals);
        cz_jobs_api_err(e, 400, "invalid_parameter", "stride: %ld returns %ld records; at most %d per response (use stride >= %ld)",
                stride, (total + stride - 1) / stride, MAX_LOSS_RECORDS, total / MAX_LOSS_RECORDS + 1);
        return NULL;
    }
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(id));
    json_object_set_new(o, "stride", json_integer(stride));
    json_object_set_new(o, "total", json_integer(total));
    json_object_set_new(o, "losses", losses);
    json_object_set_new(o, "validation", vals);
    return dump(o, e);
}

char *cz_jobs_sample_path(cz_jobs *J, const char *id, long step, cz_api_error *e) {
    memset(e, 0, sizeof *e);
    pthread_mutex_lock(&J->mu);
    job *a = find_or_err(J, id, e);
    char *path = NULL;
    if (a) {
        path = malloc(PATH_MAX + 64);
        if (path) snprintf(path, PATH_MAX + 64, "%s/samples/step_%ld.png", a->run, step);
    }
    pthread_mutex_unlock(&J->mu);
    if (path && access(path, R_OK) != 0) {
        cz_jobs_api_err(e, 404, "not_found", "job %s has no sample sheet for step %ld", id, step);
        free(path);
        return NULL;
    }
    if (a && !path) cz_jobs_api_err(e, 503, "out_of_memory", "out of memory");
    return path;
}

char *cz_jobs_cancel(cz_jobs *J, const char *id, cz_api_error *e) {
    memset(e, 0, sizeof *e);
    pthread_mutex_lock(&J->mu);
    job *a = find_or_err(J, id, e);
    json_t *o = NULL;
    if (a) {
        if (a->status == J_QUEUED) {
            a->status = J_CANCELLED;
            a->finished = now_s();
            snprintf(a->error, sizeof a->error, "cancelled before it started");
            write_record(a);
            CZ_LOGI(MOD, "job %s cancelled while queued", a->id);
        } else if (a->status == J_RUNNING) {
            a->cancel_req = 1;
            if (a->trainer) cz_trainer_cancel(a->trainer);
            CZ_LOGI(MOD, "job %s: cancel requested", a->id);
        } else {
            cz_jobs_api_err(e, 409, "job_finished", "job %s is %s; only queued or running jobs can be cancelled", a->id,
                    cz_jobs_status_names[a->status]);
            a = NULL;
        }
        if (a) o = cz_jobs_job_object(a);
    }
    pthread_mutex_unlock(&J->mu);
    if (o) wake(J);
    return o ? dump(o, e) : NULL;
}

char *cz_jobs_resume(cz_jobs *J, const char *id, cz_api_error *e) {
    memset(e, 0, sizeof *e);
    pthread_mutex_lock(&J->mu);
    job *a = find_or_err(J, id, e);
    json_t *o = NULL;
    if (a && !(a->status == J_INTERRUPTED || a->status == J_CANCELLED || a->status == J_FAILED)) {
        cz_jobs_api_err(e, 409, "job_not_resumable", "job %s is %s; only interrupted, cancelled or failed jobs resume", a->id,
                cz_jobs_status_names[a->status]);
        a = NULL;
    } else if (a && active_count(J) >= J->o.max_jobs) {
        cz_jobs_api_err(e, 429, "too_many_jobs", "%d jobs are queued or running (train.max_jobs); try again later", J->o.max_jobs);
        e->retry_after = 60;
        a = NULL;
    }
    if (a) {
        long step = 0;
        if (latest_checkpoint(a, a->resume_from, sizeof a->resume_from, &step) != 0) {
            a->resume_from[0] = '\0';
            CZ_LOGI(MOD, "job %s has no checkpoint: it starts again from step 0", a->id);
        } else {
            CZ_LOGI(MOD, "job %s resumes from its checkpoint of step %ld", a->id, step);
        }
        a->status = J_QUEUED;
        a->error[0] = '\0';
        a->finished = 0;
        a->cancel_req = 0;
        write_record(a);
        o = cz_jobs_job_object(a);
    }
    pthread_mutex_unlock(&J->mu);
    if (o) wake(J);
    return o ? dump(o, e) : NULL;
}

int cz_jobs_checkpoint(cz_jobs *J, const char *id, long step, char *path, size_t cap, long *step_out,
                       cz_api_error *e) {
    memset(e, 0, sizeof *e);
    pthread_mutex_lock(&J->mu);
    job *a = find_or_err(J, id, e);
    int rc = a ? checkpoint_of(a, step, path, cap, step_out, e) : -1;
    pthread_mutex_unlock(&J->mu);
    return rc;
}

int cz_jobs_activation(cz_jobs *J, const char *body, size_t len, char job_out[65], char *path, size_t cap,
                       long *step_out, cz_api_error *e) {
    memset(e, 0, sizeof *e);
    json_t *o = cz_jobs_parse_body(body, len, e);
    if (!o) return -1;
    const char *key, *id = NULL;
    json_t *v;
    long step = -1; /* best */
    int rc = 0;
    json_object_foreach(o, key, v) {
        if (!strcmp(key, "job")) {
            id = json_string_value(v);
            if (!id || !cz_job_id_valid(id)) rc = cz_jobs_api_err(e, 400, "invalid_field", "job: expected a job id");
        } else if (!strcmp(key, "step")) {
            rc = cz_jobs_parse_step(v, "step", &step, e);
        } else {
            char k[72];
            cz_jobs_printable(k, sizeof k, key);
            rc = cz_jobs_api_err(e, 400, "invalid_field", "%s: unknown field", k);
        }
        if (rc) break;
    }
    if (!rc && !id) rc = cz_jobs_api_err(e, 400, "invalid_field", "job: required");
    if (!rc) {
        snprintf(job_out, 65, "%s", id);
        rc = cz_jobs_checkpoint(J, job_out, step, path, cap, step_out, e);
    }
    json_decref(o);
    return rc;
}

void cz_jobs_stats_get(cz_jobs *J, cz_jobs_stats *st) {
    memset(st, 0, sizeof *st);
    pthread_mutex_lock(&J->mu);
    for (job *a = J->head; a; a = a->next) {
        switch (a->status) {
        case J_QUEUED: st->queued++; break;
        case J_RUNNING: st->running++; break;
        case J_SUCCEEDED: st->succeeded++; break;
        case J_FAILED: st->failed++; break;
        case J_CANCELLED: st->cancelled++; break;
        case J_INTERRUPTED: st->interrupted++; break;
        default: break;
        }
    }
    st->steps_total = J->steps_total;
    st->images_per_s = J->active ? J->last_ips : 0;
    pthread_mutex_unlock(&J->mu);
}

/* ---------------------------------------------------------------- device thread */

/* Builds the trainer of job a (device thread, lock not held; a's fields are stable while it
 * is the active job: only cancel_req and trainer change, under the lock). */
static cz_status start_trainer(cz_jobs *J, job *a, cz_backend *be, cz_trainer **out) {
    cz_trainer_config c;
    cz_trainer_config_default(&c);
    c.data_dir = a->data_dir;
    c.out_dir = a->run;
    c.steps = a->p.steps;
    c.epochs = a->p.epochs;
    c.batch = a->p.batch;
    c.image_size = a->p.size;
    c.ngf = a->p.ngf;
    c.lr = (float)a->p.lr;
    c.lambda_l1 = (float)a->p.lambda_l1;
    c.seed = a->p.seed;
    c.validate_every = a->p.validate_every;
    c.checkpoint_every = a->p.checkpoint_every;
    c.keep_checkpoints = a->p.keep;
    c.lr_decay_steps = a->p.lr_decay_steps;
    c.workers = J->o.workers;
    c.cache_mb = J->o.cache_mb;
    c.precision = a->p.bf16 ? CZ_BF16 : CZ_F32;
    c.max_total_steps = J->o.max_steps; /* epochs are turned into steps only here */
    if (a->resume_from[0]) {
        c.init = CZ_TRAIN_INIT_CHECKPOINT;
        c.init_path = a->resume_from;
    } else if (a->init_path[0]) {
        c.init = CZ_TRAIN_INIT_WEIGHTS;
        c.init_path = a->init_path;
    } else {
        c.init = CZ_TRAIN_INIT_SCRATCH;
    }
    return cz_trainer_create(be, &c, out);
}

int cz_jobs_tick(cz_jobs *J, cz_backend *be) {
    pthread_mutex_lock(&J->mu);
    job *a = J->active;
    if (!a) {
        for (a = J->head; a && a->status != J_QUEUED; a = a->next) {
        }
        if (!a) {
            pthread_mutex_unlock(&J->mu);
            return 0;
        }
        a->status = J_RUNNING;
        a->started = now_s();
        a->cancel_req = 0;
        J->active = a;
        J->last_ips = 0;
        write_record(a);
        pthread_mutex_unlock(&J->mu);

        cz_trainer *t = NULL;
        cz_error_clear();
        cz_status s = start_trainer(J, a, be, &t);
        pthread_mutex_lock(&J->mu);
        if (s != CZ_OK) {
            a->status = J_FAILED;
            a->finished = now_s();
            snprintf(a->error, sizeof a->error, "could not start: %s", cz_error_detail()[0] ? cz_error_detail() : cz_strerror(s));
            J->active = NULL;
            CZ_LOGW(MOD, "job %s failed to start: %s", a->id, a->error);
        } else {
            cz_trainer_info inf;
            cz_trainer_get_info(t, &inf);
            J->active_step = inf.step;
            a->trainer = t;
            a->resume_from[0] = '\0';
            if (a->cancel_req) cz_trainer_cancel(t);
            CZ_LOGI(MOD, "job %s running", a->id);
        }
        write_record(a);
        pthread_mutex_unlock(&J->mu);
        return 1;
    }
    cz_trainer *t = a->trainer;
    pthread_mutex_unlock(&J->mu);

    cz_trainer_step(t);
    cz_trainer_info inf;
    cz_trainer_get_info(t, &inf);
    int done = cz_trainer_done(t);
    pthread_mutex_lock(&J->mu);
    if (inf.step > J->active_step) J->steps_total += (unsigned long long)(inf.step - J->active_step);
    J->active_step = inf.step;
    J->last_ips = inf.images_per_s;
    if (done) {
        a->status = inf.status == CZ_TRAIN_SUCCEEDED ? J_SUCCEEDED : inf.status == CZ_TRAIN_CANCELLED ? J_CANCELLED : J_FAILED;
        a->finished = now_s();
        if (a->status == J_FAILED)
            snprintf(a->error, sizeof a->error, "%s", inf.error[0] ? inf.error : "training failed");
        else if (a->status == J_CANCELLED)
            snprintf(a->error, sizeof a->error, "cancelled at step %ld", inf.step);
        a->trainer = NULL;
        J->active = NULL;
        write_record(a);
        CZ_LOGI(MOD, "job %s %s at step %ld/%ld%s%s", a->id, cz_jobs_status_names[a->status], inf.step, inf.total,
                a->status == J_FAILED ? ": " : "", a->status == J_FAILED ? a->error : "");
        prune_jobs(J);
    }
    pthread_mutex_unlock(&J->mu);
    if (done) cz_trainer_destroy(t);
    return 1;
}
