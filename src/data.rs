//! Prompt data (GSM8k-style JSON lines) and the train/val split of activation rows.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::rng::permutation;

#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    pub doc_id: i64,
    pub question: String,
    pub answer: Option<String>,
}

/// The GSM8k sample built into saerl (`data/gsm8k-sample/`, MIT): the demo's and the
/// benchmarks' default, so they run with nothing beside the binary.
pub const SAMPLE_TRAIN: &str = include_str!("../data/gsm8k-sample/train.jsonl");
pub const SAMPLE_TEST: &str = include_str!("../data/gsm8k-sample/test.jsonl");

/// Reads questions from GSM8k-style JSON lines (`{"question": ..., "answer": ...}`) or from a
/// Hugging Face Parquet file (columns `question`, `answer`); `limit` keeps the first N.
pub fn read_questions(path: &Path, limit: Option<usize>) -> Result<Vec<Doc>> {
    let docs = if path.extension().is_some_and(|e| e == "parquet") {
        parquet_questions(path, limit)?
    } else {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        jsonl_questions(&bytes, &path.display().to_string(), limit)?
    };
    if docs.is_empty() {
        bail!("{} holds no questions", path.display());
    }
    Ok(docs)
}

/// The questions of the built-in sample (`SAMPLE_TRAIN` or `SAMPLE_TEST`).
pub fn sample_questions(text: &str, limit: Option<usize>) -> Vec<Doc> {
    jsonl_questions(text.as_bytes(), "the built-in GSM8k sample", limit)
        .expect("the built-in sample is valid JSON lines")
}

fn jsonl_questions(bytes: &[u8], name: &str, limit: Option<usize>) -> Result<Vec<Doc>> {
    let mut docs = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if limit.is_some_and(|n| docs.len() >= n) {
            break;
        }
        let line = std::str::from_utf8(line)
            .with_context(|| format!("{name} line {}: not UTF-8 text", i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{name} line {}: not a JSON object", i + 1))?;
        let question = v["question"]
            .as_str()
            .with_context(|| format!("{name} line {}: no \"question\" string", i + 1))?;
        docs.push(Doc {
            doc_id: docs.len() as i64,
            question: question.to_string(),
            answer: v["answer"].as_str().map(str::to_string),
        });
    }
    Ok(docs)
}

/// The `question` (and, if present, `answer`) column of a Parquet file, in row order.
fn parquet_questions(path: &Path, limit: Option<usize>) -> Result<Vec<Doc>> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::DataType;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let fix = || {
        format!(
            "{} is not a readable Parquet file with a `question` column",
            path.display()
        )
    };
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).with_context(fix)?;
    let schema = builder.schema().clone();
    let wanted: Vec<usize> = ["question", "answer"]
        .iter()
        .filter_map(|c| schema.index_of(c).ok())
        .collect();
    if schema.index_of("question").is_err() {
        bail!(
            "{}: no `question` column (columns: {})",
            path.display(),
            schema
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let mask = parquet::arrow::ProjectionMask::roots(builder.parquet_schema(), wanted);
    let mut docs = Vec::new();
    for batch in builder.with_projection(mask).build().with_context(fix)? {
        let batch = batch.with_context(fix)?;
        let text = |name: &str| -> Result<Option<arrow::array::StringArray>> {
            let Some(col) = batch.column_by_name(name) else {
                return Ok(None);
            };
            let col = arrow::compute::cast(col, &DataType::Utf8)
                .with_context(|| format!("{}: column {name} is not text", path.display()))?;
            Ok(Some(col.as_string::<i32>().clone()))
        };
        let q = text("question")?.with_context(|| {
            format!(
                "{}: no `question` column (GSM8k files have `question` and `answer`)",
                path.display()
            )
        })?;
        let a = text("answer")?;
        for i in 0..batch.num_rows() {
            if limit.is_some_and(|n| docs.len() >= n) {
                return Ok(docs);
            }
            if q.is_null(i) {
                bail!("{}: row {} has no question", path.display(), docs.len());
            }
            docs.push(Doc {
                doc_id: docs.len() as i64,
                question: q.value(i).to_string(),
                answer: a
                    .as_ref()
                    .filter(|a| a.is_valid(i))
                    .map(|a| a.value(i).to_string()),
            });
        }
    }
    Ok(docs)
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum SplitKind {
    /// A seeded random permutation of rows.
    Random,
    /// The last fraction of rows.
    Tail,
}

/// Which of `n` rows are validation rows: floor(frac·n) of them, either the first
/// floor(frac·n) entries of the seeded permutation, or the last rows.
pub fn val_rows(n: usize, frac: f64, kind: SplitKind, seed: u64) -> Result<Vec<bool>> {
    if !(0.0..=1.0).contains(&frac) {
        bail!("--val-frac must be in [0, 1], got {frac}");
    }
    let n_val = (frac * n as f64).floor() as usize;
    let mut val = vec![false; n];
    match kind {
        SplitKind::Tail => val[n - n_val..].iter_mut().for_each(|v| *v = true),
        SplitKind::Random => permutation(n, seed)
            .into_iter()
            .take(n_val)
            .for_each(|i| val[i] = true),
    }
    Ok(val)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_sizes_follow_the_study() {
        let v = val_rows(445_744, 0.2, SplitKind::Random, 0).unwrap();
        assert_eq!(v.iter().filter(|&&x| x).count(), 89_148);
        let t = val_rows(10, 0.1, SplitKind::Tail, 0).unwrap();
        assert_eq!(t, [vec![false; 9], vec![true]].concat());
    }
}
