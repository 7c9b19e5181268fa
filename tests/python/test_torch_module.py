"""efl.torch.EqualizedFocalLossModule as a drop-in training module (docs/pytorch.md):

- the state lives in registered float64 buffers: deepcopy, pickle, torch.save(model) / torch.load
  and AveragedModel work, copies are independent, an EMA that copies buffers is followed;
- the reference's step semantics: per-level (partial) calls then one backward equal one call on
  all rows (loss, gradient, state to 1e-6); a forward without backward updates nothing;
- AMP: a told loss scale is divided out; an overflowing scaled gradient skips and counts;
- DDP (2 gloo ranks): states bitwise equal across ranks and equal to one process (1e-6); a refused
  rank skips the update on both ranks without hanging;
- mmdetection's call (labels 0..C-1, C background; weights; avg_factor) equals the seed's call;
- float64 logits; a clear error for tensors on another device.

Run:  EFL_LIBRARY=build/libefl.so PYTHONPATH=python /usr/bin/python3 tests/python/test_torch_module.py
"""

import copy
import io
import os
import pickle
import sys
import tempfile
import time
import warnings

try:
    import torch
    import torch.multiprocessing as tmp
except Exception as exc:  # noqa: BLE001 - any import failure means "no torch here"
    print("SKIP: torch cannot be imported (%s)" % (exc,))
    sys.exit(77)

import numpy as np

import efl
import efl.torch as et
from _common import run_tests  # this folder is on sys.path: the script's own

NAMES = ("pos_grad", "neg_grad", "pos_neg")
RTOL = 1e-6
torch.set_num_threads(1)


