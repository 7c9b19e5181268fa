/* One op enqueued on the bench's buffers, and its median time. A step is timed between two
 * profiling markers around it (so all three of its kernels count), or by the wall clock (enqueue
 * to clFinish) where the device's events report no usable time (rusticl returns zero or constant
 * timestamps; ceiling.c checks the timer against a long copy). */
#define _POSIX_C_SOURCE 200809L /* clock_gettime (bench_util.h) */
#include <string.h>

#include "bench.h"

/* The head layouts' batch: LVIS_HEAD's levels, read in place. */
static efl_status enqueue_head(efl_loss *loss, cl_command_queue q, const buffers *b, int forward)
{
    efl_batch bt;
    efl_batch_init(&bt);
    bt.layout = (efl_layout)b->layout;
    bt.images = LVIS_HEAD_B;
    bt.anchors = LVIS_HEAD_A;
    bt.levels = LVIS_HEAD_LEVELS;
    for (int l = 0; l < LVIS_HEAD_LEVELS; ++l) {
        bt.height[l] = lvis_head_h[l];
        bt.width[l] = lvis_head_w[l];
        bt.input[l] = b->level_x[l];
        bt.grad[l] = b->level_g[l];
    }
    bt.labels = b->labels;
    bt.loss = b->loss_out;
    return efl_enqueue_batch(loss, q, forward ? EFL_OP_FORWARD : EFL_OP_STEP, &bt, 0, NULL, NULL);
}

efl_status bench_enqueue_op(efl_loss *loss, cl_command_queue q, const buffers *b, size_t n, int forward)
{
    const efl_dtype dt = (efl_dtype)b->dtype;
    const cl_mem x = dt == EFL_DTYPE_FLOAT32 ? b->logits : b->logits16[dt];
    if (b->layout != EFL_LAYOUT_ROWS)
        return enqueue_head(loss, q, b, forward);
    if (forward)
        return efl_enqueue_forward_typed(loss, q, dt, x, b->labels, n, 1.0f, EFL_REDUCTION_MEAN, b->loss_out, 0, NULL,
                                         NULL);
    return efl_enqueue_step_typed(loss, q, dt, x, b->labels, n, 1.0f, EFL_REDUCTION_MEAN, b->loss_out, b->grad, 0,
                                  NULL, NULL);
}

typedef struct {
    efl_context *ectx;
    efl_loss *loss;
    cl_command_queue q;
    const buffers *b;
    size_t n;
    int forward, force_wall;
    const char *dev;
} timed_op;

/* One repetition between two markers: *s its seconds (the events', else the wall clock's). */
static int one_rep(const timed_op *t, double *s, int *wall)
{
    const char *what = t->forward ? "efl_enqueue_forward" : "efl_enqueue_step";
    cl_event m0 = NULL, m1 = NULL;
    const double w0 = bench_now();
    cl_int err = clEnqueueMarkerWithWaitList(t->q, 0, NULL, &m0);
    if (err != CL_SUCCESS)
        return cl_fail("clEnqueueMarkerWithWaitList", t->dev, err);
    const efl_status st = bench_enqueue_op(t->loss, t->q, t->b, t->n, t->forward);
    if (st != EFL_OK) {
        clReleaseEvent(m0);
        return efl_fail(what, t->dev, st, t->ectx);
    }
    err = clEnqueueMarkerWithWaitList(t->q, 0, NULL, &m1);
    if (err == CL_SUCCESS)
        err = clFinish(t->q);
    const double w1 = bench_now();
    if (err != CL_SUCCESS) {
        clReleaseEvent(m0);
        if (m1)
            clReleaseEvent(m1);
        return cl_fail("clFinish after a step", t->dev, err);
    }
    *s = t->force_wall ? 0.0 : bench_event_span(m0, m1, 0);
    if (*s <= 0.0) {
        *s = w1 - w0;
        *wall = 1;
    }
    clReleaseEvent(m0);
    clReleaseEvent(m1);
    return 0;
}

int bench_time_op(efl_context *ectx, efl_loss *loss, cl_command_queue q, const buffers *b, size_t n, int forward,
                  double min_time, int force_wall, const char *dev, double *median, int *wall)
{
    const timed_op t = {ectx, loss, q, b, n, forward, force_wall, dev};
    const char *what = forward ? "efl_enqueue_forward" : "efl_enqueue_step";
    efl_status st = bench_enqueue_op(loss, q, b, n, forward);
    if (st != EFL_OK)
        return efl_fail(what, dev, st, ectx);
    if ((st = efl_loss_query_status(loss, q)) != EFL_OK) /* waits for the warm-up */
        return efl_fail("the warm-up step (efl_loss_query_status)", dev, st, ectx);

    double times[1000];
    size_t reps = 0;
    const double start = bench_now();
    while (reps < 1000 && (reps < 3 || bench_now() - start < min_time)) {
        if (one_rep(&t, &times[reps], wall) != 0)
            return -1;
        ++reps;
    }
    if ((st = efl_loss_query_status(loss, q)) != EFL_OK)
        return efl_fail("the timed steps (efl_loss_query_status)", dev, st, ectx);
    *median = bench_median(times, reps);
    return 0;
}
