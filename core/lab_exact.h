/* lab_exact.h: the exact (double precision) pieces of the final merge, shared by the host code
 * (image_color.c, image_geom.c) and the CUDA kernel that finishes jobs on the GPU
 * (kernels/merge.cu), so that both give the same bytes:
 *   - Lab -> linear sRGB with the gamut clip of image_color.c (see there for the method);
 *   - linear light -> 8-bit code: the number of code thresholds at or below the value;
 *   - the bilinear taps of one output index (half-pixel centres, clamped at the edges).
 * Everything is plain C99 that nvcc and a C++ compiler also accept; CZ_HD marks the functions
 * for both host and device. The results are bit-exact only without fused multiply-adds: the
 * host targets have none, and kernels/CMakeLists.txt builds merge.cu with -fmad=false.
 * The tables are built once on the host (image_color.c) and copied to the device as they are. */
#ifndef CZ_LAB_EXACT_H
#define CZ_LAB_EXACT_H

#include <math.h>

#ifdef __CUDACC__
#define CZ_HD __host__ __device__
#else
#define CZ_HD
#endif

/* D65 white, CIE epsilon and kappa (image_color.c's conventions) */
#define CZ_LX_XN 0.95047
#define CZ_LX_ZN 1.08883
#define CZ_LX_EPS (216.0 / 24389.0)
#define CZ_LX_KAPPA (24389.0 / 27.0)
#define CZ_LX_INV_KAPPA (27.0 / 24389.0)

typedef struct cz_lab_exact_tab {
    double minv[3][3]; /* XYZ -> linear sRGB: the exact inverse of the sRGB matrix */
    double ysum;       /* sum of the matrix's Y row: the luminance of R = G = B = 1 */
    double thr[255];   /* thr[k]: the smallest linear value whose nearest code is k + 1 */
} cz_lab_exact_tab;

CZ_HD static inline double cz_lx_finv(double f) {
    double f3 = f * f * f;
    return f3 > CZ_LX_EPS ? f3 : (116.0 * f - 16.0) * CZ_LX_INV_KAPPA;
}

/* Lab -> linear RGB without clipping. a = b = 0 gives exactly R = G = B = Y. */
CZ_HD static inline void cz_lx_linear_raw(const cz_lab_exact_tab *t, double L, double a, double b, double rgb[3]) {
    double fy = (L + 16.0) * (1.0 / 116.0);
    double y = L > CZ_LX_KAPPA * CZ_LX_EPS ? fy * fy * fy : L * CZ_LX_INV_KAPPA;
    if (a == 0.0 && b == 0.0) {
        rgb[0] = rgb[1] = rgb[2] = y;
        return;
    }
    double x = CZ_LX_XN * cz_lx_finv(fy + a * (1.0 / 500.0));
    double z = CZ_LX_ZN * cz_lx_finv(fy - b * (1.0 / 200.0));
    for (int i = 0; i < 3; i++) rgb[i] = t->minv[i][0] * x + t->minv[i][1] * y + t->minv[i][2] * z;
}

CZ_HD static inline double cz_lx_finite_or_zero(float v) { return isfinite(v) ? (double)v : 0.0; }

/* Lab -> linear RGB in [0,1]. Out-of-gamut colours are moved along the straight line (in linear
 * RGB) toward the gray of the same luminance Y, as far as needed and no further (the largest
 * in-gamut step, per channel, in closed form). Non-finite a/b count as 0, L is clamped to
 * [0, 100]. */
CZ_HD static inline void cz_lx_linear_clipped(const cz_lab_exact_tab *t, float Lf, float af, float bf,
                                              double rgb[3]) {
    double L = cz_lx_finite_or_zero(Lf);
    double a = cz_lx_finite_or_zero(af), b = cz_lx_finite_or_zero(bf);
    if (L < 0.0) L = 0.0;
    if (L > 100.0) L = 100.0;
    cz_lx_linear_raw(t, L, a, b, rgb);
    const double tol = 1e-12;
    if (rgb[0] >= -tol && rgb[0] <= 1.0 + tol && rgb[1] >= -tol && rgb[1] <= 1.0 + tol && rgb[2] >= -tol &&
        rgb[2] <= 1.0 + tol) {
        for (int i = 0; i < 3; i++) rgb[i] = rgb[i] < 0.0 ? 0.0 : rgb[i] > 1.0 ? 1.0 : rgb[i];
        return;
    }
    double fy = (L + 16.0) * (1.0 / 116.0);
    double y = L > CZ_LX_KAPPA * CZ_LX_EPS ? fy * fy * fy : L * CZ_LX_INV_KAPPA;
    double gray = y / t->ysum; /* R=G=B with luminance y */
    if (gray > 1.0) gray = 1.0;
    double s = 1.0;
    for (int i = 0; i < 3; i++) {
        double v = rgb[i];
        if (!isfinite(v)) {
            s = 0.0;
        } else if (v > 1.0) {
            double r = (1.0 - gray) / (v - gray);
            if (r < s) s = r;
        } else if (v < 0.0) {
            double r = gray / (gray - v);
            if (r < s) s = r;
        }
    }
    if (s < 0.0) s = 0.0;
    for (int i = 0; i < 3; i++) {
        double v = s > 0.0 ? gray + s * (rgb[i] - gray) : gray;
        rgb[i] = v < 0.0 ? 0.0 : v > 1.0 ? 1.0 : v;
    }
}

/* Linear light -> nearest 8-bit sRGB code: the number of thresholds at or below v (a binary
 * search; the host's linear_to_code finds the same number through lookup tables). */
CZ_HD static inline int cz_lx_code(const cz_lab_exact_tab *t, double v) {
    if (!(v > 0.0)) return 0; /* also NaN */
    if (v >= 1.0) return 255;
    int lo = 0, hi = 255; /* the answer lies in [lo, hi] */
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (v >= t->thr[mid]) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* Bilinear taps of output index d of an axis resampled from sn to dn samples: source indices
 * *first and *last (equal at the edges) with weights *w0 and *w1 (half-pixel centres, like
 * OpenCV INTER_LINEAR; same size gives exact copies). */
CZ_HD static inline void cz_lx_bilinear(int d, int sn, int dn, int *first, int *last, double *w0, double *w1) {
    double scale = (double)sn / (double)dn;
    double c = (d + 0.5) * scale - 0.5;
    if (c < 0.0) c = 0.0;
    if (c > sn - 1) c = sn - 1;
    int i0 = (int)c;
    double f = c - i0;
    *first = i0;
    *last = i0 + 1 < sn ? i0 + 1 : i0;
    if (*last == *first) {
        *w0 = 1.0;
        *w1 = 0.0;
    } else {
        *w0 = 1.0 - f;
        *w1 = f;
    }
}

#endif
