/* config.c: table-driven configuration: defaults, JSON file, environment, flags.
 * See config.h. Tested by tests/unit/test_config.c. */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "log.h"

typedef enum { T_INT, T_I64, T_STR } key_type;

typedef struct {
    const char *key;
    key_type type;
    size_t off;
    size_t cap; /* strings: buffer size */
    int64_t min, max;
    const char *def;
    const char *help;
} key_row;

#define F(field) offsetof(cz_config, field)
#define SZ(field) sizeof(((cz_config *)0)->field)

static const key_row k_keys[] = {
    {"model.path", T_STR, F(model_path), SZ(model_path), 0, 0, "models/colorize-default.safetensors",
     "generator weights (safetensors)"},
    {"model.backend", T_STR, F(backend), SZ(backend), 0, 0, "auto", "auto | cuda | dnnl | ref"},
    {"model.precision", T_STR, F(precision), SZ(precision), 0, 0, "fp32", "fp32 | bf16 | fp16 (backend permitting)"},
    {"model.threads", T_INT, F(threads), 0, 0, 1024, "0", "CPU threads for the backend (0 = all cores)"},
    {"model.max_batch", T_INT, F(max_batch), 0, 1, 1024, "8", "images per forward pass"},
    {"image.max_pixels", T_I64, F(max_pixels), 0, 1, 1000000000, "40000000",
     "largest width*height accepted, checked from the header before decoding"},
    {"image.max_dimension", T_INT, F(max_dimension), 0, 1, 65535, "65535", "largest width or height accepted"},
    {"image.max_jpeg_scans", T_INT, F(max_jpeg_scans), 0, 1, 1000, "64", "most scans a progressive JPEG may have"},
    {"image.max_input_bytes", T_I64, F(max_input_bytes), 0, 1, (int64_t)1 << 32, "52428800",
     "largest encoded input file / upload in bytes"},
    {"image.render", T_INT, F(render), 0, 32, 4096, "256",
     "long side of the image the network sees (a multiple of 2^depth, 256 for the default model)"},
    {"image.jpeg_quality", T_INT, F(jpeg_quality), 0, 1, 100, "90", "quality of JPEG output"},
    {"image.jpeg_optimize", T_INT, F(jpeg_optimize), 0, 0, 1, "0",
     "1: Huffman tables per image (8-10% smaller JPEGs, encoding about 2.6x slower)"},
    {"server.listen", T_STR, F(listen), SZ(listen), 0, 0, "0.0.0.0:8080", "ADDR:PORT to listen on (port 0: ephemeral)"},
    {"server.http_threads", T_INT, F(http_threads), 0, 0, 256, "0",
     "HTTP worker threads (decode/encode run there); 0 = auto: one per online CPU, 4..64"},
    {"server.max_connections", T_INT, F(max_connections), 0, 1, 100000, "256", "open connections, at most"},
    {"server.max_connections_per_ip", T_INT, F(max_connections_per_ip), 0, 1, 100000, "64",
     "open connections per client address, at most"},
    {"server.connection_timeout_s", T_INT, F(connection_timeout_s), 0, 1, 3600, "30",
     "a connection idle (or trickling) this long is closed"},
    {"server.min_body_rate", T_INT, F(min_body_rate), 0, 1, 1 << 30, "65536",
     "bytes/s a request body must average once connection_timeout_s has passed"},
    {"server.connection_memory", T_INT, F(connection_memory), 0, 16384, 64 << 20, "262144",
     "bytes of header and read buffer per connection"},
    {"server.max_body_bytes", T_I64, F(max_body_bytes), 0, 1024, (int64_t)1 << 32, "52428800",
     "request body limit in bytes (413 above it)"},
    {"server.request_deadline_ms", T_INT, F(request_deadline_ms), 0, 100, 3600000, "30000",
     "budget of one request; work past it is dropped before inference (504)"},
    {"server.max_queue", T_INT, F(max_queue), 0, 1, 100000, "64", "inference jobs waiting, at most (503 above)"},
    {"server.queue_high_water", T_INT, F(queue_high_water), 0, 1, 100000, "48", "/readyz fails at this queue depth"},
    {"server.max_wait_us", T_INT, F(max_wait_us), 0, -1, 10000000, "-1",
     "batching window: how long a queued image waits for others of its size (-1: 200 on cuda, 2000 on CPU)"},
    {"server.max_render", T_INT, F(max_render), 0, 256, 4096, "1024", "largest render a request may ask for"},
    {"server.plan_renders", T_STR, F(plan_renders), SZ(plan_renders), 0, 0, "auto",
     "more render sizes (comma-separated, e.g. 512,1024; empty: none) whose square network size is planned "
     "for model.max_batch images and warmed up at start, besides image.render; each at most server.max_render. "
     "auto: on a GPU every render a request may ask for (multiples of 256 up to server.max_render, at most 6), "
     "none on a CPU backend"},
    {"server.plan_shapes", T_INT, F(plan_shapes), 0, 0, 56, "24",
     "network shapes planned at start, in all: the square of image.render and of each server.plan_renders size "
     "always, then their other aspect ratios (render x k*2^depth and k*2^depth x render, nearest the square first) "
     "while fewer than this many are planned; where forward passes are recorded (cuda) each is also warmed up at "
     "its padded batch sizes. They share one set of activation memory, sized for the largest. 0: the squares only"},
    {"server.pinned_mb", T_INT, F(pinned_mb), 0, 0, 1 << 20, "512",
     "page-locked host memory (MiB) for the jobs the GPU finishes (cuda, lab models): their full-resolution L "
     "goes up and their RGB comes back by DMA, and the CPU neither upsamples nor converts them (7 bytes per "
     "source pixel while a job is queued); a job that finds none free is finished on the CPU; 0: the CPU "
     "finishes every job"},
    {"server.full_batches", T_INT, F(full_batches), 0, -1, 1, "-1",
     "1: every forward pass runs model.max_batch images, however few are queued, so that an image's output is "
     "the same bits alone or in any batch where the backend's arithmetic depends on the batch size (cuDNN in "
     "bf16 does); 0: a batch runs at its own size (padded to the next power of two where passes are recorded); "
     "-1: 1 on cuda, 0 on CPU backends"},
    {"server.drain_timeout_s", T_INT, F(drain_timeout_s), 0, 0, 3600, "20",
     "on SIGTERM, how long in-flight requests get to finish"},
    {"server.max_json_bytes", T_INT, F(max_json_bytes), 0, 64, 1 << 24, "65536",
     "largest JSON request body of the admin API (413 above it)"},
    {"admin.token", T_STR, F(admin_token), SZ(admin_token), 0, 0, "",
     "Bearer token of the admin API (/train, POST /model); empty with no token_file: admin API off (403)"},
    {"admin.token_file", T_STR, F(admin_token_file), SZ(admin_token_file), 0, 0, "",
     "file whose first line is the admin token (read at start)"},
    {"train.data_root", T_STR, F(train_data_root), SZ(train_data_root), 0, 0, "",
     "directory holding the datasets jobs may train on (empty: training off)"},
    {"train.state_dir", T_STR, F(train_state_dir), SZ(train_state_dir), 0, 0, "state",
     "job records, logs, samples, checkpoints and the active-model record"},
    {"train.max_jobs", T_INT, F(train_max_jobs), 0, 1, 10000, "8", "queued + running training jobs, at most (429 above)"},
    {"train.max_steps", T_INT, F(train_max_steps), 0, 1, 100000000, "1000000", "largest `steps` a job may ask for"},
    {"train.max_batch", T_INT, F(train_max_batch), 0, 1, 1024, "16", "largest `batch_size` a job may ask for"},
    {"train.max_image_size", T_INT, F(train_max_image_size), 0, 64, 4096, "512",
     "largest `image_size` a job may ask for"},
    {"train.keep_checkpoints", T_INT, F(train_keep_checkpoints), 0, 0, 1000, "5",
     "checkpoints a job keeps by default (newest N plus the best; 0 = all)"},
    {"train.workers", T_INT, F(train_workers), 0, 0, 64, "0",
     "image decode threads of a running job; 0 = auto: on a GPU one per online CPU less two (2..16), on a CPU "
     "backend 2"},
    {"train.cache_mb", T_INT, F(train_cache_mb), 0, 0, 1 << 20, "1024",
     "memory (MiB) a running job keeps its photos in, stretched to the load size (about 245 KB each at "
     "image_size 256), so that later epochs skip reading and decoding them; 0 = decode every time"},
    {"train.keep_jobs", T_INT, F(train_keep_jobs), 0, 0, 100000, "100",
     "finished jobs kept on disk, with their checkpoints and samples (0 = all); older ones are deleted"},
    {"train.idle_grace_ms", T_INT, F(train_idle_grace_ms), 0, 0, 60000, "100",
     "training steps start only this long after the last inference batch (serving keeps the device under load)"},
    {"log.level", T_STR, F(log_level), SZ(log_level), 0, 0, "info", "debug | info | warn | error | off"},
};
#define NKEYS (sizeof k_keys / sizeof k_keys[0])

