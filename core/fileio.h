/* fileio.h: whole-file reads with a byte limit and atomic writes (temp file in the same
 * directory, fsync, rename, fsync of the directory), so nothing is ever half-written.
 * Reentrant. Tested by tests/unit/test_core.c. */
#ifndef CZ_FILEIO_H
#define CZ_FILEIO_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

/* Reads a whole regular file into a malloc'd buffer (NUL-terminated one byte past *len).
 * CZ_ERR_TOO_LARGE when it exceeds max_bytes (0 = no limit), CZ_ERR_NOT_FOUND when missing. */
cz_status cz_file_read(const char *path, size_t max_bytes, uint8_t **data, size_t *len);
cz_status cz_file_write_atomic(const char *path, const void *data, size_t len);

#endif
