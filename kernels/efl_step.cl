/*
 * (Compiled after efl_reduce.cl and efl_apply.cl, whose stages the fused path below calls.)
 * The fused pass, one body for every layout (compiled after efl_common.h and the layouts'
 * addressing, of which EFL_PLANAR selects one: efl_layout_rows.h for [N, C] rows, the kernel
 * efl_step; efl_layout_head.h for a detection head's [B, A*C, H, W] levels, the kernel
 * efl_step_head). It reads each logit once, writes each gradient once, and leaves
 * per-(row block, class) partial sums for efl_reduce.cl.
 *
 * Each work-item visits the rows of its block EFL_VISIT_ROWS at a time, a vector of EFL_VW
 * elements per visit: columns of one row (rows layout) or rows of one class (head layouts). The
 * per-class sums need no atomics and no local memory: each is a private loop in a fixed order,
 * so the result is bitwise reproducible.
 *
 * With `collect`, x holds a gradient the caller computed (efl_enqueue_accumulate): the kernel
 * only makes its per-class sums of |x| (and the loss slot flags a non-finite value).
 *
 * labels: the launch's labels in its row order from lab0 on (a head level's: efl_head_labels).
 * table: [3][cpad] gamma_j hi, gamma_j lo, w_j (EQLv2: pos_w, neg_w, unused), padded so vector
 *   loads never leave it (written only by the fused path's apply stage, after every read).
 * partials: [block0 + nblocks][4][cpad] floats: sum |grad| over positives, over negatives (EQLv2:
 *   |grad| before the reduction's scale), sum of loss; the fourth row holds uint bits, the
 *   EFL_FLAG_NONFINITE / EFL_FLAG_OVERFLOW seen in that column (efl_column_flags).
 * block_flags: [block0 + nblocks] EFL_FLAG_* seen in the block (written by work-item 0 only).
 * norm: the normalizer on the device (use_norm): grad_scale / norm[0] scales the gradient.
 * loss_el: the per-element loss times elem_scale (write_loss, EFL_REDUCTION_NONE).
 * hw, anchors, cs, astride, bstride: a head level's geometry (efl_layout_head.h); the rows layout
 *   has none.
 */

/* A launch as a work-item sees it: its arrays, its flags and its columns' factors. */
typedef struct {
    __global const efl_store_t *x;
    __global const int *labels; /* from the launch's first row */
    __global efl_store_t *grad, *loss_el;
    uint C;
    int ignore_index, convention, collect, write_grad, write_loss;
    float gs, elem_scale;  /* the gradient's and the element loss's scales */
    floatV t0, t1;         /* gamma_j hi and lo (EQLv2: pos_w and neg_w) */
    floatV aw_pos, aw_neg; /* alpha_t * w_j for a positive and a negative (not EQLv2) */
} efl_launch;

EFL_INLINE void efl_load_factors(efl_launch *a, const efl_place *at, __global const float *table, uint cpad,
                                 float alpha_pos, float alpha_neg)
{
    a->t0 = efl_load_factor(at, table);
    a->t1 = efl_load_factor(at, table + cpad);
#if EFL_MODE != EFL_MODE_EQLV2
    const floatV t2 = efl_load_factor(at, table + 2u * cpad);
    a->aw_pos = alpha_pos * t2;
    a->aw_neg = alpha_neg * t2;
#endif
}

/* One visit's elements: the loss l, the gradient g (scaled; 0 in an ignored row) and the
 * statistic the sums take. In collect mode x is a gradient already: only the statistic. */
EFL_INLINE void efl_step_terms(const efl_launch *a, floatV xv, intV is_pos, int all_negative, efl_row_t valid,
                               floatV *l, floatV *g, floatV *stat)
{
    *l = 0.0f;
    *g = 0.0f;
    if (a->collect) {
        *stat = valid ? xv : 0.0f;
        return;
    }
#if EFL_MODE == EFL_MODE_EQLV2
    efl_bce_term(xv, is_pos, is_pos ? a->t0 : a->t1, l, g);
    /* EQLv2's statistics leave out the reduction's scale (docs/semantics.md) */
    *stat = valid ? *g : 0.0f;
#else
#if EFL_VW > 1
    /* Most visits have no positive lane (the row's class lies in other columns, or in the head
     * layouts most rows are not of this class): then the selects can go. A work-item owns whole
     * vectors here, so this branch never splits a warp; with one element per work-item (GPUs)
     * it would, hence the condition. Same arithmetic: same bits. */
    if (all_negative)
        efl_focal_term(xv, (intV)0, a->t0, a->t1, a->aw_neg, l, g);
    else
#endif
        efl_focal_term(xv, is_pos, a->t0, a->t1, is_pos ? a->aw_pos : a->aw_neg, l, g);
#endif
    /* select, not multiply: an ignored row's logit must not reach the sums */
    *g = valid ? *g * a->gs : 0.0f;
#if EFL_MODE != EFL_MODE_EQLV2
    *stat = *g;
#endif
}

