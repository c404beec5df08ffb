/* itest.c: see itest.h. This half: printed checks, the environment (binaries, temp dir,
 * weights), daemon processes, files, generated images. itest_http.c: HTTP and raw sockets. */
#include "itest.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "safetensors.h"
#include "testutil.h"

it_env IT;

/* ------------------------------------------------------------------ checks */

static int g_test_fail, g_total_fail;

void it_test_begin(const char *name) {
    g_test_fail = 0;
    printf("== %s\n", name);
    fflush(stdout);
}

int it_test_failures(void) {
    return g_test_fail;
}
int it_total_failures(void) {
    return g_total_fail;
}

int it_check(int ok, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("  %s ", ok ? "ok  " : "FAIL");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
    if (!ok) {
        g_test_fail++;
        g_total_fail++;
    }
    return ok;
}

void it_note(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("  note ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
}

/* ------------------------------------------------------------------ time */

double it_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void it_sleep(double s) {
    if (s <= 0) return;
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) && errno == EINTR) {
    }
}

/* ------------------------------------------------------------------ files */

int it_write_file(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t n = len ? fwrite(data, 1, len, f) : 0;
    int rc = fclose(f);
    return (n == len && rc == 0) ? 0 : -1;
}

uint8_t *it_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0;
    uint8_t *buf = malloc(cap);
    for (;;) {
        if (n == cap) {
            cap *= 2;
            uint8_t *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = nb;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        if (r == 0) break;
        n += r;
    }
    fclose(f);
    *len = n;
    return buf;
}

int it_copy_file(const char *src, const char *dst) {
    size_t n;
    uint8_t *b = it_read_file(src, &n);
    if (!b) return -1;
    char tmp[PATH_MAX + 8];
    snprintf(tmp, sizeof tmp, "%s.tmp", dst);
    int rc = it_write_file(tmp, b, n);
    free(b);
    if (rc == 0) rc = rename(tmp, dst);
    return rc;
}

void it_checksum_str(uint64_t sum, char *buf, size_t cap) {
    snprintf(buf, cap, "fnv1a64:%016llx", (unsigned long long)sum);
}

static int is_exec(const char *p) {
    return p && *p && access(p, X_OK) == 0;
}

static int make_weights(const char *out, int seed, uint64_t *sum) {
    char cmd[3 * PATH_MAX];
    snprintf(cmd, sizeof cmd, "'%s' init --ngf 4 --seed %d -o '%s' >/dev/null", IT.cli, seed, out);
    if (system(cmd) != 0) {
        fprintf(stderr, "itest: failed: %s\n", cmd);
        return -1;
    }
    cz_safetensors *st = NULL;
    if (cz_st_open(out, &st) != CZ_OK) return -1;
    *sum = cz_st_checksum(st);
    cz_st_close(st);
    return 0;
}

