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
 * Accumulation is in double. The resampler reads the source through a stride, so the L input
 * is resized straight into the centre of the network plane and then reflect-padded in place.
 * It works a row at a time (row_resampler: each source row's horizontal pass is computed once
 * and reused by every output row that reads it) with the same operations in the same order as
 * the pixel-at-a-time version, which is kept as the reference (cz_resize_plane_pixelwise) and
 * as the fallback when its few row buffers cannot be allocated. The merge converts each output
 * row with cz_lab_row_to_srgb8. Both are byte-identical to the pixel-wise path; the upsampling
 * is 4-8x faster and the whole merge about 2x (bench_stages, 256x256 to 4000x3000 photos).
 *
 * The training loader stretches 8-bit RGB photos with the same filter in float
 * (cz_resize_rgb8, through the tap tables of cz_resample_taps): there the last bit does not
 * matter and the double-precision planes cost most of a sample's CPU time.
 *
 * Reflect padding follows numpy 'reflect' (the edge pixel is not repeated) and keeps
 * reflecting for pads wider than the source (index folded with period 2*(n-1)); a 1-pixel
 * side is replicated.
 *
 * Contract: the void functions here do nothing when given NULL or inconsistent sizes (a
 * caller bug; nothing sensible to write). Threading: reentrant, no global state; output
 * buffers are the caller's, except the image allocated by cz_render_merge_ab (and the row
 * buffers each call allocates and frees).
 *
 * Tested by tests/unit/test_image_color.c (geometry table, pad/crop inverse, resize identity
 * and constant preservation, area downscale, the luminance promise through the merge). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "image.h"
#include "lab_exact.h"
#include "simd.h"

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
    cz_lx_bilinear(d, a->sn, a->dn, &t->first, &t->last, &t->w0, &t->w1); /* shared with the GPU merge */
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

/* Row-at-a-time resampling with the exact arithmetic of `sample`: the horizontal pass of a
 * source row (the inner loop of sample, for every output column) is computed once and kept in
 * a ring of `span` rows (the most source rows one output row reads), and each output row is
 * the vertical combination of the rows it needs, in sample's order. The results are therefore
 * bit-identical to sample's, at a fraction of the cost when upscaling (each source row's
 * horizontal pass serves several output rows) and with the tap weights computed once per
 * column instead of once per pixel. */
typedef struct {
    axis_map ax, ay;
    int dw, span;
    axis_taps *txs; /* dw column taps */
    double *wx;     /* their non-zero weights, flattened: column x's are wx[woff[x] .. woff[x + 1]) */
    int *ix;        /* and the source columns they weigh */
    size_t *woff;
    double *ring;   /* span rows of dw horizontal results */
    double *acc;    /* dw: the output row being summed */
    int *key;       /* source row held by each ring slot, -1 for none */
} row_resampler;

static void rr_free(row_resampler *r) {
    free(r->txs);
    free(r->wx);
    free(r->ix);
    free(r->woff);
    free(r->ring);
    free(r->acc);
    free(r->key);
    memset(r, 0, sizeof *r);
}

