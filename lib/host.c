/* Host-array conveniences: the same calls for users without OpenCL plumbing, through a queue
 * and staging buffers the loss owns. */
#include <stdlib.h>
#include <string.h>

#include "efl_labels.h"
#include "internal.h"

_Static_assert(EFL_CONV_REFERENCE == EFL_LABELS_REFERENCE && EFL_CONV_ZERO_BASED == EFL_LABELS_ZERO_BASED,
               "kernels/efl_labels.h and include/efl/efl.h disagree on the label conventions");

static efl_status ensure_queue(efl_loss *loss)
{
    if (loss->host_queue)
        return EFL_OK;
    cl_int err = CL_SUCCESS;
    loss->host_queue = clCreateCommandQueue(loss->ctx->context, loss->ctx->device, 0, &err);
    return err == CL_SUCCESS ? EFL_OK : efl_cl_fail(loss->ctx, err);
}

/* Staging buffers for n rows, grown on demand. */
static efl_status ensure_staging(efl_loss *loss, size_t n)
{
    efl_status st = ensure_queue(loss);
    if (st != EFL_OK)
        return st;
    cl_int err = CL_SUCCESS;
    if (!loss->host_loss) {
        loss->host_loss = clCreateBuffer(loss->ctx->context, CL_MEM_READ_WRITE, sizeof(float), NULL, &err);
        if (err != CL_SUCCESS)
            return efl_cl_fail(loss->ctx, err);
    }
    if (n <= loss->host_rows)
        return EFL_OK;
    const size_t C = loss->cfg.num_classes;
    if (n > SIZE_MAX / sizeof(float) / C)
        return EFL_ERROR_TOO_MANY_ROWS;
    cl_mem *bufs[3] = {&loss->host_x, &loss->host_y, &loss->host_g};
    const size_t bytes[3] = {n * C * sizeof(float), n * sizeof(cl_int), n * C * sizeof(float)};
    cl_mem fresh[3] = {NULL, NULL, NULL};
    for (int i = 0; i < 3; ++i) {
        fresh[i] = clCreateBuffer(loss->ctx->context, CL_MEM_READ_WRITE, bytes[i], NULL, &err);
        if (err != CL_SUCCESS) {
            for (int k = 0; k < i; ++k)
                clReleaseMemObject(fresh[k]);
            return efl_cl_fail(loss->ctx, err);
        }
    }
    for (int i = 0; i < 3; ++i) {
        if (*bufs[i])
            clReleaseMemObject(*bufs[i]);
        *bufs[i] = fresh[i];
    }
    loss->host_rows = n;
    return EFL_OK;
}

/* The labels checked on the host with the kernels' own rule, so that a zero-copy step, which
 * writes straight into the caller's gradient, never starts on a batch the device would refuse. */
static int labels_valid(const efl_loss *loss, const int32_t *labels, size_t n)
{
    const int C = (int)loss->cfg.num_classes, ignore = loss->cfg.ignore_index, conv = (int)loss->cfg.labels;
    for (size_t i = 0; i < n; ++i)
        if (efl_decode_label(labels[i], C, ignore, conv) == EFL_ROW_INVALID)
            return 0;
    return 1;
}

/* Whether the device works in host memory (CPU runtimes), so that the caller's arrays can become
 * the buffers (CL_MEM_USE_HOST_PTR): no copy of the logits in or of the gradient out.
 * EFL_HOST_STAGING=1 forces staging (the path discrete GPUs take), so that it is tested on any
 * machine. */
static int zero_copy_possible(const efl_loss *loss)
{
    const char *force = getenv("EFL_HOST_STAGING");
    return loss->ctx->info.host_unified && !(force && *force && strcmp(force, "0") != 0);
}

/* The caller's array as a buffer; NULL where zero copy does not apply or the wrap fails (the
 * caller then stages). */
