/*
 * efl: Equalized Focal Loss on OpenCL.
 *
 * The whole public API. Semantics: docs/semantics.md (forward, backward and the gradient-guided
 * per-class statistics of "Equalized Focal Loss for Dense Long-Tailed Object Detection").
 *
 * Two tiers (docs/api.md; docs/versioning.md for what a version may change)
 *   Stable core: the calls everything else is built on. They keep their signatures and
 *   meanings; a change is a new call, or (while the version is 0.x) a minor version that
 *   CHANGELOG.md lists.
 *     version   EFL_VERSION_*, efl_version_number, efl_version_string
 *     status    efl_status, efl_status_string
 *     context   efl_context_create, _create_with_options, efl_context_options (_init), _destroy,
 *               _cl_context, _cl_device, _last_cl_error, _log, _warmup
 *     loss      efl_loss_config (_init, _init_mode), efl_loss_create, _destroy, _get_config
 *     enqueues  efl_enqueue_step, _forward, _step_typed, _forward_typed, _accumulate, efl_batch
 *               (_init), efl_enqueue_batch; efl_loss_query_status, efl_loss_skipped_steps;
 *               data parallel: efl_loss_read_statistics, efl_loss_apply_statistics
 *     state     efl_loss_read_state, _write_state, _reset_state
 *   Conveniences: thin layers over the core, for callers without OpenCL plumbing and for
 *   common chores; they may still change shape in a minor version while 0.x.
 *     devices   efl_context_create_default, _create_default_with_options, efl_devices_matching,
 *               efl_device_pick, efl_device_type_name, efl_device_describe, efl_devices_summary
 *     host      every efl_loss_*_host call, efl_host_batch (_init), efl_loss_run_host: host
 *               arrays through a queue the loss owns, blocking
 *     files     efl_loss_save_checkpoint, _load_checkpoint, _export_checkpoint,
 *               _import_checkpoint (these also carry the float-pair totals' low bits, which
 *               efl_loss_read_state's float64 values cannot)
 *
 * Which step call
 *   Your logits in cl_mem, on your queue (returns at once; the device's verdict comes from
 *   efl_loss_query_status):
 *     efl_enqueue_step        float32 [n, C] rows, any reduction;
 *     efl_enqueue_step_typed  the same with float16 or bfloat16 storage;
 *     efl_enqueue_batch       everything else: a detection head's per-level outputs read in
 *                             place, the normalizer in a device buffer, the data-parallel ops
 *                             (EFL_OP_COMPUTE, _COLLECT). The calls above are shorthands for
 *                             its rows layout.
 *   Host arrays (blocking; the verdict is the returned status; no OpenCL objects needed with
 *   efl_context_create_default):
 *     efl_loss_step_host        float32 [n, C] rows;
 *     efl_loss_step_host_typed  float16 or bfloat16 storage;
 *     efl_loss_run_host         an efl_host_batch: what efl_enqueue_batch does, on host arrays.
 *   Forward and accumulate come in the same families (efl_enqueue_forward[_typed],
 *   efl_enqueue_accumulate; efl_loss_forward_host[_typed], efl_loss_accumulate_host); the two
 *   batch calls take them as an efl_op.
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
 *   the convention, a non-finite input, a result beyond its type) make the device refuse the
 *   step: no state update, the reduced loss output untouched, the refusal counted;
 *   efl_loss_query_status() reports them once the queue has finished. A kernel's stores cannot
 *   be taken back, so a refused *enqueue* may have written its gradient and per-element loss
 *   buffers (grad[], loss_elems[]); the host calls (efl_loss_*_host, efl_loss_run_host) never
 *   write any output of a refused call.
 *   The library never prints; efl_context_log() returns what it would have said (build logs).
 *
 * The invariant (every path: device and host calls, every dtype, layout, mode and reduction,
 * one process or many)
 *   After every call that succeeds (and for an enqueue, whose verdict efl_loss_query_status
 *   gives, every step the device accepts) the loss value, the gradient in its storage type, the
 *   per-element losses and the whole state (pos_grad, neg_grad, pos_neg) are finite, and
 *   pos_neg lies in [0, 1] in EFL mode. This holds for every finite input (logits up to
 *   +-FLT_MAX, any normalizer, grad_scale or state a call accepts) and every configuration
 *   efl_loss_create accepts. What cannot be represented is refused, never stored:
 *     EFL_ERROR_NONFINITE  Inf or NaN in a valid row's logits or supplied gradient;
 *     EFL_ERROR_OVERFLOW   a gradient or per-element loss beyond its storage type (float16:
 *                          65504, bfloat16 and float32: FLT_MAX after rounding), the loss's sum
 *                          over elements or the reduced loss beyond FLT_MAX, statistics or new
 *                          totals beyond the accumulators (float64, or FLT_MAX for float pairs),
 *                          EQLv2's g beyond them;
 *     EFL_ERROR_INVALID_STATE  state written or loaded out of range (EFL: pos_neg outside [0, 1]).
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
    EFL_ERROR_INVALID_PARAMETER = 5,    /* alpha, s, mu or loss_weight not finite, s < 0, EFL factors
                                           beyond float (efl_loss_create), an unknown accumulate or
                                           efl_op, grad_scale not finite and > 0 */
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
    EFL_ERROR_UNSUPPORTED_DEVICE = 19,  /* the device's OpenCL C (CL_DEVICE_OPENCL_C_VERSION) is older
                                           than 1.2, the kernels' language, or its work-groups hold
                                           fewer than 16 work-items */
    EFL_ERROR_BUILD_FAILED = 20,        /* kernel compilation failed: see efl_context_log() */
    EFL_ERROR_OUT_OF_MEMORY = 21,       /* host or device allocation failed */
    EFL_ERROR_OPENCL = 22,              /* an OpenCL call failed: efl_context_last_cl_error() */
    EFL_ERROR_NONFINITE = 23,           /* found on the device: Inf or NaN in a valid row's logits or
                                           supplied gradient; the step was skipped */
    EFL_ERROR_INVALID_DTYPE = 24,       /* not an efl_dtype value */
    EFL_ERROR_INVALID_MODE = 25,        /* not an efl_mode value, or a call the loss's mode has no use
                                           for (state calls on a focal-loss loss) */
    EFL_ERROR_INVALID_LAYOUT = 26,      /* not an efl_layout value, or a shape that does not fit it */
    EFL_ERROR_IO = 27,                  /* a checkpoint file could not be opened, written or renamed */
    EFL_ERROR_CHECKPOINT_CORRUPT = 28,  /* not a checkpoint, truncated, or its checksum fails */
    EFL_ERROR_CHECKPOINT_VERSION = 29,  /* a checkpoint format version this library does not read */
    EFL_ERROR_CHECKPOINT_MISMATCH = 30, /* a checkpoint of another mode, C or parameters */
    EFL_ERROR_REFUSED_BY_PEER = 31,     /* data parallel: another rank's device refused the step, so
                                           this one skipped its update too */
    EFL_ERROR_OVERFLOW = 32,            /* a result beyond what its type holds: the loss total, a
                                           gradient or per-element loss in its storage type, or the
                                           state's totals or factors; refused, nothing updated */
    EFL_ERROR_ALIASED_BUFFERS = 33,     /* an output overlaps an input or another output (the same
                                           cl_mem, overlapping sub-buffers or host ranges) */
    EFL_STATUS_COUNT_ = 34
} efl_status;

