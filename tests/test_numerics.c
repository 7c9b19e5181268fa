/*
 * Finite inputs never give NaN or Inf, and non-finite ones never reach the state:
 *   - a sweep of logits over [-1e4, 1e4] (0, +-1e-3 .. +-1e4 geometric, both signs, on
 *     positive and negative columns) for every gamma_b in {0.5, 1, 2, 5} and s in {0, 4, 8},
 *     with states whose g spreads gamma_j over [gamma_b, gamma_b + s]: loss and gradient
 *     finite everywhere and equal to float64 wherever float64 is finite (1e-5 relative plus
 *     1e-12 of the largest gradient);
 *   - a step with an Inf or a NaN logit in a valid row is refused: the state and the loss
 *     buffer stay as they were, efl_loss_query_status reports EFL_ERROR_NONFINITE and the
 *     skip is counted; the same value in an ignored row changes nothing and is accepted.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

static tu_env E;

static size_t sweep_values(float *v)
{
    size_t n = 0;
    v[n++] = 0.0f;
    for (double m = 1e-3; m <= 1.0001e4; m *= 1.25) {
        v[n++] = (float)m;
        v[n++] = (float)-m;
    }
    v[n++] = 1e4f;
    v[n++] = -1e4f;
    return n;
}

static void test_sweep(void)
{
    static const float gammas[] = {0.5f, 1.0f, 2.0f, 5.0f}, scales[] = {0.0f, 4.0f, 8.0f};
    float vals[256]; /* 2 x 73 geometric values and three more */
    const size_t nv = sweep_values(vals);
    enum { C = 5 };
    /* each row: one sweep value in every column; the label makes column 2 positive in half
     * the rows, background in the rest */
    const size_t n = 2 * nv;
    float *x = malloc(n * C * sizeof *x), *grad = malloc(n * C * sizeof *grad);
    int32_t *y = malloc(n * sizeof *y);
    double *rgrad = malloc(n * C * sizeof *rgrad);
    if (!x || !grad || !y || !rgrad)
        tu_fatal(__FILE__, __LINE__, "malloc");
    for (size_t i = 0; i < n; ++i) {
        for (int j = 0; j < C; ++j)
            x[i * C + j] = vals[i % nv];
        y[i] = i < nv ? 3 : 0; /* label 3 = column 2 */
    }
    for (size_t a = 0; a < 4; ++a)
        for (size_t b = 0; b < 3; ++b) {
            char name[96];
            snprintf(name, sizeof name, "logits over [-1e4, 1e4], gamma_b %g, s %g", gammas[a], scales[b]);
            tu_begin(name);
            efl_loss_config cfg;
            efl_loss_config_init(&cfg, C);
            cfg.gamma = gammas[a];
            cfg.scale_factor = scales[b];
            efl_loss *loss = tu_loss(&E, &cfg);
            efl_ref_params rp = tu_ref_params(&cfg);
            efl_ref_state rs;
            efl_ref_state_init(&rs, C);
            for (int j = 0; j < C; ++j) { /* g from 0 to 1: gamma_j over its whole range */
                rs.pos[j] = j;
                rs.neg[j] = 4.0;
                rs.g[j] = j / (double)(C - 1);
            }
            tu_write_state_canonical(&E, loss, &rs);
            float l = NAN;
            CHECK_STATUS(efl_loss_step_host(loss, x, y, n, 1.0f, EFL_REDUCTION_SUM, &l, grad), EFL_OK);
            efl_ref_result res;
            efl_ref_step(&rp, &rs, x, y, n, 1.0, EFL_REF_SUM, rgrad, &res);
            CHECK_MSG(isfinite(l) && tu_all_finite_f32(grad, n * C), "non-finite loss (%g) or gradient", l);
            /* where float64 is finite (it is, here: the stable forms) */
            if (isfinite(res.loss))
                CHECK_MSG(fabs(l - res.loss) <= 1e-5 * fabs(res.loss), "loss %.9g vs float64 %.9g", l, res.loss);
            tu_cmp_f32("grad", grad, rgrad, n * C, 1e-5, 1e-12 * tu_max_abs(rgrad, n * C));
            efl_ref_state ds;
            efl_ref_state_init(&ds, C);
            tu_read_state(&E, loss, &ds);
            tu_cmp_f64("pos_neg", ds.g, rs.g, C, TU_STATE_RTOL_FEW, 1e-12);
            efl_ref_state_free(&ds);
            efl_ref_state_free(&rs);
            efl_loss_destroy(loss);
            tu_end();
        }
    free(x), free(grad), free(y), free(rgrad);
}

