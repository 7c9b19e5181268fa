/*
 * The context: device selection by EFL_DEVICE, the program cache (one compile per options, also
 * when threads race for it), a build failure that returns a status and keeps its log, and
 * several threads stepping their own losses on one shared context with the results of one
 * thread, bit for bit.
 */
#define _POSIX_C_SOURCE 200809L
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
    test_cache_and_build_failure();
    test_threads();
    tu_env_free(&E);
    return tu_exit_code();
}
