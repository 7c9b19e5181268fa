#!/usr/bin/python3
"""efl.tinygrad on tinygrad's own OpenCL context (docs/tinygrad.md), against the numpy binding
and the float64 numpy reference of test_invariants.py (Ref).

Run by tests/python/tinygrad_venv.sh, which puts tinygrad (efl.tinygrad.REQUIREMENT) in a venv.
Checked:
- parity: loss, gradient and state of EFL, focal and EQLv2 over several steps equal the numpy
  binding's (on the default context) and the float64 reference's;
- zero copy, one context, one queue: efl's context is made on tinygrad's cl_context and
  cl_device_id; the call reads the logits' and labels' own cl_mem and writes the gradient into
  the buffer that becomes logits.grad; it enqueues on tinygrad's queue;
- per-level calls (one call per FPN level, one backward) equal one call on all the levels, and
  the binding's levels= step; a lazily computed head (a linear layer) gets its gradient through
  tinygrad's autograd, scaled by the incoming gradient, with the statistics scaled the same way;
- forward() and a call without backward leave the state alone; two backward passes are two updates;
- bad input: a specific error and nothing written; other devices: an error naming CL.
Exit: 0 passed, 1 failed, 77 skipped (no tinygrad, no OpenCL device).
"""
import os
import sys

import numpy as np

import efl

try:
    import efl.tinygrad as etg
    from tinygrad import Device, Tensor, dtypes
    Device["CL"]
except ImportError as exc:
    print("SKIP: %s" % exc)
    sys.exit(77)
except Exception as exc:  # tinygrad cannot open its CL device (no OpenCL platform)
    print("SKIP: tinygrad's CL device cannot be opened: %s" % exc)
    sys.exit(77)

# the binding's default context on the device tinygrad's CL opened (its name is an EFL_DEVICE
# selector: docs/devices.md), so that the two are compared on one device
os.environ["EFL_DEVICE"] = Device["CL"].device_name

from _common import run_tests  # noqa: E402  (this folder is on sys.path: the script's own)
from test_invariants import Ref  # noqa: E402  the float64 numpy reference

S = efl.Status
NAMES = ("pos_grad", "neg_grad", "pos_neg")


def batch(rng, n, c, fg=0.2):
    x = rng.normal(-3.0, 2.5, size=(n, c)).astype(np.float32)
    u = rng.random(n)
    y = np.zeros(n, dtype=np.int32)
    y[u < fg] = rng.integers(1, c + 1, size=int((u < fg).sum()))
    y[u > 0.97] = -1
    return x, y


def num_pos(y):
    return max(1.0, float(np.sum(y > 0)))


def cl(a, dtype=None):
    return Tensor(a, device="CL", dtype=dtype).realize()


def close(tag, got, want, rtol=1e-5):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    tol = rtol * np.abs(want) + 1e-7 * (np.abs(want).max() if want.size else 0.0) + 1e-30
    bad = ~(np.abs(got - want) <= tol)
    assert not bad.any(), "%s: %d of %d off; worst got %r want %r" % (
        tag, int(bad.sum()), bad.size, got.ravel()[np.argmax(np.abs(got - want) / tol)],
        want.ravel()[np.argmax(np.abs(got - want) / tol)])


def train(crit, x, y, norm, scale=1.0):
    xt = cl(x)
    out = crit(xt, cl(y), normalizer=norm)
    (out * scale if scale != 1.0 else out).backward()
    return out.item(), xt.grad.numpy(), xt, out


# ------------------------------------------------------------------ parity
def test_parity_three_modes():
    rng = np.random.default_rng(16)
    C, n = 11, 500
    for mode in ("efl", "focal", "eqlv2"):
        crit = etg.EqualizedFocalLoss(C, mode=mode)
        plain = efl.EqualizedFocalLoss(C, mode=mode)
        ref = Ref(plain, pairs=False)
        for k in range(4):
            x, y = batch(rng, n, C)
            norm = num_pos(y) if mode != "eqlv2" else float(n)
            v, g, _, _ = train(crit, x, y, norm)
            pv, pg = plain.step(x, y, normalizer=norm)
            tag = "%s step %d" % (mode, k)
            assert v == pv, "%s loss %r, binding %r" % (tag, v, pv)
            assert np.array_equal(g, pg), "%s gradient differs from the binding's (max %g)" % (tag, np.abs(g - pg).max())
            total, rgrad, _, P, N, _ = ref.forward_backward(x, y, norm, "mean")
            close(tag + " loss (float64)", v, total)
            close(tag + " gradient (float64)", g, rgrad)
            ref.pos, ref.neg, ref.g = ref.updated(P, N)
            if mode != "focal":
                for name, a, b, r in zip(NAMES, crit.read_state(), plain.read_state(), (ref.pos, ref.neg, ref.g)):
                    assert np.array_equal(a, b), "%s %s differs from the binding's" % (tag, name)
                    close("%s %s (float64)" % (tag, name), a, r)
        if mode == "efl":
            assert ref.g.min() < 0.9, "the state never moved: %s" % ref.g
        crit.close()


