#define _POSIX_C_SOURCE 200809L /* fork, waitpid */
#include "test_util.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* ------------------------------------------------------------ checks */
static const char *g_case = "(no case)";
static int g_case_failures;
static int g_total_failures;

void tu_begin(const char *name)
{
    g_case = name;
    g_case_failures = 0;
}

void tu_end(void)
{
    printf("%s %s\n", g_case_failures ? "FAIL" : "PASS", g_case);
    fflush(stdout);
    g_case = "(no case)";
    g_case_failures = 0;
}

int tu_exit_code(void)
{
    printf("%s: %d check(s) failed\n", g_total_failures ? "FAILED" : "OK", g_total_failures);
    return g_total_failures ? 1 : 0;
}

void tu_failf(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    printf("  [%s] %s:%d: ", g_case, file, line);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
    g_case_failures++;
    g_total_failures++;
}

int tu_check(int ok, const char *file, int line, const char *expr)
{
    if (!ok)
        tu_failf(file, line, "CHECK(%s) failed", expr);
    return ok;
}

int tu_check_status(efl_status got, efl_status want, const char *file, int line, const char *expr)
{
    if (got == want)
        return 1;
    tu_failf(file, line, "%s returned %d (%s), expected %d (%s)", expr, (int)got, efl_status_string(got),
             (int)want, efl_status_string(want));
    return 0;
}

void tu_skip(const char *why)
{
    printf("SKIP: %s\n", why);
    fflush(stdout);
    exit(TU_SKIP_CODE);
}

void tu_fatal(const char *file, int line, const char *what)
{
    printf("FATAL [%s] %s:%d: %s\n", g_case, file, line, what);
    fflush(stdout);
    exit(1);
}

/* ------------------------------------------------------- environment */
void tu_env_init(tu_env *e)
{
    memset(e, 0, sizeof *e);
    efl_status st = efl_context_create_default(&e->ctx);
    if (st == EFL_ERROR_NO_DEVICE)
        tu_skip("no OpenCL device");
    /* the device matrix names implementations this machine may not have */
    if (st == EFL_ERROR_DEVICE_NOT_FOUND && getenv("EFL_DEVICE")) {
        char list[4096];
        efl_devices_summary(list, sizeof list);
        printf("EFL_DEVICE=%s matches none of these devices:\n%s", getenv("EFL_DEVICE"), list);
        tu_skip("no device matches EFL_DEVICE");
    }
    if (st != EFL_OK) {
        printf("efl_context_create_default: %s (EFL_DEVICE=%s)\n", efl_status_string(st),
               getenv("EFL_DEVICE") ? getenv("EFL_DEVICE") : "(unset)");
        exit(1);
    }
    e->cl = efl_context_cl_context(e->ctx);
    e->dev = efl_context_cl_device(e->ctx);
    if (!e->cl || !e->dev)
        tu_fatal(__FILE__, __LINE__, "efl_context_cl_context/device returned NULL");
    cl_int err = CL_SUCCESS;
    e->queue = clCreateCommandQueue(e->cl, e->dev, 0, &err);
    if (err != CL_SUCCESS)
        tu_fatal(__FILE__, __LINE__, "clCreateCommandQueue");
    REQUIRE_CL(clGetDeviceInfo(e->dev, CL_DEVICE_NAME, sizeof e->device_name - 1, e->device_name, NULL));
    cl_device_fp_config fp64 = 0;
    if (clGetDeviceInfo(e->dev, CL_DEVICE_DOUBLE_FP_CONFIG, sizeof fp64, &fp64, NULL) == CL_SUCCESS)
        e->has_fp64 = fp64 != 0;
    printf("device: %s (fp64: %s)\n", e->device_name, e->has_fp64 ? "yes" : "no");
}

void tu_env_free(tu_env *e)
{
    if (e->queue)
        clReleaseCommandQueue(e->queue);
    efl_context_destroy(e->ctx);
    memset(e, 0, sizeof *e);
}

cl_mem tu_buf(tu_env *e, size_t bytes, const void *init)
{
    size_t sz = bytes < 4 ? 4 : bytes;
    cl_int err = CL_SUCCESS;
    cl_mem b = clCreateBuffer(e->cl, CL_MEM_READ_WRITE, sz, NULL, &err);
    if (err != CL_SUCCESS || !b)
        tu_fatal(__FILE__, __LINE__, "clCreateBuffer");
    tu_fill(e, b, sz, TU_SENTINEL);
    if (init && bytes)
        tu_write(e, b, bytes, init);
    return b;
}

