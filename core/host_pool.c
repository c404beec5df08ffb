/* host_pool.c: see host_pool.h. Two address-ordered arrays of ranges (offset, length) under one
 * mutex: the free ranges (first fit; a freed block merges with the free ranges on either side)
 * and the live blocks (so that a free finds its length by binary search and a stray pointer is
 * caught). A few hundred blocks at most are live at once (one per queued job), so arrays and
 * linear merges are plenty. */
#include "host_pool.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

typedef struct range {
    size_t off, len;
} range;

typedef struct ranges {
    range *v;
    size_t n, cap;
} ranges;

struct cz_host_pool {
    cz_backend *be;
    uint8_t *base;
    size_t size;
    int from_backend; /* base came from be's host_alloc (else malloc) */
    pthread_mutex_t mu;
    ranges free_r, live;
    cz_host_pool_stats st;
};

static int ranges_insert(ranges *r, size_t at, range x) {
    if (r->n == r->cap) {
        size_t cap = r->cap ? 2 * r->cap : 64;
        range *v = realloc(r->v, cap * sizeof *v);
        if (!v) return 0;
        r->v = v;
        r->cap = cap;
    }
    memmove(r->v + at + 1, r->v + at, (r->n - at) * sizeof *r->v);
    r->v[at] = x;
    r->n++;
    return 1;
}

static void ranges_remove(ranges *r, size_t at) {
    memmove(r->v + at, r->v + at + 1, (r->n - at - 1) * sizeof *r->v);
    r->n--;
}

/* The index of the first range whose offset is >= off. */
static size_t ranges_lower(const ranges *r, size_t off) {
    size_t lo = 0, hi = r->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (r->v[mid].off < off) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

static size_t round_up(size_t x) { return (x + CZ_HOST_POOL_ALIGN - 1) / CZ_HOST_POOL_ALIGN * CZ_HOST_POOL_ALIGN; }

cz_status cz_host_pool_create(cz_backend *be, size_t bytes, cz_host_pool **out) {
    *out = NULL;
    if (bytes == 0) return cz_error_set(CZ_ERR_INVALID_ARG, "host pool: 0 bytes");
    if (bytes > SIZE_MAX / 2) return cz_error_set(CZ_ERR_INVALID_ARG, "host pool: %zu bytes is too large", bytes);
    cz_host_pool *p = calloc(1, sizeof *p);
    if (!p) return cz_error_set(CZ_ERR_NOMEM, "host pool: out of memory");
    p->be = be;
    pthread_mutex_init(&p->mu, NULL);
    p->size = round_up(bytes);
    p->from_backend = be && be->ops->host_alloc;
    /* the arena is aligned by the allocator (cudaMallocHost: pages) or by aligned_alloc */
    p->base = p->from_backend ? be->ops->host_alloc(be, p->size) : aligned_alloc(CZ_HOST_POOL_ALIGN, p->size);
    if (!p->base || !ranges_insert(&p->free_r, 0, (range){0, p->size})) {
        size_t sz = p->size;
        cz_host_pool_destroy(p);
        return cz_error_set(CZ_ERR_NOMEM, "host pool: cannot allocate %zu bytes%s", sz,
                            be && be->ops->host_alloc ? " of page-locked memory" : "");
    }
    p->st.capacity = p->size;
    *out = p;
    return CZ_OK;
}

void cz_host_pool_destroy(cz_host_pool *p) {
    if (!p) return;
    if (p->live.n)
        CZ_LOGW("host_pool", "destroyed with %zu blocks (%zu bytes) still in use", p->live.n, p->st.in_use);
    if (p->base) {
        if (p->from_backend)
            p->be->ops->host_free(p->be, p->base);
        else
            free(p->base);
    }
    pthread_mutex_destroy(&p->mu);
    free(p->free_r.v);
    free(p->live.v);
    free(p);
}

void *cz_host_pool_alloc(cz_host_pool *p, size_t bytes) {
    if (!p || bytes == 0 || bytes > p->size) {
        if (p && bytes) {
            pthread_mutex_lock(&p->mu);
            p->st.misses++;
            pthread_mutex_unlock(&p->mu);
        }
        return NULL;
    }
    size_t len = round_up(bytes);
    void *ret = NULL;
    pthread_mutex_lock(&p->mu);
    for (size_t i = 0; i < p->free_r.n; i++) {
        range *f = &p->free_r.v[i];
        if (f->len < len) continue;
        range blk = {f->off, len};
        size_t at = ranges_lower(&p->live, blk.off);
        if (!ranges_insert(&p->live, at, blk)) break; /* out of memory for the bookkeeping: a miss */
        f->off += len;
        f->len -= len;
        if (f->len == 0) ranges_remove(&p->free_r, i);
        p->st.in_use += len;
        if (p->st.in_use > p->st.peak) p->st.peak = p->st.in_use;
        p->st.allocs++;
        ret = p->base + blk.off;
        break;
    }
    if (!ret) p->st.misses++;
    pthread_mutex_unlock(&p->mu);
    return ret;
}

void cz_host_pool_free(cz_host_pool *p, void *ptr) {
    if (!p || !ptr) return;
    if (!cz_host_pool_owns(p, ptr)) {
        CZ_LOGE("host_pool", "free of %p, which is not in the pool", ptr);
        return;
    }
    size_t off = (size_t)((uint8_t *)ptr - p->base);
    pthread_mutex_lock(&p->mu);
    size_t at = ranges_lower(&p->live, off);
    if (at == p->live.n || p->live.v[at].off != off) {
        pthread_mutex_unlock(&p->mu);
        CZ_LOGE("host_pool", "free of %p, which is not a live block", ptr);
        return;
    }
    range blk = p->live.v[at];
    ranges_remove(&p->live, at);
    p->st.in_use -= blk.len;
    /* merge with the free ranges on either side */
    size_t j = ranges_lower(&p->free_r, blk.off);
    int merged = 0;
    if (j > 0 && p->free_r.v[j - 1].off + p->free_r.v[j - 1].len == blk.off) {
        p->free_r.v[j - 1].len += blk.len;
        merged = 1;
        if (j < p->free_r.n && blk.off + blk.len == p->free_r.v[j].off) {
            p->free_r.v[j - 1].len += p->free_r.v[j].len;
            ranges_remove(&p->free_r, j);
        }
    } else if (j < p->free_r.n && blk.off + blk.len == p->free_r.v[j].off) {
        p->free_r.v[j].off = blk.off;
        p->free_r.v[j].len += blk.len;
        merged = 1;
    }
    if (!merged && !ranges_insert(&p->free_r, j, blk))
        CZ_LOGE("host_pool", "out of memory: %zu bytes leave the pool", blk.len); /* never reused */
    pthread_mutex_unlock(&p->mu);
}

int cz_host_pool_owns(const cz_host_pool *p, const void *ptr) {
    const uint8_t *q = ptr;
    return p && q && q >= p->base && q < p->base + p->size;
}

void cz_host_pool_get_stats(cz_host_pool *p, cz_host_pool_stats *st) {
    memset(st, 0, sizeof *st);
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    *st = p->st;
    pthread_mutex_unlock(&p->mu);
}
