/* route_ops.c: the operational endpoints: GET /healthz, /readyz, /model, /metrics and
 * /openapi.yaml, plus the /model snapshot they read.
 *
 * None of them waits on the inference queue: /healthz is constant, /readyz asks the
 * batcher's non-blocking ready check, /metrics reads atomics and batcher stats, and /model
 * serves a JSON snapshot rebuilt (under model_mu) whenever a model is loaded or swapped in,
 * so it never needs to run anything on the device thread.
 * Threading: handlers run on MHD threads; srv_model_snapshot may run on any thread (it is
 * called from main at start and from the device thread during a reload).
 * Tested by the integration tests (tests/integration/) and by hand with curl. */
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "server.h"
#include "unet.h"

cz_status srv_model_snapshot(srv_ctx *s, const cz_colorizer *cz) {
    const cz_unet_arch *a = cz_colorizer_arch(cz);
    char sum[40];
    snprintf(sum, sizeof sum, "fnv1a64:%016" PRIx64, cz_colorizer_checksum(cz));
    json_t *o = json_object();
    if (!o) return cz_error_set(CZ_ERR_NOMEM, "out of memory");
    json_object_set_new(o, "architecture", json_string("pix2pix-unet"));
    json_object_set_new(o, "ngf", json_integer(a->ngf));
    json_object_set_new(o, "depth", json_integer(a->depth));
    json_object_set_new(o, "color_mode", json_string(cz_color_mode_name(a->mode)));
    json_object_set_new(o, "in_ch", json_integer(a->in_ch));
    json_object_set_new(o, "out_ch", json_integer(a->out_ch));
    json_object_set_new(o, "parameters", json_integer((json_int_t)cz_unet_param_count(a)));
    json_object_set_new(o, "checksum", json_string(sum));
    json_t *path = json_string(s->cfg.model_path);
    json_object_set_new(o, "path", path ? path : json_string("(not UTF-8)"));
    json_object_set_new(o, "backend", json_string(s->backend_name));
    json_object_set_new(o, "precision", json_string(s->cfg.precision));
    json_object_set_new(o, "max_batch", json_integer(cz_colorizer_max_batch(cz)));
    json_object_set_new(o, "render_default", json_integer(s->cfg.render));

    pthread_mutex_lock(&s->model_mu);
    json_t *src = json_object();
    json_t *sp = json_string(s->origin_checkpoint ? s->origin_path : s->cfg.model_path);
    json_object_set_new(src, "kind", json_string(s->origin_checkpoint ? "checkpoint" : "file"));
    json_object_set_new(src, "path", sp ? sp : json_string("(not UTF-8)"));
    if (s->origin_checkpoint) {
        json_object_set_new(src, "job", json_string(s->origin_job));
        json_object_set_new(src, "step", json_integer(s->origin_step));
        time_t at = (time_t)s->origin_at;
        struct tm tm;
        char when[32];
        gmtime_r(&at, &tm);
        strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
        json_object_set_new(src, "activated_at", json_string(when));
        json_object_set(o, "path", sp ? sp : json_string("(not UTF-8)"));
    }
    json_object_set_new(o, "source", src);
    char *text = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!text) {
        pthread_mutex_unlock(&s->model_mu);
        return cz_error_set(CZ_ERR_NOMEM, "out of memory");
    }
    free(s->model_json);
    s->model_json = text;
    s->model_ngf = a->ngf;
    s->model_depth = a->depth;
    snprintf(s->model_mode, sizeof s->model_mode, "%s", cz_color_mode_name(a->mode));
    snprintf(s->model_checksum, sizeof s->model_checksum, "%s", sum);
    pthread_mutex_unlock(&s->model_mu);
    return CZ_OK;
}

const char *srv_not_ready(srv_ctx *s, char *buf, int cap) {
    if (atomic_load(&s->draining)) {
        snprintf(buf, (size_t)cap, "draining");
        return buf;
    }
    return cz_batcher_ready(s->batcher, buf, cap);
}

