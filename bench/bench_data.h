/* The random data efl-bench and efl-native-loop share, so that both time the same batch: plain C,
 * no OpenCL (efl-native-loop is built without it). */
#ifndef EFL_BENCH_DATA_H
#define EFL_BENCH_DATA_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

/* xorshift64*: fast, and plenty random for benchmark data. */
static inline uint64_t bench_rand_u64(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* uniform in [0, 1) */
static inline double bench_rand_unit(uint64_t *s) { return (double)(bench_rand_u64(s) >> 11) * 0x1.0p-53; }

/* Labels in the reference convention: ~92% background (0), else class k in 1..C with Zipf
 * frequencies (p_k ~ 1/k), as in a long-tailed detection batch. Advances *s. Returns 0 when out
 * of memory. */
static inline int bench_zipf_labels(uint64_t *s, int32_t *lab, size_t n, size_t C)
{
    double *cdf = malloc(C * sizeof *cdf);
    if (!cdf)
        return 0;
    double acc = 0.0;
    for (size_t k = 0; k < C; ++k)
        cdf[k] = acc += 1.0 / (k + 1.0);
    for (size_t i = 0; i < n; ++i) {
        if (bench_rand_unit(s) < 0.92) {
            lab[i] = 0;
            continue;
        }
        const double u = bench_rand_unit(s) * acc;
        size_t lo = 0, hi = C - 1; /* first k with cdf[k] > u */
        while (lo < hi) {
            const size_t mid = lo + (hi - lo) / 2;
            if (cdf[mid] > u)
                hi = mid;
            else
                lo = mid + 1;
        }
        lab[i] = (int32_t)lo + 1;
    }
    free(cdf);
    return 1;
}

#endif
