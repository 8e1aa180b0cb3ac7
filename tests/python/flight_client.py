"""A Flight SQL client that saerl did not write (ADBC's Flight SQL driver, pyarrow, pandas,
Polars), for saerl's tests: it runs statements against `saerl serve --flight` and reports what
it got. Usage:

    flight_client.py URI TOKEN JOB.json OUT_DIR

TOKEN is `-` for none. JOB.json holds {"mode": ..., ...}; results go to OUT_DIR as Arrow IPC
files (one per statement, named by its `name`), and a JSON summary is printed on stdout.

Modes:
- queries: {"queries": [{"name", "sql", "params": {name: value} | null}]} - each statement (a
  prepared statement with its parameters bound by name when it has any), written to NAME.arrow;
  the first one also as pandas and Polars frames, whose shapes are reported.
- tables: the catalogs, schemas, tables and one table's columns through ADBC's metadata calls.
- concurrent: {"clients": N, "queries": [...]} - N connections at once, each running every
  query; every client's results written as NAME.CLIENT.arrow.
- expect_error: {"sql"} - the statement must fail; its message is reported.
- mixed: {"failing": sql, "queries": [...]} - one client runs the failing statement while
  others run the queries; the failure's message and the others' results are reported.
- cancel: {"sql"} - reads one batch of a long statement, then closes the connection.
"""

import json
import sys
import threading
import time

import adbc_driver_flightsql.dbapi as flight
import pyarrow as pa
import pyarrow.ipc as ipc


def connect(uri, token):
    kwargs = {}
    if token != "-":
        kwargs["db_kwargs"] = {"adbc.flight.sql.authorization_header": f"Bearer {token}"}
    return flight.connect(uri, autocommit=True, **kwargs)


def run(conn, q):
    with conn.cursor() as cur:
        params = q.get("params")
        if isinstance(params, list):
            cur.execute(q["sql"], tuple(params))  # bound by position: $1, $2, ...
        elif params:
            # Bound by name: the server matches columns to the statement's $placeholders.
            batch = pa.record_batch({k: [v] for k, v in params.items()})
            cur.execute(q["sql"], batch)
        else:
            cur.execute(q["sql"])
        return cur.fetch_arrow_table()


def save(table, path):
    with ipc.new_file(path, table.schema) as w:
        w.write_table(table)


def main():
    uri, token, job_file, out = sys.argv[1:5]
    with open(job_file) as f:
        job = json.load(f)
    mode = job["mode"]
    summary = {}
    if mode == "queries":
        with connect(uri, token) as conn:
            for i, q in enumerate(job["queries"]):
                t = run(conn, q)
                save(t, f"{out}/{q['name']}.arrow")
                summary[q["name"]] = t.num_rows
                if i == 0:
                    import pandas
                    import polars

                    df = t.to_pandas()
                    pl = polars.from_arrow(t)
                    assert isinstance(df, pandas.DataFrame)
                    summary["_frames"] = {"pandas": list(df.shape), "polars": list(pl.shape)}
    elif mode == "tables":
        with connect(uri, token) as conn:
            objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
            tables = []
            for cat in objects:
                for sch in cat["catalog_db_schemas"] or []:
                    for tab in sch["db_schema_tables"] or []:
                        tables.append([cat["catalog_name"], sch["db_schema_name"], tab["table_name"], tab["table_type"]])
            summary["tables"] = tables
            name = job["schema_of"]
            summary["columns"] = conn.adbc_get_table_schema(name).names
            summary["table_types"] = conn.adbc_get_table_types()
    elif mode == "concurrent":
        errors = []

        def client(c):
            try:
                with connect(uri, token) as conn:
                    for q in job["queries"]:
                        save(run(conn, q), f"{out}/{q['name']}.{c}.arrow")
            except Exception as e:  # reported, not raised: every client's fate is wanted
                errors.append(f"client {c}: {e}")

        threads = [threading.Thread(target=client, args=(c,)) for c in range(job["clients"])]
        t0 = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        summary = {"errors": errors, "seconds": time.time() - t0}
    elif mode == "expect_error":
        try:
            with connect(uri, token) as conn:
                run(conn, {"sql": job["sql"]})
            summary["error"] = None
        except Exception as e:
            summary["error"] = str(e)
    elif mode == "mixed":
        result = {}

        def failing():
            try:
                with connect(uri, token) as conn:
                    run(conn, {"sql": job["failing"]})
                result["failing"] = None
            except Exception as e:
                result["failing"] = str(e)

        t = threading.Thread(target=failing)
        t.start()
        with connect(uri, token) as conn:
            for q in job["queries"]:
                save(run(conn, q), f"{out}/{q['name']}.arrow")
        t.join()
        summary = result
    elif mode == "cancel":
        conn = connect(uri, token)
        cur = conn.cursor()
        cur.execute(job["sql"])
        reader = cur.fetch_record_batch()
        first = reader.read_next_batch()
        summary["first_batch_rows"] = first.num_rows
        cur.close()
        conn.close()
    else:
        raise SystemExit(f"unknown mode {mode}")
    json.dump(summary, sys.stdout)


if __name__ == "__main__":
    main()
