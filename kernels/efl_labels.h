/*
 * The label rule (docs/semantics.md "Inputs"), shared word for word by the kernels (compiled first, before
 * efl_common.h) and the host (lib/host.c checks labels before a zero-copy step). Plain C99 that
 * is also OpenCL C.
 */
#ifndef EFL_LABELS_H
#define EFL_LABELS_H

/* efl_label_convention's values (include/efl/efl.h; lib/host.c asserts they agree) */
#define EFL_CONV_REFERENCE 0
#define EFL_CONV_ZERO_BASED 1

#define EFL_ROW_BACKGROUND (-1) /* every column negative */
#define EFL_ROW_IGNORED (-2)    /* no loss, no gradient, no statistics */
#define EFL_ROW_INVALID (-3)    /* outside the convention: the step is refused */

/* The class column (0..C-1) of a row with label y, or one of EFL_ROW_*. Both conventions use the
 * labels 0..C; the loss configuration refuses an ignore_index among them. An expression, so that
 * OpenCL can apply it to a vector of labels lane by lane (its ?: and || work per lane there). */
#define EFL_DECODE_LABEL(y, C, ignore_index, convention)                                           \
    ((y) == (ignore_index)         ? EFL_ROW_IGNORED                                               \
     : ((y) < 0 || (y) > (C))      ? EFL_ROW_INVALID                                               \
     : (convention) == EFL_CONV_ZERO_BASED ? ((y) < (C) ? (y) : EFL_ROW_BACKGROUND)                \
                                           : (y) - 1) /* reference: 0 is background */

static inline int efl_decode_label(int y, int C, int ignore_index, int convention)
{
    return EFL_DECODE_LABEL(y, C, ignore_index, convention);
}

#endif
