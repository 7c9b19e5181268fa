"""efl: Equalized Focal Loss on OpenCL (ctypes binding of libefl).

    import efl
    loss = efl.EqualizedFocalLoss(num_classes=1203)
    value, grad = loss.step(logits, labels, normalizer=num_pos)   # float, float32 [N, C]
    value = loss.forward(logits, labels)                          # no state change
    loss.pos_grad, loss.neg_grad, loss.pos_neg                    # float64 [C]

The library is found through the environment variable EFL_LIBRARY (a path to
libefl.so), else <repo>/build/libefl.so, else ctypes.util.find_library("efl").
The OpenCL device is chosen by the C library from EFL_DEVICE ("P:D" indices or a
substring of "platform / device"), else the first GPU, else the first CPU device.
One default context is shared by every loss of the process; it is created on first
use and destroyed at exit.

Semantics: SPEC.md. Labels use the reference convention by default (0 = background,
k in 1..C = column k-1, ignore_index = ignored row); labels="zero_based" selects
k in 0..C-1 = column k, C = background.
"""

import atexit
import ctypes
import math
import threading
import weakref

import numpy as np

from . import _lib
from ._lib import Status

__all__ = [
    "EqualizedFocalLoss",
    "EflError",
    "Status",
    "version",
    "version_number",
    "library_path",
    "context_log",
    "warmup",
]


# ------------------------------------------------------------------ errors
def status_string(status):
    """The library's short English name of a status ("invalid normalizer")."""
    try:
        return _lib.load().efl_status_string(int(status)).decode("utf-8", "replace")
    except OSError:
        return "status %d" % int(status)


class EflError(RuntimeError):
    """A non-OK efl_status. ``status`` is the number, ``name`` the library's name for it."""

    def __init__(self, status, name=None, detail=None):
        status = int(status)
        if name is None:
            name = status_string(status)
        self.status = status
        self.name = name
        self.detail = detail
        msg = "efl: %s (status %d)" % (name, status)
        if detail:
            msg += ": " + detail
        super().__init__(msg)

    def __reduce__(self):
        return (EflError, (self.status, self.name, self.detail))


# ----------------------------------------------------------- default context
_ctx_lock = threading.RLock()
_ctx = None  # ctypes.c_void_p or None
_live_losses = weakref.WeakSet()


def _context():
    """The process-wide efl_context, created on first use."""
    global _ctx
    with _ctx_lock:
        if _ctx is None:
            lib = _lib.load()
            handle = ctypes.c_void_p()
            st = lib.efl_context_create_default(ctypes.byref(handle))
            if st != Status.OK:
                raise EflError(st)
            _ctx = handle
        return _ctx


def _context_detail(status):
    """Extra words for errors whose explanation lives in the context."""
    with _ctx_lock:
        if _ctx is None:
            return None
        lib = _lib.load()
        if status == Status.ERROR_OPENCL:
            return "OpenCL error %d" % lib.efl_context_last_cl_error(_ctx)
        if status == Status.ERROR_BUILD_FAILED:
            log = _read_log(lib, _ctx)
            return log[-4000:] if log else None
    return None


def _read_log(lib, ctx):
    size = lib.efl_context_log(ctx, None, 0)
    buf = ctypes.create_string_buffer(size + 1)
    lib.efl_context_log(ctx, buf, size + 1)
    return buf.value.decode("utf-8", "replace")


def _check(status):
    if status != Status.OK:
        raise EflError(status, detail=_context_detail(status))


@atexit.register
def _shutdown():
    global _ctx
    with _ctx_lock:
        for loss in list(_live_losses):
            try:
                loss.close()
            except Exception:  # pragma: no cover - best effort at exit
                pass
        if _ctx is not None:
            _lib.load().efl_context_destroy(_ctx)
            _ctx = None


# --------------------------------------------------------------- free calls
def version():
    """The version string of the linked library ("0.1.0")."""
    return _lib.load().efl_version_string().decode("ascii")


def version_number():
    """major * 10000 + minor * 100 + patch of the linked library."""
    return int(_lib.load().efl_version_number())


def library_path():
    """The path libefl.so was loaded from."""
    return _lib.library_path()


def context_log():
    """The default context's log (device choice, kernel build logs)."""
    lib = _lib.load()
    with _ctx_lock:
        return _read_log(lib, _context())


def warmup():
    """Create the default context and compile the kernels now."""
    lib = _lib.load()
    with _ctx_lock:
        ctx = _context()
        _check(lib.efl_context_warmup(ctx))


