/*
 * efl: Equalized Focal Loss on OpenCL.
 *
 * The whole public API. Semantics: SPEC.md (forward, backward and the gradient-guided
 * per-class statistics of "Equalized Focal Loss for Dense Long-Tailed Object Detection").
 *
 * Thread safety
 *   - efl_context: shareable. Any number of threads may create losses on one context and
 *     enqueue at once; its program cache and log are guarded by a mutex.
 *   - efl_loss: one thread at a time (like a zstd context). Its calls must reach the device in
 *     order: use one in-order queue per loss, or order the calls with events.
 *   - Free functions (version, status strings, config defaults) are always safe.
 *
 * Errors
 *   Every call returns an efl_status. A call that returns an error other than EFL_ERROR_OPENCL
 *   or EFL_ERROR_OUT_OF_MEMORY has enqueued nothing and changed nothing: the caller's buffers
 *   and the loss state are as they were. Conditions only the device can see (a label outside
 *   the convention) make the device skip the state update and leave the loss output untouched;
 *   efl_loss_query_status() reports them once the queue has finished.
 *   The library never prints; efl_context_log() returns what it would have said (build logs).
 */
#ifndef EFL_EFL_H
#define EFL_EFL_H

#include <stddef.h>
#include <stdint.h>

#ifndef CL_TARGET_OPENCL_VERSION
#define CL_TARGET_OPENCL_VERSION 120
#endif
#ifdef __APPLE__
#include <OpenCL/cl.h>
#else
#include <CL/cl.h>
#endif

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32) && defined(EFL_SHARED_BUILD)
#define EFL_API __declspec(dllexport)
#elif defined(__GNUC__)
#define EFL_API __attribute__((visibility("default")))
#else
#define EFL_API
#endif

/* ---------------------------------------------------------------- version */
#define EFL_VERSION_MAJOR 0
#define EFL_VERSION_MINOR 1
#define EFL_VERSION_PATCH 0
#define EFL_VERSION_NUMBER (EFL_VERSION_MAJOR * 10000 + EFL_VERSION_MINOR * 100 + EFL_VERSION_PATCH)
#define EFL_STRINGIFY_(x) #x
#define EFL_STRINGIFY(x) EFL_STRINGIFY_(x)
#define EFL_VERSION_STRING \
    EFL_STRINGIFY(EFL_VERSION_MAJOR) "." EFL_STRINGIFY(EFL_VERSION_MINOR) "." EFL_STRINGIFY(EFL_VERSION_PATCH)

/* The version of the library actually linked (compare with EFL_VERSION_NUMBER). */
EFL_API unsigned efl_version_number(void);
EFL_API const char *efl_version_string(void);

/* ----------------------------------------------------------------- status */
/* Values are stable: new ones are only ever appended. */
typedef enum {
    EFL_OK = 0,
    EFL_ERROR_NULL_HANDLE = 1,          /* a NULL efl_context / efl_loss / out-pointer */
    EFL_ERROR_NULL_BUFFER = 2,          /* a required cl_mem or host array is NULL */
    EFL_ERROR_INVALID_NUM_CLASSES = 3,  /* C == 0 or C too large */
    EFL_ERROR_INVALID_GAMMA = 4,        /* gamma_b <= 0 or not finite */
    EFL_ERROR_INVALID_PARAMETER = 5,    /* alpha, scale factor, loss_weight not finite, s < 0 */
    EFL_ERROR_INVALID_NORMALIZER = 6,   /* normalizer <= 0 or not finite */
    EFL_ERROR_INVALID_REDUCTION = 7,    /* not an efl_reduction value */
    EFL_ERROR_INVALID_IGNORE_INDEX = 8, /* ignore_index collides with a valid label */
    EFL_ERROR_INVALID_LABEL_CONVENTION = 9,
    EFL_ERROR_BUFFER_TOO_SMALL = 10,    /* a cl_mem holds fewer bytes than the call needs */
    EFL_ERROR_BUFFER_CONTEXT = 11,      /* a cl_mem belongs to another cl_context */
    EFL_ERROR_QUEUE_MISMATCH = 12,      /* the queue is of another context or device */
    EFL_ERROR_INVALID_WAIT_LIST = 13,   /* events == NULL with a count, or a count with no list */
    EFL_ERROR_TOO_MANY_ROWS = 14,       /* N * C does not fit the device's index range */
    EFL_ERROR_INVALID_LABEL = 15,       /* found on the device: a label outside the convention */
    EFL_ERROR_INVALID_STATE = 16,       /* state arrays with negative or non-finite values */
    EFL_ERROR_NO_DEVICE = 17,           /* no OpenCL device found */
    EFL_ERROR_DEVICE_NOT_FOUND = 18,    /* EFL_DEVICE matched no device */
    EFL_ERROR_UNSUPPORTED_DEVICE = 19,  /* device lacks OpenCL C 1.2 or a needed limit */
    EFL_ERROR_BUILD_FAILED = 20,        /* kernel compilation failed: see efl_context_log() */
    EFL_ERROR_OUT_OF_MEMORY = 21,       /* host or device allocation failed */
    EFL_ERROR_OPENCL = 22,              /* an OpenCL call failed: efl_context_last_cl_error() */
    EFL_ERROR_NONFINITE = 23,           /* found on the device: Inf or NaN in a valid row's logits or
                                           supplied gradient; the step was skipped */
    EFL_ERROR_INVALID_DTYPE = 24,       /* not an efl_dtype value */
    EFL_STATUS_COUNT_ = 25
} efl_status;

