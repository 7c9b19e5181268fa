/* Small helpers shared by efl-bench's files: clocks, medians, random data. */
#ifndef EFL_BENCH_UTIL_H
#define EFL_BENCH_UTIL_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include <efl/efl.h>

#include "bench_data.h" /* random data */

static inline double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static inline int bench_cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Sorts v in place. */
static inline double bench_median(double *v, size_t n)
{
    if (n == 0)
        return 0.0;
    qsort(v, n, sizeof *v, bench_cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}


/* Seconds between two profiling points of events (END of each unless start_of_a), or 0 when the
 * device reports no time (rusticl returns zero timestamps). */
static inline double bench_event_span(cl_event a, cl_event b, int start_of_a)
{
    cl_ulong t0 = 0, t1 = 0;
    if (clGetEventProfilingInfo(a, start_of_a ? CL_PROFILING_COMMAND_START : CL_PROFILING_COMMAND_END, sizeof t0,
                                &t0, NULL) != CL_SUCCESS ||
        clGetEventProfilingInfo(b, CL_PROFILING_COMMAND_END, sizeof t1, &t1, NULL) != CL_SUCCESS)
        return 0.0;
    if (t0 == 0 || t1 <= t0)
        return 0.0;
    return 1e-9 * (double)(t1 - t0);
}

/* ceiling.c: the device's own bandwidth ceilings, clpeak style, on random float data.
 * bytes: size of each buffer. Returns 0, or an OpenCL error code (what names the failed call). */
typedef struct {
    double copy_gbps; /* (read + write bytes) / s */
    double read_gbps; /* read bytes / s */
    size_t bytes;     /* buffer size used */
    int wall_clock;   /* 1: the device's events give no usable time: time it by the wall clock */
    double empty_roundtrip_s; /* median enqueue-to-clFinish wall time of an empty kernel */
} bench_ceilings;

cl_int bench_measure_ceilings(cl_context ctx, cl_device_id dev, cl_command_queue q, size_t bytes, double min_time,
                              bench_ceilings *out, const char **what);

#endif
