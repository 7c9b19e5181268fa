/*
 * Invalid input: each call gets its specific status and, as efl.h promises for every error
 * other than EFL_ERROR_OPENCL / OUT_OF_MEMORY, changes nothing: the output buffers keep a
 * sentinel pattern and the loss state stays bitwise the same.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

#define N 100
#define C 37

static tu_env E;
static efl_loss *L;
static efl_ref_state S; /* the state written into L */
static float X[N * C];
static int32_t Y[N];
static cl_mem BX, BY, BL, BG; /* valid buffers */

/* Everything the caller owns is exactly as before the failed call. */
static void check_untouched(const char *what)
{
    REQUIRE_CL(clFinish(E.queue));
    static unsigned char buf[N * C * 4];
    int ok = 1;
    tu_read(&E, BL, 4, buf);
    for (int k = 0; k < 4; ++k)
        ok &= buf[k] == TU_SENTINEL;
    CHECK_MSG(ok, "%s: loss buffer written", what);
    ok = 1;
    tu_read(&E, BG, sizeof buf, buf);
    for (size_t k = 0; k < sizeof buf; ++k)
        ok &= buf[k] == TU_SENTINEL;
    CHECK_MSG(ok, "%s: grad buffer written", what);
    tu_read(&E, BX, sizeof X, buf);
    CHECK_MSG(memcmp(buf, X, sizeof X) == 0, "%s: logits buffer written", what);
    tu_read(&E, BY, sizeof Y, buf);
    CHECK_MSG(memcmp(buf, Y, sizeof Y) == 0, "%s: labels buffer written", what);
    efl_ref_state ds;
    efl_ref_state_init(&ds, C);
    tu_read_state(&E, L, &ds);
    CHECK_MSG(tu_state_equal_bits(&ds, &S), "%s: loss state changed", what);
    efl_ref_state_free(&ds);
}

#define STEP(loss, q, x, y, n, norm, red, l, g) efl_enqueue_step(loss, q, x, y, n, norm, red, l, g, 0, NULL, NULL)
#define FWD(loss, q, x, y, n, norm, red, l) efl_enqueue_forward(loss, q, x, y, n, norm, red, l, 0, NULL, NULL)

static void test_null_arguments(void)
{
    tu_begin("NULL handles and buffers");
    CHECK_STATUS(STEP(NULL, E.queue, BX, BY, N, 1.0f, EFL_REDUCTION_MEAN, BL, BG), EFL_ERROR_NULL_HANDLE);
    CHECK_STATUS(FWD(NULL, E.queue, BX, BY, N, 1.0f, EFL_REDUCTION_MEAN, BL), EFL_ERROR_NULL_HANDLE);
    check_untouched("NULL loss");
    CHECK_STATUS(STEP(L, E.queue, NULL, BY, N, 1.0f, EFL_REDUCTION_MEAN, BL, BG), EFL_ERROR_NULL_BUFFER);
    CHECK_STATUS(STEP(L, E.queue, BX, NULL, N, 1.0f, EFL_REDUCTION_MEAN, BL, BG), EFL_ERROR_NULL_BUFFER);
    CHECK_STATUS(STEP(L, E.queue, BX, BY, N, 1.0f, EFL_REDUCTION_MEAN, NULL, BG), EFL_ERROR_NULL_BUFFER);
    CHECK_STATUS(STEP(L, E.queue, BX, BY, N, 1.0f, EFL_REDUCTION_MEAN, BL, NULL), EFL_ERROR_NULL_BUFFER);
    CHECK_STATUS(FWD(L, E.queue, NULL, BY, N, 1.0f, EFL_REDUCTION_MEAN, BL), EFL_ERROR_NULL_BUFFER);
    CHECK_STATUS(FWD(L, E.queue, BX, NULL, N, 1.0f, EFL_REDUCTION_MEAN, BL), EFL_ERROR_NULL_BUFFER);
    CHECK_STATUS(FWD(L, E.queue, BX, BY, N, 1.0f, EFL_REDUCTION_MEAN, NULL), EFL_ERROR_NULL_BUFFER);
    /* A NULL queue has no dedicated status; it must simply be refused. */
    CHECK(STEP(L, NULL, BX, BY, N, 1.0f, EFL_REDUCTION_MEAN, BL, BG) != EFL_OK);
    check_untouched("NULL buffers");

    CHECK_STATUS(efl_loss_query_status(NULL, E.queue), EFL_ERROR_NULL_HANDLE);
    double tmp[C];
    CHECK_STATUS(efl_loss_read_state(NULL, E.queue, tmp, tmp, tmp), EFL_ERROR_NULL_HANDLE);
    CHECK_STATUS(efl_loss_write_state(NULL, E.queue, S.pos, S.neg, S.g), EFL_ERROR_NULL_HANDLE);
    CHECK_STATUS(efl_loss_write_state(L, E.queue, NULL, S.neg, S.g), EFL_ERROR_NULL_BUFFER);
    CHECK_STATUS(efl_loss_write_state(L, E.queue, S.pos, NULL, S.g), EFL_ERROR_NULL_BUFFER);
    CHECK_STATUS(efl_loss_write_state(L, E.queue, S.pos, S.neg, NULL), EFL_ERROR_NULL_BUFFER);
    CHECK_STATUS(efl_loss_reset_state(NULL, E.queue), EFL_ERROR_NULL_HANDLE);
    efl_loss_config cfg;
    CHECK_STATUS(efl_loss_get_config(NULL, &cfg), EFL_ERROR_NULL_HANDLE);
    CHECK_STATUS(efl_loss_get_config(L, NULL), EFL_ERROR_NULL_HANDLE);
    CHECK_STATUS(efl_context_create_default(NULL), EFL_ERROR_NULL_HANDLE);
    check_untouched("NULL state arguments");
    tu_end();
}

