/* Status names and the runtime version. */
#include "efl/efl.h"

unsigned efl_version_number(void) { return EFL_VERSION_NUMBER; }
const char *efl_version_string(void) { return EFL_VERSION_STRING; }

const char *efl_status_string(efl_status status)
{
    switch (status) {
    case EFL_OK: return "ok";
    case EFL_ERROR_NULL_HANDLE: return "null handle";
    case EFL_ERROR_NULL_BUFFER: return "null buffer";
    case EFL_ERROR_INVALID_NUM_CLASSES: return "invalid number of classes";
    case EFL_ERROR_INVALID_GAMMA: return "invalid gamma (must be finite and > 0)";
    case EFL_ERROR_INVALID_PARAMETER: return "invalid parameter";
    case EFL_ERROR_INVALID_NORMALIZER: return "invalid normalizer (must be finite and > 0)";
    case EFL_ERROR_INVALID_REDUCTION: return "invalid reduction";
    case EFL_ERROR_INVALID_IGNORE_INDEX: return "ignore_index collides with a valid label";
    case EFL_ERROR_INVALID_LABEL_CONVENTION: return "invalid label convention";
    case EFL_ERROR_BUFFER_TOO_SMALL: return "buffer too small";
    case EFL_ERROR_BUFFER_CONTEXT: return "buffer belongs to another OpenCL context";
    case EFL_ERROR_QUEUE_MISMATCH: return "queue of another context or device";
    case EFL_ERROR_INVALID_WAIT_LIST: return "invalid event wait list";
    case EFL_ERROR_TOO_MANY_ROWS: return "too many rows";
    case EFL_ERROR_INVALID_LABEL: return "label outside the convention";
    case EFL_ERROR_INVALID_STATE: return "invalid state values";
    case EFL_ERROR_NO_DEVICE: return "no OpenCL device";
    case EFL_ERROR_DEVICE_NOT_FOUND: return "EFL_DEVICE matches no device";
    case EFL_ERROR_UNSUPPORTED_DEVICE: return "unsupported device";
    case EFL_ERROR_BUILD_FAILED: return "kernel build failed";
    case EFL_ERROR_OUT_OF_MEMORY: return "out of memory";
    case EFL_ERROR_OPENCL: return "OpenCL error";
    case EFL_ERROR_NONFINITE: return "non-finite value (Inf or NaN): step skipped";
    case EFL_ERROR_INVALID_DTYPE: return "invalid dtype";
    case EFL_ERROR_INVALID_MODE: return "invalid mode, or a call this mode has no use for";
    case EFL_ERROR_INVALID_LAYOUT: return "invalid layout or shape";
    case EFL_ERROR_IO: return "file input/output failed";
    case EFL_ERROR_CHECKPOINT_CORRUPT: return "checkpoint truncated or corrupted";
    case EFL_ERROR_CHECKPOINT_VERSION: return "checkpoint format version not supported";
    case EFL_ERROR_CHECKPOINT_MISMATCH: return "checkpoint of another mode, C or parameters";
    case EFL_ERROR_REFUSED_BY_PEER: return "another rank refused the step: update skipped";
    case EFL_ERROR_OVERFLOW: return "result beyond the range of its type: refused";
    case EFL_ERROR_ALIASED_BUFFERS: return "an output overlaps an input or another output";
    case EFL_STATUS_COUNT_: break;
    }
    return "unknown status";
}
