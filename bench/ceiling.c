/* The device's own memory ceilings, measured as clpeak does: a copy kernel (one float4 read and
 * one written per work-item; bytes = read + write) and a read kernel (float4 loads summed into a
 * small output; bytes = read), on random (incompressible) float data. Warm-up, then repeat for
 * about min_time seconds; the median is reported. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

#define READ_PER_ITEM 32 /* float4 loads per work-item of the read kernel */
#define READ_WG 64

static const char *ceiling_src =
    "__kernel void bench_copy(__global const float4 *restrict src, __global float4 *restrict dst)\n"
    "{\n"
    "    const size_t i = get_global_id(0);\n"
    "    dst[i] = src[i];\n"
    "}\n"
    "\n"
    "/* A work-group reads one contiguous chunk; at each step its work-items read consecutive\n"
    " * float4s (coalesced on GPUs, sequential on CPUs). Four sums keep the adds off the path. */\n"
    "__kernel void bench_read(__global const float4 *restrict src, __global float *restrict out)\n"
    "{\n"
    "    const size_t lsz = get_local_size(0);\n"
    "    const size_t base = get_group_id(0) * lsz * READ_PER_ITEM + get_local_id(0);\n"
    "    float4 s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;\n"
    "    for (int k = 0; k < READ_PER_ITEM; k += 4) {\n"
    "        s0 += src[base + (size_t)k * lsz];\n"
    "        s1 += src[base + (size_t)(k + 1) * lsz];\n"
    "        s2 += src[base + (size_t)(k + 2) * lsz];\n"
    "        s3 += src[base + (size_t)(k + 3) * lsz];\n"
    "    }\n"
    "    const float4 s = (s0 + s1) + (s2 + s3);\n"
    "    out[get_global_id(0)] = (s.x + s.y) + (s.z + s.w);\n"
    "}\n"
    "\n"
    "/* Does nothing: its enqueue-to-finish time is the floor under any small step. */\n"
    "__kernel void bench_empty(__global float *unused) { }\n";

/* Median seconds of one kernel launch, from its event (0 where the device reports no time) and
 * from the wall clock around clFinish. */
static cl_int time_kernel(cl_command_queue q, cl_kernel k, size_t global, const size_t *local, double min_time,
                          double *med_event, double *med_wall)
{
    double te[1000], tw[1000];
    size_t reps = 0;
    cl_int err = clEnqueueNDRangeKernel(q, k, 1, NULL, &global, local, 0, NULL, NULL); /* warm-up */
    if (err == CL_SUCCESS)
        err = clFinish(q);
    const double start = bench_now();
    while (err == CL_SUCCESS && reps < 1000 && (reps < 3 || bench_now() - start < min_time)) {
        cl_event ev = NULL;
        const double w0 = bench_now();
        err = clEnqueueNDRangeKernel(q, k, 1, NULL, &global, local, 0, NULL, &ev);
        if (err == CL_SUCCESS)
            err = clFinish(q);
        const double w1 = bench_now();
        if (err == CL_SUCCESS) {
            te[reps] = bench_event_span(ev, ev, 1);
            tw[reps++] = w1 - w0;
        }
        if (ev)
            clReleaseEvent(ev);
    }
    *med_event = bench_median(te, reps);
    *med_wall = bench_median(tw, reps);
    return err;
}

#define TRY(call, name)                                                                                            \
    do {                                                                                                           \
        if (err == CL_SUCCESS) {                                                                                   \
            err = (call);                                                                                          \
            if (err != CL_SUCCESS)                                                                                 \
                *what = (name);                                                                                    \
        }                                                                                                          \
    } while (0)

typedef struct {
    cl_program prog;
    cl_kernel kcopy, kread, kempty;
    cl_mem a, b, small;
} ceiling_objects;

