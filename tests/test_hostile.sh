#!/usr/bin/env bash
# Hostile input (tests/test_hostile.py): NaN/Inf weights, broken tokenizer files, config
# fields of the wrong type, missing shards, command-line abuse.
set -u
cd "$(dirname "$0")/.."
make -s dseek tools/gen_ckpt || exit 1
M=models/default
[ -f $M/tokenizer.json ] && [ -f $M/model.safetensors ] || bash models/make_default.sh >/dev/null 2>&1 ||
  { echo "cannot make $M"; exit 1; }
exec /usr/bin/python3 tests/test_hostile.py ./dseek ./tools/gen_ckpt $M
