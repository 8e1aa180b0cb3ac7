//! Differential test: a few hundred statements generated from templates (CTEs, joins, GROUP BY,
//! ORDER BY … LIMIT, window functions, exact quantiles, HAVING, DISTINCT) over the lake's base
//! tables, run by saerl's engine and by DuckDB on the same Parquet files. Results must hold the
//! same rows (floats within a relative tolerance), saerl's in the order the statement fixes
//! (ties free); under LIMIT, the same sequence of ORDER BY keys. `SAERL_DIFF_SEED` reproduces a
//! run; the seed is printed with every failure. saerl's own functions are checked against their
//! definitions elsewhere, so only standard SQL is generated here.

use std::path::Path;
use std::process::{Command, Stdio};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use serde_json::Value;

use crate::common::{fixture_lake, session};

/// A generated statement and what its result must satisfy.
struct Case {
    sql: String,
    /// Output columns of the ORDER BY, with `true` for DESC (NULLS LAST throughout).
    keys: Vec<(usize, bool)>,
    limited: bool,
}

/// SplitMix64: a tiny seeded generator, so a seed names the same statements everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }

    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

fn dir(desc: bool) -> &'static str {
    if desc {
        "DESC NULLS LAST"
    } else {
        "ASC NULLS LAST"
    }
}

/// Values of one column of a small saerl query, as text.
fn pool(ctx: &datafusion::prelude::SessionContext, sql: &str) -> Vec<String> {
    let batches = saerl::sql::blocking::run_sql(ctx, sql).unwrap();
    rows_of(&batches)
        .into_iter()
        .map(|r| match &r[0] {
            Value::String(s) => s.clone(),
            v => v.to_string(),
        })
        .collect()
}

struct Pools {
    chains: Vec<String>,
    layers: Vec<String>,
    steps: Vec<String>,
}

