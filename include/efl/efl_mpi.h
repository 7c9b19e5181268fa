/*
 * efl_mpi: the data-parallel step over MPI (library efl_mpi, built where MPI is found).
 *
 * In the reference every GPU all-reduces the per-class statistics each step, so all ranks share
 * one state. efl_mpi_enqueue_batch runs efl.h's data-parallel protocol with MPI on a caller's
 * communicator: compute (EFL_OP_COMPUTE / EFL_OP_COLLECT), read the statistics, sum them over the
 * ranks, apply. The sum is MPI_Reduce to rank 0 followed by MPI_Bcast, not MPI_Allreduce: the MPI
 * standard does not promise every rank the same bits from an all-reduce, and the states must stay
 * bitwise identical.
 *
 * Collective: every rank of comm calls it for every step, with losses of the same configuration.
 * A rank whose call fails its checks still takes part (as a refusal), so no rank waits forever;
 * then every rank skips the update, and that rank returns its error. Blocking (the statistics
 * cross the host). Thread safety: as for the loss and the communicator.
 */
#ifndef EFL_EFL_MPI_H
#define EFL_EFL_MPI_H

#include <mpi.h>

#include "efl/efl.h"

#ifdef __cplusplus
extern "C" {
#endif

/* op: EFL_OP_STEP (loss, gradient, update from the ranks' summed statistics) or
 * EFL_OP_ACCUMULATE (the update from the ranks' summed statistics of their own gradients);
 * EFL_OP_FORWARD, and any op of a focal-loss loss (no state), need no communication and are
 * passed to efl_enqueue_batch. Returns this rank's status: what
 * its device found (efl_loss_query_status), EFL_ERROR_REFUSED_BY_PEER when another rank refused,
 * EFL_ERROR_OPENCL or EFL_ERROR_OUT_OF_MEMORY, or EFL_ERROR_IO when the collective failed. */
EFL_API efl_status efl_mpi_enqueue_batch(efl_loss *loss, cl_command_queue queue, efl_op op, const efl_batch *batch,
                                         MPI_Comm comm);

#ifdef __cplusplus
}
#endif
#endif
