#!/usr/bin/python3
"""Broken checkpoints and configs: each must give exit status 2 and one line on stderr that
names the file and the field or tensor; never a crash, a hang or a silent answer.
Usage: test_malformed.py DSEEK GEN_CKPT"""
import json, os, shutil, struct, subprocess, sys, tempfile

dseek, gen = sys.argv[1], sys.argv[2]
tmp = tempfile.mkdtemp()
base = os.path.join(tmp, "base")
subprocess.run([gen, "--out", base, "--preset", "tiny-v3", "--dtype", "fp8", "--layers", "2", "--seed", "7"],
               check=True, capture_output=True)
shards = os.path.join(tmp, "shards")
subprocess.run([gen, "--out", shards, "--preset", "tiny-v2", "--dtype", "bf16", "--shards", "2", "--seed", "7"],
               check=True, capture_output=True)
ST = "model.safetensors"
passed = failed = 0


def variant(name, src=base):
    d = os.path.join(tmp, name)
    shutil.copytree(src, d)
    return d


def read_st(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    return json.loads(b[8:8 + n]), b[8 + n:]


def write_st(path, header, data, pad=True):
    h = json.dumps(header).encode()
    if pad:
        h += b" " * ((8 - len(h) % 8) % 8)
    open(path, "wb").write(struct.pack("<Q", len(h)) + h + data)


def edit_header(d, fn, fname=ST):
    h, data = read_st(os.path.join(d, fname))
    fn(h)
    write_st(os.path.join(d, fname), h, data)


def edit_config(d, fn):
    p = os.path.join(d, "config.json")
    c = json.load(open(p))
    fn(c)
    json.dump(c, open(p, "w"))


def expect(label, d, *needles):
    global passed, failed
    try:
        r = subprocess.run([dseek, "logits", "-m", d, "--tokens", "0,5,7", "-o", os.path.join(tmp, "out.npy")],
                           capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        print(f"FAIL {label}: hung"); failed += 1; return
    err = r.stderr.strip()
    lines = err.splitlines()
    good = r.returncode == 2 and len(lines) == 1 and all(n in err for n in needles)
    print(("ok   " if good else "FAIL ") + f"{label}: exit {r.returncode}: {err}" +
          ("" if good else f"   (want exit 2, one line containing {needles})"))
    if good: passed += 1
    else: failed += 1


size = os.path.getsize(os.path.join(base, ST))
hdr, _ = read_st(os.path.join(base, ST))
hlen = struct.unpack("<Q", open(os.path.join(base, ST), "rb").read(8))[0]
# truncated files at many offsets
for cut in [0, 5, 8, 8 + hlen // 2, 8 + hlen, 8 + hlen + 100, size // 2, size - 1]:
    d = variant(f"trunc{cut}")
    with open(os.path.join(d, ST), "r+b") as f:
        f.truncate(cut)
    want = [ST] if cut > 8 + hlen else [ST]
    expect(f"truncated at {cut} of {size}", d, *want)
# header length past the end, and absurdly large
for n, label in [(size, "header length past the end"), (1 << 62, "absurd header length")]:
    d = variant(f"hlen{n}")
    with open(os.path.join(d, ST), "r+b") as f:
        f.write(struct.pack("<Q", n))
    expect(label, d, ST, "header length")
# header not JSON
d = variant("notjson")
with open(os.path.join(d, ST), "r+b") as f:
    f.seek(8); f.write(b"#")
expect("header is not JSON", d, ST, "header")
# a tensor's offsets out of range
t = "model.layers.1.self_attn.o_proj.weight"
d = variant("oob"); edit_header(d, lambda h: h[t].__setitem__("data_offsets", [h[t]["data_offsets"][0], 1 << 40]))
expect("offsets out of range", d, ST, t)
# overlapping offsets (two tensors of equal size share bytes)
a, b = "model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight"
d = variant("overlap"); edit_header(d, lambda h: h[b].__setitem__("data_offsets", h[a]["data_offsets"]))
expect("overlapping offsets", d, ST, "overlap")
# offsets that disagree with dtype and shape
d = variant("span"); edit_header(d, lambda h: h[a].__setitem__("shape", [h[a]["shape"][0] + 1]))
expect("offsets span != dtype x shape", d, ST, a)
# unknown dtype string
d = variant("baddtype"); edit_header(d, lambda h: h[a].__setitem__("dtype", "Q4_WHATEVER"))
expect("unknown dtype", d, ST, a, "dtype")
# a supported dtype where a weight needs a float: I16 of the same byte size
d = variant("intdtype"); edit_header(d, lambda h: h[a].__setitem__("dtype", "I16"))
expect("integer dtype for a norm", d, a, "dtype")
# shape that disagrees with the config (same byte count, transposed)
w = "model.layers.0.self_attn.kv_b_proj.weight"
d = variant("shape"); edit_header(d, lambda h: h[w].__setitem__("shape", h[w]["shape"][::-1]))
expect("transposed weight", d, ST, w, "shape")
# missing tensor
d = variant("missing"); edit_header(d, lambda h: h.pop("model.norm.weight"))
expect("missing tensor", d, "model.norm.weight", "missing")
# missing fp8 scale
s = "model.layers.1.self_attn.o_proj.weight_scale_inv"
d = variant("noscale"); edit_header(d, lambda h: h.pop(s))
expect("missing weight_scale_inv", d, s, "missing")
# shards: an index naming a file that is not there, a tensor not in its file, a bad entry
idx = json.load(open(os.path.join(shards, "model.safetensors.index.json")))
files = sorted(set(idx["weight_map"].values()))
d = variant("noshard", shards); os.remove(os.path.join(d, files[-1]))
expect("shard missing", d, files[-1])
d = variant("wrongshard", shards)
p = os.path.join(d, "model.safetensors.index.json"); j = json.load(open(p))
name = next(k for k, v in j["weight_map"].items() if v == files[0])
j["weight_map"][name] = files[1]; json.dump(j, open(p, "w"))
expect("index points to the wrong shard", d, "index.json", name)
d = variant("badindex", shards)
p = os.path.join(d, "model.safetensors.index.json"); j = json.load(open(p))
j["weight_map"] = [1, 2]; json.dump(j, open(p, "w"))
expect("weight_map not an object", d, "index.json", "weight_map")
# configs
for label, fn, needles in [
    ("hidden_size is a string", lambda c: c.__setitem__("hidden_size", "abc"), ["config.json", "hidden_size"]),
    ("kv_lora_rank missing", lambda c: c.pop("kv_lora_rank"), ["config.json", "kv_lora_rank"]),
    ("negative layers", lambda c: c.__setitem__("num_hidden_layers", -3), ["config.json", "num_hidden_layers"]),
    ("unknown topk_method", lambda c: c.__setitem__("topk_method", "magic"), ["config.json", "topk_method"]),
    ("unknown scoring_func", lambda c: c.__setitem__("scoring_func", "relu"), ["config.json", "scoring_func"]),
    ("linear rope scaling", lambda c: c.__setitem__("rope_scaling", {"type": "linear", "factor": 2}), ["config.json", "rope_scaling"]),
    ("yarn factor a string", lambda c: c["rope_scaling"].__setitem__("factor", "x"), ["config.json", "rope_scaling.factor"]),
    ("topk_group > n_group", lambda c: c.__setitem__("topk_group", 99), ["config.json", "topk_group"]),
    ("gelu activation", lambda c: c.__setitem__("hidden_act", "gelu"), ["config.json", "hidden_act"]),
    ("int8 quantization", lambda c: c.__setitem__("quantization_config", {"quant_method": "int8"}), ["config.json", "quant_method"]),
    ("norm_topk_prob a number", lambda c: c.__setitem__("norm_topk_prob", 3), ["config.json", "norm_topk_prob"]),
    ("config with a wrong hidden_size", lambda c: c.__setitem__("hidden_size", 512), ["model.embed_tokens.weight", "shape"]),
]:
    d = variant("cfg_" + label.replace(" ", "_").replace(">", "gt"))
    edit_config(d, fn)
    expect(label, d, *needles)
d = variant("cfg_notjson"); open(os.path.join(d, "config.json"), "w").write("{oops")
expect("config.json not JSON", d, "config.json")
d = variant("cfg_none"); os.remove(os.path.join(d, "config.json"))
expect("config.json missing", d, "config.json")
d = variant("noweights"); os.remove(os.path.join(d, ST))
expect("no safetensors file", d, ST)
# token ids and context
r = subprocess.run([dseek, "logits", "-m", base, "--tokens", "0,99999", "-o", os.path.join(tmp, "o.npy")],
                   capture_output=True, text=True)
good = r.returncode == 2 and "99999" in r.stderr
print(("ok   " if good else "FAIL ") + f"token id out of range: {r.stderr.strip()}"); passed += good; failed += not good
r = subprocess.run([dseek, "logits", "-m", base, "--tokens", "0,1,2,3", "-c", "2", "-o", os.path.join(tmp, "o.npy")],
                   capture_output=True, text=True)
good = r.returncode == 2 and "context" in r.stderr
print(("ok   " if good else "FAIL ") + f"past the context: {r.stderr.strip()}"); passed += good; failed += not good

shutil.rmtree(tmp)
print(f"test_malformed: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
