/* itest.h: helpers for the HTTP integration test (test_http): the test environment (binaries,
 * a private temp dir, tiny generator weights), starting and stopping real `colorized`
 * processes, HTTP requests over libcurl (one at a time or many at once), raw sockets for what
 * curl will not send, generated test images, and one printed line per check.
 *
 * Threading: it_http / it_http_many / the raw socket helpers may run on any thread (each call
 * owns its curl handles); everything else runs on the main test thread. Every wait is
 * bounded: curl timeouts on every request, polling loops with deadlines, SIGKILL for a daemon
 * that does not exit. Daemons are children of the test process (PR_SET_PDEATHSIG) and are
 * killed at exit if a test aborted. */
#ifndef CZ_ITEST_H
#define CZ_ITEST_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "image.h"

/* ---- checks ---- */
/* Prints "  ok   <what>" or "  FAIL <what>" and counts failures of the current test. */
int it_check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void it_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void it_test_begin(const char *name);
int it_test_failures(void); /* failures since it_test_begin */
int it_total_failures(void);
/* Ends a cmocka test: fails it when any check of the test failed. */
#define IT_TEST_END()                                                               \
    do {                                                                            \
        if (it_test_failures()) fail_msg("%d check(s) failed", it_test_failures()); \
    } while (0)

/* ---- environment ---- */
typedef struct it_env {
    char daemon[PATH_MAX];           /* colorized */
    char cli[PATH_MAX];              /* colorize */
    char tmp[256];                   /* private temp dir */
    char w1[PATH_MAX], w2[PATH_MAX]; /* ngf 4 weights, seeds 1 and 2 */
    uint64_t sum1, sum2;             /* their FNV-1a 64 checksums */
} it_env;
extern it_env IT;

/* Finds the binaries (argv[1], argv[2]; else $CZ_BUILD_DIR/colorized, .../server/colorized,
 * $CZ_BUILD_DIR/colorize), makes the temp dir and the weights. 0 on success. */
int it_env_init(int argc, char **argv);
/* Removes the temp dir unless keep is set (then prints where it is). */
void it_env_cleanup(int keep);
/* Writes a file; 0 on success. */
int it_write_file(const char *path, const void *data, size_t len);
uint8_t *it_read_file(const char *path, size_t *len);
/* Replaces dst atomically (temp + rename) with a copy of src; 0 on success. */
int it_copy_file(const char *src, const char *dst);
/* "fnv1a64:%016llx" of a weights file, as /model reports it. */
void it_checksum_str(uint64_t sum, char *buf, size_t cap);

/* ---- daemons ---- */
typedef struct it_daemon {
    pid_t pid; /* 0 once reaped */
    int port;
    int exit_status; /* waitpid status once reaped */
    char name[32];
    char dir[320];        /* its own subdirectory of IT.tmp */
    char log[PATH_MAX];   /* its stderr */
    char model[PATH_MAX]; /* its model file (a copy of the weights given) */
    char config[PATH_MAX];
} it_daemon;

/* Starts `colorized --config CFG --listen 127.0.0.1:0 --port-file F --model M` where CFG holds
 * `config_json` (a JSON object text), waits for the port file and for /readyz to answer 200.
 * 0 on success; on failure prints the daemon's log tail and kills it. */
int it_daemon_start(it_daemon *d, const char *name, const char *config_json, const char *weights);
int it_daemon_alive(it_daemon *d);
/* Waits (bounded) for the daemon to exit; 1 when it did (status in d->exit_status). */
int it_daemon_wait_exit(it_daemon *d, double timeout_s);
/* SIGTERM, wait up to timeout_s, then SIGKILL. Returns 1 when it exited by itself with 0. */
int it_daemon_stop(it_daemon *d, double timeout_s);
/* Open file descriptors of the daemon (/proc/PID/fd), -1 on error. */
int it_daemon_fd_count(const it_daemon *d);
/* Prints the last `lines` lines of the daemon's stderr. */
void it_daemon_log_tail(const it_daemon *d, int lines);

