/*
 * Edge cases, each compared with the float64 reference (never with the library itself,
 * except the state round trip, where that is the point).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

static tu_env E;

typedef struct {
    size_t n;
    uint32_t C;
    float *x;
    int32_t *y;
    efl_ref_state rs;
    efl_ref_params rp;
    efl_loss *loss;
    efl_loss_config cfg;
} fixture;

static void fx_init(fixture *f, size_t n, uint32_t C, const efl_loss_config *cfg_or_null)
{
    memset(f, 0, sizeof *f);
    f->n = n;
    f->C = C;
    if (cfg_or_null)
        f->cfg = *cfg_or_null;
    else
        efl_loss_config_init(&f->cfg, C);
    f->x = malloc((n * C != 0 ? n * C : 1) * sizeof *f->x);
    f->y = malloc((n ? n : 1) * sizeof *f->y);
    if (!f->x || !f->y || !efl_ref_state_init(&f->rs, C))
        tu_fatal(__FILE__, __LINE__, "malloc");
    f->loss = tu_loss(&E, &f->cfg);
    f->rp = tu_ref_params(&f->cfg);
}

static void fx_free(fixture *f)
{
    efl_loss_destroy(f->loss);
    efl_ref_state_free(&f->rs);
    free(f->x);
    free(f->y);
}

/* A non-trivial state in which g is deliberately NOT clamp(pos/neg), so that any update
 * (or lack of one) is visible. */
static void fx_set_state(fixture *f, uint64_t seed)
{
    tu_rng r = {seed};
    for (uint32_t j = 0; j < f->C; ++j) {
        f->rs.pos[j] = 0.5 * tu_uniform(&r);
        f->rs.neg[j] = 1.0 + 3.0 * tu_uniform(&r);
        f->rs.g[j] = 0.05 + 0.9 * tu_uniform(&r);
    }
    tu_write_state_canonical(&E, f->loss, &f->rs);
}

static float fx_random(fixture *f, uint64_t seed, double fg)
{
    tu_rng r = {seed};
    tu_label_opts o = tu_default_label_opts();
    o.fg_fraction = fg;
    o.zero_based = f->cfg.labels == EFL_LABELS_ZERO_BASED;
    o.ignore_index = f->cfg.ignore_index;
    tu_make_logits(&r, f->x, f->n * f->C);
    size_t np = tu_make_labels(&r, f->y, f->n, f->C, &o);
    return np ? (float)np : 1.0f;
}

static int fx_step(fixture *f, float norm, efl_reduction red)
{
    return tu_step_compare(&E, f->loss, &f->rp, &f->rs, f->x, f->y, f->n, norm, red, NULL);
}

/* ------------------------------------------------------------------ */
static void test_all_background(void)
{
    tu_begin("every row background");
    fixture f;
    fx_init(&f, 300, 37, NULL);
    fx_random(&f, 11, 0.0);
    for (size_t i = 0; i < f.n; ++i)
        f.y[i] = 0;
    fx_step(&f, 1.0f, EFL_REDUCTION_MEAN);
    /* exact: no positives anywhere means pos_grad stays exactly 0, hence g = 0 */
    CHECK(tu_max_abs(f.rs.pos, f.C) == 0.0 && tu_count_nonzero(f.rs.neg, f.C) == f.C);
    fx_random(&f, 12, 0.0);
    for (size_t i = 0; i < f.n; ++i)
        f.y[i] = 0;
    fx_step(&f, 1.0f, EFL_REDUCTION_SUM);
    fx_free(&f);
    tu_end();
}

static void test_all_ignored(void)
{
    tu_begin("every row ignored");
    fixture f;
    fx_init(&f, 257, 37, NULL);
    fx_random(&f, 21, 0.1);
    for (size_t i = 0; i < f.n; ++i)
        f.y[i] = -1;
    /* From a written state: P = N = 0, so pos/neg stay and g is recomputed from them (the update
     * of docs/semantics.md is unconditional); loss and gradient are exactly 0. */
    fx_set_state(&f, 22);
    efl_ref_state before;
    efl_ref_state_init(&before, f.C);
    efl_ref_state_copy(&before, &f.rs);
    fx_step(&f, 1.0f, EFL_REDUCTION_MEAN);
    CHECK(memcmp(before.pos, f.rs.pos, f.C * sizeof(double)) == 0);
    CHECK(memcmp(before.g, f.rs.g, f.C * sizeof(double)) != 0); /* the reference did recompute g */
    efl_ref_state_free(&before);
    fx_free(&f);

    /* From the initial state (0, 0, 1): the reference recursion gives g = 0/(0+1e-10) = 0. */
    fx_init(&f, 64, 5, NULL);
    fx_random(&f, 23, 0.1);
    for (size_t i = 0; i < f.n; ++i)
        f.y[i] = -1;
    fx_step(&f, 1.0f, EFL_REDUCTION_SUM);
    CHECK(f.rs.g[0] == 0.0);
    fx_free(&f);
    tu_end();
}

