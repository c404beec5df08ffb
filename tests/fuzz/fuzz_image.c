/* fuzz_image.c: libFuzzer driver for the image parsers (core/image_codec.c, image_jpeg.c,
 * image_png.c, image_exif.c).
 *
 * Each input is handed, as raw bytes, to:
 *   - cz_exif_orientation (the TIFF/EXIF reader also accepts a bare TIFF header),
 *   - cz_image_probe, with the fuzzing limits and with the library defaults,
 *   - cz_image_decode with small limits (4e6 pixels, 4096 per side, 16 JPEG scans), so one
 *     input never allocates more than a few tens of MB and libFuzzer's RSS cap stays meaningful.
 * Beyond "no crash, leak, UB or hang" it checks the contracts of image.h and aborts (a crash
 * for libFuzzer) when one does not hold:
 *   - statuses are valid cz_status codes; a failed probe reports 0x0; a failed decode leaves
 *     the output zeroed (nothing for the caller to free);
 *   - a decoded image is 1 or 3 channels with both sides within the limits and
 *     width*height <= max_pixels, and every pixel byte is readable (ASan checks the buffer);
 *   - the format reported by probe and decode is what the magic bytes say;
 *   - decode success implies probe success with the same (EXIF-rotated) dimensions;
 *   - for one input in eight (chosen from the input bytes, so replays are deterministic) of
 *     at most 2^20 pixels, the image is encoded to PNG and decoded again: PNG is lossless,
 *     so the round trip must give back the same size, channels and bytes;
 *   - for one input in 32 of at most 2^16 pixels, the image is encoded to JPEG (quality taken
 *     from the input) and decoded again: same size and channel count (JPEG is lossy).
 *
 * Run through tests/fuzz/run.sh (builds it with -fsanitize=fuzzer,address,undefined). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "image.h"
#include "status.h"

enum {
    FUZZ_MAX_DIM = 4096,
    FUZZ_MAX_SCANS = 16,
    FUZZ_ROUNDTRIP_MAX_PIXELS = 1 << 20,
    FUZZ_JPEG_MAX_PIXELS = 1 << 16
};
#define FUZZ_MAX_PIXELS 4000000ull

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* An invariant did not hold: say which, then abort so libFuzzer saves the input. */
static void fail(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("fuzz_image: invariant violated: ", stderr);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (last error detail: %s)\n", cz_error_detail());
    va_end(ap);
    abort();
}

static void check_status(cz_status s, const char *what) {
    if (s > 0 || s < CZ_STATUS_MIN_) fail("%s returned %d, not a cz_status", what, (int)s);
}

/* Reads every byte so ASan sees a short buffer; the sum keeps the loop from being elided. */
static unsigned touch(const uint8_t *p, size_t n) {
    unsigned sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += p[i];
    return sum;
}

/* Cheap deterministic choice from the input, so "once in a while" replays the same way. */
static unsigned pick(const uint8_t *data, size_t size) {
    unsigned h = (unsigned)size * 2654435761u;
    if (size) h ^= data[size / 2] ^ (unsigned)data[size - 1] << 8;
    return h ^ (h >> 13);
}

static void png_roundtrip(const cz_image *img) {
    uint8_t *enc = NULL;
    size_t enc_len = 0;
    cz_status s = cz_image_encode(img, CZ_FMT_PNG, 0, &enc, &enc_len);
    check_status(s, "cz_image_encode");
    if (s == CZ_ERR_NOMEM) return;
    if (s != CZ_OK)
        fail("encoding a decoded %dx%dx%d image to PNG failed: %s", img->width, img->height, img->channels,
             cz_strerror(s));
    if (!enc || enc_len == 0) fail("PNG encoder returned an empty buffer");
    if (cz_image_sniff(enc, enc_len) != CZ_FMT_PNG) fail("encoded PNG has no PNG signature");

    cz_image back;
    cz_image_format f;
    s = cz_image_decode(enc, enc_len, NULL, &back, &f);
    check_status(s, "cz_image_decode (round trip)");
    if (s != CZ_OK) fail("our own PNG does not decode: %s", cz_strerror(s));
    if (back.width != img->width || back.height != img->height || back.channels != img->channels)
        fail("PNG round trip changed the shape: %dx%dx%d -> %dx%dx%d", img->width, img->height, img->channels,
             back.width, back.height, back.channels);
    size_t n = (size_t)img->width * (size_t)img->height * (size_t)img->channels;
    if (memcmp(back.px, img->px, n) != 0) fail("PNG round trip changed pixel values");
    cz_image_free(&back);
    free(enc);
}