/* A short, constant English name for a status ("invalid normalizer"). Never NULL. */
EFL_API const char *efl_status_string(efl_status status);

/* ---------------------------------------------------------------- context */
typedef struct efl_context_s efl_context;

/* Bind to the caller's context and device. The caller keeps ownership (the library retains
 * both and releases them on destroy). Compiles nothing yet. EFL_ERROR_UNSUPPORTED_DEVICE for a
 * device the kernels cannot run on (OpenCL C before 1.2, work-groups under 16 work-items);
 * every program is built with -cl-std=CL1.2, whatever newer version the device also takes. */
EFL_API efl_status efl_context_create(cl_context context, cl_device_id device, efl_context **out);

/* Pick a device on our own and create a cl_context for it: efl_device_pick's choice for the
 * selector in EFL_DEVICE (environment; see efl_devices_matching for the syntax), the first device
 * it matches. Without EFL_DEVICE (or empty) the first GPU of any platform, else the first CPU,
 * else the first device, skipping platforms that fail or list no device. EFL_ERROR_NO_DEVICE
 * when no platform lists a device, EFL_ERROR_DEVICE_NOT_FOUND when EFL_DEVICE matches none. */
EFL_API efl_status efl_context_create_default(efl_context **out);

/* Context options, in place of the environment variables (zstd style): efl_context_options_init
 * sets every field to its default and `size` to sizeof; set the fields wanted, then pass it to a
 * _with_options call below. The call copies what it keeps: the strings need not outlive it.
 * NULL options, or every field at its default, create what efl_context_create / _default do.
 * Growth: fields are only appended. A caller built with an older efl.h passes its smaller size,
 * and the fields it lacks take their defaults. A larger size (a newer efl.h) is accepted when
 * every byte this library does not know is zero (new fields at their defaults); otherwise, or
 * for a size below 4, EFL_ERROR_INVALID_PARAMETER. */
