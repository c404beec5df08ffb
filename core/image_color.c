/* image_color.c: sRGB <-> CIE Lab (D65) and the lightness plane of an image.
 *
 * Conventions: IEC 61966-2-1 sRGB companding and primaries (the usual 7-digit matrix), D65
 * reference white Xn = 0.95047, Yn = 1, Zn = 1.08883, CIE f(t) with epsilon = 216/24389 and
 * kappa = 24389/27. Arithmetic in double; results stored as float.
 *
 * Gamut clipping (Lab -> sRGB) keeps L: a colour outside the sRGB cube is desaturated in
 * linear light toward the gray of the same luminance (gray + t * (rgb - gray), the largest
 * t <= 1 that fits, computed per channel in closed form). Luminance is linear in linear RGB,
 * so Y and therefore L are unchanged; the gray of any L in [0, 100] is in gamut. The merged
 * output's luminance is thus the input's up to 8-bit rounding. (A bisection on the Lab
 * chroma factor was tried first: the Lab path toward gray is curved in RGB and can leave and
 * re-enter the gamut, which made boundary colours jump.) L is clamped to [0, 100];
 * non-finite a/b are treated as 0, overflowing ones give the gray of L.
 *
 * Tables: 8-bit -> linear (256 entries), the 255 linear thresholds that round a linear
 * value to the nearest 8-bit code (exactly what round(255 * encode(v)) gives, without pow())
 * and a 4096-entry index into them.
 * They are built once under pthread_once and immutable afterwards, so every function here is
 * thread-safe.
 *
 * Tested by tests/unit/test_image_color.c (known values, round trips on all grays and random
 * colours, the luminance promise with random L and ab in [-110, 110]). */
#include <math.h>
#include <pthread.h>
#include <string.h>

#include "image.h"

static const double k_xn = 0.95047, k_yn = 1.0, k_zn = 1.08883;
static const double k_eps = 216.0 / 24389.0;
static const double k_kappa = 24389.0 / 27.0;
static const double k_inv_kappa = 27.0 / 24389.0; /* hot paths multiply, never divide */
static const double k_m[3][3] = {{0.4124564, 0.3575761, 0.1804375},
                                 {0.2126729, 0.7151522, 0.0721750},
                                 {0.0193339, 0.1191920, 0.9503041}};

enum { CODE_LUT = 4096 };

static struct {
    double minv[3][3];  /* exact inverse of k_m, so the round trip is exact */
    double lin[256];    /* 8-bit code -> linear light */
    double thr[255];    /* thr[k]: smallest linear value whose nearest code is k + 1 */
    uint8_t code_at[CODE_LUT + 1]; /* code of linear value i / CODE_LUT (a lower bound) */
} g_tab;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static double srgb_decode(double c) {
    return c <= 0.04045 ? c / 12.92 : pow((c + 0.055) / 1.055, 2.4);
}

static double srgb_encode(double v) {
    return v <= 0.0031308 ? 12.92 * v : 1.055 * pow(v, 1.0 / 2.4) - 0.055;
}

static void build_tables(void) {
    const double (*m)[3] = k_m;
    double det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) -
                 m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0]) +
                 m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) {
            /* cofactor of (j, i) over det: the adjugate */
            int r0 = (j + 1) % 3, r1 = (j + 2) % 3, c0 = (i + 1) % 3, c1 = (i + 2) % 3;
            g_tab.minv[i][j] = (m[r0][c0] * m[r1][c1] - m[r0][c1] * m[r1][c0]) / det;
        }
    for (int k = 0; k < 256; k++) g_tab.lin[k] = srgb_decode(k / 255.0);
    for (int k = 0; k < 255; k++) g_tab.thr[k] = srgb_decode((k + 0.5) / 255.0);
    for (int i = 0, c = 0; i <= CODE_LUT; i++) {
        double v = (double)i / CODE_LUT;
        while (c < 255 && v >= g_tab.thr[c]) c++;
        g_tab.code_at[i] = (uint8_t)c;
    }
}

