//! `saerl serve --flight`: a Python client saerl did not write (ADBC's Flight SQL driver,
//! pyarrow, pandas, Polars) gets the same rows as `saerl sql` for every saved query, a
//! `topk_encode` statement and a prepared statement with a parameter; lists the lake's tables;
//! needs the token; runs 8 clients at once; is refused writes; sees an over-budget statement
//! fail alone; and a statement whose client goes away stops. The lake is left as it was.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;
use crate::shared::flight::{client, ipc_csv, same_csv, FlightServer};

const TOKEN: &str = "flight-test-token";

fn server(lake: &Path, dir: &Path, extra: &[&str]) -> FlightServer {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_saerl"));
    cmd.arg("--lake").arg(lake).arg("serve").args(extra);
    FlightServer::start(cmd, dir)
}

fn csv(lake: &Path, sql: &str) -> String {
    ok(lake, &["sql", "--format", "csv", "-c", sql])
}

/// Every saved query, and statements of saerl's functions over the fixture lake: (name, SQL,
/// parameters, what `saerl sql` answers).
fn statements(lake: &Path) -> Vec<(String, String, Value, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("queries");
    let mut out = Vec::new();
    for q in saerl::sql::saved::builtin() {
        let file = dir.join(format!("{}.sql", q.name));
        let want = ok(
            lake,
            &["sql", "--format", "csv", "-f", file.to_str().unwrap()],
        );
        let params: serde_json::Map<String, Value> = q
            .defaults()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), crate::shared::flight::param(v)))
            .collect();
        out.push((q.name.clone(), q.sql.clone(), Value::Object(params), want));
    }
    // topk_encode over the tiny model's activations, at the fixture SAE's layer.
    let layer = json(&fixtures().join("tiny-qwen2/sae_eval.json"))["layer"]
        .as_i64()
        .unwrap();
    let topk = format!(
        "SELECT doc_id, pos, e['feature'] AS feature, e['value'] AS value FROM \
         (SELECT doc_id, pos, unnest(topk_encode(x, 'tiny', 'instruct_base', {layer})) AS e \
          FROM activations WHERE chain = 'tiny' AND layer = {layer}) ORDER BY doc_id, pos, feature"
    );
    out.push((
        "topk_encode".into(),
        topk.clone(),
        Value::Null,
        csv(lake, &topk),
    ));
    // A prepared statement with a parameter, against the literal statement.
    let first = csv(lake, "SELECT min(chain) AS c FROM saes");
    let chain = first.lines().nth(1).unwrap().to_string();
    let by_layer = "SELECT layer, k, count(*) AS n, avg(b_enc) AS mean_b FROM features \
                    WHERE chain = $chain GROUP BY layer, k ORDER BY layer, k";
    let literal = by_layer.replace("$chain", &format!("'{chain}'"));
    out.push((
        "prepared".into(),
        by_layer.into(),
        json!({ "chain": chain }),
        csv(lake, &literal),
    ));
    let positional = by_layer.replace("$chain", "$1");
    out.push((
        "positional".into(),
        positional,
        json!([chain]),
        csv(lake, &literal),
    ));
    out
}

fn jobs(statements: &[(String, String, Value, String)]) -> Vec<Value> {
    statements
        .iter()
        .map(|(name, sql, params, _)| json!({ "name": name, "sql": sql, "params": params }))
        .collect()
}

