/* efl_loss: configuration, kernels and the per-class state on the device. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

void efl_loss_config_init(efl_loss_config *cfg, uint32_t num_classes)
{
    if (!cfg)
        return;
    cfg->num_classes = num_classes;
    cfg->gamma = 2.0f;
    cfg->alpha = 0.25f;
    cfg->scale_factor = 8.0f;
    cfg->loss_weight = 1.0f;
    cfg->ignore_index = -1;
    cfg->labels = EFL_LABELS_REFERENCE;
    cfg->accumulate = EFL_ACCUMULATE_AUTO;
    cfg->mode = EFL_MODE_EFL;
    cfg->mu = 0.8f;
}

void efl_loss_config_init_mode(efl_loss_config *cfg, uint32_t num_classes, efl_mode mode)
{
    if (!cfg)
        return;
    efl_loss_config_init(cfg, num_classes);
    cfg->mode = mode;
    if (mode == EFL_MODE_FOCAL)
        cfg->scale_factor = 0.0f;
    else if (mode == EFL_MODE_EQLV2) {
        cfg->gamma = 12.0f;
        cfg->alpha = 4.0f;
        cfg->mu = 0.8f;
    }
}

size_t efl_dtype_size(efl_dtype dtype)
{
    switch (dtype) {
    case EFL_DTYPE_FLOAT32: return 4;
    case EFL_DTYPE_FLOAT16:
    case EFL_DTYPE_BFLOAT16: return 2;
    }
    return 0;
}

double efl_largest_gamma_j(const efl_loss_config *cfg)
{
    return (double)cfg->gamma + (cfg->mode == EFL_MODE_EFL ? (double)cfg->scale_factor : 0.0);
}

double efl_largest_alpha_t(const efl_loss_config *cfg)
{
    const double a = cfg->alpha;
    return a >= 0.0 ? fmax(fabs(a), fabs(1.0 - a)) : 1.0;
}

efl_status efl_check_config(const efl_loss_config *cfg)
{
    if (cfg->num_classes == 0 || cfg->num_classes > EFL_MAX_CLASSES)
        return EFL_ERROR_INVALID_NUM_CLASSES;
    if (!isfinite(cfg->gamma) || cfg->gamma <= 0.0f)
        return EFL_ERROR_INVALID_GAMMA;
    if (!isfinite(cfg->alpha) || !isfinite(cfg->scale_factor) || cfg->scale_factor < 0.0f ||
        !isfinite(cfg->loss_weight))
        return EFL_ERROR_INVALID_PARAMETER;
    if (cfg->labels != EFL_LABELS_REFERENCE && cfg->labels != EFL_LABELS_ZERO_BASED)
        return EFL_ERROR_INVALID_LABEL_CONVENTION;
    if (cfg->accumulate != EFL_ACCUMULATE_AUTO && cfg->accumulate != EFL_ACCUMULATE_FLOAT_PAIRS)
        return EFL_ERROR_INVALID_PARAMETER;
    if (cfg->mode != EFL_MODE_EFL && cfg->mode != EFL_MODE_FOCAL && cfg->mode != EFL_MODE_EQLV2)
        return EFL_ERROR_INVALID_MODE;
    if (!isfinite(cfg->mu))
        return EFL_ERROR_INVALID_PARAMETER;
    /* EFL's factors at their largest (g = 0): gamma_j = gamma_b + s, w_j = gamma_j / gamma_b and
     * the element weight alpha_t w_j must be floats, with room for the float-pair rounding of the
     * table (an infinite weight times a q^gamma of 0 would be NaN where the loss is 0) */
    const double gamma_max = efl_largest_gamma_j(cfg), w_max = gamma_max / cfg->gamma;
    if (cfg->mode == EFL_MODE_EFL &&
        (gamma_max > 0.5 * FLT_MAX || w_max * fmax(efl_largest_alpha_t(cfg), 1.0) > 0.5 * FLT_MAX))
        return EFL_ERROR_INVALID_PARAMETER;
    /* Both conventions use 0..C as labels; an ignore_index among them would be ambiguous. */
    if (cfg->ignore_index >= 0 && (uint32_t)cfg->ignore_index <= cfg->num_classes)
        return EFL_ERROR_INVALID_IGNORE_INDEX;
    return EFL_OK;
}

