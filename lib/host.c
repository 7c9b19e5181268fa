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

/* Where the device works in host memory (CPU runtimes), the caller's arrays become the buffers
 * (CL_MEM_USE_HOST_PTR): no copy of the logits in or of the gradient out. Returns NULL where
 * that does not apply or fails; the caller then stages. EFL_HOST_STAGING=1 forces staging (the
 * path discrete GPUs take), so that it is tested on any machine. */
static int zero_copy_possible(const efl_loss *loss)
{
    const char *force = getenv("EFL_HOST_STAGING");
    return loss->ctx->info.host_unified && !(force && *force && strcmp(force, "0") != 0);
}

static cl_mem wrap_host(efl_loss *loss, const void *ptr, size_t bytes, cl_mem_flags access)
{
    if (!zero_copy_possible(loss))
        return NULL;
    cl_int err = CL_SUCCESS;
    cl_mem m = clCreateBuffer(loss->ctx->context, access | CL_MEM_USE_HOST_PTR, bytes, (void *)ptr, &err);
    return err == CL_SUCCESS ? m : NULL;
}

typedef enum { HOST_FORWARD, HOST_STEP, HOST_ACCUMULATE } host_op;

static void release_wrapped(cl_mem *x, cl_mem *y, cl_mem *g)
{
    cl_mem *all[3] = {x, y, g};
    for (int i = 0; i < 3; ++i) {
        if (*all[i])
            clReleaseMemObject(*all[i]);
        *all[i] = NULL;
    }
}

