/* Synthetic long-tailed dense-detection data and per-class average precision, for
 * examples/train_head.c. Plain C11, no OpenCL: the data and the metric live on the host.
 *
 * Rows stand for anchors. Foreground class k in 1..C has a Zipf frequency ~ 1/k; about 95% of
 * rows are background (label 0, the reference label convention). A row's features are its
 * class prototype (a random unit vector) times a signal amplitude plus isotropic Gaussian
 * noise; a background row is noise only (or, with bg_mix, noise plus a weak copy of a random
 * prototype). */
#ifndef EFL_EXAMPLES_TRAIN_DATA_H
#define EFL_EXAMPLES_TRAIN_DATA_H

#include <stddef.h>
#include <stdint.h>

/* xoshiro256** seeded through splitmix64: the same stream on every machine and rank. */
typedef struct {
    uint64_t s[4];
} td_rng;
void td_rng_seed(td_rng *r, uint64_t seed);
uint64_t td_rng_next(td_rng *r);
double td_rng_uniform(td_rng *r);  /* [0, 1) */
double td_rng_gauss(td_rng *r);    /* N(0, 1) */
size_t td_rng_below(td_rng *r, size_t n); /* uniform in [0, n) */

typedef struct {
    uint32_t C, D;
    double fg_rows;     /* foreground rows of the natural Zipf draw (before any test floor) */
    double bg_fraction; /* background share of the natural draw (0.95) */
    uint32_t min_pos;   /* floor on the positives per class (0: none; >0: test-set oversampling) */
    float signal;       /* prototype amplitude, in units of the noise's per-dimension sigma */
    float noise;        /* per-dimension noise sigma */
    float bg_mix;       /* 0: background is noise only; > 0: plus bg_mix * a random class's prototype
                           (hard negatives; a diagnostic, not the default) */
    uint64_t seed;
} td_params;

typedef struct {
    uint32_t C, D;
    size_t n;       /* rows */
    float *x;       /* [n, D] row-major */
    int32_t *y;     /* [n]: 0 background, k in 1..C */
    uint32_t *count; /* [C + 1]: rows per label (count[0] = background) */
} td_set;

/* Class prototypes: C random unit vectors of dimension D, [C, D] row-major. */
float *td_prototypes(uint32_t C, uint32_t D, uint64_t seed);

/* Positives of class k (1-based) in the natural Zipf draw: max(1, round(fg_rows / (k H_C))). */
uint32_t td_zipf_count(const td_params *p, uint32_t k);

/* Generate a set: per-class counts as above (raised to min_pos), background rows
 * round(bg_fraction / (1 - bg_fraction) * natural foreground), rows shuffled. 0 on success. */
int td_generate(const td_params *p, const float *protos, td_set *out);
void td_free(td_set *s);

/* LVIS frequency groups by training positives: rare 1-10, common 11-100, frequent > 100. */
enum { TD_RARE = 0, TD_COMMON = 1, TD_FREQUENT = 2, TD_GROUPS = 3 };
int td_group_of(uint32_t train_count);
const char *td_group_name(int g);

/* Average precision of one class, VOC all-point interpolation: rows ranked by score
 * (descending; on equal scores negatives first, the pessimistic order), precision made
 * non-increasing from the right, AP = sum over positives of the interpolated precision at its
 * rank / number of positives. scores has a stride (the class's column of an [n, C] matrix).
 * work must hold n floats + n bytes (td_ap_work_bytes). Returns -1 if the class has no
 * positive. */
size_t td_ap_work_bytes(size_t n);
double td_average_precision(const float *scores, size_t stride, const int32_t *y, size_t n, int32_t cls,
                            void *work);

#endif
