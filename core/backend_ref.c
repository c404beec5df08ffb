/* backend_ref.c: placeholder until the plain-C reference backend lands. */
#include "backend.h"
cz_status cz_backend_ref_create(const cz_backend_options *opt, cz_backend **out) {
    *out = NULL;
    return cz_error_set(CZ_ERR_UNAVAILABLE, "ref backend not built yet");
}
