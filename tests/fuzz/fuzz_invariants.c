/* libFuzzer target: properties of the public API over its numeric inputs, on a real device
 * (PoCL in CI: EFL_DEVICE=pocl). Each input is a loss configuration and up to 6 calls on it:
 * steps, forwards and accumulates on host arrays in every storage type and reduction, the
 * data-parallel path on one rank, state writes and resets, checkpoint round trips, head layouts
 * and device enqueues on buffers of our own. Values come from a table of interesting floats
 * (0, -0, denormals, FLT_MIN, 1e-30 .. FLT_MAX, negatives, NaN, Inf) or are small. Asserted:
 *
 *   - After every call that returns EFL_OK (device enqueues: and whose efl_loss_query_status is
 *     EFL_OK): the loss is finite, every gradient and per-element loss is finite in its storage
 *     type, the state is finite and >= 0, pos_neg in [0, 1] in EFL mode; an update (a step, an
 *     accumulate, an apply, n = 0 included) leaves pos_neg recomputed from the totals.
 *   - A refused call changes nothing: host outputs bitwise as they were (prefilled with NaN
 *     sentinels), the state bitwise as it was. A device verdict after an accepted enqueue leaves
 *     the state and the reduced loss buffer as they were and counts a skip (steps, accumulates).
 *   - Statuses: only EFL_OK and the refusals the numeric inputs can cause; refusals consistent
 *     with the input (no EFL_ERROR_NONFINITE when every value is finite in its storage type, no
 *     invalid label without one, no bad normalizer or parameter when they are good, no
 *     EFL_ERROR_ALIASED_BUFFERS without aliasing); no acceptance of what must be refused (Inf/NaN
 *     in a valid row, an invalid label, aliased outputs, a peer's refusal, invalid statistics).
 *   - Finite input is computed: EFL_ERROR_OVERFLOW only where the float64 reference
 *     (tests/efl_ref.c) puts some result near or beyond its type's range; a result the reference
 *     puts far beyond range is never returned as EFL_OK.
 *   - Checkpoints that export import back bitwise into a fresh loss; a call repeated on a twin
 *     loss with the same state gives bitwise the same results.
 * Anything else, or a sanitizer report, aborts, after one "INVARIANT VIOLATION [what]" report with
 * the configuration and the call. EFL_FUZZ_TRACE=1 prints every call's status (to replay an input).
 *
 * Input (a missing byte reads as 0, which gives the defaults and well-behaved values):
 *   C-1 (mod 40) | mode, label convention, accumulation bits | which of gamma, alpha, s,
 *   loss_weight, mu follow, ignore_index kind | those parameters | 4 bytes of generator seed |
 *   calls-1 (mod 6) | per call: an op byte (mod 10: step x2, forward, accumulate, data parallel,
 *   write_state, reset, checkpoint, head layout, device enqueue), its flag bytes and scalars,
 *   then the batch: rows, density of table values, of non-finite ones among them, of invalid and
 *   ignored labels, and up to 3 (position, value) overrides. The rest comes from the generator.
 * A parameter byte below 44 picks a table value, 248 and up 4 raw bytes, else a byte / 16.
 *
 * CI (tests/CMakeLists.txt) runs it on PoCL in one launch shape (EFL_TUNE) so that every C shares
 * a program; run without EFL_TUNE locally to cover the CPU shapes as well (compiles many more). */
#define _POSIX_C_SOURCE 200809L /* setenv */
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "efl/efl.h"

/* the float64 reference, compiled in (the fuzz targets are built from their one source file) */
#include "../efl_ref.c"

#define MAXC 40u
#define MAXROWS 8u
#define MAXCALLS 6u
#define BF16_MAX 3.38953138925153547590470800371487866880e38

/* ------------------------------------------------------------------ reporting */
static char g_cfgdesc[256], g_calldesc[256];
static unsigned g_call;

static void violation(const char *key, const char *fmt, ...)
{
    char detail[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    fprintf(stderr, "INVARIANT VIOLATION [%s]\n  config: %s\n  call %u: %s\n  %s\n", key, g_cfgdesc, g_call, g_calldesc,
            detail);
    abort();
}

#define ST(s) efl_status_string(s)

/* ------------------------------------------------------------------ input bytes */
typedef struct {
    const uint8_t *p;
    size_t n;
} reader;

static uint8_t u8(reader *r)
{
    if (!r->n)
        return 0;
    r->n--;
    return *r->p++;
}
static uint16_t u16(reader *r) { return (uint16_t)(u8(r) | u8(r) << 8); }
static uint32_t u32(reader *r) { return (uint32_t)u16(r) | (uint32_t)u16(r) << 16; }

static float bits_f(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Interesting floats: the finite ones first, then the non-finite ones. */
static const float FT[] = {0.0f,      -0.0f,    FLT_MIN,  1e-45f, 1e-40f,   1e-30f, 1e-10f,     1e-7f,    0.25f,
                           0.5f,      0.8f,     1.0f,     2.0f,   3.0f,     4.0f,   8.0f,       12.0f,    88.7f,
                           100.0f,    65504.0f, 65520.0f, 1e10f,  1e30f,    1e38f,  3.3895e38f, FLT_MAX,  -FLT_MIN,
                           -1e-45f,   -1e-40f,  -1e-10f,  -0.25f, -1.0f,    -2.0f,  -8.0f,      -88.7f,   -100.0f,
                           -65520.0f, -1e10f,   -1e30f,   -1e38f, -FLT_MAX, NAN,    INFINITY,   -INFINITY};
#define NFT (sizeof FT / sizeof FT[0])
#define NFT_FINITE (NFT - 3)

/* A parameter: a table value, raw bits, or a small value. */
static float pick_param(reader *r)
{
    const uint8_t b = u8(r);
    if (b < NFT)
        return FT[b];
    if (b >= 248)
        return bits_f(u32(r));
    return (float)(int8_t)u8(r) / 16.0f;
}

/* State values are float64: the table plus what only a double holds. */
static double pick_state(reader *r)
{
    static const double extra[] = {1e300, DBL_MAX, 4e38, 5e-324, 1.5, -1e-300};
    const uint8_t b = u8(r);
    if (b < NFT)
        return (double)FT[b];
    if (b < NFT + sizeof extra / sizeof extra[0])
        return extra[b - NFT];
    return (double)(b - NFT) / 64.0; /* 0.1 .. 3.3 */
}

/* ------------------------------------------------------------------ storage types */
static size_t esize(efl_dtype d) { return d == EFL_DTYPE_FLOAT32 ? 4 : 2; }
static double dtype_max(efl_dtype d)
{
    return d == EFL_DTYPE_FLOAT32 ? FLT_MAX : d == EFL_DTYPE_FLOAT16 ? 65504.0 : BF16_MAX;
}
static const char *dtype_name(efl_dtype d)
{
    return d == EFL_DTYPE_FLOAT32 ? "f32" : d == EFL_DTYPE_FLOAT16 ? "f16" : "bf16";
}
static const char *red_name(efl_reduction r)
{
    return r == EFL_REDUCTION_MEAN ? "mean" : r == EFL_REDUCTION_SUM ? "sum" : "none";
}

static uint16_t f2h(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000u, a = x & 0x7fffffffu;
    if (a > 0x7f800000u)
        return (uint16_t)(sign | 0x7e00u);
    if (a >= 0x477ff000u) /* 65520 and up round to Inf */
        return (uint16_t)(sign | 0x7c00u);
    if (a < 0x38800000u) { /* below 2^-14: a multiple of 2^-24, rounded to nearest even */
        const float scaled = bits_f(a) * 16777216.0f;
        return (uint16_t)(sign | (uint32_t)nearbyintf(scaled));
    }
    const uint32_t mant = a & 0x7fffffu, rest = mant & 0x1fffu;
    uint32_t h = (((a >> 23) - 127u + 15u) << 10) | (mant >> 13);
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u)))
        h++;
    return (uint16_t)(sign | h);
}

static float h2f(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) {
        const float f = ldexpf((float)m, -24);
        return sign ? -f : f;
    }
    if (e == 31)
        return bits_f(sign | 0x7f800000u | (m << 13));
    return bits_f(sign | ((e - 15u + 127u) << 23) | (m << 13));
}

static uint16_t f2bf(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((x >> 16) | 0x40u);
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

static float decode(efl_dtype d, const void *p, size_t i)
{
    if (d == EFL_DTYPE_FLOAT32) {
        float f;
        memcpy(&f, (const char *)p + 4 * i, 4);
        return f;
    }
    uint16_t h;
    memcpy(&h, (const char *)p + 2 * i, 2);
    return d == EFL_DTYPE_FLOAT16 ? h2f(h) : bits_f((uint32_t)h << 16);
}

static void encode(efl_dtype d, float f, void *p, size_t i)
{
    if (d == EFL_DTYPE_FLOAT32) {
        memcpy((char *)p + 4 * i, &f, 4);
        return;
    }
    const uint16_t h = d == EFL_DTYPE_FLOAT16 ? f2h(f) : f2bf(f);
    memcpy((char *)p + 2 * i, &h, 2);
}

/* The first element not finite in its storage type, or -1. */
static long first_nonfinite(efl_dtype d, const void *p, size_t count)
{
    for (size_t i = 0; i < count; ++i)
        if (!isfinite(decode(d, p, i)))
            return (long)i;
    return -1;
}

/* Outputs start as all-ones bytes: NaN in every storage type, so one left unwritten by an
 * accepted call shows as non-finite, and a refused call must leave exactly these bytes. */
#define SENTINEL 0xFF
static int untouched(const void *p, size_t bytes)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < bytes; ++i)
        if (b[i] != SENTINEL)
            return 0;
    return 1;
}

