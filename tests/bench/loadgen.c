/* loadgen.c: HTTP load generator for a running `colorized` (a benchmark program: it prints a
 * table and asserts nothing).
 *
 *   loadgen --url http://127.0.0.1:PORT [--concurrency 1,8,32] [--requests 64]
 *           [--time-limit 120] [--size 512x384] [--format jpeg|png] [--timeout 120]
 *           [--warmup 2] [--csv]
 *
 * Sends POST /colorize?format=F (--format: the answer's format, default jpeg) with one
 * generated photo-like grayscale JPEG (a smooth gradient with soft blobs and sensor-like
 * noise, encoded with cz_image_encode) and, for each concurrency
 * level, keeps exactly that many requests in flight (libcurl multi, one connection each)
 * until --requests have been sent or --time-limit seconds have passed for that level.
 * Reports per level: requests/s, p50 and p99 latency (nearest rank), errors (anything but a
 * 200 with a body), and the mean X-Batch-Size the daemon reported. --csv prints the same as
 * comma-separated lines (used by loadgen.sh).
 *
 * Loopback only: the URL's host must be 127.0.0.1, localhost or [::1]. Every request has a
 * timeout and every level a time bound, so a run always ends.
 * Single-threaded (curl multi). */
#include <curl/curl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "image.h"

typedef struct opts {
    const char *url;
    int levels[16], nlevels;
    int requests;
    double time_limit;
    int width, height;
    const char *format;
    long timeout_s;
    int warmup;
    int csv;
} opts;

typedef struct slot {
    CURL *easy;
    struct curl_slist *hdrs;
    double t_start;
    int batch; /* X-Batch-Size of the response, 0 if none */
    size_t bytes;
    int busy;
} slot;

typedef struct level_result {
    int concurrency, done, errors;
    double seconds, rps, p50_ms, p99_ms, mean_batch;
} level_result;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen --url http://127.0.0.1:PORT [--concurrency 1,8,32] [--requests 64]\n"
            "               [--time-limit SECONDS] [--size WxH] [--format jpeg|png] [--timeout SECONDS]\n"
            "               [--warmup N] [--csv]\n");
}

static int loopback_url(const char *url) {
    const char *p = NULL;
    if (!strncmp(url, "http://", 7)) p = url + 7;
    if (!p) return 0;
    static const char *hosts[] = {"127.0.0.1", "localhost", "[::1]"};
    for (size_t i = 0; i < 3; i++) {
        size_t n = strlen(hosts[i]);
        if (!strncasecmp(p, hosts[i], n) && (p[n] == ':' || p[n] == '/' || p[n] == '\0')) return 1;
    }
    return 0;
}

static int parse_args(int argc, char **argv, opts *o) {
    *o = (opts){.requests = 64,
                .time_limit = 120,
                .width = 512,
                .height = 384,
                .format = "jpeg",
                .timeout_s = 120,
                .warmup = 2};
    o->levels[0] = 1, o->levels[1] = 8, o->levels[2] = 32, o->nlevels = 3;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--csv")) {
            o->csv = 1;
            continue;
        }
        if (!v) {
            usage();
            return -1;
        }
        i++;
        if (!strcmp(a, "--url")) {
            o->url = v;
        } else if (!strcmp(a, "--concurrency")) {
            o->nlevels = 0;
            char buf[256];
            snprintf(buf, sizeof buf, "%s", v);
            for (char *t = strtok(buf, ","); t && o->nlevels < 16; t = strtok(NULL, ",")) {
                int c = atoi(t);
                if (c < 1 || c > 1024) {
                    fprintf(stderr, "loadgen: concurrency %s out of range 1..1024\n", t);
                    return -1;
                }
                o->levels[o->nlevels++] = c;
            }
        } else if (!strcmp(a, "--requests")) {
            o->requests = atoi(v);
        } else if (!strcmp(a, "--time-limit")) {
            o->time_limit = atof(v);
        } else if (!strcmp(a, "--size")) {
            if (sscanf(v, "%dx%d", &o->width, &o->height) != 2) o->width = 0;
        } else if (!strcmp(a, "--format")) {
            o->format = v;
        } else if (!strcmp(a, "--timeout")) {
            o->timeout_s = atol(v);
        } else if (!strcmp(a, "--warmup")) {
            o->warmup = atoi(v);
        } else {
            usage();
            return -1;
        }
    }
    if (!o->url || !o->nlevels) {
        usage();
        return -1;
    }
    if (!loopback_url(o->url)) {
        fprintf(stderr, "loadgen: refusing %s: loopback URLs only (127.0.0.1, localhost, [::1])\n", o->url);
        return -1;
    }
    if (o->requests < 1 || o->requests > 100000 || o->width < 1 || o->height < 1 || o->width > 8192 ||
        o->height > 8192 || o->time_limit <= 0 || o->time_limit > 3600 || o->timeout_s < 1 ||
        o->timeout_s > 3600 || o->warmup < 0 || o->warmup > 100) {
        fprintf(stderr, "loadgen: an option is out of range\n");
        return -1;
    }
    return 0;
}