static cl_mem wrap_host(efl_loss *loss, const void *ptr, size_t bytes, cl_mem_flags access)
{
    if (!zero_copy_possible(loss))
        return NULL;
    cl_int err = CL_SUCCESS;
    cl_mem m = clCreateBuffer(loss->ctx->context, access | CL_MEM_USE_HOST_PTR, bytes, (void *)ptr, &err);
    return err == CL_SUCCESS ? m : NULL;
}

/* Where an output buffer is the caller's array, a map and unmap is what makes the device's writes
 * visible there (by the OpenCL spec); else a blocking read into the array. The unmap is
 * enqueued: the queue must finish before the call returns. */
static cl_int deliver(cl_command_queue q, cl_mem m, void *array, size_t bytes)
{
    void *host = NULL;
    cl_int err = clGetMemObjectInfo(m, CL_MEM_HOST_PTR, sizeof host, &host, NULL);
    if (err != CL_SUCCESS || host != array)
        return err != CL_SUCCESS ? err : clEnqueueReadBuffer(q, m, CL_TRUE, 0, bytes, array, 0, NULL, NULL);
    void *p = clEnqueueMapBuffer(q, m, CL_TRUE, CL_MAP_READ, 0, bytes, 0, NULL, NULL, &err);
    return err == CL_SUCCESS ? clEnqueueUnmapMemObject(q, m, p, 0, NULL, NULL) : err;
}

/* ------------------------------------------------------------------------------------------
 * The rows layout: efl_loss_step_host, _forward_host, _accumulate_host and their typed forms.
 * Stages: check (nothing enqueued or written on a refusal) -> stage the inputs -> enqueue and
 * wait for the device's verdict -> deliver the outputs of an accepted call. They run on the
 * loss's persistent staging buffers, or on the caller's arrays themselves (zero copy). */

/* One call: x is the logits, or the caller's gradient for EFL_OP_ACCUMULATE. */
typedef struct {
    efl_op op; /* EFL_OP_STEP, _FORWARD or _ACCUMULATE */
    efl_dtype dtype;
    const void *x;
    const int32_t *labels;
    size_t n;
    float normalizer;
    efl_reduction reduction;
    float grad_scale;
    float *loss_out; /* one float: the reduced loss (not for accumulate) */
    void *grad_out;  /* a step's gradient; may be NULL */
} host_call;

/* What the kernels of one call read and write. */
typedef struct {
    cl_mem wrapped[3]; /* the caller's x, labels, gradient as buffers (zero copy); released after */
    cl_mem x, labels, grad;
    size_t bytes; /* of x and of the gradient: n * C elements of the dtype */
    int want_grad; /* a step with a gradient array to fill */
} host_call_buffers;

static void release_wrapped(host_call_buffers *hb)
{
    for (int i = 0; i < 3; ++i) {
        if (hb->wrapped[i])
            clReleaseMemObject(hb->wrapped[i]);
        hb->wrapped[i] = NULL;
    }
}

/* Everything the host can check. A refusal here has enqueued and written nothing. */
static efl_status check_host_call(const efl_loss *loss, const host_call *c)
{
    if ((c->op != EFL_OP_ACCUMULATE && !c->loss_out) || (c->n > 0 && (!c->x || !c->labels)))
        return EFL_ERROR_NULL_BUFFER;
    const size_t C = loss->cfg.num_classes, esize = efl_dtype_size(c->dtype);
    if (esize == 0)
        return EFL_ERROR_INVALID_DTYPE;
    if (c->n > SIZE_MAX / sizeof(float) / C)
        return EFL_ERROR_TOO_MANY_ROWS;
    const size_t bytes = c->n * C * esize;
    const efl_host_range ranges[4] = {{c->x, bytes, 0},
                                      {c->labels, c->n * sizeof(int32_t), 0},
                                      {c->op == EFL_OP_STEP ? c->grad_out : NULL, bytes, 1},
                                      {c->op != EFL_OP_ACCUMULATE ? c->loss_out : NULL, sizeof(float), 1}};
    return efl_check_host_ranges(ranges, 4);
}