/* ------------------------------------------------------------------ the device */
static efl_context *g_ctx;
static cl_command_queue g_q;
static int g_has_fp64;
static int g_trace;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    setenv("EFL_DEVICE", "pocl", 0); /* the environment's choice wins */
    efl_status st = efl_context_create_default(&g_ctx);
    if (st != EFL_OK) {
        fprintf(stderr, "fuzz_invariants: no device (%s)\n", ST(st));
        abort();
    }
    cl_int err = CL_SUCCESS;
    g_q = clCreateCommandQueue(efl_context_cl_context(g_ctx), efl_context_cl_device(g_ctx), 0, &err);
    if (err != CL_SUCCESS)
        abort();
    char ext[4096] = "";
    clGetDeviceInfo(efl_context_cl_device(g_ctx), CL_DEVICE_EXTENSIONS, sizeof ext - 1, ext, NULL);
    g_has_fp64 = strstr(ext, "cl_khr_fp64") != NULL;
    g_trace = getenv("EFL_FUZZ_TRACE") != NULL;
    char name[256];
    efl_device_describe(efl_context_cl_device(g_ctx), name, sizeof name);
    fprintf(stderr, "fuzz_invariants: %s (fp64 %d)\n", name, g_has_fp64);
    return 0;
}

/* ------------------------------------------------------------------ one input */
typedef struct {
    double v[3][MAXC];
} state_t;

typedef struct {
    reader rd;
    uint32_t rng;
    efl_loss_config cfg;
    efl_loss *loss, *twin;
    size_t C;
    int has_state; /* not focal */
    double acc_lim;
    efl_ref_params ref;
} fz;

static uint32_t rnd(fz *z)
{
    uint32_t x = z->rng;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return z->rng = x;
}

static efl_status read_state(fz *z, efl_loss *l, state_t *s)
{
    memset(s, 0, sizeof *s);
    return z->has_state ? efl_loss_read_state(l, g_q, s->v[0], s->v[1], s->v[2]) : EFL_OK;
}

static state_t get_state(fz *z, const char *when)
{
    state_t s;
    const efl_status st = read_state(z, z->loss, &s);
    if (st != EFL_OK)
        violation("read_state failed", "%s: efl_loss_read_state -> %s", when, ST(st));
    return s;
}

static int same_state(fz *z, const state_t *a, const state_t *b)
{
    for (int k = 0; k < 3; ++k)
        if (memcmp(a->v[k], b->v[k], z->C * sizeof(double)) != 0)
            return 0;
    return 1;
}

static const char *state_name[3] = {"pos_grad", "neg_grad", "pos_neg"};

static void check_state(fz *z, const state_t *s, const char *when)
{
    if (!z->has_state)
        return;
    for (int k = 0; k < 3; ++k)
        for (size_t j = 0; j < z->C; ++j) {
            const double v = s->v[k][j];
            if (!isfinite(v) || v < 0.0)
                violation("state not finite and >= 0", "%s: %s[%zu] = %g", when, state_name[k], j, v);
            if (k == 2 && z->cfg.mode == EFL_MODE_EFL && v > 1.0)
                violation("pos_neg > 1 in EFL mode", "%s: pos_neg[%zu] = %.17g", when, j, v);
        }
}

/* After an update: pos_neg recomputed from the totals. */
static void check_recomputed(fz *z, const state_t *s, const char *when)
{
    if (!z->has_state)
        return;
    for (size_t j = 0; j < z->C; ++j) {
        const double pos = s->v[0][j], neg = s->v[1][j], g = s->v[2][j];
        double e = pos / (neg + 1e-10);
        if (z->cfg.mode == EFL_MODE_EFL)
            e = e < 0.0 ? 0.0 : e > 1.0 ? 1.0 : e;
        if (!isfinite(e))
            continue;
        if (!(fabs(g - e) <= 1e-4 * fabs(e) + 1e-30))
            violation("pos_neg not recomputed by an update", "%s: class %zu pos %.9g neg %.9g pos_neg %.9g, want %.9g",
                      when, j, pos, neg, g, e);
    }
}

static uint32_t skipped(fz *z, efl_loss *l)
{
    (void)z;
    uint32_t c = 0;
    const efl_status st = efl_loss_skipped_steps(l, g_q, &c);
    if (st != EFL_OK)
        violation("skipped_steps failed", "efl_loss_skipped_steps -> %s", ST(st));
    return c;
}

/* The refusals numeric input may cause (plus EFL_OK). */
static int status_allowed(efl_status st)
{
    switch (st) {
    case EFL_OK:
    case EFL_ERROR_NONFINITE:
    case EFL_ERROR_OVERFLOW:
    case EFL_ERROR_INVALID_NORMALIZER:
    case EFL_ERROR_INVALID_PARAMETER:
    case EFL_ERROR_INVALID_STATE:
    case EFL_ERROR_INVALID_LABEL:
    case EFL_ERROR_ALIASED_BUFFERS:
        return 1;
    default:
        return 0;
    }
}

static void check_status(efl_status st, const char *call)
{
    if (g_trace)
        fprintf(stderr, "TRACE call %u: %s -> %s\n   %s\n", g_call, call, ST(st), g_calldesc);
    if (!status_allowed(st))
        violation("unexpected status", "%s -> %s (%d)", call, ST(st), (int)st);
}

/* ------------------------------------------------------------------ batches */
#define MAX_BATCH_ROWS (MAXROWS * 4) /* head layouts: up to 24 rows */

typedef struct {
    size_t n, C;
    efl_dtype dt;
    float xf[MAX_BATCH_ROWS * MAXC];       /* the values as stored, decoded, row-major */
    uint8_t xs[MAX_BATCH_ROWS * MAXC * 4]; /* the values in their storage type */
    int32_t y[MAX_BATCH_ROWS];
    int any_invalid, valid_nonfinite, all_finite, any_valid;
} batch_t;

static int label_kind(const fz *z, int32_t label)
{
    int32_t col;
    return efl_ref_label_column(&z->ref, label, &col); /* 1 valid, 0 ignored, -1 invalid */
}

/* n rows of values (logits or a gradient) and labels, from the input and the generator. */
static void gen_batch(fz *z, batch_t *b, size_t n, efl_dtype dt)
{
    const size_t C = z->C, count = n * C;
    b->n = n;
    b->C = C;
    b->dt = dt;
    const uint8_t dens = u8(&z->rd), nonfin = u8(&z->rd), lab = u8(&z->rd);
    float v[MAX_BATCH_ROWS * MAXC];
    for (size_t i = 0; i < count; ++i) {
        const uint32_t r = rnd(z);
        if ((r & 0xffu) < dens) {
            v[i] = FT[(r >> 8) % NFT_FINITE];
            if (((r >> 16) & 0xffu) < (uint32_t)(nonfin >> 2))
                v[i] = FT[NFT_FINITE + (r >> 24) % 3];
        } else {
            v[i] = (float)((int)((r >> 8) & 0xffffu) - 32768) / 4096.0f; /* within +-8 */
        }
    }
    const unsigned overrides = u8(&z->rd) % 4;
    for (unsigned k = 0; k < overrides; ++k) {
        const uint16_t pos = u16(&z->rd);
        const float f = pick_param(&z->rd);
        if (count)
            v[pos % count] = f;
    }
    for (size_t i = 0; i < count; ++i) {
        encode(dt, v[i], b->xs, i);
        b->xf[i] = decode(dt, b->xs, i);
    }
    /* labels: mostly valid (0..C is valid in both conventions), some ignored, some invalid */
    const int32_t Ci = (int32_t)C;
    const int32_t invalid[] = {-2, -101, Ci + 1, Ci + 7, INT32_MAX, INT32_MIN, -1};
    for (size_t i = 0; i < n; ++i) {
        const uint32_t r = rnd(z);
        int32_t y = (int32_t)((r >> 8) % (C + 1));
        if ((r & 0x3fu) < (lab & 0x0fu))
            y = invalid[(r >> 20) % 7];
        else if (((r >> 6) & 0x1fu) < (lab >> 4))
            y = z->cfg.ignore_index;
        if (y == z->cfg.ignore_index && label_kind(z, y) != 0)
            y = 0;
        b->y[i] = y;
    }
    b->any_invalid = b->valid_nonfinite = b->any_valid = 0;
    b->all_finite = 1;
    for (size_t i = 0; i < n; ++i) {
        const int k = label_kind(z, b->y[i]);
        b->any_invalid |= k < 0;
        b->any_valid |= k > 0;
        for (size_t j = 0; j < C; ++j)
            if (!isfinite(b->xf[i * C + j])) {
                b->all_finite = 0;
                if (k > 0)
                    b->valid_nonfinite = 1;
            }
    }
}

static void describe_batch(const batch_t *b, char *out, size_t size)
{
    float lo = INFINITY, hi = -INFINITY;
    int nan = 0;
    for (size_t i = 0; i < b->n * b->C; ++i) {
        if (isnan(b->xf[i]))
            nan = 1;
        else {
            lo = fminf(lo, b->xf[i]);
            hi = fmaxf(hi, b->xf[i]);
        }
    }
    int len =
        snprintf(out, size, "n %zu %s values [%g, %g]%s labels", b->n, dtype_name(b->dt), lo, hi, nan ? " NaN" : "");
    for (size_t i = 0; i < b->n && len > 0 && (size_t)len < size; ++i)
        len += snprintf(out + len, size - (size_t)len, " %d", b->y[i]);
}