/* A short, constant English name for a status ("invalid normalizer"). Never NULL. */
EFL_API const char *efl_status_string(efl_status status);

/* ---------------------------------------------------------------- context */
typedef struct efl_context_s efl_context;

/* Bind to the caller's context and device. The caller keeps ownership (the library retains
 * both and releases them on destroy). Compiles nothing yet. */
EFL_API efl_status efl_context_create(cl_context context, cl_device_id device, efl_context **out);

/* Pick a device on our own and create a cl_context for it.
 * EFL_DEVICE (environment) chooses: "P:D" indices ("1:0"), "P" (first device of platform P), or
 * a case-insensitive substring of "platform name [platform vendor] / device name" ("pocl",
 * "rusticl", "llvmpipe", "nvidia"). Otherwise the first GPU of any platform, else the first CPU
 * device, skipping platforms that fail or list no device. */
EFL_API efl_status efl_context_create_default(efl_context **out);

/* The devices a selector in EFL_DEVICE's syntax matches, over every platform that answers, in
 * platform then device order: "P:D" one device, "P" every device of platform P, other text
 * every device whose "platform [vendor] / device" contains it (case-insensitive); NULL or ""
 * every device. Writes up to max of them to devices (NULL with max 0 just counts) and returns
 * how many matched. A multi-device program (efl-bench) lists its devices with it. */
EFL_API size_t efl_devices_matching(const char *selector, cl_device_id *devices, size_t max);

/* "P:D platform [vendor] / device name" for a device (what selectors match), NUL-terminated and
 * truncated to size; returns the full length. */
EFL_API size_t efl_device_describe(cl_device_id device, char *buf, size_t size);

/* Every device found, one "P:D platform [vendor] / device name" line each (the same listing the
 * selectors match against): what to show a user when EFL_DEVICE matched nothing
 * (EFL_ERROR_DEVICE_NOT_FOUND). NUL-terminated and truncated to size; returns the full length. */
EFL_API size_t efl_devices_summary(char *buf, size_t size);

/* Accepts NULL. Losses created on the context must be destroyed first. */
EFL_API void efl_context_destroy(efl_context *ctx);

EFL_API cl_context efl_context_cl_context(const efl_context *ctx);
EFL_API cl_device_id efl_context_cl_device(const efl_context *ctx);

/* The last OpenCL error code seen by a call on this context (0 if none). */
EFL_API cl_int efl_context_last_cl_error(const efl_context *ctx);

/* Copy the context's log (build logs, device decisions) into buf, NUL-terminated, truncated
 * to size. Returns the full length (excluding the NUL), so a NULL/0 call sizes the buffer. */
EFL_API size_t efl_context_log(const efl_context *ctx, char *buf, size_t size);

/* Compile the kernels now rather than at the first loss creation. */
EFL_API efl_status efl_context_warmup(efl_context *ctx);

/* ------------------------------------------------------------------- loss */
typedef enum {
    EFL_LABELS_REFERENCE = 0, /* 0 = background, k in 1..C = column k-1 (the default) */
    EFL_LABELS_ZERO_BASED = 1 /* k in 0..C-1 = column k, C = background */
} efl_label_convention;

/* How the per-class running totals are kept on the device. */
typedef enum {
    EFL_ACCUMULATE_AUTO = 0,       /* float64 where the device has cl_khr_fp64, else float pairs */
    EFL_ACCUMULATE_FLOAT_PAIRS = 1 /* compensated float pairs (~48 bits) on any device */
} efl_accumulate;