/* The inputs on the device, and where the gradient goes. The caller's arrays themselves (zero
 * copy) where the device shares host memory, the labels are valid and, for a gradient array,
 * efl_host_step_cannot_be_refused has proved that the device cannot refuse the step (the
 * gradient is written while the step runs); otherwise non-blocking copies into the staging
 * buffers (sized for float32, so any storage type fits), which read the caller's arrays until
 * the queue finishes. */
static efl_status stage_host_call(efl_loss *loss, const host_call *c, host_call_buffers *hb)
{
    memset(hb, 0, sizeof *hb);
    const size_t count = c->n * loss->cfg.num_classes;
    hb->bytes = count * efl_dtype_size(c->dtype);
    hb->want_grad = c->op == EFL_OP_STEP && c->grad_out;
    efl_status st = ensure_staging(loss, 1); /* the queue and the loss output */
    if (st != EFL_OK)
        return st;
    cl_command_queue q = loss->host_queue;
    const int direct = c->n > 0 && zero_copy_possible(loss) && labels_valid(loss, c->labels, c->n) &&
                       (!hb->want_grad || efl_host_step_cannot_be_refused(loss, q, c->dtype, &c->x, &count, 1, c->n,
                                                                          c->normalizer, c->reduction));
    if (direct) {
        cl_mem *w = hb->wrapped;
        w[0] = wrap_host(loss, c->x, hb->bytes, CL_MEM_READ_ONLY);
        w[1] = w[0] ? wrap_host(loss, c->labels, c->n * sizeof(cl_int), CL_MEM_READ_ONLY) : NULL;
        w[2] = w[1] && hb->want_grad ? wrap_host(loss, c->grad_out, hb->bytes, CL_MEM_WRITE_ONLY) : NULL;
        if (w[1] && (w[2] || !hb->want_grad)) {
            /* a step without a gradient array still needs a place for its gradient */
            if (c->op == EFL_OP_STEP && !c->grad_out && (st = ensure_staging(loss, c->n)) != EFL_OK)
                return st;
            hb->x = w[0];
            hb->labels = w[1];
            hb->grad = w[2] ? w[2] : loss->host_g;
            return EFL_OK;
        }
        release_wrapped(hb); /* a wrap failed: stage instead */
    }
    if ((st = ensure_staging(loss, c->n > 0 ? c->n : 1)) != EFL_OK)
        return st;
    hb->x = loss->host_x;
    hb->labels = loss->host_y;
    hb->grad = loss->host_g;
    if (c->n == 0)
        return EFL_OK;
    cl_int err = clEnqueueWriteBuffer(q, loss->host_x, CL_FALSE, 0, hb->bytes, c->x, 0, NULL, NULL);
    if (err == CL_SUCCESS)
        err = clEnqueueWriteBuffer(q, loss->host_y, CL_FALSE, 0, c->n * sizeof(cl_int), c->labels, 0, NULL, NULL);
    return err == CL_SUCCESS ? EFL_OK : efl_cl_fail(loss->ctx, err);
}

/* The call on the loss's queue, then the device's verdict (waits): EFL_OK only for a call the
 * device accepted. */
static efl_status enqueue_host_call(efl_loss *loss, const host_call *c, const host_call_buffers *hb)
{
    cl_command_queue q = loss->host_queue;
    efl_status st = EFL_OK;
    switch (c->op) {
    case EFL_OP_STEP:
        st = efl_enqueue_step_typed(loss, q, c->dtype, hb->x, hb->labels, c->n, c->normalizer, c->reduction,
                                    loss->host_loss, hb->grad, 0, NULL, NULL);
        break;
    case EFL_OP_FORWARD:
        st = efl_enqueue_forward_typed(loss, q, c->dtype, hb->x, hb->labels, c->n, c->normalizer, c->reduction,
                                       loss->host_loss, 0, NULL, NULL);
        break;
    default:
        st = efl_enqueue_accumulate(loss, q, c->dtype, hb->x, hb->labels, c->n, c->grad_scale, 0, NULL, NULL);
        break;
    }
    return st == EFL_OK ? efl_loss_query_status(loss, q) : st;
}

