/*
 * The context: device selection by EFL_DEVICE (indices, names, and device types checked against
 * what the OpenCL API lists when asked directly), the program cache (one compile per options, also
 * when threads race for it), a build failure that returns a status and keeps its log, and
 * several threads stepping their own losses on one shared context with the results of one
 * thread, bit for bit.
 */
#define _POSIX_C_SOURCE 200809L
#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

static tu_env E;

static size_t count_occurrences(const char *hay, const char *needle)
{
    size_t n = 0;
    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        ++n;
    return n;
}

static char *context_log(efl_context *ctx)
{
    size_t len = efl_context_log(ctx, NULL, 0);
    char *log = malloc(len + 1);
    if (!log)
        tu_fatal(__FILE__, __LINE__, "malloc");
    CHECK(efl_context_log(ctx, log, len + 1) == len);
    return log;
}

static efl_context *fresh_context(void)
{
    efl_context *ctx = NULL;
    REQUIRE_OK(efl_context_create(E.cl, E.dev, &ctx));
    return ctx;
}

static void test_selection(void)
{
    tu_begin("EFL_DEVICE selection");
    const char *saved = getenv("EFL_DEVICE");
    char *keep = saved ? strdup(saved) : NULL;
    efl_context *ctx = NULL;
    setenv("EFL_DEVICE", "no-such-device-xyz", 1);
    CHECK_STATUS(efl_context_create_default(&ctx), EFL_ERROR_DEVICE_NOT_FOUND);
    CHECK(ctx == NULL);
    setenv("EFL_DEVICE", "99:0", 1);
    CHECK_STATUS(efl_context_create_default(&ctx), EFL_ERROR_DEVICE_NOT_FOUND);
    /* the selector this test runs under, matched case-insensitively */
    if (keep) {
        char upper[256];
        snprintf(upper, sizeof upper, "%s", keep);
        for (char *c = upper; *c; ++c)
            *c = (char)(*c >= 'a' && *c <= 'z' ? *c - 32 : *c);
        setenv("EFL_DEVICE", upper, 1);
        CHECK_STATUS(efl_context_create_default(&ctx), EFL_OK);
        CHECK(ctx && efl_context_cl_device(ctx) != NULL);
        char *log = ctx ? context_log(ctx) : NULL;
        CHECK(log && strstr(log, "picked") != NULL);
        free(log);
        efl_context_destroy(ctx);
        setenv("EFL_DEVICE", keep, 1);
    } else {
        unsetenv("EFL_DEVICE");
    }
    free(keep);
    /* listing: the test's device is among all devices, its "P:D" selects exactly it */
    cl_device_id devs[64];
    const size_t all = efl_devices_matching(NULL, devs, 64);
    int seen = 0;
    for (size_t i = 0; i < all && i < 64; ++i)
        seen |= devs[i] == E.dev;
    CHECK(all >= 1 && seen);
    CHECK(efl_devices_matching("no-such-device-xyz", devs, 64) == 0);
    /* the listing a user is shown when a selector matches nothing: one line per device */
    char summary[8192];
    const size_t slen = efl_devices_summary(summary, sizeof summary);
    size_t lines = 0;
    for (const char *c = summary; *c; ++c)
        lines += *c == '\n';
    CHECK_MSG(slen > 0 && slen < sizeof summary && lines == all && strstr(summary, E.device_name) != NULL,
              "summary (%zu lines for %zu devices):\n%s", lines, all, summary);
    char label[900], pd[32];
    const size_t len = efl_device_describe(E.dev, label, sizeof label);
    CHECK_MSG(len > 0 && strstr(label, E.device_name) != NULL, "describe: '%s'", label);
    if (sscanf(label, "%31s", pd) == 1) {
        cl_device_id one = NULL;
        CHECK(efl_devices_matching(pd, &one, 1) == 1 && one == E.dev);
    }
    CHECK_STATUS(efl_context_create(NULL, E.dev, &ctx), EFL_ERROR_NULL_HANDLE);
    CHECK_STATUS(efl_context_create(E.cl, E.dev, NULL), EFL_ERROR_NULL_HANDLE);
    tu_end();
}

/* ------------------------------------------------ the OpenCL API's own view, for reference */
enum { REF_MAX = 64 };
typedef struct {
    cl_device_id dev[REF_MAX];
    size_t n;
} ref_list;

static int text_has_nocase(const char *hay, const char *needle)
{
    for (; *hay; ++hay) {
        size_t i = 0;
        while (needle[i] && hay[i] && tolower((unsigned char)hay[i]) == tolower((unsigned char)needle[i]))
            ++i;
        if (!needle[i])
            return 1;
    }
    return !*needle;
}

