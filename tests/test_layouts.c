/*
 * The detection-head layouts of efl_enqueue_batch / efl_loss_run_host: per-level outputs
 * [B, A*C, H, W] with channel a*C + c (anchor-major) or c*A + a (class-major), read in place,
 * must be the loss of the concatenated row-major matrix [N, C] with
 *     row = b * R + level_offset + (h*W + w) * A + a,   R = sum over levels of H*W*A
 * (efl.h). This file builds the head outputs and the rows matrix with its own permutation code,
 * then compares the head layout with efl_enqueue_step (etc.) on the rows matrix and with the
 * float64 reference:
 *  - loss: equal within float rounding (the summation order differs): 2e-6 relative;
 *  - gradient (and NONE's elements): bitwise equal after un-permuting (same element, same
 *    arithmetic);
 *  - state: 1e-6 relative to the rows-layout loss; the reference's tolerances otherwise.
 * For FORWARD, STEP, ACCUMULATE (input[] = a gradient in head layout), REDUCTION_NONE (loss_elems
 * per level), float16 storage, the host batch, and the shapes that do not fit.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

static tu_env E;

typedef struct {
    uint32_t B, A, C, L;
    uint32_t H[EFL_MAX_LEVELS], W[EFL_MAX_LEVELS];
} shape;

static size_t rows_per_image(const shape *s)
{
    size_t R = 0;
    for (uint32_t l = 0; l < s->L; ++l)
        R += (size_t)s->H[l] * s->W[l] * s->A;
    return R;
}
static size_t level_offset(const shape *s, uint32_t level)
{
    size_t off = 0;
    for (uint32_t l = 0; l < level; ++l)
        off += (size_t)s->H[l] * s->W[l] * s->A;
    return off;
}
static size_t level_elems(const shape *s, uint32_t l) { return (size_t)s->B * s->A * s->C * s->H[l] * s->W[l]; }

/* Element (b, a, c, h, w) of level l: its index in the level's [B, A*C, H, W] buffer, and its
 * index in the rows matrix. */
static size_t head_index(const shape *s, int class_major, uint32_t l, uint32_t b, uint32_t a, uint32_t c, uint32_t h,
                         uint32_t w)
{
    const size_t ch = class_major ? (size_t)c * s->A + a : (size_t)a * s->C + c;
    return (((size_t)b * s->A * s->C + ch) * s->H[l] + h) * s->W[l] + w;
}
static size_t rows_index(const shape *s, uint32_t l, uint32_t b, uint32_t a, uint32_t c, uint32_t h, uint32_t w)
{
    const size_t row = (size_t)b * rows_per_image(s) + level_offset(s, l) + ((size_t)h * s->W[l] + w) * s->A + a;
    return row * s->C + c;
}

/* to_head = 1: rows -> head levels; 0: head levels -> rows. esize: bytes per element. */
static void permute(const shape *s, int class_major, int to_head, void *rows, void *const head[], size_t esize)
{
    for (uint32_t l = 0; l < s->L; ++l)
        for (uint32_t b = 0; b < s->B; ++b)
            for (uint32_t a = 0; a < s->A; ++a)
                for (uint32_t c = 0; c < s->C; ++c)
                    for (uint32_t h = 0; h < s->H[l]; ++h)
                        for (uint32_t w = 0; w < s->W[l]; ++w) {
                            char *r = (char *)rows + rows_index(s, l, b, a, c, h, w) * esize;
                            char *d = (char *)head[l] + head_index(s, class_major, l, b, a, c, h, w) * esize;
                            if (to_head)
                                memcpy(d, r, esize);
                            else
                                memcpy(r, d, esize);
                        }
}

static void read_state_any(efl_loss *L, efl_mode mode, efl_ref_state *s)
{
    if (mode != EFL_MODE_FOCAL)
        tu_read_state(&E, L, s);
}

/* The two losses' states differ in the last bits after a step (their sums run in another
 * order), which moves gamma_j and so the next gradient by an ulp: give the rows-layout loss
 * exactly the head-layout loss's state before each comparison that expects identical bits. */
static void sync_state(efl_loss *from, efl_loss *to, uint32_t C, int host)
{
    efl_ref_state a, b;
    if (!efl_ref_state_init(&a, C) || !efl_ref_state_init(&b, C))
        tu_fatal(__FILE__, __LINE__, "malloc");
    if (host) {
        REQUIRE_OK(efl_loss_read_state_host(from, a.pos, a.neg, a.g));
        REQUIRE_OK(efl_loss_write_state_host(to, a.pos, a.neg, a.g));
        REQUIRE_OK(efl_loss_read_state_host(to, b.pos, b.neg, b.g));
    } else {
        tu_read_state(&E, from, &a);
        tu_write_state(&E, to, &a);
        tu_read_state(&E, to, &b);
    }
    CHECK_MSG(tu_state_equal_bits(&a, &b), "state copied from one loss to another is not bitwise the same");
    efl_ref_state_free(&a);
    efl_ref_state_free(&b);
}

/* One tensor in the head layout: a host copy of every level and, for the device, a buffer per
 * level; esize bytes an element. */
typedef struct {
    const shape *s;
    int class_major;
    size_t esize;
    void *host[EFL_MAX_LEVELS];
    cl_mem buf[EFL_MAX_LEVELS]; /* NULL without a device */
} head_data;

static void head_alloc(head_data *h, const shape *s, int class_major, size_t esize, int device)
{
    memset(h, 0, sizeof *h);
    h->s = s;
    h->class_major = class_major;
    h->esize = esize;
    for (uint32_t l = 0; l < s->L; ++l) {
        h->host[l] = tu_xmalloc(level_elems(s, l) * esize);
        if (device)
            h->buf[l] = tu_buf(&E, level_elems(s, l) * esize, NULL);
    }
}

static void head_free(head_data *h)
{
    for (uint32_t l = 0; l < h->s->L; ++l) {
        free(h->host[l]);
        tu_release(h->buf[l]);
    }
}

/* rows [N, C] -> the levels: permuted on the host, then written to the buffers (if any) */
static void head_put(head_data *h, const void *rows)
{
    permute(h->s, h->class_major, 1, (void *)rows, h->host, h->esize);
    for (uint32_t l = 0; l < h->s->L; ++l)
        if (h->buf[l])
            tu_write(&E, h->buf[l], level_elems(h->s, l) * h->esize, h->host[l]);
}

