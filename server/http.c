/* http.c: the libmicrohttpd daemon: listening socket, limits, per-request state, routing,
 * body intake, response helpers and the access log.
 *
 * Daemon: internal polling threads (a pool of server.http_threads), suspend/resume enabled,
 * connection limits, per-IP limit and idle timeout from the config, MHD's own error messages
 * routed into our JSON log. The pool polls with poll(), not epoll: with MHD 0.9.75's
 * edge-triggered epoll, a client that disconnected in the middle of a large upload was not
 * noticed and its socket sat in CLOSE-WAIT until the idle timeout (seen with aborted chunked
 * uploads); poll() is level-triggered and sees the hang-up at once. At our connection counts
 * (hundreds) the difference in cost is negligible.
 *
 * Request lifetime: the first access-handler call creates a srv_req (request id, start time,
 * route decision) and stores it in *con_cls; MHD's request-completed callback (on_completed)
 * writes the access log line, records metrics and frees it, whether the response was sent,
 * the client went away or the connection timed out. An in-flight inference job is released
 * there too (srv_colorize_release: refcounted, see route_colorize.c).
 *
 * Routing: exact paths from k_table, plus /train and everything under it (route_train.c says
 * which sub-paths and methods exist). Checks in order: path (404), method (405 + Allow), then
 * for admin operations (every /train operation, POST /model) the bearer token (403 when the
 * admin API is off, 401 otherwise), all from the headers, before any body byte is read.
 *
 * Body intake: POST /colorize keeps its body, in a buffer grown geometrically up to
 * server.max_body_bytes; the JSON POSTs of the admin API keep theirs up to
 * server.max_json_bytes (the same rules below apply with that limit). A Content-Length above
 * the limit is refused with 413 before any body byte is read. When the client sent no
 * "Expect: 100-continue" and the declared body ends within SRV_DRAIN_EXTRA past the limit, the
 * answer is written to the socket (as below for streamed bodies) and the body is read and
 * dropped before the connection closes: closing on an unread body resets the connection, which
 * can destroy the answer before the client reads it. Otherwise MHD sends the answer, stops
 * reading and closes (a client that asked for 100-continue has sent no body). A body
 * without a length that grows past the limit is no longer stored: we try to answer 413 at
 * once, but libmicrohttpd 0.9.75 refuses a response in the middle of an upload, so in
 * practice we drop the rest (up to SRV_DRAIN_EXTRA = 16 MiB more, never stored) and answer
 * 413 when it ends; a client that keeps sending beyond that is disconnected without an
 * answer. Other routes drop any body they get (same cap).
 * Because libmicrohttpd 0.9.75 will not queue a response in the middle of an upload, a body
 * that passes the limit while streaming is answered by writing a small, complete 413 response
 * (Connection: close) straight to the socket, then half-closing it; the rest of the body is
 * read and dropped (within the cap above) until the client stops, and the connection is then
 * closed. That answers endless chunked uploads while they stream, and reading on after the
 * answer avoids the TCP reset that would otherwise destroy it in flight.
 *
 * Slow clients (server.connection_timeout_s = T): MHD's own timeout cuts connections idle for
 * T. A client trickling bytes is never idle, so two more rules: the request headers must be
 * complete within T of the connection opening (or of the previous response on a keep-alive
 * connection), enforced by a watchdog thread that shuts down late sockets (MHD then closes
 * them itself); and a body must arrive at server.min_body_rate bytes/s on average after a grace
 * of T, checked as bytes arrive (a body read and dropped after an early 413 as well).
 * Suspended connections (waiting on inference) are exempt:
 * the request deadline covers them. The watchdog and MHD agree on socket lifetime through
 * MHD's connection notifications: a socket leaves the watch list (under its mutex) before MHD
 * closes it, so the watchdog never touches a descriptor that may have been reused.
 *
 * Threading: everything here runs on MHD's threads, one connection per thread at a time.
 * Tested by the integration tests (tests/integration/) and by hand with curl. */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "body.h"
#include "log.h"
#include "server.h"

#define SRV_DRAIN_EXTRA ((uint64_t)16 << 20)

/* ---- slow-client watchdog ---- */

