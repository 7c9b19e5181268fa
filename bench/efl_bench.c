/* efl-bench: the EFL step against the device's own memory ceilings.
 *
 * For each OpenCL device (all of them, or those --device / EFL_DEVICE select, or the library's
 * own pick with --default): the first-call latency (efl_loss_create on a fresh efl_context to
 * the first finished step, LVIS shape: first_call.c), the copy and read bandwidth ceilings
 * (ceiling.c), then the median time of efl_enqueue_step on device buffers for a set of detection
 * shapes (cases.c, timing.c), and on a CPU the native C loop and a training step end to end
 * (helpers.c); or with --tune the launch parameters searched (tune.c). report.c writes what was
 * measured: text, JSON, CSV. Bytes of a step are the logits read, the gradient written and the
 * labels read: N*C*4 + N*C*4 + N*4.
 *
 * This file is the driver: the options, the device loop and one device's sequence. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

#define MAX_DEVICES 64

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

/* argv into opt and the --cases list: 0, 1 (--help: done), 2 (bad: said on stderr). */
static int parse_args(int argc, char **argv, bench_options *opt, const char **cases)
{
    for (int i = 1; i < argc; ++i) {
        const char *a = argv[i];
        const int has_val = i + 1 < argc;
        if (strcmp(a, "--device") == 0 && has_val)
            opt->device_sel = argv[++i];
        else if (strcmp(a, "--default") == 0)
            opt->use_default = 1;
        else if (strcmp(a, "--wall") == 0)
            opt->force_wall = 1;
        else if (strcmp(a, "--tune") == 0)
            opt->tune = 1;
        else if (strcmp(a, "--no-helpers") == 0)
            opt->no_helpers = 1;
        else if (strcmp(a, "--sweep") == 0 && has_val) {
            if (bench_parse_sweep(opt, argv[++i]) != 0)
                return 2;
        } else if (strcmp(a, "--quick") == 0)
            *cases = "lvis,coco,lvis-f16,lvis-bf16,lvis-anchor,lvis-class";
        else if (strcmp(a, "--cases") == 0 && has_val)
            *cases = argv[++i];
        else if (strcmp(a, "--json") == 0 && has_val)
            opt->json_path = argv[++i];
        else if (strcmp(a, "--csv") == 0 && has_val)
            opt->csv_path = argv[++i];
        else if (strcmp(a, "--min-time") == 0 && has_val) {
            char *end;
            errno = 0;
            opt->min_time = strtod(argv[++i], &end);
            if (errno || *end || !(opt->min_time >= 0.0)) {
                fprintf(stderr, "efl-bench: bad --min-time '%s'\n", argv[i]);
                return 2;
            }
        } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 1;
        } else {
            fprintf(stderr, "efl-bench: unknown or incomplete option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
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

static void device_facts(cl_device_id dev, device_result *out)
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
}

/* On a CPU: the native C loop at the lvis step's shape, then a training step end to end. */
static void cpu_helpers(cl_device_id dev, const bench_options *opt, device_result *out)
{
    for (size_t r = 0; r < out->nrows; ++r) {
        const result_row *row = &out->rows[r];
        if (strcmp(row->op, "step") != 0 || strcmp(row->label, "lvis") != 0)
            continue;
        out->native_gelem_s = bench_native_loop(opt, row->n, row->c);
        if (out->native_gelem_s > 0.0)
            report_native(row, out->native_gelem_s);
    }
    bench_train_head(opt, dev);
}

static int run_device(cl_context cl, cl_device_id dev, const bench_options *opt, device_result *out)
{
    device_facts(dev, out);
    report_device(out);
    cl_int err = CL_SUCCESS;
    cl_command_queue q = clCreateCommandQueue(cl, dev, CL_QUEUE_PROFILING_ENABLE, &err);
    if (err != CL_SUCCESS)
        return cl_fail("clCreateCommandQueue", out->name, err);
    bench_plan plan;
    bench_plan_cases(opt, out, &plan);
    buffers b;
    int rc = bench_buffers_create(cl, q, plan.max_elems, plan.max_n, out->name, &b);
    if (rc == 0)
        rc = bench_first_call(cl, dev, q, &b, &plan, out);
    if (rc == 0)
        rc = bench_run_ceilings(cl, dev, q, opt, out);
    if (rc == 0)
        rc = bench_run_cases(cl, dev, q, &b, &plan, opt, out);
    if (rc == 0 && (out->type & CL_DEVICE_TYPE_CPU))
        cpu_helpers(dev, opt, out);
    if (rc == 0)
        report_ratios(out);
    bench_buffers_release(&b);
    clReleaseCommandQueue(q);
    return rc;
}

/* ------------------------------------------------------------------ the devices */
/* --tune or the measurements on one device; a result counts in *nres. Returns 1 if it failed. */
static int on_device(cl_context cl, cl_device_id dev, const bench_options *opt, device_result *results, size_t *nres)
{
    if (opt->tune)
        return bench_tune_device(cl, dev, opt) != 0;
    if (run_device(cl, dev, opt, &results[*nres]) != 0)
        return 1;
    ++*nres;
    return 0;
}

/* --default: the device efl_context_create_default picks. -1: no context at all. */
static int run_default(const bench_options *opt, device_result *results, size_t *nres)
{
    efl_context *def = NULL;
    efl_status st = efl_context_create_default(&def);
    if (st != EFL_OK) {
        efl_fail("efl_context_create_default", "(default device)", st, def);
        return -1;
    }
    cl_context cl = efl_context_cl_context(def);
    cl_device_id dev = efl_context_cl_device(def);
    clRetainContext(cl);
    efl_context_destroy(def);
    const int failed = on_device(cl, dev, opt, results, nres);
    clReleaseContext(cl);
    return failed;
}

/* Every device the selector matches, each on a cl_context of its own. -1: none matched. */
static int run_matching(const bench_options *opt, device_result *results, size_t *nres)
{
    cl_device_id devs[MAX_DEVICES]; /* as many as results[] holds */
    const size_t count = efl_devices_matching(opt->device_sel, devs, MAX_DEVICES);
    int failed = 0;
    for (size_t i = 0; i < count && i < MAX_DEVICES; ++i) {
        cl_platform_id plat = NULL;
        clGetDeviceInfo(devs[i], CL_DEVICE_PLATFORM, sizeof plat, &plat, NULL);
        cl_context_properties props[] = {CL_CONTEXT_PLATFORM, (cl_context_properties)plat, 0};
        cl_int err = CL_SUCCESS;
        cl_context cl = clCreateContext(props, 1, &devs[i], NULL, NULL, &err);
        if (err != CL_SUCCESS) {
            char label[900];
            efl_device_describe(devs[i], label, sizeof label);
            cl_fail("clCreateContext", label, err);
            failed = 1;
            continue;
        }
        failed |= on_device(cl, devs[i], opt, results, nres);
        clReleaseContext(cl);
    }
    if (count > 0)
        return failed;
    char list[8192];
    efl_devices_summary(list, sizeof list);
    fprintf(stderr, "efl-bench: no OpenCL device%s%s%s; the devices found:\n%s", opt->device_sel ? " matches '" : " found",
            opt->device_sel ? opt->device_sel : "", opt->device_sel ? "'" : "", list[0] ? list : "(none)\n");
    return -1;
}

/* --json, --csv: 1 if one could not be written. */
static int write_files(const bench_options *opt, const device_result *results, size_t nres)
{
    int failed = 0;
    if (opt->json_path && report_json(opt->json_path, results, nres) != 0) {
        fprintf(stderr, "efl-bench: cannot write %s\n", opt->json_path);
        failed = 1;
    }
    if (opt->csv_path && report_csv(opt->csv_path, results, nres) != 0) {
        fprintf(stderr, "efl-bench: cannot write %s\n", opt->csv_path);
        failed = 1;
    }
    return failed;
}

int main(int argc, char **argv)
{
    static bench_options opt; /* static: zeroed, and off the stack */
    opt.min_time = 0.5;
    const char *cases = "all";
    const int parsed = parse_args(argc, argv, &opt, &cases);
    if (parsed != 0)
        return parsed == 1 ? 0 : 2;
    if (bench_add_cases(&opt, cases) != 0)
        return 2;
    if (!opt.no_helpers) {
        bench_helper_path(opt.native_path, sizeof opt.native_path, argv[0], "efl-native-loop");
        bench_helper_path(opt.train_head_path, sizeof opt.train_head_path, argv[0], "../efl-train-head");
    }
    if (!opt.device_sel) {
        const char *env = getenv("EFL_DEVICE");
        if (env && *env)
            opt.device_sel = env;
    }
    printf("efl-bench %s (library %s): float32 logits, labels 92%% background + Zipf classes, logits ~ N(-4, 2.5)\n",
           EFL_VERSION_STRING, efl_version_string());

    static device_result results[MAX_DEVICES];
    size_t nres = 0;
    const int ran = opt.use_default ? run_default(&opt, results, &nres) : run_matching(&opt, results, &nres);
    if (ran < 0)
        return 1;
    const int failed = ran | write_files(&opt, results, nres);
    if (failed)
        fprintf(stderr, "efl-bench: FAILED (see the messages above)\n");
    return failed ? 1 : 0;
}
