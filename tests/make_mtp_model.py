#!/usr/bin/python3
"""Turns a generated F32 checkpoint with an MTP layer into one whose MTP head predicts
like the main model, so that drafts are often accepted (random weights alone give ~0%).
The residual stream is made to carry mostly the token embedding (attention and FFN
outputs scaled down), and the MTP layer passes the next token's embedding straight to a
head equal to lm_head: then both models predict the next token from the current token
alone, with noise of size --noise added to the head so the draft distribution differs.
Usage: make_mtp_model.py DIR [--noise X] [--block-scale S]"""
import argparse, json, os, struct
import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("dir")
ap.add_argument("--noise", type=float, default=0.0)
ap.add_argument("--block-scale", type=float, default=0.05)
a = ap.parse_args()
path = os.path.join(a.dir, "model.safetensors")
raw = bytearray(open(path, "rb").read())
n = struct.unpack("<Q", raw[:8])[0]
hdr = json.loads(raw[8:8 + n])
base = 8 + n


def view(name):
    h = hdr[name]
    assert h["dtype"] == "F32", "make_mtp_model.py needs an F32 checkpoint (--dtype f32)"
    b, e = h["data_offsets"]
    return np.frombuffer(memoryview(raw)[base + b:base + e], dtype="<f4").reshape(h["shape"])


cfg = json.load(open(os.path.join(a.dir, "config.json")))
L = cfg["num_hidden_layers"]
rng = np.random.default_rng(0)
for name in hdr:
    if name.endswith("o_proj.weight") or name.endswith("down_proj.weight"):
        view(name)[...] *= a.block_scale
D = cfg["hidden_size"]
eh = view(f"model.layers.{L}.eh_proj.weight")
eh[...] = 0
eh[:, :D] = np.eye(D, dtype=np.float32)
for nm in ["enorm.weight"]:
    view(f"model.layers.{L}.{nm}")[...] = 1.0
view(f"model.layers.{L}.embed_tokens.weight")[...] = view("model.embed_tokens.weight")
view(f"model.layers.{L}.shared_head.norm.weight")[...] = view("model.norm.weight")
head = view(f"model.layers.{L}.shared_head.head.weight")
lm = view("lm_head.weight")
head[...] = lm + a.noise * rng.standard_normal(lm.shape).astype(np.float32) * np.abs(lm).mean()
open(path, "wb").write(raw)
