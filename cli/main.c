/* main.c: `colorize` entry point: dispatches to a subcommand (colorize files by default). */
#include <stdio.h>
#include <string.h>

#include "cli.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage:\n"
            "  colorize [-m WEIGHTS] [--backend auto|dnnl|ref|cuda] [--precision fp32|bf16]\n"
            "           [--render N] [--format jpeg|png] [-q QUALITY] [--batch N] [--threads N]\n"
            "           [--config FILE] (-o OUT | --out-dir DIR) FILE...\n"
            "  colorize inspect WEIGHTS\n"
            "  colorize init --ngf N [--mode lab|rgb] [--depth D] [--seed S] -o WEIGHTS\n"
            "  colorize bench [--backend B] [--batch 1,8,32] [--ngf N | --model WEIGHTS] [--precision fp32,bf16]\n"
            "                 [--size 256] [--threads N] [--min-time SECONDS]\n"
            "  colorize bench --train [--backend B] [--ngf 64,32] [--batch 1,16] [--size 256] [--threads N]\n"
            "                 [--unrecorded]\n"
            "  colorize train --data DIR [--val DIR] [--steps N | --epochs N] [--batch B] [--size S]\n"
            "           [--ngf N] [--ndf N] [--init WEIGHTS|CHECKPOINT] [-o OUT.safetensors] [--out-dir DIR]\n"
            "           [--backend B] [--seed S] [--validate-every N] [--checkpoint-every N] [--lr LR]\n"
            "           [--lambda-l1 L]\n"
            "  colorize --help-config   (every configuration key, its range and default)\n"
            "  colorize --version\n");
}

int main(int argc, char **argv) {
    if (argc >= 2) {
        const char *cmd = argv[1];
        if (!strcmp(cmd, "inspect")) return cz_cmd_inspect(argc - 1, argv + 1);
        if (!strcmp(cmd, "init")) return cz_cmd_init(argc - 1, argv + 1);
        if (!strcmp(cmd, "bench")) return cz_cmd_bench(argc - 1, argv + 1);
        if (!strcmp(cmd, "train")) return cz_cmd_train(argc - 1, argv + 1);
        if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(cmd, "--version")) {
            printf("colorize %s\n", CZ_VERSION);
            return 0;
        }
        if (!strcmp(cmd, "--help-config")) {
            cz_config_print_help(stdout);
            return 0;
        }
    }
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    return cz_cmd_colorize(argc, argv);
}
