/* cmd_bench.c: `colorize bench`: forward-pass throughput of the generator at a fixed size on
 * freshly initialized weights (or --model FILE), for each (precision, batch), as a table (and
 * JSON lines with --json). Each cell warms up once (plans memory, creates primitives), then runs until both
 * --min-time seconds and 3 iterations have passed, and reports the median batch time. On a
 * device backend two more figures: the device part alone (input already in device memory) and
 * pipelined passes (the next batch launched before the previous one is waited for, so its upload
 * overlaps compute: the throughput the daemon's batcher reaches under load).
 * `bench --train`: the same for one pix2pix training step (G forward/backward, three D passes,
 * both Adam updates; core/gan.h) on synthetic data, for each (precision, ngf, batch): fp32, or
 * bf16 activations with fp32 master weights (mixed precision). Each step's batch comes from host
 * memory, uploaded while the step before runs, as in a training run. Two warm-up steps: on a
 * backend that records steps (cuda; gan.h "Recorded steps") the second records the step and the
 * timed ones replay it; --unrecorded times them op by op instead. tests/bench/torch_train_bench.py
 * times the same step in PyTorch. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cli.h"
#include "gan.h"
#include "safetensors.h"
#include "unet.h"

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The timed calls of the benches: what one call runs. */
typedef struct timed_call {
    /* 0 a training step on the batch staged before it, staging the next one (cz_gan_stage) while
     * it runs, as the trainer does, 1 a forward pass with host transfers, 2 the device part alone, 3 a
     * pipelined forward pass with host transfers: launch this one, then wait for the previous
     * one (as the daemon's batcher does under load), alternating two buffer pairs */
    int kind;
    cz_gan *gan;
    cz_unet *u;
    int n, size;
    const float *in, *B;
    float *out;
    float *pin[2], *pout[2]; /* kind 3 */
    uint64_t ticket[2];
    int slot, pending;
} timed_call;

static cz_status call_once(timed_call *c) {
    if (c->kind == 0) { /* as the trainer steps: the next batch's upload overlaps this step */
        CZ_TRY(cz_gan_step_begin(c->gan, c->n, NULL, NULL));
        cz_status s = cz_gan_stage(c->gan, c->n, c->in, c->B);
        cz_status e = cz_gan_step_end(c->gan, NULL);
        return s != CZ_OK ? s : e;
    }
    if (c->kind == 1) return cz_unet_forward(c->u, c->n, c->size, c->size, c->in, c->out);
    if (c->kind == 2) return cz_unet_forward_device(c->u, c->n, c->size, c->size);
    int k = c->slot;
    CZ_TRY(cz_unet_launch(c->u, c->n, c->size, c->size, c->pin[k], c->pout[k], &c->ticket[k]));
    c->slot = 1 - k;
    if (c->pending) CZ_TRY(cz_unet_wait(c->u, c->ticket[1 - k]));
    c->pending = 1;
    return CZ_OK;
}

/* Waits for a pipelined pass still in flight (kind 3). */
static cz_status call_drain(timed_call *c) {
    if (c->kind != 3 || !c->pending) return CZ_OK;
    c->pending = 0;
    return cz_unet_wait(c->u, c->ticket[1 - c->slot]);
}

/* Calls c until min_time has passed and at least 3 times (at most 4096); the median wall time
 * of a call and the number of calls. Stops at the first failure and returns it. */
static cz_status median_time(timed_call *c, double min_time, double *median, int *iters) {
    static double times[4096];
    int k = 0;
    cz_status s = CZ_OK;
    double start = cli_now();
    if (c->kind == 3 && (s = call_once(c)) != CZ_OK) return s; /* fill the pipeline: not timed */
    while (k < 4096 && (k < 3 || cli_now() - start < min_time)) {
        double t0 = cli_now();
        if ((s = call_once(c)) != CZ_OK) return s;
        times[k++] = cli_now() - t0;
    }
    if ((s = call_drain(c)) != CZ_OK) return s;
    qsort(times, (size_t)k, sizeof times[0], cmp_double);
    *median = times[k / 2];
    *iters = k;
    return s;
}

