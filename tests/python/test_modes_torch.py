#!/usr/bin/python3
"""The binding's loss modes, head layouts, checkpoints and PyTorch adapter.

Run:  EFL_LIBRARY=build/libefl.so PYTHONPATH=python /usr/bin/python3 tests/python/test_modes_torch.py [name...]
Exit: 0 all passed, 1 a test failed, 77 skipped (no torch, or no OpenCL device).

- EQLv2: a float64 PyTorch autograd implementation written from docs/semantics.md "Related modes" (weights
  detached, weighted binary cross-entropy, sum / normalizer (the number of rows), statistics
  |sigmoid(x) - t| * weight, g = pos / (neg + 1e-10) unclamped, from 100), over consecutive
  steps, each side evolving its own state.
- Focal mode: torchvision's sigmoid_focal_loss formula, written out in float64 torch.
- efl.torch: gradients through EFLFunction / the module equal the library's step gradient
  (bitwise) and the float64 EFL reference's autograd gradient (test_torch_parity.ReferenceEFL),
  with a grad_output scale; reduction "none" through torch.autograd.grad of a weighted sum.
- Layouts: per-level [B, A*C, H, W] arrays, anchor- and class-major, against the rows layout.
- Checkpoints: save / load / export / import continue bit for bit; state_dict from float32
  torch tensors (the reference's buffers).
"""

import os
import subprocess
import sys
import tempfile

try:
    import torch
    import torch.nn.functional as F
except Exception as exc:  # ImportError, or a broken install
    print("SKIP: torch cannot be imported (%s)" % (exc,))
    sys.exit(77)

import numpy as np

import efl
import efl.torch as et
from _common import run_tests  # this folder is on sys.path: the script's own

# the float64 EFL reference and the shared checks (importing it sets torch to one thread)
from test_torch_parity import REPLAY_RTOL, ReferenceEFL, Replay, check_grad, close_array, close_scalar, make_batch, num_pos

LOSS_RTOL = 1e-5
STATE_RTOL = 1e-6
STATE_ATOL_REL_MAX = 1e-12
NAMES = ("pos_grad", "neg_grad", "pos_neg")
f32 = lambda v: float(np.float32(v))  # the library takes float32 parameters


# ------------------------------------------------------------------ references
class ReferenceEQLv2:
    """docs/semantics.md "Related modes", EQLv2, in float64 torch: forward by torch ops, backward by autograd."""

    def __init__(self, num_classes, gamma=12.0, mu=0.8, alpha=4.0, loss_weight=1.0, ignore_index=-1):
        self.C = num_classes
        self.gamma, self.mu, self.alpha = f32(gamma), f32(mu), f32(alpha)
        self.loss_weight = f32(loss_weight)
        self.ignore_index = ignore_index
        self.pos_grad = torch.zeros(self.C, dtype=torch.float64)
        self.neg_grad = torch.zeros(self.C, dtype=torch.float64)
        self.pos_neg = torch.full((self.C,), 100.0, dtype=torch.float64)

    _targets = ReferenceEFL._targets  # the reference label convention (0 background, k column k-1)

    def state(self):
        return self.pos_grad.numpy().copy(), self.neg_grad.numpy().copy(), self.pos_neg.numpy().copy()

    def step(self, logits, labels, normalizer):
        t, valid = self._targets(labels)
        x = torch.as_tensor(np.asarray(logits, dtype=np.float32)).to(torch.float64).requires_grad_(True)
        neg_w = torch.sigmoid(self.gamma * (self.pos_neg - self.mu)).detach()
        pos_w = 1.0 + self.alpha * (1.0 - neg_w)
        w = pos_w * t + neg_w * (1.0 - t)  # weights are constants
        bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
        total = self.loss_weight * (bce * w * valid).sum() / float(np.float32(normalizer))
        (G,) = torch.autograd.grad(total, x)
        with torch.no_grad():
            a = (torch.sigmoid(x) - t).abs() * w * valid  # unscaled statistics
            self.pos_grad = self.pos_grad + (a * t).sum(0)
            self.neg_grad = self.neg_grad + (a * (1.0 - t)).sum(0)
            self.pos_neg = self.pos_grad / (self.neg_grad + 1e-10)  # unclamped
        return float(total.detach()), G.numpy()


def torchvision_focal(logits, labels, C, gamma=2.0, alpha=0.25, loss_weight=1.0, normalizer=1.0, ignore_index=-1):
    """torchvision.ops.sigmoid_focal_loss's formula (float64), summed over valid rows, / normalizer;
    returns (loss, autograd gradient)."""
    holder = ReferenceEFL(C, ignore_index=ignore_index)
    t, valid = holder._targets(labels)
    x = torch.as_tensor(np.asarray(logits, dtype=np.float32)).to(torch.float64).requires_grad_(True)
    gamma, alpha = f32(gamma), f32(alpha)
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    total = f32(loss_weight) * (loss * valid).sum() / float(np.float32(normalizer))
    (G,) = torch.autograd.grad(total, x)
    return float(total.detach()), G.numpy()


