/* body.c: request body and query parameter parsing for POST /colorize (see body.h).
 *
 * multipart/form-data (RFC 7578 on top of RFC 2046) as we accept it:
 *   - the boundary comes from the Content-Type `boundary` parameter, quoted or not,
 *     1..70 characters;
 *   - a delimiter is "--" boundary at the very start of the body or right after a line
 *     feed; the CRLF (or a lone LF, for lenient clients) before it belongs to the delimiter,
 *     not to the preceding part's content, so a part's bytes are returned exactly;
 *   - a delimiter is followed by "--" (the close delimiter) or by optional spaces/tabs and a
 *     line break; any other byte means the match was content, and the search goes on;
 *   - part headers are lines up to an empty line (CRLF or LF endings), at most
 *     SRV_MULTIPART_MAX_HEADER_BYTES per part; `Content-Disposition: form-data; name="image"`
 *     marks the image (the first such part wins, other fields are ignored);
 *   - preamble and epilogue are ignored; a body without a close delimiter is malformed;
 *   - at most SRV_MULTIPART_MAX_PARTS parts are looked at.
 * Every loop advances a cursor through the input, so the work is linear in the body size
 * (times the boundary length in the worst case of the substring search).
 *
 * Threading: pure functions, no state. Tested by server/test_body.c and fuzzed by
 * tests/fuzz/fuzz_body.c. */
#include "body.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "config.h"

/* ---- small helpers ---- */

