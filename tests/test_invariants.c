/*
 * The overflow contract (efl.h: EFL_ERROR_OVERFLOW and the invariant). After every call that
 * returns EFL_OK the loss, the gradient in its storage type and the state (pos_grad, neg_grad,
 * pos_neg) are finite, and pos_neg lies in [0, 1] in EFL mode. A call that cannot keep that is
 * refused with a specific status and changes nothing: host calls leave every output array as it
 * was, device enqueues leave the state and the reduced loss buffer (their gradient and
 * per-element buffers may have been written), and a device-side refusal of a step or an
 * accumulate is counted in efl_loss_skipped_steps.
 *
 * Every expectation comes from the float64 reference (efl_ref.c), never from the library: the
 * reference's loss, gradient, per-element loss, statistics and next state are compared with the
 * limits of their types (float32 for the loss total and the statistics, the storage type for
 * the gradient and per-element loss, float64 or float pairs, max FLT_MAX, for the state totals).
 * A value beyond its limit by more than 1e-4 relative must be refused (EFL_ERROR_OVERFLOW); one
 * below it by as much must be computed and equal the reference; in between, either. Where the
 * contract leaves the library a choice, the case says so and allows both:
 *   - an intermediate beyond float32 whose final result fits (an unscaled loss total or element
 *     before a tiny loss_weight / normalizer; the total of a reduction "none", which returns no
 *     total);
 *   - statistics beyond float32 on a float64-totals device (the totals would hold them).
 * The cases, one group each (numbered as in the issue):
 *   1 tiny positive normalizer (FLT_MIN, 1e-38, 1e-40), host float and normalizer_buffer
 *   2 loss_weight near FLT_MAX; state totals past FLT_MAX on float-pair totals
 *   3 float16 / bfloat16 storage: gradient or element beyond the type, and just below it
 *   4 accumulate: huge gradients, tiny grad_scale, totals past the accumulator's range
 *   5 data parallel: apply_statistics beyond the totals' range; compute's refusal flag, and a
 *     refused rank's statistics finite and >= 0 (every rank sums them and applies the sum)
 *   6 state writes (write_state, write_state_host, import_checkpoint) with pos_neg out of [0, 1]:
 *     INVALID_STATE (import_checkpoint: or CHECKPOINT_CORRUPT, as for its other bad values)
 *   7 finite logits of any magnitude (+-1e30, +-1e38, +-FLT_MAX, denormals, +-0), NaN / Inf
 *   8 reduction "none": a refused host call leaves the per-element array alone
 *   9 zero-copy host step: a refused step leaves the caller's gradient alone (and staged)
 *  10 n = 0 is an update (g from the unchanged totals), and so is the data-parallel path
 *  11 configurations: creation refuses non-finite factors; accepted ones keep the invariant
 * Every loss ends with a checkpoint round trip: what OK calls left always loads back, bitwise.
 */
#define _POSIX_C_SOURCE 200809L /* setenv */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

static tu_env E;

/* ------------------------------------------------------------------ storage */
static size_t esz(efl_dtype d) { return d == EFL_DTYPE_FLOAT32 ? 4 : 2; }

static const char *dname(efl_dtype d)
{
    return d == EFL_DTYPE_FLOAT16 ? "float16" : d == EFL_DTYPE_BFLOAT16 ? "bfloat16" : "float32";
}

static float bits_to_float(uint32_t b)
{
    float f;
    memcpy(&f, &b, 4);
    return f;
}

/* The smallest float32 magnitude each storage type rounds to infinity (to nearest even):
 * float16 65520; bfloat16 0x7F7F8000 (the tie above its largest finite 0x7F7F rounds up). */
static double storage_limit(efl_dtype d)
{
    if (d == EFL_DTYPE_FLOAT16)
        return 65520.0;
    if (d == EFL_DTYPE_BFLOAT16)
        return (double)bits_to_float(0x7F7F8000u);
    return (double)FLT_MAX;
}

static void encode(efl_dtype d, const float *x, size_t n, void *out)
{
    if (d == EFL_DTYPE_FLOAT32) {
        if (n)
            memcpy(out, x, n * 4);
        return;
    }
    uint16_t *o = out;
    for (size_t i = 0; i < n; ++i)
        o[i] = d == EFL_DTYPE_FLOAT16 ? tu_f32_to_f16(x[i]) : tu_f32_to_bf16(x[i]);
}

static void decode(efl_dtype d, const void *in, size_t n, float *out)
{
    if (d == EFL_DTYPE_FLOAT32) {
        if (n)
            memcpy(out, in, n * 4);
        return;
    }
    const uint16_t *p = in;
    for (size_t i = 0; i < n; ++i)
        out[i] = d == EFL_DTYPE_FLOAT16 ? tu_f16_to_f32(p[i]) : tu_bf16_to_f32(p[i]);
}

static double storage_ulp(efl_dtype d, double v)
{
    return d == EFL_DTYPE_FLOAT16 ? tu_f16_ulp(v) : d == EFL_DTYPE_BFLOAT16 ? tu_bf16_ulp(v) : 0.0;
}

static int all_bytes(const void *p, size_t n, unsigned char b)
{
    const unsigned char *c = p;
    for (size_t i = 0; i < n; ++i)
        if (c[i] != b)
            return 0;
    return 1;
}

/* ------------------------------------------------------------ expectations */
enum { X_OK = 0, X_EITHER = 1, X_OVER = 2 };
#define MARGIN 1e-4

/* |v| against a type's limit: beyond it (refuse), below it (compute), or too close to tell. */
static int lvl(double v, double limit)
{
    const double r = fabs(v) / limit; /* a ratio: limit * (1 + MARGIN) overflows at DBL_MAX */
    if (!isfinite(v) || r > 1.0 + MARGIN)
        return X_OVER;
    return r >= 1.0 - MARGIN ? X_EITHER : X_OK;
}
static int worst(int a, int b) { return a > b ? a : b; }
static int soft(int l) { return l == X_OVER ? X_EITHER : l; }
static const char *lvl_name(int l) { return l == X_OK ? "EFL_OK" : l == X_EITHER ? "either" : "a refusal"; }

/* ------------------------------------------------------------------- losses */
typedef struct {
    efl_loss *loss;
    efl_loss_config cfg;
    efl_ref_params rp;
    efl_ref_state rs; /* the reference's state: advanced on every accepted update */
    uint32_t C;
    int pairs;          /* totals kept as float pairs (no fp64, or asked for) */
    double total_limit; /* the largest state total the accumulators hold */
    int loose;          /* extreme configurations: check the invariant and statuses, not values */
} lx;

static efl_status lx_open(lx *L, const efl_loss_config *cfg)
{
    memset(L, 0, sizeof *L);
    L->cfg = *cfg;
    L->C = cfg->num_classes;
    efl_status st = efl_loss_create(E.ctx, cfg, &L->loss);
    if (st != EFL_OK) {
        L->loss = NULL;
        return st;
    }
    L->rp = tu_ref_params(cfg);
    if (!efl_ref_state_init_mode(&L->rs, L->C, (efl_ref_mode)cfg->mode))
        tu_fatal(__FILE__, __LINE__, "malloc");
    L->pairs = !E.has_fp64 || cfg->accumulate == EFL_ACCUMULATE_FLOAT_PAIRS;
    L->total_limit = L->pairs ? (double)FLT_MAX : DBL_MAX;
    return EFL_OK;
}

static void lx_open_req(lx *L, const efl_loss_config *cfg)
{
    efl_status st = lx_open(L, cfg);
    if (st != EFL_OK) {
        tu_failf(__FILE__, __LINE__, "efl_loss_create -> %s", efl_status_string(st));
        tu_fatal(__FILE__, __LINE__, "loss creation");
    }
}

static efl_loss_config cfg_of(uint32_t C, efl_mode mode)
{
    efl_loss_config c;
    efl_loss_config_init_mode(&c, C, mode);
    return c;
}

static int has_state(const lx *L) { return L->cfg.mode != EFL_MODE_FOCAL; }

static void dev_state(lx *L, efl_ref_state *out)
{
    if (!efl_ref_state_init(out, L->C))
        tu_fatal(__FILE__, __LINE__, "malloc");
    if (has_state(L))
        tu_read_state(&E, L->loss, out);
}

static uint32_t skipped(lx *L)
{
    uint32_t c = 0;
    REQUIRE_OK(efl_loss_skipped_steps(L->loss, E.queue, &c));
    return c;
}

/* The invariant on a state the device holds. */
static int check_invariant(lx *L, const efl_ref_state *s, const char *what)
{
    if (!has_state(L))
        return 1;
    for (uint32_t j = 0; j < L->C; ++j) {
        const int ok = isfinite(s->pos[j]) && isfinite(s->neg[j]) && isfinite(s->g[j]) && s->pos[j] >= 0.0 &&
                       s->neg[j] >= 0.0 && s->g[j] >= 0.0 && (L->cfg.mode != EFL_MODE_EFL || s->g[j] <= 1.0);
        if (!CHECK_MSG(ok, "%s: invariant broken, class %u: pos_grad %g neg_grad %g pos_neg %g", what, j, s->pos[j],
                       s->neg[j], s->g[j]))
            return 0;
    }
    return 1;
}

/* Write a state, then take what the device holds as the reference's (float pairs round). */
static void lx_set_state(lx *L, const double *pos, const double *neg, const double *g)
{
    memcpy(L->rs.pos, pos, L->C * sizeof(double));
    memcpy(L->rs.neg, neg, L->C * sizeof(double));
    memcpy(L->rs.g, g, L->C * sizeof(double));
    REQUIRE_OK(efl_loss_write_state(L->loss, E.queue, pos, neg, g));
    efl_ref_state back;
    dev_state(L, &back);
    tu_cmp_f64("written pos_grad", back.pos, pos, L->C, 1e-14, 0.0);
    tu_cmp_f64("written neg_grad", back.neg, neg, L->C, 1e-14, 0.0);
    tu_cmp_f64("written pos_neg", back.g, g, L->C, 1e-14, 0.0);
    efl_ref_state_copy(&L->rs, &back);
    efl_ref_state_free(&back);
}

/* A non-trivial state: pos_neg in [0.05, 0.95], deliberately not pos / neg. */
static void lx_random_state(lx *L, uint64_t seed)
{
    tu_rng r = {seed};
    double *v = tu_xmalloc(3 * L->C * sizeof *v);
    for (uint32_t j = 0; j < L->C; ++j) {
        v[j] = 0.5 * tu_uniform(&r);
        v[L->C + j] = 1.0 + 3.0 * tu_uniform(&r);
        v[2 * L->C + j] = 0.05 + 0.9 * tu_uniform(&r);
    }
    lx_set_state(L, v, v + L->C, v + 2 * L->C);
    free(v);
}

/* The same value for every class. */
static void lx_flat_state(lx *L, double pos, double neg, double g)
{
    double *v = tu_xmalloc(3 * L->C * sizeof *v);
    for (uint32_t j = 0; j < L->C; ++j) {
        v[j] = pos;
        v[L->C + j] = neg;
        v[2 * L->C + j] = g;
    }
    lx_set_state(L, v, v + L->C, v + 2 * L->C);
    free(v);
}

