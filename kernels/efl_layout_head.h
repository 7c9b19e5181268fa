/*
 * The head layouts' addressing for the step kernel (efl_step.cl), in programs built with
 * EFL_PLANAR=1: one FPN level of a detection head's outputs, [B, A*C, H, W], read in place.
 *
 * Launch: global (cpad, nblocks), local (EFL_WGX, 1). Work-item (c, b) owns class c and the rows
 * [b * rows_per_block, ...) of the level, and visits them EFL_VW rows at a time. Row r of the level
 * is location s = r % (H*W) of anchor plane ba = r / (H*W) (image ba / A, anchor ba % A); in this
 * layout a class of one anchor plane is H*W contiguous values, so the lanes of a vector are
 * consecutive rows, loaded as one vector (CPUs), and each work-item streams through its own plane.
 * Its label is the concatenated row's, image * R + loff + s * A + a: efl_head_labels
 * (efl_head_labels.cl) first copies the level's labels into its own row order (a 1/C-sized pass),
 * so they too load as vectors, decoded lane by lane, where a stride-A gather per class would
 * not. A visit that would cross a plane's end or the block's end goes lane by lane.
 *
 * Element (img, a, c, s) is at img * bstride + a * astride + c * cs + s: anchor-major
 * (channel a*C + c) has cs = H*W, astride = C*H*W; class-major (channel c*A + a) has cs = A*H*W,
 * astride = H*W; bstride = A*C*H*W either way (the kernel's hw, anchors, cs, astride, bstride).
 */
#if EFL_PLANAR
#define EFL_STEP_KERNEL efl_step_head
#define EFL_VISIT_ROWS EFL_VW
typedef intV efl_row_t; /* a visit's labels, one per lane, and what is decoded from them */

#define efl_row_any(m) efl_any(m)

#if EFL_VW == 1
#define efl_load_labels(p) (*(p))
#elif EFL_VW == 4
#define efl_load_labels(p) vload4(0, (p))
#elif EFL_VW == 8
#define efl_load_labels(p) vload8(0, (p))
#else
#define efl_load_labels(p) vload16(0, (p))
#endif

/* n / d for n < 2^31 and 1 <= d < 2^31 by one 32 x 32 -> 64-bit multiply and a shift (a
 * 64-bit mul_hi is four multiplies on CPU runtimes): with l = ceil(log2 d), p = 31 + l and
 * m = ceil(2^p / d) < 2^32, n m / 2^p = n / d + n e / 2^p with 0 <= e < 1, and n e / 2^p < 2^-l
 * <= 1 / d, so the floor is the quotient's. Rows are below 2^31 (lib/step.c checks it). */
typedef struct {
    ulong m;
    uint p;
} efl_divisor;

EFL_INLINE void efl_divisor_init(efl_divisor *v, uint d)
{
    v->p = 31u + (32u - (uint)clz(d - 1u));
    v->m = ((1UL << v->p) + d - 1UL) / d;
}

EFL_INLINE uint efl_div(uint n, const efl_divisor *v) { return (uint)(((ulong)n * v->m) >> v->p); }

/* The class a work-item reads and the level's geometry. */
typedef struct {
    uint cr;    /* its class; padding work-items read a real one and count nothing */
    uint hw;
    efl_divisor hw_d, a_d; /* hw and anchors as divisors (efl_div) */
    ulong astride;
    ulong img_extra;  /* bstride - anchors * astride: an image's step beyond its planes' */
    ulong class0;     /* cr * cs: where its class starts in a plane */
    int active; /* it owns a class: it stores */
} efl_place;

/* The lanes it counts: every one (lanes are rows). */
EFL_INLINE intV efl_own(const efl_place *at) { return (intV)(-1); }

EFL_INLINE void efl_place_init(efl_place *p, uint C, uint hw, uint anchors, ulong cs, ulong astride,
                               ulong bstride)
{
    const uint c = get_global_id(0);
    p->cr = min(c, C - 1u);
    p->hw = hw;
    efl_divisor_init(&p->hw_d, hw);
    efl_divisor_init(&p->a_d, anchors);
    p->astride = astride;
    p->img_extra = bstride - (ulong)anchors * astride;
    p->class0 = (ulong)p->cr * cs;
    p->active = c < C;
}

/* The work-item's class factor of the table, in every lane. */
EFL_INLINE floatV efl_load_factor(const efl_place *at, __global const float *row) { return (floatV)row[at->cr]; }

