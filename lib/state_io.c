/* The per-class state to and from float64 host arrays. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Device accumulators are double, or float pairs (hi, lo) where the device lacks float64. */
static double acc_to_double(const efl_loss *loss, const void *buf, size_t i)
{
    if (loss->kp.fp64)
        return ((const double *)buf)[i];
    const float *p = (const float *)buf + 2 * i;
    return (double)p[0] + (double)p[1];
}

static void double_to_acc(const efl_loss *loss, void *buf, size_t i, double v)
{
    if (loss->kp.fp64) {
        ((double *)buf)[i] = v;
        return;
    }
    float *p = (float *)buf + 2 * i;
    p[0] = (float)v;
    p[1] = (float)(v - (double)p[0]);
}

efl_status efl_loss_read_state(efl_loss *loss, cl_command_queue queue, double *pos_grad, double *neg_grad,
                               double *pos_neg)
{
    if (!loss)
        return EFL_ERROR_NULL_HANDLE;
    efl_status st = efl_check_queue(loss, queue);
    if (st != EFL_OK)
        return st;
    const size_t C = loss->cfg.num_classes;
    void *buf = malloc(3 * C * loss->acc_bytes);
    if (!buf)
        return EFL_ERROR_OUT_OF_MEMORY;
    cl_int err = clEnqueueReadBuffer(queue, loss->state, CL_TRUE, 0, 3 * C * loss->acc_bytes, buf, 0, NULL, NULL);
    if (err != CL_SUCCESS) {
        free(buf);
        return efl_cl_fail(loss->ctx, err);
    }
    double *outs[3] = {pos_grad, neg_grad, pos_neg};
    for (size_t k = 0; k < 3; ++k)
        for (size_t j = 0; outs[k] && j < C; ++j)
            outs[k][j] = acc_to_double(loss, buf, k * C + j);
    free(buf);
    return EFL_OK;
}

static efl_status write_state(efl_loss *loss, cl_command_queue queue, const double *pos_grad,
                              const double *neg_grad, const double *pos_neg)
{
    const size_t C = loss->cfg.num_classes;
    void *buf = malloc(3 * C * loss->acc_bytes);
    if (!buf)
        return EFL_ERROR_OUT_OF_MEMORY;
    const double *ins[3] = {pos_grad, neg_grad, pos_neg};
    for (size_t k = 0; k < 3; ++k)
        for (size_t j = 0; j < C; ++j)
            double_to_acc(loss, buf, k * C + j, ins[k] ? ins[k][j] : (k == 2 ? 1.0 : 0.0));
    cl_int err = clEnqueueWriteBuffer(queue, loss->state, CL_TRUE, 0, 3 * C * loss->acc_bytes, buf, 0, NULL, NULL);
    free(buf);
    if (err != CL_SUCCESS)
        return efl_cl_fail(loss->ctx, err);
    return efl_refresh_table(loss, queue);
}

efl_status efl_loss_write_state(efl_loss *loss, cl_command_queue queue, const double *pos_grad,
                                const double *neg_grad, const double *pos_neg)
{
    if (!loss)
        return EFL_ERROR_NULL_HANDLE;
    efl_status st = efl_check_queue(loss, queue);
    if (st != EFL_OK)
        return st;
    if (!pos_grad || !neg_grad || !pos_neg)
        return EFL_ERROR_NULL_BUFFER;
    for (size_t j = 0; j < loss->cfg.num_classes; ++j) {
        const double v[3] = {pos_grad[j], neg_grad[j], pos_neg[j]};
        for (int k = 0; k < 3; ++k)
            if (!isfinite(v[k]) || v[k] < 0.0)
                return EFL_ERROR_INVALID_STATE;
    }
    return write_state(loss, queue, pos_grad, neg_grad, pos_neg);
}

efl_status efl_loss_reset_state(efl_loss *loss, cl_command_queue queue)
{
    if (!loss)
        return EFL_ERROR_NULL_HANDLE;
    efl_status st = efl_check_queue(loss, queue);
    if (st != EFL_OK)
        return st;
    return write_state(loss, queue, NULL, NULL, NULL);
}