/* An accepted call's outputs: the gradient into the caller's array (read from staging, or made
 * visible where it was written in place), the loss value into *value (the caller stores it once
 * the queue has finished). */
static efl_status deliver_host_call(efl_loss *loss, const host_call *c, const host_call_buffers *hb, float *value)
{
    if (c->op == EFL_OP_ACCUMULATE)
        return EFL_OK;
    cl_command_queue q = loss->host_queue;
    cl_int err = clEnqueueReadBuffer(q, loss->host_loss, CL_TRUE, 0, sizeof *value, value, 0, NULL, NULL);
    if (err == CL_SUCCESS && hb->want_grad && c->n > 0)
        err = deliver(q, hb->grad, c->grad_out, hb->bytes);
    return err == CL_SUCCESS ? EFL_OK : efl_cl_fail(loss->ctx, err);
}

/* EFL_REDUCTION_NONE: the general path (efl_loss_run_host). */
static efl_status run_host_elementwise(efl_loss *loss, const host_call *c)
{
    efl_host_batch b;
    efl_host_batch_init(&b);
    b.dtype = c->dtype;
    b.rows = c->n;
    b.input[0] = c->x;
    b.grad[0] = c->grad_out;
    b.loss_elems[0] = c->loss_out;
    b.labels = c->labels;
    b.reduction = c->reduction;
    b.normalizer = c->normalizer;
    return efl_loss_run_host(loss, c->op, &b);
}

static efl_status run_host(efl_loss *loss, const host_call *c)
{
    if (!loss)
        return EFL_ERROR_NULL_HANDLE;
    if (c->op != EFL_OP_ACCUMULATE && c->reduction == EFL_REDUCTION_NONE)
        return run_host_elementwise(loss, c); /* loss_out holds one loss per element */
    efl_status st = check_host_call(loss, c);
    if (st != EFL_OK)
        return st;
    host_call_buffers hb;
    float value = 0.0f;
    st = stage_host_call(loss, c, &hb);
    if (st == EFL_OK)
        st = enqueue_host_call(loss, c, &hb);
    if (st == EFL_OK)
        st = deliver_host_call(loss, c, &hb, &value);
    if (loss->host_queue) /* the staging copies read the caller's arrays; an unmap may be pending */
        st = efl_cl_finish(loss->ctx, loss->host_queue, st);
    release_wrapped(&hb);
    if (st == EFL_OK && c->loss_out)
        *c->loss_out = value;
    return st;
}

efl_status efl_loss_step_host_typed(efl_loss *loss, efl_dtype dtype, const void *logits, const int32_t *labels,
                                    size_t n, float normalizer, efl_reduction reduction, float *loss_out,
                                    void *grad_out)
{
    const host_call c = {EFL_OP_STEP, dtype, logits, labels, n, normalizer, reduction, 1.0f, loss_out, grad_out};
    return run_host(loss, &c);
}

efl_status efl_loss_forward_host_typed(efl_loss *loss, efl_dtype dtype, const void *logits, const int32_t *labels,
                                       size_t n, float normalizer, efl_reduction reduction, float *loss_out)
{
    const host_call c = {EFL_OP_FORWARD, dtype, logits, labels, n, normalizer, reduction, 1.0f, loss_out, NULL};
    return run_host(loss, &c);
}

efl_status efl_loss_step_host(efl_loss *loss, const float *logits, const int32_t *labels, size_t n, float normalizer,
                              efl_reduction reduction, float *loss_out, float *grad_out)
{
    return efl_loss_step_host_typed(loss, EFL_DTYPE_FLOAT32, logits, labels, n, normalizer, reduction, loss_out,
                                    grad_out);
}

efl_status efl_loss_forward_host(efl_loss *loss, const float *logits, const int32_t *labels, size_t n,
                                 float normalizer, efl_reduction reduction, float *loss_out)
{
    return efl_loss_forward_host_typed(loss, EFL_DTYPE_FLOAT32, logits, labels, n, normalizer, reduction, loss_out);
}