def test_float16_storage():
    rng = np.random.default_rng(5)
    C, n = 9, 300
    crit, plain = etg.EqualizedFocalLoss(C), efl.EqualizedFocalLoss(C)
    for k in range(2):
        x, y = batch(rng, n, C)
        x16 = x.astype(np.float16)
        xt = cl(x16, dtypes.float16)
        out = crit(xt, cl(y), normalizer=num_pos(y))
        out.backward()
        pv, pg = plain.step(x16, y, normalizer=num_pos(y))
        assert out.item() == pv and xt.grad.dtype == dtypes.float16
        assert np.array_equal(xt.grad.numpy(), pg)
        for a, b in zip(crit.read_state(), plain.read_state()):
            assert np.array_equal(a, b)


# --------------------------------------------------------------- zero copy
def test_zero_copy_one_context_one_queue():
    rng = np.random.default_rng(7)
    C, n = 13, 256
    ctx, dev, queue = etg.cl_handles("CL")
    crit = etg.EqualizedFocalLoss(C)
    other = etg.FocalLoss(C)
    ec = crit.efl._context
    assert isinstance(ec, efl.ExternalContext) and (ec.cl_context, ec.cl_device) == (ctx, dev), ec
    assert other.efl._context is ec, "a second loss on CL made a second efl context"
    x, y = batch(rng, n, C)
    xt, yt = cl(x), cl(y, dtypes.int32)
    x_mem, y_mem = etg.cl_mem(xt), etg.cl_mem(yt)
    out = crit(xt, yt, normalizer=num_pos(y))
    b = crit.last_buffers
    assert b["input"] == [x_mem], "efl read %s, the logits live in 0x%x" % (b["input"], x_mem)
    assert b["labels"] == y_mem, "efl read labels 0x%x, they live in 0x%x" % (b["labels"], y_mem)
    assert b["queue"] == queue
    out.backward()
    assert etg.cl_mem(xt.grad) == b["grad"][0], "logits.grad is not the buffer efl wrote"
    assert etg.cl_mem(xt) == x_mem and etg.cl_mem(yt) == y_mem  # the inputs were not replaced
    pv, pg = efl.EqualizedFocalLoss(C).step(x, y, normalizer=num_pos(y))
    assert out.item() == pv and np.array_equal(xt.grad.numpy(), pg)
    # int64 labels are cast on the device (a device buffer of tinygrad's, not the host)
    out = crit.forward(xt, cl(y.astype(np.int64), dtypes.int64), normalizer=num_pos(y))
    assert crit.last_buffers["input"] == [x_mem]


# --------------------------------------------------------------- levels
def level_rows(levels, A, C):
    """numpy: the rows [N, C] the reference concatenates from [B, A*C, H, W] levels (anchor-major)."""
    B = levels[0].shape[0]
    per = [lv.reshape(B, A, C, lv.shape[2] * lv.shape[3]).transpose(0, 3, 1, 2).reshape(B, -1, C) for lv in levels]
    return np.concatenate(per, axis=1).reshape(-1, C)


