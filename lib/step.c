/* Argument checks and the enqueue sequence of a step: efl_step -> efl_reduce -> efl_apply. */
#include <math.h>
#include <stdint.h>

#include "internal.h"

#define EFL_APPLY_FORWARD 0 /* kernels/efl_apply.cl */
#define EFL_APPLY_STEP 1
#define EFL_APPLY_REFRESH 2
#define EFL_APPLY_ACCUMULATE 3

efl_status efl_check_queue(const efl_loss *loss, cl_command_queue queue)
{
    if (!queue)
        return EFL_ERROR_NULL_HANDLE;
    cl_context c = NULL;
    cl_device_id d = NULL;
    if (clGetCommandQueueInfo(queue, CL_QUEUE_CONTEXT, sizeof c, &c, NULL) != CL_SUCCESS ||
        clGetCommandQueueInfo(queue, CL_QUEUE_DEVICE, sizeof d, &d, NULL) != CL_SUCCESS)
        return EFL_ERROR_QUEUE_MISMATCH; /* not a queue at all */
    if (c != loss->ctx->context || d != loss->ctx->device)
        return EFL_ERROR_QUEUE_MISMATCH;
    return EFL_OK;
}

static efl_status check_wait_list(cl_uint n, const cl_event *list)
{
    return (n > 0) != (list != NULL) ? EFL_ERROR_INVALID_WAIT_LIST : EFL_OK;
}

static efl_status check_buffer(const efl_loss *loss, cl_mem m, size_t need)
{
    if (!m)
        return EFL_ERROR_NULL_BUFFER;
    cl_context c = NULL;
    size_t size = 0;
    if (clGetMemObjectInfo(m, CL_MEM_CONTEXT, sizeof c, &c, NULL) != CL_SUCCESS ||
        clGetMemObjectInfo(m, CL_MEM_SIZE, sizeof size, &size, NULL) != CL_SUCCESS)
        return EFL_ERROR_NULL_BUFFER; /* not a buffer object */
    if (c != loss->ctx->context)
        return EFL_ERROR_BUFFER_CONTEXT;
    return size < need ? EFL_ERROR_BUFFER_TOO_SMALL : EFL_OK;
}

/* Scratch for nblocks row blocks; a new buffer replaces a smaller one (OpenCL keeps the old one
 * alive until the work already enqueued on it has finished). */
static efl_status ensure_partials(efl_loss *loss, size_t nblocks)
{
    if (nblocks <= loss->partials_blocks)
        return EFL_OK;
    cl_int e1 = CL_SUCCESS, e2 = CL_SUCCESS;
    cl_mem p = clCreateBuffer(loss->ctx->context, CL_MEM_READ_WRITE, nblocks * 3 * loss->cpad * sizeof(float), NULL, &e1);
    cl_mem f = clCreateBuffer(loss->ctx->context, CL_MEM_READ_WRITE, nblocks * sizeof(cl_uint), NULL, &e2);
    if (e1 != CL_SUCCESS || e2 != CL_SUCCESS) {
        if (p)
            clReleaseMemObject(p);
        if (f)
            clReleaseMemObject(f);
        return efl_cl_fail(loss->ctx, e1 != CL_SUCCESS ? e1 : e2);
    }
    if (loss->partials)
        clReleaseMemObject(loss->partials);
    if (loss->block_flags)
        clReleaseMemObject(loss->block_flags);
    loss->partials = p;
    loss->block_flags = f;
    loss->partials_blocks = nblocks;
    return EFL_OK;
}

#define ARG(k, i, v) (err |= clSetKernelArg((k), (i), sizeof(v), &(v)))

typedef struct {
    cl_command_queue queue;
    int out_of_order;
    cl_uint nwait;
    const cl_event *wait;
    cl_event prev;
} chain;

/* Enqueue one kernel of the sequence: the first waits for the caller's list, the last signals
 * the caller's event; on an out-of-order queue, events keep our kernels in order. */
static cl_int chain_kernel(chain *ch, cl_kernel k, cl_uint dims, const size_t *global, const size_t *local, int last,
                           cl_event *user_event)
{
    cl_event ev = NULL;
    cl_event *out = last ? user_event : (ch->out_of_order ? &ev : NULL);
    cl_uint nwait = ch->prev ? 1 : ch->nwait;
    const cl_event *wait = ch->prev ? &ch->prev : ch->wait;
    cl_int err = clEnqueueNDRangeKernel(ch->queue, k, dims, NULL, global, local, nwait, wait, out);
    if (ch->prev)
        clReleaseEvent(ch->prev);
    ch->prev = ev;
    return err;
}

