/*
 * Shared by every efl kernel; the library compiles it after efl_labels.h and efl_protocol.h, in
 * front of each .cl file, with these -D defines (lib/device.c):
 *   EFL_WGX        columns per work-group of the step and reduce kernels
 *   EFL_APPLY_WG   work-group size of the apply kernel (a power of two)
 *   EFL_FP64       1: accumulate in double (cl_khr_fp64); 0: compensated float pairs
 *   EFL_VW         lanes of the step kernel's vectors (1, 4, 8 or 16): columns of a row (rows
 *                  layout) or rows of a class (head layouts)
 *   EFL_FMA        1 where fma is done in hardware (CL_FP_FMA)
 *   EFL_UNROLL     visits per group in the step's row loop (summed plainly, then one Kahan step)
 *   EFL_ROW_BARRIER 1: a work-group sweeps each row together (CPU runtimes)
 *   EFL_DTYPE      storage of logits and gradients: 0 float32, 1 float16, 2 bfloat16
 *   EFL_MODE       0 EFL, 1 focal loss (the table never changes), 2 EQLv2 (efl.h efl_mode)
 *   EFL_PLANAR     the step kernel's addressing: 1 a detection head's levels (efl_layout_head.h),
 *                  0 rows (efl_layout_rows.h)
 *
 * Every formula of the loss lives here, once.
 */
#ifndef EFL_COMMON_H
#define EFL_COMMON_H

#if EFL_FP64
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
#endif

#ifndef EFL_UNROLL
#define EFL_UNROLL 1
#endif
#ifndef EFL_ROW_BARRIER
#define EFL_ROW_BARRIER 0
#endif
#ifndef EFL_MODE
#define EFL_MODE 0
#endif
#define EFL_MODE_FOCAL 1
#define EFL_MODE_EQLV2 2
#ifndef EFL_PLANAR
#define EFL_PLANAR 0
#endif

/* ------------------------------------------------------------------- math */
/* The step kernel works on EFL_VW elements per work-item at a time (explicit vectors: CPU
 * runtimes do not vectorise a work-item loop that contains the row loop). floatV is float for
 * EFL_VW == 1 (GPUs), else a vector; the math below is written once for both. */
#ifndef EFL_VW
#define EFL_VW 1
#endif
#if EFL_VW == 1
typedef float floatV;
typedef int intV;
#define EFL_LANES 0
#define efl_loadV(p) (*(p))
#define efl_storeV(v, p) (*(p) = (v))
#define efl_as_floatV as_float
#define efl_as_intV as_int
#define efl_convert_intV convert_int
#elif EFL_VW == 4
typedef float4 floatV;
typedef int4 intV;
#define EFL_LANES ((int4)(0, 1, 2, 3))
#define efl_loadV(p) vload4(0, (p))
#define efl_storeV(v, p) vstore4((v), 0, (p))
#define efl_as_floatV as_float4
#define efl_as_intV as_int4
#define efl_convert_intV convert_int4
#elif EFL_VW == 8
typedef float8 floatV;
typedef int8 intV;
#define EFL_LANES ((int8)(0, 1, 2, 3, 4, 5, 6, 7))
#define efl_loadV(p) ((float8)(vload4(0, (p)), vload4(1, (p))))
#define efl_storeV(v, p) (vstore4((v).lo, 0, (p)), vstore4((v).hi, 1, (p)))
#define efl_as_floatV as_float8
#define efl_as_intV as_int8
#define efl_convert_intV convert_int8
#elif EFL_VW == 16
typedef float16 floatV;
typedef int16 intV;
#define EFL_LANES ((int16)(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15))
/* four float4 moves, not vload16: PoCL's vload16 from a 4-byte-aligned row start (C odd, the
 * LVIS case) ran the step 1.6x slower */