/* Devices of `type` straight from clGetPlatformIDs/clGetDeviceIDs, in platform then device
 * order; with `name`, only those whose platform name, platform vendor or device name contains it
 * (case-insensitive); platform < 0 all platforms, else that index only. */
static ref_list ref_devices(cl_device_type type, const char *name, int platform)
{
    ref_list r = {.n = 0};
    cl_platform_id plats[32];
    cl_uint np = 0;
    if (clGetPlatformIDs(32, plats, &np) != CL_SUCCESS)
        return r;
    for (cl_uint p = 0; p < np && p < 32; ++p) {
        cl_device_id devs[32];
        cl_uint nd = 0;
        if ((platform >= 0 && (int)p != platform) || clGetDeviceIDs(plats[p], type, 32, devs, &nd) != CL_SUCCESS)
            continue;
        char pname[256] = "", pvendor[256] = "";
        clGetPlatformInfo(plats[p], CL_PLATFORM_NAME, sizeof pname - 1, pname, NULL);
        clGetPlatformInfo(plats[p], CL_PLATFORM_VENDOR, sizeof pvendor - 1, pvendor, NULL);
        for (cl_uint d = 0; d < nd && d < 32 && r.n < REF_MAX; ++d) {
            char dname[256] = "";
            clGetDeviceInfo(devs[d], CL_DEVICE_NAME, sizeof dname - 1, dname, NULL);
            if (!name || text_has_nocase(pname, name) || text_has_nocase(pvendor, name) || text_has_nocase(dname, name))
                r.dev[r.n++] = devs[d];
        }
    }
    return r;
}

/* efl_devices_matching(sel) lists exactly the reference's devices, in its order. */
static void check_matches(const char *sel, const ref_list *want)
{
    cl_device_id got[REF_MAX];
    const size_t n = efl_devices_matching(sel, got, REF_MAX);
    int same = n == want->n;
    for (size_t i = 0; same && i < n; ++i)
        same = got[i] == want->dev[i];
    CHECK_MSG(same, "selector '%s': efl matched %zu devices, the OpenCL API lists %zu", sel, n, want->n);
    cl_device_id pick = NULL;
    const efl_status st = efl_device_pick(sel, &pick);
    if (want->n)
        CHECK_MSG(st == EFL_OK && pick == want->dev[0], "efl_device_pick('%s'): %s", sel, efl_status_string(st));
    else
        CHECK_MSG(st == EFL_ERROR_DEVICE_NOT_FOUND && pick == NULL, "efl_device_pick('%s'): %s", sel,
                  efl_status_string(st));
}

/* efl_context_create_default under EFL_DEVICE=sel: the reference's first device, or NOT_FOUND. */
static void check_default(const char *sel, const ref_list *want)
{
    efl_context *ctx = NULL;
    setenv("EFL_DEVICE", sel, 1);
    const efl_status st = efl_context_create_default(&ctx);
    if (!want->n) {
        CHECK_MSG(st == EFL_ERROR_DEVICE_NOT_FOUND && ctx == NULL, "EFL_DEVICE=%s: %s", sel, efl_status_string(st));
        return;
    }
    CHECK_MSG(st == EFL_OK && ctx && efl_context_cl_device(ctx) == want->dev[0], "EFL_DEVICE=%s: %s", sel,
              efl_status_string(st));
    char *log = ctx ? context_log(ctx) : NULL;
    char by[128];
    snprintf(by, sizeof by, "by EFL_DEVICE=%s", sel);
    CHECK_MSG(log && strstr(log, by) != NULL, "EFL_DEVICE=%s: log:\n%s", sel, log ? log : "");
    free(log);
    efl_context_destroy(ctx);
}

