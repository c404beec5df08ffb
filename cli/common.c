/* common.c: helpers shared by the CLI subcommands: config loading, list parsing, progress. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "log.h"

extern char **environ;

int cli_load_config(cz_config *cfg, const char *path) {
    cz_config_defaults(cfg);
    if (!path) path = getenv("COLORIZE_CONFIG");
    if (path && *path && cz_config_load_file(cfg, path) != CZ_OK) {
        fprintf(stderr, "colorize: %s\n", cz_error_detail());
        return 1;
    }
    if (cz_config_load_env(cfg, environ) != CZ_OK) {
        fprintf(stderr, "colorize: %s\n", cz_error_detail());
        return 1;
    }
    return 0;
}

int cli_parse_int_list(const char *s, int *out, int cap) {
    int n = 0;
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (errno || end == p || v < 1 || v > 1 << 20 || n >= cap) return -1;
        out[n++] = (int)v;
        if (*end == ',')
            end++;
        else if (*end)
            return -1;
        p = end;
    }
    return n ? n : -1;
}

double cli_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void cli_progress_start(cli_progress *p, int total) {
    memset(p, 0, sizeof *p);
    p->total = total;
    p->enabled = total >= 4 && isatty(2);
    p->t0 = cli_now();
}

static void draw(const cli_progress *p) {
    const int width = 30;
    int fill = p->total ? p->done * width / p->total : width;
    double el = cli_now() - p->t0;
    double rate = el > 0 ? p->done / el : 0;
    double eta = rate > 0 ? (p->total - p->done) / rate : 0;
    char bar[64];
    for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '.';
    bar[width] = '\0';
    fprintf(stderr, "\r[%s] %d/%d  %.1f img/s  eta %.0fs  failed %d ", bar, p->done, p->total, rate, eta,
            p->failed);
    fflush(stderr);
}

void cli_progress_step(cli_progress *p, int ok) {
    p->done++;
    if (!ok) p->failed++;
    if (p->enabled) draw(p);
}

void cli_progress_end(cli_progress *p) {
    if (p->enabled) {
        draw(p);
        fputc('\n', stderr);
    }
}
