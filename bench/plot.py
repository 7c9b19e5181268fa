#!/usr/bin/python3
"""Plot an efl-bench sweep: G elements/s of the step against N, one line per device.

usage: plot.py results.json out.png [--native GELEM] [--c 1203] [--title TEXT]

results.json is what `efl-bench --cases sweep --json results.json` writes. For every device
in it, the "step" cases with C = 1203 (the sweep's column count; --c picks another) are drawn
as G elements/s against N on a log x axis (efl-bench's default "all" adds its LVIS case,
90000 x 1203, to the line as one more point). The device's copy ceiling is drawn as a dotted
horizontal line in its colour, converted to elements/s: a step reads 4 bytes of logits and
writes 4 bytes of gradient per element, so the ceiling is copy_gbps / 8 G elements/s (the
4 bytes of label per row are ignored: at C = 1203 they are 0.04% of the traffic).
--native GELEM adds a dashed line for the native C loop figure (efl-native-loop's G elements/s).

Needs matplotlib (Debian: apt-get install python3-matplotlib). No display is needed.
"""

import argparse
import json
import sys

BYTES_PER_ELEMENT = 8.0  # 4 read (logit) + 4 written (gradient)


def load(path, c):
    with open(path) as f:
        data = json.load(f)
    devices = []
    for dev in data.get("devices", []):
        pts = sorted((int(k["n"]), float(k["gelem_s"])) for k in dev.get("cases", [])
                     if k.get("op") == "step" and int(k.get("c", -1)) == c and float(k.get("gelem_s", 0)) > 0)
        if not pts:
            continue
        devices.append({
            "name": dev.get("name", "?").strip(),
            "platform": dev.get("platform", "").strip(),
            "copy_gbps": float(dev.get("copy_gbps", 0) or 0),
            "points": pts,
        })
    return devices


def short_name(dev):
    """'Portable Computing Language' + a long CPU name -> something that fits a legend."""
    name = " ".join(dev["name"].split())
    if len(name) > 48:
        name = name[:45] + "..."
    plat = dev["platform"]
    return "%s (%s)" % (name, plat) if plat else name


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("json", help="efl-bench --json output (with the sweep cases)")
    ap.add_argument("png", help="where to write the figure")
    ap.add_argument("--native", type=float, metavar="GELEM",
                    help="native C loop figure in G elements/s (efl-native-loop), drawn dashed")
    ap.add_argument("--c", type=int, default=1203, help="the column count of the cases to plot (default 1203)")
    ap.add_argument("--title", help="title (default: the device names)")
    args = ap.parse_args(argv)

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError as exc:
        sys.exit("plot.py: matplotlib is missing (%s); on Debian: apt-get install python3-matplotlib" % exc)

    devices = load(args.json, args.c)
    if not devices:
        sys.exit("plot.py: %s has no 'step' cases with C = %d (run efl-bench --cases sweep --json FILE)"
                 % (args.json, args.c))

    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    ymax = 0.0
    for i, dev in enumerate(devices):
        col = colors[i % len(colors)]
        ns = [p[0] for p in dev["points"]]
        gs = [p[1] for p in dev["points"]]
        ax.plot(ns, gs, marker="o", color=col, linewidth=2, label="EFL step: " + short_name(dev))
        ymax = max(ymax, max(gs))
        if dev["copy_gbps"] > 0:
            ceil = dev["copy_gbps"] / BYTES_PER_ELEMENT
            ax.axhline(ceil, color=col, linestyle=":", linewidth=1.5,
                       label="copy ceiling %.3g GB/s / 8 B per element = %.3g G elements/s"
                       % (dev["copy_gbps"], ceil))
            ymax = max(ymax, ceil)
    if args.native is not None and args.native > 0:
        ax.axhline(args.native, color="black", linestyle="--", linewidth=1.5,
                   label="native C loop (efl-native-loop): %.3g G elements/s" % args.native)
        ymax = max(ymax, args.native)

    ax.set_xscale("log")
    ax.set_xlabel("N (rows = anchors; C = %d classes)" % args.c)
    ax.set_ylabel("G elements/s  (N x C per second; higher is better)")
    ax.set_ylim(0, ymax * 1.15)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: "{:,.0f}".format(v)))
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", axis="x", alpha=0.12)
    title = args.title or "efl step, C = %d, float32: %s" % (
        args.c, "; ".join(" ".join(d["name"].split()) for d in devices))
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="best", framealpha=0.9)
    fig.tight_layout()
    fig.savefig(args.png)
    print("plot.py: wrote %s (%d device%s)" % (args.png, len(devices), "" if len(devices) == 1 else "s"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
