/* Embedded kernel sources, build options, compilation, and the per-context program cache. */
#include <stdlib.h>
#include <string.h>

#include <stdio.h>

#include "disk_cache.h"
#include "internal.h"

/* One program holds every kernel source of the table (kernels_embedded.c, in the CMake list's
 * order: the label rule, the host/kernel protocol and the common header first): one compile per
 * (context, device, options). The -D defines pick what each file compiles (EFL_PLANAR: the step
 * kernel's layout). */
static cl_program create_program(efl_context *ctx, cl_int *err)
{
    const size_t count = efl_kernel_source_count;
    const char **texts = malloc(count * sizeof *texts);
    size_t *lengths = malloc(count * sizeof *lengths);
    cl_program prog = NULL;
    *err = CL_OUT_OF_HOST_MEMORY;
    if (texts && lengths) {
        for (size_t i = 0; i < count; ++i) {
            texts[i] = efl_kernel_sources[i].text;
            lengths[i] = efl_kernel_sources[i].length;
        }
        prog = clCreateProgramWithSource(ctx->context, (cl_uint)count, texts, lengths, err);
    }
    free(texts);
    free(lengths);
    return prog;
}

static void log_build(efl_context *ctx, cl_program prog, const char *options)
{
    size_t size = 0;
    if (clGetProgramBuildInfo(prog, ctx->device, CL_PROGRAM_BUILD_LOG, 0, NULL, &size) != CL_SUCCESS || size == 0)
        return;
    char *text = malloc(size + 1);
    if (!text)
        return;
    if (clGetProgramBuildInfo(prog, ctx->device, CL_PROGRAM_BUILD_LOG, size, text, NULL) == CL_SUCCESS) {
        text[size] = '\0';
        const char *p = text;
        while (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')
            ++p;
        if (*p)
            efl_log_locked(ctx, "build log (%s):\n%s", options, text);
    }
    free(text);
}

/* What a compiled binary depends on, in full (the disk cache compares it whole). */
static void cache_key(efl_context *ctx, const char *options, char *key, size_t size)
{
    uint64_t h = EFL_FNV_OFFSET;
    for (size_t i = 0; i < efl_kernel_source_count; ++i)
        h = efl_fnv1a64(efl_kernel_sources[i].text, efl_kernel_sources[i].length, h);
    char pver[256] = "";
    cl_platform_id plat = NULL;
    if (clGetDeviceInfo(ctx->device, CL_DEVICE_PLATFORM, sizeof plat, &plat, NULL) == CL_SUCCESS)
        clGetPlatformInfo(plat, CL_PLATFORM_VERSION, sizeof pver - 1, pver, NULL);
    snprintf(key, size, "efl %s\nplatform %s / %s\ndevice %s\ndriver %s\noptions %s\nsource %016llx\n",
             EFL_VERSION_STRING, ctx->info.platform, pver, ctx->info.name, ctx->info.driver, options,
             (unsigned long long)h);
}

/* Called with ctx->lock held: a second thread asking for the same program waits for this
 * compile instead of starting its own. The disk cache is asked first. */
static efl_status build(efl_context *ctx, const char *options, cl_program *out)
{
    char dir[1024], key[2048];
    const int cached = efl_disk_cache_dir(ctx, dir, sizeof dir);
    if (cached) {
        cache_key(ctx, options, key, sizeof key);
        cl_program prog = efl_disk_cache_load(ctx, dir, key, options);
        if (prog) {
            *out = prog;
            return EFL_OK;
        }
    }
    cl_int err = CL_SUCCESS;
    cl_program prog = create_program(ctx, &err);
    if (err != CL_SUCCESS)
        return efl_cl_fail(ctx, err);
    err = clBuildProgram(prog, 1, &ctx->device, options, NULL, NULL);
    if (err != CL_SUCCESS) {
        log_build(ctx, prog, options);
        clReleaseProgram(prog);
        atomic_store(&ctx->last_cl_error, err);
        return err == CL_OUT_OF_HOST_MEMORY || err == CL_OUT_OF_RESOURCES ? EFL_ERROR_OUT_OF_MEMORY
                                                                          : EFL_ERROR_BUILD_FAILED;
    }
    log_build(ctx, prog, options); /* warnings, if the compiler left any */
    if (cached)
        efl_disk_cache_store(ctx, dir, key, prog);
    *out = prog;
    return EFL_OK;
}

efl_status efl_program_get(efl_context *ctx, const efl_kernel_params *kp, cl_program *out)
{
    char options[1024];
    if (!efl_device_build_options(&ctx->info, kp, options, sizeof options))
        return EFL_ERROR_INVALID_PARAMETER; /* EFL_BUILD_OPTIONS longer than we accept */

    efl_status st = EFL_OK;
    efl_mutex_lock(&ctx->lock);
    for (size_t i = 0; i < ctx->nprograms; ++i) {
        if (strcmp(ctx->programs[i].options, options) == 0) {
            *out = ctx->programs[i].program;
            clRetainProgram(*out);
            efl_mutex_unlock(&ctx->lock);
            return EFL_OK;
        }
    }
    efl_program_entry *grown = realloc(ctx->programs, (ctx->nprograms + 1) * sizeof *grown);
    char *key = grown ? malloc(strlen(options) + 1) : NULL;
    if (!grown || !key) {
        if (grown)
            ctx->programs = grown;
        efl_mutex_unlock(&ctx->lock);
        return EFL_ERROR_OUT_OF_MEMORY;
    }
    ctx->programs = grown;
    strcpy(key, options);
    cl_program prog = NULL;
    st = build(ctx, options, &prog);
    if (st == EFL_OK) {
        ctx->programs[ctx->nprograms].options = key;
        ctx->programs[ctx->nprograms].program = prog;
        ctx->nprograms++;
        efl_log_locked(ctx, "program ready: %s", options);
        clRetainProgram(prog);
        *out = prog;
    } else {
        free(key);
    }
    efl_mutex_unlock(&ctx->lock);
    return st;
}

void efl_program_cache_release(efl_context *ctx)
{
    for (size_t i = 0; i < ctx->nprograms; ++i) {
        clReleaseProgram(ctx->programs[i].program);
        free(ctx->programs[i].options);
    }
    free(ctx->programs);
    ctx->programs = NULL;
    ctx->nprograms = 0;
}
