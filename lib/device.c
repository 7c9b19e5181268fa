#include "device.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static cl_int get_str(cl_device_id dev, cl_device_info what, char *buf, size_t size)
{
    buf[0] = '\0';
    cl_int err = clGetDeviceInfo(dev, what, size - 1, buf, NULL);
    buf[size - 1] = '\0';
    return err;
}

/* Keeps the first failing code of a sequence of OpenCL calls (OR-ing codes together would make
 * a number that is no OpenCL code). */
static void first_err(cl_int *e, cl_int err)
{
    if (*e == CL_SUCCESS)
        *e = err;
}

efl_status efl_device_query(cl_device_id dev, efl_device_info *info)
{
    memset(info, 0, sizeof *info);
    char cver[128];
    cl_platform_id plat = NULL;
    cl_int e = CL_SUCCESS;
    first_err(&e, get_str(dev, CL_DEVICE_NAME, info->name, sizeof info->name));
    first_err(&e, get_str(dev, CL_DEVICE_VENDOR, info->vendor, sizeof info->vendor));
    first_err(&e, get_str(dev, CL_DRIVER_VERSION, info->driver, sizeof info->driver));
    first_err(&e, get_str(dev, CL_DEVICE_OPENCL_C_VERSION, cver, sizeof cver));
    first_err(&e, clGetDeviceInfo(dev, CL_DEVICE_TYPE, sizeof info->type, &info->type, NULL));
    first_err(&e, clGetDeviceInfo(dev, CL_DEVICE_MAX_WORK_GROUP_SIZE, sizeof info->max_wg, &info->max_wg, NULL));
    first_err(&e, clGetDeviceInfo(dev, CL_DEVICE_LOCAL_MEM_SIZE, sizeof info->local_mem, &info->local_mem, NULL));
    first_err(&e, clGetDeviceInfo(dev, CL_DEVICE_MAX_MEM_ALLOC_SIZE, sizeof info->max_alloc, &info->max_alloc, NULL));
    first_err(&e, clGetDeviceInfo(dev, CL_DEVICE_PLATFORM, sizeof plat, &plat, NULL));
    if (e != CL_SUCCESS)
        return EFL_ERROR_OPENCL; /* no context exists yet to record the code on */
    if (clGetPlatformInfo(plat, CL_PLATFORM_NAME, sizeof info->platform - 1, info->platform, NULL) != CL_SUCCESS)
        info->platform[0] = '\0';

    /* "OpenCL C 1.2 ...": NVIDIA's 3.0 platforms still compile OpenCL C 1.2, so never infer this
     * from the platform version. Unparsable: 0.0, refused below. */
    if (sscanf(cver, "OpenCL C %u.%u", &info->c_major, &info->c_minor) != 2)
        info->c_major = info->c_minor = 0;

    cl_device_fp_config fcfg = 0;
    if (clGetDeviceInfo(dev, CL_DEVICE_SINGLE_FP_CONFIG, sizeof fcfg, &fcfg, NULL) != CL_SUCCESS)
        fcfg = 0;
    info->has_fma = (fcfg & CL_FP_FMA) != 0 && (fcfg & CL_FP_SOFT_FLOAT) == 0;
    cl_bool unified = CL_FALSE;
    info->host_unified =
        clGetDeviceInfo(dev, CL_DEVICE_HOST_UNIFIED_MEMORY, sizeof unified, &unified, NULL) == CL_SUCCESS && unified;
    if (clGetDeviceInfo(dev, CL_DEVICE_MAX_COMPUTE_UNITS, sizeof info->compute_units, &info->compute_units, NULL) !=
            CL_SUCCESS ||
        info->compute_units == 0)
        info->compute_units = 1;
    if (clGetDeviceInfo(dev, CL_DEVICE_NATIVE_VECTOR_WIDTH_FLOAT, sizeof info->native_vector_width,
                        &info->native_vector_width, NULL) != CL_SUCCESS)
        info->native_vector_width = 1;

    /* cl_khr_fp64, or (OpenCL 1.2) a non-zero double config. */
    cl_device_fp_config dcfg = 0;
    if (clGetDeviceInfo(dev, CL_DEVICE_DOUBLE_FP_CONFIG, sizeof dcfg, &dcfg, NULL) != CL_SUCCESS)
        dcfg = 0;
    size_t ext_size = 0;
    if (clGetDeviceInfo(dev, CL_DEVICE_EXTENSIONS, 0, NULL, &ext_size) == CL_SUCCESS && ext_size > 0) {
        char *ext = malloc(ext_size + 1);
        if (ext && clGetDeviceInfo(dev, CL_DEVICE_EXTENSIONS, ext_size, ext, NULL) == CL_SUCCESS) {
            ext[ext_size] = '\0';
            info->has_fp64 = strstr(ext, "cl_khr_fp64") != NULL && dcfg != 0;
        }
        free(ext);
    }
    /* the kernels are OpenCL C EFL_KERNEL_C_MAJOR.EFL_KERNEL_C_MINOR (efl_device_build_options) */
    if (info->c_major < EFL_KERNEL_C_MAJOR ||
        (info->c_major == EFL_KERNEL_C_MAJOR && info->c_minor < EFL_KERNEL_C_MINOR))
        return EFL_ERROR_UNSUPPORTED_DEVICE;
    if (info->max_wg < 16)
        return EFL_ERROR_UNSUPPORTED_DEVICE;
    return EFL_OK;
}