typedef struct efl_context_options {
    uint32_t size;         /* sizeof(efl_context_options), set by efl_context_options_init */
    const char *cache_dir; /* the disk cache's folder (docs/design.md); "": no disk cache; NULL:
                              EFL_CACHE_DIR, else $XDG_CACHE_HOME/efl, else ~/.cache/efl */
    const char *tune;      /* launch parameters in EFL_TUNE's syntax, used instead of EFL_TUNE
                              ("vw=16,wgx=76,unroll=8,barrier=1,rows=256", each key optional); "":
                              the library's own choice whatever EFL_TUNE says; NULL: EFL_TUNE. Not
                              that syntax, or a value no device takes (vw not 1, 4, 8 or 16, unroll
                              not 1..16, barrier not 0 or 1, wgx or rows 0): creation fails with
                              EFL_ERROR_INVALID_PARAMETER. A value this device or a loss's C cannot
                              take (wgx above the work-group limit, vw above C) is ignored, as in
                              EFL_TUNE. */
} efl_context_options;

/* The defaults (NULL strings: the environment decides, as without options). Always safe. */
EFL_API void efl_context_options_init(efl_context_options *options);
/* efl_context_create and efl_context_create_default with options (NULL: none). Invalid options:
 * EFL_ERROR_INVALID_PARAMETER, nothing created. */
EFL_API efl_status efl_context_create_with_options(cl_context context, cl_device_id device,
                                                   const efl_context_options *options, efl_context **out);
EFL_API efl_status efl_context_create_default_with_options(const efl_context_options *options,
                                                           efl_context **out);

/* The devices a selector in EFL_DEVICE's syntax matches, over every platform that answers, in
 * platform then device order. Selectors:
 *   "P:D"          device D of platform P ("1:0"), indices as efl_device_describe gives them;
 *   "P"            every device of platform P;
 *   "gpu", "cpu", "accelerator"  (the whole selector, case-insensitive) every device of that
 *                  CL_DEVICE_TYPE; a type word matches by type only, never as a name substring
 *                  (a GPU whose name contains "cpu" is not taken by "cpu");
 *   "TYPE:NAME"    devices of that type whose "platform [vendor] / device" contains NAME
 *                  (case-insensitive): "gpu:nvidia", "cpu:pocl"; "cpu:" is "cpu"; the part
 *                  after ':' is always a name substring ("cpu:0" looks for the text "0");
 *   other text     every device whose "platform [vendor] / device" contains it
 *                  (case-insensitive): "pocl", "rusticl", "llvmpipe", and "gpux" or "CPUs"
 *                  (not type words);
 *   NULL or ""     every device.
 * Writes up to max of them to devices (NULL with max 0 just counts) and returns how many
 * matched. A multi-device program (efl-bench) lists its devices with it. */