static void test_type_selectors(void)
{
    tu_begin("EFL_DEVICE type selectors: gpu, cpu, accelerator, TYPE:NAME");
    const char *saved = getenv("EFL_DEVICE");
    char *keep = saved ? strdup(saved) : NULL;
    const ref_list cpus = ref_devices(CL_DEVICE_TYPE_CPU, NULL, -1);
    const ref_list gpus = ref_devices(CL_DEVICE_TYPE_GPU, NULL, -1);
    const ref_list accels = ref_devices(CL_DEVICE_TYPE_ACCELERATOR, NULL, -1);
    const ref_list none = {.n = 0};
    printf("  the OpenCL API lists %zu CPU, %zu GPU, %zu accelerator devices\n", cpus.n, gpus.n, accels.n);
    CHECK(cpus.n + gpus.n + accels.n >= 1); /* the test's own device is one of them */
    check_matches("cpu", &cpus);
    check_matches("CPU", &cpus);
    check_matches("Cpu", &cpus);
    check_matches("cpu:", &cpus); /* an empty name narrows nothing */
    check_matches("gpu", &gpus);
    check_matches("GPU:", &gpus);
    check_matches("accelerator", &accels);
    check_default("cpu", &cpus);
    check_default("CPU", &cpus);
    check_default("gpu", &gpus);
    check_default("accelerator", &accels);
    /* TYPE:NAME narrows the type by a name substring */
    const ref_list cpu_pocl = ref_devices(CL_DEVICE_TYPE_CPU, "pocl", -1);
    const ref_list gpu_pocl = ref_devices(CL_DEVICE_TYPE_GPU, "pocl", -1);
    check_matches("cpu:pocl", &cpu_pocl);
    check_matches("CPU:PoCL", &cpu_pocl);
    check_matches("gpu:pocl", &gpu_pocl);
    check_default("cpu:pocl", &cpu_pocl);
    if (cpu_pocl.n) {
        char label[900];
        efl_device_describe(cpu_pocl.dev[0], label, sizeof label);
        CHECK_MSG(strstr(label, "pocl") != NULL, "cpu:pocl picked '%s'", label);
    }
    check_matches("cpu:nonexistent-xyz", &none);
    check_default("cpu:nonexistent-xyz", &none);
    /* not type words: plain name substrings, matched as the reference matches names */
    const ref_list gpux = ref_devices(CL_DEVICE_TYPE_ALL, "gpux", -1);
    check_matches("gpux", &gpux);
    check_default("gpux", &gpux);
    check_matches(":cpu", &none);
    check_matches("pocl:cpu", &none);
    /* numeric selectors keep their meaning */
    const ref_list p0 = ref_devices(CL_DEVICE_TYPE_ALL, NULL, 0);
    const ref_list d00 = {.dev = {p0.n ? p0.dev[0] : NULL}, .n = p0.n ? 1 : 0};
    check_matches("0:0", &d00);
    check_matches("0", &p0);
    check_default("0:0", &d00);
    /* the default rule: first GPU, else first CPU, else first device */
    const ref_list all = ref_devices(CL_DEVICE_TYPE_ALL, NULL, -1);
    const ref_list *rule = gpus.n ? &gpus : cpus.n ? &cpus : &all;
    check_matches(NULL, &all);
    cl_device_id pick = NULL;
    CHECK_STATUS(efl_device_pick(NULL, &pick), EFL_OK);
    CHECK(pick == rule->dev[0]);
    CHECK_STATUS(efl_device_pick("", &pick), EFL_OK);
    CHECK(pick == rule->dev[0]);
    CHECK_STATUS(efl_device_pick("cpu", NULL), EFL_ERROR_NULL_HANDLE);
    /* the type of the test's device as the OpenCL API reports it */
    cl_device_type type = 0;
    REQUIRE_CL(clGetDeviceInfo(E.dev, CL_DEVICE_TYPE, sizeof type, &type, NULL));
    const char *want_type = type & CL_DEVICE_TYPE_GPU   ? "gpu"
                            : type & CL_DEVICE_TYPE_CPU ? "cpu"
                            : type & CL_DEVICE_TYPE_ACCELERATOR ? "accelerator"
                                                                : "other";
    CHECK_MSG(strcmp(efl_device_type_name(E.dev), want_type) == 0, "type '%s', want '%s'",
              efl_device_type_name(E.dev), want_type);
    CHECK(strcmp(efl_device_type_name(NULL), "unknown") == 0);
    if (keep)
        setenv("EFL_DEVICE", keep, 1);
    else
        unsetenv("EFL_DEVICE");
    free(keep);
    tu_end();
}

static void test_cache_and_build_failure(void)
{
    tu_begin("program cache: one compile per options");
    efl_context *ctx = fresh_context();
    efl_loss_config cfg;
    efl_loss_config_init(&cfg, 80);
    efl_loss *a = tu_loss(&E, &cfg), *b = NULL;
    efl_loss_destroy(a); /* tu_loss uses E.ctx; this one is for the fresh context below */
    REQUIRE_OK(efl_loss_create(ctx, &cfg, &a));
    REQUIRE_OK(efl_loss_create(ctx, &cfg, &b));
    char *log = context_log(ctx);
    CHECK_MSG(count_occurrences(log, "program ready") == 1, "log:\n%s", log);
    free(log);
    efl_loss_destroy(a);
    efl_loss_destroy(b);
    efl_context_destroy(ctx);
    tu_end();

    tu_begin("build failure: status and retrievable log");
    ctx = fresh_context();
    setenv("EFL_BUILD_OPTIONS", "-DEFL_VW=3", 1); /* efl_common.h refuses this width */
    efl_loss *bad = NULL;
    CHECK_STATUS(efl_loss_create(ctx, &cfg, &bad), EFL_ERROR_BUILD_FAILED);
    CHECK(bad == NULL);
    log = context_log(ctx);
    CHECK_MSG(strstr(log, "EFL_VW must be") != NULL, "log lacks the compiler's message:\n%s", log);
    free(log);
    unsetenv("EFL_BUILD_OPTIONS");
    /* the failure is not cached: the next attempt compiles and works */
    CHECK_STATUS(efl_loss_create(ctx, &cfg, &bad), EFL_OK);
    efl_loss_destroy(bad);
    efl_context_destroy(ctx);
    tu_end();
}

