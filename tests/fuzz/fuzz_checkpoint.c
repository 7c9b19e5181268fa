/* libFuzzer target: the checkpoint reader (efl_checkpoint_parse, lib/checkpoint.c) on arbitrary
 * bytes. A checkpoint is a file anyone may hand us: no byte sequence may make the reader read
 * outside the buffer, accept a total that is negative, not finite or not what the file says,
 * or accept a file meant for another C or gamma.
 *
 * Input: one byte that picks what the loading loss expects, then the file. The expectation is
 * the file's own header (so that the checks past the configuration are reached), or it with
 * one field changed:
 *   0: as is. Accepted bytes must be exactly what the writer makes of the values read back.
 *   1: another gamma: must never be accepted.
 *   2: another loss_weight, ignore_index and label convention: accepted or refused as with 0.
 *   3: another C: must never be accepted.
 * Half the mutants get their checksum made right again, so that mutated headers and values
 * reach the checks behind the checksum instead of stopping at it. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "disk_cache.h" /* efl_fnv1a64, to reseal mutated files */
#include "internal.h"

#define MAX_FUZZ_CLASSES 4096u

static uint32_t u32_at(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static float f32_at(const uint8_t *p)
{
    const uint32_t u = u32_at(p);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* What a loss would expect: the header's fields where the file is long enough, C bounded. */
static efl_loss_config expectation(const uint8_t *file, size_t size, unsigned pick)
{
    efl_loss_config cfg;
    efl_loss_config_init(&cfg, 3);
    if (size >= 52) {
        cfg.mode = (efl_mode)u32_at(file + 12);
        cfg.num_classes = u32_at(file + 16);
        cfg.gamma = f32_at(file + 24);
        cfg.alpha = f32_at(file + 28);
        cfg.scale_factor = f32_at(file + 32);
        cfg.mu = f32_at(file + 36);
        cfg.loss_weight = f32_at(file + 40);
        cfg.ignore_index = (int32_t)u32_at(file + 44);
        cfg.labels = (efl_label_convention)u32_at(file + 48);
    }
    if (cfg.num_classes == 0 || cfg.num_classes > MAX_FUZZ_CLASSES)
        cfg.num_classes = 3;
    if (pick == 1)
        cfg.gamma = cfg.gamma == 2.0f ? 2.5f : 2.0f;
    if (pick == 2) {
        cfg.loss_weight = cfg.loss_weight == 1.0f ? 0.5f : 1.0f;
        cfg.ignore_index ^= 0x55;
        cfg.labels = (efl_label_convention)(cfg.labels ^ 1u);
    }
    if (pick == 3)
        cfg.num_classes = cfg.num_classes % MAX_FUZZ_CLASSES + 1;
    return cfg;
}

/* An accepted file: sound values, and for an unchanged expectation the very same bytes. */
static void check_accepted(const uint8_t *file, size_t size, const efl_loss_config *cfg, unsigned pick,
                           const double *totals, const float *residuals)
{
    if (pick == 1 || pick == 3)
        abort(); /* accepted for another gamma or C */
    const size_t n = 3 * (size_t)cfg->num_classes;
    for (size_t i = 0; i < n; ++i)
        if (!isfinite(totals[i]) || totals[i] < 0.0 || !isfinite(residuals[i]) ||
            totals[i] + (double)residuals[i] != totals[i])
            abort();
    if (pick != 0)
        return;
    if (efl_checkpoint_size(cfg->num_classes) != size)
        abort();
    unsigned char *again = malloc(size);
    if (!again)
        return;
    efl_checkpoint_serialize(cfg, totals, residuals, again);
    if (memcmp(again, file, size) != 0)
        abort();
    free(again);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    const unsigned pick = data[0] % 4u;
    const size_t len = size - 1;
    uint8_t *file = malloc(len ? len : 1); /* exact size: ASan sees any overread */
    if (!file)
        return 0;
    memcpy(file, data + 1, len);
    const efl_loss_config cfg = expectation(file, len, pick);
    const size_t n = 3 * (size_t)cfg.num_classes;
    double *totals = malloc(n * sizeof *totals);
    float *residuals = malloc(n * sizeof *residuals);
    if (totals && residuals) {
        const efl_status st = efl_checkpoint_parse(file, len, &cfg, totals, residuals);
        if (efl_status_string(st) == NULL)
            abort();
        if (st != EFL_OK && st != EFL_ERROR_CHECKPOINT_CORRUPT && st != EFL_ERROR_CHECKPOINT_VERSION &&
            st != EFL_ERROR_CHECKPOINT_MISMATCH)
            abort();
        if (st == EFL_OK)
            check_accepted(file, len, &cfg, pick, totals, residuals);
    }
    free(totals);
    free(residuals);
    free(file);
    return 0;
}

size_t LLVMFuzzerMutate(uint8_t *data, size_t size, size_t max_size);

size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed)
{
    size = LLVMFuzzerMutate(data, size, max_size);
    if ((seed & 1u) && size >= 1 + 60) {
        const uint64_t h = efl_fnv1a64(data + 1, size - 1 - 8, EFL_FNV_OFFSET);
        for (int i = 0; i < 8; ++i)
            data[size - 8 + i] = (uint8_t)(h >> (8 * i));
    }
    return size;
}
