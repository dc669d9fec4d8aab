#!/usr/bin/env bash
# Engine vs the independent NumPy reference (tools/ref.py) on checkpoints made by
# tools/gen_ckpt, covering what ../shared/cases does not: every dtype, fp8 with partial
# 128x128 blocks, sharded files with an index, every routing method, several dense layers,
# YaRN past original_max_position_embeddings, the MTP head (also as the only MoE layer).
# Also checks prefill = decode = chunked, shards = single file, fp8 = its dequantized F32 twin.
set -u
source "$(dirname "$0")/lib.sh"
cmp() { # cmp A.npy B.npy TOL LABEL
  if r=$($PY tools/npcmp.py "$1" "$2" --tol "$3" --label "$4" 2>&1); then ok "$r"; else bad "$r"; fi
}
gen() { # gen DIR ARGS...
  local d=$1; shift
  ./tools/gen_ckpt --out "$d" "$@" >/dev/null 2>"$tmp/generr" || { bad "gen_ckpt $*: $(cat "$tmp/generr")"; return 1; }
}
tokens() { # tokens N VOCAB SEED -> "0,..." (bos first)
  $PY -c "import random,sys; r=random.Random($3); print(','.join(['0']+[str(r.randrange(2,$2)) for _ in range($1-1)]))"
}

# check NAME DIR TOKENS [mtp]: engine prefill/decode/chunk vs ref.py, greedy ids, MTP logits
check() {
  local name=$1 dir=$2 tok=$3 mtp=${4:-}
  local extra=""; [ -n "$mtp" ] && extra="--mtp-out $tmp/$name.refmtp.npy"
  if ! $PY tools/ref.py -m "$dir" --tokens "$tok" -o "$tmp/$name.ref.npy" $extra >/dev/null 2>"$tmp/referr"; then
    bad "$name: ref.py failed: $(tail -1 "$tmp/referr")"; return
  fi
  for mode in prefill decode chunk3 chunk17; do
    case $mode in prefill) f="";; decode) f="--decode";; chunk3) f="--chunk 3";; chunk17) f="--chunk 17";; esac
    if ./dseek logits -m "$dir" --tokens "$tok" -o "$tmp/$name.$mode.npy" $f 2>"$tmp/err"; then
      cmp "$tmp/$name.$mode.npy" "$tmp/$name.ref.npy" 1e-4 "$name $mode vs ref.py"
    else bad "$name $mode: $(cat "$tmp/err")"; fi
  done
  if [ -n "$mtp" ]; then
    for mode in prefill decode; do
      f=""; [ $mode = decode ] && f="--decode"
      if ./dseek logits -m "$dir" --tokens "$tok" --mtp -o "$tmp/$name.mtp.$mode.npy" $f 2>"$tmp/err"; then
        cmp "$tmp/$name.mtp.$mode.npy" "$tmp/$name.refmtp.npy" 1e-4 "$name mtp $mode vs ref.py"
      else bad "$name mtp $mode: $(cat "$tmp/err")"; fi
    done
  fi
  local prompt=${tok%,*,*,*,*,*,*,*,*}
  local want got
  want=$($PY tools/ref.py -m "$dir" --tokens "$prompt" --greedy 8 2>/dev/null)
  got=$(./dseek run -m "$dir" --tokens "$prompt" -n 8 --temp 0 --ids 2>/dev/null)
  if [ -n "$want" ] && [ "$want" = "$got" ]; then ok "$name greedy ids ($want)"; else bad "$name greedy ids: got '$got' want '$want'"; fi
}

make -s tools/gen_ckpt dseek || { echo "build failed"; exit 1; }

# 1. V2-Lite style: plain q_proj, softmax greedy routing, no yarn, BF16, single file
gen "$tmp/v2" --preset tiny-v2 --dtype bf16 --seed 1 && check v2_bf16 "$tmp/v2" "$(tokens 40 1000 1)"

# 2. V3 style, fp8 with partial blocks, 3 shards + index, yarn past the original length, MTP;
#    and its dequantized F32 twin
gen "$tmp/v3" --preset tiny-v3 --dtype fp8 --hidden 200 --moe-inter 72 --inter 328 --q-lora 96 --kv-lora 80 \
    --shards 3 --yarn 8 --yarn-orig 16 --seed 2 --twin-f32 "$tmp/v3twin" && {
  T=$(tokens 45 1000 2)
  check v3_fp8_shards "$tmp/v3" "$T" mtp
  ./dseek logits -m "$tmp/v3" --tokens "$T" -o "$tmp/a.npy" 2>/dev/null
  ./dseek logits -m "$tmp/v3twin" --tokens "$T" -o "$tmp/b.npy" 2>/dev/null
  cmp "$tmp/a.npy" "$tmp/b.npy" 1e-5 "fp8 = dequantized f32 twin"
  ./dseek logits -m "$tmp/v3" --tokens "$T" --mtp -o "$tmp/a.npy" 2>/dev/null
  ./dseek logits -m "$tmp/v3twin" --tokens "$T" --mtp -o "$tmp/b.npy" 2>/dev/null
  cmp "$tmp/a.npy" "$tmp/b.npy" 1e-5 "fp8 = dequantized f32 twin (mtp)"
}
# 3. same model as one file = 3 shards
gen "$tmp/v3one" --preset tiny-v3 --dtype fp8 --hidden 200 --moe-inter 72 --inter 328 --q-lora 96 --kv-lora 80 \
    --shards 1 --yarn 8 --yarn-orig 16 --seed 2 && {
  ./dseek logits -m "$tmp/v3one" --tokens "$T" -o "$tmp/b.npy" 2>/dev/null
  ./dseek logits -m "$tmp/v3" --tokens "$T" -o "$tmp/a.npy" 2>/dev/null
  cmp "$tmp/a.npy" "$tmp/b.npy" 0 "3 shards = single file (bit-exact)"
}
# 4. group_limited_greedy (max group score), softmax, 3 dense layers, F16, q_lora
gen "$tmp/glg" --preset tiny-v3 --dtype f16 --layers 5 --dense 3 --topk-method group_limited_greedy --scoring softmax \
    --groups 4 --topk-groups 2 --norm-topk 0 --scaling 1.5 --mtp 0 --seed 3 && check glg_f16 "$tmp/glg" "$(tokens 33 1000 3)"
# 5. noaux_tc with sigmoid, no renormalization, F32, plain q_proj, yarn with mscale != mscale_all_dim
gen "$tmp/sig" --preset tiny-v3 --dtype f32 --q-lora 0 --norm-topk 0 --scaling 2.0 --yarn 4 --yarn-orig 8 \
    --mscale 0.8 --mscale-all-dim 0.6 --mtp 0 --seed 4 && check noaux_f32 "$tmp/sig" "$(tokens 30 1000 4)"
# 6. greedy routing with sigmoid scoring and renormalization, top-1, bf16
gen "$tmp/top1" --preset tiny-v2 --dtype bf16 --scoring sigmoid --topk 1 --norm-topk 1 --seed 5 && \
    check sigmoid_top1 "$tmp/top1" "$(tokens 20 1000 5)"
# 7. no MoE layer in the main model, only in the MTP layer (once crashed at load: the
#    traffic model took the expert size from layer first_k_dense_replace, a dense layer here)
gen "$tmp/mtpmoe" --preset tiny-v3 --dtype bf16 --layers 1 --dense 1 --mtp 1 --seed 6 && \
    check mtp_only_moe "$tmp/mtpmoe" "$(tokens 20 1000 6)" mtp

finish test_generated
