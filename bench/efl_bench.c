/* efl-bench: the EFL step against the device's own memory ceilings.
 *
 * For each OpenCL device (all of them, or those --device / EFL_DEVICE select, or the library's
 * own pick with --default): the first-call latency (efl_loss_create on a fresh efl_context to
 * the first finished step, LVIS shape), the copy and read bandwidth ceilings (ceiling.c), then
 * the median time of efl_enqueue_step on device buffers for a set of detection shapes. A step
 * is timed between two profiling markers around it (so all three of its kernels count), or by
 * the wall clock (enqueue to clFinish) where the device's events report no usable time (rusticl
 * returns zero or constant timestamps; ceiling.c checks the timer against a long copy). Bytes of a step are the
 * logits read, the gradient written and the labels read: N*C*4 + N*C*4 + N*4.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench_util.h"

/* ------------------------------------------------------------------ cases */
typedef struct {
    const char *name;
    size_t n;
    uint32_t c;
    int forward; /* also time efl_enqueue_forward */
    int dtype;   /* efl_dtype of logits and gradient */
    int layout;  /* efl_layout: head layouts read LVIS_HEAD's levels in place */
} case_def;

/* The detection head's own outputs for LVIS at 800 x 1333: five FPN levels (strides 8..128),
 * 2 anchors, 2 images: 89,200 rows, read per level as [B, A*C, H, W] with no concatenation. */
#define LVIS_HEAD_LEVELS 5
static const uint32_t lvis_head_h[LVIS_HEAD_LEVELS] = {100, 50, 25, 13, 7};
static const uint32_t lvis_head_w[LVIS_HEAD_LEVELS] = {167, 84, 42, 21, 11};
#define LVIS_HEAD_B 2
#define LVIS_HEAD_A 2
#define LVIS_HEAD_ROWS 89200

static const case_def named_cases[] = {
    {"lvis", 90000, 1203, 1, EFL_DTYPE_FLOAT32, EFL_LAYOUT_ROWS},
    {"coco", 90000, 80, 0, EFL_DTYPE_FLOAT32, EFL_LAYOUT_ROWS},
    {"coco-360k", 360000, 80, 0, EFL_DTYPE_FLOAT32, EFL_LAYOUT_ROWS},
    {"openimages", 50000, 500, 0, EFL_DTYPE_FLOAT32, EFL_LAYOUT_ROWS},
    {"lvis-f16", 90000, 1203, 1, EFL_DTYPE_FLOAT16, EFL_LAYOUT_ROWS},
    {"lvis-bf16", 90000, 1203, 1, EFL_DTYPE_BFLOAT16, EFL_LAYOUT_ROWS},
    {"lvis-anchor", LVIS_HEAD_ROWS, 1203, 0, EFL_DTYPE_FLOAT32, EFL_LAYOUT_ANCHOR_MAJOR},
    {"lvis-class", LVIS_HEAD_ROWS, 1203, 0, EFL_DTYPE_FLOAT32, EFL_LAYOUT_CLASS_MAJOR},
};
static const char *const dtype_names[] = {"f32", "f16", "bf16"};
static const size_t dtype_bytes[] = {4, 2, 2};
#define NUM_NAMED (sizeof named_cases / sizeof named_cases[0])
static const size_t sweep_n[] = {1000, 3000, 10000, 30000, 100000, 200000, 400000};
#define NUM_SWEEP (sizeof sweep_n / sizeof sweep_n[0])
#define MAX_SWEEP 16 /* points --sweep may give */
#define SWEEP_C 1203
#define MAX_CASES (NUM_NAMED + MAX_SWEEP)
#define MAX_ROWS (2 * MAX_CASES)

typedef struct {
    const char *op; /* "step" or "forward" */
    const char *label; /* the case's name, as printed and as --cases takes it ("sweep" for each sweep point) */
    const char *dtype; /* "f32", "f16", "bf16" */
    size_t n, n_wanted;
    uint32_t c;
    double median_s, gbps, fraction_of_copy, gelem_s;
    int wall; /* timed by the wall clock */
} result_row;

typedef struct {
    char name[256], vendor[256], platform[256];
    cl_device_type type;
    cl_ulong max_alloc, global_mem;
    double copy_gbps, read_gbps, first_call_s, first_call_warm_s;
    double empty_roundtrip_s, small_step_s; /* wall clock, enqueue to clFinish */
    double native_gelem_s;                  /* efl-native-loop at the LVIS shape, same run (CPUs) */
    size_t ceiling_bytes;
    int ceiling_wall;
    result_row rows[MAX_ROWS];
    size_t nrows;
} device_result;

typedef struct {
    const char *device_sel;
    int use_default;
    const char *json_path, *csv_path;
    double min_time;
    int force_wall; /* --wall */
    int tune;       /* --tune */
    int no_helpers; /* --no-helpers: no efl-native-loop, no efl-train-head */
    char native_path[1024]; /* efl-native-loop beside this program, "" if absent */
    char train_head_path[1024]; /* efl-train-head in the build folder above this one, "" if absent */
    case_def cases[MAX_CASES];
    size_t sweep[MAX_SWEEP], nsweep; /* --sweep: the sweep's N values (0 of them: sweep_n) */
    size_t ncases;
} options;

/* ------------------------------------------------------------------ errors */
static void print_log(const efl_context *ectx)
{
    if (!ectx)
        return;
    size_t len = efl_context_log(ectx, NULL, 0);
    char *buf = len ? malloc(len + 1) : NULL;
    if (!buf)
        return;
    efl_context_log(ectx, buf, len + 1);
    fprintf(stderr, "---- efl_context_log ----\n%s\n-------------------------\n", buf);
    free(buf);
}

/* A non-OK status: say what failed, where, and the context's log. */
static int efl_fail(const char *what, const char *dev, efl_status st, const efl_context *ectx)
{
    fprintf(stderr, "efl-bench: %s failed on %s: %s (status %d", what, dev, efl_status_string(st), (int)st);
    if (ectx && efl_context_last_cl_error(ectx) != CL_SUCCESS)
        fprintf(stderr, ", OpenCL error %d", (int)efl_context_last_cl_error(ectx));
    fprintf(stderr, ")\n");
    print_log(ectx);
    return -1;
}

static int cl_fail(const char *what, const char *dev, cl_int err)
{
    fprintf(stderr, "efl-bench: %s failed on %s: OpenCL error %d\n", what, dev, (int)err);
    return -1;
}

/* ------------------------------------------------------------------ data */
/* Logits ~ N(-4, 2.5) (a detector's scores: most anchors confidently background), written to
 * the buffer tile by tile from one random tile of 8 Mi floats. */