typedef struct conn_track {
    struct conn_track *prev, *next;
    int fd;
    bool busy;        /* headers received, request in progress */
    int64_t since_ns; /* when the connection started waiting for request headers */
} conn_track;

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    conn_track *head;
    bool stop, running;
    int64_t timeout_ns;
    pthread_t thread;
} g_watch = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, false, false, 0, 0};

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode code) {
    (void)cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        conn_track *t = calloc(1, sizeof *t);
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (!t || !ci) {
            free(t);
            return; /* not watched: MHD's idle timeout still applies */
        }
        t->fd = ci->connect_fd;
        t->since_ns = cz_now_ns();
        pthread_mutex_lock(&g_watch.mu);
        t->next = g_watch.head;
        if (g_watch.head) g_watch.head->prev = t;
        g_watch.head = t;
        pthread_mutex_unlock(&g_watch.mu);
        *socket_context = t;
    } else if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
        conn_track *t = *socket_context;
        if (!t) return;
        pthread_mutex_lock(&g_watch.mu);
        if (t->prev) t->prev->next = t->next;
        else g_watch.head = t->next;
        if (t->next) t->next->prev = t->prev;
        pthread_mutex_unlock(&g_watch.mu);
        free(t);
        *socket_context = NULL;
    }
}

/* Marks the connection's request as started (busy) or finished (waiting for the next). */
static void conn_mark(struct MHD_Connection *c, bool busy) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    conn_track *t = ci ? ci->socket_context : NULL;
    if (!t) return;
    pthread_mutex_lock(&g_watch.mu);
    t->busy = busy;
    t->since_ns = cz_now_ns();
    pthread_mutex_unlock(&g_watch.mu);
}

static void *watchdog_main(void *arg) {
    (void)arg;
    pthread_mutex_lock(&g_watch.mu);
    while (!g_watch.stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 250 * 1000 * 1000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&g_watch.cv, &g_watch.mu, &ts);
        int64_t now = cz_now_ns();
        for (conn_track *t = g_watch.head; t; t = t->next) {
            if (t->busy || now - t->since_ns <= g_watch.timeout_ns) continue;
            /* Still registered, so MHD has not closed the descriptor: safe to shut it down.
             * MHD sees the socket fail and closes the connection itself. */
            shutdown(t->fd, SHUT_RDWR);
            t->since_ns = now; /* once per timeout period at most */
            CZ_LOGD("http", "cut a connection that sent no complete request headers in time");
        }
    }
    pthread_mutex_unlock(&g_watch.mu);
    return NULL;
}

typedef enum MHD_Result (*route_fn)(srv_ctx *s, struct MHD_Connection *c, srv_req *req);

/* Exact paths; /train and everything under it is routed by srv_train_match (route_train.c). */
static const struct route_row {
    const char *path;
    srv_route route;
    const char *methods;       /* Allow header value; GET routes also answer HEAD */
    const char *admin_methods; /* methods that need the admin token ("" = none) */
    route_fn fn;
} k_table[] = {
    {"/colorize", SRV_ROUTE_COLORIZE, "POST", "", srv_route_colorize},
    {"/healthz", SRV_ROUTE_HEALTHZ, "GET", "", srv_route_healthz},
    {"/readyz", SRV_ROUTE_READYZ, "GET", "", srv_route_readyz},
    {"/metrics", SRV_ROUTE_METRICS, "GET", "", srv_route_metrics},
    {"/model", SRV_ROUTE_MODEL, "GET, POST", "POST", srv_route_model},
    {"/openapi.yaml", SRV_ROUTE_OPENAPI, "GET", "", srv_route_openapi},
};
#define N_ROUTES (sizeof k_table / sizeof k_table[0])

/* Whether `method` is in the comma-separated list (HEAD counts as GET). */
static bool method_in(const char *method, const char *list) {
    const char *m = strcmp(method, "HEAD") == 0 ? "GET" : method;
    size_t n = strlen(m);
    for (const char *p = list; (p = strstr(p, m)) != NULL; p += n)
        if ((p == list || p[-1] == ' ' || p[-1] == ',') && (p[n] == '\0' || p[n] == ','))
            return true;
    return false;
}