#define efl_loadV(p) ((float16)(vload4(0, (p)), vload4(1, (p)), vload4(2, (p)), vload4(3, (p))))
#define efl_storeV(v, p)                                                                           \
    (vstore4((v).s0123, 0, (p)), vstore4((v).s4567, 1, (p)), vstore4((v).s89ab, 2, (p)),          \
     vstore4((v).scdef, 3, (p)))
#define efl_as_floatV as_float16
#define efl_as_intV as_int16
#define efl_convert_intV convert_int16
#else
#error "EFL_VW must be 1, 4, 8 or 16"
#endif

/* Storage of logits and gradients (EFL_DTYPE): float32, float16 or bfloat16 (the top 16 bits of
 * a float, rounded to nearest even). Arithmetic is float32 throughout, and no storage type needs
 * cl_khr_fp16 (core OpenCL 1.2, so NVIDIA's OpenCL has them too).
 *
 * Single values (EFL_VW == 1, the GPU shape, and the head layouts' per-lane edges) use
 * vload_half / vstore_half_rte: GPUs convert in hardware. Vectors of 16-bit values (CPU runtimes)
 * move as one EFL_VW-wide ushort vector, stored through a packed struct (PoCL splits a ushort
 * vstoreN into N 16-bit stores), and are converted with integer bit operations and selects on
 * the whole vector (efl_f16_to_f32 / efl_f32_to_f16, efl_bf16_V), which a compiler without
 * hardware half conversions would otherwise do one element at a time; float16 keeps the
 * built-ins where it has them (EFL_F16_BITS). Both give the same bits as the built-ins for every
 * value but NaN's payload (tests/test_half.c: all 65536 halves and a set of floats, each way, on
 * each device). */
#ifndef EFL_DTYPE
#define EFL_DTYPE 0
#endif
/* float16 vectors by the bit operations (1) or by vload_half4 / vstore_half4_rte (0): the
 * built-ins where the compiler targets x86 with F16C (PoCL defines __F16C__ there), which has
 * instructions for four and eight conversions at once. */
#ifndef EFL_F16_BITS
#ifdef __F16C__
#define EFL_F16_BITS 0
#else
#define EFL_F16_BITS 1
#endif
#endif
#if ((EFL_DTYPE == 1 && EFL_F16_BITS) || EFL_DTYPE == 2) && EFL_VW > 1
#if EFL_VW == 4
typedef ushort4 efl_ushortV;
typedef uint4 efl_uintV;
#define efl_as_uintV as_uint4
#define efl_vload_u16(p) vload4(0, (__global const ushort *)(p))
#define efl_convert_floatV convert_float4
/* the low 16 bits of each lane (little endian), by reinterpretation: cheaper than convert_ushort4
 * on PoCL */
#define efl_low16(i) (as_ushort8(i).even)
#elif EFL_VW == 8
typedef ushort8 efl_ushortV;
typedef uint8 efl_uintV;
#define efl_as_uintV as_uint8
#define efl_vload_u16(p) vload8(0, (__global const ushort *)(p))
#define efl_convert_floatV convert_float8
#define efl_low16(i) (as_ushort16(i).even)
#else
typedef ushort16 efl_ushortV;
typedef uint16 efl_uintV;
#define efl_as_uintV as_uint16
#define efl_vload_u16(p) vload16(0, (__global const ushort *)(p))
#define efl_convert_floatV convert_float16
#define efl_low16(i) ((ushort16)(as_ushort16((i).lo).even, as_ushort16((i).hi).even))
#endif
/* Stores through a packed struct (alignment 1, as vstore's 2): PoCL writes a ushort vstoreN as
 * N separate 16-bit stores, this as one vector store. */
typedef struct __attribute__((packed)) {
    efl_ushortV v;
} efl_ushortV_unaligned;
#define efl_vstore_u16(u, p) (((__global efl_ushortV_unaligned *)(p))->v = (u))
/* 16-bit lanes widened to int (zero-extended) */
#define efl_widen16(u) efl_as_intV(upsample((efl_ushortV)0, (u)))
#endif

