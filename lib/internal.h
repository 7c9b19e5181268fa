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
    efl_kernel_params kp;      /* the rows layout's kernels */
    efl_kernel_params kp_head; /* efl_step_head's (efl_device_head_params) */
    cl_uint cpad;     /* C rounded up to whole step work-groups (efl_device_padded_columns) */
    size_t acc_bytes; /* one accumulator: double or float pair, 8 bytes either way */
    cl_kernel k_step[3][2]; /* per efl_dtype, rows or head layout; built on first use */
    cl_kernel k_reduce, k_apply;
    cl_kernel k_head_labels; /* from the first head-layout program built */
    cl_mem head_labels;      /* [rows] int: a head batch's labels in its levels' row order */
    size_t head_labels_rows;
    /* data parallel (parallel.c): the last enqueue's statistics scale (1 / grad_scale for a
     * collect) and rows (0: no statistics), and the flags its device raised */
    float stat_scale;
    size_t stat_rows;
    cl_uint stat_flags;
    cl_mem state;      /* [3][C] acc: pos_grad, neg_grad, pos_neg */
    cl_mem table;      /* [3][cpad] float: gamma_j hi, lo, w_j for the next step */
    cl_mem info;       /* [2] uint: flags of the last call, refused steps */
    cl_mem step_stats; /* [3][cpad] acc: this step's P, N and loss per column */
    cl_mem step_flags; /* [1 + cpad] uint: the blocks' flags, then each column's (efl_reduce) */
    cl_mem partials;   /* [blocks][EFL_PARTIAL_ROWS][cpad] float, grown on demand */
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

/* loss.c: the largest focusing factor (gamma_j at g = 0: gamma_b + s in EFL mode, gamma_b
 * otherwise) and the largest alpha_t (1 with alpha weighting off), which bound every element's
 * weight: the configuration's checks and the host step's proof (host_precheck.c) use them. */
double efl_largest_gamma_j(const efl_loss_config *cfg);
double efl_largest_alpha_t(const efl_loss_config *cfg);
/* loss.c: the configuration's checks (also the config fuzzer's target). */
efl_status efl_check_config(const efl_loss_config *cfg);
/* loss.c: the step kernel for a storage type and layout kind, compiled on first use. */
efl_status efl_loss_step_kernel(efl_loss *loss, efl_dtype dtype, int planar, cl_kernel *out);
/* loss.c: pos_neg's value in a fresh or reset state (EQLv2: 100, else 1). */
double efl_initial_pos_neg(const efl_loss_config *cfg);
/* Bytes of one logit or gradient element; 0 for an invalid dtype. */
size_t efl_dtype_size(efl_dtype dtype);

/* step.c: argument checks shared by the enqueue calls and the host conveniences. */
efl_status efl_check_queue(const efl_loss *loss, cl_command_queue queue);
/* The defaults efl_batch_init and efl_host_batch_init give (after zeroing): rows layout,
 * float32, mean, normalizer 1, grad_scale 1. */
#define EFL_BATCH_DEFAULTS(b)                                                                      \
    ((b)->layout = EFL_LAYOUT_ROWS, (b)->dtype = EFL_DTYPE_FLOAT32, (b)->reduction = EFL_REDUCTION_MEAN, \
     (b)->normalizer = 1.0f, (b)->grad_scale = 1.0f)

/* step.c: whether an op takes the caller's gradient (no loss), and whether it writes one. */
int efl_op_collects(efl_op op);
int efl_op_writes_grad(efl_op op);
/* step.c: the apply kernel in one of its modes (EFL_APPLY_* of kernels/efl_apply.cl, repeated
 * in step.c), without a loss output. */
efl_status efl_enqueue_apply(efl_loss *loss, cl_command_queue queue, int mode, float stat_scale);
/* state_io.c: one accumulator of a device buffer to float64 (v) + float32 residual (r), and back. */
void efl_acc_decode(const efl_loss *loss, const void *buf, size_t i, double *v, float *r);
void efl_acc_encode(const efl_loss *loss, void *buf, size_t i, double v, float r);
/* step.c: a batch's levels (1 for the rows layout), elements per level and rows, checked as
 * efl_enqueue_batch checks them (EFL_ERROR_INVALID_LAYOUT, EFL_ERROR_TOO_MANY_ROWS). */