static cl_int build_kernels(cl_context ctx, cl_device_id dev, ceiling_objects *k, const char **what)
{
    cl_int err = CL_SUCCESS;
    k->prog = clCreateProgramWithSource(ctx, 1, &ceiling_src, NULL, &err);
    if (err != CL_SUCCESS)
        *what = "clCreateProgramWithSource";
    char opts[64];
    snprintf(opts, sizeof opts, "-DREAD_PER_ITEM=%d", READ_PER_ITEM);
    TRY(clBuildProgram(k->prog, 1, &dev, opts, NULL, NULL), "clBuildProgram (ceiling kernels)");
    if (err == CL_SUCCESS) {
        k->kcopy = clCreateKernel(k->prog, "bench_copy", &err);
        if (err == CL_SUCCESS)
            k->kread = clCreateKernel(k->prog, "bench_read", &err);
        if (err == CL_SUCCESS)
            k->kempty = clCreateKernel(k->prog, "bench_empty", &err);
        if (err != CL_SUCCESS)
            *what = "clCreateKernel";
    }
    return err;
}

/* Random floats, written tile by tile (caches work by address, so a repeating 32 MiB tile is as
 * good as one random stream; what matters is that no block is compressible). */
static cl_int make_buffers(cl_context ctx, cl_command_queue q, size_t bytes, ceiling_objects *k, const char **what)
{
    cl_int err = CL_SUCCESS, e2 = CL_SUCCESS;
    k->a = clCreateBuffer(ctx, CL_MEM_READ_WRITE, bytes, NULL, &err);
    k->b = clCreateBuffer(ctx, CL_MEM_READ_WRITE, bytes, NULL, &e2);
    if (err == CL_SUCCESS)
        err = e2;
    if (err == CL_SUCCESS)
        k->small = clCreateBuffer(ctx, CL_MEM_WRITE_ONLY, bytes / 16 / READ_PER_ITEM * sizeof(float), NULL, &err);
    if (err != CL_SUCCESS) {
        *what = "clCreateBuffer (ceiling buffers)";
        return err;
    }
    const size_t tile_bytes = bytes < ((size_t)32 << 20) ? bytes : ((size_t)32 << 20);
    float *tile = malloc(tile_bytes);
    if (!tile) {
        *what = "malloc";
        return CL_OUT_OF_HOST_MEMORY;
    }
    uint64_t s = 0x9E3779B97F4A7C15ULL;
    for (size_t i = 0; i < tile_bytes / sizeof(float); ++i)
        tile[i] = (float)(bench_rand_unit(&s) * 2.0 - 1.0);
    for (size_t off = 0; err == CL_SUCCESS && off < bytes; off += tile_bytes) {
        const size_t len = bytes - off < tile_bytes ? bytes - off : tile_bytes;
        TRY(clEnqueueWriteBuffer(q, k->a, CL_TRUE, off, len, tile, 0, NULL, NULL), "clEnqueueWriteBuffer");
        TRY(clEnqueueWriteBuffer(q, k->b, CL_TRUE, off, len, tile, 0, NULL, NULL), "clEnqueueWriteBuffer");
    }
    free(tile);
    return err;
}

