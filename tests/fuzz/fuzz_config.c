/* libFuzzer target: the loss configuration's checks (efl_check_config, lib/loss.c) on arbitrary
 * field values: never a crash, always a status with a name, and anything accepted is a
 * configuration the kernels can run (C in range, finite positive gamma_b, finite parameters, a
 * known label convention, accumulation and mode, a finite mu, an ignore_index that is no valid label). */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    efl_loss_config cfg;
    memset(&cfg, 0, sizeof cfg);
    memcpy(&cfg, data, size < sizeof cfg ? size : sizeof cfg);
    const efl_status st = efl_check_config(&cfg);
    if (efl_status_string(st) == NULL)
        abort();
    if (st == EFL_OK) {
        const int ok = cfg.num_classes >= 1 && cfg.num_classes <= (1u << 24) && isfinite(cfg.gamma) &&
                       cfg.gamma > 0.0f && isfinite(cfg.alpha) && isfinite(cfg.scale_factor) &&
                       cfg.scale_factor >= 0.0f && isfinite(cfg.loss_weight) &&
                       (cfg.labels == EFL_LABELS_REFERENCE || cfg.labels == EFL_LABELS_ZERO_BASED) &&
                       (cfg.accumulate == EFL_ACCUMULATE_AUTO || cfg.accumulate == EFL_ACCUMULATE_FLOAT_PAIRS) &&
                       (cfg.mode == EFL_MODE_EFL || cfg.mode == EFL_MODE_FOCAL || cfg.mode == EFL_MODE_EQLV2) &&
                       isfinite(cfg.mu) &&
                       (cfg.ignore_index < 0 || (uint32_t)cfg.ignore_index > cfg.num_classes);
        if (!ok)
            abort();
    }
    return 0;
}