/* ---- HTTP over libcurl ---- */
typedef struct it_req {
    const char *method; /* NULL = GET, or POST when body/len set */
    const char *path;   /* "/colorize?format=png" */
    const void *body;
    size_t len;
    int has_body;             /* send a body (len may be 0) */
    const char *content_type; /* NULL: none sent */
    const char *request_id;   /* X-Request-Id to send, NULL: none */
    const char *extra_header; /* one more "Name: value", or NULL */
    int chunked;              /* stream the body with Transfer-Encoding: chunked */
    long timeout_ms;          /* 0 = 20000 */
} it_req;

typedef struct it_resp {
    long status;   /* 0 when no HTTP response */
    int curl_code; /* CURLcode */
    char *body;    /* NUL-terminated copy (len excludes the NUL) */
    size_t len;
    char *headers;  /* raw header block of the final response */
    double seconds; /* total time */
} it_resp;

int it_http(int port, const it_req *rq, it_resp *rs);
/* n requests at once (curl multi, one connection each); all bounded by their timeouts. */
void it_http_many(int port, const it_req *rq, int n, it_resp *rs);
void it_resp_free(it_resp *r);
/* Value of the last header `name` (case-insensitive), trimmed, or NULL. */
const char *it_header(const it_resp *r, const char *name, char *buf, size_t cap);
/* Convenience: GET path. */
int it_get(int port, const char *path, it_resp *rs);
/* POST body to /colorize + query with the given content type. */
int it_post(int port, const char *path_query, const void *body, size_t len, const char *ctype, it_resp *rs);

/* Checks an error response: status, application/json, {"error":{"code","message",
 * "request_id"}} with code == `code`, request_id == the X-Request-Id header. One check line. */
int it_check_error(const it_resp *r, long status, const char *code, const char *what);
/* Checks a 200 image answer of /colorize: content type for `fmt`, decodable, w x h, and the
 * Server-Timing / X-Batch-Size / X-Request-Id headers. Decoded image returned in *out when
 * out != NULL (caller frees). One check line; returns ok. */
int it_check_image(const it_resp *r, cz_image_format fmt, int w, int h, const char *what, cz_image *out);
/* String at body[k1] (or body[k1][k2]) of a JSON response, malloc'd; NULL if absent. */
char *it_json_str(const it_resp *r, const char *k1, const char *k2);
/* Parses X-Batch-Size (0 when absent or malformed). */
int it_batch_size(const it_resp *r);

/* A multipart/form-data body with the file in field `field` (and a text field before it when
 * extra is set). *ctype receives the Content-Type value (static storage per call site: give
 * a buffer of 128 bytes). Returns malloc'd body. */
uint8_t *it_multipart(const void *file, size_t len, const char *field, int extra, char *ctype,
                      size_t *out_len);

/* Sum of the samples of metric `name` (Prometheus text) whose label `key` equals `val` (a
 * leading '/' in the label value is ignored); key NULL: all samples of `name`. */
double it_metric_sum(const char *text, const char *name, const char *key, const char *val);
/* GET /metrics body (malloc'd; "" when not 200). */
char *it_get_metrics(int port);

/* ---- raw sockets ---- */
int it_connect(int port); /* -1 on failure */
/* Sends everything (MSG_NOSIGNAL); 0 on success. */
int it_send(int fd, const void *p, size_t n);
/* Reads until EOF or timeout; returns bytes read (NUL-terminated in buf); *closed = peer
 * closed (EOF or reset). */
size_t it_recv_all(int fd, char *buf, size_t cap, double timeout_s, int *closed);
/* Status code of a raw HTTP response text, 0 if none. */
int it_raw_status(const char *resp);

/* ---- images ---- */
/* A smooth gradient + noise picture (gray when channels == 1), encoded; malloc'd. */
uint8_t *it_make_image(int w, int h, int channels, uint64_t seed, cz_image_format fmt, size_t *len);
void it_make_pixels(cz_image *img, int w, int h, int channels, uint64_t seed);
/* Max |L_a - L_b| over two images of the same size (Lab lightness of each pixel). */
double it_max_dL(const cz_image *a, const cz_image *b);

/* ---- time ---- */
double it_now(void); /* CLOCK_MONOTONIC seconds */
void it_sleep(double s);

#endif
