/* cuemu_rt.cpp: the host side of the CUDA emulator: the subset of the CUDA runtime API that the
 * `cuda` backend calls, implemented on the CPU with the real cuda_runtime_api.h prototypes, and
 * the engine that runs emulated kernels (see cuemu.h). Linked in place of cudart in the
 * test-only CZ_CUDA=EMU build.
 *
 * Model of the device:
 * - One device, "colorize CUDA emulator (CPU)", sm_90. Device memory is host memory from
 *   aligned_alloc, registered so that every copy, memset and kernel pointer argument can be
 *   checked against live allocations; new allocations are filled with 0xff bytes (NaN in every
 *   float format), so a kernel that reads memory nobody wrote produces NaN and fails its test.
 *   Freed memory waits in a quarantine (up to 256 MiB) before it goes back to malloc, so a
 *   new allocation never reuses a recently freed address: a stale pointer (say, in a graph
 *   recorded before a buffer was reallocated) stays detectably dead, and ASan catches a
 *   kernel that dereferences it.
 * - Work is deferred as on a GPU, and streams are independent. Kernels, async copies, memsets,
 *   event records and event waits queue on their own stream (the null stream, cudaStreamLegacy
 *   and cudaStreamPerThread are all the one legacy stream), each numbered in issue order. Nothing
 *   runs until the host synchronizes, and then only what that synchronization needs: a stream
 *   synchronize or query runs that stream; an event synchronize or query runs its stream up to the
 *   event's last record; an async copy into pageable memory runs its stream up to the copy, so it
 *   completes before the call returns. Before an op runs, what it depends on runs first: for a
 *   cudaStreamWaitEvent, the stream of the record that was the event's latest when the wait was
 *   issued, up to that record (a later re-record does not move it; a never-recorded event is no
 *   dependency); for an op on the legacy stream, the earlier work of every other stream (the
 *   legacy barrier, applied even to non-blocking streams: conservative); for an op on a blocking
 *   stream, the legacy stream's earlier work. Work on another stream that nothing orders before
 *   the synchronization does not run: a missing event wait, or a host that synchronizes the wrong
 *   stream before reading a pinned buffer, reads stale data (0xff fill: NaN). Device-wide points
 *   (cudaDeviceSynchronize, the synchronous cudaMemcpy and cudaMemset, cudaFree, destroying an
 *   event or graph exec) run everything, repeatedly taking the stream whose next op was issued
 *   last, so that independent work runs in the order least like issue order. Async copies from
 *   pageable host memory take the source at the call.
 * - Stream capture (CUDA graphs): work issued to a capturing stream is recorded instead of
 *   queued; a launched graph queues copies of the recorded work on the launch stream, with the
 *   same pointers and arguments and new sequence numbers, as a real graph replays its nodes. One
 *   stream is captured at a time: a capturing stream waiting on an event recorded outside the
 *   capture (cudaErrorStreamCaptureIsolation), or another stream waiting on an event recorded
 *   inside it (a fork), invalidates the capture. What a capture cannot hold fails as CUDA
 *   documents and invalidates it: synchronizing or querying the capturing stream, async copies
 *   to or from pageable memory, and (from the capturing thread) allocation, freeing and the
 *   synchronous copy/memset.
 * - Errors follow CUDA: a bad launch configuration is the launch's own error
 *   (cudaGetLastError); a kernel that touches memory outside a live allocation reports which
 *   argument, and the error (cudaErrorIllegalAddress) becomes sticky: every later call returns
 *   it, and the work still queued on every stream is discarded. Last errors are per host
 *   thread.
 * Knobs (environment, read once): CZ_CUEMU_NO_DEVICE=1 (no device: cudaGetDeviceCount fails),
 * CZ_CUEMU_MEM_MB (device memory size, default 4096: cudaMalloc beyond it returns
 * cudaErrorMemoryAllocation), CZ_CUEMU_FAULT_LAUNCH=N (the Nth kernel to run faults with a
 * sticky illegal address), CZ_CUEMU_FAULT_FILE=PATH (every kernel faults that way while PATH
 * exists: lets a test break the device at a moment of its choosing), CZ_CUEMU_ORDER=reverse
 * (threads and blocks run last to first, and so do the threads of a CUK_LAUNCH_SYNC block
 * between barriers: a race between them changes the result),
 * and, read by cu_common.cuh at each launch, CZ_CUEMU_MAX_BLOCKS / CZ_CUEMU_MAX_PARTS (lower
 * grid caps, so that small tensors take the several-passes paths of large ones).
 * Threading: every entry point takes one global lock; kernels run one at a time. */
#include "cuemu.h"
#include "cuemu_internal.h"

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cerrno>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <string>

/* Under ASan, the padding past each allocation's end and the whole of a freed (quarantined)
 * allocation are poisoned, so a kernel or copy that reads or writes a few bytes past a buffer,
 * or through a pointer to one already freed, stops the run (as it would corrupt memory on a
 * GPU, whose allocations are padded too). */
#if defined(__SANITIZE_ADDRESS__)
#define CUEMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CUEMU_ASAN 1
#endif
#endif
#ifdef CUEMU_ASAN
#include <sanitizer/asan_interface.h>
#define CUEMU_POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define CUEMU_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define CUEMU_POISON(p, n) ((void)(p), (void)(n))
#define CUEMU_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