/* ------------------------------------------------------------------ the reference */
typedef enum { K_STEP, K_FORWARD, K_ACCUMULATE } kind_t;

typedef struct {
    int usable;      /* the reference could say */
    int comfortable; /* every result (and what it is made of) within 1/16 of its range */
    int far;         /* some result beyond 16 times its range */
    char why[200];   /* the first quantity that is not comfortable */
} refv;

static void quantity(refv *rv, double q, double lim, int result, const char *name)
{
    q = fabs(q);
    if (!(q <= lim / 16.0)) {
        if (rv->comfortable)
            snprintf(rv->why, sizeof rv->why, "%s = %g (range %g)", name, q, lim);
        rv->comfortable = 0;
    }
    if (result && q > lim * 16.0)
        rv->far = 1;
}

/* The largest weight an element's loss can carry: alpha_t w_j at g = 0 (EFL, focal), or
 * EQLv2's largest weight. */
static double cutoff_weight(const fz *z)
{
    const double a = z->ref.alpha;
    if (z->cfg.mode == EFL_MODE_EQLV2)
        return 1.0 + fabs(a);
    const double alpha_t = a >= 0.0 ? fmax(fabs(a), fabs(1.0 - a)) : 1.0;
    const double s = z->cfg.mode == EFL_MODE_EFL ? z->ref.scale : 0.0;
    return alpha_t * (z->ref.gamma + s) / z->ref.gamma;
}

/* The EFL/EQLv2 table factors from a pos_neg value. */
static void factor_quantities(fz *z, refv *rv, double g, const char *when)
{
    char name[64];
    if (z->cfg.mode == EFL_MODE_EFL) {
        const double gj = z->ref.gamma + z->ref.scale * (1.0 - g);
        snprintf(name, sizeof name, "gamma_j (%s)", when);
        quantity(rv, gj, FLT_MAX, 0, name);
        snprintf(name, sizeof name, "w_j (%s)", when);
        quantity(rv, gj / z->ref.gamma, FLT_MAX, 0, name);
    } else if (z->cfg.mode == EFL_MODE_EQLV2) {
        snprintf(name, sizeof name, "gamma (g - mu) (%s)", when);
        quantity(rv, z->ref.gamma * (g - z->ref.mu), FLT_MAX, 0, name);
        snprintf(name, sizeof name, "pos_w (%s)", when);
        quantity(rv, 1.0 + fabs(z->ref.alpha), FLT_MAX, 0, name);
    }
}

/* What the float64 reference says about a call on rows b (row-major) with the state s. */
static refv ref_eval(fz *z, kind_t kind, const batch_t *b, efl_reduction red, float norm, float gscale,
                     const state_t *s, int held)
{
    refv rv;
    memset(&rv, 0, sizeof rv);
    rv.comfortable = 1;
    if (b->any_invalid || b->valid_nonfinite)
        return rv;
    const double lw = z->cfg.loss_weight;
    if (kind == K_ACCUMULATE) {
        if (!(isfinite(gscale) && gscale > 0.0f && isfinite(1.0f / gscale)))
            return rv;
    } else if (red == EFL_REDUCTION_MEAN && !(isfinite(norm) && norm > 0.0f && isfinite((float)lw / norm))) {
        return rv;
    }
    rv.usable = 1;
    const size_t C = z->C, n = b->n;
    static double grad[MAX_BATCH_ROWS * MAXC], elems[MAX_BATCH_ROWS * MAXC], G[MAX_BATCH_ROWS * MAXC];
    double P[MAXC], N[MAXC], g[MAXC];
    for (size_t j = 0; j < C; ++j)
        g[j] = z->has_state ? s->v[2][j] : 1.0;
    if (kind == K_ACCUMULATE) {
        double usum = 0.0;
        for (size_t i = 0; i < n * C; ++i) {
            G[i] = b->xf[i];
            if (label_kind(z, b->y[i / C]) > 0)
                usum += fabs(G[i]);
        }
        quantity(&rv, usum, FLT_MAX, 0, "sum |G| (unscaled)");
        efl_ref_grad_stats(&z->ref, G, b->y, n, gscale, P, N);
    } else {
        efl_ref_result res;
        const double nz = red == EFL_REDUCTION_MEAN ? (double)norm : 1.0;
        /* l and dl themselves first (loss_weight 1, sum): what the results are made of */
        efl_ref_params unit = z->ref;
        unit.loss_weight = 1.0;
        efl_ref_forward_backward_mode(&unit, g, b->xf, b->y, n, 1.0, EFL_REF_SUM, grad, elems, NULL, NULL, &res);
        const double scale = red == EFL_REDUCTION_MEAN ? (double)((float)lw / norm) : lw;
        const double amp = fmax(1.0, fmax(fabs(lw), fabs(scale)));
        /* the kernels flush q^gamma below e^-37 (efl_common.h, efl_exp_nonpos): an absolute error
         * up to 1e-15 of an element's weight times the scale, which a huge loss_weight or scale
         * can carry past a type's range; no verdict of "far beyond range" is due below it */
        const double cutoff = 1e-15 * cutoff_weight(z) * amp;
        const int can_be_far = cutoff <= dtype_max(b->dt) / 16.0;
        double lsum = 0.0, dsum = 0.0;
        for (size_t i = 0; i < n * C; ++i) {
            lsum += fabs(elems[i]);
            dsum += fabs(grad[i]);
            if (!isfinite(grad[i]) || !isfinite(elems[i]))
                rv.usable = 0;
        }
        quantity(&rv, lsum * amp, FLT_MAX, 0, "sum |l| (unscaled)");
        if (kind == K_STEP)
            quantity(&rv, dsum * amp, FLT_MAX, 0, "sum |dl| (unscaled)");
        efl_ref_forward_backward_mode(&z->ref, g, b->xf, b->y, n, nz, (efl_ref_reduction)red, grad, elems, P, N, &res);
        for (size_t i = 0; i < n * C; ++i) {
            quantity(&rv, elems[i], dtype_max(b->dt), can_be_far && red == EFL_REDUCTION_NONE, "element loss");
            if (kind == K_STEP)
                quantity(&rv, grad[i], dtype_max(b->dt), can_be_far, "gradient");
        }
        if (red != EFL_REDUCTION_NONE)
            quantity(&rv, res.loss, FLT_MAX, cutoff * (double)(n * C) <= FLT_MAX / 16.0, "loss");
        for (size_t j = 0; j < C; ++j)
            factor_quantities(z, &rv, g[j], "before");
        if (!isfinite(res.loss))
            rv.usable = 0;
        for (size_t i = 0; i < n * C && rv.usable; ++i)
            if (!isfinite(grad[i]) || !isfinite(elems[i]))
                rv.usable = 0;
        if (kind == K_FORWARD)
            return rv;
    }
    if (!z->has_state)
        return rv;
    for (size_t j = 0; j < C; ++j) {
        quantity(&rv, P[j], FLT_MAX, 0, "statistic P");
        quantity(&rv, N[j], FLT_MAX, 0, "statistic N");
        if (held)
            continue; /* data parallel: the update waits for the apply */
        const double pos = s->v[0][j] + P[j], neg = s->v[1][j] + N[j];
        quantity(&rv, pos, z->acc_lim, 1, "new pos_grad");
        quantity(&rv, neg, z->acc_lim, 1, "new neg_grad");
        double gn = pos / (neg + 1e-10);
        if (z->cfg.mode == EFL_MODE_EFL)
            gn = gn > 1.0 ? 1.0 : gn;
        else
            quantity(&rv, gn, z->acc_lim, 1, "new pos_neg");
        factor_quantities(z, &rv, gn, "after");
        if (!isfinite(P[j]) || !isfinite(N[j]))
            rv.usable = 0;
    }
    return rv;
}

/* The checks every host/device call shares once its status is known. */
typedef struct {
    kind_t kind;
    const batch_t *b;
    efl_reduction red;
    float norm;   /* host normalizer (MEAN) */
    int norm_dev; /* the normalizer came from a buffer: norm holds its value */
    float gscale; /* accumulate */
    int aliased;
    const char *call;
    int held; /* COMPUTE / COLLECT: no update of its own */
} call_info;