/* A photo-like grayscale picture: smooth lighting gradient, a few soft blobs, fine noise. */
static uint8_t *make_photo(int w, int h, size_t *len) {
    cz_image img;
    if (cz_image_alloc(&img, w, h, 1) != CZ_OK) return NULL;
    uint64_t s = 0x243f6a8885a308d3ull;
    const double bx[4] = {0.3, 0.7, 0.5, 0.15}, by[4] = {0.35, 0.6, 0.2, 0.8},
                 br[4] = {0.18, 0.22, 0.1, 0.12}, ba[4] = {60, -50, 40, -35};
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            double u = (double)x / w, v = (double)y / h;
            double val = 70 + 110 * (0.6 * u + 0.4 * (1 - v));
            for (int k = 0; k < 4; k++) {
                double dx = u - bx[k], dy = v - by[k];
                val += ba[k] * exp(-(dx * dx + dy * dy) / (2 * br[k] * br[k]));
            }
            s ^= s << 13, s ^= s >> 7, s ^= s << 17;
            val += ((double)(s >> 11) / 9007199254740992.0 - 0.5) * 24.0;
            img.px[(size_t)y * w + x] = (uint8_t)(val < 0 ? 0 : val > 255 ? 255 : val + 0.5);
        }
    uint8_t *out = NULL;
    if (cz_image_encode(&img, CZ_FMT_JPEG, 90, &out, len) != CZ_OK) out = NULL;
    cz_image_free(&img);
    return out;
}

static size_t on_body(char *p, size_t sz, size_t nm, void *u) {
    (void)p;
    ((slot *)u)->bytes += sz * nm;
    return sz * nm;
}

static size_t on_header(char *p, size_t sz, size_t nm, void *u) {
    size_t n = sz * nm;
    if (n > 13 && !strncasecmp(p, "X-Batch-Size:", 13)) ((slot *)u)->batch = atoi(p + 13);
    return n;
}

static void slot_start(CURLM *m, slot *s, const char *url, const uint8_t *img, size_t len, long timeout_s) {
    if (!s->easy) {
        s->easy = curl_easy_init();
        s->hdrs = curl_slist_append(NULL, "Content-Type: image/jpeg");
        s->hdrs = curl_slist_append(s->hdrs, "Expect:");
    } else {
        curl_easy_reset(s->easy);
    }
    CURL *c = s->easy;
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_POST, 1L);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, (const char *)img);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, s->hdrs);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, timeout_s);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 10L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, s);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, s);
    curl_easy_setopt(c, CURLOPT_PRIVATE, (void *)s);
    s->batch = 0;
    s->bytes = 0;
    s->busy = 1;
    s->t_start = now_s();
    curl_multi_add_handle(m, c);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double rank(const double *sorted, int n, double q) {
    if (n <= 0) return NAN;
    int k = (int)ceil(q * n) - 1;
    if (k < 0) k = 0;
    if (k >= n) k = n - 1;
    return sorted[k];
}