void tu_write(tu_env *e, cl_mem b, size_t bytes, const void *src)
{
    if (bytes)
        REQUIRE_CL(clEnqueueWriteBuffer(e->queue, b, CL_TRUE, 0, bytes, src, 0, NULL, NULL));
}

void tu_read(tu_env *e, cl_mem b, size_t bytes, void *dst)
{
    if (bytes)
        REQUIRE_CL(clEnqueueReadBuffer(e->queue, b, CL_TRUE, 0, bytes, dst, 0, NULL, NULL));
}

void tu_fill(tu_env *e, cl_mem b, size_t bytes, unsigned char byte)
{
    /* A host write rather than clEnqueueFillBuffer: simplest thing that works everywhere. */
    unsigned char *tmp = malloc(bytes ? bytes : 1);
    if (!tmp)
        tu_fatal(__FILE__, __LINE__, "malloc");
    memset(tmp, byte, bytes);
    tu_write(e, b, bytes, tmp);
    free(tmp);
}

void tu_release(cl_mem b)
{
    if (b)
        clReleaseMemObject(b);
}

/* A whole file, NUL-terminated (free it); fatal on failure. */
static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        tu_fatal(__FILE__, __LINE__, path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *s = malloc((size_t)n + 1);
    if (!s || fread(s, 1, (size_t)n, f) != (size_t)n)
        tu_fatal(__FILE__, __LINE__, "read");
    s[n] = '\0';
    fclose(f);
    return s;
}

cl_kernel tu_probe_kernel(tu_env *e, const char *src, const char *name, const char *opts, cl_program *prog)
{
    char *labels = read_text(EFL_SOURCE_DIR "/kernels/efl_labels.h");
    char *protocol = read_text(EFL_SOURCE_DIR "/kernels/efl_protocol.h");
    char *common = read_text(EFL_SOURCE_DIR "/kernels/efl_common.h");
    const char *srcs[4] = {labels, protocol, common, src}; /* the library's order */
    cl_int err = CL_SUCCESS;
    *prog = clCreateProgramWithSource(e->cl, 4, srcs, NULL, &err);
    free(labels), free(protocol), free(common);
    if (err != CL_SUCCESS)
        tu_fatal(__FILE__, __LINE__, "clCreateProgramWithSource");
    err = clBuildProgram(*prog, 1, &e->dev, opts, NULL, NULL);
    if (err != CL_SUCCESS) {
        char log[16384] = "";
        clGetProgramBuildInfo(*prog, e->dev, CL_PROGRAM_BUILD_LOG, sizeof log - 1, log, NULL);
        printf("%s\n", log);
        tu_fatal(__FILE__, __LINE__, "clBuildProgram");
    }
    cl_kernel k = clCreateKernel(*prog, name, &err);
    if (err != CL_SUCCESS)
        tu_fatal(__FILE__, __LINE__, "clCreateKernel");
    return k;
}

void *tu_xmalloc(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    if (!p)
        tu_fatal(__FILE__, __LINE__, "malloc");
    return p;
}

efl_loss *tu_loss(tu_env *e, const efl_loss_config *cfg)
{
    efl_loss *loss = NULL;
    efl_status st = efl_loss_create(e->ctx, cfg, &loss);
    if (st != EFL_OK || !loss) {
        size_t len = efl_context_log(e->ctx, NULL, 0);
        char *log = malloc(len + 1);
        if (log) {
            efl_context_log(e->ctx, log, len + 1);
            printf("context log:\n%s\n", log);
            free(log);
        }
        tu_failf(__FILE__, __LINE__, "efl_loss_create -> %s", efl_status_string(st));
        tu_fatal(__FILE__, __LINE__, "efl_loss_create");
    }
    return loss;
}

efl_ref_params tu_ref_params(const efl_loss_config *cfg)
{
    efl_ref_params p;
    p.num_classes = cfg->num_classes;
    p.gamma = cfg->gamma;
    p.alpha = cfg->alpha;
    p.scale = cfg->scale_factor;
    p.loss_weight = cfg->loss_weight;
    p.ignore_index = cfg->ignore_index;
    p.zero_based = cfg->labels == EFL_LABELS_ZERO_BASED;
    p.mode = (efl_ref_mode)cfg->mode;
    p.mu = cfg->mu;
    return p;
}

