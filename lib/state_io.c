/* The per-class state to and from host arrays: float64 for the public calls, and exactly (a
 * float64 value and a float32 residual per total) for checkpoints (checkpoint.c). */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Device accumulators are double, or float pairs (hi, lo) where the device lacks float64. A
 * pair spans two exponents, so hi + lo need not fit one double when lo is far below ulp(hi):
 * v is hi + lo rounded to double and r the rounding error, which is exact in float (it is made
 * of low bits of lo). A checkpoint keeps both, so a pair device resumes bitwise. */
void efl_acc_decode(const efl_loss *loss, const void *buf, size_t i, double *v, float *r)
{
    if (loss->kp.fp64) {
        *v = ((const double *)buf)[i];
        *r = 0.0f;
        return;
    }
    const float *p = (const float *)buf + 2 * i;
    const double hi = p[0], lo = p[1];
    /* lo == 0: v = hi keeps the sign of a zero hi, which -0 + 0 would lose */
    *v = lo == 0.0 ? hi : hi + lo;
    const double bb = *v - hi; /* TwoSum: the error of hi + lo, exact whichever is larger */
    *r = (float)((hi - (*v - bb)) + (lo - bb));
}

/* The inverse of efl_acc_decode for any pair the kernels keep (normalised: hi = fl(hi + lo)):
 * (float)v is hi again, (v - hi) + r is lo exactly. Anything else (a double from the public
 * write, a checkpoint from a float64 device: r = 0) is normalised the way the kernels' fast
 * two-sum leaves their pairs, which is a no-op for their own. Exact under any FLT_EVAL_METHOD:
 * each float result is a sum of two floats rounded to float at its assignment (C11), which
 * wider intermediates cannot change, and s - hi is exact. */
void efl_acc_encode(const efl_loss *loss, void *buf, size_t i, double v, float r)
{
    if (loss->kp.fp64) {
        ((double *)buf)[i] = v; /* v is the exact total there; r only ever serves pairs */
        return;
    }
    float *p = (float *)buf + 2 * i;
    const float hi = (float)v, lo = (float)((v - (double)hi) + (double)r);
    const float s = lo == 0.0f ? hi : hi + lo; /* as in efl_acc_decode: a zero keeps its sign */
    p[0] = s;
    p[1] = lo - (s - hi);
}

/* The value a reset gives each array: pos_grad = neg_grad = 0, g as for a fresh loss. */
static double initial_total(const efl_loss *loss, size_t k)
{
    return k < 2 ? 0.0 : efl_initial_pos_neg(&loss->cfg);
}

efl_status efl_state_check_call(efl_loss *loss, cl_command_queue queue)
{
    if (!loss)
        return EFL_ERROR_NULL_HANDLE;
    if (loss->cfg.mode == EFL_MODE_FOCAL)
        return EFL_ERROR_INVALID_MODE; /* focal loss keeps no state */
    return efl_check_queue(loss, queue);
}

/* The state as the device holds it: 3*C accumulators, acc_bytes each. */
static efl_status read_raw(efl_loss *loss, cl_command_queue queue, void **out)
{
    const size_t bytes = 3 * (size_t)loss->cfg.num_classes * loss->acc_bytes;
    void *buf = malloc(bytes);
    if (!buf)
        return EFL_ERROR_OUT_OF_MEMORY;
    cl_int err = clEnqueueReadBuffer(queue, loss->state, CL_TRUE, 0, bytes, buf, 0, NULL, NULL);
    if (err != CL_SUCCESS) {
        free(buf);
        return efl_cl_fail(loss->ctx, err);
    }
    *out = buf;
    return EFL_OK;
}

/* Reads into three arrays of C values (NULL skips one) and, if r is not NULL, 3*C residuals. */
static efl_status read_totals(efl_loss *loss, cl_command_queue queue, double *const v[3], float *r)
{
    void *buf = NULL;
    efl_status st = read_raw(loss, queue, &buf);
    if (st != EFL_OK)
        return st;
    const size_t C = loss->cfg.num_classes;
    for (size_t k = 0; k < 3; ++k) {
        for (size_t j = 0; v[k] && j < C; ++j) {
            float rest = 0.0f;
            efl_acc_decode(loss, buf, k * C + j, &v[k][j], &rest);
            if (r)
                r[k * C + j] = rest;
        }
    }
    free(buf);
    return EFL_OK;
}

