/* dataset.h: training data for pix2pix colorization: a directory of colour JPEG/PNG photos
 * turned into augmented (A, B) sample pairs, decoded on background threads.
 *
 *  - Listing: the root is walked recursively for .jpg/.jpeg/.png (case-insensitive). Hidden
 *    entries (names starting with '.') are ignored. Symlinks are resolved with realpath and
 *    followed only when the target lies inside the root (loops are cut by remembering the
 *    directories already visited); links that leave the root are refused and counted. Files
 *    reached twice (through a link) are listed once. The list is sorted by relative path and
 *    capped at `max_files`.
 *  - Split: either a separate `val_dir`, or a hash of each relative path decides (a stable
 *    `val_fraction` of files; adding files never moves old ones between the splits). With a
 *    hash split and at least two files, at least one goes to validation.
 *  - Samples (pix2pix "resize_and_crop", the reference's default): the photo is stretched to
 *    load x load (load = round(S * 286 / 256), 286 for S = 256, 72 for S = 64), a random S x S
 *    window is cropped and flipped left-right with probability 1/2. Colour is converted after
 *    the resize, as the reference's colorization dataset does.
 *      lab mode: A = L / 50 - 1 (1 plane), B = (a, b) / 110 (2 planes);
 *      rgb mode: A = the gray sRGB of L in [-1, 1] (3 equal planes), B = sRGB in [-1, 1].
 *    Tensors are NCHW float32: A is n x a_ch x S x S, B is n x b_ch x S x S.
 *  - Order and randomness: training is an endless stream of epochs; epoch e visits the
 *    training files in a permutation derived from (seed, e), and each sample's crop and flip
 *    come from (seed, e, file). The stream is therefore identical for the same seed whatever
 *    the number of workers or their timing.
 *  - Files that cannot be read or decoded, and grayscale photos (1-channel, or RGB with almost
 *    no colourful pixels: nothing to learn), are skipped, counted once each, and remembered so
 *    later epochs do not decode them again; the first few reasons are logged.
 *  - Validation: fixed order, stretch to load x load, centre crop, no flip.
 *
 * Threading: cz_dataset_open starts `workers` threads that fill a bounded reorder ring of
 * ready samples; cz_dataset_next_batch is for ONE consumer thread. cz_dataset_val_batch
 * decodes on the calling thread and may run alongside the training consumer. Stats may be read
 * from any thread. cz_dataset_destroy stops and joins the workers at any point.
 * Tested by tests/unit/test_dataset.c. */
#ifndef CZ_DATASET_H
#define CZ_DATASET_H

#include <stddef.h>
#include <stdint.h>

#include "image.h"
#include "status.h"
#include "unet.h" /* cz_color_mode */

typedef struct cz_dataset cz_dataset;

typedef struct cz_dataset_config {
    const char *root;       /* training directory (required) */
    const char *val_dir;    /* separate validation directory, or NULL for a hash split */
    double val_fraction;    /* hash split fraction in [0, 0.5] (default 0.05) */
    cz_color_mode mode;     /* CZ_COLOR_LAB (default) or CZ_COLOR_RGB */
    int image_size;         /* S: crop size, 8..4096 (default 256) */
    int load_size;          /* stretch size before the crop; 0 = round(S * 286 / 256) */
    int batch_size;         /* B, 1..4096 (default 1) */
    int workers;            /* decode threads, 1..64 (default 2) */
    int ring;               /* ready samples held, >= batch_size (0 = 4 * B, at least 8) */
    uint64_t seed;          /* shuffle and augmentation seed */
    int no_flip;            /* non-zero disables the random flip */
    size_t max_files;       /* cap on listed images, per directory given (default 1000000) */
    size_t max_file_bytes;  /* per-file byte cap (default 64 MiB) */
    cz_image_limits limits; /* per-file pixel caps (zeroes = cz_image_limits_default) */
    size_t cache_bytes;     /* memory for photos kept stretched between epochs (load x load x 3
                               bytes each, training and validation files alike); 0 = none, the
                               default: every sample decodes its file */
} cz_dataset_config;

void cz_dataset_config_default(cz_dataset_config *cfg);

/* Where one sample came from and how it was augmented. */
typedef struct cz_sample_info {
    uint32_t file; /* index for cz_dataset_file_path */
    int64_t epoch; /* -1 for validation samples */
    int crop_x, crop_y;
    int flipped;
} cz_sample_info;

/* Where a batch's A and B live: an allocator of the caller's (the trainer passes its backend's
 * page-locked host memory, so that uploads overlap compute). All zero: malloc/free. */