/* EFL_TUNE overrides (or the context's efl_context_options.tune instead), each checked against
 * what the kernels and the device accept; an unusable value is ignored. */
/* One "key=value" item; *p moves to the ',' or NUL after it (or wherever the item went wrong). */
static int tune_item(const char **p, efl_tune *tune)
{
    const char *s = *p;
    while (*s == ' ')
        ++s;
    const char *key = s;
    while (*s >= 'a' && *s <= 'z')
        ++s;
    const size_t klen = (size_t)(s - key);
    while (*s == ' ')
        ++s;
    if (klen == 0 || *s != '=')
        return *p = s, 0;
    ++s;
    while (*s == ' ')
        ++s;
    if (*s < '0' || *s > '9')
        return *p = s, 0;
    unsigned long long v = 0;
    for (; *s >= '0' && *s <= '9'; ++s)
        if ((v = v * 10 + (unsigned)(*s - '0')) > 0xFFFFFFFFull)
            return *p = s, 0;
    while (*s == ' ')
        ++s;
    *p = s;
    if (*s && *s != ',')
        return 0;
#define KEY(name) (klen == sizeof name - 1 && memcmp(key, name, klen) == 0)
#define TAKE(field, bit, ok) return (ok) ? (tune->field = (unsigned)v, tune->given |= (bit), 1) : 0
    if (KEY("vw"))
        TAKE(vw, EFL_TUNE_VW, v == 1 || v == 4 || v == 8 || v == 16);
    if (KEY("wgx"))
        TAKE(wgx, EFL_TUNE_WGX, v >= 1);
    if (KEY("unroll"))
        TAKE(unroll, EFL_TUNE_UNROLL, v >= 1 && v <= 16);
    if (KEY("barrier"))
        TAKE(barrier, EFL_TUNE_BARRIER, v <= 1);
    if (KEY("rows"))
        TAKE(rows, EFL_TUNE_ROWS, v >= 1);
#undef TAKE
#undef KEY
    return 0; /* an unknown key */
}

int efl_tune_parse(const char *text, efl_tune *tune)
{
    memset(tune, 0, sizeof *tune);
    int all_good = 1;
    const char *t = text ? text : "";
    while (*t) {
        all_good &= tune_item(&t, tune);
        const char *comma = strchr(t, ',');
        if (!comma)
            return all_good && !*t;
        t = comma + 1;
        if (!*t)
            all_good = 0; /* a trailing comma */
    }
    return all_good;
}

