/* testutil.h: helpers shared by the cmocka unit tests: where the source tree and ../shared
 * are, seeded random data, relative error. */
#ifndef CZ_TESTUTIL_H
#define CZ_TESTUTIL_H

#include <stddef.h>
#include <stdint.h>

/* Source tree root (CZ_SOURCE_DIR from CTest, else "."). */
const char *tu_source_dir(void);
/* ../shared next to the source tree (CZ_SHARED_DIR overrides). */
const char *tu_shared_dir(void);
/* Path join into a static-per-call malloc'd string the caller frees. */
char *tu_path(const char *dir, const char *rel);
/* Deterministic xorshift generator. */
uint64_t tu_rand_u64(uint64_t *state);
float tu_rand_uniform(uint64_t *state, float lo, float hi);
float tu_rand_normal(uint64_t *state);
void tu_fill_uniform(float *x, size_t n, uint64_t seed, float lo, float hi);
/* ||a-b|| / max(||b||, tiny); returns +inf when any value is NaN. */
double tu_rel_err(const float *a, const float *b, size_t n);
/* Writes n colourful 64x64 PNGs (img_00.png, ...) into dir (created if needed): banded
 * patterns whose colour follows the structure, so a tiny pix2pix model can learn something.
 * 0 on success. */
int tu_write_color_pngs(const char *dir, int n);
/* Non-zero when the CPU has AVX-512 BF16 or AMX (bf16 fast paths). */
int tu_cpu_has_bf16(void);

#endif
