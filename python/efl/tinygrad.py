"""efl.tinygrad: the library as a loss for tinygrad tensors on tinygrad's OpenCL device (``CL``).

    import efl.tinygrad
    from tinygrad import Tensor
    crit = efl.tinygrad.EqualizedFocalLoss(num_classes=1203)   # or FocalLoss / EQLv2Loss, mode=...
    loss = crit(logits, labels, normalizer=num_pos)   # logits [N, C] on "CL"; labels [N] int on "CL"
    loss = crit([p3, p4, p5], labels, anchors=9)      # the head's levels [B, A*C, H, W], read in place
    loss.backward()                                   # d loss / d logits is efl's gradient
    opt.step()                                        # any tinygrad optimizer, unchanged
    crit.pos_grad, crit.neg_grad, crit.pos_neg        # the state, float64 numpy [C]

This module is imported only on request (``import efl.tinygrad``): ``import efl`` never loads
tinygrad. It needs tinygrad in REQUIREMENT's range (the versions it was tested with; another
version raises ImportError) and tinygrad's ``CL`` device (DEV=CL, or device="CL" on the tensors);
docs/tinygrad.md has the longer story.

Zero copy, one context, one queue
---------------------------------
efl runs on tinygrad's own cl_context and cl_device_id (an efl context made with
efl_context_create on them, one per tinygrad CL device) and enqueues on tinygrad's own command
queue (efl_enqueue_batch). It reads the logits and the labels in the cl_mem buffers tinygrad
realized them into, and writes the gradient and the loss into buffers tinygrad allocated
(Tensor.empty). The queue is in order: efl's kernels run after the tinygrad kernels that made the
logits, and the tinygrad kernels that read the gradient (backward, the optimizer) run after efl's.
Nothing goes through the host but the per-class statistics (2C + 1 doubles per call) and the
device's verdict, which the call waits for (it raises on bad input).

Step semantics (those of efl.torch's module)
--------------------------------------------
- A call computes the loss and the gradient with the state from before the step (the library's
  COMPUTE: this call's statistics are read, the update held back). It returns the loss as a
  scalar float32 tinygrad Tensor whose value is efl's loss (read from efl's buffer, not
  recomputed) and whose gradient with respect to the logits is efl's gradient times the
  incoming gradient (tinygrad's Tensor.call with a grad_fxn).
- The statistics of a call count when a backward pass (loss.backward() or Tensor.gradient())
  reaches the call, scaled by |incoming gradient| as the gradient itself is; the calls a backward
  pass reaches are summed and make one update. Updates are applied before the next call, the
  next state read or write, or apply_pending(): k calls on parts of the rows (per FPN level) and
  one backward give the loss, gradient and state of one call on all the rows. A call whose loss
  never reaches a backward pass updates nothing; a second backward pass through the same calls
  is a second update.
- forward(...) is the loss only (evaluation): no gradient, state untouched.

Limits: reduction "mean" or "sum" (no "none"); logits float32, float16 or bfloat16; labels any
integer dtype (int32 is read in place, others are cast on the device first); at least one row.
"""

import ctypes
import importlib.metadata
import itertools
import math
import threading

import numpy as np

from . import EflError, EqualizedFocalLoss as _NativeLoss, ExternalContext, Status, _lib
from . import _channel_order, _level_geometry

# The tinygrad versions this module was tested with: the only place the range is written
# (tests/python/tinygrad_venv.sh and scripts/setup.sh read it from here).
REQUIREMENT = "tinygrad>=0.14.0,<0.15"
_LOWEST, _BEYOND = (0, 14, 0), (0, 15)


def _version_tuple(text):
    out = []
    for part in text.split("."):
        digits = "".join(itertools.takewhile(str.isdigit, part))
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def _check_version():
    try:
        version = importlib.metadata.version("tinygrad")
    except importlib.metadata.PackageNotFoundError:
        raise ImportError("efl.tinygrad: tinygrad is not installed; pip install '%s'" % REQUIREMENT)
    v = _version_tuple(version)
    if not (_LOWEST <= v and v[:len(_BEYOND)] < _BEYOND):
        raise ImportError("efl.tinygrad supports %s (the versions it is tested with); this environment has "
                          "tinygrad %s: pip install '%s'" % (REQUIREMENT, version, REQUIREMENT))
    return version


