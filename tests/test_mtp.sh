#!/usr/bin/env bash
# MTP speculative decoding: greedy output identical with and without drafting (adaptive,
# every step, chained drafts), over long generations whose prompt spans several forward
# steps, and up to the last position of the context; speculative sampling keeps the
# model's distribution (tests/test_spec.c).
set -u
source "$(dirname "$0")/lib.sh"
make -s dseek tools/gen_ckpt || exit 1

# models: the shared V3 case, a random fp8 one, and an F32 one whose head predicts well
models=()
[ -d ../shared/cases/v3_fp8 ] && models+=(../shared/cases/v3_fp8) || echo "SKIPPED: ../shared/cases/v3_fp8 not found"
./tools/gen_ckpt --out "$tmp/rand" --preset tiny-v3 --dtype fp8 --seed 21 >/dev/null 2>&1 && models+=("$tmp/rand")
./tools/gen_ckpt --out "$tmp/easy" --preset tiny-v3 --dtype f32 --seed 9 >/dev/null 2>&1 &&
  $PY tests/make_mtp_model.py "$tmp/easy" && models+=("$tmp/easy")
./tools/gen_ckpt --out "$tmp/noisy" --preset tiny-v3 --dtype f32 --seed 9 >/dev/null 2>&1 &&
  $PY tests/make_mtp_model.py "$tmp/noisy" --noise 0.6 && models+=("$tmp/noisy")

PROMPT=0,17,99,4,250,31,7,8,600,1000,12,13,14,15,16,17,18,19,20,21
for m in "${models[@]}"; do
  name=$(basename "$m")
  want=$(./dseek run --ids -m "$m" --tokens $PROMPT -n 100 --temp 0 --no-mtp -b 7 2>/dev/null)
  [ -n "$want" ] || { bad "$name: plain run failed"; continue; }
  variants=("" "--no-adaptive --draft 2")
  case $name in easy|noisy) variants+=("--no-adaptive" "--no-adaptive --draft 4" "--no-adaptive -b 3");; esac
  for flags in "${variants[@]}"; do
    got=$(./dseek run --ids -m "$m" --tokens $PROMPT -n 100 --temp 0 -b 7 $flags 2>"$tmp/err")
    stats=$(grep mtp: "$tmp/err")
    if [ "$got" = "$want" ]; then ok "$name greedy identical with MTP $flags: $stats"; else bad "$name MTP $flags: ids differ"; fi
  done
  # generation that ends at the last position of the context: -c = prompt + n - 1
  for n in 30 31; do
    want=$(./dseek run --ids -m "$m" --tokens $PROMPT -n $n --temp 0 --no-mtp 2>/dev/null)
    got=$(./dseek run --ids -m "$m" --tokens $PROMPT -n $n --temp 0 --no-adaptive --draft 3 -c $((20 + n - 1)) 2>"$tmp/err")
    if [ -n "$got" ] && [ "$got" = "$want" ]; then ok "$name greedy identical up to the end of the context (n=$n)"
    else bad "$name end of context n=$n: got '$got' want '$want' $(cat "$tmp/err")"; fi
  done
  # one token past the context is a clear error
  if ./dseek run --ids -m "$m" --tokens $PROMPT -n 31 --temp 0 -c 49 >/dev/null 2>"$tmp/err"; then bad "$name: ran past the context"
  else grep -q "context" "$tmp/err" && ok "$name past the context: $(cat "$tmp/err")" || bad "$name: unclear error $(cat "$tmp/err")"; fi
done

# speculative sampling keeps the distribution
${DSEEK_CC:-cc} -O2 -std=c11 -Wall -Wextra -Iinclude -fopenmp $(pkg-config --cflags openblas libcjson libpcre2-8) tests/test_spec.c src/dseek.c \
   -o "$tmp/test_spec" $(pkg-config --libs openblas libcjson libpcre2-8) -lm || bad "build test_spec"
if [ -x "$tmp/test_spec" ]; then
  if OMP_NUM_THREADS=1 "$tmp/test_spec" "$tmp/noisy" ${DSEEK_SPEC_N:-1500}; then ok "speculative sampling distribution"; else bad "speculative sampling distribution"; fi
fi
finish test_mtp
