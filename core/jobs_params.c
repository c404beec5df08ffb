/* jobs_params.c: the request side of the job registry: a POST /train body validated field
 * by field into a job's parameters (every error names its field), the parameters shown back
 * as JSON, and dataset confinement under train.data_root. See jobs_impl.h.
 * Reentrant (no shared state). Tested by tests/unit/test_jobs.c. */
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "dataset.h"
#include "fileio.h"
#include "image.h"
#include "jobs_impl.h"
#include "unet.h"

const char *const cz_jobs_init_names[3] = {"scratch", "current", "checkpoint"};

int cz_jobs_api_err(cz_api_error *e, int http, const char *code, const char *fmt, ...) {
    e->http = http;
    e->code = code;
    e->retry_after = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return -1;
}

/* Client-supplied text made safe to quote in a message. */
void cz_jobs_printable(char *out, size_t cap, const char *s) {
    size_t n = 0;
    for (; s && *s && n + 1 < cap; s++) out[n++] = (*s >= 0x20 && *s < 0x7f) ? *s : '?';
    out[n] = '\0';
}

/* ---------------------------------------------------------------- parameters */

static void params_default(const cz_jobs_opts *o, jparams *p) {
    memset(p, 0, sizeof *p);
    p->batch = 1;
    p->size = 256; /* or the largest power of two within the configured maximum */
    while (p->size > o->max_image_size && p->size > 64) p->size /= 2;
    p->ngf = 64;
    p->keep = o->keep_checkpoints;
    p->lr = 2e-4;
    p->lambda_l1 = 100;
    p->init = INIT_SCRATCH;
    p->init_step = -2;
    p->validate_every = 500;
    p->checkpoint_every = 1000;
}

static int int_field(json_t *v, const char *key, long long lo, long long hi, long long *out, cz_api_error *e) {
    if (!json_is_integer(v)) return cz_jobs_api_err(e, 400, "invalid_field", "%s: expected an integer", key);
    long long x = json_integer_value(v);
    if (x < lo || x > hi) return cz_jobs_api_err(e, 400, "invalid_field", "%s: %lld is out of range %lld..%lld", key, x, lo, hi);
    *out = x;
    return 0;
}

static int num_field(json_t *v, const char *key, double lo, double hi, int lo_open, double *out, cz_api_error *e) {
    if (!json_is_number(v)) return cz_jobs_api_err(e, 400, "invalid_field", "%s: expected a number", key);
    double x = json_number_value(v);
    if (!isfinite(x) || x > hi || x < lo || (lo_open && x <= lo))
        return cz_jobs_api_err(e, 400, "invalid_field", "%s: %g is out of range %s%g, %g]", key, x, lo_open ? "(" : "[", lo, hi);
    *out = x;
    return 0;
}

static int str_field(json_t *v, const char *key, char *out, size_t cap, cz_api_error *e) {
    if (!json_is_string(v)) return cz_jobs_api_err(e, 400, "invalid_field", "%s: expected a string", key);
    const char *s = json_string_value(v);
    if (strlen(s) >= cap) return cz_jobs_api_err(e, 400, "invalid_field", "%s: longer than %zu bytes", key, cap - 1);
    snprintf(out, cap, "%s", s);
    return 0;
}

/* depth the trainer derives from an image size: the largest 5..8 with 2^depth <= size */
static int depth_for(int size) {
    int d = CZ_UNET_MIN_DEPTH;
    while (d < CZ_UNET_MAX_DEPTH && (1 << (d + 1)) <= size) d++;
    return d;
}

json_t *cz_jobs_parse_body(const char *body, size_t len, cz_api_error *e) {
    json_error_t je;
    json_t *o = json_loadb(body ? body : "", len, JSON_REJECT_DUPLICATES, &je);
    if (!o) {
        cz_jobs_api_err(e, 400, "invalid_json", "request body is not valid JSON: %s (line %d, column %d)", je.text,
                        je.line, je.column);
        return NULL;
    }
    if (!json_is_object(o)) {
        json_decref(o);
        cz_jobs_api_err(e, 400, "invalid_json", "request body must be a JSON object");
        return NULL;
    }
    return o;
}

