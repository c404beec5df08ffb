/* dataset.c: listing, splitting, augmenting and prefetching training photos. See dataset.h
 * for the contract; this comment covers how it is done.
 *
 * Listing: a depth-first walk (scandir, entries sorted by name, depth <= 64) that carries the
 * real path of the directory being read, so every candidate's location is known without
 * trusting names. Symlinks go through realpath() and a prefix check against the real root
 * (followed only inside it). A hash set of (device, inode) remembers every folder and image
 * met: a link back up the tree is cut, and a file reached twice (symlink or hard link) is
 * listed once, under the first name met, so the max_files cap counts distinct files. The
 * result is sorted by relative path; files are later read through their real path.
 *
 * Prefetch ring: global stream position p maps to epoch p / n_train and slot p % ring. A
 * worker claims the next position only while p < consumed + ring, so slot p % ring is free;
 * it decodes outside the lock and publishes the slot (READY or SKIP) under the mutex. The
 * consumer takes positions strictly in order, so the served sequence does not depend on
 * thread timing. Epoch permutations are computed per index (a 4-round Feistel network over
 * the next even power of two, cycle-walked into [0, n)): nothing per epoch is stored.
 *
 * Decode -> load size: a JPEG is decoded at the smallest DCT scale of 1/8, 1/4, 1/2 that keeps
 * both sides >= 2 x load (libjpeg's scaled IDCT: a 4000x3000 photo decodes at 1/4 for S = 256;
 * see bench_loader for what it saves). cz_resize_rgb8 then stretches the 8-bit RGB photo to
 * load x load 8-bit RGB in one pass: cz_resize_plane's filter (area averaging beyond 2x
 * reduction, bilinear otherwise; image_geom.c), vertical taps first straight from the 8-bit rows,
 * in float. A PNG of any size, or a JPEG still large after 1/8, is area-averaged the same way
 * (each source row is read about once).
 *
 * Cache (cache_bytes > 0): the first time a file's photo is stretched, a copy of the 8-bit
 * load x load result is kept, while the bytes reserved stay within cache_bytes (reserved with an
 * atomic add before the copy; a file is cached once, by whichever worker publishes first with a
 * compare-and-swap). Later samples of the file, training or validation, start from that copy:
 * no read, no decode, no stretch, the same bytes as without the cache. Copies are immutable
 * and freed at cz_dataset_destroy; a file changed on disk after it was cached keeps its first
 * content for the dataset's life.
 *
 * Grayscale test: on a grid of at most ~64k pixels, a pixel is colourful when its channel
 * spread max - min exceeds 12 levels; fewer than 1% colourful pixels means gray (this keeps
 * JPEG noise on gray photos out and sepia or muted colour photos in).
 *
 * Threading: see dataset.h. Per-file state bytes and counters are C11 atomics; the ring is
 * guarded by one mutex and two condition variables.
 * Tested by tests/unit/test_dataset.c. */
#include "dataset.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "fileio.h"
#include "log.h"

#define MOD "dataset"
#define MAX_DEPTH 64
#define MAX_LOGGED_SKIPS 5
#define AB_SCALE 110.0f

enum { FILE_UNKNOWN = 0, FILE_OK = 1, FILE_BAD = 2, FILE_GRAY = 3 };
enum { SLOT_EMPTY = 0, SLOT_READY = 1, SLOT_SKIP = 2 };

typedef struct ds_file {
    char *rel;  /* relative path shown to people */
    char *real; /* resolved path that is read */
} ds_file;

typedef struct ds_slot {
    int state;
    uint64_t pos;
    float *A, *B;
    cz_sample_info info;
} ds_slot;

struct cz_dataset {
    cz_dataset_config cfg;
    int S, load, a_ch, b_ch, ring_n;
    ds_file *files;
    size_t nfiles;
    uint32_t *train, *val;
    size_t ntrain, nval;
    size_t non_image, links_refused;
    int truncated;
    _Atomic uint8_t *fstate;
    _Atomic(uint8_t *) *cache; /* per file: its stretched photo once cached, else NULL */
    atomic_size_t cache_used, cache_files;
    atomic_uint_least64_t cache_hits;
    atomic_size_t skipped_bad, skipped_gray;
    atomic_uint logged;
    atomic_uint_least64_t val_served;

    pthread_mutex_t mu;
    pthread_cond_t cv_ready, cv_space;
    ds_slot *slots;
    uint64_t next_claim, consumed;
    int stop;
    uint64_t served, batches, waits;
    int ready_at_req;
    pthread_t *threads;
    int nthreads;
};

/* ------------------------------------------------------------------ hashing */