static int rr_init(row_resampler *r, int sw, int sh, int dw, int dh) {
    memset(r, 0, sizeof *r);
    axis_init(&r->ax, sw, dw);
    axis_init(&r->ay, sh, dh);
    r->dw = dw;
    for (int y = 0; y < dh; y++) {
        axis_taps t;
        axis_get(&r->ay, y, &t);
        if (t.last - t.first + 1 > r->span) r->span = t.last - t.first + 1;
    }
    r->txs = malloc((size_t)dw * sizeof *r->txs);
    r->woff = malloc(((size_t)dw + 1) * sizeof *r->woff);
    r->ring = malloc((size_t)r->span * (size_t)dw * sizeof *r->ring);
    r->acc = malloc((size_t)dw * sizeof *r->acc);
    r->key = malloc((size_t)r->span * sizeof *r->key);
    if (!r->txs || !r->woff || !r->ring || !r->acc || !r->key) {
        rr_free(r);
        return 0;
    }
    size_t taps = 0;
    for (int x = 0; x < dw; x++) {
        axis_get(&r->ax, x, &r->txs[x]);
        taps += (size_t)(r->txs[x].last - r->txs[x].first + 1);
    }
    r->wx = malloc((taps ? taps : 1) * sizeof *r->wx);
    r->ix = malloc((taps ? taps : 1) * sizeof *r->ix);
    if (!r->wx || !r->ix) {
        rr_free(r);
        return 0;
    }
    /* zero weights are dropped here, as sample skips them */
    r->woff[0] = 0;
    for (int x = 0; x < dw; x++) {
        size_t k = r->woff[x];
        for (int i = r->txs[x].first; i <= r->txs[x].last; i++) {
            double w = tap_weight(&r->ax, &r->txs[x], i);
            if (w == 0.0) continue;
            r->wx[k] = w;
            r->ix[k++] = i;
        }
        r->woff[x + 1] = k;
    }
    for (int k = 0; k < r->span; k++) r->key[k] = -1;
    return 1;
}

/* The horizontal pass of source row j (sample's inner loop for every column), from the ring. */
static const double *rr_hrow(row_resampler *r, const float *src, size_t sstride, int j) {
    int slot = j % r->span; /* the rows of one output row are consecutive: distinct slots */
    double *h = r->ring + (size_t)slot * (size_t)r->dw;
    if (r->key[slot] == j) return h;
    const float *row = src + (size_t)j * sstride;
    for (int x = 0; x < r->dw; x++) {
        double acc = 0.0;
        for (size_t k = r->woff[x]; k < r->woff[x + 1]; k++) acc += r->wx[k] * row[r->ix[k]];
        h[x] = acc;
    }
    r->key[slot] = j;
    return h;
}

/* Output row y into out[0..dw), equal to (float)sample(...) for every column: the rows are
 * added in sample's order, skipping zero weights as it does. */
static void rr_row(row_resampler *r, const float *src, size_t sstride, int y, float *out) {
    axis_taps ty;
    axis_get(&r->ay, y, &ty);
    double *acc = r->acc;
    for (int x = 0; x < r->dw; x++) acc[x] = 0.0;
    for (int j = ty.first; j <= ty.last; j++) {
        double wy = tap_weight(&r->ay, &ty, j);
        if (wy == 0.0) continue;
        const double *h = rr_hrow(r, src, sstride, j);
        for (int x = 0; x < r->dw; x++) acc[x] += wy * h[x];
    }
    for (int x = 0; x < r->dw; x++) out[x] = (float)acc[x];
}

/* The pixel-at-a-time resampler: the reference the row resampler is tested against, and its
 * fallback when the row buffers cannot be allocated. */
