/* image_geom.c: geometry between an image and the network: render size, float-plane
 * resampling, reflect padding, cropping, the L input plane and the final ab merge.
 *
 * Resampling (cz_resize_plane and the two render functions) is separable and treats each
 * axis on its own:
 *  - upscaling, same size, or downscaling by at most 2x: bilinear with half-pixel centres
 *    (src = (dst + 0.5) * sn / dn - 0.5, clamped to the edge), like OpenCV INTER_LINEAR;
 *    same size is an exact copy;
 *  - downscaling by more than 2x: area averaging (each output pixel is the coverage-weighted
 *    mean of the source pixels its footprint overlaps), like OpenCV INTER_AREA, so large
 *    reductions are not aliased.
 * Accumulation is in double. No temporary buffers: the resampler reads the source through a
 * stride, so the L input is resized straight into the centre of the network plane and then
 * reflect-padded in place.
 *
 * Reflect padding follows numpy 'reflect' (the edge pixel is not repeated) and keeps
 * reflecting for pads wider than the source (index folded with period 2*(n-1)); a 1-pixel
 * side is replicated.
 *
 * Contract: the void functions here do nothing when given NULL or inconsistent sizes (a
 * caller bug; nothing sensible to write). Threading: reentrant, no global state; output
 * buffers are the caller's, except the image allocated by cz_render_merge_ab.
 *
 * Tested by tests/unit/test_image_color.c (geometry table, pad/crop inverse, resize identity
 * and constant preservation, area downscale, the luminance promise through the merge). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "image.h"

typedef struct {
    int sn, dn;
    int area;     /* area averaging (downscale > 2x) instead of bilinear */
    double scale; /* sn / dn */
} axis_map;

/* Taps of one output index along one axis: source indices first..last with weights. */
typedef struct {
    int first, last;
    double w0, w1;      /* bilinear: weight of first and of last */
    double x0, x1, inv; /* area: footprint [x0, x1) and 1 / (x1 - x0) */
} axis_taps;

static void axis_init(axis_map *a, int sn, int dn) {
    a->sn = sn;
    a->dn = dn;
    a->scale = (double)sn / (double)dn;
    a->area = sn > 2 * (long long)dn;
}

static inline void axis_get(const axis_map *a, int d, axis_taps *t) {
    t->w0 = t->w1 = t->x0 = t->x1 = t->inv = 0.0;
    if (a->area) {
        t->x0 = d * a->scale;
        t->x1 = (d + 1) * a->scale;
        if (t->x1 > a->sn) t->x1 = a->sn;
        t->first = (int)floor(t->x0);
        t->last = (int)ceil(t->x1) - 1;
        if (t->last >= a->sn) t->last = a->sn - 1;
        if (t->last < t->first) t->last = t->first;
        t->inv = 1.0 / (t->x1 - t->x0);
        return;
    }
    double c = (d + 0.5) * a->scale - 0.5;
    if (c < 0.0) c = 0.0;
    if (c > a->sn - 1) c = a->sn - 1;
    int i0 = (int)c;
    double f = c - i0;
    t->first = i0;
    t->last = i0 + 1 < a->sn ? i0 + 1 : i0;
    if (t->last == t->first) {
        t->w0 = 1.0;
        t->w1 = 0.0;
    } else {
        t->w0 = 1.0 - f;
        t->w1 = f;
    }
}

static inline double tap_weight(const axis_map *a, const axis_taps *t, int i) {
    if (a->area) {
        double lo = i > t->x0 ? i : t->x0;
        double hi = i + 1 < t->x1 ? i + 1 : t->x1;
        return hi > lo ? (hi - lo) * t->inv : 0.0;
    }
    return i == t->first ? t->w0 : t->w1;
}

/* One output sample of a strided plane, given the taps of both axes. */
static inline double sample(const float *src, size_t sstride, const axis_map *ax,
                            const axis_taps *tx, const axis_map *ay, const axis_taps *ty) {
    double acc = 0.0;
    for (int j = ty->first; j <= ty->last; j++) {
        double wy = tap_weight(ay, ty, j);
        if (wy == 0.0) continue;
        const float *row = src + (size_t)j * sstride;
        double r = 0.0;
        for (int i = tx->first; i <= tx->last; i++) {
            double wx = tap_weight(ax, tx, i);
            if (wx != 0.0) r += wx * row[i];
        }
        acc += wy * r;
    }
    return acc;
}