void tu_read_state(tu_env *e, efl_loss *loss, efl_ref_state *out)
{
    (void)e;
    /* Poison first so that a read that writes nothing cannot look like a match. */
    for (uint32_t j = 0; j < out->num_classes; ++j)
        out->pos[j] = out->neg[j] = out->g[j] = NAN;
    REQUIRE_OK(efl_loss_read_state(loss, e->queue, out->pos, out->neg, out->g));
}

void tu_write_state(tu_env *e, efl_loss *loss, const efl_ref_state *in)
{
    REQUIRE_OK(efl_loss_write_state(loss, e->queue, in->pos, in->neg, in->g));
}

void tu_write_state_canonical(tu_env *e, efl_loss *loss, efl_ref_state *in)
{
    efl_ref_state back;
    if (!efl_ref_state_init(&back, in->num_classes))
        tu_fatal(__FILE__, __LINE__, "malloc");
    tu_write_state(e, loss, in);
    tu_read_state(e, loss, &back);
    if (e->has_fp64 && !tu_state_equal_bits(&back, in))
        tu_failf(__FILE__, __LINE__, "write_state/read_state is not exact on an fp64 device");
    tu_cmp_f64("state round trip pos_grad", back.pos, in->pos, in->num_classes, 1e-14, 0.0);
    tu_cmp_f64("state round trip neg_grad", back.neg, in->neg, in->num_classes, 1e-14, 0.0);
    tu_cmp_f64("state round trip pos_neg", back.g, in->g, in->num_classes, 1e-14, 0.0);
    efl_ref_state_copy(in, &back);
    efl_ref_state_free(&back);
}

int tu_state_equal_bits(const efl_ref_state *a, const efl_ref_state *b)
{
    size_t bytes = a->num_classes * sizeof(double);
    return a->num_classes == b->num_classes && memcmp(a->pos, b->pos, bytes) == 0 &&
           memcmp(a->neg, b->neg, bytes) == 0 && memcmp(a->g, b->g, bytes) == 0;
}

/* ------------------------------------------------------------ batches */
efl_batch tu_rows_batch(size_t n, cl_mem x, cl_mem y, cl_mem grad, cl_mem loss, float normalizer)
{
    efl_batch b;
    efl_batch_init(&b);
    b.layout = EFL_LAYOUT_ROWS;
    b.rows = n;
    b.input[0] = x;
    b.labels = y;
    b.grad[0] = grad;
    b.loss = loss;
    b.normalizer = normalizer;
    return b;
}

void tu_check_refused(tu_env *e, efl_loss *loss, const tu_batch_case *cases, size_t count, const efl_ref_state *state,
                      const cl_mem *outs, const size_t *sizes, size_t nouts)
{
    size_t most = 1;
    for (size_t k = 0; k < nouts; ++k)
        most = sizes[k] > most ? sizes[k] : most;
    unsigned char *raw = tu_xmalloc(most);
    efl_ref_state now;
    if (!efl_ref_state_init(&now, state->num_classes))
        tu_fatal(__FILE__, __LINE__, "malloc");
    for (size_t c = 0; c < count; ++c) {
        for (size_t k = 0; k < nouts; ++k)
            tu_fill(e, outs[k], sizes[k], TU_SENTINEL);
        efl_status st = efl_enqueue_batch(loss, e->queue, cases[c].op, &cases[c].b, 0, NULL, NULL);
        CHECK_MSG(st == cases[c].want, "%s: %s, expected %s", cases[c].what, efl_status_string(st),
                  efl_status_string(cases[c].want));
        REQUIRE_CL(clFinish(e->queue));
        tu_read_state(e, loss, &now);
        CHECK_MSG(tu_state_equal_bits(state, &now), "%s: the state changed", cases[c].what);
        size_t touched = 0;
        for (size_t k = 0; k < nouts; ++k) {
            tu_read(e, outs[k], sizes[k], raw);
            for (size_t i = 0; i < sizes[k]; ++i)
                touched += raw[i] != TU_SENTINEL;
        }
        CHECK_MSG(touched == 0, "%s: %zu output byte(s) written", cases[c].what, touched);
    }
    efl_ref_state_free(&now);
    free(raw);
}

