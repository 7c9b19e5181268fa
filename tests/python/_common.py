"""What the Python test scripts share: running their tests as a script.

The scripts import this from their own folder (Python puts a script's folder first on sys.path),
so they still run standalone with PYTHONPATH set only to the binding (python/). It imports
neither torch nor numpy: test_dtypes.py runs without torch.
"""

import os
import sys
import time
import traceback

import efl


def run_tests(tests, argv, banner=""):
    """Runs the tests named on the command line (any substring of a test's name; all of them
    without arguments), each reported "ok" or "FAIL" with its time and traceback, and returns the
    exit status: 0 all passed, 1 a test failed or the library cannot be set up, 77 skipped (no
    OpenCL device, or none matching EFL_DEVICE). banner is added to the "efl <version> from
    <library>" line."""
    selected = [t for t in tests if len(argv) < 2 or any(a in t.__name__ for a in argv[1:])]
    try:
        efl.warmup()
    except OSError as exc:
        print("FAIL: cannot load libefl: %s" % exc)
        print("0 passed, 1 failed")
        return 1
    except efl.EflError as exc:
        if exc.status == efl.Status.ERROR_NO_DEVICE:
            print("SKIP: no OpenCL device (%s)" % exc)
            return 77
        if exc.status == efl.Status.ERROR_DEVICE_NOT_FOUND and os.environ.get("EFL_DEVICE"):
            print("SKIP: this machine has no device matching EFL_DEVICE=%s" % os.environ["EFL_DEVICE"])
            return 77
        print("FAIL: cannot set up the default context: %s" % exc)
        print("0 passed, 1 failed")
        return 1
    print("efl %s from %s%s" % (efl.version(), efl.library_path(), banner))
    passed = failed = 0
    for t in selected:
        t0 = time.perf_counter()
        try:
            t()
        except Exception:
            failed += 1
            print("FAIL %s (%.2fs)" % (t.__name__, time.perf_counter() - t0))
            traceback.print_exc(file=sys.stdout)
        else:
            passed += 1
            print("ok   %s (%.2fs)" % (t.__name__, time.perf_counter() - t0))
        sys.stdout.flush()
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0