namespace cuemu {

thread_local coords t_at;

namespace {

struct alloc_info {
    size_t bytes;
    bool pinned; /* cudaMallocHost: host memory the device may also address */
};

struct stream_rec;

/* One unit of queued work. A wait (cudaStreamWaitEvent) has no work, only a dependency. */
struct op {
    cudaStream_t stream; /* as the caller named it (diagnostics; graph ops take the launch stream) */
    const char *what;
    std::function<cudaError_t()> work;
    uint64_t seq;            /* global issue order, given when queued; 0 inside a graph */
    stream_rec *wait_stream; /* a wait: wait_stream must first run its ops up to wait_seq */
    uint64_t wait_seq;
};

struct stream_rec {
    unsigned flags;
    bool capturing;
    bool invalid; /* something the capture cannot hold happened; EndCapture fails */
    std::vector<op> captured;
    uint64_t capture_id;    /* nonzero while capturing: which capture */
    std::deque<op> pending; /* queued, not yet run, in issue (seq) order */
};

struct event_rec {
    unsigned flags;
    double t_ms;            /* host time when the recorded work ran */
    bool recorded;          /* a record of it has run */
    stream_rec *rec_stream; /* its latest record issued outside a capture: (stream, seq); seq 0: none */
    uint64_t rec_seq;
    uint64_t capture_id; /* its latest record was captured by this capture (if still active) */
};

thread_local stream_rec *t_capturing; /* the stream this thread is capturing, if any */

/* The emulator's state lives on the heap and is never destroyed: a program's static destructors
 * and LeakSanitizer's exit-time scan must still find the memory it holds (live allocations,
 * the quarantine) through these globals. */
std::recursive_mutex &g_mu = *new std::recursive_mutex;
std::map<uintptr_t, alloc_info> &g_allocs = *new std::map<uintptr_t, alloc_info>; /* device and pinned memory */
std::map<cudaStream_t, stream_rec *> &g_streams = *new std::map<cudaStream_t, stream_rec *>;
std::map<cudaEvent_t, event_rec *> &g_events = *new std::map<cudaEvent_t, event_rec *>;
stream_rec &g_legacy = *new stream_rec{}; /* the legacy default stream: 0, cudaStreamLegacy, cudaStreamPerThread */
uint64_t g_seq;                            /* the last sequence number given to a queued op */
uint64_t g_capture_ids;
size_t g_used;
size_t g_cap;
bool g_no_device;
bool g_reverse; /* CZ_CUEMU_ORDER=reverse: run_grid runs threads last to first */
long g_fault_launch;
std::string &g_fault_file = *new std::string;
long g_launches;
cudaError_t g_sticky = cudaSuccess;
thread_local cudaError_t t_last = cudaSuccess;
bool g_init;
std::deque<std::pair<void *, size_t>> &g_quarantine = *new std::deque<std::pair<void *, size_t>>; /* freed, not given back */
size_t g_quarantine_bytes;

void init_locked() {
    if (g_init) return;
    g_init = true;
    const char *v = getenv("CZ_CUEMU_NO_DEVICE");
    g_no_device = v && *v && strcmp(v, "0") != 0;
    long mb = 4096;
    if ((v = getenv("CZ_CUEMU_MEM_MB")) && *v) mb = strtol(v, nullptr, 10);
    g_cap = (size_t)(mb < 0 ? 0 : mb) << 20;
    if ((v = getenv("CZ_CUEMU_FAULT_LAUNCH")) && *v) g_fault_launch = strtol(v, nullptr, 10);
    if ((v = getenv("CZ_CUEMU_FAULT_FILE")) && *v) g_fault_file = v;
    g_reverse = (v = getenv("CZ_CUEMU_ORDER")) && !strcmp(v, "reverse");
}

struct guard {
    std::lock_guard<std::recursive_mutex> lk{g_mu};
    guard() { init_locked(); }
};

cudaError_t ret(cudaError_t e) {
    if (e != cudaSuccess) t_last = e;
    return e;
}

/* The allocation containing p (device or pinned), or g_allocs.end(). */
std::map<uintptr_t, alloc_info>::iterator find_alloc(const void *p) {
    uintptr_t a = (uintptr_t)p;
    auto it = g_allocs.upper_bound(a);
    if (it == g_allocs.begin()) return g_allocs.end();
    --it;
    if (a >= it->first && a < it->first + (it->second.bytes ? it->second.bytes : 1)) return it;
    return g_allocs.end();
}

bool in_range(const void *p, size_t bytes, bool want_pinned) {
    auto it = find_alloc(p);
    if (it == g_allocs.end() || it->second.pinned != want_pinned) return false;
    return (uintptr_t)p + bytes <= it->first + it->second.bytes;
}

bool is_device(const void *p) {
    auto it = find_alloc(p);
    return it != g_allocs.end() && !it->second.pinned;
}

bool is_pinned(const void *p) {
    auto it = find_alloc(p);
    return it != g_allocs.end() && it->second.pinned;
}

double now_ms() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* The stream record behind a handle (the three names of the legacy stream share one), or null
 * for a handle that is not a live stream. */
stream_rec *stream_of(cudaStream_t s) {
    if (s == nullptr || s == cudaStreamLegacy || s == cudaStreamPerThread) return &g_legacy;
    auto it = g_streams.find(s);
    return it == g_streams.end() ? nullptr : it->second;
}

bool valid_stream(cudaStream_t s) { return stream_of(s) != nullptr; }

/* r if it still exists. A destroyed stream ran all its work before it went, so a dependency on
 * it is met; a new stream that reuses its address only holds work issued later (higher seq). */
stream_rec *live(stream_rec *r) {
    return r == &g_legacy || g_streams.count((cudaStream_t)(void *)r) ? r : nullptr;
}

stream_rec *capturing(cudaStream_t s) {
    auto it = g_streams.find(s);
    return it != g_streams.end() && it->second->capturing ? it->second : nullptr;
}

stream_rec *active_capture(uint64_t id) {
    if (id)
        for (auto &kv : g_streams)
            if (kv.second->capturing && kv.second->capture_id == id) return kv.second;
    return nullptr;
}

/* Queues o on its stream with the next sequence number, or records it when its stream is being
 * captured. Returns the sequence number (0 when captured). The caller checked the stream. */
uint64_t push(op o) {
    if (stream_rec *r = capturing(o.stream)) {
        o.seq = 0;
        r->captured.push_back(std::move(o));
        return 0;
    }
    uint64_t seq = ++g_seq;
    o.seq = seq;
    stream_of(o.stream)->pending.push_back(std::move(o));
    return seq;
}

uint64_t push_work(cudaStream_t s, const char *what, std::function<cudaError_t()> work) {
    return push(op{s, what, std::move(work), 0, nullptr, 0});
}

/* After a failure: a dead context runs nothing more, so every queued op of every stream goes. */
void discard_pending() {
    size_t n = g_legacy.pending.size();
    g_legacy.pending.clear();
    for (auto &kv : g_streams) {
        n += kv.second->pending.size();
        kv.second->pending.clear();
    }
    if (n) report("%zu queued operation(s) discarded (sticky error)", n);
}

void run_until(stream_rec *r, uint64_t upto);

/* Runs the op at the front of r's queue, after what it depends on: the event a wait names; for
 * the legacy stream, every other stream's earlier work (its barrier, applied here to all
 * streams); for a blocking stream, the legacy stream's earlier work. Dependencies have lower
 * sequence numbers than the op, and the op is the lowest of r's queue, so resolving them never
 * runs r itself and the recursion ends. The first failure becomes sticky. */
void step(stream_rec *r) {
    const op &front = r->pending.front();
    uint64_t seq = front.seq;
    stream_rec *ws = front.wait_stream;
    uint64_t wseq = front.wait_seq;
    if (ws)
        if (stream_rec *w = live(ws)) run_until(w, wseq);
    if (r == &g_legacy) {
        for (auto &kv : g_streams) run_until(kv.second, seq - 1);
    } else if (!(r->flags & cudaStreamNonBlocking)) {
        run_until(&g_legacy, seq - 1);
    }
    if (g_sticky != cudaSuccess || r->pending.empty() || r->pending.front().seq != seq) return;
    op o = std::move(r->pending.front());
    r->pending.pop_front();
    if (!o.work) return; /* a wait: its dependency is met */
    cudaError_t e = o.work();
    if (e != cudaSuccess) {
        report("%s failed on stream %p: %s", o.what, (void *)o.stream, cudaGetErrorString(e));
        g_sticky = e;
        discard_pending();
    }
}

/* Runs r's queued ops with seq <= upto, in order, each after its dependencies. */
void run_until(stream_rec *r, uint64_t upto) {
    while (g_sticky == cudaSuccess && !r->pending.empty() && r->pending.front().seq <= upto) step(r);
}

/* Synchronizes one stream: all it has queued, with what that depends on, and nothing else. */
cudaError_t run_stream(stream_rec *r) {
    run_until(r, UINT64_MAX);
    return g_sticky;
}

/* Synchronizes the device: runs everything queued, taking each time one op from the stream whose
 * front op was issued LAST. Correct programs do not care about the order of independent work;
 * running the latest first makes a missing dependency between streams show. */
cudaError_t run_all() {
    while (g_sticky == cudaSuccess) {
        stream_rec *pick = nullptr;
        auto consider = [&pick](stream_rec *r) {
            if (!r->pending.empty() && (!pick || r->pending.front().seq > pick->pending.front().seq)) pick = r;
        };
        consider(&g_legacy);
        for (auto &kv : g_streams) consider(kv.second);
        if (!pick) break;
        step(pick);
    }
    return g_sticky;
}

/* Whether the calling thread may do something a capture cannot hold; if not, invalidates its
 * capture (as CUDA does) and says so. */
bool capture_allows(const char *what) {
    if (!t_capturing) return true;
    report("%s while this thread captures a stream: the capture is invalidated", what);
    t_capturing->invalid = true;
    return false;
}

bool capture_allows_stream(cudaStream_t s, const char *what) {
    stream_rec *r = capturing(s);
    if (!r) return true;
    report("%s on a capturing stream: the capture is invalidated", what);
    r->invalid = true;
    return false;
}

/* ---- the kernel engine ---- */

/* Kernels launched with CUK_LAUNCH_SYNC run as fibers: one ucontext per thread of the block,
 * all on the synchronizing host thread, switched at each __syncthreads() and at the block's
 * end. Each round resumes every thread of the block once, in index order (or last to first
 * with CZ_CUEMU_ORDER=reverse), and each runs until it reaches its next barrier or the end, so
 * a race between the threads of a block (one reading what another writes before a barrier
 * orders them) gives different results in the two orders. After each round every thread's
 * post (whether it ended, and how many __syncthreads() it passed in this block) must equal
 * thread 0's: a __syncthreads() that some threads skip (a return before it, or a condition
 * that differs between threads) is undefined on a GPU ("likely to hang", CUDA C Programming
 * Guide, Synchronization Functions) and aborts here with the kernel's name. A fiber stays with
 * its thread index for the whole grid and runs the body once per block; stacks are mapped once
 * (with a guard page below each) and kept for later launches. Fibers replaced one OS thread
 * per block thread with pthread barriers, whose futex traffic was most of the emulator's
 * system time.
 * Stacks are 64 KiB: the kernels' frames are small even under ASan, and ASan's swapcontext
 * interceptor clears the shadow of the whole target stack at every switch, so a larger stack
 * costs time on every resume. */
constexpr size_t k_fiber_stack = 64 * 1024;

struct fiber {
    ucontext_t ctx;
    coords at;       /* the thread's coordinates while it is switched out */
    unsigned post;   /* where it waits: end flag | __syncthreads() passed in this block */
    void *fake = nullptr; /* ASan's fake stack while switched out */
};

struct fiber_sched {
    const std::function<void()> *body;
    std::vector<fiber> f;
    ucontext_t main{}; /* zeroed: no uc_stack, so ASan's interceptor clears nothing on the way back */
    void *main_fake = nullptr;
    const void *main_bottom = nullptr; /* the synchronizing thread's stack, for ASan */
    size_t main_size = 0;
    fiber *cur = nullptr;
    bool quit = false; /* the grid is done: each fiber returns from its entry */
};
thread_local fiber_sched *t_sched;

/* One mapping of stacks, grown to the largest block seen and never unmapped (a test-only
 * engine; the mapping is address space, touched only as deep as the kernels go). */
char *g_stacks;
size_t g_stack_count;

char *fiber_stack(unsigned i) { return g_stacks + (size_t)i * (k_fiber_stack + 4096) + 4096; }

void ensure_stacks(unsigned n) {
    if (n <= g_stack_count) return;
    size_t bytes = (size_t)n * (k_fiber_stack + 4096);
    void *m = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) {
        report("cannot map %u fiber stacks: %s", n, strerror(errno));
        abort();
    }
    if (g_stacks) munmap(g_stacks, g_stack_count * (k_fiber_stack + 4096));
    g_stacks = (char *)m;
    g_stack_count = n;
    for (unsigned i = 0; i < n; i++) mprotect(fiber_stack(i) - 4096, 4096, PROT_NONE); /* overflow faults */
}

/* From fiber to scheduler and back. */
void fiber_yield(fiber &me, bool last) {
    fiber_sched *s = t_sched;
#ifdef CUEMU_ASAN
    __sanitizer_start_switch_fiber(last ? nullptr : &me.fake, s->main_bottom, s->main_size);
#endif
    swapcontext(&me.ctx, &s->main);
#ifdef CUEMU_ASAN
    __sanitizer_finish_switch_fiber(me.fake, nullptr, nullptr);
#endif
    (void)last;
}

void fiber_entry() {
    fiber_sched *s = t_sched;
    fiber &me = *s->cur;
#ifdef CUEMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &s->main_bottom, &s->main_size);
#endif
    while (!s->quit) {
        (*s->body)();
        me.post = 0x80000000u | t_at.bars;
        fiber_yield(me, false);
    }
    fiber_yield(me, true); /* never resumed */
}

/* From scheduler to fiber i, until it yields. */
void fiber_resume(fiber_sched &s, unsigned i) {
    fiber &f = s.f[i];
    s.cur = &f;
    t_at = f.at;
#ifdef CUEMU_ASAN
    __sanitizer_start_switch_fiber(&s.main_fake, fiber_stack(i), k_fiber_stack);
#endif
    swapcontext(&s.main, &f.ctx);
#ifdef CUEMU_ASAN
    __sanitizer_finish_switch_fiber(s.main_fake, nullptr, nullptr);
#endif
    f.at = t_at;
}

/* Every wait of a threaded block but its end: the fiber posts and yields. */
void block_barrier() {
    fiber &me = *t_sched->cur;
    me.post = t_at.bars;
    fiber_yield(me, false);
}

void run_block_fibers(fiber_sched &s, const launch_desc &d, uint3 bid, bool rev) {
    const unsigned nt = (unsigned)s.f.size();
    for (auto &f : s.f) {
        f.at.bid = bid;
        f.at.bars = 0;
    }
    for (;;) {
        for (unsigned k = 0; k < nt; k++) fiber_resume(s, rev ? nt - 1 - k : k);
        const unsigned first = s.f[0].post;
        for (unsigned i = 1; i < nt; i++) {
            unsigned post = s.f[i].post;
            if (post == first) continue;
            report("kernel %s, block (%u,%u,%u): thread %u is at %s after %u __syncthreads() while thread 0 is at %s "
                   "after %u: a __syncthreads() that not every thread of the block reaches",
                   d.kernel ? d.kernel : "?", bid.x, bid.y, bid.z, i, (post & 0x80000000u) ? "the end" : "a barrier",
                   post & 0x7fffffffu, (first & 0x80000000u) ? "the end" : "a barrier", first & 0x7fffffffu);
            abort();
        }
        if (first & 0x80000000u) return;
    }
}

/* A context that starts fiber_entry on its own stack (apart, since getcontext returns twice and
 * the caller's locals would be at risk). */
__attribute__((noinline)) void fiber_init(ucontext_t &ctx, char *stack) {
    CUEMU_UNPOISON(stack, k_fiber_stack); /* frames a previous grid left poisoned */
    getcontext(&ctx);
    ctx.uc_stack.ss_sp = stack;
    ctx.uc_stack.ss_size = k_fiber_stack;
    ctx.uc_link = nullptr;
    makecontext(&ctx, fiber_entry, 0);
}

void run_grid_fibers(const launch_desc &d, const std::function<void()> &body, bool rev) {
    const unsigned nt = d.block.x * d.block.y * d.block.z;
    ensure_stacks(nt);
    fiber_sched s;
    s.body = &body;
    s.f.resize(nt);
    fiber_sched *saved = t_sched;
    t_sched = &s;
    for (unsigned i = 0; i < nt; i++) {
        fiber &f = s.f[i];
        f.at.tid = make_uint3(i % d.block.x, (i / d.block.x) % d.block.y, i / (d.block.x * d.block.y));
        f.at.bdim = d.block;
        f.at.gdim = d.grid;
        f.at.kernel = d.kernel;
        f.at.threaded = 1;
        fiber_init(f.ctx, fiber_stack(i));
    }
    const size_t nb = (size_t)d.grid.x * d.grid.y * d.grid.z;
    for (size_t k = 0; k < nb; k++) {
        size_t b = rev ? nb - 1 - k : k;
        run_block_fibers(s, d,
                         make_uint3((unsigned)(b % d.grid.x), (unsigned)(b / d.grid.x % d.grid.y),
                                    (unsigned)(b / ((size_t)d.grid.x * d.grid.y))),
                         rev);
    }
    s.quit = true; /* each fiber leaves its loop and ends */
    for (unsigned i = 0; i < nt; i++) fiber_resume(s, i);
    t_sched = saved;
}

void run_grid(const launch_desc &d, const std::function<void()> &body) {
    coords saved = t_at;
    t_at.bdim = d.block;
    t_at.gdim = d.grid;
    t_at.kernel = d.kernel;
    t_at.threaded = 0;
    /* one thread after another (or block after block of fibers), in index order, or in reverse
     * with CZ_CUEMU_ORDER=reverse: a kernel whose threads race (two writing one element, one
     * reading what another writes) then gives different results in the two orders, which a
     * GPU would show as flakiness */
    const bool rev = g_reverse;
    if (!d.threaded) {
        const dim3 g = d.grid, b = d.block;
        for (unsigned kz = 0; kz < g.z; kz++)
            for (unsigned ky = 0; ky < g.y; ky++)
                for (unsigned kx = 0; kx < g.x; kx++) {
                    t_at.bid = rev ? make_uint3(g.x - 1 - kx, g.y - 1 - ky, g.z - 1 - kz) : make_uint3(kx, ky, kz);
                    for (unsigned tz = 0; tz < b.z; tz++)
                        for (unsigned ty = 0; ty < b.y; ty++)
                            for (unsigned tx = 0; tx < b.x; tx++) {
                                t_at.tid = rev ? make_uint3(b.x - 1 - tx, b.y - 1 - ty, b.z - 1 - tz)
                                               : make_uint3(tx, ty, tz);
                                body();
                            }
                }
    } else {
        run_grid_fibers(d, body, rev);
    }
    t_at = saved;
}

} // namespace

