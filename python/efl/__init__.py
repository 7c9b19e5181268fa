"""efl: Equalized Focal Loss on OpenCL (ctypes binding of libefl).

    import efl
    loss = efl.EqualizedFocalLoss(num_classes=1203)
    value, grad = loss.step(logits, labels, normalizer=num_pos)   # float, float32 [N, C]
    value = loss.forward(logits, labels)                          # no state change
    loss.pos_grad, loss.neg_grad, loss.pos_neg                    # float64 [C]

    # the head's own outputs, one [B, A*C, H, W] array per FPN level (no permute, no copy)
    value, grads = loss.step(levels=[p3, p4, p5, p6, p7], labels=labels, anchors=A,
                             channel_order="anchor", normalizer=num_pos)   # grads: one per level
    elems, grad = loss.step(logits, labels, reduction="none")     # per-element loss [N, C]

    efl.FocalLoss(80), efl.EQLv2Loss(1203)                        # the related modes (mode=...)
    loss.save_checkpoint("efl_state.bin"); loss.load_checkpoint("efl_state.bin")
    sd = loss.state_dict(as_torch=True)   # {"pos_grad", "neg_grad", "pos_neg"} as the reference
    loss.load_state_dict(sd)              # float32 or float64, numpy or torch

    import efl.torch                      # PyTorch adapter (imported only on request)
    crit = efl.torch.EqualizedFocalLossModule(1203)
    crit(logits_tensor, labels_tensor, normalizer=num_pos).backward()

    import efl.tinygrad                   # tinygrad's CL device, zero-copy (docs/tinygrad.md)

The library is found through the environment variable EFL_LIBRARY (a path to
libefl.so; when set, nothing else is tried), else the libefl.so inside this package
(where `pip install .` puts it), else <repo>/build/libefl.so (a source build), else
ctypes.util.find_library("efl").
The OpenCL device is chosen by the C library from EFL_DEVICE ("P:D" indices, a type
"gpu"/"cpu"/"accelerator", "type:name", or a substring of "platform / device"), else the
first GPU, else the first CPU device; `python -m efl` lists the devices and the pick
(docs/devices.md).
One default context is shared by every loss of the process; it is created on first
use and destroyed at exit.

Semantics: docs/semantics.md. Labels use the reference convention by default (0 = background,
k in 1..C = column k-1, ignore_index = ignored row); labels="zero_based" selects
k in 0..C-1 = column k, C = background.
"""

import atexit
import ctypes
import os
import tempfile
import threading
import weakref

import numpy as np

from . import _lib
from ._lib import Status

