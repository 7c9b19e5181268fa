#!/usr/bin/env bash
# Usage: ci_skip_policy.sh SOURCE_DIR WORK_DIR
# The CI policy of docs/testing.md ("Skipped tests and CI") on a throwaway CMake project that
# includes cmake/components.cmake and has one test that skips itself (exit 77):
#   - configure-time: a component that cannot be built fails the configuration under CI=true
#     (or -DEFL_REQUIRE_ALL=ON), naming it and why; without CI it is listed as "NOT built" and
#     the configuration succeeds; a component turned off by an option never fails it; AUTO
#     follows CI at every configure, also in a folder first configured without it, and stays
#     off for a package build (EFL_BUILD_TESTS=OFF);
#   - run-time: scripts/ctest-skips.sh finds the skipped test in ctest's JUnit file with the
#     reason the test printed, and its summary exits 1 under CI=true (a skip, or a component
#     NOT built) and 0 without CI.
# Every run of the configuration sets CI itself, so this test gives the same verdict in and out
# of CI. CMAKE and CTEST (environment) name the tools; default: cmake and ctest on PATH.
set -u
src=$(cd "$1" && pwd)
work=$2
cmake=${CMAKE:-cmake}
ctest=${CTEST:-ctest}
skips=$src/scripts/ctest-skips.sh
rm -rf "$work"
mkdir -p "$work/proj"

failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
ok() { echo "ok: $*"; }

cat >"$work/proj/CMakeLists.txt" <<EOF
cmake_minimum_required(VERSION 3.20)
project(ci_skip_policy NONE)
include("$src/cmake/components.cmake")
set(HAVE_WIDGET ON)
efl_component(widget HAVE_WIDGET "never shown")
if(WITH_MISSING)
  efl_component(frobnicator "FROB_FOUND AND TARGET frob" "frob not found: apt-get install libfrob-dev")
endif()
efl_component_off(gadget "EFL_BUILD_GADGET=OFF")
enable_testing()
add_test(NAME skipper COMMAND sh -c "echo preparing; echo 'SKIP: no frobnicator device'; echo ------; exit 77")
set_tests_properties(skipper PROPERTIES SKIP_RETURN_CODE 77)
add_test(NAME passer COMMAND sh -c "echo fine")
set_tests_properties(passer PROPERTIES SKIP_RETURN_CODE 77)
efl_components_summary()
EOF

# configure NAME EXPECT(pass|fail) CI_VALUE(- = unset) [cmake arguments]: output in $work/NAME.log
configure() {
  local name=$1 expect=$2 ci=$3 rc; shift 3
  if [ "$ci" = - ]; then
    env -u CI "$cmake" -S "$work/proj" -B "$work/$name" "$@" >"$work/$name.log" 2>&1
  else
    CI=$ci "$cmake" -S "$work/proj" -B "$work/$name" "$@" >"$work/$name.log" 2>&1
  fi
  rc=$?
  if { [ "$expect" = pass ] && [ "$rc" -ne 0 ]; } || { [ "$expect" = fail ] && [ "$rc" -eq 0 ]; }; then
    fail "configure $name (CI=$ci $*): exit $rc, expected to $expect; its output:"
    sed 's/^/    /' "$work/$name.log"
    return 1
  fi
  ok "configure $name (CI=$ci $*): ${expect}ed"
}
expect_in() { # expect_in FILE TEXT WHAT
  if grep -qF -- "$2" "$1"; then ok "$3"; else
    fail "$3: '$2' not in $1:"; sed 's/^/    /' "$1"
  fi
}
expect_not_in() {
  if grep -qF -- "$2" "$1"; then fail "$3: '$2' in $1"; else ok "$3"; fi
}

