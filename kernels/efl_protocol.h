/*
 * What the host and the kernels must agree on besides the label rule (efl_labels.h): the flags
 * the device raises to refuse a step, and the modes of the apply kernel. Compiled in front of
 * efl_common.h, and included by the host (lib/step.c, lib/parallel.c). Plain C99 that is also
 * OpenCL C.
 */
#ifndef EFL_PROTOCOL_H
#define EFL_PROTOCOL_H

/* Flags the device raises (info[0] after a call); the apply kernel refuses a step that has any. */
#define EFL_FLAG_INVALID_LABEL 1u  /* a label outside the convention (efl_step) */
#define EFL_FLAG_NONFINITE 2u      /* Inf or NaN in a valid row's logits or supplied gradient */
#define EFL_FLAG_BAD_NORMALIZER 4u /* a normalizer read on the device that is not finite and > 0 */
#define EFL_FLAG_PEER 8u           /* data parallel: another rank refused the step */
#define EFL_FLAG_OVERFLOW 16u      /* a result beyond its type: a stored gradient or element loss,
                                      the loss total, the statistics or the new state */

/* Rows of the step kernels' partials per row block, each cpad long: sum |grad| over positives,
 * over negatives, the loss, and the column's refusal flags (uint bits). */
#define EFL_PARTIAL_ROWS 4u

/* efl_apply's modes */
#define EFL_APPLY_FORWARD 0    /* loss only */
#define EFL_APPLY_STEP 1       /* loss, then state and table */
#define EFL_APPLY_REFRESH 2    /* table from the state (after a write or reset) */
#define EFL_APPLY_ACCUMULATE 3 /* state and table from a caller's gradient, times stat_scale */
#define EFL_APPLY_HOLD 4       /* data parallel: loss and verdict (statistics checked), no update */

#endif
