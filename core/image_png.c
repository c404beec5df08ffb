/* image_png.c: PNG decode / probe / encode on libspng.
 *
 * Decode policy:
 *  - spng image limits are set to max_dimension and its chunk limits to 8 MiB per ancillary
 *    chunk / 32 MiB cached in total, so a hostile file cannot balloon memory; width, height
 *    and width*height are checked against the limits from IHDR before any pixel buffer.
 *  - Every color type and bit depth (1..16, palette, tRNS, Adam7 interlace) is accepted.
 *    Gray and gray+alpha stay 1 channel; truecolor / palette become RGB.
 *  - 16-bit samples are reduced to 8 bits with rounding: round(v * 255 / 65535).
 *  - Alpha (alpha channel or tRNS) is composited on white in 8-bit sRGB space:
 *    out = round((c * a + max * (max - a)) / max) at the source bit depth, then reduced.
 *    No gamma (gAMA), ICC or eXIf handling: samples are taken as sRGB, and PNG images are
 *    never re-oriented.
 *  - Ancillary chunks with a bad CRC are dropped (as browsers do); a bad CRC on a critical
 *    chunk (IDAT included: chunks are read on to IEND after the pixels) is CORRUPT. The
 *    input running out before the last row -> TRUNCATED; missing trailing chunks / IEND
 *    after complete image data are tolerated. Other decoder errors -> CORRUPT.
 *  - Non-interlaced images that need conversion (alpha, 16-bit) are decoded row by row, so
 *    the only full-size buffer is the 8-bit output; interlaced ones use one full buffer in
 *    the decode format.
 *
 * Threading: reentrant; one spng context per call. Encoded buffers are malloc'd (spng's
 * default allocator) and freed by the caller with free().
 *
 * Tested by tests/unit/test_image_codec.c (all of PngSuite, round trips, header limits,
 * truncation, mutations). */
#include <stdlib.h>
#include <string.h>

#include <spng.h>

#include "image.h"

enum { PNG_CHUNK_LIMIT = 8 << 20, PNG_CACHE_LIMIT = 32 << 20 };

static cz_status png_error(int err, const char *where) {
    const char *m = spng_strerror(err);
    switch (err) {
    case SPNG_IO_EOF:
    case SPNG_EOF:
        return cz_error_set(CZ_ERR_TRUNCATED_IMAGE, "PNG data ends early (%s: %s)", where, m);
    case SPNG_EUSER_WIDTH:
    case SPNG_EUSER_HEIGHT:
        return cz_error_set(CZ_ERR_TOO_MANY_PIXELS,
                            "PNG header: a side exceeds the configured dimension limit (%s)", m);
    case SPNG_EOVERFLOW:
        return cz_error_set(CZ_ERR_TOO_MANY_PIXELS, "PNG %s: size overflow (%s)", where, m);
    case SPNG_EMEM:
        return cz_error_set(CZ_ERR_NOMEM, "PNG %s: %s", where, m);
    case SPNG_ECHUNK_LIMITS:
        return cz_error_set(CZ_ERR_TOO_LARGE, "PNG %s: chunk exceeds size limits (%s)", where,
                            m);
    case SPNG_ESIGNATURE:
        return cz_error_set(CZ_ERR_UNSUPPORTED_FORMAT, "PNG %s: %s", where, m);
    default:
        return cz_error_set(CZ_ERR_CORRUPT_IMAGE, "PNG %s: %s", where, m);
    }
}

/* Creates a decoder over `data` with limits applied and reads IHDR. */
static cz_status png_open(const void *data, size_t len, const cz_image_limits *lim,
                          spng_ctx **pctx, struct spng_ihdr *ih) {
    cz_image_limits d;
    cz_image_limits_default(&d);
    int max_dim = lim && lim->max_dimension > 0 ? lim->max_dimension : d.max_dimension;
    spng_ctx *ctx = spng_ctx_new(0);
    if (!ctx) return cz_error_set(CZ_ERR_NOMEM, "PNG: cannot create decoder");
    int e = spng_set_image_limits(ctx, (uint32_t)max_dim, (uint32_t)max_dim);
    if (!e) e = spng_set_chunk_limits(ctx, PNG_CHUNK_LIMIT, PNG_CACHE_LIMIT);
    if (!e) e = spng_set_crc_action(ctx, SPNG_CRC_ERROR, SPNG_CRC_DISCARD);
    if (!e) e = spng_set_png_buffer(ctx, data, len);
    if (e) {
        spng_ctx_free(ctx);
        return png_error(e, "setup");
    }
    e = spng_get_ihdr(ctx, ih);
    if (e) {
        spng_ctx_free(ctx);
        return png_error(e, "header");
    }
    cz_status s = cz_image_check_limits(ih->width, ih->height, lim);
    if (s != CZ_OK) {
        spng_ctx_free(ctx);
        return s;
    }
    *pctx = ctx;
    return CZ_OK;
}