efl_status efl_batch_shape(const efl_loss *loss, const efl_batch *bt, size_t *elems, uint32_t *levels, size_t *rows);
/* host_precheck.c: 1 if a host step on these logits (levels arrays of counts[l] elements, n
 * rows in all) cannot be refused by the device (no non-finite logit, nothing that could
 * overflow), so its outputs may go straight into the caller's arrays; reads the state's
 * largest total through queue. */
int efl_host_step_cannot_be_refused(efl_loss *loss, cl_command_queue queue, efl_dtype dtype,
                                    const void *const *inputs, const size_t *counts, uint32_t levels, size_t n,
                                    float normalizer, efl_reduction reduction);
/* Recompute the (gamma_j, w_j) table from the state on the device. */
efl_status efl_refresh_table(efl_loss *loss, cl_command_queue queue);

/* checkpoint.c / state_io.c */
/* The largest C a configuration may have (efl_check_config): bounds what a checkpoint reader
 * will read. */
#define EFL_MAX_CLASSES (1u << 24)
/* The checks of every state and checkpoint call: a loss (EFL_ERROR_NULL_HANDLE) that keeps a
 * state (focal loss: EFL_ERROR_INVALID_MODE), a queue of its context and device. */
efl_status efl_state_check_call(efl_loss *loss, cl_command_queue queue);
/* The state exactly: 3*C float64 totals v (pos_grad, neg_grad, pos_neg) and 3*C float32
 * residuals r, each total being v + r exactly (r is 0 with float64 accumulators; with float
 * pairs it keeps the low bits of lo that a double cannot). Blocking. */
efl_status efl_state_read_exact(efl_loss *loss, cl_command_queue queue, double *v, float *r);
/* The inverse: what efl_state_read_exact gave comes back bitwise. Values finite, >= 0 and
 * within the accumulators' range, else EFL_ERROR_INVALID_STATE and nothing written. */
efl_status efl_state_write_exact(efl_loss *loss, cl_command_queue queue, const double *v, const float *r);
/* The checkpoint format (checkpoint.c, which documents it). Its size in bytes for C classes. */
uint64_t efl_checkpoint_size(uint32_t num_classes);
/* Writes the checkpoint of a loss configured as cfg, with those totals and residuals, to out
 * (efl_checkpoint_size(cfg->num_classes) bytes). */
void efl_checkpoint_serialize(const efl_loss_config *cfg, const double *totals, const float *residuals,
                              unsigned char *out);
/* The reader's checks, pure (no OpenCL: the fuzz target calls it): whether buf[0..size) is a
 * checkpoint a loss configured as `expect` can load; on EFL_OK totals and residuals (3*C each,
 * C = expect->num_classes) hold its values, otherwise their contents are unspecified. */
efl_status efl_checkpoint_parse(const void *buf, size_t size, const efl_loss_config *expect, double *totals,
                                float *residuals);

/* aliasing.c: EFL_ERROR_ALIASED_BUFFERS where an output the call writes (grad, loss_elems, the
 * reduced loss) overlaps an input it reads (input, labels, normalizer_buffer) or another output:
 * the same cl_mem, sub-buffers of one buffer over overlapping bytes, or CL_MEM_USE_HOST_PTR
 * buffers over overlapping host bytes. Only the bytes the call uses count; buffers the op does
 * not use are ignored. The batch must have passed check_batch_buffers. */
efl_status efl_check_batch_aliasing(const efl_loss *loss, efl_op op, const efl_batch *bt);
/* The same for host arrays: ranges with a NULL ptr or 0 bytes are ignored. */
typedef struct {
    const void *ptr;
    uint64_t bytes;
    int output;
} efl_host_range;
efl_status efl_check_host_ranges(const efl_host_range *ranges, size_t count);
/* An efl_loss_run_host batch, with its shape from efl_batch_shape. */
efl_status efl_check_host_batch_aliasing(efl_op op, const efl_host_batch *b, const size_t *elems, uint32_t levels,
                                         size_t rows);

#endif