/* Training throughput: one G+D step per iteration, median over the timed iterations. */
static int bench_train(const char *backend, const char *ngf_s, const int *batches, int nb, const char *precs_s,
                       int size, int threads, double min_time, int json, int unrecorded) {
    int ngfs[8];
    int nn = cli_parse_int_list(ngf_s, ngfs, 8);
    if (nb < 0 || nn < 0 || size < 32 || size > 4096 || min_time < 0) {
        fprintf(stderr, "colorize bench: bad --batch, --ngf, --size or --min-time\n");
        return 2;
    }
    cz_dtype precs[4];
    int np = 0;
    char pbuf[64];
    snprintf(pbuf, sizeof pbuf, "%s", precs_s);
    for (char *save = NULL, *tok = strtok_r(pbuf, ",", &save); tok && np < 4; tok = strtok_r(NULL, ",", &save)) {
        int dt = cz_dtype_parse(tok);
        if (dt != CZ_F32 && dt != CZ_BF16) {
            fprintf(stderr, "colorize bench --train: precision '%s': training runs in fp32 or bf16\n", tok);
            return 2;
        }
        precs[np++] = (cz_dtype)dt;
    }
    cz_backend_options bo = {.threads = threads};
    cz_backend *be = NULL;
    if (cz_backend_create(backend, &bo, &be) != CZ_OK) {
        fprintf(stderr, "colorize bench: %s\n", cz_error_detail());
        return 1;
    }
    int depth = 0;
    while (depth < CZ_UNET_MAX_DEPTH && (2 << depth) <= size) depth++;
    if (depth < CZ_UNET_MIN_DEPTH) depth = CZ_UNET_MIN_DEPTH;
    if (!json) {
        printf("colorize bench --train: pix2pix step (U-Net depth %d + 70x70 PatchGAN ndf 64), %dx%d, "
               "backend %s, threads %d\n", depth, size, size, be->ops->name, threads);
        printf("%-5s %-5s %6s %12s %12s %14s %8s %9s\n", "prec", "ngf", "batch", "ms/step", "images/s", "G fwd GFLOP/img",
               "iters", "recorded");
    }
    int rc = 0;
    for (int pi = 0; pi < np; pi++)
    for (int gi = 0; gi < nn; gi++) {
        cz_unet_arch a = cz_unet_arch_default(ngfs[gi], CZ_COLOR_LAB);
        a.depth = depth;
        for (int bi = 0; bi < nb; bi++) {
            int n = batches[bi];
            cz_gan_config gc = cz_gan_config_default();
            gc.seed = 1;
            gc.act_dtype = precs[pi];
            gc.unrecorded = unrecorded;
            cz_gan *gan = NULL;
            size_t an = (size_t)n * a.in_ch * size * size, bn = (size_t)n * a.out_ch * size * size;
            /* the trainer's batches live in the backend's host memory (page-locked on cuda) */
            cz_host_buf hA = {0}, hB = {0};
            float *A = cz_host_buf_reserve(be, &hA, an * sizeof *A) == CZ_OK ? hA.p : NULL;
            float *B = cz_host_buf_reserve(be, &hB, bn * sizeof *B) == CZ_OK ? hB.p : NULL;
            int iters = 0;
            double med = 0;
            cz_status s = A && B ? cz_gan_create(be, &gc, &a, NULL, &gan) : cz_error_set(CZ_ERR_NOMEM, "out of memory");
            if (s == CZ_OK) s = cz_gan_plan(gan, n, size, size);
            if (s == CZ_OK) {
                uint64_t r = 12345;
                for (size_t i = 0; i < an + bn; i++) {
                    r = r * 6364136223846793005ull + 1442695040888963407ull;
                    float x = (float)((r >> 40) & 0xffff) / 32768.0f - 1.0f;
                    if (i < an) A[i] = x; else B[i - an] = 0.5f * x;
                }
                s = cz_gan_step(gan, n, A, B, NULL); /* warm-up: op by op, then recorded where steps are */
                if (s == CZ_OK) s = cz_gan_step(gan, n, A, B, NULL);
                if (s == CZ_OK) s = cz_gan_stage(gan, n, A, B);
            }
            timed_call tc = {.kind = 0, .gan = gan, .n = n, .in = A, .B = B};
            if (s == CZ_OK) s = median_time(&tc, min_time, &med, &iters);
            if (s != CZ_OK) {
                fprintf(stderr, "colorize bench --train: %s ngf %d batch %d: %s\n", cz_dtype_name(precs[pi]), a.ngf, n,
                        cz_error_detail());
                rc = 1;
            } else {
                double gflop = cz_unet_flops(&a, size, size) / 1e9;
                /* recorded: every timed step replayed the recording */
                cz_gan_record_stats rs = cz_gan_recordings(gan);
                int recorded = rs.replays >= iters && rs.failed == 0;
                if (json)
                    printf("{\"engine\":\"colorize\",\"mode\":\"train\",\"backend\":\"%s\",\"precision\":\"%s\","
                           "\"ngf\":%d,\"size\":%d,\"batch\":%d,\"threads\":%d,\"ms_per_step\":%.3f,"
                           "\"images_per_s\":%.4f,\"iters\":%d,\"recorded\":%s}\n",
                           be->ops->name, cz_dtype_name(precs[pi]), a.ngf, size, n, threads, med * 1e3, n / med, iters,
                           recorded ? "true" : "false");
                else
                    printf("%-5s %-5d %6d %12.1f %12.3f %14.2f %8d %9s\n", cz_dtype_name(precs[pi]), a.ngf, n,
                           med * 1e3, n / med, gflop, iters, recorded ? "yes" : "no");
                fflush(stdout);
            }
            cz_gan_destroy(gan); /* (waits for a staged upload still reading A and B) */
            cz_host_buf_free(be, &hA);
            cz_host_buf_free(be, &hB);
        }
    }
    cz_backend_destroy(be);
    return rc;
}