/* ---- helpers ---- */

static void new_request_id(char out[33]) {
    unsigned char raw[16];
    ssize_t got = getrandom(raw, sizeof raw, GRND_NONBLOCK);
    if (got != (ssize_t)sizeof raw) { /* entropy pool not ready: time and a counter will do */
        static atomic_uint_fast64_t counter;
        uint64_t a = (uint64_t)cz_now_ns(), b = atomic_fetch_add(&counter, 1) * 0x9e3779b97f4a7c15ull;
        memcpy(raw, &a, 8);
        memcpy(raw + 8, &b, 8);
    }
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 16; i++) {
        out[2 * i] = hex[raw[i] >> 4];
        out[2 * i + 1] = hex[raw[i] & 15];
    }
    out[32] = '\0';
}

static void remote_of(struct MHD_Connection *c, char *out, size_t cap) {
    out[0] = '\0';
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (!ci || !ci->client_addr) return;
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, out, (socklen_t)cap);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, out, (socklen_t)cap);
}

/* Copies a client-supplied string for logging, replacing bytes that are not printable ASCII. */
static void copy_printable(char *out, size_t cap, const char *s) {
    size_t n = 0;
    for (; s && *s && n + 1 < cap; s++) out[n++] = (*s >= 0x20 && *s < 0x7f) ? *s : '?';
    out[n] = '\0';
}

/* ---- responses ---- */

enum MHD_Result srv_send(struct MHD_Connection *c, srv_req *req, int http, const char *content_type, void *data,
                         size_t len, bool take, const char *const *headers) {
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, data, take ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (!r) {
        if (take) free(data);
        CZ_LOGE("http", "cannot create a response (out of memory)");
        return MHD_NO;
    }
    MHD_add_response_header(r, "X-Request-Id", req->id);
    if (content_type) MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    for (int i = 0; headers && headers[i] && headers[i + 1]; i += 2) MHD_add_response_header(r, headers[i], headers[i + 1]);
    enum MHD_Result q = MHD_queue_response(c, (unsigned)http, r);
    MHD_destroy_response(r);
    if (q == MHD_YES) {
        req->status = http;
        req->bytes_out = len;
    }
    return q;
}

enum MHD_Result srv_send_json(struct MHD_Connection *c, srv_req *req, int http, char *text) {
    if (!text) return MHD_NO;
    return srv_send(c, req, http, "application/json", text, strlen(text), true, NULL);
}

static int reject_reason(const char *code) {
    static const struct {
        const char *code;
        srv_reject why;
    } map[] = {
        {"queue_full", SRV_REJ_QUEUE_FULL},           {"payload_too_large", SRV_REJ_TOO_LARGE},
        {"too_many_pixels", SRV_REJ_TOO_MANY_PIXELS}, {"unsupported_media_type", SRV_REJ_UNSUPPORTED},
        {"corrupt_image", SRV_REJ_CORRUPT},           {"truncated_image", SRV_REJ_CORRUPT},
        {"empty_image", SRV_REJ_CORRUPT},             {"missing_image", SRV_REJ_BAD_REQUEST},
        {"bad_multipart", SRV_REJ_BAD_REQUEST},       {"invalid_parameter", SRV_REJ_BAD_REQUEST},
        {"deadline_exceeded", SRV_REJ_DEADLINE},      {"shutting_down", SRV_REJ_SHUTTING_DOWN},
    };
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (strcmp(map[i].code, code) == 0) return (int)map[i].why;
    return -1;
}

