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
 * value to the nearest 8-bit code (exactly what round(255 * encode(v)) gives, without pow()),
 * a 4096-entry index into them, and 16384 cells of linear light each holding its code when no
 * threshold falls inside (code_exact).
 * They are built once under pthread_once and immutable afterwards, so every function here is
 * thread-safe. The exact Lab -> linear RGB and code arithmetic is in lab_exact.h, shared with
 * the GPU's merge.
 *
 * Row functions: cz_srgb8_row_to_lab and cz_lab_row_to_srgb8 work four pixels at a time in
 * double (bit-identical to the scalar code); cz_srgb8_row_to_lab_f (the training loader) and the
 * colour path of cz_image_lightness (the L of an upload), eight at a time in float (within
 * 2e-4 of the double conversion; the L within 3.1e-5).
 *
 * Tested by tests/unit/test_image_color.c (known values, round trips on all grays and random
 * colours, the luminance promise with random L and ab in [-110, 110], the row functions against
 * the scalar ones: all 2^24 colours one way, a million Lab triples the other). */
#include <math.h>
#include <pthread.h>
#include <string.h>

#include "image.h"
#include "lab_exact.h"
#include "simd.h" /* the vectorized row functions get an AVX2 copy */


static const double k_xn = 0.95047, k_yn = 1.0, k_zn = 1.08883;
static const double k_eps = 216.0 / 24389.0;
static const double k_kappa = 24389.0 / 27.0;
static const double k_m[3][3] = {{0.4124564, 0.3575761, 0.1804375},
                                 {0.2126729, 0.7151522, 0.0721750},
                                 {0.0193339, 0.1191920, 0.9503041}};

enum { CODE_LUT = 4096, CODE_CELLS = 16384 };

static struct {
    cz_lab_exact_tab lx; /* minv (exact inverse of k_m, so the round trip is exact), ysum, thr */
    double lin[256];    /* 8-bit code -> linear light */
    float lin_f[256];   /* the same rounded to float, for cz_srgb8_row_to_lab_f */
    uint8_t code_at[CODE_LUT + 1]; /* code of linear value i / CODE_LUT (a lower bound) */
    int16_t code_exact[CODE_CELLS + 1]; /* the code of every v in the cell, when one code, else -1 */
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
            g_tab.lx.minv[i][j] = (m[r0][c0] * m[r1][c1] - m[r0][c1] * m[r1][c0]) / det;
        }
    for (int k = 0; k < 256; k++) {
        g_tab.lin[k] = srgb_decode(k / 255.0);
        g_tab.lin_f[k] = (float)g_tab.lin[k];
    }
    for (int k = 0; k < 255; k++) g_tab.lx.thr[k] = srgb_decode((k + 0.5) / 255.0);
    g_tab.lx.ysum = k_m[1][0] + k_m[1][1] + k_m[1][2];
    for (int i = 0, c = 0; i <= CODE_CELLS; i++) {
        double lo = (double)i / CODE_CELLS, hi = (double)(i + 1) / CODE_CELLS;
        while (c < 255 && lo >= g_tab.lx.thr[c]) c++;
        g_tab.code_exact[i] = (int16_t)(c == 255 || hi <= g_tab.lx.thr[c] ? c : -1);
    }
    for (int i = 0, c = 0; i <= CODE_LUT; i++) {
        double v = (double)i / CODE_LUT;
        while (c < 255 && v >= g_tab.lx.thr[c]) c++;
        g_tab.code_at[i] = (uint8_t)c;
    }
}

static inline void tables_ready(void) { pthread_once(&g_once, build_tables); }

/* Cube root of t in [1e-30, 1e30]: Kahan's exponent-thirds trick on the float bits (within
 * about 6%; the bits are divided by 3 in float arithmetic so that the vector copy in
 * cz_srgb8_row_to_lab can do exactly the same) and three Halley steps in double. Within 4 ulp of
 * libm's cbrt (test_image_color) and about 3.5x faster, which matters because every sRGB -> Lab
 * conversion takes three (the training loader converts every sample pixel). */
static inline double cbrt_pos(double t) {
    float tf = (float)t;
    int32_t i;
    memcpy(&i, &tf, sizeof i);
    i = (int32_t)((float)i * (1.0f / 3.0f)) + 0x2a508935;
    memcpy(&tf, &i, sizeof tf);
    double r = (double)tf;
    for (int k = 0; k < 3; k++) {
        double r3 = r * r * r;
        r = r * (r3 + 2.0 * t) / (2.0 * r3 + t);
    }
    return r;
}

