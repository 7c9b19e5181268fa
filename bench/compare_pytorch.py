#!/usr/bin/python3
"""Time one EFL training step: PyTorch eager, PyTorch torch.compile, and efl, on the same shapes.

usage: compare_pytorch.py [--quick] [--n N ...] [--c C ...] [--device cpu|cuda] [--min-time S]
                          [--reps K] [--seed S] [--no-compile] [--no-check]

Shapes: LVIS 90000 x 1203 and COCO 90000 x 80 by default; --quick uses N = 20000 (about a
minute on 2 cores); --n and --c (each repeatable, or comma-separated) override: every N is
paired with every C. Data as efl-bench: logits ~ N(-4, 2.5), labels 92% background and
Zipf-distributed classes (reference label convention, 0 = background).

One step, for each implementation, is what a training step costs the loss:
  eager    the original EFL PyTorch code, restated: forward (sigmoid, p_t, per-class
           gamma_j and w_j expanded to [N, C], -log(p_t) * (1 - p_t)^gamma_j * w_j * alpha_t,
           sum / normalizer), autograd backward to the logits, then the per-class collect of
           |grad| into pos_grad / neg_grad (float32 buffers, as the original) and the update
           g = clamp(pos / (neg + 1e-10), 0, 1).
  compile  the same two functions (loss, collect) under torch.compile (needs torch >= 2;
           the backward is compiled by AOTAutograd). A failure is caught and reported.
  efl      efl.EqualizedFocalLoss.step on host numpy arrays, all it costs a caller included:
           on a device that shares host memory (CPU runtimes) the library wraps the arrays
           without copying them; elsewhere the timing includes the copies to the device and
           back. That is the fair comparison with the PyTorch rows, which also take and return
           host tensors on --device cpu.
With --device cuda the PyTorch rows run on CUDA tensors already on the GPU (the data is moved
there once, outside the timing; torch.cuda.synchronize() brackets each timed step); the efl row
is still the OpenCL library through the binding (EFL_DEVICE selects its device), host arrays in
and out, copies included.

Each implementation is warmed up (compile happens there), then timed: the median of at least
--reps steps (default 3), more if they fit in --min-time seconds (default 1.5). Before timing,
one check that efl's loss, gradient and state after one and two steps agree with the eager
float32 PyTorch ones (a sanity check: the float32 reference is the less exact of the two).

Environment: EFL_LIBRARY (libefl.so), EFL_DEVICE (OpenCL device), PYTHONPATH=<repo>/python.
"""

import argparse
import os
import statistics
import sys
import time

# torch's idle OpenMP workers spin by default; in one process with the OpenCL runtime's own
# threads that spinning took 20-40% off the efl row here. Passive waiting is set before torch
# loads (its OpenMP runtime reads it once), by re-executing this script.
if os.environ.get("OMP_WAIT_POLICY") is None:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    os.execv(sys.executable, [sys.executable] + sys.argv)

import numpy as np

try:
    import torch
except Exception as exc:  # ImportError or a broken install
    sys.exit("compare_pytorch.py: torch cannot be imported (%s)" % (exc,))

try:
    import efl
except Exception as exc:
    sys.exit("compare_pytorch.py: the efl binding cannot be imported (%s); set PYTHONPATH=<repo>/python "
             "and EFL_LIBRARY=<build>/libefl.so" % (exc,))

GAMMA, ALPHA, SCALE, IGNORE = 2.0, 0.25, 8.0, -1