cz_status cz_png_probe(const void *data, size_t len, const cz_image_limits *lim, int *width,
                       int *height) {
    spng_ctx *ctx;
    struct spng_ihdr ih;
    if (!data || len == 0 || !width || !height)
        return cz_error_set(CZ_ERR_INVALID_ARG, "cz_png_probe: NULL or empty argument");
    CZ_TRY(png_open(data, len, lim, &ctx, &ih));
    spng_ctx_free(ctx);
    *width = (int)ih.width;
    *height = (int)ih.height;
    return CZ_OK;
}

/* Composite one row of the decode format onto white and write `outc` 8-bit channels. */
static void convert_row(const uint8_t *in, int fmt, int w, int outc, uint8_t *out) {
    if (fmt == SPNG_FMT_RGBA8) {
        for (int x = 0; x < w; x++) {
            const uint8_t *q = in + 4 * (size_t)x;
            unsigned a = q[3], bg = 255u * (255u - a);
            for (int k = 0; k < outc; k++)
                out[(size_t)x * outc + k] = (uint8_t)((q[k] * a + bg + 127u) / 255u);
        }
    } else { /* SPNG_FMT_RGBA16, host-endian */
        const uint64_t den = 65535ull * 65535ull;
        for (int x = 0; x < w; x++) {
            uint16_t q[4];
            memcpy(q, in + 8 * (size_t)x, sizeof q);
            uint64_t a = q[3], bg = 65535ull * (65535ull - a);
            for (int k = 0; k < outc; k++) {
                uint64_t num = ((uint64_t)q[k] * a + bg) * 255ull;
                out[(size_t)x * outc + k] = (uint8_t)((num + den / 2) / den);
            }
        }
    }
}