/* The visit from row r on: its labels decoded, its terms, its outputs stored, and what the
 * work-item's sums and the group's plain sums (gp, gn, gl) take from it. */
EFL_INLINE void efl_step_visit(const efl_place *at, const efl_launch *a, uint r, uint r1, efl_sums *s,
                               floatV *gp, floatV *gn, floatV *gl)
{
    floatV xv, l, g, stat;
    efl_row_t y;
    efl_visit v;
    efl_visit_at(&v, at, r, r1);
    efl_visit_load(at, &v, a->x, a->labels, r1, a->ignore_index, &xv, &y);
    const efl_row_t col = EFL_DECODE_LABEL(y, (int)a->C, a->ignore_index, a->convention);
    s->bad |= efl_row_any(col == EFL_ROW_INVALID) ? EFL_FLAG_INVALID_LABEL : 0u;
    const efl_row_t valid = col >= EFL_ROW_BACKGROUND;
    const intV is_pos = efl_positive(at, col);
    efl_step_terms(a, xv, is_pos, efl_all_negative(at, col, is_pos), valid, &l, &g, &stat);
    if (a->write_grad && !a->collect) {
        efl_visit_store(at, &v, a->grad, g, r1);
        s->largest_out = max(s->largest_out, efl_magnitude_bits(g));
    }
    if (a->write_loss && !a->collect) {
        const floatV le = valid ? l * a->elem_scale : 0.0f;
        efl_visit_store(at, &v, a->loss_el, le, r1);
        s->largest_out = max(s->largest_out, efl_magnitude_bits(le));
    }
    s->largest_in = max(s->largest_in, valid ? efl_magnitude_bits(xv) : (intV)0);
    const intV own = efl_own(at);
    const floatV ag = own ? fabs(stat) : 0.0f;
    *gp += is_pos ? ag : 0.0f;
    *gn += is_pos ? 0.0f : ag;
    *gl += (own && valid) ? l : 0.0f;
}

/* The row range of block b; with the row barrier every work-item meets every barrier, one
 * without a column of its own counting nothing (own). Without it such work-items run no rows (a
 * loop bound, not an early return, which stops some runtimes from vectorising). */
EFL_INLINE uint efl_block_end(const efl_place *at, uint r0, uint rows_per_block, uint n)
{
#if EFL_ROW_BARRIER
    return min(r0 + rows_per_block, n);
#else
    return at->active ? min(r0 + rows_per_block, n) : r0;
#endif
}

/* Row block b of the launch: its rows' visits, then its partials and flags. */
EFL_INLINE void efl_step_block(const efl_place *at, const efl_launch *a, uint b, uint n, uint rows_per_block,
                               uint block0, uint cpad, __global float *partials, __global uint *block_flags)
{
    const uint r0 = b * rows_per_block, r1 = efl_block_end(at, r0, rows_per_block, n);

    efl_sums s;
    efl_sums_zero(&s);
    /* Visits go in groups of EFL_UNROLL (per device): a CPU overlaps the group's long dependency
     * chains, and the group's terms are summed plainly before one Kahan step per sum. With
     * EFL_ROW_BARRIER the work-group meets at a barrier after each group: CPU runtimes run a
     * group as a loop over its work-items, and the barrier puts that loop inside the row loop,
     * so the group sweeps rows left to right and the hardware prefetcher sees one sequential
     * stream instead of one load per row per work-item at a stride of C * 4 bytes (too long for
     * stride prefetchers above ~2 KB). */
    for (uint r = r0; r < r1;) {
        const uint visits = efl_group_visits(r, r1);
        floatV gp = 0.0f, gn = 0.0f, gl = 0.0f;
        for (uint k = 0; k < visits; ++k, r += EFL_VISIT_ROWS)
            efl_step_visit(at, a, r, r1, &s, &gp, &gn, &gl);
        efl_kahan_add(&s.pos, &s.pos_c, gp);
        efl_kahan_add(&s.neg, &s.neg_c, gn);
        efl_kahan_add(&s.loss, &s.loss_c, gl);
#if EFL_ROW_BARRIER
        barrier(CLK_GLOBAL_MEM_FENCE);
#endif
    }

    __global float *pb = partials + (size_t)(block0 + b) * EFL_PARTIAL_ROWS * cpad;
    efl_store_partials(at, pb, cpad, &s, efl_column_flags(s.largest_in, s.largest_out));
    if (get_global_id(0) == 0u)
        block_flags[block0 + b] = s.bad;
}