double cz_cbrt_pos(double t) { return cbrt_pos(t); }

const cz_lab_exact_tab *cz_lab_exact_tables(void) {
    tables_ready();
    return &g_tab.lx;
}

static inline double lab_f(double t) {
    return t > k_eps ? cbrt_pos(t) : (k_kappa * t + 16.0) / 116.0;
}


/* Linear light -> nearest 8-bit sRGB code: a 4096-entry table gives a lower bound, the
 * exact thresholds finish it (a step at most: thresholds are never closer together than
 * 1/3295 in linear light, the gap at black). */
static inline uint8_t linear_to_code(double v) {
    if (!(v > 0.0)) return 0; /* also NaN */
    if (v >= 1.0) return 255;
    int cc = g_tab.code_exact[(int)(v * CODE_CELLS)];
    if (cc >= 0) return (uint8_t)cc;
    int c = g_tab.code_at[(int)(v * CODE_LUT)];
    while (c < 255 && v >= g_tab.lx.thr[c]) c++;
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

/* The exact Lab -> linear RGB of the merge (lab_exact.h, shared with the GPU kernel). */
static inline void lab_to_linear_clipped(const float lab[3], double rgb[3]) {
    cz_lx_linear_clipped(&g_tab.lx, lab[0], lab[1], lab[2], rgb);
}

void cz_srgb8_to_lab(const uint8_t rgb[3], float lab[3]) {
    tables_ready();
    double lin[3] = {g_tab.lin[rgb[0]], g_tab.lin[rgb[1]], g_tab.lin[rgb[2]]};
    linear_to_lab(lin, lab);
}

/* ---- cz_srgb8_row_to_lab: linear_to_lab four pixels at a time, with GCC/Clang vector
 * extensions, the same operations in the same order (and no fused multiply-adds: none of the
 * targets enables them), so every result is bit-identical to cz_srgb8_to_lab's; the test
 * checks all 2^24 inputs. */
typedef double v4d __attribute__((vector_size(32)));
typedef int64_t v4l __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));

/* Vectors never pass by value between functions here: compilers warn (GCC) or refuse (clang 14)
 * when a 32-byte vector crosses a call in code built without AVX. Macros and pointers instead. */
#define V4D_SPLAT(x) ((v4d){(x), (x), (x), (x)})
#define V4D_SEL(m, x, y) ((v4d)(((m) & (v4l)(x)) | (~(m) & (v4l)(y))))

static inline void cbrt_pos_v(const v4d *tp, v4d *out) {
    const v4d t = *tp;
    v4f tf = __builtin_convertvector(t, v4f);
    v4i i;
    memcpy(&i, &tf, sizeof i);
    i = __builtin_convertvector(__builtin_convertvector(i, v4f) * (1.0f / 3.0f), v4i) + 0x2a508935;
    memcpy(&tf, &i, sizeof tf);
    v4d r = __builtin_convertvector(tf, v4d);
    for (int k = 0; k < 3; k++) {
        v4d r3 = r * r * r;
        r = r * (r3 + 2.0 * t) / (2.0 * r3 + t);
    }
    *out = r;
}

static inline void lab_f_v(const v4d *tp, v4d *out) {
    v4d c;
    cbrt_pos_v(tp, &c);
    *out = V4D_SEL(*tp > V4D_SPLAT(k_eps), c, (k_kappa * *tp + 16.0) / 116.0);
}

