/* metrics.c: counters, fixed-bucket histograms and the Prometheus text exposition (format
 * 0.0.4) for the daemon. See metrics.h for the list of metrics.
 *
 * Storage is static and made of atomics (relaxed ordering: each number is independent and a
 * scrape is a snapshot, not a transaction), so recording never blocks and needs no init.
 * Histograms keep per-bucket counts and are made cumulative while rendering; sums are kept
 * in integer nanoseconds to stay atomic. The only lock guards the batch de-duplication in
 * srv_metrics_batch (one observation per forward pass).
 * Tested by the integration tests and by hand (curl /metrics). */
#include "metrics.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CODE_MIN 100
#define CODE_MAX 599

static const char *const k_routes[SRV_ROUTE_COUNT] = {"colorize", "healthz", "readyz", "metrics",
                                                      "model",    "openapi", "train",   "other"};
static const char *const k_reasons[SRV_REJ_COUNT] = {"queue_full", "too_large", "too_many_pixels", "unsupported",
                                                     "corrupt",    "bad_request", "deadline", "shutting_down"};

const char *srv_route_name(srv_route r) { return (r >= 0 && r < SRV_ROUTE_COUNT) ? k_routes[r] : "other"; }

/* ---- histograms ---- */

#define HIST_MAX_BUCKETS 16

typedef struct hist {
    atomic_uint_fast64_t bucket[HIST_MAX_BUCKETS + 1]; /* last: above every bound */
    atomic_uint_fast64_t count;
    atomic_uint_fast64_t sum_ns; /* for seconds histograms; plain units for batch size */
} hist;

static const double k_dur_bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
static const double k_inf_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
static const double k_batch_bounds[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024};
#define NB(a) ((int)(sizeof(a) / sizeof((a)[0])))

static void hist_observe(hist *h, const double *bounds, int nb, double v, uint64_t sum_units) {
    int i = 0;
    while (i < nb && v > bounds[i]) i++;
    atomic_fetch_add_explicit(&h->bucket[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_ns, sum_units, memory_order_relaxed);
}

/* ---- state ---- */

static atomic_uint_fast64_t g_requests[SRV_ROUTE_COUNT][CODE_MAX - CODE_MIN + 1];
static hist g_duration[SRV_ROUTE_COUNT];
static atomic_uint_fast64_t g_bytes_in, g_bytes_out;
static atomic_uint_fast64_t g_rejections[SRV_REJ_COUNT];
static atomic_uint_fast64_t g_finished[2]; /* host, device */
static hist g_batch, g_infer;
static pthread_mutex_t g_batch_mu = PTHREAD_MUTEX_INITIALIZER;
static int64_t g_last_batch_start;

void srv_metrics_request(srv_route r, int code, double seconds, uint64_t bytes_in, uint64_t bytes_out) {
    if (r < 0 || r >= SRV_ROUTE_COUNT) r = SRV_ROUTE_OTHER;
    if (code >= CODE_MIN && code <= CODE_MAX)
        atomic_fetch_add_explicit(&g_requests[r][code - CODE_MIN], 1, memory_order_relaxed);
    if (seconds < 0) seconds = 0;
    hist_observe(&g_duration[r], k_dur_bounds, NB(k_dur_bounds), seconds, (uint64_t)(seconds * 1e9));
    atomic_fetch_add_explicit(&g_bytes_in, bytes_in, memory_order_relaxed);
    atomic_fetch_add_explicit(&g_bytes_out, bytes_out, memory_order_relaxed);
}

void srv_metrics_finished(int on_device) {
    atomic_fetch_add_explicit(&g_finished[on_device ? 1 : 0], 1, memory_order_relaxed);
}

void srv_metrics_reject(srv_reject why) {
    if (why >= 0 && why < SRV_REJ_COUNT) atomic_fetch_add_explicit(&g_rejections[why], 1, memory_order_relaxed);
}

void srv_metrics_batch(int64_t t_start_ns, int64_t t_end_ns, int batch_size) {
    if (t_start_ns <= 0 || batch_size < 1) return; /* never ran */
    pthread_mutex_lock(&g_batch_mu);
    int fresh = t_start_ns != g_last_batch_start;
    if (fresh) g_last_batch_start = t_start_ns;
    pthread_mutex_unlock(&g_batch_mu);
    if (!fresh) return;
    double secs = t_end_ns > t_start_ns ? (double)(t_end_ns - t_start_ns) * 1e-9 : 0.0;
    hist_observe(&g_batch, k_batch_bounds, NB(k_batch_bounds), (double)batch_size, (uint64_t)batch_size);
    hist_observe(&g_infer, k_inf_bounds, NB(k_inf_bounds), secs, (uint64_t)(t_end_ns - t_start_ns));
}

/* ---- rendering ---- */

typedef struct sbuf {
    char *p;
    size_t len, cap;
    int oom;
} sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...) {
    if (b->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = 1;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t ncap = b->cap * 2 + (size_t)n + 1;
        char *np = realloc(b->p, ncap);
        if (!np) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = ncap;
    }
}

