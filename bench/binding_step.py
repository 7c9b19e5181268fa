#!/usr/bin/python3
"""The Python binding's LVIS step against the device step, side by side in one process.

usage: binding_step.py [--n 90000] [--c 1203] [--rounds 7]

Makes LVIS-sized inputs (90000 x 1203 float32 logits, 10% of rows positive) and times, in
alternating rounds on the binding's default device (EFL_DEVICE, else the first GPU, else the
first CPU):

- the device step: `efl_enqueue_step` on buffers already on the device, through the same
  `efl_loss` and the binding's own context, then clFinish (what a training stack that keeps its
  data on the device pays; efl-bench's `lvis` step);
- `efl.EqualizedFocalLoss.step(x, y)`, which returns a new gradient array each call;
- `step(x, y, out=grad)`, writing into one array reused from call to call.

Prints each median and its speed relative to the device step (device time / binding time: 1.0
means the binding costs nothing over data already on the device). On a device that shares host
memory the binding hands the arrays to the device without a copy once a scan has shown that the
step cannot be refused; elsewhere its time includes the copies.
"""

import argparse
import ctypes
import ctypes.util
import sys
import time

import numpy as np

import efl
from efl import _lib

CL_MEM_READ_WRITE = 1 << 0
CL_MEM_COPY_HOST_PTR = 1 << 5


class DeviceStep:
    """efl_enqueue_step on device buffers holding x and y, on a queue of the binding's context."""

    def __init__(self, loss, x, y, normalizer):
        cl = ctypes.CDLL(ctypes.util.find_library("OpenCL") or "libOpenCL.so.1")
        lib = _lib.load()
        vp, err = ctypes.c_void_p, ctypes.c_int32()
        lib.efl_context_cl_context.restype = lib.efl_context_cl_device.restype = vp
        lib.efl_context_cl_context.argtypes = lib.efl_context_cl_device.argtypes = [vp]
        cl.clCreateCommandQueue.restype = cl.clCreateBuffer.restype = vp
        cl.clCreateCommandQueue.argtypes = [vp, vp, ctypes.c_uint64, ctypes.POINTER(ctypes.c_int32)]
        cl.clCreateBuffer.argtypes = [vp, ctypes.c_uint64, ctypes.c_size_t, vp, ctypes.POINTER(ctypes.c_int32)]
        cl.clFinish.argtypes = cl.clReleaseMemObject.argtypes = cl.clReleaseCommandQueue.argtypes = [vp]
        lib.efl_enqueue_step.restype = ctypes.c_int
        lib.efl_enqueue_step.argtypes = [vp, vp, vp, vp, ctypes.c_size_t, ctypes.c_float, ctypes.c_int, vp, vp,
                                         ctypes.c_uint32, vp, vp]
        ctx = efl._context()
        clctx, dev = lib.efl_context_cl_context(ctx), lib.efl_context_cl_device(ctx)
        self.cl, self.lib, self.loss, self.n, self.norm = cl, lib, loss, len(y), float(normalizer)
        self.queue = cl.clCreateCommandQueue(clctx, dev, 0, ctypes.byref(err))
        self._ok(err.value, "clCreateCommandQueue")
        rw = CL_MEM_READ_WRITE

        def buf(nbytes, host=None):
            flags = rw | (CL_MEM_COPY_HOST_PTR if host is not None else 0)
            m = cl.clCreateBuffer(clctx, flags, nbytes, host.ctypes.data if host is not None else None,
                                  ctypes.byref(err))
            self._ok(err.value, "clCreateBuffer")
            return m

        self.bufs = [buf(x.nbytes, x), buf(y.nbytes, y), buf(4), buf(x.nbytes)]

    @staticmethod
    def _ok(code, what):
        if code != 0:
            raise RuntimeError("%s failed: OpenCL error %d" % (what, code))

    def __call__(self):
        x, y, value, grad = self.bufs
        st = self.lib.efl_enqueue_step(self.loss._live(), self.queue, x, y, self.n, self.norm,
                                       _lib.REDUCTIONS["mean"], value, grad, 0, None, None)
        if st != efl.Status.OK:
            raise efl.EflError(st)
        self._ok(self.cl.clFinish(self.queue), "clFinish")

    def close(self):
        for m in self.bufs:
            self.cl.clReleaseMemObject(m)
        self.cl.clReleaseCommandQueue(self.queue)


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=90000)
    ap.add_argument("--c", type=int, default=1203)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    n, c = args.n, args.c
    rng = np.random.default_rng(0)
    x = rng.normal(-4.0, 2.5, size=(n, c)).astype(np.float32)
    y = np.where(rng.random(n) < 0.1, rng.integers(1, c + 1, n), 0).astype(np.int32)
    norm = max(1, int((y > 0).sum()))
    loss = efl.EqualizedFocalLoss(c)
    out = np.empty_like(x)
    device = DeviceStep(loss, x, y, norm)
    ways = [("device step (data on the device)", device),
            ("binding, a new gradient array per call", lambda: loss.step(x, y, normalizer=norm)),
            ("binding, out= one array reused", lambda: loss.step(x, y, normalizer=norm, out=out))]
    for _, fn in ways:
        fn()  # compile, first touch, zero-copy set-up
    times = [[] for _ in ways]
    for _ in range(args.rounds):
        for i, (_, fn) in enumerate(ways):
            times[i].append(timed(fn))
    device.close()
    med = [float(np.median(t)) for t in times]
    print("binding step, %d x %d float32, %s rounds alternating, efl %s on %s:"
          % (n, c, args.rounds, efl.version(), efl.default_device()))
    for (name, _), m in zip(ways, med):
        print("  %-40s %8.1f ms = %.2f x the device step's speed" % (name, m * 1e3, med[0] / m))
    return 0


if __name__ == "__main__":
    sys.exit(main())
