/* efl-bench's parts and what they share (clpeak's layout: one file per kind of measurement).
 *   efl_bench.c   the driver: options, the device loop, one device's sequence
 *   cases.c       the cases (definitions, --cases / --sweep, shapes clipped to memory) and running them
 *   data.c        the inputs (random logits, Zipf labels) and the device buffers
 *   timing.c      one op enqueued, and its median time
 *   first_call.c  efl_loss_create on a fresh context to the first finished step, cold and warm
 *   ceiling.c     the device's copy and read bandwidth, and an empty kernel's round trip
 *   tune.c        --tune: the launch parameters searched
 *   helpers.c     efl-native-loop and efl-train-head, run as separate processes
 *   report.c      the text lines, JSON and CSV, and the error messages */
#ifndef EFL_BENCH_H
#define EFL_BENCH_H

#include <stdio.h>

#include "bench_util.h"

/* ------------------------------------------------------------------ cases.c */
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
#define LVIS_HEAD_B 2
#define LVIS_HEAD_A 2
#define LVIS_HEAD_ROWS 89200
extern const uint32_t lvis_head_h[LVIS_HEAD_LEVELS], lvis_head_w[LVIS_HEAD_LEVELS];

#define NUM_NAMED 8
extern const case_def named_cases[NUM_NAMED]; /* [0]: lvis, the first call's and --tune's shape */
extern const char *const dtype_names[3];      /* "f32", "f16", "bf16" */
extern const size_t dtype_bytes[3];
#define MAX_SWEEP 16 /* points --sweep may give */
#define MAX_CASES (NUM_NAMED + MAX_SWEEP)
#define MAX_ROWS (2 * MAX_CASES)

typedef struct {
    const char *op;    /* "step" or "forward" */
    const char *label; /* the case's name, as printed and as --cases takes it ("sweep" for each sweep point) */
    const char *dtype; /* "f32", "f16", "bf16" */
    size_t n, n_wanted;
    uint32_t c;
    double median_s, gbps, fraction_of_copy, gelem_s;
    int wall; /* timed by the wall clock */
} result_row;

/* One run's ratios (report.c); 0 where a figure is missing. */
typedef struct {
    double f16, bf16, anchor, class_major, native, small;
} bench_ratios;

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
    char native_path[1024];     /* efl-native-loop beside this program, "" if absent */
    char train_head_path[1024]; /* efl-train-head in the build folder above this one, "" if absent */
    case_def cases[MAX_CASES];
    size_t sweep[MAX_SWEEP], nsweep; /* --sweep: the sweep's N values (0 of them: the default sweep) */
    size_t ncases;
} bench_options;

/* One device's cases: [0] the first call's shape (LVIS), then the selected ones, with N clipped
 * so that logits + grad fit (0: the case does not fit and is skipped). */
typedef struct {
    case_def cases[MAX_CASES + 1];
    size_t n_of[MAX_CASES + 1];
    size_t ncase, max_elems, max_n; /* the largest rows-layout logits and the most rows */
} bench_plan;

/* --sweep's list: 1 to MAX_SWEEP values of N, each 1 .. 100,000,000; -1 (said on stderr) if bad. */
int bench_parse_sweep(bench_options *opt, const char *list);
/* --cases' list into opt->cases (the sweep's points from opt->sweep); -1 for an unknown case. */
int bench_add_cases(bench_options *opt, const char *list);
void bench_plan_cases(const bench_options *opt, const device_result *dev, bench_plan *plan);

typedef struct buffers buffers;
/* The cases on one fresh efl_context, then the small step; rows into out. */
int bench_run_cases(cl_context cl, cl_device_id dev, cl_command_queue q, buffers *b, const bench_plan *plan,
                    const bench_options *opt, device_result *out);

/* ------------------------------------------------------------------ data.c */
struct buffers {
    cl_mem logits, labels, grad, loss_out;
    cl_mem logits16[3]; /* the same logits stored as float16 / bfloat16, made when needed */
    int dtype;          /* of the case being timed */
    int layout;         /* of the case being timed */
    cl_mem level_x[LVIS_HEAD_LEVELS], level_g[LVIS_HEAD_LEVELS]; /* head layouts, made when needed */
};

