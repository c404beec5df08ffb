/* test_http_cases.h: what the source files of test_http share: the main daemon (started by
 * test_http.c for the first test group), the limits it is configured with, and the test cases
 * defined in test_http_errors.c and test_http_ops.c. */
#ifndef CZ_TEST_HTTP_CASES_H
#define CZ_TEST_HTTP_CASES_H

#include "itest.h"

extern it_daemon g_main; /* test_http.c */

/* Limits of the main daemon (k_main_config in test_http.c) that tests rely on. */
#define MAIN_MAX_BODY 1048576
#define MAIN_MAX_PIXELS 1000000
#define MAIN_MAX_RENDER 1024

/* test_http_errors.c (main daemon) */
void test_errors(void **state);

/* test_http_ops.c: on the main daemon */
void test_concurrency(void **state);
void test_hostile_bodies(void **state);
void test_slow_clients(void **state);
void test_fd_leak(void **state);
/* test_http_ops.c: on daemons of their own */
void test_batched_equals_alone(void **state);
void test_queue_full(void **state);
void test_deadline(void **state);
void test_reload(void **state);
void test_drain(void **state);

#endif
