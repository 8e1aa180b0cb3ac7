"""Runs SQL statements in DuckDB over a saerl lake's Parquet files, for the differential test.

stdin: {"lake": DIR, "tables": [name, ...], "statements": [sql, ...]}
stdout: one JSON list, per statement {"columns": [...], "rows": [[...], ...]} or {"error": text}.
Each table is a view over its hive-partitioned files, as any Parquet engine would read them.
"""
import decimal
import json
import math
import sys

import duckdb


def cell(v):
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [cell(x) for x in v]
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    return str(v)


def main():
    job = json.load(sys.stdin)
    con = duckdb.connect()
    for t in job["tables"]:
        glob = f"{job['lake']}/{t}/**/*.parquet".replace("'", "''")
        con.execute(
            f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{glob}', hive_partitioning = true)"
        )
    out = []
    for sql in job["statements"]:
        try:
            cur = con.execute(sql)
            cols = [d[0] for d in cur.description]
            rows = [[cell(v) for v in r] for r in cur.fetchall()]
            out.append({"columns": cols, "rows": rows})
        except Exception as e:  # reported per statement; the Rust side fails the test
            out.append({"error": f"{type(e).__name__}: {e}"})
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
