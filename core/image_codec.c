/* image_codec.c: the format-neutral half of the image codecs: limits, magic-byte sniffing,
 * format names, pixel buffer alloc/free, and dispatch of decode / probe / encode to the
 * per-format files (image_jpeg.c, image_png.c).
 *
 * Threading: no global state; every function is reentrant. Ownership: cz_image buffers are
 * malloc'd here and owned by the caller (cz_image_free); encoded bytes are malloc'd and freed
 * by the caller with free().
 *
 * Empty input (0 bytes) is CZ_ERR_EMPTY_IMAGE; input that is a proper prefix of a JPEG or PNG
 * signature is CZ_ERR_TRUNCATED_IMAGE; anything else without a known signature is
 * CZ_ERR_UNSUPPORTED_FORMAT.
 *
 * Tested by tests/unit/test_image_codec.c. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "image.h"

static const uint8_t k_png_sig[8] = {0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a};
static const uint8_t k_jpeg_sig[3] = {0xff, 0xd8, 0xff};

void cz_image_limits_default(cz_image_limits *lim) {
    if (!lim) return;
    lim->max_pixels = 40000000ull;
    lim->max_dimension = 65535;
    lim->max_jpeg_scans = 64;
}

cz_image_format cz_image_sniff(const void *data, size_t len) {
    const uint8_t *p = data;
    if (!p) return CZ_FMT_UNKNOWN;
    if (len >= sizeof k_jpeg_sig && memcmp(p, k_jpeg_sig, sizeof k_jpeg_sig) == 0)
        return CZ_FMT_JPEG;
    if (len >= sizeof k_png_sig && memcmp(p, k_png_sig, sizeof k_png_sig) == 0)
        return CZ_FMT_PNG;
    return CZ_FMT_UNKNOWN;
}

/* Non-zero when the whole (short) input is a proper prefix of a known signature. */
static int is_signature_prefix(const uint8_t *p, size_t len) {
    if (len > 0 && len < sizeof k_jpeg_sig && memcmp(p, k_jpeg_sig, len) == 0) return 1;
    if (len > 0 && len < sizeof k_png_sig && memcmp(p, k_png_sig, len) == 0) return 1;
    return 0;
}

const char *cz_image_format_name(cz_image_format f) {
    switch (f) {
    case CZ_FMT_JPEG: return "jpeg";
    case CZ_FMT_PNG: return "png";
    default: return "unknown";
    }
}

static int ieq(const char *a, const char *b) {
    for (; *a && *b; a++, b++) {
        char ca = *a, cb = *b;
        if (ca >= 'A' && ca <= 'Z') ca = (char)(ca - 'A' + 'a');
        if (ca != cb) return 0;
    }
    return *a == *b;
}

cz_image_format cz_image_format_parse(const char *name) {
    if (!name) return CZ_FMT_UNKNOWN;
    if (ieq(name, "jpeg") || ieq(name, "jpg")) return CZ_FMT_JPEG;
    if (ieq(name, "png")) return CZ_FMT_PNG;
    return CZ_FMT_UNKNOWN;
}

cz_status cz_image_check_limits(uint64_t width, uint64_t height, const cz_image_limits *lim) {
    cz_image_limits d;
    cz_image_limits_default(&d);
    uint64_t max_px = lim && lim->max_pixels > 0 ? lim->max_pixels : d.max_pixels;
    uint64_t max_dim =
        (uint64_t)(lim && lim->max_dimension > 0 ? lim->max_dimension : d.max_dimension);
    if (width == 0 || height == 0)
        return cz_error_set(CZ_ERR_EMPTY_IMAGE, "image header declares %llux%llu pixels",
                            (unsigned long long)width, (unsigned long long)height);
    if (width > max_dim || height > max_dim)
        return cz_error_set(CZ_ERR_TOO_MANY_PIXELS,
                            "image is %llux%llu: a side exceeds the limit of %llu pixels",
                            (unsigned long long)width, (unsigned long long)height,
                            (unsigned long long)max_dim);
    /* Both sides are <= max_dim <= INT_MAX, so the product fits in 64 bits. */
    if (width * height > max_px)
        return cz_error_set(CZ_ERR_TOO_MANY_PIXELS,
                            "image is %llux%llu = %llu pixels, limit is %llu",
                            (unsigned long long)width, (unsigned long long)height,
                            (unsigned long long)(width * height), (unsigned long long)max_px);
    return CZ_OK;
}

cz_status cz_image_alloc(cz_image *img, int width, int height, int channels) {
    if (!img) return cz_error_set(CZ_ERR_INVALID_ARG, "cz_image_alloc: NULL image");
    memset(img, 0, sizeof *img);
    if (width <= 0 || height <= 0)
        return cz_error_set(CZ_ERR_EMPTY_IMAGE, "cz_image_alloc: %dx%d", width, height);
    if (channels != 1 && channels != 3)
        return cz_error_set(CZ_ERR_INVALID_ARG, "cz_image_alloc: %d channels (1 or 3)",
                            channels);
    uint64_t n = (uint64_t)width * (uint64_t)height * (uint64_t)channels;
    if (n > (uint64_t)SIZE_MAX)
        return cz_error_set(CZ_ERR_TOO_LARGE, "cz_image_alloc: %dx%dx%d does not fit", width,
                            height, channels);
    img->px = malloc((size_t)n);
    if (!img->px)
        return cz_error_set(CZ_ERR_NOMEM, "cz_image_alloc: %llu bytes", (unsigned long long)n);
    img->width = width;
    img->height = height;
    img->channels = channels;
    return CZ_OK;
}

