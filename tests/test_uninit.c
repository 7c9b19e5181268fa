/*
 * Every kernel path once, each case on a context of its own, for Oclgrind's uninitialised-value
 * check (registered as test_uninit.oclgrind with --uninitialized; on the other devices it is a
 * quick smoke test of the same paths).
 *
 * Why a context per case: Oclgrind 21.10 reports uninitialised values in kernels whose program
 * already served another kernel object (two losses on one context share their program), though
 * the same kernels on the same inputs are clean on a context of their own. So the whole suite
 * cannot run with the check; this test can, and covers the kernels: efl_step (float32, float16,
 * bfloat16), efl_step_head and efl_head_labels (both channel orders), efl_reduce and every
 * efl_apply mode, in EFL, focal and EQLv2, with mean/sum/none, a normalizer on the device, a
 * refused step, an accumulate and the data-parallel apply.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

#define C 21 /* odd, above 16: the vector paths' shifted last chunk */
#define N 48

static float X[N * C], G[N * C], E[N * C];
static int32_t Y[N];

static void fill(void)
{
    tu_rng r = {0x0C16u};
    tu_make_logits(&r, X, N * C);
    tu_label_opts lo = tu_default_label_opts();
    lo.fg_fraction = 0.3;
    tu_make_labels(&r, Y, N, C, &lo);
}

/* One case: a fresh context and one loss on it, nothing shared with another case. */
static efl_loss *open_case(tu_env *e, efl_mode mode)
{
    tu_env_init(e);
    efl_loss_config cfg;
    efl_loss_config_init_mode(&cfg, C, mode);
    return tu_loss(e, &cfg);
}

static void close_case(tu_env *e, efl_loss *loss)
{
    efl_loss_destroy(loss);
    tu_env_free(e);
    tu_end();
}

static void rows_case(efl_mode mode, efl_dtype dtype, efl_reduction red)
{
    char name[96];
    snprintf(name, sizeof name, "rows: mode %d, dtype %d, reduction %d", (int)mode, (int)dtype, (int)red);
    tu_begin(name);
    tu_env e;
    efl_loss *loss = open_case(&e, mode);
    efl_host_batch b;
    efl_host_batch_init(&b);
    b.dtype = dtype;
    b.rows = N;
    uint16_t x16[N * C], g16[N * C], e16[N * C];
    for (size_t i = 0; dtype != EFL_DTYPE_FLOAT32 && i < N * C; ++i)
        x16[i] = dtype == EFL_DTYPE_FLOAT16 ? tu_f32_to_f16(X[i]) : tu_f32_to_bf16(X[i]);
    b.input[0] = dtype == EFL_DTYPE_FLOAT32 ? (const void *)X : x16;
    b.grad[0] = dtype == EFL_DTYPE_FLOAT32 ? (void *)G : g16;
    b.loss_elems[0] = dtype == EFL_DTYPE_FLOAT32 ? (void *)E : e16;
    b.labels = Y;
    b.reduction = red;
    b.normalizer = 5.0f;
    float l = 0.0f;
    b.loss = &l;
    for (int s = 0; s < 2; ++s)
        CHECK_STATUS(efl_loss_run_host(loss, EFL_OP_STEP, &b), EFL_OK);
    CHECK_STATUS(efl_loss_run_host(loss, EFL_OP_FORWARD, &b), EFL_OK);
    if (mode != EFL_MODE_FOCAL)
        CHECK_STATUS(efl_loss_run_host(loss, EFL_OP_ACCUMULATE, &b), EFL_OK);
    close_case(&e, loss);
}