/* Arguments of efl_apply (kernels/efl_apply.cl) for one mode. */
static cl_int set_apply_args(efl_loss *loss, cl_mem loss_out, float scale, cl_int mode, float stat_scale)
{
    const cl_uint cc = loss->cfg.num_classes, cpad = loss->cpad;
    const float gamma_b = loss->cfg.gamma, s = loss->cfg.scale_factor;
    cl_kernel k = loss->k_apply;
    cl_int err = CL_SUCCESS;
    ARG(k, 0, loss->step_stats);
    ARG(k, 1, loss->step_flags);
    ARG(k, 2, cpad);
    ARG(k, 3, loss->state);
    ARG(k, 4, loss->table);
    ARG(k, 5, loss_out);
    ARG(k, 6, loss->info);
    ARG(k, 7, cc);
    ARG(k, 8, gamma_b);
    ARG(k, 9, s);
    ARG(k, 10, scale);
    ARG(k, 11, mode);
    ARG(k, 12, stat_scale);
    return err;
}

typedef enum { OP_FORWARD, OP_STEP, OP_ACCUMULATE } op_kind;

/* Every enqueue: check everything, then efl_step (or its collect mode) -> efl_reduce ->
 * efl_apply on the caller's queue. `x` is the logits, or the caller's gradient for
 * OP_ACCUMULATE; `scale` is the loss scale (loss_weight / normalizer or loss_weight), or
 * 1 / grad_scale for OP_ACCUMULATE. */
static efl_status enqueue(efl_loss *loss, cl_command_queue queue, op_kind op, efl_dtype dtype, cl_mem x,
                          cl_mem labels, size_t n, float scale, cl_mem loss_out, cl_mem grad, cl_uint nwait,
                          const cl_event *wait, cl_event *event)
{
    const size_t esize = efl_dtype_size(dtype);
    if (esize == 0)
        return EFL_ERROR_INVALID_DTYPE;
    const size_t C = loss->cfg.num_classes;
    /* Rows and row blocks are uint on the device. */
    if (n > (size_t)INT32_MAX || n > SIZE_MAX / sizeof(float) / C)
        return EFL_ERROR_TOO_MANY_ROWS;
    efl_status st;
    if (op != OP_ACCUMULATE && (st = check_buffer(loss, loss_out, sizeof(float))) != EFL_OK)
        return st;
    if (n > 0) {
        if ((st = check_buffer(loss, x, n * C * esize)) != EFL_OK)
            return st;
        if ((st = check_buffer(loss, labels, n * sizeof(cl_int))) != EFL_OK)
            return st;
        if (op == OP_STEP && (st = check_buffer(loss, grad, n * C * esize)) != EFL_OK)
            return st;
    }
    cl_kernel k_step = NULL;
    if ((st = efl_loss_step_kernel(loss, dtype, &k_step)) != EFL_OK)
        return st;

    const cl_uint rows = efl_device_rows_per_block(&loss->ctx->info, &loss->kp, n);
    const cl_uint nblocks = (cl_uint)((n + rows - 1) / rows);
    if ((st = ensure_partials(loss, nblocks > 0 ? nblocks : 1)) != EFL_OK)
        return st;

    cl_command_queue_properties props = 0;
    clGetCommandQueueInfo(queue, CL_QUEUE_PROPERTIES, sizeof props, &props, NULL);
    chain ch = {queue, (props & CL_QUEUE_OUT_OF_ORDER_EXEC_MODE_ENABLE) != 0, nwait, wait, NULL};

    const cl_uint cn = (cl_uint)n, cc = (cl_uint)C, cpad = loss->cpad;
    const int has_alpha = loss->cfg.alpha >= 0.0f;
    const float alpha_pos = has_alpha ? loss->cfg.alpha : 1.0f;
    const float alpha_neg = has_alpha ? 1.0f - loss->cfg.alpha : 1.0f;
    const cl_int ignore = loss->cfg.ignore_index, conv = (cl_int)loss->cfg.labels;
    const cl_int write_grad = op == OP_STEP, collect = op == OP_ACCUMULATE;
    const float grad_scale = op == OP_ACCUMULATE ? 1.0f : scale;
    const cl_mem no_grad = NULL;
    cl_int err = CL_SUCCESS;

    if (n > 0) {
        cl_kernel k = k_step;
        ARG(k, 0, x);
        ARG(k, 1, labels);
        if (op == OP_STEP)
            ARG(k, 2, grad);
        else
            ARG(k, 2, no_grad);
        ARG(k, 3, loss->partials);
        ARG(k, 4, loss->block_flags);
        ARG(k, 5, loss->table);
        ARG(k, 6, cn);
        ARG(k, 7, cc);
        ARG(k, 8, cpad);
        ARG(k, 9, rows);
        ARG(k, 10, alpha_pos);
        ARG(k, 11, alpha_neg);
        ARG(k, 12, grad_scale);
        ARG(k, 13, ignore);
        ARG(k, 14, conv);
        ARG(k, 15, write_grad);
        ARG(k, 16, collect);
        const size_t global[2] = {cpad / loss->kp.vw, nblocks}, local[2] = {loss->kp.wgx, 1};
        if (err == CL_SUCCESS)
            err = chain_kernel(&ch, k, 2, global, local, 0, event);
        if (err != CL_SUCCESS)
            return efl_cl_fail(loss->ctx, err);
    }
    {
        cl_kernel k = loss->k_reduce;
        ARG(k, 0, loss->partials);
        ARG(k, 1, loss->block_flags);
        ARG(k, 2, nblocks);
        ARG(k, 3, cc);
        ARG(k, 4, cpad);
        ARG(k, 5, loss->step_stats);
        ARG(k, 6, loss->step_flags);
        const size_t global = cpad, local = loss->kp.wgx;
        if (err == CL_SUCCESS)
            err = chain_kernel(&ch, k, 1, &global, &local, 0, event);
        if (err != CL_SUCCESS)
            return efl_cl_fail(loss->ctx, err);
    }
    {
        /* n == 0: loss 0 and no state change, so the state update is not run at all. */
        const cl_int mode = n == 0 || op == OP_FORWARD ? EFL_APPLY_FORWARD
                            : op == OP_STEP            ? EFL_APPLY_STEP
                                                       : EFL_APPLY_ACCUMULATE;
        const size_t global = loss->kp.apply_wg;
        /* an accumulate writes no loss: info stands in for the loss buffer */
        err = set_apply_args(loss, op == OP_ACCUMULATE ? loss->info : loss_out, op == OP_ACCUMULATE ? 1.0f : scale,
                             mode, op == OP_ACCUMULATE ? scale : 1.0f);
        if (err == CL_SUCCESS)
            err = chain_kernel(&ch, loss->k_apply, 1, &global, &global, 1, event);
        if (err != CL_SUCCESS)
            return efl_cl_fail(loss->ctx, err);
    }
    return EFL_OK;
}