# ------------------------------------------------------------------ helpers
def check_state(tag, got, want, rtol=STATE_RTOL):
    for name, a, b in zip(NAMES, got, want):
        atol = STATE_ATOL_REL_MAX * float(np.max(np.abs(b))) + 1e-30
        close_array("%s %s" % (tag, name), a, b, rtol, atol)


def same_state(tag, a, b):
    for name, x, y in zip(NAMES, a, b):
        assert np.array_equal(x, y), "%s: %s differs (max |diff| %.3g)" % (tag, name, np.max(np.abs(x - y)))


def module_state(tag, got, want):
    """The module's state (COMPUTE, the statistics summed on the host in float64, then applied) vs
    the library's fused STEP: bitwise where the device keeps float64 totals; float-pair devices
    round the statistics through float64, so there within 1e-12 of the largest value."""
    check_state(tag, got, want, rtol=1e-12)


def expect_error(status, call, what):
    try:
        call()
    except efl.EflError as e:
        assert e.status == status, "%s: %s, want status %d" % (what, e, status)
    else:
        raise AssertionError("%s: no EflError" % what)


def expect_value_error(call, what):
    try:
        call()
    except (ValueError, TypeError):
        pass
    else:
        raise AssertionError("%s: no ValueError" % what)


def bits_equal(tag, a, b):
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype, (tag, a.shape, b.shape, a.dtype, b.dtype)
    if not np.array_equal(a.view(np.uint8), b.view(np.uint8)):
        diff = np.argwhere(a != b)
        raise AssertionError("%s: %d elements differ, first at %s: %r vs %r"
                             % (tag, len(diff), tuple(diff[0]), a[tuple(diff[0])], b[tuple(diff[0])]))


# ------------------------------------------------------------------ (a) EQLv2
def test_eqlv2_parity():
    rng = np.random.default_rng(21)
    n, c = 1500, 60
    for params in ({}, {"gamma": 10.0, "mu": 0.7, "alpha": 3.0, "loss_weight": 2.0}):
        ref = ReferenceEQLv2(c, **params)
        with efl.EQLv2Loss(c, **params) as loss:
            assert loss.mode == "eqlv2" and loss.config()["mode"] == "eqlv2"
            assert np.all(loss.pos_neg == 100.0) and np.all(loss.pos_grad == 0), "EQLv2 starts from g = 100"
            for k in range(4):
                x, y = make_batch(rng, n, c)
                tag = "EQLv2 %s step %d" % (params, k)
                # normalizer None: the number of rows (the reference's mean)
                got_l, got_g = loss.step(x, y, normalizer=None if k % 2 else n)
                want_l, want_g = ref.step(x, y, n)
                close_scalar(tag + " loss", got_l, want_l, LOSS_RTOL)
                check_grad(tag + " grad", got_g, want_g)
                check_state(tag, loss.read_state(), ref.state())
            g = loss.pos_neg
            assert np.any(g > 1.0) or np.any(g < 0.5), "state did not evolve: %s" % g[:6]
            f = loss.forward(x, y, reduction="sum")
            close_scalar("EQLv2 forward sum", f, ReferenceEQLv2_forward_sum(ref, x, y), LOSS_RTOL)
    # the same through the torch adapter
    ref = ReferenceEQLv2(c)
    crit = et.EqualizedFocalLossModule(c, mode="eqlv2")
    for k in range(2):
        x, y = make_batch(rng, 400, c)
        xt = torch.from_numpy(x).requires_grad_(True)
        out = crit(xt, torch.from_numpy(y), normalizer=400)
        out.backward()
        want_l, want_g = ref.step(x, y, 400)
        close_scalar("EQLv2 adapter loss %d" % k, float(out), want_l, LOSS_RTOL)
        check_grad("EQLv2 adapter grad %d" % k, xt.grad.numpy(), want_g)
        check_state("EQLv2 adapter state %d" % k, crit.efl.read_state(), ref.state())


def ReferenceEQLv2_forward_sum(ref, x, y):
    """The reference's loss for reduction sum with its current state (no update)."""
    saved = (ref.pos_grad, ref.neg_grad, ref.pos_neg)
    total, _ = ref.step(x, y, 1.0)
    ref.pos_grad, ref.neg_grad, ref.pos_neg = saved
    return total


