/*
 * The loss families (docs/semantics.md "Related modes"), EFL_REDUCTION_NONE, a normalizer read on the device,
 * and efl_enqueue_batch's checks, each against the float64 reference (efl_ref.c, written from
 * docs/semantics.md) over several steps in which the state evolves:
 *  - EQLv2: weighted BCE, state from g = 100, statistics |sigmoid(x) - t| * w unscaled,
 *    g = pos / (neg + 1e-10) unclamped; loss (mean over the rows, and sum), gradient, state;
 *  - focal loss: EFL with s = 0, no state (the state calls are refused), no drift;
 *  - EFL_REDUCTION_NONE through efl_enqueue_step and efl_enqueue_batch: the elements, 0 on
 *    ignored rows, the gradient and state of EFL_REDUCTION_SUM;
 *  - normalizer_buffer: same as the float normalizer; 0, -1, NaN, Inf refuse the step on the
 *    device (INVALID_NORMALIZER, nothing written, skip counted);
 *  - invalid efl_batch fields: the documented status, nothing enqueued.
 * Tolerances as test_parity.c (test_util.h): loss and gradient 1e-5 relative, state 1e-6
 * (2e-6 where a class sums few elements).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

static tu_env E;

static void state_alloc(efl_ref_state *s, uint32_t C)
{
    if (!efl_ref_state_init(s, C))
        tu_fatal(__FILE__, __LINE__, "malloc");
}

/* Random detector-like inputs; returns the number of positive rows. */
static size_t make_inputs(tu_rng *r, const efl_loss_config *cfg, float *x, int32_t *y, size_t n, double fg,
                          double ignore)
{
    tu_label_opts o = tu_default_label_opts();
    o.fg_fraction = fg;
    o.ignore_fraction = ignore;
    o.zero_based = cfg->labels == EFL_LABELS_ZERO_BASED;
    o.ignore_index = cfg->ignore_index;
    tu_make_logits(r, x, n * cfg->num_classes);
    return tu_make_labels(r, y, n, cfg->num_classes, &o);
}

/* efl_enqueue_batch in the rows layout. */
static efl_status rows_batch(efl_loss *L, efl_op op, cl_mem x, cl_mem y, size_t n, efl_reduction red, float norm,
                             cl_mem normbuf, cl_mem loss, cl_mem grad, cl_mem elems)
{
    efl_batch b = tu_rows_batch(n, x, y, grad, loss, norm);
    b.loss_elems[0] = elems;
    b.reduction = red;
    b.normalizer_buffer = normbuf;
    return efl_enqueue_batch(L, E.queue, op, &b, 0, NULL, NULL);
}

static uint32_t skipped(efl_loss *L)
{
    uint32_t c = 0xFFFFFFFFu;
    CHECK_STATUS(efl_loss_skipped_steps(L, E.queue, &c), EFL_OK);
    return c;
}

/* ------------------------------------------------------------------ EQLv2 */
static void test_config_defaults(void)
{
    tu_begin("efl_loss_config_init_mode defaults");
    efl_loss_config c;
    efl_loss_config_init(&c, 37);
    CHECK(c.mode == EFL_MODE_EFL && c.scale_factor == 8.0f && c.gamma == 2.0f);
    efl_loss_config_init_mode(&c, 37, EFL_MODE_EFL);
    CHECK(c.mode == EFL_MODE_EFL && c.scale_factor == 8.0f && c.gamma == 2.0f && c.alpha == 0.25f);
    efl_loss_config_init_mode(&c, 37, EFL_MODE_FOCAL);
    CHECK(c.mode == EFL_MODE_FOCAL && c.scale_factor == 0.0f && c.gamma == 2.0f && c.alpha == 0.25f &&
          c.num_classes == 37);
    efl_loss_config_init_mode(&c, 37, EFL_MODE_EQLV2);
    CHECK(c.mode == EFL_MODE_EQLV2 && c.gamma == 12.0f && c.alpha == 4.0f && c.mu == 0.8f && c.loss_weight == 1.0f &&
          c.num_classes == 37);
    /* a mode outside the enum: refused at creation */
    efl_loss_config_init(&c, 37);
    c.mode = (efl_mode)3;
    efl_loss *L = NULL;
    efl_status st = efl_loss_create(E.ctx, &c, &L);
    CHECK_STATUS(st, EFL_ERROR_INVALID_MODE);
    if (st == EFL_OK)
        efl_loss_destroy(L);
    c.mode = (efl_mode)-1;
    L = NULL;
    st = efl_loss_create(E.ctx, &c, &L);
    CHECK_STATUS(st, EFL_ERROR_INVALID_MODE);
    CHECK(L == NULL);
    if (st == EFL_OK)
        efl_loss_destroy(L);
    tu_end();
}

typedef struct {
    const char *name;
    int zero_based;
    efl_reduction red;
    float loss_weight, gamma, mu, alpha;
    int32_t ignore_index;
    uint64_t seed;
} eqlv2_case;

