#!/usr/bin/python3
"""Hostile input: weights holding NaN or Inf, broken tokenizer files, config fields of the
wrong JSON type, shards listed but missing, and command-line abuse. Every case must exit
with the expected status (2 for a refused file or argument) and print exactly one line on
stderr naming the file and the field (for files); never a crash, a sanitizer report, a
hang or a silent answer. Usage: test_hostile.py DSEEK GEN_CKPT DEFAULT_MODEL_DIR"""
import json, os, shutil, struct, subprocess, sys, tempfile

dseek, gen, default = sys.argv[1], sys.argv[2], sys.argv[3]
tmp = tempfile.mkdtemp()
passed = failed = 0
ST = "model.safetensors"


def run(args, stdin=None, timeout=300):
    try:
        r = subprocess.run([dseek, *args], input=stdin, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, b"", b"(hung)"
    return r.returncode, r.stdout, r.stderr


def check(label, args, *needles, code=2, stdin=None, lines=1):
    """The command exits with `code`; with lines=1 stderr is one line holding every needle."""
    global passed, failed
    rc, out, err = run(args, stdin)
    text = err.decode("utf-8", "replace").strip()
    bad_report = any(s in text for s in ("Sanitizer", "runtime error", "internal error", "Segmentation"))
    good = rc == code and not bad_report and all(n in text for n in needles) and \
        (lines is None or len(text.splitlines()) == lines)
    shown = text if len(text) < 400 else text[:400] + "..."
    print(("ok   " if good else "FAIL ") + f"{label}: exit {rc}: {shown}" +
          ("" if good else f"   (want exit {code}, {lines} line(s) with {needles})"))
    if good: passed += 1
    else: failed += 1
    return out


def gen_model(name, *flags):
    d = os.path.join(tmp, name)
    subprocess.run([gen, "--out", d, "--preset", "tiny-v3", "--layers", "2", "--seed", "3", *flags], check=True,
                   capture_output=True)
    return d


def variant(src, name):
    d = os.path.join(tmp, name)
    shutil.copytree(src, d)
    return d


def poke(d, tensor, value, index=0, fname=ST):
    """Overwrites element `index` of a tensor in place with value (a float, or for F8 a byte)."""
    p = os.path.join(d, fname)
    with open(p, "r+b") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
        t = h[tensor]
        size = {"F32": 4, "BF16": 2, "F16": 2, "F8_E4M3": 1}[t["dtype"]]
        f.seek(8 + n + t["data_offsets"][0] + index * size)
        if t["dtype"] == "F32": b = struct.pack("<f", value)
        elif t["dtype"] == "BF16": b = struct.pack("<f", value)[2:]
        elif t["dtype"] == "F16": b = struct.pack("<e", value)
        else: b = bytes([value])
        f.write(b)


def logits(d, *extra):
    return ["logits", "-m", d, "--tokens", "0,5,7", "-o", os.path.join(tmp, "out.npy"), *extra]


NAN, INF = float("nan"), float("inf")
# ---- NaN / Inf in weights
bf = gen_model("bf16", "--dtype", "bf16")
fp = gen_model("fp8", "--dtype", "fp8")
check("clean bf16 model with --check-tensors", logits(bf, "--check-tensors"), code=0, lines=0)
check("clean fp8 model with --check-tensors", logits(fp, "--check-tensors"), code=0, lines=0)
for name, t, v in [("NaN in model.norm.weight", "model.norm.weight", NAN),
                   ("Inf in input_layernorm", "model.layers.0.input_layernorm.weight", INF),
                   ("NaN in q_a_layernorm", "model.layers.1.self_attn.q_a_layernorm.weight", NAN),
                   ("Inf in the router", "model.layers.1.mlp.gate.weight", -INF),
                   ("NaN in e_score_correction_bias", "model.layers.1.mlp.gate.e_score_correction_bias", NAN)]:
    d = variant(bf, "w_" + t)
    poke(d, t, v, 3)
    check(name + " (always checked)", logits(d), ST, t, "element 3", "NaN" if v != v else "Inf")
for name, src, t, v, idx in [
        ("NaN in a bf16 o_proj", bf, "model.layers.0.self_attn.o_proj.weight", NAN, 10),
        ("Inf in the bf16 lm_head", bf, "lm_head.weight", INF, 7 * 256 + 3),
        ("Inf in a used embedding row", bf, "model.embed_tokens.weight", INF, 5 * 256),
        ("NaN byte in an fp8 kv_b_proj", fp, "model.layers.1.self_attn.kv_b_proj.weight", 0x7F, 0),
        ("Inf in an fp8 weight_scale_inv", fp, "model.layers.0.mlp.down_proj.weight_scale_inv", INF, 0)]:
    d = variant(src, "m_" + t)
    poke(d, t, v, idx)
    kind = "Inf" if v == INF else "NaN"
    check(name + ": logits refuse", logits(d), "non-finite logits", "--check-tensors")
    check(name + ": run refuses", ["run", "-m", d, "--tokens", "0,5,7", "--ids", "-n", "4"], "non-finite logits")
    check(name + ": --check-tensors names it", logits(d, "--check-tensors"), ST, t, kind)
# quantizing: a NaN among finite weights is refused, never quantized as a 0 (a block's
# largest |w| found by comparisons alone skips a NaN); with Inf as above
for name, src, t, v, idx in [("NaN in a bf16 o_proj", bf, "model.layers.0.self_attn.o_proj.weight", NAN, 10),
                             ("NaN in a bf16 expert", bf, "model.layers.1.mlp.experts.0.down_proj.weight", NAN, 33),
                             ("NaN byte in an fp8 expert", fp, "model.layers.1.mlp.experts.0.up_proj.weight", 0x7F, 37)]:
    d = variant(src, "q_" + t)
    poke(d, t, v, idx)
    for ty in ("q8_0", "q4_0", "q4_k"):
        check(f"{name}: quantize --type {ty} refuses", ["quantize", "-m", d, "-o", os.path.join(tmp, "qout_" + ty),
                                                        "--type", ty], t, "cannot be quantized", "not finite")
    check(name + ": logits --quant q8_0 refuses", logits(d, "--quant", "q8_0"), t, "cannot be quantized")
# the MTP head: its own weights
d = variant(bf, "mtp_nan")
poke(d, "model.layers.2.shared_head.head.weight", NAN, 40)
check("NaN in the MTP head: logits --mtp refuse", logits(d, "--mtp"), "MTP head", "non-finite logits")
check("NaN in the MTP head: drafting refuses", ["run", "-m", d, "--tokens", "0,5,7", "--ids", "-n", "6",
                                               "--no-adaptive"], "MTP head", "non-finite logits")
check("NaN in the MTP head: --no-mtp runs", ["run", "-m", d, "--tokens", "0,5,7", "--ids", "-n", "6", "--no-mtp"],
      code=0, lines=None)
check("NaN in the MTP head: --check-tensors", logits(d, "--check-tensors"), "shared_head.head.weight", "NaN")

# ---- tokenizer.json and tokenizer_config.json
tokdir = os.path.join(tmp, "tok")
os.makedirs(tokdir)
real_tj = open(os.path.join(default, "tokenizer.json"), "rb").read()
real_tc = open(os.path.join(default, "tokenizer_config.json"), "rb").read()
TJ = json.loads(real_tj)


def tok_case(label, needles, tj=None, tc=None, raw_tj=None, raw_tc=None):
    d = os.path.join(tmp, "tok_" + str(passed + failed))
    os.makedirs(d)
    if raw_tj is not None: open(os.path.join(d, "tokenizer.json"), "wb").write(raw_tj)
    elif tj is not None: open(os.path.join(d, "tokenizer.json"), "w").write(json.dumps(tj))
    else: open(os.path.join(d, "tokenizer.json"), "wb").write(real_tj)
    if raw_tc is not None: open(os.path.join(d, "tokenizer_config.json"), "wb").write(raw_tc)
    elif tc is not None: open(os.path.join(d, "tokenizer_config.json"), "w").write(json.dumps(tc))
    else: open(os.path.join(d, "tokenizer_config.json"), "wb").write(real_tc)
    check(label, ["tokenize", "-m", d, "-p", "hello"], *needles)
    shutil.rmtree(d)


def tj_with(fn):
    j = json.loads(real_tj)
    fn(j)
    return j


TC = json.loads(real_tc)
def tc_with(fn):
    j = json.loads(real_tc)
    fn(j)
    return j


tok_case("unknown model type", ["tokenizer.json", "model.type", "WordPiece"],
         tj_with(lambda j: j["model"].__setitem__("type", "WordPiece")))
tok_case("model type a number", ["tokenizer.json", "model.type"], tj_with(lambda j: j["model"].__setitem__("type", 7)))
tok_case("vocab missing", ["tokenizer.json", "model.vocab"], tj_with(lambda j: j["model"].pop("vocab")))
tok_case("vocab an array", ["tokenizer.json", "model.vocab"], tj_with(lambda j: j["model"].__setitem__("vocab", [1])))
tok_case("vocab id a string", ["tokenizer.json", "model.vocab", "valid id"],
         tj_with(lambda j: j["model"]["vocab"].__setitem__("hello", "5")))
tok_case("vocab id negative", ["tokenizer.json", "model.vocab", "valid id"],
         tj_with(lambda j: j["model"]["vocab"].__setitem__("hello", -5)))
tok_case("merges missing", ["tokenizer.json", "model.merges"], tj_with(lambda j: j["model"].pop("merges")))
tok_case("merge without a space", ["tokenizer.json", "model.merges[3]", "string pair"],
         tj_with(lambda j: j["model"]["merges"].__setitem__(3, "abc")))
tok_case("merge of unknown pieces", ["tokenizer.json", "model.merges[5]", "not in vocab"],
         tj_with(lambda j: j["model"]["merges"].__setitem__(5, "\u2603\u2603 \u2604\u2604")))
tok_case("merge a number", ["tokenizer.json", "model.merges[0]"],
         tj_with(lambda j: j["model"]["merges"].__setitem__(0, 17)))
tok_case("merged piece not in vocab", ["tokenizer.json", "model.merges[1]", "merged token"],
         tj_with(lambda j: j["model"]["merges"].__setitem__(1, "q \u0120")))
tok_case("added_tokens not an array", ["tokenizer.json", "added_tokens"], tj_with(lambda j: j.__setitem__("added_tokens", 3)))
tok_case("added token without id", ["tokenizer.json", "added_tokens[2].id"],
         tj_with(lambda j: j["added_tokens"][2].pop("id")))
tok_case("added token special a string", ["tokenizer.json", "added_tokens[0].special"],
         tj_with(lambda j: j["added_tokens"][0].__setitem__("special", "yes")))
tok_case("unknown pre-tokenizer", ["tokenizer.json", "pre_tokenizer.pretokenizers[1].type", "Metaspace"],
         tj_with(lambda j: j["pre_tokenizer"]["pretokenizers"][1].__setitem__("type", "Metaspace")))
tok_case("bad regex", ["tokenizer.json", "pre_tokenizer.pretokenizers[0].pattern", "regex"],
         tj_with(lambda j: j["pre_tokenizer"]["pretokenizers"][0].__setitem__("pattern", {"Regex": "(unclosed"})))
tok_case("unknown decoder", ["tokenizer.json", "decoder.type"], tj_with(lambda j: j["decoder"].__setitem__("type", "WordPiece")))
tok_case("tokenizer.json not JSON", ["tokenizer.json", "invalid JSON"], raw_tj=real_tj[:1000])
tok_case("tokenizer.json empty", ["tokenizer.json"], raw_tj=b"")
tok_case("tokenizer.json an array", ["tokenizer.json", "not a JSON object"], raw_tj=b"[1,2]")
tok_case("sparse ids (45 bytes asking for gigabytes)", ["tokenizer.json", "model.vocab", "sparse"],
         raw_tj=b'{"model":{"vocab":{"a":67108863},"merges":[]}}')
tok_case("a vocab key with a newline: still one line", ["tokenizer.json", "model.vocab[\"a?b\"]"],
         raw_tj=b'{"model": {"vocab": {"a\\nb": []}}}')
tok_case("add_bos_token a string", ["tokenizer_config.json", "add_bos_token", "boolean"],
         tc=tc_with(lambda j: j.__setitem__("add_bos_token", "yes")))
tok_case("bos_token a number", ["tokenizer_config.json", "bos_token"], tc=tc_with(lambda j: j.__setitem__("bos_token", 5)))
tok_case("eos_token an array", ["tokenizer_config.json", "eos_token"], tc=tc_with(lambda j: j.__setitem__("eos_token", [])))
tok_case("bos_token content a number", ["tokenizer_config.json", "bos_token"],
         tc=tc_with(lambda j: j["bos_token"].__setitem__("content", 1)))
tok_case("bos_token not a token", ["tokenizer_config.json", "bos_token", "not a token"],
         tc=tc_with(lambda j: j.__setitem__("bos_token", "<nope>")))
tok_case("add_bos_token without bos", ["tokenizer_config.json", "add_bos_token"],
         tc=tc_with(lambda j: j.__setitem__("bos_token", None)))
tok_case("chat_template a number", ["tokenizer_config.json", "chat_template"],
         tc=tc_with(lambda j: j.__setitem__("chat_template", 5)))
tok_case("chat_template entries without names", ["tokenizer_config.json", "chat_template"],
         tc=tc_with(lambda j: j.__setitem__("chat_template", [{"template": "x"}])))
tok_case("tokenizer_config.json an array", ["tokenizer_config.json", "not a JSON object"], raw_tc=b"[]")
tok_case("tokenizer_config.json not JSON", ["tokenizer_config.json", "invalid JSON"], raw_tc=b"{\"add_bos_token\": tru")
d = os.path.join(tmp, "tok_missing"); os.makedirs(d)
check("tokenizer.json missing", ["tokenize", "-m", d, "-p", "hi"], "tokenizer.json", "cannot read")
shutil.copy(os.path.join(default, "tokenizer.json"), d)
check("tokenizer_config.json missing", ["tokenize", "-m", d, "-p", "hi"], "tokenizer_config.json", "cannot read")

# ---- config.json fields of every JSON type, given the wrong type
def cfg_case(label, fn, *needles):
    d = variant(fp, "cfg_" + str(passed + failed))
    p = os.path.join(d, "config.json")
    c = json.load(open(p))
    fn(c)
    json.dump(c, open(p, "w"))
    check(label, logits(d), "config.json", *needles)
    shutil.rmtree(d)


def setter(*path_value):
    *path, value = path_value
    def fn(c):
        o = c
        for k in path[:-1]: o = o[k]
        o[path[-1]] = value
    return fn


for label, fn, field in [
        ("int field a string", setter("vocab_size", "129280"), "vocab_size"),
        ("int field a bool", setter("num_hidden_layers", True), "num_hidden_layers"),
        ("int field a fraction", setter("num_attention_heads", 2.5), "num_attention_heads"),
        ("int field an array", setter("kv_lora_rank", [512]), "kv_lora_rank"),
        ("int field null", setter("hidden_size", None), "hidden_size"),
        ("int field too large", setter("intermediate_size", 1e30), "intermediate_size"),
        ("nullable int field a string", setter("q_lora_rank", "none"), "q_lora_rank"),
        ("nullable int field an object", setter("n_routed_experts", {}), "n_routed_experts"),
        ("number field a string", setter("rms_norm_eps", "1e-6"), "rms_norm_eps"),
        ("number field an object", setter("routed_scaling_factor", {"x": 1}), "routed_scaling_factor"),
        ("number field null", setter("rope_theta", None), "rope_theta"),
        ("number field negative", setter("rope_theta", -5), "rope_theta"),
        ("bool field a string", setter("tie_word_embeddings", "false"), "tie_word_embeddings"),
        ("bool field a number", setter("attention_bias", 0), "attention_bias"),
        ("enum field a number", setter("scoring_func", 1), "scoring_func"),
        ("enum field an array", setter("topk_method", ["noaux_tc"]), "topk_method"),
        ("string field a number", setter("hidden_act", 5), "hidden_act"),
        ("rope_scaling a number", setter("rope_scaling", 4), "rope_scaling"),
        ("rope_scaling.type a number", setter("rope_scaling", "type", 1), "rope_scaling"),
        ("rope_scaling.beta_fast a string", setter("rope_scaling", "beta_fast", "32"), "rope_scaling.beta_fast"),
        ("rope_scaling.original_max_position_embeddings a float",
         setter("rope_scaling", "original_max_position_embeddings", 0.5), "rope_scaling.original_max_position_embeddings"),
        ("quantization_config a string", setter("quantization_config", "fp8"), "quantization_config"),
        ("quant_method a number", setter("quantization_config", "quant_method", 8), "quantization_config.quant_method"),
        ("weight_block_size a string", setter("quantization_config", "weight_block_size", "128"),
         "quantization_config.weight_block_size"),
        ("weight_block_size of strings", setter("quantization_config", "weight_block_size", ["128", "128"]),
         "quantization_config.weight_block_size")]:
    cfg_case(label, fn, field)
d = variant(fp, "cfg_newline")
c = json.load(open(os.path.join(d, "config.json"))); c["scoring_func"] = "soft\nmax\r\x1b[31m"
json.dump(c, open(os.path.join(d, "config.json"), "w"))
check("a value with control characters: still one line", logits(d), "config.json", "scoring_func", "soft?max")
d = variant(fp, "st_newline")
with open(os.path.join(d, ST), "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]; h = json.loads(f.read(n)); data = f.read()
h["model.norm.weight\nfake line"] = h.pop("model.norm.weight")
hb = json.dumps(h).encode(); hb += b" " * ((8 - len(hb) % 8) % 8)
open(os.path.join(d, ST), "wb").write(struct.pack("<Q", len(hb)) + hb + data)
check("a tensor name with a newline: still one line", logits(d), "model.norm.weight", "missing")
d = variant(fp, "st_overlap_past_empty")   # an empty tensor between two that overlap
with open(os.path.join(d, ST), "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]; h = json.loads(f.read(n)); data = f.read()
a0 = h["lm_head.weight"]["data_offsets"][0]
nb = h["model.norm.weight"]["data_offsets"][1] - h["model.norm.weight"]["data_offsets"][0]
h["model.norm.weight"]["data_offsets"] = [a0 + 64, a0 + 64 + nb]
h["zz.empty"] = {"dtype": "F32", "shape": [0], "data_offsets": [a0 + 8, a0 + 8]}
hb = json.dumps(h).encode(); hb += b" " * ((8 - len(hb) % 8) % 8)
open(os.path.join(d, ST), "wb").write(struct.pack("<Q", len(hb)) + hb + data)
check("overlap hidden behind an empty tensor", logits(d), ST, "model.norm.weight", "overlap", "lm_head.weight")
d = variant(fp, "cfg_yarn_theta1")
c = json.load(open(os.path.join(d, "config.json"))); c["rope_theta"] = 1
c["rope_scaling"]["original_max_position_embeddings"] = 4096   # ln(theta) = 0 would make RoPE NaN
json.dump(c, open(os.path.join(d, "config.json"), "w"))
check("yarn with rope_theta 1", logits(d), "config.json", "rope_theta")
d = variant(fp, "cfg_array"); open(os.path.join(d, "config.json"), "w").write("[]")
check("config.json an array", logits(d), "config.json", "not a JSON object")
d = variant(fp, "cfg_empty"); open(os.path.join(d, "config.json"), "w").write("")
check("config.json empty", logits(d), "config.json")

# ---- shards listed in the index but missing or unusable
sh = gen_model("shards", "--dtype", "bf16", "--shards", "3")
IDX = "model.safetensors.index.json"
files = sorted(set(json.load(open(os.path.join(sh, IDX)))["weight_map"].values()))
d = variant(sh, "sh_missing_mid"); os.remove(os.path.join(d, files[1]))
check("middle shard missing", logits(d), files[1], "cannot open")
d = variant(sh, "sh_dir"); os.remove(os.path.join(d, files[0])); os.mkdir(os.path.join(d, files[0]))
check("shard is a folder", logits(d), files[0], "not a regular file")
d = variant(sh, "sh_empty"); open(os.path.join(d, files[2]), "w").close()
check("shard is empty", logits(d), files[2], "truncated")
d = variant(sh, "sh_renamed")
j = json.load(open(os.path.join(d, IDX)))
j["weight_map"]["lm_head.weight"] = "model-00009-of-00009.safetensors"
json.dump(j, open(os.path.join(d, IDX), "w"))
check("index names a shard that is not there", logits(d), "model-00009-of-00009.safetensors", "cannot open")
d = variant(sh, "sh_path")
j = json.load(open(os.path.join(d, IDX)))
j["weight_map"]["lm_head.weight"] = "../" + files[0]
json.dump(j, open(os.path.join(d, IDX), "w"))
check("index names a file in another folder", logits(d), IDX, "lm_head.weight", "same folder")
d = variant(sh, "sh_notjson"); open(os.path.join(d, IDX), "w").write("{\"weight_map\": {")
check("index is not JSON", logits(d), IDX, "not a JSON object")
d = variant(sh, "sh_nonstring")
j = json.load(open(os.path.join(d, IDX))); j["weight_map"]["lm_head.weight"] = 3
json.dump(j, open(os.path.join(d, IDX), "w"))
check("index maps a tensor to a number", logits(d), IDX, "lm_head.weight")

# ---- the command line
M = default
long_prompt = "one two three four five six seven eight nine ten " * 4
empty = os.path.join(tmp, "empty.txt"); open(empty, "w").close()
binf = os.path.join(tmp, "bin.txt"); open(binf, "wb").write(bytes(range(256)) * 2)
for label, args, needles in [
        ("unknown command", ["frobnicate"], ["unknown command"]),
        ("unknown flag", ["run", "-m", M, "-p", "hi", "--bogus"], ["unknown option", "--bogus"]),
        ("unknown flag with a newline", ["run", "-m", M, "-p", "hi", "--bo\ngus"], ["unknown option", "--bo?gus"]),
        ("unknown flag for tokenize", ["tokenize", "-m", M, "--check-tensors", "-p", "x"], ["unknown option"]),
        ("-m without a value", ["run", "-m"], ["-m", "missing value"]),
        ("-n without a value", ["run", "-m", M, "-p", "hi", "-n"], ["-n", "missing value"]),
        ("-p without a value", ["run", "-m", M, "-p"], ["-p", "missing value"]),
        ("--tokens without a value", ["run", "-m", M, "--tokens"], ["--tokens", "missing value"]),
        ("no -m", ["run", "-p", "hi"], ["-m DIR is required"]),
        ("negative -n", ["run", "-m", M, "-p", "hi", "-n", "-1"], ["-n", "expected an integer"]),
        ("huge -n", ["run", "-m", M, "-p", "hi", "-n", "99999999999999999999"], ["-n", "expected an integer"]),
        ("-n not a number", ["run", "-m", M, "-p", "hi", "-n", "ten"], ["-n", "expected an integer"]),
        ("negative -c", ["run", "-m", M, "-p", "hi", "-c", "-5"], ["-c", "expected an integer"]),
        ("zero -c", ["run", "-m", M, "-p", "hi", "-c", "0"], ["-c", "expected an integer"]),
        ("huge -c", ["run", "-m", M, "-p", "hi", "-c", "4294967296"], ["-c", "expected an integer"]),
        ("-c too big for memory", ["run", "-m", M, "-p", "hi", "-c", "16777216"], ["memory", "16777216"]),
        ("-n too big for memory", ["run", "-m", M, "-p", "hi", "-n", "16777216"], ["memory"]),
        ("negative -t", ["run", "-m", M, "-p", "hi", "-t", "-2"], ["-t", "expected an integer"]),
        ("huge -t", ["run", "-m", M, "-p", "hi", "-t", "100000"], ["-t", "expected an integer"]),
        ("--temp nan", ["run", "-m", M, "-p", "hi", "--temp", "nan"], ["--temp", "expected a number"]),
        ("--top-p 2", ["run", "-m", M, "-p", "hi", "--top-p", "2"], ["--top-p"]),
        ("--seed -1", ["run", "-m", M, "-p", "hi", "--seed", "-1"], ["--seed"]),
        ("--draft 0", ["run", "-m", M, "-p", "hi", "--draft", "0"], ["--draft"]),
        ("prompt longer than the context", ["run", "-m", M, "-p", long_prompt, "-c", "8"], ["does not fit the context"]),
        ("--chat prompt longer than the context", ["run", "-m", M, "-p", long_prompt, "--chat", "-c", "8"],
         ["does not fit the context"]),
        ("empty prompt", ["run", "-m", M, "-p", ""], ["prompt is empty"]),
        ("empty prompt with --chat", ["run", "-m", M, "-p", "", "--chat"], ["prompt is empty"]),
        ("empty prompt file", ["run", "-m", M, "-f", empty], ["prompt is empty", empty]),
        ("missing prompt file", ["run", "-m", M, "-f", os.path.join(tmp, "nope.txt")], ["nope.txt", "cannot open"]),
        ("no prompt", ["run", "-m", M], ["give the prompt"]),
        ("--tokens letters", ["run", "-m", M, "--tokens", "abc", "--ids"], ["--tokens", "abc"]),
        ("--tokens with a letter inside", ["run", "-m", M, "--tokens", "1,2,x,4", "--ids"], ["--tokens", "x,4"]),
        ("--tokens negative", ["run", "-m", M, "--tokens", "1,-3", "--ids"], ["--tokens", "-3"]),
        ("--tokens empty item", ["run", "-m", M, "--tokens", "1,,2", "--ids"], ["--tokens"]),
        ("--tokens empty", ["run", "-m", M, "--tokens", "", "--ids"], ["--tokens"]),
        ("--tokens overflow", ["run", "-m", M, "--tokens", "99999999999999999999", "--ids"], ["--tokens"]),
        ("--tokens hex", ["run", "-m", M, "--tokens", "0x10", "--ids"], ["--tokens"]),
        ("--tokens binary", ["run", "-m", M, "--tokens", "1,\x01\x7f", "--ids"], ["--tokens"]),
        ("--tokens past the vocabulary", ["run", "-m", M, "--tokens", "0,129280", "--ids"], ["129280", "out of range"]),
        ("--tokens longer than the context", ["run", "-m", M, "--tokens", ",".join(["5"] * 40), "--ids", "-c", "16"],
         ["does not fit the context"]),
        ("logits: unwritable -o", logits(M)[:-1] + [os.path.join(tmp, "no", "dir", "out.npy")], ["cannot write"]),
        ("model folder missing", ["run", "-m", os.path.join(tmp, "nothing"), "-p", "hi"], ["config.json", "cannot read"]),
        ("chat: unwritable --ids-log", ["chat", "-m", M, "--ids-log", os.path.join(tmp, "no", "log")], ["cannot write"]),
]:
    check(label, args, *needles)
check("binary prompt file runs", ["run", "-m", M, "-f", binf, "-n", "2", "--temp", "0"], code=0, lines=None)
check("binary stdin in chat", ["chat", "-m", M, "-n", "2", "--temp", "0"], code=0, lines=None,
      stdin=bytes(range(256)) * 8 + b"\n\0\0\0\n\xff\xfe\n/exit\n")
check("chat: a line longer than the context", ["chat", "-m", M, "-n", "2", "-c", "8", "--temp", "0"],
      "context full", code=0, stdin=long_prompt.encode() + b"\n")
check("tokenize an empty text", ["tokenize", "-m", M, "-p", ""], code=0, lines=0)

shutil.rmtree(tmp)
print(f"test_hostile: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