# ------------------------------------------------------------------ (b) focal
def test_focal_parity():
    rng = np.random.default_rng(22)
    n, c = 1200, 50
    for params, reduction in (({}, "mean"), ({"gamma": 1.5, "alpha": -1.0, "loss_weight": 2.0}, "sum"),
                              ({"alpha": 0.5}, "mean")):
        with efl.FocalLoss(c, **params) as loss:
            assert not loss.has_state and loss.state_dict() == {}
            for k in range(2):
                x, y = make_batch(rng, n, c)
                norm = num_pos(y) if reduction == "mean" else 1.0
                tag = "focal %s %s step %d" % (params, reduction, k)
                got_l, got_g = loss.step(x, y, normalizer=norm, reduction=reduction)
                want_l, want_g = torchvision_focal(x, y, c, normalizer=norm, **params)
                close_scalar(tag + " loss", got_l, want_l, LOSS_RTOL)
                check_grad(tag + " grad", got_g, want_g)
                # no state: the same batch again gives bitwise the same result
                again_l, again_g = loss.step(x, y, normalizer=norm, reduction=reduction)
                assert again_l == got_l, (again_l, got_l)
                bits_equal(tag + " repeated grad", again_g, got_g)
            for what, call in (("read_state", loss.read_state), ("reset_state", loss.reset_state),
                               ("pos_neg", lambda: loss.pos_neg),
                               ("load_state", lambda: loss.load_state(np.zeros(c), np.zeros(c), np.ones(c)))):
                expect_error(efl.Status.ERROR_INVALID_MODE, call, "focal " + what)
            try:
                loss.load_state_dict({"pos_grad": np.zeros(c), "neg_grad": np.zeros(c), "pos_neg": np.ones(c)})
            except ValueError:
                pass
            else:
                raise AssertionError("focal load_state_dict with state keys accepted")
            loss.load_state_dict({})
    # focal mode equals EFL with s = 0 (both are focal loss)
    x, y = make_batch(rng, 500, c)
    with efl.FocalLoss(c) as a, efl.EqualizedFocalLoss(c, scale_factor=0.0) as b:
        la, ga = a.step(x, y, normalizer=num_pos(y))
        lb, gb = b.step(x, y, normalizer=num_pos(y))
        close_scalar("focal vs EFL s=0 loss", la, lb, 1e-6)
        close_array("focal vs EFL s=0 grad", ga, gb, 1e-6, 1e-12 * float(np.max(np.abs(gb))))
    expect_value_error(lambda: efl.EqualizedFocalLoss(c, mode="softmax"), "unknown mode")


# ------------------------------------------------------------------ (c) the torch adapter
def test_adapter_grad_matches_library_and_reference():
    rng = np.random.default_rng(23)
    n, c = 1000, 40
    crit = et.EqualizedFocalLossModule(c)
    lib = efl.EqualizedFocalLoss(c)
    ref = ReferenceEFL(c)
    for k, scale in enumerate((2.5, 1.0, 0.375)):
        x, y = make_batch(rng, n, c)
        norm = num_pos(y)
        xt = torch.from_numpy(x.copy()).requires_grad_(True)
        out = crit(xt, torch.from_numpy(y).long(), normalizer=torch.tensor(float(norm)))
        assert out.dtype == torch.float32 and out.dim() == 0
        # the module's statistics come from the gradient backward brings (as the reference's hook):
        # told the scale, it divides it out, and the state is the library's step's
        crit.set_loss_scale(scale)
        (out * scale).backward()
        lib_l, lib_g = lib.step(x, y, normalizer=norm)
        ref_l, ref_g = ref.step(x, y, normalizer=norm)
        tag = "adapter step %d (grad_output %g)" % (k, scale)
        assert float(out) == lib_l, (tag, float(out), lib_l)
        bits_equal(tag + " grad vs library * scale", xt.grad.numpy(), (torch.from_numpy(lib_g) * scale).numpy())
        close_scalar(tag + " loss vs reference", float(out), ref_l, LOSS_RTOL)
        check_grad(tag + " grad vs reference", xt.grad.numpy(), ref_g * scale)
        module_state(tag + " state vs library", crit.efl.read_state(), lib.read_state())
    crit.set_loss_scale(1.0)
    # EFLFunction.apply with a loss object of one's own, sum reduction
    x, y = make_batch(rng, n, c)
    xt = torch.from_numpy(x).requires_grad_(True)
    out = et.EFLFunction.apply(xt, torch.from_numpy(y), crit.efl, None, "sum")
    (gx,) = torch.autograd.grad(out * 3.0, xt)
    lib_l, lib_g = lib.step(x, y, reduction="sum")
    ref_l, ref_g = ref.step(x, y, reduction="sum")
    assert float(out) == lib_l
    bits_equal("EFLFunction sum grad", gx.numpy(), (torch.from_numpy(lib_g) * 3.0).numpy())
    check_grad("EFLFunction sum grad vs reference", gx.numpy(), 3.0 * ref_g)
    # no gradient wanted: the library's FORWARD, state untouched
    before = crit.efl.read_state()
    with torch.no_grad():
        ev = crit(torch.from_numpy(x).requires_grad_(True), y, normalizer=7)
    ev2 = crit(torch.from_numpy(x), y, normalizer=7)  # logits not requiring grad
    same_state("no_grad forward", crit.efl.read_state(), before)
    assert float(ev) == float(ev2) == lib.forward(x, y, normalizer=7)
    # wrong tensors
    # float64 logits: computed in float32, returned in float64
    ev64 = crit(torch.from_numpy(x).double(), y, normalizer=7)
    assert ev64.dtype == torch.float64 and float(ev64) == float(ev)
    expect_value_error(lambda: crit(torch.from_numpy(x), torch.from_numpy(y).float()), "float labels")
    expect_value_error(lambda: crit(torch.from_numpy(x[:, :-1]), y), "C-1 columns")


