/* colorize.c: prepare / run / finish stages of a colorization job. See colorize.h.
 *
 * Color modes:
 *   lab: net input = L/50 - 1 (1 plane), output ab/110 in [-1, 1] (2 planes).
 *   rgb: net input = the gray sRGB of L replicated on 3 planes, scaled to [-1, 1]; the output
 *        RGB is converted to Lab and only its ab is kept, so luminance still comes from the
 *        source in both modes.
 * Forward passes: each of the CZ_COLORIZER_PASSES pass slots has its own staging buffers (input
 * and output of one batch, page-locked where the backend offers it), allocated for max_batch
 * images of the size first run through it and grown when a bigger size appears. On a backend
 * with asynchronous transfers (cuda) a launched pass returns at once, so the caller can stage
 * the next batch while the device runs this one; its upload then overlaps the device's compute,
 * and its download the next pass's.
 * Device finish: on a backend with merge_lab, a lab model and a pool, jobs whose L and RGB got a
 * pool block at prepare are finished by the device when the whole batch has one: the pass
 * uploads the input, runs the U-Net, and merge_lab uploads each L, upsamples and converts on
 * the device and downloads the RGB, all queued behind each other; no ab comes back. A batch
 * with any job outside the pool takes the host path (ab downloaded, merged on the HTTP thread),
 * so a full pool costs speed, never a result. Both paths give the same bytes (lab_exact.h). */
#include "colorize.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "host_pool.h"
#include "log.h"

#define AB_SCALE 110.0f

/* One forward pass in flight: its staging buffers (page-locked where the backend offers it)
 * and the jobs whose outputs it fills. */
typedef struct cz_pass {
    cz_host_buf in, out;
    cz_merge_item *items; /* max_batch entries: the device-finish descriptions */
    int device;           /* the pass in flight finishes its jobs on the device */
    size_t px;        /* pixels per image the staging buffers hold */
    size_t out_sz;    /* output values per image of the pass in flight */
    cz_cjob **jobs;   /* max_batch entries */
    int n, busy;
    uint64_t ticket;
} cz_pass;

struct cz_colorizer {
    cz_backend *be;
    cz_unet *unet;
    cz_unet_arch arch;
    int max_batch;
    uint64_t checksum;
    cz_host_pool *pool; /* opts.pool, where the backend finishes on the device; else NULL */
    cz_pass pass[CZ_COLORIZER_PASSES];
    int next; /* the pass slot the next launch uses */
};

cz_status cz_colorizer_create(cz_backend *be, const char *weights_path, const cz_colorizer_opts *opt,
                              cz_colorizer **out) {
    *out = NULL;
    if (opt->max_batch < 1 || opt->max_batch > 1024)
        return cz_error_set(CZ_ERR_INVALID_ARG, "max_batch %d out of range 1..1024", opt->max_batch);
    cz_safetensors *st = NULL;
    cz_status s = cz_st_open(weights_path, &st);
    if (s != CZ_OK) return s;
    cz_colorizer *cz = calloc(1, sizeof *cz);
    if (!cz) {
        cz_st_close(st);
        return cz_error_set(CZ_ERR_NOMEM, "out of memory");
    }
    cz->be = be;
    cz->max_batch = opt->max_batch;
    cz->checksum = cz_st_checksum(st);
    s = cz_unet_create(be, st, opt->precision, &cz->unet);
    cz_st_close(st);
    if (s != CZ_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", cz_error_detail());
        free(cz);
        return cz_error_set(s, "%s: %s", weights_path, msg);
    }
    cz_unet_set_full_batches(cz->unet, opt->full_batches);
    for (int i = 0; i < CZ_COLORIZER_PASSES; i++) {
        cz->pass[i].jobs = calloc((size_t)opt->max_batch, sizeof *cz->pass[i].jobs);
        cz->pass[i].items = calloc((size_t)opt->max_batch, sizeof *cz->pass[i].items);
        if (!cz->pass[i].jobs || !cz->pass[i].items) {
            cz_colorizer_destroy(cz); /* frees what exists so far */
            return cz_error_set(CZ_ERR_NOMEM, "out of memory");
        }
    }
    cz->arch = *cz_unet_get_arch(cz->unet);
    if (opt->pool && be->ops->merge_lab && cz->arch.mode == CZ_COLOR_LAB && cz_unet_async(cz->unet))
        cz->pool = opt->pool;
    CZ_LOGI("colorize", "loaded %s: U-Net ngf %d depth %d %s, %zu parameters, checksum %016llx, backend %s %s",
            weights_path, cz->arch.ngf, cz->arch.depth, cz_color_mode_name(cz->arch.mode),
            cz_unet_param_count(&cz->arch), (unsigned long long)cz->checksum, be->ops->name,
            cz_dtype_name(opt->precision));
    *out = cz;
    return CZ_OK;
}

