/*
 * Determinism (docs/semantics.md: "the same inputs on the same device give bitwise the same loss,
 * gradient and state": no float atomics). A size with many row blocks, so that any
 * order-dependent reduction would show.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

typedef struct {
    float loss;
    float *grad;
    efl_ref_state st;
} outcome;

static void run_once(tu_env *e, efl_loss *loss, const efl_ref_state *start, cl_mem bx, cl_mem by, size_t n,
                     size_t C, float norm, efl_reduction red, outcome *o)
{
    cl_mem bl = tu_buf(e, 4, NULL), bg = tu_buf(e, n * C * 4, NULL);
    tu_write_state(e, loss, start);
    CHECK_STATUS(efl_enqueue_step(loss, e->queue, bx, by, n, norm, red, bl, bg, 0, NULL, NULL), EFL_OK);
    CHECK_STATUS(efl_loss_query_status(loss, e->queue), EFL_OK);
    tu_read(e, bl, 4, &o->loss);
    tu_read(e, bg, n * C * 4, o->grad);
    tu_read_state(e, loss, &o->st);
    tu_release(bl);
    tu_release(bg);
}

static void determinism_case(tu_env *e, const char *name, size_t n, uint32_t C, efl_reduction red, uint64_t seed)
{
    tu_begin(name);
    n = tu_rows(n);
    const size_t nc = n * C;
    efl_loss_config cfg;
    efl_loss_config_init(&cfg, C);
    efl_loss *loss = tu_loss(e, &cfg);
    float *x = malloc(nc * sizeof *x);
    int32_t *y = malloc(n * sizeof *y);
    outcome o[3];
    efl_ref_state start;
    if (!x || !y || !efl_ref_state_init(&start, C))
        tu_fatal(__FILE__, __LINE__, "malloc");
    for (int k = 0; k < 3; ++k) {
        o[k].grad = malloc(nc * sizeof(float));
        if (!o[k].grad || !efl_ref_state_init(&o[k].st, C))
            tu_fatal(__FILE__, __LINE__, "malloc");
    }
    tu_rng r = {seed};
    tu_make_logits(&r, x, nc);
    tu_label_opts lo = tu_default_label_opts();
    size_t np = tu_make_labels(&r, y, n, C, &lo);
    float norm = np ? (float)np : 1.0f;
    /* a state with varied gamma_j, so the per-class factors are exercised too */
    for (uint32_t j = 0; j < C; ++j) {
        start.pos[j] = 0.1 + tu_uniform(&r);
        start.neg[j] = 1.0 + 10.0 * tu_uniform(&r);
        start.g[j] = fmin(start.pos[j] / start.neg[j], 1.0); /* EFL keeps g in [0, 1] */
    }
    cl_mem bx = tu_buf(e, nc * 4, x), by = tu_buf(e, n * 4, y);

    run_once(e, loss, &start, bx, by, n, C, norm, red, &o[0]);
    run_once(e, loss, &start, bx, by, n, C, norm, red, &o[1]);
    /* a fresh loss object too: nothing cached per object may change the result */
    efl_loss *loss2 = tu_loss(e, &cfg);
    run_once(e, loss2, &start, bx, by, n, C, norm, red, &o[2]);
    efl_loss_destroy(loss2);

    /* Not vacuous: something was computed and the state moved. */
    CHECK(o[0].loss > 0.0f && isfinite(o[0].loss));
    size_t nz = 0;
    for (size_t k = 0; k < nc; ++k)
        nz += o[0].grad[k] != 0.0f;
    CHECK(nz > nc / 2);
    CHECK(!tu_state_equal_bits(&o[0].st, &start));
    for (int k = 1; k < 3; ++k) {
        CHECK_MSG(memcmp(&o[0].loss, &o[k].loss, 4) == 0, "run %d loss %.9g vs %.9g", k, o[k].loss, o[0].loss);
        size_t diff = 0;
        for (size_t i = 0; i < nc; ++i)
            diff += memcmp(&o[0].grad[i], &o[k].grad[i], 4) != 0;
        CHECK_MSG(diff == 0, "run %d: %zu gradient element(s) differ", k, diff);
        CHECK_MSG(tu_state_equal_bits(&o[0].st, &o[k].st), "run %d: state differs", k);
    }
    tu_release(bx);
    tu_release(by);
    efl_loss_destroy(loss);
    for (int k = 0; k < 3; ++k) {
        free(o[k].grad);
        efl_ref_state_free(&o[k].st);
    }
    efl_ref_state_free(&start);
    free(x);
    free(y);
    tu_end();
}

int main(void)
{
    tu_env e;
    tu_env_init(&e);
    determinism_case(&e, "N=20000 C=80 mean", 20000, 80, EFL_REDUCTION_MEAN, 7);
    determinism_case(&e, "N=3001 C=1203 sum", 3001, 1203, EFL_REDUCTION_SUM, 8);
    tu_env_free(&e);
    return tu_exit_code();
}