int cz_jobs_parse_step(json_t *v, const char *key, long *out, cz_api_error *e) {
    if (json_is_string(v) && !strcmp(json_string_value(v), "best"))
        *out = -1;
    else if (json_is_string(v) && !strcmp(json_string_value(v), "latest"))
        *out = -2;
    else if (json_is_integer(v) && json_integer_value(v) >= 0 && json_integer_value(v) <= 1000000000)
        *out = (long)json_integer_value(v);
    else
        return cz_jobs_api_err(e, 400, "invalid_field", "%s: expected a step number, \"best\" or \"latest\"", key);
    return 0;
}

/* Parses a request object into p (defaults first). `stored`: a record read back from disk,
 * where the configured limits are not re-applied. */
int cz_jobs_parse_params(const cz_jobs_opts *lim, json_t *o, jparams *p, int stored, cz_api_error *e) {
    params_default(lim, p);
    int have_steps = 0, have_epochs = 0, have_ngf = 0, have_init_job = 0, have_init_step = 0, have_decay = 0;
    const char *key;
    json_t *v;
    long long x = 0;
    long long max_steps = stored ? 100000000 : lim->max_steps;
    long long max_batch = stored ? 4096 : lim->max_batch, max_size = stored ? 4096 : lim->max_image_size;
    json_object_foreach(o, key, v) {
        char k[72];
        cz_jobs_printable(k, sizeof k, key);
        if (!strcmp(key, "dataset")) {
            if (str_field(v, k, p->dataset, sizeof p->dataset, e)) return -1;
        } else if (!strcmp(key, "steps")) {
            if (json_is_null(v)) continue;
            if (int_field(v, k, 1, max_steps, &x, e)) return -1;
            p->steps = (long)x;
            have_steps = 1;
        } else if (!strcmp(key, "epochs")) {
            if (json_is_null(v)) continue;
            if (num_field(v, k, 0, 10000, 1, &p->epochs, e)) return -1;
            have_epochs = 1;
        } else if (!strcmp(key, "batch_size")) {
            if (int_field(v, k, 1, max_batch, &x, e)) return -1;
            p->batch = (int)x;
        } else if (!strcmp(key, "image_size")) {
            if (int_field(v, k, 64, max_size, &x, e)) return -1;
            int d = depth_for((int)x);
            if (x % 32 || x % (1 << d))
                return cz_jobs_api_err(e, 400, "invalid_field", "image_size: %lld must be a multiple of 32 and of %d (2^depth)", x,
                               1 << d);
            p->size = (int)x;
        } else if (!strcmp(key, "lr")) {
            if (num_field(v, k, 0, 1, 1, &p->lr, e)) return -1;
        } else if (!strcmp(key, "lambda_l1")) {
            if (num_field(v, k, 0, 10000, 0, &p->lambda_l1, e)) return -1;
        } else if (!strcmp(key, "ngf")) {
            if (json_is_null(v)) continue;
            if (int_field(v, k, 4, 128, &x, e)) return -1;
            p->ngf = (int)x;
            have_ngf = 1;
        } else if (!strcmp(key, "init")) {
            char s[32];
            if (str_field(v, k, s, sizeof s, e)) return -1;
            size_t i = 0;
            while (i < 3 && strcmp(s, cz_jobs_init_names[i]) != 0) i++;
            if (i == 3) return cz_jobs_api_err(e, 400, "invalid_field", "init: expected \"scratch\", \"current\" or \"checkpoint\"");
            p->init = (jinit)i;
        } else if (!strcmp(key, "init_job")) {
            if (json_is_null(v)) continue;
            if (str_field(v, k, p->init_job, sizeof p->init_job, e)) return -1;
            if (!cz_job_id_valid(p->init_job)) return cz_jobs_api_err(e, 400, "invalid_field", "init_job: not a job id");
            have_init_job = 1;
        } else if (!strcmp(key, "init_step")) {
            if (json_is_null(v)) continue;
            if (cz_jobs_parse_step(v, "init_step", &p->init_step, e)) return -1;
            have_init_step = 1;
        } else if (!strcmp(key, "precision")) {
            char pr[16];
            if (str_field(v, k, pr, sizeof pr, e)) return -1;
            if (strcmp(pr, "fp32") && strcmp(pr, "bf16"))
                return cz_jobs_api_err(e, 400, "invalid_field", "precision: expected \"fp32\" or \"bf16\"");
            p->bf16 = !strcmp(pr, "bf16");
        } else if (!strcmp(key, "seed")) {
            if (int_field(v, k, 0, 9007199254740992LL, &x, e)) return -1;
            p->seed = (uint64_t)x;
        } else if (!strcmp(key, "validate_every")) {
            if (int_field(v, k, 0, 1000000000, &x, e)) return -1;
            p->validate_every = (long)x;
        } else if (!strcmp(key, "checkpoint_every")) {
            if (int_field(v, k, 0, 1000000000, &x, e)) return -1;
            p->checkpoint_every = (long)x;
        } else if (!strcmp(key, "keep_checkpoints")) {
            if (int_field(v, k, 0, 1000, &x, e)) return -1;
            p->keep = (int)x;
        } else if (!strcmp(key, "lr_decay_steps")) {
            if (int_field(v, k, 0, 100000000, &x, e)) return -1;
            p->lr_decay_steps = (long)x;
            have_decay = x > 0;
        } else {
            return cz_jobs_api_err(e, 400, "invalid_field", "%s: unknown field", k);
        }
    }
    if (!p->dataset[0]) return cz_jobs_api_err(e, 400, "invalid_field", "dataset: required (a directory under train.data_root)");
    if (have_steps == have_epochs)
        return cz_jobs_api_err(e, 400, "invalid_field", "steps: give exactly one of steps and epochs");
    if (have_ngf && p->init != INIT_SCRATCH)
        return cz_jobs_api_err(e, 400, "invalid_field", "ngf: only with init \"scratch\" (otherwise the weights decide)");
    if (p->init == INIT_CHECKPOINT && !have_init_job)
        return cz_jobs_api_err(e, 400, "invalid_field", "init_job: required with init \"checkpoint\"");
    if (p->init != INIT_CHECKPOINT && (have_init_job || have_init_step))
        return cz_jobs_api_err(e, 400, "invalid_field", "%s: only with init \"checkpoint\"", have_init_job ? "init_job" : "init_step");
    if (have_decay && have_steps && p->lr_decay_steps > p->steps)
        return cz_jobs_api_err(e, 400, "invalid_field", "lr_decay_steps: %ld is more than steps (%ld)", p->lr_decay_steps, p->steps);
    return 0;
}