/// The templates. Each draws its tables, columns, directions, limits and constants from `r`.
fn generate(r: &mut Rng, p: &Pools, n: usize) -> Vec<Case> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let t = r.below(12);
        let (d1, d2, d3) = (r.coin(), r.coin(), r.coin());
        let limit = [None, Some(1), Some(3), Some(5), Some(17)][r.below(5)];
        let lim = |sql: String| match limit {
            Some(n) => format!("{sql} LIMIT {n}"),
            None => sql,
        };
        let chain = r.pick(&p.chains).clone();
        let layer = r.pick(&p.layers).clone();
        let step = r.pick(&p.steps).clone();
        let agg = *r.pick(&[
            "min",
            "max",
            "avg",
            "sum",
            "count",
            "stddev_pop",
            "var_samp",
        ]);
        let case = match t {
            // The reported shape: a CTE keyed by chain, joined one-to-many, grouped, ordered.
            0 => {
                let (cte_agg, cte_col) = *r.pick(&[("min", "step"), ("max", "step"), ("count", "*")]);
                Case {
                    sql: lim(format!(
                        "WITH e AS (SELECT chain, {cte_agg}({cte_col}) AS m FROM stages GROUP BY chain) \
                         SELECT e.chain, s.stage, s.step, count(*) AS n FROM e JOIN stages s ON s.chain = e.chain \
                         GROUP BY e.chain, s.stage, s.step ORDER BY e.chain {}, s.step {}",
                        dir(d1),
                        dir(d2)
                    )),
                    keys: vec![(0, d1), (2, d2)],
                    limited: limit.is_some(),
                }
            }
            // Top-N per group after a join with a grouped subquery.
            1 => {
                let col = *r.pick(&["b_enc", "feature"]);
                // The feature index has one variance per SAE size: ties only in exact math.
                let agg = if col == "feature" { *r.pick(&["min", "max", "sum", "count"]) } else { agg };
                let (side, g) = *r.pick(&[("saes", "chain"), ("stages", "chain")]);
                Case {
                    sql: lim(format!(
                        "SELECT c.{g}, f.stage, {agg}(f.{col}) AS mx FROM (SELECT {g} FROM {side} GROUP BY {g}) c \
                         JOIN features f ON f.{g} = c.{g} GROUP BY c.{g}, f.stage ORDER BY c.{g} {}, mx {}, f.stage {}",
                        dir(d1),
                        dir(d2),
                        dir(d3)
                    )),
                    keys: vec![(0, d1), (2, d2), (1, d3)],
                    limited: limit.is_some(),
                }
            }
            // Plain GROUP BY over the partition columns with an aggregate and ORDER BY.
            2 => {
                let (table, num) = *r.pick(&[
                    ("features", "b_enc"),
                    ("features", "feature"),
                    ("saes", "best_val_mse"),
                    ("saes", "d_sae"),
                    ("feature_stats", "density"),
                    ("top_examples", "value"),
                ]);
                let g = *r.pick(&["chain, layer", "stage, k", "chain, stage", "layer, k"]);
                let agg = if num == "feature" || num == "d_sae" { *r.pick(&["min", "max", "sum", "count"]) } else { agg };
                let gs: Vec<&str> = g.split(", ").collect();
                Case {
                    sql: lim(format!(
                        "SELECT {g}, count(*) AS n, {agg}({num}) AS a FROM {table} GROUP BY {g} \
                         ORDER BY a {}, {} {}, {} {}",
                        dir(d1),
                        gs[0],
                        dir(d2),
                        gs[1],
                        dir(d3)
                    )),
                    keys: vec![(3, d1), (0, d2), (1, d3)],
                    limited: limit.is_some(),
                }
            }
            // HAVING over a join of saes and features.
            3 => {
                let cut = r.below(80);
                Case {
                    sql: lim(format!(
                        "SELECT s.chain, s.layer, count(*) AS n, max(f.b_enc) AS mx FROM saes s JOIN features f \
                         ON f.chain = s.chain AND f.stage = s.stage AND f.layer = s.layer AND f.k = s.k \
                         WHERE f.b_enc > -{}.0 GROUP BY s.chain, s.layer HAVING count(*) > {cut} \
                         ORDER BY n {}, s.chain {}, s.layer {}",
                        r.below(3),
                        dir(d1),
                        dir(d2),
                        dir(d3)
                    )),
                    keys: vec![(2, d1), (0, d2), (1, d3)],
                    limited: limit.is_some(),
                }
            }
            // Window functions over stages (unique order within a partition).
            4 => {
                let w = *r.pick(&[
                    "lag(step) OVER (PARTITION BY chain ORDER BY step)",
                    "lead(stage) OVER (PARTITION BY chain ORDER BY step)",
                    "sum(step) OVER (PARTITION BY chain ORDER BY step ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)",
                    "row_number() OVER (PARTITION BY chain ORDER BY step DESC)",
                    "count(*) OVER (PARTITION BY chain)",
                    "rank() OVER (ORDER BY step)",
                ]);
                Case {
                    sql: lim(format!(
                        "SELECT chain, stage, step, {w} AS w FROM stages ORDER BY chain {}, step {}",
                        dir(d1),
                        dir(d2)
                    )),
                    keys: vec![(0, d1), (2, d2)],
                    limited: limit.is_some(),
                }
            }
            // Ranking inside each SAE, filtered outside the window.
            5 => {
                let (rk, by) = *r.pick(&[("rank", "b_enc DESC"), ("dense_rank", "b_enc"), ("row_number", "feature")]);
                let top = 1 + r.below(4);
                Case {
                    sql: lim(format!(
                        "SELECT chain, stage, layer, k, feature, b_enc, r FROM (SELECT chain, stage, layer, k, feature, b_enc, \
                         {rk}() OVER (PARTITION BY chain, stage, layer, k ORDER BY {by}) AS r FROM features WHERE chain = '{chain}') \
                         WHERE r <= {top} ORDER BY stage {}, layer {}, k {}, r, feature",
                        dir(d1),
                        dir(d2),
                        dir(d3)
                    )),
                    keys: vec![(1, d1), (2, d2), (3, d3), (6, false), (4, false)],
                    limited: limit.is_some(),
                }
            }
            // Exact quantiles per group.
            6 => {
                let q = *r.pick(&["0.25", "0.5", "0.75", "0.9", "0.0", "1.0"]);
                let (table, num) = *r.pick(&[("features", "b_enc"), ("feature_stats", "density"), ("top_examples", "value")]);
                Case {
                    sql: lim(format!(
                        "SELECT chain, layer, percentile_cont({q}) WITHIN GROUP (ORDER BY CAST({num} AS DOUBLE)) AS q, \
                         median(CAST({num} AS DOUBLE)) AS med \
                         FROM {table} GROUP BY chain, layer ORDER BY chain {}, layer {}",
                        dir(d1),
                        dir(d2)
                    )),
                    keys: vec![(0, d1), (1, d2)],
                    limited: limit.is_some(),
                }
            }
            // DISTINCT, and COUNT(DISTINCT).
            7 => {
                if r.coin() {
                    let cols = *r.pick(&["chain, layer", "layer, k", "stage, layer", "chain, k"]);
                    let cs: Vec<&str> = cols.split(", ").collect();
                    Case {
                        sql: lim(format!(
                            "SELECT DISTINCT {cols} FROM features ORDER BY {} {}, {} {}",
                            cs[1],
                            dir(d1),
                            cs[0],
                            dir(d2)
                        )),
                        keys: vec![(1, d1), (0, d2)],
                        limited: limit.is_some(),
                    }
                } else {
                    Case {
                        sql: lim(format!(
                            "SELECT split, count(DISTINCT token_id) AS tokens, count(DISTINCT doc_id) AS docs, count(*) AS n \
                             FROM activations GROUP BY split ORDER BY split {}",
                            dir(d1)
                        )),
                        keys: vec![(0, d1)],
                        limited: limit.is_some(),
                    }
                }
            }
            // Activations joined with vocab and docs: the most frequent tokens.
            8 => Case {
                sql: lim(format!(
                    "SELECT v.token, a.split, count(*) AS n, count(DISTINCT a.doc_id) AS docs FROM activations a \
                     JOIN vocab v ON v.token_id = a.token_id AND v.chain = a.chain AND v.stage = a.stage \
                     JOIN docs d ON d.doc_id = a.doc_id AND d.chain = a.chain AND d.stage = a.stage \
                     WHERE a.pos < {} GROUP BY v.token, a.split ORDER BY n {}, v.token {}, a.split {}",
                    1 + r.below(40),
                    dir(d1),
                    dir(d2),
                    dir(d3)
                )),
                keys: vec![(2, d1), (0, d2), (1, d3)],
                limited: limit.is_some(),
            },
            // Top examples with their feature's statistics (a one-to-many join, then a top-N).
            9 => {
                let split = *r.pick(&["train", "val"]);
                Case {
                    sql: lim(format!(
                        "SELECT t.feature, fs.density, count(*) AS n, max(t.value) AS mx FROM top_examples t \
                         JOIN feature_stats fs ON fs.feature = t.feature AND fs.chain = t.chain AND fs.stage = t.stage \
                         AND fs.layer = t.layer AND fs.k = t.k AND fs.split = '{split}' \
                         GROUP BY t.feature, fs.density ORDER BY fs.density {}, mx {}, t.feature {}",
                        dir(d1),
                        dir(d2),
                        dir(d3)
                    )),
                    keys: vec![(1, d1), (3, d2), (0, d3)],
                    limited: limit.is_some(),
                }
            }
            // Nested aggregation over a join (group keys of an inner GROUP BY reused outside).
            10 => Case {
                sql: lim(format!(
                    "WITH c AS (SELECT chain FROM stages GROUP BY chain), \
                     g AS (SELECT c.chain, f.stage, f.layer, count(*) AS n FROM c JOIN features f ON f.chain = c.chain \
                     GROUP BY c.chain, f.stage, f.layer) \
                     SELECT chain, layer, count(*) AS stages, sum(n) AS n FROM g GROUP BY chain, layer \
                     ORDER BY chain {}, layer {}",
                    dir(d1),
                    dir(d2)
                )),
                keys: vec![(0, d1), (1, d2)],
                limited: limit.is_some(),
            },
            // Filters on constants drawn from the lake.
            _ => Case {
                sql: lim(format!(
                    "SELECT s.stage, s.step, count(f.feature) AS n, avg(f.b_enc) AS mean_b FROM stages s \
                     LEFT JOIN features f ON f.chain = s.chain AND f.stage = s.stage AND f.layer = {layer} \
                     WHERE s.chain = '{chain}' AND s.step >= {step} GROUP BY s.stage, s.step \
                     ORDER BY s.step {}, s.stage {}",
                    dir(d1),
                    dir(d2)
                )),
                keys: vec![(1, d1), (0, d2)],
                limited: limit.is_some(),
            },
        };
        out.push(case);
    }
    out
}

