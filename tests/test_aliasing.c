/*
 * Aliased buffers: an output (grad, loss_elems, the reduced loss) overlapping an input (logits,
 * labels, normalizer buffer) or another output is refused with EFL_ERROR_ALIASED_BUFFERS before
 * anything is enqueued: every buffer keeps its bytes and the state its bits. Overlap is the same
 * cl_mem, sub-buffers of one parent over overlapping bytes, or CL_MEM_USE_HOST_PTR buffers over
 * overlapping host bytes; only the bytes a call uses count, and buffers an op does not use are
 * ignored. The host calls refuse overlapping host arrays the same way.
 * C in {7, 37, 80}: never a multiple of the vector width, where an in-place step would re-read
 * columns of the last vector chunk it has already written.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

static tu_env E;
static size_t ALIGN; /* CL_DEVICE_MEM_BASE_ADDR_ALIGN in bytes: sub-buffer origins */

/* One configuration: a loss with a non-trivial state and separate, valid buffers. */
typedef struct {
    uint32_t C;
    efl_dtype dt;
    size_t esize, n, bytes; /* bytes: one [n, C] array in storage type */
    efl_loss *L;
    unsigned char *x; /* logits, storage type */
    int32_t *y;
    float norm; /* what the normalizer buffer holds */
    cl_mem bx, by, bl, bg, be, bn; /* logits, labels, loss, grad, loss elements, normalizer */
} fixture;

static size_t round_up(size_t v, size_t m) { return (v + m - 1) / m * m; }

static size_t mem_size(cl_mem m)
{
    size_t s = 0;
    REQUIRE_CL(clGetMemObjectInfo(m, CL_MEM_SIZE, sizeof s, &s, NULL));
    return s;
}

/* ------------------------------------------------------------ snapshots */
/* The bytes of every buffer a call could touch and the loss state, to compare after a refusal. */
#define MAX_WATCH (3 * EFL_MAX_LEVELS + 4)
typedef struct {
    size_t count;
    cl_mem mem[MAX_WATCH];
    unsigned char *bytes[MAX_WATCH];
    efl_ref_state state;
} snapshot;

static void watch(snapshot *s, cl_mem m)
{
    if (!m)
        return;
    for (size_t k = 0; k < s->count; ++k)
        if (s->mem[k] == m)
            return;
    if (s->count == MAX_WATCH)
        tu_fatal(__FILE__, __LINE__, "too many buffers to watch");
    const size_t size = mem_size(m);
    s->mem[s->count] = m;
    s->bytes[s->count] = tu_xmalloc(size);
    tu_read(&E, m, size, s->bytes[s->count]);
    s->count++;
}

static void snap_batch(snapshot *s, const fixture *f, const efl_batch *b)
{
    memset(s, 0, sizeof *s);
    for (int l = 0; l < EFL_MAX_LEVELS; ++l) {
        watch(s, b->input[l]);
        watch(s, b->grad[l]);
        watch(s, b->loss_elems[l]);
    }
    watch(s, b->labels);
    watch(s, b->normalizer_buffer);
    watch(s, b->loss);
    if (!efl_ref_state_init(&s->state, f->C))
        tu_fatal(__FILE__, __LINE__, "malloc");
    tu_read_state(&E, f->L, &s->state);
}

/* Nothing changed since the snapshot; frees it. */
static void check_snapshot(snapshot *s, const fixture *f, const char *what)
{
    REQUIRE_CL(clFinish(E.queue));
    for (size_t k = 0; k < s->count; ++k) {
        const size_t size = mem_size(s->mem[k]);
        unsigned char *now = tu_xmalloc(size);
        tu_read(&E, s->mem[k], size, now);
        size_t diff = 0;
        for (size_t i = 0; i < size; ++i)
            diff += now[i] != s->bytes[k][i];
        CHECK_MSG(diff == 0, "C=%u dtype %d %s: %zu byte(s) of buffer %zu changed", f->C, (int)f->dt, what, diff, k);
        free(now);
        free(s->bytes[k]);
    }
    efl_ref_state now;
    if (!efl_ref_state_init(&now, f->C))
        tu_fatal(__FILE__, __LINE__, "malloc");
    tu_read_state(&E, f->L, &now);
    CHECK_MSG(tu_state_equal_bits(&now, &s->state), "C=%u dtype %d %s: the state changed", f->C, (int)f->dt, what);
    efl_ref_state_free(&now);
    efl_ref_state_free(&s->state);
}