/* the buffers (if any) read back, then the levels un-permuted into rows [N, C] */
static void head_get(head_data *h, void *rows)
{
    for (uint32_t l = 0; l < h->s->L; ++l)
        if (h->buf[l])
            tu_read(&E, h->buf[l], level_elems(h->s, l) * h->esize, h->host[l]);
    permute(h->s, h->class_major, 0, rows, h->host, h->esize);
}

static void head_fill(head_data *h, unsigned char byte)
{
    for (uint32_t l = 0; l < h->s->L; ++l)
        tu_fill(&E, h->buf[l], level_elems(h->s, l) * h->esize, byte);
}

/* Makes b (an efl_batch or an efl_host_batch: the same field names) a head batch of the shape and
 * layout of `in` (a head_data *): input[l] = in->field[l], grad[l] = g->field[l] (g may be NULL),
 * where field is buf (device) or host. */
#define SET_HEAD_BATCH(b, in, g, field)                                                                         \
    do {                                                                                                           \
        const shape *s_ = (in)->s;                                                                                 \
        const head_data *g_ = (g); /* a variable: no "address always true" warning for &x */                       \
        (b).layout = (in)->class_major ? EFL_LAYOUT_CLASS_MAJOR : EFL_LAYOUT_ANCHOR_MAJOR;                         \
        (b).images = s_->B;                                                                                        \
        (b).anchors = s_->A;                                                                                       \
        (b).levels = s_->L;                                                                                        \
        for (uint32_t l_ = 0; l_ < s_->L; ++l_) {                                                                  \
            (b).height[l_] = s_->H[l_];                                                                            \
            (b).width[l_] = s_->W[l_];                                                                             \
            (b).input[l_] = (in)->field[l_];                                                                       \
            (b).grad[l_] = g_ ? g_->field[l_] : NULL;                                                              \
        }                                                                                                          \
    } while (0)

/* The device head batch: input[] from `in`'s buffers, grad[] from `grad`'s (may be NULL); the
 * rest filled in by the caller. */
static efl_batch head_batch(const head_data *in, const head_data *grad)
{
    efl_batch b;
    efl_batch_init(&b);
    SET_HEAD_BATCH(b, in, grad, buf);
    return b;
}

/* REDUCTION_NONE in the rows layout: elements to `elems`, gradient to `grad`. */
static efl_batch rows_none_batch(size_t N, efl_dtype dtype, cl_mem x, cl_mem y, cl_mem grad, cl_mem elems)
{
    efl_batch b = tu_rows_batch(N, x, y, grad, NULL, 1.0f);
    b.dtype = dtype;
    b.loss_elems[0] = elems;
    b.reduction = EFL_REDUCTION_NONE;
    return b;
}

/* The same op through both losses' batches; both must be accepted and run. */
static int run_both(efl_op op, efl_loss *Lh, const efl_batch *hb, efl_loss *Lr, const efl_batch *rb)
{
    int ok = CHECK_STATUS(efl_enqueue_batch(Lh, E.queue, op, hb, 0, NULL, NULL), EFL_OK);
    ok &= CHECK_STATUS(efl_enqueue_batch(Lr, E.queue, op, rb, 0, NULL, NULL), EFL_OK);
    ok &= CHECK_STATUS(efl_loss_query_status(Lh, E.queue), EFL_OK);
    ok &= CHECK_STATUS(efl_loss_query_status(Lr, E.queue), EFL_OK);
    return ok;
}

/* What a comparison runs on: the shape's rows (N) and elements (nc), two losses of one config (Lh
 * fed the head layout, Lr the rows layout), the reference's parameters and state (rs, from the
 * mode's start), room to read both losses' states (dh, dr), and the random inputs' generator and
 * label options (20% foreground rows). */
typedef struct {
    uint32_t C;
    size_t N, nc;
    efl_loss *Lh, *Lr;
    efl_ref_params rp;
    efl_ref_state rs, dh, dr;
    tu_rng rng;
    tu_label_opts lo;
} fixture;

/* cfg NULL: efl_loss_config_init's defaults */
static void fixture_init(fixture *f, const shape *s, const efl_loss_config *cfg, uint64_t seed)
{
    efl_loss_config def;
    if (!cfg) {
        efl_loss_config_init(&def, s->C);
        cfg = &def;
    }
    f->C = s->C;
    f->N = (size_t)s->B * rows_per_image(s);
    f->nc = f->N * s->C;
    f->Lh = tu_loss(&E, cfg);
    f->Lr = tu_loss(&E, cfg);
    f->rp = tu_ref_params(cfg);
    if (!efl_ref_state_init_mode(&f->rs, s->C, (efl_ref_mode)cfg->mode) || !efl_ref_state_init(&f->dh, s->C) ||
        !efl_ref_state_init(&f->dr, s->C))
        tu_fatal(__FILE__, __LINE__, "malloc");
    f->rng.s = seed;
    f->lo = tu_default_label_opts();
    f->lo.fg_fraction = 0.2;
}

/* The next random inputs: logits x [nc] and labels y [N]. Returns the number of positive rows (1 at
 * least): the usual MEAN normalizer. */
static float fixture_inputs(fixture *f, float *x, int32_t *y)
{
    tu_make_logits(&f->rng, x, f->nc);
    const size_t np = tu_make_labels(&f->rng, y, f->N, f->C, &f->lo);
    return np ? (float)np : 1.0f;
}

static void fixture_free(fixture *f)
{
    efl_loss_destroy(f->Lh), efl_loss_destroy(f->Lr);
    efl_ref_state_free(&f->rs), efl_ref_state_free(&f->dh), efl_ref_state_free(&f->dr);
}

/* REDUCTION_NONE through the head batch hb (elements into he's levels) and the rows batch rb
 * from the same state (copied across first if sync; focal mode has none): elements and gradient
 * must be bitwise equal after un-permuting. eh, gh receive the head's, un-permuted (nc each). */