json_t *cz_jobs_params_json(const jparams *p) {
    json_t *o = json_object();
    json_object_set_new(o, "dataset", json_string(p->dataset));
    json_object_set_new(o, "steps", p->steps ? json_integer(p->steps) : json_null());
    json_object_set_new(o, "epochs", p->steps ? json_null() : json_real(p->epochs));
    json_object_set_new(o, "batch_size", json_integer(p->batch));
    json_object_set_new(o, "image_size", json_integer(p->size));
    json_object_set_new(o, "lr", json_real(p->lr));
    json_object_set_new(o, "lambda_l1", json_real(p->lambda_l1));
    json_object_set_new(o, "ngf", p->init == INIT_SCRATCH ? json_integer(p->ngf) : json_null());
    json_object_set_new(o, "init", json_string(cz_jobs_init_names[p->init]));
    if (p->init == INIT_CHECKPOINT) {
        json_object_set_new(o, "init_job", json_string(p->init_job));
        json_object_set_new(o, "init_step", p->init_step == -1   ? json_string("best")
                                            : p->init_step == -2 ? json_string("latest")
                                                                 : json_integer(p->init_step));
    }
    json_object_set_new(o, "precision", json_string(p->bf16 ? "bf16" : "fp32"));
    json_object_set_new(o, "seed", json_integer((json_int_t)p->seed));
    json_object_set_new(o, "validate_every", json_integer(p->validate_every));
    json_object_set_new(o, "checkpoint_every", json_integer(p->checkpoint_every));
    json_object_set_new(o, "keep_checkpoints", json_integer(p->keep));
    json_object_set_new(o, "lr_decay_steps", json_integer(p->lr_decay_steps));
    return o;
}

/* ---------------------------------------------------------------- dataset confinement */

/* Bounds of the usability probe at submit time: directory entries walked, and photos decoded
 * (a job whose first USABLE_DECODES photos are all unusable is refused; one with a usable photo
 * among them is accepted and the trainer skips the unusable rest). */
#define USABLE_WALK 200000
#define USABLE_DECODES 32
#define USABLE_MAX_BYTES ((size_t)64 << 20)

typedef struct usable_probe {
    long walk_left;
    int decodes_left;
    int images, unreadable, gray;
} usable_probe;

