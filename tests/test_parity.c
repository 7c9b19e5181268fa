/*
 * Parity with the float64 reference (efl_ref.c) on detector-like random inputs, over 20
 * consecutive training steps in which the device and the reference each evolve their own
 * per-class state.
 *
 * Tolerances (test_util.h):
 *  - gradient: |dev - ref| <= 1e-5 |ref| + 1e-12 max|ref|. The device evaluates in float32;
 *    q^gamma_j = exp(gamma_j log q) with an argument of magnitude A carries about A * 6e-8
 *    relative error (the argument's own rounding), and A stays below ~100 before the value
 *    underflows float32 (exp(-103)), so 1e-5 covers A up to ~150 plus the few ulps of the
 *    other factors. The absolute term only matters for values that underflow or become
 *    denormal in float32 (then relative precision is gone by definition).
 *  - loss: a float32 reduction of positive terms (no cancellation): 1e-5 relative.
 *  - state: float64 accumulators of float32 gradients; sums of many elements average the
 *    per-element rounding, and the per-class gamma_j drifts only through g: 1e-6 relative
 *    (docs/semantics.md: "g matches a float64 replay of the recursion to about 1e-6").
 * Additionally each step's state change is checked against a float64 replay of the device's
 * own gradient, which isolates the accumulator precision from the float32 gradient error.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

#define STEPS 20

typedef struct {
    const char *name;
    size_t n;
    uint32_t C;
    efl_reduction red;
    float gamma, alpha, scale, loss_weight;
    int zero_based;
    int32_t ignore_index;
    uint64_t seed;
} parity_case;

/* Per-class |G| sums of a float32 gradient over valid rows, in float64. */
static void replay_sums(const efl_ref_params *rp, const float *grad, const int32_t *y, size_t n, double *P,
                        double *Ns)
{
    const size_t C = rp->num_classes;
    memset(P, 0, C * sizeof *P);
    memset(Ns, 0, C * sizeof *Ns);
    for (size_t i = 0; i < n; ++i) {
        int32_t col;
        if (efl_ref_label_column(rp, y[i], &col) != 1)
            continue;
        for (size_t j = 0; j < C; ++j) {
            double a = fabs((double)grad[i * C + j]);
            if ((int32_t)j == col)
                P[j] += a;
            else
                Ns[j] += a;
        }
    }
}

