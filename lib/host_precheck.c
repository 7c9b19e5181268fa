/* Whether a host step can be refused, decided before it starts: the zero-copy path writes the
 * gradient straight into the caller's array while the step runs, and efl.h promises that a
 * refused host call leaves that array as it was. So the zero-copy path is taken only where this
 * proves that the device cannot refuse the step; anything else goes through the staging buffers,
 * which reach the caller only after the verdict.
 *
 * The proof bounds every result the device checks (kernels/efl_apply.cl, efl_step*.cl) from
 * above, from the configuration, the scale, the largest logit and the largest total. Per element
 * (docs/semantics.md "Backward"), with aw = alpha_t w_j, q = 1 - p_t in [0, 1], p_t log(1/p_t) <= 1/e:
 *   |grad| <= scale aw (1 + gamma_j / e),   loss <= aw (|x| + log 2)            (EFL, focal)
 *   |grad| <= scale wt,                     loss <= wt (|x| + log 2)            (EQLv2)
 * and gamma_j <= gamma_b + s, w_j <= (gamma_b + s) / gamma_b because g stays in [0, 1]; EQLv2's
 * weights are at most 1 + |alpha|. Every bound keeps a factor of 4 from the limit, far more
 * than the float rounding of the kernels' arithmetic. The scan of the logits is the cost. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#ifndef _WIN32
#include <pthread.h>
#include <unistd.h>
#endif

/* The largest magnitude among count values of the storage type, as a float; Inf if any is not
 * finite. Integer maxima of the magnitude bits: they order like the values, and vectorise. */
static float largest_magnitude(efl_dtype dtype, const void *data, size_t count)
{
    if (dtype == EFL_DTYPE_FLOAT32) {
        const uint32_t *u = data;
        uint32_t m = 0;
        for (size_t i = 0; i < count; ++i) {
            const uint32_t a = u[i] & 0x7FFFFFFFu;
            m = a > m ? a : m;
        }
        if (m >= 0x7F800000u)
            return INFINITY;
        float f;
        memcpy(&f, &m, sizeof f);
        return f;
    }
    const uint16_t *h = data;
    uint16_t m = 0;
    for (size_t i = 0; i < count; ++i) {
        const uint16_t a = (uint16_t)(h[i] & 0x7FFFu);
        m = a > m ? a : m;
    }
    if (dtype == EFL_DTYPE_BFLOAT16) {
        if (m >= 0x7F80u)
            return INFINITY;
        const uint32_t w = (uint32_t)m << 16;
        float f;
        memcpy(&f, &w, sizeof f);
        return f;
    }
    if (m >= 0x7C00u) /* IEEE half: Inf or NaN */
        return INFINITY;
    return (float)ldexp((m >> 10) ? (double)((m & 0x3FFu) | 0x400u) : (double)m, (m >> 10 ? (int)(m >> 10) : 1) - 25);
}

/* The same over the CPU's cores: the scan is bound by memory bandwidth, which one core does not
 * fill (two threads took 22 ms where one took 38 over the 433 MB of an LVIS step's logits).
 * Small arrays, and platforms without POSIX threads, scan on the calling thread. */
typedef struct {
    efl_dtype dtype;
    const unsigned char *data;
    size_t count;
    float largest;
} scan_part;

static void *scan_part_run(void *arg)
{
    scan_part *p = arg;
    p->largest = largest_magnitude(p->dtype, p->data, p->count);
    return NULL;
}

#define SCAN_MAX_THREADS 8