/// A record batch's rows as JSON-like values (numbers as f64, text as strings).
fn rows_of(batches: &[RecordBatch]) -> Vec<Vec<Value>> {
    let mut rows = Vec::new();
    for b in batches {
        let cols: Vec<Vec<Value>> = b
            .columns()
            .iter()
            .map(|c| column_values(c.as_ref()))
            .collect();
        for i in 0..b.num_rows() {
            rows.push(cols.iter().map(|c| c[i].clone()).collect());
        }
    }
    rows
}

fn column_values(c: &dyn Array) -> Vec<Value> {
    use arrow::compute::cast;
    let dt = c.data_type();
    let get = |i: usize, v: Value| if c.is_null(i) { Value::Null } else { v };
    if dt.is_integer() {
        let a = cast(&arrow::array::make_array(c.to_data()), &DataType::Int64).unwrap();
        let a = a.as_primitive::<Int64Type>();
        (0..a.len())
            .map(|i| get(i, Value::from(a.value(i))))
            .collect()
    } else if dt.is_floating() || matches!(dt, DataType::Decimal128(..)) {
        let a = cast(&arrow::array::make_array(c.to_data()), &DataType::Float64).unwrap();
        let a = a.as_primitive::<Float64Type>();
        (0..a.len())
            .map(|i| {
                get(
                    i,
                    serde_json::Number::from_f64(a.value(i))
                        .map_or(Value::String(a.value(i).to_string()), Value::Number),
                )
            })
            .collect()
    } else if dt == &DataType::Boolean {
        let a = c.as_boolean();
        (0..a.len())
            .map(|i| get(i, Value::Bool(a.value(i))))
            .collect()
    } else {
        let a = cast(&arrow::array::make_array(c.to_data()), &DataType::Utf8).unwrap();
        let a = a.as_string::<i32>();
        (0..a.len())
            .map(|i| get(i, Value::from(a.value(i))))
            .collect()
    }
}

