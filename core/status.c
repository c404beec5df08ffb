/* status.c: status messages, machine codes, HTTP mapping, thread-local error detail.
 * See status.h. Tested by tests/unit/test_core.c. */
#include "status.h"

#include <stdio.h>
#include <string.h>

typedef struct {
    cz_status s;
    const char *msg;
    const char *code;
    int http;
} status_row;

/* One table maps every status to its message, JSON code and HTTP status. */
static const status_row k_rows[] = {
    {CZ_OK, "ok", "ok", 200},
    {CZ_ERR_NOMEM, "out of memory", "out_of_memory", 503},
    {CZ_ERR_INVALID_ARG, "invalid argument", "invalid_argument", 400},
    {CZ_ERR_IO, "input/output error", "io_error", 500},
    {CZ_ERR_UNSUPPORTED_FORMAT, "unsupported image format", "unsupported_media_type", 415},
    {CZ_ERR_CORRUPT_IMAGE, "corrupt image", "corrupt_image", 422},
    {CZ_ERR_TRUNCATED_IMAGE, "truncated image", "truncated_image", 422},
    {CZ_ERR_TOO_MANY_PIXELS, "image has too many pixels", "too_many_pixels", 422},
    {CZ_ERR_BAD_WEIGHTS, "invalid weights file", "bad_weights", 422},
    {CZ_ERR_CONFIG, "invalid configuration", "bad_config", 400},
    {CZ_ERR_BACKEND, "compute backend failure", "backend_error", 500},
    {CZ_ERR_UNAVAILABLE, "not available", "unavailable", 503},
    {CZ_ERR_UNSUPPORTED, "operation not supported", "unsupported", 501},
    {CZ_ERR_SHAPE, "tensor shape mismatch", "shape_mismatch", 500},
    {CZ_ERR_EMPTY_IMAGE, "image has no pixels", "empty_image", 422},
    {CZ_ERR_TOO_LARGE, "too large", "payload_too_large", 413},
    {CZ_ERR_QUEUE_FULL, "queue full", "queue_full", 503},
    {CZ_ERR_DEADLINE, "deadline exceeded", "deadline_exceeded", 504},
    {CZ_ERR_SHUTTING_DOWN, "shutting down", "shutting_down", 503},
    {CZ_ERR_NOT_FOUND, "not found", "not_found", 404},
    {CZ_ERR_INTERNAL, "internal error", "internal_error", 500},
    {CZ_ERR_NONFINITE, "non-finite value", "non_finite", 500},
};

static const status_row *row_of(cz_status s) {
    for (size_t i = 0; i < sizeof k_rows / sizeof k_rows[0]; i++)
        if (k_rows[i].s == s) return &k_rows[i];
    return NULL;
}

const char *cz_strerror(cz_status s) {
    const status_row *r = row_of(s);
    return r ? r->msg : "unknown error";
}

const char *cz_status_code(cz_status s) {
    const status_row *r = row_of(s);
    return r ? r->code : "internal_error";
}

int cz_status_http(cz_status s) {
    const status_row *r = row_of(s);
    return r ? r->http : 500;
}

static _Thread_local char t_detail[512];

cz_status cz_error_setv(cz_status s, const char *fmt, va_list ap) {
    if (fmt)
        vsnprintf(t_detail, sizeof t_detail, fmt, ap);
    else
        snprintf(t_detail, sizeof t_detail, "%s", cz_strerror(s));
    return s;
}

cz_status cz_error_set(cz_status s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    cz_error_setv(s, fmt, ap);
    va_end(ap);
    return s;
}

const char *cz_error_detail(void) { return t_detail; }

void cz_error_clear(void) { t_detail[0] = '\0'; }