static const key_row *find_key(const char *key) {
    for (size_t i = 0; i < NKEYS; i++)
        if (!strcmp(k_keys[i].key, key)) return &k_keys[i];
    return NULL;
}

static cz_status set_row(cz_config *c, const key_row *r, const char *value, const char *origin) {
    char *base = (char *)c + r->off;
    if (r->type == T_STR) {
        if (strlen(value) >= r->cap)
            return cz_error_set(CZ_ERR_CONFIG, "%s: %s is longer than %zu characters", origin, r->key, r->cap - 1);
        memcpy(base, value, strlen(value) + 1);
        return CZ_OK;
    }
    char *end;
    errno = 0;
    long long v = strtoll(value, &end, 10);
    while (end && isspace((unsigned char)*end)) end++;
    if (errno || end == value || *end)
        return cz_error_set(CZ_ERR_CONFIG, "%s: %s = '%s' is not an integer", origin, r->key, value);
    if (v < r->min || v > r->max)
        return cz_error_set(CZ_ERR_CONFIG, "%s: %s = %lld is out of range %lld..%lld", origin, r->key, v,
                            (long long)r->min, (long long)r->max);
    if (r->type == T_INT)
        *(int *)base = (int)v;
    else
        *(int64_t *)base = (int64_t)v;
    return CZ_OK;
}