static void test_never_positive(void)
{
    tu_begin("a class never positive");
    fixture f;
    fx_init(&f, 2000, 20, NULL);
    const int32_t never = 7 + 1; /* label of column 7 */
    for (int step = 0; step < 3; ++step) {
        float norm = fx_random(&f, 31 + step, 0.3);
        for (size_t i = 0; i < f.n; ++i)
            if (f.y[i] == never)
                f.y[i] = 0;
        fx_step(&f, norm, EFL_REDUCTION_MEAN);
    }
    /* tu_step_compare compared the device with these at atol = 0 for the zeros */
    CHECK(f.rs.pos[7] == 0.0 && f.rs.neg[7] > 0.0 && f.rs.g[7] == 0.0);
    CHECK(f.rs.pos[0] > 0.0 && f.rs.g[0] > 0.0);
    fx_free(&f);
    tu_end();
}

static void test_one_class(void)
{
    tu_begin("C = 1");
    fixture f;
    fx_init(&f, 500, 1, NULL);
    for (int step = 0; step < 3; ++step) {
        float norm = fx_random(&f, 41 + step, 0.3);
        fx_step(&f, norm, step == 1 ? EFL_REDUCTION_SUM : EFL_REDUCTION_MEAN);
    }
    CHECK(f.rs.pos[0] > 0.0 && f.rs.neg[0] > 0.0); /* g itself may clamp at 1 */
    fx_free(&f);
    tu_end();
}

/* N not a multiple of any work-group size, across column counts around typical widths. */
static void test_odd_sizes(void)
{
    static const size_t ns[] = {1, 7, 97, 1001};
    static const uint32_t cs[] = {3, 81, 1203};
    for (size_t a = 0; a < 4; ++a)
        for (size_t b = 0; b < 3; ++b) {
            char name[64];
            snprintf(name, sizeof name, "N=%zu C=%u", ns[a], cs[b]);
            tu_begin(name);
            fixture f;
            fx_init(&f, ns[a], cs[b], NULL);
            for (int step = 0; step < 2; ++step) {
                float norm = fx_random(&f, 1000 * a + 10 * b + step, 0.3);
                if (ns[a] == 1)
                    f.y[0] = step == 0 ? 1 : 0; /* one positive row, then one background row */
                fx_step(&f, norm, EFL_REDUCTION_MEAN);
            }
            fx_free(&f);
            tu_end();
        }
}

/* An empty batch is still an update (g recomputed from the unchanged totals, as the reference's
 * hook does); a forward changes nothing. */
static void test_n_zero(void)
{
    tu_begin("N = 0");
    fixture f;
    fx_init(&f, 0, 37, NULL);
    fx_set_state(&f, 51);
    const efl_ref_state before = f.rs;
    efl_ref_state want;
    efl_ref_state_init(&want, f.C);
    memcpy(want.pos, before.pos, f.C * sizeof(double));
    memcpy(want.neg, before.neg, f.C * sizeof(double));
    for (uint32_t j = 0; j < f.C; ++j) /* clamp(pos / (neg + 1e-10), 0, 1), in float64 */
        want.g[j] = fmin(fmax(before.pos[j] / (before.neg[j] + 1e-10), 0.0), 1.0);
    cl_mem bx = tu_buf(&E, 64, NULL), by = tu_buf(&E, 64, NULL), bl = tu_buf(&E, 4, NULL), bg = tu_buf(&E, 64, NULL);
    efl_ref_state ds;
    efl_ref_state_init(&ds, f.C);
    float l;
    CHECK_STATUS(efl_enqueue_step(f.loss, E.queue, bx, by, 0, 1.0f, EFL_REDUCTION_MEAN, bl, bg, 0, NULL, NULL), EFL_OK);
    CHECK_STATUS(efl_loss_query_status(f.loss, E.queue), EFL_OK);
    tu_read(&E, bl, 4, &l);
    CHECK_MSG(l == 0.0f, "loss %g", l);
    tu_read_state(&E, f.loss, &ds);
    tu_cmp_state(&ds, &want, 1e-12, 1e-12, "state after an empty step");
    tu_write_state_canonical(&E, f.loss, &f.rs);
    tu_fill(&E, bl, 4, TU_SENTINEL);
    CHECK_STATUS(efl_enqueue_forward(f.loss, E.queue, bx, by, 0, 1.0f, EFL_REDUCTION_SUM, bl, 0, NULL, NULL), EFL_OK);
    tu_read(&E, bl, 4, &l);
    CHECK_MSG(l == 0.0f, "forward loss %g", l);
    tu_read_state(&E, f.loss, &ds);
    CHECK(tu_state_equal_bits(&ds, &f.rs));
    float hl = NAN;
    CHECK_STATUS(efl_loss_step_host(f.loss, f.x, f.y, 0, 1.0f, EFL_REDUCTION_MEAN, &hl, f.x), EFL_OK);
    CHECK(hl == 0.0f);
    tu_read_state(&E, f.loss, &ds);
    tu_cmp_state(&ds, &want, 1e-12, 1e-12, "state after an empty host step");
    efl_ref_state_free(&want);
    efl_ref_state_free(&ds);
    tu_release(bx);
    tu_release(by);
    tu_release(bl);
    tu_release(bg);
    fx_free(&f);
    tu_end();
}