/* The batch is refused as aliased and changes nothing. */
static void expect_aliased(const fixture *f, const char *what, efl_op op, const efl_batch *b)
{
    snapshot s;
    snap_batch(&s, f, b);
    efl_status st = efl_enqueue_batch(f->L, E.queue, op, b, 0, NULL, NULL);
    CHECK_MSG(st == EFL_ERROR_ALIASED_BUFFERS, "C=%u dtype %d %s: %s, expected %s", f->C, (int)f->dt, what,
              efl_status_string(st), efl_status_string(EFL_ERROR_ALIASED_BUFFERS));
    check_snapshot(&s, f, what);
}

/* The batch is accepted and the device finds nothing wrong with it. */
static void expect_ok(const fixture *f, const char *what, efl_op op, const efl_batch *b)
{
    efl_status st = efl_enqueue_batch(f->L, E.queue, op, b, 0, NULL, NULL);
    if (st == EFL_OK)
        st = efl_loss_query_status(f->L, E.queue);
    CHECK_MSG(st == EFL_OK, "C=%u dtype %d %s: %s", f->C, (int)f->dt, what, efl_status_string(st));
}

static cl_mem sub_buffer(cl_mem parent, size_t origin, size_t size)
{
    cl_buffer_region region = {origin, size};
    cl_int err = CL_SUCCESS;
    cl_mem m = clCreateSubBuffer(parent, CL_MEM_READ_WRITE, CL_BUFFER_CREATE_TYPE_REGION, &region, &err);
    REQUIRE_CL(err);
    return m;
}

/* ------------------------------------------------------------ fixture */
static void fixture_init(fixture *f, uint32_t C, efl_dtype dt, uint64_t seed)
{
    memset(f, 0, sizeof *f);
    f->C = C;
    f->dt = dt;
    f->esize = dt == EFL_DTYPE_FLOAT16 ? 2 : 4;
    /* more bytes than one alignment step, so that aligned sub-buffers can overlap */
    f->n = 64;
    if (f->n * C * f->esize <= 2 * ALIGN)
        f->n = 2 * ALIGN / (C * f->esize) + 8;
    f->bytes = f->n * C * f->esize;
    f->norm = 3.0f;
    efl_loss_config cfg;
    efl_loss_config_init(&cfg, C);
    f->L = tu_loss(&E, &cfg);
    efl_ref_state st;
    efl_ref_state_init(&st, C);
    tu_rng r = {seed};
    for (uint32_t j = 0; j < C; ++j) {
        st.pos[j] = 10.0 * tu_uniform(&r);
        st.neg[j] = 20.0 + 10.0 * tu_uniform(&r);
        st.g[j] = 0.5 * tu_uniform(&r);
    }
    tu_write_state_canonical(&E, f->L, &st);
    efl_ref_state_free(&st);

    float *xf = tu_xmalloc(f->n * C * sizeof(float));
    tu_make_logits(&r, xf, f->n * C);
    f->x = tu_xmalloc(f->bytes);
    for (size_t i = 0; i < f->n * C; ++i) {
        if (dt == EFL_DTYPE_FLOAT16) {
            uint16_t h = tu_f32_to_f16(xf[i]);
            memcpy(f->x + 2 * i, &h, 2);
        } else {
            memcpy(f->x + 4 * i, &xf[i], 4);
        }
    }
    free(xf);
    f->y = tu_xmalloc(f->n * sizeof(int32_t));
    tu_label_opts lo = tu_default_label_opts();
    lo.fg_fraction = 0.3;
    tu_make_labels(&r, f->y, f->n, C, &lo);
    f->bx = tu_buf(&E, f->bytes, f->x);
    f->by = tu_buf(&E, f->n * sizeof(int32_t), f->y);
    f->bl = tu_buf(&E, sizeof(float), NULL);
    f->bg = tu_buf(&E, f->bytes, NULL);
    f->be = tu_buf(&E, f->bytes, NULL);
    f->bn = tu_buf(&E, sizeof(float), &f->norm);
}

static void fixture_free(fixture *f)
{
    tu_release(f->bx);
    tu_release(f->by);
    tu_release(f->bl);
    tu_release(f->bg);
    tu_release(f->be);
    tu_release(f->bn);
    efl_loss_destroy(f->L);
    free(f->x);
    free(f->y);
}