enum MHD_Result srv_send_error(struct MHD_Connection *c, srv_req *req, int http, const char *code,
                               const char *message, int retry_after, const char *allow) {
    char *text = srv_json_error(code, message, req->id);
    if (!text) return MHD_NO;
    const char *hdr[8] = {NULL};
    int k = 0;
    char ra[16];
    if (retry_after > 0) {
        snprintf(ra, sizeof ra, "%d", retry_after);
        hdr[k++] = MHD_HTTP_HEADER_RETRY_AFTER;
        hdr[k++] = ra;
    }
    if (allow) {
        hdr[k++] = MHD_HTTP_HEADER_ALLOW;
        hdr[k++] = allow;
    }
    if (http == 401) {
        hdr[k++] = MHD_HTTP_HEADER_WWW_AUTHENTICATE;
        hdr[k++] = "Bearer realm=\"colorize-admin\"";
    }
    enum MHD_Result q = srv_send(c, req, http, "application/json", text, strlen(text), true, hdr);
    if (q == MHD_YES) {
        int why = reject_reason(code);
        if (why >= 0) srv_metrics_reject((srv_reject)why);
        if (http >= 500 && http != 503 && http != 504)
            CZ_LOGW("http", "%d %s: %s", http, code, message);
        else
            CZ_LOGD("http", "%d %s: %s", http, code, message);
    }
    return q;
}

enum MHD_Result srv_send_status(struct MHD_Connection *c, srv_req *req, cz_status s, const char *detail) {
    int http = cz_status_http(s), retry = 0;
    const char *code = cz_status_code(s);
    switch (s) {
    case CZ_ERR_TOO_LARGE:
    case CZ_ERR_UNSUPPORTED_FORMAT:
    case CZ_ERR_CORRUPT_IMAGE:
    case CZ_ERR_TRUNCATED_IMAGE:
    case CZ_ERR_TOO_MANY_PIXELS:
    case CZ_ERR_EMPTY_IMAGE:
    case CZ_ERR_DEADLINE:
        break;
    case CZ_ERR_QUEUE_FULL:
    case CZ_ERR_NOMEM:       /* 503 out_of_memory: a single image did not fit the device */
    case CZ_ERR_UNAVAILABLE: /* 503 unavailable: the device is lost; the daemon is restarting */
        retry = 1;
        break;
    case CZ_ERR_SHUTTING_DOWN:
        retry = 5;
        break;
    default: /* anything the contract does not name is a server-side failure */
        http = 500;
        code = "internal_error";
        break;
    }
    return srv_send_error(c, req, http, code, detail && *detail ? detail : cz_strerror(s), retry, NULL);
}

/* ---- access log ---- */

static void access_log(const srv_req *req, double ms_total, enum MHD_RequestTerminationCode toe) {
    if (cz_log_get_level() > CZ_LOG_INFO) return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char when[48], stamp[64];
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(stamp, sizeof stamp, "%s.%03ldZ", when, ts.tv_nsec / 1000000);

    json_t *o = json_object();
    if (!o) return;
    json_object_set_new(o, "ts", json_string(stamp));
    json_object_set_new(o, "level", json_string("info"));
    json_object_set_new(o, "module", json_string("access"));
    json_object_set_new(o, "msg", json_string("request"));
    json_object_set_new(o, "request_id", json_string(req->id));
    json_object_set_new(o, "method", json_string(req->method));
    json_object_set_new(o, "path", json_string(req->path));
    json_object_set_new(o, "status", json_integer(req->status));
    json_object_set_new(o, "bytes_in", json_integer((json_int_t)req->bytes_in));
    json_object_set_new(o, "bytes_out", json_integer((json_int_t)req->bytes_out));
    json_object_set_new(o, "ms_total", json_real(ms_total));
    json_object_set_new(o, "ms_decode", json_real(req->ms_decode));
    json_object_set_new(o, "ms_queue", json_real(req->ms_queue));
    json_object_set_new(o, "ms_infer", json_real(req->ms_infer));
    json_object_set_new(o, "ms_encode", json_real(req->ms_encode));
    json_object_set_new(o, "remote", json_string(req->remote));
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK) {
        const char *why = toe == MHD_REQUEST_TERMINATED_TIMEOUT_REACHED       ? "timeout"
                          : toe == MHD_REQUEST_TERMINATED_CLIENT_ABORT        ? "client_abort"
                          : toe == MHD_REQUEST_TERMINATED_DAEMON_SHUTDOWN     ? "daemon_shutdown"
                          : toe == MHD_REQUEST_TERMINATED_READ_ERROR          ? "read_error"
                          : toe == MHD_REQUEST_TERMINATED_WITH_ERROR          ? "error"
                                                                              : "other";
        json_object_set_new(o, "terminated", json_string(why));
    }
    char *line = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(6));
    json_decref(o);
    if (!line) return;
    size_t n = strlen(line);
    char *buf = realloc(line, n + 2);
    if (buf) {
        buf[n] = '\n';
        ssize_t w = write(2, buf, n + 1);
        (void)w;
        free(buf);
    } else {
        free(line);
    }
}

