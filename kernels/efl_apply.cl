/*
 * Last stage of a step (compiled after efl_common.h), one work-group: the loss total over columns
 * (fixed tree order), then, unless the step is refused, the state update of SPEC "Gradient
 * accumulation" and the next step's per-class (gamma_j, w_j) table. A step is refused for an
 * invalid label (flagged by efl_step) or a non-finite value in a valid row (the loss total is
 * then NaN): loss_out and the state stay as they were, and a refused update is counted in
 * info[1].
 *
 * Launch: global (EFL_APPLY_WG), local (EFL_APPLY_WG).
 * state: [3][C] acc_t: pos_grad, neg_grad, g (pos_neg). table: [3][cpad] float: gamma_j (hi, lo), w_j; the padding keeps its initial values.
 * info: [0] flags of the most recent call, [1] steps refused so far.
 * norm: the normalizer on the device (use_norm): loss_scale / norm[0] scales the loss, and a
 *   value that is not finite and > 0 refuses the step.
 * Focal mode keeps no state (its table never changes); EQLv2's g is unclamped and its table holds
 * (pos_w, neg_w). The modes (EFL_APPLY_*) and flags are efl_protocol.h's, shared with the host.
 */
__kernel __attribute__((reqd_work_group_size(EFL_APPLY_WG, 1, 1)))
void efl_apply(__global const acc_t *restrict step_stats, __global const uint *restrict step_flags, uint cpad,
               __global acc_t *restrict state, __global float *restrict table, __global float *restrict loss_out,
               __global uint *restrict info, uint C, float gamma_b, float s, float loss_scale, int mode,
               float stat_scale, __global const float *restrict norm, int use_norm, int write_loss, float mu,
               float alpha)
{
    __local acc_t part[EFL_APPLY_WG];
    const uint lid = get_local_id(0);
    uint flags = 0u;
    /* read before the tree's barriers and written as a value, not incremented: PoCL 3.1 ran the
     * lid == 0 block below on every work-item in focal mode (the count rose by the group size) */
    const uint refused = info[1];

    if (mode != EFL_APPLY_REFRESH) {
        flags = step_flags[0];
        float scale = loss_scale;
        if (use_norm) {
            const float nv = norm[0];
            scale = loss_scale / nv;
            flags |= (nv > 0.0f && isfinite(nv) && isfinite(scale)) ? 0u : EFL_FLAG_BAD_NORMALIZER;
        }
        acc_t l = acc_zero();
        for (uint j = lid; j < C; j += EFL_APPLY_WG)
            l = acc_add(l, step_stats[2u * cpad + j]);
        part[lid] = l;
        /* the global fence orders every work-item's read of info[1] before work-item 0 writes it */
        barrier(CLK_LOCAL_MEM_FENCE | CLK_GLOBAL_MEM_FENCE);
        for (uint w = EFL_APPLY_WG / 2; w > 0; w >>= 1) {
            if (lid < w)
                part[lid] = acc_add(part[lid], part[lid + w]);
            barrier(CLK_LOCAL_MEM_FENCE);
        }
        /* every work-item reads the total after the tree's last barrier: a uniform decision */
        flags |= acc_isfinite(part[0]) ? 0u : EFL_FLAG_NONFINITE;
        if (lid == 0u) {
            if (flags == 0u && mode != EFL_APPLY_ACCUMULATE && write_loss)
                loss_out[0] = acc_to_float(part[0]) * scale;
            info[0] = flags;
            if (flags != 0u && mode != EFL_APPLY_FORWARD)
                info[1] = refused + 1u;
        }
    }
    if (mode == EFL_APPLY_FORWARD || flags != 0u)
        return; /* uniform across the work-group: no barrier follows */
#if EFL_MODE != EFL_MODE_FOCAL /* focal loss keeps no state */
    for (uint j = lid; j < C; j += EFL_APPLY_WG) {
        acc_t g = state[2u * C + j];
        if (mode != EFL_APPLY_REFRESH) {
            const acc_t pos = acc_add(state[j], acc_scale(step_stats[j], stat_scale));
            const acc_t neg = acc_add(state[C + j], acc_scale(step_stats[cpad + j], stat_scale));
            state[j] = pos;
            state[C + j] = neg;
            g = acc_div(pos, acc_add(neg, acc_eps()));
#if EFL_MODE != EFL_MODE_EQLV2
            g = acc_clamp01(g);
#endif
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