/* Export, import into a fresh loss of the same configuration: EFL_OK and the same state, bit
 * for bit (and the same bytes exported again). */
static void check_checkpoint_round_trip(lx *L, const char *what)
{
    if (!has_state(L))
        return;
    size_t size = 0;
    if (!CHECK_STATUS(efl_loss_export_checkpoint(L->loss, E.queue, NULL, &size), EFL_OK))
        return;
    unsigned char *a = tu_xmalloc(size), *b = tu_xmalloc(size);
    size_t got = size, got2 = size;
    CHECK_STATUS(efl_loss_export_checkpoint(L->loss, E.queue, a, &got), EFL_OK);
    efl_loss *fresh = NULL;
    REQUIRE_OK(efl_loss_create(E.ctx, &L->cfg, &fresh));
    const efl_status st = efl_loss_import_checkpoint(fresh, E.queue, a, got);
    CHECK_MSG(st == EFL_OK, "%s: the checkpoint of a state reached by OK calls does not load back: %s", what,
              efl_status_string(st));
    if (st == EFL_OK) {
        CHECK_STATUS(efl_loss_export_checkpoint(fresh, E.queue, b, &got2), EFL_OK);
        CHECK_MSG(got2 == got && memcmp(a, b, got) == 0, "%s: checkpoint round trip not bitwise", what);
        efl_ref_state s1, s2;
        dev_state(L, &s1);
        if (!efl_ref_state_init(&s2, L->C))
            tu_fatal(__FILE__, __LINE__, "malloc");
        tu_read_state(&E, fresh, &s2);
        CHECK_MSG(tu_state_equal_bits(&s1, &s2), "%s: state after the checkpoint round trip differs", what);
        efl_ref_state_free(&s1);
        efl_ref_state_free(&s2);
    }
    efl_loss_destroy(fresh);
    free(a);
    free(b);
}

static void lx_close(lx *L, const char *what)
{
    if (!L->loss)
        return;
    check_checkpoint_round_trip(L, what);
    efl_loss_destroy(L->loss);
    efl_ref_state_free(&L->rs);
    L->loss = NULL;
}

/* ---------------------------------------------------------------- one call */
typedef enum { VIA_DEVICE, VIA_HOST, VIA_RUN_HOST, VIA_NORM_BUFFER } via_t;
static const char *const VIA[] = {"device", "host", "run_host", "normalizer_buffer"};

typedef struct {
    efl_op op; /* EFL_OP_STEP, EFL_OP_FORWARD or EFL_OP_COMPUTE */
    via_t via;
    efl_dtype dtype;
    efl_reduction red;
    float norm; /* MEAN: the host normalizer, or the normalizer buffer's value */
} call_t;

#define WANT_AUTO ((efl_status)-1)

/* The worst level of the state after an update with statistics P, N (written to next). */
static int update_level(const lx *L, const double *P, const double *N, efl_ref_state *next, int level)
{
    efl_ref_update_mode(&L->rp, next, P, N);
    for (size_t j = 0; j < L->C; ++j) {
        level = worst(level, lvl(next->pos[j], L->total_limit));
        level = worst(level, lvl(next->neg[j], L->total_limit));
        level = worst(level, lvl(next->g[j], L->total_limit));
    }
    return level;
}

/* A case that names its outcome must be one the reference agrees with (the test's own design). */
static void check_design(const char *name, efl_status want, int level, efl_status refuse)
{
    if (want == WANT_AUTO)
        return;
    const int agrees = want == EFL_OK ? level == X_OK : level == X_OVER && refuse == want;
    if (!agrees)
        tu_failf(__FILE__, __LINE__, "%s: test design: the reference says %s (%s), the case wants %s", name,
                 lvl_name(level), efl_status_string(refuse), efl_status_string(want));
}

typedef struct {
    int level;         /* X_OK, X_EITHER, X_OVER */
    efl_status refuse; /* what a refusal must say */
    int by_host;       /* refused before anything is enqueued: nothing counted */
    double loss, scale;
    double *grad, *elems, *P, *N;
    efl_ref_state next; /* the state after an accepted update */
} expect_t;

static void expect_free(expect_t *ex)
{
    free(ex->grad);
    free(ex->elems);
    free(ex->P);
    free(ex->N);
    efl_ref_state_free(&ex->next);
}

/* The reference's verdict on a step, forward or compute of the rounded inputs xr. */
static void expect_call(lx *L, const call_t *c, const float *xr, const int32_t *y, size_t n, expect_t *ex)
{
    const size_t C = L->C, nc = n * C;
    memset(ex, 0, sizeof *ex);
    ex->grad = tu_xmalloc((nc ? nc : 1) * sizeof(double));
    ex->elems = tu_xmalloc((nc ? nc : 1) * sizeof(double));
    ex->P = tu_xmalloc(C * sizeof(double));
    ex->N = tu_xmalloc(C * sizeof(double));
    if (!efl_ref_state_init(&ex->next, (uint32_t)C))
        tu_fatal(__FILE__, __LINE__, "malloc");
    efl_ref_state_copy(&ex->next, &L->rs);
    ex->level = X_OVER;
    ex->refuse = EFL_ERROR_OVERFLOW;
    const int collect_stats = c->op == EFL_OP_STEP || c->op == EFL_OP_COMPUTE;
    const int stateful = has_state(L);

    if (c->red == EFL_REDUCTION_MEAN) {
        volatile float s = L->cfg.loss_weight / c->norm; /* as float, like the library */
        if (!(c->norm > 0.0f) || !isfinite(c->norm) || !isfinite(s)) {
            ex->refuse = EFL_ERROR_INVALID_NORMALIZER;
            ex->by_host = c->via != VIA_NORM_BUFFER;
            return;
        }
    }
    size_t invalid = 0, nonfinite = 0;
    for (size_t i = 0; i < n; ++i) {
        int32_t col;
        const int kind = efl_ref_label_column(&L->rp, y[i], &col);
        invalid += kind < 0;
        for (size_t j = 0; kind == 1 && j < C; ++j)
            nonfinite += !isfinite(xr[i * C + j]);
    }
    if (invalid) {
        ex->refuse = EFL_ERROR_INVALID_LABEL;
        return;
    }
    if (nonfinite) {
        ex->refuse = EFL_ERROR_NONFINITE;
        return;
    }
    efl_ref_result res;
    efl_ref_forward_backward_mode(&L->rp, L->rs.g, xr, y, n, c->norm, (efl_ref_reduction)c->red, ex->grad, ex->elems,
                                  ex->P, ex->N, &res);
    ex->loss = res.loss;
    const double lw = L->cfg.loss_weight;
    ex->scale = c->red == EFL_REDUCTION_MEAN ? lw / (double)c->norm : lw;
    const double lim = storage_limit(c->dtype);
    int l = X_OK;
    /* the outputs: the loss total as float32, per-element loss and gradient in storage */
    if (c->red != EFL_REDUCTION_NONE) {
        l = worst(l, lvl(res.loss, FLT_MAX));
        if (ex->scale != 0.0) /* the sum before the scale: an intermediate */
            l = worst(l, soft(lvl(res.loss / ex->scale, FLT_MAX)));
    } else {
        double unscaled = 0.0;
        for (size_t k = 0; k < nc; ++k) {
            l = worst(l, lvl(ex->elems[k], lim));
            if (lw != 0.0) {
                l = worst(l, soft(lvl(ex->elems[k] / lw, FLT_MAX)));
                unscaled += ex->elems[k] / lw;
            }
        }
        l = worst(l, soft(lvl(unscaled, FLT_MAX))); /* a total "none" does not return */
    }
    if (collect_stats)
        for (size_t k = 0; k < nc; ++k)
            l = worst(l, lvl(ex->grad[k], lim));
    /* the statistics: float32 sums (float pairs cannot hold more; float64 totals could) */
    if (collect_stats && stateful)
        for (size_t j = 0; j < C; ++j) {
            const int sl = worst(lvl(ex->P[j], FLT_MAX), lvl(ex->N[j], FLT_MAX));
            l = worst(l, L->pairs ? sl : soft(sl));
        }
    /* the new state (a step's update; compute holds it back) */
    if (c->op == EFL_OP_STEP && stateful) {
        l = update_level(L, ex->P, ex->N, &ex->next, l);
    }
    ex->level = l;
}

/* got (decoded) against ref: relative rtol, one storage ulp, an absolute floor from the largest. */
static int cmp_values(const char *what, efl_dtype d, const float *got, const double *ref, size_t n)
{
    const double atol = 1e-12 * tu_max_abs(ref, n) + 1e-30;
    size_t bad = 0, worst_k = 0;
    double worst_x = -1.0;
    for (size_t k = 0; k < n; ++k) {
        const double tol = 1e-5 * fabs(ref[k]) + storage_ulp(d, ref[k]) + atol;
        const double diff = fabs((double)got[k] - ref[k]);
        if (!isfinite(got[k]) || !(diff <= tol)) {
            const double x = isfinite(got[k]) ? diff / tol : INFINITY;
            if (x > worst_x) {
                worst_x = x;
                worst_k = k;
            }
            bad++;
        }
    }
    return CHECK_MSG(bad == 0, "%s: %zu of %zu out of tolerance; worst [%zu]: got %.9g ref %.9g", what, bad, n,
                     worst_k, bad ? got[worst_k] : 0.0, bad ? ref[worst_k] : 0.0);
}

/* One step, forward or compute through `c->via`, checked against the reference's verdict (or
 * `want`, which must agree with it: a check of the case's own design). Returns the status. */
