/* host_pool.h: a fixed arena of the backend's host memory (page-locked on cuda), allocated once
 * and carved into blocks for the jobs that the device finishes (their full-resolution L goes up
 * and their RGB comes back by DMA, without a staging copy).
 *
 * Why an arena: page-locking memory is slow (cudaMallocHost takes milliseconds and may stall
 * the device) and the backend's host_alloc belongs to the device thread, while jobs are
 * prepared on HTTP threads. So the arena is allocated once, before serving, and handed out
 * from any thread. When no block fits, cz_host_pool_alloc returns NULL and the caller uses
 * ordinary memory (the job is then finished on the host): a full pool slows jobs down, it never
 * fails them.
 *
 * Blocks: first fit over an address-ordered free list, freed blocks merge with their neighbours;
 * every block starts at a multiple of CZ_HOST_POOL_ALIGN. Thread-safe (one mutex).
 * Tested by tests/unit/test_host_pool.c. */
#ifndef CZ_HOST_POOL_H
#define CZ_HOST_POOL_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "status.h"

#define CZ_HOST_POOL_ALIGN 256

typedef struct cz_host_pool cz_host_pool;

typedef struct cz_host_pool_stats {
    size_t capacity;   /* arena bytes */
    size_t in_use;     /* bytes handed out now (rounded up to the alignment) */
    size_t peak;       /* the most ever in use at once */
    uint64_t allocs;   /* successful allocations */
    uint64_t misses;   /* requests that found no block (the caller fell back) */
} cz_host_pool_stats;

/* An arena of `bytes` (rounded up to the alignment) from be's host_alloc, or malloc where the
 * backend has none. CZ_ERR_INVALID_ARG for 0 bytes, CZ_ERR_NOMEM when it cannot be had. */
cz_status cz_host_pool_create(cz_backend *be, size_t bytes, cz_host_pool **out);
/* Frees the arena. Every block must have been freed (outstanding blocks are logged). NULL-safe. */
void cz_host_pool_destroy(cz_host_pool *p);

/* A block of at least `bytes`, aligned to CZ_HOST_POOL_ALIGN, or NULL when none fits (or for 0). */
void *cz_host_pool_alloc(cz_host_pool *p, size_t bytes);
/* Returns a block from cz_host_pool_alloc. NULL is a no-op; a pointer that is not a live block of
 * this pool is an error that is logged and ignored. */
void cz_host_pool_free(cz_host_pool *p, void *ptr);
/* Whether ptr lies inside the arena. */
int cz_host_pool_owns(const cz_host_pool *p, const void *ptr);
void cz_host_pool_get_stats(cz_host_pool *p, cz_host_pool_stats *st);

#endif