static void run_case(tu_env *e, const parity_case *pc)
{
    tu_begin(pc->name);
    efl_loss_config cfg;
    efl_loss_config_init(&cfg, pc->C);
    cfg.gamma = pc->gamma;
    cfg.alpha = pc->alpha;
    cfg.scale_factor = pc->scale;
    cfg.loss_weight = pc->loss_weight;
    cfg.labels = pc->zero_based ? EFL_LABELS_ZERO_BASED : EFL_LABELS_REFERENCE;
    cfg.ignore_index = pc->ignore_index;
    efl_loss *loss = tu_loss(e, &cfg);
    efl_ref_params rp = tu_ref_params(&cfg);

    const size_t n = tu_rows(pc->n), C = pc->C, nc = n * C;
    float *x = malloc(nc * sizeof *x), *grad = malloc(nc * sizeof *grad);
    int32_t *y = malloc(n * sizeof *y);
    double *rgrad = malloc(nc * sizeof *rgrad), *P = malloc(C * sizeof *P), *Ns = malloc(C * sizeof *Ns);
    efl_ref_state rs, before, after_fwd, ds, replay;
    if (!x || !grad || !y || !rgrad || !P || !Ns || !efl_ref_state_init(&rs, pc->C) ||
        !efl_ref_state_init(&before, pc->C) || !efl_ref_state_init(&after_fwd, pc->C) ||
        !efl_ref_state_init(&ds, pc->C) || !efl_ref_state_init(&replay, pc->C))
        tu_fatal(__FILE__, __LINE__, "malloc");
    cl_mem bx = tu_buf(e, nc * sizeof(float), NULL), by = tu_buf(e, n * sizeof(int32_t), NULL);
    cl_mem bl = tu_buf(e, sizeof(float), NULL), bg = tu_buf(e, nc * sizeof(float), NULL);

    tu_rng rng = {pc->seed};
    tu_label_opts lo = tu_default_label_opts();
    lo.zero_based = pc->zero_based;
    lo.ignore_index = pc->ignore_index;
    int ok = 1;
    for (int step = 0; step < tu_steps(STEPS) && ok; ++step) {
        tu_make_logits(&rng, x, nc);
        size_t npos = tu_make_labels(&rng, y, n, pc->C, &lo);
        float normalizer = npos > 0 ? (float)npos : 1.0f; /* the head's num_pos, clamped to >= 1 */
        tu_write(e, bx, nc * sizeof(float), x);
        tu_write(e, by, n * sizeof(int32_t), y);
        tu_read_state(e, loss, &before);

        /* forward first: same pre-step state as the step that follows */
        float floss, sloss;
        tu_fill(e, bl, sizeof(float), TU_SENTINEL);
        ok &= CHECK_STATUS(efl_enqueue_forward(loss, e->queue, bx, by, n, normalizer, pc->red, bl, 0, NULL, NULL),
                           EFL_OK);
        ok &= CHECK_STATUS(efl_loss_query_status(loss, e->queue), EFL_OK);
        tu_read(e, bl, sizeof floss, &floss);
        tu_read_state(e, loss, &after_fwd);
        ok &= CHECK_MSG(tu_state_equal_bits(&before, &after_fwd), "step %d: forward changed the state", step);

        tu_fill(e, bl, sizeof(float), TU_SENTINEL);
        tu_fill(e, bg, nc * sizeof(float), TU_SENTINEL);
        ok &= CHECK_STATUS(efl_enqueue_step(loss, e->queue, bx, by, n, normalizer, pc->red, bl, bg, 0, NULL, NULL),
                           EFL_OK);
        ok &= CHECK_STATUS(efl_loss_query_status(loss, e->queue), EFL_OK);
        tu_read(e, bl, sizeof sloss, &sloss);
        tu_read(e, bg, nc * sizeof(float), grad);
        tu_read_state(e, loss, &ds);

        efl_ref_result res;
        if (efl_ref_step(&rp, &rs, x, y, n, normalizer, (efl_ref_reduction)pc->red, rgrad, &res))
            tu_fatal(__FILE__, __LINE__, "generated an invalid label");
        /* Guard against a vacuous comparison: real positives, a real loss, mostly non-zero grads. */
        ok &= CHECK(res.positives > 0 && res.loss > 0.0 && tu_count_nonzero(rgrad, nc) > nc / 2);

        char what[96];
        snprintf(what, sizeof what, "step %d loss (step)", step);
        ok &= tu_cmp_f32(what, &sloss, &res.loss, 1, TU_LOSS_RTOL, 0.0);
        snprintf(what, sizeof what, "step %d loss (forward)", step);
        ok &= tu_cmp_f32(what, &floss, &res.loss, 1, TU_LOSS_RTOL, 0.0);
        double sl = sloss;
        snprintf(what, sizeof what, "step %d forward vs step loss", step);
        ok &= tu_cmp_f32(what, &floss, &sl, 1, 1e-6, 0.0);
        snprintf(what, sizeof what, "step %d grad", step);
        ok &= tu_cmp_f32(what, grad, rgrad, nc, TU_GRAD_RTOL, TU_GRAD_ATOL_REL * tu_max_abs(rgrad, nc));
        snprintf(what, sizeof what, "step %d pos_grad", step);
        ok &= tu_cmp_f64(what, ds.pos, rs.pos, C, TU_STATE_RTOL, 1e-12 * tu_max_abs(rs.pos, C));
        snprintf(what, sizeof what, "step %d neg_grad", step);
        ok &= tu_cmp_f64(what, ds.neg, rs.neg, C, TU_STATE_RTOL, 1e-12 * tu_max_abs(rs.neg, C));
        snprintf(what, sizeof what, "step %d pos_neg", step);
        ok &= tu_cmp_f64(what, ds.g, rs.g, C, TU_STATE_RTOL, 1e-12);

        /* Accumulator replay: state_after = state_before + sums of the device's own |G|. The
         * per-step sums may be formed in float32 on the device (~1e-6 of the increment); the
         * running totals must not lose anything beyond float64 rounding. */
        replay_sums(&rp, grad, y, n, P, Ns);
        for (size_t j = 0; j < C; ++j) {
            replay.pos[j] = before.pos[j] + P[j];
            replay.neg[j] = before.neg[j] + Ns[j];
        }
        for (size_t j = 0; j < C && ok; ++j) {
            ok &= CHECK_MSG(fabs(ds.pos[j] - replay.pos[j]) <= 1e-6 * P[j] + 1e-13 * replay.pos[j],
                            "step %d class %zu: pos_grad %.17g, replay %.17g (+%.6g)", step, j, ds.pos[j],
                            replay.pos[j], P[j]);
            ok &= CHECK_MSG(fabs(ds.neg[j] - replay.neg[j]) <= 1e-6 * Ns[j] + 1e-13 * replay.neg[j],
                            "step %d class %zu: neg_grad %.17g, replay %.17g (+%.6g)", step, j, ds.neg[j],
                            replay.neg[j], Ns[j]);
            double r = ds.pos[j] / (ds.neg[j] + 1e-10);
            double gr = r < 0 ? 0 : (r > 1 ? 1 : r);
            ok &= CHECK_MSG(fabs(ds.g[j] - gr) <= 1e-7 * gr, "step %d class %zu: pos_neg %.17g, from own totals %.17g",
                            step, j, ds.g[j], gr);
        }
    }
    /* The statistic must actually have moved, or the state comparisons proved little. */
    double gmin = 1.0;
    for (size_t j = 0; j < C; ++j)
        gmin = fmin(gmin, rs.g[j]);
    CHECK_MSG(gmin < 0.5, "reference g never moved (min %g)", gmin);

    tu_release(bx);
    tu_release(by);
    tu_release(bl);
    tu_release(bg);
    efl_loss_destroy(loss);
    efl_ref_state_free(&rs);
    efl_ref_state_free(&before);
    efl_ref_state_free(&after_fwd);
    efl_ref_state_free(&ds);
    efl_ref_state_free(&replay);
    free(x);
    free(grad);
    free(y);
    free(rgrad);
    free(P);
    free(Ns);
    tu_end();
}