static void test_eqlv2(const eqlv2_case *ec)
{
    tu_begin(ec->name);
    const uint32_t C = 40;
    const size_t n = tu_rows(300), nc = n * C;
    efl_loss_config cfg;
    efl_loss_config_init_mode(&cfg, C, EFL_MODE_EQLV2);
    cfg.labels = ec->zero_based ? EFL_LABELS_ZERO_BASED : EFL_LABELS_REFERENCE;
    cfg.ignore_index = ec->ignore_index;
    cfg.loss_weight = ec->loss_weight;
    cfg.gamma = ec->gamma;
    cfg.mu = ec->mu;
    cfg.alpha = ec->alpha;
    efl_loss *L = tu_loss(&E, &cfg);
    efl_ref_params rp = tu_ref_params(&cfg);
    efl_loss_config got;
    CHECK_STATUS(efl_loss_get_config(L, &got), EFL_OK);
    CHECK(got.mode == EFL_MODE_EQLV2 && got.mu == ec->mu && got.gamma == ec->gamma && got.alpha == ec->alpha);

    float *x = tu_xmalloc(nc * sizeof *x), *grad = tu_xmalloc(nc * sizeof *grad);
    int32_t *y = tu_xmalloc(n * sizeof *y);
    double *rgrad = tu_xmalloc(nc * sizeof *rgrad);
    efl_ref_state rs, ds, before;
    if (!efl_ref_state_init_mode(&rs, C, EFL_REF_MODE_EQLV2))
        tu_fatal(__FILE__, __LINE__, "malloc");
    state_alloc(&ds, C);
    state_alloc(&before, C);
    cl_mem bx = tu_buf(&E, nc * 4, NULL), by = tu_buf(&E, n * 4, NULL), bl = tu_buf(&E, 4, NULL),
           bg = tu_buf(&E, nc * 4, NULL);

    /* the initial state: 0, 0, 100 */
    tu_read_state(&E, L, &ds);
    CHECK_MSG(tu_state_equal_bits(&ds, &rs), "initial EQLv2 state is not pos = neg = 0, pos_neg = 100 (g[0] = %g)",
              ds.g[0]);

    tu_rng rng = {ec->seed};
    int ok = 1;
    for (int step = 0; step < tu_steps(4) && ok; ++step) {
        make_inputs(&rng, &cfg, x, y, n, 0.15, 0.05);
        /* the reference's "mean" divides by the number of rows */
        const float norm = ec->red == EFL_REDUCTION_MEAN ? (float)n : 1.0f;
        tu_write(&E, bx, nc * 4, x);
        tu_write(&E, by, n * 4, y);
        tu_read_state(&E, L, &before);

        float floss = NAN, sloss = NAN;
        efl_ref_result fres, res;
        tu_fill(&E, bl, 4, TU_SENTINEL);
        ok &= CHECK_STATUS(efl_enqueue_forward(L, E.queue, bx, by, n, norm, ec->red, bl, 0, NULL, NULL), EFL_OK);
        ok &= CHECK_STATUS(efl_loss_query_status(L, E.queue), EFL_OK);
        tu_read(&E, bl, 4, &floss);
        tu_read_state(&E, L, &ds);
        ok &= CHECK_MSG(tu_state_equal_bits(&ds, &before), "step %d: forward changed the state", step);
        efl_ref_forward_backward_mode(&rp, rs.g, x, y, n, norm, (efl_ref_reduction)ec->red, NULL, NULL, NULL, NULL,
                                      &fres);

        tu_fill(&E, bl, 4, TU_SENTINEL);
        tu_fill(&E, bg, nc * 4, TU_SENTINEL);
        ok &= CHECK_STATUS(efl_enqueue_step(L, E.queue, bx, by, n, norm, ec->red, bl, bg, 0, NULL, NULL), EFL_OK);
        ok &= CHECK_STATUS(efl_loss_query_status(L, E.queue), EFL_OK);
        tu_read(&E, bl, 4, &sloss);
        tu_read(&E, bg, nc * 4, grad);
        tu_read_state(&E, L, &ds);
        if (efl_ref_step_mode(&rp, &rs, x, y, n, norm, (efl_ref_reduction)ec->red, rgrad, NULL, &res))
            tu_fatal(__FILE__, __LINE__, "generated an invalid label");
        ok &= CHECK(res.positives > 0 && res.loss > 0.0 && tu_count_nonzero(rgrad, nc) > nc / 2);

        ok &= tu_cmp_loss(floss, fres.loss, "step %d forward loss", step);
        ok &= tu_cmp_loss(sloss, res.loss, "step %d step loss", step);
        ok &= tu_cmp_grad(grad, rgrad, nc, "step %d grad", step);
        ok &= tu_cmp_state(&ds, &rs, TU_STATE_RTOL_FEW, TU_STATE_RTOL, "step %d", step);
    }
    /* The weights must really have moved away from 1 (or the comparisons proved little): some
     * class ends with neg_w well below 1, and EQLv2's g is not clamped to 1. */
    double gmin = INFINITY, gmax = 0.0;
    for (uint32_t j = 0; j < C; ++j) {
        gmin = fmin(gmin, rs.g[j]);
        gmax = fmax(gmax, rs.g[j]);
    }
    CHECK_MSG(gmin < ec->mu - 0.5, "reference g never moved far below mu (min %g)", gmin);
    CHECK_MSG(gmax > 0.0, "reference g is 0 everywhere");

    /* A written state (g above 1 allowed in EQLv2) and a step from it. */
    for (uint32_t j = 0; j < C; ++j) {
        rs.neg[j] = 0.5 + 0.1 * j;
        rs.pos[j] = rs.neg[j] * 3.0 * j / (C - 1);
        rs.g[j] = rs.pos[j] / (rs.neg[j] + 1e-10);
    }
    tu_write_state_canonical(&E, L, &rs);
    make_inputs(&rng, &cfg, x, y, n, 0.15, 0.05);
    tu_write(&E, bx, nc * 4, x);
    tu_write(&E, by, n * 4, y);
    {
        float sloss = NAN;
        efl_ref_result res;
        const float norm = ec->red == EFL_REDUCTION_MEAN ? (float)n : 1.0f;
        CHECK_STATUS(efl_enqueue_step(L, E.queue, bx, by, n, norm, ec->red, bl, bg, 0, NULL, NULL), EFL_OK);
        CHECK_STATUS(efl_loss_query_status(L, E.queue), EFL_OK);
        tu_read(&E, bl, 4, &sloss);
        tu_read(&E, bg, nc * 4, grad);
        tu_read_state(&E, L, &ds);
        efl_ref_step_mode(&rp, &rs, x, y, n, norm, (efl_ref_reduction)ec->red, rgrad, NULL, &res);
        tu_cmp_loss(sloss, res.loss, "after write_state: loss");
        tu_cmp_grad(grad, rgrad, nc, "after write_state: grad");
        tu_cmp_state(&ds, &rs, TU_STATE_RTOL_FEW, TU_STATE_RTOL, "after write_state");
    }

    /* reset: back to 0, 0, 100 */
    CHECK_STATUS(efl_loss_reset_state(L, E.queue), EFL_OK);
    tu_read_state(&E, L, &ds);
    for (uint32_t j = 0; j < C; ++j)
        if (!CHECK_MSG(ds.pos[j] == 0.0 && ds.neg[j] == 0.0 && ds.g[j] == 100.0, "reset: class %u = %g %g %g", j,
                       ds.pos[j], ds.neg[j], ds.g[j]))
            break;
    CHECK_STATUS(efl_loss_reset_state_host(L), EFL_OK);
    for (uint32_t j = 0; j < C; ++j)
        ds.g[j] = NAN;
    CHECK_STATUS(efl_loss_read_state_host(L, ds.pos, ds.neg, ds.g), EFL_OK);
    CHECK_MSG(ds.g[0] == 100.0 && ds.g[C - 1] == 100.0, "reset_state_host: g = %g", ds.g[0]);

    tu_release(bx), tu_release(by), tu_release(bl), tu_release(bg);
    efl_loss_destroy(L);
    efl_ref_state_free(&rs), efl_ref_state_free(&ds), efl_ref_state_free(&before);
    free(x), free(grad), free(y), free(rgrad);
    tu_end();
}