void cz_colorizer_destroy(cz_colorizer *cz) {
    if (!cz) return;
    cz_unet_destroy(cz->unet); /* waits for the device */
    for (int i = 0; i < CZ_COLORIZER_PASSES; i++) {
        cz_host_buf_free(cz->be, &cz->pass[i].in);
        cz_host_buf_free(cz->be, &cz->pass[i].out);
        free(cz->pass[i].jobs);
        free(cz->pass[i].items);
    }
    free(cz);
}

const cz_unet_arch *cz_colorizer_arch(const cz_colorizer *cz) { return &cz->arch; }
cz_unet *cz_colorizer_unet(cz_colorizer *cz) { return cz->unet; }
uint64_t cz_colorizer_checksum(const cz_colorizer *cz) { return cz->checksum; }
int cz_colorizer_max_batch(const cz_colorizer *cz) { return cz->max_batch; }

cz_status cz_render_validate(const cz_colorizer *cz, int render) {
    int m = cz_unet_multiple(&cz->arch);
    if (render < m || render > CZ_RENDER_MAX || render % m)
        return cz_error_set(CZ_ERR_INVALID_ARG, "render %d must be a multiple of %d between %d and %d", render,
                            m, m, CZ_RENDER_MAX);
    return CZ_OK;
}

void cz_cjob_release(cz_cjob *job) {
    if (!job) return;
    if (job->pool_block)
        cz_host_pool_free(job->pool, job->pool_block); /* L_full and rgb live in it */
    else
        free(job->L_full);
    free(job->net_in);
    free(job->net_out);
    memset(job, 0, sizeof *job);
}

cz_status cz_cjob_prepare(const cz_colorizer *cz, const cz_image *src, int render, cz_cjob *job) {
    memset(job, 0, sizeof *job);
    CZ_TRY(cz_render_validate(cz, render));
    if (src->width < 1 || src->height < 1)
        return cz_error_set(CZ_ERR_EMPTY_IMAGE, "image is %dx%d", src->width, src->height);
    CZ_TRY(cz_render_geom_compute(src->width, src->height, render, cz_unet_multiple(&cz->arch), &job->geom));
    const cz_render_geom *g = &job->geom;
    size_t full = (size_t)src->width * src->height, net = (size_t)g->net_w * g->net_h;
    job->src_channels = src->channels;
    if (cz->pool && g->scaled_w <= 2 * g->src_w && g->scaled_h <= 2 * g->src_h) {
        /* one block: L (floats), then the RGB the device will write */
        size_t l_bytes = (full * sizeof(float) + CZ_HOST_POOL_ALIGN - 1) / CZ_HOST_POOL_ALIGN * CZ_HOST_POOL_ALIGN;
        void *blk = cz_host_pool_alloc(cz->pool, l_bytes + 3 * full);
        if (blk) {
            job->pool = cz->pool;
            job->pool_block = blk;
            job->L_full = blk;
            job->rgb = (uint8_t *)blk + l_bytes;
        }
    }
    if (!job->L_full) job->L_full = malloc(full * sizeof(float));
    job->net_in = malloc(net * (size_t)cz->arch.in_ch * sizeof(float));
    job->net_out = malloc(net * (size_t)cz->arch.out_ch * sizeof(float));
    if (!job->L_full || !job->net_in || !job->net_out) {
        cz_cjob_release(job);
        return cz_error_set(CZ_ERR_NOMEM, "cannot allocate buffers for a %dx%d image", src->width, src->height);
    }
    cz_status s = cz_image_lightness(src, job->L_full);
    if (s != CZ_OK) {
        cz_cjob_release(job);
        return s;
    }
    cz_render_input_L(job->L_full, g, job->net_in);
    if (cz->arch.mode == CZ_COLOR_RGB) {
        /* L/50-1 -> gray sRGB in [-1,1], replicated to three planes */
        for (size_t i = 0; i < net; i++) {
            float lab[3] = {(job->net_in[i] + 1.f) * 50.f, 0.f, 0.f}, rgb[3];
            cz_lab_to_srgbf(lab, rgb);
            job->net_in[i] = rgb[0] * 2.f - 1.f;
        }
        memcpy(job->net_in + net, job->net_in, net * sizeof(float));
        memcpy(job->net_in + 2 * net, job->net_in, net * sizeof(float));
    }
    return CZ_OK;
}

