/* fuzz_config.c: libFuzzer driver for the configuration parsers (core/config.c).
 *
 * The input is copied into a fresh NUL-terminated buffer of exactly size + 1 bytes (so ASan
 * catches a read past the terminator) and applied on top of the defaults with
 * cz_config_load_json. Checks, each an abort (a crash for libFuzzer) when broken:
 *   - the status is CZ_OK or CZ_ERR_CONFIG (a refusal names the key or the JSON position);
 *   - every string field of the result stays NUL-terminated inside its buffer;
 *   - an accepted configuration serializes (cz_config_to_json), and loading that text on top
 *     of the defaults reproduces the same serialization (a fixed point);
 *   - cz_config_validate never crashes and answers CZ_OK or CZ_ERR_CONFIG.
 * The same bytes, split at newlines, are also fed to cz_config_load_env as an environment
 * block ("COLORIZE_IMAGE_RENDER=512" lines), the other text parser of the module.
 *
 * Run through tests/fuzz/run.sh (builds it with -fsanitize=fuzzer,address,undefined). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "status.h"

enum { FUZZ_MAX_ENV = 64 };

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("fuzz_config: invariant violated: ", stderr);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (last error detail: %s)\n", cz_error_detail());
    va_end(ap);
    abort();
}

static void check_result(cz_status s, const char *what) {
    if (s != CZ_OK && s != CZ_ERR_CONFIG)
        fail("%s returned %d (%s), expected CZ_OK or CZ_ERR_CONFIG", what, (int)s, cz_strerror(s));
    if (s != CZ_OK) {
        const char *d = cz_error_detail();
        if (!d || !*d) fail("%s refused the input without an error detail", what);
    }
}

static void check_strings(const cz_config *c) {
    if (!memchr(c->model_path, '\0', sizeof c->model_path)) fail("model_path not terminated");
    if (!memchr(c->backend, '\0', sizeof c->backend)) fail("backend not terminated");
    if (!memchr(c->precision, '\0', sizeof c->precision)) fail("precision not terminated");
    if (!memchr(c->log_level, '\0', sizeof c->log_level)) fail("log_level not terminated");
}

/* cz_config_to_json of c, reloaded on top of the defaults, must serialize the same. */
static void check_fixed_point(const cz_config *c) {
    char *j1 = cz_config_to_json(c);
    if (!j1) return; /* out of memory in jansson */
    cz_config c2;
    cz_config_defaults(&c2);
    cz_status s = cz_config_load_json(&c2, j1, "fuzz-roundtrip");
    if (s != CZ_OK) fail("the serialized configuration does not load back: %s\n%s", cz_error_detail(), j1);
    char *j2 = cz_config_to_json(&c2);
    if (j2 && strcmp(j1, j2) != 0) fail("serialization is not a fixed point:\n%s\n---\n%s", j1, j2);
    free(j1);
    free(j2);
}

static void fuzz_env(char *text) {
    char *envp[FUZZ_MAX_ENV + 1];
    size_t n = 0;
    for (char *line = text; line && n < FUZZ_MAX_ENV;) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = '\0';
        envp[n++] = line;
        line = nl ? nl + 1 : NULL;
    }
    envp[n] = NULL;
    cz_config c;
    cz_config_defaults(&c);
    cz_status s = cz_config_load_env(&c, envp);
    check_result(s, "cz_config_load_env");
    check_strings(&c);
    check_result(cz_config_validate(&c), "cz_config_validate (env)");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    if (!text) return 0;
    if (size) memcpy(text, data, size);
    text[size] = '\0';

    cz_config c;
    cz_config_defaults(&c);
    cz_status s = cz_config_load_json(&c, text, "fuzz");
    check_result(s, "cz_config_load_json");
    check_strings(&c);
    check_result(cz_config_validate(&c), "cz_config_validate");
    if (s == CZ_OK) check_fixed_point(&c);

    fuzz_env(text); /* modifies text (splits lines) */
    free(text);
    return 0;
}
