/* image.h: images in and out of the engine.
 *
 *  - codecs: JPEG (libjpeg-turbo) and PNG (libspng) decode/encode to 8-bit interleaved
 *    gray or RGB. Dimensions and pixel count are checked from the header before any pixel
 *    buffer is allocated. Alpha is composited on white; palette, 1-16 bit, interlaced PNG,
 *    grayscale, CMYK/YCCK and progressive JPEG (scan count capped) are handled; EXIF
 *    orientation is applied so the decoded image is upright.
 *  - color: sRGB <-> CIE Lab (D65).
 *  - geometry for the network: render size, reflect padding, crop, bilinear resize, and the
 *    merge of predicted ab with the ORIGINAL full-resolution L (output luminance == input
 *    luminance up to 8-bit rounding).
 *
 * All functions are reentrant and thread-safe (no global state). Buffers returned are owned
 * by the caller (free with cz_image_free / free()).
 * Tested by tests/unit/test_image_codec.c and tests/unit/test_image_color.c. */
#ifndef CZ_IMAGE_H
#define CZ_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

typedef enum cz_image_format {
    CZ_FMT_UNKNOWN = 0,
    CZ_FMT_JPEG = 1,
    CZ_FMT_PNG = 2
} cz_image_format;

/* 8-bit image, rows top to bottom, `channels` interleaved samples per pixel (1 = gray, 3 = RGB),
 * stride = width * channels. */
typedef struct cz_image {
    int width, height, channels;
    uint8_t *px;
} cz_image;

typedef struct cz_image_limits {
    uint64_t max_pixels;  /* width*height limit, checked from the header (default 40e6) */
    int max_dimension;    /* limit on either side (default 65535) */
    int max_jpeg_scans;   /* progressive JPEG scan cap (default 64) */
} cz_image_limits;

void cz_image_limits_default(cz_image_limits *lim);

/* Identifies the format from magic bytes alone (never from a file name or MIME type). */
cz_image_format cz_image_sniff(const void *data, size_t len);
const char *cz_image_format_name(cz_image_format f); /* "jpeg", "png", "unknown" */
/* Parses "jpeg"/"jpg"/"png"; CZ_FMT_UNKNOWN otherwise. */
cz_image_format cz_image_format_parse(const char *name);

/* Decodes a JPEG or PNG held in memory. On success `out` holds a 1- or 3-channel upright
 * image (grayscale sources stay 1-channel). `fmt` (may be NULL) receives the sniffed format.
 * Errors: CZ_ERR_UNSUPPORTED_FORMAT, CZ_ERR_CORRUPT_IMAGE, CZ_ERR_TRUNCATED_IMAGE,
 * CZ_ERR_TOO_MANY_PIXELS, CZ_ERR_EMPTY_IMAGE, CZ_ERR_NOMEM; the error detail says what. */
cz_status cz_image_decode(const void *data, size_t len, const cz_image_limits *lim,
                          cz_image *out, cz_image_format *fmt);
/* As cz_image_decode, but a JPEG larger than needed is decoded at a reduced scale 1/8, 1/4 or
 * 1/2 (libjpeg's DCT-domain scaling: each output pixel averages its share of the source, and
 * the decode costs a fraction of a full one): the smallest that keeps both sides at least
 * `min_side` (sides ceil(side * N / 8)). A PNG, a JPEG with a side already under min_side, and
 * min_side <= 0 decode at full size. The pixel limits apply to the file's own size. For callers
 * that shrink the image anyway (the training loader). */
cz_status cz_image_decode_reduced(const void *data, size_t len, const cz_image_limits *lim,
                                  int min_side, cz_image *out, cz_image_format *fmt);
/* Reads only the header: dimensions (after EXIF orientation) without decoding pixels. */
cz_status cz_image_probe(const void *data, size_t len, const cz_image_limits *lim, int *width,
                         int *height, cz_image_format *fmt);
/* Encodes to JPEG (quality 1..100) or PNG (quality ignored). *out is malloc'd. */
cz_status cz_image_encode(const cz_image *img, cz_image_format fmt, int quality, uint8_t **out,
                          size_t *out_len);
/* The same; for JPEG, jpeg_optimize != 0 computes Huffman tables for this image (a second pass
 * over its coefficients: 8-10% fewer bytes, and encoding takes about 2.6x as long; same
 * pixels once decoded). cz_image_encode uses the standard tables. */