static efl_batch rows_batch(const fixture *f, cl_mem x, cl_mem y, cl_mem grad, cl_mem loss)
{
    efl_batch b = tu_rows_batch(f->n, x, y, grad, loss, 1.0f);
    b.dtype = f->dt;
    return b;
}

/* One step from the state `from` on the given buffers: loss, gradient bytes and state after. */
typedef struct {
    float loss;
    unsigned char *grad;
    efl_ref_state state;
} step_result;

static void step_and_read(const fixture *f, const efl_ref_state *from, const char *what, cl_mem x, cl_mem grad,
                          step_result *out)
{
    tu_write_state(&E, f->L, from);
    efl_batch b = rows_batch(f, x, f->by, grad, f->bl);
    expect_ok(f, what, EFL_OP_STEP, &b);
    tu_read(&E, f->bl, sizeof(float), &out->loss);
    out->grad = tu_xmalloc(f->bytes);
    REQUIRE_CL(clEnqueueReadBuffer(E.queue, grad, CL_TRUE, 0, f->bytes, out->grad, 0, NULL, NULL));
    if (!efl_ref_state_init(&out->state, f->C))
        tu_fatal(__FILE__, __LINE__, "malloc");
    tu_read_state(&E, f->L, &out->state);
    tu_write_state(&E, f->L, from); /* back to where the other cases start */
}

static void compare_results(const fixture *f, const char *what, const step_result *got, const step_result *want)
{
    CHECK_MSG(memcmp(&got->loss, &want->loss, sizeof(float)) == 0, "C=%u dtype %d %s: loss %.9g, separate %.9g",
              f->C, (int)f->dt, what, got->loss, want->loss);
    tu_bits_equal(what, got->grad, want->grad, f->n * f->C, f->esize);
    CHECK_MSG(tu_state_equal_bits(&got->state, &want->state), "C=%u dtype %d %s: state differs from separate", f->C,
              (int)f->dt, what);
}

static void free_result(step_result *r)
{
    free(r->grad);
    efl_ref_state_free(&r->state);
}

/* ------------------------------------------------------------ cases */
static void test_same_object(fixture *f)
{
    efl_batch b;
    b = rows_batch(f, f->bx, f->by, f->bx, f->bl);
    expect_aliased(f, "grad == logits (step)", EFL_OP_STEP, &b);
    expect_aliased(f, "grad == logits (compute)", EFL_OP_COMPUTE, &b);
    b = rows_batch(f, f->bx, f->by, f->bg, f->by);
    expect_aliased(f, "loss == labels", EFL_OP_STEP, &b);
    expect_aliased(f, "loss == labels (forward)", EFL_OP_FORWARD, &b);
    b = rows_batch(f, f->bx, f->by, f->bg, f->bx);
    expect_aliased(f, "loss == logits", EFL_OP_STEP, &b);
    b = rows_batch(f, f->bx, f->by, f->bg, f->bg);
    expect_aliased(f, "loss == grad", EFL_OP_STEP, &b);
    b = rows_batch(f, f->bx, f->by, f->bg, f->bn);
    b.normalizer_buffer = f->bn;
    expect_aliased(f, "loss == normalizer_buffer", EFL_OP_STEP, &b);
    b = rows_batch(f, f->bx, f->by, f->be, NULL);
    b.reduction = EFL_REDUCTION_NONE;
    b.loss_elems[0] = f->be;
    expect_aliased(f, "none: loss_elems == grad", EFL_OP_STEP, &b);
    b.grad[0] = f->bg;
    b.loss_elems[0] = f->bx;
    expect_aliased(f, "none: loss_elems == logits", EFL_OP_STEP, &b);
    expect_aliased(f, "none: loss_elems == logits (forward)", EFL_OP_FORWARD, &b);

    /* buffers the op does not use are not looked at */
    b = rows_batch(f, f->bx, f->by, f->bx, f->bl);
    expect_ok(f, "forward with grad == logits (grad unused)", EFL_OP_FORWARD, &b);
    b = rows_batch(f, f->bx, f->by, f->bg, f->bl);
    b.reduction = EFL_REDUCTION_NONE;
    b.loss = f->bx; /* unused by reduction none */
    b.loss_elems[0] = f->be;
    expect_ok(f, "none with loss == logits (loss unused)", EFL_OP_FORWARD, &b);
    b = rows_batch(f, f->bx, f->by, f->bg, f->bl);
    b.reduction = EFL_REDUCTION_SUM;
    b.normalizer_buffer = f->bl; /* unused by sum */
    expect_ok(f, "sum with normalizer_buffer == loss (unused)", EFL_OP_FORWARD, &b);
    /* inputs may share a buffer with each other */
    b = rows_batch(f, f->bx, f->by, f->bg, f->bl);
    b.normalizer_buffer = f->bn;
    expect_ok(f, "distinct buffers, normalizer buffer", EFL_OP_FORWARD, &b);
}