static void head_case(efl_mode mode, efl_layout layout)
{
    char name[96];
    snprintf(name, sizeof name, "head layout %d, mode %d", (int)layout, (int)mode);
    tu_begin(name);
    tu_env e;
    efl_loss *loss = open_case(&e, mode);
    /* B = 2, A = 2, levels 3 x 3 and 1 x 3: 2 * (9 + 3) * 2 = 48 rows = N */
    efl_host_batch b;
    efl_host_batch_init(&b);
    b.layout = layout;
    b.images = 2;
    b.anchors = 2;
    b.levels = 2;
    b.height[0] = 3, b.width[0] = 3, b.height[1] = 1, b.width[1] = 3;
    b.input[0] = X, b.input[1] = X + 2 * 2 * C * 9;
    b.grad[0] = G, b.grad[1] = G + 2 * 2 * C * 9;
    b.loss_elems[0] = E, b.loss_elems[1] = E + 2 * 2 * C * 9;
    b.labels = Y;
    float l = 0.0f;
    b.loss = &l;
    CHECK_STATUS(efl_loss_run_host(loss, EFL_OP_STEP, &b), EFL_OK);
    b.reduction = EFL_REDUCTION_NONE;
    CHECK_STATUS(efl_loss_run_host(loss, EFL_OP_STEP, &b), EFL_OK);
    close_case(&e, loss);
}

/* The device-side calls: a normalizer buffer (good, then bad), a refused label, and the
 * data-parallel compute / read / apply. */
static void device_case(void)
{
    tu_begin("normalizer buffer, refused steps, data-parallel apply");
    tu_env e;
    efl_loss *loss = open_case(&e, EFL_MODE_EFL);
    const float good = 4.0f, bad = 0.0f;
    cl_mem bx = tu_buf(&e, sizeof X, X), by = tu_buf(&e, sizeof Y, Y), bg = tu_buf(&e, sizeof G, NULL),
           bl = tu_buf(&e, 4, NULL), bn = tu_buf(&e, 4, &good);
    efl_batch b;
    efl_batch_init(&b);
    b.rows = N;
    b.input[0] = bx, b.grad[0] = bg, b.labels = by, b.loss = bl, b.normalizer_buffer = bn;
    CHECK_STATUS(efl_enqueue_batch(loss, e.queue, EFL_OP_STEP, &b, 0, NULL, NULL), EFL_OK);
    CHECK_STATUS(efl_loss_query_status(loss, e.queue), EFL_OK);
    tu_write(&e, bn, 4, &bad);
    CHECK_STATUS(efl_enqueue_batch(loss, e.queue, EFL_OP_STEP, &b, 0, NULL, NULL), EFL_OK);
    CHECK_STATUS(efl_loss_query_status(loss, e.queue), EFL_ERROR_INVALID_NORMALIZER);
    b.normalizer_buffer = NULL;
    double stats[EFL_STATISTICS_LENGTH(C)];
    CHECK_STATUS(efl_enqueue_batch(loss, e.queue, EFL_OP_COMPUTE, &b, 0, NULL, NULL), EFL_OK);
    CHECK_STATUS(efl_loss_read_statistics(loss, e.queue, stats), EFL_OK);
    CHECK_STATUS(efl_loss_apply_statistics(loss, e.queue, stats), EFL_OK);
    CHECK_STATUS(efl_loss_query_status(loss, e.queue), EFL_OK);
    int32_t y2[N];
    memcpy(y2, Y, sizeof y2);
    y2[3] = C + 9;
    tu_write(&e, by, sizeof y2, y2);
    CHECK_STATUS(efl_enqueue_batch(loss, e.queue, EFL_OP_STEP, &b, 0, NULL, NULL), EFL_OK);
    CHECK_STATUS(efl_loss_query_status(loss, e.queue), EFL_ERROR_INVALID_LABEL);
    cl_mem all[] = {bx, by, bg, bl, bn};
    for (size_t i = 0; i < sizeof all / sizeof *all; ++i)
        tu_release(all[i]);
    close_case(&e, loss);
}

int main(void)
{
    fill();
    const efl_mode modes[] = {EFL_MODE_EFL, EFL_MODE_FOCAL, EFL_MODE_EQLV2};
    for (int m = 0; m < 3; ++m)
        rows_case(modes[m], EFL_DTYPE_FLOAT32, EFL_REDUCTION_MEAN);
    rows_case(EFL_MODE_EFL, EFL_DTYPE_FLOAT16, EFL_REDUCTION_NONE);
    rows_case(EFL_MODE_EFL, EFL_DTYPE_BFLOAT16, EFL_REDUCTION_SUM);
    head_case(EFL_MODE_EFL, EFL_LAYOUT_ANCHOR_MAJOR);
    head_case(EFL_MODE_EQLV2, EFL_LAYOUT_CLASS_MAJOR);
    device_case();
    return tu_exit_code();
}
