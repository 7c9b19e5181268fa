#!/usr/bin/env bash
# Runs a test program under Oclgrind (an OpenCL simulator) with its out-of-bounds and
# data-race checks, and fails on any report even when the program itself passed.
# Oclgrind's --uninitialized check is not used: on this project's kernels it reports values the
# kernels did write (its issue #126: false positives with vector types; here also with the
# scalar launch shape), so it cannot separate our bugs from its own.
# Exit 77 (skipped) where oclgrind is not installed.
set -u
command -v oclgrind >/dev/null 2>&1 || { echo "SKIP: oclgrind is not installed"; exit 77; }
log=$(mktemp)
trap 'rm -f "$log"' EXIT
oclgrind --data-races "$@" >"$log" 2>&1
rc=$?
cat "$log"
if grep -qE "Invalid (read|write)|[Dd]ata race|divergence|Oclgrind: [0-9]+ errors" "$log"; then
  echo "FAIL: Oclgrind reported errors (above)"
  exit 1
fi
exit "$rc"