static void test_sub_buffers(fixture *f)
{
    const size_t R = round_up(f->bytes, ALIGN);
    cl_mem parent = tu_buf(&E, 2 * R, NULL);
    tu_write(&E, parent, f->bytes, f->x);
    REQUIRE_CL(clEnqueueWriteBuffer(E.queue, parent, CL_TRUE, R, f->bytes, f->x, 0, NULL, NULL));
    cl_mem xs = sub_buffer(parent, 0, R);            /* [0, R) */
    cl_mem x_big = sub_buffer(parent, 0, 2 * R);     /* all of it, only [0, bytes) used */
    cl_mem g_adj = sub_buffer(parent, R, R);         /* [R, 2R): right after xs */
    cl_mem g_ov = sub_buffer(parent, ALIGN, R);      /* [ALIGN, ALIGN + R): inside xs's used bytes */
    cl_mem y_sub = sub_buffer(parent, R, f->n * 4);  /* labels region inside g_adj */

    efl_batch b;
    b = rows_batch(f, xs, f->by, g_ov, f->bl);
    expect_aliased(f, "sub-buffers: grad overlaps logits", EFL_OP_STEP, &b);
    b = rows_batch(f, g_ov, f->by, xs, f->bl);
    expect_aliased(f, "sub-buffers: logits overlaps grad", EFL_OP_STEP, &b);
    b = rows_batch(f, g_adj, f->by, parent, f->bl);
    b.input[0] = g_ov;
    expect_aliased(f, "grad = parent, logits = sub-buffer inside its used bytes", EFL_OP_STEP, &b);
    b = rows_batch(f, xs, y_sub, g_adj, f->bl);
    expect_aliased(f, "sub-buffers: grad overlaps labels", EFL_OP_STEP, &b);
    b = rows_batch(f, xs, f->by, g_adj, f->bl);
    b.reduction = EFL_REDUCTION_NONE;
    b.loss_elems[0] = g_ov;
    expect_aliased(f, "sub-buffers: loss_elems overlaps logits", EFL_OP_STEP, &b);

    /* accepted: adjacent regions give what separate buffers give, bit for bit */
    efl_ref_state from;
    efl_ref_state_init(&from, f->C);
    tu_read_state(&E, f->L, &from);
    step_result sep, adj;
    step_and_read(f, &from, "separate buffers", f->bx, f->bg, &sep);
    step_and_read(f, &from, "sub-buffers adjacent", xs, g_adj, &adj);
    compare_results(f, "sub-buffers adjacent vs separate", &adj, &sep);
    free_result(&sep);
    free_result(&adj);
    /* accepted too, since only the bytes used count: a sub-buffer larger than the bytes it is
     * used for, and the parent itself next to a sub-buffer beyond its used bytes. (OpenCL 1.2
     * 5.2.1 leaves writing through overlapping sub-buffer objects, or a buffer and its
     * sub-buffer, undefined even for disjoint bytes, so only acceptance is checked here.) */
    REQUIRE_CL(clEnqueueWriteBuffer(E.queue, parent, CL_TRUE, R, f->bytes, f->x, 0, NULL, NULL));
    b = rows_batch(f, x_big, f->by, g_adj, f->bl);
    expect_ok(f, "logits sub-buffer larger than its used bytes", EFL_OP_STEP, &b);
    tu_write_state(&E, f->L, &from);
    REQUIRE_CL(clEnqueueWriteBuffer(E.queue, parent, CL_TRUE, R, f->bytes, f->x, 0, NULL, NULL));
    b = rows_batch(f, g_adj, f->by, parent, f->bl);
    expect_ok(f, "grad = parent ([0, bytes) used), logits = sub-buffer at R", EFL_OP_STEP, &b);
    tu_write_state(&E, f->L, &from);
    efl_ref_state_free(&from);

    tu_release(y_sub);
    tu_release(g_ov);
    tu_release(g_adj);
    tu_release(x_big);
    tu_release(xs);
    tu_release(parent);
}

