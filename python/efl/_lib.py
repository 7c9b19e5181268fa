"""Low-level ctypes access to libefl: locating, loading and declaring the C API.

Nothing in here is public; use the names exported by the ``efl`` package.

The enums, structures and prototypes below are copied by hand from include/efl/efl.h;
tests/python/test_abi.py checks every value, field offset and parameter kind against what the
C compiler makes of the header (tests/abi_probe.c). A structure, enum dict or constant added
here needs an entry in that test's tables.
"""

import ctypes
import ctypes.util
import os

__all__ = [
    "load",
    "library_path",
    "Status",
    "Config",
    "HostBatch",
    "Batch",
    "MAX_LEVELS",
    "REDUCTIONS",
    "LABEL_CONVENTIONS",
    "ACCUMULATE",
    "DTYPES",
    "MODES",
    "LAYOUTS",
    "OPS",
]


class Status:
    """efl_status values (include/efl/efl.h); the numbers are stable."""

    OK = 0
    ERROR_NULL_HANDLE = 1
    ERROR_NULL_BUFFER = 2
    ERROR_INVALID_NUM_CLASSES = 3
    ERROR_INVALID_GAMMA = 4
    ERROR_INVALID_PARAMETER = 5
    ERROR_INVALID_NORMALIZER = 6
    ERROR_INVALID_REDUCTION = 7
    ERROR_INVALID_IGNORE_INDEX = 8
    ERROR_INVALID_LABEL_CONVENTION = 9
    ERROR_BUFFER_TOO_SMALL = 10
    ERROR_BUFFER_CONTEXT = 11
    ERROR_QUEUE_MISMATCH = 12
    ERROR_INVALID_WAIT_LIST = 13
    ERROR_TOO_MANY_ROWS = 14
    ERROR_INVALID_LABEL = 15
    ERROR_INVALID_STATE = 16
    ERROR_NO_DEVICE = 17
    ERROR_DEVICE_NOT_FOUND = 18
    ERROR_UNSUPPORTED_DEVICE = 19
    ERROR_BUILD_FAILED = 20
    ERROR_OUT_OF_MEMORY = 21
    ERROR_OPENCL = 22
    ERROR_NONFINITE = 23
    ERROR_INVALID_DTYPE = 24
    ERROR_INVALID_MODE = 25
    ERROR_INVALID_LAYOUT = 26
    ERROR_IO = 27
    ERROR_CHECKPOINT_CORRUPT = 28
    ERROR_CHECKPOINT_VERSION = 29
    ERROR_CHECKPOINT_MISMATCH = 30
    ERROR_REFUSED_BY_PEER = 31
    ERROR_OVERFLOW = 32
    ERROR_ALIASED_BUFFERS = 33


# efl_reduction, efl_label_convention, efl_accumulate, efl_dtype, efl_mode, efl_layout, efl_op
REDUCTIONS = {"mean": 0, "sum": 1, "none": 2}
LABEL_CONVENTIONS = {"reference": 0, "zero_based": 1}
ACCUMULATE = {"auto": 0, "float_pairs": 1}
DTYPES = {"float32": 0, "float16": 1, "bfloat16": 2}
MODES = {"efl": 0, "focal": 1, "eqlv2": 2}
LAYOUTS = {"rows": 0, "anchor": 1, "class": 2}  # EFL_LAYOUT_ROWS, _ANCHOR_MAJOR, _CLASS_MAJOR
OPS = {"step": 0, "forward": 1, "accumulate": 2, "compute": 3, "collect": 4}
MAX_LEVELS = 8  # EFL_MAX_LEVELS


class Config(ctypes.Structure):
    """efl_loss_config."""

    _fields_ = [
        ("num_classes", ctypes.c_uint32),
        ("gamma", ctypes.c_float),
        ("alpha", ctypes.c_float),
        ("scale_factor", ctypes.c_float),
        ("loss_weight", ctypes.c_float),
        ("ignore_index", ctypes.c_int32),
        ("labels", ctypes.c_int),  # an enum: int-sized on every ABI we target
        ("accumulate", ctypes.c_int),
        ("mode", ctypes.c_int),  # efl_mode
        ("mu", ctypes.c_float),
    ]