# ------------------------------------------------------------------ data
def make_data(n, c, seed):
    """Logits ~ N(-4, 2.5) float32 [n, c]; labels: 92% background (0), else class k in 1..c
    with probability proportional to 1/k (Zipf), reference convention."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n, c), dtype=np.float32)
    logits *= np.float32(2.5)
    logits -= np.float32(4.0)
    p = 1.0 / np.arange(1, c + 1)
    cls = rng.choice(c, size=n, p=p / p.sum()) + 1
    labels = np.where(rng.random(n) < 0.92, 0, cls).astype(np.int32)
    return logits, labels


# ------------------------------------------------------------------ PyTorch, as the original
def efl_forward(x, y, pos_neg, normalizer, gamma: float, alpha: float, scale: float, ignore_index: int):
    """The original EqualizedFocalLoss.forward (reduction "mean"), on logits x [N, C] and labels
    y [N] (0 = background, k = column k-1, ignore_index ignored). Returns (loss, target, mask)."""
    n_i, n_c = x.shape
    # expand_label: one-hot over C + 1 columns, background column dropped
    target = x.new_zeros(n_i, n_c + 1)
    target[torch.arange(n_i, device=x.device), y] = 1
    target = target[:, 1:]
    sample_mask = y != ignore_index

    inputs = x[sample_mask]
    targets = target[sample_mask]
    pred = torch.sigmoid(inputs)
    pred_t = pred * targets + (1 - pred) * (1 - targets)

    map_val = 1 - pos_neg.detach()
    dy_gamma = gamma + scale * map_val
    ff = dy_gamma.view(1, -1).expand(n_i, n_c)[sample_mask]  # focusing factor
    wf = ff / gamma  # weighting factor

    ce_loss = -torch.log(pred_t)
    cls_loss = ce_loss * torch.pow((1 - pred_t), ff.detach()) * wf.detach()
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        cls_loss = alpha_t * cls_loss
    return cls_loss.sum() / normalizer, target, sample_mask


def efl_collect(grad, target, mask, pos_grad, neg_grad):
    """The original collect_grad (one rank, all FPN levels already concatenated): per-class sums
    of |grad| over positives and negatives, accumulated into the float32 buffers; returns the new g."""
    grad = torch.abs(grad)[mask]
    target = target[mask]
    pos_grad += torch.sum(grad * target, dim=0)
    neg_grad += torch.sum(grad * (1 - target), dim=0)
    return torch.clamp(pos_grad / (neg_grad + 1e-10), min=0, max=1)


class TorchEFL:
    """State (float32 buffers, as the original) and one training step: forward + backward + collect."""

    def __init__(self, num_classes, device, compiled=False):
        self.device = device
        self.pos_grad = torch.zeros(num_classes, device=device)
        self.neg_grad = torch.zeros(num_classes, device=device)
        self.pos_neg = torch.ones(num_classes, device=device)
        if compiled:
            self.forward_fn = torch.compile(efl_forward)
            self.collect_fn = torch.compile(efl_collect)
        else:
            self.forward_fn, self.collect_fn = efl_forward, efl_collect

    def step(self, x, y, normalizer):
        x = x.detach().requires_grad_(True)
        loss, target, mask = self.forward_fn(x, y, self.pos_neg, normalizer, GAMMA, ALPHA, SCALE, IGNORE)
        loss.backward()
        with torch.no_grad():
            self.pos_neg = self.collect_fn(x.grad, target, mask, self.pos_grad, self.neg_grad)
        return loss.detach(), x.grad


# ------------------------------------------------------------------ timing
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(fn, device, min_time, reps):
    times = []
    t_all = time.perf_counter()
    while len(times) < reps or (time.perf_counter() - t_all < min_time and len(times) < 50):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), len(times)


def first_line(exc, limit=400):
    msg = " ".join(str(exc).split())
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


# ------------------------------------------------------------------ check
def check(logits, labels, normalizer, device):
    """efl against eager float32 PyTorch on this input, two steps from a fresh state."""
    ref = TorchEFL(logits.shape[1], device)
    x = torch.from_numpy(logits).to(device)
    y = torch.from_numpy(labels.astype(np.int64)).to(device)
    lib = efl.EqualizedFocalLoss(logits.shape[1], gamma=GAMMA, alpha=ALPHA, scale_factor=SCALE, ignore_index=IGNORE)
    ok = True
    lines = []
    for k in (1, 2):
        rl, rg = ref.step(x, y, normalizer)
        rl = float(rl)
        rg = rg.cpu().numpy()
        el, eg = lib.step(logits, labels, normalizer=normalizer)
        loss_rel = abs(el - rl) / max(abs(rl), 1e-30)
        gmax = float(np.abs(rg).max())
        gerr = float(np.abs(eg.astype(np.float64) - rg).max())
        g_ref = ref.pos_neg.cpu().numpy().astype(np.float64)
        g_err = float(np.abs(lib.pos_neg - g_ref).max())
        ok_k = loss_rel <= 1e-4 and gerr <= 1e-3 * gmax and g_err <= 1e-3
        ok = ok and ok_k
        lines.append("  step %d: loss efl %.7g torch %.7g (rel diff %.2e, limit 1e-4); grad max abs diff %.2e "
                     "= %.2e x max|grad| (limit 1e-3); g max abs diff %.2e (limit 1e-3)  %s"
                     % (k, el, rl, loss_rel, gerr, gerr / max(gmax, 1e-30), g_err, "ok" if ok_k else "MISMATCH"))
    lib.close()
    return ok, lines


# ------------------------------------------------------------------ main
def int_list(values, default):
    if not values:
        return default
    out = []
    for v in values:
        out.extend(int(t) for t in str(v).split(",") if t)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="N = 20000 instead of 90000")
    ap.add_argument("--n", action="append", help="rows (repeatable or comma-separated)")
    ap.add_argument("--c", action="append", help="classes (repeatable or comma-separated)")
    ap.add_argument("--device", default="cpu", help="torch device of the PyTorch rows: cpu (default) or cuda[:k]")
    ap.add_argument("--min-time", type=float, default=1.5, help="time each implementation for about S s")
    ap.add_argument("--reps", type=int, default=3, help="at least this many timed steps (default 3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    ap.add_argument("--compile-graph-breaks", action="store_true",
                    help="leave torch._dynamo's capture_dynamic_output_shape_ops off: the boolean-mask "
                    "indexing of the original code then splits the compiled function into pieces")
    ap.add_argument("--no-check", action="store_true", help="skip the agreement check")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("compare_pytorch.py: --device %s but torch.cuda.is_available() is False" % args.device)
    torch.set_num_threads(os.cpu_count() or 1)
    ns = int_list(args.n, [20000] if args.quick else [90000])
    cs = int_list(args.c, [1203, 80])

    efl.warmup()
    efl_dev = next((ln[len("device: "):] for ln in efl.context_log().splitlines() if ln.startswith("device: ")), "?")
    torch_dev = (torch.cuda.get_device_name(device) if device.type == "cuda"
                 else "CPU, %d threads" % torch.get_num_threads())
    print("torch %s on %s (%s); efl %s on OpenCL %s" % (torch.__version__, device, torch_dev, efl.version(), efl_dev))
    print("step = forward + backward + per-class collect and g update; float32; gamma 2, alpha 0.25, s 8, "
          "normalizer = positives")
    print("efl row: efl.EqualizedFocalLoss.step on host arrays (zero-copy where the device shares host memory, else copies included)")
    print()

    compile_error = None
    if args.no_compile:
        compile_error = "skipped (--no-compile)"
    elif not hasattr(torch, "compile"):
        compile_error = "torch %s has no torch.compile (needs torch >= 2)" % torch.__version__
    elif not args.compile_graph_breaks:
        # x[mask] has a data-dependent shape: without this, dynamo breaks the graph there and
        # compiles the pieces; with it, one graph per function (on 2 CPU cores: about the same
        # time at N = 20000, and less time than the pieces at N = 3000).
        try:
            torch._dynamo.config.capture_dynamic_output_shape_ops = True
        except Exception as exc:
            print("note: cannot set capture_dynamic_output_shape_ops (%s: %s)" % (type(exc).__name__, exc))

    all_ok = True
    tables = []
    for n in ns:
        for c in cs:
            name = {1203: "LVIS", 80: "COCO", 365: "Objects365", 500: "OpenImages"}.get(c, "")
            shape = "%d x %d%s" % (n, c, " (%s)" % name if name else "")
            logits, labels = make_data(n, c, args.seed)
            normalizer = float(max(1, int((labels > 0).sum())))
            x = torch.from_numpy(logits).to(device)
            y = torch.from_numpy(labels.astype(np.int64)).to(device)
            print("== %s: %.1f%% background rows, normalizer %g" % (shape, 100.0 * (labels == 0).mean(), normalizer))

            if not args.no_check:
                ok, lines = check(logits, labels, normalizer, device)
                all_ok = all_ok and ok
                print("agreement of efl with eager PyTorch float32 (fresh state):")
                print("\n".join(lines))

            rows = []  # (impl, median or None, steps, note)

            eager = TorchEFL(c, device)
            eager.step(x, y, normalizer)  # warm-up
            med, k = time_steps(lambda: eager.step(x, y, normalizer), device, args.min_time, args.reps)
            rows.append(("PyTorch eager (%s)" % device.type, med, k, ""))
            eager = None  # free its buffers before the next implementation

            label = "PyTorch torch.compile (%s)" % device.type
            if compile_error and not compile_error.startswith("torch.compile failed"):
                rows.append((label, None, 0, "unavailable: " + compile_error))
            else:
                try:
                    comp = TorchEFL(c, device, compiled=True)
                    t0 = time.perf_counter()
                    comp.step(x, y, normalizer)  # compiles
                    comp.step(x, y, normalizer)
                    sync(device)
                    ctime = time.perf_counter() - t0
                    med, k = time_steps(lambda: comp.step(x, y, normalizer), device, args.min_time, args.reps)
                    rows.append((label, med, k, "first two calls (compile) %.1f s%s"
                                 % (ctime, "; graph breaks at x[mask]" if args.compile_graph_breaks else "")))
                    comp = None
                except Exception as exc:  # a compiler missing, an unsupported op, ...
                    compile_error = "torch.compile failed: %s: %s" % (type(exc).__name__, first_line(exc))
                    print(compile_error)
                    rows.append((label, None, 0, "unavailable: " + compile_error))

            lib = efl.EqualizedFocalLoss(c, gamma=GAMMA, alpha=ALPHA, scale_factor=SCALE, ignore_index=IGNORE)
            lib.step(logits, labels, normalizer=normalizer)  # warm-up
            med, k = time_steps(lambda: lib.step(logits, labels, normalizer=normalizer),
                                torch.device("cpu"), args.min_time, args.reps)
            rows.append(("efl (OpenCL, via the binding)", med, k, ""))
            lib.close()
            efl_med = med

            out = ["", "%s, N x C = %.3g elements" % (shape, n * c),
                   "| implementation | median s/step | G elements/s | x slower than efl | steps | note |",
                   "| --- | --- | --- | --- | --- | --- |"]
            for impl, med, k, note in rows:
                if med is None:
                    out.append("| %s | - | - | - | 0 | %s |" % (impl, note))
                else:
                    out.append("| %s | %.4f | %.3f | %.2f | %d | %s |"
                               % (impl, med, n * c / med / 1e9, med / efl_med, k, note))
            print("\n".join(out))
            print()
            tables.append("\n".join(out))
            x = y = None

    print("==== summary ====")
    print("\n".join(tables))
    if compile_error:
        print("\ntorch.compile: %s" % compile_error)
    if not args.no_check:
        print("agreement check: %s" % ("all within limits" if all_ok else "MISMATCH (see above)"))
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
