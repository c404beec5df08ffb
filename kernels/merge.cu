/* merge.cu: the final merge of a colorization on the device (backend.h merge_lab): the
 * network's ab output, scaled, cropped to the scaled image, upsampled bilinearly to the source
 * size and combined with the source's own L into 8-bit sRGB, byte-identical to the host's
 * cz_render_merge_ab (core/image_geom.c) on the same ab values.
 *
 * Exactness: each output pixel repeats the host's operations in the host's order, in the same
 * precision: the taps and weights of cz_lx_bilinear (double), per ab plane a horizontal pass
 * h_j = 0.0 + w0 * v(j, first) [+ w1 * v(j, last)] for each source row j the pixel reads, then
 * acc = 0.0 + wy0 * h_first [+ wy1 * h_last] rounded to float (the row resampler's rr_hrow and
 * rr_row: a tap whose weight is exactly 0.0 is skipped, a repeated edge tap counted once), with
 * v = (float)stored * ab_scale as a float product (the host's net_out * scale), then Lab ->
 * linear RGB with the gamut clip and the 8-bit code through lab_exact.h, whose tables the
 * caller copied from the host. The result is exact only without fused multiply-adds:
 * kernels/CMakeLists.txt compiles this file with nvcc -fmad=false (and, in the emulator build,
 * with -ffp-contract=off).
 *
 * Batching: one launch merges every image of a merge_lab call. The kernel runs over the batch's
 * pixels numbered consecutively, item after item (a grid-stride loop, so the grid has no limit
 * tied to the batch or image sizes, and big and small images share the threads evenly); a
 * thread finds the item of its pixel by a binary search of the descriptors' first_px. A
 * thread's pixels only grow, so each search starts at the item of its previous pixel. Only the
 * addressing differs from the one-image kernel: the arithmetic per pixel is unchanged.
 * Stateless launcher on the caller's stream. Tested against cz_render_merge_ab by
 * tests/unit/test_ops.c (merge_lab). */
#include "cu_common.cuh"
#include "lab_exact.h"

/* The float input of the resampler at (row, col) of the scaled image, plane ch. */
static __device__ __forceinline__ float merge_v(const void *ab, int dt, size_t img, int net_h, int net_w, int row,
                                                int col, int ch, float ab_scale) {
    size_t i = (((img * (size_t)net_h + (size_t)row) * (size_t)net_w + (size_t)col) * 2u) + (size_t)ch;
    float v = cuk_ld(ab, dt, i);
    return v * ab_scale;
}

/* One plane's resampled value at the pixel whose taps are given (the host's rr_row). */
static __device__ __forceinline__ float merge_sample(const void *ab, int dt, size_t img, int net_h, int net_w,
                                                     int off_x, int off_y, int ch, float ab_scale, int x0, int x1,
                                                     double wx0, double wx1, int y0, int y1, double wy0,
                                                     double wy1) {
    double acc = 0.0;
    for (int t = 0; t < 2; t++) {
        if (t == 1 && y1 == y0) break;
        int j = t ? y1 : y0;
        double wy = t ? wy1 : wy0;
        if (wy == 0.0) continue;
        double h = 0.0;
        for (int u = 0; u < 2; u++) {
            if (u == 1 && x1 == x0) break;
            int k = u ? x1 : x0;
            double wx = u ? wx1 : wx0;
            if (wx == 0.0) continue;
            h += wx * (double)merge_v(ab, dt, img, net_h, net_w, off_y + j, off_x + k, ch, ab_scale);
        }
        acc += wy * h;
    }
    return (float)acc;
}

static __global__ void k_merge_lab(const void *ab, int dt, int net_h, int net_w, float ab_scale,
                                   const cuk_merge_desc *desc, int n, size_t total, unsigned char *buf,
                                   const cz_lab_exact_tab *tab) {
    int item = 0;
    CUK_FOR(q, total) {
        /* the last item whose first pixel is at or before q */
        int lo = item, hi = n - 1;
        while (lo < hi) {
            int mid = lo + (hi - lo + 1) / 2;
            if (desc[mid].first_px <= q)
                lo = mid;
            else
                hi = mid - 1;
        }
        item = lo;
        const cuk_merge_desc *d = &desc[item];
        size_t p = q - d->first_px;
        int src_w = d->src_w, src_h = d->src_h;
        int x = (int)(p % (size_t)src_w), y = (int)(p / (size_t)src_w);
        int x0, x1, y0, y1;
        double wx0, wx1, wy0, wy1;
        cz_lx_bilinear(x, d->scaled_w, src_w, &x0, &x1, &wx0, &wx1);
        cz_lx_bilinear(y, d->scaled_h, src_h, &y0, &y1, &wy0, &wy1);
        float a = merge_sample(ab, dt, (size_t)d->img, net_h, net_w, d->off_x, d->off_y, 0, ab_scale, x0, x1,
                               wx0, wx1, y0, y1, wy0, wy1);
        float b = merge_sample(ab, dt, (size_t)d->img, net_h, net_w, d->off_x, d->off_y, 1, ab_scale, x0, x1,
                               wx0, wx1, y0, y1, wy0, wy1);
        const float *L = (const float *)(buf + d->l_off);
        unsigned char *rgb = buf + d->rgb_off;
        double lin[3];
        cz_lx_linear_clipped(tab, L[p], a, b, lin);
        for (int c = 0; c < 3; c++) rgb[p * 3 + (size_t)c] = (unsigned char)cz_lx_code(tab, lin[c]);
    }
}

extern "C" int cuk_merge_lab(const void *ab, int dt, int net_h, int net_w, float ab_scale,
                             const cuk_merge_desc *desc, int n, size_t total, unsigned char *buf,
                             const struct cz_lab_exact_tab *tab, cuk_stream s) {
    unsigned nb = cuk_blocks(total);
    CUK_LAUNCH(k_merge_lab, nb, CUK_THREADS, 0, s)(ab, dt, net_h, net_w, ab_scale, desc, n, total, buf, tab);
    return cuk_last();
}
