/*
 * Last stage of a step (compiled after efl_common.h, before efl_step.cl, whose fused path calls
 * efl_apply_stage), one work-group: the loss total over columns
 * (fixed tree order), then, unless the step is refused, the state update of docs/semantics.md "Gradient
 * accumulation" and the next step's per-class (gamma_j, w_j) table. A step is refused for an
 * invalid label (flagged by efl_step), a non-finite value in a valid row, or a result beyond its
 * type (a stored gradient or element loss, flagged by efl_step; the loss total; the statistics;
 * the new totals or g): loss_out and the state stay as they were, and a refused update is
 * counted in info[1]. So the update is computed twice: once to check every column, once to
 * write, after the work-group has agreed; nothing is half-written.
 *
 * Launch: global (EFL_APPLY_WG), local (EFL_APPLY_WG).
 * state: [3][C] acc_t: pos_grad, neg_grad, g (pos_neg). table: [3][cpad] float: gamma_j (hi, lo), w_j; the padding keeps its initial values.
 * info: [0] flags of the most recent call, [1] steps refused so far.
 * norm: the normalizer on the device (use_norm): loss_scale / norm[0] scales the loss, and a
 *   value that is not finite and > 0 refuses the step.
 * Focal mode keeps no state (its table never changes); EQLv2's g is unclamped and its table holds
 * (pos_w, neg_w). The modes (EFL_APPLY_*) and flags are efl_protocol.h's, shared with the host.
 */
#if EFL_MODE != EFL_MODE_FOCAL
/* Column j's state after the update (docs/semantics.md "Gradient accumulation"), not yet written. No restrict
 * on a helper's pointers: inlined, they become noalias scope intrinsics that Oclgrind 21.10
 * cannot run. */
static inline void efl_updated(__global const acc_t *state, __global const acc_t *step_stats, uint C, uint cpad,
                               uint j, float stat_scale, acc_t *pos, acc_t *neg, acc_t *g)
{
    *pos = acc_add(state[j], acc_scale(step_stats[j], stat_scale));
    *neg = acc_add(state[C + j], acc_scale(step_stats[cpad + j], stat_scale));
    *g = acc_div(*pos, acc_add(*neg, acc_eps()));
#if EFL_MODE != EFL_MODE_EQLV2
    *g = acc_clamp01(*g);
#endif
}
#endif

/* EFL_FLAG_OVERFLOW if column j's statistics (EFL_APPLY_HOLD) or its updated state (an update)
 * do not fit the accumulators; 0 in focal mode, which keeps neither. */
static inline uint efl_column_overflow(__global const acc_t *state, __global const acc_t *step_stats, uint C,
                                       uint cpad, uint j, float stat_scale, int mode)
{
#if EFL_MODE != EFL_MODE_FOCAL
    if (mode == EFL_APPLY_HOLD)
        return acc_isfinite(acc_scale(step_stats[j], stat_scale)) &&
                       acc_isfinite(acc_scale(step_stats[cpad + j], stat_scale))
                   ? 0u
                   : EFL_FLAG_OVERFLOW;
    if (mode == EFL_APPLY_STEP || mode == EFL_APPLY_ACCUMULATE) {
        acc_t pos, neg, g;
        efl_updated(state, step_stats, C, cpad, j, stat_scale, &pos, &neg, &g);
        return acc_isfinite(pos) && acc_isfinite(neg) && acc_isfinite(g) ? 0u : EFL_FLAG_OVERFLOW;
    }
#endif
    return 0u;
}

/* The apply stage for work-item lid of a group of nwi: it takes the tree's lanes lid, lid + nwi, ...
 * of EFL_APPLY_WG and the columns lid, lid + nwi, ... The kernel efl_apply runs it with
 * nwi == EFL_APPLY_WG (a lane each); the fused step (efl_step.cl) with its own group, fewer
 * work-items: the same lanes, the same tree, so the same bits. part and seen: EFL_APPLY_WG each,
 * in local memory. All work-items of the group call it (its barriers). */