EFL_INLINE intV efl_positive(const efl_place *at, efl_row_t col) { return col == (int)at->cr; }

/* No lane positive: none of the visit's rows is of this class. */
EFL_INLINE int efl_all_negative(const efl_place *at, efl_row_t col, intV is_pos) { return !efl_any(is_pos); }

/* Vectors per visit group: EFL_UNROLL while the rows last. At least one (r < r1), written so that
 * EFL_UNROLL = 1 folds to a constant. */
EFL_INLINE uint efl_group_visits(uint r, uint r1)
{
    return 1u + min(EFL_UNROLL - 1u, (r1 - r - 1u) / EFL_VW);
}

/* Row r of a level: its image, anchor and location (efl_head_labels uses it too). */
EFL_INLINE void efl_head_row(uint r, uint hw, uint anchors, uint *img, uint *a, uint *s)
{
    const uint ba = r / hw;
    *s = r - ba * hw;
    *img = ba / anchors;
    *a = ba - *img * anchors;
}

/* Where the work-item's element of row r lies; *s: the row's location. With ba = r / hw the
 * anchor plane and img = ba / anchors its image, img * bstride + a * astride = ba * astride +
 * img * img_extra (a = ba - img * anchors): two multiplies, no division. */
EFL_INLINE size_t efl_head_offset(const efl_place *at, uint r, uint *s)
{
    const uint ba = efl_div(r, &at->hw_d);
    *s = r - ba * at->hw;
    const uint img = efl_div(ba, &at->a_d);
    return (size_t)((ulong)ba * at->astride + (ulong)img * at->img_extra + at->class0 + *s);
}

/* Rows r ... r + EFL_VW - 1: one vector where they lie in the block and in one plane (the same
 * for every work-item), else lane by lane. */
EFL_INLINE void efl_visit_at(efl_visit *v, const efl_place *at, uint r, uint r1)
{
    uint s;
    v->r = r;
    v->first = efl_head_offset(at, r, &s);
    v->whole = r + EFL_VW <= r1 && s + EFL_VW <= at->hw;
}

/* The visit's elements and labels; lanes past the block's end read as ignored rows. */
EFL_INLINE void efl_visit_load(const efl_place *at, const efl_visit *v, __global const efl_store_t *x,
                               __global const int *labels, uint r1, int ignore_index, floatV *xv, efl_row_t *y)
{
    if (v->whole) {
        *y = efl_load_labels(labels + v->r);
        *xv = efl_load_x(x + v->first);
        return;
    }
    int yt[EFL_VW];
    float xt[EFL_VW];
    for (uint k = 0, rk = v->r, s; k < EFL_VW; ++k, ++rk) {
        yt[k] = rk < r1 ? labels[rk] : ignore_index;
        xt[k] = rk < r1 ? EFL_LOAD1(x + efl_head_offset(at, rk, &s)) : 0.0f;
    }
    *xv = efl_loadV(xt);
    *y = efl_load_labels(yt);
}

/* The visit's values of an output (gradient or element loss). Lanes past the block's end are
 * ignored rows (0 there) and are not stored. */
EFL_INLINE void efl_visit_store(const efl_place *at, const efl_visit *v, __global efl_store_t *out, floatV value,
                                uint r1)
{
    if (!at->active)
        return;
    if (v->whole) {
        efl_store_g(value, out + v->first);
        return;
    }
    float t[EFL_VW];
    efl_storeV(value, t);
    for (uint k = 0, rk = v->r, s; k < EFL_VW; ++k, ++rk)
        if (rk < r1)
            EFL_STORE1(t[k], out + efl_head_offset(at, rk, &s));
}

/* sum of the lanes in a fixed order */
EFL_INLINE float efl_hsum(floatV v)
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

/* The class's sums: its lanes are rows, added up. */
EFL_INLINE void efl_store_partials(const efl_place *at, __global float *pb, uint cpad, const efl_sums *s,
                                   uint cflags)
{
    if (!at->active)
        return;
    const uint c = at->cr;
    pb[c] = efl_hsum(s->pos - s->pos_c);
    pb[cpad + c] = efl_hsum(s->neg - s->neg_c);
    pb[2u * cpad + c] = efl_hsum(s->loss - s->loss_c);
    ((__global uint *)pb)[3u * cpad + c] = cflags;
}
#endif /* EFL_PLANAR */