/* One call on host arrays: x is the logits, or the caller's gradient for HOST_ACCUMULATE. */
static efl_status run_host(efl_loss *loss, host_op op, efl_dtype dtype, const void *x_host, const int32_t *labels,
                           size_t n, float normalizer, efl_reduction reduction, float grad_scale, float *loss_out,
                           void *grad_out)
{
    if (!loss)
        return EFL_ERROR_NULL_HANDLE;
    if (op != HOST_ACCUMULATE && reduction == EFL_REDUCTION_NONE) {
        /* loss_out holds one loss per element: the general path */
        efl_host_batch b;
        efl_host_batch_init(&b);
        b.dtype = dtype;
        b.rows = n;
        b.input[0] = x_host;
        b.grad[0] = grad_out;
        b.loss_elems[0] = loss_out;
        b.labels = labels;
        b.reduction = reduction;
        b.normalizer = normalizer;
        return efl_loss_run_host(loss, op == HOST_STEP ? EFL_OP_STEP : EFL_OP_FORWARD, &b);
    }
    if ((op != HOST_ACCUMULATE && !loss_out) || (n > 0 && (!x_host || !labels)))
        return EFL_ERROR_NULL_BUFFER;
    const size_t C = loss->cfg.num_classes, esize = efl_dtype_size(dtype);
    if (esize == 0)
        return EFL_ERROR_INVALID_DTYPE;
    if (n > SIZE_MAX / sizeof(float) / C)
        return EFL_ERROR_TOO_MANY_ROWS;
    /* outputs overlapping the inputs or each other: refused before anything is written */
    const efl_host_range ranges[4] = {{x_host, n * C * esize, 0},
                                      {labels, n * sizeof(int32_t), 0},
                                      {op == HOST_STEP ? grad_out : NULL, n * C * esize, 1},
                                      {op != HOST_ACCUMULATE ? loss_out : NULL, sizeof(float), 1}};
    efl_status st = efl_check_host_ranges(ranges, 4);
    if (st == EFL_OK)
        st = ensure_staging(loss, 1);
    if (st != EFL_OK)
        return st;
    cl_command_queue q = loss->host_queue;
    cl_int err = CL_SUCCESS;
    const int want_grad = op == HOST_STEP && grad_out;

    /* Zero copy where the device shares host memory, else staging buffers (sized for float32,
     * so any storage type fits). */
    cl_mem x = NULL, y = NULL, g = NULL;
    /* the caller's gradient is written while the step runs: only a step that cannot be refused
     * may write it there (efl_host_step_cannot_be_refused) */
    const size_t count = n * C;
    const int direct = n > 0 && zero_copy_possible(loss) && labels_valid(loss, labels, n) &&
                       (!want_grad ||
                        efl_host_step_cannot_be_refused(loss, q, dtype, &x_host, &count, 1, n, normalizer, reduction));
    if (direct) {
        x = wrap_host(loss, x_host, n * C * esize, CL_MEM_READ_ONLY);
        y = x ? wrap_host(loss, labels, n * sizeof(cl_int), CL_MEM_READ_ONLY) : NULL;
        g = y && want_grad ? wrap_host(loss, grad_out, n * C * esize, CL_MEM_WRITE_ONLY) : NULL;
    }
    const int zero_copy = y && (g || !want_grad);
    if (!zero_copy) {
        release_wrapped(&x, &y, &g);
        if ((st = ensure_staging(loss, n > 0 ? n : 1)) != EFL_OK)
            return st;
        if (n > 0) {
            err = clEnqueueWriteBuffer(q, loss->host_x, CL_FALSE, 0, n * C * esize, x_host, 0, NULL, NULL);
            if (err == CL_SUCCESS)
                err = clEnqueueWriteBuffer(q, loss->host_y, CL_FALSE, 0, n * sizeof(cl_int), labels, 0, NULL, NULL);
            if (err != CL_SUCCESS)
                return efl_cl_fail(loss->ctx, err);
        }
    } else if (op == HOST_STEP && !grad_out && (st = ensure_staging(loss, n)) != EFL_OK) {
        release_wrapped(&x, &y, &g);
        return st;
    }
    cl_mem bx = zero_copy ? x : loss->host_x, by = zero_copy ? y : loss->host_y, bg = g ? g : loss->host_g;
    switch (op) {
    case HOST_STEP:
        st = efl_enqueue_step_typed(loss, q, dtype, bx, by, n, normalizer, reduction, loss->host_loss, bg, 0, NULL,
                                    NULL);
        break;
    case HOST_FORWARD:
        st = efl_enqueue_forward_typed(loss, q, dtype, bx, by, n, normalizer, reduction, loss->host_loss, 0, NULL,
                                       NULL);
        break;
    case HOST_ACCUMULATE:
        st = efl_enqueue_accumulate(loss, q, dtype, bx, by, n, grad_scale, 0, NULL, NULL);
        break;
    }
    if (st == EFL_OK)
        st = efl_loss_query_status(loss, q); /* waits; only a step the device accepted goes out */
    float value = 0.0f;
    if (st == EFL_OK && op != HOST_ACCUMULATE) {
        err = clEnqueueReadBuffer(q, loss->host_loss, CL_TRUE, 0, sizeof value, &value, 0, NULL, NULL);
        if (err == CL_SUCCESS && g) {
            /* map and unmap: what makes the gradient visible in the caller's array by the spec */
            void *p = clEnqueueMapBuffer(q, g, CL_TRUE, CL_MAP_READ, 0, n * C * esize, 0, NULL, NULL, &err);
            if (err == CL_SUCCESS)
                err = clEnqueueUnmapMemObject(q, g, p, 0, NULL, NULL);
            if (err == CL_SUCCESS)
                err = clFinish(q);
        } else if (err == CL_SUCCESS && want_grad && n > 0) {
            err = clEnqueueReadBuffer(q, loss->host_g, CL_TRUE, 0, n * C * esize, grad_out, 0, NULL, NULL);
        }
        if (err != CL_SUCCESS)
            st = efl_cl_fail(loss->ctx, err);
    } else if (st != EFL_OK) {
        clFinish(q); /* the staging writes read the caller's arrays */
    }
    release_wrapped(&x, &y, &g);
    if (st == EFL_OK && loss_out)
        *loss_out = value;
    return st;
}

efl_status efl_loss_step_host_typed(efl_loss *loss, efl_dtype dtype, const void *logits, const int32_t *labels,
                                    size_t n, float normalizer, efl_reduction reduction, float *loss_out,
                                    void *grad_out)
{
    return run_host(loss, HOST_STEP, dtype, logits, labels, n, normalizer, reduction, 1.0f, loss_out, grad_out);
}

