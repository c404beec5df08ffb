/* image_exif.c: EXIF orientation. A minimal TIFF reader that looks for tag 0x0112
 * (Orientation) in IFD0 only, and the pixel remapping that makes a decoded image upright.
 *
 * The reader treats its input as hostile: every offset and count is checked against the
 * buffer length before it is read, arithmetic is done in 64 bits, and anything unexpected
 * yields orientation 1 (leave the image as stored). It never allocates.
 *
 * Threading: reentrant, no global state. cz_image_apply_orientation replaces img->px with a
 * new malloc'd buffer and frees the old one.
 *
 * Tested by tests/unit/test_image_codec.c (hand-built EXIF blocks in both byte orders,
 * truncated/hostile blocks, JPEGs with orientation 3 and 6). */
#include <stdlib.h>
#include <string.h>

#include "image.h"

typedef struct {
    const uint8_t *p;
    size_t len;
    int big_endian;
} tiff_reader;

static int rd16(const tiff_reader *t, uint64_t off, unsigned *v) {
    if (off > t->len || t->len - off < 2) return 0;
    const uint8_t *q = t->p + off;
    *v = t->big_endian ? (unsigned)(q[0] << 8 | q[1]) : (unsigned)(q[1] << 8 | q[0]);
    return 1;
}

static int rd32(const tiff_reader *t, uint64_t off, uint32_t *v) {
    if (off > t->len || t->len - off < 4) return 0;
    const uint8_t *q = t->p + off;
    if (t->big_endian)
        *v = (uint32_t)q[0] << 24 | (uint32_t)q[1] << 16 | (uint32_t)q[2] << 8 | q[3];
    else
        *v = (uint32_t)q[3] << 24 | (uint32_t)q[2] << 16 | (uint32_t)q[1] << 8 | q[0];
    return 1;
}

int cz_exif_orientation(const void *exif, size_t len) {
    const uint8_t *p = exif;
    if (!p) return 1;
    /* Accept the JPEG APP1 form ("Exif" NUL NUL, then TIFF) or a bare TIFF header. */
    if (len >= 6 && memcmp(p, "Exif\0\0", 6) == 0) {
        p += 6;
        len -= 6;
    }
    if (len < 8) return 1;
    tiff_reader t = {p, len, 0};
    if (p[0] == 'I' && p[1] == 'I')
        t.big_endian = 0;
    else if (p[0] == 'M' && p[1] == 'M')
        t.big_endian = 1;
    else
        return 1;
    unsigned magic;
    uint32_t ifd0;
    if (!rd16(&t, 2, &magic) || magic != 42 || !rd32(&t, 4, &ifd0)) return 1;
    unsigned count;
    if (!rd16(&t, ifd0, &count)) return 1;
    /* Entries are 12 bytes each; never walk past the buffer whatever `count` claims. */
    for (unsigned i = 0; i < count; i++) {
        uint64_t e = (uint64_t)ifd0 + 2 + 12ull * i;
        unsigned tag, type;
        uint32_t n;
        if (!rd16(&t, e, &tag) || !rd16(&t, e + 2, &type) || !rd32(&t, e + 4, &n)) return 1;
        if (tag != 0x0112) continue;
        if (n < 1) return 1;
        unsigned v;
        if (type == 3) { /* SHORT: value sits in the first two bytes of the value field */
            if (!rd16(&t, e + 8, &v)) return 1;
        } else if (type == 4) { /* LONG: tolerated, some writers use it */
            uint32_t v32;
            if (!rd32(&t, e + 8, &v32)) return 1;
            v = v32 > 8 ? 0 : (unsigned)v32;
        } else {
            return 1;
        }
        return v >= 1 && v <= 8 ? (int)v : 1;
    }
    return 1;
}

cz_status cz_image_apply_orientation(cz_image *img, int o) {
    if (!img || !img->px) return cz_error_set(CZ_ERR_INVALID_ARG, "orientation: empty image");
    if (o < 2 || o > 8) return CZ_OK;
    const int w = img->width, h = img->height, c = img->channels;
    const int swap = o >= 5;
    const int ow = swap ? h : w, oh = swap ? w : h;
    uint8_t *dst = malloc((size_t)w * (size_t)h * (size_t)c);
    if (!dst)
        return cz_error_set(CZ_ERR_NOMEM, "orientation: %dx%dx%d buffer", w, h, c);
    const uint8_t *src = img->px;
    for (int oy = 0; oy < oh; oy++) {
        uint8_t *drow = dst + (size_t)oy * ow * c;
        for (int ox = 0; ox < ow; ox++) {
            int sx, sy; /* the stored pixel that lands at (ox, oy) when displayed */
            switch (o) {
            case 2: sx = w - 1 - ox; sy = oy; break;                /* mirror horizontal */
            case 3: sx = w - 1 - ox; sy = h - 1 - oy; break;        /* rotate 180 */
            case 4: sx = ox; sy = h - 1 - oy; break;                /* mirror vertical */
            case 5: sx = oy; sy = ox; break;                        /* transpose */
            case 6: sx = oy; sy = h - 1 - ox; break;                /* rotate 90 CW */
            case 7: sx = w - 1 - oy; sy = h - 1 - ox; break;        /* transverse */
            default: sx = w - 1 - oy; sy = ox; break;               /* 8: rotate 90 CCW */
            }
            const uint8_t *s = src + ((size_t)sy * w + sx) * c;
            for (int k = 0; k < c; k++) drow[(size_t)ox * c + k] = s[k];
        }
    }
    free(img->px);
    img->px = dst;
    img->width = ow;
    img->height = oh;
    return CZ_OK;
}
