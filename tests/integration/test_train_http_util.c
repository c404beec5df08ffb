/* test_train_http_util.c: helpers of test_train_http (declared in test_train_http.h): JSON
 * members of responses, admin requests with the bearer token, polling a job's status, and the
 * generated datasets under the data root. Knows the contract's shapes (server/CONTRACT.md),
 * never the daemon's internals. Main thread only (the client thread of test_activation uses
 * itest's it_post, not these). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test_train_http.h"
#include "testutil.h"

/* ------------------------------------------------------------------ JSON helpers */

json_t *jload(const it_resp *r) {
    json_error_t e;
    return r->body && r->len ? json_loadb(r->body, r->len, 0, &e) : NULL;
}
long jlong(json_t *o, const char *k) {
    json_t *v = json_object_get(o, k);
    return json_is_integer(v) ? (long)json_integer_value(v) : -1;
}
double jnum(json_t *o, const char *k) {
    json_t *v = json_object_get(o, k);
    return json_is_number(v) ? json_number_value(v) : NAN;
}
const char *jstr(json_t *o, const char *k) {
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

/* ------------------------------------------------------------------ HTTP helpers */

/* One admin request: auth is the whole Authorization header line (NULL: none). A body is sent
 * as application/json. Returns the status. */
long areq(int port, const char *method, const char *path, const char *body, const char *auth, it_resp *r) {
    it_req rq = {.method = method, .path = path, .extra_header = auth, .timeout_ms = 30000};
    if (body) {
        rq.body = body;
        rq.len = strlen(body);
        rq.has_body = 1;
        rq.content_type = "application/json";
    }
    it_http(port, &rq, r);
    return r->status;
}

json_t *get_job(int port, const char *id) {
    char path[128];
    snprintf(path, sizeof path, "/train/%s", id);
    it_resp r;
    areq(port, "GET", path, NULL, AUTH, &r);
    json_t *j = r.status == 200 ? jload(&r) : NULL;
    it_resp_free(&r);
    return j;
}

int status_in(json_t *job, const char *set) {
    const char *s = jstr(job, "status");
    if (!*s) return 0;
    char pad[128], want[80];
    snprintf(pad, sizeof pad, " %s ", set);
    snprintf(want, sizeof want, " %s ", s);
    return strstr(pad, want) != NULL;
}

/* Polls GET /train/{id} until its status is one of `set` (space-separated) and, when given,
 * pred(job) holds; at most timeout_s. Returns the last job object seen (caller decrefs). */
json_t *wait_job(int port, const char *id, const char *set, int (*pred)(json_t *), double timeout_s) {
    double end = it_now() + timeout_s;
    json_t *j = NULL;
    for (;;) {
        json_decref(j);
        j = get_job(port, id);
        if (j && status_in(j, set) && (!pred || pred(j))) return j;
        if (it_now() > end) return j;
        if (port == g_d.port && !it_daemon_alive(&g_d)) { /* no point in waiting for a dead daemon */
            it_note("the daemon is gone (wait status 0x%x) while waiting for job %s",
                    (unsigned)g_d.exit_status, id);
            it_daemon_log_tail(&g_d, 15);
            return j;
        }
        it_sleep(0.1);
    }
}

/* POST /train; on 202 copies the id. Returns the status. */
long submit(int port, const char *body, char id[65], json_t **job_out) {
    it_resp r;
    long st = areq(port, "POST", "/train", body, AUTH, &r);
    if (id) id[0] = '\0';
    json_t *j = jload(&r);
    if (st == 202 && id) snprintf(id, 65, "%s", jstr(j, "id"));
    if (st != 202) it_note("POST /train %s -> %ld %.300s", body, st, r.body ? r.body : "");
    if (job_out)
        *job_out = j;
    else
        json_decref(j);
    it_resp_free(&r);
    return st;
}

/* The message of an error response starts with (prefix) or contains `field`. */
int message_names(const it_resp *r, const char *field, int prefix) {
    json_t *j = jload(r);
    const char *m = json_string_value(json_object_get(json_object_get(j, "error"), "message"));
    int ok = m && (prefix ? !strncmp(m, field, strlen(field)) : strstr(m, field) != NULL);
    if (!ok) it_note("message '%s' should %s '%s'", m ? m : "(none)", prefix ? "start with" : "name", field);
    json_decref(j);
    return ok;
}

char *model_checksum(int port, char *src_kind, size_t cap) {
    it_resp r;
    it_get(port, "/model", &r);
    json_t *j = r.status == 200 ? jload(&r) : NULL;
    char *sum = j ? strdup(jstr(j, "checksum")) : strdup("");
    if (src_kind) snprintf(src_kind, cap, "%s", jstr(json_object_get(j, "source"), "kind"));
    json_decref(j);
    it_resp_free(&r);
    return sum;
}

/* ------------------------------------------------------------------ dataset */

int tt_mkdir(const char *p) {
    return mkdir(p, 0700) == 0 || errno == EEXIST ? 0 : -1;
}

/* A 96x96 scene: sky (blue, lighter towards the horizon) over green ground, a red disc; all
 * colours a function of position and brightness, plus a little noise. */
static void scene(cz_image *img, int w, int h, int channels, uint64_t seed) {
    cz_image_alloc(img, w, h, channels);
    uint64_t s = seed * 0x9e3779b97f4a7c15ull + 7;
    double cx = 25 + (double)(tu_rand_u64(&s) % 45), cy = 40 + (double)(tu_rand_u64(&s) % 35);
    double rad = 10 + (double)(tu_rand_u64(&s) % 10), horizon = tu_rand_uniform(&s, 0.4f, 0.6f);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            double t = (double)y / (h - 1), c[3];
            if ((x - cx) * (x - cx) + (y - cy) * (y - cy) < rad * rad)
                c[0] = 220, c[1] = 40, c[2] = 30;
            else if (t < horizon)
                c[0] = 60 + 100 * t, c[1] = 120 + 120 * t, c[2] = 235;
            else
                c[0] = 40, c[1] = 150 - 60 * (t - horizon), c[2] = 30;
            double gray = 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2];
            for (int k = 0; k < channels; k++) {
                double v = (channels == 1 ? gray : c[k]) + 6.0 * tu_rand_normal(&s);
                img->px[((size_t)y * w + x) * channels + k] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v + 0.5);
            }
        }
}

