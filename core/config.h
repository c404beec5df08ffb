/* config.h: the configuration shared by the CLI and the daemon. Sources, later wins:
 * built-in defaults -> JSON file (jansson) -> COLORIZE_* environment -> command-line flags.
 * Keys are "section.name" ("image.max_pixels"); in JSON they nest ({"image": {"max_pixels":
 * 40000000}}); in the environment they are upper-cased with '.' -> '_'
 * (COLORIZE_IMAGE_MAX_PIXELS). Every value is range-checked when set, and unknown keys are
 * refused, with a message naming the key. The table in config.c is the single list of keys,
 * their types, ranges, defaults and help text (`colorize --help-config` prints it).
 * Not thread-safe while being loaded; read-only afterwards. Tested by tests/unit/test_config.c. */
#ifndef CZ_CONFIG_H
#define CZ_CONFIG_H

#include <stdint.h>

#include "status.h"

#define CZ_CFG_STR 256

typedef struct cz_config {
    /* model */
    char model_path[CZ_CFG_STR];
    char backend[32];   /* auto | cuda | dnnl | ref */
    char precision[16]; /* fp32 | bf16 | fp16 */
    int threads;        /* CPU threads for the backend; 0 = all cores */
    int max_batch;      /* images per forward pass */
    /* image */
    int64_t max_pixels;
    int max_dimension;
    int max_jpeg_scans;
    int64_t max_input_bytes;
    int render;       /* long side the network sees */
    int jpeg_quality; /* output JPEG quality */
    int jpeg_optimize; /* 1: optimized Huffman tables (smaller, slower to encode) */
    /* server (colorized) */
    char listen[64];           /* ADDR:PORT; port 0 = ephemeral (the bound port is logged) */
    int http_threads;          /* libmicrohttpd thread pool size (0: auto, cz_config_http_threads) */
    int max_connections;       /* open connections, at most */
    int max_connections_per_ip;
    int connection_timeout_s;  /* idle / slow client timeout */
    int min_body_rate;         /* bytes/s a request body must average after that grace */
    int connection_memory;     /* bytes of header/read buffer per connection (libmicrohttpd) */
    int64_t max_body_bytes;    /* request body limit (413 above) */
    int request_deadline_ms;   /* whole request budget, including time in the queue */
    int max_queue;             /* inference jobs waiting, at most (503 + Retry-After above) */
    int queue_high_water;      /* /readyz fails at this depth */
    int max_wait_us;           /* batching window: how long a job waits for company (-1: by backend,
                                  cz_config_max_wait_us) */
    int max_render;            /* largest `render` a request may ask for */
    char plan_renders[64];     /* more renders planned + warmed at start: "512,1024", "" (none) or "auto" */
    int plan_shapes;           /* network shapes planned at start in all (squares first; batcher.h) */
    int pinned_mb;             /* page-locked arena for jobs the GPU finishes (MiB; 0: the host finishes all) */
    int full_batches;          /* every forward pass at max_batch (-1: by backend, cz_config_full_batches) */
    int drain_timeout_s;       /* SIGTERM: time in-flight requests get to finish */
    int max_json_bytes;        /* JSON request bodies (admin API), at most */
    /* admin */
    char admin_token[CZ_CFG_STR];      /* Bearer token of the admin API ("" = none) */
    char admin_token_file[CZ_CFG_STR]; /* file whose first line is the token ("" = none) */
    /* train (jobs started over the admin API) */
    char train_data_root[CZ_CFG_STR];  /* datasets are directories under it ("" = training off) */
    char train_state_dir[CZ_CFG_STR];  /* job state, checkpoints, active model record */
    int train_max_jobs;                /* queued + running jobs, at most */
    int train_max_steps;
    int train_max_batch;
    int train_max_image_size;
    int train_keep_checkpoints;        /* default for a job's keep_checkpoints */
    int train_workers;                 /* decode threads per running job */
    int train_cache_mb;                /* photo cache per running job, MiB */
    int train_keep_jobs;               /* finished jobs kept on disk (0 = all) */
    int train_idle_grace_ms;           /* a training step starts only this long after the last inference batch */
    /* log */
    char log_level[16];
} cz_config;

void cz_config_defaults(cz_config *c);
/* Applies a JSON file. */
cz_status cz_config_load_file(cz_config *c, const char *path);
/* Applies a JSON text (for tests and embedded defaults). */
cz_status cz_config_load_json(cz_config *c, const char *text, const char *origin);
/* Applies every COLORIZE_* variable of `envp` (NULL-terminated, as environ). COLORIZE_CONFIG
 * is the config file path, and COLORIZE_CUDA_* / COLORIZE_CUDNN_* are the cuda backend's own
 * switches: all are skipped here. */
cz_status cz_config_load_env(cz_config *c, char *const *envp);
/* Sets one key from a string (flags, env). */
cz_status cz_config_set(cz_config *c, const char *key, const char *value);
/* Checks cross-field rules (e.g. names of backend/precision); call after all sources. */
cz_status cz_config_validate(const cz_config *c);
/* server.max_wait_us, with -1 resolved for the backend: a GPU pass takes well under a
 * millisecond, so waiting 2 ms for company would multiply a lone request's latency, while a
 * CPU pass takes tens of milliseconds and 2 ms buys fuller batches. */
int cz_config_max_wait_us(const cz_config *c, int device);
/* server.http_threads, with 0 resolved: one per online CPU, at least 4 and at most 64. Each
 * request's decode, preparation, host finishing and encode run on one of these threads, so
 * they bound the daemon's requests/s when the backend is fast. With the old fixed default of
 * 4, an H200 machine (16 CPUs) served 436 requests/s of 1024x768 JPEGs finished on the GPU and
 * 182 finished on the host: about what 4 threads allow at the CPU time such a photo takes
 * (tests/bench/bench_stages: 8-9 ms, or 30-50 ms finishing on the host, on this project's
 * 2-core build machine). Each thread may hold one image of up to image.max_pixels while it
 * works on it. */
int cz_config_http_threads(const cz_config *c);
/* server.full_batches, with -1 resolved for the backend: on a GPU (cuDNN's results depend on
 * the batch size; a full batch costs little more than one image there) every pass runs
 * max_batch images, so that batched == alone holds; on a CPU backend (batch-invariant, and a
 * pass costs in proportion to its images) batches are padded to the next power of two only
 * where passes are recorded. */
int cz_config_full_batches(const cz_config *c, int device);
/* The renders server.plan_renders asks to plan at start besides image.render, into out[0..cap);
 * returns how many. A list is taken as written (validate has checked it: integers in
 * 32..server.max_render, at most CZ_CFG_MAX_PLAN_RENDERS). "auto": where `device` (a GPU
 * backend) every render a request may ask for (multiples of CZ_RENDER_STEP up to
 * server.max_render) that is a multiple of `multiple` (the model's 2^depth), except
 * image.render, ascending, and *truncated = 1 when that list was longer than cap; none on a CPU
 * backend. */
#define CZ_CFG_MAX_PLAN_RENDERS 6
#define CZ_RENDER_STEP 256 /* a request's `render` is a multiple of this (server/body.c) */
int cz_config_plan_renders(const cz_config *c, int device, int multiple, int *out, int cap, int *truncated);
/* Prints every key with type, range, default and help to `f` (a FILE *). */
void cz_config_print_help(void *f);
/* Serializes the effective configuration as a JSON object text (malloc'd). */
char *cz_config_to_json(const cz_config *c);

#endif
