#!/bin/sh
# `pip install .` into a fresh virtual environment, then the installed package checked from a
# folder outside the source tree, with EFL_LIBRARY and PYTHONPATH unset (docs/python.md).
#
#   tests/python/pip_install.sh <source dir> <work dir>
#
# The venv (<work dir>/venv, --system-site-packages: Debian's numpy and torch, nothing big
# downloaded; pip fetches scikit-build-core for its build isolation) and the CMake build folder
# of the wheel (<work dir>/cmake-build, so that nothing is built in the source tree) are deleted
# and made again on every run. Checked:
# - efl.__file__ and efl._lib.library_path() lie in the venv; the library is the plain file
#   efl/libefl.so of the package; the distribution holds every python/efl/*.py, that library
#   and nothing else (no headers, CMake package, efl.pc, static library or efl_mpi), and its
#   version is project(efl VERSION ...) of CMakeLists.txt and the library's own;
# - three EqualizedFocalLoss.step calls (loss, gradient, state) against a float64 numpy
#   reference written here from docs/semantics.md;
# - efl.torch.EqualizedFocalLossModule forward + backward: loss, logits.grad and state equal
#   the numpy binding's on the same batch (torch is required: a missing torch fails);
# - `python -m efl` exits 0, when python/efl/__main__.py exists.
# Exit: 0 passed, 1 failed, 77 skipped (no OpenCL device matching EFL_DEVICE).
set -eu

