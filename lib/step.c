/* Argument checks and the enqueue sequence of a step: efl_step -> efl_reduce -> efl_apply.
 * efl_enqueue_batch goes in three stages: validate (a failed check enqueues and writes nothing),
 * plan (launch geometry, scalars, scratch), enqueue (the kernel chain). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
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

/* A refused buffer in the context log: the status alone does not say which of a batch's
 * buffers it was. level: the head layouts' level; < 0 for the rows layout's buffers and the
 * batch's own (labels, loss, normalizer_buffer). */
static void log_refused_buffer(efl_context *ctx, efl_status st, const char *what, int level, size_t size,
                               size_t need)
{
    char name[32];
    if (level >= 0)
        snprintf(name, sizeof name, "%s[%d]", what, level);
    else
        snprintf(name, sizeof name, "%s", what);
    if (st == EFL_ERROR_BUFFER_TOO_SMALL)
        efl_log(ctx, "enqueue: %s holds %zu bytes, %zu needed", name, size, need);
    else
        efl_log(ctx, "enqueue: %s: %s", name, efl_status_string(st));
}

static efl_status check_buffer(const efl_loss *loss, cl_mem m, size_t need, const char *what, int level)
{
    cl_context c = NULL;
    size_t size = 0;
    efl_status st = EFL_OK;
    if (!m)
        st = EFL_ERROR_NULL_BUFFER;
    else if (clGetMemObjectInfo(m, CL_MEM_CONTEXT, sizeof c, &c, NULL) != CL_SUCCESS ||
             clGetMemObjectInfo(m, CL_MEM_SIZE, sizeof size, &size, NULL) != CL_SUCCESS)
        st = EFL_ERROR_NULL_BUFFER; /* not a buffer object */
    else if (c != loss->ctx->context)
        st = EFL_ERROR_BUFFER_CONTEXT;
    else if (size < need)
        st = EFL_ERROR_BUFFER_TOO_SMALL;
    if (st != EFL_OK)
        log_refused_buffer(loss->ctx, st, what, level, size, need);
    return st;
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

/* Whether an op takes the caller's gradient (and makes no loss), and whether it writes one. */
int efl_op_collects(efl_op op) { return op == EFL_OP_ACCUMULATE || op == EFL_OP_COLLECT; }
int efl_op_writes_grad(efl_op op) { return op == EFL_OP_STEP || op == EFL_OP_COMPUTE; }

/* Every buffer the batch needs, with its size. */
static efl_status check_batch_buffers(const efl_loss *loss, efl_op op, const efl_batch *bt, const level_geom *lv,
                                      cl_uint nlevels, size_t rows)
{
    const size_t esize = efl_dtype_size(bt->dtype);
    const int reduces = !efl_op_collects(op) && bt->reduction != EFL_REDUCTION_NONE;
    const int elementwise = !efl_op_collects(op) && bt->reduction == EFL_REDUCTION_NONE;
    efl_status st;
    if (reduces && (st = check_buffer(loss, bt->loss, sizeof(float), "loss", -1)) != EFL_OK)
        return st;
    if (reduces && bt->reduction == EFL_REDUCTION_MEAN && bt->normalizer_buffer &&
        (st = check_buffer(loss, bt->normalizer_buffer, sizeof(float), "normalizer_buffer", -1)) != EFL_OK)
        return st;
    if (rows == 0)
        return EFL_OK;
    if ((st = check_buffer(loss, bt->labels, rows * sizeof(cl_int), "labels", -1)) != EFL_OK)
        return st;
    for (cl_uint l = 0; l < nlevels; ++l) {
        const size_t bytes = (size_t)lv[l].elems * esize;
        const int level = bt->layout == EFL_LAYOUT_ROWS ? -1 : (int)l; /* for the log */
        if ((st = check_buffer(loss, bt->input[l], bytes, "input", level)) != EFL_OK)
            return st;
        if (efl_op_writes_grad(op) && (st = check_buffer(loss, bt->grad[l], bytes, "grad", level)) != EFL_OK)
            return st;
        if (elementwise && (st = check_buffer(loss, bt->loss_elems[l], bytes, "loss_elems", level)) != EFL_OK)
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

/* The step kernel's scalar arguments, the same for every level. */
typedef struct {
    cl_mem norm; /* the normalizer read on the device (mean reduction), or NULL */
    float alpha_pos, alpha_neg, grad_scale, elem_scale;
    cl_int ignore, conv, write_grad, write_loss, collect, use_norm;
} step_scalars;

/* A batch once validated (levels, scale) and planned (kernel, blocks, scalars). */
typedef struct {
    level_geom lv[EFL_MAX_LEVELS];
    cl_uint nlevels;
    cl_uint rows_per_image; /* R; the rows layout: all rows */
    size_t n;               /* rows in all */
    float scale;            /* check_batch_scalars' */
    int planar;             /* a head layout */
    cl_kernel k_step;
    cl_uint rows[EFL_MAX_LEVELS], blocks[EFL_MAX_LEVELS]; /* rows per block, blocks per level */
    cl_uint nblocks;
    step_scalars sc;
} batch_plan;

/* Everything that can refuse a batch, before anything is enqueued or written. */
static efl_status validate_batch(const efl_loss *loss, cl_command_queue queue, efl_op op, const efl_batch *bt,
                                 cl_uint nwait, const cl_event *wait, batch_plan *p)
{
    efl_status st = efl_check_queue(loss, queue);
    if (st == EFL_OK)
        st = check_wait_list(nwait, wait);
    if (st == EFL_OK)
        st = check_batch_scalars(loss, op, bt, &p->scale);
    if (st == EFL_OK)
        st = batch_geometry(loss, bt, p->lv, &p->nlevels, &p->n, &p->rows_per_image);
    if (st == EFL_OK)
        st = check_batch_buffers(loss, op, bt, p->lv, p->nlevels, p->n);
    if (st == EFL_OK) /* an output overlapping an input or another output (aliasing.c) */
        st = efl_check_batch_aliasing(loss, op, bt);
    return st;
}

static step_scalars step_scalars_of(const efl_loss *loss, efl_op op, const efl_batch *bt, float scale)
{
    const int collect = efl_op_collects(op), has_alpha = loss->cfg.alpha >= 0.0f;
    step_scalars sc;
    sc.norm = !collect && bt->reduction == EFL_REDUCTION_MEAN ? bt->normalizer_buffer : NULL;
    sc.alpha_pos = has_alpha ? loss->cfg.alpha : 1.0f;
    sc.alpha_neg = has_alpha ? 1.0f - loss->cfg.alpha : 1.0f;
    sc.grad_scale = collect ? 1.0f : scale;
    sc.elem_scale = loss->cfg.loss_weight;
    sc.ignore = loss->cfg.ignore_index;
    sc.conv = (cl_int)loss->cfg.labels;
    sc.write_grad = efl_op_writes_grad(op);
    sc.write_loss = !collect && bt->reduction == EFL_REDUCTION_NONE; /* the elementwise loss */
    sc.collect = collect;
    sc.use_norm = sc.norm != NULL;
    return sc;
}

/* The step kernel for the batch's storage and layout (compiled on first use), each level's row
 * blocks, the kernels' scalars, and scratch for them. */
static efl_status plan_batch(efl_loss *loss, efl_op op, const efl_batch *bt, batch_plan *p)
{
    p->planar = bt->layout != EFL_LAYOUT_ROWS;
    efl_status st = efl_loss_step_kernel(loss, bt->dtype, p->planar, &p->k_step);
    if (st != EFL_OK)
        return st;
    const efl_kernel_params *kp = p->planar ? &loss->kp_head : &loss->kp;
    p->nblocks = 0;
    for (cl_uint l = 0; l < p->nlevels; ++l) {
        cl_uint rows = efl_device_rows_per_block(&loss->ctx->info, kp, p->lv[l].n);
        if (p->planar) /* the head layouts take rows EFL_VW at a time */
            rows = (rows + kp->vw - 1) / kp->vw * kp->vw;
        p->rows[l] = rows;
        p->blocks[l] = (cl_uint)((p->lv[l].n + rows - 1) / rows);
        p->nblocks += p->blocks[l];
    }
    p->sc = step_scalars_of(loss, op, bt, p->scale);
    return ensure_scratch(loss, p->nblocks > 0 ? p->nblocks : 1, p->planar ? p->n : 0);
}

/* A kernel's arguments, set in order; the first failure is the one kept. */
typedef struct {
    cl_kernel kernel;
    cl_uint next;
    cl_int err;
} kernel_args;

static kernel_args args_of(cl_kernel k) { return (kernel_args){k, 0, CL_SUCCESS}; }

static void arg(kernel_args *a, size_t size, const void *value)
{
    const cl_int err = clSetKernelArg(a->kernel, a->next++, size, value);
    if (a->err == CL_SUCCESS)
        a->err = err;
}
#define ARG(a, v) arg((a), sizeof(v), &(v))

/* The kernels of one enqueue, in order: the first waits for the caller's list, the last signals
 * the caller's event; on an out-of-order queue, events keep our kernels in order. */
typedef struct {
    cl_command_queue queue;
    int out_of_order;
    cl_uint nwait;
    const cl_event *wait;
    cl_event prev; /* our last kernel's event (out-of-order queues), which the next one waits for */
} chain;

static chain chain_start(cl_command_queue queue, cl_uint nwait, const cl_event *wait)
{
    cl_command_queue_properties props = 0;
    clGetCommandQueueInfo(queue, CL_QUEUE_PROPERTIES, sizeof props, &props, NULL);
    return (chain){queue, (props & CL_QUEUE_OUT_OF_ORDER_EXEC_MODE_ENABLE) != 0, nwait, wait, NULL};
}

/* Drops our hold on the last event: after each kernel, and on every way out of the chain. */
static void chain_release(chain *ch)
{
    if (ch->prev)
        clReleaseEvent(ch->prev);
    ch->prev = NULL;
}

/* Enqueues a's kernel, unless setting its arguments failed. */
static cl_int chain_kernel(chain *ch, const kernel_args *a, cl_uint dims, const size_t *global, const size_t *local,
                           int last, cl_event *user_event)
{
    if (a->err != CL_SUCCESS)
        return a->err;
    cl_event ev = NULL;
    cl_event *out = last ? user_event : (ch->out_of_order ? &ev : NULL);
    const cl_uint nwait = ch->prev ? 1 : ch->nwait;
    const cl_event *wait = ch->prev ? &ch->prev : ch->wait;
    const cl_int err = clEnqueueNDRangeKernel(ch->queue, a->kernel, dims, NULL, global, local, nwait, wait, out);
    chain_release(ch);
    ch->prev = ev;
    return err;
}

/* Head layouts: each level's labels into its own row order (efl_head_labels). */
static cl_int enqueue_head_labels(efl_loss *loss, const efl_batch *bt, const batch_plan *p, chain *ch)
{
    const cl_uint anchors = bt->anchors;
    cl_int err = CL_SUCCESS;
    for (cl_uint l = 0, lab0 = 0; l < p->nlevels && err == CL_SUCCESS; lab0 += (cl_uint)p->lv[l].n, ++l) {
        const cl_uint n = (cl_uint)p->lv[l].n;
        kernel_args a = args_of(loss->k_head_labels);
        ARG(&a, bt->labels);
        ARG(&a, loss->head_labels);
        ARG(&a, n);
        ARG(&a, p->lv[l].hw);
        ARG(&a, anchors);
        ARG(&a, p->rows_per_image);
        ARG(&a, p->lv[l].loff);
        ARG(&a, lab0);
        const size_t global = n;
        err = chain_kernel(ch, &a, 1, &global, NULL, 0, NULL);
    }
    return err;
}

/* The step kernel's arguments for level l (kernels/efl_step.cl: one signature for every layout;
 * the rows layout's level has no geometry, and its labels start at 0). */
static kernel_args step_args(const efl_loss *loss, const efl_batch *bt, const batch_plan *p, cl_uint l,
                             cl_uint block0, cl_uint lab0)
{
    const step_scalars *sc = &p->sc;
    const level_geom *lv = &p->lv[l];
    const cl_uint n = (cl_uint)lv->n, C = loss->cfg.num_classes, anchors = p->planar ? bt->anchors : 1;
    const cl_ulong bstride = (cl_ulong)anchors * C * lv->hw; /* one image of the level */
    const cl_mem labels = p->planar ? loss->head_labels : bt->labels;
    const cl_mem grad = sc->write_grad ? bt->grad[l] : NULL, loss_el = sc->write_loss ? bt->loss_elems[l] : NULL;
    kernel_args a = args_of(p->k_step);
    ARG(&a, bt->input[l]);
    ARG(&a, labels);
    ARG(&a, grad);
    ARG(&a, loss_el);
    ARG(&a, loss->partials);
    ARG(&a, loss->block_flags);
    ARG(&a, loss->table);
    ARG(&a, sc->norm);
    ARG(&a, n);
    ARG(&a, C);
    ARG(&a, loss->cpad);
    ARG(&a, p->rows[l]);
    ARG(&a, block0);
    ARG(&a, sc->alpha_pos);
    ARG(&a, sc->alpha_neg);
    ARG(&a, sc->grad_scale);
    ARG(&a, sc->elem_scale);
    ARG(&a, sc->ignore);
    ARG(&a, sc->conv);
    ARG(&a, sc->write_grad);
    ARG(&a, sc->write_loss);
    ARG(&a, sc->collect);
    ARG(&a, sc->use_norm);
    ARG(&a, lab0);
    ARG(&a, lv->hw);
    ARG(&a, anchors);
    ARG(&a, lv->cs);
    ARG(&a, lv->astride);
    ARG(&a, bstride);
    return a;
}

/* What efl_apply takes from an op: its loss output and scales (apply_args, and the fused path's
 * apply stage: fused_args). */
typedef struct {
    cl_mem loss_out;
    float loss_scale, stat_scale;
    cl_int mode, write_total;
} apply_params;

static cl_int apply_mode(efl_op op);

/* The apply's parameters for a planned batch. */
static apply_params apply_params_of(const efl_loss *loss, efl_op op, const efl_batch *bt, const batch_plan *p)
{
    const int collect = p->sc.collect;
    /* an accumulate or an elementwise loss writes no total: info stands in for the buffer */
    const int total = !collect && !p->sc.write_loss;
    return (apply_params){total ? bt->loss : loss->info, collect ? 1.0f : p->scale, collect ? p->scale : 1.0f,
                          apply_mode(op), total};
}

/* The step kernel's arguments after bstride (kernels/efl_step.cl): fused, then for the fused
 * path the blocks and efl_apply's arguments; the chain's step sets them too (a kernel runs only
 * with every argument set) and reads none. */
static void fused_args(kernel_args *a, efl_loss *loss, const batch_plan *p, cl_int fused, const apply_params *ap)
{
    const float gamma_b = loss->cfg.gamma, s = loss->cfg.scale_factor, mu = loss->cfg.mu, alpha = loss->cfg.alpha;
    ARG(a, fused);
    ARG(a, p->nblocks);
    ARG(a, loss->step_stats);
    ARG(a, loss->step_flags);
    ARG(a, loss->state);
    ARG(a, ap->loss_out);
    ARG(a, loss->info);
    ARG(a, gamma_b);
    ARG(a, s);
    ARG(a, ap->loss_scale);
    ARG(a, ap->mode);
    ARG(a, ap->stat_scale);
    ARG(a, ap->write_total);
    ARG(a, mu);
    ARG(a, alpha);
}

/* The step kernel once per level, each into its own row blocks of the partials. */
static cl_int enqueue_steps(efl_loss *loss, const efl_batch *bt, const batch_plan *p, const apply_params *ap,
                            chain *ch)
{
    const size_t local[2] = {loss->kp.wgx, 1};
    cl_int err = CL_SUCCESS;
    for (cl_uint l = 0, block0 = 0, lab0 = 0; l < p->nlevels && err == CL_SUCCESS;
         block0 += p->blocks[l], lab0 += (cl_uint)p->lv[l].n, ++l) {
        kernel_args a = step_args(loss, bt, p, l, block0, lab0);
        fused_args(&a, loss, p, 0, ap);
        const size_t global[2] = {p->planar ? loss->cpad : loss->cpad / loss->kp.vw, p->blocks[l]};
        err = chain_kernel(ch, &a, 2, global, local, 0, NULL);
    }
    return err;
}

/* efl_reduce over every level's row blocks. */
static cl_int enqueue_reduce(efl_loss *loss, const batch_plan *p, chain *ch)
{
    const cl_uint C = loss->cfg.num_classes;
    kernel_args a = args_of(loss->k_reduce);
    ARG(&a, loss->partials);
    ARG(&a, loss->block_flags);
    ARG(&a, p->nblocks);
    ARG(&a, C);
    ARG(&a, loss->cpad);
    ARG(&a, loss->step_stats);
    ARG(&a, loss->step_flags);
    const size_t global = loss->cpad, local = loss->kp.wgx;
    return chain_kernel(ch, &a, 1, &global, &local, 0, NULL);
}

/* Arguments of efl_apply (kernels/efl_apply.cl) for one mode; norm: the normalizer buffer or NULL. */
static kernel_args apply_args(efl_loss *loss, const apply_params *ap, cl_mem norm)
{
    const cl_uint C = loss->cfg.num_classes;
    const float gamma_b = loss->cfg.gamma, s = loss->cfg.scale_factor, mu = loss->cfg.mu, alpha = loss->cfg.alpha;
    const cl_int use_norm = norm != NULL;
    kernel_args a = args_of(loss->k_apply);
    ARG(&a, loss->step_stats);
    ARG(&a, loss->step_flags);
    ARG(&a, loss->cpad);
    ARG(&a, loss->state);
    ARG(&a, loss->table);
    ARG(&a, ap->loss_out);
    ARG(&a, loss->info);
    ARG(&a, C);
    ARG(&a, gamma_b);
    ARG(&a, s);
    ARG(&a, ap->loss_scale);
    ARG(&a, ap->mode);
    ARG(&a, ap->stat_scale);
    ARG(&a, norm);
    ARG(&a, use_norm);
    ARG(&a, ap->write_total);
    ARG(&a, mu);
    ARG(&a, alpha);
    return a;
}

/* efl_apply's mode for an op. An empty batch is still an update (docs/semantics.md): g is
 * recomputed from the unchanged totals. The data parallel ops hold theirs back: it comes with the
 * ranks' sums. */
static cl_int apply_mode(efl_op op)
{
    return op == EFL_OP_FORWARD                            ? EFL_APPLY_FORWARD
           : op == EFL_OP_COMPUTE || op == EFL_OP_COLLECT ? EFL_APPLY_HOLD
           : op == EFL_OP_STEP                            ? EFL_APPLY_STEP
                                                          : EFL_APPLY_ACCUMULATE;
}

/* What efl_loss_read_statistics and the data parallel calls keep of the batch, as its last
 * kernel is enqueued: the statistics' scale (P and N are scaled by it) and rows (an empty batch
 * has none). */
static void keep_stats(efl_loss *loss, const batch_plan *p)
{
    loss->stat_scale = p->sc.collect ? p->scale : 1.0f;
    loss->stat_rows = p->n;
}

/* efl_apply, the last kernel: it signals the caller's event. */
static cl_int enqueue_apply_last(efl_loss *loss, const batch_plan *p, const apply_params *ap, chain *ch,
                                 cl_event *event)
{
    keep_stats(loss, p);
    const kernel_args a = apply_args(loss, ap, p->sc.norm);
    const size_t global = loss->kp.apply_wg;
    return chain_kernel(ch, &a, 1, &global, &global, 1, event);
}

/* Whether a planned batch takes the fused path: the whole step (step, reduce, apply) in one
 * launch of the step kernel as one work-group (kernels/efl_step.cl, EFL_FUSED). It needs the
 * rows layout on a build with the fused path (EFL_VW > 1: CPU devices; not focal mode) and one work-group across
 * every column. A CPU runs a work-group on one core: so it is taken only where the chain's step is
 * one work-group too (one row block, small batches), and it saves the reduce's and the apply's
 * launches. The internal knob EFL_FUSED_PATH (tests) forces it: "0" never, "1" wherever the
 * build and the columns allow, whatever the blocks. */
static int fused_path(const efl_loss *loss, const batch_plan *p)
{
    const efl_kernel_params *kp = &loss->kp;
    if (p->planar || p->nlevels != 1 || p->n == 0 || kp->vw <= 1 || loss->cpad != (cl_uint)kp->wgx * kp->vw ||
        loss->cfg.mode == EFL_MODE_FOCAL) /* efl_step.cl: EFL_FUSED */
        return 0;
    const char *force = getenv("EFL_FUSED_PATH");
    if (force && (force[0] == '0' || force[0] == '1') && force[1] == '\0')
        return force[0] == '1';
    return p->nblocks == 1;
}

/* The fused path's one launch: it signals the caller's event. */
static cl_int enqueue_fused(efl_loss *loss, const efl_batch *bt, const batch_plan *p, const apply_params *ap,
                            chain *ch, cl_event *event)
{
    keep_stats(loss, p);
    if (!loss->fused_logged) {
        loss->fused_logged = 1;
        efl_log(loss->ctx, "loss %p: a batch of %zu rows took the fused path (step, reduce and apply in one launch)",
                (void *)loss, p->n);
    }
    kernel_args a = step_args(loss, bt, p, 0, 0, 0);
    fused_args(&a, loss, p, 1, ap);
    const size_t global[2] = {loss->kp.wgx, 1};
    return chain_kernel(ch, &a, 2, global, global, 1, event);
}

/* The kernel chain of a planned batch: the head layouts' labels, the step per level, the reduce,
 * the apply; or the fused path's one kernel. On a failure the kernels already enqueued still
 * run; our events are released. */
static efl_status enqueue_batch_chain(efl_loss *loss, cl_command_queue queue, efl_op op, const efl_batch *bt,
                                      const batch_plan *p, cl_uint nwait, const cl_event *wait, cl_event *event)
{
    chain ch = chain_start(queue, nwait, wait);
    const apply_params ap = apply_params_of(loss, op, bt, p);
    cl_int err = CL_SUCCESS;
    if (fused_path(loss, p)) {
        err = enqueue_fused(loss, bt, p, &ap, &ch, event);
    } else {
        if (p->n > 0 && p->planar)
            err = enqueue_head_labels(loss, bt, p, &ch);
        if (err == CL_SUCCESS && p->n > 0)
            err = enqueue_steps(loss, bt, p, &ap, &ch);
        if (err == CL_SUCCESS)
            err = enqueue_reduce(loss, p, &ch);
        if (err == CL_SUCCESS)
            err = enqueue_apply_last(loss, p, &ap, &ch, event);
    }
    chain_release(&ch);
    return err == CL_SUCCESS ? EFL_OK : efl_cl_fail(loss->ctx, err);
}

/* Every enqueue: validate, plan, then efl_step once per level (or its collect mode) ->
 * efl_reduce over all levels' row blocks -> efl_apply, on the caller's queue. */
efl_status efl_enqueue_batch(efl_loss *loss, cl_command_queue queue, efl_op op, const efl_batch *bt, cl_uint nwait,
                             const cl_event *wait, cl_event *event)
{
    if (!loss || !bt)
        return EFL_ERROR_NULL_HANDLE;
    batch_plan p = {.scale = 1.0f};
    efl_status st = validate_batch(loss, queue, op, bt, nwait, wait, &p);
    if (st == EFL_OK)
        st = plan_batch(loss, op, bt, &p);
    if (st == EFL_OK)
        st = enqueue_batch_chain(loss, queue, op, bt, &p, nwait, wait, event);
    return st;
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
    const apply_params ap = {loss->info, 1.0f, stat_scale, (cl_int)mode, 0};
    const kernel_args a = apply_args(loss, &ap, NULL);
    cl_int err = a.err;
    if (err == CL_SUCCESS)
        err = clEnqueueNDRangeKernel(queue, a.kernel, 1, NULL, &global, &global, 0, NULL, NULL);
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