/* ------------------------------------------------------------------ focal */
static void test_focal(int variant)
{
    char name[128];
    snprintf(name, sizeof name, "focal mode %s", variant == 0 ? "(defaults, mean)" : "(gamma 1.5, no alpha, lw 2, sum)");
    tu_begin(name);
    const uint32_t C = 37;
    const size_t n = tu_rows(400), nc = n * C;
    efl_loss_config cf;
    efl_loss_config_init_mode(&cf, C, EFL_MODE_FOCAL);
    efl_reduction red = EFL_REDUCTION_MEAN;
    if (variant == 1) {
        cf.gamma = 1.5f;
        cf.alpha = -1.0f;
        cf.loss_weight = 2.0f;
        red = EFL_REDUCTION_SUM;
    }
    efl_loss_config ce = cf; /* EFL with s = 0: the same numbers, with a state that moves */
    ce.mode = EFL_MODE_EFL;
    ce.scale_factor = 0.0f;
    efl_loss *Lf = tu_loss(&E, &cf), *Le = tu_loss(&E, &ce);
    efl_ref_params rp = tu_ref_params(&cf);
    efl_ref_state rs, rs0;
    if (!efl_ref_state_init_mode(&rs, C, EFL_REF_MODE_FOCAL) || !efl_ref_state_init_mode(&rs0, C, EFL_REF_MODE_FOCAL))
        tu_fatal(__FILE__, __LINE__, "malloc");

    float *x = tu_xmalloc(nc * sizeof *x), *gf = tu_xmalloc(nc * sizeof *gf), *ge = tu_xmalloc(nc * sizeof *ge),
          *g0 = tu_xmalloc(nc * sizeof *g0);
    int32_t *y = tu_xmalloc(n * sizeof *y);
    double *rgrad = tu_xmalloc(nc * sizeof *rgrad);
    cl_mem bx = tu_buf(&E, nc * 4, NULL), by = tu_buf(&E, n * 4, NULL), bl = tu_buf(&E, 4, NULL),
           bg = tu_buf(&E, nc * 4, NULL), bl2 = tu_buf(&E, 4, NULL), bg2 = tu_buf(&E, nc * 4, NULL);
    tu_rng rng = {77 + variant};
    float l0 = NAN, norm = 1.0f;
    size_t bitwise_diff = 0;
    for (int step = 0; step < 3; ++step) {
        size_t np = make_inputs(&rng, &cf, x, y, n, 0.1, 0.03);
        norm = np ? (float)np : 1.0f;
        tu_write(&E, bx, nc * 4, x);
        tu_write(&E, by, n * 4, y);
        float lf = NAN, le = NAN, ff = NAN;
        CHECK_STATUS(efl_enqueue_forward(Lf, E.queue, bx, by, n, norm, red, bl, 0, NULL, NULL), EFL_OK);
        CHECK_STATUS(efl_loss_query_status(Lf, E.queue), EFL_OK);
        tu_read(&E, bl, 4, &ff);
        CHECK_STATUS(efl_enqueue_step(Lf, E.queue, bx, by, n, norm, red, bl, bg, 0, NULL, NULL), EFL_OK);
        CHECK_STATUS(efl_enqueue_step(Le, E.queue, bx, by, n, norm, red, bl2, bg2, 0, NULL, NULL), EFL_OK);
        CHECK_STATUS(efl_loss_query_status(Lf, E.queue), EFL_OK);
        CHECK_STATUS(efl_loss_query_status(Le, E.queue), EFL_OK);
        tu_read(&E, bl, 4, &lf);
        tu_read(&E, bg, nc * 4, gf);
        tu_read(&E, bl2, 4, &le);
        tu_read(&E, bg2, nc * 4, ge);
        efl_ref_result res;
        efl_ref_step_mode(&rp, &rs, x, y, n, norm, (efl_ref_reduction)red, rgrad, NULL, &res);
        CHECK(res.loss > 0.0 && tu_count_nonzero(rgrad, nc) > nc / 2);
        CHECK_MSG(tu_state_equal_bits(&rs, &rs0), "the reference's focal state moved");
        char w[96];
        tu_cmp_loss(lf, res.loss, "step %d focal loss", step);
        tu_cmp_loss(ff, res.loss, "step %d focal forward loss", step);
        tu_cmp_grad(gf, rgrad, nc, "step %d focal grad", step);
        /* EFL with s = 0: gamma_j = gamma_b + 0 (1 - g) whatever g is */
        double dle = le;
        snprintf(w, sizeof w, "step %d focal vs EFL s=0 loss", step);
        tu_cmp_f32(w, &lf, &dle, 1, 1e-6, 0.0);
        double *dge = rgrad; /* reuse */
        for (size_t k = 0; k < nc; ++k) {
            dge[k] = ge[k];
            bitwise_diff += memcmp(&gf[k], &ge[k], 4) != 0;
        }
        snprintf(w, sizeof w, "step %d focal vs EFL s=0 grad", step);
        tu_cmp_f32(w, gf, dge, nc, 1e-6, 1e-12 * tu_max_abs(dge, nc));
        if (step == 2) {
            l0 = lf;
            memcpy(g0, gf, nc * sizeof *gf);
        }
    }
    if (bitwise_diff)
        printf("  note: %zu gradient element(s) of focal mode differ bitwise from EFL with s = 0 (within 1e-6)\n",
               bitwise_diff);

    /* No state, so no drift: the last inputs again give bitwise the same loss and gradient. */
    for (int rep = 0; rep < 3; ++rep) {
        float l = NAN;
        tu_fill(&E, bg, nc * 4, TU_SENTINEL);
        CHECK_STATUS(efl_enqueue_step(Lf, E.queue, bx, by, n, norm, red, bl, bg, 0, NULL, NULL), EFL_OK);
        CHECK_STATUS(efl_loss_query_status(Lf, E.queue), EFL_OK);
        tu_read(&E, bl, 4, &l);
        tu_read(&E, bg, nc * 4, gf);
        CHECK_MSG(memcmp(&l, &l0, 4) == 0, "repeat %d: focal loss drifted: %.9g vs %.9g", rep, l, l0);
        tu_bits_equal("focal grad on repeated inputs", gf, g0, nc, 4);
    }

    /* The state calls have nothing to act on. */
    double *tmp = tu_xmalloc(3 * C * sizeof *tmp);
    for (size_t k = 0; k < 3 * C; ++k)
        tmp[k] = k < C ? 0.0 : (k < 2 * C ? 1.0 : 0.5);
    CHECK_STATUS(efl_loss_read_state(Lf, E.queue, tmp, tmp + C, tmp + 2 * C), EFL_ERROR_INVALID_MODE);
    CHECK_STATUS(efl_loss_write_state(Lf, E.queue, tmp, tmp + C, tmp + 2 * C), EFL_ERROR_INVALID_MODE);
    CHECK_STATUS(efl_loss_reset_state(Lf, E.queue), EFL_ERROR_INVALID_MODE);
    CHECK_STATUS(efl_enqueue_accumulate(Lf, E.queue, EFL_DTYPE_FLOAT32, bg, by, n, 1.0f, 0, NULL, NULL),
                 EFL_ERROR_INVALID_MODE);
    {
        efl_batch b;
        efl_batch_init(&b);
        b.rows = n;
        b.input[0] = bg;
        b.labels = by;
        CHECK_STATUS(efl_enqueue_batch(Lf, E.queue, EFL_OP_ACCUMULATE, &b, 0, NULL, NULL), EFL_ERROR_INVALID_MODE);
    }
    CHECK_STATUS(efl_loss_read_state_host(Lf, tmp, tmp + C, tmp + 2 * C), EFL_ERROR_INVALID_MODE);
    CHECK_STATUS(efl_loss_write_state_host(Lf, tmp, tmp + C, tmp + 2 * C), EFL_ERROR_INVALID_MODE);
    CHECK_STATUS(efl_loss_reset_state_host(Lf), EFL_ERROR_INVALID_MODE);
    CHECK_STATUS(efl_loss_accumulate_host(Lf, EFL_DTYPE_FLOAT32, g0, y, n, 1.0f), EFL_ERROR_INVALID_MODE);
    size_t sz = 0;
    CHECK_STATUS(efl_loss_export_checkpoint(Lf, E.queue, NULL, &sz), EFL_ERROR_INVALID_MODE);
    free(tmp);
    uint32_t sk = skipped(Lf);
    CHECK_MSG(sk == 0, "focal loss: %u steps counted as skipped", sk);

    /* ...and none of them changed the numbers */
    {
        float l = NAN;
        CHECK_STATUS(efl_enqueue_step(Lf, E.queue, bx, by, n, norm, red, bl, bg, 0, NULL, NULL), EFL_OK);
        CHECK_STATUS(efl_loss_query_status(Lf, E.queue), EFL_OK);
        tu_read(&E, bl, 4, &l);
        tu_read(&E, bg, nc * 4, gf);
        CHECK_MSG(memcmp(&l, &l0, 4) == 0, "after the refused state calls: loss %.9g vs %.9g", l, l0);
        tu_bits_equal("focal grad after the refused state calls", gf, g0, nc, 4);
    }

    /* a label outside the convention is still refused on the device */
    {
        int32_t keep = y[n / 2];
        y[n / 2] = (int32_t)C + 5;
        tu_write(&E, by, n * 4, y);
        tu_fill(&E, bl, 4, TU_SENTINEL);
        CHECK_STATUS(efl_enqueue_step(Lf, E.queue, bx, by, n, norm, red, bl, bg, 0, NULL, NULL), EFL_OK);
        CHECK_STATUS(efl_loss_query_status(Lf, E.queue), EFL_ERROR_INVALID_LABEL);
        uint32_t l;
        tu_read(&E, bl, 4, &l);
        CHECK_MSG(l == 0xA5A5A5A5u, "refused focal step wrote the loss (0x%08x)", l);
        uint32_t sk1 = skipped(Lf);
        CHECK_MSG(sk1 == 1, "refused focal step not counted: efl_loss_skipped_steps = %u, expected 1", sk1);
        y[n / 2] = keep;
    }

    tu_release(bx), tu_release(by), tu_release(bl), tu_release(bg), tu_release(bl2), tu_release(bg2);
    efl_loss_destroy(Lf);
    efl_loss_destroy(Le);
    efl_ref_state_free(&rs), efl_ref_state_free(&rs0);
    free(x), free(gf), free(ge), free(g0), free(y), free(rgrad);
    tu_end();
}

