/*
 * The fused path (lib/step.c fused_path, kernels/efl_step.cl: step, reduce and apply in one
 * launch of one work-group) against the kernel chain (efl_step -> efl_reduce -> efl_apply), bit
 * for bit: two losses of one configuration take the same ops on the same inputs, one with the
 * internal knob EFL_FUSED_PATH=0 (always the chain), the other with EFL_FUSED_PATH=1 (the fused
 * path wherever the device's build has it, whatever the row blocks). Every output must be the
 * same bits: the loss total, gradients, element losses, the state, the status and the count of
 * refused steps, in EFL, focal and EQLv2 modes, on one row block and on several (the fused
 * kernel runs them one after another in the chain's order), with C a multiple of the vector
 * width and not. A refused step (a NaN logit, an invalid label) must leave the loss total and
 * the state as they were on both paths.
 *
 * Where a build has no fused path (EFL_VW = 1: GPUs; focal mode, kernels/efl_step.cl EFL_FUSED)
 * both losses take the chain and the comparison holds trivially. Oclgrind's builds have
 * EFL_VW = 4: the fused path runs under its race checks there.
 */
#define _POSIX_C_SOURCE 200809L /* setenv */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

static tu_env E;

typedef struct {
    efl_loss *L;
    const char *knob; /* EFL_FUSED_PATH for this loss's enqueues */
    cl_mem grad, loss, elems;
} side;

typedef struct {
    size_t n;
    uint32_t C;
    cl_mem x, y, xbad, ybad, normbuf;
} inputs;

static efl_status enqueue(side *s, const inputs *in, efl_op op, cl_mem x, cl_mem y, efl_reduction red,
                          int use_normbuf)
{
    setenv("EFL_FUSED_PATH", s->knob, 1);
    efl_batch b = tu_rows_batch(in->n, x, y, op == EFL_OP_ACCUMULATE ? NULL : s->grad, s->loss, 7.0f);
    b.reduction = red;
    if (red == EFL_REDUCTION_NONE) {
        b.loss = NULL;
        b.loss_elems[0] = s->elems;
    }
    if (use_normbuf)
        b.normalizer_buffer = in->normbuf;
    if (op == EFL_OP_ACCUMULATE) {
        b.input[0] = s->grad; /* the gradient the previous op wrote: the caller's */
        b.grad_scale = 2.0f;
        b.loss = NULL;
    }
    if (op == EFL_OP_FORWARD)
        b.grad[0] = NULL;
    const efl_status st = efl_enqueue_batch(s->L, E.queue, op, &b, 0, NULL, NULL);
    unsetenv("EFL_FUSED_PATH");
    return st;
}

/* Both sides' outputs the same bits; for a refused op, also the loss total and the state as
 * they were before it. */
static void compare(side *a, side *b, const inputs *in, const char *what, efl_mode mode, int refused,
                    const efl_ref_state *before)
{
    const size_t elems = in->n * in->C;
    float *ga = tu_xmalloc(elems * 4), *gb = tu_xmalloc(elems * 4);
    float la = 0, lb = 0;
    char name[256];
    tu_read(&E, a->grad, elems * 4, ga);
    tu_read(&E, b->grad, elems * 4, gb);
    snprintf(name, sizeof name, "%s: grad", what);
    tu_bits_equal(name, ga, gb, elems, 4);
    tu_read(&E, a->elems, elems * 4, ga);
    tu_read(&E, b->elems, elems * 4, gb);
    snprintf(name, sizeof name, "%s: loss_elems", what);
    tu_bits_equal(name, ga, gb, elems, 4);
    tu_read(&E, a->loss, 4, &la);
    tu_read(&E, b->loss, 4, &lb);
    snprintf(name, sizeof name, "%s: loss", what);
    tu_bits_equal(name, &la, &lb, 1, 4);
    const efl_status sa = efl_loss_query_status(a->L, E.queue), sb = efl_loss_query_status(b->L, E.queue);
    CHECK_MSG(sa == sb, "%s: status %s (chain) vs %s (fused)", what, efl_status_string(sa), efl_status_string(sb));
    if (refused) {
        CHECK_MSG(sa != EFL_OK, "%s: the chain did not refuse", what);
        unsigned char sentinel[4];
        memset(sentinel, TU_SENTINEL, 4);
        CHECK_MSG(memcmp(&lb, sentinel, 4) == 0, "%s: the fused path wrote the loss of a refused step", what);
        CHECK_MSG(memcmp(&la, sentinel, 4) == 0, "%s: the chain wrote the loss of a refused step", what);
    }
    uint32_t ka = 0, kb = 1;
    CHECK_STATUS(efl_loss_skipped_steps(a->L, E.queue, &ka), EFL_OK);
    CHECK_STATUS(efl_loss_skipped_steps(b->L, E.queue, &kb), EFL_OK);
    CHECK_MSG(ka == kb, "%s: %u refused steps (chain) vs %u (fused)", what, ka, kb);
    if (mode != EFL_MODE_FOCAL) {
        efl_ref_state sa_, sb_;
        REQUIRE_CL(efl_ref_state_init(&sa_, in->C) && efl_ref_state_init(&sb_, in->C) ? CL_SUCCESS
                                                                                          : CL_OUT_OF_HOST_MEMORY);
        tu_read_state(&E, a->L, &sa_);
        tu_read_state(&E, b->L, &sb_);
        CHECK_MSG(tu_state_equal_bits(&sa_, &sb_), "%s: the states differ", what);
        if (refused && before)
            CHECK_MSG(tu_state_equal_bits(&sb_, before), "%s: the fused path changed the state of a refused step",
                      what);
        efl_ref_state_free(&sa_);
        efl_ref_state_free(&sb_);
    }
    free(ga);
    free(gb);
}

