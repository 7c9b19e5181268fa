#!/usr/bin/python3
"""`python -m efl` (python/efl/__main__.py) against clinfo, which asks the OpenCL loader itself.

- Its device lines are clinfo -l's devices: the same count, "P:D" indices, platform and device
  names, and clinfo --raw's platform vendor and device type.
- The marked pick: the default rule (first GPU, else first CPU) without EFL_DEVICE; the first CPU
  for "cpu" ("+" on the other CPUs), the first device named "pocl", each "P:D"; --device instead
  of EFL_DEVICE.
- "gpu" on a machine without one, and a bogus name, exit 2 with the listing and a message on
  stderr; no OpenCL device at all (an empty OCL_ICD_VENDORS folder) exits 1.
Exit: 0 all passed, 1 a test failed, 77 skipped (no OpenCL device, or clinfo missing).
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

import efl
from _common import run_tests  # this folder is on sys.path: the script's own

TYPES = ("gpu", "cpu", "accelerator")


def clinfo():
    """[{p, d, platform, vendor, name, type}] from clinfo -l (indices, names) and clinfo --raw
    (platform vendors, device types), in platform then device order."""
    out = subprocess.run(["clinfo", "-l"], capture_output=True, text=True, check=True).stdout
    devices, platform, p = [], None, -1
    for line in out.splitlines():
        m = re.match(r"Platform #(\d+): (.*)$", line)
        if m:
            p, platform = int(m.group(1)), m.group(2)
            continue
        m = re.match(r"\s*\S-- Device #(\d+): (.*)$", line)
        assert m or not line.strip(), "unexpected clinfo -l line %r" % line
        if m:
            devices.append({"p": p, "d": int(m.group(1)), "platform": platform, "name": m.group(2)})
    raw = subprocess.run(["clinfo", "--raw"], capture_output=True, text=True, check=True).stdout
    vendors, types, p = [], {}, -1
    for line in raw.splitlines():
        m = re.match(r"  CL_PLATFORM_VENDOR\s+(.*)$", line)  # the platform list, unprefixed
        if m:
            vendors.append(m.group(1).strip())
        if re.match(r"\[[^\]/]+/\*\]\s+CL_PLATFORM_NAME\s", line):  # a platform's devices follow
            p += 1
        m = re.match(r"\[[^\]/]+/(\d+)\]\s+CL_DEVICE_TYPE\s+(.*)$", line)
        if m:
            types[(p, int(m.group(1)))] = m.group(2)
    assert len(types) == len(devices), "clinfo --raw lists %d devices, -l %d" % (len(types), len(devices))
    for dev in devices:
        dev["vendor"] = vendors[dev["p"]]
        flags = types[(dev["p"], dev["d"])]
        dev["type"] = next((t for t in TYPES if "CL_DEVICE_TYPE_%s" % t.upper() in flags), "other")
    return devices


def run_cli(*args, device=None, env=None):
    """(exit status, stdout, stderr) of `python -m efl args` with EFL_DEVICE=device (None: unset)."""
    e = dict(os.environ)
    e.pop("EFL_DEVICE", None)
    if device is not None:
        e["EFL_DEVICE"] = device
    e.update(env or {})
    r = subprocess.run([sys.executable, "-m", "efl", *args], capture_output=True, text=True, env=e, timeout=120)
    return r.returncode, r.stdout, r.stderr


def parse(stdout):
    """{"header", "count", "devices": [(mark, p, d, label, details)], "picked"}; any other line fails."""
    lines = stdout.splitlines()
    assert len(lines) >= 2, stdout
    out = {"header": lines[0], "devices": [], "picked": None}
    m = re.match(r"OpenCL devices: (\d+)$", lines[1])
    assert m, stdout
    out["count"] = int(m.group(1))
    for line in lines[2:]:
        m = re.match(r"([*+ ]) (\d+):(\d+) (.*) \| (\S+?)(,.*)?$", line)
        if m:
            assert out["picked"] is None, "a device line after the pick line:\n" + stdout
            out["devices"].append((m.group(1), int(m.group(2)), int(m.group(3)), m.group(4), m.group(5)))
            continue
        m = re.match(r"picked \(\*\): (\d+:\d+), by (.*)$", line)
        assert m and out["picked"] is None, "unexpected line %r in:\n%s" % (line, stdout)
        out["picked"] = (m.group(1), m.group(2))
    assert out["count"] == len(out["devices"]), stdout
    return out


def check_listing(out, devices):
    """The device lines are clinfo's devices."""
    assert out["count"] == len(devices), "python -m efl lists %d devices, clinfo %d" % (out["count"], len(devices))
    for (_, p, d, label, dtype), dev in zip(out["devices"], devices):
        want = "%s [%s] / %s" % (dev["platform"], dev["vendor"], dev["name"])
        assert (p, d, label, dtype) == (dev["p"], dev["d"], want, dev["type"]), (p, d, label, dtype, dev)


