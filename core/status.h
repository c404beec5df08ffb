/* status.h: the project's error codes, their messages and HTTP mapping, and a per-thread
 * error detail ("down.3.weight: shape [64,32,4,4], expected [128,64,4,4]").
 *
 * Every function that can fail returns cz_status (0 ok, negative codes). A failing function
 * records a human-readable detail with cz_error_set(), which also returns the status, so the
 * idiom is `return cz_error_set(CZ_ERR_BAD_WEIGHTS, "%s: ...", name);`. The detail lives in
 * thread-local storage: it is valid on the thread that failed until the next cz_error_set().
 * Tested by tests/unit/test_core.c. */
#ifndef CZ_STATUS_H
#define CZ_STATUS_H

#include <stdarg.h>

typedef enum cz_status {
    CZ_OK = 0,
    CZ_ERR_NOMEM = -1,             /* allocation failed */
    CZ_ERR_INVALID_ARG = -2,       /* caller passed something out of contract */
    CZ_ERR_IO = -3,                /* file system / read / write failure */
    CZ_ERR_UNSUPPORTED_FORMAT = -4,/* not JPEG/PNG, or a variant we do not decode */
    CZ_ERR_CORRUPT_IMAGE = -5,     /* decoder found invalid data */
    CZ_ERR_TRUNCATED_IMAGE = -6,   /* data ends before the image does */
    CZ_ERR_TOO_MANY_PIXELS = -7,   /* header dimensions exceed the configured pixel limit */
    CZ_ERR_BAD_WEIGHTS = -8,       /* safetensors file corrupt or not matching the model */
    CZ_ERR_CONFIG = -9,            /* configuration key unknown or out of range */
    CZ_ERR_BACKEND = -10,          /* backend library (oneDNN, CUDA, cuDNN) reported failure */
    CZ_ERR_UNAVAILABLE = -11,      /* backend / feature not available on this machine */
    CZ_ERR_UNSUPPORTED = -12,      /* operation not supported by this backend / dtype */
    CZ_ERR_SHAPE = -13,            /* tensor shapes do not agree */
    CZ_ERR_EMPTY_IMAGE = -14,      /* zero width or height */
    CZ_ERR_TOO_LARGE = -15,        /* a byte size limit was exceeded */
    CZ_ERR_QUEUE_FULL = -16,       /* server: inference queue full */
    CZ_ERR_DEADLINE = -17,         /* server: request deadline passed */
    CZ_ERR_SHUTTING_DOWN = -18,    /* server: draining */
    CZ_ERR_NOT_FOUND = -19,        /* named thing does not exist */
    CZ_ERR_INTERNAL = -20,         /* a bug: an invariant did not hold */
    CZ_ERR_NONFINITE = -21,        /* NaN or Inf where a finite number is required */
    CZ_STATUS_MIN_ = -21
} cz_status;

/* Short fixed message for a status ("corrupt image"). Never NULL. */
const char *cz_strerror(cz_status s);
/* Stable machine-readable code for JSON error bodies ("corrupt_image"). Never NULL. */
const char *cz_status_code(cz_status s);
/* HTTP status code that answers a request failing with `s` (e.g. 422, 415, 503). */
int cz_status_http(cz_status s);

/* Records a formatted detail for the calling thread and returns `s`. */
cz_status cz_error_set(cz_status s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
cz_status cz_error_setv(cz_status s, const char *fmt, va_list ap);
/* The calling thread's last detail, or cz_strerror of its last status when none was given.
 * Returns "" when no error was recorded on this thread. */
const char *cz_error_detail(void);
void cz_error_clear(void);

/* Propagate a failure: `CZ_TRY(expr);` returns from the enclosing function on error. */
#define CZ_TRY(expr)                                                                       \
    do {                                                                                   \
        cz_status cz_try_s_ = (expr);                                                      \
        if (cz_try_s_ != CZ_OK) return cz_try_s_;                                          \
    } while (0)

#endif
