/*
 * Shared test helpers: a tiny check framework, the OpenCL environment (device chosen by the
 * library from EFL_DEVICE), buffers, a seeded RNG, detector-like random inputs and
 * tolerance comparisons that print the worst element.
 */
#ifndef EFL_TEST_UTIL_H
#define EFL_TEST_UTIL_H

#ifndef CL_USE_DEPRECATED_OPENCL_1_2_APIS
#define CL_USE_DEPRECATED_OPENCL_1_2_APIS
#endif
#include <efl/efl.h>

#include <stddef.h>
#include <stdint.h>

#include "efl_ref.h"

#define TU_SKIP_CODE 77

#if defined(__GNUC__)
#define TU_PRINTF(fmt_arg, first_arg) __attribute__((format(printf, fmt_arg, first_arg)))
#else
#define TU_PRINTF(fmt_arg, first_arg)
#endif

/* ------------------------------------------------------------ checks */
/* A test binary runs named cases: tu_begin("x") ... tu_end() prints "PASS x" or "FAIL x";
 * tu_exit_code() is non-zero if any check anywhere failed. */
void tu_begin(const char *name);
void tu_end(void);
int tu_exit_code(void);
void tu_failf(const char *file, int line, const char *fmt, ...);
int tu_check(int ok, const char *file, int line, const char *expr);
int tu_check_status(efl_status got, efl_status want, const char *file, int line, const char *expr);
_Noreturn void tu_skip(const char *why);
_Noreturn void tu_fatal(const char *file, int line, const char *what);
/* A pid no process has (POSIX): a child that has exited and been reaped. */
long tu_dead_pid(void);