/* The tune's values that this device and C can take replace the heuristic's. */
static void apply_tuning(const efl_device_info *info, uint32_t num_classes, efl_kernel_params *kp)
{
    efl_tune tune;
    efl_tune_parse(info->tune ? info->tune : getenv("EFL_TUNE"), &tune);
    if ((tune.given & EFL_TUNE_VW) && tune.vw <= num_classes)
        kp->vw = tune.vw;
    if ((tune.given & EFL_TUNE_WGX) && tune.wgx <= info->max_wg)
        kp->wgx = tune.wgx;
    if (tune.given & EFL_TUNE_UNROLL)
        kp->unroll = tune.unroll;
    if (tune.given & EFL_TUNE_BARRIER)
        kp->row_barrier = (int)tune.barrier;
    if (tune.given & EFL_TUNE_ROWS)
        kp->rows = tune.rows;
}

static efl_kernel_params heuristic(const efl_device_info *info, uint32_t num_classes);

efl_kernel_params efl_device_kernel_params(const efl_device_info *info, uint32_t num_classes)
{
    efl_kernel_params kp = heuristic(info, num_classes);
    apply_tuning(info, num_classes, &kp);
    return kp;
}

static efl_kernel_params heuristic(const efl_device_info *info, uint32_t num_classes)
{
    efl_kernel_params kp;
    kp.rows = 0;
    kp.dtype = EFL_DTYPE_FLOAT32;
    kp.mode = EFL_MODE_EFL; /* the loss sets its own */
    kp.planar = 0;
    kp.apply_wg = info->max_wg >= 256 ? 256 : 16;
    kp.fp64 = info->has_fp64; /* efl_loss_config.accumulate may turn it off */
    kp.fma = info->has_fma;
    if (info->type & CL_DEVICE_TYPE_CPU) {
        /* CPU runtimes run a work-group as a loop over work-items and do not vectorise that
         * loop when the kernel body holds the row loop; so each work-item takes one explicit
         * vector of columns, as wide as the device's native float vector (16 on AVX-512). */
        unsigned nw = info->native_vector_width;
        kp.vw = nw >= 16 ? 16 : nw >= 8 ? 8 : 4;
        while (kp.vw > num_classes) /* the step needs C >= EFL_VW (its last chunk shifts left) */
            kp.vw = kp.vw == 4 ? 1 : kp.vw / 2;
        const size_t chunks = ((size_t)num_classes + kp.vw - 1) / kp.vw;
        if (chunks >= 2) {
            /* one work-group sweeps whole rows (a barrier per group of rows): sequential memory
             * for the prefetchers; groups of 8 rows overlap their dependency chains
             * (docs/design.md has the measurements) */
            kp.wgx = (unsigned)(chunks < info->max_wg ? chunks : info->max_wg);
            kp.row_barrier = 1;
            kp.unroll = 8;
        } else {
            /* a single vector per row: groups of rows without a barrier */
            kp.wgx = 1;
            kp.row_barrier = 0;
            kp.unroll = 4;
        }
        return kp;
    }
    /* GPUs: one column per work-item, consecutive work-items on consecutive columns; the
     * width that pads C least among sizes that fill a warp or wavefront. Latency is hidden by
     * other warps: no unrolling, no barrier. */
    kp.vw = 1;
    kp.unroll = 1;
    kp.row_barrier = 0;
    static const unsigned widths[] = {128, 64, 32};
    unsigned best = 0;
    size_t best_pad = (size_t)-1;
    for (int i = 0; i < 3; ++i) {
        if (widths[i] > info->max_wg)
            continue;
        size_t padded = ((size_t)num_classes + widths[i] - 1) / widths[i] * widths[i];
        if (padded - num_classes < best_pad) {
            best_pad = padded - num_classes;
            best = widths[i];
        }
    }
    kp.wgx = best ? best : 16; /* efl_device_query refused devices below 16 */
    return kp;
}

efl_kernel_params efl_device_head_params(const efl_device_info *info, efl_kernel_params kp)
{
    kp.planar = 1;
    /* A CPU runs a work-group's work-items one after another between barriers: without one, each
     * streams through its own plane; with one, the group would interleave EFL_WGX planes a vector
     * at a time, more streams than a prefetcher tracks (docs/design.md, "Launch parameters"). */
    if (info->type & CL_DEVICE_TYPE_CPU)
        kp.row_barrier = 0;
    return kp;
}