static void resize_strided(const float *src, int sw, int sh, size_t sstride, float *dst, int dw,
                           int dh, size_t dstride) {
    axis_map ax, ay;
    axis_init(&ax, sw, dw);
    axis_init(&ay, sh, dh);
    for (int y = 0; y < dh; y++) {
        axis_taps ty;
        axis_get(&ay, y, &ty);
        float *drow = dst + (size_t)y * dstride;
        for (int x = 0; x < dw; x++) {
            axis_taps tx;
            axis_get(&ax, x, &tx);
            drow[x] = (float)sample(src, sstride, &ax, &tx, &ay, &ty);
        }
    }
}

void cz_resize_plane(const float *src, int sw, int sh, float *dst, int dw, int dh) {
    if (!src || !dst || sw <= 0 || sh <= 0 || dw <= 0 || dh <= 0) return;
    resize_strided(src, sw, sh, (size_t)sw, dst, dw, dh, (size_t)dw);
}

/* numpy 'reflect' index of i (any integer) into [0, n). */
static inline int reflect_index(long long i, int n) {
    if (n <= 1) return 0;
    long long period = 2LL * (n - 1);
    long long m = i % period;
    if (m < 0) m += period;
    return (int)(m < n ? m : period - m);
}

/* Pads around the sw x sh block already at (ox, oy) inside the dw x dh plane. */
static void pad_reflect_inplace(float *p, int sw, int sh, int dw, int dh, int ox, int oy) {
    const size_t stride = (size_t)dw;
    for (int y = oy; y < oy + sh; y++) {
        float *row = p + (size_t)y * stride;
        for (int x = 0; x < ox; x++) row[x] = row[ox + reflect_index(x - ox, sw)];
        for (int x = ox + sw; x < dw; x++) row[x] = row[ox + reflect_index(x - ox, sw)];
    }
    for (int y = 0; y < dh; y++) {
        if (y >= oy && y < oy + sh) continue;
        int sy = oy + reflect_index(y - oy, sh);
        memcpy(p + (size_t)y * stride, p + (size_t)sy * stride, stride * sizeof *p);
    }
}

static int block_fits(int sw, int sh, int dw, int dh, int ox, int oy) {
    return sw > 0 && sh > 0 && ox >= 0 && oy >= 0 && (long long)ox + sw <= dw &&
           (long long)oy + sh <= dh;
}

void cz_pad_reflect_plane(const float *src, int sw, int sh, float *dst, int dw, int dh, int ox,
                          int oy) {
    if (!src || !dst || !block_fits(sw, sh, dw, dh, ox, oy)) return;
    for (int y = 0; y < sh; y++)
        memcpy(dst + (size_t)(oy + y) * dw + ox, src + (size_t)y * sw, (size_t)sw * sizeof *src);
    pad_reflect_inplace(dst, sw, sh, dw, dh, ox, oy);
}

void cz_crop_plane(const float *src, int sw, float *dst, int cw, int ch, int ox, int oy) {
    if (!src || !dst || cw <= 0 || ch <= 0 || ox < 0 || oy < 0 || (long long)ox + cw > sw)
        return;
    for (int y = 0; y < ch; y++)
        memcpy(dst + (size_t)y * cw, src + (size_t)(oy + y) * sw + ox, (size_t)cw * sizeof *src);
}