static cl_mem make_buffer(efl_loss *loss, size_t bytes, void *init, cl_int *err)
{
    cl_mem_flags flags = CL_MEM_READ_WRITE | (init ? CL_MEM_COPY_HOST_PTR : 0);
    return clCreateBuffer(loss->ctx->context, flags, bytes, init, err);
}

double efl_initial_pos_neg(const efl_loss_config *cfg) { return cfg->mode == EFL_MODE_EQLV2 ? 100.0 : 1.0; }

/* pos_grad = neg_grad = 0, pos_neg = 1, in the device's accumulator format, and the matching
 * table: g = 1 gives gamma_j = gamma_b (lo 0), w_j = 1 exactly; the padded columns keep these.
 * EQLv2 starts from pos_neg = 100, and its table is made from it by the apply kernel (one
 * source for its weights' formula). */
static efl_status create_state(efl_loss *loss)
{
    const size_t C = loss->cfg.num_classes;
    void *state = calloc(3 * C, loss->acc_bytes);

    const size_t cpad = loss->cpad;
    float *table = malloc(3 * cpad * sizeof(float));
    cl_uint info[2] = {0, 0};
    if (!state || !table) {
        free(state);
        free(table);
        return EFL_ERROR_OUT_OF_MEMORY;
    }
    const double g0 = efl_initial_pos_neg(&loss->cfg);
    for (size_t j = 0; j < C; ++j) {
        if (loss->kp.fp64)
            ((double *)state)[2 * C + j] = g0;
        else
            ((float *)state)[2 * (2 * C + j)] = (float)g0; /* (hi, lo) = (g0, 0): exact */
    }
    for (size_t j = 0; j < cpad; ++j) {
        table[j] = loss->cfg.gamma;
        table[cpad + j] = 0.0f;
        table[2 * cpad + j] = 1.0f;
    }
    cl_int e[5];
    loss->state = make_buffer(loss, 3 * C * loss->acc_bytes, state, &e[0]);
    loss->table = make_buffer(loss, 3 * cpad * sizeof(float), table, &e[1]);
    loss->info = make_buffer(loss, sizeof info, info, &e[2]);
    loss->step_stats = make_buffer(loss, 3 * (size_t)loss->cpad * loss->acc_bytes, NULL, &e[3]);
    loss->step_flags = make_buffer(loss, (1 + cpad) * sizeof(cl_uint), NULL, &e[4]);
    free(state);
    free(table);
    for (int i = 0; i < 5; ++i) /* the first failure */
        if (e[i] != CL_SUCCESS)
            return efl_cl_fail(loss->ctx, e[i]);
    if (loss->cfg.mode != EFL_MODE_EQLV2)
        return EFL_OK;
    cl_int err = CL_SUCCESS;
    cl_command_queue q = clCreateCommandQueue(loss->ctx->context, loss->ctx->device, 0, &err);
    if (err != CL_SUCCESS)
        return efl_cl_fail(loss->ctx, err);
    efl_status st = efl_refresh_table(loss, q);
    st = efl_cl_finish(loss->ctx, q, st);
    clReleaseCommandQueue(q);
    return st;
}

static efl_status create_kernels(efl_loss *loss)
{
    cl_program prog = NULL;
    efl_status st = efl_program_get(loss->ctx, &loss->kp, &prog);
    if (st != EFL_OK)
        return st;
    cl_int e[3];
    loss->k_step[EFL_DTYPE_FLOAT32][0] = clCreateKernel(prog, "efl_step", &e[0]);
    loss->k_reduce = clCreateKernel(prog, "efl_reduce", &e[1]);
    loss->k_apply = clCreateKernel(prog, "efl_apply", &e[2]);
    clReleaseProgram(prog); /* kernels keep it alive */
    for (int i = 0; i < 3; ++i)
        if (e[i] != CL_SUCCESS)
            return efl_cl_fail(loss->ctx, e[i]);
    return EFL_OK;
}

/* float16 and bfloat16, and the head layouts, need their own build of efl_step (storage type
 * and addressing are defines); the reduce and apply kernels of the first program serve all. */