static void none_head_vs_rows(const char *tag, fixture *F, efl_batch *hb, head_data *he, head_data *hg,
                              const efl_batch *rb, int sync, void *eh, void *gh)
{
    const size_t bytes = F->nc * he->esize;
    void *er = tu_xmalloc(bytes), *gr = tu_xmalloc(bytes);
    char w[96];
    for (uint32_t l = 0; l < he->s->L; ++l)
        hb->loss_elems[l] = he->buf[l];
    hb->reduction = EFL_REDUCTION_NONE;
    hb->loss = NULL;
    if (sync)
        sync_state(F->Lh, F->Lr, he->s->C, 0);
    run_both(EFL_OP_STEP, F->Lh, hb, F->Lr, rb);
    tu_read(&E, rb->loss_elems[0], bytes, er);
    tu_read(&E, rb->grad[0], bytes, gr);
    head_get(he, eh);
    head_get(hg, gh);
    snprintf(w, sizeof w, "%sNONE elements head (un-permuted) vs rows", tag);
    tu_bits_equal(w, eh, er, F->nc, he->esize);
    snprintf(w, sizeof w, "%sNONE grad head (un-permuted) vs rows", tag);
    tu_bits_equal(w, gh, gr, F->nc, he->esize);
    free(er), free(gr);
}

typedef struct {
    const char *name;
    shape s;
    int class_major;
    efl_mode mode;
    int zero_based;
    uint64_t seed;
    int normalizer_buffer; /* MEAN's normalizer from a device buffer */
} layout_case;

