/* log.h: structured logging, one JSON object per line on stderr:
 *   {"ts":"2026-11-26T15:08:03.123Z","level":"info","module":"unet","msg":"...","request_id":"..."}
 * Thread-safe (one write() per line). The request id is thread-local (set by the server around
 * a request). Level threshold is global (set once at start). Tested by tests/unit/test_core.c. */
#ifndef CZ_LOG_H
#define CZ_LOG_H

typedef enum { CZ_LOG_DEBUG = 0, CZ_LOG_INFO = 1, CZ_LOG_WARN = 2, CZ_LOG_ERROR = 3, CZ_LOG_OFF = 4 } cz_log_level;

void cz_log_set_level(cz_log_level level);
cz_log_level cz_log_get_level(void);
/* Parses "debug", "info", "warn", "error", "off"; returns -1 when unknown. */
int cz_log_parse_level(const char *name);
/* Redirect output to a file descriptor (default 2). For tests. */
void cz_log_set_fd(int fd);
/* Thread-local request id attached to every line logged by this thread; NULL clears. */
void cz_log_set_request_id(const char *id);

void cz_log(cz_log_level level, const char *module, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define CZ_LOGD(mod, ...) cz_log(CZ_LOG_DEBUG, mod, __VA_ARGS__)
#define CZ_LOGI(mod, ...) cz_log(CZ_LOG_INFO, mod, __VA_ARGS__)
#define CZ_LOGW(mod, ...) cz_log(CZ_LOG_WARN, mod, __VA_ARGS__)
#define CZ_LOGE(mod, ...) cz_log(CZ_LOG_ERROR, mod, __VA_ARGS__)

/* Writes `s` into `out` (capacity cap) as the body of a JSON string (no quotes), escaping
 * quotes, backslashes and control characters; truncates safely. Returns bytes written. */
int cz_json_escape(char *out, int cap, const char *s);

#endif
