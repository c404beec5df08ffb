/* cmd_train.c: `colorize train`: one pix2pix training run in the foreground (core/trainer.h).
 * On a terminal a progress line (step, losses, images/s, ETA) is redrawn on stderr; otherwise
 * one JSON object per step is written to stderr (every --log-every steps, and every
 * validation). Checkpoints, sample sheets, losses.jsonl and state.json go to --out-dir (default
 * "train-out"); the final generator weights go to -o (default OUT_DIR/generator.safetensors),
 * loadable by `colorize -m` and `colorized --model`. SIGINT/SIGTERM cancel at the next step
 * boundary (final checkpoint and -o written) and exit 130. Exit 1 on a failed run, 2 on usage.
 * Tested by tests/cli/test_train_cli.sh. */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "cli.h"
#include "trainer.h"

static cz_trainer *volatile g_trainer;
static volatile sig_atomic_t g_interrupted;

static void on_signal(int sig) {
    (void)sig;
    g_interrupted = 1;
    if (g_trainer) cz_trainer_cancel(g_trainer);
}

typedef struct view {
    int tty;
    long log_every;
} view;

static void progress(const cz_train_progress *p, void *user) {
    const view *v = user;
    if (v->tty) {
        const int width = 24;
        int fill = p->total ? (int)(p->step * width / p->total) : width;
        char bar[32];
        for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '.';
        bar[width] = '\0';
        fprintf(stderr, "\r[%s] %ld/%ld ep %ld  G_GAN %.3f G_L1 %.3f D_real %.3f D_fake %.3f  %.2f img/s  eta %.0fs ",
                bar, p->step, p->total, p->epoch, p->losses.g_gan, p->losses.g_l1, p->losses.d_real,
                p->losses.d_fake, p->images_per_s, p->eta_s);
        if (p->val)
            fprintf(stderr, "\n  val @%ld: L1 %.4f (ab %.2f)  PSNR %.2f dB  colorfulness %.1f / %.1f\n", p->step,
                    p->val->l1, p->val->l1_ab, p->val->psnr, p->val->colorfulness_pred, p->val->colorfulness_true);
        fflush(stderr);
        return;
    }
    if (p->step % v->log_every == 0 || p->step == p->total)
        fprintf(stderr,
                "{\"event\":\"train_step\",\"step\":%ld,\"total\":%ld,\"epoch\":%ld,\"g_gan\":%.6g,\"g_l1\":%.6g,"
                "\"d_real\":%.6g,\"d_fake\":%.6g,\"images_per_s\":%.4g,\"eta_s\":%.1f}\n",
                p->step, p->total, p->epoch, p->losses.g_gan, p->losses.g_l1, p->losses.d_real, p->losses.d_fake,
                p->images_per_s, p->eta_s);
    if (p->val)
        fprintf(stderr,
                "{\"event\":\"validation\",\"step\":%ld,\"images\":%zu,\"l1\":%.6g,\"l1_ab\":%.6g,\"psnr\":%.6g,"
                "\"colorfulness_pred\":%.6g,\"colorfulness_true\":%.6g}\n",
                p->step, p->val->images, p->val->l1, p->val->l1_ab, p->val->psnr, p->val->colorfulness_pred,
                p->val->colorfulness_true);
}

static void usage(void) {
    fprintf(stderr,
            "usage: colorize train --data DIR [--val DIR] [--steps N | --epochs N] [--batch B] [--size S]\n"
            "         [--ngf N] [--ndf N] [--depth D] [--init WEIGHTS|CHECKPOINT] [-o OUT.safetensors]\n"
            "         [--out-dir DIR] [--backend B] [--threads N] [--seed S] [--validate-every N]\n"
            "         [--checkpoint-every N] [--keep-checkpoints N] [--lr LR] [--lambda-l1 L] [--workers N]\n"
            "         [--log-every N] [--precision fp32|bf16] [--cache-mb MIB]\n");
}

