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

/* ---------------------------------------------------------------- conversions on the device */
/* The step kernel converts vectors of 16-bit values with its own bit operations or with
 * vload_half4 / vstore_half4_rte (efl_common.h efl_load_x / efl_store_g at EFL_VW > 1; float16
 * both ways, EFL_F16_BITS=1 and 0). Each must give the bits of the built-in single-value
 * conversions (EFL_LOAD1 / EFL_STORE1: vload_half / vstore_half_rte, and bfloat16's scalar
 * rounding) for every value but a NaN's payload: all 65536 16-bit patterns, and floats of every
 * exponent with the mantissas around each rounding point, plus random ones (under
 * EFL_TEST_SMALL, the simulator, one width and every 61st float). */
static const char *conv_src =
    "__kernel void conv(__global const efl_store_t *h, __global float *h_new, __global float *h_ref,\n"
    "                   __global const float *f, __global efl_store_t *f_new, __global efl_store_t *f_ref,\n"
    "                   uint nh, uint nf)\n"
    "{\n"
    "    const uint i = get_global_id(0) * EFL_VW;\n"
    "    if (i < nh) {\n"
    "        efl_storeV(efl_load_x(h + i), h_new + i);\n"
    "        for (uint k = 0; k < EFL_VW; ++k)\n"
    "            h_ref[i + k] = EFL_LOAD1(h + i + k);\n"
    "    }\n"
    "    if (i < nf) {\n"
    "        efl_store_g(efl_loadV(f + i), f_new + i);\n"
    "        for (uint k = 0; k < EFL_VW; ++k)\n"
    "            EFL_STORE1(f[i + k], f_ref + i + k);\n"
    "    }\n"
    "}\n";