# --- configure time
notbuilt="efl: NOT built: frobnicator (frob not found: apt-get install libfrob-dev)"
# outside CI: succeeds, and says what is missing and why (on the console and in efl-components.txt)
configure local pass - -DWITH_MISSING=ON &&
  expect_in "$work/local.log" "$notbuilt" "without CI the NOT built line is printed" &&
  expect_in "$work/local/efl-components.txt" "$notbuilt" "efl-components.txt has the NOT built line" &&
  expect_in "$work/local.log" "efl: built: widget" "the built line" &&
  expect_in "$work/local.log" "efl: off (by option): gadget (EFL_BUILD_GADGET=OFF)" "the off line"
# the same folder under CI=true: AUTO is looked at again, and the configuration stops naming it
configure local fail true &&
  expect_in "$work/local.log" "frobnicator: frob not found: apt-get install libfrob-dev" \
            "under CI=true the error names the component and why"
configure ci fail true -DWITH_MISSING=ON
configure ci-optout pass true -DWITH_MISSING=ON -DEFL_REQUIRE_ALL=OFF
configure required fail - -DWITH_MISSING=ON -DEFL_REQUIRE_ALL=ON
# a package build (tests off, e.g. pip install . in someone's CI) only reports
configure package pass true -DWITH_MISSING=ON -DEFL_BUILD_TESTS=OFF &&
  expect_in "$work/package.log" "$notbuilt" "a package build under CI=true still lists what is NOT built"
# only a component an option turned off: never an error
configure complete pass true &&
  expect_not_in "$work/complete/efl-components.txt" "NOT built" "nothing NOT built when nothing is missing"

# --- run time: the skipped test and its reason, and the summary's verdict
if [ -d "$work/complete" ]; then
  junit=$work/junit.xml
  "$ctest" --test-dir "$work/complete" --output-junit "$junit" >"$work/ctest.log" 2>&1 ||
    fail "ctest on the throwaway project: exit $? ($(tail -n 3 "$work/ctest.log"))"
  "$skips" list "$junit" tiny >"$work/skips" 2>&1 || fail "ctest-skips.sh list: exit $?"
  if [ "$(cat "$work/skips")" = "tiny: skipper (no frobnicator device)" ]; then
    ok "ctest-skips.sh list: $(cat "$work/skips")"
  else
    fail "ctest-skips.sh list printed:"; sed 's/^/    /' "$work/skips"
  fi
  # summary SKIPS EXPECTED_EXIT CI_VALUE [components...]: output in $work/summary.log
  summary() {
    local file=$1 want=$2 ci=$3 rc; shift 3
    if [ "$ci" = - ]; then env -u CI "$skips" summary "$file" "$@" >"$work/summary.log" 2>&1
    else CI=$ci "$skips" summary "$file" "$@" >"$work/summary.log" 2>&1; fi
    rc=$?
    if [ "$rc" -eq "$want" ]; then ok "summary (CI=$ci, ${file##*/} $*): exit $rc"; else
      fail "summary (CI=$ci, ${file##*/} $*): exit $rc, expected $want:"; sed 's/^/    /' "$work/summary.log"
    fi
  }
  summary "$work/skips" 1 true "$work/complete"
  expect_in "$work/summary.log" "skipped: 1 tests:" "the summary counts the skipped test"
  expect_in "$work/summary.log" "tiny: skipper (no frobnicator device)" "the summary names it and why"
  expect_in "$work/summary.log" "$work/complete: efl: off (by option): gadget" "the summary repeats the configure summary"
  summary "$work/skips" 0 - "$work/complete"
  expect_in "$work/summary.log" "skipped: 1 tests:" "without CI the summary is printed too"
  : >"$work/none"
  summary "$work/none" 0 true "$work/complete"            # nothing skipped, only an option's choice
  summary "$work/none" 1 true "$work/ci-optout"           # a component NOT built
  summary "$work/none" 0 - "$work/ci-optout"
  expect_in "$work/summary.log" "$notbuilt" "the summary shows the NOT built line"
fi

if ((failures)); then
  echo "$failures check(s) failed"
  exit 1
fi
echo "all checks passed"
