/*
 * float16 and bfloat16 storage of logits and gradients, against the float64 reference on the
 * same rounded inputs (the device computes in float32 from exactly those values):
 *   gradient: within 1 ulp of the storage type + 1e-6 absolute on 99.9% of the elements and
 *             within 2 ulp + 1e-6 everywhere (the stored value is the float32 gradient rounded
 *             to nearest, so half an ulp plus the float32 error is expected);
 *   loss: 1e-4 relative; state: as float32 steps on the same inputs (TU_STATE_RTOL_FEW), since
 *   the statistics use the float32 gradient before it is rounded to storage.
 * Through the device API and the host conveniences. The stored gradients are also compared with
 * a float32 step on the same rounded inputs, rounded by this file's own conversion: the
 * library's float16 and bfloat16 rounding must be round-to-nearest-even.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

static tu_env E;

typedef struct {
    efl_dtype dtype;
    const char *name;
    uint16_t (*to16)(float);
    float (*from16)(uint16_t);
    double (*ulp)(double);
} storage;

static const storage STORAGES[] = {
    {EFL_DTYPE_FLOAT16, "float16", tu_f32_to_f16, tu_f16_to_f32, tu_f16_ulp},
    {EFL_DTYPE_BFLOAT16, "bfloat16", tu_f32_to_bf16, tu_bf16_to_f32, tu_bf16_ulp},
};

static void run_case(const storage *s, size_t n, uint32_t C, int host_path, uint64_t seed)
{
    char name[128];
    snprintf(name, sizeof name, "%s N=%zu C=%u %s", s->name, n, C, host_path ? "host calls" : "device buffers");
    tu_begin(name);
    const size_t nc = n * C;
    float *x = malloc(nc * sizeof *x), *xr = malloc(nc * sizeof *xr), *g32 = malloc(nc * sizeof *g32);
    uint16_t *x16 = malloc(nc * sizeof *x16), *g16 = malloc(nc * sizeof *g16);
    int32_t *y = malloc(n * sizeof *y);
    double *rgrad = malloc(nc * sizeof *rgrad);
    if (!x || !xr || !g32 || !x16 || !g16 || !y || !rgrad)
        tu_fatal(__FILE__, __LINE__, "malloc");
    tu_rng r = {seed};
    tu_label_opts o = tu_default_label_opts();
    tu_make_logits(&r, x, nc);
    const size_t npos = tu_make_labels(&r, y, n, C, &o);
    const float norm = npos ? (float)npos : 1.0f;
    for (size_t i = 0; i < nc; ++i) {
        x16[i] = s->to16(x[i]);
        xr[i] = s->from16(x16[i]);
    }

    efl_loss_config cfg;
    efl_loss_config_init(&cfg, C);
    efl_loss *loss = tu_loss(&E, &cfg), *loss32 = tu_loss(&E, &cfg);
    efl_ref_params rp = tu_ref_params(&cfg);
    efl_ref_state rs, ds;
    efl_ref_state_init(&rs, C);
    efl_ref_state_init(&ds, C);

    for (int step = 0; step < 3; ++step) {
        float dloss = NAN;
        memset(g16, 0xA5, nc * sizeof *g16);
        if (host_path) {
            CHECK_STATUS(efl_loss_step_host_typed(loss, s->dtype, x16, y, n, norm, EFL_REDUCTION_MEAN, &dloss, g16),
                         EFL_OK);
        } else {
            cl_mem bx = tu_buf(&E, nc * 2, x16), by = tu_buf(&E, n * 4, y), bl = tu_buf(&E, 4, NULL);
            cl_mem bg = tu_buf(&E, nc * 2, NULL);
            CHECK_STATUS(efl_enqueue_step_typed(loss, E.queue, s->dtype, bx, by, n, norm, EFL_REDUCTION_MEAN, bl, bg, 0,
                                                NULL, NULL),
                         EFL_OK);
            CHECK_STATUS(efl_loss_query_status(loss, E.queue), EFL_OK);
            tu_read(&E, bl, 4, &dloss);
            tu_read(&E, bg, nc * 2, g16);
            tu_release(bx), tu_release(by), tu_release(bl), tu_release(bg);
        }
        /* the same step in float32 on the rounded inputs: the 16-bit gradient must be its RNE */
        float l32 = NAN;
        CHECK_STATUS(efl_loss_step_host(loss32, xr, y, n, norm, EFL_REDUCTION_MEAN, &l32, g32), EFL_OK);
        /* (two programs, so the float32 values may differ in the last bit now and then, which
         * can move a rounding by one step: allowed for 0.1%, never more than one step) */
        size_t not_rne = 0, far = 0;
        for (size_t i = 0; i < nc; ++i) {
            const int d = (int)g16[i] - (int)s->to16(g32[i]);
            not_rne += d != 0;
            far += d > 1 || d < -1;
        }
        CHECK_MSG(not_rne <= nc / 1000 && far == 0,
                  "step %d: %zu stored gradients (%zu by more than one step) are not the float32 gradient rounded "
                  "to nearest even",
                  step, not_rne, far);
        CHECK_MSG(fabsf(dloss - l32) <= 1e-6f * fabsf(l32), "step %d: loss %.9g differs from the float32 step's %.9g",
                  step, dloss, l32);

        efl_ref_result res;
        efl_ref_step(&rp, &rs, xr, y, n, norm, EFL_REF_MEAN, rgrad, &res);
        double maxg = tu_max_abs(rgrad, nc);
        size_t over1 = 0, over2 = 0, worst = 0;
        double worst_ex = -1.0;
        for (size_t i = 0; i < nc; ++i) {
            const double got = s->from16(g16[i]), ref = rgrad[i], u = s->ulp(ref), d = fabs(got - ref);
            over1 += d > u + 1e-6;
            over2 += d > 2.0 * u + 1e-6 || !isfinite(got);
            if (d - u > worst_ex) {
                worst_ex = d - u;
                worst = i;
            }
        }
        CHECK_MSG(over1 <= nc / 1000, "step %d: %zu of %zu gradients beyond 1 ulp + 1e-6 (worst [%zu]: %.6g vs %.6g)",
                  step, over1, nc, worst, s->from16(g16[worst]), rgrad[worst]);
        CHECK_MSG(over2 == 0, "step %d: %zu gradients beyond 2 ulp + 1e-6", step, over2);
        CHECK_MSG(maxg > 0.0, "step %d: the reference gradient is all zero", step);
        CHECK_MSG(fabs(dloss - res.loss) <= 1e-4 * fabs(res.loss), "step %d: loss %.9g vs reference %.9g", step, dloss,
                  res.loss);
        REQUIRE_OK(efl_loss_read_state_host(loss, ds.pos, ds.neg, ds.g));
        tu_cmp_f64("pos_grad", ds.pos, rs.pos, C, TU_STATE_RTOL_FEW, 1e-12 * tu_max_abs(rs.pos, C));
        tu_cmp_f64("neg_grad", ds.neg, rs.neg, C, TU_STATE_RTOL_FEW, 1e-12 * tu_max_abs(rs.neg, C));
        tu_cmp_f64("pos_neg", ds.g, rs.g, C, TU_STATE_RTOL_FEW, 1e-12);
    }
    /* forward in the 16-bit type: the loss of the same rounded inputs, state untouched */
    float fl = NAN, fl32 = NAN;
    CHECK_STATUS(efl_loss_forward_host_typed(loss, s->dtype, x16, y, n, norm, EFL_REDUCTION_MEAN, &fl), EFL_OK);
    CHECK_STATUS(efl_loss_forward_host(loss32, xr, y, n, norm, EFL_REDUCTION_MEAN, &fl32), EFL_OK);
    CHECK_MSG(fabsf(fl - fl32) <= 1e-6f * fabsf(fl32), "forward: %.9g vs float32 %.9g", fl, fl32);

    efl_loss_destroy(loss);
    efl_loss_destroy(loss32);
    efl_ref_state_free(&rs);
    efl_ref_state_free(&ds);
    free(x), free(xr), free(g32), free(x16), free(g16), free(y), free(rgrad);
    tu_end();
}

