/* test_train_http.h: what the two halves of test_train_http share (see test_train_http.c for
 * how it runs): the admin token, the daemon and its directories, JSON and admin-request helpers.
 * test_train_http_util.c defines the helpers, test_train_http.c the globals and the job tests,
 * test_train_http_errors.c the token and bad-request tests. Main thread only. */
#ifndef CZ_TEST_TRAIN_HTTP_H
#define CZ_TEST_TRAIN_HTTP_H

#include <jansson.h>
#include <limits.h>
#include <stddef.h>

#include "itest.h"

#define TOKEN "itest-admin-7f3a9c51e2d84b06"
#define AUTH "Authorization: Bearer " TOKEN /* the whole header line */
#define REALM "Bearer realm=\"colorize-admin\""

extern char g_data[PATH_MAX], g_state[PATH_MAX], g_weights6[PATH_MAX];
extern it_daemon g_d; /* the training daemon (restarted once in test_restart) */

/* JSON: the body of a response (NULL when not JSON; caller decrefs), members (-1 / NaN / ""
 * when absent or of another type). */
json_t *jload(const it_resp *r);
long jlong(json_t *o, const char *k);
double jnum(json_t *o, const char *k);
const char *jstr(json_t *o, const char *k);

/* One admin request: auth is the whole Authorization header line (NULL: none); a body goes out
 * as application/json. Returns the status. */
long areq(int port, const char *method, const char *path, const char *body, const char *auth, it_resp *r);
/* GET /train/{id} as JSON, NULL unless 200. */
json_t *get_job(int port, const char *id);
/* Whether the job's status is one of the space-separated `set`. */
int status_in(json_t *job, const char *set);
/* Polls until the status is in `set` and pred (when given) holds, at most timeout_s; returns
 * the last job object seen (caller decrefs). */
json_t *wait_job(int port, const char *id, const char *set, int (*pred)(json_t *), double timeout_s);
/* POST /train; on 202 copies the job id. Returns the status. */
long submit(int port, const char *body, char id[65], json_t **job_out);
/* The error message starts with (prefix) or contains `field`. */
int message_names(const it_resp *r, const char *field, int prefix);
/* GET /model's checksum (malloc'd, "" on failure) and source.kind. */
char *model_checksum(int port, char *src_kind, size_t cap);

/* mkdir that accepts an existing directory; 0 on success. */
int tt_mkdir(const char *p);
/* Under root: ds1 (36 colour 96x96 PNGs), gray (4 grayscale PNGs), empty, escape -> /,
 * inside -> ds1. 0 on success. */
int tt_write_datasets(const char *root);

/* test_train_http_errors.c */
void test_auth(void **state);
void test_disabled(void **state);
void test_bad_requests(void **state);

#endif