void report(const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    fprintf(stderr, "cuemu: %s\n", buf);
}

bool is_device_range(const void *p, size_t bytes) {
    guard g;
    return in_range(p, bytes, false);
}

cudaError_t enqueue(cudaStream_t s, const char *what, std::function<cudaError_t()> work) {
    guard g;
    if (g_sticky != cudaSuccess) return ret(g_sticky);
    if (!valid_stream(s)) return ret(cudaErrorInvalidResourceHandle);
    push_work(s, what, std::move(work));
    return cudaSuccess;
}

void syncthreads() {
    if (!t_at.threaded) {
        report("kernel %s calls __syncthreads() but was launched with CUK_LAUNCH; launch it with CUK_LAUNCH_SYNC",
               t_at.kernel ? t_at.kernel : "?");
        abort();
    }
    t_at.bars++;
    block_barrier();
}

void launch(const launch_desc &d, ptr_args ptrs, std::function<void()> thread_body) {
    guard g;
    if (g_sticky != cudaSuccess) {
        ret(g_sticky);
        return;
    }
    const dim3 &b = d.block, &gr = d.grid;
    unsigned long long nt = (unsigned long long)b.x * b.y * b.z;
    if (nt == 0 || nt > 1024 || b.x > 1024 || b.y > 1024 || b.z > 64 || gr.x == 0 || gr.y == 0 || gr.z == 0 ||
        gr.x > 2147483647u || gr.y > 65535 || gr.z > 65535) {
        report("kernel %s: invalid configuration grid (%u,%u,%u) block (%u,%u,%u)", d.kernel, gr.x, gr.y, gr.z, b.x,
               b.y, b.z);
        ret(cudaErrorInvalidConfiguration);
        return;
    }
    if (d.shmem > 48 * 1024) {
        report("kernel %s: %zu bytes of dynamic shared memory", d.kernel, d.shmem);
        ret(cudaErrorInvalidValue);
        return;
    }
    if (!valid_stream(d.stream)) {
        ret(cudaErrorInvalidResourceHandle);
        return;
    }
    launch_desc dc = d;
    push_work(d.stream, d.kernel, [dc, ptrs = std::move(ptrs), body = std::move(thread_body)]() {
        for (auto &pa : ptrs)
            if (pa.first && !is_device(pa.first) && !is_pinned(pa.first)) {
                report("kernel %s: argument %d (%p) is not device memory", dc.kernel, pa.second,
                       pa.first);
                return cudaErrorIllegalAddress;
            }
        bool by_count = g_fault_launch > 0 && ++g_launches == g_fault_launch;
        if (by_count || (!g_fault_file.empty() && access(g_fault_file.c_str(), F_OK) == 0)) {
            report("kernel %s: injected fault (%s)", dc.kernel,
                   by_count ? "CZ_CUEMU_FAULT_LAUNCH" : "CZ_CUEMU_FAULT_FILE");
            return cudaErrorIllegalAddress;
        }
        run_grid(dc, body);
        return cudaSuccess;
    });
}

} // namespace cuemu

