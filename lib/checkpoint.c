#define _POSIX_C_SOURCE 200809L
/* Checkpoints: the per-class state to a file or a memory buffer and back.
 *
 * Format, version 1. Little-endian whatever the host, written and read byte by byte:
 *   offset  size     field
 *   0       8        magic "EFLCKPT\0"
 *   8       4        u32 format version (1)
 *   12      4        u32 mode (efl_mode)
 *   16      4        u32 C
 *   20      4        u32 flags, reserved: 0
 *   24      4 * 5    float32 bits of gamma, alpha, scale_factor, mu, loss_weight
 *   44      4        i32 ignore_index
 *   48      4        u32 label convention (efl_label_convention)
 *   52      8 * 3C   float64 totals: pos_grad[C], neg_grad[C], pos_neg[C]
 *   52+24C  4 * 3C   float32 residuals, same order: the exact total is total + residual. 0 from
 *                    a float64 device; from a float-pair device, the low bits of the pair that
 *                    a double cannot hold (efl_state_read_exact), so that it resumes bitwise.
 *   52+36C  8        u64 FNV-1a (64 bits) of every byte before it
 * Any later version keeps the frame (magic, version at 8, checksum last), so a reader can tell
 * another version from a corrupted file.
 *
 * Reading checks everything before it writes the state, in this order: the frame and the
 * checksum (EFL_ERROR_CHECKPOINT_CORRUPT), the version and flags (_VERSION), the size for the
 * header's C (_CORRUPT), the configuration (_MISMATCH), then the values (_CORRUPT).
 *
 * Saving writes "<path>.tmp.<pid>.<n>" in the same folder, flushes it to the disk, then renames
 * it over path: a reader, or a crash at any point, sees the old checkpoint or the new one whole.
 * A save first removes the temporaries of the same path that dead processes left behind (a
 * save killed before its rename): "<basename>.tmp.<pid>.<n>" in that folder whose pid is no
 * live process. A live process's temporary is never touched (lib/file_io.c).
 *
 * Loading reads only a regular file: a FIFO, a device or a folder is EFL_ERROR_IO at once,
 * never a call that blocks; a file larger than any checkpoint is _CORRUPT, unread.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "disk_cache.h" /* efl_fnv1a64 */
#include "file_io.h"
#include "internal.h"

#define MAGIC "EFLCKPT" /* and its NUL: 8 bytes */
#define FORMAT_VERSION 1u
#define HEADER_BYTES 52u
#define CHECKSUM_BYTES 8u

