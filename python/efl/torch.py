"""efl.torch: the library as a PyTorch loss module on CPU tensors.

    import efl.torch
    crit = efl.torch.EqualizedFocalLossModule(num_classes=1203)   # mode="efl" | "focal" | "eqlv2"
    loss = crit(logits, labels, normalizer=num_pos)   # logits [N, C] float32/float16/bfloat16/float64, CPU
    loss.backward()                                   # logits.grad; the state is updated when backward ends
    loss = crit([p3, p4, p5, p6, p7], labels, anchors=9, channel_order="anchor")  # [B, A*C, H, W] each
    loss = crit(cls_score, label, label_weight, avg_factor=num_pos)  # mmdetection's call and labels

    # the low-level functions, with a loss object of your own (per-call STEP semantics, below)
    l = efl.torch.EFLFunction.apply(logits, labels, efl.EqualizedFocalLoss(1203), num_pos, "mean")

This module is imported only on request (``import efl.torch`` or ``efl.torch``): ``import efl``
alone never loads torch. docs/pytorch.md has the longer story (AMP, DDP, mmdetection, EMA).

The module: state, steps and updates (the reference's semantics)
-----------------------------------------------------------------
State. pos_grad, neg_grad and pos_neg are registered float64 buffers [C] (the reference's
state_dict keys) and the only copy that counts: the native loss object (``crit.efl``) is a
cache, rebuilt from the buffers when it is missing (after deepcopy, pickle, torch.load) or when
a buffer was replaced or written in place (load_state_dict, an EMA's copy_, AveragedModel with
use_buffers=True, DDP's buffer broadcast). Copies are independent. The focal mode keeps no
state and has no buffers.

Step semantics, as the reference (EOD's EqualizedFocalLoss, whose backward hook collects the
gradient that reaches the logits):
- Every forward of a training step uses the state from before the step. The statistics of a
  call are those of the gradient that reaches its logits through this loss in backward; they are
  summed over all the calls whose backward ran in one backward pass, and the state is updated
  once, when that backward pass has finished (a callback queued on autograd's engine). So k calls
  on parts of the rows (per FPN level, per image) then one backward give the same loss, gradient
  and state as one call on all the rows.
- A forward whose loss never reaches backward updates nothing. Under torch.no_grad() or with
  logits that do not require grad, forward computes the loss only.
- Each backward pass is one update (backward(retain_graph=True) twice updates twice, as the
  reference's hook does; gradient accumulation over k backward passes makes k updates).
- The usual case is one fused pass in forward (the library's COMPUTE: loss, gradient and this
  call's statistics, update held back); backward scales the statistics by |grad_output| (a
  scalar, or a uniform elementwise one). Only elementwise weights (reduction="none" with a
  non-uniform grad_output, or mmdetection's general weights) cost a second pass in backward: the
  statistics are collected from the actual gradient (the library's COLLECT).

AMP / loss scaling: ``crit.set_loss_scale(s)`` (a number, or an object with get_scale() such as
a GradScaler, read at each backward) divides s out of the statistics: scaler.scale(loss) then
gives the unscaled statistics. A backward whose scaled gradient is not finite updates nothing
and counts one skipped step (``crit.skipped_steps``).

Data parallel: when torch.distributed is initialised with a world size > 1, the step's
statistics (P, N and the refusal flag) are summed over the process group (``process_group=``,
default the default group) before the update, so every rank's state is bitwise the same and
equals one process that saw all rows. ``sync=False`` opts out. A batch refused by the library on
one rank (invalid label, non-finite logits) does not raise in forward under sync: forward warns
and returns a zero loss with a zero gradient, and every rank skips that update and counts it.
Without sync a refused batch raises EflError in forward, as the library does.

mmdetection's call: forward(cls_score, label, weight=None, avg_factor=None,
reduction_override=None) with mmdetection's labels (0..C-1 classes, C background): avg_factor is
the normalizer (None: the mean over all elements, as mmdetection), a per-row weight of 0 ignores
the row, other weights scale loss and gradient elementwise. It is used when weight=, avg_factor=
or reduction_override= is given, when the third argument is a weight tensor, or always with
call_style="mmdet".

Types: float32, float16 and bfloat16 logits are read in place; float64 logits are computed in
float32 and the loss and gradient are returned in float64. CUDA/ROCm tensors are refused: use the
C API (efl_enqueue_batch on an OpenCL context of that GPU) or .cpu().

The functions EFLFunction / EFLLevelsFunction / efl_loss
---------------------------------------------------------
They run the library's fused STEP inside forward with a loss object of your own: loss, gradient
and state update in one pass, once per forward call that needs a gradient, whether or not
backward follows; backward only multiplies the saved gradient by grad_output, which never reaches
the statistics. No sync, no buffers: use the module for the reference's semantics.
"""