def check_pick(out, devices, picked, matched, reason):
    """picked: the clinfo device marked "*"; matched: those marked "+" (or "*")."""
    check_listing(out, devices)
    marks = {(p, d): mark for mark, p, d, _, _ in out["devices"]}
    for dev in devices:
        key = (dev["p"], dev["d"])
        want = "*" if dev is picked else "+" if any(dev is m for m in matched) else " "
        assert marks[key] == want, "device %d:%d marked %r, want %r" % (key + (marks[key], want))
    assert out["picked"] and out["picked"][0] == "%d:%d" % (picked["p"], picked["d"]), out
    assert reason in out["picked"][1], "reason %r lacks %r" % (out["picked"][1], reason)


def named(devices, text):
    return [d for d in devices if any(text.lower() in d[k].lower() for k in ("platform", "vendor", "name"))]


def test_listing_and_default_rule():
    devices = clinfo()
    rc, stdout, stderr = run_cli()
    assert rc == 0 and not stderr, (rc, stdout, stderr)
    out = parse(stdout)
    assert out["header"] == "efl %s, library %s" % (efl.version(), efl.library_path()), out["header"]
    rule = [d for d in devices if d["type"] == "gpu"] or [d for d in devices if d["type"] == "cpu"] or devices
    check_pick(out, devices, rule[0], [], "default rule")


def test_cpu():
    devices = clinfo()
    cpus = [d for d in devices if d["type"] == "cpu"]
    assert cpus, "no CPU device in clinfo"
    for args, device, reason in [((), "cpu", "EFL_DEVICE=cpu"), ((), "CPU", "EFL_DEVICE=CPU"),
                                 (("--device", "cpu"), None, "--device=cpu"),
                                 (("--device", "cpu"), "no-such-device-xyz", "instead of EFL_DEVICE")]:
        rc, stdout, stderr = run_cli(*args, device=device)
        assert rc == 0 and not stderr, (args, device, rc, stdout, stderr)
        check_pick(parse(stdout), devices, cpus[0], cpus, reason)


def test_names_and_indices():
    devices = clinfo()
    for sel, want in [("pocl", named(devices, "pocl")),
                      ("cpu:pocl", [d for d in named(devices, "pocl") if d["type"] == "cpu"])]:
        rc, stdout, stderr = run_cli(device=sel)
        if not want:
            assert rc == 2, (sel, rc, stdout, stderr)
            continue
        assert rc == 0 and not stderr, (sel, rc, stdout, stderr)
        check_pick(parse(stdout), devices, want[0], want, "EFL_DEVICE=" + sel)
    for dev in devices:
        sel = "%d:%d" % (dev["p"], dev["d"])
        rc, stdout, stderr = run_cli("--device", sel)
        assert rc == 0, (sel, rc, stdout, stderr)
        check_pick(parse(stdout), devices, dev, [dev], "--device=" + sel)


def check_no_match(rc, stdout, stderr, devices, given):
    assert rc == 2, (given, rc, stdout, stderr)
    out = parse(stdout)
    check_listing(out, devices)
    assert out["picked"] is None and all(m == " " for m, *_ in out["devices"]), stdout
    assert stderr.startswith("efl: %s" % given) and " matches none of the " in stderr, stderr


def test_gpu():
    devices = clinfo()
    gpus = [d for d in devices if d["type"] == "gpu"]
    rc, stdout, stderr = run_cli(device="gpu")
    if gpus:
        assert rc == 0, (rc, stdout, stderr)
        check_pick(parse(stdout), devices, gpus[0], gpus, "EFL_DEVICE=gpu")
    else:
        check_no_match(rc, stdout, stderr, devices, "EFL_DEVICE=gpu")


def test_no_match():
    devices = clinfo()
    check_no_match(*run_cli(device="no-such-device-xyz"), devices, "EFL_DEVICE=no-such-device-xyz")
    check_no_match(*run_cli("--device", "cpu:no-such-device-xyz", device="cpu"), devices,
                   "--device=cpu:no-such-device-xyz")


def test_no_device_and_help():
    with tempfile.TemporaryDirectory(prefix="efl-no-icd-") as empty:  # the ICD loader finds no vendor
        rc, stdout, stderr = run_cli(env={"OCL_ICD_VENDORS": empty})
    assert rc == 1 and parse(stdout)["count"] == 0 and "no OpenCL device" in stderr, (rc, stdout, stderr)
    rc, stdout, stderr = run_cli("-h")
    assert rc == 0 and stdout.startswith("usage: python -m efl") and not stderr, (rc, stdout, stderr)


TESTS = [test_listing_and_default_rule, test_cpu, test_names_and_indices, test_gpu, test_no_match,
         test_no_device_and_help]


def main(argv):
    if shutil.which("clinfo") is None:
        print("SKIP: clinfo is not installed (the independent listing)")
        return 77
    return run_tests(TESTS, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
