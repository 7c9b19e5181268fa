#!/bin/sh
# Runs a script under tinygrad in the tested range (REQUIREMENT in python/efl/tinygrad.py, the one
# place it is written), from a venv made once and reused:
#
#   tests/python/tinygrad_venv.sh <venv dir> <script> [args...]
#
# The venv is made with /usr/bin/python3 -m venv --system-site-packages (Debian's numpy; nothing
# big downloaded) and pip installs the pinned tinygrad from PyPI into it; it is reused while it
# holds a tinygrad in the range. Outside CI, when pip cannot reach PyPI, this prints why and exits
# 77 (ctest: skipped); under CI=true scripts/ctest-skips.sh turns that skip into a failure.
# Exit: the script's own (0 passed, 1 failed, 77 skipped), 77 when tinygrad cannot be installed.
set -eu

if [ $# -lt 2 ]; then
    echo "usage: $0 <venv dir> <script> [args...]" >&2
    exit 2
fi
venv=$1
shift
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
req=$(sed -n 's/^REQUIREMENT = "\(.*\)"$/\1/p' "$src/python/efl/tinygrad.py")
[ -n "$req" ] || { echo "FAIL: no REQUIREMENT line in $src/python/efl/tinygrad.py"; exit 1; }

have() {
    [ -x "$venv/bin/python" ] && "$venv/bin/python" - "$req" <<'PY' 2>/dev/null
import importlib.metadata, re, sys
spec = sys.argv[1]
v = tuple(int(p) for p in re.findall(r"\d+", importlib.metadata.version("tinygrad"))[:3])
lo = tuple(int(p) for p in re.search(r">=([\d.]+)", spec).group(1).split("."))
hi = tuple(int(p) for p in re.search(r"<([\d.]+)", spec).group(1).split("."))
sys.exit(0 if lo <= v and v[:len(hi)] < hi else 1)
PY
}

if ! have; then
    rm -rf "$venv"
    /usr/bin/python3 -m venv --system-site-packages "$venv" || { echo "FAIL: cannot create the venv $venv"; exit 1; }
    log=$venv/pip-install.log
    if ! "$venv/bin/python" -m pip install --no-cache-dir --disable-pip-version-check "$req" >"$log" 2>&1; then
        tail -5 "$log"
        rm -rf "$venv"
        echo "SKIP: pip could not install '$req' from PyPI (no network?); see the lines above"
        exit 77
    fi
    echo "installed $("$venv/bin/python" -m pip list --disable-pip-version-check 2>/dev/null | grep -i '^tinygrad ') into $venv"
fi
exec "$venv/bin/python" "$@"