int cz_cmd_bench(int argc, char **argv) {
    static const struct option opts[] = {
        {"backend", required_argument, 0, 'b'}, {"batch", required_argument, 0, 'B'},
        {"ngf", required_argument, 0, 'n'},     {"precision", required_argument, 0, 'p'},
        {"size", required_argument, 0, 's'},    {"threads", required_argument, 0, 't'},
        {"min-time", required_argument, 0, 'T'}, {"json", no_argument, 0, 'j'},
        {"model", required_argument, 0, 'm'},   {"train", no_argument, 0, 'R'},
        {"unrecorded", no_argument, 0, 'U'},   {0, 0, 0, 0}};
    const char *backend = "auto", *batches_s = "1,8", *precs_s = "fp32,bf16", *model = NULL;
    const char *ngf_s = "64";
    int ngf = 64, size = 256, threads = 0, json = 0, train = 0, batch_given = 0, unrecorded = 0, c;
    double min_time = 3.0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "b:B:n:p:s:t:T:jm:", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 'b': backend = optarg; break;
        case 'B': batches_s = optarg; batch_given = 1; break;
        case 'n': ngf_s = optarg; ngf = atoi(optarg); break;
        case 'R': train = 1; break;
        case 'U': unrecorded = 1; break;
        case 'p': precs_s = optarg; break;
        case 's': size = atoi(optarg); break;
        case 't': threads = atoi(optarg); break;
        case 'T': min_time = atof(optarg); break;
        case 'j': json = 1; break;
        default: return 2;
        }
    }
    int batches[16];
    if (train && !batch_given) batches_s = "1";
    int nb = cli_parse_int_list(batches_s, batches, 16);
    if (unrecorded && !train) {
        fprintf(stderr, "colorize bench: --unrecorded applies to --train\n");
        return 2;
    }
    if (train) return bench_train(backend, ngf_s, batches, nb, precs_s, size, threads, min_time, json, unrecorded);
    if (nb < 0 || ngf < 1 || size < 32 || size > 4096 || min_time < 0) {
        fprintf(stderr, "colorize bench: bad --batch, --ngf, --size or --min-time\n");
        return 2;
    }
    cz_dtype precs[4];
    int np = 0;
    char *pl = strdup(precs_s);
    for (char *tok = strtok(pl, ","); tok && np < 4; tok = strtok(NULL, ",")) {
        int d = cz_dtype_parse(tok);
        if (d < 0) {
            fprintf(stderr, "colorize bench: unknown precision '%s'\n", tok);
            free(pl);
            return 2;
        }
        precs[np++] = (cz_dtype)d;
    }
    free(pl);

    cz_backend_options bo = {.threads = threads};
    cz_backend *be = NULL;
    if (cz_backend_create(backend, &bo, &be) != CZ_OK) {
        fprintf(stderr, "colorize bench: %s\n", cz_error_detail());
        return 1;
    }
    /* the weights: a file, or fresh ones in memory */
    cz_unet_arch a = cz_unet_arch_default(ngf, CZ_COLOR_LAB);
    uint8_t *bytes = NULL;
    cz_safetensors *st = NULL;
    cz_status s;
    if (model) {
        s = cz_st_open(model, &st);
        if (s == CZ_OK) s = cz_unet_arch_from_meta(st, &a);
    } else {
        cz_st_writer *w = NULL;
        size_t len = 0;
        s = cz_st_writer_create(&w);
        if (s == CZ_OK) s = cz_unet_init_weights(&a, 1, w);
        if (s == CZ_OK) s = cz_st_writer_bytes(w, &bytes, &len);
        if (s == CZ_OK) s = cz_st_parse(bytes, len, 0, &st);
        cz_st_writer_destroy(w);
    }
    if (s == CZ_OK && size % cz_unet_multiple(&a))
        s = cz_error_set(CZ_ERR_INVALID_ARG, "--size %d is not a multiple of %d", size, cz_unet_multiple(&a));
    if (s != CZ_OK) {
        fprintf(stderr, "colorize bench: %s\n", cz_error_detail());
        cz_st_close(st);
        free(bytes);
        cz_backend_destroy(be);
        return 1;
    }
    ngf = a.ngf;
    double gflop = cz_unet_flops(&a, size, size) / 1e9;
    if (!json) {
        printf("colorize bench: U-Net ngf %d depth %d, %dx%d, %.2f GFLOP/image, backend %s, threads %d\n", ngf,
               a.depth, size, size, gflop, be->ops->name, threads);
        printf("%-9s %6s %12s %12s %10s %8s%s%s\n", "precision", "batch", "ms/batch", "images/s", "GFLOP/s", "iters",
               be->ops->record_begin ? "  dev ms/batch dev images/s" : "",
               be->ops->write_async ? " pipe images/s" : "");
    }
    /* a device backend: also time the forward pass without host transfers */
    const int dev = be->ops->record_begin != NULL;
    int rc = 0;
    for (int pi = 0; pi < np; pi++) {
        if (!be->ops->supports(be, precs[pi])) {
            printf("%-9s  skipped: backend %s does not support it\n", cz_dtype_name(precs[pi]), be->ops->name);
            continue;
        }
        cz_unet *u = NULL;
        if (cz_unet_create(be, st, precs[pi], &u) != CZ_OK) {
            fprintf(stderr, "colorize bench: %s\n", cz_error_detail());
            rc = 1;
            continue;
        }
        for (int bi = 0; bi < nb; bi++) {
            int n = batches[bi];
            if (bi > 0 && be->ops->record_begin) {
                /* a GPU backend picks one convolution algorithm per layer for every batch size, at
                 * the first it sees (batched == alone); a fresh instance per size measures each
                 * size with its own choice, as a daemon with that max_batch would run */
                cz_unet_destroy(u);
                u = NULL;
                cz_backend_destroy(be);
                be = NULL;
                if (cz_backend_create(backend, &bo, &be) != CZ_OK || cz_unet_create(be, st, precs[pi], &u) != CZ_OK) {
                    fprintf(stderr, "colorize bench: %s\n", cz_error_detail());
                    rc = 1;
                    break;
                }
            }
            size_t in_n = (size_t)n * a.in_ch * size * size, out_n = (size_t)n * a.out_ch * size * size;
            /* page-locked where the backend offers it, as the daemon's staging buffers are */
            cz_host_buf hin = {0}, hout = {0}, hin2 = {0}, hout2 = {0};
            float *in = cz_host_buf_reserve(be, &hin, in_n * sizeof *in) == CZ_OK ? hin.p : NULL;
            float *out = cz_host_buf_reserve(be, &hout, out_n * sizeof *out) == CZ_OK ? hout.p : NULL;
            const int pipe = cz_unet_async(u); /* a second pair of buffers for the pipelined figure */
            float *in2 = pipe && cz_host_buf_reserve(be, &hin2, in_n * sizeof *in) == CZ_OK ? hin2.p : NULL;
            float *out2 = pipe && cz_host_buf_reserve(be, &hout2, out_n * sizeof *out) == CZ_OK ? hout2.p : NULL;
            int iters = 0, diters = 0, piters = 0;
            double med = 0, dev_med = 0, pipe_med = 0;
            s = in && out && (!pipe || (in2 && out2)) ? cz_unet_plan(u, n, size, size)
                                                       : cz_error_set(CZ_ERR_NOMEM, "out of memory");
            if (s == CZ_OK) {
                uint64_t r = 12345;
                for (size_t i = 0; i < in_n; i++) {
                    r = r * 6364136223846793005ull + 1442695040888963407ull;
                    in[i] = (float)((r >> 40) & 0xffff) / 32768.0f - 1.0f;
                }
                s = cz_unet_forward(u, n, size, size, in, out); /* warm-up */
                /* where forward passes are recorded, the second pass records: not timed either */
                if (s == CZ_OK && be->ops->record_begin) s = cz_unet_forward(u, n, size, size, in, out);
            }
            timed_call tc = {.kind = 1, .u = u, .n = n, .size = size, .in = in, .out = out};
            if (s == CZ_OK) s = median_time(&tc, min_time, &med, &iters);
            /* on a device, also the forward pass alone (input already in device memory, no host
             * transfers), the figure comparable to a framework timing device-resident tensors */
            tc.kind = 2;
            if (s == CZ_OK && dev) s = median_time(&tc, min_time, &dev_med, &diters);
            /* and pipelined: the next batch's upload overlaps this one's compute */
            if (s == CZ_OK && pipe) {
                memcpy(in2, in, in_n * sizeof *in);
                tc.kind = 3;
                tc.pin[0] = in, tc.pin[1] = in2, tc.pout[0] = out, tc.pout[1] = out2;
                s = median_time(&tc, min_time, &pipe_med, &piters);
            }
            if (s != CZ_OK) {
                fprintf(stderr, "colorize bench: batch %d: %s\n", n, cz_error_detail());
                rc = 1;
            } else {
                double ips = n / med;
                char devj[192] = "", devt[64] = "";
                if (dev) {
                    snprintf(devj, sizeof devj, ",\"device_ms_per_batch\":%.3f,\"device_images_per_s\":%.3f",
                             dev_med * 1e3, n / dev_med);
                    snprintf(devt, sizeof devt, " %12.3f %12.3f", dev_med * 1e3, n / dev_med);
                }
                if (pipe) {
                    size_t l = strlen(devj), lt = strlen(devt);
                    snprintf(devj + l, sizeof devj - l, ",\"pipelined_ms_per_batch\":%.3f,\"pipelined_images_per_s\":%.3f",
                             pipe_med * 1e3, n / pipe_med);
                    snprintf(devt + lt, sizeof devt - lt, " %12.3f", n / pipe_med);
                }
                if (json)
                    printf("{\"engine\":\"colorize\",\"backend\":\"%s\",\"precision\":\"%s\",\"ngf\":%d,\"size\":%d,"
                           "\"batch\":%d,\"threads\":%d,\"ms_per_batch\":%.3f,\"images_per_s\":%.3f,"
                           "\"gflops\":%.1f,\"iters\":%d%s}\n",
                           be->ops->name, cz_dtype_name(precs[pi]), ngf, size, n, threads, med * 1e3, ips,
                           gflop * ips, iters, devj);
                else
                    printf("%-9s %6d %12.2f %12.3f %10.1f %8d%s\n", cz_dtype_name(precs[pi]), n, med * 1e3, ips,
                           gflop * ips, iters, devt);
                fflush(stdout);
            }
            cz_host_buf_free(be, &hin);
            cz_host_buf_free(be, &hout);
            cz_host_buf_free(be, &hin2);
            cz_host_buf_free(be, &hout2);
        }
        cz_unet_destroy(u);
        if (!be) break;
    }
    cz_st_close(st);
    free(bytes);
    cz_backend_destroy(be);
    return rc;
}
