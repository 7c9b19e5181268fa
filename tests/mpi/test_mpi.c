/*
 * Data-parallel statistics over MPI (efl_mpi.h), run under mpirun with 2 and 4 ranks.
 *
 * Every rank makes the same global batch (same seed) and takes its own rows. After several
 * steps through efl_mpi_enqueue_batch:
 *   - every rank's state is bitwise identical to rank 0's;
 *   - it equals, within 1e-12 relative, one loss on rank 0 that saw all ranks' rows in one batch
 *     (same normalizer). That needs the per-block float partial sums to be the same on both
 *     sides, so the test fixes the rows per block (EFL_TUNE=rows=64, set by CMake) and gives each
 *     rank a whole number of blocks; what differs is only the float64 order of the sums.
 *   - a step where one rank's labels are invalid is skipped by every rank: that rank reports
 *     EFL_ERROR_INVALID_LABEL, the others EFL_ERROR_REFUSED_BY_PEER, the states stay equal.
 * Also the accumulate path (each rank's own gradient), and both accumulator kinds.
 */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "efl/efl_mpi.h"
#include "test_util.h"

#define ROWS_PER_RANK 256 /* 4 blocks of EFL_TUNE's 64 rows */
#define C 37
#define STEPS 5

static int rank, nranks;

/* Rank 0 gathers every rank's state and checks them bitwise against its own. */
static int states_identical(tu_env *e, efl_loss *loss, double *mine)
{
    CHECK_STATUS(efl_loss_read_state(loss, e->queue, mine, mine + C, mine + 2 * C), EFL_OK);
    double *all = rank == 0 ? malloc((size_t)nranks * 3 * C * sizeof *all) : NULL;
    MPI_Gather(mine, 3 * C, MPI_DOUBLE, all, 3 * C, MPI_DOUBLE, 0, MPI_COMM_WORLD);
    int ok = 1;
    for (int r = 1; rank == 0 && r < nranks; ++r)
        ok &= memcmp(all, all + (size_t)r * 3 * C, 3 * C * sizeof *all) == 0;
    free(all);
    MPI_Bcast(&ok, 1, MPI_INT, 0, MPI_COMM_WORLD);
    return ok;
}

