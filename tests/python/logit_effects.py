"""Logit effects of SAE decoder rows with numpy, for the serve test.

argv: MODEL_DIR LAKE CHAIN STAGE LAYER K FEATURE [FEATURE ...]
stdout: JSON {feature: {"top": [[token_id, value], ...], "bottom": [...]}} with 10 each:
unembedding @ (final norm weight * decoder row), in float64 from the checkpoint's own weights
(bf16/f16/f32 safetensors, single file or sharded) and the decoder rows DuckDB reads from the lake.
"""
import json
import os
import struct
import sys

import duckdb
import numpy as np


def tensors(model_dir, names):
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        files = sorted(set(json.load(open(index))["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    out = {}
    for f in files:
        with open(os.path.join(model_dir, f), "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            header = json.loads(fh.read(n))
            base = 8 + n
            for name, e in header.items():
                if name not in names:
                    continue
                a, b = e["data_offsets"]
                fh.seek(base + a)
                raw = fh.read(b - a)
                if e["dtype"] == "BF16":
                    v = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
                elif e["dtype"] == "F16":
                    v = np.frombuffer(raw, dtype="<f2").astype(np.float32)
                else:
                    v = np.frombuffer(raw, dtype="<f4")
                out[name] = v.astype(np.float64).reshape(e["shape"])
    return out


def main():
    model_dir, lake, chain, stage, layer, k = sys.argv[1:7]
    features = [int(f) for f in sys.argv[7:]]
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    head = "model.embed_tokens.weight" if cfg.get("tie_word_embeddings") else "lm_head.weight"
    t = tensors(model_dir, {head, "model.norm.weight"})
    w_u, g = t[head], t["model.norm.weight"]
    glob = f"{lake}/features/chain={chain}/stage={stage}/layer={layer}/k={k}/*.parquet"
    con = duckdb.connect()
    out = {}
    for f in features:
        (row,) = con.execute(
            f"SELECT w_dec FROM read_parquet('{glob}') WHERE feature = {f}"
        ).fetchone()
        logits = w_u @ (g * np.asarray(row, dtype=np.float64))
        order = np.argsort(-logits, kind="stable")
        top = [[int(i), float(logits[i])] for i in order[:10]]
        bottom = [[int(i), float(logits[i])] for i in order[::-1][:10]]
        out[str(f)] = {"top": top, "bottom": bottom}
    json.dump(out, sys.stdout)


main()