def test_adapter_reduction_none():
    rng = np.random.default_rng(24)
    n, c = 800, 30
    crit = et.EqualizedFocalLossModule(c, reduction="none", loss_weight=1.5)
    lib = efl.EqualizedFocalLoss(c, loss_weight=1.5)
    ref = ReferenceEFL(c, loss_weight=1.5)
    for k in range(3):
        x, y = make_batch(rng, n, c)
        W = rng.uniform(0.0, 3.0, size=(n, c)).astype(np.float32)
        xt = torch.from_numpy(x).requires_grad_(True)
        elems = crit(xt, y)
        assert elems.shape == (n, c) and elems.dtype == torch.float32
        (gx,) = torch.autograd.grad((elems * torch.from_numpy(W)).sum(), xt)
        # elementwise weights: the module's statistics are those of the gradient W * g (the
        # reference's hook), so the library's state follows compute() then accumulate(W * g)
        lib_e, lib_g = lib.compute(x, y, reduction="none")
        lib.accumulate((torch.from_numpy(W) * torch.from_numpy(lib_g)).numpy(), y)
        before = ref.state()
        ref_l, ref_g = ref.step(x, y, reduction="sum")
        # and the reference's hook would see W * its gradient: its update from that
        t, valid = ref._targets(y)
        a = (torch.from_numpy(W).double() * torch.from_numpy(ref_g)).abs() * valid
        pos, neg = before[0] + (a * t).sum(0).numpy(), before[1] + (a * (1.0 - t)).sum(0).numpy()
        ref.load_state(pos, neg, np.clip(pos / (neg + 1e-10), 0.0, 1.0))
        tag = "none step %d" % k
        bits_equal(tag + " elements vs library", elems.detach().numpy(), lib_e)
        bits_equal(tag + " grad vs W * library grad", gx.numpy(), (torch.from_numpy(W) * torch.from_numpy(lib_g)).numpy())
        close_scalar(tag + " sum of elements vs reference", float(elems.detach().double().sum()), ref_l, LOSS_RTOL)
        check_grad(tag + " grad vs W * reference", gx.numpy(), W.astype(np.float64) * ref_g)
        ignored = y == -1
        assert np.all(elems.detach().numpy()[ignored] == 0) and np.all(gx.numpy()[ignored] == 0)
        module_state(tag + " state", crit.efl.read_state(), lib.read_state())
        check_state(tag + " state vs reference", crit.efl.read_state(), ref.state())