/* ------------------------------------------------------------ threads */
enum { NTHREADS = 4, STEPS = 3, N = 700, C = 93 };

typedef struct {
    efl_context *ctx;
    const float *x;
    const int32_t *y;
    float grad[N * C];
    float loss[STEPS];
    double state[3 * C];
    efl_status st;
} job;

static void *run_job(void *arg)
{
    job *j = arg;
    efl_loss_config cfg;
    efl_loss_config_init(&cfg, C);
    efl_loss *loss = NULL;
    j->st = efl_loss_create(j->ctx, &cfg, &loss); /* threads race for the program cache here */
    for (int s = 0; s < STEPS && j->st == EFL_OK; ++s)
        j->st = efl_loss_step_host(loss, j->x + (size_t)s * 10 * C, j->y + s * 10, N - 30, 17.0f, EFL_REDUCTION_MEAN,
                                   &j->loss[s], j->grad);
    if (j->st == EFL_OK)
        j->st = efl_loss_read_state_host(loss, j->state, j->state + C, j->state + 2 * C);
    efl_loss_destroy(loss);
    return NULL;
}

static void test_threads(void)
{
    tu_begin("threads on one context give one thread's bits");
    float *x = malloc(sizeof(float) * N * C);
    int32_t *y = malloc(sizeof(int32_t) * N);
    job *jobs = calloc(NTHREADS + 1, sizeof *jobs);
    if (!x || !y || !jobs)
        tu_fatal(__FILE__, __LINE__, "malloc");
    tu_rng r = {4242};
    tu_label_opts o = tu_default_label_opts();
    tu_make_logits(&r, x, (size_t)N * C);
    tu_make_labels(&r, y, N, C, &o);

    efl_context *ctx = fresh_context();
    pthread_t th[NTHREADS];
    for (int t = 0; t <= NTHREADS; ++t) {
        jobs[t].ctx = ctx;
        jobs[t].x = x;
        jobs[t].y = y;
    }
    /* Under EFL_TEST_SMALL (Oclgrind, which asserts when kernels from several threads overlap)
     * the threads run one after another: the memory checks still see every path, ThreadSanitizer
     * and the other devices see the race. */
    const int one_by_one = tu_small();
    for (int t = 0; t < NTHREADS; ++t) {
        CHECK(pthread_create(&th[t], NULL, run_job, &jobs[t]) == 0);
        if (one_by_one)
            pthread_join(th[t], NULL);
    }
    for (int t = 0; t < NTHREADS && !one_by_one; ++t)
        pthread_join(th[t], NULL);
    run_job(&jobs[NTHREADS]); /* alone, afterwards */

    char *log = context_log(ctx);
    CHECK_MSG(count_occurrences(log, "program ready") == 1, "log:\n%s", log);
    free(log);
    for (int t = 0; t <= NTHREADS; ++t)
        CHECK_STATUS(jobs[t].st, EFL_OK);
    for (int t = 0; t < NTHREADS; ++t) {
        CHECK_MSG(memcmp(jobs[t].loss, jobs[NTHREADS].loss, sizeof jobs[t].loss) == 0, "thread %d: loss differs", t);
        CHECK_MSG(memcmp(jobs[t].grad, jobs[NTHREADS].grad, sizeof jobs[t].grad) == 0, "thread %d: grad differs", t);
        CHECK_MSG(memcmp(jobs[t].state, jobs[NTHREADS].state, sizeof jobs[t].state) == 0, "thread %d: state differs",
                  t);
    }
    /* not vacuous: the steps moved the state */
    CHECK(jobs[NTHREADS].state[C] > 0.0 && jobs[NTHREADS].loss[0] > 0.0f);
    efl_context_destroy(ctx);
    free(x);
    free(y);
    free(jobs);
    tu_end();
}

int main(void)
{
    tu_env_init(&E);
    test_selection();
    test_type_selectors();
    test_cache_and_build_failure();
    test_threads();
    tu_env_free(&E);
    return tu_exit_code();
}