int cz_render_shapes(const cz_colorizer *cz, int render, int *w, int *h, int cap) {
    int m = cz_unet_multiple(&cz->arch), n = 0;
    if (cz_render_validate(cz, render) != CZ_OK) return 0;
    for (int k = render / m; k >= 1; k--) {
        int sw = render, sh = k * m;
        for (int t = 0; t < (k * m == render ? 1 : 2); t++) {
            if (n < cap) {
                w[n] = t ? sh : sw;
                h[n] = t ? sw : sh;
            }
            n++;
        }
    }
    return n;
}

int cz_colorizer_warm_sizes(const cz_colorizer *cz, int square, int *n, int cap) {
    int k = 0;
    if (cz_unet_full_batches(cz->unet)) { /* every pass runs max_batch images */
        if (k < cap) n[k++] = square || cz->be->ops->record_begin ? cz->max_batch : 0;
    } else if (square) {
        for (int b = cz->max_batch; b >= 1; b--)
            if (k < cap) n[k++] = b;
    } else if (!cz->be->ops->record_begin) {
        if (k < cap) n[k++] = 0;
    } else { /* a recording backend runs every batch padded to one of these (unet.h) */
        int p = 1;
        while (p * 2 < cz->max_batch) p *= 2;
        if (k < cap) n[k++] = cz->max_batch;
        for (; p >= 1 && p < cz->max_batch; p /= 2)
            if (k < cap) n[k++] = p;
    }
    return k;
}

cz_status cz_colorizer_warm_shape(cz_colorizer *cz, int net_w, int net_h, int n) {
    if (n < 0 || n > cz->max_batch)
        return cz_error_set(CZ_ERR_INVALID_ARG, "warm-up batch of %d images, expected 0..%d", n, cz->max_batch);
    const cz_unet_arch *a = cz_colorizer_arch(cz);
    int m = cz_unet_multiple(a), r = net_w > net_h ? net_w : net_h;
    CZ_TRY(cz_render_validate(cz, r));
    if (net_w < m || net_h < m || net_w % m || net_h % m)
        return cz_error_set(CZ_ERR_INVALID_ARG, "warm-up at %dx%d: not a multiple of %d", net_w, net_h, m);
    if (n == 0) return cz_unet_plan(cz->unet, cz->max_batch, net_h, net_w);
    cz_cjob job;
    memset(&job, 0, sizeof job);
    /* a photo of exactly the network's size renders at its long side unscaled */
    CZ_TRY(cz_render_geom_compute(net_w, net_h, r, m, &job.geom));
    size_t px = (size_t)job.geom.net_w * job.geom.net_h;
    job.net_in = calloc(px * (size_t)a->in_ch, sizeof(float));
    job.net_out = calloc(px * (size_t)a->out_ch, sizeof(float));
    cz_cjob **ptrs = calloc((size_t)n, sizeof *ptrs);
    cz_status s = CZ_OK;
    if (!job.net_in || !job.net_out || !ptrs) {
        s = cz_error_set(CZ_ERR_NOMEM, "warm-up buffers for %dx%d", job.geom.net_w, job.geom.net_h);
    } else {
        for (int i = 0; i < n; i++) ptrs[i] = &job;
        s = cz_colorizer_run(cz, ptrs, n);
        /* where forward passes are recorded (CUDA graphs), the first pass of a batch size runs
         * op by op and the second records: make the recording now, not during traffic */
        if (s == CZ_OK && cz->be->ops->record_begin) s = cz_colorizer_run(cz, ptrs, n);
    }
    free(ptrs);
    free(job.net_in);
    free(job.net_out);
    return s;
}

/* Appends a step, growing the array. */
static int step_add(cz_warm_step **v, int *n, int *cap, int w, int h, int b, int keep) {
    if (*n == *cap) {
        int nc = *cap ? 2 * *cap : 64;
        cz_warm_step *g = realloc(*v, (size_t)nc * sizeof *g);
        if (!g) return -1;
        *v = g;
        *cap = nc;
    }
    (*v)[(*n)++] = (cz_warm_step){.w = w, .h = h, .n = b, .keep = keep};
    return 0;
}

