/* Synthetic long-tailed data and per-class AP for examples/train_head.c (see train_data.h). */
#include "train_data.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- random numbers */
static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void td_rng_seed(td_rng *r, uint64_t seed)
{
    for (int i = 0; i < 4; ++i)
        r->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t td_rng_next(td_rng *r)
{
    uint64_t *s = r->s;
    const uint64_t out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

double td_rng_uniform(td_rng *r) { return (double)(td_rng_next(r) >> 11) * 0x1.0p-53; }

double td_rng_gauss(td_rng *r)
{
    /* Box-Muller, one value per call (no hidden state: the stream stays simple to reason about). */
    double u1 = td_rng_uniform(r), u2 = td_rng_uniform(r);
    if (u1 < 1e-300)
        u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

size_t td_rng_below(td_rng *r, size_t n) { return (size_t)(td_rng_uniform(r) * (double)n); }

/* ---------------------------------------------------------------- data */
float *td_prototypes(uint32_t C, uint32_t D, uint64_t seed)
{
    float *p = malloc((size_t)C * D * sizeof *p);
    if (!p)
        return NULL;
    td_rng r;
    td_rng_seed(&r, seed);
    for (uint32_t k = 0; k < C; ++k) {
        double norm = 0.0, v[1024];
        const uint32_t d = D < 1024 ? D : 1024;
        for (uint32_t j = 0; j < d; ++j) {
            v[j] = td_rng_gauss(&r);
            norm += v[j] * v[j];
        }
        norm = sqrt(norm);
        for (uint32_t j = 0; j < D; ++j)
            p[(size_t)k * D + j] = j < d ? (float)(v[j] / norm) : 0.0f;
    }
    return p;
}

static double harmonic(uint32_t C)
{
    double h = 0.0;
    for (uint32_t k = 1; k <= C; ++k)
        h += 1.0 / k;
    return h;
}

uint32_t td_zipf_count(const td_params *p, uint32_t k)
{
    const double c = floor(p->fg_rows / ((double)k * harmonic(p->C)) + 0.5);
    return c < 1.0 ? 1u : (uint32_t)c;
}

int td_generate(const td_params *p, const float *protos, td_set *out)
{
    memset(out, 0, sizeof *out);
    out->C = p->C;
    out->D = p->D;
    out->count = calloc((size_t)p->C + 1, sizeof *out->count);
    if (!out->count)
        return -1;
    size_t natural_fg = 0, fg = 0;
    for (uint32_t k = 1; k <= p->C; ++k) {
        const uint32_t c = td_zipf_count(p, k);
        natural_fg += c;
        out->count[k] = c < p->min_pos ? p->min_pos : c;
        fg += out->count[k];
    }
    out->count[0] = (uint32_t)floor(p->bg_fraction / (1.0 - p->bg_fraction) * (double)natural_fg + 0.5);
    out->n = fg + out->count[0];
    out->y = malloc(out->n * sizeof *out->y);
    out->x = malloc(out->n * p->D * sizeof *out->x);
    if (!out->y || !out->x) {
        td_free(out);
        return -1;
    }
    size_t at = 0;
    for (uint32_t k = 0; k <= p->C; ++k)
        for (uint32_t i = 0; i < out->count[k]; ++i)
            out->y[at++] = (int32_t)k;
    td_rng r;
    td_rng_seed(&r, p->seed);
    for (size_t i = out->n; i > 1; --i) { /* Fisher-Yates */
        const size_t j = td_rng_below(&r, i);
        const int32_t t = out->y[i - 1];
        out->y[i - 1] = out->y[j];
        out->y[j] = t;
    }
    for (size_t i = 0; i < out->n; ++i) {
        float *xi = out->x + i * p->D;
        const int32_t k = out->y[i];
        for (uint32_t j = 0; j < p->D; ++j)
            xi[j] = p->noise * (float)td_rng_gauss(&r);
        if (k > 0)
            for (uint32_t j = 0; j < p->D; ++j)
                xi[j] += p->signal * protos[(size_t)(k - 1) * p->D + j];
        else if (p->bg_mix > 0.0f) { /* a weak copy of a random class: a hard negative */
            const size_t c = td_rng_below(&r, p->C);
            for (uint32_t j = 0; j < p->D; ++j)
                xi[j] += p->bg_mix * protos[c * p->D + j];
        }
    }
    return 0;
}

void td_free(td_set *s)
{
    free(s->x);
    free(s->y);
    free(s->count);
    memset(s, 0, sizeof *s);
}

int td_group_of(uint32_t train_count)
{
    return train_count <= 10 ? TD_RARE : train_count <= 100 ? TD_COMMON : TD_FREQUENT;
}

const char *td_group_name(int g)
{
    static const char *const names[TD_GROUPS] = {"rare", "common", "frequent"};
    return g >= 0 && g < TD_GROUPS ? names[g] : "?";
}

/* ---------------------------------------------------------------- average precision */
typedef struct {
    float score;
    int32_t pos;
} scored;

static int by_score_desc(const void *a, const void *b)
{
    const scored *x = a, *y = b;
    if (x->score != y->score)
        return x->score > y->score ? -1 : 1;
    return x->pos - y->pos; /* ties: negatives first */
}

size_t td_ap_work_bytes(size_t n) { return n * (sizeof(scored) + sizeof(double)); }

double td_average_precision(const float *scores, size_t stride, const int32_t *y, size_t n, int32_t cls,
                            void *work)
{
    /* Rows scored below the lowest-scored positive come after the last positive in the ranking
     * and change nothing: only the rows at or above it are sorted. */
    size_t npos = 0;
    float lowest = INFINITY;
    for (size_t i = 0; i < n; ++i)
        if (y[i] == cls) {
            ++npos;
            if (scores[i * stride] < lowest)
                lowest = scores[i * stride];
        }
    if (npos == 0)
        return -1.0;
    scored *rows = work;
    size_t m = 0;
    for (size_t i = 0; i < n; ++i) {
        const float s = scores[i * stride];
        if (s >= lowest)
            rows[m++] = (scored){s, y[i] == cls};
    }
    qsort(rows, m, sizeof *rows, by_score_desc);
    double *prec = (double *)(void *)((char *)work + n * sizeof(scored)); /* precision at each positive */
    size_t tp = 0, j = 0;
    for (size_t r = 0; r < m; ++r)
        if (rows[r].pos) {
            ++tp;
            prec[j++] = (double)tp / (double)(r + 1);
        }
    double ap = 0.0, best = 0.0;
    for (size_t i = npos; i-- > 0;) { /* interpolate: the best precision at this recall or beyond */
        if (prec[i] > best)
            best = prec[i];
        ap += best;
    }
    return ap / (double)npos;
}