def test_adapter_half_types_and_levels():
    rng = np.random.default_rng(25)
    n, c = 600, 24
    crit = et.EqualizedFocalLossModule(c)
    lib = efl.EqualizedFocalLoss(c)
    x, y = make_batch(rng, n, c)
    # float16: zero-copy storage, float16 gradient
    x16 = torch.from_numpy(x).half().requires_grad_(True)
    out = crit(x16, y, normalizer=num_pos(y))
    out.backward()
    l16, g16 = lib.step(x16.detach().numpy(), y, normalizer=num_pos(y))
    assert x16.grad.dtype == torch.float16 and float(out) == l16
    bits_equal("float16 adapter grad", x16.grad.numpy(), g16)
    # bfloat16 (np.uint16 bit patterns in the binding)
    xb = torch.from_numpy(x).bfloat16().requires_grad_(True)
    out = crit(xb, y, normalizer=num_pos(y))
    crit.set_loss_scale(2.0)  # the statistics of the gradient over 2: the library's step's
    (out * 2.0).backward()
    crit.set_loss_scale(1.0)
    lb, gb = lib.step(xb.detach().view(torch.int16).numpy().view(np.uint16), y, normalizer=num_pos(y),
                      dtype="bfloat16")
    assert xb.grad.dtype == torch.bfloat16 and float(out) == lb
    want = (torch.from_numpy(gb.view(np.int16)).view(torch.bfloat16).float() * 2.0).bfloat16()
    bits_equal("bfloat16 adapter grad", xb.grad.view(torch.int16).numpy(), want.view(torch.int16).numpy())
    module_state("half types state", crit.efl.read_state(), lib.read_state())
    # a non-contiguous tensor is made contiguous
    xt = torch.from_numpy(np.ascontiguousarray(x.T)).t().requires_grad_(True)
    assert not xt.is_contiguous()
    crit(xt, y).backward()
    _, g = lib.step(x, y)
    bits_equal("non-contiguous logits grad", xt.grad.numpy(), g)
    # per-level tensors through EFLLevelsFunction
    B, A, hw = 2, 3, [(4, 5), (2, 3), (1, 1)]
    X, Y = layout_batch(rng, B, A, c, hw)
    levels = [torch.from_numpy(a).requires_grad_(True) for a in to_levels(X, B, A, c, hw, "class")]
    out = crit(levels, torch.from_numpy(Y), normalizer=num_pos(Y), channel_order="class", anchors=A)
    crit.set_loss_scale(0.5)
    (out * 0.5).backward()
    crit.set_loss_scale(1.0)
    lv_l, lv_g = lib.step(levels=[t.detach().numpy() for t in levels], labels=Y, normalizer=num_pos(Y),
                          channel_order="class", anchors=A)
    assert float(out) == lv_l
    for i, (t, g) in enumerate(zip(levels, lv_g)):
        bits_equal("level %d adapter grad" % i, t.grad.numpy(), (torch.from_numpy(g) * 0.5).numpy())
    # reduction none per level: a tuple of element tensors
    levels = [torch.from_numpy(a).requires_grad_(True) for a in to_levels(X, B, A, c, hw, "anchor")]
    elems = crit(levels, Y, reduction="none")
    assert isinstance(elems, tuple) and len(elems) == len(hw)
    Ws = [torch.rand(e.shape) for e in elems]
    grads = torch.autograd.grad(sum((e * w).sum() for e, w in zip(elems, Ws)), levels)
    lv_e, lv_g = lib.compute(levels=[t.detach().numpy() for t in levels], labels=Y, reduction="none")
    lib.accumulate(levels=[(w * torch.from_numpy(g)).numpy() for w, g in zip(Ws, lv_g)], labels=Y)
    for i in range(len(hw)):
        bits_equal("level %d elements" % i, elems[i].detach().numpy(), lv_e[i])
        bits_equal("level %d none grad" % i, grads[i].numpy(), (Ws[i] * torch.from_numpy(lv_g[i])).numpy())
    module_state("levels adapter state", crit.efl.read_state(), lib.read_state())


def test_module_state_dict_and_lazy_import():
    rng = np.random.default_rng(26)
    c = 20
    crit = et.EqualizedFocalLossModule(c)
    for _ in range(2):
        x, y = make_batch(rng, 300, c)
        crit(torch.from_numpy(x).requires_grad_(True), y).backward()
    sd = crit.state_dict()
    assert list(sd) == list(NAMES) and all(v.dtype == torch.float64 and v.shape == (c,) for v in sd.values())

    class RefModule(torch.nn.Module):  # the reference's registered float32 buffers
        def __init__(self):
            super().__init__()
            self.register_buffer("pos_grad", torch.zeros(c))
            self.register_buffer("neg_grad", torch.zeros(c))
            self.register_buffer("pos_neg", torch.ones(c))

    class Head(torch.nn.Module):
        def __init__(self, loss):
            super().__init__()
            self.conv = torch.nn.Linear(2, 2)
            self.loss_cls = loss

    refm = Head(RefModule())
    refm.load_state_dict(Head(crit).state_dict())  # ours into the reference's float32 buffers
    assert torch.equal(refm.loss_cls.pos_neg, sd["pos_neg"].float())
    other = et.EqualizedFocalLossModule(c)
    head = Head(other)
    res = head.load_state_dict(refm.state_dict())  # the reference's float32 buffers into ours
    assert not res.missing_keys and not res.unexpected_keys, res
    for k in NAMES:
        assert np.array_equal(other.efl.state_dict()[k], sd[k].float().double().numpy()), k
    partial = {k: v for k, v in refm.state_dict().items() if not k.endswith("pos_neg")}
    fresh = et.EqualizedFocalLossModule(c)
    try:
        Head(fresh).load_state_dict(partial)
    except RuntimeError as e:
        assert "loss_cls.pos_neg" in str(e) and "Missing" in str(e), e
    else:
        raise AssertionError("a state without pos_neg was loaded (strict)")
    Head(fresh).load_state_dict(partial, strict=False)  # all three or nothing
    assert np.all(fresh.efl.pos_neg == 1.0) and np.all(fresh.efl.pos_grad == 0.0)
    try:
        Head(et.EqualizedFocalLossModule(c + 1)).load_state_dict(refm.state_dict())
    except RuntimeError as e:
        assert "efl state" in str(e), e
    else:
        raise AssertionError("a state of another C was loaded")
    assert et.EqualizedFocalLossModule(c, mode="focal").state_dict() == {}
    # import efl alone loads no torch
    code = "import sys, efl; efl.warmup(); efl.EqualizedFocalLoss(3).state_dict(); assert 'torch' not in sys.modules"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, "import efl pulled in torch or failed: %s" % (r.stderr[-2000:],)


