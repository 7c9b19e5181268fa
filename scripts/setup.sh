#!/usr/bin/env bash
# One command from a fresh Debian 12 machine (as root) to a built efl and either
#   scripts/setup.sh bench   the bench on the default device, or
#   scripts/setup.sh test    the whole test suite (ctest) on every OpenCL implementation here,
#                            then the C tests again under AddressSanitizer + UBSan, the
#                            threads test under ThreadSanitizer, and the libFuzzer targets for
#                            a bounded time.
# It installs only what is missing, builds into ./build and runs.
# At the end (also when a step failed) it prints a summary: each build folder's components that
# could not be built, and why (cmake/components.cmake), and every test that skipped itself (exit
# 77) with its reason (scripts/ctest-skips.sh). With CI=true either fails the run: the
# configuration itself stops (EFL_REQUIRE_ALL), and a skipped test makes this script exit 1.
set -euo pipefail
cd "$(dirname "$0")/.."

what="${1:-test}"
case "$what" in bench|test|build) ;; *) echo "usage: $0 bench|test|build" >&2; exit 2 ;; esac

# Build tools (clang and its libFuzzer runtime for the fuzz targets), the OpenCL ICD loader and
# headers, three independent OpenCL implementations (PoCL, Mesa rusticl, Oclgrind), valgrind,
# CLBlast (the training example's GEMMs), Open MPI (efl_mpi and its tests), and the Python side
# of the tests (Debian's torch and numpy; venv for the `pip install .` test's fresh virtual
# environment; matplotlib for the bench plot). Whatever is still missing afterwards is named in
# the summary at the end.
packages=(cmake make gcc libc6-dev pkg-config clang-14 libclang-rt-14-dev
          ocl-icd-opencl-dev opencl-c-headers clinfo
          pocl-opencl-icd mesa-opencl-icd oclgrind valgrind
          libclblast-dev openmpi-bin libopenmpi-dev
          python3 python3-numpy python3-torch python3-venv python3-matplotlib)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The summary of the run (scripts/ctest-skips.sh): the configure-time summary of every build
# folder configured here, the skipped tests of every ctest run, and what this script could not
# configure at all. Under CI=true it turns a skip or a missing component into exit status 1.
report=$(mktemp -d)
configured=()
finish() {
  local rc=$? src=0
  trap - EXIT
  scripts/ctest-skips.sh summary "$report/skips" ${configured[@]+"${configured[@]}"} "$report/not-built" || src=$?
  rm -rf "$report"
  ((rc)) || rc=$src
  exit "$rc"
}
trap finish EXIT
# configure DIR [cmake arguments]: a build folder whose summary is shown at the end
configure() {
  local dir=$1; shift
  configured+=("$dir")
  rm -f "$dir/efl-components.txt" # a configuration that stops early must not show an old one
  cmake -S . -B "$dir" "$@"
}
# run_ctest DIR [ctest arguments]: its skipped tests, with their reasons, go to the summary
run_ctest() {
  local dir=$1 rc=0; shift
  local junit=$PWD/$dir/efl-ctest-junit.xml
  rm -f "$junit"
  ctest --test-dir "$dir" --output-on-failure --output-junit "$junit" "$@" || rc=$?
  scripts/ctest-skips.sh list "$junit" "$dir" >>"$report/skips"
  return "$rc"
}

configure build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$(nproc)"

case "$what" in
  bench)
    # the quick cases and a five-point N sweep, then the picture of them (docs/performance.md)
    ./build/bench/efl-bench --default --quick --sweep 1000,3000,10000,30000,100000 --json build/bench/efl-bench.json
    # the Python binding's LVIS step against the device step, side by side in one process
    PYTHONPATH=python EFL_LIBRARY=build/libefl.so /usr/bin/python3 bench/binding_step.py --rounds 5
    # one EFL training step of examples/train_tinygrad.py's head, efl.tinygrad against the same
    # loss in tinygrad ops, side by side (tinygrad pinned by python/efl/tinygrad.py, in a venv)
    DEV=CL PYTHONPATH=python EFL_LIBRARY=build/libefl.so \
      tests/python/tinygrad_venv.sh build/tinygrad-venv bench/tinygrad_step.py --steps 4 ||
      echo "bench: bench/tinygrad_step.py did not run (exit $?; see above)" >&2
    /usr/bin/python3 bench/plot.py build/bench/efl-bench.json build/bench/efl-bench.png ||
      { echo "bench: no picture (see above); the results are in build/bench/efl-bench.json" >&2; exit 1; }
    echo "bench: the picture is $PWD/build/bench/efl-bench.png (results: build/bench/efl-bench.json)" ;;
  test)
    run_ctest build -j1
    # The C tests again with AddressSanitizer + UndefinedBehaviorSanitizer (and LeakSanitizer)
    # in the host code, on PoCL.
    configure build-sanitize -DCMAKE_BUILD_TYPE=Debug -DEFL_SANITIZE=address -DEFL_BUILD_BENCH=OFF \
          -DEFL_TEST_DEVICES=pocl
    cmake --build build-sanitize -j"$(nproc)"
    run_ctest build-sanitize -j1
    # Threads on one shared context (test_context) under ThreadSanitizer.
    configure build-tsan -DCMAKE_BUILD_TYPE=Debug -DEFL_SANITIZE=thread -DEFL_BUILD_BENCH=OFF \
          -DEFL_TEST_DEVICES=pocl
    cmake --build build-tsan -j"$(nproc)" --target test_context
    run_ctest build-tsan -R '^test_context'
    # The host-side parsers under libFuzzer (clang), 20 s each from the corpus in tests/fuzz.
    # Without clang or its libFuzzer they are not built, and the summary says so.
    if ! command -v clang-14 >/dev/null 2>&1; then
      echo "efl: NOT built: fuzz targets (clang-14 not found: apt-get install clang-14 libclang-rt-14-dev)" \
        >>"$report/not-built"
    else
      CC=clang-14 configure build-fuzz -DEFL_FUZZ=ON -DEFL_BUILD_BENCH=OFF
      if ! grep -q '^efl: NOT built: fuzz targets' build-fuzz/efl-components.txt; then
        cmake --build build-fuzz -j"$(nproc)" --target fuzz_cache_entry fuzz_config fuzz_checkpoint fuzz_invariants
        run_ctest build-fuzz -R '^fuzz_'
      fi
    fi
    ;;
  build) ;;
esac
