/* cmd_weights.c: `colorize inspect WEIGHTS` (architecture, parameter count, dtypes, checksum,
 * validated by loading the model on the ref backend) and `colorize init` (fresh pix2pix
 * initialization, until trained weights ship). */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cli.h"
#include "safetensors.h"
#include "unet.h"

int cz_cmd_inspect(int argc, char **argv) {
    int list = argc >= 2 && !strcmp(argv[1], "--tensors");
    if (argc != 2 + list) {
        fprintf(stderr, "usage: colorize inspect [--tensors] WEIGHTS\n");
        return 2;
    }
    const char *path = argv[1 + list];
    cz_safetensors *st = NULL;
    if (cz_st_open(path, &st) != CZ_OK) {
        fprintf(stderr, "colorize: %s: %s\n", path, cz_error_detail());
        return 1;
    }
    cz_unet_arch a;
    int rc = 0;
    if (cz_unet_arch_from_meta(st, &a) != CZ_OK) {
        fprintf(stderr, "colorize: %s: %s\n", path, cz_error_detail());
        cz_st_close(st);
        return 1;
    }
    /* full validation: load it (folding BatchNorm) on the reference backend */
    cz_backend *be = NULL;
    cz_unet *u = NULL;
    cz_status s = cz_backend_create("ref", NULL, &be);
    if (s == CZ_OK) s = cz_unet_create(be, st, CZ_F32, &u);
    const char *verdict = s == CZ_OK ? "ok" : cz_error_detail();

    size_t by_dtype[CZ_ST_DTYPE_COUNT_] = {0}, bytes = 0;
    for (size_t i = 0; i < cz_st_count(st); i++) {
        const cz_st_tensor *t = cz_st_at(st, i);
        by_dtype[t->dtype]++;
        bytes += t->nbytes;
    }
    printf("file:          %s\n", path);
    printf("architecture:  pix2pix U-Net, depth %d, ngf %d, %s (%d -> %d channels), BatchNorm eps %g\n",
           a.depth, a.ngf, cz_color_mode_name(a.mode), a.in_ch, a.out_ch, (double)a.bn_eps);
    printf("parameters:    %zu (%.2f M)\n", cz_unet_param_count(&a), (double)cz_unet_param_count(&a) / 1e6);
    printf("tensors:       %zu, %.2f MiB of data;", cz_st_count(st), (double)bytes / 1048576.0);
    for (int d = 0; d < CZ_ST_DTYPE_COUNT_; d++)
        if (by_dtype[d]) printf(" %s x%zu", cz_st_dtype_name((cz_st_dtype)d), by_dtype[d]);
    printf("\n");
    printf("flops:         %.2f GFLOP per %dx%d image\n", cz_unet_flops(&a, 256, 256) / 1e9, 256, 256);
    printf("checksum:      fnv1a64:%016llx\n", (unsigned long long)cz_st_checksum(st));
    printf("metadata:     ");
    for (size_t i = 0; i < cz_st_meta_count(st); i++) {
        const char *k, *v;
        cz_st_meta_at(st, i, &k, &v);
        printf(" %s=%s", k, v);
    }
    printf("\nvalidation:    %s\n", verdict);
    if (list)
        for (size_t i = 0; i < cz_st_count(st); i++) {
            const cz_st_tensor *t = cz_st_at(st, i);
            printf("  %-28s %-4s [", t->name, cz_st_dtype_name(t->dtype));
            for (int d = 0; d < t->ndim; d++) printf("%s%lld", d ? "," : "", (long long)t->shape[d]);
            printf("]\n");
        }
    if (s != CZ_OK) rc = 1;
    cz_unet_destroy(u);
    cz_backend_destroy(be);
    cz_st_close(st);
    return rc;
}

int cz_cmd_init(int argc, char **argv) {
    static const struct option opts[] = {{"ngf", required_argument, 0, 'n'},  {"mode", required_argument, 0, 'm'},
                                         {"depth", required_argument, 0, 'd'}, {"seed", required_argument, 0, 's'},
                                         {"output", required_argument, 0, 'o'}, {0, 0, 0, 0}};
    int ngf = 0, depth = 8, c;
    unsigned long long seed = 0;
    const char *mode = "lab", *out = NULL;
    optind = 1;
    while ((c = getopt_long(argc, argv, "n:m:d:s:o:", opts, NULL)) != -1) {
        switch (c) {
        case 'n': ngf = atoi(optarg); break;
        case 'm': mode = optarg; break;
        case 'd': depth = atoi(optarg); break;
        case 's': seed = strtoull(optarg, NULL, 10); break;
        case 'o': out = optarg; break;
        default: return 2;
        }
    }
    int m = cz_color_mode_parse(mode);
    if (!out || ngf < 1 || m < 0 || optind != argc) {
        fprintf(stderr, "usage: colorize init --ngf N [--mode lab|rgb] [--depth 5..8] [--seed S] -o WEIGHTS\n");
        return 2;
    }
    cz_unet_arch a = cz_unet_arch_default(ngf, (cz_color_mode)m);
    a.depth = depth;
    cz_st_writer *w = NULL;
    cz_status s = cz_st_writer_create(&w);
    if (s == CZ_OK) s = cz_unet_init_weights(&a, seed, w);
    if (s == CZ_OK) s = cz_st_writer_meta(w, "origin", "colorize init (pix2pix normal init, gain 0.02; untrained)");
    if (s == CZ_OK) s = cz_st_writer_save(w, out);
    cz_st_writer_destroy(w);
    if (s != CZ_OK) {
        fprintf(stderr, "colorize: init: %s\n", cz_error_detail());
        return 1;
    }
    printf("wrote %s: U-Net depth %d ngf %d %s, %zu parameters, seed %llu\n", out, depth, ngf,
           cz_color_mode_name(a.mode), cz_unet_param_count(&a), seed);
    return 0;
}