/* Checks shared by step and forward, then the enqueue. */
static efl_status enqueue_loss(efl_loss *loss, cl_command_queue queue, efl_dtype dtype, cl_mem logits, cl_mem labels,
                               size_t n, float normalizer, efl_reduction reduction, cl_mem loss_out, cl_mem grad,
                               op_kind op, cl_uint nwait, const cl_event *wait, cl_event *event)
{
    if (!loss)
        return EFL_ERROR_NULL_HANDLE;
    efl_status st = efl_check_queue(loss, queue);
    if (st == EFL_OK)
        st = check_wait_list(nwait, wait);
    if (st != EFL_OK)
        return st;
    if (!isfinite(normalizer) || normalizer <= 0.0f)
        return EFL_ERROR_INVALID_NORMALIZER;
    if (reduction != EFL_REDUCTION_MEAN && reduction != EFL_REDUCTION_SUM)
        return EFL_ERROR_INVALID_REDUCTION;
    const float scale = reduction == EFL_REDUCTION_MEAN ? loss->cfg.loss_weight / normalizer : loss->cfg.loss_weight;
    if (!isfinite(scale))
        return EFL_ERROR_INVALID_NORMALIZER; /* loss_weight / normalizer overflows float */
    return enqueue(loss, queue, op, dtype, logits, labels, n, scale, loss_out, grad, nwait, wait, event);
}

efl_status efl_enqueue_step_typed(efl_loss *loss, cl_command_queue queue, efl_dtype dtype, cl_mem logits,
                                  cl_mem labels, size_t n, float normalizer, efl_reduction reduction, cl_mem loss_out,
                                  cl_mem grad_out, cl_uint num_events_in_wait_list, const cl_event *event_wait_list,
                                  cl_event *event)
{
    return enqueue_loss(loss, queue, dtype, logits, labels, n, normalizer, reduction, loss_out, grad_out, OP_STEP,
                        num_events_in_wait_list, event_wait_list, event);
}