/* float -> float16 or bfloat16 bits, rounded to nearest (even) */
static uint16_t to_16(float f, int dtype)
{
    uint32_t b;
    memcpy(&b, &f, 4);
    if (dtype == EFL_DTYPE_BFLOAT16)
        return (uint16_t)((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16);
    const uint32_t sign = (b >> 16) & 0x8000u;
    const int e = (int)((b >> 23) & 0xFF) - 127;
    if (e < -24)
        return (uint16_t)sign;
    if (e > 15)
        return (uint16_t)(sign | 0x7C00u);
    const uint32_t m = (b & 0x7FFFFFu) | 0x800000u; /* 24 significant bits */
    const int shift = e >= -14 ? 13 : 13 + (-14 - e);
    uint32_t q = m >> shift;
    const uint32_t rest = m & ((1u << shift) - 1u), half = 1u << (shift - 1);
    q += rest > half || (rest == half && (q & 1u));
    /* normal: exponent field from e, mantissa q without its leading 1 (a carry moves up) */
    return (uint16_t)(sign | (e >= -14 ? ((uint32_t)(e + 14) << 10) + q : q));
}

static cl_int fill_logits_as(cl_command_queue q, cl_mem buf, size_t count, int dtype);
static cl_int fill_logits(cl_command_queue q, cl_mem buf, size_t count)
{
    return fill_logits_as(q, buf, count, EFL_DTYPE_FLOAT32);
}

static cl_int fill_logits_as(cl_command_queue q, cl_mem buf, size_t count, int dtype)
{
    const size_t tile_n = ((size_t)8 << 20) + 7; /* odd length: rows do not repeat in step */
    const size_t len = count < tile_n ? count : tile_n;
    float *tile = malloc(len * sizeof *tile);
    if (!tile)
        return CL_OUT_OF_HOST_MEMORY;
    uint64_t s = 0x243F6A8885A308D3ULL;
    for (size_t i = 0; i < len; i += 2) {
        const double u1 = 1.0 - bench_rand_unit(&s), u2 = bench_rand_unit(&s);
        const double r = sqrt(-2.0 * log(u1)), t = 6.283185307179586 * u2;
        tile[i] = (float)(-4.0 + 2.5 * r * cos(t));
        if (i + 1 < len)
            tile[i + 1] = (float)(-4.0 + 2.5 * r * sin(t));
    }
    const size_t es = dtype_bytes[dtype];
    if (dtype != EFL_DTYPE_FLOAT32) /* in place: 16-bit values into the front of the tile */
        for (size_t i = 0; i < len; ++i)
            ((uint16_t *)tile)[i] = to_16(tile[i], dtype);
    cl_int err = CL_SUCCESS;
    for (size_t off = 0; err == CL_SUCCESS && off < count; off += len) {
        const size_t k = count - off < len ? count - off : len;
        err = clEnqueueWriteBuffer(q, buf, CL_TRUE, off * es, k * es, tile, 0, NULL, NULL);
    }
    free(tile);
    return err;
}

/* The labels of bench_zipf_labels (bench_data.h), seeded by the shape. */
static cl_int write_labels(cl_command_queue q, cl_mem buf, size_t n, uint32_t C)
{
    int32_t *lab = malloc((n ? n : 1) * sizeof *lab);
    uint64_t s = 0xB7E151628AED2A6BULL ^ ((uint64_t)C << 32) ^ n;
    cl_int err = CL_OUT_OF_HOST_MEMORY;
    if (lab && bench_zipf_labels(&s, lab, n, C))
        err = n ? clEnqueueWriteBuffer(q, buf, CL_TRUE, 0, n * sizeof *lab, lab, 0, NULL, NULL) : CL_SUCCESS;
    free(lab);
    return err;
}

/* ------------------------------------------------------------------ timing */
typedef struct {
    cl_mem logits, labels, grad, loss_out;
    cl_mem logits16[3]; /* the same logits stored as float16 / bfloat16, made when needed */
    int dtype;          /* of the case being timed */
    int layout;         /* of the case being timed */
    cl_mem level_x[LVIS_HEAD_LEVELS], level_g[LVIS_HEAD_LEVELS]; /* head layouts, made when needed */
} buffers;

/* The head layout's per-level buffers, filled like the rows layout's logits. */
static cl_int make_levels(cl_context cl, cl_command_queue q, buffers *b, uint32_t C)
{
    cl_int err = CL_SUCCESS;
    for (int l = 0; l < LVIS_HEAD_LEVELS && err == CL_SUCCESS && !b->level_x[l]; ++l) {
        const size_t elems = (size_t)LVIS_HEAD_B * LVIS_HEAD_A * C * lvis_head_h[l] * lvis_head_w[l];
        b->level_x[l] = clCreateBuffer(cl, CL_MEM_READ_ONLY, elems * sizeof(float), NULL, &err);
        if (err == CL_SUCCESS)
            b->level_g[l] = clCreateBuffer(cl, CL_MEM_READ_WRITE, elems * sizeof(float), NULL, &err);
        if (err == CL_SUCCESS)
            err = fill_logits(q, b->level_x[l], elems);
        const float zero = 0.0f;
        if (err == CL_SUCCESS)
            err = clEnqueueFillBuffer(q, b->level_g[l], &zero, sizeof zero, 0, elems * sizeof(float), 0, NULL, NULL);
    }
    return err == CL_SUCCESS ? clFinish(q) : err;
}

static void release_levels(buffers *b)
{
    for (int l = 0; l < LVIS_HEAD_LEVELS; ++l) {
        if (b->level_x[l])
            clReleaseMemObject(b->level_x[l]);
        if (b->level_g[l])
            clReleaseMemObject(b->level_g[l]);
        b->level_x[l] = b->level_g[l] = NULL;
    }
}

static efl_status enqueue_op(efl_loss *loss, cl_command_queue q, const buffers *b, size_t n, int forward)
{
    const efl_dtype dt = (efl_dtype)b->dtype;
    const cl_mem x = dt == EFL_DTYPE_FLOAT32 ? b->logits : b->logits16[dt];
    if (b->layout != EFL_LAYOUT_ROWS) {
        efl_batch bt;
        efl_batch_init(&bt);
        bt.layout = (efl_layout)b->layout;
        bt.images = LVIS_HEAD_B;
        bt.anchors = LVIS_HEAD_A;
        bt.levels = LVIS_HEAD_LEVELS;
        for (int l = 0; l < LVIS_HEAD_LEVELS; ++l) {
            bt.height[l] = lvis_head_h[l];
            bt.width[l] = lvis_head_w[l];
            bt.input[l] = b->level_x[l];
            bt.grad[l] = b->level_g[l];
        }
        bt.labels = b->labels;
        bt.loss = b->loss_out;
        return efl_enqueue_batch(loss, q, forward ? EFL_OP_FORWARD : EFL_OP_STEP, &bt, 0, NULL, NULL);
    }
    if (forward)
        return efl_enqueue_forward_typed(loss, q, dt, x, b->labels, n, 1.0f, EFL_REDUCTION_MEAN, b->loss_out, 0, NULL,
                                         NULL);
    return efl_enqueue_step_typed(loss, q, dt, x, b->labels, n, 1.0f, EFL_REDUCTION_MEAN, b->loss_out, b->grad, 0,
                                  NULL, NULL);
}

/* Warm-up, then repetitions until min_time has passed (at least 3); the median per op. */
static int time_op(efl_context *ectx, efl_loss *loss, cl_command_queue q, const buffers *b, size_t n, int forward,
                   double min_time, int force_wall, const char *dev, double *median, int *wall)
{
    const char *what = forward ? "efl_enqueue_forward" : "efl_enqueue_step";
    efl_status st = enqueue_op(loss, q, b, n, forward);
    if (st != EFL_OK)
        return efl_fail(what, dev, st, ectx);
    if ((st = efl_loss_query_status(loss, q)) != EFL_OK) /* waits for the warm-up */
        return efl_fail("the warm-up step (efl_loss_query_status)", dev, st, ectx);

    double t[1000];
    size_t reps = 0;
    const double start = bench_now();
    while (reps < 1000 && (reps < 3 || bench_now() - start < min_time)) {
        cl_event m0 = NULL, m1 = NULL;
        const double w0 = bench_now();
        cl_int err = clEnqueueMarkerWithWaitList(q, 0, NULL, &m0);
        if (err != CL_SUCCESS)
            return cl_fail("clEnqueueMarkerWithWaitList", dev, err);
        st = enqueue_op(loss, q, b, n, forward);
        if (st != EFL_OK) {
            clReleaseEvent(m0);
            return efl_fail(what, dev, st, ectx);
        }
        err = clEnqueueMarkerWithWaitList(q, 0, NULL, &m1);
        if (err == CL_SUCCESS)
            err = clFinish(q);
        const double w1 = bench_now();
        if (err != CL_SUCCESS) {
            clReleaseEvent(m0);
            if (m1)
                clReleaseEvent(m1);
            return cl_fail("clFinish after a step", dev, err);
        }
        double s = force_wall ? 0.0 : bench_event_span(m0, m1, 0);
        if (s <= 0.0) {
            s = w1 - w0;
            *wall = 1;
        }
        t[reps++] = s;
        clReleaseEvent(m0);
        clReleaseEvent(m1);
    }
    if ((st = efl_loss_query_status(loss, q)) != EFL_OK)
        return efl_fail("the timed steps (efl_loss_query_status)", dev, st, ectx);
    *median = bench_median(t, reps);
    return 0;
}

/* ------------------------------------------------------------------ one device */
static void get_str(cl_device_id dev, cl_device_info what, char *buf, size_t size)
{
    buf[0] = '\0';
    if (clGetDeviceInfo(dev, what, size - 1, buf, NULL) != CL_SUCCESS)
        buf[0] = '\0';
    buf[size - 1] = '\0';
}

static size_t min_size(size_t a, size_t b) { return a < b ? a : b; }

/* Helper programs of the build (efl-native-loop beside this one, efl-train-head in the folder
 * above) run as separate processes: efl-native-loop's -ffast-math runtime flushes denormals
 * process-wide, which must not leak into the OpenCL runtime's threads. Hands every output line
 * that contains `needle` to `fn`; returns pclose's status, or -1. */
static int run_helper(const char *cmd, const char *needle, void (*fn)(const char *line, void *ctx), void *ctx)
{
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    char line[2048];
    while (fgets(line, sizeof line, p))
        if (strstr(line, needle))
            fn(line, ctx);
    return pclose(p);
}

/* "<folder of argv0>/<name>" if that is an executable file, else "". */
static void helper_path(char *out, size_t size, const char *argv0, const char *name)
{
    const char *slash = strrchr(argv0, '/');
    const int dir_len = slash ? (int)(slash - argv0) : 1;
    snprintf(out, size, "%.*s/%s", dir_len, slash ? argv0 : ".", name);
    if (access(out, X_OK) != 0)
        out[0] = '\0';
}

static void parse_gelem(const char *line, void *ctx)
{
    const char *at = strstr(line, " Gelem/s");
    while (at > line && at[-1] != ' ')
        --at;
    *(double *)ctx = strtod(at, NULL);
}

/* On a CPU the arithmetic is the ceiling: the same arithmetic as a plain C loop
 * (efl-native-loop, vectorised by gcc, OpenMP on every core), run right after the step in the
 * same session so both see the same machine. */
static double native_loop_gelem(const options *opt, size_t n, uint32_t C)
{
    if (!opt->native_path[0])
        return 0.0;
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "'%s' %zu %u", opt->native_path, n, C);
    double g = 0.0;
    run_helper(cmd, " Gelem/s", parse_gelem, &g);
    return g;
}

