/* itest_http.c: see itest.h. HTTP for the integration test: libcurl requests (one, or many at
 * once with curl multi), header lookup, checks of error and image responses against the
 * contract's shapes (server/CONTRACT.md), multipart bodies, Prometheus text, raw sockets for
 * what curl will not send. Knows the contract, never the daemon's internals. Each call owns
 * its curl handles, so any thread may use these. */
#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "itest.h"

/* Consecutive requests per port that ran into their (long) timeout. After 3, a daemon is taken
 * to be hung and later requests to it get 1 s, so a broken daemon fails the run quickly
 * instead of costing every request its full timeout. */
static _Atomic int g_timeouts[65536];

typedef struct xfer {
    it_resp *rs;
    size_t cap;
    size_t hlen, hcap;
    const it_req *rq;
    size_t sent; /* chunked upload position */
    struct curl_slist *hdrs;
    char url[512];
    int port;
    long timeout_ms;
} xfer;

static size_t on_body(char *p, size_t sz, size_t nm, void *u) {
    xfer *x = u;
    size_t n = sz * nm;
    if (x->rs->len + n + 1 > x->cap) {
        size_t nc = x->cap ? x->cap : 4096;
        while (nc < x->rs->len + n + 1)
            nc *= 2;
        char *nb = realloc(x->rs->body, nc);
        if (!nb) return 0;
        x->rs->body = nb;
        x->cap = nc;
    }
    memcpy(x->rs->body + x->rs->len, p, n);
    x->rs->len += n;
    x->rs->body[x->rs->len] = '\0';
    return n;
}

static size_t on_header(char *p, size_t sz, size_t nm, void *u) {
    xfer *x = u;
    size_t n = sz * nm;
    if (n >= 5 && !strncmp(p, "HTTP/", 5)) x->hlen = 0; /* a new (final or interim) response */
    if (x->hlen + n + 1 > x->hcap) {
        size_t nc = x->hcap ? x->hcap : 1024;
        while (nc < x->hlen + n + 1)
            nc *= 2;
        char *nb = realloc(x->rs->headers, nc);
        if (!nb) return 0;
        x->rs->headers = nb;
        x->hcap = nc;
    }
    memcpy(x->rs->headers + x->hlen, p, n);
    x->hlen += n;
    x->rs->headers[x->hlen] = '\0';
    return n;
}

static size_t on_read(char *p, size_t sz, size_t nm, void *u) {
    xfer *x = u;
    size_t n = sz * nm, left = x->rq->len - x->sent;
    if (n > left) n = left;
    if (n > 16384) n = 16384; /* several chunks */
    memcpy(p, (const char *)x->rq->body + x->sent, n);
    x->sent += n;
    return n;
}

static CURL *make_easy(int port, const it_req *rq, it_resp *rs, xfer *x) {
    memset(rs, 0, sizeof *rs);
    memset(x, 0, sizeof *x);
    x->rs = rs;
    x->rq = rq;
    CURL *c = curl_easy_init();
    if (!c) return NULL;
    snprintf(x->url, sizeof x->url, "http://127.0.0.1:%d%s", port, rq->path ? rq->path : "/");
    curl_easy_setopt(c, CURLOPT_URL, x->url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_FORBID_REUSE, 1L);
    curl_easy_setopt(c, CURLOPT_FRESH_CONNECT, 1L);
    x->port = port & 0xffff;
    x->timeout_ms = rq->timeout_ms ? rq->timeout_ms : 20000L;
    if (atomic_load(&g_timeouts[x->port]) >= 3 && x->timeout_ms > 1000) x->timeout_ms = 1000;
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, x->timeout_ms);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, x);
    int body = rq->has_body || rq->body;
    const char *m = rq->method ? rq->method : (body ? "POST" : "GET");
    char h[512];
    x->hdrs = curl_slist_append(x->hdrs, "Expect:");
    if (rq->content_type) {
        snprintf(h, sizeof h, "Content-Type: %s", rq->content_type);
        x->hdrs = curl_slist_append(x->hdrs, h);
    } else if (body) {
        x->hdrs = curl_slist_append(x->hdrs, "Content-Type:"); /* none at all */
    }
    if (rq->request_id) {
        snprintf(h, sizeof h, "X-Request-Id: %s", rq->request_id);
        x->hdrs = curl_slist_append(x->hdrs, h);
    }
    if (rq->extra_header) x->hdrs = curl_slist_append(x->hdrs, rq->extra_header);
    if (body && rq->chunked) {
        x->hdrs = curl_slist_append(x->hdrs, "Transfer-Encoding: chunked");
        curl_easy_setopt(c, CURLOPT_POST, 1L);
        curl_easy_setopt(c, CURLOPT_READFUNCTION, on_read);
        curl_easy_setopt(c, CURLOPT_READDATA, x);
    } else if (body) {
        curl_easy_setopt(c, CURLOPT_POST, 1L);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, rq->body ? (const char *)rq->body : "");
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)rq->len);
    }
    if (strcmp(m, "GET") && strcmp(m, "POST")) curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, m);
    if (!strcmp(m, "HEAD")) curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    if (!strcmp(m, "POST") && !body) {
        curl_easy_setopt(c, CURLOPT_POST, 1L);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0);
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, x->hdrs);
    return c;
}

