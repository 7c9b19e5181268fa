#!/usr/bin/python3
"""Draw efl-bench's JSON: per device, each case against the device's copy ceiling, and the N sweep.

usage: plot.py results.json out.png [--table FILE.csv] [--native GELEM] [--c 1203] [--title TEXT]

results.json is what `efl-bench --json results.json` writes (any cases, any devices). The PNG
has one row of panels per device that has cases in the file:

  left, "roofline": every case except the sweep points (every case if there are only sweep
      points), one bar each (step and forward coloured apart), its height the bytes per second
      the case moves, the device's measured copy ceiling (efl-bench's copy_gbps) as a
      horizontal line, and on each bar its GB/s and its percentage of that ceiling;
  right, "sweep": the sweep points (case "sweep": the step at C = 1203, float32) as G elements/s
      against N on a log axis, the copy ceiling converted to G elements/s with the sweep's
      bytes per element as a dotted line, and, where known, the native C loop's figure
      (efl-native-loop at the LVIS shape: the JSON's native_loop_gelem_s, or --native) as a
      dashed line. A device without sweep points gets the left panel over the whole row.

Bytes per element, from what a case moves, with s the bytes of one stored value of the row's
dtype (4 for f32/float32, 2 for f16/float16 and bf16/bfloat16) and one 4-byte label per row:

    step:     2 * s + 4 / C    (logit read, gradient written, the row's label read)
    forward:      s + 4 / C    (logit read, the row's label read)

    bytes/s   = G elements/s * 1e9 * bytes per element   (= efl-bench's own "gbps" * 1e9)
    ceiling   = copy_gbps * 1e9 bytes/s  (copy_gbps: a copy kernel's read + written bytes / s)
    ceiling in G elements/s = copy_gbps / bytes per element

--table FILE.csv writes what was drawn, one line per case and device: device, panel
(roofline | sweep), case, op, dtype, n, c, gelem_s, bytes_per_element, bytes_per_s,
ceiling_bytes_per_s, ceiling_gelem_s, fraction_of_ceiling (the ceiling columns are empty where
the device has no copy figure). JSON from an efl-bench older than the "case" field still
works: the step rows at C = --c (default 1203) in float32 count as the sweep there, and the
others are drawn as "(unnamed)".

Needs matplotlib (Debian: apt-get install python3-matplotlib); it draws with Agg, no display.
"""

import argparse
import csv
import json
import sys

DTYPE_BYTES = {"f32": 4, "float32": 4, "f16": 2, "float16": 2, "bf16": 2, "bfloat16": 2}
DTYPE_LONG = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}
LABEL_BYTES = 4  # one int32 label per row
SWEEP = "sweep"
TABLE_COLUMNS = ["device", "panel", "case", "op", "dtype", "n", "c", "gelem_s", "bytes_per_element",
                 "bytes_per_s", "ceiling_bytes_per_s", "ceiling_gelem_s", "fraction_of_ceiling"]


def bytes_per_element(op, dtype, c):
    """What one element of a case moves: see the module docstring."""
    s = DTYPE_BYTES[dtype]
    return (s if op == "forward" else 2 * s) + LABEL_BYTES / float(c)


def warn(msg):
    sys.stderr.write("plot.py: %s\n" % msg)


def load(path, sweep_c):
    """The devices of an efl-bench JSON file, each with its rows split into the two panels."""
    with open(path) as f:
        data = json.load(f)
    devices = []
    for i, dev in enumerate(data.get("devices") or []):
        name = str(dev.get("name") or "device %d" % i)
        copy = float(dev.get("copy_gbps") or 0.0)
        rows = []
        for k in dev.get("cases") or []:
            try:
                op = str(k.get("op", "step"))
                dtype = str(k.get("dtype", "f32"))
                n, c, g = int(k["n"]), int(k["c"]), float(k["gelem_s"])
            except (KeyError, TypeError, ValueError):
                warn("%s: a row without n, c or gelem_s, left out: %r" % (name, k))
                continue
            if dtype not in DTYPE_BYTES:
                warn("%s: unknown dtype %r, row left out" % (name, dtype))
                continue
            if not (g > 0.0) or c <= 0 or n <= 0:
                continue
            case = k.get("case")
            if case:
                is_sweep = case == SWEEP
            else:  # efl-bench before the "case" field
                is_sweep = op == "step" and c == sweep_c and DTYPE_BYTES[dtype] == 4
                case = SWEEP if is_sweep else "(unnamed)"
            bpe = bytes_per_element(op, dtype, c)
            row = {"case": str(case), "op": op, "dtype": dtype, "n": n, "c": c, "gelem_s": g,
                   "bytes_per_element": bpe, "bytes_per_s": g * 1e9 * bpe, "sweep": is_sweep}
            if copy > 0.0:
                row["ceiling_bytes_per_s"] = copy * 1e9
                row["ceiling_gelem_s"] = copy / bpe
                row["fraction_of_ceiling"] = row["bytes_per_s"] / row["ceiling_bytes_per_s"]
            rows.append(row)
        if not rows:
            warn("%s: no cases with a time in %s, not drawn" % (name, path))
            continue
        sweep = sorted((r for r in rows if r["sweep"]), key=lambda r: r["n"])
        roof = [r for r in rows if not r["sweep"]] or sweep  # sweep points only: in both panels
        devices.append({"name": name, "platform": str(dev.get("platform") or "").strip(),
                        "copy_gbps": copy, "native": float(dev.get("native_loop_gelem_s") or 0.0),
                        "roof": roof, "sweep": sweep})
    return devices