cz_status cz_image_encode_ex(const cz_image *img, cz_image_format fmt, int quality, int jpeg_optimize,
                             uint8_t **out, size_t *out_len);
cz_status cz_image_alloc(cz_image *img, int width, int height, int channels);
void cz_image_free(cz_image *img); /* frees px, zeroes the struct; NULL-safe */

/* ---- per-format entry points (cz_image_decode / _probe / _encode dispatch to these) ----
 * `lim` may be NULL (defaults); a field <= 0 also means its default. */
cz_status cz_jpeg_decode(const void *data, size_t len, const cz_image_limits *lim, cz_image *out);
cz_status cz_jpeg_decode_reduced(const void *data, size_t len, const cz_image_limits *lim, int min_side,
                                 cz_image *out);
cz_status cz_jpeg_probe(const void *data, size_t len, const cz_image_limits *lim, int *width,
                        int *height);
cz_status cz_jpeg_encode(const cz_image *img, int quality, int optimize, uint8_t **out, size_t *out_len);
cz_status cz_png_decode(const void *data, size_t len, const cz_image_limits *lim, cz_image *out);
cz_status cz_png_probe(const void *data, size_t len, const cz_image_limits *lim, int *width,
                       int *height);
/* 8-bit gray or RGB PNG; *out is malloc'd. */
cz_status cz_png_encode(const cz_image *img, uint8_t **out, size_t *out_len);
/* Checks header dimensions against `lim` (NULL = defaults): CZ_ERR_EMPTY_IMAGE for a zero
 * side, CZ_ERR_TOO_MANY_PIXELS past max_dimension or max_pixels. Sets the error detail. */
cz_status cz_image_check_limits(uint64_t width, uint64_t height, const cz_image_limits *lim);

/* ---- EXIF orientation ---- */
/* Orientation (1..8) from an EXIF block: either a JPEG APP1 payload starting with "Exif\0\0"
 * or a bare TIFF header ("II*\0" / "MM\0*"). Returns 1 when absent, malformed or out of
 * range. Bounds-checked against `len`; safe on hostile input. */
int cz_exif_orientation(const void *exif, size_t len);
/* Applies EXIF orientation `o` (1..8) so the image becomes upright; 5..8 swap width and
 * height. Replaces img->px (CZ_ERR_NOMEM leaves img untouched). Other values: no-op. */
cz_status cz_image_apply_orientation(cz_image *img, int orientation);

/* ---- color ---- */
/* sRGB 8-bit -> CIE Lab (D65): L in [0,100], a/b roughly [-110, 110]. */
void cz_srgb8_to_lab(const uint8_t rgb[3], float lab[3]);
/* n interleaved 8-bit RGB pixels -> L, a, b planes, bit-identical to cz_srgb8_to_lab on each
 * pixel and several times faster (vectorized; about 5x in a micro-benchmark). */
void cz_srgb8_row_to_lab(const uint8_t *rgb, size_t n, float *L, float *a, float *b);
/* The same conversion in float (within 2e-4 in L, a and b of cz_srgb8_to_lab; the test checks
 * all 2^24 colours), several times faster again: for the training loader, where the last bits
 * do not matter and the conversion was a large share of a sample's CPU time. */
void cz_srgb8_row_to_lab_f(const uint8_t *rgb, size_t n, float *L, float *a, float *b);
/* Lab -> sRGB 8-bit, gamut-clipped. */
void cz_lab_to_srgb8(const float lab[3], uint8_t rgb[3]);
/* n pixels from L, a, b planes -> interleaved 8-bit RGB, byte-identical to cz_lab_to_srgb8 on
 * each pixel (the same double arithmetic, four pixels at a time; image_color.c). */
void cz_lab_row_to_srgb8(const float *L, const float *a, const float *b, size_t n, uint8_t *rgb);
/* The tables of lab_exact.h the host conversions use (built on first use, immutable), for a
 * device that must give the same bytes (the cuda backend copies them once). */