EFL_API size_t efl_devices_matching(const char *selector, cl_device_id *devices, size_t max);

/* The device efl_context_create_default would take for this selector, without creating a
 * context: the first device efl_devices_matching(selector) lists, or for NULL or "" the default
 * rule (first GPU, else first CPU, else first device). Reads no environment: pass
 * getenv("EFL_DEVICE") to learn what efl_context_create_default picks. EFL_OK with *device set;
 * EFL_ERROR_NO_DEVICE (no device at all) or EFL_ERROR_DEVICE_NOT_FOUND (the selector matches
 * none) with *device NULL; EFL_ERROR_NULL_HANDLE for a NULL device. */
EFL_API efl_status efl_device_pick(const char *selector, cl_device_id *device);

/* The device's CL_DEVICE_TYPE as the selector word that matches it: "gpu", "cpu" or
 * "accelerator" (the first of these whose bit is set), "other" for none of them, "unknown" when
 * the query fails (NULL device). A static string. */
EFL_API const char *efl_device_type_name(cl_device_id device);

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

/* The last OpenCL error code seen by a call on this context (0 if none): where one call makes
 * several OpenCL calls, the code of the first that failed. */
EFL_API cl_int efl_context_last_cl_error(const efl_context *ctx);

/* Copy the context's log (build logs, device decisions) into buf, NUL-terminated, truncated
 * to size. Returns the full length (excluding the NUL), so a NULL/0 call sizes the buffer. */
EFL_API size_t efl_context_log(const efl_context *ctx, char *buf, size_t size);

/* Compile one program now rather than at the first loss creation: the one a loss made with
 * efl_loss_config_init(&cfg, 1203) (LVIS's C; EFL mode, default accumulation) uses for float32
 * rows on this device. It is kept on the context and in the disk cache (docs/design.md), so
 * such a loss, in this process or a later one, compiles nothing. A loss whose kernel parameters
 * differ (another C for which the device's launch choices differ, another mode,
 * EFL_ACCUMULATE_FLOAT_PAIRS on a float64 device) builds its own program at creation; float16,
 * bfloat16 and the head layouts build their step kernel on first use. */
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
    EFL_REDUCTION_SUM = 1,  /* loss_weight * sum */
    EFL_REDUCTION_NONE = 2  /* loss_weight * l per element, into a buffer shaped like the logits
                               (ignored rows 0); the gradient is that of the elements' sum */
} efl_reduction;

/* The loss family (docs/semantics.md "Related modes"). */
typedef enum {
    EFL_MODE_EFL = 0,   /* Equalized Focal Loss (the default) */
    EFL_MODE_FOCAL = 1, /* focal loss: gamma_b and alpha for every class; keeps no state */
    EFL_MODE_EQLV2 = 2  /* EQLv2: gamma (12), mu (0.8) and alpha (4) set the per-class weights
                           neg_w = sigmoid(gamma (g - mu)), pos_w = 1 + alpha (1 - neg_w); weighted
                           binary cross-entropy; g = pos_grad / (neg_grad + 1e-10) unclamped, from 100.
                           The reference's "mean" divides by the number of rows: pass it as the
                           normalizer. The statistics are |sigmoid(x) - t| * weight, unscaled. */
} efl_mode;

typedef struct {
    uint32_t num_classes; /* C: logit columns, background excluded (1203 for LVIS) */
    float gamma;          /* gamma_b, focal gamma, > 0 (2.0) */
    float alpha;          /* 0.25; negative switches alpha weighting off */
    float scale_factor;   /* s, >= 0 (8.0); 0 gives plain focal loss */
    float loss_weight;    /* 1.0 */
    int32_t ignore_index; /* -1; rows with this label are ignored */
    efl_label_convention labels;
    efl_accumulate accumulate; /* EFL_ACCUMULATE_AUTO */
    efl_mode mode;             /* EFL_MODE_EFL */
    float mu;                  /* EQLv2 only: 0.8 */
} efl_loss_config;