/* Array k's value: finite, >= 0, within what the accumulators hold (below FLT_MAX for float
 * pairs, as efl_apply keeps them), and for EFL's pos_neg (k = 2) within [0, 1], the range the
 * update keeps it in: a larger g would make gamma_j < gamma_b and the loss negative or zero. */
static int total_ok(const efl_loss *loss, size_t k, double v)
{
    const int in_range = isfinite(v) && v >= 0.0 && (loss->kp.fp64 || v < FLT_MAX);
    return in_range && (k != 2 || loss->cfg.mode != EFL_MODE_EFL || v <= 1.0);
}

/* Checks every value, then writes all of them and the table that follows from them. A NULL
 * array means the reset value; r (3*C residuals) may be NULL for none. */
static efl_status write_totals(efl_loss *loss, cl_command_queue queue, const double *const v[3], const float *r)
{
    const size_t C = loss->cfg.num_classes;
    for (size_t k = 0; k < 3; ++k)
        for (size_t j = 0; v[k] && j < C; ++j)
            if (!total_ok(loss, k, v[k][j]) || (r && !total_ok(loss, k, v[k][j] + (double)r[k * C + j])))
                return EFL_ERROR_INVALID_STATE;
    void *buf = malloc(3 * C * loss->acc_bytes);
    if (!buf)
        return EFL_ERROR_OUT_OF_MEMORY;
    for (size_t k = 0; k < 3; ++k)
        for (size_t j = 0; j < C; ++j)
            efl_acc_encode(loss, buf, k * C + j, v[k] ? v[k][j] : initial_total(loss, k), r ? r[k * C + j] : 0.0f);
    cl_int err = clEnqueueWriteBuffer(queue, loss->state, CL_TRUE, 0, 3 * C * loss->acc_bytes, buf, 0, NULL, NULL);
    free(buf);
    if (err != CL_SUCCESS)
        return efl_cl_fail(loss->ctx, err);
    return efl_refresh_table(loss, queue);
}

efl_status efl_loss_read_state(efl_loss *loss, cl_command_queue queue, double *pos_grad, double *neg_grad,
                               double *pos_neg)
{
    efl_status st = efl_state_check_call(loss, queue);
    if (st != EFL_OK)
        return st;
    double *const v[3] = {pos_grad, neg_grad, pos_neg};
    return read_totals(loss, queue, v, NULL);
}

/* Values as total_ok says: EFL's pos_neg within [0, 1]. */
efl_status efl_loss_write_state(efl_loss *loss, cl_command_queue queue, const double *pos_grad,
                                const double *neg_grad, const double *pos_neg)
{
    efl_status st = efl_state_check_call(loss, queue);
    if (st != EFL_OK)
        return st;
    if (!pos_grad || !neg_grad || !pos_neg)
        return EFL_ERROR_NULL_BUFFER;
    const double *const v[3] = {pos_grad, neg_grad, pos_neg};
    return write_totals(loss, queue, v, NULL);
}

efl_status efl_loss_reset_state(efl_loss *loss, cl_command_queue queue)
{
    efl_status st = efl_state_check_call(loss, queue);
    if (st != EFL_OK)
        return st;
    const double *const none[3] = {NULL, NULL, NULL};
    return write_totals(loss, queue, none, NULL);
}

efl_status efl_state_read_exact(efl_loss *loss, cl_command_queue queue, double *v, float *r)
{
    efl_status st = efl_state_check_call(loss, queue);
    if (st != EFL_OK)
        return st;
    const size_t C = loss->cfg.num_classes;
    double *const parts[3] = {v, v + C, v + 2 * C};
    return read_totals(loss, queue, parts, r);
}

efl_status efl_state_write_exact(efl_loss *loss, cl_command_queue queue, const double *v, const float *r)
{
    efl_status st = efl_state_check_call(loss, queue);
    if (st != EFL_OK)
        return st;
    const size_t C = loss->cfg.num_classes;
    const double *const parts[3] = {v, v + C, v + 2 * C};
    return write_totals(loss, queue, parts, r);
}