typedef struct cz_batch_mem {
    void *(*alloc)(void *ctx, size_t bytes); /* NULL on failure */
    void (*release)(void *ctx, void *p);
    void *ctx;
} cz_batch_mem;

typedef struct cz_batch {
    int n, cap;     /* samples filled, capacity */
    int size;       /* S */
    int a_ch, b_ch; /* 1, 2 (lab) or 3, 3 (rgb) */
    float *A, *B;   /* cap x a_ch x S x S, cap x b_ch x S x S */
    cz_sample_info *info;
    cz_batch_mem mem; /* how A and B were allocated */
} cz_batch;

/* A batch sized for the dataset's mode, S and batch size. Free with cz_batch_free. The _in
 * forms take A and B from `mem` (NULL: malloc). */
cz_status cz_dataset_batch_alloc(const cz_dataset *ds, cz_batch *b);
cz_status cz_dataset_batch_alloc_in(const cz_dataset *ds, cz_batch *b, const cz_batch_mem *mem);
cz_status cz_batch_alloc(cz_batch *b, int cap, int size, int a_ch, int b_ch);
cz_status cz_batch_alloc_in(cz_batch *b, int cap, int size, int a_ch, int b_ch, const cz_batch_mem *mem);
void cz_batch_free(cz_batch *b); /* NULL-safe, zeroes the struct */

/* Lists the files, splits them and starts the workers. Errors: CZ_ERR_INVALID_ARG /
 * CZ_ERR_CONFIG for a bad config, CZ_ERR_NOT_FOUND when a directory is missing or holds no
 * image (the training split must not be empty), CZ_ERR_IO, CZ_ERR_NOMEM. */
cz_status cz_dataset_open(const cz_dataset_config *cfg, cz_dataset **out);
/* Stops and joins the workers (even mid-epoch) and frees everything. NULL is a no-op. */
void cz_dataset_destroy(cz_dataset *ds);

/* Fills b->cap (the dataset's batch size) training samples, in stream order, crossing epoch
 * boundaries as needed (batches are always full). Blocks until workers have produced them.
 * CZ_ERR_NOT_FOUND when a whole epoch yielded no usable image; CZ_ERR_SHUTTING_DOWN after
 * destroy began. One consumer thread only. */
cz_status cz_dataset_next_batch(cz_dataset *ds, cz_batch *b);

/* Validation: fills up to b->cap samples from the validation split starting at *cursor (an
 * index into the split, start at 0), skipping unusable files, and advances *cursor. b->n == 0
 * means the split is exhausted. Decodes on the calling thread. */
cz_status cz_dataset_val_batch(cz_dataset *ds, size_t *cursor, cz_batch *b);

typedef struct cz_dataset_stats {
    size_t files_found; /* image files listed (training + validation) */
    size_t train_files, val_files;
    size_t non_image;          /* other regular files ignored */
    size_t links_refused;      /* symlinks leaving the root, dangling, or looping */
    int truncated;             /* the max_files cap was hit */
    size_t skipped_unreadable; /* distinct files that failed to read or decode */
    size_t skipped_gray;       /* distinct grayscale photos */
    uint64_t samples_served;   /* training samples handed to the consumer */
    uint64_t val_served;       /* validation samples produced */
    uint64_t batches;          /* training batches served */
    uint64_t consumer_waits;   /* times next_batch blocked on an unfinished sample */
    int ring_capacity;
    int ring_ready;            /* samples ready in order at the head of the ring right now */
    int ready_at_last_request; /* ring_ready when the latest next_batch began */
    size_t cached_files;       /* photos held stretched in the cache */
    size_t cache_bytes;        /* the bytes they take (at most cache_bytes of the config) */
    uint64_t cache_hits;       /* samples made from the cache instead of the file */
    int64_t epoch;             /* epoch of the next training sample */
} cz_dataset_stats;

void cz_dataset_get_stats(cz_dataset *ds, cz_dataset_stats *st);

/* The grayscale test applied to every photo (see top): non-zero when `img` (8-bit, 1 or 3
 * channels) has no colour to learn from. */
int cz_dataset_image_is_gray(const cz_image *img);

/* Relative path (for logs and reports) of listed file `index`; NULL when out of range.
 * Validation files from a separate val_dir are prefixed "val:". */
const char *cz_dataset_file_path(const cz_dataset *ds, uint32_t index);
size_t cz_dataset_train_count(const cz_dataset *ds);
size_t cz_dataset_val_count(const cz_dataset *ds);
/* File index of the i-th training / validation file (sorted order). */
uint32_t cz_dataset_train_file(const cz_dataset *ds, size_t i);
uint32_t cz_dataset_val_file(const cz_dataset *ds, size_t i);
int cz_dataset_load_size(const cz_dataset *ds);

#endif
