/* Data parallel (efl.h "data parallel"): this step's statistics out to the host, and the ranks'
 * sums back in for the update. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "efl_protocol.h"
#include "internal.h"

/* The common checks: a loss that keeps statistics, a queue of its own. */
static efl_status check_call(efl_loss *loss, cl_command_queue queue, const void *stats)
{
    if (!loss)
        return EFL_ERROR_NULL_HANDLE;
    if (!stats)
        return EFL_ERROR_NULL_BUFFER;
    if (loss->cfg.mode == EFL_MODE_FOCAL)
        return EFL_ERROR_INVALID_MODE;
    return efl_check_queue(loss, queue);
}

efl_status efl_loss_read_statistics(efl_loss *loss, cl_command_queue queue, double *stats)
{
    efl_status st = check_call(loss, queue, stats);
    if (st != EFL_OK)
        return st;
    const size_t C = loss->cfg.num_classes, cpad = loss->cpad;
    void *buf = malloc(2 * cpad * loss->acc_bytes);
    if (!buf)
        return EFL_ERROR_OUT_OF_MEMORY;
    cl_uint flags = 0;
    /* P and N of step_stats ([3][cpad] accumulators), and the flags efl_apply recorded */
    cl_int err = clEnqueueReadBuffer(queue, loss->step_stats, CL_FALSE, 0, 2 * cpad * loss->acc_bytes, buf, 0, NULL,
                                     NULL);
    if (err == CL_SUCCESS)
        err = clEnqueueReadBuffer(queue, loss->info, CL_TRUE, 0, sizeof flags, &flags, 0, NULL, NULL);
    if (err != CL_SUCCESS) {
        free(buf);
        return efl_cl_fail(loss->ctx, err);
    }
    for (size_t k = 0; k < 2; ++k)
        for (size_t j = 0; j < C; ++j) {
            double v;
            float r;
            efl_acc_decode(loss, buf, k * cpad + j, &v, &r);
            /* an empty batch leaves no statistics of its own, and a refused one none to use (they
             * may not even be finite): zeros, so that the ranks' sums stay finite and carry
             * the refusal in their last value alone */
            stats[k * C + j] = loss->stat_rows && !flags ? (v + (double)r) * (double)loss->stat_scale : 0.0;
        }
    free(buf);
    loss->stat_flags = flags;
    stats[2 * C] = flags ? 1.0 : 0.0;
    return EFL_OK;
}

efl_status efl_loss_apply_statistics(efl_loss *loss, cl_command_queue queue, const double *stats)
{
    efl_status st = check_call(loss, queue, stats);
    if (st != EFL_OK)
        return st;
    const size_t C = loss->cfg.num_classes, cpad = loss->cpad;
    for (size_t i = 0; i < 2 * C + 1; ++i)
        if (!isfinite(stats[i]) || stats[i] < 0.0)
            return EFL_ERROR_INVALID_STATE;
    /* the sums go where efl_reduce leaves a step's statistics (with a zero loss column), and
     * efl_apply's accumulate mode does the rest, or refuses with this rank's own reason */
    void *buf = calloc(3 * cpad, loss->acc_bytes);
    if (!buf)
        return EFL_ERROR_OUT_OF_MEMORY;
    for (size_t k = 0; k < 2; ++k)
        for (size_t j = 0; j < C; ++j)
            efl_acc_encode(loss, buf, k * cpad + j, stats[k * C + j], 0.0f);
    /* the flags: this rank's own reason or a peer's, and no column's (efl_reduce's layout) */
    cl_uint *flags = calloc(1 + cpad, sizeof *flags);
    if (!flags) {
        free(buf);
        return EFL_ERROR_OUT_OF_MEMORY;
    }
    flags[0] = stats[2 * C] > 0.0 ? (loss->stat_flags ? loss->stat_flags : EFL_FLAG_PEER) : 0u;
    /* blocking writes: the host memory is done with on return, and the apply kernel behind them
     * need not be waited for */
    cl_int err = clEnqueueWriteBuffer(queue, loss->step_stats, CL_TRUE, 0, 3 * cpad * loss->acc_bytes, buf, 0,
                                      NULL, NULL);
    if (err == CL_SUCCESS)
        err = clEnqueueWriteBuffer(queue, loss->step_flags, CL_TRUE, 0, (1 + cpad) * sizeof *flags, flags, 0, NULL,
                                   NULL);
    if (err == CL_SUCCESS)
        st = efl_enqueue_apply(loss, queue, EFL_APPLY_ACCUMULATE, 1.0f);
    free(flags);
    free(buf);
    if (err != CL_SUCCESS)
        return efl_cl_fail(loss->ctx, err);
    return st;
}
