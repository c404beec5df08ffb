/* image_jpeg.c: JPEG decode / probe / encode on the libjpeg API (libjpeg-turbo).
 *
 * Decode policy:
 *  - libjpeg errors longjmp back to us (nothing calls exit() or prints); the library message
 *    becomes the error detail.
 *  - The header is read first; width, height and width*height are checked against the
 *    limits before jpeg_start_decompress (which is where libjpeg allocates full-image
 *    coefficient buffers for progressive files) and before our pixel buffer exists.
 *  - Gray stays 1 channel; YCbCr/RGB -> RGB; CMYK/YCCK -> RGB through a naive ink model
 *    (R = (1-C)(1-K), ...). A file with an Adobe APP14 marker is taken to store inverted
 *    CMYK (Photoshop's convention, 255 = no ink), one without it plain CMYK.
 *  - Scans are counted by a progress monitor; more than max_jpeg_scans -> CORRUPT.
 *  - Warnings: "Premature end of JPEG file" while pixels are still being decoded ->
 *    TRUNCATED (libjpeg would pad with gray); if it only shows up after every row was
 *    delivered (a missing EOI marker) the image is complete and accepted. Data-corruption
 *    warnings (bad Huffman code, premature end of data segment, resync) -> CORRUPT.
 *    Harmless ones (extraneous bytes before a marker, unknown Adobe transform / JFIF version,
 *    bad ICC marker, inconsistent progression) are ignored.
 *  - EXIF orientation (APP1 "Exif") is applied after decoding so the output is upright.
 *
 * Threading: reentrant; all state lives on the caller's stack. Buffers returned are malloc'd
 * and owned by the caller.
 *
 * Tested by tests/unit/test_image_codec.c (round trips, gray, CMYK with and without the
 * Adobe marker, progressive + scan cap, EXIF 3/6, header limits, truncation, mutations). */
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jerror.h>
#include <jpeglib.h>

#include "image.h"

typedef struct jpeg_guard {
    struct jpeg_error_mgr pub; /* first member: cinfo->err points here */
    struct jpeg_progress_mgr progress;
    jmp_buf jb;
    int max_scans;
    int phase;         /* 0 header, 1 pixel data, 2 after the last row */
    int eof_phase;     /* phase of the first "premature end" warning, -1 none */
    int corrupt;       /* count of data-corruption warnings */
    cz_status forced;  /* status chosen before longjmp (scan cap), CZ_OK otherwise */
    char msg[JMSG_LENGTH_MAX];     /* library message of the fatal error */
    char warn_msg[JMSG_LENGTH_MAX];/* first data-corruption warning */
    unsigned char *enc_buf;        /* encoder: jpeg_mem_dest buffer (libjpeg updates it) */
    unsigned long enc_size;
} jpeg_guard;

static void on_error_exit(j_common_ptr cinfo) {
    jpeg_guard *g = (jpeg_guard *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, g->msg);
    longjmp(g->jb, 1);
}

static void on_output_message(j_common_ptr cinfo) { (void)cinfo; /* never print */ }

static void on_emit_message(j_common_ptr cinfo, int level) {
    jpeg_guard *g = (jpeg_guard *)cinfo->err;
    if (level >= 0) return; /* trace messages */
    cinfo->err->num_warnings++;
    switch (cinfo->err->msg_code) {
    case JWRN_JPEG_EOF:
        if (g->eof_phase < 0) g->eof_phase = g->phase;
        break;
    case JWRN_EXTRANEOUS_DATA:
    case JWRN_ADOBE_XFORM:
    case JWRN_JFIF_MAJOR:
    case JWRN_BOGUS_ICC:
    case JWRN_BOGUS_PROGRESSION:
    case JWRN_TOO_MUCH_DATA:
        break;
    default:
        if (g->corrupt++ == 0) (*cinfo->err->format_message)(cinfo, g->warn_msg);
        break;
    }
}

static void on_progress(j_common_ptr cinfo) {
    if (!cinfo->is_decompressor) return;
    jpeg_guard *g = (jpeg_guard *)cinfo->err;
    j_decompress_ptr d = (j_decompress_ptr)cinfo;
    if (d->input_scan_number > g->max_scans) {
        g->forced = CZ_ERR_CORRUPT_IMAGE;
        snprintf(g->msg, sizeof g->msg, "JPEG has more than %d scans (max_jpeg_scans)",
                 g->max_scans);
        longjmp(g->jb, 1);
    }
}

