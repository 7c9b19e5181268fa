#!/usr/bin/python3
"""The overflow contract through the binding (efl.h EFL_ERROR_OVERFLOW and the invariant).

After every call that returns, the loss, the gradient in its storage type and the state
(pos_grad, neg_grad, pos_neg) are finite, and pos_neg lies in [0, 1] in EFL mode. A call that
cannot keep that raises efl.EflError with a specific status (ERROR_OVERFLOW for a result beyond
its type) and changes nothing: the state stays bit for bit, caller-supplied output arrays keep
their contents, and a step the device refused is counted in skipped_steps.

Expectations come from a float64 numpy reference written here (the forward, backward,
statistics and update), never from the library: each result is compared with its type's limit
(float32 for the loss total and the statistics, the storage type for the gradient and the
per-element loss, float64 or float pairs - max FLT_MAX - for the state totals). Beyond it by more
than 1e-4 relative: must raise ERROR_OVERFLOW; below it by as much: must return and equal the
reference; in between, either. The contract leaves a choice, and both are allowed, for an
intermediate beyond float32 whose final result fits (the unscaled total or element before a tiny
loss_weight / normalizer; the total of reduction "none", which returns none) and for statistics
beyond float32 on a device with float64 totals.

Cases (numbered as the issue's):
  1 tiny normalizer         2 loss_weight near FLT_MAX       3 float16 / bfloat16 storage
  4 accumulate              5 data parallel                  6 state dicts and checkpoints
  7 extreme logits          8 reduction "none" refused       9 caller's gradient untouched
 10 empty batch             11 configurations
Exit: 0 all passed, 1 a test failed, 77 skipped (no OpenCL device, or numpy missing).
"""
import os
import struct
import sys

try:
    import numpy as np
except ImportError:  # pragma: no cover
    print("SKIP: numpy is required")
    sys.exit(77)

import efl  # noqa: E402
from _common import run_tests  # noqa: E402  (this folder is on sys.path: the script's own)

F32MAX = float(np.finfo(np.float32).max)
F32MIN = float(np.finfo(np.float32).tiny)
F16_LIMIT = 65520.0  # the smallest float32 magnitude float16 rounds to infinity
BF16_LIMIT = float(np.array([0x7F7F8000], dtype=np.uint32).view(np.float32)[0])
MARGIN = 1e-4
OK, EITHER, OVER = 0, 1, 2
S = efl.Status


# ------------------------------------------------------------------ storage
def bf16_bits(x):
    """float32 -> bfloat16 bit patterns, round to nearest even (integer arithmetic)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    b = x.view(np.uint32).astype(np.uint64)
    r = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    r[nan] = ((b[nan] >> 16) | 0x40).astype(np.uint16)
    return r


def bf16_value(bits):
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def encode(x, dtype):
    """(what the binding takes, the float32 values it holds)."""
    x = np.asarray(x, dtype=np.float32)
    if dtype == "float16":
        with np.errstate(over="ignore"):
            h = x.astype(np.float16)
        return h, h.astype(np.float32)
    if dtype == "bfloat16":
        b = bf16_bits(x)
        return b, bf16_value(b)
    return x.copy(), x.copy()


def decode(a, dtype):
    if dtype == "bfloat16":
        return bf16_value(a).astype(np.float64)
    return np.asarray(a).astype(np.float64)


def storage_limit(dtype):
    return {"float16": F16_LIMIT, "bfloat16": BF16_LIMIT}.get(dtype, F32MAX)


def storage_ulp(v, dtype):
    v = np.abs(np.asarray(v, dtype=np.float64))
    if dtype == "float32":
        return np.zeros_like(v)
    _, e = np.frexp(v)
    lo, bits = (-14, 10) if dtype == "float16" else (-126, 7)
    return np.ldexp(1.0, np.maximum(e - 1, lo) - bits)


# ------------------------------------------------------------- expectations
def lvl(values, limit):
    """The worst of |values| against a type's limit: OVER beyond it, OK below, EITHER near."""
    v = np.abs(np.asarray(values, dtype=np.float64)).ravel()
    if v.size == 0:
        return OK
    if not np.all(np.isfinite(v)):
        return OVER
    r = v / limit
    return OVER if r.max() > 1 + MARGIN else EITHER if r.max() >= 1 - MARGIN else OK


def soft(level):
    return EITHER if level == OVER else level


def sigmoid(z):
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def log_sigmoid(z):
    return -np.logaddexp(0.0, -z)


