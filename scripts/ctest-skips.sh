#!/usr/bin/env bash
# What a test run skipped, and what its configurations could not build; scripts/setup.sh runs it.
#
#   ctest-skips.sh list JUNIT_XML [LABEL]
#       JUNIT_XML: what `ctest --output-junit FILE` wrote. Prints one line per test that skipped
#       itself (exit code SKIP_RETURN_CODE, 77 here, or SKIP_REGULAR_EXPRESSION):
#           LABEL: NAME (REASON)
#       REASON is the test's last output line starting with "SKIP", else its last output line
#       (every test of the suite prints why before it exits 77), without the "SKIP:" prefix.
#       A test ctest could not start or that is DISABLED is not listed: the first is a failure
#       ctest reports itself, the second a choice.
#   ctest-skips.sh summary SKIPS_FILE [BUILD_DIR | COMPONENTS_FILE]...
#       Prints the summary of the run: each build folder's configure-time summary
#       (BUILD_DIR/efl-components.txt, cmake/components.cmake, each line prefixed with the
#       folder; or a file of such lines, e.g. "efl: NOT built: NAME (REASON)", as it is), then
#       "skipped: N tests:" with the lines of SKIPS_FILE (what `list` printed). Exits 1 when the
#       environment variable CI is "true" and a test was skipped or a component was NOT built;
#       0 otherwise.
set -euo pipefail

usage() {
  echo "usage: $0 list JUNIT_XML [LABEL] | summary SKIPS_FILE [BUILD_DIR|COMPONENTS_FILE]..." >&2
  exit 2
}

list() {
  local junit=$1 label=${2:-}
  if [ ! -f "$junit" ]; then
    echo "ctest-skips.sh: no $junit (ctest did not run?)" >&2
    return 0
  fi
  # CMake writes each <testcase ...> tag, its <skipped message=.../> and </testcase> on lines of
  # their own; <system-out> holds the output with < > & escaped, so no output line looks like a tag.
  awk -v label="$label" '
    function unesc(s) {
      gsub(/&lt;/, "<", s); gsub(/&gt;/, ">", s); gsub(/&quot;/, "\"", s); gsub(/&apos;/, "'"'"'", s)
      gsub(/&#[xX]?[0-9a-fA-F]+;/, "?", s); gsub(/&amp;/, "\\&", s)
      return s
    }
    function attr(s, key,    v) {
      if (!match(s, "[ \t]" key "=\"[^\"]*\"")) return ""
      v = substr(s, RSTART + length(key) + 3, RLENGTH - length(key) - 4)
      return unesc(v)
    }
    function output_line(s) {
      s = unesc(s)
      sub(/\r$/, "", s); sub(/[ \t]+$/, "", s)
      if (s == "") return
      last = s
      if (s ~ /^[ \t]*SKIP/) last_skip = s
    }
    function emit(    reason) {
      if (name != "" && skip_msg ~ /SKIP/) {
        reason = last_skip != "" ? last_skip : last
        sub(/^[ \t]*SKIP(PED)?:[ \t]*/, "", reason)
        if (reason == "") reason = "no output; " skip_msg
        print (label != "" ? label ": " : "") name " (" reason ")"
      }
      name = ""; skip_msg = ""; last = ""; last_skip = ""; in_out = 0
    }
    {
      line = $0
      if (in_out) {
        p = index(line, "</system-out>")
        if (!p) { output_line(line); next }
        output_line(substr(line, 1, p - 1)); in_out = 0
        line = substr(line, p + 13)
      }
      if (line ~ /<testcase[ \t>]/) {
        emit()
        name = attr(line, "name")
        if (line ~ /\/>[ \t]*$/) { emit(); next }
      }
      if (line ~ /<skipped[ \t\/>]/) {
        skip_msg = attr(line, "message")
        if (skip_msg == "") skip_msg = "SKIP"
      }
      p = index(line, "<system-out>")
      if (p) {
        line = substr(line, p + 12)
        q = index(line, "</system-out>")
        if (q) output_line(substr(line, 1, q - 1)); else { output_line(line); in_out = 1 }
      }
      if (index(line, "</testcase>")) emit()
    }
    END { emit() }
  ' "$junit"
}

summary() {
  local skips=$1; shift
  local not_built=0 skipped=0 src lines
  echo
  echo "==================================================================== efl: summary"
  for src in "$@"; do
    local f=$src
    [ -d "$src" ] && f=$src/efl-components.txt
    if [ ! -f "$f" ]; then
      [ -d "$src" ] && echo "$src: no efl-components.txt (its configuration did not finish)"
      continue
    fi
    [ -s "$f" ] || continue
    if [ -d "$src" ]; then awk -v dir="$src" '{ print dir ": " $0 }' "$f"; else cat "$f"; fi
    not_built=$((not_built + $(grep -c '^efl: NOT built: ' "$f" || true)))
  done
  if [ -s "$skips" ]; then
    skipped=$(grep -c . "$skips" || true)
    echo "skipped: $skipped tests:"
    sed 's/^/  /' "$skips"
  else
    echo "skipped: 0 tests"
  fi
  lines="$not_built component(s) NOT built, $skipped test(s) skipped"
  local ci=${CI:-}
  if [ "${ci,,}" = true ] && ((not_built + skipped)); then
    echo "efl: FAIL under CI=true: $lines (install what is missing; see docs/testing.md)"
    echo "===================================================================================="
    return 1
  fi
  echo "efl: $lines${CI:+ (CI=$CI)}"
  echo "===================================================================================="
}

[ $# -ge 2 ] || usage
cmd=$1; shift
case "$cmd" in
  list) [ $# -le 2 ] || usage; list "$@" ;;
  summary) summary "$@" ;;
  *) usage ;;
esac
