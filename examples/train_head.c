/* efl-train-head: a dense-detection classification head trained end to end on an OpenCL device.
 *
 * Features X [N, D] -> logits [N, C] = X W + b, one linear layer. The forward and backward are
 * CLBlast GEMMs, the loss (focal or EFL) is efl, the update is momentum SGD with CLBlast, all on
 * one in-order queue. The data is made here: long-tailed (Zipf ~ 1/k over C = 300 classes),
 * 95% background rows, features = class prototype * signal + Gaussian noise (train_data.c).
 * The same model is trained from the same initialisation and data order with focal loss and
 * with EFL, then each is scored on a held-out set: average precision per class, averaged over
 * the LVIS frequency groups (rare / common / frequent by training positives).
 *
 * The bias is the last row of W: every row of X carries a constant 1 in column D, so the
 * forward is one GEMM (logits = [X 1] [W; b]) and the backward is one GEMM too:
 * [dW; db] = [X 1]^T G, whose last row is db = column sums of G.
 *
 * Built with -DEFL_TRAIN_MPI (efl-train-head-mpi): every rank makes the same data, takes its
 * slice of each batch's rows, runs the loss through efl_mpi_enqueue_batch (EFL's per-class
 * gradient statistics summed over the ranks) with the normalizer = the batch's positives over
 * all ranks, and sums [dW; db] over the ranks before the update (MPI_Reduce + MPI_Bcast, the same
 * bits on every rank), so every rank holds the same model and the same EFL state, which the
 * program checks at the end of each run. Rank 0 prints and evaluates.
 *
 * Options: --help. */
#define _POSIX_C_SOURCE 200809L /* clock_gettime, isatty */
#include "train_data.h"

#include <clblast_c.h>
#include <efl/efl.h>
#ifdef EFL_TRAIN_MPI
#include <efl/efl_mpi.h>
#include <mpi.h>
#endif

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------ options */
typedef struct {
    uint32_t C, D;
    double fg_train, fg_test;
    uint32_t test_min_pos;
    float signal, bg_mix;
    double bg_fraction;
    uint32_t batch, epochs;
    float lr, momentum, weight_decay;
    uint64_t seed;
    int quick, breakdown, run_focal, run_efl, references, curve;
    float efl_s; /* EFL scale factor */
} options;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: efl-train-head [options]\n"
            "  Trains a linear classification head (CLBlast GEMMs + efl) on synthetic long-tailed data with\n"
            "  focal loss and with EFL, and prints AP per LVIS frequency group for both.\n"
            "  --quick          a few seconds: one epoch, a smaller test set (the ctest)\n"
            "  --breakdown      time each step's phases (clFinish between them): GEMM forward, EFL step,\n"
            "                   GEMM backward + update; prints a 'breakdown' line per run\n"
            "  --only focal|efl train one of the two\n"
            "  --curve          also evaluate after epochs 1, 2, 4, 8, ... (a learning curve per group)\n"
            "  --epochs E       passes over the training set (default 12; --quick 1)\n"
            "  --batch B        rows per step, over all ranks (default 8192)\n"
            "  --lr L           SGD learning rate (default 0.5), momentum 0.9, weight decay 1e-4,\n"
            "                   linear warm-up over the first epoch, x0.1 for the last quarter\n"
            "  --signal S       prototype amplitude in noise sigmas (default 4)\n"
            "  --bg-mix A       background rows = noise + A x a random class's prototype (hard negatives;\n"
            "                   default 0: noise only)\n"
            "  --bg-fraction F  background share of the rows, train and test (default 0.95)\n"
            "  --fg F           foreground rows of the training set (default 8000; background 19x)\n"
            "  --classes C      (default 300)   --dim D (default 64)   --seed N (default 2022)\n"
            "  --scale-factor s EFL's s (default 8)\n"
            "The device: EFL_DEVICE (e.g. pocl, rusticl with RUSTICL_ENABLE=llvmpipe), else the first GPU,\n"
            "else the first CPU device.\n");
}