static void check_refusal_reason(fz *z, const call_info *ci, efl_status st)
{
    const batch_t *b = ci->b;
    if (st == EFL_ERROR_NONFINITE && b->all_finite)
        violation("finite input refused as NONFINITE", "%s -> NONFINITE with every value finite in %s", ci->call,
                  dtype_name(b->dt));
    if (st == EFL_ERROR_INVALID_LABEL && !b->any_invalid)
        violation("INVALID_LABEL without an invalid label", "%s -> INVALID_LABEL", ci->call);
    if (st == EFL_ERROR_ALIASED_BUFFERS && !ci->aliased)
        violation("ALIASED_BUFFERS without aliasing", "%s -> ALIASED_BUFFERS", ci->call);
    if (st == EFL_ERROR_INVALID_NORMALIZER) {
        const int used = ci->kind != K_ACCUMULATE && ci->red == EFL_REDUCTION_MEAN;
        const float lw = z->cfg.loss_weight;
        const int good = isfinite(ci->norm) && ci->norm > 0.0f && isfinite(lw / ci->norm);
        if (!used || good)
            violation("INVALID_NORMALIZER with a good or unused normalizer",
                      "%s -> INVALID_NORMALIZER, reduction %s normalizer %g loss_weight %g", ci->call,
                      red_name(ci->red), ci->norm, lw);
    }
    if (st == EFL_ERROR_INVALID_PARAMETER) {
        const int good =
            ci->kind != K_ACCUMULATE || (isfinite(ci->gscale) && ci->gscale > 0.0f && isfinite(1.0f / ci->gscale));
        if (good)
            violation("INVALID_PARAMETER with good parameters", "%s -> INVALID_PARAMETER (grad_scale %g)", ci->call,
                      ci->gscale);
    }
    if (st == EFL_OK) {
        if (ci->aliased && b->n > 0)
            violation("aliased outputs accepted", "%s -> OK with aliased arrays", ci->call);
        if (b->valid_nonfinite)
            violation("non-finite input accepted", "%s -> OK with Inf/NaN in a valid row", ci->call);
        if (b->any_invalid)
            violation("invalid label accepted", "%s -> OK with an invalid label", ci->call);
        if (ci->kind == K_ACCUMULATE && !(isfinite(ci->gscale) && ci->gscale > 0.0f && isfinite(1.0f / ci->gscale)))
            violation("bad grad_scale accepted", "%s -> OK with grad_scale %g", ci->call, ci->gscale);
        if (ci->kind != K_ACCUMULATE && ci->red == EFL_REDUCTION_MEAN && !ci->norm_dev &&
            !(isfinite(ci->norm) && ci->norm > 0.0f))
            violation("bad normalizer accepted", "%s -> OK with normalizer %g", ci->call, ci->norm);
        if (ci->kind != K_ACCUMULATE && ci->red == EFL_REDUCTION_MEAN && ci->norm_dev &&
            !(isfinite(ci->norm) && ci->norm > 0.0f))
            violation("bad normalizer buffer accepted", "%s -> OK with normalizer buffer %g", ci->call, ci->norm);
    }
}

/* OVERFLOW or acceptance against the reference. */
static void check_against_ref(fz *z, const call_info *ci, efl_status st, const state_t *before)
{
    if (st != EFL_OK && st != EFL_ERROR_OVERFLOW)
        return;
    const refv rv = ref_eval(z, ci->kind, ci->b, ci->red, ci->norm, ci->gscale, before, ci->held);
    if (!rv.usable)
        return;
    char desc[400];
    if (st == EFL_ERROR_OVERFLOW && rv.comfortable) {
        describe_batch(ci->b, desc, sizeof desc);
        violation("spurious OVERFLOW", "%s -> OVERFLOW, but the reference puts every result well within range; %s",
                  ci->call, desc);
    }
    if (st == EFL_OK && rv.far) {
        describe_batch(ci->b, desc, sizeof desc);
        violation("OK for a result far beyond range", "%s -> OK, but the reference has %s; %s", ci->call, rv.why, desc);
    }
}

/* Buffers of a host call: outputs prefilled with the sentinel. */
typedef struct {
    uint8_t grad[MAX_BATCH_ROWS * MAXC * 4];
    uint8_t elems[MAX_BATCH_ROWS * MAXC * 4];
    float loss;
} host_out;

static void out_init(host_out *o) { memset(o, SENTINEL, sizeof *o); }

static void check_outputs_ok(const call_info *ci, const host_out *o, int has_grad, int has_elems, int has_loss)
{
    const batch_t *b = ci->b;
    const size_t count = b->n * b->C;
    long i;
    if (has_loss && !isfinite(o->loss))
        violation("loss not finite", "%s -> OK, loss %g", ci->call, o->loss);
    if (has_grad && (i = first_nonfinite(b->dt, o->grad, count)) >= 0)
        violation("gradient not finite in its type", "%s -> OK, grad[%ld] = %g (%s)", ci->call, i,
                  decode(b->dt, o->grad, (size_t)i), dtype_name(b->dt));
    if (has_elems && (i = first_nonfinite(b->dt, o->elems, count)) >= 0)
        violation("element loss not finite in its type", "%s -> OK, loss[%ld] = %g (%s)", ci->call, i,
                  decode(b->dt, o->elems, (size_t)i), dtype_name(b->dt));
}

static void check_outputs_untouched(const call_info *ci, const host_out *o, efl_status st)
{
    if (!untouched(o, sizeof *o))
        violation("refused call wrote its outputs", "%s -> %s, but an output array changed", ci->call, ST(st));
}

/* ------------------------------------------------------------------ host step / forward / accumulate */
static efl_status host_call(fz *z, efl_loss *l, kind_t kind, const batch_t *b, efl_reduction red, float norm,
                            float gscale, host_out *o, int null_grad, int alias)
{
    const void *x = b->xs;
    void *grad = null_grad ? NULL : o->grad;
    float *lo = red == EFL_REDUCTION_NONE ? (float *)(void *)o->elems : &o->loss;
    if (alias == 1)
        grad = (void *)(uintptr_t)x; /* the gradient over the logits */
    if (alias == 2)
        lo = (float *)(void *)o->grad; /* the element losses over the gradient */
    (void)z;
    switch (kind) {
    case K_STEP:
        return efl_loss_step_host_typed(l, b->dt, x, b->y, b->n, norm, red, lo, grad);
    case K_FORWARD:
        return efl_loss_forward_host_typed(l, b->dt, x, b->y, b->n, norm, red, lo);
    default:
        return efl_loss_accumulate_host(l, b->dt, x, b->y, b->n, gscale);
    }
}

static efl_loss *get_twin(fz *z)
{
    if (!z->twin) {
        const efl_status st = efl_loss_create(g_ctx, &z->cfg, &z->twin);
        if (st != EFL_OK)
            violation("twin creation failed", "a second loss with an accepted config -> %s", ST(st));
    }
    return z->twin;
}

/* The loss's state into the twin, through a checkpoint. */
static int sync_twin(fz *z)
{
    efl_loss *t = get_twin(z);
    if (!z->has_state)
        return 1;
    static uint8_t buf[1 << 16];
    size_t size = sizeof buf;
    efl_status st = efl_loss_export_checkpoint(z->loss, g_q, buf, &size);
    if (st != EFL_OK)
        return 0;
    st = efl_loss_import_checkpoint(t, g_q, buf, size);
    if (st != EFL_OK)
        violation("checkpoint does not import back", "export OK (%zu bytes), import into a twin -> %s", size, ST(st));
    return 1;
}

static void op_host(fz *z, kind_t kind)
{
    const uint8_t m = u8(&z->rd);
    const efl_dtype dt = (efl_dtype)((m & 3) % 3);
    const efl_reduction red = kind == K_ACCUMULATE ? EFL_REDUCTION_SUM : (efl_reduction)(((m >> 2) & 3) % 3);
    const int null_grad = kind == K_STEP && (m & 0x10), twin = (m & 0x20) != 0;
    const uint8_t am = u8(&z->rd);
    int alias = (am & 0xf0) == 0xf0 ? 1 + (am & 1) : 0;
    const float norm = (m & 0x40) ? pick_param(&z->rd) : 1.0f;
    const float gscale = kind == K_ACCUMULATE ? ((m & 0x80) ? pick_param(&z->rd) : 1.0f) : 1.0f;
    static batch_t b;
    gen_batch(z, &b, u8(&z->rd) % (MAXROWS + 1), dt);
    if (!(kind == K_STEP && !null_grad && (alias == 1 || red == EFL_REDUCTION_NONE)))
        alias = 0; /* nothing to alias */
    const int aliased = alias != 0;
    const char *names[] = {"efl_loss_step_host_typed", "efl_loss_forward_host_typed", "efl_loss_accumulate_host"};
    char bd[300];
    describe_batch(&b, bd, sizeof bd);
    snprintf(g_calldesc, sizeof g_calldesc, "%s %s reduction %s normalizer %g grad_scale %g%s%s; %s", names[kind],
             dtype_name(dt), red_name(red), norm, gscale, null_grad ? " grad NULL" : "",
             aliased ? (alias == 1 ? " grad==logits" : " loss_out==grad") : "", bd);
    const call_info ci = {kind, &b, red, norm, 0, gscale, aliased, names[kind], 0};

    /* the twin first (same state), so that the loss's own call is the one checked below */
    static host_out ot;
    efl_status st_twin = EFL_OK;
    int twin_ran = 0;
    if (twin && !aliased && sync_twin(z)) {
        out_init(&ot);
        st_twin = host_call(z, z->twin, kind, &b, red, norm, gscale, &ot, null_grad, 0);
        twin_ran = 1;
    }

    const state_t before = get_state(z, "before");
    const uint32_t skip0 = skipped(z, z->loss);
    static uint8_t xcopy[sizeof b.xs];
    memcpy(xcopy, b.xs, sizeof xcopy);
    static host_out o;
    out_init(&o);
    const efl_status st = host_call(z, z->loss, kind, &b, red, norm, gscale, &o, null_grad, alias);
    if (kind == K_ACCUMULATE && !z->has_state) {
        if (st != EFL_ERROR_INVALID_MODE)
            violation("focal accumulate not INVALID_MODE", "%s -> %s", ci.call, ST(st));
        return;
    }
    check_status(st, ci.call);
    const state_t after = get_state(z, "after");
    const uint32_t skip1 = skipped(z, z->loss);
    if (!aliased && memcmp(xcopy, b.xs, sizeof xcopy) != 0)
        violation("input array changed", "%s -> %s changed its input", ci.call, ST(st));
    check_refusal_reason(z, &ci, st);
    if (st != EFL_OK) {
        if (aliased && alias == 1 && memcmp(xcopy, b.xs, sizeof xcopy) != 0)
            violation("refused call wrote its outputs", "%s -> %s, but the aliased logits changed", ci.call, ST(st));
        check_outputs_untouched(&ci, &o, st);
        if (!same_state(z, &before, &after))
            violation("refused call changed the state", "%s -> %s", ci.call, ST(st));
        if (skip1 != skip0 && !(skip1 == skip0 + 1 && kind != K_FORWARD))
            violation("skip counter", "%s -> %s: skipped %u -> %u", ci.call, ST(st), skip0, skip1);
    } else {
        if (skip1 != skip0)
            violation("skip counter", "%s -> OK: skipped %u -> %u", ci.call, skip0, skip1);
        check_outputs_ok(&ci, &o, kind == K_STEP && !null_grad, kind != K_ACCUMULATE && red == EFL_REDUCTION_NONE,
                         kind != K_ACCUMULATE && red != EFL_REDUCTION_NONE);
        check_state(z, &after, ci.call);
        if (kind != K_FORWARD) {
            check_recomputed(z, &after, ci.call);
            if (b.n == 0) /* the same values (an update may turn a written -0 into +0) */
                for (int k = 0; k < 2; ++k)
                    for (size_t j = 0; j < z->C; ++j)
                        if (before.v[k][j] != after.v[k][j])
                            violation("empty batch changed the totals", "%s -> OK, n = 0, %s[%zu] %.17g -> %.17g",
                                      ci.call, state_name[k], j, before.v[k][j], after.v[k][j]);
        }
    }
    if (kind == K_FORWARD && !same_state(z, &before, &after))
        violation("forward changed the state", "%s -> %s", ci.call, ST(st));
    check_against_ref(z, &ci, st, &before);

    if (twin_ran) {
        if (st_twin != st)
            violation("not deterministic", "%s -> %s, on a twin with the same state -> %s", ci.call, ST(st),
                      ST(st_twin));
        if (memcmp(&o, &ot, sizeof o) != 0)
            violation("not deterministic", "%s -> %s: outputs differ from a twin's with the same state", ci.call,
                      ST(st));
        if (z->has_state) {
            state_t ts;
            read_state(z, z->twin, &ts);
            if (!same_state(z, &after, &ts))
                violation("not deterministic", "%s -> %s: state differs from a twin's", ci.call, ST(st));
        }
    }
}