/* Fill cfg with the reference defaults for C classes (EFL mode). */
EFL_API void efl_loss_config_init(efl_loss_config *cfg, uint32_t num_classes);
/* The same for a mode: EFL and focal as above (focal: scale_factor 0); EQLv2: gamma 12, alpha 4,
 * mu 0.8, loss_weight 1. */
EFL_API void efl_loss_config_init_mode(efl_loss_config *cfg, uint32_t num_classes, efl_mode mode);

typedef struct efl_loss_s efl_loss;

/* A loss with its per-class state on the device: pos_grad = neg_grad = 0, pos_neg = 1.
 * Compiles (or reuses) the context's program. Besides each field's own range (efl_loss_config),
 * EFL mode needs its largest factors to be floats: gamma_b + s and alpha_t (gamma_b + s) /
 * gamma_b (alpha_t the larger of |alpha|, |1 - alpha|, and 1) at most FLT_MAX / 2, else
 * EFL_ERROR_INVALID_PARAMETER. */
EFL_API efl_status efl_loss_create(efl_context *ctx, const efl_loss_config *cfg, efl_loss **out);
/* Accepts NULL. Waits for nothing on your queues: release happens once enqueued work has
 * finished (only the loss's own host queue, idle after any host call, is finished first). */
EFL_API void efl_loss_destroy(efl_loss *loss);

EFL_API efl_status efl_loss_get_config(const efl_loss *loss, efl_loss_config *cfg);

/* One training step, one fused pass over the logits.
 *   logits  float32 [n, C] row-major      labels  int32 [n]
 *   loss    float32 [1]: the reduced loss (written on the device; no host sync is forced);
 *           for EFL_REDUCTION_NONE the per-element loss, [n, C] like the logits
 *   grad    float32 [n, C]: d loss / d logits
 * then the gradient-guided state update (the per-class statistics P_j, N_j of |grad|, added to
 * the totals; g = clamp(pos_grad / (neg_grad + 1e-10), 0, 1)) with this step's grad.
 * The step reads the state from before the step. normalizer is used by EFL_REDUCTION_MEAN
 * (> 0, finite); pass 1.0 for the reference's default. n == 0 is valid: loss 0, and still an
 * update: g is recomputed from the unchanged totals (so a fresh loss's g goes from 1 to 0, as
 * the reference implementation does), the same as the data-parallel path with no rows anywhere.
 * A label outside the convention, Inf/NaN in a valid row's logits, or a result beyond its type
 * (see "The invariant"): the device refuses the step (no state update, `loss` left as it was,
 * the skip counted) and efl_loss_query_status() returns EFL_ERROR_INVALID_LABEL,
 * EFL_ERROR_NONFINITE or EFL_ERROR_OVERFLOW; the gradient of a refused step is not to be used
 * (the single fused pass has written it before the verdict). `event` (optional) covers the
 * whole step. Outputs must not overlap inputs or each other (EFL_ERROR_ALIASED_BUFFERS): no
 * call works in place. */
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

/* Gradient accumulation from a gradient G [n, C] the caller computed (docs/semantics.md: a framework's own
 * backward, possibly scaled, e.g. by an AMP loss scale): P_j and N_j are the sums of
 * |G| / grad_scale over valid rows, then the state update. grad_scale > 0 and finite (1 for an
 * unscaled gradient). A G holding Inf or NaN in a valid row (an AMP overflow step) is skipped
 * on the device: the state stays as it was, the skip is counted (efl_loss_skipped_steps) and
 * efl_loss_query_status() returns EFL_ERROR_NONFINITE. No host synchronisation. */
EFL_API efl_status efl_enqueue_accumulate(efl_loss *loss, cl_command_queue queue, efl_dtype dtype, cl_mem grad,
                                          cl_mem labels, size_t n, float grad_scale,
                                          cl_uint num_events_in_wait_list, const cl_event *event_wait_list,
                                          cl_event *event);