static void run_case(const layout_case *lc)
{
    char name[192];
    snprintf(name, sizeof name, "%s: %s, B=%u A=%u C=%u, %u levels, %s", lc->name,
             lc->class_major ? "class-major" : "anchor-major", lc->s.B, lc->s.A, lc->s.C, lc->s.L,
             lc->mode == EFL_MODE_EQLV2 ? "EQLv2" : (lc->mode == EFL_MODE_FOCAL ? "focal" : "EFL"));
    tu_begin(name);
    const shape *s = &lc->s;
    const uint32_t C = s->C;
    efl_loss_config cfg;
    efl_loss_config_init_mode(&cfg, C, lc->mode);
    cfg.labels = lc->zero_based ? EFL_LABELS_ZERO_BASED : EFL_LABELS_REFERENCE;
    fixture F;
    fixture_init(&F, s, &cfg, lc->seed);
    F.lo.ignore_fraction = 0.05;
    F.lo.zero_based = lc->zero_based;
    const size_t N = F.N, nc = F.nc;
    efl_ref_state before;
    if (!efl_ref_state_init(&before, C))
        tu_fatal(__FILE__, __LINE__, "malloc");

    float *x = tu_xmalloc(nc * 4), *gr = tu_xmalloc(nc * 4), *gh = tu_xmalloc(nc * 4), *eh = tu_xmalloc(nc * 4);
    int32_t *y = tu_xmalloc(N * 4);
    double *rgrad = tu_xmalloc(nc * 8), *relems = tu_xmalloc(nc * 8), *P = tu_xmalloc(C * 8),
           *Ns = tu_xmalloc(C * 8), *dgr = tu_xmalloc(nc * 8);
    head_data hx, hg, he; /* logits, gradient, NONE's elements */
    head_alloc(&hx, s, lc->class_major, 4, 1);
    head_alloc(&hg, s, lc->class_major, 4, 1);
    head_alloc(&he, s, lc->class_major, 4, 1);
    cl_mem bx = tu_buf(&E, nc * 4, NULL), by = tu_buf(&E, N * 4, NULL), bg = tu_buf(&E, nc * 4, NULL),
           be = tu_buf(&E, nc * 4, NULL), blh = tu_buf(&E, 4, NULL), blr = tu_buf(&E, 4, NULL);

    efl_batch hb = head_batch(&hx, &hg);
    hb.labels = by;
    hb.loss = blh;
    /* entries past `levels` are not looked at: junk there */
    for (uint32_t l = s->L; l < EFL_MAX_LEVELS; ++l) {
        hb.height[l] = 1000;
        hb.width[l] = 1000;
        hb.input[l] = by;
        hb.grad[l] = NULL;
    }
    cl_mem bn = tu_buf(&E, 4, NULL);
    if (lc->normalizer_buffer)
        hb.normalizer_buffer = bn;

    int ok = 1;
    /* 3 steps; 2 under EFL_TEST_SMALL (the simulator), where tu_rows() shrinks */
    const int steps = tu_rows(1000) < 1000 ? 2 : 3;
    for (int step = 0; step < steps && ok; ++step) {
        const float npos = fixture_inputs(&F, x, y);
        const float norm = lc->mode == EFL_MODE_EQLV2 ? (float)N : npos;
        tu_write(&E, bx, nc * 4, x);
        tu_write(&E, by, N * 4, y);
        head_put(&hx, x);
        head_fill(&hg, TU_SENTINEL);
        hb.reduction = EFL_REDUCTION_MEAN;
        hb.normalizer = lc->normalizer_buffer ? 1.0f : norm;
        tu_write(&E, bn, 4, &norm);
        if (lc->mode != EFL_MODE_FOCAL)
            sync_state(F.Lh, F.Lr, C, 0);
        read_state_any(F.Lh, lc->mode, &before);

        /* forward: the same loss, state untouched */
        float fh = NAN, fr = NAN, lh = NAN, lr = NAN;
        ok &= CHECK_STATUS(efl_enqueue_batch(F.Lh, E.queue, EFL_OP_FORWARD, &hb, 0, NULL, NULL), EFL_OK);
        ok &= CHECK_STATUS(efl_enqueue_forward(F.Lr, E.queue, bx, by, N, norm, EFL_REDUCTION_MEAN, blr, 0, NULL, NULL),
                           EFL_OK);
        ok &= CHECK_STATUS(efl_loss_query_status(F.Lh, E.queue), EFL_OK);
        tu_read(&E, blh, 4, &fh);
        tu_read(&E, blr, 4, &fr);
        if (lc->mode != EFL_MODE_FOCAL) {
            tu_read_state(&E, F.Lh, &F.dh);
            ok &= CHECK_MSG(tu_state_equal_bits(&F.dh, &before), "step %d: head-layout forward changed the state",
                            step);
        }

        /* the step */
        ok &= CHECK_STATUS(efl_enqueue_batch(F.Lh, E.queue, EFL_OP_STEP, &hb, 0, NULL, NULL), EFL_OK);
        ok &= CHECK_STATUS(efl_enqueue_step(F.Lr, E.queue, bx, by, N, norm, EFL_REDUCTION_MEAN, blr, bg, 0, NULL, NULL),
                           EFL_OK);
        ok &= CHECK_STATUS(efl_loss_query_status(F.Lh, E.queue), EFL_OK);
        ok &= CHECK_STATUS(efl_loss_query_status(F.Lr, E.queue), EFL_OK);
        tu_read(&E, blh, 4, &lh);
        tu_read(&E, blr, 4, &lr);
        tu_read(&E, bg, nc * 4, gr);
        head_get(&hg, gh);
        read_state_any(F.Lh, lc->mode, &F.dh);
        read_state_any(F.Lr, lc->mode, &F.dr);

        efl_ref_result fres, res;
        efl_ref_forward_backward_mode(&F.rp, F.rs.g, x, y, N, norm, EFL_REF_MEAN, NULL, NULL, NULL, NULL, &fres);
        efl_ref_step_mode(&F.rp, &F.rs, x, y, N, norm, EFL_REF_MEAN, rgrad, NULL, &res);
        ok &= CHECK(res.positives > 0 && res.loss > 0.0 && tu_count_nonzero(rgrad, nc) > nc / 2);

        char w[96];
        double d;
        snprintf(w, sizeof w, "step %d forward loss head vs rows", step);
        d = fr;
        ok &= tu_cmp_f32(w, &fh, &d, 1, 2e-6, 0.0);
        ok &= tu_cmp_loss(fh, fres.loss, "step %d forward loss vs reference", step);
        snprintf(w, sizeof w, "step %d loss head vs rows", step);
        d = lr;
        ok &= tu_cmp_f32(w, &lh, &d, 1, 2e-6, 0.0);
        int grad_bitwise = 1;
        if (lc->normalizer_buffer) {
            /* the head batch divides by the buffer's value on the device, the rows step by the host
             * float: the gradients may differ by an ulp or two */
            for (size_t k = 0; k < nc; ++k)
                dgr[k] = gr[k];
            snprintf(w, sizeof w, "step %d grad head (normalizer buffer) vs rows", step);
            ok &= tu_cmp_f32(w, gh, dgr, nc, 5e-7, 1e-12 * tu_max_abs(dgr, nc));
            grad_bitwise = 0;
        }
        ok &= tu_cmp_loss(lh, res.loss, "step %d loss vs reference", step);
        snprintf(w, sizeof w, "step %d grad head (un-permuted) vs rows", step);
        if (grad_bitwise)
            ok &= tu_bits_equal(w, gh, gr, nc, 4);
        ok &= tu_cmp_grad(gh, rgrad, nc, "step %d grad vs reference", step);
        if (lc->mode != EFL_MODE_FOCAL) {
            ok &= tu_cmp_state(&F.dh, &F.dr, 1e-6, 1e-6, "step %d state head vs rows", step);
            ok &= tu_cmp_state(&F.dh, &F.rs, TU_STATE_RTOL_FEW, TU_STATE_RTOL, "step %d state vs reference", step);
        }
    }

    /* ACCUMULATE: a caller's gradient in head layout (scaled by 4, as an AMP loss scale) */
    if (lc->mode != EFL_MODE_FOCAL && ok) {
        for (size_t k = 0; k < nc; ++k)
            x[k] = (float)(0.02 * tu_normal(&F.rng));
        tu_write(&E, bg, nc * 4, x);
        head_put(&hg, x);
        efl_batch ab = head_batch(&hg, NULL);
        ab.labels = by;
        ab.grad_scale = 4.0f;
        sync_state(F.Lh, F.Lr, C, 0);
        CHECK_STATUS(efl_enqueue_batch(F.Lh, E.queue, EFL_OP_ACCUMULATE, &ab, 0, NULL, NULL), EFL_OK);
        CHECK_STATUS(efl_enqueue_accumulate(F.Lr, E.queue, EFL_DTYPE_FLOAT32, bg, by, N, 4.0f, 0, NULL, NULL), EFL_OK);
        CHECK_STATUS(efl_loss_query_status(F.Lh, E.queue), EFL_OK);
        CHECK_STATUS(efl_loss_query_status(F.Lr, E.queue), EFL_OK);
        tu_read_state(&E, F.Lh, &F.dh);
        tu_read_state(&E, F.Lr, &F.dr);
        for (size_t k = 0; k < nc; ++k)
            rgrad[k] = x[k];
        efl_ref_grad_stats(&F.rp, rgrad, y, N, 4.0, P, Ns);
        efl_ref_update_mode(&F.rp, &F.rs, P, Ns);
        tu_cmp_state(&F.dh, &F.dr, 1e-6, 1e-6, "accumulate: head vs rows");
        tu_cmp_state(&F.dh, &F.rs, TU_STATE_RTOL_FEW, TU_STATE_RTOL, "accumulate: vs reference");
    }

    /* REDUCTION_NONE: loss_elems per level vs the rows layout's elements */
    if (ok) {
        fixture_inputs(&F, x, y);
        tu_write(&E, bx, nc * 4, x);
        tu_write(&E, by, N * 4, y);
        head_put(&hx, x);
        head_fill(&he, TU_SENTINEL);
        tu_fill(&E, be, nc * 4, TU_SENTINEL);
        efl_batch rb = rows_none_batch(N, EFL_DTYPE_FLOAT32, bx, by, bg, be);
        none_head_vs_rows("", &F, &hb, &he, &hg, &rb, lc->mode != EFL_MODE_FOCAL, eh, gh);
        efl_ref_result res;
        efl_ref_step_mode(&F.rp, &F.rs, x, y, N, 1.0, EFL_REF_NONE, rgrad, relems, &res);
        tu_cmp_f32("NONE elements vs reference", eh, relems, nc, TU_LOSS_RTOL,
                   TU_GRAD_ATOL_REL * tu_max_abs(relems, nc));
        tu_cmp_grad(gh, rgrad, nc, "NONE grad vs reference");
        if (lc->mode != EFL_MODE_FOCAL) {
            tu_read_state(&E, F.Lh, &F.dh);
            tu_read_state(&E, F.Lr, &F.dr);
            tu_cmp_state(&F.dh, &F.dr, 1e-6, 1e-6, "NONE: head vs rows");
            tu_cmp_state(&F.dh, &F.rs, TU_STATE_RTOL_FEW, TU_STATE_RTOL, "NONE: vs reference");
        }
    }

    head_free(&hx), head_free(&hg), head_free(&he);
    tu_release(bx), tu_release(by), tu_release(bg), tu_release(be), tu_release(blh), tu_release(blr), tu_release(bn);
    fixture_free(&F);
    efl_ref_state_free(&before);
    free(x), free(gr), free(gh), free(eh), free(y), free(rgrad), free(relems), free(P), free(Ns), free(dgr);
    tu_end();
}