static void print_breakdown_line(const char *line, void *ctx)
{
    ++*(int *)ctx;
    printf("   %s", line);
}

/* A whole training step, end to end: efl-train-head (examples/train_head.c, CLBlast GEMMs + efl)
 * --breakdown --quick on this device, its GEMM time against its loss time. */
static void train_head_breakdown(const options *opt, cl_device_id dev)
{
    if (!opt->train_head_path[0])
        return;
    char sel[900], cmd[2200];
    efl_device_describe(dev, sel, sizeof sel);
    sel[strcspn(sel, " ")] = '\0'; /* "P:D" */
    snprintf(cmd, sizeof cmd, "EFL_DEVICE='%s' '%s' --breakdown --quick 2>&1", sel, opt->train_head_path);
    printf("   training a head end to end (efl-train-head --breakdown --quick, run now):\n");
    fflush(stdout);
    int lines = 0;
    const int status = run_helper(cmd, "breakdown [", print_breakdown_line, &lines);
    if (lines == 0 || status != 0)
        printf("   (efl-train-head failed%s: status %d)\n", lines ? " after its breakdown" : "", status);
}

/* A small step's latency: what a training loop waits for when the batch is tiny. Wall clock,
 * enqueue to clFinish, set against the same for an empty kernel. */
static int small_step(efl_context *ectx, cl_command_queue q, const buffers *b, const char *dn, const options *opt,
                      device_result *out)
{
    enum { SMALL_N = 1000, SMALL_C = 80 };
    efl_loss *loss = NULL;
    efl_loss_config cfg;
    efl_loss_config_init(&cfg, SMALL_C);
    efl_status st = efl_loss_create(ectx, &cfg, &loss);
    if (st != EFL_OK)
        return efl_fail("efl_loss_create", dn, st, ectx);
    cl_int err = write_labels(q, b->labels, SMALL_N, SMALL_C);
    int rc = err != CL_SUCCESS ? cl_fail("writing the labels", dn, err) : 0;
    int wall = 1;
    buffers b32 = *b;
    b32.dtype = EFL_DTYPE_FLOAT32;
    if (rc == 0)
        rc = time_op(ectx, loss, q, &b32, SMALL_N, 0, opt->min_time, 1, dn, &out->small_step_s, &wall);
    efl_loss_destroy(loss);
    if (rc == 0)
        printf("   small step (N=%d, C=%d) enqueue-to-finish: %.1f us = %.2f x the empty kernel's %.1f us\n", SMALL_N,
               SMALL_C, out->small_step_s * 1e6,
               out->empty_roundtrip_s > 0.0 ? out->small_step_s / out->empty_roundtrip_s : 0.0,
               out->empty_roundtrip_s * 1e6);
    return rc;
}

