/* The cases: their definitions, --cases and --sweep, their shapes clipped to the device's memory,
 * and running them on one efl_context (programs compile once per kernel configuration), then the
 * small step's latency. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

const uint32_t lvis_head_h[LVIS_HEAD_LEVELS] = {100, 50, 25, 13, 7};
const uint32_t lvis_head_w[LVIS_HEAD_LEVELS] = {167, 84, 42, 21, 11};

const case_def named_cases[NUM_NAMED] = {
    {"lvis", 90000, 1203, 1, EFL_DTYPE_FLOAT32, EFL_LAYOUT_ROWS},
    {"coco", 90000, 80, 0, EFL_DTYPE_FLOAT32, EFL_LAYOUT_ROWS},
    {"coco-360k", 360000, 80, 0, EFL_DTYPE_FLOAT32, EFL_LAYOUT_ROWS},
    {"openimages", 50000, 500, 0, EFL_DTYPE_FLOAT32, EFL_LAYOUT_ROWS},
    {"lvis-f16", 90000, 1203, 1, EFL_DTYPE_FLOAT16, EFL_LAYOUT_ROWS},
    {"lvis-bf16", 90000, 1203, 1, EFL_DTYPE_BFLOAT16, EFL_LAYOUT_ROWS},
    {"lvis-anchor", LVIS_HEAD_ROWS, 1203, 0, EFL_DTYPE_FLOAT32, EFL_LAYOUT_ANCHOR_MAJOR},
    {"lvis-class", LVIS_HEAD_ROWS, 1203, 0, EFL_DTYPE_FLOAT32, EFL_LAYOUT_CLASS_MAJOR},
};
const char *const dtype_names[3] = {"f32", "f16", "bf16"};
const size_t dtype_bytes[3] = {4, 2, 2};
static const size_t sweep_n[] = {1000, 3000, 10000, 30000, 100000, 200000, 400000};
#define NUM_SWEEP (sizeof sweep_n / sizeof sweep_n[0])
#define SWEEP_C 1203

static size_t min_size(size_t a, size_t b) { return a < b ? a : b; }

/* ------------------------------------------------------------------ options */
int bench_parse_sweep(bench_options *opt, const char *list)
{
    opt->nsweep = 0;
    const char *p = list;
    for (;;) {
        char *end;
        errno = 0;
        const unsigned long long v = strtoull(p, &end, 10);
        if (errno || end == p || *p == '-' || v < 1 || v > 100000000ULL || (*end && *end != ',') ||
            opt->nsweep == MAX_SWEEP) {
            fprintf(stderr, "efl-bench: bad --sweep '%s' (1 to %d values of N, 1 .. 100000000, comma-separated)\n",
                    list, MAX_SWEEP);
            return -1;
        }
        opt->sweep[opt->nsweep++] = (size_t)v;
        if (!*end)
            return 0;
        p = end + 1;
    }
}

/* want[i] for each named case, want[NUM_NAMED] for the sweep; -1 for an unknown name. */
static int want_cases(const char *list, int *want)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", list);
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        int found = 0;
        for (size_t i = 0; i < NUM_NAMED; ++i)
            if (strcmp(tok, named_cases[i].name) == 0)
                want[i] = found = 1;
        if (strcmp(tok, "sweep") == 0)
            want[NUM_NAMED] = found = 1;
        if (strcmp(tok, "all") == 0) {
            for (size_t i = 0; i <= NUM_NAMED; ++i)
                want[i] = 1;
            found = 1;
        }
        if (!found) {
            fprintf(stderr, "efl-bench: unknown case '%s'\n", tok);
            return -1;
        }
    }
    return 0;
}

int bench_add_cases(bench_options *opt, const char *list)
{
    static const char sweep_name[] = "sweep";
    int want[NUM_NAMED + 1] = {0}; /* named cases, then the sweep */
    if (want_cases(list, want) != 0)
        return -1;
    opt->ncases = 0;
    for (size_t i = 0; i < NUM_NAMED; ++i)
        if (want[i])
            opt->cases[opt->ncases++] = named_cases[i];
    if (want[NUM_NAMED] || opt->nsweep) {
        const size_t *ns = opt->nsweep ? opt->sweep : sweep_n;
        const size_t count = opt->nsweep ? opt->nsweep : NUM_SWEEP;
        for (size_t i = 0; i < count; ++i)
            opt->cases[opt->ncases++] = (case_def){sweep_name, ns[i], SWEEP_C, 0, EFL_DTYPE_FLOAT32, EFL_LAYOUT_ROWS};
    }
    return 0;
}

