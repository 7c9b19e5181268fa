/*
 * Independent float64 CPU reference for Equalized Focal Loss, written from SPEC.md
 * ("Forward", "Backward", "Gradient accumulation"), not from the library's kernels.
 * It deliberately does not include efl.h so that it cannot share a mistake with it.
 */
#ifndef EFL_REF_H
#define EFL_REF_H

#include <stddef.h>
#include <stdint.h>

typedef enum { EFL_REF_MEAN = 0, EFL_REF_SUM = 1 } efl_ref_reduction;

typedef struct {
    uint32_t num_classes; /* C: logit columns */
    double gamma;         /* gamma_b */
    double alpha;         /* < 0: no alpha weighting */
    double scale;         /* s */
    double loss_weight;
    int32_t ignore_index;
    int zero_based; /* 0: reference convention (0 = bg, k = column k-1); 1: k = column k, C = bg */
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
void efl_ref_state_free(efl_ref_state *st);
void efl_ref_state_copy(efl_ref_state *dst, const efl_ref_state *src); /* same C */

#endif
