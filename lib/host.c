/* Host-array conveniences: the same calls for users without OpenCL plumbing, through a queue
 * and staging buffers the loss owns. */
#include <stdlib.h>

#include "internal.h"

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

static efl_status run_host(efl_loss *loss, const float *logits, const int32_t *labels, size_t n, float normalizer,
                           efl_reduction reduction, float *loss_out, float *grad_out, int is_step)
{
    if (!loss)
        return EFL_ERROR_NULL_HANDLE;
    if (!loss_out || (n > 0 && (!logits || !labels)))
        return EFL_ERROR_NULL_BUFFER;
    efl_status st = ensure_staging(loss, n > 0 ? n : 1);
    if (st != EFL_OK)
        return st;
    cl_command_queue q = loss->host_queue;
    const size_t C = loss->cfg.num_classes;
    cl_int err = CL_SUCCESS;
    if (n > 0) {
        err = clEnqueueWriteBuffer(q, loss->host_x, CL_FALSE, 0, n * C * sizeof(float), logits, 0, NULL, NULL);
        if (err == CL_SUCCESS)
            err = clEnqueueWriteBuffer(q, loss->host_y, CL_FALSE, 0, n * sizeof(cl_int), labels, 0, NULL, NULL);
        if (err != CL_SUCCESS)
            return efl_cl_fail(loss->ctx, err);
    }
    st = is_step ? efl_enqueue_step(loss, q, loss->host_x, loss->host_y, n, normalizer, reduction, loss->host_loss,
                                    loss->host_g, 0, NULL, NULL)
                 : efl_enqueue_forward(loss, q, loss->host_x, loss->host_y, n, normalizer, reduction,
                                       loss->host_loss, 0, NULL, NULL);
    if (st != EFL_OK) {
        clFinish(q); /* the writes above read the caller's arrays */
        return st;
    }
    /* Only a step the device accepted reaches the caller's arrays. */
    st = efl_loss_query_status(loss, q);
    if (st != EFL_OK)
        return st;
    float value = 0.0f;
    err = clEnqueueReadBuffer(q, loss->host_loss, CL_TRUE, 0, sizeof value, &value, 0, NULL, NULL);
    if (err == CL_SUCCESS && is_step && grad_out && n > 0)
        err = clEnqueueReadBuffer(q, loss->host_g, CL_TRUE, 0, n * C * sizeof(float), grad_out, 0, NULL, NULL);
    if (err != CL_SUCCESS)
        return efl_cl_fail(loss->ctx, err);
    *loss_out = value;
    return EFL_OK;
}

efl_status efl_loss_step_host(efl_loss *loss, const float *logits, const int32_t *labels, size_t n, float normalizer,
                              efl_reduction reduction, float *loss_out, float *grad_out)
{
    return run_host(loss, logits, labels, n, normalizer, reduction, loss_out, grad_out, 1);
}

efl_status efl_loss_forward_host(efl_loss *loss, const float *logits, const int32_t *labels, size_t n,
                                 float normalizer, efl_reduction reduction, float *loss_out)
{
    return run_host(loss, logits, labels, n, normalizer, reduction, loss_out, NULL, 0);
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
