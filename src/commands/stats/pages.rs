//! The rows of the tables the feature pages read (`Table::PAGES`), from an SAE's latents
//! (examples in context, histograms) and from its weights and its neighbours' (transitions,
//! nearest features, logit effects, cross-chain partners).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow::array::{
    ArrayRef, BooleanArray, Float32Array, Float64Array, Int32Array, Int64Array, ListArray,
    RecordBatch, StringArray,
};
use arrow::datatypes::{DataType, Field, Float32Type, Int32Type, Int64Type};

use crate::kernels::cosine;
use crate::lake::{Lake, PartitionKey, SaeSequences, Table};
use crate::sae::dashboard::{
    contexts, logit_effects, nearest, LatentSpill, RowIndex, Spread, Want, TOP_IN_CONTEXT,
};
use crate::sae::stats::{Example, FeatureStats};
use crate::sae::Sae;
use crate::sql::best_match::best_matches;
use crate::sql::matching::assignment;
use crate::tables::read_sae;

fn list<T: arrow::datatypes::ArrowPrimitiveType>(
    rows: impl IntoIterator<Item = Vec<T::Native>>,
    item: DataType,
) -> ArrayRef {
    let a = ListArray::from_iter_primitive::<T, _, _>(
        rows.into_iter().map(|r| Some(r.into_iter().map(Some))),
    );
    // The lake's lists have non-null items.
    let (_, offsets, values, nulls) = a.into_parts();
    Arc::new(ListArray::new(
        Arc::new(Field::new("item", item, false)),
        offsets,
        values,
        nulls,
    ))
}

/// One example row of `feature_examples` before its context is known.
struct Row {
    feature: i32,
    split: &'static str,
    kind: &'static str,
    bin: Option<i32>,
    rank: i32,
    e: Example,
}

/// `feature_examples` and `feature_histograms` from the latents of every row: a pass for the
/// histograms and quantile samples (their bins need the first pass's maxima), then one for the
/// contexts of the top and quantile examples.
pub fn examples_and_histograms(
    stats: &FeatureStats,
    spill: &mut LatentSpill,
    index: &RowIndex,
) -> Result<(RecordBatch, RecordBatch)> {
    let mut spreads = [
        Spread::new(&stats.train.max_act, 0),
        Spread::new(&stats.val.max_act, 1),
    ];
    spill.for_each(&mut |r, latents| {
        let s = &mut spreads[index.val[r] as usize];
        for &(i, v) in latents {
            s.add(i as usize, index.example(r, v));
        }
    })?;
    let mut rows = Vec::new();
    for ((split, st), spread) in stats.splits().into_iter().zip(&spreads) {
        for (f, top) in st.top.iter().enumerate() {
            let row = |kind, bin, rank, e: &Example| Row {
                feature: f as i32,
                split,
                kind,
                bin,
                rank,
                e: *e,
            };
            for (r, e) in top.iter().take(TOP_IN_CONTEXT).enumerate() {
                rows.push(row("top", None, r as i32 + 1, e));
            }
            for (b, list) in spread.quantile_examples(f).iter().enumerate() {
                for (r, e) in list.iter().enumerate() {
                    rows.push(row("quantile", Some(b as i32), r as i32 + 1, e));
                }
            }
        }
    }
    let wants: Vec<Want> = rows
        .iter()
        .map(|r| Want {
            feature: r.feature as u32,
            doc_id: r.e.doc_id,
            pos: r.e.pos,
        })
        .collect();
    let ctx = contexts(&wants, index, spill)?;
    let examples = RecordBatch::try_new(
        Table::FeatureExamples.file_schema(None),
        vec![
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.feature))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.split))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.kind))),
            Arc::new(Int32Array::from_iter(rows.iter().map(|r| r.bin))),
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.rank))),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.e.doc_id),
            )),
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.e.pos))),
            Arc::new(Float32Array::from_iter_values(
                rows.iter().map(|r| r.e.value),
            )),
            Arc::new(Int32Array::from_iter_values(ctx.iter().map(|c| c.start))),
            list::<Int32Type>(ctx.iter().map(|c| c.tokens.clone()), DataType::Int32),
            list::<Float32Type>(ctx.iter().map(|c| c.acts.clone()), DataType::Float32),
        ],
    )?;
    let histograms = histograms_batch(stats, &spreads)?;
    Ok((examples, histograms))
}