static uint32_t f2u(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float u2f(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* The float test patterns (a multiple of 16). */
static uint32_t *float_patterns(size_t *count)
{
    size_t cap = 1u << 21, n = 0;
    uint32_t *p = tu_xmalloc(cap * sizeof *p);
#define PUSH(v)                                                                                    \
    do {                                                                                           \
        if (n + 2 > cap)                                                                           \
            p = realloc(p, (cap *= 2) * sizeof *p);                                                \
        if (!p)                                                                                    \
            tu_fatal(__FILE__, __LINE__, "realloc");                                               \
        p[n++] = (uint32_t)(v) & 0x7FFFFFFFu;                                                      \
        p[n++] = (uint32_t)(v) | 0x80000000u;                                                      \
    } while (0)
    /* every exponent with mantissas at the edges of every bit */
    for (uint32_t e = 0; e < 256; ++e)
        for (int j = 0; j < 24; ++j) {
            const uint32_t m = (1u << j) - 1u, base = e << 23;
            PUSH(base | (m & 0x7FFFFF));
            PUSH(base | ((m + 1u) & 0x7FFFFF));
            PUSH(base | ((m + 2u) & 0x7FFFFF));
            PUSH(base | (~m & 0x7FFFFF));
            PUSH(base | ((~m + 1u) & 0x7FFFFF));
        }
    /* where float16 rounds (exponents 2^-26 .. 2^16): every kept mantissa with the dropped bits
     * just below, at and just above the half-way point, and zero, one and all ones */
    for (uint32_t e = 100; e <= 143; ++e) {
        const int drop = e >= 113 ? 13 : (int)(13 + 113 - e) > 24 ? 24 : (int)(13 + 113 - e);
        const uint32_t kept = drop >= 24 ? 1u : 1u << (24 - drop); /* with the implicit bit */
        for (uint32_t k = 0; k < kept; ++k) {
            const uint64_t full = ((uint64_t)k << drop) + (drop < 24 ? 0 : 0);
            const uint64_t half = 1ull << (drop - 1);
            const uint64_t offs[] = {0, 1, half - 1, half, half + 1, 2 * half - 1};
            for (size_t o = 0; o < sizeof offs / sizeof offs[0]; ++o) {
                const uint64_t sig = (full + offs[o]) | (1ull << 23); /* with the implicit bit */
                if (sig >> 24)
                    continue;
                PUSH((e << 23) | (uint32_t)(sig & 0x7FFFFF));
            }
        }
    }
    /* bfloat16's rounding points at every exponent */
    for (uint32_t e = 0; e < 256; e += 1)
        for (uint32_t k = 0; k < 128; k += 5)
            for (uint32_t lo = 0x7FFE; lo <= 0x8001; ++lo)
                PUSH((e << 23) | (k << 16) | lo);
    /* random bits */
    uint64_t r = 0x9E3779B97F4A7C15ull;
    for (int i = 0; i < 1 << 19; ++i) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        PUSH((uint32_t)(r >> 32));
    }
#undef PUSH
    if (tu_small()) { /* the simulator: every 61st pattern */
        size_t m = 0;
        for (size_t i = 0; i < n; i += 61)
            p[m++] = p[i];
        n = m;
    }
    while (n % 16)
        p[n++] = 0;
    *count = n;
    return p;
}

static void test_device_conversions(efl_dtype dtype, int vw, int bits, const uint32_t *fp, size_t nf)
{
    char name[96];
    snprintf(name, sizeof name, "%s vector conversions = built-in ones, EFL_VW=%d%s",
             dtype == EFL_DTYPE_FLOAT16 ? "float16" : "bfloat16", vw,
             dtype != EFL_DTYPE_FLOAT16 ? "" : bits ? " EFL_F16_BITS=1" : " EFL_F16_BITS=0");
    tu_begin(name);
    char opts[256];
    snprintf(opts, sizeof opts, "-cl-std=CL1.2 -DEFL_VW=%d -DEFL_DTYPE=%d -DEFL_F16_BITS=%d -DEFL_FP64=0 -DEFL_FMA=0 "
             "-DEFL_WGX=1 -DEFL_APPLY_WG=1", vw, dtype == EFL_DTYPE_FLOAT16 ? 1 : 2, bits);
    cl_program prog = NULL;
    cl_kernel k = tu_probe_kernel(&E, conv_src, "conv", opts, &prog);

    enum { NH = 1 << 16 };
    uint16_t *h = tu_xmalloc(NH * sizeof *h);
    for (uint32_t i = 0; i < NH; ++i)
        h[i] = (uint16_t)i;
    uint32_t *h_new = tu_xmalloc(NH * 4), *h_ref = tu_xmalloc(NH * 4);
    uint16_t *f_new = tu_xmalloc(nf * 2), *f_ref = tu_xmalloc(nf * 2);
    cl_mem bh = tu_buf(&E, NH * 2, h), bhn = tu_buf(&E, NH * 4, NULL), bhr = tu_buf(&E, NH * 4, NULL);
    cl_mem bf = tu_buf(&E, nf * 4, fp), bfn = tu_buf(&E, nf * 2, NULL), bfr = tu_buf(&E, nf * 2, NULL);
    cl_uint nh_arg = NH, nf_arg = (cl_uint)nf;
    cl_mem args[6] = {bh, bhn, bhr, bf, bfn, bfr};
    for (cl_uint i = 0; i < 6; ++i)
        REQUIRE_CL(clSetKernelArg(k, i, sizeof(cl_mem), &args[i]));
    REQUIRE_CL(clSetKernelArg(k, 6, sizeof nh_arg, &nh_arg));
    REQUIRE_CL(clSetKernelArg(k, 7, sizeof nf_arg, &nf_arg));
    size_t global = (nf > NH ? nf : NH) / (size_t)vw;
    REQUIRE_CL(clEnqueueNDRangeKernel(E.queue, k, 1, NULL, &global, NULL, 0, NULL, NULL));
    tu_read(&E, bhn, NH * 4, h_new);
    tu_read(&E, bhr, NH * 4, h_ref);
    tu_read(&E, bfn, nf * 2, f_new);
    tu_read(&E, bfr, nf * 2, f_ref);

    /* loads: every pattern, NaN included, bit for bit; and the built-in against this file's own
     * conversion (NaN: a NaN) */
    size_t bad = 0, bad_ref = 0, first = NH;
    for (uint32_t i = 0; i < NH; ++i) {
        if (h_new[i] != h_ref[i] && bad++ == 0)
            first = i;
        const float want = dtype == EFL_DTYPE_FLOAT16 ? tu_f16_to_f32(h[i]) : tu_bf16_to_f32(h[i]);
        bad_ref += isnan(want) ? !isnan(u2f(h_ref[i])) : f2u(want) != h_ref[i];
    }
    CHECK_MSG(bad == 0, "load: %zu of 65536 patterns differ from the built-in (first 0x%04x: 0x%08x, built-in 0x%08x)",
              bad, first, first < NH ? h_new[first] : 0u, first < NH ? h_ref[first] : 0u);
    CHECK_MSG(bad_ref == 0, "load: the built-in differs from the host conversion on %zu patterns", bad_ref);
    /* stores: every float bit for bit, except that a NaN need only give a NaN of its sign (the
     * built-ins differ between implementations there) */
    bad = 0, bad_ref = 0;
    size_t ffirst = nf, nan_other = 0;
    for (size_t i = 0; i < nf; ++i) {
        const float x = u2f(fp[i]);
        int ok = f_new[i] == f_ref[i];
        if (isnan(x) && dtype == EFL_DTYPE_FLOAT16) {
            nan_other += !ok;
            ok = (f_new[i] & 0x7FFF) > 0x7C00 && (f_ref[i] & 0x7FFF) > 0x7C00 && (f_new[i] ^ f_ref[i]) < 0x8000;
        }
        if (!ok && bad++ == 0)
            ffirst = i;
        if (!isnan(x))
            bad_ref += (dtype == EFL_DTYPE_FLOAT16 ? tu_f32_to_f16(x) : tu_f32_to_bf16(x)) != f_ref[i];
    }
    CHECK_MSG(bad == 0, "store: %zu of %zu floats differ from the built-in (first 0x%08x: 0x%04x, built-in 0x%04x)",
              bad, nf, ffirst < nf ? fp[ffirst] : 0u, ffirst < nf ? f_new[ffirst] : 0u,
              ffirst < nf ? f_ref[ffirst] : 0u);
    CHECK_MSG(bad_ref == 0, "store: the built-in differs from the host conversion on %zu floats", bad_ref);
    if (nan_other)
        printf("  (%zu NaN inputs: a NaN of another payload than the built-in's)\n", nan_other);
    tu_release(bh), tu_release(bhn), tu_release(bhr), tu_release(bf), tu_release(bfn), tu_release(bfr);
    clReleaseKernel(k);
    clReleaseProgram(prog);
    free(h), free(h_new), free(h_ref), free(f_new), free(f_ref);
    tu_end();
}

int main(void)
{
    tu_env_init(&E);
    test_conversions();
    size_t nf = 0;
    uint32_t *fp = float_patterns(&nf);
    for (int vw = tu_small() ? 8 : 4; vw <= (tu_small() ? 8 : 16); vw *= 2) {
        test_device_conversions(EFL_DTYPE_FLOAT16, vw, 1, fp, nf);
        test_device_conversions(EFL_DTYPE_FLOAT16, vw, 0, fp, nf);
        test_device_conversions(EFL_DTYPE_BFLOAT16, vw, 0, fp, nf);
    }
    free(fp);
    for (size_t k = 0; k < 2; ++k) {
        run_case(&STORAGES[k], 2000, 80, 0, 101 + k);
        run_case(&STORAGES[k], 500, 1203, 0, 202 + k);
        run_case(&STORAGES[k], 777, 37, 1, 303 + k);
    }
    tu_env_free(&E);
    return tu_exit_code();
}