static void test_host_ptr_buffers(fixture *f)
{
    const size_t page = ALIGN > 4096 ? ALIGN : 4096, R = round_up(f->bytes, page);
    unsigned char *host = aligned_alloc(page, 2 * R);
    if (!host)
        tu_fatal(__FILE__, __LINE__, "aligned_alloc");
    memset(host, TU_SENTINEL, 2 * R);
    memcpy(host, f->x, f->bytes);
    cl_int err = CL_SUCCESS;
    cl_mem hx = clCreateBuffer(E.cl, CL_MEM_READ_WRITE | CL_MEM_USE_HOST_PTR, f->bytes, host, &err);
    REQUIRE_CL(err);
    cl_mem hg_ov = clCreateBuffer(E.cl, CL_MEM_READ_WRITE | CL_MEM_USE_HOST_PTR, f->bytes, host + 256, &err);
    REQUIRE_CL(err);
    cl_mem hg_adj = clCreateBuffer(E.cl, CL_MEM_READ_WRITE | CL_MEM_USE_HOST_PTR, f->bytes, host + R, &err);
    REQUIRE_CL(err);
    /* a sub-buffer of a USE_HOST_PTR buffer: its host bytes are the parent's plus the origin */
    cl_mem hx_whole = clCreateBuffer(E.cl, CL_MEM_READ_WRITE | CL_MEM_USE_HOST_PTR, 2 * R, host, &err);
    REQUIRE_CL(err);
    cl_mem hsub = sub_buffer(hx_whole, R - ALIGN, f->bytes); /* overlaps hg_adj by ALIGN bytes */

    unsigned char *copy = tu_xmalloc(2 * R);
    memcpy(copy, host, 2 * R);
    efl_batch b = rows_batch(f, hx, f->by, hg_ov, f->bl);
    expect_aliased(f, "USE_HOST_PTR: grad overlaps logits in host memory", EFL_OP_STEP, &b);
    b = rows_batch(f, hg_adj, f->by, hsub, f->bl);
    expect_aliased(f, "USE_HOST_PTR: grad sub-buffer overlaps logits in host memory", EFL_OP_STEP, &b);
    CHECK_MSG(memcmp(copy, host, 2 * R) == 0, "C=%u dtype %d: USE_HOST_PTR host array changed", f->C, (int)f->dt);
    free(copy);

    efl_ref_state from;
    efl_ref_state_init(&from, f->C);
    tu_read_state(&E, f->L, &from);
    step_result sep, adj;
    step_and_read(f, &from, "separate buffers", f->bx, f->bg, &sep);
    step_and_read(f, &from, "USE_HOST_PTR adjacent", hx, hg_adj, &adj);
    compare_results(f, "USE_HOST_PTR adjacent vs separate", &adj, &sep);
    free_result(&sep);
    free_result(&adj);
    efl_ref_state_free(&from);

    tu_release(hsub);
    tu_release(hx_whole);
    tu_release(hg_adj);
    tu_release(hg_ov);
    tu_release(hx);
    REQUIRE_CL(clFinish(E.queue));
    free(host);
}

