#!/usr/bin/env python3
"""One EFL training step of examples/train_tinygrad.py's conv head, both ways, side by side:
efl on tinygrad's own OpenCL context (efl.tinygrad) against the same EFL written in tinygrad ops,
on tinygrad's CL device, same weights and batches. Prints each step's losses and times, then the
median step time of each (the first two steps excluded: tinygrad compiles its kernels there).

    DEV=CL PYTHONPATH=python python3 bench/tinygrad_step.py [--steps 5] [--small]

scripts/setup.sh bench runs it under tinygrad in efl.tinygrad.REQUIREMENT's range
(tests/python/tinygrad_venv.sh). Exit 77 without tinygrad or its CL device.
"""
import argparse
import importlib.util
import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("train_tinygrad",
                                              os.path.join(here, "..", "examples", "train_tinygrad.py"))
ex = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ex)  # exits 77 itself without tinygrad


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--small", action="store_true")
    args = ap.parse_args(argv[1:])
    cfg = ex.Config(args.small)
    print("tinygrad %s, CL device: %s" % (ex.etg.TINYGRAD_VERSION, ex.Device[ex.DEV].device_name))
    print("head: %s" % cfg)
    la, lb, ta, tb, sdiff = ex.run(cfg, 1e-3, steps=max(args.steps, 3))
    worst = max(abs(a - b) / max(abs(b), 1e-30) for a, b in zip(la, lb))
    print()
    print("%-34s %12s %12s" % ("one EFL training step", "efl", "tinygrad ops"))
    print("%-34s %11.3fs %11.3fs" % ("median time (steps 3..%d)" % len(la), ta, tb))
    print("%-34s %12.6f %12.6f" % ("last loss", la[-1], lb[-1]))
    print("tinygrad ops / efl: %.1fx; largest relative loss difference %.1e, state %.1e" % (tb / ta, worst, sdiff))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
