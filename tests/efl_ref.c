/* float64 reference for EFL; see efl_ref.h. Formulas are those of docs/semantics.md, evaluated in
 * forms that stay finite for any finite logit (|x| up to 1e4 and beyond). */
#include "efl_ref.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* log(sigmoid(z)) without overflow or cancellation: -log(1 + e^-z) = -log1p(e^-|z|) - max(-z, 0). */
static double log_sigmoid(double z) { return -log1p(exp(-fabs(z))) - fmax(-z, 0.0); }

/* sigmoid(z), never computing exp of a large positive argument. */
static double sigmoid(double z)
{
    if (z >= 0.0)
        return 1.0 / (1.0 + exp(-z));
    double e = exp(z);
    return e / (1.0 + e);
}

int efl_ref_label_column(const efl_ref_params *p, int32_t label, int32_t *column)
{
    int64_t C = p->num_classes;
    /* ignore_index may never collide with a valid label (the library rejects such configs),
     * so checking it first is unambiguous. */
    if (label == p->ignore_index)
        return 0;
    if (!p->zero_based) {
        if (label == 0) {
            *column = -1;
            return 1;
        }
        if (label >= 1 && (int64_t)label <= C) {
            *column = label - 1;
            return 1;
        }
        return -1;
    }
    if (label >= 0 && (int64_t)label < C) {
        *column = label;
        return 1;
    }
    if ((int64_t)label == C) {
        *column = -1;
        return 1;
    }
    return -1;
}

void efl_ref_element(double x, int t, double gamma_j, double w_j, double alpha, double *l, double *dl)
{
    /* p_t = sigmoid(z) with z = x for a positive, -x for a negative; q = 1 - p_t = sigmoid(-z)
     * evaluated directly (never as 1 - p_t, which cancels). */
    double z = t ? x : -x;
    double log_pt = log_sigmoid(z);
    double log_q = log_sigmoid(-z);
    double pt = sigmoid(z);
    double q = sigmoid(-z);
    double q_gamma = exp(gamma_j * log_q); /* q^gamma_j; exactly 0 once it underflows */
    double alpha_t = alpha < 0.0 ? 1.0 : (t ? alpha : 1.0 - alpha);
    *l = -alpha_t * w_j * q_gamma * log_pt;
    /* docs/semantics.md "Backward": - alpha_t w_j (2t - 1) q^gamma_j (q - gamma_j p_t log p_t). Both terms in
     * the bracket are >= 0, so no cancellation. */
    *dl = -alpha_t * w_j * (t ? 1.0 : -1.0) * q_gamma * (q - gamma_j * pt * log_pt);
}

/* The original functions are the mode-aware ones in EFL mode, whatever p->mode holds (callers
 * may leave mode and mu unset). */
static efl_ref_params efl_mode_params(const efl_ref_params *p)
{
    efl_ref_params q = *p;
    q.mode = EFL_REF_MODE_EFL;
    return q;
}

size_t efl_ref_forward_backward(const efl_ref_params *p, const double *g, const float *x, const int32_t *y,
                                size_t n, double normalizer, efl_ref_reduction reduction, double *grad,
                                double *P, double *Nsum, efl_ref_result *res)
{
    const efl_ref_params q = efl_mode_params(p);
    return efl_ref_forward_backward_mode(&q, g, x, y, n, normalizer, reduction, grad, NULL, P, Nsum, res);
}

void efl_ref_update(efl_ref_state *st, const double *P, const double *Nsum)
{
    for (uint32_t j = 0; j < st->num_classes; ++j) {
        st->pos[j] += P[j];
        st->neg[j] += Nsum[j];
        double r = st->pos[j] / (st->neg[j] + 1e-10);
        st->g[j] = r < 0.0 ? 0.0 : (r > 1.0 ? 1.0 : r);
    }
}