efl_status efl_loss_forward_host_typed(efl_loss *loss, efl_dtype dtype, const void *logits, const int32_t *labels,
                                       size_t n, float normalizer, efl_reduction reduction, float *loss_out)
{
    return run_host(loss, HOST_FORWARD, dtype, logits, labels, n, normalizer, reduction, 1.0f, loss_out, NULL);
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
    return run_host(loss, HOST_ACCUMULATE, dtype, grad, labels, n, 1.0f, EFL_REDUCTION_SUM, grad_scale, NULL, NULL);
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
    if (st == EFL_OK)
        st = clFinish(loss->host_queue) == CL_SUCCESS ? EFL_OK : EFL_ERROR_OPENCL;
    return st;
}

efl_status efl_loss_reset_state_host(efl_loss *loss)
{
    if (!loss)
        return EFL_ERROR_NULL_HANDLE;
    efl_status st = ensure_queue(loss);
    if (st == EFL_OK)
        st = efl_loss_reset_state(loss, loss->host_queue);
    if (st == EFL_OK)
        st = clFinish(loss->host_queue) == CL_SUCCESS ? EFL_OK : EFL_ERROR_OPENCL;
    return st;
}

void efl_host_batch_init(efl_host_batch *batch)
{
    if (!batch)
        return;
    memset(batch, 0, sizeof *batch);
    EFL_BATCH_DEFAULTS(batch);
}

/* A buffer for a host input: the array itself where the device shares host memory, else a copy. */
static cl_mem host_input(efl_loss *loss, const void *ptr, size_t bytes, cl_int *err)
{
    cl_mem m = wrap_host(loss, ptr, bytes, CL_MEM_READ_ONLY);
    if (m)
        return m;
    return clCreateBuffer(loss->ctx->context, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, bytes, (void *)ptr, err);
}

/* efl_loss_run_host: buffers made for this call. Outputs are device buffers read back only once
 * the device has accepted the batch, so a refused one leaves the caller's arrays as they were;
 * or, where the device shares host memory and the batch cannot be refused
 * (efl_host_step_cannot_be_refused), the caller's arrays themselves (host_output). */
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

/* An output buffer of elements' bytes: the caller's array where the batch goes direct, else
 * one of the device's (also where the caller passed none: a NULL grad still needs a place). */
static cl_mem host_output(efl_loss *loss, int direct, void *array, size_t bytes, cl_int *err)
{
    cl_mem m = direct && array ? wrap_host(loss, array, bytes, CL_MEM_WRITE_ONLY) : NULL;
    return m ? m : clCreateBuffer(loss->ctx->context, CL_MEM_WRITE_ONLY, bytes, NULL, err);
}

/* Where an output buffer is the caller's array, a map and unmap is what makes the device's writes
 * visible there (by the OpenCL spec); else a read. */
static cl_int deliver(cl_command_queue q, cl_mem m, void *array, size_t bytes)
{
    void *host = NULL;
    cl_int err = clGetMemObjectInfo(m, CL_MEM_HOST_PTR, sizeof host, &host, NULL);
    if (err != CL_SUCCESS || host != array)
        return err != CL_SUCCESS ? err : clEnqueueReadBuffer(q, m, CL_TRUE, 0, bytes, array, 0, NULL, NULL);
    void *p = clEnqueueMapBuffer(q, m, CL_TRUE, CL_MAP_READ, 0, bytes, 0, NULL, NULL, &err);
    return err == CL_SUCCESS ? clEnqueueUnmapMemObject(q, m, p, 0, NULL, NULL) : err;
}

static efl_status read_outputs(efl_loss *loss, efl_op op, const efl_host_batch *b, const host_buffers *hb,
                               const size_t *elems, uint32_t levels, size_t rows)
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
    if (!efl_op_collects(op) && b->reduction != EFL_REDUCTION_NONE && err == CL_SUCCESS)
        err = clEnqueueReadBuffer(q, hb->loss, CL_TRUE, 0, sizeof(float), b->loss, 0, NULL, NULL);
    return err == CL_SUCCESS ? EFL_OK : efl_cl_fail(loss->ctx, err);
}