static void resize_strided_pixelwise(const float *src, int sw, int sh, size_t sstride, float *dst,
                                     int dw, int dh, size_t dstride) {
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

static void resize_strided(const float *src, int sw, int sh, size_t sstride, float *dst, int dw,
                           int dh, size_t dstride) {
    row_resampler rr;
    if (!rr_init(&rr, sw, sh, dw, dh)) { /* out of memory: the same result, pixel by pixel */
        resize_strided_pixelwise(src, sw, sh, sstride, dst, dw, dh, dstride);
        return;
    }
    for (int y = 0; y < dh; y++) rr_row(&rr, src, sstride, y, dst + (size_t)y * dstride);
    rr_free(&rr);
}

void cz_resize_plane(const float *src, int sw, int sh, float *dst, int dw, int dh) {
    if (!src || !dst || sw <= 0 || sh <= 0 || dw <= 0 || dh <= 0) return;
    resize_strided(src, sw, sh, (size_t)sw, dst, dw, dh, (size_t)dw);
}

void cz_resize_plane_pixelwise(const float *src, int sw, int sh, float *dst, int dw, int dh) {
    if (!src || !dst || sw <= 0 || sh <= 0 || dw <= 0 || dh <= 0) return;
    resize_strided_pixelwise(src, sw, sh, (size_t)sw, dst, dw, dh, (size_t)dw);
}

int cz_resample_ntaps(int sn, int dn) {
    if (sn <= 0 || dn <= 0) return 0;
    axis_map a;
    axis_init(&a, sn, dn);
    int most = 1;
    for (int d = 0; d < dn; d++) {
        axis_taps t;
        axis_get(&a, d, &t);
        if (t.last - t.first + 1 > most) most = t.last - t.first + 1;
    }
    return most;
}

void cz_resample_taps(int sn, int dn, int ntaps, int *first, float *w) {
    if (sn <= 0 || dn <= 0 || ntaps < 1 || ntaps > sn || !first || !w) return;
    axis_map a;
    axis_init(&a, sn, dn);
    for (int d = 0; d < dn; d++) {
        axis_taps t;
        axis_get(&a, d, &t);
        /* the window [f, f + ntaps) holds the output's taps and stays inside [0, sn) */
        int f = t.first + ntaps > sn ? sn - ntaps : t.first;
        first[d] = f;
        for (int k = 0; k < ntaps; k++) {
            int i = f + k;
            w[(size_t)d * ntaps + k] = i >= t.first && i <= t.last ? (float)tap_weight(&a, &t, i) : 0.0f;
        }
    }
}

/* ---- cz_resize_rgb8: cz_resize_plane's filter over interleaved 8-bit RGB, in float ----
 * Vertical pass first, straight from the 8-bit rows into one float row of the source width (a
 * downscale reads each source row about once and keeps nothing else), then the horizontal taps
 * of that row, rounded to 8 bits. */

/* acc[i] = sum over k < ntaps of w[k] * rows[k * stride + i], for i < n. Plain loops the compiler
 * vectorizes (CMakeLists.txt turns the vectorizer on for this file), tap by tap so that every
 * value is summed in tap order. */
CZ_SIMD_CLONES static void rgb8_vpass(const uint8_t *rows, size_t stride, int ntaps, const float *w, size_t n,
                                      float *acc) {
    for (size_t i = 0; i < n; i++) acc[i] = 0.0f;
    for (int k = 0; k < ntaps; k++) {
        const uint8_t *r = rows + (size_t)k * stride;
        const float wk = w[k];
        for (size_t i = 0; i < n; i++) acc[i] += wk * (float)r[i];
    }
}

/* The horizontal taps of one output row, rounded to 8 bits: a pixel's three channels go together
 * in one 4-float vector (the fourth lane reads the next pixel's red and is dropped; the row has a
 * float of padding at its end), each channel summed in tap order. Inlined into rgb8_hpass with the
 * common tap counts as constants, so that those loops are unrolled. */
typedef float rgb_v4f __attribute__((vector_size(16)));
typedef int32_t rgb_v4i __attribute__((vector_size(16)));
/* the larger of x and y per lane, by mask (x when they compare equal or y is NaN) */
#define RGB_V4_MAX(x, y) ((rgb_v4f)((((x) >= (y)) & (rgb_v4i)(x)) | (~((x) >= (y)) & (rgb_v4i)(y))))

static inline void rgb8_hpass_n(const float *acc, int dw, int ntaps, const int *first, const float *w,
                                uint8_t *out) {
    const rgb_v4f zero = {0.0f, 0.0f, 0.0f, 0.0f}, top = {255.0f, 255.0f, 255.0f, 255.0f};
    const rgb_v4f magic = {12582912.0f, 12582912.0f, 12582912.0f, 12582912.0f}; /* 1.5 * 2^23 */
    for (int x = 0; x < dw; x++) {
        const float *p = acc + 3 * (size_t)first[x];
        const float *wx = w + (size_t)x * ntaps;
        rgb_v4f sum = zero;
        for (int k = 0; k < ntaps; k++) {
            rgb_v4f v;
            memcpy(&v, p + 3 * k, sizeof v);
            sum += wx[k] * v;
        }
        /* clamp to [0, 255], then round half to even as lrintf does: adding and subtracting
         * 1.5 * 2^23 leaves the nearest integer in float arithmetic */
        sum = RGB_V4_MAX(sum, zero);
        sum = -RGB_V4_MAX(-sum, -top);
        sum = (sum + magic) - magic;
        out[3 * x] = (uint8_t)(int)sum[0];
        out[3 * x + 1] = (uint8_t)(int)sum[1];
        out[3 * x + 2] = (uint8_t)(int)sum[2];
    }
}

static void rgb8_hpass(const float *acc, int dw, int ntaps, const int *first, const float *w, uint8_t *out) {
    switch (ntaps) {
    case 1: rgb8_hpass_n(acc, dw, 1, first, w, out); break;
    case 2: rgb8_hpass_n(acc, dw, 2, first, w, out); break;
    case 3: rgb8_hpass_n(acc, dw, 3, first, w, out); break;
    case 4: rgb8_hpass_n(acc, dw, 4, first, w, out); break;
    case 5: rgb8_hpass_n(acc, dw, 5, first, w, out); break;
    default: rgb8_hpass_n(acc, dw, ntaps, first, w, out); break;
    }
}

cz_status cz_resize_rgb8(const uint8_t *src, int sw, int sh, uint8_t *dst, int dw, int dh) {
    if (!src || !dst || sw <= 0 || sh <= 0 || dw <= 0 || dh <= 0)
        return cz_error_set(CZ_ERR_INVALID_ARG, "resize rgb8: %dx%d -> %dx%d", sw, sh, dw, dh);
    const int nx = cz_resample_ntaps(sw, dw), ny = cz_resample_ntaps(sh, dh);
    const size_t stride = 3 * (size_t)sw;
    int *fx = malloc((size_t)dw * sizeof *fx), *fy = malloc((size_t)dh * sizeof *fy);
    float *wx = malloc((size_t)dw * (size_t)nx * sizeof *wx), *wy = malloc((size_t)dh * (size_t)ny * sizeof *wy);
    float *acc = malloc((stride + 1) * sizeof *acc); /* + 1: rgb8_hpass_n's fourth lane */
    cz_status st = CZ_OK;
    if (!fx || !fy || !wx || !wy || !acc) {
        st = cz_error_set(CZ_ERR_NOMEM, "resize rgb8: out of memory");
    } else {
        cz_resample_taps(sw, dw, nx, fx, wx);
        cz_resample_taps(sh, dh, ny, fy, wy);
        acc[stride] = 0.0f; /* read, never used */
        for (int y = 0; y < dh; y++) {
            rgb8_vpass(src + (size_t)fy[y] * stride, stride, ny, wy + (size_t)y * ny, stride, acc);
            rgb8_hpass(acc, dw, nx, fx, wx, dst + (size_t)y * 3 * dw);
        }
    }
    free(fx);
    free(fy);
    free(wx);
    free(wy);
    free(acc);
    return st;
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
    /* row by row: both ab planes resampled to the source width (bit-identical to the
     * pixel-wise bilinear), then the row converted (byte-identical to cz_lab_to_srgb8) */
    row_resampler ra, rb;
    int ok_a = rr_init(&ra, g->scaled_w, g->scaled_h, g->src_w, g->src_h);
    int ok_b = rr_init(&rb, g->scaled_w, g->scaled_h, g->src_w, g->src_h);
    float *arow = malloc(2 * (size_t)g->src_w * sizeof *arow);
    if (!ok_a || !ok_b || !arow) {
        if (ok_a) rr_free(&ra);
        if (ok_b) rr_free(&rb);
        free(arow);
        cz_image_free(out);
        return cz_error_set(CZ_ERR_NOMEM, "merge: out of memory");
    }
    float *brow = arow + g->src_w;
    for (int y = 0; y < g->src_h; y++) {
        rr_row(&ra, a_src, nstride, y, arow);
        rr_row(&rb, b_src, nstride, y, brow);
        cz_lab_row_to_srgb8(L_full + (size_t)y * g->src_w, arow, brow, (size_t)g->src_w,
                            out->px + (size_t)y * g->src_w * 3);
    }
    rr_free(&ra);
    rr_free(&rb);
    free(arow);
    return CZ_OK;
}
