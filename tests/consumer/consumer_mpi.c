/* What a user of efl::efl_mpi writes: each rank steps its own rows, the statistics are summed
 * over the ranks, and every rank ends with the same state. Prints "consumer_mpi ok" on rank 0. */
#include <efl/efl_mpi.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    efl_context *ctx = NULL;
    efl_status st = efl_context_create_default(&ctx);
    if (st != EFL_OK) {
        printf("no OpenCL device: %s\n", efl_status_string(st));
        MPI_Finalize();
        return st == EFL_ERROR_NO_DEVICE ? 77 : 1;
    }
    enum { C = 5, N = 4 };
    float x[N * C], grad[N * C], loss_value = 0.0f;
    for (int i = 0; i < N * C; ++i)
        x[i] = (float)((i * 7 + rank * 3) % 11) - 5.0f;
    const int32_t y[N] = {1 + rank, 0, 5, 2};
    efl_loss_config cfg;
    efl_loss_config_init(&cfg, C);
    efl_loss *loss = NULL;
    cl_int err = CL_SUCCESS;
    cl_context cl = efl_context_cl_context(ctx);
    cl_command_queue q = clCreateCommandQueue(cl, efl_context_cl_device(ctx), 0, &err);
    cl_mem bx = clCreateBuffer(cl, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, sizeof x, x, &err);
    cl_mem by = clCreateBuffer(cl, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, sizeof y, (void *)y, &err);
    cl_mem bg = clCreateBuffer(cl, CL_MEM_READ_WRITE, sizeof grad, NULL, &err);
    cl_mem bl = clCreateBuffer(cl, CL_MEM_READ_WRITE, sizeof loss_value, NULL, &err);
    if (err == CL_SUCCESS)
        st = efl_loss_create(ctx, &cfg, &loss);
    efl_batch b;
    efl_batch_init(&b);
    b.rows = N;
    b.input[0] = bx, b.grad[0] = bg, b.labels = by, b.loss = bl;
    if (err == CL_SUCCESS && st == EFL_OK)
        st = efl_mpi_enqueue_batch(loss, q, EFL_OP_STEP, &b, MPI_COMM_WORLD);
    double g[C] = {0}, g0[C] = {0};
    if (st == EFL_OK)
        st = efl_loss_read_state(loss, q, NULL, NULL, g);
    memcpy(g0, g, sizeof g);
    MPI_Bcast(g0, C, MPI_DOUBLE, 0, MPI_COMM_WORLD);
    const int same = memcmp(g, g0, sizeof g) == 0;
    int ok = err == CL_SUCCESS && st == EFL_OK && same && g[0] < 1.0, all = 0;
    MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (rank == 0 && all)
        printf("consumer_mpi ok (pos_neg[0] %.6f on every rank)\n", g[0]);
    else if (rank == 0)
        printf("consumer_mpi FAILED: %s\n", efl_status_string(st));
    efl_loss_destroy(loss);
    clReleaseMemObject(bx), clReleaseMemObject(by), clReleaseMemObject(bg), clReleaseMemObject(bl);
    clReleaseCommandQueue(q);
    efl_context_destroy(ctx);
    MPI_Finalize();
    return all ? 0 : 1;
}