def table_rows(devices):
    for d in devices:
        panels = [("roofline", d["roof"]), ("sweep", d["sweep"])]
        for panel, rows in panels:
            for r in rows:
                out = dict(r, device=d["name"], panel=panel)
                out.pop("sweep", None)
                yield out


def write_table(path, devices):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(TABLE_COLUMNS)
        for r in table_rows(devices):
            w.writerow(["%.9g" % r[k] if isinstance(r.get(k), float) else r.get(k, "") for k in TABLE_COLUMNS])


def device_title(d):
    name = " ".join(d["name"].split())
    if len(name) > 60:
        name = name[:57] + "..."
    return "%s  [%s]" % (name, d["platform"]) if d["platform"] else name


def short_n(n):
    if n >= 1000000 and n % 100000 == 0:
        return "%gM" % (n / 1e6)
    if n >= 1000 and n % 100 == 0:
        return "%gk" % (n / 1e3)
    return str(n)


def draw_roofline(ax, d, colors, min_slots=6):
    rows = d["roof"]
    x = list(range(len(rows)))
    pad = max(0.0, (min_slots - len(rows)) / 2.0)  # a few cases: bars no wider than with min_slots
    right = len(rows) - 0.4 + pad
    gbs = [r["bytes_per_s"] / 1e9 for r in rows]
    cols = [colors["forward"] if r["op"] == "forward" else colors["step"] for r in rows]
    ax.bar(x, gbs, color=cols, width=0.65, zorder=2)
    top = max(gbs)
    ceil = d["copy_gbps"]
    if ceil > 0:
        ax.axhline(ceil, color=colors["ceiling"], linestyle="--", linewidth=1.8, zorder=3)
        ax.text(right - 0.1, ceil, "copy ceiling %.3g GB/s (measured)" % ceil, ha="right", va="bottom",
                fontsize=9, color=colors["ceiling"])
        top = max(top, ceil)
    for xi, r, g in zip(x, rows, gbs):
        txt = "%.3g" % g
        if "fraction_of_ceiling" in r:
            txt += "\n%.1f%%" % (100.0 * r["fraction_of_ceiling"])
        ax.text(xi, g + 0.01 * top, txt, ha="center", va="bottom", fontsize=8)
    labels = []
    for r in rows:
        labels.append("%s\n%s %s\n%s x %d" % (r["case"], r["op"], r["dtype"], short_n(r["n"]), r["c"]))
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_xlim(-0.6 - pad, right)
    ax.set_ylim(0, top * 1.22)
    ax.set_ylabel("GB/s moved (logits, gradient, labels)")
    ax.grid(True, axis="y", alpha=0.35, zorder=0)
    ax.set_title("%s\nbytes moved per second per case; labels: %s" % (
        device_title(d), "GB/s and % of the copy ceiling" if ceil > 0 else "GB/s (no copy ceiling in the JSON)"),
        fontsize=10)
    from matplotlib.patches import Patch
    handles = []
    if any(r["op"] != "forward" for r in rows):
        handles.append(Patch(color=colors["step"], label="step (reads logits, writes gradient)"))
    if any(r["op"] == "forward" for r in rows):
        handles.append(Patch(color=colors["forward"], label="forward (reads logits)"))
    ax.legend(handles=handles, fontsize=8, loc="upper left", framealpha=0.9)