using namespace cuemu;

/* ---------------------------------------------------------------- the runtime API subset */

extern "C" {

cudaError_t cudaGetDeviceCount(int *count) {
    guard g;
    if (!count) return ret(cudaErrorInvalidValue);
    if (g_no_device) {
        *count = 0;
        return ret(cudaErrorNoDevice);
    }
    *count = 1;
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *prop, int device) {
    guard g;
    if (!prop) return ret(cudaErrorInvalidValue);
    if (g_no_device || device != 0) return ret(cudaErrorInvalidDevice);
    memset(prop, 0, sizeof *prop);
    snprintf(prop->name, sizeof prop->name, "colorize CUDA emulator (CPU)");
    prop->major = 9;
    prop->minor = 0;
    prop->multiProcessorCount = 1;
    prop->totalGlobalMem = g_cap;
    prop->warpSize = 32;
    prop->maxThreadsPerBlock = 1024;
    prop->sharedMemPerBlock = 48 * 1024;
    return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
    guard g;
    if (g_no_device || device != 0) return ret(cudaErrorInvalidDevice);
    if (g_sticky != cudaSuccess) return ret(g_sticky);
    return cudaSuccess;
}

cudaError_t cudaGetDevice(int *device) {
    guard g;
    if (!device) return ret(cudaErrorInvalidValue);
    *device = 0;
    return cudaSuccess;
}

cudaError_t cudaGetLastError(void) {
    guard g;
    cudaError_t e = g_sticky != cudaSuccess ? g_sticky : t_last;
    t_last = cudaSuccess;
    return e;
}

cudaError_t cudaPeekAtLastError(void) {
    guard g;
    return g_sticky != cudaSuccess ? g_sticky : t_last;
}

const char *cudaGetErrorName(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated: return "cudaErrorStreamCaptureInvalidated";
    case cudaErrorStreamCaptureIsolation: return "cudaErrorStreamCaptureIsolation";
    case cudaErrorStreamCaptureWrongThread: return "cudaErrorStreamCaptureWrongThread";
    case cudaErrorIllegalState: return "cudaErrorIllegalState";
    default: return "cudaErrorUnknown";
    }
}