/* ----------------------------------------------------- layouts and batches */
/* Where a batch's rows live.
 *   EFL_LAYOUT_ROWS: one buffer [rows, C], row-major (the concatenation the loss is defined on).
 *   EFL_LAYOUT_ANCHOR_MAJOR / _CLASS_MAJOR: the classification head's own outputs, one buffer per
 *   FPN level shaped [B, A*C, H, W], channel a*C + c (anchor-major) or c*A + a (class-major). Row
 *   order (labels, and what each layout equals) is the reference's concatenation: image-major,
 *   then level, then location h*W + w, then anchor a: row = b * R + level_offset + (h*W + w)*A + a
 *   with R = sum over levels of H*W*A. No copy is made: the kernels read the levels in place. */
typedef enum {
    EFL_LAYOUT_ROWS = 0,
    EFL_LAYOUT_ANCHOR_MAJOR = 1,
    EFL_LAYOUT_CLASS_MAJOR = 2
} efl_layout;

#define EFL_MAX_LEVELS 8

typedef enum {
    EFL_OP_STEP = 0,       /* loss, gradient, then the state update */
    EFL_OP_FORWARD = 1,    /* loss only */
    EFL_OP_ACCUMULATE = 2, /* the state update from a gradient the caller computed (input[]) */
    EFL_OP_COMPUTE = 3,    /* data parallel: a step whose update waits for efl_loss_apply_statistics */
    EFL_OP_COLLECT = 4     /* data parallel: an accumulate whose update waits likewise */
} efl_op;

/* Everything one enqueue reads and writes. efl_batch_init() gives rows layout, float32, mean,
 * normalizer 1, grad_scale 1 and NULL buffers. Per-level arrays use entries [0, levels); the
 * rows layout uses entry 0. Buffers are at offset 0; their sizes are checked. */
typedef struct {
    efl_layout layout;
    efl_dtype dtype;      /* storage of input, grad and loss_elems */
    size_t rows;          /* EFL_LAYOUT_ROWS: n */
    uint32_t images;      /* B (head layouts) */
    uint32_t anchors;     /* A (head layouts) */
    uint32_t levels;      /* 1..EFL_MAX_LEVELS (head layouts) */
    uint32_t height[EFL_MAX_LEVELS], width[EFL_MAX_LEVELS];
    cl_mem input[EFL_MAX_LEVELS];      /* logits; for EFL_OP_ACCUMULATE, _COLLECT the caller's gradient */
    cl_mem grad[EFL_MAX_LEVELS];       /* EFL_OP_STEP, _COMPUTE: d loss / d logits, same shapes */
    cl_mem loss_elems[EFL_MAX_LEVELS]; /* EFL_REDUCTION_NONE: the per-element loss, same shapes */
    cl_mem labels;                     /* int32, one per row, in row order */
    efl_reduction reduction;
    float normalizer;          /* EFL_REDUCTION_MEAN, when normalizer_buffer is NULL */
    cl_mem normalizer_buffer;  /* or float32 [1] read on the device (no host sync); a value that is
                                  not finite and > 0 refuses the step (query: INVALID_NORMALIZER) */
    cl_mem loss;               /* float32 [1]: the reduced loss (MEAN, SUM; unused by NONE) */
    float grad_scale;          /* EFL_OP_ACCUMULATE: statistics are |input| / grad_scale */
} efl_batch;

EFL_API void efl_batch_init(efl_batch *batch);

/* The general enqueue behind every other one: checks everything (a bad batch changes nothing),
 * then the kernels on the caller's queue. Device-side verdicts as for efl_enqueue_step. */
EFL_API efl_status efl_enqueue_batch(efl_loss *loss, cl_command_queue queue, efl_op op, const efl_batch *batch,
                                     cl_uint num_events_in_wait_list, const cl_event *event_wait_list,
                                     cl_event *event);