import math
import warnings

import numpy as np
import torch

from . import EflError, EqualizedFocalLoss, _Prepared

__all__ = ["EFLFunction", "EFLLevelsFunction", "efl_loss", "EqualizedFocalLossModule"]

_STORAGE = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
_STATE_NAMES = ("pos_grad", "neg_grad", "pos_neg")


def _device_message(what, device):
    return ("efl.torch works on CPU tensors; %s is on %s. For a CUDA/ROCm GPU use the C API on an "
            "OpenCL context of that GPU (efl_context_create + efl_enqueue_batch, include/efl/efl.h), "
            "or move the logits to the CPU with .cpu()" % (what, device))


def _tensor(t, what):
    """(numpy view, storage name, contiguous detached tensor) of a CPU floating tensor."""
    if not isinstance(t, torch.Tensor):
        raise TypeError("%s must be a torch.Tensor, got %s" % (what, type(t).__name__))
    if t.device.type != "cpu":
        raise ValueError(_device_message(what, t.device))
    if t.dtype not in _STORAGE:
        raise TypeError("%s must be float32, float16 or bfloat16, got %s" % (what, t.dtype))
    t = t.detach()
    if not t.is_contiguous():
        t = t.contiguous()
    return _view(t), _STORAGE[t.dtype], t


_NUMPY_TYPE = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.int16}


def _empty(shape, dtype):
    """An uninitialised tensor in memory from numpy's allocator, which reuses freed blocks: a
    fresh torch.empty of an LVIS gradient (433 MB) came back as new pages each time, and their
    first touch cost 260 ms against numpy's 50."""
    t = torch.from_numpy(np.empty(tuple(shape), dtype=_NUMPY_TYPE[dtype]))
    return t.view(torch.bfloat16) if dtype == torch.bfloat16 else t


def _view(t):
    """A numpy array sharing t's memory (bfloat16 as np.uint16 bit patterns)."""
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def _labels(labels):
    if isinstance(labels, torch.Tensor):
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise ValueError("labels must be an integer tensor, got %s" % labels.dtype)
        return labels.detach().cpu().numpy()
    return labels


def _normalizer(normalizer):
    if isinstance(normalizer, torch.Tensor):
        if normalizer.numel() != 1:
            raise ValueError("normalizer must be a number or a one-element tensor")
        return float(normalizer.detach().cpu())
    return normalizer


def _check_loss(loss):
    if not isinstance(loss, EqualizedFocalLoss):
        raise TypeError("loss must be an efl.EqualizedFocalLoss, got %s" % type(loss).__name__)


def _run(ctx, loss, prep, tensors, normalizer, reduction, needs_grad):
    """The library call behind both functions; saves the gradients for backward."""
    none = reduction == "none"
    elems = [_empty(t.shape, t.dtype) for t in tensors] if none else None
    elems_np = [_view(e) for e in elems] if none else None
    if needs_grad:
        grads = [_empty(t.shape, t.dtype) for t in tensors]
        value, _, _ = loss._run("step", prep, normalizer, reduction,
                                grad_out=[_view(g) for g in grads], elems_out=elems_np)
        ctx.save_for_backward(*grads)
    else:
        value, _, _ = loss._run("forward", prep, normalizer, reduction, elems_out=elems_np)
    ctx.none = none
    if none:
        return elems
    return [torch.tensor(value, dtype=torch.float32)]


