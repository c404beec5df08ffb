/* test_cuemu_streams.cpp: the CUDA emulator (kernels/emu) keeps streams independent, so that
 * the bugs of a multi-stream backend show up without a GPU: a missing cudaStreamWaitEvent, or a
 * host that synchronizes the wrong stream or event before reading a pinned buffer, reads stale
 * memory. Each check below would fail on an emulator that runs all queued work in issue order
 * at every synchronization (what kernels/emu/cuemu_rt.cpp did before).
 * Memory from cudaMalloc and cudaMallocHost starts filled with 0xff bytes, so a 32-bit word
 * nobody wrote reads STALE. Built only with CZ_CUDA=EMU; one line per check; exit status 1 on
 * any failure. */
#include "emu/cuemu.h" /* first, before the CUDA headers (as in the .cu files): CUK_LAUNCH for check f */

#include <cuda_runtime_api.h>

#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <sys/wait.h>
#include <unistd.h>

namespace {

const uint32_t STALE = 0xffffffffu;
int g_failed;

void check(bool ok, const char *id, const char *what) {
    printf("%s %s: %s\n", ok ? "ok  " : "FAIL", id, what);
    if (!ok) g_failed = 1;
}

#define CK(call)                                                                                                   \
    do {                                                                                                           \
        cudaError_t e_ = (call);                                                                                   \
        if (e_ != cudaSuccess) {                                                                                   \
            printf("FAIL %s:%d: %s returned %s\n", __FILE__, __LINE__, #call, cudaGetErrorName(e_));              \
            exit(1);                                                                                               \
        }                                                                                                          \
    } while (0)

uint32_t *dev_words(size_t n) {
    void *p = nullptr;
    CK(cudaMalloc(&p, n * sizeof(uint32_t)));
    return (uint32_t *)p;
}

uint32_t *pinned_words(size_t n) {
    void *p = nullptr;
    CK(cudaMallocHost(&p, n * sizeof(uint32_t)));
    return (uint32_t *)p;
}

/* Async copies of one word: from pageable memory (the source is taken at the call) and to pinned. */
void put(uint32_t *dev, uint32_t v, cudaStream_t s) { CK(cudaMemcpyAsync(dev, &v, 4, cudaMemcpyHostToDevice, s)); }
void get(uint32_t *pinned, const uint32_t *dev, cudaStream_t s) {
    CK(cudaMemcpyAsync(pinned, dev, 4, cudaMemcpyDeviceToHost, s));
}

void store(uint32_t *p, uint32_t v) { p[threadIdx.x] = v; }

/* every thread of the block passes both barriers */
void bars_even(uint32_t *p, uint32_t v) {
    __syncthreads();
    p[threadIdx.x] = v;
    __syncthreads();
}

/* each thread reads what its neighbour wrote to shared memory before the barrier: right only
 * if every thread of the block wrote before any read, whatever order they run in */
void bars_neighbour(uint32_t *p, uint32_t v) {
    __shared__ uint32_t sh[64];
    sh[threadIdx.x] = v + blockIdx.x * 100 + threadIdx.x;
    __syncthreads();
    uint32_t got = sh[(threadIdx.x + 1) % blockDim.x];
    __syncthreads(); /* the next block's writes wait for this one's reads */
    p[blockIdx.x * blockDim.x + threadIdx.x] = got;
}

/* thread 1 returns before the barrier the others wait at */
void bars_divergent(uint32_t *p, uint32_t v) {
    if (threadIdx.x == 1) return;
    __syncthreads();
    p[threadIdx.x] = v;
}

} // namespace

int main() {
    cudaStream_t A, B;
    CK(cudaStreamCreateWithFlags(&A, cudaStreamNonBlocking));
    CK(cudaStreamCreateWithFlags(&B, cudaStreamNonBlocking));

    { /* a: no wait between the streams */
        uint32_t *d = dev_words(1), *p = pinned_words(1);
        put(d, 0x11111111u, A);
        get(p, d, B);
        CK(cudaStreamSynchronize(B));
        check(*p == STALE, "a1", "B copies D (written on A) without a wait; sync B only: A's write has not run");
        CK(cudaStreamSynchronize(A));
        get(p, d, B);
        CK(cudaStreamSynchronize(B));
        check(*p == 0x11111111u, "a2", "after sync A, B's copy sees A's write");
        CK(cudaFree(d));
        CK(cudaFreeHost(p));
    }

    { /* b: event record on A + wait on B */
        cudaEvent_t ev;
        CK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
        uint32_t *d = dev_words(1), *p = pinned_words(1), *later = pinned_words(1);
        put(d, 0x22222222u, A);
        CK(cudaEventRecord(ev, A));
        get(later, d, A); /* A's work after the record: nothing waits for it */
        CK(cudaStreamWaitEvent(B, ev, 0));
        get(p, d, B);
        CK(cudaStreamSynchronize(B));
        check(*p == 0x22222222u, "b1", "B waits on A's event; sync B only: B's copy sees A's write");
        check(*later == STALE, "b2", "sync B ran A only up to the record: A's later copy has not run");
        CK(cudaStreamSynchronize(A));
        check(*later == 0x22222222u, "b3", "sync A runs A's later copy");
        CK(cudaEventDestroy(ev));
        CK(cudaFree(d));
        CK(cudaFreeHost(p));
        CK(cudaFreeHost(later));
    }

    { /* c: cudaEventSynchronize runs the event's stream up to the record, nothing else */
        cudaEvent_t ev;
        CK(cudaEventCreate(&ev));
        uint32_t *d = dev_words(1), *p = pinned_words(1), *pb = pinned_words(1);
        put(d, 0x33333333u, A);
        get(p, d, A);
        CK(cudaEventRecord(ev, A));
        get(pb, d, B); /* queued on B afterwards */
        CK(cudaEventSynchronize(ev));
        check(*p == 0x33333333u, "c1", "cudaEventSynchronize: the pinned copy recorded before the event has run");
        check(*pb == STALE, "c2", "cudaEventSynchronize: B's later copy has not run");
        CK(cudaEventQuery(ev));
        CK(cudaStreamSynchronize(B));
        check(*pb == 0x33333333u, "c3", "sync B runs it");
        CK(cudaEventDestroy(ev));
        CK(cudaFree(d));
        CK(cudaFreeHost(p));
        CK(cudaFreeHost(pb));
    }

    { /* d: a wait depends on the record current at the call, not on a later re-record */
        cudaEvent_t ev;
        CK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
        uint32_t *d1 = dev_words(1), *d2 = dev_words(1), *p1 = pinned_words(1), *p2 = pinned_words(1);
        put(d1, 0x44444444u, A);
        CK(cudaEventRecord(ev, A)); /* record 1 */
        CK(cudaStreamWaitEvent(B, ev, 0));
        put(d2, 0x45454545u, A);
        get(p2, d2, A);
        CK(cudaEventRecord(ev, A)); /* record 2, after the wait was issued */
        get(p1, d1, B);
        CK(cudaStreamSynchronize(B));
        check(*p1 == 0x44444444u, "d1", "B waited on record 1: sees the write before it");
        check(*p2 == STALE, "d2", "the work between record 1 and record 2 did not run for B's wait");
        CK(cudaEventSynchronize(ev));
        check(*p2 == 0x45454545u, "d3", "cudaEventSynchronize runs up to record 2");
        CK(cudaEventDestroy(ev));
        CK(cudaFree(d1));
        CK(cudaFree(d2));
        CK(cudaFreeHost(p1));
        CK(cudaFreeHost(p2));
    }

    { /* e: the legacy stream */
        cudaStream_t S; /* blocking */
        CK(cudaStreamCreate(&S));
        uint32_t *d = dev_words(2), *p = pinned_words(2), *later = pinned_words(2);
        const uint32_t two[2] = {0x55555555u, 0x55555555u};
        CK(cudaMemcpyAsync(d, two, sizeof two, cudaMemcpyHostToDevice, S));
        CK(cudaMemsetAsync(d, 0, 4, 0)); /* stream 0 after S's write */
        CK(cudaMemcpyAsync(p, d, 8, cudaMemcpyDeviceToHost, 0));
        CK(cudaMemcpyAsync(later, d, 8, cudaMemcpyDeviceToHost, S));
        CK(cudaStreamSynchronize(0));
        check(p[0] == 0 && p[1] == 0x55555555u, "e1",
              "cudaMemsetAsync on stream 0 after work on a blocking stream sees that work (legacy barrier)");
        check(later[0] == STALE && later[1] == STALE, "e2", "sync stream 0 only: S's work issued after it has not run");

        uint32_t *d2 = dev_words(1), *p2 = pinned_words(1), *p3 = pinned_words(1);
        put(d2, 0x56565656u, 0);
        get(p3, d2, A);
        CK(cudaStreamSynchronize(A));
        check(*p3 == STALE, "e3", "a non-blocking stream's copy does not wait for earlier stream-0 work");
        get(p2, d2, S);
        CK(cudaStreamSynchronize(S));
        check(*p2 == 0x56565656u, "e4", "a blocking stream's copy waits for earlier stream-0 work");
        CK(cudaStreamDestroy(S));
        CK(cudaFree(d));
        CK(cudaFree(d2));
        CK(cudaFreeHost(p));
        CK(cudaFreeHost(later));
        CK(cudaFreeHost(p2));
        CK(cudaFreeHost(p3));
    }

    { /* g: the other synchronization points */
        uint32_t *d = dev_words(1), *p = pinned_words(1), host = 0;
        put(d, 0x66666666u, A);
        get(p, d, B);
        CK(cudaMemcpyAsync(&host, d, 4, cudaMemcpyDeviceToHost, A)); /* pageable: done at return */
        check(host == 0x66666666u && *p == STALE, "g1",
              "an async copy into pageable memory runs its own stream up to the copy, not B");
        CK(cudaStreamQuery(B));
        check(*p == 0x66666666u, "g2", "cudaStreamQuery(B) runs B");

        uint32_t *w = dev_words(1);
        put(w, 1u, A);
        put(w, 2u, B); /* issued later, no ordering between the two */
        CK(cudaDeviceSynchronize());
        CK(cudaMemcpy(&host, w, 4, cudaMemcpyDeviceToHost));
        check(host == 1u, "g3", "cudaDeviceSynchronize runs the latest-issued independent work first");
        CK(cudaFree(d));
        CK(cudaFree(w));
        CK(cudaFreeHost(p));
    }

    { /* h: stream capture may not wait on an event recorded outside it */
        cudaStream_t C;
        cudaEvent_t ev;
        CK(cudaStreamCreateWithFlags(&C, cudaStreamNonBlocking));
        CK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
        CK(cudaEventRecord(ev, A));
        CK(cudaStreamBeginCapture(C, cudaStreamCaptureModeThreadLocal));
        cudaError_t we = cudaStreamWaitEvent(C, ev, 0);
        cudaGraph_t graph = nullptr;
        cudaError_t ee = cudaStreamEndCapture(C, &graph);
        check(we == cudaErrorStreamCaptureIsolation && ee == cudaErrorStreamCaptureInvalidated && !graph, "h1",
              "a capturing stream waiting on an outside event: cudaErrorStreamCaptureIsolation, capture invalidated");
        (void)cudaGetLastError();
        CK(cudaEventDestroy(ev));
        CK(cudaStreamDestroy(C));
    }

    { /* k: a __syncthreads() that one thread of the block skips aborts the run, naming the kernel
       * (a GPU leaves it undefined; the emulator used to pair the barrier with the skipping
       * thread's end of block and go on); one that every thread reaches runs */
        uint32_t *d = dev_words(4), *p = pinned_words(4);
        CUK_LAUNCH_SYNC(bars_even, 2, 4, 0, A)(d, 5u);
        CK(cudaGetLastError());
        CK(cudaMemcpyAsync(p, d, 16, cudaMemcpyDeviceToHost, A));
        CK(cudaStreamSynchronize(A));
        check(p[0] == 5 && p[3] == 5, "k1", "a kernel whose threads all reach its two barriers runs");
        uint32_t *d3 = dev_words(3 * 64), *p3 = pinned_words(3 * 64);
        CUK_LAUNCH_SYNC(bars_neighbour, 3, 64, 0, A)(d3, 7u);
        CK(cudaGetLastError());
        CK(cudaMemcpyAsync(p3, d3, 3 * 64 * 4, cudaMemcpyDeviceToHost, A));
        CK(cudaStreamSynchronize(A));
        int neighbours_ok = 1;
        for (uint32_t b = 0; b < 3; b++)
            for (uint32_t t = 0; t < 64; t++) neighbours_ok &= p3[b * 64 + t] == 7u + b * 100 + (t + 1) % 64;
        check(neighbours_ok, "k3", "after a barrier each thread reads what its neighbour wrote before it, in every block");
        fflush(stdout);
        FILE *log = tmpfile(); /* the child's stderr */
        int fd = fileno(log);
        pid_t pid = fork();
        if (pid == 0) {
            dup2(fd, 2);
            CUK_LAUNCH_SYNC(bars_divergent, 1, 4, 0, A)(d, 6u);
            (void)cudaStreamSynchronize(A);
            _exit(0);
        }
        int st = 0;
        waitpid(pid, &st, 0);
        char buf[512] = "";
        ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
        buf[n > 0 ? n : 0] = 0;
        fclose(log);
        check(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT && strstr(buf, "bars_divergent") &&
                  strstr(buf, "not every thread of the block reaches"),
              "k2", "a barrier one thread skips aborts the run with the kernel's name");
    }

    { /* f (last: it kills the context): a sticky error discards the work queued on every stream */
        uint32_t *d = dev_words(1), *p = pinned_words(1);
        static uint32_t not_device[32];
        put(d, 0x77777777u, A);
        get(p, d, A);
        CUK_LAUNCH(store, 1, 1, 0, B)(not_device, 1u); /* faults when it runs */
        CK(cudaGetLastError());
        cudaError_t eb = cudaStreamSynchronize(B);
        check(eb == cudaErrorIllegalAddress, "f1", "sync B: B's kernel faults (illegal address)");
        cudaError_t ea = cudaStreamSynchronize(A);
        check(ea == cudaErrorIllegalAddress && *p == STALE, "f2",
              "the error is sticky and A's queued copies were discarded, never run");
        check(not_device[0] == 0, "f3", "the faulting kernel did not run");
    }

    printf("%s\n", g_failed ? "test_cuemu_streams: FAILED" : "test_cuemu_streams: all checks passed");
    return g_failed;
}
