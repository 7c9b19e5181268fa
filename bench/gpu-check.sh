#!/usr/bin/env bash
# gpu-check.sh: build efl and check it on an NVIDIA GPU, in one go.
#
# usage: bench/gpu-check.sh [compare_pytorch.py options, e.g. --quick]   (from anywhere)
#   OUT      where everything goes (default ./gpu-check-out): logs, bench JSON, summary.txt
#   PYTHON   a python3 with torch (CUDA build) and numpy for compare_pytorch.py (default: the
#            first of python3, /usr/bin/python3, /opt/efl-torch2/bin/python that has them)
#   JOBS     build parallelism (default: nproc)
#   SEL      the EFL_DEVICE selector of the GPU (default nvidia; SEL=pocl TORCH_DEVICE=cpu
#            dry-runs the script on a CPU OpenCL device)
#   TORCH_DEVICE  the torch device of compare_pytorch.py's PyTorch rows (default cuda)
#   NO_APT=1 never call apt-get (default: apt-get is tried only when run as root and a
#            package is missing; failures, e.g. no network, are tolerated)
#
# Assumes: Linux (Debian/Ubuntu-like) with an NVIDIA GPU and its driver; maybe nothing else.
# Steps, each logged to $OUT/<step>.log, none of them stopping the others:
#   1. OpenCL ICD loader and headers: found, installed with apt, or taken from the CUDA toolkit
#      / driver, or built from a Khronos OpenCL-ICD-Loader source tree if one is present.
#   2. the NVIDIA ICD registration (/etc/OpenCL/vendors/nvidia.icd -> libnvidia-opencl.so.1).
#   3. clinfo -l (if clinfo exists).
#   4. cmake build (Release, -DEFL_TEST_DEVICES="$SEL") into $OUT/build.
#   5. ctest: the whole suite on the NVIDIA OpenCL device.
#   6. efl-bench --device nvidia --json $OUT/bench-gpu.json (all its cases, the N sweep included;
#      plotted to $OUT/sweep-gpu.png when matplotlib is there).
#   7. compare_pytorch.py --device cuda, if a python with CUDA torch is found.
# Then a summary on stdout and in $OUT/summary.txt. Exit status: 0 if the build, the tests and
# the bench passed, 1 otherwise.

set -u
set -o pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-./gpu-check-out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 4)}
NO_APT=${NO_APT:-0}
SEL=${SEL:-nvidia}
TORCH_DEVICE=${TORCH_DEVICE:-cuda}

SUMMARY=()
FAILED=0
note() { printf '%s\n' "$*" | tee -a "$OUT/gpu-check.log"; }
result() { # result STEP STATUS DETAIL
    SUMMARY+=("$(printf '%-10s %-8s %s' "$1" "$2" "$3")")
    note "[$1] $2 $3"
}
have() { command -v "$1" >/dev/null 2>&1; }
# run with a time limit where coreutils' timeout exists
limit() {
    local secs=$1
    shift
    if have timeout; then timeout "$secs" "$@"; else "$@"; fi
}

: >"$OUT/gpu-check.log"
note "gpu-check: repo $REPO, output $OUT, $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
{
    uname -a
    if [ -r /etc/os-release ]; then cat /etc/os-release; fi
    echo "cores: $(nproc 2>/dev/null)"
    if have nvidia-smi; then nvidia-smi; else echo "nvidia-smi: not found"; fi
} >"$OUT/system.txt" 2>&1
if have nvidia-smi; then
    note "GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n 4 | tr '\n' ';')"
else
    note "nvidia-smi not found: is the NVIDIA driver installed? (continuing)"
fi

APT_OK=0
if [ "$NO_APT" != 1 ] && have apt-get && [ "$(id -u)" = 0 ]; then APT_OK=1; fi
APT_UPDATED=0
apt_install() { # best effort; returns apt-get's status
    [ "$APT_OK" = 1 ] || return 1
    if [ "$APT_UPDATED" = 0 ]; then
        limit 300 apt-get update -q >>"$OUT/apt.log" 2>&1
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive limit 900 apt-get install -y -q --no-install-recommends "$@" >>"$OUT/apt.log" 2>&1
}