#[test]
fn flight_sql_answers_like_saerl_sql_for_a_client_it_did_not_write() {
    let lake = fixture_lake();
    let before = snapshot(lake);
    let dir = tempfile::tempdir().unwrap();
    let s = server(lake, dir.path(), &["--token", TOKEN]);
    let uri = s.uri();
    let want = statements(lake);

    // Every statement, through ADBC, equals saerl sql's rows; pandas and Polars read them.
    let out = dir.path().join("one");
    let summary = client(
        &uri,
        Some(TOKEN),
        &json!({ "mode": "queries", "queries": jobs(&want) }),
        &out,
    );
    for (name, _, _, csv) in &want {
        same_csv(csv, &ipc_csv(&out.join(format!("{name}.arrow"))), name);
    }
    let frames = &summary["_frames"];
    assert_eq!(frames["pandas"], frames["polars"], "{summary}");

    // The metadata calls list the lake's tables (and their columns).
    let t = client(
        &uri,
        Some(TOKEN),
        &json!({ "mode": "tables", "schema_of": "features" }),
        &out,
    );
    let tables: Vec<String> = t["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[2].as_str().unwrap().to_string())
        .collect();
    for table in saerl::lake::Table::ALL {
        assert!(
            tables.contains(&table.name().to_string()),
            "{} not listed: {tables:?}",
            table.name()
        );
    }
    for view in ["feature_drift", "sae_transitions"] {
        assert!(
            tables.contains(&view.to_string()),
            "{view} not listed: {tables:?}"
        );
    }
    assert!(
        t["columns"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "w_dec"),
        "{t}"
    );

    // The token is needed, even on loopback.
    let e = client(
        &uri,
        None,
        &json!({ "mode": "expect_error", "sql": "SELECT 1" }),
        &out,
    );
    let e = e["error"]
        .as_str()
        .expect("a call without the token was answered");
    assert!(e.contains("token"), "{e}");

    // Writes are refused, with the SQL box's rule.
    for sql in [
        "CREATE TABLE t AS SELECT 1",
        "COPY (SELECT 1) TO '/tmp/x.csv'",
        "SET datafusion.execution.batch_size = 1",
    ] {
        let e = client(
            &uri,
            Some(TOKEN),
            &json!({ "mode": "expect_error", "sql": sql }),
            &out,
        );
        let e = e["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{sql} was run"));
        assert!(e.contains("read-only"), "{sql}: {e}");
    }

    // 8 clients at once, each running every statement, all get the right rows.
    let many = dir.path().join("many");
    let r = client(
        &uri,
        Some(TOKEN),
        &json!({ "mode": "concurrent", "clients": 8, "queries": jobs(&want) }),
        &many,
    );
    assert_eq!(r["errors"], json!([]), "{r}");
    for c in 0..8 {
        for (name, _, _, csv) in &want {
            same_csv(
                csv,
                &ipc_csv(&many.join(format!("{name}.{c}.arrow"))),
                &format!("{name}, client {c}"),
            );
        }
    }
    drop(s);
    assert_eq!(
        snapshot(lake),
        before,
        "the Flight SQL server changed the lake"
    );
}

#[test]
fn an_over_budget_statement_fails_alone_and_a_dropped_one_stops() {
    let lake = fixture_lake();
    let dir = tempfile::tempdir().unwrap();
    let s = server(lake, dir.path(), &["--memory-limit", "4MB"]);
    let uri = s.uri();
    let want = statements(lake);
    let out = dir.path().join("mixed");
    // A sort of 2 million integers needs 16 MB: it fails with the limit named, while another
    // client's statements, run meanwhile, come back right.
    let big = "SELECT v FROM generate_series(1, 2000000) t(v) ORDER BY v DESC";
    let r = client(
        &uri,
        None,
        &json!({ "mode": "mixed", "failing": big, "queries": jobs(&want) }),
        &out,
    );
    let e = r["failing"]
        .as_str()
        .expect("the over-budget statement succeeded");
    assert!(e.contains("--memory-limit"), "{e}");
    for (name, _, _, csv) in &want {
        same_csv(csv, &ipc_csv(&out.join(format!("{name}.arrow"))), name);
    }
    // saerl's own operators count against the same budget: a tiny one refuses match_features.
    let tiny = server(lake, dir.path(), &["--memory-limit", "1KB"]);
    let pair = csv(
        lake,
        "SELECT chain, stage, layer, k FROM saes ORDER BY chain, stage, layer, k LIMIT 1",
    );
    let p: Vec<&str> = pair.lines().nth(1).unwrap().split(',').collect();
    let sql = format!(
        "SELECT count(*) FROM match_features('{0}', '{1}', '{0}', '{1}', {2}, {3})",
        p[0], p[1], p[2], p[3]
    );
    let e = client(
        &tiny.uri(),
        None,
        &json!({ "mode": "expect_error", "sql": sql }),
        &out,
    );
    let e = e["error"].as_str().expect("match_features ran within 1 KB");
    assert!(
        e.contains("--memory-limit") && e.contains("match_features"),
        "{e}"
    );
    // The server goes on serving.
    let ok_again = client(
        &tiny.uri(),
        None,
        &json!({ "mode": "queries", "queries": [{"name": "one", "sql": "SELECT 1 AS one"}] }),
        &out,
    );
    assert_eq!(ok_again["one"], 1);

    // A long statement whose client leaves after one batch stops on the server.
    let r = client(
        &uri,
        None,
        &json!({ "mode": "cancel", "sql": "SELECT v FROM generate_series(1, 1000000000) t(v)" }),
        &out,
    );
    assert!(r["first_batch_rows"].as_u64().unwrap() > 0, "{r}");
    let t = Instant::now();
    while !s.stderr().contains("its client went away") {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the statement did not stop:\n{}",
            s.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn flight_needs_a_token_off_loopback() {
    let lake = fixture_lake();
    let o = saerl(lake, &["serve", "--no-web", "--flight", "0.0.0.0:0"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("without a token"), "{}", stderr(&o));
    let o = saerl(lake, &["serve", "--no-web"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--flight"), "{}", stderr(&o));
}
