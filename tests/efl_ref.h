/*
 * Independent float64 CPU reference for Equalized Focal Loss, written from docs/semantics.md
 * ("Forward", "Backward", "Gradient accumulation"), not from the library's kernels.
 * It deliberately does not include efl.h so that it cannot share a mistake with it.
 */
#ifndef EFL_REF_H
#define EFL_REF_H

#include <stddef.h>
#include <stdint.h>

/* NONE: loss_weight * l per element (ignored rows 0); its gradient is that of the elements'
 * sum, i.e. scaled by loss_weight as for SUM. */
typedef enum { EFL_REF_MEAN = 0, EFL_REF_SUM = 1, EFL_REF_NONE = 2 } efl_ref_reduction;

/* docs/semantics.md "Related modes". */
typedef enum {
    EFL_REF_MODE_EFL = 0,   /* Equalized Focal Loss */
    EFL_REF_MODE_FOCAL = 1, /* gamma_j = gamma_b, w_j = 1 for every class; no state */
    EFL_REF_MODE_EQLV2 = 2  /* weighted BCE: neg_w = sigmoid(gamma (g - mu)), pos_w = 1 + alpha (1 - neg_w) */
} efl_ref_mode;

typedef struct {
    uint32_t num_classes; /* C: logit columns */
    double gamma;         /* gamma_b */
    double alpha;         /* < 0: no alpha weighting */
    double scale;         /* s */
    double loss_weight;
    int32_t ignore_index;
    int zero_based; /* 0: reference convention (0 = bg, k = column k-1); 1: k = column k, C = bg */
    /* Read only by the *_mode functions below; the original functions are EFL mode whatever
     * these hold (a caller of those may leave them unset). EQLv2 reads gamma, alpha, mu (not scale). */
    efl_ref_mode mode;
    double mu;
} efl_ref_params;

/* Per-class state, float64, C values each. */
typedef struct {
    uint32_t num_classes;
    double *pos; /* pos_grad */
    double *neg; /* neg_grad */
    double *g;   /* pos_neg */
} efl_ref_state;

typedef struct {
    double loss;          /* reduced loss */
    size_t valid_rows;    /* rows that are neither ignored nor invalid */
    size_t positives;     /* valid rows with a class (not background) */
    size_t invalid_rows;  /* labels outside the convention */
    size_t first_invalid; /* row index of the first invalid label (valid if invalid_rows > 0) */
} efl_ref_result;

/* Label classification: returns 1 for a valid row (*column = class column, or -1 for
 * background), 0 for an ignored row, -1 for a label outside the convention. */
int efl_ref_label_column(const efl_ref_params *p, int32_t label, int32_t *column);

/* One element: logit x, target t (0/1), per-class gamma_j and w_j. Unscaled l and dl/dx. */
void efl_ref_element(double x, int t, double gamma_j, double w_j, double alpha, double *l, double *dl);

/* Forward + backward for n rows with the per-class factor g (pos_neg). grad [n*C] (may be
 * NULL) receives dLoss/dx including loss_weight and 1/normalizer (mean); ignored and invalid
 * rows get 0. P and Nsum [C] (may be NULL) receive this step's per-class sums of |grad|
 * over valid rows. Returns 0 when every label is valid, else the number of invalid rows. */
size_t efl_ref_forward_backward(const efl_ref_params *p, const double *g, const float *x, const int32_t *y,
                                size_t n, double normalizer, efl_ref_reduction reduction, double *grad,
                                double *P, double *Nsum, efl_ref_result *res);

/* State update: pos += P, neg += N, g = clamp(pos / (neg + 1e-10), 0, 1). */
void efl_ref_update(efl_ref_state *st, const double *P, const double *Nsum);

/* A whole training step: forward/backward with the state from before the step, then the
 * update with this step's gradient, skipped (state untouched) when a label is invalid.
 * grad may be NULL. Returns the number of invalid rows. */
size_t efl_ref_step(const efl_ref_params *p, efl_ref_state *st, const float *x, const int32_t *y, size_t n,
                    double normalizer, efl_ref_reduction reduction, double *grad, efl_ref_result *res);

int efl_ref_state_init(efl_ref_state *st, uint32_t num_classes); /* pos = neg = 0, g = 1; 0 on OOM */
/* The same for a mode: EQLv2 starts from g = 100, the others from g = 1. */
int efl_ref_state_init_mode(efl_ref_state *st, uint32_t num_classes, efl_ref_mode mode);
void efl_ref_state_free(efl_ref_state *st);
void efl_ref_state_copy(efl_ref_state *dst, const efl_ref_state *src); /* same C */

/* ------------------------------------------------------------ every mode
 * The same operations for p->mode (EFL, focal, EQLv2); p->mode and p->mu must be set.
 *  - EFL: as above.  Focal: as EFL with gamma_j = gamma_b and w_j = 1 whatever g holds.
 *  - EQLv2, element (x, t) of class j: w = t ? pos_w_j : neg_w_j,
 *      l = w * BCE(x, t) = w * softplus(-z) (z = x if t else -x),  dl/dx = w * (sigmoid(x) - t).
 * grad (may be NULL) is dl/dx times the reduction's scale: loss_weight / normalizer (MEAN),
 * loss_weight (SUM, NONE). elems [n*C] (may be NULL) receives loss_weight * l per element, 0 on
 * ignored and invalid rows (the NONE output). res->loss is the reduced loss (NONE: the sum of
 * elems). P, Nsum [C] (may be NULL) receive this step's statistics over valid rows:
 *  - EFL, focal: sums of |grad| (so including loss_weight and 1/normalizer);
 *  - EQLv2: sums of |sigmoid(x) - t| * w, without loss_weight or normalizer.
 * Returns the number of invalid rows. */
size_t efl_ref_forward_backward_mode(const efl_ref_params *p, const double *g, const float *x, const int32_t *y,
                                     size_t n, double normalizer, efl_ref_reduction reduction, double *grad,
                                     double *elems, double *P, double *Nsum, efl_ref_result *res);

/* The state update for p->mode: EFL as efl_ref_update; focal: nothing changes; EQLv2: pos += P,
 * neg += N, g = pos / (neg + 1e-10) unclamped. */
void efl_ref_update_mode(const efl_ref_params *p, efl_ref_state *st, const double *P, const double *Nsum);

/* A whole training step for p->mode (forward/backward with the state from before the step, then
 * the update unless a label is invalid or n == 0). grad, elems may be NULL. */
size_t efl_ref_step_mode(const efl_ref_params *p, efl_ref_state *st, const float *x, const int32_t *y, size_t n,
                         double normalizer, efl_ref_reduction reduction, double *grad, double *elems,
                         efl_ref_result *res);

/* Statistics of a gradient G [n, C] the caller supplies (efl_enqueue_accumulate): P_j, N_j =
 * sums of |G| / grad_scale over valid rows (positives in P, the rest in Nsum). Returns the
 * number of invalid rows. */
size_t efl_ref_grad_stats(const efl_ref_params *p, const double *G, const int32_t *y, size_t n, double grad_scale,
                          double *P, double *Nsum);

#endif