__all__ = [
    "EqualizedFocalLoss",
    "FocalLoss",
    "EQLv2Loss",
    "EflError",
    "ExternalContext",
    "Status",
    "version",
    "version_number",
    "library_path",
    "context_log",
    "warmup",
    "devices",
    "default_device",
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


_live_contexts = weakref.WeakSet()


class ExternalContext:
    """An efl context on the caller's OpenCL context and device (efl_context_create), for a
    framework that owns its own OpenCL objects (efl.tinygrad uses one per tinygrad CL device).

    cl_context, cl_device: the handles as integer addresses (e.g. ctypes.cast(h, c_void_p).value).
    The library retains both and releases them when this context is closed; the caller keeps its
    own references. Losses made with EqualizedFocalLoss(..., context=this) keep it alive; close()
    also closes them. The process-wide default context (efl_context_create_default) is unaffected.
    """

    def __init__(self, cl_context, cl_device):
        for name, h in (("cl_context", cl_context), ("cl_device", cl_device)):
            if isinstance(h, bool) or not isinstance(h, int) or h <= 0:
                raise ValueError("%s must be a non-NULL handle given as an int address, got %r" % (name, h))
        self.cl_context, self.cl_device = int(cl_context), int(cl_device)
        self._lock = threading.RLock()
        self._losses = weakref.WeakSet()
        handle = ctypes.c_void_p()
        st = _fn("efl_context_create")(ctypes.c_void_p(self.cl_context), ctypes.c_void_p(self.cl_device),
                                       ctypes.byref(handle))
        if st != Status.OK:
            raise EflError(st)
        self._handle = handle
        _live_contexts.add(self)

    def _live(self):
        if self._handle is None:
            raise ValueError("the efl context is closed")
        return self._handle

    @property
    def closed(self):
        return self._handle is None

    def log(self):
        """This context's log (kernel build logs)."""
        with self._lock:
            return _read_log(_lib.load(), self._live())

    def detail(self, status):
        """Extra words for an error whose explanation lives in this context (or None)."""
        with self._lock:
            if self._handle is None:
                return None
            lib = _lib.load()
            if status == Status.ERROR_OPENCL:
                return "OpenCL error %d" % lib.efl_context_last_cl_error(self._handle)
            if status == Status.ERROR_BUILD_FAILED:
                log = _read_log(lib, self._handle)
                return log[-4000:] if log else None
        return None

    def check(self, status):
        if status != Status.OK:
            raise EflError(status, detail=self.detail(status))

    def close(self):
        """Close the losses made on this context, then destroy it. Idempotent."""
        for loss in list(self._losses):
            try:
                loss.close()
            except Exception:  # pragma: no cover - best effort
                pass
        with self._lock:
            handle, self._handle = self._handle, None
            if handle is not None:
                _lib.load().efl_context_destroy(handle)

    def __del__(self):
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    def __repr__(self):
        return "ExternalContext(cl_context=0x%x, cl_device=0x%x%s)" % (
            self.cl_context, self.cl_device, ", closed" if self.closed else "")


@atexit.register
def _shutdown():
    global _ctx
    with _ctx_lock:
        for loss in list(_live_losses):
            try:
                loss.close()
            except Exception:  # pragma: no cover - best effort at exit
                pass
        for c in list(_live_contexts):
            try:
                c.close()
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
    """Create the default context and compile now the program a default 1203-class float32 loss
    uses (efl_context_warmup); other configurations compile their own on first use."""
    lib = _lib.load()
    with _ctx_lock:
        ctx = _context()
        _check(lib.efl_context_warmup(ctx))


# --------------------------------------------------------------------- loss
_F32P = ctypes.POINTER(ctypes.c_float)
_F64P = ctypes.POINTER(ctypes.c_double)
_I32P = ctypes.POINTER(ctypes.c_int32)
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_UINT32_MAX = 2**32 - 1
_STATE_NAMES = ("pos_grad", "neg_grad", "pos_neg")
_CHANNEL_ORDERS = {"anchor": "anchor", "anchor_major": "anchor", "class": "class", "class_major": "class"}


def _channel_order(channel_order):
    """The layout ("anchor" or "class") a channel_order names; ValueError for anything else."""
    order = _CHANNEL_ORDERS.get(channel_order) if isinstance(channel_order, str) else None
    if order is None:
        raise ValueError("channel_order must be 'anchor' or 'class', got %r" % (channel_order,))
    return order


def _level_geometry(i, shape, C, images, anchors):
    """Level i's (images, anchors, H, W) from its shape [B, A*C, H, W], checked against the levels
    before it (images, anchors: None until a level sets them); ValueError naming the level."""
    if len(shape) != 4:
        raise ValueError("level %d must have shape [B, A*C, H, W], got %s" % (i, tuple(shape)))
    b, ch, h, w = (int(v) for v in shape)
    if images is None:
        images = b
    elif b != images:
        raise ValueError("level %d has %d images, level 0 has %d" % (i, b, images))
    if anchors is None:
        if ch == 0 or ch % C:
            raise ValueError("level %d: %d channels is not a multiple of num_classes=%d" % (i, ch, C))
        anchors = ch // C
    elif ch != int(anchors) * C:
        raise ValueError("level %d: %d channels, want anchors * num_classes = %d * %d" % (i, ch, int(anchors), C))
    if h > _UINT32_MAX or w > _UINT32_MAX:
        raise ValueError("level %d: height and width must fit in uint32" % i)
    return images, anchors, h, w



def _out_array(o, name):
    """out= as a numpy array sharing its memory: a numpy array as it is, a CPU torch tensor
    through efl.torch's view (bfloat16 as uint16 bit patterns). Anything else is refused."""
    if isinstance(o, np.ndarray):
        return o
    if type(o).__module__.split(".")[0] == "torch":
        from . import torch as _efl_torch  # torch is imported only for a tensor the caller passed
        if o.device.type != "cpu" or o.requires_grad or not o.is_contiguous():
            raise ValueError("%s: a torch tensor must be on the CPU, contiguous and not require grad" % name)
        return _efl_torch._view(o)
    raise ValueError("%s must be numpy arrays or CPU torch tensors, got %s" % (name, type(o).__name__))

def _ptr(arr, ptype):
    return arr.ctypes.data_as(ptype)


def _fn(name):
    """A library function that newer headers declare; a clear error when this libefl lacks it."""
    lib = _lib.load()
    fn = getattr(lib, name, None)
    if fn is None:
        raise NotImplementedError("%s lacks %s() (a libefl older than this binding)" % (_lib.library_path(), name))
    return fn


def _to_numpy_state(value, name):
    """A state array from numpy, a list, or a torch tensor (any dtype or device) as float64."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, without importing torch
        value = value.detach().cpu()
        if hasattr(value, "double"):
            value = value.double()
        value = value.numpy()
    try:
        return np.ascontiguousarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError("%s must be an array of numbers: %s" % (name, exc))


class _Prepared:
    """A validated batch: storage arrays in the library's layout, labels, and the shape facts."""

    __slots__ = ("layout", "dtype", "arrays", "labels", "rows", "images", "anchors", "hw")


class EqualizedFocalLoss:
    """Equalized Focal Loss with its per-class gradient statistics on an OpenCL device.

    num_classes: C, the number of logit columns (background excluded; 1203 for LVIS).
    mode: "efl" (the default), "focal" (focal loss, no state) or "eqlv2" (EQLv2's
    sigmoid-weighted binary cross-entropy; its gamma, alpha and mu set the weights
    neg_w = sigmoid(gamma (g - mu)), pos_w = 1 + alpha (1 - neg_w)).
    gamma: focal gamma_b (> 0; EQLv2: 12). alpha: 0.25; negative switches alpha weighting off
    (EQLv2: 4). scale_factor: s (>= 0; 0 is plain focal loss; the focal mode uses 0).
    mu: EQLv2 only (0.8). Parameters left None take the mode's defaults.
    ignore_index: label of ignored rows. loss_weight: multiplies loss and gradient.
    labels: "reference" (0 = background, k = column k-1) or "zero_based" (k = column k,
    C = background). accumulate: "auto" (float64 running totals where the device has them)
    or "float_pairs" (compensated floats).

    context: None (the process-wide default context) or an efl.ExternalContext (the caller's
    OpenCL context and device; the loss keeps it alive).

    Calls on one loss are serialised by a lock; distinct losses may run concurrently.
    """

    _default_mode = "efl"

    def __init__(
        self,
        num_classes,
        gamma=None,
        alpha=None,
        scale_factor=None,
        ignore_index=-1,
        loss_weight=None,
        labels="reference",
        accumulate="auto",
        mode=None,
        mu=None,
        context=None,
    ):
        self._handle = None
        self._context = None
        self._lock = threading.Lock()
        if mode is None:
            mode = self._default_mode
        if isinstance(num_classes, (bool, np.bool_)) or not isinstance(num_classes, (int, np.integer)):
            raise TypeError("num_classes must be an integer, got %r" % (num_classes,))
        num_classes = int(num_classes)
        if not 1 <= num_classes <= _UINT32_MAX:
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
        if mode not in _lib.MODES:
            raise ValueError("mode must be one of %s, got %r" % (sorted(_lib.MODES), mode))

        lib = _lib.load()
        cfg = _lib.Config()
        if hasattr(lib, "efl_loss_config_init_mode"):
            lib.efl_loss_config_init_mode(ctypes.byref(cfg), num_classes, _lib.MODES[mode])
        elif mode == "efl":
            lib.efl_loss_config_init(ctypes.byref(cfg), num_classes)
        else:
            raise NotImplementedError("%s has no loss modes (a libefl older than this binding)" % _lib.library_path())
        cfg.num_classes = num_classes
        for field, value in (("gamma", gamma), ("alpha", alpha), ("scale_factor", scale_factor),
                             ("loss_weight", loss_weight), ("mu", mu)):
            if value is not None:
                try:
                    setattr(cfg, field, float(value))
                except (TypeError, ValueError):
                    raise TypeError("%s must be a number, got %r" % (field, value))
        cfg.ignore_index = ignore_index
        cfg.labels = _lib.LABEL_CONVENTIONS[labels]
        cfg.accumulate = _lib.ACCUMULATE[accumulate]

        self.num_classes = num_classes
        self.mode = mode
        # the values asked for, or the mode's defaults (float32-rounded by the library: see config())
        short = lambda v: float(str(np.float32(v)))  # the float32 default as written (0.8, not 0.800000011920929)
        self.gamma = float(gamma) if gamma is not None else short(cfg.gamma)
        self.alpha = float(alpha) if alpha is not None else short(cfg.alpha)
        self.scale_factor = float(scale_factor) if scale_factor is not None else short(cfg.scale_factor)
        self.loss_weight = float(loss_weight) if loss_weight is not None else short(cfg.loss_weight)
        self.mu = float(mu) if mu is not None else short(cfg.mu)
        self.ignore_index = ignore_index
        self.labels = labels
        self.accumulate_mode = accumulate

        if context is not None:
            if not isinstance(context, ExternalContext):
                raise TypeError("context must be an efl.ExternalContext or None, got %s" % type(context).__name__)
            with context._lock:
                handle = ctypes.c_void_p()
                context.check(lib.efl_loss_create(context._live(), ctypes.byref(cfg), ctypes.byref(handle)))
                self._handle, self._context = handle, context
                context._losses.add(self)
                _live_losses.add(self)
            return
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

    @property
    def has_state(self):
        """False for the focal mode, which keeps no per-class state."""
        return self.mode != "focal"

    def _live(self):
        if self._handle is None:
            raise ValueError("the loss is closed")
        return self._handle

    def __repr__(self):
        extra = ""
        if self.mode != "efl":
            extra += ", mode=%r" % self.mode
        if self.mode == "eqlv2":
            extra += ", mu=%r" % self.mu
        return (
            "%s(num_classes=%d, gamma=%r, alpha=%r, scale_factor=%r, ignore_index=%d, "
            "loss_weight=%r, labels=%r%s%s)"
            % (
                type(self).__name__,
                self.num_classes,
                self.gamma,
                self.alpha,
                self.scale_factor,
                self.ignore_index,
                self.loss_weight,
                self.labels,
                extra,
                ", closed" if self.closed else "",
            )
        )

    def config(self):
        """The configuration as the library stores it (float32-rounded parameters). The keys
        "mode" and "mu" appear for the focal and EQLv2 modes only (EFL has no use for mu), so
        that an EFL loss's dictionary is what it always was."""
        cfg = _lib.Config()
        with self._lock:
            _check(_lib.load().efl_loss_get_config(self._live(), ctypes.byref(cfg)))
        out = {
            "num_classes": int(cfg.num_classes),
            "gamma": float(cfg.gamma),
            "alpha": float(cfg.alpha),
            "scale_factor": float(cfg.scale_factor),
            "loss_weight": float(cfg.loss_weight),
            "ignore_index": int(cfg.ignore_index),
            "labels": {v: k for k, v in _lib.LABEL_CONVENTIONS.items()}.get(int(cfg.labels), int(cfg.labels)),
        }
        mode = {v: k for k, v in _lib.MODES.items()}.get(int(cfg.mode), int(cfg.mode))
        if mode != "efl":
            out["mode"] = mode
            out["mu"] = float(cfg.mu)
        return out

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

    @staticmethod
    def _labels(labels, n):
        if labels is None:
            raise ValueError("labels are required")
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
        return np.ascontiguousarray(y, dtype=np.int32)

    def _inputs(self, logits, labels, dtype=None):
        x, dtype = self._storage(logits, dtype)
        if x.ndim != 2 or x.shape[1] != self.num_classes:
            raise ValueError(
                "logits must have shape [N, %d] (num_classes columns), got %s" % (self.num_classes, tuple(x.shape))
            )
        n = x.shape[0]
        y = self._labels(labels, n)
        return x, y, n, dtype

    def _prepare(self, data, labels, dtype, levels, anchors, channel_order, what="logits"):
        """Validate rows ([N, C]) or levels (a list of [B, A*C, H, W]) and their labels."""
        p = _Prepared()
        if levels is None:
            if data is None:
                raise ValueError("%s (an [N, %d] array) or levels= are required" % (what, self.num_classes))
            x, y, n, dtype = self._inputs(data, labels, dtype)
            p.layout, p.dtype, p.arrays, p.labels, p.rows = "rows", dtype, [x], y, n
            p.images, p.anchors, p.hw = 0, 0, []
            return p
        if data is not None:
            raise ValueError("pass either %s or levels=, not both" % what)
        order = _channel_order(channel_order)
        if isinstance(levels, np.ndarray) and levels.ndim == 4:
            levels = [levels]
        levels = list(levels)
        if not 1 <= len(levels) <= _lib.MAX_LEVELS:
            raise ValueError("levels must hold 1..%d arrays, got %d" % (_lib.MAX_LEVELS, len(levels)))
        C = self.num_classes
        arrays, hw = [], []
        images = None
        for i, lev in enumerate(levels):
            a, dt = self._storage(lev, dtype)
            if dtype is None:
                dtype = dt  # the first level decides; the others convert to it
            elif dt != dtype:
                raise ValueError("level %d: storage %s, the others %s" % (i, dt, dtype))
            images, anchors, h, w = _level_geometry(i, a.shape, C, images, anchors)
            arrays.append(a)
            hw.append((h, w))
        anchors = int(anchors)
        if images > _UINT32_MAX or not 1 <= anchors <= _UINT32_MAX:
            raise ValueError("images and anchors must fit in uint32 (anchors >= 1)")
        n = images * sum(h * w * anchors for h, w in hw)
        p.layout = order
        p.dtype, p.arrays, p.rows, p.images, p.anchors, p.hw = dtype, arrays, n, images, anchors, hw
        p.labels = self._labels(labels, n)
        return p

    def _normalizer(self, normalizer, rows=None):
        """None is the reference's default: 1.0 for EFL and focal (so "mean" is a sum), the
        number of rows for EQLv2 (whose reference divides by it)."""
        if normalizer is None:
            if self.mode == "eqlv2" and rows:
                return float(rows)
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

    @staticmethod
    def _outputs(given, prep, name):
        """Caller-supplied output arrays (out=, or the torch adapter's tensors' memory), checked."""
        if given is None:
            return [np.empty(a.shape, dtype=a.dtype) for a in prep.arrays]
        given = [_out_array(o, name) for o in given]
        if len(given) != len(prep.arrays):
            raise ValueError("%s: %d arrays for %d inputs" % (name, len(given), len(prep.arrays)))
        for o, a in zip(given, prep.arrays):
            if not isinstance(o, np.ndarray) or o.shape != a.shape or o.dtype != a.dtype \
                    or not o.flags.c_contiguous or not o.flags.writeable:
                raise ValueError("%s must be writeable C-contiguous %s arrays shaped %s"
                                 % (name, a.dtype, tuple(a.shape)))
        return given

    def _run(self, op, prep, normalizer=None, reduction="mean", grad_scale=1.0, grad_out=None, elems_out=None):
        """One library call on a prepared batch. Returns (value, grads, elems): value the reduced
        loss (None for "none" and accumulate), grads and elems lists of arrays (or None)."""
        red = self._reduction(reduction)
        norm = self._normalizer(normalizer, prep.rows)
        collects = op in ("accumulate", "collect")
        want_grad = op in ("step", "compute")
        want_elems = not collects and red == _lib.REDUCTIONS["none"]
        grads = self._outputs(grad_out, prep, "grad_out") if want_grad else None
        elems = self._outputs(elems_out, prep, "elems_out") if want_elems else None
        out = np.zeros(1, dtype=np.float32)
        lib = _lib.load()
        code = _lib.DTYPES[prep.dtype]
        x, y = prep.arrays, prep.labels
        if prep.layout == "rows" and not want_elems and op in ("step", "forward", "accumulate"):
            # the long-standing calls (a library without efl_loss_run_host serves these)
            with self._lock:
                h = self._live()
                if op == "step":
                    st = lib.efl_loss_step_host_typed(h, code, x[0].ctypes.data, _ptr(y, _I32P), prep.rows, norm,
                                                      red, _ptr(out, _F32P), grads[0].ctypes.data)
                elif op == "forward":
                    st = lib.efl_loss_forward_host_typed(h, code, x[0].ctypes.data, _ptr(y, _I32P), prep.rows,
                                                         norm, red, _ptr(out, _F32P))
                else:
                    st = lib.efl_loss_accumulate_host(h, code, x[0].ctypes.data, _ptr(y, _I32P), prep.rows,
                                                      float(grad_scale))
        else:
            run = _fn("efl_loss_run_host")
            hb = _lib.HostBatch()
            _fn("efl_host_batch_init")(ctypes.byref(hb))
            hb.layout = _lib.LAYOUTS[prep.layout]
            hb.dtype = code
            hb.rows = prep.rows
            if prep.layout != "rows":
                hb.images, hb.anchors, hb.levels = prep.images, prep.anchors, len(prep.arrays)
                for i, (h_, w_) in enumerate(prep.hw):
                    hb.height[i], hb.width[i] = h_, w_
            for i, a in enumerate(x):
                hb.input[i] = a.ctypes.data
                if grads is not None:
                    hb.grad[i] = grads[i].ctypes.data
                if elems is not None:
                    hb.loss_elems[i] = elems[i].ctypes.data
            hb.labels = y.ctypes.data
            hb.reduction = red
            hb.normalizer = norm
            hb.loss = out.ctypes.data if not collects else None
            hb.grad_scale = float(grad_scale)
            with self._lock:
                st = run(self._live(), _lib.OPS[op], ctypes.byref(hb))
        _check(st)
        value = float(out[0]) if not collects and not want_elems else None
        return value, grads, elems

    @staticmethod
    def _out_list(prep, out):
        """out= as the list _run takes: one array for the rows layout, a sequence per level."""
        if out is None:
            return None
        if prep.layout == "rows":
            return [out]
        if isinstance(out, np.ndarray) or not isinstance(out, (list, tuple)):
            raise ValueError("out: one array per level with levels=, got %s" % type(out).__name__)
        return list(out)

    @staticmethod
    def _shape_result(prep, arrays):
        if arrays is None:
            return None
        return arrays[0] if prep.layout == "rows" else arrays

    # ---------------------------------------------------------------- calls
    def step(self, logits=None, labels=None, normalizer=None, reduction="mean", dtype=None, *,
             levels=None, anchors=None, channel_order="anchor", out=None):
        """One training step: returns (loss, grad) and updates the per-class state.

        logits: [N, C] array-like, float32 by default; np.float16 arrays are stored as float16
        (the gradient comes back as float16), and bfloat16 is passed as np.uint16 bit patterns
        with dtype="bfloat16" (the gradient comes back the same way). Arithmetic is float32.
        labels: [N] integers. normalizer: divides the loss for reduction="mean" (None: 1.0, the
        reference's default; EQLv2: the number of rows, as its reference).
        reduction: "mean", "sum" (loss is a float) or "none" (loss is the per-element
        loss_weight * l, [N, C] in the storage type, 0 on ignored rows; the gradient is that of
        the elements' sum).
        grad is d loss / d logits [N, C]. The state update uses this step's gradient; the step
        itself uses the state from before it.

        levels: instead of logits, the classification head's outputs, one array per FPN level
        (at most 8) shaped [B, A*C, H, W] (no permute or copy is made), with channel a*C + c
        (channel_order="anchor") or c*A + a ("class"); anchors: A (None: channels // C).
        labels then follow the reference's concatenation: row = b * R + level_offset +
        (h*W + w) * A + a, R the rows of one image over all levels. grad (and the "none" loss)
        come back as one array per level, shaped like that level.

        out: where the gradient goes, instead of a new array (one per level with levels=): a
        writeable C-contiguous array (or CPU torch tensor) of the logits' shape and storage type,
        returned as grad. Reusing one across steps spares a large allocation per call. A refused
        step raises and leaves out as it was.
        """
        prep = self._prepare(logits, labels, dtype, levels, anchors, channel_order)
        value, grads, elems = self._run("step", prep, normalizer, reduction, grad_out=self._out_list(prep, out))
        loss = value if elems is None else self._shape_result(prep, elems)
        return loss, self._shape_result(prep, grads) if out is None else out

    def forward(self, logits=None, labels=None, normalizer=None, reduction="mean", dtype=None, *,
                levels=None, anchors=None, channel_order="anchor", out=None):
        """The loss only (evaluation): no gradient, state untouched. Arguments as for step();
        "none" returns the per-element loss (one array per level with levels=), written into
        out when given (as step()'s out=; only with reduction="none")."""
        prep = self._prepare(logits, labels, dtype, levels, anchors, channel_order)
        if out is not None and reduction != "none":
            raise ValueError('forward(out=...) takes the per-element loss: reduction="none" only')
        value, _, elems = self._run("forward", prep, normalizer, reduction, elems_out=self._out_list(prep, out))
        if elems is None:
            return value
        return self._shape_result(prep, elems) if out is None else out

    def accumulate(self, grad=None, labels=None, grad_scale=1.0, dtype=None, *,
                   levels=None, anchors=None, channel_order="anchor"):
        """The state update from a gradient you computed yourself ([N, C], e.g. by autograd,
        possibly multiplied by an AMP loss scale, which grad_scale divides out). A gradient
        with Inf or NaN in a valid row is skipped and counted (skipped_steps) and raises
        EflError(ERROR_NONFINITE); the state is then unchanged. dtype as for step().
        levels=: the gradient per FPN level, as the head's outputs (see step())."""
        prep = self._prepare(grad, labels, dtype, levels, anchors, channel_order, what="grad")
        self._run("accumulate", prep, grad_scale=grad_scale)

    # -------------------------------------------------------- data parallel
    def compute(self, logits=None, labels=None, normalizer=None, reduction="mean", dtype=None, *,
                levels=None, anchors=None, channel_order="anchor", out=None):
        """Data parallel, step 1 (efl.h "data parallel"): as step(), returning (loss, grad), but
        the state update waits for apply_statistics() with the sum over the ranks of what
        read_statistics() returns. A refused batch raises as step() does; call
        read_statistics() anyway (it flags the refusal) so that every rank skips the update."""
        prep = self._prepare(logits, labels, dtype, levels, anchors, channel_order)
        value, grads, elems = self._run("compute", prep, normalizer, reduction, grad_out=self._out_list(prep, out))
        loss = value if elems is None else self._shape_result(prep, elems)
        return loss, self._shape_result(prep, grads) if out is None else out

    def collect(self, grad=None, labels=None, grad_scale=1.0, dtype=None, *,
                levels=None, anchors=None, channel_order="anchor"):
        """Data parallel: as accumulate(), with the update held back like compute()'s."""
        prep = self._prepare(grad, labels, dtype, levels, anchors, channel_order, what="grad")
        self._run("collect", prep, grad_scale=grad_scale)

    def read_statistics(self):
        """This step's statistics as float64 [2C + 1]: P, N, then 1.0 if this rank's batch was
        refused. Sum them over the ranks (e.g. torch.distributed.all_reduce) and pass the sum to
        apply_statistics()."""
        stats = np.zeros(2 * self.num_classes + 1, dtype=np.float64)
        with self._lock:
            _check(_fn("efl_loss_read_statistics_host")(self._live(), _ptr(stats, _F64P)))
        return stats

    def apply_statistics(self, stats):
        """The state update from the ranks' summed statistics. Every rank applies the same sums,
        so every rank's state stays bitwise the same. If any rank was refused, the update is
        skipped and counted, and this raises (ERROR_REFUSED_BY_PEER on the other ranks)."""
        arr = np.ascontiguousarray(np.asarray(stats, dtype=np.float64))
        if arr.shape != (2 * self.num_classes + 1,):
            raise ValueError(f"stats must have {2 * self.num_classes + 1} values, not shape {arr.shape}")
        with self._lock:
            _check(_fn("efl_loss_apply_statistics_host")(self._live(), _ptr(arr, _F64P)))

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
        """(pos_grad, neg_grad, pos_neg), each float64 [C]. The focal mode has no state:
        EflError(ERROR_INVALID_MODE)."""
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
        """g per class (float64 [C], a copy): clamp(pos_grad / (neg_grad + 1e-10), 0, 1) for
        EFL, pos_grad / (neg_grad + 1e-10) unclamped for EQLv2."""
        return self._read_one(2)

    def state_dict(self, as_torch=False, prefix=""):
        """The state as the reference's registered buffers hold it: {"pos_grad", "neg_grad",
        "pos_neg"} (keys preceded by `prefix`, e.g. "bbox_head.loss_cls."), float64 numpy
        arrays [C], or float64 torch tensors with as_torch=True (torch imported only then).
        The focal mode keeps no state: {}.
        On devices without float64 (float-pair totals) this is the state rounded to float64;
        save_checkpoint()/export_checkpoint() keep it bit for bit."""
        if not self.has_state:
            return {}
        arrays = self.read_state()
        if as_torch:
            import torch

            arrays = [torch.from_numpy(a) for a in arrays]
        return {prefix + k: v for k, v in zip(_STATE_NAMES, arrays)}

    def load_state_dict(self, state, prefix=""):
        """Replace the state from a mapping with "pos_grad", "neg_grad" and "pos_neg" (after
        `prefix`): numpy arrays, lists or torch tensors of any float type (the reference's
        buffers are float32) and device, C values each. The focal mode accepts only a mapping
        without those keys. Values must be finite and >= 0, and pos_neg within [0, 1] in EFL mode
        (else EflError(ERROR_INVALID_STATE), and the state is left as it was)."""
        keys = [prefix + k for k in _STATE_NAMES]
        present = [k in state for k in keys]
        if not self.has_state:
            if any(present):
                raise ValueError("a focal-loss loss keeps no state; the mapping has %s"
                                 % [k for k, p in zip(keys, present) if p])
            return
        if not all(present):
            raise KeyError("state mapping lacks %s" % [k for k, p in zip(keys, present) if not p])
        self.load_state(*(state[k] for k in keys))

    def load_state(self, pos_grad, neg_grad, pos_neg):
        """Replace the state (e.g. when resuming). Values must be finite and >= 0, pos_neg within
        [0, 1] in EFL mode (else EflError(ERROR_INVALID_STATE), nothing written); numpy arrays,
        lists or torch tensors."""
        arrs = []
        for name, value in zip(_STATE_NAMES, (pos_grad, neg_grad, pos_neg)):
            a = _to_numpy_state(value, name)
            if a.shape != (self.num_classes,):
                raise ValueError("%s must have shape [%d], got %s" % (name, self.num_classes, tuple(a.shape)))
            arrs.append(a)
        lib = _lib.load()
        with self._lock:
            st = lib.efl_loss_write_state_host(self._live(), *(_ptr(a, _F64P) for a in arrs))
        _check(st)

    def reset_state(self):
        """Back to pos_grad = neg_grad = 0, pos_neg = 1 (EQLv2: 100)."""
        lib = _lib.load()
        with self._lock:
            st = lib.efl_loss_reset_state_host(self._live())
        _check(st)

    # ----------------------------------------------------------- checkpoints
    @staticmethod
    def _c_path(path):
        """path (str, bytes or os.PathLike) as the bytes C receives. C stops at a NUL, so a path
        holding one would name another file: ValueError, as open() raises, before any call."""
        raw = os.fsencode(os.fspath(path))
        if b"\0" in raw:
            raise ValueError("embedded null byte")
        return raw

    def save_checkpoint(self, path):
        """Write the state to `path` (the library's versioned, checksummed format, written to a
        temporary file and renamed over `path`). Resuming from it continues bit for bit."""
        raw = self._c_path(path)
        fn = _fn("efl_loss_save_checkpoint_host")
        with self._lock:
            st = fn(self._live(), raw)
        _check(st)

    def load_checkpoint(self, path):
        """Replace the state from a checkpoint file. A corrupted or truncated file, another
        format version, or a checkpoint of another mode, C, gamma, alpha, s or mu raises
        EflError (ERROR_CHECKPOINT_CORRUPT / _VERSION / _MISMATCH, ERROR_IO when unreadable)
        and leaves the state as it was."""
        raw = self._c_path(path)
        fn = _fn("efl_loss_load_checkpoint_host")
        with self._lock:
            st = fn(self._live(), raw)
        _check(st)

    def export_checkpoint(self):
        """The checkpoint as bytes (e.g. to store inside a framework's own checkpoint)."""
        with tempfile.TemporaryDirectory(prefix="efl-ckpt-") as d:
            path = os.path.join(d, "state.eflckpt")
            self.save_checkpoint(path)
            with open(path, "rb") as f:
                return f.read()

    def import_checkpoint(self, data):
        """Replace the state from export_checkpoint()'s bytes (same checks as load_checkpoint)."""
        data = bytes(data)
        with tempfile.TemporaryDirectory(prefix="efl-ckpt-") as d:
            path = os.path.join(d, "state.eflckpt")
            with open(path, "wb") as f:
                f.write(data)
            self.load_checkpoint(path)


class FocalLoss(EqualizedFocalLoss):
    """Sigmoid focal loss (mode="focal"): gamma (2.0) and alpha (0.25) for every class, no state.
    The same calls as EqualizedFocalLoss; the state calls raise EflError(ERROR_INVALID_MODE)."""

    _default_mode = "focal"

    def __init__(self, num_classes, gamma=None, alpha=None, ignore_index=-1, loss_weight=None, labels="reference",
                 accumulate="auto", context=None):
        super().__init__(num_classes, gamma=gamma, alpha=alpha, ignore_index=ignore_index, loss_weight=loss_weight,
                         labels=labels, accumulate=accumulate, mode="focal", context=context)


class EQLv2Loss(EqualizedFocalLoss):
    """EQLv2 (mode="eqlv2"): per-class weights neg_w = sigmoid(gamma (g - mu)),
    pos_w = 1 + alpha (1 - neg_w) (gamma 12, mu 0.8, alpha 4) on a binary cross-entropy;
    statistics |sigmoid(x) - t| * weight; g = pos_grad / (neg_grad + 1e-10) from 100.
    normalizer None divides by the number of rows, as the reference's mean."""

    _default_mode = "eqlv2"

    def __init__(self, num_classes, gamma=None, mu=None, alpha=None, ignore_index=-1, loss_weight=None,
                 labels="reference", accumulate="auto", context=None):
        super().__init__(num_classes, gamma=gamma, alpha=alpha, ignore_index=ignore_index, loss_weight=loss_weight,
                         labels=labels, accumulate=accumulate, mode="eqlv2", mu=mu, context=context)


# ------------------------------------------------------------------ devices
def _describe(handle):
    fn = _fn("efl_device_describe")
    size = fn(handle, None, 0)
    buf = ctypes.create_string_buffer(size + 1)
    fn(handle, buf, size + 1)
    return buf.value.decode("utf-8", "replace")


def _device_handles(selector=None):
    """[(cl_device_id, "P:D platform [vendor] / device")] of the devices a selector matches."""
    fn = _fn("efl_devices_matching")
    raw = None if selector is None else str(selector).encode("utf-8")
    count = fn(raw, None, 0)
    handles = (ctypes.c_void_p * max(count, 1))()
    count = min(count, fn(raw, handles, count))
    return [(handles[i], _describe(handles[i])) for i in range(count)]


def devices(selector=None):
    """The OpenCL devices a selector in EFL_DEVICE's syntax matches ("1:0", "gpu", "cpu:pocl",
    "llvmpipe"; None or "" every device), one "P:D platform [vendor] / device" line each, in
    platform then device order. Creates no context. Syntax: docs/devices.md."""
    return [line for _, line in _device_handles(selector)]


def default_device(selector=None):
    """The "P:D platform [vendor] / device" line of the device the default context takes for
    a selector: None reads EFL_DEVICE, "" applies the default rule (first GPU, else first CPU,
    else first device). Creates no context. Raises EflError ERROR_DEVICE_NOT_FOUND when the
    selector matches no device, ERROR_NO_DEVICE when there is no device at all."""
    if selector is None:
        selector = os.environ.get("EFL_DEVICE", "")
    handle = ctypes.c_void_p()
    st = _fn("efl_device_pick")(str(selector).encode("utf-8"), ctypes.byref(handle))
    if st != Status.OK:
        raise EflError(st)
    return _describe(handle)


def __getattr__(name):
    """efl.torch, the PyTorch adapter, is imported on first use (numpy-only users never load torch)."""
    if name in ("torch", "tinygrad"):
        import importlib

        return importlib.import_module("." + name, __name__)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
