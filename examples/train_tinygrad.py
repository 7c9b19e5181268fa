#!/usr/bin/env python3
"""A small conv detection head trained in tinygrad on its CL device (OpenCL), with EFL two ways:

  efl       efl.tinygrad.EqualizedFocalLoss: efl's kernels on tinygrad's own OpenCL context and
            queue, reading the head's per-level outputs [B, A*C, H, W] in place;
  tinygrad  the same EFL written in tinygrad ops (stable softplus forms, autograd, per-class sums
            of |d loss / d logits| for the state), the plain way a tinygrad user would write it.

Both models start from the same weights and see the same synthetic long-tailed batches (FPN-like
levels, > 90% background, Zipf-distributed classes, a few ignored anchors); each trains with
tinygrad's SGD. Printed per step: both losses and their relative difference; at the end the time
of a step both ways (first steps excluded: tinygrad compiles its kernels then) and the largest
difference of the state. Exit 1 when the losses differ by more than --rtol at any step.

    DEV=CL python3 examples/train_tinygrad.py             # C=1203 (LVIS), 6 steps
    DEV=CL python3 examples/train_tinygrad.py --small     # a few seconds: what ctest runs

Needs tinygrad in efl.tinygrad.REQUIREMENT's range (tests/python/tinygrad_venv.sh makes a venv).
"""
import argparse
import os
import sys
import time

import numpy as np

try:
    import efl.tinygrad as etg
    from tinygrad import Context, Device, Tensor, dtypes
    from tinygrad.nn.optim import SGD
    Device["CL"]
except ImportError as exc:
    print("SKIP: %s" % exc)
    sys.exit(77)
except Exception as exc:
    print("SKIP: tinygrad's CL device cannot be opened: %s" % exc)
    sys.exit(77)

DEV = "CL"
GAMMA, ALPHA, S = 2.0, 0.25, 8.0
PRIOR = -float(np.log((1 - 0.01) / 0.01))  # the usual focal-loss bias init: p = 0.01


class Config:
    def __init__(self, small):
        if small:
            self.C, self.A, self.F, self.B, self.hw, self.steps, self.batches = 40, 3, 8, 2, [16, 8, 4, 2], 8, 3
        else:
            self.C, self.A, self.F, self.B, self.hw, self.steps, self.batches = 1203, 3, 16, 2, [32, 16, 8, 4], 6, 3
        self.lr = 0.01

    @property
    def rows(self):
        return self.B * sum(h * h * self.A for h in self.hw)

    def __str__(self):
        return "C=%d, A=%d, %d images, levels %s, %d rows (%.1f M logits), feature channels %d" % (
            self.C, self.A, self.B, "/".join("%dx%d" % (h, h) for h in self.hw), self.rows,
            self.rows * self.C / 1e6, self.F)


def make_data(cfg, seed=0):
    """Fixed batches: per-level features [B, F, H, W] and labels in the reference's row order."""
    rng = np.random.default_rng(seed)
    out = []
    p = 1.0 / np.arange(1, cfg.C + 1) ** 1.2
    p /= p.sum()
    for _ in range(cfg.batches):
        feats = [rng.normal(0, 1, size=(cfg.B, cfg.F, h, h)).astype(np.float32) for h in cfg.hw]
        y = np.zeros(cfg.rows, dtype=np.int32)
        u = rng.random(cfg.rows)
        fg = u < 0.06
        y[fg] = rng.choice(cfg.C, size=int(fg.sum()), p=p) + 1
        y[u > 0.99] = -1
        out.append((feats, y))
    return out


def init_weights(cfg, seed=1):
    rng = np.random.default_rng(seed)
    k = 1.0 / np.sqrt(cfg.F * 9)
    return {"w1": rng.uniform(-k, k, size=(cfg.F, cfg.F, 3, 3)).astype(np.float32),
            "b1": np.zeros(cfg.F, dtype=np.float32),
            "w2": rng.normal(0, 0.01, size=(cfg.A * cfg.C, cfg.F, 3, 3)).astype(np.float32),
            "b2": np.full(cfg.A * cfg.C, PRIOR, dtype=np.float32)}


class Head:
    """conv3x3 + relu + conv3x3 to A*C channels, shared over the levels (RetinaNet's cls branch)."""

    def __init__(self, weights):
        self.params = {k: Tensor(v, device=DEV).realize() for k, v in weights.items()}

    def __call__(self, feats):
        p = self.params
        return [x.conv2d(p["w1"], p["b1"], padding=1).relu().conv2d(p["w2"], p["b2"], padding=1) for x in feats]


def rows_of(levels, cfg):
    """[N, C] in the reference's order from anchor-major levels (what efl reads in place)."""
    per = [lv.reshape(cfg.B, cfg.A, cfg.C, -1).permute(0, 3, 1, 2).reshape(cfg.B, -1, cfg.C) for lv in levels]
    return Tensor.cat(*per, dim=1).reshape(-1, cfg.C)


def _softplus(x):
    return x.maximum(0.0) + (-x.abs()).exp().add(1.0).log()