/* The three kernels timed; the figures into out. */
static cl_int time_kernels(cl_device_id dev, cl_command_queue q, const ceiling_objects *k, size_t bytes,
                           double min_time, bench_ceilings *out, const char **what)
{
    cl_int err = CL_SUCCESS;
    TRY(clSetKernelArg(k->kcopy, 0, sizeof k->a, &k->a), "clSetKernelArg");
    TRY(clSetKernelArg(k->kcopy, 1, sizeof k->b, &k->b), "clSetKernelArg");
    TRY(clSetKernelArg(k->kread, 0, sizeof k->b, &k->b), "clSetKernelArg");
    TRY(clSetKernelArg(k->kread, 1, sizeof k->small, &k->small), "clSetKernelArg");
    TRY(clSetKernelArg(k->kempty, 0, sizeof k->small, &k->small), "clSetKernelArg");
    double tc = 0.0, tr = 0.0, wc = 0.0, wr = 0.0;
    size_t wg = READ_WG, max_wg = 0;
    clGetDeviceInfo(dev, CL_DEVICE_MAX_WORK_GROUP_SIZE, sizeof max_wg, &max_wg, NULL);
    TRY(time_kernel(q, k->kcopy, bytes / 16, NULL, min_time, &tc, &wc), "copy kernel");
    /* any group size covers the buffer exactly (global * READ_PER_ITEM float4s) */
    TRY(time_kernel(q, k->kread, bytes / 16 / READ_PER_ITEM, max_wg >= wg ? &wg : NULL, min_time, &tr, &wr),
        "read kernel");
    double te_unused = 0.0;
    const size_t one = 1;
    TRY(time_kernel(q, k->kempty, 1, &one, min_time, &te_unused, &out->empty_roundtrip_s), "empty kernel");
    /* A copy of this size runs for milliseconds: a real device timer gives about the wall time.
     * rusticl returns tiny constant timestamps (2, 3 ns): such a device is timed by the wall. */
    out->wall_clock = !(tc >= 0.5 * wc && tr > 0.0);
    if (out->wall_clock) {
        tc = wc;
        tr = wr;
    }
    if (err == CL_SUCCESS && tc > 0.0 && tr > 0.0) {
        out->copy_gbps = 2.0 * (double)bytes / tc / 1e9;
        out->read_gbps = (double)bytes / tr / 1e9;
    }
    return err;
}

static void release_objects(ceiling_objects *k)
{
    cl_mem mems[] = {k->small, k->b, k->a};
    for (int i = 0; i < 3; ++i)
        if (mems[i])
            clReleaseMemObject(mems[i]);
    cl_kernel kernels[] = {k->kread, k->kempty, k->kcopy};
    for (int i = 0; i < 3; ++i)
        if (kernels[i])
            clReleaseKernel(kernels[i]);
    if (k->prog)
        clReleaseProgram(k->prog);
}

cl_int bench_measure_ceilings(cl_context ctx, cl_device_id dev, cl_command_queue q, size_t bytes, double min_time,
                              bench_ceilings *out, const char **what)
{
    memset(out, 0, sizeof *out);
    *what = "";
    const size_t unit = (size_t)16 * READ_WG * READ_PER_ITEM; /* bytes one read work-group covers */
    bytes = bytes / unit * unit;
    out->bytes = bytes;
    ceiling_objects k;
    memset(&k, 0, sizeof k);
    cl_int err = build_kernels(ctx, dev, &k, what);
    if (err == CL_SUCCESS)
        err = make_buffers(ctx, q, bytes, &k, what);
    if (err == CL_SUCCESS)
        err = time_kernels(dev, q, &k, bytes, min_time, out, what);
    release_objects(&k);
    return err;
}

static size_t min_size(size_t a, size_t b) { return a < b ? a : b; }

int bench_run_ceilings(cl_context cl, cl_device_id dev, cl_command_queue q, const bench_options *opt,
                       device_result *out)
{
    /* min(256 MiB, max alloc / 2, global memory / 8) per buffer */
    const size_t bytes =
        min_size((size_t)256 << 20, min_size((size_t)(out->max_alloc / 2), (size_t)(out->global_mem / 8)));
    bench_ceilings cc;
    const char *what = "";
    const cl_int err = bench_measure_ceilings(cl, dev, q, bytes, opt->min_time, &cc, &what);
    if (err != CL_SUCCESS)
        return cl_fail(what, out->name, err);
    out->copy_gbps = cc.copy_gbps;
    out->read_gbps = cc.read_gbps;
    out->ceiling_bytes = cc.bytes;
    out->ceiling_wall = cc.wall_clock;
    out->empty_roundtrip_s = cc.empty_roundtrip_s;
    report_ceilings(&cc);
    return 0;
}
