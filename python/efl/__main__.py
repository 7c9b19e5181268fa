"""python -m efl: the OpenCL devices libefl sees and which one it picks.

Prints the library's version and path, one line per device ("P:D platform [vendor] / device | type,
OpenCL version, compute units, global memory"), and the device that EFL_DEVICE (or --device)
picks, or the default rule when neither is given. Marks: "*" the picked device, "+" the other
devices the selector matches. Exit status: 0 a device is picked; 2 the selector matches none
(the listing still printed, the reason on stderr) or the command line is wrong; 1 no OpenCL
device at all, or libefl cannot be loaded.
"""

import argparse
import ctypes
import ctypes.util
import os
import shlex
import sys

from . import EflError, Status, _describe, _device_handles, _fn, library_path, version

_CL_DEVICE_MAX_COMPUTE_UNITS = 0x1002
_CL_DEVICE_GLOBAL_MEM_SIZE = 0x101F
_CL_DEVICE_VERSION = 0x102F
_RULE = "the default rule: first GPU, else first CPU, else first device"


def _opencl():
    """The OpenCL library libefl uses, for the details of each device; None if not found."""
    for name in ("libOpenCL.so.1", ctypes.util.find_library("OpenCL")):
        if not name:
            continue
        try:
            cl = ctypes.CDLL(name)
        except OSError:
            continue
        cl.clGetDeviceInfo.restype = ctypes.c_int32
        cl.clGetDeviceInfo.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_size_t, ctypes.c_void_p,
                                       ctypes.POINTER(ctypes.c_size_t)]
        return cl
    return None


def _details(cl, handle):
    """ "cpu, OpenCL 3.0, 2 compute units, 8.09 GiB": the type from libefl, the rest from OpenCL."""
    out = [_fn("efl_device_type_name")(handle).decode("ascii", "replace")]
    if cl is None:
        return out[0]
    text = ctypes.create_string_buffer(512)
    if cl.clGetDeviceInfo(handle, _CL_DEVICE_VERSION, 511, text, None) == 0:
        out.append(" ".join(text.value.decode("utf-8", "replace").split()[:2]))  # "OpenCL 3.0"
    units = ctypes.c_uint32()
    if cl.clGetDeviceInfo(handle, _CL_DEVICE_MAX_COMPUTE_UNITS, 4, ctypes.byref(units), None) == 0:
        out.append(_plural(units.value, "compute unit"))
    mem = ctypes.c_uint64()
    if cl.clGetDeviceInfo(handle, _CL_DEVICE_GLOBAL_MEM_SIZE, 8, ctypes.byref(mem), None) == 0:
        out.append("%.2f GiB" % (mem.value / 2.0**30))
    return ", ".join(out)


def _plural(n, word):
    return "%d %s%s" % (n, word, "" if n == 1 else "s")


def _selector(args):
    """(selector, how it was given: "--device=pocl", "EFL_DEVICE=pocl", or None for the rule)."""
    env = os.environ.get("EFL_DEVICE", "")
    if args.device:
        over = " (instead of EFL_DEVICE=%s)" % shlex.quote(env) if env else ""
        return args.device, "--device=%s%s" % (shlex.quote(args.device), over)
    if args.device == "" or not env:
        return "", None
    return env, "EFL_DEVICE=%s" % shlex.quote(env)


def _why(args, given, matched, types):
    if given:
        return "by %s, the first of the %s it matches" % (given, _plural(matched, "device"))
    took = "a GPU" if "gpu" in types else "no GPU, a CPU" if "cpu" in types else "no GPU or CPU"
    return "by %s (%s here; %s)" % (_RULE, took, "--device is empty" if args.device == "" else "EFL_DEVICE is not set")


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m efl",
        description="List the OpenCL devices libefl sees and the one EFL_DEVICE (or the default rule) picks.",
        epilog="Selectors: P:D, P, gpu, cpu, accelerator, TYPE:NAME (gpu:nvidia), or a name substring "
        "(pocl, llvmpipe); see docs/devices.md. Exit status: 0 a device is picked, 2 the selector matches "
        "none, 1 no OpenCL device.")
    parser.add_argument("--device", metavar="SEL",
                        help="show what this selector matches and picks, instead of EFL_DEVICE")
    args = parser.parse_args(argv)
    selector, given = _selector(args)
    try:
        header = "efl %s, library %s" % (version(), library_path())
        cl = _opencl()
        listing = [(h, line, _details(cl, h)) for h, line in _device_handles()]
        matched = {h for h, _ in _device_handles(selector)} if given else set()
        picked = ctypes.c_void_p()
        st = _fn("efl_device_pick")(selector.encode("utf-8"), ctypes.byref(picked))
    except (OSError, NotImplementedError) as exc:
        print("efl: %s" % exc, file=sys.stderr)
        return 1
    print(header)
    print("OpenCL devices: %d" % len(listing))
    for handle, line, details in listing:
        mark = "*" if st == Status.OK and handle == picked.value else "+" if handle in matched else " "
        print("%s %s | %s" % (mark, line, details))
    if st == Status.OK:
        where = _describe(picked).split(" ", 1)[0]
        types = [details.split(",")[0] for _, _, details in listing]
        print("picked (*): %s, %s" % (where, _why(args, given, len(matched), types)))
        return 0
    if st == Status.ERROR_DEVICE_NOT_FOUND:
        print("efl: %s matches none of the %s listed (selectors: P:D, P, gpu, cpu, accelerator, TYPE:NAME, "
              "or a name substring)" % (given, _plural(len(listing), "device")), file=sys.stderr)
        return 2
    if st == Status.ERROR_NO_DEVICE:
        print("efl: no OpenCL device found (clinfo -l lists what the OpenCL loader sees; Mesa's rusticl "
              "lists devices only with RUSTICL_ENABLE, e.g. RUSTICL_ENABLE=llvmpipe)", file=sys.stderr)
        return 1
    print("efl: %s" % EflError(st), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
