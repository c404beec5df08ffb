/* metrics.h: the daemon's Prometheus metrics (names fixed by server/CONTRACT.md):
 *   colorize_http_requests_total{route,code}        counter
 *   colorize_http_request_duration_seconds{route}   histogram
 *   colorize_http_request_bytes_total               counter
 *   colorize_http_response_bytes_total              counter
 *   colorize_rejections_total{reason}               counter
 *   colorize_batch_size                             histogram (one observation per batch)
 *   colorize_inference_seconds                      histogram (one observation per batch)
 *   colorize_queue_depth, colorize_ready            gauges, sampled at scrape
 *   colorize_model_info{ngf,depth,...}              gauge = 1
 *   colorize_train_jobs{status}, colorize_train_images_per_second  gauges;
 *   colorize_train_steps_total                      counter
 *   colorize_finished_total{where}                  counter: images finished (upsampled and
 *                                                   converted) on the "device" or the "host"
 *   colorize_pinned_bytes{state}                    gauges: the page-locked job arena's
 *                                                   capacity, in_use and peak (0 without one)
 *   colorize_pinned_misses_total                    counter: jobs that found no room in it
 *   colorize_planned_shapes, colorize_activation_bytes  gauges: network shapes the serving
 *                                                   model has planned, and the activation
 *                                                   memory they hold (device memory on cuda)
 * Counters and histogram buckets are lock-free atomics, so any thread may record; the
 * exposition text is built on demand by the /metrics handler. Tested end to end by the
 * integration tests (tests/integration/) and by hand with curl. */
#ifndef SRV_METRICS_H
#define SRV_METRICS_H

#include <stddef.h>
#include <stdint.h>

typedef enum srv_route {
    SRV_ROUTE_COLORIZE = 0,
    SRV_ROUTE_HEALTHZ,
    SRV_ROUTE_READYZ,
    SRV_ROUTE_METRICS,
    SRV_ROUTE_MODEL,
    SRV_ROUTE_OPENAPI,
    SRV_ROUTE_TRAIN, /* /train and everything under it */
    SRV_ROUTE_OTHER, /* unknown paths (404) */
    SRV_ROUTE_COUNT
} srv_route;

const char *srv_route_name(srv_route r);

typedef enum srv_reject {
    SRV_REJ_QUEUE_FULL = 0,
    SRV_REJ_TOO_LARGE,
    SRV_REJ_TOO_MANY_PIXELS,
    SRV_REJ_UNSUPPORTED,
    SRV_REJ_CORRUPT,
    SRV_REJ_BAD_REQUEST,
    SRV_REJ_DEADLINE,
    SRV_REJ_SHUTTING_DOWN,
    SRV_REJ_COUNT
} srv_reject;

/* Records one finished request (called once per request, at completion). */
void srv_metrics_request(srv_route r, int http_code, double seconds, uint64_t bytes_in, uint64_t bytes_out);
void srv_metrics_reject(srv_reject why);
/* Records the batch a job ran in. Jobs of one batch share t_start_ns; only the first job
 * seen for a given start time is counted, so each batch is observed once. */
void srv_metrics_batch(int64_t t_start_ns, int64_t t_end_ns, int batch_size);
/* Records one image finished on the device (on_device) or the host. */
void srv_metrics_finished(int on_device);

/* Values sampled at scrape time by the caller. */
typedef struct srv_metrics_gauges {
    int queue_depth;
    int ready;
    /* colorize_model_info labels (unescaped; escaped while rendering) */
    int ngf, depth;
    const char *color_mode, *backend, *precision, *checksum;
    /* training: jobs by status (queued, running, succeeded, failed, cancelled, interrupted) */
    int train_jobs[6];
    unsigned long long train_steps_total;
    double train_images_per_s;
    /* the page-locked job arena (zeroes without one) */
    unsigned long long pinned_capacity, pinned_in_use, pinned_peak, pinned_misses;
    /* the serving model's plans (cz_batcher_stats) */
    int planned_shapes;
    unsigned long long activation_bytes;
} srv_metrics_gauges;

/* Renders the exposition text (malloc'd, *len bytes); NULL when out of memory. */
char *srv_metrics_render(const srv_metrics_gauges *g, size_t *len);

#endif