static efl_status run_call(lx *L, const char *what, const call_t *c, const float *x, const int32_t *y, size_t n,
                           efl_status want)
{
    const size_t C = L->C, nc = n * C, es = esz(c->dtype), ob = (nc ? nc : 1) * es;
    const int elementwise = c->red == EFL_REDUCTION_NONE;
    const int writes_grad = c->op == EFL_OP_STEP || c->op == EFL_OP_COMPUTE;
    char name[256];
    snprintf(name, sizeof name, "%s [%s %s %s via %s]", what,
             c->op == EFL_OP_STEP ? "step" : c->op == EFL_OP_FORWARD ? "forward" : "compute", dname(c->dtype),
             c->red == EFL_REDUCTION_MEAN ? "mean" : c->red == EFL_REDUCTION_SUM ? "sum" : "none", VIA[c->via]);

    unsigned char *xs = tu_xmalloc(ob);
    float *xr = tu_xmalloc((nc ? nc : 1) * sizeof *xr);
    encode(c->dtype, x, nc, xs);
    decode(c->dtype, xs, nc, xr);
    expect_t ex;
    expect_call(L, c, xr, y, n, &ex);
    if (L->loose && ex.level == X_OK && ex.refuse == EFL_ERROR_OVERFLOW)
        ex.level = X_EITHER; /* extreme configurations: the reference's values are not held to */
    check_design(name, want, ex.level, ex.refuse);

    efl_ref_state before, after;
    dev_state(L, &before);
    const uint32_t sk0 = skipped(L);
    unsigned char *hg = tu_xmalloc(ob), *he = tu_xmalloc(ob);
    memset(hg, TU_SENTINEL, ob);
    memset(he, TU_SENTINEL, ob);
    float hl;
    memset(&hl, TU_SENTINEL, sizeof hl);
    efl_status st;
    int enqueue_refused = 0;

    if (c->via == VIA_DEVICE || c->via == VIA_NORM_BUFFER) {
        cl_mem bx = tu_buf(&E, nc * es, nc ? xs : NULL), by = tu_buf(&E, n * 4, n ? y : NULL);
        cl_mem bl = tu_buf(&E, 4, NULL), bg = tu_buf(&E, nc * es, NULL), be = tu_buf(&E, nc * es, NULL);
        cl_mem bn = c->via == VIA_NORM_BUFFER ? tu_buf(&E, 4, &c->norm) : NULL;
        efl_batch b = tu_rows_batch(n, bx, by, writes_grad ? bg : NULL, elementwise ? NULL : bl, c->norm);
        b.dtype = c->dtype;
        b.reduction = c->red;
        if (elementwise)
            b.loss_elems[0] = be;
        b.normalizer_buffer = bn;
        st = efl_enqueue_batch(L->loss, E.queue, c->op, &b, 0, NULL, NULL);
        if (st == EFL_OK)
            st = efl_loss_query_status(L->loss, E.queue);
        else
            enqueue_refused = 1;
        REQUIRE_CL(clFinish(E.queue));
        tu_read(&E, bl, 4, &hl);
        if (nc) {
            tu_read(&E, bg, nc * es, hg);
            tu_read(&E, be, nc * es, he);
        }
        tu_release(bx), tu_release(by), tu_release(bl), tu_release(bg), tu_release(be);
        if (bn)
            tu_release(bn);
    } else if (c->via == VIA_HOST) {
        float *lo = elementwise ? (float *)he : &hl;
        if (c->op == EFL_OP_STEP)
            st = efl_loss_step_host_typed(L->loss, c->dtype, xs, y, n, c->norm, c->red, lo, hg);
        else
            st = efl_loss_forward_host_typed(L->loss, c->dtype, xs, y, n, c->norm, c->red, lo);
    } else {
        efl_host_batch hb;
        efl_host_batch_init(&hb);
        hb.dtype = c->dtype;
        hb.rows = n;
        hb.input[0] = xs;
        hb.grad[0] = writes_grad ? hg : NULL;
        hb.loss_elems[0] = elementwise ? he : NULL;
        hb.labels = y;
        hb.reduction = c->red;
        hb.normalizer = c->norm;
        hb.loss = &hl;
        st = efl_loss_run_host(L->loss, c->op, &hb);
    }

    dev_state(L, &after);
    const uint32_t sk1 = skipped(L);
    const int device_out = c->via == VIA_DEVICE || c->via == VIA_NORM_BUFFER;
    if (st == EFL_OK) {
        CHECK_MSG(ex.level != X_OVER, "%s: EFL_OK, expected %s", name, efl_status_string(ex.refuse));
        float *g = tu_xmalloc((nc ? nc : 1) * sizeof *g), *e = tu_xmalloc((nc ? nc : 1) * sizeof *e);
        decode(c->dtype, hg, nc, g);
        decode(c->dtype, he, nc, e);
        if (!elementwise) {
            CHECK_MSG(isfinite(hl), "%s: EFL_OK with a non-finite loss %g", name, hl);
            if (!L->loose && ex.level == X_OK)
                tu_cmp_loss(hl, ex.loss, "%s loss", name);
        }
        if (writes_grad) {
            CHECK_MSG(tu_all_finite_f32(g, nc), "%s: EFL_OK with a non-finite gradient", name);
            if (!L->loose && ex.level == X_OK)
                cmp_values(name, c->dtype, g, ex.grad, nc);
        }
        if (elementwise) {
            CHECK_MSG(tu_all_finite_f32(e, nc), "%s: EFL_OK with a non-finite element loss", name);
            if (!L->loose && ex.level == X_OK)
                cmp_values(name, c->dtype, e, ex.elems, nc);
        }
        if (c->op == EFL_OP_STEP && has_state(L)) {
            if (!L->loose && ex.level == X_OK)
                tu_cmp_state(&after, &ex.next, TU_STATE_RTOL_FEW, TU_STATE_RTOL_FEW, "%s", name);
            efl_ref_state_copy(&L->rs, &after); /* the next step starts from what was checked */
        } else {
            CHECK_MSG(tu_state_equal_bits(&before, &after), "%s: a call without an update changed the state", name);
        }
        CHECK_MSG(sk1 == sk0, "%s: EFL_OK but the skip count went %u -> %u", name, sk0, sk1);
        free(g);
        free(e);
    } else {
        CHECK_MSG(ex.level != X_OK, "%s: %s, expected EFL_OK", name, efl_status_string(st));
        CHECK_MSG(st == ex.refuse, "%s: refused with %s, expected %s", name, efl_status_string(st),
                  efl_status_string(ex.refuse));
        CHECK_MSG(tu_state_equal_bits(&before, &after), "%s: refused (%s) but the state changed", name,
                  efl_status_string(st));
        if (device_out) {
            CHECK_MSG(enqueue_refused == ex.by_host, "%s: refused %s, expected %s", name,
                      enqueue_refused ? "by the enqueue" : "on the device", ex.by_host ? "by the enqueue" : "on the device");
            if (!elementwise)
                CHECK_MSG(all_bytes(&hl, 4, TU_SENTINEL), "%s: refused but the loss buffer was written (%g)", name,
                          hl);
        } else {
            if (!elementwise)
                CHECK_MSG(all_bytes(&hl, 4, TU_SENTINEL), "%s: refused but loss_out was written (%g)", name, hl);
            if (writes_grad)
                CHECK_MSG(all_bytes(hg, nc * es, TU_SENTINEL), "%s: refused (%s) but the caller's gradient was written",
                          name, efl_status_string(st));
            if (elementwise)
                CHECK_MSG(all_bytes(he, nc * es, TU_SENTINEL),
                          "%s: refused (%s) but the caller's per-element loss was written", name,
                          efl_status_string(st));
        }
        /* a step the device refused is counted; compute's update waits for apply_statistics */
        const uint32_t counted = c->op == EFL_OP_STEP && !ex.by_host ? 1u : 0u;
        CHECK_MSG(sk1 - sk0 == counted, "%s: refused (%s): skip count went %u -> %u, expected +%u", name,
                  efl_status_string(st), sk0, sk1, counted);
    }
    check_invariant(L, &after, name);
    if (ex.level == X_EITHER && !L->loose)
        printf("  note: %s: %s (either allowed)\n", name, efl_status_string(st));
    expect_free(&ex);
    efl_ref_state_free(&before);
    efl_ref_state_free(&after);
    free(xs), free(xr), free(hg), free(he);
    return st;
}

static efl_status step_via(lx *L, const char *what, via_t via, efl_dtype d, efl_reduction red, float norm,
                           const float *x, const int32_t *y, size_t n, efl_status want)
{
    const call_t c = {EFL_OP_STEP, via, d, red, norm};
    return run_call(L, what, &c, x, y, n, want);
}

static efl_status forward_via(lx *L, const char *what, via_t via, efl_dtype d, efl_reduction red, float norm,
                              const float *x, const int32_t *y, size_t n, efl_status want)
{
    const call_t c = {EFL_OP_FORWARD, via, d, red, norm};
    return run_call(L, what, &c, x, y, n, want);
}

/* ------------------------------------------------------------- accumulate */
/* An accumulate of the gradient g (float values, stored as d) with grad_scale gs, through the
 * device call or the host convenience. */
static efl_status run_acc(lx *L, const char *what, int host, efl_dtype d, const float *g, const int32_t *y, size_t n,
                          float gs, efl_status want)
{
    const size_t C = L->C, nc = n * C, es = esz(d);
    char name[256];
    snprintf(name, sizeof name, "%s [accumulate %s grad_scale %g via %s]", what, dname(d), gs,
             host ? "host" : "device");
    unsigned char *gsto = tu_xmalloc((nc ? nc : 1) * es);
    float *gr = tu_xmalloc((nc ? nc : 1) * sizeof *gr);
    double *gd = tu_xmalloc((nc ? nc : 1) * sizeof *gd), *P = tu_xmalloc(C * sizeof *P),
           *N = tu_xmalloc(C * sizeof *N);
    encode(d, g, nc, gsto);
    decode(d, gsto, nc, gr);
    for (size_t k = 0; k < nc; ++k)
        gd[k] = gr[k];
    efl_ref_state next;
    if (!efl_ref_state_init(&next, (uint32_t)C))
        tu_fatal(__FILE__, __LINE__, "malloc");
    efl_ref_state_copy(&next, &L->rs);

    int level = X_OVER, by_host = 0;
    efl_status refuse = EFL_ERROR_OVERFLOW;
    volatile float inv = 1.0f / gs;
    size_t invalid = 0, nonfinite = 0;
    for (size_t i = 0; i < n; ++i) {
        int32_t col;
        const int kind = efl_ref_label_column(&L->rp, y[i], &col);
        invalid += kind < 0;
        for (size_t j = 0; kind == 1 && j < C; ++j)
            nonfinite += !isfinite(gr[i * C + j]);
    }
    if (!(gs > 0.0f) || !isfinite(gs) || !isfinite(inv)) {
        refuse = EFL_ERROR_INVALID_PARAMETER;
        by_host = 1;
    } else if (invalid) {
        refuse = EFL_ERROR_INVALID_LABEL;
    } else if (nonfinite) {
        refuse = EFL_ERROR_NONFINITE;
    } else {
        level = X_OK;
        efl_ref_grad_stats(&L->rp, gd, y, n, gs, P, N);
        /* the sums of |G| / grad_scale: beyond float, float pairs cannot hold them; float64
         * totals can (where the library scales in float64), so there either */
        for (size_t j = 0; j < C; ++j) {
            const int sl = worst(lvl(P[j], FLT_MAX), lvl(N[j], FLT_MAX));
            level = worst(level, L->pairs ? sl : soft(sl));
        }
        level = update_level(L, P, N, &next, level);
    }
    check_design(name, want, level, refuse);

    efl_ref_state before, after;
    dev_state(L, &before);
    const uint32_t sk0 = skipped(L);
    efl_status st;
    if (host) {
        st = efl_loss_accumulate_host(L->loss, d, gsto, y, n, gs);
    } else {
        cl_mem bg = tu_buf(&E, nc * es, nc ? gsto : NULL), by = tu_buf(&E, n * 4, n ? y : NULL);
        st = efl_enqueue_accumulate(L->loss, E.queue, d, bg, by, n, gs, 0, NULL, NULL);
        if (st == EFL_OK)
            st = efl_loss_query_status(L->loss, E.queue);
        REQUIRE_CL(clFinish(E.queue));
        tu_release(bg), tu_release(by);
    }
    dev_state(L, &after);
    const uint32_t sk1 = skipped(L);
    if (st == EFL_OK) {
        CHECK_MSG(level != X_OVER, "%s: EFL_OK, expected %s", name, efl_status_string(refuse));
        if (level == X_OK && !L->loose)
            tu_cmp_state(&after, &next, TU_STATE_RTOL_FEW, TU_STATE_RTOL_FEW, "%s", name);
        efl_ref_state_copy(&L->rs, &after);
    } else {
        CHECK_MSG(level != X_OK, "%s: %s, expected EFL_OK", name, efl_status_string(st));
        CHECK_MSG(st == refuse, "%s: refused with %s, expected %s", name, efl_status_string(st),
                  efl_status_string(refuse));
        CHECK_MSG(tu_state_equal_bits(&before, &after), "%s: refused (%s) but the state changed", name,
                  efl_status_string(st));
        const uint32_t counted = by_host ? 0u : 1u;
        CHECK_MSG(sk1 - sk0 == counted, "%s: refused (%s): skip count went %u -> %u, expected +%u", name,
                  efl_status_string(st), sk0, sk1, counted);
    }
    check_invariant(L, &after, name);
    if (level == X_EITHER)
        printf("  note: %s: %s (either allowed)\n", name, efl_status_string(st));
    efl_ref_state_free(&before), efl_ref_state_free(&after), efl_ref_state_free(&next);
    free(gsto), free(gr), free(gd), free(P), free(N);
    return st;
}