/* ------------------------------------------------------------------ shapes */
void bench_plan_cases(const bench_options *opt, const device_result *dev, bench_plan *p)
{
    /* Shapes clipped so logits + grad fit in min(max alloc, global memory / 3). */
    const size_t pair_limit = min_size((size_t)dev->max_alloc, (size_t)(dev->global_mem / 3));
    memset(p, 0, sizeof *p);
    p->ncase = opt->ncases + 1;
    p->cases[0] = named_cases[0]; /* the first-call shape (LVIS) */
    memcpy(p->cases + 1, opt->cases, opt->ncases * sizeof p->cases[0]);
    for (size_t i = 0; i < p->ncase; ++i) {
        const size_t fit = pair_limit / (2 * sizeof(float) * p->cases[i].c);
        p->n_of[i] = min_size(p->cases[i].n, fit);
        if (p->cases[i].layout != EFL_LAYOUT_ROWS)
            continue; /* the head layouts have buffers of their own (below) */
        if (p->n_of[i] * p->cases[i].c > p->max_elems)
            p->max_elems = p->n_of[i] * p->cases[i].c;
        if (p->n_of[i] > p->max_n)
            p->max_n = p->n_of[i];
    }
    /* A head layout's shape is fixed: it runs whole, in level buffers next to the rows layout's
     * (each level within max alloc, all of them within what global memory leaves), or not at all. */
    for (size_t i = 0; i < p->ncase; ++i) {
        const case_def *cs = &p->cases[i];
        if (cs->layout == EFL_LAYOUT_ROWS)
            continue;
        const double level0 = (double)LVIS_HEAD_B * LVIS_HEAD_A * cs->c * lvis_head_h[0] * lvis_head_w[0] * 4.0;
        const double need = 2.0 * (double)cs->n * cs->c * 4.0 + 2.0 * (double)p->max_elems * 4.0;
        p->n_of[i] = level0 <= (double)dev->max_alloc && need <= 0.9 * (double)dev->global_mem ? cs->n : 0;
        if (cs->n > p->max_n)
            p->max_n = cs->n; /* the labels buffer serves it too */
    }
}

/* ------------------------------------------------------------------ running */
typedef struct {
    cl_context cl;
    cl_command_queue q;
    efl_context *ectx;
    buffers *b;
    const bench_plan *plan;
    const bench_options *opt;
    device_result *out;
} case_run;

/* A case whose shape does not fit, or fits only clipped to a shape already timed: skipped. */
static int skipped(const case_run *r, size_t i)
{
    const case_def *cs = &r->plan->cases[i];
    const size_t n = r->plan->n_of[i];
    int dup = 0;
    for (size_t k = 0; k < r->out->nrows; ++k) {
        const result_row *row = &r->out->rows[k];
        dup |= row->n == n && row->c == cs->c && strcmp(row->dtype, dtype_names[cs->dtype]) == 0 &&
               cs->layout == EFL_LAYOUT_ROWS;
    }
    if (dup || n == 0)
        report_skipped(cs, n);
    return dup || n == 0;
}

/* The case's labels and, where it needs them, its level buffers or 16-bit logits. */
static int prepare_inputs(const case_run *r, size_t i)
{
    const case_def *cs = &r->plan->cases[i];
    const char *dn = r->out->name;
    cl_int err = bench_write_labels(r->q, r->b->labels, r->plan->n_of[i], cs->c);
    if (err != CL_SUCCESS)
        return cl_fail("writing the labels", dn, err);
    r->b->dtype = cs->dtype;
    r->b->layout = cs->layout;
    if (cs->layout != EFL_LAYOUT_ROWS && (err = bench_make_levels(r->cl, r->q, r->b, cs->c)) != CL_SUCCESS)
        return cl_fail("the head layout's level buffers", dn, err);
    if (cs->dtype != EFL_DTYPE_FLOAT32 &&
        (err = bench_make_logits16(r->cl, r->q, r->b, r->plan->max_elems)) != CL_SUCCESS)
        return cl_fail("16-bit logits", dn, err);
    return 0;
}

