/* json.c: JSON bodies the daemon sends, built with jansson so that every string is escaped
 * properly. Client-influenced text (paths, parameter values, decoder details) may hold bytes
 * that are not UTF-8; jansson refuses those, so such text is reduced to printable ASCII
 * before it goes in. Reentrant; no state. Tested by the integration tests and by hand. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "server.h"

/* A JSON string for `s`: as is when it is valid UTF-8, else with every byte outside
 * printable ASCII replaced by '?'. */
static json_t *safe_string(const char *s) {
    if (!s) s = "";
    json_t *j = json_string(s);
    if (j) return j;
    size_t n = strlen(s);
    char *copy = malloc(n + 1);
    if (!copy) return NULL;
    for (size_t i = 0; i < n; i++) copy[i] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
    copy[n] = '\0';
    j = json_string(copy);
    free(copy);
    return j;
}

char *srv_json_error(const char *code, const char *message, const char *request_id) {
    json_t *err = json_object(), *root = json_object();
    if (!err || !root) {
        json_decref(err);
        json_decref(root);
        return NULL;
    }
    json_object_set_new(err, "code", safe_string(code));
    json_object_set_new(err, "message", safe_string(message));
    json_object_set_new(err, "request_id", safe_string(request_id));
    json_object_set_new(root, "error", err);
    char *text = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    return text;
}