const REL_TOL: f64 = 1e-9;
const ABS_TOL: f64 = 1e-12;

fn same(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() <= ABS_TOL + REL_TOL * x.abs().max(y.abs()),
        _ => a == b,
    }
}

/// How two consecutive values of a sort key compare.
enum KeyOrder {
    /// Equal: the next key decides.
    Tie,
    /// Floats equal within tolerance but not bit for bit: the engine saw distinct values, so
    /// the later keys are free (an aggregate's last bits are summation order).
    NearTie,
    In(std::cmp::Ordering),
}

/// Compares two key values in the key's direction. NULLs sort last.
fn order(a: &Value, b: &Value, desc: bool) -> KeyOrder {
    use std::cmp::Ordering::*;
    if a == b {
        return KeyOrder::Tie;
    }
    if same(a, b) {
        return KeyOrder::NearTie;
    }
    let o = match (a, b) {
        (Value::Null, _) => return KeyOrder::In(Greater),
        (_, Value::Null) => return KeyOrder::In(Less),
        _ => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => x.total_cmp(&y),
            _ => a.as_str().unwrap_or("").cmp(b.as_str().unwrap_or("")),
        },
    };
    KeyOrder::In(if desc { o.reverse() } else { o })
}

fn key_of(row: &[Value], keys: &[(usize, bool)]) -> Vec<Value> {
    keys.iter().map(|&(i, _)| row[i].clone()).collect()
}

fn same_row(a: &[Value], b: &[Value]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y))
}

/// Whether the two row lists hold the same rows, in any order.
fn same_multiset(a: &[&[Value]], b: &[&[Value]]) -> Result<(), String> {
    let mut used = vec![false; b.len()];
    for r in a {
        match (0..b.len()).find(|&j| !used[j] && same_row(r, b[j])) {
            Some(j) => used[j] = true,
            None => return Err(format!("saerl's row {r:?} is not in DuckDB's result")),
        }
    }
    Ok(())
}

/// The check for one statement: `None` when saerl's result is right.
fn check(case: &Case, ours: &[Vec<Value>], duck: &[Vec<Value>]) -> Option<String> {
    if ours.len() != duck.len() {
        return Some(format!("{} rows, DuckDB {}", ours.len(), duck.len()));
    }
    for w in ours.windows(2) {
        for &(i, desc) in &case.keys {
            match order(&w[0][i], &w[1][i], desc) {
                KeyOrder::Tie => continue,
                KeyOrder::NearTie | KeyOrder::In(std::cmp::Ordering::Less) => break,
                KeyOrder::In(_) => {
                    return Some(format!(
                        "rows out of ORDER BY order: {:?} before {:?}",
                        w[0], w[1]
                    ))
                }
            }
        }
    }
    let (mut a, mut b): (Vec<&[Value]>, Vec<&[Value]>) = (
        ours.iter().map(Vec::as_slice).collect(),
        duck.iter().map(Vec::as_slice).collect(),
    );
    if case.limited {
        // Under LIMIT the rows tied with the last one may differ; the keys may not.
        for (x, y) in ours.iter().zip(duck) {
            let (kx, ky) = (key_of(x, &case.keys), key_of(y, &case.keys));
            // Keys after one whose value is only equal within tolerance may differ.
            let n = kx
                .iter()
                .zip(&ky)
                .position(|(p, q)| p != q && same(p, q))
                .map_or(kx.len(), |i| i + 1);
            if !same_row(&kx[..n], &ky[..n]) {
                return Some(format!("ORDER BY keys differ: saerl {kx:?}, DuckDB {ky:?}"));
            }
        }
        if let Some(last) = ours.last() {
            let tail = key_of(last, &case.keys);
            a.retain(|r| !same_row(&key_of(r, &case.keys), &tail));
            b.retain(|r| !same_row(&key_of(r, &case.keys), &tail));
        }
    }
    same_multiset(&a, &b).err()
}

