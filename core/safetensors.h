/* safetensors.h: reader and writer for the safetensors format
 * (https://github.com/huggingface/safetensors): 8-byte little-endian header length N, N bytes
 * of JSON header {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
 * "__metadata__": {"key": "string value", ...}}, then the raw little-endian tensor bytes.
 *
 * The reader validates everything before handing out a tensor: header length within the file
 * and a configured cap, JSON well-formed with an object at top level, every entry with a known
 * dtype, a shape of non-negative dims whose byte size matches its data_offsets exactly,
 * offsets inside the data section, no overlaps, no duplicate names, metadata values strings.
 * Any violation is CZ_ERR_BAD_WEIGHTS with a detail naming the tensor and the problem.
 *
 * The writer builds a file in memory and saves it atomically (temp + fsync + rename + fsync
 * of the directory). The data section is covered exactly (no gaps), so tensors are laid out in
 * insertion order within groups of decreasing element size (8, 4, 2, 1 bytes): each is aligned
 * to its element size, and all offsets are 8-aligned when sizes are multiples of 8.
 *
 * Not thread-safe per object; separate objects are independent.
 * Tested by tests/unit/test_safetensors.c. */
#ifndef CZ_SAFETENSORS_H
#define CZ_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

typedef enum cz_st_dtype {
    CZ_ST_F32 = 0,
    CZ_ST_F16 = 1,
    CZ_ST_BF16 = 2,
    CZ_ST_F64 = 3,
    CZ_ST_I64 = 4,
    CZ_ST_I32 = 5,
    CZ_ST_U8 = 6,
    CZ_ST_BOOL = 7,
    CZ_ST_DTYPE_COUNT_
} cz_st_dtype;

#define CZ_ST_MAX_DIMS 8
#define CZ_ST_MAX_HEADER (100u * 1024u * 1024u) /* header bytes accepted at most */

typedef struct cz_st_tensor {
    const char *name;
    cz_st_dtype dtype;
    int ndim;
    int64_t shape[CZ_ST_MAX_DIMS];
    const uint8_t *data; /* points into the file's data section (unaligned access possible) */
    size_t nbytes;
} cz_st_tensor;

typedef struct cz_safetensors cz_safetensors;

const char *cz_st_dtype_name(cz_st_dtype dt); /* "F32", ... */
size_t cz_st_dtype_size(cz_st_dtype dt);

/* Opens and validates a file (read into memory). */
cz_status cz_st_open(const char *path, cz_safetensors **out);
/* Validates a buffer; copies it when `copy` is nonzero, else borrows it (it must outlive st). */
cz_status cz_st_parse(const void *buf, size_t len, int copy, cz_safetensors **out);
void cz_st_close(cz_safetensors *st); /* NULL-safe */

size_t cz_st_count(const cz_safetensors *st);
const cz_st_tensor *cz_st_at(const cz_safetensors *st, size_t i); /* header order */
const cz_st_tensor *cz_st_find(const cz_safetensors *st, const char *name);
/* Metadata value for key, or NULL. */
const char *cz_st_meta(const cz_safetensors *st, const char *key);
size_t cz_st_meta_count(const cz_safetensors *st);
/* i-th metadata pair (sorted by key). */
void cz_st_meta_at(const cz_safetensors *st, size_t i, const char **key, const char **value);
/* Whole-file byte image and its FNV-1a 64-bit hash (the "weights checksum"). */
uint64_t cz_st_checksum(const cz_safetensors *st);

/* Copies a floating tensor (F32, F16, BF16, F64) into fp32 (numel floats). */
cz_status cz_st_to_f32(const cz_st_tensor *t, float *dst, size_t numel);
size_t cz_st_numel(const cz_st_tensor *t);

/* ---- writer ---- */
typedef struct cz_st_writer cz_st_writer;
cz_status cz_st_writer_create(cz_st_writer **out);
void cz_st_writer_destroy(cz_st_writer *w); /* NULL-safe */
cz_status cz_st_writer_meta(cz_st_writer *w, const char *key, const char *value);
/* Copies `data` (little-endian, nbytes must equal numel * dtype size). */
cz_status cz_st_writer_add(cz_st_writer *w, const char *name, cz_st_dtype dtype, int ndim,
                           const int64_t *shape, const void *data, size_t nbytes);
/* Serializes into a malloc'd buffer. */
cz_status cz_st_writer_bytes(cz_st_writer *w, uint8_t **out, size_t *len);
/* Serializes and writes atomically. */
cz_status cz_st_writer_save(cz_st_writer *w, const char *path);

#endif