/// `feature_histograms`: per split, each feature that fired, its activations' histogram.
fn histograms_batch(stats: &FeatureStats, spreads: &[Spread; 2]) -> Result<RecordBatch> {
    let mut h: Vec<(i32, &str, f32, Vec<i64>)> = Vec::new();
    for ((split, _), spread) in stats.splits().into_iter().zip(spreads) {
        for f in 0..stats.val.fire_count.len() {
            if let Some(hi) = spread.hi(f) {
                let counts = spread.histogram(f).iter().map(|&c| c as i64).collect();
                h.push((f as i32, split, hi, counts));
            }
        }
    }
    Ok(RecordBatch::try_new(
        Table::FeatureHistograms.file_schema(None),
        vec![
            Arc::new(Int32Array::from_iter_values(h.iter().map(|r| r.0))),
            Arc::new(StringArray::from_iter_values(h.iter().map(|r| r.1))),
            Arc::new(Int64Array::from_iter_values(
                h.iter().map(|r| r.3.iter().sum::<i64>()),
            )),
            Arc::new(Float32Array::from_iter_values(h.iter().map(|r| r.2))),
            list::<Int64Type>(h.iter().map(|r| r.3.clone()), DataType::Int64),
        ],
    )?)
}

/// The weight tables `missing` names that can be computed now; `notes` says why others cannot.
pub fn from_weights(
    lake: &Lake,
    key: &PartitionKey,
    sae: &Sae,
    missing: &[Table],
    out: &mut Vec<(Table, RecordBatch)>,
    notes: &mut Vec<String>,
) -> Result<()> {
    let want = |t| missing.contains(&t);
    let (layer, k) = (key.layer.unwrap_or(0), key.k.unwrap_or(0));
    let stage = key.stage.clone().unwrap_or_default();
    let sequences = lake.sae_sequences()?;
    if want(Table::FeatureTransitions) {
        let seq = &sequences[&(key.chain.clone(), layer, k)];
        let at = seq.iter().position(|(_, s)| *s == stage).unwrap_or(0);
        let sae_at = |stage: &str| read_sae(lake, &PartitionKey::sae(&key.chain, stage, layer, k));
        let prev = match at.checked_sub(1) {
            Some(p) => Some((seq[p].1.clone(), sae_at(&seq[p].1)?)),
            None => None,
        };
        let first_stage = seq[0].1.clone();
        let first = match at {
            0 => None,
            _ => Some(sae_at(&first_stage)?),
        };
        out.push((
            Table::FeatureTransitions,
            transitions_batch(
                sae,
                prev.as_ref(),
                &first_stage,
                first.as_ref().unwrap_or(sae),
            )?,
        ));
    }
    if want(Table::FeatureNeighbors) {
        out.push((Table::FeatureNeighbors, neighbors_batch(sae)?));
    }
    if want(Table::LogitEffects) {
        let dir = stage_model(lake, key)?.context("the stage's model")?;
        let (unembed, norm, d) = crate::model::load::load_unembedding(&dir)
            .with_context(|| format!("the unembedding of stage {stage}'s model"))?;
        if d == sae.d_model {
            out.push((Table::LogitEffects, logits_batch(sae, &unembed, &norm)?));
        } else {
            notes.push(format!(
                "logit effects skipped: the model {} is {d} wide, the SAE {}",
                dir.display(),
                sae.d_model
            ));
        }
    }
    if want(Table::FeaturePartners) {
        if let Some(b) = partners_batch(lake, key, sae, &sequences)? {
            out.push((Table::FeaturePartners, b));
        }
    }
    Ok(())
}

/// Whether `table` can have rows for SAE `key` now: logit effects need the stage's model here,
/// partners another chain with an SAE at the same layer and k.
pub fn applicable(lake: &Lake, key: &PartitionKey, table: Table) -> Result<bool> {
    Ok(match table {
        Table::LogitEffects => stage_model(lake, key)?.is_some(),
        Table::FeaturePartners => lake
            .partitions(Table::Saes)?
            .iter()
            .any(|(o, _)| o.chain != key.chain && o.layer == key.layer && o.k == key.k),
        _ => true,
    })
}

/// The stage's model directory, when `stages` names one that exists here.
fn stage_model(lake: &Lake, key: &PartitionKey) -> Result<Option<std::path::PathBuf>> {
    let stage = key.stage.as_deref().unwrap_or("");
    Ok(lake
        .read_stages(&key.chain)?
        .into_iter()
        .find(|s| s.stage == stage)
        .and_then(|s| s.model_path)
        .map(std::path::PathBuf::from)
        .filter(|p| Path::new(p).join("config.json").is_file()))
}

fn row(w: &[f32], i: usize, d: usize) -> &[f32] {
    &w[i * d..(i + 1) * d]
}

