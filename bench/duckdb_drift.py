"""DuckDB reference for `saerl bench sql`: the same decoder-drift statistics over the same
Parquet lake, with DuckDB's list_cosine_similarity. Prints `seconds: X` (best of --runs) and
`peak_rss_bytes: N`.

usage: python3 bench/duckdb_drift.py LAKE [--runs 3]
"""
import argparse
import time

import duckdb

ap = argparse.ArgumentParser()
ap.add_argument("lake")
ap.add_argument("--runs", type=int, default=3)
a = ap.parse_args()
con = duckdb.connect()
f = f"read_parquet('{a.lake}/features/*/*/*/*/*.parquet', hive_partitioning = true)"
s = f"read_parquet('{a.lake}/saes/*/*/*/*/*.parquet', hive_partitioning = true)"
st = f"read_parquet('{a.lake}/stages/*/*.parquet', hive_partitioning = true)"
# DuckDB reads the FixedSizeList vector columns as FLOAT[] lists.
q = f"""
WITH s AS (SELECT a.chain, a.stage, a.layer, a.k, st.step FROM {s} a JOIN {st} st
           ON st.chain = a.chain AND st.stage = a.stage),
t AS (SELECT * FROM (SELECT chain, layer, k, stage AS stage_from, step AS step_from,
        lead(stage) OVER (PARTITION BY chain, layer, k ORDER BY step) AS stage_to,
        lead(step) OVER (PARTITION BY chain, layer, k ORDER BY step) AS step_to FROM s)
      WHERE stage_to IS NOT NULL),
d AS (SELECT t.*, a.feature,
        list_cosine_similarity(a.w_dec, b.w_dec) AS dec_cos,
        list_cosine_similarity(a.w_enc, b.w_enc) AS enc_cos
      FROM t JOIN {f} a ON a.chain = t.chain AND a.stage = t.stage_from AND a.layer = t.layer AND a.k = t.k
             JOIN {f} b ON b.chain = t.chain AND b.stage = t.stage_to AND b.layer = t.layer AND b.k = t.k
                       AND b.feature = a.feature)
SELECT chain, layer, k, stage_from, stage_to, step_from, step_to, count(*) AS n_features,
       avg(dec_cos), median(dec_cos), quantile_cont(dec_cos, 0.25), quantile_cont(dec_cos, 0.75),
       min(dec_cos), (1 - avg(dec_cos)) / greatest(step_to - step_from, 1),
       avg(enc_cos), median(enc_cos), (1 - avg(enc_cos)) / greatest(step_to - step_from, 1),
       corr(dec_cos, enc_cos)
FROM d GROUP BY chain, layer, k, stage_from, stage_to, step_from, step_to ORDER BY chain, layer, k, step_from
"""
best = None
for _ in range(a.runs):
    t0 = time.perf_counter()
    rows = con.execute(q).fetchall()
    dt = time.perf_counter() - t0
    best = dt if best is None else min(best, dt)
print(f"rows: {len(rows)}")
print(f"seconds: {best:.4f}")
import resource  # peak RSS of this process (kilobytes on Linux)
print(f"peak_rss_bytes: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}")
