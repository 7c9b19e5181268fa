/* Helper programs of the build (efl-native-loop beside this one, efl-train-head in the folder
 * above) run as separate processes: efl-native-loop's -ffast-math runtime flushes denormals
 * process-wide, which must not leak into the OpenCL runtime's threads. */
#define _POSIX_C_SOURCE 200809L /* popen */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"

/* Hands every output line of cmd that contains `needle` to `fn`; returns pclose's status, or -1. */
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

void bench_helper_path(char *out, size_t size, const char *argv0, const char *name)
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
double bench_native_loop(const bench_options *opt, size_t n, uint32_t C)
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
void bench_train_head(const bench_options *opt, cl_device_id dev)
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