#define CHECK(cond) tu_check((cond) != 0, __FILE__, __LINE__, #cond)
#define CHECK_MSG(cond, ...) ((cond) ? 1 : (tu_failf(__FILE__, __LINE__, __VA_ARGS__), 0))
#define CHECK_STATUS(expr, want) tu_check_status((expr), (want), __FILE__, __LINE__, #expr)
/* For setup calls whose failure makes the rest meaningless. */
#define REQUIRE_CL(expr)                                                                             \
    do {                                                                                             \
        cl_int req_err_ = (expr);                                                                    \
        if (req_err_ != CL_SUCCESS)                                                                  \
            tu_fatal(__FILE__, __LINE__, #expr);                                                     \
    } while (0)
#define REQUIRE_OK(expr)                                                                             \
    do {                                                                                             \
        efl_status req_st_ = (expr);                                                                 \
        if (req_st_ != EFL_OK) {                                                                     \
            tu_failf(__FILE__, __LINE__, "%s -> %s", #expr, efl_status_string(req_st_));            \
            tu_fatal(__FILE__, __LINE__, #expr);                                                     \
        }                                                                                            \
    } while (0)

/* ------------------------------------------------------- environment */
typedef struct {
    efl_context *ctx;
    cl_context cl;
    cl_device_id dev;
    cl_command_queue queue;
    int has_fp64;
    char device_name[256];
} tu_env;

/* efl_context_create_default() (honours EFL_DEVICE) plus an in-order queue. No device at all:
 * SKIP (exit 77). Any other failure is fatal. */
void tu_env_init(tu_env *e);
void tu_env_free(tu_env *e);

/* Buffers: size is clamped up to 4 bytes (OpenCL forbids 0); init may be NULL (then the
 * buffer is filled with the sentinel byte). All blocking; failures are fatal. */
#define TU_SENTINEL 0xA5
cl_mem tu_buf(tu_env *e, size_t bytes, const void *init);
void tu_write(tu_env *e, cl_mem b, size_t bytes, const void *src);
void tu_read(tu_env *e, cl_mem b, size_t bytes, void *dst);
void tu_fill(tu_env *e, cl_mem b, size_t bytes, unsigned char byte);
void tu_release(cl_mem b);
void *tu_xmalloc(size_t bytes); /* malloc (at least 1 byte); fatal on failure */
/* A probe kernel `name` from src, compiled after the library's kernel headers as the library
 * compiles its kernels (efl_labels.h, efl_protocol.h, efl_common.h) with opts; its program in
 * *prog (release both). Fatal on failure, with the build log printed. */
cl_kernel tu_probe_kernel(tu_env *e, const char *src, const char *name, const char *opts, cl_program *prog);

efl_loss *tu_loss(tu_env *e, const efl_loss_config *cfg); /* fatal on failure */
efl_ref_params tu_ref_params(const efl_loss_config *cfg);

/* State of a loss read from the device (allocated like an efl_ref_state). */
void tu_read_state(tu_env *e, efl_loss *loss, efl_ref_state *out);
void tu_write_state(tu_env *e, efl_loss *loss, const efl_ref_state *in);
/* Write, then read back into `in`: without cl_khr_fp64 the device keeps compensated float
 * pairs (~48 bits), so "unchanged" and the reference's starting point must be what the device
 * actually holds, not the doubles we asked for. */
void tu_write_state_canonical(tu_env *e, efl_loss *loss, efl_ref_state *in);
int tu_state_equal_bits(const efl_ref_state *a, const efl_ref_state *b);

/* EFL_TEST_SMALL=1 (the Oclgrind runs): row counts divided by 10 (200 at least) and at most 3
 * steps, so a simulator runs the same cases in a minute. */
size_t tu_rows(size_t n);
int tu_steps(int steps);
/* 1 under EFL_TEST_SMALL (the simulator's runs) */
int tu_small(void);

/* ------------------------------------------------------------ batches */
/* A rows-layout efl_batch over n rows: input[0] = x, labels = y, grad[0] = grad, loss = loss (any
 * may be NULL) and the float normalizer; the rest as efl_batch_init leaves it (MEAN, float32,
 * grad_scale 1, no normalizer buffer, no loss_elems). */
efl_batch tu_rows_batch(size_t n, cl_mem x, cl_mem y, cl_mem grad, cl_mem loss, float normalizer);

/* A batch efl_enqueue_batch must refuse with `want`, changing nothing. */
typedef struct {
    const char *what;
    efl_op op;
    efl_status want;
    efl_batch b;
} tu_batch_case;
/* Appends to the array `cases` (nb entries so far) a case named desc: a copy of the batch `base`,
 * then the statements given last, which change the copy through `b` (an efl_batch *), e.g.
 *     TU_BATCH_CASE(cases, nb, good, "rows 0", EFL_OP_STEP, EFL_ERROR_..., b->rows = 0);
 * Fatal when the array is full. */
#define TU_BATCH_CASE(cases, nb, base, desc, o, w, ...)                                                              \
    do {                                                                                                           \
        if ((nb) >= sizeof(cases) / sizeof((cases)[0]))                                                           \
            tu_fatal(__FILE__, __LINE__, "too many batch cases");                                                  \
        tu_batch_case *tu_case_ = &(cases)[(nb)++];                                                                \
        tu_case_->what = (desc);                                                                                   \
        tu_case_->op = (o);                                                                                        \
        tu_case_->want = (w);                                                                                      \
        tu_case_->b = (base);                                                                                      \
        efl_batch *b = &tu_case_->b;                                                                               \
        (void)b;                                                                                                   \
        __VA_ARGS__;                                                                                               \
    } while (0)
/* Each case through efl_enqueue_batch on `loss`: the status must be the case's, and nothing may
 * change: the state stays bitwise `state`, and outs[k] (sizes[k] bytes each, filled with
 * TU_SENTINEL before every case) keep the sentinel in every byte. */
void tu_check_refused(tu_env *e, efl_loss *loss, const tu_batch_case *cases, size_t count, const efl_ref_state *state,
                      const cl_mem *outs, const size_t *sizes, size_t nouts);

/* ---------------------------------------------------------------- RNG */
typedef struct {
    uint64_t s;
} tu_rng;
uint64_t tu_next(tu_rng *r);     /* splitmix64 */
double tu_uniform(tu_rng *r);    /* [0, 1) */
double tu_normal(tu_rng *r);     /* N(0, 1) */
uint32_t tu_below(tu_rng *r, uint32_t n);

/* Detector-like logits: N(-4, 2.5) (the usual prior -log((1-0.01)/0.01) ~ -4.6) with about
 * 0.2% outliers of magnitude 15..60 of either sign. */
void tu_make_logits(tu_rng *r, float *x, size_t count);

typedef struct {
    double fg_fraction;     /* rows with a class, e.g. 0.06 (> 90% background) */
    double ignore_fraction; /* rows labelled ignore_index */
    double zipf_s;          /* class frequency ~ 1/(rank+1)^s */
    int zero_based;
    int32_t ignore_index;
} tu_label_opts;
tu_label_opts tu_default_label_opts(void);
/* Long-tailed labels; returns the number of positive rows. */
size_t tu_make_labels(tu_rng *r, int32_t *y, size_t n, uint32_t C, const tu_label_opts *o);
int32_t tu_background_label(uint32_t C, int zero_based);
int32_t tu_class_label(uint32_t column, int zero_based);

/* ------------------------------------------------------- 16-bit storage */
/* Written here from IEEE 754 / the bfloat16 definition, independently of the kernels: float to
 * float16 and to bfloat16 with round to nearest even, and back (exact). */
uint16_t tu_f32_to_f16(float f);
float tu_f16_to_f32(uint16_t h);
uint16_t tu_f32_to_bf16(float f);
float tu_bf16_to_f32(uint16_t b);
/* The spacing of the storage type's values at |v| (its ulp there; subnormal spacing below). */
double tu_f16_ulp(double v);
double tu_bf16_ulp(double v);

/* ------------------------------------------------------- comparisons */
/* |got - ref| <= rtol*|ref| + atol elementwise, got finite. On failure prints how many
 * elements failed and the worst one (largest excess over its tolerance), records a check
 * failure and returns 0. */
int tu_cmp_f32(const char *what, const float *got, const double *ref, size_t n, double rtol, double atol);
int tu_cmp_f64(const char *what, const double *got, const double *ref, size_t n, double rtol, double atol);
double tu_max_abs(const double *v, size_t n);
size_t tu_count_nonzero(const double *v, size_t n);
int tu_all_finite_f32(const float *v, size_t n);
/* n elements of esize bytes each bitwise equal; on failure prints how many differ and the first
 * (its values too when esize is 4: floats), records a check failure and returns 0. */
int tu_bits_equal(const char *what, const void *a, const void *b, size_t n, size_t esize);

/* Tolerances, see test_parity.c for the argument. */
#define TU_LOSS_RTOL 1e-5
#define TU_GRAD_RTOL 1e-5
#define TU_GRAD_ATOL_REL 1e-12 /* times max|ref grad| */
#define TU_STATE_RTOL 1e-6
/* A state sum over one or a few elements inherits those elements' float32 error instead of
 * averaging it out: each gradient is a product of about six rounded factors (measured: at most
 * 4.3e-7, 7 ulp, at gamma 2), and from the second step on gamma_j itself follows g, which carries
 * the previous steps' ~1e-7, amplified by softplus(z) in the exponent. Seen: 1.05e-6 on a
 * single-element pos_grad at step 3. So 2e-6 for sums of few elements; TU_STATE_RTOL (1e-6)
 * wherever classes sum many elements, and the replay check in test_parity holds the
 * accumulators themselves to 1e-6 of each increment. */
#define TU_STATE_RTOL_FEW 2e-6

/* tu_cmp_f32 with the tolerances above, named by a printf format: a loss (TU_LOSS_RTOL), a
 * gradient (TU_GRAD_RTOL, absolute floor TU_GRAD_ATOL_REL times max|ref|), and a state: pos_grad
 * and pos_neg to rtol_few (classes that sum few elements), neg_grad to rtol, absolute floors 1e-12
 * of max|ref| (pos_neg: 1e-12), reported as "<name> pos_grad" etc. */
int tu_cmp_loss(float got, double ref, const char *fmt, ...) TU_PRINTF(3, 4);
int tu_cmp_grad(const float *got, const double *ref, size_t n, const char *fmt, ...) TU_PRINTF(4, 5);
int tu_cmp_state(const efl_ref_state *got, const efl_ref_state *want, double rtol_few, double rtol, const char *fmt,
                 ...) TU_PRINTF(5, 6);

/* One device step (efl_enqueue_step on fresh buffers) and one reference step from the
 * reference state `rs` (advanced), compared: loss, gradient, then device state vs rs
 * (TU_STATE_RTOL_FEW: the edge cases sum few elements per class).
 * dev_grad (n*C, may be NULL) receives the device gradient. Returns 1 if all matched. */
int tu_step_compare(tu_env *e, efl_loss *loss, const efl_ref_params *rp, efl_ref_state *rs, const float *x,
                    const int32_t *y, size_t n, float normalizer, efl_reduction red, float *dev_grad);

#endif