size_t efl_ref_step(const efl_ref_params *p, efl_ref_state *st, const float *x, const int32_t *y, size_t n,
                    double normalizer, efl_ref_reduction reduction, double *grad, efl_ref_result *res)
{
    const efl_ref_params q = efl_mode_params(p);
    return efl_ref_step_mode(&q, st, x, y, n, normalizer, reduction, grad, NULL, res);
}

int efl_ref_state_init(efl_ref_state *st, uint32_t num_classes)
{
    st->num_classes = num_classes;
    st->pos = calloc(num_classes ? num_classes : 1, sizeof(double));
    st->neg = calloc(num_classes ? num_classes : 1, sizeof(double));
    st->g = malloc((num_classes ? num_classes : 1) * sizeof(double));
    if (!st->pos || !st->neg || !st->g) {
        efl_ref_state_free(st);
        return 0;
    }
    for (uint32_t j = 0; j < num_classes; ++j)
        st->g[j] = 1.0;
    return 1;
}

void efl_ref_state_free(efl_ref_state *st)
{
    free(st->pos);
    free(st->neg);
    free(st->g);
    st->pos = st->neg = st->g = NULL;
}

void efl_ref_state_copy(efl_ref_state *dst, const efl_ref_state *src)
{
    size_t b = src->num_classes * sizeof(double);
    memcpy(dst->pos, src->pos, b);
    memcpy(dst->neg, src->neg, b);
    memcpy(dst->g, src->g, b);
}

/* ------------------------------------------------------------ every mode */
int efl_ref_state_init_mode(efl_ref_state *st, uint32_t num_classes, efl_ref_mode mode)
{
    if (!efl_ref_state_init(st, num_classes))
        return 0;
    if (mode == EFL_REF_MODE_EQLV2) /* docs/semantics.md: "g starts at 100 (both weights about 1)" */
        for (uint32_t j = 0; j < num_classes; ++j)
            st->g[j] = 100.0;
    return 1;
}

/* EQLv2's per-class weights from g (docs/semantics.md "Related modes"). */
static void eqlv2_weights(const efl_ref_params *p, double g, double *pos_w, double *neg_w)
{
    *neg_w = sigmoid(p->gamma * (g - p->mu));
    *pos_w = 1.0 + p->alpha * (1.0 - *neg_w);
}

size_t efl_ref_forward_backward_mode(const efl_ref_params *p, const double *g, const float *x, const int32_t *y,
                                     size_t n, double normalizer, efl_ref_reduction reduction, double *grad,
                                     double *elems, double *P, double *Nsum, efl_ref_result *res)
{
    const size_t C = p->num_classes;
    const double scale = reduction == EFL_REF_MEAN ? p->loss_weight / normalizer : p->loss_weight;
    efl_ref_result r = {0};
    if (P)
        memset(P, 0, C * sizeof *P);
    if (Nsum)
        memset(Nsum, 0, C * sizeof *Nsum);
    /* per-class factors, from the state before the step */
    double *fa = malloc((C ? C : 1) * sizeof *fa), *fb = malloc((C ? C : 1) * sizeof *fb);
    if (!fa || !fb)
        abort();
    for (size_t j = 0; j < C; ++j) {
        if (p->mode == EFL_REF_MODE_EQLV2) {
            eqlv2_weights(p, g[j], &fa[j], &fb[j]); /* fa = pos_w, fb = neg_w */
        } else if (p->mode == EFL_REF_MODE_FOCAL) {
            fa[j] = p->gamma; /* gamma_j */
            fb[j] = 1.0;      /* w_j */
        } else {
            fa[j] = p->gamma + p->scale * (1.0 - g[j]);
            fb[j] = fa[j] / p->gamma;
        }
    }

    double total = 0.0;
    for (size_t i = 0; i < n; ++i) {
        int32_t col = -1;
        int kind = efl_ref_label_column(p, y[i], &col);
        double *grow = grad ? grad + i * C : NULL;
        double *erow = elems ? elems + i * C : NULL;
        if (kind != 1) {
            if (kind < 0) {
                if (r.invalid_rows == 0)
                    r.first_invalid = i;
                r.invalid_rows++;
            }
            if (grow)
                memset(grow, 0, C * sizeof *grow);
            if (erow)
                memset(erow, 0, C * sizeof *erow);
            continue;
        }
        r.valid_rows++;
        if (col >= 0)
            r.positives++;
        for (size_t j = 0; j < C; ++j) {
            const int t = (int32_t)j == col;
            const double xv = (double)x[i * C + j];
            double l, dl, stat;
            if (p->mode == EFL_REF_MODE_EQLV2) {
                const double w = t ? fa[j] : fb[j];
                const double z = t ? xv : -xv;
                /* BCE = -log p_t = softplus(-z) = -log_sigmoid(z); sigmoid(x) - t = -(1 - p_t) for a
                 * positive, p = 1 - p_t = sigmoid(-z) for a negative: |.| = sigmoid(-z) either way */
                const double q = sigmoid(-z);
                l = w * -log_sigmoid(z);
                dl = t ? -w * q : w * q;
                stat = w * q;
            } else {
                efl_ref_element(xv, t, fa[j], fb[j], p->alpha, &l, &dl);
                stat = fabs(dl * scale);
            }
            total += l;
            if (grow)
                grow[j] = dl * scale;
            if (erow)
                erow[j] = p->loss_weight * l;
            if (t) {
                if (P)
                    P[j] += stat;
            } else if (Nsum) {
                Nsum[j] += stat;
            }
        }
    }
    free(fa);
    free(fb);
    r.loss = total * scale;
    if (res)
        *res = r;
    return r.invalid_rows;
}