static int run_device(cl_context cl, cl_device_id dev, const options *opt, device_result *out)
{
    memset(out, 0, sizeof *out);
    cl_platform_id plat = NULL;
    get_str(dev, CL_DEVICE_NAME, out->name, sizeof out->name);
    get_str(dev, CL_DEVICE_VENDOR, out->vendor, sizeof out->vendor);
    clGetDeviceInfo(dev, CL_DEVICE_PLATFORM, sizeof plat, &plat, NULL);
    clGetPlatformInfo(plat, CL_PLATFORM_NAME, sizeof out->platform - 1, out->platform, NULL);
    clGetDeviceInfo(dev, CL_DEVICE_TYPE, sizeof out->type, &out->type, NULL);
    clGetDeviceInfo(dev, CL_DEVICE_MAX_MEM_ALLOC_SIZE, sizeof out->max_alloc, &out->max_alloc, NULL);
    clGetDeviceInfo(dev, CL_DEVICE_GLOBAL_MEM_SIZE, sizeof out->global_mem, &out->global_mem, NULL);
    const char *dn = out->name;
    const int is_cpu = (out->type & CL_DEVICE_TYPE_CPU) != 0;
    printf("\n== %s  [%s%s]\n", out->name, out->platform, is_cpu ? ", CPU" : "");
    printf("   max alloc %.0f MiB, global memory %.0f MiB\n", (double)out->max_alloc / 1048576.0,
           (double)out->global_mem / 1048576.0);
    fflush(stdout);

    cl_int err = CL_SUCCESS;
    cl_command_queue q = clCreateCommandQueue(cl, dev, CL_QUEUE_PROFILING_ENABLE, &err);
    if (err != CL_SUCCESS)
        return cl_fail("clCreateCommandQueue", dn, err);

    /* Shapes clipped so logits + grad fit in min(max alloc, global memory / 3). */
    const size_t pair_limit = min_size((size_t)out->max_alloc, (size_t)(out->global_mem / 3));
    size_t ncase = opt->ncases + 1, n_of[MAX_CASES + 1], max_elems = 0, max_n = 0;
    case_def cases[MAX_CASES + 1];
    cases[0] = named_cases[0]; /* the first-call shape (LVIS) */
    memcpy(cases + 1, opt->cases, opt->ncases * sizeof cases[0]);
    for (size_t i = 0; i < ncase; ++i) {
        const size_t fit = pair_limit / (2 * sizeof(float) * cases[i].c);
        n_of[i] = min_size(cases[i].n, fit);
        if (cases[i].layout != EFL_LAYOUT_ROWS)
            continue; /* the head layouts have buffers of their own (below) */
        if (n_of[i] * cases[i].c > max_elems)
            max_elems = n_of[i] * cases[i].c;
        if (n_of[i] > max_n)
            max_n = n_of[i];
    }
    /* A head layout's shape is fixed: it runs whole, in level buffers next to the rows layout's
     * (each level within max alloc, all of them within what global memory leaves), or not at all. */
    for (size_t i = 0; i < ncase; ++i) {
        if (cases[i].layout == EFL_LAYOUT_ROWS)
            continue;
        const double level0 = (double)LVIS_HEAD_B * LVIS_HEAD_A * cases[i].c * lvis_head_h[0] * lvis_head_w[0] * 4.0;
        const double need = 2.0 * (double)cases[i].n * cases[i].c * 4.0 + 2.0 * (double)max_elems * 4.0;
        n_of[i] = level0 <= (double)out->max_alloc && need <= 0.9 * (double)out->global_mem ? cases[i].n : 0;
        if (cases[i].n > max_n)
            max_n = cases[i].n; /* the labels buffer serves it too */
    }

    buffers b;
    memset(&b, 0, sizeof b);
    int rc = 0;
    cl_int e[4];
    b.logits = clCreateBuffer(cl, CL_MEM_READ_ONLY, max_elems * sizeof(float), NULL, &e[0]);
    b.grad = clCreateBuffer(cl, CL_MEM_READ_WRITE, max_elems * sizeof(float), NULL, &e[1]);
    b.labels = clCreateBuffer(cl, CL_MEM_READ_ONLY, max_n * sizeof(cl_int), NULL, &e[2]);
    b.loss_out = clCreateBuffer(cl, CL_MEM_READ_WRITE, sizeof(float), NULL, &e[3]);
    for (int i = 0; i < 4 && rc == 0; ++i)
        if (e[i] != CL_SUCCESS)
            rc = cl_fail("clCreateBuffer (logits, grad, labels)", dn, e[i]);
    if (rc == 0 && (err = fill_logits(q, b.logits, max_elems)) != CL_SUCCESS)
        rc = cl_fail("writing the logits", dn, err);
    const float zero = 0.0f; /* touch grad now: its pages are the caller's cost, not the step's */
    if (rc == 0 && (err = clEnqueueFillBuffer(q, b.grad, &zero, sizeof zero, 0, max_elems * sizeof(float), 0, NULL,
                                              NULL)) != CL_SUCCESS)
        rc = cl_fail("clEnqueueFillBuffer (grad)", dn, err);
    if (rc == 0 && (err = clFinish(q)) != CL_SUCCESS)
        rc = cl_fail("clFinish", dn, err);

    /* First call: a fresh efl_context builds its programs in efl_loss_create. Cold: with an
     * empty disk cache folder of its own (the OpenCL runtime may keep a cache of its own too:
     * PoCL does); warm: a second fresh context, which loads what the first one stored. */
    if (rc == 0 && (err = write_labels(q, b.labels, n_of[0], cases[0].c)) != CL_SUCCESS)
        rc = cl_fail("writing the labels", dn, err);
    const char *saved_dir = getenv("EFL_CACHE_DIR");
    char *keep_dir = saved_dir ? strdup(saved_dir) : NULL;
    char tmp_dir[] = "/tmp/efl-bench-cache-XXXXXX";
    const int have_tmp = mkdtemp(tmp_dir) != NULL;
    if (have_tmp)
        setenv("EFL_CACHE_DIR", tmp_dir, 1);
    for (int pass = 0; rc == 0 && pass < 2; ++pass) {
        efl_context *fresh = NULL;
        efl_loss *loss = NULL;
        efl_loss_config cfg;
        efl_loss_config_init(&cfg, cases[0].c);
        efl_status st = efl_context_create(cl, dev, &fresh);
        if (st != EFL_OK)
            rc = efl_fail("efl_context_create", dn, st, fresh);
        const double t0 = bench_now();
        if (rc == 0 && (st = efl_loss_create(fresh, &cfg, &loss)) != EFL_OK)
            rc = efl_fail("efl_loss_create", dn, st, fresh);
        if (rc == 0 && (st = enqueue_op(loss, q, &b, n_of[0], 0)) != EFL_OK)
            rc = efl_fail("efl_enqueue_step (first call)", dn, st, fresh);
        if (rc == 0 && (err = clFinish(q)) != CL_SUCCESS)
            rc = cl_fail("clFinish (first call)", dn, err);
        *(pass ? &out->first_call_warm_s : &out->first_call_s) = bench_now() - t0;
        if (rc == 0 && (st = efl_loss_query_status(loss, q)) != EFL_OK)
            rc = efl_fail("the first step (efl_loss_query_status)", dn, st, fresh);
        efl_loss_destroy(loss);
        efl_context_destroy(fresh);
    }
    if (have_tmp) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp_dir);
        if (system(cmd) != 0)
            fprintf(stderr, "efl-bench: could not remove %s\n", tmp_dir);
    }
    if (keep_dir)
        setenv("EFL_CACHE_DIR", keep_dir, 1);
    else
        unsetenv("EFL_CACHE_DIR");
    free(keep_dir);
    if (rc == 0)
        printf("   first call (efl_loss_create on a fresh context -> first step finished, N=%zu C=%u): cold %.3f s, "
               "warm (disk cache) %.3f s\n",
               n_of[0], cases[0].c, out->first_call_s, out->first_call_warm_s);

    /* Ceilings: min(256 MiB, max alloc / 2, global memory / 8) per buffer. */
    if (rc == 0) {
        bench_ceilings cc;
        const char *what = "";
        const size_t bytes =
            min_size((size_t)256 << 20, min_size((size_t)(out->max_alloc / 2), (size_t)(out->global_mem / 8)));
        if ((err = bench_measure_ceilings(cl, dev, q, bytes, opt->min_time, &cc, &what)) != CL_SUCCESS) {
            rc = cl_fail(what, dn, err);
        } else {
            out->copy_gbps = cc.copy_gbps;
            out->read_gbps = cc.read_gbps;
            out->ceiling_bytes = cc.bytes;
            out->ceiling_wall = cc.wall_clock;
            out->empty_roundtrip_s = cc.empty_roundtrip_s;
            printf("   ceilings (%.0f MiB buffers%s): copy %.2f GB/s, read %.2f GB/s; empty kernel enqueue-to-finish "
                   "%.1f us\n",
                   (double)cc.bytes / 1048576.0, cc.wall_clock ? ", wall clock" : "", cc.copy_gbps, cc.read_gbps,
                   cc.empty_roundtrip_s * 1e6);
        }
    }

    /* The cases, on one efl_context (programs compile once per kernel configuration). */
    efl_context *ectx = NULL;
    if (rc == 0) {
        efl_status st = efl_context_create(cl, dev, &ectx);
        if (st != EFL_OK)
            rc = efl_fail("efl_context_create", dn, st, ectx);
        else
            printf("   %-7s %-12s %8s %5s %5s %11s %8s %7s %8s %s\n", "op", "case", "N", "C", "dtype", "median ms",
                   "GB/s", "% copy", "Gelem/s", "timer");
    }
    for (size_t i = 1; rc == 0 && i < ncase; ++i) {
        const size_t n = n_of[i];
        const uint32_t C = cases[i].c;
        int dup = 0;
        for (size_t r = 0; r < out->nrows; ++r)
            dup |= out->rows[r].n == n && out->rows[r].c == C &&
                   strcmp(out->rows[r].dtype, dtype_names[cases[i].dtype]) == 0 && cases[i].layout == EFL_LAYOUT_ROWS;
        if (cases[i].layout != EFL_LAYOUT_ROWS && n == 0) {
            printf("   %-7s %-12s (its level buffers do not fit in this device's memory: skipped)\n", "", cases[i].name);
            continue;
        }
        if (dup || n == 0) {
            printf("   %-7s %-12s (N=%zu clipped to %zu by memory: same shape as above, skipped)\n", "", cases[i].name,
                   cases[i].n, n);
            continue;
        }
        efl_loss *loss = NULL;
        efl_loss_config cfg;
        efl_loss_config_init(&cfg, C);
        efl_status st = efl_loss_create(ectx, &cfg, &loss);
        if (st != EFL_OK) {
            rc = efl_fail("efl_loss_create", dn, st, ectx);
            break;
        }
        if ((err = write_labels(q, b.labels, n, C)) != CL_SUCCESS)
            rc = cl_fail("writing the labels", dn, err);
        b.dtype = cases[i].dtype;
        b.layout = cases[i].layout;
        if (rc == 0 && b.layout != EFL_LAYOUT_ROWS && (err = make_levels(cl, q, &b, C)) != CL_SUCCESS)
            rc = cl_fail("the head layout's level buffers", dn, err);
        if (rc == 0 && b.dtype != EFL_DTYPE_FLOAT32 && !b.logits16[b.dtype]) {
            b.logits16[b.dtype] = clCreateBuffer(cl, CL_MEM_READ_ONLY, max_elems * 2, NULL, &err);
            if (err == CL_SUCCESS)
                err = fill_logits_as(q, b.logits16[b.dtype], max_elems, b.dtype);
            if (err != CL_SUCCESS)
                rc = cl_fail("16-bit logits", dn, err);
        }
        for (int fw = 0; rc == 0 && fw <= cases[i].forward; ++fw) {
            result_row *row = &out->rows[out->nrows];
            memset(row, 0, sizeof *row);
            row->op = fw ? "forward" : "step";
            row->label = cases[i].name;
            row->dtype = dtype_names[cases[i].dtype];
            row->n = n;
            row->n_wanted = cases[i].n;
            row->c = C;
            const int wall_only = opt->force_wall || out->ceiling_wall;
            rc = time_op(ectx, loss, q, &b, n, fw, opt->min_time, wall_only, dn, &row->median_s, &row->wall);
            if (rc != 0)
                break;
            const double elems = (double)n * C;
            const double bytes = elems * (double)dtype_bytes[cases[i].dtype] * (fw ? 1.0 : 2.0) + (double)n * 4.0;
            row->gbps = bytes / row->median_s / 1e9;
            row->fraction_of_copy = out->copy_gbps > 0.0 ? row->gbps / out->copy_gbps : 0.0;
            row->gelem_s = elems / row->median_s / 1e9;
            out->nrows++;
            printf("   %-7s %-12s %8zu %5u %5s %11.3f %8.2f %6.1f%% %8.3f %s%s\n", row->op, row->label, n, C, row->dtype,
                   row->median_s * 1e3, row->gbps, 100.0 * row->fraction_of_copy, row->gelem_s,
                   row->wall ? "wall" : "events", n < cases[i].n ? "  (N clipped by memory)" : "");
            fflush(stdout);
        }
        efl_loss_destroy(loss);
    }
    b.layout = EFL_LAYOUT_ROWS; /* what follows uses the rows layout */
    b.dtype = EFL_DTYPE_FLOAT32;
    if (rc == 0)
        rc = small_step(ectx, q, &b, dn, opt, out);
    for (size_t r = 0; rc == 0 && is_cpu && r < out->nrows; ++r) {
        const result_row *row = &out->rows[r];
        if (strcmp(row->op, "step") != 0 || strcmp(row->label, "lvis") != 0)
            continue;
        out->native_gelem_s = native_loop_gelem(opt, row->n, row->c);
        if (out->native_gelem_s > 0.0)
            printf("   native C loop, same arithmetic (efl-native-loop %zu %u, run now): %.3f Gelem/s; the step runs "
                   "at %.2f x that\n",
                   row->n, row->c, out->native_gelem_s, row->gelem_s / out->native_gelem_s);
    }
    if (rc == 0 && is_cpu)
        train_head_breakdown(opt, dev);
    efl_context_destroy(ectx);
    for (int d = 0; d < 3; ++d)
        if (b.logits16[d])
            clReleaseMemObject(b.logits16[d]);
    release_levels(&b);
    if (b.loss_out)
        clReleaseMemObject(b.loss_out);
    if (b.labels)
        clReleaseMemObject(b.labels);
    if (b.grad)
        clReleaseMemObject(b.grad);
    if (b.logits)
        clReleaseMemObject(b.logits);
    clReleaseCommandQueue(q);
    return rc;
}