/* Label value escaping per the text format: backslash, double quote and line feed. */
static void label_escape(char *out, size_t cap, const char *s) {
    size_t n = 0;
    for (; s && *s && n + 3 < cap; s++) {
        if (*s == '\\' || *s == '"') {
            out[n++] = '\\';
            out[n++] = *s;
        } else if (*s == '\n') {
            out[n++] = '\\';
            out[n++] = 'n';
        } else {
            out[n++] = *s;
        }
    }
    out[n] = '\0';
}

static void render_hist(sbuf *b, const char *name, const char *labels, const hist *h, const double *bounds, int nb,
                        int seconds) {
    uint64_t cum = 0;
    const char *sep = labels[0] ? "," : "";
    for (int i = 0; i <= nb; i++) {
        cum += atomic_load_explicit(&h->bucket[i], memory_order_relaxed);
        if (i < nb)
            sb_printf(b, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels, sep, bounds[i], (unsigned long long)cum);
        else
            sb_printf(b, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep, (unsigned long long)cum);
    }
    uint64_t sum = atomic_load_explicit(&h->sum_ns, memory_order_relaxed);
    const char *open = labels[0] ? "{" : "", *close = labels[0] ? "}" : "";
    if (seconds)
        sb_printf(b, "%s_sum%s%s%s %.9f\n", name, open, labels, close, (double)sum * 1e-9);
    else
        sb_printf(b, "%s_sum%s%s%s %llu\n", name, open, labels, close, (unsigned long long)sum);
    /* The count is the +Inf bucket, so the two always agree within one scrape. */
    sb_printf(b, "%s_count%s%s%s %llu\n", name, open, labels, close, (unsigned long long)cum);
}