static void fill_outputs(side *s, const inputs *in)
{
    tu_fill(&E, s->grad, in->n * in->C * 4, TU_SENTINEL);
    tu_fill(&E, s->elems, in->n * in->C * 4, TU_SENTINEL);
    tu_fill(&E, s->loss, 4, TU_SENTINEL);
}

/* Whether the context's log, from offset mark on, names loss L as having taken the fused path
 * (lib/step.c logs the first such batch of each loss). From the mark: a destroyed loss's address
 * may come back for a new one. */
static int logged_fused(const efl_loss *L, size_t mark)
{
    const size_t len = efl_context_log(E.ctx, NULL, 0);
    char *log = tu_xmalloc(len + 1), key[64];
    efl_context_log(E.ctx, log, len + 1);
    snprintf(key, sizeof key, "loss %p: a batch of", (const void *)L);
    const int found = len > mark && strstr(log + mark, key) != NULL;
    free(log);
    return found;
}

/* The comparison means something only if the sides took different paths: the chain side never
 * takes the fused path, and on the runtimes whose builds here have one (PoCL and Oclgrind: EFL_VW
 * > 1) the forced side takes it in EFL and EQLv2 modes (focal mode has none). */
static void check_path_taken(side *s, efl_mode mode, size_t mark)
{
    CHECK_MSG(!logged_fused(s[0].L, mark), "EFL_FUSED_PATH=0 took the fused path");
    char platform[256] = "";
    cl_platform_id p = NULL;
    clGetDeviceInfo(E.dev, CL_DEVICE_PLATFORM, sizeof p, &p, NULL);
    clGetPlatformInfo(p, CL_PLATFORM_NAME, sizeof platform - 1, platform, NULL);
    const int has_fused = (strstr(platform, "Portable Computing Language") || strstr(platform, "Oclgrind")) &&
                          !getenv("EFL_TUNE");
    if (has_fused)
        CHECK_MSG(logged_fused(s[1].L, mark) == (mode != EFL_MODE_FOCAL), "%s: the fused path was %s (mode %d)", platform,
                  mode == EFL_MODE_FOCAL ? "taken in focal mode" : "not taken", (int)mode);
}