CZ_SIMD_CLONES static void srgb8_quads_to_lab(const uint8_t *rgb, size_t quads, float *L, float *A, float *B) {
    for (size_t q = 0; q < quads; q++) {
        const uint8_t *p = rgb + 12 * q;
        v4d l0 = {g_tab.lin[p[0]], g_tab.lin[p[3]], g_tab.lin[p[6]], g_tab.lin[p[9]]};
        v4d l1 = {g_tab.lin[p[1]], g_tab.lin[p[4]], g_tab.lin[p[7]], g_tab.lin[p[10]]};
        v4d l2 = {g_tab.lin[p[2]], g_tab.lin[p[5]], g_tab.lin[p[8]], g_tab.lin[p[11]]};
        v4d x = k_m[0][0] * l0 + k_m[0][1] * l1 + k_m[0][2] * l2;
        v4d y = k_m[1][0] * l0 + k_m[1][1] * l1 + k_m[1][2] * l2;
        v4d z = k_m[2][0] * l0 + k_m[2][1] * l1 + k_m[2][2] * l2;
        v4d tx = x / k_xn, ty = y / k_yn, tz = z / k_zn, fx, fy, fz;
        lab_f_v(&tx, &fx);
        lab_f_v(&ty, &fy);
        lab_f_v(&tz, &fz);
        v4d l = 116.0 * fy - 16.0;
        l = V4D_SEL(l > 100.0, V4D_SPLAT(100.0), V4D_SEL(l < 0.0, V4D_SPLAT(0.0), l));
        v4f lf = __builtin_convertvector(l, v4f);
        v4f af = __builtin_convertvector(500.0 * (fx - fy), v4f);
        v4f bf = __builtin_convertvector(200.0 * (fy - fz), v4f);
        memcpy(L + 4 * q, &lf, sizeof lf);
        memcpy(A + 4 * q, &af, sizeof af);
        memcpy(B + 4 * q, &bf, sizeof bf);
    }
}

void cz_srgb8_row_to_lab(const uint8_t *rgb, size_t n, float *L, float *a, float *b) {
    tables_ready();
    size_t quads = n / 4;
    srgb8_quads_to_lab(rgb, quads, L, a, b);
    for (size_t i = 4 * quads; i < n; i++) {
        float lab[3];
        double lin[3] = {g_tab.lin[rgb[3 * i]], g_tab.lin[rgb[3 * i + 1]], g_tab.lin[rgb[3 * i + 2]]};
        linear_to_lab(lin, lab);
        L[i] = lab[0];
        a[i] = lab[1];
        b[i] = lab[2];
    }
}

void cz_lab_to_srgb8(const float lab[3], uint8_t rgb[3]) {
    tables_ready();
    double lin[3];
    lab_to_linear_clipped(lab, lin);
    for (int i = 0; i < 3; i++) rgb[i] = linear_to_code(lin[i]);
}

/* Eight float lanes for cz_srgb8_row_to_lab_f, written with GCC/Clang vector extensions so that
 * they are vectorized on any target (two SSE halves on baseline x86-64, one AVX register in the
 * AVX2 clone). Comparisons give lane masks of all ones or zeros; vsel picks by mask. */
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

#define vsel(m, x, y) ((v8f)(((m) & (v8i)(x)) | (~(m) & (v8i)(y))))
#define vsplat(x) ((v8f){(x), (x), (x), (x), (x), (x), (x), (x)})

/* ---- cz_srgb8_row_to_lab_f: sRGB -> Lab in float, 8 pixels at a time ----
 * linear_to_lab's steps in float: the 8-bit code -> linear table rounded to float, the matrix,
 * and the cube root from the same exponent-thirds estimate (within about 6%) with two Halley
 * steps instead of three (6% -> 2e-4 -> below float resolution). test_image_color measures its
 * error against cz_srgb8_to_lab on all 2^24 colours. */
static inline void lab_f_f(const v8f *tp, v8f *out) {
    const v8f t = *tp;
    v8i i;
    memcpy(&i, &t, sizeof i);
    i = __builtin_convertvector(__builtin_convertvector(i, v8f) * (1.0f / 3.0f), v8i) + 0x2a508935;
    v8f r;
    memcpy(&r, &i, sizeof r);
    for (int k = 0; k < 2; k++) {
        v8f r3 = r * r * r;
        r = r * (r3 + 2.0f * t) / (2.0f * r3 + t);
    }
    /* below epsilon (also t = 0, where the estimate is meaningless) the linear segment */
    *out = vsel(t > vsplat((float)k_eps), r, (vsplat((float)k_kappa) * t + 16.0f) * (1.0f / 116.0f));
}

/* The linear light of eight interleaved 8-bit RGB pixels, one vector per channel. */
static inline void octet_linear_f(const uint8_t *p, v8f *l0, v8f *l1, v8f *l2) {
    const float *lt = g_tab.lin_f;
    *l0 = (v8f){lt[p[0]], lt[p[3]], lt[p[6]], lt[p[9]], lt[p[12]], lt[p[15]], lt[p[18]], lt[p[21]]};
    *l1 = (v8f){lt[p[1]], lt[p[4]], lt[p[7]], lt[p[10]], lt[p[13]], lt[p[16]], lt[p[19]], lt[p[22]]};
    *l2 = (v8f){lt[p[2]], lt[p[5]], lt[p[8]], lt[p[11]], lt[p[14]], lt[p[17]], lt[p[20]], lt[p[23]]};
}