# ------------------------------------------------------------------ (d) layouts
def layout_batch(rng, B, A, c, hw):
    rows = B * sum(h * w * A for h, w in hw)
    return make_batch(rng, rows, c)


def to_levels(X, B, A, C, hw, order):
    """Rows in the reference's concatenation -> one [B, A*C, H, W] array per level."""
    R = sum(h * w * A for h, w in hw)
    Xi = X.reshape(B, R, C)
    out, off = [], 0
    for h, w in hw:
        blk = Xi[:, off:off + h * w * A, :].reshape(B, h, w, A, C)
        perm = (0, 3, 4, 1, 2) if order == "anchor" else (0, 4, 3, 1, 2)  # channel a*C + c, or c*A + a
        out.append(np.ascontiguousarray(blk.transpose(perm).reshape(B, A * C, h, w)))
        off += h * w * A
    return out


def from_levels(levels, B, A, C, order):
    parts = []
    for lev in levels:
        _, _, h, w = lev.shape
        if order == "anchor":
            blk = lev.reshape(B, A, C, h, w).transpose(0, 3, 4, 1, 2)
        else:
            blk = lev.reshape(B, C, A, h, w).transpose(0, 3, 4, 2, 1)
        parts.append(blk.reshape(B, h * w * A, C))
    return np.ascontiguousarray(np.concatenate(parts, axis=1).reshape(-1, C))