def _scale(g, go, elementwise):
    """grad_output * saved gradient, in float32 arithmetic, stored as the logits' type."""
    if not elementwise and float(go) == 1.0:
        return g  # the common case: no multiply, no copy (autograd clones it if it must)
    if g.dtype == torch.float32 and go.dtype == torch.float32:
        return g * go
    return (g.float() * go.float()).to(g.dtype)


class EFLFunction(torch.autograd.Function):
    """apply(logits, labels, loss, normalizer=None, reduction="mean").

    logits: [N, C] CPU tensor, float32, float16 or bfloat16. labels: [N] integers (tensor or
    array). loss: an efl.EqualizedFocalLoss (any mode); it holds the per-class state.
    normalizer: number or one-element tensor (None: the mode's reference default).
    reduction: "mean" / "sum" return a float32 scalar tensor, "none" the per-element loss [N, C]
    in the logits' type.
    When the logits need a gradient, forward runs the library's STEP (loss, gradient and state
    update in one pass; see the module's documentation for how this compares with the
    reference's backward hook) and backward returns grad_output * that gradient. Otherwise it
    runs FORWARD: the loss only, state untouched.
    """

    @classmethod
    def apply(cls, logits, labels, loss, normalizer=None, reduction="mean"):
        # grad mode as the caller has it (inside forward it is always off, and
        # ctx.needs_input_grad ignores torch.no_grad())
        return super().apply(logits, labels, loss, normalizer, reduction, torch.is_grad_enabled())

    @staticmethod
    def forward(ctx, logits, labels, loss, normalizer, reduction, grad_enabled):
        _check_loss(loss)
        x_np, dtype, x = _tensor(logits, "logits")
        prep = loss._prepare(x_np, _labels(labels), dtype, None, None, "anchor")
        needs = bool(grad_enabled) and ctx.needs_input_grad[0]
        out = _run(ctx, loss, prep, [x], _normalizer(normalizer), reduction, needs)
        return out[0]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        (g,) = ctx.saved_tensors
        return _scale(g, grad_output, ctx.none), None, None, None, None, None


class EFLLevelsFunction(torch.autograd.Function):
    """apply(labels, loss, normalizer, reduction, channel_order, anchors, *levels).

    levels: the classification head's outputs, one CPU tensor per FPN level (at most 8) shaped
    [B, A*C, H, W], channel a*C + c (channel_order="anchor") or c*A + a ("class"), read in place
    (no permute); anchors: A, or None for channels // C. labels follow the reference's
    concatenation: row = b * R + level_offset + (h*W + w) * A + a. Returns the loss (a float32
    scalar tensor), or for reduction="none" a tuple with the per-element loss of each level.
    Gradients come back per level, shaped like it. Same update semantics as EFLFunction.
    """

    @classmethod
    def apply(cls, labels, loss, normalizer, reduction, channel_order, anchors, *levels):
        return super().apply(labels, loss, normalizer, reduction, channel_order, anchors, torch.is_grad_enabled(),
                             *levels)

    @staticmethod
    def forward(ctx, labels, loss, normalizer, reduction, channel_order, anchors, grad_enabled, *levels):
        _check_loss(loss)
        if not levels:
            raise ValueError("no levels given")
        conv = [_tensor(t, "level %d" % i) for i, t in enumerate(levels)]
        dtypes = {c[1] for c in conv}
        if len(dtypes) != 1:
            raise TypeError("all levels must have one dtype, got %s" % sorted(dtypes))
        prep = loss._prepare(None, _labels(labels), conv[0][1], [c[0] for c in conv], anchors, channel_order)
        ctx.level_needs = tuple(bool(grad_enabled) and n for n in ctx.needs_input_grad[7:])
        needs = any(ctx.level_needs)
        out = _run(ctx, loss, prep, [c[2] for c in conv], _normalizer(normalizer), reduction, needs)
        return tuple(out) if ctx.none else out[0]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grad_outputs):
        grads = ctx.saved_tensors
        if ctx.none:
            out = [_scale(g, go, True) for g, go in zip(grads, grad_outputs)]
        else:
            out = [_scale(g, grad_outputs[0], False) for g in grads]
        out = [o if need else None for o, need in zip(out, ctx.level_needs)]
        return (None,) * 7 + tuple(out)


