/* server.h: what the daemon's files share: the server context (one per process, built by
 * main.c), the per-request state owned by http.c, response helpers (http.c, json.c) and the
 * route handlers (route_colorize.c, route_ops.c).
 *
 * Threading: the context is written by main.c before the HTTP daemon starts and is then
 * read-only, except for the fields marked otherwise (atomics, or guarded by the named lock).
 * A request (srv_req) belongs to the libmicrohttpd thread serving its connection; the only
 * part another thread touches is the refcounted inference job (route_colorize.c).
 * Tested by the integration tests (tests/integration/) and by hand with curl. */
#ifndef SRV_SERVER_H
#define SRV_SERVER_H

#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "batcher.h"
#include "colorize.h"
#include "config.h"
#include "host_pool.h"
#include "image.h"
#include "jobs.h"
#include "metrics.h"

typedef struct srv_ctx {
    cz_config cfg;
    cz_image_limits limits;
    cz_backend *be;          /* used only on the device thread once the batcher runs */
    const char *backend_name;
    cz_batcher *batcher;
    /* renders planned at start besides cfg.render (server.plan_renders resolved; fixed) */
    int plan_renders[CZ_CFG_MAX_PLAN_RENDERS];
    int n_plan_renders;

    /* The model in service. HTTP threads hold the read lock around cz_cjob_prepare and
     * cz_cjob_finish (they read its architecture); a reload swaps it under the write lock. */
    pthread_rwlock_t cz_lock;
    cz_colorizer *cz;
    /* page-locked job memory for jobs the device finishes (server.pinned_mb); NULL where the
     * backend cannot finish on the device. Thread-safe; outlives every request. */
    cz_host_pool *pool;

    /* /model and colorize_model_info snapshot, replaced on load/swap under model_mu, with
     * where the model in service came from (a file, or a training job's checkpoint). */
    pthread_mutex_t model_mu;
    char *model_json;
    int model_ngf, model_depth;
    char model_mode[16], model_checksum[40];
    int origin_checkpoint;       /* 0: the configured file; 1: a job's checkpoint */
    char origin_path[4096];
    char origin_job[65];
    long origin_step;
    double origin_at;            /* unix seconds of the activation */

    /* Admin API: the bearer token (read-only after start; length 0 = admin API off). */
    char admin_token[512];
    size_t admin_token_len;
    cz_jobs *jobs;               /* training jobs (core/jobs.h) */

    atomic_bool draining;     /* SIGTERM seen: /readyz fails, /colorize answers 503 */
    atomic_bool device_lost;  /* the backend reported a sticky device error: exit non-zero */
    atomic_int inflight;      /* requests between their first callback and completion */
    struct MHD_Daemon *daemon;
    int port;                 /* bound port */
} srv_ctx;

/* Per-request state, created on the first access-handler call and freed by the
 * request-completed callback (http.c). */
typedef struct srv_work srv_work;
typedef struct srv_req {
    char id[132];
    srv_route route;
    char method[16];
    char path[192];
    char remote[64];
    int64_t t_start_ns;
    int status;          /* HTTP status queued, 0 while none */
    uint64_t bytes_in;   /* body bytes received (kept or discarded) */
    uint64_t bytes_out;  /* response body bytes queued */
    double ms_decode, ms_queue, ms_infer, ms_encode;

    /* body (POST /colorize only) */
    uint8_t *body;
    size_t body_len, body_cap;
    bool keep_body;      /* false: bytes are counted and dropped */
    bool too_large;      /* exceeded max_body_bytes while streaming */
    bool raw_answered;   /* 413 written to the socket directly (mid-upload): close at the end */

    /* an answer decided before the body ended (404/405/401/403...): sent once it has */
    int early_http;
    const char *early_code;
    const char *early_allow;
    const char *early_detail; /* message of a 401 */
    bool admin;               /* an admin operation (checked against the token) */
    bool json_body;           /* a JSON body is kept (limit server.max_json_bytes) */

    srv_work *work;      /* colorize job in flight (route_colorize.c), refcounted */
} srv_req;

