/* route_colorize.c: POST /colorize, from the received body to the colorized image.
 *
 * Stages (DESIGN.md "Threads"):
 *   1. HTTP thread, when the body is complete: query parameters, body -> image bytes
 *      (body.c), sniff (415), probe the header (422 too_many_pixels before any pixel is
 *      allocated), decode, cz_cjob_prepare at the requested render; the body and the decoded
 *      pixels are freed before the job waits.
 *   2. The connection is suspended, then the job is submitted to the batcher (deadline =
 *      request start + server.request_deadline_ms). Suspending BEFORE submitting means the
 *      done callback can never resume a connection that is not suspended yet. When submit
 *      refuses (queue_full / shutting_down) the HTTP thread resumes the connection itself.
 *   3. Device thread: the job's done callback marks the job done and resumes the connection;
 *      nothing else.
 *   4. HTTP thread, called again by MHD after the resume: cz_cjob_finish + encode, 200 with
 *      Server-Timing and X-Batch-Size; or the job's error (504 deadline, 503 shutting down,
 *      500 backend failure).
 *
 * Lifetime of the job (srv_work), the classic suspend/resume hazard: the batcher holds a
 * pointer to it from submit until its done callback returns, and MHD may complete (and free)
 * the request at any time (client gone, daemon stopping). So srv_work is refcounted: one
 * reference for the connection (dropped by srv_colorize_release from the request-completed
 * callback) and one for the batcher (taken just before submit, dropped at the end of the done
 * callback, or at once when submit refuses). `conn` is cleared under the work's mutex when
 * the request completes, and the done callback resumes only under that mutex, so it never
 * touches a connection MHD has freed. The last reference frees the job's buffers.
 *
 * The model pointer is read under s->cz_lock (read side) around prepare and finish: a
 * SIGHUP reload swaps it under the write lock (main.c), and only accepts a model of the same
 * depth and channel layout, so a job prepared for the old model runs unchanged on the new.
 * Tested by the integration tests (tests/integration/) and by hand with curl. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "body.h"
#include "log.h"
#include "server.h"

struct srv_work {
    cz_bjob job;
    atomic_int refs;
    pthread_mutex_t mu;
    struct MHD_Connection *conn; /* guarded by mu; NULL once the request completed */
    bool done;                   /* guarded by mu: the batcher is finished with job */
    cz_status submit_status;     /* set by the HTTP thread when submit refused the job */
    cz_image_format out_fmt;
    int quality;
};

static void work_unref(srv_work *w) {
    if (atomic_fetch_sub(&w->refs, 1) != 1) return;
    cz_cjob_release(&w->job.cjob);
    pthread_mutex_destroy(&w->mu);
    free(w);
}

void srv_colorize_release(srv_req *req) {
    srv_work *w = req->work;
    if (!w) return;
    req->work = NULL;
    pthread_mutex_lock(&w->mu);
    w->conn = NULL;
    pthread_mutex_unlock(&w->mu);
    work_unref(w);
}

/* Device thread (or whichever thread the batcher completes a job on). */
static void on_job_done(cz_bjob *job, void *user) {
    srv_work *w = user;
    srv_metrics_batch(job->t_start_ns, job->t_end_ns, job->batch_size);
    pthread_mutex_lock(&w->mu);
    w->done = true;
    if (w->conn) MHD_resume_connection(w->conn);
    pthread_mutex_unlock(&w->mu);
    work_unref(w);
}

static double ms_between(int64_t a, int64_t b) { return b > a ? (double)(b - a) * 1e-6 : 0.0; }

static enum MHD_Result bad_param(struct MHD_Connection *c, srv_req *req, const char *msg) {
    return srv_send_error(c, req, 400, "invalid_parameter", msg, 0, NULL);
}

/* Stage 1 + 2. */
static enum MHD_Result start_job(srv_ctx *s, struct MHD_Connection *c, srv_req *req) {
    if (atomic_load(&s->draining))
        return srv_send_error(c, req, 503, "shutting_down", "the server is shutting down", 5, NULL);

