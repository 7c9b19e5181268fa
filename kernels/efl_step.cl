/*
 * The fused pass (compiled after efl_common.h): reads each logit once, writes each gradient once,
 * and leaves per-(row block, class) partial sums for efl_reduce.cl.
 *
 * Launch: global (groups * EFL_WGX, nblocks), local (EFL_WGX, 1). Work-item (i, b) owns the
 * EFL_VW columns i * EFL_VW ... of the rows [b * rows_per_block, ...): a row is read by
 * consecutive work-items (coalesced on GPUs, EFL_VW = 1) or as one vector per work-item (CPU
 * runtimes, EFL_VW = 8 or 16: they do not vectorise a work-item loop around a row loop).
 * The per-class sums need no atomics and no local memory: each is a private loop in a fixed
 * order, so the result is bitwise reproducible.
 *
 * The last chunk of a row (C not a multiple of EFL_VW; C >= EFL_VW is guaranteed by the host)
 * is shifted left to end at column C: it recomputes some of the previous chunk's columns and
 * stores the same gradient bits there, but counts only its own columns in the sums. So every
 * load and store is a whole vector, with no per-lane path inside the row loop.
 *
 * With `collect`, x holds a gradient the caller computed (efl_enqueue_accumulate): the kernel
 * only makes its per-class sums of |x| (and the loss slot flags a non-finite value).
 *
 * efl_step_head.cl is the same pass over a detection head's [B, A*C, H, W] levels.
 *
 * table: [3][cpad] gamma_j hi, gamma_j lo, w_j (EQLv2: pos_w, neg_w, unused), padded so vector
 *   loads never leave it.
 * partials: [block0 + nblocks][4][cpad] floats: sum |grad| over positives, over negatives (EQLv2:
 *   |grad| before the reduction's scale), sum of loss; the fourth row holds uint bits, the
 *   EFL_FLAG_NONFINITE / EFL_FLAG_OVERFLOW seen in that column (efl_column_flags).
 * block_flags: [block0 + nblocks] EFL_FLAG_* seen in the block (written by work-item 0 only).
 * norm: the normalizer on the device (use_norm): grad_scale / norm[0] scales the gradient.
 * loss_el: the per-element loss times elem_scale (write_loss, EFL_REDUCTION_NONE).
 */