/* ---- responses (http.c) ----
 * Every helper adds X-Request-Id, records the status and body size in `req` and queues the
 * response; the return value is what the access handler should return. */
enum MHD_Result srv_send(struct MHD_Connection *c, srv_req *req, int http, const char *content_type, void *data,
                         size_t len, bool take, const char *const *headers);
/* {"error":{"code","message","request_id"}}; retry_after > 0 adds Retry-After; allow adds
 * Allow. Also counts the rejection reason this code maps to. */
enum MHD_Result srv_send_error(struct MHD_Connection *c, srv_req *req, int http, const char *code,
                               const char *message, int retry_after, const char *allow);
/* Answers for a cz_status (its cz_status_http / cz_status_code) with `detail` as message. */
enum MHD_Result srv_send_status(struct MHD_Connection *c, srv_req *req, cz_status s, const char *detail);
/* Small JSON object body (from jansson text; takes ownership of `text`). */
enum MHD_Result srv_send_json(struct MHD_Connection *c, srv_req *req, int http, char *text);

/* ---- json.c ---- */
/* Error body text (malloc'd) built with jansson; NULL when out of memory. */
char *srv_json_error(const char *code, const char *message, const char *request_id);

/* ---- routes ---- */
/* Called when the whole request has arrived (and again after a resume). */
enum MHD_Result srv_route_colorize(srv_ctx *s, struct MHD_Connection *c, srv_req *req);
/* Releases the connection's share of an in-flight job (request completed or aborted). */
void srv_colorize_release(srv_req *req);
enum MHD_Result srv_route_healthz(srv_ctx *s, struct MHD_Connection *c, srv_req *req);
enum MHD_Result srv_route_readyz(srv_ctx *s, struct MHD_Connection *c, srv_req *req);
enum MHD_Result srv_route_metrics(srv_ctx *s, struct MHD_Connection *c, srv_req *req);
enum MHD_Result srv_route_model(srv_ctx *s, struct MHD_Connection *c, srv_req *req);
enum MHD_Result srv_route_openapi(srv_ctx *s, struct MHD_Connection *c, srv_req *req);

/* route_train.c: every /train path. srv_train_match tells whether `url` is one and which
 * methods it allows (the Allow header value). */
bool srv_train_match(const char *url, const char **allow);
enum MHD_Result srv_route_train(srv_ctx *s, struct MHD_Connection *c, srv_req *req);
/* Constant-time comparison (time depends only on the supplied length b_len). */
bool srv_token_equal(const char *a, size_t a_len, const char *b, size_t b_len);
/* Answers for a cz_api_error from core/jobs.c. */
enum MHD_Result srv_send_api_error(struct MHD_Connection *c, srv_req *req, const cz_api_error *e);

/* route_model.c: loading and swapping models.
 * srv_model_swap loads `path` on the device thread (between batches), checks it has the
 * serving model's depth, channels and colour mode, swaps it in, re-warms, and updates the
 * /model snapshot with the origin given (job NULL: the configured file). On failure the old
 * model keeps serving; err gets the HTTP status/code/message. Not on the device thread. */
cz_status srv_model_swap(srv_ctx *s, const char *path, const char *job, long step, cz_api_error *err);
/* The model to load at start: the activated checkpoint recorded in the state dir when there
 * is one that still exists (origin fields set), else the configured model.path. */
const char *srv_model_initial_path(srv_ctx *s);
/* POST /model */
enum MHD_Result srv_route_model_post(srv_ctx *s, struct MHD_Connection *c, srv_req *req);

/* Rebuilds the /model snapshot from `cz` (any thread; takes model_mu). */
cz_status srv_model_snapshot(srv_ctx *s, const cz_colorizer *cz);
/* NULL when ready, else the reason (writes into buf). */
const char *srv_not_ready(srv_ctx *s, char *buf, int cap);

/* ---- http.c ---- */
cz_status srv_http_start(srv_ctx *s);
void srv_http_stop(srv_ctx *s);

/* ---- openapi_embed.c (generated at build time) ---- */
extern const unsigned char srv_openapi_yaml[];
extern const unsigned long srv_openapi_yaml_len;

#endif