class Ref:
    """The float64 reference of one loss: parameters as the library stores them (float32) and a
    state advanced on every accepted update."""

    def __init__(self, loss, pairs):
        cfg = loss.config()
        self.mode = loss.mode
        self.C = loss.num_classes
        self.gamma, self.alpha, self.s = cfg["gamma"], cfg["alpha"], cfg["scale_factor"]
        self.lw, self.ignore = cfg["loss_weight"], cfg["ignore_index"]
        self.mu = cfg.get("mu", 0.8)
        self.pairs = pairs
        self.total_limit = F32MAX if pairs else sys.float_info.max
        self.pos = np.zeros(self.C)
        self.neg = np.zeros(self.C)
        self.g = np.full(self.C, 100.0 if self.mode == "eqlv2" else 1.0)

    def sync(self, loss):
        if self.mode != "focal":
            self.pos, self.neg, self.g = loss.read_state()

    def rows(self, y):
        y = np.asarray(y, dtype=np.int64)
        valid = (y != self.ignore) & (y >= 0) & (y <= self.C)
        invalid = (y != self.ignore) & ~valid
        T = np.zeros((y.size, self.C), dtype=bool)
        pos = np.nonzero(valid & (y >= 1))[0]
        T[pos, y[pos] - 1] = True
        return valid, invalid, T

    def forward_backward(self, x, y, normalizer, reduction):
        """(total, grad, elems, P, N) in float64 for float32 values x."""
        with np.errstate(all="ignore"):  # ignored rows may hold NaN; they are masked below
            return self._forward_backward(x, y, normalizer, reduction)

    def _forward_backward(self, x, y, normalizer, reduction):
        x = np.asarray(x, dtype=np.float64)
        valid, _, T = self.rows(y)
        z = np.where(T, x, -x)
        log_pt, pt, q = log_sigmoid(z), sigmoid(z), sigmoid(-z)
        if self.mode == "eqlv2":
            neg_w = sigmoid(self.gamma * (self.g - self.mu))
            pos_w = 1.0 + self.alpha * (1.0 - neg_w)
            w = np.where(T, pos_w, neg_w)
            l = -w * log_pt
            dl = np.where(T, -w * q, w * q)
            stat = w * q
        else:
            if self.mode == "focal":
                gj, wj = np.full(self.C, self.gamma), np.ones(self.C)
            else:
                gj = self.gamma + self.s * (1.0 - self.g)
                wj = gj / self.gamma
            qg = np.exp(gj * log_sigmoid(-z))
            at = 1.0 if self.alpha < 0 else np.where(T, self.alpha, 1.0 - self.alpha)
            with np.errstate(invalid="ignore"):
                pl = np.where(pt == 0.0, 0.0, pt * log_pt)  # 0 * log 0 = 0
            l = -at * wj * qg * log_pt
            dl = -at * wj * np.where(T, 1.0, -1.0) * qg * (q - gj * pl)
            stat = None
        scale = self.lw / normalizer if reduction == "mean" else self.lw
        vm = valid[:, None]
        l = np.where(vm, l, 0.0)
        dl = np.where(vm, dl, 0.0)
        grad = dl * scale
        if stat is None:
            stat = np.abs(grad)
        stat = np.where(vm, stat, 0.0)
        P = (stat * T).sum(0)
        N = (stat * (~T & vm)).sum(0)
        return l.sum() * scale, grad, self.lw * l, P, N, scale

    def updated(self, P, N):
        if self.mode == "focal":
            return self.pos, self.neg, self.g
        with np.errstate(over="ignore", invalid="ignore"):
            pos, neg = self.pos + P, self.neg + N
            g = pos / (neg + 1e-10)
        if self.mode == "efl":
            g = np.clip(g, 0.0, 1.0)
        return pos, neg, g


def has_fp64_totals():
    """Whether an "auto" loss keeps float64 totals: they take a value beyond float."""
    probe = efl.EqualizedFocalLoss(1)
    try:
        probe.load_state([1e39], [1e39], [1.0])
        return True
    except efl.EflError as e:
        assert e.status == S.ERROR_INVALID_STATE, e
        return False
    finally:
        probe.close()


FP64 = None


def make(C=7, pairs=False, cls=efl.EqualizedFocalLoss, **kw):
    if pairs:
        kw["accumulate"] = "float_pairs"
    loss = cls(C, **kw)
    return loss, Ref(loss, pairs or not FP64)


def status_of(call):
    try:
        return S.OK, call()
    except efl.EflError as e:
        return e.status, None


def state_of(loss):
    return loss.read_state() if loss.mode != "focal" else (np.zeros(0),) * 3


def same_bits(a, b):
    return all(np.array_equal(np.asarray(p).view(np.uint64), np.asarray(q).view(np.uint64)) for p, q in zip(a, b))


def check_invariant(loss, tag):
    if loss.mode == "focal":
        return
    pos, neg, g = loss.read_state()
    ok = np.all(np.isfinite(pos)) and np.all(np.isfinite(neg)) and np.all(np.isfinite(g))
    ok = ok and np.all(pos >= 0) and np.all(neg >= 0) and np.all(g >= 0)
    if loss.mode == "efl":
        ok = ok and np.all(g <= 1.0)
    assert ok, "%s: invariant broken: pos %s neg %s pos_neg %s" % (tag, pos, neg, g)


def close(tag, got, ref, dtype="float32", rtol=1e-5):
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert np.all(np.isfinite(got)), "%s: non-finite values returned" % tag
    atol = 1e-12 * (np.abs(ref).max() if ref.size else 0.0) + 1e-30
    tol = rtol * np.abs(ref) + storage_ulp(ref, dtype) + atol
    bad = np.abs(got - ref) > tol
    if np.any(bad):
        k = int(np.argmax(np.where(bad, np.abs(got - ref) / tol, 0)))
        raise AssertionError("%s: %d of %d out of tolerance; worst [%d]: got %.9g ref %.9g"
                             % (tag, int(bad.sum()), bad.size, k, got.ravel()[k], ref.ravel()[k]))


def state_close(tag, loss, want, rtol=2e-6):
    got = loss.read_state()
    for name, a, b in zip(("pos_grad", "neg_grad", "pos_neg"), got, want):
        close("%s %s" % (tag, name), a, b, rtol=rtol)


NOTES = []