/* --------------------------------------------------------- apply_statistics */
/* efl_loss_apply_statistics (device: the return or, once it is EFL_OK, the query status) or its
 * host form, with sums the caller gives. want: the status of a refusal, or WANT_AUTO. */
static efl_status run_apply(lx *L, const char *what, int host, const double *stats, efl_status want)
{
    const size_t C = L->C;
    char name[256];
    snprintf(name, sizeof name, "%s [apply_statistics via %s]", what, host ? "host" : "device");
    efl_ref_state next;
    if (!efl_ref_state_init(&next, (uint32_t)C))
        tu_fatal(__FILE__, __LINE__, "malloc");
    efl_ref_state_copy(&next, &L->rs);
    int level = X_OK;
    efl_status refuse = EFL_ERROR_OVERFLOW;
    for (size_t i = 0; i < 2 * C + 1; ++i)
        if (!isfinite(stats[i]) || stats[i] < 0.0) {
            level = X_OVER;
            refuse = EFL_ERROR_INVALID_STATE;
        }
    if (level == X_OK && stats[2 * C] > 0.0) {
        level = X_OVER;
        refuse = want; /* the rank's own reason or REFUSED_BY_PEER: the case knows */
    }
    if (level == X_OK) {
        for (size_t j = 0; j < 2 * C; ++j)
            level = worst(level, L->pairs ? lvl(stats[j], FLT_MAX) : X_OK);
        level = update_level(L, stats, stats + C, &next, level);
    }
    check_design(name, want, level, refuse);
    efl_ref_state before, after;
    dev_state(L, &before);
    efl_status st;
    if (host) {
        st = efl_loss_apply_statistics_host(L->loss, stats);
    } else {
        st = efl_loss_apply_statistics(L->loss, E.queue, stats);
        if (st == EFL_OK)
            st = efl_loss_query_status(L->loss, E.queue);
    }
    dev_state(L, &after);
    if (st == EFL_OK) {
        CHECK_MSG(level != X_OVER, "%s: EFL_OK, expected %s", name, efl_status_string(refuse));
        if (level == X_OK)
            tu_cmp_state(&after, &next, 1e-12, 1e-12, "%s", name);
        efl_ref_state_copy(&L->rs, &after);
    } else {
        CHECK_MSG(level != X_OK, "%s: %s, expected EFL_OK", name, efl_status_string(st));
        CHECK_MSG(st == refuse, "%s: refused with %s, expected %s", name, efl_status_string(st),
                  efl_status_string(refuse));
        CHECK_MSG(tu_state_equal_bits(&before, &after), "%s: refused (%s) but the state changed", name,
                  efl_status_string(st));
    }
    check_invariant(L, &after, name);
    if (level == X_EITHER)
        printf("  note: %s: %s (either allowed)\n", name, efl_status_string(st));
    efl_ref_state_free(&before), efl_ref_state_free(&after), efl_ref_state_free(&next);
    return st;
}

/* ------------------------------------------------------------------ batches */
typedef struct {
    size_t n;
    uint32_t C;
    float *x;
    int32_t *y;
    float npos; /* positives (1 if none): a normal normalizer */
} batch_t;

static void batch_init(batch_t *b, size_t n, uint32_t C)
{
    b->n = n;
    b->C = C;
    b->x = tu_xmalloc((n * C != 0 ? n * C : 1) * sizeof(float));
    b->y = tu_xmalloc((n ? n : 1) * sizeof(int32_t));
    b->npos = 1.0f;
}

static void batch_free(batch_t *b)
{
    free(b->x);
    free(b->y);
}

/* Detector-like logits and long-tailed labels (a fifth of the rows positive). */
static void batch_random(batch_t *b, uint64_t seed)
{
    tu_rng r = {seed};
    tu_label_opts o = tu_default_label_opts();
    o.fg_fraction = 0.2;
    tu_make_logits(&r, b->x, b->n * b->C);
    const size_t np = tu_make_labels(&r, b->y, b->n, b->C, &o);
    b->npos = np ? (float)np : 1.0f;
}

/* Every logit v, every row background. */
static void batch_flat(batch_t *b, float v)
{
    for (size_t k = 0; k < b->n * b->C; ++k)
        b->x[k] = v;
    for (size_t i = 0; i < b->n; ++i)
        b->y[i] = 0;
    b->npos = 1.0f;
}

/* The reference's largest |grad| and |element| of a batch at loss_weight 1 (SUM), to size a
 * loss_weight that puts them where a case wants them. */
static void ref_max_at_unit_weight(const lx *L, const batch_t *b, efl_dtype d, double *maxg, double *maxe)
{
    efl_ref_params p = L->rp;
    p.loss_weight = 1.0;
    const size_t nc = b->n * b->C;
    float *xr = tu_xmalloc(nc * sizeof *xr);
    void *xs = tu_xmalloc(nc * esz(d));
    encode(d, b->x, nc, xs);
    decode(d, xs, nc, xr);
    double *g = tu_xmalloc(nc * sizeof *g), *e = tu_xmalloc(nc * sizeof *e);
    efl_ref_forward_backward_mode(&p, L->rs.g, xr, b->y, b->n, 1.0, EFL_REF_SUM, g, e, NULL, NULL, NULL);
    *maxg = tu_max_abs(g, nc);
    *maxe = tu_max_abs(e, nc);
    free(xr), free(xs), free(g), free(e);
}

/* =================================================================== cases */
/* 1. A tiny positive normalizer with mean reduction. */
static void case1_tiny_normalizer(void)
{
    static const via_t vias[] = {VIA_DEVICE, VIA_HOST, VIA_RUN_HOST, VIA_NORM_BUFFER};
    static const float norms[] = {FLT_MIN, 1e-38f, 1e-40f};
    for (size_t v = 0; v < 4; ++v) {
        char name[128];
        snprintf(name, sizeof name, "1 tiny normalizer via %s", VIA[vias[v]]);
        tu_begin(name);
        lx L;
        efl_loss_config cfg = cfg_of(37, EFL_MODE_EFL);
        lx_open_req(&L, &cfg);
        batch_t b;
        batch_init(&b, 48, 37);
        /* small losses (every logit -10, background; not below: the library flushes q^gamma
         * under e^-37 to 0 by design): FLT_MIN keeps everything finite */
        batch_flat(&b, -10.0f);
        step_via(&L, "tiny losses, normalizer FLT_MIN", vias[v], EFL_DTYPE_FLOAT32, EFL_REDUCTION_MEAN, FLT_MIN, b.x,
                 b.y, b.n, EFL_OK);
        lx_random_state(&L, 100 + v);
        for (size_t k = 0; k < 3; ++k) {
            char what[96];
            snprintf(what, sizeof what, "normalizer %g", (double)norms[k]);
            const efl_status want = k == 2 ? EFL_ERROR_INVALID_NORMALIZER : EFL_ERROR_OVERFLOW;
            batch_random(&b, 110 + k);
            step_via(&L, what, vias[v], EFL_DTYPE_FLOAT32, EFL_REDUCTION_MEAN, norms[k], b.x, b.y, b.n, want);
            forward_via(&L, what, vias[v], EFL_DTYPE_FLOAT32, EFL_REDUCTION_MEAN, norms[k], b.x, b.y, b.n, want);
            /* not stuck: the next normal step is computed from the untouched state */
            batch_random(&b, 120 + k);
            step_via(&L, "the next normal step", vias[v], EFL_DTYPE_FLOAT32, EFL_REDUCTION_MEAN, b.npos, b.x, b.y,
                     b.n, EFL_OK);
        }
        batch_free(&b);
        lx_close(&L, name);
        tu_end();
    }
}

/* 2. loss_weight near FLT_MAX: refused when a result overflows, else computed. */
static void case2_big_loss_weight(void)
{
    static const float weights[] = {1e38f, FLT_MAX};
    static const via_t vias[] = {VIA_DEVICE, VIA_HOST};
    for (size_t w = 0; w < 2; ++w)
        for (size_t v = 0; v < 2; ++v) {
            char name[128];
            snprintf(name, sizeof name, "2 loss_weight %g via %s", (double)weights[w], VIA[vias[v]]);
            tu_begin(name);
            lx L;
            efl_loss_config cfg = cfg_of(37, EFL_MODE_EFL);
            cfg.loss_weight = weights[w];
            lx_open_req(&L, &cfg);
            batch_t b;
            batch_init(&b, 32, 37);
            batch_random(&b, 200 + w);
            step_via(&L, "random batch", vias[v], EFL_DTYPE_FLOAT32, EFL_REDUCTION_SUM, 1.0f, b.x, b.y, b.n,
                     EFL_ERROR_OVERFLOW);
            forward_via(&L, "random batch", vias[v], EFL_DTYPE_FLOAT32, EFL_REDUCTION_MEAN, 1.0f, b.x, b.y, b.n,
                        EFL_ERROR_OVERFLOW);
            batch_flat(&b, -10.0f);
            step_via(&L, "tiny losses", vias[v], EFL_DTYPE_FLOAT32, EFL_REDUCTION_SUM, 1.0f, b.x, b.y, b.n, EFL_OK);
            batch_free(&b);
            lx_close(&L, name);

            /* one element at x = 0: loss ~0.13 loss_weight, gradient ~0.22 loss_weight */
            cfg.num_classes = 1;
            lx_open_req(&L, &cfg);
            batch_init(&b, 1, 1);
            batch_flat(&b, 0.0f);
            for (int s = 0; s < 3; ++s)
                step_via(&L, "one element at 0", vias[v], EFL_DTYPE_FLOAT32, EFL_REDUCTION_SUM, 1.0f, b.x, b.y, b.n,
                         s == 0 ? EFL_OK : WANT_AUTO);
            lx_close(&L, name);
            /* totals at 0.99 FLT_MAX plus ~0.22 loss_weight: beyond float pairs, fine in float64 */
            for (int pairs = 0; pairs < 2; ++pairs) {
                cfg.accumulate = pairs ? EFL_ACCUMULATE_FLOAT_PAIRS : EFL_ACCUMULATE_AUTO;
                lx_open_req(&L, &cfg);
                lx_flat_state(&L, 0.99 * FLT_MAX, 0.99 * FLT_MAX, 1.0);
                step_via(&L, pairs ? "totals past FLT_MAX (float pairs)" : "totals past FLT_MAX", vias[v],
                         EFL_DTYPE_FLOAT32, EFL_REDUCTION_SUM, 1.0f, b.x, b.y, b.n,
                         L.pairs ? EFL_ERROR_OVERFLOW : EFL_OK);
                lx_close(&L, name);
            }
            batch_free(&b);
            tu_end();
        }
}