const char *cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected (emulator: CZ_CUEMU_NO_DEVICE)";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated: return "operation failed due to a previous error during capture";
    case cudaErrorStreamCaptureIsolation: return "dependency created on uncaptured work in another stream";
    case cudaErrorStreamCaptureWrongThread: return "attempt to terminate a thread-local capture sequence from another thread";
    case cudaErrorIllegalState: return "the operation cannot be performed in the present state";
    default: return "unknown error";
    }
}

cudaError_t cudaDriverGetVersion(int *v) {
    if (!v) return ret(cudaErrorInvalidValue);
    *v = CUDART_VERSION;
    return cudaSuccess;
}

cudaError_t cudaRuntimeGetVersion(int *v) {
    if (!v) return ret(cudaErrorInvalidValue);
    *v = CUDART_VERSION;
    return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total) {
    guard g;
    if (g_sticky != cudaSuccess) return ret(g_sticky);
    if (free_b) *free_b = g_cap - g_used;
    if (total) *total = g_cap;
    return cudaSuccess;
}

/* ---- memory ---- */

/* What aligned_alloc is asked for: whole 256-byte units, at least one. */
static size_t padded(size_t bytes) { return bytes ? (bytes + 255) / 256 * 256 : 256; }

static cudaError_t alloc_common(void **p, size_t bytes, bool pinned) {
    guard g;
    if (!p) return ret(cudaErrorInvalidValue);
    *p = nullptr;
    if (g_sticky != cudaSuccess) return ret(g_sticky);
    if (!capture_allows(pinned ? "cudaMallocHost" : "cudaMalloc")) return ret(cudaErrorStreamCaptureUnsupported);
    if (!pinned && (bytes > g_cap || g_used > g_cap - bytes)) return ret(cudaErrorMemoryAllocation);
    size_t sz = padded(bytes);
    void *m = aligned_alloc(256, sz);
    if (!m) return ret(cudaErrorMemoryAllocation);
    memset(m, 0xff, sz); /* NaN in fp32, bf16, fp16 and fp64: uninitialized reads show */
    CUEMU_POISON((char *)m + bytes, sz - bytes);
    g_allocs[(uintptr_t)m] = alloc_info{bytes, pinned};
    if (!pinned) g_used += bytes;
    *p = m;
    return cudaSuccess;
}

