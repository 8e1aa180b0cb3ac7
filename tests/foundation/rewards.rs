//! Both GSM8k reward UDFs against verl's scorer and the study's flexible rule on every row of
//! `gsm8k-scores.jsonl`.

use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Float64Type, Schema};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use saerl::sql::blocking::run_sql;

use crate::common::fixtures;

#[test]
fn reward_udfs_agree_with_every_reference_row() {
    let text = std::fs::read_to_string(fixtures().join("gsm8k-scores.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!rows.is_empty());
    let col = |k: &str| {
        StringArray::from_iter_values(rows.iter().map(|r| r[k].as_str().unwrap().to_string()))
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new("response", DataType::Utf8, false),
        Field::new("ground_truth", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(col("response")), Arc::new(col("ground_truth"))],
    )
    .unwrap();
    let ctx = SessionContext::new();
    saerl_udfs::register_all(&ctx, Arc::new(NoSaes));
    ctx.register_table(
        "r",
        Arc::new(MemTable::try_new(schema, vec![vec![batch]]).unwrap()),
    )
    .unwrap();
    let out = run_sql(&ctx, "SELECT gsm8k_score_strict(response, ground_truth), gsm8k_score_flexible(response, ground_truth) FROM r")
        .unwrap();
    let (mut strict, mut flexible) = (Vec::new(), Vec::new());
    for b in &out {
        strict.extend(
            b.column(0)
                .as_primitive::<Float64Type>()
                .values()
                .iter()
                .copied(),
        );
        flexible.extend(
            b.column(1)
                .as_primitive::<Float64Type>()
                .values()
                .iter()
                .copied(),
        );
    }
    assert_eq!(strict.len(), rows.len());
    let mut bad = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let (ws, wf) = (
            r["strict"].as_f64().unwrap(),
            r["flexible"].as_f64().unwrap(),
        );
        if strict[i] != ws || flexible[i] != wf {
            bad.push(format!(
                "row {i}: strict {} (want {ws}), flexible {} (want {wf}): {:?} / {:?}",
                strict[i], flexible[i], r["response"], r["ground_truth"]
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} rows disagree:\n{}",
        bad.len(),
        rows.len(),
        bad.iter().take(10).cloned().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn answer_may_be_a_full_gsm8k_solution() {
    assert_eq!(
        saerl_udfs::score_flexible("so 1,234 apples", "they have\n#### 1,234"),
        1.0
    );
    assert_eq!(
        saerl_udfs::score_strict("#### 72", "Natalia sold 48/2 = 24...\n#### 72"),
        1.0
    );
    assert_eq!(saerl_udfs::score_strict("#### 72", "73"), 0.0);
}

#[derive(Debug)]
pub struct NoSaes;

impl saerl_udfs::SaeSource for NoSaes {
    fn encoder(&self, key: &saerl_udfs::SaeKey) -> Result<Arc<dyn saerl_udfs::Encoder>, String> {
        Err(format!("no SAE {key:?} in this test"))
    }
}