static void test_nonfinite_logits(void)
{
    enum { N = 64, C = 11 };
    static const float bad_values[] = {INFINITY, -INFINITY, NAN};
    for (int v = 0; v < 3; ++v)
        for (int ignored = 0; ignored <= 1; ++ignored) {
            char name[96];
            snprintf(name, sizeof name, "logit %g in %s row", bad_values[v], ignored ? "an ignored" : "a valid");
            tu_begin(name);
            float x[N * C];
            int32_t y[N];
            tu_rng r = {77 + (uint64_t)v};
            tu_label_opts o = tu_default_label_opts();
            tu_make_logits(&r, x, N * C);
            tu_make_labels(&r, y, N, C, &o);
            y[9] = ignored ? -1 : 0;
            x[9 * C + 4] = bad_values[v];
            efl_loss_config cfg;
            efl_loss_config_init(&cfg, C);
            efl_loss *loss = tu_loss(&E, &cfg);
            efl_ref_state before, after;
            efl_ref_state_init(&before, C);
            efl_ref_state_init(&after, C);
            for (uint32_t j = 0; j < C; ++j) {
                before.pos[j] = 0.25 * j;
                before.neg[j] = 1.0 + j;
                before.g[j] = 0.5;
            }
            tu_write_state_canonical(&E, loss, &before);
            cl_mem bx = tu_buf(&E, sizeof x, x), by = tu_buf(&E, sizeof y, y), bl = tu_buf(&E, 4, NULL);
            cl_mem bg = tu_buf(&E, sizeof x, NULL);
            float sentinel, l;
            tu_read(&E, bl, 4, &sentinel);
            CHECK_STATUS(efl_enqueue_step(loss, E.queue, bx, by, N, 1.0f, EFL_REDUCTION_MEAN, bl, bg, 0, NULL, NULL),
                         EFL_OK);
            CHECK_STATUS(efl_loss_query_status(loss, E.queue), ignored ? EFL_OK : EFL_ERROR_NONFINITE);
            tu_read(&E, bl, 4, &l);
            tu_read_state(&E, loss, &after);
            uint32_t skipped = 99;
            CHECK_STATUS(efl_loss_skipped_steps(loss, E.queue, &skipped), EFL_OK);
            if (ignored) {
                CHECK_MSG(isfinite(l) && memcmp(&l, &sentinel, 4) != 0, "the loss was not written (%g)", l);
                CHECK_MSG(!tu_state_equal_bits(&before, &after), "the state did not move");
                CHECK_MSG(skipped == 0, "%u skipped", skipped);
            } else {
                CHECK_MSG(memcmp(&l, &sentinel, 4) == 0, "the loss buffer changed");
                CHECK_MSG(tu_state_equal_bits(&before, &after), "the state changed");
                CHECK_MSG(skipped == 1, "%u skipped, 1 expected", skipped);
                /* forward reports it too, and host calls return it */
                CHECK_STATUS(efl_enqueue_forward(loss, E.queue, bx, by, N, 1.0f, EFL_REDUCTION_MEAN, bl, 0, NULL, NULL),
                             EFL_OK);
                CHECK_STATUS(efl_loss_query_status(loss, E.queue), EFL_ERROR_NONFINITE);
                float hl = -7.0f;
                CHECK_STATUS(efl_loss_step_host(loss, x, y, N, 1.0f, EFL_REDUCTION_MEAN, &hl, NULL),
                             EFL_ERROR_NONFINITE);
                CHECK(hl == -7.0f);
            }
            tu_release(bx), tu_release(by), tu_release(bl), tu_release(bg);
            efl_ref_state_free(&before);
            efl_ref_state_free(&after);
            efl_loss_destroy(loss);
            tu_end();
        }
}

int main(void)
{
    tu_env_init(&E);
    test_sweep();
    test_nonfinite_logits();
    tu_env_free(&E);
    return tu_exit_code();
}
