/* Device facts and every device-specific decision (the one place that knows vendors). */
#ifndef EFL_DEVICE_H
#define EFL_DEVICE_H

#include <stddef.h>
#include <stdint.h>

#include "efl/efl.h"

typedef struct {
    char name[256];
    char vendor[256];
    char platform[256];
    char driver[128];
    cl_device_type type;
    unsigned c_major, c_minor; /* OpenCL C version the device compiles (not the platform's) */
    size_t max_wg;
    cl_ulong local_mem;
    cl_ulong max_alloc;
    cl_uint native_vector_width; /* floats */
    cl_uint compute_units;
    int has_fp64;
    int has_fma; /* fma in hardware */
    int host_unified; /* the device works in host memory (CPU runtimes): zero-copy host calls */
    const char *tune; /* the context's efl_context_options.tune (owned by it); NULL: EFL_TUNE */
} efl_device_info;

/* What goes into the program's -D defines: everything the kernels specialise on. */
typedef struct {
    unsigned vw;       /* columns per work-item of the step: 1 (GPUs) or an explicit vector */
    unsigned wgx;      /* work-items per work-group along the columns (step, reduce) */
    unsigned apply_wg; /* apply kernel's work-group, a power of two */
    int fp64;          /* accumulate in double */
    int fma;           /* hardware fma: the exponent's product is compensated */
    unsigned unroll;   /* rows per group in the step's row loop */
    int row_barrier;   /* the work-group sweeps each row together (CPU prefetchers) */
    unsigned rows;     /* rows per block; 0: efl_device_rows_per_block decides (not a define) */
    int dtype;         /* efl_dtype of logits and gradients */
    int mode;          /* efl_mode */
    int planar;        /* the step reads a detection head's [B, A*C, H, W] levels */
} efl_kernel_params;

/* The OpenCL C version the kernels are written in: what -cl-std asks for, and the least a device
 * must compile (its CL_DEVICE_OPENCL_C_VERSION, not the platform's version). */
#define EFL_KERNEL_C_MAJOR 1
#define EFL_KERNEL_C_MINOR 2

/* The device's facts. EFL_ERROR_UNSUPPORTED_DEVICE for a device whose OpenCL C is older than
 * EFL_KERNEL_C_MAJOR.EFL_KERNEL_C_MINOR (or unparsable) or whose work-groups hold fewer than 16
 * work-items; EFL_ERROR_OPENCL when a query the library needs fails. */
efl_status efl_device_query(cl_device_id dev, efl_device_info *info);

/* Launch parameters in EFL_TUNE's syntax: "" or comma-separated key=value items (vw, wgx, unroll,
 * barrier, rows; spaces allowed around both). The one parser of that syntax: the context options
 * check it strictly, EFL_TUNE is applied item by item as it always was. */
typedef struct {
    unsigned vw, wgx, unroll, barrier, rows;
    unsigned given; /* a bit per key present with a value any device takes: EFL_TUNE_VW ... */
} efl_tune;
enum { EFL_TUNE_VW = 1, EFL_TUNE_WGX = 2, EFL_TUNE_UNROLL = 4, EFL_TUNE_BARRIER = 8, EFL_TUNE_ROWS = 16 };

/* Reads every item of text into *tune (an item that is not the syntax, or holds a value no
 * device takes, is passed over). Returns 1 when every item was good, 0 otherwise. */
int efl_tune_parse(const char *text, efl_tune *tune);

/* Kernel parameters for C classes on this device: the heuristic, then any override from
 * EFL_TUNE ("vw=16,wgx=76,unroll=1,barrier=1,rows=256", each key optional; efl-bench --tune
 * searches them). */
efl_kernel_params efl_device_kernel_params(const efl_device_info *info, uint32_t num_classes);

/* Rows each work-item of the step loops over, for n rows: enough blocks to fill the device,
 * few enough that the partials stay small next to the logits. Never 0. */
unsigned efl_device_rows_per_block(const efl_device_info *info, const efl_kernel_params *kp, size_t n);

/* The parameters of efl_step_head (detection-head layouts), from the rows layout's. */
efl_kernel_params efl_device_head_params(const efl_device_info *info, efl_kernel_params kp);

/* Columns of the padded layout: C rounded up to whole step work-groups. */
size_t efl_device_padded_columns(const efl_kernel_params *kp, uint32_t num_classes);

/* Build options: -cl-std=CL1.2 (EFL_KERNEL_C_*: the kernels' language, which every device
 * efl_device_query accepts compiles), the -D defines, and EFL_BUILD_OPTIONS from the
 * environment. Returns 0 if buf was too small. */
int efl_device_build_options(const efl_device_info *info, const efl_kernel_params *kp, char *buf, size_t size);

#endif