class TinygradEFL:
    """EFL in tinygrad ops (docs/semantics.md): the loss with the state as constants, autograd
    for the gradient, then the state update from the gradient that reached the logits."""

    def __init__(self, C):
        self.C = C
        self.pos = Tensor.zeros(C, device=DEV, dtype=dtypes.float32).contiguous().realize()
        self.neg = Tensor.zeros(C, device=DEV, dtype=dtypes.float32).contiguous().realize()
        self.g = Tensor.ones(C, device=DEV, dtype=dtypes.float32).contiguous().realize()

    def loss(self, x, T, valid, normalizer):
        gj = GAMMA + S * (1.0 - self.g)
        wj = gj / GAMMA
        z = T.where(x, -x)
        log_pt = -_softplus(-z)
        log_q = -_softplus(z)
        at = T.where(ALPHA, 1.0 - ALPHA)
        l = -(at * wj * (gj * log_q).exp() * log_pt)
        return (l * valid).sum() / normalizer

    def update(self, grad, T, valid):
        a = grad.abs() * valid
        P = T.where(a, 0.0).sum(0)
        N = T.where(0.0, a).sum(0)
        self.pos.assign(self.pos + P)
        self.neg.assign(self.neg + N)
        self.g.assign((self.pos / (self.neg + 1e-10)).clip(0.0, 1.0))
        return [self.pos, self.neg, self.g]


def targets(y, C):
    T = np.zeros((y.size, C), dtype=bool)
    fg = np.nonzero(y >= 1)[0]
    T[fg, y[fg] - 1] = True
    return T, (y >= 0).astype(np.float32)[:, None]


def step_efl(head, opt, crit, feats_t, y_t, norm, cfg):
    opt.zero_grad()
    levels = head(feats_t)
    loss = crit(levels, y_t, normalizer=norm, anchors=cfg.A)
    loss.backward()
    opt.step()
    return loss.item()


def step_tinygrad(head, opt, ref, feats_t, T_t, valid_t, norm, cfg):
    opt.zero_grad()
    x = rows_of(head(feats_t), cfg)
    loss = ref.loss(x, T_t, valid_t, norm)
    params = list(head.params.values())
    grads = loss.gradient(x, *params)
    for p, g in zip(params, grads[1:]):
        p.grad = g
    state = ref.update(grads[0], T_t, valid_t)
    Tensor.realize(loss, *opt.schedule_step(), *state)
    return loss.item()


def run(cfg, rtol, quiet=False, steps=None):
    """Trains both ways; returns (losses efl, losses tinygrad, seconds per step efl, tinygrad, state diff)."""
    data = make_data(cfg)
    w = init_weights(cfg)
    head_a, head_b = Head(w), Head(w)
    opt_a = SGD(list(head_a.params.values()), lr=cfg.lr, momentum=0.9)
    opt_b = SGD(list(head_b.params.values()), lr=cfg.lr, momentum=0.9)
    crit = etg.EqualizedFocalLoss(cfg.C, gamma=GAMMA, alpha=ALPHA, scale_factor=S, device=DEV)
    ref = TinygradEFL(cfg.C)
    la, lb, ta, tb = [], [], [], []
    steps = cfg.steps if steps is None else steps
    with Context(TRAINING=1):
        for k in range(steps):
            feats, y = data[k % len(data)]
            norm = max(1.0, float((y > 0).sum()))
            T, valid = targets(y, cfg.C)
            fa = [Tensor(f, device=DEV).realize() for f in feats]
            fb = [Tensor(f, device=DEV).realize() for f in feats]
            y_t = Tensor(y, device=DEV).realize()
            T_t, valid_t = Tensor(T, device=DEV).realize(), Tensor(valid, device=DEV).realize()
            Device[DEV].synchronize()
            t0 = time.perf_counter()
            la.append(step_efl(head_a, opt_a, crit, fa, y_t, norm, cfg))
            t1 = time.perf_counter()
            lb.append(step_tinygrad(head_b, opt_b, ref, fb, T_t, valid_t, norm, cfg))
            t2 = time.perf_counter()
            ta.append(t1 - t0)
            tb.append(t2 - t1)
            rel = abs(la[-1] - lb[-1]) / max(abs(lb[-1]), 1e-30)
            if not quiet:
                print("step %2d  loss efl %.7f  tinygrad ops %.7f  rel diff %.1e  (%.3f s / %.3f s)"
                      % (k, la[-1], lb[-1], rel, ta[-1], tb[-1]), flush=True)
    sa = crit.read_state()
    sb = [t.numpy().astype(np.float64) for t in (ref.pos, ref.neg, ref.g)]
    sdiff = max(float(np.max(np.abs(a - b) / (np.abs(b) + 1e-6))) for a, b in zip(sa, sb))
    warm = 2 if steps > 2 else 0
    return la, lb, float(np.median(ta[warm:])), float(np.median(tb[warm:])), sdiff


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="a small head (what ctest runs)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--rtol", type=float, default=2e-4, help="largest relative loss difference allowed")
    args = ap.parse_args(argv[1:])
    cfg = Config(args.small)
    print("efl.tinygrad (tinygrad %s on CL: %s): %s" % (etg.TINYGRAD_VERSION, Device[DEV].device_name, cfg))
    la, lb, ta, tb, sdiff = run(cfg, args.rtol, steps=args.steps)
    worst = max(abs(a - b) / max(abs(b), 1e-30) for a, b in zip(la, lb))
    print("losses: first %.6f, last %.6f (efl); largest relative difference %.1e over %d steps; state %.1e"
          % (la[0], la[-1], worst, len(la), sdiff))
    print("one training step (median after the first two): efl %.3f s, tinygrad ops %.3f s (%.1fx)"
          % (ta, tb, tb / ta))
    if not worst <= args.rtol:
        print("FAIL: the losses differ by %.1e > %.1e" % (worst, args.rtol))
        return 1
    if not la[-1] < la[0]:
        print("FAIL: the loss did not go down (%.6f -> %.6f)" % (la[0], la[-1]))
        return 1
    print("passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
