/* The first call: efl_loss_create on a fresh efl_context to the first finished step, at the LVIS
 * shape. A fresh context builds its programs in efl_loss_create. Cold: with an empty disk cache
 * folder of its own, made for this measurement and removed after it (the OpenCL runtime may keep
 * a cache of its own too: PoCL does); warm: a second fresh context on the same folder, which
 * loads what the first one stored. The folder reaches the library as efl_context_options'
 * cache_dir: the environment is left alone. */
#define _XOPEN_SOURCE 700 /* mkdtemp, nftw */
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path); /* files, then (FTW_DEPTH) the folders that held them */
}

/* rm -rf, without a shell. */
static int remove_tree(const char *dir)
{
    return nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* One fresh context's first call, its seconds into *seconds. */
static int one_pass(cl_context cl, cl_device_id dev, cl_command_queue q, const buffers *b, const bench_plan *plan,
                    const efl_context_options *o, const char *dn, double *seconds)
{
    efl_context *fresh = NULL;
    efl_loss *loss = NULL;
    efl_loss_config cfg;
    efl_loss_config_init(&cfg, plan->cases[0].c);
    int rc = 0;
    cl_int err;
    efl_status st = efl_context_create_with_options(cl, dev, o, &fresh);
    if (st != EFL_OK)
        rc = efl_fail("efl_context_create", dn, st, fresh);
    const double t0 = bench_now();
    if (rc == 0 && (st = efl_loss_create(fresh, &cfg, &loss)) != EFL_OK)
        rc = efl_fail("efl_loss_create", dn, st, fresh);
    if (rc == 0 && (st = bench_enqueue_op(loss, q, b, plan->n_of[0], 0)) != EFL_OK)
        rc = efl_fail("efl_enqueue_step (first call)", dn, st, fresh);
    if (rc == 0 && (err = clFinish(q)) != CL_SUCCESS)
        rc = cl_fail("clFinish (first call)", dn, err);
    *seconds = bench_now() - t0;
    if (rc == 0 && (st = efl_loss_query_status(loss, q)) != EFL_OK)
        rc = efl_fail("the first step (efl_loss_query_status)", dn, st, fresh);
    efl_loss_destroy(loss);
    efl_context_destroy(fresh);
    return rc;
}

int bench_first_call(cl_context cl, cl_device_id dev, cl_command_queue q, const buffers *b, const bench_plan *plan,
                     device_result *out)
{
    const char *dn = out->name;
    const cl_int err = bench_write_labels(q, b->labels, plan->n_of[0], plan->cases[0].c);
    if (err != CL_SUCCESS)
        return cl_fail("writing the labels", dn, err);
    char tmp_dir[] = "/tmp/efl-bench-cache-XXXXXX";
    const int have_tmp = mkdtemp(tmp_dir) != NULL;
    efl_context_options o;
    efl_context_options_init(&o);
    o.cache_dir = have_tmp ? tmp_dir : NULL; /* none: the usual folder, as without the bench */
    int rc = one_pass(cl, dev, q, b, plan, &o, dn, &out->first_call_s);
    if (rc == 0)
        rc = one_pass(cl, dev, q, b, plan, &o, dn, &out->first_call_warm_s);
    if (have_tmp && remove_tree(tmp_dir) != 0)
        fprintf(stderr, "efl-bench: could not remove %s\n", tmp_dir);
    if (rc == 0)
        report_first_call(plan, out);
    return rc;
}