def _batch_fields(buffers):
    """The fields of efl_host_batch (buffers False) or efl_batch (True, with normalizer_buffer)."""
    return [
        ("layout", ctypes.c_int),
        ("dtype", ctypes.c_int),
        ("rows", ctypes.c_size_t),
        ("images", ctypes.c_uint32),
        ("anchors", ctypes.c_uint32),
        ("levels", ctypes.c_uint32),
        ("height", ctypes.c_uint32 * MAX_LEVELS),
        ("width", ctypes.c_uint32 * MAX_LEVELS),
        ("input", ctypes.c_void_p * MAX_LEVELS),
        ("grad", ctypes.c_void_p * MAX_LEVELS),
        ("loss_elems", ctypes.c_void_p * MAX_LEVELS),
        ("labels", ctypes.c_void_p),
        ("reduction", ctypes.c_int),
        ("normalizer", ctypes.c_float),
    ] + ([("normalizer_buffer", ctypes.c_void_p)] if buffers else []) + [
        ("loss", ctypes.c_void_p),
        ("grad_scale", ctypes.c_float),
    ]


class HostBatch(ctypes.Structure):
    """efl_host_batch: a batch on host arrays (pointers are raw addresses, c_void_p)."""

    _fields_ = _batch_fields(False)


class Batch(ctypes.Structure):
    """efl_batch: a batch in the caller's cl_mem buffers (handles as raw addresses, c_void_p);
    efl_enqueue_batch runs it on the caller's command queue (efl.tinygrad)."""

    _fields_ = _batch_fields(True)


_c_float_p = ctypes.POINTER(ctypes.c_float)
_c_double_p = ctypes.POINTER(ctypes.c_double)
_c_int32_p = ctypes.POINTER(ctypes.c_int32)
_handle = ctypes.c_void_p
_handle_p = ctypes.POINTER(ctypes.c_void_p)
_status = ctypes.c_int

# name: (restype, argtypes)
_PROTOTYPES = {
    "efl_version_number": (ctypes.c_uint, []),
    "efl_version_string": (ctypes.c_char_p, []),
    "efl_status_string": (ctypes.c_char_p, [ctypes.c_int]),
    "efl_context_create_default": (_status, [_handle_p]),
    "efl_context_destroy": (None, [_handle]),
    "efl_context_last_cl_error": (ctypes.c_int32, [_handle]),
    "efl_context_log": (ctypes.c_size_t, [_handle, ctypes.c_char_p, ctypes.c_size_t]),
    "efl_context_warmup": (_status, [_handle]),
    "efl_devices_matching": (ctypes.c_size_t, [ctypes.c_char_p, _handle_p, ctypes.c_size_t]),
    "efl_device_pick": (_status, [ctypes.c_char_p, _handle_p]),
    "efl_device_type_name": (ctypes.c_char_p, [_handle]),
    "efl_device_describe": (ctypes.c_size_t, [_handle, ctypes.c_char_p, ctypes.c_size_t]),
    "efl_devices_summary": (ctypes.c_size_t, [ctypes.c_char_p, ctypes.c_size_t]),
    "efl_loss_config_init": (None, [ctypes.POINTER(Config), ctypes.c_uint32]),
    "efl_loss_config_init_mode": (None, [ctypes.POINTER(Config), ctypes.c_uint32, ctypes.c_int]),
    "efl_loss_create": (_status, [_handle, ctypes.POINTER(Config), _handle_p]),
    "efl_loss_destroy": (None, [_handle]),
    "efl_loss_get_config": (_status, [_handle, ctypes.POINTER(Config)]),
    "efl_loss_step_host": (
        _status,
        [_handle, _c_float_p, _c_int32_p, ctypes.c_size_t, ctypes.c_float, ctypes.c_int, _c_float_p, _c_float_p],
    ),
    "efl_loss_forward_host": (
        _status,
        [_handle, _c_float_p, _c_int32_p, ctypes.c_size_t, ctypes.c_float, ctypes.c_int, _c_float_p],
    ),
    "efl_loss_step_host_typed": (
        _status,
        [_handle, ctypes.c_int, ctypes.c_void_p, _c_int32_p, ctypes.c_size_t, ctypes.c_float, ctypes.c_int,
         _c_float_p, ctypes.c_void_p],
    ),
    "efl_loss_forward_host_typed": (
        _status,
        [_handle, ctypes.c_int, ctypes.c_void_p, _c_int32_p, ctypes.c_size_t, ctypes.c_float, ctypes.c_int,
         _c_float_p],
    ),
    "efl_loss_accumulate_host": (
        _status,
        [_handle, ctypes.c_int, ctypes.c_void_p, _c_int32_p, ctypes.c_size_t, ctypes.c_float],
    ),
    "efl_loss_skipped_steps_host": (_status, [_handle, ctypes.POINTER(ctypes.c_uint32)]),
    "efl_loss_read_state_host": (_status, [_handle, _c_double_p, _c_double_p, _c_double_p]),
    "efl_loss_write_state_host": (_status, [_handle, _c_double_p, _c_double_p, _c_double_p]),
    "efl_loss_reset_state_host": (_status, [_handle]),
    "efl_host_batch_init": (None, [ctypes.POINTER(HostBatch)]),
    "efl_loss_run_host": (_status, [_handle, ctypes.c_int, ctypes.POINTER(HostBatch)]),
    "efl_loss_save_checkpoint_host": (_status, [_handle, ctypes.c_char_p]),
    "efl_loss_load_checkpoint_host": (_status, [_handle, ctypes.c_char_p]),
    "efl_loss_read_statistics_host": (_status, [_handle, _c_double_p]),
    "efl_loss_apply_statistics_host": (_status, [_handle, _c_double_p]),
    # the caller's OpenCL objects (efl.ExternalContext, efl.tinygrad): handles are raw addresses
    "efl_context_create": (_status, [_handle, _handle, _handle_p]),
    "efl_batch_init": (None, [ctypes.POINTER(Batch)]),
    "efl_enqueue_batch": (
        _status,
        [_handle, _handle, ctypes.c_int, ctypes.POINTER(Batch), ctypes.c_uint32, ctypes.c_void_p, ctypes.c_void_p],
    ),
    "efl_loss_read_statistics": (_status, [_handle, _handle, _c_double_p]),
    "efl_loss_apply_statistics": (_status, [_handle, _handle, _c_double_p]),
    "efl_loss_query_status": (_status, [_handle, _handle]),
    "efl_loss_skipped_steps": (_status, [_handle, _handle, ctypes.POINTER(ctypes.c_uint32)]),
    "efl_loss_read_state": (_status, [_handle, _handle, _c_double_p, _c_double_p, _c_double_p]),
    "efl_loss_write_state": (_status, [_handle, _handle, _c_double_p, _c_double_p, _c_double_p]),
    "efl_loss_reset_state": (_status, [_handle, _handle]),
}