# ------------------------------------------------------------------ one call
def attempt(loss, ref, op, x, y, normalizer=1.0, reduction="sum", dtype="float32", want=None, tag="",
            grad_out=False, elems_out=False, loose=False):
    """One step, forward or compute through the binding, checked against the reference.
    want: the status the case expects (must agree with the reference's verdict) or None."""
    name = "%s [%s %s %s]" % (tag, op, dtype, reduction)
    xs, xr = encode(x, dtype)
    y = np.asarray(y, dtype=np.int32)
    n, C = xr.shape
    valid, invalid, T = ref.rows(y)
    level, refuse, by_host = OVER, S.ERROR_OVERFLOW, False
    collects = op in ("step", "compute")
    nf = np.float32(normalizer)
    with np.errstate(over="ignore", divide="ignore"):
        scale32 = np.float32(ref.lw) / nf
    if reduction == "mean" and not (nf > 0 and np.isfinite(nf) and np.isfinite(scale32)):
        refuse, by_host = S.ERROR_INVALID_NORMALIZER, True
    elif invalid.any():
        refuse = S.ERROR_INVALID_LABEL
    elif not np.all(np.isfinite(xr[valid])):
        refuse = S.ERROR_NONFINITE
    else:
        total, grad, elems, P, N, scale = ref.forward_backward(xr, y, float(nf), reduction)
        lim = storage_limit(dtype)
        level = OK
        if reduction != "none":
            level = max(level, lvl(total, F32MAX))
            if scale != 0:
                level = max(level, soft(lvl(total / scale, F32MAX)))
        else:
            level = max(level, lvl(elems, lim))
            if ref.lw != 0:
                level = max(level, soft(lvl(elems / ref.lw, F32MAX)), soft(lvl(np.sum(elems / ref.lw), F32MAX)))
        if collects:
            level = max(level, lvl(grad, lim))
            if ref.mode != "focal":
                sl = max(lvl(P, F32MAX), lvl(N, F32MAX))
                level = max(level, sl if ref.pairs else soft(sl))
        nxt = ref.updated(P, N)
        if op == "step" and ref.mode != "focal":
            for a in nxt:
                level = max(level, lvl(a, ref.total_limit))
    if loose and level == OK and refuse == S.ERROR_OVERFLOW:
        level = EITHER
    if want is not None:
        agrees = level == OK if want == S.OK else (level == OVER and refuse == want)
        assert agrees, "%s: test design: reference says %s/%d, the case wants %d" % (name, level, refuse, want)

    before = state_of(loss)
    sk0 = loss.skipped_steps
    gbuf = ebuf = None
    if grad_out or elems_out:  # caller-supplied outputs, as the torch adapter passes them
        prep = loss._prepare(xs, y, dtype, None, None, "anchor")

        def sentinel_like():
            return np.full(xs.nbytes, 0xA5, dtype=np.uint8).view(xs.dtype).reshape(xs.shape)

        gbuf = sentinel_like() if grad_out and collects else None
        ebuf = sentinel_like() if elems_out and reduction == "none" else None
        call = lambda: loss._run(op, prep, normalizer, reduction, grad_out=[gbuf] if gbuf is not None else None,
                                 elems_out=[ebuf] if ebuf is not None else None)
    else:
        fn = {"step": loss.step, "forward": loss.forward, "compute": loss.compute}[op]
        call = lambda: fn(xs, y, normalizer=normalizer, reduction=reduction, dtype=dtype)
    st, out = status_of(call)
    after = state_of(loss)
    sk1 = loss.skipped_steps
    if st == S.OK:
        assert level != OVER, "%s: returned, expected status %d" % (name, refuse)
        if grad_out or elems_out:
            value = out[0]
            g_got = gbuf if gbuf is not None else None
            e_got = ebuf if ebuf is not None else None
        else:
            if op == "forward":
                value, g_got, e_got = (None, None, out) if reduction == "none" else (out, None, None)
            else:
                value, g_got = out
                e_got = value if reduction == "none" else None
                value = None if reduction == "none" else value
        check_values = level == OK and not loose
        if value is not None:
            assert np.isfinite(value), "%s: non-finite loss %r" % (name, value)
            if check_values:
                close(name + " loss", [value], [total])
        if g_got is not None:
            assert np.all(np.isfinite(decode(g_got, dtype))), "%s: non-finite gradient" % name
            if check_values:
                close(name + " grad", decode(g_got, dtype), grad, dtype)
        if e_got is not None:
            assert np.all(np.isfinite(decode(e_got, dtype))), "%s: non-finite element loss" % name
            if check_values:
                close(name + " elems", decode(e_got, dtype), elems, dtype)
        if op == "step" and ref.mode != "focal":
            if check_values:
                state_close(name, loss, nxt)
            ref.sync(loss)
        else:
            assert same_bits(before, after), "%s: a call without an update changed the state" % name
        assert sk1 == sk0, "%s: returned but the skip count went %d -> %d" % (name, sk0, sk1)
    else:
        assert level != OK, "%s: raised status %d, expected a result" % (name, st)
        assert st == refuse, "%s: raised status %d, expected %d" % (name, st, refuse)
        assert same_bits(before, after), "%s: refused (status %d) but the state changed" % (name, st)
        if gbuf is not None:
            assert np.all(gbuf.view(np.uint8) == 0xA5), "%s: refused but the caller's gradient was written" % name
        if ebuf is not None:
            assert np.all(ebuf.view(np.uint8) == 0xA5), \
                "%s: refused but the caller's per-element loss was written" % name
        counted = 1 if op == "step" and not by_host else 0
        assert sk1 - sk0 == counted, "%s: refused: skip count %d -> %d, expected +%d" % (name, sk0, sk1, counted)
    check_invariant(loss, name)
    if level == EITHER and not loose:
        NOTES.append("%s: %s" % (name, "returned" if st == S.OK else "status %d" % st))
    return st


def acc_attempt(loss, ref, G, y, grad_scale, dtype="float32", want=None, tag=""):
    name = "%s [accumulate %s grad_scale %g]" % (tag, dtype, grad_scale)
    gs_, gr = encode(G, dtype)
    y = np.asarray(y, dtype=np.int32)
    valid, invalid, T = ref.rows(y)
    gs32 = np.float32(grad_scale)
    with np.errstate(over="ignore", divide="ignore"):
        inv = np.float32(1.0) / gs32
    level, refuse, by_host = OVER, S.ERROR_OVERFLOW, False
    if not (gs32 > 0 and np.isfinite(gs32) and np.isfinite(inv)):
        refuse, by_host = S.ERROR_INVALID_PARAMETER, True
    elif invalid.any():
        refuse = S.ERROR_INVALID_LABEL
    elif not np.all(np.isfinite(gr[valid])):
        refuse = S.ERROR_NONFINITE
    else:
        a = np.abs(gr.astype(np.float64)) / float(gs32) * valid[:, None]
        P, N = (a * T).sum(0), (a * ~T).sum(0)
        sl = max(lvl(P, F32MAX), lvl(N, F32MAX))
        level = sl if ref.pairs else soft(sl)
        nxt = ref.updated(P, N)
        for arr in nxt:
            level = max(level, lvl(arr, ref.total_limit))
    if want is not None:
        agrees = level == OK if want == S.OK else (level == OVER and refuse == want)
        assert agrees, "%s: test design: reference says %s/%d, the case wants %d" % (name, level, refuse, want)
    before, sk0 = loss.read_state(), loss.skipped_steps
    st, _ = status_of(lambda: loss.accumulate(gs_, y, grad_scale=grad_scale, dtype=dtype))
    after, sk1 = loss.read_state(), loss.skipped_steps
    if st == S.OK:
        assert level != OVER, "%s: returned, expected status %d" % (name, refuse)
        if level == OK:
            state_close(name, loss, nxt)
        ref.sync(loss)
    else:
        assert level != OK, "%s: raised status %d, expected a result" % (name, st)
        assert st == refuse, "%s: raised status %d, expected %d" % (name, st, refuse)
        assert same_bits(before, after), "%s: refused but the state changed" % name
        assert sk1 - sk0 == (0 if by_host else 1), "%s: skip count %d -> %d" % (name, sk0, sk1)
    check_invariant(loss, name)
    if level == EITHER:
        NOTES.append("%s: %s" % (name, "returned" if st == S.OK else "status %d" % st))
    return st


