/* metrics_img.h: validation metrics for colorization and the sample sheet.
 *
 * Inputs are batches in the dataset's layout (dataset.h): NCHW float, S x S per image,
 *   lab mode: A = L/50 - 1 (1 plane), prediction and truth = ab/110 (2 planes);
 *   rgb mode: A = gray sRGB in [-1, 1] (3 planes), prediction and truth = sRGB in [-1, 1].
 * The coloured result is made as the serving path makes it: lab mode merges L with the
 * predicted ab; rgb mode converts the prediction to Lab, keeps its ab and merges it with the
 * true L. Then Lab -> 8-bit sRGB (cz_lab_to_srgb8). The ground truth goes through the same
 * conversion (true L + true ab), so a perfect prediction scores exactly like the truth.
 *
 * Metrics (averaged over images, per-pixel means within an image weighted equally):
 *  - l1: mean |pred - truth| in the model's units (ab/110, or RGB in [-1, 1]);
 *  - l1_ab: mean |ab_pred - ab_true| in Lab units (lab: 110 x l1; rgb: after conversion);
 *  - psnr: per image, 10 log10(255^2 / MSE) over the three 8-bit channels; identical images
 *    give +inf from cz_psnr_rgb8, and the accumulator caps each image at CZ_PSNR_CAP_DB so the
 *    mean stays finite (JSON has no infinity);
 *  - colorfulness (Hasler and Suesstrunk 2003) of each 8-bit result and truth: rg = R - G,
 *    yb = (R + G)/2 - B, M = sqrt(sd_rg^2 + sd_yb^2) + 0.3 sqrt(mean_rg^2 + mean_yb^2)
 *    (population standard deviations); means of M for outputs and truths and their ratio
 *    (outputs / truths; 0 when the truths' mean is 0).
 *
 * Threading: reentrant; an accumulator belongs to one thread. Tested by
 * tests/unit/test_metrics_img.c. */
#ifndef CZ_METRICS_IMG_H
#define CZ_METRICS_IMG_H

#include <stddef.h>
#include <stdint.h>

#include "image.h"
#include "status.h"
#include "unet.h" /* cz_color_mode */

#define CZ_PSNR_CAP_DB 100.0

typedef struct cz_val_metrics {
    size_t images;
    double l1, l1_ab;
    double psnr;
    double colorfulness_pred, colorfulness_true, colorfulness_ratio;
} cz_val_metrics;

typedef struct cz_metrics_acc {
    cz_color_mode mode;
    size_t images;
    double l1_sum, l1_ab_sum, psnr_sum, cf_pred_sum, cf_true_sum;
} cz_metrics_acc;

void cz_metrics_acc_init(cz_metrics_acc *acc, cz_color_mode mode);
/* Adds n images of size x size. A: n x a_ch planes; pred and truth: n x c planes (see top). */
cz_status cz_metrics_acc_add(cz_metrics_acc *acc, int n, int size, const float *A, const float *pred,
                             const float *truth);
/* Means so far (all zero when no image was added). */
void cz_metrics_acc_result(const cz_metrics_acc *acc, cz_val_metrics *out);

/* PSNR (dB, peak 255) between two 8-bit RGB buffers of npx pixels; +inf when identical. */
double cz_psnr_rgb8(const uint8_t *a, const uint8_t *b, size_t npx);
/* Hasler-Suesstrunk colorfulness of an 8-bit RGB buffer of npx pixels (0 for gray). */
double cz_colorfulness_rgb8(const uint8_t *rgb, size_t npx);

/* One image to 8-bit interleaved RGB (size*size*3 bytes in rgb_out): the coloured result of
 * `color` (prediction or truth planes) with the image's L (see top). `truth` supplies L in
 * rgb mode and may be NULL in lab mode. */
cz_status cz_metrics_to_rgb8(cz_color_mode mode, int size, const float *A, const float *color,
                             const float *truth, uint8_t *rgb_out);

/* Sample sheet: n rows of (gray | ours | truth), each size x size, no gutters, so the image is
 * 3*size wide and n*size high. `out` is allocated here (cz_image_free). */
cz_status cz_sample_sheet_render(cz_color_mode mode, int n, int size, const float *A, const float *pred,
                                 const float *truth, cz_image *out);
/* The same as an 8-bit RGB PNG in memory (*png malloc'd) or written atomically to `path`. */
cz_status cz_sample_sheet_png(cz_color_mode mode, int n, int size, const float *A, const float *pred,
                              const float *truth, uint8_t **png, size_t *png_len);
cz_status cz_sample_sheet_write(const char *path, cz_color_mode mode, int n, int size, const float *A,
                                const float *pred, const float *truth);

#endif
