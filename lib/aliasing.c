/* Aliasing checks: an output a call writes must not overlap any input it reads nor any other
 * output (EFL_ERROR_ALIASED_BUFFERS, before anything is enqueued). The step kernel re-reads the
 * last vector chunk of a row after writing it, so an in-place gradient would be silently wrong.
 *
 * Two cl_mem overlap when they are the same object, when they resolve (sub-buffers through
 * CL_MEM_ASSOCIATED_MEMOBJECT + CL_MEM_OFFSET) to the same root buffer with overlapping byte
 * ranges, or when both roots wrap host memory (CL_MEM_USE_HOST_PTR) at overlapping host
 * addresses. Only the bytes the call uses count, sized as check_batch_buffers sizes them. */
#include <stdint.h>
#include <string.h>

#include "internal.h"

typedef struct {
    cl_mem mem;      /* as the caller passed it */
    cl_mem root;     /* the buffer it is carved from (itself if not a sub-buffer) */
    uint64_t offset; /* of mem's first byte within root */
    uintptr_t host;  /* where root's memory is the caller's (CL_MEM_USE_HOST_PTR), else 0 */
    uint64_t bytes;  /* used by the call, > 0 */
    int output;
} span;

#define MAX_SPANS (3 * EFL_MAX_LEVELS + 3)

static efl_status add_span(const efl_loss *loss, span *s, size_t *count, cl_mem m, uint64_t bytes, int output)
{
    if (!m || bytes == 0)
        return EFL_OK;
    span *out = &s[(*count)++];
    *out = (span){m, m, 0, 0, bytes, output};
    /* OpenCL allows no sub-buffer of a sub-buffer, but follow the chain anyway; bounded */
    for (int depth = 0; depth < 16; ++depth) {
        cl_mem parent = NULL;
        size_t off = 0;
        cl_int err = clGetMemObjectInfo(out->root, CL_MEM_ASSOCIATED_MEMOBJECT, sizeof parent, &parent, NULL);
        if (err != CL_SUCCESS)
            return efl_cl_fail(loss->ctx, err);
        if (!parent)
            break;
        if ((err = clGetMemObjectInfo(out->root, CL_MEM_OFFSET, sizeof off, &off, NULL)) != CL_SUCCESS)
            return efl_cl_fail(loss->ctx, err);
        out->offset += off;
        out->root = parent;
    }
    cl_mem_flags flags = 0;
    void *host = NULL;
    cl_int err = clGetMemObjectInfo(out->root, CL_MEM_FLAGS, sizeof flags, &flags, NULL);
    if (err == CL_SUCCESS && (flags & CL_MEM_USE_HOST_PTR))
        err = clGetMemObjectInfo(out->root, CL_MEM_HOST_PTR, sizeof host, &host, NULL);
    if (err != CL_SUCCESS)
        return efl_cl_fail(loss->ctx, err);
    out->host = (flags & CL_MEM_USE_HOST_PTR) && host ? (uintptr_t)host + (uintptr_t)out->offset : 0;
    return EFL_OK;
}

static int ranges_overlap(uint64_t a, uint64_t an, uint64_t b, uint64_t bn) { return a < b + bn && b < a + an; }

static int spans_overlap(const span *a, const span *b)
{
    if (a->mem == b->mem)
        return 1;
    if (a->root == b->root && ranges_overlap(a->offset, a->bytes, b->offset, b->bytes))
        return 1;
    return a->host && b->host && ranges_overlap(a->host, a->bytes, b->host, b->bytes);
}

/* Every pair with an output in it (inputs among themselves may overlap). */
static efl_status check_spans(const span *s, size_t count)
{
    for (size_t i = 0; i < count; ++i)
        for (size_t j = i + 1; j < count; ++j)
            if ((s[i].output || s[j].output) && spans_overlap(&s[i], &s[j]))
                return EFL_ERROR_ALIASED_BUFFERS;
    return EFL_OK;
}

efl_status efl_check_batch_aliasing(const efl_loss *loss, efl_op op, const efl_batch *bt)
{
    size_t elems[EFL_MAX_LEVELS], rows = 0;
    uint32_t levels = 0;
    efl_status st = efl_batch_shape(loss, bt, elems, &levels, &rows);
    if (st != EFL_OK)
        return st;
    /* the buffers check_batch_buffers requires, and the bytes it requires of them */
    const uint64_t esize = efl_dtype_size(bt->dtype);
    const int reduces = !efl_op_collects(op) && bt->reduction != EFL_REDUCTION_NONE;
    const int elementwise = !efl_op_collects(op) && bt->reduction == EFL_REDUCTION_NONE;
    span s[MAX_SPANS];
    size_t count = 0;
    if (reduces && (st = add_span(loss, s, &count, bt->loss, sizeof(float), 1)) != EFL_OK)
        return st;
    if (reduces && bt->reduction == EFL_REDUCTION_MEAN &&
        (st = add_span(loss, s, &count, bt->normalizer_buffer, sizeof(float), 0)) != EFL_OK)
        return st;
    if (rows > 0 && (st = add_span(loss, s, &count, bt->labels, (uint64_t)rows * sizeof(cl_int), 0)) != EFL_OK)
        return st;
    for (uint32_t l = 0; l < levels && rows > 0; ++l) {
        const uint64_t bytes = (uint64_t)elems[l] * esize;
        if ((st = add_span(loss, s, &count, bt->input[l], bytes, 0)) != EFL_OK ||
            (efl_op_writes_grad(op) && (st = add_span(loss, s, &count, bt->grad[l], bytes, 1)) != EFL_OK) ||
            (elementwise && (st = add_span(loss, s, &count, bt->loss_elems[l], bytes, 1)) != EFL_OK))
            return st;
    }
    return check_spans(s, count);
}

efl_status efl_check_host_ranges(const efl_host_range *r, size_t count)
{
    for (size_t i = 0; i < count; ++i)
        for (size_t j = i + 1; j < count; ++j)
            if ((r[i].output || r[j].output) && r[i].ptr && r[j].ptr && r[i].bytes && r[j].bytes &&
                ranges_overlap((uintptr_t)r[i].ptr, r[i].bytes, (uintptr_t)r[j].ptr, r[j].bytes))
                return EFL_ERROR_ALIASED_BUFFERS;
    return EFL_OK;
}

efl_status efl_check_host_batch_aliasing(efl_op op, const efl_host_batch *b, const size_t *elems, uint32_t levels,
                                         size_t rows)
{
    const uint64_t esize = efl_dtype_size(b->dtype);
    const int reduces = !efl_op_collects(op) && b->reduction != EFL_REDUCTION_NONE;
    const int elementwise = !efl_op_collects(op) && b->reduction == EFL_REDUCTION_NONE;
    efl_host_range r[3 * EFL_MAX_LEVELS + 2];
    size_t count = 0;
    if (reduces)
        r[count++] = (efl_host_range){b->loss, sizeof(float), 1};
    if (rows > 0)
        r[count++] = (efl_host_range){b->labels, (uint64_t)rows * sizeof(int32_t), 0};
    for (uint32_t l = 0; l < levels && rows > 0; ++l) {
        const uint64_t bytes = (uint64_t)elems[l] * esize;
        r[count++] = (efl_host_range){b->input[l], bytes, 0};
        if (efl_op_writes_grad(op))
            r[count++] = (efl_host_range){b->grad[l], bytes, 1};
        if (elementwise)
            r[count++] = (efl_host_range){b->loss_elems[l], bytes, 1};
    }
    return efl_check_host_ranges(r, count);
}
