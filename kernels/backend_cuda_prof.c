/* backend_cuda_prof.c: COLORIZE_CUDA_PROFILE=1, where the device time of unrecorded work goes.
 *
 * Every launch of ours (CUK_CHECK), every cuDNN convolution (named with its shape), every
 * algorithm search and every return from a host synchronization puts a CUDA event on the
 * compute stream, tagged with what follows it. The time from one event to the next is charged
 * to the tag of the first. When the host keeps the stream fed (op-by-op training at batch 16 or
 * more) that is each launch's device time; where the host falls behind, the gap lands on the
 * launch before it, and after a synchronization on "host: after a sync". At the backend's
 * destruction the sums go to stderr as a table, largest first: tag, milliseconds, share, calls,
 * milliseconds per call. Our launches are tagged by launcher name (cuk_...); cuDNN's by
 * direction and shape in cuDNN's terms of the backend: "cudnn fwd C->K HxW->OHxOW" is a conv of
 * C input and K output channels, and a transposed conv's forward is a "cudnn bwd-data" of the
 * conv it transposes (K of its input channels to C of its output ones); our convolution kernels
 * in the same terms, "direct ..." (conv_small.cu, where it won its race) or "naive ...".
 *
 * Nothing is marked while a recording is being made (a CUDA graph holds no timing), so profile
 * the unrecorded path: `COLORIZE_CUDA_PROFILE=1 colorize bench --train --unrecorded ...` or a
 * forward bench with COLORIZE_CUDA_GRAPHS=0. Events cost a little each; the figures are for
 * finding the large items, not for the speed table. Every PROF_WIN marks the window is read
 * back, which waits for the stream: profiling changes the timing it measures slightly. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_impl.h"
#include "log.h"

#define PROF_WIN 1024
#define PROF_TAGS 256
#define PROF_NAME 48

typedef struct prof_row {
    char name[PROF_NAME];
    double ms;
    uint64_t calls;
} prof_row;

struct cu_prof {
    cudaEvent_t ev[PROF_WIN + 1];
    char tag[PROF_WIN][PROF_NAME];
    int n;
    prof_row rows[PROF_TAGS];
    int nrows;
    uint64_t dropped; /* marks whose tag found no free row */
    int failed;       /* an event call failed: profiling stopped */
};

void cu_prof_start(cu_backend *b) {
    const char *v = getenv("COLORIZE_CUDA_PROFILE");
    if (!v || !*v || !strcmp(v, "0")) return;
    cu_prof *p = calloc(1, sizeof *p);
    if (!p) return;
    for (int i = 0; i <= PROF_WIN; i++)
        if (cudaEventCreate(&p->ev[i]) != cudaSuccess) {
            (void)cudaGetLastError();
            for (int j = 0; j < i; j++) cudaEventDestroy(p->ev[j]);
            free(p);
            CZ_LOGW("cuda", "COLORIZE_CUDA_PROFILE: cannot create events; not profiling");
            return;
        }
    b->prof = p;
    CZ_LOGI("cuda", "COLORIZE_CUDA_PROFILE: timing unrecorded device work; the table goes to stderr at the end");
}

static void add(cu_prof *p, const char *name, double ms) {
    for (int i = 0; i < p->nrows; i++)
        if (!strcmp(p->rows[i].name, name)) {
            p->rows[i].ms += ms;
            p->rows[i].calls++;
            return;
        }
    if (p->nrows == PROF_TAGS) {
        p->dropped++;
        return;
    }
    prof_row *r = &p->rows[p->nrows++];
    snprintf(r->name, sizeof r->name, "%s", name);
    r->ms = ms;
    r->calls = 1;
}

/* Closes the window: an end event after the last mark, wait for it, charge every interval. */
static void flush(cu_backend *b) {
    cu_prof *p = b->prof;
    if (!p || p->n == 0 || p->failed) return;
    cudaError_t e = cudaEventRecord(p->ev[p->n], b->stream);
    if (e == cudaSuccess) e = cudaEventSynchronize(p->ev[p->n]);
    for (int i = 0; e == cudaSuccess && i < p->n; i++) {
        float ms = 0;
        e = cudaEventElapsedTime(&ms, p->ev[i], p->ev[i + 1]);
        if (e == cudaSuccess) add(p, p->tag[i], ms);
    }
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        p->failed = 1;
        CZ_LOGW("cuda", "COLORIZE_CUDA_PROFILE: %s; profiling stopped", cudaGetErrorString(e));
    }
    p->n = 0;
}

void cu_prof_mark_(cu_backend *b, const char *what) {
    cu_prof *p = b->prof;
    if (p->failed || b->recording || b->sticky) return;
    if (p->n == PROF_WIN) flush(b);
    if (p->failed) return;
    /* a launcher's expression "cuk_name(args...)" is tagged by its name */
    size_t len = strcspn(what, "(");
    if (len == 0) len = strlen(what);
    if (len >= PROF_NAME) len = PROF_NAME - 1;
    memcpy(p->tag[p->n], what, len);
    p->tag[p->n][len] = '\0';
    if (cudaEventRecord(p->ev[p->n], b->stream) != cudaSuccess) {
        (void)cudaGetLastError();
        p->failed = 1;
        return;
    }
    p->n++;
}

void cu_prof_markf_(cu_backend *b, const char *fmt, ...) {
    char name[PROF_NAME];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    for (char *c = name; *c; c++) /* '(' would end the tag */
        if (*c == '(') *c = '[';
    cu_prof_mark_(b, name);
}

static int by_ms(const void *a, const void *b) {
    double x = ((const prof_row *)a)->ms, y = ((const prof_row *)b)->ms;
    return x < y ? 1 : x > y ? -1 : 0;
}

void cu_prof_finish(cu_backend *b) {
    cu_prof *p = b->prof;
    if (!p) return;
    flush(b);
    double total = 0;
    for (int i = 0; i < p->nrows; i++) total += p->rows[i].ms;
    qsort(p->rows, (size_t)p->nrows, sizeof p->rows[0], by_ms);
    fprintf(stderr, "cuda profile (COLORIZE_CUDA_PROFILE, device %d, %s): %.3f ms over %d tags%s\n", b->device,
            b->device_name, total, p->nrows, p->failed ? " (stopped early: see the warning)" : "");
    fprintf(stderr, "%-48s %12s %7s %9s %11s\n", "what", "ms", "share", "calls", "ms/call");
    for (int i = 0; i < p->nrows; i++)
        fprintf(stderr, "%-48s %12.3f %6.2f%% %9llu %11.4f\n", p->rows[i].name, p->rows[i].ms,
                total > 0 ? 100.0 * p->rows[i].ms / total : 0.0, (unsigned long long)p->rows[i].calls,
                p->rows[i].ms / (double)p->rows[i].calls);
    if (p->dropped) fprintf(stderr, "(%llu marks beyond %d tags not counted)\n", (unsigned long long)p->dropped, PROF_TAGS);
    for (int i = 0; i <= PROF_WIN; i++) cudaEventDestroy(p->ev[i]);
    free(p);
    b->prof = NULL;
}