# Library directories to search, most usual first.
LIBDIRS=(/usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu /usr/lib64 /usr/lib /usr/local/lib
    /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda/targets/sbsa-linux/lib
    /usr/lib/wsl/lib)
find_lib() { # find_lib NAME-GLOB: the first matching file (ldconfig's cache first)
    local hit d f
    hit=$(ldconfig -p 2>/dev/null | awk -v pat="$1" '$1 ~ pat {print $NF; exit}')
    if [ -n "$hit" ]; then
        echo "$hit"
        return 0
    fi
    for d in "${LIBDIRS[@]}" /usr/local/cuda-*/lib64 /usr/local/cuda-*/targets/*/lib; do
        for f in "$d"/$1; do
            if [ -e "$f" ]; then
                echo "$f"
                return 0
            fi
        done
    done
    return 1
}

# ---------------------------------------------------------------- 1. ICD loader and headers
# An OpenCL application links against the ICD *loader* (libOpenCL.so.1, Khronos or ocl-icd).
# The loader reads /etc/OpenCL/vendors/*.icd and dlopens the vendor *ICD* named there; for
# NVIDIA that is libnvidia-opencl.so.1, which ships with the driver. The driver packages do
# not always ship a loader: Debian/Ubuntu's come from ocl-icd-libopencl1, NVIDIA's .run
# installer installs one unless told not to, and the CUDA toolkit has one (and the CL headers)
# in /usr/local/cuda. We take, in order: one ldconfig knows; apt (ocl-icd-libopencl1,
# ocl-icd-opencl-dev, opencl-headers, clinfo); one from the CUDA toolkit or driver folders;
# a Khronos OpenCL-ICD-Loader source tree ($KHRONOS_ICD_LOADER_SRC, or next to this repo),
# built with cmake. Never libnvidia-opencl.so.1 itself: that is the ICD, not a loader.
CMAKE_CL_ARGS=()
LOADER=""
if ldconfig -p 2>/dev/null | grep -q 'libOpenCL\.so'; then
    LOADER=$(find_lib 'libOpenCL\.so(\.1)?$' || true)
    note "OpenCL ICD loader: ${LOADER:-found by ldconfig}"
else
    note "no OpenCL ICD loader in ldconfig's cache"
    if apt_install ocl-icd-libopencl1 ocl-icd-opencl-dev opencl-headers clinfo; then
        LOADER=$(find_lib 'libOpenCL\.so(\.1)?$' || true)
        note "installed with apt: ocl-icd-libopencl1 ocl-icd-opencl-dev opencl-headers clinfo"
    fi
    if [ -z "$LOADER" ]; then
        for f in /usr/local/cuda/lib64/libOpenCL.so.1 /usr/local/cuda/lib64/libOpenCL.so \
            /usr/local/cuda-*/lib64/libOpenCL.so.1 /usr/local/cuda/targets/*/lib/libOpenCL.so.1 \
            /usr/lib/x86_64-linux-gnu/libOpenCL.so.1* /usr/lib64/libOpenCL.so.1* /usr/lib/libOpenCL.so.1*; do
            if [ -e "$f" ]; then
                LOADER=$f
                break
            fi
        done
        [ -n "$LOADER" ] && note "using the loader at $LOADER (not in ldconfig's cache)"
    fi
    if [ -z "$LOADER" ]; then
        SRC=${KHRONOS_ICD_LOADER_SRC:-}
        for d in "$SRC" "$REPO/../OpenCL-ICD-Loader" /usr/src/OpenCL-ICD-Loader; do
            if [ -n "$d" ] && [ -f "$d/CMakeLists.txt" ]; then
                SRC=$d
                break
            fi
        done
        if [ -n "$SRC" ] && [ -f "$SRC/CMakeLists.txt" ] && have cmake; then
            note "building the Khronos ICD loader from $SRC"
            HDR=${OPENCL_HEADERS_SRC:-$SRC/../OpenCL-Headers}
            hdr_args=()
            if [ -f "$HDR/CL/cl.h" ]; then hdr_args=("-DOPENCL_ICD_LOADER_HEADERS_DIR=$HDR"); fi
            if cmake -S "$SRC" -B "$OUT/icd-loader-build" -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF \
                "${hdr_args[@]}" >"$OUT/icd-loader.log" 2>&1 &&
                cmake --build "$OUT/icd-loader-build" -j "$JOBS" >>"$OUT/icd-loader.log" 2>&1; then
                LOADER=$(find "$OUT/icd-loader-build" -name 'libOpenCL.so.1*' -print -quit)
            fi
            [ -n "$LOADER" ] || note "building the Khronos loader failed (see $OUT/icd-loader.log)"
        fi
    fi
    if [ -n "$LOADER" ]; then
        # not in the cache: let the linker and the programs find it
        loader_dir=$(dirname "$LOADER")
        export LD_LIBRARY_PATH="$loader_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        CMAKE_CL_ARGS+=("-DOpenCL_LIBRARY=$LOADER")
    fi
fi
if [ -n "$LOADER" ] || ldconfig -p 2>/dev/null | grep -q 'libOpenCL\.so'; then
    result loader ok "${LOADER:-libOpenCL.so (ldconfig)}"
else
    result loader FAIL "no OpenCL ICD loader: apt-get install ocl-icd-libopencl1 ocl-icd-opencl-dev, or install the CUDA toolkit (ships lib64/libOpenCL.so), or set KHRONOS_ICD_LOADER_SRC to a checkout of github.com/KhronosGroup/OpenCL-ICD-Loader"
fi

# Headers: CL/cl.h for the build (opencl-headers; the CUDA toolkit has them too).
if [ ! -f /usr/include/CL/cl.h ] && [ ! -f /usr/local/include/CL/cl.h ]; then
    apt_install opencl-headers ocl-icd-opencl-dev || true
    if [ ! -f /usr/include/CL/cl.h ]; then
        for d in /usr/local/cuda/include /usr/local/cuda-*/include /usr/local/cuda/targets/*/include \
            "${OPENCL_HEADERS_SRC:-/nonexistent}" "$REPO/../OpenCL-Headers"; do
            if [ -f "$d/CL/cl.h" ]; then
                CMAKE_CL_ARGS+=("-DOpenCL_INCLUDE_DIR=$d")
                note "OpenCL headers from $d"
                break
            fi
        done
    fi
fi
# A loader found only as libOpenCL.so.1 (no dev symlink) must be named to cmake explicitly.
if [ ${#CMAKE_CL_ARGS[@]} -eq 0 ] && ! find_lib 'libOpenCL\.so$' >/dev/null; then
    so1=$(find_lib 'libOpenCL\.so\.1$' || true)
    [ -n "$so1" ] && CMAKE_CL_ARGS+=("-DOpenCL_LIBRARY=$so1")
fi

# ---------------------------------------------------------------- 2. NVIDIA ICD registration
NVICD=$(find_lib 'libnvidia-opencl\.so\.1$' || true)
if [ -z "$NVICD" ]; then
    result icd FAIL "libnvidia-opencl.so.1 not found: the driver's OpenCL part is missing (Ubuntu: libnvidia-compute-<ver>; Debian: nvidia-opencl-icd; containers: NVIDIA_DRIVER_CAPABILITIES must include compute)"
elif [ -f /etc/OpenCL/vendors/nvidia.icd ]; then
    result icd ok "/etc/OpenCL/vendors/nvidia.icd: $(head -c 200 /etc/OpenCL/vendors/nvidia.icd | tr -d '\n') (driver ICD $NVICD)"
else
    # The file holds the library name (the loader dlopens it); a full path when ldconfig
    # does not know the library.
    name=libnvidia-opencl.so.1
    ldconfig -p 2>/dev/null | grep -q 'libnvidia-opencl\.so\.1' || name=$NVICD
    if mkdir -p /etc/OpenCL/vendors 2>/dev/null && printf '%s\n' "$name" >/etc/OpenCL/vendors/nvidia.icd 2>/dev/null; then
        result icd ok "wrote /etc/OpenCL/vendors/nvidia.icd -> $name"
    else
        # not root: point the loader at our own vendors folder (both loaders read OCL_ICD_VENDORS;
        # the Khronos one also takes OCL_ICD_FILENAMES)
        mkdir -p "$OUT/vendors"
        printf '%s\n' "$NVICD" >"$OUT/vendors/nvidia.icd"
        export OCL_ICD_VENDORS="$OUT/vendors" OCL_ICD_FILENAMES="$NVICD"
        result icd ok "cannot write /etc/OpenCL/vendors (not root): OCL_ICD_VENDORS=$OUT/vendors"
    fi
fi

# ---------------------------------------------------------------- 3. clinfo
if have clinfo; then
    limit 120 clinfo -l >"$OUT/clinfo.txt" 2>&1
    limit 120 clinfo >"$OUT/clinfo-full.txt" 2>&1
    if grep -qi "$SEL" "$OUT/clinfo.txt"; then
        result clinfo ok "$(grep -i -m1 "$SEL" "$OUT/clinfo.txt" | sed 's/^[^A-Za-z]*//')"
    else
        result clinfo WARN "no $SEL device listed (see $OUT/clinfo.txt)"
    fi
else
    result clinfo skip "clinfo not installed (apt-get install clinfo)"
fi

# ---------------------------------------------------------------- 4. build
BUILD=$OUT/build
BUILD_OK=0
CMAKE=cmake
if ! have cmake; then
    apt_install cmake gcc make libc6-dev >/dev/null 2>&1 || true
    if ! have cmake && [ -x "$HOME/.local/bin/cmake" ]; then CMAKE=$HOME/.local/bin/cmake; fi
fi
if ! have "$CMAKE"; then
    result build FAIL "cmake (>= 3.16) not found: apt-get install cmake, or 'python3 -m pip install --user cmake' (then \$HOME/.local/bin/cmake), or unpack the cmake-*-linux-x86_64.tar.gz release from cmake.org and put its bin/ on PATH; then rerun"
elif ! have cc && ! have gcc; then
    result build FAIL "no C compiler: apt-get install gcc libc6-dev"
else
    if limit 600 "$CMAKE" -S "$REPO" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DEFL_TEST_DEVICES="$SEL" \
        "${CMAKE_CL_ARGS[@]}" >"$OUT/build.log" 2>&1 &&
        limit 1200 "$CMAKE" --build "$BUILD" -j "$JOBS" >>"$OUT/build.log" 2>&1; then
        BUILD_OK=1
        result build ok "$BUILD${CMAKE_CL_ARGS[*]:+ (cmake ${CMAKE_CL_ARGS[*]})}"
    else
        result build FAIL "see $OUT/build.log: $(grep -m1 -iE 'error|could not find' "$OUT/build.log" | cut -c1-200)"
    fi
fi

# ---------------------------------------------------------------- 5. tests
if [ "$BUILD_OK" = 1 ]; then
    # ctest --test-dir needs cmake 3.20; cd works everywhere
    (cd "$BUILD" && limit 1800 ctest --output-on-failure --timeout 600) >"$OUT/ctest.log" 2>&1
    rc=$?
    line=$(grep -E 'tests passed|tests failed' "$OUT/ctest.log" | tail -n 1)
    nskip=$(grep -c -- '\*\*\*Skipped' "$OUT/ctest.log")
    nvpass=$(grep -ciE "Test +#.*\\.$SEL.* Passed" "$OUT/ctest.log")
    if [ $rc -eq 0 ] && [ "$nvpass" -eq 0 ]; then
        # a test exits 77 (skipped) when its device is missing: none passed = no NVIDIA device
        result tests FAIL "no test ran on the $SEL device ($nskip skipped): see $OUT/ctest.log"
        FAILED=1
    elif [ $rc -eq 0 ]; then
        result tests ok "$line; $nvpass passed on $SEL, $nskip skipped"
    else
        result tests FAIL "$line (rc $rc; see $OUT/ctest.log)"
        FAILED=1
    fi
else
    result tests skip "no build"
    FAILED=1
fi

# ---------------------------------------------------------------- 6. bench
# the python used for JSON parsing, plotting and the PyTorch comparison
PYS=()
[ -n "${PYTHON:-}" ] && PYS+=("$PYTHON")
PYS+=(python3 /usr/bin/python3 /opt/efl-torch2/bin/python)
JSONPY=""
for p in "${PYS[@]}"; do
    if have "$p" && "$p" -c 'import json' >/dev/null 2>&1; then
        JSONPY=$p
        break
    fi
done

if [ "$BUILD_OK" = 1 ] && [ -x "$BUILD/bench/efl-bench" ]; then
    if limit 900 "$BUILD/bench/efl-bench" --device "$SEL" --json "$OUT/bench-gpu.json" >"$OUT/bench.log" 2>&1; then
        result bench ok "$OUT/bench-gpu.json"
        grep -E '^ *(step|forward) ' "$OUT/bench.log" | head -n 20 | sed 's/^/           /' | tee -a "$OUT/gpu-check.log"
    else
        result bench FAIL "see $OUT/bench.log: $(grep -m1 -E '^efl-bench: ' "$OUT/bench.log" | cut -c1-200)"
        FAILED=1
    fi
    # efl-bench's default cases include the N sweep at C = 1203: plot it where matplotlib is
    for p in "${PYS[@]}"; do
        if [ -s "$OUT/bench-gpu.json" ] && have "$p" && "$p" -c 'import matplotlib' >/dev/null 2>&1; then
            if "$p" "$REPO/bench/plot.py" "$OUT/bench-gpu.json" "$OUT/sweep-gpu.png" >"$OUT/plot.log" 2>&1; then
                note "sweep plot: $OUT/sweep-gpu.png"
            else
                note "plot.py failed (see $OUT/plot.log)"
            fi
            break
        fi
    done
else
    result bench skip "no build"
    FAILED=1
fi

# ---------------------------------------------------------------- 7. PyTorch comparison
TORCHPY=""
for p in "${PYS[@]}"; do
    if have "$p" && "$p" -c "import numpy, torch, sys; sys.exit(0 if '$TORCH_DEVICE' == 'cpu' or torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
        TORCHPY=$p
        break
    fi
done
if [ "$BUILD_OK" != 1 ]; then
    result pytorch skip "no build"
elif [ -z "$TORCHPY" ]; then
    result pytorch skip "no python with numpy and a CUDA-enabled torch (set PYTHON=...; e.g. pip install torch numpy)"
else
    if EFL_DEVICE="$SEL" EFL_LIBRARY="$BUILD/libefl.so" PYTHONPATH="$REPO/python${PYTHONPATH:+:$PYTHONPATH}" \
        limit 1500 "$TORCHPY" "$REPO/bench/compare_pytorch.py" --device "$TORCH_DEVICE" "$@" >"$OUT/compare-pytorch.txt" 2>&1; then
        result pytorch ok "$OUT/compare-pytorch.txt ($TORCHPY)"
    else
        result pytorch WARN "exit $? (see $OUT/compare-pytorch.txt)"
    fi
    sed -n '/==== summary ====/,$p' "$OUT/compare-pytorch.txt" | tee -a "$OUT/gpu-check.log"
fi

# ---------------------------------------------------------------- summary
{
    echo
    echo "==== gpu-check summary ($(date -u '+%H:%M:%S UTC')) ===="
    printf '%s\n' "${SUMMARY[@]}"
    if [ -s "$OUT/bench-gpu.json" ] && [ -n "$JSONPY" ]; then
        "$JSONPY" - "$OUT/bench-gpu.json" <<'EOF'
import json, sys
for d in json.load(open(sys.argv[1]))["devices"]:
    print("%s: copy %.1f GB/s, read %.1f GB/s, first call %.3f s" % (d["name"], d["copy_gbps"], d["read_gbps"], d["first_call_s"]))
    for k in d["cases"]:
        print("  %-7s %7d x %-5d %9.3f ms  %7.1f GB/s  %5.1f%% of copy  %7.2f G elements/s"
              % (k["op"], k["n"], k["c"], 1e3 * k["median_s"], k["gbps"], 100 * k["fraction_of_copy"], k["gelem_s"]))
EOF
    fi
    echo "all output in $OUT"
} | tee "$OUT/summary.txt"
exit "$FAILED"