enum MHD_Result srv_route_healthz(srv_ctx *s, struct MHD_Connection *c, srv_req *req) {
    (void)s;
    static const char body[] = "{\"status\":\"ok\"}";
    return srv_send(c, req, 200, "application/json", (void *)body, sizeof body - 1, false, NULL);
}

enum MHD_Result srv_route_readyz(srv_ctx *s, struct MHD_Connection *c, srv_req *req) {
    char buf[256];
    const char *why = srv_not_ready(s, buf, sizeof buf);
    json_t *o = json_object();
    if (!o) return MHD_NO;
    json_object_set_new(o, "status", json_string(why ? "not_ready" : "ready"));
    if (why) {
        json_t *r = json_string(why);
        json_object_set_new(o, "reason", r ? r : json_string("unknown"));
    }
    char *text = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return srv_send_json(c, req, why ? 503 : 200, text);
}

enum MHD_Result srv_route_model(srv_ctx *s, struct MHD_Connection *c, srv_req *req) {
    if (strcmp(req->method, "POST") == 0) return srv_route_model_post(s, c, req);
    pthread_mutex_lock(&s->model_mu);
    char *text = s->model_json ? strdup(s->model_json) : NULL;
    pthread_mutex_unlock(&s->model_mu);
    if (!text) return srv_send_error(c, req, 500, "internal_error", "no model information", 0, NULL);
    return srv_send_json(c, req, 200, text);
}

enum MHD_Result srv_route_metrics(srv_ctx *s, struct MHD_Connection *c, srv_req *req) {
    char buf[256];
    srv_metrics_gauges g;
    memset(&g, 0, sizeof g);
    g.queue_depth = cz_batcher_depth(s->batcher);
    cz_batcher_stats bs;
    cz_batcher_stats_get(s->batcher, &bs);
    g.planned_shapes = bs.planned_shapes;
    g.activation_bytes = (unsigned long long)bs.activation_bytes;
    g.ready = srv_not_ready(s, buf, sizeof buf) == NULL;
    char mode[16], sum[40];
    pthread_mutex_lock(&s->model_mu);
    g.ngf = s->model_ngf;
    g.depth = s->model_depth;
    memcpy(mode, s->model_mode, sizeof mode);
    memcpy(sum, s->model_checksum, sizeof sum);
    pthread_mutex_unlock(&s->model_mu);
    g.color_mode = mode;
    g.checksum = sum;
    g.backend = s->backend_name;
    g.precision = s->cfg.precision;
    if (s->jobs) {
        cz_jobs_stats js;
        cz_jobs_stats_get(s->jobs, &js);
        int v[6] = {js.queued, js.running, js.succeeded, js.failed, js.cancelled, js.interrupted};
        memcpy(g.train_jobs, v, sizeof v);
        g.train_steps_total = js.steps_total;
        g.train_images_per_s = js.images_per_s;
    }
    if (s->pool) {
        cz_host_pool_stats ps;
        cz_host_pool_get_stats(s->pool, &ps);
        g.pinned_capacity = ps.capacity;
        g.pinned_in_use = ps.in_use;
        g.pinned_peak = ps.peak;
        g.pinned_misses = ps.misses;
    }
    size_t len = 0;
    char *text = srv_metrics_render(&g, &len);
    if (!text) return srv_send_error(c, req, 500, "internal_error", "out of memory rendering metrics", 0, NULL);
    return srv_send(c, req, 200, "text/plain; version=0.0.4", text, len, true, NULL);
}

enum MHD_Result srv_route_openapi(srv_ctx *s, struct MHD_Connection *c, srv_req *req) {
    (void)s;
    return srv_send(c, req, 200, "application/yaml", (void *)srv_openapi_yaml, (size_t)srv_openapi_yaml_len, false,
                    NULL);
}