/* float16 storage of the head outputs and gradients vs efl_enqueue_step_typed on the rows. */
static void run_half(const shape *s, int class_major, efl_dtype dtype)
{
    char name[128];
    const int bf = dtype == EFL_DTYPE_BFLOAT16;
    uint16_t (*to16)(float) = bf ? tu_f32_to_bf16 : tu_f32_to_f16;
    float (*from16)(uint16_t) = bf ? tu_bf16_to_f32 : tu_f16_to_f32;
    snprintf(name, sizeof name, "%s storage: %s, B=%u A=%u C=%u", bf ? "bfloat16" : "float16",
             class_major ? "class-major" : "anchor-major", s->B, s->A, s->C);
    tu_begin(name);
    const uint32_t C = s->C;
    fixture F;
    fixture_init(&F, s, NULL, 4242);
    const size_t N = F.N, nc = F.nc;
    float *x = tu_xmalloc(nc * 4), *xr = tu_xmalloc(nc * 4);
    uint16_t *x16 = tu_xmalloc(nc * 2), *gr = tu_xmalloc(nc * 2), *gh = tu_xmalloc(nc * 2);
    int32_t *y = tu_xmalloc(N * 4);
    head_data hx, hg;
    head_alloc(&hx, s, class_major, 2, 1);
    head_alloc(&hg, s, class_major, 2, 1);
    efl_batch hb = head_batch(&hx, &hg);
    hb.dtype = dtype;
    cl_mem bx = tu_buf(&E, nc * 2, NULL), by = tu_buf(&E, N * 4, NULL), bg = tu_buf(&E, nc * 2, NULL),
           blh = tu_buf(&E, 4, NULL), blr = tu_buf(&E, 4, NULL);
    hb.labels = by;
    hb.loss = blh;
    for (int step = 0; step < 2; ++step) {
        const float norm = fixture_inputs(&F, x, y);
        for (size_t k = 0; k < nc; ++k) {
            x16[k] = to16(x[k]);
            xr[k] = from16(x16[k]);
        }
        tu_write(&E, bx, nc * 2, x16);
        tu_write(&E, by, N * 4, y);
        head_put(&hx, x16);
        hb.normalizer = norm;
        sync_state(F.Lh, F.Lr, C, 0);
        float lh = NAN, lr = NAN;
        CHECK_STATUS(efl_enqueue_batch(F.Lh, E.queue, EFL_OP_STEP, &hb, 0, NULL, NULL), EFL_OK);
        CHECK_STATUS(efl_enqueue_step_typed(F.Lr, E.queue, dtype, bx, by, N, norm, EFL_REDUCTION_MEAN, blr, bg,
                                            0, NULL, NULL),
                     EFL_OK);
        CHECK_STATUS(efl_loss_query_status(F.Lh, E.queue), EFL_OK);
        CHECK_STATUS(efl_loss_query_status(F.Lr, E.queue), EFL_OK);
        tu_read(&E, blh, 4, &lh);
        tu_read(&E, blr, 4, &lr);
        tu_read(&E, bg, nc * 2, gr);
        head_get(&hg, gh);
        tu_read_state(&E, F.Lh, &F.dh);
        tu_read_state(&E, F.Lr, &F.dr);
        efl_ref_result res;
        efl_ref_step_mode(&F.rp, &F.rs, xr, y, N, norm, EFL_REF_MEAN, NULL, NULL, &res);
        double d = lr;
        tu_cmp_f32("16-bit loss head vs rows", &lh, &d, 1, 2e-6, 0.0);
        tu_cmp_f32("16-bit loss vs reference", &lh, &res.loss, 1, 1e-4, 0.0);
        tu_bits_equal("16-bit grad head (un-permuted) vs rows", gh, gr, nc, 2);
        tu_cmp_state(&F.dh, &F.dr, 1e-6, 1e-6, "16-bit state head vs rows");
        tu_cmp_state(&F.dh, &F.rs, TU_STATE_RTOL_FEW, TU_STATE_RTOL, "16-bit state vs reference");
    }
    /* NONE: 16-bit elements per level vs the rows layout's (bitwise after un-permuting) */
    {
        uint16_t *eh = tu_xmalloc(nc * 2);
        cl_mem be = tu_buf(&E, nc * 2, NULL);
        head_data he;
        head_alloc(&he, s, class_major, 2, 1);
        efl_batch rb = rows_none_batch(N, dtype, bx, by, bg, be);
        none_head_vs_rows("16-bit ", &F, &hb, &he, &hg, &rb, 1, eh, gh);
        /* the elements are the reference's, rounded to the storage type; the absolute term as for
         * gradients elsewhere: the kernels flush q^gamma below e^-37 to 0 (no denormal products),
         * which bfloat16, with float32's range, would otherwise see */
        double *relems = tu_xmalloc(nc * 8);
        float *ef = tu_xmalloc(nc * 4);
        efl_ref_result res;
        efl_ref_step_mode(&F.rp, &F.rs, xr, y, N, 1.0, EFL_REF_NONE, NULL, relems, &res);
        size_t far = 0, worst = 0;
        const double atol = TU_GRAD_ATOL_REL * tu_max_abs(relems, nc);
        for (size_t k = 0; k < nc; ++k) {
            ef[k] = from16(eh[k]);
            const double u = bf ? tu_bf16_ulp(relems[k]) : tu_f16_ulp(relems[k]);
            if (!(fabs(ef[k] - relems[k]) <= u + 1e-6 * fabs(relems[k]) + atol)) {
                if (!far)
                    worst = k;
                far++;
            }
        }
        CHECK_MSG(far == 0, "16-bit NONE: %zu element(s) more than 1 ulp from the reference; first [%zu] %.6g vs %.6g",
                  far, worst, far ? ef[worst] : 0.0f, far ? relems[worst] : 0.0);
        tu_read_state(&E, F.Lh, &F.dh);
        tu_cmp_state(&F.dh, &F.rs, TU_STATE_RTOL_FEW, TU_STATE_RTOL, "16-bit NONE state vs reference");
        free(relems), free(ef), free(eh);
        tu_release(be);
        head_free(&he);
    }
    head_free(&hx), head_free(&hg);
    tu_release(bx), tu_release(by), tu_release(bg), tu_release(blh), tu_release(blr);
    fixture_free(&F);
    free(x), free(xr), free(x16), free(gr), free(gh), free(y);
    tu_end();
}