/* Logits far past where float32 1 - sigmoid(x) is 0 (|x| > 17.3), past exp overflow
 * (|x| > 88.7) and up to 1e4: finite everywhere, equal to the reference. */
static void test_extreme_logits(void)
{
    static const float big[] = {17.5f, 50.0f, 90.0f, 1e4f};
    for (int variant = 0; variant < 2; ++variant) {
        tu_begin(variant ? "extreme logits, evolved state, sum" : "extreme logits, initial state, mean");
        fixture f;
        fx_init(&f, 400, 81, NULL);
        float norm = fx_random(&f, 61 + variant, 0.3);
        tu_rng r = {63 + variant};
        for (size_t k = 0; k < f.n * f.C; ++k)
            if (tu_uniform(&r) < 0.5)
                f.x[k] = (tu_uniform(&r) < 0.5 ? -1.0f : 1.0f) * big[tu_below(&r, 4)];
        /* every class column gets a positive row at +-1e4 and +-50 */
        for (uint32_t j = 0; j < f.C && 4 * j + 3 < f.n; ++j)
            for (int s = 0; s < 4; ++s) {
                f.y[4 * j + s] = (int32_t)j + 1;
                f.x[(4 * j + s) * f.C + j] = (s & 1 ? -1.0f : 1.0f) * (s & 2 ? 1e4f : 50.0f);
            }
        if (variant)
            fx_set_state(&f, 64); /* gamma_j up to ~9.6 */
        float *grad = malloc(f.n * f.C * sizeof *grad);
        tu_step_compare(&E, f.loss, &f.rp, &f.rs, f.x, f.y, f.n, norm,
                        variant ? EFL_REDUCTION_SUM : EFL_REDUCTION_MEAN, grad);
        CHECK(tu_all_finite_f32(grad, f.n * f.C));
        fx_random(&f, 65 + variant, 0.3);
        tu_step_compare(&E, f.loss, &f.rp, &f.rs, f.x, f.y, f.n, norm, EFL_REDUCTION_MEAN, NULL);
        free(grad);
        fx_free(&f);
        tu_end();
    }
}

static void test_state_round_trip(void)
{
    tu_begin("state write/read/reset round trip");
    fixture f;
    fx_init(&f, 1, 1203, NULL);
    tu_rng r = {71};
    for (uint32_t j = 0; j < f.C; ++j) {
        /* spread over many binades; g within [0, 1], what EFL's state holds */
        f.rs.pos[j] = tu_uniform(&r) * pow(10.0, -20.0 + 40.0 * tu_uniform(&r));
        f.rs.neg[j] = tu_uniform(&r) * pow(10.0, -20.0 + 40.0 * tu_uniform(&r));
        f.rs.g[j] = tu_uniform(&r);
    }
    f.rs.pos[0] = 0.0;
    f.rs.g[1] = 1.0 - 0x1p-53;
    f.rs.g[3] = 1.0;
    if (E.has_fp64) {
        f.rs.pos[2] = 5e-324; /* denormal double */
        f.rs.neg[2] = 1e300;
    }
    tu_write_state(&E, f.loss, &f.rs);
    efl_ref_state ds;
    efl_ref_state_init(&ds, f.C);
    tu_read_state(&E, f.loss, &ds);
    if (E.has_fp64) {
        CHECK(tu_state_equal_bits(&ds, &f.rs));
    } else {
        /* compensated float pairs hold ~48 significant bits */
        tu_cmp_f64("pos_grad", ds.pos, f.rs.pos, f.C, 1e-14, 0.0);
        tu_cmp_f64("neg_grad", ds.neg, f.rs.neg, f.C, 1e-14, 0.0);
        tu_cmp_f64("pos_neg", ds.g, f.rs.g, f.C, 1e-14, 0.0);
    }
    /* partial reads: NULL skips an array */
    double *only_g = malloc(f.C * sizeof *only_g);
    CHECK_STATUS(efl_loss_read_state(f.loss, E.queue, NULL, NULL, only_g), EFL_OK);
    CHECK(memcmp(only_g, ds.g, f.C * sizeof(double)) == 0);
    free(only_g);
    CHECK_STATUS(efl_loss_reset_state(f.loss, E.queue), EFL_OK);
    tu_read_state(&E, f.loss, &ds);
    for (uint32_t j = 0; j < f.C; ++j)
        if (!CHECK_MSG(ds.pos[j] == 0.0 && ds.neg[j] == 0.0 && ds.g[j] == 1.0, "reset class %u: %g %g %g", j,
                       ds.pos[j], ds.neg[j], ds.g[j]))
            break;
    efl_ref_state_free(&ds);
    fx_free(&f);
    tu_end();
}

