/* backend_dnnl.h: introspection hooks of the oneDNN backend (core/backend_dnnl.c) for tests
 * and benchmarks. The backend itself is created through the registry (cz_backend_create
 * "dnnl" or cz_backend_dnnl_create in backend.h); nothing here is needed to use it.
 * Same threading rule as the backend: call from the thread that owns the instance.
 * Tested by tests/unit/test_dnnl.c. */
#ifndef CZ_BACKEND_DNNL_H
#define CZ_BACKEND_DNNL_H

#include <stdint.h>

#include "backend.h"

/* Physical layouts the dnnl backend records in cz_tensor.layout. */
enum {
    CZ_DNNL_LAYOUT_NCHW = 0,     /* plain NCHW, elements of the tensor's dtype */
    CZ_DNNL_LAYOUT_NCHW16C = 1,  /* oneDNN nChw16c (channel blocks of 16 innermost) */
    CZ_DNNL_LAYOUT_VEC_F32 = 2   /* plain NCHW stored as fp32 whatever the dtype (vectors) */
};

typedef struct cz_dnnl_stats {
    uint64_t prim_hits;      /* op calls that found their primitive in the shape cache */
    uint64_t prim_misses;    /* primitives created */
    uint64_t weight_reorders;/* weight copies (re)built into a primitive's preferred layout */
    uint64_t weight_entries; /* reordered weight copies currently held */
    uint64_t scratch_bytes;  /* size of the shared scratchpad buffer */
} cz_dnnl_stats;

/* Fills *st for a backend created as "dnnl". CZ_ERR_INVALID_ARG for any other backend. */
cz_status cz_backend_dnnl_stats(cz_backend *be, cz_dnnl_stats *st);
/* Convenience: primitive-cache hits and misses only (either pointer may be NULL). */
cz_status cz_backend_dnnl_cache_stats(cz_backend *be, uint64_t *hits, uint64_t *misses);

/* Implementation of the most recent primitive that the named op executed ("conv2d",
 * "deconv2d", ...), as oneDNN reports it (e.g. "brg:avx512_core_bf16"); "" when unknown. */
const char *cz_backend_dnnl_last_impl(cz_backend *be, const char *op);

/* How deconv2d is computed: 0 = pick automatically (default), 1 = oneDNN deconvolution
 * forward, 2 = convolution backward-data followed by a bias/activation pass. For benchmarks;
 * CZ_DNNL_DECONV=fwd|bwd in the environment sets the same at create. */
cz_status cz_backend_dnnl_set_deconv_mode(cz_backend *be, int mode);

/* How conv2d_bwd_data is computed: 0 = automatically (the transposed-conv forms of deconv2d
 * where the shapes allow, default), 1 = oneDNN convolution backward-data. For benchmarks;
 * CZ_DNNL_BWD_DATA=direct in the environment sets 1 at create. */
cz_status cz_backend_dnnl_set_bwd_data_mode(cz_backend *be, int mode);

#endif
