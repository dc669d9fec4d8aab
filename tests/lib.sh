# Shared by the test scripts: a temp dir removed at exit, pass/fail counters, and the
# closing "NAME: N passed, M failed" line (finish returns non-zero on any failure).
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
pass=0; fail=0
ok() { pass=$((pass+1)); echo "ok   $*"; }
bad() { fail=$((fail+1)); echo "FAIL $*"; }
finish() { echo "$1: $pass passed, $fail failed"; [ $fail -eq 0 ]; }