/* Running totals must keep contributions far below their own magnitude (float32 totals
 * would drop an increment of ~1 on top of 1e6 almost entirely: ulp(1e6) = 0.0625). */
static void test_accumulator_precision(void)
{
    tu_begin("accumulator keeps small increments on large totals");
    fixture f;
    fx_init(&f, 200, 10, NULL);
    for (uint32_t j = 0; j < f.C; ++j) {
        f.rs.pos[j] = 1e4 + j;
        f.rs.neg[j] = 1e6 + 3 * j;
        f.rs.g[j] = f.rs.pos[j] / f.rs.neg[j];
    }
    tu_write_state_canonical(&E, f.loss, &f.rs);
    efl_ref_state before;
    efl_ref_state_init(&before, f.C);
    efl_ref_state_copy(&before, &f.rs);
    float norm = fx_random(&f, 81, 0.3);
    double P[10], Ns[10];
    efl_ref_forward_backward(&f.rp, f.rs.g, f.x, f.y, f.n, norm, EFL_REF_MEAN, NULL, P, Ns, NULL);
    fx_step(&f, norm, EFL_REDUCTION_MEAN);
    efl_ref_state ds;
    efl_ref_state_init(&ds, f.C);
    tu_read_state(&E, f.loss, &ds);
    for (uint32_t j = 0; j < f.C; ++j) {
        double dp = ds.pos[j] - before.pos[j], dn = ds.neg[j] - before.neg[j];
        CHECK(P[j] > 0.0 && Ns[j] > 0.0);
        CHECK_MSG(fabs(dp - P[j]) <= 1e-5 * P[j], "class %u: pos increment %.9g, reference %.9g", j, dp, P[j]);
        CHECK_MSG(fabs(dn - Ns[j]) <= 1e-5 * Ns[j], "class %u: neg increment %.9g, reference %.9g", j, dn, Ns[j]);
    }
    efl_ref_state_free(&ds);
    efl_ref_state_free(&before);
    fx_free(&f);
    tu_end();
}

/* A label outside the convention: enqueue succeeds, the device skips the state update and
 * leaves the loss buffer alone, rows with bad labels get gradient 0, the status reports it
 * once; the next valid step proceeds normally. */