static inline void efl_apply_stage(__global const acc_t *step_stats, __global const uint *step_flags, uint cpad,
                                   __global acc_t *state, __global float *table, __global float *loss_out,
                                   __global uint *info, uint C, float gamma_b, float s, float loss_scale, int mode,
                                   float stat_scale, __global const float *norm, int use_norm, int write_loss,
                                   float mu, float alpha, __local acc_t *part, __local uint *seen, uint lid, uint nwi)
{
    uint flags = 0u;
    /* read before the tree's barriers and written as a value, not incremented: PoCL 3.1 ran the
     * lid == 0 block below on every work-item in focal mode (the count rose by the group size) */
    const uint refused = info[1];
    const int updates = mode == EFL_APPLY_STEP || mode == EFL_APPLY_ACCUMULATE;

    if (mode != EFL_APPLY_REFRESH) {
        flags = step_flags[0];
        float scale = loss_scale;
        if (use_norm) {
            const float nv = norm[0];
            scale = loss_scale / nv;
            flags |= (nv > 0.0f && isfinite(nv) && isfinite(scale)) ? 0u : EFL_FLAG_BAD_NORMALIZER;
        }
        for (uint v = lid; v < EFL_APPLY_WG; v += nwi) {
            acc_t l = acc_zero();
            uint col = 0u;
            for (uint j = v; j < C; j += EFL_APPLY_WG) {
                l = acc_add(l, step_stats[2u * cpad + j]);
                col |= step_flags[1u + j] | efl_column_overflow(state, step_stats, C, cpad, j, stat_scale, mode);
            }
            part[v] = l;
            seen[v] = col;
        }
        /* the global fence orders every work-item's read of info[1] before work-item 0 writes it */
        barrier(CLK_LOCAL_MEM_FENCE | CLK_GLOBAL_MEM_FENCE);
        for (uint w = EFL_APPLY_WG / 2; w > 0; w >>= 1) {
            for (uint v = lid; v < w; v += nwi) {
                part[v] = acc_add(part[v], part[v + w]);
                seen[v] |= seen[v + w];
            }
            barrier(CLK_LOCAL_MEM_FENCE);
        }
        /* every work-item reads the verdict after the tree's last barrier: a uniform decision.
         * A reduced loss must be finite as stored, and the elements' sum must fit a float before
         * the scale (the step kernels' partial sums are floats); "none" stores no total. */
        const float total = acc_to_float(part[0]) * scale;
        flags |= seen[0];
        flags |= !write_loss || (acc_isfinite(part[0]) && isfinite(total)) ? 0u : EFL_FLAG_OVERFLOW;
        if (lid == 0u) {
            if (flags == 0u && mode != EFL_APPLY_ACCUMULATE && write_loss)
                loss_out[0] = total;
            info[0] = flags;
            if (flags != 0u && updates)
                info[1] = refused + 1u;
        }
    }
    if (mode == EFL_APPLY_FORWARD || mode == EFL_APPLY_HOLD || flags != 0u)
        return; /* uniform across the work-group: no barrier follows */
#if EFL_MODE != EFL_MODE_FOCAL /* focal loss keeps no state */
    for (uint j = lid; j < C; j += nwi) {
        acc_t g = state[2u * C + j];
        if (updates) {
            acc_t pos, neg;
            efl_updated(state, step_stats, C, cpad, j, stat_scale, &pos, &neg, &g);
            state[j] = pos;
            state[C + j] = neg;
            state[2u * C + j] = g;
        }
#if EFL_MODE == EFL_MODE_EQLV2
        const float2 wts = efl_eqlv2_weights(gamma_b, mu, alpha, g);
        table[j] = wts.x;
        table[cpad + j] = wts.y;
        table[2u * cpad + j] = 1.0f;
#else
        const float2 gamma = efl_gamma_j(gamma_b, s, g);
        table[j] = gamma.x;
        table[cpad + j] = gamma.y;
        table[2u * cpad + j] = gamma.x / gamma_b;
#endif
    }
#endif
}

__kernel __attribute__((reqd_work_group_size(EFL_APPLY_WG, 1, 1)))
void efl_apply(__global const acc_t *restrict step_stats, __global const uint *restrict step_flags, uint cpad,
               __global acc_t *restrict state, __global float *restrict table, __global float *restrict loss_out,
               __global uint *restrict info, uint C, float gamma_b, float s, float loss_scale, int mode,
               float stat_scale, __global const float *restrict norm, int use_norm, int write_loss, float mu,
               float alpha)
{
    __local acc_t part[EFL_APPLY_WG];
    __local uint seen[EFL_APPLY_WG];
    efl_apply_stage(step_stats, step_flags, cpad, state, table, loss_out, info, C, gamma_b, s, loss_scale, mode,
                    stat_scale, norm, use_norm, write_loss, mu, alpha, part, seen, get_local_id(0), EFL_APPLY_WG);
}