static void run_case(efl_mode mode, uint32_t C, size_t n, uint64_t seed)
{
    char title[96];
    snprintf(title, sizeof title, "fused = chain, mode %d, C %u, N %zu", (int)mode, C, n);
    tu_begin(title);
    efl_loss_config cfg;
    efl_loss_config_init_mode(&cfg, C, mode);
    tu_rng r = {seed};
    inputs in = {n, C, NULL, NULL, NULL, NULL, NULL};
    float *x = tu_xmalloc(n * C * 4);
    int32_t *y = tu_xmalloc(n * 4);
    tu_make_logits(&r, x, n * C);
    tu_label_opts o = tu_default_label_opts();
    o.fg_fraction = 0.2;
    o.ignore_fraction = 0.05;
    o.zero_based = cfg.labels == EFL_LABELS_ZERO_BASED;
    o.ignore_index = cfg.ignore_index;
    tu_make_labels(&r, y, n, C, &o);
    y[n / 2] = tu_background_label(C, o.zero_based); /* a valid row: its NaN below must refuse the step */
    in.x = tu_buf(&E, n * C * 4, x);
    in.y = tu_buf(&E, n * 4, y);
    const float normv = 3.5f;
    in.normbuf = tu_buf(&E, 4, &normv);
    x[(n / 2) * C + C / 3] = NAN; /* a NaN logit in a valid row */
    in.xbad = tu_buf(&E, n * C * 4, x);
    x[(n / 2) * C + C / 3] = 0.0f;
    y[n - 1] = (int32_t)C + 5; /* a label no class has */
    in.ybad = tu_buf(&E, n * 4, y);

    side s[2] = {{tu_loss(&E, &cfg), "0", NULL, NULL, NULL}, {tu_loss(&E, &cfg), "1", NULL, NULL, NULL}};
    const size_t mark = efl_context_log(E.ctx, NULL, 0);
    for (int k = 0; k < 2; ++k) {
        s[k].grad = tu_buf(&E, n * C * 4, NULL);
        s[k].elems = tu_buf(&E, n * C * 4, NULL);
        s[k].loss = tu_buf(&E, 4, NULL);
    }
    struct {
        const char *what;
        efl_op op;
        int bad; /* 1: NaN logit, 2: invalid label */
        efl_reduction red;
        int normbuf;
    } ops[] = {
        {"step mean", EFL_OP_STEP, 0, EFL_REDUCTION_MEAN, 0},
        {"step sum", EFL_OP_STEP, 0, EFL_REDUCTION_SUM, 0},
        {"step none", EFL_OP_STEP, 0, EFL_REDUCTION_NONE, 0},
        {"forward mean (normalizer buffer)", EFL_OP_FORWARD, 0, EFL_REDUCTION_MEAN, 1},
        {"step mean (normalizer buffer)", EFL_OP_STEP, 0, EFL_REDUCTION_MEAN, 1},
        {"accumulate", EFL_OP_ACCUMULATE, 0, EFL_REDUCTION_SUM, 0},
        {"step, NaN logit (refused)", EFL_OP_STEP, 1, EFL_REDUCTION_MEAN, 0},
        {"step, invalid label (refused)", EFL_OP_STEP, 2, EFL_REDUCTION_MEAN, 0},
        {"step mean after the refusals", EFL_OP_STEP, 0, EFL_REDUCTION_MEAN, 0},
    };
    for (size_t i = 0; i < sizeof ops / sizeof *ops; ++i) {
        if (mode == EFL_MODE_FOCAL && ops[i].op == EFL_OP_ACCUMULATE)
            continue; /* focal loss keeps no statistics */
        efl_ref_state before;
        int have_before = 0;
        if (ops[i].bad && mode != EFL_MODE_FOCAL) {
            REQUIRE_CL(efl_ref_state_init(&before, C) ? CL_SUCCESS : CL_OUT_OF_HOST_MEMORY);
            tu_read_state(&E, s[1].L, &before);
            have_before = 1;
        }
        for (int k = 0; k < 2; ++k) {
            if (ops[i].op != EFL_OP_ACCUMULATE)
                fill_outputs(&s[k], &in);
            const cl_mem xx = ops[i].bad == 1 ? in.xbad : in.x, yy = ops[i].bad == 2 ? in.ybad : in.y;
            CHECK_STATUS(enqueue(&s[k], &in, ops[i].op, xx, yy, ops[i].red, ops[i].normbuf), EFL_OK);
        }
        REQUIRE_CL(clFinish(E.queue));
        char what[160];
        snprintf(what, sizeof what, "%s (mode %d, C %u, N %zu)", ops[i].what, (int)mode, C, n);
        compare(&s[0], &s[1], &in, what, mode, ops[i].bad != 0, have_before ? &before : NULL);
        if (have_before)
            efl_ref_state_free(&before);
    }
    check_path_taken(s, mode, mark);
    for (int k = 0; k < 2; ++k) {
        tu_release(s[k].grad);
        tu_release(s[k].elems);
        tu_release(s[k].loss);
        efl_loss_destroy(s[k].L);
    }
    tu_release(in.x);
    tu_release(in.y);
    tu_release(in.xbad);
    tu_release(in.ybad);
    tu_release(in.normbuf);
    free(x);
    free(y);
    tu_end();
}

int main(void)
{
    tu_env_init(&E);
    cl_device_type type = 0;
    clGetDeviceInfo(E.dev, CL_DEVICE_TYPE, sizeof type, &type, NULL);
    printf("device %s: %s\n", E.device_name,
           (type & CL_DEVICE_TYPE_CPU) ? "a CPU (the fused path where its build has EFL_VW > 1)"
                                       : "not a CPU (no fused path: both sides take the chain)");
    const efl_mode modes[] = {EFL_MODE_EFL, EFL_MODE_FOCAL, EFL_MODE_EQLV2};
    const uint32_t classes[] = {80, 37, 21}; /* 10, 5 and 3 work-items on an 8-wide CPU build */
    const size_t rows[] = {100, tu_small() ? 400 : 1000}; /* one row block, several */
    uint64_t seed = 0xF05EDull;
    for (size_t m = 0; m < 3; ++m)
        for (size_t c = 0; c < 3; ++c)
            for (size_t k = 0; k < 2; ++k)
                run_case(modes[m], classes[c], rows[k], seed++);
    tu_env_free(&E);
    return tu_exit_code();
}