static void guard_init(jpeg_guard *g, const cz_image_limits *lim) {
    memset(g, 0, sizeof *g);
    jpeg_std_error(&g->pub);
    g->pub.error_exit = on_error_exit;
    g->pub.emit_message = on_emit_message;
    g->pub.output_message = on_output_message;
    g->progress.progress_monitor = on_progress;
    cz_image_limits d;
    cz_image_limits_default(&d);
    g->max_scans = lim && lim->max_jpeg_scans > 0 ? lim->max_jpeg_scans : d.max_jpeg_scans;
    g->eof_phase = -1;
    g->forced = CZ_OK;
}

/* Status for a fatal libjpeg error (called after the longjmp). */
static cz_status guard_status(const jpeg_guard *g) {
    if (g->forced != CZ_OK) return cz_error_set(g->forced, "%s", g->msg);
    switch (g->pub.msg_code) {
    case JERR_OUT_OF_MEMORY:
        return cz_error_set(CZ_ERR_NOMEM, "JPEG decoder: %s", g->msg);
    case JERR_EMPTY_IMAGE:
        return cz_error_set(CZ_ERR_EMPTY_IMAGE, "JPEG: %s", g->msg);
    case JERR_IMAGE_TOO_BIG:
    case JERR_WIDTH_OVERFLOW:
        return cz_error_set(CZ_ERR_TOO_MANY_PIXELS, "JPEG: %s", g->msg);
    case JERR_BAD_PRECISION:
    case JERR_SOF_UNSUPPORTED:
    case JERR_NOT_COMPILED:
        if (g->eof_phase < 0) return cz_error_set(CZ_ERR_UNSUPPORTED_FORMAT, "JPEG: %s", g->msg);
        break;
    default: break;
    }
    if (g->eof_phase >= 0)
        return cz_error_set(CZ_ERR_TRUNCATED_IMAGE, "JPEG data ends early (%s)", g->msg);
    return cz_error_set(CZ_ERR_CORRUPT_IMAGE, "JPEG: %s", g->msg);
}

static int exif_orientation_of(j_decompress_ptr ci) {
    for (jpeg_saved_marker_ptr m = ci->marker_list; m; m = m->next) {
        if (m->marker != JPEG_APP0 + 1 || m->data_length < 6) continue;
        if (memcmp(m->data, "Exif\0\0", 6) != 0) continue;
        return cz_exif_orientation(m->data, m->data_length);
    }
    return 1;
}

/* Common header step of decode and probe: set up the source and read up to the first SOS. */
static void read_header_checked(j_decompress_ptr ci, jpeg_guard *g, const void *data,
                                size_t len) {
    ci->err = &g->pub;
    jpeg_create_decompress(ci);
    ci->progress = &g->progress;
    jpeg_mem_src(ci, (const unsigned char *)data, (unsigned long)len);
    jpeg_save_markers(ci, JPEG_APP0 + 1, 0xffff);
    g->phase = 0;
    (void)jpeg_read_header(ci, TRUE);
}

cz_status cz_jpeg_probe(const void *data, size_t len, const cz_image_limits *lim, int *width,
                        int *height) {
    struct jpeg_decompress_struct ci;
    jpeg_guard g;
    if (!data || len == 0 || !width || !height)
        return cz_error_set(CZ_ERR_INVALID_ARG, "cz_jpeg_probe: NULL or empty argument");
    guard_init(&g, lim);
    memset(&ci, 0, sizeof ci);
    if (setjmp(g.jb)) {
        cz_status s = guard_status(&g);
        jpeg_destroy_decompress(&ci);
        return s;
    }
    read_header_checked(&ci, &g, data, len);
    int w = (int)ci.image_width, h = (int)ci.image_height;
    int o = exif_orientation_of(&ci);
    jpeg_destroy_decompress(&ci);
    CZ_TRY(cz_image_check_limits((uint64_t)w, (uint64_t)h, lim));
    *width = o >= 5 ? h : w;
    *height = o >= 5 ? w : h;
    return CZ_OK;
}

static inline uint8_t mul255(unsigned a, unsigned b) { return (uint8_t)((a * b + 127) / 255); }

/* The smallest N of 1, 2, 4 whose N/8 scale keeps both sides at least min_side, 8 if none.
 * libjpeg-turbo has SIMD inverse DCTs for these scales only; the others (3/8, 6/8, ...) go
 * through generic C code that makes the decode slower than a full-size one (bench_loader). */
