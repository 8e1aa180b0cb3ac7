//! `match_features(chain_a, stage_a, chain_b, stage_b, layer [, k])`: the one-to-one assignment
//! between two SAEs' features that maximises the total decoder cosine (Jonker–Volgenant, the
//! `lapjv` crate, on 1 − cosine), with each pair's decoder and encoder cosine. Two SAEs trained
//! apart (two chains' base stages, two seeds) number their features arbitrarily; this aligns
//! them, and the mean matched cosine is the field's PW-MCC. Without arguments it matches the
//! first stages of every pair of chains at every (layer, k) both have.

use std::sync::Arc;

use anyhow::{bail, Context};
use arrow::array::{Float64Array, Int32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{plan_err, Result, ScalarValue};
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;

use super::best_match::{int_arg, literal};
use crate::kernels::{cosine, for_each_cosine_row};
use crate::lake::{Lake, PartitionKey, Table};
use crate::tables::read_sae;

/// The assignment of rows of `a` to rows of `b` (both row-major, `d` wide) maximising the summed
/// cosine: (i, j, cosine) for min(n_a, n_b) pairs, in order of i.
pub fn assignment(a: &[f32], b: &[f32], d: usize) -> anyhow::Result<Vec<(usize, usize, f32)>> {
    let (na, nb) = (a.len() / d, b.len() / d);
    // Costs 1 − cosine of a square problem: padding rows/columns cost the same everywhere, so
    // they do not change which real rows pair with which real columns.
    let n = na.max(nb);
    let mut costs = lapjv::Matrix::from_elem((n, n), 1.0f64);
    for_each_cosine_row(a, b, d, |i, row| {
        for (j, &c) in row.iter().enumerate() {
            costs[(i, j)] = 1.0 - c as f64;
        }
    });
    let (row_to_col, _) =
        lapjv::lapjv(&costs).map_err(|e| anyhow::anyhow!("the assignment failed: {e:?}"))?;
    Ok(row_to_col
        .iter()
        .enumerate()
        .filter(|&(i, &j)| i < na && j < nb)
        // Unit rows in float32 can give a cosine a hair above 1.
        .map(|(i, &j)| (i, j, (1.0 - costs[(i, j)]).clamp(-1.0, 1.0) as f32))
        .collect())
}

#[derive(Debug)]
pub struct MatchFeatures {
    pub lake: Lake,
    /// The session's memory pool: the two SAEs and the cost matrix are reserved in it.
    pub pool: std::sync::Arc<dyn datafusion::execution::memory_pool::MemoryPool>,
}

/// One pair of SAEs to match.
struct Pair {
    a: PartitionKey,
    b: PartitionKey,
}

impl MatchFeatures {
    /// The k of the SAEs of (chain, stage, layer) when `k` is not given: there must be one.
    fn only_k(&self, chain: &str, stage: &str, layer: i32) -> anyhow::Result<i32> {
        let ks: Vec<i32> = self
            .lake
            .partitions(Table::Saes)?
            .into_iter()
            .filter(|(key, _)| {
                key.chain == chain
                    && key.stage.as_deref() == Some(stage)
                    && key.layer == Some(layer)
            })
            .filter_map(|(key, _)| key.k)
            .collect();
        match ks.as_slice() {
            [k] => Ok(*k),
            [] => bail!("no SAE of chain {chain} stage {stage} layer {layer} in the lake"),
            _ => bail!("chain {chain} stage {stage} layer {layer} has SAEs of k {ks:?}: pass k"),
        }
    }

    /// Every pair of chains' first stages, at each (layer, k) both have.
    fn all_base_pairs(&self) -> anyhow::Result<Vec<Pair>> {
        let keys: Vec<PartitionKey> = self
            .lake
            .partitions(Table::Saes)?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        let mut chains: Vec<&str> = keys.iter().map(|k| k.chain.as_str()).collect();
        chains.dedup();
        let mut first = Vec::new();
        for c in chains {
            let stages = self.lake.read_stages(c)?;
            if let Some(s) = stages.first() {
                first.push((c.to_string(), s.stage.clone()));
            }
        }
        let mut pairs = Vec::new();
        for (i, (ca, sa)) in first.iter().enumerate() {
            for (cb, sb) in &first[i + 1..] {
                for ka in keys
                    .iter()
                    .filter(|k| &k.chain == ca && k.stage.as_ref() == Some(sa))
                {
                    let kb = PartitionKey::sae(cb, sb, ka.layer.unwrap(), ka.k.unwrap());
                    if keys.contains(&kb) {
                        pairs.push(Pair {
                            a: ka.clone(),
                            b: kb,
                        });
                    }
                }
            }
        }
        Ok(pairs)
    }

    fn batch(&self, schema: &Arc<Schema>, p: &Pair) -> anyhow::Result<RecordBatch> {
        let a = read_sae(&self.lake, &p.a)?;
        let b = read_sae(&self.lake, &p.b)?;
        if a.d_model != b.d_model {
            bail!("{} and {} differ in d_model", p.a, p.b);
        }
        let n = a.d_sae.max(b.d_sae);
        let bytes = super::sae_bytes(&a) + super::sae_bytes(&b) + n * n * 8;
        let _reserved = super::reserve(&self.pool, "match_features", bytes)?;
        let d = a.d_model;
        let m = assignment(&a.w_dec, &b.w_dec, d).with_context(|| format!("{} ↔ {}", p.a, p.b))?;
        let n = m.len();
        let text = |v: &str| Arc::new(StringArray::from(vec![v; n]));
        let stage = |k: &PartitionKey| k.stage.clone().unwrap_or_default();
        Ok(RecordBatch::try_new(
            schema.clone(),
            vec![
                text(&p.a.chain),
                text(&stage(&p.a)),
                text(&p.b.chain),
                text(&stage(&p.b)),
                Arc::new(Int32Array::from(vec![p.a.layer.unwrap_or_default(); n])),
                Arc::new(Int32Array::from(vec![p.a.k.unwrap_or_default(); n])),
                Arc::new(Int32Array::from_iter_values(m.iter().map(|r| r.0 as i32))),
                Arc::new(Int32Array::from_iter_values(m.iter().map(|r| r.1 as i32))),
                Arc::new(Float64Array::from_iter_values(m.iter().map(|r| r.2 as f64))),
                Arc::new(Float64Array::from_iter_values(m.iter().map(
                    |&(i, j, _)| cosine(a.enc_row(i), b.enc_row(j)).unwrap_or(f64::NAN),
                ))),
            ],
        )?)
    }
}

impl TableFunctionImpl for MatchFeatures {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let e = args.exprs();
        let usage = "match_features([chain_a, stage_a, chain_b, stage_b, layer [, k]])";
        let ext = |err: anyhow::Error| DataFusionError::External(err.into());
        let pairs = if e.is_empty() {
            self.all_base_pairs().map_err(ext)?
        } else {
            if e.len() < 5 || e.len() > 6 {
                return plan_err!("{usage}: give none or 5–6 arguments");
            }
            let mut text = Vec::new();
            for x in &e[..4] {
                match literal(x) {
                    Some(ScalarValue::Utf8(Some(s))) | Some(ScalarValue::Utf8View(Some(s))) => {
                        text.push(s.clone())
                    }
                    _ => return plan_err!("{usage}: chains and stages must be string literals"),
                }
            }
            for (chain, stage) in [(&text[0], &text[1]), (&text[2], &text[3])] {
                if let Err(e) = super::check_sae_names(&self.lake, chain, Some(stage)) {
                    return plan_err!("match_features: {e:#}");
                }
            }
            let Some(layer) = int_arg(e.get(4)) else {
                return plan_err!("{usage}: layer must be an integer literal");
            };
            let layer = layer as i32;
            let k = match e.get(5) {
                Some(x) => match int_arg(Some(x)) {
                    Some(k) => k as i32,
                    None => return plan_err!("{usage}: k must be an integer literal"),
                },
                None => self.only_k(&text[0], &text[1], layer).map_err(ext)?,
            };
            let pair = Pair {
                a: PartitionKey::sae(&text[0], &text[1], layer, k),
                b: PartitionKey::sae(&text[2], &text[3], layer, k),
            };
            for key in [&pair.a, &pair.b] {
                if !self.lake.has_partition(Table::Saes, key).map_err(ext)? {
                    return Err(ext(self.lake.missing(Table::Saes, key)));
                }
            }
            vec![pair]
        };
        let schema = Arc::new(Schema::new(vec![
            Field::new("chain_a", DataType::Utf8, false),
            Field::new("stage_a", DataType::Utf8, false),
            Field::new("chain_b", DataType::Utf8, false),
            Field::new("stage_b", DataType::Utf8, false),
            Field::new("layer", DataType::Int32, false),
            Field::new("k", DataType::Int32, false),
            Field::new("feature_a", DataType::Int32, false),
            Field::new("feature_b", DataType::Int32, false),
            Field::new("dec_cos", DataType::Float64, false),
            Field::new("enc_cos", DataType::Float64, false),
        ]));
        let batches = pairs
            .iter()
            .map(|p| self.batch(&schema, p))
            .collect::<anyhow::Result<Vec<_>>>()
            .map_err(ext)?;
        Ok(Arc::new(MemTable::try_new(schema, vec![batches])?))
    }
}