#if EFL_DTYPE == 1 && EFL_VW > 1 && EFL_F16_BITS
/* IEEE half bits (in the low 16 bits of each lane) -> float, exactly as vload_half: a normal
 * half moves its exponent and mantissa up by 13 bits and rebiases (+112 << 23); infinity and NaN
 * rebias to 0xFF (+224 << 23), keeping the payload, and NaN comes out quiet as from the
 * built-in; a denormal or zero is its mantissa times 2^-24, which int -> float and the product
 * give exactly. (Vector comparisons give -1 per true lane, so "& bits" is a select.) */
static inline floatV efl_f16_to_f32(intV h)
{
    const intV em = h & 0x7FFF;
    intV o = (em << 13) + (112 << 23);
    o = select(o, (o + (112 << 23)) | ((em > 0x7C00) & 0x400000), em >= 0x7C00);
    o = select(o, efl_as_intV(efl_convert_floatV(em) * 0x1p-24f), em < 0x400);
    return efl_as_floatV(o | ((h & 0x8000) << 16));
}
/* float -> IEEE half bits, rounded to nearest even, exactly as vstore_half_rte. Normal halves
 * (|f| >= 2^-14): rebias (-112 << 23) and round the 13 dropped bits by adding 0xFFF plus the kept
 * lowest bit (ties to even), which carries into the exponent where the mantissa is full, up to
 * infinity from 65520 on; beyond that, infinity. Denormal halves: |f| + 0.5 puts the value's
 * multiples of 2^-24 in the float's low mantissa bits, rounded to nearest even by the float
 * addition itself. NaN becomes the quiet NaN 0x7E00 with its sign (the built-ins differ here:
 * PoCL gives 0x7FFF, Mesa's rusticl 0x7E00; a step that meets NaN is refused anyway). */
static inline intV efl_f32_to_f16(floatV f)
{
    const intV b = efl_as_intV(f), a = b & 0x7FFFFFFF;
    intV h = (a - ((112 << 23) - 0xFFF) + ((a >> 13) & 1)) >> 13;
    h = select(h, efl_as_intV(efl_as_floatV(a) + 0.5f) - 0x3F000000, a < 0x38800000);
    h = select(h, 0x7C00 | ((a > 0x7F800000) & 0x200), a >= 0x477FF000);
    return h | ((b >> 16) & 0x8000);
}
#endif

#if EFL_DTYPE == 2
/* float -> bfloat16, round to nearest even. Only gradients are stored, and a step whose values
 * are not finite is refused whole, so NaN needs no care here. */