/* ------------------------------------------------------------------ NONE */
static void test_none(efl_mode mode)
{
    char name[96];
    snprintf(name, sizeof name, "EFL_REDUCTION_NONE (%s)", mode == EFL_MODE_EQLV2 ? "EQLv2" : "EFL");
    tu_begin(name);
    const uint32_t C = 37;
    const size_t n = tu_rows(300), nc = n * C;
    efl_loss_config cfg;
    efl_loss_config_init_mode(&cfg, C, mode);
    cfg.loss_weight = 1.5f;
    efl_loss *Ls = tu_loss(&E, &cfg), *Lb = tu_loss(&E, &cfg), *Lsum = tu_loss(&E, &cfg);
    efl_ref_params rp = tu_ref_params(&cfg);
    efl_ref_state rs, d1, d2, d3;
    if (!efl_ref_state_init_mode(&rs, C, (efl_ref_mode)mode))
        tu_fatal(__FILE__, __LINE__, "malloc");
    state_alloc(&d1, C), state_alloc(&d2, C), state_alloc(&d3, C);

    float *x = tu_xmalloc(nc * 4), *es = tu_xmalloc(nc * 4), *eb = tu_xmalloc(nc * 4), *ef = tu_xmalloc(nc * 4),
          *gs = tu_xmalloc(nc * 4), *gb = tu_xmalloc(nc * 4), *gsum = tu_xmalloc(nc * 4);
    int32_t *y = tu_xmalloc(n * 4);
    double *rgrad = tu_xmalloc(nc * 8), *relems = tu_xmalloc(nc * 8), *rsgrad = tu_xmalloc(nc * 8);
    cl_mem bx = tu_buf(&E, nc * 4, NULL), by = tu_buf(&E, n * 4, NULL);
    cl_mem bes = tu_buf(&E, nc * 4, NULL), bgs = tu_buf(&E, nc * 4, NULL); /* efl_enqueue_step NONE */
    cl_mem beb = tu_buf(&E, nc * 4, NULL), bgb = tu_buf(&E, nc * 4, NULL), bef = tu_buf(&E, nc * 4, NULL);
    cl_mem bl = tu_buf(&E, 4, NULL), bgsum = tu_buf(&E, nc * 4, NULL), bl1 = tu_buf(&E, 4, NULL);
    tu_rng rng = {500 + mode};
    int ok = 1;
    for (int step = 0; step < tu_steps(3) && ok; ++step) {
        make_inputs(&rng, &cfg, x, y, n, 0.15, 0.05);
        tu_write(&E, bx, nc * 4, x);
        tu_write(&E, by, n * 4, y);
        tu_fill(&E, bes, nc * 4, TU_SENTINEL);
        tu_fill(&E, beb, nc * 4, TU_SENTINEL);
        tu_fill(&E, bef, nc * 4, TU_SENTINEL);
        tu_fill(&E, bl1, 4, TU_SENTINEL);
        /* forward through the batch (state untouched), then the same step three ways */
        ok &= CHECK_STATUS(rows_batch(Lb, EFL_OP_FORWARD, bx, by, n, EFL_REDUCTION_NONE, 1.0f, NULL, NULL, NULL, bef),
                           EFL_OK);
        ok &= CHECK_STATUS(efl_enqueue_step(Ls, E.queue, bx, by, n, 1.0f, EFL_REDUCTION_NONE, bes, bgs, 0, NULL, NULL),
                           EFL_OK);
        /* batch.loss is unused by NONE: given one, it stays as it was */
        ok &= CHECK_STATUS(rows_batch(Lb, EFL_OP_STEP, bx, by, n, EFL_REDUCTION_NONE, 1.0f, NULL, bl1, bgb, beb), EFL_OK);
        ok &= CHECK_STATUS(efl_enqueue_step(Lsum, E.queue, bx, by, n, 1.0f, EFL_REDUCTION_SUM, bl, bgsum, 0, NULL, NULL),
                           EFL_OK);
        ok &= CHECK_STATUS(efl_loss_query_status(Ls, E.queue), EFL_OK);
        ok &= CHECK_STATUS(efl_loss_query_status(Lb, E.queue), EFL_OK);
        ok &= CHECK_STATUS(efl_loss_query_status(Lsum, E.queue), EFL_OK);
        float lsum = NAN;
        uint32_t l1;
        tu_read(&E, bes, nc * 4, es);
        tu_read(&E, beb, nc * 4, eb);
        tu_read(&E, bef, nc * 4, ef);
        tu_read(&E, bgs, nc * 4, gs);
        tu_read(&E, bgb, nc * 4, gb);
        tu_read(&E, bgsum, nc * 4, gsum);
        tu_read(&E, bl, 4, &lsum);
        tu_read(&E, bl1, 4, &l1);
        tu_read_state(&E, Ls, &d1);
        tu_read_state(&E, Lb, &d2);
        tu_read_state(&E, Lsum, &d3);
        CHECK_MSG(l1 == 0xA5A5A5A5u, "step %d: NONE wrote batch.loss (0x%08x)", step, l1);

        efl_ref_state rs_sum;
        if (!efl_ref_state_init(&rs_sum, C))
            tu_fatal(__FILE__, __LINE__, "malloc");
        efl_ref_state_copy(&rs_sum, &rs);
        efl_ref_result res, res_sum;
        efl_ref_step_mode(&rp, &rs, x, y, n, 1.0, EFL_REF_NONE, rgrad, relems, &res);
        efl_ref_step_mode(&rp, &rs_sum, x, y, n, 1.0, EFL_REF_SUM, rsgrad, NULL, &res_sum);
        ok &= CHECK(res.positives > 0 && tu_count_nonzero(relems, nc) > nc / 2);
        /* the reference itself: NONE's gradient and update are SUM's */
        ok &= CHECK(memcmp(rgrad, rsgrad, nc * 8) == 0 && tu_state_equal_bits(&rs, &rs_sum) &&
                    fabs(res.loss - res_sum.loss) <= 1e-12 * res_sum.loss);
        efl_ref_state_free(&rs_sum);

        char w[96];
        const double atol_e = TU_GRAD_ATOL_REL * tu_max_abs(relems, nc);
        snprintf(w, sizeof w, "step %d elements (batch)", step);
        ok &= tu_cmp_f32(w, eb, relems, nc, TU_LOSS_RTOL, atol_e);
        snprintf(w, sizeof w, "step %d elements (efl_enqueue_step)", step);
        ok &= tu_cmp_f32(w, es, relems, nc, TU_LOSS_RTOL, atol_e);
        snprintf(w, sizeof w, "step %d elements (forward)", step);
        ok &= tu_cmp_f32(w, ef, relems, nc, TU_LOSS_RTOL, atol_e);
        snprintf(w, sizeof w, "step %d elements: step vs batch", step);
        ok &= tu_bits_equal(w, es, eb, nc, 4);
        /* ignored rows: exactly 0 (and so is their gradient) */
        size_t ign = 0, nonzero = 0;
        for (size_t i = 0; i < n; ++i) {
            if (y[i] != cfg.ignore_index)
                continue;
            ign++;
            for (size_t j = 0; j < C; ++j)
                nonzero += eb[i * C + j] != 0.0f || es[i * C + j] != 0.0f || ef[i * C + j] != 0.0f ||
                           gb[i * C + j] != 0.0f;
        }
        ok &= CHECK(ign > 0);
        ok &= CHECK_MSG(nonzero == 0, "step %d: %zu element(s) of ignored rows not 0", step, nonzero);
        /* the gradient is the sum's, bitwise (same elements, same arithmetic) */
        snprintf(w, sizeof w, "step %d grad NONE (step) vs SUM", step);
        ok &= tu_bits_equal(w, gs, gsum, nc, 4);
        snprintf(w, sizeof w, "step %d grad NONE (batch) vs SUM", step);
        ok &= tu_bits_equal(w, gb, gsum, nc, 4);
        ok &= tu_cmp_grad(gb, rgrad, nc, "step %d grad", step);
        /* the elements add up to the sum */
        double tot = 0.0;
        for (size_t k = 0; k < nc; ++k)
            tot += eb[k];
        double dl = lsum;
        snprintf(w, sizeof w, "step %d sum of NONE elements vs SUM", step);
        ok &= tu_cmp_f64(w, &tot, &dl, 1, 2e-6, 0.0);
        ok &= tu_cmp_loss(lsum, res.loss, "step %d SUM loss", step);
        /* the state update is the sum's */
        ok &= CHECK_MSG(tu_state_equal_bits(&d1, &d3), "step %d: state after NONE (step) differs from SUM's", step);
        ok &= CHECK_MSG(tu_state_equal_bits(&d2, &d3), "step %d: state after NONE (batch) differs from SUM's", step);
        ok &= tu_cmp_state(&d2, &rs, TU_STATE_RTOL_FEW, TU_STATE_RTOL, "step %d", step);
    }

    /* NONE needs the element buffers */
    tu_read_state(&E, Lb, &d1);
    CHECK_STATUS(rows_batch(Lb, EFL_OP_STEP, bx, by, n, EFL_REDUCTION_NONE, 1.0f, NULL, bl, bgb, NULL),
                 EFL_ERROR_NULL_BUFFER);
    CHECK_STATUS(rows_batch(Lb, EFL_OP_FORWARD, bx, by, n, EFL_REDUCTION_NONE, 1.0f, NULL, bl, NULL, NULL),
                 EFL_ERROR_NULL_BUFFER);
    CHECK_STATUS(efl_enqueue_step(Ls, E.queue, bx, by, n, 1.0f, EFL_REDUCTION_NONE, NULL, bgs, 0, NULL, NULL),
                 EFL_ERROR_NULL_BUFFER);
    /* a loss_out of one float is too small for n*C elements */
    CHECK_STATUS(efl_enqueue_step(Ls, E.queue, bx, by, n, 1.0f, EFL_REDUCTION_NONE, bl, bgs, 0, NULL, NULL),
                 EFL_ERROR_BUFFER_TOO_SMALL);
    CHECK_STATUS(efl_enqueue_forward(Ls, E.queue, bx, by, n, 1.0f, EFL_REDUCTION_NONE, bl, 0, NULL, NULL),
                 EFL_ERROR_BUFFER_TOO_SMALL);
    {
        cl_mem small = tu_buf(&E, nc * 4 - 4, NULL);
        CHECK_STATUS(rows_batch(Lb, EFL_OP_STEP, bx, by, n, EFL_REDUCTION_NONE, 1.0f, NULL, NULL, bgb, small),
                     EFL_ERROR_BUFFER_TOO_SMALL);
        tu_release(small);
    }
    tu_read_state(&E, Lb, &d2);
    CHECK_MSG(tu_state_equal_bits(&d1, &d2), "a refused NONE call changed the state");

    tu_release(bx), tu_release(by), tu_release(bes), tu_release(bgs), tu_release(beb), tu_release(bgb);
    tu_release(bef), tu_release(bl), tu_release(bgsum), tu_release(bl1);
    efl_loss_destroy(Ls), efl_loss_destroy(Lb), efl_loss_destroy(Lsum);
    efl_ref_state_free(&rs), efl_ref_state_free(&d1), efl_ref_state_free(&d2), efl_ref_state_free(&d3);
    free(x), free(es), free(eb), free(ef), free(gs), free(gb), free(gsum), free(y), free(rgrad), free(relems),
        free(rsgrad);
    tu_end();
}