/* Logits ~ N(-4, 2.5) into buf (count elements stored as dtype). */
cl_int bench_fill_logits_as(cl_command_queue q, cl_mem buf, size_t count, int dtype);
cl_int bench_fill_logits(cl_command_queue q, cl_mem buf, size_t count);
/* The labels of bench_zipf_labels (bench_data.h), seeded by the shape. */
cl_int bench_write_labels(cl_command_queue q, cl_mem buf, size_t n, uint32_t C);
/* logits and grad of max_elems floats (filled, grad zeroed), labels of max_n, the loss: 0 or -1
 * (said on stderr); buffers_release frees whatever was made. */
int bench_buffers_create(cl_context cl, cl_command_queue q, size_t max_elems, size_t max_n, const char *dn,
                         buffers *b);
void bench_buffers_release(buffers *b);
/* The head layout's per-level buffers (made once), filled like the rows layout's logits. */
cl_int bench_make_levels(cl_context cl, cl_command_queue q, buffers *b, uint32_t C);
/* The case's 16-bit logits (made once, max_elems of them). */
cl_int bench_make_logits16(cl_context cl, cl_command_queue q, buffers *b, size_t max_elems);

/* ------------------------------------------------------------------ timing.c */
/* One step (or forward) of the case b describes, n rows. */
efl_status bench_enqueue_op(efl_loss *loss, cl_command_queue q, const buffers *b, size_t n, int forward);
/* Warm-up, then repetitions until min_time has passed (at least 3): the median. *wall set to 1
 * when the wall clock timed it (force_wall, or events that report no time). 0 or -1 (said). */
int bench_time_op(efl_context *ectx, efl_loss *loss, cl_command_queue q, const buffers *b, size_t n, int forward,
                  double min_time, int force_wall, const char *dev, double *median, int *wall);

/* ------------------------------------------------------------------ first_call.c */
/* The first call at plan->cases[0], cold (an empty disk cache folder of its own) then warm. */
int bench_first_call(cl_context cl, cl_device_id dev, cl_command_queue q, const buffers *b, const bench_plan *plan,
                     device_result *out);

/* ------------------------------------------------------------------ ceiling.c */
/* bench_measure_ceilings (bench_util.h) at this device's buffer size, into out, and its line. */
int bench_run_ceilings(cl_context cl, cl_device_id dev, cl_command_queue q, const bench_options *opt,
                       device_result *out);

/* ------------------------------------------------------------------ tune.c */
int bench_tune_device(cl_context cl, cl_device_id dev, const bench_options *opt);

/* ------------------------------------------------------------------ helpers.c */
/* "<folder of argv0>/<name>" if that is an executable file, else "". */
void bench_helper_path(char *out, size_t size, const char *argv0, const char *name);
/* efl-native-loop's G elements/s at n x C, 0 if absent or failed. */
double bench_native_loop(const bench_options *opt, size_t n, uint32_t C);
/* efl-train-head --breakdown --quick on this device, its lines printed. */
void bench_train_head(const bench_options *opt, cl_device_id dev);

/* ------------------------------------------------------------------ report.c */
/* What failed, where, with the status and the context's log; returns -1. */
int efl_fail(const char *what, const char *dev, efl_status st, const efl_context *ectx);
int cl_fail(const char *what, const char *dev, cl_int err);
void report_device(const device_result *d);
void report_first_call(const bench_plan *plan, const device_result *d);
void report_ceilings(const bench_ceilings *cc);
void report_table_header(void);
void report_row(const result_row *row);
void report_skipped(const case_def *cs, size_t n);
void report_small_step(const device_result *d, int n, int c);
void report_native(const result_row *row, double native_gelem_s);
void report_ratios(const device_result *d);
int report_json(const char *path, const device_result *d, size_t nd);
int report_csv(const char *path, const device_result *d, size_t nd);

#endif