/* ------------------------------------------------------------------ --tune */
/* One timed configuration: EFL_TUNE (NULL: the library's own heuristic). Returns G elements/s,
 * or a negative value if the loss could not be built or stepped with it. */
static double tune_one(efl_context *ectx, cl_command_queue q, const buffers *b, size_t n, uint32_t C,
                       const char *tune, const options *opt, const char *dn)
{
    if (tune)
        setenv("EFL_TUNE", tune, 1);
    else
        unsetenv("EFL_TUNE");
    efl_loss *loss = NULL;
    efl_loss_config cfg;
    efl_loss_config_init(&cfg, C);
    efl_status st = efl_loss_create(ectx, &cfg, &loss);
    unsetenv("EFL_TUNE");
    if (st != EFL_OK)
        return -1.0;
    double median = 0.0;
    int wall = 0;
    const int rc = time_op(ectx, loss, q, b, n, 0, opt->min_time, opt->force_wall, dn, &median, &wall);
    efl_loss_destroy(loss);
    return rc == 0 && median > 0.0 ? (double)n * C / median / 1e9 : -1.0;
}

/* Searches the launch parameters the library's heuristic (lib/device.c) chooses from, on this
 * device, at the first selected case's shape, and prints the best as an EFL_TUNE string. */
static int tune_device(cl_context cl, cl_device_id dev, const options *opt)
{
    char name[256];
    get_str(dev, CL_DEVICE_NAME, name, sizeof name);
    cl_device_type type = 0;
    cl_ulong max_alloc = 0, global_mem = 0;
    clGetDeviceInfo(dev, CL_DEVICE_TYPE, sizeof type, &type, NULL);
    clGetDeviceInfo(dev, CL_DEVICE_MAX_MEM_ALLOC_SIZE, sizeof max_alloc, &max_alloc, NULL);
    clGetDeviceInfo(dev, CL_DEVICE_GLOBAL_MEM_SIZE, sizeof global_mem, &global_mem, NULL);
    const case_def cs = opt->ncases ? opt->cases[0] : named_cases[0];
    const size_t fit = min_size((size_t)max_alloc, (size_t)(global_mem / 3)) / (2 * sizeof(float) * cs.c);
    const size_t n = min_size(cs.n, fit);
    printf("\n== --tune on %s: %s, N=%zu C=%u\n", name, cs.name, n, cs.c);

    cl_int err = CL_SUCCESS, e[4];
    cl_command_queue q = clCreateCommandQueue(cl, dev, CL_QUEUE_PROFILING_ENABLE, &err);
    if (err != CL_SUCCESS)
        return cl_fail("clCreateCommandQueue", name, err);
    buffers b;
    memset(&b, 0, sizeof b);
    b.logits = clCreateBuffer(cl, CL_MEM_READ_ONLY, n * cs.c * sizeof(float), NULL, &e[0]);
    b.grad = clCreateBuffer(cl, CL_MEM_READ_WRITE, n * cs.c * sizeof(float), NULL, &e[1]);
    b.labels = clCreateBuffer(cl, CL_MEM_READ_ONLY, n * sizeof(cl_int), NULL, &e[2]);
    b.loss_out = clCreateBuffer(cl, CL_MEM_READ_WRITE, sizeof(float), NULL, &e[3]);
    int rc = 0;
    for (int i = 0; i < 4 && rc == 0; ++i)
        if (e[i] != CL_SUCCESS)
            rc = cl_fail("clCreateBuffer", name, e[i]);
    if (rc == 0 && ((err = fill_logits(q, b.logits, n * cs.c)) != CL_SUCCESS ||
                    (err = write_labels(q, b.labels, n, cs.c)) != CL_SUCCESS))
        rc = cl_fail("writing the inputs", name, err);
    efl_context *ectx = NULL;
    efl_status st = rc == 0 ? efl_context_create(cl, dev, &ectx) : EFL_OK;
    if (st != EFL_OK)
        rc = efl_fail("efl_context_create", name, st, ectx);

    /* The candidates: what lib/device.c chooses between, around its own choice. */
    char cand[160][96];
    size_t ncand = 0;
    static const unsigned rows_cpu[] = {128, 256, 512, 1024}, rows_gpu[] = {16, 32, 64, 128, 256, 512};
    if (type & CL_DEVICE_TYPE_CPU) {
        static const unsigned vws[] = {8, 16}, unrolls[] = {1, 4, 8};
        for (size_t v = 0; v < 2; ++v) {
            const unsigned chunks = (cs.c + vws[v] - 1) / vws[v];
            const unsigned wgx_bar[] = {chunks, (chunks + 1) / 2};
            for (size_t r = 0; r < sizeof rows_cpu / sizeof *rows_cpu; ++r)
                for (size_t u = 0; u < 3; ++u) {
                    for (size_t w = 0; w < 2; ++w)
                        if (w == 0 || wgx_bar[w] != wgx_bar[w - 1])
                            snprintf(cand[ncand++], sizeof cand[0], "vw=%u,barrier=1,wgx=%u,unroll=%u,rows=%u",
                                     vws[v], wgx_bar[w], unrolls[u], rows_cpu[r]);
                    snprintf(cand[ncand++], sizeof cand[0], "vw=%u,barrier=0,wgx=1,unroll=%u,rows=%u", vws[v],
                             unrolls[u], rows_cpu[r]);
                }
        }
    } else {
        static const unsigned wgxs[] = {32, 64, 128, 256};
        for (size_t w = 0; w < 4; ++w)
            for (size_t r = 0; r < sizeof rows_gpu / sizeof *rows_gpu; ++r)
                for (unsigned u = 1; u <= 2; ++u)
                    snprintf(cand[ncand++], sizeof cand[0], "vw=1,barrier=0,wgx=%u,unroll=%u,rows=%u", wgxs[w], u,
                             rows_gpu[r]);
    }

    double heur = -1.0, best = -1.0;
    size_t best_i = 0;
    for (size_t i = 0; rc == 0 && i < ncand; ++i) {
        const double g = tune_one(ectx, q, &b, n, cs.c, cand[i], opt, name);
        printf("   EFL_TUNE=%-39s %8.3f Gelem/s%s\n", cand[i], g, g < 0.0 ? "  (refused or failed)" : "");
        fflush(stdout);
        if (g > best) {
            best = g;
            best_i = i;
        }
    }
    if (rc == 0) { /* after the search: the buffers' first-touch costs are paid by then */
        heur = tune_one(ectx, q, &b, n, cs.c, NULL, opt, name);
        printf("   %-48s %8.3f Gelem/s\n", "the library's heuristic (EFL_TUNE unset)", heur);
    }
    if (rc == 0 && best > 0.0)
        printf("   best: EFL_TUNE=%s  %.3f Gelem/s, %.2f x the heuristic's %.3f\n", cand[best_i], best,
               heur > 0.0 ? best / heur : 0.0, heur);
    efl_context_destroy(ectx);
    cl_mem bufs[4] = {b.logits, b.grad, b.labels, b.loss_out};
    for (int i = 0; i < 4; ++i)
        if (bufs[i])
            clReleaseMemObject(bufs[i]);
    clReleaseCommandQueue(q);
    return rc;
}