/* ------------------------------------------------------------------ data parallel, one rank */
static void op_stats(fz *z)
{
    const uint8_t m = u8(&z->rd);
    const efl_op op = (m & 1) ? EFL_OP_COLLECT : EFL_OP_COMPUTE;
    const efl_dtype dt = (efl_dtype)(((m >> 1) & 3) % 3);
    const efl_reduction red = op == EFL_OP_COLLECT ? EFL_REDUCTION_SUM : (efl_reduction)(((m >> 3) & 3) % 3);
    const float norm = (m & 0x20) ? pick_param(&z->rd) : 1.0f;
    const float gscale = (m & 0x40) ? pick_param(&z->rd) : 1.0f;
    const int mutate = (m & 0x80) != 0;
    static batch_t b;
    gen_batch(z, &b, u8(&z->rd) % (MAXROWS + 1), dt);
    char bd[300];
    describe_batch(&b, bd, sizeof bd);
    snprintf(g_calldesc, sizeof g_calldesc, "efl_loss_run_host(%s) %s reduction %s normalizer %g grad_scale %g; %s",
             op == EFL_OP_COMPUTE ? "COMPUTE" : "COLLECT", dtype_name(dt), red_name(red), norm, gscale, bd);
    const kind_t kind = op == EFL_OP_COMPUTE ? K_STEP : K_ACCUMULATE;
    const call_info ci = {kind, &b, red, norm, 0, gscale, 0, "efl_loss_run_host(COMPUTE/COLLECT)", 1};

    static host_out o;
    out_init(&o);
    efl_host_batch hb;
    efl_host_batch_init(&hb);
    hb.dtype = dt;
    hb.rows = b.n;
    hb.input[0] = b.xs;
    hb.grad[0] = op == EFL_OP_COMPUTE ? o.grad : NULL;
    hb.loss_elems[0] = red == EFL_REDUCTION_NONE ? o.elems : NULL;
    hb.labels = b.y;
    hb.reduction = red;
    hb.normalizer = norm;
    hb.loss = &o.loss;
    hb.grad_scale = gscale;
    const state_t before = get_state(z, "before");
    const efl_status st = efl_loss_run_host(z->loss, op, &hb);
    if (!z->has_state) {
        if (st != EFL_ERROR_INVALID_MODE)
            violation("focal statistics not INVALID_MODE", "%s -> %s", ci.call, ST(st));
        return;
    }
    check_status(st, ci.call);
    check_refusal_reason(z, &ci, st);
    const state_t mid = get_state(z, "after compute");
    if (!same_state(z, &before, &mid))
        violation("compute/collect changed the state", "%s -> %s", ci.call, ST(st));
    if (st != EFL_OK)
        check_outputs_untouched(&ci, &o, st);
    else
        check_outputs_ok(&ci, &o, op == EFL_OP_COMPUTE, op == EFL_OP_COMPUTE && red == EFL_REDUCTION_NONE,
                         op == EFL_OP_COMPUTE && red != EFL_REDUCTION_NONE);
    check_against_ref(z, &ci, st, &before);

    const size_t C = z->C, len = 2 * C + 1;
    double stats[2 * MAXC + 1];
    memset(stats, SENTINEL, sizeof stats);
    efl_status st2 = efl_loss_read_statistics_host(z->loss, stats);
    if (st2 != EFL_OK)
        violation("read_statistics failed", "efl_loss_read_statistics_host after %s -> %s", ST(st), ST(st2));
    for (size_t i = 0; i < len; ++i)
        if (!isfinite(stats[i]) || stats[i] < 0.0)
            violation("statistics not finite and >= 0", "after %s -> %s: stats[%zu] = %g (refused flag %g)", ci.call,
                      ST(st), i, stats[i], stats[2 * C]);
    if (stats[2 * C] != 0.0 && stats[2 * C] != 1.0)
        violation("statistics flag not 0 or 1", "stats[2C] = %g", stats[2 * C]);
    if (st == EFL_OK && stats[2 * C] != 0.0)
        violation("accepted compute flagged as refused", "%s -> OK but stats[2C] = %g", ci.call, stats[2 * C]);
    int invalid = 0;
    if (mutate) {
        const unsigned k = 1 + u8(&z->rd) % 2;
        for (unsigned i = 0; i < k; ++i) {
            const size_t at = u8(&z->rd) % len;
            stats[at] = pick_state(&z->rd);
        }
    }
    for (size_t i = 0; i < len; ++i)
        invalid |= !(isfinite(stats[i]) && stats[i] >= 0.0);
    snprintf(g_calldesc, sizeof g_calldesc, "efl_loss_apply_statistics_host after %s -> %s%s", ci.call, ST(st),
             mutate ? " (statistics mutated)" : "");
    const uint32_t skip0 = skipped(z, z->loss);
    const efl_status st3 = efl_loss_apply_statistics_host(z->loss, stats);
    if (st3 != EFL_ERROR_REFUSED_BY_PEER) /* a flag we set ourselves reads as a peer's */
        check_status(st3, "efl_loss_apply_statistics_host");
    const state_t after = get_state(z, "after apply");
    if (st3 == EFL_OK) {
        if (invalid)
            violation("invalid statistics applied", "apply -> OK with negative or non-finite statistics");
        if (stats[2 * C] > 0.0)
            violation("refused step applied", "apply -> OK with stats[2C] = %g", stats[2 * C]);
        check_state(z, &after, "apply");
        check_recomputed(z, &after, "apply");
        for (size_t j = 0; j < C; ++j)
            for (int k = 0; k < 2; ++k) {
                const double want = before.v[k][j] + stats[k * C + j], got = after.v[k][j];
                if (isfinite(want) && !(fabs(got - want) <= 1e-6 * want + (z->acc_lim == FLT_MAX ? FLT_MIN : 1e-300)))
                    violation("apply did not add the statistics", "%s[%zu]: %.17g + %.17g -> %.17g", state_name[k], j,
                              before.v[k][j], stats[k * C + j], got);
            }
        if (skipped(z, z->loss) != skip0)
            violation("skip counter", "apply -> OK changed the skip counter");
    } else {
        if (!same_state(z, &before, &after))
            violation("refused call changed the state", "apply -> %s", ST(st3));
        if (!invalid && stats[2 * C] == 0.0 && st3 == EFL_ERROR_INVALID_STATE)
            violation("valid statistics refused as INVALID_STATE", "apply -> INVALID_STATE");
        if (!invalid && stats[2 * C] > 0.0) {
            /* a rank refused: every rank skips the update and counts it */
            const uint32_t skip1 = skipped(z, z->loss);
            if (skip1 != skip0 + 1)
                violation("skip counter", "apply of a refused step's statistics -> %s: skipped %u -> %u", ST(st3),
                          skip0, skip1);
        }
        if (st3 == EFL_ERROR_OVERFLOW && stats[2 * C] == 0.0) {
            int comfortable = 1;
            for (size_t j = 0; j < C; ++j)
                for (int k = 0; k < 2; ++k)
                    comfortable &=
                        stats[k * C + j] <= FLT_MAX / 16 && before.v[k][j] + stats[k * C + j] <= z->acc_lim / 16;
            refv rv = {1, 1, 0, ""};
            for (size_t j = 0; j < C; ++j) {
                const double gn = (before.v[0][j] + stats[j]) / (before.v[1][j] + stats[C + j] + 1e-10);
                factor_quantities(z, &rv, z->cfg.mode == EFL_MODE_EFL ? fmin(gn, 1.0) : gn, "after");
                if (z->cfg.mode == EFL_MODE_EQLV2 && !(gn <= z->acc_lim / 16))
                    comfortable = 0;
            }
            if (comfortable && rv.comfortable)
                violation("spurious OVERFLOW", "apply -> OVERFLOW with statistics and totals well within range");
        }
    }
}