cz_status cz_colorizer_warm_steps(const cz_colorizer *cz, const int *renders, int nr, int max_shapes,
                                  cz_warm_step **out, int *count, int *left_out) {
    *out = NULL;
    *count = *left_out = 0;
    cz_warm_step *v = NULL;
    int n = 0, cap = 0, fail = 0, shapes = 0, big = 0;
    int *sizes = malloc((size_t)(cz->max_batch + 1) * sizeof *sizes);
    if (!sizes) return cz_error_set(CZ_ERR_NOMEM, "warm-up steps");
    for (int i = 0; i < nr; i++) {
        if (cz_render_validate(cz, renders[i]) != CZ_OK) {
            free(sizes);
            return CZ_ERR_INVALID_ARG;
        }
        if (renders[i] > big) big = renders[i];
    }
    /* the largest square planned first: the shared stores are allocated once, at full size */
    if (nr > 1 && big != renders[0]) fail |= step_add(&v, &n, &cap, big, big, 0, 0);
    for (int i = 0; i < nr; i++) {
        int ns = cz_colorizer_warm_sizes(cz, 1, sizes, cz->max_batch + 1);
        for (int k = 0; k < ns; k++) fail |= step_add(&v, &n, &cap, renders[i], renders[i], sizes[k], k == ns - 1);
        shapes++;
    }
    int ws[2 * (CZ_RENDER_MAX / 32)], hs[2 * (CZ_RENDER_MAX / 32)];
    for (int i = 0; i < nr; i++) {
        int nsh = cz_render_shapes(cz, renders[i], ws, hs, (int)(sizeof ws / sizeof *ws));
        for (int j = 1; j < nsh; j++) { /* 0 is the square */
            if (shapes >= max_shapes) {
                (*left_out)++;
                continue;
            }
            int ns = cz_colorizer_warm_sizes(cz, 0, sizes, cz->max_batch + 1);
            for (int k = 0; k < ns; k++) fail |= step_add(&v, &n, &cap, ws[j], hs[j], sizes[k], k == ns - 1);
            shapes++;
        }
    }
    free(sizes);
    if (fail) {
        free(v);
        *left_out = 0;
        return cz_error_set(CZ_ERR_NOMEM, "warm-up steps");
    }
    *out = v;
    *count = n;
    return CZ_OK;
}

cz_status cz_colorizer_warm_step(cz_colorizer *cz, const cz_warm_step *st) {
    CZ_TRY(cz_colorizer_warm_shape(cz, st->w, st->h, st->n));
    return st->keep ? cz_unet_plan_keep(cz->unet, st->h, st->w) : CZ_OK;
}

int cz_warm_step_nomem(const cz_warm_step *st, int first_done) {
    if (first_done) return CZ_WARM_STOP;
    return st->n == 0 && !st->keep ? CZ_WARM_GO_ON : CZ_WARM_FAIL;
}

int cz_colorizer_pipelined(const cz_colorizer *cz) { return cz_unet_async(cz->unet); }