/* ---- MHD callbacks ---- */

static void mhd_logger(void *cls, const char *fm, va_list ap) {
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fm, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r')) msg[--n] = '\0';
    /* A client hanging up mid-request is the client's business (every client that stops
     * sending once it has read an early 413 does it): info, not a warning. */
    if (strstr(msg, "detected connection closure"))
        CZ_LOGI("mhd", "%s", msg);
    else
        CZ_LOGW("mhd", "%s", msg);
}

static srv_req *req_new(struct MHD_Connection *c, const char *url, const char *method) {
    srv_req *req = calloc(1, sizeof *req);
    if (!req) return NULL;
    req->t_start_ns = cz_now_ns();
    const char *cid = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Request-Id");
    if (srv_request_id_valid(cid))
        snprintf(req->id, sizeof req->id, "%s", cid);
    else
        new_request_id(req->id);
    copy_printable(req->method, sizeof req->method, method);
    copy_printable(req->path, sizeof req->path, url);
    remote_of(c, req->remote, sizeof req->remote);
    return req;
}

/* Picks the route and decides 404/405 right away; sets req->admin for admin operations. */
static void route_request(srv_req *req, const char *url, const char *method) {
    req->route = SRV_ROUTE_OTHER;
    const char *allow = NULL, *admin = "";
    for (size_t i = 0; i < N_ROUTES && !allow; i++) {
        if (strcmp(url, k_table[i].path) != 0) continue;
        req->route = k_table[i].route;
        allow = k_table[i].methods;
        admin = k_table[i].admin_methods;
    }
    if (!allow && srv_train_match(url, &allow)) {
        req->route = SRV_ROUTE_TRAIN;
        admin = allow; /* every /train operation is an admin operation */
    }
    if (!allow) {
        req->early_http = 404;
        req->early_code = "not_found";
        return;
    }
    if (!method_in(method, allow)) {
        req->early_http = 405;
        req->early_code = "method_not_allowed";
        req->early_allow = allow;
        return;
    }
    req->admin = method_in(method, admin);
    req->json_body = strcmp(method, "POST") == 0 && req->route != SRV_ROUTE_COLORIZE;
}

static route_fn handler_of(srv_route r) {
    if (r == SRV_ROUTE_TRAIN) return srv_route_train;
    for (size_t i = 0; i < N_ROUTES; i++)
        if (k_table[i].route == r) return k_table[i].fn;
    return NULL;
}

/* Admin operations: 403 when no token is configured, 401 without the right bearer token.
 * Decided from the headers, before any body is read. */
static void check_admin(const srv_ctx *s, struct MHD_Connection *c, srv_req *req) {
    if (!s->admin_token_len) {
        req->early_http = 403;
        req->early_code = "admin_disabled";
        return;
    }
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncasecmp(h, "Bearer ", 7) != 0) {
        req->early_http = 401;
        req->early_code = "unauthorized";
        req->early_detail = "this operation needs Authorization: Bearer <admin token>";
        return;
    }
    const char *tok = h + 7;
    while (*tok == ' ') tok++;
    if (!srv_token_equal(s->admin_token, s->admin_token_len, tok, strlen(tok))) {
        req->early_http = 401;
        req->early_code = "unauthorized";
        req->early_detail = "the bearer token is not the admin token";
    }
}

/* The body limit of this request and the config key that sets it. */
static uint64_t body_limit(const srv_ctx *s, const srv_req *req, const char **key) {
    if (req->json_body) {
        *key = "server.max_json_bytes";
        return (uint64_t)s->cfg.max_json_bytes;
    }
    *key = "server.max_body_bytes";
    return (uint64_t)s->cfg.max_body_bytes;
}