static int parse_options(int argc, char **argv, options *o)
{
    *o = (options){.C = 300,
                   .D = 64,
                   .fg_train = 8000,
                   .fg_test = 8000,
                   .test_min_pos = 20,
                   .signal = 4.0f,
                   .bg_fraction = 0.95,
                   .batch = 8192,
                   .epochs = 0,
                   .lr = 0.5f,
                   .momentum = 0.9f,
                   .weight_decay = 1e-4f,
                   .seed = 2022,
                   .run_focal = 1,
                   .run_efl = 1,
                   .efl_s = 8.0f};
    for (int i = 1; i < argc; ++i) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        char *end = NULL;
        errno = 0;
        if (strcmp(a, "--quick") == 0)
            o->quick = 1;
        else if (strcmp(a, "--breakdown") == 0)
            o->breakdown = 1;
        else if (strcmp(a, "--curve") == 0)
            o->curve = 1;
        else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            exit(0);
        } else if (!v) {
            fprintf(stderr, "efl-train-head: unknown or incomplete option '%s'\n", a);
            return -1;
        } else {
            ++i;
            if (strcmp(a, "--only") == 0) {
                o->run_focal = strcmp(v, "focal") == 0;
                o->run_efl = strcmp(v, "efl") == 0;
                if (!o->run_focal && !o->run_efl) {
                    fprintf(stderr, "efl-train-head: --only takes focal or efl\n");
                    return -1;
                }
                continue;
            }
            const double d = strtod(v, &end);
            if (errno || !end || *end || !(d >= 0.0) || !isfinite(d)) {
                fprintf(stderr, "efl-train-head: bad value '%s' for %s\n", v, a);
                return -1;
            }
            if (strcmp(a, "--epochs") == 0 && d >= 1)
                o->epochs = (uint32_t)d;
            else if (strcmp(a, "--batch") == 0 && d >= 1)
                o->batch = (uint32_t)d;
            else if (strcmp(a, "--lr") == 0 && d > 0)
                o->lr = (float)d;
            else if (strcmp(a, "--signal") == 0)
                o->signal = (float)d;
            else if (strcmp(a, "--bg-mix") == 0)
                o->bg_mix = (float)d;
            else if (strcmp(a, "--bg-fraction") == 0 && d < 0.9999)
                o->bg_fraction = d;
            else if (strcmp(a, "--fg") == 0 && d >= 1)
                o->fg_train = d;
            else if (strcmp(a, "--classes") == 0 && d >= 1 && d <= 100000)
                o->C = (uint32_t)d;
            else if (strcmp(a, "--dim") == 0 && d >= 1 && d <= 1024)
                o->D = (uint32_t)d;
            else if (strcmp(a, "--seed") == 0)
                o->seed = (uint64_t)d;
            else if (strcmp(a, "--scale-factor") == 0)
                o->efl_s = (float)d;
            else {
                fprintf(stderr, "efl-train-head: unknown option or bad value: %s %s\n", a, v);
                return -1;
            }
        }
    }
    if (o->quick) {
        if (!o->epochs)
            o->epochs = 1;
        o->fg_test = 2000;
        o->test_min_pos = 10;
    }
    if (!o->epochs)
        o->epochs = 12;
    o->references = !o->quick;
    return 0;
}