void efl_ref_update_mode(const efl_ref_params *p, efl_ref_state *st, const double *P, const double *Nsum)
{
    if (p->mode == EFL_REF_MODE_FOCAL)
        return;
    if (p->mode != EFL_REF_MODE_EQLV2) {
        efl_ref_update(st, P, Nsum);
        return;
    }
    for (uint32_t j = 0; j < st->num_classes; ++j) {
        st->pos[j] += P[j];
        st->neg[j] += Nsum[j];
        st->g[j] = st->pos[j] / (st->neg[j] + 1e-10);
    }
}

size_t efl_ref_step_mode(const efl_ref_params *p, efl_ref_state *st, const float *x, const int32_t *y, size_t n,
                         double normalizer, efl_ref_reduction reduction, double *grad, double *elems,
                         efl_ref_result *res)
{
    const size_t C = p->num_classes;
    double *P = malloc((C ? C : 1) * sizeof *P);
    double *Ns = malloc((C ? C : 1) * sizeof *Ns);
    if (!P || !Ns)
        abort();
    size_t bad = efl_ref_forward_backward_mode(p, st->g, x, y, n, normalizer, reduction, grad, elems, P, Ns, res);
    /* The update is unconditional, as in the reference implementation's hook, even when every
     * row is ignored or there is none (n == 0: g recomputed from the unchanged totals). */
    if (bad == 0)
        efl_ref_update_mode(p, st, P, Ns);
    free(P);
    free(Ns);
    return bad;
}

size_t efl_ref_grad_stats(const efl_ref_params *p, const double *G, const int32_t *y, size_t n, double grad_scale,
                          double *P, double *Nsum)
{
    const size_t C = p->num_classes;
    size_t bad = 0;
    memset(P, 0, C * sizeof *P);
    memset(Nsum, 0, C * sizeof *Nsum);
    for (size_t i = 0; i < n; ++i) {
        int32_t col = -1;
        int kind = efl_ref_label_column(p, y[i], &col);
        if (kind < 0)
            bad++;
        if (kind != 1)
            continue;
        for (size_t j = 0; j < C; ++j) {
            const double a = fabs(G[i * C + j]) / grad_scale;
            if ((int32_t)j == col)
                P[j] += a;
            else
                Nsum[j] += a;
        }
    }
    return bad;
}