def efl_loss(logits, labels, loss, normalizer=None, reduction="mean", *, channel_order="anchor", anchors=None):
    """EFLFunction for a [N, C] tensor, EFLLevelsFunction for a list or tuple of level tensors."""
    if isinstance(logits, (list, tuple)):
        return EFLLevelsFunction.apply(labels, loss, normalizer, reduction, channel_order, anchors, *logits)
    return EFLFunction.apply(logits, labels, loss, normalizer, reduction)




# ------------------------------------------------------------------ the module
_MODULE_STORAGE = dict(_STORAGE)
_MODULE_STORAGE[torch.float64] = "float32"


def _module_tensor(t, what):
    """(numpy view, storage name, contiguous detached tensor computed on, original dtype)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError("%s must be a torch.Tensor, got %s" % (what, type(t).__name__))
    if t.device.type != "cpu":
        raise ValueError(_device_message(what, t.device))
    if t.dtype not in _MODULE_STORAGE:
        raise TypeError("%s must be float32, float16, bfloat16 or float64, got %s" % (what, t.dtype))
    dtype = t.dtype
    t = t.detach()
    if dtype == torch.float64:
        t = t.float()  # computed in float32; results go back in float64
    if not t.is_contiguous():
        t = t.contiguous()
    return _view(t), _STORAGE[t.dtype], t, dtype


class _Call:
    """What one module call passes to _ModuleFunction besides the tensors."""

    __slots__ = ("module", "labels", "normalizer", "reduction", "channel_order", "anchors", "levels", "grad_enabled")


def _uniform(gos):
    """The common value of grad_outputs that are all one number, else None."""
    value = None
    for go in gos:
        if go is None or go.numel() == 0:
            continue
        first = go.reshape(-1)[0]
        if not bool((go == first).all()):
            return None
        v = float(first)
        if value is None:
            value = v
        elif v != value and not (math.isnan(v) and math.isnan(value)):
            return None
    return 1.0 if value is None else value


class _ModuleFunction(torch.autograd.Function):
    """forward(ctx, call, *tensors): the module's fused pass (COMPUTE), statistics left pending."""

    @staticmethod
    def forward(ctx, call, *tensors):
        m = call.module
        loss = m._native()
        conv = [_module_tensor(t, "logits" if not call.levels else "level %d" % i) for i, t in enumerate(tensors)]
        dtypes = {c[1] for c in conv}
        if len(dtypes) != 1 or len({c[3] for c in conv}) != 1:
            raise TypeError("all levels must have one dtype, got %s" % sorted(str(c[3]) for c in conv))
        if call.levels:
            prep = loss._prepare(None, call.labels, conv[0][1], [c[0] for c in conv], call.anchors,
                                 call.channel_order)
        else:
            prep = loss._prepare(conv[0][0], call.labels, conv[0][1], None, None, "anchor")
        xs = [c[2] for c in conv]
        orig = conv[0][3]
        none = call.reduction == "none"
        needs = bool(call.grad_enabled) and any(ctx.needs_input_grad[1:])
        elems = [_empty(t.shape, t.dtype) for t in xs] if none else None
        elems_np = [_view(e) for e in elems] if none else None
        ctx.none, ctx.orig, ctx.stats, ctx.module, ctx.prep = none, orig, None, m, None
        ctx.level_needs = ctx.needs_input_grad[1:]
        if needs:
            grads = [_empty(t.shape, t.dtype) for t in xs]
            op = "compute" if loss.has_state else "step"
            try:
                value, _, _ = loss._run(op, prep, call.normalizer, call.reduction,
                                        grad_out=[_view(g) for g in grads], elems_out=elems_np)
            except EflError as exc:
                if not loss.has_state or not m._sync_active():
                    if loss.has_state:
                        m.skipped_steps += 1
                    raise
                # data parallel: the other ranks wait for this rank's statistics; send the refusal
                warnings.warn("efl: this rank's batch was refused (%s); every rank skips this update" % exc,
                              RuntimeWarning, stacklevel=3)
                value = 0.0
                for g in grads:
                    g.zero_()
                for e in elems or ():
                    e.zero_()
            if loss.has_state:
                ctx.stats = loss.read_statistics()
                ctx.prep = prep
            # kept on ctx, not saved for backward: backward hands them on as the only reference,
            # so autograd takes them as .grad instead of copying (433 MB at LVIS size)
            ctx.grads = grads
        else:
            value, _, _ = loss._run("forward", prep, call.normalizer, call.reduction, elems_out=elems_np)
        out_dtype = torch.float64 if orig == torch.float64 else None
        if none:
            res = [e.to(out_dtype) if out_dtype else e for e in elems]
            return tuple(res) if call.levels else res[0]
        return torch.tensor(value, dtype=out_dtype or torch.float32)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grad_outputs):
        grads, ctx.grads = ctx.grads, None
        m = ctx.module
        f64 = ctx.orig == torch.float64
        if ctx.none:
            s = _uniform(grad_outputs)
            gos = grad_outputs
        else:
            s = float(grad_outputs[0])
            gos = [grad_outputs[0]] * len(grads)
        if f64:
            outs = [g.double() * go.double() for g, go in zip(grads, gos)]
        elif s is not None and not ctx.none:
            outs = [_scale(g, gos[0], False) for g in grads]
        else:
            outs = [_scale(g, go, True) for g, go in zip(grads, gos)]
        if ctx.stats is not None:
            stats = ctx.stats
            C = (stats.shape[0] - 1) // 2
            ls = m._loss_scale_value()
            refused = stats[-1] > 0
            finite = True
            if not refused and (s is None or s != 1.0 or ls != 1.0):
                finite = math.isfinite(ls) and ls > 0 and all(bool(torch.isfinite(o).all()) for o in outs)
            if refused:
                pass
            elif not finite:
                stats = np.zeros_like(stats)
                stats[-1] = 1.0
                m._nonfinite_pending = True
            elif s is not None:
                if abs(s) != ls:
                    stats = stats.copy()
                    stats[:2 * C] *= abs(s) / ls
            else:
                # elementwise weights: the statistics of the gradient itself (the library's COLLECT)
                actual = [(g.float() * go.float()).contiguous() for g, go in zip(grads, gos)]
                p = _Prepared()
                src = ctx.prep
                p.layout, p.dtype, p.labels, p.rows = src.layout, "float32", src.labels, src.rows
                p.images, p.anchors, p.hw = src.images, src.anchors, src.hw
                p.arrays = [a.numpy() for a in actual]
                loss = m._native()
                try:
                    loss._run("collect", p, grad_scale=ls)
                except EflError:
                    pass  # read_statistics flags it
                stats = loss.read_statistics()
                if stats[-1] > 0:
                    m._nonfinite_pending = True
            m._add_pending(stats)
        outs = [o if need else None for o, need in zip(outs, ctx.level_needs)]
        return (None,) + tuple(outs)


