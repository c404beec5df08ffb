/* log.c: JSON-lines logger on stderr (or a chosen fd). Each line is formatted into a local
 * buffer and written with one write() call, so lines from different threads never interleave.
 * See log.h. Tested by tests/unit/test_core.c. */
#include "log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static atomic_int g_level = CZ_LOG_INFO;
static atomic_int g_fd = 2;
static _Thread_local char t_request_id[80];

void cz_log_set_level(cz_log_level level) { atomic_store(&g_level, (int)level); }
cz_log_level cz_log_get_level(void) { return (cz_log_level)atomic_load(&g_level); }
void cz_log_set_fd(int fd) { atomic_store(&g_fd, fd); }

static const char *k_names[] = {"debug", "info", "warn", "error", "off"};

int cz_log_parse_level(const char *name) {
    if (!name) return -1;
    for (int i = 0; i <= CZ_LOG_OFF; i++)
        if (strcmp(name, k_names[i]) == 0) return i;
    if (strcmp(name, "warning") == 0) return CZ_LOG_WARN;
    return -1;
}

void cz_log_set_request_id(const char *id) {
    if (!id) {
        t_request_id[0] = '\0';
        return;
    }
    snprintf(t_request_id, sizeof t_request_id, "%s", id);
}

int cz_json_escape(char *out, int cap, const char *s) {
    int n = 0;
    if (cap <= 0) return 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char tmp[8];
        int k;
        switch (*p) {
        case '"': k = snprintf(tmp, sizeof tmp, "\\\""); break;
        case '\\': k = snprintf(tmp, sizeof tmp, "\\\\"); break;
        case '\n': k = snprintf(tmp, sizeof tmp, "\\n"); break;
        case '\r': k = snprintf(tmp, sizeof tmp, "\\r"); break;
        case '\t': k = snprintf(tmp, sizeof tmp, "\\t"); break;
        default:
            if (*p < 0x20)
                k = snprintf(tmp, sizeof tmp, "\\u%04x", *p);
            else {
                tmp[0] = (char)*p;
                k = 1;
            }
        }
        if (n + k >= cap) break;
        memcpy(out + n, tmp, (size_t)k);
        n += k;
    }
    out[n] = '\0';
    return n;
}

void cz_log(cz_log_level level, const char *module, const char *fmt, ...) {
    if ((int)level < atomic_load(&g_level) || level >= CZ_LOG_OFF) return;
    char msg[1024], emsg[2048], line[3072];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    cz_json_escape(emsg, sizeof emsg, msg);

    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char when[40];
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);

    int n = snprintf(line, sizeof line, "{\"ts\":\"%s.%03ldZ\",\"level\":\"%s\",\"module\":\"%s\",\"msg\":\"%s\"",
                     when, ts.tv_nsec / 1000000, k_names[level], module ? module : "", emsg);
    if (t_request_id[0] && n < (int)sizeof line) {
        char rid[200];
        cz_json_escape(rid, sizeof rid, t_request_id);
        n += snprintf(line + n, sizeof line - (size_t)n, ",\"request_id\":\"%s\"", rid);
    }
    if (n > (int)sizeof line - 3) n = (int)sizeof line - 3;
    line[n++] = '}';
    line[n++] = '\n';
    ssize_t w = write(atomic_load(&g_fd), line, (size_t)n);
    (void)w;
}
