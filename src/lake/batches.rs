//! Record batches of the lake tables whose rows are plain values (activations, vocabulary).

use std::sync::Arc;

use anyhow::Result;
use arrow::array::{
    FixedSizeListArray, Float32Array, Int32Array, Int64Array, RecordBatch, StringArray,
};
use arrow::datatypes::{DataType, Field};

use super::schema::Table;

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

/// The `vocab` rows of one stage: (token id, the tokenizer's symbol, the text a person reads).
pub fn vocab_batch(tokens: &[(u32, String, String)]) -> Result<RecordBatch> {
    Ok(RecordBatch::try_new(
        Table::Vocab.file_schema(None),
        vec![
            Arc::new(Int32Array::from_iter_values(
                tokens.iter().map(|t| t.0 as i32),
            )),
            Arc::new(StringArray::from_iter_values(
                tokens.iter().map(|t| t.1.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                tokens.iter().map(|t| t.2.as_str()),
            )),
        ],
    )?)
}