/* Runs `total` requests keeping `conc` in flight; fills r. */
static void run_level(const opts *o, const char *url, const uint8_t *img, size_t len, int conc, int total,
                      level_result *r) {
    CURLM *m = curl_multi_init();
    slot *slots = calloc((size_t)conc, sizeof *slots);
    double *lat = calloc((size_t)total, sizeof *lat);
    int started = 0, done = 0, ok = 0, errors = 0, inflight = 0;
    long batch_sum = 0;
    int batch_n = 0;
    double t0 = now_s(), stop_starting = t0 + o->time_limit;
    double hard_end = stop_starting + (double)o->timeout_s + 5;
    for (int i = 0; i < conc && started < total; i++, started++, inflight++)
        slot_start(m, &slots[i], url, img, len, o->timeout_s);
    while (inflight > 0 && now_s() < hard_end) {
        int running;
        curl_multi_perform(m, &running);
        CURLMsg *msg;
        int q;
        while ((msg = curl_multi_info_read(m, &q))) {
            if (msg->msg != CURLMSG_DONE) continue;
            slot *s;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&s);
            long code = 0;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &code);
            CURLcode res = msg->data.result;
            curl_multi_remove_handle(m, s->easy);
            s->busy = 0;
            inflight--;
            double t = now_s();
            if (res == CURLE_OK && code == 200 && s->bytes > 0) {
                lat[ok++] = (t - s->t_start) * 1e3;
                if (s->batch > 0) batch_sum += s->batch, batch_n++;
            } else {
                errors++;
                if (errors <= 3)
                    fprintf(stderr, "loadgen: c=%d: request failed: HTTP %ld, %s\n", conc, code,
                            curl_easy_strerror(res));
            }
            done++;
            if (started < total && t < stop_starting) {
                slot_start(m, s, url, img, len, o->timeout_s);
                started++;
                inflight++;
            }
        }
        if (inflight > 0) curl_multi_poll(m, NULL, 0, 100, NULL);
    }
    double secs = now_s() - t0;
    for (int i = 0; i < conc; i++) {
        if (slots[i].busy) { /* past the hard end: count as errors */
            curl_multi_remove_handle(m, slots[i].easy);
            errors++;
            done++;
        }
        if (slots[i].easy) curl_easy_cleanup(slots[i].easy);
        curl_slist_free_all(slots[i].hdrs);
    }
    curl_multi_cleanup(m);
    qsort(lat, (size_t)ok, sizeof *lat, cmp_double);
    *r = (level_result){.concurrency = conc,
                        .done = done,
                        .errors = errors,
                        .seconds = secs,
                        .rps = secs > 0 ? ok / secs : 0,
                        .p50_ms = rank(lat, ok, 0.50),
                        .p99_ms = rank(lat, ok, 0.99),
                        .mean_batch = batch_n ? (double)batch_sum / batch_n : NAN};
    free(lat);
    free(slots);
}

int main(int argc, char **argv) {
    opts o;
    if (parse_args(argc, argv, &o)) return 2;
    cz_image_format fmt = cz_image_format_parse(o.format);
    if (fmt == CZ_FMT_UNKNOWN) {
        fprintf(stderr, "loadgen: --format jpeg or png\n");
        return 2;
    }
    size_t len;
    uint8_t *img = make_photo(o.width, o.height, &len);
    if (!img) {
        fprintf(stderr, "loadgen: cannot make the test image\n");
        return 1;
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    char url[1024];
    size_t ul = strlen(o.url);
    snprintf(url, sizeof url, "%.*s/colorize?format=%s", (int)(ul && o.url[ul - 1] == '/' ? ul - 1 : ul),
             o.url, cz_image_format_name(fmt));
    if (o.warmup) {
        level_result w;
        run_level(&o, url, img, len, 1, o.warmup, &w);
        if (w.errors == w.done) {
            fprintf(stderr, "loadgen: warm-up requests to %s all failed\n", url);
            free(img);
            curl_global_cleanup();
            return 1;
        }
    }
    level_result res[16];
    for (int i = 0; i < o.nlevels; i++)
        run_level(&o, url, img, len, o.levels[i], o.requests, &res[i]);
    if (o.csv) {
        printf("concurrency,requests,seconds,rps,p50_ms,p99_ms,errors,mean_batch\n");
        for (int i = 0; i < o.nlevels; i++)
            printf("%d,%d,%.3f,%.3f,%.1f,%.1f,%d,%.2f\n", res[i].concurrency, res[i].done, res[i].seconds,
                   res[i].rps, res[i].p50_ms, res[i].p99_ms, res[i].errors, res[i].mean_batch);
    } else {
        printf("POST %s  (%dx%d gray JPEG, %zu bytes; %d requests per level)\n", url, o.width, o.height, len,
               o.requests);
        printf("%11s %9s %10s %10s %10s %7s %11s\n", "concurrency", "requests", "req/s", "p50 ms", "p99 ms",
               "errors", "mean batch");
        for (int i = 0; i < o.nlevels; i++)
            printf("%11d %9d %10.2f %10.1f %10.1f %7d %11.2f\n", res[i].concurrency, res[i].done, res[i].rps,
                   res[i].p50_ms, res[i].p99_ms, res[i].errors, res[i].mean_batch);
    }
    free(img);
    curl_global_cleanup();
    return 0;
}
