"""A detection head trained with efl.torch.EqualizedFocalLossModule, as a detection user writes it.

Synthetic long-tailed data (Zipf class frequencies, mostly background) over three FPN-like levels;
a RetinaNet-style head (a shared conv tower and a classifier conv giving [B, A*C, H, W] per level,
anchor-major channels); the loss called once per level in mmdetection's style (loss_by_feat), then
one backward per step: EFL's state is updated once, when that backward ends, with the statistics
of all levels. SGD with momentum, an EMA of the model that carries the EFL state, checkpoints.

    EFL_DEVICE=pocl PYTHONPATH=python python3 examples/train_torch.py [--small] [--steps N]
    ... --check-resume   N steps straight vs N/2, torch.save, torch.load, N/2: bitwise the same
    ... --ddp 2          2 gloo processes with DistributedDataParallel: ranks bitwise the same

Exit status: 0 success, 1 a check failed, 77 no torch or no OpenCL device (the tests' skip).
"""

import argparse
import copy
import math
import os
import sys
import tempfile
import time

try:
    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp
    import torch.nn as nn
except ImportError as exc:
    print("SKIP: torch cannot be imported (%s)" % exc)
    sys.exit(77)

import efl
import efl.torch

SIZES = {  # images per step, FPN levels (H, W), input channels, tower width, classes, anchors, steps
    "small": dict(batch=4, levels=((16, 16), (8, 8), (4, 4)), cin=16, width=32, classes=50, anchors=2, steps=60),
    "full": dict(batch=8, levels=((32, 32), (16, 16), (8, 8)), cin=16, width=64, classes=50, anchors=2, steps=300),
}
FG = 0.01                # share of locations holding an object: most rows are background
ZIPF = 2.0               # class k (1-based) has frequency ~ 1/k^ZIPF: class 1 is 2500x class 50
SIGNAL = 2.0             # an object's look, in noise sigmas
FAMILIES, OWN = 10, 0.5  # classes come in look-alike families (see Synthetic)