static void finish_easy(CURL *c, xfer *x, CURLcode code) {
    x->rs->curl_code = (int)code;
    if (code == CURLE_OPERATION_TIMEDOUT && x->timeout_ms >= 5000) {
        if (atomic_fetch_add(&g_timeouts[x->port], 1) == 2)
            printf("itest: 3 requests in a row to port %d timed out: later ones get 1 s\n", x->port);
    } else if (code == CURLE_OK) {
        atomic_store(&g_timeouts[x->port], 0);
    }
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &x->rs->status);
    curl_easy_getinfo(c, CURLINFO_TOTAL_TIME, &x->rs->seconds);
    if (!x->rs->body) x->rs->body = calloc(1, 1);
    if (!x->rs->headers) x->rs->headers = calloc(1, 1);
    curl_slist_free_all(x->hdrs);
    curl_easy_cleanup(c);
}

int it_http(int port, const it_req *rq, it_resp *rs) {
    xfer x;
    CURL *c = make_easy(port, rq, rs, &x);
    if (!c) return -1;
    CURLcode code = curl_easy_perform(c);
    finish_easy(c, &x, code);
    return code == CURLE_OK ? 0 : -1;
}

void it_http_many(int port, const it_req *rq, int n, it_resp *rs) {
    CURLM *m = curl_multi_init();
    xfer *xs = calloc((size_t)n, sizeof *xs);
    CURL **cs = calloc((size_t)n, sizeof *cs);
    long tmax = 0;
    for (int i = 0; i < n; i++) {
        cs[i] = make_easy(port, &rq[i], &rs[i], &xs[i]);
        curl_easy_setopt(cs[i], CURLOPT_PRIVATE, (void *)&xs[i]);
        curl_multi_add_handle(m, cs[i]);
        long t = rq[i].timeout_ms ? rq[i].timeout_ms : 20000L;
        if (t > tmax) tmax = t;
    }
    double end = it_now() + (double)tmax / 1000.0 + 10.0; /* belt and braces over curl's own */
    int running = n, left = n;
    while (left > 0 && it_now() < end) {
        curl_multi_perform(m, &running);
        CURLMsg *msg;
        int q;
        while ((msg = curl_multi_info_read(m, &q))) {
            if (msg->msg != CURLMSG_DONE) continue;
            CURL *c = msg->easy_handle;
            CURLcode code = msg->data.result;
            xfer *x;
            curl_easy_getinfo(c, CURLINFO_PRIVATE, (char **)&x);
            curl_multi_remove_handle(m, c);
            finish_easy(c, x, code);
            cs[x - xs] = NULL;
            left--;
        }
        if (left > 0) curl_multi_poll(m, NULL, 0, 50, NULL);
    }
    for (int i = 0; i < n; i++)
        if (cs[i]) { /* only past the safety deadline */
            curl_multi_remove_handle(m, cs[i]);
            finish_easy(cs[i], &xs[i], CURLE_OPERATION_TIMEDOUT);
        }
    curl_multi_cleanup(m);
    free(cs);
    free(xs);
}

void it_resp_free(it_resp *r) {
    free(r->body);
    free(r->headers);
    memset(r, 0, sizeof *r);
}

const char *it_header(const it_resp *r, const char *name, char *buf, size_t cap) {
    const char *found = NULL;
    size_t nl = strlen(name);
    for (const char *p = r->headers; p && *p;) {
        const char *eol = strchr(p, '\n');
        size_t ll = eol ? (size_t)(eol - p) : strlen(p);
        if (ll > nl && !strncasecmp(p, name, nl) && p[nl] == ':') {
            const char *v = p + nl + 1;
            const char *e = p + ll;
            while (v < e && (*v == ' ' || *v == '\t'))
                v++;
            while (e > v && (e[-1] == '\r' || e[-1] == ' ' || e[-1] == '\t'))
                e--;
            size_t vl = (size_t)(e - v);
            if (vl >= cap) vl = cap - 1;
            memcpy(buf, v, vl);
            buf[vl] = '\0';
            found = buf;
        }
        if (!eol) break;
        p = eol + 1;
    }
    return found;
}

int it_get(int port, const char *path, it_resp *rs) {
    it_req rq = {.path = path};
    return it_http(port, &rq, rs);
}

