/* route_model.c: swapping the model in service: SIGHUP reloads (main.c) and POST /model
 * activations of a training checkpoint share srv_model_swap; the activated checkpoint is
 * remembered in <train.state_dir>/active_model.json so a restarted daemon serves it again.
 *
 * A swap runs ON THE DEVICE THREAD (the backend belongs to it) in separate cz_batcher_call
 * steps, each between inference batches (and training steps): load the file aside and check
 * it has the serving model's depth, channels and colour mode (jobs already prepared by HTTP
 * threads must stay valid); the warm-up the batcher does at start (cz_colorizer_warm_steps:
 * image.render and server.plan_renders at every batch size, then their other shapes up to
 * server.plan_shapes), each pass its own step; then swap it in under the model write lock. A
 * request so waits for at most one step, not for the whole swap. Running out of memory after
 * image.render's square ends the warm-up early (the rest is planned on first use, as at
 * start); any other failure frees the model aside and leaves the old one serving. SIGHUP goes
 * back to the configured file and forgets the activation record.
 * Threading: srv_model_swap and the handler run on MHD threads or the main thread, never on the
 * device thread. Tested by tests/integration/test_train_http.c (activation) and
 * tests/integration/test_http_ops.c (SIGHUP). */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fileio.h"
#include "log.h"
#include "server.h"

typedef struct swap_ctx {
    srv_ctx *s;
    const char *path;
    const char *job;
    long step;
    cz_colorizer *fresh; /* loaded aside, not yet serving */
    const cz_warm_step *warm; /* the next warm-up step */
    int incompatible;
    char err[700];
} swap_ctx;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Step 1 (device thread): load the file aside and check it fits the model in service. */
static cz_status load_aside(cz_colorizer **czp, void *arg) {
    swap_ctx *sc = arg;
    srv_ctx *s = sc->s;
    cz_colorizer_opts co = {.max_batch = s->cfg.max_batch, .precision = (cz_dtype)cz_dtype_parse(s->cfg.precision),
                            .pool = s->pool,
                            .full_batches = cz_config_full_batches(&s->cfg, !strcmp(s->be->ops->name, "cuda"))};
    cz_status st = cz_colorizer_create(s->be, sc->path, &co, &sc->fresh);
    if (st != CZ_OK) {
        snprintf(sc->err, sizeof sc->err, "%s", cz_error_detail());
        return st;
    }
    const cz_unet_arch *a = cz_colorizer_arch(*czp), *b = cz_colorizer_arch(sc->fresh);
    if (a->depth != b->depth || a->in_ch != b->in_ch || a->out_ch != b->out_ch || a->mode != b->mode) {
        snprintf(sc->err, sizeof sc->err,
                 "%s: depth %d, %d->%d channels, %s; the model in service has depth %d, %d->%d channels, %s "
                 "(restart the daemon to change the architecture)",
                 sc->path, b->depth, b->in_ch, b->out_ch, cz_color_mode_name(b->mode), a->depth, a->in_ch, a->out_ch,
                 cz_color_mode_name(a->mode));
        cz_colorizer_destroy(sc->fresh);
        sc->fresh = NULL;
        sc->incompatible = 1;
        return CZ_ERR_BAD_WEIGHTS;
    }
    return CZ_OK;
}

/* Step 2, once per batch size (device thread): one warm-up pass of the model aside, so that
 * between two of these the batcher serves whatever waits. */
static cz_status warm_aside(cz_colorizer **czp, void *arg) {
    (void)czp;
    swap_ctx *sc = arg;
    /* as the batcher's warm-up: the shapes planned at start stay planned */
    cz_status st = cz_colorizer_warm_step(sc->fresh, sc->warm);
    if (st != CZ_OK) snprintf(sc->err, sizeof sc->err, "warm-up of %s failed: %s", sc->path, cz_error_detail());
    return st;
}