/* ------------------------------------------------------------------ state writes, resets, checkpoints */
static void op_write_state(fz *z)
{
    const uint8_t m = u8(&z->rd);
    double v[3][MAXC];
    const size_t C = z->C;
    for (int k = 0; k < 3; ++k)
        for (size_t j = 0; j < C; ++j)
            v[k][j] = (double)(rnd(z) % 1000) / 997.0; /* in [0, 1] */
    const unsigned picks = m & 3;
    for (unsigned i = 0; i < picks; ++i) {
        const uint8_t at = u8(&z->rd);
        v[at % 3][(at / 3) % C] = pick_state(&z->rd);
    }
    if (m & 0x10) /* one value for a whole array */
        for (size_t j = 0; j < C; ++j)
            v[((m >> 5) & 3) % 3][j] = v[((m >> 5) & 3) % 3][0];
    snprintf(g_calldesc, sizeof g_calldesc, "efl_loss_write_state_host pos[0] %g neg[0] %g pos_neg[0] %g", v[0][0],
             v[1][0], v[2][0]);
    const state_t before = get_state(z, "before");
    const efl_status st = efl_loss_write_state_host(z->loss, v[0], v[1], v[2]);
    if (!z->has_state) {
        if (st != EFL_ERROR_INVALID_MODE)
            violation("focal write_state not INVALID_MODE", "-> %s", ST(st));
        return;
    }
    check_status(st, "efl_loss_write_state_host");
    int valid = 1, modest = 1;
    for (int k = 0; k < 3; ++k)
        for (size_t j = 0; j < C; ++j) {
            const double x = v[k][j];
            valid &= isfinite(x) && x >= 0.0 && x <= z->acc_lim && !(k == 2 && z->cfg.mode == EFL_MODE_EFL && x > 1.0);
            modest &= x <= 1e30;
        }
    if (st == EFL_OK) {
        if (!valid)
            violation("invalid state written", "write_state -> OK with out-of-range values");
        const state_t s = get_state(z, "after write");
        check_state(z, &s, "write_state");
        for (int k = 0; k < 3; ++k)
            for (size_t j = 0; j < C; ++j) {
                const double want = v[k][j], got = s.v[k][j];
                /* float pairs: ~48 bits, and no finer than a float below FLT_MIN (the device may
                 * flush those) */
                const double tol = z->acc_lim == FLT_MAX ? 1e-13 * want + FLT_MIN : 0.0;
                if (!(fabs(got - want) <= tol))
                    violation("state read back differs from what was written", "%s[%zu]: wrote %.17g read %.17g",
                              state_name[k], j, want, got);
            }
    } else {
        const state_t after = get_state(z, "after refused write");
        if (!same_state(z, &before, &after))
            violation("refused call changed the state", "write_state -> %s", ST(st));
    }
    if (st != EFL_OK && valid && modest && st == EFL_ERROR_INVALID_STATE) {
        refv rv = {1, 1, 0, ""};
        for (size_t j = 0; j < C; ++j)
            factor_quantities(z, &rv, v[2][j], "written");
        if (rv.comfortable)
            violation("valid state refused", "write_state -> INVALID_STATE with finite values >= 0 in range");
    }
}

static void op_reset(fz *z)
{
    snprintf(g_calldesc, sizeof g_calldesc, "efl_loss_reset_state_host");
    const efl_status st = efl_loss_reset_state_host(z->loss);
    if (!z->has_state) {
        if (st != EFL_ERROR_INVALID_MODE)
            violation("focal reset not INVALID_MODE", "-> %s", ST(st));
        return;
    }
    if (st != EFL_OK)
        violation("reset refused", "efl_loss_reset_state_host -> %s", ST(st));
    const state_t s = get_state(z, "after reset");
    const double g0 = z->cfg.mode == EFL_MODE_EQLV2 ? 100.0 : 1.0;
    for (size_t j = 0; j < z->C; ++j)
        if (s.v[0][j] != 0.0 || s.v[1][j] != 0.0 || s.v[2][j] != g0)
            violation("reset state", "class %zu: %g %g %g", j, s.v[0][j], s.v[1][j], s.v[2][j]);
}

static void op_checkpoint(fz *z)
{
    const uint8_t m = u8(&z->rd);
    snprintf(g_calldesc, sizeof g_calldesc, "efl_loss_export_checkpoint, import into a fresh loss%s",
             (m & 1) ? ", then a mutated copy into the loss" : "");
    size_t size = 0;
    efl_status st = efl_loss_export_checkpoint(z->loss, g_q, NULL, &size);
    if (!z->has_state) {
        if (st != EFL_ERROR_INVALID_MODE)
            violation("focal checkpoint not INVALID_MODE", "-> %s", ST(st));
        return;
    }
    if (st != EFL_OK && st != EFL_ERROR_OVERFLOW && st != EFL_ERROR_INVALID_STATE)
        violation("export sizing", "efl_loss_export_checkpoint(NULL) -> %s", ST(st));
    if (st != EFL_OK)
        return;
    static uint8_t buf[1 << 16];
    if (size > sizeof buf)
        violation("checkpoint size", "%zu bytes for C = %zu", size, z->C);
    const state_t s = get_state(z, "before export");
    size_t got = sizeof buf;
    st = efl_loss_export_checkpoint(z->loss, g_q, buf, &got);
    if (st != EFL_OK || got != size)
        violation("export", "efl_loss_export_checkpoint -> %s, %zu bytes (sized %zu)", ST(st), got, size);
    efl_loss *fresh = NULL;
    st = efl_loss_create(g_ctx, &z->cfg, &fresh);
    if (st != EFL_OK)
        violation("fresh loss", "efl_loss_create with an accepted config -> %s", ST(st));
    st = efl_loss_import_checkpoint(fresh, g_q, buf, size);
    if (st != EFL_OK)
        violation("checkpoint does not import back", "export OK, import into a fresh loss -> %s", ST(st));
    state_t t;
    read_state(z, fresh, &t);
    efl_loss_destroy(fresh);
    if (!same_state(z, &s, &t))
        violation("checkpoint round trip not bitwise", "state read back after import differs");
    st = efl_loss_import_checkpoint(z->loss, g_q, buf, size);
    if (st != EFL_OK)
        violation("checkpoint does not import back", "export OK, import into the same loss -> %s", ST(st));
    const state_t s2 = get_state(z, "after self import");
    if (!same_state(z, &s, &s2))
        violation("checkpoint round trip not bitwise", "state after importing its own checkpoint differs");
    if (m & 1) {
        const uint16_t at = u16(&z->rd);
        buf[at % size] ^= (uint8_t)(u8(&z->rd) | 1u);
        st = efl_loss_import_checkpoint(z->loss, g_q, buf, size);
        const state_t s3 = get_state(z, "after mutated import");
        if (st == EFL_OK) {
            check_state(z, &s3, "mutated import");
        } else {
            if (st != EFL_ERROR_CHECKPOINT_CORRUPT && st != EFL_ERROR_CHECKPOINT_VERSION &&
                st != EFL_ERROR_CHECKPOINT_MISMATCH && st != EFL_ERROR_INVALID_STATE && st != EFL_ERROR_OVERFLOW)
                violation("unexpected status", "mutated import -> %s", ST(st));
            if (!same_state(z, &s, &s3))
                violation("refused call changed the state", "mutated import -> %s", ST(st));
        }
    }
}