static cudaError_t free_common(void *p, bool pinned) {
    guard g;
    if (!p) return cudaSuccess;
    if (!capture_allows(pinned ? "cudaFreeHost" : "cudaFree")) return ret(cudaErrorStreamCaptureUnsupported);
    cudaError_t e = run_all(); /* freeing synchronizes the device */
    auto it = g_allocs.find((uintptr_t)p);
    if (it == g_allocs.end() || it->second.pinned != pinned) {
        report("%s(%p): not a live %s allocation", pinned ? "cudaFreeHost" : "cudaFree", p,
               pinned ? "pinned" : "device");
        return ret(cudaErrorInvalidValue);
    }
    if (!pinned) g_used -= it->second.bytes;
    size_t sz = it->second.bytes;
    g_allocs.erase(it);
    CUEMU_POISON(p, padded(sz));
    g_quarantine.emplace_back(p, sz);
    g_quarantine_bytes += sz;
    while (g_quarantine_bytes > ((size_t)256 << 20) && !g_quarantine.empty()) {
        CUEMU_UNPOISON(g_quarantine.front().first, padded(g_quarantine.front().second));
        free(g_quarantine.front().first);
        g_quarantine_bytes -= g_quarantine.front().second;
        g_quarantine.pop_front();
    }
    return e == cudaSuccess ? cudaSuccess : ret(e);
}

cudaError_t cudaMalloc(void **p, size_t bytes) { return alloc_common(p, bytes, false); }
cudaError_t cudaFree(void *p) { return free_common(p, false); }
cudaError_t cudaMallocHost(void **p, size_t bytes) { return alloc_common(p, bytes, true); }
cudaError_t cudaHostAlloc(void **p, size_t bytes, unsigned int flags) {
    (void)flags;
    return alloc_common(p, bytes, true);
}
cudaError_t cudaFreeHost(void *p) { return free_common(p, true); }

/* Checks a copy against its kind; returns cudaErrorInvalidValue (and says why) when the
 * pointers are not what the kind claims or a device range overruns its allocation. */