/* efl_loss_run_host with efl_host_batch on host arrays vs the rows-layout host calls. */
static void run_host(const shape *s, int class_major)
{
    char name[128];
    snprintf(name, sizeof name, "efl_loss_run_host: %s, B=%u A=%u C=%u", class_major ? "class-major" : "anchor-major",
             s->B, s->A, s->C);
    tu_begin(name);
    const uint32_t C = s->C;
    fixture F;
    fixture_init(&F, s, NULL, 777);
    const size_t N = F.N, nc = F.nc;
    float *x = tu_xmalloc(nc * 4), *gr = tu_xmalloc(nc * 4), *gh = tu_xmalloc(nc * 4), *er = tu_xmalloc(nc * 4),
          *eh = tu_xmalloc(nc * 4);
    int32_t *y = tu_xmalloc(N * 4);
    double *rgrad = tu_xmalloc(nc * 8), *P = tu_xmalloc(C * 8), *Ns = tu_xmalloc(C * 8);
    head_data hx, hg, he; /* host arrays only */
    head_alloc(&hx, s, class_major, 4, 0);
    head_alloc(&hg, s, class_major, 4, 0);
    head_alloc(&he, s, class_major, 4, 0);
    efl_host_batch hb;
    efl_host_batch_init(&hb);
    CHECK(hb.layout == EFL_LAYOUT_ROWS && hb.dtype == EFL_DTYPE_FLOAT32 && hb.reduction == EFL_REDUCTION_MEAN &&
          hb.normalizer == 1.0f && hb.grad_scale == 1.0f && hb.input[0] == NULL && hb.loss == NULL);
    SET_HEAD_BATCH(hb, &hx, &hg, host);
    hb.labels = y;
    for (int step = 0; step < 3; ++step) {
        const float norm = fixture_inputs(&F, x, y);
        head_put(&hx, x);
        float lh = NAN, lr = NAN, fh = NAN;
        hb.normalizer = norm;
        sync_state(F.Lh, F.Lr, C, 1);
        hb.reduction = EFL_REDUCTION_MEAN;
        hb.loss = &fh;
        CHECK_STATUS(efl_loss_run_host(F.Lh, EFL_OP_FORWARD, &hb), EFL_OK);
        hb.loss = &lh;
        const int no_grad = step == 1; /* grad NULL: the state is still updated */
        for (uint32_t l = 0; l < s->L; ++l)
            hb.grad[l] = no_grad ? NULL : hg.host[l];
        CHECK_STATUS(efl_loss_run_host(F.Lh, EFL_OP_STEP, &hb), EFL_OK);
        CHECK_STATUS(efl_loss_step_host(F.Lr, x, y, N, norm, EFL_REDUCTION_MEAN, &lr, gr), EFL_OK);
        CHECK_STATUS(efl_loss_read_state_host(F.Lh, F.dh.pos, F.dh.neg, F.dh.g), EFL_OK);
        CHECK_STATUS(efl_loss_read_state_host(F.Lr, F.dr.pos, F.dr.neg, F.dr.g), EFL_OK);
        efl_ref_result res;
        efl_ref_step_mode(&F.rp, &F.rs, x, y, N, norm, EFL_REF_MEAN, rgrad, NULL, &res);
        double d = lr;
        tu_cmp_f32("host: loss head vs rows", &lh, &d, 1, 2e-6, 0.0);
        tu_cmp_f32("host: forward loss head vs rows", &fh, &d, 1, 2e-6, 0.0);
        tu_cmp_f32("host: loss vs reference", &lh, &res.loss, 1, TU_LOSS_RTOL, 0.0);
        if (!no_grad) {
            head_get(&hg, gh);
            tu_bits_equal("host: grad head (un-permuted) vs rows", gh, gr, nc, 4);
            tu_cmp_grad(gh, rgrad, nc, "host: grad vs reference");
        }
        tu_cmp_state(&F.dh, &F.dr, 1e-6, 1e-6, "host: state head vs rows");
        tu_cmp_state(&F.dh, &F.rs, TU_STATE_RTOL_FEW, TU_STATE_RTOL, "host: state vs reference");
    }
    for (uint32_t l = 0; l < s->L; ++l)
        hb.grad[l] = hg.host[l];

    /* NONE: elements per level vs the rows-layout host batch */
    {
        fixture_inputs(&F, x, y);
        head_put(&hx, x);
        hb.reduction = EFL_REDUCTION_NONE;
        hb.loss = NULL;
        for (uint32_t l = 0; l < s->L; ++l)
            hb.loss_elems[l] = he.host[l];
        efl_host_batch rb;
        efl_host_batch_init(&rb);
        rb.rows = N;
        rb.input[0] = x;
        rb.grad[0] = gr;
        rb.loss_elems[0] = er;
        rb.labels = y;
        rb.reduction = EFL_REDUCTION_NONE;
        sync_state(F.Lh, F.Lr, C, 1);
        CHECK_STATUS(efl_loss_run_host(F.Lh, EFL_OP_STEP, &hb), EFL_OK);
        CHECK_STATUS(efl_loss_run_host(F.Lr, EFL_OP_STEP, &rb), EFL_OK);
        head_get(&he, eh);
        head_get(&hg, gh);
        tu_bits_equal("host NONE: elements head (un-permuted) vs rows", eh, er, nc, 4);
        tu_bits_equal("host NONE: grad head (un-permuted) vs rows", gh, gr, nc, 4);
        efl_ref_result res;
        efl_ref_step_mode(&F.rp, &F.rs, x, y, N, 1.0, EFL_REF_NONE, rgrad, NULL, &res);
        CHECK_STATUS(efl_loss_read_state_host(F.Lh, F.dh.pos, F.dh.neg, F.dh.g), EFL_OK);
        CHECK_STATUS(efl_loss_read_state_host(F.Lr, F.dr.pos, F.dr.neg, F.dr.g), EFL_OK);
        tu_cmp_state(&F.dh, &F.dr, 1e-6, 1e-6, "host NONE: state head vs rows");
        tu_cmp_state(&F.dh, &F.rs, TU_STATE_RTOL_FEW, TU_STATE_RTOL, "host NONE: state vs reference");
        for (uint32_t l = 0; l < s->L; ++l)
            hb.loss_elems[l] = NULL;
    }

    /* ACCUMULATE from a head-layout gradient */
    {
        for (size_t k = 0; k < nc; ++k)
            x[k] = (float)(0.02 * tu_normal(&F.rng));
        head_put(&hx, x);
        hb.grad_scale = 2.0f;
        sync_state(F.Lh, F.Lr, C, 1);
        CHECK_STATUS(efl_loss_run_host(F.Lh, EFL_OP_ACCUMULATE, &hb), EFL_OK);
        CHECK_STATUS(efl_loss_accumulate_host(F.Lr, EFL_DTYPE_FLOAT32, x, y, N, 2.0f), EFL_OK);
        for (size_t k = 0; k < nc; ++k)
            rgrad[k] = x[k];
        efl_ref_grad_stats(&F.rp, rgrad, y, N, 2.0, P, Ns);
        efl_ref_update_mode(&F.rp, &F.rs, P, Ns);
        CHECK_STATUS(efl_loss_read_state_host(F.Lh, F.dh.pos, F.dh.neg, F.dh.g), EFL_OK);
        CHECK_STATUS(efl_loss_read_state_host(F.Lr, F.dr.pos, F.dr.neg, F.dr.g), EFL_OK);
        tu_cmp_state(&F.dh, &F.dr, 1e-6, 1e-6, "host accumulate: state head vs rows");
        tu_cmp_state(&F.dh, &F.rs, TU_STATE_RTOL_FEW, TU_STATE_RTOL, "host accumulate: state vs reference");
    }

    /* shapes that do not fit, on host arrays: nothing written */
    {
        efl_ref_state before;
        efl_ref_state_init(&before, C);
        CHECK_STATUS(efl_loss_read_state_host(F.Lh, before.pos, before.neg, before.g), EFL_OK);
        float lh = 12345.0f;
        hb.reduction = EFL_REDUCTION_MEAN;
        hb.loss = &lh;
        efl_host_batch bad = hb;
        bad.anchors = 0;
        CHECK_STATUS(efl_loss_run_host(F.Lh, EFL_OP_STEP, &bad), EFL_ERROR_INVALID_LAYOUT);
        bad = hb;
        bad.images = 0;
        CHECK_STATUS(efl_loss_run_host(F.Lh, EFL_OP_STEP, &bad), EFL_ERROR_INVALID_LAYOUT);
        bad = hb;
        bad.height[s->L - 1] = 0;
        CHECK_STATUS(efl_loss_run_host(F.Lh, EFL_OP_STEP, &bad), EFL_ERROR_INVALID_LAYOUT);
        bad = hb;
        bad.levels = 0;
        CHECK_STATUS(efl_loss_run_host(F.Lh, EFL_OP_STEP, &bad), EFL_ERROR_INVALID_LAYOUT);
        bad = hb;
        bad.levels = EFL_MAX_LEVELS + 1;
        CHECK_STATUS(efl_loss_run_host(F.Lh, EFL_OP_STEP, &bad), EFL_ERROR_INVALID_LAYOUT);
        bad = hb;
        bad.input[s->L - 1] = NULL;
        CHECK_STATUS(efl_loss_run_host(F.Lh, EFL_OP_STEP, &bad), EFL_ERROR_NULL_BUFFER);
        bad = hb;
        bad.labels = NULL;
        CHECK_STATUS(efl_loss_run_host(F.Lh, EFL_OP_STEP, &bad), EFL_ERROR_NULL_BUFFER);
        bad = hb;
        bad.reduction = EFL_REDUCTION_NONE;
        CHECK_STATUS(efl_loss_run_host(F.Lh, EFL_OP_STEP, &bad), EFL_ERROR_NULL_BUFFER);
        bad = hb;
        bad.layout = (efl_layout)3;
        CHECK_STATUS(efl_loss_run_host(F.Lh, EFL_OP_STEP, &bad), EFL_ERROR_INVALID_LAYOUT);
        CHECK_STATUS(efl_loss_run_host(F.Lh, EFL_OP_STEP, NULL), EFL_ERROR_NULL_HANDLE);
        CHECK_STATUS(efl_loss_run_host(NULL, EFL_OP_STEP, &hb), EFL_ERROR_NULL_HANDLE);
        CHECK_STATUS(efl_loss_read_state_host(F.Lh, F.dh.pos, F.dh.neg, F.dh.g), EFL_OK);
        CHECK_MSG(tu_state_equal_bits(&F.dh, &before), "host: a refused batch changed the state");
        CHECK_MSG(lh == 12345.0f, "host: a refused batch wrote the loss (%g)", lh);
        efl_ref_state_free(&before);
    }

    head_free(&hx), head_free(&hg), head_free(&he);
    fixture_free(&F);
    free(x), free(gr), free(gh), free(er), free(eh), free(y), free(rgrad), free(P), free(Ns);
    tu_end();
}