int it_env_init(int argc, char **argv) {
    const char *bd = getenv("CZ_BUILD_DIR");
    memset(&IT, 0, sizeof IT);
    if (argc > 1 && is_exec(argv[1])) {
        snprintf(IT.daemon, sizeof IT.daemon, "%s", argv[1]);
    } else if (getenv("CZ_DAEMON") && is_exec(getenv("CZ_DAEMON"))) {
        snprintf(IT.daemon, sizeof IT.daemon, "%s", getenv("CZ_DAEMON"));
    } else if (bd) {
        snprintf(IT.daemon, sizeof IT.daemon, "%s/colorized", bd);
        if (!is_exec(IT.daemon)) snprintf(IT.daemon, sizeof IT.daemon, "%s/server/colorized", bd);
    }
    if (argc > 2 && is_exec(argv[2]))
        snprintf(IT.cli, sizeof IT.cli, "%s", argv[2]);
    else if (bd)
        snprintf(IT.cli, sizeof IT.cli, "%s/colorize", bd);
    if (!is_exec(IT.daemon) || !is_exec(IT.cli)) {
        fprintf(stderr,
                "itest: need the daemon and the CLI: test_http [COLORIZED [COLORIZE]] or "
                "CZ_BUILD_DIR (daemon '%s', cli '%s')\n",
                IT.daemon, IT.cli);
        return -1;
    }
    snprintf(IT.tmp, sizeof IT.tmp, "/tmp/cz_itest.XXXXXX");
    if (!mkdtemp(IT.tmp)) return -1;
    snprintf(IT.w1, sizeof IT.w1, "%s/w1.safetensors", IT.tmp);
    snprintf(IT.w2, sizeof IT.w2, "%s/w2.safetensors", IT.tmp);
    if (make_weights(IT.w1, 1, &IT.sum1) || make_weights(IT.w2, 2, &IT.sum2)) return -1;
    printf("itest: daemon %s\nitest: cli %s\nitest: temp %s\n", IT.daemon, IT.cli, IT.tmp);
    return 0;
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

void it_env_cleanup(int keep) {
    if (!IT.tmp[0]) return;
    if (keep) {
        printf("itest: kept %s (daemon logs) for inspection\n", IT.tmp);
        return;
    }
    nftw(IT.tmp, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* ------------------------------------------------------------------ daemons */

#define MAX_DAEMONS 16
static it_daemon *g_daemons[MAX_DAEMONS];

static void kill_all_daemons(void) {
    for (int i = 0; i < MAX_DAEMONS; i++)
        if (g_daemons[i] && g_daemons[i]->pid > 0) {
            kill(g_daemons[i]->pid, SIGKILL);
            waitpid(g_daemons[i]->pid, NULL, 0);
            g_daemons[i]->pid = 0;
        }
}

static void track(it_daemon *d, int add) {
    static int registered;
    if (!registered) {
        atexit(kill_all_daemons);
        registered = 1;
    }
    for (int i = 0; i < MAX_DAEMONS; i++) {
        if (add && !g_daemons[i]) {
            g_daemons[i] = d;
            return;
        }
        if (!add && g_daemons[i] == d) {
            g_daemons[i] = NULL;
            return;
        }
    }
}

void it_daemon_log_tail(const it_daemon *d, int lines) {
    size_t n;
    uint8_t *b = it_read_file(d->log, &n);
    if (!b) return;
    size_t start = n;
    int seen = 0;
    while (start > 0 && seen <= lines) {
        start--;
        if (b[start] == '\n') seen++;
    }
    printf("---- %s log tail (%s) ----\n%.*s\n---- end ----\n", d->name, d->log, (int)(n - start),
           (const char *)b + start);
    free(b);
}

static int reap(it_daemon *d, int flags) {
    if (d->pid <= 0) return 1;
    int st;
    pid_t r = waitpid(d->pid, &st, flags);
    if (r == d->pid) {
        d->exit_status = st;
        d->pid = 0;
        track(d, 0);
        return 1;
    }
    return 0;
}

int it_daemon_alive(it_daemon *d) {
    return d->pid > 0 && !reap(d, WNOHANG);
}

int it_daemon_wait_exit(it_daemon *d, double timeout_s) {
    double end = it_now() + timeout_s;
    while (it_now() < end) {
        if (reap(d, WNOHANG)) return 1;
        it_sleep(0.02);
    }
    return reap(d, WNOHANG);
}

int it_daemon_stop(it_daemon *d, double timeout_s) {
    if (d->pid <= 0) return WIFEXITED(d->exit_status) && WEXITSTATUS(d->exit_status) == 0;
    kill(d->pid, SIGTERM);
    if (!it_daemon_wait_exit(d, timeout_s)) {
        printf("itest: %s did not exit %.0f s after SIGTERM: SIGKILL\n", d->name, timeout_s);
        kill(d->pid, SIGKILL);
        reap(d, 0);
        return 0;
    }
    return WIFEXITED(d->exit_status) && WEXITSTATUS(d->exit_status) == 0;
}

int it_daemon_fd_count(const it_daemon *d) {
    char p[64];
    snprintf(p, sizeof p, "/proc/%d/fd", (int)d->pid);
    DIR *dir = opendir(p);
    if (!dir) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(dir)))
        if (e->d_name[0] != '.') n++;
    closedir(dir);
    return n;
}

int it_daemon_start(it_daemon *d, const char *name, const char *config_json, const char *weights) {
    memset(d, 0, sizeof *d);
    snprintf(d->name, sizeof d->name, "%s", name);
    snprintf(d->dir, sizeof d->dir, "%s/%s", IT.tmp, name);
    mkdir(d->dir, 0700);
    snprintf(d->log, sizeof d->log, "%s/stderr.log", d->dir);
    snprintf(d->model, sizeof d->model, "%s/model.safetensors", d->dir);
    snprintf(d->config, sizeof d->config, "%s/config.json", d->dir);
    char portfile[PATH_MAX + 16];
    snprintf(portfile, sizeof portfile, "%s/port", d->dir);
    unlink(portfile);
    if (it_copy_file(weights, d->model) || it_write_file(d->config, config_json, strlen(config_json))) {
        printf("itest: %s: cannot write model/config\n", name);
        return -1;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int fd = open(d->log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        int nul = open("/dev/null", O_RDWR);
        if (fd >= 0) dup2(fd, 2);
        if (nul >= 0) {
            dup2(nul, 0);
            dup2(nul, 1);
        }
        /* The daemon must not inherit configuration from the test's environment. */
        unsetenv("COLORIZE_CONFIG");
        execl(IT.daemon, IT.daemon, "--config", d->config, "--listen", "127.0.0.1:0", "--port-file", portfile,
              "--model", d->model, (char *)NULL);
        _exit(127);
    }
    d->pid = pid;
    track(d, 1);
    double t0 = it_now(), end = t0 + 60;
    /* 1. the port file */
    while (it_now() < end) {
        if (!it_daemon_alive(d)) break;
        size_t n;
        uint8_t *b = it_read_file(portfile, &n);
        if (b) {
            char tmp[16] = {0};
            memcpy(tmp, b, n < 15 ? n : 15);
            free(b);
            int port = atoi(tmp);
            if (port > 0 && port < 65536) {
                d->port = port;
                break;
            }
        }
        it_sleep(0.02);
    }
    if (!d->port) {
        printf("itest: %s: no port file after %.1f s (alive %d)\n", name, it_now() - t0, it_daemon_alive(d));
        it_daemon_log_tail(d, 30);
        it_daemon_stop(d, 2);
        return -1;
    }
    /* 2. /readyz answers 200 (warm-up done) */
    while (it_now() < end && it_daemon_alive(d)) {
        it_resp r;
        it_req rq = {.path = "/readyz", .timeout_ms = 2000};
        it_http(d->port, &rq, &r);
        long st = r.status;
        it_resp_free(&r);
        if (st == 200) {
            printf("itest: %s ready on 127.0.0.1:%d after %.2f s (pid %d)\n", name, d->port, it_now() - t0,
                   (int)d->pid);
            return 0;
        }
        it_sleep(0.05);
    }
    printf("itest: %s: /readyz not 200 within %.0f s\n", name, it_now() - t0);
    it_daemon_log_tail(d, 30);
    it_daemon_stop(d, 2);
    return -1;
}

/* ------------------------------------------------------------------ images */

void it_make_pixels(cz_image *img, int w, int h, int channels, uint64_t seed) {
    cz_image_alloc(img, w, h, channels);
    uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;
    double fx = 0.5 + (double)(seed % 7) * 0.1, fy = 0.3 + (double)(seed % 5) * 0.1;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            double u = (double)x / w, v = (double)y / h;
            double base = 128 + 80 * sin(6.28 * fx * u + seed) * cos(6.28 * fy * v) + 30 * (u - v);
            for (int c = 0; c < channels; c++) {
                double val = base + 12.0 * tu_rand_normal(&s) + (c - 1) * 25.0 * u;
                if (val < 0) val = 0;
                if (val > 255) val = 255;
                img->px[((size_t)y * w + x) * channels + c] = (uint8_t)(val + 0.5);
            }
        }
}

uint8_t *it_make_image(int w, int h, int channels, uint64_t seed, cz_image_format fmt, size_t *len) {
    cz_image img;
    it_make_pixels(&img, w, h, channels, seed);
    uint8_t *out = NULL;
    if (cz_image_encode(&img, fmt, 90, &out, len) != CZ_OK) out = NULL;
    cz_image_free(&img);
    return out;
}

double it_max_dL(const cz_image *a, const cz_image *b) {
    if (a->width != b->width || a->height != b->height) return INFINITY;
    size_t n = (size_t)a->width * a->height;
    float *la = malloc(n * sizeof *la), *lb = malloc(n * sizeof *lb);
    double worst = INFINITY;
    if (la && lb && cz_image_lightness(a, la) == CZ_OK && cz_image_lightness(b, lb) == CZ_OK) {
        worst = 0;
        for (size_t i = 0; i < n; i++) {
            double d = fabs((double)la[i] - (double)lb[i]);
            if (d > worst) worst = d;
        }
    }
    free(la);
    free(lb);
    return worst;
}