/* Storage of logits and gradients in device buffers and host arrays; arithmetic is float32. */
typedef enum {
    EFL_DTYPE_FLOAT32 = 0,
    EFL_DTYPE_FLOAT16 = 1, /* IEEE half, through vload_half/vstore_half (no cl_khr_fp16 needed) */
    EFL_DTYPE_BFLOAT16 = 2 /* the top 16 bits of a float32, rounded to nearest even */
} efl_dtype;

typedef enum {
    EFL_REDUCTION_MEAN = 0, /* loss_weight * sum / normalizer */
    EFL_REDUCTION_SUM = 1   /* loss_weight * sum */
} efl_reduction;

typedef struct {
    uint32_t num_classes; /* C: logit columns, background excluded (1203 for LVIS) */
    float gamma;          /* gamma_b, focal gamma, > 0 (2.0) */
    float alpha;          /* 0.25; negative switches alpha weighting off */
    float scale_factor;   /* s, >= 0 (8.0); 0 gives plain focal loss */
    float loss_weight;    /* 1.0 */
    int32_t ignore_index; /* -1; rows with this label are ignored */
    efl_label_convention labels;
    efl_accumulate accumulate; /* EFL_ACCUMULATE_AUTO */
} efl_loss_config;

/* Fill cfg with the reference defaults for C classes. */
EFL_API void efl_loss_config_init(efl_loss_config *cfg, uint32_t num_classes);

typedef struct efl_loss_s efl_loss;

/* A loss with its per-class state on the device: pos_grad = neg_grad = 0, pos_neg = 1.
 * Compiles (or reuses) the context's program. */
EFL_API efl_status efl_loss_create(efl_context *ctx, const efl_loss_config *cfg, efl_loss **out);
/* Accepts NULL. Waits for nothing: release happens once enqueued work has finished. */
EFL_API void efl_loss_destroy(efl_loss *loss);

EFL_API efl_status efl_loss_get_config(const efl_loss *loss, efl_loss_config *cfg);

/* One training step, one fused pass over the logits.
 *   logits  float32 [n, C] row-major      labels  int32 [n]
 *   loss    float32 [1]: the reduced loss (written on the device; no host sync is forced)
 *   grad    float32 [n, C]: d loss / d logits
 * then the gradient-guided state update (SPEC "Gradient accumulation") with this step's grad.
 * The step reads the state from before the step. normalizer is used by EFL_REDUCTION_MEAN
 * (> 0, finite); pass 1.0 for the reference's default. n == 0 is valid: loss 0, no state change.
 * A label outside the convention, or Inf/NaN in a valid row's logits: the device refuses the
 * step (no state update, `loss` left as it was, the skip counted) and efl_loss_query_status()
 * returns EFL_ERROR_INVALID_LABEL or EFL_ERROR_NONFINITE; the gradient of a refused step is not
 * to be used (the single fused pass has written it before the verdict). `event` (optional)
 * covers the whole step. */
EFL_API efl_status efl_enqueue_step(efl_loss *loss, cl_command_queue queue, cl_mem logits, cl_mem labels,
                                    size_t n, float normalizer, efl_reduction reduction, cl_mem loss_out,
                                    cl_mem grad_out, cl_uint num_events_in_wait_list,
                                    const cl_event *event_wait_list, cl_event *event);

/* Loss only: no gradient, state untouched (evaluation). */
EFL_API efl_status efl_enqueue_forward(efl_loss *loss, cl_command_queue queue, cl_mem logits, cl_mem labels,
                                       size_t n, float normalizer, efl_reduction reduction, cl_mem loss_out,
                                       cl_uint num_events_in_wait_list, const cl_event *event_wait_list,
                                       cl_event *event);

/* The same with logits and gradient stored as `dtype` (buffer sizes in that type's bytes).
 * The statistics use the float32 gradient before it is rounded to storage. */
EFL_API efl_status efl_enqueue_step_typed(efl_loss *loss, cl_command_queue queue, efl_dtype dtype, cl_mem logits,
                                          cl_mem labels, size_t n, float normalizer, efl_reduction reduction,
                                          cl_mem loss_out, cl_mem grad_out, cl_uint num_events_in_wait_list,
                                          const cl_event *event_wait_list, cl_event *event);
EFL_API efl_status efl_enqueue_forward_typed(efl_loss *loss, cl_command_queue queue, efl_dtype dtype, cl_mem logits,
                                             cl_mem labels, size_t n, float normalizer, efl_reduction reduction,
                                             cl_mem loss_out, cl_uint num_events_in_wait_list,
                                             const cl_event *event_wait_list, cl_event *event);

