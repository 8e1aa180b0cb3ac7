//! Shared helpers: fixture paths, running the CLI, and lake snapshots.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use std::sync::Arc;

use arrow::array::{Array, AsArray, Float32Array, Int32Array, ListArray, RecordBatch};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Float32Type, Int32Type, Schema};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use saerl::lake::Lake;

pub use crate::shared::{fixtures, pt_files, python_json, read_json as json, snapshot};

pub fn saerl(lake: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_saerl"))
        .arg("--lake")
        .arg(lake)
        .args(args)
        .env("SAERL_HISTORY", lake.with_extension("history"))
        .output()
        .expect("running saerl")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs saerl and asserts success.
pub fn ok(lake: &Path, args: &[&str]) -> String {
    let o = saerl(lake, args);
    assert!(o.status.success(), "saerl {args:?} failed:\n{}", stderr(&o));
    stdout(&o)
}

/// A fresh lake with the whole `sae-pt` fixture tree imported through the CLI.
pub fn imported_lake() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    ok(
        &lake,
        &["import", "pt", fixtures().join("sae-pt").to_str().unwrap()],
    );
    (dir, lake)
}

/// A lake with every base table filled from the fixtures, built once per run of this test
/// binary (read it; copy it with `fixture_lake_copy` to change it): the `sae-pt` tree (stages,
/// saes, features), and the tiny model's activations, docs and vocab with its SAE's statistics
/// (feature_stats, top_examples).
pub fn fixture_lake() -> &'static Path {
    // Built once, read by every caller: each of them is a fixture reader.
    fixtures();
    static LAKE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    LAKE.get_or_init(|| {
        let lake = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("fixture-lake-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&lake);
        let l = lake.as_path();
        let fx = fixtures();
        ok(l, &["import", "pt", fx.join("sae-pt").to_str().unwrap()]);
        let tiny = fx.join("tiny-qwen2");
        let layer = json(&tiny.join("sae_eval.json"))["layer"]
            .as_i64()
            .unwrap()
            .to_string();
        let pt = tiny.join(format!("sae_layer{layer}.pt"));
        ok(
            l,
            &[
                "import",
                "pt",
                pt.to_str().unwrap(),
                "--chain",
                "tiny",
                "--stage",
                "instruct_base",
                "--layer",
                &layer,
            ],
        );
        let data = fx.join("../data/gsm8k/train.jsonl");
        ok(
            l,
            &[
                "ingest",
                "--chain",
                "tiny",
                "--stage",
                "instruct_base",
                "--model",
                tiny.to_str().unwrap(),
                "--data",
                data.to_str().unwrap(),
                "--layers",
                &layer,
                "--limit",
                "48",
                "--max-len",
                "64",
            ],
        );
        // Every chain's page tables (the sae-pt chains have no activations: weights only).
        let chains = ok(
            l,
            &[
                "sql",
                "--format",
                "csv",
                "-c",
                "SELECT DISTINCT chain FROM saes ORDER BY chain",
            ],
        );
        for chain in chains.lines().skip(1) {
            ok(l, &["stats", "--chain", chain]);
        }
        lake
    })
}

/// A copy of `fixture_lake` to change.
pub fn fixture_lake_copy() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    crate::shared::copy_dir(fixture_lake(), &lake);
    (dir, lake)
}

pub fn session(lake: &Path) -> SessionContext {
    saerl::sql::blocking::open_session(&Lake::open(lake).unwrap()).unwrap()
}

/// numpy's default (linear) quantile of unsorted values.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let pos = q * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

pub fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

pub fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let (ma, mb) = (mean(a), mean(b));
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

pub fn assert_close(what: &str, got: f64, want: f64, tol: f64) {
    assert!(
        (got - want).abs() <= tol,
        "{what}: got {got}, expected {want} (tolerance {tol})"
    );
}

/// A query's rows as column name → displayed value.
pub fn rows(ctx: &SessionContext, sql: &str) -> Vec<std::collections::HashMap<String, String>> {
    let batches =
        saerl::sql::blocking::run_sql(ctx, sql).unwrap_or_else(|e| panic!("{sql}: {e:#}"));
    let mut out = Vec::new();
    for b in &batches {
        for i in 0..b.num_rows() {
            out.push(
                b.schema()
                    .fields()
                    .iter()
                    .zip(b.columns())
                    .map(|(f, c)| {
                        let v = arrow::util::display::array_value_to_string(c, i).unwrap();
                        (f.name().clone(), v)
                    })
                    .collect(),
            );
        }
    }
    out
}

/// The text of a saved query.
pub fn saved_query(name: &str) -> &'static str {
    saerl::sql::saved::QUERIES
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no saved query {name}"))
        .1
}

/// The fixture's reference transitions: (chain, layer, k, from, to) → (dec cosines, enc cosines).
pub type Cosines =
    std::collections::BTreeMap<(String, i64, i64, String, String), (Vec<f64>, Vec<f64>)>;

pub fn reference_cosines() -> Cosines {
    let e = json(&fixtures().join("sae-pt/expected.json"));
    let floats = |v: &serde_json::Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    e["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                (
                    t["chain"].as_str().unwrap().to_string(),
                    t["layer"].as_i64().unwrap(),
                    t["k"].as_i64().unwrap(),
                    t["from"].as_str().unwrap().to_string(),
                    t["to"].as_str().unwrap().to_string(),
                ),
                (floats(&t["decoder_cos"]), floats(&t["encoder_cos"])),
            )
        })
        .collect()
}

/// Rows of a probe file's tensor `key` as a table `probe(row, x)`, with their count, width and
/// values.
pub fn probe_table(file: &Path, key: &str) -> (MemTable, usize, usize, Vec<f32>) {
    let bytes = std::fs::read(file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let x = st.tensor(key).unwrap();
    let (p, d) = (x.shape()[0], x.shape()[1]);
    assert_eq!(x.dtype(), safetensors::Dtype::F32);
    let values: Vec<f32> = x
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let list = ListArray::new(
        item.clone(),
        OffsetBuffer::from_lengths(vec![d; p]),
        Arc::new(Float32Array::from(values.clone())),
        None,
    );
    let schema = Arc::new(Schema::new(vec![
        Field::new("row", DataType::Int32, false),
        Field::new("x", DataType::List(item), false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int32Array::from_iter_values(0..p as i32)),
            Arc::new(list),
        ],
    )
    .unwrap();
    (
        MemTable::try_new(schema, vec![vec![batch]]).unwrap(),
        p,
        d,
        values,
    )
}

/// `topk_encode` of every row of the session's `probe` table: (features, values) per row.
pub fn encode_probe(
    ctx: &SessionContext,
    chain: &str,
    stage: &str,
    layer: i64,
    k: i64,
) -> Vec<(Vec<i32>, Vec<f32>)> {
    let sql = format!(
        "SELECT topk_encode(x, '{chain}', '{stage}', {layer}, {k}) AS z FROM probe ORDER BY row"
    );
    let batches = saerl::sql::blocking::run_sql(ctx, &sql).unwrap();
    let mut rows = Vec::new();
    for b in &batches {
        let lists = b.column(0).as_list::<i32>();
        for i in 0..lists.len() {
            let s = lists.value(i);
            let s = s.as_struct();
            let feats: Vec<i32> = s.column(0).as_primitive::<Int32Type>().values().to_vec();
            let vals: Vec<f32> = s.column(1).as_primitive::<Float32Type>().values().to_vec();
            rows.push((feats, vals));
        }
    }
    rows
}