class Synthetic:
    """Batches that are a function of (seed, step) alone: a resumed run, or a rank taking its
    shard, makes exactly the batch the uninterrupted single process made at that step."""

    def __init__(self, cfg, seed):
        self.cfg = cfg
        g = torch.Generator().manual_seed(seed)
        C = cfg["classes"]
        # a class's look: its family's plus its own; a family mixes frequent and rare classes
        # (k % FAMILIES), so a frequent class's objects are the rare ones' hard negatives, as in LVIS
        fam = torch.randn(FAMILIES, cfg["cin"], generator=g)
        self.protos = fam[torch.arange(C) % FAMILIES] + OWN * torch.randn(C, cfg["cin"], generator=g)
        self.anchor_look = torch.randn(cfg["anchors"], cfg["cin"], generator=g)  # the object's scale
        self.freq = torch.arange(1, C + 1, dtype=torch.float64) ** -ZIPF  # class k ~ 1/k^ZIPF
        self.seed = seed

    def batch(self, step, rank=0, world=1):
        cfg, C, A = self.cfg, self.cfg["classes"], self.cfg["anchors"]
        g = torch.Generator().manual_seed(self.seed * 1000003 + 7919 * step + 1)
        B = cfg["batch"]
        mine = slice(rank * B // world, (rank + 1) * B // world)  # this rank's images
        feats, labels, weights, num_pos = [], [], [], 0
        for H, W in cfg["levels"]:
            obj = torch.rand(B, H, W, generator=g) < FG
            cls = torch.multinomial(self.freq, B * H * W, replacement=True, generator=g).view(B, H, W)
            anc = torch.randint(A, (B, H, W), generator=g)  # the anchor that matches the object
            look = (self.protos[cls] + self.anchor_look[anc]) * obj.unsqueeze(-1)
            x = (torch.randn(B, H, W, cfg["cin"], generator=g) + SIGNAL * look).permute(0, 3, 1, 2)
            # mmdetection's targets: rows (image, y, x, anchor), labels 0..C-1, C background; the
            # other anchors at an object are "between IoU thresholds": weight 0, ignored
            hit = obj.unsqueeze(-1) & (torch.arange(A) == anc.unsqueeze(-1))  # [B, H, W, A]
            y = torch.where(hit, cls.unsqueeze(-1).expand(B, H, W, A), torch.full_like(hit, C, dtype=torch.long))
            w = torch.where(obj.unsqueeze(-1) & ~hit, 0.0, 1.0)
            num_pos += int(hit.sum())  # over the whole batch: the same avg_factor on every rank
            feats.append(x[mine].contiguous())
            labels.append(y[mine].reshape(-1))
            weights.append(w[mine].reshape(-1))
        return feats, labels, weights, float(max(num_pos, 1))


class Detector(nn.Module):
    """A RetinaNet-like classification branch; forward returns the loss, as mmdetection's
    train step does, so DistributedDataParallel sees the whole step."""

    def __init__(self, cfg):
        super().__init__()
        C, A, k = cfg["classes"], cfg["anchors"], cfg["width"]
        self.num_classes = C
        self.tower = nn.Sequential(nn.Conv2d(cfg["cin"], k, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(k, k, 3, padding=1), nn.ReLU(),
                                   nn.Dropout2d(0.05))  # draws on the global RNG: see the checkpoint
        self.cls = nn.Conv2d(k, A * C, 3, padding=1)  # channel a*C + c: anchor-major
        nn.init.normal_(self.cls.weight, std=0.01)
        nn.init.constant_(self.cls.bias, -math.log((1 - 0.01) / 0.01))  # RetinaNet's prior 0.01
        self.loss_cls = efl.torch.EqualizedFocalLossModule(C)  # buffers pos_grad, neg_grad, pos_neg

    def forward(self, feats, labels, weights, num_pos):
        loss = 0
        for x, y, w in zip(feats, labels, weights):  # mmdetection's loss_by_feat_single, per level
            score = self.cls(self.tower(x)).permute(0, 2, 3, 1).reshape(-1, self.num_classes)
            loss = loss + self.loss_cls(score, y, w, avg_factor=num_pos)
        return loss


class ModelEMA:
    """YOLOX-style EMA (decay ramped up over the first updates). Parameters are averaged;
    buffers are copied: EFL's pos_grad / neg_grad are running sums of statistics, not weights,
    so the EMA model carries the training model's EFL state as it is."""

    def __init__(self, model, decay=0.999):
        self.module = copy.deepcopy(model).eval()
        self.decay, self.updates = decay, 0
        for p in self.module.parameters():
            p.requires_grad_(False)

    def update(self, model):
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / 50))
        with torch.no_grad():
            for e, p in zip(self.module.parameters(), model.parameters()):
                e.mul_(d).add_(p.detach(), alpha=1 - d)
            for e, b in zip(self.module.buffers(), model.buffers()):
                e.copy_(b)  # the EFL state: the EMA copy's next forward reads it


def build(cfg, seed):
    torch.manual_seed(seed)  # the initialisation, and the start of the dropout's RNG stream
    model = Detector(cfg)
    return model, optimizer(model), ModelEMA(model)


def optimizer(model):
    return torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)


