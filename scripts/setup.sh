#!/usr/bin/env bash
# One command from a fresh Debian 12 machine (as root) to a built efl and either
#   scripts/setup.sh bench   the bench on the default device, or
#   scripts/setup.sh test    the whole test suite (ctest) on every OpenCL implementation here,
#                            then the C tests again under AddressSanitizer + UBSan, the
#                            threads test under ThreadSanitizer, and the libFuzzer targets for
#                            a bounded time.
# It installs only what is missing, builds into ./build and runs.
set -euo pipefail
cd "$(dirname "$0")/.."

what="${1:-test}"
case "$what" in bench|test|build) ;; *) echo "usage: $0 bench|test|build" >&2; exit 2 ;; esac

# Build tools (clang and its libFuzzer runtime for the fuzz targets), the OpenCL ICD loader and
# headers, three independent OpenCL implementations (PoCL, Mesa rusticl, Oclgrind), CLBlast (the
# training example's GEMMs), Open MPI (efl_mpi and its tests), and the Python side of the tests
# (Debian's torch and numpy).
packages=(cmake make gcc libc6-dev pkg-config clang-14 libclang-rt-14-dev
          ocl-icd-opencl-dev opencl-c-headers clinfo
          pocl-opencl-icd mesa-opencl-icd oclgrind valgrind
          libclblast-dev openmpi-bin libopenmpi-dev
          python3 python3-numpy python3-torch)
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

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$(nproc)"

case "$what" in
  bench) ./build/bench/efl-bench --default --quick ;;
  test)
    ctest --test-dir build --output-on-failure -j1
    # The C tests again with AddressSanitizer + UndefinedBehaviorSanitizer (and LeakSanitizer)
    # in the host code, on PoCL.
    cmake -S . -B build-sanitize -DCMAKE_BUILD_TYPE=Debug -DEFL_SANITIZE=address -DEFL_BUILD_BENCH=OFF \
          -DEFL_TEST_DEVICES=pocl
    cmake --build build-sanitize -j"$(nproc)"
    ctest --test-dir build-sanitize --output-on-failure -j1
    # Threads on one shared context (test_context) under ThreadSanitizer.
    cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=Debug -DEFL_SANITIZE=thread -DEFL_BUILD_BENCH=OFF \
          -DEFL_TEST_DEVICES=pocl
    cmake --build build-tsan -j"$(nproc)" --target test_context
    ctest --test-dir build-tsan --output-on-failure -R '^test_context'
    # The host-side parsers under libFuzzer (clang), 20 s each from the corpus in tests/fuzz.
    CC=clang-14 cmake -S . -B build-fuzz -DEFL_FUZZ=ON -DEFL_BUILD_BENCH=OFF
    cmake --build build-fuzz -j"$(nproc)" --target fuzz_cache_entry fuzz_config fuzz_checkpoint fuzz_invariants
    ctest --test-dir build-fuzz --output-on-failure -R '^fuzz_'
    ;;
  build) ;;
esac