/* Gradient accumulation from a gradient G [n, C] the caller computed (SPEC: a framework's own
 * backward, possibly scaled, e.g. by an AMP loss scale): P_j and N_j are the sums of
 * |G| / grad_scale over valid rows, then the state update. grad_scale > 0 and finite (1 for an
 * unscaled gradient). A G holding Inf or NaN in a valid row (an AMP overflow step) is skipped
 * on the device: the state stays as it was, the skip is counted (efl_loss_skipped_steps) and
 * efl_loss_query_status() returns EFL_ERROR_NONFINITE. No host synchronisation. */
EFL_API efl_status efl_enqueue_accumulate(efl_loss *loss, cl_command_queue queue, efl_dtype dtype, cl_mem grad,
                                          cl_mem labels, size_t n, float grad_scale,
                                          cl_uint num_events_in_wait_list, const cl_event *event_wait_list,
                                          cl_event *event);

/* Blocking: waits for `queue` to finish, then reports what the device found in the most recent
 * step, forward or accumulate of this loss: EFL_OK, EFL_ERROR_INVALID_LABEL, or
 * EFL_ERROR_NONFINITE (Inf or NaN in a valid row's logits or gradient). Steps and accumulates
 * refused for either reason left the state untouched. */
EFL_API efl_status efl_loss_query_status(efl_loss *loss, cl_command_queue queue);

/* Blocking: how many steps and accumulates this loss has refused (invalid labels, non-finite
 * values) since it was created. */
EFL_API efl_status efl_loss_skipped_steps(efl_loss *loss, cl_command_queue queue, uint32_t *count);

/* ------------------------------------------------------------------ state */
/* State as float64 host arrays of C values each (any may be NULL to skip it on read).
 * read and write are blocking on `queue`; they order after work already on that queue. */
EFL_API efl_status efl_loss_read_state(efl_loss *loss, cl_command_queue queue, double *pos_grad,
                                       double *neg_grad, double *pos_neg);
/* All three arrays required; values finite and >= 0 (pos_neg may exceed 1 only through
 * this call; the update clamps it again). Invalid values: EFL_ERROR_INVALID_STATE, nothing written. */
EFL_API efl_status efl_loss_write_state(efl_loss *loss, cl_command_queue queue, const double *pos_grad,
                                        const double *neg_grad, const double *pos_neg);
/* Back to pos_grad = neg_grad = 0, pos_neg = 1. */
EFL_API efl_status efl_loss_reset_state(efl_loss *loss, cl_command_queue queue);

/* ------------------------------------------------------- host conveniences */
/* The same calls on host arrays, through a queue the loss owns (created on first use). They
 * block until done. On any error, including EFL_ERROR_INVALID_LABEL, the host outputs and the
 * state are left as they were. grad may be NULL for efl_loss_step_host (state is still updated). */
EFL_API efl_status efl_loss_step_host(efl_loss *loss, const float *logits, const int32_t *labels, size_t n,
                                      float normalizer, efl_reduction reduction, float *loss_out,
                                      float *grad_out);
EFL_API efl_status efl_loss_forward_host(efl_loss *loss, const float *logits, const int32_t *labels, size_t n,
                                         float normalizer, efl_reduction reduction, float *loss_out);
EFL_API efl_status efl_loss_step_host_typed(efl_loss *loss, efl_dtype dtype, const void *logits,
                                            const int32_t *labels, size_t n, float normalizer,
                                            efl_reduction reduction, float *loss_out, void *grad_out);
EFL_API efl_status efl_loss_forward_host_typed(efl_loss *loss, efl_dtype dtype, const void *logits,
                                               const int32_t *labels, size_t n, float normalizer,
                                               efl_reduction reduction, float *loss_out);
EFL_API efl_status efl_loss_accumulate_host(efl_loss *loss, efl_dtype dtype, const void *grad, const int32_t *labels,
                                            size_t n, float grad_scale);
EFL_API efl_status efl_loss_skipped_steps_host(efl_loss *loss, uint32_t *count);
EFL_API efl_status efl_loss_read_state_host(efl_loss *loss, double *pos_grad, double *neg_grad,
                                            double *pos_neg);
EFL_API efl_status efl_loss_write_state_host(efl_loss *loss, const double *pos_grad, const double *neg_grad,
                                             const double *pos_neg);
EFL_API efl_status efl_loss_reset_state_host(efl_loss *loss);

#ifdef __cplusplus
}
#endif
#endif /* EFL_EFL_H */