TINYGRAD_VERSION = _check_version()

from tinygrad import Device, Tensor, dtypes  # noqa: E402  (after the version check)

__all__ = ["EqualizedFocalLoss", "FocalLoss", "EQLv2Loss", "REQUIREMENT", "cl_handles", "cl_mem"]

_STORAGE = {dtypes.float32: "float32", dtypes.float16: "float16", dtypes.bfloat16: "bfloat16"}
_STATE_NAMES = ("pos_grad", "neg_grad", "pos_neg")
_F64P = ctypes.POINTER(ctypes.c_double)
_UINT32_MAX = 2**32 - 1


# ------------------------------------------------------------------ handles
def _addr(handle):
    return ctypes.cast(handle, ctypes.c_void_p).value


def _device_message(what, device):
    return ("efl.tinygrad runs on tinygrad's OpenCL device 'CL' (DEV=CL, or tensors created with "
            "device='CL'); %s is on %r. tinygrad's other backends (CPU, LLVM, CUDA, AMD, NV, METAL, ...) "
            "are not supported: move the tensor with .to('CL'), or use efl.torch / the numpy binding"
            % (what, device))


def _cl_name(device, what="the loss"):
    """The canonical name of a tinygrad CL device ("CL", "CL:1"), or ValueError naming what is supported."""
    if not isinstance(device, str):
        raise ValueError(_device_message(what, device))
    name = Device.canonicalize(device)
    if name.split(":")[0] != "CL":
        raise ValueError(_device_message(what, name))
    return name


def cl_handles(device="CL"):
    """(cl_context, cl_device_id, cl_command_queue) of a tinygrad CL device, as int addresses."""
    dev = Device[_cl_name(device, "the device")]
    return _addr(dev.context), _addr(dev.cl_dev), _addr(dev.queue)


def _buffer(t, what):
    """The tinygrad Buffer holding all of a realized tensor, at offset 0; None if t is not one."""
    u = t.uop
    try:
        buf = u.buffer
    except Exception:
        return None
    if u.base.op.name != "BUFFER" or any(x.op.name not in ("BUFFER", "RESHAPE", "STACK", "CONST", "DEVICE",
                                                              "UNIQUE", "LUNIQUE")
                                         for x in u.toposort()):
        return None
    if getattr(buf, "offset", 0) != 0 or getattr(buf, "_base", None) is not None:
        return None
    if buf.size != t.numel() or buf.dtype != t.dtype:
        return None
    return buf


def cl_mem(tensor):
    """The cl_mem (int address) of a realized tinygrad tensor on CL that owns its whole buffer;
    ValueError for anything else (a lazy tensor, a view, another device)."""
    _cl_name(tensor.device, "the tensor")
    buf = _buffer(tensor, "the tensor")
    if buf is None or not buf.is_allocated():
        raise ValueError("the tensor is not a realized buffer of its own (realize it, or .contiguous().realize())")
    return _addr(buf._buf)


_ctx_lock = threading.Lock()
_contexts = {}  # (cl_context, cl_device_id) -> efl.ExternalContext


def _efl_context(name):
    ctx, dev, _ = cl_handles(name)
    with _ctx_lock:
        c = _contexts.get((ctx, dev))
        if c is None or c.closed:
            c = _contexts[(ctx, dev)] = ExternalContext(ctx, dev)
        return c


# ------------------------------------------------------------------ the loss
class _CallRecord:
    __slots__ = ("id", "stats", "grads")