cz_status cz_render_geom_compute(int src_w, int src_h, int render, int multiple,
                                 cz_render_geom *g) {
    if (!g) return cz_error_set(CZ_ERR_INVALID_ARG, "render geometry: NULL output");
    memset(g, 0, sizeof *g);
    if (src_w <= 0 || src_h <= 0)
        return cz_error_set(CZ_ERR_EMPTY_IMAGE, "render geometry: source is %dx%d", src_w,
                            src_h);
    if (render <= 0 || multiple <= 0)
        return cz_error_set(CZ_ERR_INVALID_ARG, "render geometry: render %d, multiple %d",
                            render, multiple);
    long long lng = src_w >= src_h ? src_w : src_h;
    long long sht = src_w >= src_h ? src_h : src_w;
    /* short side scaled by render/long, rounded half up, at least 1 */
    long long s = (2LL * sht * render + lng) / (2LL * lng);
    if (s < 1) s = 1;
    long long sw = src_w >= src_h ? render : s;
    long long sh = src_w >= src_h ? s : render;
    long long nw = (sw + multiple - 1) / multiple * multiple;
    long long nh = (sh + multiple - 1) / multiple * multiple;
    if (nw > 1 << 24 || nh > 1 << 24)
        return cz_error_set(CZ_ERR_INVALID_ARG,
                            "render geometry: network plane %lldx%lld is too large", nw, nh);
    g->src_w = src_w;
    g->src_h = src_h;
    g->scaled_w = (int)sw;
    g->scaled_h = (int)sh;
    g->net_w = (int)nw;
    g->net_h = (int)nh;
    g->off_x = (int)((nw - sw) / 2);
    g->off_y = (int)((nh - sh) / 2);
    return CZ_OK;
}

static int geom_ok(const cz_render_geom *g) {
    return g && g->src_w > 0 && g->src_h > 0 &&
           block_fits(g->scaled_w, g->scaled_h, g->net_w, g->net_h, g->off_x, g->off_y);
}

void cz_render_input_L(const float *L_full, const cz_render_geom *g, float *net_in) {
    if (!L_full || !net_in || !geom_ok(g)) return;
    const size_t stride = (size_t)g->net_w;
    float *centre = net_in + (size_t)g->off_y * stride + (size_t)g->off_x;
    resize_strided(L_full, g->src_w, g->src_h, (size_t)g->src_w, centre, g->scaled_w,
                   g->scaled_h, stride);
    for (int y = 0; y < g->scaled_h; y++) {
        float *row = centre + (size_t)y * stride;
        for (int x = 0; x < g->scaled_w; x++) {
            float v = row[x] / 50.0f - 1.0f;
            row[x] = v < -1.0f ? -1.0f : v > 1.0f ? 1.0f : v; /* L is [0,100]: guard rounding */
        }
    }
    pad_reflect_inplace(net_in, g->scaled_w, g->scaled_h, g->net_w, g->net_h, g->off_x,
                        g->off_y);
}

cz_status cz_render_merge_ab(const float *L_full, const float *ab_net, const cz_render_geom *g,
                             cz_image *out) {
    if (!out) return cz_error_set(CZ_ERR_INVALID_ARG, "merge: NULL output image");
    memset(out, 0, sizeof *out);
    if (!L_full || !ab_net) return cz_error_set(CZ_ERR_INVALID_ARG, "merge: NULL plane");
    if (!geom_ok(g))
        return cz_error_set(CZ_ERR_INVALID_ARG, "merge: inconsistent render geometry");
    CZ_TRY(cz_image_alloc(out, g->src_w, g->src_h, 3));
    const size_t nstride = (size_t)g->net_w;
    const size_t plane = nstride * (size_t)g->net_h;
    const float *a_src = ab_net + (size_t)g->off_y * nstride + (size_t)g->off_x;
    const float *b_src = a_src + plane;
    axis_map ax, ay;
    axis_init(&ax, g->scaled_w, g->src_w);
    axis_init(&ay, g->scaled_h, g->src_h);
    /* every row uses the same column taps: computed once, not per pixel (4-8% of the merge's
     * time in bench_stages) */
    axis_taps *txs = malloc((size_t)g->src_w * sizeof *txs);
    if (!txs) {
        cz_image_free(out);
        return cz_error_set(CZ_ERR_NOMEM, "merge: out of memory");
    }
    for (int x = 0; x < g->src_w; x++) axis_get(&ax, x, &txs[x]);
    for (int y = 0; y < g->src_h; y++) {
        axis_taps ty;
        axis_get(&ay, y, &ty);
        const float *lrow = L_full + (size_t)y * g->src_w;
        uint8_t *orow = out->px + (size_t)y * g->src_w * 3;
        for (int x = 0; x < g->src_w; x++) {
            float lab[3] = {lrow[x], (float)sample(a_src, nstride, &ax, &txs[x], &ay, &ty),
                            (float)sample(b_src, nstride, &ax, &txs[x], &ay, &ty)};
            cz_lab_to_srgb8(lab, orow + 3 * (size_t)x);
        }
    }
    free(txs);
    return CZ_OK;
}