/* Step 3 (device thread, between batches): swap it in. */
static cz_status swap_in(cz_colorizer **czp, void *arg) {
    swap_ctx *sc = arg;
    srv_ctx *s = sc->s;
    cz_colorizer *fresh = sc->fresh;
    sc->fresh = NULL;
    pthread_rwlock_wrlock(&s->cz_lock);
    cz_colorizer *old = *czp;
    *czp = fresh;
    s->cz = fresh;
    pthread_rwlock_unlock(&s->cz_lock);
    cz_colorizer_destroy(old);
    pthread_mutex_lock(&s->model_mu);
    s->origin_checkpoint = sc->job != NULL;
    snprintf(s->origin_path, sizeof s->origin_path, "%s", sc->path);
    snprintf(s->origin_job, sizeof s->origin_job, "%s", sc->job ? sc->job : "");
    s->origin_step = sc->step;
    s->origin_at = now_s();
    pthread_mutex_unlock(&s->model_mu);
    srv_model_snapshot(s, fresh);
    return CZ_OK;
}

/* On failure after step 1 (device thread): free the model aside. */
static cz_status discard_aside(cz_colorizer **czp, void *arg) {
    (void)czp;
    swap_ctx *sc = arg;
    cz_colorizer_destroy(sc->fresh);
    sc->fresh = NULL;
    return CZ_OK;
}

static void record_path(const srv_ctx *s, char *out, size_t cap) {
    snprintf(out, cap, "%s/active_model.json", s->cfg.train_state_dir);
}

/* Writes (job != NULL) or removes the activation record. Best effort: logged on failure. */
static void remember(srv_ctx *s, const char *path, const char *job, long step) {
    char rec[4200];
    record_path(s, rec, sizeof rec);
    if (!s->cfg.train_state_dir[0]) return;
    if (!job) {
        if (unlink(rec) != 0 && errno != ENOENT) CZ_LOGW("model", "cannot remove %s: %s", rec, strerror(errno));
        return;
    }
    json_t *o = json_pack("{s:s,s:s,s:I,s:f}", "path", path, "job", job, "step", (json_int_t)step, "activated_at", now_s());
    char *txt = o ? json_dumps(o, JSON_INDENT(2)) : NULL;
    json_decref(o);
    if (!txt || cz_file_write_atomic(rec, txt, strlen(txt)) != CZ_OK)
        CZ_LOGW("model", "cannot record the activation in %s: %s (a restart serves model.path)", rec,
                txt ? cz_error_detail() : "out of memory");
    free(txt);
}

cz_status srv_model_swap(srv_ctx *s, const char *path, const char *job, long step, cz_api_error *err) {
    memset(err, 0, sizeof *err);
    swap_ctx sc = {.s = s, .path = path, .job = job, .step = step};
    int64_t t0 = cz_now_ns();
    /* Each step is its own call: the batcher runs waiting batches between them, so a request
     * waits for at most one of these steps (a load, or one warm-up pass), never for all. */
    cz_status st = cz_batcher_call(s->batcher, load_aside, &sc);
    int renders[1 + CZ_CFG_MAX_PLAN_RENDERS] = {s->cfg.render};
    memcpy(renders + 1, s->plan_renders, (size_t)s->n_plan_renders * sizeof *renders);
    int nr = 1 + s->n_plan_renders;
    cz_warm_step *steps = NULL;
    int nsteps = 0, left_out = 0, first_done = 0;
    /* sc.fresh is the device thread's, but its architecture and limits, all this reads, are fixed */
    if (st == CZ_OK)
        st = cz_colorizer_warm_steps(sc.fresh, renders, nr, s->cfg.plan_shapes, &steps, &nsteps, &left_out);
    for (int k = 0; st == CZ_OK && k < nsteps; k++) {
        sc.warm = &steps[k];
        st = cz_batcher_call(s->batcher, warm_aside, &sc);
        if (st == CZ_OK && steps[k].keep && steps[k].w == renders[0] && steps[k].h == renders[0]) first_done = 1;
        int nomem = st == CZ_ERR_NOMEM ? cz_warm_step_nomem(&steps[k], first_done) : CZ_WARM_FAIL;
        if (nomem == CZ_WARM_GO_ON) {
            sc.err[0] = 0;
            st = CZ_OK;
        } else if (nomem == CZ_WARM_STOP) {
            CZ_LOGW("model", "%s", sc.err);
            CZ_LOGW("model", "the shapes from %dx%d on are planned on first use", steps[k].w, steps[k].h);
            sc.err[0] = 0;
            st = CZ_OK;
            break;
        }
    }
    free(steps);
    if (st == CZ_OK) st = cz_batcher_call_ex(s->batcher, swap_in, &sc, CZ_CALL_NO_WARMUP);
    if (sc.fresh && cz_batcher_call(s->batcher, discard_aside, &sc) != CZ_OK)
        CZ_LOGW("model", "could not free the model loaded aside (the batcher stopped)");
    if (st != CZ_OK) {
        const char *why = sc.err[0] ? sc.err : cz_error_detail();
        snprintf(err->message, sizeof err->message, "%.500s", why);
        err->http = sc.incompatible ? 409 : st == CZ_ERR_BAD_WEIGHTS ? 422 : st == CZ_ERR_NOT_FOUND ? 404
                    : st == CZ_ERR_SHUTTING_DOWN                    ? 503
                                                                    : 500;
        err->code = sc.incompatible ? "incompatible_model" : st == CZ_ERR_BAD_WEIGHTS ? "bad_weights"
                    : st == CZ_ERR_NOT_FOUND                                          ? "checkpoint_not_found"
                    : st == CZ_ERR_SHUTTING_DOWN                                      ? "shutting_down"
                                                                                      : "internal_error";
        CZ_LOGE("model", "loading %s failed, the previous model keeps serving: %s", path, why);
        return st;
    }
    remember(s, path, job, step);
    pthread_mutex_lock(&s->model_mu);
    char sum[40];
    memcpy(sum, s->model_checksum, sizeof sum);
    pthread_mutex_unlock(&s->model_mu);
    CZ_LOGI("model", "now serving %s%s%s (checksum %s), swapped in %.0f ms", path, job ? " from job " : "",
            job ? job : "", sum, (double)(cz_now_ns() - t0) * 1e-6);
    return CZ_OK;
}