cz_status cz_colorizer_launch(cz_colorizer *cz, cz_cjob *const *jobs, int n, int *handle) {
    *handle = -1;
    if (n < 1 || n > cz->max_batch)
        return cz_error_set(CZ_ERR_INVALID_ARG, "batch of %d images, expected 1..%d", n, cz->max_batch);
    int h = jobs[0]->geom.net_h, w = jobs[0]->geom.net_w;
    for (int i = 1; i < n; i++)
        if (jobs[i]->geom.net_h != h || jobs[i]->geom.net_w != w)
            return cz_error_set(CZ_ERR_INVALID_ARG, "batch mixes network sizes %dx%d and %dx%d", w, h,
                                jobs[i]->geom.net_w, jobs[i]->geom.net_h);
    cz_pass *ps = &cz->pass[cz->next];
    if (ps->busy)
        return cz_error_set(CZ_ERR_INVALID_ARG, "%d forward passes are in flight already: collect one first",
                            CZ_COLORIZER_PASSES);
    size_t px = (size_t)h * w;
    if (px > ps->px) {
        size_t bi = px * (size_t)cz->max_batch * (size_t)cz->arch.in_ch * sizeof(float);
        size_t bo = px * (size_t)cz->max_batch * (size_t)cz->arch.out_ch * sizeof(float);
        if (cz_host_buf_reserve(cz->be, &ps->in, bi) != CZ_OK || cz_host_buf_reserve(cz->be, &ps->out, bo) != CZ_OK)
            return cz_error_set(CZ_ERR_NOMEM, "cannot allocate batch buffers for %dx%d", w, h);
        ps->px = px;
    }
    float *stage_in = ps->in.p;
    CZ_TRY(cz_unet_plan(cz->unet, cz->max_batch, h, w));
    size_t in_sz = px * (size_t)cz->arch.in_ch;
    for (int i = 0; i < n; i++) memcpy(stage_in + (size_t)i * in_sz, jobs[i]->net_in, in_sz * sizeof(float));
    int device = cz->pool != NULL;
    for (int i = 0; i < n; i++) {
        device = device && jobs[i]->rgb;
        jobs[i]->rgb_ready = 0;
    }
    cz_status s;
    if (device) {
        cz_tensor ab;
        s = cz_unet_launch_device(cz->unet, n, h, w, stage_in, &ab);
        for (int i = 0; s == CZ_OK && i < n; i++) {
            const cz_render_geom *g = &jobs[i]->geom;
            ps->items[i] = (cz_merge_item){.L = jobs[i]->L_full, .rgb = jobs[i]->rgb, .src_w = g->src_w,
                                           .src_h = g->src_h, .scaled_w = g->scaled_w, .scaled_h = g->scaled_h,
                                           .off_x = g->off_x, .off_y = g->off_y};
        }
        if (s == CZ_OK) s = cz->be->ops->merge_lab(cz->be, &ab, ps->items, n, AB_SCALE, &ps->ticket);
    } else {
        s = cz_unet_launch(cz->unet, n, h, w, stage_in, ps->out.p, &ps->ticket);
    }
    if (s != CZ_OK) {
        /* part of the pass may be queued: let it finish before the buffers are reused */
        char msg[512];
        snprintf(msg, sizeof msg, "%s", cz_error_detail());
        (void)cz->be->ops->sync(cz->be);
        return cz_error_set(s, "%s", msg);
    }
    memcpy(ps->jobs, jobs, (size_t)n * sizeof *jobs);
    ps->n = n;
    ps->out_sz = px * (size_t)cz->arch.out_ch;
    ps->device = device;
    ps->busy = 1;
    *handle = cz->next;
    cz->next = (cz->next + 1) % CZ_COLORIZER_PASSES;
    return CZ_OK;
}

cz_status cz_colorizer_collect(cz_colorizer *cz, int handle) {
    if (handle < 0 || handle >= CZ_COLORIZER_PASSES || !cz->pass[handle].busy)
        return cz_error_set(CZ_ERR_INVALID_ARG, "collect: no forward pass %d in flight", handle);
    cz_pass *ps = &cz->pass[handle];
    ps->busy = 0;
    CZ_TRY(cz_unet_wait(cz->unet, ps->ticket));
    if (ps->device) {
        for (int i = 0; i < ps->n; i++) ps->jobs[i]->rgb_ready = 1;
        return CZ_OK;
    }
    const float *stage_out = ps->out.p;
    for (int i = 0; i < ps->n; i++)
        memcpy(ps->jobs[i]->net_out, stage_out + (size_t)i * ps->out_sz, ps->out_sz * sizeof(float));
    return CZ_OK;
}

cz_status cz_colorizer_run(cz_colorizer *cz, cz_cjob *const *jobs, int n) {
    int handle;
    CZ_TRY(cz_colorizer_launch(cz, jobs, n, &handle));
    return cz_colorizer_collect(cz, handle);
}

cz_status cz_cjob_finish(const cz_colorizer *cz, const cz_cjob *job, cz_image *out) {
    const cz_render_geom *g = &job->geom;
    if (job->rgb_ready) { /* the device did the merge */
        CZ_TRY(cz_image_alloc(out, g->src_w, g->src_h, 3));
        memcpy(out->px, job->rgb, (size_t)g->src_w * g->src_h * 3);
        return CZ_OK;
    }
    size_t net = (size_t)g->net_w * g->net_h;
    float *ab = malloc(2 * net * sizeof(float));
    if (!ab) return cz_error_set(CZ_ERR_NOMEM, "out of memory");
    if (cz->arch.mode == CZ_COLOR_LAB) {
        for (size_t i = 0; i < 2 * net; i++) ab[i] = job->net_out[i] * AB_SCALE;
    } else {
        for (size_t i = 0; i < net; i++) {
            float rgb[3], lab[3];
            for (int k = 0; k < 3; k++) {
                float v = (job->net_out[k * net + i] + 1.f) * 0.5f;
                rgb[k] = v < 0.f ? 0.f : v > 1.f ? 1.f : v;
            }
            cz_srgbf_to_lab(rgb, lab);
            ab[i] = lab[1];
            ab[net + i] = lab[2];
        }
    }
    cz_status s = cz_render_merge_ab(job->L_full, ab, g, out);
    free(ab);
    return s;
}
