#!/usr/bin/python3
"""ctest bench_plot: efl-bench's JSON and CSV name every case, and bench/plot.py draws what they say.

usage: check_plot.py EFL_BENCH PLOT_PY OUT_DIR     (EFL_DEVICE picks the device: ctest sets pocl)

1. plot.py on a made-up JSON (three devices: one with named cases, forward rows, 16-bit dtypes
   and a sweep; one without a sweep and without a copy figure; one without cases): the PNG,
   and its --table against the JSON as this script reads it. Needs no OpenCL device, so a
   missing matplotlib fails here whatever the machine has.
2. A tiny efl-bench run (coco, lvis-f16 with its forward, a three-point sweep, --min-time 0,
   --no-helpers) with --json and --csv: every row of both names its case, and both list the
   same rows.
3. plot.py on that JSON: the PNG, and its --table against the JSON: the same cases in the same
   panels, gelem_s as in the JSON, bytes per element worked out here from op, dtype and C
   (step 2 s + 4 / C, forward s + 4 / C; s = 4 for f32, 2 for f16 and bf16), bytes/s equal to
   efl-bench's own gbps, the ceiling equal to the device's copy_gbps, and the fraction of
   the ceiling equal to efl-bench's fraction_of_copy.
Exit 0: all held; 1: something did not; 77: no device matches EFL_DEVICE (after step 1).
"""

import csv
import json
import os
import struct
import subprocess
import sys

STORED = {"f32": 4, "f16": 2, "bf16": 2}
failures = []


def check(cond, msg):
    if not cond:
        failures.append(msg)
        print("FAIL: " + msg)
    return cond


def close(a, b, rel):
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-30)


def expected_rows(data):
    """(device, panel, case, op, dtype, n, c) -> (JSON row, copy_gbps), as the docstring says plot.py draws."""
    out = {}
    for dev in data["devices"]:
        rows = [k for k in dev["cases"] if k["gelem_s"] > 0]
        sweep = [k for k in rows if k["case"] == "sweep"]
        roof = [k for k in rows if k["case"] != "sweep"] or sweep
        for panel, ks in (("roofline", roof), ("sweep", sweep)):
            for k in ks:
                key = (dev["name"], panel, k["case"], k["op"], k["dtype"], int(k["n"]), int(k["c"]))
                check(key not in out, "two JSON rows for %r" % (key,))
                out[key] = (k, float(dev.get("copy_gbps") or 0.0))
    return out


def check_png(path, ndev):
    check(os.path.isfile(path), "%s was not written" % path)
    if not os.path.isfile(path):
        return
    with open(path, "rb") as f:
        head = f.read(24)
    check(head[:8] == b"\x89PNG\r\n\x1a\n", "%s does not start with the PNG signature: %r" % (path, head[:8]))
    check(head[12:16] == b"IHDR", "%s: no IHDR chunk first" % path)
    w, h = struct.unpack(">II", head[16:24])
    print("%s: %d x %d pixels, %d bytes" % (path, w, h, os.path.getsize(path)))
    check(800 <= w <= 4000, "%s: width %d is not plausible" % (path, w))
    check(300 * ndev <= h <= 1000 * ndev, "%s: height %d is not plausible for %d device rows" % (path, h, ndev))
    check(os.path.getsize(path) > 20000, "%s: %d bytes, too small for the panels" % (path, os.path.getsize(path)))