    cz_image_format out_fmt = CZ_FMT_UNKNOWN;
    int quality = s->cfg.jpeg_quality, render = s->cfg.render;
    char msg[256];
    if (srv_param_format(MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "format"), &out_fmt, msg,
                         sizeof msg) ||
        srv_param_quality(MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "quality"), &quality, msg,
                          sizeof msg) ||
        srv_param_render(MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "render"), s->cfg.max_render,
                         &render, msg, sizeof msg))
        return bad_param(c, req, msg);

    const uint8_t *img_bytes = NULL;
    size_t img_len = 0;
    const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
    srv_body_result br = srv_body_extract(ct, req->body, req->body_len, &img_bytes, &img_len, msg, sizeof msg);
    if (br == SRV_BODY_MISSING_IMAGE) return srv_send_error(c, req, 400, "missing_image", msg, 0, NULL);
    if (br != SRV_BODY_OK) return srv_send_error(c, req, 400, "bad_multipart", msg, 0, NULL);
    if ((int64_t)img_len > s->cfg.max_input_bytes) {
        snprintf(msg, sizeof msg, "image of %zu bytes exceeds image.max_input_bytes (%" PRId64 ")", img_len,
                 s->cfg.max_input_bytes);
        return srv_send_error(c, req, 413, "payload_too_large", msg, 0, NULL);
    }
    cz_image_format in_fmt = cz_image_sniff(img_bytes, img_len);
    if (in_fmt == CZ_FMT_UNKNOWN)
        return srv_send_error(c, req, 415, "unsupported_media_type", "the upload is neither a JPEG nor a PNG image",
                              0, NULL);

    /* Header first: the pixel limit is enforced before anything is allocated. */
    int64_t t0 = cz_now_ns();
    int w = 0, h = 0;
    cz_status st = cz_image_probe(img_bytes, img_len, &s->limits, &w, &h, NULL);
    if (st != CZ_OK) return srv_send_status(c, req, st, cz_error_detail());
    cz_image img;
    memset(&img, 0, sizeof img);
    st = cz_image_decode(img_bytes, img_len, &s->limits, &img, NULL);
    if (st != CZ_OK) return srv_send_status(c, req, st, cz_error_detail());
    /* The compressed bytes are not needed any more: free them before waiting in the queue. */
    free(req->body);
    req->body = NULL;
    req->body_len = req->body_cap = 0;

    srv_work *wk = calloc(1, sizeof *wk);
    if (!wk) {
        cz_image_free(&img);
        return srv_send_error(c, req, 500, "internal_error", "out of memory", 0, NULL);
    }
    pthread_mutex_init(&wk->mu, NULL);
    atomic_init(&wk->refs, 1); /* the connection's reference */
    wk->out_fmt = out_fmt != CZ_FMT_UNKNOWN ? out_fmt : in_fmt;
    wk->quality = quality;
    req->work = wk;

    pthread_rwlock_rdlock(&s->cz_lock);
    st = cz_cjob_prepare(s->cz, &img, render, &wk->job.cjob);
    pthread_rwlock_unlock(&s->cz_lock);
    cz_image_free(&img);
    req->ms_decode = ms_between(t0, cz_now_ns());
    if (st == CZ_ERR_INVALID_ARG) {
        snprintf(msg, sizeof msg, "render: %s", cz_error_detail());
        return bad_param(c, req, msg);
    }
    if (st != CZ_OK) return srv_send_status(c, req, st, cz_error_detail());

    int64_t deadline = req->t_start_ns + (int64_t)s->cfg.request_deadline_ms * 1000000;
    if (cz_now_ns() >= deadline) {
        snprintf(msg, sizeof msg, "server.request_deadline_ms (%d ms) passed before inference started",
                 s->cfg.request_deadline_ms);
        return srv_send_error(c, req, 504, "deadline_exceeded", msg, 0, NULL);
    }
    wk->job.deadline_ns = deadline;
    wk->job.done = on_job_done;
    wk->job.user = wk;
    wk->conn = c;

    MHD_suspend_connection(c);
    atomic_fetch_add(&wk->refs, 1); /* the batcher's reference */
    st = cz_batcher_submit(s->batcher, &wk->job);
    if (st != CZ_OK) {
        /* Refused: the done callback will not run, so give its reference back, and resume
         * the connection ourselves; the next call answers with the refusal. */
        atomic_fetch_sub(&wk->refs, 1);
        pthread_mutex_lock(&wk->mu);
        wk->submit_status = st;
        wk->done = true;
        pthread_mutex_unlock(&wk->mu);
        MHD_resume_connection(c);
    }
    return MHD_YES;
}

