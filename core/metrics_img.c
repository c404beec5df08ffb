/* metrics_img.c: validation metrics (L1, PSNR, colorfulness) and the sample sheet. The
 * formulas and conventions are in metrics_img.h. Sums are kept in double; one image at a time
 * is converted to 8-bit RGB in a scratch buffer (3 x S x S bytes for output and truth).
 * Threading: reentrant, no global state. Tested by tests/unit/test_metrics_img.c. */
#include "metrics_img.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fileio.h"

#define AB_SCALE 110.0f

static inline float clamp01(float v) {
    return v < 0.f ? 0.f : v > 1.f ? 1.f : v;
}

/* Lab of the pixel at offset i of an rgb-mode plane set in [-1, 1]. */
static void rgb_planes_to_lab(const float *p, size_t plane, size_t i, float lab[3]) {
    float rgb[3];
    for (int c = 0; c < 3; c++)
        rgb[c] = clamp01((p[c * plane + i] + 1.f) * 0.5f);
    cz_srgbf_to_lab(rgb, lab);
}

/* L of pixel i: from A in lab mode, from the truth in rgb mode. */
static float pixel_L(cz_color_mode mode, const float *A, const float *truth, size_t plane, size_t i) {
    if (mode == CZ_COLOR_LAB) return (A[i] + 1.f) * 50.f;
    float lab[3];
    rgb_planes_to_lab(truth, plane, i, lab);
    return lab[0];
}

/* ab (Lab units) of pixel i of a prediction or truth plane set. */
static void pixel_ab(cz_color_mode mode, const float *c, size_t plane, size_t i, float ab[2]) {
    if (mode == CZ_COLOR_LAB) {
        ab[0] = c[i] * AB_SCALE;
        ab[1] = c[plane + i] * AB_SCALE;
    } else {
        float lab[3];
        rgb_planes_to_lab(c, plane, i, lab);
        ab[0] = lab[1];
        ab[1] = lab[2];
    }
}

cz_status cz_metrics_to_rgb8(cz_color_mode mode, int size, const float *A, const float *color,
                             const float *truth, uint8_t *rgb_out) {
    if (size < 1 || !color || !rgb_out || (mode == CZ_COLOR_LAB && !A) || (mode == CZ_COLOR_RGB && !truth))
        return cz_error_set(CZ_ERR_INVALID_ARG, "cz_metrics_to_rgb8: bad arguments");
    const size_t plane = (size_t)size * size;
    for (size_t i = 0; i < plane; i++) {
        float ab[2];
        pixel_ab(mode, color, plane, i, ab);
        float lab[3] = {pixel_L(mode, A, truth, plane, i), ab[0], ab[1]};
        cz_lab_to_srgb8(lab, rgb_out + 3 * i);
    }
    return CZ_OK;
}

double cz_psnr_rgb8(const uint8_t *a, const uint8_t *b, size_t npx) {
    if (!a || !b || npx == 0) return NAN;
    double se = 0.0;
    for (size_t i = 0; i < 3 * npx; i++) {
        double d = (double)a[i] - (double)b[i];
        se += d * d;
    }
    if (se == 0.0) return INFINITY;
    double mse = se / (3.0 * (double)npx);
    return 10.0 * log10(255.0 * 255.0 / mse);
}

double cz_colorfulness_rgb8(const uint8_t *rgb, size_t npx) {
    if (!rgb || npx == 0) return 0.0;
    double s_rg = 0, s_yb = 0, q_rg = 0, q_yb = 0;
    for (size_t i = 0; i < npx; i++) {
        const double r = rgb[3 * i], g = rgb[3 * i + 1], b = rgb[3 * i + 2];
        const double rg = r - g, yb = 0.5 * (r + g) - b;
        s_rg += rg;
        s_yb += yb;
        q_rg += rg * rg;
        q_yb += yb * yb;
    }
    const double n = (double)npx;
    const double m_rg = s_rg / n, m_yb = s_yb / n;
    double v_rg = q_rg / n - m_rg * m_rg, v_yb = q_yb / n - m_yb * m_yb;
    if (v_rg < 0) v_rg = 0; /* rounding */
    if (v_yb < 0) v_yb = 0;
    return sqrt(v_rg + v_yb) + 0.3 * sqrt(m_rg * m_rg + m_yb * m_yb);
}

