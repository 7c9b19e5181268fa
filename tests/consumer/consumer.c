/* Built against an installed efl (find_package or pkg-config): one host step must work.
 * Exits 77 (skipped) when there is no OpenCL device. */
#include <efl/efl.h>
#include <math.h>
#include <stdio.h>

int main(void)
{
    enum { N = 4, C = 5 };
    const float logits[N * C] = {-3, 1.5f, -2, -4, -1, /**/ -2, -3, -1, -5, -2,
                                 -4, -2, -3, -1, 0.5f, /**/ 2, -1, -3, -2, -4};
    const int32_t labels[N] = {2, 0, 5, 1}; /* reference convention: 0 background, k in 1..C */
    float grad[N * C], value = 0.0f;
    efl_context *ctx = NULL;
    efl_loss *loss = NULL;
    efl_loss_config cfg;

    if (efl_version_number() != EFL_VERSION_NUMBER) {
        fprintf(stderr, "header %u, library %u\n", (unsigned)EFL_VERSION_NUMBER, efl_version_number());
        return 1;
    }
    efl_loss_config_init(&cfg, C);
    efl_status st = efl_context_create_default(&ctx);
    if (st == EFL_ERROR_NO_DEVICE) {
        puts("no OpenCL device: skipped");
        return 77;
    }
    if (st == EFL_OK)
        st = efl_loss_create(ctx, &cfg, &loss);
    if (st == EFL_OK)
        st = efl_loss_step_host(loss, logits, labels, N, 3.0f /* positives */, EFL_REDUCTION_MEAN, &value, grad);
    efl_loss_destroy(loss);
    efl_context_destroy(ctx);
    if (st != EFL_OK || !isfinite(value) || !(value > 0.0f)) {
        fprintf(stderr, "consumer: %s, loss %g\n", efl_status_string(st), value);
        return 1;
    }
    printf("consumer ok (efl %s, loss %.6f)\n", efl_version_string(), value);
    return 0;
}
