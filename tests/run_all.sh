#!/usr/bin/env bash
# Runs every dseek test; the last line is "N passed, M failed" over all suites.
set -u
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
suites=0; failed=0
run() {
  local name=$1; shift
  echo "=== $name"
  local t0=$SECONDS
  if "$@"; then echo "=== $name: PASS ($((SECONDS-t0)) s)"; else echo "=== $name: FAIL ($((SECONDS-t0)) s)"; failed=$((failed+1)); fi
  suites=$((suites+1))
}
run reference-python bash tests/test_ref_py.sh
run reference-cases bash tests/test_cases.sh
run generated bash tests/test_generated.sh
run malformed $PY tests/test_malformed.py ./dseek ./tools/gen_ckpt
for t in tests/test_*.sh; do
  case $t in tests/test_ref_py.sh|tests/test_cases.sh|tests/test_generated.sh) continue;; esac
  run "$(basename "$t" .sh)" bash "$t"
done
echo "suites: $((suites-failed)) passed, $failed failed"
[ $failed -eq 0 ]