/* ------------------------------------------------------- normalizer_buffer */
static void test_normalizer_buffer(void)
{
    tu_begin("normalizer_buffer");
    const uint32_t C = 37;
    const size_t n = tu_rows(300), nc = n * C;
    efl_loss_config cfg;
    efl_loss_config_init(&cfg, C);
    efl_loss *Lf = tu_loss(&E, &cfg), *Lb = tu_loss(&E, &cfg);
    efl_ref_params rp = tu_ref_params(&cfg);
    efl_ref_state rs, df, db, before;
    if (!efl_ref_state_init_mode(&rs, C, EFL_REF_MODE_EFL))
        tu_fatal(__FILE__, __LINE__, "malloc");
    state_alloc(&df, C), state_alloc(&db, C), state_alloc(&before, C);
    float *x = tu_xmalloc(nc * 4), *gf = tu_xmalloc(nc * 4), *gb = tu_xmalloc(nc * 4);
    int32_t *y = tu_xmalloc(n * 4);
    double *rgrad = tu_xmalloc(nc * 8), *dgf = tu_xmalloc(nc * 8);
    cl_mem bx = tu_buf(&E, nc * 4, NULL), by = tu_buf(&E, n * 4, NULL), blf = tu_buf(&E, 4, NULL),
           bgf = tu_buf(&E, nc * 4, NULL), blb = tu_buf(&E, 4, NULL), bgb = tu_buf(&E, nc * 4, NULL),
           bn = tu_buf(&E, 4, NULL);
    tu_rng rng = {900};

    for (int step = 0; step < tu_steps(3); ++step) {
        size_t np = make_inputs(&rng, &cfg, x, y, n, 0.1, 0.03);
        float norm = np ? (float)np + 0.37f : 1.0f; /* not a power of two: the division rounds */
        tu_write(&E, bx, nc * 4, x);
        tu_write(&E, by, n * 4, y);
        tu_write(&E, bn, 4, &norm);
        float lf = NAN, lb = NAN;
        CHECK_STATUS(efl_enqueue_step(Lf, E.queue, bx, by, n, norm, EFL_REDUCTION_MEAN, blf, bgf, 0, NULL, NULL), EFL_OK);
        /* batch.normalizer holds another valid value: the buffer wins */
        CHECK_STATUS(rows_batch(Lb, EFL_OP_STEP, bx, by, n, EFL_REDUCTION_MEAN, 12345.0f, bn, blb, bgb, NULL), EFL_OK);
        CHECK_STATUS(efl_loss_query_status(Lf, E.queue), EFL_OK);
        CHECK_STATUS(efl_loss_query_status(Lb, E.queue), EFL_OK);
        tu_read(&E, blf, 4, &lf);
        tu_read(&E, blb, 4, &lb);
        tu_read(&E, bgf, nc * 4, gf);
        tu_read(&E, bgb, nc * 4, gb);
        tu_read_state(&E, Lf, &df);
        tu_read_state(&E, Lb, &db);
        efl_ref_result res;
        efl_ref_step_mode(&rp, &rs, x, y, n, norm, EFL_REF_MEAN, rgrad, NULL, &res);
        char w[96];
        /* device buffer vs host float: one division rounded differently at most */
        double dlf = lf;
        snprintf(w, sizeof w, "step %d loss: buffer vs float", step);
        tu_cmp_f32(w, &lb, &dlf, 1, 5e-7, 0.0);
        for (size_t k = 0; k < nc; ++k)
            dgf[k] = gf[k];
        snprintf(w, sizeof w, "step %d grad: buffer vs float", step);
        tu_cmp_f32(w, gb, dgf, nc, 5e-7, 1e-12 * tu_max_abs(dgf, nc));
        snprintf(w, sizeof w, "step %d state: buffer vs float", step);
        tu_cmp_f64(w, db.pos, df.pos, C, 1e-6, 1e-13 * tu_max_abs(df.pos, C));
        tu_cmp_f64(w, db.neg, df.neg, C, 1e-6, 1e-13 * tu_max_abs(df.neg, C));
        tu_cmp_f64(w, db.g, df.g, C, 1e-6, 1e-13);
        tu_cmp_loss(lb, res.loss, "step %d loss (buffer)", step);
        tu_cmp_grad(gb, rgrad, nc, "step %d grad (buffer)", step);
        tu_cmp_state(&db, &rs, TU_STATE_RTOL_FEW, TU_STATE_RTOL, "step %d (buffer)", step);
    }

    /* bad values: refused on the device */
    static const char *names[] = {"0", "-1", "NaN", "+Inf", "-Inf", "-0"};
    const float bad[] = {0.0f, -1.0f, NAN, INFINITY, -INFINITY, -0.0f};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; ++k) {
        tu_write(&E, bn, 4, &bad[k]);
        tu_read_state(&E, Lb, &before);
        uint32_t sk0 = skipped(Lb);
        tu_fill(&E, blb, 4, TU_SENTINEL);
        CHECK_STATUS(rows_batch(Lb, EFL_OP_STEP, bx, by, n, EFL_REDUCTION_MEAN, 1.0f, bn, blb, bgb, NULL), EFL_OK);
        efl_status st = efl_loss_query_status(Lb, E.queue);
        CHECK_MSG(st == EFL_ERROR_INVALID_NORMALIZER, "normalizer %s: query_status %s", names[k], efl_status_string(st));
        uint32_t lraw;
        tu_read(&E, blb, 4, &lraw);
        CHECK_MSG(lraw == 0xA5A5A5A5u, "normalizer %s: the refused step wrote the loss (0x%08x)", names[k], lraw);
        tu_read_state(&E, Lb, &db);
        CHECK_MSG(tu_state_equal_bits(&db, &before), "normalizer %s: the refused step changed the state", names[k]);
        uint32_t sk1 = skipped(Lb);
        CHECK_MSG(sk1 == sk0 + 1, "normalizer %s: skipped %u -> %u, expected +1", names[k], sk0, sk1);
        /* forward too: loss left alone, the verdict reported */
        CHECK_STATUS(rows_batch(Lb, EFL_OP_FORWARD, bx, by, n, EFL_REDUCTION_MEAN, 1.0f, bn, blb, NULL, NULL), EFL_OK);
        st = efl_loss_query_status(Lb, E.queue);
        CHECK_MSG(st == EFL_ERROR_INVALID_NORMALIZER, "normalizer %s (forward): query_status %s", names[k],
                  efl_status_string(st));
        tu_read(&E, blb, 4, &lraw);
        CHECK_MSG(lraw == 0xA5A5A5A5u, "normalizer %s: the refused forward wrote the loss (0x%08x)", names[k], lraw);
        tu_read_state(&E, Lb, &db);
        CHECK_MSG(tu_state_equal_bits(&db, &before), "normalizer %s: forward changed the state", names[k]);
    }
    /* (SUM does not divide; what it does with a bad buffer is not specified, so not checked) */

    /* the next good step works and continues from the untouched state */
    {
        size_t np = make_inputs(&rng, &cfg, x, y, n, 0.1, 0.03);
        float norm = np ? (float)np : 1.0f, lb = NAN;
        tu_write(&E, bx, nc * 4, x);
        tu_write(&E, by, n * 4, y);
        tu_write(&E, bn, 4, &norm);
        CHECK_STATUS(rows_batch(Lb, EFL_OP_STEP, bx, by, n, EFL_REDUCTION_MEAN, 1.0f, bn, blb, bgb, NULL), EFL_OK);
        CHECK_STATUS(efl_loss_query_status(Lb, E.queue), EFL_OK);
        tu_read(&E, blb, 4, &lb);
        tu_read(&E, bgb, nc * 4, gb);
        tu_read_state(&E, Lb, &db);
        efl_ref_result res;
        efl_ref_step_mode(&rp, &rs, x, y, n, norm, EFL_REF_MEAN, rgrad, NULL, &res);
        tu_cmp_loss(lb, res.loss, "after the refused steps: loss");
        tu_cmp_grad(gb, rgrad, nc, "after the refused steps: grad");
        tu_cmp_state(&db, &rs, TU_STATE_RTOL_FEW, TU_STATE_RTOL, "after the refused steps");
    }

    tu_release(bx), tu_release(by), tu_release(blf), tu_release(bgf), tu_release(blb), tu_release(bgb);
    tu_release(bn);
    efl_loss_destroy(Lf), efl_loss_destroy(Lb);
    efl_ref_state_free(&rs), efl_ref_state_free(&df), efl_ref_state_free(&db), efl_ref_state_free(&before);
    free(x), free(gf), free(gb), free(y), free(rgrad), free(dgf);
    tu_end();
}