fn transitions_batch(
    sae: &Sae,
    prev: Option<&(String, Sae)>,
    first_stage: &str,
    first: &Sae,
) -> Result<RecordBatch> {
    let (n, d) = (sae.d_sae, sae.d_model);
    let best = prev.map(|(_, p)| best_matches(&p.w_dec, &sae.w_dec, d));
    let aligned = |other: &Sae, w: fn(&Sae) -> &[f32], i: usize| {
        (i < other.d_sae)
            .then(|| cosine(row(w(other), i, d), row(w(sae), i, d)))
            .flatten()
    };
    fn dec(s: &Sae) -> &[f32] {
        &s.w_dec
    }
    fn enc(s: &Sae) -> &[f32] {
        &s.w_enc
    }
    let p = prev.map(|(_, s)| s);
    Ok(RecordBatch::try_new(
        Table::FeatureTransitions.file_schema(None),
        vec![
            Arc::new(Int32Array::from_iter_values(0..n as i32)),
            Arc::new(StringArray::from_iter(
                (0..n).map(|_| prev.map(|(s, _)| s.as_str())),
            )),
            Arc::new(Float64Array::from_iter(
                (0..n).map(|i| p.and_then(|p| aligned(p, dec, i))),
            )),
            Arc::new(Float64Array::from_iter(
                (0..n).map(|i| p.and_then(|p| aligned(p, enc, i))),
            )),
            Arc::new(Int32Array::from_iter((0..n).map(|i| {
                best.as_ref().and_then(|b| b.get(i)).map(|b| b.0 as i32)
            }))),
            Arc::new(Float64Array::from_iter((0..n).map(|i| {
                best.as_ref().and_then(|b| b.get(i)).map(|b| b.1 as f64)
            }))),
            Arc::new(StringArray::from_iter_values((0..n).map(|_| first_stage))),
            Arc::new(Float64Array::from_iter(
                (0..n).map(|i| aligned(first, dec, i)),
            )),
            Arc::new(Float64Array::from_iter(
                (0..n).map(|i| aligned(first, enc, i)),
            )),
        ],
    )?)
}

fn neighbors_batch(sae: &Sae) -> Result<RecordBatch> {
    let near = nearest(&sae.w_dec, sae.d_model);
    let rows: Vec<(i32, i32, u32, f32)> = near
        .iter()
        .enumerate()
        .flat_map(|(f, l)| {
            l.iter()
                .enumerate()
                .map(move |(r, &(j, c))| (f as i32, r as i32 + 1, j, c))
        })
        .collect();
    Ok(RecordBatch::try_new(
        Table::FeatureNeighbors.file_schema(None),
        vec![
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.1))),
            Arc::new(Int32Array::from_iter_values(
                rows.iter().map(|r| r.2 as i32),
            )),
            Arc::new(Float32Array::from_iter_values(rows.iter().map(|r| r.3))),
        ],
    )?)
}

fn logits_batch(sae: &Sae, unembed: &[f32], norm: &[f32]) -> Result<RecordBatch> {
    let effects = logit_effects(&sae.w_dec, sae.d_model, unembed, norm);
    let mut rows: Vec<(i32, &str, i32, u32, f32)> = Vec::new();
    for (f, (top, bottom)) in effects.iter().enumerate() {
        for (dir, list) in [("top", top), ("bottom", bottom)] {
            for (r, &(t, v)) in list.iter().enumerate() {
                rows.push((f as i32, dir, r as i32 + 1, t, v));
            }
        }
    }
    Ok(RecordBatch::try_new(
        Table::LogitEffects.file_schema(None),
        vec![
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.2))),
            Arc::new(Int32Array::from_iter_values(
                rows.iter().map(|r| r.3 as i32),
            )),
            Arc::new(Float32Array::from_iter_values(rows.iter().map(|r| r.4))),
            Arc::new(BooleanArray::from(vec![true; rows.len()])),
        ],
    )?)
}

/// The one-to-one partner of each feature in every other chain with an SAE at this layer and
/// k: at the same stage name when that chain has it, else at its first stage. None when no
/// other chain has one.
fn partners_batch(
    lake: &Lake,
    key: &PartitionKey,
    sae: &Sae,
    sequences: &SaeSequences,
) -> Result<Option<RecordBatch>> {
    let (layer, k) = (key.layer.unwrap_or(0), key.k.unwrap_or(0));
    let stage = key.stage.as_deref().unwrap_or("");
    let mut rows: Vec<(i32, String, String, i32, f64)> = Vec::new();
    for ((chain, l, kk), seq) in sequences {
        if *chain == key.chain || *l != layer || *kk != k || sae.d_model == 0 {
            continue;
        }
        let other_stage = seq
            .iter()
            .find(|(_, s)| s == stage)
            .unwrap_or(&seq[0])
            .1
            .clone();
        let other = read_sae(lake, &PartitionKey::sae(chain, &other_stage, layer, k))?;
        if other.d_model != sae.d_model {
            continue;
        }
        for (i, j, c) in assignment(&sae.w_dec, &other.w_dec, sae.d_model)? {
            rows.push((
                i as i32,
                chain.clone(),
                other_stage.clone(),
                j as i32,
                c as f64,
            ));
        }
    }
    if rows.is_empty() {
        return Ok(None);
    }
    Ok(Some(RecordBatch::try_new(
        Table::FeaturePartners.file_schema(None),
        vec![
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.1.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.2.as_str()),
            )),
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.3))),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.4))),
        ],
    )?))
}
