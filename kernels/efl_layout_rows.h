/*
 * The rows layout's addressing for the step kernel (efl_step.cl), in programs built with
 * EFL_PLANAR=0: logits [n][C], row-major; labels [n].
 *
 * Launch: global (cpad / EFL_VW, nblocks), local (EFL_WGX, 1). Work-item (i, b) owns the EFL_VW
 * columns i * EFL_VW ... of the rows [b * rows_per_block, ...) and visits them a row at a time:
 * a row is read by consecutive work-items (coalesced on GPUs, EFL_VW = 1) or as one vector per
 * work-item (CPU runtimes, EFL_VW = 8 or 16: they do not vectorise a work-item loop around a row
 * loop). A visit's lanes are columns of one row, so its label is one int for every lane.
 *
 * The last chunk of a row (C not a multiple of EFL_VW; C >= EFL_VW is guaranteed by the host)
 * is shifted left to end at column C: it recomputes some of the previous chunk's columns and
 * stores the same gradient bits there, but counts only its own columns in the sums (own). So every
 * load and store is a whole vector, with no per-lane path inside the row loop.
 */
#if !EFL_PLANAR
#define EFL_STEP_KERNEL efl_step
#define EFL_VISIT_ROWS 1u
typedef int efl_row_t; /* a visit's label and what is decoded from it */
#define efl_row_any(m) ((m) != 0) /* (a scalar comparison gives 1) */
#define efl_load_labels(p) (*(p))

/* The columns a work-item reads and those it counts. */
typedef struct {
    uint c0;    /* first column it reads */
    uint own0;  /* first column it counts */
    uint C;
    int active; /* it owns a column (else it runs rows only to meet the barriers) */
} efl_place;

/* Each lane's column. */
EFL_INLINE intV efl_lanes(const efl_place *at) { return EFL_LANES + (int)at->c0; }

/* The lanes it counts. */
EFL_INLINE intV efl_own(const efl_place *at) { return efl_lanes(at) >= (int)at->own0; }

EFL_INLINE void efl_place_init(efl_place *p, uint C, uint hw, uint anchors, ulong cs, ulong astride,
                               ulong bstride)
{
    p->own0 = get_global_id(0) * EFL_VW;
    p->c0 = min(p->own0, C - EFL_VW);
    p->C = C;
    p->active = p->own0 < C;
}

/* A column factor of the table, per lane. */
EFL_INLINE floatV efl_load_factor(const efl_place *at, __global const float *row) { return efl_loadV(row + at->c0); }

EFL_INLINE intV efl_positive(const efl_place *at, efl_row_t col) { return efl_lanes(at) == col; }

/* No lane positive: the row's class (or a negative code) lies outside the columns read. */
EFL_INLINE int efl_all_negative(const efl_place *at, efl_row_t col, intV is_pos)
{
    return (uint)(col - (int)at->c0) >= (uint)EFL_VW;
}

/* Rows per visit group: EFL_UNROLL while they last, then one at a time (uniform across the group). */
EFL_INLINE uint efl_group_visits(uint r, uint r1) { return r + EFL_UNROLL <= r1 ? EFL_UNROLL : 1u; }

/* Row r: always a whole vector. */
EFL_INLINE void efl_visit_at(efl_visit *v, const efl_place *at, uint r, uint r1)
{
    v->r = r;
    v->first = (size_t)r * at->C + at->c0;
    v->whole = 1;
}

EFL_INLINE void efl_visit_load(const efl_place *at, const efl_visit *v, __global const efl_store_t *x,
                               __global const int *labels, uint r1, int ignore_index, floatV *xv, efl_row_t *y)
{
    *y = efl_load_labels(labels + v->r);
    *xv = efl_load_x(x + v->first);
}

/* The visit's values of an output (gradient or element loss). */
EFL_INLINE void efl_visit_store(const efl_place *at, const efl_visit *v, __global efl_store_t *out, floatV value,
                                uint r1)
{
    efl_store_g(value, out + v->first);
}

/* The sums at the columns this work-item owns; a shifted chunk stores lane by lane. */
EFL_INLINE void efl_store_partials(const efl_place *at, __global float *pb, uint cpad, const efl_sums *s,
                                   uint cflags)
{
    const uint c0 = at->c0, own0 = at->own0;
    if (c0 == own0) {
        efl_storeV(s->pos, pb + c0);
        efl_storeV(s->neg, pb + cpad + c0);
        efl_storeV(s->loss, pb + 2u * cpad + c0);
        for (uint k = 0; k < EFL_VW; ++k)
            ((__global uint *)pb)[3u * cpad + c0 + k] = cflags;
        return;
    }
    float tp[EFL_VW], tn[EFL_VW], tl[EFL_VW];
    efl_storeV(s->pos, tp);
    efl_storeV(s->neg, tn);
    efl_storeV(s->loss, tl);
    for (uint k = own0 - c0; k < EFL_VW && own0 < at->C; ++k) {
        pb[c0 + k] = tp[k];
        pb[cpad + c0 + k] = tn[k];
        pb[2u * cpad + c0 + k] = tl[k];
        ((__global uint *)pb)[3u * cpad + c0 + k] = cflags;
    }
}
#endif /* !EFL_PLANAR */