fn duckdb(lake: &Path, tables: &[&str], statements: &[String]) -> Vec<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/duckdb_run.py");
    let mut child = Command::new(crate::shared::test_python())
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting DuckDB");
    let job = serde_json::json!({ "lake": lake, "tables": tables, "statements": statements });
    serde_json::to_writer(child.stdin.take().unwrap(), &job).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "DuckDB runner failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice::<Vec<Value>>(&o.stdout).unwrap()
}

#[test]
fn saerl_answers_as_duckdb_does_on_the_same_files() {
    let seed: u64 = std::env::var("SAERL_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(21);
    let lake = fixture_lake();
    let ctx = session(lake);
    let pools = Pools {
        chains: pool(&ctx, "SELECT DISTINCT chain FROM features ORDER BY chain"),
        layers: pool(&ctx, "SELECT DISTINCT layer FROM features ORDER BY layer"),
        steps: pool(&ctx, "SELECT DISTINCT step FROM stages ORDER BY step"),
    };
    let cases = generate(&mut Rng(seed), &pools, 300);
    let tables = [
        "stages",
        "saes",
        "features",
        "activations",
        "docs",
        "vocab",
        "feature_stats",
        "top_examples",
    ];
    let duck = duckdb(
        lake,
        &tables,
        &cases.iter().map(|c| c.sql.clone()).collect::<Vec<_>>(),
    );
    let mut failures = Vec::new();
    let mut non_empty = 0;
    for (case, d) in cases.iter().zip(&duck) {
        if let Some(e) = d.get("error") {
            failures.push(format!("DuckDB failed: {e}\n  {}", case.sql));
            continue;
        }
        let theirs: Vec<Vec<Value>> = d["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_array().unwrap().clone())
            .collect();
        let ours = match saerl::sql::blocking::run_sql(&ctx, &case.sql) {
            Ok(b) => rows_of(&b),
            Err(e) => {
                failures.push(format!("saerl failed: {e:#}\n  {}", case.sql));
                continue;
            }
        };
        non_empty += usize::from(!ours.is_empty());
        if let Some(why) = check(case, &ours, &theirs) {
            failures.push(format!("{why}\n  {}", case.sql));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} statements differ from DuckDB (SAERL_DIFF_SEED={seed}):\n{}",
        failures.len(),
        cases.len(),
        failures
            .iter()
            .take(8)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The templates must exercise real data, not agree on empty results.
    assert!(
        non_empty * 10 >= cases.len() * 9,
        "only {non_empty} of {} results have rows",
        cases.len()
    );
}

#[test]
fn the_comparison_catches_wrong_order_and_wrong_rows() {
    let row = |v: &[f64]| v.iter().map(|&x| Value::from(x)).collect::<Vec<_>>();
    let case = Case {
        sql: String::new(),
        keys: vec![(0, false), (1, true)],
        limited: false,
    };
    let good = vec![row(&[1.0, 9.0]), row(&[1.0, 2.0]), row(&[2.0, 5.0])];
    let shuffled = vec![good[2].clone(), good[0].clone(), good[1].clone()];
    assert!(
        check(&case, &good, &shuffled).is_none(),
        "ties and order are free in DuckDB's result"
    );
    let swapped = vec![good[1].clone(), good[0].clone(), good[2].clone()];
    assert!(
        check(&case, &swapped, &good).is_some(),
        "a DESC key out of order is caught"
    );
    let limited = Case {
        limited: true,
        ..case
    };
    let other = vec![row(&[1.0, 9.0]), row(&[1.0, 3.0]), row(&[2.0, 5.0])];
    assert!(
        check(&limited, &other, &good).is_some(),
        "other rows under LIMIT are caught"
    );
    // Rows tied with the last one under LIMIT may differ beyond the keys.
    let a = vec![row(&[1.0, 9.0, 0.0])];
    let b = vec![row(&[1.0, 9.0, 1.0])];
    let lim = Case {
        sql: String::new(),
        keys: vec![(0, false), (1, true)],
        limited: true,
    };
    assert!(check(&lim, &a, &b).is_none());
    assert!(same(&Value::from(1.0), &Value::from(1.0 + 1e-12)));
    assert!(!same(&Value::from(1.0), &Value::from(1.0001)));
}
