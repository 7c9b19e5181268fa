#!/usr/bin/python3
"""The binding's path arguments (issue: the state can never be poisoned, and a refused call
writes nothing).

- A path with an embedded NUL byte, as str, bytes or os.PathLike, raises ValueError as open()
  does, before any C call: C would stop at the NUL and save to, or load from, another file.
  save_checkpoint creates nothing, load_checkpoint leaves the state as it was.
- A FIFO passed to load_checkpoint raises EflError(ERROR_IO) at once (an alarm fails the test
  instead of letting a blocked open hang it), the state as it was.
Exit: 0 all passed, 1 a test failed, 77 skipped (no OpenCL device).
"""
import os
import pathlib
import signal
import sys
import tempfile

import numpy as np

import efl
from _common import run_tests  # this folder is on sys.path: the script's own


def trained_loss():
    """A loss of C=5 whose state moved away from the fresh one, so "unchanged" means something."""
    rng = np.random.default_rng(3)
    loss = efl.EqualizedFocalLoss(5)
    x = rng.normal(-4.0, 2.5, size=(64, 5)).astype(np.float32)
    y = np.where(rng.random(64) < 0.3, rng.integers(1, 6, 64), 0).astype(np.int32)
    loss.step(x, y, normalizer=max(1, int((y > 0).sum())))
    return loss


def same_state(a, b):
    return all(np.array_equal(p, q) for p, q in zip(a, b))


def nul_paths(folder):
    name = os.path.join(folder, "a\0b")
    return [("str", name), ("bytes", os.fsencode(name)), ("PathLike", pathlib.PurePath(name))]


def test_nul_in_path():
    loss = trained_loss()
    with tempfile.TemporaryDirectory(prefix="efl-paths-") as d:
        # the prefix before the NUL names a real checkpoint: a truncated path would load it
        loss.save_checkpoint(os.path.join(d, "a"))
        other = efl.EqualizedFocalLoss(5)
        before = other.read_state()
        for kind, path in nul_paths(d):
            try:
                loss.save_checkpoint(path)
            except ValueError:
                pass
            else:
                raise AssertionError("save_checkpoint accepted a %s path with a NUL byte" % kind)
            try:
                other.load_checkpoint(path)
            except ValueError:
                pass
            else:
                raise AssertionError("load_checkpoint accepted a %s path with a NUL byte" % kind)
            assert same_state(before, other.read_state()), "a refused load changed the state (%s)" % kind
        assert sorted(os.listdir(d)) == ["a"], "a refused save created files: %s" % sorted(os.listdir(d))
        # and open() agrees that such a path is a ValueError
        try:
            open(os.path.join(d, "a\0b"), "rb")
        except ValueError:
            pass
        else:
            raise AssertionError("open() accepted a NUL byte: the test's premise is wrong")


def test_fifo_refused():
    if not hasattr(os, "mkfifo"):
        return
    loss = trained_loss()
    before = loss.read_state()
    with tempfile.TemporaryDirectory(prefix="efl-paths-") as d:
        fifo = os.path.join(d, "fifo.ckpt")
        os.mkfifo(fifo)
        signal.alarm(10)  # a blocked open() ends the process instead of hanging the test
        try:
            loss.load_checkpoint(fifo)
        except efl.EflError as exc:
            assert exc.status == efl.Status.ERROR_IO, exc
        else:
            raise AssertionError("a FIFO loaded as a checkpoint")
        finally:
            signal.alarm(0)
    assert same_state(before, loss.read_state()), "a refused load changed the state"


TESTS = [test_nul_in_path, test_fifo_refused]


def main(argv):
    return run_tests(TESTS, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
