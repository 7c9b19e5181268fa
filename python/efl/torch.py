"""efl.torch: the library as a PyTorch autograd function on CPU tensors.

    import efl.torch
    crit = efl.torch.EqualizedFocalLossModule(num_classes=1203)          # mode="efl" | "focal" | "eqlv2"
    loss = crit(logits, labels, normalizer=num_pos)   # logits [N, C] float32/float16/bfloat16, CPU
    loss.backward()                                   # logits.grad = the library's gradient
    loss = crit([p3, p4, p5, p6, p7], labels, anchors=9, channel_order="anchor")  # [B, A*C, H, W] each

    # or with a loss object of your own
    l = efl.torch.EFLFunction.apply(logits, labels, efl.EqualizedFocalLoss(1203), num_pos, "mean")

This module is imported only on request (``import efl.torch`` or ``efl.torch``): ``import efl``
alone never loads torch.

Tensors are passed to the library without a copy when they are contiguous CPU float32, float16
or bfloat16 tensors (a non-contiguous one is made contiguous first); the gradient is written
straight into a new tensor's memory. Labels: any integer tensor or array, one per row.

When the state is updated, compared with the reference
------------------------------------------------------
The reference (EOD's EqualizedFocalLoss) computes the loss in forward, and collects the
gradient in a backward hook on each FPN level's classifier output: the hook fires once per
backward pass, sees d(total loss) / d(head output) and uses the targets cached by the most
recent forward. This adapter instead runs the library's fused STEP inside forward: the loss,
d(this loss) / d(logits) and the state update in one pass over the logits, reading the state from
before the call; backward only multiplies the saved gradient by grad_output. Therefore:

- One forward and one backward per training step, the loss entering the total with weight 1 and
  no loss scaling (the usual loop): the same state as the reference, step for step.
- The update happens in forward, once per call, whenever the logits require grad under grad
  mode, whether or not backward follows: two forward calls in one step update twice (the
  reference updates once, in its one backward, with the gradient of both terms summed and the
  targets of the second call); a forward whose loss is thrown away still updates.
- Under torch.no_grad() or with logits that do not require grad (evaluation), forward runs the
  library's FORWARD: loss only, state untouched (the reference: no backward, no update).
- grad_output never reaches the statistics: scaling the loss (loss * w, an AMP GradScaler's
  scale, gradient accumulation's 1/k) scales the returned gradient only, while the reference's
  hook would accumulate the scaled gradient. The statistics here are those of the loss itself
  (including loss_weight and 1/normalizer, as SPEC's default). A step that GradScaler later
  skips has still updated the state (non-finite logits are refused by the library itself:
  EflError(ERROR_NONFINITE), state untouched).
- backward(retain_graph=True) twice does not update again; double backward is not supported.
- Data-parallel: each process updates from its own rows; the reference all-reduces P and N
  across ranks before the update.
For reduction="none" the statistics are those of the elements' sum; the weights that backward
receives (grad_output) scale the gradient elementwise and nothing else.
"""

import numpy as np
import torch

from . import EflError, EqualizedFocalLoss

__all__ = ["EFLFunction", "EFLLevelsFunction", "efl_loss", "EqualizedFocalLossModule"]

_STORAGE = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
_STATE_NAMES = ("pos_grad", "neg_grad", "pos_neg")


def _tensor(t, what):
    """(numpy view, storage name, contiguous detached tensor) of a CPU floating tensor."""
    if not isinstance(t, torch.Tensor):
        raise TypeError("%s must be a torch.Tensor, got %s" % (what, type(t).__name__))
    if t.device.type != "cpu":
        raise ValueError("efl.torch works on CPU tensors; %s is on %s" % (what, t.device))
    if t.dtype not in _STORAGE:
        raise TypeError("%s must be float32, float16 or bfloat16, got %s" % (what, t.dtype))
    t = t.detach()
    if not t.is_contiguous():
        t = t.contiguous()
    return _view(t), _STORAGE[t.dtype], t


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
    elems = [torch.empty(t.shape, dtype=t.dtype) for t in tensors] if none else None
    elems_np = [_view(e) for e in elems] if none else None
    if needs_grad:
        grads = [torch.empty(t.shape, dtype=t.dtype) for t in tensors]
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


class EqualizedFocalLossModule(torch.nn.Module):
    """The loss as a module: ``crit(logits, labels, normalizer=None)`` then ``.backward()``.

    Constructor arguments as efl.EqualizedFocalLoss (num_classes, gamma, alpha, scale_factor,
    ignore_index, loss_weight, labels, accumulate, mode, mu; None takes the mode's default), plus
    the defaults of the calls: reduction ("mean"), channel_order ("anchor") and anchors (None)
    for per-level inputs. ``crit.efl`` is the underlying efl.EqualizedFocalLoss (checkpoints,
    state). The module's state_dict() holds pos_grad, neg_grad and pos_neg (float64 tensors [C])
    under the same names as the reference's buffers, and load_state_dict() takes them back
    (float32 ones from the reference too); the focal mode has none.
    forward(logits, labels, normalizer=None, reduction=None, channel_order=None, anchors=None):
    logits a [N, C] tensor or a list of [B, A*C, H, W] level tensors; see EFLFunction and
    EFLLevelsFunction, and the module's documentation for when the state is updated.
    """

    def __init__(self, num_classes, gamma=None, alpha=None, scale_factor=None, ignore_index=-1, loss_weight=None,
                 labels="reference", accumulate="auto", mode="efl", mu=None, reduction="mean",
                 channel_order="anchor", anchors=None):
        super().__init__()
        EqualizedFocalLoss._reduction(reduction)  # a ValueError now rather than at the first call
        self.efl = EqualizedFocalLoss(num_classes, gamma=gamma, alpha=alpha, scale_factor=scale_factor,
                                      ignore_index=ignore_index, loss_weight=loss_weight, labels=labels,
                                      accumulate=accumulate, mode=mode, mu=mu)
        self.reduction = reduction
        self.channel_order = channel_order
        self.anchors = anchors

    @property
    def num_classes(self):
        return self.efl.num_classes

    def forward(self, logits, labels, normalizer=None, reduction=None, channel_order=None, anchors=None):
        return efl_loss(logits, labels, self.efl, normalizer, self.reduction if reduction is None else reduction,
                        channel_order=self.channel_order if channel_order is None else channel_order,
                        anchors=self.anchors if anchors is None else anchors)

    def extra_repr(self):
        return "%r, reduction=%r" % (self.efl, self.reduction)

    def reset_state(self):
        self.efl.reset_state()

    # the state as the reference's registered buffers
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for k, v in self.efl.state_dict(as_torch=True, prefix=prefix).items():
            destination[k] = v

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if not self.efl.has_state:
            return  # a focal loss has no buffers: the keys stay unexpected (strict)
        keys = [prefix + k for k in _STATE_NAMES]
        for k in keys:
            while k in unexpected_keys:
                unexpected_keys.remove(k)
        present = [k in state_dict for k in keys]
        if all(present):
            try:
                self.efl.load_state_dict(state_dict, prefix=prefix)
            except (ValueError, KeyError, EflError) as exc:
                error_msgs.append("efl state under %r: %s" % (prefix, exc))
        elif strict:
            missing_keys.extend(k for k, p in zip(keys, present) if not p)