static inline void tables_ready(void) { pthread_once(&g_once, build_tables); }

static inline double lab_f(double t) {
    return t > k_eps ? cbrt(t) : (k_kappa * t + 16.0) / 116.0;
}

static inline double lab_finv(double f) {
    double f3 = f * f * f;
    return f3 > k_eps ? f3 : (116.0 * f - 16.0) * k_inv_kappa;
}

static inline double y_to_L(double y) { return 116.0 * lab_f(y) - 16.0; }

/* Linear light -> nearest 8-bit sRGB code: a 4096-entry table gives a lower bound, the
 * exact thresholds finish it (a step at most: thresholds are never closer together than
 * 1/3295 in linear light, the gap at black). */
static inline uint8_t linear_to_code(double v) {
    if (!(v > 0.0)) return 0; /* also NaN */
    if (v >= 1.0) return 255;
    int c = g_tab.code_at[(int)(v * CODE_LUT)];
    while (c < 255 && v >= g_tab.thr[c]) c++;
    return (uint8_t)c;
}

static void linear_to_lab(const double lin[3], float lab[3]) {
    double x = k_m[0][0] * lin[0] + k_m[0][1] * lin[1] + k_m[0][2] * lin[2];
    double y = k_m[1][0] * lin[0] + k_m[1][1] * lin[1] + k_m[1][2] * lin[2];
    double z = k_m[2][0] * lin[0] + k_m[2][1] * lin[1] + k_m[2][2] * lin[2];
    double fx = lab_f(x / k_xn), fy = lab_f(y / k_yn), fz = lab_f(z / k_zn);
    double L = 116.0 * fy - 16.0;
    lab[0] = (float)(L > 100.0 ? 100.0 : L < 0.0 ? 0.0 : L); /* white's Y is 1 + 1e-7 */
    lab[1] = (float)(500.0 * (fx - fy));
    lab[2] = (float)(200.0 * (fy - fz));
}

/* Lab -> linear RGB without clipping. a = b = 0 gives exactly R = G = B = Y. */
static void lab_to_linear_raw(double L, double a, double b, double rgb[3]) {
    double fy = (L + 16.0) * (1.0 / 116.0);
    double y = k_yn * (L > k_kappa * k_eps ? fy * fy * fy : L * k_inv_kappa);
    if (a == 0.0 && b == 0.0) {
        rgb[0] = rgb[1] = rgb[2] = y;
        return;
    }
    double x = k_xn * lab_finv(fy + a * (1.0 / 500.0));
    double z = k_zn * lab_finv(fy - b * (1.0 / 200.0));
    for (int i = 0; i < 3; i++)
        rgb[i] = g_tab.minv[i][0] * x + g_tab.minv[i][1] * y + g_tab.minv[i][2] * z;
}

static inline double finite_or_zero(float v) { return isfinite(v) ? (double)v : 0.0; }

/* Lab -> linear RGB in [0,1]. Out-of-gamut colours are moved along the straight line (in
 * linear RGB) toward the gray of the same luminance Y, as far as needed and no further:
 * luminance is linear in RGB, so every point of that line has the same Y, hence the same L.
 * The largest in-gamut step is found in closed form, per channel. */
