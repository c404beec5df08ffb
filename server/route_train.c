/* route_train.c: the training-job endpoints of the admin API (server/CONTRACT.md, "Training
 * jobs and model activation"): POST/GET /train, GET/DELETE /train/{id},
 * GET /train/{id}/losses, GET /train/{id}/samples/{step}.png, POST /train/{id}/resume.
 *
 * http.c has already checked the admin token (every /train operation needs it), the method
 * (srv_train_match says which are allowed) and the JSON body limit; this file parses the
 * path and parameters and hands the work to core/jobs.c, which answers with JSON text or a
 * cz_api_error. Nothing here touches the device thread: the job registry is read under its
 * own lock and the device thread picks queued jobs up between inference batches.
 * Threading: handlers run on MHD threads. Tested by tests/integration/test_train_http.c. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fileio.h"
#include "server.h"

typedef enum train_kind { TK_NONE, TK_LIST, TK_ITEM, TK_LOSSES, TK_RESUME, TK_SAMPLE } train_kind;

typedef struct train_path {
    train_kind kind;
    char id[65];
    long step; /* TK_SAMPLE */
} train_path;

/* Splits a /train URL. */
static train_kind parse_path(const char *url, train_path *tp) {
    memset(tp, 0, sizeof *tp);
    if (strcmp(url, "/train") == 0) return tp->kind = TK_LIST;
    if (strncmp(url, "/train/", 7) != 0) return TK_NONE;
    const char *id = url + 7, *slash = strchr(id, '/');
    size_t n = slash ? (size_t)(slash - id) : strlen(id);
    if (n == 0 || n > 64) return TK_NONE;
    memcpy(tp->id, id, n);
    tp->id[n] = '\0';
    if (!cz_job_id_valid(tp->id)) return TK_NONE;
    if (!slash) return tp->kind = TK_ITEM;
    const char *rest = slash + 1;
    if (strcmp(rest, "losses") == 0) return tp->kind = TK_LOSSES;
    if (strcmp(rest, "resume") == 0) return tp->kind = TK_RESUME;
    if (strncmp(rest, "samples/", 8) == 0) {
        const char *num = rest + 8;
        size_t digits = strspn(num, "0123456789");
        if (digits == 0 || digits > 12 || strcmp(num + digits, ".png") != 0) return TK_NONE;
        tp->step = strtol(num, NULL, 10);
        return tp->kind = TK_SAMPLE;
    }
    return TK_NONE;
}

bool srv_train_match(const char *url, const char **allow) {
    train_path tp;
    switch (parse_path(url, &tp)) {
    case TK_LIST: *allow = "GET, POST"; return true;
    case TK_ITEM: *allow = "GET, DELETE"; return true;
    case TK_LOSSES: *allow = "GET"; return true;
    case TK_SAMPLE: *allow = "GET"; return true;
    case TK_RESUME: *allow = "POST"; return true;
    default: return false;
    }
}

bool srv_token_equal(const char *a, size_t a_len, const char *b, size_t b_len) {
    /* Touches b_len bytes whatever the content; a_len > 0 is guaranteed by the caller. */
    volatile unsigned char diff = (unsigned char)(a_len != b_len);
    for (size_t i = 0; i < b_len; i++) diff |= (unsigned char)(a[i % a_len] ^ b[i]);
    return a_len > 0 && diff == 0;
}

enum MHD_Result srv_send_api_error(struct MHD_Connection *c, srv_req *req, const cz_api_error *e) {
    return srv_send_error(c, req, e->http ? e->http : 500, e->code ? e->code : "internal_error",
                          e->message[0] ? e->message : "internal error", e->retry_after, NULL);
}

static enum MHD_Result send_job(struct MHD_Connection *c, srv_req *req, int http, char *json, const char *id) {
    if (http != 202 || !id) return srv_send_json(c, req, http, json);
    char loc[96];
    snprintf(loc, sizeof loc, "/train/%s", id);
    const char *hdr[] = {MHD_HTTP_HEADER_LOCATION, loc, NULL};
    return srv_send(c, req, http, "application/json", json, strlen(json), true, hdr);
}

/* Current model file (for init "current"), copied under model_mu. */
static void current_model(srv_ctx *s, char *out, size_t cap) {
    pthread_mutex_lock(&s->model_mu);
    snprintf(out, cap, "%s", s->origin_checkpoint ? s->origin_path : s->cfg.model_path);
    pthread_mutex_unlock(&s->model_mu);
}

static enum MHD_Result losses(srv_ctx *s, struct MHD_Connection *c, srv_req *req, const char *id) {
    long stride = 1;
    const char *q = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "stride");
    if (q) {
        char *end = NULL;
        errno = 0;
        long v = strtol(q, &end, 10);
        if (!*q || *end || errno || v < 1 || v > 1000000000)
            return srv_send_error(c, req, 400, "invalid_parameter", "stride: expected an integer 1..1000000000", 0,
                                  NULL);
        stride = v;
    }
    cz_api_error e;
    char *json = cz_jobs_losses_json(s->jobs, id, stride, &e);
    return json ? srv_send_json(c, req, 200, json) : srv_send_api_error(c, req, &e);
}

static enum MHD_Result sample(srv_ctx *s, struct MHD_Connection *c, srv_req *req, const train_path *tp) {
    cz_api_error e;
    char *path = cz_jobs_sample_path(s->jobs, tp->id, tp->step, &e);
    if (!path) return srv_send_api_error(c, req, &e);
    uint8_t *data = NULL;
    size_t len = 0;
    cz_status st = cz_file_read(path, (size_t)256 << 20, &data, &len);
    free(path);
    if (st != CZ_OK) return srv_send_error(c, req, 500, "internal_error", cz_error_detail(), 0, NULL);
    const char *hdr[] = {"Cache-Control", "private, max-age=3600", NULL};
    return srv_send(c, req, 200, "image/png", data, len, true, hdr);
}

enum MHD_Result srv_route_train(srv_ctx *s, struct MHD_Connection *c, srv_req *req) {
    train_path tp;
    parse_path(req->path, &tp);
    if (!s->jobs)
        return srv_send_error(c, req, 503, "unavailable", "training jobs are unavailable (state dir not open)", 0, NULL);
    const bool get = strcmp(req->method, "GET") == 0 || strcmp(req->method, "HEAD") == 0;
    cz_api_error e;
    char *json = NULL;
    switch (tp.kind) {
    case TK_LIST:
        if (get) {
            json = cz_jobs_list_json(s->jobs, &e);
            return json ? srv_send_json(c, req, 200, json) : srv_send_api_error(c, req, &e);
        } else {
            char model[4096], id[65] = "";
            current_model(s, model, sizeof model);
            json = cz_jobs_submit(s->jobs, (const char *)req->body, req->body_len, model, id, &e);
            return json ? send_job(c, req, 202, json, id) : srv_send_api_error(c, req, &e);
        }
    case TK_ITEM:
        json = get ? cz_jobs_get_json(s->jobs, tp.id, &e) : cz_jobs_cancel(s->jobs, tp.id, &e);
        return json ? srv_send_json(c, req, get ? 200 : 202, json) : srv_send_api_error(c, req, &e);
    case TK_LOSSES: return losses(s, c, req, tp.id);
    case TK_SAMPLE: return sample(s, c, req, &tp);
    case TK_RESUME:
        json = cz_jobs_resume(s->jobs, tp.id, &e);
        return json ? send_job(c, req, 202, json, tp.id) : srv_send_api_error(c, req, &e);
    default: return srv_send_error(c, req, 404, "not_found", "no such path", 0, NULL);
    }
}