/* EFL_LAYOUT_ANCHOR_MAJOR, B = 2 images, A = 3 anchors, two levels of the same size */
#define HB 2
#define HA 3
#define HH 2
#define HW 3
static void test_head_layout(fixture *f)
{
    const size_t rows = (size_t)HB * 2 * HH * HW * HA, elems = (size_t)HB * HA * f->C * HH * HW;
    const size_t bytes = elems * f->esize;
    tu_rng r = {f->C * 31u + (unsigned)f->dt};
    int32_t *y = tu_xmalloc(rows * sizeof(int32_t));
    tu_label_opts lo = tu_default_label_opts();
    lo.fg_fraction = 0.3;
    tu_make_labels(&r, y, rows, f->C, &lo);
    cl_mem by = tu_buf(&E, rows * sizeof(int32_t), y);
    cl_mem in[2], grad[2], el[2];
    for (int l = 0; l < 2; ++l) {
        /* the fixture's logits are longer than a level: its first bytes will do */
        CHECK(bytes <= f->bytes);
        in[l] = tu_buf(&E, bytes, f->x);
        grad[l] = tu_buf(&E, bytes, NULL);
        el[l] = tu_buf(&E, bytes, NULL);
    }
    efl_batch b;
    efl_batch_init(&b);
    b.layout = EFL_LAYOUT_ANCHOR_MAJOR;
    b.dtype = f->dt;
    b.images = HB;
    b.anchors = HA;
    b.levels = 2;
    for (int l = 0; l < 2; ++l) {
        b.height[l] = HH;
        b.width[l] = HW;
        b.input[l] = in[l];
        b.grad[l] = grad[l];
    }
    b.labels = by;
    b.loss = f->bl;
    efl_batch a = b;
    a.grad[1] = in[0];
    expect_aliased(f, "head: grad[1] == input[0]", EFL_OP_STEP, &a);
    a = b;
    a.grad[1] = grad[0];
    expect_aliased(f, "head: grad[1] == grad[0]", EFL_OP_STEP, &a);
    a = b;
    a.reduction = EFL_REDUCTION_NONE;
    a.loss_elems[0] = el[0];
    a.loss_elems[1] = grad[0];
    expect_aliased(f, "head none: loss_elems[1] == grad[0]", EFL_OP_STEP, &a);
    a.loss_elems[1] = in[1];
    expect_aliased(f, "head none: loss_elems[1] == input[1] (forward)", EFL_OP_FORWARD, &a);

    efl_ref_state from;
    efl_ref_state_init(&from, f->C);
    tu_read_state(&E, f->L, &from);
    expect_ok(f, "head: distinct buffers", EFL_OP_STEP, &b);
    tu_write_state(&E, f->L, &from);
    efl_ref_state_free(&from);

    /* the same through efl_loss_run_host on host arrays */
    unsigned char *hx = tu_xmalloc(2 * bytes), *hg = tu_xmalloc(2 * bytes);
    memcpy(hx, f->x, bytes);
    memcpy(hx + bytes, f->x, bytes);
    memset(hg, TU_SENTINEL, 2 * bytes);
    efl_host_batch h;
    efl_host_batch_init(&h);
    h.layout = EFL_LAYOUT_ANCHOR_MAJOR;
    h.dtype = f->dt;
    h.images = HB;
    h.anchors = HA;
    h.levels = 2;
    for (int l = 0; l < 2; ++l) {
        h.height[l] = HH;
        h.width[l] = HW;
        h.input[l] = hx + l * bytes;
        h.grad[l] = hg + l * bytes;
    }
    h.labels = y;
    float hl = -1.0f;
    h.loss = &hl;
    unsigned char *cx = tu_xmalloc(2 * bytes), *cg = tu_xmalloc(2 * bytes);
    memcpy(cx, hx, 2 * bytes);
    memcpy(cg, hg, 2 * bytes);
    efl_ref_state before, after;
    efl_ref_state_init(&before, f->C);
    efl_ref_state_init(&after, f->C);
    REQUIRE_OK(efl_loss_read_state_host(f->L, before.pos, before.neg, before.g));
    efl_host_batch ha = h;
    ha.grad[1] = hx + f->esize; /* over input[0], off by one element */
    CHECK_STATUS(efl_loss_run_host(f->L, EFL_OP_STEP, &ha), EFL_ERROR_ALIASED_BUFFERS);
    ha = h;
    ha.loss = (float *)(void *)(hg + bytes); /* inside grad[1] */
    CHECK_STATUS(efl_loss_run_host(f->L, EFL_OP_STEP, &ha), EFL_ERROR_ALIASED_BUFFERS);
    REQUIRE_OK(efl_loss_read_state_host(f->L, after.pos, after.neg, after.g));
    CHECK_MSG(memcmp(cx, hx, 2 * bytes) == 0 && memcmp(cg, hg, 2 * bytes) == 0 && hl == -1.0f,
              "C=%u dtype %d: run_host head refusal wrote an array", f->C, (int)f->dt);
    CHECK_MSG(tu_state_equal_bits(&before, &after), "C=%u dtype %d: run_host head refusal changed the state", f->C,
              (int)f->dt);
    CHECK_STATUS(efl_loss_run_host(f->L, EFL_OP_STEP, &h), EFL_OK);
    CHECK(isfinite(hl) && hl > 0.0f);
    REQUIRE_OK(efl_loss_write_state_host(f->L, before.pos, before.neg, before.g));
    efl_ref_state_free(&before);
    efl_ref_state_free(&after);
    free(cx);
    free(cg);
    free(hx);
    free(hg);

    for (int l = 0; l < 2; ++l) {
        tu_release(in[l]);
        tu_release(grad[l]);
        tu_release(el[l]);
    }
    tu_release(by);
    free(y);
}

