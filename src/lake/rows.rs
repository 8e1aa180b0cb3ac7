//! Record batches of the tables `saerl ingest` fills, in the lake's schemas.

use std::sync::Arc;

use anyhow::Result;
use arrow::array::{
    FixedSizeListArray, Float32Array, Int32Array, Int64Array, RecordBatch, StringArray,
};
use arrow::datatypes::{DataType, Field};

use super::Table;
use crate::data::Doc;

/// Activation rows: `x` holds `doc_id.len()` vectors of width `d`, row-major.
pub fn activation_batch(
    doc_id: Vec<i64>,
    pos: Vec<i32>,
    token_id: Vec<i32>,
    val: &[bool],
    x: Vec<f32>,
    d: usize,
) -> Result<RecordBatch> {
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let split = StringArray::from_iter_values(val.iter().map(|&v| if v { "val" } else { "train" }));
    Ok(RecordBatch::try_new(
        Table::Activations.file_schema(Some(d as i32)),
        vec![
            Arc::new(Int64Array::from(doc_id)),
            Arc::new(Int32Array::from(pos)),
            Arc::new(Int32Array::from(token_id)),
            Arc::new(split),
            Arc::new(FixedSizeListArray::try_new(
                item,
                d as i32,
                Arc::new(Float32Array::from(x)),
                None,
            )?),
        ],
    )?)
}

pub fn docs_batch(docs: &[Doc], dataset_split: &str) -> Result<RecordBatch> {
    Ok(RecordBatch::try_new(
        Table::Docs.file_schema(None),
        vec![
            Arc::new(Int64Array::from_iter_values(docs.iter().map(|d| d.doc_id))),
            Arc::new(StringArray::from_iter_values(
                docs.iter().map(|_| dataset_split),
            )),
            Arc::new(StringArray::from_iter_values(
                docs.iter().map(|d| d.question.as_str()),
            )),
            Arc::new(StringArray::from(
                docs.iter().map(|d| d.answer.as_deref()).collect::<Vec<_>>(),
            )),
        ],
    )?)
}

pub fn vocab_batch(tokens: &[(u32, String)]) -> Result<RecordBatch> {
    Ok(RecordBatch::try_new(
        Table::Vocab.file_schema(None),
        vec![
            Arc::new(Int32Array::from_iter_values(
                tokens.iter().map(|t| t.0 as i32),
            )),
            Arc::new(StringArray::from_iter_values(
                tokens.iter().map(|t| t.1.as_str()),
            )),
        ],
    )?)
}

/// One `train_log` row per epoch.
pub fn train_log_batch(epochs: &[crate::sae::train::EpochLog]) -> Result<RecordBatch> {
    use arrow::array::Float64Array;
    Ok(RecordBatch::try_new(
        Table::TrainLog.file_schema(None),
        vec![
            Arc::new(Int32Array::from_iter_values(1..=epochs.len() as i32)),
            Arc::new(Float64Array::from_iter_values(
                epochs.iter().map(|e| e.train_mse),
            )),
            Arc::new(Float64Array::from(
                epochs.iter().map(|e| Some(e.val_mse)).collect::<Vec<_>>(),
            )),
            Arc::new(Float64Array::from(
                epochs.iter().map(|e| e.aux_loss).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from_iter_values(
                epochs.iter().map(|e| e.n_dead as i64),
            )),
            Arc::new(Float64Array::from_iter_values(epochs.iter().map(|e| e.lr))),
            Arc::new(Float64Array::from_iter_values(
                epochs.iter().map(|e| e.seconds),
            )),
        ],
    )?)
}