static int parse_long(const char *s, long lo, long hi, long *out) {
    char *end;
    long v = strtol(s, &end, 10);
    if (end == s || *end || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

int cz_cmd_train(int argc, char **argv) {
    static const struct option opts[] = {
        {"data", required_argument, 0, 'd'},           {"val", required_argument, 0, 'V'},
        {"steps", required_argument, 0, 'S'},          {"epochs", required_argument, 0, 'E'},
        {"batch", required_argument, 0, 'B'},          {"size", required_argument, 0, 's'},
        {"ngf", required_argument, 0, 'n'},            {"ndf", required_argument, 0, 'N'},
        {"depth", required_argument, 0, 'D'},          {"init", required_argument, 0, 'i'},
        {"out-dir", required_argument, 0, 'O'},        {"backend", required_argument, 0, 'b'},
        {"threads", required_argument, 0, 't'},        {"seed", required_argument, 0, 'r'},
        {"validate-every", required_argument, 0, 'v'}, {"checkpoint-every", required_argument, 0, 'c'},
        {"lr", required_argument, 0, 'l'},             {"lambda-l1", required_argument, 0, 'L'},
        {"workers", required_argument, 0, 'w'},        {"log-every", required_argument, 0, 'g'},
        {"keep-checkpoints", required_argument, 0, 'K'}, {"help", no_argument, 0, 'h'},
        {"precision", required_argument, 0, 'P'},      {"cache-mb", required_argument, 0, 'M'},
        {0, 0, 0, 0}};
    cz_trainer_config cfg;
    cz_trainer_config_default(&cfg);
    cfg.out_dir = "train-out";
    cfg.validate_every = 0; /* set below from the run length unless given */
    cfg.checkpoint_every = 0;
    const char *backend = "auto", *out = NULL;
    long v = 0, threads = 0, log_every = 10;
    int have_val = 0, have_ckpt = 0, c, bad = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
        switch (c) {
        case 'd': cfg.data_dir = optarg; break;
        case 'V': cfg.val_dir = optarg; break;
        case 'S': bad |= parse_long(optarg, 1, 100000000L, &cfg.steps); break;
        case 'E': cfg.epochs = atof(optarg); bad |= !(cfg.epochs > 0 && cfg.epochs <= 1e6); break;
        case 'B': bad |= parse_long(optarg, 1, 4096, &v); cfg.batch = (int)v; break;
        case 's': bad |= parse_long(optarg, 32, 4096, &v); cfg.image_size = (int)v; break;
        case 'n': bad |= parse_long(optarg, 1, 1024, &v); cfg.ngf = (int)v; break;
        case 'N': bad |= parse_long(optarg, 1, 1024, &v); cfg.ndf = (int)v; break;
        case 'D': bad |= parse_long(optarg, 5, 8, &v); cfg.depth = (int)v; break;
        case 'i': cfg.init_path = optarg; break;
        case 'o': out = optarg; break;
        case 'O': cfg.out_dir = optarg; break;
        case 'b': backend = optarg; break;
        case 't': bad |= parse_long(optarg, 0, 1024, &threads); break;
        case 'r': bad |= parse_long(optarg, 0, 0x7fffffffffffffffL, &v); cfg.seed = (uint64_t)v; break;
        case 'v': bad |= parse_long(optarg, 0, 100000000L, &cfg.validate_every); have_val = 1; break;
        case 'c': bad |= parse_long(optarg, 0, 100000000L, &cfg.checkpoint_every); have_ckpt = 1; break;
        case 'l': cfg.lr = strtof(optarg, NULL); bad |= !(cfg.lr > 0); break;
        case 'L': cfg.lambda_l1 = strtof(optarg, NULL); bad |= !(cfg.lambda_l1 >= 0); break;
        case 'w': bad |= parse_long(optarg, 1, 64, &v); cfg.workers = (int)v; break;
        case 'M': bad |= parse_long(optarg, 0, CZ_TRAIN_MAX_CACHE_MB, &v); cfg.cache_mb = (int)v; break;
        case 'K': bad |= parse_long(optarg, 0, 1000000L, &v); cfg.keep_checkpoints = (int)v; break;
        case 'g': bad |= parse_long(optarg, 1, 100000000L, &log_every); break;
        case 'P': {
            int dt = cz_dtype_parse(optarg);
            bad |= dt != CZ_F32 && dt != CZ_BF16;
            cfg.precision = dt == CZ_BF16 ? CZ_BF16 : CZ_F32;
            break;
        }
        case 'h': usage(); return 0;
        default: usage(); return 2;
        }
        if (bad) {
            fprintf(stderr, "colorize train: bad value '%s' for %s\n", optarg ? optarg : "", argv[optind - 1]);
            return 2;
        }
    }
    if (optind < argc || !cfg.data_dir || (cfg.steps && cfg.epochs > 0)) {
        fprintf(stderr, "colorize train: %s\n",
                optind < argc ? "unexpected argument" : !cfg.data_dir ? "--data DIR is required"
                                                                      : "--steps and --epochs exclude each other");
        usage();
        return 2;
    }
    if (!cfg.steps && !(cfg.epochs > 0) && !cfg.init_path) cfg.steps = 1000;
    /* defaults scaled to the run: ~20 validations, ~5 checkpoints (multiples of validate) */
    long span = cfg.steps ? cfg.steps : 1000;
    if (!have_val) cfg.validate_every = span / 20 > 0 ? span / 20 : 1;
    if (!have_ckpt) cfg.checkpoint_every = cfg.validate_every * 4;
    view vw = {.tty = isatty(2), .log_every = log_every};
    cfg.progress = progress;
    cfg.progress_user = &vw;

    cz_backend_options bo = {.threads = (int)threads};
    cz_backend *be = NULL;
    if (cz_backend_create(backend, &bo, &be) != CZ_OK) {
        fprintf(stderr, "colorize train: %s\n", cz_error_detail());
        return 1;
    }
    cz_trainer *t = NULL;
    if (cz_trainer_create(be, &cfg, &t) != CZ_OK) {
        fprintf(stderr, "colorize train: %s\n", cz_error_detail());
        cz_backend_destroy(be);
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    g_trainer = t;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    cz_status s = cz_trainer_run(t);
    if (vw.tty) fputc('\n', stderr);
    cz_trainer_info info;
    cz_trainer_get_info(t, &info);
    int rc = 0;
    if (s != CZ_OK) {
        fprintf(stderr, "colorize train: failed at step %ld: %s\n", info.step, info.error);
        rc = 1;
    } else {
        char def[1100];
        if (!out) {
            snprintf(def, sizeof def, "%s/generator.safetensors", cfg.out_dir);
            out = def;
        }
        if (cz_trainer_save_generator(t, out) != CZ_OK) {
            fprintf(stderr, "colorize train: %s\n", cz_error_detail());
            rc = 1;
        } else {
            printf("%s at step %ld/%ld: weights %s, checkpoints and samples in %s", cz_train_status_name(info.status),
                   info.step, info.total, out, cfg.out_dir);
            if (info.best_step >= 0) printf(", best step %ld (val L1 %.4f)", info.best_step, info.best_l1);
            printf("\n");
        }
        if (rc == 0 && (g_interrupted || info.status == CZ_TRAIN_CANCELLED)) rc = 130;
    }
    g_trainer = NULL;
    cz_trainer_destroy(t);
    cz_backend_destroy(be);
    return rc;
}