def train(data, model, opt, ema, steps, total, net=None, rank=0, world=1, log=True):
    """The steps of `steps`; returns their losses (this rank's share under DDP)."""
    net = net or model
    model.train()
    losses, t0, every = [], time.perf_counter(), max(1, total // 6)
    for step in steps:
        feats, labels, weights, num_pos = data.batch(step, rank, world)
        loss = net(feats, labels, weights, num_pos)  # 3 loss calls, one per level
        opt.zero_grad(set_to_none=True)
        loss.backward()  # EFL's state update lands here, once, with all 3 levels' statistics
        opt.step()
        ema.update(model)
        losses.append(loss.detach().clone())
        if log and (step + 1) % every == 0:
            print("  step %4d/%d  loss %.4f  (%.1fs)" % (step + 1, total, float(loss), time.perf_counter() - t0),
                  flush=True)
    return losses


def save(path, model, opt, ema, step):
    # whole objects for the model (the loss module with its state inside) and the EMA; the
    # optimizer as its state_dict, loaded into one built over the loaded model's parameters
    torch.save({"model": model, "ema": ema, "optimizer": opt.state_dict(), "rng": torch.get_rng_state(),
                "step": step}, path)


def load(path):
    ck = torch.load(path, weights_only=False)  # whole objects are pickles (torch >= 2.6: weights_only)
    model, ema = ck["model"], ck["ema"]
    opt = optimizer(model)
    opt.load_state_dict(ck["optimizer"])
    torch.set_rng_state(ck["rng"])
    return model, opt, ema, ck["step"]


def tensors(model, ema):
    """Everything that must match, by name: parameters and buffers of the model and the EMA."""
    out = dict(model.state_dict())
    out.update(("ema." + k, v) for k, v in ema.module.state_dict().items())
    return out


def first_mismatch(a, b):
    """The first name whose tensor differs in any bit, with a description; None if all match."""
    for k in a:
        x, y = a[k].detach().contiguous(), b[k].detach().contiguous()
        if x.shape != y.shape or x.numpy().tobytes() != y.numpy().tobytes():
            diff = (x.double() - y.double()).abs().max().item() if x.shape == y.shape else float("nan")
            return "%s differs (max |diff| %.3g)" % (k, diff)
    return None


def summary(cfg, model, ema, losses, data, t0):
    pn, unseen = model.loss_cls.pos_neg, model.loss_cls.pos_grad == 0  # no positive yet: pos_neg 0
    k = max(1, cfg["classes"] // 5)
    last = losses[-min(5, len(losses)):]
    with torch.no_grad():  # a held-out batch through the EMA model: loss only, no state update
        ema_loss = float(ema.module(*data.batch(10 ** 6)))
    print("final loss %.4f (mean of the last %d steps), EMA model on a held-out batch %.4f"
          % (float(torch.stack(last).mean()), len(last), ema_loss))
    print("mean pos_neg: frequent classes 1-%d %.4f, rare classes %d-%d %.4f (%d of them without a positive yet)"
          % (k, float(pn[:k].mean()), cfg["classes"] - k + 1, cfg["classes"], float(pn[-k:].mean()),
             int(unseen[-k:].sum())))
    print("elapsed %.1fs" % (time.perf_counter() - t0))


def check_resume(cfg, data, steps, seed):
    half = steps // 2
    print("uninterrupted: %d steps" % steps)
    model, opt, ema = build(cfg, seed)
    want = train(data, model, opt, ema, range(steps), steps)
    print("interrupted: %d steps, save, load, %d steps" % (half, steps - half))
    m2, o2, e2 = build(cfg, seed)
    got = train(data, m2, o2, e2, range(half), steps)
    with tempfile.TemporaryDirectory(prefix="efl-ckpt-") as d:
        save(os.path.join(d, "ckpt.pt"), m2, o2, e2, half)
        del m2, o2, e2  # nothing of the first half survives but the file
        torch.manual_seed(12345)  # and the RNG must come from the checkpoint
        m2, o2, e2, start = load(os.path.join(d, "ckpt.pt"))
    got += train(data, m2, o2, e2, range(start, steps), steps)
    bad = first_mismatch({"loss %d" % i: l for i, l in enumerate(want)}, {"loss %d" % i: l for i, l in enumerate(got)})
    bad = bad or first_mismatch(tensors(model, ema), tensors(m2, e2))
    if bad is None and e2.updates != ema.updates:
        bad = "EMA update count %d != %d" % (e2.updates, ema.updates)
    if bad:
        print("FAIL: the resumed run is not bitwise the uninterrupted one: %s" % bad)
        return model, ema, want, False
    print("resume: losses, parameters, EFL state and EMA bitwise equal to the uninterrupted run")
    return model, ema, want, True


def ddp_worker(rank, world, tmpdir, cfg, steps, seed):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="file://" + os.path.join(tmpdir, "init"), rank=rank,
                            world_size=world)
    data = Synthetic(cfg, seed)
    model, opt, ema = build(cfg, seed)
    torch.manual_seed(seed + 1 + rank)  # each rank's own dropout masks (the ranks must still agree)
    # gradients averaged by DDP; EFL's statistics summed by the loss module's own all-reduce, which
    # alone keeps the ranks' EFL state equal here: DDP's per-forward buffer broadcast (the default,
    # which works too) would overwrite a disagreement before the check could see it
    net = nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
    losses = train(data, model, opt, ema, range(steps), steps, net=net, rank=rank, world=world, log=rank == 0)
    torch.save({"tensors": tensors(model, ema), "losses": losses}, os.path.join(tmpdir, "rank%d.pt" % rank))
    dist.barrier()
    dist.destroy_process_group()


def run_ddp(cfg, data, steps, seed, world):
    with tempfile.TemporaryDirectory(prefix="efl-ddp-") as d:
        ctx = mp.spawn(ddp_worker, args=(world, d, cfg, steps, seed), nprocs=world, join=False)
        deadline = time.monotonic() + 60 + 5 * steps
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:  # a rank stuck in a collective: do not hang the caller
                for p in ctx.processes:
                    if p.is_alive():
                        p.kill()
                print("FAIL: the DDP ranks did not finish in time")
                return None, None, None, False
        r = [torch.load(os.path.join(d, "rank%d.pt" % i)) for i in range(world)]
    for i in range(1, world):
        bad = first_mismatch(r[0]["tensors"], r[i]["tensors"])
        if bad:
            print("FAIL: rank %d differs from rank 0: %s" % (i, bad))
            return None, None, None, False
    print("ddp: %d ranks, parameters, EFL state and EMA bitwise equal on every rank" % world)
    model, _, ema = build(cfg, seed)  # rank 0's result into local objects for the summary
    model.load_state_dict({k: v for k, v in r[0]["tensors"].items() if not k.startswith("ema.")})
    ema.module.load_state_dict({k[4:]: v for k, v in r[0]["tensors"].items() if k.startswith("ema.")})
    # the printed loss: the ranks' shares summed (each used the whole batch's avg_factor)
    return model, ema, [sum(x["losses"][k] for x in r) for k in range(steps)], True


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, help="training steps (default 300; --small 60)")
    ap.add_argument("--seed", type=int, default=2022)
    ap.add_argument("--small", action="store_true", help="the test suite's size (seconds)")
    ap.add_argument("--check-resume", action="store_true", help="checkpoint mid-run: bitwise the same result")
    ap.add_argument("--ddp", type=int, default=0, metavar="N", help="N processes (gloo, DDP)")
    args = ap.parse_args()
    if args.check_resume and args.ddp > 1:
        ap.error("--check-resume runs in one process: give it or --ddp, not both")
    cfg = SIZES["small" if args.small else "full"]
    if args.ddp > 1 and cfg["batch"] % args.ddp:
        ap.error("--ddp %d: the %d images of a step must split evenly over the ranks" % (args.ddp, cfg["batch"]))
    steps = args.steps or cfg["steps"]
    torch.set_num_threads(1)  # small convolutions; also the processes of --ddp share the cores
    try:
        efl.warmup()
    except efl.EflError as exc:
        if exc.status in (efl.Status.ERROR_NO_DEVICE, efl.Status.ERROR_DEVICE_NOT_FOUND):
            print("SKIP: no OpenCL device (%s)" % exc)
            return 77
        raise
    print("efl %s, torch %s: %d images x %s levels, %d anchors, %d classes, %d steps"
          % (efl.version(), torch.__version__, cfg["batch"], [h for h, _ in cfg["levels"]], cfg["anchors"],
             cfg["classes"], steps), flush=True)
    t0 = time.perf_counter()
    data = Synthetic(cfg, args.seed)
    if args.check_resume:
        model, ema, losses, ok = check_resume(cfg, data, steps, args.seed)
    elif args.ddp > 1:
        model, ema, losses, ok = run_ddp(cfg, data, steps, args.seed, args.ddp)
    else:
        model, opt, ema = build(cfg, args.seed)
        losses, ok = train(data, model, opt, ema, range(steps), steps), True
    if model is not None:
        summary(cfg, model, ema, losses, data, t0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