/* ------------------------------------------------------------------- bytes */
static void put_le(unsigned char *p, uint64_t v, int bytes)
{
    for (int i = 0; i < bytes; ++i)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_le(const unsigned char *p, int bytes)
{
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; --i)
        v = v << 8 | p[i];
    return v;
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float bits_f32(uint64_t u)
{
    const uint32_t w = (uint32_t)u;
    float f;
    memcpy(&f, &w, sizeof f);
    return f;
}

static uint64_t f64_bits(double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    return u;
}

static double bits_f64(uint64_t u)
{
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}

/* ------------------------------------------------------------------ format */
uint64_t efl_checkpoint_size(uint32_t num_classes)
{
    return HEADER_BYTES + 36u * (uint64_t)num_classes + CHECKSUM_BYTES;
}

void efl_checkpoint_serialize(const efl_loss_config *cfg, const double *totals, const float *residuals,
                              unsigned char *out)
{
    const size_t n = 3 * (size_t)cfg->num_classes;
    memcpy(out, MAGIC, 8);
    const uint32_t words[11] = {FORMAT_VERSION,
                                (uint32_t)cfg->mode,
                                cfg->num_classes,
                                0u,
                                f32_bits(cfg->gamma),
                                f32_bits(cfg->alpha),
                                f32_bits(cfg->scale_factor),
                                f32_bits(cfg->mu),
                                f32_bits(cfg->loss_weight),
                                (uint32_t)cfg->ignore_index,
                                (uint32_t)cfg->labels};
    for (size_t i = 0; i < 11; ++i)
        put_le(out + 8 + 4 * i, words[i], 4);
    unsigned char *p = out + HEADER_BYTES;
    for (size_t i = 0; i < n; ++i, p += 8)
        put_le(p, f64_bits(totals[i]), 8);
    for (size_t i = 0; i < n; ++i, p += 4)
        put_le(p, f32_bits(residuals[i]), 4);
    put_le(p, efl_fnv1a64(out, (size_t)(p - out), EFL_FNV_OFFSET), 8);
}

/* Whether a loss configured as `expect` reads the totals as the file's writer meant them: the
 * same mode and C, and the parameters that shape the gradients feeding them and the factors
 * made from them (gamma, alpha, s, mu; each mode leaves one of s and mu unused, but a run that
 * changed it is not the run that wrote the file). loss_weight, ignore_index and the label
 * convention may differ: they choose which rows count and how the loss is reported, not what
 * the running totals mean, so a run may change them when it resumes. Values are compared as
 * numbers (-0 matches 0). */
static int config_matches(const unsigned char *h, const efl_loss_config *expect)
{
    if (get_le(h + 12, 4) != (uint32_t)expect->mode || get_le(h + 16, 4) != expect->num_classes)
        return 0;
    const float want[4] = {expect->gamma, expect->alpha, expect->scale_factor, expect->mu};
    for (int i = 0; i < 4; ++i)
        if (bits_f32(get_le(h + 24 + 4 * i, 4)) != want[i])
            return 0;
    return 1;
}

/* A residual is the rounding error of its total: adding it back rounds to the total again.
 * This also bounds it (|r| <= ulp(v) / 2), so no residual can make a total negative. */
static int value_ok(double v, float r)
{
    return isfinite(v) && v >= 0.0 && isfinite(r) && v + (double)r == v;
}

static efl_status read_values(const unsigned char *p, size_t n, double *totals, float *residuals)
{
    const unsigned char *q = p + 8 * n;
    for (size_t i = 0; i < n; ++i) {
        totals[i] = bits_f64(get_le(p + 8 * i, 8));
        residuals[i] = bits_f32(get_le(q + 4 * i, 4));
        if (!value_ok(totals[i], residuals[i]))
            return EFL_ERROR_CHECKPOINT_CORRUPT;
    }
    return EFL_OK;
}

efl_status efl_checkpoint_parse(const void *buf, size_t size, const efl_loss_config *expect, double *totals,
                                float *residuals)
{
    const unsigned char *p = buf;
    if (size < HEADER_BYTES + CHECKSUM_BYTES || memcmp(p, MAGIC, 8) != 0)
        return EFL_ERROR_CHECKPOINT_CORRUPT;
    if (get_le(p + size - CHECKSUM_BYTES, 8) != efl_fnv1a64(p, size - CHECKSUM_BYTES, EFL_FNV_OFFSET))
        return EFL_ERROR_CHECKPOINT_CORRUPT;
    /* a nonzero reserved flag is a writer that knows more than this reader */
    if (get_le(p + 8, 4) != FORMAT_VERSION || get_le(p + 20, 4) != 0)
        return EFL_ERROR_CHECKPOINT_VERSION;
    if ((uint64_t)size != efl_checkpoint_size((uint32_t)get_le(p + 16, 4)))
        return EFL_ERROR_CHECKPOINT_CORRUPT;
    if (!config_matches(p, expect))
        return EFL_ERROR_CHECKPOINT_MISMATCH;
    return read_values(p + HEADER_BYTES, 3 * (size_t)expect->num_classes, totals, residuals);
}

/* -------------------------------------------------------------- the state */
/* Totals and residuals of a loss: one allocation, 3*C of each. */
static double *alloc_values(const efl_loss *loss, float **residuals)
{
    const size_t n = 3 * (size_t)loss->cfg.num_classes;
    double *totals = malloc(n * (sizeof(double) + sizeof(float)));
    *residuals = totals ? (float *)(totals + n) : NULL;
    return totals;
}

/* The loss's checkpoint into out (efl_checkpoint_size bytes). */
static efl_status snapshot(efl_loss *loss, cl_command_queue queue, unsigned char *out)
{
    float *residuals = NULL;
    double *totals = alloc_values(loss, &residuals);
    if (!totals)
        return EFL_ERROR_OUT_OF_MEMORY;
    efl_status st = efl_state_read_exact(loss, queue, totals, residuals);
    if (st == EFL_OK)
        efl_checkpoint_serialize(&loss->cfg, totals, residuals, out);
    free(totals);
    return st;
}

/* Checks the bytes whole, then writes the state: a refused checkpoint changes nothing. */
static efl_status restore(efl_loss *loss, cl_command_queue queue, const void *buf, size_t size)
{
    float *residuals = NULL;
    double *totals = alloc_values(loss, &residuals);
    if (!totals)
        return EFL_ERROR_OUT_OF_MEMORY;
    efl_status st = efl_checkpoint_parse(buf, size, &loss->cfg, totals, residuals);
    if (st == EFL_OK)
        st = efl_state_write_exact(loss, queue, totals, residuals);
    free(totals);
    if (st != EFL_OK)
        return st;
    return efl_cl_finish(loss->ctx, queue, EFL_OK); /* blocking, the table made from the state included */
}

efl_status efl_loss_export_checkpoint(efl_loss *loss, cl_command_queue queue, void *buffer, size_t *size)
{
    efl_status st = efl_state_check_call(loss, queue);
    if (st != EFL_OK)
        return st;
    if (!size)
        return EFL_ERROR_NULL_HANDLE;
    const size_t need = (size_t)efl_checkpoint_size(loss->cfg.num_classes);
    if (buffer && *size < need)
        return EFL_ERROR_BUFFER_TOO_SMALL; /* *size untouched, like every output on an error */
    st = buffer ? snapshot(loss, queue, buffer) : EFL_OK;
    if (st == EFL_OK)
        *size = need;
    return st;
}

efl_status efl_loss_import_checkpoint(efl_loss *loss, cl_command_queue queue, const void *buffer, size_t size)
{
    efl_status st = efl_state_check_call(loss, queue);
    if (st != EFL_OK)
        return st;
    return buffer ? restore(loss, queue, buffer, size) : EFL_ERROR_NULL_BUFFER;
}

/* ------------------------------------------------------------------- files */
/* The whole file, if it is a regular file whose size could be a checkpoint at all (a larger
 * one is refused before anything is allocated); *size its length. A FIFO, a device or a
 * folder is refused without blocking. */
static efl_status read_checkpoint_file(const char *path, unsigned char **out, size_t *size)
{
    const size_t largest = (size_t)efl_checkpoint_size(EFL_MAX_CLASSES);
    switch (efl_read_regular_file(path, largest, out, size)) {
    case EFL_FILE_OK:
        return EFL_OK;
    case EFL_FILE_TOO_LARGE:
        return EFL_ERROR_CHECKPOINT_CORRUPT; /* no C makes a file this large */
    case EFL_FILE_NO_MEMORY:
        return EFL_ERROR_OUT_OF_MEMORY;
    default:
        return EFL_ERROR_IO; /* absent, unreadable, not a regular file, changed while read */
    }
}

efl_status efl_loss_save_checkpoint(efl_loss *loss, cl_command_queue queue, const char *path)
{
    efl_status st = efl_state_check_call(loss, queue);
    if (st != EFL_OK)
        return st;
    if (!path)
        return EFL_ERROR_NULL_BUFFER;
    const size_t size = (size_t)efl_checkpoint_size(loss->cfg.num_classes);
    unsigned char *buf = malloc(size);
    if (!buf)
        return EFL_ERROR_OUT_OF_MEMORY;
    st = snapshot(loss, queue, buf);
    if (st == EFL_OK)
        st = efl_write_file_atomically(path, buf, size, 0666); /* less the umask, as fopen */
    free(buf);
    return st;
}

efl_status efl_loss_load_checkpoint(efl_loss *loss, cl_command_queue queue, const char *path)
{
    efl_status st = efl_state_check_call(loss, queue);
    if (st != EFL_OK)
        return st;
    if (!path)
        return EFL_ERROR_NULL_BUFFER;
    unsigned char *buf = NULL;
    size_t size = 0;
    st = read_checkpoint_file(path, &buf, &size);
    if (st != EFL_OK)
        return st;
    st = restore(loss, queue, buf, size);
    free(buf);
    return st;
}

/* --------------------------------------------------------- host conveniences */
/* The loss's own host queue belongs to host.c; a queue of our own, finished before it goes,
 * orders the same (the other host calls block until done). The call checks the loss's mode. */
typedef efl_status (*file_call)(efl_loss *, cl_command_queue, const char *);

static efl_status with_own_queue(efl_loss *loss, const char *path, file_call call)
{
    if (!loss)
        return EFL_ERROR_NULL_HANDLE;
    cl_int err = CL_SUCCESS;
    cl_command_queue q = clCreateCommandQueue(loss->ctx->context, loss->ctx->device, 0, &err);
    if (err != CL_SUCCESS)
        return efl_cl_fail(loss->ctx, err);
    efl_status st = efl_cl_finish(loss->ctx, q, call(loss, q, path));
    clReleaseCommandQueue(q);
    return st;
}

efl_status efl_loss_save_checkpoint_host(efl_loss *loss, const char *path)
{
    return with_own_queue(loss, path, efl_loss_save_checkpoint);
}

efl_status efl_loss_load_checkpoint_host(efl_loss *loss, const char *path)
{
    return with_own_queue(loss, path, efl_loss_load_checkpoint);
}
