#!/usr/bin/env bash
# Usage: cmake_minimum.sh SOURCE_DIR WORK_DIR
# The CMake version that cmake_minimum_required() names must build the project: this installs that
# version (the newest patch release of it on PyPI) into a virtual environment under WORK_DIR, then
# configures the whole project with it (tests, bench, examples, the consumer), builds everything
# and runs one device test and the installed-package consumer with its ctest.
set -euo pipefail
src=$(cd "$1" && pwd)
work=$2
mkdir -p "$work"
work=$(cd "$work" && pwd)

want=$(sed -n 's/^cmake_minimum_required(VERSION \([0-9][0-9.]*\).*/\1/p' "$src/CMakeLists.txt")
[ -n "$want" ] || { echo "no cmake_minimum_required(VERSION ...) in CMakeLists.txt" >&2; exit 1; }
consumer=$(sed -n 's/^cmake_minimum_required(VERSION \([0-9][0-9.]*\).*/\1/p' "$src/tests/consumer/CMakeLists.txt")
[ "$consumer" = "$want" ] || { echo "tests/consumer asks for CMake $consumer, the project for $want" >&2; exit 1; }

venv=$work/cmake-$want
if ! "$venv/bin/cmake" --version 2>/dev/null | grep -q "version $want\."; then
  rm -rf "$venv"
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "cmake==$want.*"
fi
"$venv/bin/cmake" --version | head -n1
"$venv/bin/cmake" --version | grep -q "version $want\." || { echo "not CMake $want" >&2; exit 1; }

build=$work/build
rm -rf "$build"
"$venv/bin/cmake" -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DEFL_TEST_DEVICES=pocl
"$venv/bin/cmake" --build "$build" -j"$(nproc)"
# consumer_package configures tests/consumer with whatever `cmake` is first on PATH: this one.
tests='^(test_math\.pocl|consumer_package)$'
"$venv/bin/ctest" --test-dir "$build" -N -R "$tests" | grep -q 'Total Tests: 2$' ||
  { echo "the build lacks test_math.pocl or consumer_package" >&2; exit 1; }
PATH=$venv/bin:$PATH "$venv/bin/ctest" --test-dir "$build" --output-on-failure -R "$tests"