void cz_metrics_acc_init(cz_metrics_acc *acc, cz_color_mode mode) {
    if (!acc) return;
    memset(acc, 0, sizeof *acc);
    acc->mode = mode;
}

cz_status cz_metrics_acc_add(cz_metrics_acc *acc, int n, int size, const float *A, const float *pred,
                             const float *truth) {
    if (!acc || !pred || !truth || (acc->mode == CZ_COLOR_LAB && !A))
        return cz_error_set(CZ_ERR_INVALID_ARG, "cz_metrics_acc_add: NULL argument");
    if (acc->mode != CZ_COLOR_LAB && acc->mode != CZ_COLOR_RGB)
        return cz_error_set(CZ_ERR_INVALID_ARG, "cz_metrics_acc_add: unknown colour mode %d", (int)acc->mode);
    if (n < 0 || size < 1)
        return cz_error_set(CZ_ERR_INVALID_ARG, "cz_metrics_acc_add: %d images of %d px", n, size);
    if (n == 0) return CZ_OK;
    const size_t plane = (size_t)size * size;
    const int a_ch = acc->mode == CZ_COLOR_LAB ? 1 : 3, c_ch = acc->mode == CZ_COLOR_LAB ? 2 : 3;
    uint8_t *po = malloc(6 * plane), *pt = po + 3 * plane;
    if (!po) return cz_error_set(CZ_ERR_NOMEM, "metrics: out of memory");
    for (int k = 0; k < n; k++) {
        const float *a = A ? A + (size_t)k * a_ch * plane : NULL;
        const float *p = pred + (size_t)k * c_ch * plane, *t = truth + (size_t)k * c_ch * plane;
        double l1 = 0.0, l1ab = 0.0;
        for (size_t i = 0; i < (size_t)c_ch * plane; i++)
            l1 += fabs((double)p[i] - (double)t[i]);
        for (size_t i = 0; i < plane; i++) {
            float abp[2], abt[2];
            pixel_ab(acc->mode, p, plane, i, abp);
            pixel_ab(acc->mode, t, plane, i, abt);
            const float L = pixel_L(acc->mode, a, t, plane, i);
            l1ab += fabs((double)abp[0] - abt[0]) + fabs((double)abp[1] - abt[1]);
            float lp[3] = {L, abp[0], abp[1]}, lt[3] = {L, abt[0], abt[1]};
            cz_lab_to_srgb8(lp, po + 3 * i);
            cz_lab_to_srgb8(lt, pt + 3 * i);
        }
        double psnr = cz_psnr_rgb8(po, pt, plane);
        if (!(psnr < CZ_PSNR_CAP_DB)) psnr = isnan(psnr) ? psnr : CZ_PSNR_CAP_DB;
        acc->l1_sum += l1 / ((double)c_ch * plane);
        acc->l1_ab_sum += l1ab / (2.0 * plane);
        acc->psnr_sum += psnr;
        acc->cf_pred_sum += cz_colorfulness_rgb8(po, plane);
        acc->cf_true_sum += cz_colorfulness_rgb8(pt, plane);
        acc->images++;
    }
    free(po);
    return CZ_OK;
}

void cz_metrics_acc_result(const cz_metrics_acc *acc, cz_val_metrics *out) {
    if (!out) return;
    memset(out, 0, sizeof *out);
    if (!acc || acc->images == 0) return;
    const double n = (double)acc->images;
    out->images = acc->images;
    out->l1 = acc->l1_sum / n;
    out->l1_ab = acc->l1_ab_sum / n;
    out->psnr = acc->psnr_sum / n;
    out->colorfulness_pred = acc->cf_pred_sum / n;
    out->colorfulness_true = acc->cf_true_sum / n;
    out->colorfulness_ratio =
        out->colorfulness_true > 0 ? out->colorfulness_pred / out->colorfulness_true : 0.0;
}

