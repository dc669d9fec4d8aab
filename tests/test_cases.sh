#!/usr/bin/env bash
# Engine vs DeepSeek's official reference outputs on every case in ../shared/cases:
# prefill, decode and chunked logits within 1e-4 with identical argmax, greedy ids identical,
# with 1 and 2 threads. Needs ../shared (CI always has it); skips loudly without it.
set -u
source "$(dirname "$0")/lib.sh"
CASES=../shared/cases
if [ ! -d "$CASES" ]; then echo "SKIPPED: $CASES not found (reference cases unavailable)"; exit 0; fi
ncase=0
for dir in "$CASES"/*/; do
  [ -f "$dir/manifest.json" ] || continue
  ncase=$((ncase+1))
  name=$(basename "$dir")
  read -r TOK PROMPT NGEN GREEDY < <($PY - "$dir/manifest.json" <<'PYEOF'
import json, sys
m = json.load(open(sys.argv[1]))
print(",".join(map(str, m["tokens"])), ",".join(map(str, m["prompt"])), m["greedy_new_tokens"], ",".join(map(str, m["greedy_ids"])))
PYEOF
)
  for th in 1 2; do
    for mode in prefill decode chunk5 chunk16; do
      case $mode in
        prefill) flags=""; ref=logits_prefill.npy;;
        decode) flags="--decode"; ref=logits_decode.npy;;
        chunk5) flags="--chunk 5"; ref=logits_prefill.npy;;
        chunk16) flags="--chunk 16"; ref=logits_prefill.npy;;
      esac
      out="$tmp/$name.$mode.$th.npy"
      if ! ./dseek logits -m "$dir" --tokens "$TOK" -o "$out" -t $th $flags 2>"$tmp/err"; then
        bad "$name $mode t=$th: dseek failed: $(cat "$tmp/err")"; continue
      fi
      if r=$($PY tools/npcmp.py "$out" "$dir/ref/$ref" --tol 1e-4 --label "$name $mode t=$th"); then ok "$r"; else bad "$r"; fi
    done
    # routing: the chosen experts of every MoE layer, compared as sets
    if ./dseek logits -m "$dir" --tokens "$TOK" -o "$tmp/r.npy" --routing-out "$tmp/$name.route.npy" -t $th 2>"$tmp/err"; then
      if r=$($PY tools/npcmp.py "$tmp/$name.route.npy" "$dir/ref/moe_topk_idx.npy" --sets --label "$name routing t=$th"); then ok "$r"; else bad "$r"; fi
    else bad "$name routing: $(cat "$tmp/err")"; fi
    if [ -f "$dir/ref/mtp_topk_idx.npy" ]; then
      if ./dseek logits -m "$dir" --tokens "$TOK" --mtp -o "$tmp/r.npy" --routing-out "$tmp/$name.mroute.npy" -t $th 2>"$tmp/err"; then
        if r=$($PY tools/npcmp.py "$tmp/$name.mroute.npy" "$dir/ref/mtp_topk_idx.npy" --sets --label "$name mtp routing t=$th"); then ok "$r"; else bad "$r"; fi
      else bad "$name mtp routing: $(cat "$tmp/err")"; fi
    fi
    if [ -f "$dir/ref/mtp_logits.npy" ]; then
      for mode in prefill decode chunk7; do
        case $mode in
          prefill) flags=""; ref=mtp_logits.npy;;
          decode) flags="--decode"; ref=mtp_logits_decode.npy;;
          chunk7) flags="--chunk 7"; ref=mtp_logits.npy;;
        esac
        out="$tmp/$name.mtp.$mode.$th.npy"
        if ! ./dseek logits -m "$dir" --tokens "$TOK" --mtp -o "$out" -t $th $flags 2>"$tmp/err"; then
          bad "$name mtp $mode t=$th: dseek failed: $(cat "$tmp/err")"; continue
        fi
        if r=$($PY tools/npcmp.py "$out" "$dir/ref/$ref" --tol 1e-4 --label "$name mtp $mode t=$th"); then ok "$r"; else bad "$r"; fi
      done
    fi
    got=$(./dseek run -m "$dir" --tokens "$PROMPT" -n "$NGEN" --temp 0 --ids -t $th 2>/dev/null | tr ' ' ',')
    if [ "$got" = "$GREEDY" ]; then ok "$name greedy ids t=$th ($NGEN tokens)"; else bad "$name greedy ids t=$th: got $got want $GREEDY"; fi
  done
  # every way of loading the weights gives the same logits, bit for bit
  for load in --no-mmap --mmap --lazy-mmap --mlock; do
    if ./dseek logits -m "$dir" --tokens "$TOK" -o "$tmp/$name.load.npy" -t 2 $load 2>"$tmp/err" &&
       cmp -s "$tmp/$name.load.npy" "$tmp/$name.prefill.2.npy"; then ok "$name $load: same logits as the default load"
    else bad "$name $load: $(cat "$tmp/err") (logits differ or failed)"; fi
  done
  # a bfloat16 latent cache: every path (prefill, decode, chunks, the MTP head) within 2e-2
  # of the reference with the same argmax, and not the float32 cache's bits
  for mode in prefill decode chunk5 mtp; do
    case $mode in
      prefill) flags=""; ref=logits_prefill.npy; f32="$tmp/$name.prefill.2.npy";;
      decode) flags="--decode"; ref=logits_decode.npy; f32="$tmp/$name.decode.2.npy";;
      chunk5) flags="--chunk 5"; ref=logits_prefill.npy; f32="$tmp/$name.chunk5.2.npy";;
      mtp) [ -f "$dir/ref/mtp_logits.npy" ] || continue
           flags="--mtp --decode"; ref=mtp_logits_decode.npy; f32="$tmp/$name.mtp.decode.2.npy";;
    esac
    out="$tmp/$name.bf16.$mode.npy"
    if ./dseek logits -m "$dir" --tokens "$TOK" -o "$out" -t 2 $flags --cache-type bf16 2>"$tmp/err"; then
      if cmp -s "$out" "$f32"; then bad "$name bf16 cache $mode: same bits as the float32 cache"
      elif r=$($PY tools/npcmp.py "$out" "$dir/ref/$ref" --tol 2e-2 --label "$name bf16 cache $mode"); then ok "$r"; else bad "$r"; fi
    else bad "$name bf16 cache $mode: $(cat "$tmp/err")"; fi
  done
done
[ $ncase -gt 0 ] || bad "no case with a manifest.json in $CASES"
finish test_cases