/* ------------------------------------------------------------------ output */
static void json_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; ++s) {
        const unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch < 0x20)
            fprintf(f, "\\u%04x", ch);
        else
            fputc(ch, f);
    }
    fputc('"', f);
}

static int write_json(const char *path, const device_result *d, size_t nd)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fprintf(f, "{\"devices\":[");
    for (size_t i = 0; i < nd; ++i) {
        fprintf(f, "%s\n {\"name\":", i ? "," : "");
        json_string(f, d[i].name);
        fprintf(f, ",\"vendor\":");
        json_string(f, d[i].vendor);
        fprintf(f, ",\"platform\":");
        json_string(f, d[i].platform);
        fprintf(f,
                ",\"copy_gbps\":%.6g,\"read_gbps\":%.6g,\"first_call_s\":%.6g,\"first_call_warm_s\":%.6g,"
                "\"empty_roundtrip_s\":%.6g,"
                "\"small_step_s\":%.6g,\"native_loop_gelem_s\":%.6g,\"cases\":[",
                d[i].copy_gbps, d[i].read_gbps, d[i].first_call_s, d[i].first_call_warm_s, d[i].empty_roundtrip_s,
                d[i].small_step_s,
                d[i].native_gelem_s);
        for (size_t r = 0; r < d[i].nrows; ++r) {
            const result_row *w = &d[i].rows[r];
            fprintf(f,
                    "%s\n  {\"case\":", r ? "," : "");
            json_string(f, w->label);
            fprintf(f,
                    ",\"op\":\"%s\",\"n\":%zu,\"c\":%u,\"dtype\":\"%s\",\"median_s\":%.6g,\"gbps\":%.6g,"
                    "\"fraction_of_copy\":%.6g,\"gelem_s\":%.6g}",
                    w->op, w->n, w->c, w->dtype, w->median_s, w->gbps, w->fraction_of_copy, w->gelem_s);
        }
        fprintf(f, "]}");
    }
    fprintf(f, "\n]}\n");
    return fclose(f) == 0 ? 0 : -1;
}