#if !EFL_PLANAR
__kernel __attribute__((reqd_work_group_size(EFL_WGX, 1, 1)))
void efl_step(__global const efl_store_t *restrict x, __global const int *restrict labels,
              __global efl_store_t *restrict grad, __global efl_store_t *restrict loss_el,
              __global float *restrict partials, __global uint *restrict block_flags,
              __global const float *restrict table, __global const float *restrict norm, uint n, uint C,
              uint cpad, uint rows_per_block, uint block0, float alpha_pos, float alpha_neg, float grad_scale,
              float elem_scale, int ignore_index, int convention, int write_grad, int write_loss, int collect,
              int use_norm)
{
    const uint own0 = get_global_id(0) * EFL_VW; /* first column this work-item counts */
    const uint b = get_group_id(1);              /* == get_global_id(1) */
    const uint c0 = min(own0, C - EFL_VW);       /* first column it reads */
    const intV lanes = EFL_LANES + (int)c0;
    const intV own = lanes >= (int)own0;
    /* the device's normalizer is checked by efl_apply, which refuses the step if it is bad */
    const float gs = use_norm ? grad_scale / norm[0] : grad_scale;

    const floatV t0 = efl_loadV(table + c0);
    const floatV t1 = efl_loadV(table + cpad + c0);
#if EFL_MODE != EFL_MODE_EQLV2
    const floatV t2 = efl_loadV(table + 2u * cpad + c0);
    const floatV aw_pos = alpha_pos * t2;
    const floatV aw_neg = alpha_neg * t2;
#endif

    const uint r0 = b * rows_per_block;
#if EFL_ROW_BARRIER
    /* every work-item meets every barrier; one wholly in the padding counts nothing (own) */
    const uint r1 = min(r0 + rows_per_block, n);
#else
    /* work-items wholly in the padding run no rows (a loop bound, not an early return, which
     * stops some runtimes from vectorising) */
    const uint r1 = own0 < C ? min(r0 + rows_per_block, n) : r0;
#endif

    floatV pos = 0.0f, pos_c = 0.0f, neg = 0.0f, neg_c = 0.0f, ls = 0.0f, ls_c = 0.0f;
    uint bad = 0u;
    intV largest_in = 0, largest_out = 0; /* magnitude bits per lane, see efl_column_flags */
    /* Rows go in groups of EFL_UNROLL (per device): a CPU overlaps the group's long dependency
     * chains, and the group's terms are summed plainly before one Kahan step per sum. With
     * EFL_ROW_BARRIER the work-group meets at a barrier after each group: CPU runtimes run a
     * group as a loop over its work-items, and the barrier puts that loop inside the row loop,
     * so the group sweeps rows left to right and the hardware prefetcher sees one sequential
     * stream instead of one load per row per work-item at a stride of C * 4 bytes (too long for
     * stride prefetchers above ~2 KB: 1.4x at C = 1203). The trailing rows go one at a time. */
    for (uint r = r0; r < r1;) {
        const uint k_end = r + EFL_UNROLL <= r1 ? EFL_UNROLL : 1u; /* uniform across the group */
        floatV gp = 0.0f, gn = 0.0f, gl = 0.0f;
        for (uint k = 0; k < k_end; ++k, ++r) {
            const int y = labels[r];
            const size_t idx = (size_t)r * C + c0;
            const floatV xv = efl_load_x(x + idx);
            float valid;
            const int col = efl_label_column(y, (int)C, ignore_index, convention, &valid, &bad);
            const intV is_pos = lanes == col;
            floatV l, g, stat;
            if (collect) {
                /* x holds a gradient the caller computed: only its statistics */
                stat = (valid != 0.0f) ? xv : 0.0f;
                l = 0.0f;
            } else {
#if EFL_MODE == EFL_MODE_EQLV2
                efl_bce_term(xv, is_pos, is_pos ? t0 : t1, &l, &g);
                /* EQLv2's statistics leave out the reduction's scale (docs/semantics.md) */
                stat = (valid != 0.0f) ? g : 0.0f;
#else
#if EFL_VW > 1
                /* Most rows are background, or their class lies in other columns: then no lane
                 * is positive and the selects can go (+8% on AVX-512). A work-item owns whole
                 * vectors here, so this branch never splits a warp; with one column per
                 * work-item (GPUs) it would, hence the condition. Same arithmetic: same bits. */
                if ((uint)(col - (int)c0) >= (uint)EFL_VW)
                    efl_focal_term(xv, (intV)0, t0, t1, aw_neg, &l, &g);
                else
#endif
                    efl_focal_term(xv, is_pos, t0, t1, is_pos ? aw_pos : aw_neg, &l, &g);
#endif
                /* select, not multiply: an ignored row's logit must not reach the sums */
                g = (valid != 0.0f) ? g * gs : 0.0f;
#if EFL_MODE != EFL_MODE_EQLV2
                stat = g;
#endif
                if (write_grad) {
                    efl_store_g(g, grad + idx);
                    largest_out = max(largest_out, efl_magnitude_bits(g));
                }
                if (write_loss) {
                    const floatV le = (valid != 0.0f) ? l * elem_scale : 0.0f;
                    efl_store_g(le, loss_el + idx);
                    largest_out = max(largest_out, efl_magnitude_bits(le));
                }
            }
            if (valid != 0.0f)
                largest_in = max(largest_in, efl_magnitude_bits(xv));
            const floatV ag = own ? fabs(stat) : 0.0f;
            gp += is_pos ? ag : 0.0f;
            gn += is_pos ? 0.0f : ag;
            gl += (own && valid != 0.0f) ? l : 0.0f;
        }
        efl_kahan_add(&pos, &pos_c, gp);
        efl_kahan_add(&neg, &neg_c, gn);
        efl_kahan_add(&ls, &ls_c, gl);
#if EFL_ROW_BARRIER
        barrier(CLK_GLOBAL_MEM_FENCE);
#endif
    }

    /* partials at the columns this work-item owns; a shifted chunk stores lane by lane */
    __global float *pb = partials + (size_t)(block0 + b) * EFL_PARTIAL_ROWS * cpad;
    const uint cflags = efl_column_flags(largest_in, largest_out);
    if (c0 == own0) {
        efl_storeV(pos, pb + c0);
        efl_storeV(neg, pb + cpad + c0);
        efl_storeV(ls, pb + 2u * cpad + c0);
        for (uint k = 0; k < EFL_VW; ++k)
            ((__global uint *)pb)[3u * cpad + c0 + k] = cflags;
    } else {
        float tp[EFL_VW], tn[EFL_VW], tl[EFL_VW];
        efl_storeV(pos, tp);
        efl_storeV(neg, tn);
        efl_storeV(ls, tl);
        for (uint k = own0 - c0; k < EFL_VW && own0 < C; ++k) {
            pb[c0 + k] = tp[k];
            pb[cpad + c0 + k] = tn[k];
            pb[2u * cpad + c0 + k] = tl[k];
            ((__global uint *)pb)[3u * cpad + c0 + k] = cflags;
        }
    }
    if (own0 == 0u)
        block_flags[block0 + b] = bad;
}
#endif /* !EFL_PLANAR */