/* The host calls on arrays that overlap: refused, arrays and state unchanged. */
static void test_host_calls(fixture *f)
{
    const size_t nc = f->n * f->C, es = f->esize;
    /* one arena: logits, then room for a second array */
    unsigned char *arena = tu_xmalloc(3 * f->bytes + 64), *copy = tu_xmalloc(3 * f->bytes + 64);
    unsigned char *g = tu_xmalloc(f->bytes);
    int32_t *y = tu_xmalloc(f->n * sizeof(int32_t) + 16);
    memset(arena, TU_SENTINEL, 3 * f->bytes + 64);
    memcpy(arena, f->x, f->bytes);
    memcpy(y, f->y, f->n * sizeof(int32_t));
    memset(g, TU_SENTINEL, f->bytes);
    float lo;
    memset(&lo, TU_SENTINEL, sizeof lo);
    const float lo0 = lo;
    efl_ref_state before, after;
    efl_ref_state_init(&before, f->C);
    efl_ref_state_init(&after, f->C);
    REQUIRE_OK(efl_loss_read_state_host(f->L, before.pos, before.neg, before.g));
    memcpy(copy, arena, 3 * f->bytes + 64);
    unsigned char *gcopy = tu_xmalloc(f->bytes);
    memcpy(gcopy, g, f->bytes);
    int32_t *ycopy = tu_xmalloc(f->n * sizeof(int32_t));
    memcpy(ycopy, y, f->n * sizeof(int32_t));

    struct {
        const char *what;
        efl_status st;
    } res[8];
    int k = 0;
#define HOST_CASE(desc, call) (res[k].what = (desc), res[k].st = (call), ++k)
    HOST_CASE("step_host: grad_out == logits (in place)",
              efl_loss_step_host_typed(f->L, f->dt, arena, y, f->n, 1.0f, EFL_REDUCTION_MEAN, &lo, arena));
    HOST_CASE("step_host: grad_out overlaps logits by one element",
              efl_loss_step_host_typed(f->L, f->dt, arena, y, f->n, 1.0f, EFL_REDUCTION_MEAN, &lo,
                                       arena + (nc - 1) * es));
    HOST_CASE("step_host: loss_out inside the gradient array",
              efl_loss_step_host_typed(f->L, f->dt, arena, y, f->n, 1.0f, EFL_REDUCTION_SUM,
                                       (float *)(void *)(g + 4 * (nc * es / 8)), g));
    HOST_CASE("step_host: loss_out inside the logits",
              efl_loss_step_host_typed(f->L, f->dt, arena, y, f->n, 1.0f, EFL_REDUCTION_MEAN,
                                       (float *)(void *)(arena + 4 * (nc * es / 8)), g));
    HOST_CASE("forward_host: loss_out over the labels",
              efl_loss_forward_host_typed(f->L, f->dt, arena, y, f->n, 1.0f, EFL_REDUCTION_MEAN, (float *)(void *)y));
    HOST_CASE("step_host none: loss_out (elements) == grad_out",
              efl_loss_step_host_typed(f->L, f->dt, arena, y, f->n, 1.0f, EFL_REDUCTION_NONE, (float *)(void *)g, g));
    HOST_CASE("forward_host none: loss_out (elements) overlaps logits",
              efl_loss_forward_host_typed(f->L, f->dt, arena, y, f->n, 1.0f, EFL_REDUCTION_NONE,
                                          (float *)(void *)(arena + f->bytes - es)));
    if (f->dt == EFL_DTYPE_FLOAT32)
        HOST_CASE("step_host (float): grad_out == logits",
                  efl_loss_step_host(f->L, (const float *)(void *)arena, y, f->n, 1.0f, EFL_REDUCTION_MEAN, &lo,
                                     (float *)(void *)arena));
#undef HOST_CASE
    for (int i = 0; i < k; ++i)
        CHECK_MSG(res[i].st == EFL_ERROR_ALIASED_BUFFERS, "C=%u dtype %d %s: %s", f->C, (int)f->dt, res[i].what,
                  efl_status_string(res[i].st));
    CHECK_MSG(memcmp(copy, arena, 3 * f->bytes + 64) == 0, "C=%u dtype %d: host logits array changed", f->C,
              (int)f->dt);
    CHECK_MSG(memcmp(gcopy, g, f->bytes) == 0, "C=%u dtype %d: host gradient array changed", f->C, (int)f->dt);
    CHECK_MSG(memcmp(ycopy, y, f->n * sizeof(int32_t)) == 0, "C=%u dtype %d: host labels changed", f->C, (int)f->dt);
    CHECK_MSG(memcmp(&lo, &lo0, sizeof lo) == 0, "C=%u dtype %d: loss_out written", f->C, (int)f->dt);
    REQUIRE_OK(efl_loss_read_state_host(f->L, after.pos, after.neg, after.g));
    CHECK_MSG(tu_state_equal_bits(&before, &after), "C=%u dtype %d: host refusals changed the state", f->C,
              (int)f->dt);

    /* distinct arrays, including right next to each other in one allocation, are fine */
    CHECK_STATUS(efl_loss_step_host_typed(f->L, f->dt, arena, y, f->n, 1.0f, EFL_REDUCTION_MEAN, &lo, g), EFL_OK);
    CHECK(isfinite(lo) && lo > 0.0f);
    REQUIRE_OK(efl_loss_write_state_host(f->L, before.pos, before.neg, before.g));
    CHECK_STATUS(efl_loss_step_host_typed(f->L, f->dt, arena, y, f->n, 1.0f, EFL_REDUCTION_MEAN, &lo,
                                          arena + f->bytes),
                 EFL_OK);
    CHECK_MSG(memcmp(g, arena + f->bytes, f->bytes) == 0, "C=%u dtype %d: adjacent host gradient differs", f->C,
              (int)f->dt);
    REQUIRE_OK(efl_loss_write_state_host(f->L, before.pos, before.neg, before.g));
    /* loss_out right after the logits */
    CHECK_STATUS(efl_loss_forward_host_typed(f->L, f->dt, arena, y, f->n, 1.0f, EFL_REDUCTION_SUM,
                                             (float *)(void *)(arena + f->bytes)),
                 EFL_OK);

    efl_ref_state_free(&before);
    efl_ref_state_free(&after);
    free(ycopy);
    free(gcopy);
    free(copy);
    free(arena);
    free(g);
    free(y);
}