int it_post(int port, const char *path_query, const void *body, size_t len, const char *ctype, it_resp *rs) {
    it_req rq = {.path = path_query, .body = body, .len = len, .has_body = 1, .content_type = ctype};
    return it_http(port, &rq, rs);
}

int it_check_error(const it_resp *r, long status, const char *code, const char *what) {
    char ct[128] = "", rid[256] = "", why[256] = "";
    it_header(r, "Content-Type", ct, sizeof ct);
    it_header(r, "X-Request-Id", rid, sizeof rid);
    json_error_t je;
    json_t *root = r->body && r->len ? json_loadb(r->body, r->len, 0, &je) : NULL;
    json_t *err = root ? json_object_get(root, "error") : NULL;
    const char *jc = json_string_value(json_object_get(err, "code"));
    const char *jm = json_string_value(json_object_get(err, "message"));
    const char *jr = json_string_value(json_object_get(err, "request_id"));
    if (r->status != status)
        snprintf(why, sizeof why, "status %ld (curl %d)", r->status, r->curl_code);
    else if (strncasecmp(ct, "application/json", 16))
        snprintf(why, sizeof why, "Content-Type '%s'", ct);
    else if (!err || !json_is_object(err))
        snprintf(why, sizeof why, "body is not {\"error\":{...}}");
    else if (!jc || strcmp(jc, code))
        snprintf(why, sizeof why, "code '%s'", jc ? jc : "(none)");
    else if (!jm || !*jm)
        snprintf(why, sizeof why, "no message");
    else if (!jr || !*rid || strcmp(jr, rid))
        snprintf(why, sizeof why, "request_id '%s' vs X-Request-Id '%s'", jr ? jr : "(none)", rid);
    int ok = !why[0];
    if (ok)
        it_check(1, "%s -> %ld %s (\"%.60s\")", what, status, code, jm);
    else
        it_check(0, "%s -> want %ld %s: %s; body: %.200s", what, status, code, why, r->body ? r->body : "");
    json_decref(root);
    return ok;
}

int it_batch_size(const it_resp *r) {
    char b[64];
    if (!it_header(r, "X-Batch-Size", b, sizeof b)) return 0;
    char *e;
    long v = strtol(b, &e, 10);
    return (*b && !*e && v > 0 && v < 100000) ? (int)v : 0;
}

/* All four Server-Timing metrics present, each dur a finite number >= 0. */
static int server_timing_ok(const it_resp *r, char *why, size_t cap) {
    char st[256];
    if (!it_header(r, "Server-Timing", st, sizeof st)) {
        snprintf(why, cap, "no Server-Timing");
        return 0;
    }
    static const char *names[] = {"decode", "queue", "infer", "encode"};
    for (int i = 0; i < 4; i++) {
        char key[32];
        snprintf(key, sizeof key, "%s;dur=", names[i]);
        const char *p = strstr(st, key);
        if (!p || (p != st && p[-1] != ' ' && p[-1] != ',')) {
            snprintf(why, cap, "Server-Timing '%s' lacks %s", st, names[i]);
            return 0;
        }
        char *e;
        double v = strtod(p + strlen(key), &e);
        if (e == p + strlen(key) || !isfinite(v) || v < 0) {
            snprintf(why, cap, "Server-Timing '%s': bad %s", st, names[i]);
            return 0;
        }
    }
    return 1;
}

int it_check_image(const it_resp *r, cz_image_format fmt, int w, int h, const char *what, cz_image *out) {
    char ct[128] = "", rid[256] = "", why[512] = "";
    const char *want_ct = fmt == CZ_FMT_PNG ? "image/png" : "image/jpeg";
    it_header(r, "Content-Type", ct, sizeof ct);
    it_header(r, "X-Request-Id", rid, sizeof rid);
    cz_image img = {0};
    cz_image_format got = CZ_FMT_UNKNOWN;
    if (r->status != 200)
        snprintf(why, sizeof why, "status %ld (curl %d): %.200s", r->status, r->curl_code,
                 r->body ? r->body : "");
    else if (strncasecmp(ct, want_ct, strlen(want_ct)))
        snprintf(why, sizeof why, "Content-Type '%s', want %s", ct, want_ct);
    else if (!rid[0])
        snprintf(why, sizeof why, "no X-Request-Id");
    else if (!server_timing_ok(r, why, sizeof why))
        ;
    else if (!it_batch_size(r))
        snprintf(why, sizeof why, "X-Batch-Size missing or malformed");
    else if (cz_image_decode(r->body, r->len, NULL, &img, &got) != CZ_OK)
        snprintf(why, sizeof why, "body does not decode: %s", cz_error_detail());
    else if (got != fmt)
        snprintf(why, sizeof why, "body is %s", cz_image_format_name(got));
    else if (img.width != w || img.height != h)
        snprintf(why, sizeof why, "output %dx%d, input %dx%d", img.width, img.height, w, h);
    int ok = !why[0];
    it_check(ok, "%s -> 200 %s %dx%d%s%s", what, want_ct, w, h, ok ? "" : ": ", why);
    if (ok && out)
        *out = img;
    else
        cz_image_free(&img);
    return ok;
}

