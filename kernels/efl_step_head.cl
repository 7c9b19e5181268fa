/*
 * The fused pass on a detection head's own outputs (compiled after efl_common.h, in programs built
 * with EFL_PLANAR=1): one FPN level, [B, A*C, H, W], read in place. Same per-element arithmetic
 * and the same partials as efl_step.cl, over the transposed work split.
 *
 * Launch: global (cpad, nblocks), local (EFL_WGX, 1). Work-item (c, b) owns class c and the rows
 * [b * rows_per_block, ...) of the level, EFL_VW rows per vector. Row r of the level is location
 * s = r % (H*W) of anchor plane ba = r / (H*W) (image ba / A, anchor ba % A); in this layout a class
 * of one anchor plane is H*W contiguous values, so the lanes of a vector are consecutive rows,
 * loaded as one vector (CPUs), and each work-item streams through its own plane. Its label is the
 * concatenated row's, image * R + loff + s * A + a: efl_head_labels first copies the level's
 * labels into its own row order (a 1/C-sized pass), so they too load as vectors, decoded lane by
 * lane (EFL_DECODE_LABEL); a stride-A gather per class cost 30% at A = 2. A vector that would
 * cross a plane's end or the block's end goes lane by lane.
 *
 * Element (img, a, c, s) is at img * bstride + a * astride + c * cs + s: anchor-major
 * (channel a*C + c) has cs = H*W, astride = C*H*W; class-major (channel c*A + a) has cs = A*H*W,
 * astride = H*W; bstride = A*C*H*W either way. The other arguments are efl_step's; labels holds
 * the level's labels in its row order from lab0 on.
 */
#if EFL_PLANAR

#if EFL_VW == 1
#define efl_loadI(p) (*(p))
#elif EFL_VW == 4
#define efl_loadI(p) vload4(0, (p))
#elif EFL_VW == 8
#define efl_loadI(p) vload8(0, (p))
#else
#define efl_loadI(p) vload16(0, (p))
#endif

/* sum of the lanes in a fixed order */
static inline float efl_hsum(floatV v)
{
#if EFL_VW == 1
    return v;
#else
    float t[EFL_VW];
    efl_storeV(v, t);
    float s = 0.0f;
    for (uint k = 0; k < EFL_VW; ++k)
        s += t[k];
    return s;
#endif
}