static int reduced_scale(JDIMENSION w, JDIMENSION h, int min_side) {
    if (min_side <= 0) return 8;
    for (int n = 1; n < 8; n *= 2) {
        unsigned long long sw = ((unsigned long long)w * (unsigned)n + 7) / 8;
        unsigned long long sh = ((unsigned long long)h * (unsigned)n + 7) / 8;
        if (sw >= (unsigned long long)min_side && sh >= (unsigned long long)min_side) return n;
    }
    return 8;
}

cz_status cz_jpeg_decode(const void *data, size_t len, const cz_image_limits *lim, cz_image *out) {
    return cz_jpeg_decode_reduced(data, len, lim, 0, out);
}

cz_status cz_jpeg_decode_reduced(const void *data, size_t len, const cz_image_limits *lim, int min_side,
                                 cz_image *out) {
    struct jpeg_decompress_struct ci;
    jpeg_guard g;
    uint8_t *volatile px = NULL;
    uint8_t *volatile row4 = NULL;
    if (!out) return cz_error_set(CZ_ERR_INVALID_ARG, "cz_jpeg_decode: NULL output");
    memset(out, 0, sizeof *out);
    if (!data || len == 0)
        return cz_error_set(CZ_ERR_EMPTY_IMAGE, "empty input: 0 bytes of JPEG data");
    guard_init(&g, lim);
    memset(&ci, 0, sizeof ci);
    memset(out, 0, sizeof *out);
    if (setjmp(g.jb)) {
        cz_status s = guard_status(&g);
        jpeg_destroy_decompress(&ci);
        free(px);
        free(row4);
        return s;
    }
    read_header_checked(&ci, &g, data, len);

    cz_status s = cz_image_check_limits(ci.image_width, ci.image_height, lim);
    if (s != CZ_OK) {
        jpeg_destroy_decompress(&ci);
        return s;
    }
    int cmyk = 0, inverted = 0, outc;
    switch (ci.jpeg_color_space) {
    case JCS_GRAYSCALE:
        ci.out_color_space = JCS_GRAYSCALE;
        outc = 1;
        break;
    case JCS_YCbCr:
    case JCS_RGB:
        ci.out_color_space = JCS_RGB;
        outc = 3;
        break;
    case JCS_CMYK:
    case JCS_YCCK:
        ci.out_color_space = JCS_CMYK; /* libjpeg turns YCCK into CMYK */
        cmyk = 1;
        inverted = ci.saw_Adobe_marker ? 1 : 0;
        outc = 3;
        break;
    default: {
        int nc = ci.num_components;
        jpeg_destroy_decompress(&ci);
        return cz_error_set(CZ_ERR_UNSUPPORTED_FORMAT,
                            "JPEG with %d components in an unknown color space", nc);
    }
    }
    const int orientation = exif_orientation_of(&ci);
    const int scale = reduced_scale(ci.image_width, ci.image_height, min_side);
    const JDIMENSION want_w = (ci.image_width * (JDIMENSION)scale + 7) / 8;
    const JDIMENSION want_h = (ci.image_height * (JDIMENSION)scale + 7) / 8;
    ci.scale_num = (unsigned)scale;
    ci.scale_denom = 8;

    g.phase = 1;
    (void)jpeg_start_decompress(&ci);
    const int w = (int)ci.output_width, h = (int)ci.output_height;
    if (ci.output_components != (cmyk ? 4 : outc) || ci.output_width != want_w || ci.output_height != want_h) {
        jpeg_destroy_decompress(&ci);
        return cz_error_set(CZ_ERR_INTERNAL, "JPEG: unexpected output layout %dx%dx%d", w, h,
                            ci.output_components);
    }
    px = malloc((size_t)w * (size_t)h * (size_t)outc);
    if (cmyk) row4 = malloc((size_t)w * 4);
    if (!px || (cmyk && !row4)) {
        jpeg_destroy_decompress(&ci);
        free(px);
        free(row4);
        return cz_error_set(CZ_ERR_NOMEM, "JPEG: %dx%dx%d pixel buffer", w, h, outc);
    }
    const size_t stride = (size_t)w * (size_t)outc;
    while (ci.output_scanline < ci.output_height) {
        size_t y = ci.output_scanline;
        if (!cmyk) {
            JSAMPROW rows[16];
            JDIMENSION n = ci.output_height - ci.output_scanline;
            if (n > 16) n = 16;
            for (JDIMENSION i = 0; i < n; i++) rows[i] = px + (y + i) * stride;
            if (jpeg_read_scanlines(&ci, rows, n) == 0) break;
        } else {
            JSAMPROW r = row4;
            if (jpeg_read_scanlines(&ci, &r, 1) == 0) break;
            uint8_t *d = px + y * stride;
            for (int x = 0; x < w; x++) {
                const uint8_t *q = row4 + 4 * (size_t)x;
                unsigned c = q[0], m = q[1], yy = q[2], k = q[3];
                if (!inverted) {
                    c = 255 - c;
                    m = 255 - m;
                    yy = 255 - yy;
                    k = 255 - k;
                }
                /* now each value is "255 - ink": R = (1-C)(1-K) etc. */
                d[3 * x + 0] = mul255(c, k);
                d[3 * x + 1] = mul255(m, k);
                d[3 * x + 2] = mul255(yy, k);
            }
        }
    }
    const int rows_done = ci.output_scanline == ci.output_height;
    g.phase = 2;
    if (rows_done) (void)jpeg_finish_decompress(&ci);
    jpeg_destroy_decompress(&ci);
    free(row4);
    row4 = NULL;

    if (!rows_done || (g.eof_phase >= 0 && g.eof_phase < 2)) {
        free(px);
        return cz_error_set(CZ_ERR_TRUNCATED_IMAGE,
                            "JPEG data ends before the image does (%dx%d, premature end of file)",
                            w, h);
    }
    if (g.corrupt > 0) {
        free(px);
        return cz_error_set(CZ_ERR_CORRUPT_IMAGE, "JPEG: %s", g.warn_msg);
    }
    out->width = w;
    out->height = h;
    out->channels = outc;
    out->px = px;
    s = cz_image_apply_orientation(out, orientation);
    if (s != CZ_OK) cz_image_free(out);
    return s;
}