/* ------------------------------------------------------------------ ranks */
static int g_rank = 0, g_ranks = 1;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Printing is rank 0's. */
static void say(const char *fmt, ...)
{
    if (g_rank != 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    fflush(stdout);
}

static int fail(const char *what, const char *detail)
{
    fprintf(stderr, "efl-train-head%s%d: %s failed%s%s\n", g_ranks > 1 ? " rank " : "", g_ranks > 1 ? g_rank : 0, what,
            detail ? ": " : "", detail ? detail : "");
    return -1;
}

#define CL_TRY(call, what)                                                                                            \
    do {                                                                                                              \
        cl_int e_ = (call);                                                                                           \
        if (e_ != CL_SUCCESS) {                                                                                       \
            char b_[32];                                                                                              \
            snprintf(b_, sizeof b_, "OpenCL error %d", (int)e_);                                                     \
            return fail(what, b_);                                                                                    \
        }                                                                                                             \
    } while (0)
#define BLAS_TRY(call, what)                                                                                          \
    do {                                                                                                              \
        CLBlastStatusCode e_ = (call);                                                                                \
        if (e_ != CLBlastSuccess) {                                                                                   \
            char b_[40];                                                                                              \
            snprintf(b_, sizeof b_, "CLBlast status %d", (int)e_);                                                   \
            return fail(what, b_);                                                                                    \
        }                                                                                                             \
    } while (0)
#define EFL_TRY(call, what)                                                                                           \
    do {                                                                                                              \
        efl_status e_ = (call);                                                                                       \
        if (e_ != EFL_OK)                                                                                             \
            return fail(what, efl_status_string(e_));                                                                 \
    } while (0)

/* ------------------------------------------------------------------ the trainer */
enum { PH_UPLOAD, PH_FORWARD, PH_LOSS, PH_BACKWARD, PH_ALLREDUCE, PH_COUNT };
static const char *const phase_names[PH_COUNT] = {"upload", "GEMM forward", "EFL step", "GEMM backward + update",
                                                  "all-reduce"};

typedef struct {
    const options *opt;
    efl_context *ectx;
    cl_context cl;
    cl_device_id dev;
    cl_command_queue q;
    uint32_t C, D1;        /* D1 = D + 1: the constant column that carries the bias */
    uint32_t shard_max;    /* rows this rank holds per step, at most */
    td_set train, test;
    float *protos;         /* [C, D]: the true class prototypes (the oracle reference) */
    float *scores;         /* rank 0: the test set's scores, class-major [C, n_test] */
    float *h_x;            /* staging [shard_max, D1] */
    int32_t *h_y;
    float *h_w0;           /* the initial parameters [D1, C], the same for both runs */
    float *h_grad;         /* MPI: [D1, C] gradient for the all-reduce */
    cl_mem x, y, logits, grad, loss, w, v, dw;
    size_t *order;         /* a permutation of the training rows, per epoch */
} trainer;

typedef struct {
    double ap[TD_GROUPS + 1]; /* mean AP per group, then over all classes */
    double p_pos[TD_GROUPS + 1]; /* mean sigmoid(score) of each class on its own test positives */
    int classes[TD_GROUPS + 1];
    double *ap_class;         /* [C] */
    double phase_s[PH_COUNT];
    size_t timed_steps;
    double train_s;
    double g_mean[TD_GROUPS]; /* EFL: mean pos_neg per group at the end */
    double *state;            /* EFL: pos_grad, neg_grad, pos_neg at the end, [3 C] */
    double final_loss;
} run_result;

static cl_mem make_buffer(trainer *t, size_t bytes, cl_int *err)
{
    return clCreateBuffer(t->cl, CL_MEM_READ_WRITE, bytes ? bytes : 4, NULL, err);
}

static int trainer_init(trainer *t, const options *o)
{
    memset(t, 0, sizeof *t);
    t->opt = o;
    t->C = o->C;
    t->D1 = o->D + 1;
    EFL_TRY(efl_context_create_default(&t->ectx), "choosing a device (efl_context_create_default)");
    t->cl = efl_context_cl_context(t->ectx);
    t->dev = efl_context_cl_device(t->ectx);
    cl_int err = CL_SUCCESS;
    t->q = clCreateCommandQueue(t->cl, t->dev, 0, &err);
    CL_TRY(err, "clCreateCommandQueue");

    /* Data: the same seed on every rank, so every rank holds the same rows. */
    float *protos = t->protos = td_prototypes(o->C, o->D, o->seed);
    td_params tp = {.C = o->C, .D = o->D, .fg_rows = o->fg_train, .bg_fraction = o->bg_fraction, .min_pos = 0,
                    .signal = o->signal, .noise = 1.0f, .bg_mix = o->bg_mix, .seed = o->seed + 1};
    int rc = protos ? td_generate(&tp, protos, &t->train) : -1;
    if (rc == 0 && g_rank == 0) { /* only rank 0 evaluates */
        tp.fg_rows = o->fg_test;
        tp.min_pos = o->test_min_pos;
        tp.seed = o->seed + 2;
        rc = td_generate(&tp, protos, &t->test);
    }
    if (rc != 0)
        return fail("generating the data", "out of memory");

    const uint32_t B = o->batch;
    t->shard_max = (B + (uint32_t)g_ranks - 1) / (uint32_t)g_ranks;
    const size_t P = (size_t)t->D1 * t->C;
    t->h_x = malloc((size_t)t->shard_max * t->D1 * sizeof *t->h_x);
    t->h_y = malloc((size_t)t->shard_max * sizeof *t->h_y);
    t->h_w0 = malloc(P * sizeof *t->h_w0);
    t->h_grad = malloc(P * sizeof *t->h_grad);
    t->order = malloc(t->train.n * sizeof *t->order);
    if (g_rank == 0)
        t->scores = malloc(t->test.n * o->C * sizeof *t->scores);
    if (!t->h_x || !t->h_y || !t->h_w0 || !t->h_grad || !t->order || (g_rank == 0 && !t->scores))
        return fail("allocating host memory", NULL);

    /* RetinaNet's initialisation: weights N(0, 0.01^2), bias at the prior pi = 0.01. */
    td_rng r;
    td_rng_seed(&r, o->seed + 3);
    for (size_t i = 0; i < (size_t)o->D * t->C; ++i)
        t->h_w0[i] = 0.01f * (float)td_rng_gauss(&r);
    const float prior = (float)-log((1.0 - 0.01) / 0.01);
    for (uint32_t c = 0; c < t->C; ++c)
        t->h_w0[(size_t)o->D * t->C + c] = prior;

    const size_t S = t->shard_max;
    t->x = make_buffer(t, S * t->D1 * 4, &err);
    if (err == CL_SUCCESS)
        t->y = make_buffer(t, S * 4, &err);
    if (err == CL_SUCCESS)
        t->logits = make_buffer(t, S * t->C * 4, &err);
    if (err == CL_SUCCESS)
        t->grad = make_buffer(t, S * t->C * 4, &err);
    if (err == CL_SUCCESS)
        t->loss = make_buffer(t, 4, &err);
    if (err == CL_SUCCESS)
        t->w = make_buffer(t, P * 4, &err);
    if (err == CL_SUCCESS)
        t->v = make_buffer(t, P * 4, &err);
    if (err == CL_SUCCESS)
        t->dw = make_buffer(t, P * 4, &err);
    CL_TRY(err, "clCreateBuffer");
    return 0;
}

static void trainer_free(trainer *t)
{
    cl_mem *bufs[] = {&t->x, &t->y, &t->logits, &t->grad, &t->loss, &t->w, &t->v, &t->dw};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; ++i)
        if (*bufs[i])
            clReleaseMemObject(*bufs[i]);
    if (t->q)
        clReleaseCommandQueue(t->q);
    efl_context_destroy(t->ectx);
    td_free(&t->train);
    td_free(&t->test);
    free(t->h_x);
    free(t->h_y);
    free(t->h_w0);
    free(t->h_grad);
    free(t->order);
    free(t->protos);
    free(t->scores);
}

/* Rows [first, first + n) of the permuted training set into the staging arrays, with the
 * constant 1 column. */
static void gather(trainer *t, const td_set *s, const size_t *order, size_t first, size_t n)
{
    const uint32_t D = t->D1 - 1;
    for (size_t i = 0; i < n; ++i) {
        const size_t row = order ? order[first + i] : first + i;
        memcpy(t->h_x + i * t->D1, s->x + row * D, D * sizeof(float));
        t->h_x[i * t->D1 + D] = 1.0f;
        t->h_y[i] = s->y[row];
    }
}

static double phase_mark(trainer *t, int timed, double *last, double *acc)
{
    if (!timed)
        return 0.0;
    clFinish(t->q);
    const double n = now_s(), d = n - *last;
    *acc += d;
    *last = n;
    return d;
}