class EqualizedFocalLoss:
    """Equalized Focal Loss (mode="efl", or "focal" / "eqlv2") for tinygrad tensors on ``CL``.

    Constructor arguments as efl.EqualizedFocalLoss (num_classes, gamma, alpha, scale_factor,
    ignore_index, loss_weight, labels, accumulate, mode, mu; None takes the mode's default), plus
    device: the tinygrad CL device the loss lives on ("CL", "CL:1"; every call's tensors must be
    there), and the defaults of the calls: reduction ("mean" or "sum"), channel_order ("anchor"
    or "class") and anchors (None: channels // C) for per-level inputs.

    ``crit.efl`` is the native efl.EqualizedFocalLoss (on tinygrad's context); read the state
    through this object (pending updates are applied first). ``crit.skipped_steps`` counts the
    calls refused by the device (invalid labels, non-finite logits) and the backward passes whose
    incoming gradient was not finite. ``crit.last_buffers`` holds the cl_mem addresses the last
    call read and wrote ({"input", "grad", "labels", "loss", "queue"}).
    """

    _default_mode = "efl"

    def __init__(self, num_classes, gamma=None, alpha=None, scale_factor=None, ignore_index=-1, loss_weight=None,
                 labels="reference", accumulate="auto", mode=None, mu=None, *, device="CL", reduction="mean",
                 channel_order="anchor", anchors=None):
        self._check_reduction(reduction)
        self.device = _cl_name(device)
        self._queue = cl_handles(self.device)[2]
        self._ctx = _efl_context(self.device)
        self.efl = _NativeLoss(num_classes, gamma=gamma, alpha=alpha, scale_factor=scale_factor,
                               ignore_index=ignore_index, loss_weight=loss_weight, labels=labels,
                               accumulate=accumulate, mode=mode or self._default_mode, mu=mu, context=self._ctx)
        self.reduction = reduction
        self.channel_order = channel_order
        self.anchors = anchors
        self.skipped_steps = 0
        self.last_buffers = None
        self._lock = threading.RLock()
        self._ids = itertools.count()
        self._passes = []  # finished backward passes' statistics, not yet applied
        self._current = None  # the backward pass in progress: [stats, ids of the calls it reached]

    # ------------------------------------------------------------ plumbing
    @property
    def num_classes(self):
        return self.efl.num_classes

    @property
    def mode(self):
        return self.efl.mode

    @property
    def has_state(self):
        return self.efl.has_state

    def config(self):
        return self.efl.config()

    def __repr__(self):
        return "efl.tinygrad.%s(%s, device=%r)" % (type(self).__name__, repr(self.efl).split("(", 1)[1][:-1],
                                                   self.device)

    def close(self):
        """Destroy the native loss (pending updates are dropped). Idempotent."""
        with self._lock:
            self._passes, self._current = [], None
            self.efl.close()

    @staticmethod
    def _check_reduction(reduction):
        if reduction not in ("mean", "sum"):
            raise ValueError("efl.tinygrad supports reduction 'mean' or 'sum', got %r" % (reduction,))

    def _handle(self):
        return self.efl._live()

    def _check(self, st):
        self._ctx.check(st)

    # ----------------------------------------------------------- arguments
    def _prepare(self, logits, labels, normalizer, reduction, channel_order, anchors):
        """Validated shapes and the efl_batch fields that do not depend on buffers (no device work)."""
        C = self.num_classes
        levels = isinstance(logits, (list, tuple))
        tensors = list(logits) if levels else [logits]
        if levels and not 1 <= len(tensors) <= _lib.MAX_LEVELS:
            raise ValueError("levels must hold 1..%d tensors, got %d" % (_lib.MAX_LEVELS, len(tensors)))
        for i, t in enumerate(tensors):
            what = "level %d" % i if levels else "logits"
            if not isinstance(t, Tensor):
                raise TypeError("%s must be a tinygrad Tensor, got %s" % (what, type(t).__name__))
            if isinstance(t.device, tuple):
                raise ValueError(_device_message(what, t.device))
            if _cl_name(t.device, what) != self.device:
                raise ValueError("%s is on %s, the loss on %s" % (what, t.device, self.device))
            if t.dtype not in _STORAGE:
                raise TypeError("%s must be float32, float16 or bfloat16, got %s" % (what, t.dtype))
        dtype = tensors[0].dtype
        if any(t.dtype != dtype for t in tensors):
            raise TypeError("all levels must have one dtype, got %s" % sorted(str(t.dtype) for t in tensors))
        b = _lib.Batch()
        _lib.load().efl_batch_init(ctypes.byref(b))
        b.dtype = _lib.DTYPES[_STORAGE[dtype]]
        if not levels:
            x = tensors[0]
            if len(x.shape) != 2 or x.shape[1] != C:
                raise ValueError("logits must have shape [N, %d] (num_classes columns), got %s" % (C, tuple(x.shape)))
            rows = int(x.shape[0])
            b.layout = _lib.LAYOUTS["rows"]
        else:
            order = _channel_order(channel_order)
            images = None
            for i, t in enumerate(tensors):
                images, anchors, h, w = _level_geometry(i, t.shape, C, images, anchors)
                b.height[i], b.width[i] = h, w
            anchors = int(anchors)
            if images > _UINT32_MAX or not 1 <= anchors <= _UINT32_MAX:
                raise ValueError("images and anchors must fit in uint32 (anchors >= 1)")
            rows = images * sum(int(t.shape[2]) * int(t.shape[3]) * anchors for t in tensors)
            b.layout = _lib.LAYOUTS[order]
            b.images, b.anchors, b.levels = images, anchors, len(tensors)
        if rows == 0:
            raise ValueError("efl.tinygrad needs at least one row (tinygrad allocates no empty buffers)")
        b.rows = rows
        if not isinstance(labels, Tensor):
            raise TypeError("labels must be a tinygrad Tensor on %s, got %s" % (self.device, type(labels).__name__))
        if isinstance(labels.device, tuple) or _cl_name(labels.device, "labels") != self.device:
            raise ValueError("labels are on %s, the loss on %s" % (labels.device, self.device))
        if not dtypes.is_int(labels.dtype):
            raise ValueError("labels must be an integer tensor, got %s" % labels.dtype)
        if tuple(labels.shape) != (rows,):
            raise ValueError("labels must have shape [%d] (one per logit row), got %s" % (rows, tuple(labels.shape)))
        self._check_reduction(reduction)
        b.reduction = _lib.REDUCTIONS[reduction]
        norm_t = None
        if isinstance(normalizer, Tensor):
            if normalizer.numel() != 1:
                raise ValueError("normalizer must be a number or a one-element tensor")
            if isinstance(normalizer.device, tuple) or _cl_name(normalizer.device, "normalizer") != self.device:
                raise ValueError("normalizer is on %s, the loss on %s" % (normalizer.device, self.device))
            norm_t = normalizer.reshape(1).cast(dtypes.float32)
        else:
            norm = self.efl._normalizer(normalizer, rows)
            if not (math.isfinite(norm) and norm > 0):
                raise EflError(Status.ERROR_INVALID_NORMALIZER, detail="normalizer must be finite and > 0, got %r"
                               % (normalizer,))
            b.normalizer = norm
        return tensors, b, norm_t

    # ---------------------------------------------------------------- calls
    def __call__(self, logits, labels, normalizer=None, reduction=None, channel_order=None, anchors=None):
        """The training call: loss (a scalar float32 Tensor) with efl's gradient for backward.
        logits: a [N, C] tensor, or a list of [B, A*C, H, W] level tensors (rows in the
        reference's concatenation: row = b * R + level_offset + (h*W + w) * A + a)."""
        return self._call(logits, labels, normalizer, reduction, channel_order, anchors, train=True)

    def forward(self, logits, labels, normalizer=None, reduction=None, channel_order=None, anchors=None):
        """The loss only (evaluation): a scalar float32 Tensor, no gradient, state untouched."""
        return self._call(logits, labels, normalizer, reduction, channel_order, anchors, train=False)

    def _call(self, logits, labels, normalizer, reduction, channel_order, anchors, train):
        reduction = self.reduction if reduction is None else reduction
        channel_order = self.channel_order if channel_order is None else channel_order
        anchors = self.anchors if anchors is None else anchors
        tensors, batch, norm_t = self._prepare(logits, labels, normalizer, reduction, channel_order, anchors)
        dev = self.device
        with self._lock:
            self._apply_pending()
            # the logits as buffers: a realized tensor is its own buffer (contiguous() changes
            # nothing); a lazy one is computed into a new buffer while the tensor itself stays
            # lazy, so that backward still reaches what made it
            xs = [t.contiguous() for t in tensors]
            y = labels if labels.dtype == dtypes.int32 else labels.cast(dtypes.int32)
            y = y.contiguous()
            value = Tensor.empty(1, dtype=dtypes.float32, device=dev)
            grads = [Tensor.empty(*t.shape, dtype=t.dtype, device=dev) for t in tensors] if train else []
            extra = [norm_t.contiguous()] if norm_t is not None else []
            Tensor.realize(*xs, y, value, *grads, *extra)
            mems = {}
            for key, ts in (("input", xs), ("labels", [y]), ("loss", [value]), ("grad", grads),
                            ("normalizer", extra)):
                out = []
                for t in ts:
                    buf = _buffer(t, key)
                    if buf is None:  # pragma: no cover - tinygrad realized it as a view
                        raise RuntimeError("efl.tinygrad: tinygrad did not realize %s into a buffer of its own" % key)
                    buf.ensure_allocated()
                    out.append(_addr(buf._buf))
                mems[key] = out
            for i, m in enumerate(mems["input"]):
                batch.input[i] = m
            for i, m in enumerate(mems["grad"]):
                batch.grad[i] = m
            batch.labels = mems["labels"][0]
            batch.loss = mems["loss"][0]
            if extra:
                batch.normalizer_buffer = mems["normalizer"][0]
            op = ("compute" if self.has_state else "step") if train else "forward"
            lib = _lib.load()
            h = self._handle()
            # efl's kernels go on tinygrad's queue, after the kernels that realized the inputs
            self._check(lib.efl_enqueue_batch(h, ctypes.c_void_p(self._queue), _lib.OPS[op], ctypes.byref(batch),
                                              0, None, None))
            self.last_buffers = {"input": mems["input"], "grad": mems["grad"], "labels": mems["labels"][0],
                                 "loss": mems["loss"][0], "normalizer": mems["normalizer"][0] if extra else None,
                                 "queue": self._queue}
            stats = None
            if op == "compute":
                stats = np.zeros(2 * self.num_classes + 1, dtype=np.float64)
                self._check(lib.efl_loss_read_statistics(h, ctypes.c_void_p(self._queue), stats.ctypes.data_as(_F64P)))
                if stats[-1] > 0:  # refused on the device: say why; the update is never applied
                    self.skipped_steps += 1
                    st = lib.efl_loss_query_status(h, ctypes.c_void_p(self._queue))
                    raise EflError(st if st != Status.OK else Status.ERROR_INVALID_LABEL)
            else:
                st = lib.efl_loss_query_status(h, ctypes.c_void_p(self._queue))
                if st != Status.OK:
                    raise EflError(st, detail=self._ctx.detail(st))
        if not train:
            return value.reshape(())
        rec = _CallRecord()
        rec.id, rec.stats, rec.grads = next(self._ids), stats, grads

        def grad_fxn(ctx, call):
            return (None,) + tuple(self._backward(rec, ctx))

        # a FUNCTION whose value is efl's loss buffer and whose arguments are the caller's
        # logits: its gradient is grad_fxn's, efl's buffers times the incoming gradient
        return Tensor.call(value, *tensors, fxn=value.as_param(0).uop.reshape(()), grad_fxn=grad_fxn)

    def _backward(self, rec, ctx):
        """A backward pass reached a call: its statistics join the pass; the gradient goes on."""
        s = float(Tensor(ctx).item())
        with self._lock:
            if rec.stats is not None:
                if self._current is None or rec.id in self._current[1]:
                    self._close_pass()
                    self._current = [np.zeros_like(rec.stats), set()]
                self._current[1].add(rec.id)
                if math.isfinite(s):
                    st = rec.stats.copy()
                    st[:-1] *= abs(s)
                    self._current[0] += st
                else:
                    self.skipped_steps += 1
                    self._current[0][-1] = 1.0
        if s == 1.0:
            return [g.uop for g in rec.grads]
        return [(g * s).uop for g in rec.grads]

    def _close_pass(self):
        if self._current is not None:
            self._passes.append(self._current[0])
            self._current = None

    def _apply_pending(self):
        """The updates of the backward passes so far, in order, on tinygrad's queue."""
        with self._lock:
            self._close_pass()
            passes, self._passes = self._passes, []
            lib = _lib.load()
            for stats in passes:
                if stats[-1] > 0:
                    continue  # a pass with a non-finite incoming gradient updates nothing
                self._check(lib.efl_loss_apply_statistics(self._handle(), ctypes.c_void_p(self._queue),
                                                          stats.ctypes.data_as(_F64P)))

    def apply_pending(self):
        """Apply now the updates of the backward passes that have run (done automatically before
        each call and each state read or write)."""
        self._apply_pending()

    # ---------------------------------------------------------------- state
    def read_state(self):
        """(pos_grad, neg_grad, pos_neg), float64 numpy [C] each, read on tinygrad's queue after
        everything enqueued before (pending updates applied first)."""
        c = self.num_classes
        arrs = [np.empty(c, dtype=np.float64) for _ in range(3)]
        with self._lock:
            self._apply_pending()
            self._check(_lib.load().efl_loss_read_state(self._handle(), ctypes.c_void_p(self._queue),
                                                        *(a.ctypes.data_as(_F64P) for a in arrs)))
        return tuple(arrs)

    @property
    def pos_grad(self):
        return self.read_state()[0]

    @property
    def neg_grad(self):
        return self.read_state()[1]

    @property
    def pos_neg(self):
        return self.read_state()[2]

    def load_state(self, pos_grad, neg_grad, pos_neg):
        """Replace the state (finite, >= 0, pos_neg within [0, 1] in EFL mode; else
        EflError(ERROR_INVALID_STATE) and nothing written)."""
        arrs = []
        for name, v in zip(_STATE_NAMES, (pos_grad, neg_grad, pos_neg)):
            if isinstance(v, Tensor):
                v = v.numpy()
            a = np.ascontiguousarray(v, dtype=np.float64)
            if a.shape != (self.num_classes,):
                raise ValueError("%s must have shape [%d], got %s" % (name, self.num_classes, tuple(a.shape)))
            arrs.append(a)
        with self._lock:
            self._apply_pending()
            self._check(_lib.load().efl_loss_write_state(self._handle(), ctypes.c_void_p(self._queue),
                                                         *(a.ctypes.data_as(_F64P) for a in arrs)))

    def reset_state(self):
        """Back to pos_grad = neg_grad = 0, pos_neg = 1 (EQLv2: 100); pending updates dropped."""
        with self._lock:
            self._passes, self._current = [], None
            self._check(_lib.load().efl_loss_reset_state(self._handle(), ctypes.c_void_p(self._queue)))

    def state_dict(self, prefix=""):
        """{"pos_grad", "neg_grad", "pos_neg"} (float64 numpy [C]); {} in the focal mode."""
        if not self.has_state:
            return {}
        return {prefix + k: v for k, v in zip(_STATE_NAMES, self.read_state())}

    def load_state_dict(self, state, prefix=""):
        if not self.has_state:
            return
        self.load_state(*(state[prefix + k] for k in _STATE_NAMES))

    def _sync_host(self):
        """Pending updates applied and tinygrad's queue finished, for the native loss's host calls."""
        self._apply_pending()
        Device[self.device].synchronize()

    def save_checkpoint(self, path):
        """efl's checkpoint file (as efl.EqualizedFocalLoss.save_checkpoint)."""
        with self._lock:
            self._sync_host()
            self.efl.save_checkpoint(path)

    def load_checkpoint(self, path):
        with self._lock:
            self._sync_host()
            self.efl.load_checkpoint(path)


class FocalLoss(EqualizedFocalLoss):
    """Sigmoid focal loss (mode="focal"): no state."""

    _default_mode = "focal"


class EQLv2Loss(EqualizedFocalLoss):
    """EQLv2 (mode="eqlv2"); normalizer None divides by the number of rows, as its reference."""

    _default_mode = "eqlv2"