void cz_config_defaults(cz_config *c) {
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < NKEYS; i++) {
        cz_status s = set_row(c, &k_keys[i], k_keys[i].def, "defaults");
        (void)s; /* defaults are within their own ranges (tested) */
    }
}

cz_status cz_config_set(cz_config *c, const char *key, const char *value) {
    const key_row *r = find_key(key);
    if (!r) return cz_error_set(CZ_ERR_CONFIG, "unknown configuration key '%s'", key);
    return set_row(c, r, value, "setting");
}

static cz_status apply_json(cz_config *c, json_t *obj, const char *prefix, const char *origin) {
    const char *k;
    json_t *v;
    json_object_foreach(obj, k, v) {
        char key[128];
        snprintf(key, sizeof key, "%s%s%s", prefix, *prefix ? "." : "", k);
        if (json_is_object(v)) {
            CZ_TRY(apply_json(c, v, key, origin));
            continue;
        }
        const key_row *r = find_key(key);
        if (!r) return cz_error_set(CZ_ERR_CONFIG, "%s: unknown key '%s'", origin, key);
        char buf[CZ_CFG_STR];
        if (r->type == T_STR) {
            if (!json_is_string(v)) return cz_error_set(CZ_ERR_CONFIG, "%s: %s must be a string", origin, key);
            CZ_TRY(set_row(c, r, json_string_value(v), origin));
        } else {
            if (!json_is_integer(v)) return cz_error_set(CZ_ERR_CONFIG, "%s: %s must be an integer", origin, key);
            snprintf(buf, sizeof buf, "%lld", (long long)json_integer_value(v));
            CZ_TRY(set_row(c, r, buf, origin));
        }
    }
    return CZ_OK;
}

cz_status cz_config_load_json(cz_config *c, const char *text, const char *origin) {
    json_error_t err;
    json_t *root = json_loads(text, JSON_REJECT_DUPLICATES, &err);
    if (!root)
        return cz_error_set(CZ_ERR_CONFIG, "%s:%d:%d: %s", origin, err.line, err.column, err.text);
    cz_status s = json_is_object(root) ? apply_json(c, root, "", origin)
                                       : cz_error_set(CZ_ERR_CONFIG, "%s: top level must be an object", origin);
    json_decref(root);
    return s;
}