static void set_msg(char *msg, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_msg(char *msg, size_t cap, const char *fmt, ...) {
    if (!msg || cap == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, cap, fmt, ap);
    va_end(ap);
}

/* Copies at most 40 characters of a client-supplied value for an error message, replacing
 * anything that is not printable ASCII (so the message is always valid UTF-8). */
static void printable(char *out, size_t cap, const char *s) {
    size_t n = 0;
    for (; s && *s && n + 4 < cap && n < 40; s++) out[n++] = (*s >= 0x20 && *s < 0x7f) ? *s : '?';
    if (s && *s && n + 4 <= cap) {
        memcpy(out + n, "...", 3);
        n += 3;
    }
    out[n] = '\0';
}

static int lower(int c) { return (c >= 'A' && c <= 'Z') ? c + ('a' - 'A') : c; }

/* Case-insensitive comparison of the span [p, p+n) with the NUL-terminated `lit`. */
static int span_ieq(const char *p, size_t n, const char *lit) {
    size_t k = strlen(lit);
    if (n != k) return 0;
    for (size_t i = 0; i < n; i++)
        if (lower((unsigned char)p[i]) != lower((unsigned char)lit[i])) return 0;
    return 1;
}

static int is_ows(char c) { return c == ' ' || c == '\t'; }

/* RFC 9110 token characters. */
static int is_tchar(unsigned char c) {
    if (c >= '0' && c <= '9') return 1;
    if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') return 1;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* One parameter of a header value "type; a=b; c="d"". */
typedef struct param {
    const char *name;
    size_t name_len;
    const char *val; /* raw, quotes removed but escapes still in place when quoted */
    size_t val_len;
    int quoted;
} param;

/* Parses the next "; name=value" at *pp (bounded by end). Returns 1 with `out` set, 0 at the
 * end of the value, -1 when malformed. */
static int next_param(const char **pp, const char *end, param *out) {
    const char *p = *pp;
    while (p < end && is_ows(*p)) p++;
    if (p == end) return 0;
    if (*p != ';') return -1;
    p++;
    while (p < end && is_ows(*p)) p++;
    if (p == end) { /* a trailing ';' is tolerated */
        *pp = p;
        return 0;
    }
    out->name = p;
    while (p < end && is_tchar((unsigned char)*p)) p++;
    out->name_len = (size_t)(p - out->name);
    if (out->name_len == 0) return -1;
    while (p < end && is_ows(*p)) p++;
    if (p == end || *p != '=') return -1;
    p++;
    while (p < end && is_ows(*p)) p++;
    if (p < end && *p == '"') {
        p++;
        out->val = p;
        out->quoted = 1;
        for (;;) {
            if (p == end) return -1; /* unterminated quoted string */
            if (*p == '\\') {
                if (p + 1 == end) return -1;
                p += 2;
                continue;
            }
            if (*p == '"') break;
            p++;
        }
        out->val_len = (size_t)(p - out->val);
        p++; /* closing quote */
    } else {
        out->val = p;
        out->quoted = 0;
        while (p < end && *p != ';' && !is_ows(*p)) p++;
        out->val_len = (size_t)(p - out->val);
    }
    *pp = p;
    return 1;
}

/* Unescapes a parameter value into out (capacity cap including the NUL). Returns its length,
 * or -1 when it does not fit. */
static long param_value(const param *pr, char *out, size_t cap) {
    size_t n = 0;
    for (size_t i = 0; i < pr->val_len; i++) {
        char c = pr->val[i];
        if (pr->quoted && c == '\\' && i + 1 < pr->val_len) c = pr->val[++i];
        if (n + 1 >= cap) return -1;
        out[n++] = c;
    }
    out[n] = '\0';
    return (long)n;
}

/* ---- Content-Type ---- */

/* 1 when the media type is multipart/form-data (params then points after it), else 0. */
static int is_form_data(const char *ct, const char **params) {
    const char *p = ct;
    while (is_ows(*p)) p++;
    const char *t = p;
    while (*p && *p != ';' && !is_ows(*p)) p++;
    if (!span_ieq(t, (size_t)(p - t), "multipart/form-data")) return 0;
    *params = p;
    return 1;
}

/* Reads the boundary parameter. 0 ok, -1 error (msg set). */
static int get_boundary(const char *params, char *out, size_t cap, char *msg, size_t msg_cap) {
    const char *p = params, *end = params + strlen(params);
    param pr;
    int r;
    out[0] = '\0';
    while ((r = next_param(&p, end, &pr)) == 1) {
        if (!span_ieq(pr.name, pr.name_len, "boundary")) continue;
        long n = param_value(&pr, out, cap);
        if (n < 0) {
            set_msg(msg, msg_cap, "multipart boundary longer than %d characters", SRV_MULTIPART_MAX_BOUNDARY);
            return -1;
        }
        if (n == 0) {
            set_msg(msg, msg_cap, "multipart boundary is empty");
            return -1;
        }
        return 0;
    }
    if (r < 0) {
        set_msg(msg, msg_cap, "malformed Content-Type parameters");
        return -1;
    }
    set_msg(msg, msg_cap, "multipart/form-data without a boundary parameter");
    return -1;
}

/* ---- multipart ---- */

typedef struct delim {
    size_t start;    /* index of the line break before "--boundary" (or of "--" at 0) */
    size_t next;     /* first byte after the delimiter line */
    int close;       /* 1 for the close delimiter "--boundary--" */
} delim;

/* Finds the next delimiter whose "--boundary" starts at or after `from`. Returns 1 when
 * found, 0 when the body ends first. */
static int find_delim(const uint8_t *body, size_t len, size_t from, const char *dash_b, size_t dlen,
                      delim *d) {
    size_t pos = from;
    while (pos < len && len - pos >= dlen) {
        const uint8_t *hit = memmem(body + pos, len - pos, dash_b, dlen);
        if (!hit) return 0;
        size_t i = (size_t)(hit - body);
        pos = i + 1; /* where to look next if this match is not a delimiter */
        if (i != 0 && body[i - 1] != '\n') continue;
        size_t j = i + dlen;
        if (j + 2 <= len && body[j] == '-' && body[j + 1] == '-') {
            d->close = 1;
            d->next = j + 2;
        } else {
            while (j < len && is_ows((char)body[j])) j++;
            if (j + 2 <= len && body[j] == '\r' && body[j + 1] == '\n')
                d->next = j + 2;
            else if (j < len && body[j] == '\n')
                d->next = j + 1;
            else
                continue; /* "--boundary" followed by other bytes: content, not a delimiter */
            d->close = 0;
        }
        /* The line break before the dashes belongs to the delimiter. */
        size_t s = i;
        if (s >= 1 && body[s - 1] == '\n') {
            s--;
            if (s >= 1 && body[s - 1] == '\r') s--;
        }
        d->start = s;
        return 1;
    }
    return 0;
}

/* Parses the header block of a part starting at `p`. Sets *content to the first content
 * byte and *is_image when Content-Disposition names the field "image".
 * 0 ok, -1 malformed (msg set). */
static int part_headers(const uint8_t *body, size_t len, size_t p, size_t *content, int *is_image, char *msg,
                        size_t msg_cap) {
    size_t q = p;
    *is_image = 0;
    for (;;) {
        if (q - p > SRV_MULTIPART_MAX_HEADER_BYTES) {
            set_msg(msg, msg_cap, "multipart part headers longer than %d bytes", SRV_MULTIPART_MAX_HEADER_BYTES);
            return -1;
        }
        size_t limit = len - q, room = SRV_MULTIPART_MAX_HEADER_BYTES + 2 - (q - p);
        if (limit > room) limit = room; /* never scan past what the header limit allows */
        const uint8_t *nl = limit ? memchr(body + q, '\n', limit) : NULL;
        if (!nl && limit < len - q) {
            set_msg(msg, msg_cap, "multipart part headers longer than %d bytes", SRV_MULTIPART_MAX_HEADER_BYTES);
            return -1;
        }
        if (!nl) {
            set_msg(msg, msg_cap, "multipart part headers are not terminated");
            return -1;
        }
        size_t eol = (size_t)(nl - body);
        size_t line_end = eol;
        if (line_end > q && body[line_end - 1] == '\r') line_end--;
        const char *line = (const char *)body + q;
        size_t n = line_end - q;
        q = eol + 1;
        if (n == 0) break; /* blank line: end of headers */
        if (is_ows(line[0])) continue; /* obsolete folded continuation: ignored */
        const char *colon = memchr(line, ':', n);
        if (!colon || colon == line) {
            set_msg(msg, msg_cap, "malformed multipart part header line");
            return -1;
        }
        if (!span_ieq(line, (size_t)(colon - line), "Content-Disposition")) continue;
        /* value: disposition type then parameters */
        const char *v = colon + 1, *end = line + n;
        while (v < end && is_ows(*v)) v++;
        const char *t = v;
        while (v < end && *v != ';' && !is_ows(*v)) v++;
        if (!span_ieq(t, (size_t)(v - t), "form-data")) continue;
        param pr;
        int r;
        while ((r = next_param(&v, end, &pr)) == 1) {
            if (!span_ieq(pr.name, pr.name_len, "name")) continue;
            char name[16];
            long k = param_value(&pr, name, sizeof name);
            if (k == 5 && memcmp(name, "image", 5) == 0) *is_image = 1;
            break;
        }
        if (r < 0) {
            set_msg(msg, msg_cap, "malformed Content-Disposition parameters");
            return -1;
        }
    }
    *content = q;
    return 0;
}

static srv_body_result parse_multipart(const char *boundary, const uint8_t *body, size_t len, const uint8_t **img,
                                       size_t *img_len, char *msg, size_t msg_cap) {
    char dash_b[SRV_MULTIPART_MAX_BOUNDARY + 3];
    size_t blen = strlen(boundary);
    dash_b[0] = '-';
    dash_b[1] = '-';
    memcpy(dash_b + 2, boundary, blen);
    const size_t dlen = blen + 2;

    if (len == 0) {
        set_msg(msg, msg_cap, "empty body");
        return SRV_BODY_MISSING_IMAGE;
    }
    delim d;
    if (!find_delim(body, len, 0, dash_b, dlen, &d)) {
        set_msg(msg, msg_cap, "multipart body does not contain its boundary");
        return SRV_BODY_BAD_MULTIPART;
    }
    const uint8_t *found = NULL;
    size_t found_len = 0;
    int parts = 0;
    while (!d.close) {
        if (++parts > SRV_MULTIPART_MAX_PARTS) {
            set_msg(msg, msg_cap, "more than %d multipart parts", SRV_MULTIPART_MAX_PARTS);
            return SRV_BODY_BAD_MULTIPART;
        }
        size_t content;
        int is_image;
        if (part_headers(body, len, d.next, &content, &is_image, msg, msg_cap) != 0) return SRV_BODY_BAD_MULTIPART;
        delim nd;
        if (!find_delim(body, len, content, dash_b, dlen, &nd)) {
            set_msg(msg, msg_cap, "multipart body is unterminated (no closing boundary)");
            return SRV_BODY_BAD_MULTIPART;
        }
        /* The delimiter's leading line break may overlap the header block's blank line when
         * a part is empty and the sender left out its CRLF: clamp. */
        size_t cend = nd.start < content ? content : nd.start;
        if (is_image && !found) {
            found = body + content;
            found_len = cend - content;
        }
        d = nd;
    }
    if (!found) {
        set_msg(msg, msg_cap, "multipart body has no part named \"image\"");
        return SRV_BODY_MISSING_IMAGE;
    }
    if (found_len == 0) {
        set_msg(msg, msg_cap, "the \"image\" part is empty");
        return SRV_BODY_MISSING_IMAGE;
    }
    *img = found;
    *img_len = found_len;
    return SRV_BODY_OK;
}

srv_body_result srv_body_extract(const char *content_type, const uint8_t *body, size_t len,
                                 const uint8_t **img, size_t *img_len, char *msg, size_t msg_cap) {
    *img = NULL;
    *img_len = 0;
    if (msg && msg_cap) msg[0] = '\0';
    if (!body) len = 0;
    const char *params = NULL;
    if (content_type && is_form_data(content_type, &params)) {
        char boundary[SRV_MULTIPART_MAX_BOUNDARY + 1];
        if (get_boundary(params, boundary, sizeof boundary, msg, msg_cap) != 0) return SRV_BODY_BAD_MULTIPART;
        return parse_multipart(boundary, body, len, img, img_len, msg, msg_cap);
    }
    if (len == 0) {
        set_msg(msg, msg_cap, "empty body: send the image as the body or as multipart field \"image\"");
        return SRV_BODY_MISSING_IMAGE;
    }
    *img = body;
    *img_len = len;
    return SRV_BODY_OK;
}

/* ---- query parameters ---- */

/* Strict unsigned decimal of at most `maxdig` digits; -1 when not. */
static long parse_uint(const char *s, int maxdig) {
    if (!s || !*s) return -1;
    long v = 0;
    int n = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || ++n > maxdig) return -1;
        v = v * 10 + (*s - '0');
    }
    return v;
}