void cz_image_free(cz_image *img) {
    if (!img) return;
    free(img->px);
    memset(img, 0, sizeof *img);
}

/* Shared front end of decode and probe: argument checks and format identification. */
static cz_status identify(const void *data, size_t len, cz_image_format *f) {
    *f = CZ_FMT_UNKNOWN;
    if (!data && len > 0) return cz_error_set(CZ_ERR_INVALID_ARG, "image data is NULL");
    if (len == 0) return cz_error_set(CZ_ERR_EMPTY_IMAGE, "empty input: 0 bytes of image data");
    *f = cz_image_sniff(data, len);
    if (*f != CZ_FMT_UNKNOWN) return CZ_OK;
    if (is_signature_prefix(data, len))
        return cz_error_set(CZ_ERR_TRUNCATED_IMAGE,
                            "input is %zu bytes and ends inside the JPEG/PNG signature", len);
    const uint8_t *p = data;
    return cz_error_set(CZ_ERR_UNSUPPORTED_FORMAT,
                        "not a JPEG or PNG (first bytes %02x %02x %02x %02x)", p[0],
                        len > 1 ? p[1] : 0, len > 2 ? p[2] : 0, len > 3 ? p[3] : 0);
}

cz_status cz_image_decode_reduced(const void *data, size_t len, const cz_image_limits *lim,
                                  int min_side, cz_image *out, cz_image_format *fmt) {
    if (fmt) *fmt = CZ_FMT_UNKNOWN;
    if (!out) return cz_error_set(CZ_ERR_INVALID_ARG, "cz_image_decode: NULL output");
    memset(out, 0, sizeof *out);
    cz_image_format f;
    cz_status s = identify(data, len, &f);
    if (fmt) *fmt = f;
    if (s != CZ_OK) return s;
    return f == CZ_FMT_JPEG ? cz_jpeg_decode_reduced(data, len, lim, min_side, out)
                            : cz_png_decode(data, len, lim, out);
}

cz_status cz_image_decode(const void *data, size_t len, const cz_image_limits *lim,
                          cz_image *out, cz_image_format *fmt) {
    return cz_image_decode_reduced(data, len, lim, 0, out, fmt);
}

cz_status cz_image_probe(const void *data, size_t len, const cz_image_limits *lim, int *width,
                         int *height, cz_image_format *fmt) {
    if (fmt) *fmt = CZ_FMT_UNKNOWN;
    int w = 0, h = 0;
    cz_image_format f;
    cz_status s = identify(data, len, &f);
    if (fmt) *fmt = f;
    if (s == CZ_OK)
        s = f == CZ_FMT_JPEG ? cz_jpeg_probe(data, len, lim, &w, &h)
                             : cz_png_probe(data, len, lim, &w, &h);
    if (width) *width = s == CZ_OK ? w : 0;
    if (height) *height = s == CZ_OK ? h : 0;
    return s;
}

cz_status cz_image_encode(const cz_image *img, cz_image_format fmt, int quality, uint8_t **out,
                          size_t *out_len) {
    return cz_image_encode_ex(img, fmt, quality, 0, out, out_len);
}

cz_status cz_image_encode_ex(const cz_image *img, cz_image_format fmt, int quality, int jpeg_optimize,
                             uint8_t **out, size_t *out_len) {
    if (out) *out = NULL;
    if (out_len) *out_len = 0;
    if (!img || !out || !out_len)
        return cz_error_set(CZ_ERR_INVALID_ARG, "cz_image_encode: NULL argument");
    if (!img->px || img->width <= 0 || img->height <= 0)
        return cz_error_set(CZ_ERR_EMPTY_IMAGE, "cz_image_encode: empty image %dx%d",
                            img->width, img->height);
    if (img->channels != 1 && img->channels != 3)
        return cz_error_set(CZ_ERR_INVALID_ARG, "cz_image_encode: %d channels (1 or 3)",
                            img->channels);
    switch (fmt) {
    case CZ_FMT_JPEG:
        if (quality < 1 || quality > 100)
            return cz_error_set(CZ_ERR_INVALID_ARG, "JPEG quality %d outside 1..100", quality);
        return cz_jpeg_encode(img, quality, jpeg_optimize, out, out_len);
    case CZ_FMT_PNG: return cz_png_encode(img, out, out_len);
    default:
        return cz_error_set(CZ_ERR_UNSUPPORTED_FORMAT, "cannot encode format %d", (int)fmt);
    }
}