cz_status cz_config_load_file(cz_config *c, const char *path) {
    json_error_t err;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &err);
    if (!root) return cz_error_set(CZ_ERR_CONFIG, "%s:%d:%d: %s", path, err.line, err.column, err.text);
    cz_status s = json_is_object(root) ? apply_json(c, root, "", path)
                                       : cz_error_set(CZ_ERR_CONFIG, "%s: top level must be an object", path);
    json_decref(root);
    return s;
}

cz_status cz_config_load_env(cz_config *c, char *const *envp) {
    for (; envp && *envp; envp++) {
        const char *e = *envp;
        if (strncmp(e, "COLORIZE_", 9)) continue;
        const char *eq = strchr(e, '=');
        if (!eq) continue;
        char name[128];
        size_t n = (size_t)(eq - e) - 9;
        if (n >= sizeof name) continue;
        for (size_t i = 0; i < n; i++) name[i] = (char)tolower((unsigned char)e[9 + i]);
        name[n] = '\0';
        if (!strcmp(name, "config")) continue;
        /* the cuda backend's own switches (COLORIZE_CUDA_DEVICE, COLORIZE_CUDA_TF32, ...,
         * COLORIZE_CUDNN_MAX_ELEMS: kernels/backend_cuda.c and cudnn_ops.c read them) are not
         * configuration keys; no configuration section is named cuda or cudnn */
        if (!strncmp(name, "cuda_", 5) || !strncmp(name, "cudnn_", 6)) continue;
        /* map NAME_WITH_UNDERSCORES to a key: the first '_' separates the section */
        const key_row *r = NULL;
        for (size_t i = 0; i < NKEYS && !r; i++) {
            char flat[128];
            snprintf(flat, sizeof flat, "%s", k_keys[i].key);
            for (char *p = flat; *p; p++)
                if (*p == '.') *p = '_';
            if (!strcmp(flat, name)) r = &k_keys[i];
        }
        char origin[160];
        snprintf(origin, sizeof origin, "environment %.*s", (int)(eq - e), e);
        if (!r) return cz_error_set(CZ_ERR_CONFIG, "%s: no such configuration key", origin);
        CZ_TRY(set_row(c, r, eq + 1, origin));
    }
    return CZ_OK;
}

static int plan_renders_auto(const cz_config *c) {
    const char *p = c->plan_renders;
    while (*p == ' ') p++;
    return !strcmp(p, "auto");
}

/* Parses a server.plan_renders list into out[0..cap) (cap may be 0: count only); -1 with the
 * error set when malformed. "auto" is resolved by cz_config_plan_renders. */
static int parse_plan_renders(const cz_config *c, int *out, int cap) {
    if (plan_renders_auto(c)) return 0;
    int n = 0;
    const char *p = c->plan_renders;
    while (*p == ' ') p++;
    while (*p) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 32 || v > c->max_render) {
            cz_error_set(CZ_ERR_CONFIG, "server.plan_renders = '%s': expected comma-separated renders in 32..%d",
                         c->plan_renders, c->max_render);
            return -1;
        }
        if (n >= CZ_CFG_MAX_PLAN_RENDERS) {
            cz_error_set(CZ_ERR_CONFIG, "server.plan_renders = '%s': at most %d renders", c->plan_renders,
                         CZ_CFG_MAX_PLAN_RENDERS);
            return -1;
        }
        if (n < cap) out[n] = (int)v;
        n++;
        p = end;
        while (*p == ' ') p++;
        if (*p == ',') {
            p++;
            while (*p == ' ') p++;
            if (!*p) break;
        } else if (*p) {
            cz_error_set(CZ_ERR_CONFIG, "server.plan_renders = '%s': expected comma-separated renders in 32..%d",
                         c->plan_renders, c->max_render);
            return -1;
        }
    }
    return n;
}

int cz_config_full_batches(const cz_config *c, int device) {
    if (c->full_batches >= 0) return c->full_batches;
    return device ? 1 : 0;
}

int cz_config_http_threads(const cz_config *c) {
    if (c->http_threads > 0) return c->http_threads;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 4 ? 4 : n > 64 ? 64 : (int)n;
}