static void test_normalizer_and_reduction(void)
{
    tu_begin("invalid normalizer / reduction");
    const float bad[] = {0.0f, -0.0f, -1.0f, NAN, INFINITY, -INFINITY};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; ++k) {
        CHECK_STATUS(STEP(L, E.queue, BX, BY, N, bad[k], EFL_REDUCTION_MEAN, BL, BG), EFL_ERROR_INVALID_NORMALIZER);
        CHECK_STATUS(FWD(L, E.queue, BX, BY, N, bad[k], EFL_REDUCTION_MEAN, BL), EFL_ERROR_INVALID_NORMALIZER);
    }
    check_untouched("invalid normalizer");
    CHECK_STATUS(STEP(L, E.queue, BX, BY, N, 1.0f, (efl_reduction)7, BL, BG), EFL_ERROR_INVALID_REDUCTION);
    CHECK_STATUS(STEP(L, E.queue, BX, BY, N, 1.0f, (efl_reduction)-1, BL, BG), EFL_ERROR_INVALID_REDUCTION);
    CHECK_STATUS(FWD(L, E.queue, BX, BY, N, 1.0f, (efl_reduction)3, BL), EFL_ERROR_INVALID_REDUCTION);
    /* EFL_REDUCTION_NONE writes one loss per element: a one-float output is too small */
    CHECK_STATUS(STEP(L, E.queue, BX, BY, N, 1.0f, EFL_REDUCTION_NONE, BL, BG), EFL_ERROR_BUFFER_TOO_SMALL);
    check_untouched("invalid reduction");
    tu_end();
}