# Declared when present: a library older than the header lacks them, and the calls that need
# them say so (EflError) instead of the whole binding failing to load.
_OPTIONAL = {
    "efl_loss_config_init_mode",
    "efl_host_batch_init",
    "efl_loss_run_host",
    "efl_loss_save_checkpoint_host",
    "efl_loss_load_checkpoint_host",
    "efl_loss_read_statistics_host",
    "efl_loss_apply_statistics_host",
    "efl_devices_matching",
    "efl_device_pick",
    "efl_device_type_name",
    "efl_device_describe",
    "efl_devices_summary",
    "efl_context_create",
    "efl_batch_init",
    "efl_enqueue_batch",
    "efl_loss_read_statistics",
    "efl_loss_apply_statistics",
    "efl_loss_query_status",
    "efl_loss_skipped_steps",
    "efl_loss_read_state",
    "efl_loss_write_state",
    "efl_loss_reset_state",
}


def _candidates():
    """The paths to try, in order, and whether the first is explicit: EFL_LIBRARY alone when set;
    else the library inside this package (efl/libefl.so, where `pip install .` puts it), then
    <repo>/build/libefl.so (a source build), then ctypes.util.find_library("efl")."""
    env = os.environ.get("EFL_LIBRARY")
    if env:
        # An explicit path is authoritative: do not silently fall back to another build.
        return [env], True
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(os.path.dirname(here))  # <repo>/python/efl -> <repo>
    out = [os.path.join(here, "libefl.so"), os.path.join(repo, "build", "libefl.so")]
    found = ctypes.util.find_library("efl")
    if found:
        out.append(found)
    return out, False


_lib = None
_lib_path = None


def load():
    """Load libefl once and declare its prototypes. Raises OSError when it cannot be found."""
    global _lib, _lib_path
    if _lib is not None:
        return _lib
    paths, explicit = _candidates()
    errors = []
    for path in paths:
        if not explicit and os.sep in path and not os.path.exists(path):
            errors.append("%s: not found" % path)
            continue
        try:
            lib = ctypes.CDLL(path)
        except OSError as exc:
            errors.append("%s: %s" % (path, exc))
            if explicit:
                break
            continue
        for name, (restype, argtypes) in _PROTOTYPES.items():
            try:
                fn = getattr(lib, name)
            except AttributeError:
                if name in _OPTIONAL:
                    continue
                raise
            fn.restype = restype
            fn.argtypes = argtypes
        _lib, _lib_path = lib, path
        return lib
    raise OSError(
        "libefl not found (install the package with `pip install .`, set EFL_LIBRARY to the path of "
        "libefl.so, or build it into <repo>/build): "
        + "; ".join(errors or ["ctypes.util.find_library('efl') found nothing"])
    )


def has(name):
    """Whether the loaded library exports `name` (one of the optional, newer calls)."""
    return hasattr(load(), name)


def library_path():
    """The path libefl was loaded from (loading it if needed)."""
    load()
    return _lib_path
