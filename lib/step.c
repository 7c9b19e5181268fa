/* Argument checks and the enqueue sequence of a step: efl_step -> efl_reduce -> efl_apply. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "efl_protocol.h"
#include "internal.h"

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

/* Scratch grown on demand: a new buffer replaces a smaller one (OpenCL keeps the old one alive
 * until the work already enqueued on it has finished). */
static efl_status grow(efl_loss *loss, cl_mem *m, size_t bytes)
{
    cl_int err = CL_SUCCESS;
    cl_mem fresh = clCreateBuffer(loss->ctx->context, CL_MEM_READ_WRITE, bytes, NULL, &err);
    if (err != CL_SUCCESS)
        return efl_cl_fail(loss->ctx, err);
    if (*m)
        clReleaseMemObject(*m);
    *m = fresh;
    return EFL_OK;
}

/* Partials and flags for nblocks row blocks; the head layouts' labels for rows. */
static efl_status ensure_scratch(efl_loss *loss, size_t nblocks, size_t head_rows)
{
    efl_status st = EFL_OK;
    if (nblocks > loss->partials_blocks) {
        loss->partials_blocks = 0;
        if ((st = grow(loss, &loss->partials, nblocks * EFL_PARTIAL_ROWS * loss->cpad * sizeof(float))) != EFL_OK ||
            (st = grow(loss, &loss->block_flags, nblocks * sizeof(cl_uint))) != EFL_OK)
            return st;
        loss->partials_blocks = nblocks;
    }
    if (head_rows > loss->head_labels_rows) {
        loss->head_labels_rows = 0;
        if ((st = grow(loss, &loss->head_labels, head_rows * sizeof(cl_int))) != EFL_OK)
            return st;
        loss->head_labels_rows = head_rows;
    }
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
static cl_int set_apply_args(efl_loss *loss, cl_mem loss_out, float scale, cl_int mode, float stat_scale, cl_mem norm,
                             cl_int write_loss)
{
    const cl_uint cc = loss->cfg.num_classes, cpad = loss->cpad;
    const float gamma_b = loss->cfg.gamma, s = loss->cfg.scale_factor, mu = loss->cfg.mu, alpha = loss->cfg.alpha;
    const cl_int use_norm = norm != NULL;
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
    ARG(k, 13, norm);
    ARG(k, 14, use_norm);
    ARG(k, 15, write_loss);
    ARG(k, 16, mu);
    ARG(k, 17, alpha);
    return err;
}

/* One launch of efl_step: a level of a head layout, or all rows of the rows layout. */
typedef struct {
    size_t n;             /* rows in this launch */
    cl_uint hw, loff;     /* head layouts: locations, first row of the level within an image */
    cl_ulong cs, astride; /* element strides of a class plane and of an anchor */
    cl_ulong elems;       /* elements in the level's buffers */
} level_geom;

/* The batch's levels, checked: EFL_ERROR_INVALID_LAYOUT for a shape that does not fit, and
 * EFL_ERROR_TOO_MANY_ROWS when rows or elements leave the device's index range. *rows_per_image
 * is R (the rows layout: all rows). */
static efl_status batch_geometry(const efl_loss *loss, const efl_batch *bt, level_geom *lv, cl_uint *nlevels,
                                 size_t *total_rows, cl_uint *rows_per_image)
{
    const uint64_t C = loss->cfg.num_classes;
    if (bt->layout == EFL_LAYOUT_ROWS) {
        /* Rows and row blocks are uint on the device. */
        if (bt->rows > (size_t)INT32_MAX || bt->rows > SIZE_MAX / sizeof(float) / C)
            return EFL_ERROR_TOO_MANY_ROWS;
        lv[0] = (level_geom){bt->rows, 1, 0, 1, 0, (cl_ulong)bt->rows * C};
        *nlevels = 1;
        *total_rows = bt->rows;
        *rows_per_image = (cl_uint)bt->rows;
        return EFL_OK;
    }
    if (bt->layout != EFL_LAYOUT_ANCHOR_MAJOR && bt->layout != EFL_LAYOUT_CLASS_MAJOR)
        return EFL_ERROR_INVALID_LAYOUT;
    if (bt->images == 0 || bt->anchors == 0 || bt->levels == 0 || bt->levels > EFL_MAX_LEVELS)
        return EFL_ERROR_INVALID_LAYOUT;
    const uint64_t A = bt->anchors, B = bt->images;
    uint64_t R = 0;
    for (cl_uint l = 0; l < bt->levels; ++l) {
        if (bt->height[l] == 0 || bt->width[l] == 0)
            return EFL_ERROR_INVALID_LAYOUT;
        const uint64_t hw = (uint64_t)bt->height[l] * bt->width[l];
        /* each factor < 2^32 and the checks go in order, so no product below overflows */
        if (hw > INT32_MAX || hw * A > INT32_MAX || R + hw * A > INT32_MAX)
            return EFL_ERROR_TOO_MANY_ROWS;
        const int anchor_major = bt->layout == EFL_LAYOUT_ANCHOR_MAJOR;
        lv[l] = (level_geom){(size_t)(B * A * hw), (cl_uint)hw, (cl_uint)R, anchor_major ? hw : A * hw,
                             anchor_major ? C * hw : hw, 0};
        R += hw * A;
    }
    if (B * R > INT32_MAX || B * R > SIZE_MAX / sizeof(float) / C)
        return EFL_ERROR_TOO_MANY_ROWS;
    for (cl_uint l = 0; l < bt->levels; ++l)
        lv[l].elems = (cl_ulong)lv[l].n * C;
    *nlevels = bt->levels;
    *total_rows = (size_t)(B * R);
    *rows_per_image = (cl_uint)R;
    return EFL_OK;
}

efl_status efl_batch_shape(const efl_loss *loss, const efl_batch *bt, size_t *elems, uint32_t *levels, size_t *rows)
{
    level_geom lv[EFL_MAX_LEVELS];
    cl_uint nlevels = 0, R = 0;
    efl_status st = batch_geometry(loss, bt, lv, &nlevels, rows, &R);
    for (cl_uint l = 0; st == EFL_OK && l < nlevels; ++l)
        elems[l] = (size_t)lv[l].elems;
    *levels = nlevels;
    return st;
}

/* Every buffer the batch needs, with its size. */
int efl_op_collects(efl_op op) { return op == EFL_OP_ACCUMULATE || op == EFL_OP_COLLECT; }
int efl_op_writes_grad(efl_op op) { return op == EFL_OP_STEP || op == EFL_OP_COMPUTE; }

static efl_status check_batch_buffers(const efl_loss *loss, efl_op op, const efl_batch *bt, const level_geom *lv,
                                      cl_uint nlevels, size_t rows)
{
    const size_t esize = efl_dtype_size(bt->dtype);
    const int reduces = !efl_op_collects(op) && bt->reduction != EFL_REDUCTION_NONE;
    const int elementwise = !efl_op_collects(op) && bt->reduction == EFL_REDUCTION_NONE;
    efl_status st;
    if (reduces && (st = check_buffer(loss, bt->loss, sizeof(float))) != EFL_OK)
        return st;
    if (reduces && bt->reduction == EFL_REDUCTION_MEAN && bt->normalizer_buffer &&
        (st = check_buffer(loss, bt->normalizer_buffer, sizeof(float))) != EFL_OK)
        return st;
    if (rows == 0)
        return EFL_OK;
    if ((st = check_buffer(loss, bt->labels, rows * sizeof(cl_int))) != EFL_OK)
        return st;
    for (cl_uint l = 0; l < nlevels; ++l) {
        const size_t bytes = (size_t)lv[l].elems * esize;
        if ((st = check_buffer(loss, bt->input[l], bytes)) != EFL_OK)
            return st;
        if (efl_op_writes_grad(op) && (st = check_buffer(loss, bt->grad[l], bytes)) != EFL_OK)
            return st;
        if (elementwise && (st = check_buffer(loss, bt->loss_elems[l], bytes)) != EFL_OK)
            return st;
    }
    return EFL_OK;
}

/* The scalar checks of a batch, before any buffer is looked at. *scale: the loss's scale
 * (loss_weight, over the host normalizer for mean), or 1 / grad_scale for an accumulate. */
static efl_status check_batch_scalars(const efl_loss *loss, efl_op op, const efl_batch *bt, float *scale)
{
    if (op != EFL_OP_STEP && op != EFL_OP_FORWARD && op != EFL_OP_ACCUMULATE && op != EFL_OP_COMPUTE &&
        op != EFL_OP_COLLECT)
        return EFL_ERROR_INVALID_PARAMETER;
    if (efl_dtype_size(bt->dtype) == 0)
        return EFL_ERROR_INVALID_DTYPE;
    if (loss->cfg.mode == EFL_MODE_FOCAL && op != EFL_OP_STEP && op != EFL_OP_FORWARD)
        return EFL_ERROR_INVALID_MODE; /* focal loss keeps no statistics */
    if (op == EFL_OP_ACCUMULATE || op == EFL_OP_COLLECT) {
        if (!isfinite(bt->grad_scale) || bt->grad_scale <= 0.0f || !isfinite(1.0f / bt->grad_scale))
            return EFL_ERROR_INVALID_PARAMETER;
        *scale = 1.0f / bt->grad_scale;
        return EFL_OK;
    }
    if (bt->reduction != EFL_REDUCTION_MEAN && bt->reduction != EFL_REDUCTION_SUM &&
        bt->reduction != EFL_REDUCTION_NONE)
        return EFL_ERROR_INVALID_REDUCTION;
    *scale = loss->cfg.loss_weight;
    if (bt->reduction == EFL_REDUCTION_MEAN && !bt->normalizer_buffer) {
        if (!isfinite(bt->normalizer) || bt->normalizer <= 0.0f)
            return EFL_ERROR_INVALID_NORMALIZER;
        *scale = loss->cfg.loss_weight / bt->normalizer;
        if (!isfinite(*scale))
            return EFL_ERROR_INVALID_NORMALIZER; /* loss_weight / normalizer overflows float */
    }
    return EFL_OK;
}

void efl_batch_init(efl_batch *batch)
{
    if (!batch)
        return;
    memset(batch, 0, sizeof *batch);
    EFL_BATCH_DEFAULTS(batch);
}

/* Every enqueue: check everything, then efl_step once per level (or its collect mode) ->
 * efl_reduce over all levels' row blocks -> efl_apply, on the caller's queue. */
efl_status efl_enqueue_batch(efl_loss *loss, cl_command_queue queue, efl_op op, const efl_batch *bt, cl_uint nwait,
                             const cl_event *wait, cl_event *event)
{
    if (!loss || !bt)
        return EFL_ERROR_NULL_HANDLE;
    efl_status st = efl_check_queue(loss, queue);
    if (st == EFL_OK)
        st = check_wait_list(nwait, wait);
    float scale = 1.0f;
    if (st == EFL_OK)
        st = check_batch_scalars(loss, op, bt, &scale);
    level_geom lv[EFL_MAX_LEVELS];
    cl_uint nlevels = 0, R = 0;
    size_t n = 0;
    if (st == EFL_OK)
        st = batch_geometry(loss, bt, lv, &nlevels, &n, &R);
    if (st == EFL_OK)
        st = check_batch_buffers(loss, op, bt, lv, nlevels, n);
    if (st == EFL_OK) /* an output overlapping an input or another output (aliasing.c) */
        st = efl_check_batch_aliasing(loss, op, bt);
    const int planar = bt->layout != EFL_LAYOUT_ROWS;
    cl_kernel k_step = NULL;
    if (st == EFL_OK)
        st = efl_loss_step_kernel(loss, bt->dtype, planar, &k_step);
    if (st != EFL_OK)
        return st;

    cl_uint rows[EFL_MAX_LEVELS], blocks[EFL_MAX_LEVELS], nblocks = 0;
    for (cl_uint l = 0; l < nlevels; ++l) {
        rows[l] = efl_device_rows_per_block(&loss->ctx->info, planar ? &loss->kp_head : &loss->kp, lv[l].n);
        if (planar) /* efl_step_head takes rows EFL_VW at a time */
            rows[l] = (rows[l] + loss->kp.vw - 1) / loss->kp.vw * loss->kp.vw;
        blocks[l] = (cl_uint)((lv[l].n + rows[l] - 1) / rows[l]);
        nblocks += blocks[l];
    }
    if ((st = ensure_scratch(loss, nblocks > 0 ? nblocks : 1, planar ? n : 0)) != EFL_OK)
        return st;

    cl_command_queue_properties props = 0;
    clGetCommandQueueInfo(queue, CL_QUEUE_PROPERTIES, sizeof props, &props, NULL);
    chain ch = {queue, (props & CL_QUEUE_OUT_OF_ORDER_EXEC_MODE_ENABLE) != 0, nwait, wait, NULL};

    const int collect = efl_op_collects(op);
    const int elementwise = !collect && bt->reduction == EFL_REDUCTION_NONE;
    const cl_mem norm = !collect && bt->reduction == EFL_REDUCTION_MEAN ? bt->normalizer_buffer : NULL;
    const cl_uint cc = loss->cfg.num_classes, cpad = loss->cpad, anchors = planar ? bt->anchors : 1;
    const int has_alpha = loss->cfg.alpha >= 0.0f;
    const float alpha_pos = has_alpha ? loss->cfg.alpha : 1.0f;
    const float alpha_neg = has_alpha ? 1.0f - loss->cfg.alpha : 1.0f;
    const float grad_scale = collect ? 1.0f : scale, elem_scale = loss->cfg.loss_weight;
    const cl_int ignore = loss->cfg.ignore_index, conv = (cl_int)loss->cfg.labels;
    const cl_int write_grad = efl_op_writes_grad(op), write_loss = elementwise, use_norm = norm != NULL;
    cl_int err = CL_SUCCESS;

    /* head layouts: each level's labels into its own row order first */
    for (cl_uint l = 0, lab0 = 0; planar && l < nlevels && n > 0; lab0 += (cl_uint)lv[l].n, ++l) {
        cl_kernel k = loss->k_head_labels;
        const cl_uint nl = (cl_uint)lv[l].n;
        ARG(k, 0, bt->labels);
        ARG(k, 1, loss->head_labels);
        ARG(k, 2, nl);
        ARG(k, 3, lv[l].hw);
        ARG(k, 4, anchors);
        ARG(k, 5, R);
        ARG(k, 6, lv[l].loff);
        ARG(k, 7, lab0);
        const size_t global = nl;
        if (err == CL_SUCCESS)
            err = chain_kernel(&ch, k, 1, &global, NULL, 0, event);
        if (err != CL_SUCCESS)
            return efl_cl_fail(loss->ctx, err);
    }
    for (cl_uint l = 0, block0 = 0, lab0 = 0; l < nlevels && n > 0; block0 += blocks[l], lab0 += (cl_uint)lv[l].n, ++l) {
        cl_kernel k = k_step;
        const cl_uint nl = (cl_uint)lv[l].n;
        const cl_ulong bs = (cl_ulong)anchors * cc * lv[l].hw; /* one image of the level */
        const cl_mem gbuf = write_grad ? bt->grad[l] : NULL, lbuf = write_loss ? bt->loss_elems[l] : NULL;
        const cl_mem ybuf = planar ? loss->head_labels : bt->labels;
        ARG(k, 0, bt->input[l]);
        ARG(k, 1, ybuf);
        ARG(k, 2, gbuf);
        ARG(k, 3, lbuf);
        ARG(k, 4, loss->partials);
        ARG(k, 5, loss->block_flags);
        ARG(k, 6, loss->table);
        ARG(k, 7, norm);
        ARG(k, 8, nl);
        ARG(k, 9, cc);
        ARG(k, 10, cpad);
        ARG(k, 11, rows[l]);
        ARG(k, 12, block0);
        ARG(k, 13, alpha_pos);
        ARG(k, 14, alpha_neg);
        ARG(k, 15, grad_scale);
        ARG(k, 16, elem_scale);
        ARG(k, 17, ignore);
        ARG(k, 18, conv);
        ARG(k, 19, write_grad);
        ARG(k, 20, write_loss);
        ARG(k, 21, collect);
        ARG(k, 22, use_norm);
        if (planar) {
            ARG(k, 23, lv[l].hw);
            ARG(k, 24, anchors);
            ARG(k, 25, lab0);
            ARG(k, 26, lv[l].cs);
            ARG(k, 27, lv[l].astride);
            ARG(k, 28, bs);
        }
        const size_t global[2] = {planar ? cpad : cpad / loss->kp.vw, blocks[l]}, local[2] = {loss->kp.wgx, 1};
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
        /* n == 0 is still an update (docs/semantics.md): g is recomputed from the unchanged totals. The data
         * parallel ops hold theirs back: it comes with the ranks' sums. */
        const cl_int mode = op == EFL_OP_FORWARD                            ? EFL_APPLY_FORWARD
                            : op == EFL_OP_COMPUTE || op == EFL_OP_COLLECT ? EFL_APPLY_HOLD
                            : op == EFL_OP_STEP                            ? EFL_APPLY_STEP
                                                                           : EFL_APPLY_ACCUMULATE;
        /* what efl_loss_read_statistics scales P and N by; an empty batch has none */
        loss->stat_scale = collect ? scale : 1.0f;
        loss->stat_rows = n;
        const size_t global = loss->kp.apply_wg;
        /* an accumulate or an elementwise loss writes no total: info stands in for the buffer */
        const int total = !collect && !elementwise;
        err = set_apply_args(loss, total ? bt->loss : loss->info, collect ? 1.0f : scale, mode,
                             collect ? scale : 1.0f, norm, total);
        if (err == CL_SUCCESS)
            err = chain_kernel(&ch, loss->k_apply, 1, &global, &global, 1, event);
        if (err != CL_SUCCESS)
            return efl_cl_fail(loss->ctx, err);
    }
    return EFL_OK;
}

/* The rows-layout calls as batches. */
static efl_status enqueue_rows(efl_loss *loss, cl_command_queue queue, efl_op op, efl_dtype dtype, cl_mem x,
                               cl_mem labels, size_t n, float normalizer, efl_reduction reduction, cl_mem loss_out,
                               cl_mem grad, float grad_scale, cl_uint nwait, const cl_event *wait, cl_event *event)
{
    efl_batch bt;
    efl_batch_init(&bt);
    bt.dtype = dtype;
    bt.rows = n;
    bt.input[0] = x;
    bt.grad[0] = grad;
    bt.labels = labels;
    bt.reduction = reduction;
    bt.normalizer = normalizer;
    if (reduction == EFL_REDUCTION_NONE)
        bt.loss_elems[0] = loss_out;
    else
        bt.loss = loss_out;
    bt.grad_scale = grad_scale;
    return efl_enqueue_batch(loss, queue, op, &bt, nwait, wait, event);
}

efl_status efl_enqueue_step_typed(efl_loss *loss, cl_command_queue queue, efl_dtype dtype, cl_mem logits,
                                  cl_mem labels, size_t n, float normalizer, efl_reduction reduction, cl_mem loss_out,
                                  cl_mem grad_out, cl_uint num_events_in_wait_list, const cl_event *event_wait_list,
                                  cl_event *event)
{
    return enqueue_rows(loss, queue, EFL_OP_STEP, dtype, logits, labels, n, normalizer, reduction, loss_out, grad_out,
                        1.0f, num_events_in_wait_list, event_wait_list, event);
}

efl_status efl_enqueue_forward_typed(efl_loss *loss, cl_command_queue queue, efl_dtype dtype, cl_mem logits,
                                     cl_mem labels, size_t n, float normalizer, efl_reduction reduction,
                                     cl_mem loss_out, cl_uint num_events_in_wait_list,
                                     const cl_event *event_wait_list, cl_event *event)
{
    return enqueue_rows(loss, queue, EFL_OP_FORWARD, dtype, logits, labels, n, normalizer, reduction, loss_out, NULL,
                        1.0f, num_events_in_wait_list, event_wait_list, event);
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
    return enqueue_rows(loss, queue, EFL_OP_ACCUMULATE, dtype, grad, labels, n, 1.0f, EFL_REDUCTION_SUM, NULL, NULL,
                        grad_scale, num_events_in_wait_list, event_wait_list, event);
}

efl_status efl_enqueue_apply(efl_loss *loss, cl_command_queue queue, int mode, float stat_scale)
{
    const size_t global = loss->kp.apply_wg;
    /* these modes write no loss: info stands in for the loss buffer */
    cl_int err = set_apply_args(loss, loss->info, 1.0f, (cl_int)mode, stat_scale, NULL, 0);
    if (err == CL_SUCCESS)
        err = clEnqueueNDRangeKernel(queue, loss->k_apply, 1, NULL, &global, &global, 0, NULL, NULL);
    return err == CL_SUCCESS ? EFL_OK : efl_cl_fail(loss->ctx, err);
}

/* The table from the state, after the host wrote or reset it. */
efl_status efl_refresh_table(efl_loss *loss, cl_command_queue queue)
{
    return efl_enqueue_apply(loss, queue, EFL_APPLY_REFRESH, 1.0f);
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
    /* an invalid label (efl_step), a bad normalizer read on the device, a non-finite value
     * (efl_apply), a refusal of another rank (data parallel) */
    return (flags & EFL_FLAG_INVALID_LABEL)    ? EFL_ERROR_INVALID_LABEL
           : (flags & EFL_FLAG_BAD_NORMALIZER) ? EFL_ERROR_INVALID_NORMALIZER
           : (flags & EFL_FLAG_NONFINITE)      ? EFL_ERROR_NONFINITE
           : (flags & EFL_FLAG_OVERFLOW)       ? EFL_ERROR_OVERFLOW
           : (flags & EFL_FLAG_PEER)           ? EFL_ERROR_REFUSED_BY_PEER
                                               : EFL_OK;
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