static int evaluate(trainer *t, run_result *res);

/* One training run: reset the parameters, train (evaluating along the way with --curve). */
static int train_run(trainer *t, efl_mode mode, run_result *res)
{
    const options *o = t->opt;
    const uint32_t C = t->C, D1 = t->D1;
    const size_t P = (size_t)D1 * C;
    memset(res, 0, sizeof *res);
    const char *tag = mode == EFL_MODE_EFL ? "EFL" : "focal";

    efl_loss_config cfg;
    efl_loss_config_init_mode(&cfg, C, mode); /* gamma_b 2, alpha 0.25; EFL: s 8; focal: s 0 */
    if (mode == EFL_MODE_EFL)
        cfg.scale_factor = o->efl_s;
    efl_loss *loss = NULL;
    EFL_TRY(efl_loss_create(t->ectx, &cfg, &loss), "efl_loss_create");

    /* The same start for both runs: parameters, zero momentum, the same data order. */
    CL_TRY(clEnqueueWriteBuffer(t->q, t->w, CL_TRUE, 0, P * 4, t->h_w0, 0, NULL, NULL), "writing W");
    const float zero = 0.0f;
    CL_TRY(clEnqueueFillBuffer(t->q, t->v, &zero, sizeof zero, 0, P * 4, 0, NULL, NULL), "clearing the momentum");

    const size_t B = o->batch, n_train = t->train.n;
    const size_t steps_per_epoch = n_train / B; /* the last partial batch is dropped, as detectors do */
    const size_t total = steps_per_epoch * o->epochs;
    const size_t warmup = steps_per_epoch;                  /* linear warm-up over the first epoch */
    const size_t decay_at = total - total / 4;              /* x0.1 for the last quarter */
#ifdef EFL_TRAIN_MPI
    const int tty = 0; /* mpirun gives every rank a pseudo-terminal even when its own output is a pipe */
#else
    const int tty = isatty(STDOUT_FILENO);
#endif
    const size_t print_every = tty ? (total >= 200 ? total / 200 : 1) : (total >= 10 ? total / 10 : 1);
    const size_t rank_first = (size_t)g_rank * B / (size_t)g_ranks;
    const size_t rank_rows = ((size_t)g_rank + 1) * B / (size_t)g_ranks - rank_first;
    size_t step = 0;
    float last_loss = 0.0f;
    double t0 = now_s();
    int rc = 0;

    for (uint32_t epoch = 0; rc == 0 && epoch < o->epochs; ++epoch) {
        /* The data order: a permutation seeded by the epoch, the same in both runs and on all ranks. */
        td_rng r;
        td_rng_seed(&r, o->seed * 1000003u + epoch + 17);
        for (size_t i = 0; i < n_train; ++i)
            t->order[i] = i;
        for (size_t i = n_train; i > 1; --i) {
            const size_t j = td_rng_below(&r, i), tmp = t->order[i - 1];
            t->order[i - 1] = t->order[j];
            t->order[j] = tmp;
        }
        for (size_t s = 0; s < steps_per_epoch; ++s, ++step) {
            /* Timing: the first steps compile CLBlast's kernels, so they are left out. */
            const int timed = o->breakdown && step >= 2;
            double mark = timed ? (clFinish(t->q), now_s()) : 0.0;
            const size_t first = s * B;
            /* The normalizer: positive rows of the whole batch (every rank's slice), at least 1. */
            int npos = 0;
            for (size_t i = 0; i < B; ++i)
                npos += t->train.y[t->order[first + i]] > 0;
            gather(t, &t->train, t->order, first + rank_first, rank_rows);
            CL_TRY(clEnqueueWriteBuffer(t->q, t->x, CL_TRUE, 0, rank_rows * D1 * 4, t->h_x, 0, NULL, NULL),
                   "writing X");
            CL_TRY(clEnqueueWriteBuffer(t->q, t->y, CL_TRUE, 0, rank_rows * 4, t->h_y, 0, NULL, NULL),
                   "writing the labels");
            phase_mark(t, timed, &mark, &res->phase_s[PH_UPLOAD]);

            /* Forward: logits [n, C] = [X 1] [W; b]. */
            BLAS_TRY(CLBlastSgemm(CLBlastLayoutRowMajor, CLBlastTransposeNo, CLBlastTransposeNo, rank_rows, C, D1,
                                  1.0f, t->x, 0, D1, t->w, 0, C, 0.0f, t->logits, 0, C, &t->q, NULL),
                     "CLBlastSgemm (forward)");
            phase_mark(t, timed, &mark, &res->phase_s[PH_FORWARD]);

            /* The loss: gradient into `grad`, EFL's state updated on the device. */
            efl_batch eb;
            efl_batch_init(&eb);
            eb.rows = rank_rows;
            eb.input[0] = t->logits;
            eb.grad[0] = t->grad;
            eb.labels = t->y;
            eb.reduction = EFL_REDUCTION_MEAN;
            eb.normalizer = (float)(npos > 0 ? npos : 1);
            eb.loss = t->loss;
#ifdef EFL_TRAIN_MPI
            /* EFL: the per-class statistics summed over the ranks before the update. Focal loss keeps
             * none (efl_mpi_enqueue_batch would refuse it with EFL_ERROR_INVALID_MODE): a plain step. */
            if (mode == EFL_MODE_EFL)
                EFL_TRY(efl_mpi_enqueue_batch(loss, t->q, EFL_OP_STEP, &eb, MPI_COMM_WORLD), "efl_mpi_enqueue_batch");
            else
                EFL_TRY(efl_enqueue_batch(loss, t->q, EFL_OP_STEP, &eb, 0, NULL, NULL), "efl_enqueue_batch");
#else
            EFL_TRY(efl_enqueue_batch(loss, t->q, EFL_OP_STEP, &eb, 0, NULL, NULL), "efl_enqueue_batch");
#endif
            phase_mark(t, timed, &mark, &res->phase_s[PH_LOSS]);

            /* Backward and update. lr: linear warm-up, then x0.1 for the last quarter. */
            float lr = o->lr;
            if (step < warmup)
                lr *= (float)(step + 1) / (float)warmup;
            if (step >= decay_at)
                lr *= 0.1f;
#ifdef EFL_TRAIN_MPI
            /* [dW; db] = [X 1]^T G on this slice, summed over the ranks. */
            BLAS_TRY(CLBlastSgemm(CLBlastLayoutRowMajor, CLBlastTransposeYes, CLBlastTransposeNo, D1, C, rank_rows,
                                  1.0f, t->x, 0, D1, t->grad, 0, C, 0.0f, t->dw, 0, C, &t->q, NULL),
                     "CLBlastSgemm (backward)");
            CL_TRY(clEnqueueReadBuffer(t->q, t->dw, CL_TRUE, 0, P * 4, t->h_grad, 0, NULL, NULL), "reading dW");
            phase_mark(t, timed, &mark, &res->phase_s[PH_BACKWARD]);
            /* The sum over the ranks, the same bits everywhere: MPI_Allreduce does not promise every
             * rank the same rounding (efl_mpi.h), so reduce to rank 0 and broadcast, as efl_mpi does. */
            if (MPI_Reduce(g_rank == 0 ? MPI_IN_PLACE : t->h_grad, g_rank == 0 ? t->h_grad : NULL, (int)P, MPI_FLOAT,
                           MPI_SUM, 0, MPI_COMM_WORLD) != MPI_SUCCESS ||
                MPI_Bcast(t->h_grad, (int)P, MPI_FLOAT, 0, MPI_COMM_WORLD) != MPI_SUCCESS)
                return fail("summing [dW; db] over the ranks", NULL);
            if (timed) {
                const double n = now_s();
                res->phase_s[PH_ALLREDUCE] += n - mark;
                mark = n;
            }
            CL_TRY(clEnqueueWriteBuffer(t->q, t->dw, CL_TRUE, 0, P * 4, t->h_grad, 0, NULL, NULL), "writing dW");
            /* v = momentum v + dW + wd W (the bias row decays too: a small, harmless simplification) */
            BLAS_TRY(CLBlastSscal(P, o->momentum, t->v, 0, 1, &t->q, NULL), "CLBlastSscal");
            BLAS_TRY(CLBlastSaxpy(P, 1.0f, t->dw, 0, 1, t->v, 0, 1, &t->q, NULL), "CLBlastSaxpy");
#else
            /* v = momentum v + [X 1]^T G in one GEMM (beta = momentum): dW and db = column sums of G. */
            BLAS_TRY(CLBlastSgemm(CLBlastLayoutRowMajor, CLBlastTransposeYes, CLBlastTransposeNo, D1, C, rank_rows,
                                  1.0f, t->x, 0, D1, t->grad, 0, C, o->momentum, t->v, 0, C, &t->q, NULL),
                     "CLBlastSgemm (backward)");
#endif
            if (o->weight_decay > 0.0f)
                BLAS_TRY(CLBlastSaxpy(P, o->weight_decay, t->w, 0, 1, t->v, 0, 1, &t->q, NULL), "CLBlastSaxpy (decay)");
            BLAS_TRY(CLBlastSaxpy(P, -lr, t->v, 0, 1, t->w, 0, 1, &t->q, NULL), "CLBlastSaxpy (update)");
            phase_mark(t, timed, &mark, &res->phase_s[PH_BACKWARD]);
            res->timed_steps += timed;

            if ((step + 1) % print_every == 0 || step + 1 == total) {
                CL_TRY(clEnqueueReadBuffer(t->q, t->loss, CL_TRUE, 0, 4, &last_loss, 0, NULL, NULL), "reading the loss");
#ifdef EFL_TRAIN_MPI
                MPI_Allreduce(MPI_IN_PLACE, &last_loss, 1, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
#endif
                const double el = now_s() - t0;
                if (g_rank == 0) {
                    printf("%s[%-5s] epoch %u/%u  step %zu/%zu  loss %.4f  %.1f steps/s%s", tty ? "\r" : "", tag,
                           epoch + 1, o->epochs, step + 1, total, last_loss, (double)(step + 1) / el,
                           tty ? "   " : "\n");
                    fflush(stdout);
                }
            }
        }
        const uint32_t done = epoch + 1;
        if (o->curve && g_rank == 0 && done < o->epochs && (done & (done - 1)) == 0) {
            run_result mid;
            memset(&mid, 0, sizeof mid);
            rc = evaluate(t, &mid);
            free(mid.ap_class);
            if (rc == 0)
                printf("%s[%-5s] after epoch %u: test AP %.4f (rare %.4f, common %.4f, frequent %.4f)\n",
                       tty ? "\r" : "", tag, done, mid.ap[TD_GROUPS], mid.ap[TD_RARE], mid.ap[TD_COMMON],
                       mid.ap[TD_FREQUENT]);
        }
    }
    if (tty)
        printf("\n");
    CL_TRY(clFinish(t->q), "clFinish");
    res->train_s = now_s() - t0;
    res->final_loss = last_loss;
    efl_status st = efl_loss_query_status(loss, t->q);
    if (st != EFL_OK)
        rc = fail("a training step (efl_loss_query_status)", efl_status_string(st));

    /* EFL: the per-class g = pos_grad / neg_grad at the end, averaged per group. */
    if (rc == 0 && mode == EFL_MODE_EFL) {
        int n[TD_GROUPS] = {0};
        res->state = malloc(3 * (size_t)C * sizeof *res->state); /* pos_grad, neg_grad, g */
        if (!res->state)
            rc = fail("allocating host memory", NULL);
        else if (efl_loss_read_state(loss, t->q, res->state, res->state + C, res->state + 2 * C) != EFL_OK)
            rc = fail("efl_loss_read_state", NULL);
        for (uint32_t c = 0; rc == 0 && c < C; ++c) {
            const int grp = td_group_of(t->train.count[c + 1]);
            res->g_mean[grp] += res->state[2 * C + c];
            n[grp]++;
        }
        for (int k = 0; k < TD_GROUPS; ++k)
            res->g_mean[k] = n[k] ? res->g_mean[k] / n[k] : 0.0;
    }
    efl_loss_destroy(loss);
    return rc;
}

#ifdef EFL_TRAIN_MPI
/* The largest difference between this rank's values and rank 0's, over all ranks. */
static double max_diff_to_root(const double *mine, size_t n)
{
    double *root = malloc(n * sizeof *root), d = 0.0;
    if (!root)
        return INFINITY;
    memcpy(root, mine, n * sizeof *root);
    MPI_Bcast(root, (int)n, MPI_DOUBLE, 0, MPI_COMM_WORLD);
    for (size_t i = 0; i < n; ++i)
        d = fmax(d, fabs(mine[i] - root[i]));
    MPI_Allreduce(MPI_IN_PLACE, &d, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    free(root);
    return d;
}

/* Every rank should now hold the model and the EFL state rank 0 holds, bit for bit. */
static int check_ranks_agree(trainer *t, const double *state, double *w_diff, double *state_diff)
{
    const size_t P = (size_t)t->D1 * t->C;
    float *w = malloc(P * sizeof *w);
    double *wd = malloc(P * sizeof *wd);
    if (!w || !wd)
        return free(w), free(wd), fail("allocating host memory", NULL);
    cl_int err = clEnqueueReadBuffer(t->q, t->w, CL_TRUE, 0, P * 4, w, 0, NULL, NULL);
    for (size_t i = 0; i < P; ++i)
        wd[i] = w[i];
    free(w);
    CL_TRY(err, "reading W");
    *w_diff = max_diff_to_root(wd, P);
    *state_diff = state ? max_diff_to_root(state, 3 * (size_t)t->C) : 0.0;
    free(wd);
    return 0;
}
#endif

/* Scores of the test set, class-major [C, n] (each class's column contiguous for the AP), from
 * GEMMs on the device: S^T = [W; b]^T [X 1]^T, a chunk of rows at a time. Rank 0 only. */
static int evaluate(trainer *t, run_result *res)
{
    float *scores_t = t->scores;
    const uint32_t C = t->C, D1 = t->D1;
    const size_t n = t->test.n, chunk = t->shard_max;
    for (size_t first = 0; first < n; first += chunk) {
        const size_t m = n - first < chunk ? n - first : chunk;
        gather(t, &t->test, NULL, first, m);
        CL_TRY(clEnqueueWriteBuffer(t->q, t->x, CL_TRUE, 0, m * D1 * 4, t->h_x, 0, NULL, NULL), "writing test X");
        /* logits buffer as [C, m]: (W^T)[C, D1] x (X^T)[D1, m] */
        BLAS_TRY(CLBlastSgemm(CLBlastLayoutRowMajor, CLBlastTransposeYes, CLBlastTransposeYes, C, m, D1, 1.0f, t->w, 0,
                              C, t->x, 0, D1, 0.0f, t->logits, 0, m, &t->q, NULL),
                 "CLBlastSgemm (evaluation)");
        const size_t origin[3] = {0, 0, 0}, host_origin[3] = {first * 4, 0, 0}, region[3] = {m * 4, C, 1};
        CL_TRY(clEnqueueReadBufferRect(t->q, t->logits, CL_TRUE, origin, host_origin, region, m * 4, 0, n * 4, 0,
                                       scores_t, 0, NULL, NULL),
               "reading the scores");
    }
    void *work = malloc(td_ap_work_bytes(n));
    res->ap_class = malloc(C * sizeof *res->ap_class);
    if (!work || !res->ap_class)
        return free(work), fail("allocating host memory", NULL);
    for (uint32_t c = 0; c < C; ++c) {
        const float *sc = scores_t + (size_t)c * n;
        const double ap = td_average_precision(sc, 1, t->test.y, n, (int32_t)c + 1, work);
        res->ap_class[c] = ap;
        if (ap < 0.0)
            continue;
        double p = 0.0;
        size_t np = 0;
        for (size_t i = 0; i < n; ++i)
            if (t->test.y[i] == (int32_t)c + 1) {
                p += 1.0 / (1.0 + exp(-(double)sc[i]));
                ++np;
            }
        const int g = td_group_of(t->train.count[c + 1]);
        res->ap[g] += ap;
        res->p_pos[g] += p / (double)np;
        res->classes[g]++;
        res->ap[TD_GROUPS] += ap;
        res->p_pos[TD_GROUPS] += p / (double)np;
        res->classes[TD_GROUPS]++;
    }
    for (int g = 0; g <= TD_GROUPS; ++g) {
        res->ap[g] = res->classes[g] ? res->ap[g] / res->classes[g] : 0.0;
        res->p_pos[g] = res->classes[g] ? res->p_pos[g] / res->classes[g] : 0.0;
    }
    free(work);
    return 0;
}

/* Two reference scorers, no training: the class mean of the training positives (what a few
 * samples can tell about a class's direction), and the true prototypes (the ceiling). AP per
 * class depends only on the ranking of that class's scores, so score = w_c . x is enough. */
static int evaluate_reference(trainer *t, int oracle, run_result *res)
{
    const uint32_t C = t->C, D = t->D1 - 1;
    float *w = calloc((size_t)t->D1 * C, sizeof *w);
    if (!w)
        return fail("allocating host memory", NULL);
    for (uint32_t c = 0; c < C; ++c)
        for (uint32_t j = 0; j < D; ++j)
            w[(size_t)j * C + c] = oracle ? t->protos[(size_t)c * D + j] : 0.0f;
    if (!oracle)
        for (size_t i = 0; i < t->train.n; ++i) {
            const int32_t k = t->train.y[i];
            if (k > 0)
                for (uint32_t j = 0; j < D; ++j)
                    w[(size_t)j * C + (uint32_t)(k - 1)] += t->train.x[i * D + j];
        }
    cl_int err = clEnqueueWriteBuffer(t->q, t->w, CL_TRUE, 0, (size_t)t->D1 * C * 4, w, 0, NULL, NULL);
    free(w);
    CL_TRY(err, "writing W");
    return evaluate(t, res);
}

static void print_breakdown(const trainer *t, const char *tag, const run_result *r)
{
    if (!r->timed_steps)
        return;
    double total = 0.0;
    for (int p = 0; p < PH_COUNT; ++p)
        total += r->phase_s[p];
    const double k = 1e3 / (double)r->timed_steps;
    char line[1024];
    char rows[64];
    if (g_ranks > 1)
        snprintf(rows, sizeof rows, "%u of %u rows per rank", t->shard_max, t->opt->batch);
    else
        snprintf(rows, sizeof rows, "%u rows", t->opt->batch);
    int at = snprintf(line, sizeof line, "breakdown [%s] per step (%s x %u classes, D %u, %zu steps):", tag, rows,
                      t->C, t->D1 - 1, r->timed_steps);
    for (int p = 0; p < PH_COUNT; ++p) {
        if (p == PH_ALLREDUCE && g_ranks == 1)
            continue;
        at += snprintf(line + at, sizeof line - (size_t)at, " %s %.2f ms (%.0f%%)%s", phase_names[p],
                       r->phase_s[p] * k, 100.0 * r->phase_s[p] / total,
                       p + 1 < PH_COUNT && !(p + 2 == PH_COUNT && g_ranks == 1) ? "," : "");
    }
    const double gemm = r->phase_s[PH_FORWARD] + r->phase_s[PH_BACKWARD], lossp = r->phase_s[PH_LOSS];
    say("%s; GEMM %.2f ms vs loss %.2f ms per step (GEMM/loss %.2fx)\n", line, gemm * k, lossp * k,
        lossp > 0.0 ? gemm / lossp : 0.0);
}

int main(int argc, char **argv)
{
#ifdef EFL_TRAIN_MPI
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_ranks);
#endif
    options o;
    int rc = parse_options(argc, argv, &o);
    if (rc != 0) {
        if (g_rank == 0)
            usage(stderr);
#ifdef EFL_TRAIN_MPI
        MPI_Finalize();
#endif
        return 2;
    }
    const double t_start = now_s();
    static trainer t;
    rc = trainer_init(&t, &o);
    if (rc == 0) {
        char dev[512];
        efl_device_describe(t.dev, dev, sizeof dev);
        int groups[TD_GROUPS] = {0};
        uint32_t lo[TD_GROUPS], hi[TD_GROUPS];
        for (int g = 0; g < TD_GROUPS; ++g)
            lo[g] = UINT32_MAX, hi[g] = 0;
        size_t fg = 0;
        for (uint32_t k = 1; k <= o.C; ++k) {
            const uint32_t c = t.train.count[k];
            const int g = td_group_of(c);
            groups[g]++;
            lo[g] = c < lo[g] ? c : lo[g];
            hi[g] = c > hi[g] ? c : hi[g];
            fg += c;
        }
        say("efl-train-head: linear head, CLBlast GEMMs + efl %s, on %s%s\n", efl_version_string(), dev,
            g_ranks > 1 ? "" : "");
        if (g_ranks > 1)
            say("  %d ranks: each takes %u/%d rows of every batch; EFL statistics and [dW; db] all-reduced\n", g_ranks,
                o.batch, g_ranks);
        say("  train: %zu rows = %zu foreground (Zipf 1/k over %u classes, %u..%u per class) + %u background "
            "(%.1f%%); D = %u, signal %.2f sigma\n",
            t.train.n, fg, o.C, t.train.count[o.C], t.train.count[1], t.train.count[0],
            100.0 * t.train.count[0] / (double)t.train.n, o.D, (double)o.signal);
        say("  groups by training positives: frequent %d classes (%u..%u), common %d (%u..%u), rare %d (%u..%u)\n",
            groups[TD_FREQUENT], lo[TD_FREQUENT], hi[TD_FREQUENT], groups[TD_COMMON], lo[TD_COMMON], hi[TD_COMMON],
            groups[TD_RARE], lo[TD_RARE], hi[TD_RARE]);
        if (g_rank == 0)
            say("  test: %zu rows, the same Zipf draw with at least %u positives per class (the tail oversampled in "
                "the test set only), %u background\n",
                t.test.n, o.test_min_pos, t.test.count[0]);
        say("  batch %u rows, %zu steps per epoch, %u epochs, SGD lr %g momentum %g, weight decay %g\n", o.batch,
            t.train.n / o.batch, o.epochs, (double)o.lr, (double)o.momentum, (double)o.weight_decay);
    }
    run_result res[2];
    memset(res, 0, sizeof res);
    const efl_mode modes[2] = {EFL_MODE_FOCAL, EFL_MODE_EFL};
    const int want[2] = {o.run_focal, o.run_efl};
    for (int m = 0; rc == 0 && m < 2; ++m) {
        if (!want[m])
            continue;
        rc = train_run(&t, modes[m], &res[m]);
#ifdef EFL_TRAIN_MPI
        if (rc == 0) {
            double wd = 0.0, sd = 0.0;
            rc = check_ranks_agree(&t, res[m].state, &wd, &sd);
            say("  ranks %s: max |W - W(rank 0)| = %g, max |EFL state - rank 0's| = %g over all %d ranks\n",
                wd == 0.0 && sd == 0.0 ? "agree bit for bit" : "DIFFER", wd, sd, g_ranks);
        }
#endif
        if (rc == 0 && g_rank == 0)
            rc = evaluate(&t, &res[m]);
        if (rc == 0) {
            const char *tag = m ? "EFL" : "focal";
            say("  %s: trained in %.1f s, final loss %.4f", tag, res[m].train_s, res[m].final_loss);
            if (g_rank == 0)
                say(", test AP %.4f (rare %.4f, common %.4f, frequent %.4f)", res[m].ap[TD_GROUPS],
                    res[m].ap[TD_RARE], res[m].ap[TD_COMMON], res[m].ap[TD_FREQUENT]);
            say("\n");
            if (m == 1)
                say("  EFL's g = pos_grad / neg_grad at the end, mean per group: rare %.3f, common %.3f, frequent "
                    "%.3f\n",
                    res[m].g_mean[TD_RARE], res[m].g_mean[TD_COMMON], res[m].g_mean[TD_FREQUENT]);
            if (o.breakdown)
                print_breakdown(&t, tag, &res[m]);
        }
    }
    run_result ref[2];
    memset(ref, 0, sizeof ref);
    for (int k = 0; rc == 0 && g_rank == 0 && o.references && k < 2; ++k)
        rc = evaluate_reference(&t, k, &ref[k]);
    if (rc == 0 && g_rank == 0) {
        printf("\n| group | #classes | AP focal | AP EFL |\n| --- | --- | --- | --- |\n");
        static const int rows[4] = {TD_FREQUENT, TD_COMMON, TD_RARE, TD_GROUPS};
        for (int i = 0; i < 4; ++i) {
            const int g = rows[i];
            char f[16] = "-", e[16] = "-";
            if (want[0])
                snprintf(f, sizeof f, "%.4f", res[0].ap[g]);
            if (want[1])
                snprintf(e, sizeof e, "%.4f", res[1].ap[g]);
            printf("| %s | %d | %s | %s |\n", g == TD_GROUPS ? "all" : td_group_name(g),
                   res[want[0] ? 0 : 1].classes[g], f, e);
        }
        if (o.references) {
            printf("\nreferences and diagnostics (the same test set):\n"
                   "| group | AP class mean of the training positives | AP true prototypes | mean p on own positives, "
                   "focal | EFL |\n| --- | --- | --- | --- | --- |\n");
            for (int i = 0; i < 4; ++i) {
                const int g = rows[i];
                printf("| %s | %.4f | %.4f | %.4f | %.4f |\n", g == TD_GROUPS ? "all" : td_group_name(g), ref[0].ap[g],
                       ref[1].ap[g], res[0].p_pos[g], res[1].p_pos[g]);
            }
        }
        printf("total wall time %.1f s\n", now_s() - t_start);
    }
    free(res[0].ap_class);
    free(res[1].ap_class);
    free(res[0].state);
    free(res[1].state);
    free(ref[0].ap_class);
    free(ref[1].ap_class);
    trainer_free(&t);
#ifdef EFL_TRAIN_MPI
    if (rc != 0)
        MPI_Abort(MPI_COMM_WORLD, 1);
    MPI_Finalize();
#endif
    return rc == 0 ? 0 : 1;
}