/* Shapes that do not fit the layout, and level buffers too small (device batch). */
static void run_bad_shapes(const shape *s)
{
    tu_begin("head layouts: shapes that do not fit");
    const uint32_t C = s->C;
    const size_t N = (size_t)s->B * rows_per_image(s);
    efl_loss_config cfg;
    efl_loss_config_init(&cfg, C);
    efl_loss *L = tu_loss(&E, &cfg);
    efl_ref_state st0;
    efl_ref_state_init(&st0, C);
    for (uint32_t j = 0; j < C; ++j) {
        st0.pos[j] = 0.2 + 0.01 * j;
        st0.neg[j] = 3.0 + j;
        st0.g[j] = 0.4;
    }
    tu_write_state_canonical(&E, L, &st0);
    int32_t *y = tu_xmalloc(N * 4);
    for (size_t i = 0; i < N; ++i)
        y[i] = (int32_t)(i % (C + 1));
    head_data hx, hg, he;
    head_alloc(&hx, s, 0, 4, 1);
    head_alloc(&hg, s, 0, 4, 1);
    head_alloc(&he, s, 0, 4, 1);
    head_fill(&hx, 0); /* logits 0 */
    cl_mem by = tu_buf(&E, N * 4, y), bl = tu_buf(&E, 4, NULL), sy = tu_buf(&E, N * 4 - 4, y);
    cl_mem small = tu_buf(&E, level_elems(s, 1) * 4 - 4, NULL);
    efl_batch good = head_batch(&hx, &hg);
    for (uint32_t l = 0; l < s->L; ++l)
        good.loss_elems[l] = he.buf[l];
    good.labels = by;
    good.loss = bl;

    tu_batch_case cases[32];
    size_t nb = 0;
#define ADD(desc, o, w, ...) TU_BATCH_CASE(cases, nb, good, desc, o, w, __VA_ARGS__)
    ADD("anchors 0", EFL_OP_STEP, EFL_ERROR_INVALID_LAYOUT, b->anchors = 0);
    ADD("anchors 0 (class-major, forward)", EFL_OP_FORWARD, EFL_ERROR_INVALID_LAYOUT,
        b->layout = EFL_LAYOUT_CLASS_MAJOR; b->anchors = 0);
    ADD("images 0", EFL_OP_STEP, EFL_ERROR_INVALID_LAYOUT, b->images = 0);
    ADD("images 0 (accumulate)", EFL_OP_ACCUMULATE, EFL_ERROR_INVALID_LAYOUT, b->images = 0);
    ADD("level 1 with H = 0", EFL_OP_STEP, EFL_ERROR_INVALID_LAYOUT, b->height[1] = 0);
    ADD("level 2 with W = 0", EFL_OP_STEP, EFL_ERROR_INVALID_LAYOUT, b->width[2] = 0);
    ADD("levels 0", EFL_OP_STEP, EFL_ERROR_INVALID_LAYOUT, b->levels = 0);
    ADD("levels 9", EFL_OP_STEP, EFL_ERROR_INVALID_LAYOUT, b->levels = EFL_MAX_LEVELS + 1);
    ADD("level 1 input too small", EFL_OP_STEP, EFL_ERROR_BUFFER_TOO_SMALL, b->input[1] = small);
    ADD("level 1 input too small (accumulate)", EFL_OP_ACCUMULATE, EFL_ERROR_BUFFER_TOO_SMALL, b->input[1] = small);
    ADD("level 1 grad too small", EFL_OP_STEP, EFL_ERROR_BUFFER_TOO_SMALL, b->grad[1] = small);
    ADD("level 1 loss_elems too small", EFL_OP_STEP, EFL_ERROR_BUFFER_TOO_SMALL, b->reduction = EFL_REDUCTION_NONE;
        b->loss_elems[1] = small);
    ADD("a level larger than its buffer", EFL_OP_STEP, EFL_ERROR_BUFFER_TOO_SMALL, b->height[0] += 1);
    ADD("labels too small", EFL_OP_STEP, EFL_ERROR_BUFFER_TOO_SMALL, b->labels = sy);
    ADD("one more image than the buffers hold", EFL_OP_STEP, EFL_ERROR_BUFFER_TOO_SMALL, b->images += 1);
    ADD("level 2 input NULL", EFL_OP_STEP, EFL_ERROR_NULL_BUFFER, b->input[2] = NULL);
    ADD("level 2 grad NULL", EFL_OP_STEP, EFL_ERROR_NULL_BUFFER, b->grad[2] = NULL);
    ADD("level 2 loss_elems NULL with NONE", EFL_OP_STEP, EFL_ERROR_NULL_BUFFER, b->reduction = EFL_REDUCTION_NONE;
        b->loss_elems[2] = NULL);
#undef ADD
    /* every output (the loss, each level's gradient and elements) must keep the sentinel */
    cl_mem outs[1 + 2 * EFL_MAX_LEVELS] = {bl};
    size_t sizes[1 + 2 * EFL_MAX_LEVELS] = {4}, nouts = 1;
    for (uint32_t l = 0; l < s->L; ++l) {
        outs[nouts] = hg.buf[l], sizes[nouts++] = level_elems(s, l) * 4;
        outs[nouts] = he.buf[l], sizes[nouts++] = level_elems(s, l) * 4;
    }
    tu_check_refused(&E, L, cases, nb, &st0, outs, sizes, nouts);
    /* and the good batch is accepted */
    CHECK_STATUS(efl_enqueue_batch(L, E.queue, EFL_OP_STEP, &good, 0, NULL, NULL), EFL_OK);
    CHECK_STATUS(efl_loss_query_status(L, E.queue), EFL_OK);
    head_free(&hx), head_free(&hg), head_free(&he);
    tu_release(by), tu_release(bl), tu_release(sy), tu_release(small);
    efl_loss_destroy(L);
    efl_ref_state_free(&st0);
    free(y);
    tu_end();
}