static uint64_t mix64(uint64_t x) { /* splitmix64 finaliser */
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static uint64_t hash_str(const char *s) { /* FNV-1a, then mixed */
    uint64_t h = 0xcbf29ce484222325ULL;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 0x100000001b3ULL;
    return mix64(h);
}

/* Index i of a pseudo-random permutation of [0, n) keyed by `key`. */
static uint64_t perm_index(uint64_t i, uint64_t n, uint64_t key) {
    if (n <= 1) return 0;
    int bits = 64 - __builtin_clzll(n - 1);
    if (bits < 2) bits = 2;
    if (bits & 1) bits++;
    const int half = bits / 2;
    const uint64_t mask = (1ULL << half) - 1;
    uint64_t x = i;
    do {
        uint64_t l = x >> half, r = x & mask;
        for (uint64_t round = 0; round < 4; round++) {
            uint64_t f = mix64(r ^ key ^ (round * 0xd6e8feb86659fd93ULL)) & mask;
            uint64_t t = l ^ f;
            l = r;
            r = t;
        }
        x = (l << half) | r;
    } while (x >= n);
    return x;
}

static uint64_t epoch_key(uint64_t seed, uint64_t epoch) {
    return mix64(seed ^ mix64(epoch + 1));
}

/* ------------------------------------------------------------------ listing */

typedef struct node_id {
    dev_t dev;
    ino_t ino;
    int used;
} node_id;

typedef struct lister {
    const char *root_real;
    size_t root_len;
    const char *prefix; /* prepended to relative paths ("" or "val:") */
    ds_file *v;
    size_t n, cap, max;
    int truncated;
    size_t non_image, refused;
    node_id *ids; /* open-addressing set of the folders and files already met */
    size_t nids, idcap;
} lister;

static int has_image_ext(const char *name) {
    const char *dot = strrchr(name, '.');
    return dot && (!strcasecmp(dot, ".jpg") || !strcasecmp(dot, ".jpeg") || !strcasecmp(dot, ".png"));
}

static int inside_root(const lister *L, const char *real) {
    return strncmp(real, L->root_real, L->root_len) == 0 &&
           (real[L->root_len] == '/' || real[L->root_len] == 0 || L->root_len == 1);
}

static size_t id_slot(const node_id *t, size_t cap, dev_t dev, ino_t ino) {
    size_t i = mix64((uint64_t)dev * 0x9e3779b97f4a7c15ULL ^ (uint64_t)ino) & (cap - 1);
    while (t[i].used && !(t[i].dev == dev && t[i].ino == ino))
        i = (i + 1) & (cap - 1);
    return i;
}

/* Remembers a folder or file by (device, inode): 1 when new, 0 when met before, -1 no memory. */
static int mark_seen(lister *L, const struct stat *st) {
    if (2 * (L->nids + 1) > L->idcap) {
        size_t nc = L->idcap ? 2 * L->idcap : 1024;
        node_id *t = calloc(nc, sizeof *t);
        if (!t) return -1;
        for (size_t k = 0; k < L->idcap; k++)
            if (L->ids[k].used) t[id_slot(t, nc, L->ids[k].dev, L->ids[k].ino)] = L->ids[k];
        free(L->ids);
        L->ids = t;
        L->idcap = nc;
    }
    size_t i = id_slot(L->ids, L->idcap, st->st_dev, st->st_ino);
    if (L->ids[i].used) return 0;
    L->ids[i] = (node_id){st->st_dev, st->st_ino, 1};
    L->nids++;
    return 1;
}

static char *join(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    char *s = malloc(la + lb + 2);
    if (!s) return NULL;
    memcpy(s, a, la);
    if (la > 0 && a[la - 1] != '/') s[la++] = '/';
    memcpy(s + la, b, lb + 1);
    return s;
}

static cz_status add_file(lister *L, const char *rel, const char *real) {
    if (L->n == L->max) {
        L->truncated = 1;
        return CZ_OK;
    }
    if (L->n == L->cap) {
        size_t nc = L->cap ? 2 * L->cap : 256;
        ds_file *p = realloc(L->v, nc * sizeof *p);
        if (!p) return CZ_ERR_NOMEM;
        L->v = p;
        L->cap = nc;
    }
    char *r = join(L->prefix, rel), *q = strdup(real);
    if (!r || !q) {
        free(r);
        free(q);
        return CZ_ERR_NOMEM;
    }
    L->v[L->n++] = (ds_file){r, q};
    return CZ_OK;
}

static int visible(const struct dirent *e) {
    return e->d_name[0] != '.';
} /* ., .., hidden */
static int by_name(const struct dirent **a, const struct dirent **b) {
    return strcmp((*a)->d_name, (*b)->d_name);
}

/* Walks `dir_real` (a resolved path inside the root) whose relative name is `rel`. */
static cz_status walk(lister *L, const char *dir_real, const char *rel, int depth) {
    if (depth > MAX_DEPTH) {
        CZ_LOGW(MOD, "not descending below %s: deeper than %d levels", rel, MAX_DEPTH);
        return CZ_OK;
    }
    struct dirent **ents;
    int n = scandir(dir_real, &ents, visible, by_name);
    if (n < 0) {
        CZ_LOGW(MOD, "cannot read directory %s: %s", rel[0] ? rel : ".", strerror(errno));
        return CZ_OK; /* an unreadable subfolder is not fatal */
    }
    cz_status s = CZ_OK;
    for (int i = 0; i < n; i++) {
        const char *name = ents[i]->d_name;
        char *full = NULL, *rname = NULL, *target = NULL;
        if (s != CZ_OK || L->truncated) goto next;
        full = join(dir_real, name);
        rname = rel[0] ? join(rel, name) : strdup(name);
        if (!full || !rname) {
            s = CZ_ERR_NOMEM;
            goto next;
        }
        struct stat st;
        const char *path = full;
        if (lstat(full, &st) != 0) goto next;
        if (S_ISLNK(st.st_mode)) {
            target = realpath(full, NULL);
            if (!target || !inside_root(L, target) || stat(target, &st) != 0) {
                L->refused++;
                CZ_LOGD(MOD, "refusing link %s: %s", rname, target ? "leads outside the root" : "dangling");
                goto next;
            }
            path = target;
        }
        if (!S_ISDIR(st.st_mode) && !S_ISREG(st.st_mode)) goto next;
        if (S_ISREG(st.st_mode) && !has_image_ext(name)) {
            L->non_image++;
            goto next;
        }
        int m = mark_seen(L, &st);
        if (m < 0)
            s = CZ_ERR_NOMEM;
        else if (m == 0 && S_ISDIR(st.st_mode))
            L->refused += target != NULL; /* a loop */
        else if (m == 1)
            s = S_ISDIR(st.st_mode) ? walk(L, path, rname, depth + 1) : add_file(L, rname, path);
    next:
        free(target);
        free(full);
        free(rname);
        free(ents[i]);
    }
    free(ents);
    if (s == CZ_ERR_NOMEM) return cz_error_set(CZ_ERR_NOMEM, "dataset: out of memory listing %s", rel);
    return s;
}

static int cmp_rel(const void *a, const void *b) {
    return strcmp(((const ds_file *)a)->rel, ((const ds_file *)b)->rel);
}

static void free_files(ds_file *v, size_t n) {
    for (size_t i = 0; i < n; i++) {
        free(v[i].rel);
        free(v[i].real);
    }
    free(v);
}

/* Lists one directory tree into L: sorted by relative path, each file once (under the first
 * name the walk reached it by). */
static cz_status list_tree(const char *dir, const char *prefix, size_t max, lister *L, char **real_out) {
    memset(L, 0, sizeof *L);
    char *root = realpath(dir, NULL);
    if (!root)
        return cz_error_set(errno == ENOENT ? CZ_ERR_NOT_FOUND : CZ_ERR_IO, "dataset directory %s: %s", dir,
                            strerror(errno));
    struct stat st;
    if (stat(root, &st) != 0 || !S_ISDIR(st.st_mode)) {
        free(root);
        return cz_error_set(CZ_ERR_NOT_FOUND, "dataset directory %s: not a directory", dir);
    }
    L->root_real = root;
    L->root_len = strlen(root);
    L->prefix = prefix;
    L->max = max;
    cz_status s =
        mark_seen(L, &st) < 0 ? cz_error_set(CZ_ERR_NOMEM, "dataset: out of memory") : walk(L, root, "", 0);
    free(L->ids);
    L->ids = NULL;
    if (s != CZ_OK) {
        free_files(L->v, L->n);
        L->v = NULL;
        free(root);
        return s;
    }
    if (L->n > 1) qsort(L->v, L->n, sizeof *L->v, cmp_rel);
    *real_out = root;
    return CZ_OK;
}

/* ------------------------------------------------------------------ decoding */

typedef struct scratch {
    uint8_t *rs;  /* the photo stretched to load x load, 8-bit RGB interleaved */
    uint8_t *row; /* one mirrored sample row, 8-bit RGB interleaved (3 x S) */
    float *lab;   /* its L, a and b planes (3 x S) */
} scratch;

/* 1 when the per-thread buffers are allocated, 0 when out of memory. */
static int scratch_open(const cz_dataset *ds, scratch *sc) {
    memset(sc, 0, sizeof *sc);
    sc->rs = malloc(3 * (size_t)ds->load * ds->load);
    sc->row = malloc(3 * (size_t)ds->S);
    sc->lab = malloc(3 * (size_t)ds->S * sizeof(float));
    return sc->rs && sc->row && sc->lab;
}

static void scratch_close(scratch *sc) {
    free(sc->rs);
    free(sc->row);
    free(sc->lab);
    memset(sc, 0, sizeof *sc);
}

static void count_skip(cz_dataset *ds, uint32_t file, int kind, const char *why) {
    uint8_t cur = atomic_load(&ds->fstate[file]);
    while (cur < FILE_BAD)
        if (atomic_compare_exchange_weak(&ds->fstate[file], &cur, (uint8_t)kind)) {
            if (kind == FILE_GRAY)
                atomic_fetch_add(&ds->skipped_gray, 1);
            else
                atomic_fetch_add(&ds->skipped_bad, 1);
            if (atomic_fetch_add(&ds->logged, 1) < MAX_LOGGED_SKIPS)
                CZ_LOGW(MOD, "skipping %s: %s", ds->files[file].rel, why);
            return;
        }
}

int cz_dataset_image_is_gray(const cz_image *img) {
    if (img->channels == 1) return 1;
    size_t px = (size_t)img->width * img->height;
    int step = 1;
    while (px / ((size_t)step * step) > 65536)
        step++;
    size_t total = 0, colourful = 0;
    for (int y = 0; y < img->height; y += step) {
        const uint8_t *row = img->px + (size_t)y * img->width * 3;
        for (int x = 0; x < img->width; x += step) {
            const uint8_t *p = row + 3 * (size_t)x;
            int mx = p[0], mn = p[0];
            for (int k = 1; k < 3; k++) {
                if (p[k] > mx) mx = p[k];
                if (p[k] < mn) mn = p[k];
            }
            total++;
            colourful += mx - mn > 12;
        }
    }
    return colourful * 100 < total;
}

/* Stretches an RGB image to load x load 8-bit RGB in sc->rs. */
static cz_status to_load_size(const cz_image *img, int load, scratch *sc) {
    if (img->channels != 3)
        return cz_error_set(CZ_ERR_INVALID_ARG, "dataset: %d-channel image after the gray test", img->channels);
    return cz_resize_rgb8(img->px, img->width, img->height, sc->rs, load, load);
}

static inline float clampf(float v, float lo, float hi) {
    return v < lo ? lo : v > hi ? hi : v;
}

/* Keeps a copy of file's stretched photo `rs` when the cache has room (the bytes are reserved
 * first, so concurrent workers never pass cache_bytes together); a worker that loses the race
 * to publish the same file gives its copy back. */
static void cache_put(cz_dataset *ds, uint32_t file, const uint8_t *rs) {
    const size_t sz = 3 * (size_t)ds->load * ds->load;
    if (!ds->cache || atomic_load(&ds->cache[file])) return;
    if (atomic_fetch_add(&ds->cache_used, sz) + sz > ds->cfg.cache_bytes) {
        atomic_fetch_sub(&ds->cache_used, sz); /* full: this file decodes every time */
        return;
    }
    uint8_t *copy = malloc(sz), *none = NULL;
    if (copy) {
        memcpy(copy, rs, sz);
        if (atomic_compare_exchange_strong(&ds->cache[file], &none, copy)) {
            atomic_fetch_add(&ds->cache_files, 1);
            return;
        }
    }
    free(copy);
    atomic_fetch_sub(&ds->cache_used, sz);
}

/* Writes one S x S sample from the stretched image: window at (cx, cy), mirrored if flip. The
 * stretch already rounded to 8 bits, as the reference's PIL pipeline does, which lets the
 * conversion start from the 8-bit -> linear table (cz_srgb8_row_to_lab_f: float, a row at a
 * time). */
static void emit_sample(const cz_dataset *ds, scratch *sc, const uint8_t *rs, int cx, int cy, int flip, float *A,
                        float *B) {
    const int S = ds->S, load = ds->load;
    const size_t plane = (size_t)S * S;
    float *L = sc->lab, *a = L + S, *b = a + S;
    for (int y = 0; y < S; y++) {
        const uint8_t *row = rs + ((size_t)(cy + y) * load + (size_t)cx) * 3;
        if (flip) {
            for (int x = 0; x < S; x++) memcpy(sc->row + 3 * (size_t)x, row + 3 * (size_t)(S - 1 - x), 3);
            row = sc->row;
        }
        cz_srgb8_row_to_lab_f(row, (size_t)S, L, a, b);
        const size_t o = (size_t)y * S;
        if (ds->cfg.mode == CZ_COLOR_LAB) {
            for (int x = 0; x < S; x++) {
                A[o + x] = L[x] / 50.0f - 1.0f;
                B[o + x] = clampf(a[x] / AB_SCALE, -1.f, 1.f);
                B[plane + o + x] = clampf(b[x] / AB_SCALE, -1.f, 1.f);
            }
            continue;
        }
        for (int x = 0; x < S; x++) { /* rgb: the gray sRGB of L in, the colour out */
            float gl[3] = {L[x], 0.f, 0.f}, g[3];
            cz_lab_to_srgbf(gl, g);
            for (int c = 0; c < 3; c++) {
                A[c * plane + o + x] = g[0] * 2.0f - 1.0f;
                B[c * plane + o + x] = (float)row[3 * x + c] * (2.0f / 255.0f) - 1.0f;
            }
        }
    }
}

/* Produces the sample of `file`; returns 1 on success, 0 when the file is skipped. */
static int load_sample(cz_dataset *ds, uint32_t file, scratch *sc, int cx, int cy, int flip, float *A,
                       float *B) {
    if (atomic_load(&ds->fstate[file]) >= FILE_BAD) return 0;
    const uint8_t *cached = ds->cache ? atomic_load(&ds->cache[file]) : NULL;
    if (cached) { /* immutable once published: any number of workers read it at once */
        atomic_fetch_add(&ds->cache_hits, 1);
        emit_sample(ds, sc, cached, cx, cy, flip, A, B);
        return 1;
    }
    uint8_t *data = NULL;
    size_t len = 0;
    cz_image img = {0};
    cz_status s = cz_file_read(ds->files[file].real, ds->cfg.max_file_bytes, &data, &len);
    /* a JPEG much larger than load x load is decoded at a reduced DCT scale: a large photo then
     * costs a fraction of a full decode (the 2 x load floor keeps the last reduction an area
     * average of at least 2x2 pixels) */
    if (s == CZ_OK) s = cz_image_decode_reduced(data, len, &ds->cfg.limits, 2 * ds->load, &img, NULL);
    free(data);
    if (s != CZ_OK) {
        count_skip(ds, file, FILE_BAD, cz_error_detail());
        return 0;
    }
    if (cz_dataset_image_is_gray(&img)) {
        cz_image_free(&img);
        count_skip(ds, file, FILE_GRAY, "grayscale photo (no colour to learn)");
        return 0;
    }
    s = to_load_size(&img, ds->load, sc);
    cz_image_free(&img);
    if (s != CZ_OK) {
        CZ_LOGW(MOD, "%s: %s", ds->files[file].rel, cz_error_detail());
        return 0; /* out of memory: skip this time, the file itself may be fine */
    }
    uint8_t unk = FILE_UNKNOWN;
    atomic_compare_exchange_strong(&ds->fstate[file], &unk, (uint8_t)FILE_OK);
    cache_put(ds, file, sc->rs);
    emit_sample(ds, sc, sc->rs, cx, cy, flip, A, B);
    return 1;
}

/* ------------------------------------------------------------------ workers */

static void *worker_main(void *arg) {
    cz_dataset *ds = arg;
    scratch sc;
    const int have_scratch = scratch_open(ds, &sc);
    const uint64_t n = ds->ntrain;
    const int span = ds->load - ds->S + 1;
    for (;;) {
        pthread_mutex_lock(&ds->mu);
        while (!ds->stop && ds->next_claim >= ds->consumed + (uint64_t)ds->ring_n)
            pthread_cond_wait(&ds->cv_space, &ds->mu);
        if (ds->stop) {
            pthread_mutex_unlock(&ds->mu);
            break;
        }
        const uint64_t p = ds->next_claim++;
        pthread_mutex_unlock(&ds->mu);

        ds_slot *sl = &ds->slots[p % (uint64_t)ds->ring_n];
        const uint64_t epoch = p / n;
        const uint32_t file = ds->train[perm_index(p % n, n, epoch_key(ds->cfg.seed, epoch))];
        uint64_t r = mix64(epoch_key(ds->cfg.seed, epoch) ^ mix64(0x5eed0000ULL + file));
        cz_sample_info info = {file, (int64_t)epoch, (int)(r % (uint64_t)span),
                               (int)((r >> 20) % (uint64_t)span), ds->cfg.no_flip ? 0 : (int)((r >> 63) & 1)};
        int ok = have_scratch && load_sample(ds, file, &sc, info.crop_x, info.crop_y, info.flipped, sl->A, sl->B);

        pthread_mutex_lock(&ds->mu);
        sl->info = info;
        sl->pos = p;
        sl->state = ok ? SLOT_READY : SLOT_SKIP;
        if (p == ds->consumed) pthread_cond_signal(&ds->cv_ready);
        pthread_mutex_unlock(&ds->mu);
    }
    scratch_close(&sc);
    return NULL;
}

static int ready_locked(const cz_dataset *ds) {
    int k = 0;
    for (uint64_t p = ds->consumed; k < ds->ring_n; p++, k++) {
        const ds_slot *sl = &ds->slots[p % (uint64_t)ds->ring_n];
        if (sl->state == SLOT_EMPTY || sl->pos != p) break;
    }
    return k;
}

/* ------------------------------------------------------------------ public */

void cz_dataset_config_default(cz_dataset_config *c) {
    memset(c, 0, sizeof *c);
    c->val_fraction = 0.05;
    c->mode = CZ_COLOR_LAB;
    c->image_size = 256;
    c->batch_size = 1;
    c->workers = 2;
    c->max_files = 1000000;
    c->max_file_bytes = (size_t)64 << 20;
    cz_image_limits_default(&c->limits);
}

static void *batch_mem_alloc(const cz_batch_mem *m, size_t bytes) {
    return m->alloc ? m->alloc(m->ctx, bytes) : malloc(bytes);
}

static void batch_mem_release(const cz_batch_mem *m, void *p) {
    if (!p) return;
    if (m->release)
        m->release(m->ctx, p);
    else
        free(p);
}

cz_status cz_batch_alloc_in(cz_batch *b, int cap, int size, int a_ch, int b_ch, const cz_batch_mem *mem) {
    if (!b) return cz_error_set(CZ_ERR_INVALID_ARG, "cz_batch_alloc: NULL batch");
    memset(b, 0, sizeof *b);
    if (cap < 1 || size < 1 || a_ch < 1 || b_ch < 1)
        return cz_error_set(CZ_ERR_INVALID_ARG, "cz_batch_alloc: bad shape %d x %d x %d/%d", cap, size, a_ch,
                            b_ch);
    if (mem && (!mem->alloc) != (!mem->release))
        return cz_error_set(CZ_ERR_INVALID_ARG, "cz_batch_alloc: an allocator needs both alloc and release");
    if (mem) b->mem = *mem;
    const size_t plane = (size_t)size * size;
    b->A = batch_mem_alloc(&b->mem, (size_t)cap * a_ch * plane * sizeof(float));
    b->B = batch_mem_alloc(&b->mem, (size_t)cap * b_ch * plane * sizeof(float));
    b->info = calloc((size_t)cap, sizeof *b->info);
    if (!b->A || !b->B || !b->info) {
        cz_batch_free(b);
        return cz_error_set(CZ_ERR_NOMEM, "cannot allocate a batch of %d x %dx%d", cap, size, size);
    }
    b->cap = cap;
    b->size = size;
    b->a_ch = a_ch;
    b->b_ch = b_ch;
    return CZ_OK;
}

cz_status cz_batch_alloc(cz_batch *b, int cap, int size, int a_ch, int b_ch) {
    return cz_batch_alloc_in(b, cap, size, a_ch, b_ch, NULL);
}

void cz_batch_free(cz_batch *b) {
    if (!b) return;
    batch_mem_release(&b->mem, b->A);
    batch_mem_release(&b->mem, b->B);
    free(b->info);
    memset(b, 0, sizeof *b);
}

cz_status cz_dataset_batch_alloc_in(const cz_dataset *ds, cz_batch *b, const cz_batch_mem *mem) {
    if (!ds) return cz_error_set(CZ_ERR_INVALID_ARG, "cz_dataset_batch_alloc: NULL dataset");
    return cz_batch_alloc_in(b, ds->cfg.batch_size, ds->S, ds->a_ch, ds->b_ch, mem);
}

cz_status cz_dataset_batch_alloc(const cz_dataset *ds, cz_batch *b) { return cz_dataset_batch_alloc_in(ds, b, NULL); }

#define REQUIRE(cond, ...)                                                        \
    do {                                                                          \
        if (!(cond)) return cz_error_set(CZ_ERR_CONFIG, "dataset: " __VA_ARGS__); \
    } while (0)

static cz_status check_config(const cz_dataset_config *c) {
    REQUIRE(c->root && c->root[0], "root directory not set");
    REQUIRE(c->mode == CZ_COLOR_LAB || c->mode == CZ_COLOR_RGB, "mode %d unknown", (int)c->mode);
    REQUIRE(c->image_size >= 8 && c->image_size <= 4096, "image_size %d outside 8..4096", c->image_size);
    REQUIRE(!c->load_size || (c->load_size >= c->image_size && c->load_size <= 8192),
            "load_size %d outside %d..8192", c->load_size, c->image_size);
    REQUIRE(c->batch_size >= 1 && c->batch_size <= 4096, "batch_size %d outside 1..4096", c->batch_size);
    REQUIRE(c->workers >= 1 && c->workers <= 64, "workers %d outside 1..64", c->workers);
    REQUIRE(!c->ring || (c->ring >= c->batch_size && c->ring <= 65536), "ring %d outside %d..65536", c->ring,
            c->batch_size);
    REQUIRE(c->val_fraction >= 0.0 && c->val_fraction <= 0.5, "val_fraction %g outside 0..0.5",
            c->val_fraction);
    REQUIRE(c->max_files >= 1 && c->max_files <= UINT32_MAX / 2, "max_files %zu out of range", c->max_files);
    return CZ_OK;
}

/* Builds ds->files / train / val from the listings. */
static cz_status build_split(cz_dataset *ds, lister *tr, lister *va, const char *val_real) {
    size_t total = tr->n + (va ? va->n : 0);
    ds->files = calloc(total ? total : 1, sizeof *ds->files);
    ds->train = calloc(total ? total : 1, sizeof *ds->train);
    ds->val = calloc(total ? total : 1, sizeof *ds->val);
    if (!ds->files || !ds->train || !ds->val) return cz_error_set(CZ_ERR_NOMEM, "dataset: out of memory");
    size_t vlen = val_real ? strlen(val_real) : 0;
    for (size_t i = 0; i < tr->n; i++) {
        ds_file f = tr->v[i];
        tr->v[i] = (ds_file){0};
        if (val_real && strncmp(f.real, val_real, vlen) == 0 && f.real[vlen] == '/') {
            free(f.rel); /* inside the separate validation folder: never train on it */
            free(f.real);
            continue;
        }
        ds->files[ds->nfiles++] = f;
    }
    if (va) {
        for (size_t i = 0; i < ds->nfiles; i++)
            ds->train[ds->ntrain++] = (uint32_t)i;
        for (size_t i = 0; i < va->n; i++) {
            ds->val[ds->nval++] = (uint32_t)ds->nfiles;
            ds->files[ds->nfiles++] = va->v[i];
            va->v[i] = (ds_file){0};
        }
        return CZ_OK;
    }
    const double frac = ds->cfg.val_fraction;
    size_t best = SIZE_MAX;
    double best_u = 2.0;
    for (size_t i = 0; i < ds->nfiles; i++) {
        double u = (double)(hash_str(ds->files[i].rel) >> 11) * 0x1.0p-53;
        if (u < frac)
            ds->val[ds->nval++] = (uint32_t)i;
        else
            ds->train[ds->ntrain++] = (uint32_t)i;
        if (u < best_u) best_u = u, best = i;
    }
    if (frac > 0 && ds->nval == 0 && ds->nfiles >= 2) { /* move the lowest-hash file over */
        size_t w = 0;
        for (size_t i = 0; i < ds->ntrain; i++)
            if (ds->train[i] != best) ds->train[w++] = ds->train[i];
        ds->ntrain = w;
        ds->val[ds->nval++] = (uint32_t)best;
    }
    return CZ_OK;
}

cz_status cz_dataset_open(const cz_dataset_config *cfg, cz_dataset **out) {
    if (!cfg || !out) return cz_error_set(CZ_ERR_INVALID_ARG, "cz_dataset_open: NULL argument");
    *out = NULL;
    CZ_TRY(check_config(cfg));
    cz_dataset *ds = calloc(1, sizeof *ds);
    if (!ds) return cz_error_set(CZ_ERR_NOMEM, "dataset: out of memory");
    ds->cfg = *cfg;
    ds->cfg.root = ds->cfg.val_dir = NULL; /* not kept: the caller owns those strings */
    ds->S = cfg->image_size;
    ds->load = cfg->load_size ? cfg->load_size : (cfg->image_size * 286 + 128) / 256;
    ds->a_ch = cfg->mode == CZ_COLOR_LAB ? 1 : 3;
    ds->b_ch = cfg->mode == CZ_COLOR_LAB ? 2 : 3;
    ds->ring_n = cfg->ring ? cfg->ring : (4 * cfg->batch_size > 8 ? 4 * cfg->batch_size : 8);
    pthread_mutex_init(&ds->mu, NULL);
    pthread_cond_init(&ds->cv_ready, NULL);
    pthread_cond_init(&ds->cv_space, NULL);

    lister tr, va;
    char *tr_real = NULL, *va_real = NULL;
    memset(&va, 0, sizeof va);
    cz_status s = list_tree(cfg->root, "", cfg->max_files, &tr, &tr_real);
    if (s == CZ_OK && cfg->val_dir) s = list_tree(cfg->val_dir, "val:", cfg->max_files, &va, &va_real);
    if (s == CZ_OK) {
        ds->non_image = tr.non_image + va.non_image;
        ds->links_refused = tr.refused + va.refused;
        ds->truncated = tr.truncated || va.truncated;
        s = build_split(ds, &tr, cfg->val_dir ? &va : NULL, va_real);
    }
    free_files(tr.v, tr.n);
    free_files(va.v, va.n);
    free(tr_real);
    free(va_real);
    if (s == CZ_OK && ds->ntrain == 0)
        s = cz_error_set(CZ_ERR_NOT_FOUND, "dataset %s: no .jpg/.jpeg/.png file for training", cfg->root);
    if (s == CZ_OK) {
        ds->fstate = calloc(ds->nfiles, sizeof *ds->fstate);
        ds->slots = calloc((size_t)ds->ring_n, sizeof *ds->slots);
        ds->threads = calloc((size_t)cfg->workers, sizeof *ds->threads);
        if (cfg->cache_bytes) {
            ds->cache = malloc(ds->nfiles * sizeof *ds->cache);
            for (size_t i = 0; ds->cache && i < ds->nfiles; i++) atomic_init(&ds->cache[i], NULL);
        }
        if (!ds->fstate || !ds->slots || !ds->threads || (cfg->cache_bytes && !ds->cache))
            s = cz_error_set(CZ_ERR_NOMEM, "dataset: out of memory");
        const size_t plane = (size_t)ds->S * ds->S;
        for (int i = 0; s == CZ_OK && i < ds->ring_n; i++) {
            ds->slots[i].pos = UINT64_MAX;
            ds->slots[i].A = malloc((size_t)ds->a_ch * plane * sizeof(float));
            ds->slots[i].B = malloc((size_t)ds->b_ch * plane * sizeof(float));
            if (!ds->slots[i].A || !ds->slots[i].B)
                s = cz_error_set(CZ_ERR_NOMEM, "dataset: cannot allocate a ring of %d samples", ds->ring_n);
        }
    }
    for (int i = 0; s == CZ_OK && i < cfg->workers; i++) {
        int e = pthread_create(&ds->threads[i], NULL, worker_main, ds);
        if (e)
            s = cz_error_set(CZ_ERR_INTERNAL, "dataset: cannot start a worker: %s", strerror(e));
        else
            ds->nthreads++;
    }
    if (s != CZ_OK) {
        cz_dataset_destroy(ds);
        return s;
    }
    if (ds->truncated) CZ_LOGW(MOD, "%s: listing capped at max_files = %zu", cfg->root, cfg->max_files);
    CZ_LOGI(MOD, "%s: %zu images (%zu train, %zu val), %zu other files, %zu links refused, S %d, load %d",
            cfg->root, ds->nfiles, ds->ntrain, ds->nval, ds->non_image, ds->links_refused, ds->S, ds->load);
    *out = ds;
    return CZ_OK;
}

void cz_dataset_destroy(cz_dataset *ds) {
    if (!ds) return;
    pthread_mutex_lock(&ds->mu);
    ds->stop = 1;
    pthread_cond_broadcast(&ds->cv_space);
    pthread_cond_broadcast(&ds->cv_ready);
    pthread_mutex_unlock(&ds->mu);
    for (int i = 0; i < ds->nthreads; i++)
        pthread_join(ds->threads[i], NULL);
    free(ds->threads);
    if (ds->slots)
        for (int i = 0; i < ds->ring_n; i++) {
            free(ds->slots[i].A);
            free(ds->slots[i].B);
        }
    free(ds->slots);
    free_files(ds->files, ds->nfiles);
    free(ds->train);
    free(ds->val);
    free((void *)ds->fstate);
    if (ds->cache)
        for (size_t i = 0; i < ds->nfiles; i++) free(atomic_load(&ds->cache[i]));
    free((void *)ds->cache);
    pthread_cond_destroy(&ds->cv_ready);
    pthread_cond_destroy(&ds->cv_space);
    pthread_mutex_destroy(&ds->mu);
    free(ds);
}

cz_status cz_dataset_next_batch(cz_dataset *ds, cz_batch *b) {
    if (!ds || !b || !b->A) return cz_error_set(CZ_ERR_INVALID_ARG, "cz_dataset_next_batch: NULL argument");
    if (b->cap < ds->cfg.batch_size || b->size != ds->S || b->a_ch != ds->a_ch || b->b_ch != ds->b_ch)
        return cz_error_set(CZ_ERR_SHAPE, "cz_dataset_next_batch: batch not allocated for this dataset");
    const size_t asz = (size_t)ds->a_ch * ds->S * ds->S, bsz = (size_t)ds->b_ch * ds->S * ds->S;
    b->n = 0;
    uint64_t skip_run = 0;
    pthread_mutex_lock(&ds->mu);
    ds->ready_at_req = ready_locked(ds);
    pthread_mutex_unlock(&ds->mu);
    while (b->n < ds->cfg.batch_size) {
        pthread_mutex_lock(&ds->mu);
        ds_slot *sl = &ds->slots[ds->consumed % (uint64_t)ds->ring_n];
        int waited = 0;
        while (!ds->stop && (sl->state == SLOT_EMPTY || sl->pos != ds->consumed)) {
            waited = 1;
            pthread_cond_wait(&ds->cv_ready, &ds->mu);
        }
        ds->waits += (uint64_t)waited;
        if (ds->stop) {
            pthread_mutex_unlock(&ds->mu);
            return cz_error_set(CZ_ERR_SHUTTING_DOWN, "dataset is shutting down");
        }
        pthread_mutex_unlock(&ds->mu);
        /* The slot stays ours until `consumed` moves past it. */
        const int ready = sl->state == SLOT_READY;
        if (ready) {
            memcpy(b->A + (size_t)b->n * asz, sl->A, asz * sizeof(float));
            memcpy(b->B + (size_t)b->n * bsz, sl->B, bsz * sizeof(float));
            b->info[b->n++] = sl->info;
        }
        pthread_mutex_lock(&ds->mu);
        sl->state = SLOT_EMPTY;
        ds->consumed++;
        ds->served += (uint64_t)ready;
        pthread_cond_signal(&ds->cv_space);
        pthread_mutex_unlock(&ds->mu);
        /* 2n consecutive positions always cover one whole epoch */
        skip_run = ready ? 0 : skip_run + 1;
        if (skip_run >= 2 * (uint64_t)ds->ntrain)
            return cz_error_set(CZ_ERR_NOT_FOUND,
                                "dataset: no usable image in the training split (%zu files: %zu unreadable, "
                                "%zu grayscale)",
                                ds->ntrain, atomic_load(&ds->skipped_bad), atomic_load(&ds->skipped_gray));
    }
    pthread_mutex_lock(&ds->mu);
    ds->batches++;
    pthread_mutex_unlock(&ds->mu);
    return CZ_OK;
}

cz_status cz_dataset_val_batch(cz_dataset *ds, size_t *cursor, cz_batch *b) {
    if (!ds || !cursor || !b || !b->A)
        return cz_error_set(CZ_ERR_INVALID_ARG, "cz_dataset_val_batch: NULL argument");
    if (b->size != ds->S || b->a_ch != ds->a_ch || b->b_ch != ds->b_ch)
        return cz_error_set(CZ_ERR_SHAPE, "cz_dataset_val_batch: batch not allocated for this dataset");
    const size_t asz = (size_t)ds->a_ch * ds->S * ds->S, bsz = (size_t)ds->b_ch * ds->S * ds->S;
    scratch sc;
    if (!scratch_open(ds, &sc)) {
        scratch_close(&sc);
        return cz_error_set(CZ_ERR_NOMEM, "dataset: out of memory");
    }
    const int c = (ds->load - ds->S) / 2;
    b->n = 0;
    while (b->n < b->cap && *cursor < ds->nval) {
        uint32_t file = ds->val[(*cursor)++];
        if (!load_sample(ds, file, &sc, c, c, 0, b->A + (size_t)b->n * asz, b->B + (size_t)b->n * bsz))
            continue;
        b->info[b->n++] = (cz_sample_info){file, -1, c, c, 0};
        atomic_fetch_add(&ds->val_served, 1);
    }
    scratch_close(&sc);
    return CZ_OK;
}

void cz_dataset_get_stats(cz_dataset *ds, cz_dataset_stats *st) {
    memset(st, 0, sizeof *st);
    if (!ds) return;
    st->files_found = ds->nfiles;
    st->train_files = ds->ntrain;
    st->val_files = ds->nval;
    st->non_image = ds->non_image;
    st->links_refused = ds->links_refused;
    st->truncated = ds->truncated;
    st->skipped_unreadable = atomic_load(&ds->skipped_bad);
    st->skipped_gray = atomic_load(&ds->skipped_gray);
    st->val_served = atomic_load(&ds->val_served);
    st->cached_files = atomic_load(&ds->cache_files);
    st->cache_bytes = atomic_load(&ds->cache_used);
    st->cache_hits = atomic_load(&ds->cache_hits);
    pthread_mutex_lock(&ds->mu);
    st->samples_served = ds->served;
    st->batches = ds->batches;
    st->consumer_waits = ds->waits;
    st->ring_capacity = ds->ring_n;
    st->ring_ready = ready_locked(ds);
    st->ready_at_last_request = ds->ready_at_req;
    st->epoch = (int64_t)(ds->consumed / ds->ntrain);
    pthread_mutex_unlock(&ds->mu);
}

const char *cz_dataset_file_path(const cz_dataset *ds, uint32_t index) {
    return ds && index < ds->nfiles ? ds->files[index].rel : NULL;
}
size_t cz_dataset_train_count(const cz_dataset *ds) {
    return ds ? ds->ntrain : 0;
}
size_t cz_dataset_val_count(const cz_dataset *ds) {
    return ds ? ds->nval : 0;
}
uint32_t cz_dataset_train_file(const cz_dataset *ds, size_t i) {
    return ds && i < ds->ntrain ? ds->train[i] : UINT32_MAX;
}
uint32_t cz_dataset_val_file(const cz_dataset *ds, size_t i) {
    return ds && i < ds->nval ? ds->val[i] : UINT32_MAX;
}
int cz_dataset_load_size(const cz_dataset *ds) {
    return ds ? ds->load : 0;
}
