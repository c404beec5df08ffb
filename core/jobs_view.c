/* jobs_view.c: the read side of the job registry: the job object of the contract (from the
 * job's record, its run dir's state.json and, while it runs, the live trainer), the list of
 * sample sheets, and the JSON-lines loss history. Callers hold the registry lock where the
 * job is shared (jobs.c). Tested by tests/unit/test_jobs.c and test_train_http. */
#include <dirent.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "jobs_impl.h"
#include "trainer.h"


static json_t *time_json(double t) {
    if (t <= 0) return json_null();
    time_t s = (time_t)t;
    struct tm tm;
    gmtime_r(&s, &tm);
    char buf[32];
    strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return json_string(buf);
}

static json_t *num_or_null(double v) { return isfinite(v) ? json_real(v) : json_null(); }

/* Steps of the sample sheets in run/samples, ascending. */
static json_t *samples_json(const job *a) {
    char dir[PATH_MAX + 16];
    snprintf(dir, sizeof dir, "%s/samples", a->run);
    json_t *arr = json_array();
    DIR *d = opendir(dir);
    if (!d) return arr;
    long *steps = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        long s;
        char tail[8];
        if (sscanf(de->d_name, "step_%ld.%4s", &s, tail) != 2 || strcmp(tail, "png") != 0 || s < 0) continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            long *ns = realloc(steps, cap * sizeof *ns);
            if (!ns) break;
            steps = ns;
        }
        steps[n++] = s;
    }
    closedir(d);
    for (size_t i = 1; i < n; i++) /* insertion sort: a handful of sheets */
        for (size_t k = i; k > 0 && steps[k - 1] > steps[k]; k--) {
            long t = steps[k];
            steps[k] = steps[k - 1];
            steps[k - 1] = t;
        }
    for (size_t i = 0; i < n; i++) json_array_append_new(arr, json_integer(steps[i]));
    free(steps);
    return arr;
}

static json_t *val_json(const cz_val_record *v) {
    return json_pack("{s:I,s:I,s:o,s:o,s:o,s:o,s:o,s:o}", "step", (json_int_t)v->step, "images",
                     (json_int_t)v->m.images, "l1", num_or_null(v->m.l1), "l1_ab", num_or_null(v->m.l1_ab), "psnr",
                     num_or_null(v->m.psnr), "colorfulness_pred", num_or_null(v->m.colorfulness_pred),
                     "colorfulness_true", num_or_null(v->m.colorfulness_true), "colorfulness_ratio",
                     num_or_null(v->m.colorfulness_ratio));
}

/* {step, val_l1} from a state.json checkpoint entry (its path stays private). */
static json_t *ckpt_public(json_t *c) {
    json_t *l1 = json_object_get(c, "val_l1");
    return json_pack("{s:I,s:O}", "step", (json_int_t)cz_jobs_jnum(c, "step"), "val_l1", json_is_number(l1) ? l1 : json_null());
}