/* ---------------------------------------------------------- data parallel */
/* docs/semantics.md "Gradient accumulation": in data-parallel training P and N are summed over all ranks
 * before the update. The protocol, on each rank's queue:
 *   1. efl_enqueue_batch(loss, queue, EFL_OP_COMPUTE, ...) (or EFL_OP_COLLECT with a gradient of
 *      your own): loss and gradient as for a step, and this step's per-class statistics; the
 *      state update is held back.
 *   2. efl_loss_read_statistics(): blocking; EFL_STATISTICS_LENGTH(C) doubles: P[0..C),
 *      N[0..C) and, last, 1 if this rank's device refused the step (invalid label, non-finite
 *      value, bad normalizer), else 0.
 *   3. Sum them element-wise over the ranks with any collective that gives every rank the same
 *      bits: a reduce then a broadcast (efl_mpi.h, which does 1-4 in one call), or a ring
 *      all-reduce that reduces each element once and copies it (gloo, NCCL). MPI_Allreduce does
 *      not promise that.
 *   4. efl_loss_apply_statistics() with the sums: the state update and the next step's factors.
 *      If the last value is > 0 (a rank refused), every rank skips the update and counts it;
 *      efl_loss_query_status() then gives this rank's own reason, or EFL_ERROR_REFUSED_BY_PEER.
 * Every rank applies the same sums to the same state, so the states stay bitwise identical.
 * Focal loss keeps no statistics: EFL_ERROR_INVALID_MODE. */
#define EFL_STATISTICS_LENGTH(num_classes) (2 * (size_t)(num_classes) + 1)
EFL_API efl_status efl_loss_read_statistics(efl_loss *loss, cl_command_queue queue, double *stats);
/* Values must be finite and >= 0 (EFL_ERROR_INVALID_STATE, nothing done). Enqueued on `queue`;
 * the host array may be reused on return. */
EFL_API efl_status efl_loss_apply_statistics(efl_loss *loss, cl_command_queue queue, const double *stats);
/* The same through the loss's own queue (for host-array users: efl_loss_run_host with
 * EFL_OP_COMPUTE or EFL_OP_COLLECT first); the apply also waits and returns what
 * efl_loss_query_status would. */
EFL_API efl_status efl_loss_read_statistics_host(efl_loss *loss, double *stats);
EFL_API efl_status efl_loss_apply_statistics_host(efl_loss *loss, const double *stats);

/* Blocking: waits for `queue` to finish, then reports what the device found in the most recent
 * step, forward or accumulate of this loss: EFL_OK, EFL_ERROR_INVALID_LABEL,
 * EFL_ERROR_INVALID_NORMALIZER (a normalizer_buffer holding a value that is not finite and > 0,
 * or one that makes loss_weight / normalizer overflow), EFL_ERROR_NONFINITE (Inf or NaN in a
 * valid row's logits or gradient) or EFL_ERROR_OVERFLOW (a result beyond its type; "The
 * invariant" above). Several at once: the first of that list. Steps and accumulates refused for
 * any of these left the state and the loss output untouched. */
EFL_API efl_status efl_loss_query_status(efl_loss *loss, cl_command_queue queue);

/* Blocking: how many steps and accumulates this loss has refused (invalid labels, non-finite
 * values, overflows, a peer's refusal) since it was created. */
EFL_API efl_status efl_loss_skipped_steps(efl_loss *loss, cl_command_queue queue, uint32_t *count);

/* ------------------------------------------------------------------ state */
/* State as float64 host arrays of C values each (any may be NULL to skip it on read).
 * read and write are blocking on `queue`; they order after work already on that queue. */
EFL_API efl_status efl_loss_read_state(efl_loss *loss, cl_command_queue queue, double *pos_grad,
                                       double *neg_grad, double *pos_neg);
/* All three arrays required; values finite and >= 0, pos_neg within [0, 1] in EFL mode (the
 * range its update keeps it in), totals within the accumulators (FLT_MAX on float-pair devices).
 * Invalid values: EFL_ERROR_INVALID_STATE, nothing written. Loading a checkpoint checks the same. */