static void test_buffer_sizes(void)
{
    tu_begin("buffers too small");
    cl_mem sx = tu_buf(&E, N * C * 4 - 4, X), sy = tu_buf(&E, N * 4 - 4, Y), sl = tu_buf(&E, 4, NULL),
           sg = tu_buf(&E, N * C * 4 - 4, NULL);
    cl_int err;
    cl_mem tiny = clCreateBuffer(E.cl, CL_MEM_READ_WRITE, 2, NULL, &err); /* loss output of 2 bytes */
    REQUIRE_CL(err);
    CHECK_STATUS(STEP(L, E.queue, sx, BY, N, 1.0f, EFL_REDUCTION_MEAN, BL, BG), EFL_ERROR_BUFFER_TOO_SMALL);
    CHECK_STATUS(STEP(L, E.queue, BX, sy, N, 1.0f, EFL_REDUCTION_MEAN, BL, BG), EFL_ERROR_BUFFER_TOO_SMALL);
    CHECK_STATUS(STEP(L, E.queue, BX, BY, N, 1.0f, EFL_REDUCTION_MEAN, BL, sg), EFL_ERROR_BUFFER_TOO_SMALL);
    CHECK_STATUS(STEP(L, E.queue, BX, BY, N, 1.0f, EFL_REDUCTION_MEAN, tiny, BG), EFL_ERROR_BUFFER_TOO_SMALL);
    CHECK_STATUS(FWD(L, E.queue, sx, BY, N, 1.0f, EFL_REDUCTION_MEAN, BL), EFL_ERROR_BUFFER_TOO_SMALL);
    CHECK_STATUS(FWD(L, E.queue, BX, BY, N, 1.0f, EFL_REDUCTION_MEAN, tiny), EFL_ERROR_BUFFER_TOO_SMALL);
    /* n one larger than the valid buffers hold */
    CHECK_STATUS(STEP(L, E.queue, BX, BY, N + 1, 1.0f, EFL_REDUCTION_MEAN, BL, BG), EFL_ERROR_BUFFER_TOO_SMALL);
    /* n * C * 4 wraps around size_t to a small number: must not pass a naive size check */
    const size_t huge[] = {(size_t)1 << (sizeof(size_t) * 8 - 2), SIZE_MAX, SIZE_MAX / C + 1};
    for (size_t k = 0; k < 3; ++k) {
        efl_status st = STEP(L, E.queue, BX, BY, huge[k], 1.0f, EFL_REDUCTION_MEAN, BL, BG);
        CHECK_MSG(st == EFL_ERROR_TOO_MANY_ROWS || st == EFL_ERROR_BUFFER_TOO_SMALL, "n = %zu: %s", huge[k],
                  efl_status_string(st));
    }
    check_untouched("small buffers");
    tu_release(sx);
    tu_release(sy);
    tu_release(sl);
    tu_release(sg);
    tu_release(tiny);
    tu_end();
}

static void test_foreign_context(void)
{
    tu_begin("queue / buffer of another cl_context");
    cl_int err;
    cl_context other = clCreateContext(NULL, 1, &E.dev, NULL, NULL, &err);
    REQUIRE_CL(err);
    cl_command_queue oq = clCreateCommandQueue(other, E.dev, 0, &err);
    REQUIRE_CL(err);
    cl_mem ox = clCreateBuffer(other, CL_MEM_READ_WRITE, sizeof X, NULL, &err);
    REQUIRE_CL(err);
    cl_mem oy = clCreateBuffer(other, CL_MEM_READ_WRITE, sizeof Y, NULL, &err);
    REQUIRE_CL(err);
    cl_mem ol = clCreateBuffer(other, CL_MEM_READ_WRITE, 4, NULL, &err);
    REQUIRE_CL(err);
    cl_mem og = clCreateBuffer(other, CL_MEM_READ_WRITE, sizeof X, NULL, &err);
    REQUIRE_CL(err);

    CHECK_STATUS(STEP(L, oq, BX, BY, N, 1.0f, EFL_REDUCTION_MEAN, BL, BG), EFL_ERROR_QUEUE_MISMATCH);
    CHECK_STATUS(FWD(L, oq, BX, BY, N, 1.0f, EFL_REDUCTION_MEAN, BL), EFL_ERROR_QUEUE_MISMATCH);
    double tmp[C];
    CHECK_STATUS(efl_loss_read_state(L, oq, tmp, tmp, tmp), EFL_ERROR_QUEUE_MISMATCH);
    CHECK_STATUS(efl_loss_write_state(L, oq, S.pos, S.neg, S.g), EFL_ERROR_QUEUE_MISMATCH);
    CHECK_STATUS(efl_loss_reset_state(L, oq), EFL_ERROR_QUEUE_MISMATCH);
    CHECK_STATUS(STEP(L, E.queue, ox, BY, N, 1.0f, EFL_REDUCTION_MEAN, BL, BG), EFL_ERROR_BUFFER_CONTEXT);
    CHECK_STATUS(STEP(L, E.queue, BX, oy, N, 1.0f, EFL_REDUCTION_MEAN, BL, BG), EFL_ERROR_BUFFER_CONTEXT);
    CHECK_STATUS(STEP(L, E.queue, BX, BY, N, 1.0f, EFL_REDUCTION_MEAN, ol, BG), EFL_ERROR_BUFFER_CONTEXT);
    CHECK_STATUS(STEP(L, E.queue, BX, BY, N, 1.0f, EFL_REDUCTION_MEAN, BL, og), EFL_ERROR_BUFFER_CONTEXT);
    CHECK_STATUS(FWD(L, E.queue, ox, BY, N, 1.0f, EFL_REDUCTION_MEAN, BL), EFL_ERROR_BUFFER_CONTEXT);
    check_untouched("foreign context");
    clReleaseMemObject(ox);
    clReleaseMemObject(oy);
    clReleaseMemObject(ol);
    clReleaseMemObject(og);
    clReleaseCommandQueue(oq);
    clReleaseContext(other);
    tu_end();
}

