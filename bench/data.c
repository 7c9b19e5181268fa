/* The inputs and the device buffers. Logits ~ N(-4, 2.5) (a detector's scores: most anchors
 * confidently background), written to the buffer tile by tile from one random tile of 8 Mi
 * floats; labels from bench_zipf_labels (bench_data.h). */
#define _POSIX_C_SOURCE 200809L /* clock_gettime (bench_util.h) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

/* float -> float16 or bfloat16 bits, rounded to nearest (even) */
static uint16_t to_16(float f, int dtype)
{
    uint32_t b;
    memcpy(&b, &f, 4);
    if (dtype == EFL_DTYPE_BFLOAT16)
        return (uint16_t)((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16);
    const uint32_t sign = (b >> 16) & 0x8000u;
    const int e = (int)((b >> 23) & 0xFF) - 127;
    if (e < -24)
        return (uint16_t)sign;
    if (e > 15)
        return (uint16_t)(sign | 0x7C00u);
    const uint32_t m = (b & 0x7FFFFFu) | 0x800000u; /* 24 significant bits */
    const int shift = e >= -14 ? 13 : 13 + (-14 - e);
    uint32_t q = m >> shift;
    const uint32_t rest = m & ((1u << shift) - 1u), half = 1u << (shift - 1);
    q += rest > half || (rest == half && (q & 1u));
    /* normal: exponent field from e, mantissa q without its leading 1 (a carry moves up) */
    return (uint16_t)(sign | (e >= -14 ? ((uint32_t)(e + 14) << 10) + q : q));
}

cl_int bench_fill_logits(cl_command_queue q, cl_mem buf, size_t count)
{
    return bench_fill_logits_as(q, buf, count, EFL_DTYPE_FLOAT32);
}

cl_int bench_fill_logits_as(cl_command_queue q, cl_mem buf, size_t count, int dtype)
{
    const size_t tile_n = ((size_t)8 << 20) + 7; /* odd length: rows do not repeat in step */
    const size_t len = count < tile_n ? count : tile_n;
    float *tile = malloc(len * sizeof *tile);
    if (!tile)
        return CL_OUT_OF_HOST_MEMORY;
    uint64_t s = 0x243F6A8885A308D3ULL;
    for (size_t i = 0; i < len; i += 2) {
        const double u1 = 1.0 - bench_rand_unit(&s), u2 = bench_rand_unit(&s);
        const double r = sqrt(-2.0 * log(u1)), t = 6.283185307179586 * u2;
        tile[i] = (float)(-4.0 + 2.5 * r * cos(t));
        if (i + 1 < len)
            tile[i + 1] = (float)(-4.0 + 2.5 * r * sin(t));
    }
    const size_t es = dtype_bytes[dtype];
    if (dtype != EFL_DTYPE_FLOAT32) /* in place: 16-bit values into the front of the tile */
        for (size_t i = 0; i < len; ++i)
            ((uint16_t *)tile)[i] = to_16(tile[i], dtype);
    cl_int err = CL_SUCCESS;
    for (size_t off = 0; err == CL_SUCCESS && off < count; off += len) {
        const size_t k = count - off < len ? count - off : len;
        err = clEnqueueWriteBuffer(q, buf, CL_TRUE, off * es, k * es, tile, 0, NULL, NULL);
    }
    free(tile);
    return err;
}

cl_int bench_write_labels(cl_command_queue q, cl_mem buf, size_t n, uint32_t C)
{
    int32_t *lab = malloc((n ? n : 1) * sizeof *lab);
    uint64_t s = 0xB7E151628AED2A6BULL ^ ((uint64_t)C << 32) ^ n;
    cl_int err = CL_OUT_OF_HOST_MEMORY;
    if (lab && bench_zipf_labels(&s, lab, n, C))
        err = n ? clEnqueueWriteBuffer(q, buf, CL_TRUE, 0, n * sizeof *lab, lab, 0, NULL, NULL) : CL_SUCCESS;
    free(lab);
    return err;
}

int bench_buffers_create(cl_context cl, cl_command_queue q, size_t max_elems, size_t max_n, const char *dn,
                         buffers *b)
{
    memset(b, 0, sizeof *b);
    cl_int e[4], err;
    b->logits = clCreateBuffer(cl, CL_MEM_READ_ONLY, max_elems * sizeof(float), NULL, &e[0]);
    b->grad = clCreateBuffer(cl, CL_MEM_READ_WRITE, max_elems * sizeof(float), NULL, &e[1]);
    b->labels = clCreateBuffer(cl, CL_MEM_READ_ONLY, max_n * sizeof(cl_int), NULL, &e[2]);
    b->loss_out = clCreateBuffer(cl, CL_MEM_READ_WRITE, sizeof(float), NULL, &e[3]);
    for (int i = 0; i < 4; ++i)
        if (e[i] != CL_SUCCESS)
            return cl_fail("clCreateBuffer (logits, grad, labels)", dn, e[i]);
    if ((err = bench_fill_logits(q, b->logits, max_elems)) != CL_SUCCESS)
        return cl_fail("writing the logits", dn, err);
    const float zero = 0.0f; /* touch grad now: its pages are the caller's cost, not the step's */
    if ((err = clEnqueueFillBuffer(q, b->grad, &zero, sizeof zero, 0, max_elems * sizeof(float), 0, NULL, NULL)) !=
        CL_SUCCESS)
        return cl_fail("clEnqueueFillBuffer (grad)", dn, err);
    if ((err = clFinish(q)) != CL_SUCCESS)
        return cl_fail("clFinish", dn, err);
    return 0;
}

static void release(cl_mem *m)
{
    if (*m)
        clReleaseMemObject(*m);
    *m = NULL;
}

void bench_buffers_release(buffers *b)
{
    for (int d = 0; d < 3; ++d)
        release(&b->logits16[d]);
    for (int l = 0; l < LVIS_HEAD_LEVELS; ++l) {
        release(&b->level_x[l]);
        release(&b->level_g[l]);
    }
    release(&b->loss_out);
    release(&b->labels);
    release(&b->grad);
    release(&b->logits);
}

cl_int bench_make_levels(cl_context cl, cl_command_queue q, buffers *b, uint32_t C)
{
    cl_int err = CL_SUCCESS;
    for (int l = 0; l < LVIS_HEAD_LEVELS && err == CL_SUCCESS && !b->level_x[l]; ++l) {
        const size_t elems = (size_t)LVIS_HEAD_B * LVIS_HEAD_A * C * lvis_head_h[l] * lvis_head_w[l];
        b->level_x[l] = clCreateBuffer(cl, CL_MEM_READ_ONLY, elems * sizeof(float), NULL, &err);
        if (err == CL_SUCCESS)
            b->level_g[l] = clCreateBuffer(cl, CL_MEM_READ_WRITE, elems * sizeof(float), NULL, &err);
        if (err == CL_SUCCESS)
            err = bench_fill_logits(q, b->level_x[l], elems);
        const float zero = 0.0f;
        if (err == CL_SUCCESS)
            err = clEnqueueFillBuffer(q, b->level_g[l], &zero, sizeof zero, 0, elems * sizeof(float), 0, NULL, NULL);
    }
    return err == CL_SUCCESS ? clFinish(q) : err;
}

cl_int bench_make_logits16(cl_context cl, cl_command_queue q, buffers *b, size_t max_elems)
{
    if (b->logits16[b->dtype])
        return CL_SUCCESS;
    cl_int err = CL_SUCCESS;
    b->logits16[b->dtype] = clCreateBuffer(cl, CL_MEM_READ_ONLY, max_elems * 2, NULL, &err);
    if (err == CL_SUCCESS)
        err = bench_fill_logits_as(q, b->logits16[b->dtype], max_elems, b->dtype);
    return err;
}