/* 116 f(y) - 16 clamped to [0, 100] */
static inline void lightness_f(const v8f *fyp, v8f *out) {
    v8f l = 116.0f * *fyp - 16.0f;
    *out = vsel(l > vsplat(100.0f), vsplat(100.0f), vsel(l < vsplat(0.0f), vsplat(0.0f), l));
}

CZ_SIMD_CLONES static void srgb8_octets_to_lab_f(const uint8_t *rgb, size_t octets, float *L, float *A, float *B) {
    for (size_t q = 0; q < octets; q++) {
        v8f l0, l1, l2;
        octet_linear_f(rgb + 24 * q, &l0, &l1, &l2);
        v8f tx = (float)(k_m[0][0] / k_xn) * l0 + (float)(k_m[0][1] / k_xn) * l1 + (float)(k_m[0][2] / k_xn) * l2;
        v8f ty = (float)(k_m[1][0] / k_yn) * l0 + (float)(k_m[1][1] / k_yn) * l1 + (float)(k_m[1][2] / k_yn) * l2;
        v8f tz = (float)(k_m[2][0] / k_zn) * l0 + (float)(k_m[2][1] / k_zn) * l1 + (float)(k_m[2][2] / k_zn) * l2;
        v8f fx, fy, fz;
        lab_f_f(&tx, &fx);
        lab_f_f(&ty, &fy);
        lab_f_f(&tz, &fz);
        v8f l;
        lightness_f(&fy, &l);
        v8f af = 500.0f * (fx - fy), bf = 200.0f * (fy - fz);
        memcpy(L + 8 * q, &l, sizeof l);
        memcpy(A + 8 * q, &af, sizeof af);
        memcpy(B + 8 * q, &bf, sizeof bf);
    }
}

/* The L of cz_image_lightness for colour pixels: srgb8_octets_to_lab_f's L, the same operations
 * without x and z, so the two give the same bits. */
CZ_SIMD_CLONES static void srgb8_octets_lightness_f(const uint8_t *rgb, size_t octets, float *L) {
    for (size_t q = 0; q < octets; q++) {
        v8f l0, l1, l2;
        octet_linear_f(rgb + 24 * q, &l0, &l1, &l2);
        v8f ty = (float)(k_m[1][0] / k_yn) * l0 + (float)(k_m[1][1] / k_yn) * l1 + (float)(k_m[1][2] / k_yn) * l2;
        v8f fy, l;
        lab_f_f(&ty, &fy);
        lightness_f(&fy, &l);
        memcpy(L + 8 * q, &l, sizeof l);
    }
}

void cz_srgb8_row_to_lab_f(const uint8_t *rgb, size_t n, float *L, float *a, float *b) {
    tables_ready();
    const size_t octets = n / 8, done = 8 * octets;
    srgb8_octets_to_lab_f(rgb, octets, L, a, b);
    if (done < n) { /* the last pixels through a zero-padded octet */
        uint8_t pad[24] = {0};
        float l8[8], a8[8], b8[8];
        memcpy(pad, rgb + 3 * done, 3 * (n - done));
        srgb8_octets_to_lab_f(pad, 1, l8, a8, b8);
        memcpy(L + done, l8, (n - done) * sizeof *L);
        memcpy(a + done, a8, (n - done) * sizeof *a);
        memcpy(b + done, b8, (n - done) * sizeof *b);
    }
}

/* ---- cz_lab_row_to_srgb8: cz_lx_linear_clipped four pixels at a time ----
 * Pass 1 runs lab_exact.h's cz_lx_linear_clipped on four lanes of doubles: the same operations
 * in the same order on every lane, its branches turned into masks (each lane keeps what the
 * scalar code would have computed; the other side's values, divisions by zero included, are
 * dropped), and no fused multiply-adds, so every linear value is bit-identical to the scalar
 * one. Pass 2 turns each into its code with linear_to_code. The row is therefore byte-identical
 * to cz_lab_to_srgb8 by construction (tested on a million pixels, special values included),
 * and takes the same time whatever the colours. */
enum { ROW_CHUNK = 256 }; /* pixels per pass: 3 planes of doubles stay in the L1 cache */