static enum MHD_Result send_413(struct MHD_Connection *c, srv_req *req, const srv_ctx *s) {
    char msg[128];
    const char *key;
    uint64_t lim = body_limit(s, req, &key);
    snprintf(msg, sizeof msg, "request body exceeds %s (%" PRIu64 " bytes)", key, lim);
    return srv_send_error(c, req, 413, "payload_too_large", msg, 0, NULL);
}

/* Writes a complete 413 answer straight to the socket (MHD will not queue one in the middle of
 * an upload) and half-closes it. Returns true when the whole answer went out. */
static bool send_raw_413(struct MHD_Connection *c, srv_req *req, const srv_ctx *s) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) return false;
    char msg[128];
    const char *key;
    uint64_t lim = body_limit(s, req, &key);
    snprintf(msg, sizeof msg, "request body exceeds %s (%" PRIu64 " bytes)", key, lim);
    char *body = srv_json_error("payload_too_large", msg, req->id);
    if (!body) return false;
    size_t blen = strlen(body);
    char head[512];
    int hn = snprintf(head, sizeof head,
                      "HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\nContent-Type: application/json\r\n"
                      "Content-Length: %zu\r\nX-Request-Id: %s\r\n\r\n",
                      blen, req->id);
    char *all = malloc((size_t)hn + blen);
    bool ok = false;
    if (all) {
        memcpy(all, head, (size_t)hn);
        memcpy(all + hn, body, blen);
        size_t len = (size_t)hn + blen, off = 0;
        int64_t give_up = cz_now_ns() + 100000000; /* the socket buffer is empty: this is instant */
        while (off < len && cz_now_ns() < give_up) {
            ssize_t w = send(ci->connect_fd, all + off, len - off, MSG_NOSIGNAL);
            if (w > 0) off += (size_t)w;
            else if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) break;
        }
        ok = off == len;
        free(all);
    }
    free(body);
    if (!ok) return false;
    shutdown(ci->connect_fd, SHUT_WR);
    req->status = 413;
    req->bytes_out = blen;
    req->raw_answered = true;
    srv_metrics_reject(SRV_REJ_TOO_LARGE);
    return true;
}

/* First call for a request: state, route, early refusals. */
static enum MHD_Result on_first_call(srv_ctx *s, struct MHD_Connection *c, const char *url, const char *method,
                                     void **con_cls) {
    srv_req *req = req_new(c, url, method);
    if (!req) return MHD_NO;
    *con_cls = req;
    atomic_fetch_add(&s->inflight, 1);
    conn_mark(c, true);
    route_request(req, url, method);
    if (!req->early_http && req->admin) check_admin(s, c, req);
    if (req->early_http || !(req->route == SRV_ROUTE_COLORIZE || req->json_body)) return MHD_YES;
    req->keep_body = true;
    const char *limit_key;
    const uint64_t limit = body_limit(s, req, &limit_key);
    const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl) {
        char *end = NULL;
        errno = 0;
        unsigned long long n = strtoull(cl, &end, 10);
        const bool huge = errno == ERANGE;
        bool over = huge || (end && *end == '\0' && n > limit);
        if (over) {
            /* A client that did not ask for 100-continue is sending its body right now. If MHD
             * answered and closed, the unread body would make the kernel reset the connection,
             * and the reset can destroy the 413 before the client reads it (curl then says
             * "send failure", error 55). So when the rest is within the drain cap, answer on the
             * socket, half-close, and read the body to its end before closing. A client that
             * asked for 100-continue gets MHD's answer instead, and sends no body at all. */
            const char *expect = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_EXPECT);
            const bool drain = !huge && !expect && n - limit <= SRV_DRAIN_EXTRA;
            cz_log_set_request_id(req->id);
            enum MHD_Result q = drain && send_raw_413(c, req, s) ? MHD_YES : send_413(c, req, s);
            cz_log_set_request_id(NULL);
            return q;
        }
        /* Pre-size the buffer from the declared length, but only up to 1 MiB: a client that
         * declares a large body and sends nothing must not pin memory. */
        if (end && *end == '\0' && n > 0) {
            size_t cap = n < (1u << 20) ? (size_t)n : (size_t)1 << 20;
            req->body = malloc(cap);
            if (req->body) req->body_cap = cap;
        }
    }
    return MHD_YES;
}