static float largest_magnitude_parallel(efl_dtype dtype, const void *data, size_t count)
{
    size_t threads = 1;
    const size_t esize = efl_dtype_size(dtype);
#ifndef _WIN32
    const long cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (count * esize >= ((size_t)64 << 20) && cores > 1)
        threads = cores < SCAN_MAX_THREADS ? (size_t)cores : SCAN_MAX_THREADS;
#endif
    if (threads == 1)
        return largest_magnitude(dtype, data, count);
    scan_part parts[SCAN_MAX_THREADS];
    const size_t per = count / threads;
    for (size_t t = 0; t < threads; ++t)
        parts[t] = (scan_part){dtype, (const unsigned char *)data + t * per * esize,
                               t + 1 < threads ? per : count - t * per, 0.0f};
    float largest = 0.0f;
#ifndef _WIN32
    pthread_t ids[SCAN_MAX_THREADS];
    int started[SCAN_MAX_THREADS] = {0};
    for (size_t t = 1; t < threads; ++t)
        started[t] = pthread_create(&ids[t], NULL, scan_part_run, &parts[t]) == 0;
    scan_part_run(&parts[0]);
    for (size_t t = 1; t < threads; ++t) {
        if (started[t])
            pthread_join(ids[t], NULL);
        else
            scan_part_run(&parts[t]); /* no thread to be had: here, then */
    }
#endif
    for (size_t t = 0; t < threads; ++t)
        largest = parts[t].largest > largest ? parts[t].largest : largest; /* Inf wins */
    return largest;
}

/* The largest value a storage type holds, as a double. */
static double storage_max(efl_dtype dtype)
{
    return dtype == EFL_DTYPE_FLOAT16 ? 65504.0 : dtype == EFL_DTYPE_BFLOAT16 ? 0x1.fep127 : (double)FLT_MAX;
}

/* The largest pos_grad or neg_grad, read from the device (blocking); -1 if it cannot be read. */
static double largest_total(efl_loss *loss, cl_command_queue queue)
{
    const size_t C = loss->cfg.num_classes;
    double *t = malloc(2 * C * sizeof *t);
    if (!t)
        return -1.0;
    double m = -1.0;
    if (efl_loss_read_state(loss, queue, t, t + C, NULL) == EFL_OK) {
        m = 0.0;
        for (size_t j = 0; j < 2 * C; ++j)
            m = t[j] > m ? t[j] : m;
    }
    free(t);
    return m;
}

int efl_host_step_cannot_be_refused(efl_loss *loss, cl_command_queue queue, efl_dtype dtype,
                                    const void *const *inputs, const size_t *counts, uint32_t levels, size_t n,
                                    float normalizer, efl_reduction reduction)
{
    const efl_loss_config *cfg = &loss->cfg;
    const double C = cfg->num_classes, rows = (double)n;
    if (reduction == EFL_REDUCTION_MEAN && !(normalizer > 0.0f && isfinite(normalizer)))
        return 0; /* refused before anything runs, on either path */
    const double scale = (double)cfg->loss_weight / (reduction == EFL_REDUCTION_MEAN ? (double)normalizer : 1.0);
    double xmax = 0.0;
    for (uint32_t l = 0; l < levels; ++l)
        xmax = fmax(xmax, largest_magnitude_parallel(dtype, inputs[l], counts[l]));
    if (!isfinite(xmax))
        return 0;
    double weight, grad;
    if (cfg->mode == EFL_MODE_EQLV2) {
        weight = 1.0 + fabs((double)cfg->alpha);
        grad = weight;
    } else {
        const double gamma = efl_largest_gamma_j(cfg);
        weight = efl_largest_alpha_t(cfg) * gamma / (double)cfg->gamma;
        grad = weight * (1.0 + gamma / 2.718281828459045); /* p_t log(1/p_t) <= 1/e */
    }
    const double elem = weight * (xmax + 1.0), margin = 4.0;
    const double limit = storage_max(dtype) / margin;
    if (fabs(scale) * grad > limit || rows * C * elem > FLT_MAX / margin || rows * C * elem * fabs(scale) > FLT_MAX / margin)
        return 0;
    if (reduction == EFL_REDUCTION_NONE && fabs((double)cfg->loss_weight) * elem > limit)
        return 0;
    if (cfg->mode == EFL_MODE_FOCAL)
        return 1; /* no state to overflow */
    /* the statistics and the totals they are added to (EQLv2's are unscaled) */
    const double stat = rows * (cfg->mode == EFL_MODE_EQLV2 ? grad : fabs(scale) * grad);
    const double total_limit = (loss->kp.fp64 ? DBL_MAX : (double)FLT_MAX) / margin;
    const double total = largest_total(loss, queue);
    if (total < 0.0 || total + stat > total_limit)
        return 0;
    /* EQLv2's g = pos / (neg + 1e-10) is not clamped */
    return cfg->mode != EFL_MODE_EQLV2 || (total + stat) * 1e10 <= total_limit;
}