static int write_scene(const char *dir, int i, int channels) {
    cz_image img;
    scene(&img, 96, 96, channels, (uint64_t)i + 1);
    uint8_t *png = NULL;
    size_t n = 0;
    int rc = cz_image_encode(&img, CZ_FMT_PNG, 90, &png, &n) == CZ_OK ? 0 : -1;
    char path[PATH_MAX + 32];
    if (snprintf(path, sizeof path, "%s/img%02d.png", dir, i) >= (int)sizeof path) rc = -1;
    if (!rc) rc = it_write_file(path, png, n);
    free(png);
    cz_image_free(&img);
    return rc;
}

int tt_write_datasets(const char *root) {
    char p[PATH_MAX + 32];
    snprintf(p, sizeof p, "%s/ds1", root);
    if (tt_mkdir(p)) return -1;
    for (int i = 0; i < 36; i++)
        if (write_scene(p, i, 3)) return -1;
    snprintf(p, sizeof p, "%s/gray", root);
    if (tt_mkdir(p)) return -1;
    for (int i = 0; i < 4; i++)
        if (write_scene(p, i, 1)) return -1;
    snprintf(p, sizeof p, "%s/empty", root);
    if (tt_mkdir(p)) return -1;
    snprintf(p, sizeof p, "%s/escape", root);
    if (symlink("/", p) && errno != EEXIST) return -1;
    snprintf(p, sizeof p, "%s/inside", root);
    if (symlink("ds1", p) && errno != EEXIST) return -1;
    return 0;
}
