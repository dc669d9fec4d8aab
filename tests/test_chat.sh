#!/usr/bin/env bash
# Text in, text out on the default model (DeepSeek-V3 layout + the real V3 tokenizer):
# a scripted chat whose second turn reuses the cache and gives the same greedy reply as one
# prefill of the whole conversation, /reset, a full context, run -p, tokenize, seeds.
set -u
source "$(dirname "$0")/lib.sh"
make -s dseek tools/gen_ckpt || exit 1
M=models/default
[ -f $M/tokenizer.json ] && [ -f $M/model.safetensors ] || bash models/make_default.sh >/dev/null 2>&1 || { echo "cannot make $M"; exit 1; }

# 1. two turns over stdin
printf 'Hello there!\nWhat is 2+2?\n' | ./dseek chat -m $M -n 12 --temp 0 --ids-log "$tmp/log" >"$tmp/out" 2>"$tmp/err"
[ $? -eq 0 ] && ok "chat over piped stdin exits 0" || bad "chat failed: $(cat "$tmp/err")"
p1=$(sed -n 's/^turn 1 prompt: //p' "$tmp/log"); r1=$(sed -n 's/^turn 1 reply: //p' "$tmp/log")
p2=$(sed -n 's/^turn 2 prompt: //p' "$tmp/log"); r2=$(sed -n 's/^turn 2 reply: //p' "$tmp/log")
c2=$(sed -n 's/^turn 2 computed: \([0-9]*\) of \([0-9]*\)/\1 \2/p' "$tmp/log")
[ -n "$p2" ] && [ "${p2#"$p1"}" != "$p2" ] && ok "turn 2 prompt extends turn 1's" || bad "turn 2 prompt does not extend turn 1's"
set -- $c2; n1=$(echo $p1 | wc -w)
[ -n "${1:-}" ] && [ "$1" -le $(( $2 - n1 )) ] && ok "turn 2 computed only $1 of $2 tokens (cache reused)" || bad "turn 2 computed '$c2'"
want=$(./dseek run -m $M --tokens "$(echo $p2 | tr ' ' ',')" -n 12 --temp 0 --ids --no-mtp 2>/dev/null)
want1=$(echo "$want" | awk '{print}')
# the reply stops at eos, so compare the same number of ids
nr=$(echo $r2 | wc -w); want=$(echo $want | cut -d' ' -f1-$nr)
[ "$r2" = "$want" ] && ok "turn 2 reply = greedy run over one prefill of the whole conversation" || bad "turn 2 reply '$r2' vs '$want'"
# the first user text is rendered with the V3 template: bos <｜User｜> ... <｜Assistant｜>
exp=$(./dseek tokenize -m $M -p "Hello there!")
[ "$(echo $p1 | cut -d' ' -f3- | rev | cut -d' ' -f2- | rev)" = "$(echo $exp | cut -d' ' -f2-)" ] && \
  [ "$(echo $p1 | cut -d' ' -f1)" = 0 ] && ok "turn 1 prompt = bos <User> text <Assistant>" || bad "turn 1 prompt '$p1'"

# 2. /reset starts over: the third turn's prompt is a fresh conversation
printf 'Hello there!\n/reset\nHello there!\n/exit\nnot read\n' | ./dseek chat -m $M -n 4 --temp 0 --ids-log "$tmp/log2" >/dev/null 2>&1
a=$(sed -n 's/^turn 1 prompt: //p' "$tmp/log2"); b=$(sed -n 's/^turn 2 prompt: //p' "$tmp/log2")
n=$(grep -c prompt "$tmp/log2")
[ -n "$a" ] && [ "$a" = "$b" ] && [ "$n" = 2 ] && ok "/reset forgets the conversation, /exit stops" || bad "/reset: '$a' vs '$b' ($n turns)"

# 3. a turn that does not fit the context is refused with a hint; the chat goes on
printf 'one two three four five six seven eight nine ten eleven twelve\nhi\n' | ./dseek chat -m $M -n 3 -c 14 --temp 0 >"$tmp/out" 2>"$tmp/err"
grep -q "context full" "$tmp/err" && grep -q "/reset" "$tmp/err" && ok "context full: $(grep 'context full' "$tmp/err" | head -1)" || bad "context full message missing: $(cat "$tmp/err")"

# 4. binary stdin does not crash
head -c 3000 /dev/urandom | ./dseek chat -m $M -n 2 -c 4096 --temp 0 >/dev/null 2>"$tmp/err"; rc=$?
[ $rc -eq 0 ] && ok "binary stdin" || bad "binary stdin: exit $rc $(tail -1 "$tmp/err")"

# 5. run -p streams text; same seed, same output; a system prompt goes first
o1=$(./dseek run -m $M -p "Once upon a time" -n 20 --temp 0.9 --seed 7 2>/dev/null)
o2=$(./dseek run -m $M -p "Once upon a time" -n 20 --temp 0.9 --seed 7 2>/dev/null)
o3=$(./dseek run -m $M -p "Once upon a time" -n 20 --temp 0.9 --seed 8 2>/dev/null)
[ -n "$o1" ] && [ "$o1" = "$o2" ] && [ "$o1" != "$o3" ] && ok "same seed, same text; another seed, other text" || bad "seeds: '$o1' '$o2' '$o3'"
./dseek run -m $M -p "Once upon a time" -n 5 --temp 0 2>"$tmp/err" >/dev/null
grep -q "tok/s" "$tmp/err" && ok "run prints speeds: $(grep tok/s "$tmp/err")" || bad "no speeds on stderr"
ids=$(./dseek run -m $M -p "hi" --chat --system "Be brief." -n 3 --temp 0 --ids 2>/dev/null)
[ -n "$ids" ] && ok "run --chat --system --ids: $ids" || bad "run --chat"

# 6. tokenize needs only the tokenizer files; bos first (add_bos_token is true)
mkdir "$tmp/tok"; cp $M/tokenizer.json $M/tokenizer_config.json "$tmp/tok/"
t=$(./dseek tokenize -m "$tmp/tok" -p "Hello world")
[ "$t" = "0 19923 2058" ] && ok "tokenize 'Hello world' = $t" || bad "tokenize gave '$t'"
# errors: no prompt, unknown flag, a model without tokenizer
./dseek run -m $M -n 3 >/dev/null 2>"$tmp/err"; [ $? -eq 2 ] && ok "run without prompt: $(cat "$tmp/err")" || bad "run without prompt"
./dseek chat -m $M --bogus >/dev/null 2>"$tmp/err"; [ $? -eq 2 ] && ok "unknown flag: $(cat "$tmp/err")" || bad "unknown flag"
./tools/gen_ckpt --out "$tmp/notok" --preset tiny-v2 >/dev/null 2>&1
./dseek run -m "$tmp/notok" -p hi >/dev/null 2>"$tmp/err"; [ $? -eq 2 ] && grep -q tokenizer "$tmp/err" && ok "no tokenizer: $(cat "$tmp/err")" || bad "no tokenizer: $(cat "$tmp/err")"
finish test_chat
