/* --tune: the launch parameters the library's heuristic (lib/device.c) chooses from, searched on
 * this device at the first selected case's shape; the best printed as an EFL_TUNE string. Each
 * candidate reaches the library as efl_context_options' tune, on a context of its own (the
 * environment is left alone); the heuristic as tune "" (EFL_TUNE ignored). */
#define _POSIX_C_SOURCE 200809L /* clock_gettime (bench_util.h) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

#define MAX_CANDIDATES 160

static size_t min_size(size_t a, size_t b) { return a < b ? a : b; }

/* One timed configuration. Returns G elements/s, or a negative value if the context or the loss
 * could not be made with it, or it could not be stepped. */
static double tune_one(cl_context cl, cl_device_id dev, cl_command_queue q, const buffers *b, size_t n, uint32_t C,
                       const char *tune, const bench_options *opt, const char *dn)
{
    efl_context_options o;
    efl_context_options_init(&o);
    o.tune = tune;
    efl_context *ectx = NULL;
    if (efl_context_create_with_options(cl, dev, &o, &ectx) != EFL_OK)
        return -1.0;
    efl_loss *loss = NULL;
    efl_loss_config cfg;
    efl_loss_config_init(&cfg, C);
    double median = 0.0;
    int wall = 0, rc = -1;
    if (efl_loss_create(ectx, &cfg, &loss) == EFL_OK)
        rc = bench_time_op(ectx, loss, q, b, n, 0, opt->min_time, opt->force_wall, dn, &median, &wall);
    efl_loss_destroy(loss);
    efl_context_destroy(ectx);
    return rc == 0 && median > 0.0 ? (double)n * C / median / 1e9 : -1.0;
}

/* The candidates: what lib/device.c chooses between, around its own choice. */
static size_t candidates(cl_device_type type, uint32_t C, char (*cand)[96])
{
    size_t ncand = 0;
    static const unsigned rows_cpu[] = {128, 256, 512, 1024}, rows_gpu[] = {16, 32, 64, 128, 256, 512};
    if (!(type & CL_DEVICE_TYPE_CPU)) {
        static const unsigned wgxs[] = {32, 64, 128, 256};
        for (size_t w = 0; w < 4; ++w)
            for (size_t r = 0; r < sizeof rows_gpu / sizeof *rows_gpu; ++r)
                for (unsigned u = 1; u <= 2; ++u)
                    snprintf(cand[ncand++], sizeof cand[0], "vw=1,barrier=0,wgx=%u,unroll=%u,rows=%u", wgxs[w], u,
                             rows_gpu[r]);
        return ncand;
    }
    static const unsigned vws[] = {8, 16}, unrolls[] = {1, 4, 8};
    for (size_t v = 0; v < 2; ++v) {
        const unsigned chunks = (C + vws[v] - 1) / vws[v];
        const unsigned wgx_bar[] = {chunks, (chunks + 1) / 2};
        for (size_t r = 0; r < sizeof rows_cpu / sizeof *rows_cpu; ++r)
            for (size_t u = 0; u < 3; ++u) {
                for (size_t w = 0; w < 2; ++w)
                    if (w == 0 || wgx_bar[w] != wgx_bar[w - 1])
                        snprintf(cand[ncand++], sizeof cand[0], "vw=%u,barrier=1,wgx=%u,unroll=%u,rows=%u", vws[v],
                                 wgx_bar[w], unrolls[u], rows_cpu[r]);
                snprintf(cand[ncand++], sizeof cand[0], "vw=%u,barrier=0,wgx=1,unroll=%u,rows=%u", vws[v],
                         unrolls[u], rows_cpu[r]);
            }
    }
    return ncand;
}

/* Every candidate, then the heuristic (after the search: the buffers' first-touch costs are
 * paid by then), and the best. */
