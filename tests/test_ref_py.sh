#!/bin/bash
# Checks tools/ref.py against the reference cases in ../shared/cases (relative to the repo root):
# prefill logits, greedy ids, MTP logits and routing sets. Exits non-zero on any failure.
cd "$(dirname "$0")/.." || exit 2
PY=/usr/bin/python3
CASES=../shared/cases
if [ ! -d "$CASES" ]; then
    echo "!!!!!!!! SKIPPED: ../shared/cases not found !!!!!!!!"
    exit 0
fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
fails=0
check() {   # check LABEL COMMAND...: run, count failure
    if ! "${@:2}"; then echo "FAIL: $1"; fails=$((fails + 1)); fi
}
manifest() {   # manifest CASE EXPR: python expression over the manifest dict m
    $PY -c "import json,sys; m=json.load(open(sys.argv[1])); print($2)" "$1/manifest.json"
}

ncases=0
for dir in "$CASES"/*/; do
    dir=${dir%/}
    [ -f "$dir/manifest.json" ] || continue
    name=$(basename "$dir")
    ncases=$((ncases + 1))
    echo "== $name"
    out=$TMP/$name
    mkdir -p "$out"
    tokens=$(manifest "$dir" "','.join(map(str, m['tokens']))")
    args=(-m "$dir" --tokens "$tokens" -o "$out/logits.npy" --routing-out "$out/routing.npy")
    [ -f "$dir/ref/mtp_logits.npy" ] && args+=(--mtp-out "$out/mtp.npy")
    [ -f "$dir/ref/mtp_topk_idx.npy" ] && args+=(--mtp-routing-out "$out/mtp_routing.npy")
    if ! $PY tools/ref.py "${args[@]}"; then
        echo "FAIL: $name: ref.py crashed"; fails=$((fails + 1)); continue
    fi

    # prefill logits
    check "$name prefill" $PY tools/npcmp.py "$out/logits.npy" "$dir/ref/logits_prefill.npy" \
        --tol 1e-4 --label "$name prefill"
    # routing sets of the main model
    if [ -f "$dir/ref/moe_topk_idx.npy" ]; then
        check "$name routing" $PY tools/npcmp.py "$out/routing.npy" "$dir/ref/moe_topk_idx.npy" \
            --sets --label "$name routing"
    fi
    # MTP head
    if [ -f "$dir/ref/mtp_logits.npy" ]; then
        check "$name mtp" $PY tools/npcmp.py "$out/mtp.npy" "$dir/ref/mtp_logits.npy" \
            --tol 1e-4 --label "$name mtp"
    fi
    if [ -f "$dir/ref/mtp_topk_idx.npy" ]; then
        check "$name mtp routing" $PY tools/npcmp.py "$out/mtp_routing.npy" \
            "$dir/ref/mtp_topk_idx.npy" --sets --label "$name mtp routing"
    fi

    # greedy generation from the prompt
    prompt=$(manifest "$dir" "','.join(map(str, m['prompt']))")
    n=$(manifest "$dir" "m['greedy_new_tokens']")
    want=$(manifest "$dir" "' '.join(map(str, m['greedy_ids']))")
    got=$($PY tools/ref.py -m "$dir" --tokens "$prompt" --greedy "$n")
    if [ "$got" == "$want" ]; then
        echo "$name greedy: $n ids identical OK"
    else
        echo "$name greedy: got  [$got]"
        echo "$name greedy: want [$want]"
        echo "FAIL: $name greedy"; fails=$((fails + 1))
    fi
done

if [ "$ncases" -eq 0 ]; then
    echo "FAIL: no cases with manifest.json in $CASES"; exit 1
fi
if [ "$fails" -ne 0 ]; then
    echo "test_ref_py: $fails FAILURE(S)"; exit 1
fi
echo "test_ref_py: all checks passed on $ncases case(s)"
