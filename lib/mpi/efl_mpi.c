/* The data-parallel protocol of efl.h over MPI (efl_mpi.h). */
#include <stdlib.h>

#include "efl/efl_mpi.h"

/* Sum over the ranks, the same bits on every rank: reduce to rank 0, then broadcast. */
static int sum_everywhere(double *v, int count, MPI_Comm comm)
{
    int rank = 0;
    if (MPI_Comm_rank(comm, &rank) != MPI_SUCCESS)
        return 0;
    const int ok = MPI_Reduce(rank == 0 ? MPI_IN_PLACE : v, rank == 0 ? v : NULL, count, MPI_DOUBLE, MPI_SUM, 0,
                              comm) == MPI_SUCCESS;
    return MPI_Bcast(v, count, MPI_DOUBLE, 0, comm) == MPI_SUCCESS && ok;
}

efl_status efl_mpi_enqueue_batch(efl_loss *loss, cl_command_queue queue, efl_op op, const efl_batch *batch,
                                 MPI_Comm comm)
{
    if (op != EFL_OP_STEP && op != EFL_OP_ACCUMULATE && op != EFL_OP_FORWARD)
        return EFL_ERROR_INVALID_PARAMETER; /* the same answer on every rank: nobody communicates */
    efl_loss_config cfg;
    efl_status st = efl_loss_get_config(loss, &cfg);
    if (st != EFL_OK)
        return st;
    /* a forward changes no state, and focal loss keeps none: nothing to share */
    if (op == EFL_OP_FORWARD || cfg.mode == EFL_MODE_FOCAL)
        return efl_enqueue_batch(loss, queue, op, batch, 0, NULL, NULL);
    const size_t len = EFL_STATISTICS_LENGTH(cfg.num_classes);
    double *stats = calloc(len, sizeof *stats);
    if (!stats)
        return EFL_ERROR_OUT_OF_MEMORY;
    st = efl_enqueue_batch(loss, queue, op == EFL_OP_STEP ? EFL_OP_COMPUTE : EFL_OP_COLLECT, batch, 0, NULL, NULL);
    if (st == EFL_OK)
        st = efl_loss_read_statistics(loss, queue, stats);
    if (st != EFL_OK)
        stats[len - 1] = 1.0; /* a refusal the others see; P and N stay zero */
    if (!sum_everywhere(stats, (int)len, comm)) {
        free(stats);
        return EFL_ERROR_IO;
    }
    efl_status applied = EFL_OK;
    if (st == EFL_OK) {
        applied = efl_loss_apply_statistics(loss, queue, stats);
        if (applied == EFL_OK)
            applied = efl_loss_query_status(loss, queue);
    }
    free(stats);
    return st != EFL_OK ? st : applied;
}
