/* backend_ref.c: placeholder until the oneDNN backend lands. */
#include "backend.h"
cz_status cz_backend_dnnl_create(const cz_backend_options *opt, cz_backend **out) {
    *out = NULL;
    return cz_error_set(CZ_ERR_UNAVAILABLE, "dnnl backend not built yet");
}