def _queue_callback(fn):
    torch.autograd.Variable._execution_engine.queue_callback(fn)


class EqualizedFocalLossModule(torch.nn.Module):
    """The loss as a module with the reference's step semantics (see the module documentation).

    Constructor arguments as efl.EqualizedFocalLoss (num_classes, gamma, alpha, scale_factor,
    ignore_index, loss_weight, labels, accumulate, mode, mu; None takes the mode's default), plus
    the defaults of the calls: reduction ("mean"), channel_order ("anchor") and anchors (None)
    for per-level inputs; sync (True: sum the statistics over torch.distributed's process_group
    when its world size is > 1), process_group (None: the default group; not pickled),
    loss_scale (1.0; see set_loss_scale) and call_style ("auto", "seed" or "mmdet").

    Buffers pos_grad, neg_grad, pos_neg (float64 [C]; none in the focal mode) are the state;
    ``crit.efl`` is the native efl.EqualizedFocalLoss kept in step with them (read from it freely;
    write the state through the buffers or load_state_dict()). ``crit.skipped_steps`` counts the
    updates skipped (refused batches, non-finite scaled gradients) by this module object.

    forward(logits, labels, normalizer=None, reduction=None, channel_order=None, anchors=None):
    logits a [N, C] tensor or a list of [B, A*C, H, W] level tensors (see EFLLevelsFunction for
    the labels' order); returns the loss (a scalar, float64 for float64 logits) or, for
    reduction="none", the per-element loss (a tuple per level). Or mmdetection's
    forward(cls_score, label, weight=None, avg_factor=None, reduction_override=None).
    """

    def __init__(self, num_classes, gamma=None, alpha=None, scale_factor=None, ignore_index=-1, loss_weight=None,
                 labels="reference", accumulate="auto", mode="efl", mu=None, reduction="mean",
                 channel_order="anchor", anchors=None, *, sync=True, process_group=None, loss_scale=1.0,
                 call_style="auto"):
        super().__init__()
        EqualizedFocalLoss._reduction(reduction)  # a ValueError now rather than at the first call
        if call_style not in ("auto", "seed", "mmdet"):
            raise ValueError("call_style must be 'auto', 'seed' or 'mmdet', got %r" % (call_style,))
        self._efl_kwargs = dict(num_classes=num_classes, gamma=gamma, alpha=alpha, scale_factor=scale_factor,
                                ignore_index=ignore_index, loss_weight=loss_weight, labels=labels,
                                accumulate=accumulate, mode=mode, mu=mu)
        loss = EqualizedFocalLoss(**self._efl_kwargs)
        self._efl_obj = loss
        self._synced = None
        self.reduction = reduction
        self.channel_order = channel_order
        self.anchors = anchors
        self.sync = bool(sync)
        self.process_group = process_group
        self.call_style = call_style
        self.skipped_steps = 0
        self.last_error = None
        self._pending = None
        self._callback_queued = False
        self._nonfinite_pending = False
        self.set_loss_scale(loss_scale)
        if loss.has_state:
            for name, arr in zip(_STATE_NAMES, loss.read_state()):
                self.register_buffer(name, torch.from_numpy(arr))
            self._mark_synced()

    # ------------------------------------------------------------ plumbing
    @property
    def num_classes(self):
        return self._efl_kwargs["num_classes"]

    @property
    def mode(self):
        return self._efl_kwargs["mode"]

    @property
    def efl(self):
        """The native efl.EqualizedFocalLoss, in step with the buffers."""
        return self._native()

    def _state_buffers(self):
        return tuple(getattr(self, n) for n in _STATE_NAMES)

    def _mark_synced(self):
        self._synced = tuple((b, b._version) for b in self._state_buffers())

    def _native(self):
        loss = self.__dict__.get("_efl_obj")
        if loss is None or loss.closed:
            loss = EqualizedFocalLoss(**self._efl_kwargs)
            self._efl_obj = loss
            self._synced = None
        if loss.has_state:
            bufs = self._state_buffers()
            syn = self._synced
            if syn is None or any(b is not t or b._version != v for b, (t, v) in zip(bufs, syn)):
                loss.load_state(*bufs)
                self._mark_synced()
        return loss

    def __getstate__(self):
        d = self.__dict__.copy()
        d["_efl_obj"] = None
        d["_synced"] = None
        d["_pending"] = None
        d["_callback_queued"] = False
        d["_nonfinite_pending"] = False
        d["process_group"] = None
        d["last_error"] = None
        return d

    def set_loss_scale(self, scale):
        """The loss scale that backward's grad_output carries (AMP): a positive number, or an
        object with get_scale() (a GradScaler), read at each backward. The statistics are divided
        by it; 1.0 (the default) for none."""
        if not hasattr(scale, "get_scale"):
            scale = float(scale)
            if not (scale > 0):
                raise ValueError("loss scale must be > 0, got %r" % scale)
        self.loss_scale = scale

    def _loss_scale_value(self):
        s = self.loss_scale
        return float(s.get_scale()) if hasattr(s, "get_scale") else float(s)

    def _group_size(self):
        try:
            import torch.distributed as dist
        except ImportError:  # pragma: no cover
            return 1
        if not (dist.is_available() and dist.is_initialized()):
            return 1
        return dist.get_world_size(self.process_group)

    def _sync_active(self):
        return self.sync and self._group_size() > 1

    def _add_pending(self, stats):
        if self._pending is None:
            self._pending = np.array(stats, dtype=np.float64)
        else:
            self._pending += stats
        if not self._callback_queued:
            self._callback_queued = True
            _queue_callback(self._finish_step)

    def _finish_step(self):
        """After a backward pass: the summed statistics (over the ranks) into the state."""
        self._callback_queued = False
        stats, self._pending = self._pending, None
        nonfinite, self._nonfinite_pending = self._nonfinite_pending, False
        if stats is None:
            return
        stats[-1] = 1.0 if stats[-1] > 0 else 0.0
        if self.sync and self._group_size() > 1:
            import torch.distributed as dist

            t = torch.from_numpy(stats)
            dist.all_reduce(t, group=self.process_group)  # in place, into stats
        loss = self._native()
        try:
            loss.apply_statistics(stats)
        except EflError as exc:
            self.skipped_steps += 1
            self.last_error = exc
            if not nonfinite:  # an AMP overflow is routine; a refused batch is not
                warnings.warn("efl: state update skipped (%s)" % exc, RuntimeWarning)
            return
        with torch.no_grad():
            for b, arr in zip(self._state_buffers(), loss.read_state()):
                b.copy_(torch.from_numpy(arr))
        self._mark_synced()

    # ------------------------------------------------------------- calls
    def forward(self, input, target, normalizer=None, reduction=None, channel_order=None, anchors=None, *,
                weight=None, avg_factor=None, reduction_override=None):
        mmdet = self.call_style == "mmdet" or weight is not None or avg_factor is not None \
            or reduction_override is not None
        if not mmdet and self.call_style == "auto" and isinstance(normalizer, torch.Tensor) \
                and isinstance(input, torch.Tensor) and normalizer.dim() >= 1 and input.dim() == 2 \
                and normalizer.shape[0] == input.shape[0] and (input.shape[0] > 1 or normalizer.dim() == 2):
            mmdet = True
        if mmdet:
            # positional slots in mmdetection's order: (cls_score, label, weight, avg_factor, reduction_override)
            if weight is None:
                weight = normalizer
            if avg_factor is None and not isinstance(reduction, str):
                avg_factor = reduction
            if reduction_override is None and channel_order in ("none", "mean", "sum"):
                reduction_override = channel_order
            return self._mmdet(input, target, weight, avg_factor, reduction_override)
        return self._call(input, target, normalizer, self.reduction if reduction is None else reduction,
                          self.channel_order if channel_order is None else channel_order,
                          self.anchors if anchors is None else anchors)

    def _call(self, logits, labels, normalizer, reduction, channel_order, anchors):
        EqualizedFocalLoss._reduction(reduction)
        c = _Call()
        c.module = self
        c.labels = _labels(labels)
        c.normalizer = _normalizer(normalizer)
        c.reduction = reduction
        c.channel_order = channel_order
        c.anchors = anchors
        c.grad_enabled = torch.is_grad_enabled()
        if isinstance(logits, (list, tuple)):
            if not logits:
                raise ValueError("no levels given")
            c.levels = True
            return _ModuleFunction.apply(c, *logits)
        c.levels = False
        return _ModuleFunction.apply(c, logits)

    def _mmdet(self, cls_score, label, weight, avg_factor, reduction_override):
        """mmdetection's loss_cls call: labels 0..C-1 classes, C background; weights."""
        reduction = self.reduction if reduction_override is None else reduction_override
        EqualizedFocalLoss._reduction(reduction)
        if not isinstance(cls_score, torch.Tensor) or cls_score.dim() != 2:
            raise ValueError("the mmdetection call takes cls_score as an [N, C] tensor")
        C = self.num_classes
        n = cls_score.shape[0]
        lab = torch.as_tensor(label).detach().cpu()
        if lab.dtype.is_floating_point or lab.dtype == torch.bool:
            raise ValueError("labels must be an integer tensor, got %s" % lab.dtype)
        lab = lab.reshape(-1).long()
        ign = self._efl_kwargs["ignore_index"]
        if self._efl_kwargs["labels"] == "reference":
            bad = C + 1 if ign != C + 1 else C + 2  # an invalid label that is not the ignore index
            y = torch.full_like(lab, bad)
            cls = (lab >= 0) & (lab < C)
            y[cls] = lab[cls] + 1
            y[lab == C] = 0
            y[lab == ign] = ign
        else:
            y = lab.clone()
        w = None
        if weight is not None:
            w = torch.as_tensor(weight).detach()
            if w.device.type != "cpu":
                raise ValueError(_device_message("weight", w.device))
            if w.dim() == 1 or (w.dim() == 2 and w.shape[1] == 1):
                w1 = w.reshape(-1)
                if w1.shape[0] != n:
                    raise ValueError("weight must have one value per row (%d), got %s" % (n, tuple(w.shape)))
                y[w1 == 0] = ign
                if bool(((w1 == 0) | (w1 == 1)).all()):
                    w = None  # 0/1 per row: ignored rows, the fused pass
                else:
                    w = w1.reshape(n, 1)
            elif tuple(w.shape) != (n, C):
                raise ValueError("weight must be [N], [N, 1] or [N, C], got %s" % (tuple(w.shape),))
        if reduction == "mean":
            norm = float(n * C) if avg_factor is None else _normalizer(avg_factor)
        else:
            norm = None
        if w is None:
            return self._call(cls_score, y, norm, reduction, "anchor", None)
        elems = self._call(cls_score, y, None, "none", "anchor", None)
        out = elems * w.to(elems.dtype)
        if reduction == "none":
            return out
        total = out.sum()
        return total / norm if reduction == "mean" else total

    def extra_repr(self):
        return "%r, reduction=%r" % (self._native(), self.reduction)

    def reset_state(self):
        loss = self._native()
        loss.reset_state()
        if loss.has_state:
            with torch.no_grad():
                for b, arr in zip(self._state_buffers(), loss.read_state()):
                    b.copy_(torch.from_numpy(arr))
            self._mark_synced()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        keys = [prefix + k for k in _STATE_NAMES]
        if not self._efl_obj_has_state():
            super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                          unexpected_keys, error_msgs)
            return  # a focal loss has no buffers: the keys stay unexpected (strict)
        rest = {k: v for k, v in state_dict.items() if k not in keys}
        super()._load_from_state_dict(rest, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        for k in keys:
            while k in missing_keys:
                missing_keys.remove(k)
        present = [k in state_dict for k in keys]
        if all(present):
            loss = self._native()
            try:
                loss.load_state_dict(state_dict, prefix=prefix)  # checked by the library
            except (ValueError, KeyError, EflError) as exc:
                error_msgs.append("efl state under %r: %s" % (prefix, exc))
                return
            with torch.no_grad():
                for b, arr in zip(self._state_buffers(), loss.read_state()):
                    b.copy_(torch.from_numpy(arr))
            self._mark_synced()
        elif strict:
            missing_keys.extend(k for k, p in zip(keys, present) if not p)

    def _efl_obj_has_state(self):
        return self._efl_kwargs["mode"] != "focal"
