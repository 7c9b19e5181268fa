/*
 * The label rule (SPEC "Inputs"), shared word for word by the kernels (compiled first, before
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
 * labels 0..C; the loss configuration refuses an ignore_index among them. */
static inline int efl_decode_label(int y, int C, int ignore_index, int convention)
{
    if (y == ignore_index)
        return EFL_ROW_IGNORED;
    if (y < 0 || y > C)
        return EFL_ROW_INVALID;
    if (convention == EFL_CONV_ZERO_BASED)
        return y < C ? y : EFL_ROW_BACKGROUND;
    return y - 1; /* 0 is background */
}

#endif