efl_status efl_loss_accumulate_host(efl_loss *loss, efl_dtype dtype, const void *grad, const int32_t *labels, size_t n,
                                    float grad_scale)
{
    const host_call c = {EFL_OP_ACCUMULATE, dtype, grad, labels, n, 1.0f, EFL_REDUCTION_SUM, grad_scale, NULL, NULL};
    return run_host(loss, &c);
}

efl_status efl_loss_skipped_steps_host(efl_loss *loss, uint32_t *count)
{
    if (!loss)
        return EFL_ERROR_NULL_HANDLE;
    efl_status st = ensure_queue(loss);
    return st == EFL_OK ? efl_loss_skipped_steps(loss, loss->host_queue, count) : st;
}

efl_status efl_loss_read_state_host(efl_loss *loss, double *pos_grad, double *neg_grad, double *pos_neg)
{
    if (!loss)
        return EFL_ERROR_NULL_HANDLE;
    efl_status st = ensure_queue(loss);
    return st == EFL_OK ? efl_loss_read_state(loss, loss->host_queue, pos_grad, neg_grad, pos_neg) : st;
}

efl_status efl_loss_write_state_host(efl_loss *loss, const double *pos_grad, const double *neg_grad,
                                     const double *pos_neg)
{
    if (!loss)
        return EFL_ERROR_NULL_HANDLE;
    efl_status st = ensure_queue(loss);
    if (st == EFL_OK)
        st = efl_loss_write_state(loss, loss->host_queue, pos_grad, neg_grad, pos_neg);
    return st == EFL_OK ? efl_cl_finish(loss->ctx, loss->host_queue, st) : st;
}

efl_status efl_loss_reset_state_host(efl_loss *loss)
{
    if (!loss)
        return EFL_ERROR_NULL_HANDLE;
    efl_status st = ensure_queue(loss);
    if (st == EFL_OK)
        st = efl_loss_reset_state(loss, loss->host_queue);
    return st == EFL_OK ? efl_cl_finish(loss->ctx, loss->host_queue, st) : st;
}

void efl_host_batch_init(efl_host_batch *batch)
{
    if (!batch)
        return;
    memset(batch, 0, sizeof *batch);
    EFL_BATCH_DEFAULTS(batch);
}

/* ------------------------------------------------------------------------------------------
 * efl_loss_run_host: any layout and op, on buffers made for the call. Stages as above: check ->
 * stage (inputs wrapped or copied, outputs placed) -> enqueue and wait for the verdict ->
 * deliver. An output is a device buffer read back only once the device has accepted the batch,
 * so a refused one leaves the caller's arrays as they were; or, where the device shares host
 * memory and efl_host_step_cannot_be_refused has proved that the batch cannot be refused, the
 * caller's array itself (host_output). */
typedef struct {
    cl_mem in[EFL_MAX_LEVELS], grad[EFL_MAX_LEVELS], elems[EFL_MAX_LEVELS], labels, loss;
} host_buffers;

static void release_host_buffers(host_buffers *hb)
{
    cl_mem *all = (cl_mem *)hb;
    for (size_t i = 0; i < sizeof *hb / sizeof(cl_mem); ++i)
        if (all[i])
            clReleaseMemObject(all[i]);
}

/* A buffer for a host input: the array itself where the device shares host memory, else a copy. */
static cl_mem host_input(efl_loss *loss, const void *ptr, size_t bytes, cl_int *err)
{
    cl_mem m = wrap_host(loss, ptr, bytes, CL_MEM_READ_ONLY);
    if (m)
        return m;
    return clCreateBuffer(loss->ctx->context, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, bytes, (void *)ptr, err);
}

/* An output buffer of elements' bytes: the caller's array where the batch goes direct, else
 * one of the device's (also where the caller passed none: a NULL grad still needs a place). */
static cl_mem host_output(efl_loss *loss, int direct, void *array, size_t bytes, cl_int *err)
{
    cl_mem m = direct && array ? wrap_host(loss, array, bytes, CL_MEM_WRITE_ONLY) : NULL;
    return m ? m : clCreateBuffer(loss->ctx->context, CL_MEM_WRITE_ONLY, bytes, NULL, err);
}