def run_plot(plot_py, json_path, png, table):
    for p in (png, table):
        if os.path.exists(p):
            os.remove(p)
    r = subprocess.run([sys.executable, plot_py, json_path, png, "--table", table],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    sys.stdout.write(r.stdout)
    return check(r.returncode == 0, "plot.py %s exited %d (matplotlib missing? setup.sh installs "
                 "python3-matplotlib)" % (json_path, r.returncode))


def check_table(table, data, against_bench):
    """plot.py's table against the JSON; against_bench: also against efl-bench's own gbps and fraction."""
    want = expected_rows(data)
    with open(table, newline="") as f:
        got = list(csv.DictReader(f))
    seen = set()
    for t in got:
        key = (t["device"], t["panel"], t["case"], t["op"], t["dtype"], int(t["n"]), int(t["c"]))
        if not check(key in want, "table row %r is not in the JSON" % (key,)):
            continue
        check(key not in seen, "table row %r twice" % (key,))
        seen.add(key)
        k, copy = want[key]
        g = float(t["gelem_s"])
        s = STORED[k["dtype"]]
        bpe = (s if k["op"] == "forward" else 2 * s) + 4.0 / k["c"]
        check(close(g, k["gelem_s"], 1e-8), "%r: gelem_s %r, the JSON says %r" % (key, g, k["gelem_s"]))
        check(close(float(t["bytes_per_element"]), bpe, 1e-8), "%r: %s bytes per element, want %r"
              % (key, t["bytes_per_element"], bpe))
        bps = float(t["bytes_per_s"])
        check(close(bps, k["gelem_s"] * 1e9 * bpe, 1e-8), "%r: bytes_per_s %r, want %r" % (key, bps, k["gelem_s"] * 1e9 * bpe))
        if against_bench:  # efl-bench's own bytes: %.6g on both sides
            check(close(bps, k["gbps"] * 1e9, 1e-4), "%r: bytes_per_s %r, efl-bench's gbps %r" % (key, bps, k["gbps"]))
        if copy > 0:
            check(close(float(t["ceiling_bytes_per_s"]), copy * 1e9, 1e-8),
                  "%r: ceiling %s bytes/s, the device's copy_gbps is %r" % (key, t["ceiling_bytes_per_s"], copy))
            check(close(float(t["ceiling_gelem_s"]), copy / bpe, 1e-8), "%r: ceiling_gelem_s %s" % (key, t["ceiling_gelem_s"]))
            fr = float(t["fraction_of_ceiling"])
            check(close(fr, bps / (copy * 1e9), 1e-7), "%r: fraction_of_ceiling %r" % (key, fr))
            if against_bench:
                check(close(fr, k["fraction_of_copy"], 1e-4),
                      "%r: fraction_of_ceiling %r, efl-bench's fraction_of_copy %r" % (key, fr, k["fraction_of_copy"]))
        else:
            check(t["ceiling_bytes_per_s"] == t["ceiling_gelem_s"] == t["fraction_of_ceiling"] == "",
                  "%r: a ceiling for a device without a copy figure" % (key,))
    for key in want:
        check(key in seen, "the JSON's %r is not in the table" % (key,))
    print("%s: %d rows checked against the JSON" % (table, len(got)))
    return len({k[0] for k in want})


def made_up_json(path):
    def row(case, op, n, c, dtype, g):
        return {"case": case, "op": op, "n": n, "c": c, "dtype": dtype, "median_s": n * c / g / 1e9,
                "gbps": 0.0, "fraction_of_copy": 0.0, "gelem_s": g}
    full = {"name": "Made-up GPU", "platform": "Test", "copy_gbps": 800.0, "read_gbps": 900.0,
            "native_loop_gelem_s": 0, "cases": [
                row("lvis", "step", 90000, 1203, "f32", 80.0), row("lvis", "forward", 90000, 1203, "f32", 150.0),
                row("coco", "step", 90000, 80, "f32", 60.0), row("lvis-f16", "step", 90000, 1203, "f16", 150.0),
                row("lvis-bf16", "forward", 90000, 1203, "bf16", 300.0)]
            + [row("sweep", "step", n, 1203, "f32", 20.0 + n / 2000.0) for n in (1000, 10000, 100000)]}
    nosweep = {"name": "Made-up CPU, no sweep, no copy figure", "platform": "Test", "copy_gbps": 0,
               "cases": [row("coco", "step", 90000, 80, "f32", 0.5), row("lvis-f16", "forward", 90000, 1203, "f16", 0.4)]}
    empty = {"name": "Made-up device without cases", "platform": "Test", "copy_gbps": 10.0, "cases": []}
    data = {"devices": [full, nosweep, empty]}
    with open(path, "w") as f:
        json.dump(data, f)
    return data


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__.split("\n")[2])
    bench, plot_py, out = sys.argv[1:]
    os.makedirs(out, exist_ok=True)

    print("== 1. plot.py on a made-up JSON of three devices")
    fake = os.path.join(out, "made-up.json")
    data = made_up_json(fake)
    png, table = os.path.join(out, "made-up.png"), os.path.join(out, "made-up-table.csv")
    if run_plot(plot_py, fake, png, table):
        ndev = check_table(table, data, False)
        check(ndev == 2, "%d devices drawn, want 2 (the one without cases left out)" % ndev)
        check_png(png, 2)
    if failures:
        return 1

    print("== 2. a tiny efl-bench run on EFL_DEVICE=%s" % os.environ.get("EFL_DEVICE", "(all)"))
    js, cs = os.path.join(out, "bench.json"), os.path.join(out, "bench.csv")
    for p in (js, cs):
        if os.path.exists(p):
            os.remove(p)
    cmd = [bench, "--cases", "coco,lvis-f16", "--sweep", "1000,3000,10000", "--min-time", "0", "--no-helpers",
           "--json", js, "--csv", cs]
    print(" ".join(cmd))
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    sys.stdout.write(r.stdout)
    if r.returncode != 0 and "efl-bench: no OpenCL device" in r.stdout:
        print("SKIP: no OpenCL device matches EFL_DEVICE")
        return 77
    if not check(r.returncode == 0, "efl-bench exited %d" % r.returncode):
        return 1
    with open(js) as f:
        data = json.load(f)
    with open(cs, newline="") as f:
        crows = list(csv.DictReader(f))
    jrows = [(d["name"], k) for d in data["devices"] for k in d["cases"]]
    check(len(jrows) > 0, "the JSON has no rows")
    for name, k in jrows:
        check(isinstance(k.get("case"), str) and k["case"] != "", "JSON row without a case name: %r" % k)
    for c in crows:
        check((c.get("case") or "") != "", "CSV row without a case name: %r" % c)
    key_j = [(name, k.get("case"), k["op"], str(k["n"]), str(k["c"]), k["dtype"]) for name, k in jrows]
    key_c = [(c["device"], c.get("case"), c["op"], c["n"], c["c"], c["dtype"]) for c in crows]
    check(key_j == key_c, "the JSON's and the CSV's rows differ:\n  %r\n  %r" % (key_j, key_c))
    for (name, k), c in zip(jrows, crows):
        for field in ("median_s", "gbps", "fraction_of_copy", "gelem_s"):
            check(close(float(c[field]), float(k[field]), 1e-9), "%s %s: %s %s in the CSV, %s in the JSON"
                  % (name, k.get("case"), field, c[field], k[field]))
    cases = {(k.get("case"), k["op"]) for _, k in jrows}
    want = {("coco", "step"), ("lvis-f16", "step"), ("lvis-f16", "forward"), ("sweep", "step")}
    check(want <= cases, "the JSON's cases %s lack some of %s" % (sorted(cases), sorted(want)))
    nsweep = sorted(k["n"] for _, k in jrows if k.get("case") == "sweep")
    check(nsweep == [1000, 3000, 10000], "sweep points %r, want [1000, 3000, 10000]" % nsweep)
    for d in data["devices"]:
        check(d.get("copy_gbps", 0) > 0, "%s: no copy figure" % d["name"])

    print("== 3. plot.py on efl-bench's JSON")
    png, table = os.path.join(out, "bench.png"), os.path.join(out, "bench-table.csv")
    if run_plot(plot_py, js, png, table):
        ndev = check_table(table, data, True)
        check_png(png, ndev)
    if failures:
        print("%d check(s) failed" % len(failures))
        return 1
    print("bench_plot: all checks held; the picture is %s" % png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
