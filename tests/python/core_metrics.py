"""SAEBench's core metrics of one SAE of a lake with numpy, for the eval test.

argv: LAKE CHAIN STAGE LAYER K ROWS.safetensors TENSOR
stdout: JSON {metric: value} over the rows TENSOR of the safetensors file (float32 [n, d]):
the SAE from the lake's own Parquet files (DuckDB), encoded and decoded in float64 as DESIGN.md
defines a TopK SAE, then each metric by its definition (variances over the rows, population).
"""
import json
import struct
import sys

import duckdb
import numpy as np


def read_tensor(path, name):
    with open(path, "rb") as fh:
        n = struct.unpack("<Q", fh.read(8))[0]
        e = json.loads(fh.read(n))[name]
        assert e["dtype"] == "F32", e["dtype"]
        a, b = e["data_offsets"]
        fh.seek(8 + n + a)
        return np.frombuffer(fh.read(b - a), dtype="<f4").astype(np.float64).reshape(e["shape"])


def main():
    lake, chain, stage, layer, k, rows, tensor = sys.argv[1:8]
    k = int(k)
    part = f"chain={chain}/stage={stage}/layer={layer}/k={k}"
    con = duckdb.connect()
    feats = con.execute(
        f"SELECT w_enc, b_enc, w_dec FROM read_parquet('{lake}/features/{part}/*.parquet') ORDER BY feature"
    ).fetchall()
    w_enc = np.array([f[0] for f in feats], dtype=np.float64)
    b_enc = np.array([f[1] for f in feats], dtype=np.float64)
    w_dec = np.array([f[2] for f in feats], dtype=np.float64)
    b_pre, b_dec, activation = con.execute(
        f"SELECT b_pre, b_dec, activation FROM read_parquet('{lake}/saes/{part}/*.parquet')"
    ).fetchone()
    b_pre, b_dec = np.array(b_pre, dtype=np.float64), np.array(b_dec, dtype=np.float64)

    x = read_tensor(rows, tensor)
    pre = (x - b_pre) @ w_enc.T + b_enc
    idx = np.argsort(-pre, axis=1, kind="stable")[:, :k]
    vals = np.take_along_axis(pre, idx, axis=1)
    if activation != "topk":
        vals = np.maximum(vals, 0.0)
    z = np.zeros_like(pre)
    np.put_along_axis(z, idx, vals, axis=1)
    x_hat = z @ w_dec + b_dec

    err = ((x - x_hat) ** 2).sum(1)
    total_var = x.var(axis=0).sum()
    centred = ((x - x.mean(0)) ** 2).sum(1)
    nx, nh = np.linalg.norm(x, axis=1), np.linalg.norm(x_hat, axis=1)
    density = (z > 0).mean(0)
    out = {
        "explained_variance": 1 - err.mean() / total_var,
        "explained_variance_legacy": (1 - err / centred).mean(),
        "cossim": ((x * x_hat).sum(1) / (np.maximum(nx, 1e-8) * np.maximum(nh, 1e-8))).mean(),
        "l2_ratio": (nh / nx).mean(),
        "relative_reconstruction_bias": (nh**2).mean() / (x * x_hat).sum(1).mean(),
        "frac_alive": (density > 0).mean(),
        "freq_over_1_percent": (density > 0.01).mean(),
        "freq_over_10_percent": (density > 0.1).mean(),
    }
    json.dump({m: float(v) for m, v in out.items()}, sys.stdout)


main()