/* lanes of x that are finite (false for NaN and the infinities) */
#define V4D_FINITE(x) (((x) == (x)) & ((x) < V4D_SPLAT(INFINITY)) & ((x) > V4D_SPLAT(-INFINITY)))

/* x clamped to [0, 1] (the scalar code's v < 0 ? 0 : v > 1 ? 1 : v) */
#define V4D_CLAMP01(x) V4D_SEL((x) < 0.0, V4D_SPLAT(0.0), V4D_SEL((x) > 1.0, V4D_SPLAT(1.0), (x)))

/* cz_lx_finv on a vector */
static inline void finv_v(const v4d *fp, v4d *out) {
    const v4d f = *fp, f3 = f * f * f;
    *out = V4D_SEL(f3 > V4D_SPLAT(CZ_LX_EPS), f3, (116.0 * f - 16.0) * CZ_LX_INV_KAPPA);
}

/* One channel of cz_lx_linear_clipped's gamut loop: its step limit folded into *s. */
static inline void gamut_limit_v(const v4d *vp, const v4d *grayp, v4d *s) {
    const v4d v = *vp, gray = *grayp;
    const v4l fin = V4D_FINITE(v), over = fin & (v > 1.0), under = fin & ~over & (v < 0.0);
    const v4d r = V4D_SEL(over, (1.0 - gray) / (v - gray), gray / (gray - v));
    *s = V4D_SEL(~fin, V4D_SPLAT(0.0), V4D_SEL((over | under) & (r < *s), r, *s));
}

/* One channel's result: in gamut, clamped; otherwise moved toward gray by s, then clamped. */
static inline void gamut_apply_v(const v4d *vp, const v4d *grayp, const v4d *sp, const v4l *insidep, v4d *out) {
    const v4d v = *vp, gray = *grayp, s = *sp;
    const v4d o = V4D_SEL(s > 0.0, gray + s * (v - gray), gray);
    *out = V4D_SEL(*insidep, V4D_CLAMP01(v), V4D_CLAMP01(o));
}

/* Pass 1 over `quads` groups of four pixels: clipped linear RGB into lin (3 planes of ROW_CHUNK)
 * and its code_exact cell, (int)(v * CODE_CELLS) as in linear_to_code, into cell (the same
 * layout). The gamut clip is skipped for a group whose four pixels are all in gamut: there it
 * only clamps, and its seven divisions are the most expensive part of the pass. */
CZ_SIMD_CLONES static void lab_quads_linear(const float *Lp, const float *Ap, const float *Bp, int quads,
                                            double *lin, int32_t *cell) {
    const cz_lab_exact_tab *t = &g_tab.lx;
    const double tol = 1e-12; /* cz_lx_linear_clipped's */
    for (int q = 0; q < quads; q++) {
        v4f lf, af, bf;
        memcpy(&lf, Lp + 4 * q, sizeof lf);
        memcpy(&af, Ap + 4 * q, sizeof af);
        memcpy(&bf, Bp + 4 * q, sizeof bf);
        v4d L = __builtin_convertvector(lf, v4d), a = __builtin_convertvector(af, v4d),
            b = __builtin_convertvector(bf, v4d);
        const v4d zero = V4D_SPLAT(0.0);
        L = V4D_SEL(V4D_FINITE(L), L, zero); /* cz_lx_finite_or_zero */
        a = V4D_SEL(V4D_FINITE(a), a, zero);
        b = V4D_SEL(V4D_FINITE(b), b, zero);
        L = V4D_SEL(L < 0.0, zero, L);
        L = V4D_SEL(L > 100.0, V4D_SPLAT(100.0), L);
        /* cz_lx_linear_raw */
        const v4d fy = (L + 16.0) * (1.0 / 116.0);
        const v4d y = V4D_SEL(L > CZ_LX_KAPPA * CZ_LX_EPS, fy * fy * fy, L * CZ_LX_INV_KAPPA);
        const v4l gray_in = (a == 0.0) & (b == 0.0);
        v4d fx = fy + a * (1.0 / 500.0), fz = fy - b * (1.0 / 200.0), x, z;
        finv_v(&fx, &x);
        finv_v(&fz, &z);
        x = CZ_LX_XN * x;
        z = CZ_LX_ZN * z;
        v4d r[3];
        for (int i = 0; i < 3; i++)
            r[i] = V4D_SEL(gray_in, y, t->minv[i][0] * x + t->minv[i][1] * y + t->minv[i][2] * z);
        /* the gamut clip */
        v4l inside = (r[0] >= -tol) & (r[0] <= 1.0 + tol);
        inside &= (r[1] >= -tol) & (r[1] <= 1.0 + tol);
        inside &= (r[2] >= -tol) & (r[2] <= 1.0 + tol);
        v4d o[3];
        if ((inside[0] & inside[1] & inside[2] & inside[3]) != 0) {
            for (int i = 0; i < 3; i++) o[i] = V4D_CLAMP01(r[i]);
        } else {
            v4d gray = y / t->ysum;
            gray = V4D_SEL(gray > 1.0, V4D_SPLAT(1.0), gray);
            v4d s = V4D_SPLAT(1.0);
            for (int i = 0; i < 3; i++) gamut_limit_v(&r[i], &gray, &s);
            s = V4D_SEL(s < 0.0, zero, s);
            for (int i = 0; i < 3; i++) gamut_apply_v(&r[i], &gray, &s, &inside, &o[i]);
        }
        for (int i = 0; i < 3; i++) {
            v4i c = __builtin_convertvector(o[i] * (double)CODE_CELLS, v4i); /* o is in [0, 1] */
            memcpy(lin + (size_t)i * ROW_CHUNK + 4 * q, &o[i], sizeof o[i]);
            memcpy(cell + (size_t)i * ROW_CHUNK + 4 * q, &c, sizeof c);
        }
    }
}

