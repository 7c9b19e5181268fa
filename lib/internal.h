/* Private to the library: the handles' insides and the helpers the lib/ files share. */
#ifndef EFL_INTERNAL_H
#define EFL_INTERNAL_H

#include <stdatomic.h>

#include "efl/efl.h"
#include "device.h"
#include "mutex.h"

typedef struct {
    char *options;
    cl_program program;
} efl_program_entry;

struct efl_context_s {
    cl_context context;
    cl_device_id device;
    efl_device_info info;
    efl_mutex lock; /* guards programs and log */
    efl_program_entry *programs;
    size_t nprograms;
    char *log;
    size_t log_len;
    atomic_int last_cl_error;
};

struct efl_loss_s {
    efl_context *ctx;
    efl_loss_config cfg;
    efl_kernel_params kp;
    cl_uint cpad;     /* C rounded up to whole step work-groups (efl_device_padded_columns) */
    size_t acc_bytes; /* one accumulator: double or float pair, 8 bytes either way */
    cl_kernel k_step[3]; /* per efl_dtype, built on first use */
    cl_kernel k_reduce, k_apply;
    cl_mem state;      /* [3][C] acc: pos_grad, neg_grad, pos_neg */
    cl_mem table;      /* [3][cpad] float: gamma_j hi, lo, w_j for the next step */
    cl_mem info;       /* [2] uint: flags of the last call, refused steps */
    cl_mem step_stats; /* [3][cpad] acc: this step's P, N and loss per column */
    cl_mem step_flags; /* [1] uint */
    cl_mem partials;   /* [blocks][3][cpad] float, grown on demand */
    cl_mem block_flags;
    size_t partials_blocks;
    /* host conveniences: a queue and staging buffers of our own, made on first use */
    cl_command_queue host_queue;
    cl_mem host_x, host_y, host_g, host_loss;
    size_t host_rows;
};

/* Record an OpenCL error on the context and map it to a status. */
efl_status efl_cl_fail(efl_context *ctx, cl_int err);
/* Append a line to the context log (never printed); _locked with ctx->lock already held. */
void efl_log(efl_context *ctx, const char *fmt, ...);
void efl_log_locked(efl_context *ctx, const char *fmt, ...);

/* program.c: the context's program for these parameters, built once and cached. */
efl_status efl_program_get(efl_context *ctx, const efl_kernel_params *kp, cl_program *out);
void efl_program_cache_release(efl_context *ctx);

/* loss.c: the configuration's checks (also the config fuzzer's target). */
efl_status efl_check_config(const efl_loss_config *cfg);
/* loss.c: the step kernel for a storage type, compiled on first use. */
efl_status efl_loss_step_kernel(efl_loss *loss, efl_dtype dtype, cl_kernel *out);
/* Bytes of one logit or gradient element; 0 for an invalid dtype. */
size_t efl_dtype_size(efl_dtype dtype);

/* step.c: argument checks shared by the enqueue calls and the host conveniences. */
efl_status efl_check_queue(const efl_loss *loss, cl_command_queue queue);
/* Recompute the (gamma_j, w_j) table from the state on the device. */
efl_status efl_refresh_table(efl_loss *loss, cl_command_queue queue);

#endif