cz_status cz_png_decode(const void *data, size_t len, const cz_image_limits *lim,
                        cz_image *out) {
    if (!out) return cz_error_set(CZ_ERR_INVALID_ARG, "cz_png_decode: NULL output");
    memset(out, 0, sizeof *out);
    if (!data || len == 0)
        return cz_error_set(CZ_ERR_EMPTY_IMAGE, "empty input: 0 bytes of PNG data");
    spng_ctx *ctx;
    struct spng_ihdr ih;
    CZ_TRY(png_open(data, len, lim, &ctx, &ih));

    struct spng_trns trns;
    int e = spng_get_trns(ctx, &trns);
    int has_trns = e == 0;
    if (e && e != SPNG_ECHUNKAVAIL) {
        spng_ctx_free(ctx);
        return png_error(e, "chunks");
    }
    const int w = (int)ih.width, h = (int)ih.height;
    const int gray = ih.color_type == SPNG_COLOR_TYPE_GRAYSCALE ||
                     ih.color_type == SPNG_COLOR_TYPE_GRAYSCALE_ALPHA;
    const int outc = gray ? 1 : 3;
    const int alpha = has_trns || ih.color_type == SPNG_COLOR_TYPE_GRAYSCALE_ALPHA ||
                      ih.color_type == SPNG_COLOR_TYPE_TRUECOLOR_ALPHA;
    int fmt;
    int direct = 0; /* decode straight into the output buffer */
    if (ih.bit_depth == 16) {
        fmt = SPNG_FMT_RGBA16;
    } else if (ih.color_type == SPNG_COLOR_TYPE_GRAYSCALE && !has_trns) {
        fmt = SPNG_FMT_G8;
        direct = 1;
    } else if (!alpha && !gray) {
        fmt = SPNG_FMT_RGB8;
        direct = 1;
    } else {
        fmt = SPNG_FMT_RGBA8;
    }

    cz_status s = cz_image_alloc(out, w, h, outc);
    if (s != CZ_OK) {
        spng_ctx_free(ctx);
        return s;
    }
    const size_t out_stride = (size_t)w * (size_t)outc;
    size_t need = 0;
    e = spng_decoded_image_size(ctx, fmt, &need);
    if (e) goto spng_fail;

    if (direct) {
        if (need != out_stride * (size_t)h) {
            s = cz_error_set(CZ_ERR_INTERNAL, "PNG: decoded size %zu, expected %zu", need,
                             out_stride * (size_t)h);
            goto fail;
        }
        e = spng_decode_image(ctx, out->px, need, fmt, 0);
        if (e) goto spng_fail;
    } else {
        const size_t row_bytes = need / (size_t)h;
        if (ih.interlace_method) {
            uint8_t *full = malloc(need);
            if (!full) {
                s = cz_error_set(CZ_ERR_NOMEM, "PNG: %zu byte decode buffer", need);
                goto fail;
            }
            e = spng_decode_image(ctx, full, need, fmt, SPNG_DECODE_TRNS);
            if (!e)
                for (int y = 0; y < h; y++)
                    convert_row(full + (size_t)y * row_bytes, fmt, w, outc,
                                out->px + (size_t)y * out_stride);
            free(full);
            if (e) goto spng_fail;
        } else {
            uint8_t *row = malloc(row_bytes);
            if (!row) {
                s = cz_error_set(CZ_ERR_NOMEM, "PNG: %zu byte row buffer", row_bytes);
                goto fail;
            }
            e = spng_decode_image(ctx, NULL, 0, fmt, SPNG_DECODE_TRNS | SPNG_DECODE_PROGRESSIVE);
            int rows = 0;
            while (!e) {
                struct spng_row_info ri;
                e = spng_get_row_info(ctx, &ri);
                if (e) break;
                e = spng_decode_row(ctx, row, row_bytes);
                if (e && e != SPNG_EOI) break;
                if (ri.row_num < (uint32_t)h) {
                    convert_row(row, fmt, w, outc, out->px + (size_t)ri.row_num * out_stride);
                    rows++;
                }
                if (e == SPNG_EOI) break;
            }
            free(row);
            if (e == SPNG_EOI) e = rows == h ? 0 : SPNG_EOF;
            if (e) goto spng_fail;
        }
    }
    /* Read on to IEND: the last IDAT's CRC is only verified here. Trailing chunks that are
     * merely missing (data ends after the image) are accepted; the pixels are complete. */
    e = spng_decode_chunks(ctx);
    if (e == SPNG_IO_EOF || e == SPNG_EOF) e = 0;
    if (e) {
        s = png_error(e, "after image data");
        goto fail;
    }
    spng_ctx_free(ctx);
    return CZ_OK;

spng_fail:
    s = png_error(e, "image data");
fail:
    spng_ctx_free(ctx);
    cz_image_free(out);
    return s;
}

cz_status cz_png_encode(const cz_image *img, uint8_t **out, size_t *out_len) {
    if (!out || !out_len || !img || !img->px || img->width <= 0 || img->height <= 0 ||
        (img->channels != 1 && img->channels != 3))
        return cz_error_set(CZ_ERR_INVALID_ARG, "cz_png_encode: bad image or output");
    *out = NULL;
    *out_len = 0;
    spng_ctx *ctx = spng_ctx_new(SPNG_CTX_ENCODER);
    if (!ctx) return cz_error_set(CZ_ERR_NOMEM, "PNG: cannot create encoder");
    struct spng_ihdr ih;
    memset(&ih, 0, sizeof ih);
    ih.width = (uint32_t)img->width;
    ih.height = (uint32_t)img->height;
    ih.bit_depth = 8;
    ih.color_type =
        img->channels == 1 ? SPNG_COLOR_TYPE_GRAYSCALE : SPNG_COLOR_TYPE_TRUECOLOR;
    const size_t n = (size_t)img->width * (size_t)img->height * (size_t)img->channels;
    int e = spng_set_option(ctx, SPNG_ENCODE_TO_BUFFER, 1);
    if (!e) e = spng_set_ihdr(ctx, &ih);
    if (!e) e = spng_encode_image(ctx, img->px, n, SPNG_FMT_PNG, SPNG_ENCODE_FINALIZE);
    if (e) {
        spng_ctx_free(ctx);
        return cz_error_set(e == SPNG_EMEM ? CZ_ERR_NOMEM : CZ_ERR_INTERNAL,
                            "PNG encoder: %s", spng_strerror(e));
    }
    size_t len = 0;
    void *buf = spng_get_png_buffer(ctx, &len, &e);
    spng_ctx_free(ctx);
    if (!buf || e) {
        free(buf);
        return cz_error_set(CZ_ERR_INTERNAL, "PNG encoder: %s", spng_strerror(e));
    }
    *out = buf;
    *out_len = len;
    return CZ_OK;
}