__kernel __attribute__((reqd_work_group_size(EFL_WGX, 1, 1)))
void efl_step_head(__global const efl_store_t *restrict x, __global const int *restrict labels,
                   __global efl_store_t *restrict grad, __global efl_store_t *restrict loss_el,
                   __global float *restrict partials, __global uint *restrict block_flags,
                   __global const float *restrict table, __global const float *restrict norm, uint n, uint C,
                   uint cpad, uint rows_per_block, uint block0, float alpha_pos, float alpha_neg, float grad_scale,
                   float elem_scale, int ignore_index, int convention, int write_grad, int write_loss, int collect,
                   int use_norm, uint hw, uint anchors, uint lab0, ulong cs, ulong astride, ulong bstride)
{
    const uint c = get_global_id(0);
    const uint b = get_group_id(1);
    const uint cr = min(c, C - 1u); /* padding work-items read a real class and count nothing */
    const float gs = use_norm ? grad_scale / norm[0] : grad_scale; /* efl_apply checks norm */
    const float t0 = table[cr], t1 = table[cpad + cr];
#if EFL_MODE != EFL_MODE_EQLV2
    const float aw_pos = alpha_pos * table[2u * cpad + cr], aw_neg = alpha_neg * table[2u * cpad + cr];
#endif
    const uint r0 = b * rows_per_block;
#if EFL_ROW_BARRIER
    const uint r1 = min(r0 + rows_per_block, n); /* every work-item meets every barrier */
#else
    const uint r1 = c < C ? min(r0 + rows_per_block, n) : r0;
#endif

    floatV pos = 0.0f, pos_c = 0.0f, neg = 0.0f, neg_c = 0.0f, ls = 0.0f, ls_c = 0.0f;
    uint bad = 0u;
    intV largest_in = 0, largest_out = 0; /* magnitude bits per lane, see efl_column_flags */
    /* EFL_UNROLL vectors summed plainly, then one Kahan step per sum (as efl_step) */
    for (uint r = r0; r < r1;) {
        floatV gp = 0.0f, gn = 0.0f, gl = 0.0f;
        for (uint u = 0; u < EFL_UNROLL && r < r1; ++u, r += EFL_VW) {
            const uint ba = r / hw, s = r - ba * hw, img = ba / anchors, a = ba - img * anchors;
            const size_t base = (size_t)img * bstride + (size_t)a * astride + (size_t)cr * cs;
            const int whole = r + EFL_VW <= r1 && s + EFL_VW <= hw; /* the same for every work-item */
            floatV xv;
            intV y;
            if (whole) {
                y = efl_loadI(labels + lab0 + r);
                xv = efl_load_x(x + base + s);
            } else {
                int yt[EFL_VW];
                float xt[EFL_VW];
                for (uint k = 0; k < EFL_VW; ++k) {
                    /* lanes past the block's end read as ignored rows */
                    const uint rk = r + k, bk = rk / hw, sk = rk - bk * hw, ik = bk / anchors, ak = bk - ik * anchors;
                    const size_t at = (size_t)ik * bstride + (size_t)ak * astride + (size_t)cr * cs + sk;
                    yt[k] = rk < r1 ? labels[lab0 + rk] : ignore_index;
                    xt[k] = rk < r1 ? EFL_LOAD1(x + at) : 0.0f;
                }
                xv = efl_loadV(xt);
                y = efl_loadI(yt);
            }
            const intV col = EFL_DECODE_LABEL(y, (int)C, ignore_index, convention);
            bad |= efl_any(col == EFL_ROW_INVALID) ? EFL_FLAG_INVALID_LABEL : 0u;
            const intV valid = col >= EFL_ROW_BACKGROUND;
            const intV is_pos = col == (int)cr;
            floatV l, g, stat;
            if (collect) {
                stat = valid ? xv : 0.0f;
                l = 0.0f;
            } else {
    #if EFL_MODE == EFL_MODE_EQLV2
                efl_bce_term(xv, is_pos, is_pos ? t0 : t1, &l, &g);
                stat = valid ? g : 0.0f; /* EQLv2's statistics leave out the reduction's scale */
    #else
                efl_focal_term(xv, is_pos, t0, t1, is_pos ? aw_pos : aw_neg, &l, &g);
    #endif
                g = valid ? g * gs : 0.0f;
    #if EFL_MODE != EFL_MODE_EQLV2
                stat = g;
    #endif
                const floatV le = valid ? l * elem_scale : 0.0f;
                /* lanes past the block's end are ignored rows: g and le are 0 there */
                if (write_grad)
                    largest_out = max(largest_out, efl_magnitude_bits(g));
                if (write_loss)
                    largest_out = max(largest_out, efl_magnitude_bits(le));
                if (c < C && whole) {
                    if (write_grad)
                        efl_store_g(g, grad + base + s);
                    if (write_loss)
                        efl_store_g(le, loss_el + base + s);
                } else if (c < C) {
                    float gt[EFL_VW], lt[EFL_VW];
                    efl_storeV(g, gt);
                    efl_storeV(le, lt);
                    for (uint k = 0; k < EFL_VW && r + k < r1; ++k) {
                        const uint rk = r + k, bk = rk / hw, sk = rk - bk * hw, ik = bk / anchors, ak = bk - ik * anchors;
                        const size_t at = (size_t)ik * bstride + (size_t)ak * astride + (size_t)cr * cs + sk;
                        if (write_grad)
                            EFL_STORE1(gt[k], grad + at);
                        if (write_loss)
                            EFL_STORE1(lt[k], loss_el + at);
                    }
                }
            }
            largest_in = max(largest_in, valid ? efl_magnitude_bits(xv) : (intV)0);
            const floatV ag = fabs(stat);
            gp += is_pos ? ag : 0.0f;
            gn += is_pos ? 0.0f : ag;
            gl += valid ? l : 0.0f;
        }
        efl_kahan_add(&pos, &pos_c, gp);
        efl_kahan_add(&neg, &neg_c, gn);
        efl_kahan_add(&ls, &ls_c, gl);
#if EFL_ROW_BARRIER
        barrier(CLK_GLOBAL_MEM_FENCE);
#endif
    }
    __global float *pb = partials + (size_t)(block0 + b) * EFL_PARTIAL_ROWS * cpad;
    if (c < C) {
        pb[c] = efl_hsum(pos - pos_c);
        pb[cpad + c] = efl_hsum(neg - neg_c);
        pb[2u * cpad + c] = efl_hsum(ls - ls_c);
        ((__global uint *)pb)[3u * cpad + c] = efl_column_flags(largest_in, largest_out);
    }
    if (c == 0u)
        block_flags[block0 + b] = bad;
}

/* The level's labels in its own row order: out[lab0 + r] for row r = (image * A + a) * H*W + s.
 * Launch: global (n). */
__kernel void efl_head_labels(__global const int *restrict labels, __global int *restrict out, uint n, uint hw,
                              uint anchors, uint R, uint loff, uint lab0)
{
    const uint r = get_global_id(0);
    if (r >= n)
        return;
    const uint ba = r / hw, s = r - ba * hw, img = ba / anchors, a = ba - img * anchors;
    out[lab0 + r] = labels[(size_t)img * R + loff + (size_t)s * anchors + a];
}

#endif /* EFL_PLANAR */