def test_levels_parts_equal_one_call():
    rng = np.random.default_rng(11)
    C, A, B = 6, 3, 2
    hw = [(8, 8), (4, 4), (2, 2)]
    parts, one = etg.EqualizedFocalLoss(C), etg.EqualizedFocalLoss(C)
    plain = efl.EqualizedFocalLoss(C)
    for k in range(3):
        levels = [rng.normal(-3, 2.5, size=(B, A * C, h, w)).astype(np.float32) for h, w in hw]
        rows = level_rows(levels, A, C)
        _, y = batch(rng, rows.shape[0], C)
        norm = num_pos(y)
        # one call on all levels
        ts = [cl(lv) for lv in levels]
        out = one(ts, cl(y), normalizer=norm, anchors=A)
        out.backward()
        pv, pg = plain.step(levels=levels, labels=y, anchors=A, normalizer=norm)
        assert out.item() == pv
        for i, t in enumerate(ts):
            assert np.array_equal(t.grad.numpy(), pg[i]), "step %d level %d" % (k, i)
        # one call per level (its own rows: image-major within the level), summed, one backward
        R = sum(h * w * A for h, w in hw)
        yb = y.reshape(B, R)
        off, total, ps = 0, None, [cl(lv) for lv in levels]
        for (h, w), t in zip(hw, ps):
            yl = np.ascontiguousarray(yb[:, off:off + h * w * A]).reshape(-1)
            off += h * w * A
            part = parts([t], cl(yl), normalizer=norm, anchors=A)
            total = part if total is None else total + part
        total.backward()
        close("step %d loss parts" % k, total.item(), pv, 1e-6)
        for i, t in enumerate(ps):
            assert np.array_equal(t.grad.numpy(), pg[i]), "step %d level %d (parts)" % (k, i)
        for name, a, b, c in zip(NAMES, parts.read_state(), one.read_state(), plain.read_state()):
            assert np.array_equal(b, c), "step %d %s: one call differs from the binding" % (k, name)
            close("step %d %s parts" % (k, name), a, b, 1e-12)


# ------------------------------------------------------------------ autograd
def test_lazy_head_and_scaled_backward():
    """A linear head computed lazily: the gradient reaches its weight; 0.5 * loss halves both the
    gradient and the statistics (as efl.torch's module)."""
    rng = np.random.default_rng(13)
    C, n, F = 8, 300, 5
    crit = etg.EqualizedFocalLoss(C)
    plain = efl.EqualizedFocalLoss(C)
    w_np = rng.normal(0, 0.5, size=(F, C)).astype(np.float32)
    for k in range(3):
        f = rng.normal(0, 1, size=(n, F)).astype(np.float32)
        _, y = batch(rng, n, C)
        norm = num_pos(y)
        W, X = cl(w_np), cl(f)
        logits = X @ W - 3.0  # lazy
        out = crit(logits, cl(y), normalizer=norm)
        (out * 0.5 + (W * W).sum() * 0.0).backward()
        got = W.grad.numpy()
        x_real = logits.numpy()  # the values efl read (tinygrad's own matmul rounding)
        pv, pg = plain.compute(x_real, y, normalizer=norm)
        stats = plain.read_statistics()
        stats[:-1] *= 0.5
        plain.apply_statistics(stats)
        close("step %d loss" % k, out.item(), pv, 1e-6)
        close("step %d weight gradient" % k, got, f.T.astype(np.float64) @ (0.5 * pg.astype(np.float64)), 1e-4)
        for name, a, b in zip(NAMES, crit.read_state(), plain.read_state()):
            close("step %d %s" % (k, name), a, b, 1e-12)


def test_forward_no_backward_and_two_passes():
    rng = np.random.default_rng(17)
    C, n = 7, 200
    crit = etg.EqualizedFocalLoss(C)
    plain = efl.EqualizedFocalLoss(C)
    x, y = batch(rng, n, C)
    norm = num_pos(y)
    train(crit, x, y, norm)
    plain.step(x, y, normalizer=norm)
    before = crit.read_state()
    v = crit.forward(cl(x), cl(y), normalizer=norm)
    assert v.item() == plain.forward(x, y, normalizer=norm)
    crit(cl(x), cl(y), normalizer=norm)  # never reaches a backward pass
    for a, b in zip(crit.read_state(), before):
        assert np.array_equal(a, b), "forward() or a call without backward changed the state"
    # two backward passes through one call: two updates
    xt = cl(x)
    out = crit(xt, cl(y), normalizer=norm)
    (g1,) = out.gradient(xt)
    (g2,) = out.gradient(xt)
    assert np.array_equal(g1.numpy(), g2.numpy())
    plain.compute(x, y, normalizer=norm)
    stats = plain.read_statistics()
    plain.apply_statistics(stats)
    plain.apply_statistics(stats)
    for name, a, b in zip(NAMES, crit.read_state(), plain.read_state()):
        close("two passes " + name, a, b, 1e-12)