/* ------------------------------------------------------- invalid batches */
static void test_invalid_batch(void)
{
    tu_begin("invalid efl_batch fields");
    const uint32_t C = 7;
    const size_t n = 50, nc = n * C;
    efl_loss_config cfg;
    efl_loss_config_init(&cfg, C);
    efl_loss *L = tu_loss(&E, &cfg);
    float *x = tu_xmalloc(nc * 4);
    int32_t *y = tu_xmalloc(n * 4);
    tu_rng rng = {1234};
    make_inputs(&rng, &cfg, x, y, n, 0.3, 0.0);
    efl_ref_state st0, st1;
    state_alloc(&st0, C), state_alloc(&st1, C);
    for (uint32_t j = 0; j < C; ++j) {
        st0.pos[j] = 0.1 + 0.01 * j;
        st0.neg[j] = 2.0 + j;
        st0.g[j] = 0.3 + 0.05 * j;
    }
    tu_write_state_canonical(&E, L, &st0);
    cl_mem bx = tu_buf(&E, nc * 4, x), by = tu_buf(&E, n * 4, y), bl = tu_buf(&E, 4, NULL),
           bg = tu_buf(&E, nc * 4, NULL), be = tu_buf(&E, nc * 4, NULL), bn = tu_buf(&E, 4, NULL);
    cl_mem sx = tu_buf(&E, nc * 4 - 4, x), sy = tu_buf(&E, n * 4 - 4, y), sg = tu_buf(&E, nc * 4 - 4, NULL),
           se = tu_buf(&E, nc * 4 - 4, NULL);
    float one = 1.0f;
    tu_write(&E, bn, 4, &one);

    efl_batch good;
    efl_batch_init(&good);
    CHECK(good.layout == EFL_LAYOUT_ROWS && good.dtype == EFL_DTYPE_FLOAT32 && good.reduction == EFL_REDUCTION_MEAN &&
          good.normalizer == 1.0f && good.grad_scale == 1.0f && good.input[0] == NULL && good.loss == NULL &&
          good.normalizer_buffer == NULL && good.labels == NULL);
    good.rows = n;
    good.input[0] = bx;
    good.labels = by;
    good.grad[0] = bg;
    good.loss = bl;

    tu_batch_case cases[40];
    size_t nb = 0;
#define ADD(desc, o, w, ...) TU_BATCH_CASE(cases, nb, good, desc, o, w, __VA_ARGS__)
    ADD("layout 3", EFL_OP_STEP, EFL_ERROR_INVALID_LAYOUT, b->layout = (efl_layout)3);
    ADD("layout -1", EFL_OP_STEP, EFL_ERROR_INVALID_LAYOUT, b->layout = (efl_layout)-1);
    ADD("head layout, levels 0", EFL_OP_STEP, EFL_ERROR_INVALID_LAYOUT,
        b->layout = EFL_LAYOUT_ANCHOR_MAJOR; b->images = 1; b->anchors = 1; b->levels = 0; b->height[0] = 1;
        b->width[0] = (uint32_t)n);
    ADD("head layout, levels 9", EFL_OP_STEP, EFL_ERROR_INVALID_LAYOUT,
        b->layout = EFL_LAYOUT_CLASS_MAJOR; b->images = 1; b->anchors = 1; b->levels = EFL_MAX_LEVELS + 1;
        for (int k = 0; k < EFL_MAX_LEVELS; ++k) { b->height[k] = 1; b->width[k] = 1; b->input[k] = bx; b->grad[k] = bg; });
    ADD("head layout, levels 9 (forward)", EFL_OP_FORWARD, EFL_ERROR_INVALID_LAYOUT,
        b->layout = EFL_LAYOUT_ANCHOR_MAJOR; b->images = 1; b->anchors = 1; b->levels = EFL_MAX_LEVELS + 1;
        for (int k = 0; k < EFL_MAX_LEVELS; ++k) { b->height[k] = 1; b->width[k] = 1; b->input[k] = bx; });
    ADD("reduction 3", EFL_OP_STEP, EFL_ERROR_INVALID_REDUCTION, b->reduction = (efl_reduction)3);
    ADD("reduction -1 (forward)", EFL_OP_FORWARD, EFL_ERROR_INVALID_REDUCTION, b->reduction = (efl_reduction)-1);
    ADD("dtype 3", EFL_OP_STEP, EFL_ERROR_INVALID_DTYPE, b->dtype = (efl_dtype)3);
    ADD("NONE without loss_elems", EFL_OP_STEP, EFL_ERROR_NULL_BUFFER, b->reduction = EFL_REDUCTION_NONE);
    ADD("NONE without loss_elems (forward)", EFL_OP_FORWARD, EFL_ERROR_NULL_BUFFER, b->reduction = EFL_REDUCTION_NONE);
    ADD("input NULL", EFL_OP_STEP, EFL_ERROR_NULL_BUFFER, b->input[0] = NULL);
    ADD("labels NULL", EFL_OP_STEP, EFL_ERROR_NULL_BUFFER, b->labels = NULL);
    ADD("loss NULL with MEAN", EFL_OP_STEP, EFL_ERROR_NULL_BUFFER, b->loss = NULL);
    ADD("grad NULL for a step", EFL_OP_STEP, EFL_ERROR_NULL_BUFFER, b->grad[0] = NULL);
    ADD("accumulate, input NULL", EFL_OP_ACCUMULATE, EFL_ERROR_NULL_BUFFER, b->input[0] = NULL);
    ADD("input too small", EFL_OP_STEP, EFL_ERROR_BUFFER_TOO_SMALL, b->input[0] = sx);
    ADD("input too small (forward)", EFL_OP_FORWARD, EFL_ERROR_BUFFER_TOO_SMALL, b->input[0] = sx);
    ADD("input too small (accumulate)", EFL_OP_ACCUMULATE, EFL_ERROR_BUFFER_TOO_SMALL, b->input[0] = sx);
    ADD("labels too small", EFL_OP_STEP, EFL_ERROR_BUFFER_TOO_SMALL, b->labels = sy);
    ADD("grad too small", EFL_OP_STEP, EFL_ERROR_BUFFER_TOO_SMALL, b->grad[0] = sg);
    ADD("loss_elems too small", EFL_OP_STEP, EFL_ERROR_BUFFER_TOO_SMALL, b->reduction = EFL_REDUCTION_NONE;
        b->loss_elems[0] = se);
    ADD("rows one too many", EFL_OP_STEP, EFL_ERROR_BUFFER_TOO_SMALL, b->rows = n + 1);
    ADD("float16 storage, rows too many", EFL_OP_STEP, EFL_ERROR_BUFFER_TOO_SMALL, b->dtype = EFL_DTYPE_FLOAT16;
        b->rows = 2 * n + 2);
    ADD("normalizer 0", EFL_OP_STEP, EFL_ERROR_INVALID_NORMALIZER, b->normalizer = 0.0f);
    ADD("normalizer NaN (forward)", EFL_OP_FORWARD, EFL_ERROR_INVALID_NORMALIZER, b->normalizer = NAN);
    ADD("grad_scale 0 (accumulate)", EFL_OP_ACCUMULATE, EFL_ERROR_INVALID_PARAMETER, b->grad_scale = 0.0f);
    ADD("grad_scale Inf (accumulate)", EFL_OP_ACCUMULATE, EFL_ERROR_INVALID_PARAMETER, b->grad_scale = INFINITY);
#undef ADD

    /* none may write the loss, the gradient or the elements */
    const cl_mem outs[] = {bl, bg, be};
    const size_t sizes[] = {4, nc * 4, nc * 4};
    tu_check_refused(&E, L, cases, nb, &st0, outs, sizes, 3);
    /* an op outside efl_op, a NULL batch, a NULL loss */
    efl_status st = efl_enqueue_batch(L, E.queue, (efl_op)99, &good, 0, NULL, NULL);
    CHECK_MSG(st != EFL_OK, "op 99 accepted");
    CHECK_STATUS(efl_enqueue_batch(L, E.queue, EFL_OP_STEP, NULL, 0, NULL, NULL), EFL_ERROR_NULL_HANDLE);
    CHECK_STATUS(efl_enqueue_batch(NULL, E.queue, EFL_OP_STEP, &good, 0, NULL, NULL), EFL_ERROR_NULL_HANDLE);
    tu_read_state(&E, L, &st1);
    CHECK_MSG(tu_state_equal_bits(&st0, &st1), "the state changed");

    /* and the good batch works (so the refusals above were about the field changed) */
    CHECK_STATUS(efl_enqueue_batch(L, E.queue, EFL_OP_STEP, &good, 0, NULL, NULL), EFL_OK);
    CHECK_STATUS(efl_loss_query_status(L, E.queue), EFL_OK);
    good.reduction = EFL_REDUCTION_MEAN;
    good.normalizer_buffer = bn;
    CHECK_STATUS(efl_enqueue_batch(L, E.queue, EFL_OP_FORWARD, &good, 0, NULL, NULL), EFL_OK);
    CHECK_STATUS(efl_loss_query_status(L, E.queue), EFL_OK);
    good.input[0] = bg; /* a gradient */
    CHECK_STATUS(efl_enqueue_batch(L, E.queue, EFL_OP_ACCUMULATE, &good, 0, NULL, NULL), EFL_OK);
    CHECK_STATUS(efl_loss_query_status(L, E.queue), EFL_OK);

    tu_release(bx), tu_release(by), tu_release(bl), tu_release(bg), tu_release(be), tu_release(bn);
    tu_release(sx), tu_release(sy), tu_release(sg), tu_release(se);
    efl_loss_destroy(L);
    efl_ref_state_free(&st0), efl_ref_state_free(&st1);
    free(x), free(y);
    tu_end();
}

int main(void)
{
    tu_env_init(&E);
    test_config_defaults();
    static const eqlv2_case eq[] = {
        {"EQLv2 defaults, reference labels, mean over rows", 0, EFL_REDUCTION_MEAN, 1.0f, 12.0f, 0.8f, 4.0f, -1, 11},
        {"EQLv2 zero-based labels, sum, lw 0.5, gamma 10, mu 0.7, alpha 3, ignore 255", 1, EFL_REDUCTION_SUM, 0.5f,
         10.0f, 0.7f, 3.0f, 255, 12},
    };
    for (size_t k = 0; k < sizeof eq / sizeof eq[0]; ++k)
        test_eqlv2(&eq[k]);
    test_focal(0);
    test_focal(1);
    test_none(EFL_MODE_EFL);
    test_none(EFL_MODE_EQLV2);
    test_normalizer_buffer();
    test_invalid_batch();
    tu_env_free(&E);
    return tu_exit_code();
}