void cz_lab_row_to_srgb8(const float *L, const float *a, const float *b, size_t n, uint8_t *rgb) {
    tables_ready();
    double lin[3 * ROW_CHUNK];
    int32_t cell[3 * ROW_CHUNK];
    for (size_t base = 0; base < n; base += ROW_CHUNK) {
        const int m = n - base < ROW_CHUNK ? (int)(n - base) : ROW_CHUNK, quads = m / 4, rest = m - 4 * quads;
        lab_quads_linear(L + base, a + base, b + base, quads, lin, cell);
        if (rest) { /* the last pixels through a zero-padded quad, into the lanes after the full
                     * quads (a partial chunk is shorter than ROW_CHUNK, a multiple of 4) */
            float pad[3][4] = {{0}};
            memcpy(pad[0], L + base + 4 * quads, (size_t)rest * sizeof *L);
            memcpy(pad[1], a + base + 4 * quads, (size_t)rest * sizeof *a);
            memcpy(pad[2], b + base + 4 * quads, (size_t)rest * sizeof *b);
            lab_quads_linear(pad[0], pad[1], pad[2], 1, lin + 4 * quads, cell + 4 * quads);
        }
        /* pass 2: linear_to_code, whose range checks pass 1's [0, 1] values never need (0 and 1
         * fall in cells of one code); about 1.5% of cells hold a threshold and take its search */
        uint8_t *o = rgb + 3 * base;
        for (int i = 0; i < m; i++) {
            int c0 = g_tab.code_exact[cell[i]], c1 = g_tab.code_exact[cell[ROW_CHUNK + i]],
                c2 = g_tab.code_exact[cell[2 * ROW_CHUNK + i]];
            if ((c0 | c1 | c2) < 0) {
                c0 = linear_to_code(lin[i]);
                c1 = linear_to_code(lin[ROW_CHUNK + i]);
                c2 = linear_to_code(lin[2 * ROW_CHUNK + i]);
            }
            o[3 * i] = (uint8_t)c0;
            o[3 * i + 1] = (uint8_t)c1;
            o[3 * i + 2] = (uint8_t)c2;
        }
    }
}

void cz_srgbf_to_lab(const float rgb[3], float lab[3]) {
    double lin[3];
    for (int i = 0; i < 3; i++) {
        double c = cz_lx_finite_or_zero(rgb[i]);
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
        /* in float, eight pixels at a time (within 3.1e-5 of the double L, test_image_color):
         * the colour photo's largest CPU cost before the network otherwise */
        const size_t done = n / 8 * 8;
        srgb8_octets_lightness_f(p, n / 8, L);
        if (done < n) { /* the last pixels through a zero-padded octet */
            uint8_t pad[24] = {0};
            float l8[8];
            memcpy(pad, p + 3 * done, 3 * (n - done));
            srgb8_octets_lightness_f(pad, 1, l8);
            memcpy(L + done, l8, (n - done) * sizeof *L);
        }
    }
    return CZ_OK;
}