char *srv_metrics_render(const srv_metrics_gauges *g, size_t *len) {
    sbuf b = {malloc(16384), 0, 16384, 0};
    if (!b.p) return NULL;

    sb_printf(&b, "# HELP colorize_http_requests_total HTTP requests answered, by route and status code.\n"
                  "# TYPE colorize_http_requests_total counter\n");
    for (int r = 0; r < SRV_ROUTE_COUNT; r++)
        for (int c = CODE_MIN; c <= CODE_MAX; c++) {
            uint64_t v = atomic_load_explicit(&g_requests[r][c - CODE_MIN], memory_order_relaxed);
            if (v)
                sb_printf(&b, "colorize_http_requests_total{route=\"%s\",code=\"%d\"} %llu\n", k_routes[r], c,
                          (unsigned long long)v);
        }

    sb_printf(&b, "# HELP colorize_http_request_duration_seconds Time from request headers to response "
                  "completion, by route.\n"
                  "# TYPE colorize_http_request_duration_seconds histogram\n");
    for (int r = 0; r < SRV_ROUTE_COUNT; r++) {
        char labels[64];
        snprintf(labels, sizeof labels, "route=\"%s\"", k_routes[r]);
        render_hist(&b, "colorize_http_request_duration_seconds", labels, &g_duration[r], k_dur_bounds,
                    NB(k_dur_bounds), 1);
    }

    sb_printf(&b, "# HELP colorize_http_request_bytes_total Request body bytes received.\n"
                  "# TYPE colorize_http_request_bytes_total counter\n"
                  "colorize_http_request_bytes_total %llu\n",
              (unsigned long long)atomic_load(&g_bytes_in));
    sb_printf(&b, "# HELP colorize_http_response_bytes_total Response body bytes sent.\n"
                  "# TYPE colorize_http_response_bytes_total counter\n"
                  "colorize_http_response_bytes_total %llu\n",
              (unsigned long long)atomic_load(&g_bytes_out));

    sb_printf(&b, "# HELP colorize_rejections_total Requests refused, by reason.\n"
                  "# TYPE colorize_rejections_total counter\n");
    for (int i = 0; i < SRV_REJ_COUNT; i++)
        sb_printf(&b, "colorize_rejections_total{reason=\"%s\"} %llu\n", k_reasons[i],
                  (unsigned long long)atomic_load(&g_rejections[i]));

    sb_printf(&b, "# HELP colorize_finished_total Images upsampled and converted, by where.\n"
                  "# TYPE colorize_finished_total counter\n"
                  "colorize_finished_total{where=\"device\"} %llu\n"
                  "colorize_finished_total{where=\"host\"} %llu\n",
              (unsigned long long)atomic_load(&g_finished[1]), (unsigned long long)atomic_load(&g_finished[0]));
    sb_printf(&b, "# HELP colorize_pinned_bytes The page-locked job arena (server.pinned_mb).\n"
                  "# TYPE colorize_pinned_bytes gauge\n"
                  "colorize_pinned_bytes{state=\"capacity\"} %llu\n"
                  "colorize_pinned_bytes{state=\"in_use\"} %llu\n"
                  "colorize_pinned_bytes{state=\"peak\"} %llu\n"
                  "# HELP colorize_pinned_misses_total Jobs that found no room in the arena (finished on the host).\n"
                  "# TYPE colorize_pinned_misses_total counter\n"
                  "colorize_pinned_misses_total %llu\n",
              g->pinned_capacity, g->pinned_in_use, g->pinned_peak, g->pinned_misses);

    sb_printf(&b, "# HELP colorize_planned_shapes Network shapes the serving model has planned.\n"
                  "# TYPE colorize_planned_shapes gauge\n"
                  "colorize_planned_shapes %d\n"
                  "# HELP colorize_activation_bytes Activation memory of those plans (device memory on a GPU).\n"
                  "# TYPE colorize_activation_bytes gauge\n"
                  "colorize_activation_bytes %llu\n",
              g->planned_shapes, g->activation_bytes);

    sb_printf(&b, "# HELP colorize_queue_depth Inference jobs waiting for the device.\n"
                  "# TYPE colorize_queue_depth gauge\n"
                  "colorize_queue_depth %d\n",
              g->queue_depth);

    sb_printf(&b, "# HELP colorize_batch_size Images per forward pass.\n"
                  "# TYPE colorize_batch_size histogram\n");
    render_hist(&b, "colorize_batch_size", "", &g_batch, k_batch_bounds, NB(k_batch_bounds), 0);

    sb_printf(&b, "# HELP colorize_inference_seconds Forward pass wall time, per batch.\n"
                  "# TYPE colorize_inference_seconds histogram\n");
    render_hist(&b, "colorize_inference_seconds", "", &g_infer, k_inf_bounds, NB(k_inf_bounds), 1);

    char mode[64], be[64], prec[64], sum[64];
    label_escape(mode, sizeof mode, g->color_mode);
    label_escape(be, sizeof be, g->backend);
    label_escape(prec, sizeof prec, g->precision);
    label_escape(sum, sizeof sum, g->checksum);
    sb_printf(&b, "# HELP colorize_model_info The model being served (value is always 1).\n"
                  "# TYPE colorize_model_info gauge\n"
                  "colorize_model_info{ngf=\"%d\",depth=\"%d\",color_mode=\"%s\",backend=\"%s\",precision=\"%s\","
                  "checksum=\"%s\"} 1\n",
              g->ngf, g->depth, mode, be, prec, sum);

    sb_printf(&b, "# HELP colorize_ready 1 when /readyz reports ready, else 0.\n"
                  "# TYPE colorize_ready gauge\n"
                  "colorize_ready %d\n",
              g->ready ? 1 : 0);
    static const char *const jst[6] = {"queued", "running", "succeeded", "failed", "cancelled", "interrupted"};
    sb_printf(&b, "# HELP colorize_train_jobs Training jobs known to the daemon, by status.\n"
                  "# TYPE colorize_train_jobs gauge\n");
    for (int i = 0; i < 6; i++) sb_printf(&b, "colorize_train_jobs{status=\"%s\"} %d\n", jst[i], g->train_jobs[i]);
    sb_printf(&b, "# HELP colorize_train_steps_total Training steps run by this process.\n"
                  "# TYPE colorize_train_steps_total counter\n"
                  "colorize_train_steps_total %llu\n"
                  "# HELP colorize_train_images_per_second Training throughput of the running job's last step (0 when none).\n"
                  "# TYPE colorize_train_images_per_second gauge\n"
                  "colorize_train_images_per_second %.3f\n",
              g->train_steps_total, g->train_images_per_s);

    if (b.oom) {
        free(b.p);
        return NULL;
    }
    *len = b.len;
    return b.p;
}
