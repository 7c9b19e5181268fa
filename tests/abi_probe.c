/* What include/efl/efl.h compiles to, one fact a line, for tests/python/test_abi.py, which
 * compares python/efl/_lib.py's hand-copied enums and structures with it:
 *   enum <enum type> <enumerator> <value>
 *   struct <struct type> <sizeof> <alignment>
 *   field <struct type> <field> <offset> <size>
 *   const <macro> <value>
 *   sizeof <scalar type> <size>
 * The compiler gives every number; the lists of names below are checked against the header's
 * own text by the test, so an enumerator or field added to efl.h and forgotten here fails it.
 * Needs no device and no libefl. */
#include <stddef.h>
#include <stdio.h>

#include "efl/efl.h"

#define ENUM(type, name) printf("enum %s %s %lld\n", #type, #name, (long long)(name))
#define STRUCT(type) printf("struct %s %zu %zu\n", #type, sizeof(type), (size_t)_Alignof(type))
#define FIELD(type, f) printf("field %s %s %zu %zu\n", #type, #f, offsetof(type, f), sizeof(((type *)0)->f))
#define CONST(name) printf("const %s %lld\n", #name, (long long)(name))
#define SIZEOF(type) printf("sizeof %s %zu\n", #type, sizeof(type))

int main(void)
{
    ENUM(efl_status, EFL_OK);
    ENUM(efl_status, EFL_ERROR_NULL_HANDLE);
    ENUM(efl_status, EFL_ERROR_NULL_BUFFER);
    ENUM(efl_status, EFL_ERROR_INVALID_NUM_CLASSES);
    ENUM(efl_status, EFL_ERROR_INVALID_GAMMA);
    ENUM(efl_status, EFL_ERROR_INVALID_PARAMETER);
    ENUM(efl_status, EFL_ERROR_INVALID_NORMALIZER);
    ENUM(efl_status, EFL_ERROR_INVALID_REDUCTION);
    ENUM(efl_status, EFL_ERROR_INVALID_IGNORE_INDEX);
    ENUM(efl_status, EFL_ERROR_INVALID_LABEL_CONVENTION);
    ENUM(efl_status, EFL_ERROR_BUFFER_TOO_SMALL);
    ENUM(efl_status, EFL_ERROR_BUFFER_CONTEXT);
    ENUM(efl_status, EFL_ERROR_QUEUE_MISMATCH);
    ENUM(efl_status, EFL_ERROR_INVALID_WAIT_LIST);
    ENUM(efl_status, EFL_ERROR_TOO_MANY_ROWS);
    ENUM(efl_status, EFL_ERROR_INVALID_LABEL);
    ENUM(efl_status, EFL_ERROR_INVALID_STATE);
    ENUM(efl_status, EFL_ERROR_NO_DEVICE);
    ENUM(efl_status, EFL_ERROR_DEVICE_NOT_FOUND);
    ENUM(efl_status, EFL_ERROR_UNSUPPORTED_DEVICE);
    ENUM(efl_status, EFL_ERROR_BUILD_FAILED);
    ENUM(efl_status, EFL_ERROR_OUT_OF_MEMORY);
    ENUM(efl_status, EFL_ERROR_OPENCL);
    ENUM(efl_status, EFL_ERROR_NONFINITE);
    ENUM(efl_status, EFL_ERROR_INVALID_DTYPE);
    ENUM(efl_status, EFL_ERROR_INVALID_MODE);
    ENUM(efl_status, EFL_ERROR_INVALID_LAYOUT);
    ENUM(efl_status, EFL_ERROR_IO);
    ENUM(efl_status, EFL_ERROR_CHECKPOINT_CORRUPT);
    ENUM(efl_status, EFL_ERROR_CHECKPOINT_VERSION);
    ENUM(efl_status, EFL_ERROR_CHECKPOINT_MISMATCH);
    ENUM(efl_status, EFL_ERROR_REFUSED_BY_PEER);
    ENUM(efl_status, EFL_ERROR_OVERFLOW);
    ENUM(efl_status, EFL_ERROR_ALIASED_BUFFERS);
    ENUM(efl_status, EFL_STATUS_COUNT_);

    ENUM(efl_label_convention, EFL_LABELS_REFERENCE);
    ENUM(efl_label_convention, EFL_LABELS_ZERO_BASED);

    ENUM(efl_accumulate, EFL_ACCUMULATE_AUTO);
    ENUM(efl_accumulate, EFL_ACCUMULATE_FLOAT_PAIRS);

    ENUM(efl_dtype, EFL_DTYPE_FLOAT32);
    ENUM(efl_dtype, EFL_DTYPE_FLOAT16);
    ENUM(efl_dtype, EFL_DTYPE_BFLOAT16);

    ENUM(efl_reduction, EFL_REDUCTION_MEAN);
    ENUM(efl_reduction, EFL_REDUCTION_SUM);
    ENUM(efl_reduction, EFL_REDUCTION_NONE);

    ENUM(efl_mode, EFL_MODE_EFL);
    ENUM(efl_mode, EFL_MODE_FOCAL);
    ENUM(efl_mode, EFL_MODE_EQLV2);

    ENUM(efl_layout, EFL_LAYOUT_ROWS);
    ENUM(efl_layout, EFL_LAYOUT_ANCHOR_MAJOR);
    ENUM(efl_layout, EFL_LAYOUT_CLASS_MAJOR);

    ENUM(efl_op, EFL_OP_STEP);
    ENUM(efl_op, EFL_OP_FORWARD);
    ENUM(efl_op, EFL_OP_ACCUMULATE);
    ENUM(efl_op, EFL_OP_COMPUTE);
    ENUM(efl_op, EFL_OP_COLLECT);

    CONST(EFL_MAX_LEVELS);
    CONST(EFL_STATISTICS_LENGTH(1));

    STRUCT(efl_loss_config);
    FIELD(efl_loss_config, num_classes);
    FIELD(efl_loss_config, gamma);
    FIELD(efl_loss_config, alpha);
    FIELD(efl_loss_config, scale_factor);
    FIELD(efl_loss_config, loss_weight);
    FIELD(efl_loss_config, ignore_index);
    FIELD(efl_loss_config, labels);
    FIELD(efl_loss_config, accumulate);
    FIELD(efl_loss_config, mode);
    FIELD(efl_loss_config, mu);

    STRUCT(efl_batch);
    FIELD(efl_batch, layout);
    FIELD(efl_batch, dtype);
    FIELD(efl_batch, rows);
    FIELD(efl_batch, images);
    FIELD(efl_batch, anchors);
    FIELD(efl_batch, levels);
    FIELD(efl_batch, height);
    FIELD(efl_batch, width);
    FIELD(efl_batch, input);
    FIELD(efl_batch, grad);
    FIELD(efl_batch, loss_elems);
    FIELD(efl_batch, labels);
    FIELD(efl_batch, reduction);
    FIELD(efl_batch, normalizer);
    FIELD(efl_batch, normalizer_buffer);
    FIELD(efl_batch, loss);
    FIELD(efl_batch, grad_scale);

    STRUCT(efl_host_batch);
    FIELD(efl_host_batch, layout);
    FIELD(efl_host_batch, dtype);
    FIELD(efl_host_batch, rows);
    FIELD(efl_host_batch, images);
    FIELD(efl_host_batch, anchors);
    FIELD(efl_host_batch, levels);
    FIELD(efl_host_batch, height);
    FIELD(efl_host_batch, width);
    FIELD(efl_host_batch, input);
    FIELD(efl_host_batch, grad);
    FIELD(efl_host_batch, loss_elems);
    FIELD(efl_host_batch, labels);
    FIELD(efl_host_batch, reduction);
    FIELD(efl_host_batch, normalizer);
    FIELD(efl_host_batch, loss);
    FIELD(efl_host_batch, grad_scale);

    /* the scalar types of the functions' parameters and results (the binding's argtypes) */
    SIZEOF(efl_status);
    SIZEOF(efl_label_convention);
    SIZEOF(efl_accumulate);
    SIZEOF(efl_dtype);
    SIZEOF(efl_reduction);
    SIZEOF(efl_mode);
    SIZEOF(efl_layout);
    SIZEOF(efl_op);
    SIZEOF(unsigned);
    SIZEOF(int);
    SIZEOF(size_t);
    SIZEOF(uint32_t);
    SIZEOF(int32_t);
    SIZEOF(float);
    SIZEOF(double);
    SIZEOF(cl_int);
    SIZEOF(cl_uint);
    SIZEOF(void *);
    return 0;
}