static void search(cl_context cl, cl_device_id dev, cl_command_queue q, const buffers *b, size_t n,
                   const case_def *cs, cl_device_type type, const bench_options *opt, const char *name)
{
    static char cand[MAX_CANDIDATES][96];
    const size_t ncand = candidates(type, cs->c, cand);
    double best = -1.0;
    size_t best_i = 0;
    for (size_t i = 0; i < ncand; ++i) {
        const double g = tune_one(cl, dev, q, b, n, cs->c, cand[i], opt, name);
        printf("   EFL_TUNE=%-39s %8.3f Gelem/s%s\n", cand[i], g, g < 0.0 ? "  (refused or failed)" : "");
        fflush(stdout);
        if (g > best) {
            best = g;
            best_i = i;
        }
    }
    const double heur = tune_one(cl, dev, q, b, n, cs->c, "", opt, name);
    printf("   %-48s %8.3f Gelem/s\n", "the library's heuristic (EFL_TUNE unset)", heur);
    if (best > 0.0)
        printf("   best: EFL_TUNE=%s  %.3f Gelem/s, %.2f x the heuristic's %.3f\n", cand[best_i], best,
               heur > 0.0 ? best / heur : 0.0, heur);
}

/* The step's buffers at n x C, logits and labels written (the grad's pages are left to the
 * search: the heuristic, timed last, finds them touched). */
static int make_inputs(cl_context cl, cl_command_queue q, size_t n, uint32_t C, const char *name, buffers *b)
{
    memset(b, 0, sizeof *b);
    cl_int err, e[4];
    b->logits = clCreateBuffer(cl, CL_MEM_READ_ONLY, n * C * sizeof(float), NULL, &e[0]);
    b->grad = clCreateBuffer(cl, CL_MEM_READ_WRITE, n * C * sizeof(float), NULL, &e[1]);
    b->labels = clCreateBuffer(cl, CL_MEM_READ_ONLY, n * sizeof(cl_int), NULL, &e[2]);
    b->loss_out = clCreateBuffer(cl, CL_MEM_READ_WRITE, sizeof(float), NULL, &e[3]);
    for (int i = 0; i < 4; ++i)
        if (e[i] != CL_SUCCESS)
            return cl_fail("clCreateBuffer", name, e[i]);
    if ((err = bench_fill_logits(q, b->logits, n * C)) != CL_SUCCESS ||
        (err = bench_write_labels(q, b->labels, n, C)) != CL_SUCCESS)
        return cl_fail("writing the inputs", name, err);
    return 0;
}

int bench_tune_device(cl_context cl, cl_device_id dev, const bench_options *opt)
{
    char name[256] = "";
    cl_device_type type = 0;
    cl_ulong max_alloc = 0, global_mem = 0;
    clGetDeviceInfo(dev, CL_DEVICE_NAME, sizeof name - 1, name, NULL);
    clGetDeviceInfo(dev, CL_DEVICE_TYPE, sizeof type, &type, NULL);
    clGetDeviceInfo(dev, CL_DEVICE_MAX_MEM_ALLOC_SIZE, sizeof max_alloc, &max_alloc, NULL);
    clGetDeviceInfo(dev, CL_DEVICE_GLOBAL_MEM_SIZE, sizeof global_mem, &global_mem, NULL);
    const case_def cs = opt->ncases ? opt->cases[0] : named_cases[0];
    const size_t fit = min_size((size_t)max_alloc, (size_t)(global_mem / 3)) / (2 * sizeof(float) * cs.c);
    const size_t n = min_size(cs.n, fit);
    printf("\n== --tune on %s: %s, N=%zu C=%u\n", name, cs.name, n, cs.c);

    cl_int err = CL_SUCCESS;
    cl_command_queue q = clCreateCommandQueue(cl, dev, CL_QUEUE_PROFILING_ENABLE, &err);
    if (err != CL_SUCCESS)
        return cl_fail("clCreateCommandQueue", name, err);
    buffers b;
    int rc = make_inputs(cl, q, n, cs.c, name, &b);
    if (rc == 0)
        search(cl, dev, q, &b, n, &cs, type, opt, name);
    bench_buffers_release(&b);
    clReleaseCommandQueue(q);
    return rc;
}