static void test_wait_list(void)
{
    tu_begin("wait list: count without events, events without count");
    CHECK_STATUS(efl_enqueue_step(L, E.queue, BX, BY, N, 1.0f, EFL_REDUCTION_MEAN, BL, BG, 1, NULL, NULL),
                 EFL_ERROR_INVALID_WAIT_LIST);
    CHECK_STATUS(efl_enqueue_forward(L, E.queue, BX, BY, N, 1.0f, EFL_REDUCTION_MEAN, BL, 2, NULL, NULL),
                 EFL_ERROR_INVALID_WAIT_LIST);
    /* and the converse, as in OpenCL: a list with a zero count */
    cl_int err;
    cl_event ev = clCreateUserEvent(E.cl, &err);
    REQUIRE_CL(err);
    CHECK_STATUS(efl_enqueue_step(L, E.queue, BX, BY, N, 1.0f, EFL_REDUCTION_MEAN, BL, BG, 0, &ev, NULL),
                 EFL_ERROR_INVALID_WAIT_LIST);
    REQUIRE_CL(clSetUserEventStatus(ev, CL_COMPLETE));
    clReleaseEvent(ev);
    check_untouched("wait list");
    tu_end();
}

static void test_invalid_state(void)
{
    tu_begin("write_state with invalid values");
    double p[C], n[C], g[C];
    const double bad[] = {-1.0, -1e-300, NAN, INFINITY, -INFINITY};
    for (int which = 0; which < 3; ++which)
        for (size_t k = 0; k < sizeof bad / sizeof bad[0]; ++k) {
            memcpy(p, S.pos, sizeof p);
            memcpy(n, S.neg, sizeof n);
            memcpy(g, S.g, sizeof g);
            double *arr = which == 0 ? p : which == 1 ? n : g;
            arr[C - 1 - k] = bad[k]; /* one bad value anywhere must reject the whole write */
            CHECK_STATUS(efl_loss_write_state(L, E.queue, p, n, g), EFL_ERROR_INVALID_STATE);
            CHECK_STATUS(efl_loss_write_state_host(L, p, n, g), EFL_ERROR_INVALID_STATE);
        }
    check_untouched("invalid state");
    tu_end();
}

static void test_host_api(void)
{
    tu_begin("host conveniences with invalid input");
    float hl, hg[N * C];
    memset(&hl, TU_SENTINEL, 4);
    memset(hg, TU_SENTINEL, sizeof hg);
    CHECK_STATUS(efl_loss_step_host(NULL, X, Y, N, 1.0f, EFL_REDUCTION_MEAN, &hl, hg), EFL_ERROR_NULL_HANDLE);
    CHECK_STATUS(efl_loss_step_host(L, NULL, Y, N, 1.0f, EFL_REDUCTION_MEAN, &hl, hg), EFL_ERROR_NULL_BUFFER);
    CHECK_STATUS(efl_loss_step_host(L, X, NULL, N, 1.0f, EFL_REDUCTION_MEAN, &hl, hg), EFL_ERROR_NULL_BUFFER);
    /* loss_out is both a "required host array" and an "out-pointer" in efl.h's wording */
    efl_status st = efl_loss_step_host(L, X, Y, N, 1.0f, EFL_REDUCTION_MEAN, NULL, hg);
    CHECK_MSG(st == EFL_ERROR_NULL_BUFFER || st == EFL_ERROR_NULL_HANDLE, "NULL loss_out: %s", efl_status_string(st));
    CHECK_STATUS(efl_loss_step_host(L, X, Y, N, NAN, EFL_REDUCTION_MEAN, &hl, hg), EFL_ERROR_INVALID_NORMALIZER);
    CHECK_STATUS(efl_loss_step_host(L, X, Y, N, 1.0f, (efl_reduction)7, &hl, hg), EFL_ERROR_INVALID_REDUCTION);
    CHECK_STATUS(efl_loss_forward_host(L, NULL, Y, N, 1.0f, EFL_REDUCTION_MEAN, &hl), EFL_ERROR_NULL_BUFFER);
    CHECK_STATUS(efl_loss_forward_host(L, X, Y, N, -2.0f, EFL_REDUCTION_MEAN, &hl), EFL_ERROR_INVALID_NORMALIZER);
    CHECK_STATUS(efl_loss_read_state_host(NULL, S.pos, S.neg, S.g), EFL_ERROR_NULL_HANDLE);
    CHECK_STATUS(efl_loss_write_state_host(L, S.pos, NULL, S.g), EFL_ERROR_NULL_BUFFER);
    CHECK_STATUS(efl_loss_reset_state_host(NULL), EFL_ERROR_NULL_HANDLE);
    unsigned char sent[N * C * 4];
    memset(sent, TU_SENTINEL, sizeof sent);
    CHECK_MSG(memcmp(&hl, sent, 4) == 0, "host loss_out written");
    CHECK_MSG(memcmp(hg, sent, sizeof hg) == 0, "host grad_out written");
    check_untouched("host conveniences");
    tu_end();
}