/* 3. float16 / bfloat16 storage: beyond the type refused, just below it computed. */
static void case3_storage(void)
{
    static const via_t vias[] = {VIA_DEVICE, VIA_HOST, VIA_RUN_HOST};
    for (size_t v = 0; v < 3; ++v) {
        char name[128];
        snprintf(name, sizeof name, "3 float16 storage via %s", VIA[vias[v]]);
        tu_begin(name);
        batch_t b;
        batch_init(&b, 16, 7);
        batch_random(&b, 300);
        b.y[0] = 0;
        b.x[3] = 10.0f; /* a confident false positive: |grad| ~0.75 loss_weight, element ~7.5 */
        efl_loss_config cfg = cfg_of(7, EFL_MODE_EFL);
        cfg.loss_weight = 1e5f;
        lx L;
        lx_open_req(&L, &cfg);
        step_via(&L, "loss_weight 1e5", vias[v], EFL_DTYPE_FLOAT16, EFL_REDUCTION_SUM, 1.0f, b.x, b.y, b.n,
                 EFL_ERROR_OVERFLOW);
        step_via(&L, "loss_weight 1e5", vias[v], EFL_DTYPE_FLOAT16, EFL_REDUCTION_NONE, 1.0f, b.x, b.y, b.n,
                 EFL_ERROR_OVERFLOW);
        forward_via(&L, "loss_weight 1e5", vias[v], EFL_DTYPE_FLOAT16, EFL_REDUCTION_NONE, 1.0f, b.x, b.y, b.n,
                    EFL_ERROR_OVERFLOW);
        double maxg, maxe; /* from the initial state, which the losses below start from */
        ref_max_at_unit_weight(&L, &b, EFL_DTYPE_FLOAT16, &maxg, &maxe);
        /* float32 storage of the same: computed */
        step_via(&L, "loss_weight 1e5", vias[v], EFL_DTYPE_FLOAT32, EFL_REDUCTION_SUM, 1.0f, b.x, b.y, b.n, EFL_OK);
        lx_close(&L, name);
        /* the largest gradient at 65510 (rounds to 65504), 65530 (rounds to infinity), and the
         * elements of "none" at 60000 */
        static const double targets[] = {60000.0, 65510.0, 65530.0};
        for (int t = 0; t < 3; ++t) {
            cfg.loss_weight = (float)(targets[t] / maxg);
            lx_open_req(&L, &cfg);
            char what[96];
            snprintf(what, sizeof what, "largest gradient %g", targets[t]);
            step_via(&L, what, vias[v], EFL_DTYPE_FLOAT16, EFL_REDUCTION_SUM, 1.0f, b.x, b.y, b.n,
                     t < 2 ? EFL_OK : EFL_ERROR_OVERFLOW);
            lx_close(&L, name);
        }
        cfg.loss_weight = (float)(60000.0 / fmax(maxg, maxe));
        lx_open_req(&L, &cfg);
        forward_via(&L, "largest element 60000", vias[v], EFL_DTYPE_FLOAT16, EFL_REDUCTION_NONE, 1.0f, b.x, b.y, b.n,
                    EFL_OK);
        step_via(&L, "largest element 60000", vias[v], EFL_DTYPE_FLOAT16, EFL_REDUCTION_NONE, 1.0f, b.x, b.y, b.n,
                 EFL_OK);
        lx_close(&L, name);
        cfg.loss_weight = (float)(70000.0 / maxe);
        lx_open_req(&L, &cfg);
        forward_via(&L, "largest element 70000", vias[v], EFL_DTYPE_FLOAT16, EFL_REDUCTION_NONE, 1.0f, b.x, b.y, b.n,
                    EFL_ERROR_OVERFLOW);
        lx_close(&L, name);
        batch_free(&b);
        tu_end();

        snprintf(name, sizeof name, "3 bfloat16 storage via %s", VIA[vias[v]]);
        tu_begin(name);
        /* loss_weight 1e38 with w_j = 5 (g = 0): |grad| ~3.75e38 */
        batch_init(&b, 16, 7);
        batch_random(&b, 301);
        b.y[0] = 0;
        b.x[3] = 10.0f;
        cfg = cfg_of(7, EFL_MODE_EFL);
        cfg.loss_weight = 1e38f;
        lx_open_req(&L, &cfg);
        lx_flat_state(&L, 0.0, 1.0, 0.0);
        step_via(&L, "loss_weight 1e38, w_j 5", vias[v], EFL_DTYPE_BFLOAT16, EFL_REDUCTION_SUM, 1.0f, b.x, b.y, b.n,
                 EFL_ERROR_OVERFLOW);
        lx_close(&L, name);
        batch_free(&b);
        /* between bfloat16's limit and FLT_MAX: one background element at x = 1 with gamma_j 3,
         * w_j 1.5 and no alpha has gradient/loss 1.36, so the loss fits while the gradient is
         * 3.40e38 (bfloat16: infinity; float32: finite) or 3.38e38 (both finite) */
        batch_init(&b, 1, 1);
        batch_flat(&b, 1.0f);
        cfg = cfg_of(1, EFL_MODE_EFL);
        cfg.alpha = -1.0f;
        lx_open_req(&L, &cfg);
        lx_flat_state(&L, 0.875, 1.0, 0.875);
        ref_max_at_unit_weight(&L, &b, EFL_DTYPE_BFLOAT16, &maxg, &maxe);
        lx_close(&L, name);
        static const double band[] = {3.38e38, 3.40e38};
        for (int t = 0; t < 2; ++t)
            for (int d = 0; d < 2; ++d) {
                const efl_dtype dt = d ? EFL_DTYPE_BFLOAT16 : EFL_DTYPE_FLOAT32;
                cfg.loss_weight = (float)(band[t] / maxg);
                lx_open_req(&L, &cfg);
                lx_flat_state(&L, 0.875, 1.0, 0.875);
                char what[96];
                snprintf(what, sizeof what, "gradient %g", band[t]);
                step_via(&L, what, vias[v], dt, EFL_REDUCTION_SUM, 1.0f, b.x, b.y, b.n,
                         t == 1 && d == 1 ? EFL_ERROR_OVERFLOW : EFL_OK);
                lx_close(&L, name);
            }
        batch_free(&b);
        tu_end();
    }
}

/* 4. accumulate with large finite gradients and tiny grad_scale. */
static void case4_accumulate(void)
{
    for (int host = 0; host < 2; ++host) {
        char name[128];
        snprintf(name, sizeof name, "4 accumulate via %s", host ? "host" : "device");
        tu_begin(name);
        const uint32_t C = 7;
        const size_t n = 16;
        float *g = tu_xmalloc(n * C * sizeof *g);
        int32_t *y = tu_xmalloc(n * sizeof *y);
        for (size_t i = 0; i < n; ++i)
            y[i] = i < 8 ? 3 : 0; /* rows 0..7 positive for column 2 */
        for (int pairs = 0; pairs < 2; ++pairs) {
            efl_loss_config cfg = cfg_of(C, EFL_MODE_EFL);
            cfg.accumulate = pairs ? EFL_ACCUMULATE_FLOAT_PAIRS : EFL_ACCUMULATE_AUTO;
            lx L;
            lx_open_req(&L, &cfg);
            const char *tag = pairs ? " (float pairs)" : "";
            char what[128];
            /* 1e38 in 8 rows of column 2: P_2 = 8e38 */
            memset(g, 0, n * C * sizeof *g);
            for (size_t i = 0; i < 8; ++i)
                g[i * C + 2] = 1e38f;
            snprintf(what, sizeof what, "8 x 1e38%s", tag);
            run_acc(&L, what, host, EFL_DTYPE_FLOAT32, g, y, n, 1.0f, L.pairs ? EFL_ERROR_OVERFLOW : WANT_AUTO);
            /* one element 1e10 over grad_scale 1e-30: a statistic of 1e40 */
            memset(g, 0, n * C * sizeof *g);
            g[9 * C + 4] = 1e10f;
            snprintf(what, sizeof what, "1e10 / 1e-30%s", tag);
            run_acc(&L, what, host, EFL_DTYPE_FLOAT32, g, y, n, 1e-30f, L.pairs ? EFL_ERROR_OVERFLOW : WANT_AUTO);
            g[9 * C + 4] = 1e38f;
            snprintf(what, sizeof what, "1e38 / FLT_MIN%s", tag);
            run_acc(&L, what, host, EFL_DTYPE_FLOAT32, g, y, n, FLT_MIN, L.pairs ? EFL_ERROR_OVERFLOW : WANT_AUTO);
            /* 1 / grad_scale beyond float */
            g[9 * C + 4] = 1.0f;
            snprintf(what, sizeof what, "grad_scale 1e-40%s", tag);
            run_acc(&L, what, host, EFL_DTYPE_FLOAT32, g, y, n, 1e-40f, EFL_ERROR_INVALID_PARAMETER);
            /* small gradients over FLT_MIN: finite, computed */
            for (size_t k = 0; k < n * C; ++k)
                g[k] = 1e-30f * (float)(1 + k % 5);
            snprintf(what, sizeof what, "1e-30 / FLT_MIN%s", tag);
            run_acc(&L, what, host, EFL_DTYPE_FLOAT32, g, y, n, FLT_MIN, EFL_OK);
            /* float16 65504 over FLT_MIN */
            memset(g, 0, n * C * sizeof *g);
            g[10 * C + 1] = 65504.0f;
            snprintf(what, sizeof what, "float16 65504 / FLT_MIN%s", tag);
            run_acc(&L, what, host, EFL_DTYPE_FLOAT16, g, y, n, FLT_MIN, L.pairs ? EFL_ERROR_OVERFLOW : WANT_AUTO);
            /* totals at 3e38 plus 1e38: beyond float pairs, fine in float64 */
            lx_flat_state(&L, 3e38, 3e38, 1.0);
            memset(g, 0, n * C * sizeof *g);
            g[0 * C + 2] = 1e38f; /* P_2 */
            g[9 * C + 5] = 1e38f; /* N_5 */
            snprintf(what, sizeof what, "totals 3e38 + 1e38%s", tag);
            run_acc(&L, what, host, EFL_DTYPE_FLOAT32, g, y, n, 1.0f, L.pairs ? EFL_ERROR_OVERFLOW : EFL_OK);
            lx_close(&L, name);

            /* EQLv2's unclamped g = pos / (neg + 1e-10): 1e30 / 1e-10 = 1e40 */
            cfg = cfg_of(C, EFL_MODE_EQLV2);
            cfg.accumulate = pairs ? EFL_ACCUMULATE_FLOAT_PAIRS : EFL_ACCUMULATE_AUTO;
            lx_open_req(&L, &cfg);
            memset(g, 0, n * C * sizeof *g);
            g[0 * C + 2] = 1e30f;
            snprintf(what, sizeof what, "EQLv2 g = 1e40%s", tag);
            run_acc(&L, what, host, EFL_DTYPE_FLOAT32, g, y, n, 1.0f, L.pairs ? EFL_ERROR_OVERFLOW : EFL_OK);
            lx_close(&L, name);
        }
        free(g);
        free(y);
        tu_end();
    }
}