int main(void)
{
    tu_env_init(&E);
    /* (5,6), (3,3), (1,2): 41 locations, R = 123 rows per image at A = 3 */
    const shape s7 = {2, 3, 7, 3, {5, 3, 1}, {6, 3, 2}};
    const shape s37 = {2, 3, 37, 3, {5, 3, 1}, {6, 3, 2}};
    const shape s37a1 = {3, 1, 37, 2, {4, 2}, {4, 2}};
    const shape s80 = {1, 2, 80, 4, {4, 2, 1, 1}, {5, 3, 2, 1}};
    const shape s8 = {2, 2, 19, EFL_MAX_LEVELS, {3, 2, 2, 1, 1, 1, 1, 2}, {2, 3, 1, 1, 2, 1, 1, 1}};
    const layout_case cases[] = {
        {"step", s7, 0, EFL_MODE_EFL, 0, 1, 0},
        {"step", s7, 1, EFL_MODE_EFL, 1, 2, 0},
        {"step", s37, 0, EFL_MODE_EFL, 0, 3, 0},
        {"step", s37, 1, EFL_MODE_EFL, 0, 4, 0},
        {"step", s37, 1, EFL_MODE_EQLV2, 1, 5, 0},
        {"step", s37, 0, EFL_MODE_FOCAL, 0, 6, 0},
        {"step", s37a1, 1, EFL_MODE_EFL, 0, 7, 0},
        {"step", s80, 1, EFL_MODE_EFL, 0, 8, 0},
        {"step, normalizer_buffer", s37, 0, EFL_MODE_EFL, 0, 9, 1},
        {"step, normalizer_buffer", s7, 1, EFL_MODE_EQLV2, 0, 10, 1},
        {"step, EFL_MAX_LEVELS levels", s8, 1, EFL_MODE_EFL, 0, 11, 0},
        {"step, EFL_MAX_LEVELS levels", s8, 0, EFL_MODE_EFL, 1, 12, 0},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; ++k)
        run_case(&cases[k]);
    run_half(&s37, 1, EFL_DTYPE_FLOAT16);
    run_half(&s7, 0, EFL_DTYPE_FLOAT16);
    run_half(&s37, 0, EFL_DTYPE_BFLOAT16);
    run_host(&s37, 0);
    run_host(&s7, 1);
    run_bad_shapes(&s37);
    tu_env_free(&E);
    return tu_exit_code();
}