static cudaError_t check_copy(void *dst, const void *src, size_t n, cudaMemcpyKind kind) {
    bool dd = is_device(dst), sd = is_device(src);
    bool ok;
    switch (kind) {
    case cudaMemcpyHostToDevice: ok = !sd && in_range(dst, n, false); break;
    case cudaMemcpyDeviceToHost: ok = !dd && in_range(src, n, false); break;
    case cudaMemcpyDeviceToDevice: ok = in_range(dst, n, false) && in_range(src, n, false); break;
    case cudaMemcpyHostToHost: ok = !dd && !sd; break;
    case cudaMemcpyDefault:
        ok = (!dd || in_range(dst, n, false)) && (!sd || in_range(src, n, false));
        break;
    default: ok = false;
    }
    if (!ok)
        report("cudaMemcpy kind %d of %zu bytes from %p (%s) to %p (%s): pointers do not match the kind or overrun "
               "their allocation",
               (int)kind, n, src, sd ? "device" : "host", dst, dd ? "device" : "host");
    return ok ? cudaSuccess : cudaErrorInvalidValue;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, cudaMemcpyKind kind) {
    guard g;
    if (g_sticky != cudaSuccess) return ret(g_sticky);
    if (n == 0) return cudaSuccess;
    if (!capture_allows("cudaMemcpy")) return ret(cudaErrorStreamCaptureUnsupported);
    cudaError_t e = check_copy(dst, src, n, kind);
    if (e != cudaSuccess) return ret(e);
    if ((e = run_all()) != cudaSuccess) return ret(e);
    memmove(dst, src, n);
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, cudaMemcpyKind kind, cudaStream_t s) {
    guard g;
    if (g_sticky != cudaSuccess) return ret(g_sticky);
    if (!valid_stream(s)) return ret(cudaErrorInvalidResourceHandle);
    if (n == 0) return cudaSuccess;
    cudaError_t e = check_copy(dst, src, n, kind);
    if (e != cudaSuccess) return ret(e);
    bool src_pageable = !is_device(src) && !is_pinned(src);
    bool dst_pageable = !is_device(dst) && !is_pinned(dst);
    if ((src_pageable || dst_pageable) && !capture_allows_stream(s, "an async copy with pageable host memory"))
        return ret(cudaErrorStreamCaptureUnsupported);
    if (dst_pageable) { /* into pageable memory: complete before returning (the stream up to the copy) */
        uint64_t seq = push_work(s, "cudaMemcpyAsync", [dst, src, n]() {
            if (is_device(src) ? !in_range(src, n, false) : is_pinned(src) && !in_range(src, n, true))
                return cudaErrorIllegalAddress;
            memmove(dst, src, n);
            return cudaSuccess;
        });
        run_until(stream_of(s), seq);
        return g_sticky == cudaSuccess ? cudaSuccess : ret(g_sticky);
    }
    if (src_pageable) { /* from pageable memory: the source is taken now */
        std::vector<unsigned char> copy((const unsigned char *)src, (const unsigned char *)src + n);
        push_work(s, "cudaMemcpyAsync", [dst, copy = std::move(copy)]() {
            if (!in_range(dst, copy.size(), false)) return cudaErrorIllegalAddress;
            memcpy(dst, copy.data(), copy.size());
            return cudaSuccess;
        });
        return cudaSuccess;
    }
    push_work(s, "cudaMemcpyAsync", [dst, src, n]() {
        bool dok = is_device(dst) ? in_range(dst, n, false) : in_range(dst, n, true);
        bool sok = is_device(src) ? in_range(src, n, false) : in_range(src, n, true);
        if (!dok || !sok) return cudaErrorIllegalAddress; /* freed before it ran */
        memmove(dst, src, n);
        return cudaSuccess;
    });
    return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void *dst, int value, size_t n, cudaStream_t s) {
    guard g;
    if (g_sticky != cudaSuccess) return ret(g_sticky);
    if (!valid_stream(s)) return ret(cudaErrorInvalidResourceHandle);
    if (n == 0) return cudaSuccess;
    if (!in_range(dst, n, false)) {
        report("cudaMemset of %zu bytes at %p: not inside one device allocation", n, dst);
        return ret(cudaErrorInvalidValue);
    }
    push_work(s, "cudaMemsetAsync", [dst, value, n]() {
        if (!in_range(dst, n, false)) return cudaErrorIllegalAddress;
        memset(dst, value, n);
        return cudaSuccess;
    });
    return cudaSuccess;
}

cudaError_t cudaMemset(void *dst, int value, size_t n) {
    guard g;
    if (!capture_allows("cudaMemset")) return ret(cudaErrorStreamCaptureUnsupported);
    cudaError_t e = cudaMemsetAsync(dst, value, n, nullptr);
    if (e != cudaSuccess) return e;
    return ret(run_all());
}

/* ---- streams, events, synchronization ---- */

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned int flags) {
    guard g;
    if (!s) return ret(cudaErrorInvalidValue);
    if (g_sticky != cudaSuccess) return ret(g_sticky);
    stream_rec *r = new stream_rec{flags, false, false, {}, 0, {}};
    *s = (cudaStream_t)(void *)r;
    g_streams[*s] = r;
    return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t *s) { return cudaStreamCreateWithFlags(s, cudaStreamDefault); }

cudaError_t cudaStreamDestroy(cudaStream_t s) {
    guard g;
    auto it = g_streams.find(s);
    if (it == g_streams.end()) return ret(cudaErrorInvalidResourceHandle);
    if (it->second->capturing) return ret(cudaErrorStreamCaptureUnsupported);
    (void)run_stream(it->second); /* queued work still completes, as on a device */
    delete it->second;
    g_streams.erase(it);
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t s) {
    guard g;
    stream_rec *r = stream_of(s);
    if (!r) return ret(cudaErrorInvalidResourceHandle);
    if (!capture_allows_stream(s, "synchronizing or querying")) return ret(cudaErrorStreamCaptureUnsupported);
    return ret(run_stream(r));
}

cudaError_t cudaStreamQuery(cudaStream_t s) {
    /* the emulator makes progress only when asked: a query runs the stream, then reports done */
    return cudaStreamSynchronize(s);
}

cudaError_t cudaDeviceSynchronize(void) {
    guard g;
    if (!capture_allows("cudaDeviceSynchronize")) return ret(cudaErrorStreamCaptureUnsupported);
    return ret(run_all());
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *ev, unsigned int flags) {
    guard g;
    if (!ev) return ret(cudaErrorInvalidValue);
    event_rec *r = new event_rec{flags, 0, false, nullptr, 0, 0};
    *ev = (cudaEvent_t)(void *)r;
    g_events[*ev] = r;
    return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t *ev) { return cudaEventCreateWithFlags(ev, cudaEventDefault); }