def apply_attempt(loss, ref, stats, want=None, tag=""):
    name = "%s [apply_statistics]" % tag
    stats = np.asarray(stats, dtype=np.float64)
    C = ref.C
    level, refuse = OK, S.ERROR_OVERFLOW
    if not np.all(np.isfinite(stats)) or np.any(stats < 0):
        level, refuse = OVER, S.ERROR_INVALID_STATE
    elif stats[-1] > 0:
        level, refuse = OVER, want
    else:
        if ref.pairs:
            level = lvl(stats[:2 * C], F32MAX)
        nxt = ref.updated(stats[:C], stats[C:2 * C])
        for arr in nxt:
            level = max(level, lvl(arr, ref.total_limit))
    if want is not None:
        agrees = level == OK if want == S.OK else (level == OVER and refuse == want)
        assert agrees, "%s: test design: reference says %s/%d, the case wants %d" % (name, level, refuse, want)
    before = loss.read_state()
    st, _ = status_of(lambda: loss.apply_statistics(stats))
    after = loss.read_state()
    if st == S.OK:
        assert level != OVER, "%s: returned, expected status %d" % (name, refuse)
        if level == OK:
            state_close(name, loss, nxt, rtol=1e-12)
        ref.sync(loss)
    else:
        assert level != OK, "%s: raised status %d, expected a result" % (name, st)
        assert st == refuse, "%s: raised status %d, expected %d" % (name, st, refuse)
        assert same_bits(before, after), "%s: refused but the state changed" % name
    check_invariant(loss, name)
    return st


def round_trip(loss, tag):
    """The checkpoint of a state reached by OK calls loads back into a fresh loss, bitwise."""
    if loss.mode == "focal":
        return
    data = loss.export_checkpoint()
    cfg = loss.config()
    fresh = efl.EqualizedFocalLoss(loss.num_classes, gamma=cfg["gamma"], alpha=cfg["alpha"],
                                   scale_factor=cfg["scale_factor"], loss_weight=cfg["loss_weight"],
                                   mode=loss.mode, mu=cfg.get("mu"), accumulate=loss.accumulate_mode)
    try:
        fresh.import_checkpoint(data)
    except efl.EflError as e:
        raise AssertionError("%s: the checkpoint of a state reached by OK calls does not load back: %s" % (tag, e))
    assert fresh.export_checkpoint() == data, "%s: checkpoint round trip not bitwise" % tag
    assert same_bits(fresh.read_state(), loss.read_state()), "%s: state differs after the round trip" % tag
    fresh.close()


def random_batch(seed, n, C, fg=0.2):
    rng = np.random.default_rng(seed)
    x = rng.normal(-4.0, 2.5, size=(n, C)).astype(np.float32)
    out = rng.random((n, C)) < 0.002
    x[out] = (rng.choice([-1.0, 1.0], out.sum()) * rng.uniform(15, 60, out.sum())).astype(np.float32)
    y = np.where(rng.random(n) < fg, rng.integers(1, C + 1, n), 0).astype(np.int32)
    y[rng.random(n) < 0.02] = -1
    return x, y, float(max(1, int((y > 0).sum())))


EXTREMES = np.array([1e30, -1e30, 1e38, -1e38, F32MAX, -F32MAX, 1e-40, -1e-40, 0.0, -0.0, F32MIN, -F32MIN,
                     88.8, -88.8, 1e4, -1e4], dtype=np.float32)


# ===================================================================== cases
def test_1_tiny_normalizer():
    for mode in ("efl", "eqlv2"):
        loss, ref = make(37, mode=mode)
        x = np.full((48, 37), -10.0, np.float32)
        y = np.zeros(48, np.int32)
        attempt(loss, ref, "step", x, y, F32MIN, "mean", want=S.OK, tag="tiny losses, FLT_MIN")
        for k, norm in enumerate((F32MIN, 1e-38, 1e-40)):
            want = S.ERROR_INVALID_NORMALIZER if norm == 1e-40 else S.ERROR_OVERFLOW
            x, y, npos = random_batch(10 + k, 48, 37)
            attempt(loss, ref, "step", x, y, norm, "mean", want=want, tag="normalizer %g" % norm)
            attempt(loss, ref, "forward", x, y, norm, "mean", want=want, tag="normalizer %g" % norm)
            x, y, npos = random_batch(20 + k, 48, 37)
            attempt(loss, ref, "step", x, y, npos, "mean", want=S.OK, tag="the next normal step")
        round_trip(loss, "case 1")