/* ---------------------------------------------------------------- RNG */
uint64_t tu_next(tu_rng *r)
{
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

double tu_uniform(tu_rng *r) { return (double)(tu_next(r) >> 11) * 0x1.0p-53; }

double tu_normal(tu_rng *r)
{
    double u1 = tu_uniform(r), u2 = tu_uniform(r);
    return sqrt(-2.0 * log(1.0 - u1)) * cos(6.283185307179586 * u2);
}

uint32_t tu_below(tu_rng *r, uint32_t n) { return n ? (uint32_t)(tu_uniform(r) * n) : 0; }

void tu_make_logits(tu_rng *r, float *x, size_t count)
{
    for (size_t k = 0; k < count; ++k) {
        double v = -4.0 + 2.5 * tu_normal(r);
        if (tu_uniform(r) < 0.002)
            v = (tu_uniform(r) < 0.5 ? -1.0 : 1.0) * (15.0 + 45.0 * tu_uniform(r));
        x[k] = (float)v;
    }
}

tu_label_opts tu_default_label_opts(void)
{
    tu_label_opts o = {0.06, 0.02, 1.1, 0, -1};
    return o;
}

int32_t tu_background_label(uint32_t C, int zero_based) { return zero_based ? (int32_t)C : 0; }
int32_t tu_class_label(uint32_t column, int zero_based) { return zero_based ? (int32_t)column : (int32_t)column + 1; }

size_t tu_make_labels(tu_rng *r, int32_t *y, size_t n, uint32_t C, const tu_label_opts *o)
{
    /* Zipf CDF over columns: column 0 is the head class, the last ones are the tail. */
    double *cdf = malloc((C ? C : 1) * sizeof *cdf);
    if (!cdf)
        tu_fatal(__FILE__, __LINE__, "malloc");
    double acc = 0.0;
    for (uint32_t j = 0; j < C; ++j) {
        acc += 1.0 / pow((double)j + 1.0, o->zipf_s);
        cdf[j] = acc;
    }
    size_t positives = 0;
    for (size_t i = 0; i < n; ++i) {
        double u = tu_uniform(r);
        if (u < o->ignore_fraction) {
            y[i] = o->ignore_index;
        } else if (u < o->ignore_fraction + o->fg_fraction && C > 0) {
            double v = tu_uniform(r) * acc;
            uint32_t lo = 0, hi = C - 1;
            while (lo < hi) { /* first column with cdf > v */
                uint32_t mid = lo + (hi - lo) / 2;
                if (cdf[mid] > v)
                    hi = mid;
                else
                    lo = mid + 1;
            }
            y[i] = tu_class_label(lo, o->zero_based);
            positives++;
        } else {
            y[i] = tu_background_label(C, o->zero_based);
        }
    }
    free(cdf);
    return positives;
}

/* ------------------------------------------------------- comparisons */
static int cmp_report(const char *what, size_t n, size_t bad, size_t worst, double got, double ref,
                      double tol, int nonfinite)
{
    if (!bad)
        return 1;
    tu_failf(__FILE__, __LINE__,
             "%s: %zu of %zu element(s) out of tolerance%s; worst [%zu]: got %.9g ref %.9g |diff| %.3g tol %.3g",
             what, bad, n, nonfinite ? " (some non-finite)" : "", worst, got, ref, fabs(got - ref), tol);
    return 0;
}

int tu_cmp_f64(const char *what, const double *got, const double *ref, size_t n, double rtol, double atol)
{
    size_t bad = 0, worst = 0;
    double worst_excess = -1.0, wtol = 0.0;
    int nonfinite = 0;
    for (size_t k = 0; k < n; ++k) {
        double tol = rtol * fabs(ref[k]) + atol;
        double d = fabs(got[k] - ref[k]);
        int fin = isfinite(got[k]);
        if (!fin || !(d <= tol)) {
            double excess = fin ? d / (tol > 0 ? tol : 1e-300) : INFINITY;
            nonfinite |= !fin;
            if (excess > worst_excess || bad == 0) {
                worst_excess = excess;
                worst = k;
                wtol = tol;
            }
            bad++;
        }
    }
    return cmp_report(what, n, bad, worst, bad ? got[worst] : 0, bad ? ref[worst] : 0, wtol, nonfinite);
}

int tu_cmp_f32(const char *what, const float *got, const double *ref, size_t n, double rtol, double atol)
{
    double *g = malloc((n ? n : 1) * sizeof *g);
    if (!g)
        tu_fatal(__FILE__, __LINE__, "malloc");
    for (size_t k = 0; k < n; ++k)
        g[k] = got[k];
    int ok = tu_cmp_f64(what, g, ref, n, rtol, atol);
    free(g);
    return ok;
}

double tu_max_abs(const double *v, size_t n)
{
    double m = 0.0;
    for (size_t k = 0; k < n; ++k)
        m = fmax(m, fabs(v[k]));
    return m;
}

size_t tu_count_nonzero(const double *v, size_t n)
{
    size_t c = 0;
    for (size_t k = 0; k < n; ++k)
        c += v[k] != 0.0;
    return c;
}

int tu_all_finite_f32(const float *v, size_t n)
{
    for (size_t k = 0; k < n; ++k)
        if (!isfinite(v[k]))
            return 0;
    return 1;
}

int tu_bits_equal(const char *what, const void *a, const void *b, size_t n, size_t esize)
{
    size_t diff = 0, first = 0;
    for (size_t k = 0; k < n; ++k)
        if (memcmp((const char *)a + k * esize, (const char *)b + k * esize, esize) != 0) {
            if (!diff)
                first = k;
            diff++;
        }
    if (diff && esize == 4) {
        float fa, fb;
        memcpy(&fa, (const char *)a + first * 4, 4);
        memcpy(&fb, (const char *)b + first * 4, 4);
        return CHECK_MSG(0, "%s: %zu of %zu element(s) differ bitwise; first [%zu]: %.9g vs %.9g", what, diff, n, first,
                         fa, fb);
    }
    return CHECK_MSG(diff == 0, "%s: %zu of %zu element(s) differ bitwise; first [%zu]", what, diff, n, first);
}

int tu_cmp_loss(float got, double ref, const char *fmt, ...)
{
    char what[192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return tu_cmp_f32(what, &got, &ref, 1, TU_LOSS_RTOL, 0.0);
}

int tu_cmp_grad(const float *got, const double *ref, size_t n, const char *fmt, ...)
{
    char what[192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return tu_cmp_f32(what, got, ref, n, TU_GRAD_RTOL, TU_GRAD_ATOL_REL * tu_max_abs(ref, n));
}

int tu_cmp_state(const efl_ref_state *got, const efl_ref_state *want, double rtol_few, double rtol, const char *fmt,
                 ...)
{
    char name[160], what[192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    const size_t C = want->num_classes;
    const char *sep = name[0] ? " " : "";
    int ok = 1;
    snprintf(what, sizeof what, "%s%spos_grad", name, sep);
    ok &= tu_cmp_f64(what, got->pos, want->pos, C, rtol_few, 1e-12 * tu_max_abs(want->pos, C));
    snprintf(what, sizeof what, "%s%sneg_grad", name, sep);
    ok &= tu_cmp_f64(what, got->neg, want->neg, C, rtol, 1e-12 * tu_max_abs(want->neg, C));
    snprintf(what, sizeof what, "%s%spos_neg", name, sep);
    ok &= tu_cmp_f64(what, got->g, want->g, C, rtol_few, 1e-12);
    return ok;
}

/* ------------------------------------------------------ step compare */
int tu_step_compare(tu_env *e, efl_loss *loss, const efl_ref_params *rp, efl_ref_state *rs, const float *x,
                    const int32_t *y, size_t n, float normalizer, efl_reduction red, float *dev_grad)
{
    const size_t C = rp->num_classes, nc = n * C;
    int ok = 1;
    cl_mem bx = tu_buf(e, nc * sizeof(float), x);
    cl_mem by = tu_buf(e, n * sizeof(int32_t), y);
    cl_mem bl = tu_buf(e, sizeof(float), NULL);
    cl_mem bg = tu_buf(e, nc * sizeof(float), NULL);
    float *grad = malloc((nc ? nc : 1) * sizeof *grad);
    double *rgrad = malloc((nc ? nc : 1) * sizeof *rgrad);
    efl_ref_state ds;
    if (!grad || !rgrad || !efl_ref_state_init(&ds, (uint32_t)C))
        tu_fatal(__FILE__, __LINE__, "malloc");

    ok &= CHECK_STATUS(efl_enqueue_step(loss, e->queue, bx, by, n, normalizer, red, bl, bg, 0, NULL, NULL), EFL_OK);
    ok &= CHECK_STATUS(efl_loss_query_status(loss, e->queue), EFL_OK);
    float dloss;
    tu_read(e, bl, sizeof dloss, &dloss);
    tu_read(e, bg, nc * sizeof(float), grad);
    tu_read_state(e, loss, &ds);

    efl_ref_result res;
    size_t bad = efl_ref_step(rp, rs, x, y, n, normalizer, (efl_ref_reduction)red, rgrad, &res);
    if (bad)
        tu_fatal(__FILE__, __LINE__, "test generated an invalid label");

    ok &= tu_cmp_loss(dloss, res.loss, "loss");
    ok &= tu_cmp_grad(grad, rgrad, nc, "grad");
    ok &= tu_cmp_state(&ds, rs, TU_STATE_RTOL_FEW, TU_STATE_RTOL_FEW, "%s", "");
    if (dev_grad)
        memcpy(dev_grad, grad, nc * sizeof *grad);

    efl_ref_state_free(&ds);
    free(grad);
    free(rgrad);
    tu_release(bx);
    tu_release(by);
    tu_release(bl);
    tu_release(bg);
    return ok;
}

/* ------------------------------------------------------- 16-bit storage */
uint16_t tu_f32_to_f16(float f)
{
    uint32_t b;
    memcpy(&b, &f, 4);
    const uint16_t sign = (uint16_t)((b >> 16) & 0x8000u);
    if (isnan(f))
        return (uint16_t)(sign | 0x7E00u);
    const double a = fabs((double)f);
    if (a == 0.0)
        return sign;
    if (a >= 65520.0) /* rounds to infinity */
        return (uint16_t)(sign | 0x7C00u);
    /* scale to an integer count of the smallest spacing at this magnitude, round half even */
    int e;
    frexp(a, &e); /* a = m 2^e, m in [0.5, 1) */
    int exp16 = e - 1;         /* a = 1.x * 2^exp16 */
    if (exp16 < -14)
        exp16 = -14;           /* subnormal: spacing 2^-24 */
    const double spacing = ldexp(1.0, exp16 - 10);
    double q = a / spacing;    /* exact: a float has 24 bits */
    double r = nearbyint(q);   /* default rounding mode: to nearest even */
    uint32_t mant = (uint32_t)r;
    uint32_t bits;
    if (exp16 == -14 && mant < 1024u)
        bits = mant; /* subnormal (or zero) */
    else {
        if (mant >= 2048u) { /* rounding carried into the next binade */
            mant >>= 1;
            ++exp16;
        }
        bits = ((uint32_t)(exp16 + 15) << 10) | (mant & 0x3FFu);
    }
    return (uint16_t)(sign | bits);
}

float tu_f16_to_f32(uint16_t h)
{
    const int sign = h >> 15, exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
    double v;
    if (exp == 0)
        v = ldexp((double)mant, -24);
    else if (exp == 31)
        v = mant ? NAN : INFINITY;
    else
        v = ldexp(1.0 + mant / 1024.0, exp - 15);
    return (float)(sign ? -v : v);
}

uint16_t tu_f32_to_bf16(float f)
{
    uint32_t b;
    memcpy(&b, &f, 4);
    if (isnan(f))
        return (uint16_t)((b >> 16) | 0x40u);
    const uint32_t low = b & 0xFFFFu, high = b >> 16;
    /* round half to even on the dropped 16 bits */
    const uint32_t up = low > 0x8000u || (low == 0x8000u && (high & 1u));
    return (uint16_t)(high + up);
}

float tu_bf16_to_f32(uint16_t v)
{
    const uint32_t b = (uint32_t)v << 16;
    float f;
    memcpy(&f, &b, 4);
    return f;
}

double tu_f16_ulp(double v)
{
    int e;
    frexp(fabs(v), &e);
    return ldexp(1.0, (e - 1 < -14 ? -14 : e - 1) - 10);
}

double tu_bf16_ulp(double v)
{
    int e;
    frexp(fabs(v), &e);
    return ldexp(1.0, (e - 1 < -126 ? -126 : e - 1) - 7);
}

/* ------------------------------------------------------- small mode */
static int small_mode(void)
{
    const char *v = getenv("EFL_TEST_SMALL");
    return v && *v && strcmp(v, "0") != 0;
}

size_t tu_rows(size_t n)
{
    if (!small_mode())
        return n;
    const size_t floor_rows = n < 200 ? n : 200; /* enough rows for positives of a rare class */
    return n / 10 > floor_rows ? n / 10 : floor_rows;
}
int tu_steps(int steps) { return small_mode() && steps > 3 ? 3 : steps; }
int tu_small(void) { return small_mode(); }

long tu_dead_pid(void)
{
    const pid_t child = fork();
    if (child < 0)
        tu_fatal(__FILE__, __LINE__, "fork");
    if (child == 0)
        _exit(0);
    int status = 0;
    if (waitpid(child, &status, 0) != child)
        tu_fatal(__FILE__, __LINE__, "waitpid");
    return (long)child;
}