def batch(rng, n, c, invalid=False):
    """Logits and reference-convention labels (0 background, 1..C, -1 ignored)."""
    x = rng.normal(-3.0, 2.0, size=(n, c)).astype(np.float32)
    u = rng.random(n)
    y = np.zeros(n, dtype=np.int64)
    fg = u < 0.2
    y[fg] = rng.integers(1, c + 1, size=int(fg.sum()))
    y[u > 0.97] = -1
    if invalid:
        y[n // 2] = c + 7
    return x, y


def num_pos(y):
    return max(1.0, float(np.sum(y > 0)))


def state(m):
    return [b.detach().clone().numpy() for b in m._state_buffers()]


def close(tag, a, b, rtol=RTOL):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    atol = rtol * float(np.max(np.abs(b))) + 1e-30 if b.size else 0.0
    err = np.max(np.abs(a - b) - rtol * np.abs(b)) if b.size else 0.0
    assert err <= atol, "%s: max excess %.3g (atol %.3g)" % (tag, err, atol)


def same(tag, a, b):
    for name, x, y in zip(NAMES, a, b):
        assert np.array_equal(x, y), "%s: %s differs (max |diff| %.3g)" % (tag, name, np.max(np.abs(x - y)))


def train_step(m, x, y, norm=None, scale=1.0):
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    loss = m(xt, torch.from_numpy(y), normalizer=norm)
    (loss * scale).backward()
    return float(loss), xt.grad.clone()


class Head(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.fc = torch.nn.Linear(4, c)
        self.loss_cls = et.EqualizedFocalLossModule(c)


# ------------------------------------------------------------------ buffers, copies
def test_buffers_copies_pickle_save():
    rng = np.random.default_rng(1)
    c = 16
    model = Head(c)
    m = model.loss_cls
    assert [n for n, _ in model.named_buffers()] == ["loss_cls." + k for k in NAMES]
    assert all(b.dtype == torch.float64 and b.shape == (c,) for b in m.buffers())
    for _ in range(2):
        x, y = batch(rng, 200, c)
        train_step(m, x, y, num_pos(y))
    same("buffers vs native", state(m), m.efl.read_state())
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    copies = {"deepcopy": copy.deepcopy(model), "pickle": pickle.loads(pickle.dumps(model)),
              "torch.save": torch.load(buf)}
    x, y = batch(rng, 200, c)
    want_l, want_g = train_step(copy.deepcopy(m), x, y, num_pos(y))  # what a copy's next step gives
    before = state(m)
    for tag, cp in copies.items():
        same(tag + " state", state(cp.loss_cls), before)
        l, g = train_step(cp.loss_cls, x, y, num_pos(y))
        assert l == want_l and torch.equal(g, want_g), tag
        same(tag + " copy's native", state(cp.loss_cls), cp.loss_cls.efl.read_state())
        same(tag + ": the original is untouched", state(m), before)
        assert not np.array_equal(state(cp.loss_cls)[0], before[0]), tag + ": the copy did not update"
    # the original steps on its own and the copies stay where they were
    after = state(copies["pickle"].loss_cls)
    train_step(m, x, y, num_pos(y))
    same("original steps like its copies", state(m), after)
    x2, y2 = batch(rng, 200, c)
    train_step(m, x2, y2, num_pos(y2))
    same("copy independent of the original", state(copies["pickle"].loss_cls), after)
    # focal: no buffers, still copyable
    f = et.EqualizedFocalLossModule(c, mode="focal")
    assert list(f.buffers()) == [] and f.state_dict() == {}
    f2 = pickle.loads(pickle.dumps(copy.deepcopy(f)))
    train_step(f2, x, y)


def test_averaged_model_and_ema():
    rng = np.random.default_rng(2)
    c = 12
    model = Head(c)
    for _ in range(2):
        x, y = batch(rng, 150, c)
        train_step(model.loss_cls, x, y)
    avg = torch.optim.swa_utils.AveragedModel(model)
    avg.update_parameters(model)
    same("AveragedModel's copy", state(avg.module.loss_cls), state(model.loss_cls))
    x, y = batch(rng, 150, c)
    before = state(model.loss_cls)
    l_avg, _ = train_step(avg.module.loss_cls, x, y)
    same("the averaged copy is independent", state(model.loss_cls), before)
    avg_b = torch.optim.swa_utils.AveragedModel(model, use_buffers=True)
    train_step(model.loss_cls, x, y)
    avg_b.update_parameters(model)  # averages the buffers in place: the native cache follows
    fresh = et.EqualizedFocalLossModule(c)
    fresh.load_state_dict(avg_b.module.loss_cls.state_dict())
    same("averaged buffers reach the native object", avg_b.module.loss_cls.efl.read_state(),
         fresh.efl.read_state())
    # an EMA that copies buffers in place (as timm's ModelEmaV2 / mmdet's EMAHook)
    ema = copy.deepcopy(model)
    x, y = batch(rng, 150, c)
    train_step(model.loss_cls, x, y)
    with torch.no_grad():
        for e, b in zip(ema.buffers(), model.buffers()):
            e.copy_(b)
    same("EMA copy followed", ema.loss_cls.efl.read_state(), state(model.loss_cls))
    with torch.no_grad():
        a = ema.loss_cls(torch.from_numpy(x), torch.from_numpy(y))
        b = model.loss_cls(torch.from_numpy(x), torch.from_numpy(y))
    assert float(a) == float(b)


# ------------------------------------------------------------------ step semantics
def test_parts_equal_one_call():
    rng = np.random.default_rng(3)
    c, n = 30, 900
    parts_m = et.EqualizedFocalLossModule(c)
    one_m = et.EqualizedFocalLossModule(c)
    cuts = [0, 500, 750, 860, n]  # FPN-level-like sizes
    for step in range(4):
        x, y = batch(rng, n, c)
        norm = num_pos(y)
        xt = torch.from_numpy(x).requires_grad_(True)
        total = sum(parts_m(xt[a:b], torch.from_numpy(y[a:b]), normalizer=norm) for a, b in zip(cuts, cuts[1:]))
        total.backward()
        # the state is updated once, after the backward pass
        l1, g1 = train_step(one_m, x, y, norm)
        tag = "step %d" % step
        close(tag + " loss", float(total), l1)
        close(tag + " grad", xt.grad.numpy(), g1.numpy())
        for name, a, b in zip(NAMES, state(parts_m), state(one_m)):
            close("%s %s" % (tag, name), a, b)
    # the same through reduction="none" with the sum taken by the caller (uniform grad_output)
    m2 = et.EqualizedFocalLossModule(c)
    m3 = et.EqualizedFocalLossModule(c)
    x, y = batch(rng, n, c)
    xt = torch.from_numpy(x).requires_grad_(True)
    (m2(xt[:400], y[:400], reduction="none").sum() + m2(xt[400:], y[400:], reduction="none").sum()).backward()
    train_step(m3, x, y)
    for name, a, b in zip(NAMES, state(m2), state(m3)):
        close("none parts " + name, a, b)


def test_forward_without_backward_does_not_update():
    rng = np.random.default_rng(4)
    c = 20
    m = et.EqualizedFocalLossModule(c)
    ref = et.EqualizedFocalLossModule(c)
    x, y = batch(rng, 300, c)
    train_step(m, x, y)
    train_step(ref, x, y)
    before = state(m)
    x2, y2 = batch(rng, 300, c)
    thrown = m(torch.from_numpy(x2).requires_grad_(True), y2)  # the loss is thrown away
    del thrown
    same("forward without backward", state(m), before)
    # the next real step is the same as without the thrown-away forward
    x3, y3 = batch(rng, 300, c)
    la, ga = train_step(m, x3, y3)
    lb, gb = train_step(ref, x3, y3)
    assert la == lb and torch.equal(ga, gb)
    same("after a thrown-away forward", state(m), state(ref))


def test_amp_loss_scale_and_overflow():
    rng = np.random.default_rng(5)
    c = 20
    m = et.EqualizedFocalLossModule(c)
    ref = et.EqualizedFocalLossModule(c)
    m.set_loss_scale(1024.0)
    for _ in range(2):
        x, y = batch(rng, 300, c)
        _, g = train_step(m, x, y, num_pos(y), scale=1024.0)
        _, gr = train_step(ref, x, y, num_pos(y))
        assert torch.equal(g, gr * 1024.0)
    same("scale divided out", state(m), state(ref))

    class Scaler:  # a GradScaler-like object, read at backward
        scale = 2.0 ** 30

        def get_scale(self):
            return self.scale

    h = et.EqualizedFocalLossModule(c)
    h.load_state_dict(ref.state_dict())
    sc = Scaler()
    h.set_loss_scale(sc)
    before = state(h)
    x, y = batch(rng, 300, c)
    x16 = torch.from_numpy(x).half().requires_grad_(True)
    (h(x16, y) * sc.scale).backward()  # float16 gradient * 2^30 overflows
    assert not bool(torch.isfinite(x16.grad).all())
    same("overflowing step updates nothing", state(h), before)
    assert h.skipped_steps == 1, h.skipped_steps
    sc.scale = 8.0  # the scaler backs off; the next step updates
    x16 = torch.from_numpy(x).half().requires_grad_(True)
    (h(x16, y) * sc.scale).backward()
    assert h.skipped_steps == 1 and not np.array_equal(state(h)[0], before[0])


# ------------------------------------------------------------------ DDP
DDP_C, DDP_N, DDP_STEPS = 24, 400, 3


def _ddp_batches():
    rng = np.random.default_rng(6)
    return [batch(rng, DDP_N, DDP_C, invalid=False) for _ in range(DDP_STEPS)]


def _ddp_worker(rank, tmpdir, world):
    import torch.distributed as dist

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="file://" + os.path.join(tmpdir, "init"), rank=rank,
                            world_size=world)
    m = et.EqualizedFocalLossModule(DDP_C)
    part = slice(rank * DDP_N // world, (rank + 1) * DDP_N // world)
    out = {}
    for k, (x, y) in enumerate(_ddp_batches()):
        loss, grad = train_step(m, x[part], y[part], num_pos(y))
        out["grad%d" % k] = grad.numpy()
    for name, v in zip(NAMES, state(m)):
        out[name] = v
    # a refused batch on rank 1: every rank skips, none hangs
    x, y = batch(np.random.default_rng(7), DDP_N // world, DDP_C, invalid=(rank == 1))
    train_step(m, x, y)
    for name, v in zip(NAMES, state(m)):
        out["refused_" + name] = v
    out["skipped"] = np.array([m.skipped_steps])
    dist.barrier()
    np.savez(os.path.join(tmpdir, "rank%d.npz" % rank), **out)
    dist.destroy_process_group()


def _ddp_ranks(world):
    with tempfile.TemporaryDirectory(prefix="efl-ddp-") as d:
        ctx = tmp.spawn(_ddp_worker, args=(d, world), nprocs=world, join=False)
        deadline = time.monotonic() + 120
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    if p.is_alive():
                        p.kill()
                raise AssertionError("DDP ranks did not finish in 120 s (a hang)")
        r = [dict(np.load(os.path.join(d, "rank%d.npz" % i))) for i in range(world)]
    one = et.EqualizedFocalLossModule(DDP_C)
    for k, (x, y) in enumerate(_ddp_batches()):
        _, g = train_step(one, x, y, num_pos(y))
        close("%d ranks' grads vs one process, step %d" % (world, k),
              np.concatenate([ri["grad%d" % k] for ri in r]), g.numpy())
    for name, want in zip(NAMES, state(one)):
        for i, ri in enumerate(r):
            assert np.array_equal(r[0][name], ri[name]), "rank %d differs from rank 0 in %s" % (i, name)
            assert np.array_equal(ri["refused_" + name], ri[name]), "rank %d updated on a refused step" % i
            assert int(ri["skipped"][0]) == 1, (i, ri["skipped"])
        close("%d ranks vs one process %s" % (world, name), r[0][name], want)


def test_ddp_two_ranks():
    _ddp_ranks(2)


def test_ddp_four_ranks():
    _ddp_ranks(4)


# ------------------------------------------------------------------ mmdetection's call
def test_mmdet_call_equals_seed_call():
    rng = np.random.default_rng(8)
    c, n = 15, 400
    mm = et.EqualizedFocalLossModule(c, ignore_index=-1)
    seed = et.EqualizedFocalLossModule(c)
    for step in range(2):
        x, y = batch(rng, n, c)
        # mmdetection's labels: 0..C-1 classes, C background; ignored rows by weight 0
        lab = np.where(y > 0, y - 1, c)
        w = (y != -1).astype(np.float32)
        lab[y == -1] = rng.integers(0, c + 1, size=int(np.sum(y == -1)))  # any label under weight 0
        xa = torch.from_numpy(x).requires_grad_(True)
        la = mm(xa, torch.from_numpy(lab), torch.from_numpy(w), avg_factor=num_pos(y))
        la.backward()
        lb, gb = train_step(seed, x, y, num_pos(y))
        assert float(la) == lb and torch.equal(xa.grad, gb), step
        same("mmdet state %d" % step, state(mm), state(seed))
    # general weights scale loss and gradient elementwise (the statistics follow the gradient)
    x, y = batch(rng, n, c)
    lab = np.where(y > 0, y - 1, c)
    lab[y == -1] = c
    W = rng.uniform(0.5, 2.0, size=(n, c)).astype(np.float32)
    xa = torch.from_numpy(x).requires_grad_(True)
    mm(xa, torch.from_numpy(lab), weight=torch.from_numpy(W), avg_factor=10.0).backward()
    seed_y = np.where(y == -1, 0, y)
    xb = torch.from_numpy(x).requires_grad_(True)
    (seed(xb, seed_y, reduction="none") * torch.from_numpy(W)).sum().div(10.0).backward()
    close("weighted grad", xa.grad.numpy(), xb.grad.numpy())
    for name, a, b in zip(NAMES, state(mm), state(seed)):
        close("weighted state " + name, a, b)
    # reduction_override and avg_factor None (the mean over the elements, as mmdetection)
    with torch.no_grad():
        e = mm(torch.from_numpy(x), torch.from_numpy(lab), reduction_override="none")
        # call_style="mmdet" reads every call as mmdetection's (as registered for mmdetection)
        as_mmdet = copy.deepcopy(mm)
        as_mmdet.call_style = "mmdet"
        m = as_mmdet(torch.from_numpy(x), torch.from_numpy(lab), None)
    assert e.shape == (n, c)
    close("mean over elements", float(m), float(e.double().sum()) / (n * c), 1e-5)


# ------------------------------------------------------------------ types and devices
def test_float64_and_other_devices():
    rng = np.random.default_rng(9)
    c = 10
    m = et.EqualizedFocalLossModule(c)
    ref = et.EqualizedFocalLossModule(c)
    x, y = batch(rng, 200, c)
    x64 = torch.from_numpy(x).double().requires_grad_(True)
    l64 = m(x64, y, normalizer=num_pos(y))
    l64.backward()
    l32, g32 = train_step(ref, x, y, num_pos(y))
    assert l64.dtype == torch.float64 and x64.grad.dtype == torch.float64
    assert float(l64) == l32 and np.array_equal(x64.grad.numpy(), g32.double().numpy())
    same("float64 state", state(m), state(ref))
    try:
        m(torch.empty(4, c, device="meta"), torch.zeros(4, dtype=torch.long))
    except ValueError as e:
        assert "C API" in str(e) and ".cpu()" in str(e), e
    else:
        raise AssertionError("a tensor on another device was accepted")


if __name__ == "__main__":
    sys.exit(run_tests([v for k, v in sorted(globals().items()) if k.startswith("test_") and callable(v)],
                       sys.argv, ", torch %s" % torch.__version__))