uint8_t *it_multipart(const void *file, size_t len, const char *field, int extra, char *ctype,
                      size_t *out_len) {
    static const char *bnd = "czBoundary7MA4YWxkTrZu0gW";
    char head[512], pre[256] = "";
    if (extra)
        snprintf(pre, sizeof pre, "--%s\r\nContent-Disposition: form-data; name=\"comment\"\r\n\r\nhello\r\n",
                 bnd);
    int hn = snprintf(head, sizeof head,
                      "%s--%s\r\nContent-Disposition: form-data; name=\"%s\"; filename=\"x.bin\"\r\n"
                      "Content-Type: application/octet-stream\r\n\r\n",
                      pre, bnd, field);
    char tail[128];
    int tn = snprintf(tail, sizeof tail, "\r\n--%s--\r\n", bnd);
    uint8_t *b = malloc((size_t)hn + len + (size_t)tn);
    memcpy(b, head, (size_t)hn);
    if (len) memcpy(b + hn, file, len);
    memcpy(b + hn + len, tail, (size_t)tn);
    *out_len = (size_t)hn + len + (size_t)tn;
    snprintf(ctype, 128, "multipart/form-data; boundary=%s", bnd);
    return b;
}

/* Sum of the samples of `name` whose label `key` equals `val` (a leading '/' in the value is
 * ignored); key NULL sums all samples of `name`. */
double it_metric_sum(const char *text, const char *name, const char *key, const char *val) {
    double sum = 0;
    size_t nl = strlen(name);
    for (const char *p = text; p && *p;) {
        const char *eol = strchr(p, '\n');
        size_t ll = eol ? (size_t)(eol - p) : strlen(p);
        if (*p != '#' && ll > nl && !strncmp(p, name, nl) && (p[nl] == '{' || p[nl] == ' ')) {
            char line[1024];
            snprintf(line, sizeof line, "%.*s", (int)(ll < 1023 ? ll : 1023), p);
            int match = 1;
            if (key) {
                char pat[128];
                snprintf(pat, sizeof pat, "%s=\"", key);
                char *lb = strchr(line, '{'), *rb = lb ? strchr(lb, '}') : NULL;
                char *kv = lb ? strstr(lb, pat) : NULL;
                match = 0;
                if (kv && kv < rb) {
                    char *v = kv + strlen(pat);
                    if (*v == '/' && *val != '/') v++;
                    size_t vl = strlen(val);
                    match = !strncmp(v, val, vl) && v[vl] == '"';
                }
            }
            if (match) {
                char *sp = strrchr(line, '}');
                sp = strchr(sp ? sp : line, ' ');
                if (sp) sum += strtod(sp + 1, NULL);
            }
        }
        if (!eol) break;
        p = eol + 1;
    }
    return sum;
}

char *it_get_metrics(int port) {
    it_resp r;
    it_get(port, "/metrics", &r);
    char *t = strdup(r.status == 200 ? r.body : "");
    it_resp_free(&r);
    return t;
}

/* ------------------------------------------------------------------ raw sockets */

int it_connect(int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) {
        close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

int it_send(int fd, const void *p, size_t n) {
    const char *c = p;
    while (n > 0) {
        ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

size_t it_recv_all(int fd, char *buf, size_t cap, double timeout_s, int *closed) {
    size_t n = 0;
    double end = it_now() + timeout_s;
    *closed = 0;
    while (n + 1 < cap) {
        double left = end - it_now();
        if (left <= 0) break;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int pr = poll(&p, 1, (int)(left * 1000) + 1);
        if (pr < 0 && errno == EINTR) continue;
        if (pr <= 0) break;
        ssize_t r = recv(fd, buf + n, cap - 1 - n, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            *closed = 1;
            break;
        }
        n += (size_t)r;
    }
    buf[n] = '\0';
    return n;
}

int it_raw_status(const char *resp) {
    int code = 0;
    if (sscanf(resp, "HTTP/1.%*d %d", &code) != 1) return 0;
    return code;
}

char *it_json_str(const it_resp *r, const char *k1, const char *k2) {
    json_error_t e;
    json_t *root = r->body && r->len ? json_loadb(r->body, r->len, 0, &e) : NULL;
    json_t *v = root ? json_object_get(root, k1) : NULL;
    if (v && k2) v = json_object_get(v, k2);
    char *out = json_is_string(v) ? strdup(json_string_value(v)) : NULL;
    json_decref(root);
    return out;
}