def test_layouts_equal_rows():
    rng = np.random.default_rng(27)
    B, A, c = 2, 3, 11
    hw = [(8, 10), (4, 5), (2, 3), (1, 2), (1, 1)]
    X, Y = layout_batch(rng, B, A, c, hw)
    assert np.array_equal(from_levels(to_levels(X, B, A, c, hw, "class"), B, A, c, "class"), X)
    assert np.array_equal(from_levels(to_levels(X, B, A, c, hw, "anchor"), B, A, c, "anchor"), X)
    rows = efl.EqualizedFocalLoss(c)
    per = {o: efl.EqualizedFocalLoss(c) for o in ("anchor", "class")}
    for k in range(3):
        X, Y = layout_batch(rng, B, A, c, hw)
        norm = num_pos(Y)
        state_before = {o: loss.read_state() for o, loss in per.items()}
        want_l, want_g = rows.step(X, Y, normalizer=norm)
        for order, loss in per.items():
            tag = "%s-major step %d" % (order, k)
            lv = to_levels(X, B, A, c, hw, order)
            anchors = A if order == "class" else None  # anchor-major: A inferred from the channels
            got_l, got_g = loss.step(levels=lv, labels=Y, normalizer=norm, channel_order=order, anchors=anchors)
            assert isinstance(got_g, list) and [g.shape for g in got_g] == [a.shape for a in lv]
            close_scalar(tag + " loss", got_l, want_l, 1e-6)
            bits_equal(tag + " grad (un-permuted)", from_levels(got_g, B, A, c, order), want_g)
            # the statistics: the same gradients summed in another order (float32 partial sums of
            # the unrounded gradient), so not bitwise; both within REPLAY_RTOL of float64
            check_state(tag, loss.read_state(), rows.read_state())
            replay = Replay(c)  # test_torch_parity's float64 replay, from the state before the step
            replay.pos, replay.neg, replay.g = state_before[order]
            replay.update(want_g, Y)
            for name, a, b in zip(NAMES, loss.read_state(), replay.state()):
                close_array("%s %s vs float64 replay" % (tag, name), a, b, REPLAY_RTOL, 1e-30)
            loss.load_state(*rows.read_state())  # the next step's gradients compare bitwise
            close_scalar(tag + " forward", loss.forward(levels=lv, labels=Y, reduction="sum", channel_order=order),
                         rows.forward(X, Y, reduction="sum"), 1e-6)
            elems = loss.forward(levels=lv, labels=Y, reduction="none", channel_order=order)
            bits_equal(tag + " elements", from_levels(elems, B, A, c, order), rows.forward(X, Y, reduction="none"))
    # accumulate from per-level gradients
    G = rng.normal(0.0, 1e-3, size=X.shape).astype(np.float32)
    for order, loss in per.items():
        loss.load_state(*rows.read_state())
    rows.accumulate(G, Y, grad_scale=4.0)
    for order, loss in per.items():
        loss.accumulate(levels=to_levels(G, B, A, c, hw, order), labels=Y, grad_scale=4.0, channel_order=order)
        check_state("%s-major accumulate" % order, loss.read_state(), rows.read_state())
    # float16 levels
    X16 = X.astype(np.float16)
    per["class"].load_state(*rows.read_state())  # both from the same state
    _, g_rows = rows.step(X16, Y)
    _, g_lv = per["class"].step(levels=to_levels(X16, B, A, c, hw, "class"), labels=Y, channel_order="class",
                                anchors=A)
    assert g_lv[0].dtype == np.float16
    bits_equal("float16 class-major grad", from_levels(g_lv, B, A, c, "class"), g_rows)
    # shapes that do not fit
    lv = to_levels(X, B, A, c, hw, "anchor")
    loss = per["anchor"]
    bad = [
        ("channels not a multiple of C", lambda: loss.step(levels=[lv[0][:, :-1]], labels=Y)),
        ("anchors disagree with channels", lambda: loss.step(levels=lv, labels=Y, anchors=A + 1)),
        ("images differ", lambda: loss.step(levels=[lv[0], lv[1][:1]], labels=Y)),
        ("labels too short", lambda: loss.step(levels=lv, labels=Y[:-1])),
        ("3-D level", lambda: loss.step(levels=[lv[0][0]], labels=Y)),
        ("nine levels", lambda: loss.step(levels=[lv[-1]] * 9, labels=np.zeros(9 * B * A, np.int32))),
        ("both logits and levels", lambda: loss.step(X, Y, levels=lv)),
        ("unknown channel order", lambda: loss.step(levels=lv, labels=Y, channel_order="height")),
    ]
    before = loss.read_state()
    for what, call in bad:
        expect_value_error(call, what)
    same_state("after rejected layouts", loss.read_state(), before)