size_t efl_device_padded_columns(const efl_kernel_params *kp, uint32_t num_classes)
{
    const size_t per_group = (size_t)kp->wgx * kp->vw;
    return ((size_t)num_classes + per_group - 1) / per_group * per_group;
}

/* Rows per block such that a few blocks (fewer than four per core) come in a multiple of the
 * cores, within the hi bound: a small step lasts as long as its busiest core, and with 5 blocks on
 * 2 cores one core runs 3 while the other waits. Fewer blocks than cores stay as they are. */
static size_t even_blocks(size_t n, size_t rows, size_t hi, size_t cores)
{
    const size_t blocks = (n + rows - 1) / rows;
    if (cores < 2 || blocks <= cores || blocks >= 4 * cores || blocks % cores == 0)
        return rows;
    const size_t even = blocks / cores * cores, wider = (n + even - 1) / even;
    return wider <= hi ? wider : rows;
}

unsigned efl_device_rows_per_block(const efl_device_info *info, const efl_kernel_params *kp, size_t n)
{
    if (kp->rows)
        return kp->rows;
    /* Up to 512 row blocks: with C / (wgx * vw) groups per block that fills any current device,
     * and the partials stay near 1% of the logits' bytes. At least 32 rows amortise a
     * work-item's set-up. */
    const size_t max_blocks = 512;
    size_t min_rows = 32;
    if ((info->type & CL_DEVICE_TYPE_CPU) && kp->planar) {
        /* the head layouts on a CPU: each work-item streams down its own class plane, so long
         * blocks (a few per core, at least 1024 rows) let the prefetcher run */
        const size_t par = (n + 4 * (size_t)info->compute_units - 1) / (4 * (size_t)info->compute_units);
        return (unsigned)(par > 1024 ? par : 1024);
    }
    if (info->type & CL_DEVICE_TYPE_CPU) {
        /* A CPU schedules each group on its own: between 16k and 64k elements per group, and
         * within that four groups per core where N allows, so a small step uses every core
         * (the bounds come from efl-bench --tune: docs/design.md, "Launch parameters"). */
        const size_t per_group = (size_t)kp->wgx * kp->vw;
        const size_t lo = 16384 / per_group > 32 ? 16384 / per_group : 32;
        const size_t hi = 65536 / per_group > lo ? 65536 / per_group : lo;
        const size_t par = (n + 4 * (size_t)info->compute_units - 1) / (4 * (size_t)info->compute_units);
        min_rows = par < lo ? lo : par > hi ? hi : par;
        min_rows = even_blocks(n, min_rows, hi, info->compute_units);
    }
    size_t rows = (n + max_blocks - 1) / max_blocks;
    if (rows < min_rows)
        rows = min_rows;
    return (unsigned)rows;
}

int efl_device_build_options(const efl_device_info *info, const efl_kernel_params *kp, char *buf, size_t size)
{
    /* -cl-std names the language the kernels are written in, not the newest the device knows:
     * every device efl_device_query accepts compiles it (a 2.0 or 3.0 compiler accepts CL1.2),
     * and a later standard would change the language under them (2.0's generic address space;
     * 3.0 makes 2.0's features optional). */
    (void)info;
    const char *extra = getenv("EFL_BUILD_OPTIONS");
    int n = snprintf(buf, size,
                     "-cl-std=CL%d.%d -DEFL_VW=%u -DEFL_WGX=%u -DEFL_APPLY_WG=%u -DEFL_FP64=%d -DEFL_FMA=%d "
                     "-DEFL_UNROLL=%u -DEFL_ROW_BARRIER=%d -DEFL_DTYPE=%d -DEFL_MODE=%d -DEFL_PLANAR=%d%s%s",
                     EFL_KERNEL_C_MAJOR, EFL_KERNEL_C_MINOR, kp->vw, kp->wgx, kp->apply_wg, kp->fp64, kp->fma,
                     kp->unroll, kp->row_barrier, kp->dtype, kp->mode, kp->planar, extra ? " " : "",
                     extra ? extra : "");
    return n > 0 && (size_t)n < size;
}