efl_status efl_loss_step_kernel(efl_loss *loss, efl_dtype dtype, int planar, cl_kernel *out)
{
    cl_kernel *slot = &loss->k_step[dtype][planar != 0];
    if (!*slot) {
        efl_kernel_params kp = planar ? loss->kp_head : loss->kp;
        kp.dtype = (int)dtype;
        cl_program prog = NULL;
        efl_status st = efl_program_get(loss->ctx, &kp, &prog);
        if (st != EFL_OK)
            return st;
        cl_int err = CL_SUCCESS;
        *slot = clCreateKernel(prog, planar ? "efl_step_head" : "efl_step", &err);
        if (err == CL_SUCCESS && planar && !loss->k_head_labels) {
            loss->k_head_labels = clCreateKernel(prog, "efl_head_labels", &err);
            if (err != CL_SUCCESS) {
                clReleaseKernel(*slot);
                loss->k_head_labels = NULL;
            }
        }
        clReleaseProgram(prog);
        if (err != CL_SUCCESS) {
            *slot = NULL;
            return efl_cl_fail(loss->ctx, err);
        }
    }
    *out = *slot;
    return EFL_OK;
}

efl_status efl_loss_create(efl_context *ctx, const efl_loss_config *cfg, efl_loss **out)
{
    if (!out)
        return EFL_ERROR_NULL_HANDLE;
    *out = NULL;
    if (!ctx || !cfg)
        return EFL_ERROR_NULL_HANDLE;
    efl_status st = efl_check_config(cfg);
    if (st != EFL_OK)
        return st;
    efl_loss *loss = calloc(1, sizeof *loss);
    if (!loss)
        return EFL_ERROR_OUT_OF_MEMORY;
    loss->ctx = ctx;
    loss->cfg = *cfg;
    loss->kp = efl_device_kernel_params(&ctx->info, cfg->num_classes);
    loss->kp.mode = (int)cfg->mode;
    if (cfg->accumulate == EFL_ACCUMULATE_FLOAT_PAIRS)
        loss->kp.fp64 = 0;
    loss->kp_head = efl_device_head_params(&ctx->info, loss->kp);
    loss->cpad = (cl_uint)efl_device_padded_columns(&loss->kp, cfg->num_classes);
    loss->acc_bytes = 8; /* sizeof(double) == sizeof(float2) */
    st = create_kernels(loss);
    if (st == EFL_OK)
        st = create_state(loss);
    if (st != EFL_OK) {
        efl_loss_destroy(loss);
        return st;
    }
    *out = loss;
    return EFL_OK;
}

static void release_mem(cl_mem *m)
{
    if (*m)
        clReleaseMemObject(*m);
    *m = NULL;
}

void efl_loss_destroy(efl_loss *loss)
{
    if (!loss)
        return;
    if (loss->host_queue) {
        (void)efl_cl_finish(loss->ctx, loss->host_queue, EFL_OK); /* a failure: efl_context_last_cl_error */
        clReleaseCommandQueue(loss->host_queue);
    }
    cl_mem *mems[] = {&loss->state,    &loss->table,       &loss->info,   &loss->step_stats,
                      &loss->step_flags, &loss->partials,  &loss->block_flags, &loss->head_labels, &loss->host_x,
                      &loss->host_y,   &loss->host_g,      &loss->host_loss};
    for (size_t i = 0; i < sizeof mems / sizeof *mems; ++i)
        release_mem(mems[i]);
    for (int d = 0; d < 3; ++d)
        for (int p = 0; p < 2; ++p)
            if (loss->k_step[d][p])
                clReleaseKernel(loss->k_step[d][p]);
    if (loss->k_reduce)
        clReleaseKernel(loss->k_reduce);
    if (loss->k_apply)
        clReleaseKernel(loss->k_apply);
    if (loss->k_head_labels)
        clReleaseKernel(loss->k_head_labels);
    free(loss);
}

efl_status efl_loss_get_config(const efl_loss *loss, efl_loss_config *cfg)
{
    if (!loss || !cfg)
        return EFL_ERROR_NULL_HANDLE;
    *cfg = loss->cfg;
    return EFL_OK;
}
