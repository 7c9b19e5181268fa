/* The README's C example: one EFL training step on host arrays, then the per-class state. */
#include <efl/efl.h>
#include <stdio.h>

int main(void)
{
    enum { N = 4, C = 3 };
    const float logits[N * C] = {-4, -3, 2, 1, -5, -4, -2, -2, -3, 0.5f, -6, -1};
    const int32_t labels[N] = {3, 1, 0, -1}; /* class 3, class 1, background, ignored */
    efl_context *ctx;
    efl_loss *loss;
    efl_loss_config cfg;
    efl_loss_config_init(&cfg, C); /* gamma 2, alpha 0.25, scale factor 8 */
    efl_status st = efl_context_create_default(&ctx); /* EFL_DEVICE picks, else GPU, else CPU */
    if (st == EFL_OK)
        st = efl_loss_create(ctx, &cfg, &loss);
    if (st != EFL_OK)
        return printf("efl: %s\n", efl_status_string(st)), 1;
    float value, grad[N * C];
    double pos[C], neg[C], g[C];
    st = efl_loss_step_host(loss, logits, labels, N, 2.0f /* normalizer: positives */, EFL_REDUCTION_MEAN, &value,
                            grad);
    efl_loss_read_state_host(loss, pos, neg, g);
    printf("%s: loss %.6f, dloss/dx[0][2] %.6f, pos_neg %.4f %.4f %.4f\n", efl_status_string(st), value, grad[2],
           g[0], g[1], g[2]);
    efl_loss_destroy(loss);
    efl_context_destroy(ctx);
    return st != EFL_OK;
}
