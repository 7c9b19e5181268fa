/* efl_context: the caller's cl_context and device, their facts, the program cache and the log. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

efl_status efl_cl_fail(efl_context *ctx, cl_int err)
{
    if (ctx)
        atomic_store(&ctx->last_cl_error, err);
    if (err == CL_OUT_OF_HOST_MEMORY || err == CL_OUT_OF_RESOURCES || err == CL_MEM_OBJECT_ALLOCATION_FAILURE ||
        err == CL_INVALID_BUFFER_SIZE)
        return EFL_ERROR_OUT_OF_MEMORY;
    return EFL_ERROR_OPENCL;
}

efl_status efl_cl_finish(efl_context *ctx, cl_command_queue queue, efl_status st)
{
    const cl_int err = clFinish(queue);
    if (err == CL_SUCCESS)
        return st;
    if (st == EFL_OK)
        return efl_cl_fail(ctx, err);
    /* the call failed already: its status stands; the code is recorded unless an OpenCL call
     * of its own failed first (efl_cl_fail's statuses), whose code is kept */
    if (st != EFL_ERROR_OPENCL && st != EFL_ERROR_OUT_OF_MEMORY)
        (void)efl_cl_fail(ctx, err);
    return st;
}

static void vlog_locked(efl_context *ctx, const char *fmt, va_list ap)
{
    va_list copy;
    va_copy(copy, ap);
    int n = vsnprintf(NULL, 0, fmt, copy);
    va_end(copy);
    /* The log is for people reading a failure: keep it bounded. */
    if (n < 0 || ctx->log_len + (size_t)n + 2 > (1u << 20))
        return;
    char *grown = realloc(ctx->log, ctx->log_len + (size_t)n + 2);
    if (!grown)
        return;
    ctx->log = grown;
    vsnprintf(ctx->log + ctx->log_len, (size_t)n + 1, fmt, ap);
    ctx->log_len += (size_t)n;
    ctx->log[ctx->log_len++] = '\n';
    ctx->log[ctx->log_len] = '\0';
}

void efl_log_locked(efl_context *ctx, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog_locked(ctx, fmt, ap);
    va_end(ap);
}

void efl_log(efl_context *ctx, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    efl_mutex_lock(&ctx->lock);
    vlog_locked(ctx, fmt, ap);
    efl_mutex_unlock(&ctx->lock);
    va_end(ap);
}

efl_status efl_context_create(cl_context context, cl_device_id device, efl_context **out)
{
    if (!out)
        return EFL_ERROR_NULL_HANDLE;
    *out = NULL;
    if (!context || !device)
        return EFL_ERROR_NULL_HANDLE;

    /* The device must belong to the context. */
    size_t size = 0;
    cl_int err = clGetContextInfo(context, CL_CONTEXT_DEVICES, 0, NULL, &size);
    if (err != CL_SUCCESS)
        return EFL_ERROR_OPENCL;
    cl_device_id *devs = malloc(size ? size : 1);
    if (!devs)
        return EFL_ERROR_OUT_OF_MEMORY;
    err = clGetContextInfo(context, CL_CONTEXT_DEVICES, size, devs, NULL);
    int found = 0;
    for (size_t i = 0; err == CL_SUCCESS && i < size / sizeof *devs; ++i)
        found |= devs[i] == device;
    free(devs);
    if (err != CL_SUCCESS)
        return EFL_ERROR_OPENCL;
    if (!found)
        return EFL_ERROR_DEVICE_NOT_FOUND;

    efl_context *ctx = calloc(1, sizeof *ctx);
    if (!ctx)
        return EFL_ERROR_OUT_OF_MEMORY;
    if (efl_mutex_init(&ctx->lock) != 0) {
        free(ctx);
        return EFL_ERROR_OUT_OF_MEMORY;
    }
    atomic_init(&ctx->last_cl_error, 0);
    ctx->context = context;
    ctx->device = device;
    /* EFL_ERROR_UNSUPPORTED_DEVICE below OpenCL C 1.2 (lib/device.h, EFL_KERNEL_C_*) */
    efl_status st = efl_device_query(device, &ctx->info);
    if (st != EFL_OK) {
        efl_mutex_destroy(&ctx->lock);
        free(ctx);
        return st;
    }
    clRetainContext(context);
    clRetainDevice(device);
    efl_log(ctx, "device: %s / %s (%s), OpenCL C %u.%u, fp64 %s, max work-group %zu", ctx->info.platform,
            ctx->info.name, ctx->info.driver, ctx->info.c_major, ctx->info.c_minor, ctx->info.has_fp64 ? "yes" : "no",
            ctx->info.max_wg);
    *out = ctx;
    return EFL_OK;
}

void efl_context_destroy(efl_context *ctx)
{
    if (!ctx)
        return;
    efl_program_cache_release(ctx);
    clReleaseDevice(ctx->device);
    clReleaseContext(ctx->context);
    efl_mutex_destroy(&ctx->lock);
    free(ctx->log);
    free(ctx->cache_dir); /* efl_context_options (lib/options.c) */
    free(ctx->tune);
    free(ctx);
}

cl_context efl_context_cl_context(const efl_context *ctx) { return ctx ? ctx->context : NULL; }
cl_device_id efl_context_cl_device(const efl_context *ctx) { return ctx ? ctx->device : NULL; }
cl_int efl_context_last_cl_error(const efl_context *ctx)
{
    return ctx ? atomic_load(&((efl_context *)ctx)->last_cl_error) : 0;
}

size_t efl_context_log(const efl_context *ctx, char *buf, size_t size)
{
    if (!ctx) {
        if (buf && size)
            buf[0] = '\0';
        return 0;
    }
    efl_context *c = (efl_context *)ctx; /* the lock is not part of the logical state */
    efl_mutex_lock(&c->lock);
    size_t len = c->log_len;
    if (buf && size) {
        size_t n = len < size - 1 ? len : size - 1;
        if (n)
            memcpy(buf, c->log, n);
        buf[n] = '\0';
    }
    efl_mutex_unlock(&c->lock);
    return len;
}

efl_status efl_context_warmup(efl_context *ctx)
{
    if (!ctx)
        return EFL_ERROR_NULL_HANDLE;
    /* What efl_loss_create builds for efl_loss_config_init(&cfg, 1203): the same parameters
     * (EFL mode, float32, rows layout, float64 totals where the device has them), so the same
     * build options and cache entry. One program only (efl.h says which). */
    efl_kernel_params kp = efl_device_kernel_params(&ctx->info, 1203);
    cl_program prog = NULL;
    efl_status st = efl_program_get(ctx, &kp, &prog);
    if (st == EFL_OK)
        clReleaseProgram(prog);
    return st;
}