def draw_sweep(ax, d, colors, native):
    from matplotlib.ticker import FuncFormatter
    rows = d["sweep"]
    groups = {}
    for r in rows:
        groups.setdefault((r["dtype"], r["c"]), []).append(r)
    top = 0.0
    for (dtype, c), rs in sorted(groups.items()):
        ns = [r["n"] for r in rs]
        gs = [r["gelem_s"] for r in rs]
        ax.plot(ns, gs, marker="o", color=colors["step"], linewidth=2, zorder=3,
                label="step, C = %d, %s" % (c, DTYPE_LONG.get(dtype, dtype)))
        last = 0
        for r in rs:
            if "fraction_of_ceiling" in r and r["n"] >= 1.5 * last:  # neighbours' labels would overlap
                last = r["n"]
                ax.annotate("%.0f%%" % (100.0 * r["fraction_of_ceiling"]), (r["n"], r["gelem_s"]),
                            textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
        top = max(top, max(gs))
        if "ceiling_gelem_s" in rs[0]:
            ceil = rs[0]["ceiling_gelem_s"]
            ax.axhline(ceil, color=colors["ceiling"], linestyle="--", linewidth=1.8, zorder=2,
                       label="copy ceiling: %.3g GB/s / %.4g B per element = %.3g G elements/s"
                       % (d["copy_gbps"], rs[0]["bytes_per_element"], ceil))
            top = max(top, ceil)
    if native > 0:
        ax.axhline(native, color="black", linestyle=":", linewidth=1.5, zorder=2,
                   label="native C loop (efl-native-loop, LVIS shape): %.3g G elements/s" % native)
        top = max(top, native)
    ax.set_xscale("log")
    lo, hi = rows[0]["n"], rows[-1]["n"]
    ax.set_xlim(lo / 1.6, hi * 1.6)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: "{:,.0f}".format(v)))
    ax.set_xlabel("N (rows = anchors), log scale")
    ax.set_ylabel("G elements/s (N x C per second)")
    ax.set_ylim(0, top * 1.25)
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", axis="x", alpha=0.12)
    ax.set_title("%s\nN sweep: G elements/s against N; labels: %% of the copy ceiling" % device_title(d), fontsize=10)
    ax.legend(fontsize=8, loc="upper left", framealpha=0.9)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("json", help="efl-bench --json output")
    ap.add_argument("png", help="where to write the figure")
    ap.add_argument("--table", metavar="FILE.csv", help="also write what was drawn as CSV (see above)")
    ap.add_argument("--native", type=float, metavar="GELEM",
                    help="native C loop figure in G elements/s for every device (default: the JSON's)")
    ap.add_argument("--c", type=int, default=1203,
                    help="JSON without case names: the sweep's column count (default 1203)")
    ap.add_argument("--title", help="a title above the whole figure")
    args = ap.parse_args(argv)

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        sys.stderr.write("plot.py: matplotlib is missing for %s (%s): no picture. "
                         "On Debian: apt-get install python3-matplotlib\n" % (sys.executable, exc))
        return 3

    try:
        devices = load(args.json, args.c)
    except (OSError, ValueError) as exc:
        sys.stderr.write("plot.py: cannot read %s: %s\n" % (args.json, exc))
        return 1
    if not devices:
        sys.stderr.write("plot.py: %s has no device with timed cases (efl-bench --json FILE writes them)\n"
                         % args.json)
        return 1

    colors = {"step": "#1f77b4", "forward": "#ff7f0e", "ceiling": "#d62728"}
    nd = len(devices)
    fig = plt.figure(figsize=(16, 5.6 * nd + (0.4 if args.title else 0)), dpi=100)
    gs = fig.add_gridspec(nd, 2, width_ratios=[1.5, 1])
    for i, d in enumerate(devices):
        if d["sweep"]:
            draw_roofline(fig.add_subplot(gs[i, 0]), d, colors)
            native = args.native if args.native is not None else d["native"]
            draw_sweep(fig.add_subplot(gs[i, 1]), d, colors, native)
        else:
            draw_roofline(fig.add_subplot(gs[i, :]), d, colors, min_slots=10)
    if args.title:
        fig.suptitle(args.title, fontsize=12)
    fig.tight_layout()
    fig.savefig(args.png)
    plt.close(fig)
    if args.table:
        write_table(args.table, devices)
    print("plot.py: wrote %s (%d device%s)%s" % (args.png, nd, "" if nd == 1 else "s",
                                                 "; table " + args.table if args.table else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