cudaError_t cudaEventDestroy(cudaEvent_t ev) {
    guard g;
    auto it = g_events.find(ev);
    if (it == g_events.end()) return ret(cudaErrorInvalidResourceHandle);
    (void)run_all(); /* a queued record may still refer to it */
    delete it->second;
    g_events.erase(it);
    return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t ev, cudaStream_t s) {
    guard g;
    auto it = g_events.find(ev);
    if (it == g_events.end() || !valid_stream(s)) return ret(cudaErrorInvalidResourceHandle);
    if (g_sticky != cudaSuccess) return ret(g_sticky);
    event_rec *r = it->second;
    uint64_t seq = push_work(s, "cudaEventRecord", [r]() {
        r->t_ms = now_ms();
        r->recorded = true;
        return cudaSuccess;
    });
    if (stream_rec *c = capturing(s)) {
        r->capture_id = c->capture_id; /* a node of that graph; outside waits keep the last real record */
    } else {
        r->rec_stream = stream_of(s);
        r->rec_seq = seq;
        r->capture_id = 0;
    }
    return cudaSuccess;
}

cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t ev, unsigned int flags) {
    guard g;
    (void)flags;
    auto it = g_events.find(ev);
    if (it == g_events.end() || !valid_stream(s)) return ret(cudaErrorInvalidResourceHandle);
    if (g_sticky != cudaSuccess) return ret(g_sticky);
    event_rec *r = it->second;
    stream_rec *cap = active_capture(r->capture_id); /* the capture holding its latest record, if active */
    if (stream_rec *c = capturing(s)) {
        if (cap == c) return cudaSuccess; /* recorded earlier in this same capture: in stream order already */
        report("cudaStreamWaitEvent on a capturing stream for an event recorded outside its capture: the capture "
               "is invalidated");
        c->invalid = true;
        return ret(cudaErrorStreamCaptureIsolation);
    }
    if (cap) { /* on CUDA, stream s would join that capture; the emulator captures one stream only */
        report("cudaStreamWaitEvent on stream %p for an event recorded in an active capture (a multi-stream "
               "capture, which the emulator does not model): the capture is invalidated",
               (void *)s);
        cap->invalid = true;
        return ret(cudaErrorStreamCaptureUnsupported);
    }
    if (!r->rec_seq) return cudaSuccess; /* never recorded: nothing to wait for */
    /* the dependency is the record as of now; a later cudaEventRecord does not move it */
    push(op{s, "cudaStreamWaitEvent", {}, 0, r->rec_stream, r->rec_seq});
    return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t ev) {
    guard g;
    auto it = g_events.find(ev);
    if (it == g_events.end()) return ret(cudaErrorInvalidResourceHandle);
    event_rec *r = it->second;
    if (r->rec_seq)
        if (stream_rec *rs = live(r->rec_stream)) run_until(rs, r->rec_seq);
    return ret(g_sticky);
}

cudaError_t cudaEventQuery(cudaEvent_t ev) { return cudaEventSynchronize(ev); }

cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b) {
    guard g;
    auto ia = g_events.find(a), ib = g_events.find(b);
    if (!ms || ia == g_events.end() || ib == g_events.end()) return ret(cudaErrorInvalidResourceHandle);
    if (!ia->second->recorded || !ib->second->recorded) return ret(cudaErrorInvalidResourceHandle);
    *ms = (float)(ib->second->t_ms - ia->second->t_ms);
    return cudaSuccess;
}

} /* extern "C" */

/* ---- stream capture and graphs ---- */

struct CUgraph_st {
    std::vector<op> ops;
};
struct CUgraphExec_st {
    std::vector<op> ops;
};

extern "C" {

cudaError_t cudaStreamBeginCapture(cudaStream_t s, enum cudaStreamCaptureMode mode) {
    guard g;
    (void)mode; /* thread-local and global behave alike here: one thread captures */
    if (g_sticky != cudaSuccess) return ret(g_sticky);
    auto it = g_streams.find(s);
    if (it == g_streams.end()) return ret(cudaErrorStreamCaptureUnsupported); /* not the legacy stream */
    stream_rec *r = it->second;
    if (r->capturing || t_capturing) return ret(cudaErrorIllegalState);
    r->capturing = true;
    r->capture_id = ++g_capture_ids;
    r->invalid = false;
    r->captured.clear();
    t_capturing = r;
    return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *graph) {
    guard g;
    auto it = g_streams.find(s);
    if (it == g_streams.end() || !graph) return ret(cudaErrorInvalidValue);
    stream_rec *r = it->second;
    *graph = nullptr;
    if (!r->capturing) return ret(cudaErrorIllegalState);
    if (t_capturing != r) return ret(cudaErrorStreamCaptureWrongThread);
    r->capturing = false;
    r->capture_id = 0;
    t_capturing = nullptr;
    std::vector<op> ops = std::move(r->captured);
    r->captured.clear();
    if (r->invalid) return ret(cudaErrorStreamCaptureInvalidated);
    *graph = new CUgraph_st{std::move(ops)};
    return cudaSuccess;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t s, enum cudaStreamCaptureStatus *status) {
    guard g;
    if (!status || !valid_stream(s)) return ret(cudaErrorInvalidValue);
    stream_rec *r = capturing(s);
    *status = !r ? cudaStreamCaptureStatusNone
                 : r->invalid ? cudaStreamCaptureStatusInvalidated : cudaStreamCaptureStatusActive;
    return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t graph, unsigned long long flags) {
    guard g;
    (void)flags;
    if (!exec || !graph) return ret(cudaErrorInvalidValue);
    *exec = new CUgraphExec_st{graph->ops};
    return cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s) {
    guard g;
    if (!exec) return ret(cudaErrorInvalidValue);
    if (g_sticky != cudaSuccess) return ret(g_sticky);
    if (!valid_stream(s)) return ret(cudaErrorInvalidResourceHandle);
    for (const op &o : exec->ops) push_work(s, o.what, o.work);
    return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
    guard g;
    (void)run_all(); /* a launched graph finishes first, as on a device */
    delete exec;
    return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
    guard g;
    delete graph;
    return cudaSuccess;
}

} /* extern "C" */