/* Stage 4. */
static enum MHD_Result finish_job(srv_ctx *s, struct MHD_Connection *c, srv_req *req) {
    srv_work *wk = req->work;
    pthread_mutex_lock(&wk->mu);
    bool done = wk->done;
    pthread_mutex_unlock(&wk->mu);
    if (!done) {
        /* Not expected (MHD calls us only after a resume, and only the done callback or a
         * refused submit resumes). Wait again: the done callback resumes us later. */
        CZ_LOGW("colorize", "handler called before the job completed; suspending again");
        MHD_suspend_connection(c);
        return MHD_YES;
    }
    char msg[320];
    if (wk->submit_status == CZ_ERR_QUEUE_FULL) {
        snprintf(msg, sizeof msg, "the inference queue is full (server.max_queue = %d)", s->cfg.max_queue);
        return srv_send_error(c, req, 503, "queue_full", msg, 1, NULL);
    }
    if (wk->submit_status != CZ_OK) return srv_send_status(c, req, wk->submit_status, "the server is shutting down");

    cz_bjob *job = &wk->job;
    if (job->t_start_ns > 0) {
        req->ms_queue = ms_between(job->t_submit_ns, job->t_start_ns);
        req->ms_infer = ms_between(job->t_start_ns, job->t_end_ns);
    } else {
        req->ms_queue = ms_between(job->t_submit_ns, job->t_end_ns);
    }
    if (job->status != CZ_OK) {
        if (job->status == CZ_ERR_DEADLINE) {
            snprintf(msg, sizeof msg, "server.request_deadline_ms (%d ms) passed before inference started",
                     s->cfg.request_deadline_ms);
            return srv_send_error(c, req, 504, "deadline_exceeded", msg, 0, NULL);
        }
        if (job->status == CZ_ERR_SHUTTING_DOWN)
            return srv_send_error(c, req, 503, "shutting_down", "the server shut down before the image was processed",
                                  5, NULL);
        snprintf(msg, sizeof msg, "inference failed: %s", job->error[0] ? job->error : cz_strerror(job->status));
        /* the device could not take the image (503 out_of_memory) or is gone (503 unavailable:
         * the daemon is about to exit for a restart); both are worth retrying elsewhere */
        if (job->status == CZ_ERR_NOMEM || job->status == CZ_ERR_UNAVAILABLE)
            return srv_send_status(c, req, job->status, msg);
        return srv_send_error(c, req, 500, "internal_error", msg, 0, NULL);
    }

    int64_t t0 = cz_now_ns();
    cz_image out;
    memset(&out, 0, sizeof out);
    cz_status st = CZ_OK;
    const int on_device = job->cjob.rgb_ready;
    if (on_device) { /* the device merged it: encode straight from the job's page-locked block */
        out = (cz_image){.width = job->cjob.geom.src_w, .height = job->cjob.geom.src_h, .channels = 3,
                         .px = job->cjob.rgb};
    } else {
        pthread_rwlock_rdlock(&s->cz_lock);
        st = cz_cjob_finish(s->cz, &job->cjob, &out);
        pthread_rwlock_unlock(&s->cz_lock);
        cz_cjob_release(&job->cjob); /* the batcher is done with it; free early */
        if (st != CZ_OK) {
            snprintf(msg, sizeof msg, "building the output failed: %s", cz_error_detail());
            return srv_send_error(c, req, 500, "internal_error", msg, 0, NULL);
        }
    }
    srv_metrics_finished(on_device);
    uint8_t *enc = NULL;
    size_t enc_len = 0;
    st = cz_image_encode_ex(&out, wk->out_fmt, wk->quality, s->cfg.jpeg_optimize, &enc, &enc_len);
    if (on_device)
        cz_cjob_release(&job->cjob); /* out pointed into its block */
    else
        cz_image_free(&out);
    if (st != CZ_OK) {
        snprintf(msg, sizeof msg, "encoding the output failed: %s", cz_error_detail());
        return srv_send_error(c, req, 500, "internal_error", msg, 0, NULL);
    }
    req->ms_encode = ms_between(t0, cz_now_ns());

    char timing[160], batch[16];
    snprintf(timing, sizeof timing, "decode;dur=%.2f, queue;dur=%.2f, infer;dur=%.2f, encode;dur=%.2f", req->ms_decode,
             req->ms_queue, req->ms_infer, req->ms_encode);
    snprintf(batch, sizeof batch, "%d", job->batch_size);
    const char *hdr[] = {"Server-Timing", timing, "X-Batch-Size", batch, NULL};
    return srv_send(c, req, 200, wk->out_fmt == CZ_FMT_PNG ? "image/png" : "image/jpeg", enc, enc_len, true, hdr);
}

enum MHD_Result srv_route_colorize(srv_ctx *s, struct MHD_Connection *c, srv_req *req) {
    if (!req->work) return start_job(s, c, req);
    /* A job exists: either it failed before submission (answered already, so MHD does not
     * call again) or we were resumed. */
    return finish_job(s, c, req);
}