/* ------------------------------------------------------------------ head layouts */
static void op_head(fz *z)
{
    const uint8_t m = u8(&z->rd), shape = u8(&z->rd);
    const efl_op ops[3] = {EFL_OP_STEP, EFL_OP_FORWARD, EFL_OP_ACCUMULATE};
    const kind_t kind = (kind_t)((m & 3) % 3);
    const efl_op op = ops[kind];
    const efl_dtype dt = (efl_dtype)(((m >> 2) & 3) % 3);
    const efl_reduction red = kind == K_ACCUMULATE ? EFL_REDUCTION_SUM : (efl_reduction)(((m >> 4) & 3) % 3);
    const efl_layout layout = (m & 0x40) ? EFL_LAYOUT_CLASS_MAJOR : EFL_LAYOUT_ANCHOR_MAJOR;
    const float norm = (m & 0x80) ? pick_param(&z->rd) : 1.0f;
    const float gscale = kind == K_ACCUMULATE && (shape & 0x80) ? pick_param(&z->rd) : 1.0f;
    const uint32_t B = 1 + (shape & 1), A = 1 + ((shape >> 1) & 1), L = 1 + ((shape >> 2) & 1);
    uint32_t H[2], W[2];
    H[0] = 1 + ((shape >> 3) & 1);
    W[0] = 1 + ((shape >> 4) & 1);
    H[1] = 1;
    W[1] = 1 + ((shape >> 5) & 1);
    size_t R = 0, loff[2];
    for (uint32_t l = 0; l < L; ++l) {
        loff[l] = R;
        R += (size_t)H[l] * W[l] * A;
    }
    const size_t rows = B * R, C = z->C;
    static batch_t b;
    gen_batch(z, &b, rows, dt); /* row-major values and labels in row order */
    static uint8_t in[2][MAX_BATCH_ROWS * MAXC * 4], gr[2][MAX_BATCH_ROWS * MAXC * 4], el[2][MAX_BATCH_ROWS * MAXC * 4];
    static uint8_t incopy[2][MAX_BATCH_ROWS * MAXC * 4];
    memset(gr, SENTINEL, sizeof gr);
    memset(el, SENTINEL, sizeof el);
    float loss;
    memset(&loss, SENTINEL, sizeof loss);
    size_t elems[2];
    for (uint32_t l = 0; l < L; ++l) {
        const size_t hw = (size_t)H[l] * W[l];
        elems[l] = B * A * C * hw;
        for (size_t bi = 0; bi < B; ++bi)
            for (size_t a = 0; a < A; ++a)
                for (size_t c = 0; c < C; ++c)
                    for (size_t p = 0; p < hw; ++p) {
                        const size_t row = bi * R + loff[l] + p * A + a;
                        const size_t ch = layout == EFL_LAYOUT_ANCHOR_MAJOR ? a * C + c : c * A + a;
                        const size_t idx = (bi * A * C + ch) * hw + p;
                        memcpy(in[l] + idx * esize(dt), b.xs + (row * C + c) * esize(dt), esize(dt));
                    }
    }
    memcpy(incopy, in, sizeof in);
    efl_host_batch hb;
    efl_host_batch_init(&hb);
    hb.layout = layout;
    hb.dtype = dt;
    hb.images = B;
    hb.anchors = A;
    hb.levels = L;
    for (uint32_t l = 0; l < L; ++l) {
        hb.height[l] = H[l];
        hb.width[l] = W[l];
        hb.input[l] = in[l];
        hb.grad[l] = kind == K_STEP ? gr[l] : NULL;
        hb.loss_elems[l] = red == EFL_REDUCTION_NONE && kind != K_ACCUMULATE ? el[l] : NULL;
    }
    hb.labels = b.y;
    hb.reduction = red;
    hb.normalizer = norm;
    hb.loss = &loss;
    hb.grad_scale = gscale;
    char bd[300];
    describe_batch(&b, bd, sizeof bd);
    snprintf(
        g_calldesc, sizeof g_calldesc,
        "efl_loss_run_host(%s) %s B %u A %u levels %u (%ux%u, %ux%u) %s reduction %s normalizer %g grad_scale %g; %s",
        kind == K_STEP      ? "STEP"
        : kind == K_FORWARD ? "FORWARD"
                            : "ACCUMULATE",
        layout == EFL_LAYOUT_ANCHOR_MAJOR ? "anchor-major" : "class-major", B, A, L, H[0], W[0], H[1], W[1],
        dtype_name(dt), red_name(red), norm, gscale, bd);
    const call_info ci = {kind, &b, red, norm, 0, gscale, 0, "efl_loss_run_host(head layout)", 0};
    const state_t before = get_state(z, "before");
    const uint32_t skip0 = skipped(z, z->loss);
    const efl_status st = efl_loss_run_host(z->loss, op, &hb);
    if (kind == K_ACCUMULATE && !z->has_state) {
        if (st != EFL_ERROR_INVALID_MODE)
            violation("focal accumulate not INVALID_MODE", "%s -> %s", ci.call, ST(st));
        return;
    }
    check_status(st, ci.call);
    check_refusal_reason(z, &ci, st);
    const state_t after = get_state(z, "after");
    const uint32_t skip1 = skipped(z, z->loss);
    if (memcmp(incopy, in, sizeof in) != 0)
        violation("input array changed", "%s -> %s", ci.call, ST(st));
    uint32_t lvl_ok = 1;
    if (st != EFL_OK) {
        if (!untouched(gr, sizeof gr) || !untouched(el, sizeof el) || !untouched(&loss, sizeof loss))
            violation("refused call wrote its outputs", "%s -> %s", ci.call, ST(st));
        if (!same_state(z, &before, &after))
            violation("refused call changed the state", "%s -> %s", ci.call, ST(st));
        if (skip1 != skip0 && !(skip1 == skip0 + 1 && kind != K_FORWARD))
            violation("skip counter", "%s -> %s: skipped %u -> %u", ci.call, ST(st), skip0, skip1);
    } else {
        if (kind != K_ACCUMULATE && red != EFL_REDUCTION_NONE && !isfinite(loss))
            violation("loss not finite", "%s -> OK, loss %g", ci.call, loss);
        for (uint32_t l = 0; l < L && lvl_ok; ++l) {
            long i;
            if (kind == K_STEP && (i = first_nonfinite(dt, gr[l], elems[l])) >= 0)
                violation("gradient not finite in its type", "%s -> OK, level %u grad[%ld] = %g", ci.call, l, i,
                          decode(dt, gr[l], (size_t)i));
            if (hb.loss_elems[l] && (i = first_nonfinite(dt, el[l], elems[l])) >= 0)
                violation("element loss not finite in its type", "%s -> OK, level %u loss[%ld] = %g", ci.call, l, i,
                          decode(dt, el[l], (size_t)i));
        }
        check_state(z, &after, ci.call);
        if (kind == K_FORWARD && !same_state(z, &before, &after))
            violation("forward changed the state", "%s -> OK", ci.call);
        if (kind != K_FORWARD)
            check_recomputed(z, &after, ci.call);
        if (skip1 != skip0)
            violation("skip counter", "%s -> OK: skipped %u -> %u", ci.call, skip0, skip1);
    }
    check_against_ref(z, &ci, st, &before);
}

/* ------------------------------------------------------------------ device enqueues */
static cl_mem make_buf(size_t bytes, const void *init)
{
    cl_int err = CL_SUCCESS;
    cl_mem m = clCreateBuffer(efl_context_cl_context(g_ctx), CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR,
                              bytes ? bytes : 4, (void *)init, &err);
    if (err != CL_SUCCESS)
        violation("clCreateBuffer", "err %d", err);
    return m;
}

static void read_buf(cl_mem m, void *out, size_t bytes)
{
    if (clEnqueueReadBuffer(g_q, m, CL_TRUE, 0, bytes, out, 0, NULL, NULL) != CL_SUCCESS)
        violation("clEnqueueReadBuffer", "read back failed");
}