cz_status cz_jpeg_encode(const cz_image *img, int quality, int optimize, uint8_t **out, size_t *out_len) {
    struct jpeg_compress_struct ci;
    jpeg_guard g;
    if (!out || !out_len || !img || !img->px || img->width <= 0 || img->height <= 0 ||
        (img->channels != 1 && img->channels != 3))
        return cz_error_set(CZ_ERR_INVALID_ARG, "cz_jpeg_encode: bad image or output");
    if (quality < 1 || quality > 100)
        return cz_error_set(CZ_ERR_INVALID_ARG, "JPEG quality %d outside 1..100", quality);
    guard_init(&g, NULL);
    memset(&ci, 0, sizeof ci);
    *out = NULL;
    *out_len = 0;
    if (setjmp(g.jb)) {
        jpeg_destroy_compress(&ci);
        free(g.enc_buf); /* jpeg_mem_dest keeps its latest buffer here; never freed by libjpeg */
        return cz_error_set(g.pub.msg_code == JERR_OUT_OF_MEMORY ? CZ_ERR_NOMEM : CZ_ERR_INTERNAL,
                            "JPEG encoder: %s", g.msg);
    }
    ci.err = &g.pub;
    jpeg_create_compress(&ci);
    jpeg_mem_dest(&ci, &g.enc_buf, &g.enc_size);
    ci.image_width = (JDIMENSION)img->width;
    ci.image_height = (JDIMENSION)img->height;
    ci.input_components = img->channels;
    ci.in_color_space = img->channels == 1 ? JCS_GRAYSCALE : JCS_RGB;
    jpeg_set_defaults(&ci); /* RGB -> YCbCr 4:2:0 */
    jpeg_set_quality(&ci, quality, TRUE);
    ci.optimize_coding = optimize ? TRUE : FALSE;
    jpeg_start_compress(&ci, TRUE);
    const size_t stride = (size_t)img->width * (size_t)img->channels;
    while (ci.next_scanline < ci.image_height) {
        JSAMPROW r = img->px + (size_t)ci.next_scanline * stride;
        (void)jpeg_write_scanlines(&ci, &r, 1);
    }
    jpeg_finish_compress(&ci);
    jpeg_destroy_compress(&ci);
    *out = g.enc_buf;
    *out_len = (size_t)g.enc_size;
    return CZ_OK;
}
