//! `best_match([chain [, layer [, k]]])`: a table function giving, for every consecutive-stage
//! transition a → b (of that chain, layer and k when given), each feature of a's best-matching decoder column in
//! b (max cosine over all of b's columns, and its index) next to the index-aligned cosine, and
//! renaming_gap = best − aligned (DESIGN.md, "best match"). The d_sae × d_sae cosines are GEMMs
//! over unit-normalised decoders, a block of features at a time; plain SQL would need a
//! d_sae² cross join per transition.

use std::sync::Arc;

use arrow::array::{Float64Array, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{plan_err, Result, ScalarValue};
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::Expr;

use crate::kernels::{for_each_cosine_row, unit_rows};
use crate::lake::{Lake, Transition};
use crate::tables::read_sae;

#[derive(Debug)]
pub struct BestMatch {
    pub lake: Lake,
    /// Where the cosine GEMMs run (`SAERL_DEVICE`).
    pub device: candle_core::Device,
    /// The session's memory pool: each transition's two SAEs are reserved in it.
    pub pool: std::sync::Arc<dyn datafusion::execution::memory_pool::MemoryPool>,
}

pub(super) fn literal(e: &Expr) -> Option<&ScalarValue> {
    match e {
        Expr::Literal(v, _) => Some(v),
        _ => None,
    }
}

pub(super) fn int_arg(e: Option<&Expr>) -> Option<i64> {
    match literal(e?)? {
        ScalarValue::Int64(Some(v)) => Some(*v),
        ScalarValue::Int32(Some(v)) => Some(*v as i64),
        _ => None,
    }
}

const BLOCK: usize = 512;

fn unit(w: &[f32], d: usize) -> Vec<f32> {
    let mut w = w.to_vec();
    unit_rows(&mut w, d);
    w
}

/// `best_matches` on `dev`: the same unit-norm columns, each block's cosines a device GEMM and
/// its maxima reduced there; only the three numbers per column come back.
pub fn best_matches_on(
    a: &[f32],
    b: &[f32],
    d: usize,
    dev: &candle_core::Device,
) -> candle_core::Result<Vec<(usize, f32, f32)>> {
    use candle_core::Tensor;
    if dev.is_cpu() {
        return Ok(best_matches(a, b, d));
    }
    let (na, nb) = (a.len() / d, b.len() / d);
    let ta = Tensor::from_vec(unit(a, d), (na, d), dev)?;
    let tb = Tensor::from_vec(unit(b, d), (nb, d), dev)?;
    let mut out = Vec::with_capacity(na);
    for start in (0..na).step_by(BLOCK) {
        let m = BLOCK.min(na - start);
        let c = ta.narrow(0, start, m)?.matmul(&tb.t()?)?;
        let best = c.max_keepdim(1)?.flatten_all()?.to_vec1::<f32>()?;
        let arg = c.argmax_keepdim(1)?.flatten_all()?.to_vec1::<u32>()?;
        // Feature i's cosine with feature i of b, where b has one.
        let cols: Vec<u32> = (0..m).map(|r| (start + r).min(nb - 1) as u32).collect();
        let diag = c.gather(&Tensor::from_vec(cols, (m, 1), dev)?, 1)?;
        let diag = diag.flatten_all()?.to_vec1::<f32>()?;
        for (r, (&v, &j)) in best.iter().zip(&arg).enumerate() {
            let aligned = if start + r < nb { diag[r] } else { f32::NAN };
            out.push((j as usize, v, aligned));
        }
    }
    Ok(out)
}

/// (best index, best cosine, aligned cosine) for each column of `a` against all of `b`.
pub fn best_matches(a: &[f32], b: &[f32], d: usize) -> Vec<(usize, f32, f32)> {
    let nb = b.len() / d;
    let mut out = Vec::with_capacity(a.len() / d);
    for_each_cosine_row(a, b, d, |i, row| {
        let (mut best, mut arg) = (f32::NEG_INFINITY, 0);
        for (j, &v) in row.iter().enumerate() {
            if v > best {
                (best, arg) = (v, j);
            }
        }
        out.push((arg, best, if i < nb { row[i] } else { f32::NAN }));
    });
    out
}

impl TableFunctionImpl for BestMatch {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let e = args.exprs();
        let usage = "best_match([chain VARCHAR [, layer INT [, k INT]]])";
        let chain = match e.first() {
            None => None,
            Some(x) => match literal(x) {
                Some(ScalarValue::Utf8(Some(s))) | Some(ScalarValue::Utf8View(Some(s))) => {
                    Some(s.clone())
                }
                _ => return plan_err!("{usage}: the chain must be a string literal"),
            },
        };
        let int = |i: usize, what: &str| match e.get(i) {
            None => Ok(None),
            Some(x) => match int_arg(Some(x)) {
                Some(v) => Ok(Some(v)),
                None => plan_err!("{usage}: {what} must be an integer literal"),
            },
        };
        let (layer, k) = (int(1, "layer")?, int(2, "k")?);
        if e.len() > 3 {
            return plan_err!("{usage}: too many arguments");
        }
        let ext = |err: anyhow::Error| DataFusionError::External(err.into());
        let all = self.lake.sae_transitions().map_err(ext)?;
        if let Some(c) = &chain {
            if let Err(e) = super::check_sae_names(&self.lake, c, None) {
                return plan_err!("best_match: {e:#}");
            }
        }
        let transitions: Vec<_> = all
            .into_iter()
            .filter(|t| chain.as_ref().is_none_or(|c| &t.chain == c))
            .filter(|t| layer.is_none_or(|l| t.layer as i64 == l))
            .filter(|t| k.is_none_or(|k| t.k as i64 == k))
            .collect();
        let schema = best_match_schema();
        let mut batches = Vec::new();
        for t in &transitions {
            let a = read_sae(&self.lake, &t.from_key()).map_err(ext)?;
            let b = read_sae(&self.lake, &t.to_key()).map_err(ext)?;
            let bytes = super::sae_bytes(&a) + super::sae_bytes(&b);
            let _reserved = super::reserve(&self.pool, "best_match", bytes)?;
            if a.d_model != b.d_model {
                return plan_err!("{} and {} differ in d_model", t.from_key(), t.to_key());
            }
            let m = best_matches_on(&a.w_dec, &b.w_dec, a.d_model, &self.device)
                .map_err(|e| DataFusionError::External(e.into()))?;
            batches.push(transition_batch(&schema, t, &m)?);
        }
        // No matching transition is an empty table, like a WHERE that matches nothing.
        Ok(Arc::new(MemTable::try_new(schema, vec![batches])?))
    }
}

