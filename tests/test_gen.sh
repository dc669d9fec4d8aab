#!/usr/bin/env bash
# tests/test_gen.sh - build tools/gen_ckpt and check what it writes with an independent
# Python reader (numpy): safetensors headers and offsets, the shard index, tensor names /
# dtypes / shapes derived from config.json alone, fp8 block scales, the F32 twin holding
# exactly the dequantized values, determinism, value statistics, a small numpy forward pass
# (activations and logits O(1..10), routing non-degenerate), dry-run sizes of the full
# V2-Lite / V3 presets, and error handling (exit status 2, one line on stderr).
# Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
T=$(mktemp -d /tmp/test_gen.XXXXXX)
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

echo "== build"
cc -O2 -std=c11 -Wall -Wextra -Werror tools/gen_ckpt.c -o tools/gen_ckpt -lm
G=tools/gen_ckpt
[ "$(wc -l < tools/gen_ckpt.c)" -lt 900 ] || fail "gen_ckpt.c has 900 lines or more"
$G --help | grep -q -- '--twin-f32' || fail "--help"

cat > "$T/check.py" <<'EOF'
import json, os, re, struct, sys
import numpy as np

def fail(msg):
    print("FAIL:", msg); sys.exit(1)

ESIZE = {"F32": 4, "BF16": 2, "F16": 2, "F8_E4M3": 1}

def fp8_table():
    t = np.zeros(256, np.float32)
    for c in range(256):
        e, m = (c >> 3) & 15, c & 7
        v = np.nan if (e == 15 and m == 7) else (m * 2.0 ** -9 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7))
        t[c] = -v if c & 0x80 else v
    return t
FP8 = fp8_table()