static void dp_case(tu_env *e, efl_accumulate acc, int accumulate_op)
{
    char name[128];
    snprintf(name, sizeof name, "%d ranks, %s, %s", nranks, acc == EFL_ACCUMULATE_AUTO ? "default totals" : "float pairs",
             accumulate_op ? "accumulate (own gradients)" : "step");
    tu_begin(name);
    const size_t n = ROWS_PER_RANK, total = n * (size_t)nranks;
    efl_loss_config cfg;
    efl_loss_config_init(&cfg, C);
    cfg.accumulate = acc;
    efl_loss *dp = tu_loss(e, &cfg), *one = rank == 0 ? tu_loss(e, &cfg) : NULL;
    float *x = malloc(total * C * sizeof *x);
    int32_t *y = malloc(total * sizeof *y);
    double *mine = malloc(3 * C * sizeof *mine), *ref = malloc(3 * C * sizeof *ref);
    if (!x || !y || !mine || !ref)
        tu_fatal(__FILE__, __LINE__, "malloc");
    cl_mem bx = tu_buf(e, n * C * 4, NULL), by = tu_buf(e, n * 4, NULL), bg = tu_buf(e, n * C * 4, NULL),
           bl = tu_buf(e, 4, NULL);
    cl_mem ax = tu_buf(e, total * C * 4, NULL), ay = tu_buf(e, total * 4, NULL), ag = tu_buf(e, total * C * 4, NULL);
    tu_label_opts lo = tu_default_label_opts();
    lo.fg_fraction = 0.2;
    const float norm = 11.0f; /* the same on every side, as the reference's averaged count is */
    for (int s = 0; s < STEPS; ++s) {
        tu_rng r = {0x5EED0000u + (uint64_t)s};
        tu_make_logits(&r, x, total * C);
        tu_make_labels(&r, y, total, C, &lo);
        /* this rank's rows [rank * n, (rank + 1) * n) */
        tu_write(e, bx, n * C * 4, x + (size_t)rank * n * C);
        tu_write(e, by, n * 4, y + (size_t)rank * n);
        efl_batch b = tu_rows_batch(n, bx, by, bg, bl, norm);
        efl_batch a = tu_rows_batch(total, ax, ay, ag, bl, norm);
        if (accumulate_op) { /* the logits stand in for a gradient of the caller's */
            b.grad_scale = a.grad_scale = 2.0f;
            CHECK_STATUS(efl_mpi_enqueue_batch(dp, e->queue, EFL_OP_ACCUMULATE, &b, MPI_COMM_WORLD), EFL_OK);
        } else {
            CHECK_STATUS(efl_mpi_enqueue_batch(dp, e->queue, EFL_OP_STEP, &b, MPI_COMM_WORLD), EFL_OK);
        }
        if (one) {
            tu_write(e, ax, total * C * 4, x);
            tu_write(e, ay, total * 4, y);
            CHECK_STATUS(efl_enqueue_batch(one, e->queue, accumulate_op ? EFL_OP_ACCUMULATE : EFL_OP_STEP, &a, 0,
                                           NULL, NULL),
                         EFL_OK);
            CHECK_STATUS(efl_loss_query_status(one, e->queue), EFL_OK);
        }
        CHECK_MSG(states_identical(e, dp, mine), "step %d: the ranks' states differ", s);
    }
    if (one) {
        CHECK_STATUS(efl_loss_read_state(one, e->queue, ref, ref + C, ref + 2 * C), EFL_OK);
        tu_cmp_f64("data parallel vs one process", mine, ref, 3 * C, 1e-12, 0.0);
    }

    /* one rank's invalid label: every rank skips the update */
    tu_write(e, bx, n * C * 4, x + (size_t)rank * n * C);
    int32_t *yr = y + (size_t)rank * n;
    const int32_t keep = yr[n / 2];
    if (rank == nranks - 1)
        yr[n / 2] = C + 7;
    tu_write(e, by, n * 4, yr);
    efl_batch b = tu_rows_batch(n, bx, by, bg, bl, norm);
    const efl_status want = rank == nranks - 1 ? EFL_ERROR_INVALID_LABEL : EFL_ERROR_REFUSED_BY_PEER;
    CHECK_STATUS(efl_mpi_enqueue_batch(dp, e->queue, accumulate_op ? EFL_OP_ACCUMULATE : EFL_OP_STEP, &b,
                                       MPI_COMM_WORLD),
                 want);
    double *after = malloc(3 * C * sizeof *after);
    CHECK_MSG(states_identical(e, dp, after), "after a refused step the ranks' states differ");
    CHECK_MSG(memcmp(after, mine, 3 * C * sizeof *after) == 0, "a refused step changed the state");
    uint32_t skipped = 0;
    CHECK_STATUS(efl_loss_skipped_steps(dp, e->queue, &skipped), EFL_OK);
    CHECK_MSG(skipped == 1, "refused step counted %u times", skipped);
    /* and a call that fails its own checks still lets the others finish (no hang) */
    yr[n / 2] = keep;
    tu_write(e, by, n * 4, yr);
    efl_batch bad = b;
    if (rank == 0)
        bad.dtype = (efl_dtype)9;
    const efl_status got = efl_mpi_enqueue_batch(dp, e->queue, EFL_OP_STEP, &bad, MPI_COMM_WORLD);
    CHECK_STATUS(got, rank == 0 ? EFL_ERROR_INVALID_DTYPE : EFL_ERROR_REFUSED_BY_PEER);

    free(after);
    free(x);
    free(y);
    free(mine);
    free(ref);
    cl_mem all[] = {bx, by, bg, bl, ax, ay, ag};
    for (size_t i = 0; i < sizeof all / sizeof *all; ++i)
        tu_release(all[i]);
    efl_loss_destroy(dp);
    efl_loss_destroy(one);
    tu_end();
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);
    tu_env e;
    tu_env_init(&e);
    if (rank == 0)
        printf("%d ranks on %s (fp64: %s)\n", nranks, e.device_name, e.has_fp64 ? "yes" : "no");
    for (int op = 0; op < 2; ++op) {
        dp_case(&e, EFL_ACCUMULATE_AUTO, op);
        dp_case(&e, EFL_ACCUMULATE_FLOAT_PAIRS, op);
    }
    tu_env_free(&e);
    int rc = tu_exit_code(), worst = 0;
    MPI_Allreduce(&rc, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    MPI_Finalize();
    return worst;
}