def test_2_big_loss_weight():
    for lw in (1e38, F32MAX):
        loss, ref = make(37, loss_weight=lw)
        x, y, _ = random_batch(30, 32, 37)
        attempt(loss, ref, "step", x, y, 1.0, "sum", want=S.ERROR_OVERFLOW, tag="lw %g random" % lw)
        attempt(loss, ref, "forward", x, y, 1.0, "mean", want=S.ERROR_OVERFLOW, tag="lw %g random" % lw)
        attempt(loss, ref, "step", np.full((32, 37), -10.0, np.float32), np.zeros(32, np.int32), 1.0, "sum",
                want=S.OK, tag="lw %g tiny losses" % lw)
        round_trip(loss, "case 2")
        x1, y1 = np.zeros((1, 1), np.float32), np.zeros(1, np.int32)
        loss, ref = make(1, loss_weight=lw)
        attempt(loss, ref, "step", x1, y1, 1.0, "sum", want=S.OK, tag="lw %g one element at 0" % lw)
        for pairs in (False, True):
            loss, ref = make(1, pairs=pairs, loss_weight=lw)
            loss.load_state([0.99 * F32MAX], [0.99 * F32MAX], [1.0])
            ref.sync(loss)
            attempt(loss, ref, "step", x1, y1, 1.0, "sum", want=S.ERROR_OVERFLOW if ref.pairs else S.OK,
                    tag="lw %g totals past FLT_MAX%s" % (lw, " (float pairs)" if pairs else ""))
            round_trip(loss, "case 2")


def test_3_storage():
    rng = np.random.default_rng(3)
    x = rng.normal(-4.0, 2.5, size=(16, 7)).astype(np.float32)
    y = np.zeros(16, np.int32)
    y[5:9] = [1, 2, 3, 4]
    x[0, 3] = 10.0  # a confident false positive: |grad| ~0.75 lw, element ~7.5 lw
    loss, ref = make(7, loss_weight=1e5)
    attempt(loss, ref, "step", x, y, 1.0, "sum", "float16", want=S.ERROR_OVERFLOW, tag="f16 lw 1e5")
    attempt(loss, ref, "step", x, y, 1.0, "none", "float16", want=S.ERROR_OVERFLOW, tag="f16 lw 1e5")
    attempt(loss, ref, "forward", x, y, 1.0, "none", "float16", want=S.ERROR_OVERFLOW, tag="f16 lw 1e5")
    unit, _ = make(7)
    uref = Ref(unit, True)
    _, g1, e1, _, _, _ = uref.forward_backward(encode(x, "float16")[1], y, 1.0, "sum")
    maxg, maxe = np.abs(g1).max(), np.abs(e1).max()
    for target, want in ((60000.0, S.OK), (65510.0, S.OK), (65530.0, S.ERROR_OVERFLOW)):
        loss, ref = make(7, loss_weight=target / maxg)
        attempt(loss, ref, "step", x, y, 1.0, "sum", "float16", want=want, tag="f16 largest gradient %g" % target)
    loss, ref = make(7, loss_weight=60000.0 / max(maxg, maxe))
    attempt(loss, ref, "forward", x, y, 1.0, "none", "float16", want=S.OK, tag="f16 largest element 60000")
    attempt(loss, ref, "step", x, y, 1.0, "none", "float16", want=S.OK, tag="f16 largest element 60000")
    round_trip(loss, "case 3")
    # bfloat16: w_j = 5 and lw 1e38: |grad| ~3.75e38
    loss, ref = make(7, loss_weight=1e38)
    loss.load_state(np.zeros(7), np.ones(7), np.zeros(7))
    ref.sync(loss)
    attempt(loss, ref, "step", x, y, 1.0, "sum", "bfloat16", want=S.ERROR_OVERFLOW, tag="bf16 lw 1e38 w 5")
    # between bfloat16's limit and FLT_MAX (one element x = 1, gamma_j 3, w_j 1.5, no alpha)
    xb, yb = np.ones((1, 1), np.float32), np.zeros(1, np.int32)
    probe, pref = make(1, alpha=-1.0)
    probe.load_state([0.875], [1.0], [0.875])
    pref.sync(probe)
    _, gb, _, _, _, _ = pref.forward_backward(xb, yb, 1.0, "sum")
    for target in (3.38e38, 3.40e38):
        for dtype in ("float32", "bfloat16"):
            loss, ref = make(1, alpha=-1.0, loss_weight=target / abs(gb[0, 0]))
            loss.load_state([0.875], [1.0], [0.875])
            ref.sync(loss)
            want = S.ERROR_OVERFLOW if target > 3.39e38 and dtype == "bfloat16" else S.OK
            attempt(loss, ref, "step", xb, yb, 1.0, "sum", dtype, want=want, tag="gradient %g" % target)
            round_trip(loss, "case 3")


def test_4_accumulate():
    C, n = 7, 16
    y = np.where(np.arange(n) < 8, 3, 0).astype(np.int32)
    for pairs in (False, True):
        loss, ref = make(C, pairs=pairs)
        tag = " (float pairs)" if pairs else ""
        G = np.zeros((n, C), np.float32)
        G[:8, 2] = 1e38
        acc_attempt(loss, ref, G, y, 1.0, want=S.ERROR_OVERFLOW if ref.pairs else None, tag="8 x 1e38" + tag)
        G = np.zeros((n, C), np.float32)
        G[9, 4] = 1e10
        acc_attempt(loss, ref, G, y, 1e-30, want=S.ERROR_OVERFLOW if ref.pairs else None, tag="1e10 / 1e-30" + tag)
        G[9, 4] = 1e38
        acc_attempt(loss, ref, G, y, F32MIN, want=S.ERROR_OVERFLOW if ref.pairs else None, tag="1e38 / FLT_MIN" + tag)
        G[9, 4] = 1.0
        acc_attempt(loss, ref, G, y, 1e-40, want=S.ERROR_INVALID_PARAMETER, tag="grad_scale 1e-40" + tag)
        G = (1e-30 * (1 + np.arange(n * C) % 5)).astype(np.float32).reshape(n, C)
        acc_attempt(loss, ref, G, y, F32MIN, want=S.OK, tag="1e-30 / FLT_MIN" + tag)
        G = np.zeros((n, C), np.float32)
        G[10, 1] = 65504.0
        acc_attempt(loss, ref, G, y, F32MIN, "float16", want=S.ERROR_OVERFLOW if ref.pairs else None,
                    tag="f16 65504 / FLT_MIN" + tag)
        loss.load_state(np.full(C, 3e38), np.full(C, 3e38), np.ones(C))
        ref.sync(loss)
        G = np.zeros((n, C), np.float32)
        G[0, 2] = 1e38
        G[9, 5] = 1e38
        acc_attempt(loss, ref, G, y, 1.0, want=S.ERROR_OVERFLOW if ref.pairs else S.OK, tag="totals 3e38 + 1e38" + tag)
        round_trip(loss, "case 4")
        loss, ref = make(C, pairs=pairs, cls=efl.EQLv2Loss)
        G = np.zeros((n, C), np.float32)
        G[0, 2] = 1e30
        acc_attempt(loss, ref, G, y, 1.0, want=S.ERROR_OVERFLOW if ref.pairs else S.OK, tag="EQLv2 g 1e40" + tag)
        round_trip(loss, "case 4")