/* Whether the batch writes one loss per element (loss_elems) rather than a reduced loss. */
static int host_batch_elementwise(efl_op op, const efl_host_batch *b)
{
    return !efl_op_collects(op) && b->reduction == EFL_REDUCTION_NONE;
}

/* The batch's shape into bt (its buffers stay NULL) and through the device call's checks
 * (efl_batch_shape: elems per level, levels, rows), then the host arrays: present where needed,
 * no output overlapping an input or another output. A refusal here has enqueued and written
 * nothing. */
static efl_status check_host_batch(const efl_loss *loss, efl_op op, const efl_host_batch *b, efl_batch *bt,
                                   size_t *elems, uint32_t *levels, size_t *rows)
{
    efl_batch_init(bt);
    bt->layout = b->layout;
    bt->dtype = b->dtype;
    bt->rows = b->rows;
    bt->images = b->images;
    bt->anchors = b->anchors;
    bt->levels = b->levels;
    memcpy(bt->height, b->height, sizeof bt->height);
    memcpy(bt->width, b->width, sizeof bt->width);
    bt->reduction = b->reduction;
    bt->normalizer = b->normalizer;
    bt->grad_scale = b->grad_scale;
    if (efl_dtype_size(b->dtype) == 0)
        return EFL_ERROR_INVALID_DTYPE;
    efl_status st = efl_batch_shape(loss, bt, elems, levels, rows);
    if (st != EFL_OK)
        return st;
    const int elementwise = host_batch_elementwise(op, b);
    if (!efl_op_collects(op) && !elementwise && !b->loss)
        return EFL_ERROR_NULL_BUFFER;
    for (uint32_t l = 0; l < *levels && *rows > 0; ++l)
        if (!b->input[l] || (elementwise && !b->loss_elems[l]))
            return EFL_ERROR_NULL_BUFFER;
    if (*rows > 0 && !b->labels)
        return EFL_ERROR_NULL_BUFFER;
    return efl_check_host_batch_aliasing(op, b, elems, *levels, *rows);
}

/* The batch's buffers (hb), inputs and outputs; the outputs go direct (host_output) only where
 * the device shares host memory, the labels are valid and the batch cannot be refused. */
static efl_status stage_host_batch(efl_loss *loss, efl_op op, const efl_host_batch *b, const size_t *elems,
                                   uint32_t levels, size_t rows, host_buffers *hb)
{
    memset(hb, 0, sizeof *hb);
    const size_t esize = efl_dtype_size(b->dtype);
    const int elementwise = host_batch_elementwise(op, b);
    const int writes = efl_op_writes_grad(op) || elementwise;
    const int direct = writes && rows > 0 && zero_copy_possible(loss) && labels_valid(loss, b->labels, rows) &&
                       efl_host_step_cannot_be_refused(loss, loss->host_queue, b->dtype, b->input, elems, levels,
                                                       rows, b->normalizer, b->reduction);
    cl_int err = CL_SUCCESS;
    if (rows > 0)
        hb->labels = host_input(loss, b->labels, rows * sizeof(cl_int), &err);
    for (uint32_t l = 0; l < levels && rows > 0 && err == CL_SUCCESS; ++l) {
        hb->in[l] = host_input(loss, b->input[l], elems[l] * esize, &err);
        if (efl_op_writes_grad(op) && err == CL_SUCCESS)
            hb->grad[l] = host_output(loss, direct, b->grad[l], elems[l] * esize, &err);
        if (elementwise && err == CL_SUCCESS)
            hb->elems[l] = host_output(loss, direct, b->loss_elems[l], elems[l] * esize, &err);
    }
    if (err == CL_SUCCESS)
        hb->loss = clCreateBuffer(loss->ctx->context, CL_MEM_READ_WRITE, sizeof(float), NULL, &err);
    return err == CL_SUCCESS ? EFL_OK : efl_cl_fail(loss->ctx, err);
}