efl_status efl_enqueue_forward_typed(efl_loss *loss, cl_command_queue queue, efl_dtype dtype, cl_mem logits,
                                     cl_mem labels, size_t n, float normalizer, efl_reduction reduction,
                                     cl_mem loss_out, cl_uint num_events_in_wait_list,
                                     const cl_event *event_wait_list, cl_event *event)
{
    return enqueue_loss(loss, queue, dtype, logits, labels, n, normalizer, reduction, loss_out, NULL, OP_FORWARD,
                        num_events_in_wait_list, event_wait_list, event);
}

efl_status efl_enqueue_step(efl_loss *loss, cl_command_queue queue, cl_mem logits, cl_mem labels, size_t n,
                            float normalizer, efl_reduction reduction, cl_mem loss_out, cl_mem grad_out,
                            cl_uint num_events_in_wait_list, const cl_event *event_wait_list, cl_event *event)
{
    return efl_enqueue_step_typed(loss, queue, EFL_DTYPE_FLOAT32, logits, labels, n, normalizer, reduction, loss_out,
                                  grad_out, num_events_in_wait_list, event_wait_list, event);
}

efl_status efl_enqueue_forward(efl_loss *loss, cl_command_queue queue, cl_mem logits, cl_mem labels, size_t n,
                               float normalizer, efl_reduction reduction, cl_mem loss_out,
                               cl_uint num_events_in_wait_list, const cl_event *event_wait_list, cl_event *event)
{
    return efl_enqueue_forward_typed(loss, queue, EFL_DTYPE_FLOAT32, logits, labels, n, normalizer, reduction,
                                     loss_out, num_events_in_wait_list, event_wait_list, event);
}

efl_status efl_enqueue_accumulate(efl_loss *loss, cl_command_queue queue, efl_dtype dtype, cl_mem grad, cl_mem labels,
                                  size_t n, float grad_scale, cl_uint num_events_in_wait_list,
                                  const cl_event *event_wait_list, cl_event *event)
{
    if (!loss)
        return EFL_ERROR_NULL_HANDLE;
    efl_status st = efl_check_queue(loss, queue);
    if (st == EFL_OK)
        st = check_wait_list(num_events_in_wait_list, event_wait_list);
    if (st != EFL_OK)
        return st;
    if (!isfinite(grad_scale) || grad_scale <= 0.0f || !isfinite(1.0f / grad_scale))
        return EFL_ERROR_INVALID_PARAMETER;
    return enqueue(loss, queue, OP_ACCUMULATE, dtype, grad, labels, n, 1.0f / grad_scale, NULL, NULL,
                   num_events_in_wait_list, event_wait_list, event);
}

/* The table from the state, after the host wrote or reset it. */
efl_status efl_refresh_table(efl_loss *loss, cl_command_queue queue)
{
    const size_t global = loss->kp.apply_wg;
    /* refresh mode writes no loss: info stands in for the loss buffer */
    cl_int err = set_apply_args(loss, loss->info, 1.0f, EFL_APPLY_REFRESH, 1.0f);
    if (err == CL_SUCCESS)
        err = clEnqueueNDRangeKernel(queue, loss->k_apply, 1, NULL, &global, &global, 0, NULL, NULL);
    return err == CL_SUCCESS ? EFL_OK : efl_cl_fail(loss->ctx, err);
}

efl_status efl_loss_query_status(efl_loss *loss, cl_command_queue queue)
{
    if (!loss)
        return EFL_ERROR_NULL_HANDLE;
    efl_status st = efl_check_queue(loss, queue);
    if (st != EFL_OK)
        return st;
    cl_uint flags = 0;
    cl_int err = clEnqueueReadBuffer(queue, loss->info, CL_TRUE, 0, sizeof flags, &flags, 0, NULL, NULL);
    if (err != CL_SUCCESS)
        return efl_cl_fail(loss->ctx, err);
    /* bit 0: an invalid label (efl_step), bit 1: a non-finite value (efl_apply) */
    return (flags & 1u) ? EFL_ERROR_INVALID_LABEL : (flags & 2u) ? EFL_ERROR_NONFINITE : EFL_OK;
}

efl_status efl_loss_skipped_steps(efl_loss *loss, cl_command_queue queue, uint32_t *count)
{
    if (!loss || !count)
        return EFL_ERROR_NULL_HANDLE;
    efl_status st = efl_check_queue(loss, queue);
    if (st != EFL_OK)
        return st;
    cl_uint info[2] = {0, 0};
    cl_int err = clEnqueueReadBuffer(queue, loss->info, CL_TRUE, 0, sizeof info, info, 0, NULL, NULL);
    if (err != CL_SUCCESS)
        return efl_cl_fail(loss->ctx, err);
    *count = info[1];
    return EFL_OK;
}