def test_5_data_parallel():
    C = 7
    for pairs in (False, True):
        loss, ref = make(C, pairs=pairs)
        lim = ref.total_limit
        stats = np.zeros(2 * C + 1)
        stats[:C] = 0.25 * (np.arange(C) + 1)
        stats[C:2 * C] = 2.0 + np.arange(C)
        apply_attempt(loss, ref, stats, want=S.OK, tag="small sums")
        stats = np.zeros(2 * C + 1)
        stats[C + 3] = 1e39
        apply_attempt(loss, ref, stats, want=S.ERROR_OVERFLOW if ref.pairs else S.OK, tag="N = 1e39")
        loss.load_state(np.full(C, 0.9 * lim), np.full(C, 0.9 * lim), np.ones(C))
        ref.sync(loss)
        stats = np.zeros(2 * C + 1)
        stats[2] = 0.5 * lim
        apply_attempt(loss, ref, stats, want=S.ERROR_OVERFLOW, tag="pos 0.9 max + 0.5 max")
        round_trip(loss, "case 5")
        loss, ref = make(C, pairs=pairs, cls=efl.EQLv2Loss)
        stats = np.zeros(2 * C + 1)
        stats[1] = 1e30 if ref.pairs else 1e300
        apply_attempt(loss, ref, stats, want=S.ERROR_OVERFLOW, tag="EQLv2 g beyond the totals")
    # compute: a loss total beyond float, a NaN logit, statistics beyond float
    cases = []
    x, y, _ = random_batch(50, 32, 37)
    cases.append(("loss total beyond float", dict(C=37, loss_weight=1e38), None, x, y, S.ERROR_OVERFLOW))
    x2, y2 = x.copy(), y.copy()
    y2[4] = 0
    x2[4, 9] = np.nan
    cases.append(("NaN logit", dict(C=37), None, x2, y2, S.ERROR_NONFINITE))
    for pairs in (False, True):
        xb, yb = np.ones((64, 1), np.float32), np.zeros(64, np.int32)
        probe, pref = make(1, alpha=-1.0)
        probe.load_state([0.875], [1.0], [0.875])
        pref.sync(probe)
        _, gb, _, _, _, _ = pref.forward_backward(xb, yb, 1.0, "sum")
        lw = 1.2 * F32MAX / (64 * abs(gb[0, 0]))
        cases.append(("statistics beyond float" + (" (float pairs)" if pairs else ""),
                      dict(C=1, alpha=-1.0, loss_weight=lw, pairs=pairs), ([0.875], [1.0], [0.875]), xb, yb, "auto"))
    failures = []
    for tag, kw, state, x, y, want in cases:
        try:
            compute_case(tag, kw, state, x, y, want)
        except AssertionError as e:
            failures.append(str(e))
    assert not failures, "\n".join(failures)


def compute_case(tag, kw, state, x, y, want):
    """One rank's compute, read_statistics and apply_statistics (one rank: its own sums)."""
    loss, ref = make(**kw)
    if state is not None:
        loss.load_state(*state)
        ref.sync(loss)
    if want == "auto":
        want = S.ERROR_OVERFLOW if ref.pairs else None
    st = attempt(loss, ref, "compute", x, y, 1.0, "sum", want=want, tag=tag)
    stats = loss.read_statistics()
    assert stats[-1] == (0.0 if st == S.OK else 1.0), "%s: status %d, flag %g" % (tag, st, stats[-1])
    assert np.all(np.isfinite(stats)) and np.all(stats >= 0), \
        "%s: status %d, statistics not finite and >= 0: %s" % (tag, st, stats[:-1])
    if st == S.OK:
        _, _, _, P, N, _ = ref.forward_backward(x, y, 1.0, "sum")
        close(tag + " P", stats[:ref.C], P, rtol=2e-6)
        close(tag + " N", stats[ref.C:2 * ref.C], N, rtol=2e-6)
    apply_attempt(loss, ref, stats, want=None if st == S.OK else st, tag=tag)
    if st != S.OK:
        assert loss.skipped_steps == 1, "%s: skipped_steps %d after the refused apply" % (tag, loss.skipped_steps)


