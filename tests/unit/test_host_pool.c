/* test_host_pool.c: the page-locked job arena (core/host_pool.h) with plain memory (no backend):
 * alignment and rounding, exhaustion gives NULL and counts a miss, freed neighbours merge back
 * into one range (the whole arena can be had again), stray frees are ignored, a random
 * alloc/free sequence never hands out overlapping blocks (each block is filled with its own
 * byte and checked before it is freed), and four threads doing the same at once. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "host_pool.h"
#include "testutil.h"

enum { ARENA = 1 << 20 };

static void test_basics(void **state) {
    (void)state;
    cz_host_pool *p;
    assert_int_equal(cz_host_pool_create(NULL, 0, &p), CZ_ERR_INVALID_ARG);
    assert_int_equal(cz_host_pool_create(NULL, ARENA - 100, &p), CZ_OK);
    cz_host_pool_stats st;
    cz_host_pool_get_stats(p, &st);
    assert_int_equal(st.capacity, ARENA); /* rounded up to the alignment */
    assert_null(cz_host_pool_alloc(p, 0));
    uint8_t *a = cz_host_pool_alloc(p, 1), *b = cz_host_pool_alloc(p, 300), *c = cz_host_pool_alloc(p, 256);
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(c);
    assert_int_equal((uintptr_t)a % CZ_HOST_POOL_ALIGN, 0);
    assert_int_equal((uintptr_t)b % CZ_HOST_POOL_ALIGN, 0);
    assert_ptr_equal(b, a + 256);
    assert_ptr_equal(c, b + 512);
    assert_true(cz_host_pool_owns(p, a) && cz_host_pool_owns(p, c + 255) && !cz_host_pool_owns(p, &st));
    cz_host_pool_get_stats(p, &st);
    assert_int_equal(st.in_use, 1024);
    assert_int_equal(st.allocs, 3);
    /* too big now, and bigger than the arena: misses */
    assert_null(cz_host_pool_alloc(p, ARENA - 512));
    assert_null(cz_host_pool_alloc(p, 2 * ARENA));
    cz_host_pool_get_stats(p, &st);
    assert_int_equal(st.misses, 2);
    /* stray frees are ignored */
    cz_host_pool_free(p, NULL);
    cz_host_pool_free(p, a + 256 + 8); /* inside b, not its start */
    cz_host_pool_free(p, &st);         /* not in the arena */
    cz_host_pool_get_stats(p, &st);
    assert_int_equal(st.in_use, 1024);
    /* free the middle, then the sides: everything merges back into one range */
    cz_host_pool_free(p, b);
    cz_host_pool_free(p, a);
    cz_host_pool_free(p, c);
    cz_host_pool_get_stats(p, &st);
    assert_int_equal(st.in_use, 0);
    assert_int_equal(st.peak, 1024);
    uint8_t *all = cz_host_pool_alloc(p, ARENA);
    assert_ptr_equal(all, a);
    cz_host_pool_free(p, all);
    cz_host_pool_free(p, all); /* double free: ignored */
    cz_host_pool_destroy(p);
    cz_host_pool_destroy(NULL);
}

typedef struct {
    cz_host_pool *p;
    uint64_t seed;
    int iters;
    int errors;
} churn_arg;

/* Random allocs and frees; every live block is filled with its own byte and checked before it
 * goes back, so two live blocks that overlap show up as a wrong byte. */
static void *churn(void *v) {
    churn_arg *c = v;
    enum { SLOTS = 24 };
    uint8_t *blk[SLOTS] = {0};
    size_t len[SLOTS] = {0};
    uint8_t tag[SLOTS] = {0};
    uint64_t rs = c->seed;
    for (int it = 0; it < c->iters; it++) {
        int k = (int)(tu_rand_u64(&rs) % SLOTS);
        if (blk[k]) {
            for (size_t i = 0; i < len[k]; i++)
                if (blk[k][i] != tag[k]) {
                    c->errors++;
                    break;
                }
            cz_host_pool_free(c->p, blk[k]);
            blk[k] = NULL;
            continue;
        }
        len[k] = 1 + (size_t)(tu_rand_u64(&rs) % (ARENA / 6));
        blk[k] = cz_host_pool_alloc(c->p, len[k]);
        if (!blk[k]) continue; /* full: a miss, fine */
        if ((uintptr_t)blk[k] % CZ_HOST_POOL_ALIGN) c->errors++;
        tag[k] = (uint8_t)(c->seed * 31 + (uint64_t)k * 7 + 1);
        memset(blk[k], tag[k], len[k]);
    }
    for (int k = 0; k < SLOTS; k++) cz_host_pool_free(c->p, blk[k]);
    return NULL;
}

static void test_churn_single_and_threads(void **state) {
    (void)state;
    cz_host_pool *p;
    assert_int_equal(cz_host_pool_create(NULL, ARENA, &p), CZ_OK);
    churn_arg one = {p, 5, 20000, 0};
    churn(&one);
    assert_int_equal(one.errors, 0);
    cz_host_pool_stats st;
    cz_host_pool_get_stats(p, &st);
    assert_int_equal(st.in_use, 0);
    assert_true(st.misses > 0); /* the sequence does fill the arena at times */
    pthread_t th[4];
    churn_arg args[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (churn_arg){p, 100 + (uint64_t)i, 5000, 0};
        assert_int_equal(pthread_create(&th[i], NULL, churn, &args[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(args[i].errors, 0);
    }
    cz_host_pool_get_stats(p, &st);
    assert_int_equal(st.in_use, 0);
    void *all = cz_host_pool_alloc(p, ARENA); /* everything merged back */
    assert_non_null(all);
    cz_host_pool_free(p, all);
    print_message("host pool: %llu allocations, %llu misses, peak %zu of %zu bytes\n",
                  (unsigned long long)st.allocs, (unsigned long long)st.misses, st.peak, st.capacity);
    cz_host_pool_destroy(p);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_basics),
        cmocka_unit_test(test_churn_single_and_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