/* 5. Data parallel: sums beyond the totals, and a batch whose statistics overflow. */
static void case5_data_parallel(void)
{
    for (int host = 0; host < 2; ++host) {
        char name[128];
        snprintf(name, sizeof name, "5 data parallel apply via %s", host ? "host" : "device");
        tu_begin(name);
        const uint32_t C = 7;
        double *stats = tu_xmalloc(EFL_STATISTICS_LENGTH(C) * sizeof *stats);
        for (int pairs = 0; pairs < 2; ++pairs) {
            efl_loss_config cfg = cfg_of(C, EFL_MODE_EFL);
            cfg.accumulate = pairs ? EFL_ACCUMULATE_FLOAT_PAIRS : EFL_ACCUMULATE_AUTO;
            lx L;
            lx_open_req(&L, &cfg);
            const double lim = L.total_limit;
            /* sums within range first: computed */
            memset(stats, 0, EFL_STATISTICS_LENGTH(C) * sizeof *stats);
            for (uint32_t j = 0; j < C; ++j) {
                stats[j] = 0.25 * (j + 1);
                stats[C + j] = 2.0 + j;
            }
            run_apply(&L, "small sums", host, stats, EFL_OK);
            /* a sum beyond float (finite as a double) on a fresh total */
            memset(stats, 0, EFL_STATISTICS_LENGTH(C) * sizeof *stats);
            stats[C + 3] = 1e39;
            run_apply(&L, pairs ? "N = 1e39 (float pairs)" : "N = 1e39", host, stats,
                      L.pairs ? EFL_ERROR_OVERFLOW : EFL_OK);
            /* totals at 0.9 of the accumulators' range plus 0.5 of it */
            lx_flat_state(&L, 0.9 * lim, 0.9 * lim, 1.0);
            memset(stats, 0, EFL_STATISTICS_LENGTH(C) * sizeof *stats);
            stats[2] = 0.5 * lim;
            run_apply(&L, pairs ? "pos 0.9 max + 0.5 max (float pairs)" : "pos 0.9 max + 0.5 max", host, stats,
                      EFL_ERROR_OVERFLOW);
            memset(stats, 0, EFL_STATISTICS_LENGTH(C) * sizeof *stats);
            stats[C + 4] = 0.5 * lim;
            run_apply(&L, pairs ? "neg 0.9 max + 0.5 max (float pairs)" : "neg 0.9 max + 0.5 max", host, stats,
                      EFL_ERROR_OVERFLOW);
            lx_close(&L, name);

            /* EQLv2: g = 1e300 / 1e-10 beyond float64 (float pairs: 1e30 / 1e-10) */
            cfg = cfg_of(C, EFL_MODE_EQLV2);
            cfg.accumulate = pairs ? EFL_ACCUMULATE_FLOAT_PAIRS : EFL_ACCUMULATE_AUTO;
            lx_open_req(&L, &cfg);
            memset(stats, 0, EFL_STATISTICS_LENGTH(C) * sizeof *stats);
            stats[1] = L.pairs ? 1e30 : 1e300;
            run_apply(&L, "EQLv2 g beyond the totals", host, stats, EFL_ERROR_OVERFLOW);
            lx_close(&L, name);
        }
        free(stats);
        tu_end();
    }

    /* compute on a batch whose loss total overflows, or whose statistics do */
    for (int dev = 0; dev < 2; ++dev) {
        const via_t via = dev ? VIA_DEVICE : VIA_RUN_HOST;
        char name[128];
        snprintf(name, sizeof name, "5 data parallel compute via %s", VIA[via]);
        tu_begin(name);
        for (int variant = 0; variant < 4; ++variant) {
            lx L;
            batch_t b;
            efl_loss_config cfg;
            const char *what;
            efl_status want;
            if (variant == 0) { /* a loss total beyond float */
                cfg = cfg_of(37, EFL_MODE_EFL);
                cfg.loss_weight = 1e38f;
                lx_open_req(&L, &cfg);
                batch_init(&b, 32, 37);
                batch_random(&b, 500);
                what = "loss total beyond float";
                want = EFL_ERROR_OVERFLOW;
            } else if (variant == 3) { /* a NaN logit in a valid row */
                cfg = cfg_of(37, EFL_MODE_EFL);
                lx_open_req(&L, &cfg);
                batch_init(&b, 32, 37);
                batch_random(&b, 501);
                b.y[4] = 0;
                b.x[4 * 37 + 9] = NAN;
                what = "NaN logit";
                want = EFL_ERROR_NONFINITE;
            } else { /* C = 1, 64 rows at x = 1 (gradient/loss 1.36): statistics 1.2 FLT_MAX, loss 0.88 */
                cfg = cfg_of(1, EFL_MODE_EFL);
                cfg.alpha = -1.0f;
                cfg.accumulate = variant == 2 ? EFL_ACCUMULATE_FLOAT_PAIRS : EFL_ACCUMULATE_AUTO;
                lx_open_req(&L, &cfg);
                lx_flat_state(&L, 0.875, 1.0, 0.875);
                batch_init(&b, 64, 1);
                batch_flat(&b, 1.0f);
                double maxg, maxe;
                ref_max_at_unit_weight(&L, &b, EFL_DTYPE_FLOAT32, &maxg, &maxe);
                efl_loss_destroy(L.loss);
                efl_ref_state_free(&L.rs);
                cfg.loss_weight = (float)(1.2 * FLT_MAX / (64.0 * maxg));
                lx_open_req(&L, &cfg);
                lx_flat_state(&L, 0.875, 1.0, 0.875);
                what = variant == 2 ? "statistics beyond float (float pairs)" : "statistics beyond float";
                want = L.pairs ? EFL_ERROR_OVERFLOW : WANT_AUTO;
            }
            const call_t c = {EFL_OP_COMPUTE, via, EFL_DTYPE_FLOAT32, EFL_REDUCTION_SUM, 1.0f};
            const efl_status st = run_call(&L, what, &c, b.x, b.y, b.n, want);
            double *stats = tu_xmalloc(EFL_STATISTICS_LENGTH(L.C) * sizeof *stats);
            CHECK_STATUS(efl_loss_read_statistics_host(L.loss, stats), EFL_OK);
            const double flag = stats[2 * L.C];
            CHECK_MSG(flag == (st == EFL_OK ? 0.0 : 1.0), "%s: compute returned %s, statistics flag %g", what,
                      efl_status_string(st), flag);
            /* a refused rank's statistics still go into the ranks' sum: finite, >= 0 */
            size_t badstats = 0;
            for (size_t k = 0; k < 2 * (size_t)L.C; ++k)
                badstats += !(isfinite(stats[k]) && stats[k] >= 0.0);
            CHECK_MSG(badstats == 0, "%s: compute %s, %zu statistics not finite and >= 0 (first P %g)", what,
                      efl_status_string(st), badstats, stats[0]);
            if (st == EFL_OK) { /* the statistics themselves, against the reference */
                double *P = tu_xmalloc(L.C * sizeof *P), *N = tu_xmalloc(L.C * sizeof *N);
                efl_ref_forward_backward_mode(&L.rp, L.rs.g, b.x, b.y, b.n, 1.0, EFL_REF_SUM, NULL, NULL, P, N, NULL);
                tu_cmp_f64("compute P", stats, P, L.C, 2e-6, 1e-12 * tu_max_abs(P, L.C));
                tu_cmp_f64("compute N", stats + L.C, N, L.C, 2e-6, 1e-12 * tu_max_abs(N, L.C));
                free(P), free(N);
            }
            /* every rank applies what it read: a refused batch is refused here with its reason */
            if (badstats == 0)
                run_apply(&L, what, 1, stats, st == EFL_OK ? WANT_AUTO : st);
            free(stats);
            batch_free(&b);
            lx_close(&L, name);
        }
        tu_end();
    }
}

/* 6. State writes with pos_neg out of [0, 1] (EFL); EQLv2 takes any finite pos_neg >= 0. */
static uint64_t fnv1a64(const unsigned char *p, size_t n)
{
    uint64_t h = 0xCBF29CE484222325ull;
    for (size_t i = 0; i < n; ++i) {
        h ^= p[i];
        h *= 0x100000001B3ull;
    }
    return h;
}

static void put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; ++i)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; --i)
        v = v << 8 | p[i];
    return v;
}

/* One state write through one path; `accept` says whether it must land. */
static void write_case(lx *L, int path, const double *pos, const double *neg, const double *g, int accept,
                       const char *what)
{
    static const char *const paths[] = {"write_state", "write_state_host", "import_checkpoint"};
    efl_ref_state before, after;
    dev_state(L, &before);
    efl_status st;
    if (path == 0) {
        st = efl_loss_write_state(L->loss, E.queue, pos, neg, g);
    } else if (path == 1) {
        st = efl_loss_write_state_host(L->loss, pos, neg, g);
    } else {
        /* a checkpoint of this loss with the values patched in, checksum recomputed (format v1) */
        size_t size = 0;
        REQUIRE_OK(efl_loss_export_checkpoint(L->loss, E.queue, NULL, &size));
        unsigned char *buf = tu_xmalloc(size);
        REQUIRE_OK(efl_loss_export_checkpoint(L->loss, E.queue, buf, &size));
        if (size != 52 + 36 * (size_t)L->C + 8 || get_le64(buf + size - 8) != fnv1a64(buf, size - 8))
            tu_fatal(__FILE__, __LINE__, "checkpoint format is not version 1 as this test knows it");
        const double *src[3] = {pos, neg, g};
        for (size_t k = 0; k < 3; ++k)
            for (uint32_t j = 0; j < L->C; ++j) {
                uint64_t bits;
                memcpy(&bits, &src[k][j], 8);
                put_le64(buf + 52 + 8 * (k * L->C + j), bits);
                memset(buf + 52 + 24 * (size_t)L->C + 4 * (k * L->C + j), 0, 4); /* residual 0 */
            }
        put_le64(buf + size - 8, fnv1a64(buf, size - 8));
        st = efl_loss_import_checkpoint(L->loss, E.queue, buf, size);
        free(buf);
    }
    dev_state(L, &after);
    if (accept) {
        CHECK_MSG(st == EFL_OK, "%s via %s: %s, expected EFL_OK", what, paths[path], efl_status_string(st));
        if (st == EFL_OK) {
            tu_cmp_f64("written pos_neg", after.g, g, L->C, 1e-14, 0.0);
            efl_ref_state_copy(&L->rs, &after);
        }
    } else {
        /* import_checkpoint: INVALID_STATE, or CHECKPOINT_CORRUPT as for other bad values */
        const int ok = st == EFL_ERROR_INVALID_STATE || (path == 2 && st == EFL_ERROR_CHECKPOINT_CORRUPT);
        CHECK_MSG(ok, "%s via %s: %s, expected %s", what, paths[path], efl_status_string(st),
                  path == 2 ? "invalid state (or checkpoint corrupt)" : "invalid state");
        if (st == EFL_ERROR_CHECKPOINT_CORRUPT)
            printf("  note: %s via %s: %s\n", what, paths[path], efl_status_string(st));
        CHECK_MSG(tu_state_equal_bits(&before, &after), "%s via %s: refused but the state changed", what,
                  paths[path]);
    }
    check_invariant(L, &after, what);
    efl_ref_state_free(&before);
    efl_ref_state_free(&after);
}