static void lab_to_linear_clipped(const float lab[3], double rgb[3]) {
    double L = finite_or_zero(lab[0]);
    double a = finite_or_zero(lab[1]), b = finite_or_zero(lab[2]);
    if (L < 0.0) L = 0.0;
    if (L > 100.0) L = 100.0;
    lab_to_linear_raw(L, a, b, rgb);
    const double tol = 1e-12;
    if (rgb[0] >= -tol && rgb[0] <= 1.0 + tol && rgb[1] >= -tol && rgb[1] <= 1.0 + tol &&
        rgb[2] >= -tol && rgb[2] <= 1.0 + tol) {
        for (int i = 0; i < 3; i++) rgb[i] = rgb[i] < 0.0 ? 0.0 : rgb[i] > 1.0 ? 1.0 : rgb[i];
        return;
    }
    double fy = (L + 16.0) * (1.0 / 116.0);
    double y = L > k_kappa * k_eps ? fy * fy * fy : L * k_inv_kappa;
    double gray = y / (k_m[1][0] + k_m[1][1] + k_m[1][2]); /* R=G=B with luminance y */
    if (gray > 1.0) gray = 1.0;
    double t = 1.0;
    for (int i = 0; i < 3; i++) {
        double v = rgb[i];
        if (!isfinite(v)) {
            t = 0.0;
        } else if (v > 1.0) {
            double r = (1.0 - gray) / (v - gray);
            if (r < t) t = r;
        } else if (v < 0.0) {
            double r = gray / (gray - v);
            if (r < t) t = r;
        }
    }
    if (t < 0.0) t = 0.0;
    for (int i = 0; i < 3; i++) {
        double v = t > 0.0 ? gray + t * (rgb[i] - gray) : gray;
        rgb[i] = v < 0.0 ? 0.0 : v > 1.0 ? 1.0 : v;
    }
}

void cz_srgb8_to_lab(const uint8_t rgb[3], float lab[3]) {
    tables_ready();
    double lin[3] = {g_tab.lin[rgb[0]], g_tab.lin[rgb[1]], g_tab.lin[rgb[2]]};
    linear_to_lab(lin, lab);
}

void cz_lab_to_srgb8(const float lab[3], uint8_t rgb[3]) {
    tables_ready();
    double lin[3];
    lab_to_linear_clipped(lab, lin);
    for (int i = 0; i < 3; i++) rgb[i] = linear_to_code(lin[i]);
}

void cz_srgbf_to_lab(const float rgb[3], float lab[3]) {
    double lin[3];
    for (int i = 0; i < 3; i++) {
        double c = finite_or_zero(rgb[i]);
        c = c < 0.0 ? 0.0 : c > 1.0 ? 1.0 : c; /* inputs outside [0,1] are clamped */
        lin[i] = srgb_decode(c);
    }
    linear_to_lab(lin, lab);
}

void cz_lab_to_srgbf(const float lab[3], float rgb[3]) {
    tables_ready();
    double lin[3];
    lab_to_linear_clipped(lab, lin);
    for (int i = 0; i < 3; i++) rgb[i] = (float)srgb_encode(lin[i]);
}

cz_status cz_image_lightness(const cz_image *img, float *L) {
    if (!img || !img->px || !L)
        return cz_error_set(CZ_ERR_INVALID_ARG, "cz_image_lightness: NULL argument");
    if (img->width <= 0 || img->height <= 0)
        return cz_error_set(CZ_ERR_EMPTY_IMAGE, "cz_image_lightness: %dx%d image", img->width,
                            img->height);
    if (img->channels != 1 && img->channels != 3)
        return cz_error_set(CZ_ERR_INVALID_ARG, "cz_image_lightness: %d channels",
                            img->channels);
    tables_ready();
    const size_t n = (size_t)img->width * (size_t)img->height;
    const uint8_t *p = img->px;
    if (img->channels == 1) {
        float lut[256];
        for (int g = 0; g < 256; g++) {
            uint8_t rgb[3] = {(uint8_t)g, (uint8_t)g, (uint8_t)g};
            float lab[3];
            cz_srgb8_to_lab(rgb, lab);
            lut[g] = lab[0];
        }
        lut[255] = lut[255] > 100.0f ? 100.0f : lut[255];
        for (size_t i = 0; i < n; i++) L[i] = lut[p[i]];
    } else {
        for (size_t i = 0; i < n; i++) {
            const uint8_t *q = p + 3 * i;
            double y = k_m[1][0] * g_tab.lin[q[0]] + k_m[1][1] * g_tab.lin[q[1]] +
                       k_m[1][2] * g_tab.lin[q[2]];
            double l = y_to_L(y / k_yn);
            L[i] = (float)(l > 100.0 ? 100.0 : l);
        }
    }
    return CZ_OK;
}