/* The blocking host-array API: same numbers as the reference, same state semantics. */
static void run_host_api(tu_env *e)
{
    tu_begin("host conveniences (N=400 C=37)");
    const size_t n = 400, C = 37, nc = n * C;
    efl_loss_config cfg;
    efl_loss_config_init(&cfg, (uint32_t)C);
    efl_loss *loss = tu_loss(e, &cfg);
    efl_ref_params rp = tu_ref_params(&cfg);
    float *x = malloc(nc * sizeof *x), *grad = malloc(nc * sizeof *grad);
    int32_t *y = malloc(n * sizeof *y);
    double *rgrad = malloc(nc * sizeof *rgrad);
    efl_ref_state rs, ds, ds2;
    if (!x || !grad || !y || !rgrad || !efl_ref_state_init(&rs, (uint32_t)C) || !efl_ref_state_init(&ds, (uint32_t)C) ||
        !efl_ref_state_init(&ds2, (uint32_t)C))
        tu_fatal(__FILE__, __LINE__, "malloc");
    tu_rng rng = {42};
    tu_label_opts lo = tu_default_label_opts();
    lo.fg_fraction = 0.2;

    for (int step = 0; step < 3; ++step) {
        tu_make_logits(&rng, x, nc);
        float norm = (float)tu_make_labels(&rng, y, n, (uint32_t)C, &lo);
        if (norm < 1.0f)
            norm = 1.0f;
        efl_ref_result res;

        /* forward_host: loss of the current state, state untouched */
        float fl = NAN;
        CHECK_STATUS(efl_loss_forward_host(loss, x, y, n, norm, EFL_REDUCTION_MEAN, &fl), EFL_OK);
        efl_ref_forward_backward(&rp, rs.g, x, y, n, norm, EFL_REF_MEAN, NULL, NULL, NULL, &res);
        CHECK(res.loss > 0.0);
        tu_cmp_f32("forward_host loss", &fl, &res.loss, 1, TU_LOSS_RTOL, 0.0);

        if (step == 1) {
            /* grad == NULL is allowed and still updates the state */
            float sl = NAN;
            CHECK_STATUS(efl_loss_step_host(loss, x, y, n, norm, EFL_REDUCTION_MEAN, &sl, NULL), EFL_OK);
            efl_ref_step(&rp, &rs, x, y, n, norm, EFL_REF_MEAN, NULL, &res);
            tu_cmp_f32("step_host loss (grad NULL)", &sl, &res.loss, 1, TU_LOSS_RTOL, 0.0);
        } else {
            float sl = NAN;
            memset(grad, 0xA5, nc * sizeof *grad);
            CHECK_STATUS(efl_loss_step_host(loss, x, y, n, norm, EFL_REDUCTION_MEAN, &sl, grad), EFL_OK);
            efl_ref_step(&rp, &rs, x, y, n, norm, EFL_REF_MEAN, rgrad, &res);
            CHECK(tu_count_nonzero(rgrad, nc) > nc / 2);
            tu_cmp_f32("step_host loss", &sl, &res.loss, 1, TU_LOSS_RTOL, 0.0);
            tu_cmp_f32("step_host grad", grad, rgrad, nc, TU_GRAD_RTOL, TU_GRAD_ATOL_REL * tu_max_abs(rgrad, nc));
        }
        for (size_t j = 0; j < C; ++j)
            ds.pos[j] = ds.neg[j] = ds.g[j] = NAN;
        CHECK_STATUS(efl_loss_read_state_host(loss, ds.pos, ds.neg, ds.g), EFL_OK);
        tu_cmp_f64("state pos_grad", ds.pos, rs.pos, C, TU_STATE_RTOL_FEW, 1e-12 * tu_max_abs(rs.pos, C));
        tu_cmp_f64("state neg_grad", ds.neg, rs.neg, C, TU_STATE_RTOL_FEW, 1e-12 * tu_max_abs(rs.neg, C));
        tu_cmp_f64("state pos_neg", ds.g, rs.g, C, TU_STATE_RTOL_FEW, 1e-12);
        /* The queue-based read sees the same state (both views of one loss). */
        tu_read_state(e, loss, &ds2);
        CHECK(tu_state_equal_bits(&ds, &ds2));
    }

    /* write_state_host then a step continues from exactly that state */
    for (size_t j = 0; j < C; ++j) {
        rs.pos[j] = 0.01 * (double)(j + 1);
        rs.neg[j] = 0.5 + 0.1 * (double)j;
        rs.g[j] = fmin(1.0, rs.pos[j] / rs.neg[j]);
    }
    CHECK_STATUS(efl_loss_write_state_host(loss, rs.pos, rs.neg, rs.g), EFL_OK);
    CHECK_STATUS(efl_loss_read_state_host(loss, ds.pos, ds.neg, ds.g), EFL_OK);
    if (e->has_fp64)
        CHECK(tu_state_equal_bits(&ds, &rs));
    else
        tu_cmp_f64("write/read host", ds.pos, rs.pos, C, 1e-14, 0.0);
    tu_make_logits(&rng, x, nc);
    tu_make_labels(&rng, y, n, (uint32_t)C, &lo);
    float sl = NAN;
    efl_ref_result res;
    CHECK_STATUS(efl_loss_step_host(loss, x, y, n, 1.0f, EFL_REDUCTION_SUM, &sl, grad), EFL_OK);
    efl_ref_step(&rp, &rs, x, y, n, 1.0, EFL_REF_SUM, rgrad, &res);
    tu_cmp_f32("step_host after write_state_host: loss", &sl, &res.loss, 1, TU_LOSS_RTOL, 0.0);
    tu_cmp_f32("step_host after write_state_host: grad", grad, rgrad, nc, TU_GRAD_RTOL,
               TU_GRAD_ATOL_REL * tu_max_abs(rgrad, nc));
    CHECK_STATUS(efl_loss_read_state_host(loss, ds.pos, ds.neg, ds.g), EFL_OK);
    tu_cmp_f64("state pos_neg after write_state_host step", ds.g, rs.g, C, TU_STATE_RTOL_FEW, 1e-12);

    /* reset_state_host: back to 0, 0, 1 */
    CHECK_STATUS(efl_loss_reset_state_host(loss), EFL_OK);
    CHECK_STATUS(efl_loss_read_state_host(loss, ds.pos, ds.neg, ds.g), EFL_OK);
    for (size_t j = 0; j < C; ++j)
        CHECK_MSG(ds.pos[j] == 0.0 && ds.neg[j] == 0.0 && ds.g[j] == 1.0, "reset: class %zu = %g %g %g", j,
                  ds.pos[j], ds.neg[j], ds.g[j]);

    efl_loss_destroy(loss);
    efl_ref_state_free(&rs);
    efl_ref_state_free(&ds);
    efl_ref_state_free(&ds2);
    free(x);
    free(grad);
    free(y);
    free(rgrad);
    tu_end();
}

int main(void)
{
    tu_env e;
    tu_env_init(&e);
    static const parity_case cases[] = {
        {"N=3000 C=37 mean, defaults", 3000, 37, EFL_REDUCTION_MEAN, 2.0f, 0.25f, 8.0f, 1.0f, 0, -1, 1},
        {"N=2500 C=80 sum, loss_weight 2.5, alpha < 0", 2500, 80, EFL_REDUCTION_SUM, 2.0f, -1.0f, 8.0f, 2.5f, 0, -1,
         2},
        {"N=700 C=1203 mean, s=4, zero-based labels", 700, 1203, EFL_REDUCTION_MEAN, 2.0f, 0.25f, 4.0f, 1.0f, 1, -1,
         3},
        {"N=1200 C=80 mean, gamma 1.5, alpha 0.5, loss_weight 0.5, ignore_index 255", 1200, 80,
         EFL_REDUCTION_MEAN, 1.5f, 0.5f, 8.0f, 0.5f, 0, 255, 4},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; ++k)
        run_case(&e, &cases[k]);
    run_host_api(&e);
    tu_env_free(&e);
    return tu_exit_code();
}
