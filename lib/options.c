/* efl_context_options: what the environment variables EFL_CACHE_DIR and EFL_TUNE say, given per
 * context instead. The options are checked and copied first, then the context is created as
 * without them (lib/context.c, lib/select.c) and given the copies before it is returned: the disk
 * cache (lib/disk_cache.c) reads ctx->cache_dir, the launch parameters (lib/device.c) info.tune.
 *
 * Growth: a field is only ever appended, and its default must be all zero bytes, so that a
 * caller's larger struct whose unknown tail is zero means "the defaults" (see efl.h). */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Whether the caller's struct, of the size it gives, holds the whole field. */
#define HAS_FIELD(o, field)                                                                        \
    ((size_t)(o)->size >= offsetof(efl_context_options, field) + sizeof((o)->field))

void efl_context_options_init(efl_context_options *options)
{
    if (!options)
        return;
    memset(options, 0, sizeof *options);
    options->size = (uint32_t)sizeof *options;
}

static int tail_is_zero(const efl_context_options *o)
{
    const unsigned char *bytes = (const unsigned char *)o;
    for (size_t i = sizeof *o; i < o->size; ++i)
        if (bytes[i])
            return 0;
    return 1;
}

static char *copy_or_null(const char *s, int *oom)
{
    if (!s)
        return NULL;
    const size_t len = strlen(s) + 1;
    char *c = malloc(len);
    if (!c)
        *oom = 1;
    else
        memcpy(c, s, len);
    return c;
}

/* Checks the caller's options and copies the strings the context keeps (NULL: not set). */
static efl_status copy_options(const efl_context_options *o, char **cache_dir, char **tune)
{
    *cache_dir = *tune = NULL;
    if (!o)
        return EFL_OK;
    if (o->size < sizeof(uint32_t) || (o->size > sizeof *o && !tail_is_zero(o)))
        return EFL_ERROR_INVALID_PARAMETER;
    const char *dir = HAS_FIELD(o, cache_dir) ? o->cache_dir : NULL;
    const char *t = HAS_FIELD(o, tune) ? o->tune : NULL;
    efl_tune parsed;
    if (t && !efl_tune_parse(t, &parsed))
        return EFL_ERROR_INVALID_PARAMETER;
    int oom = 0;
    *cache_dir = copy_or_null(dir, &oom);
    *tune = copy_or_null(t, &oom);
    if (!oom)
        return EFL_OK;
    free(*cache_dir);
    free(*tune);
    *cache_dir = *tune = NULL;
    return EFL_ERROR_OUT_OF_MEMORY;
}

/* Hands the copies to a context no other thread has seen yet, and logs them. */
static void attach(efl_context *ctx, char *cache_dir, char *tune)
{
    ctx->cache_dir = cache_dir;
    ctx->tune = tune;
    ctx->info.tune = tune;
    const char *q = "\"", *none = "(environment)";
    if (cache_dir || tune)
        efl_log(ctx, "options: cache_dir %s%s%s, tune %s%s%s", cache_dir ? q : "", cache_dir ? cache_dir : none,
                cache_dir ? q : "", tune ? q : "", tune ? tune : none, tune ? q : "");
}

/* A created context takes the copies; a failed creation frees them. */
static efl_status settle(efl_status st, efl_context *ctx, char *cache_dir, char *tune)
{
    if (st == EFL_OK) {
        attach(ctx, cache_dir, tune);
    } else {
        free(cache_dir);
        free(tune);
    }
    return st;
}

efl_status efl_context_create_with_options(cl_context context, cl_device_id device,
                                           const efl_context_options *options, efl_context **out)
{
    if (!out)
        return EFL_ERROR_NULL_HANDLE;
    *out = NULL;
    char *cache_dir, *tune;
    efl_status st = copy_options(options, &cache_dir, &tune);
    if (st == EFL_OK)
        st = efl_context_create(context, device, out);
    return settle(st, *out, cache_dir, tune);
}

efl_status efl_context_create_default_with_options(const efl_context_options *options, efl_context **out)
{
    if (!out)
        return EFL_ERROR_NULL_HANDLE;
    *out = NULL;
    char *cache_dir, *tune;
    efl_status st = copy_options(options, &cache_dir, &tune);
    if (st == EFL_OK)
        st = efl_context_create_default(out);
    return settle(st, *out, cache_dir, tune);
}