/* A CSV field in double quotes, inner quotes doubled. */
static void csv_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; ++s) {
        if (*s == '"')
            fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

static int write_csv(const char *path, const device_result *d, size_t nd)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fprintf(f, "device,case,op,n,c,dtype,median_s,gbps,fraction_of_copy,gelem_s\n");
    for (size_t i = 0; i < nd; ++i)
        for (size_t r = 0; r < d[i].nrows; ++r) {
            const result_row *w = &d[i].rows[r];
            csv_string(f, d[i].name);
            fputc(',', f);
            csv_string(f, w->label);
            fprintf(f, ",%s,%zu,%u,%s,%.6g,%.6g,%.6g,%.6g\n", w->op, w->n, w->c, w->dtype, w->median_s, w->gbps,
                    w->fraction_of_copy, w->gelem_s);
        }
    return fclose(f) == 0 ? 0 : -1;
}

/* --sweep's list: 1 to MAX_SWEEP values of N, each 1 .. 100,000,000. */
static int parse_sweep(options *opt, const char *list)
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

/* ------------------------------------------------------------------ main */
static void usage(FILE *f)
{
    fprintf(f,
            "usage: efl-bench [--device SEL | --default] [--quick | --cases LIST] [--sweep N,N,...]\n"
            "                 [--json FILE] [--csv FILE] [--min-time S] [--wall] [--tune] [--no-helpers]\n"
            "  --device SEL  devices to run on (default: $EFL_DEVICE, else every device of every platform):\n"
            "                \"P:D\" indices, \"P\" (every device of platform P), a type (gpu, cpu,\n"
            "                accelerator), TYPE:NAME, or a case-insensitive substring of\n"
            "                \"platform [vendor] / device\" (every device that matches; docs/devices.md)\n"
            "  --default     only the device efl_context_create_default picks\n"
            "  --quick       only the lvis, coco, lvis-f16, lvis-bf16, lvis-anchor and lvis-class cases\n"
            "  --cases LIST  comma-separated, from: lvis (90000 x 1203, step and forward), coco (90000 x 80),\n"
            "                coco-360k (360000 x 80), openimages (50000 x 500), lvis-f16 and lvis-bf16 (LVIS\n"
            "                with float16 / bfloat16 logits and gradient), lvis-anchor and lvis-class (LVIS as\n"
            "                the head's five FPN levels [2, 2*1203, H, W], anchor- / class-major channels),\n"
            "                sweep (N = 1000 .. 400000 at\n"
            "                C = 1203), all (the default)\n"
            "  --sweep N,N,...  the sweep at these N (C = 1203; at most 16) instead of 1000 .. 400000,\n"
            "                added to the cases --quick or --cases chose\n"
            "  --json FILE, --csv FILE  also write the results there; each row names its case (\"case\")\n"
            "                as printed (every sweep point: \"sweep\"); bench/plot.py draws the JSON\n"
            "  --min-time S  time each case for about S seconds, at least 3 steps (default 0.5)\n"
            "  --wall        time steps by the wall clock (clFinish) even where device events work\n"
            "  --tune        search the launch parameters (EFL_TUNE) at the first case's shape (default lvis)\n"
            "                and print the best against the library's own heuristic\n"
            "  --no-helpers  do not run efl-native-loop and efl-train-head (below)\n"
            "On a CPU device it also runs, where they were built, efl-native-loop (the same arithmetic as a\n"
            "plain C loop) and efl-train-head --breakdown --quick (a training step end to end: GEMMs vs loss).\n");
}