/* Copies a size x size RGB tile into column `col` of row `row` of the sheet. */
static void blit(cz_image *sheet, int size, int row, int col, const uint8_t *tile) {
    for (int y = 0; y < size; y++)
        memcpy(sheet->px + ((size_t)(row * size + y) * sheet->width + (size_t)col * size) * 3,
               tile + (size_t)y * size * 3, (size_t)size * 3);
}

cz_status cz_sample_sheet_render(cz_color_mode mode, int n, int size, const float *A, const float *pred,
                                 const float *truth, cz_image *out) {
    if (!out) return cz_error_set(CZ_ERR_INVALID_ARG, "sample sheet: NULL output");
    memset(out, 0, sizeof *out);
    if (n < 1 || size < 1 || !pred || !truth || (mode == CZ_COLOR_LAB && !A) ||
        (mode != CZ_COLOR_LAB && mode != CZ_COLOR_RGB))
        return cz_error_set(CZ_ERR_INVALID_ARG, "sample sheet: bad arguments (%d images of %d px)", n, size);
    if ((long long)n * size > 65535 || 3LL * size > 65535)
        return cz_error_set(CZ_ERR_TOO_LARGE, "sample sheet: %d rows of %d px is too large", n, size);
    const size_t plane = (size_t)size * size;
    const int a_ch = mode == CZ_COLOR_LAB ? 1 : 3, c_ch = mode == CZ_COLOR_LAB ? 2 : 3;
    uint8_t *tile = malloc(3 * plane);
    if (!tile) return cz_error_set(CZ_ERR_NOMEM, "sample sheet: out of memory");
    cz_status s = cz_image_alloc(out, 3 * size, n * size, 3);
    for (int k = 0; s == CZ_OK && k < n; k++) {
        const float *a = A ? A + (size_t)k * a_ch * plane : NULL;
        const float *p = pred + (size_t)k * c_ch * plane, *t = truth + (size_t)k * c_ch * plane;
        for (size_t i = 0; i < plane; i++) {
            const float lab[3] = {pixel_L(mode, a, t, plane, i), 0.f, 0.f};
            cz_lab_to_srgb8(lab, tile + 3 * i);
        }
        blit(out, size, k, 0, tile);
        s = cz_metrics_to_rgb8(mode, size, a, p, t, tile);
        if (s == CZ_OK) blit(out, size, k, 1, tile);
        if (s == CZ_OK) s = cz_metrics_to_rgb8(mode, size, a, t, t, tile);
        if (s == CZ_OK) blit(out, size, k, 2, tile);
    }
    free(tile);
    if (s != CZ_OK) cz_image_free(out);
    return s;
}

cz_status cz_sample_sheet_png(cz_color_mode mode, int n, int size, const float *A, const float *pred,
                              const float *truth, uint8_t **png, size_t *png_len) {
    if (!png || !png_len) return cz_error_set(CZ_ERR_INVALID_ARG, "sample sheet: NULL output");
    *png = NULL;
    *png_len = 0;
    cz_image sheet;
    CZ_TRY(cz_sample_sheet_render(mode, n, size, A, pred, truth, &sheet));
    cz_status s = cz_image_encode(&sheet, CZ_FMT_PNG, 0, png, png_len);
    cz_image_free(&sheet);
    return s;
}

cz_status cz_sample_sheet_write(const char *path, cz_color_mode mode, int n, int size, const float *A,
                                const float *pred, const float *truth) {
    if (!path) return cz_error_set(CZ_ERR_INVALID_ARG, "sample sheet: NULL path");
    uint8_t *png;
    size_t len;
    CZ_TRY(cz_sample_sheet_png(mode, n, size, A, pred, truth, &png, &len));
    cz_status s = cz_file_write_atomic(path, png, len);
    free(png);
    return s;
}