efl_status efl_loss_run_host(efl_loss *loss, efl_op op, const efl_host_batch *b)
{
    if (!loss || !b)
        return EFL_ERROR_NULL_HANDLE;
    /* the shape first, through the same checks as the device call */
    efl_batch bt;
    efl_batch_init(&bt);
    bt.layout = b->layout;
    bt.dtype = b->dtype;
    bt.rows = b->rows;
    bt.images = b->images;
    bt.anchors = b->anchors;
    bt.levels = b->levels;
    memcpy(bt.height, b->height, sizeof bt.height);
    memcpy(bt.width, b->width, sizeof bt.width);
    bt.reduction = b->reduction;
    bt.normalizer = b->normalizer;
    bt.grad_scale = b->grad_scale;
    size_t elems[EFL_MAX_LEVELS], rows = 0;
    uint32_t levels = 0;
    const size_t esize = efl_dtype_size(b->dtype);
    if (esize == 0)
        return EFL_ERROR_INVALID_DTYPE;
    efl_status st = efl_batch_shape(loss, &bt, elems, &levels, &rows);
    if (st != EFL_OK)
        return st;
    const int elementwise = !efl_op_collects(op) && b->reduction == EFL_REDUCTION_NONE;
    if (!efl_op_collects(op) && !elementwise && !b->loss)
        return EFL_ERROR_NULL_BUFFER;
    for (uint32_t l = 0; l < levels && rows > 0; ++l)
        if (!b->input[l] || (elementwise && !b->loss_elems[l]))
            return EFL_ERROR_NULL_BUFFER;
    if (rows > 0 && !b->labels)
        return EFL_ERROR_NULL_BUFFER;
    if ((st = efl_check_host_batch_aliasing(op, b, elems, levels, rows)) != EFL_OK)
        return st;
    if ((st = ensure_queue(loss)) != EFL_OK)
        return st;

    host_buffers hb;
    memset(&hb, 0, sizeof hb);
    cl_context cx = loss->ctx->context;
    cl_int err = CL_SUCCESS;
    const int writes = efl_op_writes_grad(op) || elementwise;
    const int direct = writes && rows > 0 && zero_copy_possible(loss) && labels_valid(loss, b->labels, rows) &&
                efl_host_step_cannot_be_refused(loss, loss->host_queue, b->dtype, b->input, elems, levels, rows,
                                                b->normalizer, b->reduction);
    if (rows > 0)
        hb.labels = host_input(loss, b->labels, rows * sizeof(cl_int), &err);
    for (uint32_t l = 0; l < levels && rows > 0 && err == CL_SUCCESS; ++l) {
        hb.in[l] = host_input(loss, b->input[l], elems[l] * esize, &err);
        if (efl_op_writes_grad(op) && err == CL_SUCCESS)
            hb.grad[l] = host_output(loss, direct, b->grad[l], elems[l] * esize, &err);
        if (elementwise && err == CL_SUCCESS)
            hb.elems[l] = host_output(loss, direct, b->loss_elems[l], elems[l] * esize, &err);
    }
    if (err == CL_SUCCESS)
        hb.loss = clCreateBuffer(cx, CL_MEM_READ_WRITE, sizeof(float), NULL, &err);
    if (err != CL_SUCCESS) {
        release_host_buffers(&hb);
        return efl_cl_fail(loss->ctx, err);
    }
    memcpy(bt.input, hb.in, sizeof bt.input);
    memcpy(bt.grad, hb.grad, sizeof bt.grad);
    memcpy(bt.loss_elems, hb.elems, sizeof bt.loss_elems);
    bt.labels = hb.labels;
    bt.loss = hb.loss;
    st = efl_enqueue_batch(loss, loss->host_queue, op, &bt, 0, NULL, NULL);
    if (st == EFL_OK)
        st = efl_loss_query_status(loss, loss->host_queue); /* waits; only an accepted batch goes out */
    if (st == EFL_OK)
        st = read_outputs(loss, op, b, &hb, elems, levels, rows);
    clFinish(loss->host_queue);
    release_host_buffers(&hb);
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
