/*
 * A head level's labels in its own row order (compiled after efl_layout_head.h, in programs built
 * with EFL_PLANAR=1): out[lab0 + r] for row r = (image * A + a) * H*W + s of the level, from the
 * concatenated rows' labels, image * R + loff + s * A + a (efl_layout_head.h says why).
 *
 * Launch: global (n).
 */
#if EFL_PLANAR
__kernel void efl_head_labels(__global const int *restrict labels, __global int *restrict out, uint n, uint hw,
                              uint anchors, uint R, uint loff, uint lab0)
{
    const uint r = get_global_id(0);
    if (r >= n)
        return;
    uint img, a, s;
    efl_head_row(r, hw, anchors, &img, &a, &s);
    out[lab0 + r] = labels[(size_t)img * R + loff + (size_t)s * anchors + a];
}
#endif /* EFL_PLANAR */