/* The fused path (EFL_FUSED: the rows layout on CPU builds, EFL_VW > 1, EFL and EQLv2): a small batch's whole
 * step in one launch of one work-group whose EFL_WGX work-items cover every column (cpad ==
 * EFL_WGX * EFL_VW). It runs the chain's row blocks one after another (efl_step_block), then
 * efl_reduce's columns (efl_reduce_column) and efl_apply's stage (efl_apply_stage), a global
 * barrier between the stages: the same sums in the same order as the chain, so the same bits,
 * and the same refusals. A CPU runs one work-group on one core, so the host takes this path only
 * where the chain's step would be one work-group too (step.c, fused_path). */
/* Not in focal mode: PoCL 3.1 builds the fused kernel of focal mode (whose apply stage ends
 * without a state update) wrongly with 3 work-items (C = 21: it hung, or crashed; test_uninit).
 * Focal mode takes the chain. */
#ifndef EFL_FUSED
#define EFL_FUSED (!EFL_PLANAR && EFL_VW > 1 && EFL_MODE != EFL_MODE_FOCAL)
#endif

/* fused: 0 for the chain's step (a row block per group of dimension 1; the arguments from
 * nblocks on are unused), 1 for the fused path (one group; nblocks blocks; the rest are
 * efl_reduce's and efl_apply's arguments, named as there). */
__kernel __attribute__((reqd_work_group_size(EFL_WGX, 1, 1)))
void EFL_STEP_KERNEL(__global const efl_store_t *restrict x, __global const int *restrict labels,
                     __global efl_store_t *restrict grad, __global efl_store_t *restrict loss_el,
                     __global float *restrict partials, __global uint *restrict block_flags,
                     __global float *restrict table, __global const float *restrict norm, uint n, uint C,
                     uint cpad, uint rows_per_block, uint block0, float alpha_pos, float alpha_neg,
                     float grad_scale, float elem_scale, int ignore_index, int convention, int write_grad,
                     int write_loss, int collect, int use_norm, uint lab0, uint hw, uint anchors, ulong cs,
                     ulong astride, ulong bstride, int fused, uint nblocks, __global acc_t *restrict step_stats,
                     __global uint *restrict step_flags, __global acc_t *restrict state,
                     __global float *restrict loss_out, __global uint *restrict info, float gamma_b, float s,
                     float loss_scale, int mode, float stat_scale, int write_total, float mu, float alpha)
{
    efl_place at;
    efl_place_init(&at, C, hw, anchors, cs, astride, bstride);
    /* the device's normalizer is checked by efl_apply, which refuses the step if it is bad */
    const float gs = use_norm ? grad_scale / norm[0] : grad_scale;
    efl_launch a = {x, labels + lab0, grad, loss_el, C, ignore_index, convention, collect, write_grad, write_loss,
                    gs, elem_scale};
    efl_load_factors(&a, &at, table, cpad, alpha_pos, alpha_neg);
#if EFL_FUSED
    __local acc_t part[EFL_APPLY_WG];
    __local uint seen[EFL_APPLY_WG];
    if (fused) { /* uniform: a kernel argument */
        for (uint b = 0; b < nblocks; ++b)
            efl_step_block(&at, &a, b, n, rows_per_block, 0u, cpad, partials, block_flags);
        /* the blocks' partials and flags, written by every work-item, before any is summed */
        barrier(CLK_GLOBAL_MEM_FENCE);
        const uint lid = get_local_id(0);
        for (uint j = lid; j < cpad; j += EFL_WGX)
            efl_reduce_column(partials, block_flags, nblocks, C, cpad, step_stats, step_flags, j);
        barrier(CLK_GLOBAL_MEM_FENCE);
        efl_apply_stage(step_stats, step_flags, cpad, state, table, loss_out, info, C, gamma_b, s, loss_scale, mode,
                        stat_scale, norm, use_norm, write_total, mu, alpha, part, seen, lid, EFL_WGX);
        return;
    }
#endif
    efl_step_block(&at, &a, get_group_id(1), n, rows_per_block, block0, cpad, partials, block_flags);
}