def patched_checkpoint(data, C, g):
    """The checkpoint bytes with pos_neg replaced and the FNV-1a checksum recomputed (format 1)."""
    b = bytearray(data)
    assert len(b) == 52 + 36 * C + 8, "checkpoint format is not version 1 as this test knows it"
    for j, v in enumerate(g):
        b[52 + 8 * (2 * C + j):52 + 8 * (2 * C + j) + 8] = struct.pack("<d", v)
        b[52 + 24 * C + 4 * (2 * C + j):52 + 24 * C + 4 * (2 * C + j) + 4] = b"\0\0\0\0"
    h = 0xCBF29CE484222325
    for c in bytes(b[:-8]):
        h = ((h ^ c) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    b[-8:] = struct.pack("<Q", h)
    return bytes(b)


def test_6_state_dicts_and_checkpoints():
    C = 7
    loss = efl.EqualizedFocalLoss(C)
    loss.load_state(np.full(C, 0.2), np.full(C, 2.0), np.full(C, 0.3))
    ok_dict = {"pos_grad": np.full(C, 0.1), "neg_grad": np.full(C, 3.0), "pos_neg": np.full(C, 0.5)}
    for bad in (1.0 + 2.0 ** -52, 1.5, 100.0, -1e-300, -1.0, np.float32(1.0000001)):
        for how in ("load_state_dict", "load_state_dict float32 torch-like", "import_checkpoint"):
            before = loss.read_state()
            g = np.full(C, 0.5)
            g[3] = bad
            if how == "import_checkpoint":
                st, _ = status_of(lambda: loss.import_checkpoint(patched_checkpoint(loss.export_checkpoint(), C, g)))
                wants = (S.ERROR_INVALID_STATE, S.ERROR_CHECKPOINT_CORRUPT)
            else:
                d = dict(ok_dict, pos_neg=g.astype(np.float32) if "float32" in how else g)
                if "float32" in how and np.float32(bad) <= 1.0 and np.float32(bad) >= 0.0:
                    continue  # float32 rounds it into range
                st, _ = status_of(lambda: loss.load_state_dict(d))
                wants = (S.ERROR_INVALID_STATE,)
            assert st in wants, "pos_neg %r via %s: status %d, expected %s" % (bad, how, st, wants)
            assert same_bits(before, loss.read_state()), "pos_neg %r via %s: refused but the state changed" % (bad, how)
            check_invariant(loss, how)
    for good in (0.0, 0.5, 1.0):
        loss.load_state_dict(dict(ok_dict, pos_neg=np.full(C, good)))
        assert np.array_equal(loss.pos_neg, np.full(C, good))
        loss.import_checkpoint(patched_checkpoint(loss.export_checkpoint(), C, np.full(C, good)))
        assert np.array_equal(loss.pos_neg, np.full(C, good))
    # EQLv2 takes any finite pos_neg >= 0; its state dict (pos_neg 100) is no EFL state
    eq = efl.EQLv2Loss(C)
    for good in (100.0, 1e6, 0.5, 0.0):
        eq.load_state_dict(dict(ok_dict, pos_neg=np.full(C, good)))
        assert np.array_equal(eq.pos_neg, np.full(C, good))
    eq.reset_state()
    before = loss.read_state()
    st, _ = status_of(lambda: loss.load_state_dict(eq.state_dict()))
    assert st == S.ERROR_INVALID_STATE, "an EQLv2 state dict (pos_neg 100) into EFL: status %d" % st
    assert same_bits(before, loss.read_state())
    eq.load_state_dict(dict(ok_dict, pos_neg=np.full(C, 100.0)))
    st, _ = status_of(lambda: loss.load_state_dict(eq.state_dict(as_torch=False)))
    assert st == S.ERROR_INVALID_STATE
    round_trip(loss, "case 6")
    round_trip(eq, "case 6 EQLv2")


def test_7_extreme_logits():
    C = 7
    rng = np.random.default_rng(7)
    x, y, _ = random_batch(70, 16, C)
    for i in range(16):
        e = EXTREMES[i]
        y[i] = i % C + 1
        x[i, i % C] = e
        x[i, (i + 1) % C] = -abs(e) if abs(e) >= 1e38 else e
    loss, ref = make(C)
    attempt(loss, ref, "step", x, y, 1.0, "sum", want=S.OK, tag="one of each")
    loss, ref = make(C)
    x, y, _ = random_batch(71, 16, C)
    y[0] = 0
    x[0, 3] = F32MAX
    x[1, 4] = -F32MAX
    attempt(loss, ref, "step", x, y, 1.0, "sum", want=S.OK, tag="one FLT_MAX false positive")
    loss, ref = make(C)
    x, y, _ = random_batch(72, 16, C)
    y[:4] = 0
    x[:4, 2] = F32MAX
    attempt(loss, ref, "step", x, y, 1.0, "sum", want=S.ERROR_OVERFLOW, tag="4 x FLT_MAX")
    attempt(loss, ref, "forward", x, y, 1.0, "mean", want=S.ERROR_OVERFLOW, tag="4 x FLT_MAX")
    attempt(loss, ref, "step", x, y, 1.0, "none", tag="4 x FLT_MAX")
    for k, bad in enumerate((np.nan, np.inf, -np.inf)):
        x, y, npos = random_batch(73 + k, 16, C)
        y[5] = 2
        x[5, 4] = bad
        attempt(loss, ref, "step", x, y, npos, "mean", want=S.ERROR_NONFINITE, tag="%r in a valid row" % bad)
    x, y, npos = random_batch(76, 16, C)
    y[5] = -1
    x[5, 4] = np.nan
    attempt(loss, ref, "step", x, y, npos, "mean", want=S.OK, tag="NaN in an ignored row")
    for r in range(6):
        x, y, npos = random_batch(80 + r, 16, C)
        m = rng.random(x.shape) < 0.15
        x[m] = rng.choice(EXTREMES, int(m.sum()))
        dtype = ("float32", "bfloat16", "float16")[r % 3]
        attempt(loss, ref, "step", x, y, npos, "mean" if r & 1 else "sum", dtype, tag="fuzz %d" % r)
    round_trip(loss, "case 7")


def test_8_none_refused_leaves_elements():
    C = 37
    loss, ref = make(C)
    x, y, _ = random_batch(90, 24, C)
    y[3] = 0
    x[3, 7] = np.nan
    for op in ("step", "forward"):
        attempt(loss, ref, op, x, y, 1.0, "none", want=S.ERROR_NONFINITE, tag="NaN", grad_out=True, elems_out=True)
    x, y, _ = random_batch(91, 24, C)
    y[7] = C + 5
    attempt(loss, ref, "step", x, y, 1.0, "none", want=S.ERROR_INVALID_LABEL, tag="invalid label", grad_out=True,
            elems_out=True)
    loss, ref = make(C, loss_weight=1e4)
    x, y, _ = random_batch(92, 24, C)
    y[0] = 0
    x[0, 5] = 10.0
    for op in ("step", "forward"):
        attempt(loss, ref, op, x, y, 1.0, "none", "float16", want=S.ERROR_OVERFLOW, tag="f16 element 7.5e4",
                grad_out=True, elems_out=True)


def test_9_refused_step_leaves_callers_gradient():
    C = 80
    for staging in ("", "1"):
        if staging:
            os.environ["EFL_HOST_STAGING"] = staging
        else:
            os.environ.pop("EFL_HOST_STAGING", None)
        try:
            loss, ref = make(C)
            for dtype in ("float32", "float16", "bfloat16"):
                x, y, npos = random_batch(100, 40, C)
                y[11] = 0
                x[11, 17] = np.nan
                attempt(loss, ref, "step", x, y, npos, "mean", dtype, want=S.ERROR_NONFINITE, tag="NaN (staging=%s)"
                        % staging, grad_out=True)
                x, y, npos = random_batch(101, 40, C)
                attempt(loss, ref, "step", x, y, F32MIN, "mean", dtype, want=S.ERROR_OVERFLOW,
                        tag="FLT_MIN (staging=%s)" % staging, grad_out=True)
                attempt(loss, ref, "step", x, y, 1.0, "sum", dtype, want=S.OK, tag="sum (staging=%s)" % staging,
                        grad_out=True)
        finally:
            os.environ.pop("EFL_HOST_STAGING", None)


def test_10_empty_batch():
    for cls in (efl.EqualizedFocalLoss, efl.EQLv2Loss):
        loss, ref = make(37, cls=cls)
        x0, y0 = np.zeros((0, 37), np.float32), np.zeros(0, np.int32)
        assert attempt(loss, ref, "forward", x0, y0, 1.0, "mean", want=S.OK, tag="forward n = 0") == S.OK
        value, grad = loss.step(x0, y0, normalizer=1.0)
        assert value == 0.0 and grad.shape == (0, 37), (value, grad.shape)
        pos, neg, g = loss.read_state()
        assert np.all(pos == 0) and np.all(neg == 0) and np.all(g == 0), \
            "%s: a step with n = 0 on a fresh loss leaves pos_neg %s (want 0)" % (cls.__name__, g[:3])
        loss.load_state(np.full(37, 0.5), np.full(37, 2.0), np.full(37, 0.9))
        ref.sync(loss)
        attempt(loss, ref, "step", x0, y0, 1.0, "sum", want=S.OK, tag="step n = 0 on a written state")
        # the data-parallel path gives the same state
        a, b = cls(37), cls(37)
        a.compute(x0, y0, normalizer=1.0)
        stats = a.read_statistics()
        assert np.all(stats == 0), stats
        a.apply_statistics(stats)
        b.step(x0, y0, normalizer=1.0)
        assert same_bits(a.read_state(), b.read_state()), "n = 0: data parallel differs from a single step"
        round_trip(loss, "case 10")


def test_11_configurations():
    for gamma, s in ((1e-38, 8.0), (3e38, 1e38), (F32MAX, F32MAX), (1e-45, 1.0), (1e-30, 1e10)):
        try:
            efl.EqualizedFocalLoss(7, gamma=gamma, scale_factor=s).close()
            raise AssertionError("gamma_b %g, s %g (w_j up to %g) was accepted" % (gamma, s, (gamma + s) / gamma))
        except efl.EflError as e:
            assert e.status in (S.ERROR_INVALID_PARAMETER, S.ERROR_INVALID_GAMMA), e
    configs = [
        dict(gamma=1e-30), dict(gamma=1e-37), dict(gamma=1e30, scale_factor=1e30), dict(alpha=1e30),
        dict(alpha=-1.0, scale_factor=0.0, loss_weight=-3.0), dict(gamma=50.0, scale_factor=1e4, loss_weight=1e30),
        dict(loss_weight=1e-38), dict(mode="focal", gamma=1e-30), dict(mode="focal", gamma=1e30, loss_weight=1e38),
        dict(mode="eqlv2", gamma=1e38, alpha=1e38, mu=-1e38), dict(mode="eqlv2", alpha=F32MAX, loss_weight=1e10),
        dict(mode="eqlv2", alpha=-1e30, mu=1e30),
    ]
    rng = np.random.default_rng(11)
    for k, kw in enumerate(configs):
        try:
            loss, ref = make(7, **kw)
        except efl.EflError as e:
            NOTES.append("config %r refused at creation: %s" % (kw, e))
            continue
        for step in range(4):
            x, y, npos = random_batch(110 + 10 * k + step, 24, 7)
            if step >= 2:
                m = rng.random(x.shape) < 0.1
                x[m] = rng.choice(EXTREMES, int(m.sum()))
            st = attempt(loss, ref, "step", x, y, npos, "sum" if step & 2 else "mean", loose=True,
                         tag="config %r step %d" % (kw, step))
            assert st in (S.OK, S.ERROR_OVERFLOW), "config %r: status %d on finite inputs" % (kw, st)
        round_trip(loss, "config %r" % kw)


TESTS = [test_1_tiny_normalizer, test_2_big_loss_weight, test_3_storage, test_4_accumulate, test_5_data_parallel,
         test_6_state_dicts_and_checkpoints, test_7_extreme_logits, test_8_none_refused_leaves_elements,
         test_9_refused_step_leaves_callers_gradient, test_10_empty_batch, test_11_configurations]


def main(argv):
    global FP64
    efl.warmup()
    FP64 = has_fp64_totals()
    rc = run_tests(TESTS, argv, banner=" (float64 totals: %s)" % ("yes" if FP64 else "no"))
    for note in NOTES:
        print("  note: " + note)
    return rc


if __name__ == "__main__":
    try:
        efl.warmup()
    except efl.EflError:
        sys.exit(run_tests(TESTS, sys.argv))  # reports SKIP (77) or the failure
    except OSError:
        sys.exit(run_tests(TESTS, sys.argv))
    sys.exit(main(sys.argv))