int main(void)
{
    tu_env_init(&E);
    cl_uint align_bits = 0;
    REQUIRE_CL(clGetDeviceInfo(E.dev, CL_DEVICE_MEM_BASE_ADDR_ALIGN, sizeof align_bits, &align_bits, NULL));
    ALIGN = align_bits / 8 ? align_bits / 8 : 1;
    printf("sub-buffer alignment: %zu bytes\n", ALIGN);

    const uint32_t classes[] = {7, 37, 80};
    const efl_dtype dtypes[] = {EFL_DTYPE_FLOAT32, EFL_DTYPE_FLOAT16};
    for (size_t d = 0; d < 2; ++d)
        for (size_t c = 0; c < 3; ++c) {
            fixture f;
            fixture_init(&f, classes[c], dtypes[d], 100 + 10 * c + d);
            static const struct {
                const char *what;
                void (*run)(fixture *);
            } cases[] = {{"the same buffer twice", test_same_object},
                         {"sub-buffers", test_sub_buffers},
                         {"CL_MEM_USE_HOST_PTR buffers", test_host_ptr_buffers},
                         {"head layout", test_head_layout},
                         {"host calls", test_host_calls}};
            char name[96];
            for (size_t k = 0; k < sizeof cases / sizeof cases[0]; ++k) {
                snprintf(name, sizeof name, "C=%u %s: %s", f.C, d ? "f16" : "f32", cases[k].what);
                tu_begin(name);
                cases[k].run(&f);
                tu_end();
            }

            /* and after all of that, a normal step on distinct buffers */
            snprintf(name, sizeof name, "C=%u %s: a normal step", f.C, d ? "f16" : "f32");
            tu_begin(name);
            CHECK_STATUS(efl_enqueue_step_typed(f.L, E.queue, f.dt, f.bx, f.by, f.n, 1.0f, EFL_REDUCTION_MEAN, f.bl,
                                                f.bg, 0, NULL, NULL),
                         EFL_OK);
            CHECK_STATUS(efl_loss_query_status(f.L, E.queue), EFL_OK);
            float l = 0.0f;
            tu_read(&E, f.bl, sizeof l, &l);
            CHECK(isfinite(l) && l > 0.0f);
            tu_end();
            fixture_free(&f);
        }
    tu_env_free(&E);
    return tu_exit_code();
}
