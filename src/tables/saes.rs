//! The `saes` and `features` tables: an SAE is one `saes` row plus one `features` row per feature.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeListArray, Float32Array, Int32Array, ListArray, RecordBatch,
    StringArray,
};
use arrow::datatypes::{DataType, Field, Float32Type, Float64Type, Int32Type};

use crate::lake::{Lake, PartitionKey, Table, Txn};
use crate::sae::{Activation, Sae, SaeMeta, Tensors};

fn fixed(values: &[f32], d: usize) -> Result<ArrayRef> {
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    Ok(Arc::new(FixedSizeListArray::try_new(
        item,
        d as i32,
        Arc::new(Float32Array::from(values.to_vec())),
        None,
    )?))
}

fn single_list(values: &[f32]) -> ArrayRef {
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    Arc::new(ListArray::new(
        item,
        arrow::buffer::OffsetBuffer::from_lengths([values.len()]),
        Arc::new(Float32Array::from(values.to_vec())),
        None,
    ))
}

/// The `saes` row and `features` rows of one SAE, in the lake's schemas.
pub fn sae_batches(sae: &Sae) -> Result<(RecordBatch, RecordBatch)> {
    let d = sae.d_model;
    let m = &sae.meta;
    let saes = RecordBatch::try_new(
        Table::Saes.file_schema(None),
        vec![
            Arc::new(Int32Array::from(vec![d as i32])),
            Arc::new(Int32Array::from(vec![sae.d_sae as i32])),
            Arc::new(StringArray::from(vec![sae.activation.name()])),
            Arc::new(StringArray::from(vec![m.init_from_stage.clone()])),
            Arc::new(Int32Array::from(vec![m.best_epoch])),
            Arc::new(arrow::array::Float64Array::from(vec![m.best_val_mse])),
            single_list(&sae.b_pre),
            single_list(&sae.b_dec),
            Arc::new(StringArray::from(vec![m.source.clone()])),
        ],
    )?;
    let features = RecordBatch::try_new(
        Table::Features.file_schema(Some(d as i32)),
        vec![
            Arc::new(Int32Array::from_iter_values(0..sae.d_sae as i32)),
            fixed(&sae.w_enc, d)?,
            Arc::new(Float32Array::from(sae.b_enc.clone())),
            fixed(&sae.w_dec, d)?,
        ],
    )?;
    Ok((saes, features))
}

/// Stages an SAE's two partitions in a transaction.
pub fn write_sae(txn: &mut Txn, key: &PartitionKey, sae: &Sae) -> Result<()> {
    sae.validate().with_context(|| format!("SAE {key}"))?;
    if key.k != Some(sae.k as i32) {
        bail!(
            "SAE {key}: partition k does not match the SAE's k = {}",
            sae.k
        );
    }
    txn.check_free(Table::Saes, key)?;
    txn.check_free(Table::Features, key)?;
    let (saes, features) = sae_batches(sae)?;
    txn.write(Table::Saes, key, &[saes])?;
    txn.write(Table::Features, key, &[features])?;
    Ok(())
}

fn f32_values(a: &dyn Array) -> Result<Vec<f32>> {
    match a.data_type() {
        DataType::Float32 => Ok(a.as_primitive::<Float32Type>().values().to_vec()),
        DataType::Float64 => Ok(a
            .as_primitive::<Float64Type>()
            .values()
            .iter()
            .map(|&v| v as f32)
            .collect()),
        t => bail!("expected float values, got {t}"),
    }
}

/// Concatenated values of a vector column (List or FixedSizeList) across batches.
fn vectors(batches: &[RecordBatch], col: &str) -> Result<Vec<f32>> {
    let mut out = Vec::new();
    for b in batches {
        let a = b
            .column_by_name(col)
            .with_context(|| format!("column {col} missing"))?;
        match a.data_type() {
            DataType::FixedSizeList(_, _) => {
                out.extend(f32_values(a.as_fixed_size_list().values())?)
            }
            DataType::List(_) => {
                let l = a.as_list::<i32>();
                let (start, end) = (
                    l.value_offsets()[0] as usize,
                    l.value_offsets()[l.len()] as usize,
                );
                out.extend(f32_values(&l.values().slice(start, end - start))?);
            }
            t => bail!("column {col} has type {t}, expected a float list"),
        }
    }
    Ok(out)
}

fn column<'a>(b: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef> {
    b.column_by_name(name)
        .with_context(|| format!("column {name} missing"))
}

/// Loads an SAE back from the lake.
pub fn read_sae(lake: &Lake, key: &PartitionKey) -> Result<Sae> {
    let ctx = || format!("reading SAE {key} from {}", lake.location());
    let saes = lake.read_partition(Table::Saes, key).with_context(ctx)?;
    let row = saes
        .first()
        .filter(|b| b.num_rows() == 1)
        .with_context(|| format!("{}: expected one saes row", ctx()))?;
    let int = |name: &str| -> Result<Option<i32>> {
        let a = column(row, name)?.as_primitive::<Int32Type>();
        Ok(a.is_valid(0).then(|| a.value(0)))
    };
    let text = |name: &str| -> Result<Option<String>> {
        let a = column(row, name)?.as_string::<i32>();
        Ok(a.is_valid(0).then(|| a.value(0).to_string()))
    };
    let best_val = column(row, "best_val_mse")?.as_primitive::<Float64Type>();
    let features = lake
        .read_partition(Table::Features, key)
        .with_context(ctx)?;
    let mut b_enc = Vec::new();
    let mut order = Vec::new();
    for b in &features {
        b_enc.extend(f32_values(column(b, "b_enc")?.as_ref())?);
        order.extend(
            column(b, "feature")?
                .as_primitive::<Int32Type>()
                .values()
                .iter()
                .copied(),
        );
    }
    if order.iter().enumerate().any(|(i, &f)| f as usize != i) {
        bail!("{}: features are not stored in order 0..d_sae", ctx());
    }
    let sae = Sae {
        d_model: int("d_model")?.context("d_model is NULL")? as usize,
        d_sae: int("d_sae")?.context("d_sae is NULL")? as usize,
        k: key.k.context("SAE key without k")? as usize,
        activation: Activation::parse(&text("activation")?.unwrap_or_else(|| "topk".into()))?,
        tensors: Tensors {
            b_pre: vectors(std::slice::from_ref(row), "b_pre")?,
            w_enc: vectors(&features, "w_enc")?,
            b_enc,
            w_dec: vectors(&features, "w_dec")?,
            b_dec: vectors(std::slice::from_ref(row), "b_dec")?,
        },
        meta: SaeMeta {
            init_from_stage: text("init_from_stage")?,
            best_epoch: int("best_epoch")?,
            best_val_mse: best_val.is_valid(0).then(|| best_val.value(0)),
            source: text("source")?,
        },
    };
    sae.validate().with_context(ctx)?;
    Ok(sae)
}