def parse_st(path):
    """Header of one safetensors file, checked: padding, metadata, contiguous in-bounds offsets."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        raw = f.read(n)
    if n % 8 or len(raw) != n: fail(f"{path}: header length {n} not a multiple of 8")
    if raw.rstrip(b" ") + b" " * (n - len(raw.rstrip(b" "))) != raw or not raw.rstrip(b" ").endswith(b"}"):
        fail(f"{path}: header padding is not trailing spaces")
    hdr = json.loads(raw)
    if hdr.pop("__metadata__", None) != {"format": "pt"}: fail(f"{path}: __metadata__")
    pos = 0
    for name, e in hdr.items():  # file order == offset order, no gaps
        if set(e) != {"dtype", "shape", "data_offsets"}: fail(f"{path}:{name}: keys {set(e)}")
        b, end = e["data_offsets"]
        if e["dtype"] not in ESIZE: fail(f"{name}: dtype {e['dtype']}")
        if b != pos or end - b != int(np.prod(e["shape"])) * ESIZE[e["dtype"]]: fail(f"{name}: offsets {b},{end}")
        pos = end
    if 8 + n + pos != size: fail(f"{path}: data ends at {8 + n + pos}, file has {size} bytes")
    return hdr, 8 + n

class Ckpt:
    """All tensors of a checkpoint directory, located through the index when there is one."""
    def __init__(self, d):
        self.dir, self.cfg = d, json.load(open(os.path.join(d, "config.json")))
        idx = os.path.join(d, "model.safetensors.index.json")
        self.loc, self.order = {}, []
        if os.path.exists(idx):
            ix = json.load(open(idx))
            if set(ix) != {"metadata", "weight_map"}: fail("index keys")
            wm = ix["weight_map"]
            files = sorted(set(wm.values()))
            nf = len(files)
            if files != [f"model-{i:05d}-of-{nf:05d}.safetensors" for i in range(1, nf + 1)]: fail(f"shard names {files}")
            if os.path.exists(os.path.join(d, "model.safetensors")): fail("stale model.safetensors next to shards")
        else:
            files, wm = ["model.safetensors"], None
        total = 0
        for fn in files:
            hdr, base = parse_st(os.path.join(d, fn))
            for name, e in hdr.items():
                if name in self.loc: fail(f"{name} in two files")
                if wm is not None and wm.get(name) != fn: fail(f"{name}: index says {wm.get(name)}, found in {fn}")
                self.loc[name] = (fn, base, e)
                self.order.append(name)
                total += e["data_offsets"][1] - e["data_offsets"][0]
        if wm is not None:
            if set(wm) != set(self.loc): fail("index and files hold different tensors")
            if ix["metadata"]["total_size"] != total: fail("index total_size")
            spread = {}
            for name, fn in wm.items():
                m = re.match(r"model\.layers\.(\d+)\.", name)
                if m: spread.setdefault(m.group(1), set()).add(fn)
            if not any(len(s) > 1 for s in spread.values()): fail("no layer spans two shards")
        self.nfiles, self.total = len(files), total

    def raw(self, name):
        fn, base, e = self.loc[name]
        b, end = e["data_offsets"]
        dt = {"F32": np.float32, "BF16": np.uint16, "F16": np.float16, "F8_E4M3": np.uint8}[e["dtype"]]
        a = np.fromfile(os.path.join(self.dir, fn), dtype=dt, count=(end - b) // ESIZE[e["dtype"]], offset=base + b)
        return a.reshape(e["shape"]), e["dtype"]

    def f32(self, name):
        """Dequantized float32 values of a tensor (cached)."""
        if not hasattr(self, "cache"): self.cache = {}
        if name not in self.cache: self.cache[name] = self._f32(name)
        return self.cache[name]

    def _f32(self, name):
        a, dt = self.raw(name)
        if dt == "BF16": return (a.astype(np.uint32) << 16).view(np.float32)
        if dt == "F16": return a.astype(np.float32)
        if dt == "F32": return a
        s = self.raw(name + "_scale_inv")[0]
        full = np.repeat(np.repeat(s, 128, 0), 128, 1)[: a.shape[0], : a.shape[1]]
        return FP8[a] * full

def expected(cfg, dtype):
    """Ordered (name, dtype, shape) list of a checkpoint derived from config.json alone."""
    D, H, V = cfg["hidden_size"], cfg["num_attention_heads"], cfg["vocab_size"]
    nope, rope, vd, R = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"], cfg["kv_lora_rank"]
    fp8 = dtype == "fp8"
    plain = "BF16" if fp8 else dtype
    out = []
    def lin(name, o, i, q=True):
        if fp8 and q:
            out.append((name, "F8_E4M3", [o, i]))
            out.append((name + "_scale_inv", "F32", [-(-o // 128), -(-i // 128)]))
        else:
            out.append((name, plain, [o, i]))
    vec = lambda name, n: out.append((name, plain, [n]))
    def layer(l, moe):
        p = f"model.layers.{l}."
        if cfg["q_lora_rank"] is None:
            lin(p + "self_attn.q_proj.weight", H * (nope + rope), D)
        else:
            lin(p + "self_attn.q_a_proj.weight", cfg["q_lora_rank"], D)
            vec(p + "self_attn.q_a_layernorm.weight", cfg["q_lora_rank"])
            lin(p + "self_attn.q_b_proj.weight", H * (nope + rope), cfg["q_lora_rank"])
        lin(p + "self_attn.kv_a_proj_with_mqa.weight", R + rope, D)
        vec(p + "self_attn.kv_a_layernorm.weight", R)
        lin(p + "self_attn.kv_b_proj.weight", H * (nope + vd), R)
        lin(p + "self_attn.o_proj.weight", D, H * vd)
        def mlp(q, inter):
            lin(q + "gate_proj.weight", inter, D); lin(q + "up_proj.weight", inter, D); lin(q + "down_proj.weight", D, inter)
        if not moe:
            mlp(p + "mlp.", cfg["intermediate_size"])
        else:
            E, I = cfg["n_routed_experts"], cfg["moe_intermediate_size"]
            lin(p + "mlp.gate.weight", E, D, q=False)
            if cfg["topk_method"] == "noaux_tc": out.append((p + "mlp.gate.e_score_correction_bias", "F32", [E]))
            for e in range(E): mlp(p + f"mlp.experts.{e}.", I)
            if cfg["n_shared_experts"]: mlp(p + "mlp.shared_experts.", I * cfg["n_shared_experts"])
        vec(p + "input_layernorm.weight", D); vec(p + "post_attention_layernorm.weight", D)
    out.append(("model.embed_tokens.weight", plain, [V, D]))
    L = cfg["num_hidden_layers"]
    for l in range(L): layer(l, l >= cfg["first_k_dense_replace"])
    for l in range(L, L + cfg.get("num_nextn_predict_layers", 0)):
        p = f"model.layers.{l}."
        out.append((p + "embed_tokens.weight", plain, [V, D])); vec(p + "enorm.weight", D); vec(p + "hnorm.weight", D)
        lin(p + "eh_proj.weight", D, 2 * D, q=False)
        layer(l, True)
        vec(p + "shared_head.norm.weight", D); out.append((p + "shared_head.head.weight", plain, [V, D]))
    vec("model.norm.weight", D); out.append(("lm_head.weight", plain, [V, D]))
    return out

def config_dtype(cfg):
    if "quantization_config" in cfg:
        q = cfg["quantization_config"]
        if q != {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [128, 128]}:
            fail(f"quantization_config {q}")
        return "fp8"
    return {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}[cfg["torch_dtype"]]

CASES = "/work/shared/cases"
def check_config(cfg):
    keys = set(cfg)
    ref = {"deepseek_v2": "v2lite_bf16", "deepseek_v3": "v3_fp8"}[cfg["model_type"]]
    if os.path.exists(f"{CASES}/{ref}/config.json"):
        rk = set(json.load(open(f"{CASES}/{ref}/config.json")))
        rk -= {"quantization_config", "num_nextn_predict_layers"}
        if keys - {"quantization_config", "num_nextn_predict_layers"} != rk: fail(f"config keys differ from {ref}: {keys ^ rk}")
    arch = {"deepseek_v2": "DeepseekV2ForCausalLM", "deepseek_v3": "DeepseekV3ForCausalLM"}[cfg["model_type"]]
    if cfg["architectures"] != [arch]: fail("architectures")
    rs = cfg["rope_scaling"]
    if rs is not None and (rs["type"] != "yarn" or set(rs) != {"beta_fast", "beta_slow", "factor", "mscale", "mscale_all_dim", "original_max_position_embeddings", "type"}):
        fail(f"rope_scaling {rs}")
    if cfg["num_key_value_heads"] != cfg["num_attention_heads"] or cfg["tie_word_embeddings"]: fail("config")

# --------------------------------------------------------------------------- numpy forward
def rms(x, w): return x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6) * w

def rope_rot(x, pos, cfg):
    d, th, rs = x.shape[-1], cfg["rope_theta"], cfg["rope_scaling"]
    inv, mul = th ** (-np.arange(0, d, 2) / d), 1.0
    if rs:  # YaRN as in SPEC.md
        f, lo_len = rs["factor"], rs["original_max_position_embeddings"]
        corr = lambda n: d * np.log(lo_len / (n * 2 * np.pi)) / (2 * np.log(th))
        lo, hi = max(np.floor(corr(rs["beta_fast"])), 0), min(np.ceil(corr(rs["beta_slow"])), d - 1)
        ramp = np.clip((np.arange(d // 2) - lo) / ((hi + 0.001 if hi == lo else hi) - lo), 0, 1)
        inv = inv / f * ramp + inv * (1 - ramp)
        ym = lambda m: 0.1 * m * np.log(f) + 1 if f > 1 else 1.0
        mul = ym(rs["mscale"]) / ym(rs["mscale_all_dim"])
    ang = pos[:, None] * inv[None, :]
    if x.ndim == 3: ang = ang[:, None, :]
    c, s = np.cos(ang) * mul, np.sin(ang) * mul
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x); out[..., 0::2] = a * c - b * s; out[..., 1::2] = a * s + b * c
    return out

def forward(ck, tokens):
    cfg, W = ck.cfg, ck.f32
    H, nope, rope, vd, R = cfg["num_attention_heads"], cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"], cfg["kv_lora_rank"]
    T, pos = len(tokens), np.arange(len(tokens), dtype=np.float64)
    scale = (nope + rope) ** -0.5
    rs = cfg["rope_scaling"]
    if rs and rs["factor"] > 1 and rs["mscale_all_dim"]: scale *= (0.1 * rs["mscale_all_dim"] * np.log(rs["factor"]) + 1) ** 2
    x = W("model.embed_tokens.weight").astype(np.float64)[tokens]
    rmss, used, margins = [float(np.sqrt((x * x).mean()))], set(), []
    silu = lambda z: z / (1 + np.exp(-z))
    mlp = lambda p, z: (silu(z @ W(p + "gate_proj.weight").T) * (z @ W(p + "up_proj.weight").T)) @ W(p + "down_proj.weight").T
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        h = rms(x, W(p + "input_layernorm.weight"))
        if cfg["q_lora_rank"] is None: q = h @ W(p + "self_attn.q_proj.weight").T
        else: q = rms(h @ W(p + "self_attn.q_a_proj.weight").T, W(p + "self_attn.q_a_layernorm.weight")) @ W(p + "self_attn.q_b_proj.weight").T
        q = q.reshape(T, H, nope + rope)
        kv = h @ W(p + "self_attn.kv_a_proj_with_mqa.weight").T
        c, kpe = rms(kv[:, :R], W(p + "self_attn.kv_a_layernorm.weight")), rope_rot(kv[:, R:], pos, cfg)
        kvb = (c @ W(p + "self_attn.kv_b_proj.weight").T).reshape(T, H, nope + vd)
        sc = (np.einsum("thd,shd->hts", q[..., :nope], kvb[..., :nope]) + np.einsum("thd,sd->hts", rope_rot(q[..., nope:], pos, cfg), kpe)) * scale
        sc = np.where(np.tril(np.ones((T, T), bool))[None], sc, -np.inf)
        pr = np.exp(sc - sc.max(-1, keepdims=True)); pr /= pr.sum(-1, keepdims=True)
        x = x + np.einsum("hts,shd->thd", pr, kvb[..., nope:]).reshape(T, H * vd) @ W(p + "self_attn.o_proj.weight").T
        h = rms(x, W(p + "post_attention_layernorm.weight"))
        if l < cfg["first_k_dense_replace"]:
            x = x + mlp(p + "mlp.", h)
        else:
            E, k, G, TG = cfg["n_routed_experts"], cfg["num_experts_per_tok"], cfg["n_group"], cfg["topk_group"]
            lg = h @ W(p + "mlp.gate.weight").T
            s = 1 / (1 + np.exp(-lg)) if cfg["scoring_func"] == "sigmoid" else np.exp(lg - lg.max(-1, keepdims=True))
            if cfg["scoring_func"] == "softmax": s /= s.sum(-1, keepdims=True)
            y = np.zeros_like(x)
            for t in range(T):
                b = s[t] + (W(p + "mlp.gate.e_score_correction_bias") if cfg["topk_method"] == "noaux_tc" else 0)
                if cfg["topk_method"] != "greedy":
                    g = b.reshape(G, -1)
                    gs = np.sort(g, 1)[:, -2:].sum(1) if cfg["topk_method"] == "noaux_tc" else g.max(1)
                    keep = np.argsort(-gs)[:TG]
                    b = np.where(np.isin(np.arange(E) // (E // G), keep), b, -np.inf)
                order = np.argsort(-b)
                idx = order[:k]
                if k < len(b) and np.isfinite(b[order[k]]): margins.append(b[order[k - 1]] - b[order[k]])
                w = s[t][idx]
                if cfg["norm_topk_prob"] and k > 1: w = w / (w.sum() + 1e-20)
                w = w * cfg["routed_scaling_factor"]
                used.update(idx.tolist())
                for wi, e in zip(w, idx): y[t] += wi * mlp(p + f"mlp.experts.{e}.", h[t])
            if cfg["n_shared_experts"]: y += mlp(p + "mlp.shared_experts.", h)
            x = x + y
        rmss.append(float(np.sqrt((x * x).mean())))
    logits = rms(x, W("model.norm.weight")) @ W("lm_head.weight").T
    return logits, rmss, used, margins

# --------------------------------------------------------------------------- checks
def check(d, twin=None, copies=True, fwd=False, stats=True):
    ck = Ckpt(d)
    cfg = ck.cfg
    check_config(cfg)
    dt = config_dtype(cfg)
    exp = expected(cfg, dt)
    got = [(n, ck.loc[n][2]["dtype"], ck.loc[n][2]["shape"]) for n in ck.order]
    if got != exp:
        diff = [(a, b) for a, b in zip(got, exp) if a != b][:3]
        fail(f"{d}: tensors differ from config-derived layout ({len(got)} vs {len(exp)}): {diff}")
    D = cfg["hidden_size"]
    for name, dtype, shape in exp:
        if stats and name.endswith("norm.weight") and shape[0] >= 64:
            v = ck.f32(name)
            if abs(v.mean() - 1) > 0.05 or not 0.06 < v.std() < 0.14: fail(f"{name}: norm mean {v.mean()} std {v.std()}")
        if stats and name.endswith("e_score_correction_bias"):
            v = ck.f32(name)
            if np.abs(v).max() > 0.1 or v.std() < 0.02: fail(f"{name}: bias range")
        if dtype == "F8_E4M3":
            q, _ = ck.raw(name)
            s, _ = ck.raw(name + "_scale_inv")
            if ((q & 0x7F) == 0x7F).any(): fail(f"{name}: NaN code")
            if not (np.isfinite(s).all() and (s > 0).all()): fail(f"{name}: scale_inv")
            a = np.abs(FP8[q])
            nb0, nb1 = s.shape
            pad = np.zeros((nb0 * 128, nb1 * 128), np.float32); pad[: a.shape[0], : a.shape[1]] = a
            bmax = pad.reshape(nb0, 128, nb1, 128).max((1, 3))
            if not (bmax == 448).all(): fail(f"{name}: a block's amax does not map to 448")
    e = ck.f32("model.embed_tokens.weight")
    if stats and not 0.95 < e.std() < 1.05: fail(f"embed std {e.std()}")
    for l in range(cfg["num_hidden_layers"], cfg["num_hidden_layers"] + cfg.get("num_nextn_predict_layers", 0)):
        same = all(np.array_equal(ck.raw(f"model.layers.{l}.{a}")[0], ck.raw(b)[0])
                   for a, b in [("embed_tokens.weight", "model.embed_tokens.weight"), ("shared_head.head.weight", "lm_head.weight")])
        if same != copies: fail(f"MTP copies: expected {copies}")
    if twin:
        tw = Ckpt(twin)
        c2 = dict(cfg); c2.pop("quantization_config", None); c2["torch_dtype"] = "float32"
        if tw.cfg != c2: fail("twin config differs")
        names = [n for n, _, _ in exp if not n.endswith("_scale_inv")]
        if tw.order != names: fail("twin tensor list")
        for n in names:
            a, dt2 = tw.raw(n)
            if dt2 != "F32": fail(f"twin {n} is {dt2}")
            if not np.array_equal(a.view(np.uint32), ck.f32(n).astype(np.float32).view(np.uint32)):
                fail(f"twin {n} differs from the dequantized tensor")
    msg = f"{d}: OK {len(exp)} tensors in {ck.nfiles} file(s), {ck.total / 1e6:.2f} MB, dtype {dt}"
    if fwd:
        rng = np.random.default_rng(0)
        toks = np.concatenate([[cfg["bos_token_id"]], rng.integers(0, cfg["vocab_size"], 31)])
        lg, rmss, used, margins = forward(ck, toks)
        mx = float(np.abs(lg).max())
        msg += f"\n   forward: max|logit| {mx:.2f}, logit std {lg.std():.2f}, residual rms {rmss[0]:.2f}..{max(rmss):.2f}, experts used {len(used)}/{cfg['n_routed_experts']}, median routing margin {np.median(margins) if margins else float('nan'):.3g}"
        if not (np.isfinite(lg).all() and 1 < mx < 30 and max(rmss) < 50): fail("forward: activations or logits out of range")
        if len(used) < min(cfg["n_routed_experts"], 2 * cfg["num_experts_per_tok"]): fail("forward: routing degenerate")
    print(msg)

def rounding(orig, conv):
    """conv's stored codes are the round-to-nearest-even conversions of orig's F32 values
    (values do not depend on the dtype); fp8 blocks: scale = amax/448, code = RNE(x * 448/amax)
    saturated at 448. Nearest-value search here, independent of the bit tricks in the C code."""
    pos = FP8[:127].astype(np.float64)  # codes 0x00..0x7E, increasing
    counts = {}
    for name in conv.order:
        if name.endswith("_scale_inv"): continue
        x = orig.raw(name)[0]
        q, dt = conv.raw(name)
        if dt == "F32": ok = np.array_equal(q.view(np.uint32), x.view(np.uint32))
        elif dt == "F16": ok = np.array_equal(q.view(np.uint16), x.astype(np.float16).view(np.uint16))
        elif dt == "BF16":
            u = x.view(np.uint32); lo = u & np.uint32(0xFFFF0000); hi = lo + np.uint32(0x10000)
            a = x.astype(np.float64)
            dl, dh = np.abs(a - lo.view(np.float32)), np.abs(hi.view(np.float32).astype(np.float64) - a)
            up = (dh < dl) | ((dh == dl) & ((lo >> 16) & 1).astype(bool))
            ok = np.array_equal(q, (np.where(up, hi, lo) >> 16).astype(np.uint16))
        else:
            s = conv.raw(name + "_scale_inv")[0]
            nb0, nb1 = s.shape
            pad = np.zeros((nb0 * 128, nb1 * 128), np.float32); pad[: x.shape[0], : x.shape[1]] = np.abs(x)
            amax = pad.reshape(nb0, 128, nb1, 128).max((1, 3)).astype(np.float32)
            if not np.array_equal(s, amax / np.float32(448)): fail(f"{name}: scale_inv is not amax/448")
            inv = np.repeat(np.repeat(np.float32(448) / amax, 128, 0), 128, 1)[: x.shape[0], : x.shape[1]]
            y = x * inv
            a = np.abs(y).astype(np.float64)
            i = np.clip(np.searchsorted(pos, a), 1, 126)
            dl, dh = a - pos[i - 1], pos[i] - a
            code = np.where((dh < dl) | ((dh == dl) & (i % 2 == 0)), i, i - 1)
            ok = np.array_equal(q, (code | (np.signbit(y) << 7)).astype(np.uint8))
        if not ok: fail(f"{name}: {dt} codes are not the round-to-nearest-even of the F32 values")
        counts[dt] = counts.get(dt, 0) + 1
    print(f"   rounding OK: {counts}")

def dry(d, line):
    cfg = json.load(open(os.path.join(d, "config.json")))
    check_config(cfg)
    exp = expected(cfg, config_dtype(cfg))
    f = line.split()
    n, params, nbytes = int(f[1]), int(f[3]), int(f[5])
    ep = sum(int(np.prod(s)) for name, _, s in exp if not name.endswith("_scale_inv"))
    eb = sum(int(np.prod(s)) * ESIZE[t] for _, t, s in exp)
    if (n, params, nbytes) != (len(exp), ep, eb): fail(f"dry run {line} vs expected {len(exp)} {ep} {eb}")
    print(f"{d}: OK dry run {n} tensors, {params / 1e9:.3f} B params, {nbytes / 1e9:.2f} GB")
    return cfg, params

if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "check":
        check(sys.argv[2], twin=os.environ.get("TWIN") or None, copies=os.environ.get("COPIES", "1") == "1",
              fwd=os.environ.get("FWD") == "1", stats=os.environ.get("STATS", "1") == "1")
    elif mode == "same":  # tensors keep their values whatever the layer count / dtype of other tensors
        a, b = Ckpt(sys.argv[2]), Ckpt(sys.argv[3])
        for n in sys.argv[4:]:
            if not np.array_equal(a.f32(n), b.f32(n)): fail(f"{n} differs between {sys.argv[2]} and {sys.argv[3]}")
        print(f"OK {len(sys.argv) - 4} tensors identical")
    elif mode == "round":  # argv: F32 original, converted checkpoint of the same seed and flags
        rounding(Ckpt(sys.argv[2]), Ckpt(sys.argv[3]))
    elif mode == "ref":  # validates forward() itself against the official reference logits
        d = sys.argv[2]
        lg = forward(Ckpt(d), np.array(json.load(open(d + "/manifest.json"))["tokens"]))[0]
        err = float(np.abs(lg - np.load(d + "/ref/logits_prefill.npy")).max())
        if err > 1e-4: fail(f"numpy forward vs {d} reference: max |dlogit| {err}")
        print(f"   numpy forward vs reference logits: max |dlogit| {err:.2g}")
    elif mode == "dry":
        cfg, params = dry(sys.argv[2], sys.argv[3])
        want = json.loads(sys.argv[4])
        for k, v in want.items():
            if k == "params":
                if not v[0] <= params <= v[1]: fail(f"params {params} not in {v}")
            elif cfg.get(k, "<absent>") != v: fail(f"{k}: {cfg.get(k, '<absent>')} != {v}")
EOF

chk() { "$PY" "$T/check.py" check "$@"; }

echo "== the checker itself, on the reference checkpoints in shared/cases (their layout is the target)"
for c in /work/shared/cases/v2lite_bf16 /work/shared/cases/v3_fp8; do
  if [ -f "$c/config.json" ]; then STATS=0 FWD=1 chk "$c"; "$PY" "$T/check.py" ref "$c"; else echo "   (no $c, skipped)"; fi
done

echo "== tiny-v2 bf16, single file"
$G --preset tiny-v2 --out "$T/v2" --seed 3
[ -f "$T/v2/model.safetensors" ] && [ ! -e "$T/v2/model.safetensors.index.json" ] || fail "single-file layout"
FWD=1 chk "$T/v2"

echo "== tiny-v3 fp8, partial 128-blocks, 3 shards, F32 twin"
$G --preset tiny-v3 --hidden 200 --moe-inter 72 --q-lora 136 --shards 3 --out "$T/v3" --twin-f32 "$T/v3t" --seed 5
FWD=1 TWIN="$T/v3t" chk "$T/v3"
chk "$T/v3t"
$G --preset tiny-v3 --hidden 200 --moe-inter 72 --q-lora 136 --dtype f32 --out "$T/v3f32" --seed 5
"$PY" "$T/check.py" round "$T/v3f32" "$T/v3"

echo "== f16 (tiny-v3, 2 shards, plain q_proj, separate MTP copies)"
$G --dtype f16 --shards 2 --q-lora 0 --mtp-copy 0 --out "$T/f16" --twin-f32 "$T/f16t"
COPIES=0 FWD=1 TWIN="$T/f16t" chk "$T/f16"
$G --dtype f32 --q-lora 0 --mtp-copy 0 --out "$T/f16ref"
"$PY" "$T/check.py" round "$T/f16ref" "$T/f16"

echo "== group_limited_greedy (softmax, 8 groups / top-3, f32, 2 dense layers, 2 MTP layers)"
$G --preset tiny-v2 --topk-method group_limited_greedy --experts 32 --groups 8 --topk-groups 3 --topk 6 \
   --dense 2 --layers 4 --mtp 2 --dtype f32 --out "$T/glg"
FWD=1 chk "$T/glg"

echo "== V2-Lite widths (2 layers, 8 experts, small vocab) in fp8: edge blocks of 10944, 576, 1408; 4 shards + twin"
$G --preset v2lite --layers 2 --experts 8 --vocab 2048 --bos 0 --eos 1 --dtype fp8 --shards 4 --out "$T/v2l" --twin-f32 "$T/v2lt"
FWD=1 TWIN="$T/v2lt" chk "$T/v2l"
rm -rf "$T/v2l" "$T/v2lt"

echo "== depth: tiny-v3 width, 24 layers (3 dense), bf16"
$G --layers 24 --dense 3 --dtype bf16 --out "$T/deep"
FWD=1 chk "$T/deep"

echo "== re-generate in place: shards -> single file, stale files removed"
$G --preset tiny-v3 --hidden 200 --moe-inter 72 --q-lora 136 --out "$T/v3" --seed 5
[ ! -e "$T/v3/model.safetensors.index.json" ] && ! ls "$T/v3"/model-0000* >/dev/null 2>&1 || fail "stale shards left"
chk "$T/v3"

echo "== determinism and seed independence of layout"
$G --out "$T/d1" --seed 9 --shards 2 && $G --out "$T/d2" --seed 9 --shards 2 && $G --out "$T/d3" --seed 10 --shards 2
for f in model-00001-of-00002.safetensors model-00002-of-00002.safetensors model.safetensors.index.json config.json; do
  cmp -s "$T/d1/$f" "$T/d2/$f" || fail "same seed, different $f"
done
cmp -s "$T/d1/model-00002-of-00002.safetensors" "$T/d3/model-00002-of-00002.safetensors" && fail "different seeds, same data"
cmp -s "$T/d1/model.safetensors.index.json" "$T/d3/model.safetensors.index.json" || fail "layout depends on the seed"
$G --out "$T/d4" --seed 9 --layers 2 --dtype bf16
"$PY" "$T/check.py" same "$T/d1" "$T/d4" model.embed_tokens.weight model.layers.1.mlp.gate.weight \
  model.layers.0.input_layernorm.weight model.layers.1.mlp.gate.e_score_correction_bias lm_head.weight

echo "== dry runs: full V2-Lite and V3 shapes"
line=$($G --preset v2lite --dry-run 1 --out "$T/v2lite")
"$PY" "$T/check.py" dry "$T/v2lite" "$line" '{"hidden_size":2048,"num_hidden_layers":27,"first_k_dense_replace":1,
 "intermediate_size":10944,"n_routed_experts":64,"num_experts_per_tok":6,"n_shared_experts":2,"moe_intermediate_size":1408,
 "kv_lora_rank":512,"q_lora_rank":null,"num_attention_heads":16,"qk_nope_head_dim":128,"qk_rope_head_dim":64,"v_head_dim":128,
 "vocab_size":102400,"scoring_func":"softmax","topk_method":"greedy","norm_topk_prob":false,"routed_scaling_factor":1.0,
 "rope_theta":10000,"rope_scaling":{"beta_fast":32,"beta_slow":1,"factor":40,"mscale":0.707,"mscale_all_dim":0.707,
 "original_max_position_embeddings":4096,"type":"yarn"},"max_position_embeddings":163840,"bos_token_id":100000,
 "eos_token_id":100001,"model_type":"deepseek_v2","num_nextn_predict_layers":"<absent>","quantization_config":"<absent>",
 "torch_dtype":"bfloat16","params":[15.6e9,15.8e9]}'
line=$($G --preset v3block --dry-run 1 --out "$T/v3block" --shards 163)
"$PY" "$T/check.py" dry "$T/v3block" "$line" '{"hidden_size":7168,"num_hidden_layers":61,"first_k_dense_replace":3,
 "intermediate_size":18432,"n_routed_experts":256,"num_experts_per_tok":8,"n_shared_experts":1,"moe_intermediate_size":2048,
 "q_lora_rank":1536,"kv_lora_rank":512,"num_attention_heads":128,"qk_nope_head_dim":128,"qk_rope_head_dim":64,"v_head_dim":128,
 "vocab_size":129280,"scoring_func":"sigmoid","topk_method":"noaux_tc","n_group":8,"topk_group":4,"norm_topk_prob":true,
 "routed_scaling_factor":2.5,"rope_scaling":{"beta_fast":32,"beta_slow":1,"factor":40,"mscale":1.0,"mscale_all_dim":1.0,
 "original_max_position_embeddings":4096,"type":"yarn"},"max_position_embeddings":163840,"num_nextn_predict_layers":1,
 "model_type":"deepseek_v3","bos_token_id":0,"eos_token_id":1,"params":[684e9,686e9]}'

echo "== errors: exit 2 and one line on stderr"
expect_err() {
  local rc=0; "$G" "$@" --out "$T/err" >/dev/null 2>"$T/stderr" || rc=$?
  [ "$rc" = 2 ] || fail "'$*' exited $rc, expected 2"
  [ "$(wc -l < "$T/stderr")" = 1 ] || fail "'$*' printed $(wc -l < "$T/stderr") lines on stderr"
  echo "   $* -> $(cat "$T/stderr")"
}
expect_err --bogus 1
expect_err --layers
expect_err --layers x3
expect_err --topk 99
expect_err --dtype q4
expect_err --preset huge
expect_err --topk-method best
expect_err --rope-dim 7
expect_err --experts 15 --groups 4
expect_err --dense 9 --layers 4
expect_err --shards 100000
rc=0; $G --out /proc/gen_ckpt_cannot 2>"$T/stderr" || rc=$?
[ "$rc" = 2 ] && [ "$(wc -l < "$T/stderr")" = 1 ] || fail "unwritable --out: rc $rc"
echo "   --out /proc/... -> $(cat "$T/stderr")"

echo "ALL OK"