/* The job object of the contract. Lock held. */
json_t *cz_jobs_job_object(job *a) {
    json_t *o = json_object();
    char url[96];
    snprintf(url, sizeof url, "/train/%s", a->id);
    json_object_set_new(o, "id", json_string(a->id));
    json_object_set_new(o, "url", json_string(url));
    json_object_set_new(o, "status", json_string(cz_jobs_status_names[a->status]));
    json_object_set_new(o, "params", cz_jobs_params_json(&a->p));
    json_object_set_new(o, "created", time_json(a->created));
    json_object_set_new(o, "started", time_json(a->started));
    json_object_set_new(o, "finished", time_json(a->finished));

    char sp[PATH_MAX + 16];
    snprintf(sp, sizeof sp, "%s/state.json", a->run);
    json_t *st = cz_jobs_load_json(sp, STATE_FILE_MAX);
    if (st && !json_is_object(st)) {
        json_decref(st);
        st = NULL;
    }
    if (a->trainer) {
        cz_trainer_info inf;
        cz_trainer_get_info(a->trainer, &inf);
        json_object_set_new(o, "step", json_integer(inf.step));
        json_object_set_new(o, "total", json_integer(inf.total));
        json_object_set_new(o, "epoch", json_integer(inf.epoch));
        json_object_set_new(o, "images_per_s", inf.step > 0 ? num_or_null(inf.images_per_s) : json_null());
        json_object_set_new(o, "eta_s", inf.step > 0 ? num_or_null(inf.eta_s) : json_null());
        json_object_set_new(o, "elapsed_s", num_or_null(inf.elapsed_s));
        const cz_gan_losses *l = &inf.last_losses;
        json_object_set_new(o, "losses",
                            inf.step > 0 ? json_pack("{s:o,s:o,s:o,s:o}", "g_gan", num_or_null(l->g_gan), "g_l1",
                                                     num_or_null(l->g_l1), "d_real", num_or_null(l->d_real), "d_fake",
                                                     num_or_null(l->d_fake))
                                         : json_null());
        json_object_set_new(o, "validation", inf.have_val ? val_json(&inf.last_val) : json_null());
        json_object_set_new(o, "model", json_pack("{s:i,s:i,s:s}", "ngf", inf.arch.ngf, "depth", inf.arch.depth,
                                                  "color_mode", cz_color_mode_name(inf.arch.mode)));
    } else if (st) {
        json_object_set_new(o, "step", json_integer((json_int_t)cz_jobs_jnum(st, "step")));
        json_object_set_new(o, "total", json_integer((json_int_t)cz_jobs_jnum(st, "total")));
        json_object_set_new(o, "epoch", json_integer((json_int_t)cz_jobs_jnum(st, "epoch")));
        json_t *ips = json_object_get(st, "images_per_s");
        json_object_set_new(o, "images_per_s", json_is_number(ips) ? json_real(json_number_value(ips)) : json_null());
        json_object_set_new(o, "eta_s", json_null());
        json_object_set_new(o, "elapsed_s",
                            a->started > 0 && a->finished >= a->started ? json_real(a->finished - a->started)
                                                                        : json_null());
        json_t *l = json_object_get(st, "last_losses"), *m = json_object_get(st, "last_metrics"),
               *md = json_object_get(st, "model");
        json_object_set(o, "losses", json_is_object(l) ? l : json_null());
        json_object_set(o, "validation", json_is_object(m) ? m : json_null());
        json_object_set(o, "model", json_is_object(md) ? md : json_null());
    } else {
        json_object_set_new(o, "step", json_integer(0));
        json_object_set_new(o, "total", json_integer(a->p.steps));
        json_object_set_new(o, "epoch", json_integer(0));
        json_object_set_new(o, "images_per_s", json_null());
        json_object_set_new(o, "eta_s", json_null());
        json_object_set_new(o, "elapsed_s", json_null());
        json_object_set_new(o, "losses", json_null());
        json_object_set_new(o, "validation", json_null());
        json_object_set_new(o, "model", json_null());
    }
    json_t *ck = json_array(), *arr = st ? json_object_get(st, "checkpoints") : NULL, *c, *best = NULL;
    size_t i;
    json_array_foreach(arr, i, c) json_array_append_new(ck, ckpt_public(c));
    if (st && json_is_object(json_object_get(st, "best"))) best = ckpt_public(json_object_get(st, "best"));
    json_object_set_new(o, "checkpoints", ck);
    json_object_set_new(o, "best", best ? best : json_null());
    json_object_set_new(o, "samples", samples_json(a));
    json_object_set_new(o, "resumable", json_boolean(a->status == J_INTERRUPTED || a->status == J_CANCELLED ||
                                                     a->status == J_FAILED));
    json_object_set_new(o, "error", a->error[0] ? json_string(a->error) : json_null());
    json_decref(st);
    return o;
}

/* Appends every stride-th parsable line of a JSON-lines file to arr; returns the count of
 * parsable lines. A half-written last line (the trainer appends while we read) is skipped. */
long cz_jobs_read_jsonl(const char *path, long stride, json_t *arr) {
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char *line = NULL;
    size_t cap = 0;
    long n = 0;
    while (getline(&line, &cap, f) > 0) {
        json_t *v = json_loads(line, 0, NULL);
        if (!json_is_object(v)) {
            json_decref(v);
            continue;
        }
        if (n % stride == 0)
            json_array_append_new(arr, v);
        else
            json_decref(v);
        n++;
    }
    free(line);
    fclose(f);
    return n;
}
