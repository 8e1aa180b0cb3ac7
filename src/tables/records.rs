//! The domain's rows as record batches of the lake's tables: prompts (`docs`), training logs,
//! evaluations and feature statistics.

use std::sync::Arc;

use anyhow::Result;
use arrow::array::{Float32Array, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray};

use crate::data::Doc;
use crate::lake::Table;
use crate::sae::quality::{Ce, Eval};
use crate::sae::stats::{Example, FeatureStats};

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

/// One `train_log` row per epoch.
pub fn train_log_batch(epochs: &[crate::sae::train::EpochLog]) -> Result<RecordBatch> {
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

/// The `evals` row of one SAE.
pub fn evals_batch(e: &Eval) -> Result<RecordBatch> {
    let ce = e.ce.as_ref();
    let f = |v: Option<f64>| Arc::new(Float64Array::from(vec![v]));
    Ok(RecordBatch::try_new(
        Table::Evals.file_schema(None),
        vec![
            f(Some(e.nmse)),
            f(Some(e.mean_l0)),
            f(ce.map(|c| c.l_base)),
            f(ce.map(|c| c.l_sae)),
            f(ce.map(|c| c.l_ablation)),
            f(ce.map(Ce::frac_rec)),
            Arc::new(Int64Array::from(vec![e.n_val_rows as i64])),
            Arc::new(Int32Array::from(vec![ce.map(|c| c.n_prompts as i32)])),
            Arc::new(StringArray::from(vec![e.nmse_denom])),
            Arc::new(StringArray::from(vec![e.ablation])),
            f(ce.map(|c| c.kl_sae)),
            f(ce.map(|c| c.kl_ablation)),
            f(ce.map(Ce::kl_rec)),
            f(Some(e.core.explained_variance)),
            f(Some(e.core.explained_variance_legacy)),
            f(Some(e.core.cossim)),
            f(Some(e.core.l2_ratio)),
            f(Some(e.core.relative_reconstruction_bias)),
            f(Some(e.core.frac_alive)),
            f(Some(e.core.freq_over_1_percent)),
            f(Some(e.core.freq_over_10_percent)),
        ],
    )?)
}

/// The `feature_stats` rows of one SAE: every feature × split.
pub fn feature_stats_batch(s: &FeatureStats) -> Result<RecordBatch> {
    let n = s.train.fire_count.len();
    let splits = s.splits();
    let rows = || {
        splits
            .iter()
            .flat_map(|&(name, st)| (0..n).map(move |i| (name, st, i)))
    };
    Ok(RecordBatch::try_new(
        Table::FeatureStats.file_schema(None),
        vec![
            Arc::new(Int32Array::from_iter_values(
                rows().map(|(_, _, i)| i as i32),
            )),
            Arc::new(StringArray::from(
                rows().map(|(s, _, _)| s).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from_iter_values(
                rows().map(|(_, st, _)| st.n_tokens as i64),
            )),
            Arc::new(Int64Array::from_iter_values(
                rows().map(|(_, st, i)| st.fire_count[i] as i64),
            )),
            Arc::new(Int64Array::from_iter_values(
                rows().map(|(_, st, i)| st.topk_count[i] as i64),
            )),
            Arc::new(Float64Array::from_iter_values(
                rows().map(|(_, st, i)| st.density(i)),
            )),
            Arc::new(Float64Array::from_iter(
                rows().map(|(_, st, i)| st.mean_act(i)),
            )),
            Arc::new(Float32Array::from_iter(
                rows().map(|(_, st, i)| st.max_act[i]),
            )),
        ],
    )?)
}

/// The `top_examples` rows of one SAE: per split (train, then val), every feature's examples,
/// rank 1 first.
pub fn top_examples_batch(s: &FeatureStats) -> Result<RecordBatch> {
    let rows: Vec<(usize, usize, &Example, &str)> = s
        .splits()
        .into_iter()
        .flat_map(|(split, st)| {
            st.top.iter().enumerate().flat_map(move |(f, list)| {
                list.iter().enumerate().map(move |(r, e)| (f, r, e, split))
            })
        })
        .collect();
    Ok(RecordBatch::try_new(
        Table::TopExamples.file_schema(None),
        vec![
            Arc::new(Int32Array::from_iter_values(
                rows.iter().map(|r| r.0 as i32),
            )),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.3))),
            Arc::new(Int32Array::from_iter_values(
                rows.iter().map(|r| r.1 as i32 + 1),
            )),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.2.doc_id),
            )),
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.2.pos))),
            Arc::new(Int32Array::from_iter_values(
                rows.iter().map(|r| r.2.token_id),
            )),
            Arc::new(Float32Array::from_iter_values(
                rows.iter().map(|r| r.2.value),
            )),
        ],
    )?)
}