static void case6_state_writes(void)
{
    const uint32_t C = 7;
    double pos[7], neg[7], g[7];
    for (int path = 0; path < 3; ++path) {
        char name[128];
        static const char *const paths[] = {"write_state", "write_state_host", "import_checkpoint"};
        snprintf(name, sizeof name, "6 state writes via %s", paths[path]);
        tu_begin(name);
        lx L;
        efl_loss_config cfg = cfg_of(C, EFL_MODE_EFL);
        lx_open_req(&L, &cfg);
        lx_random_state(&L, 600);
        for (uint32_t j = 0; j < C; ++j) {
            pos[j] = 0.1 * (j + 1);
            neg[j] = 2.0 + j;
            g[j] = 0.5;
        }
        static const double bad[] = {1.0 + 0x1p-52, 1.5, 100.0, 1e300, -1e-300, -1.0};
        for (size_t k = 0; k < sizeof bad / sizeof *bad; ++k) {
            char what[96];
            snprintf(what, sizeof what, "EFL pos_neg %.17g", bad[k]);
            g[3] = bad[k];
            write_case(&L, path, pos, neg, g, 0, what);
        }
        static const double good[] = {0.0, 0.5, 1.0};
        for (size_t k = 0; k < 3; ++k) {
            char what[96];
            snprintf(what, sizeof what, "EFL pos_neg %g", good[k]);
            for (uint32_t j = 0; j < C; ++j)
                g[j] = good[k];
            write_case(&L, path, pos, neg, g, 1, what);
        }
        /* an EQLv2 state (g = 100) into an EFL loss */
        for (uint32_t j = 0; j < C; ++j)
            g[j] = 100.0, pos[j] = neg[j] = 0.0;
        write_case(&L, path, pos, neg, g, 0, "an EQLv2 initial state into EFL");
        lx_close(&L, name);

        cfg = cfg_of(C, EFL_MODE_EQLV2);
        lx_open_req(&L, &cfg);
        static const double eq_good[] = {100.0, 1e6, 0.5, 0.0};
        for (size_t k = 0; k < 4; ++k) {
            char what[96];
            snprintf(what, sizeof what, "EQLv2 pos_neg %g", eq_good[k]);
            for (uint32_t j = 0; j < C; ++j)
                g[j] = eq_good[k], pos[j] = 0.5, neg[j] = 1.0;
            write_case(&L, path, pos, neg, g, 1, what);
        }
        g[2] = -1.0;
        write_case(&L, path, pos, neg, g, 0, "EQLv2 pos_neg -1");
        lx_close(&L, name);
        tu_end();
    }
}

/* 7. Finite logits of any magnitude; NaN and Inf. */
static const float EXTREMES[] = {1e30f,  -1e30f, 1e38f,  -1e38f, FLT_MAX, -FLT_MAX, 1e-40f, -1e-40f,
                                 0.0f,   -0.0f,  FLT_MIN, -FLT_MIN, 88.8f, -88.8f,  1e4f,   -1e4f};

static void case7_extreme_logits(void)
{
    static const via_t vias[] = {VIA_DEVICE, VIA_HOST, VIA_RUN_HOST};
    for (size_t v = 0; v < 3; ++v) {
        char name[128];
        snprintf(name, sizeof name, "7 extreme logits via %s", VIA[vias[v]]);
        tu_begin(name);
        const uint32_t C = 7;
        lx L;
        efl_loss_config cfg = cfg_of(C, EFL_MODE_EFL);
        lx_open_req(&L, &cfg);
        batch_t b;
        batch_init(&b, 16, C);
        /* one of each extreme on a positive column and on a negative one (a huge one on its
         * correct side): the largest terms 0.25 FLT_MAX and 0.25e38 (w_j = 1), the total fits */
        batch_random(&b, 700);
        for (size_t i = 0; i < 16; ++i) {
            const float e = EXTREMES[i];
            b.y[i] = (int32_t)(i % C) + 1;
            b.x[i * C + (i % C)] = e;                        /* the positive column */
            const int huge = fabsf(e) >= 1e38f;
            b.x[i * C + (i + 1) % C] = huge ? -fabsf(e) : e; /* a negative column */
        }
        b.npos = 16.0f;
        step_via(&L, "one of each, total within float", vias[v], EFL_DTYPE_FLOAT32, EFL_REDUCTION_SUM, 1.0f, b.x, b.y,
                 b.n, EFL_OK);
        lx_close(&L, name);
        /* one confident false positive at FLT_MAX: a term of 0.75 FLT_MAX, the total fits */
        lx_open_req(&L, &cfg);
        batch_random(&b, 702);
        b.y[0] = 0;
        b.x[0 * C + 3] = FLT_MAX;
        b.x[1 * C + 4] = -FLT_MAX;
        step_via(&L, "one FLT_MAX false positive", vias[v], EFL_DTYPE_FLOAT32, EFL_REDUCTION_SUM, 1.0f, b.x, b.y, b.n,
                 EFL_OK);
        lx_close(&L, name);
        /* several: each 0.75 FLT_MAX, the total beyond float */
        lx_open_req(&L, &cfg);
        batch_random(&b, 701);
        for (size_t i = 0; i < 4; ++i) {
            b.y[i] = 0;
            b.x[i * C + 2] = FLT_MAX;
        }
        step_via(&L, "4 x FLT_MAX false positives", vias[v], EFL_DTYPE_FLOAT32, EFL_REDUCTION_SUM, 1.0f, b.x, b.y,
                 b.n, EFL_ERROR_OVERFLOW);
        forward_via(&L, "4 x FLT_MAX false positives", vias[v], EFL_DTYPE_FLOAT32, EFL_REDUCTION_MEAN, 1.0f, b.x,
                    b.y, b.n, EFL_ERROR_OVERFLOW);
        /* the total beyond float, the mean within it (normalizer 100): either */
        b.x[0 * C + 2] = b.x[1 * C + 2] = 0.0f;
        forward_via(&L, "2 x FLT_MAX false positives, normalizer 100", vias[v], EFL_DTYPE_FLOAT32,
                    EFL_REDUCTION_MEAN, 100.0f, b.x, b.y, b.n, WANT_AUTO);
        /* under "none" every element fits float (the total is no output): either */
        b.x[0 * C + 2] = b.x[1 * C + 2] = FLT_MAX;
        step_via(&L, "4 x FLT_MAX false positives", vias[v], EFL_DTYPE_FLOAT32, EFL_REDUCTION_NONE, 1.0f, b.x, b.y,
                 b.n, WANT_AUTO);
        /* a fuzz over extremes, f32 and bfloat16 (FLT_MAX rounds to infinity there: NONFINITE) */
        for (int round = 0; round < 6; ++round) {
            tu_rng r = {710 + (uint64_t)round};
            batch_random(&b, 720 + round);
            for (size_t k = 0; k < b.n * C; ++k)
                if (tu_uniform(&r) < 0.15)
                    b.x[k] = EXTREMES[tu_below(&r, sizeof EXTREMES / sizeof *EXTREMES)];
            char what[64];
            snprintf(what, sizeof what, "fuzz %d", round);
            step_via(&L, what, vias[v], round & 1 ? EFL_DTYPE_BFLOAT16 : EFL_DTYPE_FLOAT32,
                     round & 2 ? EFL_REDUCTION_MEAN : EFL_REDUCTION_SUM, b.npos, b.x, b.y, b.n, WANT_AUTO);
        }
        /* NaN and infinities in a valid row: NONFINITE; NaN in an ignored row: fine */
        static const float nonfinite[] = {NAN, INFINITY, -INFINITY};
        for (int k = 0; k < 3; ++k) {
            batch_random(&b, 730 + k);
            b.y[5] = 2;
            b.x[5 * C + 4] = nonfinite[k];
            step_via(&L, k == 0 ? "NaN" : k == 1 ? "+Inf" : "-Inf", vias[v], EFL_DTYPE_FLOAT32, EFL_REDUCTION_MEAN,
                     b.npos, b.x, b.y, b.n, EFL_ERROR_NONFINITE);
        }
        batch_random(&b, 740);
        b.y[5] = -1;
        b.x[5 * C + 4] = NAN;
        step_via(&L, "NaN in an ignored row", vias[v], EFL_DTYPE_FLOAT32, EFL_REDUCTION_MEAN, b.npos, b.x, b.y, b.n,
                 EFL_OK);
        /* float16: its own extremes (+-65504) */
        batch_random(&b, 750);
        for (size_t i = 0; i < 4; ++i) {
            b.x[i * C + 1] = i & 1 ? 65504.0f : -65504.0f;
            b.x[i * C + 5] = i & 2 ? 6e-8f : -0.0f;
        }
        step_via(&L, "float16 extremes", vias[v], EFL_DTYPE_FLOAT16, EFL_REDUCTION_MEAN, b.npos, b.x, b.y, b.n,
                 WANT_AUTO);
        batch_free(&b);
        lx_close(&L, name);
        tu_end();
    }
}

/* 8. Reduction "none": a refused host step or forward leaves the per-element array alone. */
static void case8_none_refused(void)
{
    static const via_t vias[] = {VIA_HOST, VIA_RUN_HOST};
    for (size_t v = 0; v < 2; ++v) {
        char name[128];
        snprintf(name, sizeof name, "8 reduction none refused via %s", VIA[vias[v]]);
        tu_begin(name);
        const uint32_t C = 37;
        lx L;
        efl_loss_config cfg = cfg_of(C, EFL_MODE_EFL);
        lx_open_req(&L, &cfg);
        batch_t b;
        batch_init(&b, 24, C);
        batch_random(&b, 800);
        b.x[3 * C + 7] = NAN;
        b.y[3] = 0;
        step_via(&L, "NaN", vias[v], EFL_DTYPE_FLOAT32, EFL_REDUCTION_NONE, 1.0f, b.x, b.y, b.n, EFL_ERROR_NONFINITE);
        forward_via(&L, "NaN", vias[v], EFL_DTYPE_FLOAT32, EFL_REDUCTION_NONE, 1.0f, b.x, b.y, b.n,
                    EFL_ERROR_NONFINITE);
        batch_random(&b, 801);
        b.y[7] = (int32_t)C + 5;
        step_via(&L, "invalid label", vias[v], EFL_DTYPE_FLOAT32, EFL_REDUCTION_NONE, 1.0f, b.x, b.y, b.n,
                 EFL_ERROR_INVALID_LABEL);
        lx_close(&L, name);
        /* float16 elements beyond the type */
        cfg.loss_weight = 1e4f;
        lx_open_req(&L, &cfg);
        batch_random(&b, 802);
        b.y[0] = 0;
        b.x[5] = 10.0f; /* element 7.5e4 */
        step_via(&L, "float16 element 7.5e4", vias[v], EFL_DTYPE_FLOAT16, EFL_REDUCTION_NONE, 1.0f, b.x, b.y, b.n,
                 EFL_ERROR_OVERFLOW);
        forward_via(&L, "float16 element 7.5e4", vias[v], EFL_DTYPE_FLOAT16, EFL_REDUCTION_NONE, 1.0f, b.x, b.y, b.n,
                    EFL_ERROR_OVERFLOW);
        /* and the loss goes on */
        batch_random(&b, 803);
        step_via(&L, "next", vias[v], EFL_DTYPE_FLOAT16, EFL_REDUCTION_NONE, 1.0f, b.x, b.y, b.n, WANT_AUTO);
        batch_free(&b);
        lx_close(&L, name);
        tu_end();
    }
}