static inline ushort efl_bf16_1(float f)
{
    const uint b = as_uint(f);
    return (ushort)((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16);
}
#if EFL_VW > 1
/* the same per lane, in the low 16 bits of each lane */
static inline efl_uintV efl_bf16_V(floatV f)
{
    const efl_uintV b = efl_as_uintV(f);
    return (b + 0x7FFFu + ((b >> 16) & 1u)) >> 16;
}
#endif
#endif

#if EFL_DTYPE == 0
typedef float efl_store_t;
#define EFL_LOAD1(p) (*(p))
#define EFL_STORE1(v, p) (*(p) = (v))
#elif EFL_DTYPE == 1
typedef half efl_store_t;
#define EFL_LOAD1(p) vload_half(0, (p))
#define EFL_STORE1(v, p) vstore_half_rte((v), 0, (p))
#elif EFL_DTYPE == 2
typedef ushort efl_store_t;
#define EFL_LOAD1(p) as_float((uint)(*(p)) << 16)
#define EFL_STORE1(v, p) (*(p) = efl_bf16_1(v))
#else
#error "EFL_DTYPE must be 0 (float32), 1 (float16) or 2 (bfloat16)"
#endif
/* EFL_VW values from / to storage */
#if EFL_VW == 1
#define efl_load_x(p) EFL_LOAD1(p)
#define efl_store_g(v, p) EFL_STORE1((v), (p))
#elif EFL_DTYPE == 0
#define efl_load_x(p) efl_loadV(p)
#define efl_store_g(v, p) efl_storeV((v), (p))
#elif EFL_DTYPE == 1 && !EFL_F16_BITS
/* float4 pieces: vcvtph2ps / vcvtps2ph on x86 with F16C */
#if EFL_VW == 4
#define efl_load_x(p) vload_half4(0, (p))
#define efl_store_g(v, p) vstore_half4_rte((v), 0, (p))
#elif EFL_VW == 8
#define efl_load_x(p) ((float8)(vload_half4(0, (p)), vload_half4(1, (p))))
#define efl_store_g(v, p) (vstore_half4_rte((v).lo, 0, (p)), vstore_half4_rte((v).hi, 1, (p)))
#else
#define efl_load_x(p) ((float16)(vload_half4(0, (p)), vload_half4(1, (p)), vload_half4(2, (p)), vload_half4(3, (p))))
#define efl_store_g(v, p)                                                                          \
    (vstore_half4_rte((v).s0123, 0, (p)), vstore_half4_rte((v).s4567, 1, (p)),                    \
     vstore_half4_rte((v).s89ab, 2, (p)), vstore_half4_rte((v).scdef, 3, (p)))
#endif
#elif EFL_DTYPE == 1
#define efl_load_x(p) efl_f16_to_f32(efl_widen16(efl_vload_u16(p)))
#define efl_store_g(v, p) efl_vstore_u16(efl_low16(efl_f32_to_f16(v)), (p))
#else
#define efl_load_x(p) efl_as_floatV(efl_widen16(efl_vload_u16(p)) << 16)
#define efl_store_g(v, p) efl_vstore_u16(efl_low16(efl_bf16_V(v)), (p))
#endif

/* 1 if any lane of a comparison result is set (scalar comparisons give 1, vector ones -1). Eight
 * and sixteen lanes are folded in halves as 64-bit words, vector by vector, before the last two
 * are tested: PoCL's any() tests lanes one by one, with branches, which cost the head layouts'
 * all-negative path more than it saves, and the halving is one vptest on AVX2 where OR-ing four
 * words one by one took eight shuffles and ORs. Four keep any(): LLVM turns the OR of two words
 * into a shuffle that Oclgrind's uninitialised-value check cannot run. */
static inline int efl_any(intV m)
{
#if EFL_VW == 1
    return m != 0;
#elif EFL_VW == 4
    return any(m);
#elif EFL_VW == 8
    const ulong2 t = as_ulong4(m).lo | as_ulong4(m).hi;
    return (t.x | t.y) != 0;
#else
    const ulong4 w = as_ulong8(m).lo | as_ulong8(m).hi;
    const ulong2 t = w.lo | w.hi;
    return (t.x | t.y) != 0;
#endif
}

/* ------------------------------------------------------- refusal per column */
/* The bits of the first magnitude that the storage type rounds to infinity: float32's infinity
 * itself, IEEE half's 65520 (vstore_half_rte keeps 65504 below it), bfloat16's 0x7F7F8000 (the
 * rounding of efl_bf16_*: ties to even carry 0x7F7F up to 0x7F80). A stored gradient or element
 * loss at or beyond it, or NaN, would break the promise that an accepted step's outputs are
 * finite. */
#if EFL_DTYPE == 0
#define EFL_STORE_LIMIT_BITS 0x7F800000
#elif EFL_DTYPE == 1
#define EFL_STORE_LIMIT_BITS 0x477FF000 /* 65520.0f */
#else
#define EFL_STORE_LIMIT_BITS 0x7F7F8000
#endif
/* |v| as the bits of a float, which order like the magnitudes (NaN above infinity's 0x7F800000):
 * the kernels keep the largest per lane with an integer max, two instructions an element */
#define efl_magnitude_bits(v) (efl_as_intV(v) & 0x7FFFFFFF)

/* What a column of a row block saw, for the partials' fourth row (EFL_PARTIAL_ROWS), from the
 * largest magnitude bits of its valid inputs and of what it stored: an input that is not finite
 * (the step is refused as EFL_ERROR_NONFINITE) or an output beyond its storage
 * (EFL_ERROR_OVERFLOW). efl_reduce ORs them over blocks, efl_apply over columns: a per-work-item
 * verdict needs no atomics and no extra pass. */
static inline uint efl_column_flags(intV largest_input, intV largest_stored)
{
    return (efl_any(largest_input >= 0x7F800000) ? EFL_FLAG_NONFINITE : 0u) |
           (efl_any(largest_stored >= EFL_STORE_LIMIT_BITS) ? EFL_FLAG_OVERFLOW : 0u);
}

/* log(1 + e) for e in [0, 1], from s = e / (2 + e) in [0, 1/3], without log (scalar and slow on
 * some CPU runtimes) and without the cancellation of forming 1 + e:
 *   log(1 + e) = 2 atanh(s) = 2 s (1 + s^2/3 + s^4/5 + ...).
 * A degree-4 fit in s^2 on [0, 1/9] replaces the series: relative error 7.6e-9 with the float
 * coefficients, under float's rounding. tests/test_math checks the bound against double. */
static inline floatV efl_log1p_from_s(floatV s)
{
    const floatV u = s * s;
    floatV p = u * 0.140807688f + 0.139822096f;
    p = p * u + 0.200123191f;
    p = p * u + 0.333331615f;
    p = p * u + 1.0f;
    return 2.0f * s * p;
}

static inline floatV efl_log1p_unit(floatV e) { return efl_log1p_from_s(e / (2.0f + e)); }

/* exp(t) for t <= 0 (both exponentials of the loss have such arguments): Cody-Waite
 * reduction t = n ln2 + f, |f| <= ln2/2, a degree-6 fit of e^f (relative error 1.9e-9 before
 * float rounding), 2^n built in the exponent bits. n is rounded by adding 1.5 * 2^23, which
 * leaves it in the low mantissa bits (no floor/convert: scalar on some runtimes); so this must
 * not be compiled with -cl-fast-relaxed-math, which could fold the add and subtract away.
 * Pure arithmetic: every runtime vectorises it. Results below e^-37 (8.5e-17) flush to 0: the
 * loss multiplies two such factors, and a product below 2^-126 is a denormal, which x86 CPUs
 * compute through a microcode assist (the LVIS step ran 1.9x slower once gamma_j grew); what
 * is flushed is below 1e-15 of an element's weight. tests/test_math checks it against double
 * over [-37, 0]. */
static inline floatV efl_exp_nonpos(floatV t)
{
    const floatV tc = fmax(t, -37.0f);
    const floatV k = tc * 1.44269504f + 12582912.0f;
    const floatV n = k - 12582912.0f;
    floatV f = tc - n * 0.693145751953125f; /* ln2 split in two: n * hi is exact */
    f = f - n * 1.428606765330187e-06f;
    floatV p = f * 0.0013829428f + 0.0083747776f;
    p = p * f + 0.041668359f;
    p = p * f + 0.16666421f;
    p = p * f + 0.49999991f;
    p = p * f + 1.0f;
    p = p * f + 1.0f;
    /* the low bits of k hold n (|n| <= 126); the shift drops the magic number's own bits */
    const floatV scale = efl_as_floatV((efl_as_intV(k) + 127) << 23);
    return (t < -37.0f) ? 0.0f : p * scale;
}

/* exp(-(g_hi + g_lo) * (a + a_lo)) where the product's rounding would cost up to
 * |product| * 2^-24 relative (1e-5 at gamma 10, |x| 17): the product is carried as hi + lo
 * (fma gives the rounding error exactly) and lo enters to first order. Devices without
 * hardware fma skip the correction. */
static inline floatV efl_exp_neg_product(floatV g_hi, floatV g_lo, floatV a, floatV a_lo)
{
    const floatV hi = g_hi * a;
#if EFL_FMA
    const floatV lo = fma(g_hi, a, -hi) + (g_lo * a + g_hi * a_lo);
    /* a logit near FLT_MAX makes hi infinite and lo -Inf or NaN, and 0 * Inf is NaN: past
     * e^-37 the result is 0 anyway (a select: measured cheaper than an IEEE fmax floor on lo) */
    return (hi <= 37.0f) ? efl_exp_nonpos(-hi) * (1.0f - lo) : 0.0f;
#else
    return efl_exp_nonpos(-hi);
#endif
}

/* The sigmoid pieces both loss families share, for z = x on the row's class column and -x
 * elsewhere: p_t = sigmoid(z), q = 1 - p_t = sigmoid(-z) (never formed as 1 - p_t),
 * -log(p_t) = softplus(-z) = max(-z, 0) + log1p(exp(-|z|)) and lg = log1p(exp(-|z|)), finite for
 * every finite x. Two exponentials' worth of work: one exp, one division, no log. */
static inline void efl_sigmoid_parts(floatV z, floatV *p_t, floatV *q, floatV *sp_neg, floatV *lg)
{
    const floatV e = efl_exp_nonpos(-fabs(z));
    /* 1 / (1 + e) and e / (2 + e) from one division */
    const floatV e1 = 1.0f + e, e2 = 2.0f + e;
    const floatV inv = 1.0f / (e1 * e2);
    const floatV r = e2 * inv;
    *lg = efl_log1p_from_s(e * e1 * inv);
    *sp_neg = fmax(-z, 0.0f) + *lg;
    const floatV er = e * r;
    *p_t = (z >= 0.0f) ? r : er;
    *q = (z >= 0.0f) ? er : r;
}

/* The focal / EFL term of one element, unscaled (docs/semantics.md "Forward" and "Backward"):
 *   l  = aw q^gamma softplus(-z),  dl/dx = -(2t - 1) aw q^gamma (q + gamma p_t softplus(-z))
 * with q^gamma = exp(-gamma softplus(z)); aw = alpha_t * w_j; gamma = gamma_hi + gamma_lo. */
static inline void efl_focal_term(floatV x, intV is_pos, floatV gamma_hi, floatV gamma_lo, floatV aw, floatV *loss,
                                  floatV *grad)
{
    const floatV z = is_pos ? x : -x;
    floatV p_t, q, sp_neg, lg;
    efl_sigmoid_parts(z, &p_t, &q, &sp_neg, &lg);
    /* softplus(z) = max(z, 0) + lg with its rounding error (two-sum), for the exponent */
    const floatV zp = fmax(z, 0.0f);
    const floatV sp_pos = zp + lg;
    const floatV bb = sp_pos - zp;
    const floatV sp_pos_lo = (zp - (sp_pos - bb)) + (lg - bb);
    const floatV qg = efl_exp_neg_product(gamma_hi, gamma_lo, sp_pos, sp_pos_lo);
    const floatV awqg = aw * qg;
    const floatV d = awqg * (gamma_hi * p_t * sp_neg + q);
    *loss = awqg * sp_neg;
    *grad = is_pos ? -d : d;
}

/* The EQLv2 term (docs/semantics.md "Related modes"): weighted binary cross-entropy, unscaled.
 *   l = wt softplus(-z),  dl/dx = wt (sigmoid(x) - t) = -(2t - 1) wt q */
static inline void efl_bce_term(floatV x, intV is_pos, floatV wt, floatV *loss, floatV *grad)
{
    const floatV z = is_pos ? x : -x;
    floatV p_t, q, sp_neg, lg;
    efl_sigmoid_parts(z, &p_t, &q, &sp_neg, &lg);
    const floatV d = wt * q;
    *loss = wt * sp_neg;
    *grad = is_pos ? -d : d;
}

/* Kahan summation in float for the per-work-item sums of a row block: the block's sum stays
 * within a few ulp whatever its length. Only additions: safe under FP_CONTRACT. */
static inline void efl_kahan_add(floatV *sum, floatV *comp, floatV v)
{
    const floatV y = v - *comp;
    const floatV t = *sum + y;
    *comp = (t - *sum) - y;
    *sum = t;
}

/* ------------------------------------------------- the step kernel's pieces */
/* What the step kernel (efl_step.cl) and its layouts' addressing (efl_layout_*.h) share. */

/* The helpers that take these structs are always inlined, so that no struct type is left in a
 * compiled program: Oclgrind compiles a context's programs into one LLVM context, which renames
 * a type it has seen (struct.efl_place.1), and a recompiled binary would no longer match the
 * cached one byte for byte. */
#define EFL_INLINE static inline __attribute__((always_inline))

/* A work-item's sums over its row block, per lane. */
typedef struct {
    floatV pos, pos_c, neg, neg_c, loss, loss_c; /* Kahan sums (efl_kahan_add) and compensations */
    intV largest_in, largest_out;                /* magnitude bits, see efl_column_flags */
    uint bad;                                    /* EFL_FLAG_INVALID_LABEL */
} efl_sums;

/* (member by member: in a braced initializer a scalar would fill a vector's first lane only) */
EFL_INLINE void efl_sums_zero(efl_sums *s)
{
    s->pos = s->pos_c = s->neg = s->neg_c = s->loss = s->loss_c = 0.0f;
    s->largest_in = s->largest_out = 0;
    s->bad = 0u;
}

/* A visit: EFL_VW elements of the work-item, from row r on (efl_layout_*.h efl_visit_at).
 * (Helpers fill structs through pointers rather than return them: a returned struct is a noalias
 * pointer to the compiler, and inlined it becomes a scope intrinsic Oclgrind 21.10 cannot run.) */
typedef struct {
    size_t first; /* the first element's offset */
    uint r;
    int whole; /* one vector (else lane by lane) */
} efl_visit;

/* Per-class focusing and weighting factors from g (docs/semantics.md "Forward"). */
#define EFL_GAMMA_J(gamma_b, s, g) ((gamma_b) + (s) * (1 - (g)))

/* ------------------------------------------------------------ accumulators */
/* The running totals outlive 10^5 steps of 10^8 elements: float64 where the device has it,
 * else a float pair (hi, lo) with hi + lo the value and |lo| <= ulp(hi) / 2, which carries
 * about 48 bits. */
#if EFL_FP64
typedef double acc_t;
static inline acc_t acc_zero(void) { return 0.0; }
static inline acc_t acc_from_float(float v) { return (double)v; }
static inline acc_t acc_add(acc_t a, acc_t b) { return a + b; }
static inline float acc_to_float(acc_t a) { return (float)a; }
static inline acc_t acc_eps(void) { return 1e-10; }
static inline acc_t acc_div(acc_t a, acc_t b) { return a / b; }
static inline acc_t acc_clamp01(acc_t a) { return fmin(fmax(a, 0.0), 1.0); }
static inline acc_t acc_scale(acc_t a, float f) { return a * (double)f; }
static inline int acc_isfinite(acc_t a) { return isfinite(a); }
typedef double accs_t; /* an accumulator as one number, for the per-class factors */
static inline accs_t acc_value(acc_t a) { return a; }
/* gamma_j as a float pair (hi, lo): the step's exponent carries it to ~2^-48. */
static inline float2 efl_gamma_j(float gamma_b, float s, acc_t g)
{
    const double gd = EFL_GAMMA_J((double)gamma_b, (double)s, g);
    const float hi = (float)gd;
    return (float2)(hi, (float)(gd - (double)hi));
}
#else
typedef float2 acc_t;
static inline float2 efl_two_sum(float a, float b)
{
    const float s = a + b;
    const float bb = s - a;
    return (float2)(s, (a - (s - bb)) + (b - bb));
}
static inline float2 efl_fast_two_sum(float a, float b) /* |a| >= |b| */
{
    const float s = a + b;
    return (float2)(s, b - (s - a));
}
static inline acc_t acc_zero(void) { return (float2)(0.0f, 0.0f); }
static inline acc_t acc_from_float(float v) { return (float2)(v, 0.0f); }
static inline acc_t acc_add(acc_t a, acc_t b)
{
    const float2 s = efl_two_sum(a.x, b.x);
    const float2 t = efl_two_sum(a.y, b.y);
    float2 r = efl_fast_two_sum(s.x, s.y + t.x);
    return efl_fast_two_sum(r.x, r.y + t.y);
}
static inline float acc_to_float(acc_t a) { return a.x + a.y; }
/* 1e-10 as a pair: float(1e-10) and the rest. */
static inline acc_t acc_eps(void) { return (float2)(1.000000013e-10f, -1.335143231e-18f); }
/* Quotient of two pairs: one float division, then one correction from the exact remainder
 * (fma gives the product's rounding error). Relative error about 2^-44. */
static inline acc_t acc_div(acc_t a, acc_t b)
{
    const float q1 = a.x / b.x;
    if (!isfinite(q1))
        return (float2)(q1, 0.0f); /* beyond float: EFL's clamp takes it to 1, EQLv2 refuses */
    const float p = q1 * b.x;
    const float pe = fma(q1, b.x, -p);
    const float r = (((a.x - p) - pe) + a.y) - q1 * b.y;
    const float q2 = r / b.x;
    return efl_fast_two_sum(q1, q2);
}
static inline acc_t acc_clamp01(acc_t a)
{
    if (a.x + a.y <= 0.0f)
        return acc_zero();
    if (a.x > 1.0f || (a.x == 1.0f && a.y >= 0.0f))
        return (float2)(1.0f, 0.0f);
    return a;
}
/* a * f with the product's rounding error kept (fma): exact for f = 1 */
static inline acc_t acc_scale(acc_t a, float f)
{
    const float hi = a.x * f;
    return efl_fast_two_sum(hi, fma(a.x, f, -hi) + a.y * f);
}
/* finite, with hi below FLT_MAX: then hi + lo is below FLT_MAX as a double too, which is what
 * the host accepts back (efl_loss_write_state, checkpoints) */
static inline int acc_isfinite(acc_t a) { return fabs(a.x) < FLT_MAX && isfinite(a.y); }
typedef float accs_t;
static inline accs_t acc_value(acc_t a) { return a.x + a.y; }

/* gamma_j = gamma_b + s (1 - g) as a float pair (hi, lo), in pair arithmetic. */
static inline float2 efl_gamma_j(float gamma_b, float s, acc_t g)
{
    const float2 om = efl_two_sum(1.0f, -g.x);           /* 1 - g.hi, exactly */
    const float om_lo = om.y - g.y;
    const float hi = s * om.x;
    const float lo = fma(s, om.x, -hi) + s * om_lo;     /* s (1 - g) = hi + lo */
    const float2 t = efl_two_sum(gamma_b, hi);
    return efl_fast_two_sum(t.x, t.y + lo);
}
#endif


/* EQLv2's per-class weights from g (docs/semantics.md "Related modes"): (pos_w, neg_w) with
 * neg_w = sigmoid(gamma (g - mu)), pos_w = 1 + alpha (1 - neg_w); exp overflowing to Inf for a
 * very negative argument gives neg_w = 0, as it should. */
static inline float2 efl_eqlv2_weights(float gamma, float mu, float alpha, acc_t g)
{
    const accs_t neg = (accs_t)1 / ((accs_t)1 + exp(-(accs_t)gamma * (acc_value(g) - (accs_t)mu)));
    const accs_t pos = (accs_t)1 + (accs_t)alpha * ((accs_t)1 - neg);
    return (float2)((float)pos, (float)neg);
}

#endif /* EFL_COMMON_H */