static void expect_create(const efl_loss_config *cfg, efl_status want, const char *what)
{
    efl_loss *out = NULL;
    efl_status st = efl_loss_create(E.ctx, cfg, &out);
    CHECK_MSG(st == want, "%s: %s, expected %s", what, efl_status_string(st), efl_status_string(want));
    CHECK_MSG(want == EFL_OK ? out != NULL : out == NULL, "%s: out pointer", what);
    efl_loss_destroy(out);
}

static void test_create(void)
{
    tu_begin("efl_loss_create validation");
    efl_loss_config base, c;
    efl_loss_config_init(&base, C);
    CHECK(base.num_classes == C && base.gamma == 2.0f && base.alpha == 0.25f && base.scale_factor == 8.0f &&
          base.loss_weight == 1.0f && base.ignore_index == -1 && base.labels == EFL_LABELS_REFERENCE);
    expect_create(&base, EFL_OK, "defaults");
    efl_loss *out = NULL;
    CHECK_STATUS(efl_loss_create(NULL, &base, &out), EFL_ERROR_NULL_HANDLE);
    CHECK_STATUS(efl_loss_create(E.ctx, &base, NULL), EFL_ERROR_NULL_HANDLE);
    CHECK_STATUS(efl_loss_create(E.ctx, NULL, &out), EFL_ERROR_NULL_HANDLE);
    CHECK(out == NULL);

    c = base, c.num_classes = 0;
    expect_create(&c, EFL_ERROR_INVALID_NUM_CLASSES, "C = 0");
    c = base, c.num_classes = UINT32_MAX;
    {
        efl_status st = efl_loss_create(E.ctx, &c, &out);
        CHECK_MSG(st == EFL_ERROR_INVALID_NUM_CLASSES || st == EFL_ERROR_OUT_OF_MEMORY, "C = 2^32-1: %s",
                  efl_status_string(st));
    }
    const float bad_gamma[] = {0.0f, -0.0f, -1.0f, NAN, INFINITY};
    for (size_t k = 0; k < sizeof bad_gamma / sizeof bad_gamma[0]; ++k) {
        c = base, c.gamma = bad_gamma[k];
        expect_create(&c, EFL_ERROR_INVALID_GAMMA, "bad gamma");
    }
    c = base, c.alpha = NAN;
    expect_create(&c, EFL_ERROR_INVALID_PARAMETER, "alpha NaN");
    c = base, c.alpha = INFINITY;
    expect_create(&c, EFL_ERROR_INVALID_PARAMETER, "alpha Inf");
    c = base, c.scale_factor = -1.0f;
    expect_create(&c, EFL_ERROR_INVALID_PARAMETER, "s < 0");
    c = base, c.scale_factor = NAN;
    expect_create(&c, EFL_ERROR_INVALID_PARAMETER, "s NaN");
    c = base, c.loss_weight = INFINITY;
    expect_create(&c, EFL_ERROR_INVALID_PARAMETER, "loss_weight Inf");
    c = base, c.loss_weight = NAN;
    expect_create(&c, EFL_ERROR_INVALID_PARAMETER, "loss_weight NaN");
    c = base, c.labels = (efl_label_convention)2;
    expect_create(&c, EFL_ERROR_INVALID_LABEL_CONVENTION, "convention 2");
    c = base, c.ignore_index = 0;
    expect_create(&c, EFL_ERROR_INVALID_IGNORE_INDEX, "ignore_index 0 (background)");
    c = base, c.ignore_index = C;
    expect_create(&c, EFL_ERROR_INVALID_IGNORE_INDEX, "ignore_index C (last class)");
    c = base, c.labels = EFL_LABELS_ZERO_BASED, c.ignore_index = C;
    expect_create(&c, EFL_ERROR_INVALID_IGNORE_INDEX, "zero-based ignore_index C (background)");
    c = base, c.labels = EFL_LABELS_ZERO_BASED, c.ignore_index = 0;
    expect_create(&c, EFL_ERROR_INVALID_IGNORE_INDEX, "zero-based ignore_index 0");
    /* the boundaries that are valid */
    c = base, c.ignore_index = C + 1;
    expect_create(&c, EFL_OK, "ignore_index C+1");
    c = base, c.ignore_index = -100;
    expect_create(&c, EFL_OK, "ignore_index -100");
    c = base, c.scale_factor = 0.0f, c.alpha = -1.0f;
    expect_create(&c, EFL_OK, "s = 0, alpha < 0");

    efl_loss_config got;
    memset(&got, 0, sizeof got);
    CHECK_STATUS(efl_loss_get_config(L, &got), EFL_OK);
    CHECK(got.num_classes == C && got.gamma == 2.0f && got.alpha == 0.25f && got.ignore_index == -1);
    tu_end();
}