const char *srv_model_initial_path(srv_ctx *s) {
    char rec[4200];
    record_path(s, rec, sizeof rec);
    if (!s->cfg.train_state_dir[0] || access(rec, F_OK) != 0) return s->cfg.model_path;
    json_t *o = json_load_file(rec, 0, NULL);
    const char *p = json_string_value(json_object_get(o, "path")), *job = json_string_value(json_object_get(o, "job"));
    json_t *step = json_object_get(o, "step"), *at = json_object_get(o, "activated_at");
    if (!p || !job || !json_is_integer(step) || access(p, R_OK) != 0) {
        CZ_LOGW("model", "%s names no readable checkpoint; serving model.path %s", rec, s->cfg.model_path);
        json_decref(o);
        return s->cfg.model_path;
    }
    s->origin_checkpoint = 1;
    snprintf(s->origin_path, sizeof s->origin_path, "%s", p);
    snprintf(s->origin_job, sizeof s->origin_job, "%s", job);
    s->origin_step = (long)json_integer_value(step);
    s->origin_at = json_is_number(at) ? json_number_value(at) : now_s();
    json_decref(o);
    CZ_LOGI("model", "serving the activated checkpoint of job %s step %ld (%s) instead of model.path", s->origin_job,
            s->origin_step, s->origin_path);
    return s->origin_path;
}

enum MHD_Result srv_route_model_post(srv_ctx *s, struct MHD_Connection *c, srv_req *req) {
    if (!s->jobs) return srv_send_error(c, req, 503, "unavailable", "training jobs are unavailable", 0, NULL);
    char job[65], path[4200];
    long got = 0;
    cz_api_error e;
    if (cz_jobs_activation(s->jobs, (const char *)req->body, req->body_len, job, path, sizeof path, &got, &e) != 0)
        return srv_send_api_error(c, req, &e);
    if (srv_model_swap(s, path, job, got, &e) != CZ_OK) return srv_send_api_error(c, req, &e);
    pthread_mutex_lock(&s->model_mu);
    char *text = s->model_json ? strdup(s->model_json) : NULL;
    pthread_mutex_unlock(&s->model_mu);
    if (!text) return srv_send_error(c, req, 500, "internal_error", "no model information", 0, NULL);
    return srv_send_json(c, req, 200, text);
}
