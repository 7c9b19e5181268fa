#!/usr/bin/env bash
# Runs a test program under Oclgrind (an OpenCL simulator) with its out-of-bounds and
# data-race checks, and fails on any report even when the program itself passed.
# EFL_OCLGRIND_UNINIT=1 adds the uninitialised-value check. Only test_uninit runs with it: Oclgrind
# reports values the kernels did write once a program has served a second kernel object (two
# losses on one context), and test_uninit gives each case a context of its own.
# Exit 77 (skipped) where oclgrind is not installed.
set -u
command -v oclgrind >/dev/null 2>&1 || { echo "SKIP: oclgrind is not installed"; exit 77; }
log=$(mktemp)
trap 'rm -f "$log"' EXIT
checks=(--data-races)
[ "${EFL_OCLGRIND_UNINIT:-0}" = 1 ] && checks+=(--uninitialized)
oclgrind "${checks[@]}" "$@" >"$log" 2>&1
rc=$?
cat "$log"
if grep -qE "Invalid (read|write)|[Dd]ata race|divergence|[Uu]ninitiali[sz]ed|Oclgrind: [0-9]+ errors" "$log"; then
  echo "FAIL: Oclgrind reported errors (above)"
  exit 1
fi
exit "$rc"