/* Whether `path` decodes to a photo with colour (the trainer's own grayscale test). */
static int usable_photo(const char *path, usable_probe *u) {
    uint8_t *data = NULL;
    size_t len = 0;
    u->decodes_left--;
    u->images++;
    if (cz_file_read(path, USABLE_MAX_BYTES, &data, &len) != CZ_OK) {
        u->unreadable++;
        return 0;
    }
    cz_image_limits lim;
    cz_image_limits_default(&lim);
    cz_image img;
    memset(&img, 0, sizeof img);
    cz_status st = cz_image_decode(data, len, &lim, &img, NULL);
    free(data);
    if (st != CZ_OK) {
        u->unreadable++;
        return 0;
    }
    int gray = cz_dataset_image_is_gray(&img);
    cz_image_free(&img);
    u->gray += gray;
    return !gray;
}

/* Whether dir holds a usable colour .jpg/.jpeg/.png (recursively, within the probe's bounds). */
static int has_usable_image(const char *dir, int depth, usable_probe *u) {
    if (depth > 32) return 0;
    DIR *d = opendir(dir);
    if (!d) return 0;
    struct dirent *de;
    int found = 0;
    while (!found && u->decodes_left > 0 && (de = readdir(d)) && --u->walk_left > 0) {
        if (de->d_name[0] == '.') continue;
        char path[PATH_MAX];
        if (snprintf(path, sizeof path, "%s/%s", dir, de->d_name) >= (int)sizeof path) continue;
        struct stat st;
        if (stat(path, &st) != 0) continue;
        if (S_ISDIR(st.st_mode)) {
            found = has_usable_image(path, depth + 1, u);
        } else if (S_ISREG(st.st_mode) && st.st_size > 0) {
            const char *dot = strrchr(de->d_name, '.');
            if (dot && (!strcasecmp(dot, ".jpg") || !strcasecmp(dot, ".jpeg") || !strcasecmp(dot, ".png")))
                found = usable_photo(path, u);
        }
    }
    closedir(d);
    return found;
}

int cz_jobs_resolve_dataset(const char *data_root, const char *name, char *out, size_t cap, cz_api_error *e) {
    char shown[300];
    cz_jobs_printable(shown, sizeof shown, name);
    if (name[0] == '/')
        return cz_jobs_api_err(e, 400, "invalid_field", "dataset: '%s' is absolute; name a directory under train.data_root", shown);
    for (const char *s = name; *s;) { /* no ".." component */
        const char *slash = strchr(s, '/');
        size_t n = slash ? (size_t)(slash - s) : strlen(s);
        if (n == 2 && s[0] == '.' && s[1] == '.')
            return cz_jobs_api_err(e, 400, "invalid_field", "dataset: '%s' leaves train.data_root ('..')", shown);
        s += n;
        while (*s == '/') s++;
    }
    char joined[PATH_MAX], real[PATH_MAX];
    if (snprintf(joined, sizeof joined, "%s/%s", data_root, name) >= (int)sizeof joined)
        return cz_jobs_api_err(e, 400, "invalid_field", "dataset: path too long");
    if (!realpath(joined, real)) {
        if (errno == ENOENT || errno == ENOTDIR)
            return cz_jobs_api_err(e, 404, "dataset_not_found", "dataset '%s' does not exist under train.data_root", shown);
        return cz_jobs_api_err(e, 404, "dataset_not_found", "dataset '%s': %s", shown, strerror(errno));
    }
    size_t rn = strlen(data_root);
    if (strncmp(real, data_root, rn) != 0 || real[rn] != '/')
        return cz_jobs_api_err(e, 400, "invalid_field", "dataset: '%s' resolves outside train.data_root", shown);
    struct stat st;
    if (stat(real, &st) != 0 || !S_ISDIR(st.st_mode))
        return cz_jobs_api_err(e, 404, "dataset_not_found", "dataset '%s' is not a directory", shown);
    usable_probe u = {.walk_left = USABLE_WALK, .decodes_left = USABLE_DECODES};
    if (!has_usable_image(real, 0, &u)) {
        if (!u.images)
            return cz_jobs_api_err(e, 422, "empty_dataset", "dataset '%s' holds no .jpg/.jpeg/.png file", shown);
        return cz_jobs_api_err(e, 422, "empty_dataset",
                               "dataset '%s': no usable colour photo among the %d inspected (%d unreadable, %d grayscale)",
                               shown, u.images, u.unreadable, u.gray);
    }
    snprintf(out, cap, "%s", real);
    return 0;
}