static void jpeg_roundtrip(const cz_image *img, int quality) {
    uint8_t *enc = NULL;
    size_t enc_len = 0;
    cz_status s = cz_image_encode(img, CZ_FMT_JPEG, quality, &enc, &enc_len);
    check_status(s, "cz_image_encode (jpeg)");
    if (s == CZ_ERR_NOMEM) return;
    if (s != CZ_OK)
        fail("encoding a decoded %dx%dx%d image to JPEG q%d failed: %s", img->width, img->height,
             img->channels, quality, cz_strerror(s));
    if (!enc || cz_image_sniff(enc, enc_len) != CZ_FMT_JPEG) fail("encoded JPEG has no JPEG signature");
    cz_image back;
    s = cz_image_decode(enc, enc_len, NULL, &back, NULL);
    check_status(s, "cz_image_decode (jpeg round trip)");
    if (s != CZ_OK) fail("our own JPEG does not decode: %s", cz_strerror(s));
    if (back.width != img->width || back.height != img->height || back.channels != img->channels)
        fail("JPEG round trip changed the shape: %dx%dx%d -> %dx%dx%d", img->width, img->height,
             img->channels, back.width, back.height, back.channels);
    cz_image_free(&back);
    free(enc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    cz_image_limits lim;
    memset(&lim, 0, sizeof lim);
    lim.max_pixels = FUZZ_MAX_PIXELS;
    lim.max_dimension = FUZZ_MAX_DIM;
    lim.max_jpeg_scans = FUZZ_MAX_SCANS;

    const cz_image_format sniffed = cz_image_sniff(data, size);

    /* The EXIF reader is a parser of its own: feed it the raw bytes as well. */
    int o = cz_exif_orientation(data, size);
    if (o < 1 || o > 8) fail("cz_exif_orientation returned %d", o);

    /* Header only, small limits. */
    int pw = -1, ph = -1;
    cz_image_format pf = (cz_image_format)-1;
    cz_status ps = cz_image_probe(data, size, &lim, &pw, &ph, &pf);
    check_status(ps, "cz_image_probe");
    if (pf != sniffed) fail("probe says format %d, magic bytes say %d", (int)pf, (int)sniffed);
    if (ps == CZ_OK) {
        if (sniffed == CZ_FMT_UNKNOWN) fail("probe accepted an input of unknown format");
        if (pw < 1 || ph < 1 || pw > FUZZ_MAX_DIM || ph > FUZZ_MAX_DIM ||
            (uint64_t)pw * (uint64_t)ph > FUZZ_MAX_PIXELS)
            fail("probe returned %dx%d, outside the limits", pw, ph);
    } else if (pw != 0 || ph != 0) {
        fail("failed probe (%s) left %dx%d", cz_strerror(ps), pw, ph);
    }

    /* Header only, default limits: must agree whenever the small-limit probe succeeded. */
    int dw = -1, dh = -1;
    cz_status ds = cz_image_probe(data, size, NULL, &dw, &dh, NULL);
    check_status(ds, "cz_image_probe (defaults)");
    if (ps == CZ_OK && (ds != CZ_OK || dw != pw || dh != ph))
        fail("probe with default limits (%s, %dx%d) disagrees with small limits (%dx%d)", cz_strerror(ds), dw,
             dh, pw, ph);

    /* Full decode, small limits. */
    cz_image img;
    memset(&img, 0xa5, sizeof img); /* decode must overwrite it either way */
    cz_image_format df = (cz_image_format)-1;
    cz_status s = cz_image_decode(data, size, &lim, &img, &df);
    check_status(s, "cz_image_decode");
    if (df != sniffed) fail("decode says format %d, magic bytes say %d", (int)df, (int)sniffed);
    if (s != CZ_OK) {
        if (img.px || img.width || img.height || img.channels)
            fail("failed decode (%s) left a non-empty image %dx%dx%d px=%p", cz_strerror(s), img.width,
                 img.height, img.channels, (void *)img.px);
        const char *d = cz_error_detail();
        if (!d || !*d) fail("decode failed with %s but left no error detail", cz_strerror(s));
        return 0;
    }

    if (!img.px) fail("decode succeeded without pixels");
    if (img.channels != 1 && img.channels != 3) fail("decoded %d channels", img.channels);
    if (img.width < 1 || img.height < 1 || img.width > FUZZ_MAX_DIM || img.height > FUZZ_MAX_DIM ||
        (uint64_t)img.width * (uint64_t)img.height > FUZZ_MAX_PIXELS)
        fail("decoded %dx%d, outside the limits", img.width, img.height);
    if (ps != CZ_OK || pw != img.width || ph != img.height)
        fail("decode gave %dx%d but probe said %s %dx%d", img.width, img.height, cz_strerror(ps), pw, ph);

    const size_t n = (size_t)img.width * (size_t)img.height * (size_t)img.channels;
    volatile unsigned sink = touch(img.px, n);
    (void)sink;

    if (pick(data, size) % 8 == 0 && (uint64_t)img.width * (uint64_t)img.height <= FUZZ_ROUNDTRIP_MAX_PIXELS)
        png_roundtrip(&img);
    if (pick(data, size) % 32 == 1 && (uint64_t)img.width * (uint64_t)img.height <= FUZZ_JPEG_MAX_PIXELS)
        jpeg_roundtrip(&img, 1 + (int)(data[size / 3] % 100));

    cz_image_free(&img);
    if (img.px || img.width) fail("cz_image_free did not zero the image");
    return 0;
}
