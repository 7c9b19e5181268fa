/*
 * Second stage of the per-class sums (compiled after efl_common.h, before efl_step.cl, whose fused
 * path calls efl_reduce_column): one work-item per column adds
 * the row blocks' partials in block order, in acc_t (float64 or a float pair), so the result is
 * the same bits run after run whatever the scheduling. Column 0 also ORs the blocks' flags, and
 * every column ORs its own refusal bits (the partials' fourth row).
 *
 * Launch: global (cpad), local (EFL_WGX).
 * out: step_stats [3][cpad] acc_t (P, N, loss per column); step_flags [1 + cpad]: the blocks'
 * flags, then each column's.
 */
/* Column j's sums over the row blocks, in block order, and its flags (the efl_reduce kernel's
 * work-item j; the fused step's work-items take the columns in turn). No restrict on a helper's
 * pointers (efl_apply.cl says why). */
static inline void efl_reduce_column(__global const float *partials, __global const uint *block_flags, uint nblocks,
                                     uint C, uint cpad, __global acc_t *step_stats, __global uint *step_flags, uint j)
{
    acc_t p = acc_zero(), q = acc_zero(), l = acc_zero();
    uint flags = 0u, column = 0u;
    __global const float *pb = partials + j;
    /* padded columns have no partials: they sum nothing (a bound, not an early return) */
    const uint nb = j < C ? nblocks : 0u;
    for (uint b = 0; b < nb; ++b) {
        p = acc_add(p, acc_from_float(pb[0]));
        q = acc_add(q, acc_from_float(pb[cpad]));
        l = acc_add(l, acc_from_float(pb[2u * cpad]));
        column |= ((__global const uint *)pb)[3u * cpad];
        flags |= block_flags[b];
        pb += EFL_PARTIAL_ROWS * cpad;
    }
    /* column 0 always exists (C >= 1) and sees every block's flags */
    step_stats[j] = p;
    step_stats[cpad + j] = q;
    step_stats[2u * cpad + j] = l;
    step_flags[1u + j] = column;
    if (j == 0u)
        step_flags[0] = flags;
}

__kernel __attribute__((reqd_work_group_size(EFL_WGX, 1, 1)))
void efl_reduce(__global const float *restrict partials, __global const uint *restrict block_flags,
                uint nblocks, uint C, uint cpad, __global acc_t *restrict step_stats,
                __global uint *restrict step_flags)
{
    efl_reduce_column(partials, block_flags, nblocks, C, cpad, step_stats, step_flags, get_global_id(0));
}