/* The batch on the loss's queue, then the device's verdict (waits): EFL_OK only for a batch the
 * device accepted. */
static efl_status enqueue_host_batch(efl_loss *loss, efl_op op, efl_batch *bt, const host_buffers *hb)
{
    memcpy(bt->input, hb->in, sizeof bt->input);
    memcpy(bt->grad, hb->grad, sizeof bt->grad);
    memcpy(bt->loss_elems, hb->elems, sizeof bt->loss_elems);
    bt->labels = hb->labels;
    bt->loss = hb->loss;
    const efl_status st = efl_enqueue_batch(loss, loss->host_queue, op, bt, 0, NULL, NULL);
    return st == EFL_OK ? efl_loss_query_status(loss, loss->host_queue) : st;
}

/* An accepted batch's outputs: gradients and per-element losses into the caller's arrays, the
 * reduced loss (if the op has one) into *value (stored once the queue has finished). */
static efl_status deliver_host_batch(efl_loss *loss, efl_op op, const efl_host_batch *b, const host_buffers *hb,
                                     const size_t *elems, uint32_t levels, size_t rows, float *value)
{
    cl_command_queue q = loss->host_queue;
    const size_t esize = efl_dtype_size(b->dtype);
    cl_int err = CL_SUCCESS;
    for (uint32_t l = 0; l < levels && rows > 0 && err == CL_SUCCESS; ++l) {
        if (hb->grad[l] && b->grad[l])
            err = deliver(q, hb->grad[l], b->grad[l], elems[l] * esize);
        if (hb->elems[l] && err == CL_SUCCESS)
            err = deliver(q, hb->elems[l], b->loss_elems[l], elems[l] * esize);
    }
    if (!efl_op_collects(op) && !host_batch_elementwise(op, b) && err == CL_SUCCESS)
        err = clEnqueueReadBuffer(q, hb->loss, CL_TRUE, 0, sizeof *value, value, 0, NULL, NULL);
    return err == CL_SUCCESS ? EFL_OK : efl_cl_fail(loss->ctx, err);
}

efl_status efl_loss_run_host(efl_loss *loss, efl_op op, const efl_host_batch *b)
{
    if (!loss || !b)
        return EFL_ERROR_NULL_HANDLE;
    efl_batch bt;
    size_t elems[EFL_MAX_LEVELS], rows = 0;
    uint32_t levels = 0;
    efl_status st = check_host_batch(loss, op, b, &bt, elems, &levels, &rows);
    if (st == EFL_OK)
        st = ensure_queue(loss);
    if (st != EFL_OK)
        return st;
    host_buffers hb;
    float value = 0.0f;
    st = stage_host_batch(loss, op, b, elems, levels, rows, &hb);
    if (st == EFL_OK)
        st = enqueue_host_batch(loss, op, &bt, &hb);
    if (st == EFL_OK)
        st = deliver_host_batch(loss, op, b, &hb, elems, levels, rows, &value);
    st = efl_cl_finish(loss->ctx, loss->host_queue, st); /* pending unmaps; wrapped inputs in use */
    release_host_buffers(&hb);
    if (st == EFL_OK && !efl_op_collects(op) && !host_batch_elementwise(op, b))
        *b->loss = value;
    return st;
}

efl_status efl_loss_read_statistics_host(efl_loss *loss, double *stats)
{
    if (!loss)
        return EFL_ERROR_NULL_HANDLE;
    efl_status st = ensure_queue(loss);
    return st == EFL_OK ? efl_loss_read_statistics(loss, loss->host_queue, stats) : st;
}

efl_status efl_loss_apply_statistics_host(efl_loss *loss, const double *stats)
{
    if (!loss)
        return EFL_ERROR_NULL_HANDLE;
    efl_status st = ensure_queue(loss);
    if (st == EFL_OK)
        st = efl_loss_apply_statistics(loss, loss->host_queue, stats);
    return st == EFL_OK ? efl_loss_query_status(loss, loss->host_queue) : st;
}
