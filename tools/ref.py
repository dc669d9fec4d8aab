#!/usr/bin/python3
"""Independent float64 NumPy reference of the DeepSeek-V2/V3 forward pass (see SPEC.md).

Usage:
  /usr/bin/python3 tools/ref.py -m DIR --tokens 0,5,7 -o logits.npy
        [--mtp-out mtp.npy] [--routing-out r.npy] [--mtp-routing-out mr.npy] [--greedy N]

Clarity over speed: naive (non-absorbed) MLA attention, full prefill from position 0.
"""
import argparse
import json
import math
import os
import struct
import sys

import numpy as np


def fail(msg):
    sys.exit("ref.py: error: " + msg)


# ----------------------------------------------------------------------------- weights

def fp8_e4m3fn_table():
    """256-entry float64 decode table of e4m3fn: bias 7, no infinities, 0x7f/0xff NaN."""
    table = np.zeros(256, dtype=np.float64)
    for b in range(256):
        sign = -1.0 if b & 0x80 else 1.0
        exp = (b >> 3) & 0xF
        man = b & 0x7
        if exp == 0xF and man == 0x7:
            table[b] = np.nan
        elif exp == 0:
            table[b] = sign * (man / 8.0) * 2.0 ** -6          # subnormal
        else:
            table[b] = sign * (1.0 + man / 8.0) * 2.0 ** (exp - 7)
    return table


FP8_TABLE = fp8_e4m3fn_table()