static int add_cases(options *opt, const char *list)
{
    static const char sweep_name[] = "sweep";
    char buf[256];
    snprintf(buf, sizeof buf, "%s", list);
    int want[NUM_NAMED + 1] = {0}; /* named cases, then the sweep */
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

int main(int argc, char **argv)
{
    static options opt; /* static: zeroed, and off the stack */
    opt.min_time = 0.5;
    const char *cases = "all";
    for (int i = 1; i < argc; ++i) {
        const char *a = argv[i];
        const int has_val = i + 1 < argc;
        if (strcmp(a, "--device") == 0 && has_val)
            opt.device_sel = argv[++i];
        else if (strcmp(a, "--default") == 0)
            opt.use_default = 1;
        else if (strcmp(a, "--wall") == 0)
            opt.force_wall = 1;
        else if (strcmp(a, "--tune") == 0)
            opt.tune = 1;
        else if (strcmp(a, "--no-helpers") == 0)
            opt.no_helpers = 1;
        else if (strcmp(a, "--sweep") == 0 && has_val) {
            if (parse_sweep(&opt, argv[++i]) != 0)
                return 2;
        }
        else if (strcmp(a, "--quick") == 0)
            cases = "lvis,coco,lvis-f16,lvis-bf16,lvis-anchor,lvis-class";
        else if (strcmp(a, "--cases") == 0 && has_val)
            cases = argv[++i];
        else if (strcmp(a, "--json") == 0 && has_val)
            opt.json_path = argv[++i];
        else if (strcmp(a, "--csv") == 0 && has_val)
            opt.csv_path = argv[++i];
        else if (strcmp(a, "--min-time") == 0 && has_val) {
            char *end;
            errno = 0;
            opt.min_time = strtod(argv[++i], &end);
            if (errno || *end || !(opt.min_time >= 0.0)) {
                fprintf(stderr, "efl-bench: bad --min-time '%s'\n", argv[i]);
                return 2;
            }
        } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "efl-bench: unknown or incomplete option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (add_cases(&opt, cases) != 0)
        return 2;
    if (!opt.no_helpers) {
        helper_path(opt.native_path, sizeof opt.native_path, argv[0], "efl-native-loop");
        helper_path(opt.train_head_path, sizeof opt.train_head_path, argv[0], "../efl-train-head");
    }
    if (!opt.device_sel) {
        const char *env = getenv("EFL_DEVICE");
        if (env && *env)
            opt.device_sel = env;
    }
    printf("efl-bench %s (library %s): float32 logits, labels 92%% background + Zipf classes, logits ~ N(-4, 2.5)\n",
           EFL_VERSION_STRING, efl_version_string());

    static device_result results[64];
    size_t nres = 0;
    int failed = 0;
    if (opt.use_default) {
        efl_context *def = NULL;
        efl_status st = efl_context_create_default(&def);
        if (st != EFL_OK) {
            efl_fail("efl_context_create_default", "(default device)", st, def);
            return 1;
        }
        cl_context cl = efl_context_cl_context(def);
        cl_device_id dev = efl_context_cl_device(def);
        clRetainContext(cl);
        efl_context_destroy(def);
        failed |= (opt.tune ? tune_device(cl, dev, &opt) : run_device(cl, dev, &opt, &results[nres])) != 0;
        nres += !failed && !opt.tune;
        clReleaseContext(cl);
    } else {
        cl_device_id devs[64]; /* as many as results[] holds */
        const size_t count = efl_devices_matching(opt.device_sel, devs, 64);
        size_t ran = 0;
        for (size_t i = 0; i < count && i < 64; ++i) {
            char label[900];
            efl_device_describe(devs[i], label, sizeof label);
            cl_platform_id plat = NULL;
            clGetDeviceInfo(devs[i], CL_DEVICE_PLATFORM, sizeof plat, &plat, NULL);
            ++ran;
            cl_context_properties props[] = {CL_CONTEXT_PLATFORM, (cl_context_properties)plat, 0};
            cl_int err = CL_SUCCESS;
            cl_context cl = clCreateContext(props, 1, &devs[i], NULL, NULL, &err);
            if (err != CL_SUCCESS) {
                cl_fail("clCreateContext", label, err);
                failed = 1;
                continue;
            }
            if (opt.tune)
                failed |= tune_device(cl, devs[i], &opt) != 0;
            else if (run_device(cl, devs[i], &opt, &results[nres]) == 0)
                ++nres;
            else
                failed = 1;
            clReleaseContext(cl);
        }
        if (ran == 0) {
            char list[8192];
            efl_devices_summary(list, sizeof list);
            fprintf(stderr, "efl-bench: no OpenCL device%s%s%s; the devices found:\n%s", opt.device_sel ? " matches '" : " found",
                    opt.device_sel ? opt.device_sel : "", opt.device_sel ? "'" : "", list[0] ? list : "(none)\n");
            return 1;
        }
    }
    if (opt.json_path && write_json(opt.json_path, results, nres) != 0) {
        fprintf(stderr, "efl-bench: cannot write %s\n", opt.json_path);
        failed = 1;
    }
    if (opt.csv_path && write_csv(opt.csv_path, results, nres) != 0) {
        fprintf(stderr, "efl-bench: cannot write %s\n", opt.csv_path);
        failed = 1;
    }
    if (failed)
        fprintf(stderr, "efl-bench: FAILED (see the messages above)\n");
    return failed ? 1 : 0;
}