struct cz_lab_exact_tab;
const struct cz_lab_exact_tab *cz_lab_exact_tables(void);
/* The cube root the Lab conversions use, for t > k_eps = 216/24389 (and any finite t > 0). */
double cz_cbrt_pos(double t);
/* Float sRGB in [0,1] <-> Lab (for rgb-mode models). */
void cz_srgbf_to_lab(const float rgb[3], float lab[3]);
void cz_lab_to_srgbf(const float lab[3], float rgb[3]);
/* Full-resolution L plane (width*height floats) of an image; color images use their luminance,
 * computed in float (within 3.1e-5 of the double conversion; grayscale images take a table). */
cz_status cz_image_lightness(const cz_image *img, float *L);

/* ---- geometry for the network ---- */
/* How an image of src_w x src_h is placed in the network's input: scaled so the long side is
 * `render` (never stretched: aspect kept, each side rounded, at least 1), then reflect-padded
 * to net_w x net_h, each a multiple of `multiple` (2^depth), with the scaled image at
 * (off_x, off_y). */
typedef struct cz_render_geom {
    int src_w, src_h;
    int scaled_w, scaled_h;
    int net_w, net_h;
    int off_x, off_y;
} cz_render_geom;

cz_status cz_render_geom_compute(int src_w, int src_h, int render, int multiple,
                                 cz_render_geom *g);
/* Bilinear resize of one float plane (half-pixel centers, like OpenCV INTER_LINEAR without
 * antialiasing when upsampling; area-averaging when downsampling by more than 2x is
 * acceptable as long as it is documented in the implementation). */
void cz_resize_plane(const float *src, int sw, int sh, float *dst, int dw, int dh);
/* The same resize computed one output pixel at a time: bit-identical to cz_resize_plane, slower;
 * the reference cz_resize_plane is tested against. */
void cz_resize_plane_pixelwise(const float *src, int sw, int sh, float *dst, int dw, int dh);
/* The filter of cz_resize_plane along one axis of sn -> dn samples, as a table for code that
 * resamples other layouts (the training loader's interleaved 8-bit RGB): output d is the sum of
 * w[d * ntaps + k] * source[first[d] + k] for k < ntaps. Every output gets the same ntaps (its
 * own taps plus zero weights, the window kept inside [0, sn)); cz_resample_ntaps(sn, dn) is the
 * smallest such count, at most sn (0 for a non-positive size). The weights are cz_resize_plane's,
 * rounded to float: they sum to 1 within float rounding. `first` holds dn entries, w dn * ntaps;
 * nothing is written for bad arguments (ntaps < 1 or > sn). */
int cz_resample_ntaps(int sn, int dn);
void cz_resample_taps(int sn, int dn, int ntaps, int *first, float *w);
/* A 3-channel interleaved 8-bit image (sw x sh, rows of 3 * sw bytes) resized to dw x dh with
 * the same filter (cz_resample_taps), computed in float instead of double, each value rounded
 * half to even into [0, 255]. For the training loader, where speed matters and the last bit does
 * not. Allocates a row and the tap tables per call: CZ_ERR_NOMEM, CZ_ERR_INVALID_ARG. */
cz_status cz_resize_rgb8(const uint8_t *src, int sw, int sh, uint8_t *dst, int dw, int dh);
/* Reflect padding (like numpy 'reflect': edge not repeated) of a sw x sh plane into a
 * dw x dh plane at (ox, oy). Requires pads smaller than the source side, otherwise repeats
 * the reflection (handles any size). */
void cz_pad_reflect_plane(const float *src, int sw, int sh, float *dst, int dw, int dh, int ox,
                          int oy);
/* Crop a cw x ch window at (ox, oy) out of a sw-wide plane. */
void cz_crop_plane(const float *src, int sw, float *dst, int cw, int ch, int ox, int oy);

/* Network input for lab-mode models: L plane (full resolution, [0,100]) -> net_w x net_h
 * plane in [-1, 1] (L/50 - 1), resized and reflect-padded per `g`. */
void cz_render_input_L(const float *L_full, const cz_render_geom *g, float *net_in);
/* Final merge: ab planes at network resolution (2 planes of net_w x net_h, in Lab units) are
 * cropped to the scaled image, bilinearly upsampled to the source size, and combined with the
 * source's own full-resolution L (L_full) into an RGB image `out` (allocated here). */
cz_status cz_render_merge_ab(const float *L_full, const float *ab_net, const cz_render_geom *g,
                             cz_image *out);

#endif