static bool body_append(srv_req *req, const char *data, size_t n) {
    if (req->body_len + n > req->body_cap) {
        size_t cap = req->body_cap ? req->body_cap : 64 * 1024;
        while (cap < req->body_len + n) cap *= 2;
        uint8_t *nb = realloc(req->body, cap);
        if (!nb) return false;
        req->body = nb;
        req->body_cap = cap;
    }
    memcpy(req->body + req->body_len, data, n);
    req->body_len += n;
    return true;
}

/* A chunk of body: stored, or counted and dropped. */
static enum MHD_Result on_upload(srv_ctx *s, struct MHD_Connection *c, srv_req *req, const char *data, size_t n) {
    req->bytes_in += n;
    const char *key;
    const uint64_t max = body_limit(s, req, &key);
    if (req->bytes_in > max + SRV_DRAIN_EXTRA) {
        CZ_LOGW("http", "closing the connection: client kept sending %" PRIu64 " body bytes", req->bytes_in);
        return MHD_NO;
    }
    /* Slow bodies: after a grace of connection_timeout_s, at least server.min_body_rate on average.
     * A body drained after an early 413 too: its client has had the grace to read the answer, and
     * must not hold the connection by trickling the rest. */
    double elapsed = (double)(cz_now_ns() - req->t_start_ns) * 1e-9;
    if (elapsed > s->cfg.connection_timeout_s + (double)req->bytes_in / s->cfg.min_body_rate) {
        CZ_LOGI("http", "closing a slow upload: %" PRIu64 " bytes in %.1f s", req->bytes_in, elapsed);
        return MHD_NO;
    }
    if (req->status) return MHD_YES; /* answered already: drop */
    if (req->keep_body && !req->too_large) {
        if (req->body_len + n <= max) {
            if (!body_append(req, data, n)) {
                CZ_LOGE("http", "out of memory buffering a %zu byte body", req->body_len + n);
                return MHD_NO;
            }
            return MHD_YES;
        }
        req->too_large = true;
        free(req->body);
        req->body = NULL;
        req->body_len = req->body_cap = 0;
        if (send_413(c, req, s) != MHD_YES && !send_raw_413(c, req, s))
            CZ_LOGD("http", "body passed the limit; 413 deferred to the end of the upload");
    }
    return MHD_YES;
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                 const char *version, const char *upload_data, size_t *upload_data_size,
                                 void **con_cls) {
    (void)version;
    srv_ctx *s = cls;
    srv_req *req = *con_cls;
    if (!req) return on_first_call(s, c, url, method, con_cls);

    cz_log_set_request_id(req->id);
    enum MHD_Result ret = MHD_YES;
    if (*upload_data_size) {
        ret = on_upload(s, c, req, upload_data, *upload_data_size);
        *upload_data_size = 0;
    } else if (req->raw_answered) {
        ret = MHD_NO; /* answered on the socket directly: MHD has no response to send; close */
    } else if (req->status) {
        ret = MHD_YES; /* a response is queued already */
    } else if (req->early_http) {
        char msg[256];
        if (req->early_http == 404)
            snprintf(msg, sizeof msg, "no such path: %s", req->path);
        else if (req->early_http == 403)
            snprintf(msg, sizeof msg, "the admin API is disabled: set admin.token or admin.token_file");
        else if (req->early_http == 401)
            snprintf(msg, sizeof msg, "%s", req->early_detail);
        else
            snprintf(msg, sizeof msg, "%s is not allowed on %s (allowed: %s)", req->method, req->path,
                     req->early_allow);
        ret = srv_send_error(c, req, req->early_http, req->early_code, msg, 0, req->early_allow);
    } else if (req->too_large) {
        ret = send_413(c, req, s);
    } else {
        route_fn fn = handler_of(req->route);
        ret = fn ? fn(s, c, req) : MHD_NO;
    }
    cz_log_set_request_id(NULL);
    return ret;
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
    srv_ctx *s = cls;
    srv_req *req = *con_cls;
    if (!req) return;
    *con_cls = NULL;
    conn_mark(c, false);
    double secs = (double)(cz_now_ns() - req->t_start_ns) * 1e-9;
    if (req->status) srv_metrics_request(req->route, req->status, secs, req->bytes_in, req->bytes_out);
    access_log(req, secs * 1e3, toe);
    srv_colorize_release(req);
    free(req->body);
    free(req);
    atomic_fetch_sub(&s->inflight, 1);
}