static void test_misc(void)
{
    tu_begin("status strings, version, NULL destroy");
    for (int a = 0; a < EFL_STATUS_COUNT_; ++a) {
        const char *s = efl_status_string((efl_status)a);
        if (!CHECK_MSG(s && *s, "status %d has no string", a))
            continue;
        for (int b = 0; b < a; ++b)
            CHECK_MSG(strcmp(s, efl_status_string((efl_status)b)) != 0, "statuses %d and %d share \"%s\"", a, b, s);
    }
    CHECK(efl_status_string((efl_status)EFL_STATUS_COUNT_) != NULL);
    CHECK(efl_status_string((efl_status)-1) != NULL);
    CHECK(efl_status_string((efl_status)12345) != NULL);
    CHECK(efl_version_number() == EFL_VERSION_NUMBER);
    CHECK(efl_version_string() && strcmp(efl_version_string(), EFL_VERSION_STRING) == 0);
    efl_loss_destroy(NULL);
    efl_context_destroy(NULL);
    CHECK(efl_context_log(E.ctx, NULL, 0) < ((size_t)1 << 30));
    tu_end();
}

int main(void)
{
    tu_env_init(&E);
    efl_loss_config cfg;
    efl_loss_config_init(&cfg, C);
    L = tu_loss(&E, &cfg);
    efl_ref_state_init(&S, C);
    tu_rng r = {5};
    for (int j = 0; j < C; ++j) {
        S.pos[j] = tu_uniform(&r);
        S.neg[j] = 1.0 + tu_uniform(&r);
        S.g[j] = 0.5 * tu_uniform(&r);
    }
    tu_write_state_canonical(&E, L, &S);
    tu_make_logits(&r, X, N * C);
    tu_label_opts lo = tu_default_label_opts();
    tu_make_labels(&r, Y, N, C, &lo);
    BX = tu_buf(&E, sizeof X, X);
    BY = tu_buf(&E, sizeof Y, Y);
    BL = tu_buf(&E, 4, NULL);
    BG = tu_buf(&E, sizeof X, NULL);

    test_null_arguments();
    test_normalizer_and_reduction();
    test_buffer_sizes();
    test_foreign_context();
    test_wait_list();
    test_invalid_state();
    test_host_api();
    test_create();
    test_misc();

    /* The fixture is still usable: a valid step now succeeds (the failures above did not
     * leave the loss in a broken state) and writes both outputs. */
    tu_begin("valid step after all the refusals");
    CHECK_STATUS(STEP(L, E.queue, BX, BY, N, 1.0f, EFL_REDUCTION_MEAN, BL, BG), EFL_OK);
    CHECK_STATUS(efl_loss_query_status(L, E.queue), EFL_OK);
    float l;
    tu_read(&E, BL, 4, &l);
    CHECK(isfinite(l) && l > 0.0f);
    tu_end();

    tu_release(BX);
    tu_release(BY);
    tu_release(BL);
    tu_release(BG);
    efl_loss_destroy(L);
    efl_ref_state_free(&S);
    tu_env_free(&E);
    return tu_exit_code();
}