/// The columns of `best_match`'s table.
fn best_match_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("chain", DataType::Utf8, false),
        Field::new("layer", DataType::Int32, false),
        Field::new("k", DataType::Int32, false),
        Field::new("stage_from", DataType::Utf8, false),
        Field::new("stage_to", DataType::Utf8, false),
        Field::new("step_from", DataType::Int64, false),
        Field::new("step_to", DataType::Int64, false),
        Field::new("feature", DataType::Int32, false),
        Field::new("best_feature", DataType::Int32, false),
        Field::new("best_cos", DataType::Float64, false),
        Field::new("aligned_cos", DataType::Float64, true),
        Field::new("renaming_gap", DataType::Float64, true),
    ]))
}

/// One transition's rows: per feature of its first SAE, `m`'s (best feature, best cosine,
/// aligned cosine; NaN where the second SAE has no such index).
fn transition_batch(
    schema: &SchemaRef,
    t: &Transition,
    m: &[(usize, f32, f32)],
) -> Result<RecordBatch> {
    let n = m.len();
    let aligned: Vec<Option<f64>> = m
        .iter()
        .map(|r| (!r.2.is_nan()).then_some(r.2 as f64))
        .collect();
    let gap = Float64Array::from_iter(
        m.iter()
            .zip(&aligned)
            .map(|(r, al)| al.map(|al| r.1 as f64 - al)),
    );
    Ok(RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec![t.chain.as_str(); n])),
            Arc::new(Int32Array::from(vec![t.layer; n])),
            Arc::new(Int32Array::from(vec![t.k; n])),
            Arc::new(StringArray::from(vec![t.stage_from.as_str(); n])),
            Arc::new(StringArray::from(vec![t.stage_to.as_str(); n])),
            Arc::new(Int64Array::from(vec![t.step_from; n])),
            Arc::new(Int64Array::from(vec![t.step_to; n])),
            Arc::new(Int32Array::from_iter_values(0..n as i32)),
            Arc::new(Int32Array::from_iter_values(m.iter().map(|r| r.0 as i32))),
            Arc::new(Float64Array::from_iter_values(m.iter().map(|r| r.1 as f64))),
            Arc::new(Float64Array::from(aligned)),
            Arc::new(gap),
        ],
    )?)
}