/* The conversions this file checks against must themselves be right. */
static void test_conversions(void)
{
    tu_begin("reference conversions");
    CHECK(tu_f32_to_f16(1.0f) == 0x3C00 && tu_f32_to_f16(-2.0f) == 0xC000 && tu_f32_to_f16(65504.0f) == 0x7BFF);
    CHECK(tu_f32_to_f16(65520.0f) == 0x7C00 && tu_f32_to_f16(0.0f) == 0 && tu_f32_to_f16(ldexpf(1, -24)) == 1);
    CHECK(tu_f32_to_f16(1.0f + ldexpf(1, -11)) == 0x3C00);     /* tie: to even */
    CHECK(tu_f32_to_f16(1.0f + 3 * ldexpf(1, -11)) == 0x3C02); /* tie: to even */
    CHECK(tu_f16_to_f32(0x3555) == 0.333251953125f);
    CHECK(tu_f32_to_bf16(1.0f) == 0x3F80 && tu_bf16_to_f32(0x3F80) == 1.0f);
    CHECK(tu_f32_to_bf16(1.0f + ldexpf(1, -8)) == 0x3F80);     /* tie: to even */
    CHECK(tu_f32_to_bf16(1.0f + 3 * ldexpf(1, -8)) == 0x3F82); /* tie: to even */
    for (int i = -30; i < 30; ++i) {
        const float v = ldexpf(1.37f, i);
        CHECK(fabs(tu_f16_to_f32(tu_f32_to_f16(v)) - v) <= 0.5 * tu_f16_ulp(v) || fabs(v) > 65504);
        CHECK(fabs(tu_bf16_to_f32(tu_f32_to_bf16(v)) - v) <= 0.5 * tu_bf16_ulp(v));
    }
    tu_end();
}

int main(void)
{
    tu_env_init(&E);
    test_conversions();
    for (size_t k = 0; k < 2; ++k) {
        run_case(&STORAGES[k], 2000, 80, 0, 101 + k);
        run_case(&STORAGES[k], 500, 1203, 0, 202 + k);
        run_case(&STORAGES[k], 777, 37, 1, 303 + k);
    }
    tu_env_free(&E);
    return tu_exit_code();
}