# ------------------------------------------------------------------ (e) checkpoints
def test_checkpoint_round_trip():
    rng = np.random.default_rng(28)
    n, c = 700, 33
    batches = [make_batch(rng, n, c) for _ in range(5)]
    with tempfile.TemporaryDirectory() as d:
        for i, kwargs in enumerate(({}, {"accumulate": "float_pairs"}, {"mode": "eqlv2"})):
            path = os.path.join(d, "state-%d.ckpt" % i)
            a = efl.EqualizedFocalLoss(c, **kwargs)
            for x, y in batches[:2]:
                a.step(x, y, normalizer=num_pos(y))
            a.save_checkpoint(path)
            blob = a.export_checkpoint()
            assert isinstance(blob, bytes) and blob == open(path, "rb").read()
            cont = [a.step(x, y, normalizer=num_pos(y)) for x, y in batches[2:]]
            for how in ("file", "bytes"):
                b = efl.EqualizedFocalLoss(c, **kwargs)
                b.step(*batches[4])  # some other state first: loading replaces it
                if how == "file":
                    b.load_checkpoint(path)
                else:
                    b.import_checkpoint(blob)
                for k, ((x, y), (la, ga)) in enumerate(zip(batches[2:], cont)):
                    lb, gb = b.step(x, y, normalizer=num_pos(y))
                    tag = "%s resumed from %s, step %d" % (kwargs, how, k)
                    assert la == lb, (tag, la, lb)
                    bits_equal(tag + " grad", gb, ga)
                same_state("%s resumed from %s" % (kwargs, how), b.read_state(), a.read_state())
                b.close()
            a.close()
        # refusals leave the state as it was
        path = os.path.join(d, "state-0.ckpt")
        raw = open(path, "rb").read()
        trunc = os.path.join(d, "trunc.ckpt")
        with open(trunc, "wb") as f:
            f.write(raw[: len(raw) // 2])
        flipped = os.path.join(d, "flipped.ckpt")
        with open(flipped, "wb") as f:
            f.write(raw[:-9] + bytes([raw[-9] ^ 0x10]) + raw[-8:])
        loss = efl.EqualizedFocalLoss(c)
        loss.step(*batches[0])
        before = loss.read_state()
        for status, call, what in (
            (efl.Status.ERROR_CHECKPOINT_CORRUPT, lambda: loss.load_checkpoint(trunc), "truncated"),
            (efl.Status.ERROR_CHECKPOINT_CORRUPT, lambda: loss.load_checkpoint(flipped), "a flipped bit"),
            (efl.Status.ERROR_CHECKPOINT_CORRUPT, lambda: loss.import_checkpoint(b"not a checkpoint"), "garbage"),
            (efl.Status.ERROR_IO, lambda: loss.load_checkpoint(os.path.join(d, "missing.ckpt")), "missing file"),
            (efl.Status.ERROR_CHECKPOINT_MISMATCH,
             lambda: efl.EqualizedFocalLoss(c + 1).load_checkpoint(path), "another C"),
            (efl.Status.ERROR_CHECKPOINT_MISMATCH,
             lambda: efl.EqualizedFocalLoss(c, scale_factor=4.0).load_checkpoint(path), "another s"),
            (efl.Status.ERROR_CHECKPOINT_MISMATCH,
             lambda: loss.load_checkpoint(os.path.join(d, "state-2.ckpt")), "another mode"),
            (efl.Status.ERROR_INVALID_MODE,
             lambda: efl.FocalLoss(c).save_checkpoint(os.path.join(d, "focal.ckpt")), "focal save"),
        ):
            expect_error(status, call, what)
            same_state("after refused checkpoint (%s)" % what, loss.read_state(), before)


def test_state_dict_torch_float32():
    rng = np.random.default_rng(29)
    c = 45
    a = efl.EqualizedFocalLoss(c)
    for _ in range(3):
        a.step(*make_batch(rng, 500, c))
    sd = a.state_dict()
    assert list(sd) == list(NAMES) and all(v.dtype == np.float64 for v in sd.values())
    sdt = a.state_dict(as_torch=True)
    assert all(isinstance(v, torch.Tensor) and v.dtype == torch.float64 for v in sdt.values())
    # float32 tensors, as the reference's registered buffers hold them
    sd32 = {k: v.float() for k, v in sdt.items()}
    b = efl.EqualizedFocalLoss(c)
    b.load_state_dict(sd32)
    for k, got in zip(NAMES, b.read_state()):
        assert np.array_equal(got, sd32[k].double().numpy()), k
    # float64 tensors and numpy round trip (prefixed keys, as in a model's state_dict)
    b.load_state_dict({"head.loss." + k: v for k, v in sdt.items()}, prefix="head.loss.")
    same_state("float64 torch round trip", b.read_state(), a.read_state())
    b.load_state_dict(sd)
    same_state("numpy round trip", b.read_state(), a.read_state())
    x, y = make_batch(rng, 500, c)
    la, ga = a.step(x, y)
    lb, gb = b.step(x, y)
    assert la == lb
    bits_equal("after load_state_dict", gb, ga)
    # the loaded state is the one used: from the float32 state, the reference agrees
    ref = ReferenceEFL(c)
    b.load_state_dict(sd32)
    ref.load_state(*(v.double().numpy() for v in sd32.values()))
    x, y = make_batch(rng, 500, c)
    lb, gb = b.step(x, y, normalizer=num_pos(y))
    lr, gr = ref.step(x, y, normalizer=num_pos(y))
    close_scalar("after float32 state: loss", lb, lr, LOSS_RTOL)
    check_grad("after float32 state: grad", gb, gr)
    for bad, what in (({"pos_grad": sd["pos_grad"], "neg_grad": sd["neg_grad"]}, "a missing key"),
                      ({**sd, "pos_neg": torch.zeros(c + 1)}, "a wrong length")):
        try:
            b.load_state_dict(bad)
        except (KeyError, ValueError):
            pass
        else:
            raise AssertionError("load_state_dict with %s accepted" % what)
    expect_error(efl.Status.ERROR_INVALID_STATE,
                 lambda: b.load_state_dict({**sd, "neg_grad": -torch.ones(c)}), "negative neg_grad")


TESTS = [
    test_eqlv2_parity,
    test_focal_parity,
    test_adapter_grad_matches_library_and_reference,
    test_adapter_reduction_none,
    test_adapter_half_types_and_levels,
    test_module_state_dict_and_lazy_import,
    test_layouts_equal_rows,
    test_checkpoint_round_trip,
    test_state_dict_torch_float32,
]


def main(argv):
    return run_tests(TESTS, argv, banner=", torch %s" % torch.__version__)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
