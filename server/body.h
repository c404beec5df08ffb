/* body.h: pure helpers that turn an HTTP request body and query string values into what
 * POST /colorize needs, with no libmicrohttpd dependency:
 *   - srv_body_extract: finds the uploaded image bytes in a body, either a
 *     multipart/form-data body (field `image`) or the raw body under any other Content-Type;
 *   - srv_param_*: parse the `format`, `quality` and `render` query parameters.
 * Every function is reentrant, allocates nothing and reads only the bytes it is given, so it
 * is safe on hostile input (fuzzed by tests/fuzz/fuzz_body.c, unit-tested by
 * server/test_body.c). */
#ifndef SRV_BODY_H
#define SRV_BODY_H

#include <stddef.h>
#include <stdint.h>

#include "image.h"

typedef enum srv_body_result {
    SRV_BODY_OK = 0,
    SRV_BODY_MISSING_IMAGE = 1, /* multipart without an `image` part, empty part, empty body */
    SRV_BODY_BAD_MULTIPART = 2  /* malformed multipart: no boundary, unterminated, ... */
} srv_body_result;

/* Limits that keep the parser's work bounded whatever the input. */
#define SRV_MULTIPART_MAX_PARTS 256
#define SRV_MULTIPART_MAX_HEADER_BYTES 16384 /* header block of one part */
#define SRV_MULTIPART_MAX_BOUNDARY 70        /* RFC 2046 */

/* Locates the image inside `body` (len bytes; may be NULL when len is 0). `content_type` is
 * the request's Content-Type header or NULL. On SRV_BODY_OK *img / *img_len point INTO body
 * (nothing is copied). On failure `msg` (capacity msg_cap, may be 0) says what is wrong. */
srv_body_result srv_body_extract(const char *content_type, const uint8_t *body, size_t len,
                                 const uint8_t **img, size_t *img_len, char *msg, size_t msg_cap);

/* Query parameter parsers. `value` is the raw value (NULL = parameter absent: the default
 * is kept and 0 returned). They return 0 when valid (the result stored) and -1 when not,
 * with `msg` naming the parameter and the accepted values. */
int srv_param_format(const char *value, cz_image_format *out, char *msg, size_t msg_cap);
int srv_param_quality(const char *value, int *out, char *msg, size_t msg_cap);
/* render must be a multiple of 256 in 256..max_render. */
int srv_param_render(const char *value, int max_render, int *out, char *msg, size_t msg_cap);

/* Request ids: 1..128 characters of [A-Za-z0-9._-]. Returns 1 when `id` is acceptable. */
int srv_request_id_valid(const char *id);

#endif