/* ---- start / stop ---- */

/* Parses "ADDR:PORT" or "[V6ADDR]:PORT" into a socket address. */
static cz_status parse_listen(const char *spec, struct sockaddr_storage *ss, socklen_t *sl, int *port) {
    char host[128];
    const char *colon;
    if (spec[0] == '[') {
        const char *rb = strchr(spec, ']');
        if (!rb || rb[1] != ':' || (size_t)(rb - spec - 1) >= sizeof host)
            return cz_error_set(CZ_ERR_CONFIG, "server.listen = '%s': expected ADDR:PORT or [IPv6]:PORT", spec);
        memcpy(host, spec + 1, (size_t)(rb - spec - 1));
        host[rb - spec - 1] = '\0';
        colon = rb + 1;
    } else {
        colon = strrchr(spec, ':');
        if (!colon || (size_t)(colon - spec) >= sizeof host)
            return cz_error_set(CZ_ERR_CONFIG, "server.listen = '%s': expected ADDR:PORT", spec);
        memcpy(host, spec, (size_t)(colon - spec));
        host[colon - spec] = '\0';
    }
    char *end = NULL;
    long p = strtol(colon + 1, &end, 10);
    if (!colon[1] || *end || p < 0 || p > 65535)
        return cz_error_set(CZ_ERR_CONFIG, "server.listen = '%s': port must be 0..65535", spec);
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    int rc = getaddrinfo(host[0] && strcmp(host, "*") != 0 ? host : NULL, colon + 1, &hints, &res);
    if (rc != 0 || !res)
        return cz_error_set(CZ_ERR_CONFIG, "server.listen = '%s': %s", spec, gai_strerror(rc));
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *sl = res->ai_addrlen;
    freeaddrinfo(res);
    *port = (int)p;
    return CZ_OK;
}

cz_status srv_http_start(srv_ctx *s) {
    struct sockaddr_storage ss;
    socklen_t sl = 0;
    int port = 0;
    CZ_TRY(parse_listen(s->cfg.listen, &ss, &sl, &port));
    (void)sl;
    unsigned int flags = MHD_USE_POLL | MHD_USE_INTERNAL_POLLING_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (ss.ss_family == AF_INET6) flags |= MHD_USE_IPv6;
    s->daemon = MHD_start_daemon(
        flags, (uint16_t)port, NULL, NULL, on_access, s, MHD_OPTION_EXTERNAL_LOGGER, mhd_logger, s, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned int)cz_config_http_threads(&s->cfg), MHD_OPTION_CONNECTION_LIMIT,
        (unsigned int)s->cfg.max_connections, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
        (unsigned int)s->cfg.max_connections_per_ip, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned int)s->cfg.connection_timeout_s, MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)s->cfg.connection_memory,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_NOTIFY_CONNECTION, on_connection, s,
        MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned int)128, MHD_OPTION_END);
    if (!s->daemon) return cz_error_set(CZ_ERR_IO, "cannot listen on %s (libmicrohttpd failed to start)", s->cfg.listen);
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? (int)di->port : port;
    g_watch.timeout_ns = (int64_t)s->cfg.connection_timeout_s * 1000000000;
    g_watch.stop = false;
    if (pthread_create(&g_watch.thread, NULL, watchdog_main, NULL) == 0)
        g_watch.running = true;
    else
        CZ_LOGW("http", "cannot start the slow-client watchdog; only the idle timeout applies");
    return CZ_OK;
}

void srv_http_stop(srv_ctx *s) {
    if (!s->daemon) return;
    MHD_stop_daemon(s->daemon);
    s->daemon = NULL;
    if (g_watch.running) {
        pthread_mutex_lock(&g_watch.mu);
        g_watch.stop = true;
        pthread_cond_signal(&g_watch.cv);
        pthread_mutex_unlock(&g_watch.mu);
        pthread_join(g_watch.thread, NULL);
        g_watch.running = false;
    }
}