int srv_param_format(const char *value, cz_image_format *out, char *msg, size_t msg_cap) {
    if (!value) return 0;
    cz_image_format f = CZ_FMT_UNKNOWN;
    if (strcmp(value, "jpeg") == 0) /* exactly the contract's names: no "jpg", no case games */
        f = CZ_FMT_JPEG;
    else if (strcmp(value, "png") == 0)
        f = CZ_FMT_PNG;
    if (f == CZ_FMT_UNKNOWN) {
        char v[64];
        printable(v, sizeof v, value);
        set_msg(msg, msg_cap, "format: expected jpeg or png, got '%s'", v);
        return -1;
    }
    *out = f;
    return 0;
}

int srv_param_quality(const char *value, int *out, char *msg, size_t msg_cap) {
    if (!value) return 0;
    long q = parse_uint(value, 3);
    if (q < 1 || q > 100) {
        char v[64];
        printable(v, sizeof v, value);
        set_msg(msg, msg_cap, "quality: expected an integer from 1 to 100, got '%s'", v);
        return -1;
    }
    *out = (int)q;
    return 0;
}

int srv_param_render(const char *value, int max_render, int *out, char *msg, size_t msg_cap) {
    if (!value) return 0;
    long r = parse_uint(value, 6);
    if (r < CZ_RENDER_STEP || r > max_render || r % CZ_RENDER_STEP != 0) {
        char v[64];
        printable(v, sizeof v, value);
        set_msg(msg, msg_cap, "render: expected a multiple of %d from %d to %d, got '%s'", CZ_RENDER_STEP,
                CZ_RENDER_STEP, max_render, v);
        return -1;
    }
    *out = (int)r;
    return 0;
}

int srv_request_id_valid(const char *id) {
    if (!id) return 0;
    size_t n = 0;
    for (; id[n]; n++) {
        unsigned char c = (unsigned char)id[n];
        int ok = (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') || c == '.' || c == '_' ||
                 c == '-';
        if (!ok || n >= 128) return 0;
    }
    return n >= 1;
}