/* The case's step (and forward) timed: one row each, printed. */
static int time_rows(const case_run *r, size_t i, efl_loss *loss)
{
    const case_def *cs = &r->plan->cases[i];
    const size_t n = r->plan->n_of[i];
    device_result *out = r->out;
    for (int fw = 0; fw <= cs->forward; ++fw) {
        result_row *row = &out->rows[out->nrows];
        memset(row, 0, sizeof *row);
        row->op = fw ? "forward" : "step";
        row->label = cs->name;
        row->dtype = dtype_names[cs->dtype];
        row->n = n;
        row->n_wanted = cs->n;
        row->c = cs->c;
        const int wall_only = r->opt->force_wall || out->ceiling_wall;
        if (bench_time_op(r->ectx, loss, r->q, r->b, n, fw, r->opt->min_time, wall_only, out->name, &row->median_s,
                          &row->wall) != 0)
            return -1;
        const double elems = (double)n * cs->c;
        const double bytes = elems * (double)dtype_bytes[cs->dtype] * (fw ? 1.0 : 2.0) + (double)n * 4.0;
        row->gbps = bytes / row->median_s / 1e9;
        row->fraction_of_copy = out->copy_gbps > 0.0 ? row->gbps / out->copy_gbps : 0.0;
        row->gelem_s = elems / row->median_s / 1e9;
        out->nrows++;
        report_row(row);
    }
    return 0;
}

static int run_case(const case_run *r, size_t i)
{
    if (skipped(r, i))
        return 0;
    efl_loss *loss = NULL;
    efl_loss_config cfg;
    efl_loss_config_init(&cfg, r->plan->cases[i].c);
    const efl_status st = efl_loss_create(r->ectx, &cfg, &loss);
    if (st != EFL_OK)
        return efl_fail("efl_loss_create", r->out->name, st, r->ectx);
    int rc = prepare_inputs(r, i);
    if (rc == 0)
        rc = time_rows(r, i, loss);
    efl_loss_destroy(loss);
    return rc;
}

/* A small step's latency: what a training loop waits for when the batch is tiny. Wall clock,
 * enqueue to clFinish, set against the same for an empty kernel. */
static int small_step(const case_run *r)
{
    enum { SMALL_N = 1000, SMALL_C = 80 };
    const char *dn = r->out->name;
    efl_loss *loss = NULL;
    efl_loss_config cfg;
    efl_loss_config_init(&cfg, SMALL_C);
    efl_status st = efl_loss_create(r->ectx, &cfg, &loss);
    if (st != EFL_OK)
        return efl_fail("efl_loss_create", dn, st, r->ectx);
    cl_int err = bench_write_labels(r->q, r->b->labels, SMALL_N, SMALL_C);
    int rc = err != CL_SUCCESS ? cl_fail("writing the labels", dn, err) : 0;
    int wall = 1;
    buffers b32 = *r->b;
    b32.dtype = EFL_DTYPE_FLOAT32;
    if (rc == 0)
        rc = bench_time_op(r->ectx, loss, r->q, &b32, SMALL_N, 0, r->opt->min_time, 1, dn, &r->out->small_step_s,
                           &wall);
    efl_loss_destroy(loss);
    if (rc == 0)
        report_small_step(r->out, SMALL_N, SMALL_C);
    return rc;
}

int bench_run_cases(cl_context cl, cl_device_id dev, cl_command_queue q, buffers *b, const bench_plan *plan,
                    const bench_options *opt, device_result *out)
{
    case_run r = {cl, q, NULL, b, plan, opt, out};
    const efl_status st = efl_context_create(cl, dev, &r.ectx);
    if (st != EFL_OK)
        return efl_fail("efl_context_create", out->name, st, r.ectx);
    report_table_header();
    int rc = 0;
    for (size_t i = 1; rc == 0 && i < plan->ncase; ++i)
        rc = run_case(&r, i);
    b->layout = EFL_LAYOUT_ROWS; /* what follows uses the rows layout */
    b->dtype = EFL_DTYPE_FLOAT32;
    if (rc == 0)
        rc = small_step(&r);
    efl_context_destroy(r.ectx);
    return rc;
}