static void invalid_label_case(const char *name, int zero_based, const int32_t *bad, size_t nbad, size_t n,
                               uint32_t C)
{
    tu_begin(name);
    efl_loss_config cfg;
    efl_loss_config_init(&cfg, C);
    cfg.labels = zero_based ? EFL_LABELS_ZERO_BASED : EFL_LABELS_REFERENCE;
    fixture f;
    fx_init(&f, n, C, &cfg);
    fx_set_state(&f, 91);
    float norm = fx_random(&f, 92, 0.2);
    for (size_t k = 0; k < nbad; ++k)
        f.y[n - 1 - 37 * k] = bad[k]; /* includes the very last row */

    const size_t nc = n * C;
    cl_mem bx = tu_buf(&E, nc * 4, f.x), by = tu_buf(&E, n * 4, f.y), bl = tu_buf(&E, 4, NULL),
           bg = tu_buf(&E, nc * 4, NULL);
    float *grad = malloc(nc * sizeof *grad);
    double *rgrad = malloc(nc * sizeof *rgrad);
    efl_ref_state ds;
    efl_ref_state_init(&ds, C);
    efl_ref_result res;
    size_t nb = efl_ref_forward_backward(&f.rp, f.rs.g, f.x, f.y, n, norm, EFL_REF_MEAN, rgrad, NULL, NULL, &res);
    CHECK(nb == nbad); /* the reference agrees these labels are invalid */

    CHECK_STATUS(efl_enqueue_step(f.loss, E.queue, bx, by, n, norm, EFL_REDUCTION_MEAN, bl, bg, 0, NULL, NULL), EFL_OK);
    CHECK_STATUS(efl_loss_query_status(f.loss, E.queue), EFL_ERROR_INVALID_LABEL);
    uint32_t lbits;
    tu_read(&E, bl, 4, &lbits);
    CHECK_MSG(lbits == 0xA5A5A5A5u, "loss buffer written: 0x%08x", lbits);
    tu_read_state(&E, f.loss, &ds);
    CHECK_MSG(tu_state_equal_bits(&ds, &f.rs), "state changed by a step with an invalid label");
    tu_read(&E, bg, nc * 4, grad);
    tu_cmp_f32("grad (bad rows 0, others as the reference)", grad, rgrad, nc, TU_GRAD_RTOL,
               TU_GRAD_ATOL_REL * tu_max_abs(rgrad, nc));

    /* forward reports it too and leaves the loss alone */
    CHECK_STATUS(efl_enqueue_forward(f.loss, E.queue, bx, by, n, norm, EFL_REDUCTION_SUM, bl, 0, NULL, NULL), EFL_OK);
    CHECK_STATUS(efl_loss_query_status(f.loss, E.queue), EFL_ERROR_INVALID_LABEL);
    tu_read(&E, bl, 4, &lbits);
    CHECK_MSG(lbits == 0xA5A5A5A5u, "loss buffer written by forward: 0x%08x", lbits);

    /* the host convenience: error status, host outputs and state untouched */
    float hl;
    memset(&hl, 0xA5, sizeof hl);
    memset(grad, 0xA5, nc * sizeof *grad);
    CHECK_STATUS(efl_loss_step_host(f.loss, f.x, f.y, n, norm, EFL_REDUCTION_MEAN, &hl, grad), EFL_ERROR_INVALID_LABEL);
    memcpy(&lbits, &hl, 4);
    CHECK(lbits == 0xA5A5A5A5u);
    int untouched = 1;
    for (size_t k = 0; k < nc; ++k) {
        uint32_t b;
        memcpy(&b, &grad[k], 4);
        untouched &= b == 0xA5A5A5A5u;
    }
    CHECK_MSG(untouched, "step_host wrote grad_out despite EFL_ERROR_INVALID_LABEL");
    memset(&hl, 0xA5, sizeof hl);
    CHECK_STATUS(efl_loss_forward_host(f.loss, f.x, f.y, n, norm, EFL_REDUCTION_MEAN, &hl), EFL_ERROR_INVALID_LABEL);
    memcpy(&lbits, &hl, 4);
    CHECK(lbits == 0xA5A5A5A5u);
    tu_read_state(&E, f.loss, &ds);
    CHECK_MSG(tu_state_equal_bits(&ds, &f.rs), "state changed by step_host with an invalid label");

    /* the next valid step works from the untouched state, and the status is clear again */
    norm = fx_random(&f, 93, 0.2);
    fx_step(&f, norm, EFL_REDUCTION_MEAN); /* checks query_status == EFL_OK */

    efl_ref_state_free(&ds);
    free(grad);
    free(rgrad);
    tu_release(bx);
    tu_release(by);
    tu_release(bl);
    tu_release(bg);
    fx_free(&f);
    tu_end();
}

int main(void)
{
    tu_env_init(&E);
    test_all_background();
    test_all_ignored();
    test_never_positive();
    test_one_class();
    test_odd_sizes();
    test_n_zero();
    test_extreme_logits();
    test_state_round_trip();
    test_accumulator_precision();
    {
        static const int32_t bad_ref[] = {38, -2, INT32_MAX, INT32_MIN};
        invalid_label_case("invalid labels (reference convention, C=37)", 0, bad_ref, 4, 301, 37);
        static const int32_t bad_one[] = {82};
        invalid_label_case("one invalid label in the last row (C=81, N=1001)", 0, bad_one, 1, 1001, 81);
        static const int32_t bad_zb[] = {81, -5};
        invalid_label_case("invalid labels (zero-based, C=80)", 1, bad_zb, 2, 300, 80);
    }
    tu_env_free(&E);
    return tu_exit_code();
}