# ------------------------------------------------------------------ errors
def expect(exc_type, fn, status=None, words=None):
    try:
        fn()
    except exc_type as e:
        if status is not None:
            assert e.status == status, "%s, want status %d" % (e, status)
        if words:
            assert words in str(e), "%r does not say %r" % (str(e), words)
        return e
    raise AssertionError("no %s raised" % exc_type.__name__)


def test_bad_input_changes_nothing():
    rng = np.random.default_rng(19)
    C, n = 7, 128
    crit = etg.EqualizedFocalLoss(C)
    x, y = batch(rng, n, C)
    train(crit, x, y, num_pos(y))
    before = crit.read_state()
    xt, yt = cl(x), cl(y)
    bad_y = y.copy()
    bad_y[3] = C + 5
    expect(efl.EflError, lambda: crit(xt, cl(bad_y)), S.ERROR_INVALID_LABEL)
    assert crit.skipped_steps == 1
    x_nan = x.copy()
    x_nan[5, 2] = np.nan
    y_valid = y.copy()
    y_valid[5] = 0
    expect(efl.EflError, lambda: crit(cl(x_nan), cl(y_valid)), S.ERROR_NONFINITE)
    expect(efl.EflError, lambda: crit(xt, yt, normalizer=0.0), S.ERROR_INVALID_NORMALIZER)
    expect(efl.EflError, lambda: crit(xt, yt, normalizer=cl(np.array([0.0], np.float32))).backward(),
           S.ERROR_INVALID_NORMALIZER)
    expect(ValueError, lambda: crit(xt[:, :5].contiguous(), yt), words="num_classes")
    expect(ValueError, lambda: crit(xt, yt[:10]), words="labels must have shape")
    expect(ValueError, lambda: crit(xt, cl(y.astype(np.float32))), words="integer")
    expect(ValueError, lambda: crit(xt, yt, reduction="none"), words="'mean' or 'sum'")
    expect(TypeError, lambda: crit(x, yt), words="tinygrad Tensor")
    for name, a, b in zip(NAMES, crit.read_state(), before):
        assert np.array_equal(a, b), "a refused call changed %s" % name
    # other devices: a clear error naming CL
    cpu = Tensor(x, device="CPU")
    expect(ValueError, lambda: crit(cpu, yt), words="'CL'")
    expect(ValueError, lambda: etg.EqualizedFocalLoss(C, device="CPU"), words="'CL'")
    # still works afterwards
    v, g, _, _ = train(crit, x, y, num_pos(y))
    assert np.isfinite(v) and np.isfinite(g).all()


def test_state_round_trip():
    rng = np.random.default_rng(23)
    C, n = 5, 100
    a, b = etg.EqualizedFocalLoss(C), etg.EqualizedFocalLoss(C)
    x, y = batch(rng, n, C)
    train(a, x, y, num_pos(y))
    b.load_state_dict(a.state_dict())
    for name, p, q in zip(NAMES, a.read_state(), b.read_state()):
        assert np.array_equal(p, q), name
    x, y = batch(rng, n, C)
    va, ga, _, _ = train(a, x, y, num_pos(y))
    vb, gb, _, _ = train(b, x, y, num_pos(y))
    assert va == vb and np.array_equal(ga, gb)
    bad = list(a.read_state())
    bad[2] = bad[2] + 2.0  # pos_neg above 1
    expect(efl.EflError, lambda: b.load_state(*bad), S.ERROR_INVALID_STATE)
    b.reset_state()
    assert np.array_equal(b.pos_neg, np.ones(C)) and not b.pos_grad.any()


TESTS = [test_parity_three_modes, test_float16_storage, test_zero_copy_one_context_one_queue,
         test_levels_parts_equal_one_call, test_lazy_head_and_scaled_backward,
         test_forward_no_backward_and_two_passes, test_bad_input_changes_nothing, test_state_round_trip]

if __name__ == "__main__":
    sys.exit(run_tests(TESTS, sys.argv, " (tinygrad %s, CL: %s)" % (
        etg.TINYGRAD_VERSION, getattr(Device["CL"], "device_name", "?"))))
