/*
 * 10,000 accumulation steps from caller gradients (docs/semantics.md, "Where efl does better
 * than the reference": accumulators): the device's running totals and g against a float64
 * replay of the recursion, to 1e-6 relative, for float64 totals and for compensated float
 * pairs (EFL_ACCUMULATE_FLOAT_PAIRS, so both are tested on one device). The same sequence
 * replayed with float32 totals drifts beyond 1e-6: that is checked too, so this test could fail.
 *
 * The gradients are AMP-like: each step divides out a loss scale that grows from 1 to 2^12
 * over the run (as a real scale grows while training is stable), so late increments are 4096
 * times smaller than early ones, the regime where float32 totals lose them. Two steps carry an
 * Inf and a NaN: they must be skipped on the device, counted, and reported, and the replay
 * skips them too.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

static tu_env E;

enum { N = 48, C = 7, K = 16 };
/* 10,000 steps; 300 under EFL_TEST_SMALL (Oclgrind, where the full run takes nine minutes: it
 * checks the memory accesses there, not the precision) */
static int STEPS = 10000, INF_STEP = 3333, NAN_STEP = 7777;

static float grad_scale_of(int t) { return ldexpf(1.0f, t * 12 / STEPS); }

static void run(efl_accumulate acc, const char *name)
{
    tu_begin(name);
    /* K distinct gradients and label sets, uploaded once and cycled */
    static float G[K][N * C];
    static int32_t Y[K][N];
    tu_rng r = {0xACC0 + (uint64_t)acc};
    tu_label_opts o = tu_default_label_opts();
    o.fg_fraction = 0.3;
    for (int k = 0; k < K; ++k) {
        tu_make_labels(&r, Y[k], N, C, &o);
        for (int i = 0; i < N * C; ++i)
            G[k][i] = (float)((tu_uniform(&r) - 0.5) * 1e-2 * exp(4.0 * tu_normal(&r)));
    }
    Y[0][5] = 0; /* a valid (background) row: the Inf and NaN below go there */
    cl_mem bg[K + 2], by[K];
    for (int k = 0; k < K; ++k) {
        bg[k] = tu_buf(&E, sizeof G[k], G[k]);
        by[k] = tu_buf(&E, sizeof Y[k], Y[k]);
    }
    float bad[N * C];
    memcpy(bad, G[0], sizeof bad);
    bad[5 * C + 2] = INFINITY;
    bg[K] = tu_buf(&E, sizeof bad, bad);
    bad[5 * C + 2] = NAN;
    bg[K + 1] = tu_buf(&E, sizeof bad, bad);

    efl_loss_config cfg;
    efl_loss_config_init(&cfg, C);
    cfg.accumulate = acc;
    efl_loss *loss = tu_loss(&E, &cfg);
    efl_ref_params rp = tu_ref_params(&cfg);

    double pos[C] = {0}, neg[C] = {0};
    float pos32[C] = {0}, neg32[C] = {0};
    for (int t = 0; t < STEPS; ++t) {
        const int k = t % K;
        const float s = grad_scale_of(t);
        const cl_mem g = t == INF_STEP ? bg[K] : t == NAN_STEP ? bg[K + 1] : bg[k];
        const int refused = t == INF_STEP || t == NAN_STEP;
        const cl_mem y = refused ? by[0] : by[k];
        REQUIRE_OK(efl_enqueue_accumulate(loss, E.queue, EFL_DTYPE_FLOAT32, g, y, N, s, 0, NULL, NULL));
        if (refused) {
            CHECK_STATUS(efl_loss_query_status(loss, E.queue), EFL_ERROR_NONFINITE);
            continue;
        }
        /* the replay: P_j and N_j of docs/semantics.md over valid rows, in float64, and the same added in float32 */
        double P[C] = {0}, Nn[C] = {0};
        for (int i = 0; i < N; ++i) {
            int32_t col;
            if (efl_ref_label_column(&rp, Y[k][i], &col) != 1)
                continue;
            for (int j = 0; j < C; ++j)
                (j == col ? P : Nn)[j] += fabs((double)G[k][i * C + j]) / s;
        }
        for (int j = 0; j < C; ++j) {
            pos[j] += P[j];
            neg[j] += Nn[j];
            pos32[j] += (float)P[j];
            neg32[j] += (float)Nn[j];
        }
        if (t == 1)
            CHECK_STATUS(efl_loss_query_status(loss, E.queue), EFL_OK);
    }
    efl_ref_state ds;
    efl_ref_state_init(&ds, C);
    tu_read_state(&E, loss, &ds);
    double g[C], drift = 0.0;
    for (int j = 0; j < C; ++j) {
        g[j] = fmin(fmax(pos[j] / (neg[j] + 1e-10), 0.0), 1.0);
        drift = fmax(drift, fabs((double)pos32[j] - pos[j]) / pos[j]);
        drift = fmax(drift, fabs((double)neg32[j] - neg[j]) / neg[j]);
    }
    tu_cmp_f64("pos_grad", ds.pos, pos, C, 1e-6, 0.0);
    tu_cmp_f64("neg_grad", ds.neg, neg, C, 1e-6, 0.0);
    tu_cmp_f64("pos_neg", ds.g, g, C, 1e-6, 0.0);
    printf("  float32 totals on the same sequence drift %.2e relative from float64\n", drift);
    CHECK_MSG(drift > 1e-6 || tu_small(), "float32 totals drift only %.2e: this sequence could not tell the paths apart",
              drift);
    uint32_t skipped = 0;
    CHECK_STATUS(efl_loss_skipped_steps(loss, E.queue, &skipped), EFL_OK);
    CHECK_MSG(skipped == 2, "%u steps counted as skipped, 2 expected", skipped);

    efl_ref_state_free(&ds);
    efl_loss_destroy(loss);
    for (int k = 0; k < K; ++k)
        tu_release(bg[k]), tu_release(by[k]);
    tu_release(bg[K]), tu_release(bg[K + 1]);
    tu_end();
}

int main(void)
{
    if (tu_small())
        STEPS = 300, INF_STEP = 100, NAN_STEP = 233;
    tu_env_init(&E);
    if (E.has_fp64)
        run(EFL_ACCUMULATE_AUTO, "long run, float64 totals");
    else
        printf("SKIP long run, float64 totals: the device has no cl_khr_fp64 (AUTO is float pairs here)\n");
    run(EFL_ACCUMULATE_FLOAT_PAIRS, "long run, compensated float pairs");
    tu_env_free(&E);
    return tu_exit_code();
}