/* 9. The zero-copy host step writes into the caller's gradient: a refused one must not. */
static void case9_zero_copy(void)
{
    for (int staging = 0; staging < 2; ++staging) {
        char name[128];
        snprintf(name, sizeof name, "9 host step refused, caller's gradient untouched (%s)",
                 staging ? "EFL_HOST_STAGING=1" : "zero copy");
        tu_begin(name);
        if (staging)
            setenv("EFL_HOST_STAGING", "1", 1);
        else
            unsetenv("EFL_HOST_STAGING");
        const uint32_t C = 80;
        lx L;
        efl_loss_config cfg = cfg_of(C, EFL_MODE_EFL);
        lx_open_req(&L, &cfg);
        batch_t b;
        batch_init(&b, 40, C);
        for (int dt = 0; dt < 2; ++dt) {
            const efl_dtype d = dt ? EFL_DTYPE_FLOAT16 : EFL_DTYPE_FLOAT32;
            batch_random(&b, 900 + dt);
            b.y[11] = 0;
            b.x[11 * C + 17] = NAN;
            step_via(&L, "NaN logit", VIA_HOST, d, EFL_REDUCTION_MEAN, b.npos, b.x, b.y, b.n, EFL_ERROR_NONFINITE);
            batch_random(&b, 910 + dt);
            step_via(&L, "normalizer FLT_MIN", VIA_HOST, d, EFL_REDUCTION_MEAN, FLT_MIN, b.x, b.y, b.n,
                     EFL_ERROR_OVERFLOW);
            step_via(&L, "sum", VIA_HOST, d, EFL_REDUCTION_SUM, 1.0f, b.x, b.y, b.n, EFL_OK);
        }
        batch_free(&b);
        lx_close(&L, name);
        unsetenv("EFL_HOST_STAGING");
        tu_end();
    }
}

/* 10. n = 0: an update from the unchanged totals (pos_neg 1 -> 0, EQLv2 100 -> 0), loss 0, and
 * the data-parallel path gives the same state. */
static void case10_empty_batch(void)
{
    static const via_t vias[] = {VIA_DEVICE, VIA_HOST, VIA_RUN_HOST};
    for (int m = 0; m < 2; ++m) {
        const efl_mode mode = m ? EFL_MODE_EQLV2 : EFL_MODE_EFL;
        for (size_t v = 0; v < 3; ++v) {
            char name[128];
            snprintf(name, sizeof name, "10 n = 0 %s via %s", m ? "EQLv2" : "EFL", VIA[vias[v]]);
            tu_begin(name);
            lx L;
            efl_loss_config cfg = cfg_of(37, mode);
            lx_open_req(&L, &cfg);
            float x[1] = {0.0f};
            int32_t y[1] = {0};
            forward_via(&L, "forward n = 0", vias[v], EFL_DTYPE_FLOAT32, EFL_REDUCTION_MEAN, 1.0f, x, y, 0, EFL_OK);
            step_via(&L, "step n = 0", vias[v], EFL_DTYPE_FLOAT32, EFL_REDUCTION_MEAN, 1.0f, x, y, 0, EFL_OK);
            efl_ref_state s;
            dev_state(&L, &s);
            size_t zeros = 0;
            for (uint32_t j = 0; j < L.C; ++j)
                zeros += s.g[j] == 0.0 && s.pos[j] == 0.0 && s.neg[j] == 0.0;
            CHECK_MSG(zeros == L.C, "step n = 0 on a fresh loss: %zu of %u classes at pos_neg 0 (first %g)", zeros,
                      L.C, s.g[0]);
            efl_ref_state_free(&s);
            /* a written state: pos / (neg + 1e-10) again */
            lx_random_state(&L, 1000 + v);
            step_via(&L, "step n = 0 on a written state", vias[v], EFL_DTYPE_FLOAT32, EFL_REDUCTION_SUM, 1.0f, x, y, 0,
                     EFL_OK);
            lx_close(&L, name);
            tu_end();
        }
        char name[128];
        snprintf(name, sizeof name, "10 n = 0 %s data parallel", m ? "EQLv2" : "EFL");
        tu_begin(name);
        lx A, B;
        efl_loss_config cfg = cfg_of(37, mode);
        lx_open_req(&A, &cfg);
        lx_open_req(&B, &cfg);
        float x[1] = {0.0f};
        int32_t y[1] = {0};
        const call_t c = {EFL_OP_COMPUTE, VIA_RUN_HOST, EFL_DTYPE_FLOAT32, EFL_REDUCTION_MEAN, 1.0f};
        run_call(&A, "compute n = 0", &c, x, y, 0, EFL_OK);
        double *stats = tu_xmalloc(EFL_STATISTICS_LENGTH(37) * sizeof *stats);
        CHECK_STATUS(efl_loss_read_statistics_host(A.loss, stats), EFL_OK);
        CHECK_MSG(tu_max_abs(stats, EFL_STATISTICS_LENGTH(37)) == 0.0, "compute n = 0: statistics not all 0");
        run_apply(&A, "apply n = 0", 1, stats, EFL_OK);
        step_via(&B, "step n = 0", VIA_HOST, EFL_DTYPE_FLOAT32, EFL_REDUCTION_MEAN, 1.0f, x, y, 0, EFL_OK);
        efl_ref_state sa, sb;
        dev_state(&A, &sa);
        dev_state(&B, &sb);
        CHECK_MSG(tu_state_equal_bits(&sa, &sb), "n = 0: data parallel state differs from a single step's");
        efl_ref_state_free(&sa), efl_ref_state_free(&sb);
        free(stats);
        lx_close(&A, name);
        lx_close(&B, name);
        tu_end();
    }
}

/* 11. Configurations: non-finite factors refused at creation; accepted ones keep the invariant. */
static void case11_configs(void)
{
    tu_begin("11 creation refuses non-finite factors");
    typedef struct {
        float gamma, s;
    } gs_t;
    static const gs_t refused[] = {{1e-38f, 8.0f}, {3e38f, 1e38f}, {FLT_MAX, FLT_MAX}, {1e-45f, 1.0f}, {1e-30f, 1e10f}};
    for (size_t k = 0; k < sizeof refused / sizeof *refused; ++k) {
        efl_loss_config cfg = cfg_of(7, EFL_MODE_EFL);
        cfg.gamma = refused[k].gamma;
        cfg.scale_factor = refused[k].s;
        efl_loss *l = NULL;
        const efl_status st = efl_loss_create(E.ctx, &cfg, &l);
        CHECK_MSG(st == EFL_ERROR_INVALID_PARAMETER || st == EFL_ERROR_INVALID_GAMMA,
                  "gamma_b %g, s %g (w_j up to %g): %s, expected invalid parameter or gamma", (double)cfg.gamma,
                  (double)cfg.scale_factor, ((double)cfg.gamma + cfg.scale_factor) / cfg.gamma, efl_status_string(st));
        CHECK(l == NULL || st == EFL_OK);
        efl_loss_destroy(st == EFL_OK ? l : NULL);
    }
    tu_end();

    tu_begin("11 accepted extreme configurations keep the invariant");
    typedef struct {
        efl_mode mode;
        float gamma, alpha, s, lw, mu;
    } xcfg;
    static const xcfg cfgs[] = {
        {EFL_MODE_EFL, 1e-30f, 0.25f, 8.0f, 1.0f, 0.8f},  {EFL_MODE_EFL, 1e-37f, 0.25f, 8.0f, 1.0f, 0.8f},
        {EFL_MODE_EFL, 1e30f, 0.25f, 1e30f, 1.0f, 0.8f},  {EFL_MODE_EFL, 2.0f, 1e30f, 8.0f, 1.0f, 0.8f},
        {EFL_MODE_EFL, 2.0f, -1.0f, 0.0f, -3.0f, 0.8f},   {EFL_MODE_EFL, 50.0f, 0.25f, 1e4f, 1e30f, 0.8f},
        {EFL_MODE_EFL, 2.0f, 0.25f, 8.0f, 1e-38f, 0.8f},  {EFL_MODE_FOCAL, 1e-30f, 0.25f, 0.0f, 1.0f, 0.8f},
        {EFL_MODE_FOCAL, 1e30f, 0.25f, 0.0f, 1e38f, 0.8f}, {EFL_MODE_EQLV2, 1e38f, 1e38f, 8.0f, 1.0f, -1e38f},
        {EFL_MODE_EQLV2, 12.0f, FLT_MAX, 8.0f, 1e10f, 0.8f}, {EFL_MODE_EQLV2, 12.0f, -1e30f, 8.0f, 1.0f, 1e30f},
    };
    const uint32_t C = 7;
    batch_t b;
    batch_init(&b, 24, C);
    for (size_t k = 0; k < sizeof cfgs / sizeof *cfgs; ++k) {
        efl_loss_config cfg = cfg_of(C, cfgs[k].mode);
        cfg.gamma = cfgs[k].gamma;
        cfg.alpha = cfgs[k].alpha;
        cfg.scale_factor = cfgs[k].s;
        cfg.loss_weight = cfgs[k].lw;
        cfg.mu = cfgs[k].mu;
        lx L;
        const efl_status st = lx_open(&L, &cfg);
        if (st != EFL_OK) {
            printf("  note: config %zu refused at creation: %s\n", k, efl_status_string(st));
            continue;
        }
        L.loose = 1;
        for (int s = 0; s < 4; ++s) {
            tu_rng r = {1100 + 10 * k + (uint64_t)s};
            batch_random(&b, 1100 + 10 * k + (uint64_t)s);
            if (s >= 2)
                for (size_t q = 0; q < b.n * C; ++q)
                    if (tu_uniform(&r) < 0.1)
                        b.x[q] = EXTREMES[tu_below(&r, sizeof EXTREMES / sizeof *EXTREMES)];
            char what[96];
            snprintf(what, sizeof what, "config %zu step %d", k, s);
            const efl_status got = step_via(&L, what, s & 1 ? VIA_HOST : VIA_DEVICE, EFL_DTYPE_FLOAT32,
                                            s & 2 ? EFL_REDUCTION_SUM : EFL_REDUCTION_MEAN, b.npos, b.x, b.y, b.n,
                                            WANT_AUTO);
            CHECK_MSG(got == EFL_OK || got == EFL_ERROR_OVERFLOW, "%s: %s on finite inputs", what,
                      efl_status_string(got));
        }
        lx_close(&L, "extreme config");
    }
    batch_free(&b);
    tu_end();
}

int main(void)
{
    tu_env_init(&E);
    case1_tiny_normalizer();
    case2_big_loss_weight();
    case3_storage();
    case4_accumulate();
    case5_data_parallel();
    case6_state_writes();
    case7_extreme_logits();
    case8_none_refused();
    case9_zero_copy();
    case10_empty_batch();
    case11_configs();
    tu_env_free(&E);
    return tu_exit_code();
}