# --------------------------------------------------------------------- loss
_F32P = ctypes.POINTER(ctypes.c_float)
_F64P = ctypes.POINTER(ctypes.c_double)
_I32P = ctypes.POINTER(ctypes.c_int32)
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


def _ptr(arr, ptype):
    return arr.ctypes.data_as(ptype)


class EqualizedFocalLoss:
    """Equalized Focal Loss with its per-class gradient statistics on an OpenCL device.

    num_classes: C, the number of logit columns (background excluded; 1203 for LVIS).
    gamma: focal gamma_b (> 0). alpha: 0.25; negative switches alpha weighting off.
    scale_factor: s (>= 0; 0 is plain focal loss). ignore_index: label of ignored rows.
    loss_weight: multiplies loss and gradient. labels: "reference" (0 = background,
    k = column k-1) or "zero_based" (k = column k, C = background). accumulate: "auto"
    (float64 running totals where the device has them) or "float_pairs" (compensated floats).

    Calls on one loss are serialised by a lock; distinct losses may run concurrently.
    """

    def __init__(
        self,
        num_classes,
        gamma=2.0,
        alpha=0.25,
        scale_factor=8.0,
        ignore_index=-1,
        loss_weight=1.0,
        labels="reference",
        accumulate="auto",
    ):
        self._handle = None
        self._lock = threading.Lock()
        if isinstance(num_classes, (bool, np.bool_)) or not isinstance(num_classes, (int, np.integer)):
            raise TypeError("num_classes must be an integer, got %r" % (num_classes,))
        num_classes = int(num_classes)
        if not 1 <= num_classes <= 0xFFFFFFFF:
            raise ValueError("num_classes must be in 1..2^32-1, got %d" % num_classes)
        if isinstance(ignore_index, (bool, np.bool_)) or not isinstance(ignore_index, (int, np.integer)):
            raise TypeError("ignore_index must be an integer, got %r" % (ignore_index,))
        ignore_index = int(ignore_index)
        if not _INT32_MIN <= ignore_index <= _INT32_MAX:
            raise ValueError("ignore_index must fit in int32, got %d" % ignore_index)
        if labels not in _lib.LABEL_CONVENTIONS:
            raise ValueError("labels must be one of %s, got %r" % (sorted(_lib.LABEL_CONVENTIONS), labels))
        if accumulate not in _lib.ACCUMULATE:
            raise ValueError("accumulate must be one of %s, got %r" % (sorted(_lib.ACCUMULATE), accumulate))

        lib = _lib.load()
        cfg = _lib.Config()
        lib.efl_loss_config_init(ctypes.byref(cfg), num_classes)
        cfg.num_classes = num_classes
        cfg.gamma = float(gamma)
        cfg.alpha = float(alpha)
        cfg.scale_factor = float(scale_factor)
        cfg.loss_weight = float(loss_weight)
        cfg.ignore_index = ignore_index
        cfg.labels = _lib.LABEL_CONVENTIONS[labels]
        cfg.accumulate = _lib.ACCUMULATE[accumulate]

        self.num_classes = num_classes
        self.gamma = float(gamma)
        self.alpha = float(alpha)
        self.scale_factor = float(scale_factor)
        self.loss_weight = float(loss_weight)
        self.ignore_index = ignore_index
        self.labels = labels

        with _ctx_lock:
            ctx = _context()
            handle = ctypes.c_void_p()
            st = lib.efl_loss_create(ctx, ctypes.byref(cfg), ctypes.byref(handle))
            _check(st)
            self._handle = handle
            _live_losses.add(self)

    # -------------------------------------------------------------- lifetime
    def close(self):
        """Destroy the loss and its device state. Idempotent."""
        lock = getattr(self, "_lock", None)
        if lock is None:
            return
        with lock:
            handle, self._handle = self._handle, None
            if handle is not None:
                _lib.load().efl_loss_destroy(handle)
        try:
            _live_losses.discard(self)
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    def __del__(self):
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()
        return False

    @property
    def closed(self):
        return self._handle is None

    def _live(self):
        if self._handle is None:
            raise ValueError("the loss is closed")
        return self._handle

    def __repr__(self):
        return (
            "EqualizedFocalLoss(num_classes=%d, gamma=%r, alpha=%r, scale_factor=%r, ignore_index=%d, "
            "loss_weight=%r, labels=%r%s)"
            % (
                self.num_classes,
                self.gamma,
                self.alpha,
                self.scale_factor,
                self.ignore_index,
                self.loss_weight,
                self.labels,
                ", closed" if self.closed else "",
            )
        )

    def config(self):
        """The configuration as the library stores it (float32-rounded parameters)."""
        cfg = _lib.Config()
        with self._lock:
            _check(_lib.load().efl_loss_get_config(self._live(), ctypes.byref(cfg)))
        return {
            "num_classes": int(cfg.num_classes),
            "gamma": float(cfg.gamma),
            "alpha": float(cfg.alpha),
            "scale_factor": float(cfg.scale_factor),
            "loss_weight": float(cfg.loss_weight),
            "ignore_index": int(cfg.ignore_index),
            "labels": {v: k for k, v in _lib.LABEL_CONVENTIONS.items()}.get(int(cfg.labels), int(cfg.labels)),
        }

    # ------------------------------------------------------------ arguments
    @staticmethod
    def _storage(arr, dtype):
        """The storage type of logits or a gradient: float32 (the default, anything converts),
        float16 (np.float16 arrays), or bfloat16 (np.uint16 bit patterns, dtype="bfloat16")."""
        if dtype is None:
            dtype = "float16" if getattr(arr, "dtype", None) == np.float16 else "float32"
        if dtype not in _lib.DTYPES:
            raise ValueError("dtype must be one of %s, got %r" % (sorted(_lib.DTYPES), dtype))
        if dtype == "bfloat16":
            a = np.asarray(arr)
            if a.dtype != np.uint16:
                raise ValueError("bfloat16 values are passed as np.uint16 bit patterns, got dtype %s" % a.dtype)
            return np.ascontiguousarray(a), dtype
        return np.ascontiguousarray(arr, dtype=np.float16 if dtype == "float16" else np.float32), dtype

    def _inputs(self, logits, labels, dtype=None):
        x, dtype = self._storage(logits, dtype)
        if x.ndim != 2 or x.shape[1] != self.num_classes:
            raise ValueError(
                "logits must have shape [N, %d] (num_classes columns), got %s" % (self.num_classes, tuple(x.shape))
            )
        n = x.shape[0]
        y = np.asarray(labels)
        if y.ndim != 1 or y.shape[0] != n:
            raise ValueError("labels must have shape [%d] (one per logit row), got %s" % (n, tuple(y.shape)))
        if y.dtype.kind in "iu":
            if n and (int(y.min()) < _INT32_MIN or int(y.max()) > _INT32_MAX):
                raise ValueError("labels must fit in int32")
        elif y.dtype.kind == "f":
            if n and not (np.all(np.isfinite(y)) and np.all(y == np.round(y))):
                raise ValueError("labels must be integers")
            if n and (y.min() < _INT32_MIN or y.max() > _INT32_MAX):
                raise ValueError("labels must fit in int32")
        elif n:
            raise ValueError("labels must be integers, got dtype %s" % y.dtype)
        y = np.ascontiguousarray(y, dtype=np.int32)
        return x, y, n, dtype

    @staticmethod
    def _normalizer(normalizer):
        if normalizer is None:
            return 1.0
        try:
            return float(normalizer)
        except (TypeError, ValueError):
            raise ValueError("normalizer must be a positive number or None, got %r" % (normalizer,))

    @staticmethod
    def _reduction(reduction):
        try:
            return _lib.REDUCTIONS[reduction]
        except (KeyError, TypeError):
            raise ValueError("reduction must be one of %s, got %r" % (sorted(_lib.REDUCTIONS), reduction))

    # ---------------------------------------------------------------- calls
    def step(self, logits, labels, normalizer=None, reduction="mean", dtype=None):
        """One training step: returns (loss, grad) and updates the per-class state.

        logits: [N, C] array-like, float32 by default; np.float16 arrays are stored as float16
        (the gradient comes back as float16), and bfloat16 is passed as np.uint16 bit patterns
        with dtype="bfloat16" (the gradient comes back the same way). Arithmetic is float32.
        labels: [N] integers. normalizer: divides the loss for reduction="mean" (None: 1.0).
        grad is d loss / d logits [N, C]. The state update uses this step's gradient; the step
        itself uses the state from before it.
        """
        x, y, n, dtype = self._inputs(logits, labels, dtype)
        norm = self._normalizer(normalizer)
        red = self._reduction(reduction)
        out = np.zeros(1, dtype=np.float32)
        grad = np.empty((n, self.num_classes), dtype=x.dtype)
        lib = _lib.load()
        with self._lock:
            st = lib.efl_loss_step_host_typed(
                self._live(), _lib.DTYPES[dtype], x.ctypes.data, _ptr(y, _I32P), n, norm, red, _ptr(out, _F32P),
                grad.ctypes.data,
            )
        _check(st)
        return float(out[0]), grad

    def forward(self, logits, labels, normalizer=None, reduction="mean", dtype=None):
        """The loss only (evaluation): no gradient, state untouched. dtype as for step()."""
        x, y, n, dtype = self._inputs(logits, labels, dtype)
        norm = self._normalizer(normalizer)
        red = self._reduction(reduction)
        out = np.zeros(1, dtype=np.float32)
        lib = _lib.load()
        with self._lock:
            st = lib.efl_loss_forward_host_typed(
                self._live(), _lib.DTYPES[dtype], x.ctypes.data, _ptr(y, _I32P), n, norm, red, _ptr(out, _F32P)
            )
        _check(st)
        return float(out[0])

    def accumulate(self, grad, labels, grad_scale=1.0, dtype=None):
        """The state update from a gradient you computed yourself ([N, C], e.g. by autograd,
        possibly multiplied by an AMP loss scale, which grad_scale divides out). A gradient
        with Inf or NaN in a valid row is skipped and counted (skipped_steps) and raises
        EflError(ERROR_NONFINITE); the state is then unchanged. dtype as for step()."""
        g, y, n, dtype = self._inputs(grad, labels, dtype)
        lib = _lib.load()
        with self._lock:
            st = lib.efl_loss_accumulate_host(
                self._live(), _lib.DTYPES[dtype], g.ctypes.data, _ptr(y, _I32P), n, float(grad_scale)
            )
        _check(st)

    @property
    def skipped_steps(self):
        """Steps and accumulates refused so far (invalid labels, non-finite values)."""
        count = ctypes.c_uint32(0)
        lib = _lib.load()
        with self._lock:
            st = lib.efl_loss_skipped_steps_host(self._live(), ctypes.byref(count))
        _check(st)
        return int(count.value)

    # ---------------------------------------------------------------- state
    def read_state(self):
        """(pos_grad, neg_grad, pos_neg), each float64 [C]."""
        c = self.num_classes
        pos = np.empty(c, dtype=np.float64)
        neg = np.empty(c, dtype=np.float64)
        g = np.empty(c, dtype=np.float64)
        lib = _lib.load()
        with self._lock:
            st = lib.efl_loss_read_state_host(self._live(), _ptr(pos, _F64P), _ptr(neg, _F64P), _ptr(g, _F64P))
        _check(st)
        return pos, neg, g

    def _read_one(self, which):
        c = self.num_classes
        arr = np.empty(c, dtype=np.float64)
        ptrs = [None, None, None]
        ptrs[which] = _ptr(arr, _F64P)
        lib = _lib.load()
        with self._lock:
            st = lib.efl_loss_read_state_host(self._live(), *ptrs)
        _check(st)
        return arr

    @property
    def pos_grad(self):
        """Accumulated positive gradient magnitude per class (float64 [C], a copy)."""
        return self._read_one(0)

    @property
    def neg_grad(self):
        """Accumulated negative gradient magnitude per class (float64 [C], a copy)."""
        return self._read_one(1)

    @property
    def pos_neg(self):
        """g = clamp(pos_grad / (neg_grad + 1e-10), 0, 1) per class (float64 [C], a copy)."""
        return self._read_one(2)

    def state_dict(self):
        """The state as a dict of float64 arrays (for checkpoints)."""
        pos, neg, g = self.read_state()
        return {"pos_grad": pos, "neg_grad": neg, "pos_neg": g}

    def load_state_dict(self, state):
        self.load_state(state["pos_grad"], state["neg_grad"], state["pos_neg"])

    def load_state(self, pos_grad, neg_grad, pos_neg):
        """Replace the state (e.g. when resuming). Values must be finite and >= 0."""
        arrs = []
        for name, value in (("pos_grad", pos_grad), ("neg_grad", neg_grad), ("pos_neg", pos_neg)):
            a = np.ascontiguousarray(value, dtype=np.float64)
            if a.shape != (self.num_classes,):
                raise ValueError("%s must have shape [%d], got %s" % (name, self.num_classes, tuple(a.shape)))
            arrs.append(a)
        lib = _lib.load()
        with self._lock:
            st = lib.efl_loss_write_state_host(self._live(), *(_ptr(a, _F64P) for a in arrs))
        _check(st)

    def reset_state(self):
        """Back to pos_grad = neg_grad = 0, pos_neg = 1."""
        lib = _lib.load()
        with self._lock:
            st = lib.efl_loss_reset_state_host(self._live())
        _check(st)