static void op_device(fz *z)
{
    const uint8_t m = u8(&z->rd), m2 = u8(&z->rd);
    const efl_op ops[3] = {EFL_OP_STEP, EFL_OP_FORWARD, EFL_OP_ACCUMULATE};
    const kind_t kind = (kind_t)((m & 3) % 3);
    const efl_op op = ops[kind];
    const efl_dtype dt = (efl_dtype)(((m >> 2) & 3) % 3);
    const efl_reduction red = kind == K_ACCUMULATE ? EFL_REDUCTION_SUM : (efl_reduction)(((m >> 4) & 3) % 3);
    const int norm_buf = kind != K_ACCUMULATE && red == EFL_REDUCTION_MEAN && (m & 0x40);
    const float norm = (m & 0x80) ? pick_param(&z->rd) : 1.0f;
    const float gscale = kind == K_ACCUMULATE && (m2 & 0x80) ? pick_param(&z->rd) : 1.0f;
    const int alias_kind = (m2 & 0x70) == 0x70 ? 1 + (m2 & 3) % 3 : 0;
    static batch_t b;
    gen_batch(z, &b, u8(&z->rd) % (MAXROWS + 1), dt);
    const size_t n = b.n, C = z->C, bytes = n * C * esize(dt);
    static uint8_t sent[MAX_BATCH_ROWS * MAXC * 4];
    memset(sent, SENTINEL, sizeof sent);
    cl_mem in = NULL, lab = NULL, gr = NULL, el = NULL, lossb = NULL, nb = NULL;
    if (n > 0) {
        in = make_buf(bytes, b.xs);
        lab = make_buf(n * sizeof(int32_t), b.y);
        if (kind == K_STEP)
            gr = make_buf(bytes, sent);
        if (kind != K_ACCUMULATE && red == EFL_REDUCTION_NONE)
            el = make_buf(bytes, sent);
    }
    lossb = make_buf(4, sent);
    if (norm_buf)
        nb = make_buf(4, &norm);
    efl_batch bt;
    efl_batch_init(&bt);
    bt.dtype = dt;
    bt.rows = n;
    bt.input[0] = in;
    bt.grad[0] = gr;
    bt.loss_elems[0] = el;
    bt.labels = lab;
    bt.reduction = red;
    bt.normalizer = norm_buf ? 1.0f : norm;
    bt.normalizer_buffer = nb;
    bt.loss = lossb;
    bt.grad_scale = gscale;
    int aliased = 0;
    if (n > 0 && alias_kind == 1 && gr) {
        bt.grad[0] = in;
        aliased = 1;
    } else if (n > 0 && alias_kind == 2 && el && gr) {
        bt.loss_elems[0] = gr;
        aliased = 1;
    } else if (n > 0 && alias_kind == 3 && el) {
        bt.loss_elems[0] = in;
        aliased = 1;
    }
    char bd[300];
    describe_batch(&b, bd, sizeof bd);
    snprintf(g_calldesc, sizeof g_calldesc, "efl_enqueue_batch(%s) %s reduction %s normalizer %s%g grad_scale %g%s; %s",
             kind == K_STEP      ? "STEP"
             : kind == K_FORWARD ? "FORWARD"
                                 : "ACCUMULATE",
             dtype_name(dt), red_name(red), norm_buf ? "buffer " : "", norm, gscale,
             aliased ? " (aliased buffers)" : "", bd);
    call_info ci = {kind, &b, red, norm, norm_buf, gscale, aliased, "efl_enqueue_batch", 0};
    const state_t before = get_state(z, "before");
    const uint32_t skip0 = skipped(z, z->loss);
    const efl_status st = efl_enqueue_batch(z->loss, g_q, op, &bt, 0, NULL, NULL);
    static uint8_t got_in[MAX_BATCH_ROWS * MAXC * 4], got_g[MAX_BATCH_ROWS * MAXC * 4],
        got_e[MAX_BATCH_ROWS * MAXC * 4];
    float got_loss;
    if (kind == K_ACCUMULATE && !z->has_state) {
        if (st != EFL_ERROR_INVALID_MODE)
            violation("focal accumulate not INVALID_MODE", "%s -> %s", ci.call, ST(st));
        goto done;
    }
    check_status(st, ci.call);
    if (st != EFL_OK) {
        /* refused on the host: nothing enqueued, nothing changed */
        check_refusal_reason(z, &ci, st);
        clFinish(g_q);
        read_buf(lossb, &got_loss, 4);
        if (gr)
            read_buf(gr, got_g, bytes);
        if (el)
            read_buf(el, got_e, bytes);
        if (in)
            read_buf(in, got_in, bytes);
        if (!untouched(&got_loss, 4) || (gr && !untouched(got_g, bytes)) || (el && !untouched(got_e, bytes)) ||
            (in && memcmp(got_in, b.xs, bytes) != 0))
            violation("refused call wrote its outputs", "%s -> %s (refused on the host)", ci.call, ST(st));
        const state_t after = get_state(z, "after");
        if (!same_state(z, &before, &after))
            violation("refused call changed the state", "%s -> %s (refused on the host)", ci.call, ST(st));
        if (skipped(z, z->loss) != skip0)
            violation("skip counter", "%s -> %s (refused on the host) counted a skip", ci.call, ST(st));
        goto done;
    }
    {
        const efl_status v = efl_loss_query_status(z->loss, g_q);
        char call[64];
        snprintf(call, sizeof call, "efl_loss_query_status after efl_enqueue_batch");
        ci.call = call;
        check_status(v, call);
        if (v == EFL_ERROR_ALIASED_BUFFERS)
            violation("unexpected status", "ALIASED_BUFFERS as a device verdict");
        check_refusal_reason(z, &ci, v);
        const state_t after = get_state(z, "after");
        const uint32_t skip1 = skipped(z, z->loss);
        read_buf(lossb, &got_loss, 4);
        if (in)
            read_buf(in, got_in, bytes);
        if (in && !aliased && memcmp(got_in, b.xs, bytes) != 0)
            violation("input buffer changed", "%s -> %s", ci.call, ST(v));
        if (v == EFL_OK) {
            if (kind != K_ACCUMULATE && red != EFL_REDUCTION_NONE && !isfinite(got_loss))
                violation("loss not finite", "%s -> OK, loss %g", ci.call, got_loss);
            long i;
            if (gr) {
                read_buf(bt.grad[0], got_g, bytes);
                if ((i = first_nonfinite(dt, got_g, n * C)) >= 0)
                    violation("gradient not finite in its type", "%s -> OK, grad[%ld] = %g", ci.call, i,
                              decode(dt, got_g, (size_t)i));
            }
            if (el) {
                read_buf(bt.loss_elems[0], got_e, bytes);
                if ((i = first_nonfinite(dt, got_e, n * C)) >= 0)
                    violation("element loss not finite in its type", "%s -> OK, loss[%ld] = %g", ci.call, i,
                              decode(dt, got_e, (size_t)i));
            }
            check_state(z, &after, ci.call);
            if (kind == K_FORWARD && !same_state(z, &before, &after))
                violation("forward changed the state", "%s -> OK", ci.call);
            if (kind != K_FORWARD)
                check_recomputed(z, &after, ci.call);
            if (skip1 != skip0)
                violation("skip counter", "%s -> OK: skipped %u -> %u", ci.call, skip0, skip1);
        } else {
            if (!same_state(z, &before, &after))
                violation("refused call changed the state", "%s -> %s (device verdict)", ci.call, ST(v));
            if (red != EFL_REDUCTION_NONE && kind != K_ACCUMULATE && !untouched(&got_loss, 4))
                violation("refused call wrote the loss", "%s -> %s (device verdict): loss buffer now %g", ci.call,
                          ST(v), got_loss);
            const uint32_t want = skip0 + (kind == K_FORWARD ? 0u : 1u);
            if (skip1 != want)
                violation("skip counter", "%s -> %s (device verdict): skipped %u -> %u, want %u", ci.call, ST(v), skip0,
                          skip1, want);
        }
        check_against_ref(z, &ci, v, &before);
    }
done:
    clFinish(g_q);
    cl_mem all[] = {in, lab, gr, el, lossb, nb};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; ++i)
        if (all[i])
            clReleaseMemObject(all[i]);
}

/* ------------------------------------------------------------------ the entry point */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz z;
    memset(&z, 0, sizeof z);
    z.rd.p = data;
    z.rd.n = size;
    const uint8_t c0 = u8(&z.rd), c1 = u8(&z.rd), c2 = u8(&z.rd);
    z.C = 1 + c0 % MAXC;
    const efl_mode mode = (efl_mode)((c1 & 3) % 3);
    efl_loss_config_init_mode(&z.cfg, (uint32_t)z.C, mode);
    z.cfg.labels = (efl_label_convention)((c1 >> 2) & 1);
    z.cfg.accumulate = (efl_accumulate)((c1 >> 3) & 1);
    if (c2 & 0x01)
        z.cfg.gamma = pick_param(&z.rd);
    if (c2 & 0x02)
        z.cfg.alpha = pick_param(&z.rd);
    if (c2 & 0x04)
        z.cfg.scale_factor = pick_param(&z.rd);
    if (c2 & 0x08)
        z.cfg.loss_weight = pick_param(&z.rd);
    if (c2 & 0x10)
        z.cfg.mu = pick_param(&z.rd);
    const int32_t ignores[8] = {
        -1, -1, -100, INT32_MIN, (int32_t)z.C + 1, INT32_MAX, -1, (int32_t)(c1 >> 4) % ((int32_t)z.C + 1)};
    z.cfg.ignore_index = ignores[c2 >> 5]; /* the last one collides with a label: refused */
    z.rng = u32(&z.rd) | 1u;
    snprintf(g_cfgdesc, sizeof g_cfgdesc,
             "C %zu mode %s labels %s accumulate %s gamma %g alpha %g s %g loss_weight %g mu %g ignore_index %d", z.C,
             mode == EFL_MODE_EFL     ? "efl"
             : mode == EFL_MODE_FOCAL ? "focal"
                                      : "eqlv2",
             z.cfg.labels ? "zero-based" : "reference", z.cfg.accumulate ? "float-pairs" : "auto", z.cfg.gamma,
             z.cfg.alpha, z.cfg.scale_factor, z.cfg.loss_weight, z.cfg.mu, z.cfg.ignore_index);
    g_call = 0;
    snprintf(g_calldesc, sizeof g_calldesc, "efl_loss_create");
    const efl_status st = efl_loss_create(g_ctx, &z.cfg, &z.loss);
    if (g_trace)
        fprintf(stderr, "TRACE %s -> %s\n", g_cfgdesc, ST(st));
    if (st != EFL_OK) {
        if (st != EFL_ERROR_INVALID_NUM_CLASSES && st != EFL_ERROR_INVALID_GAMMA && st != EFL_ERROR_INVALID_PARAMETER &&
            st != EFL_ERROR_INVALID_IGNORE_INDEX && st != EFL_ERROR_INVALID_LABEL_CONVENTION &&
            st != EFL_ERROR_INVALID_MODE)
            violation("unexpected status", "efl_loss_create -> %s", ST(st));
        return 0;
    }
    z.has_state = mode != EFL_MODE_FOCAL;
    z.acc_lim = (g_has_fp64 && z.cfg.accumulate == EFL_ACCUMULATE_AUTO) ? DBL_MAX : FLT_MAX;
    z.ref.num_classes = (uint32_t)z.C;
    z.ref.gamma = z.cfg.gamma;
    z.ref.alpha = z.cfg.alpha;
    z.ref.scale = z.cfg.scale_factor;
    z.ref.loss_weight = z.cfg.loss_weight;
    z.ref.ignore_index = z.cfg.ignore_index;
    z.ref.zero_based = z.cfg.labels == EFL_LABELS_ZERO_BASED;
    z.ref.mode = (efl_ref_mode)mode;
    z.ref.mu = z.cfg.mu;

    const state_t s0 = get_state(&z, "fresh loss");
    check_state(&z, &s0, "efl_loss_create");
    const unsigned calls = 1 + u8(&z.rd) % MAXCALLS;
    for (g_call = 1; g_call <= calls; ++g_call) {
        switch (u8(&z.rd) % 10) {
        case 0:
        case 9:
            op_host(&z, K_STEP);
            break;
        case 1:
            op_host(&z, K_FORWARD);
            break;
        case 2:
            op_host(&z, K_ACCUMULATE);
            break;
        case 3:
            op_stats(&z);
            break;
        case 4:
            op_write_state(&z);
            break;
        case 5:
            op_reset(&z);
            break;
        case 6:
            op_checkpoint(&z);
            break;
        case 7:
            op_head(&z);
            break;
        default:
            op_device(&z);
            break;
        }
    }
    efl_loss_destroy(z.twin);
    efl_loss_destroy(z.loss);
    return 0;
}