EFL_API efl_status efl_loss_write_state(efl_loss *loss, cl_command_queue queue, const double *pos_grad,
                                        const double *neg_grad, const double *pos_neg);
/* Back to pos_grad = neg_grad = 0, pos_neg = 1 (EQLv2: 100). */
EFL_API efl_status efl_loss_reset_state(efl_loss *loss, cl_command_queue queue);

/* ------------------------------------------------------------ checkpoints */
/* The state to a file and back: a versioned little-endian header (mode, C, parameters), the
 * float64 totals, a checksum. Saving writes a temporary file in the same folder, flushes it and
 * renames it over `path`, so an interruption leaves the previous checkpoint intact. Loading
 * checks everything before it writes the state: a truncated or corrupted file
 * (EFL_ERROR_CHECKPOINT_CORRUPT), another format version (_VERSION), another mode, C, gamma,
 * alpha, s or mu (_MISMATCH) leaves the state as it was. Blocking on `queue`. A focal-loss loss
 * has no state: EFL_ERROR_INVALID_MODE. Resuming from a checkpoint continues bitwise as if
 * uninterrupted (float-pair devices included). */
EFL_API efl_status efl_loss_save_checkpoint(efl_loss *loss, cl_command_queue queue, const char *path);
EFL_API efl_status efl_loss_load_checkpoint(efl_loss *loss, cl_command_queue queue, const char *path);
/* The same through memory: *size is the buffer's capacity in, the checkpoint's bytes out (a NULL
 * buffer just sizes it). */
EFL_API efl_status efl_loss_export_checkpoint(efl_loss *loss, cl_command_queue queue, void *buffer, size_t *size);
EFL_API efl_status efl_loss_import_checkpoint(efl_loss *loss, cl_command_queue queue, const void *buffer,
                                              size_t size);

/* ------------------------------------------------------- host conveniences */
/* The same calls on host arrays, through a queue the loss owns (created on first use). They
 * block until done. On any error, including the device's verdicts (EFL_ERROR_INVALID_LABEL,
 * _NONFINITE, _OVERFLOW), every host output and the state are left as they were. Where the
 * device shares host memory (CPU runtimes) the gradient is written straight into grad_out, but
 * only after a scan of the logits (their largest magnitude) has shown that no refusal is
 * possible; otherwise it goes through a staging buffer and is copied out on success.
 * Overlapping arrays (an output over an input or another output): EFL_ERROR_ALIASED_BUFFERS.
 * grad may be NULL for efl_loss_step_host (state is still updated).
 * With EFL_REDUCTION_NONE, loss_out receives n * C losses in the logits' storage type. */
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
EFL_API efl_status efl_loss_save_checkpoint_host(efl_loss *loss, const char *path);
EFL_API efl_status efl_loss_load_checkpoint_host(efl_loss *loss, const char *path);

/* A batch on host arrays: the efl_batch fields with host pointers instead of buffers (loss,
 * normalizer_buffer: a float in host memory). Outputs are written only on success. */
typedef struct {
    efl_layout layout;
    efl_dtype dtype;
    size_t rows;
    uint32_t images, anchors, levels;
    uint32_t height[EFL_MAX_LEVELS], width[EFL_MAX_LEVELS];
    const void *input[EFL_MAX_LEVELS];
    void *grad[EFL_MAX_LEVELS];       /* may be NULL for EFL_OP_STEP (the state is still updated) */
    void *loss_elems[EFL_MAX_LEVELS];
    const int32_t *labels;
    efl_reduction reduction;
    float normalizer;
    float *loss;
    float grad_scale;
} efl_host_batch;
EFL_API void efl_host_batch_init(efl_host_batch *batch);
EFL_API efl_status efl_loss_run_host(efl_loss *loss, efl_op op, const efl_host_batch *batch);

#ifdef __cplusplus
}
#endif
#endif /* EFL_EFL_H */