int cz_config_max_wait_us(const cz_config *c, int device) {
    if (c->max_wait_us >= 0) return c->max_wait_us;
    return device ? 200 : 2000;
}

int cz_config_plan_renders(const cz_config *c, int device, int multiple, int *out, int cap, int *truncated) {
    *truncated = 0;
    if (!plan_renders_auto(c)) {
        int n = parse_plan_renders(c, out, cap);
        return n < 0 ? 0 : n < cap ? n : cap;
    }
    int n = 0;
    if (!device || multiple < 1) return 0;
    for (int r = CZ_RENDER_STEP; r <= c->max_render; r += CZ_RENDER_STEP) {
        if (r == c->render || r % multiple) continue; /* planned already / not a render of this model */
        if (n == cap) {
            *truncated = 1;
            break;
        }
        out[n++] = r;
    }
    return n;
}

cz_status cz_config_validate(const cz_config *c) {
    static const char *backends[] = {"auto", "cuda", "dnnl", "ref"};
    int ok = 0;
    for (size_t i = 0; i < 4; i++) ok |= !strcmp(c->backend, backends[i]);
    if (!ok) return cz_error_set(CZ_ERR_CONFIG, "model.backend = '%s': expected auto, cuda, dnnl or ref", c->backend);
    if (cz_dtype_parse(c->precision) < 0)
        return cz_error_set(CZ_ERR_CONFIG, "model.precision = '%s': expected fp32, bf16 or fp16", c->precision);
    if (cz_log_parse_level(c->log_level) < 0)
        return cz_error_set(CZ_ERR_CONFIG, "log.level = '%s': expected debug, info, warn, error or off", c->log_level);
    if (!c->model_path[0]) return cz_error_set(CZ_ERR_CONFIG, "model.path is empty");
    if (c->queue_high_water > c->max_queue)
        return cz_error_set(CZ_ERR_CONFIG, "server.queue_high_water (%d) exceeds server.max_queue (%d)",
                            c->queue_high_water, c->max_queue);
    if (c->render > c->max_render)
        return cz_error_set(CZ_ERR_CONFIG, "image.render (%d) exceeds server.max_render (%d)", c->render,
                            c->max_render);
    if (parse_plan_renders(c, NULL, 0) < 0) return CZ_ERR_CONFIG;
    const char *colon = strrchr(c->listen, ':');
    char *end = NULL;
    long port = colon ? strtol(colon + 1, &end, 10) : -1;
    if (!colon || colon == c->listen || !end || *end || end == colon + 1 || port < 0 || port > 65535)
        return cz_error_set(CZ_ERR_CONFIG, "server.listen = '%s': expected ADDR:PORT", c->listen);
    return CZ_OK;
}

void cz_config_print_help(void *fp) {
    FILE *f = fp;
    for (size_t i = 0; i < NKEYS; i++) {
        const key_row *r = &k_keys[i];
        if (r->type == T_STR)
            fprintf(f, "  %-30s string  default %-14s %s\n", r->key, r->def, r->help);
        else
            fprintf(f, "  %-30s %lld..%lld, default %s: %s\n", r->key, (long long)r->min, (long long)r->max,
                    r->def, r->help);
    }
}

char *cz_config_to_json(const cz_config *c) {
    json_t *root = json_object();
    for (size_t i = 0; i < NKEYS; i++) {
        const key_row *r = &k_keys[i];
        char sect[64];
        const char *dot = strchr(r->key, '.');
        snprintf(sect, sizeof sect, "%.*s", (int)(dot - r->key), r->key);
        json_t *o = json_object_get(root, sect);
        if (!o) {
            o = json_object();
            json_object_set_new(root, sect, o);
        }
        const char *base = (const char *)c + r->off;
        int secret = strcmp(r->key, "admin.token") == 0 && *base;
        json_t *v = secret ? json_string("(set)")
                    : r->type == T_STR ? json_string(base)
                    : r->type == T_INT ? json_integer(*(const int *)base)
                                       : json_integer((json_int_t) * (const int64_t *)base);
        json_object_set_new(o, dot + 1, v);
    }
    char *s = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(root);
    return s;
}