if [ $# -ne 2 ]; then
    echo "usage: $0 <source dir> <work dir>" >&2
    exit 2
fi
src=$(cd "$1" && pwd)
work=$2
venv=$work/venv
fail() {
    echo "FAIL: $*"
    exit 1
}

rm -rf "$work"
mkdir -p "$work"
work=$(cd "$work" && pwd)
venv=$work/venv
unset EFL_LIBRARY PYTHONPATH
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"

/usr/bin/python3 -m venv --system-site-packages "$venv" || fail "cannot create the venv $venv"
/usr/bin/python3 -c "import torch" 2>/dev/null ||
    fail "/usr/bin/python3 has no torch (Debian: python3-torch): efl.torch cannot be checked"

start=$(date +%s)
"$venv/bin/python" -m pip install --no-cache-dir --config-settings=build-dir="$work/cmake-build" "$src" ||
    fail "pip install $src"
echo "pip install: $(($(date +%s) - start)) s"
[ -f "$work/cmake-build/CMakeCache.txt" ] || fail "the wheel was not built in $work/cmake-build"
[ ! -e "$src/python/efl/libefl.so" ] || fail "$src/python/efl/libefl.so exists: the build wrote into the source tree"

tmp=$(mktemp -d /tmp/efl-pip-check.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
set +e
"$venv/bin/python" - "$venv" "$src" <<'EOF'
import importlib.metadata
import os
import re
import sys

import numpy as np

venv, src = sys.argv[1], sys.argv[2]


def inside(path, root):
    path, root = os.path.realpath(path), os.path.realpath(root)
    return os.path.commonpath([path, root]) == root


assert not inside(os.getcwd(), src), "the check must run outside the source tree"
assert "EFL_LIBRARY" not in os.environ and "PYTHONPATH" not in os.environ

import efl
import efl._lib

# ------------------------------------------------------------------ what was installed
assert inside(efl.__file__, venv), "efl imported from %s, not from the venv %s" % (efl.__file__, venv)
pkg = os.path.dirname(os.path.abspath(efl.__file__))
lib = efl._lib.library_path()
assert inside(lib, venv), "libefl loaded from %s, not from the venv" % lib
assert lib == os.path.join(pkg, "libefl.so"), "libefl loaded from %s, not from the package %s" % (lib, pkg)
assert os.path.isfile(lib) and not os.path.islink(lib), "%s is not a plain file" % lib

dist = importlib.metadata.distribution("efl")
recorded = {str(f).replace(os.sep, "/") for f in dist.files}
dist_info = {f for f in recorded if f.split("/")[0].endswith(".dist-info")}
in_pkg = {f for f in recorded - dist_info if "__pycache__/" not in f}
want = {"efl/" + n for n in os.listdir(os.path.join(src, "python", "efl")) if n.endswith(".py")}
want.add("efl/libefl.so")
assert in_pkg == want, "the wheel installed %s; expected %s" % (sorted(in_pkg), sorted(want))
unwanted = ("efl.h", "libefl.a", "efl.pc", "eflConfig.cmake", "eflTargets.cmake")
for root, dirs, files in os.walk(venv):
    for name in files:
        assert name not in unwanted and not name.startswith("libefl_mpi"), \
            "installed into the venv: %s" % os.path.join(root, name)
with open(os.path.join(src, "CMakeLists.txt")) as f:
    project_version = re.search(r"project\(efl\s+VERSION\s+([0-9.]+)", f.read()).group(1)
assert dist.version == project_version, (dist.version, project_version)
assert efl.version() == project_version, (efl.version(), project_version)
print("efl %s from %s" % (dist.version, lib))

try:
    efl.warmup()
except efl.EflError as exc:
    if exc.status in (efl.Status.ERROR_NO_DEVICE, efl.Status.ERROR_DEVICE_NOT_FOUND):
        print("SKIP: no OpenCL device (EFL_DEVICE=%s): %s" % (os.environ.get("EFL_DEVICE"), exc))
        sys.exit(77)
    raise


# ------------------------------------------------- the numpy binding against float64
def sigmoid(z):
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def log_sigmoid(z):
    return -np.logaddexp(0.0, -z)


def reference(x, y, g, normalizer, C, gamma=2.0, alpha=0.25, s=8.0):
    """docs/semantics.md, reference labels, mean reduction, loss_weight 1: (loss, grad, P, N)."""
    x = np.asarray(x, dtype=np.float64)
    valid = (y >= 0) & (y <= C)
    T = np.zeros(x.shape, dtype=bool)
    rows = np.nonzero(y >= 1)[0]
    T[rows, y[rows] - 1] = True
    z = np.where(T, x, -x)  # log p_t = log_sigmoid(z)
    log_pt, pt, q = log_sigmoid(z), sigmoid(z), sigmoid(-z)
    gj = gamma + s * (1.0 - g)
    wj = gj / gamma
    at = np.where(T, alpha, 1.0 - alpha)
    qg = np.exp(gj * log_sigmoid(-z))  # q^gamma_j
    l = -at * wj * qg * log_pt
    dl = -at * wj * np.where(T, 1.0, -1.0) * qg * (q - gj * pt * log_pt)
    l = np.where(valid[:, None], l, 0.0)
    grad = np.where(valid[:, None], dl, 0.0) / normalizer
    a = np.abs(grad)
    return l.sum() / normalizer, grad, (a * T).sum(0), (a * (~T & valid[:, None])).sum(0)


def close(tag, got, ref, rtol):
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    tol = rtol * np.abs(ref) + 1e-7 * np.abs(ref).max() + 1e-30
    bad = np.abs(got - ref) > tol
    assert np.all(np.isfinite(got)) and not bad.any(), "%s: %d of %d off; worst got %r ref %r" % (
        tag, int(bad.sum()), bad.size, got.ravel()[np.argmax(np.abs(got - ref) / tol)],
        ref.ravel()[np.argmax(np.abs(got - ref) / tol)])


def batch(rng, n, C):
    x = rng.normal(-3.0, 2.5, size=(n, C)).astype(np.float32)
    y = np.where(rng.random(n) < 0.25, rng.integers(1, C + 1, n), 0).astype(np.int32)
    y[rng.random(n) < 0.05] = -1  # ignored rows
    return x, y, float(max(1, int((y > 0).sum())))


rng = np.random.default_rng(20240611)
C = 7
loss = efl.EqualizedFocalLoss(C)
cfg = loss.config()
assert (cfg["gamma"], cfg["alpha"], cfg["scale_factor"], cfg["loss_weight"]) == (2.0, 0.25, 8.0, 1.0), cfg
pos, neg, g = np.zeros(C), np.zeros(C), np.ones(C)
for k in range(3):  # after the first step g < 1: the focusing and weighting factors take part
    x, y, norm = batch(rng, 300, C)
    value, grad = loss.step(x, y, normalizer=norm)
    assert grad.dtype == np.float32 and grad.shape == (300, C), (grad.dtype, grad.shape)
    r_value, r_grad, P, N = reference(x, y, g, norm, C)
    close("step %d loss" % k, value, r_value, 1e-5)
    close("step %d gradient" % k, grad, r_grad, 1e-5)
    pos, neg = pos + P, neg + N
    g = np.clip(pos / (neg + 1e-10), 0.0, 1.0)
    for name, got, want in zip(("pos_grad", "neg_grad", "pos_neg"), loss.read_state(), (pos, neg, g)):
        close("step %d %s" % (k, name), got, want, 1e-5)
assert g.min() < 0.9, "the state never moved away from 1: %s" % g
print("ok   numpy binding: 3 steps match the float64 reference (g now %s)" % np.round(g, 3))

# ------------------------------------------------------- efl.torch against the binding
import efl.torch
import torch

x, y, norm = batch(rng, 256, C)
crit = efl.torch.EqualizedFocalLossModule(C)
logits = torch.tensor(x, requires_grad=True)
out = crit(logits, torch.tensor(y, dtype=torch.int64), normalizer=norm)
out.backward()
plain = efl.EqualizedFocalLoss(C)
value, grad = plain.step(x, y, normalizer=norm)
assert logits.grad is not None, "backward gave no gradient"
close("torch loss", out.item(), value, 1e-6)
close("torch gradient", logits.grad.numpy(), grad, 1e-6)
for name, got, want in zip(("pos_grad", "neg_grad", "pos_neg"),
                           (crit.pos_grad, crit.neg_grad, crit.pos_neg), plain.read_state()):
    close("torch %s" % name, got.numpy(), want, 1e-12)
print("ok   efl.torch (torch %s): forward + backward equal the numpy binding" % torch.__version__)
EOF
rc=$?
set -e
[ $rc -eq 0 ] || exit $rc

if [ -f "$src/python/efl/__main__.py" ]; then
    "$venv/bin/python" -m efl || fail "python -m efl exited $?"
    echo "ok   python -m efl"
fi
echo "passed"