def read_safetensors_header(path):
    """Returns (header dict without __metadata__, byte offset where the data starts)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


def decode_tensor(raw, dtype, shape):
    """Raw little-endian bytes -> float64 array of the given shape."""
    if dtype == "F32":
        a = np.frombuffer(raw, dtype="<f4")
    elif dtype == "F64":
        a = np.frombuffer(raw, dtype="<f8")
    elif dtype == "F16":
        a = np.frombuffer(raw, dtype="<f2")
    elif dtype == "BF16":
        a = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    elif dtype == "F8_E4M3":
        a = FP8_TABLE[np.frombuffer(raw, dtype=np.uint8)]
    else:
        fail("unsupported tensor dtype " + dtype)
    return a.astype(np.float64).reshape(shape)


class Checkpoint:
    """HF-layout folder: config.json + model.safetensors or index + shards."""

    def __init__(self, folder):
        self.folder = folder
        with open(os.path.join(folder, "config.json")) as f:
            self.config = json.load(f)
        index = os.path.join(folder, "model.safetensors.index.json")
        if os.path.exists(index):
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]       # trust the index
        else:
            single = os.path.join(folder, "model.safetensors")
            if not os.path.exists(single):
                fail("no model.safetensors or model.safetensors.index.json in " + folder)
            weight_map = {name: "model.safetensors"
                          for name in read_safetensors_header(single)[0]}
        self.headers = {}                                     # file -> (header, data start)
        self.where = {}                                       # tensor name -> file
        for name, fname in weight_map.items():
            if fname not in self.headers:
                self.headers[fname] = read_safetensors_header(os.path.join(folder, fname))
            if name not in self.headers[fname][0]:
                fail("index says %s is in %s but it is not" % (name, fname))
            self.where[name] = fname
        self.cache = {}
        q = self.config.get("quantization_config") or {}
        self.block = q.get("weight_block_size") or [128, 128]

    def has(self, name):
        return name in self.where

    def raw(self, name):
        """One tensor as stored, decoded to float64 (no fp8 scaling)."""
        if name not in self.where:
            fail("missing tensor " + name)
        fname = self.where[name]
        header, start = self.headers[fname]
        info = header[name]
        begin, end = info["data_offsets"]
        mm = np.memmap(os.path.join(self.folder, fname), dtype=np.uint8, mode="r")
        return decode_tensor(mm[start + begin:start + end].tobytes(), info["dtype"], info["shape"])

    def get(self, name):
        """Real float64 weight; fp8 tensors are multiplied by their block scale_inv."""
        if name in self.cache:
            return self.cache[name]
        w = self.raw(name)
        fname = self.where[name]
        if self.headers[fname][0][name]["dtype"] == "F8_E4M3":
            scale = self.raw(name + "_scale_inv")
            bo, bi = self.block
            out_dim, in_dim = w.shape
            if scale.shape != (-(-out_dim // bo), -(-in_dim // bi)):
                fail("bad scale_inv shape for " + name)
            full = np.repeat(np.repeat(scale, bo, axis=0), bi, axis=1)[:out_dim, :in_dim]
            w = w * full                                      # partial edge blocks cropped
        self.cache[name] = w
        return w


# ----------------------------------------------------------------------------- config

class Config:
    def __init__(self, c):
        self.D = c["hidden_size"]
        self.L = c["num_hidden_layers"]
        self.H = c["num_attention_heads"]
        self.q_lora = c.get("q_lora_rank")
        self.R = c["kv_lora_rank"]
        self.nope = c["qk_nope_head_dim"]
        self.rope = c["qk_rope_head_dim"]
        self.vdim = c["v_head_dim"]
        self.n_experts = c.get("n_routed_experts") or 0
        self.n_shared = c.get("n_shared_experts") or 0
        self.k = c.get("num_experts_per_tok") or 0
        self.first_dense = c.get("first_k_dense_replace") or 0
        self.moe_freq = c.get("moe_layer_freq") or 1
        self.scoring = c.get("scoring_func", "softmax")
        self.topk_method = c.get("topk_method", "greedy")
        self.n_group = c.get("n_group") or 1
        self.topk_group = c.get("topk_group") or 1
        self.norm_topk = bool(c.get("norm_topk_prob", False))
        self.rsf = c.get("routed_scaling_factor") or 1.0
        self.eps = c.get("rms_norm_eps", 1e-6)
        self.theta = c.get("rope_theta", 10000.0)
        self.rope_scaling = c.get("rope_scaling")
        self.n_mtp = c.get("num_nextn_predict_layers") or 0
        if self.scoring not in ("softmax", "sigmoid"):
            fail("unsupported scoring_func " + str(self.scoring))
        if self.topk_method not in ("greedy", "group_limited_greedy", "noaux_tc"):
            fail("unsupported topk_method " + str(self.topk_method))
        if c.get("tie_word_embeddings"):
            fail("unsupported tie_word_embeddings true")
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("type", self.rope_scaling.get("rope_type"))
            if kind != "yarn":
                fail("unsupported rope_scaling type " + str(kind))

    def is_moe(self, layer):
        """HF rule; also used for the MTP layer index L."""
        return (self.n_experts > 0 and layer >= self.first_dense
                and layer % self.moe_freq == 0)


# ----------------------------------------------------------------------------- maths

def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def silu(x):
    return x / (1.0 + np.exp(-x))


def softmax(x, axis=-1):
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def linear(x, w):
    """y = W x for every row of x; W is [out, in]."""
    return x @ w.T


def yarn_mscale(factor, m):
    return 0.1 * m * math.log(factor) + 1.0 if factor > 1.0 else 1.0


def rope_tables(cfg, positions):
    """cos/sin [T, rope/2] and the attention softmax scale, following SPEC (YaRN when set)."""
    d = cfg.rope
    i = np.arange(d // 2, dtype=np.float64)
    base = cfg.theta ** (-2.0 * i / d)                        # theta^(-2i/d)
    inv_freq, cs_scale = base, 1.0
    scale = (cfg.nope + cfg.rope) ** -0.5
    rs = cfg.rope_scaling
    if rs is not None:
        f = float(rs["factor"])
        lo_len = rs["original_max_position_embeddings"]
        beta_fast, beta_slow = rs.get("beta_fast", 32), rs.get("beta_slow", 1)

        def corr(n):                                          # dim index where n rotations fit
            return d * math.log(lo_len / (n * 2 * math.pi)) / (2 * math.log(cfg.theta))
        lo = max(math.floor(corr(beta_fast)), 0)
        hi = min(math.ceil(corr(beta_slow)), d - 1)
        if lo == hi:
            hi += 0.001
        ramp = np.clip((i - lo) / (hi - lo), 0.0, 1.0)
        inv_freq = (base / f) * ramp + base * (1.0 - ramp)
        mscale, mscale_all = rs.get("mscale", 1.0) or 0.0, rs.get("mscale_all_dim", 0.0) or 0.0
        cs_scale = yarn_mscale(f, mscale) / yarn_mscale(f, mscale_all)
        if mscale_all:
            scale *= yarn_mscale(f, mscale_all) ** 2
    angle = np.asarray(positions, dtype=np.float64)[:, None] * inv_freq[None, :]
    return np.cos(angle) * cs_scale, np.sin(angle) * cs_scale, scale


def apply_rope(x, cos, sin):
    """Rotate adjacent pairs (2i, 2i+1); x is [T, ..., rope], cos/sin [T, rope/2]."""
    extra = (slice(None),) + (None,) * (x.ndim - 2) + (slice(None),)
    c, s = cos[extra], sin[extra]
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = a * c - b * s
    out[..., 1::2] = a * s + b * c
    return out


# ----------------------------------------------------------------------------- blocks

def attention(ck, cfg, p, x, rope):
    """Naive MLA with causal mask over positions 0..T-1. x is the normed input [T, D]."""
    T, H, nope, rd, vd, R = x.shape[0], cfg.H, cfg.nope, cfg.rope, cfg.vdim, cfg.R
    cos, sin, scale = rope
    # queries: plain q_proj or low-rank q_a -> norm -> q_b
    if cfg.q_lora:
        qa = rms_norm(linear(x, ck.get(p + "q_a_proj.weight")),
                      ck.get(p + "q_a_layernorm.weight"), cfg.eps)
        q = linear(qa, ck.get(p + "q_b_proj.weight"))
    else:
        q = linear(x, ck.get(p + "q_proj.weight"))
    q = q.reshape(T, H, nope + rd)
    q_nope, q_pe = q[..., :nope], apply_rope(q[..., nope:], cos, sin)
    # latent c (normed) and the single shared rope key
    kv = linear(x, ck.get(p + "kv_a_proj_with_mqa.weight"))
    c = rms_norm(kv[:, :R], ck.get(p + "kv_a_layernorm.weight"), cfg.eps)
    k_pe = apply_rope(kv[:, R:], cos, sin)                    # [T, rope]
    # expand per-head keys/values from the latent with kv_b_proj
    kvb = linear(c, ck.get(p + "kv_b_proj.weight")).reshape(T, H, nope + vd)
    k_nope, v = kvb[..., :nope], kvb[..., nope:]
    # scores [H, Tq, Tk], causal mask, softmax, weighted sum of values
    scores = (np.einsum("qhd,khd->hqk", q_nope, k_nope)
              + np.einsum("qhd,kd->hqk", q_pe, k_pe)) * scale
    mask = np.triu(np.ones((T, T), dtype=bool), k=1)
    scores[:, mask] = -np.inf
    probs = softmax(scores, axis=-1)
    out = np.einsum("hqk,khd->qhd", probs, v).reshape(T, H * vd)
    return linear(out, ck.get(p + "o_proj.weight"))


def mlp(ck, p, x):
    """down(silu(gate(x)) * up(x))"""
    g = linear(x, ck.get(p + "gate_proj.weight"))
    u = linear(x, ck.get(p + "up_proj.weight"))
    return linear(silu(g) * u, ck.get(p + "down_proj.weight"))


def route(ck, cfg, p, x):
    """Router: returns (expert ids [T,k], weights [T,k])."""
    T, E, k = x.shape[0], cfg.n_experts, cfg.k
    logits = linear(x, ck.get(p + "gate.weight"))
    s = softmax(logits) if cfg.scoring == "softmax" else 1.0 / (1.0 + np.exp(-logits))
    # the selection key: biased for noaux_tc, else the scores themselves
    key = s + ck.get(p + "gate.e_score_correction_bias") if cfg.topk_method == "noaux_tc" else s
    if cfg.topk_method != "greedy":
        # keep only the topk_group best groups (group score: max, or sum of the 2 largest)
        grouped = key.reshape(T, cfg.n_group, E // cfg.n_group)
        if cfg.topk_method == "noaux_tc":
            gscore = np.sort(grouped, axis=-1)[..., -2:].sum(axis=-1)
        else:
            gscore = grouped.max(axis=-1)
        best = np.argsort(-gscore, axis=-1, kind="stable")[:, :cfg.topk_group]
        keep = np.zeros((T, cfg.n_group), dtype=bool)
        keep[np.arange(T)[:, None], best] = True
        key = np.where(np.repeat(keep, E // cfg.n_group, axis=1), key, -np.inf)
    ids = np.argsort(-key, axis=-1, kind="stable")[:, :k]
    w = np.take_along_axis(s, ids, axis=-1)                   # weights from unbiased s
    if cfg.norm_topk and k > 1:
        w = w / (w.sum(axis=-1, keepdims=True) + 1e-20)
    return ids, w * cfg.rsf


def moe(ck, cfg, p, x):
    """Routed experts + shared experts. Returns (y, chosen ids)."""
    ids, w = route(ck, cfg, p, x)
    y = np.zeros_like(x)
    for e in np.unique(ids):
        rows, slot = np.nonzero(ids == e)                     # tokens that chose expert e
        y[rows] += w[rows, slot][:, None] * mlp(ck, p + "experts.%d." % e, x[rows])
    if cfg.n_shared:
        y += mlp(ck, p + "shared_experts.", x)
    return y, ids


def decoder_layer(ck, cfg, layer, x, rope, routing):
    """h = x + Attn(norm(x)); y = h + FFN(norm(h)). Appends MoE choices to routing."""
    p = "model.layers.%d." % layer
    h = x + attention(ck, cfg, p + "self_attn.", rms_norm(x, ck.get(p + "input_layernorm.weight"),
                                                          cfg.eps), rope)
    hn = rms_norm(h, ck.get(p + "post_attention_layernorm.weight"), cfg.eps)
    if cfg.is_moe(layer):
        f, ids = moe(ck, cfg, p + "mlp.", hn)
        routing.append(ids)
    else:
        f = mlp(ck, p + "mlp.", hn)
    return h + f


# ----------------------------------------------------------------------------- model

def forward(ck, cfg, tokens):
    """Prefill from position 0: returns (logits [T,V], final-normed hidden [T,D], routing)."""
    tokens = np.asarray(tokens, dtype=np.int64)
    rope = rope_tables(cfg, np.arange(len(tokens)))
    x = ck.get("model.embed_tokens.weight")[tokens]
    routing = []
    for layer in range(cfg.L):
        x = decoder_layer(ck, cfg, layer, x, rope, routing)
    h = rms_norm(x, ck.get("model.norm.weight"), cfg.eps)
    return linear(h, ck.get("lm_head.weight")), h, routing


def mtp_forward(ck, cfg, h, next_ids):
    """vLLM MTP head at layer index L: row i combines h_i with embed(next_ids[i])."""
    L = cfg.L
    p = "model.layers.%d." % L
    e = ck.get(p + "embed_tokens.weight")[np.asarray(next_ids, dtype=np.int64)]
    e[0] = 0.0                                                # zeroed at position 0
    cat = np.concatenate([rms_norm(e, ck.get(p + "enorm.weight"), cfg.eps),
                          rms_norm(h, ck.get(p + "hnorm.weight"), cfg.eps)], axis=-1)
    x = linear(cat, ck.get(p + "eh_proj.weight"))             # embedding half first
    routing = []
    x = decoder_layer(ck, cfg, L, x, rope_tables(cfg, np.arange(len(next_ids))), routing)
    x = rms_norm(x, ck.get(p + "shared_head.norm.weight"), cfg.eps)
    return linear(x, ck.get(p + "shared_head.head.weight")), routing


def routing_array(routing):
    """List of [T,k] -> [n, T, k] int32, each row sorted ascending."""
    if not routing:
        return np.zeros((0, 0, 0), dtype=np.int32)
    return np.sort(np.stack(routing), axis=-1).astype(np.int32)


def main():
    ap = argparse.ArgumentParser(description="float64 NumPy reference of DeepSeek-V2/V3")
    ap.add_argument("-m", "--model", required=True, help="HF checkpoint folder")
    ap.add_argument("--tokens", required=True, help="comma-separated token ids")
    ap.add_argument("-o", "--out", help="write [T,V] float32 prefill logits (.npy)")
    ap.add_argument("--mtp-out", help="write [T,V] float32 MTP logits (.npy)")
    ap.add_argument("--routing-out", help="write [n_moe_layers,T,k] int32 expert ids (.npy)")
    ap.add_argument("--mtp-routing-out", help="write [T,k] int32 MTP-layer expert ids (.npy)")
    ap.add_argument("--greedy", type=int, default=0, help="print N greedy ids after tokens")
    a = ap.parse_args()

    ck = Checkpoint(a.model)
    cfg = Config(ck.config)
    tokens = [int(t) for t in a.tokens.split(",") if t.strip() != ""]
    if not tokens:
        fail("no tokens")

    logits, h, routing = forward(ck, cfg, tokens)
    if a.out:
        np.save(a.out, logits.astype(np.float32))
    if a.routing_out:
        np.save(a.routing_out, routing_array(routing))
    if a.mtp_out or a.mtp_routing_out:
        if cfg.n_mtp < 1:
            fail("num_nextn_predict_layers is 0: no MTP head")
        next_ids = tokens[1:] + [int(np.argmax(logits[-1]))]
        mtp_logits, mtp_routing = mtp_forward(ck, cfg, h, next_ids)
        if a.mtp_out:
            np.save(a.mtp_out, mtp_logits.astype(np.float32))
        if a.mtp_routing_out:
            if not mtp_routing:
                fail("the MTP layer is dense: no routing")
            np.save(a.mtp_routing_out, routing_array(mtp_routing)[0])
    if a.greedy > 0:
        # recompute a full prefill for every new token: slow but obviously right
        seq, new = list(tokens), []
        for step in range(a.greedy):
            if step > 0:
                logits = forward(ck, cfg, seq)[0]
            new.append(int(np.argmax(logits[-1])))
            seq.append(new[-1])
        print(" ".join(str(t) for t in new))


if __name__ == "__main__":
    main()
